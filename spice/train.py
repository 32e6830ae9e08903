"""Two-stage SPICE training (SPEC §3): `spice train --config FILE.yaml [--resume] [--set key=value ...]`.

Stage 1 (iterations [0, stage1_iterations)) optimises L_emb with the seediness decoder and head
frozen: their parameters have requires_grad False and are not in the optimiser, and their modules stay
in eval mode so BatchNorm running statistics do not move either. Stage 2 trains everything on the
total loss. `stage2_optimizer: continue` (default) keeps the stage-1 Adam state of the embedding
parameters and adds the seediness parameters as a new parameter group; `fresh` starts a new Adam.
An optional stage 3 (`stage3_iterations`, 0 by default; not in the paper) fine-tunes the seediness
decoder alone: the encoder and the embedding decoder are frozen (no gradient, eval mode), so the target
p_ik of L_seed stops moving, and a new Adam over the seediness parameters minimises L_seed. Inference
is unchanged; stage 3 only trains the seed map further against the embedding the network already has.

Batches: the event stream is a concatenation of seeded random permutations of the dataset (epoch e
uses torch.Generator seeded with (seed, e)), and iteration i takes elements [i·B, (i+1)·B) of it, so
the data order depends only on (seed, iteration): a resumed run sees exactly the batches it would have.
With `data.augment` every drawn event is also turned by one of the cube's 48 symmetries and shifted
inside the grid, drawn from (seed, stream position) (`AugmentedView`). A synthetic dataset is made
lazily, so `data.synthetic.n_events` large gives a stream of events that never repeat. The learning
rate follows `learning_rate` (warm-up, then constant or cosine decay) over both stages.

Several processes (`torchrun --nproc-per-node N -m spice train ...`, or srun; spice.distributed):
DistributedDataParallel (NCCL on CUDA, gloo on CPU). `batch_size` stays the global batch B and the lr
applies to it: rank r takes elements [r·B/N, (r+1)·B/N) of every global batch, so the sequence of
global batches does not depend on N. `sync_batchnorm: true` normalises with the statistics of the
global batch (one process: no change). losses.csv holds the global batch's losses (the mean of the
ranks'); rank 0 writes every file; every collective times out after `dist_timeout_s`, so when a rank
dies the others stop with an error and a rerun with --resume continues from the last checkpoint.

Outputs in out_dir (each written to a temporary name and renamed): checkpoint.pt (latest; model,
optimiser, stage, iteration, config, RNG states, sampler state), checkpoint_<iteration>.pt when
keep_checkpoints is set, snapshots/model_<iteration>.pt (weights only) every snapshot_every, config.yaml, losses.csv (iteration, stage, every loss term, lr, seconds per
iteration) and TensorBoard events when the `tensorboard` package is installed.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from spice import distributed
from spice.data.event import collate
from spice.distributed import resolve_device  # noqa: F401  (spice.train.resolve_device, as before)
from spice.losses import TERMS, SPICELoss

CHECKPOINT = "checkpoint.pt"
CSV_COLUMNS = ("iteration", "stage", *TERMS, "lr", "seconds")


# ------------------------------------------------------------------------------------------ config
@dataclass
class SyntheticConfig:
    """Events of spice.data.synthetic, made lazily when first drawn (spice.data.synthetic.SyntheticEvents):
    a large n_events gives a stream in which no event repeats; the first `cache` events are kept in memory."""

    n_events: int = 64
    spatial_size: int = 192
    seed: int = 0
    cache: int = 2000


@dataclass
class DataConfig:
    """Either `train` (PILArNet .root / PILArNet-M .h5 files, read with spice.data.EventDataset) or `synthetic`."""

    train: list[str] = field(default_factory=list)
    synthetic: SyntheticConfig | None = None
    energy_threshold: float = 0.0
    min_voxels: int = 0
    augment: bool = False   # a random cube symmetry (48) and translation per drawn event (spice.augment)


@dataclass
class ModelConfig:
    """spice.model.SPICE arguments; spatial_size None = the grid of the training events."""

    filters: int = 32
    depth: int = 6
    reps: int = 2
    leaky_slope: float = 0.33
    backend: str | None = None
    spatial_size: int | None = None


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: SPICELoss = field(default_factory=SPICELoss)
    stage1_iterations: int = 50_000
    stage2_iterations: int = 100_000
    stage2_optimizer: str = "continue"   # or "fresh"
    stage3_iterations: int = 0           # seediness decoder alone on L_seed, the embedding frozen (not in the paper)
    init_weights: str = ""               # weights file (spice.release / snapshot) to start from instead of
                                         # the seeded initialisation: fine-tuning; its model_args must match
    batch_size: int = 32
    lr: float = 0.005
    lr_schedule: str = "constant"        # or "cosine": decay to lr·min_lr_fraction at the last iteration
    warmup_iterations: int = 0           # linear warm-up from lr/10 over the first iterations
    min_lr_fraction: float = 0.0
    seed: int = 0
    device: str = "auto"                 # "auto" = CUDA when available, else CPU
    bf16: bool = False                   # bf16 autocast of the forward pass (CUDA only)
    num_workers: int = 0
    threads: int = 0                     # CPU threads; 0 = torch default
    checkpoint_every: int = 1000
    keep_checkpoints: bool = False
    snapshot_every: int = 0              # weights-only snapshots/model_<iteration>.pt for learning curves (0: none)
    max_minutes: float = 0.0             # wall-clock budget: stop with a checkpoint once spent (0 = none);
                                         # rerun with resume to continue (batch jobs, time-limited GPUs)
    log_every: int = 50                  # rewrite losses.csv every this many iterations
    progress: bool = True
    out_dir: str = "runs/spice"
    sync_batchnorm: bool = False         # several processes: BatchNorm statistics of the global batch
    dist_timeout_s: float = 600.0        # several processes: how long a rank waits for the others

    def __post_init__(self):
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.warmup_iterations < 0 or self.snapshot_every < 0 or not 0 <= self.min_lr_fraction <= 1:
            raise ValueError("warmup_iterations and snapshot_every must be >= 0, min_lr_fraction in [0, 1]")
        if self.stage2_optimizer not in ("continue", "fresh"):
            raise ValueError(f"stage2_optimizer must be 'continue' or 'fresh', got {self.stage2_optimizer!r}")
        for name in ("stage1_iterations", "stage2_iterations", "stage3_iterations"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.batch_size < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("batch_size, checkpoint_every and log_every must be >= 1")
        if self.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0 (0: no limit), got {self.max_minutes}")
        if self.dist_timeout_s <= 0:
            raise ValueError(f"dist_timeout_s must be > 0, got {self.dist_timeout_s}")

    @property
    def iterations(self) -> int:
        return self.stage1_iterations + self.stage2_iterations + self.stage3_iterations

    def stage_at(self, iteration: int) -> int:
        """The stage (1, 2 or 3) that trains iteration `iteration` (0-based)."""
        if iteration < self.stage1_iterations:
            return 1
        return 2 if iteration < self.stage1_iterations + self.stage2_iterations or not self.stage3_iterations else 3

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["loss"]["skip_classes"] = list(d["loss"]["skip_classes"])
        return d

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "TrainConfig":
        return _from_dict(cls, data, where)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> "TrainConfig":
        """Read YAML, apply `key.sub=value` overrides (values parsed as YAML), validate every key."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set expects key=value, got {item!r}")
            node = data
            *parents, leaf = key.strip().split(".")
            for p in parents:
                if node.get(p) is None:
                    node[p] = {}
                node = node[p]
                if not isinstance(node, dict):
                    raise ValueError(f"--set {key}: {p} is not a section")
            node[leaf] = yaml.safe_load(value)
        return _from_dict(cls, data, str(path))


_NESTED = {(TrainConfig, "data"): DataConfig, (TrainConfig, "model"): ModelConfig,
           (TrainConfig, "loss"): SPICELoss, (DataConfig, "synthetic"): SyntheticConfig}


def _from_dict(cls, data, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (known: {sorted(known)})")
    kwargs = {}
    for key, value in data.items():
        sub = _NESTED.get((cls, key))
        kwargs[key] = _from_dict(sub, value, f"{where}: {key}") if sub and value is not None else value
    return cls(**kwargs)


# ------------------------------------------------------------------------------------------ pieces
def build_dataset(cfg: DataConfig):
    """A list-like of Events (indexable, len)."""
    if cfg.synthetic is not None and cfg.train:
        raise ValueError("data: give either `train` files or `synthetic`, not both")
    if cfg.synthetic is not None:
        from spice.data.synthetic import SyntheticEvents
        s = cfg.synthetic
        if cfg.energy_threshold > 0 or cfg.min_voxels > 0:
            raise ValueError("data: energy_threshold / min_voxels apply to files only")
        return SyntheticEvents(s.n_events, spatial_size=s.spatial_size, seed=s.seed, cache=s.cache)
    if not cfg.train:
        raise ValueError("data: no training files and no synthetic spec")
    from spice.data import EventDataset
    return EventDataset(cfg.train, energy_threshold=cfg.energy_threshold, min_voxels=cfg.min_voxels)


def model_args(cfg: ModelConfig, dataset) -> dict:
    args = dataclasses.asdict(cfg)
    if args["spatial_size"] is None:
        args["spatial_size"] = int(dataset[0].spatial_size)
    return args


def build_model(args: dict):
    from spice.model import SPICE
    return SPICE(**args)


class BatchStream(torch.utils.data.Sampler):
    """Index lists for iterations [start, stop): iteration i takes stream[i·B:(i+1)·B] where the
    stream concatenates per-epoch permutations drawn from torch.Generator seeded by (seed, epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, positions: bool = False):
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.positions = positions  # yield (index, stream position) pairs, for AugmentedView

    def epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def batch(self, iteration: int) -> list[int]:
        first = iteration * self.batch_size
        out, epoch, cached = [], -1, None
        for pos in range(first, first + self.batch_size):
            if pos // self.n != epoch:
                epoch = pos // self.n
                cached = self.epoch_order(epoch)
            index = int(cached[pos % self.n])
            out.append((index, pos) if self.positions else index)
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "next_iteration": self.start, "n": self.n, "batch_size": self.batch_size}

    def __iter__(self):
        return (self.batch(i) for i in range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class AugmentedView(torch.utils.data.Dataset):
    """`dataset` seen through spice.augment: item (index, position) is dataset[index] under the cube
    symmetry and translation drawn from the stream (seed, position), so the augmentation of each drawn
    event depends only on its place in the stream (exact resume, any number of workers or ranks)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        from spice.augment import augment_event
        index, position = item
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(position,)))
        return augment_event(self.dataset[index], rng)


def learning_rate(config: "TrainConfig", iteration: int) -> float:
    """The learning rate of iteration `iteration` (0-based) over both stages: linear warm-up from lr/10
    over `warmup_iterations`, then constant or cosine decay to lr·min_lr_fraction at the last iteration."""
    lr, warm, total = config.lr, config.warmup_iterations, max(config.iterations, 1)
    if iteration < warm:
        return lr * (0.1 + 0.9 * iteration / warm)
    if config.lr_schedule == "constant":
        return lr
    progress = (iteration - warm) / max(total - warm, 1)
    floor = lr * config.min_lr_fraction
    return float(floor + (lr - floor) * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0))))  # a Python float:
    # the optimiser state is saved in checkpoints, which load with weights_only (no numpy scalars)


def seediness_modules(model) -> list[torch.nn.Module]:
    """Modules of the seediness decoder + head (`model.seediness_decoder`), else every module whose
    own parameters all belong to model.seediness_parameters()."""
    if hasattr(model, "seediness_decoder"):
        return list(model.seediness_decoder.modules())
    seed_ids = {id(p) for p in model.seediness_parameters()}
    out = []
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and all(id(p) in seed_ids for p in own):
            out.append(module)
    return out


def set_stage(model, stage: int) -> None:
    """Train mode; in stage 1 the seediness parameters are frozen and their modules kept in eval mode;
    in stage 3 every other parameter is, and every module outside the seediness decoder is in eval mode."""
    model.train()
    for p in model.seediness_parameters():
        p.requires_grad_(stage != 1)
    for p in model.embedding_parameters():
        p.requires_grad_(stage != 3)
    if stage == 1:
        for module in seediness_modules(model):
            module.eval()
    if stage == 3:
        seed = {id(m) for m in seediness_modules(model)}
        for module in model.modules():
            if id(module) not in seed:
                module.training = False  # not .eval(): that would recurse into the seediness decoder


def make_optimizer(model, cfg: TrainConfig, stage: int) -> torch.optim.Adam:
    """Stage 1: Adam over the embedding parameters. Stage 2: the same plus a seediness group
    ("continue"), or one Adam over all parameters ("fresh"). Stage 3: a new Adam over the seediness
    parameters alone."""
    if stage == 3:
        return torch.optim.Adam(list(model.seediness_parameters()), lr=cfg.lr)
    if stage == 2 and cfg.stage2_optimizer == "fresh":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    opt = torch.optim.Adam(list(model.embedding_parameters()), lr=cfg.lr)
    if stage == 2:
        opt.add_param_group({"params": list(model.seediness_parameters())})
    return opt


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_snapshot(out_dir: Path, model, args: dict, iteration: int, stage: int) -> Path:
    """Weights only (no optimiser), out_dir/snapshots/model_<iteration>.pt: loads with `load_model`."""
    path = out_dir / "snapshots" / f"model_{iteration:07d}.pt"
    path.parent.mkdir(exist_ok=True)
    save_checkpoint(path, {"model": model.state_dict(), "model_args": args, "iteration": iteration, "stage": stage})
    return path


def write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


def read_csv(path: Path, up_to: int) -> list[dict]:
    """Rows of an earlier run with iteration <= up_to (later rows were not checkpointed)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["iteration"]) <= up_to]


def tensorboard_writer(out_dir: Path, purge_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: CSV only
        return None
    return SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge_step)


# ------------------------------------------------------------------------------------------ training
def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: SPICELoss, batch,
               stage: int = 2, bf16: bool = False, reduce=None) -> dict[str, torch.Tensor]:
    """One optimisation step on `batch` (already on the model's device): forward (under bf16 autocast
    when `bf16` and on CUDA), the loss terms, backward of L_emb (stage 1) or the total (stage 2), and the
    optimiser step (stage 3: backward of L_seed alone, through the seediness decoder only). Returns the
    loss terms; a non-finite objective raises FloatingPointError before any
    update, naming the batch's events. `reduce` (several processes: spice.distributed.mean_over_ranks)
    maps the terms to those of the global batch before the check, so every rank stops together; the
    returned terms are then the reduced ones, while the backward uses this rank's own."""
    device_type = batch.coords.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16 and device_type == "cuda"):
        # stage 1: the frozen seediness decoder is not run (L_seed is then reported as 0)
        outputs = model(batch) if stage != 1 else model(batch, seediness=False)
    losses = loss(outputs, batch)
    term = {1: "emb", 2: "total", 3: "seed"}[stage]
    objective = losses[term]
    reported = losses if reduce is None else reduce(losses)
    if not torch.isfinite(reported[term]):
        raise FloatingPointError(f"stage {stage}: non-finite loss { {t: v.item() for t, v in reported.items()} } "
                                 f"on events {batch.sources}")
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    optimizer.step()
    return reported


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Run (or resume) both stages; return the path of the latest checkpoint (out_dir/checkpoint.pt).

    With `max_minutes` the run may stop early: its checkpoint's "iteration" is then below
    config.iterations (see `finished`), and train(config, resume=True) continues it exactly."""
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT
    # several processes (torchrun / srun): join the group; rank r trains on its slice of each global batch
    ctx, device = distributed.setup(config.device, config.dist_timeout_s)
    distributed.check_batch_size(config.batch_size, ctx)
    if config.threads > 0:
        torch.set_num_threads(config.threads)

    checkpoint = None
    if resume and ckpt_path.exists():
        checkpoint = read_checkpoint(ckpt_path, keys=("model", "optimizer", "iteration", "stage", "rng"))
    elif resume:
        print(f"spice train: no {ckpt_path} to resume from; starting from scratch")
    elif ckpt_path.exists():
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue it, or choose another out_dir")
    distributed.barrier()  # every rank has looked for the checkpoint before rank 0 writes one

    dataset = build_dataset(config.data)
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    args = model_args(config.model, dataset)
    if checkpoint is not None and checkpoint["model_args"] != args:
        raise ValueError(f"{ckpt_path}: model {checkpoint['model_args']} differs from the config's {args}")

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    model = build_model(args).to(device)
    if config.sync_batchnorm and ctx.distributed:  # same state_dict keys; one process: nothing changes
        distributed.convert_sync_batchnorm(model)
    start, stage = 0, config.stage_at(0)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        start, stage = int(checkpoint["iteration"]), int(checkpoint["stage"])
    elif config.init_weights:
        init = read_checkpoint(config.init_weights)
        if init["model_args"] != args:
            raise ValueError(f"{config.init_weights}: model {init['model_args']} differs from the config's {args}")
        model.load_state_dict(init["model"])
    optimizer = make_optimizer(model, config, stage)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(checkpoint["rng"])
    set_stage(model, stage)
    ddp = distributed.wrap(model, ctx)  # DDP over the parameters trainable in this stage
    if ctx.is_main:
        atomic_write_bytes(out_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False).encode())

    total = config.iterations
    sampler = BatchStream(len(dataset), config.batch_size, config.seed, start, total, positions=config.data.augment)
    view = AugmentedView(dataset, config.seed) if config.data.augment else dataset
    loader = torch.utils.data.DataLoader(view, batch_sampler=distributed.RankSlice(sampler, ctx), collate_fn=collate,
                                         num_workers=config.num_workers,
                                         # its own generator: creating the iterator must not draw from
                                         # the global torch RNG, or a resumed run's RNG state would differ
                                         generator=torch.Generator().manual_seed(config.seed))
    rows = read_csv(out_dir / "losses.csv", start) if checkpoint is not None else []
    writer = tensorboard_writer(out_dir, start) if ctx.is_main else None

    def checkpoint_now(iteration: int) -> None:
        if not ctx.is_main:
            return
        sampler_state = sampler.state_dict() | {"next_iteration": iteration}
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "stage": stage,
                 "iteration": iteration, "config": config.to_dict(), "model_args": args,
                 "rng": rng_state(), "sampler": sampler_state}
        # losses first: a run killed between the two writes resumes from the older checkpoint and keeps
        # the rows up to it (read_csv drops later ones); in the other order it would lose rows
        write_csv(out_dir / "losses.csv", rows)
        save_checkpoint(ckpt_path, state)
        if config.keep_checkpoints:
            save_checkpoint(out_dir / f"checkpoint_{iteration:07d}.pt", state)

    iteration = start
    tick = time.perf_counter()
    deadline = tick + 60 * config.max_minutes if config.max_minutes > 0 else None
    with tqdm(total=total, initial=start, disable=not (config.progress and ctx.is_main), desc="spice train",
              dynamic_ncols=True) as bar:
        for batch in loader:
            if config.stage_at(iteration) != stage:
                stage = config.stage_at(iteration)
                set_stage(model, stage)
                if stage == 2 and config.stage2_optimizer == "continue":
                    optimizer.add_param_group({"params": list(model.seediness_parameters())})
                else:
                    optimizer = make_optimizer(model, config, stage)
                ddp = None  # drop the previous stage's DDP (its hooks) before wrapping the trainable parameters
                ddp = distributed.wrap(model, ctx)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, iteration)
            try:
                losses = train_step(ddp, optimizer, config.loss, batch.to(device), stage, config.bf16,
                                    reduce=distributed.mean_over_ranks if ctx.distributed else None)
            except FloatingPointError as err:
                raise FloatingPointError(f"iteration {iteration + 1}, {err}") from None
            iteration += 1

            now = time.perf_counter()
            row = {"iteration": iteration, "stage": stage, **{t: losses[t].item() for t in TERMS},
                   "lr": optimizer.param_groups[0]["lr"], "seconds": now - tick}
            tick = now
            rows.append(row)
            if writer is not None:
                for t in TERMS:
                    writer.add_scalar(f"loss/{t}", row[t], iteration)
            bar.set_postfix(stage=stage, loss=f"{row['total']:.4f}", emb=f"{row['emb']:.4f}", seed=f"{row['seed']:.4f}")
            bar.update(1)
            if config.snapshot_every and iteration % config.snapshot_every == 0 and ctx.is_main:
                save_snapshot(out_dir, model, args, iteration, stage)
            out_of_time = deadline is not None and distributed.any_rank(now >= deadline, device) and iteration < total
            if iteration % config.checkpoint_every == 0 or iteration == total or out_of_time:
                checkpoint_now(iteration)
            elif iteration % config.log_every == 0 and ctx.is_main:
                write_csv(out_dir / "losses.csv", rows)
            if out_of_time:
                if ctx.is_main:
                    tqdm.write(f"spice train: max_minutes={config.max_minutes:g} spent at iteration {iteration} of "
                               f"{total}; {ckpt_path} saved, resume to continue")
                break
    if iteration == start:  # nothing left to do (e.g. resuming a finished run): make sure a checkpoint exists
        if not ckpt_path.exists():
            checkpoint_now(iteration)
    if writer is not None:
        writer.close()
    distributed.barrier()  # rank 0's last checkpoint is written when any rank returns
    return ckpt_path


def read_checkpoint(checkpoint: str | Path, device: str | torch.device = "cpu", keys=("model", "model_args")) -> dict:
    """torch.load of a checkpoint or weights file, raising ValueError naming the file when it is not a
    readable torch file or lacks one of `keys`."""
    try:
        state = torch.load(checkpoint, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated or foreign files: torch's own message does not name the file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{checkpoint}: not a readable checkpoint ({type(err).__name__}: {first})") from err
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{checkpoint}: not a SPICE checkpoint (no {', '.join(missing)})")
    return state


def finished(checkpoint: str | Path) -> bool:
    """Whether a training checkpoint has run all of its config's iterations (False after a max_minutes stop)."""
    state = read_checkpoint(checkpoint, keys=("config", "iteration"))
    config = TrainConfig.from_dict(state["config"])
    return int(state["iteration"]) >= config.iterations


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """The SPICE network of a training checkpoint or a weights-only file (snapshots, weights/), on
    `device`, in eval mode."""
    state = read_checkpoint(checkpoint, device)
    model = build_model(state["model_args"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"{checkpoint}: weights do not fit the model {state['model_args']} ({err})") from None
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spice train", description="Train SPICE in two stages (SPEC §3), "
                                     "optionally with a third that fine-tunes the seediness decoder alone.")
    parser.add_argument("--config", required=True, help="YAML file with TrainConfig fields")
    parser.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pt")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. --set model.filters=8 --set lr=0.001")
    ns = parser.parse_args(argv)
    config = TrainConfig.load(ns.config, ns.set)
    try:
        path = train(config, resume=ns.resume)
    except (distributed.DistError, RuntimeError) as err:  # a peer died or timed out: one line, exit 1, no hang
        if not distributed.collective_failed(err):
            raise
        distributed.fail("spice train", err)
    if distributed.current().is_main:
        print(path)
    distributed.teardown()
    return 0
