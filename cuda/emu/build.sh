#!/bin/sh
# Builds the CUDA backend's sources for the CPU emulation (cuda/emu/emu.h), with AddressSanitizer
# and UBSan: build/librabbitllm_cuda_emu.so. Test tooling for machines without a GPU; the real
# library is cuda/build.sh. Then: sh cuda/emu/test.sh runs cuda/compare_ops.c against it.
# SANITIZE= (empty) builds without sanitizers. EMU_DEFINES adds -D flags and EMU_LIB names the
# output (test.sh builds a variant without the compute -> transfer ordering this way).
set -eu
cd "$(dirname "$0")/../.."
sanitize=${SANITIZE--fsanitize=address,undefined}
mkdir -p build/emu
srcs=
for f in cuda/*.cu; do
  case "$f" in
  cuda/bench_* | cuda/test_*) ;;
  *)
    out="build/emu/$(basename "$f" .cu).cc"
    python3 cuda/emu/prep.py "$f" "$out"
    srcs="$srcs $out"
    ;;
  esac
done
lib=${EMU_LIB:-build/librabbitllm_cuda_emu.so}
trap 'rm -f "$lib.tmp" "$lib.sysfile.o"' EXIT
defines=${EMU_DEFINES:-}
# The host-side file reader both backends share (rl_read_sysfile), compiled as C (as cuda/build.sh
# does), so the emulated library exports every entry and Deno can load it (RABBITLLM_CUDA_LIB).
# shellcheck disable=SC2086 # $sanitize is a list of flags without spaces
gcc -std=c11 -O1 -g $sanitize -fPIC -fvisibility=hidden -Wall -Wextra -Iffi -c -o "$lib.sysfile.o" cpu/sysfile.c
# shellcheck disable=SC2086 # $srcs, $sanitize and $defines are lists without spaces in their items
g++ -std=c++17 -O1 -g -fno-omit-frame-pointer $sanitize $defines -fPIC -shared -fvisibility=hidden \
  -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -D__CUDACC__ -Icuda/emu/include -Icuda -Iffi \
  -o "$lib.tmp" $srcs "$lib.sysfile.o" cuda/emu/emu.cc -lpthread
mv "$lib.tmp" "$lib"
echo "$(pwd)/$lib"
