"""Released weights (spice.release), learning curves, the claims table and the real-vs-generated table."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from spice import tables
from spice.data import Event
from spice.data.summary import compare
from spice.evaluate import load_thresholds, predict_and_cluster
from spice.release import release
from spice.train import TrainConfig, load_model, train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig.from_dict({
        "data": {"synthetic": {"n_events": 6, "spatial_size": 64, "seed": 4}, "augment": True},
        "model": {"filters": 4, "depth": 2, "reps": 1}, "stage1_iterations": 2, "stage2_iterations": 2,
        "batch_size": 2, "lr_schedule": "cosine", "warmup_iterations": 1, "snapshot_every": 2,
        "checkpoint_every": 2, "device": "cpu", "progress": False, "out_dir": str(out)})
    train(cfg)
    return out


def test_release_writes_loadable_weights_thresholds_and_curve(tiny_run, tmp_path):
    out = release(tiny_run, tmp_path / "rel", val_events=3, val_seed=1000, curve_events=2)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert "optimizer" not in state and state["iteration"] == 4       # weights only, the finished run
    model = load_model(out / "checkpoint.pt")
    original = load_model(tiny_run / "checkpoint.pt")
    for a, b in zip(model.state_dict().values(), original.state_dict().values()):
        assert torch.equal(a, b)
    thresholds = load_thresholds(out / "thresholds.json")
    assert set(thresholds) == set(range(5))                            # every class, tuned or Table II
    doc = json.loads((out / "thresholds.json").read_text())
    assert doc["n_events"] == 3 and doc["objective"] == "sbd"
    from spice.data.synthetic import generate
    event = generate(1, 64, seed=99)[0]
    outputs, labels = predict_and_cluster(model, event, thresholds)
    assert len(labels) == len(event) and outputs["embedding"].shape == (len(event), 3)
    curve = pd.read_csv(out / "learning_curve.csv")
    assert sorted(curve["iteration"].unique()) == [2, 4]               # one block per snapshot
    losses = pd.read_csv(out / "losses.csv")
    assert curve.loc[curve.iteration == 4, "seconds"].iloc[0] == pytest.approx(losses["seconds"].sum())
    assert curve["ari"].between(-1, 1).all()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["training"]["iterations"] == 4 and prov["data"]["validation"]["seed"] == 1000
    assert not list(out.glob("*.tmp"))


def test_fine_tuning_starts_from_a_release_and_continues_its_history(tiny_run, tmp_path):
    first = release(tiny_run, tmp_path / "rel" / "part-a", val_events=3, val_seed=1000, curve_events=2)
    before = load_model(first / "checkpoint.pt").state_dict()
    common = {"data": {"synthetic": {"n_events": 6, "spatial_size": 64, "seed": 5}, "augment": True},
              "model": {"filters": 4, "depth": 2, "reps": 1}, "stage1_iterations": 0, "batch_size": 2,
              "init_weights": str(first / "checkpoint.pt"), "snapshot_every": 2, "checkpoint_every": 2,
              "device": "cpu", "progress": False}
    # no iterations at all: the checkpoint holds exactly the released weights (the seeded init is replaced)
    train(TrainConfig.from_dict(common | {"stage2_iterations": 0, "out_dir": str(tmp_path / "zero")}))
    for key, value in load_model(tmp_path / "zero" / "checkpoint.pt").state_dict().items():
        assert torch.equal(value, before[key]), key
    run = tmp_path / "part-b"
    train(TrainConfig.from_dict(common | {"stage2_iterations": 2, "out_dir": str(run)}))
    out = release(run, tmp_path / "rel", val_events=3, val_seed=1000, curve_events=2)
    losses = pd.read_csv(out / "losses.csv")
    a, b = pd.read_csv(first / "losses.csv"), pd.read_csv(run / "losses.csv")
    assert losses["iteration"].tolist() == [1, 2, 3, 4, 5, 6]          # part A's 4, then part B's 2 counted on
    assert losses["total"].tolist() == a["total"].tolist() + b["total"].tolist()
    curve = pd.read_csv(out / "learning_curve.csv")
    assert sorted(curve["iteration"].unique()) == [2, 4, 6]            # part A's snapshots, then part B's at 4 + 2
    assert curve.loc[curve.iteration == 6, "seconds"].iloc[0] == pytest.approx(losses["seconds"].sum())
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["training"]["iterations_with_history"] == 6
    assert prov["training"]["init_weights"] == str(first / "checkpoint.pt")
    wrong = common | {"model": {"filters": 8, "depth": 2, "reps": 1}, "stage2_iterations": 1,
                      "out_dir": str(tmp_path / "wrong")}
    with pytest.raises(ValueError, match="differs from the config"):
        train(TrainConfig.from_dict(wrong))


def test_release_refuses_unfinished_or_missing_runs(tiny_run, tmp_path):
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    state["iteration"] = 3
    (tmp_path / "half").mkdir()
    torch.save(state, tmp_path / "half" / "checkpoint.pt")
    with pytest.raises(ValueError, match="has not finished"):
        release(tmp_path / "half", tmp_path / "rel")
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        release(tmp_path / "none", tmp_path / "rel")
    assert not (tmp_path / "rel" / "checkpoint.pt").exists()


def test_claims_table_known_answer():
    frame = pd.DataFrame({"class": [0, 0, 1], "class_name": ["HIP", "HIP", "MIP"],
                          "purity": [1.0, 0.9, 0.97], "efficiency": [1.0, 1.0, 0.95],
                          "ari": [0.99, 0.5, 0.95], "sbd": [1, 1, 1], "n_true": [3, 1, 4]})
    t = tables.claims_table({"net": frame}).set_index("claim")
    assert t.loc["Table III HIP ari", "value"] == pytest.approx(0.745)
    assert t.loc["Table III HIP ari", "verdict"] == f"short by {0.9743 - 0.745:.3f}"
    assert t.loc["Table III MIP purity", "verdict"] == "short by 0.008"  # 0.9783 - 0.97
    assert t.loc["Table III HIP efficiency", "verdict"] == "pass"       # 1.0 >= 0.9843
    assert np.isnan(t.loc["Table III Shower ari", "value"]) and t.loc["Table III Shower ari", "verdict"] == "–"
    # particles in entries with ARI > 0.92: 3 + 4 of 8
    assert t.loc["90% of particles with ARI > 0.92", "value"] == pytest.approx(7 / 8)
    assert t.loc["mean purity above 96% (all classes)", "value"] == pytest.approx((1 + 0.9 + 0.97) / 3)


def _event(coords, semantic, instance, energy):
    n = len(coords)
    return Event(np.array(coords, np.int64), np.full(n, energy, np.float32), np.array(semantic, np.int64),
                 np.array(instance, np.int64), 16)


def test_compare_known_answer():
    line = [[i, 0, 0] for i in range(10)]                              # 10 voxels in a row: 9 x 0.3 cm long
    real = [_event(line, [1] * 10, [0] * 10, 0.5)]
    gen = [_event(line + [[0, 5, 5], [0, 5, 6]], [1] * 10 + [2, 2], [0] * 10 + [1, 1], 1.0)]
    t = compare(real, gen).set_index("quantity")
    assert t.loc["voxels per event (median)", "ratio"] == pytest.approx(12 / 10)
    assert t.loc["energy per voxel, MeV (median)", "ratio"] == pytest.approx(2.0)
    assert t.loc["MIP: share of voxels", "generated"] == pytest.approx(10 / 12)
    assert np.isnan(t.loc["Shower: share of voxels", "ratio"])         # absent from the real events
    assert t.loc["MIP: track length, cm (median)", "real"] == pytest.approx(9 * 0.3)
    # neighbours: a line has 2 per inner voxel and 1 at each end; the pair adds 1 each
    assert t.loc["occupied 26-neighbours per voxel (mean)", "real"] == pytest.approx(18 / 10)
    assert t.loc["occupied 26-neighbours per voxel (mean)", "generated"] == pytest.approx(20 / 12)
    # the line is one piece of 5 MeV; the generated shower is one piece of 2 voxels and 2 MeV
    assert t.loc["MIP: 26-connected fragments per 100 MeV", "real"] == pytest.approx(100 / 5)
    assert t.loc["Shower: 26-connected fragments per 100 MeV", "generated"] == pytest.approx(100 / 2)
    assert t.loc["MIP: share of an instance outside its largest fragment (mean)", "real"] == 0.0


def test_fragments_counts_26_connected_pieces():
    from spice.data.summary import fragments
    # a corner-touching pair (26-connected), a lone voxel, and a line of three broken by a one-voxel gap
    pts = np.array([[0, 0, 0], [1, 1, 1], [5, 5, 5], [9, 0, 0], [10, 0, 0], [12, 0, 0]], float)
    assert fragments(pts).tolist() == [2, 2, 1, 1]
    assert fragments(np.zeros((0, 3))).tolist() == []


def test_half_release_loads_as_float32_and_fits_a_depth5_width16_network(tiny_run, tmp_path):
    from spice import release as rel
    from spice.model import SPICE
    out = release(tiny_run, tmp_path / "half", val_events=2, val_seed=1000, curve_events=1, half=True)
    stored = torch.load(out / "checkpoint.pt", weights_only=True)
    assert stored["weights_dtype"] == "float16"
    assert all(v.dtype == torch.float16 for v in stored["model"].values() if v.is_floating_point())
    model, original = load_model(out / "checkpoint.pt"), load_model(tiny_run / "checkpoint.pt")
    for (name, a), b in zip(model.state_dict().items(), original.state_dict().values()):
        assert a.dtype == b.dtype                                        # float32 again once loaded
        assert torch.equal(a, b.half().to(b.dtype) if b.is_floating_point() else b), name
    assert json.loads((out / "provenance.json").read_text())["training"]["weights_dtype"] == "float16"
    # F16 D5 (6.8M parameters) is over the limit in float32 and under it in float16
    net = SPICE(filters=16, depth=5, reps=2, spatial_size=192)
    fake = tmp_path / "f16d5.pt"
    torch.save({"model": net.state_dict(), "model_args": {}, "iteration": 0, "stage": 2, "config": {}}, fake)
    with pytest.raises(ValueError, match=r"over the 15 MiB release limit \(--half stores them in float16\)"):
        rel.export_weights(fake, tmp_path / "f32.pt")
    assert (tmp_path / "f32.pt").exists() is False
    small = rel.export_weights(fake, tmp_path / "f16.pt", half=True)
    assert small.stat().st_size <= rel.MAX_BYTES
