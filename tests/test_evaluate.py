"""spice.evaluate: frame layout and rows on known answers (hand-built and real events), Figure 6 table,
atomic saving, and the `spice evaluate` command on a tiny checkpoint."""
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from spice.data import Event, write_pilarnet_m
from spice.evaluate import (FRAME_COLUMNS, evaluate, forward_events, instance_table, load_frame, main, predict,
                            save_frame)
from spice.metrics import score_event
from spice.model import SPICE

L = 32
THRESHOLDS = {0: (0.0, 0.5), 1: (0.0, 0.5), 2: (0.0, 0.5)}


def make_event(rng, n_instances=5, entry=0) -> Event:
    """Random-walk particles on a 32³ grid, each one class 0..2, plus a few unlabelled voxels."""
    coords, sem, inst = [], [], []
    for k in range(n_instances):
        steps = rng.integers(-1, 2, size=(int(rng.integers(8, 40)), 3))
        coords.append(np.clip(rng.integers(4, L - 4, 3) + np.cumsum(steps, 0), 0, L - 1))
        sem += [int(rng.integers(0, 3))] * len(steps)
        inst += [k] * len(steps)
    coords.append(rng.integers(0, L, size=(6, 3)))
    sem += rng.integers(0, 3, 6).tolist()
    inst += [-1] * 6
    coords = np.concatenate(coords).astype(np.int64)
    _, first = np.unique(coords, axis=0, return_index=True)
    first = np.sort(first)
    n = len(first)
    return Event(coords[first], rng.uniform(0.1, 3, n).astype(np.float32), np.array(sem)[first],
                 np.array(inst)[first], L, source=("mem.h5", entry)).validate()


class Oracle(torch.nn.Module):
    """Perfect outputs from the true instances: one embedding per instance, tiny margins."""

    def forward(self, batch):
        xhat = (batch.coords[:, 1:].float() - L / 2) / (L / 2)
        labelled = batch.instance >= 0
        key = batch.coords[:, 0] * 10_000 + batch.instance
        _, inv = torch.unique(key, return_inverse=True)
        n = torch.zeros(int(inv.max()) + 1).index_add_(0, inv, torch.ones(len(inv)))
        centre = torch.zeros(len(n), 3).index_add_(0, inv, xhat) / n[:, None]
        emb = torch.where(labelled[:, None], centre[inv], xhat)
        return {"embedding": emb, "margin": torch.full((len(emb), 1), 0.01),
                "seediness": torch.where(labelled, 0.9, 0.1)[:, None]}


@pytest.fixture(scope="module")
def events():
    rng = np.random.default_rng(0)
    return [make_event(rng, int(rng.integers(2, 8)), entry=i) for i in range(6)]


def test_oracle_frame_is_perfect_and_batch_independent(events):
    df = evaluate(Oracle(), events, THRESHOLDS, progress=False)
    assert list(df.columns) == list(FRAME_COLUMNS)
    expected = [(i, r["class"]) for i, ev in enumerate(events)
                for r in score_event(ev.instance, ev.instance, ev.semantic)]
    assert list(zip(df.event, df["class"])) == expected and len(expected) > 5
    assert (df.ari == 1).all() and (df.sbd == 1).all() and (df.n_pred == df.n_true).all()
    assert (df.method == "spice").all() and (df.device == "cpu").all()
    assert df.source.iloc[0] == "mem.h5:0" and set(df.class_name) <= {"HIP", "MIP", "Shower"}
    df2 = evaluate(Oracle(), events, THRESHOLDS, batch_size=4, progress=False)
    metrics = ["ari", "purity", "efficiency", "sbd", "n_true", "n_pred", "n_voxels"]
    pd.testing.assert_frame_equal(df[metrics], df2[metrics])


def lines_event() -> Event:
    """Known answer: class 0 holds two far-apart lines (12 and 15 voxels), class 1 two touching lines
    (12 and 20 voxels, one voxel apart) that 26-connectivity cannot separate."""
    x12, x15, x20 = np.arange(12), np.arange(15), np.arange(20)
    coords = np.concatenate([np.stack([x, np.full(len(x), y), np.full(len(x), z)], 1)
                             for x, y, z in ((x12, 2, 2), (x15, 20, 20), (x12, 10, 10), (x20, 11, 10))])
    inst = np.repeat([0, 1, 2, 3], [12, 15, 12, 20])
    return Event(coords, np.ones(len(coords), np.float32), np.repeat([0, 0, 1, 1], [12, 15, 12, 20]), inst, L,
                 source=("lines.h5", 0)).validate()


class MergeTwoLines(torch.nn.Module):
    """Oracle outputs in which instance 3 takes instance 2's place: the class-1 lines come out as one."""

    def forward(self, batch):
        return Oracle()(dataclasses.replace(batch, instance=torch.where(batch.instance == 3, 2, batch.instance)))


def test_frame_rows_known_answer():
    """SPEC §5 by hand: class 0 found exactly; class 1 one predicted cluster of 32 over true 12 + 20."""
    df = evaluate(MergeTwoLines(), [lines_event()], THRESHOLDS, min_voxels=10, progress=False)
    assert df["class"].tolist() == [0, 1] and df.source.tolist() == ["lines.h5:0"] * 2
    sep, merged = df.iloc[0], df.iloc[1]
    assert (sep.ari, sep.purity, sep.efficiency, sep.sbd) == (1, 1, 1, 1)
    assert (sep.n_true, sep.n_pred, sep.n_voxels) == (2, 2, 27)
    assert merged.ari == pytest.approx(0, abs=1e-12) and merged.purity == pytest.approx(20 / 32)
    assert merged.efficiency == 1 and (merged.n_true, merged.n_pred, merged.n_voxels) == (2, 1, 32)
    assert merged.sbd == pytest.approx((24 / 44 + 40 / 52) / 2)  # BD(true, pred) < BD(pred, true) = 40/52
    assert (df.net_time_s > 0).all() and (df.cluster_time_s > 0).all()


def test_missing_thresholds_is_an_error(events):
    with pytest.raises(KeyError, match="semantic class"):
        evaluate(Oracle(), events, {0: (0.0, 0.5)}, progress=False)


def test_instance_table_against_loop(events):
    ev = events[1]
    margin = np.random.default_rng(1).uniform(0.01, 0.2, len(ev))
    tab = instance_table(ev, {"margin": margin[:, None]}, event_id=7)
    pairs = sorted({(int(s), int(i)) for s, i in zip(ev.semantic, ev.instance) if i >= 0})
    assert list(zip(tab["class"], tab.instance)) == pairs and (tab.event == 7).all()
    for (c, k), row in zip(pairs, tab.itertuples()):
        sel = (ev.semantic == c) & (ev.instance == k)
        xyz = ev.coords[sel].astype(float)
        d = np.linalg.norm(xyz - xyz.mean(0), axis=1)
        assert row.n_voxels == sel.sum()
        assert row.extent_voxels == pytest.approx(np.std(d), abs=1e-9)
        assert row.mean_margin == pytest.approx(margin[sel].mean())
        assert row.mean_margin_voxels == pytest.approx(margin[sel].mean() * L / 2)
    with pytest.raises(ValueError, match="margin has"):
        instance_table(ev, {"margin": margin[:3]})


@pytest.mark.parametrize("name", ["f.csv", "f.parquet"])
def test_save_frame_round_trip(tmp_path, events, name):
    df = evaluate(Oracle(), events[:2], THRESHOLDS, progress=False)
    path = save_frame(df, tmp_path / "sub" / name)
    pd.testing.assert_frame_equal(load_frame(path), df, check_dtype=False)
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary left behind
    with pytest.raises(ValueError, match="unknown table format"):
        save_frame(df, tmp_path / "f.txt")


def test_symmetry_average_of_an_equivariant_network_is_the_network(events):
    """The oracle's embedding (each instance's centroid) moves with the event, so averaging it over the
    cube's symmetries, each mapped back, gives it again; the frame stays perfect."""
    plain, _ = forward_events(Oracle(), events[:3])
    for k in (8, 48):
        averaged, _ = forward_events(Oracle(), events[:3], symmetries=k)
        for a, b in zip(plain, averaged):
            for key in ("embedding", "margin", "seediness"):
                torch.testing.assert_close(b[key], a[key].reshape(b[key].shape))
    df = evaluate(Oracle(), events, THRESHOLDS, progress=False, symmetries=8)
    assert (df.ari == 1).all() and len(df) > 5
    with pytest.raises(ValueError, match="symmetries"):
        forward_events(Oracle(), events[:1], symmetries=49)


def test_symmetry_average_of_a_network(events):
    """An untrained SPICE is not equivariant: its 8-reflection average differs from one pass, keeps the
    shapes and ranges (margin in (0, 2), seediness in (0, 1)), and a symmetric pair of passes is the
    same whichever event of the pair it starts from."""
    torch.manual_seed(0)
    model = SPICE(filters=4, depth=2, reps=1, spatial_size=L).eval()
    one = predict(model, events[0])
    eight = predict(model, events[0], symmetries=8)
    assert eight["embedding"].shape == one["embedding"].shape and not np.allclose(eight["embedding"], one["embedding"])
    assert 0 < eight["margin"].min() and eight["margin"].max() < 2 and 0 < eight["seediness"].min() < 1
    mirrored = dataclasses.replace(events[0], coords=L - 1 - events[0].coords)  # symmetry 7: all axes reflected
    a = forward_events(model, [events[0]], symmetries=8)[0][0]["seediness"]
    b = forward_events(model, [mirrored], symmetries=8)[0][0]["seediness"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_cli(tmp_path, events):
    torch.manual_seed(0)
    args = {"filters": 4, "depth": 2, "reps": 1, "spatial_size": L}
    model = SPICE(**args)
    torch.save({"model_args": args, "model": model.state_dict()}, tmp_path / "c.pt")
    data = write_pilarnet_m(events[:2], tmp_path / "ev.h5")
    (tmp_path / "t.json").write_text(json.dumps({"thresholds": {"0": [0.3, 0.2], "1": [0.3, 0.2],
                                                                 "2": [0.3, 0.2]}}))
    out = tmp_path / "frame.csv"
    assert main(["--checkpoint", str(tmp_path / "c.pt"), "--data", str(data), "--thresholds",
                 str(tmp_path / "t.json"), "--out", str(out), "--min-voxels", "5"]) == 0
    df = load_frame(out)
    assert list(df.columns) == list(FRAME_COLUMNS) and set(df.event) == {0, 1}
    assert df[["ari", "purity", "efficiency", "sbd"]].notna().all().all()


def test_cli_symmetries_warns_on_thresholds_tuned_without(tmp_path, events, capsys):
    torch.manual_seed(0)
    args = {"filters": 4, "depth": 2, "reps": 1, "spatial_size": L}
    torch.save({"model_args": args, "model": SPICE(**args).state_dict()}, tmp_path / "c.pt")
    data = write_pilarnet_m(events[:2], tmp_path / "ev.h5")
    (tmp_path / "t.json").write_text(json.dumps({"thresholds": {"0": [0.3, 0.2], "1": [0.3, 0.2], "2": [0.3, 0.2]}}))
    common = ["--checkpoint", str(tmp_path / "c.pt"), "--data", str(data), "--thresholds", str(tmp_path / "t.json"),
              "--min-voxels", "5"]
    assert main(common + ["--out", str(tmp_path / "f8.csv"), "--symmetries", "8"]) == 0
    assert "tuned with --symmetries 1, evaluating with --symmetries 8" in capsys.readouterr().err
    assert main(common + ["--out", str(tmp_path / "f1.csv")]) == 0
    assert "warning" not in capsys.readouterr().err
    f1, f8 = load_frame(tmp_path / "f1.csv"), load_frame(tmp_path / "f8.csv")
    assert list(zip(f1.event, f1["class"])) == list(zip(f8.event, f8["class"]))


DATA = Path(os.environ.get("SPICE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data"))


@pytest.mark.skipif(not (DATA / "small_192px.root").exists(), reason="real PILArNet sample absent")
def test_real_event_perfect_outputs_score_perfectly():
    """Known answer on a real event: outputs built from the true instances score 1 everywhere."""
    from spice.data import read_larcv_root
    ev = min(read_larcv_root(DATA / "small_192px.root"), key=len)  # the 1671-voxel event
    df = evaluate(Oracle(), [ev], {c: (0.0, 0.5) for c in range(5)}, progress=False)
    assert len(df) >= 2 and df.class_name.isin(ev.labels).all()
    assert (df[["ari", "purity", "efficiency", "sbd"]] == 1).all().all() and (df.n_pred == df.n_true).all()
    tab = instance_table(ev, predict(Oracle(), ev))
    assert tab.n_voxels.sum() == (ev.instance >= 0).sum()


def test_saved_tables_and_thresholds_are_readable_like_plain_files(tmp_path):
    """save_frame and save_thresholds write under a mkstemp name (mode 0600) and rename: the result gets the
    mode a plain open() gives (0666 less the umask), so released thresholds are readable by others."""
    from spice.evaluate import load_thresholds, save_frame, save_thresholds
    umask = os.umask(0o022)
    try:
        table = save_frame(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
        thresholds = save_thresholds({0: (0.5, 0.1)}, tmp_path / "thresholds.json")
    finally:
        os.umask(umask)
    for path in (table, thresholds):
        assert path.stat().st_mode & 0o777 == 0o644
    assert load_thresholds(thresholds) == {0: (0.5, 0.1)}
