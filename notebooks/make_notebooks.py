"""Write the numbered paper notebooks (sources, without outputs): `python notebooks/make_notebooks.py`.

Each notebook: a title, a `parameters` cell (papermill; values come from notebooks/profiles/*.yaml),
then thin cells that call `spice`. Hand-overs between notebooks are JSON files in `build_dir`.
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

COMMON = '''profile = "demo"          # profile name (recorded in provenance)
data_dir = "data/generated/demo"  # where data are generated / downloaded
build_dir = "build/demo"  # intermediate artefacts (hand-over JSON, checkpoints, frames)
figures_dir = "figures"   # tables and figures of the paper
seed = 0
device = "cpu"'''

SETUP = '''import json
from pathlib import Path

import numpy as np
import pandas as pd

from spice import plots, tables
from spice.notebooks import open_split, read_state, write_state
from spice.provenance import provenance

build, figures = Path(build_dir), Path(figures_dir)
build.mkdir(parents=True, exist_ok=True)'''

PROV = '''data = read_state(build, "data")
prov = provenance(profile, NOTEBOOK, data=data["provenance"])'''

NOTEBOOKS = {
    "00_data": ("Data: generate (demo) or download and verify (paper) the train / validation / test sets", '''
data_source = "synthetic"  # "synthetic" (spice.data.synthetic) or a dataset manifest name to download
spatial_size = 192        # grid of the generated events (voxels per side)
n_train = 300
n_val = 40
n_test = 60
real_sample = "../shared/data/small_192px.root"  # the real 5-event PILArNet sample, used when present
train_split = "train"     # manifest splits (download mode)
test_split = "test"
max_files = None          # download at most this many files per split (None: all)''', [
        '''NOTEBOOK = "00_data"
from spice.data.pilarnet_m import write_pilarnet_m

out = Path(data_dir)
if data_source == "synthetic":
    from spice.data import synthetic
    splits, gen = {}, {}
    for k, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        path = out / f"{split}.h5"
        events = synthetic.generate(n, spatial_size=spatial_size, seed=seed + 1000 * k)
        write_pilarnet_m(list(events), path)
        splits[split] = {"files": [str(path)], "range": None}
        gen[split] = {"n_events": n, "seed": seed + 1000 * k, "spatial_size": spatial_size}
    data_prov = {"generator": "spice.data.synthetic.generate", "splits": gen}
else:
    from spice.data.download import download, load_manifest
    try:
        train_files = download(data_source, split=train_split, max_files=max_files, root=out)
        test_files = download(data_source, split=test_split, max_files=max_files, root=out)
    except Exception as err:  # name the dataset and the way out, then fail the notebook
        raise RuntimeError(f"dataset {data_source!r} could not be reached or verified ({err}); "
                           f"fetch it with `spice data download --dataset {data_source}` on a networked machine "
                           f"into {out} and rerun") from err
    # the paper: 100 validation events held out of the test files, the rest is the test set
    splits = {"train": {"files": [str(p) for p in train_files], "range": None},
              "val": {"files": [str(p) for p in test_files], "range": [0, n_val]},
              "test": {"files": [str(p) for p in test_files], "range": [n_val, n_val + n_test]}}
    data_prov = {"manifest": load_manifest(data_source)}''',
        '''real = Path(real_sample)
if real.exists():
    splits["real"] = {"files": [str(real)], "range": None}
    data_prov["real_sample"] = {"path": str(real), "size": real.stat().st_size}
else:
    print(f"real sample {real} not found: the extra real-data test set is skipped")
write_state(build, "data", {"splits": splits, "provenance": data_prov})
for name in splits:
    print(name, len(open_split({"splits": splits}, name)), "events")'''
    ]),
    "01_dataset": ("Dataset: Table I and Figure 1 (one event: energy, semantic, instance)", '''
figure1_event = 0  # index of the test event shown in Figure 1''', [
        '''NOTEBOOK = "01_dataset"
from spice.data.summary import summary
''' + PROV,
        '''rows = []
for split in data["splits"]:
    ds = open_split(data, split)
    t = summary([ds[i] for i in range(len(ds))])
    t.insert(0, "set", split)
    rows.append(t)
table1 = pd.concat(rows, ignore_index=True)
tables.save_table(table1, figures / "table1_dataset", prov, caption="Table I: instances, events and voxels per class")
table1''',
        '''test = open_split(data, "test")
event = test[figure1_event]
fig = plots.fig_event(event, title=f"test event {figure1_event} ({len(event)} voxels)")
tables.save_figure(fig, figures / "fig01_event", prov)''',
    ]),
    "02_train": ("Training: both stages, loss curves, architecture (Figure 3)", '''
filters = 16
depth = 4
reps = 2
stage1_iterations = 200
stage2_iterations = 200
batch_size = 8
lr = 0.005
threads = 0              # CPU threads for torch (0: default)
checkpoint_every = 100
train_subprocess = False  # True: run `spice train` as a subprocess (a killed kernel loses nothing)
max_minutes = 0           # stop training after this wall time, checkpointed (0: no limit); rerun to continue''', [
        '''NOTEBOOK = "02_train"
import subprocess, sys, yaml
import torch
from spice.train import TrainConfig, finished, train, load_model
from spice.model import describe
''' + PROV,
        '''import hashlib

def config(stage1, stage2, name):
    """TrainConfig; its out_dir is keyed by a hash of the settings, so an unchanged run resumes and a
    changed one starts afresh (max_minutes, which does not change the result, is not in the key)."""
    spec = {
        "data": {"train": data["splits"]["train"]["files"]},
        "model": {"filters": filters, "depth": depth, "reps": reps},
        "stage1_iterations": stage1, "stage2_iterations": stage2, "batch_size": batch_size, "lr": lr,
        "seed": seed, "device": device, "threads": threads, "checkpoint_every": checkpoint_every,
        "progress": False}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return TrainConfig.from_dict({**spec, "max_minutes": max_minutes, "out_dir": str(build / f"{name}-{key}")})

cfg = config(stage1_iterations, stage2_iterations, "train")
if train_subprocess:
    cfg_path = build / "train_config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    subprocess.run([sys.executable, "-m", "spice.cli", "train", "--config", str(cfg_path), "--resume"], check=True)
    checkpoint = Path(cfg.out_dir) / "checkpoint.pt"
else:
    checkpoint = train(cfg, resume=True)
if not finished(checkpoint):  # stopped by max_minutes: later notebooks need the trained network
    raise RuntimeError(f"training stopped after max_minutes={max_minutes} at {checkpoint}; "
                       "rerun (make demo / make paper) to continue it")
# the untrained network (same seed and architecture, zero iterations): the baseline of Table III
untrained = train(config(0, 0, "untrained"), resume=True)
write_state(build, "train", {"checkpoint": str(checkpoint), "untrained": str(untrained), "config": cfg.to_dict()})''',
        '''losses = pd.read_csv(Path(cfg.out_dir) / "losses.csv")
fig = plots.fig_loss_curves(losses)
tables.save_figure(fig, figures / "fig_losses", prov)
losses.tail()''',
        '''model = load_model(checkpoint)
arch = describe(model)
tables.save_table(arch, figures / "table_architecture", prov, caption="Figure 3: layers, channels and parameters")
fig = plots.fig_architecture(filters, depth, reps)
tables.save_figure(fig, figures / "fig03_architecture", prov)
print("parameters:", int(arch["parameters"].sum()))
arch''',
    ]),
    "03_tune": ("Tuning: Table II (s0, p0 per class) and the grid-search heat maps", '''
n_s0 = 21                 # grid points of s0 in [0, 1]
n_p0 = 30                 # grid points of p0 in [0.01, 0.6]
tune_objective = "sbd"''', [
        '''NOTEBOOK = "03_tune"
from spice.train import load_model
from spice.tune import grid_search, save_thresholds
''' + PROV + '''
state = read_state(build, "train")
val = open_split(data, "val")
events = [val[i] for i in range(len(val))]
labels = events[0].labels
s0_grid, p0_grid = np.linspace(0, 1, n_s0), np.linspace(0.01, 0.6, n_p0)''',
        '''result = {}
for name in ("checkpoint", "untrained"):
    grid, tuned = grid_search(load_model(state[name], device), events, s0_grid, p0_grid,
                              objective=tune_objective, device=device)
    thresholds, untuned = tables.complete_thresholds(tuned, labels)  # classes absent from validation
    save_thresholds(thresholds, build / f"thresholds_{name}.json", objective=tune_objective, n_events=len(events),
                    untuned=untuned)
    result[name] = {"grid": grid, "thresholds": thresholds, "untuned": untuned}
write_state(build, "tune", {k: str(build / f"thresholds_{k}.json") for k in result})''',
        '''table2 = tables.thresholds_table(result["checkpoint"]["thresholds"], labels, result["checkpoint"]["untuned"])
tables.save_table(table2, figures / "table2_thresholds", prov,
                  caption=f"Table II: (s0, p0) maximising mean {tune_objective.upper()} on {len(events)} validation events")
fig = plots.fig_threshold_heatmaps(result["checkpoint"]["grid"], label=f"mean {tune_objective.upper()}", labels=labels)
tables.save_figure(fig, figures / "fig_threshold_heatmaps", prov)
table2''',
    ]),
    "04_evaluate": ("Evaluation: Table III, Figures 5, 7, 8 and the fraction of particles with ARI > 0.92", '''
dataset_name = "generated test set"  # how Table III names the test set''', [
        '''NOTEBOOK = "04_evaluate"
from spice.evaluate import evaluate, save_frame
from spice.train import load_model
from spice.tune import load_thresholds
''' + PROV + '''
state, tuned = read_state(build, "train"), read_state(build, "tune")
test = open_split(data, "test")''',
        '''frames = {}
frames["spice"] = evaluate(load_model(state["checkpoint"], device), test, load_thresholds(tuned["checkpoint"]),
                           device=device, progress=False)
frames["untrained"] = evaluate(load_model(state["untrained"], device), test, load_thresholds(tuned["untrained"]),
                               device=device, progress=False)
real = open_split(data, "real") if "real" in data["splits"] else None
if real is not None and real[0].spatial_size > load_model(state["checkpoint"]).spatial_size:
    print(f"real sample grid {real[0].spatial_size}^3 exceeds the model's; set spatial_size >= it in 00_data")
    real = None
if real is not None:
    frames["real"] = evaluate(load_model(state["checkpoint"], device), real,
                              load_thresholds(tuned["checkpoint"]), device=device, progress=False)
for name, df in frames.items():
    save_frame(df, build / f"frame_{name}.csv")
write_state(build, "evaluate", {k: str(build / f"frame_{k}.csv") for k in frames})''',
        '''parts = [tables.metrics_table(frames["spice"], f"{dataset_name}: trained SPICE"),
         tables.metrics_table(frames["untrained"], f"{dataset_name}: untrained network", paper=False)]
if "real" in frames:
    parts.append(tables.metrics_table(frames["real"], "real PILArNet sample small_192px.root: trained SPICE"))
table3 = pd.concat(parts, ignore_index=True)
tables.save_table(table3, figures / "table3_metrics", prov,
                  caption="Table III: mean purity / efficiency / ARI / SBD per class; paper values for comparison")
with pd.option_context("display.width", 200, "display.max_columns", 20):
    print(table3.to_string(index=False))''',
        '''better = (table3.iloc[:len(parts[0])]["ari"].to_numpy() - parts[1].set_index("class_name")
          .reindex(parts[0]["class_name"])["ari"].to_numpy())
print("ARI gain of the trained over the untrained network per class:", dict(zip(parts[0]["class_name"], better.round(3))))
frac = tables.fraction_above(frames["spice"], "ari", 0.92)
tables.save_table(frac, figures / "table_ari_fraction", prov, caption="Fraction with ARI > 0.92 (paper: 90% of particles)")
frac''',
        '''spice_frame = frames["spice"]
tables.save_figure(plots.fig_metric_distributions(spice_frame), figures / "fig05_metric_distributions", prov)
tables.save_figure(plots.fig_count_confusion(spice_frame), figures / "fig07_count_confusion", prov)
tables.save_figure(plots.fig_metrics_vs_count(spice_frame), figures / "fig08_metrics_vs_count", prov)''',
    ]),
    "05_margins": ("Margins: Figure 6 (learned margin vs true spatial extent)", '''
n_margin_events = 60  # test events whose instances enter Figure 6''', [
        '''NOTEBOOK = "05_margins"
from spice.evaluate import instance_table, predict
from spice.train import load_model
''' + PROV + '''
model = load_model(read_state(build, "train")["checkpoint"], device)
test = open_split(data, "test")
n = min(n_margin_events, len(test))
instances = pd.concat([instance_table(test[i], predict(model, test[i], device), event_id=i) for i in range(n)],
                      ignore_index=True)
labels = test[0].labels''',
        '''fig = plots.fig_margin_extent(instances, labels=labels, margin="mean_margin_voxels")
tables.save_figure(fig, figures / "fig06_margin_extent", prov)
instances.groupby("class")[["extent_voxels", "mean_margin_voxels"]].corr().round(3)''',
    ]),
    "06_displays": ("Displays: Figures 4, 9, 11 and one example of each failure mode (Figures 12-16)", '''
n_display_events = 60  # test events searched for failure modes
gallery_events = 6     # events in the interactive gallery (when spice.display is available)''', [
        '''NOTEBOOK = "06_displays"
from spice.evaluate import load_frame, predict_and_cluster
from spice.failures import MODES, find_failures
from spice.train import load_model
from spice.tune import load_thresholds
import matplotlib.pyplot as plt
''' + PROV + '''
model = load_model(read_state(build, "train")["checkpoint"], device)
thresholds = load_thresholds(read_state(build, "tune")["checkpoint"])
frame = load_frame(read_state(build, "evaluate")["spice"])
test = open_split(data, "test")
n = min(n_display_events, len(test))
preds = {}
for i in range(n):
    ev = test[i]
    out, pred = predict_and_cluster(model, ev, thresholds, device)
    preds[i] = {"coords": ev.coords, "semantic": ev.semantic, "instance": ev.instance, "pred": np.asarray(pred),
                "embedding": out["embedding"], "margin": out["margin"].reshape(-1),
                "seediness": out["seediness"].reshape(-1), "labels": ev.labels}''',
        '''rng = np.random.default_rng(seed)
picks = rng.permutation(n)
p = preds[int(picks[0])]
tables.save_figure(plots.fig_true_vs_pred(p["coords"], p["instance"], p["pred"], p["embedding"],
                                          title=f"Figure 4: test event {int(picks[0])} and its embedding"),
                   figures / "fig04_embedding", prov)
for stem, chosen in (("fig09_true_vs_pred", picks[:2]), ("fig11_more_examples", picks[2:5])):
    for k, i in enumerate(chosen):
        p = preds[int(i)]
        tables.save_figure(plots.fig_true_vs_pred(p["coords"], p["instance"], p["pred"], title=f"test event {int(i)}"),
                           figures / f"{stem}_{k}", prov)
plt.close("all")''',
        '''found = find_failures(preds, frame)
stems = {12: "fig12_track_split", 13: "fig13_colinear_merged", 14: "fig14_postprocessing_merge",
         15: "fig15_showers_merged", 16: "fig16_deposits_split"}
for figure, stem in stems.items():
    row = found[found["figure"] == figure]
    if row.empty:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, f"Figure {figure} ({MODES[figure]}): no example among {n} test events",
                ha="center", va="center")
    else:
        r = row.iloc[0]
        p = preds[int(r["event"])]
        m = p["semantic"] == r["class"]
        fig = plots.fig_true_vs_pred(p["coords"][m], p["instance"][m], p["pred"][m], p["embedding"][m],
                                     title=f"Figure {figure}: {MODES[figure]} (test event {r['event']}, "
                                           f"{r['class_name']}, score {r['score']:.3g})")
    tables.save_figure(fig, figures / stem, prov)
    plt.close(fig)
tables.save_table(found.astype({"instances": str}), figures / "table_failures", prov,
                  caption="Failure-mode examples found automatically")
found''',
        '''from spice.display import write_gallery  # interactive pages: random picks, then the failure examples
chosen = [int(i) for i in picks[:gallery_events]] + [int(r.event) for r in found.itertuples()]
titles = [f"random test event {i}" for i in picks[:gallery_events]] + \
         [f"Figure {r.figure}: {r.mode} ({r.class_name})" for r in found.itertuples()]
outputs = [{k: preds[i][k] for k in ("embedding", "margin", "seediness")} for i in chosen]
write_gallery([test[i] for i in chosen], outputs, figures / "gallery", predicted=[preds[i]["pred"] for i in chosen],
              titles=titles)''',
    ]),
    "07_timing": ("Timing: Figure 10 (network and clustering wall time per event, per device)", '''
n_timing_events = 30''', [
        '''NOTEBOOK = "07_timing"
import platform
import torch
from spice.evaluate import evaluate
from spice.train import load_model
from spice.tune import load_thresholds
from torch.utils.data import Subset
''' + PROV + '''
checkpoint = read_state(build, "train")["checkpoint"]
thresholds = load_thresholds(read_state(build, "tune")["checkpoint"])
test = open_split(data, "test")
subset = Subset(test, range(min(n_timing_events, len(test))))
devices = {f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)": "cpu"}
for k in range(torch.cuda.device_count()):
    devices[f"cuda:{k} ({torch.cuda.get_device_name(k)})"] = f"cuda:{k}"''',
        '''frames = []
for name, dev in devices.items():
    model = load_model(checkpoint, dev)
    evaluate(model, Subset(test, range(1)), thresholds, device=dev, progress=False)  # warm-up
    frames.append(evaluate(model, subset, thresholds, device=dev, progress=False).assign(device=name))
timing = pd.concat(frames, ignore_index=True)
tables.save_figure(plots.fig_timing(timing), figures / "fig10_timing", prov)
per_event = timing.groupby(["device", "event"])[["net_time_s", "cluster_time_s"]].first()
summary = per_event.groupby("device").agg(["mean", "median"]).reset_index()
summary.columns = ["device"] + [f"{a}_{b}" for a, b in summary.columns[1:]]
tables.save_table(summary, figures / "table_timing", prov, caption="Wall time per event (s)")
summary''',
    ]),
    "08_baseline": ("Baseline: SPICE against DBSCAN on the true semantic masks, per class", '''
dbscan_min_samples = 1''', [
        '''NOTEBOOK = "08_baseline"
from spice.baseline import dbscan_evaluate, tune_dbscan
from spice.evaluate import load_frame
''' + PROV + '''
val, test = open_split(data, "val"), open_split(data, "test")
grid, eps = tune_dbscan([val[i] for i in range(len(val))], min_samples=dbscan_min_samples)
eps = {c: eps.get(c, 1.8) for c in range(len(test[0].labels))}  # classes absent from validation: 26-connectivity
db = dbscan_evaluate(test, eps, min_samples=dbscan_min_samples)
sp = load_frame(read_state(build, "evaluate")["spice"])
both = pd.concat([sp, db], ignore_index=True)''',
        '''rows = []
for method, df in both.groupby("method"):
    t = tables.metrics_table(df, f"generated test set: {method}", paper=False)
    t.insert(1, "method", method)
    rows.append(t)
table = pd.concat(rows, ignore_index=True)
table["dbscan_eps"] = [eps.get(int(c)) if m == "dbscan" else np.nan
                       for m, c in zip(table["method"], [test[0].labels.index(n) for n in table["class_name"]])]
tables.save_table(table, figures / "table_baseline", prov, caption="SPICE vs DBSCAN (eps tuned per class on validation)")
tables.save_figure(plots.fig_method_comparison(both), figures / "fig_baseline", prov)
table''',
    ]),
}


def build(name: str, title: str, params: str, cells: list[str]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    header = (f"# {name}: {title}\n\nRun with `make nb NB={name[:2]} PROFILE=demo` (parameters from "
              f"`notebooks/profiles/<profile>.yaml`; override with `python -m spice.notebooks run --nb {name[:2]} "
              f"-p NAME VALUE`). Outputs go to `figures/` with provenance sidecars.")
    param_cell = new_code_cell(COMMON + params)
    param_cell.metadata["tags"] = ["parameters"]
    nb.cells = [new_markdown_cell(header), param_cell, new_code_cell(SETUP)] + [new_code_cell(c) for c in cells]
    for k, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{k:02d}"  # stable ids: regenerating leaves unchanged notebooks byte-identical
    return nb


def main() -> None:
    for name, (title, params, cells) in NOTEBOOKS.items():
        nbformat.write(build(name, title, params, cells), HERE / f"{name}.ipynb")
        print("wrote", HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
