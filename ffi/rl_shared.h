/*
 * Argument checks that the CPU (cpu/) and CUDA (cuda/) backends share, so the two cannot drift.
 * Internal: not part of the ABI in rabbitllm.h; plain C, also compiled as C++ (nvcc).
 */
#ifndef RL_SHARED_H
#define RL_SHARED_H

#include <stdint.h>

/* Whether [a, a + an) and [b, b + bn) share a byte. */
static inline int rl_ranges_overlap(const void *a, uint64_t an, const void *b, uint64_t bn) {
  const uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
  return x < y + bn && y < x + an;
}

/* rl_act_mul: out ([rows, cols]) may equal gate or up when in_stride == cols (each element is
 * read, then written by the same thread); any other overlap would let a GPU thread overwrite an
 * input element another thread has yet to read. Assumes rows, cols > 0 and in_stride >= cols. */
static inline int act_mul_aliasing_ok(const float *out, const float *gate, const float *up,
                                      int32_t rows, int32_t cols, int32_t in_stride) {
  const uint64_t out_b = (uint64_t)rows * (uint64_t)cols * sizeof(float);
  const uint64_t in_b = ((uint64_t)(rows - 1) * (uint64_t)in_stride + (uint64_t)cols) * sizeof(float);
  const int in_place = in_stride == cols;
  if (!(in_place && out == gate) && rl_ranges_overlap(out, out_b, gate, in_b)) return 0;
  if (!(in_place && out == up) && rl_ranges_overlap(out, out_b, up, in_b)) return 0;
  return 1;
}

#endif /* RL_SHARED_H */
