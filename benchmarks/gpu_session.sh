#!/usr/bin/env bash
# Issue 7's GPU runs on a bare GPU machine that has Python and PyTorch only (benchmarks/README.md).
#
#   bash benchmarks/gpu_session.sh all [MINUTES]   # gpu_checks.py, then gpu_demo.py for at most MINUTES of training
#   bash benchmarks/gpu_session.sh demo [MINUTES]  # continue gpu_demo.py (rerun until it reports its table)
#
# Installs the wheels carried in .whl/ (if any) into /tmp/site, runs from the checkout, and copies
# benchmarks/results/gpu_* to $OUT when that is set (the device tool brings $OUT back). MINUTES
# (default 5) keeps each call inside a 10-minute command limit; gpu_demo exits 3 until training is done.
# PYTHON (default python3) runs them. SPICE_GPU_ARGS is added to both scripts' arguments
# ("--device cpu --quick" smoke-tests this file on a CPU; tests/test_gpu_scripts.py does).
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}
minutes=${2:-5}
py=${PYTHON:-python3}
read -r -a extra <<<"${SPICE_GPU_ARGS:-}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_session: installing .whl/ failed"; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

rc=0
case "$mode" in
    all) "$py" benchmarks/gpu_checks.py "${extra[@]}" || rc=$? ;;
    demo) ;;
    *) echo "usage: $0 all|demo [MINUTES]"; exit 2 ;;
esac
"$py" benchmarks/gpu_demo.py --stop-after "$minutes" "${extra[@]}"
demo_rc=$?
if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/gpu_* "$OUT"/ 2>/dev/null || true
    cp benchmarks/results/bench_*_cuda.* "$OUT"/ 2>/dev/null || true
    cp build/gpu_demo/plan.json build/gpu_demo/train/losses.csv "$OUT"/ 2>/dev/null || true
fi
echo "gpu_session: gpu_checks exit $rc, gpu_demo exit $demo_rc (3: training continues on the next call)"
[ "$rc" -eq 0 ] && { [ "$demo_rc" -eq 0 ] || [ "$demo_rc" -eq 3 ]; }
