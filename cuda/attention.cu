/*
 * rl_attention, rl_attention_alibi: causal GQA attention of n_q new queries over one sequence's
 * KV cache, fp32.
 * Two implementations, chosen by the option attn_impl (0 auto = flash when it supports the head
 * dims: head_dim and v_head_dim both <= FA_MAX_HEAD_DIM, on sm_80+; else eager):
 *
 *  eager  the reference: scores S[t*n_heads + h, j] materialized in scratch (masked = -inf),
 *         then a softmax per row (unnormalized p and the row sum), then out = (p . V) / sum.
 *         Three kernels; scratch of n_q * n_heads * (kv_len + 1) floats. Any head_dim and
 *         v_head_dim (no shared memory but the block reductions'): DeepSeek's MLA 576 / 512.
 *
 *  flash  one fused kernel, online softmax over tiles of FA_KT keys staged in shared memory.
 *         A block serves FA_WARPS * QW "slots", each slot one (query t, head h) pair; the pairs
 *         of a block all read the same kv head g, so a K/V tile is loaded once for the query
 *         heads of a GQA group and for consecutive queries. Lanes own keys for the scores
 *         (lane = key within the tile) and dims for the output (d = lane + 32 i). Templated on
 *         DMAX in {64, 128, 256} >= max(head_dim, v_head_dim): keys use head_dim dims, values and
 *         the output v_head_dim (they may differ, e.g. an MLA latent cache where v == k).
 *         When there are too few blocks to fill the device (decode), the keys are split across
 *         gridDim.z blocks that each write a partial (unnormalized output, max, sum), and a
 *         second kernel combines them (flash-decoding).
 *
 * Both compute, for query t at cache index pos = q_start + t and key j visible iff
 * j <= pos, (window <= 0 || pos - j < window), (kv_valid == NULL || kv_valid[j]):
 *   s_j = (q . k_j) * scale; s_j = softcap * tanh(s_j / softcap) if softcap > 0;
 *   s_j = s_j + slope_h * (float)(j - pos) with ALiBi slopes (rl_attention_alibi; the slopes are
 *   copied to the device like kv_valid; may be fused into one fma);
 *   out = sum_j exp(s_j - max) v_j * (1 / sum_j exp(s_j - max)); zeros when nothing is visible.
 * k_j of kv head g is k[j * k_stride + g * head_dim ..], v_j is v[j * v_stride + g * v_head_dim ..]
 * (ABI 5); k and v are only read, so v may point into k's rows.
 */
#include "internal.h"

constexpr int FA_WARPS = 4;               /* warps per flash block */
constexpr int FA_THREADS = FA_WARPS * 32; /* threads per flash block */
constexpr int FA_KT = 32;                 /* keys per tile: one per lane */
constexpr int FA_MAX_HEAD_DIM = 256;
constexpr int FA_MAX_SPLITS = 128;
constexpr int COMBINE_THREADS = 128;
constexpr int EAGER_THREADS = 256;
constexpr int EAGER_PV_THREADS = 128;

struct attn_args {
  float *out;          /* [n_q, n_heads * v_head_dim] */
  const float *q;      /* [n_q, q_stride] */
  const float *k;      /* [kv_len, k_stride] */
  const float *v;      /* [kv_len, v_stride]; may point into k's rows */
  const uint8_t *kv_valid; /* device copy, or NULL */
  const float *slopes;     /* ALiBi slope per query head (device copy), or NULL */
  int q_stride, k_stride, v_stride, n_q, q_start, kv_len, n_heads, group, head_dim, v_head_dim,
      window;
  float scale, softcap;
};

/* Key j is visible to the query at cache index pos. */
__device__ __forceinline__ bool visible(const attn_args &a, int pos, int j) {
  return j <= pos && (a.window <= 0 || pos - j < a.window) && (a.kv_valid == NULL || a.kv_valid[j]);
}

__device__ __forceinline__ float cap_score(float s, float softcap) {
  return softcap > 0.0f ? softcap * tanhf(s / softcap) : s;
}

/* The score of key j for the query at cache index pos in head h, after the scale and softcap:
 * plus ALiBi's bias when there are slopes. */
__device__ __forceinline__ float biased_score(const attn_args &a, float s, int h, int pos, int j) {
  return a.slopes ? s + a.slopes[h] * (float)(j - pos) : s;
}

/* ----------------------------------------------------------------------------------------------
 * Eager */

/* scores[row * kv_len + j], row = t * n_heads + h: the scaled (capped) score, -inf if masked. */
__global__ void __launch_bounds__(EAGER_THREADS)
    eager_scores_kernel(attn_args a, float *__restrict__ scores) {
  const int64_t total = (int64_t)a.n_q * a.n_heads * a.kv_len;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int j = (int)(idx % a.kv_len);
    const int64_t row = idx / a.kv_len;
    const int h = (int)(row % a.n_heads), t = (int)(row / a.n_heads);
    const int pos = a.q_start + t;
    float s = -INFINITY;
    if (visible(a, pos, j)) {
      const float *qr = a.q + (int64_t)t * a.q_stride + (int64_t)h * a.head_dim;
      const float *kr = a.k + (int64_t)j * a.k_stride + (int64_t)(h / a.group) * a.head_dim;
      float dot = 0.0f;
      for (int d = 0; d < a.head_dim; d++) dot = fmaf(qr[d], kr[d], dot);
      s = biased_score(a, cap_score(dot * a.scale, a.softcap), h, pos, j);
    }
    scores[idx] = s;
  }
}

/* Grid: one block per row. Replaces the row's scores by p_j = exp(s_j - max) (0 when masked)
 * and writes the row sum to sums[row] (0 when no key is visible). */
__global__ void __launch_bounds__(EAGER_THREADS)
    eager_softmax_kernel(float *__restrict__ scores, float *__restrict__ sums, int kv_len) {
  float *s = scores + (int64_t)blockIdx.x * kv_len;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < kv_len; j += blockDim.x) m = fmaxf(m, s[j]);
  m = block_max(m);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < kv_len; j += blockDim.x) {
    const float p = m == -INFINITY || s[j] == -INFINITY ? 0.0f : expf(s[j] - m);
    s[j] = p;
    sum += p;
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) sums[blockIdx.x] = sum;
}

/* Grid: one block per row (t, h); threads over dims. */
__global__ void __launch_bounds__(EAGER_PV_THREADS)
    eager_pv_kernel(attn_args a, const float *__restrict__ p, const float *__restrict__ sums) {
  const int64_t row = blockIdx.x;
  const int h = (int)(row % a.n_heads), t = (int)(row / a.n_heads);
  const int pos = a.q_start + t;
  const float *pr = p + row * a.kv_len;
  const float sum = sums[row];
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  const float *vh = a.v + (int64_t)(h / a.group) * a.v_head_dim;
  for (int d = threadIdx.x; d < a.v_head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j <= pos; j++) acc = fmaf(pr[j], vh[(int64_t)j * a.v_stride + d], acc);
    a.out[row * a.v_head_dim + d] = sum > 0.0f ? acc * inv : 0.0f;
  }
}

static int32_t attention_eager(rl_ctx *ctx, const char *op, const attn_args &a) {
  const int64_t rows = (int64_t)a.n_q * a.n_heads;
  const uint64_t bytes = sizeof(float) * (uint64_t)rows * ((uint64_t)a.kv_len + 1);
  void *buf = NULL;
  const int32_t status = scratch_reserve(ctx, op, SCR_SCORES, bytes, &buf);
  if (status != RL_OK)
    return cu_fail(ctx, status, op,
                   "eager attention cannot allocate %llu bytes of scores; attn_impl 1 (flash) "
                   "needs none", (unsigned long long)bytes);
  REQUIRE(rows <= 0x7fffffff, "n_q * n_heads = %lld rows is too many for one grid",
          (long long)rows);
  float *scores = static_cast<float *>(buf), *sums = scores + rows * a.kv_len;
  const int64_t total = rows * a.kv_len;
  eager_scores_kernel<<<grid_for(total, EAGER_THREADS), EAGER_THREADS, 0, ctx->compute>>>(a,
                                                                                        scores);
  LAUNCH_CHECK();
  eager_softmax_kernel<<<(unsigned)rows, EAGER_THREADS, 0, ctx->compute>>>(scores, sums,
                                                                            a.kv_len);
  LAUNCH_CHECK();
  eager_pv_kernel<<<(unsigned)rows, EAGER_PV_THREADS, 0, ctx->compute>>>(a, scores, sums);
  LAUNCH_CHECK();
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Flash */

/* Dynamic shared memory of flash_kernel<DMAX, QW>, in floats (DMAX >= head_dim, v_head_dim). */
static constexpr int flash_smem_floats(int dmax, int qw) {
  return FA_WARPS * qw * dmax  /* q_s[slot][d] */
         + FA_KT * (dmax + 1)  /* k_s[key][d], padded: lane-per-key reads hit distinct banks */
         + FA_KT * dmax;       /* v_s[key][d] */
}

/* Grid: (ceil(P / SLOTS), n_kv_heads, n_splits), P = n_q * group pairs per kv head, blocks of
 * FA_THREADS. Slot s of block (bx, g, split) is pair p = bx * SLOTS + s: query t = p / group,
 * head h = g * group + p % group. Warp w owns slots w * QW .. w * QW + QW - 1.
 * The block covers keys [lo, hi]: the union of its queries' visible ranges, cut to the split
 * [split * split_len, + split_len). With part_acc == NULL (one split) it writes out; otherwise it
 * writes its unnormalized output, max and sum to the partial buffers for flash_combine_kernel. */
template <int DMAX, int QW>
__global__ void __launch_bounds__(FA_THREADS)
    flash_kernel(attn_args a, int split_len, float *__restrict__ part_acc,
                 float *__restrict__ part_ml) {
  constexpr int SLOTS = FA_WARPS * QW;
  constexpr int DPL = DMAX / 32; /* output dims per lane */
  static_assert(DMAX % 32 == 0, "whole dims per lane");
  extern __shared__ __align__(16) float smem[];
  float *q_s = smem;                         /* [SLOTS][DMAX] */
  float *k_s = q_s + SLOTS * DMAX;           /* [FA_KT][DMAX + 1] */
  float *v_s = k_s + FA_KT * (DMAX + 1);     /* [FA_KT][DMAX] */

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = blockIdx.y, split = blockIdx.z;
  const int hd = a.head_dim, vd = a.v_head_dim;
  const int64_t P = (int64_t)a.n_q * a.group;
  const int64_t p0 = (int64_t)blockIdx.x * SLOTS;
  const int64_t p_end = p0 + SLOTS < P ? p0 + SLOTS : P; /* exclusive */

  /* Stage this block's queries (zero for dims >= head_dim and slots past P). */
  for (int i = threadIdx.x; i < SLOTS * DMAX; i += FA_THREADS) {
    const int slot = i / DMAX, d = i - slot * DMAX;
    const int64_t p = p0 + slot;
    float val = 0.0f;
    if (p < P && d < hd) {
      const int64_t t = p / a.group;
      const int h = g * a.group + (int)(p % a.group);
      val = a.q[t * a.q_stride + (int64_t)h * hd + d];
    }
    q_s[i] = val;
  }

  /* Keys this block may need: from the first query's window start to the last query. */
  const int pos_first = a.q_start + (int)(p0 / a.group);
  const int pos_last = a.q_start + (int)((p_end - 1) / a.group);
  int lo = a.window > 0 && pos_first - a.window + 1 > 0 ? pos_first - a.window + 1 : 0;
  int hi = pos_last;
  const int64_t split_lo = (int64_t)split * split_len;
  const int64_t split_hi = split_lo + split_len - 1;
  if (split_lo > lo) lo = (int)split_lo;
  if (split_hi < hi) hi = (int)split_hi;

  /* Per-slot state of this warp's slots. */
  int pos[QW], head[QW];
  bool slot_ok[QW];
  float m[QW], l[QW], acc[QW][DPL];
#pragma unroll
  for (int qi = 0; qi < QW; qi++) {
    const int64_t p = p0 + warp * QW + qi;
    slot_ok[qi] = p < P;
    pos[qi] = a.q_start + (int)((slot_ok[qi] ? p : p0) / a.group);
    head[qi] = g * a.group + (int)((slot_ok[qi] ? p : p0) % a.group);
    m[qi] = -INFINITY;
    l[qi] = 0.0f;
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[qi][i] = 0.0f;
  }
  const float *kg = a.k + (int64_t)g * hd, *vg = a.v + (int64_t)g * vd;

  for (int j0 = lo; j0 <= hi; j0 += FA_KT) { /* lo, hi are the same for the whole block */
    __syncthreads(); /* q_s is staged / the previous tile is consumed */
    for (int i = threadIdx.x; i < FA_KT * DMAX; i += FA_THREADS) {
      const int r = i / DMAX, d = i - r * DMAX, j = j0 + r;
      float kv = 0.0f, vv = 0.0f;
      if (j <= hi) {
        if (d < hd) kv = kg[(int64_t)j * a.k_stride + d];
        if (d < vd) vv = vg[(int64_t)j * a.v_stride + d];
      }
      k_s[r * (DMAX + 1) + d] = kv;
      v_s[r * DMAX + d] = vv;
    }
    __syncthreads();

    /* Scores: lane owns key j = j0 + lane. */
    const int j = j0 + lane;
    float s[QW];
#pragma unroll
    for (int qi = 0; qi < QW; qi++) s[qi] = 0.0f;
    const float *kr = k_s + lane * (DMAX + 1);
    const float *qw = q_s + warp * QW * DMAX;
    for (int d = 0; d < hd; d++) {
      const float kd = kr[d];
#pragma unroll
      for (int qi = 0; qi < QW; qi++) s[qi] = fmaf(qw[qi * DMAX + d], kd, s[qi]);
    }
    const bool key_ok = j <= hi && (a.kv_valid == NULL || a.kv_valid[j]);

    /* Online softmax: p = exp(s - new max); rescale what was accumulated under the old max. */
    float p[QW];
#pragma unroll
    for (int qi = 0; qi < QW; qi++) {
      const bool vis = slot_ok[qi] && key_ok && j <= pos[qi] &&
                       (a.window <= 0 || pos[qi] - j < a.window);
      const float sc =
          vis ? biased_score(a, cap_score(s[qi] * a.scale, a.softcap), head[qi], pos[qi], j)
              : -INFINITY;
      const float m_new = fmaxf(m[qi], warp_max(sc)); /* the same in every lane */
      float corr = 1.0f;
      p[qi] = 0.0f;
      if (m_new != -INFINITY) {
        corr = expf(m[qi] - m_new); /* 0 when nothing was visible before */
        p[qi] = vis ? expf(sc - m_new) : 0.0f;
      }
      l[qi] = l[qi] * corr + warp_sum(p[qi]);
      m[qi] = m_new;
#pragma unroll
      for (int i = 0; i < DPL; i++) acc[qi][i] *= corr;
    }

    /* acc[qi][d] += sum over the tile's keys of p_j * v_j[d]; lane owns d = lane + 32 i. */
    const int n_keys = hi - j0 + 1 < FA_KT ? hi - j0 + 1 : FA_KT;
    for (int jj = 0; jj < n_keys; jj++) {
      float pj[QW];
#pragma unroll
      for (int qi = 0; qi < QW; qi++) pj[qi] = __shfl_sync(0xffffffffu, p[qi], jj);
      const float *vr = v_s + jj * DMAX;
#pragma unroll
      for (int i = 0; i < DPL; i++) {
        const float vd = vr[lane + 32 * i];
#pragma unroll
        for (int qi = 0; qi < QW; qi++) acc[qi][i] = fmaf(pj[qi], vd, acc[qi][i]);
      }
    }
  }

#pragma unroll
  for (int qi = 0; qi < QW; qi++) {
    if (!slot_ok[qi]) continue;
    const int64_t p = p0 + warp * QW + qi;
    const int64_t t = p / a.group;
    const int h = g * a.group + (int)(p % a.group);
    const int64_t pair = t * a.n_heads + h; /* row of out */
    if (part_acc == NULL) {
      const float inv = l[qi] > 0.0f ? 1.0f / l[qi] : 0.0f;
#pragma unroll
      for (int i = 0; i < DPL; i++) {
        const int d = lane + 32 * i;
        if (d < vd) a.out[pair * vd + d] = l[qi] > 0.0f ? acc[qi][i] * inv : 0.0f;
      }
    } else {
      const int64_t base = (int64_t)split * a.n_q * a.n_heads + pair;
#pragma unroll
      for (int i = 0; i < DPL; i++) {
        const int d = lane + 32 * i;
        if (d < vd) part_acc[base * vd + d] = acc[qi][i];
      }
      if (lane == 0) {
        part_ml[base * 2] = m[qi];
        part_ml[base * 2 + 1] = l[qi];
      }
    }
  }
}

/* One block per (t, h) pair, threads over dims: merges the splits' partial softmaxes. */
__global__ void __launch_bounds__(COMBINE_THREADS)
    flash_combine_kernel(float *__restrict__ out, const float *__restrict__ part_acc,
                         const float *__restrict__ part_ml, int n_splits, int64_t pairs,
                         int hd /* v_head_dim */) {
  for (int64_t pair = blockIdx.x; pair < pairs; pair += gridDim.x) {
    float mx = -INFINITY;
    for (int s = 0; s < n_splits; s++) mx = fmaxf(mx, part_ml[(s * pairs + pair) * 2]);
    float sum = 0.0f;
    if (mx != -INFINITY)
      for (int s = 0; s < n_splits; s++) {
        const float ms = part_ml[(s * pairs + pair) * 2];
        if (ms != -INFINITY) sum += part_ml[(s * pairs + pair) * 2 + 1] * expf(ms - mx);
      }
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
      float o = 0.0f;
      if (sum > 0.0f)
        for (int s = 0; s < n_splits; s++) {
          const float ms = part_ml[(s * pairs + pair) * 2];
          if (ms != -INFINITY) o += part_acc[(s * pairs + pair) * hd + d] * expf(ms - mx);
        }
      out[pair * hd + d] = sum > 0.0f ? o * inv : 0.0f;
    }
  }
}

template <int DMAX, int QW>
static int32_t launch_flash(rl_ctx *ctx, const char *op, const attn_args &a, dim3 grid,
                            int split_len, float *part_acc, float *part_ml) {
  const size_t smem = sizeof(float) * (size_t)flash_smem_floats(DMAX, QW);
  if (smem > ctx->smem_optin)
    return cu_fail(ctx, RL_ERR_UNSUPPORTED, op,
                   "head_dim %d / v_head_dim %d need %zu bytes of shared memory per block (device "
                   "max %llu); use attn_impl 2 (eager)",
                   a.head_dim, a.v_head_dim, smem, (unsigned long long)ctx->smem_optin);
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(flash_kernel<DMAX, QW>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  flash_kernel<DMAX, QW><<<grid, FA_THREADS, smem, ctx->compute>>>(a, split_len, part_acc,
                                                                   part_ml);
  LAUNCH_CHECK();
  return RL_OK;
}

template <int QW>
static int32_t launch_flash_qw(rl_ctx *ctx, const char *op, const attn_args &a, dim3 grid,
                               int split_len, float *part_acc, float *part_ml) {
  const int dmax = a.head_dim > a.v_head_dim ? a.head_dim : a.v_head_dim;
  if (dmax <= 64)
    return launch_flash<64, QW>(ctx, op, a, grid, split_len, part_acc, part_ml);
  if (dmax <= 128)
    return launch_flash<128, QW>(ctx, op, a, grid, split_len, part_acc, part_ml);
  return launch_flash<256, QW>(ctx, op, a, grid, split_len, part_acc, part_ml);
}

static int32_t attention_flash(rl_ctx *ctx, const char *op, const attn_args &a, int n_kv_heads) {
  const int64_t P = (int64_t)a.n_q * a.group; /* (t, h) pairs per kv head */
  const int QW = P <= FA_WARPS ? 1 : 4;      /* slots per warp: 1 for decode-sized work */
  const int64_t slots = (int64_t)FA_WARPS * QW;
  const int64_t grid_x = (P + slots - 1) / slots;
  REQUIRE(grid_x <= 0x7fffffff, "n_q * n_heads / n_kv_heads = %lld pairs is too many",
          (long long)P);
  REQUIRE(n_kv_heads <= 65535, "n_kv_heads %d is more than a grid allows (65535)", n_kv_heads);

  /* Split the keys when the blocks would not fill the device twice over. */
  const int64_t blocks = grid_x * n_kv_heads, target = 2 * (int64_t)ctx->sm_count;
  int64_t n_splits = 1;
  if (blocks < target) {
    n_splits = (target + blocks - 1) / blocks;
    const int64_t by_len = ((int64_t)a.kv_len + 2 * FA_KT - 1) / (2 * FA_KT); /* >= 2 tiles */
    if (n_splits > by_len) n_splits = by_len;
    if (n_splits > FA_MAX_SPLITS) n_splits = FA_MAX_SPLITS;
    if (n_splits < 1) n_splits = 1;
  }
  int64_t split_len = ((int64_t)a.kv_len + n_splits - 1) / n_splits;
  split_len = (split_len + FA_KT - 1) / FA_KT * FA_KT;
  n_splits = ((int64_t)a.kv_len + split_len - 1) / split_len;

  float *part_acc = NULL, *part_ml = NULL;
  const int64_t pairs = (int64_t)a.n_q * a.n_heads;
  if (n_splits > 1) {
    const uint64_t floats = (uint64_t)n_splits * pairs * ((uint64_t)a.v_head_dim + 2);
    void *buf = NULL;
    TRY(scratch_reserve(ctx, op, SCR_PARTIAL, sizeof(float) * floats, &buf));
    part_acc = static_cast<float *>(buf);
    part_ml = part_acc + (uint64_t)n_splits * pairs * a.v_head_dim;
  }
  const dim3 grid((unsigned)grid_x, (unsigned)n_kv_heads, (unsigned)n_splits);
  if (QW == 1) TRY(launch_flash_qw<1>(ctx, op, a, grid, (int)split_len, part_acc, part_ml));
  else TRY(launch_flash_qw<4>(ctx, op, a, grid, (int)split_len, part_acc, part_ml));
  if (n_splits > 1) {
    flash_combine_kernel<<<grid_for(pairs * COMBINE_THREADS, COMBINE_THREADS), COMBINE_THREADS, 0,
                           ctx->compute>>>(a.out, part_acc, part_ml, (int)n_splits, pairs,
                                           a.v_head_dim);
    LAUNCH_CHECK();
  }
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Entry */

/* The work of both entries, ENTER()ed and their arguments checked; reports failures as op. */
static int32_t attention(rl_ctx *ctx, const char *op, float *out, const float *q,
                         int32_t q_stride, const float *k, int32_t k_stride, const float *v,
                         int32_t v_stride, int32_t n_q, int32_t q_start, int32_t kv_len,
                         int32_t n_heads, int32_t n_kv_heads, int32_t head_dim,
                         int32_t v_head_dim, float scale, int32_t window, float softcap,
                         const uint8_t *kv_valid, const float *alibi_slopes) {
  REQUIRE_ALIGNED(out, 4);
  REQUIRE_ALIGNED(q, 4);
  REQUIRE_ALIGNED(k, 4);
  REQUIRE_ALIGNED(v, 4);

  /* Flash stages head_dim dims of keys and v_head_dim dims of values per tile: both must fit its
   * largest template (they need not be equal). */
  const bool flash_ok =
      ctx->cc_major >= 8 && head_dim <= FA_MAX_HEAD_DIM && v_head_dim <= FA_MAX_HEAD_DIM;
  int64_t impl = ctx->attn_impl;
  if (impl == 0) impl = flash_ok ? 1 : 2;
  if (impl == 1 && !flash_ok)
    return cu_fail(ctx, RL_ERR_UNSUPPORTED, op,
                   "head_dim %d / v_head_dim %d is not supported by flash attention (max %d "
                   "each); use attn_impl 2 (eager) or 0 (auto)",
                   head_dim, v_head_dim, FA_MAX_HEAD_DIM);

  attn_args a;
  a.out = out;
  a.q = q;
  a.k = k;
  a.v = v;
  a.kv_valid = NULL;
  a.slopes = NULL;
  a.q_stride = q_stride;
  a.k_stride = k_stride;
  a.v_stride = v_stride;
  a.n_q = n_q;
  a.q_start = q_start;
  a.kv_len = kv_len;
  a.n_heads = n_heads;
  a.group = n_heads / n_kv_heads;
  a.head_dim = head_dim;
  a.v_head_dim = v_head_dim;
  a.window = window;
  a.scale = scale;
  a.softcap = softcap;
  if (kv_valid) {
    void *d = NULL;
    TRY(upload_params(ctx, op, SCR_KV_VALID, kv_valid, (uint64_t)kv_len, &d));
    a.kv_valid = static_cast<const uint8_t *>(d);
  }
  if (alibi_slopes) {
    void *d = NULL;
    TRY(upload_params(ctx, op, SCR_ALIBI, alibi_slopes, sizeof(float) * (uint64_t)n_heads, &d));
    a.slopes = static_cast<const float *>(d);
  }
  return impl == 1 ? attention_flash(ctx, op, a, n_kv_heads) : attention_eager(ctx, op, a);
}

RL_API int32_t rl_attention(rl_ctx *ctx, float *out, const float *q, int32_t q_stride,
                            const float *k, int32_t k_stride, const float *v, int32_t v_stride,
                            int32_t n_q, int32_t q_start, int32_t kv_len, int32_t n_heads,
                            int32_t n_kv_heads, int32_t head_dim, int32_t v_head_dim, float scale,
                            int32_t window, float softcap, const uint8_t *kv_valid) {
  ENTER();
  CHECK_ARGS(rl_check_attention, out, q, q_stride, k, k_stride, v, v_stride, n_q, q_start, kv_len,
             n_heads, n_kv_heads, head_dim, v_head_dim);
  return attention(ctx, op, out, q, q_stride, k, k_stride, v, v_stride, n_q, q_start, kv_len,
                   n_heads, n_kv_heads, head_dim, v_head_dim, scale, window, softcap, kv_valid,
                   NULL);
}

RL_API int32_t rl_attention_alibi(rl_ctx *ctx, float *out, const float *q, int32_t q_stride,
                                  const float *k, int32_t k_stride, const float *v,
                                  int32_t v_stride, int32_t n_q, int32_t q_start, int32_t kv_len,
                                  int32_t n_heads, int32_t n_kv_heads, int32_t head_dim,
                                  int32_t v_head_dim, float scale, int32_t window, float softcap,
                                  const uint8_t *kv_valid, const float *alibi_slopes) {
  ENTER();
  CHECK_ARGS(rl_check_attention, out, q, q_stride, k, k_stride, v, v_stride, n_q, q_start, kv_len,
             n_heads, n_kv_heads, head_dim, v_head_dim);
  CHECK_ARGS(rl_check_alibi_slopes, alibi_slopes, n_heads);
  return attention(ctx, op, out, q, q_stride, k, k_stride, v, v_stride, n_q, q_start, kv_len,
                   n_heads, n_kv_heads, head_dim, v_head_dim, scale, window, softcap, kv_valid,
                   alibi_slopes);
}
