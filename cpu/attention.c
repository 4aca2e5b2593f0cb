/*
 * rl_attention: causal GQA attention of n_q new queries over one sequence's KV cache, fp32.
 * One (query, head) pair per task. Softmax is computed online in a single pass over the keys
 * (running max and sum, output rescaled when the max grows), so no score buffer is needed and
 * every exp() argument is <= 0.
 */
#include <math.h>

#include "internal.h"
#include "simd.h"

/* o[head_dim] = softmax over visible keys j in [lo, hi] of score(q, k_j), applied to v_j.
 * k and v point at the first cache row of this kv head; rows are kv_stride apart. */
static void attend(float *o, const float *q, const float *k, const float *v, int64_t kv_stride,
                   int32_t lo, int32_t hi, int32_t head_dim, float scale, float softcap,
                   const uint8_t *kv_valid) {
  float max = -INFINITY, sum = 0.0f;
  for (int32_t d = 0; d < head_dim; d++) o[d] = 0.0f;
  for (int32_t j = lo; j <= hi; j++) {
    if (kv_valid && !kv_valid[j]) continue;
    float s = dot_f32(q, k + j * kv_stride, head_dim) * scale;
    if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
    if (s > max) { /* rescale what was accumulated under the old max */
      const float f = expf(max - s);
      sum *= f;
      for (int32_t d = 0; d < head_dim; d++) o[d] *= f;
      max = s;
    }
    const float p = expf(s - max);
    const float *vj = v + j * kv_stride;
    sum += p;
    for (int32_t d = 0; d < head_dim; d++) o[d] += p * vj[d];
  }
  if (sum > 0.0f) { /* a query that sees no key keeps its zeros */
    const float inv = 1.0f / sum;
    for (int32_t d = 0; d < head_dim; d++) o[d] *= inv;
  }
}

RL_API int32_t rl_attention(rl_ctx *ctx, float *out, const float *q, int32_t q_stride,
                            const float *k, const float *v, int32_t kv_stride, int32_t n_q,
                            int32_t q_start, int32_t kv_len, int32_t n_heads, int32_t n_kv_heads,
                            int32_t head_dim, float scale, int32_t window, float softcap,
                            const uint8_t *kv_valid) {
  REQUIRE_CTX();
  REQUIRE_PTR(out);
  REQUIRE_PTR(q);
  REQUIRE_PTR(k);
  REQUIRE_PTR(v);
  REQUIRE_POS(n_q);
  REQUIRE_POS(kv_len);
  REQUIRE_POS(n_heads);
  REQUIRE_POS(n_kv_heads);
  REQUIRE_POS(head_dim);
  REQUIRE(n_heads % n_kv_heads == 0, "n_heads %d is not a multiple of n_kv_heads %d", n_heads,
          n_kv_heads);
  REQUIRE(q_start >= 0, "q_start must be >= 0, got %d", q_start);
  REQUIRE((int64_t)q_start + n_q <= kv_len,
          "q_start %d + n_q %d exceeds kv_len %d (the new tokens' keys must be in the cache)",
          q_start, n_q, kv_len);
  REQUIRE((int64_t)n_heads * head_dim <= q_stride,
          "q_stride %d is less than n_heads * head_dim = %d * %d", q_stride, n_heads, head_dim);
  REQUIRE((int64_t)n_kv_heads * head_dim <= kv_stride,
          "kv_stride %d is less than n_kv_heads * head_dim = %d * %d", kv_stride, n_kv_heads,
          head_dim);

  const int32_t group = n_heads / n_kv_heads;
  const int64_t pairs = (int64_t)n_q * n_heads;
  const int64_t work = pairs * (q_start + n_q) * head_dim;
  /* Round-robin pairs: later queries see more keys, so contiguous chunks would be unbalanced. */
#pragma omp parallel for schedule(static, 1) num_threads(ctx->n_threads) if (work >= PAR_MIN_WORK)
  for (int64_t p = 0; p < pairs; p++) {
    const int32_t t = (int32_t)(p / n_heads), h = (int32_t)(p % n_heads);
    const int32_t pos = q_start + t; /* cache index of this query */
    const int32_t lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
    const int64_t kv_off = (int64_t)(h / group) * head_dim;
    attend(out + t * (int64_t)n_heads * head_dim + (int64_t)h * head_dim,
           q + t * (int64_t)q_stride + (int64_t)h * head_dim, k + kv_off, v + kv_off, kv_stride,
           lo, pos, head_dim, scale, softcap, kv_valid);
  }
  return RL_OK;
}
