#!/bin/sh
# Prepares .device/ (ignored by git) for a GPU machine that has no network and no deno, where a
# tool copies the working tree plus carried ignored paths (64 MiB in all) and runs one command:
#   .device/deno.xz           this machine's deno binary ($DENO, else `deno` on PATH), xz -6
#   .device/deno_dir.tar.xz   a DENO_DIR holding every npm package (and the type-check cache) of
#                             the entry points scripts/gpu_check.sh runs: mod.ts, cli.ts,
#                             scripts/*.ts, tests/gpu/*.ts
#   .device/command           the command to run there
# Checks that the working tree (tracked and untracked-not-ignored files) plus .device/ fits in
# 64 MiB and prints the sizes. Fetching the npm packages needs the npm registry here (deno cache).
# scripts/gpu_check.sh unpacks the bundle there by itself (GPU_CHECK_BUNDLE=1 in the command);
# run it here with GPU_CHECK_BUNDLE=1 and no network (e.g. `unshare -n`) to try the bundle.
set -eu
cd "$(dirname "$0")/.."
limit=$((64 * 1024 * 1024))

deno=${DENO:-$(command -v deno || true)}
if [ -z "$deno" ]; then
  echo "gpu_bundle.sh: no deno (set DENO or put deno on PATH)" >&2
  exit 1
fi
deno=$(readlink -f "$deno")
if ! head -c 4 "$deno" | grep -q ELF; then
  echo "gpu_bundle.sh: $deno is not the deno binary (a wrapper script?); set DENO to the binary" >&2
  exit 1
fi
echo "deno: $deno ($("$deno" --version | head -1))"
mkdir -p .device
threads=$(nproc)

echo "compressing deno (xz -6, $threads threads) ..."
xz -T"$threads" -6 -c "$deno" >.device/deno.xz.tmp
mv .device/deno.xz.tmp .device/deno.xz

dd=$(mktemp -d)
trap 'rm -rf "$dd"' EXIT
echo "caching the npm packages into a fresh DENO_DIR ..."
# shellcheck disable=SC2046 # file names without spaces
DENO_DIR=$dd "$deno" cache --quiet mod.ts cli.ts $(ls scripts/*.ts tests/gpu/*.ts)
# The type-check cache too (tests/gpu is checked before it runs): there, a check of unchanged
# files is then a cache hit.
DENO_DIR=$dd "$deno" check --quiet tests/gpu/ scripts/parity.ts scripts/bench.ts scripts/bench_run.ts ||
  echo "gpu_bundle.sh: the type check failed (above); bundling anyway" >&2
tar -C "$dd" -cf - . | xz -T"$threads" -6 >.device/deno_dir.tar.xz.tmp
mv .device/deno_dir.tar.xz.tmp .device/deno_dir.tar.xz

cmd="GPU_CHECK_BUNDLE=1 sh scripts/gpu_check.sh"
printf '%s\n' "$cmd" >.device/command

size() { wc -c <"$1" | tr -d ' '; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
tree=$(git ls-files -z --cached --others --exclude-standard |
  xargs -0 sh -c 'for f; do [ -f "$f" ] && [ ! -L "$f" ] && wc -c <"$f"; done; true' sh |
  awk '{ s += $1 } END { print s + 0 }')
b1=$(size .device/deno.xz)
b2=$(size .device/deno_dir.tar.xz)
total=$((tree + b1 + b2))
echo
echo "  .device/deno.xz           $(mib "$b1") (deno $(mib "$(size "$deno")"))"
echo "  .device/deno_dir.tar.xz   $(mib "$b2") (DENO_DIR $(mib "$(du -sb "$dd" | cut -f1)"))"
echo "  working tree              $(mib "$tree") (tracked and untracked-not-ignored files)"
echo "  what travels              $(mib "$total") of 64 MiB"
if [ "$total" -gt "$limit" ]; then
  echo "gpu_bundle.sh: over the 64 MiB the device tool carries" >&2
  exit 1
fi
echo
echo "device command (.device/command), carry [\".device\"], timeout_s 600:"
echo "  $cmd"
