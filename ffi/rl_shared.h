/*
 * What the CPU (cpu/) and CUDA (cuda/) backends share, so the two cannot drift: the argument
 * checks of every op and copy (their conditions, their order and their messages), and small
 * helpers. Internal: not part of the ABI in rabbitllm.h; plain C, also compiled as C++ (nvcc, and
 * g++ for the CUDA emulation).
 *
 * A check rl_check_<op>(msg, msg_cap, args...) returns RL_OK, or a status (RL_ERR_INVALID) with
 * the reason written into msg (msg_cap bytes, NUL-terminated), such as "n must be > 0, got 0".
 * Each backend calls it after checking ctx, through its macro CHECK_ARGS, and reports the reason
 * as "<op>: <reason>" with its own error function (cpu_fail, cu_fail). What only one backend
 * needs stays there (CUDA: device pointer alignment, grid limits, flash attention's head_dim).
 */
#ifndef RL_SHARED_H
#define RL_SHARED_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "rabbitllm.h"

/* Room for a check's reason (the context's error holds 512 bytes with the op's name). */
#define RL_MSG_CAP 448

/* Whether [a, a + an) and [b, b + bn) share a byte. */
static inline int rl_ranges_overlap(const void *a, uint64_t an, const void *b, uint64_t bn) {
  const uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
  return x < y + bn && y < x + an;
}

/* rl_act_mul: out ([rows, cols]) may equal gate or up when in_stride == cols (each element is
 * read, then written by the same thread); any other overlap would let a GPU thread overwrite an
 * input element another thread has yet to read. Assumes rows, cols > 0 and in_stride >= cols. */
static inline int act_mul_aliasing_ok(const float *out, const float *gate, const float *up,
                                      int32_t rows, int32_t cols, int32_t in_stride) {
  const uint64_t out_b = (uint64_t)rows * (uint64_t)cols * sizeof(float);
  const uint64_t in_b = ((uint64_t)(rows - 1) * (uint64_t)in_stride + (uint64_t)cols) * sizeof(float);
  const int in_place = in_stride == cols;
  if (!(in_place && out == gate) && rl_ranges_overlap(out, out_b, gate, in_b)) return 0;
  if (!(in_place && out == up) && rl_ranges_overlap(out, out_b, up, in_b)) return 0;
  return 1;
}

/* Copies src into buf (cap bytes, NUL-terminated, truncated to fit); returns strlen(src). */
static inline int64_t rl_copy_string(const char *src, uint8_t *buf, int64_t cap) {
  const size_t len = strlen(src);
  if (buf && cap > 0) {
    const size_t n = len < (size_t)cap - 1 ? len : (size_t)cap - 1;
    memcpy(buf, src, n);
    buf[n] = 0;
  }
  return (int64_t)len;
}

/* ----------------------------------------------------------------------------------------------
 * The checks every op is made of */

/* Writes the reason into msg; returns RL_ERR_INVALID. */
__attribute__((format(printf, 3, 4))) static inline int32_t rl_invalid(char *msg, size_t msg_cap,
                                                                       const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, msg_cap, fmt, ap);
  va_end(ap);
  return RL_ERR_INVALID;
}

/* `name` (the argument's name) is not NULL. */
static inline int32_t rl_check_ptr(char *msg, size_t msg_cap, const void *p, const char *name) {
  return p != NULL ? RL_OK : rl_invalid(msg, msg_cap, "%s is NULL", name);
}

/* ok: the argument `name`, of value n, is > 0 (tested by the caller in the argument's type). */
static inline int32_t rl_check_pos(char *msg, size_t msg_cap, int ok, long long n,
                                   const char *name) {
  return ok ? RL_OK : rl_invalid(msg, msg_cap, "%s must be > 0, got %lld", name, n);
}

static inline int32_t rl_check_dtype(char *msg, size_t msg_cap, int32_t dt, const char *name) {
  return dt == RL_F32 || dt == RL_F16 || dt == RL_BF16
             ? RL_OK
             : rl_invalid(msg, msg_cap, "%s %d is not a dtype (0=f32, 1=f16, 2=bf16)", name, (int)dt);
}

/* Elements per block and bytes per block of a dtype (plain types: a block of one element). */
static inline int32_t rl_block_elems(int32_t dt) {
  switch (dt) {
  case RL_Q8_0: case RL_Q4_0: case RL_Q4_1: case RL_Q5_0: case RL_Q5_1: return 32;
  case RL_Q4_K: case RL_Q5_K: case RL_Q6_K: return 256;
  default: return 1;
  }
}
static inline int32_t rl_block_bytes(int32_t dt) {
  static const int32_t bytes[RL_DTYPE_COUNT] = {4, 2, 2, 34, 18, 20, 22, 24, 144, 176, 210};
  return dt >= 0 && dt < RL_DTYPE_COUNT ? bytes[dt] : 0;
}
/* Bytes of a row of k elements (k a multiple of the block). */
static inline uint64_t rl_row_bytes(int32_t dt, int64_t k) {
  return (uint64_t)(k / rl_block_elems(dt)) * (uint64_t)rl_block_bytes(dt);
}
static inline const char *rl_dtype_name(int32_t dt) {
  static const char *const names[RL_DTYPE_COUNT] = {"f32",  "f16",  "bf16", "q8_0", "q4_0", "q4_1",
                                                     "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"};
  return dt >= 0 && dt < RL_DTYPE_COUNT ? names[dt] : "?";
}

/* A weight dtype of rl_matmul / rl_embedding: a plain one or a block format whose block divides
 * the row length k (named `k_name`). */
static inline int32_t rl_check_weight_dtype(char *msg, size_t msg_cap, int32_t dt, const char *name,
                                            int64_t k, const char *k_name) {
  if (dt < 0 || dt >= RL_DTYPE_COUNT)
    return rl_invalid(msg, msg_cap,
                      "%s %d is not a dtype (0=f32, 1=f16, 2=bf16, 3..10=q8_0, q4_0, q4_1, q5_0, "
                      "q5_1, q4_k, q5_k, q6_k)",
                      name, (int)dt);
  if (k > 0 && k % rl_block_elems(dt) != 0)
    return rl_invalid(msg, msg_cap, "%s %s has blocks of %d elements; %s %lld is not a multiple",
                      name, rl_dtype_name(dt), (int)rl_block_elems(dt), k_name, (long long)k);
  return RL_OK;
}

/* Within the rl_check_* functions below (msg and msg_cap in scope); #undef'd at the end. */
#define RL_TRY(expr)                                                                              \
  do {                                                                                            \
    const int32_t rl_s_ = (expr);                                                                 \
    if (rl_s_ != RL_OK) return rl_s_;                                                             \
  } while (0)
#define RL_REQUIRE(cond, ...)                                                                     \
  do {                                                                                            \
    if (!(cond)) return rl_invalid(msg, msg_cap, __VA_ARGS__);                                    \
  } while (0)
#define RL_PTR(p) RL_TRY(rl_check_ptr(msg, msg_cap, (p), #p))
#define RL_POS(n) RL_TRY(rl_check_pos(msg, msg_cap, (n) > 0, (long long)(n), #n))
#define RL_DTYPE(dt) RL_TRY(rl_check_dtype(msg, msg_cap, (dt), #dt))

/* ----------------------------------------------------------------------------------------------
 * Memory: rl_stats, the copies (rl_upload, rl_download, rl_copy, rl_upload_start), loads */

static inline int32_t rl_check_stats(char *msg, size_t msg_cap, const uint64_t *out, int32_t n) {
  RL_PTR(out);
  RL_POS(n);
  return RL_OK;
}

/* dst, the source (named src_name in the message) and bytes of a copy or a load. */
static inline int32_t rl_check_transfer(char *msg, size_t msg_cap, const void *dst,
                                        const void *src, const char *src_name, uint64_t bytes) {
  RL_PTR(dst);
  RL_TRY(rl_check_ptr(msg, msg_cap, src, src_name));
  RL_REQUIRE(bytes > 0, "bytes must be > 0, got 0");
  return RL_OK;
}

static inline int32_t rl_check_copy(char *msg, size_t msg_cap, const void *dst, const void *src,
                                    uint64_t bytes) {
  return rl_check_transfer(msg, msg_cap, dst, src, "src", bytes);
}

/* rl_load_start (path: a NUL-terminated file name). */
static inline int32_t rl_check_load(char *msg, size_t msg_cap, const void *dst,
                                    const uint8_t *path, uint64_t bytes) {
  return rl_check_transfer(msg, msg_cap, dst, path, "path", bytes);
}

/* ----------------------------------------------------------------------------------------------
 * Ops, in the order of rabbitllm.h */

static inline int32_t rl_check_matmul(char *msg, size_t msg_cap, const float *out, const float *x,
                                      const void *w, int32_t wdtype, const void *bias,
                                      int32_t bias_dtype, int32_t M, int32_t N, int32_t K) {
  RL_PTR(out);
  RL_PTR(x);
  RL_PTR(w);
  RL_TRY(rl_check_weight_dtype(msg, msg_cap, wdtype, "wdtype", K, "K"));
  if (bias) RL_DTYPE(bias_dtype);
  RL_POS(M);
  RL_POS(N);
  RL_POS(K);
  RL_REQUIRE(out + (int64_t)M * N <= x || x + (int64_t)M * K <= out,
             "out [%d,%d] overlaps x [%d,%d]", M, N, M, K);
  return RL_OK;
}

/* ids is a host buffer: every id is checked before anything runs. */
static inline int32_t rl_check_embedding(char *msg, size_t msg_cap, const float *out,
                                         const void *table, int32_t dtype, const int32_t *ids,
                                         int32_t n, int32_t dim, int32_t vocab) {
  RL_PTR(out);
  RL_PTR(table);
  RL_PTR(ids);
  RL_TRY(rl_check_weight_dtype(msg, msg_cap, dtype, "dtype", dim, "dim"));
  RL_POS(n);
  RL_POS(dim);
  RL_POS(vocab);
  for (int32_t i = 0; i < n; i++)
    RL_REQUIRE(ids[i] >= 0 && ids[i] < vocab, "id %d at position %d out of range [0, %d)", ids[i],
               i, vocab);
  return RL_OK;
}

/* rl_rmsnorm and rl_layernorm (whose bias b may be NULL). */
static inline int32_t rl_check_norm(char *msg, size_t msg_cap, const float *out, const float *x,
                                    const void *w, int32_t wdtype, int32_t rows, int32_t dim,
                                    float eps) {
  RL_PTR(out);
  RL_PTR(x);
  RL_PTR(w);
  RL_DTYPE(wdtype);
  RL_POS(rows);
  RL_POS(dim);
  RL_REQUIRE(eps >= 0.0f, "eps must be >= 0, got %g", (double)eps);
  return RL_OK;
}

static inline int32_t rl_check_rope(char *msg, size_t msg_cap, const float *x, int32_t n_tokens,
                                    int32_t row_stride, int32_t n_heads, int32_t head_dim,
                                    int32_t rot_dim, const int32_t *positions,
                                    const float *inv_freq) {
  RL_PTR(x);
  RL_PTR(positions);
  RL_PTR(inv_freq);
  RL_POS(n_tokens);
  RL_POS(n_heads);
  RL_POS(head_dim);
  RL_POS(rot_dim);
  RL_REQUIRE(rot_dim % 2 == 0, "rot_dim %d must be even", rot_dim);
  RL_REQUIRE(rot_dim <= head_dim, "rot_dim %d must be <= head_dim %d", rot_dim, head_dim);
  RL_REQUIRE((int64_t)n_heads * head_dim <= row_stride,
             "row_stride %d is less than n_heads * head_dim = %d * %d", row_stride, n_heads,
             head_dim);
  return RL_OK;
}

static inline int32_t rl_check_attention(char *msg, size_t msg_cap, const float *out,
                                         const float *q, int32_t q_stride, const float *k,
                                         int32_t k_stride, const float *v, int32_t v_stride,
                                         int32_t n_q, int32_t q_start, int32_t kv_len,
                                         int32_t n_heads, int32_t n_kv_heads, int32_t head_dim,
                                         int32_t v_head_dim) {
  RL_PTR(out);
  RL_PTR(q);
  RL_PTR(k);
  RL_PTR(v);
  RL_POS(n_q);
  RL_POS(kv_len);
  RL_POS(n_heads);
  RL_POS(n_kv_heads);
  RL_POS(head_dim);
  RL_POS(v_head_dim);
  RL_REQUIRE(n_heads % n_kv_heads == 0, "n_heads %d is not a multiple of n_kv_heads %d", n_heads,
             n_kv_heads);
  RL_REQUIRE(q_start >= 0, "q_start must be >= 0, got %d", q_start);
  RL_REQUIRE((int64_t)q_start + n_q <= kv_len,
             "q_start %d + n_q %d exceeds kv_len %d (the new tokens' keys must be in the cache)",
             q_start, n_q, kv_len);
  RL_REQUIRE((int64_t)n_heads * head_dim <= q_stride,
             "q_stride %d is less than n_heads * head_dim = %d * %d", q_stride, n_heads, head_dim);
  RL_REQUIRE((int64_t)n_kv_heads * head_dim <= k_stride,
             "k_stride %d is less than n_kv_heads * head_dim = %d * %d", k_stride, n_kv_heads,
             head_dim);
  RL_REQUIRE((int64_t)n_kv_heads * v_head_dim <= v_stride,
             "v_stride %d is less than n_kv_heads * v_head_dim = %d * %d", v_stride, n_kv_heads,
             v_head_dim);
  const uint64_t out_b = (uint64_t)n_q * (uint64_t)n_heads * (uint64_t)v_head_dim * sizeof(float);
  const uint64_t q_b = ((uint64_t)(n_q - 1) * (uint64_t)q_stride + (uint64_t)n_heads * head_dim) *
                       sizeof(float);
  const uint64_t k_b =
      ((uint64_t)(kv_len - 1) * (uint64_t)k_stride + (uint64_t)n_kv_heads * head_dim) *
      sizeof(float);
  const uint64_t v_b =
      ((uint64_t)(kv_len - 1) * (uint64_t)v_stride + (uint64_t)n_kv_heads * v_head_dim) *
      sizeof(float);
  RL_REQUIRE(!rl_ranges_overlap(out, out_b, q, q_b), "out overlaps q");
  RL_REQUIRE(!rl_ranges_overlap(out, out_b, k, k_b), "out overlaps k");
  RL_REQUIRE(!rl_ranges_overlap(out, out_b, v, v_b), "out overlaps v");
  return RL_OK;
}

/* rl_attention_alibi's slopes: NULL (no bias) or n_heads finite floats (a host buffer). */
static inline int32_t rl_check_alibi_slopes(char *msg, size_t msg_cap, const float *alibi_slopes,
                                            int32_t n_heads) {
  if (!alibi_slopes) return RL_OK;
  for (int32_t h = 0; h < n_heads; h++)
    RL_REQUIRE(alibi_slopes[h] - alibi_slopes[h] == 0.0f,
               "alibi_slopes[%d] is %g, not a finite number", h, (double)alibi_slopes[h]);
  return RL_OK;
}

static inline int32_t rl_check_act_mul(char *msg, size_t msg_cap, const float *out,
                                       const float *gate, const float *up, int32_t rows,
                                       int32_t cols, int32_t in_stride, int32_t act) {
  RL_PTR(out);
  RL_PTR(gate);
  RL_PTR(up);
  RL_POS(rows);
  RL_POS(cols);
  RL_REQUIRE(in_stride >= cols, "in_stride %d is less than cols %d", in_stride, cols);
  RL_REQUIRE(act_mul_aliasing_ok(out, gate, up, rows, cols, in_stride),
             "out %p overlaps gate %p or up %p other than in place (out == gate or up with "
             "in_stride == cols; in_stride %d, cols %d)",
             (const void *)out, (const void *)gate, (const void *)up, in_stride, cols);
  RL_REQUIRE(act == RL_ACT_SILU || act == RL_ACT_GELU_TANH || act == RL_ACT_GELU,
             "act %d is not an activation (0=silu, 1=gelu_tanh, 2=gelu)", act);
  return RL_OK;
}

static inline int32_t rl_check_act(char *msg, size_t msg_cap, const float *out, const float *x,
                                   int64_t n, int32_t act) {
  RL_PTR(out);
  RL_PTR(x);
  RL_POS(n);
  RL_REQUIRE(out == x || !rl_ranges_overlap(out, (uint64_t)n * sizeof(float), x,
                                            (uint64_t)n * sizeof(float)),
             "out %p overlaps x %p other than in place (out == x)", (const void *)out,
             (const void *)x);
  RL_REQUIRE(act == RL_ACT_SILU || act == RL_ACT_GELU_TANH || act == RL_ACT_GELU,
             "act %d is not an activation (0=silu, 1=gelu_tanh, 2=gelu)", act);
  return RL_OK;
}

/* rl_gather_rows (table_rows = x_rows) and rl_scatter_add_rows (table_rows = out_rows; weights
 * not NULL): rows is a host buffer, every index is checked before anything runs. `table` is the
 * [table_rows, cols] matrix the indices point into, `dense` the [n, cols] one; they must not
 * overlap. */
static inline int32_t rl_check_rows(char *msg, size_t msg_cap, const float *out, const float *x,
                                    const int32_t *rows, int32_t n, int32_t cols,
                                    int32_t table_rows, const char *table_rows_name) {
  RL_PTR(out);
  RL_PTR(x);
  RL_PTR(rows);
  RL_POS(n);
  RL_POS(cols);
  RL_TRY(rl_check_pos(msg, msg_cap, table_rows > 0, (long long)table_rows, table_rows_name));
  for (int32_t i = 0; i < n; i++)
    RL_REQUIRE(rows[i] >= 0 && rows[i] < table_rows, "row %d at position %d out of range [0, %d)",
               rows[i], i, table_rows);
  return RL_OK;
}

static inline int32_t rl_check_gather_rows(char *msg, size_t msg_cap, const float *out,
                                           const float *x, const int32_t *rows, int32_t n,
                                           int32_t cols, int32_t x_rows) {
  RL_TRY(rl_check_rows(msg, msg_cap, out, x, rows, n, cols, x_rows, "x_rows"));
  RL_REQUIRE(!rl_ranges_overlap(out, (uint64_t)n * (uint64_t)cols * sizeof(float), x,
                                (uint64_t)x_rows * (uint64_t)cols * sizeof(float)),
             "out [%d,%d] overlaps x [%d,%d]", n, cols, x_rows, cols);
  return RL_OK;
}

static inline int32_t rl_check_scatter_add_rows(char *msg, size_t msg_cap, const float *out,
                                                const float *x, const int32_t *rows,
                                                const float *weights, int32_t n, int32_t cols,
                                                int32_t out_rows) {
  RL_TRY(rl_check_rows(msg, msg_cap, out, x, rows, n, cols, out_rows, "out_rows"));
  RL_PTR(weights);
  RL_REQUIRE(!rl_ranges_overlap(out, (uint64_t)out_rows * (uint64_t)cols * sizeof(float), x,
                                (uint64_t)n * (uint64_t)cols * sizeof(float)),
             "out [%d,%d] overlaps x [%d,%d]", out_rows, cols, n, cols);
  return RL_OK;
}

static inline int32_t rl_check_add(char *msg, size_t msg_cap, const float *out, const float *a,
                                   const float *b, int64_t n) {
  RL_PTR(out);
  RL_PTR(a);
  RL_PTR(b);
  RL_POS(n);
  return RL_OK;
}

static inline int32_t rl_check_scale(char *msg, size_t msg_cap, const float *out, const float *x,
                                     int64_t n) {
  RL_PTR(out);
  RL_PTR(x);
  RL_POS(n);
  return RL_OK;
}

/* rl_scale's checks, then cap's. */
static inline int32_t rl_check_softcap(char *msg, size_t msg_cap, const float *out,
                                       const float *x, float cap, int64_t n) {
  RL_TRY(rl_check_scale(msg, msg_cap, out, x, n));
  RL_REQUIRE(cap > 0.0f, "cap must be > 0, got %g", (double)cap);
  return RL_OK;
}

static inline int32_t rl_check_argmax(char *msg, size_t msg_cap, const int32_t *out,
                                      const float *x, int32_t rows, int32_t cols) {
  RL_PTR(out);
  RL_PTR(x);
  RL_POS(rows);
  RL_POS(cols);
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Tensor descriptors (rabbitllm.h "tensor descriptors") */

/* A checked descriptor, decoded. */
typedef struct rl_view4 {
  int32_t dtype;
  int64_t offset;
  int64_t shape[4];
  int64_t stride[4];
} rl_view4;

static inline uint64_t rl_dtype_size(int32_t dt) { return dt == RL_F32 ? 4u : 2u; }

/* Elements from the view's first to its last element, inclusive (the span its strides reach). */
static inline uint64_t rl_view_span(const rl_view4 *v) {
  uint64_t last = 0;
  for (int d = 0; d < 4; d++) last += (uint64_t)v->stride[d] * (uint64_t)(v->shape[d] - 1);
  return last + 1;
}

static inline uint64_t rl_view_count(const rl_view4 *v) {
  return (uint64_t)v->shape[0] * (uint64_t)v->shape[1] * (uint64_t)v->shape[2] *
         (uint64_t)v->shape[3];
}

/* Byte range [first, first + bytes) of the view at base. */
static inline const void *rl_view_first(const void *base, const rl_view4 *v) {
  return (const char *)base + v->offset * (int64_t)rl_dtype_size(v->dtype);
}
static inline uint64_t rl_view_bytes(const rl_view4 *v) {
  return rl_view_span(v) * rl_dtype_size(v->dtype);
}

/* Each element of the view is named once: the dims of extent > 1, by increasing stride, each
 * have a stride beyond the span of the smaller ones (a sufficient condition). */
static inline int rl_view_unique(const rl_view4 *v) {
  int idx[4], n = 0;
  for (int d = 0; d < 4; d++)
    if (v->shape[d] > 1) idx[n++] = d;
  for (int i = 1; i < n; i++) /* insertion sort by stride */
    for (int j = i; j > 0 && v->stride[idx[j]] < v->stride[idx[j - 1]]; j--) {
      const int t = idx[j];
      idx[j] = idx[j - 1];
      idx[j - 1] = t;
    }
  uint64_t span = 0; /* of the dims so far: last element offset */
  for (int i = 0; i < n; i++) {
    const int d = idx[i];
    if ((uint64_t)v->stride[d] <= span) return 0;
    span += (uint64_t)v->stride[d] * (uint64_t)(v->shape[d] - 1);
  }
  return 1;
}

/* Decodes and checks the descriptor `desc` (a host buffer of RL_DESC_LEN int64) of the argument
 * `name`; output views must name each element once. Dims and spans are bounded (2^40 elements)
 * so no product overflows. */
static inline int32_t rl_check_desc(char *msg, size_t msg_cap, const int64_t *desc,
                                    const char *name, int output, rl_view4 *v) {
  RL_REQUIRE(desc != NULL, "%s_desc is NULL", name);
  const int64_t dt = desc[RL_DESC_DTYPE];
  RL_REQUIRE(dt == RL_F32 || dt == RL_F16 || dt == RL_BF16,
             "%s_desc dtype %lld is not a dtype (0=f32, 1=f16, 2=bf16)", name, (long long)dt);
  v->dtype = (int32_t)dt;
  v->offset = desc[RL_DESC_OFFSET];
  RL_REQUIRE(v->offset >= 0 && v->offset < ((int64_t)1 << 40),
             "%s_desc offset %lld must be in [0, 2^40)", name, (long long)v->offset);
  for (int d = 0; d < 4; d++) {
    v->shape[d] = desc[RL_DESC_SHAPE + d];
    v->stride[d] = desc[RL_DESC_STRIDE + d];
    RL_REQUIRE(v->shape[d] >= 1 && v->shape[d] <= ((int64_t)1 << 31),
               "%s_desc shape[%d] must be in [1, 2^31], got %lld", name, d,
               (long long)v->shape[d]);
    RL_REQUIRE(v->stride[d] >= 0 && v->stride[d] < ((int64_t)1 << 40),
               "%s_desc stride[%d] must be in [0, 2^40), got %lld", name, d,
               (long long)v->stride[d]);
  }
  RL_REQUIRE(rl_view_count(v) < ((uint64_t)1 << 40), "%s_desc names 2^40 or more elements", name);
  RL_REQUIRE(rl_view_span(v) < ((uint64_t)1 << 42), "%s_desc spans 2^42 or more elements", name);
  if (output)
    RL_REQUIRE(rl_view_unique(v),
               "%s_desc names an element more than once (strides %lld,%lld,%lld,%lld over shape "
               "%lld,%lld,%lld,%lld)",
               name, (long long)v->stride[0], (long long)v->stride[1], (long long)v->stride[2],
               (long long)v->stride[3], (long long)v->shape[0], (long long)v->shape[1],
               (long long)v->shape[2], (long long)v->shape[3]);
  return RL_OK;
}

/* rl_matmul_nd: fills o, xv, wv with the decoded views. */
static inline int32_t rl_check_matmul_nd(char *msg, size_t msg_cap, const float *out,
                                         const int64_t *out_desc, const float *x,
                                         const int64_t *x_desc, const void *w,
                                         const int64_t *w_desc, rl_view4 *o, rl_view4 *xv,
                                         rl_view4 *wv) {
  RL_PTR(out);
  RL_PTR(x);
  RL_PTR(w);
  RL_TRY(rl_check_desc(msg, msg_cap, out_desc, "out", 1, o));
  RL_TRY(rl_check_desc(msg, msg_cap, x_desc, "x", 0, xv));
  RL_TRY(rl_check_desc(msg, msg_cap, w_desc, "w", 0, wv));
  RL_REQUIRE(o->dtype == RL_F32, "out_desc dtype must be f32 (0), got %d", o->dtype);
  RL_REQUIRE(xv->dtype == RL_F32, "x_desc dtype must be f32 (0), got %d", xv->dtype);
  RL_REQUIRE(o->shape[0] == xv->shape[0] && o->shape[1] == xv->shape[1] &&
                 o->shape[0] == wv->shape[0] && o->shape[1] == wv->shape[1],
             "batch dims differ: out %lldx%lld, x %lldx%lld, w %lldx%lld", (long long)o->shape[0],
             (long long)o->shape[1], (long long)xv->shape[0], (long long)xv->shape[1],
             (long long)wv->shape[0], (long long)wv->shape[1]);
  RL_REQUIRE(xv->shape[2] == o->shape[2], "x has %lld rows, out %lld (M)", (long long)xv->shape[2],
             (long long)o->shape[2]);
  RL_REQUIRE(wv->shape[3] == o->shape[3], "w has %lld columns, out %lld (N)",
             (long long)wv->shape[3], (long long)o->shape[3]);
  RL_REQUIRE(xv->shape[3] == wv->shape[2], "x has %lld columns, w %lld rows (K)",
             (long long)xv->shape[3], (long long)wv->shape[2]);
  RL_REQUIRE(!rl_ranges_overlap(rl_view_first(out, o), rl_view_bytes(o), rl_view_first(x, xv),
                                rl_view_bytes(xv)),
             "out overlaps x");
  RL_REQUIRE(!rl_ranges_overlap(rl_view_first(out, o), rl_view_bytes(o), rl_view_first(w, wv),
                                rl_view_bytes(wv)),
             "out overlaps w");
  return RL_OK;
}

/* rl_copy_nd: fills d and sv with the decoded views. */
static inline int32_t rl_check_copy_nd(char *msg, size_t msg_cap, const void *dst,
                                       const int64_t *dst_desc, const void *src,
                                       const int64_t *src_desc, rl_view4 *d, rl_view4 *sv) {
  RL_PTR(dst);
  RL_PTR(src);
  RL_TRY(rl_check_desc(msg, msg_cap, dst_desc, "dst", 1, d));
  RL_TRY(rl_check_desc(msg, msg_cap, src_desc, "src", 0, sv));
  RL_REQUIRE(d->dtype == sv->dtype, "dst dtype %d differs from src dtype %d", d->dtype,
             sv->dtype);
  for (int i = 0; i < 4; i++)
    RL_REQUIRE(d->shape[i] == sv->shape[i], "shape[%d] differs: dst %lld, src %lld", i,
               (long long)d->shape[i], (long long)sv->shape[i]);
  RL_REQUIRE(!rl_ranges_overlap(rl_view_first(dst, d), rl_view_bytes(d), rl_view_first(src, sv),
                                rl_view_bytes(sv)),
             "dst overlaps src");
  return RL_OK;
}

#undef RL_TRY
#undef RL_REQUIRE
#undef RL_PTR
#undef RL_POS
#undef RL_DTYPE

#endif /* RL_SHARED_H */
