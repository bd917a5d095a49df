#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/cpp/ with clang, AddressSanitizer and UBSan into
# fuzz/build/, and writes the GPT-2 vocabulary dump the tokenizer target reads.
#   fuzz/build_cpp.sh                      # build
#   fuzz/run_cpp.sh fuzz_tokenizer 180     # fuzz one target for 180 s (see that script)
# Needs clang with libFuzzer (Debian: apt-get install clang libclang-rt-14-dev libomp-14-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-clang++}
out=fuzz/build
mkdir -p "$out/obj"
flags=(-std=c++17 -O1 -g -fno-omit-frame-pointer -Icsrc
       -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined)

python fuzz/dump_vocab.py tests/data/gpt2-tokenizer "$out/gpt2-vocab.bin"

# the kernels: portable (scalar) build only, as in the extension's scalar path
objs=()
for src in csrc/kernels/*.cpp; do
  o="$out/obj/kernel_$(basename "${src%.cpp}").o"
  "$CXX" "${flags[@]}" -fopenmp -DPYGPT_KERNEL_NS=scalar -c "$src" -o "$o"
  objs+=("$o")
done

"$CXX" "${flags[@]}" -fsanitize=fuzzer fuzz/cpp/fuzz_tokenizer.cpp csrc/tokenizer.cpp csrc/unicode_tables.cpp \
  -o "$out/fuzz_tokenizer" -lpthread
"$CXX" "${flags[@]}" -fsanitize=fuzzer -fopenmp fuzz/cpp/fuzz_model_load.cpp csrc/model.cpp csrc/mapped_file.cpp \
  csrc/cpu_features.cpp csrc/dtype.cpp csrc/threads.cpp "${objs[@]}" -o "$out/fuzz_model_load"
echo "built $out/fuzz_tokenizer $out/fuzz_model_load"
