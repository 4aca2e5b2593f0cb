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
  RL_DTYPE(wdtype);
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
  RL_DTYPE(dtype);
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
                                         const float *v, int32_t kv_stride, int32_t n_q,
                                         int32_t q_start, int32_t kv_len, int32_t n_heads,
                                         int32_t n_kv_heads, int32_t head_dim) {
  RL_PTR(out);
  RL_PTR(q);
  RL_PTR(k);
  RL_PTR(v);
  RL_POS(n_q);
  RL_POS(kv_len);
  RL_POS(n_heads);
  RL_POS(n_kv_heads);
  RL_POS(head_dim);
  RL_REQUIRE(n_heads % n_kv_heads == 0, "n_heads %d is not a multiple of n_kv_heads %d", n_heads,
             n_kv_heads);
  RL_REQUIRE(q_start >= 0, "q_start must be >= 0, got %d", q_start);
  RL_REQUIRE((int64_t)q_start + n_q <= kv_len,
             "q_start %d + n_q %d exceeds kv_len %d (the new tokens' keys must be in the cache)",
             q_start, n_q, kv_len);
  RL_REQUIRE((int64_t)n_heads * head_dim <= q_stride,
             "q_stride %d is less than n_heads * head_dim = %d * %d", q_stride, n_heads, head_dim);
  RL_REQUIRE((int64_t)n_kv_heads * head_dim <= kv_stride,
             "kv_stride %d is less than n_kv_heads * head_dim = %d * %d", kv_stride, n_kv_heads,
             head_dim);
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

#undef RL_TRY
#undef RL_REQUIRE
#undef RL_PTR
#undef RL_POS
#undef RL_DTYPE

#endif /* RL_SHARED_H */
