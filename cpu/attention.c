/*
 * rl_attention, rl_attention_alibi: causal GQA attention of n_q new queries over one sequence's
 * KV cache, fp32.
 *
 * Flash-style: keys are visited in blocks of ATT_KB with an online softmax (running max and sum
 * per query; what was accumulated is rescaled when the max grows), so no kv_len-long score
 * buffer is needed and every exp() argument is <= 0 (vf_exp, within 2 ulp of expf).
 *
 * The work of a kv head is its rows r = t * group + h' (query t, h'-th query head of the group):
 * the queries that share every K and V row it loads. Two kernels, by the number of rows:
 *  - Many rows (prefill): a task is one kv head and up to ATT_ROWS consecutive rows. Everything
 *    it keeps is laid out with the rows along the vector lanes ("transposed"): Q^T[d][r],
 *    scores S^T[j][r], O^T[d][r]. Then S^T[j][:] = sum_d K[j][d] * Q^T[d][:] and
 *    O^T[d][:] += sum_j V[j][d] * P^T[j][:] are one register-tiled outer-product kernel (a
 *    scalar of K or V broadcast against row vectors: no horizontal sums, no copies of K or V,
 *    any head_dim), and the softmax runs across rows, VL rows per instruction. Rows are padded
 *    to whole vectors; pad rows compute harmless finite values that are never written out.
 *    Tasks run dynamically, the last rows (whose queries see the most keys) first.
 *  - Fewer rows than vector lanes (decode): lanes would go unused, and there would be too few
 *    tasks for the threads. A task is one kv head and a share of the keys; row by row, scores
 *    are dot products (8 keys' lane sums reduced together) and the softmax and P.V run along the
 *    keys. Each task leaves a partial (max, sum, unnormalized output) per row; the parts are
 *    merged by rescaling to the largest max.
 *
 * Keys and values are read with their own row strides and head sizes (k_stride, head_dim;
 * v_stride, v_head_dim): scores use head_dim dims, outputs have v_head_dim, so an MLA latent
 * cache (v pointing into k's rows, v_head_dim < head_dim) runs through the same kernels. With
 * v == k's layout the operations, and so the results, are those of one shared kv_stride.
 *
 * ALiBi (rl_attention_alibi): after the scale and softcap, a score gains slope[h] * (j - pos), the
 * (non-positive) distance of key j from the row's query at cache index pos, exact in f32; the
 * prefill kernel keeps each row's slope beside its relative position, the decode kernel adds it
 * per key. Without slopes nothing is added (the results are rl_attention's, bit for bit).
 *
 * Masking: scores of keys a row may not see become -inf (their exp is 0); running maxima start
 * at -FLT_MAX, not -inf, so a row that has seen no key yet never computes inf - inf. A row that
 * sees no key at all keeps a zero sum and yields zeros.
 */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "internal.h"
#include "simd.h"

#define ATT_KB 64 /* keys per block */
#if RL_VREGS >= 32
#define ATT_RV 4 /* row vectors per task: 6 x 4 accumulators + 4 row vectors + 1 broadcast */
#else
#define ATT_RV 2 /* 6 x 2 accumulators + 2 row vectors + 1 broadcast of 16 registers */
#endif
#define ATT_ROWS (ATT_RV * VL) /* (query, head) rows per task */
#define ATT_AT 6               /* rows of the outer-product tile (keys or dims) */

#define ALWAYS_INLINE static inline __attribute__((always_inline))

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

typedef struct {
  float *out;
  const float *q, *k, *v;
  int64_t q_stride, k_stride, v_stride;
  int32_t q_start, n_heads, group, head_dim, v_head_dim, window;
  float scale, softcap;
  const uint8_t *kv_valid;
  const float *slopes; /* ALiBi slope per query head, or NULL */
} att_args;

/* ----------------------------------------------------------------------------------------------
 * Many rows: transposed tiles */

/* c[i][:] (+)= sum_{b < nb} A(i, b) * bt[b][:] for i < at, over rv vectors of rows, where
 * A(i, b) = a[i * sa + b * sb] and rows of c and bt are ld floats apart. at and rv are
 * compile-time constants at every call site. */
ALWAYS_INLINE void outer(float *c, const float *a, int64_t sa, int64_t sb, const float *bt,
                         int64_t ld, int64_t nb, int accumulate, int at, int rv) {
  vf acc[ATT_AT][ATT_RV];
  for (int i = 0; i < at; i++)
    for (int v = 0; v < rv; v++) acc[i][v] = accumulate ? vf_load(c + i * ld + v * VL) : vf_zero();
  for (int64_t b = 0; b < nb; b++) {
    vf bv[ATT_RV];
    for (int v = 0; v < rv; v++) bv[v] = vf_load(bt + b * ld + v * VL);
    for (int i = 0; i < at; i++) {
      const vf ai = vf_set1(a[i * sa + b * sb]);
      for (int v = 0; v < rv; v++) acc[i][v] = vf_fma(ai, bv[v], acc[i][v]);
    }
  }
  for (int i = 0; i < at; i++)
    for (int v = 0; v < rv; v++) vf_store(c + i * ld + v * VL, acc[i][v]);
}

typedef void outer_fn(float *c, const float *a, int64_t sa, int64_t sb, const float *bt,
                      int64_t ld, int64_t nb, int accumulate);

#define OUTER_FN(at, rv)                                                                          \
  static void outer_##at##x##rv(float *c, const float *a, int64_t sa, int64_t sb,                 \
                                const float *bt, int64_t ld, int64_t nb, int accumulate) {        \
    outer(c, a, sa, sb, bt, ld, nb, accumulate, at, rv);                                          \
  }
#if ATT_RV == 4
#define OUTER_FNS(at) OUTER_FN(at, 1) OUTER_FN(at, 2) OUTER_FN(at, 3) OUTER_FN(at, 4)
#define OUTER_ROW(at) {outer_##at##x1, outer_##at##x2, outer_##at##x3, outer_##at##x4}
#else
#define OUTER_FNS(at) OUTER_FN(at, 1) OUTER_FN(at, 2)
#define OUTER_ROW(at) {outer_##at##x1, outer_##at##x2}
#endif
OUTER_FNS(1)
OUTER_FNS(2)
OUTER_FNS(3)
OUTER_FNS(4)
OUTER_FNS(5)
OUTER_FNS(6)
/* outers[at - 1][rv - 1] */
static outer_fn *const outers[ATT_AT][ATT_RV] = {OUTER_ROW(1), OUTER_ROW(2), OUTER_ROW(3),
                                                 OUTER_ROW(4), OUTER_ROW(5), OUTER_ROW(6)};

/* c[i][:] (+)= sum_b A(i, b) * bt[b][:] for i < n, in tiles of ATT_AT. */
static void outer_all(float *c, const float *a, int64_t sa, int64_t sb, const float *bt,
                      int64_t ld, int64_t nb, int64_t n, int rv, int accumulate) {
  for (int64_t i = 0; i < n; i += ATT_AT)
    outers[min64(ATT_AT, n - i) - 1][rv - 1](c + i * ld, a + i * sa, sa, sb, bt, ld, nb,
                                             accumulate);
}

/* n as f32, clamped to +-2^24 where f32 holds every integer: key distances and windows beyond
 * that compare as if they were 2^24. */
static inline float clamped_f32(int64_t n) {
  const int64_t lim = (int64_t)1 << 24;
  return (float)(n < -lim ? -lim : n > lim ? lim : n);
}

/* Rows [f0, f1) of kv head g (row f is query f / group, head g * group + f % group). ws holds
 * (head_dim + v_head_dim + ATT_KB + 4) * ATT_ROWS floats. */
static void attend(const att_args *a, float *ws, int32_t g, int64_t f0, int64_t f1) {
  const int64_t D = a->head_dim, Dv = a->v_head_dim, R = f1 - f0, group = a->group;
  const int rv = (int)((R + VL - 1) / VL);
  const int64_t ld = rv * VL; /* floats per transposed row */
  float *qt = ws, *ot = qt + D * ld, *st = ot + Dv * ld, *mx = st + ATT_KB * ld, *sum = mx + ld;
  float *posf = sum + ld; /* each row's query's cache index - the first row's */
  float *slope = posf + ld; /* each row's ALiBi slope (with a->slopes) */
  const float *k = a->k + g * D, *v = a->v + g * Dv; /* first cache row of this kv head */

  for (int64_t r = 0; r < ld; r++) {
    const int64_t f = f0 + (r < R ? r : 0), t = f / group, h = g * group + f % group;
    const float *qr = a->q + t * a->q_stride + h * D;
    for (int64_t d = 0; d < D; d++) qt[d * ld + r] = r < R ? qr[d] : 0.0f;
    posf[r] = (float)(t - f0 / group);
    slope[r] = a->slopes ? a->slopes[h] : 0.0f;
    mx[r] = -FLT_MAX;
    sum[r] = 0.0f;
  }
  for (int64_t i = 0; i < Dv * ld; i++) ot[i] = 0.0f;

  /* keys of the first row's window .. the last row's position */
  const int64_t pos_first = a->q_start + f0 / group, hi = a->q_start + (f1 - 1) / group;
  const int64_t lo = a->window > 0 && pos_first - a->window + 1 > 0 ? pos_first - a->window + 1 : 0;
  for (int64_t j0 = lo; j0 <= hi; j0 += ATT_KB) {
    const int64_t kb = min64(ATT_KB, hi + 1 - j0);
    /* S^T[j][:] = K[j0 + j] . Q^T */
    outer_all(st, k + j0 * a->k_stride, a->k_stride, 1, qt, ld, D, kb, rv, 0);
    for (int64_t i = 0; i < kb * ld; i += VL)
      vf_store(st + i, vf_mul(vf_load(st + i), vf_set1(a->scale)));
    if (a->softcap > 0.0f)
      for (int64_t i = 0; i < kb * ld; i++) st[i] = a->softcap * tanhf(st[i] / a->softcap);
    if (a->slopes) /* ALiBi: + slope * (key - pos), key - pos = (key - pos_first) - posf */
      for (int64_t j = 0; j < kb; j++) {
        const vf rel0 = vf_set1(clamped_f32(j0 + j - pos_first));
        float *sj = st + j * ld;
        for (int64_t r = 0; r < ld; r += VL)
          vf_store(sj + r, vf_add(vf_load(sj + r),
                                  vf_mul(vf_load(slope + r), vf_sub(rel0, vf_load(posf + r)))));
      }
    /* masks: whole rows of S^T (keys) when every row sees the block's keys but for kv_valid */
    const int all_see = j0 + kb - 1 <= pos_first && (a->window <= 0 || hi - j0 < a->window);
    const vf neg_inf = vf_set1(-INFINITY);
    for (int64_t j = 0; j < kb; j++) {
      const int64_t key = j0 + j;
      float *sj = st + j * ld;
      if (a->kv_valid && !a->kv_valid[key])
        for (int64_t r = 0; r < ld; r += VL) vf_store(sj + r, neg_inf);
      else if (!all_see) /* row r sees key iff 0 <= its distance < window */
        for (int64_t r = 0; r < ld; r += VL) {
          const vf dist = vf_add(vf_load(posf + r), vf_set1(clamped_f32(pos_first - key)));
          vf sv = vf_select_ge0(dist, vf_load(sj + r), neg_inf);
          if (a->window > 0)
            sv = vf_select_ge0(vf_sub(vf_set1(clamped_f32(a->window - 1)), dist), sv, neg_inf);
          vf_store(sj + r, sv);
        }
    }
    /* online softmax, VL rows at a time: P^T replaces S^T, O^T and the sums are rescaled */
    for (int64_t r = 0; r < ld; r += VL) {
      vf m = vf_load(mx + r);
      for (int64_t j = 0; j < kb; j++) m = vf_max(m, vf_load(st + j * ld + r));
      const vf f = vf_exp(vf_sub(vf_load(mx + r), m)); /* 1 when the max did not grow */
      vf s = vf_mul(vf_load(sum + r), f);
      for (int64_t j = 0; j < kb; j++) {
        const vf p = vf_exp(vf_sub(vf_load(st + j * ld + r), m));
        vf_store(st + j * ld + r, p);
        s = vf_add(s, p);
      }
      vf_store(mx + r, m);
      vf_store(sum + r, s);
      for (int64_t d = 0; d < Dv; d++)
        vf_store(ot + d * ld + r, vf_mul(vf_load(ot + d * ld + r), f));
    }
    /* O^T[d][:] += sum_j V[j0 + j][d] * P^T[j][:] */
    outer_all(ot, v + j0 * a->v_stride, 1, a->v_stride, st, ld, kb, Dv, rv, 1);
  }

  for (int64_t r = 0; r < R; r++) {
    const int64_t f = f0 + r, t = f / group, h = g * group + f % group;
    const float inv = sum[r] > 0.0f ? 1.0f / sum[r] : 0.0f; /* no key seen: zeros */
    float *o = a->out + (t * a->n_heads + h) * Dv;
    for (int64_t d = 0; d < Dv; d++) o[d] = ot[d * ld + r] * inv;
  }
}

/* ----------------------------------------------------------------------------------------------
 * Fewer rows than lanes: dot products, keys split among tasks */

/* s[j] = q . k_j for j < kb, keys k_stride apart, D elements each: 8 keys at a time, their lane
 * sums reduced together. */
static void scores(float *s, const float *q, const float *k, int64_t k_stride, int64_t D,
                   int64_t kb) {
  int64_t j = 0;
  for (; j + 8 <= kb; j += 8) {
    vf acc[8];
    for (int u = 0; u < 8; u++) acc[u] = vf_zero();
    int64_t d = 0;
    for (; d + VL <= D; d += VL) {
      const vf qv = vf_load(q + d);
      for (int u = 0; u < 8; u++) acc[u] = vf_fma(qv, vf_load(k + (j + u) * k_stride + d), acc[u]);
    }
    if (d < D) {
      const int n = (int)(D - d);
      const vf qv = vf_load_part(q + d, n);
      for (int u = 0; u < 8; u++)
        acc[u] = vf_fma(qv, vf_load_part(k + (j + u) * k_stride + d, n), acc[u]);
    }
    vf_sum4(s + j, acc[0], acc[1], acc[2], acc[3]);
    vf_sum4(s + j + 4, acc[4], acc[5], acc[6], acc[7]);
  }
  for (; j < kb; j++) s[j] = dot_f32(q, k + j * k_stride, D);
}

/* o[:nv*VL] = o * f + sum_{j < kb} p[j] * v_j[:nv*VL] (rows v_stride apart), the last vector of
 * v_j only last_n lanes long. nv is a compile-time constant at every call site. */
ALWAYS_INLINE void pv_chunk(float *o, float f, const float *p, const float *v, int64_t v_stride,
                            int64_t kb, int nv, int last_n) {
  vf acc[4];
  for (int c = 0; c < nv; c++) acc[c] = vf_mul(vf_load(o + c * VL), vf_set1(f));
  for (int64_t j = 0; j < kb; j++) {
    const vf pj = vf_set1(p[j]);
    const float *vj = v + j * v_stride;
    for (int c = 0; c < nv; c++)
      acc[c] = vf_fma(pj, c < nv - 1 || last_n == VL ? vf_load(vj + c * VL)
                                                     : vf_load_part(vj + c * VL, last_n),
                      acc[c]);
  }
  for (int c = 0; c < nv; c++) vf_store(o + c * VL, acc[c]);
}

/* o[:D] = o[:D] * f + sum_{j < kb} p[j] * v_j, 4 vectors of o at a time (o is padded to whole
 * vectors). */
static void accumulate_pv(float *o, float f, const float *p, const float *v, int64_t v_stride,
                          int64_t D, int64_t kb) {
  for (int64_t d0 = 0; d0 < D; d0 += 4 * VL) {
    const int nv = (int)min64(4, (D - d0 + VL - 1) / VL);
    const int last_n = (int)min64(VL, D - d0 - (nv - 1) * VL);
    switch (nv) {
    case 1: pv_chunk(o + d0, f, p, v + d0, v_stride, kb, 1, last_n); break;
    case 2: pv_chunk(o + d0, f, p, v + d0, v_stride, kb, 2, last_n); break;
    case 3: pv_chunk(o + d0, f, p, v + d0, v_stride, kb, 3, last_n); break;
    default: pv_chunk(o + d0, f, p, v + d0, v_stride, kb, 4, last_n); break;
    }
  }
}

/* Rows [0, R) of kv head g over the keys [j_begin, j_end), one row at a time: scores are dot
 * products and the softmax runs along the keys. Writes each row's running max, sum and
 * unnormalized output to part[r * (v_head_dim + 2) ...] for merge_parts. ws holds
 * ATT_KB + v_head_dim + VL floats. */
static void attend_few(const att_args *a, float *ws, int32_t g, int64_t R, int64_t j_begin,
                       int64_t j_end, float *part) {
  const int64_t D = a->head_dim, Dv = a->v_head_dim, group = a->group;
  float *s = ws, *o = s + ATT_KB;
  const float *k = a->k + g * D, *v = a->v + g * Dv; /* first cache row of this kv head */
  for (int64_t r = 0; r < R; r++) {
    const int64_t t = r / group, h = g * group + r % group, pos = a->q_start + t;
    const float *q = a->q + t * a->q_stride + h * D;
    const float slope = a->slopes ? a->slopes[h] : 0.0f;
    const int64_t first = a->window > 0 && pos - a->window + 1 > j_begin ? pos - a->window + 1
                                                                          : j_begin;
    const int64_t last = pos < j_end - 1 ? pos : j_end - 1;
    float m = -FLT_MAX, l = 0.0f;
    for (int64_t d = 0; d < (Dv + VL - 1) / VL * VL; d++) o[d] = 0.0f;
    for (int64_t j0 = first; j0 <= last; j0 += ATT_KB) {
      const int64_t kb = min64(ATT_KB, last + 1 - j0), kv = (kb + VL - 1) / VL * VL;
      scores(s, q, k + j0 * a->k_stride, a->k_stride, D, kb);
      for (int64_t j = 0; j < kb; j++) {
        s[j] *= a->scale;
        if (a->softcap > 0.0f) s[j] = a->softcap * tanhf(s[j] / a->softcap);
        if (a->slopes) s[j] = s[j] + slope * (float)(j0 + j - pos); /* ALiBi */
        if (a->kv_valid && !a->kv_valid[j0 + j]) s[j] = -INFINITY;
      }
      for (int64_t j = kb; j < kv; j++) s[j] = -INFINITY; /* pad to whole vectors */
      vf mv = vf_set1(m);
      for (int64_t j = 0; j < kv; j += VL) mv = vf_max(mv, vf_load(s + j));
      const float m_new = vf_hmax(mv);
      vf sum = vf_zero();
      for (int64_t j = 0; j < kv; j += VL) {
        const vf p = vf_exp(vf_sub(vf_load(s + j), vf_set1(m_new)));
        vf_store(s + j, p);
        sum = vf_add(sum, p);
      }
      const float f = expf(m - m_new); /* 1 when the max did not grow */
      l = l * f + vf_sum(sum);
      accumulate_pv(o, f, s, v + j0 * a->v_stride, a->v_stride, Dv, kb);
      m = m_new;
    }
    float *pr = part + r * (Dv + 2);
    pr[0] = m;
    pr[1] = l;
    memcpy(pr + 2, o, sizeof(float) * (size_t)Dv);
  }
}

/* out of row r of kv head g from its n_parts partial results (parts n_kv_heads * R rows apart):
 * the outputs and sums rescaled to the largest max, then normalized. */
static void merge_parts(const att_args *a, const float *parts, int64_t n_parts, int64_t stride,
                        int32_t g, int64_t r) {
  const int64_t D = a->v_head_dim, t = r / a->group, h = g * a->group + r % a->group;
  float m = -FLT_MAX, l = 0.0f;
  for (int64_t p = 0; p < n_parts; p++) m = parts[p * stride] > m ? parts[p * stride] : m;
  float *o = a->out + (t * a->n_heads + h) * D;
  for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
  for (int64_t p = 0; p < n_parts; p++) {
    const float *pr = parts + p * stride;
    const float f = expf(pr[0] - m);
    l += pr[1] * f;
    for (int64_t d = 0; d < D; d++) o[d] += pr[2 + d] * f;
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f; /* no key seen: zeros */
  for (int64_t d = 0; d < D; d++) o[d] *= inv;
}

/* The work of both entries, their arguments checked; failures are reported as op. */
static int32_t attention(rl_ctx *ctx, const char *op, float *out, const float *q,
                         int32_t q_stride, const float *k, int32_t k_stride, const float *v,
                         int32_t v_stride, int32_t n_q, int32_t q_start, int32_t n_heads,
                         int32_t n_kv_heads, int32_t head_dim, int32_t v_head_dim, float scale,
                         int32_t window, float softcap, const uint8_t *kv_valid,
                         const float *slopes) {
  const att_args a = {out,        q,          k,       v,       q_stride,
                      k_stride,   v_stride,   q_start, n_heads, n_heads / n_kv_heads,
                      head_dim,   v_head_dim, window,  scale,   softcap,
                      kv_valid,   slopes};
  const int64_t rows = (int64_t)n_q * a.group; /* per kv head */
  const int64_t work = (int64_t)n_q * n_heads * (q_start + n_q) * ((head_dim + v_head_dim) / 2);
  const int n_threads = work >= PAR_MIN_WORK ? ctx->n_threads : 1;
  const int few = rows < VL;
  /* few rows: tasks split the keys (every row's, from the first query's window on) and leave
   * partial results to merge; else tasks are blocks of ATT_ROWS rows, the last (costliest) first */
  const int64_t key_lo = window > 0 && q_start - window + 1 > 0 ? q_start - window + 1 : 0;
  const int64_t keys = (int64_t)q_start + n_q - key_lo;
  const int64_t want = (4 * n_threads + n_kv_heads - 1) / n_kv_heads; /* 4 tasks per thread */
  const int64_t splits = n_threads == 1 ? 1 : min64(want, (keys + ATT_KB - 1) / ATT_KB);
  const int64_t split_len = (keys + splits - 1) / splits;
  const int64_t blocks = (rows + ATT_ROWS - 1) / ATT_ROWS;
  const int64_t tasks = (few ? splits : blocks) * n_kv_heads;
  const int64_t part_floats = rows * (v_head_dim + 2); /* per kv head and split */
  /* work areas (multiples of 16 floats), then the parts */
  const size_t ws_floats = few ? (size_t)(ATT_KB + v_head_dim + VL + 15) / 16 * 16
                               : (size_t)(head_dim + v_head_dim + ATT_KB + 4) * ATT_ROWS;
  const size_t parts_floats = few ? (size_t)(tasks * part_floats) : 0;
  const size_t floats = ws_floats * (size_t)n_threads + parts_floats;
  float *ws = aligned_alloc(64, (sizeof(float) * floats + 63) / 64 * 64);
  if (!ws)
    return cpu_fail(ctx, RL_ERR_OOM, op, "out of memory for a %zu-float work area", floats);
  float *parts = ws + ws_floats * (size_t)n_threads;
#pragma omp parallel num_threads(n_threads)
  {
    float *mine = ws + ws_floats * (size_t)omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < tasks; i++) {
      const int32_t g = (int32_t)(i % n_kv_heads);
      if (few) {
        const int64_t sp = i / n_kv_heads, j_begin = key_lo + sp * split_len;
        attend_few(&a, mine, g, rows, j_begin, min64(j_begin + split_len, key_lo + keys),
                   parts + (g * splits + sp) * part_floats);
      } else {
        const int64_t b = blocks - 1 - i / n_kv_heads;
        attend(&a, mine, g, b * ATT_ROWS, min64(rows, (b + 1) * ATT_ROWS));
      }
    }
    if (few) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n_kv_heads * rows; i++) {
        const int32_t g = (int32_t)(i / rows);
        merge_parts(&a, parts + g * splits * part_floats + (i % rows) * (v_head_dim + 2), splits,
                    part_floats, g, i % rows);
      }
    }
  }
  free(ws);
  return RL_OK;
}

RL_API int32_t rl_attention(rl_ctx *ctx, float *out, const float *q, int32_t q_stride,
                            const float *k, int32_t k_stride, const float *v, int32_t v_stride,
                            int32_t n_q, int32_t q_start, int32_t kv_len, int32_t n_heads,
                            int32_t n_kv_heads, int32_t head_dim, int32_t v_head_dim, float scale,
                            int32_t window, float softcap, const uint8_t *kv_valid) {
  CHECK_ARGS(rl_check_attention, out, q, q_stride, k, k_stride, v, v_stride, n_q, q_start, kv_len,
             n_heads, n_kv_heads, head_dim, v_head_dim);
  return attention(ctx, __func__, out, q, q_stride, k, k_stride, v, v_stride, n_q, q_start,
                   n_heads, n_kv_heads, head_dim, v_head_dim, scale, window, softcap,
                   kv_valid, NULL);
}

RL_API int32_t rl_attention_alibi(rl_ctx *ctx, float *out, const float *q, int32_t q_stride,
                                  const float *k, int32_t k_stride, const float *v,
                                  int32_t v_stride, int32_t n_q, int32_t q_start, int32_t kv_len,
                                  int32_t n_heads, int32_t n_kv_heads, int32_t head_dim,
                                  int32_t v_head_dim, float scale, int32_t window, float softcap,
                                  const uint8_t *kv_valid, const float *alibi_slopes) {
  CHECK_ARGS(rl_check_attention, out, q, q_stride, k, k_stride, v, v_stride, n_q, q_start, kv_len,
             n_heads, n_kv_heads, head_dim, v_head_dim);
  CHECK_ARGS(rl_check_alibi_slopes, alibi_slopes, n_heads);
  return attention(ctx, __func__, out, q, q_stride, k, k_stride, v, v_stride, n_q, q_start,
                   n_heads, n_kv_heads, head_dim, v_head_dim, scale, window, softcap,
                   kv_valid, alibi_slopes);
}
