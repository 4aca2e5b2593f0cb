#!/bin/sh
# Builds the CPU backend and runs the matmul benchmark: sh cpu/bench.sh [n_threads]
set -eu
lib=$(sh "$(dirname "$0")/build.sh")
libdir=$(dirname "$lib")
cd "$(dirname "$0")/.."
gcc -std=c11 -O3 -march=native -fopenmp -Wall -Wextra -Iffi -o build/bench_matmul \
  cpu/bench_matmul.c -L"$libdir" -lrabbitllm_cpu -Wl,-rpath,"$libdir"
exec build/bench_matmul "$@"
