"""Provenance of every output: git commit, profile, data manifest or generator seed, device, versions.

`provenance(...)` returns a plain JSON-able dict; `write_json(path, obj)` writes any JSON atomically.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("torch", "numpy", "scipy", "pandas", "scikit-learn", "matplotlib", "h5py", "uproot",
             "papermill", "spice-lartpc")


def git_commit(repo: Path = REPO_ROOT) -> dict:
    """{'commit': sha or 'unknown', 'dirty': bool} of the working tree at `repo`."""
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def device_info() -> dict:
    """The machine the numbers were computed on: CPU model/cores and CUDA devices (if any)."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover - torch is a hard dependency
        info["cuda"] = []
    return info


def library_versions(names=LIBRARIES) -> dict:
    """{distribution name: version or None when not installed}."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(profile: str | None = None, notebook: str | None = None, data: dict | None = None,
               **extra) -> dict:
    """Everything needed to say where an output came from.

    `data` is the data manifest (files with sha256) or the generator parameters (seed, counts).
    `extra` entries (e.g. checkpoint path, thresholds) are added as they are.
    """
    rec = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "profile": profile, "notebook": notebook, "git": git_commit(), "device": device_info(),
           "libraries": library_versions(), "data": data}
    rec.update(extra)
    return rec


def write_json(path, obj) -> Path:
    """Write `obj` as indented JSON to `path` atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path
