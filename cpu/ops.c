/*
 * CPU backend: the elementwise and row-wise ops (embedding, rmsnorm, rope, activations, row
 * gather and scatter-add, add, scale, argmax). Plain loops that gcc vectorizes; OpenMP over rows
 * once there is enough work.
 */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <string.h>

#include "internal.h"
#include "simd.h"

/* ----------------------------------------------------------------------------------------------
 * Embedding */

RL_API int32_t rl_embedding(rl_ctx *ctx, float *out, const void *table, int32_t dtype,
                            const int32_t *ids, int32_t n, int32_t dim, int32_t vocab) {
  CHECK_ARGS(rl_check_embedding, out, table, dtype, ids, n, dim, vocab);
#pragma omp parallel for schedule(static) num_threads(ctx->n_threads)                            \
    if ((int64_t)n * dim >= PAR_MIN_WORK)
  for (int32_t i = 0; i < n; i++) {
    float *o = out + (int64_t)i * dim; /* (dim) */
    if (rl_block_elems(dtype) > 1) { /* a block format: the row's bytes, dequantized */
      cpu_dequantize_row(o, (const uint8_t *)table + (uint64_t)ids[i] * rl_row_bytes(dtype, dim),
                         dtype, dim);
      continue;
    }
    const int64_t row = (int64_t)ids[i] * dim;
    for (int32_t c = 0; c < dim; c++) o[c] = load_f32(table, dtype, row + c);
  }
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * RMSNorm (Hugging Face LlamaRMSNorm, fp32; Gemma's (1 + w) via weight_offset) */

RL_API int32_t rl_rmsnorm(rl_ctx *ctx, float *out, const float *x, const void *w, int32_t wdtype,
                          int32_t rows, int32_t dim, float eps, float weight_offset) {
  CHECK_ARGS(rl_check_norm, out, x, w, wdtype, rows, dim, eps);
#pragma omp parallel for schedule(static) num_threads(ctx->n_threads)                            \
    if ((int64_t)rows * dim >= PAR_MIN_WORK)
  for (int32_t r = 0; r < rows; r++) {
    const float *xr = x + (int64_t)r * dim; /* (dim) */
    float *o = out + (int64_t)r * dim;      /* (dim) */
    const float inv = 1.0f / sqrtf(dot_f32(xr, xr, dim) / (float)dim + eps);
    for (int32_t c = 0; c < dim; c++) o[c] = xr[c] * inv * (load_f32(w, wdtype, c) + weight_offset);
  }
  return RL_OK;
}

RL_API int32_t rl_layernorm(rl_ctx *ctx, float *out, const float *x, const void *w, const void *b,
                            int32_t wdtype, int32_t rows, int32_t dim, float eps) {
  CHECK_ARGS(rl_check_norm, out, x, w, wdtype, rows, dim, eps);
#pragma omp parallel for schedule(static) num_threads(ctx->n_threads)                            \
    if ((int64_t)rows * dim >= PAR_MIN_WORK)
  for (int32_t r = 0; r < rows; r++) {
    const float *xr = x + (int64_t)r * dim; /* (dim) */
    float *o = out + (int64_t)r * dim;      /* (dim) */
    float mean = 0.0f, var = 0.0f;
    for (int32_t c = 0; c < dim; c++) mean += xr[c];
    mean /= (float)dim;
    for (int32_t c = 0; c < dim; c++) var += (xr[c] - mean) * (xr[c] - mean);
    const float inv = 1.0f / sqrtf(var / (float)dim + eps);
    for (int32_t c = 0; c < dim; c++) {
      const float bias = b ? load_f32(b, wdtype, c) : 0.0f;
      o[c] = (xr[c] - mean) * inv * load_f32(w, wdtype, c) + bias;
    }
  }
  return RL_OK;
}

RL_API int32_t rl_softcap(rl_ctx *ctx, float *out, const float *x, float cap, int64_t n) {
  CHECK_ARGS(rl_check_softcap, out, x, cap, n);
#pragma omp parallel for schedule(static) num_threads(ctx->n_threads) if (n >= PAR_MIN_WORK)
  for (int64_t i = 0; i < n; i++) out[i] = cap * tanhf(x[i] / cap);
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Rotary embedding (rotate_half layout, in place) */

RL_API int32_t rl_rope(rl_ctx *ctx, float *x, int32_t n_tokens, int32_t row_stride,
                       int32_t n_heads, int32_t head_dim, int32_t rot_dim,
                       const int32_t *positions, const float *inv_freq, float mscale) {
  CHECK_ARGS(rl_check_rope, x, n_tokens, row_stride, n_heads, head_dim, rot_dim, positions,
             inv_freq);
  const int32_t half = rot_dim / 2;
#pragma omp parallel for schedule(static) num_threads(ctx->n_threads)                            \
    if ((int64_t)n_tokens * n_heads * rot_dim >= PAR_MIN_WORK)
  for (int32_t t = 0; t < n_tokens; t++) {
    float *row = x + (int64_t)t * row_stride; /* (n_heads, head_dim) at the start of the row */
    for (int32_t i = 0; i < half; i++) {
      const float angle = (float)positions[t] * inv_freq[i];
      const float c = cosf(angle) * mscale, s = sinf(angle) * mscale;
      for (int32_t h = 0; h < n_heads; h++) {
        float *xh = row + (int64_t)h * head_dim;
        const float x0 = xh[i], x1 = xh[i + half];
        xh[i] = x0 * c - x1 * s;
        xh[i + half] = x1 * c + x0 * s;
      }
    }
  }
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Gated activation: out = act(gate) * up */

static inline float silu(float x) { return x / (1.0f + expf(-x)); }
static inline float gelu_tanh(float x) {
  const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
  return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}
static inline float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f)); }

/* One loop per activation so each inner loop is branch-free. */
#define ACT_MUL_LOOP(fn)                                                                          \
  _Pragma("omp parallel for schedule(static) num_threads(ctx->n_threads) if (parallel)")         \
  for (int32_t r = 0; r < rows; r++) {                                                            \
    const float *g = gate + (int64_t)r * in_stride, *u = up + (int64_t)r * in_stride;            \
    float *o = out + (int64_t)r * cols;                                                           \
    for (int32_t c = 0; c < cols; c++) o[c] = fn(g[c]) * u[c];                                    \
  }

RL_API int32_t rl_act_mul(rl_ctx *ctx, float *out, const float *gate, const float *up,
                          int32_t rows, int32_t cols, int32_t in_stride, int32_t act) {
  CHECK_ARGS(rl_check_act_mul, out, gate, up, rows, cols, in_stride, act);
  const int parallel = (int64_t)rows * cols * 8 >= PAR_MIN_WORK; /* 8: exp/tanh/erf cost more */
  switch (act) {
  case RL_ACT_SILU: ACT_MUL_LOOP(silu) break;
  case RL_ACT_GELU_TANH: ACT_MUL_LOOP(gelu_tanh) break;
  default: ACT_MUL_LOOP(gelu) break; /* RL_ACT_GELU (checked) */
  }
  return RL_OK;
}

/* Activation without a gate: out = act(x), in place allowed. */
#define ACT_LOOP(fn)                                                                              \
  _Pragma("omp parallel for schedule(static) num_threads(ctx->n_threads) if (parallel)")         \
  for (int64_t i = 0; i < n; i++) out[i] = fn(x[i]);

RL_API int32_t rl_act(rl_ctx *ctx, float *out, const float *x, int64_t n, int32_t act) {
  CHECK_ARGS(rl_check_act, out, x, n, act);
  const int parallel = n * 8 >= PAR_MIN_WORK; /* as rl_act_mul */
  switch (act) {
  case RL_ACT_SILU: ACT_LOOP(silu) break;
  case RL_ACT_GELU_TANH: ACT_LOOP(gelu_tanh) break;
  default: ACT_LOOP(gelu) break; /* RL_ACT_GELU (checked) */
  }
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Row gather and weighted scatter-add (a MoE layer's routed rows, one call per expert) */

RL_API int32_t rl_gather_rows(rl_ctx *ctx, float *out, const float *x, const int32_t *rows,
                              int32_t n, int32_t cols, int32_t x_rows) {
  CHECK_ARGS(rl_check_gather_rows, out, x, rows, n, cols, x_rows);
#pragma omp parallel for schedule(static) num_threads(ctx->n_threads)                            \
    if ((int64_t)n * cols >= 8 * PAR_MIN_WORK)
  for (int32_t i = 0; i < n; i++)
    memcpy(out + (int64_t)i * cols, x + (int64_t)rows[i] * cols, sizeof(float) * (size_t)cols);
  return RL_OK;
}

/* Sequential in i (the order the header defines for duplicate rows); threads split the columns,
 * so each element still sees its contributions in increasing i. p is rounded before the add
 * (-std=c11 does not contract it into an FMA). */
RL_API int32_t rl_scatter_add_rows(rl_ctx *ctx, float *out, const float *x, const int32_t *rows,
                                   const float *weights, int32_t n, int32_t cols,
                                   int32_t out_rows) {
  CHECK_ARGS(rl_check_scatter_add_rows, out, x, rows, weights, n, cols, out_rows);
  const int parallel = (int64_t)n * cols >= 8 * PAR_MIN_WORK && cols >= 64 * ctx->n_threads;
#pragma omp parallel num_threads(ctx->n_threads) if (parallel)
  {
    int32_t lo = 0, hi = cols;
#ifdef _OPENMP
    if (parallel) {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int32_t chunk = (cols + nt - 1) / nt;
      lo = t * chunk < cols ? t * chunk : cols;
      hi = lo + chunk < cols ? lo + chunk : cols;
    }
#endif
    for (int32_t i = 0; i < n; i++) {
      float *o = out + (int64_t)rows[i] * cols;
      const float *xi = x + (int64_t)i * cols, w = weights[i];
      for (int32_t c = lo; c < hi; c++) {
        const float p = w * xi[c];
        o[c] = o[c] + p;
      }
    }
  }
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Elementwise and reductions */

RL_API int32_t rl_add(rl_ctx *ctx, float *out, const float *a, const float *b, int64_t n) {
  CHECK_ARGS(rl_check_add, out, a, b, n);
#pragma omp parallel for schedule(static) num_threads(ctx->n_threads) if (n >= 8 * PAR_MIN_WORK)
  for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
  return RL_OK;
}

RL_API int32_t rl_scale(rl_ctx *ctx, float *out, const float *x, float s, int64_t n) {
  CHECK_ARGS(rl_check_scale, out, x, n);
#pragma omp parallel for schedule(static) num_threads(ctx->n_threads) if (n >= 8 * PAR_MIN_WORK)
  for (int64_t i = 0; i < n; i++) out[i] = x[i] * s;
  return RL_OK;
}

/* First index of the largest value; NaN never wins (a row of NaN gives 0). */
RL_API int32_t rl_argmax(rl_ctx *ctx, int32_t *out, const float *x, int32_t rows, int32_t cols) {
  CHECK_ARGS(rl_check_argmax, out, x, rows, cols);
#pragma omp parallel for schedule(static) num_threads(ctx->n_threads)                            \
    if ((int64_t)rows * cols >= PAR_MIN_WORK)
  for (int32_t r = 0; r < rows; r++) {
    const float *xr = x + (int64_t)r * cols;
    int32_t best = 0;
    float best_v = -INFINITY;
    for (int32_t c = 0; c < cols; c++)
      if (xr[c] > best_v) {
        best_v = xr[c];
        best = c;
      }
    out[r] = best;
  }
  return RL_OK;
}
