/*
 * ggml's block formats (rabbitllm.h, enum rl_dtype RL_Q8_0 ... RL_Q6_K): dequantization of one
 * block in registers, shared by rl_matmul's GEMV (each weight vector multiplied into x at once)
 * and its GEMM and rl_embedding (the weights stored as f32).
 *
 * Every weight is computed as gguf-py's dequantize computes it, to the bit: products of an f16
 * scale and a small integer are exact in f32, and where a minimum is added (Q4_1, Q5_1, the K
 * formats) an fma rounds the exact d*q + m once, as the two f32 operations of gguf-py do (their
 * product is exact). With AVX-512 the 4- and 5-bit formats look the weight up in a table of the
 * block's 16 or 32 possible values (vpermps / vpermt2ps) built per block (sub-block for the K
 * formats) with the same fma; elsewhere they convert the integer and apply the fma per vector.
 * (One difference of sign only: where an offset format's weight is d * 0 with d < 0, the fma
 * d*q - 8d gives +0 and gguf-py -0; Q6_K everywhere, Q4_0 / Q5_0 without AVX-512.)
 * So results are those of f32 math on the dequantized weights, up to the order of summation.
 */
#ifndef RL_CPU_QUANT_H
#define RL_CPU_QUANT_H

#include <string.h>

#include "internal.h"
#include "simd.h"

#define QB_INLINE static inline __attribute__((always_inline))

/* What a block kernel does with each vector w of weights [e, e + VL) of the block. */
enum { QB_DOT, QB_STORE };

/* QB_DOT: acc[a] += x[e:e+VL] * w (a in [0, 4): independent chains, so the fma latency does
 * not bound a row; the 32-element formats use 0 and 1 and the GEMV runs two blocks at a time on
 * acc and acc + 2, the K formats use all four); QB_STORE: out[e:] = w. mode and a are
 * compile-time constants at every call site. */
QB_INLINE void qb_emit(int mode, vf w, int64_t e, int a, const float *x, vf *acc, float *out) {
  if (mode == QB_STORE) vf_store(out + e, w);
  else acc[a] = vf_fma(vf_load(x + e), w, acc[a]);
}

/* f16 -> f32 of every bit pattern (matmul.c fills it when the library loads): a scale read
 * through it is a plain f32 load, which a broadcast takes straight from memory (a load port,
 * where vcvtph2ps and a register broadcast would take the shuffle port the unpacking needs). */
extern float cpu_f16_table[65536];

static inline float qb_f16(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return cpu_f16_table[h];
}

/* The map from a block's integer q to its weight s * q + b (one rounding; exact when b == 0 or
 * s*q + b is representable): the fma per vector, or with RL_LUT the table of q in [0, 16) (t0)
 * and [16, 32) (t1). */
typedef struct {
  vf s, b;
#ifdef RL_LUT
  vf t0, t1;
#endif
} qmap;

/* off != 0 (Q4_0: -8, Q5_0: -16; a compile-time constant): b is off * s and the table is
 * s * (q + off), exactly gguf-py's product (its sign of zero included). */
QB_INLINE qmap qmap_make(float s, float b, int n_values, int off) {
  qmap m;
  m.s = vf_set1(s);
  m.b = vf_set1(b);
#ifdef RL_LUT
  const vf q0 = off ? vf_add(vf_iota(), vf_set1((float)off)) : vf_iota();
  const vf q1 = vf_add(q0, vf_set1(16.0f));
  m.t0 = off ? vf_mul(m.s, q0) : vf_fma(m.s, q0, m.b);
  m.t1 = n_values <= 16 ? m.t0 : off ? vf_mul(m.s, q1) : vf_fma(m.s, q1, m.b);
#else
  (void)n_values;
  (void)off;
#endif
  return m;
}

/* q in [0, 16) (n_values 16) or [0, 32) (32) -> weights */
QB_INLINE vf qmap_apply(const qmap *m, vi q, int n_values) {
#ifdef RL_LUT
  return n_values > 16 ? vf_lut32(q, m->t0, m->t1) : vf_lut16(q, m->t0);
#else
  (void)n_values;
  return vf_fma(m->s, vf_from_vi(q), m->b);
#endif
}

/* The low nibbles of the bytes v as table indices: vf_lut16 reads only an index's low 4 bits. */
QB_INLINE vi qb_lo4(vi v, int n_values) {
#ifdef RL_LUT
  if (n_values <= 16) return v;
#endif
  (void)n_values;
  return vi_and(v, 15);
}

/* The K formats' 6-bit scales and mins of the 8 sub-blocks (gguf-py's get_scale_min) from the
 * 12 bytes at s: the bytes of u[0:2] are the scales, of u[2:4] the mins; four at a time (as
 * ggml's vec_dot_q4_K does). */
QB_INLINE void qb_scale_min_k4(const uint8_t *s, uint32_t u[4]) {
  memcpy(u, s, 12);
  const uint32_t m6 = 0x3f3f3f3fu, m4 = 0x0f0f0f0fu, m2 = 0x03030303u;
  u[3] = ((u[2] >> 4) & m4) | (((u[1] >> 6) & m2) << 4); /* mins 4..7 */
  const uint32_t mins03 = u[1] & m6;
  u[1] = (u[2] & m4) | (((u[0] >> 6) & m2) << 4); /* scales 4..7 */
  u[2] = mins03;
  u[0] &= m6; /* scales 0..3 */
}

/* Keeps the per-block scale tables in memory (the compiler would otherwise hold them in a vector
 * register and broadcast lanes with shuffles, on the port the unpacking needs): a broadcast from
 * memory is a plain load. */
#define QB_TABLES_IN_MEMORY() __asm__ volatile("" ::: "memory")

/* One block of dtype dt (a compile-time constant) at blk: QB_DOT accumulates x[0:QK] . w into
 * acc[0] + acc[1] (+ acc[2] + acc[3] for the K formats); QB_STORE writes the QK weights to
 * out. */
QB_INLINE void qblock(int dt, int mode, const uint8_t *blk, const float *x, vf *acc, float *out) {
  switch (dt) {
  case RL_Q8_0: { /* d, qs[32] int8 */
    const vf d = vf_set1(qb_f16(blk));
#pragma GCC unroll 4
    for (int e = 0; e < 32; e += VL)
      qb_emit(mode, vf_mul(d, vf_from_vi(vi_i8(blk + 2 + e))), e, (e / VL) & 1, x, acc, out);
    break;
  }
  case RL_Q4_0:   /* d, qs[16] */
  case RL_Q4_1: { /* d, m, qs[16] */
    const float d = qb_f16(blk);
    const qmap m = qmap_make(d, dt == RL_Q4_0 ? -8.0f * d : qb_f16(blk + 2), 16,
                             dt == RL_Q4_0 ? -8 : 0);
    const uint8_t *qs = blk + (dt == RL_Q4_0 ? 2 : 4);
#pragma GCC unroll 4
    for (int e = 0; e < 16; e += VL) {
      const vi v = vi_u8(qs + e);
      qb_emit(mode, qmap_apply(&m, qb_lo4(v, 16), 16), e, 0, x, acc, out);
      qb_emit(mode, qmap_apply(&m, vi_srl(v, 4), 16), e + 16, 1, x, acc, out);
    }
    break;
  }
  case RL_Q5_0:   /* d, qh uint32, qs[16] */
  case RL_Q5_1: { /* d, m, qh uint32, qs[16] */
    const float d = qb_f16(blk);
    const qmap m = qmap_make(d, dt == RL_Q5_0 ? -16.0f * d : qb_f16(blk + 2), 32,
                             dt == RL_Q5_0 ? -16 : 0);
    const uint8_t *p = blk + (dt == RL_Q5_0 ? 2 : 4);
    uint32_t qh;
    memcpy(&qh, p, 4);
#pragma GCC unroll 4
    for (int e = 0; e < 16; e += VL) {
      const vi v = vi_u8(p + 4 + e);
      qb_emit(mode, qmap_apply(&m, vi_or16_lanes(vi_and(v, 15), qh >> e), 32), e, 0, x, acc, out);
      qb_emit(mode, qmap_apply(&m, vi_or16_lanes(vi_srl(v, 4), qh >> (e + 16)), 32), e + 16, 1, x,
              acc, out);
    }
    break;
  }
  case RL_Q4_K:   /* d, dmin, scales[12], qs[128] */
  case RL_Q5_K: { /* d, dmin, scales[12], qh[32], qs[128] */
    const float d = qb_f16(blk), dmin = qb_f16(blk + 2);
    uint32_t scm[4]; /* the 8 scales, then the 8 mins, as bytes */
    qb_scale_min_k4(blk + 4, scm);
    float sb[16]; /* per sub-block j: w = sb[j] * q + sb[8 + j] (d * sc, -(dmin * m)) */
#pragma GCC unroll 2
    for (int i = 0; i < 16; i += VL)
      vf_store(sb + i, vf_mul(VL == 16 ? vf_halves(d, -dmin) : vf_set1(i < 8 ? d : -dmin),
                              vf_from_vi(vi_u8_words(scm + i / 4))));
    QB_TABLES_IN_MEMORY();
    const float *s = sb, *b = sb + 8;
    const int nv = dt == RL_Q4_K ? 16 : 32;
    const uint8_t *qh = blk + 16, *qs = blk + (dt == RL_Q4_K ? 16 : 48);
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) { /* 32 bytes of qs: sub-blocks 2c (low nibbles), 2c + 1 */
      const qmap lo = qmap_make(s[2 * c], b[2 * c], nv, 0);
      const qmap hi = qmap_make(s[2 * c + 1], b[2 * c + 1], nv, 0);
#pragma GCC unroll 4
      for (int e = 0; e < 32; e += VL) {
        const vi v = vi_u8(qs + 32 * c + e);
        vi ql = qb_lo4(v, nv), qhi = vi_srl(v, 4);
        if (dt == RL_Q5_K) {
          const vi h = vi_u8(qh + e);
          ql = vi_or16_bit(ql, h, 2 * c);
          qhi = vi_or16_bit(qhi, h, 2 * c + 1);
        }
        qb_emit(mode, qmap_apply(&lo, ql, nv), 64 * c + e, 2 * (c & 1), x, acc, out);
        qb_emit(mode, qmap_apply(&hi, qhi, nv), 64 * c + 32 + e, 2 * (c & 1) + 1, x, acc, out);
      }
    }
    break;
  }
  case RL_Q6_K: { /* ql[128], qh[64], scales[16] int8, d */
    const float d = qb_f16(blk + 208);
    float s[16], b[16]; /* per group of 16: w = s * q + b (b = -32 s) */
#pragma GCC unroll 2
    for (int i = 0; i < 16; i += VL) {
      const vf v = vf_mul(vf_set1(d), vf_from_vi(vi_i8(blk + 192 + i)));
      vf_store(s + i, v);
      vf_store(b + i, vf_mul(v, vf_set1(-32.0f)));
    }
    QB_TABLES_IN_MEMORY();
    for (int h = 0; h < 2; h++) {
      const uint8_t *ql = blk + 64 * h, *qh = blk + 128 + 32 * h;
      const float *sh = s + 8 * h, *bh = b + 8 * h;
#pragma GCC unroll 4
      for (int e = 0; e < 32; e += VL) {
        const vi a = vi_u8(ql + e), b = vi_u8(ql + 32 + e), q = vi_u8(qh + e);
        const int g = e / 16; /* scale group of 16 within the 32 */
        const vi q1 = vi_or(vi_and(a, 15), vi_and(vi_sll(q, 4), 0x30));
        const vi q2 = vi_or(vi_and(b, 15), vi_and(vi_sll(q, 2), 0x30));
        const vi q3 = vi_or(vi_srl(a, 4), vi_and(q, 0x30));
        const vi q4 = vi_or(vi_srl(b, 4), vi_and(vi_srl(q, 2), 0x30));
        const int64_t e0 = 128 * h + e;
#define QB_Q6(q, t, e_, a)                                                                        \
  qb_emit(mode, vf_fma(vf_set1(sh[2 * (t) + g]), vf_from_vi(q), vf_set1(bh[2 * (t) + g])), e_, a, \
          x, acc, out)
        QB_Q6(q1, 0, e0, 0);
        QB_Q6(q2, 1, e0 + 32, 1);
        QB_Q6(q3, 2, e0 + 64, 2);
        QB_Q6(q4, 3, e0 + 96, 3);
#undef QB_Q6
      }
    }
    break;
  }
  default: break;
  }
}

/* ----------------------------------------------------------------------------------------------
 * int8 activations (option "int8_activations", rl_matmul's GEMV on Q8_0, Q4_0, Q4_1, Q5_0, Q5_1
 * and Q4_K weights): x is quantized once per call to int8 per 32 values (qx8_quantize), then
 * every W block's dot product with x is an exact integer sum of int8 products (q8_isum), scaled
 * by d_w * d_x; the formats with a min m (Q4_1, Q5_1: w = d * q + m, q unsigned) add
 * m_w * d_x * sum(q_x), sum(q_x) exact too (llama.cpp's vec_dot_q4_1_q8_1). Q4_K does the same
 * per sub-block of 32 (q4k_i8: scale d * sc, min -dmin * m; x keeps its scale per 32, where
 * llama.cpp's Q8_K has one per 256). */

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define RL_I8_SIMD 1
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define RL_I8_VNNI(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#elif defined(__AVXVNNI__)
#define RL_I8_VNNI(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#endif
#endif

/* Whether rl_matmul's int8 path takes W of dtype dt. */
static inline int qx8_dtype(int dt) {
  return dt == RL_Q8_0 || dt == RL_Q4_0 || dt == RL_Q4_1 || dt == RL_Q5_0 || dt == RL_Q5_1 ||
         dt == RL_Q4_K;
}

/* The formats with a min (w = d * q + m; Q4_K: per sub-block of 32, d * sc * q - dmin * m):
 * their blocks add m_w * d_x * sum(q_x). */
QB_INLINE int qx8_has_min(int dt) { return dt == RL_Q4_1 || dt == RL_Q5_1 || dt == RL_Q4_K; }

/* The per-lane start value of a block's 8 int32 partial sums that q8_isum needs for a W block of
 * dtype dt (a compile-time constant) against an x block whose int8 values sum to sx: with VNNI,
 * Q8_0 weights enter vpdpbusd as the unsigned qw + 128 (qw ^ 0x80), which adds 128 * sx over the
 * 8 lanes; Q4_0 (Q5_0) weights enter as the unsigned q in [0, 16) ([0, 32)), where the weight is
 * q - 8 (q - 16), which adds 8 * sx (16 * sx), with or without VNNI. (AVX2 without VNNI
 * multiplies Q8_0's |qw| by qx with qw's sign instead: nothing to remove.) Q4_1 / Q5_1 weights
 * are the unsigned q itself: nothing to remove either. */
QB_INLINE int32_t qx8_lane_start(int dt, int32_t sx) {
#ifdef RL_I8_SIMD
  if (dt == RL_Q4_0) return -sx;
  if (dt == RL_Q5_0) return -2 * sx;
#ifdef RL_I8_VNNI
  if (dt == RL_Q8_0) return -16 * sx;
#endif
#endif
  (void)dt;
  (void)sx;
  return 0;
}

/* Quantizes x[0:K] (K a multiple of 32) per block of 32 as ggml's quantize_row_q8_0 does on x86:
 * amax = max|x|, d[b] = amax / 127, q = x * (127 / amax) rounded to nearest (ties to even), 0
 * where amax is 0; d stays f32 (ggml rounds it to f16 to store it). A block holding inf or NaN
 * gets d NaN (its dot products, and so the results, come out NaN). c[b] is qx8_lane_start of
 * the block for W dtype dt, or for the formats with a min the block's sum(q_x) (exact). */
QB_INLINE void qx8_quantize(int dt, const float *x, int64_t K, int8_t *q, float *d, int32_t *c) {
  for (int64_t b = 0; b < K / 32; b++) {
    const float *xb = x + 32 * b;
    int8_t *qb = q + 32 * b;
#ifdef RL_I8_SIMD
    __m256 v[4];
    for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(xb + 8 * i);
    const __m256 sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    /* x * 0 is 0, or NaN for inf and NaN (which max would drop) */
    __m256 z = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(v[0], zero), _mm256_mul_ps(v[1], zero)),
                             _mm256_add_ps(_mm256_mul_ps(v[2], zero), _mm256_mul_ps(v[3], zero)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    __m128 z4 = _mm_add_ps(_mm256_castps256_ps128(z), _mm256_extractf128_ps(z, 1));
    z4 = _mm_add_ps(z4, _mm_movehl_ps(z4, z4));
    z4 = _mm_add_ss(z4, _mm_movehdup_ps(z4));
    const float amax = _mm_cvtss_f32(m4), finite0 = _mm_cvtss_f32(z4);
    const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
    __m256i i[4];
    for (int j = 0; j < 4; j++)
      i[j] = _mm256_cvtps_epi32(
          _mm256_round_ps(_mm256_mul_ps(v[j], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    /* sum of the 32 values */
    __m256i s8 = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    const int32_t sx = _mm_cvtsi128_si32(s4);
    /* int32 -> int8 (all within [-127, 127]); the packs interleave 128-bit lanes: undo it */
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]),
                                         _mm256_packs_epi32(i[2], i[3]));
    _mm256_storeu_si256((__m256i *)qb, _mm256_permutevar8x32_epi32(
                                           p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
#else
    float amax = 0.0f, finite0 = 0.0f;
    for (int j = 0; j < 32; j++) {
      const float a = xb[j] < 0.0f ? -xb[j] : xb[j];
      if (a > amax) amax = a;
      finite0 += xb[j] * 0.0f;
    }
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int32_t sx = 0;
    for (int j = 0; j < 32; j++) {
      const float r = nearbyintf(xb[j] * id);
      qb[j] = (int8_t)(r != r ? 0 : r > 127.0f ? 127 : r < -127.0f ? -127 : r); /* NaN: 0 */
      sx += qb[j];
    }
#endif
    d[b] = finite0 == 0.0f ? amax / 127.0f : NAN;
    c[b] = qx8_has_min(dt) ? sx : qx8_lane_start(dt, sx);
  }
}

#ifdef RL_I8_VNNI
/* x as matmul.c's gemv_i8_rows reads it for the nibble formats (Q4_0 ... Q5_1, RL_I8_VNNI), per
 * pair of blocks p (2p, 2p + 1; nb / 2 pairs): qp[64p:] holds 2p's first 16 values, 2p + 1's
 * first 16 (against both blocks' low nibbles), 2p's last 16, 2p + 1's last 16 (the high ones);
 * per int32 lane l < 8 of the pair's sums (lanes 0..3 block 2p, 4..7 block 2p + 1)
 * dp[8p + l] the block's d_x and cp[8p + l] its lane start (each lane takes two vpdpbusd: twice
 * qx8_lane_start; 0 for the formats with a min). q, d, c as qx8_quantize left them. */
QB_INLINE void qx8_pairs(int dt, const int8_t *q, const float *d, const int32_t *c, int64_t nb,
                         int8_t *qp, float *dp, int32_t *cp) {
  const int has_min = qx8_has_min(dt);
  for (int64_t p = 0; p < nb / 2; p++) {
    const int8_t *a = q + 64 * p;
    int8_t *o = qp + 64 * p;
    memcpy(o, a, 16);
    memcpy(o + 16, a + 32, 16);
    memcpy(o + 32, a + 16, 16);
    memcpy(o + 48, a + 48, 16);
    for (int l = 0; l < 8; l++) {
      dp[8 * p + l] = d[2 * p + l / 4];
      cp[8 * p + l] = has_min ? 0 : 2 * c[2 * p + l / 4];
    }
  }
}
#endif

/* Where a block of dt (Q4_0 ... Q5_1) keeps its 16 bytes of nibbles qs: element i < 16 of the
 * block is the low nibble of qs[i], element 16 + i the high one (plus, for Q5_0 / Q5_1, bit i
 * of the uint32 qh as 16). */
QB_INLINE int qx8_qs(int dt) {
  return dt == RL_Q4_0 ? 2 : dt == RL_Q4_1 ? 4 : dt == RL_Q5_0 ? 6 : 8;
}

#ifdef RL_I8_SIMD
/* Byte i of the result: 16 where bit i of qh is set, else 0. */
QB_INLINE __m256i qx8_bits16(uint32_t qh) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
  return _mm256_maskz_mov_epi8((__mmask32)qh, _mm256_set1_epi8(16));
#else /* llama.cpp's bytes_from_bits_32: byte i gets byte i / 8 of qh, all ones iff bit i % 8 */
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                         0x0101010101010101, 0x0000000000000000);
  __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), shuf);
  b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_and_si256(_mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(16));
#endif
}

/* The W block blk of dtype dt (qx8_dtype, a compile-time constant) times the x block qx
 * (qx8_quantize, c its lane start): 8 int32 lanes whose sum is exactly sum_i qw_i * qx_i, qw the
 * weights' integers (Q4_0's q - 8, Q5_0's q - 16; Q4_1's and Q5_1's unsigned q, their min is the
 * caller's). */
QB_INLINE __m256i q8_isum(int dt, const uint8_t *blk, const int8_t *qx, int32_t c) {
  __m256i x = _mm256_loadu_si256((const __m256i *)qx), w;
  if (dt == RL_Q8_0) {
    w = _mm256_loadu_si256((const __m256i *)(blk + 2));
  } else { /* elements 0..15 are the low nibbles of qs, 16..31 the high ones */
    const __m128i v = _mm_loadu_si128((const __m128i *)(blk + qx8_qs(dt)));
    w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(15));
    if (dt == RL_Q5_0 || dt == RL_Q5_1) { /* the fifth bits */
      uint32_t qh;
      memcpy(&qh, blk + qx8_qs(dt) - 4, 4);
      w = _mm256_or_si256(w, qx8_bits16(qh));
    }
  }
  const int no_start = dt == RL_Q4_1 || dt == RL_Q5_1;
#ifdef RL_I8_VNNI
  if (dt == RL_Q8_0) w = _mm256_xor_si256(w, _mm256_set1_epi8((char)0x80)); /* qw + 128 */
  return RL_I8_VNNI(no_start ? _mm256_setzero_si256() : _mm256_set1_epi32(c), w, x);
#else
  if (dt == RL_Q8_0) { /* |qw| * (qx with qw's sign): pairs stay within int16 (2 * 128 * 127) */
    x = _mm256_sign_epi8(x, w);
    w = _mm256_abs_epi8(w);
  } /* else unsigned q < 32: pairs within 2 * 31 * 127 */
  const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
  return dt == RL_Q8_0 || no_start ? p : _mm256_add_epi32(p, _mm256_set1_epi32(c));
#endif
}

#ifdef RL_I8_VNNI
/* Two consecutive W blocks b0, b1 (b1 = b0 + one block) of a nibble format dt (Q4_0 ... Q5_1, a
 * compile-time constant) times x's pair qp (qx8_pairs; cp its lane starts): 8 int32 lanes, the
 * first 4 summing exactly to block b0's dot product, the last 4 to b1's (as q8_isum's). */
QB_INLINE __m256i qx8_isum_pair(int dt, const uint8_t *b0, const uint8_t *b1, const int8_t *qp,
                                const int32_t *cp) {
  const int qs = qx8_qs(dt);
  const __m256i v = _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b0 + qs))),
      _mm_loadu_si128((const __m128i *)(b1 + qs)), 1);
  const __m256i m15 = _mm256_set1_epi8(15);
  __m256i lo = _mm256_and_si256(v, m15), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m15);
  if (dt == RL_Q5_0 || dt == RL_Q5_1) { /* the fifth bits */
    uint32_t h0, h1;
    memcpy(&h0, b0 + qs - 4, 4);
    memcpy(&h1, b1 + qs - 4, 4);
    lo = _mm256_or_si256(lo, qx8_bits16((h0 & 0xffffu) | h1 << 16));
    hi = _mm256_or_si256(hi, qx8_bits16(h0 >> 16 | (h1 & 0xffff0000u)));
  }
  const __m256i st = qx8_has_min(dt) ? _mm256_setzero_si256()
                                     : _mm256_loadu_si256((const __m256i *)cp);
  const __m256i a = RL_I8_VNNI(st, lo, _mm256_loadu_si256((const __m256i *)qp));
  return RL_I8_VNNI(a, hi, _mm256_loadu_si256((const __m256i *)(qp + 32)));
}
#endif

/* Unsigned bytes w (< 128) times int8 x: 8 int32 lanes whose sum is the exact dot product. */
QB_INLINE __m256i qx8_dot_u(__m256i w, __m256i x) {
#ifdef RL_I8_VNNI
  return RL_I8_VNNI(_mm256_setzero_si256(), w, x);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
#endif
}

/* The Q4_K blocks blk[r] of `rows` W rows (1 or 2, a compile-time constant; they share the loads
 * of x) times x[0:256] as qx8_quantize left it (qx, and per 32 values dx[0:8]; xs[0:8] = d_x *
 * the sum of q_x, matmul_i8's): acc[2r] gains sum_j d * sc_j * (d_x_j * isum_j) over the sub-blocks j of low
 * nibbles and -sum_j dmin * m_j * (d_x_j * sum(q_x_j)) over all 8, acc[2r + 1] the first sum
 * over the sub-blocks of high nibbles; isum_j exact (q in [0, 16) unsigned times q_x). */
QB_INLINE void q4k_i8(int rows, const uint8_t *const *blk, const int8_t *qx, const float *dx,
                      const float *xsum, __m256 *acc) {
  const __m256 vdx = _mm256_loadu_ps(dx), xs = _mm256_loadu_ps(xsum);
  float f[2][8]; /* d * sc_j * d_x_j */
#pragma GCC unroll 2
  for (int r = 0; r < rows; r++) {
    uint32_t u[4]; /* the 8 scales, then the 8 mins, as bytes */
    qb_scale_min_k4(blk[r] + 4, u);
    /* from registers: bytes stored as words and loaded as one 8-byte value do not forward */
    const __m128i su = _mm_cvtsi64_si128((long long)(u[0] | (uint64_t)u[1] << 32));
    const __m128i mu = _mm_cvtsi64_si128((long long)(u[2] | (uint64_t)u[3] << 32));
    const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(su));
    const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mu));
    const __m256 d = _mm256_broadcast_ss(&cpu_f16_table[blk[r][0] | blk[r][1] << 8]);
    const __m256 dmin = _mm256_broadcast_ss(&cpu_f16_table[blk[r][2] | blk[r][3] << 8]);
    _mm256_storeu_ps(f[r], _mm256_mul_ps(_mm256_mul_ps(d, sc), vdx));
    acc[2 * r] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, mn), xs, acc[2 * r]);
  }
  QB_TABLES_IN_MEMORY();
  const __m256i m15 = _mm256_set1_epi8(15);
#pragma GCC unroll 4
  for (int c = 0; c < 4; c++) { /* 32 bytes of qs: sub-blocks 2c (low nibbles), 2c + 1 */
    const __m256i xl = _mm256_loadu_si256((const __m256i *)(qx + 64 * c));
    const __m256i xh = _mm256_loadu_si256((const __m256i *)(qx + 64 * c + 32));
#pragma GCC unroll 2
    for (int r = 0; r < rows; r++) {
      const __m256i v = _mm256_loadu_si256((const __m256i *)(blk[r] + 16 + 32 * c));
      const __m256i lo = _mm256_and_si256(v, m15), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m15);
      acc[2 * r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(qx8_dot_u(lo, xl)),
                                   _mm256_broadcast_ss(&f[r][2 * c]), acc[2 * r]);
      acc[2 * r + 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(qx8_dot_u(hi, xh)),
                                       _mm256_broadcast_ss(&f[r][2 * c + 1]), acc[2 * r + 1]);
    }
  }
}
#else
/* Scalar: sum_i qw_i * qx_i of the block (qw as above). */
QB_INLINE int32_t q8_isum(int dt, const uint8_t *blk, const int8_t *qx, int32_t c) {
  (void)c;
  int32_t s = 0;
  if (dt == RL_Q8_0) {
    for (int i = 0; i < 32; i++) s += (int8_t)blk[2 + i] * qx[i];
  } else {
    const uint8_t *qs = blk + qx8_qs(dt);
    const int five = dt == RL_Q5_0 || dt == RL_Q5_1;
    const int32_t off = dt == RL_Q4_0 ? 8 : dt == RL_Q5_0 ? 16 : 0;
    uint32_t qh = 0;
    if (five) memcpy(&qh, qs - 4, 4);
    for (int i = 0; i < 16; i++) {
      const int32_t lo = (qs[i] & 15) | (int32_t)((qh >> i) & 1) << 4;
      const int32_t hi = (qs[i] >> 4) | (int32_t)((qh >> (i + 16)) & 1) << 4;
      s += (lo - off) * qx[i] + (hi - off) * qx[i + 16];
    }
  }
  return s;
}

/* Scalar q4k_i8 for one row: acc[0] (+ acc[1]) gains the Q4_K block blk's sum over its 8
 * sub-blocks of d * sc_j * (d_x_j * isum_j) - dmin * m_j * (d_x_j * sum(q_x_j)). */
QB_INLINE void q4k_i8_row(const uint8_t *blk, const int8_t *qx, const float *dx, const float *xs,
                          float *acc) {
  uint32_t u[4];
  qb_scale_min_k4(blk + 4, u);
  const uint8_t *sc = (const uint8_t *)u, *mn = (const uint8_t *)(u + 2);
  const float d = qb_f16(blk), dmin = qb_f16(blk + 2);
  for (int j = 0; j < 8; j++) {
    const uint8_t *qs = blk + 16 + 32 * (j / 2);
    int32_t is = 0;
    for (int i = 0; i < 32; i++) is += (j & 1 ? qs[i] >> 4 : qs[i] & 15) * qx[32 * j + i];
    acc[j & 1] += d * (float)sc[j] * ((float)is * dx[j]) - dmin * (float)mn[j] * xs[j];
  }
}
#endif

#endif /* RL_CPU_QUANT_H */
