#!/usr/bin/env bash
# Build MinkowskiEngine 0.5.4 once into a wheel cache and install it into the given Python environment.
#
# usage: tools/build_minkowski.sh [PYTHON]          (default: python; `make minkowski` passes $(PY))
# env:   SPICE_WHEEL_CACHE   wheel cache folder     (default: $HOME/.cache/spice/wheels)
#        ME_CPU_ONLY=0|1     CUDA or CPU-only build (default: CUDA when torch has CUDA and nvcc runs)
#        MAX_JOBS            parallel compile jobs  (default: 2)
#        TORCH_CUDA_ARCH_LIST  CUDA builds only     (default: "7.0 7.5 8.0 8.6 8.9 9.0", V100 … H100/H200)
#
# Needs a C++17 compiler and OpenBLAS (Debian/Ubuntu: apt-get install libopenblas-dev); ninja speeds it up.
# The sdist (sha256-checked) is patched before building, so the cached wheel is already fixed:
#   * `from collections import Sequence` -> collections.abc (five files; removed from collections in 3.10);
#   * CUDA builds: explicit thrust/<cstdint> includes, which CUDA 12's thrust no longer pulls in.
set -euo pipefail

PY=$("${1:-python}" -c "import sys; print(sys.executable)")   # absolute, keeps the virtualenv
ME_VERSION=0.5.4
ME_SHA256=b1879c00d0b0b1d30ba622cce239886a7e3c78ee9da1064cdfe2f64c2ab15f94   # PyPI sdist
CACHE="${SPICE_WHEEL_CACHE:-$HOME/.cache/spice/wheels}"
export MAX_JOBS="${MAX_JOBS:-2}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-7.0 7.5 8.0 8.6 8.9 9.0}"
if [[ -z "${ME_CPU_ONLY:-}" ]]; then
    if "$PY" -c "import sys, torch; sys.exit(torch.version.cuda is None)" && nvcc --version >/dev/null 2>&1
    then ME_CPU_ONLY=0; else ME_CPU_ONLY=1; fi
fi

TAG=$("$PY" -c "
import sys, torch
v = torch.__version__.split('+')[0]
dev = 'cpu' if $ME_CPU_ONLY else 'cu' + str(torch.version.cuda).replace('.', '')
print(f'torch{v}-{dev}-cp{sys.version_info[0]}{sys.version_info[1]}')")
DEST="$CACHE/minkowskiengine-$ME_VERSION-$TAG"

download_sdist() {  # $1: folder. pip first; pip cannot prepare ME's metadata on Python >= 3.12
    # (its setup.py imports numpy.distutils), so fall back to PyPI's JSON API. Both are sha256-checked.
    SETUPTOOLS_USE_DISTUTILS=stdlib "$PY" -m pip download "MinkowskiEngine==$ME_VERSION" --no-deps \
        --no-binary :all: --no-build-isolation -d "$1" || "$PY" - "$1" "$ME_VERSION" <<'EOF'
import json, sys, urllib.request
folder, version = sys.argv[1], sys.argv[2]
meta = json.load(urllib.request.urlopen(f"https://pypi.org/pypi/MinkowskiEngine/{version}/json"))
sdist = next(u for u in meta["urls"] if u["packagetype"] == "sdist")
urllib.request.urlretrieve(sdist["url"], f"{folder}/{sdist['filename']}")
EOF
    echo "$ME_SHA256  $1/MinkowskiEngine-$ME_VERSION.tar.gz" | sha256sum -c -
}

patch_sources() {  # $1: unpacked sdist
    local src=$1
    sed -i -e 's/^from collections import Sequence, namedtuple$/from collections import namedtuple\nfrom collections.abc import Sequence/' \
           -e 's/^from collections import Sequence$/from collections.abc import Sequence/' \
        "$src"/MinkowskiEngine/*.py "$src"/MinkowskiEngine/utils/*.py
    if grep -rn "^from collections import .*Sequence" "$src/MinkowskiEngine"; then
        echo "build_minkowski: the collections.abc patch did not apply" >&2; exit 1
    fi
    if [[ "$ME_CPU_ONLY" == 0 ]]; then
        local compat='#include <cstdint>\n#include <thrust/execution_policy.h>\n#include <thrust/functional.h>\n#include <thrust/sort.h>\n#include <thrust/unique.h>\n#include <thrust/remove.h>\n#include <thrust/reduce.h>\n#include <thrust/sequence.h>\n#include <thrust/count.h>\n#include <thrust/copy.h>\n#include <thrust/fill.h>\n#include <thrust/transform.h>\n'
        for f in "$src"/src/*.cu "$src"/src/*.cuh "$src"/src/3rdparty/concurrent_unordered_map.cuh; do
            sed -i "1i $compat" "$f"
        done
    fi
}

if ! ls "$DEST"/[Mm]inkowski[Ee]ngine-*.whl >/dev/null 2>&1; then
    if [[ -z "$(ldconfig -p 2>/dev/null | grep libopenblas)" && ! -e "${CONDA_PREFIX:-/none}/lib/libopenblas.so" ]]; then
        echo "build_minkowski: OpenBLAS not found; install it first (apt-get install libopenblas-dev)" >&2; exit 1
    fi
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    start=$(date +%s)
    echo "building MinkowskiEngine $ME_VERSION for $TAG (MAX_JOBS=$MAX_JOBS) in $WORK"
    download_sdist "$WORK"
    tar xzf "$WORK/MinkowskiEngine-$ME_VERSION.tar.gz" -C "$WORK"
    patch_sources "$WORK/MinkowskiEngine-$ME_VERSION"
    options=(--config-settings="--global-option=--blas=openblas")
    if [[ "$ME_CPU_ONLY" == 0 ]]; then options+=(--config-settings="--global-option=--force_cuda")
    else options+=(--config-settings="--global-option=--cpu_only"); fi
    if [[ -n "${CONDA_PREFIX:-}" ]]; then   # conda's OpenBLAS headers (its lib dir is on conda's LDFLAGS)
        options+=(--config-settings="--global-option=--blas_include_dirs=$CONDA_PREFIX/include")
    fi
    (cd "$WORK/MinkowskiEngine-$ME_VERSION" && "$PY" -m pip wheel . --no-deps --no-build-isolation \
        -w "$WORK/wheel" "${options[@]}")
    mkdir -p "$DEST"
    mv "$WORK"/wheel/[Mm]inkowski[Ee]ngine-*.whl "$DEST/"
    echo "built $(basename "$DEST"/[Mm]inkowski[Ee]ngine-*.whl) in $(( $(date +%s) - start )) s -> $DEST"
fi

"$PY" -m pip install --no-deps --force-reinstall "$DEST"/[Mm]inkowski[Ee]ngine-*.whl
(cd / && "$PY" -c "import MinkowskiEngine as ME; print('MinkowskiEngine', ME.__version__, 'imports OK')")
