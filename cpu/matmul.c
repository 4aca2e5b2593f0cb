/*
 * rl_matmul: out[M,N] = x[M,K] . W[N,K]^T (+ bias[N]); W f32/f16/bf16 or a ggml block format,
 * bias f32/f16/bf16; fp32 accumulate.
 *
 * Each output element is the dot product of an x row with a W row (both K-contiguous), computed
 * in VL-lane accumulators (simd.h: 16 lanes with AVX-512, 8 with AVX2) and summed across lanes
 * at the end, four sums at a time (vf_sum4).
 *  - M == 1 (decode, a GEMV) is memory bound: the goal is the machine's read bandwidth. Each
 *    thread streams its contiguous share of W rows once, a row at a time with GEMV_UNROLL
 *    independent accumulators, and prefetches GEMV_PREFETCH bytes ahead of its stream into L2
 *    (the hardware prefetchers alone leave f16/bf16 rows, which take more work per byte, ~15%
 *    short of the bandwidth; prefetching into L1 or non-temporally measured slower).
 *  - M > 1 (prefill, a GEMM) is compute bound: register tiles of GEMM_MR x rows by GEMM_NR W rows
 *    (every W vector loaded once per tile and used GEMM_MR times, every x vector GEMM_NR times).
 *    A thread takes GEMM_NR W rows (converted to f32 once into a per-thread buffer for f16/bf16,
 *    so the conversion costs nothing per x row), keeps them in L1 and runs every x tile of its
 *    part over them, x coming from L2; meanwhile it prefetches the next W rows into L2, a slice
 *    per x tile. W is read from memory once. Rows longer than GEMM_KC are cut into K chunks so
 *    the W tile fits L1 (later chunks add into out). x row counts below GEMM_MR (the last tile,
 *    small M) have their own instantiations; a W tile narrower than GEMM_NR computes copies of
 *    its last row and drops them.
 * Threads split W rows (whole tiles) evenly, each a contiguous range; a GEMM with fewer W tiles
 * than threads splits the x rows instead.
 * Block formats (Q8_0 ... Q6_K, quant.h): the GEMV dequantizes each block in registers and
 * multiplies it into x at once (two accumulator chains per row), prefetching like the others;
 * the GEMM dequantizes its W tiles into the per-thread f32 buffer (as for f16/bf16), with K
 * chunks cut at block boundaries.
 * Option "int8_activations" (off by default): the GEMV on Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and Q4_K
 * W instead quantizes x to int8 per 32 values once per call (as ggml's quantize_row_q8_0) and
 * sums exact integer dot products of the weights' integers with x's int8 per block of 32 (Q4_K:
 * per sub-block) (vpdpbusd with AVX-512 VNNI or AVX-VNNI, maddubs + madd with AVX2, plain C
 * otherwise; with VNNI the 4- and 5-bit formats two blocks per 256-bit vector, x reordered to
 * match once per call, quant.h qx8_pairs; two W rows at a time sharing the loads of x),
 * each scaled by d_w * d_x in f32 (Q4_K: d * sc_j * d_x), Q4_1 / Q5_1 adding
 * m_w * d_x * (the exact sum of the block's int8 x), Q4_K -dmin * m_j * d_x * (that sum):
 * llama.cpp's math, approximate (quant.h), and fewer instructions per weight byte than
 * dequantizing to f32. Q5_K and Q6_K keep the f32 path. */
#include <omp.h>
#include <stdlib.h>

#include "internal.h"
#include "quant.h"
#include "simd.h"

#if RL_VREGS >= 32
#define GEMM_MR 4 /* 24 accumulators + 4 x vectors + 1 W vector of 32 registers */
#define GEMM_NR 6
#else
#define GEMM_MR 2 /* 12 accumulators + 2 x vectors + 1 W vector of 16 registers */
#define GEMM_NR 6
#endif
#define GEMM_KC 1024       /* longest K chunk: GEMM_NR rows of f32 W stay within L1 */
#define GEMV_UNROLL 4      /* accumulators of a lone dot product */
#define GEMV_PREFETCH 8192 /* bytes of W ahead of its loads that a GEMV prefetches into L2 */

#define ALWAYS_INLINE static inline __attribute__((always_inline))

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static void split(int64_t n, int64_t unit, int parts, int p, int64_t *begin, int64_t *end);

/* ----------------------------------------------------------------------------------------------
 * GEMV (M == 1) */

/* out[n] = x . W[n] (+ bias[n]) for n in [n_begin, n_end). dt is a compile-time constant. */
ALWAYS_INLINE void gemv(float *out, const float *x, const void *w, int dt, const void *bias,
                        int bdt, int64_t K, int64_t n_begin, int64_t n_end) {
  const int64_t es = dt == RL_F32 ? 4 : 2; /* bytes per W element */
  const int64_t step = GEMV_UNROLL * VL;
  int64_t n = n_begin;
  while (n < n_end) {
    const int rows = (int)min64(4, n_end - n);
    vf row_acc[4];
    for (int r = 0; r < 4; r++) row_acc[r] = vf_zero();
    for (int r = 0; r < rows; r++) {
      const int64_t w0 = (n + r) * K; /* element offset of W row n + r */
      const char *pf = (const char *)w + w0 * es + GEMV_PREFETCH;
      vf acc[GEMV_UNROLL];
      for (int u = 0; u < GEMV_UNROLL; u++) acc[u] = vf_zero();
      int64_t k = 0;
      for (; k + step <= K; k += step) {
        for (int64_t b = 0; b < step * es; b += 64) __builtin_prefetch(pf + k * es + b, 0, 2);
        for (int u = 0; u < GEMV_UNROLL; u++)
          acc[u] = vf_fma(vf_load(x + k + u * VL), vf_load_dt(w, dt, w0 + k + u * VL), acc[u]);
      }
      for (; k + VL <= K; k += VL)
        acc[0] = vf_fma(vf_load(x + k), vf_load_dt(w, dt, w0 + k), acc[0]);
      if (k < K)
        acc[1] = vf_fma(vf_load_part(x + k, (int)(K - k)),
                        vf_load_part_dt(w, dt, w0 + k, (int)(K - k)), acc[1]);
      for (int u = 1; u < GEMV_UNROLL; u++) acc[0] = vf_add(acc[0], acc[u]);
      row_acc[r] = acc[0];
    }
    float s[4];
    vf_sum4(s, row_acc[0], row_acc[1], row_acc[2], row_acc[3]);
    for (int r = 0; r < rows; r++) out[n + r] = s[r] + (bias ? load_f32(bias, bdt, n + r) : 0.0f);
    n += rows;
  }
}

typedef void gemv_fn(float *out, const float *x, const void *w, const void *bias, int bdt,
                     int64_t K, int64_t n_begin, int64_t n_end);

/* gemv_<dt>: the row kernel `kernel` specialised to one dtype (a gemvs[] entry). */
#define GEMV_FN(kernel, dt)                                                                       \
  static void gemv_##dt(float *out, const float *x, const void *w, const void *bias, int bdt,     \
                        int64_t K, int64_t n_begin, int64_t n_end) {                              \
    kernel(out, x, w, dt, bias, bdt, K, n_begin, n_end);                                          \
  }
GEMV_FN(gemv, RL_F32)
GEMV_FN(gemv, RL_F16)
GEMV_FN(gemv, RL_BF16)

/* gemv() for a block format dt (a compile-time constant): each W row is K / QK blocks, each
 * dequantized in registers and multiplied into x (quant.h). The prefetch runs GEMV_PREFETCH bytes
 * ahead of the block in use, a cache line at a time. */
ALWAYS_INLINE void gemv_q(float *out, const float *x, const void *w, int dt, const void *bias,
                          int bdt, int64_t K, int64_t n_begin, int64_t n_end) {
  const int64_t qk = rl_block_elems(dt), bb = rl_block_bytes(dt), nb = K / qk, rowb = nb * bb;
  const uint8_t *pf = (const uint8_t *)w + n_begin * rowb;
  int64_t n = n_begin;
  while (n < n_end) {
    const int rows = (int)min64(4, n_end - n);
    vf row_acc[4];
    for (int r = 0; r < 4; r++) row_acc[r] = vf_zero();
    for (int r = 0; r < rows; r++) {
      const uint8_t *row = (const uint8_t *)w + (n + r) * rowb;
      vf acc[4] = {vf_zero(), vf_zero(), vf_zero(), vf_zero()};
      int64_t b = 0;
      if (qk == 32) /* two blocks at a time, on chains 0, 1 and 2, 3 */
        for (; b + 2 <= nb; b += 2) {
          const uint8_t *blk = row + b * bb;
          for (; pf < blk + GEMV_PREFETCH; pf += 64) __builtin_prefetch(pf, 0, 2);
          qblock(dt, QB_DOT, blk, x + b * qk, acc, NULL);
          qblock(dt, QB_DOT, blk + bb, x + (b + 1) * qk, acc + 2, NULL);
        }
      for (; b < nb; b++) {
        const uint8_t *blk = row + b * bb;
        for (; pf < blk + GEMV_PREFETCH; pf += 64) __builtin_prefetch(pf, 0, 2);
        qblock(dt, QB_DOT, blk, x + b * qk, acc, NULL);
      }
      row_acc[r] = vf_add(vf_add(acc[0], acc[1]), vf_add(acc[2], acc[3]));
    }
    float s[4];
    vf_sum4(s, row_acc[0], row_acc[1], row_acc[2], row_acc[3]);
    for (int r = 0; r < rows; r++) out[n + r] = s[r] + (bias ? load_f32(bias, bdt, n + r) : 0.0f);
    n += rows;
  }
}

GEMV_FN(gemv_q, RL_Q8_0)
GEMV_FN(gemv_q, RL_Q4_0)
GEMV_FN(gemv_q, RL_Q4_1)
GEMV_FN(gemv_q, RL_Q5_0)
GEMV_FN(gemv_q, RL_Q5_1)
GEMV_FN(gemv_q, RL_Q4_K)
GEMV_FN(gemv_q, RL_Q5_K)
GEMV_FN(gemv_q, RL_Q6_K)

/* Indexed by enum rl_dtype. */
static gemv_fn *const gemvs[RL_DTYPE_COUNT] = {
    gemv_RL_F32,  gemv_RL_F16,  gemv_RL_BF16, gemv_RL_Q8_0, gemv_RL_Q4_0, gemv_RL_Q4_1,
    gemv_RL_Q5_0, gemv_RL_Q5_1, gemv_RL_Q4_K, gemv_RL_Q5_K, gemv_RL_Q6_K};

/* x in pairs of blocks for the nibble formats with VNNI (quant.h qx8_pairs), else unused. */
typedef struct {
  const int8_t *qp;
  const float *dp;
  const int32_t *cp;
} qx8_px;

#ifdef RL_I8_SIMD
/* The sum of a 256-bit vector's 8 floats (the int8 GEMVs' row results). */
ALWAYS_INLINE float hsum256(__m256 a) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

/* gemv_i8's rows n .. n + rows - 1 (rows 1 or 2, a compile-time constant; W row n at
 * w + n * rowb), one accumulator chain per row, the rows sharing the loads of x and its scales.
 * Q8_0 (and every format without VNNI) a block at a time: 8 int32 lanes (q8_isum) to f32, times
 * d_x, then an fma with d_w. The nibble formats with VNNI two blocks at a time (qx8_isum_pair:
 * both blocks' low nibbles in one 256-bit vector, the high ones in another, two vpdpbusd into 8
 * lanes, 4 per block): one conversion, one multiply by d_x (per lane, dp) and one fma with
 * [d_w of the first block x4 | of the second x4] (a blend of two broadcasts) per pair, where a
 * block at a time takes two of each plus twice the unpacking (13% less time for Q4_1's decode
 * pass, 5-6% for Q4_0, Q5_0, Q5_1). */
ALWAYS_INLINE void gemv_i8_rows(int rows, int dt, float *out, const int8_t *qx, const float *dx,
                                const int32_t *cx, const float *xs, const qx8_px *x2,
                                const uint8_t *w, int64_t rowb, int64_t nb, const void *bias,
                                int bdt, int64_t n, const uint8_t **pf) {
  const int64_t bb = rl_block_bytes(dt);
  const int has_min = qx8_has_min(dt);
  const uint8_t *row = w + n * rowb;
  __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  float mn[2] = {0.0f, 0.0f}; /* the min terms */
  int64_t b = 0;
#ifdef RL_I8_VNNI
  if (dt != RL_Q8_0)
    for (; b + 2 <= nb; b += 2) {
      const uint8_t *last = row + (rows - 1) * rowb + (b + 1) * bb;
      for (; *pf < last + GEMV_PREFETCH; *pf += 64) __builtin_prefetch(*pf, 0, 2);
      const __m256 xd = _mm256_loadu_ps(x2->dp + 4 * b);
#pragma GCC unroll 2
      for (int r = 0; r < rows; r++) {
        const uint8_t *b0 = row + r * rowb + b * bb, *b1 = b0 + bb;
        const __m256i is = qx8_isum_pair(dt, b0, b1, x2->qp + 32 * b, x2->cp + 4 * b);
        const __m256 d = _mm256_blend_ps(_mm256_broadcast_ss(&cpu_f16_table[b0[0] | b0[1] << 8]),
                                         _mm256_broadcast_ss(&cpu_f16_table[b1[0] | b1[1] << 8]),
                                         0xf0);
        acc[r] = _mm256_fmadd_ps(d, _mm256_mul_ps(_mm256_cvtepi32_ps(is), xd), acc[r]);
        if (has_min) {
          mn[r] = fmaf(cpu_f16_table[b0[2] | b0[3] << 8], xs[b], mn[r]);
          mn[r] = fmaf(cpu_f16_table[b1[2] | b1[3] << 8], xs[b + 1], mn[r]);
        }
      }
    }
#else
  (void)x2;
#endif
  for (; b < nb; b++) {
    const uint8_t *last = row + (rows - 1) * rowb + b * bb;
    for (; *pf < last + GEMV_PREFETCH; *pf += 64) __builtin_prefetch(*pf, 0, 2);
    const __m256 xd = _mm256_broadcast_ss(dx + b);
#pragma GCC unroll 2
    for (int r = 0; r < rows; r++) {
      const uint8_t *blk = row + r * rowb + b * bb;
      const __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(q8_isum(dt, blk, qx + 32 * b, cx[b])), xd);
      acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&cpu_f16_table[blk[0] | blk[1] << 8]), p,
                               acc[r]);
      if (has_min) mn[r] = fmaf(cpu_f16_table[blk[2] | blk[3] << 8], xs[b], mn[r]);
    }
  }
#pragma GCC unroll 2
  for (int r = 0; r < rows; r++)
    out[n + r] = hsum256(acc[r]) + mn[r] + (bias ? load_f32(bias, bdt, n + r) : 0.0f);
}
#endif

/* The GEMV with int8 activations (option "int8_activations", quant.h) for W of a qx8_dtype: row
 * n's result is sum_b d_w[b] * (d_x[b] * isum_b) (+ m_w[b] * xs[b] for Q4_1 / Q5_1, xs[b] =
 * d_x[b] * sum(q_x of block b), in a scalar chain of its own), isum_b the exact int32 dot product
 * of W block b with x block b (qx8_quantize: qx, dx, cx). Two rows at a time (gemv_i8_rows), a
 * last odd row alone; the prefetch runs GEMV_PREFETCH bytes ahead of the second row's block, over
 * the thread's contiguous rows, as in gemv_q. (One row at a time measured ~10% slower in the
 * decode pass; two chains per row no faster; four rows sharing x slower (Q8_0 ~8%, Q4_1 ~4%),
 * as was a 512-bit kernel taking two blocks per vpdpbusd with masked fmas of d_w (Q8_0 ~15%
 * slower, Q4_1 no faster).) */
ALWAYS_INLINE void gemv_i8(float *out, const int8_t *qx, const float *dx, const int32_t *cx,
                           const float *xs, const qx8_px *x2, const void *w, int dt,
                           const void *bias, int bdt, int64_t K, int64_t n_begin, int64_t n_end) {
  const int64_t bb = rl_block_bytes(dt), nb = K / 32, rowb = nb * bb;
  const uint8_t *pf = (const uint8_t *)w + n_begin * rowb;
  int64_t n = n_begin;
#ifdef RL_I8_SIMD
  for (; n + 2 <= n_end; n += 2)
    gemv_i8_rows(2, dt, out, qx, dx, cx, xs, x2, (const uint8_t *)w, rowb, nb, bias, bdt, n, &pf);
  if (n < n_end)
    gemv_i8_rows(1, dt, out, qx, dx, cx, xs, x2, (const uint8_t *)w, rowb, nb, bias, bdt, n, &pf);
#else
  (void)x2;
  const int has_min = qx8_has_min(dt);
  for (; n < n_end; n++) {
    const uint8_t *row = (const uint8_t *)w + n * rowb;
    float acc[2] = {0.0f, 0.0f};
    for (int64_t b = 0; b < nb; b++) {
      const uint8_t *blk = row + b * bb;
      for (; pf < blk + GEMV_PREFETCH; pf += 64) __builtin_prefetch(pf, 0, 2);
      const int32_t is = q8_isum(dt, blk, qx + 32 * b, cx[b]);
      acc[b & 1] += qb_f16(blk) * ((float)is * dx[b]);
      if (has_min) acc[b & 1] += qb_f16(blk + 2) * xs[b];
    }
    out[n] = acc[0] + acc[1] + (bias ? load_f32(bias, bdt, n) : 0.0f);
  }
#endif
}

#ifdef RL_I8_SIMD
/* gemv_i8_k's rows n .. n + rows - 1 (rows 1 or 2, a compile-time constant). */
ALWAYS_INLINE void gemv_i8_k_rows(int rows, float *out, const int8_t *qx, const float *dx,
                                  const float *xs, const uint8_t *r0, int64_t rowb,
                                  const void *bias, int bdt, int64_t nb, int64_t n,
                                  const uint8_t **pf) {
  const int64_t bb = rl_block_bytes(RL_Q4_K);
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t *blk[2] = {r0 + b * bb, r0 + (rows - 1) * rowb + b * bb};
    for (; *pf < blk[1] + GEMV_PREFETCH; *pf += 64) __builtin_prefetch(*pf, 0, 2);
    q4k_i8(rows, blk, qx + 256 * b, dx + 8 * b, xs + 8 * b, acc);
  }
#pragma GCC unroll 2
  for (int r = 0; r < rows; r++)
    out[n + r] = hsum256(_mm256_add_ps(acc[2 * r], acc[2 * r + 1])) +
                 (bias ? load_f32(bias, bdt, n + r) : 0.0f);
}
#endif

/* gemv_i8 for Q4_K W (quant.h q4k_i8): blocks of 256, each 8 sub-blocks of 32 with a scale and a
 * min, against x as for the others (its scale per 32 values); two rows at a time with two
 * accumulator chains each (the low and high nibbles' sub-blocks), a last odd row alone,
 * prefetching as gemv_i8. */
ALWAYS_INLINE void gemv_i8_k(float *out, const int8_t *qx, const float *dx, const float *xs,
                             const void *w, const void *bias, int bdt, int64_t K, int64_t n_begin,
                             int64_t n_end) {
  const int64_t bb = rl_block_bytes(RL_Q4_K), nb = K / 256, rowb = nb * bb;
  const uint8_t *pf = (const uint8_t *)w + n_begin * rowb;
  int64_t n = n_begin;
#ifdef RL_I8_SIMD
  for (; n + 2 <= n_end; n += 2)
    gemv_i8_k_rows(2, out, qx, dx, xs, (const uint8_t *)w + n * rowb, rowb, bias, bdt, nb, n, &pf);
  if (n < n_end)
    gemv_i8_k_rows(1, out, qx, dx, xs, (const uint8_t *)w + n * rowb, rowb, bias, bdt, nb, n, &pf);
#else
  for (; n < n_end; n++) {
    const uint8_t *row = (const uint8_t *)w + n * rowb;
    float acc[2] = {0.0f, 0.0f};
    for (int64_t b = 0; b < nb; b++) {
      const uint8_t *blk = row + b * bb;
      for (; pf < blk + GEMV_PREFETCH; pf += 64) __builtin_prefetch(pf, 0, 2);
      q4k_i8_row(blk, qx + 256 * b, dx + 8 * b, xs + 8 * b, acc);
    }
    out[n] = acc[0] + acc[1] + (bias ? load_f32(bias, bdt, n) : 0.0f);
  }
#endif
}

typedef void gemv_i8_fn(float *out, const int8_t *qx, const float *dx, const int32_t *cx,
                        const float *xs, const qx8_px *x2, const void *w, const void *bias,
                        int bdt, int64_t K, int64_t n_begin, int64_t n_end);
#define GEMV_I8_FN(dt)                                                                            \
  static void gemv_i8_##dt(float *out, const int8_t *qx, const float *dx, const int32_t *cx,      \
                           const float *xs, const qx8_px *x2, const void *w, const void *bias,    \
                           int bdt, int64_t K, int64_t n_begin, int64_t n_end) {                  \
    gemv_i8(out, qx, dx, cx, xs, x2, w, dt, bias, bdt, K, n_begin, n_end);                        \
  }
GEMV_I8_FN(RL_Q8_0)
GEMV_I8_FN(RL_Q4_0)
GEMV_I8_FN(RL_Q4_1)
GEMV_I8_FN(RL_Q5_0)
GEMV_I8_FN(RL_Q5_1)
static void gemv_i8_RL_Q4_K(float *out, const int8_t *qx, const float *dx, const int32_t *cx,
                            const float *xs, const qx8_px *x2, const void *w, const void *bias,
                            int bdt, int64_t K, int64_t n_begin, int64_t n_end) {
  (void)cx;
  (void)x2;
  gemv_i8_k(out, qx, dx, xs, w, bias, bdt, K, n_begin, n_end);
}

/* Indexed by enum rl_dtype: the qx8_dtype ones. */
static gemv_i8_fn *const gemv_i8s[RL_DTYPE_COUNT] = {
    [RL_Q8_0] = gemv_i8_RL_Q8_0, [RL_Q4_0] = gemv_i8_RL_Q4_0, [RL_Q4_1] = gemv_i8_RL_Q4_1,
    [RL_Q5_0] = gemv_i8_RL_Q5_0, [RL_Q5_1] = gemv_i8_RL_Q5_1, [RL_Q4_K] = gemv_i8_RL_Q4_K};

/* rl_matmul with M == 1 and the option int8_activations on, for W of a qx8_dtype. x is quantized
 * once, by the calling thread (K / 32 blocks: little next to the N rows that follow), with xs
 * (the formats with a min) and for the nibble formats with VNNI its pair order (qx8_pairs), into
 * stack buffers up to I8_STACK_K values, else a heap one. */
#define I8_STACK_K 16384
static int32_t matmul_i8(rl_ctx *ctx, float *out, const float *x, const void *w, int dt,
                         const void *bias, int bdt, int64_t N, int64_t K, int n_threads) {
  _Alignas(64) int8_t stack_q[I8_STACK_K];
  float stack_d[I8_STACK_K / 32], stack_xs[I8_STACK_K / 32];
  int32_t stack_c[I8_STACK_K / 32];
  int8_t *q = stack_q;
  float *d = stack_d, *xs = stack_xs;
  int32_t *c = stack_c;
#ifdef RL_I8_VNNI
  _Alignas(64) int8_t stack_qp[I8_STACK_K];
  float stack_dp[I8_STACK_K / 8];
  int32_t stack_cp[I8_STACK_K / 8];
  int8_t *qp = stack_qp;
  float *dp = stack_dp;
  int32_t *cp = stack_cp;
#endif
  void *heap = NULL;
  if (K > I8_STACK_K) {
    heap = malloc((size_t)K * 2 + (size_t)(K / 32) * 12 + (size_t)(K / 8) * 8);
    if (!heap)
      return cpu_fail(ctx, RL_ERR_OOM, "rl_matmul", "out of memory for x as int8 (K %lld)",
                      (long long)K);
    d = heap;
    xs = d + K / 32;
    c = (int32_t *)(xs + K / 32);
#ifdef RL_I8_VNNI
    dp = (float *)(c + K / 32);
    cp = (int32_t *)(dp + K / 8);
    qp = (int8_t *)(cp + K / 8);
    q = qp + K;
#else
    q = (int8_t *)(c + K / 32);
#endif
  }
  qx8_quantize(dt, x, K, q, d, c);
  if (qx8_has_min(dt)) /* d_x * sum(q_x) per block: the min terms' factor */
    for (int64_t b = 0; b < K / 32; b++) xs[b] = d[b] * (float)c[b];
  qx8_px x2 = {NULL, NULL, NULL};
#ifdef RL_I8_VNNI
  if (dt != RL_Q8_0 && dt != RL_Q4_K) {
    qx8_pairs(dt, q, d, c, K / 32, qp, dp, cp);
    x2 = (qx8_px){qp, dp, cp};
  }
#endif
  gemv_i8_fn *const f = gemv_i8s[dt];
#pragma omp parallel num_threads(n_threads)
  {
    int64_t begin, end;
    split(N, 1, omp_get_num_threads(), omp_get_thread_num(), &begin, &end);
    if (begin < end) f(out, q, d, c, xs, &x2, w, bias, bdt, K, begin, end);
  }
  free(heap);
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * GEMM (M > 1) */

/* acc[i][j] += xr[i][k:k+n] * wr[j][k:k+n] for i < mr: whole vectors when n == VL, else the
 * first n lanes. */
ALWAYS_INLINE void tile_step(vf acc[GEMM_MR * GEMM_NR], const float *const xr[GEMM_MR],
                             const float *const wr[GEMM_NR], int64_t k, int n, int mr) {
  vf xv[GEMM_MR];
  for (int i = 0; i < mr; i++) xv[i] = n == VL ? vf_load(xr[i] + k) : vf_load_part(xr[i] + k, n);
  for (int j = 0; j < GEMM_NR; j++) {
    const vf wv = n == VL ? vf_load(wr[j] + k) : vf_load_part(wr[j] + k, n);
    for (int i = 0; i < mr; i++) acc[i * GEMM_NR + j] = vf_fma(xv[i], wv, acc[i * GEMM_NR + j]);
  }
}

/* out[i, j] (+)= x[i, :kc] . w[j, :kc] for i < mr <= GEMM_MR, j < nr <= GEMM_NR, with f32 w
 * (rows ldw apart). The sum is stored (plus bias[j] when bias != NULL) on a row's first K chunk,
 * added on the later ones. mr is a compile-time constant at every call site; the tile is always
 * GEMM_NR W rows wide: a narrower one computes copies of its last W row and drops them. */
ALWAYS_INLINE void tile(float *out, int64_t ldo, const float *x, int64_t ldx, const float *w,
                        int64_t ldw, int64_t kc, int mr, int nr, int add, const void *bias,
                        int bdt) {
  const float *xr[GEMM_MR], *wr[GEMM_NR];
  for (int i = 0; i < mr; i++) xr[i] = x + i * ldx;
  for (int j = 0; j < GEMM_NR; j++) wr[j] = w + (j < nr ? j : nr - 1) * ldw;
  vf acc[GEMM_MR * GEMM_NR]; /* [i * GEMM_NR + j] */
  for (int t = 0; t < mr * GEMM_NR; t++) acc[t] = vf_zero();
  int64_t k = 0;
  for (; k + VL <= kc; k += VL) tile_step(acc, xr, wr, k, VL, mr);
  if (k < kc) tile_step(acc, xr, wr, k, (int)(kc - k), mr);
  float s[GEMM_MR * GEMM_NR];
  for (int t = 0; t < mr * GEMM_NR; t += 4) /* GEMM_NR is even: the last group may be a pair */
    if (t + 4 <= mr * GEMM_NR) {
      vf_sum4(s + t, acc[t], acc[t + 1], acc[t + 2], acc[t + 3]);
    } else {
      s[t] = vf_sum(acc[t]);
      s[t + 1] = vf_sum(acc[t + 1]);
    }
  const vf b = bias && !add ? vf_load_part_dt(bias, bdt, 0, nr) : vf_zero(); /* nr < VL */
  for (int i = 0; i < mr; i++) {
    float *o = out + i * ldo;
    vf_store_part(o, vf_add(vf_load_part(s + i * GEMM_NR, nr), add ? vf_load_part(o, nr) : b), nr);
  }
}

/* tile() for each row count mr, indexed tiles[mr - 1]. */
typedef void tile_fn(float *out, int64_t ldo, const float *x, int64_t ldx, const float *w,
                     int64_t ldw, int64_t kc, int nr, int add, const void *bias, int bdt);
#define TILE_FN(mr)                                                                               \
  static void tile_##mr(float *out, int64_t ldo, const float *x, int64_t ldx, const float *w,     \
                        int64_t ldw, int64_t kc, int nr, int add, const void *bias, int bdt) {    \
    tile(out, ldo, x, ldx, w, ldw, kc, mr, nr, add, bias, bdt);                                   \
  }
TILE_FN(1)
TILE_FN(2)
#if GEMM_MR == 4
TILE_FN(3)
TILE_FN(4)
static tile_fn *const tiles[GEMM_MR] = {tile_1, tile_2, tile_3, tile_4};
#else
static tile_fn *const tiles[GEMM_MR] = {tile_1, tile_2};
#endif

typedef struct {
  const float *x;   /* [M,K] */
  const void *w;    /* [N,K] */
  const void *bias; /* [N] of dtype bdt, or NULL */
  float *out;       /* [M,N] */
  int64_t M, N, K;
  int dt, bdt;
  int64_t kc; /* K chunk, a multiple of VL; also the row stride of the f32 W buffer */
} mm_args;

/* w[r, k0:k0+kc] -> buf[r, :kc] as f32 for r < nr. */
ALWAYS_INLINE void convert_rows(float *buf, int64_t ldb, const void *w, int dt, int64_t K,
                                int64_t n0, int nr, int64_t k0, int64_t kc) {
  for (int r = 0; r < nr; r++) {
    const int64_t w0 = (n0 + r) * K + k0;
    float *b = buf + r * ldb;
    int64_t k = 0;
    for (; k + VL <= kc; k += VL) vf_store(b + k, vf_load_dt(w, dt, w0 + k));
    if (k < kc) vf_store_part(b + k, vf_load_part_dt(w, dt, w0 + k, (int)(kc - k)), (int)(kc - k));
  }
}

/* convert_rows() for a block format: k0 and kc are multiples of its block. */
ALWAYS_INLINE void convert_rows_q(float *buf, int64_t ldb, const void *w, int dt, int64_t K,
                                  int64_t n0, int nr, int64_t k0, int64_t kc) {
  const int64_t qk = rl_block_elems(dt), bb = rl_block_bytes(dt), rowb = K / qk * bb;
  for (int r = 0; r < nr; r++) {
    const uint8_t *row = (const uint8_t *)w + (n0 + r) * rowb + k0 / qk * bb;
    for (int64_t b = 0; b < kc / qk; b++)
      qblock(dt, QB_STORE, row + b * bb, NULL, NULL, buf + r * ldb + b * qk);
  }
}

typedef void convert_fn(float *buf, int64_t ldb, const void *w, int64_t K, int64_t n0, int nr,
                        int64_t k0, int64_t kc);
#define CONVERT_FN(dt, impl)                                                                      \
  static void convert_##dt(float *buf, int64_t ldb, const void *w, int64_t K, int64_t n0, int nr, \
                           int64_t k0, int64_t kc) {                                              \
    impl(buf, ldb, w, dt, K, n0, nr, k0, kc);                                                     \
  }
CONVERT_FN(RL_F16, convert_rows)
CONVERT_FN(RL_BF16, convert_rows)
CONVERT_FN(RL_Q8_0, convert_rows_q)
CONVERT_FN(RL_Q4_0, convert_rows_q)
CONVERT_FN(RL_Q4_1, convert_rows_q)
CONVERT_FN(RL_Q5_0, convert_rows_q)
CONVERT_FN(RL_Q5_1, convert_rows_q)
CONVERT_FN(RL_Q4_K, convert_rows_q)
CONVERT_FN(RL_Q5_K, convert_rows_q)
CONVERT_FN(RL_Q6_K, convert_rows_q)

/* Indexed by enum rl_dtype (f32 W is used in place). */
static convert_fn *const converts[RL_DTYPE_COUNT] = {
    NULL,            convert_RL_F16,  convert_RL_BF16, convert_RL_Q8_0,
    convert_RL_Q4_0, convert_RL_Q4_1, convert_RL_Q5_0, convert_RL_Q5_1,
    convert_RL_Q4_K, convert_RL_Q5_K, convert_RL_Q6_K};

float cpu_f16_table[65536];

__attribute__((constructor)) static void fill_f16_table(void) {
  for (uint32_t h = 0; h < 65536; h++) cpu_f16_table[h] = f16_to_f32((uint16_t)h);
}

void cpu_dequantize_row(float *out, const void *row, int dt, int64_t k) {
  converts[dt](out, k, row, k, 0, 1, 0, k);
}

/* out[m_begin:m_end, n_begin:n_end]; buf holds GEMM_NR x kc floats (W not f32). While a W
 * tile is in use, the next one is prefetched into L2, a slice per x tile. */
static void gemm_part(const mm_args *a, float *buf, int64_t m_begin, int64_t m_end,
                      int64_t n_begin, int64_t n_end) {
  if (m_begin >= m_end || n_begin >= n_end) return;
  const int64_t K = a->K, rowb = (int64_t)rl_row_bytes(a->dt, K);
  const int64_t calls = (K + a->kc - 1) / a->kc * ((m_end - m_begin + GEMM_MR - 1) / GEMM_MR);
  for (int64_t n0 = n_begin; n0 < n_end; n0 += GEMM_NR) {
    const int nr = (int)min64(GEMM_NR, n_end - n0);
    const void *bias = a->bias ? (const char *)a->bias + n0 * (a->bdt == RL_F32 ? 4 : 2) : NULL;
    /* the next tile's rows, contiguous */
    const char *pf = (const char *)a->w + (n0 + nr) * rowb;
    const char *pf_end = (const char *)a->w + min64(n_end, n0 + nr + GEMM_NR) * rowb;
    const int64_t pf_step = ((pf_end - pf + 63) / 64 + calls - 1) / calls * 64;
    for (int64_t k0 = 0; k0 < K; k0 += a->kc) {
      const int64_t kc = min64(a->kc, K - k0);
      const float *w = buf; /* the tile's W rows as f32, ldw apart */
      int64_t ldw = a->kc;
      if (a->dt == RL_F32) {
        w = (const float *)a->w + n0 * K + k0;
        ldw = K;
      } else {
        converts[a->dt](buf, a->kc, a->w, K, n0, nr, k0, kc);
      }
      for (int64_t m0 = m_begin; m0 < m_end; m0 += GEMM_MR) {
        for (const char *p = pf; p < pf + pf_step && p < pf_end; p += 64)
          __builtin_prefetch(p, 0, 2);
        pf += pf_step;
        tiles[min64(GEMM_MR, m_end - m0) - 1](a->out + m0 * a->N + n0, a->N, a->x + m0 * K + k0,
                                              K, w, ldw, kc, nr, k0 > 0, bias, a->bdt);
      }
    }
  }
}

/* ----------------------------------------------------------------------------------------------
 * Entry */

/* [begin, end) of part p when n items are split into `parts` contiguous parts of nearly equal
 * numbers of `unit`-item groups. */
static void split(int64_t n, int64_t unit, int parts, int p, int64_t *begin, int64_t *end) {
  const int64_t units = (n + unit - 1) / unit;
  *begin = min64(n, units * p / parts * unit);
  *end = min64(n, units * (p + 1) / parts * unit);
}

RL_API int32_t rl_matmul(rl_ctx *ctx, float *out, const float *x, const void *w, int32_t wdtype,
                         const void *bias, int32_t bias_dtype, int32_t M, int32_t N, int32_t K) {
  CHECK_ARGS(rl_check_matmul, out, x, w, wdtype, bias, bias_dtype, M, N, K);

  const int n_threads = (int64_t)M * N * K >= PAR_MIN_WORK ? ctx->n_threads : 1;
  if (M == 1 && ctx->options[OPT_INT8_ACTIVATIONS] && qx8_dtype(wdtype))
    return matmul_i8(ctx, out, x, w, wdtype, bias, bias_dtype, N, K, n_threads);
  if (M == 1) {
    gemv_fn *const f = gemvs[wdtype];
#pragma omp parallel num_threads(n_threads)
    {
      int64_t begin, end;
      split(N, 1, omp_get_num_threads(), omp_get_thread_num(), &begin, &end);
      if (begin < end) f(out, x, w, bias, bias_dtype, K, begin, end);
    }
    return RL_OK;
  }

  /* equal chunks of whole vectors (whole blocks: a block is a multiple of VL) */
  const int64_t align = rl_block_elems(wdtype) > VL ? rl_block_elems(wdtype) : VL;
  const int64_t chunks = (K + GEMM_KC - 1) / GEMM_KC;
  const int64_t kc = ((K + chunks - 1) / chunks + align - 1) / align * align;
  const mm_args a = {x, w, bias, out, M, N, K, wdtype, bias_dtype, kc};
  const int by_rows_of_w = (N + GEMM_NR - 1) / GEMM_NR >= n_threads;
  float *bufs = NULL; /* W not f32: GEMM_NR x kc floats per thread */
  const size_t buf_floats = (size_t)GEMM_NR * (size_t)kc;
  if (wdtype != RL_F32) {
    bufs = aligned_alloc(64, sizeof(float) * buf_floats * (size_t)n_threads);
    if (!bufs)
      return cpu_fail(ctx, RL_ERR_OOM, __func__, "out of memory for %d W buffers of %zu floats",
                      n_threads, buf_floats);
  }
#pragma omp parallel num_threads(n_threads)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    float *buf = bufs ? bufs + buf_floats * (size_t)t : NULL;
    int64_t begin, end;
    if (by_rows_of_w) {
      split(N, GEMM_NR, nt, t, &begin, &end);
      gemm_part(&a, buf, 0, M, begin, end);
    } else {
      split(M, GEMM_MR, nt, t, &begin, &end);
      gemm_part(&a, buf, begin, end, 0, N);
    }
  }
  free(bufs);
  return RL_OK;
}
