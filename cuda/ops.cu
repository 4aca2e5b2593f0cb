/*
 * CUDA backend: the elementwise and row-wise ops (embedding, rmsnorm, layernorm, rope,
 * activations, row gather and scatter-add, softcap, add, scale, argmax). Each follows the CPU
 * formula in cpu/ops.c operation for operation; row-wise ops use one block per row, elementwise
 * ops a grid-stride loop over 64-bit indices.
 */
#include <limits.h>

#include "internal.h"

constexpr int ROW_THREADS = 256;  /* one block per row: embedding, rmsnorm, argmax */
constexpr int ELEM_THREADS = 256; /* grid-stride elementwise kernels */

/* ----------------------------------------------------------------------------------------------
 * Embedding */

/* Grid: n blocks (one per id). */
template <int DT>
__global__ void __launch_bounds__(ROW_THREADS)
    embedding_kernel(float *__restrict__ out, const void *__restrict__ table,
                     const int32_t *__restrict__ ids, int dim) {
  const int64_t row = (int64_t)ids[blockIdx.x] * dim;
  float *o = out + (int64_t)blockIdx.x * dim; /* (dim) */
  for (int c = threadIdx.x; c < dim; c += blockDim.x) o[c] = load_elt<DT>(table, row + c);
}

RL_API int32_t rl_embedding(rl_ctx *ctx, float *out, const void *table, int32_t dtype,
                            const int32_t *ids, int32_t n, int32_t dim, int32_t vocab) {
  ENTER();
  CHECK_ARGS(rl_check_embedding, out, table, dtype, ids, n, dim, vocab);
  REQUIRE_ALIGNED(out, 4);
  if (is_plain_dtype(dtype)) REQUIRE_ALIGNED(table, dtype_size(dtype));
  void *d_ids = NULL;
  TRY(upload_params(ctx, op, SCR_IDS, ids, sizeof(int32_t) * (uint64_t)n, &d_ids));
  const int32_t *dids = static_cast<const int32_t *>(d_ids);
  /* ggml block formats: quant.cu */
  if (!is_plain_dtype(dtype))
    return launch_quant_embedding(ctx, op, out, table, dtype, dids, n, dim);
  switch (dtype) {
  case RL_F32:
    embedding_kernel<RL_F32><<<n, ROW_THREADS, 0, ctx->compute>>>(out, table, dids, dim);
    break;
  case RL_F16:
    embedding_kernel<RL_F16><<<n, ROW_THREADS, 0, ctx->compute>>>(out, table, dids, dim);
    break;
  default:
    embedding_kernel<RL_BF16><<<n, ROW_THREADS, 0, ctx->compute>>>(out, table, dids, dim);
    break;
  }
  LAUNCH_CHECK();
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * RMSNorm: out = x * (1 / sqrtf(mean(x^2) + eps)) * (w + weight_offset), fp32 */

/* Grid: rows blocks of ROW_THREADS. out may equal x: each element is read and written by the
 * same thread, and every read of the sum pass happens before block_sum's barrier. */
template <int DT>
__global__ void __launch_bounds__(ROW_THREADS)
    rmsnorm_kernel(float *out, const float *x, const void *__restrict__ w, int dim, float eps,
                   float weight_offset) {
  const float *xr = x + (int64_t)blockIdx.x * dim; /* (dim) */
  float *o = out + (int64_t)blockIdx.x * dim;      /* (dim) */
  float ss = 0.0f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) ss = fmaf(xr[c], xr[c], ss);
  ss = block_sum(ss);
  const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
  for (int c = threadIdx.x; c < dim; c += blockDim.x)
    o[c] = xr[c] * inv * (load_elt<DT>(w, c) + weight_offset);
}

RL_API int32_t rl_rmsnorm(rl_ctx *ctx, float *out, const float *x, const void *w, int32_t wdtype,
                          int32_t rows, int32_t dim, float eps, float weight_offset) {
  ENTER();
  CHECK_ARGS(rl_check_norm, out, x, w, wdtype, rows, dim, eps);
  REQUIRE_ALIGNED(out, 4);
  REQUIRE_ALIGNED(x, 4);
  REQUIRE_ALIGNED(w, dtype_size(wdtype));
  switch (wdtype) {
  case RL_F32:
    rmsnorm_kernel<RL_F32><<<rows, ROW_THREADS, 0, ctx->compute>>>(out, x, w, dim, eps,
                                                                   weight_offset);
    break;
  case RL_F16:
    rmsnorm_kernel<RL_F16><<<rows, ROW_THREADS, 0, ctx->compute>>>(out, x, w, dim, eps,
                                                                   weight_offset);
    break;
  default:
    rmsnorm_kernel<RL_BF16><<<rows, ROW_THREADS, 0, ctx->compute>>>(out, x, w, dim, eps,
                                                                    weight_offset);
    break;
  }
  LAUNCH_CHECK();
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * LayerNorm: out = (x - mean) * (1 / sqrtf(var + eps)) * w + b, biased variance, fp32 */

/* Grid: rows blocks of ROW_THREADS. Three passes over the row (sum, squared deviations, output);
 * out may equal x: the output pass runs after both reductions' barriers, and each element is
 * read and written by the same thread. The last multiply-add is not fused, like the CPU's. */
template <int DT>
__global__ void __launch_bounds__(ROW_THREADS)
    layernorm_kernel(float *out, const float *x, const void *__restrict__ w,
                     const void *__restrict__ b, int dim, float eps) {
  const float *xr = x + (int64_t)blockIdx.x * dim; /* (dim) */
  float *o = out + (int64_t)blockIdx.x * dim;      /* (dim) */
  float sum = 0.0f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) sum += xr[c];
  const float mean = block_sum(sum) / (float)dim;
  float var = 0.0f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    const float d = xr[c] - mean;
    var = fmaf(d, d, var);
  }
  var = block_sum(var);
  const float inv = 1.0f / sqrtf(var / (float)dim + eps);
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    const float bias = b ? load_elt<DT>(b, c) : 0.0f;
    o[c] = __fadd_rn(__fmul_rn((xr[c] - mean) * inv, load_elt<DT>(w, c)), bias);
  }
}

RL_API int32_t rl_layernorm(rl_ctx *ctx, float *out, const float *x, const void *w, const void *b,
                            int32_t wdtype, int32_t rows, int32_t dim, float eps) {
  ENTER();
  CHECK_ARGS(rl_check_norm, out, x, w, wdtype, rows, dim, eps);
  REQUIRE_ALIGNED(out, 4);
  REQUIRE_ALIGNED(x, 4);
  REQUIRE_ALIGNED(w, dtype_size(wdtype));
  if (b) REQUIRE_ALIGNED(b, dtype_size(wdtype));
  switch (wdtype) {
  case RL_F32:
    layernorm_kernel<RL_F32><<<rows, ROW_THREADS, 0, ctx->compute>>>(out, x, w, b, dim, eps);
    break;
  case RL_F16:
    layernorm_kernel<RL_F16><<<rows, ROW_THREADS, 0, ctx->compute>>>(out, x, w, b, dim, eps);
    break;
  default:
    layernorm_kernel<RL_BF16><<<rows, ROW_THREADS, 0, ctx->compute>>>(out, x, w, b, dim, eps);
    break;
  }
  LAUNCH_CHECK();
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Rotary embedding (rotate_half layout, in place) */

/* One thread per (token, head, i < half). The rotation uses __fmul_rn/__fadd_rn, which are never
 * fused into FMAs, so it rounds exactly like the CPU's x0 * c - x1 * s. */
__global__ void __launch_bounds__(ELEM_THREADS)
    rope_kernel(float *x, int n_tokens, int row_stride, int n_heads, int head_dim, int half,
                const int32_t *__restrict__ positions, const float *__restrict__ inv_freq,
                float mscale) {
  const int64_t total = (int64_t)n_tokens * n_heads * half;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int i = (int)(idx % half);
    const int64_t rest = idx / half;
    const int h = (int)(rest % n_heads);
    const int64_t t = rest / n_heads;
    const float angle = (float)positions[t] * inv_freq[i];
    const float c = cosf(angle) * mscale, s = sinf(angle) * mscale;
    float *xh = x + t * row_stride + (int64_t)h * head_dim;
    const float x0 = xh[i], x1 = xh[i + half];
    xh[i] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    xh[i + half] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
  }
}

RL_API int32_t rl_rope(rl_ctx *ctx, float *x, int32_t n_tokens, int32_t row_stride,
                       int32_t n_heads, int32_t head_dim, int32_t rot_dim,
                       const int32_t *positions, const float *inv_freq, float mscale) {
  ENTER();
  CHECK_ARGS(rl_check_rope, x, n_tokens, row_stride, n_heads, head_dim, rot_dim, positions,
             inv_freq);
  REQUIRE_ALIGNED(x, 4);
  const int32_t half = rot_dim / 2;
  void *d_pos = NULL, *d_freq = NULL;
  TRY(upload_params(ctx, op, SCR_POSITIONS, positions, sizeof(int32_t) * (uint64_t)n_tokens,
                    &d_pos));
  TRY(upload_params(ctx, op, SCR_INV_FREQ, inv_freq, sizeof(float) * (uint64_t)half, &d_freq));
  const int64_t total = (int64_t)n_tokens * n_heads * half;
  rope_kernel<<<grid_for(total, ELEM_THREADS), ELEM_THREADS, 0, ctx->compute>>>(
      x, n_tokens, row_stride, n_heads, head_dim, half, static_cast<const int32_t *>(d_pos),
      static_cast<const float *>(d_freq), mscale);
  LAUNCH_CHECK();
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Gated activation: out = act(gate) * up */

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float gelu_tanh(float x) {
  const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
  return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}
__device__ __forceinline__ float gelu(float x) {
  return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
}

/* In place (out == gate or out == up, in_stride == cols): each thread reads its element and then
 * writes it, so no __restrict__ here (the pointers alias). */
template <int ACT>
__global__ void __launch_bounds__(ELEM_THREADS)
    act_mul_kernel(float *out, const float *gate, const float *up, int rows, int cols,
                   int in_stride) {
  const int64_t total = (int64_t)rows * cols;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols, src = r * in_stride + c;
    const float g = gate[src];
    const float a = ACT == RL_ACT_SILU ? silu(g) : ACT == RL_ACT_GELU_TANH ? gelu_tanh(g) : gelu(g);
    out[i] = a * up[src];
  }
}

RL_API int32_t rl_act_mul(rl_ctx *ctx, float *out, const float *gate, const float *up,
                          int32_t rows, int32_t cols, int32_t in_stride, int32_t act) {
  ENTER();
  CHECK_ARGS(rl_check_act_mul, out, gate, up, rows, cols, in_stride, act);
  REQUIRE_ALIGNED(out, 4);
  REQUIRE_ALIGNED(gate, 4);
  REQUIRE_ALIGNED(up, 4);
  const unsigned blocks = grid_for((int64_t)rows * cols, ELEM_THREADS);
  switch (act) {
  case RL_ACT_SILU:
    act_mul_kernel<RL_ACT_SILU><<<blocks, ELEM_THREADS, 0, ctx->compute>>>(out, gate, up, rows,
                                                                           cols, in_stride);
    break;
  case RL_ACT_GELU_TANH:
    act_mul_kernel<RL_ACT_GELU_TANH><<<blocks, ELEM_THREADS, 0, ctx->compute>>>(
        out, gate, up, rows, cols, in_stride);
    break;
  default: /* RL_ACT_GELU (checked) */
    act_mul_kernel<RL_ACT_GELU><<<blocks, ELEM_THREADS, 0, ctx->compute>>>(out, gate, up, rows,
                                                                           cols, in_stride);
    break;
  }
  LAUNCH_CHECK();
  return RL_OK;
}

/* Activation without a gate: out = act(x); out may equal x (each element read, then written, by
 * the same thread). */
template <int ACT>
__global__ void __launch_bounds__(ELEM_THREADS) act_kernel(float *out, const float *x, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float v = x[i];
    out[i] = ACT == RL_ACT_SILU ? silu(v) : ACT == RL_ACT_GELU_TANH ? gelu_tanh(v) : gelu(v);
  }
}

RL_API int32_t rl_act(rl_ctx *ctx, float *out, const float *x, int64_t n, int32_t act) {
  ENTER();
  CHECK_ARGS(rl_check_act, out, x, n, act);
  REQUIRE_ALIGNED(out, 4);
  REQUIRE_ALIGNED(x, 4);
  const unsigned blocks = grid_for(n, ELEM_THREADS);
  switch (act) {
  case RL_ACT_SILU:
    act_kernel<RL_ACT_SILU><<<blocks, ELEM_THREADS, 0, ctx->compute>>>(out, x, n);
    break;
  case RL_ACT_GELU_TANH:
    act_kernel<RL_ACT_GELU_TANH><<<blocks, ELEM_THREADS, 0, ctx->compute>>>(out, x, n);
    break;
  default: /* RL_ACT_GELU (checked) */
    act_kernel<RL_ACT_GELU><<<blocks, ELEM_THREADS, 0, ctx->compute>>>(out, x, n);
    break;
  }
  LAUNCH_CHECK();
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Row gather and weighted scatter-add (a MoE layer's routed rows, one call per expert) */

/* Grid-stride over the n * cols output elements. */
__global__ void __launch_bounds__(ELEM_THREADS)
    gather_rows_kernel(float *__restrict__ out, const float *__restrict__ x,
                       const int32_t *__restrict__ rows, int n, int cols) {
  const int64_t total = (int64_t)n * cols;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = idx / cols, c = idx - i * cols;
    out[idx] = x[(int64_t)rows[i] * cols + c];
  }
}

/* One thread per column (grid-stride), each walking i = 0 .. n-1 in order: a destination row
 * named more than once gets its contributions in increasing i, like the CPU, with no atomics.
 * __fmul_rn/__fadd_rn are never fused, so the rounding is the CPU's p = w * x; o = o + p. */
constexpr int SCATTER_THREADS = 64; /* small blocks: the parallelism is only `cols` wide */
__global__ void __launch_bounds__(SCATTER_THREADS)
    scatter_add_rows_kernel(float *__restrict__ out, const float *__restrict__ x,
                            const int32_t *__restrict__ rows, const float *__restrict__ weights,
                            int n, int cols) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
    for (int i = 0; i < n; i++) {
      float *o = out + (int64_t)rows[i] * cols + c;
      *o = __fadd_rn(*o, __fmul_rn(weights[i], x[(int64_t)i * cols + c]));
    }
}

RL_API int32_t rl_gather_rows(rl_ctx *ctx, float *out, const float *x, const int32_t *rows,
                              int32_t n, int32_t cols, int32_t x_rows) {
  ENTER();
  CHECK_ARGS(rl_check_gather_rows, out, x, rows, n, cols, x_rows);
  REQUIRE_ALIGNED(out, 4);
  REQUIRE_ALIGNED(x, 4);
  void *d_rows = NULL;
  TRY(upload_params(ctx, op, SCR_ROWS, rows, sizeof(int32_t) * (uint64_t)n, &d_rows));
  gather_rows_kernel<<<grid_for((int64_t)n * cols, ELEM_THREADS), ELEM_THREADS, 0,
                       ctx->compute>>>(out, x, static_cast<const int32_t *>(d_rows), n, cols);
  LAUNCH_CHECK();
  return RL_OK;
}

RL_API int32_t rl_scatter_add_rows(rl_ctx *ctx, float *out, const float *x, const int32_t *rows,
                                   const float *weights, int32_t n, int32_t cols,
                                   int32_t out_rows) {
  ENTER();
  CHECK_ARGS(rl_check_scatter_add_rows, out, x, rows, weights, n, cols, out_rows);
  REQUIRE_ALIGNED(out, 4);
  REQUIRE_ALIGNED(x, 4);
  void *d_rows = NULL, *d_weights = NULL;
  TRY(upload_params(ctx, op, SCR_ROWS, rows, sizeof(int32_t) * (uint64_t)n, &d_rows));
  TRY(upload_params(ctx, op, SCR_ROW_WEIGHTS, weights, sizeof(float) * (uint64_t)n, &d_weights));
  scatter_add_rows_kernel<<<grid_for(cols, SCATTER_THREADS), SCATTER_THREADS, 0, ctx->compute>>>(
      out, x, static_cast<const int32_t *>(d_rows), static_cast<const float *>(d_weights), n,
      cols);
  LAUNCH_CHECK();
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Elementwise and reductions */

/* out may alias a or b: each element is read before it is written, by the same thread. */
__global__ void __launch_bounds__(ELEM_THREADS)
    add_kernel(float *out, const float *a, const float *b, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = a[i] + b[i];
}

__global__ void __launch_bounds__(ELEM_THREADS)
    scale_kernel(float *out, const float *x, float s, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = x[i] * s;
}

/* out = cap * tanh(x / cap); out may equal x. */
__global__ void __launch_bounds__(ELEM_THREADS)
    softcap_kernel(float *out, const float *x, float cap, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = cap * tanhf(x[i] / cap);
}

RL_API int32_t rl_softcap(rl_ctx *ctx, float *out, const float *x, float cap, int64_t n) {
  ENTER();
  CHECK_ARGS(rl_check_softcap, out, x, cap, n);
  REQUIRE_ALIGNED(out, 4);
  REQUIRE_ALIGNED(x, 4);
  softcap_kernel<<<grid_for(n, ELEM_THREADS), ELEM_THREADS, 0, ctx->compute>>>(out, x, cap, n);
  LAUNCH_CHECK();
  return RL_OK;
}

RL_API int32_t rl_add(rl_ctx *ctx, float *out, const float *a, const float *b, int64_t n) {
  ENTER();
  CHECK_ARGS(rl_check_add, out, a, b, n);
  REQUIRE_ALIGNED(out, 4);
  REQUIRE_ALIGNED(a, 4);
  REQUIRE_ALIGNED(b, 4);
  add_kernel<<<grid_for(n, ELEM_THREADS), ELEM_THREADS, 0, ctx->compute>>>(out, a, b, n);
  LAUNCH_CHECK();
  return RL_OK;
}

RL_API int32_t rl_scale(rl_ctx *ctx, float *out, const float *x, float s, int64_t n) {
  ENTER();
  CHECK_ARGS(rl_check_scale, out, x, n);
  REQUIRE_ALIGNED(out, 4);
  REQUIRE_ALIGNED(x, 4);
  scale_kernel<<<grid_for(n, ELEM_THREADS), ELEM_THREADS, 0, ctx->compute>>>(out, x, s, n);
  LAUNCH_CHECK();
  return RL_OK;
}

/* (value, index) b beats a: larger, or equal and earlier. NaN never compares larger. */
__device__ __forceinline__ bool beats(float bv, int bi, float av, int ai) {
  return bv > av || (bv == av && bi < ai);
}

/* Grid: rows blocks of ROW_THREADS; out[r] = first index of the row's largest value, NaN never
 * wins, 0 when no value beats -inf (like the CPU's scan from best = 0, best_v = -inf). */
__global__ void __launch_bounds__(ROW_THREADS)
    argmax_kernel(int32_t *__restrict__ out, const float *__restrict__ x, int cols) {
  __shared__ float wv[32];
  __shared__ int wi[32];
  const float *xr = x + (int64_t)blockIdx.x * cols;
  float best_v = -INFINITY;
  int best_i = INT_MAX; /* nothing found yet */
  for (int c = threadIdx.x; c < cols; c += blockDim.x) { /* increasing c: first index kept */
    const float v = xr[c];
    if (v > best_v) {
      best_v = v;
      best_i = c;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best_v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (beats(ov, oi, best_v, best_i)) {
      best_v = ov;
      best_i = oi;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  if (lane == 0) {
    wv[warp] = best_v;
    wi[warp] = best_i;
  }
  __syncthreads();
  if (warp == 0) {
    best_v = lane < n_warps ? wv[lane] : -INFINITY;
    best_i = lane < n_warps ? wi[lane] : INT_MAX;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best_v, o);
      const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
      if (beats(ov, oi, best_v, best_i)) {
        best_v = ov;
        best_i = oi;
      }
    }
    if (lane == 0) out[blockIdx.x] = best_i == INT_MAX ? 0 : best_i;
  }
}

RL_API int32_t rl_argmax(rl_ctx *ctx, int32_t *out, const float *x, int32_t rows, int32_t cols) {
  ENTER();
  CHECK_ARGS(rl_check_argmax, out, x, rows, cols);
  REQUIRE_ALIGNED(x, 4);
  void *d_out = NULL;
  TRY(scratch_reserve(ctx, op, SCR_ARGMAX, sizeof(int32_t) * (uint64_t)rows, &d_out));
  argmax_kernel<<<rows, ROW_THREADS, 0, ctx->compute>>>(static_cast<int32_t *>(d_out), x, cols);
  LAUNCH_CHECK();
  /* out is a (pageable) host buffer: copy back and wait. */
  CUDA_CHECK(cudaMemcpyAsync(out, d_out, sizeof(int32_t) * (size_t)rows, cudaMemcpyDeviceToHost,
                             ctx->compute));
  CUDA_CHECK(cudaStreamSynchronize(ctx->compute));
  return RL_OK;
}
