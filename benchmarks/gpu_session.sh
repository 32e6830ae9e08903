#!/usr/bin/env bash
# Issue 7's GPU runs on a bare GPU machine that has Python and PyTorch only (benchmarks/README.md).
#
#   bash benchmarks/gpu_session.sh all [MINUTES]   # gpu_checks.py, then gpu_demo.py for at most MINUTES of training
#   bash benchmarks/gpu_session.sh demo [MINUTES]  # continue gpu_demo.py (rerun until it reports its table)
#   bash benchmarks/gpu_session.sh lease [SECONDS] # one call: gpu_checks.py, then gpu_train.py on
#                                                   # configs/reference_gpu.yaml in the time left of SECONDS
#                                                   # (default 530); $OUT gets session results.tar.gz and run/
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
    lease)  # a lent machine's whole budget in one call: the checks first, bounded, then training to the end
        end=$(( $(date +%s) + ${2:-530} ))
        [ -d .gpu_carry/landed ] && export SPICE_LANDED_DIR="$PWD/.gpu_carry/landed"  # the pre-issue-12 backend
        timeout "${CHECKS_SECONDS:-240}" "$py" benchmarks/gpu_checks.py --tests-timeout 100 "${extra[@]}" || rc=$?
        if [ -z "${SPICE_GPU_ARGS:-}" ]; then  # the loss against its loop form (bench_loss.py), when carried
            [ -f .gpu_carry/losses_previous.py ] && export SPICE_LOSS_PREVIOUS="$PWD/.gpu_carry/losses_previous.py"
            timeout 90 "$py" benchmarks/bench_loss.py --device cuda || true
        fi
        left=$(( end - $(date +%s) - ${TRAIN_OVERHEAD_SECONDS:-75} ))  # probe, start-up, export
        minutes=$("$py" -c "print(max(0.25, $left / 60))")
        run_dir="${OUT:-build/gpu_train}/run"
        train_args=(--config "${TRAIN_CONFIG:-configs/reference_gpu.yaml}" --minutes "$minutes" --export "$run_dir")
        [ -n "${SPICE_GPU_ARGS:-}" ] && train_args+=(--quick --work "$(mktemp -d)/work")
        "$py" benchmarks/gpu_train.py "${train_args[@]}"
        train_rc=$?
        if [ -n "${OUT:-}" ]; then
            tar -czf "$OUT/results.tar.gz" benchmarks/results/gpu_* benchmarks/results/bench_*_cuda.* \
                build/gpu_train/probe/losses.csv 2>/dev/null
        fi
        echo "gpu_session: gpu_checks exit $rc, gpu_train exit $train_rc"
        [ "$rc" -eq 0 ] && [ "$train_rc" -eq 0 ]
        exit ;;
    *) echo "usage: $0 all|demo [MINUTES] | lease [SECONDS]"; exit 2 ;;
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
