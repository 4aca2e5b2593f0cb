/*
 * An 8-lane f32 vector, so each kernel is written once. With AVX2+FMA+F16C it is a __m256;
 * otherwise it is a plain struct of 8 floats that gcc keeps in registers (and vectorizes with
 * whatever the target has), so the library builds with any x86_64 or arm64 gcc.
 */
#ifndef RL_CPU_SIMD_H
#define RL_CPU_SIMD_H

#include "internal.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#define RL_SIMD_NAME "avx2+fma+f16c"

typedef __m256 v8;

static inline v8 v8_zero(void) { return _mm256_setzero_ps(); }
static inline v8 v8_load(const float *p) { return _mm256_loadu_ps(p); }
static inline v8 v8_load_f16(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static inline v8 v8_load_bf16(const uint16_t *p) {
  __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
static inline v8 v8_add(v8 a, v8 b) { return _mm256_add_ps(a, b); }
static inline v8 v8_fma(v8 a, v8 b, v8 c) { return _mm256_fmadd_ps(a, b, c); } /* a*b + c */
static inline float v8_sum(v8 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

#else

#define RL_SIMD_NAME "scalar"

typedef struct {
  float f[8];
} v8;

static inline v8 v8_zero(void) { return (v8){{0}}; }
static inline v8 v8_load(const float *p) {
  v8 r;
  memcpy(r.f, p, sizeof r.f);
  return r;
}
static inline v8 v8_load_f16(const uint16_t *p) {
  v8 r;
  for (int i = 0; i < 8; i++) r.f[i] = f16_to_f32(p[i]);
  return r;
}
static inline v8 v8_load_bf16(const uint16_t *p) {
  v8 r;
  for (int i = 0; i < 8; i++) r.f[i] = bf16_to_f32(p[i]);
  return r;
}
static inline v8 v8_add(v8 a, v8 b) {
  for (int i = 0; i < 8; i++) a.f[i] += b.f[i];
  return a;
}
static inline v8 v8_fma(v8 a, v8 b, v8 c) {
  for (int i = 0; i < 8; i++) c.f[i] += a.f[i] * b.f[i];
  return c;
}
static inline float v8_sum(v8 a) {
  float s = 0.0f;
  for (int i = 0; i < 8; i++) s += a.f[i];
  return s;
}

#endif

/* 8 elements of a dtype-dt tensor starting at element i, as f32. dt is a compile-time
 * constant in the kernels, so the switch folds away. */
static inline v8 v8_load_dt(const void *p, int dt, int64_t i) {
  switch (dt) {
  case RL_F16: return v8_load_f16((const uint16_t *)p + i);
  case RL_BF16: return v8_load_bf16((const uint16_t *)p + i);
  default: return v8_load((const float *)p + i);
  }
}

/* sum_i a[i] * b[i] with fp32 accumulation in two vector accumulators. */
static inline float dot_f32(const float *a, const float *b, int64_t n) {
  v8 s0 = v8_zero(), s1 = v8_zero();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = v8_fma(v8_load(a + i), v8_load(b + i), s0);
    s1 = v8_fma(v8_load(a + i + 8), v8_load(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = v8_fma(v8_load(a + i), v8_load(b + i), s0);
  float s = v8_sum(v8_add(s0, s1));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

#endif /* RL_CPU_SIMD_H */
