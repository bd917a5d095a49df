#!/usr/bin/env bash
# Developer build: compiles pygpt/_core in place so `PYTHONPATH=. pytest` tests the
# working tree. Usage: tools/dev_build.sh [build-dir] [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/dev}; shift || true
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" "$@" >/dev/null
cmake --build "$build" -j2
so=$(ls "$build"/_core*.so)
# copy then rename, so a concurrently running test never sees a half-written module
cp "$so" "pygpt/.$(basename "$so").tmp" && mv "pygpt/.$(basename "$so").tmp" "pygpt/$(basename "$so")"
echo "built pygpt/$(basename "$so")"
