"""benchmarks/compare_curves.py: two learning curves side by side at their shared iterations."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_curves  # noqa: E402


def write_curve(folder: Path, rows: list[tuple[int, str, float]]) -> Path:
    folder.mkdir(parents=True)
    pd.DataFrame([{"iteration": i, "seconds": 10.0 * i, "class": 0, "class_name": c, "ari": a, "n_events": 5}
                  for i, c, a in rows]).to_csv(folder / "learning_curve.csv", index=False)
    return folder


def test_rows_at_shared_iterations_with_differences(tmp_path, capsys):
    a = write_curve(tmp_path / "a", [(100, "HIP", 0.5), (100, "MIP", 0.4), (200, "HIP", 0.6), (200, "MIP", 0.5),
                                     (300, "HIP", 0.7), (300, "MIP", 0.6)])
    b = write_curve(tmp_path / "b", [(200, "HIP", 0.75), (200, "MIP", 0.45), (300, "HIP", 0.8), (300, "MIP", 0.7),
                                     (400, "HIP", 0.9), (400, "MIP", 0.9)])
    rows = compare_curves.compare(compare_curves.read_curve(a), compare_curves.read_curve(b), ["HIP", "MIP"])
    assert list(rows.index) == [200, 300, "mean"]        # 100 only in A, 400 only in B
    assert rows.loc[200, "HIP B−A"] == pytest.approx(0.15)
    assert rows.loc[300, "MIP B−A"] == pytest.approx(0.1)
    assert rows.loc["mean", "HIP A"] == pytest.approx(0.65)
    assert rows.loc["mean", "MIP B−A"] == pytest.approx((-0.05 + 0.1) / 2)
    assert compare_curves.main([str(a), str(b), "--classes", "HIP", "MIP"]) == 0
    assert "| 300 " in capsys.readouterr().out


def test_missing_curve_or_class_is_one_line(tmp_path):
    a = write_curve(tmp_path / "a", [(100, "HIP", 0.5)])
    with pytest.raises(SystemExit, match="no learning curve"):
        compare_curves.main([str(a), str(tmp_path / "absent")])
    with pytest.raises(SystemExit, match=r"classes \['Delta'\] are not in both curves"):
        compare_curves.main([str(a), str(a), "--classes", "HIP", "Delta"])
