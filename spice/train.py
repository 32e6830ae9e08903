"""Two-stage SPICE training (SPEC §3): `spice train --config FILE.yaml [--resume] [--set key=value ...]`.

Stage 1 (iterations [0, stage1_iterations)) optimises L_emb with the seediness decoder and head
frozen: their parameters have requires_grad False and are not in the optimiser, and their modules stay
in eval mode so BatchNorm running statistics do not move either. Stage 2 trains everything on the
total loss. `stage2_optimizer: continue` (default) keeps the stage-1 Adam state of the embedding
parameters and adds the seediness parameters as a new parameter group; `fresh` starts a new Adam.

Batches: the event stream is a concatenation of seeded random permutations of the dataset (epoch e
uses torch.Generator seeded with (seed, e)), and iteration i takes elements [i·B, (i+1)·B) of it, so
the data order depends only on (seed, iteration): a resumed run sees exactly the batches it would have.

Outputs in out_dir (each written to a temporary name and renamed): checkpoint.pt (latest; model,
optimiser, stage, iteration, config, RNG states, sampler state), checkpoint_<iteration>.pt when
keep_checkpoints is set, config.yaml, losses.csv (iteration, stage, every loss term, lr, seconds per
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

from spice.data.event import collate
from spice.losses import TERMS, SPICELoss

CHECKPOINT = "checkpoint.pt"
CSV_COLUMNS = ("iteration", "stage", *TERMS, "lr", "seconds")


# ------------------------------------------------------------------------------------------ config
@dataclass
class SyntheticConfig:
    """In-memory events from spice.data.synthetic.generate."""

    n_events: int = 64
    spatial_size: int = 192
    seed: int = 0


@dataclass
class DataConfig:
    """Either `train` (PILArNet .root / PILArNet-M .h5 files, read with spice.data.EventDataset) or `synthetic`."""

    train: list[str] = field(default_factory=list)
    synthetic: SyntheticConfig | None = None
    energy_threshold: float = 0.0
    min_voxels: int = 0


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
    batch_size: int = 32
    lr: float = 0.005
    seed: int = 0
    device: str = "auto"                 # "auto" = CUDA when available, else CPU
    bf16: bool = False                   # bf16 autocast of the forward pass (CUDA only)
    num_workers: int = 0
    threads: int = 0                     # CPU threads; 0 = torch default
    checkpoint_every: int = 1000
    keep_checkpoints: bool = False
    max_minutes: float = 0.0             # wall-clock budget: stop with a checkpoint once spent (0 = none);
                                         # rerun with resume to continue (batch jobs, time-limited GPUs)
    log_every: int = 50                  # rewrite losses.csv every this many iterations
    progress: bool = True
    out_dir: str = "runs/spice"

    def __post_init__(self):
        if self.stage2_optimizer not in ("continue", "fresh"):
            raise ValueError(f"stage2_optimizer must be 'continue' or 'fresh', got {self.stage2_optimizer!r}")
        for name in ("stage1_iterations", "stage2_iterations"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.batch_size < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("batch_size, checkpoint_every and log_every must be >= 1")
        if self.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0 (0: no limit), got {self.max_minutes}")

    @property
    def iterations(self) -> int:
        return self.stage1_iterations + self.stage2_iterations

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
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_dataset(cfg: DataConfig):
    """A list-like of Events (indexable, len)."""
    if cfg.synthetic is not None and cfg.train:
        raise ValueError("data: give either `train` files or `synthetic`, not both")
    if cfg.synthetic is not None:
        from spice.data.synthetic import generate
        s = cfg.synthetic
        events = list(generate(s.n_events, spatial_size=s.spatial_size, seed=s.seed))
        if cfg.energy_threshold > 0 or cfg.min_voxels > 0:
            raise ValueError("data: energy_threshold / min_voxels apply to files only")
        return events
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

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int):
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop

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
            out.append(int(cached[pos % self.n]))
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "next_iteration": self.start, "n": self.n, "batch_size": self.batch_size}

    def __iter__(self):
        return (self.batch(i) for i in range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


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
    """Train mode; in stage 1 the seediness parameters are frozen and their modules kept in eval mode."""
    model.train()
    for p in model.seediness_parameters():
        p.requires_grad_(stage == 2)
    if stage == 1:
        for module in seediness_modules(model):
            module.eval()


def make_optimizer(model, cfg: TrainConfig, stage: int) -> torch.optim.Adam:
    """Stage 1: Adam over the embedding parameters. Stage 2: the same plus a seediness group
    ("continue"), or one Adam over all parameters ("fresh")."""
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
               stage: int = 2, bf16: bool = False) -> dict[str, torch.Tensor]:
    """One optimisation step on `batch` (already on the model's device): forward (under bf16 autocast
    when `bf16` and on CUDA), the loss terms, backward of L_emb (stage 1) or the total (stage 2), and the
    optimiser step. Returns the loss terms; a non-finite objective raises FloatingPointError before any
    update, naming the batch's events."""
    device_type = batch.coords.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16 and device_type == "cuda"):
        outputs = model(batch)
    losses = loss(outputs, batch)
    objective = losses["emb"] if stage == 1 else losses["total"]
    if not torch.isfinite(objective):
        raise FloatingPointError(f"stage {stage}: non-finite loss { {t: v.item() for t, v in losses.items()} } "
                                 f"on events {batch.sources}")
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    optimizer.step()
    return losses


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Run (or resume) both stages; return the path of the latest checkpoint (out_dir/checkpoint.pt).

    With `max_minutes` the run may stop early: its checkpoint's "iteration" is then below
    config.iterations (see `finished`), and train(config, resume=True) continues it exactly."""
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT
    device = resolve_device(config.device)
    if config.threads > 0:
        torch.set_num_threads(config.threads)

    checkpoint = None
    if resume and ckpt_path.exists():
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    elif resume:
        print(f"spice train: no {ckpt_path} to resume from; starting from scratch")
    elif ckpt_path.exists():
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue it, or choose another out_dir")

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
    start, stage = 0, 1 if config.stage1_iterations > 0 else 2
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        start, stage = int(checkpoint["iteration"]), int(checkpoint["stage"])
    optimizer = make_optimizer(model, config, stage)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(checkpoint["rng"])
    set_stage(model, stage)
    atomic_write_bytes(out_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False).encode())

    total = config.iterations
    sampler = BatchStream(len(dataset), config.batch_size, config.seed, start, total)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.num_workers,
                                         # its own generator: creating the iterator must not draw from
                                         # the global torch RNG, or a resumed run's RNG state would differ
                                         generator=torch.Generator().manual_seed(config.seed))
    rows = read_csv(out_dir / "losses.csv", start) if checkpoint is not None else []
    writer = tensorboard_writer(out_dir, start)

    def checkpoint_now(iteration: int) -> None:
        sampler_state = sampler.state_dict() | {"next_iteration": iteration}
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "stage": stage,
                 "iteration": iteration, "config": config.to_dict(), "model_args": args,
                 "rng": rng_state(), "sampler": sampler_state}
        save_checkpoint(ckpt_path, state)
        if config.keep_checkpoints:
            save_checkpoint(out_dir / f"checkpoint_{iteration:07d}.pt", state)
        write_csv(out_dir / "losses.csv", rows)

    iteration = start
    tick = time.perf_counter()
    deadline = tick + 60 * config.max_minutes if config.max_minutes > 0 else None
    with tqdm(total=total, initial=start, disable=not config.progress, desc="spice train",
              dynamic_ncols=True) as bar:
        for batch in loader:
            if iteration >= config.stage1_iterations and stage == 1:
                stage = 2
                set_stage(model, stage)
                if config.stage2_optimizer == "fresh":
                    optimizer = make_optimizer(model, config, stage)
                else:
                    optimizer.add_param_group({"params": list(model.seediness_parameters())})
            try:
                losses = train_step(model, optimizer, config.loss, batch.to(device), stage, config.bf16)
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
            bar.set_postfix(stage=stage, loss=f"{row['total']:.4f}", emb=f"{row['emb']:.4f}")
            bar.update(1)
            out_of_time = deadline is not None and now >= deadline and iteration < total
            if iteration % config.checkpoint_every == 0 or iteration == total or out_of_time:
                checkpoint_now(iteration)
            elif iteration % config.log_every == 0:
                write_csv(out_dir / "losses.csv", rows)
            if out_of_time:
                tqdm.write(f"spice train: max_minutes={config.max_minutes:g} spent at iteration {iteration} of "
                           f"{total}; {ckpt_path} saved, resume to continue")
                break
    if iteration == start:  # nothing left to do (e.g. resuming a finished run): make sure a checkpoint exists
        if not ckpt_path.exists():
            checkpoint_now(iteration)
    if writer is not None:
        writer.close()
    return ckpt_path


def finished(checkpoint: str | Path) -> bool:
    """Whether a training checkpoint has run all of its config's iterations (False after a max_minutes stop)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = TrainConfig.from_dict(state["config"])
    return int(state["iteration"]) >= config.iterations


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """The SPICE network of a training checkpoint, on `device`, in eval mode."""
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    model = build_model(state["model_args"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spice train", description="Train SPICE in two stages (SPEC §3).")
    parser.add_argument("--config", required=True, help="YAML file with TrainConfig fields")
    parser.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pt")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. --set model.filters=8 --set lr=0.001")
    ns = parser.parse_args(argv)
    config = TrainConfig.load(ns.config, ns.set)
    path = train(config, resume=ns.resume)
    print(path)
    return 0
