#!/usr/bin/env bash
# Build MinkowskiEngine 0.5.4 once into a wheel cache and install it into the given Python env.
#
# usage: tools/build_minkowski.sh [PYTHON]        (default: python)
# env:   SPICE_WHEEL_CACHE  wheel cache dir      (default: $HOME/.cache/spice/wheels)
#        ME_CPU_ONLY=1      CPU-only build (default: 1 unless torch has CUDA and nvcc works)
#        MAX_JOBS           parallel compile jobs (default: 2)
#        TORCH_CUDA_ARCH_LIST  for CUDA builds   (default: "7.0 7.5 8.0 8.6 8.9 9.0")
#
# Needs a C++17 compiler, ninja (optional) and a BLAS (Debian: apt-get install libopenblas-dev).
# Source fixes applied to the sdist before building, so the cached wheel is already fixed:
#   * `from collections import Sequence` -> `collections.abc` (removed from collections in Python 3.10);
#   * CUDA 12 only: missing thrust/<cstdint> includes (thrust no longer pulls them in transitively).
set -euo pipefail

PY="${1:-python}"
PY=$("$PY" -c "import sys; print(sys.executable)")  # absolute, venv-preserving
ME_VERSION=0.5.4
CACHE="${SPICE_WHEEL_CACHE:-$HOME/.cache/spice/wheels}"
export MAX_JOBS="${MAX_JOBS:-2}"
# numpy.distutils (imported by ME's setup.py) needs the stdlib distutils, not setuptools' copy.
export SETUPTOOLS_USE_DISTUTILS=stdlib
if [[ -z "${ME_CPU_ONLY:-}" ]]; then
    # CUDA build only when torch is a CUDA build and a working nvcc is present.
    if "$PY" -c "import torch, sys; sys.exit(torch.version.cuda is None)" && nvcc --version >/dev/null 2>&1
    then ME_CPU_ONLY=0; else ME_CPU_ONLY=1; fi
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-7.0 7.5 8.0 8.6 8.9 9.0}"

TAG=$("$PY" -c "import torch, sys; v=torch.__version__.split('+')[0]; c='cpu' if $ME_CPU_ONLY else 'cu'+(torch.version.cuda or 'none').replace('.',''); print(f'torch{v}-{c}-py{sys.version_info[0]}{sys.version_info[1]}')")
DEST="$CACHE/minkowski-$ME_VERSION-$TAG"
mkdir -p "$DEST"

if ! ls "$DEST"/MinkowskiEngine-*.whl >/dev/null 2>&1; then
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    echo "building MinkowskiEngine $ME_VERSION ($TAG, MAX_JOBS=$MAX_JOBS) in $WORK"
    start=$(date +%s)
    "$PY" -m pip download "MinkowskiEngine==$ME_VERSION" --no-deps --no-binary :all: \
        --no-build-isolation -d "$WORK"
    tar xzf "$WORK/MinkowskiEngine-$ME_VERSION.tar.gz" -C "$WORK"
    SRC="$WORK/MinkowskiEngine-$ME_VERSION"
    sed -i 's/^from collections import Sequence, namedtuple$/from collections import namedtuple\nfrom collections.abc import Sequence/; s/^from collections import Sequence$/from collections.abc import Sequence/' \
        "$SRC"/MinkowskiEngine/*.py "$SRC"/MinkowskiEngine/utils/*.py
    if grep -rn "^from collections import Sequence" "$SRC/MinkowskiEngine"; then
        echo "collections.abc patch failed" >&2; exit 1
    fi
    if [[ "$ME_CPU_ONLY" == 0 ]]; then
        # CUDA >= 12 thrust no longer includes these transitively.
        sed -i '1i #include <thrust/execution_policy.h>\n#include <thrust/unique.h>\n#include <thrust/remove.h>' \
            "$SRC"/src/3rdparty/concurrent_unordered_map.cuh
        sed -i '1i #include <thrust/execution_policy.h>\n#include <thrust/sort.h>\n#include <thrust/reduce.h>\n#include <thrust/functional.h>' \
            "$SRC"/src/convolution_kernel.cuh "$SRC"/src/coordinate_map_gpu.cu "$SRC"/src/spmm.cu
        sed -i '1i #include <cstdint>' "$SRC"/src/coordinate_map_functors.cuh
        FLAGS=(--config-settings="--global-option=--blas=openblas" --config-settings="--global-option=--force_cuda")
    else
        FLAGS=(--config-settings="--global-option=--blas=openblas" --config-settings="--global-option=--cpu_only")
    fi
    (cd "$SRC" && "$PY" -m pip wheel . --no-deps --no-build-isolation -w "$WORK/wheel" "${FLAGS[@]}" -v)
    mv "$WORK"/wheel/MinkowskiEngine-*.whl "$DEST/"
    echo "built $(ls "$DEST") in $(( $(date +%s) - start )) s"
fi

"$PY" -m pip install --no-deps --force-reinstall "$DEST"/MinkowskiEngine-*.whl
(cd / && "$PY" -c "import MinkowskiEngine as ME; print('MinkowskiEngine', ME.__version__, 'OK')")
