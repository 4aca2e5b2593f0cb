/*
 * ggml block formats (ABI 6: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) as the weights of
 * rl_matmul and the table of rl_embedding. Dequantization follows gguf-py's dequantize_blocks
 * operation for operation (each product and sum rounded to f32, no contraction into an FMA, so a
 * dequantized weight is bit for bit gguf-py's); the dot products are f32 FMAs.
 *
 * Every kernel works on "parts": 8 consecutive elements of a block (4 parts per 32-element block,
 * 32 per 256-element block), dequantized in registers by deq8<DT>. Block rows are byte arrays (a
 * 34-byte Q8_0 block is not even 4-byte aligned, and a view may start anywhere), so the kernels
 * read single bytes and assemble f16 scales and the 32-bit qh words from them.
 *
 *  - M <= QGEMV_MAX_M (decode): one warp computes QGEMV_ROWS output columns (W rows) for all M
 *    rows of x; each lane dequantizes one part per step (a warp step covers 256 elements of K: 8
 *    blocks of 32, or one block of 256) and uses it for all M rows of x, staged in shared memory
 *    in chunks of K. Partial sums are reduced with warp shuffles. Memory bound on W as the plain
 *    GEMV is, reading ~1/4 .. 1/2 of f16's bytes.
 *  - M > QGEMV_MAX_M (prefill): a tiled GEMM, 64 x 64 outputs per block of 256 threads, K in
 *    steps of 32; each step every thread dequantizes one part of the W tile straight into shared
 *    memory (no f32 copy of W in device memory). W is dequantized ceil(M / 64) times and the
 *    math is plain fp32 FMA (no tensor cores, no int8 dot products): simple, correct, not fast.
 */
#include "internal.h"

namespace {

constexpr int QGEMV_MAX_M = 8;
constexpr int QGEMV_WARPS = 8;
constexpr int QGEMV_ROWS = 2; /* W rows per warp */
constexpr int QGEMV_THREADS = QGEMV_WARPS * 32;
constexpr int QGEMV_ROWS_PER_BLOCK = QGEMV_WARPS * QGEMV_ROWS;
constexpr int QGEMV_X_FLOATS = 8192; /* shared x staging: 32 KiB per block */
constexpr int QGEMV_STEP = 32 * 8;   /* elements of K per warp step */

constexpr int QGEMM_BM = 64, QGEMM_BN = 64, QGEMM_BK = 32, QGEMM_THREADS = 256;
static_assert(QGEMM_BN * QGEMM_BK == 8 * QGEMM_THREADS, "each thread dequantizes one part");
static_assert(QGEMM_BM * QGEMM_BK == 8 * QGEMM_THREADS, "each thread stages 8 x elements");
static_assert(TILE_LD == QGEMM_BM + 4 && TILE_LD == QGEMM_BN + 4, "the shared tile_fma / tile_store tiles");

constexpr int QEMB_THREADS = 256;

/* Elements and bytes per block (as rl_block_elems / rl_block_bytes, at compile time). */
template <int DT> struct qfmt;
template <> struct qfmt<RL_Q8_0> { static constexpr int qk = 32, bytes = 34; };
template <> struct qfmt<RL_Q4_0> { static constexpr int qk = 32, bytes = 18; };
template <> struct qfmt<RL_Q4_1> { static constexpr int qk = 32, bytes = 20; };
template <> struct qfmt<RL_Q5_0> { static constexpr int qk = 32, bytes = 22; };
template <> struct qfmt<RL_Q5_1> { static constexpr int qk = 32, bytes = 24; };
template <> struct qfmt<RL_Q4_K> { static constexpr int qk = 256, bytes = 144; };
template <> struct qfmt<RL_Q5_K> { static constexpr int qk = 256, bytes = 176; };
template <> struct qfmt<RL_Q6_K> { static constexpr int qk = 256, bytes = 210; };

/* The little-endian f16 at p (any alignment), as f32 (exact). */
__device__ __forceinline__ float f16_at(const uint8_t *p) {
  return __half2float(__ushort_as_half((unsigned short)(p[0] | (unsigned)p[1] << 8)));
}

/* The little-endian uint32 at p (any alignment). */
__device__ __forceinline__ uint32_t u32_at(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Q4_K / Q5_K: the 6-bit scale and min of sub-block j (0..7) from scales[12] (ggml's
 * get_scale_min_k4; gguf-py's Q4_K.get_scale_min). */
__device__ __forceinline__ void scale_min_k4(const uint8_t *s, int j, int &sc, int &mn) {
  if (j < 4) {
    sc = s[j] & 63;
    mn = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
    mn = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
  }
}

/* Elements 8p .. 8p + 7 of the block at b, as f32 (p < qk / 8). */
template <int DT> __device__ __forceinline__ void deq8(const uint8_t *b, int p, float (&w)[8]) {
  if constexpr (DT == RL_Q8_0) {
    const float d = f16_at(b);
    const uint8_t *q = b + 2 + 8 * p;
#pragma unroll
    for (int i = 0; i < 8; i++) w[i] = __fmul_rn(d, (float)(int8_t)q[i]);
  } else if constexpr (DT == RL_Q4_0 || DT == RL_Q4_1) {
    /* element e < 16: low nibble of qs[e]; e >= 16: high nibble of qs[e - 16] */
    constexpr int QS = DT == RL_Q4_0 ? 2 : 4;
    const float d = f16_at(b);
    const uint8_t *q = b + QS + (8 * p & 15);
    const int shift = p >= 2 ? 4 : 0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int nib = q[i] >> shift & 15;
      if constexpr (DT == RL_Q4_0) w[i] = __fmul_rn(d, (float)(nib - 8));
      else w[i] = __fadd_rn(__fmul_rn(d, (float)nib), f16_at(b + 2));
    }
  } else if constexpr (DT == RL_Q5_0 || DT == RL_Q5_1) {
    constexpr int QH = DT == RL_Q5_0 ? 2 : 4, QS = QH + 4;
    const float d = f16_at(b);
    const uint32_t qh = u32_at(b + QH);
    const uint8_t *q = b + QS + (8 * p & 15);
    const int shift = p >= 2 ? 4 : 0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int e = 8 * p + i;
      const int v = (q[i] >> shift & 15) | (int)(qh >> e & 1u) << 4;
      if constexpr (DT == RL_Q5_0) w[i] = __fmul_rn(d, (float)(v - 16));
      else w[i] = __fadd_rn(__fmul_rn(d, (float)v), f16_at(b + 2));
    }
  } else if constexpr (DT == RL_Q4_K || DT == RL_Q5_K) {
    /* 8 sub-blocks j of 32; sub-block j is the low (j even) or high (j odd) nibbles of
     * qs[32 (j / 2) .. + 32]; Q5_K's fifth bit of element l of sub-block j is bit j of qh[l]. */
    constexpr int QS = DT == RL_Q4_K ? 16 : 48;
    const int j = p >> 2, l0 = 8 * (p & 3);
    int sc, mn;
    scale_min_k4(b + 4, j, sc, mn);
    const float dl = __fmul_rn(f16_at(b), (float)sc), ml = __fmul_rn(f16_at(b + 2), (float)mn);
    const uint8_t *q = b + QS + 32 * (j >> 1) + l0;
    const int shift = (j & 1) * 4;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      int v = q[i] >> shift & 15;
      if constexpr (DT == RL_Q5_K) v |= (b[16 + l0 + i] >> j & 1) << 4;
      w[i] = __fsub_rn(__fmul_rn(dl, (float)v), ml);
    }
  } else {
    static_assert(DT == RL_Q6_K, "a block format");
    /* Two halves h of 128 elements: ql[64 h ..], qh[32 h ..]. Within a half, quarter t (32
     * elements, l = 0..31): ql[64 h + 32 (t & 1) + l] >> 4 (t >> 1) (low 4 bits) and
     * qh[32 h + l] >> 2 t (2 high bits); scales[16] (int8) per 16 elements. */
    const int h = p >> 4, t = (p >> 2) & 3, l0 = 8 * (p & 3);
    const float dl = __fmul_rn(f16_at(b + 208), (float)(int8_t)b[192 + (p >> 1)]);
    const uint8_t *ql = b + 64 * h + 32 * (t & 1) + l0, *qh = b + 128 + 32 * h + l0;
    const int shift = (t >> 1) * 4;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int v = ((ql[i] >> shift & 15) | (qh[i] >> 2 * t & 3) << 4) - 32;
      w[i] = __fmul_rn(dl, (float)v);
    }
  }
}

/* Part k / 8 of a W row (k: element index, a multiple of 8), dequantized. */
template <int DT>
__device__ __forceinline__ void deq_at(const uint8_t *row, int k, float (&w)[8]) {
  constexpr int QK = qfmt<DT>::qk;
  deq8<DT>(row + (int64_t)(k / QK) * qfmt<DT>::bytes, (k % QK) / 8, w);
}

/* Grid: ceil(N / QGEMV_ROWS_PER_BLOCK) blocks of QGEMV_THREADS. Warp w of block b computes
 * out[:, n] for n in [(b * QGEMV_WARPS + w) * QGEMV_ROWS, + QGEMV_ROWS). K is a multiple of the
 * block (so of 32), hence a lane's 8 elements never straddle the end of K. */
template <int DT, int M>
__global__ void __launch_bounds__(QGEMV_THREADS)
    qgemv_kernel(float *__restrict__ out, const float *__restrict__ x,
                 const uint8_t *__restrict__ w, const void *__restrict__ bias, int bias_dt, int N,
                 int K) {
  /* K per staged chunk: a multiple of the warp step (and so of every block size) */
  constexpr int KC = QGEMV_X_FLOATS / M / QGEMV_STEP * QGEMV_STEP;
  static_assert(KC >= QGEMV_STEP && M * KC <= QGEMV_X_FLOATS, "x chunk");
  __shared__ __align__(16) float xs[M * KC]; /* (M, KC) */

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n0 = (blockIdx.x * QGEMV_WARPS + warp) * QGEMV_ROWS;
  const int64_t row_bytes = (int64_t)(K / qfmt<DT>::qk) * qfmt<DT>::bytes;
  const uint8_t *wrow[QGEMV_ROWS];
#pragma unroll
  for (int r = 0; r < QGEMV_ROWS; r++) { /* rows past N re-read row N - 1; never stored */
    const int n = n0 + r < N ? n0 + r : N - 1;
    wrow[r] = w + (int64_t)n * row_bytes;
  }
  float acc[QGEMV_ROWS][M];
#pragma unroll
  for (int r = 0; r < QGEMV_ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++) acc[r][m] = 0.0f;

  for (int kc = 0; kc < K; kc += KC) {
    const int len = K - kc < KC ? K - kc : KC; /* a multiple of 32 */
    __syncthreads(); /* every warp is done with the previous chunk */
    for (int i = threadIdx.x; i < M * len; i += QGEMV_THREADS) {
      const int m = i / len, k = i - m * len;
      xs[m * KC + k] = x[(int64_t)m * K + kc + k];
    }
    __syncthreads();
    for (int k = lane * 8; k < len; k += QGEMV_STEP) {
      float wv[QGEMV_ROWS][8];
#pragma unroll
      for (int r = 0; r < QGEMV_ROWS; r++) deq_at<DT>(wrow[r], kc + k, wv[r]);
#pragma unroll
      for (int m = 0; m < M; m++) {
        const float4 xa = *reinterpret_cast<const float4 *>(xs + m * KC + k);
        const float4 xb = *reinterpret_cast<const float4 *>(xs + m * KC + k + 4);
        const float xv[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
        for (int r = 0; r < QGEMV_ROWS; r++)
#pragma unroll
          for (int e = 0; e < 8; e++) acc[r][m] = fmaf(wv[r][e], xv[e], acc[r][m]);
      }
    }
  }

  gemv_store<QGEMV_ROWS, M>(acc, out, bias, bias_dt, N, n0, lane);
}

/* Grid: (ceil(N / 64), ceil(M / 64)) blocks of 256 threads; block (bx, by) computes
 * out[by*64 : +64, bx*64 : +64]. Thread (ty, tx) = (tid / 16, tid % 16) owns rows ty + 16 i and
 * columns tx + 16 j, i, j < 4. Each K step of 32, thread tid dequantizes part tid % 4 of the
 * 32 elements of W row n0 + tid / 4 into the tile. */
template <int DT>
__global__ void __launch_bounds__(QGEMM_THREADS)
    qgemm_kernel(float *__restrict__ out, const float *__restrict__ x,
                 const uint8_t *__restrict__ w, const void *__restrict__ bias, int bias_dt, int M,
                 int N, int K) {
  __shared__ float xs[QGEMM_BK][TILE_LD]; /* x tile, transposed: xs[k][m] */
  __shared__ float ws[QGEMM_BK][TILE_LD]; /* W tile, transposed: ws[k][n] */
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.y * QGEMM_BM, n0 = blockIdx.x * QGEMM_BN;
  const int64_t row_bytes = (int64_t)(K / qfmt<DT>::qk) * qfmt<DT>::bytes;
  const int wr = tid / 4, wp = tid % 4; /* the W row (of the tile) and part this thread loads */
  const uint8_t *wrow = n0 + wr < N ? w + (int64_t)(n0 + wr) * row_bytes : nullptr;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

  for (int k0 = 0; k0 < K; k0 += QGEMM_BK) { /* K is a multiple of 32 */
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int e = tid + i * QGEMM_THREADS; /* 0 .. 2047 */
      const int r = e / QGEMM_BK, kk = e % QGEMM_BK, m = m0 + r;
      xs[kk][r] = m < M ? x[(int64_t)m * K + k0 + kk] : 0.0f;
    }
    float wv[8];
    if (wrow) {
      deq_at<DT>(wrow, k0 + 8 * wp, wv);
    } else {
#pragma unroll
      for (int i = 0; i < 8; i++) wv[i] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < 8; i++) ws[8 * wp + i][wr] = wv[i];
    __syncthreads();
    tile_fma<QGEMM_BK>(xs, ws, acc, tx, ty);
    __syncthreads();
  }

  tile_store(acc, out, bias, bias_dt, M, N, m0, n0, tx, ty);
}

/* Grid: n blocks (one per id); each thread dequantizes parts of the row (dim a multiple of the
 * block) straight into out. */
template <int DT>
__global__ void __launch_bounds__(QEMB_THREADS)
    qembedding_kernel(float *__restrict__ out, const uint8_t *__restrict__ table,
                      const int32_t *__restrict__ ids, int dim) {
  const uint8_t *row =
      table + (int64_t)ids[blockIdx.x] * (int64_t)(dim / qfmt<DT>::qk) * qfmt<DT>::bytes;
  float *o = out + (int64_t)blockIdx.x * dim; /* (dim) */
  for (int k = threadIdx.x * 8; k < dim; k += QEMB_THREADS * 8) {
    float v[8];
    deq_at<DT>(row, k, v);
#pragma unroll
    for (int i = 0; i < 8; i++) o[k + i] = v[i];
  }
}

/* ----------------------------------------------------------------------------------------------
 * Dispatch */

typedef void qgemv_fn(float *, const float *, const uint8_t *, const void *, int, int, int);
typedef void qgemm_fn(float *, const float *, const uint8_t *, const void *, int, int, int, int);
typedef void qemb_fn(float *, const uint8_t *, const int32_t *, int);

template <int DT> qgemv_fn *qgemv_for(int M) {
  switch (M) {
  case 1: return qgemv_kernel<DT, 1>;
  case 2: return qgemv_kernel<DT, 2>;
  case 3: return qgemv_kernel<DT, 3>;
  case 4: return qgemv_kernel<DT, 4>;
  case 5: return qgemv_kernel<DT, 5>;
  case 6: return qgemv_kernel<DT, 6>;
  case 7: return qgemv_kernel<DT, 7>;
  case 8: return qgemv_kernel<DT, 8>;
  default: return nullptr;
  }
}
static_assert(QGEMV_MAX_M == 8, "qgemv_for covers M = 1 .. 8");

/* The kernels of one block format. */
struct qkernels {
  qgemv_fn *(*gemv)(int M);
  qgemm_fn *gemm;
  qemb_fn *embedding;
};

template <int DT> constexpr qkernels qkernels_of() {
  return {qgemv_for<DT>, qgemm_kernel<DT>, qembedding_kernel<DT>};
}

/* The kernels of dtype dt, or NULL when dt is not a block format this file implements. */
const qkernels *qkernels_for(int32_t dt) {
  static const qkernels table[] = {
      qkernels_of<RL_Q8_0>(), qkernels_of<RL_Q4_0>(), qkernels_of<RL_Q4_1>(),
      qkernels_of<RL_Q5_0>(), qkernels_of<RL_Q5_1>(), qkernels_of<RL_Q4_K>(),
      qkernels_of<RL_Q5_K>(), qkernels_of<RL_Q6_K>(),
  };
  static_assert(sizeof table / sizeof *table == RL_Q6_K - RL_Q8_0 + 1, "one entry per format");
  static_assert(RL_DTYPE_COUNT == RL_Q6_K + 1, "a dtype added to rl_dtype needs kernels here");
  return dt >= RL_Q8_0 && dt <= RL_Q6_K ? &table[dt - RL_Q8_0] : nullptr;
}

} /* namespace */

int32_t launch_quant_matmul(rl_ctx *ctx, const char *op, float *out, const float *x,
                            const void *w, int32_t wdtype, const void *bias, int32_t bias_dtype,
                            int32_t M, int32_t N, int32_t K) {
  const qkernels *k = qkernels_for(wdtype);
  if (!k)
    return cu_fail(ctx, RL_ERR_UNSUPPORTED, op, "wdtype %d (%s) has no CUDA kernel", (int)wdtype,
                   rl_dtype_name(wdtype));
  if (K % rl_block_elems(wdtype) != 0) /* rl_check_matmul refuses it first */
    return cu_fail(ctx, RL_ERR_INVALID, op, "K %d is not a multiple of %s's block", (int)K,
                   rl_dtype_name(wdtype));
  const uint8_t *wb = static_cast<const uint8_t *>(w);
  if (M <= QGEMV_MAX_M) {
    qgemv_fn *fn = k->gemv(M);
    REQUIRE(fn != NULL, "no GEMV kernel for M = %d", M);
    const unsigned blocks = (unsigned)((N + QGEMV_ROWS_PER_BLOCK - 1) / QGEMV_ROWS_PER_BLOCK);
    fn<<<blocks, QGEMV_THREADS, 0, ctx->compute>>>(out, x, wb, bias, bias_dtype, N, K);
    LAUNCH_CHECK();
    return RL_OK;
  }
  const int64_t grid_y = ((int64_t)M + QGEMM_BM - 1) / QGEMM_BM;
  if (grid_y > 65535)
    return cu_fail(ctx, RL_ERR_UNSUPPORTED, op, "M = %d needs %lld row blocks (max 65535)", M,
                   (long long)grid_y);
  const dim3 grid((unsigned)((N + QGEMM_BN - 1) / QGEMM_BN), (unsigned)grid_y);
  qgemm_fn *fn = k->gemm;
  fn<<<grid, QGEMM_THREADS, 0, ctx->compute>>>(out, x, wb, bias, bias_dtype, M, N, K);
  LAUNCH_CHECK();
  return RL_OK;
}

int32_t launch_quant_embedding(rl_ctx *ctx, const char *op, float *out, const void *table,
                               int32_t dtype, const int32_t *d_ids, int32_t n, int32_t dim) {
  const qkernels *k = qkernels_for(dtype);
  if (!k)
    return cu_fail(ctx, RL_ERR_UNSUPPORTED, op, "dtype %d (%s) has no CUDA kernel", (int)dtype,
                   rl_dtype_name(dtype));
  if (dim % rl_block_elems(dtype) != 0) /* rl_check_embedding refuses it first */
    return cu_fail(ctx, RL_ERR_INVALID, op, "dim %d is not a multiple of %s's block", (int)dim,
                   rl_dtype_name(dtype));
  qemb_fn *fn = k->embedding;
  fn<<<n, QEMB_THREADS, 0, ctx->compute>>>(out, static_cast<const uint8_t *>(table), d_ids, dim);
  LAUNCH_CHECK();
  return RL_OK;
}
