"""`spice <command>` on bad input, run as a user runs it (a subprocess): exit status 2 and one line on
stderr, `spice <command>: error: <file>: <problem>`, no traceback; `--debug` shows the traceback."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from spice.data import PILARNET_M, Event, write_pilarnet_m
from spice.model import SPICE

L = 16


def spice(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "spice.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good and bad input files: events, checkpoints (whole, truncated, not torch), thresholds, configs."""
    d = tmp_path_factory.mktemp("cli")
    ev = Event(np.array([[1, 2, 3], [1, 2, 4], [8, 8, 8]]), np.ones(3, np.float32), np.array([1, 1, 0]),
               np.array([0, 0, 1]), L, PILARNET_M)
    write_pilarnet_m([ev], d / "ev.h5")
    args = {"filters": 4, "depth": 2, "reps": 1, "spatial_size": L}
    torch.manual_seed(0)
    torch.save({"model_args": args, "model": SPICE(**args).state_dict()}, d / "good.pt")
    whole = (d / "good.pt").read_bytes()
    (d / "cut.pt").write_bytes(whole[: len(whole) // 2])
    (d / "text.pt").write_text("not a checkpoint\n")
    (d / "cut.json").write_text('{"thresholds": {"0": [0.5, ')
    (d / "shape.json").write_text('{"thresholds": {"0": "high"}}')
    (d / "syntax.yaml").write_text("lr: [0.1,\n")
    (d / "unknown.yaml").write_text("learning_rate: 0.1\n")
    (d / "nodata.yaml").write_text(f"data: {{train: [{d / 'missing.h5'}]}}\nout_dir: {d / 'run'}\n")
    return d


CASES = {  # name: (command line, file the error must name, words of the problem)
    "evaluate-data-missing": ("evaluate --checkpoint good.pt --data not-a-file.root --thresholds t.json --out o.csv",
                              "not-a-file.root", "file does not exist"),
    "evaluate-checkpoint-truncated": ("evaluate --checkpoint cut.pt --data ev.h5 --thresholds t.json --out o.csv",
                                      "cut.pt", "not a readable checkpoint"),
    "evaluate-thresholds-truncated": ("evaluate --checkpoint good.pt --data ev.h5 --thresholds cut.json --out o.csv",
                                      "cut.json", "Expecting value"),
    "evaluate-thresholds-shape": ("evaluate --checkpoint good.pt --data ev.h5 --thresholds shape.json --out o.csv",
                                  "shape.json", "thresholds must map class ids"),
    "tune-checkpoint-not-torch": ("tune --checkpoint text.pt --data ev.h5 --out t.json", "text.pt",
                                  "not a readable checkpoint"),
    "tune-data-not-events": ("tune --checkpoint good.pt --data shape.json --out t.json", "shape.json",
                             "neither a ROOT nor an HDF5 file"),
    "train-config-missing": ("train --config none.yaml", "none.yaml", "No such file"),
    "train-config-syntax": ("train --config syntax.yaml", "syntax.yaml", "expected the node content"),
    "train-config-unknown-key": ("train --config unknown.yaml", "unknown.yaml", "unknown keys ['learning_rate']"),
    "train-data-missing": ("train --config nodata.yaml", "missing.h5", "file does not exist"),
    "data-unknown-dataset": ("data download --dataset no-such-set", "no-such-set", "unknown dataset"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_and_exit_2(files, name):
    line, path, problem = CASES[name]
    command = line.split()[0] if not line.startswith("data") else "data"
    r = spice(*line.split(), cwd=files)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    head = f"spice {command}: error: "
    assert lines[0].startswith(head) and path in lines[0].split(": ")[2] and problem in lines[0], lines[0]
    assert not (files / "o.csv").exists() and not (files / "t.json").exists()


def test_debug_shows_the_traceback(files):
    r = spice("--debug", "evaluate", "--checkpoint", "cut.pt", "--data", "ev.h5", "--thresholds", "t.json",
              "--out", "o.csv", cwd=files)
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr
    assert "PytorchStreamReader" in r.stderr and "torch/serialization.py" in r.stderr


def test_usage_without_command(tmp_path):
    r = spice(cwd=tmp_path)
    assert r.returncode == 2 and "usage: spice" in r.stdout and "evaluate" in r.stdout
