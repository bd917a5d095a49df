#!/usr/bin/env bash
# Builds pygpt._core with AddressSanitizer + UndefinedBehaviorSanitizer (-DPYGPT_SANITIZE=ON)
# into its own build folder and runs the tests that exercise the C++ core under it, with the
# sanitized module staged in a private copy of the package (the working tree's pygpt/_core*.so
# is not touched).
#
#   tools/sanitize.sh                       # build + the default C++-touching test subset
#   tools/sanitize.sh tests/test_hostile.py # build + these tests (any pytest arguments)
#   FUZZ_REPLAY=1 tools/sanitize.sh         # also replay the saved fuzz corpora (fuzz/corpus/)
#   FUZZ_SECONDS=120 tools/sanitize.sh      # ... and fuzz each atheris target that long under ASan
#
# Python itself is not instrumented, so libasan is preloaded; leak detection is off (CPython
# and torch keep memory alive until exit by design); any ASan or UBSan report aborts the run.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SANITIZE_BUILD:-build/sanitize}
stage=$build/stage

# SANITIZE_CMAKE_ARGS: more cmake options, e.g. -DPYGPT_VNNI256_EVEX=ON (with its own
# SANITIZE_BUILD) to run the avx2vnni path under the sanitizers on a CPU without AVX-VNNI
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPYGPT_SANITIZE=ON ${SANITIZE_CMAKE_ARGS:-} \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" >/dev/null
nice cmake --build "$build" -j"${JOBS:-2}"

rm -rf "$stage" && mkdir -p "$stage/pygpt"
cp pygpt/*.py "$stage/pygpt/"
ln -s "$PWD/pygpt/default_model" "$stage/pygpt/default_model"  # the shipped model, for the tests that load it
cp "$build"/_core*.so "$stage/pygpt/"

# libstdc++ too: python is not linked against it, and ASan's __cxa_throw interceptor must find
# it at start-up ("CHECK failed: real___cxa_throw != 0" on the first C++ exception otherwise)
libasan=$(${CXX:-c++} -print-file-name=libasan.so)
libstdcxx=$(${CXX:-c++} -print-file-name=libstdc++.so)
export LD_PRELOAD="$libasan:$libstdcxx${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=1:halt_on_error=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:${UBSAN_OPTIONS:-}"
export PYTHONPATH="$PWD/$stage"
export PYGPT_SANITIZED=1  # lets timing- or RSS-based tests know they run instrumented

# -P: do not put the working directory (with the unsanitized pygpt/) first on sys.path
python -P -c 'import pygpt, sys; f = pygpt._core.__file__; print("sanitized module:", f); sys.exit("stage" not in f)'

if [[ $# -eq 0 ]]; then
  set -- tests/test_errors.py tests/test_hostile.py tests/test_limits.py tests/test_concurrency.py \
         tests/test_fuzz_regressions.py
  for t in tests/test_tokenizer*.py tests/test_sampler*.py tests/test_generat*.py tests/test_kernel*.py tests/test_grammar.py; do
    [[ -e "$t" ]] && set -- "$@" "$t"
  done
fi
python -P -m pytest -q -p no:cacheprovider "$@"

if [[ "${FUZZ_REPLAY:-0}" == 1 || -n "${FUZZ_SECONDS:-}" ]]; then
  for target in format tokenizer; do
    echo "replaying fuzz/corpus/$target"
    python -P "fuzz/fuzz_$target.py" -runs=0 "fuzz/corpus/$target"
    if [[ -n "${FUZZ_SECONDS:-}" ]]; then  # and fuzz the sanitized build for that long
      work=$build/fuzz-corpus/$target
      mkdir -p "$work" && cp -n "fuzz/corpus/$target"/* "$work"/
      nice python -P "fuzz/fuzz_$target.py" "$work" -max_total_time="$FUZZ_SECONDS" -max_len=8192 \
        -rss_limit_mb=8192 -print_final_stats=1
    fi
  done
fi
echo "sanitizers: clean"
