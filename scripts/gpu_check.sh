#!/bin/sh
# `deno task gpu:check` (or `sh scripts/gpu_check.sh` where deno is not installed): every check a
# machine with an NVIDIA GPU can run, in one command, offline, in about 8 minutes. Each step runs
# under its own timeout (and within what is left of GPU_CHECK_BUDGET seconds, 480 by default),
# later steps run after a failing one, and the last lines are a table (step, status, seconds) and
# "N passed, N failed". Exits non-zero when a step failed.
#
#   gpu          nvidia-smi: the GPU, its memory, driver, max SM clock, compute capability
#   cpu_build    sh cpu/build.sh: always compiles (-march=native: a library built on another
#                machine may use instructions this CPU lacks)
#   cuda_build   FORCE=1 sh cuda/build.sh: the library and build/bench_h2d, compiled here (times
#                from another machine's build/ are not trusted)
#   memcheck     compute-sanitizer --tool memcheck on cuda/compare_ops.c's kernel groups
#                (GPU_CHECK_MEMCHECK_GROUPS overrides the list); skipped without compute-sanitizer
#   compare_ops  sh cuda/test.sh: every op, CUDA against the CPU
#   parity       the parity task with --device cuda: every fixture against transformers
#   gpu_tests    the `deno test` of test:gpu (tests/gpu/): the engine on CUDA against the CPU
#   bench        the bench task with --device cuda on a synthetic Llama-3-8B-shaped checkpoint cut
#                to 4 layers (BF16, 3.8 GB written first), batches 1 and 16, 32 new tokens, best
#                of 2 (GPU_CHECK_BENCH_ARGS overrides these options)
#
# Each step's whole output goes to $OUT/<step>.log (OUT defaults to build/gpu_check; eight steps,
# eight files: the most the device tool returns); its last GPU_CHECK_TAIL lines (15) are printed,
# or all of it with GPU_CHECK_SHOW=all. GPU_CHECK_ONLY=parity,gpu_tests runs only the named steps
# (on a machine where the builds are done).
#
# deno: $DENO, else `deno` on PATH, else the bundle that scripts/gpu_bundle.sh leaves in .device/
# (deno.xz and deno_dir.tar.xz, unpacked into $GPU_CHECK_TMP, /tmp/rabbitllm-gpu by default; the
# bundle's DENO_DIR holds every npm package). GPU_CHECK_BUNDLE=1 takes the bundle even where deno
# is installed. Deno's tasks run as their commands in deno.json, so that their dependencies do not
# build again (each build happens once). Offline (GPU_CHECK_OFFLINE=1, the default with the
# bundle) `deno run`/`deno test` get --cached-only, and deno's requests go to a closed local port
# (HTTPS_PROXY): deno 2.9 asks the registry for some packages' metadata on every start even when
# the lockfile and the cache have all it needs, and falls back to the cache when that fails; with
# the proxy that fails at once instead of waiting on a network that is not there.
set -u
cd "$(dirname "$0")/.."
export NO_COLOR=1 DENO_NO_UPDATE_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

out=${OUT:-build/gpu_check}
budget=${GPU_CHECK_BUDGET:-480}
tail_lines=${GPU_CHECK_TAIL:-15}
tmp=${GPU_CHECK_TMP:-/tmp/rabbitllm-gpu}
mkdir -p "$out" "$tmp/bin"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
start=$(now_ms)
say() { printf '%s\n' "$@"; } # one line per argument

# ---- deno -------------------------------------------------------------------------------------

# unxz SRC DST: xz, or Python's lzma where xz is missing.
unxz() {
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$1" >"$2"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
  fi
}
deno_bin=
setup_error=
if [ -n "${DENO:-}" ]; then
  deno_bin=$DENO
elif [ "${GPU_CHECK_BUNDLE:-}" != 1 ] && command -v deno >/dev/null 2>&1; then
  deno_bin=$(command -v deno)
elif [ -f .device/deno.xz ]; then
  if [ ! -x "$tmp/deno" ] || [ .device/deno.xz -nt "$tmp/deno" ]; then
    say "unpacking .device/deno.xz into $tmp/deno ..."
    unxz .device/deno.xz "$tmp/deno.part" && chmod +x "$tmp/deno.part" && mv "$tmp/deno.part" "$tmp/deno"
  fi
  deno_bin=$tmp/deno
  offline=${GPU_CHECK_OFFLINE:-1}
  if [ -f .device/deno_dir.tar.xz ]; then
    if [ ! -d "$tmp/deno_dir" ] || [ .device/deno_dir.tar.xz -nt "$tmp/deno_dir" ]; then
      say "unpacking .device/deno_dir.tar.xz into $tmp/deno_dir ..."
      rm -rf "$tmp/deno_dir" && mkdir -p "$tmp/deno_dir" &&
        unxz .device/deno_dir.tar.xz "$tmp/deno_dir.tar" &&
        tar -xf "$tmp/deno_dir.tar" -C "$tmp/deno_dir" && rm -f "$tmp/deno_dir.tar"
    fi
    export DENO_DIR="$tmp/deno_dir"
  fi
else
  setup_error="no deno: set DENO, put deno on PATH, or run scripts/gpu_bundle.sh (then carry .device/)"
fi
if [ -n "$deno_bin" ]; then
  # The tasks' commands say `deno`: this one.
  ln -sf "$(readlink -f "$deno_bin")" "$tmp/bin/deno"
  PATH="$tmp/bin:$PATH"
  export PATH
  ver=$(deno --version 2>&1) || setup_error="deno does not run: $ver"
  ver=$(printf '%s' "$ver" | head -1)
fi
commit=$(git rev-parse --short HEAD 2>/dev/null) &&
  { git diff --quiet HEAD 2>/dev/null || commit="$commit, modified"; }
say "repository $(pwd) (commit ${commit:-unknown: no .git})"
say "$(uname -srm), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
if [ "${offline:-${GPU_CHECK_OFFLINE:-0}}" = 1 ]; then
  offline=1 cached_only=--cached-only
  export HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 NO_PROXY=localhost,127.0.0.1
else
  offline=0 cached_only=
fi
say "deno: ${deno_bin:-none} (${ver:-?}), DENO_DIR=${DENO_DIR:-default}, offline $offline; logs in $out/"
[ -z "$setup_error" ] || say "setup: $setup_error"

# task NAME [PART]: the command of deno.json's task NAME (of a chain `a && b`, the part starting
# with PART), offline with --cached-only after `deno run`/`deno test`; without its dependencies.
task() {
  python3 - "$1" "${2:-}" "$cached_only" <<'EOF' 2>/dev/null || echo "false # no task $1 in deno.json"
import json, sys
t = json.load(open("deno.json"))["tasks"][sys.argv[1]]
cmd = t if isinstance(t, str) else t["command"]
part = [p for p in cmd.split(" && ") if p.startswith(sys.argv[2])][0]
for sub in ("run", "test"):
    if sys.argv[3] and part.startswith(f"deno {sub} "):
        part = f"deno {sub} {sys.argv[3]} " + part[len(f"deno {sub} "):]
print(part)
EOF
}

# ---- steps ------------------------------------------------------------------------------------

results=
passed=0
failed=0
skipped=0
record() { # NAME STATUS SECONDS
  results="$results$1|$2|$3
"
  case "$2" in
  ok) passed=$((passed + 1)) ;;
  skipped*) skipped=$((skipped + 1)) ;;
  *) failed=$((failed + 1)) ;;
  esac
}
wanted() { [ -z "${GPU_CHECK_ONLY:-}" ] || case ",$GPU_CHECK_ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# step NAME LIMIT COMMAND [deno]: runs COMMAND (sh) under `timeout LIMIT` (capped by the budget
# left); with "deno", not when there is no deno.
step() {
  name=$1 limit=$2 cmd=$3
  wanted "$name" || return 0
  log="$out/$name.log"
  left=$((budget - ($(now_ms) - start) / 1000))
  if [ "${4:-}" = deno ] && [ -n "$setup_error" ]; then
    say "" "=== $name: not run ($setup_error)" | tee "$log"
    record "$name" "not run: no deno" 0
    return
  fi
  if [ "$left" -lt 15 ]; then
    say "" "=== $name: not run, ${left}s left of the ${budget}s budget" | tee "$log"
    record "$name" "not run: out of time" 0
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  say "" "=== $name (timeout ${limit}s): $cmd"
  say "=== $name (timeout ${limit}s): $cmd" >"$log"
  t0=$(now_ms)
  if [ "${GPU_CHECK_SHOW:-tail}" = all ]; then
    { timeout -k 10 "$limit" sh -c "$cmd" </dev/null 2>&1; echo $? >"$out/.rc"; } | tee -a "$log"
    rc=$(cat "$out/.rc")
    rm -f "$out/.rc"
  else
    timeout -k 10 "$limit" sh -c "$cmd" </dev/null >>"$log" 2>&1
    rc=$?
    tail -n +2 "$log" | tail -n "$tail_lines" | cut -c1-240
  fi
  secs=$(awk -v ms=$(($(now_ms) - t0)) 'BEGIN { printf "%.1f", ms / 1000 }')
  case $rc in
  0) status=ok ;;
  124 | 137) status="TIMEOUT after ${limit}s" ;;
  *) status="FAILED (exit $rc)" ;;
  esac
  say "--- $name: $status, ${secs}s" | tee -a "$log"
  record "$name" "$status" "$secs"
}
skip() { # NAME SHORT WHY
  wanted "$1" || return 0
  say "" "=== $1: skipped, $3" | tee "$out/$1.log"
  record "$1" "skipped ($2)" 0
}

step gpu 30 "nvidia-smi -L && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,compute_cap --format=csv"

step cpu_build 120 "sh cpu/build.sh"

step cuda_build 240 "{ nvcc --version || /usr/local/cuda/bin/nvcc --version; } 2>/dev/null | tail -2; FORCE=1 sh cuda/build.sh"

libs="RABBITLLM_LIB=build/librabbitllm_cpu.so RABBITLLM_CUDA_LIB=build/librabbitllm_cuda.so"
sanitizer=$(command -v compute-sanitizer 2>/dev/null ||
  for f in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
    /usr/local/cuda-*/bin/compute-sanitizer; do [ -x "$f" ] && echo "$f" && break; done)
groups=${GPU_CHECK_MEMCHECK_GROUPS:-matmul,embedding,norms,rope,act_mul,elementwise,argmax,attention,copies and stats,bmm,copy_nd,quant}
if [ -n "$sanitizer" ]; then
  step memcheck 150 "COMPARE_ONLY='$groups' COMPARE_RUNNER='$sanitizer --tool memcheck --error-exitcode 9 --print-limit 50' $libs sh cuda/test.sh"
else
  skip memcheck "no compute-sanitizer" \
    "compute-sanitizer not found (on PATH, in /usr/local/cuda/bin, /usr/local/cuda/compute-sanitizer)"
fi

step compare_ops 150 "$libs sh cuda/test.sh"

step parity 180 "$(task parity) --device cuda" deno

step gpu_tests 180 "$(task test:gpu 'deno test')" deno

bench_args=${GPU_CHECK_BENCH_ARGS:---shape llama3-8b --dtype BF16 --layers 4 --batches 1,16 --new 32 --repeat 2}
step bench 240 "$(task bench) --device cuda $bench_args" deno

# ---- summary ----------------------------------------------------------------------------------

total=$(awk -v ms=$(($(now_ms) - start)) 'BEGIN { printf "%.1f", ms / 1000 }')
say "" "GPU check summary ($(date -u +%Y-%m-%dT%H:%MZ), ${total}s in all; logs in $out/):"
printf '%s' "$results" | awk -F'|' '
  BEGIN { printf "%-12s  %-34s  %8s\n", "step", "status", "seconds" }
  { printf "%-12s  %-34s  %8s\n", $1, $2, $3 }'
line="$passed passed, $failed failed"
[ "$skipped" -eq 0 ] || line="$line, $skipped skipped"
say "$line"
[ "$failed" -eq 0 ]
