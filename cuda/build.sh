#!/bin/sh
# Builds the CUDA backend: cuda/*.cu (except bench_*/test_* programs) -> build/librabbitllm_cuda.so,
# kernels for sm_80 and sm_90 plus compute_90 PTX for newer GPUs; and build/bench_h2d (the pinned
# host→device bound of `deno task bench --device cuda`). Works from any directory; prints the
# library's absolute path (its only line on stdout). The CUDA runtime is linked statically, so the
# library needs only the driver (libcuda.so.1) at run time; a version script exports exactly the
# rl_* entries of ffi/rabbitllm.h. NVCC overrides the compiler (default: nvcc on PATH, else
# /usr/local/cuda/bin/nvcc).
#
# Incremental and parallel: every source compiles to its own object in build/cuda/ (all at once,
# each nvcc with --threads 0 so its targets compile in parallel too), and an output is rebuilt only
# when one of its inputs is newer than it:
#   build/cuda/NAME.o            cuda/NAME.cu, cuda/*.h, ffi/*.h, this script
#   build/cuda/sysfile.o         cpu/sysfile.c (rl_read_sysfile, shared with the CPU backend), same
#   librabbitllm_cuda.so         the objects, cuda/exports.map, the list of sources, this script
#   build/bench_h2d              cuda/bench_h2d.cu, this script
# When everything is up to date it compiles nothing and still prints the path. FORCE=1 rebuilds
# everything (another nvcc, a copied build/). Each output is written to a temporary name and
# renamed, so a failed build never replaces a working one, and is given the time its build
# started: a source edited during a build is newer than the result and compiles again next time.
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
obj=build/cuda
mkdir -p "$obj"
# A removed source changes this list, which then is newer than the library.
list="$obj/sources"
[ "$(cat "$list" 2>/dev/null)" = "$srcs" ] || printf '%s' "$srcs" >"$list"
stamp="$obj/.started.$$"
touch "$stamp"
trap 'rm -f "$stamp" "$obj"/*.tmp.$$ "$out.tmp.$$" build/bench_h2d.tmp.$$' EXIT

# stale TARGET INPUT...: true when FORCE=1, TARGET is missing, or an input is newer than it.
stale() {
  [ "${FORCE:-0}" = 1 ] && return 0
  [ -f "$1" ] || return 0
  t=$1
  shift
  for i in "$@"; do [ "$i" -nt "$t" ] && return 0; done
  return 1
}

# job TARGET COMMAND...: runs COMMAND in the background (it writes TARGET.tmp.$$), output into
# build/cuda/<target's name>.log; on success renames it to TARGET with the build's start time.
pids=
logs=
job() {
  target=$1
  shift
  log="$obj/$(basename "$target" .o).log"
  (
    if "$@" >"$log" 2>&1; then
      mv "$target.tmp.$$" "$target" && touch -r "$stamp" "$target"
    else
      exit 1
    fi
  ) &
  pids="$pids $!"
  logs="$logs $log"
}

common="cuda/build.sh $(echo ffi/*.h cuda/*.h)"
objs=
built=
for f in $srcs; do
  o="$obj/$(basename "$f" .cu).o"
  objs="$objs $o"
  # shellcheck disable=SC2086 # $common is a list of file names without spaces
  if stale "$o" "$f" $common; then
    built="$built $f"
    job "$o" "$nvcc" --threads 0 -O3 -std=c++17 -c \
      -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
      -gencode arch=compute_90,code=compute_90 \
      -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra -Iffi -o "$o.tmp.$$" "$f"
  fi
done
sysfile="$obj/sysfile.o"
# shellcheck disable=SC2086
if stale "$sysfile" cpu/sysfile.c $common; then
  built="$built cpu/sysfile.c"
  job "$sysfile" gcc -std=c11 -O2 -fPIC -fvisibility=hidden -Wall -Wextra -Iffi -c \
    -o "$sysfile.tmp.$$" cpu/sysfile.c
fi
if stale build/bench_h2d cuda/bench_h2d.cu cuda/build.sh; then
  built="$built cuda/bench_h2d.cu"
  job build/bench_h2d "$nvcc" --threads 0 -O2 -o build/bench_h2d.tmp.$$ cuda/bench_h2d.cu
fi
[ -z "$built" ] || echo "cuda/build.sh: compiling$built" >&2

failed=0
for p in $pids; do wait "$p" || failed=1; done
# The compilers' messages (warnings included), one source after another.
for l in $logs; do [ -s "$l" ] && cat "$l" >&2; done
if [ "$failed" -ne 0 ]; then
  echo "cuda/build.sh: compiling failed (messages above; logs in $obj/)" >&2
  exit 1
fi

# -Bsymbolic: calls between the library's own functions never resolve to another library's rl_*.
# shellcheck disable=SC2086 # $objs is a list of file names without spaces
if stale "$out" $objs "$sysfile" cuda/exports.map "$list" cuda/build.sh; then
  if ! "$nvcc" -shared -cudart static -Xlinker --version-script=cuda/exports.map -Xlinker -Bsymbolic \
    -o "$out.tmp.$$" $objs "$sysfile"; then
    echo "cuda/build.sh: linking $out failed" >&2
    exit 1
  fi
  mv "$out.tmp.$$" "$out"
  touch -r "$stamp" "$out"
fi
echo "$(pwd)/$out"
