"""Run the paper notebooks with papermill, parameters from a profile YAML.

    python -m spice.notebooks run --profile demo            # every notebook, in order
    python -m spice.notebooks run --profile demo --nb 04    # one (prefix or full name)
    python -m spice.notebooks run --profile demo --nb 04 -p n_test 50   # override a parameter
    python -m spice.notebooks list                          # notebooks and their parameters
    python -m spice.notebooks index                         # write figures/README.md, warn on stale outputs
    python -m spice.notebooks clear                         # strip outputs from the sources before a commit

The committed `notebooks/NN_*.ipynb` are the sources: edit them in JupyterLab (or any editor) and
commit them without outputs (`clear`, or JupyterLab's Edit > Clear Outputs of All Cells).

A profile (`notebooks/profiles/<name>.yaml`) is a flat mapping of parameter names to values. Each
notebook receives the names its `parameters` cell declares; a profile name that no notebook declares,
or a `-p` name the chosen notebook does not declare, is an error (papermill itself only warns).
Executed copies go to `build/notebooks/<profile>/`, never over the sources; a failing cell stops the run
with the notebook and the cell named. Notebooks run with the repository root as working directory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from spice.provenance import REPO_ROOT, stale_sidecars, write_json

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PROFILE_DIR = NOTEBOOK_DIR / "profiles"
BUILD_DIR = REPO_ROOT / "build" / "notebooks"


class NotebookError(RuntimeError):
    """A notebook could not be run: bad parameters, or a cell raised (notebook and cell named)."""


def notebooks(directory: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks `NN_name.ipynb`, in order."""
    return sorted(p for p in Path(directory).glob("[0-9][0-9]_*.ipynb"))


def clear_outputs(path: Path) -> bool:
    """Remove the outputs and execution counts of a source notebook in place; True if it changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        nbformat.write(nb, tmp)
        os.replace(tmp, path)
    return changed


def resolve(name: str, directory: Path = NOTEBOOK_DIR) -> Path:
    """A notebook from its number ('04'), stem ('04_evaluate') or file name."""
    stem = Path(name).name.removesuffix(".ipynb")
    hits = [p for p in notebooks(directory) if p.stem == stem or p.stem.split("_", 1)[0] == stem]
    if len(hits) != 1:
        known = ", ".join(p.stem for p in notebooks(directory))
        raise NotebookError(f"no single notebook matches {name!r} in {directory} (known: {known})")
    return hits[0]


def declared_parameters(path: Path) -> dict:
    """{name: default as written} of the notebook's `parameters` cell (papermill.inspect_notebook)."""
    import papermill

    params = papermill.inspect_notebook(str(path))
    if not params:
        raise NotebookError(f"{path.name}: no cell tagged 'parameters'")
    return {name: info["default"] for name, info in params.items()}


def load_profile(profile: str, directory: Path = PROFILE_DIR) -> dict:
    """The parameter mapping of `notebooks/profiles/<profile>.yaml` (or a path to a YAML file)."""
    path = Path(profile) if profile.endswith((".yaml", ".yml")) else Path(directory) / f"{profile}.yaml"
    if not path.exists():
        known = ", ".join(p.stem for p in Path(directory).glob("*.yaml"))
        raise NotebookError(f"profile {profile!r} not found at {path} (known: {known})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise NotebookError(f"{path}: a profile must be a mapping of parameter names to values")
    return data


def parameters_for(path: Path, profile: dict, overrides: dict | None = None,
                   all_notebooks: list[Path] | None = None) -> dict:
    """The parameters to pass to notebook `path`: profile entries it declares, then `overrides`.

    Raises NotebookError for a profile name no notebook declares, or an override `path` does not declare."""
    declared = declared_parameters(path)
    everywhere = set()
    for nb in all_notebooks if all_notebooks is not None else notebooks(path.parent):
        everywhere |= set(declared_parameters(nb))
    unknown = sorted(set(profile) - everywhere)
    if unknown:
        raise NotebookError(f"profile parameters {unknown} are declared by no notebook in {path.parent}")
    bad = sorted(set(overrides or {}) - set(declared))
    if bad:
        raise NotebookError(f"{path.name} has no parameters {bad} (it declares: {sorted(declared)})")
    params = {k: v for k, v in profile.items() if k in declared}
    params.update(overrides or {})
    return params


def _kernel_manager_class(log_path: Path):
    """A jupyter_client kernel manager whose kernel writes its own log (and the copy of sub-process output
    that ipykernel echoes to the kernel's file descriptors) to `log_path` instead of the terminal: the
    notebook's outputs reach the terminal once, through papermill's stdout_file / stderr_file."""
    from jupyter_client.manager import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            # ipykernel stops capturing sub-process output when it sees pytest's variable: run as under make
            kw["env"] = {k: v for k, v in kw.get("env", os.environ).items() if k != "PYTEST_CURRENT_TEST"}
            with open(log_path, "ab") as log:  # the kernel keeps its own copy of the descriptor
                kw.update(stdout=log, stderr=log)
                await super()._async_launch_kernel(kernel_cmd, **kw)

    return LoggedKernelManager


def run_notebook(path: Path, params: dict, out_dir: Path, kernel: str = "python3", stream: bool = True) -> Path:
    """Execute one notebook into `out_dir/<name>.ipynb`; raise NotebookError naming the failing cell.

    With `stream`, what the cells print (progress bars included) appears live on this process's
    stdout / stderr; the executed copy keeps the outputs, each stream merged with carriage returns
    applied (a progress bar is stored as its final line). The kernel's own log goes to
    `out_dir/<name>.kernel.log`; its sockets are CurveZMQ-encrypted when pyzmq supports it."""
    import papermill
    import zmq
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    if out.resolve() == path.resolve():
        raise NotebookError(f"refusing to execute {path} over its source")
    log_path = out_dir / f"{path.stem}.kernel.log"
    log_path.unlink(missing_ok=True)
    config = Config({"KernelManager": {"transport_encryption": "auto"}}) if zmq.has("curve") else Config()
    env_before = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "Agg"
    try:
        papermill.execute_notebook(str(path), str(out), parameters=params, kernel_name=kernel,
                                   cwd=str(REPO_ROOT), progress_bar=False, log_output=False,
                                   stdout_file=sys.stdout if stream else None,
                                   stderr_file=sys.stderr if stream else None,
                                   coalesce_streams=True, config=config,
                                   kernel_manager_class=_kernel_manager_class(log_path))
    except PapermillExecutionError as err:
        raise NotebookError(f"{path.name} failed in cell {err.cell_index} (execution count {err.exec_count}): "
                            f"{err.ename}: {err.evalue}\n  executed copy: {out}") from None
    except RuntimeError as err:  # nbclient's DeadKernelError and kernel start-up failures
        raise NotebookError(f"{path.name}: the kernel failed ({type(err).__name__}: {err}); "
                            f"its log: {log_path}") from None
    finally:
        if env_before is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = env_before
    return out


def run(profile: str, names: list[str] | None = None, overrides: dict | None = None,
        out_root: Path = BUILD_DIR, kernel: str = "python3", directory: Path = NOTEBOOK_DIR) -> dict:
    """Run the chosen notebooks (all when `names` is empty) in order; return {stem: wall seconds}.

    Parameters are checked for every chosen notebook before any runs. Wall times are merged into
    `<out_root>/<profile>/timings.json`."""
    config = load_profile(profile, directory / "profiles")
    name = Path(profile).stem
    all_nbs = notebooks(directory)
    chosen = [resolve(n, directory) for n in names] if names else all_nbs
    plan = [(nb, parameters_for(nb, config, overrides, all_nbs)) for nb in chosen]
    out_dir = Path(out_root) / name
    timings_path = out_dir / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    done = {}
    for nb, params in plan:
        print(f"[spice.notebooks] {name}: {nb.name} ...", flush=True)
        t0 = time.perf_counter()
        run_notebook(nb, params, out_dir, kernel)
        done[nb.stem] = round(time.perf_counter() - t0, 1)
        print(f"[spice.notebooks] {name}: {nb.name} done in {done[nb.stem]:.1f} s", flush=True)
        timings[nb.stem] = done[nb.stem]
        write_json(timings_path, timings)
    return done


# ----------------------------------------------------------- state shared between the notebooks
def write_state(build_dir, name: str, obj: dict) -> Path:
    """Record a notebook's hand-over (file lists, checkpoint, thresholds) as `<build_dir>/<name>.json`."""
    return write_json(Path(build_dir) / f"{name}.json", obj)


def read_state(build_dir, name: str) -> dict:
    """Read a hand-over written by an upstream notebook; a clear error names the notebook to run first."""
    path = Path(build_dir) / f"{name}.json"
    if not path.exists():
        raise NotebookError(f"{path} is missing: run the notebook that writes it first "
                            f"(e.g. `make nb NB=00 PROFILE=<profile>` for data, 02 for train, 03 for tune)")
    return json.loads(path.read_text())


def open_split(data: dict, split: str):
    """The events of one split of the `data` hand-over: {'files': [...], 'range': [start, stop] or None}."""
    from spice.data.dataset import EventDataset
    import torch.utils.data

    spec = data["splits"][split]
    ds = EventDataset(spec["files"])
    if spec.get("range"):
        start, stop = spec["range"]
        ds = torch.utils.data.Subset(ds, range(start, min(stop, len(ds))))
    return ds


# Paper item -> (notebook, output stems in figures/). The index lists the files each stem has.
CATALOG = [
    ("Table I (dataset summary)", "01_dataset", ["table1_dataset"]),
    ("Figure 1 (example event: energy, semantic, instance)", "01_dataset", ["fig01_event"]),
    ("Figure 3 (architecture)", "02_train", ["fig03_architecture", "table_architecture"]),
    ("Real sample beside generated events", "01_dataset", ["table_real_vs_generated", "fig_real_vs_generated"]),
    ("Training loss curves", "02_train", ["fig_losses"]),
    ("Learning curve (validation ARI against iteration and wall time)", "02_train",
     ["fig_learning_curve", "table_learning_curve"]),
    ("Table II (clustering thresholds)", "03_tune", ["table2_thresholds", "fig_threshold_heatmaps"]),
    ("Table III (mean purity / efficiency / ARI)", "04_evaluate", ["table3_metrics"]),
    ("Fraction of particles with ARI > 0.92", "04_evaluate", ["table_ari_fraction"]),
    ("The paper's claims beside ours", "04_evaluate", ["table_claims"]),
    ("Where the ARI is lost: oracle steps, and what became of each instance", "04_evaluate",
     ["table_error_budget", "table_instance_fates"]),
    ("Figure 5 (metric distributions, log y)", "04_evaluate", ["fig05_metric_distributions"]),
    ("Figure 6 (margin vs true extent)", "05_margins", ["fig06_margin_extent", "table_margins"]),
    ("Figure 7 (predicted vs true instance count)", "04_evaluate", ["fig07_count_confusion"]),
    ("Figure 8 (metrics vs true instance count)", "04_evaluate", ["fig08_metrics_vs_count"]),
    ("Figure 4 (event and its embedding)", "06_displays", ["fig04_embedding"]),
    ("Figure 9 (true vs predicted instances)", "06_displays", ["fig09_true_vs_pred"]),
    ("Figure 10 (inference wall time per event)", "07_timing", ["fig10_timing", "table_timing"]),
    ("Figure 11 (more true vs predicted)", "06_displays", ["fig11_more_examples"]),
    ("Figure 12 (long track split)", "06_displays", ["fig12_track_split"]),
    ("Figure 13 (co-linear tracks merged)", "06_displays", ["fig13_colinear_merged"]),
    ("Figure 14 (post-processing merge)", "06_displays", ["fig14_postprocessing_merge"]),
    ("Figure 15 (overlapping showers merged)", "06_displays", ["fig15_showers_merged"]),
    ("Figure 16 (low-energy deposits split off)", "06_displays", ["fig16_deposits_split"]),
    ("Failure-mode examples found", "06_displays", ["table_failures"]),
    ("Interactive event gallery", "06_displays", ["gallery"]),
    ("SPICE vs DBSCAN baseline", "08_baseline", ["table_baseline", "fig_baseline"]),
]


def write_index(figures: Path = REPO_ROOT / "figures") -> Path:
    """Write `figures/README.md`: each paper table/figure, the notebook that makes it, its files."""
    figures = Path(figures)
    lines = ["# Figures and tables", "",
             "Generated by `python -m spice.notebooks index` (run by `make demo` / `make paper`). Each output",
             "has a `.json` sidecar with its provenance (git commit, profile, data, device, library versions).",
             "", "| Paper item | Notebook | Files |", "|:--|:--|:--|"]
    for item, nb, stems in CATALOG:
        files = sorted(p.name if p.is_file() else f"{p.name}/index.html"
                       for stem in stems for p in figures.glob(f"{stem}*")
                       if p.is_file() or (p / "index.html").is_file())
        shown = ", ".join(f"[{f}]({f})" for f in files) if files else "_not generated yet_"
        lines.append(f"| {item} | `notebooks/{nb}.ipynb` | {shown} |")
    path = figures / "README.md"
    figures.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("README.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def _value(text: str):
    """A `-p` value: YAML scalar/list syntax (so 50 -> int, [1, 2] -> list, cpu -> str)."""
    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spice.notebooks", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute notebooks with a profile")
    r.add_argument("--profile", default="demo", help="profile name in notebooks/profiles or a YAML path")
    r.add_argument("--nb", action="append", default=[], help="notebook number or name (repeatable; default all)")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override one parameter (YAML value)")
    r.add_argument("--out", type=Path, default=BUILD_DIR, help="root of executed notebooks")
    r.add_argument("--kernel", default="python3")
    sub.add_parser("list", help="list the notebooks and their parameters")
    ix = sub.add_parser("index", help="write figures/README.md from the files in figures/; warn about outputs "
                        "made from a dirty tree or from older code")
    ix.add_argument("--figures", type=Path, default=REPO_ROOT / "figures")
    sub.add_parser("clear", help="strip outputs and execution counts from the source notebooks")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for nb in notebooks():
                print(f"{nb.stem}: {', '.join(declared_parameters(nb))}")
        elif args.command == "index":
            print(write_index(args.figures))
            for line in stale_sidecars(args.figures):
                print(f"warning: {line}", file=sys.stderr)
        elif args.command == "clear":
            for nb in notebooks():
                if clear_outputs(nb):
                    print(f"cleared {nb}")
        else:
            overrides = {k: _value(v) for k, v in args.parameter}
            run(args.profile, args.nb, overrides, args.out, args.kernel)
    except NotebookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
