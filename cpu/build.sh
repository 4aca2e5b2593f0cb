#!/bin/sh
# Builds the CPU backend: every cpu/*.c except tests and benchmarks -> build/librabbitllm_cpu.so,
# and build/bench_io (the memory/disk bounds of `deno task bench`).
# Works from any directory; prints the library's absolute path. Compiles to a temporary name and
# renames it, so a failed build never replaces a working library. -z nodelete: Deno unloads
# libraries at exit while OpenMP worker threads still exist; keeping the library (and so libgomp)
# mapped avoids a crash at exit.
set -eu
cd "$(dirname "$0")/.."

srcs=
for f in cpu/*.c; do
  case "$f" in
  cpu/test_* | cpu/bench_*) ;;
  *) srcs="$srcs $f" ;;
  esac
done

out=build/librabbitllm_cpu.so
tmp="$out.tmp.$$"
mkdir -p build
trap 'rm -f "$tmp"' EXIT
# shellcheck disable=SC2086 # $srcs is a list of file names without spaces
if ! gcc -std=c11 -O3 -march=native -fopenmp -fPIC -shared -fvisibility=hidden -Wall -Wextra \
  -Wl,-z,nodelete -Iffi -o "$tmp" $srcs -lm; then
  echo "cpu/build.sh: compiling $out failed" >&2
  exit 1
fi
mv "$tmp" "$out"
trap - EXIT
# The bench's bounds tool (memory and disk bandwidth), not part of the library.
gcc -std=c11 -O3 -march=native -fopenmp -pthread -Wall -Wextra -o build/bench_io cpu/bench_io.c
echo "$(pwd)/$out"
