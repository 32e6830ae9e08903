"""Data-layer throughput: events/s for reading the real ROOT sample, writing/reading PILArNet-M
HDF5, and generating synthetic events at spatial_size 512. Run: `.venv/bin/python benchmarks/bench_data.py`."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from spice.data import EventDataset, read_larcv_root, read_pilarnet_m, write_pilarnet_m

REAL = Path(os.environ.get("SPICE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data") / "small_192px.root"


def rate(fn, n_events: int, repeat: int = 3) -> float:
    """Best events/s over `repeat` runs of fn() (which handles n_events events)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n_events / best


def main():
    print(f"machine: {os.cpu_count()} CPU cores")
    events = []
    if REAL.is_file():
        events = read_larcv_root(REAL)
        whole = rate(lambda: read_larcv_root(REAL), len(events))
        ds = EventDataset(REAL)
        lazy = rate(lambda: [ds[i] for i in range(len(ds))], len(ds))
        print(f"larcv ROOT read, whole file       : {whole:8.1f} events/s ({len(events)} events, 192^3)")
        print(f"larcv ROOT read, lazy per entry   : {lazy:8.1f} events/s (ratio lazy/whole {lazy / whole:.2f})")
    else:
        print(f"larcv ROOT read: skipped ({REAL} absent)")
    try:
        from spice.data import synthetic
    except ImportError:
        synthetic = None
    if synthetic is not None:
        n = 8
        t = time.perf_counter()
        synth = synthetic.generate(n, spatial_size=512, seed=0)
        dt = time.perf_counter() - t
        print(f"synthetic generate, size 512      : {n / dt:8.1f} events/s ({n} events, "
              f"{sum(map(len, synth)) / n:.0f} voxels/event)")
        events = synth
    if events:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "bench.h5"
            n = len(events)
            w = rate(lambda: write_pilarnet_m(events, path), n)
            r = rate(lambda: read_pilarnet_m(path), n)
            ds = EventDataset(path)
            lazy = rate(lambda: [ds[i] for i in range(len(ds))], n)
            print(f"PILArNet-M HDF5 write (v2)        : {w:8.1f} events/s ({n} events, {path.stat().st_size / 1e6:.1f} MB)")
            print(f"PILArNet-M HDF5 read, whole file  : {r:8.1f} events/s")
            print(f"PILArNet-M HDF5 read, lazy/entry  : {lazy:8.1f} events/s (ratio lazy/whole {lazy / r:.2f})")


if __name__ == "__main__":
    main()
