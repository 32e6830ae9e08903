"""The GPU scripts (benchmarks/gpu_checks.py, gpu_demo.py, gpu_train.py) run end to end on the CPU in their smoke mode,
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
import gpu_train  # noqa: E402

from spice.train import TrainConfig, finished, learning_rate, load_model  # noqa: E402


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
    lease = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "lease", "40"],
                           env={**env, "TRAIN_OVERHEAD_SECONDS": "25"}, capture_output=True, text=True, timeout=600)
    assert lease.returncode == 0, lease.stdout[-2000:] + lease.stderr[-2000:]
    assert "gpu_checks exit 0, gpu_train exit 0" in lease.stdout
    assert finished(tmp_path / "run" / "checkpoint.pt") and (tmp_path / "results.tar.gz").exists()
    bad = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "nonsense"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage" in bad.stdout


def test_gpu_train_sizes_stages_in_proportion(tmp_path):
    config = TrainConfig.from_dict({"stage1_iterations": 250, "stage2_iterations": 750, "warmup_iterations": 50})
    run = gpu_train.sized(config, 100, 2.0, tmp_path, 2)
    assert (run.stage1_iterations, run.stage2_iterations, run.stage3_iterations) == (25, 75, 0)
    assert run.snapshot_every == 50 and run.warmup_iterations == 10 and run.out_dir == str(tmp_path)
    assert run.max_minutes == pytest.approx(2.0 * 1.05 + 0.25)  # a backstop just past the budget
    only2 = gpu_train.sized(TrainConfig.from_dict({"stage1_iterations": 0, "stage2_iterations": 10}), 7, 1.0, tmp_path, 2)
    assert (only2.stage1_iterations, only2.stage2_iterations) == (0, 7)
    tiny = gpu_train.sized(TrainConfig.from_dict({"stage1_iterations": 1, "stage2_iterations": 99}), 10, 1.0, tmp_path, 2)
    assert (tiny.stage1_iterations, tiny.stage2_iterations) == (1, 9)  # a stage that had iterations keeps one


@pytest.mark.slow
def test_gpu_train_smoke_plans_trains_and_exports_a_releasable_run(tmp_path):
    """Probe, plan, train to the planned end (the cosine schedule reaches its floor), export a run folder."""
    export = tmp_path / "out" / "run"
    code = gpu_train.main(["--config", str(ROOT / "configs" / "reference_gpu.yaml"), "--minutes", "0.05", "--probe",
                           "6", "--quick", "--work", str(tmp_path / "work"), "--export", str(export)])
    assert code == 0
    plan = json.loads((export / "plan.json").read_text())
    assert plan["trained_iterations"] == plan["planned_iterations"] == sum(plan["stages"]) and plan["finished"]
    assert plan["planned_iterations"] == max(2, int(0.05 * 60 / plan["probe_seconds_per_iteration"]))
    assert finished(export / "checkpoint.pt") and load_model(export / "checkpoint.pt").spatial_size == 64
    losses = [line.split(",") for line in (export / "losses.csv").read_text().splitlines()]
    lr = float(losses[-1][losses[0].index("lr")])
    config = TrainConfig.load(export / "config.yaml")
    assert config.iterations == plan["planned_iterations"]  # the schedule was planned over what ran:
    assert lr == pytest.approx(learning_rate(config, config.iterations - 1)) and lr < 0.2 * config.lr  # decayed end
    assert len(list((export / "snapshots").glob("model_*.pt"))) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_gpu_demo_without_cuda_trains_nothing(tmp_path, capsys):
    assert gpu_demo.main(["--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err and not (tmp_path / "w").exists()
