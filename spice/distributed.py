"""Several processes, one job: torch.distributed set-up, DDP, SyncBatchNorm on sparse features, the
rank's slice of each global batch, and sharding/gathering for evaluation and tuning.

A launcher describes the job in the environment:
  torchrun / python -m torch.distributed.run: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
  srun without torchrun: SLURM_PROCID, SLURM_STEP_NUM_TASKS (> 1), SLURM_LOCALID, and MASTER_ADDR
  (else the first host of SLURM_STEP_NODELIST via `scontrol`), MASTER_PORT (else 29500).
Without either, everything here is a no-op on one process. Backend: NCCL on CUDA, gloo on CPU.

Every collective has the process group's timeout, so a rank whose peer died stops with an error
(`collective_failed`, then `fail`: one line, exit status 1) instead of waiting for ever.
"""
from __future__ import annotations

import datetime
import math
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from spice.sparse.layers import BatchNorm
from spice.sparse.tensor import SparseTensor

DistError = dist.DistError


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank in [0, world_size), local_rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_environment(env=os.environ) -> dict | None:
    """{rank, world_size, local_rank, master_addr, master_port} from torchrun's or srun's variables,
    or None for a single process."""
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return {"rank": int(env["RANK"]), "world_size": int(env["WORLD_SIZE"]),
                "local_rank": int(env.get("LOCAL_RANK", "0")), "master_addr": env.get("MASTER_ADDR", "127.0.0.1"),
                "master_port": env.get("MASTER_PORT", "29500")}
    if int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in env:
        addr = env.get("MASTER_ADDR") or _first_slurm_host(env)
        return {"rank": int(env["SLURM_PROCID"]), "world_size": int(env["SLURM_STEP_NUM_TASKS"]),
                "local_rank": int(env.get("SLURM_LOCALID", "0")), "master_addr": addr,
                "master_port": env.get("MASTER_PORT", "29500")}
    return None


def _first_slurm_host(env) -> str:
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        return out[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        raise RuntimeError(f"srun launch: set MASTER_ADDR (could not expand SLURM node list {nodes!r} "
                           "with scontrol)") from None


def current() -> Context:
    """The Context of the initialised process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK",
                       os.environ.get("SLURM_LOCALID", "0"))))
    return Context()


def resolve_device(name: str, ctx: Context | None = None) -> torch.device:
    """"auto" = CUDA when available, else CPU; a bare "cuda" is this rank's GPU cuda:<local_rank>."""
    ctx = ctx or current()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and ctx.distributed:
        device = torch.device("cuda", ctx.local_rank)
    return device


def setup(device: str = "auto", timeout_s: float = 600.0) -> tuple[Context, torch.device]:
    """Join the process group the launcher describes (no-op for one process, or when already joined);
    return (Context, this rank's device). `timeout_s` bounds every collective."""
    if dist.is_available() and dist.is_initialized():
        ctx = current()
        return ctx, resolve_device(device, ctx)
    spec = launch_environment()
    if spec is None:
        return Context(), resolve_device(device, Context())
    ctx = Context(spec["rank"], spec["world_size"], spec["local_rank"])
    dev = resolve_device(device, ctx)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    os.environ.setdefault("MASTER_ADDR", spec["master_addr"])
    os.environ.setdefault("MASTER_PORT", str(spec["master_port"]))
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=ctx.rank, world_size=ctx.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=dev if dev.type == "cuda" else None)
    return ctx, dev


def teardown() -> None:
    """Leave the process group (after a normal end; a failed job just exits)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().distributed:
        dist.barrier()


_PEER_FAILURE = ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out", "Timed out", "timeout")


def collective_failed(err: BaseException) -> bool:
    """Whether `err` is a failed collective of a process group (a peer died, or a timeout): torch's
    DistError, or the RuntimeError that gloo raises from inside a collective or DDP's backward."""
    if isinstance(err, DistError):
        return True
    return (isinstance(err, RuntimeError) and current().distributed
            and any(word in str(err) for word in _PEER_FAILURE))


def fail(prog: str, err: BaseException) -> int:
    """Print one line naming the rank for a failed collective (a peer died or timed out) and leave at
    once with status 1: a broken process group can hang an orderly interpreter exit."""
    ctx = current()
    print(f"{prog}: error: rank {ctx.rank} of {ctx.world_size}: a collective failed (another rank died or "
          f"timed out); the last checkpoint is intact, rerun with --resume to continue: "
          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


# ------------------------------------------------------------------------------------------ training
def wrap(model: nn.Module, ctx: Context | None = None) -> nn.Module:
    """DistributedDataParallel over the parameters that require grad now (rewrap after changing
    requires_grad, e.g. at the stage switch); the model itself for one process. Inputs are not moved
    (the model has one device); rank 0's parameters and buffers are broadcast at construction, buffers
    not at every step (BatchNorm running statistics stay per rank unless SyncBatchNorm is used)."""
    ctx = ctx or current()
    if not ctx.distributed:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=None, forward_sync_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class _SumOverRanks(torch.autograd.Function):
    """Sum of a tensor over the ranks; the gradient is summed over the ranks too (each rank's loss
    depends on every rank's contribution)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm(BatchNorm):
    """spice.sparse.layers.BatchNorm whose training statistics are those of the features (M, C) of the
    global batch (all ranks), through all-reduced sums that carry gradients. Same parameters, buffers
    and state_dict keys; identical to BatchNorm outside training or without a process group."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        f = x.feats
        count = torch.tensor([float(f.shape[0])], dtype=torch.float64, device=f.device)
        dist.all_reduce(count)
        n = int(count.item())
        mean = _SumOverRanks.apply(f.sum(0)) / max(n, 1)                          # (C,)
        centred = f - mean
        if n <= 1:  # one site in the whole batch: no spread, centred output, statistics untouched
            return x.with_feats(centred * (self.weight / math.sqrt(self.eps)) + self.bias)
        var = _SumOverRanks.apply((centred * centred).sum(0)) / n                   # biased, as in training BN
        out = centred * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        return x.with_feats(out)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every sparse BatchNorm of `model` by SyncBatchNorm, in place, keeping its state
    (call before building the optimiser: the parameters are new objects)."""
    for name, child in list(model.named_children()):
        if isinstance(child, BatchNorm) and not isinstance(child, SyncBatchNorm):
            new = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                child.track_running_stats, device=child.weight.device, dtype=child.weight.dtype)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            for p_new, p_old in zip(new.parameters(), child.parameters()):
                p_new.requires_grad_(p_old.requires_grad)
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child)
    return model


class RankSlice(torch.utils.data.Sampler):
    """This rank's fixed part of every global batch of `batches` (lists of B indices or positions):
    elements [r·b, (r+1)·b) with b = B / world_size, so the global batches do not depend on the world size."""

    def __init__(self, batches, ctx: Context | None = None):
        self.batches, self.ctx = batches, ctx or current()

    def __iter__(self):
        r, w = self.ctx.rank, self.ctx.world_size
        for batch in self.batches:
            batch = list(batch)
            if len(batch) % w:
                raise ValueError(f"a global batch of {len(batch)} does not split over {w} ranks")
            b = len(batch) // w
            yield batch[r * b:(r + 1) * b]

    def __len__(self) -> int:
        return len(self.batches)


def check_batch_size(batch_size: int, ctx: Context | None = None) -> int:
    """The per-rank batch B / world_size; B must be a multiple of the world size."""
    ctx = ctx or current()
    if batch_size % ctx.world_size:
        raise ValueError(f"batch_size {batch_size} (the global batch) is not a multiple of the world size "
                         f"{ctx.world_size}")
    return batch_size // ctx.world_size


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached scalars averaged over the ranks in one all-reduce (the loss of the global batch when
    every rank holds the mean over its equal share of it); the values themselves for one process."""
    if not current().distributed:
        return values
    keys = list(values)
    stacked = torch.stack([values[k].detach().reshape(()).to(torch.float64) for k in keys])
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return {k: stacked[i] for i, k in enumerate(keys)}


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when `flag` is True on any (a common decision, e.g. to stop on a time budget)."""
    if not current().distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# ------------------------------------------------------------------------------------------ evaluation
def shard(n: int, ctx: Context | None = None) -> list[int]:
    """This rank's items of range(n): r, r + W, r + 2W, ... (every item on exactly one rank)."""
    ctx = ctx or current()
    return list(range(ctx.rank, n, ctx.world_size))


def gather(items: list, ctx: Context | None = None) -> list:
    """Every rank's `items` concatenated in rank order, on every rank (pickled; small objects)."""
    ctx = ctx or current()
    if not ctx.distributed:
        return list(items)
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def command(args: list[str], nproc: int = 0) -> list[str]:
    """The command line running `spice <args>` on `nproc` local processes (torchrun, standalone),
    or as one plain process. nproc 0 = env SPICE_NPROC, else 1."""
    nproc = nproc or int(os.environ.get("SPICE_NPROC", "1") or 1)
    if nproc <= 1:
        return [sys.executable, "-m", "spice", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "spice", *args]
