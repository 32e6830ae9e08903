"""The torch backend's fused CPU kernels (cpu_kernels.cpp): each output row summed in registers from its
input rows, with no gathered block, no per-offset GEMM and no scatter.

The C++ source is compiled once per machine kind on first use (torch.utils.cpp_extension, g++ and ninja,
about 30 s; `make env` does it), with -march=native, into $TORCH_EXTENSIONS_DIR (else
~/.cache/torch_extensions) under a name that carries a hash of the source, the CPU's feature flags and the
torch and Python versions, so a build is never loaded on a CPU that lacks its instructions or beside
another torch. Where it cannot be built the torch backend says so in one line and runs its torch routes;
SPICE_FUSED_CPU=0 turns the kernels off (to time the torch routes against them).

A Gather's product (offset_mm) runs in blocks of output rows that stay in cache, offset after offset, a
few pairs of one offset sharing every load of W[k]; its weight gradient (offset_tmm) offset by offset. A
Pick's product (pick_mm: one pair per row) runs fused only within WEIGHT_BYTES (`fits_pick`).

Each kernel's sums run in a fixed order and each output element is written by one thread, so results
are the same whatever the number of threads. They take any width (Cout; Cin for an input gradient): the
columns go in tiles of whole vectors (16 float32 with AVX-512, else 8; half that in float64), and those past
the last whole vector in one tile of single elements (`fits`).
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from .kernel_map import Gather, Pick

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp"]
# pick_mm reads a row's W[k] for that row alone: above this the weights leave L2 and the torch routes win.
WEIGHT_BYTES = 512 << 10
STALE_LOCK_S = 600  # a build takes about 30 s; a lock this old was left by an interrupted one
_module = None
_failed: str | None = None


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux /proc/cpuinfo), else the platform's name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def extension_name(flags: list[str] = FLAGS) -> str:
    """spice_cpu_kernels_<hash of the source, the flags, the CPU's features, torch's and Python's versions>."""
    key = [" ".join(flags), _cpu_flags(), torch.__version__, sys.version]
    digest = hashlib.sha1(SOURCE.read_bytes() + "\n".join(key).encode()).hexdigest()[:12]
    return f"spice_cpu_kernels_{digest}"


def build_directory(name: str) -> Path:
    """$TORCH_EXTENSIONS_DIR (else ~/.cache/torch_extensions) / name, made if absent. A build lock older
    than STALE_LOCK_S is removed (an interrupted build leaves it, and torch would wait on it forever)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    lock = path / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            print(f"spice: removing the stale build lock {lock} (left by an interrupted build)", file=sys.stderr)
            lock.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    return path


def build(flags: list[str] = FLAGS, verbose: bool = False):
    """Compile the kernels with `flags` (or load that build, made before); raises where it fails."""
    from torch.utils.cpp_extension import load as compile_extension
    name = extension_name(flags)
    folder = build_directory(name)
    if not any(folder.glob("*.so")):
        print(f"spice: compiling the fused CPU sparse kernels into {folder} (once per machine, about 30 s)",
              file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_extension(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                                 build_directory=str(folder), verbose=verbose)


def load(verbose: bool = False):
    """The compiled kernels (built on first use), or None where they cannot be built or are turned off."""
    global _module, _failed
    if _module is not None or _failed is not None:
        return _module
    if os.environ.get("SPICE_FUSED_CPU", "1").strip() == "0":
        _failed = "turned off by SPICE_FUSED_CPU=0"
        return None
    try:
        _module = build(FLAGS, verbose)
    except Exception as err:  # no compiler, no ninja, a failed build: the torch routes still work
        _failed = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
        print(f"spice: fused CPU sparse kernels unavailable ({_failed}); using the torch routes", file=sys.stderr)
    return _module


def fits(src: torch.Tensor) -> bool:
    """Whether a product from `src` runs in the fused kernels (any width): on the CPU, in float32 or float64,
    where the kernels are built."""
    return src.device.type == "cpu" and src.dtype in (torch.float32, torch.float64) and load() is not None


def fits_pick(src: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a Pick's product src @ weight[k] runs in pick_mm: `fits`, with the weight within WEIGHT_BYTES
    (pick_mm reads a row's whole W[k] for that row alone)."""
    return fits(src) and weight.numel() * src.element_size() <= WEIGHT_BYTES


def gather_mm(src: torch.Tensor, route: Gather, weight: torch.Tensor) -> torch.Tensor:
    """out[i] = Σ_k src[table[i, k]] @ weight[k] over the present entries: src (n_src, C),
    weight [K, C, C'] -> (n_out, C')."""
    lists = route.pair_lists(src.shape[0])
    return _module.offset_mm(src.contiguous(), lists.k_ptr, lists.k_i, lists.k_j, weight.contiguous(),
                             route.table.shape[0])


def gather_tmm(src: torch.Tensor, route: Gather, other: torch.Tensor) -> torch.Tensor:
    """Weight gradient [K, C, C']: block k = Σ_i src[table[i, k]]ᵀ other[i]; src (n_src, C), other (n_out, C')."""
    lists = route.pair_lists(src.shape[0])
    return _module.offset_tmm(src.contiguous(), lists.k_ptr, lists.k_i, lists.k_j, other.contiguous())


def pick_mm(src: torch.Tensor, route: Pick, weight: torch.Tensor) -> torch.Tensor:
    """out[i] = src[cell[i] // K] @ weight[cell[i] % K] (zero where absent): src (n_src, C), weight [K, C, C']."""
    return _module.pick_mm(src.contiguous(), route.cell.contiguous(), weight.contiguous())


if __name__ == "__main__":  # `make env`: build the kernels once, say which
    module = load(verbose=False)
    if module is None:
        print(f"fused CPU sparse kernels: not built ({_failed}); the torch routes will run")
    else:
        print(f"fused CPU sparse kernels: {extension_name()} ({module.vector_bytes()}-byte vectors)")
