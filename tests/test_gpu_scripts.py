"""The GPU scripts (benchmarks/gpu_checks.py, gpu_demo.py) run end to end on the CPU in their smoke mode,
so a lent GPU session is spent measuring, not debugging. Their numbers here mean nothing."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_checks  # noqa: E402
import gpu_demo  # noqa: E402


def test_gpu_checks_smoke_writes_report(tmp_path):
    assert gpu_checks.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_checks_cpu_smoke.json").read_text())
    assert report["backends"][0]["backend"] == "torch" and report["backends"][0]["train_iter_s"] > 0
    assert report["clustering"]["synthetic_outputs_s_per_event"] > 0
    assert "| torch |" in (tmp_path / "gpu_checks_cpu_smoke.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_gpu_checks_without_cuda_measures_nothing(tmp_path):
    assert gpu_checks.main(["--out", str(tmp_path)]) == 2 and not list(tmp_path.iterdir())


def test_cuda_test_files_are_the_marked_ones():
    files = gpu_checks.cuda_test_files()
    assert {"tests/test_cluster.py", "tests/test_model.py", "tests/test_sparse.py", "tests/test_train.py"} <= set(files)
    assert "tests/test_notebooks.py" not in files  # its imports (papermill) are not needed on a GPU machine


@pytest.mark.slow
def test_gpu_demo_stops_resumes_and_reports(tmp_path):
    args = ["--device", "cpu", "--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert gpu_demo.main(args + ["--stop-after", "1e-9"]) == 3  # one iteration, a checkpoint, exit 3
    plan = json.loads((tmp_path / "work" / "plan.json").read_text())
    assert gpu_demo.main(args) == 0  # the same plan, resumed to the end
    assert json.loads((tmp_path / "work" / "plan.json").read_text()) == plan
    report = json.loads((tmp_path / "out" / "gpu_demo_cpu_smoke.json").read_text())
    assert report["train_calls"] == 2
    trained = [r for r in report["table"] if r["dataset"].endswith("trained SPICE")]
    # a few iterations planned from a timed probe: ARI near 0, and ARI may be below 0 (its range is [-1, 1])
    assert trained and all(-1 <= r["ari"] <= 1 and 0 <= r["purity"] <= 1 for r in trained)
    assert "| generated test set: trained SPICE" in (tmp_path / "out" / "gpu_demo_cpu_smoke.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_gpu_session_script_smoke(tmp_path):
    """benchmarks/gpu_session.sh, as one device call runs it, here with the scripts' CPU smoke mode."""
    env = {**os.environ, "PYTHON": sys.executable, "SPICE_GPU_ARGS": "--device cpu --quick", "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "all", "5"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "gpu_checks exit 0, gpu_demo exit 0" in proc.stdout
    bad = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "nonsense"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage" in bad.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_gpu_demo_without_cuda_trains_nothing(tmp_path, capsys):
    assert gpu_demo.main(["--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err and not (tmp_path / "w").exists()
