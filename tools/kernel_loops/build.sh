#!/usr/bin/env bash
# Builds the kernel loops (C++ loops over single kernels, AVX-512 path, -O3 as the package is
# built: at -O2 GCC leaves panel_tile's token loops rolled) into build/kernel_loops/, or the
# folder given: tools/kernel_loops/build.sh [out-dir]
set -euo pipefail
out=${1:-$(dirname "$0")/../../build/kernel_loops}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
flags=(-O3 -DNDEBUG -std=c++17 -Icsrc -DPYGPT_KERNEL_NS=avx512 -mavx2 -mfma -mf16c -mavx512f -mavx512bw
       -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -fopenmp)
${CXX:-g++} "${flags[@]}" tools/kernel_loops/q4_tiles.cpp csrc/kernels/generic.cpp csrc/dtype.cpp csrc/kernels/linear.cpp \
  csrc/kernels/linear_float.cpp -o "$out/q4_tiles"
${CXX:-g++} "${flags[@]}" tools/kernel_loops/q8_prompt.cpp csrc/kernels/generic.cpp csrc/dtype.cpp csrc/kernels/linear.cpp \
  csrc/kernels/linear_float.cpp -o "$out/q8_prompt"
${CXX:-g++} "${flags[@]}" tools/kernel_loops/ports.cpp -o "$out/ports"
${CXX:-g++} "${flags[@]}" tools/kernel_loops/attention_int8.cpp csrc/kernels/generic.cpp csrc/dtype.cpp -o "$out/attention_int8"
echo "built $out/q4_tiles $out/q8_prompt $out/attention_int8 $out/ports"
