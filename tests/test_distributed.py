"""Several processes on CPU with gloo: 2 ranks x batch 4 with SyncBatchNorm train as 1 process x batch 8
(float64), a rank killed mid-run leaves a resumable checkpoint and the survivor stops, sharded
evaluation and tuning equal one process's. Ranks are separate processes on free loopback ports, each
with a bounded wait, so nothing here can hang."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from spice.data import write_pilarnet_m
from spice.data.synthetic import generate
from spice.distributed import Context, RankSlice, command, launch_environment, shard
from spice.evaluate import evaluate, load_frame, save_thresholds
from spice.losses import TERMS
from spice.model import SPICE
from spice.train import BatchStream
from spice.tune import grid_search

REPO = Path(__file__).resolve().parents[1]
L = 64
WAIT_S = 120  # the longest any launched process may run
# one rank: `spice train` (float64 parameters when argv[1] is "f64")
WORKER = ("import sys, torch\n"
          "if sys.argv[1] == 'f64': torch.set_default_dtype(torch.float64)\n"
          "from spice.train import main\n"
          "sys.exit(main(sys.argv[2:]))\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(world: int, argv: list[str], dtype: str = "f32") -> list[subprocess.Popen]:
    """`world` processes with torchrun's variables, rank r's output in argv's out dir."""
    port = free_port()
    procs = []
    for r in range(world):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        if world == 1:
            for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(k)
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, dtype, *argv], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = WAIT_S) -> list[tuple[int, str]]:
    """(return code, stderr) of each process; kills any still running after `timeout` seconds."""
    out, deadline = [], time.monotonic() + timeout
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            err += "\n[killed by the test: timeout]"
        out.append((p.returncode, err))
    return out


def train_config(path: Path, out_dir: Path, batch_size: int, **kw) -> Path:
    cfg = {"model": {"filters": 4, "depth": 2, "reps": 1, "spatial_size": L, "backend": "torch"},
           "data": {"synthetic": {"n_events": 8, "spatial_size": L, "seed": 3}},
           "stage1_iterations": 2, "stage2_iterations": 3, "batch_size": batch_size, "lr": 0.01,
           "checkpoint_every": 100, "device": "cpu", "progress": False, "threads": 1, "seed": 5,
           "out_dir": str(out_dir), "dist_timeout_s": 30, **kw}
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_training(tmp_path: Path, name: str, world: int, batch: int, dtype: str = "f32", resume=False, **kw):
    cfg = train_config(tmp_path / f"{name}.yaml", tmp_path / name, batch, **kw)
    results = finish(start_ranks(world, ["--config", str(cfg)] + (["--resume"] if resume else []), dtype))
    for rank, (rc, err) in enumerate(results):
        assert rc == 0, f"{name} rank {rank} exited {rc}:\n{err[-3000:]}"
    return tmp_path / name


def final_state(out_dir: Path) -> dict:
    return torch.load(out_dir / "checkpoint.pt", map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- pieces
def test_rank_slices_cover_each_global_batch_in_order():
    stream = BatchStream(10, 4, seed=2, start=0, stop=6)
    slices = [list(RankSlice(stream, Context(r, 2))) for r in range(2)]
    assert [a + b for a, b in zip(*slices)] == list(stream)
    with pytest.raises(ValueError, match="does not split"):
        list(RankSlice(stream, Context(0, 3)))
    assert sorted(shard(7, Context(0, 3)) + shard(7, Context(1, 3)) + shard(7, Context(2, 3))) == list(range(7))


def test_launch_environment_torchrun_slurm_and_none():
    assert launch_environment({}) is None
    assert launch_environment({"WORLD_SIZE": "1", "RANK": "0"}) is None
    tr = launch_environment({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "n1",
                             "MASTER_PORT": "1234"})
    assert tr == {"rank": 2, "world_size": 4, "local_rank": 0, "master_addr": "n1", "master_port": "1234"}
    sl = launch_environment({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
                             "MASTER_ADDR": "gpu07"})
    assert (sl["rank"], sl["world_size"], sl["local_rank"], sl["master_addr"]) == (5, 8, 1, "gpu07")
    # the batch step of an sbatch script (no srun step) stays a single process
    assert launch_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) is None


def test_command_uses_torchrun_for_several_processes(monkeypatch):
    monkeypatch.delenv("SPICE_NPROC", raising=False)
    assert command(["train", "--config", "c.yaml"]) == [sys.executable, "-m", "spice", "train", "--config", "c.yaml"]
    monkeypatch.setenv("SPICE_NPROC", "8")
    assert command(["evaluate"])[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                         "--nproc-per-node=8", "-m"]
    assert command(["evaluate"], nproc=1)[1:3] == ["-m", "spice"]


# ---------------------------------------------------------------- training
def test_two_ranks_with_sync_batchnorm_equal_one_process_float64(tmp_path):
    """2 x batch 4 with SyncBatchNorm == 1 x batch 8: losses of 5 iterations (both stages) and the weights."""
    one = run_training(tmp_path, "one", 1, 8, "f64", sync_batchnorm=True)
    two = run_training(tmp_path, "two", 2, 8, "f64", sync_batchnorm=True)
    a, b = pd.read_csv(one / "losses.csv"), pd.read_csv(two / "losses.csv")
    assert len(a) == len(b) == 5 and list(a["stage"]) == [1, 1, 2, 2, 2]
    np.testing.assert_allclose(b[list(TERMS)].to_numpy(), a[list(TERMS)].to_numpy(), rtol=0, atol=1e-6)
    sa, sb = final_state(one)["model"], final_state(two)["model"]
    assert sa.keys() == sb.keys() and sa["input_conv.weight"].dtype == torch.float64
    for k in sa:
        torch.testing.assert_close(sb[k].double(), sa[k].double(), rtol=0, atol=1e-6, msg=k)
    # the weights moved (the comparison is not between two untrained networks)
    init = SPICE(filters=4, depth=2, reps=1, spatial_size=L, backend="torch")
    assert not torch.allclose(sa["input_conv.weight"].float(), init.input_conv.weight)


def test_killed_rank_leaves_resumable_checkpoint(tmp_path):
    """SIGKILL rank 0 after the first checkpoint: rank 1 exits non-zero within the timeout, the
    checkpoint loads, and a rerun resumes to the uninterrupted run's weights exactly."""
    kw = {"stage1_iterations": 2, "stage2_iterations": 4, "checkpoint_every": 2, "dist_timeout_s": 20}
    reference = run_training(tmp_path, "reference", 2, 4, **kw)

    cfg = train_config(tmp_path / "killed.yaml", tmp_path / "killed", 4, **kw)
    procs = start_ranks(2, ["--config", str(cfg)])
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + WAIT_S
    while not ckpt.exists() and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.01)
    assert ckpt.exists(), finish(procs)[0][1][-3000:]
    procs[0].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    (rc0, _), (rc1, err1) = finish(procs, timeout=60)
    assert rc0 == -signal.SIGKILL
    assert rc1 not in (0, None) and "[killed by the test" not in err1, err1[-3000:]
    assert time.monotonic() - t0 < 60
    assert "rank 1 of 2: a collective failed" in err1, err1[-3000:]
    state = final_state(tmp_path / "killed")
    assert 2 <= state["iteration"] < 6

    resumed = run_training(tmp_path, "killed", 2, 4, resume=True, **kw)
    ref, got = final_state(reference), final_state(resumed)
    assert got["iteration"] == ref["iteration"] == 6
    for k in ref["model"]:
        assert torch.equal(got["model"][k], ref["model"][k]), k
    rows = pd.read_csv(resumed / "losses.csv")
    assert list(rows["iteration"]) == list(range(1, 7))
    np.testing.assert_array_equal(rows[list(TERMS)].to_numpy(),
                                  pd.read_csv(reference / "losses.csv")[list(TERMS)].to_numpy())

    # another world size resumes too (same global batches; BatchNorm statistics now per batch of 4)
    other = run_training(tmp_path, "killed", 1, 4, resume=True, **(kw | {"stage2_iterations": 6}))
    assert final_state(other)["iteration"] == 8


# ---------------------------------------------------------------- evaluation and tuning
@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    events = [ev for ev in generate(8, L, seed=11)]
    data = write_pilarnet_m(events, d / "events.h5")
    torch.manual_seed(0)
    args = {"filters": 4, "depth": 2, "reps": 1, "spatial_size": L, "backend": "torch"}
    model = SPICE(**args)
    torch.save({"model_args": args, "model": model.state_dict()}, d / "model.pt")
    thresholds = {c: (0.2, 0.1) for c in range(5)}
    save_thresholds(thresholds, d / "thresholds.json")
    return d, data, model, thresholds


def torchrun(args: list[str], nproc: int = 2) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", "-m", "spice", *args]
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=WAIT_S)
    assert res.returncode == 0, res.stderr[-3000:]


def test_sharded_evaluate_equals_one_process(eval_setup):
    d, data, model, thresholds = eval_setup
    from spice.data import EventDataset
    torchrun(["evaluate", "--checkpoint", str(d / "model.pt"), "--data", str(data), "--thresholds",
              str(d / "thresholds.json"), "--out", str(d / "frame.csv"), "--batch-size", "2", "--range", "1", "8"])
    sharded = load_frame(d / "frame.csv")
    single = evaluate(model, torch.utils.data.Subset(EventDataset([data]), range(1, 8)), thresholds,
                      progress=False, batch_size=2)
    keep = [c for c in single.columns if c not in ("net_time_s", "cluster_time_s")]
    assert len(single) > 7 and sorted(set(single["event"])) == list(range(7))
    assert set(single["source"]) == {f"{data}:{i}" for i in range(1, 8)}
    pd.testing.assert_frame_equal(sharded[keep], single[keep], check_dtype=False)


def test_sharded_tune_equals_one_process(eval_setup):
    d, data, model, _ = eval_setup
    import json

    from spice.data import EventDataset
    ds = EventDataset([data])
    events = [ds[i] for i in range(2, 8)]
    grid, th = grid_search(model, events, np.linspace(0, 1, 3), np.linspace(0, 0.6, 4), min_voxels=5)
    torchrun(["tune", "--checkpoint", str(d / "model.pt"), "--data", str(data), "--out", str(d / "t.json"),
              "--grid-out", str(d / "grid.csv"), "--s0-steps", "3", "--p0-steps", "4", "--min-voxels", "5",
              "--range", "2", "8"], nproc=3)
    sharded = pd.read_csv(d / "grid.csv")
    assert len(grid) == len(sharded) > 0
    cols = ["class", "s0", "p0", "n"]
    np.testing.assert_array_equal(sharded[cols].to_numpy(), grid[cols].to_numpy())
    np.testing.assert_allclose(sharded["score"].to_numpy(), grid["score"].to_numpy(), rtol=0, atol=1e-15)
    doc = json.loads((d / "t.json").read_text())
    assert {int(k): tuple(v) for k, v in doc["thresholds"].items()} == th and doc["n_events"] == 6
