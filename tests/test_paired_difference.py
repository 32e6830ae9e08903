"""benchmarks/paired_difference.py: per-class paired differences of two evaluation frames, with standard errors."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import paired_difference  # noqa: E402


def frame(rows):
    return pd.DataFrame([{"event": e, "class": c, "class_name": ["HIP", "MIP"][c], "ari": a} for e, c, a in rows])


def test_pairs_by_event_and_class_and_gives_the_standard_error_by_hand():
    a = frame([(0, 0, 0.5), (1, 0, 0.6), (2, 0, 0.7), (0, 1, 0.9), (3, 0, 0.1)])
    b = frame([(0, 0, 0.6), (1, 0, 0.9), (2, 0, 0.7), (0, 1, 0.8)])        # event 3 absent from B: unpaired
    out = paired_difference.paired(a, b).set_index("class_name")
    hip = out.loc["HIP"]
    d = np.array([0.1, 0.3, 0.0])
    assert hip["n"] == 3
    assert hip["ari A"] == pytest.approx(0.6) and hip["ari B"] == pytest.approx(0.7333333)
    assert hip["B − A"] == pytest.approx(d.mean())
    assert hip["standard error"] == pytest.approx(np.std(d, ddof=1) / np.sqrt(3))
    assert out.loc["MIP", "n"] == 1 and np.isnan(out.loc["MIP", "standard error"])


def test_missing_column_names_the_file(tmp_path):
    path = tmp_path / "eval.csv"
    pd.DataFrame({"event": [0], "class": [0]}).to_csv(path, index=False)
    with pytest.raises(SystemExit, match=r"eval.csv: columns \['ari', 'class_name'\] are missing"):
        paired_difference.read_frame(path, "ari")
