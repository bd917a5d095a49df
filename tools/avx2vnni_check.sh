#!/usr/bin/env bash
# Tests the avx2vnni kernel path (AVX2 + AVX-VNNI: Intel's client CPUs since Alder Lake) on
# a CPU that lacks AVX-VNNI but has AVX512-VNNI and VL (Zen 4, Ice Lake, Sapphire Rapids):
# builds the module with -DPYGPT_VNNI256_EVEX=ON, which emits that path's one vpdpbusd in its
# EVEX form (the same operation; every other instruction of the path unchanged), and runs
# the tests that cover every kernel path against the scalar reference, with that build.
# Qemu's x86 emulation has no AVX-VNNI (TCG, up to 10.0), so this is how the path is tested
# here; its speed on this CPU is only a sign of what an Intel core gets.
#
#   tools/avx2vnni_check.sh                           # kernel, parity, sampler, KV cache tests
#   tools/avx2vnni_check.sh tests/test_kernels.py -k q4   # these pytest arguments instead
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
build=${AVX2VNNI_BUILD:-build/avx2vnni-evex}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPYGPT_VNNI256_EVEX=ON \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" >/dev/null
cmake --build "$build" -j2 >/dev/null
pkg=$(mktemp -d)
trap 'rm -rf "$pkg"' EXIT
cp -r pygpt "$pkg/"
rm -f "$pkg"/pygpt/_core*.so
cp "$build"/_core*.so "$pkg/pygpt/"
# outside the repository, so that Python finds the package copy, not ./pygpt
cd "$pkg"
export PYTHONPATH=$pkg
python -c "import pygpt; i = pygpt.system_info(); assert 'avx2vnni' in i['isas'], i; print('paths:', i['isas'])"
if [ $# -eq 0 ]; then
  set -- tests/test_kernels.py tests/test_parity.py tests/test_sampler.py tests/test_kv_cache.py -k avx2vnni
fi
args=()
for a in "$@"; do
  case $a in tests/*) args+=("$repo/$a") ;; *) args+=("$a") ;; esac
done
python -m pytest -q -p no:cacheprovider "${args[@]}"
