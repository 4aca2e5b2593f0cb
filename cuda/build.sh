#!/bin/sh
# Builds the CUDA backend: cuda/*.cu (except bench_*/test_* programs) -> build/librabbitllm_cuda.so,
# kernels for sm_80 and sm_90 plus compute_90 PTX for newer GPUs. Works from any directory; prints the library's absolute
# path. The CUDA runtime is linked statically, so the library needs only the driver
# (libcuda.so.1) at run time; a version script exports exactly the rl_* entries of
# ffi/rabbitllm.h. Compiles to a temporary name and renames it, so a failed build never replaces
# a working library. NVCC overrides the compiler (default: nvcc on PATH, else
# /usr/local/cuda/bin/nvcc).
set -eu
cd "$(dirname "$0")/.."

nvcc=${NVCC:-}
if [ -z "$nvcc" ]; then
  if command -v nvcc >/dev/null 2>&1; then nvcc=nvcc
  elif [ -x /usr/local/cuda/bin/nvcc ]; then nvcc=/usr/local/cuda/bin/nvcc
  else
    echo "cuda/build.sh: nvcc not found (install the CUDA toolkit or set NVCC)" >&2
    exit 1
  fi
fi

# The library's sources: every cuda/*.cu except standalone programs (bench_*, test_*).
srcs=
for f in cuda/*.cu; do
  case "$f" in
  cuda/bench_* | cuda/test_*) ;;
  *) srcs="$srcs $f" ;;
  esac
done

out=build/librabbitllm_cuda.so
tmp="$out.tmp.$$"
mkdir -p build
# The host-side file reader both backends share (rl_read_sysfile), compiled as C.
sysfile="build/sysfile.$$.o"
trap 'rm -f "$tmp" "$sysfile"' EXIT
gcc -std=c11 -O2 -fPIC -fvisibility=hidden -Wall -Wextra -Iffi -c -o "$sysfile" cpu/sysfile.c
# -Bsymbolic: calls between the library's own functions never resolve to another library's rl_*.
# shellcheck disable=SC2086 # $srcs is a list of file names without spaces
if ! "$nvcc" -O3 -std=c++17 -shared -cudart static \
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
  -gencode arch=compute_90,code=compute_90 \
  -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra \
  -Xlinker --version-script=cuda/exports.map -Xlinker -Bsymbolic \
  -Iffi -o "$tmp" $srcs "$sysfile"; then
  echo "cuda/build.sh: compiling $out failed" >&2
  exit 1
fi
mv "$tmp" "$out"
trap - EXIT
echo "$(pwd)/$out"
