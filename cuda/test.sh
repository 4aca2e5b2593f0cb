#!/bin/sh
# On a machine with an NVIDIA GPU (sm_80+): builds the CPU and CUDA backends, then builds and runs
# cuda/compare_ops.c, which runs every op on both with the same inputs and compares them.
# Prints one line per failing check, then "N passed, N failed"; exits non-zero on any failure.
#
# Each thing is built once: cpu/build.sh always (it compiles for this machine's CPU), cuda/build.sh
# only what changed, build/compare_ops only when cuda/compare_ops.c or a header in ffi/ changed.
#   RABBITLLM_LIB, RABBITLLM_CUDA_LIB   use these libraries instead of building them (the same
#                                       variables the engine reads)
#   COMPARE_ONLY=matmul,attention       only the named groups (their names: cuda/compare_ops.c)
#   COMPARE_RUNNER="compute-sanitizer --tool memcheck"   runs compare_ops under this command
set -eu
cd "$(dirname "$0")/.."
cpu=${RABBITLLM_LIB:-}
[ -n "$cpu" ] || cpu=$(sh cpu/build.sh)
cuda=${RABBITLLM_CUDA_LIB:-}
[ -n "$cuda" ] || cuda=$(sh cuda/build.sh)
bin=build/compare_ops
stale=0
for f in cuda/compare_ops.c ffi/*.h cuda/test.sh; do [ -f "$bin" ] && [ ! "$f" -nt "$bin" ] || stale=1; done
if [ "$stale" = 1 ]; then
  gcc -std=c11 -O2 -Wall -Wextra -Iffi -o "$bin.tmp.$$" cuda/compare_ops.c -ldl -lm
  mv "$bin.tmp.$$" "$bin"
fi
# shellcheck disable=SC2086 # COMPARE_RUNNER is a command with its arguments
exec ${COMPARE_RUNNER:-} "$bin" "$cpu" "$cuda"
