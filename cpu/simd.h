/*
 * A VL-lane f32 vector `vf`, so each kernel is written once and built for the widest unit the
 * compiler targets (-march=native), chosen at compile time:
 *  - AVX-512 (F+BW+VL): a __m512, VL = 16, 32 registers; partial loads use masks.
 *  - AVX2+FMA+F16C: a __m256, VL = 8, 16 registers.
 *  - otherwise a plain struct of 8 floats that gcc keeps in registers (and vectorizes with
 *    whatever the target has), so the library builds with any x86_64 or arm64 gcc.
 * RL_VREGS is the number of vector registers, which sizes the kernels' register tiles.
 *
 * Conversions are exact: f16 through F16C (vcvtph2ps), bf16 by a 16-bit shift; both equal
 * f16_to_f32 / bf16_to_f32 for every input.
 * `vi` is the matching vector of VL int32 lanes, with the few integer ops that unpack the block
 * formats' bytes (quant.h); AVX-512 adds register table lookups (RL_LUT: vf_lut16, vf_lut32).
 */
#ifndef RL_CPU_SIMD_H
#define RL_CPU_SIMD_H

#include <math.h>

#include "internal.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

#define RL_SIMD_NAME "avx512"
#define VL 16
#define RL_VREGS 32

typedef __m512 vf;

static inline __mmask16 vf_mask(int n) { return (__mmask16)((1u << n) - 1u); }
static inline vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline vf vf_set1(float a) { return _mm512_set1_ps(a); }
static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_store(float *p, vf a) { _mm512_storeu_ps(p, a); }
static inline vf vf_load_f16(const uint16_t *p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static inline vf vf_load_bf16(const uint16_t *p) {
  __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}
/* The first n (0 < n < VL) elements; the other lanes are 0 and no memory past them is read. */
static inline vf vf_load_part(const float *p, int n) {
  return _mm512_maskz_loadu_ps(vf_mask(n), p);
}
static inline vf vf_load_part_f16(const uint16_t *p, int n) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(vf_mask(n), p));
}
static inline vf vf_load_part_bf16(const uint16_t *p, int n) {
  __m512i u = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(vf_mask(n), p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}
static inline void vf_store_part(float *p, vf a, int n) {
  _mm512_mask_storeu_ps(p, vf_mask(n), a);
}
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); } /* a*b + c */
static inline float vf_sum(vf a) { return _mm512_reduce_add_ps(a); }
/* 2^n * y for integral n in [-126, 127]. */
static inline vf vf_scale2(vf y, vf n) { return _mm512_scalef_ps(y, n); }
static inline vf vf_round(vf a) {
  return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
/* a where x >= 0, else b (lane-wise) */
static inline vf vf_select_ge0(vf x, vf a, vf b) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ), b, a);
}
static inline float vf_hmax(vf a) { return _mm512_reduce_max_ps(a); }

/* s[0..3] = the sums of a, b, c, d: 13 shuffles and adds instead of 4 full reductions. */
static inline void vf_sum4(float *s, vf a, vf b, vf c, vf d) {
  /* per 128-bit lane: (a0+a2, b0+b2, a1+a3, b1+b3) */
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  /* per 128-bit lane: (a, b, c, d) partial sums */
  const __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
  const __m512 t = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)));
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(t),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(t), 1)));
  _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

/* VL int32 lanes, for the block formats' integer unpacking (quant.h). */
typedef __m512i vi;
#define RL_LUT 1 /* vf_lut16 / vf_lut32: table lookups in a register */
static inline vi vi_u8(const uint8_t *p) { /* VL bytes, zero-extended */
  return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}
static inline vi vi_i8(const uint8_t *p) { /* VL bytes, sign-extended */
  return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
}
static inline vi vi_set1(int32_t a) { return _mm512_set1_epi32(a); }
static inline vi vi_and(vi a, int32_t b) { return _mm512_and_si512(a, _mm512_set1_epi32(b)); }
static inline vi vi_or(vi a, vi b) { return _mm512_or_si512(a, b); }
static inline vi vi_srl(vi a, int n) { return _mm512_srli_epi32(a, (unsigned)n); }
static inline vi vi_sll(vi a, int n) { return _mm512_slli_epi32(a, (unsigned)n); }
/* a | 16 in lane i where bit i of bits is set */
static inline vi vi_or16_lanes(vi a, uint32_t bits) {
  return _mm512_mask_or_epi32(a, (__mmask16)bits, a, _mm512_set1_epi32(16));
}
/* a | 16 in the lanes where bit `bit` of h is set */
static inline vi vi_or16_bit(vi a, vi h, int bit) {
  return _mm512_mask_or_epi32(a, _mm512_test_epi32_mask(h, _mm512_set1_epi32(1 << bit)), a,
                              _mm512_set1_epi32(16));
}
static inline vf vf_from_vi(vi a) { return _mm512_cvtepi32_ps(a); }
/* vi_u8 of the VL bytes held in the words u[0 .. VL/4) (little-endian), built in registers */
static inline vi vi_u8_words(const uint32_t *u) {
  return _mm512_cvtepu8_epi32(_mm_setr_epi32((int)u[0], (int)u[1], (int)u[2], (int)u[3]));
}
/* a in lanes [0, VL/2), b in the rest */
static inline vf vf_halves(float a, float b) {
  return _mm512_insertf32x8(_mm512_set1_ps(a), _mm256_set1_ps(b), 1);
}
static inline vf vf_iota(void) {
  return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
/* t[idx] lane-wise (idx in [0, 16)), and lo/hi[idx] (idx in [0, 32)) */
static inline vf vf_lut16(vi idx, vf t) { return _mm512_permutexvar_ps(idx, t); }
static inline vf vf_lut32(vi idx, vf lo, vf hi) { return _mm512_permutex2var_ps(lo, idx, hi); }
#ifdef __F16C__
static inline float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }
#else
static inline float f16_scalar(uint16_t h) { return f16_to_f32(h); }
#endif

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#define RL_SIMD_NAME "avx2+fma+f16c"
#define VL 8
#define RL_VREGS 16

typedef __m256 vf;

static inline vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline vf vf_set1(float a) { return _mm256_set1_ps(a); }
static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_store(float *p, vf a) { _mm256_storeu_ps(p, a); }
static inline vf vf_load_f16(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static inline vf vf_load_bf16(const uint16_t *p) {
  __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
static inline __m256i vf_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
/* The first n (0 < n < VL) elements; the other lanes are 0 and no memory past them is read. */
static inline vf vf_load_part(const float *p, int n) { return _mm256_maskload_ps(p, vf_mask(n)); }
static inline vf vf_load_part_f16(const uint16_t *p, int n) {
  uint16_t t[8] = {0};
  memcpy(t, p, sizeof *p * (size_t)n);
  return vf_load_f16(t);
}
static inline vf vf_load_part_bf16(const uint16_t *p, int n) {
  uint16_t t[8] = {0};
  memcpy(t, p, sizeof *p * (size_t)n);
  return vf_load_bf16(t);
}
static inline void vf_store_part(float *p, vf a, int n) { _mm256_maskstore_ps(p, vf_mask(n), a); }
static inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); } /* a*b + c */
static inline vf vf_scale2(vf y, vf n) { /* 2^n built in the exponent field */
  const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
}
static inline vf vf_round(vf a) {
  return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
static inline vf vf_select_ge0(vf x, vf a, vf b) {
  return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ));
}
static inline float vf_sum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline float vf_hmax(vf a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
/* s[0..3] = the sums of a, b, c, d. */
static inline void vf_sum4(float *s, vf a, vf b, vf c, vf d) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}

/* VL int32 lanes, for the block formats' integer unpacking (quant.h). */
typedef __m256i vi;
static inline vi vi_u8(const uint8_t *p) { /* VL bytes, zero-extended */
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}
static inline vi vi_i8(const uint8_t *p) { /* VL bytes, sign-extended */
  return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
}
static inline vi vi_set1(int32_t a) { return _mm256_set1_epi32(a); }
static inline vi vi_and(vi a, int32_t b) { return _mm256_and_si256(a, _mm256_set1_epi32(b)); }
static inline vi vi_or(vi a, vi b) { return _mm256_or_si256(a, b); }
static inline vi vi_srl(vi a, int n) { return _mm256_srli_epi32(a, n); }
static inline vi vi_sll(vi a, int n) { return _mm256_slli_epi32(a, n); }
static inline vi vi_or16_lanes(vi a, uint32_t bits) {
  const vi b = _mm256_srlv_epi32(_mm256_set1_epi32((int32_t)bits),
                                 _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_or_si256(a, _mm256_slli_epi32(vi_and(b, 1), 4));
}
static inline vi vi_or16_bit(vi a, vi h, int bit) {
  return _mm256_or_si256(a, _mm256_slli_epi32(vi_and(_mm256_srli_epi32(h, bit), 1), 4));
}
static inline vf vf_from_vi(vi a) { return _mm256_cvtepi32_ps(a); }
static inline vi vi_u8_words(const uint32_t *u) {
  return _mm256_cvtepu8_epi32(_mm_setr_epi32((int)u[0], (int)u[1], 0, 0));
}
static inline vf vf_halves(float a, float b) {
  return _mm256_set_m128(_mm_set1_ps(b), _mm_set1_ps(a));
}
static inline float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }

#else

#define RL_SIMD_NAME "scalar"
#define VL 8
#define RL_VREGS 16

typedef struct {
  float f[8];
} vf;

static inline vf vf_zero(void) { return (vf){{0}}; }
static inline vf vf_set1(float a) {
  vf r;
  for (int i = 0; i < 8; i++) r.f[i] = a;
  return r;
}
static inline vf vf_load(const float *p) {
  vf r;
  memcpy(r.f, p, sizeof r.f);
  return r;
}
static inline void vf_store(float *p, vf a) { memcpy(p, a.f, sizeof a.f); }
static inline vf vf_load_f16(const uint16_t *p) {
  vf r;
  for (int i = 0; i < 8; i++) r.f[i] = f16_to_f32(p[i]);
  return r;
}
static inline vf vf_load_bf16(const uint16_t *p) {
  vf r;
  for (int i = 0; i < 8; i++) r.f[i] = bf16_to_f32(p[i]);
  return r;
}
/* The first n (0 < n < VL) elements; the other lanes are 0 and no memory past them is read. */
static inline vf vf_load_part(const float *p, int n) {
  vf r = vf_zero();
  memcpy(r.f, p, sizeof *p * (size_t)n);
  return r;
}
static inline vf vf_load_part_f16(const uint16_t *p, int n) {
  vf r = vf_zero();
  for (int i = 0; i < n; i++) r.f[i] = f16_to_f32(p[i]);
  return r;
}
static inline vf vf_load_part_bf16(const uint16_t *p, int n) {
  vf r = vf_zero();
  for (int i = 0; i < n; i++) r.f[i] = bf16_to_f32(p[i]);
  return r;
}
static inline void vf_store_part(float *p, vf a, int n) { memcpy(p, a.f, sizeof *p * (size_t)n); }
static inline vf vf_add(vf a, vf b) {
  for (int i = 0; i < 8; i++) a.f[i] += b.f[i];
  return a;
}
static inline vf vf_sub(vf a, vf b) {
  for (int i = 0; i < 8; i++) a.f[i] -= b.f[i];
  return a;
}
static inline vf vf_mul(vf a, vf b) {
  for (int i = 0; i < 8; i++) a.f[i] *= b.f[i];
  return a;
}
static inline vf vf_max(vf a, vf b) {
  for (int i = 0; i < 8; i++) a.f[i] = a.f[i] > b.f[i] ? a.f[i] : b.f[i];
  return a;
}
static inline vf vf_fma(vf a, vf b, vf c) {
  for (int i = 0; i < 8; i++) c.f[i] += a.f[i] * b.f[i];
  return c;
}
static inline float vf_sum(vf a) {
  float s = 0.0f;
  for (int i = 0; i < 8; i++) s += a.f[i];
  return s;
}
static inline float vf_hmax(vf a) {
  float m = a.f[0];
  for (int i = 1; i < 8; i++) m = a.f[i] > m ? a.f[i] : m;
  return m;
}
static inline vf vf_scale2(vf y, vf n) {
  for (int i = 0; i < 8; i++) y.f[i] = ldexpf(y.f[i], (int)n.f[i]);
  return y;
}
static inline vf vf_round(vf a) {
  for (int i = 0; i < 8; i++) a.f[i] = nearbyintf(a.f[i]);
  return a;
}
static inline vf vf_select_ge0(vf x, vf a, vf b) {
  for (int i = 0; i < 8; i++) a.f[i] = x.f[i] >= 0.0f ? a.f[i] : b.f[i];
  return a;
}
static inline void vf_sum4(float *s, vf a, vf b, vf c, vf d) {
  s[0] = vf_sum(a);
  s[1] = vf_sum(b);
  s[2] = vf_sum(c);
  s[3] = vf_sum(d);
}

/* VL int32 lanes, for the block formats' integer unpacking (quant.h). */
typedef struct {
  int32_t i[8];
} vi;
static inline vi vi_u8(const uint8_t *p) {
  vi r;
  for (int l = 0; l < 8; l++) r.i[l] = p[l];
  return r;
}
static inline vi vi_i8(const uint8_t *p) {
  vi r;
  for (int l = 0; l < 8; l++) r.i[l] = (int8_t)p[l];
  return r;
}
static inline vi vi_set1(int32_t a) {
  vi r;
  for (int l = 0; l < 8; l++) r.i[l] = a;
  return r;
}
static inline vi vi_and(vi a, int32_t b) {
  for (int l = 0; l < 8; l++) a.i[l] &= b;
  return a;
}
static inline vi vi_or(vi a, vi b) {
  for (int l = 0; l < 8; l++) a.i[l] |= b.i[l];
  return a;
}
static inline vi vi_srl(vi a, int n) {
  for (int l = 0; l < 8; l++) a.i[l] = (int32_t)((uint32_t)a.i[l] >> n);
  return a;
}
static inline vi vi_sll(vi a, int n) {
  for (int l = 0; l < 8; l++) a.i[l] = (int32_t)((uint32_t)a.i[l] << n);
  return a;
}
static inline vi vi_or16_lanes(vi a, uint32_t bits) {
  for (int l = 0; l < 8; l++) a.i[l] |= (int32_t)((bits >> l) & 1u) << 4;
  return a;
}
static inline vi vi_or16_bit(vi a, vi h, int bit) {
  for (int l = 0; l < 8; l++) a.i[l] |= ((h.i[l] >> bit) & 1) << 4;
  return a;
}
static inline vf vf_from_vi(vi a) {
  vf r;
  for (int l = 0; l < 8; l++) r.f[l] = (float)a.i[l];
  return r;
}
static inline vi vi_u8_words(const uint32_t *u) {
  vi r;
  for (int l = 0; l < 8; l++) r.i[l] = (int32_t)((u[l / 4] >> (8 * (l % 4))) & 0xffu);
  return r;
}
static inline vf vf_halves(float a, float b) {
  vf r;
  for (int l = 0; l < 8; l++) r.f[l] = l < 4 ? a : b;
  return r;
}
static inline float f16_scalar(uint16_t h) { return f16_to_f32(h); }

#endif

/* VL elements of a dtype-dt tensor starting at element i, as f32. dt is a compile-time
 * constant in the kernels, so the switch folds away. */
static inline vf vf_load_dt(const void *p, int dt, int64_t i) {
  switch (dt) {
  case RL_F16: return vf_load_f16((const uint16_t *)p + i);
  case RL_BF16: return vf_load_bf16((const uint16_t *)p + i);
  default: return vf_load((const float *)p + i);
  }
}

/* The n (0 < n < VL) elements from element i, the other lanes 0. */
static inline vf vf_load_part_dt(const void *p, int dt, int64_t i, int n) {
  switch (dt) {
  case RL_F16: return vf_load_part_f16((const uint16_t *)p + i, n);
  case RL_BF16: return vf_load_part_bf16((const uint16_t *)p + i, n);
  default: return vf_load_part((const float *)p + i, n);
  }
}

/* e^x lane-wise, for x <= 88 (softmax arguments are <= 0): the Cephes expf polynomial after
 * x = n ln2 + r, |r| <= ln2/2, within 2 ulp of expf; 0 below -87.33 (where expf is subnormal)
 * and for -inf. */
static inline vf vf_exp(vf x) {
  const float lo = -87.33654f; /* ln(FLT_MIN) */
  const vf xc = vf_max(x, vf_set1(lo));
  const vf n = vf_round(vf_mul(xc, vf_set1(1.44269504088896341f)));
  vf r = vf_fma(n, vf_set1(-0.693359375f), xc); /* ln2 split in two for an exact n * ln2 */
  r = vf_fma(n, vf_set1(2.12194440e-4f), r);
  vf p = vf_set1(1.9875691500e-4f);
  p = vf_fma(p, r, vf_set1(1.3981999507e-3f));
  p = vf_fma(p, r, vf_set1(8.3334519073e-3f));
  p = vf_fma(p, r, vf_set1(4.1665795894e-2f));
  p = vf_fma(p, r, vf_set1(1.6666665459e-1f));
  p = vf_fma(p, r, vf_set1(5.0000001201e-1f));
  p = vf_fma(p, vf_mul(r, r), vf_add(r, vf_set1(1.0f)));
  return vf_select_ge0(vf_sub(x, vf_set1(lo)), vf_scale2(p, n), vf_zero());
}

/* sum_i a[i] * b[i] with fp32 accumulation in two vector accumulators. */
static inline float dot_f32(const float *a, const float *b, int64_t n) {
  vf s0 = vf_zero(), s1 = vf_zero();
  int64_t i = 0;
  for (; i + 2 * VL <= n; i += 2 * VL) {
    s0 = vf_fma(vf_load(a + i), vf_load(b + i), s0);
    s1 = vf_fma(vf_load(a + i + VL), vf_load(b + i + VL), s1);
  }
  for (; i + VL <= n; i += VL) s0 = vf_fma(vf_load(a + i), vf_load(b + i), s0);
  if (i < n) s1 = vf_fma(vf_load_part(a + i, (int)(n - i)), vf_load_part(b + i, (int)(n - i)), s1);
  return vf_sum(vf_add(s0, s1));
}

#endif /* RL_CPU_SIMD_H */
