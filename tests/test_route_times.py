"""benchmarks/route_times.py: the route calls of one forward+backward, timed per convolution shape."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import route_times  # noqa: E402

import spice.sparse.torch_backend as tb  # noqa: E402


def test_rows_name_each_layer_and_the_backend_is_restored(tmp_path):
    before = tb.route_mm, tb.mirrored_grads, tb.route_tmm
    path = route_times.main(["--filters", "4", "--depth", "2", "--size", "32", "--events", "2", "--threads", "1",
                             "--rows", "100", "--out", str(tmp_path)])
    assert (tb.route_mm, tb.mirrored_grads, tb.route_tmm) == before      # the timers are gone afterwards
    assert path == tmp_path / "route_times_F4_D2_32_b2_1t.txt" and not list(tmp_path.glob("*.tmp"))
    lines = path.read_text().splitlines()
    total = float(lines[2].split("forward+backward ")[1].split(" s")[0])
    rows = [line.split(" | ") for line in lines[4:]]
    calls = {r[0] for r in rows}
    # a submanifold layer's backward is one mirrored call; the 2^3 down/up layers use route_mm and route_tmm
    assert {"forward / input grad", "submanifold backward", "weight grad"} <= calls
    assert {r[5] for r in rows if r[0] == "submanifold backward"} >= {"4"}      # the stem's width, F = 4
    assert 0 < sum(float(r[8]) for r in rows) <= total
