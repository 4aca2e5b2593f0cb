/*
 * CPU backend: the ops over strided 4-D views (ABI 5 tensor descriptors, ffi/rabbitllm.h):
 * rl_matmul_nd and rl_copy_nd. Descriptors are decoded and checked by the shared
 * rl_check_matmul_nd / rl_check_copy_nd (ffi/rl_shared.h) before anything runs.
 *
 * rl_matmul_nd: a task is one output row (a, b, m) and a range of its columns n; tasks run on
 * the OpenMP team once there is enough work. Three kernels, by w's layout:
 *  - n-stride 1 (a plain [K, N] matrix): an fp32 accumulator over a block of columns, to which
 *    k = 0, 1, ... adds x[k] times row k of w (increasing k per output element);
 *  - k-stride 1 (nn.Linear's [N, K] rows): a dot product of the x row with each w row, 4 rows of
 *    w at a time sharing the x loads (x copied to a contiguous buffer when its k-stride is not 1);
 *  - otherwise: scalar loops in increasing k.
 * w may be f32, f16 or bf16 (converted exactly to f32); accumulation is fp32.
 */
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "internal.h"
#include "simd.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define ND_COLS 256 /* the least columns per task when a row's columns are split among tasks */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static inline int thread_id(void) {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

/* ----------------------------------------------------------------------------------------------
 * rl_matmul_nd kernels. Element offsets: x row at xr (k-stride xs), w batch at w0 (k-stride wk,
 * n-stride wn), out row at o (n-stride os). */

/* Columns [nb, ne) of one output row, w with n-stride 1: o[n * os] = sum_k x[k * xs] *
 * w[w0 + k * wk + n]. ND_NC columns at a time accumulate in an fp32 buffer (in L1) while k runs
 * over K, 4 rows of w per pass (each vector of the buffer loaded once, then 4 FMAs in increasing
 * k), so w is read row by row, contiguously. */
#define ND_NC 512
ALWAYS_INLINE void row_wn1(float *o, int64_t os, const float *x, int64_t xs, const void *w,
                           int dt, int64_t w0, int64_t wk, int64_t K, int64_t nb, int64_t ne) {
  float acc[ND_NC] __attribute__((aligned(64)));
  for (int64_t c0 = nb; c0 < ne; c0 += ND_NC) {
    const int64_t nc = min64(ND_NC, ne - c0), full = nc / VL * VL;
    const int tail = (int)(nc - full);
    for (int64_t i = 0; i < nc; i++) acc[i] = 0.0f;
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
      const vf x0 = vf_set1(x[k * xs]), x1 = vf_set1(x[(k + 1) * xs]);
      const vf x2 = vf_set1(x[(k + 2) * xs]), x3 = vf_set1(x[(k + 3) * xs]);
      const int64_t r0 = w0 + k * wk + c0, r1 = r0 + wk, r2 = r1 + wk, r3 = r2 + wk;
      for (int64_t n = 0; n < full; n += VL) {
        vf a = vf_load(acc + n);
        a = vf_fma(x0, vf_load_dt(w, dt, r0 + n), a);
        a = vf_fma(x1, vf_load_dt(w, dt, r1 + n), a);
        a = vf_fma(x2, vf_load_dt(w, dt, r2 + n), a);
        a = vf_fma(x3, vf_load_dt(w, dt, r3 + n), a);
        vf_store(acc + n, a);
      }
      if (tail) {
        vf a = vf_load_part(acc + full, tail);
        a = vf_fma(x0, vf_load_part_dt(w, dt, r0 + full, tail), a);
        a = vf_fma(x1, vf_load_part_dt(w, dt, r1 + full, tail), a);
        a = vf_fma(x2, vf_load_part_dt(w, dt, r2 + full, tail), a);
        a = vf_fma(x3, vf_load_part_dt(w, dt, r3 + full, tail), a);
        vf_store_part(acc + full, a, tail);
      }
    }
    for (; k < K; k++) {
      const vf xk = vf_set1(x[k * xs]);
      const int64_t r = w0 + k * wk + c0;
      for (int64_t n = 0; n < full; n += VL)
        vf_store(acc + n, vf_fma(xk, vf_load_dt(w, dt, r + n), vf_load(acc + n)));
      if (tail)
        vf_store_part(acc + full,
                      vf_fma(xk, vf_load_part_dt(w, dt, r + full, tail),
                             vf_load_part(acc + full, tail)),
                      tail);
    }
    if (os == 1) memcpy(o + c0, acc, sizeof(float) * (size_t)nc);
    else
      for (int64_t i = 0; i < nc; i++) o[(c0 + i) * os] = acc[i];
  }
}

/* Columns [nb, ne) of one output row, w with k-stride 1: o[n * os] = x . w[w0 + n * wn ...],
 * x contiguous (K floats). 4 w rows at a time; a group of fewer computes copies of its last row
 * and drops them. */
ALWAYS_INLINE void row_wk1(float *o, int64_t os, const float *x, const void *w, int dt,
                           int64_t w0, int64_t wn, int64_t K, int64_t nb, int64_t ne) {
  for (int64_t n = nb; n < ne; n += 4) {
    const int rows = (int)min64(4, ne - n);
    int64_t wr[4];
    for (int r = 0; r < 4; r++) wr[r] = w0 + (n + (r < rows ? r : rows - 1)) * wn;
    vf acc[4] = {vf_zero(), vf_zero(), vf_zero(), vf_zero()};
    int64_t k = 0;
    for (; k + VL <= K; k += VL) {
      const vf xv = vf_load(x + k);
      for (int r = 0; r < 4; r++) acc[r] = vf_fma(xv, vf_load_dt(w, dt, wr[r] + k), acc[r]);
    }
    if (k < K) {
      const int part = (int)(K - k);
      const vf xv = vf_load_part(x + k, part);
      for (int r = 0; r < 4; r++)
        acc[r] = vf_fma(xv, vf_load_part_dt(w, dt, wr[r] + k, part), acc[r]);
    }
    float s[4];
    vf_sum4(s, acc[0], acc[1], acc[2], acc[3]);
    for (int r = 0; r < rows; r++) o[(n + r) * os] = s[r];
  }
}

/* Any strides: scalar, increasing k. */
static void row_generic(float *o, int64_t os, const float *x, int64_t xs, const void *w, int dt,
                        int64_t w0, int64_t wk, int64_t wn, int64_t K, int64_t nb, int64_t ne) {
  for (int64_t n = nb; n < ne; n++) {
    float s = 0.0f;
    for (int64_t k = 0; k < K; k++) s += x[k * xs] * load_f32(w, dt, w0 + k * wk + n * wn);
    o[n * os] = s;
  }
}

typedef void wn1_fn(float *o, int64_t os, const float *x, int64_t xs, const void *w, int64_t w0,
                    int64_t wk, int64_t K, int64_t nb, int64_t ne);
typedef void wk1_fn(float *o, int64_t os, const float *x, const void *w, int64_t w0, int64_t wn,
                    int64_t K, int64_t nb, int64_t ne);

#define ND_FNS(dt)                                                                                \
  static void wn1_##dt(float *o, int64_t os, const float *x, int64_t xs, const void *w,          \
                       int64_t w0, int64_t wk, int64_t K, int64_t nb, int64_t ne) {              \
    row_wn1(o, os, x, xs, w, dt, w0, wk, K, nb, ne);                                              \
  }                                                                                               \
  static void wk1_##dt(float *o, int64_t os, const float *x, const void *w, int64_t w0,          \
                       int64_t wn, int64_t K, int64_t nb, int64_t ne) {                           \
    row_wk1(o, os, x, w, dt, w0, wn, K, nb, ne);                                                  \
  }
ND_FNS(RL_F32)
ND_FNS(RL_F16)
ND_FNS(RL_BF16)
static wn1_fn *const wn1s[3] = {wn1_RL_F32, wn1_RL_F16, wn1_RL_BF16};
static wk1_fn *const wk1s[3] = {wk1_RL_F32, wk1_RL_F16, wk1_RL_BF16};

enum { PATH_WN1, PATH_WK1, PATH_GENERIC };

RL_API int32_t rl_matmul_nd(rl_ctx *ctx, float *out, const int64_t *out_desc, const float *x,
                            const int64_t *x_desc, const void *w, const int64_t *w_desc) {
  rl_view4 o, xv, wv;
  CHECK_ARGS(rl_check_matmul_nd, out, out_desc, x, x_desc, w, w_desc, &o, &xv, &wv);
  const int dt = wv.dtype;
  const int64_t B = o.shape[1], M = o.shape[2], N = o.shape[3], K = xv.shape[3];
  const int64_t rows = o.shape[0] * B * M;
  /* n-stride 1 first; then k-stride 1 (or a single k) */
  const int path = N > 1 && wv.stride[3] == 1    ? PATH_WN1
                   : K == 1 || wv.stride[2] == 1 ? PATH_WK1
                                                 : PATH_GENERIC;
  const int copy_x = path == PATH_WK1 && K > 1 && xv.stride[3] != 1;

  const double work = (double)rows * (double)N * (double)K; /* may exceed int64 */
  const int n_threads = work >= PAR_MIN_WORK ? ctx->n_threads : 1;
  /* Few rows: split each row's columns too, for about 4 tasks per thread. */
  int64_t splits = 1;
  if (n_threads > 1 && rows < 4 * (int64_t)n_threads)
    splits = min64((4 * (int64_t)n_threads + rows - 1) / rows, (N + ND_COLS - 1) / ND_COLS);
  if (splits < 1) splits = 1;
  const int64_t chunk = ((N + splits - 1) / splits + 63) / 64 * 64; /* whole vector blocks */
  splits = (N + chunk - 1) / chunk;
  const int64_t tasks = rows * splits;

  const size_t buf_floats = copy_x ? (size_t)(K + 15) / 16 * 16 : 0; /* per thread */
  float *buf = NULL;
  if (copy_x) {
    buf = aligned_alloc(64, sizeof(float) * buf_floats * (size_t)n_threads);
    if (!buf)
      return cpu_fail(ctx, RL_ERR_OOM, __func__, "out of memory for %d rows of x (%lld floats)",
                      n_threads, (long long)K);
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads) if (n_threads > 1)
  for (int64_t t = 0; t < tasks; t++) {
    const int64_t r = t / splits, nb = (t % splits) * chunk, ne = min64(N, nb + chunk);
    const int64_t a = r / (B * M), b = r / M % B, m = r % M;
    const float *xr = x + xv.offset + a * xv.stride[0] + b * xv.stride[1] + m * xv.stride[2];
    float *orow = out + o.offset + a * o.stride[0] + b * o.stride[1] + m * o.stride[2];
    const int64_t w0 = wv.offset + a * wv.stride[0] + b * wv.stride[1];
    switch (path) {
    case PATH_WN1: wn1s[dt](orow, o.stride[3], xr, xv.stride[3], w, w0, wv.stride[2], K, nb, ne);
      break;
    case PATH_WK1: {
      const float *xc = xr;
      if (copy_x) {
        float *mine = buf + buf_floats * (size_t)thread_id();
        for (int64_t k = 0; k < K; k++) mine[k] = xr[k * xv.stride[3]];
        xc = mine;
      }
      wk1s[dt](orow, o.stride[3], xc, w, w0, wv.stride[3], K, nb, ne);
      break;
    }
    default:
      row_generic(orow, o.stride[3], xr, xv.stride[3], w, dt, w0, wv.stride[2], wv.stride[3], K,
                  nb, ne);
      break;
    }
  }
  free(buf);
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * rl_copy_nd: one task per innermost row; memcpy when both inner strides are 1. */

RL_API int32_t rl_copy_nd(rl_ctx *ctx, void *dst, const int64_t *dst_desc, const void *src,
                          const int64_t *src_desc) {
  rl_view4 d, s;
  CHECK_ARGS(rl_check_copy_nd, dst, dst_desc, src, src_desc, &d, &s);
  const int64_t es = (int64_t)rl_dtype_size(d.dtype);
  const int64_t S1 = d.shape[1], S2 = d.shape[2], n = d.shape[3];
  const int64_t rows = d.shape[0] * S1 * S2;
  const int contiguous = n == 1 || (d.stride[3] == 1 && s.stride[3] == 1);
  char *const db = dst;
  const char *const sb = src;
#pragma omp parallel for schedule(static) num_threads(ctx->n_threads)                            \
    if (rows * n >= 8 * PAR_MIN_WORK)
  for (int64_t r = 0; r < rows; r++) {
    const int64_t i0 = r / (S1 * S2), i1 = r / S2 % S1, i2 = r % S2;
    char *o = db + (d.offset + i0 * d.stride[0] + i1 * d.stride[1] + i2 * d.stride[2]) * es;
    const char *i = sb + (s.offset + i0 * s.stride[0] + i1 * s.stride[1] + i2 * s.stride[2]) * es;
    if (contiguous) {
      memcpy(o, i, (size_t)(n * es));
    } else if (es == 4) {
      for (int64_t c = 0; c < n; c++) memcpy(o + c * d.stride[3] * 4, i + c * s.stride[3] * 4, 4);
    } else {
      for (int64_t c = 0; c < n; c++) memcpy(o + c * d.stride[3] * 2, i + c * s.stride[3] * 2, 2);
    }
  }
  return RL_OK;
}
