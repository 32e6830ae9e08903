"""The notebook runner, and a smoke run of EVERY notebook with the tiny `smoke` profile (CI executes them all)."""
import json
from pathlib import Path

import nbformat
import pytest

from spice import notebooks as nbrun

REPO = Path(__file__).resolve().parents[1]


def _tiny_notebook(path: Path, body: str, params: str = "x = 1\ny = 'a'"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("z = x + 1"), nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


def test_every_notebook_has_parameters_and_no_outputs():
    """The committed notebooks are the sources: valid, without outputs, with a papermill parameters cell."""
    nbs = nbrun.notebooks()
    assert [p.stem[:2] for p in nbs] == [f"{i:02d}" for i in range(9)]
    for path in nbs:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)  # includes unique cell ids
        code = [c for c in nb.cells if c.cell_type == "code"]
        dirty = [k for k, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; "
                           f"run `python -m spice.notebooks clear` before committing")
        assert code and "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell untagged"
        assert {"profile", "build_dir", "figures_dir", "seed", "device"} <= set(nbrun.declared_parameters(path))


def test_clear_strips_outputs_and_keeps_sources(tmp_path):
    path = tmp_path / "00_a.ipynb"
    _tiny_notebook(path, "print('hi')")
    clean = path.read_bytes()
    assert not nbrun.clear_outputs(path) and path.read_bytes() == clean
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].execution_count = 3
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    nbformat.write(nb, path)
    assert nbrun.clear_outputs(path)
    assert path.read_bytes() == clean  # sources, tags and cell ids untouched


def test_every_profile_names_only_declared_parameters():
    for profile in ("demo", "paper", "smoke"):
        config = nbrun.load_profile(profile)
        for path in nbrun.notebooks():
            params = nbrun.parameters_for(path, config)
            assert set(params) <= set(nbrun.declared_parameters(path))


def test_unknown_parameters_are_errors(tmp_path):
    _tiny_notebook(tmp_path / "00_a.ipynb", "pass")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.yaml").write_text("x: 2\nnot_a_parameter: 3\n")
    with pytest.raises(nbrun.NotebookError, match="not_a_parameter"):
        nbrun.run("p", directory=tmp_path, out_root=tmp_path / "out")
    (tmp_path / "profiles" / "p.yaml").write_text("x: 2\n")
    with pytest.raises(nbrun.NotebookError, match="has no parameters \\['w'\\]"):
        nbrun.run("p", overrides={"w": 1}, directory=tmp_path, out_root=tmp_path / "out")
    with pytest.raises(nbrun.NotebookError, match="no single notebook"):
        nbrun.resolve("07", tmp_path)


def test_failing_cell_names_notebook_and_cell_and_source_untouched(tmp_path):
    _tiny_notebook(tmp_path / "00_ok.ipynb", "assert z == 42")
    _tiny_notebook(tmp_path / "01_bad.ipynb", "raise ValueError('boom ' + y)")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.yaml").write_text("x: 41\n")
    before = (tmp_path / "01_bad.ipynb").read_bytes()
    with pytest.raises(nbrun.NotebookError, match=r"01_bad.ipynb failed in cell 3 .*ValueError: boom b"):
        nbrun.run("p", overrides={"y": "b"}, directory=tmp_path, out_root=tmp_path / "out")
    assert (tmp_path / "01_bad.ipynb").read_bytes() == before
    executed = nbformat.read(tmp_path / "out" / "p" / "00_ok.ipynb", as_version=4)
    assert any("x = 41" in c.source for c in executed.cells)  # papermill injected the profile value
    assert json.loads((tmp_path / "out" / "p" / "timings.json").read_text()).keys() == {"00_ok"}
    assert nbrun.main(["run", "--profile", "nonexistent_profile_xyz"]) == 1


def test_cell_output_streams_live_once_without_kernel_warnings(tmp_path, capfd):
    """Prints, tqdm bars and sub-process output reach the terminal once; the kernel's own log does not;
    the executed copy keeps the outputs with the bar stored as its final line."""
    body = ("import subprocess, sys\nfrom tqdm import tqdm\nfor i in tqdm(range(3), desc='work'):\n    pass\n"
            "print('printed', y)\nsubprocess.run([sys.executable, '-c', 'print(\"from a child\")'], check=True)")
    _tiny_notebook(tmp_path / "00_a.ipynb", body)
    out = nbrun.run_notebook(tmp_path / "00_a.ipynb", {"y": "b"}, tmp_path / "out")
    captured = capfd.readouterr()
    assert "work: 100%" in captured.err and "3/3" in captured.err and "it/s" in captured.err
    assert captured.out.count("printed b") == 1 and captured.out.count("from a child") == 1
    assert "WARNING" not in captured.err and "without encryption" not in captured.err + captured.out
    assert (tmp_path / "out" / "00_a.kernel.log").exists()
    outputs = nbformat.read(out, as_version=4).cells[-1].outputs
    streams = {o.name: o.text for o in outputs if o.output_type == "stream"}
    assert streams["stdout"] == "printed b\nfrom a child\n"
    assert "\r" not in streams["stderr"] and streams["stderr"].startswith("work: 100%")


@pytest.mark.slow
def test_smoke_profile_runs_every_notebook(tmp_path, capfd):
    """All notebooks end to end on tiny generated data: every paper table and figure file appears."""
    figures = tmp_path / "figures"
    overrides = {"build_dir": str(tmp_path / "build"), "data_dir": str(tmp_path / "data"),
                 "figures_dir": str(figures)}
    config = nbrun.load_profile("smoke")
    times = {}
    for path in nbrun.notebooks():
        params = nbrun.parameters_for(path, {**config, **overrides})
        import time
        t0 = time.perf_counter()
        nbrun.run_notebook(path, params, tmp_path / "executed")
        times[path.stem] = time.perf_counter() - t0
    # live progress in the terminal (make demo): training stage / iteration / loss / it/s / time left,
    # events done in tuning and evaluation; no kernel or library warnings
    term = capfd.readouterr()
    bar = [line for line in term.err.replace("\r", "\n").splitlines() if line.startswith("spice train:")]
    assert any("4/4" in line and "it/s" in line and "stage=2" in line and "loss=" in line for line in bar), bar
    assert any("<" in line for line in bar)  # elapsed<remaining
    assert "tune: 100%" in term.err and "evaluate: 100%" in term.err
    assert "Warning" not in term.err and "WARNING" not in term.err and "without encryption" not in term.err
    executed = nbformat.read(tmp_path / "executed" / "02_train.ipynb", as_version=4)
    kept = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "spice train: 100%" in kept and "\r" not in kept
    for stem in ("table1_dataset", "table2_thresholds", "table3_metrics", "table_ari_fraction", "table_baseline",
                 "table_timing", "table_architecture", "table_error_budget", "table_instance_fates"):
        for ext in (".csv", ".md", ".tex", ".json"):
            assert (figures / (stem + ext)).exists(), stem + ext
    for stem in ("fig01_event", "fig03_architecture", "fig04_embedding", "fig05_metric_distributions",
                 "fig06_margin_extent", "fig07_count_confusion", "fig08_metrics_vs_count", "fig10_timing",
                 "fig12_track_split", "fig13_colinear_merged", "fig14_postprocessing_merge",
                 "fig15_showers_merged", "fig16_deposits_split", "fig_losses", "fig_baseline"):
        assert (figures / (stem + ".png")).stat().st_size > 0 and (figures / (stem + ".pdf")).exists(), stem
    prov = json.loads((figures / "table3_metrics.json").read_text())
    assert prov["profile"] == "smoke" and prov["notebook"] == "04_evaluate" and prov["data"]["generator"]
    index = nbrun.write_index(figures).read_text()
    assert "table3_metrics.csv" in index and "fig10_timing.png" in index
    print("smoke notebook seconds:", {k: round(v, 1) for k, v in times.items()})
    # a second run (as a second `make demo` after a code change) resumes the finished training runs
    table3 = (figures / "table3_metrics.csv").read_text()
    for stem in ("02_train", "04_evaluate"):
        path = nbrun.resolve(stem)
        nbrun.run_notebook(path, nbrun.parameters_for(path, {**config, **overrides}), tmp_path / "executed")
    assert (figures / "table3_metrics.csv").read_text() == table3  # same checkpoints, same numbers
    # a run cut by max_minutes (a batch job's time limit) stops 02 with a checkpoint; a rerun finishes it
    path = nbrun.resolve("02_train")
    longer = {**config, **overrides, "stage2_iterations": 4}
    with pytest.raises(nbrun.NotebookError, match="max_minutes"):
        nbrun.run_notebook(path, nbrun.parameters_for(path, longer, {"max_minutes": 1e-9}), tmp_path / "executed")
    nbrun.run_notebook(path, nbrun.parameters_for(path, longer), tmp_path / "executed")
    state = json.loads((tmp_path / "build" / "train.json").read_text())
    import torch
    assert torch.load(state["checkpoint"], weights_only=True)["iteration"] == 6


def test_paper_data_step_fails_clearly_when_the_dataset_cannot_be_reached(tmp_path):
    """`make paper` without reachable data: 00_data stops naming the dataset, the URL and the way out."""
    import socket

    with socket.socket() as s:  # a port on this machine that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manifest = tmp_path / "unreachable_512px.json"
    manifest.write_text(json.dumps({"name": "unreachable_512px", "files": [
        {"split": s, "path": f"{s}.root", "url": f"http://127.0.0.1:{port}/{s}.root", "size": None,
         "sha256": None, "n_events": None} for s in ("train", "test")]}))
    path = nbrun.resolve("00")
    config = {**nbrun.load_profile("paper"), "data_source": str(manifest), "data_dir": str(tmp_path / "data"),
              "build_dir": str(tmp_path / "build"), "figures_dir": str(tmp_path / "figures")}
    with pytest.raises(nbrun.NotebookError) as err:
        nbrun.run_notebook(path, nbrun.parameters_for(path, config), tmp_path / "executed")
    message = str(err.value)
    assert "00_data.ipynb failed" in message and "unreachable_512px" in message
    assert f"http://127.0.0.1:{port}/train.root" in message and "spice data download --dataset" in message
    assert not (tmp_path / "data" / "unreachable_512px" / "train.root").exists()
