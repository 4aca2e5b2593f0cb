/*
 * The ops over tensor descriptors (ABI 5, rabbitllm.h "tensor descriptors"): rl_matmul_nd and
 * rl_copy_nd. The descriptors are checked and decoded on the host by ffi/rl_shared.h into rl_view4
 * structs (offset, shape and strides in elements), passed to the kernels by value. Indices are
 * 64-bit throughout: the checks bound every view to < 2^40 elements and a span < 2^42.
 *
 *  matmul_nd  out[a,b,m,n] = sum_k x[a,b,m,k] * w[a,b,k,n], fp32 accumulation in k order per
 *             lane/thread; w f32, f16 or bf16.
 *             - w's k stride is 1 (nn.Linear rows, the common case): a warp per output element,
 *               lanes over k (coalesced along the W row and the x row), warp-shuffle sum.
 *             - otherwise (a plain [K, N] matrix, n contiguous): a thread per n, looping over k
 *               (coalesced along n); grid (a*b*m rows, n blocks), grid-stride in both dims so no
 *               grid limit is exceeded.
 *             Simple and correct rather than fast: meant for attention-side batched products and
 *             views; the big projections go through rl_matmul.
 *  copy_nd    one thread per element (grid-stride), index decomposition over the shared shape,
 *             elements of 4 or 2 bytes copied bit for bit.
 */
#include "internal.h"

constexpr int ND_THREADS = 256;              /* threads per block of every kernel here */
constexpr int ND_WARPS = ND_THREADS / 32;    /* warps per block of the warp-per-output kernel */

/* The element offset of index (i0, i1, i2, i3) in view v. */
__device__ __forceinline__ int64_t view_at(const rl_view4 &v, int64_t i0, int64_t i1, int64_t i2,
                                           int64_t i3) {
  return v.offset + i0 * v.stride[0] + i1 * v.stride[1] + i2 * v.stride[2] + i3 * v.stride[3];
}

/* ----------------------------------------------------------------------------------------------
 * rl_matmul_nd */

/* A warp per output element e (row-major over out's shape), grid-stride over warps. Lane l sums
 * k = l, l + 32, ...; the warp's partial sums are added with shuffles. Requires w.stride[2] == 1
 * for coalescing only (any stride is correct). */
template <int DT>
__global__ void __launch_bounds__(ND_THREADS)
    matmul_nd_warp_kernel(float *__restrict__ out, rl_view4 o, const float *__restrict__ x,
                          rl_view4 xv, const void *__restrict__ w, rl_view4 wv) {
  const int lane = threadIdx.x & 31;
  const int64_t N = o.shape[3], M = o.shape[2], B = o.shape[1], K = xv.shape[3];
  const int64_t total = o.shape[0] * B * M * N;
  const int64_t warps = (int64_t)gridDim.x * ND_WARPS;
  for (int64_t e = (int64_t)blockIdx.x * ND_WARPS + (threadIdx.x >> 5); e < total; e += warps) {
    const int64_t n = e % N, r = e / N; /* e is warp-uniform: so is the loop */
    const int64_t m = r % M, ab = r / M;
    const int64_t b = ab % B, a = ab / B;
    const int64_t x0 = view_at(xv, a, b, m, 0), w0 = view_at(wv, a, b, 0, n);
    const int64_t xs = xv.stride[3], ws = wv.stride[2];
    float acc = 0.0f;
    for (int64_t k = lane; k < K; k += 32)
      acc = fmaf(x[x0 + k * xs], load_elt<DT>(w, w0 + k * ws), acc);
    acc = warp_sum(acc);
    if (lane == 0) out[view_at(o, a, b, m, n)] = acc;
  }
}

/* A thread per output element: blockIdx.x (grid-stride) over the a*b*m output rows, blockIdx.y
 * and the threads (grid-stride) over n; each thread loops over k. */
template <int DT>
__global__ void __launch_bounds__(ND_THREADS)
    matmul_nd_col_kernel(float *__restrict__ out, rl_view4 o, const float *__restrict__ x,
                         rl_view4 xv, const void *__restrict__ w, rl_view4 wv) {
  const int64_t N = o.shape[3], M = o.shape[2], B = o.shape[1], K = xv.shape[3];
  const int64_t rows = o.shape[0] * B * M;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t m = r % M, ab = r / M;
    const int64_t b = ab % B, a = ab / B;
    const int64_t x0 = view_at(xv, a, b, m, 0), xs = xv.stride[3];
    const int64_t wk = wv.stride[2];
    for (int64_t n = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; n < N;
         n += (int64_t)gridDim.y * blockDim.x) {
      const int64_t w0 = view_at(wv, a, b, 0, n);
      float acc = 0.0f;
      for (int64_t k = 0; k < K; k++) acc = fmaf(x[x0 + k * xs], load_elt<DT>(w, w0 + k * wk), acc);
      out[view_at(o, a, b, m, n)] = acc;
    }
  }
}

template <int DT>
static int32_t launch_matmul_nd(rl_ctx *ctx, const char *op, float *out, const rl_view4 &o,
                                const float *x, const rl_view4 &xv, const void *w,
                                const rl_view4 &wv) {
  const int64_t rows = o.shape[0] * o.shape[1] * o.shape[2], N = o.shape[3];
  if (wv.stride[2] == 1) {
    matmul_nd_warp_kernel<DT><<<grid_for(rows * N * 32, ND_THREADS), ND_THREADS, 0,
                                ctx->compute>>>(out, o, x, xv, w, wv);
  } else {
    const int64_t row_cap = 1 << 20, nb_cap = 65535; /* gridDim.y <= 65535 */
    const int64_t nb = (N + ND_THREADS - 1) / ND_THREADS;
    const dim3 grid((unsigned)(rows < row_cap ? rows : row_cap),
                    (unsigned)(nb < nb_cap ? nb : nb_cap));
    matmul_nd_col_kernel<DT><<<grid, ND_THREADS, 0, ctx->compute>>>(out, o, x, xv, w, wv);
  }
  LAUNCH_CHECK();
  return RL_OK;
}

RL_API int32_t rl_matmul_nd(rl_ctx *ctx, float *out, const int64_t *out_desc, const float *x,
                            const int64_t *x_desc, const void *w, const int64_t *w_desc) {
  ENTER();
  rl_view4 o, xv, wv;
  CHECK_ARGS(rl_check_matmul_nd, out, out_desc, x, x_desc, w, w_desc, &o, &xv, &wv);
  REQUIRE_ALIGNED(out, 4);
  REQUIRE_ALIGNED(x, 4);
  REQUIRE_ALIGNED(w, dtype_size(wv.dtype));
  switch (wv.dtype) {
  case RL_F32: return launch_matmul_nd<RL_F32>(ctx, op, out, o, x, xv, w, wv);
  case RL_F16: return launch_matmul_nd<RL_F16>(ctx, op, out, o, x, xv, w, wv);
  default: return launch_matmul_nd<RL_BF16>(ctx, op, out, o, x, xv, w, wv);
  }
}

/* ----------------------------------------------------------------------------------------------
 * rl_copy_nd */

/* One thread per element i (row-major over the shape), grid-stride; T is the element's bits. */
template <typename T>
__global__ void __launch_bounds__(ND_THREADS)
    copy_nd_kernel(T *__restrict__ dst, rl_view4 d, const T *__restrict__ src, rl_view4 s) {
  const int64_t S3 = d.shape[3], S2 = d.shape[2], S1 = d.shape[1];
  const int64_t total = d.shape[0] * S1 * S2 * S3;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i3 = i % S3, r2 = i / S3;
    const int64_t i2 = r2 % S2, r1 = r2 / S2;
    const int64_t i1 = r1 % S1, i0 = r1 / S1;
    dst[view_at(d, i0, i1, i2, i3)] = src[view_at(s, i0, i1, i2, i3)];
  }
}

RL_API int32_t rl_copy_nd(rl_ctx *ctx, void *dst, const int64_t *dst_desc, const void *src,
                          const int64_t *src_desc) {
  ENTER();
  rl_view4 d, s;
  CHECK_ARGS(rl_check_copy_nd, dst, dst_desc, src, src_desc, &d, &s);
  const int size = dtype_size(d.dtype);
  REQUIRE_ALIGNED(dst, size);
  REQUIRE_ALIGNED(src, size);
  const unsigned blocks = grid_for((int64_t)rl_view_count(&d), ND_THREADS);
  if (size == 4)
    copy_nd_kernel<uint32_t><<<blocks, ND_THREADS, 0, ctx->compute>>>(
        static_cast<uint32_t *>(dst), d, static_cast<const uint32_t *>(src), s);
  else
    copy_nd_kernel<uint16_t><<<blocks, ND_THREADS, 0, ctx->compute>>>(
        static_cast<uint16_t *>(dst), d, static_cast<const uint16_t *>(src), s);
  LAUNCH_CHECK();
  return RL_OK;
}
