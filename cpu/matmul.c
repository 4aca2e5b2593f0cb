/*
 * rl_matmul: out[M,N] = x[M,K] . W[N,K]^T (+ bias[N]); W and bias f32/f16/bf16; fp32 accumulate.
 *
 * Each output element is the dot product of an x row with a W row. The kernel computes a
 * register tile of mr x rows against nr W rows: every 8-wide slice of a W row is loaded (and
 * converted) once and used mr times, every x slice nr times.
 *  - M == 1 (decode, a GEMV) is memory bound: one W row at a time with GEMV_UNROLL independent
 *    accumulators, so each thread reads its contiguous share of W as one sequential stream
 *    (interleaving 2 or 4 rows to share x loads measured slower, bf16 most).
 *  - M > 1 (prefill): GEMM_MR x GEMM_NR tiles over blocks of GEMM_NB W rows x GEMM_MB x rows; a
 *    thread keeps one W block in cache while the x rows of its blocks pass over it, instead of
 *    streaming W once per x row.
 */
#include "internal.h"
#include "simd.h"

#define GEMV_UNROLL 4 /* accumulators (8 lanes each) of a lone dot product */
#define GEMV_NB 16    /* W rows per scheduling unit */
#define GEMM_MR 4
#define GEMM_NR 2
#define GEMM_MB 64
#define GEMM_NB 16

typedef struct {
  const float *x;   /* [M,K] */
  const void *w;    /* [N,K], of the dtype the tile function is built for */
  const void *bias; /* [N] of dtype bdt, or NULL */
  float *out;       /* [M,N] */
  int64_t M, N, K;
  int bdt;
} mm_args;

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* acc[i][j] += x[i, k:k+8] * W[n0 + j, k:k+8] for i < mr, j < nr. */
ALWAYS_INLINE void tile_step(v8 acc[GEMM_MR][GEMM_NR], const float *x, const void *w, int64_t K,
                             int64_t w0, int64_t k, int dt, int mr, int nr) {
  v8 xv[GEMM_MR];
  for (int i = 0; i < mr; i++) xv[i] = v8_load(x + i * K + k);
  for (int j = 0; j < nr; j++) {
    const v8 wv = v8_load_dt(w, dt, w0 + j * K + k);
    for (int i = 0; i < mr; i++) acc[i][j] = v8_fma(xv[i], wv, acc[i][j]);
  }
}

/* out[m0:m0+mr, n0:n0+nr]. dt, mr and nr are compile-time constants at every call site, so the
 * accumulators live in registers and the dtype switch folds away. */
ALWAYS_INLINE void tile(const mm_args *a, int64_t m0, int64_t n0, int dt, int mr, int nr) {
  const int64_t K = a->K;
  const float *x = a->x + m0 * K; /* (mr, K) */
  const int64_t w0 = n0 * K;      /* element offset of W row n0 */
  const int uk = mr * nr == 1 ? GEMV_UNROLL : 1;
  v8 acc[GEMV_UNROLL][GEMM_MR][GEMM_NR];
  for (int u = 0; u < uk; u++)
    for (int i = 0; i < mr; i++)
      for (int j = 0; j < nr; j++) acc[u][i][j] = v8_zero();
  int64_t k = 0;
  for (; k + 8 * uk <= K; k += 8 * uk)
    for (int u = 0; u < uk; u++) tile_step(acc[u], x, a->w, K, w0, k + 8 * u, dt, mr, nr);
  for (; k + 8 <= K; k += 8) tile_step(acc[0], x, a->w, K, w0, k, dt, mr, nr);
  for (int i = 0; i < mr; i++)
    for (int j = 0; j < nr; j++) {
      v8 sum = acc[0][i][j];
      for (int u = 1; u < uk; u++) sum = v8_add(sum, acc[u][i][j]);
      float s = v8_sum(sum);
      for (int64_t kk = k; kk < K; kk++) s += x[i * K + kk] * load_f32(a->w, dt, w0 + j * K + kk);
      if (a->bias) s += load_f32(a->bias, a->bdt, n0 + j);
      a->out[(m0 + i) * a->N + n0 + j] = s;
    }
}

/* One function per (dtype, mr, nr), indexed tiles[dtype][mr - 1][nr - 1]. */
typedef void tile_fn(const mm_args *a, int64_t m0, int64_t n0);

#define TILE_FN(dt, mr, nr)                                                                       \
  static void tile_##dt##_##mr##x##nr(const mm_args *a, int64_t m0, int64_t n0) {                 \
    tile(a, m0, n0, dt, mr, nr);                                                                  \
  }
#define TILE_FNS_MR(dt, mr) TILE_FN(dt, mr, 1) TILE_FN(dt, mr, 2)
#define TILE_FNS(dt) TILE_FNS_MR(dt, 1) TILE_FNS_MR(dt, 2) TILE_FNS_MR(dt, 3) TILE_FNS_MR(dt, 4)
TILE_FNS(RL_F32)
TILE_FNS(RL_F16)
TILE_FNS(RL_BF16)

#define TILE_ROW(dt, mr) { tile_##dt##_##mr##x1, tile_##dt##_##mr##x2 }
#define TILE_TABLE(dt) { TILE_ROW(dt, 1), TILE_ROW(dt, 2), TILE_ROW(dt, 3), TILE_ROW(dt, 4) }
static tile_fn *const tiles[3][GEMM_MR][GEMM_NR] = {
    [RL_F32] = TILE_TABLE(RL_F32), [RL_F16] = TILE_TABLE(RL_F16), [RL_BF16] = TILE_TABLE(RL_BF16)};

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* out[m_begin:m_end, n_begin:n_end] in tiles of at most MR x NR. */
static void run_block(const mm_args *a, tile_fn *const table[GEMM_MR][GEMM_NR], int64_t m_begin,
                      int64_t m_end, int64_t n_begin, int64_t n_end, int MR, int NR) {
  for (int64_t m = m_begin; m < m_end; m += MR) {
    int mr = (int)min64(MR, m_end - m);
    for (int64_t n = n_begin; n < n_end; n += NR) table[mr - 1][min64(NR, n_end - n) - 1](a, m, n);
  }
}

RL_API int32_t rl_matmul(rl_ctx *ctx, float *out, const float *x, const void *w, int32_t wdtype,
                         const void *bias, int32_t bias_dtype, int32_t M, int32_t N, int32_t K) {
  REQUIRE_CTX();
  REQUIRE_PTR(out);
  REQUIRE_PTR(x);
  REQUIRE_PTR(w);
  REQUIRE_DTYPE(wdtype);
  if (bias) REQUIRE_DTYPE(bias_dtype);
  REQUIRE_POS(M);
  REQUIRE_POS(N);
  REQUIRE_POS(K);
  REQUIRE(out + (int64_t)M * N <= x || x + (int64_t)M * K <= out,
          "out [%d,%d] overlaps x [%d,%d]", M, N, M, K);

  const mm_args a = {x, w, bias, out, M, N, K, bias_dtype};
  const int gemv = M == 1;
  const int MR = gemv ? 1 : GEMM_MR, NR = gemv ? 1 : GEMM_NR;
  const int64_t MB = gemv ? 1 : GEMM_MB, NB = gemv ? GEMV_NB : GEMM_NB;
  const int64_t n_blocks = (N + NB - 1) / NB, m_blocks = (M + MB - 1) / MB;
  /* W block outer: consecutive iterations of a thread reuse the same W rows. */
#pragma omp parallel for collapse(2) schedule(static) num_threads(ctx->n_threads)                \
    if ((int64_t)M * N * K >= PAR_MIN_WORK)
  for (int64_t bn = 0; bn < n_blocks; bn++)
    for (int64_t bm = 0; bm < m_blocks; bm++)
      run_block(&a, tiles[wdtype], bm * MB, min64(M, bm * MB + MB), bn * NB,
                min64(N, bn * NB + NB), MR, NR);
  return RL_OK;
}
