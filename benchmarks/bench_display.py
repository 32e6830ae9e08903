"""Size and opening time of the interactive event page for a large (100k-voxel) event.

Writes the page, opens it from disk in headless Chromium (tests/browser.py, networking blocked) a
few times and prints: voxels, page size (MB, of which plotly.js), figure+page build time, and the
time from navigation until Plotly.newPlot resolved (window.spiceRendered) and until the first frame
with the WebGL scenes was painted (window.spicePainted). Headless Chromium renders WebGL in software
(SwiftShader), so on a desktop with a GPU opening is faster than measured here.
Run: .venv/bin/python benchmarks/bench_display.py [--voxels 100000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import Browser, chromium_path  # noqa: E402
from test_display import make_large_event  # noqa: E402

from spice.display import event_figure, write_html  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxels", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    event, outputs, pred = make_large_event(args.voxels)
    plotly_js = (Path(__import__("plotly").__file__).parent / "package_data" / "plotly.min.js").stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        for label, out, p in (("real space only", None, None), ("real + embedding, predictions", outputs, pred)):
            t0 = time.perf_counter()
            path = write_html(event_figure(event, out, p), Path(tmp) / "large.html")
            build = time.perf_counter() - t0
            mb = path.stat().st_size / 1e6
            print(f"{label}: {len(event)} voxels, page {mb:.1f} MB ({plotly_js / 1e6:.1f} MB plotly.js, "
                  f"{(path.stat().st_size - plotly_js) / len(event):.0f} bytes/voxel), built in {build:.2f} s")
            if chromium_path() is None:
                print("  chromium not installed: no opening time")
                continue
            for r in range(args.repeats):
                with Browser() as browser:
                    wall = browser.open(path, timeout=300)
                    rendered = browser.evaluate("window.spiceRendered") / 1000
                    painted = browser.evaluate("window.spicePainted") / 1000
                    errors = len(browser.errors)
                print(f"  open {r + 1}: Plotly.newPlot done {rendered:.1f} s, first frame painted {painted:.1f} s "
                      f"after navigation start ({wall:.1f} s wall), {errors} JS errors")


if __name__ == "__main__":
    main()
