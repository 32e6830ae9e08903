"""Provenance: what makes a tree "dirty", and the index's warnings about stale figure sidecars (temporary git repos)."""
import json
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from spice import notebooks as nbrun
from spice import provenance as pv

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo: Path, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    for rel, text in {"spice/a.py": "x = 1\n", "notebooks/00_a.ipynb": "{}\n", "notebooks/profiles/demo.yaml": "seed: 0\n",
                      "configs/demo.yaml": "lr: 0.1\n", "figures/fig.png": "png\n", "README.md": "readme\n",
                      ".gitignore": "build/\ndata/generated/\n__pycache__/\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "init", "-q")
    commit_all(root, "first")
    return root


def test_outputs_written_by_the_run_do_not_make_the_tree_dirty(repo):
    assert pv.dirty_paths(repo) == []
    (repo / "figures" / "fig.png").write_text("rewritten by the run\n")  # tracked output, rewritten
    (repo / "figures" / "new_table.csv").write_text("a\n")               # new output
    (repo / "README.md").write_text("edited\n")
    (repo / "build").mkdir()
    (repo / "build" / "train.json").write_text("{}\n")
    (repo / "data" / "generated").mkdir(parents=True)
    (repo / "data" / "generated" / "train.h5").write_text("h5\n")
    (repo / "notebooks" / ".ipynb_checkpoints").mkdir()
    (repo / "notebooks" / ".ipynb_checkpoints" / "00_a-checkpoint.ipynb").write_text("{}\n")
    (repo / "spice" / "__pycache__").mkdir()
    (repo / "spice" / "__pycache__" / "a.pyc").write_text("pyc\n")
    info = pv.git_commit(repo)
    assert info == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False, "changed": []}


@pytest.mark.parametrize("rel, text", [("spice/a.py", "x = 2\n"), ("spice/new.py", "y = 1\n"),
                                       ("notebooks/00_a.ipynb", '{"cells": []}\n'),
                                       ("notebooks/profiles/demo.yaml", "seed: 1\n"),
                                       ("configs/demo.yaml", "lr: 0.2\n")])
def test_code_notebooks_profiles_and_configs_make_it_dirty(repo, rel, text):
    (repo / rel).write_text(text)
    info = pv.git_commit(repo)
    assert info["dirty"] is True and info["changed"] == [rel]


def test_a_deleted_or_staged_source_is_dirty(repo):
    (repo / "spice" / "a.py").unlink()
    assert pv.dirty_paths(repo) == ["spice/a.py"]
    (repo / "spice" / "a.py").write_text("x = 3\n")
    git(repo, "add", "spice/a.py")
    assert pv.dirty_paths(repo) == ["spice/a.py"]


def test_not_a_repository(tmp_path):
    assert pv.git_commit(tmp_path) == {"commit": "unknown", "dirty": None, "changed": []}


def sidecar(figures: Path, stem: str, commit: str, dirty) -> None:
    figures.mkdir(parents=True, exist_ok=True)
    (figures / f"{stem}.json").write_text(json.dumps({"profile": "demo", "git": {"commit": commit, "dirty": dirty},
                                                      "outputs": [f"{stem}.png"]}))


def test_stale_sidecars_name_dirty_and_outdated_outputs(repo, tmp_path):
    old = git(repo, "rev-parse", "HEAD")
    (repo / "spice" / "a.py").write_text("x = 2\n")
    code = commit_all(repo, "code")
    (repo / "README.md").write_text("docs only\n")
    head = commit_all(repo, "docs")
    figures = tmp_path / "figures"
    sidecar(figures, "fig_clean", head, False)
    sidecar(figures, "fig_docs", code, False)     # only README changed since: still current
    assert pv.stale_sidecars(figures, repo) == []
    (figures / "table.csv.json").write_text("[1, 2]")  # JSON that is not a sidecar: ignored
    (figures / "broken.json").write_text("{")
    assert pv.stale_sidecars(figures, repo) == []

    sidecar(figures, "fig_dirty", head, True)
    sidecar(figures, "fig_old", old, False)
    sidecar(figures, "fig_alien", "0" * 40, False)
    warnings = pv.stale_sidecars(figures, repo)
    assert len(warnings) == 3, warnings
    dirty, = [w for w in warnings if "differed from its commit" in w]
    assert "1 outputs" in dirty and "fig_dirty.json" in dirty and "fig_clean" not in dirty
    outdated, = [w for w in warnings if "differs from HEAD's" in w]
    assert old[:12] in outdated and "fig_old.json" in outdated and "fig_docs" not in outdated
    alien, = [w for w in warnings if "not in this repository" in w]
    assert "fig_alien.json" in alien


def test_index_command_warns_on_stderr(tmp_path, capsys):
    head = pv.git_commit()["commit"]
    if head == "unknown":
        pytest.skip("the project checkout is not a git repository")
    figures = tmp_path / "figures"
    sidecar(figures, "fig01_event", head, False)
    assert nbrun.main(["index", "--figures", str(figures)]) == 0
    out = capsys.readouterr()
    assert "warning" not in out.err and (figures / "README.md").exists()
    sidecar(figures, "fig01_event", head, True)
    assert nbrun.main(["index", "--figures", str(figures)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "fig01_event.json" in err


def test_cpu_model_reads_the_model_name_and_falls_back_to_the_architecture(tmp_path):
    from spice.provenance import cpu_model
    intel = tmp_path / "intel"
    intel.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 143\n"
                     "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx512f\n")
    assert cpu_model(intel) == "Intel(R) Xeon(R) Processor"
    bare = tmp_path / "bare"
    bare.write_text("processor\t: 0\nmodel\t\t: 2\n")
    assert cpu_model(bare) == (platform.processor() or platform.machine())
    assert cpu_model(tmp_path / "absent") == (platform.processor() or platform.machine())
