#!/usr/bin/env bash
# Cross-builds pygpt._core for aarch64 (the scalar, neon and neondot kernel paths) and runs
# tests on an arm64 Debian Python under qemu-user, so that all three are checked on a machine
# that has no ARM CPU (the kernel tests run every path against the scalar reference). Nothing is
# installed into the host's Python: the arm64 Python, numpy and pytest are Debian packages
# unpacked into a folder (debootstrap --foreign), safetensors is PyPI's aarch64 wheel,
# unzipped.
#
#   tools/aarch64_check.sh                        # kernel and tokenizer tests + a generation
#   tools/aarch64_check.sh tests/test_tokenizer.py -k golden   # these pytest arguments instead
#
# Only tests that need neither torch (the model fixtures convert with it; the sampler's
# tests compare with transformers) nor child Pythons (nothing registers qemu with binfmt)
# can run this way. Needs root for apt-get (g++ for aarch64, qemu-user-static,
# debootstrap), Debian's mirror as apt is set up, and PyPI.
# Emulated: figures of speed mean nothing here.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(realpath -m "${AARCH64_DIR:-build/aarch64}")
root=$work/root
pyv=3.11  # Debian bookworm's Python
cxx=aarch64-linux-gnu-g++

if ! command -v $cxx >/dev/null || ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq g++-aarch64-linux-gnu qemu-user-static debootstrap >/dev/null
fi

if [ ! -x "$root/usr/bin/python$pyv" ]; then
  # the mirror apt already uses (deb822 or one-line sources)
  mirror=$( (cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true) |
           grep -oE '^(URIs:|deb) *https?://[^ ]+' | grep -v security | head -1 | grep -oE 'https?://[^ ]+')
  rm -rf "$root"
  debootstrap --arch=arm64 --foreign --variant=minbase \
    --include=python3,python3-numpy,python3-pytest,libpython$pyv-dev,libgomp1 bookworm "$root" "$mirror" >/dev/null
  # --foreign leaves the second stage (and so the extra packages) undone: unpack them
  for deb in "$root"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$root"; done
  # what update-alternatives would have linked for numpy
  ln -sf blas/libblas.so.3 "$root/usr/lib/aarch64-linux-gnu/libblas.so.3"
  ln -sf lapack/liblapack.so.3 "$root/usr/lib/aarch64-linux-gnu/liblapack.so.3"
fi

site=$work/site
if [ ! -d "$site/safetensors" ]; then
  rm -rf "$work/wheels" "$site" && mkdir -p "$work/wheels" "$site"
  pip download -q safetensors --platform manylinux2014_aarch64 --only-binary=:all: --python-version $pyv \
    --no-deps -d "$work/wheels"
  python -m zipfile -e "$work"/wheels/safetensors-*.whl "$site"
fi

# The module, built by CMakeLists.txt itself with the cross compiler (CMAKE_SYSTEM_PROCESSOR
# aarch64: the scalar, neon and neondot kernels) against the arm64 Python's headers. Debian's
# pyconfig.h includes <aarch64-linux-gnu/python3.11/pyconfig.h>, hence the extra include folder.
build=$work/cmake inc=$work/include
mkdir -p "$inc/aarch64-linux-gnu"
ln -sfn "$root/usr/include/aarch64-linux-gnu/python$pyv" "$inc/aarch64-linux-gnu/python$pyv"
suffix=.cpython-${pyv/./}-aarch64-linux-gnu.so
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_SYSTEM_NAME=Linux \
  -DCMAKE_SYSTEM_PROCESSOR=aarch64 -DCMAKE_CXX_COMPILER=$cxx -DCMAKE_CXX_FLAGS="-I$inc" \
  -DPython_INCLUDE_DIR="$root/usr/include/python$pyv" -DPYTHON_MODULE_EXTENSION="$suffix" \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" >/dev/null
cmake --build "$build" -j2 >/dev/null

# A private copy of the package and the tests (run from there, so that the checkout's x86
# pygpt is not the one imported)
stage=$work/stage
rm -rf "$stage" && mkdir -p "$stage"
cp -r pygpt tests "$stage/"
rm -rf "$stage"/pygpt/_core*.so "$stage"/pygpt/__pycache__ "$stage"/tests/__pycache__
cp "$build/_core$suffix" "$stage/pygpt/"

# -cpu max: an emulated CPU with the dot-product instructions, so the neondot path runs too
run() {
  (cd "$stage" && PYTHONPATH="$stage:$site:$root/usr/lib/python3/dist-packages" \
    qemu-aarch64-static -cpu max -L "$root" "$root/usr/bin/python$pyv" "$@")
}
run -c "
import platform, numpy as np, pygpt
m = pygpt.load()
out = m.generate('ROMEO:', max_new_tokens=16)
print(platform.machine(), pygpt.system_info()['isa'], 'greedy tokens of the shipped model:', out.tokens)
# every path this build carries against the scalar one, on the shipped model's logits
ids = m.tokenizer.encode('ROMEO: What say you?')
ref = pygpt.Model(m.path, isa='scalar').logits(ids)
for isa in pygpt.system_info()['isas'][1:]:
    err = float(np.abs(pygpt.Model(m.path, isa=isa).logits(ids) - ref).max())
    print(isa, 'logits against scalar: max |difference|', err)
    assert err < 1e-3 * float(np.abs(ref).max())
"
if [ $# -eq 0 ]; then
  set -- tests/test_kernels.py tests/test_tokenizer.py
fi
run -m pytest -q -p no:cacheprovider "$@"
