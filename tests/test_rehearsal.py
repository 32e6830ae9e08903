"""Rehearsal of `make paper` past 00_data: the paper profile's notebooks, all of them, at tiny size on CPU,
on PILArNet-M files downloaded over HTTP from a loopback server through a pinned manifest.

Checks what only the paper path exercises: download and verification, the split ranges that hold the
validation events out of the test files, training as a subprocess, and tuning and evaluation on the
downloaded files."""
import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from spice import notebooks as nbrun
from spice.data import synthetic
from spice.data.pilarnet_m import write_pilarnet_m

# served files: split -> [(path in the dataset, events, generator seed)]; the validation range (3 events)
# and the test range (4) together cross from the first test file into the second
FILES = {"train": [("train/train_0.h5", 6, 11)], "test": [("test/test_0.h5", 4, 21), ("test/test_1.h5", 4, 22)]}
N_VAL, N_TEST, GRID = 3, 4, 64
TINY = {"filters": 4, "depth": 2, "reps": 1, "stage1_iterations": 2, "stage2_iterations": 2, "batch_size": 2,
        "checkpoint_every": 2, "device": "cpu", "n_val": N_VAL, "n_test": N_TEST, "n_s0": 3, "n_p0": 3,
        "n_margin_events": 3, "n_display_events": 4, "gallery_events": 1, "n_timing_events": 2,
        "dataset_name": "rehearsal test set"}


class _Handler(http.server.SimpleHTTPRequestHandler):
    timeout = 30  # seconds a connection may stay idle
    requests: list = []

    def log_message(self, *args):  # the default handler writes every request to stderr
        pass

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A dataset served from 127.0.0.1 (a free port; stopped at the end) and its pinned manifest."""
    root, events = tmp_path / "served", {}
    for split, files in FILES.items():
        for rel, n, seed in files:
            events[rel] = synthetic.generate(n, spatial_size=GRID, seed=seed)
            write_pilarnet_m(events[rel], root / rel)
    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    for name in ("NO_PROXY", "no_proxy"):  # the kernel inherits this environment
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    manifest = {"name": "rehearsal_pilarnet_m", "format": "pilarnet_m_hdf5", "label_convention": "pilarnet_m",
                "files": [{"split": split, "path": rel, "url": f"{base}/{rel}",
                           "size": (root / rel).stat().st_size,
                           "sha256": hashlib.sha256((root / rel).read_bytes()).hexdigest(), "n_events": n}
                          for split, files in FILES.items() for rel, n, _ in files]}
    path = tmp_path / "rehearsal_pilarnet_m.json"
    path.write_text(json.dumps(manifest, indent=2))
    try:
        yield {"manifest": path, "events": events, "requests": handler.requests}
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_paper_profile_runs_every_notebook_on_downloaded_files(server, tmp_path, capfd):
    data_dir, build, figures = tmp_path / "data", tmp_path / "build", tmp_path / "figures"
    paper = nbrun.load_profile("paper")
    assert paper["train_subprocess"] is True and paper["data_source"] != "synthetic"
    config = {**paper, **TINY, "data_source": str(server["manifest"]), "data_dir": str(data_dir),
              "build_dir": str(build), "figures_dir": str(figures), "real_sample": str(tmp_path / "absent.root")}
    for path in nbrun.notebooks():
        nbrun.run_notebook(path, nbrun.parameters_for(path, config), tmp_path / "executed")

    # 00_data: every file fetched once over HTTP, verified against the manifest, kept under data_dir/<name>
    assert sorted(server["requests"]) == sorted(f"/{rel}" for files in FILES.values() for rel, _, _ in files)
    data = json.loads((build / "data.json").read_text())
    local = {rel: str(data_dir / "rehearsal_pilarnet_m" / rel) for files in FILES.values() for rel, _, _ in files}
    test_files = [local[rel] for rel, _, _ in FILES["test"]]
    assert data["splits"]["train"] == {"files": [local["train/train_0.h5"]], "range": None}
    assert data["splits"]["val"] == {"files": test_files, "range": [0, N_VAL]}
    assert data["splits"]["test"] == {"files": test_files, "range": [N_VAL, N_VAL + N_TEST]}
    assert data["provenance"]["manifest"]["name"] == "rehearsal_pilarnet_m"

    # validation = the first N_VAL test events, test = the next N_TEST (across both files), disjoint;
    # compared with the events that were served
    served = server["events"]["test/test_0.h5"] + server["events"]["test/test_1.h5"]
    val, test = nbrun.open_split(data, "val"), nbrun.open_split(data, "test")
    assert len(val) == N_VAL and len(test) == N_TEST
    for ds, start in ((val, 0), (test, N_VAL)):
        for k in range(len(ds)):
            ev, ref = ds[k], served[start + k]
            order, ref_order = np.lexsort(ev.coords.T), np.lexsort(ref.coords.T)
            assert np.array_equal(ev.coords[order], ref.coords[ref_order])
            assert np.allclose(ev.energy[order], ref.energy[ref_order], rtol=1e-6)
    assert [ds.dataset.source(i) for ds in (val, test) for i in ds.indices] == (
        [(test_files[0], i) for i in range(4)] + [(test_files[1], i) for i in range(3)])

    # 02_train ran `spice train` as a subprocess (its config file and its progress bar), to the end
    import torch
    state = json.loads((build / "train.json").read_text())
    assert (build / "train_config.yaml").exists()
    assert torch.load(state["checkpoint"], weights_only=True)["iteration"] == 4
    assert state["config"]["data"]["train"] == [local["train/train_0.h5"]]
    term = capfd.readouterr()
    assert "spice train: 100%" in term.err and "4/4" in term.err

    # 03_tune on the validation events, 04_evaluate on the test events, of the downloaded files
    thresholds = json.loads(Path(json.loads((build / "tune.json").read_text())["checkpoint"]).read_text())
    assert thresholds["n_events"] == N_VAL
    import pandas as pd
    frame = pd.read_csv(json.loads((build / "evaluate.json").read_text())["spice"])
    assert sorted(frame["event"].unique()) == list(range(N_TEST))
    assert set(frame["source"]) == {f"{test_files[0]}:3", *(f"{test_files[1]}:{i}" for i in range(3))}
    for stem in ("table1_dataset", "table2_thresholds", "table3_metrics", "table_baseline", "table_timing"):
        assert json.loads((figures / f"{stem}.json").read_text())["profile"] == "paper", stem
    assert (figures / "fig01_event.png").stat().st_size > 0 and (figures / "fig10_timing.png").stat().st_size > 0
