#!/bin/sh
# On a machine with an NVIDIA GPU (sm_80+): builds the CPU and CUDA backends, then builds and runs
# cuda/compare_ops.c, which runs every op on both with the same inputs and compares them.
# Prints one line per failing check, then "N passed, N failed"; exits non-zero on any failure.
set -eu
cd "$(dirname "$0")/.."
cpu=$(sh cpu/build.sh)
cuda=$(sh cuda/build.sh)
gcc -std=c11 -O2 -Wall -Wextra -Iffi -o build/compare_ops cuda/compare_ops.c -ldl -lm
exec build/compare_ops "$cpu" "$cuda"
