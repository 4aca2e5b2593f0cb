#!/bin/sh
# Without a GPU: runs cuda/compare_ops.c against the CUDA backend's own sources built for the CPU
# emulation (cuda/emu), under AddressSanitizer and UBSan. Checks the kernels' indexing, barriers
# and results against the CPU backend, and the order of work across streams (the emulation runs
# queued work in an adversarial order that respects only stream order and recorded events); says
# nothing about real-GPU timing or the driver (sh cuda/test.sh on a GPU does). Then three checks
# of the checks:
#  - a build without the compute -> transfer ordering of loads (-DRL_TEST_UNORDERED_COPIES) must
#    FAIL the "stream order" group: the emulation sees the write-after-read race;
#  - RABBITLLM_CUDA_SYNC=1 with an injected kernel fault (RL_CUDA_EMU_FAULT=1) must name the op
#    whose kernel failed, where without it the fault surfaces at the next synchronizing call;
#  - the load, host tier and stream order groups pass with RABBITLLM_CUDA_SYNC=1.
# Takes a few minutes: every GPU thread is a fiber. COMPARE_ONLY=<groups> narrows the first run;
# SANITIZE= (empty) builds without sanitizers.
set -eu
cd "$(dirname "$0")/../.."
cpu=$(sh cpu/build.sh)
emu=$(sh cuda/emu/build.sh)
# SANITIZE= (empty) builds the emulation and compare_ops without sanitizers (faster; CI).
sanitize=${SANITIZE--fsanitize=address,undefined}
# shellcheck disable=SC2086 # $sanitize is a list of flags without spaces
gcc -std=c11 -O1 -g $sanitize -Wall -Wextra -Iffi -o build/compare_ops_emu cuda/compare_ops.c -ldl -lm
# Fiber switches are annotated for ASan; its generic warning about swapcontext is expected.
export ASAN_OPTIONS=${ASAN_OPTIONS:-allocator_may_return_null=1:detect_leaks=0}
status=0
build/compare_ops_emu "$cpu" "$emu" || status=1

echo "== the emulation sees a missing compute -> transfer wait"
unordered=$(EMU_LIB=build/librabbitllm_cuda_emu_unordered.so EMU_DEFINES=-DRL_TEST_UNORDERED_COPIES \
  SANITIZE= sh cuda/emu/build.sh 2>/dev/null)
if COMPARE_ONLY="stream order" build/compare_ops_emu "$cpu" "$unordered" >build/emu/unordered.log 2>&1; then
  echo "FAIL: without the ordering, the stream order group passed: the emulation missed the race"
  status=1
else
  echo "ok: without the ordering, $(grep -c '^FAIL: stream order' build/emu/unordered.log) stream order checks fail as they must"
fi

echo "== RABBITLLM_CUDA_SYNC=1 names the op whose kernel faults"
# fault_names SYNC PATTERN WHAT: with an injected fault in the first kernel of the act_mul group,
# the output of compare_ops (RABBITLLM_CUDA_SYNC=SYNC) must contain PATTERN.
fault_names() {
  out=$(COMPARE_ONLY=act_mul RL_CUDA_EMU_FAULT=1 RABBITLLM_CUDA_SYNC=$1 build/compare_ops_emu "$cpu" "$emu" 2>&1 || true)
  if printf '%s\n' "$out" | grep -q "$2"; then
    echo "ok: $3"
  else
    printf '%s\n' "$out" | head -5
    echo "FAIL: not so: $3"
    status=1
  fi
}
fault_names 1 'rl_act_mul: the kernel failed: unspecified launch failure' \
  "with RABBITLLM_CUDA_SYNC=1 the fault is reported by rl_act_mul"
fault_names 0 'rl_download: unspecified launch failure' \
  "without it, the fault surfaces at the next synchronizing call (rl_download)"
if COMPARE_ONLY="loads,host tier,stream order" RABBITLLM_CUDA_SYNC=1 build/compare_ops_emu "$cpu" "$emu" >build/emu/sync.log 2>&1; then
  echo "ok: loads, host tier and stream order pass with RABBITLLM_CUDA_SYNC=1"
else
  grep '^FAIL' build/emu/sync.log | head -5
  echo "FAIL: loads, host tier or stream order fail with RABBITLLM_CUDA_SYNC=1"
  status=1
fi
exit $status
