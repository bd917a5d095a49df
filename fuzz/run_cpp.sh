#!/usr/bin/env bash
# Runs one libFuzzer target for SECONDS (default 120) at low priority, on a scratch copy of its
# saved corpus (fuzz/corpus/<target>/); crashes land in fuzz/build/crashes/<target>/.
# New inputs are merged back into the saved corpus only with MERGE=1 (keeps it small).
#   fuzz/run_cpp.sh fuzz_tokenizer 180
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1
seconds=${2:-120}
saved=fuzz/corpus/$target
work=fuzz/build/corpus/$target
crashes=fuzz/build/crashes/$target
mkdir -p "$saved" "$work" "$crashes"
cp -n "$saved"/* "$work"/ 2>/dev/null || true
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
nice -n 10 "fuzz/build/$target" "$work" -max_total_time="$seconds" -max_len=4096 -timeout=10 \
  -rss_limit_mb=2048 -artifact_prefix="$crashes/" -print_final_stats=1
if [[ "${MERGE:-0}" == 1 ]]; then
  "fuzz/build/$target" -merge=1 "$saved" "$work" -max_len=4096
fi
