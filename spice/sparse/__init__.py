"""Sparse 3-d convolutions behind one functional API, on two interchangeable backends.

A backend module provides `make_input`, `submanifold_conv3`, `downsample_conv2` and
`upsample_conv2` (see docs/CONTRACTS.md). Weights live in the model's layers ([K, Cin, Cout],
x-fastest offsets), so a checkpoint trained on one backend loads on the other.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

from .tensor import SparseTensor, cat

BACKENDS = {"torch": "spice.sparse.torch_backend", "minkowski": "spice.sparse.minkowski"}


def backend_name(name: str | None = None) -> str:
    """Resolve a backend name: `name`, else env SPICE_SPARSE_BACKEND, else "torch"."""
    resolved = (name or os.environ.get("SPICE_SPARSE_BACKEND") or "torch").strip().lower()
    if resolved not in BACKENDS:
        raise ValueError(f"unknown sparse backend {resolved!r}; choose one of {sorted(BACKENDS)}")
    return resolved


def get_backend(name: str | None = None) -> ModuleType:
    """The backend module; "minkowski" is imported only when asked for (it needs MinkowskiEngine)."""
    return importlib.import_module(BACKENDS[backend_name(name)])


__all__ = ["SparseTensor", "cat", "get_backend", "backend_name", "BACKENDS"]
