/*
 * rl_matmul: out[M,N] = x[M,K] . W[N,K]^T (+ bias[N]); W and bias f32/f16/bf16; fp32 accumulate.
 * W in a ggml block format (Q8_0 ... Q6_K) goes to quant.cu's kernels.
 *
 *  - M <= GEMV_MAX_M (decode, a few rows): memory bound on W. One warp computes GEMV_ROWS output
 *    columns (W rows) for all M x rows; the lanes of the warp stream the W rows, 16 bytes per
 *    lane per load when every W row starts 16-byte aligned (w aligned and K * elt % 16 == 0),
 *    else one element per lane per load (still coalesced). x is staged in shared memory in
 *    chunks of K; each lane's partial dot products are summed with warp shuffles.
 *  - M > GEMV_MAX_M (prefill): a plain tiled GEMM, 64 x 64 outputs per block of 256 threads,
 *    each thread 4 x 4 outputs, K in steps of 16 through shared memory (W converted to f32 as it
 *    is staged). Simple and correct rather than fast: fp32 FMA, no tensor cores.
 */
#include "internal.h"

constexpr int GEMV_MAX_M = 8;
constexpr int GEMV_WARPS = 8;        /* warps per block */
constexpr int GEMV_ROWS = 2;         /* W rows per warp */
constexpr int GEMV_X_FLOATS = 8192;  /* shared x staging: 32 KiB per block */
constexpr int GEMV_THREADS = GEMV_WARPS * 32;
constexpr int GEMV_ROWS_PER_BLOCK = GEMV_WARPS * GEMV_ROWS;

constexpr int GEMM_BM = 64, GEMM_BN = 64, GEMM_BK = 16, GEMM_THREADS = 256;
static_assert(GEMM_BM * GEMM_BK == 4 * GEMM_THREADS, "each thread stages 4 x elements");
static_assert(GEMM_BN * GEMM_BK == 4 * GEMM_THREADS, "each thread stages 4 W elements");
static_assert(GEMM_BM == 4 * 16 && GEMM_BN == 4 * 16, "16 x 16 threads, 4 x 4 outputs each");
static_assert(TILE_LD == GEMM_BM + 4 && TILE_LD == GEMM_BN + 4, "the shared tile_fma / tile_store tiles");

/* Bytes of one W element, and elements per 16-byte vector load. */
template <int DT> struct wtype {
  static constexpr int size = DT == RL_F32 ? 4 : 2;
  static constexpr int per_vec = 16 / size;
};

/* VE consecutive elements of a W row starting at element k, as f32. With VEC, row + k * size
 * is 16-byte aligned (checked by the host) and VE = per_vec; otherwise VE = 1. */
template <int DT, bool VEC, int VE>
__device__ __forceinline__ void load_w(const char *row, int64_t k, float (&w)[VE]) {
  if constexpr (!VEC) {
    static_assert(VE == 1, "scalar loads are one element");
    w[0] = load_elt<DT>(row, k);
  } else if constexpr (DT == RL_F32) {
    static_assert(VE == 4, "16 bytes of f32");
    const float4 v = *reinterpret_cast<const float4 *>(row + k * 4);
    w[0] = v.x;
    w[1] = v.y;
    w[2] = v.z;
    w[3] = v.w;
  } else {
    static_assert(VE == 8, "16 bytes of f16/bf16");
    const uint4 v = *reinterpret_cast<const uint4 *>(row + k * 2);
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) { /* little endian: element 2i is the low half of word i */
      if constexpr (DT == RL_F16) {
        w[2 * i] = __half2float(__ushort_as_half((unsigned short)(words[i] & 0xffffu)));
        w[2 * i + 1] = __half2float(__ushort_as_half((unsigned short)(words[i] >> 16)));
      } else {
        w[2 * i] = __uint_as_float(words[i] << 16);
        w[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
      }
    }
  }
}

/* VE consecutive floats of shared memory (16-byte aligned when VE >= 4). */
template <int VE> __device__ __forceinline__ void load_x(const float *p, float (&x)[VE]) {
  if constexpr (VE == 1) {
    x[0] = p[0];
  } else {
    static_assert(VE % 4 == 0, "whole float4s");
#pragma unroll
    for (int i = 0; i < VE; i += 4) {
      const float4 v = *reinterpret_cast<const float4 *>(p + i);
      x[i] = v.x;
      x[i + 1] = v.y;
      x[i + 2] = v.z;
      x[i + 3] = v.w;
    }
  }
}

/* Grid: ceil(N / GEMV_ROWS_PER_BLOCK) blocks of GEMV_THREADS. Warp w of block b computes
 * out[:, n] for n in [(b * GEMV_WARPS + w) * GEMV_ROWS, + GEMV_ROWS). */
template <int DT, int M, bool VEC>
__global__ void __launch_bounds__(GEMV_THREADS)
    gemv_kernel(float *__restrict__ out, const float *__restrict__ x, const void *__restrict__ w,
                const void *__restrict__ bias, int bias_dt, int N, int K) {
  constexpr int ES = wtype<DT>::size;
  constexpr int VE = VEC ? wtype<DT>::per_vec : 1;
  /* K per staged chunk: a multiple of 32 lanes x VE, so every lane has whole vectors. */
  constexpr int KC = GEMV_X_FLOATS / M / 256 * 256;
  static_assert(KC >= 256 && KC % (32 * 8) == 0 && M * KC <= GEMV_X_FLOATS, "x chunk");
  __shared__ __align__(16) float xs[M * KC]; /* (M, KC) */

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n0 = (blockIdx.x * GEMV_WARPS + warp) * GEMV_ROWS;
  const char *wrow[GEMV_ROWS];
#pragma unroll
  for (int r = 0; r < GEMV_ROWS; r++) { /* rows past N re-read row N - 1; never stored */
    const int n = n0 + r < N ? n0 + r : N - 1;
    wrow[r] = static_cast<const char *>(w) + (int64_t)n * K * ES;
  }
  float acc[GEMV_ROWS][M];
#pragma unroll
  for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
    for (int m = 0; m < M; m++) acc[r][m] = 0.0f;

  for (int kc = 0; kc < K; kc += KC) {
    const int len = K - kc < KC ? K - kc : KC; /* with VEC, a multiple of VE (K % VE == 0) */
    __syncthreads(); /* every warp is done with the previous chunk */
    for (int i = threadIdx.x; i < M * len; i += GEMV_THREADS) {
      const int m = i / len, k = i - m * len;
      xs[m * KC + k] = x[(int64_t)m * K + kc + k];
    }
    __syncthreads();
#pragma unroll 2
    for (int k = lane * VE; k < len; k += 32 * VE) {
      float wv[GEMV_ROWS][VE];
#pragma unroll
      for (int r = 0; r < GEMV_ROWS; r++) load_w<DT, VEC, VE>(wrow[r], kc + k, wv[r]);
#pragma unroll
      for (int m = 0; m < M; m++) {
        float xv[VE];
        load_x<VE>(xs + m * KC + k, xv);
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
          for (int e = 0; e < VE; e++) acc[r][m] = fmaf(wv[r][e], xv[e], acc[r][m]);
      }
    }
  }

  gemv_store<GEMV_ROWS, M>(acc, out, bias, bias_dt, N, n0, lane);
}

/* Grid: (ceil(N / 64), ceil(M / 64)) blocks of 256 threads; block (bx, by) computes
 * out[by*64 : +64, bx*64 : +64]. Thread (ty, tx) = (tid / 16, tid % 16) owns rows ty + 16 i and
 * columns tx + 16 j, i, j < 4. */
template <int DT>
__global__ void __launch_bounds__(GEMM_THREADS)
    gemm_kernel(float *__restrict__ out, const float *__restrict__ x, const void *__restrict__ w,
                const void *__restrict__ bias, int bias_dt, int M, int N, int K) {
  __shared__ float xs[GEMM_BK][TILE_LD]; /* x tile, transposed: xs[k][m] */
  __shared__ float ws[GEMM_BK][TILE_LD]; /* W tile, transposed: ws[k][n] */
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.y * GEMM_BM, n0 = blockIdx.x * GEMM_BN;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

  for (int k0 = 0; k0 < K; k0 += GEMM_BK) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int e = tid + i * GEMM_THREADS; /* 0 .. 1023 */
      const int r = e / GEMM_BK, kk = e % GEMM_BK, k = k0 + kk;
      const int m = m0 + r, n = n0 + r;
      xs[kk][r] = m < M && k < K ? x[(int64_t)m * K + k] : 0.0f;
      ws[kk][r] = n < N && k < K ? load_elt<DT>(w, (int64_t)n * K + k) : 0.0f;
    }
    __syncthreads();
    tile_fma<GEMM_BK>(xs, ws, acc, tx, ty);
    __syncthreads();
  }

  tile_store(acc, out, bias, bias_dt, M, N, m0, n0, tx, ty);
}

/* ----------------------------------------------------------------------------------------------
 * Dispatch */

typedef void gemv_fn(float *, const float *, const void *, const void *, int, int, int);

template <int DT, bool VEC> static gemv_fn *gemv_for(int M) {
  switch (M) {
  case 1: return gemv_kernel<DT, 1, VEC>;
  case 2: return gemv_kernel<DT, 2, VEC>;
  case 3: return gemv_kernel<DT, 3, VEC>;
  case 4: return gemv_kernel<DT, 4, VEC>;
  case 5: return gemv_kernel<DT, 5, VEC>;
  case 6: return gemv_kernel<DT, 6, VEC>;
  case 7: return gemv_kernel<DT, 7, VEC>;
  case 8: return gemv_kernel<DT, 8, VEC>;
  default: return NULL;
  }
}
static_assert(GEMV_MAX_M == 8, "gemv_for covers M = 1 .. 8");

template <int DT> static gemv_fn *gemv_for(int M, bool vec) {
  return vec ? gemv_for<DT, true>(M) : gemv_for<DT, false>(M);
}

RL_API int32_t rl_matmul(rl_ctx *ctx, float *out, const float *x, const void *w, int32_t wdtype,
                         const void *bias, int32_t bias_dtype, int32_t M, int32_t N, int32_t K) {
  ENTER();
  CHECK_ARGS(rl_check_matmul, out, x, w, wdtype, bias, bias_dtype, M, N, K);
  REQUIRE_ALIGNED(out, 4);
  REQUIRE_ALIGNED(x, 4);
  if (bias) REQUIRE_ALIGNED(bias, dtype_size(bias_dtype));
  /* ggml block formats: quant.cu (byte-aligned rows, no alignment to check) */
  if (!is_plain_dtype(wdtype))
    return launch_quant_matmul(ctx, op, out, x, w, wdtype, bias, bias_dtype, M, N, K);
  REQUIRE_ALIGNED(w, dtype_size(wdtype));

  if (M <= GEMV_MAX_M) {
    const int es = dtype_size(wdtype), per_vec = 16 / es;
    const bool vec = (uintptr_t)w % 16 == 0 && (int64_t)K * es % 16 == 0 && K % per_vec == 0;
    gemv_fn *fn = wdtype == RL_F32   ? gemv_for<RL_F32>(M, vec)
                  : wdtype == RL_F16 ? gemv_for<RL_F16>(M, vec)
                                     : gemv_for<RL_BF16>(M, vec);
    REQUIRE(fn != NULL, "no GEMV kernel for M = %d", M);
    const unsigned blocks = (unsigned)((N + GEMV_ROWS_PER_BLOCK - 1) / GEMV_ROWS_PER_BLOCK);
    fn<<<blocks, GEMV_THREADS, 0, ctx->compute>>>(out, x, w, bias, bias_dtype, N, K);
    LAUNCH_CHECK();
    return RL_OK;
  }

  const int64_t grid_y = ((int64_t)M + GEMM_BM - 1) / GEMM_BM;
  if (grid_y > 65535)
    return cu_fail(ctx, RL_ERR_UNSUPPORTED, op, "M = %d needs %lld row blocks (max 65535)", M,
                   (long long)grid_y);
  const dim3 grid((unsigned)((N + GEMM_BN - 1) / GEMM_BN), (unsigned)grid_y);
  switch (wdtype) {
  case RL_F32:
    gemm_kernel<RL_F32><<<grid, GEMM_THREADS, 0, ctx->compute>>>(out, x, w, bias, bias_dtype, M,
                                                                  N, K);
    break;
  case RL_F16:
    gemm_kernel<RL_F16><<<grid, GEMM_THREADS, 0, ctx->compute>>>(out, x, w, bias, bias_dtype, M,
                                                                  N, K);
    break;
  default:
    gemm_kernel<RL_BF16><<<grid, GEMM_THREADS, 0, ctx->compute>>>(out, x, w, bias, bias_dtype,
                                                                   M, N, K);
    break;
  }
  LAUNCH_CHECK();
  return RL_OK;
}
