/*
 * The CUDA backend against the CPU backend (the readable reference): every op of ffi/rabbitllm.h
 * runs on both with the same random inputs, on odd shapes and every weight dtype, and the
 * outputs are compared with max|gpu - cpu| / max|cpu| plus NaN/Inf checks. Also: both attention
 * implementations, loads from a temp file under every pin_memory/async_copy combination, error
 * statuses, statistics, options and timing marks; the ABI 3 entries: the host tier (rl_host_alloc,
 * loads into host blocks, rl_upload_start), the drop_behind option, and mapped files (rl_map on
 * the CPU; refused by CUDA); the ABI 4 entries: rl_act, rl_gather_rows and rl_scatter_add_rows
 * (groups "act" and "rows", with repeated rows; and their error statuses); the ABI 5 ones:
 * rl_matmul_nd (group "bmm": plain, transposed, broadcast and per-head views, every w dtype) and
 * rl_copy_nd (group "copy_nd"), with their error statuses, and rl_attention's separate v_stride
 * and v_head_dim (group "attention": v_head_dim != head_dim, an MLA latent cache with v == k);
 * ABI 6: the ggml block formats Q8_0 ... Q6_K as rl_matmul weights and rl_embedding tables (group
 * "quant": CUDA vs CPU and both vs a reference dequantization here, unaligned rows too; their
 * error statuses in "errors"). ABI 7: rl_attention_alibi (group "alibi": flash and eager, decode
 * and prefill, GQA, windows, padding masks, q_start > 0, Baichuan-13B's 40 heads; NULL and zero
 * slopes equal rl_attention; its error statuses).
 *
 * Both libraries are dlopen'ed (RTLD_LOCAL) and resolved into two function tables, so this
 * program links nothing but libdl and libm:
 *   gcc -std=c11 -O2 -Wall -Wextra -Iffi -o build/compare_ops cuda/compare_ops.c -ldl -lm
 *   build/compare_ops [cpu.so] [cuda.so]      (sh cuda/test.sh builds everything and runs it)
 * COMPARE_ONLY=attention,loads runs only the named groups.
 * A library without the ABI 3 entries (rl_map ... rl_load_ready), the ABI 4 ones (rl_act,
 * rl_gather_rows, rl_scatter_add_rows) or the ABI 5 ones (rl_matmul_nd, rl_copy_nd) fails a check
 * per missing entry and per group that needs them, and the other groups still run.
 * Prints one line per failing check, then "N passed, N failed"; exits 1 on any failure.
 */
#define _DEFAULT_SOURCE /* mincore */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "rabbitllm.h"

#define TOL_F32 1e-5  /* f32 weights: only the summation order differs */
#define TOL_HALF 1e-4 /* f16/bf16 weights */

/* ----------------------------------------------------------------------------------------------
 * Checks */

static int n_passed, n_failed;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
  if (ok) {
    n_passed++;
    return;
  }
  n_failed++;
  va_list ap;
  va_start(ap, fmt);
  printf("FAIL: ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  fflush(stdout);
}

/* max|got - ref| / max|ref| <= tol, and got is finite exactly where ref is. */
static void compare(const float *ref, const float *got, int64_t n, double tol, const char *fmt,
                    ...) __attribute__((format(printf, 5, 6)));
static void compare(const float *ref, const float *got, int64_t n, double tol, const char *fmt,
                    ...) {
  double max_err = 0.0, max_ref = 0.0;
  int64_t finiteness = 0, worst = -1;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(ref[i]) || !isfinite(got[i])) {
      if (!isfinite(ref[i]) != !isfinite(got[i])) finiteness++;
      continue;
    }
    if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
    const double err = fabs((double)got[i] - (double)ref[i]);
    if (err > max_err) {
      max_err = err;
      worst = i;
    }
  }
  const double rel = max_err / (max_ref > 0.0 ? max_ref : 1.0);
  char what[320];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  check(finiteness == 0 && rel <= tol,
        "%s: rel err %.3g (tol %.1g) at %lld (cpu %.9g, cuda %.9g), %lld finiteness mismatches",
        what, rel, tol, (long long)worst, worst >= 0 ? (double)ref[worst] : 0.0,
        worst >= 0 ? (double)got[worst] : 0.0, (long long)finiteness);
}

/* ----------------------------------------------------------------------------------------------
 * The two backends */

#define RL_ENTRIES(X)                                                                             \
  X(abi_version) X(backend_info) X(create) X(destroy) X(last_error) X(stats) X(sync) X(alloc)    \
  X(free) X(view) X(upload) X(download) X(copy) X(load_start) X(load_wait) X(set_option)         \
  X(get_option) X(mark) X(elapsed_ms) X(marks_reset) X(embedding) X(rmsnorm) X(layernorm)        \
  X(softcap) X(matmul) X(rope) X(attention) X(act_mul) X(add) X(scale) X(argmax)
/* New in ABI 3: the groups that use them check b->v3 first. */
#define RL_ENTRIES_V3(X)                                                                          \
  X(map) X(unmap) X(prefetch_start) X(evict) X(host_alloc) X(host_free) X(upload_start)         \
  X(load_ready)
/* New in ABI 4: the groups that use them check b->v4 first. */
#define RL_ENTRIES_V4(X) X(act) X(gather_rows) X(scatter_add_rows)
/* New in ABI 5: the groups that use them check b->v5 first. */
#define RL_ENTRIES_V5(X) X(matmul_nd) X(copy_nd)
/* New in ABI 7: the groups that use them check b->v7 first. */
#define RL_ENTRIES_V7(X) X(attention_alibi)

typedef struct {
  const char *name; /* "cpu" or "cuda" */
  void *handle;
  rl_ctx *ctx;
  int v3; /* every entry of RL_ENTRIES_V3 resolved */
  int v4; /* every entry of RL_ENTRIES_V4 resolved */
  int v5; /* every entry of RL_ENTRIES_V5 resolved */
  int v7; /* every entry of RL_ENTRIES_V7 resolved */
#define FIELD(s) __typeof__(rl_##s) *s;
  RL_ENTRIES(FIELD)
  RL_ENTRIES_V3(FIELD)
  RL_ENTRIES_V4(FIELD)
  RL_ENTRIES_V5(FIELD)
  RL_ENTRIES_V7(FIELD)
#undef FIELD
} backend;

static backend CPU = {.name = "cpu"}, GPU = {.name = "cuda"};

/* dlopens path and resolves every entry; a missing one is a failed check (and stays NULL).
 * Returns whether the entries of RL_ENTRIES are complete (sets b->v3 for RL_ENTRIES_V3, b->v4
 * for RL_ENTRIES_V4, b->v5 for RL_ENTRIES_V5, b->v7 for RL_ENTRIES_V7). */
static int open_backend(backend *b, const char *path) {
  b->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!b->handle) {
    check(0, "%s: dlopen %s: %s", b->name, path, dlerror());
    return 0;
  }
  int complete = 1;
#define RESOLVE(s)                                                                                \
  b->s = (__typeof__(rl_##s) *)dlsym(b->handle, "rl_" #s);                                        \
  check(b->s != NULL, "%s: %s lacks rl_" #s, b->name, path);                                      \
  complete &= b->s != NULL;
  RL_ENTRIES(RESOLVE)
  const int core = complete;
  RL_ENTRIES_V3(RESOLVE)
  b->v3 = complete;
  complete = core;
  RL_ENTRIES_V4(RESOLVE)
  b->v4 = complete;
  complete = core;
  RL_ENTRIES_V5(RESOLVE)
  b->v5 = complete;
  complete = core;
  RL_ENTRIES_V7(RESOLVE)
#undef RESOLVE
  b->v7 = complete;
  return core;
}

/* Whether b has the ABI 3 entries; if not, a failed check saying which group could not run. */
static int has_v3(backend *b, const char *group) {
  check(b->v3, "%s: %s checks not run: the library lacks ABI 3 entries (see above)", b->name,
        group);
  return b->v3;
}

/* Whether b has the ABI 4 entries (rl_act, rl_gather_rows, rl_scatter_add_rows); if not, a
 * failed check saying which group could not run. */
static int has_v4(backend *b, const char *group) {
  check(b->v4, "%s: %s checks not run: the library lacks ABI 4 entries (see above)", b->name,
        group);
  return b->v4;
}

/* Whether b has the ABI 5 entries (rl_matmul_nd, rl_copy_nd); if not, a failed check saying
 * which group could not run. */
static int has_v5(backend *b, const char *group) {
  check(b->v5, "%s: %s checks not run: the library lacks ABI 5 entries (see above)", b->name,
        group);
  return b->v5;
}

/* Whether b has the ABI 7 entry (rl_attention_alibi); if not, a failed check saying which group
 * could not run. */
static int has_v7(backend *b, const char *group) {
  check(b->v7, "%s: %s checks not run: the library lacks ABI 7 entries (see above)", b->name,
        group);
  return b->v7;
}

static const char *last_error(backend *b, rl_ctx *ctx) {
  static char msg[4][512];
  static int next;
  char *m = msg[next++ % 4];
  m[0] = 0;
  if (b->last_error) b->last_error(ctx, (uint8_t *)m, 512);
  return m;
}

/* An op's status: RL_OK, or a failed check naming the backend, the op and its message. */
static int ok(backend *b, int32_t status, const char *what) {
  check(status == RL_OK, "%s: %s returned %d: %s", b->name, what, status,
        last_error(b, b->ctx));
  return status == RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Device buffers: NULL (and a failed check) when allocation or upload fails */

static void *dev_alloc(backend *b, uint64_t bytes) {
  void *p = b->alloc(b->ctx, bytes);
  check(p != NULL, "%s: rl_alloc(%llu): %s", b->name, (unsigned long long)bytes,
        last_error(b, b->ctx));
  return p;
}

static void *dev_upload(backend *b, const void *host, uint64_t bytes) {
  void *p = dev_alloc(b, bytes);
  if (p && !ok(b, b->upload(b->ctx, p, host, bytes), "rl_upload")) {
    b->free(b->ctx, p);
    return NULL;
  }
  return p;
}

/* An output buffer filled with NaN (0xff bytes), so an output the op never writes shows up. */
static void *dev_poison(backend *b, uint64_t bytes) {
  uint8_t *nan = malloc(bytes);
  memset(nan, 0xff, bytes);
  void *p = dev_upload(b, nan, bytes);
  free(nan);
  return p;
}

static int dev_download(backend *b, void *host, const void *dev, uint64_t bytes) {
  return ok(b, b->download(b->ctx, host, dev, bytes), "rl_download");
}

static void dev_free(backend *b, void *p) {
  if (p) b->free(b->ctx, p);
}

/* ----------------------------------------------------------------------------------------------
 * Random data */

static uint64_t rng = 0x243f6a8885a308d3ull;

static uint32_t rand_u32(void) { /* xorshift64* */
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return (uint32_t)((rng * 0x2545f4914f6cdd1dull) >> 32);
}

static float rand_float(float lo, float hi) {
  return lo + (hi - lo) * (float)(rand_u32() >> 8) * 0x1p-24f;
}

static float *rand_floats(int64_t n, float lo, float hi) {
  float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
  for (int64_t i = 0; i < n; i++) p[i] = rand_float(lo, hi);
  return p;
}

static const char *dtype_name[] = {"f32", "f16", "bf16"};
static int64_t dtype_size(int dt) { return dt == RL_F32 ? 4 : 2; }
static double dtype_tol(int dt) { return dt == RL_F32 ? TOL_F32 : TOL_HALF; }

/* n random values in (-1, 1) as dtype dt (f16 includes subnormals, bf16 is truncated f32). */
static void *rand_tensor(int dt, int64_t n) {
  void *t = malloc((size_t)(n * dtype_size(dt)));
  for (int64_t i = 0; i < n; i++) {
    const float f = rand_float(-1.0f, 1.0f);
    uint32_t u;
    memcpy(&u, &f, 4);
    if (dt == RL_F32) ((float *)t)[i] = f;
    else if (dt == RL_BF16) ((uint16_t *)t)[i] = (uint16_t)(u >> 16);
    else ((uint16_t *)t)[i] = (uint16_t)(rand_u32() % 0x3c00 | (u >> 16 & 0x8000));
  }
  return t;
}

/* ----------------------------------------------------------------------------------------------
 * Library */

static void test_library(void) {
  for (backend *b = &CPU; b; b = b == &CPU ? &GPU : NULL) {
    check(b->abi_version() == RL_ABI_VERSION, "%s: rl_abi_version %u, want %d", b->name,
          b->abi_version(), RL_ABI_VERSION);
    char info[512];
    const int64_t len = b->backend_info((uint8_t *)info, sizeof info);
    check(len > 3 && strncmp(info, b->name, strlen(b->name)) == 0, "%s: rl_backend_info \"%s\"",
          b->name, info);
    printf("%s backend: %s\n", b->name, info);
  }
}

/* ----------------------------------------------------------------------------------------------
 * Matmul */

/* out[M,N] of rl_matmul on b. W is uploaded after `pad` bytes and passed as a view, so pad 2/4
 * makes every W row unaligned (the scalar GEMV path). */
static int run_matmul_bytes(backend *b, float *out, const float *x, const void *w,
                            uint64_t wbytes, int wdt, const void *bias, int bdt, int M, int N,
                            int K, int pad) {
  uint8_t *wpad = calloc(1, wbytes + (uint64_t)pad);
  memcpy(wpad + pad, w, wbytes);
  void *dx = dev_upload(b, x, sizeof(float) * (uint64_t)M * K);
  void *dw = dev_upload(b, wpad, wbytes + (uint64_t)pad);
  void *db = bias ? dev_upload(b, bias, (uint64_t)N * dtype_size(bdt)) : NULL;
  void *dout = dev_poison(b, sizeof(float) * (uint64_t)M * N);
  int good = dx && dw && (!bias || db) && dout &&
             ok(b, b->matmul(b->ctx, dout, dx, b->view(dw, (uint64_t)pad), wdt, db, bdt, M, N, K),
                "rl_matmul") &&
             dev_download(b, out, dout, sizeof(float) * (uint64_t)M * N);
  dev_free(b, dx);
  dev_free(b, dw);
  dev_free(b, db);
  dev_free(b, dout);
  free(wpad);
  return good;
}

static int run_matmul(backend *b, float *out, const float *x, const void *w, int wdt,
                      const void *bias, int bdt, int M, int N, int K, int pad) {
  return run_matmul_bytes(b, out, x, w, (uint64_t)N * K * dtype_size(wdt), wdt, bias, bdt, M, N,
                          K, pad);
}

static void test_matmul(void) {
  static const int Ms[] = {1, 2, 3, 8, 9, 33, 70};
  static const int NK[][2] = {{13, 67}, {64, 128}, {37, 256}, {130, 520}, {40, 9000}, {24, 2100}};
  for (int dt = 0; dt < 3; dt++)
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
      for (size_t s = 0; s < sizeof NK / sizeof *NK; s++)
        for (int variant = 0; variant < 3; variant++) { /* plain, bias, unaligned W */
          const int M = Ms[mi], N = NK[s][0], K = NK[s][1];
          const int bdt = (dt + 1) % 3; /* a bias dtype other than W's */
          const int pad = variant == 2 ? (int)dtype_size(dt) : 0;
          float *x = rand_floats((int64_t)M * K, -1.0f, 1.0f);
          void *w = rand_tensor(dt, (int64_t)N * K);
          void *bias = variant == 1 ? rand_tensor(bdt, N) : NULL;
          float *ref = malloc(sizeof(float) * (size_t)M * N), *got = malloc(sizeof(float) * (size_t)M * N);
          if (run_matmul(&CPU, ref, x, w, dt, bias, bdt, M, N, K, pad) &&
              run_matmul(&GPU, got, x, w, dt, bias, bdt, M, N, K, pad))
            compare(ref, got, (int64_t)M * N, dtype_tol(dt),
                    "rl_matmul %s M=%d N=%d K=%d%s%s", dtype_name[dt], M, N, K,
                    variant == 1 ? " +bias" : "", variant == 2 ? " unaligned W" : "");
          free(x);
          free(w);
          free(bias);
          free(ref);
          free(got);
        }
}

/* ----------------------------------------------------------------------------------------------
 * Embedding, norms */

/* The table (tbytes) is uploaded after `pad` bytes and passed as a view. */
static int run_embedding_bytes(backend *b, float *out, const void *table, uint64_t tbytes, int dt,
                               const int32_t *ids, int n, int dim, int vocab, int pad) {
  uint8_t *tpad = calloc(1, tbytes + (uint64_t)pad);
  memcpy(tpad + pad, table, tbytes);
  void *dt_ = dev_upload(b, tpad, tbytes + (uint64_t)pad);
  void *dout = dev_poison(b, sizeof(float) * (uint64_t)n * dim);
  int good = dt_ && dout &&
             ok(b, b->embedding(b->ctx, dout, b->view(dt_, (uint64_t)pad), dt, ids, n, dim, vocab),
                "rl_embedding") &&
             dev_download(b, out, dout, sizeof(float) * (uint64_t)n * dim);
  dev_free(b, dt_);
  dev_free(b, dout);
  free(tpad);
  return good;
}

static int run_embedding(backend *b, float *out, const void *table, int dt, const int32_t *ids,
                         int n, int dim, int vocab) {
  return run_embedding_bytes(b, out, table, (uint64_t)vocab * dim * dtype_size(dt), dt, ids, n,
                             dim, vocab, 0);
}

static void test_embedding(void) {
  static const int shapes[][3] = {{5, 67, 11}, {300, 64, 1000}, {1, 4100, 3}}; /* n, dim, vocab */
  for (int dt = 0; dt < 3; dt++)
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
      const int n = shapes[s][0], dim = shapes[s][1], vocab = shapes[s][2];
      void *table = rand_tensor(dt, (int64_t)vocab * dim);
      int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
      for (int i = 0; i < n; i++) ids[i] = i == 0 ? vocab - 1 : (int32_t)(rand_u32() % (uint32_t)vocab);
      float *ref = malloc(sizeof(float) * (size_t)n * dim), *got = malloc(sizeof(float) * (size_t)n * dim);
      if (run_embedding(&CPU, ref, table, dt, ids, n, dim, vocab) &&
          run_embedding(&GPU, got, table, dt, ids, n, dim, vocab))
        compare(ref, got, (int64_t)n * dim, 0.0, "rl_embedding %s n=%d dim=%d", dtype_name[dt], n,
                dim);
      free(table);
      free(ids);
      free(ref);
      free(got);
    }
}

/* ----------------------------------------------------------------------------------------------
 * ggml block formats (ABI 6, group "quant"): rl_matmul weights and rl_embedding tables in
 * Q8_0 ... Q6_K. Random blocks (random bytes, with the f16 scales written as finite normal f16
 * values), compared CUDA vs CPU and both against a reference here: ggml's dequantize_row_* (the
 * arithmetic of gguf-py's dequantize_blocks: each product and sum rounded to f32), so a weight
 * must dequantize bit for bit, and a matmul must equal f64 math on the dequantized weights within
 * the f32 tolerance (summation order). */

typedef struct {
  int dt;
  const char *name;
  int qk, bytes;
} qformat;

static const qformat QFORMATS[] = {
    {RL_Q8_0, "q8_0", 32, 34},   {RL_Q4_0, "q4_0", 32, 18},   {RL_Q4_1, "q4_1", 32, 20},
    {RL_Q5_0, "q5_0", 32, 22},   {RL_Q5_1, "q5_1", 32, 24},   {RL_Q4_K, "q4_k", 256, 144},
    {RL_Q5_K, "q5_k", 256, 176}, {RL_Q6_K, "q6_k", 256, 210},
};

static float f16_value(const uint8_t *p) { /* little-endian IEEE binary16 -> f32, exact */
  const unsigned h = (unsigned)p[0] | (unsigned)p[1] << 8;
  const unsigned sign = h >> 15, exp = h >> 10 & 31, man = h & 1023;
  float f = exp == 0 ? ldexpf((float)man, -24) : ldexpf((float)(man | 1024), (int)exp - 25);
  if (exp == 31) f = man ? NAN : INFINITY;
  return sign ? -f : f;
}

/* A finite normal f16 of magnitude in [2^-10, 2^-4), random sign, at p. */
static void put_rand_scale(uint8_t *p) {
  const unsigned exp = 5 + rand_u32() % 6, man = rand_u32() & 1023, sign = rand_u32() & 1;
  const unsigned h = sign << 15 | exp << 10 | man;
  p[0] = (uint8_t)h;
  p[1] = (uint8_t)(h >> 8);
}

/* nblocks random blocks of format f. */
static uint8_t *rand_blocks(const qformat *f, int64_t nblocks) {
  const size_t n = (size_t)(nblocks * f->bytes);
  uint8_t *p = malloc(n ? n : 1);
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)rand_u32();
  for (int64_t b = 0; b < nblocks; b++) {
    uint8_t *blk = p + b * f->bytes;
    if (f->dt == RL_Q6_K) {
      put_rand_scale(blk + 208);
    } else {
      put_rand_scale(blk); /* d */
      if (f->dt == RL_Q4_1 || f->dt == RL_Q5_1 || f->dt == RL_Q4_K || f->dt == RL_Q5_K)
        put_rand_scale(blk + 2); /* m, dmin */
    }
  }
  return p;
}

static void scale_min_k4(int j, const uint8_t *q, int *d, int *m) { /* ggml's get_scale_min_k4 */
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
  }
}

/* One block of format dt -> f->qk floats, as ggml's dequantize_row_* (f32 ops, no FMA). */
static void ref_dequant_block(int dt, const uint8_t *b, float *y) {
  switch (dt) {
  case RL_Q8_0: {
    const float d = f16_value(b);
    for (int j = 0; j < 32; j++) y[j] = d * (float)(int8_t)b[2 + j];
    break;
  }
  case RL_Q4_0:
  case RL_Q4_1: {
    const float d = f16_value(b), m = dt == RL_Q4_1 ? f16_value(b + 2) : 0.0f;
    const uint8_t *qs = b + (dt == RL_Q4_0 ? 2 : 4);
    for (int j = 0; j < 16; j++) {
      if (dt == RL_Q4_0) {
        y[j] = (float)((qs[j] & 0x0F) - 8) * d;
        y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
      } else {
        const float p0 = (float)(qs[j] & 0x0F) * d, p1 = (float)(qs[j] >> 4) * d;
        y[j] = p0 + m;
        y[j + 16] = p1 + m;
      }
    }
    break;
  }
  case RL_Q5_0:
  case RL_Q5_1: {
    const int one = dt == RL_Q5_1;
    const float d = f16_value(b), m = one ? f16_value(b + 2) : 0.0f;
    const uint8_t *qhp = b + (one ? 4 : 2), *qs = qhp + 4;
    const uint32_t qh = (uint32_t)qhp[0] | (uint32_t)qhp[1] << 8 | (uint32_t)qhp[2] << 16 |
                        (uint32_t)qhp[3] << 24;
    for (int j = 0; j < 16; j++) {
      const int xh0 = (int)(((qh >> j) << 4) & 0x10), xh1 = (int)((qh >> (j + 12)) & 0x10);
      const int x0 = (qs[j] & 0x0F) | xh0, x1 = (qs[j] >> 4) | xh1;
      if (!one) {
        y[j] = (float)(x0 - 16) * d;
        y[j + 16] = (float)(x1 - 16) * d;
      } else {
        const float p0 = (float)x0 * d, p1 = (float)x1 * d;
        y[j] = p0 + m;
        y[j + 16] = p1 + m;
      }
    }
    break;
  }
  case RL_Q4_K:
  case RL_Q5_K: {
    const int five = dt == RL_Q5_K;
    const float d = f16_value(b), min = f16_value(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *ql = b + (five ? 48 : 16);
    int is = 0;
    unsigned u1 = 1, u2 = 2;
    for (int j = 0; j < 256; j += 64) {
      int sc, m;
      scale_min_k4(is + 0, scales, &sc, &m);
      const float d1 = d * (float)sc, m1 = min * (float)m;
      scale_min_k4(is + 1, scales, &sc, &m);
      const float d2 = d * (float)sc, m2 = min * (float)m;
      for (int l = 0; l < 32; l++) {
        const int h1 = five && (qh[l] & u1) ? 16 : 0, h2 = five && (qh[l] & u2) ? 16 : 0;
        const float p1 = d1 * (float)((ql[l] & 0xF) + h1), p2 = d2 * (float)((ql[l] >> 4) + h2);
        y[j + l] = p1 - m1;
        y[j + 32 + l] = p2 - m2;
      }
      ql += 32;
      is += 2;
      u1 <<= 2;
      u2 <<= 2;
    }
    break;
  }
  case RL_Q6_K: {
    const float d = f16_value(b + 208);
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    for (int n = 0; n < 256; n += 128) {
      for (int l = 0; l < 32; l++) {
        const int is = l / 16;
        const int q1 = (int)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = (int)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        const float s1 = d * (float)sc[is + 0], s2 = d * (float)sc[is + 2],
                    s3 = d * (float)sc[is + 4], s4 = d * (float)sc[is + 6];
        y[n + l + 0] = s1 * (float)q1;
        y[n + l + 32] = s2 * (float)q2;
        y[n + l + 64] = s3 * (float)q3;
        y[n + l + 96] = s4 * (float)q4;
      }
      ql += 64;
      qh += 32;
      sc += 8;
    }
    break;
  }
  }
}

/* rows x k weights of format f (k a multiple of the block) -> f32. */
static float *ref_dequant(const qformat *f, const uint8_t *w, int64_t rows, int64_t k) {
  float *y = malloc(sizeof(float) * (size_t)(rows * k));
  const int64_t nb = rows * k / f->qk;
  for (int64_t b = 0; b < nb; b++) ref_dequant_block(f->dt, w + b * f->bytes, y + b * f->qk);
  return y;
}

static void test_quant(void) {
  static const int Ms[] = {1, 2, 5, 8, 9, 64, 70};
  static const int NK[][2] = {{67, 256}, {67, 512}, {19, 288}, {21, 2048}}; /* N, K */
  for (size_t fi = 0; fi < sizeof QFORMATS / sizeof *QFORMATS; fi++) {
    const qformat *f = &QFORMATS[fi];
    /* matmul: plain, + bias, + bias with W one byte off alignment */
    for (size_t s = 0; s < sizeof NK / sizeof *NK; s++) {
      const int N = NK[s][0], K = NK[s][1];
      if (K % f->qk) continue;
      const int64_t wbytes = (int64_t)N * (K / f->qk) * f->bytes;
      uint8_t *w = rand_blocks(f, (int64_t)N * (K / f->qk));
      float *wf = ref_dequant(f, w, N, K);
      for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
        for (int variant = 0; variant < 3; variant++) {
          const int M = Ms[mi];
          if (K == 2048 && M != 1 && M != 5 && M != 8 && M != 70) continue; /* x in chunks */
          const int bdt = (int)((fi + s + mi) % 3), pad = variant == 2 ? 1 : 0;
          float *x = rand_floats((int64_t)M * K, -1.0f, 1.0f);
          void *bias = variant >= 1 ? rand_tensor(bdt, N) : NULL;
          float *bf = NULL;
          if (bias) { /* the bias as f32 */
            bf = malloc(sizeof(float) * (size_t)N);
            for (int n = 0; n < N; n++) {
              if (bdt == RL_F32) bf[n] = ((float *)bias)[n];
              else if (bdt == RL_F16) bf[n] = f16_value((uint8_t *)bias + 2 * n);
              else {
                const uint32_t u = (uint32_t)((uint16_t *)bias)[n] << 16;
                memcpy(&bf[n], &u, 4);
              }
            }
          }
          float *want = malloc(sizeof(float) * (size_t)M * N);
          for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
              double acc = 0.0;
              for (int k = 0; k < K; k++)
                acc += (double)x[(int64_t)m * K + k] * (double)wf[(int64_t)n * K + k];
              want[(int64_t)m * N + n] = (float)(acc + (bf ? bf[n] : 0.0));
            }
          float *ref = malloc(sizeof(float) * (size_t)M * N), *got = malloc(sizeof(float) * (size_t)M * N);
          char what[160];
          snprintf(what, sizeof what, "rl_matmul %s M=%d N=%d K=%d%s%s", f->name, M, N, K,
                   bias ? " +bias " : "", bias ? dtype_name[bdt] : "");
          if (pad) strncat(what, " unaligned W", sizeof what - strlen(what) - 1);
          const int c = run_matmul_bytes(&CPU, ref, x, w, wbytes, f->dt, bias, bdt, M, N, K, pad);
          const int g = run_matmul_bytes(&GPU, got, x, w, wbytes, f->dt, bias, bdt, M, N, K, pad);
          if (c && g) compare(ref, got, (int64_t)M * N, TOL_F32, "%s: cuda vs cpu", what);
          if (c) compare(want, ref, (int64_t)M * N, TOL_F32, "%s: cpu vs reference", what);
          if (g) compare(want, got, (int64_t)M * N, TOL_F32, "%s: cuda vs reference", what);
          free(x);
          free(bias);
          free(bf);
          free(want);
          free(ref);
          free(got);
        }
      free(w);
      free(wf);
    }
    /* embedding: bit for bit the reference dequantization (table also one byte off alignment) */
    static const int shapes[][3] = {{5, 512, 11}, {3, 256, 2}, {4, 96, 7}}; /* n, dim, vocab */
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
      for (int pad = 0; pad < 2; pad++) {
        const int n = shapes[s][0], dim = shapes[s][1], vocab = shapes[s][2];
        if (dim % f->qk) continue;
        const int64_t nblocks = (int64_t)vocab * (dim / f->qk);
        uint8_t *table = rand_blocks(f, nblocks);
        float *tf = ref_dequant(f, table, vocab, dim);
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
        for (int i = 0; i < n; i++) ids[i] = i == 0 ? vocab - 1 : (int32_t)(rand_u32() % (uint32_t)vocab);
        float *want = malloc(sizeof(float) * (size_t)n * dim);
        for (int i = 0; i < n; i++)
          memcpy(want + (int64_t)i * dim, tf + (int64_t)ids[i] * dim, sizeof(float) * (size_t)dim);
        float *ref = malloc(sizeof(float) * (size_t)n * dim), *got = malloc(sizeof(float) * (size_t)n * dim);
        const uint64_t tb = (uint64_t)nblocks * (uint64_t)f->bytes;
        const int c = run_embedding_bytes(&CPU, ref, table, tb, f->dt, ids, n, dim, vocab, pad);
        const int g = run_embedding_bytes(&GPU, got, table, tb, f->dt, ids, n, dim, vocab, pad);
        if (c && g)
          compare(ref, got, (int64_t)n * dim, 0.0, "rl_embedding %s n=%d dim=%d%s: cuda vs cpu",
                  f->name, n, dim, pad ? " unaligned table" : "");
        if (c)
          compare(want, ref, (int64_t)n * dim, 0.0, "rl_embedding %s n=%d dim=%d%s: cpu vs reference",
                  f->name, n, dim, pad ? " unaligned table" : "");
        if (g)
          compare(want, got, (int64_t)n * dim, 0.0, "rl_embedding %s n=%d dim=%d%s: cuda vs reference",
                  f->name, n, dim, pad ? " unaligned table" : "");
        free(table);
        free(tf);
        free(ids);
        free(want);
        free(ref);
        free(got);
      }
  }
}

/* rmsnorm (b_host == NULL and !layer) or layernorm (layer); in_place uses x's buffer as out. */
static int run_norm(backend *b, int layer, float *out, const float *x, const void *w,
                    const void *bias, int dt, int rows, int dim, float eps, float offset,
                    int in_place) {
  const uint64_t xb = sizeof(float) * (uint64_t)rows * dim;
  void *dx = dev_upload(b, x, xb);
  void *dw = dev_upload(b, w, (uint64_t)dim * dtype_size(dt));
  void *db = bias ? dev_upload(b, bias, (uint64_t)dim * dtype_size(dt)) : NULL;
  void *dout = in_place ? dx : dev_poison(b, xb);
  int good = dx && dw && dout && (!bias || db);
  if (good)
    good = layer ? ok(b, b->layernorm(b->ctx, dout, dx, dw, db, dt, rows, dim, eps), "rl_layernorm")
                 : ok(b, b->rmsnorm(b->ctx, dout, dx, dw, dt, rows, dim, eps, offset), "rl_rmsnorm");
  good = good && dev_download(b, out, dout, xb);
  dev_free(b, dx);
  dev_free(b, dw);
  dev_free(b, db);
  if (!in_place) dev_free(b, dout);
  return good;
}

static void test_norms(void) {
  static const int shapes[][2] = {{1, 67}, {3, 1000}, {2, 4100}, {5, 64}}; /* rows, dim */
  for (int layer = 0; layer < 2; layer++)
    for (int dt = 0; dt < 3; dt++)
      for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int variant = 0; variant < 2; variant++) {
          const int rows = shapes[s][0], dim = shapes[s][1];
          const float eps = 1e-5f, offset = variant ? 1.0f : 0.0f;
          float *x = rand_floats((int64_t)rows * dim, -2.0f, 3.0f);
          void *w = rand_tensor(dt, dim);
          void *bias = layer && variant ? rand_tensor(dt, dim) : NULL;
          const size_t n = (size_t)rows * dim;
          float *ref = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
          if (run_norm(&CPU, layer, ref, x, w, bias, dt, rows, dim, eps, offset, variant) &&
              run_norm(&GPU, layer, got, x, w, bias, dt, rows, dim, eps, offset, variant))
            compare(ref, got, (int64_t)n, TOL_F32, "%s %s rows=%d dim=%d %s%s",
                    layer ? "rl_layernorm" : "rl_rmsnorm", dtype_name[dt], rows, dim,
                    variant ? "in place" : "", layer ? (variant ? " +bias" : "") : (variant ? " offset 1" : ""));
          free(x);
          free(w);
          free(bias);
          free(ref);
          free(got);
        }
}

/* ----------------------------------------------------------------------------------------------
 * Rope, activations, elementwise, argmax */

static int run_rope(backend *b, float *x_inout, int64_t total, int n_tokens, int row_stride,
                    int n_heads, int head_dim, int rot_dim, const int32_t *pos,
                    const float *inv_freq, float mscale) {
  void *dx = dev_upload(b, x_inout, sizeof(float) * (uint64_t)total);
  int good = dx &&
             ok(b, b->rope(b->ctx, dx, n_tokens, row_stride, n_heads, head_dim, rot_dim, pos,
                           inv_freq, mscale),
                "rl_rope") &&
             dev_download(b, x_inout, dx, sizeof(float) * (uint64_t)total);
  dev_free(b, dx);
  return good;
}

static void test_rope(void) {
  /* n_tokens, n_heads, head_dim, rot_dim, extra stride */
  static const int cases[][5] = {{5, 3, 64, 64, 0}, {5, 3, 72, 72, 10}, {7, 4, 128, 32, 3},
                                 {1, 8, 64, 64, 0}, {33, 2, 80, 40, 16}};
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++)
    for (int ms = 0; ms < 2; ms++) {
      const int n_tokens = cases[c][0], n_heads = cases[c][1], hd = cases[c][2],
                rot = cases[c][3], stride = n_heads * hd + cases[c][4];
      const int64_t total = (int64_t)n_tokens * stride;
      float *x = rand_floats(total, -1.0f, 1.0f);
      int32_t *pos = malloc(sizeof(int32_t) * (size_t)n_tokens);
      for (int t = 0; t < n_tokens; t++) pos[t] = t == 0 ? 0 : (int32_t)(rand_u32() % 5000);
      float *inv_freq = malloc(sizeof(float) * (size_t)(rot / 2));
      for (int i = 0; i < rot / 2; i++) inv_freq[i] = powf(10000.0f, -2.0f * (float)i / (float)rot);
      const float mscale = ms ? 1.3f : 1.0f;
      float *ref = malloc(sizeof(float) * (size_t)total), *got = malloc(sizeof(float) * (size_t)total);
      memcpy(ref, x, sizeof(float) * (size_t)total);
      memcpy(got, x, sizeof(float) * (size_t)total);
      if (run_rope(&CPU, ref, total, n_tokens, stride, n_heads, hd, rot, pos, inv_freq, mscale) &&
          run_rope(&GPU, got, total, n_tokens, stride, n_heads, hd, rot, pos, inv_freq, mscale))
        compare(ref, got, total, TOL_F32, "rl_rope tokens=%d heads=%d head_dim=%d rot=%d stride=%d mscale=%g",
                n_tokens, n_heads, hd, rot, stride, (double)mscale);
      free(x);
      free(pos);
      free(inv_freq);
      free(ref);
      free(got);
    }
}

static int run_act_mul(backend *b, float *out, const float *gate, const float *up, int rows,
                       int cols, int stride, int act) {
  const uint64_t in_b = sizeof(float) * (uint64_t)rows * stride;
  void *dg = dev_upload(b, gate, in_b), *du = dev_upload(b, up, in_b);
  void *dout = dev_poison(b, sizeof(float) * (uint64_t)rows * cols);
  int good = dg && du && dout &&
             ok(b, b->act_mul(b->ctx, dout, dg, du, rows, cols, stride, act), "rl_act_mul") &&
             dev_download(b, out, dout, sizeof(float) * (uint64_t)rows * cols);
  dev_free(b, dg);
  dev_free(b, du);
  dev_free(b, dout);
  return good;
}

/* In place, as every model calls it: out == gate (which 0) or out == up (which 1). */
static int run_act_mul_in_place(backend *b, float *out, const float *gate, const float *up,
                                int rows, int cols, int act, int which) {
  const uint64_t bytes = sizeof(float) * (uint64_t)rows * cols;
  float *dg = dev_upload(b, gate, bytes), *du = dev_upload(b, up, bytes);
  float *dout = which == 0 ? dg : du;
  int good = dg && du &&
             ok(b, b->act_mul(b->ctx, dout, dg, du, rows, cols, cols, act), "rl_act_mul in place") &&
             dev_download(b, out, dout, bytes);
  dev_free(b, dg);
  dev_free(b, du);
  return good;
}

static void test_act_mul(void) {
  static const int shapes[][3] = {{3, 67, 80}, {1, 1000, 1000}, {9, 130, 260}};
  for (int act = 0; act < 3; act++)
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
      const int rows = shapes[s][0], cols = shapes[s][1], stride = shapes[s][2];
      float *gate = rand_floats((int64_t)rows * stride, -6.0f, 6.0f);
      float *up = rand_floats((int64_t)rows * stride, -1.0f, 1.0f);
      const size_t n = (size_t)rows * cols;
      float *ref = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
      if (run_act_mul(&CPU, ref, gate, up, rows, cols, stride, act) &&
          run_act_mul(&GPU, got, gate, up, rows, cols, stride, act))
        compare(ref, got, (int64_t)n, TOL_F32, "rl_act_mul act=%d rows=%d cols=%d stride=%d", act,
                rows, cols, stride);
      free(gate);
      free(up);
      free(ref);
      free(got);
    }
  for (int act = 0; act < 3; act++)
    for (int which = 0; which < 2; which++) {
      const int rows = 7, cols = 3000; /* several blocks and grid-stride steps */
      const size_t n = (size_t)rows * cols;
      float *gate = rand_floats((int64_t)n, -6.0f, 6.0f), *up = rand_floats((int64_t)n, -1.0f, 1.0f);
      float *ref = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
      if (run_act_mul_in_place(&CPU, ref, gate, up, rows, cols, act, which) &&
          run_act_mul_in_place(&GPU, got, gate, up, rows, cols, act, which))
        compare(ref, got, (int64_t)n, TOL_F32, "rl_act_mul act=%d in place (out == %s)", act,
                which == 0 ? "gate" : "up");
      free(gate);
      free(up);
      free(ref);
      free(got);
    }
}

/* rl_act, out separate or in place (out == x). */
static int run_act(backend *b, float *out, const float *x, int64_t n, int act, int in_place) {
  const uint64_t bytes = sizeof(float) * (uint64_t)n;
  float *dx = dev_upload(b, x, bytes);
  float *dout = in_place ? dx : dev_poison(b, bytes);
  int good = dx && dout && ok(b, b->act(b->ctx, dout, dx, n, act), "rl_act") &&
             dev_download(b, out, dout, bytes);
  dev_free(b, dx);
  if (!in_place) dev_free(b, dout);
  return good;
}

static void test_act(void) {
  if (!has_v4(&CPU, "act") || !has_v4(&GPU, "act")) return;
  static const int64_t sizes[] = {1, 67, 1000003};
  for (int act = 0; act < 3; act++)
    for (int s = 0; s < 3; s++)
      for (int in_place = 0; in_place < 2; in_place++) {
        const int64_t n = sizes[s];
        float *x = rand_floats(n, -8.0f, 8.0f);
        if (n > 2) {
          x[0] = -100.0f;
          x[1] = 100.0f;
          x[2] = 0.0f;
        }
        float *ref = malloc(sizeof(float) * (size_t)n), *got = malloc(sizeof(float) * (size_t)n);
        if (run_act(&CPU, ref, x, n, act, in_place) && run_act(&GPU, got, x, n, act, in_place))
          compare(ref, got, n, TOL_F32, "rl_act act=%d n=%lld%s", act, (long long)n,
                  in_place ? " in place" : "");
        free(x);
        free(ref);
        free(got);
      }
}

/* rl_gather_rows then rl_scatter_add_rows of the gathered rows, scaled, back onto a random
 * destination: the MoE pattern, with repeated rows in both (sequential order on both backends). */
static int run_rows(backend *b, float *gathered, float *summed, const float *x, const float *dst,
                    const int32_t *rows, const float *weights, int n, int cols, int table_rows) {
  const uint64_t table_b = sizeof(float) * (uint64_t)table_rows * cols;
  const uint64_t dense_b = sizeof(float) * (uint64_t)n * cols;
  void *dx = dev_upload(b, x, table_b), *dd = dev_upload(b, dst, table_b);
  void *dg = dev_poison(b, dense_b);
  int good = dx && dd && dg &&
             ok(b, b->gather_rows(b->ctx, dg, dx, rows, n, cols, table_rows), "rl_gather_rows") &&
             ok(b, b->scatter_add_rows(b->ctx, dd, dg, rows, weights, n, cols, table_rows),
                "rl_scatter_add_rows") &&
             dev_download(b, gathered, dg, dense_b) && dev_download(b, summed, dd, table_b);
  dev_free(b, dx);
  dev_free(b, dd);
  dev_free(b, dg);
  return good;
}

static void test_rows(void) {
  if (!has_v4(&CPU, "rows") || !has_v4(&GPU, "rows")) return;
  /* n, cols, table rows: one element; repeats on a small table; more columns than one block */
  static const int shapes[][3] = {{1, 1, 1}, {40, 67, 9}, {130, 3000, 64}, {5, 20000, 3}};
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    const int n = shapes[s][0], cols = shapes[s][1], table_rows = shapes[s][2];
    int32_t *rows = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) rows[i] = (int32_t)(rand_u32() % (uint32_t)table_rows);
    if (n > 2) rows[n - 1] = rows[0];
    float *weights = rand_floats(n, -2.0f, 2.0f);
    const int64_t table_n = (int64_t)table_rows * cols, dense_n = (int64_t)n * cols;
    float *x = rand_floats(table_n, -5.0f, 5.0f), *dst = rand_floats(table_n, -5.0f, 5.0f);
    const size_t dense_b = sizeof(float) * (size_t)dense_n, table_b = sizeof(float) * (size_t)table_n;
    float *g_ref = malloc(dense_b), *g_got = malloc(dense_b);
    float *s_ref = malloc(table_b), *s_got = malloc(table_b);
    if (run_rows(&CPU, g_ref, s_ref, x, dst, rows, weights, n, cols, table_rows) &&
        run_rows(&GPU, g_got, s_got, x, dst, rows, weights, n, cols, table_rows)) {
      check(memcmp(g_ref, g_got, dense_b) == 0,
            "rl_gather_rows n=%d cols=%d x_rows=%d: cuda differs from cpu", n, cols, table_rows);
      /* the same products and sums in the same order: equal, not just close */
      check(memcmp(s_ref, s_got, table_b) == 0,
            "rl_scatter_add_rows n=%d cols=%d out_rows=%d: cuda differs from cpu", n, cols,
            table_rows);
      compare(s_ref, s_got, table_n, TOL_F32, "rl_scatter_add_rows n=%d cols=%d", n, cols);
    }
    free(rows);
    free(weights);
    free(x);
    free(dst);
    free(g_ref);
    free(g_got);
    free(s_ref);
    free(s_got);
  }
}

/* op 0: add(out, a, b); 1: add in place (out = a); 2: scale; 3: scale in place; 4: softcap;
 * 5: softcap in place. */
static int run_elementwise(backend *b, int op, float *out, const float *a, const float *bb,
                           int64_t n) {
  const uint64_t bytes = sizeof(float) * (uint64_t)n;
  void *da = dev_upload(b, a, bytes), *db = dev_upload(b, bb, bytes);
  const int in_place = op % 2 == 1;
  void *dout = in_place ? da : dev_poison(b, bytes);
  int good = da && db && dout;
  if (good) {
    if (op < 2) good = ok(b, b->add(b->ctx, dout, da, db, n), "rl_add");
    else if (op < 4) good = ok(b, b->scale(b->ctx, dout, da, -0.37f, n), "rl_scale");
    else good = ok(b, b->softcap(b->ctx, dout, da, 3.0f, n), "rl_softcap");
  }
  good = good && dev_download(b, out, dout, bytes);
  dev_free(b, da);
  dev_free(b, db);
  if (!in_place) dev_free(b, dout);
  return good;
}

static void test_elementwise(void) {
  static const int64_t sizes[] = {1, 1000003};
  static const char *names[] = {"rl_add", "rl_add in place", "rl_scale", "rl_scale in place",
                                "rl_softcap", "rl_softcap in place"};
  for (int op = 0; op < 6; op++)
    for (int s = 0; s < 2; s++) {
      const int64_t n = sizes[s];
      float *a = rand_floats(n, -10.0f, 10.0f), *bb = rand_floats(n, -10.0f, 10.0f);
      float *ref = malloc(sizeof(float) * (size_t)n), *got = malloc(sizeof(float) * (size_t)n);
      if (run_elementwise(&CPU, op, ref, a, bb, n) && run_elementwise(&GPU, op, got, a, bb, n))
        compare(ref, got, n, TOL_F32, "%s n=%lld", names[op], (long long)n);
      free(a);
      free(bb);
      free(ref);
      free(got);
    }
}

static int run_argmax(backend *b, int32_t *out, const float *x, int rows, int cols) {
  void *dx = dev_upload(b, x, sizeof(float) * (uint64_t)rows * cols);
  int good = dx && ok(b, b->argmax(b->ctx, out, dx, rows, cols), "rl_argmax");
  dev_free(b, dx);
  return good;
}

static void test_argmax(void) {
  static const int shapes[][2] = {{6, 1000}, {1, 100003}, {3, 7}};
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    const int rows = shapes[s][0], cols = shapes[s][1];
    float *x = rand_floats((int64_t)rows * cols, -5.0f, 5.0f);
    for (int r = 0; r < rows; r++) {
      float *xr = x + (int64_t)r * cols;
      switch (r % 6) {
      case 0: /* a tie: the first index wins */
        xr[cols / 2] = 100.0f;
        xr[cols - 1] = 100.0f;
        break;
      case 1: /* NaN never wins */
        xr[0] = NAN;
        xr[cols / 3] = NAN;
        break;
      case 2: /* all -inf: 0 */
        for (int c = 0; c < cols; c++) xr[c] = -INFINITY;
        break;
      case 3: /* all NaN: 0 */
        for (int c = 0; c < cols; c++) xr[c] = NAN;
        break;
      case 4: /* +inf wins, first of them */
        xr[cols - 1] = INFINITY;
        xr[cols / 2] = INFINITY;
        break;
      default: break;
      }
    }
    int32_t *ref = calloc((size_t)rows, sizeof(int32_t)), *got = calloc((size_t)rows, sizeof(int32_t));
    if (run_argmax(&CPU, ref, x, rows, cols) && run_argmax(&GPU, got, x, rows, cols))
      for (int r = 0; r < rows; r++)
        check(ref[r] == got[r], "rl_argmax rows=%d cols=%d row %d: cpu %d, cuda %d", rows, cols, r,
              ref[r], got[r]);
    free(x);
    free(ref);
    free(got);
  }
}

/* ----------------------------------------------------------------------------------------------
 * Attention */

/* v_head_dim 0 means head_dim. latent: an MLA cache, v == k (v_stride = k_stride): the values are
 * the first v_head_dim floats of each kv head's key (n_kv_heads 1 in practice). impls: bit i set
 * runs the CUDA side with attn_impl i (0 auto, 1 flash, 2 eager); 0 means flash and eager. */
typedef struct {
  int n_q, q_start, kv_len, n_heads, n_kv_heads, head_dim, window, q_extra, kv_extra;
  float scale, softcap;
  const uint8_t *kv_valid;
  int v_head_dim, latent, impls;
  const float *slopes; /* ABI 7: n_heads ALiBi slopes (rl_attention_alibi), or NULL */
} attn_case;

static int attn_vd(const attn_case *c) { return c->v_head_dim ? c->v_head_dim : c->head_dim; }
static int attn_k_stride(const attn_case *c) {
  return c->n_kv_heads * c->head_dim + c->kv_extra;
}
static int attn_v_stride(const attn_case *c) {
  return c->latent ? attn_k_stride(c) : c->n_kv_heads * attn_vd(c) + c->kv_extra;
}

static int run_attention(backend *b, float *out, const float *q, const float *k, const float *v,
                         const attn_case *c) {
  const int vd = attn_vd(c);
  const int q_stride = c->n_heads * c->head_dim + c->q_extra;
  const int k_stride = attn_k_stride(c), v_stride = attn_v_stride(c);
  const uint64_t qb = sizeof(float) * (uint64_t)c->n_q * q_stride;
  const uint64_t kb = sizeof(float) * (uint64_t)c->kv_len * k_stride;
  const uint64_t vb = sizeof(float) * (uint64_t)c->kv_len * v_stride;
  const uint64_t ob = sizeof(float) * (uint64_t)c->n_q * c->n_heads * vd;
  void *dq = dev_upload(b, q, qb), *dk = dev_upload(b, k, kb);
  void *dv = c->latent ? dk : dev_upload(b, v, vb);
  void *dout = dev_poison(b, ob);
  int good = dq && dk && dv && dout &&
             ok(b,
                c->slopes ? b->attention_alibi(b->ctx, dout, dq, q_stride, dk, k_stride, dv,
                                               v_stride, c->n_q, c->q_start, c->kv_len,
                                               c->n_heads, c->n_kv_heads, c->head_dim, vd,
                                               c->scale, c->window, c->softcap, c->kv_valid,
                                               c->slopes)
                          : b->attention(b->ctx, dout, dq, q_stride, dk, k_stride, dv, v_stride,
                                         c->n_q, c->q_start, c->kv_len, c->n_heads,
                                         c->n_kv_heads, c->head_dim, vd, c->scale, c->window,
                                         c->softcap, c->kv_valid),
                c->slopes ? "rl_attention_alibi" : "rl_attention") &&
             dev_download(b, out, dout, ob);
  dev_free(b, dq);
  dev_free(b, dk);
  if (!c->latent) dev_free(b, dv);
  dev_free(b, dout);
  return good;
}

static void attention_case(attn_case c) {
  const int q_stride = c.n_heads * c.head_dim + c.q_extra;
  float *q = rand_floats((int64_t)c.n_q * q_stride, -1.0f, 1.0f);
  float *k = rand_floats((int64_t)c.kv_len * attn_k_stride(&c), -1.0f, 1.0f);
  float *v = c.latent ? NULL : rand_floats((int64_t)c.kv_len * attn_v_stride(&c), -1.0f, 1.0f);
  const int64_t n = (int64_t)c.n_q * c.n_heads * attn_vd(&c);
  float *ref = malloc(sizeof(float) * (size_t)n), *got = malloc(sizeof(float) * (size_t)n);
  const int impls = c.impls ? c.impls : 1 << 1 | 1 << 2;
  static const char *impl_name[] = {"auto", "flash", "eager"};
  if (run_attention(&CPU, ref, q, k, v, &c)) {
    for (int impl = 0; impl <= 2; impl++) {
      if (!(impls >> impl & 1)) continue;
      if (!ok(&GPU, GPU.set_option(GPU.ctx, (const uint8_t *)"attn_impl", impl), "rl_set_option"))
        continue;
      if (run_attention(&GPU, got, q, k, v, &c))
        compare(ref, got, n, TOL_F32,
                "%s %s n_q=%d q_start=%d kv_len=%d heads=%d/%d head_dim=%d "
                "v_head_dim=%d%s window=%d softcap=%g scale=%g mask=%s strides +%d/+%d",
                c.slopes ? "rl_attention_alibi" : "rl_attention", impl_name[impl], c.n_q, c.q_start, c.kv_len, c.n_heads, c.n_kv_heads,
                c.head_dim, attn_vd(&c), c.latent ? " (latent, v == k)" : "", c.window,
                (double)c.softcap, (double)c.scale, c.kv_valid ? "yes" : "no", c.q_extra,
                c.kv_extra);
    }
    GPU.set_option(GPU.ctx, (const uint8_t *)"attn_impl", 0);
  }
  free(q);
  free(k);
  free(v);
  free(ref);
  free(got);
}

static void test_attention(void) {
  static const int head_dims[] = {64, 128, 72, 40, 256};
  static const int heads[][2] = {{4, 4}, {4, 2}, {8, 2}};
  static const int shapes[][3] = {/* n_q, q_start, kv_len */
                                  {1, 40, 41},   {1, 999, 1000}, {7, 0, 7},
                                  {5, 30, 35},   {70, 0, 70},    {3, 200, 203}};
  enum { MAX_KV = 1000 };
  uint8_t *mask = malloc(MAX_KV);
  for (int j = 0; j < MAX_KV; j++) mask[j] = j < 3 ? 0 : rand_u32() % 10 != 0; /* left padding */
  for (size_t d = 0; d < sizeof head_dims / sizeof *head_dims; d++)
    for (size_t h = 0; h < sizeof heads / sizeof *heads; h++)
      for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int variant = 0; variant < 4; variant++) {
          attn_case c = {.n_q = shapes[s][0], .q_start = shapes[s][1], .kv_len = shapes[s][2],
                         .n_heads = heads[h][0], .n_kv_heads = heads[h][1],
                         .head_dim = head_dims[d], .scale = 1.0f / sqrtf((float)head_dims[d])};
          switch (variant) {
          case 1: c.window = 16; break;
          case 2: /* peaky scores, capped; q/k/v rows with padding (a fused qkv layout) */
            c.scale = 0.5f;
            c.softcap = 5.0f;
            c.q_extra = 2 * c.n_kv_heads * c.head_dim;
            c.kv_extra = 8;
            break;
          case 3:
            c.kv_valid = mask;
            c.window = s % 2 ? 0 : 100;
            break;
          default: break;
          }
          attention_case(c);
        }
  /* Long prefills: enough blocks that flash does not split the keys. */
  attention_case((attn_case){.n_q = 600, .kv_len = 600, .n_heads = 8, .n_kv_heads = 8,
                             .head_dim = 64, .scale = 0.125f});
  attention_case((attn_case){.n_q = 600, .kv_len = 600, .n_heads = 8, .n_kv_heads = 2,
                             .head_dim = 128, .scale = 0.09f, .window = 100, .kv_valid = mask});
  attention_case((attn_case){.n_q = 300, .q_start = 100, .kv_len = 400, .n_heads = 16,
                             .n_kv_heads = 16, .head_dim = 96, .scale = 0.1f, .softcap = 20.0f});
  /* flash refuses head_dim > 256 by name; auto falls back to eager */
  {
    attn_case c = {.n_q = 2, .q_start = 3, .kv_len = 5, .n_heads = 2, .n_kv_heads = 1,
                   .head_dim = 264, .scale = 0.06f};
    float *q = rand_floats(2 * 2 * 264, -1, 1), *kv = rand_floats(5 * 264, -1, 1);
    float *ref = malloc(sizeof(float) * 2 * 2 * 264), *got = malloc(sizeof(float) * 2 * 2 * 264);
    GPU.set_option(GPU.ctx, (const uint8_t *)"attn_impl", 1);
    void *dq = dev_upload(&GPU, q, sizeof(float) * 2 * 2 * 264);
    void *dkv = dev_upload(&GPU, kv, sizeof(float) * 5 * 264);
    void *dout = dev_alloc(&GPU, sizeof(float) * 2 * 2 * 264);
    if (dq && dkv && dout) {
      const int32_t st = GPU.attention(GPU.ctx, dout, dq, 2 * 264, dkv, 264, dkv, 264, 2, 3, 5, 2,
                                       1, 264, 264, 0.06f, 0, 0.0f, NULL);
      const char *msg = last_error(&GPU, GPU.ctx);
      check(st == RL_ERR_UNSUPPORTED && strstr(msg, "264") != NULL,
            "cuda: flash with head_dim 264: status %d, \"%s\"", st, msg);
    }
    dev_free(&GPU, dq);
    dev_free(&GPU, dkv);
    dev_free(&GPU, dout);
    GPU.set_option(GPU.ctx, (const uint8_t *)"attn_impl", 0);
    if (run_attention(&CPU, ref, q, kv, kv, &c) && run_attention(&GPU, got, q, kv, kv, &c))
      compare(ref, got, 2 * 2 * 264, TOL_F32, "rl_attention auto with head_dim 264");
    free(q);
    free(kv);
    free(ref);
    free(got);
  }
  /* ABI 5: v_head_dim != head_dim (flash supports both <= 256, DMAX = the larger). */
  {
    static const int vdims[][2] = {{64, 128}, {72, 32}, {40, 40}}; /* head_dim, v_head_dim */
    for (size_t i = 0; i < sizeof vdims / sizeof *vdims; i++)
      for (int variant = 0; variant < 2; variant++) {
        attn_case c = {.n_q = variant ? 5 : 1, .q_start = variant ? 30 : 40,
                       .kv_len = variant ? 35 : 41, .n_heads = 4, .n_kv_heads = 2,
                       .head_dim = vdims[i][0], .v_head_dim = vdims[i][1],
                       .scale = 1.0f / sqrtf((float)vdims[i][0])};
        if (variant) { /* padded rows, separate strides */
          c.kv_extra = 8;
          c.q_extra = 3;
          c.softcap = 5.0f;
        }
        attention_case(c);
      }
  }
  /* An MLA latent cache: key rows [latent 64 | rope 16], v == k, the value is the latent part. */
  {
    static const int shapes[][3] = {{1, 40, 41}, {7, 0, 7}, {5, 30, 35}, {3, 200, 203}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
      for (int variant = 0; variant < 3; variant++) {
        attn_case c = {.n_q = shapes[s][0], .q_start = shapes[s][1], .kv_len = shapes[s][2],
                       .n_heads = 4, .n_kv_heads = 1, .head_dim = 80, .v_head_dim = 64,
                       .latent = 1, .scale = 0.11f};
        if (variant == 1) c.window = 16;
        if (variant == 2) {
          c.kv_valid = mask;
          c.softcap = 5.0f;
          c.kv_extra = 4;
        }
        attention_case(c);
      }
    /* auto (0) picks flash here: both dims fit */
    attention_case((attn_case){.n_q = 2, .q_start = 9, .kv_len = 11, .n_heads = 4,
                               .n_kv_heads = 1, .head_dim = 80, .v_head_dim = 64, .latent = 1,
                               .scale = 0.11f, .impls = 1 << 0});
  }
  /* DeepSeek's MLA sizes, 576 / 512 with 16 heads on one latent head: flash refuses naming both
   * dims, auto (0) and eager (2) run. */
  {
    const attn_case c = {.n_q = 2, .q_start = 4, .kv_len = 6, .n_heads = 16, .n_kv_heads = 1,
                         .head_dim = 576, .v_head_dim = 512, .latent = 1, .scale = 0.04f};
    float *q = rand_floats(2 * 16 * 576, -1, 1), *kv = rand_floats(6 * 576, -1, 1);
    void *dq = dev_upload(&GPU, q, sizeof(float) * 2 * 16 * 576);
    void *dkv = dev_upload(&GPU, kv, sizeof(float) * 6 * 576);
    void *dout = dev_alloc(&GPU, sizeof(float) * 2 * 16 * 512);
    GPU.set_option(GPU.ctx, (const uint8_t *)"attn_impl", 1);
    if (dq && dkv && dout) {
      const int32_t st = GPU.attention(GPU.ctx, dout, dq, 16 * 576, dkv, 576, dkv, 576, 2, 4, 6,
                                       16, 1, 576, 512, 0.04f, 0, 0.0f, NULL);
      const char *msg = last_error(&GPU, GPU.ctx);
      check(st == RL_ERR_UNSUPPORTED && strstr(msg, "576") != NULL && strstr(msg, "512") != NULL,
            "cuda: flash with head_dim 576 / v_head_dim 512: status %d, \"%s\"", st, msg);
    }
    GPU.set_option(GPU.ctx, (const uint8_t *)"attn_impl", 0);
    dev_free(&GPU, dq);
    dev_free(&GPU, dkv);
    dev_free(&GPU, dout);
    free(q);
    free(kv);
    attn_case a = c;
    a.impls = 1 << 0 | 1 << 2; /* auto and eager */
    attention_case(a);
    a.impls = 1 << 2;
    a.window = 3;
    attention_case(a);
  }
  free(mask);
}

/* ALiBi's slopes for n heads (the standard recipe, as lib/models/alibi.ts): for the power of two
 * m <= n, 2^(-8k/m), k = 1..m, then 2^(-4(2k-1)/m), k = 1..n-m. */
static void alibi_slopes(float *out, int n) {
  int m = 1;
  while (m * 2 <= n) m *= 2;
  for (int k = 1; k <= n; k++)
    out[k - 1] = k <= m ? (float)exp2(-8.0 * k / m) : (float)exp2(-4.0 * (2 * (k - m) - 1) / m);
}

static void same_status(const char *op, int32_t cpu, int32_t cuda);

/* ABI 7: rl_attention_alibi, CUDA (flash and eager) against the CPU. */
static void test_attention_alibi(void) {
  if (!has_v7(&CPU, "alibi") || !has_v7(&GPU, "alibi")) return;
  static const int head_dims[] = {64, 40, 128};
  static const int heads[][2] = {{4, 4}, {8, 2}};
  static const int shapes[][3] = {/* n_q, q_start, kv_len */
                                  {1, 999, 1000}, {7, 0, 7}, {5, 30, 35}, {70, 0, 70}};
  enum { MAX_KV = 1000, MAX_HEADS = 40 };
  uint8_t *mask = malloc(MAX_KV);
  for (int j = 0; j < MAX_KV; j++) mask[j] = j < 3 ? 0 : rand_u32() % 10 != 0; /* left padding */
  float standard[MAX_HEADS], random[MAX_HEADS], zero[MAX_HEADS] = {0};
  for (int h = 0; h < MAX_HEADS; h++) random[h] = rand_float(0.01f, 1.0f);
  int n = 0;
  for (size_t d = 0; d < sizeof head_dims / sizeof *head_dims; d++)
    for (size_t h = 0; h < sizeof heads / sizeof *heads; h++)
      for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++, n++) {
        attn_case c = {.n_q = shapes[s][0], .q_start = shapes[s][1], .kv_len = shapes[s][2],
                       .n_heads = heads[h][0], .n_kv_heads = heads[h][1],
                       .head_dim = head_dims[d], .scale = 1.0f / sqrtf((float)head_dims[d])};
        alibi_slopes(standard, c.n_heads);
        c.slopes = n % 2 ? random : standard;
        switch (n % 4) {
        case 1: c.window = 16; break;
        case 2: /* capped; q/k/v rows with padding (a fused qkv layout) */
          c.softcap = 5.0f;
          c.q_extra = 2 * c.n_kv_heads * c.head_dim;
          c.kv_extra = 8;
          break;
        case 3:
          c.kv_valid = mask;
          c.window = s % 2 ? 0 : 100;
          break;
        default: break;
        }
        attention_case(c);
      }
  /* Baichuan-13B's attention: 40 heads of 128, decode over a long cache and a prefill with left
   * padding; auto (flash) too */
  alibi_slopes(standard, 40);
  attention_case((attn_case){.n_q = 1, .q_start = 600, .kv_len = 601, .n_heads = 40,
                             .n_kv_heads = 40, .head_dim = 128, .scale = 1.0f / sqrtf(128.0f),
                             .slopes = standard, .impls = 1 << 0 | 1 << 1 | 1 << 2});
  attention_case((attn_case){.n_q = 20, .q_start = 0, .kv_len = 20, .n_heads = 40,
                             .n_kv_heads = 40, .head_dim = 128, .scale = 1.0f / sqrtf(128.0f),
                             .kv_valid = mask, .slopes = standard});
  /* v_head_dim != head_dim, and an MLA latent cache (v == k) */
  alibi_slopes(standard, 4);
  attention_case((attn_case){.n_q = 5, .q_start = 30, .kv_len = 35, .n_heads = 4,
                             .n_kv_heads = 2, .head_dim = 72, .v_head_dim = 32, .scale = 0.12f,
                             .slopes = standard});
  attention_case((attn_case){.n_q = 3, .q_start = 200, .kv_len = 203, .n_heads = 4,
                             .n_kv_heads = 1, .head_dim = 80, .v_head_dim = 64, .latent = 1,
                             .scale = 0.11f, .window = 16, .slopes = standard});
  /* zero slopes: the same as no slopes (rl_attention), on CUDA, flash and eager */
  for (int impl = 1; impl <= 2; impl++) {
    const attn_case c = {.n_q = 5, .q_start = 60, .kv_len = 65, .n_heads = 8, .n_kv_heads = 2,
                         .head_dim = 64, .scale = 0.125f, .kv_valid = mask};
    attn_case z = c;
    z.slopes = zero;
    const int64_t n_out = 5 * 8 * 64;
    float *q = rand_floats(5 * 8 * 64, -1, 1), *k = rand_floats(65 * 2 * 64, -1, 1);
    float *v = rand_floats(65 * 2 * 64, -1, 1);
    float *plain = malloc(sizeof(float) * n_out), *zeroed = malloc(sizeof(float) * n_out);
    GPU.set_option(GPU.ctx, (const uint8_t *)"attn_impl", impl);
    if (run_attention(&GPU, plain, q, k, v, &c) && run_attention(&GPU, zeroed, q, k, v, &z))
      check(memcmp(plain, zeroed, sizeof(float) * n_out) == 0,
            "cuda: rl_attention_alibi with zero slopes equals rl_attention (attn_impl %d)", impl);
    GPU.set_option(GPU.ctx, (const uint8_t *)"attn_impl", 0);
    free(q);
    free(k);
    free(v);
    free(plain);
    free(zeroed);
  }
  /* errors: the same statuses, named rl_attention_alibi */
  float *cb = CPU.alloc(CPU.ctx, 4096), *gb = GPU.alloc(GPU.ctx, 4096);
  if (cb && gb) {
    const float bad[4] = {0.5f, 0.25f, NAN, 0.125f};
    same_status("rl_attention_alibi",
                CPU.attention_alibi(CPU.ctx, cb, cb + 512, 64, cb + 640, 64, cb + 768, 64, 1, 0,
                                    4, 4, 2, 16, 16, 1, 0, 0, NULL, bad),
                GPU.attention_alibi(GPU.ctx, gb, gb + 512, 64, gb + 640, 64, gb + 768, 64, 1, 0,
                                    4, 4, 2, 16, 16, 1, 0, 0, NULL, bad));
    const char *msg = last_error(&GPU, GPU.ctx);
    check(strstr(msg, "alibi_slopes[2]") != NULL, "cuda: a NaN slope is named: \"%s\"", msg);
    same_status("rl_attention_alibi",
                CPU.attention_alibi(CPU.ctx, cb, cb, 96, cb, 64, cb, 64, 1, 0, 4, 3, 2, 32, 32, 1,
                                    0, 0, NULL, standard),
                GPU.attention_alibi(GPU.ctx, gb, gb, 96, gb, 64, gb, 64, 1, 0, 4, 3, 2, 32, 32, 1,
                                    0, 0, NULL, standard));
  } else {
    check(0, "alibi error tests: scratch allocations");
  }
  if (cb) CPU.free(CPU.ctx, cb);
  if (gb) GPU.free(GPU.ctx, gb);
  free(mask);
}

/* ----------------------------------------------------------------------------------------------
 * Copies, statistics, errors, options, marks */

static void test_copies_and_stats(void) {
  rl_ctx *cc = CPU.create(0, 0), *gc = GPU.create(0, 0);
  if (!cc || !gc) {
    check(0, "second contexts: cpu %p, cuda %p (%s)", (void *)cc, (void *)gc, last_error(&GPU, NULL));
    if (cc) CPU.destroy(cc);
    if (gc) GPU.destroy(gc);
    return;
  }
  backend *bs[2] = {&CPU, &GPU};
  rl_ctx *ctxs[2] = {cc, gc};
  uint64_t st[2][RL_STAT_COUNT];
  uint8_t host[1000], back[1000];
  for (int i = 0; i < 1000; i++) host[i] = (uint8_t)(i * 7 + 3);
  for (int i = 0; i < 2; i++) {
    backend *b = bs[i];
    rl_ctx *ctx = ctxs[i];
    uint8_t *a = b->alloc(ctx, 1000), *c = b->alloc(ctx, 1000), *d = b->alloc(ctx, 300);
    check(a && c && d, "%s: three allocations", b->name);
    if (!a || !c || !d) continue;
    memset(back, 0, sizeof back);
    check(b->upload(ctx, a, host, 1000) == RL_OK && b->copy(ctx, c, b->view(a, 100), 900) == RL_OK &&
              b->download(ctx, back, c, 900) == RL_OK && memcmp(back, host + 100, 900) == 0,
          "%s: upload, copy from a view, download round trip", b->name);
    check(b->free(ctx, b->view(a, 64)) == RL_ERR_INVALID, "%s: rl_free of a view is refused",
          b->name);
    check(b->free(ctx, d) == RL_OK && b->free(ctx, d) == RL_ERR_INVALID,
          "%s: rl_free twice: OK then refused", b->name);
    check(b->sync(ctx) == RL_OK, "%s: rl_sync", b->name);
    check(b->stats(ctx, st[i], RL_STAT_COUNT) == RL_OK, "%s: rl_stats", b->name);
  }
  for (int s = 0; s < RL_STAT_COUNT; s++)
    check(st[0][s] == st[1][s], "statistic %d: cpu %llu, cuda %llu", s,
          (unsigned long long)st[0][s], (unsigned long long)st[1][s]);
  CPU.destroy(cc); /* a and c still live: destroy releases them */
  GPU.destroy(gc);
  CPU.destroy(NULL);
  GPU.destroy(NULL);
}

/* Both backends return the same status for the same bad call, and the CUDA message starts with
 * the op's name. */
static void same_status(const char *op, int32_t cpu, int32_t cuda) {
  const char *msg = last_error(&GPU, GPU.ctx);
  check(cpu == cuda && cuda != RL_OK && strncmp(msg, op, strlen(op)) == 0 &&
            msg[strlen(op)] == ':',
        "%s: cpu status %d, cuda status %d, cuda message \"%s\"", op, cpu, cuda, msg);
}

/* ----------------------------------------------------------------------------------------------
 * Views (ABI 5): rl_matmul_nd (group "bmm") and rl_copy_nd (group "copy_nd") */

/* A descriptor: dtype, offset, shape[4], stride[4]. */
typedef struct {
  int64_t d[RL_DESC_LEN];
} desc4;

static desc4 mkdesc(int dt, int64_t off, int64_t s0, int64_t s1, int64_t s2, int64_t s3,
                    int64_t t0, int64_t t1, int64_t t2, int64_t t3) {
  desc4 r = {{dt, off, s0, s1, s2, s3, t0, t1, t2, t3}};
  return r;
}

/* Elements a buffer must hold for the view: offset + span. */
static int64_t desc_elems(const desc4 *v) {
  int64_t last = v->d[RL_DESC_OFFSET];
  for (int i = 0; i < 4; i++) last += v->d[RL_DESC_STRIDE + i] * (v->d[RL_DESC_SHAPE + i] - 1);
  return last + 1;
}

/* rl_matmul_nd on b over buffers of the descriptors' sizes; out_buf (the whole out buffer,
 * poisoned with NaN before the op) is downloaded. */
static int run_matmul_nd(backend *b, float *out_buf, const desc4 *od, const float *x,
                         const desc4 *xd, const void *w, const desc4 *wd) {
  const uint64_t ob = sizeof(float) * (uint64_t)desc_elems(od);
  const uint64_t xb = sizeof(float) * (uint64_t)desc_elems(xd);
  const uint64_t wb = (uint64_t)dtype_size((int)wd->d[0]) * (uint64_t)desc_elems(wd);
  void *dx = dev_upload(b, x, xb), *dw = dev_upload(b, w, wb), *dout = dev_poison(b, ob);
  int good = dx && dw && dout &&
             ok(b, b->matmul_nd(b->ctx, dout, od->d, dx, xd->d, dw, wd->d), "rl_matmul_nd") &&
             dev_download(b, out_buf, dout, ob);
  dev_free(b, dx);
  dev_free(b, dw);
  dev_free(b, dout);
  return good;
}

static void matmul_nd_case(const char *what, desc4 od, desc4 xd, desc4 wd) {
  const int dt = (int)wd.d[0];
  const int64_t on = desc_elems(&od);
  float *x = rand_floats(desc_elems(&xd), -1.0f, 1.0f);
  void *w = rand_tensor(dt, desc_elems(&wd));
  float *ref = malloc(sizeof(float) * (size_t)on), *got = malloc(sizeof(float) * (size_t)on);
  if (run_matmul_nd(&CPU, ref, &od, x, &xd, w, &wd) &&
      run_matmul_nd(&GPU, got, &od, x, &xd, w, &wd))
    compare(ref, got, on, dtype_tol(dt), "rl_matmul_nd %s %s: out %lldx%lldx%lldx%lld K=%lld",
            what, dtype_name[dt], (long long)od.d[2], (long long)od.d[3], (long long)od.d[4],
            (long long)od.d[5], (long long)xd.d[5]);
  free(x);
  free(w);
  free(ref);
  free(got);
}

static void test_matmul_nd(void) {
  if (!has_v5(&CPU, "bmm") || !has_v5(&GPU, "bmm")) return;
  static const int MNK[][3] = {{1, 37, 45}, {3, 33, 70}, {5, 1, 33}, {2, 65, 300}, {1, 1, 1}};
  for (int dt = 0; dt < 3; dt++)
    for (size_t s = 0; s < sizeof MNK / sizeof *MNK; s++) {
      const int64_t M = MNK[s][0], N = MNK[s][1], K = MNK[s][2];
      const desc4 od = mkdesc(0, 0, 1, 1, M, N, 0, 0, N, 1);
      const desc4 xd = mkdesc(0, 0, 1, 1, M, K, 0, 0, K, 1);
      /* a plain [K, N] w (strides N, 1) and nn.Linear's W[N, K] (strides 1, K) */
      matmul_nd_case("plain [K,N] w", od, xd, mkdesc(dt, 0, 1, 1, K, N, 0, 0, N, 1));
      matmul_nd_case("nn.Linear W[N,K] view", od, xd, mkdesc(dt, 0, 1, 1, K, N, 0, 0, 1, K));
      /* batch [2, 3] with w broadcast (stride 0), both layouts */
      const desc4 ob = mkdesc(0, 0, 2, 3, M, N, 3 * M * N, M * N, N, 1);
      const desc4 xb = mkdesc(0, 0, 2, 3, M, K, 3 * M * K, M * K, K, 1);
      matmul_nd_case("batch 2x3, w broadcast", ob, xb, mkdesc(dt, 0, 2, 3, K, N, 0, 0, N, 1));
      matmul_nd_case("batch 2x3, W[N,K] broadcast", ob, xb, mkdesc(dt, 0, 2, 3, K, N, 0, 0, 1, K));
      /* x broadcast over the first batch dim, w batched with padding and an offset */
      matmul_nd_case("batch 2x3, x broadcast", ob, mkdesc(0, 0, 2, 3, M, K, 0, M * K, K, 1),
                     mkdesc(dt, 7, 2, 3, K, N, 3 * (K * N + 5), K * N + 5, N, 1));
    }
  /* Per-head attention products over a fused [T, H * D] layout: q rows with padding and an
   * offset, keys and values as views of cache rows, the output written into [M, H * D]. */
  for (int dt = 0; dt < 3; dt++) {
    const int64_t H = 4, D = 16, M = 5, T = 9, qs = H * D + 7, ks = H * D + 2;
    /* scores[h, m, j] = q[m, h] . k[j, h]: w[h, d, j] = K[j, h*D + d] (k stride 1) */
    matmul_nd_case("per-head q . k^T", mkdesc(0, 0, 1, H, M, T, 0, M * T, T, 1),
                   mkdesc(0, 3, 1, H, M, D, 0, D, qs, 1), mkdesc(dt, 5, 1, H, D, T, 0, D, 1, ks));
    /* out[m, h*D + d] = sum_j p[h, m, j] V[j, h*D + d] (w's k stride is a row) */
    matmul_nd_case("per-head p . v", mkdesc(0, 0, 1, H, M, D, 0, D, H * D, 1),
                   mkdesc(0, 0, 1, H, M, T, 0, M * T, T, 1),
                   mkdesc(dt, 5, 1, H, T, D, 0, D, ks, 1));
    /* GQA: 2 kv heads for 4 query heads as a [2, 2] batch, kv head stride 0 over the group */
    matmul_nd_case("GQA q . k^T", mkdesc(0, 0, 2, 2, M, T, 2 * M * T, M * T, T, 1),
                   mkdesc(0, 0, 2, 2, M, D, 2 * D, D, qs, 1),
                   mkdesc(dt, 0, 2, 2, D, T, D, 0, 1, 2 * D + 1));
  }

  /* Error statuses: the same for the same bad descriptor. */
  float *cb = CPU.alloc(CPU.ctx, 4096), *gb = GPU.alloc(GPU.ctx, 4096);
  if (!cb || !gb) {
    check(0, "bmm error tests: allocations");
    return;
  }
  const desc4 od = mkdesc(0, 0, 1, 1, 2, 4, 0, 0, 4, 1), xd = mkdesc(0, 0, 1, 1, 2, 3, 0, 0, 3, 1);
  const desc4 wd = mkdesc(0, 0, 1, 1, 3, 4, 0, 0, 4, 1);
  const desc4 bad[] = {
      mkdesc(1, 0, 1, 1, 2, 4, 0, 0, 4, 1),  /* out f16 */
      mkdesc(0, 0, 1, 1, 2, 4, 0, 0, 0, 1),  /* out names elements twice (stride 0) */
      mkdesc(0, -1, 1, 1, 2, 4, 0, 0, 4, 1), /* negative offset */
      mkdesc(0, 0, 1, 1, 2, 5, 0, 0, 5, 1),  /* N differs from w's */
      mkdesc(0, 0, 1, 0, 2, 4, 0, 0, 4, 1),  /* shape 0 */
      mkdesc(7, 0, 1, 1, 2, 4, 0, 0, 4, 1),  /* not a dtype */
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    same_status("rl_matmul_nd", CPU.matmul_nd(CPU.ctx, cb, bad[i].d, cb + 512, xd.d, cb + 768, wd.d),
                GPU.matmul_nd(GPU.ctx, gb, bad[i].d, gb + 512, xd.d, gb + 768, wd.d));
  const desc4 xk = mkdesc(0, 0, 1, 1, 2, 5, 0, 0, 5, 1), wneg = mkdesc(0, 0, 1, 1, 3, 4, 0, 0, -4, 1);
  same_status("rl_matmul_nd", CPU.matmul_nd(CPU.ctx, cb, od.d, cb + 512, xk.d, cb + 768, wd.d),
              GPU.matmul_nd(GPU.ctx, gb, od.d, gb + 512, xk.d, gb + 768, wd.d)); /* K differs */
  same_status("rl_matmul_nd", CPU.matmul_nd(CPU.ctx, cb, od.d, cb + 512, xd.d, cb + 768, wneg.d),
              GPU.matmul_nd(GPU.ctx, gb, od.d, gb + 512, xd.d, gb + 768, wneg.d));
  same_status("rl_matmul_nd", CPU.matmul_nd(CPU.ctx, cb, od.d, cb + 4, xd.d, cb + 768, wd.d),
              GPU.matmul_nd(GPU.ctx, gb, od.d, gb + 4, xd.d, gb + 768, wd.d)); /* out overlaps x */
  same_status("rl_matmul_nd", CPU.matmul_nd(CPU.ctx, cb, od.d, cb + 512, NULL, cb + 768, wd.d),
              GPU.matmul_nd(GPU.ctx, gb, od.d, gb + 512, NULL, gb + 768, wd.d));
  CPU.free(CPU.ctx, cb);
  GPU.free(GPU.ctx, gb);
}

/* rl_copy_nd on b: dst_buf (the whole dst buffer, poisoned with 0xff first) is downloaded. */
static int run_copy_nd(backend *b, void *dst_buf, const desc4 *dd, const void *src,
                       const desc4 *sd) {
  const int64_t es = dtype_size((int)dd->d[0]);
  const uint64_t db = (uint64_t)(es * desc_elems(dd)), sb = (uint64_t)(es * desc_elems(sd));
  void *ds = dev_upload(b, src, sb), *ddst = dev_poison(b, db);
  int good = ds && ddst && ok(b, b->copy_nd(b->ctx, ddst, dd->d, ds, sd->d), "rl_copy_nd") &&
             dev_download(b, dst_buf, ddst, db);
  dev_free(b, ds);
  dev_free(b, ddst);
  return good;
}

static void copy_nd_case(const char *what, desc4 dd, desc4 sd) {
  const int dt = (int)dd.d[0];
  const uint64_t db = (uint64_t)(dtype_size(dt) * desc_elems(&dd));
  void *src = rand_tensor(dt, desc_elems(&sd));
  uint8_t *ref = malloc(db), *got = malloc(db);
  if (run_copy_nd(&CPU, ref, &dd, src, &sd) && run_copy_nd(&GPU, got, &dd, src, &sd)) {
    int64_t diff = 0;
    for (uint64_t i = 0; i < db; i++) diff += ref[i] != got[i];
    check(diff == 0, "rl_copy_nd %s %s: %lld of %llu bytes differ", what, dtype_name[dt],
          (long long)diff, (unsigned long long)db);
  }
  free(src);
  free(ref);
  free(got);
}

static void test_copy_nd(void) {
  if (!has_v5(&CPU, "copy_nd") || !has_v5(&GPU, "copy_nd")) return;
  for (int dt = 0; dt < 3; dt++) {
    const int64_t R = 7, C = 13, W = 40;
    /* de-interleave [R, 2C] pairs into [2, R, C] */
    copy_nd_case("de-interleave", mkdesc(dt, 0, 2, 1, R, C, R * C, R * C, C, 1),
                 mkdesc(dt, 0, 2, 1, R, C, 1, 0, 2 * C, 2));
    /* columns [5, 5 + C) of [R, W] into columns [3, 3 + C) of [R, W + 1] */
    copy_nd_case("column range", mkdesc(dt, 3, 1, 1, R, C, 0, 0, W + 1, 1),
                 mkdesc(dt, 5, 1, 1, R, C, 0, 0, W, 1));
    /* [T, H, D] -> [H, T, D] (heads to the front) */
    const int64_t T = 5, H = 3, D = 33;
    copy_nd_case("head transpose", mkdesc(dt, 0, 1, H, T, D, 0, T * D, D, 1),
                 mkdesc(dt, 0, 1, H, T, D, 0, D, H * D, 1));
    /* one row broadcast to R rows (src stride 0), a full 4-D transpose */
    copy_nd_case("broadcast row", mkdesc(dt, 0, 1, 1, R, W, 0, 0, W, 1),
                 mkdesc(dt, 2, 1, 1, R, W, 0, 0, 0, 1));
    copy_nd_case("4-D permute", mkdesc(dt, 0, 2, 3, 4, 5, 60, 20, 5, 1),
                 mkdesc(dt, 1, 2, 3, 4, 5, 1, 2 * 5 * 4, 2, 2 * 3 * 4 * 5 + 3));
  }
  uint8_t *cb = CPU.alloc(CPU.ctx, 4096), *gb = GPU.alloc(GPU.ctx, 4096);
  if (!cb || !gb) {
    check(0, "copy_nd error tests: allocations");
    return;
  }
  const desc4 d = mkdesc(0, 0, 1, 1, 4, 8, 0, 0, 8, 1), s = mkdesc(0, 0, 1, 1, 4, 8, 0, 0, 8, 1);
  const desc4 s16 = mkdesc(1, 0, 1, 1, 4, 8, 0, 0, 8, 1), s5 = mkdesc(0, 0, 1, 1, 4, 5, 0, 0, 8, 1);
  const desc4 dtwice = mkdesc(0, 0, 1, 1, 4, 8, 0, 0, 4, 1);
  same_status("rl_copy_nd", CPU.copy_nd(CPU.ctx, cb, d.d, cb + 2048, s16.d),
              GPU.copy_nd(GPU.ctx, gb, d.d, gb + 2048, s16.d)); /* dtypes differ */
  same_status("rl_copy_nd", CPU.copy_nd(CPU.ctx, cb, d.d, cb + 2048, s5.d),
              GPU.copy_nd(GPU.ctx, gb, d.d, gb + 2048, s5.d)); /* shapes differ */
  same_status("rl_copy_nd", CPU.copy_nd(CPU.ctx, cb, dtwice.d, cb + 2048, s.d),
              GPU.copy_nd(GPU.ctx, gb, dtwice.d, gb + 2048, s.d)); /* dst not one-to-one */
  same_status("rl_copy_nd", CPU.copy_nd(CPU.ctx, cb, d.d, cb + 64, s.d),
              GPU.copy_nd(GPU.ctx, gb, d.d, gb + 64, s.d)); /* dst overlaps src */
  same_status("rl_copy_nd", CPU.copy_nd(CPU.ctx, cb, NULL, cb + 2048, s.d),
              GPU.copy_nd(GPU.ctx, gb, NULL, gb + 2048, s.d));
  CPU.free(CPU.ctx, cb);
  GPU.free(GPU.ctx, gb);
}

static void test_errors(void) {
  float *cb = CPU.alloc(CPU.ctx, 4096), *gb = GPU.alloc(GPU.ctx, 4096);
  if (!cb || !gb) {
    check(0, "error tests: scratch allocations");
    return;
  }
  const int32_t ids_bad[3] = {0, 5, 11};
  const int32_t pos[4] = {0, 1, 2, 3};
  const float freq[4] = {1, 1, 1, 1};
  /* Each bad call, written once per backend (buffers differ). */
  same_status("rl_matmul", CPU.matmul(CPU.ctx, cb, cb + 512, cb, 0, NULL, 0, 0, 4, 4),
              GPU.matmul(GPU.ctx, gb, gb + 512, gb, 0, NULL, 0, 0, 4, 4));
  same_status("rl_matmul", CPU.matmul(CPU.ctx, cb, cb + 512, cb, 7, NULL, 0, 1, 4, 4),
              GPU.matmul(GPU.ctx, gb, gb + 512, gb, 7, NULL, 0, 1, 4, 4));
  same_status("rl_matmul", CPU.matmul(CPU.ctx, cb, cb + 2, cb + 512, 0, NULL, 0, 2, 4, 4),
              GPU.matmul(GPU.ctx, gb, gb + 2, gb + 512, 0, NULL, 0, 2, 4, 4)); /* out overlaps x */
  /* ABI 6 block formats: K (dim) not a multiple of the block; no dtype 11 or -1 */
  same_status("rl_matmul", CPU.matmul(CPU.ctx, cb, cb + 512, cb + 800, RL_Q4_K, NULL, 0, 1, 4, 288),
              GPU.matmul(GPU.ctx, gb, gb + 512, gb + 800, RL_Q4_K, NULL, 0, 1, 4, 288));
  same_status("rl_matmul", CPU.matmul(CPU.ctx, cb, cb + 512, cb + 800, RL_Q8_0, NULL, 0, 1, 4, 48),
              GPU.matmul(GPU.ctx, gb, gb + 512, gb + 800, RL_Q8_0, NULL, 0, 1, 4, 48));
  same_status("rl_matmul", CPU.matmul(CPU.ctx, cb, cb + 512, cb + 800, 11, NULL, 0, 1, 4, 256),
              GPU.matmul(GPU.ctx, gb, gb + 512, gb + 800, 11, NULL, 0, 1, 4, 256));
  same_status("rl_matmul", CPU.matmul(CPU.ctx, cb, cb + 512, cb + 800, -1, NULL, 0, 1, 4, 256),
              GPU.matmul(GPU.ctx, gb, gb + 512, gb + 800, -1, NULL, 0, 1, 4, 256));
  same_status("rl_matmul", CPU.matmul(CPU.ctx, cb, cb + 512, cb + 800, RL_Q4_0, cb, 3, 1, 4, 256),
              GPU.matmul(GPU.ctx, gb, gb + 512, gb + 800, RL_Q4_0, gb, 3, 1, 4, 256)); /* bias q8_0 */
  {
    const char *msg = last_error(&GPU, GPU.ctx);
    check(strstr(msg, "bias_dtype") != NULL, "rl_matmul names a block-format bias: \"%s\"", msg);
  }
  same_status("rl_embedding", CPU.embedding(CPU.ctx, cb, cb + 512, RL_Q6_K, ids_bad, 1, 128, 11),
              GPU.embedding(GPU.ctx, gb, gb + 512, RL_Q6_K, ids_bad, 1, 128, 11));
  same_status("rl_embedding", CPU.embedding(CPU.ctx, cb, cb + 512, RL_Q5_1, ids_bad, 1, 48, 11),
              GPU.embedding(GPU.ctx, gb, gb + 512, RL_Q5_1, ids_bad, 1, 48, 11));
  same_status("rl_embedding", CPU.embedding(CPU.ctx, cb, cb + 512, 11, ids_bad, 1, 32, 11),
              GPU.embedding(GPU.ctx, gb, gb + 512, 11, ids_bad, 1, 32, 11));
  same_status("rl_embedding", CPU.embedding(CPU.ctx, cb, cb + 512, 0, ids_bad, 3, 4, 11),
              GPU.embedding(GPU.ctx, gb, gb + 512, 0, ids_bad, 3, 4, 11));
  {
    const char *msg = last_error(&GPU, GPU.ctx);
    check(strstr(msg, "position 2") != NULL, "rl_embedding names the bad id's position: \"%s\"",
          msg);
  }
  same_status("rl_rope", CPU.rope(CPU.ctx, cb, 2, 64, 2, 32, 5, pos, freq, 1.0f),
              GPU.rope(GPU.ctx, gb, 2, 64, 2, 32, 5, pos, freq, 1.0f));
  same_status("rl_rope", CPU.rope(CPU.ctx, cb, 2, 64, 2, 32, 34, pos, freq, 1.0f),
              GPU.rope(GPU.ctx, gb, 2, 64, 2, 32, 34, pos, freq, 1.0f));
  same_status("rl_rope", CPU.rope(CPU.ctx, cb, 2, 60, 2, 32, 32, pos, freq, 1.0f),
              GPU.rope(GPU.ctx, gb, 2, 60, 2, 32, 32, pos, freq, 1.0f));
  same_status("rl_attention",
              CPU.attention(CPU.ctx, cb, cb, 64, cb, 64, cb, 64, 3, 2, 4, 2, 2, 32, 32, 1, 0, 0, NULL),
              GPU.attention(GPU.ctx, gb, gb, 64, gb, 64, gb, 64, 3, 2, 4, 2, 2, 32, 32, 1, 0, 0, NULL));
  same_status("rl_attention",
              CPU.attention(CPU.ctx, cb, cb, 96, cb, 64, cb, 64, 1, 0, 4, 3, 2, 32, 32, 1, 0, 0, NULL),
              GPU.attention(GPU.ctx, gb, gb, 96, gb, 64, gb, 64, 1, 0, 4, 3, 2, 32, 32, 1, 0, 0, NULL));
  /* ABI 5: v_head_dim 0; v_stride < n_kv_heads * v_head_dim; out overlapping v (not q or k) */
  same_status("rl_attention",
              CPU.attention(CPU.ctx, cb, cb + 512, 64, cb + 640, 64, cb + 640, 64, 1, 0, 4, 2, 2,
                            32, 0, 1, 0, 0, NULL),
              GPU.attention(GPU.ctx, gb, gb + 512, 64, gb + 640, 64, gb + 640, 64, 1, 0, 4, 2, 2,
                            32, 0, 1, 0, 0, NULL));
  same_status("rl_attention",
              CPU.attention(CPU.ctx, cb, cb + 512, 64, cb + 640, 64, cb + 640, 64, 1, 0, 4, 2, 2,
                            32, 40, 1, 0, 0, NULL),
              GPU.attention(GPU.ctx, gb, gb + 512, 64, gb + 640, 64, gb + 640, 64, 1, 0, 4, 2, 2,
                            32, 40, 1, 0, 0, NULL));
  same_status("rl_attention",
              CPU.attention(CPU.ctx, cb, cb + 512, 64, cb + 640, 64, cb + 32, 64, 1, 0, 4, 2, 2,
                            32, 32, 1, 0, 0, NULL),
              GPU.attention(GPU.ctx, gb, gb + 512, 64, gb + 640, 64, gb + 32, 64, 1, 0, 4, 2, 2,
                            32, 32, 1, 0, 0, NULL));
  same_status("rl_act_mul", CPU.act_mul(CPU.ctx, cb, cb, cb, 1, 8, 8, 9),
              GPU.act_mul(GPU.ctx, gb, gb, gb, 1, 8, 8, 9));
  same_status("rl_act_mul", CPU.act_mul(CPU.ctx, cb, cb, cb, 1, 8, 4, 0),
              GPU.act_mul(GPU.ctx, gb, gb, gb, 1, 8, 4, 0));
  same_status("rl_act_mul", CPU.act_mul(CPU.ctx, cb, cb, cb + 8, 2, 8, 16, 0),
              GPU.act_mul(GPU.ctx, gb, gb, gb + 8, 2, 8, 16, 0)); /* in place with a stride */
  if (CPU.v4 && GPU.v4) {
    const int32_t rows[3] = {0, 3, 4};
    const float wts[3] = {1, 1, 1};
    same_status("rl_act", CPU.act(CPU.ctx, cb, cb, 8, 3), GPU.act(GPU.ctx, gb, gb, 8, 3));
    same_status("rl_act", CPU.act(CPU.ctx, cb + 1, cb, 8, 0), GPU.act(GPU.ctx, gb + 1, gb, 8, 0));
    same_status("rl_act", CPU.act(CPU.ctx, cb, cb, 0, 0), GPU.act(GPU.ctx, gb, gb, 0, 0));
    same_status("rl_gather_rows", CPU.gather_rows(CPU.ctx, cb, cb + 512, rows, 3, 8, 4),
                GPU.gather_rows(GPU.ctx, gb, gb + 512, rows, 3, 8, 4)); /* row 4 of 4 */
    same_status("rl_gather_rows", CPU.gather_rows(CPU.ctx, cb, cb + 8, rows, 3, 8, 8),
                GPU.gather_rows(GPU.ctx, gb, gb + 8, rows, 3, 8, 8)); /* out overlaps x */
    same_status("rl_gather_rows", CPU.gather_rows(CPU.ctx, cb, cb + 512, NULL, 3, 8, 8),
                GPU.gather_rows(GPU.ctx, gb, gb + 512, NULL, 3, 8, 8));
    same_status("rl_scatter_add_rows",
                CPU.scatter_add_rows(CPU.ctx, cb, cb + 512, rows, wts, 3, 8, 4),
                GPU.scatter_add_rows(GPU.ctx, gb, gb + 512, rows, wts, 3, 8, 4));
    same_status("rl_scatter_add_rows",
                CPU.scatter_add_rows(CPU.ctx, cb, cb + 512, rows, NULL, 3, 8, 8),
                GPU.scatter_add_rows(GPU.ctx, gb, gb + 512, rows, NULL, 3, 8, 8));
    same_status("rl_scatter_add_rows",
                CPU.scatter_add_rows(CPU.ctx, cb, cb + 16, rows, wts, 3, 8, 8),
                GPU.scatter_add_rows(GPU.ctx, gb, gb + 16, rows, wts, 3, 8, 8)); /* overlap */
    same_status("rl_scatter_add_rows",
                CPU.scatter_add_rows(CPU.ctx, cb, cb + 512, rows, wts, 0, 8, 8),
                GPU.scatter_add_rows(GPU.ctx, gb, gb + 512, rows, wts, 0, 8, 8));
  } else {
    has_v4(CPU.v4 ? &GPU : &CPU, "errors of the ABI 4 ops");
  }
  same_status("rl_rmsnorm", CPU.rmsnorm(CPU.ctx, cb, cb, cb, 0, 1, 8, -1.0f, 0.0f),
              GPU.rmsnorm(GPU.ctx, gb, gb, gb, 0, 1, 8, -1.0f, 0.0f));
  same_status("rl_layernorm", CPU.layernorm(CPU.ctx, cb, cb, cb, NULL, 3, 1, 8, 1e-5f),
              GPU.layernorm(GPU.ctx, gb, gb, gb, NULL, 3, 1, 8, 1e-5f));
  same_status("rl_softcap", CPU.softcap(CPU.ctx, cb, cb, 0.0f, 8),
              GPU.softcap(GPU.ctx, gb, gb, 0.0f, 8));
  same_status("rl_add", CPU.add(CPU.ctx, cb, cb, cb, 0), GPU.add(GPU.ctx, gb, gb, gb, 0));
  same_status("rl_scale", CPU.scale(CPU.ctx, cb, NULL, 1.0f, 4), GPU.scale(GPU.ctx, gb, NULL, 1.0f, 4));
  same_status("rl_argmax", CPU.argmax(CPU.ctx, NULL, cb, 1, 4), GPU.argmax(GPU.ctx, NULL, gb, 1, 4));
  same_status("rl_copy", CPU.copy(CPU.ctx, cb, cb + 512, 0), GPU.copy(GPU.ctx, gb, gb + 512, 0));
  same_status("rl_free", CPU.free(CPU.ctx, cb + 16), GPU.free(GPU.ctx, gb + 16));
  same_status("rl_stats", CPU.stats(CPU.ctx, NULL, 3), GPU.stats(GPU.ctx, NULL, 3));
  {
    const int32_t c = CPU.sync(NULL), g = GPU.sync(NULL);
    const char *msg = last_error(&GPU, NULL);
    check(c == RL_ERR_INVALID && g == RL_ERR_INVALID && strncmp(msg, "rl_sync: ctx", 12) == 0,
          "rl_sync(NULL): cpu %d, cuda %d, global message \"%s\"", c, g, msg);
  }
  check(CPU.alloc(CPU.ctx, 0) == NULL && GPU.alloc(GPU.ctx, 0) == NULL, "rl_alloc(0) is NULL");
  check(GPU.alloc(GPU.ctx, 1ull << 62) == NULL &&
            strstr(last_error(&GPU, GPU.ctx), "out of memory") != NULL,
        "cuda: rl_alloc(2^62) fails: \"%s\"", last_error(&GPU, GPU.ctx));
  /* the context still works after the failed allocation */
  check(GPU.scale(GPU.ctx, gb, gb, 1.0f, 16) == RL_OK && GPU.sync(GPU.ctx) == RL_OK,
        "cuda: ops run after a failed allocation: %s", last_error(&GPU, GPU.ctx));
  CPU.free(CPU.ctx, cb);
  GPU.free(GPU.ctx, gb);
}

static void test_options_and_marks(void) {
  rl_ctx *g = GPU.ctx;
#define KEY(s) ((const uint8_t *)(s))
  check(GPU.get_option(g, KEY("attn_impl")) == 0 && GPU.get_option(g, KEY("pin_memory")) == 1 &&
            GPU.get_option(g, KEY("async_copy")) == 1,
        "cuda: option defaults attn_impl 0, pin_memory 1, async_copy 1");
  check(GPU.get_option(g, KEY("flash_available")) == 1, "cuda: flash_available is 1 (sm_80+)");
  const int64_t mem = GPU.get_option(g, KEY("device_memory"));
  check(mem > (int64_t)1 << 30, "cuda: device_memory %lld", (long long)mem);
  check(GPU.get_option(g, KEY("no_such_key")) == -1, "cuda: unknown key reads -1");
  check(GPU.set_option(g, KEY("no_such_key"), 1) == RL_ERR_UNSUPPORTED &&
            strstr(last_error(&GPU, g), "no_such_key") != NULL,
        "cuda: unknown key is RL_ERR_UNSUPPORTED naming it: \"%s\"", last_error(&GPU, g));
  check(GPU.set_option(g, KEY("attn_impl"), 3) != RL_OK, "cuda: attn_impl 3 is refused");
  check(GPU.set_option(g, KEY("attn_impl"), 2) == RL_OK && GPU.get_option(g, KEY("attn_impl")) == 2 &&
            GPU.set_option(g, KEY("attn_impl"), 0) == RL_OK,
        "cuda: attn_impl set/get");

  /* device_memory_limit: both backends refuse an allocation past it the same way (RL_ERR_OOM,
   * bytes requested and free in the message), report the room left, and allocate within it. */
  for (int which = 0; which < 2; which++) {
    backend *b = which ? &GPU : &CPU;
    const char *name = which ? "cuda" : "cpu";
    uint64_t st[RL_STAT_COUNT];
    b->stats(b->ctx, st, RL_STAT_COUNT);
    const uint64_t live = st[RL_STAT_LIVE_BYTES], limit = live + (1u << 20);
    check(b->set_option(b->ctx, KEY("device_memory_limit"), (int64_t)limit) == RL_OK &&
              b->get_option(b->ctx, KEY("device_memory_limit")) == (int64_t)limit,
          "%s: device_memory_limit set/get", name);
    const int64_t room = b->get_option(b->ctx, KEY("device_memory_free"));
    check(room == 1 << 20, "%s: device_memory_free under the limit is %lld (want %d)", name,
          (long long)room, 1 << 20);
    void *big = b->alloc(b->ctx, (1u << 20) + 64);
    const char *msg = last_error(b, b->ctx);
    check(big == NULL && strstr(msg, "rl_alloc: out of memory allocating 1048640 bytes") &&
              strstr(msg, "1048576 free"),
          "%s: an allocation past device_memory_limit fails naming the bytes: \"%s\"", name, msg);
    void *fits = b->alloc(b->ctx, 1u << 19);
    check(fits != NULL, "%s: an allocation within device_memory_limit succeeds", name);
    if (fits) b->free(b->ctx, fits);
    check(b->set_option(b->ctx, KEY("device_memory_limit"), 0) == RL_OK, "%s: limit off", name);
  }

  enum { N = 4096, K = 4096 };
  float *x = rand_floats(K, -1, 1);
  void *w = rand_tensor(RL_BF16, (int64_t)N * K);
  void *dx = dev_upload(&GPU, x, sizeof(float) * K), *dw = dev_upload(&GPU, w, (uint64_t)N * K * 2);
  void *dout = dev_alloc(&GPU, sizeof(float) * N);
  if (dx && dw && dout) {
    const int64_t m0 = GPU.mark(g);
    for (int i = 0; i < 20; i++) GPU.matmul(g, dout, dx, dw, RL_BF16, NULL, 0, 1, N, K);
    const int64_t m1 = GPU.mark(g);
    const double ms = GPU.elapsed_ms(g, m0, m1);
    check(m0 >= 0 && m1 > m0 && ms > 0.0, "cuda: marks %lld %lld, elapsed %g ms", (long long)m0,
          (long long)m1, ms);
    if (ms > 0.0) /* informative: batch-1 bf16 GEMV bandwidth */
      printf("cuda: bf16 GEMV %dx%d: %.1f us, %.0f GB/s\n", N, K, ms * 1000.0 / 20,
             20.0 * N * K * 2 / (ms * 1e-3) / 1e9);
    check(GPU.elapsed_ms(g, m0, m1 + 100) < 0.0, "cuda: elapsed with an unknown mark is negative");
    check(GPU.marks_reset(g) == RL_OK && GPU.mark(g) >= 0, "cuda: rl_marks_reset");
    GPU.marks_reset(g);
  }
  dev_free(&GPU, dx);
  dev_free(&GPU, dw);
  dev_free(&GPU, dout);
  free(x);
  free(w);
#undef KEY
}

/* ----------------------------------------------------------------------------------------------
 * Loads */

/* Loads from `path` (size `fsize`, contents `data`) on b: the whole file (several staging chunks)
 * and a small slice at an odd offset, waited out of order, then an op (rl_copy) ordered after the
 * load without rl_sync; plus a short read, a missing file and a double wait. */
static void load_round(backend *b, const char *path, const uint8_t *data, uint64_t fsize,
                       const char *label) {
  rl_ctx *ctx = b->ctx;
  uint8_t *big = dev_alloc(b, fsize), *copy = dev_alloc(b, fsize), *small = dev_alloc(b, 1000);
  uint8_t *back = malloc(fsize);
  if (big && copy && small && back) {
    uint64_t s0[RL_STAT_COUNT], s1[RL_STAT_COUNT];
    b->stats(ctx, s0, RL_STAT_COUNT);
    const int64_t t1 = b->load_start(ctx, big, (const uint8_t *)path, 0, fsize);
    const int64_t t2 = b->load_start(ctx, small, (const uint8_t *)path, 12345, 1000);
    check(t1 > 0 && t2 > t1, "%s %s: tickets %lld %lld (%s)", b->name, label, (long long)t1,
          (long long)t2, last_error(b, ctx));
    if (t1 > 0 && t2 > 0) {
      ok(b, b->load_wait(ctx, t2), "rl_load_wait (small)");
      ok(b, b->load_wait(ctx, t1), "rl_load_wait (whole file)");
      ok(b, b->copy(ctx, copy, big, fsize), "rl_copy after rl_load_wait");
      memset(back, 0, fsize);
      if (dev_download(b, back, copy, fsize))
        check(memcmp(back, data, fsize) == 0, "%s %s: whole file (%llu bytes) loaded", b->name,
              label, (unsigned long long)fsize);
      if (dev_download(b, back, small, 1000))
        check(memcmp(back, data + 12345, 1000) == 0, "%s %s: 1000 bytes at offset 12345", b->name,
              label);
      b->stats(ctx, s1, RL_STAT_COUNT);
      check(s1[RL_STAT_H2D_BYTES] - s0[RL_STAT_H2D_BYTES] == fsize + 1000,
            "%s %s: h2d bytes grew by %llu (want the loaded %llu)", b->name,
            label, (unsigned long long)(s1[RL_STAT_H2D_BYTES] - s0[RL_STAT_H2D_BYTES]),
            (unsigned long long)(fsize + 1000));
      const int32_t again = b->load_wait(ctx, t1);
      check(again == RL_ERR_INVALID, "%s %s: waiting twice is RL_ERR_INVALID (got %d)", b->name,
            label, again);
    }
    const int64_t t3 = b->load_start(ctx, small, (const uint8_t *)path, fsize - 10, 1000);
    const int32_t st3 = t3 > 0 ? b->load_wait(ctx, t3) : RL_ERR_INVALID;
    const char *m3 = last_error(b, ctx);
    check(st3 != RL_OK && strstr(m3, path) != NULL, "%s %s: short read fails naming the file: \"%s\"",
          b->name, label, m3);
    const char *missing = "/nonexistent/rabbitllm/layer.bin";
    const int64_t t4 = b->load_start(ctx, small, (const uint8_t *)missing, 0, 10);
    const int32_t st4 = t4 > 0 ? b->load_wait(ctx, t4) : RL_ERR_INVALID;
    const char *m4 = last_error(b, ctx);
    check(st4 != RL_OK && strstr(m4, missing) != NULL,
          "%s %s: a missing file fails naming it: \"%s\"", b->name, label, m4);
    /* the context still works after failed loads; rl_load_ready turns 1, then -1 once waited */
    const int64_t t5 = b->load_start(ctx, small, (const uint8_t *)path, 7, 1000);
    if (b->load_ready && t5 > 0) {
      int32_t ready = 0;
      for (int i = 0; i < 10000 && (ready = b->load_ready(ctx, t5)) == 0; i++) usleep(1000);
      check(ready == 1, "%s %s: rl_load_ready of a finished load is 1 (got %d)", b->name, label,
            ready);
    }
    check(t5 > 0 && b->load_wait(ctx, t5) == RL_OK && dev_download(b, back, small, 1000) &&
              memcmp(back, data + 7, 1000) == 0,
          "%s %s: a load after failed ones: %s", b->name, label, last_error(b, ctx));
    if (b->load_ready)
      check(b->load_ready(ctx, t5) == -1 && b->load_ready(ctx, t5 + 1000) == -1 &&
                b->load_ready(NULL, t5) == -1,
            "%s %s: rl_load_ready of a waited, an unknown ticket or a NULL ctx is -1", b->name,
            label);
  }
  dev_free(b, big);
  dev_free(b, copy);
  dev_free(b, small);
  free(back);
}

/* The temp file that the load, host tier, drop_behind and mapping groups read: more than two 64
 * MiB staging chunks, and not a multiple of anything. Written (and fsync'ed, so its pages are
 * clean and can be dropped from the page cache) on first use; main removes it. */
static const uint64_t FILE_SIZE = (140ull << 20) + 777;
static char file_path[512];
static uint8_t *file_data; /* its contents */

static const char *temp_file(void) {
  if (file_data) return file_path;
  const char *tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(file_path, sizeof file_path, "%s/rabbitllm_compare_XXXXXX", tmpdir);
  int fd = mkstemp(file_path);
  uint8_t *data = malloc(FILE_SIZE);
  if (fd < 0 || !data) {
    check(0, "cannot create a temp file in %s", tmpdir);
    if (fd >= 0) {
      close(fd);
      unlink(file_path);
    }
    free(data);
    return NULL;
  }
  for (uint64_t i = 0; i < FILE_SIZE; i += 4) {
    const uint32_t r = rand_u32();
    memcpy(data + i, &r, FILE_SIZE - i < 4 ? FILE_SIZE - i : 4);
  }
  uint64_t written = 0;
  while (written < FILE_SIZE) {
    const ssize_t n = write(fd, data + written, FILE_SIZE - written);
    if (n <= 0) break;
    written += (uint64_t)n;
  }
  const int synced = fsync(fd) == 0;
  close(fd);
  check(written == FILE_SIZE && synced, "wrote the temp file %s", file_path);
  if (written != FILE_SIZE) {
    unlink(file_path);
    free(data);
    return NULL;
  }
  file_data = data;
  return file_path;
}

static void remove_temp_file(void) {
  if (!file_data) return;
  unlink(file_path);
  free(file_data);
  file_data = NULL;
}

static void test_loads(void) {
  const char *path = temp_file();
  if (!path) return;
  const uint64_t fsize = FILE_SIZE;
  const uint8_t *data = file_data;
  load_round(&CPU, path, data, fsize, "defaults");
  for (int pin = 1; pin >= 0; pin--)
    for (int async = 1; async >= 0; async--) {
      char label[64];
      snprintf(label, sizeof label, "pin_memory=%d async_copy=%d", pin, async);
      if (ok(&GPU, GPU.set_option(GPU.ctx, (const uint8_t *)"pin_memory", pin), "pin_memory") &&
          ok(&GPU, GPU.set_option(GPU.ctx, (const uint8_t *)"async_copy", async), "async_copy"))
        load_round(&GPU, path, data, fsize, label);
    }
  GPU.set_option(GPU.ctx, (const uint8_t *)"pin_memory", 1);
  GPU.set_option(GPU.ctx, (const uint8_t *)"async_copy", 1);
}

/* ----------------------------------------------------------------------------------------------
 * Host tier: rl_host_alloc, loads into host blocks, rl_upload_start */

static uint64_t stat_of(backend *b, rl_ctx *ctx, int which) {
  uint64_t s[RL_STAT_COUNT] = {0};
  b->stats(ctx, s, RL_STAT_COUNT);
  return s[which];
}

/* file -> host block (rl_load_start) -> device (rl_upload_start) -> host (rl_download), with the
 * statistics and the refused calls, on b (with async_copy as set for CUDA). */
static void host_round(backend *b, const char *path, const uint8_t *data, uint64_t fsize,
                       const char *label) {
  rl_ctx *ctx = b->ctx;
  const uint64_t host0 = stat_of(b, ctx, RL_STAT_HOST_BYTES);
  const uint64_t live0 = stat_of(b, ctx, RL_STAT_LIVE_BYTES);
  uint8_t *h = b->host_alloc(ctx, fsize), *h2 = b->host_alloc(ctx, 4096);
  check(h && h2, "%s %s: rl_host_alloc: %s", b->name, label, last_error(b, ctx));
  uint8_t *d = dev_alloc(b, fsize), *copy = dev_alloc(b, fsize), *small = dev_alloc(b, 4096);
  uint8_t *back = malloc(fsize);
  if (h && h2 && d && copy && small && back) {
    check(stat_of(b, ctx, RL_STAT_HOST_BYTES) - host0 == fsize + 4096 &&
              stat_of(b, ctx, RL_STAT_LIVE_BYTES) - live0 == 2 * fsize + 4096,
          "%s %s: host bytes grew by %llu (want %llu), device bytes only by the rl_allocs",
          b->name, label, (unsigned long long)(stat_of(b, ctx, RL_STAT_HOST_BYTES) - host0),
          (unsigned long long)(fsize + 4096));
    /* file -> host block: the bytes are there when the wait returns (and count as a waited load) */
    const uint64_t h2d_load = stat_of(b, ctx, RL_STAT_H2D_BYTES);
    const int64_t t1 = b->load_start(ctx, h, (const uint8_t *)path, 0, fsize);
    check(t1 > 0 && b->load_wait(ctx, t1) == RL_OK && memcmp(h, data, fsize) == 0,
          "%s %s: the whole file loaded into a host block (%s)", b->name, label,
          last_error(b, ctx));
    check(stat_of(b, ctx, RL_STAT_H2D_BYTES) - h2d_load == fsize,
          "%s %s: h2d bytes grew by %llu over the load into a host block (want %llu)", b->name,
          label, (unsigned long long)(stat_of(b, ctx, RL_STAT_H2D_BYTES) - h2d_load),
          (unsigned long long)fsize);
    /* host block -> device: the whole block and a slice at an odd offset, waited out of order */
    const uint64_t h2d0 = stat_of(b, ctx, RL_STAT_H2D_BYTES);
    const int64_t t2 = b->upload_start(ctx, d, h, fsize);
    const int64_t t3 = b->upload_start(ctx, small, h + 12345, 1000);
    check(t2 > t1 && t3 > t2, "%s %s: upload tickets %lld %lld follow the load's %lld (%s)",
          b->name, label, (long long)t2, (long long)t3, (long long)t1, last_error(b, ctx));
    if (t2 > 0 && t3 > 0) {
      ok(b, b->load_wait(ctx, t3), "rl_load_wait (upload of a slice)");
      ok(b, b->load_wait(ctx, t2), "rl_load_wait (upload of the block)");
      ok(b, b->copy(ctx, copy, d, fsize), "rl_copy after rl_load_wait of an upload");
      memset(back, 0, fsize);
      if (dev_download(b, back, copy, fsize))
        check(memcmp(back, data, fsize) == 0, "%s %s: file -> host block -> device round trip",
              b->name, label);
      if (dev_download(b, back, small, 1000))
        check(memcmp(back, data + 12345, 1000) == 0, "%s %s: upload of 1000 bytes at +12345",
              b->name, label);
      const uint64_t grew = stat_of(b, ctx, RL_STAT_H2D_BYTES) - h2d0;
      check(grew == fsize + 1000, "%s %s: h2d bytes grew by %llu over the uploads (want %llu)",
            b->name, label, (unsigned long long)grew, (unsigned long long)(fsize + 1000));
      check(b->load_wait(ctx, t2) == RL_ERR_INVALID, "%s %s: an upload is waited only once",
            b->name, label);
    }
    /* a load into a host block and an upload out of it, neither waited in between: FIFO order */
    const int64_t t4 = b->load_start(ctx, h2, (const uint8_t *)path, 777, 4096);
    const int64_t t5 = b->upload_start(ctx, small, h2, 4096);
    check(t4 > 0 && t5 > t4 && b->load_wait(ctx, t5) == RL_OK && b->load_wait(ctx, t4) == RL_OK &&
              dev_download(b, back, small, 4096) && memcmp(back, data + 777, 4096) == 0,
          "%s %s: an upload issued right after the load into its block sees the file (%s)",
          b->name, label, last_error(b, ctx));
    /* refused calls */
    check(b->upload_start(ctx, d, h + fsize - 10, 1000) == 0 &&
              strncmp(last_error(b, ctx), "rl_upload_start:", 16) == 0,
          "%s %s: rl_upload_start past the end of its host block is refused: \"%s\"", b->name,
          label, last_error(b, ctx));
    check(b->upload_start(ctx, d, copy, 1000) == 0 &&
              strncmp(last_error(b, ctx), "rl_upload_start:", 16) == 0,
          "%s %s: rl_upload_start from device memory is refused: \"%s\"", b->name, label,
          last_error(b, ctx));
    check(b->upload_start(ctx, d, h, 0) == 0, "%s %s: rl_upload_start of 0 bytes is refused",
          b->name, label);
    check(b->host_free(ctx, d) == RL_ERR_INVALID && b->host_free(ctx, h + 64) == RL_ERR_INVALID &&
              b->host_free(ctx, NULL) == RL_ERR_INVALID,
          "%s %s: rl_host_free of device memory, a view or NULL is RL_ERR_INVALID", b->name,
          label);
    check(b->host_alloc(ctx, 0) == NULL, "%s %s: rl_host_alloc(0) is NULL", b->name, label);
    if (b == &GPU) /* the CPU need not know where a load's dst lies */
      check(b->load_start(ctx, h2, (const uint8_t *)path, 0, 8192) == 0 &&
                strstr(last_error(b, ctx), "rl_host_alloc block") != NULL,
            "cuda %s: a load past the end of its host block is refused: \"%s\"", label,
            last_error(b, ctx));
    /* frees */
    check(b->host_free(ctx, h) == RL_OK && b->host_free(ctx, h) == RL_ERR_INVALID &&
              stat_of(b, ctx, RL_STAT_HOST_BYTES) - host0 == 4096,
          "%s %s: rl_host_free, then again refused; host bytes back to %llu over the start",
          b->name, label, (unsigned long long)(stat_of(b, ctx, RL_STAT_HOST_BYTES) - host0));
    h = NULL;
    check(b->host_free(ctx, h2) == RL_OK && stat_of(b, ctx, RL_STAT_HOST_BYTES) == host0,
          "%s %s: every host block freed", b->name, label);
    h2 = NULL;
    check(b->sync(ctx) == RL_OK, "%s %s: rl_sync after the host tier", b->name, label);
  }
  if (h) b->host_free(ctx, h);
  if (h2) b->host_free(ctx, h2);
  dev_free(b, d);
  dev_free(b, copy);
  dev_free(b, small);
  free(back);
}

static void test_host_tier(void) {
  const char *path = temp_file();
  if (!path) return;
  if (has_v3(&CPU, "host tier")) host_round(&CPU, path, file_data, FILE_SIZE, "host tier");
  if (!has_v3(&GPU, "host tier")) return;
  for (int async = 1; async >= 0; async--) {
    char label[64];
    snprintf(label, sizeof label, "host tier async_copy=%d", async);
    if (ok(&GPU, GPU.set_option(GPU.ctx, (const uint8_t *)"async_copy", async), "async_copy"))
      host_round(&GPU, path, file_data, FILE_SIZE, label);
  }
  GPU.set_option(GPU.ctx, (const uint8_t *)"async_copy", 1);
  /* rl_destroy frees the host blocks still live */
  for (backend *b = &CPU; b; b = b == &CPU ? &GPU : NULL) {
    if (!b->v3) continue;
    rl_ctx *c = b->create(0, 0);
    void *p = c ? b->host_alloc(c, 1 << 20) : NULL;
    check(p != NULL && stat_of(b, c, RL_STAT_HOST_BYTES) == 1 << 20,
          "%s: a host block on a second context (%s)", b->name, last_error(b, c));
    if (c) b->destroy(c);
  }
}

/* ----------------------------------------------------------------------------------------------
 * drop_behind */

/* Pages of [0, bytes) of the file at path in the page cache (-1 if mincore cannot tell). */
static int64_t cached_pages(const char *path, uint64_t bytes, int64_t *total) {
  const long page = sysconf(_SC_PAGESIZE);
  *total = (int64_t)((bytes + (uint64_t)page - 1) / (uint64_t)page);
  const int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  void *m = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (m == MAP_FAILED) return -1;
  unsigned char *vec = malloc((size_t)*total);
  int64_t n = -1;
  if (vec && mincore(m, bytes, vec) == 0) {
    n = 0;
    for (int64_t i = 0; i < *total; i++) n += vec[i] & 1;
  }
  free(vec);
  munmap(m, bytes);
  return n;
}

/* Loads the whole file into `dst` with drop_behind = drop, waits, and returns the cached pages. */
static int64_t load_and_count(backend *b, void *dst, const char *path, int drop, int64_t *total) {
  rl_ctx *ctx = b->ctx;
  *total = 0;
  if (!ok(b, b->set_option(ctx, (const uint8_t *)"drop_behind", drop), "drop_behind")) return -1;
  const int64_t t = b->load_start(ctx, dst, (const uint8_t *)path, 0, FILE_SIZE);
  if (!(t > 0 && ok(b, b->load_wait(ctx, t), "rl_load_wait"))) return -1;
  return cached_pages(path, FILE_SIZE, total);
}

static void test_drop_behind(void) {
  const char *path = temp_file();
  if (!path) return;
  struct statfs fs;
  /* tmpfs and ramfs pages are the files themselves: they cannot be dropped */
  const int droppable = statfs(path, &fs) == 0 && fs.f_type != 0x01021994 && fs.f_type != 0x858458f6;
  for (backend *b = &CPU; b; b = b == &CPU ? &GPU : NULL) {
    rl_ctx *ctx = b->ctx;
    const uint8_t *key = (const uint8_t *)"drop_behind";
    check(b->get_option(ctx, key) == 0, "%s: drop_behind is 0 by default (got %lld)", b->name,
          (long long)b->get_option(ctx, key));
    check(b->set_option(ctx, key, 2) != RL_OK, "%s: drop_behind 2 is refused", b->name);
    check(b->set_option(ctx, key, 1) == RL_OK && b->get_option(ctx, key) == 1,
          "%s: drop_behind set/get (%s)", b->name, last_error(b, ctx));
    uint8_t *d = dev_alloc(b, FILE_SIZE), *small = dev_alloc(b, 1000);
    uint8_t *back = malloc(FILE_SIZE);
    if (d && small && back) {
      /* a plain load leaves the file cached, a drop_behind load does not */
      int64_t total = 0;
      const int64_t kept = load_and_count(b, d, path, 0, &total);
      const int64_t left = load_and_count(b, d, path, 1, &total);
      if (dev_download(b, back, d, FILE_SIZE))
        check(memcmp(back, file_data, FILE_SIZE) == 0,
              "%s: a load with drop_behind=1 delivers the file", b->name);
      const int64_t t = b->load_start(ctx, small, (const uint8_t *)path, 4097, 1000);
      check(t > 0 && b->load_wait(ctx, t) == RL_OK && dev_download(b, back, small, 1000) &&
                memcmp(back, file_data + 4097, 1000) == 0,
            "%s: a drop_behind load of 1000 bytes at an odd offset (%s)", b->name,
            last_error(b, ctx));
      if (droppable && kept >= 0 && kept * 10 >= total * 9)
        check(left >= 0 && left * 10 <= total,
              "%s: after a drop_behind load %lld of %lld pages of the file are cached (after a "
              "plain load %lld)",
              b->name, (long long)left, (long long)total, (long long)kept);
      else
        printf("%s: drop_behind page cache check not run (%s; cached after a plain load: %lld "
               "of %lld pages)\n",
               b->name, droppable ? "the page cache is not observable" : "a tmpfs/ramfs file",
               (long long)kept, (long long)total);
      /* into a host block as well */
      if (b->v3) {
        uint8_t *h = b->host_alloc(ctx, FILE_SIZE);
        const int64_t th = h ? b->load_start(ctx, h, (const uint8_t *)path, 0, FILE_SIZE) : 0;
        check(th > 0 && b->load_wait(ctx, th) == RL_OK && memcmp(h, file_data, FILE_SIZE) == 0,
              "%s: a drop_behind load into a host block delivers the file (%s)", b->name,
              last_error(b, ctx));
        if (h) b->host_free(ctx, h);
      }
    }
    dev_free(b, d);
    dev_free(b, small);
    free(back);
    check(b->set_option(ctx, key, 0) == RL_OK, "%s: drop_behind back to 0", b->name);
  }
}

/* ----------------------------------------------------------------------------------------------
 * Mapped files: rl_map works on the CPU (map_files 1), CUDA refuses it (map_files 0) */

static void test_mapped_files(void) {
  const uint8_t *key = (const uint8_t *)"map_files";
  check(CPU.get_option(CPU.ctx, key) == 1, "cpu: map_files is 1 (got %lld)",
        (long long)CPU.get_option(CPU.ctx, key));
  check(GPU.get_option(GPU.ctx, key) == 0, "cuda: map_files is 0 (got %lld)",
        (long long)GPU.get_option(GPU.ctx, key));
  const uint8_t *free_key = (const uint8_t *)"device_memory_free";
  const int64_t total = GPU.get_option(GPU.ctx, (const uint8_t *)"device_memory");
  const int64_t avail = GPU.get_option(GPU.ctx, free_key);
  check(avail > 0 && avail <= total, "cuda: device_memory_free %lld of %lld", (long long)avail,
        (long long)total);
  check(CPU.get_option(CPU.ctx, free_key) == -1, "cpu: device_memory_free is -1 (got %lld)",
        (long long)CPU.get_option(CPU.ctx, free_key));
  const char *path = temp_file();
  if (!path) return;
  /* CUDA: every mapping entry is RL_ERR_UNSUPPORTED, saying so */
  if (has_v3(&GPU, "mapped files")) {
    rl_ctx *g = GPU.ctx;
    void *p = GPU.map(g, (const uint8_t *)path, 0, 4096);
    const char *msg = last_error(&GPU, g);
    check(p == NULL && strncmp(msg, "rl_map:", 7) == 0 && strstr(msg, "unsupported") != NULL,
          "cuda: rl_map is NULL, unsupported: \"%s\"", msg);
    void *dummy = GPU.alloc(g, 4096);
    check(dummy && GPU.unmap(g, dummy) == RL_ERR_UNSUPPORTED &&
              GPU.prefetch_start(g, dummy, 4096) == 0 &&
              strstr(last_error(&GPU, g), "unsupported") != NULL &&
              GPU.evict(g, dummy, 4096) == RL_ERR_UNSUPPORTED,
          "cuda: rl_unmap, rl_prefetch_start, rl_evict are unsupported: \"%s\"",
          last_error(&GPU, g));
    if (dummy) GPU.free(g, dummy);
    check(stat_of(&GPU, g, RL_STAT_MAPPED_BYTES) == 0, "cuda: mapped bytes are 0");
  }
  /* CPU: a mapping at an odd offset reads the file in place */
  if (has_v3(&CPU, "mapped files")) {
    rl_ctx *c = CPU.ctx;
    const uint64_t off = 3 * 4096 + 100, n = (70ull << 20) + 3;
    const uint64_t mapped0 = stat_of(&CPU, c, RL_STAT_MAPPED_BYTES);
    uint8_t *p = CPU.map(c, (const uint8_t *)path, off, n);
    uint8_t *back = malloc(n), *copy = dev_alloc(&CPU, n);
    check(p != NULL, "cpu: rl_map of %llu bytes at %llu: %s", (unsigned long long)n,
          (unsigned long long)off, last_error(&CPU, c));
    if (p && back && copy) {
      check(stat_of(&CPU, c, RL_STAT_MAPPED_BYTES) - mapped0 == n, "cpu: mapped bytes grew by %llu",
            (unsigned long long)(stat_of(&CPU, c, RL_STAT_MAPPED_BYTES) - mapped0));
      const int64_t t = CPU.prefetch_start(c, p, n);
      check(t > 0 && CPU.load_wait(c, t) == RL_OK, "cpu: rl_prefetch_start + wait: %s",
            last_error(&CPU, c));
      check(CPU.copy(c, copy, p, n) == RL_OK && dev_download(&CPU, back, copy, n) &&
                memcmp(back, file_data + off, n) == 0,
            "cpu: an op (rl_copy) reads the mapping in place");
      check(CPU.evict(c, p, n) == RL_OK && dev_download(&CPU, back, p, n) &&
                memcmp(back, file_data + off, n) == 0,
            "cpu: after rl_evict the mapping reads the file again: %s", last_error(&CPU, c));
      check(CPU.unmap(c, p + 64) == RL_ERR_INVALID, "cpu: rl_unmap of a view is refused");
      check(CPU.unmap(c, p) == RL_OK && stat_of(&CPU, c, RL_STAT_MAPPED_BYTES) == mapped0 &&
                CPU.unmap(c, p) == RL_ERR_INVALID,
            "cpu: rl_unmap, mapped bytes back, a second rl_unmap refused");
    } else if (p) {
      CPU.unmap(c, p);
    }
    dev_free(&CPU, copy);
    free(back);
  }
}

/* ----------------------------------------------------------------------------------------------
 * Stream order: a load or an upload into a weight buffer that queued kernels still read
 *
 * The engine reuses a streaming slot for the next layer as soon as the kernels reading the old
 * layer were issued. So: queue many matmuls reading W, then load (file -> W) or upload (host
 * block -> W) different bytes without any wait in between; every queued matmul must see the old
 * W, and a matmul issued after rl_load_wait the new one. On a GPU the copy would otherwise
 * overwrite W while the queued kernels still read it; the CUDA emulation runs the transfer
 * stream ahead of the compute stream whenever the recorded events allow it, so there a missing
 * wait changes the results every time (cuda/emu/test.sh also checks that a build without the
 * ordering fails here). Sizes: on a GPU each matmul is a slow fp32 GEMM over 64 MiB of W, so the
 * compute queue is tens of milliseconds deep when the copy is issued. */

static void stream_order_round(int upload, int emulated) {
  const int M = emulated ? 9 : 64, N = emulated ? 64 : 4096, K = emulated ? 256 : 4096;
  const int n_mm = emulated ? 3 : 64;
  const uint64_t wbytes = sizeof(float) * (uint64_t)N * K, obytes = sizeof(float) * (uint64_t)M * N;
  const char *what = upload ? "upload (host block -> W)" : "load (file -> W)";
  float *x = rand_floats((int64_t)M * K, -1.0f, 1.0f);
  float *w_old = rand_floats((int64_t)N * K, -1.0f, 1.0f), *w_new = rand_floats((int64_t)N * K, 2.0f, 3.0f);
  float *ref_old = malloc(obytes), *ref_new = malloc(obytes), *got = malloc(obytes);
  char path[512] = "";
  float *dx = NULL, *dw = NULL, *douts = NULL, *host = NULL;
  if (!run_matmul(&CPU, ref_old, x, w_old, RL_F32, NULL, 0, M, N, K, 0) ||
      !run_matmul(&CPU, ref_new, x, w_new, RL_F32, NULL, 0, M, N, K, 0))
    goto done;
  if (!upload) { /* the new W as a file */
    const char *tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(path, sizeof path, "%s/rabbitllm_order_XXXXXX", tmpdir);
    const int fd = mkstemp(path);
    const int written = fd >= 0 && write(fd, w_new, wbytes) == (ssize_t)wbytes;
    if (fd >= 0) close(fd);
    check(written, "stream order: wrote %s", path);
    if (!written) goto done;
  } else {
    host = GPU.host_alloc(GPU.ctx, wbytes);
    check(host != NULL, "stream order: rl_host_alloc(%llu): %s", (unsigned long long)wbytes,
          last_error(&GPU, GPU.ctx));
    if (!host) goto done;
    memcpy(host, w_new, wbytes);
  }
  dx = dev_upload(&GPU, x, sizeof(float) * (uint64_t)M * K);
  dw = dev_upload(&GPU, w_old, wbytes);
  douts = dev_alloc(&GPU, obytes * (uint64_t)(n_mm + 1));
  if (!dx || !dw || !douts) goto done;
  int issued = 1;
  for (int i = 0; i < n_mm && issued; i++)
    issued = ok(&GPU, GPU.matmul(GPU.ctx, douts + (size_t)i * M * N, dx, dw, RL_F32, NULL, 0, M, N, K),
                "rl_matmul (queued before the copy)");
  const int64_t t = !issued ? 0
                    : upload ? GPU.upload_start(GPU.ctx, dw, host, wbytes)
                             : GPU.load_start(GPU.ctx, dw, (const uint8_t *)path, 0, wbytes);
  check(t > 0, "stream order: %s started: %s", what, last_error(&GPU, GPU.ctx));
  if (t <= 0 || !ok(&GPU, GPU.load_wait(GPU.ctx, t), "rl_load_wait") ||
      !ok(&GPU, GPU.matmul(GPU.ctx, douts + (size_t)n_mm * M * N, dx, dw, RL_F32, NULL, 0, M, N, K),
          "rl_matmul (after the wait)"))
    goto done;
  for (int i = 0; i <= n_mm; i++) {
    if (!dev_download(&GPU, got, douts + (size_t)i * M * N, obytes)) break;
    if (i < n_mm)
      compare(ref_old, got, (int64_t)M * N, TOL_F32,
              "stream order: matmul %d of %d queued before the %s sees the old W", i + 1, n_mm, what);
    else
      compare(ref_new, got, (int64_t)M * N, TOL_F32, "stream order: a matmul after the %s's wait "
              "sees the new W", what);
  }
done:
  dev_free(&GPU, dx);
  dev_free(&GPU, dw);
  dev_free(&GPU, douts);
  if (host) GPU.host_free(GPU.ctx, host);
  if (path[0]) unlink(path);
  free(x);
  free(w_old);
  free(w_new);
  free(ref_old);
  free(ref_new);
  free(got);
}

static void test_stream_order(void) {
  if (!has_v3(&GPU, "stream order")) return;
  char info[512] = "";
  GPU.backend_info((uint8_t *)info, sizeof info);
  const int emulated = strstr(info, "emulation") != NULL;
  stream_order_round(0, emulated);
  stream_order_round(1, emulated);
}

/* ----------------------------------------------------------------------------------------------
 * Main */

int main(int argc, char **argv) {
  const char *cpu_path = argc > 1 ? argv[1] : "build/librabbitllm_cpu.so";
  const char *cuda_path = argc > 2 ? argv[2] : "build/librabbitllm_cuda.so";
  const int cpu_ok = open_backend(&CPU, cpu_path), gpu_ok = open_backend(&GPU, cuda_path);
  if (cpu_ok && gpu_ok) {
    CPU.ctx = CPU.create(0, 0);
    GPU.ctx = GPU.create(0, 0);
    check(CPU.ctx != NULL, "cpu: rl_create: %s", last_error(&CPU, NULL));
    check(GPU.ctx != NULL, "cuda: rl_create: %s", last_error(&GPU, NULL));
    if (CPU.ctx && GPU.ctx) {
      static const struct {
        const char *name;
        void (*run)(void);
      } tests[] = {{"library", test_library},   {"matmul", test_matmul},
                   {"embedding", test_embedding}, {"quant", test_quant},
                   {"norms", test_norms},
                   {"rope", test_rope},           {"act_mul", test_act_mul},
                   {"act", test_act},             {"rows", test_rows},
                   {"elementwise", test_elementwise}, {"argmax", test_argmax},
                   {"attention", test_attention}, {"alibi", test_attention_alibi},
                   {"bmm", test_matmul_nd},
                   {"copy_nd", test_copy_nd}, {"copies and stats", test_copies_and_stats},
                   {"errors", test_errors},       {"options and marks", test_options_and_marks},
                   {"loads", test_loads},         {"host tier", test_host_tier},
                   {"drop behind", test_drop_behind}, {"mapped files", test_mapped_files},
                   {"stream order", test_stream_order}};
      const char *only = getenv("COMPARE_ONLY"); /* e.g. COMPARE_ONLY=attention */
      for (size_t i = 0; i < sizeof tests / sizeof *tests; i++) {
        if (only && !strstr(only, tests[i].name)) continue;
        const int failed_before = n_failed;
        tests[i].run();
        printf("-- %s: %d failed\n", tests[i].name, n_failed - failed_before);
        fflush(stdout);
      }
      uint64_t s[RL_STAT_COUNT];
      if (GPU.stats(GPU.ctx, s, RL_STAT_COUNT) == RL_OK)
        check(s[RL_STAT_LIVE_ALLOCS] == 0, "cuda: every test buffer was freed (%llu live)",
              (unsigned long long)s[RL_STAT_LIVE_ALLOCS]);
    }
    if (CPU.ctx) CPU.destroy(CPU.ctx);
    if (GPU.ctx) GPU.destroy(GPU.ctx);
  } else {
    check(0, "tests skipped: a library could not be loaded completely");
  }
  remove_temp_file();
  printf("%d passed, %d failed\n", n_passed, n_failed);
  return n_failed ? 1 : 0;
}
