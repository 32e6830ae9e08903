"""Plots, tables, provenance and failure finding, on small frames built here."""
import json

import numpy as np
import pandas as pd
import pytest

from spice import plots, tables
from spice.data.event import PILARNET_FIVETYPES, Event
from spice.failures import find_failures
from spice.provenance import provenance


def make_frame(n_events=40, seed=0, classes=(0, 1, 2)):
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(n_events):
        for c in classes:
            n_true = int(rng.integers(1, 7))
            rows.append({"event": e, "source": ("gen", e), "class": c, "class_name": PILARNET_FIVETYPES[c],
                         "ari": rng.uniform(-0.2, 1), "purity": rng.uniform(0.3, 1), "efficiency": rng.uniform(0.3, 1),
                         "sbd": rng.uniform(0.3, 1), "n_true": n_true, "n_pred": max(1, n_true + int(rng.integers(-1, 2))),
                         "n_voxels": 100, "net_time_s": rng.uniform(0.01, 0.1), "cluster_time_s": rng.uniform(0.001, 0.01),
                         "device": "cpu", "method": "spice"})
    return pd.DataFrame(rows)


def test_metric_distributions_log_y_and_counts():
    frame = make_frame()
    fig = plots.fig_metric_distributions(frame, metrics=("purity", "ari"))
    axes = fig.axes
    assert len(axes) == 2 and all(ax.get_yscale() == "log" for ax in axes)
    # one step histogram per class, whose bin counts add up to that class's events
    for ax, metric in zip(axes, ("purity", "ari")):
        assert len(ax.patches) == 3
        heights = [p.get_path().vertices[:, 1] for p in ax.patches]
        assert [h.max() for h in heights]  # drawn
    assert [t.get_text().split(" ")[0] for t in axes[0].get_legend().get_texts()] == ["HIP", "MIP", "Shower"]


def test_count_confusion_rows_normalised_and_matches_independent_count():
    frame = make_frame()
    conf = plots.count_confusion(frame)
    assert np.allclose(conf.sum(axis=1), 1.0)
    k = frame["n_true"].iloc[0]
    sub = frame[frame["n_true"] == k]
    expected = (sub["n_pred"] == k).mean()
    assert conf.loc[k].get(k, 0.0) == pytest.approx(expected)
    fig = plots.fig_count_confusion(frame)
    images = [ax.images[0] for ax in fig.axes if ax.images and ax.get_xlabel() == "predicted instances"]
    assert len(images) == 3
    for im in images:
        row_sums = im.get_array().sum(axis=1)
        assert np.all(np.isclose(row_sums, 1.0) | np.isclose(row_sums, 0.0))


def test_metrics_vs_count_one_box_per_true_count():
    frame = make_frame()
    fig = plots.fig_metrics_vs_count(frame, metrics=("purity", "ari"))
    assert len(fig.axes) == 2 * 3
    for col, c in enumerate((0, 1, 2)):
        n_counts = frame.loc[frame["class"] == c, "n_true"].nunique()
        ax = fig.axes[col]  # first row
        medians = [line for line in ax.lines if line.get_color() in ("C1", "#ff7f0e")]
        assert len(medians) == n_counts


def test_margin_extent_hist2d_counts_instances():
    rng = np.random.default_rng(1)
    inst = pd.DataFrame({"event": 0, "class": rng.integers(0, 2, 200), "instance": np.arange(200),
                         "n_voxels": 50, "extent_voxels": rng.uniform(1, 30, 200), "mean_margin": rng.uniform(0, 2, 200)})
    inst["class_name"] = [PILARNET_FIVETYPES[c] for c in inst["class"]]
    fig = plots.fig_margin_extent(inst, bins=10)
    meshes = [ax.collections[0] for ax in fig.axes if ax.get_xlabel().startswith("true extent")]
    assert len(meshes) == 2
    for mesh, c in zip(meshes, (0, 1)):
        assert np.nansum(mesh.get_array()) == (inst["class"] == c).sum()


def test_timing_names_every_device():
    frame = pd.concat([make_frame(10).assign(device="cpu (2 cores)"), make_frame(10).assign(device="cuda: H200")])
    fig = plots.fig_timing(frame)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("cpu (2 cores)" in s for s in labels) and any("cuda: H200" in s for s in labels)


def recorded_report(tmp_path):
    """A gpu_checks.py report with round numbers (the layout of benchmarks/results/gpu_<date>.json)."""
    report = {"date": "2026-12-04T17:22:02+00:00", "device": "NVIDIA H200",
              "config": {"filters": 32, "depth": 6, "spatial_size": 512, "mean_voxels_per_event": 19582.4},
              "backends": [{"backend": "landed", "infer_batch1_s_per_event": 0.2},
                           {"backend": "torch", "infer_batch1_s_per_event": 0.05, "infer_batched_s_per_event": 0.01,
                            "infer_batched_size": 32}],
              "clustering": {"network_outputs_s_per_event": 0.004}}
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(report))
    return path


def test_recorded_gpu_timing_reads_the_torch_backend(tmp_path):
    path = recorded_report(tmp_path)
    rows = tables.recorded_gpu_timing(path)
    assert list(rows["network_batch"]) == [1, 32] and list(rows["net_time_s_mean"]) == [0.05, 0.01]
    assert list(rows["cluster_time_s_mean"]) == [0.004, 0.004] and set(rows["source"]) == {str(path)}
    assert rows["device"][0] == "NVIDIA H200 (recorded 2026-12-04: F32 D6 on 512³ events of 19.6k voxels)"


def test_timing_draws_recorded_devices_as_named_lines(tmp_path):
    recorded = tables.recorded_gpu_timing(recorded_report(tmp_path))
    fig = plots.fig_timing(make_frame(10).assign(device="cpu (2 cores)"), recorded=recorded)
    net, cluster = fig.axes[:2]
    assert [l.get_xdata()[0] for l in net.lines] == [0.05, 0.01] and [l.get_xdata()[0] for l in cluster.lines] == [0.004]
    labels = [t.get_text() for t in net.get_legend().get_texts()]
    assert "NVIDIA H200 (recorded), batch 32: 0.01 s" in labels
    assert net.get_xscale() == "log" and "F32 D6 on 512³ events" in fig._suptitle.get_text()


def test_threshold_heatmap_marks_the_best_cell():
    s0, p0 = np.meshgrid(np.linspace(0, 1, 5), np.linspace(0, 0.6, 4))
    grid = pd.DataFrame({"s0": s0.ravel(), "p0": p0.ravel()})
    grid["score"] = 1 - (grid["s0"] - 0.75) ** 2 - (grid["p0"] - 0.2) ** 2
    grid["class"] = 1
    fig = plots.fig_threshold_heatmaps(grid, labels=PILARNET_FIVETYPES)
    assert fig.axes[0].get_title().startswith("MIP")
    star = fig.axes[0].lines[0]
    assert star.get_xdata()[0] == pytest.approx(0.75) and star.get_ydata()[0] == pytest.approx(0.2)


def test_loss_curves_and_architecture_and_method_comparison():
    losses = pd.DataFrame({"iteration": np.arange(20), "stage": [1] * 10 + [2] * 10,
                           "total": np.linspace(2, 0.5, 20), "seed": np.r_[np.full(10, np.nan), np.linspace(1, .1, 10)]})
    fig = plots.fig_loss_curves(losses)
    assert fig.axes[0].get_yscale() == "log"
    assert any(line.get_linestyle() == "--" for line in fig.axes[0].lines)  # stage boundary
    fig = plots.fig_architecture(16, 4)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum("enc" in t for t in texts) == 5 and any("80ch" in t for t in texts)
    both = pd.concat([make_frame(10), make_frame(10, seed=2).assign(method="dbscan")])
    fig = plots.fig_method_comparison(both)
    assert len(fig.axes[0].patches) == 2 * 3


def test_event_and_true_vs_pred_figures():
    rng = np.random.default_rng(0)
    ev = Event(rng.integers(0, 64, (300, 3)), rng.uniform(0.01, 3, 300).astype(np.float32),
               rng.integers(0, 3, 300), rng.integers(-1, 5, 300), 64)
    fig = plots.fig_event(ev)
    panels = [ax for ax in fig.axes if ax.name == "3d"]
    assert len(panels) == 3
    # the energy colour bar covers no tick label or axis label of any panel (z of the energy panel included)
    (cbar,) = [ax for ax in fig.axes if ax.name != "3d"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bar = cbar.get_tightbbox(renderer)
    for ax in panels:
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            assert not bar.overlaps(axis.get_tightbbox(renderer)), (ax.get_title(), axis.axis_name)
    assert cbar.get_ylabel() == "log10(E / MeV)"
    # voxel colours are viridis over log10(E) from the lowest to the highest deposit of the event
    import matplotlib
    rgba = plots.fig_event(ev).axes[0].collections[0].get_facecolor()  # before a draw sorts them by depth
    assert np.allclose(rgba[np.argmax(ev.energy)], matplotlib.colormaps["viridis"](1.0))
    assert np.allclose(rgba[np.argmin(ev.energy)], matplotlib.colormaps["viridis"](0.0))
    fig = plots.fig_true_vs_pred(ev.coords, ev.instance, ev.instance[::-1], embedding=rng.normal(size=(300, 3)))
    assert len(fig.axes) == 3


def test_tables_written_atomically_with_provenance(tmp_path):
    frame = make_frame(20)
    t3 = tables.metrics_table(frame, dataset="unit test")
    expected = frame[frame["class"] == 1]["ari"].mean()
    assert t3.loc[t3["class_name"] == "MIP", "ari"].item() == pytest.approx(expected)
    assert t3.loc[t3["class_name"] == "MIP", "paper_ari"].item() == 0.9612
    paths = tables.save_table(t3, tmp_path / "table3", provenance=provenance("smoke", "04"))
    assert sorted(p.suffix for p in paths) == [".csv", ".json", ".md", ".tex"]
    assert pd.read_csv(tmp_path / "table3.csv")["ari"].tolist() == pytest.approx(t3["ari"].tolist())
    assert "\\toprule" in (tmp_path / "table3.tex").read_text()
    prov = json.loads((tmp_path / "table3.json").read_text())
    assert prov["profile"] == "smoke" and "torch" in prov["libraries"] and "commit" in prov["git"]
    assert not list(tmp_path.glob("*.tmp"))
    fig = plots.fig_event(Event(np.zeros((1, 3), int), np.ones(1, np.float32), np.zeros(1, int), np.zeros(1, int), 4))
    paths = tables.save_figure(fig, tmp_path / "fig01")
    assert {p.suffix for p in paths} == {".png", ".pdf"} and all(p.stat().st_size > 0 for p in paths)


def test_fraction_above_matches_hand_count():
    frame = make_frame(30)
    out = tables.fraction_above(frame, "ari", 0.92)
    overall = out[out["class_name"] == "all"]
    assert overall["fraction_entries_ari_gt_0.92"].item() == pytest.approx((frame["ari"] > 0.92).mean())
    w = frame.loc[frame["ari"] > 0.92, "n_true"].sum() / frame["n_true"].sum()
    assert overall["fraction_particles_ari_gt_0.92"].item() == pytest.approx(w)


def test_margin_table_spread_and_rank_correlation_by_hand():
    extent = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    inst = pd.DataFrame({"class": [0] * 5 + [2] * 5, "extent_voxels": np.r_[extent, extent],
                         # HIP: margin rises with extent; Shower: one margin for every instance
                         "mean_margin_voxels": np.r_[[10.0, 20.0, 30.0, 50.0, 40.0], [27.0] * 5]})
    out = tables.margin_table({"net": inst}, PILARNET_FIVETYPES)
    hip, shower = (out[out["class_name"] == name].iloc[0] for name in ("HIP", "Shower"))
    assert hip["instances"] == 5 and hip["extent_median_voxels"] == 3.0
    assert hip["margin_median_voxels"] == 30.0
    assert hip["margin_p5_voxels"] == pytest.approx(12.0) and hip["margin_p95_voxels"] == pytest.approx(48.0)
    assert hip["margin_relative_spread"] == pytest.approx(36.0 / 30.0)
    assert hip["spearman_margin_extent"] == pytest.approx(0.9)   # ranks 1 2 3 5 4: 1 − 6·2/(5·24)
    assert shower["margin_relative_spread"] == 0.0 and np.isnan(shower["spearman_margin_extent"])


def test_thresholds_table_next_to_paper():
    t2 = tables.thresholds_table({0: (0.6, 0.3), 2: (0.2, 0.05)}, PILARNET_FIVETYPES)
    assert t2["class_name"].tolist() == ["HIP", "Shower"]
    assert t2["paper_s0"].tolist() == [0.65, 0.25]


def _line(start, direction, n):
    return np.round(np.asarray(start) + np.outer(np.arange(n), direction)).astype(int)


def test_failures_find_split_track_and_merged_pair():
    # event 0: one long MIP track (instance 0) predicted as two halves -> Figure 12
    coords = _line([0, 0, 0], [1, 0, 0], 60)
    p0 = {"coords": coords, "semantic": np.ones(60, int), "instance": np.zeros(60, int),
          "pred": np.r_[np.zeros(30, int), np.ones(30, int)], "embedding": np.zeros((60, 3)),
          "margin": np.full(60, 0.1), "labels": PILARNET_FIVETYPES}
    # event 1: two MIP tracks from one vertex merged; embeddings separated -> Figure 14
    a, b = _line([0, 0, 0], [1, 0, 0], 30), _line([0, 0, 0], [0, 1, 0], 30)
    emb = np.r_[np.zeros((30, 3)), np.ones((30, 3))]
    p1 = {"coords": np.r_[a, b], "semantic": np.ones(60, int), "instance": np.r_[np.zeros(30, int), np.ones(30, int)],
          "pred": np.zeros(60, int), "embedding": emb, "margin": np.full(60, 0.1), "labels": PILARNET_FIVETYPES}
    # event 2: two co-linear tracks merged with identical embeddings -> Figure 13
    c, d = _line([0, 0, 0], [1, 0, 0], 30), _line([0, 1, 0], [1, 0, 0], 30)
    p2 = {"coords": np.r_[c, d], "semantic": np.ones(60, int), "instance": np.r_[np.zeros(30, int), np.ones(30, int)],
          "pred": np.zeros(60, int), "embedding": np.zeros((60, 3)), "margin": np.full(60, 0.5),
          "labels": PILARNET_FIVETYPES}
    found = find_failures({0: p0, 1: p1, 2: p2}).set_index("figure")
    assert found.loc[12, "event"] == 0 and found.loc[14, "event"] == 1 and found.loc[13, "event"] == 2
    assert found.loc[13, "score"] == pytest.approx(1.0)
    assert 15 not in found.index and 16 not in found.index  # no showers
    # a frame saying event 0 is perfect removes it from the search
    frame = pd.DataFrame({"event": [0, 1, 2], "class": [1, 1, 1], "ari": [1.0, 0.0, 0.0]})
    assert 12 not in find_failures({0: p0, 1: p1, 2: p2}, frame)["figure"].tolist()


def test_saved_figures_are_byte_identical_run_to_run(tmp_path):
    """The same figure saved twice (a second later) gives identical PNG and PDF bytes."""
    import time

    import matplotlib.pyplot as plt

    from spice.tables import save_figure

    blobs = []
    for k in range(2):
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [3, 1, 2])
        save_figure(fig, tmp_path / f"run{k}" / "fig")
        plt.close(fig)
        blobs.append([(tmp_path / f"run{k}" / f"fig.{ext}").read_bytes() for ext in ("png", "pdf")])
        time.sleep(1.1)
    assert blobs[0] == blobs[1]


def test_dataset_comparison_histograms_shower_fragments():
    from spice.data.summary import statistics

    def event(shower_pieces):  # one shower instance made of `shower_pieces` isolated voxels, plus a track
        coords = [[4 * i, 0, 0] for i in range(shower_pieces)] + [[0, 5 + i, 0] for i in range(12)]
        n = len(coords)
        sem = [2] * shower_pieces + [1] * 12
        inst = [0] * shower_pieces + [1] * 12
        return Event(np.array(coords, np.int64), np.full(n, 0.5, np.float32), np.array(sem, np.int64),
                     np.array(inst, np.int64), 64)

    real, gen = statistics([event(10)]), statistics([event(1), event(1)])
    fig = plots.fig_dataset_comparison(real, gen)
    ax = fig.axes[4]
    assert ax.get_xlabel() == "log10 fragments per shower"
    filled = [p for p in ax.patches if p.get_fill() and p.get_height() > 0]   # generated: bars
    assert len(filled) == 1 and filled[0].get_x() == pytest.approx(0.0)       # both showers in one piece
    step = [p for p in ax.patches if not p.get_fill()][0]                     # real: a step outline
    assert step.get_path().vertices[:, 0].max() >= 1.0                         # reaches log10(10)
