#!/bin/sh
# Without a GPU: runs cuda/compare_ops.c against the CUDA backend's own sources built for the CPU
# emulation (cuda/emu), under AddressSanitizer and UBSan. Checks the kernels' indexing, barriers
# and results against the CPU backend; says nothing about real-GPU timing, memory model or the
# driver (sh cuda/test.sh on a GPU does). Takes a few minutes: every GPU thread is a fiber.
set -eu
cd "$(dirname "$0")/../.."
cpu=$(sh cpu/build.sh)
emu=$(sh cuda/emu/build.sh)
gcc -std=c11 -O1 -g -fsanitize=address,undefined -Wall -Wextra -Iffi -o build/compare_ops_emu \
  cuda/compare_ops.c -ldl -lm
# Fiber switches are annotated for ASan; its generic warning about swapcontext is expected.
ASAN_OPTIONS=${ASAN_OPTIONS:-allocator_may_return_null=1:detect_leaks=0} \
  exec build/compare_ops_emu "$cpu" "$emu"
