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


# What an output depends on: a change here (tracked or untracked) makes the tree "dirty". The outputs a
# run writes itself (figures/, build/, data/generated, data/downloads) are not in the list.
SOURCES = ("spice", "notebooks", "configs", "pyproject.toml")
NOT_SOURCES = (":(exclude,glob)**/.ipynb_checkpoints/**", ":(exclude,glob)**/__pycache__/**")


def _git(repo: Path, *args, strip: bool = True) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         timeout=20, check=True).stdout
    return out.strip() if strip else out


def dirty_paths(repo: Path = REPO_ROOT, sources=SOURCES) -> list[str]:
    """Paths under `sources` that differ from HEAD: modified, staged, deleted or untracked (not ignored)."""
    out = _git(repo, "status", "--porcelain", "--untracked-files=all", "--", *sources, *NOT_SOURCES, strip=False)
    return [line[3:] for line in out.splitlines() if line]  # "XY path" (a rename: "old -> new")


def git_commit(repo: Path = REPO_ROOT) -> dict:
    """{'commit': sha or 'unknown', 'dirty': bool, 'changed': [paths]} of the working tree at `repo`;
    dirty means that code, notebooks, profiles or configs (SOURCES) differ from the commit."""
    try:
        changed = dirty_paths(repo)
        return {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": bool(changed), "changed": changed[:50]}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None, "changed": []}


def code_changed_since(commit: str, repo: Path = REPO_ROOT, paths=("spice",)) -> bool | None:
    """Whether `paths` at HEAD differ from `commit` (None when git or the commit is unavailable)."""
    try:
        _git(repo, "cat-file", "-e", f"{commit}^{{commit}}")
        return bool(_git(repo, "diff", "--name-only", commit, "HEAD", "--", *paths))
    except (OSError, subprocess.SubprocessError):
        return None


def stale_sidecars(directory: Path, repo: Path = REPO_ROOT) -> list[str]:
    """Warnings (one line per problem) about the provenance sidecars (`*.json` with a 'git' entry) under
    `directory`: made from a dirty tree, or from a commit whose spice/ differs from HEAD's (or unknown)."""
    dirty, by_commit = [], {}
    for path in sorted(Path(directory).rglob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        git = rec.get("git") if isinstance(rec, dict) else None
        if not isinstance(git, dict):
            continue
        name = str(path.relative_to(directory))
        if git.get("dirty") is not False:
            dirty.append(name)
        by_commit.setdefault(git.get("commit") or "unknown", []).append(name)

    def few(names):
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    lines = []
    if dirty:
        lines.append(f"{directory}: {len(dirty)} outputs were made from a tree whose code, notebooks or "
                     f"configs differed from its commit (or could not be checked): {few(dirty)}")
    for commit, names in sorted(by_commit.items()):
        changed = None if commit == "unknown" else code_changed_since(commit, repo)
        if changed is None:
            lines.append(f"{directory}: {len(names)} outputs name commit {commit[:12]}, which is not in this "
                         f"repository: {few(names)}")
        elif changed:
            lines.append(f"{directory}: {len(names)} outputs were made at commit {commit[:12]}, whose spice/ "
                         f"differs from HEAD's: {few(names)}")
    return lines


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) Processor"), read from Linux's `cpuinfo`;
    elsewhere, or where it names none, the architecture ("x86_64", "arm64")."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and value.strip():  # x86 / ARM spelling
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict:
    """The machine the numbers were computed on: CPU model/cores and CUDA devices (if any)."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count()}
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
