#!/usr/bin/env bash
# Runs one atheris target (fuzz/fuzz_<name>.py) for SECONDS (default 120) at low priority, on a
# scratch copy of its saved corpus (fuzz/corpus/<name>/); crashes land in fuzz/build/crashes/<name>/.
# MERGE=1 merges new coverage back into the saved corpus (kept small: only inputs adding coverage).
#   fuzz/run_py.sh format 180
#   fuzz/run_py.sh tokenizer 180
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1
seconds=${2:-120}
saved=fuzz/corpus/$name
work=fuzz/build/corpus/$name
crashes=fuzz/build/crashes/$name
mkdir -p "$saved" "$work" "$crashes"
cp -n "$saved"/* "$work"/ 2>/dev/null || true
nice -n 10 python "fuzz/fuzz_$name.py" "$work" -max_total_time="$seconds" -max_len=8192 -timeout=20 \
  -rss_limit_mb=4096 -artifact_prefix="$crashes/" -print_final_stats=1
if [[ "${MERGE:-0}" == 1 ]]; then
  python "fuzz/fuzz_$name.py" -merge=1 "$saved" "$work" -max_len=8192
fi
