/*
 * Tests for the CPU backend: every op of ffi/rabbitllm.h against a plain double-precision
 * reference written here, on odd shapes and every weight dtype; exact dtype conversions; the
 * error paths; memory statistics. Build and run: sh cpu/test.sh
 *
 * Prints one line per failing check, then "N passed, N failed"; exits 1 on any failure.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "rabbitllm.h"
#include "rl_shared.h" /* rl_row_bytes */

#define TOL 1e-5 /* max abs error / max abs reference value, for fp32 results */

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
}

/* Relative error max|got - ref| / max|ref| within tol, and got finite wherever ref is. */
static void check_close(const float *got, const double *ref, int64_t n, double tol,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void check_close(const float *got, const double *ref, int64_t n, double tol,
                        const char *fmt, ...) {
  double max_err = 0.0, max_ref = 0.0;
  int64_t non_finite = 0;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(got[i]) && isfinite(ref[i])) non_finite++;
    if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
    if (fabs(got[i] - ref[i]) > max_err) max_err = fabs(got[i] - ref[i]);
  }
  const double rel = max_err / (max_ref > 0.0 ? max_ref : 1.0);
  char what[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  check(non_finite == 0 && rel <= tol, "%s: rel err %.3g (tol %.1g), %lld non-finite", what, rel,
        tol, (long long)non_finite);
}

/* got is ref exactly: same value and sign, or both NaN. */
static int same_value(float got, double ref) {
  if (isnan(ref)) return isnan(got);
  return got == ref && !signbit(got) == !signbit(ref);
}

/* ctx's last message (the global one for NULL) starts with "op: " and names `arg`. */
static int message_names(rl_ctx *ctx, const char *op, const char *arg, char msg[512]) {
  rl_last_error(ctx, (uint8_t *)msg, 512);
  const size_t op_len = strlen(op);
  return strncmp(msg, op, op_len) == 0 && msg[op_len] == ':' && strstr(msg, arg) != NULL;
}

/* The call failed with `status`, and the message names the op and `arg`. */
static void check_error(rl_ctx *ctx, int32_t got, int32_t status, const char *op, const char *arg) {
  char msg[512];
  const int named = message_names(ctx, op, arg, msg);
  check(got == status && named, "%s with bad %s: status %d (want %d), message \"%s\"", op, arg,
        got, status, msg);
}

/* An allocation that must fail with a message naming `arg`. */
static void check_alloc_fails(rl_ctx *ctx, uint64_t bytes, const char *arg) {
  char msg[512];
  void *p = rl_alloc(ctx, bytes);
  check(p == NULL && message_names(ctx, "rl_alloc", arg, msg),
        "rl_alloc(%llu) gives %p, message \"%s\"", (unsigned long long)bytes, p, msg);
}

/* ----------------------------------------------------------------------------------------------
 * Data */

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
  float *p = malloc(sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) p[i] = rand_float(lo, hi);
  return p;
}

static double *doubles(int64_t n) { return calloc((size_t)n, sizeof(double)); }

/* Reference decoders, written from the formats' definitions (not from bit tricks). */
static double ref_f16(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  double v = exp == 31 ? (man ? NAN : INFINITY)
             : exp == 0 ? ldexp(man, -24)
                        : ldexp(1024 + man, exp - 25);
  return sign ? -v : v;
}

static double ref_bf16(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 7) & 0xff, man = h & 0x7f;
  double v = exp == 255 ? (man ? NAN : INFINITY)
             : exp == 0 ? ldexp(man, -133)
                        : ldexp(128 + man, exp - 134);
  return sign ? -v : v;
}

static const char *dtype_name[] = {"f32", "f16", "bf16"};
static int64_t dtype_size(int dt) { return dt == RL_F32 ? 4 : 2; }

/* A random host tensor in dtype dt with values in (-1, 1), and its exact values. f16 values
 * include subnormals. */
typedef struct {
  void *data;
  double *val;
} tensor;

static tensor rand_tensor(int dt, int64_t n) {
  tensor t = {malloc((size_t)(n * dtype_size(dt))), doubles(n)};
  for (int64_t i = 0; i < n; i++) {
    const float f = rand_float(-1.0f, 1.0f);
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint16_t h = dt == RL_BF16 ? (uint16_t)(u >> 16) /* truncated */
                                     : (uint16_t)(rand_u32() % 0x3c00 | (u >> 16 & 0x8000));
    if (dt == RL_F32) ((float *)t.data)[i] = f;
    else ((uint16_t *)t.data)[i] = h;
    t.val[i] = dt == RL_F32 ? f : dt == RL_F16 ? ref_f16(h) : ref_bf16(h);
  }
  return t;
}

static void free_tensor(tensor t) {
  free(t.data);
  free(t.val);
}

/* ----------------------------------------------------------------------------------------------
 * Device helpers */

static void *to_device(rl_ctx *ctx, const void *host, int64_t bytes) {
  void *d = rl_alloc(ctx, (uint64_t)bytes);
  if (!d || rl_upload(ctx, d, host, (uint64_t)bytes) != RL_OK) {
    printf("FATAL: rl_alloc/rl_upload of %lld bytes failed\n", (long long)bytes);
    exit(1);
  }
  return d;
}

static float *device_floats(rl_ctx *ctx, int64_t n) {
  float *d = rl_alloc(ctx, sizeof(float) * (uint64_t)n);
  if (!d) {
    printf("FATAL: rl_alloc of %lld floats failed\n", (long long)n);
    exit(1);
  }
  return d;
}

/* Downloads n floats and frees the device buffer. */
static float *download_free(rl_ctx *ctx, float *d, int64_t n) {
  float *h = malloc(sizeof(float) * (size_t)n);
  rl_download(ctx, h, d, sizeof(float) * (uint64_t)n);
  rl_free(ctx, d);
  return h;
}

static uint64_t stat_of(rl_ctx *ctx, int which) {
  uint64_t s[RL_STAT_COUNT];
  rl_stats(ctx, s, RL_STAT_COUNT);
  return s[which];
}

/* ----------------------------------------------------------------------------------------------
 * Library, context, memory */

static void test_library(void) {
  check(rl_abi_version() == RL_ABI_VERSION && RL_ABI_VERSION == 7, "rl_abi_version %u",
        rl_abi_version()); /* 5: tensor descriptors (rl_matmul_nd, rl_copy_nd), rl_attention's
                            * v_stride and v_head_dim; 6: ggml block formats (rl_matmul weights,
                            * rl_embedding tables); 7: rl_attention_alibi */
  char info[256], small[4];
  const int64_t len = rl_backend_info((uint8_t *)info, sizeof info);
  check(len > 3 && (size_t)len == strlen(info) && strncmp(info, "cpu ", 4) == 0,
        "rl_backend_info \"%s\" (%lld)", info, (long long)len);
  check(rl_backend_info((uint8_t *)small, sizeof small) == len && strcmp(small, "cpu") == 0,
        "rl_backend_info truncates to \"%s\"", small);
  check(rl_backend_info(NULL, 0) == len, "rl_backend_info(NULL, 0) returns the length");
  char msg[512];
  check_error(NULL, rl_matmul(NULL, NULL, NULL, NULL, 0, NULL, 0, 1, 1, 1), RL_ERR_INVALID,
              "rl_matmul", "ctx");
  check(rl_last_error(NULL, (uint8_t *)msg, sizeof msg) == (int64_t)strlen(msg),
        "rl_last_error returns the message length");
  printf("backend: %s\n", info);
}

static void test_memory(void) {
  rl_ctx *ctx = rl_create(1, 0);
  uint64_t s[RL_STAT_COUNT + 1];
  memset(s, 0xff, sizeof s);
  check(rl_stats(ctx, s, RL_STAT_COUNT + 1) == RL_OK && s[RL_STAT_COUNT] == UINT64_MAX &&
            s[RL_STAT_LIVE_BYTES] == 0 && s[RL_STAT_ALLOCS] == 0,
        "rl_stats of a new context copies RL_STAT_COUNT zeros");

  uint8_t *a = rl_alloc(ctx, 100), *b = rl_alloc(ctx, 200);
  check(a && b && (uintptr_t)a % 64 == 0 && (uintptr_t)b % 64 == 0, "rl_alloc is 64-byte aligned");
  rl_stats(ctx, s, RL_STAT_COUNT);
  check(s[RL_STAT_LIVE_BYTES] == 300 && s[RL_STAT_PEAK_BYTES] == 300 && s[RL_STAT_ALLOCS] == 2 &&
            s[RL_STAT_LIVE_ALLOCS] == 2 && s[RL_STAT_FREES] == 0,
        "stats after alloc 100 + 200: live %llu peak %llu allocs %llu",
        (unsigned long long)s[0], (unsigned long long)s[1], (unsigned long long)s[2]);
  check(rl_free(ctx, a) == RL_OK, "rl_free of a live block");
  rl_stats(ctx, s, RL_STAT_COUNT);
  check(s[RL_STAT_LIVE_BYTES] == 200 && s[RL_STAT_PEAK_BYTES] == 300 && s[RL_STAT_FREES] == 1 &&
            s[RL_STAT_LIVE_ALLOCS] == 1,
        "stats after freeing 100: live %llu peak %llu frees %llu", (unsigned long long)s[0],
        (unsigned long long)s[1], (unsigned long long)s[3]);
  check_error(ctx, rl_free(ctx, a), RL_ERR_INVALID, "rl_free", "already freed");
  check_error(ctx, rl_free(ctx, rl_view(b, 64)), RL_ERR_INVALID, "rl_free", "view");
  check_error(ctx, rl_free(ctx, NULL), RL_ERR_INVALID, "rl_free", "p");
  check(stat_of(ctx, RL_STAT_LIVE_BYTES) == 200 && stat_of(ctx, RL_STAT_FREES) == 1,
        "failed rl_free changes no statistic");
  check(rl_view(b, 64) == b + 64, "rl_view is base + offset");

  check_alloc_fails(ctx, 0, "bytes");
  check_alloc_fails(ctx, 1ull << 62, "out of memory");
  check(stat_of(ctx, RL_STAT_ALLOCS) == 2, "failed rl_alloc is not counted");

  /* copies: upload and download are counted, device-to-device is not */
  uint8_t host[200], back[200];
  for (int i = 0; i < 200; i++) host[i] = (uint8_t)(i * 7);
  uint8_t *c = rl_alloc(ctx, 200);
  check(rl_upload(ctx, b, host, 200) == RL_OK && rl_copy(ctx, c, b, 200) == RL_OK &&
            rl_download(ctx, back, c, 150) == RL_OK && memcmp(host, back, 150) == 0,
        "upload, copy, download round trip");
  check(stat_of(ctx, RL_STAT_H2D_BYTES) == 200 && stat_of(ctx, RL_STAT_D2H_BYTES) == 150,
        "copy statistics h2d %llu d2h %llu", (unsigned long long)stat_of(ctx, RL_STAT_H2D_BYTES),
        (unsigned long long)stat_of(ctx, RL_STAT_D2H_BYTES));
  check_error(ctx, rl_upload(ctx, b, host, 0), RL_ERR_INVALID, "rl_upload", "bytes");
  check_error(ctx, rl_download(ctx, NULL, b, 8), RL_ERR_INVALID, "rl_download", "dst");
  check_error(ctx, rl_copy(ctx, c, NULL, 8), RL_ERR_INVALID, "rl_copy", "src");
  check_error(ctx, rl_stats(ctx, s, 0), RL_ERR_INVALID, "rl_stats", "n");
  check_error(ctx, rl_stats(ctx, NULL, 3), RL_ERR_INVALID, "rl_stats", "out");
  check(rl_sync(ctx) == RL_OK, "rl_sync");
  check_error(NULL, rl_sync(NULL), RL_ERR_INVALID, "rl_sync", "ctx");

  /* many blocks, freed in a scrambled order: the table and the statistics stay consistent */
  enum { N_BLOCKS = 2000 };
  static void *blocks[N_BLOCKS];
  uint64_t live = stat_of(ctx, RL_STAT_LIVE_BYTES), ok = 1;
  for (int i = 0; i < N_BLOCKS; i++) {
    blocks[i] = rl_alloc(ctx, (uint64_t)(1 + i % 97));
    live += (uint64_t)(1 + i % 97);
  }
  for (int i = 0; i < N_BLOCKS; i += 2) {
    const int j = (i * 7919) % N_BLOCKS & ~1; /* every even index once: 7919 is odd and prime */
    ok &= rl_free(ctx, blocks[j]) == RL_OK;
    live -= (uint64_t)(1 + j % 97);
  }
  check(ok && stat_of(ctx, RL_STAT_LIVE_BYTES) == live &&
            stat_of(ctx, RL_STAT_LIVE_ALLOCS) == 2 + N_BLOCKS / 2,
        "2000 allocs, 1000 scrambled frees: live %llu (want %llu)",
        (unsigned long long)stat_of(ctx, RL_STAT_LIVE_BYTES), (unsigned long long)live);
  ok = 1;
  for (int i = 1; i < N_BLOCKS; i += 2) ok &= rl_free(ctx, blocks[i]) == RL_OK;
  check(ok && stat_of(ctx, RL_STAT_LIVE_BYTES) == 400 &&
            stat_of(ctx, RL_STAT_ALLOCS) == stat_of(ctx, RL_STAT_FREES) + 2,
        "every remaining block frees");

  /* device_memory_limit: allocations past it fail as out of memory (the engine's injected
   * device-allocation fault); device_memory_free reports the room left under it. */
  check(rl_get_option(ctx, (const uint8_t *)"device_memory_free") == -1,
        "no limit: device_memory_free is -1 (the host budget is the engine's)");
  check(rl_set_option(ctx, (const uint8_t *)"device_memory_limit", 1000) == RL_OK &&
            rl_get_option(ctx, (const uint8_t *)"device_memory_free") == 600,
        "limit 1000 with 400 live leaves 600 free");
  check_alloc_fails(ctx, 601, "601 bytes of device memory (600 free, 400 live");
  void *fits = rl_alloc(ctx, 600);
  check(fits != NULL && rl_get_option(ctx, (const uint8_t *)"device_memory_free") == 0,
        "an allocation of exactly the room left succeeds");
  check_alloc_fails(ctx, 1, "out of memory");
  rl_free(ctx, fits);
  check_error(ctx, rl_set_option(ctx, (const uint8_t *)"device_memory_limit", -1), RL_ERR_INVALID,
              "rl_set_option", "out of range");
  check(rl_set_option(ctx, (const uint8_t *)"device_memory_limit", 0) == RL_OK &&
            rl_get_option(ctx, (const uint8_t *)"device_memory_free") == -1,
        "limit 0 removes it");
  /* Big blocks are their own 2 MiB-aligned mappings (huge pages where the kernel gives them):
   * every byte usable, counted by the bytes asked, freed, and released by rl_destroy when live. */
  const uint64_t big[] = {2u << 20, (37u << 20) / 10, (21u << 20) / 10, (16u << 20) + 1};
  uint8_t *bp[4];
  live = stat_of(ctx, RL_STAT_LIVE_BYTES);
  ok = 1;
  for (int i = 0; i < 4; i++) {
    bp[i] = rl_alloc(ctx, big[i]);
    ok &= bp[i] != NULL && (uintptr_t)bp[i] % (2u << 20) == 0;
    if (!bp[i]) continue;
    for (uint64_t k = 0; k < big[i]; k++) bp[i][k] = (uint8_t)(k * 31 + (uint64_t)i);
  }
  for (int i = 0; i < 4 && ok; i++)
    for (uint64_t k = 0; k < big[i]; k++) ok &= bp[i][k] == (uint8_t)(k * 31 + (uint64_t)i);
  check(ok && stat_of(ctx, RL_STAT_LIVE_BYTES) == live + big[0] + big[1] + big[2] + big[3],
        "big blocks: 2 MiB aligned, every byte kept, counted as asked");
  ok = 1;
  for (int i = 0; i < 3; i++) ok &= rl_free(ctx, bp[i]) == RL_OK;
  check(ok && stat_of(ctx, RL_STAT_LIVE_BYTES) == live + big[3], "big blocks free");
  uint8_t *hb = rl_host_alloc(ctx, big[1]);
  check(hb && (uintptr_t)hb % (2u << 20) == 0 && (memset(hb, 7, big[1]), hb[big[1] - 1] == 7) &&
            rl_host_free(ctx, hb) == RL_OK,
        "a big host-tier block: aligned, usable, freed");
  rl_destroy(ctx); /* b, c and a big block are still live: rl_destroy releases them */
  rl_destroy(NULL);
}

/* ----------------------------------------------------------------------------------------------
 * Exact dtype conversion: every 16-bit pattern through rl_embedding (scalar path) and rl_matmul
 * with one-hot x (vector path and its scalar tail) */

static void test_conversions(rl_ctx *ctx) {
  enum { VOCAB = 65536 / 16, DIM = 16 };
  uint16_t *bits = malloc(sizeof(uint16_t) * 65536);
  for (int i = 0; i < 65536; i++) bits[i] = (uint16_t)i;
  int32_t *ids = malloc(sizeof(int32_t) * VOCAB);
  for (int i = 0; i < VOCAB; i++) ids[i] = i;

  for (int dt = RL_F16; dt <= RL_BF16; dt++) {
    double (*ref)(uint16_t) = dt == RL_F16 ? ref_f16 : ref_bf16;
    void *table = to_device(ctx, bits, 65536 * 2);
    float *out = device_floats(ctx, 65536);
    check(rl_embedding(ctx, out, table, dt, ids, VOCAB, DIM, VOCAB) == RL_OK, "rl_embedding %s",
          dtype_name[dt]);
    float *got = download_free(ctx, out, 65536);
    int bad = -1;
    for (int i = 0; i < 65536 && bad < 0; i++)
      if (!same_value(got[i], ref((uint16_t)i))) bad = i;
    check(bad < 0, "%s 0x%04x converts to %a in rl_embedding, want %a", dtype_name[dt], bad,
          bad < 0 ? 0.0 : (double)got[bad], bad < 0 ? 0.0 : ref((uint16_t)bad));
    free(got);
    rl_free(ctx, table);

    /* x = identity (K x K) so out[m, n] = W[n, m]: W rows hold every finite pattern */
    static const int ks[] = {24, 19}; /* vector-only and vector + scalar tail */
    for (int ki = 0; ki < 2; ki++) {
      const int K = ks[ki], N = 65536 / K + 1;
      uint16_t *w = calloc((size_t)N * K, 2);
      float *x = calloc((size_t)K * K, sizeof(float));
      for (int i = 0; i < 65536; i++) w[i] = isfinite(ref((uint16_t)i)) ? (uint16_t)i : 0;
      for (int m = 0; m < K; m++) x[m * K + m] = 1.0f;
      void *dw = to_device(ctx, w, (int64_t)N * K * 2);
      float *dx = to_device(ctx, x, (int64_t)K * K * 4), *dout = device_floats(ctx, (int64_t)K * N);
      check(rl_matmul(ctx, dout, dx, dw, dt, NULL, 0, K, N, K) == RL_OK, "rl_matmul one-hot");
      got = download_free(ctx, dout, (int64_t)K * N);
      bad = -1;
      for (int n = 0; n < N && bad < 0; n++)
        for (int m = 0; m < K; m++)
          if (got[(int64_t)m * N + n] != ref(w[n * K + m])) bad = n * K + m;
      check(bad < 0, "%s 0x%04x converts to %a in rl_matmul K=%d", dtype_name[dt],
            bad < 0 ? 0 : w[bad], bad < 0 ? 0.0 : (double)got[(bad % K) * N + bad / K], K);
      free(got);
      free(w);
      free(x);
      rl_free(ctx, dw);
      rl_free(ctx, dx);
    }
  }
  free(bits);
  free(ids);
}

/* ----------------------------------------------------------------------------------------------
 * Ops against double-precision references */

static void test_matmul_case(rl_ctx *ctx, int M, int N, int K, int dt, int bias_dt) {
  float *x = rand_floats((int64_t)M * K, -1.0f, 1.0f);
  tensor w = rand_tensor(dt, (int64_t)N * K);
  tensor b = rand_tensor(bias_dt < 0 ? RL_F32 : bias_dt, N);
  double *ref = doubles((int64_t)M * N);
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double s = bias_dt < 0 ? 0.0 : b.val[n];
      for (int k = 0; k < K; k++) s += (double)x[m * K + k] * w.val[(int64_t)n * K + k];
      ref[m * N + n] = s;
    }
  float *dx = to_device(ctx, x, (int64_t)M * K * 4), *dout = device_floats(ctx, (int64_t)M * N);
  void *dw = to_device(ctx, w.data, (int64_t)N * K * dtype_size(dt));
  void *db = bias_dt < 0 ? NULL : to_device(ctx, b.data, N * dtype_size(bias_dt));
  const int32_t st = rl_matmul(ctx, dout, dx, dw, dt, db, bias_dt < 0 ? 0 : bias_dt, M, N, K);
  float *got = download_free(ctx, dout, (int64_t)M * N);
  check_close(got, ref, (int64_t)M * N, st == RL_OK ? TOL : -1.0,
              "rl_matmul M=%d N=%d K=%d w %s bias %s", M, N, K, dtype_name[dt],
              bias_dt < 0 ? "none" : dtype_name[bias_dt]);
  rl_free(ctx, dx);
  rl_free(ctx, dw);
  if (db) rl_free(ctx, db);
  free(x);
  free(got);
  free(ref);
  free_tensor(w);
  free_tensor(b);
}

static void test_matmul(rl_ctx *ctx) {
  static const int ms[] = {1, 3, 5, 8, 17};
  static const int nk[][2] = {{13, 67}, {1, 1}, {8, 16}, {37, 130}, {70, 200}};
  for (int dt = RL_F32; dt <= RL_BF16; dt++)
    for (int i = 0; i < 5; i++)
      for (int j = 0; j < 5; j++)
        for (int bias = -1; bias <= 1; bias++) /* none, same dtype, the next dtype */
          test_matmul_case(ctx, ms[i], nk[j][0], nk[j][1], dt, bias < 0 ? -1 : (dt + bias) % 3);
  /* enough work for every thread, and blocks with tails */
  test_matmul_case(ctx, 1, 1003, 515, RL_F32, -1);
  test_matmul_case(ctx, 1, 1003, 515, RL_BF16, RL_F16);
  test_matmul_case(ctx, 70, 101, 300, RL_F16, RL_F32);
  test_matmul_case(ctx, 130, 33, 64, RL_F32, RL_F32);
}

/* ----------------------------------------------------------------------------------------------
 * ABI 5: ops over strided 4-D views (tensor descriptors) */

/* A descriptor: dtype, offset, shape[4], stride[4]. */
static void make_desc(int64_t d[RL_DESC_LEN], int dt, int64_t offset, const int64_t shape[4],
                      const int64_t stride[4]) {
  d[RL_DESC_DTYPE] = dt;
  d[RL_DESC_OFFSET] = offset;
  for (int i = 0; i < 4; i++) {
    d[RL_DESC_SHAPE + i] = shape[i];
    d[RL_DESC_STRIDE + i] = stride[i];
  }
}

/* Element offset of index (i0, i1, i2, i3) of descriptor d. */
static int64_t desc_at(const int64_t d[RL_DESC_LEN], int64_t i0, int64_t i1, int64_t i2,
                       int64_t i3) {
  return d[RL_DESC_OFFSET] + i0 * d[RL_DESC_STRIDE] + i1 * d[RL_DESC_STRIDE + 1] +
         i2 * d[RL_DESC_STRIDE + 2] + i3 * d[RL_DESC_STRIDE + 3];
}

#define SENTINEL 7.25f /* out elements outside the view keep it */

/* rl_matmul_nd on host buffers: x (x_n floats), w (w_n elements of dtype dt, with its exact
 * values), out (out_n floats, filled with SENTINEL). Checks the view against a naive double
 * reference and that every out element outside the view is untouched. */
static void check_matmul_nd(rl_ctx *ctx, const char *what, const float *x, int64_t x_n,
                            const int64_t xd[RL_DESC_LEN], tensor w, int dt, int64_t w_n,
                            const int64_t wd[RL_DESC_LEN], int64_t out_n,
                            const int64_t od[RL_DESC_LEN]) {
  const int64_t A = od[RL_DESC_SHAPE], B = od[RL_DESC_SHAPE + 1], M = od[RL_DESC_SHAPE + 2],
                N = od[RL_DESC_SHAPE + 3], K = xd[RL_DESC_SHAPE + 3];
  const int64_t n_view = A * B * M * N;
  double *ref = doubles(n_view);
  for (int64_t a = 0; a < A; a++)
    for (int64_t b = 0; b < B; b++)
      for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
          double acc = 0.0;
          for (int64_t k = 0; k < K; k++)
            acc += (double)x[desc_at(xd, a, b, m, k)] * w.val[desc_at(wd, a, b, k, n)];
          ref[((a * B + b) * M + m) * N + n] = acc;
        }
  float *host_out = malloc(sizeof(float) * (size_t)out_n);
  for (int64_t i = 0; i < out_n; i++) host_out[i] = SENTINEL;
  float *dx = to_device(ctx, x, x_n * 4), *dout = to_device(ctx, host_out, out_n * 4);
  void *dw = to_device(ctx, w.data, w_n * dtype_size(dt));
  const int32_t st = rl_matmul_nd(ctx, dout, od, dx, xd, dw, wd);
  float *got = download_free(ctx, dout, out_n);
  float *view = malloc(sizeof(float) * (size_t)n_view);
  uint8_t *in_view = calloc((size_t)out_n, 1);
  for (int64_t a = 0; a < A; a++)
    for (int64_t b = 0; b < B; b++)
      for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
          const int64_t at = desc_at(od, a, b, m, n);
          view[((a * B + b) * M + m) * N + n] = got[at];
          in_view[at] = 1;
        }
  check_close(view, ref, n_view, st == RL_OK ? TOL : -1.0, "rl_matmul_nd %s w %s (status %d)",
              what, dtype_name[dt], st);
  int64_t touched = 0;
  for (int64_t i = 0; i < out_n; i++) touched += !in_view[i] && got[i] != SENTINEL;
  check(touched == 0, "rl_matmul_nd %s w %s: %lld elements outside out's view changed", what,
        dtype_name[dt], (long long)touched);
  rl_free(ctx, dx);
  rl_free(ctx, dw);
  free(host_out);
  free(got);
  free(view);
  free(in_view);
  free(ref);
}

static void test_matmul_nd(rl_ctx *ctx) {
  int64_t xd[RL_DESC_LEN], wd[RL_DESC_LEN], od[RL_DESC_LEN];
  for (int dt = RL_F32; dt <= RL_BF16; dt++) {
    /* a plain [K, N] w (n-stride 1), several shapes: vector tails, one row, enough work for
     * every thread with a row's columns split among tasks */
    static const int64_t mnk[][3] = {{5, 70, 37}, {1, 1, 9}, {3, 16, 1}, {1, 1000, 64},
                                     {40, 130, 33}};
    for (int i = 0; i < 5; i++) {
      const int64_t M = mnk[i][0], N = mnk[i][1], K = mnk[i][2];
      float *x = rand_floats(M * K, -1.0f, 1.0f);
      tensor w = rand_tensor(dt, K * N);
      make_desc(xd, RL_F32, 0, (int64_t[]){1, 1, M, K}, (int64_t[]){0, 0, K, 1});
      make_desc(wd, dt, 0, (int64_t[]){1, 1, K, N}, (int64_t[]){0, 0, N, 1});
      make_desc(od, RL_F32, 0, (int64_t[]){1, 1, M, N}, (int64_t[]){0, 0, N, 1});
      char what[96];
      snprintf(what, sizeof what, "plain [K,N] w M=%lld N=%lld K=%lld", (long long)M,
               (long long)N, (long long)K);
      check_matmul_nd(ctx, what, x, M * K, xd, w, dt, K * N, wd, M * N, od);
      /* the same w as nn.Linear rows: W[N, K] viewed with strides (.., 1, K) */
      make_desc(wd, dt, 0, (int64_t[]){1, 1, K, N}, (int64_t[]){0, 0, 1, K});
      snprintf(what, sizeof what, "nn.Linear view M=%lld N=%lld K=%lld", (long long)M,
               (long long)N, (long long)K);
      check_matmul_nd(ctx, what, x, M * K, xd, w, dt, K * N, wd, M * N, od);
      free(x);
      free_tensor(w);
    }
    {
      /* x transposed (k-stride M: copied to a row) against nn.Linear rows; out transposed */
      const int64_t M = 6, N = 19, K = 45;
      float *x = rand_floats(K * M, -1.0f, 1.0f);
      tensor w = rand_tensor(dt, N * K);
      make_desc(xd, RL_F32, 0, (int64_t[]){1, 1, M, K}, (int64_t[]){0, 0, 1, M});
      make_desc(wd, dt, 0, (int64_t[]){1, 1, K, N}, (int64_t[]){0, 0, 1, K});
      make_desc(od, RL_F32, 0, (int64_t[]){1, 1, M, N}, (int64_t[]){0, 0, 1, M});
      check_matmul_nd(ctx, "x and out transposed, nn.Linear w", x, K * M, xd, w, dt, N * K, wd,
                      M * N, od);
      /* the same with a plain w and out */
      make_desc(wd, dt, 0, (int64_t[]){1, 1, K, N}, (int64_t[]){0, 0, N, 1});
      make_desc(od, RL_F32, 0, (int64_t[]){1, 1, M, N}, (int64_t[]){0, 0, N, 1});
      check_matmul_nd(ctx, "x transposed, plain w", x, K * M, xd, w, dt, N * K, wd, M * N, od);
      free(x);
      free_tensor(w);
    }
    {
      /* broadcast batch: [2, 3] batches; w shared (strides 0, 0), then x shared across a
       * (stride 0) with a w per batch */
      const int64_t A = 2, B = 3, M = 4, N = 21, K = 17;
      float *x = rand_floats(A * B * M * K, -1.0f, 1.0f);
      tensor w = rand_tensor(dt, A * B * K * N);
      make_desc(xd, RL_F32, 0, (int64_t[]){A, B, M, K}, (int64_t[]){B * M * K, M * K, K, 1});
      make_desc(wd, dt, 0, (int64_t[]){A, B, K, N}, (int64_t[]){0, 0, N, 1});
      make_desc(od, RL_F32, 0, (int64_t[]){A, B, M, N}, (int64_t[]){B * M * N, M * N, N, 1});
      check_matmul_nd(ctx, "w broadcast over [2,3] batches", x, A * B * M * K, xd, w, dt,
                      A * B * K * N, wd, A * B * M * N, od);
      make_desc(xd, RL_F32, 0, (int64_t[]){A, B, M, K}, (int64_t[]){0, M * K, K, 1});
      make_desc(wd, dt, 0, (int64_t[]){A, B, K, N}, (int64_t[]){B * N * K, N * K, 1, K});
      check_matmul_nd(ctx, "x broadcast over a, nn.Linear w per batch", x, A * B * M * K, xd, w,
                      dt, A * B * K * N, wd, A * B * M * N, od);
      free(x);
      free_tensor(w);
    }
    {
      /* MLA absorption, per-head views with offsets. q is [T, H*qk], qk = nope + rope; its
       * nope part per head is the view [1, H, T, nope], strides (0, qk, H*qk, 1). kv_b_proj is
       * W[H*(nope+vd), L] (nn.Linear): head h's rows h*(nope+vd) + i, the first nope for keys,
       * the next vd for values.
       *  q_lat[h, t, l] = sum_i q_nope[h, t, i] * W[h*(nope+vd) + i, l]  (w view [nope, L]:
       *                   strides ((nope+vd)*L, L, 1), plain layout), written into a [T, H*L]
       *                   buffer at an offset;
       *  o[h, t, j] = sum_l q_lat[h, t, l] * W[h*(nope+vd) + nope + j, l]  (w view [L, vd]:
       *                   strides ((nope+vd)*L, 1, L), offset nope*L, nn.Linear layout). */
      const int64_t T = 5, H = 3, nope = 8, rope = 4, qk = nope + rope, vd = 6, L = 20;
      const int64_t pad = 3;
      float *q = rand_floats(T * H * qk, -1.0f, 1.0f);
      tensor w = rand_tensor(dt, H * (nope + vd) * L);
      make_desc(xd, RL_F32, 0, (int64_t[]){1, H, T, nope}, (int64_t[]){0, qk, H * qk, 1});
      make_desc(wd, dt, 0, (int64_t[]){1, H, nope, L}, (int64_t[]){0, (nope + vd) * L, L, 1});
      make_desc(od, RL_F32, pad, (int64_t[]){1, H, T, L}, (int64_t[]){0, L, H * L, 1});
      check_matmul_nd(ctx, "per-head q_nope x W_UK (offsets)", q, T * H * qk, xd, w, dt,
                      H * (nope + vd) * L, wd, pad + T * H * L + pad, od);
      float *lat = rand_floats(pad + T * H * L, -1.0f, 1.0f);
      make_desc(xd, RL_F32, pad, (int64_t[]){1, H, T, L}, (int64_t[]){0, L, H * L, 1});
      make_desc(wd, dt, nope * L, (int64_t[]){1, H, L, vd}, (int64_t[]){0, (nope + vd) * L, 1, L});
      make_desc(od, RL_F32, 1, (int64_t[]){1, H, T, vd}, (int64_t[]){0, vd, H * vd, 1});
      check_matmul_nd(ctx, "per-head latent x W_UV (offsets)", lat, pad + T * H * L, xd, w, dt,
                      H * (nope + vd) * L, wd, 1 + T * H * vd, od);
      free(q);
      free(lat);
      free_tensor(w);
    }
    {
      /* neither w stride 1 (every 2nd row, every 3rd column of a [2K, 3N] matrix); out with
       * column stride 2 */
      const int64_t M = 3, N = 11, K = 13;
      float *x = rand_floats(M * K, -1.0f, 1.0f);
      tensor w = rand_tensor(dt, 2 * K * 3 * N);
      make_desc(xd, RL_F32, 0, (int64_t[]){1, 1, M, K}, (int64_t[]){0, 0, K, 1});
      make_desc(wd, dt, 1, (int64_t[]){1, 1, K, N}, (int64_t[]){0, 0, 2 * 3 * N, 3});
      make_desc(od, RL_F32, 0, (int64_t[]){1, 1, M, N}, (int64_t[]){0, 0, 2 * N, 2});
      check_matmul_nd(ctx, "generic strides", x, M * K, xd, w, dt, 2 * K * 3 * N, wd, 2 * M * N,
                      od);
      free(x);
      free_tensor(w);
    }
  }
}

/* rl_copy_nd of host src (src_n elements of dtype dt) into dst (dst_n elements, bytes 0xA5):
 * the view's elements are src's bit for bit, the rest of dst is untouched. */
static void check_copy_nd(rl_ctx *ctx, const char *what, int dt, const void *src, int64_t src_n,
                          const int64_t sd[RL_DESC_LEN], int64_t dst_n,
                          const int64_t dd[RL_DESC_LEN]) {
  const int64_t es = dtype_size(dt);
  uint8_t *host = malloc((size_t)(dst_n * es));
  memset(host, 0xA5, (size_t)(dst_n * es));
  void *dsrc = to_device(ctx, src, src_n * es), *ddst = to_device(ctx, host, dst_n * es);
  const int32_t st = rl_copy_nd(ctx, ddst, dd, dsrc, sd);
  uint8_t *got = malloc((size_t)(dst_n * es)), *in_view = calloc((size_t)dst_n, 1);
  rl_download(ctx, got, ddst, (uint64_t)(dst_n * es));
  int64_t wrong = 0, touched = 0;
  const int64_t *sh = dd + RL_DESC_SHAPE;
  for (int64_t a = 0; a < sh[0]; a++)
    for (int64_t b = 0; b < sh[1]; b++)
      for (int64_t c = 0; c < sh[2]; c++)
        for (int64_t d = 0; d < sh[3]; d++) {
          const int64_t o = desc_at(dd, a, b, c, d), i = desc_at(sd, a, b, c, d);
          wrong += memcmp(got + o * es, (const uint8_t *)src + i * es, (size_t)es) != 0;
          in_view[o] = 1;
        }
  for (int64_t i = 0; i < dst_n; i++)
    if (!in_view[i]) touched += memcmp(got + i * es, host + i * es, (size_t)es) != 0;
  check(st == RL_OK && wrong == 0 && touched == 0,
        "rl_copy_nd %s %s: status %d, %lld elements wrong, %lld outside the view changed", what,
        dtype_name[dt], st, (long long)wrong, (long long)touched);
  rl_free(ctx, dsrc);
  rl_free(ctx, ddst);
  free(host);
  free(got);
  free(in_view);
}

static void test_copy_nd(rl_ctx *ctx) {
  int64_t sd[RL_DESC_LEN], dd[RL_DESC_LEN];
  for (int dt = RL_F32; dt <= RL_BF16; dt++) {
    tensor src = rand_tensor(dt, 600 * 700);
    {
      /* de-interleave rope pairs: rows [T*H, qk], rope part (from nope on) interleaved
       * (x0 y0 x1 y1 ...) -> [T*H, 2, half] halves: src strides (qk, 1, 2), dst (2*half, half, 1) */
      const int64_t TH = 10, nope = 6, half = 5, qk = nope + 2 * half;
      make_desc(sd, dt, nope, (int64_t[]){1, TH, 2, half}, (int64_t[]){0, qk, 1, 2});
      make_desc(dd, dt, 0, (int64_t[]){1, TH, 2, half}, (int64_t[]){0, 2 * half, half, 1});
      check_copy_nd(ctx, "de-interleave rope pairs", dt, src.data, TH * qk, sd, TH * 2 * half,
                    dd);
    }
    {
      /* a column range of a [R, C] matrix into a column range of a [R, C2] one (memcpy rows),
       * small and big enough for every thread */
      static const int64_t rc[][2] = {{7, 30}, {600, 700}};
      for (int i = 0; i < 2; i++) {
        const int64_t R = rc[i][0], C = rc[i][1], c0 = 3, w = C - 9, C2 = C + 5;
        make_desc(sd, dt, c0, (int64_t[]){1, 1, R, w}, (int64_t[]){0, 0, C, 1});
        make_desc(dd, dt, 2, (int64_t[]){1, 1, R, w}, (int64_t[]){0, 0, C2, 1});
        check_copy_nd(ctx, R > 100 ? "column range (big)" : "column range", dt, src.data, R * C,
                      sd, R * C2, dd);
      }
    }
    {
      /* a transpose of [R, C] with 4-D batch dims, and a broadcast source (stride 0) */
      const int64_t R = 9, C = 13;
      make_desc(sd, dt, 0, (int64_t[]){2, 1, C, R}, (int64_t[]){R * C, 0, 1, C});
      make_desc(dd, dt, 0, (int64_t[]){2, 1, C, R}, (int64_t[]){C * R, 0, R, 1});
      check_copy_nd(ctx, "transpose", dt, src.data, 2 * R * C, sd, 2 * C * R, dd);
      make_desc(sd, dt, 4, (int64_t[]){3, 2, 1, C}, (int64_t[]){0, C, 0, 1});
      make_desc(dd, dt, 0, (int64_t[]){3, 2, 1, C}, (int64_t[]){2 * C, C, 0, 1});
      check_copy_nd(ctx, "broadcast src", dt, src.data, 4 + 2 * C, sd, 6 * C, dd);
    }
    free_tensor(src);
  }
}

static void test_rmsnorm(rl_ctx *ctx) {
  static const int shapes[][2] = {{1, 67}, {3, 67}, {5, 576}, {64, 600}};
  for (int dt = RL_F32; dt <= RL_BF16; dt++)
    for (int si = 0; si < 4; si++)
      for (int variant = 0; variant < 4; variant++) { /* bit 0: Gemma offset, bit 1: in place */
        const int rows = shapes[si][0], dim = shapes[si][1];
        const float eps = 1e-6f, offset = variant & 1 ? 1.0f : 0.0f;
        float *x = rand_floats((int64_t)rows * dim, -3.0f, 3.0f);
        tensor w = rand_tensor(dt, dim);
        double *ref = doubles((int64_t)rows * dim);
        for (int r = 0; r < rows; r++) {
          double ss = 0.0;
          for (int c = 0; c < dim; c++) ss += (double)x[r * dim + c] * x[r * dim + c];
          const double inv = 1.0 / sqrt(ss / dim + eps);
          for (int c = 0; c < dim; c++)
            ref[r * dim + c] = x[r * dim + c] * inv * (w.val[c] + offset);
        }
        float *dx = to_device(ctx, x, (int64_t)rows * dim * 4);
        float *dout = variant & 2 ? dx : device_floats(ctx, (int64_t)rows * dim);
        void *dw = to_device(ctx, w.data, dim * dtype_size(dt));
        const int32_t st = rl_rmsnorm(ctx, dout, dx, dw, dt, rows, dim, eps, offset);
        float *got = download_free(ctx, dout, (int64_t)rows * dim);
        check_close(got, ref, (int64_t)rows * dim, st == RL_OK ? TOL : -1.0,
                    "rl_rmsnorm rows=%d dim=%d w %s offset %g%s", rows, dim, dtype_name[dt],
                    (double)offset, variant & 2 ? " in place" : "");
        if (!(variant & 2)) rl_free(ctx, dx);
        rl_free(ctx, dw);
        free(x);
        free(got);
        free(ref);
        free_tensor(w);
      }
}

static void test_rope(rl_ctx *ctx) {
  /* n_tokens, n_heads, head_dim, rot_dim, row_stride */
  static const int cases[][5] = {{3, 2, 8, 8, 16},   {1, 4, 16, 16, 64}, {4, 3, 16, 8, 50},
                                 {5, 2, 64, 64, 128}, {2, 9, 64, 32, 600}, {3, 1, 8, 2, 8}};
  static const int32_t positions[] = {0, 5, 4097, 31, 1};
  for (int ci = 0; ci < 6; ci++)
    for (int scaled = 0; scaled < 2; scaled++) {
      const int T = cases[ci][0], H = cases[ci][1], D = cases[ci][2], R = cases[ci][3];
      const int stride = cases[ci][4], half = R / 2;
      const float mscale = scaled ? 1.25f : 1.0f;
      float inv_freq[32];
      for (int i = 0; i < half; i++) inv_freq[i] = (float)pow(10000.0, -2.0 * i / R);
      float *x = rand_floats((int64_t)T * stride, -2.0f, 2.0f);
      double *ref = doubles((int64_t)T * stride);
      for (int i = 0; i < T * stride; i++) ref[i] = x[i];
      for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++)
          for (int i = 0; i < half; i++) {
            const float angle = (float)positions[t] * inv_freq[i]; /* fp32, as specified */
            const double c = cos(angle) * mscale, s = sin(angle) * mscale;
            const int64_t a = (int64_t)t * stride + h * D + i, b = a + half;
            ref[a] = x[a] * c - x[b] * s;
            ref[b] = x[b] * c + x[a] * s;
          }
      float *dx = to_device(ctx, x, (int64_t)T * stride * 4);
      const int32_t st = rl_rope(ctx, dx, T, stride, H, D, R, positions, inv_freq, mscale);
      float *got = download_free(ctx, dx, (int64_t)T * stride);
      check_close(got, ref, (int64_t)T * stride, st == RL_OK ? TOL : -1.0,
                  "rl_rope tokens=%d heads=%d head_dim=%d rot_dim=%d stride=%d mscale=%g", T, H,
                  D, R, stride, (double)mscale);
      int untouched = 1; /* dims past rot_dim and the row padding are bit-identical */
      for (int t = 0; t < T; t++)
        for (int c = 0; c < stride; c++)
          if ((c >= H * D || c % D >= R) && memcmp(&got[t * stride + c], &x[t * stride + c], 4))
            untouched = 0;
      check(untouched, "rl_rope rot_dim=%d stride=%d leaves other elements alone", R, stride);
      free(x);
      free(got);
      free(ref);
    }
}

typedef struct {
  int head_dim, n_heads, n_kv_heads, n_q, q_start, window;
  float softcap;
  int mask; /* 0: no kv_valid, 1: kv_valid with holes, 2: kv_valid hides query 0's only key */
  int v_head_dim; /* 0: head_dim, v in its own buffer with k's stride (as before ABI 5) */
  int mla;        /* 1: v = k, v_stride = k_stride (an MLA latent cache: the value is the first
                   * v_head_dim floats of each key row); else v in its own buffer */
  int alibi;      /* ABI 7: rl_attention_alibi with 1: the standard slopes of n_heads
                   * (test_slopes), 2: random slopes in [-0.25, 1.5) (negative ones favour
                   * distant keys) */
} attn_case;

/* ALiBi's slopes for n heads (Press et al.; Baichuan's _get_interleave): for the power of two
 * m <= n, 2^(-8k/m) for k = 1..m, then 2^(-4(2k-1)/m) for k = 1..n-m (the odd ones of 2m). */
static void test_slopes(float *out, int n) {
  int m = 1;
  while (m * 2 <= n) m *= 2;
  for (int k = 1; k <= n; k++)
    out[k - 1] = k <= m ? (float)exp2(-8.0 * k / m) : (float)exp2(-4.0 * (2 * (k - m) - 1) / m);
}

static void test_attention_case(rl_ctx *ctx, attn_case c) {
  const int D = c.head_dim, H = c.n_heads, G = c.n_kv_heads;
  const int Dv = c.v_head_dim ? c.v_head_dim : D;
  const int kv_len = c.q_start + c.n_q + 2; /* two later cache rows the queries must not see */
  const int q_stride = H * D + 3, k_stride = G * D + 5;
  /* v: k's stride when Dv == D (the pre-ABI 5 layout), else its own */
  const int v_stride = c.mla ? k_stride : Dv == D ? k_stride : G * Dv + 7;
  const float scale = 1.0f / sqrtf((float)D);
  float *q = rand_floats((int64_t)c.n_q * q_stride, -3.0f, 3.0f);
  float *k = rand_floats((int64_t)kv_len * k_stride, -1.0f, 1.0f);
  float *v = c.mla ? k : rand_floats((int64_t)kv_len * v_stride, -1.0f, 1.0f);
  uint8_t *valid = malloc((size_t)kv_len);
  for (int j = 0; j < kv_len; j++) valid[j] = c.mask == 1 ? j % 3 != 1 : c.mask != 2 || j != 0;
  const uint8_t *kv_valid = c.mask ? valid : NULL;
  float *slopes = NULL;
  if (c.alibi) {
    slopes = malloc(sizeof(float) * (size_t)H);
    if (c.alibi == 1) test_slopes(slopes, H);
    else
      for (int h = 0; h < H; h++) slopes[h] = rand_float(-0.25f, 1.5f);
  }

  const int64_t n_out = (int64_t)c.n_q * H * Dv;
  double *ref = doubles(n_out), *p = doubles(kv_len);
  for (int t = 0; t < c.n_q; t++)
    for (int h = 0; h < H; h++) {
      const int pos = c.q_start + t, g = h / (H / G);
      double max = -INFINITY, sum = 0.0;
      for (int j = 0; j < kv_len; j++) {
        p[j] = NAN;
        if (j > pos || (c.window > 0 && pos - j >= c.window) || (kv_valid && !kv_valid[j]))
          continue;
        double s = 0.0;
        for (int d = 0; d < D; d++)
          s += (double)q[t * q_stride + h * D + d] * k[(int64_t)j * k_stride + g * D + d];
        s *= scale;
        if (c.softcap > 0) s = c.softcap * tanh(s / c.softcap);
        if (slopes) s += (double)slopes[h] * (j - pos); /* ALiBi, relative form */
        p[j] = s;
        if (s > max) max = s;
      }
      for (int j = 0; j < kv_len; j++)
        if (!isnan(p[j])) sum += p[j] = exp(p[j] - max);
      for (int d = 0; d < Dv; d++) {
        double o = 0.0;
        for (int j = 0; j < kv_len; j++)
          if (!isnan(p[j])) o += p[j] / sum * v[(int64_t)j * v_stride + g * Dv + d];
        ref[((int64_t)t * H + h) * Dv + d] = o;
      }
    }

  float *dq = to_device(ctx, q, (int64_t)c.n_q * q_stride * 4);
  float *dk = to_device(ctx, k, (int64_t)kv_len * k_stride * 4);
  float *dv = c.mla ? dk : to_device(ctx, v, (int64_t)kv_len * v_stride * 4);
  float *dout = device_floats(ctx, n_out);
  const int32_t st =
      c.alibi ? rl_attention_alibi(ctx, dout, dq, q_stride, dk, k_stride, dv, v_stride, c.n_q,
                                   c.q_start, kv_len, H, G, D, Dv, scale, c.window, c.softcap,
                                   kv_valid, slopes)
              : rl_attention(ctx, dout, dq, q_stride, dk, k_stride, dv, v_stride, c.n_q,
                             c.q_start, kv_len, H, G, D, Dv, scale, c.window, c.softcap,
                             kv_valid);
  float *got = download_free(ctx, dout, n_out);
  check_close(got, ref, n_out, st == RL_OK ? TOL : -1.0,
              "%s head_dim=%d v_head_dim=%d%s heads=%d/%d n_q=%d q_start=%d window=%d "
              "softcap=%g mask=%d alibi=%d attn_impl=%lld",
              c.alibi ? "rl_attention_alibi" : "rl_attention", D, Dv, c.mla ? " (v = k)" : "", H,
              G, c.n_q, c.q_start, c.window, (double)c.softcap, c.mask, c.alibi,
              (long long)rl_get_option(ctx, (const uint8_t *)"attn_impl"));
  if (c.mask == 2 && c.q_start == 0) { /* query 0 sees only key 0, which is masked */
    int zeros = 1;
    for (int i = 0; i < H * Dv; i++) zeros &= got[i] == 0.0f;
    check(zeros, "rl_attention: a query that sees no key yields zeros");
  }
  rl_free(ctx, dq);
  rl_free(ctx, dk);
  if (!c.mla) rl_free(ctx, dv);
  free(q);
  free(k);
  if (!c.mla) free(v);
  free(got);
  free(ref);
  free(p);
  free(valid);
  free(slopes);
}

static void test_attention(rl_ctx *ctx) {
  static const int dims[] = {8, 16, 64};
  static const int gqa[] = {1, 2, 4};
  static const int qs[][2] = {{1, 9}, {5, 0}, {4, 6}}; /* n_q, q_start */
  static const int windows[] = {0, 3, 1};
  for (int di = 0; di < 3; di++)
    for (int gi = 0; gi < 3; gi++)
      for (int qi = 0; qi < 3; qi++)
        for (int wi = 0; wi < 3; wi++)
          for (int cap = 0; cap < 2; cap++)
            for (int mask = 0; mask < 3; mask++)
              test_attention_case(ctx, (attn_case){dims[di], 2 * gqa[gi], 2, qs[qi][0], qs[qi][1],
                                                   windows[wi], cap ? 5.0f : 0.0f, mask, 0, 0,
                                                   0});
  /* one long prefill with many (query, head) pairs across threads */
  test_attention_case(ctx, (attn_case){64, 9, 3, 40, 20, 0, 0.0f, 1, 0, 0, 0});
}

/* Run after the older tests, so that their random inputs stay what they were. */
static void test_attention_v(rl_ctx *ctx) {
  /* ABI 5: v_head_dim != head_dim, and v read from k's rows (MLA latent attention). Under every
   * attn_impl (the CPU has one implementation; the option must not change results), with few
   * (query, head) rows per kv head (decode: keys split among tasks) and many (prefill: row
   * tiles). */
  for (int impl = 0; impl <= 2; impl += 2) {
    check(rl_set_option(ctx, (const uint8_t *)"attn_impl", impl) == RL_OK, "attn_impl %d", impl);
    static const attn_case vd[] = {
        /* head_dim, heads, kv heads, n_q, q_start, window, softcap, mask, v_head_dim, mla, alibi */
        {32, 4, 1, 1, 70, 0, 0.0f, 0, 24, 1, 0},   /* MLA decode: latent 24 | rope 8, v = k */
        {32, 16, 1, 1, 70, 0, 0.0f, 1, 24, 1, 0},  /* MLA decode, 16 heads */
        {32, 16, 1, 7, 60, 0, 0.0f, 0, 24, 1, 0},  /* MLA prefill */
        {32, 16, 1, 9, 0, 5, 0.0f, 2, 24, 1, 0},   /* MLA prefill, window, a query sees no key */
        {32, 3, 1, 20, 50, 0, 4.0f, 1, 24, 1, 0},  /* MLA, softcap, masked keys */
        {20, 8, 2, 1, 80, 0, 0.0f, 0, 12, 0, 0},   /* GQA, v_head_dim < head_dim, own v buffer */
        {20, 8, 2, 6, 30, 7, 0.0f, 1, 12, 0, 0},   /* GQA prefill, window, mask */
        {12, 6, 3, 3, 10, 0, 0.0f, 0, 40, 0, 0},   /* v_head_dim > head_dim */
        {12, 6, 3, 30, 10, 0, 0.0f, 0, 40, 0, 0},  /* v_head_dim > head_dim, prefill */
        {576, 16, 1, 1, 69, 0, 0.0f, 0, 512, 1, 0}, /* DeepSeek MLA sizes, decode */
        {576, 2, 1, 1, 69, 0, 0.0f, 0, 512, 1, 0},  /* few rows */
        {576, 16, 1, 3, 66, 0, 0.0f, 1, 512, 1, 0}, /* prefill */
        {1024, 2, 1, 2, 70, 0, 0.0f, 0, 1024, 0, 0}, /* the largest sizes, decode and prefill */
        {1024, 4, 2, 20, 5, 0, 0.0f, 0, 768, 0, 0},
    };
    for (size_t i = 0; i < sizeof vd / sizeof vd[0]; i++) test_attention_case(ctx, vd[i]);
  }
  rl_set_option(ctx, (const uint8_t *)"attn_impl", 0);
}

/* ABI 7: rl_attention_alibi against the double-precision reference with the bias (windows, GQA,
 * padding masks, q_start > 0, both CPU kernels), NULL and zero slopes bit-identical to
 * rl_attention, and its errors. */
static void test_attention_alibi(rl_ctx *ctx) {
  static const int dims[] = {8, 16, 64};
  static const int gqa[] = {1, 2, 4};
  static const int qs[][2] = {{1, 9}, {5, 0}, {4, 6}}; /* n_q, q_start */
  static const int windows[] = {0, 3};
  int n = 0;
  for (int di = 0; di < 3; di++)
    for (int gi = 0; gi < 3; gi++)
      for (int qi = 0; qi < 3; qi++)
        for (int wi = 0; wi < 2; wi++)
          for (int cap = 0; cap < 2; cap++)
            for (int mask = 0; mask < 3; mask++)
              test_attention_case(ctx, (attn_case){dims[di], 2 * gqa[gi], 2, qs[qi][0], qs[qi][1],
                                                   windows[wi], cap ? 5.0f : 0.0f, mask, 0, 0,
                                                   1 + n++ % 2});
  for (int impl = 0; impl <= 2; impl += 2) {
    rl_set_option(ctx, (const uint8_t *)"attn_impl", impl);
    static const attn_case big[] = {
        /* head_dim, heads, kv heads, n_q, q_start, window, softcap, mask, v_head_dim, mla, alibi */
        {64, 40, 40, 1, 300, 0, 0.0f, 1, 0, 0, 1},   /* Baichuan-13B's 40 heads, decode */
        {64, 40, 40, 7, 60, 0, 0.0f, 1, 0, 0, 1},    /* 40 heads, prefill with padding */
        {64, 9, 3, 40, 20, 0, 0.0f, 1, 0, 0, 2},     /* long prefill, many row tiles */
        {32, 8, 2, 1, 3000, 0, 0.0f, 0, 0, 0, 1},    /* long decode: keys split among tasks */
        {32, 8, 2, 3, 3000, 100, 0.0f, 1, 0, 0, 1},  /* window far from key 0 */
        {32, 12, 4, 17, 700, 0, 3.0f, 2, 0, 0, 1},   /* 12 heads (8 + 4), softcap */
        {20, 8, 2, 6, 30, 7, 0.0f, 1, 12, 0, 2},     /* v_head_dim < head_dim */
        {32, 16, 1, 7, 60, 0, 0.0f, 0, 24, 1, 1},    /* v = k (latent cache) */
        {16, 4, 4, 9, 0, 5, 0.0f, 2, 0, 0, 1},       /* a query that sees no key yields zeros */
    };
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) test_attention_case(ctx, big[i]);
  }
  rl_set_option(ctx, (const uint8_t *)"attn_impl", 0);

  /* NULL slopes and zero slopes are rl_attention, bit for bit (x + 0 * d == x), in both kernels */
  static const int shapes[][4] = {{1, 200, 8, 2}, {30, 10, 8, 2}}; /* n_q, q_start, heads, kv */
  for (int si = 0; si < 2; si++) {
    const int nq = shapes[si][0], qstart = shapes[si][1], H = shapes[si][2], G = shapes[si][3];
    const int D = 16, kv_len = qstart + nq;
    float *q = rand_floats((int64_t)nq * H * D, -3.0f, 3.0f);
    float *k = rand_floats((int64_t)kv_len * G * D, -1.0f, 1.0f);
    float *v = rand_floats((int64_t)kv_len * G * D, -1.0f, 1.0f);
    float zero[8] = {0};
    float *dq = to_device(ctx, q, (int64_t)nq * H * D * 4);
    float *dk = to_device(ctx, k, (int64_t)kv_len * G * D * 4);
    float *dv = to_device(ctx, v, (int64_t)kv_len * G * D * 4);
    float *outs[3];
    for (int i = 0; i < 3; i++) {
      float *d = device_floats(ctx, (int64_t)nq * H * D);
      const int32_t st =
          i == 0 ? rl_attention(ctx, d, dq, H * D, dk, G * D, dv, G * D, nq, qstart, kv_len, H, G,
                                D, D, 0.25f, 0, 0.0f, NULL)
                 : rl_attention_alibi(ctx, d, dq, H * D, dk, G * D, dv, G * D, nq, qstart, kv_len,
                                      H, G, D, D, 0.25f, 0, 0.0f, NULL, i == 1 ? NULL : zero);
      check(st == RL_OK, "rl_attention_alibi same-as case %d: status %d", i, st);
      outs[i] = download_free(ctx, d, (int64_t)nq * H * D);
    }
    const size_t bytes = sizeof(float) * (size_t)nq * H * D;
    check(memcmp(outs[0], outs[1], bytes) == 0 && memcmp(outs[0], outs[2], bytes) == 0,
          "rl_attention_alibi n_q=%d with NULL and with zero slopes equals rl_attention", nq);
    for (int i = 0; i < 3; i++) free(outs[i]);
    rl_free(ctx, dq);
    rl_free(ctx, dk);
    rl_free(ctx, dv);
    free(q);
    free(k);
    free(v);
  }

  /* errors: named as rl_attention_alibi; a slope that is not finite, by index */
  float *f = device_floats(ctx, 4096);
  float bad[4] = {0.5f, INFINITY, 0.25f, 0.125f};
  check_error(ctx,
              rl_attention_alibi(ctx, f, f + 512, 64, f + 1024, 64, f + 2048, 64, 1, 0, 4, 4, 2,
                                 8, 8, 1.0f, 0, 0.0f, NULL, bad),
              RL_ERR_INVALID, "rl_attention_alibi", "alibi_slopes[1] is inf");
  bad[1] = 0.0f;
  bad[3] = NAN;
  check_error(ctx,
              rl_attention_alibi(ctx, f, f + 512, 64, f + 1024, 64, f + 2048, 64, 1, 0, 4, 4, 2,
                                 8, 8, 1.0f, 0, 0.0f, NULL, bad),
              RL_ERR_INVALID, "rl_attention_alibi", "alibi_slopes[3]");
  check_error(ctx,
              rl_attention_alibi(ctx, f, f, 64, f, 64, f, 64, 1, 0, 4, 6, 4, 8, 8, 1.0f, 0, 0.0f,
                                 NULL, bad),
              RL_ERR_INVALID, "rl_attention_alibi", "n_kv_heads");
  check_error(NULL,
              rl_attention_alibi(NULL, f, f + 512, 64, f + 1024, 64, f + 2048, 64, 1, 0, 4, 4, 2,
                                 8, 8, 1.0f, 0, 0.0f, NULL, NULL),
              RL_ERR_INVALID, "rl_attention_alibi", "ctx");
  rl_free(ctx, f);
}

static double ref_act(int act, double x) {
  switch (act) {
  case RL_ACT_SILU: return x / (1.0 + exp(-x));
  case RL_ACT_GELU_TANH:
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / acos(-1.0)) * (x + 0.044715 * x * x * x)));
  default: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
  }
}

static void test_act_mul(rl_ctx *ctx) {
  static const char *names[] = {"silu", "gelu_tanh", "gelu"};
  static const int shapes[][2] = {{3, 67}, {1, 1536}, {40, 1000}};
  for (int act = RL_ACT_SILU; act <= RL_ACT_GELU; act++)
    for (int si = 0; si < 3; si++) {
      const int rows = shapes[si][0], cols = shapes[si][1], stride = 2 * cols + 1;
      float *in = rand_floats((int64_t)rows * stride, -8.0f, 8.0f); /* [gate | up | pad] rows */
      in[0] = -100.0f; /* saturated and zero gates */
      in[1] = 100.0f;
      in[2] = 0.0f;
      double *ref = doubles((int64_t)rows * cols);
      for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
          ref[r * cols + c] = ref_act(act, in[r * stride + c]) * in[r * stride + cols + c];
      float *din = to_device(ctx, in, (int64_t)rows * stride * 4);
      float *dout = device_floats(ctx, (int64_t)rows * cols);
      const int32_t st = rl_act_mul(ctx, dout, din, din + cols, rows, cols, stride, act);
      float *got = download_free(ctx, dout, (int64_t)rows * cols);
      check_close(got, ref, (int64_t)rows * cols, st == RL_OK ? TOL : -1.0,
                  "rl_act_mul %s rows=%d cols=%d", names[act], rows, cols);
      rl_free(ctx, din);
      free(in);
      free(got);
      free(ref);
    }
  /* In place, as the models call it: out == gate (and out == up), in_stride == cols. */
  for (int which = 0; which < 2; which++) {
    const int rows = 5, cols = 300;
    float *gate = rand_floats((int64_t)rows * cols, -8.0f, 8.0f);
    float *up = rand_floats((int64_t)rows * cols, -2.0f, 2.0f);
    double *ref = doubles((int64_t)rows * cols);
    for (int64_t i = 0; i < (int64_t)rows * cols; i++) ref[i] = ref_act(RL_ACT_SILU, gate[i]) * up[i];
    float *dg = to_device(ctx, gate, (int64_t)rows * cols * 4);
    float *du = to_device(ctx, up, (int64_t)rows * cols * 4);
    float *out = which == 0 ? dg : du;
    const int32_t st = rl_act_mul(ctx, out, dg, du, rows, cols, cols, RL_ACT_SILU);
    rl_free(ctx, which == 0 ? du : dg);
    float *got = download_free(ctx, out, (int64_t)rows * cols);
    check_close(got, ref, (int64_t)rows * cols, st == RL_OK ? TOL : -1.0,
                "rl_act_mul in place (out == %s)", which == 0 ? "gate" : "up");
    free(gate);
    free(up);
    free(got);
    free(ref);
  }
}

/* rl_act against the double formulas; in place; and bit for bit rl_act_mul with up = 1 (what
 * Phi computed before it had rl_act). */
static void test_act(rl_ctx *ctx) {
  static const char *names[] = {"silu", "gelu_tanh", "gelu"};
  static const int64_t ns[] = {1, 1003, 300001}; /* the largest runs on every thread */
  for (int act = RL_ACT_SILU; act <= RL_ACT_GELU; act++)
    for (int ni = 0; ni < 3; ni++)
      for (int in_place = 0; in_place < 2; in_place++) {
        const int64_t n = ns[ni];
        float *x = rand_floats(n, -8.0f, 8.0f), *ones = malloc(sizeof(float) * (size_t)n);
        if (n > 2) {
          x[0] = -100.0f; /* saturated and zero inputs */
          x[1] = 100.0f;
          x[2] = 0.0f;
        }
        double *ref = doubles(n);
        for (int64_t i = 0; i < n; i++) {
          ref[i] = ref_act(act, x[i]);
          ones[i] = 1.0f;
        }
        float *dx = to_device(ctx, x, n * 4), *dout = in_place ? dx : device_floats(ctx, n);
        const int32_t st = rl_act(ctx, dout, dx, n, act);
        float *got = malloc(sizeof(float) * (size_t)n);
        rl_download(ctx, got, dout, (uint64_t)n * 4);
        check_close(got, ref, n, st == RL_OK ? TOL : -1.0, "rl_act %s n=%lld%s", names[act],
                    (long long)n, in_place ? " in place" : "");
        if (!in_place) {
          float *dg = to_device(ctx, x, n * 4), *du = to_device(ctx, ones, n * 4);
          const int32_t st2 = rl_act_mul(ctx, dg, dg, du, 1, (int32_t)n, (int32_t)n, act);
          float *gated = download_free(ctx, dg, n);
          int64_t bad = st2 == RL_OK ? -1 : 0;
          for (int64_t i = 0; i < n && bad < 0; i++)
            if (memcmp(&gated[i], &got[i], sizeof(float)) != 0) bad = i;
          check(bad < 0, "rl_act %s n=%lld equals rl_act_mul with up = 1: differs at %lld",
                names[act], (long long)n, (long long)bad);
          rl_free(ctx, du);
          rl_free(ctx, dout);
          free(gated);
        }
        rl_free(ctx, dx);
        free(x);
        free(ones);
        free(ref);
        free(got);
      }
}

/* rl_gather_rows is a copy (exact); rl_scatter_add_rows is, per element, o = o + (float)(w * x)
 * in increasing i (exact against that float recurrence, and within TOL of the double sum). Rows
 * repeat in both. cols 5000 with n 60 runs on every thread (columns split). */
static void test_rows(rl_ctx *ctx) {
  static const int shapes[][3] = {{1, 1, 1}, {50, 130, 37}, {60, 5000, 11}}; /* n, cols, rows */
  for (int si = 0; si < 3; si++) {
    const int n = shapes[si][0], cols = shapes[si][1], table_rows = shapes[si][2];
    int32_t *rows = malloc(sizeof(int32_t) * (size_t)n);
    float *weights = rand_floats(n, -2.0f, 2.0f);
    for (int i = 0; i < n; i++) rows[i] = (int32_t)(rand_u32() % (uint32_t)table_rows);
    if (n > 2) rows[n - 1] = rows[0]; /* a repeated row, at least once */

    /* gather: out[i] = x[rows[i]] */
    float *x = rand_floats((int64_t)table_rows * cols, -5.0f, 5.0f);
    float *dx = to_device(ctx, x, (int64_t)table_rows * cols * 4);
    float *dout = device_floats(ctx, (int64_t)n * cols);
    int32_t st = rl_gather_rows(ctx, dout, dx, rows, n, cols, table_rows);
    float *got = download_free(ctx, dout, (int64_t)n * cols);
    int64_t bad = st == RL_OK ? -1 : 0;
    for (int64_t i = 0; i < (int64_t)n * cols && bad < 0; i++)
      if (got[i] != x[(int64_t)rows[i / cols] * cols + i % cols]) bad = i;
    check(bad < 0, "rl_gather_rows n=%d cols=%d x_rows=%d: wrong at element %lld", n, cols,
          table_rows, (long long)bad);
    rl_free(ctx, dx);
    free(x);
    free(got);

    /* scatter-add: out[rows[i]] += weights[i] * y[i], i in order */
    float *y = rand_floats((int64_t)n * cols, -5.0f, 5.0f);
    float *o = rand_floats((int64_t)table_rows * cols, -5.0f, 5.0f);
    float *exact = malloc(sizeof(float) * (size_t)table_rows * cols);
    double *ref = doubles((int64_t)table_rows * cols);
    memcpy(exact, o, sizeof(float) * (size_t)table_rows * cols);
    for (int64_t j = 0; j < (int64_t)table_rows * cols; j++) ref[j] = o[j];
    for (int i = 0; i < n; i++)
      for (int c = 0; c < cols; c++) {
        const int64_t j = (int64_t)rows[i] * cols + c;
        const float p = weights[i] * y[(int64_t)i * cols + c];
        exact[j] = exact[j] + p;
        ref[j] += (double)weights[i] * y[(int64_t)i * cols + c];
      }
    float *dy = to_device(ctx, y, (int64_t)n * cols * 4);
    float *dsum = to_device(ctx, o, (int64_t)table_rows * cols * 4);
    st = rl_scatter_add_rows(ctx, dsum, dy, rows, weights, n, cols, table_rows);
    got = download_free(ctx, dsum, (int64_t)table_rows * cols);
    bad = st == RL_OK ? -1 : 0;
    for (int64_t j = 0; j < (int64_t)table_rows * cols && bad < 0; j++)
      if (memcmp(&got[j], &exact[j], sizeof(float)) != 0) bad = j;
    check(bad < 0, "rl_scatter_add_rows n=%d cols=%d out_rows=%d: differs from the sequential "
          "f32 order at element %lld", n, cols, table_rows, (long long)bad);
    check_close(got, ref, (int64_t)table_rows * cols, st == RL_OK ? TOL : -1.0,
                "rl_scatter_add_rows n=%d cols=%d against the double sum", n, cols);
    rl_free(ctx, dy);
    free(y);
    free(o);
    free(exact);
    free(ref);
    free(got);
    free(rows);
    free(weights);
  }
}

/* rl_add and rl_scale are exact: a float add or multiply is the double result rounded.
 * alias 0: out is a separate buffer; 1: out == first input; 2: out == second input (rl_add). */
static void check_elementwise(rl_ctx *ctx, const char *op, int64_t n, int alias) {
  float *a = rand_floats(n, -5.0f, 5.0f), *b = rand_floats(n, -5.0f, 5.0f);
  float *da = to_device(ctx, a, n * 4), *db = to_device(ctx, b, n * 4);
  float *dout = alias == 1 ? da : alias == 2 ? db : device_floats(ctx, n);
  const int is_add = strcmp(op, "rl_add") == 0;
  const int32_t st = is_add ? rl_add(ctx, dout, da, db, n) : rl_scale(ctx, dout, da, -1.5f, n);
  float *got = malloc(sizeof(float) * (size_t)n);
  rl_download(ctx, got, dout, (uint64_t)n * 4);
  int64_t bad = st == RL_OK ? -1 : 0;
  for (int64_t i = 0; i < n && bad < 0; i++)
    if (got[i] != (float)(is_add ? (double)a[i] + b[i] : -1.5 * a[i])) bad = i;
  check(bad < 0, "%s n=%lld alias=%d: wrong at element %lld", op, (long long)n, alias,
        (long long)bad);
  if (alias == 0) rl_free(ctx, dout);
  rl_free(ctx, da);
  rl_free(ctx, db);
  free(a);
  free(b);
  free(got);
}

static void test_add_scale(rl_ctx *ctx) {
  static const int64_t ns[] = {1, 1003, 300001}; /* the largest runs on every thread */
  for (int ni = 0; ni < 3; ni++)
    for (int alias = 0; alias < 3; alias++) {
      check_elementwise(ctx, "rl_add", ns[ni], alias);
      if (alias < 2) check_elementwise(ctx, "rl_scale", ns[ni], alias);
    }
}

static void test_argmax(rl_ctx *ctx) {
  const float nan = NAN, inf = INFINITY;
  enum { COLS = 5 };
  static const float rows[][COLS] = {
      {1, 3, 3, 2, 0},          /* tie: first index */
      {nan, 1, 2, nan, -1},     /* NaN never wins */
      {-inf, -inf, -inf, -inf, -inf},
      {nan, nan, nan, nan, nan}, /* nothing wins: index 0 */
      {5, nan, 7, 7, inf},
      {-3, -2, -2.5f, -9, -2},
  };
  static const int32_t want[] = {1, 2, 0, 0, 4, 1};
  const int R = sizeof rows / sizeof rows[0];
  float *dx = to_device(ctx, rows, sizeof rows);
  int32_t got[sizeof rows / sizeof rows[0]];
  check(rl_argmax(ctx, got, dx, R, COLS) == RL_OK, "rl_argmax");
  for (int r = 0; r < R; r++)
    check(got[r] == want[r], "rl_argmax row %d: %d, want %d", r, got[r], want[r]);
  rl_free(ctx, dx);

  enum { BIG_ROWS = 4, VOCAB = 49152 };
  float *x = rand_floats(BIG_ROWS * VOCAB, -10.0f, 10.0f);
  int32_t big_want[BIG_ROWS], big_got[BIG_ROWS];
  for (int r = 0; r < BIG_ROWS; r++) {
    big_want[r] = (int32_t)(rand_u32() % VOCAB);
    x[r * VOCAB + big_want[r]] = 11.0f;
  }
  dx = to_device(ctx, x, BIG_ROWS * VOCAB * 4);
  rl_argmax(ctx, big_got, dx, BIG_ROWS, VOCAB);
  for (int r = 0; r < BIG_ROWS; r++)
    check(big_got[r] == big_want[r], "rl_argmax vocab row %d: %d, want %d", r, big_got[r],
          big_want[r]);
  rl_free(ctx, dx);
  free(x);
}

static void test_embedding(rl_ctx *ctx) {
  const int vocab = 50, dim = 67, n = 6;
  const int32_t ids[] = {0, 49, 7, 7, 13, 1};
  for (int dt = RL_F32; dt <= RL_BF16; dt++) {
    tensor table = rand_tensor(dt, vocab * dim);
    double *ref = doubles(n * dim);
    for (int i = 0; i < n; i++)
      for (int c = 0; c < dim; c++) ref[i * dim + c] = table.val[ids[i] * dim + c];
    void *dt_table = to_device(ctx, table.data, vocab * dim * dtype_size(dt));
    float *dout = device_floats(ctx, n * dim);
    const int32_t st = rl_embedding(ctx, dout, dt_table, dt, ids, n, dim, vocab);
    float *got = download_free(ctx, dout, n * dim);
    check_close(got, ref, n * dim, st == RL_OK ? 0.0 : -1.0, "rl_embedding %s is exact",
                dtype_name[dt]);
    rl_free(ctx, dt_table);
    free(got);
    free(ref);
    free_tensor(table);
  }
}

/* ----------------------------------------------------------------------------------------------
 * One context used from several OS threads in turn (Deno runs nonblocking calls on a pool) */

typedef struct {
  rl_ctx *ctx;
  int32_t status;
} thread_job;

/* A GEMV on a fresh buffer, then a call without a context that sets the global error. */
static void *thread_ops(void *arg) {
  thread_job *job = arg;
  float *x = to_device(job->ctx, (float[4]){1, 2, 3, 4}, 16);
  float *out = device_floats(job->ctx, 1);
  job->status = rl_matmul(job->ctx, out, x, x, RL_F32, NULL, 0, 1, 1, 4);
  float *got = download_free(job->ctx, out, 1);
  if (job->status == RL_OK && got[0] != 30.0f) job->status = -1;
  free(got);
  rl_free(job->ctx, x);
  rl_scale(NULL, NULL, NULL, 1.0f, 1);
  return NULL;
}

static void test_threads(rl_ctx *ctx) {
  for (int i = 0; i < 3; i++) {
    thread_job job = {ctx, -2};
    pthread_t t;
    pthread_create(&t, NULL, thread_ops, &job);
    pthread_join(t, NULL);
    check(job.status == RL_OK, "ops from OS thread %d: status %d", i, job.status);
  }
  char msg[512];
  check(message_names(NULL, "rl_scale", "ctx", msg), "global error set by another thread: \"%s\"",
        msg);
}

/* ----------------------------------------------------------------------------------------------
 * Argument validation: status RL_ERR_INVALID and a message naming the op and the argument */

static void test_errors(rl_ctx *ctx) {
  float *f = device_floats(ctx, 4096);
  const int32_t ids[] = {1, 2, 3, 600};
  const int32_t pos[] = {0, 1};
  const float freq[] = {1.0f, 0.5f};
  int32_t out_ids[4];
  char msg[512];

  check_error(ctx, rl_embedding(ctx, f, f, RL_F32, ids, 4, 8, 512), RL_ERR_INVALID,
              "rl_embedding", "id 600");
  rl_last_error(ctx, (uint8_t *)msg, sizeof msg);
  check(strcmp(msg, "rl_embedding: id 600 at position 3 out of range [0, 512)") == 0,
        "rl_embedding message \"%s\"", msg);
  check_error(ctx, rl_embedding(ctx, f, f, 3, ids, 3, 8, 512), RL_ERR_INVALID, "rl_embedding",
              "dtype");
  check_error(ctx, rl_embedding(ctx, f, f, RL_F32, NULL, 3, 8, 512), RL_ERR_INVALID,
              "rl_embedding", "ids");
  check_error(ctx, rl_embedding(ctx, f, f, RL_F32, ids, 0, 8, 512), RL_ERR_INVALID,
              "rl_embedding", "n must be > 0");

  check_error(ctx, rl_rmsnorm(ctx, f, f, f, RL_F32, 0, 8, 1e-5f, 0.0f), RL_ERR_INVALID,
              "rl_rmsnorm", "rows");
  check_error(ctx, rl_rmsnorm(ctx, f, NULL, f, RL_F32, 1, 8, 1e-5f, 0.0f), RL_ERR_INVALID,
              "rl_rmsnorm", "x");
  check_error(ctx, rl_rmsnorm(ctx, f, f, f, -1, 1, 8, 1e-5f, 0.0f), RL_ERR_INVALID, "rl_rmsnorm",
              "wdtype");

  check_error(ctx, rl_matmul(ctx, f, f + 64, NULL, RL_F32, NULL, 0, 1, 8, 8), RL_ERR_INVALID,
              "rl_matmul", "w");
  check_error(ctx, rl_matmul(ctx, f, f + 64, f, 7, NULL, 0, 1, 8, 8), RL_ERR_INVALID, "rl_matmul",
              "wdtype");
  check_error(ctx, rl_matmul(ctx, f, f + 64, f, RL_F32, f, 9, 1, 8, 8), RL_ERR_INVALID,
              "rl_matmul", "bias_dtype");
  check_error(ctx, rl_matmul(ctx, f, f + 64, f, RL_F32, NULL, 0, 0, 8, 8), RL_ERR_INVALID,
              "rl_matmul", "M");
  check_error(ctx, rl_matmul(ctx, f, f + 64, f, RL_F32, NULL, 0, 1, 8, -1), RL_ERR_INVALID,
              "rl_matmul", "K");
  check_error(ctx, rl_matmul(ctx, f, f + 4, f, RL_F32, NULL, 0, 1, 8, 8), RL_ERR_INVALID,
              "rl_matmul", "overlaps");

  check_error(ctx, rl_rope(ctx, f, 2, 64, 2, 32, 7, pos, freq, 1.0f), RL_ERR_INVALID, "rl_rope",
              "rot_dim 7 must be even");
  check_error(ctx, rl_rope(ctx, f, 2, 64, 2, 16, 32, pos, freq, 1.0f), RL_ERR_INVALID, "rl_rope",
              "head_dim");
  check_error(ctx, rl_rope(ctx, f, 2, 60, 2, 32, 4, pos, freq, 1.0f), RL_ERR_INVALID, "rl_rope",
              "row_stride");
  check_error(ctx, rl_rope(ctx, f, 2, 64, 2, 32, 4, NULL, freq, 1.0f), RL_ERR_INVALID, "rl_rope",
              "positions");

  check_error(ctx,
              rl_attention(ctx, f, f, 64, f, 64, f, 64, 1, 0, 4, 6, 4, 8, 8, 1.0f, 0, 0.0f, NULL),
              RL_ERR_INVALID, "rl_attention", "n_kv_heads");
  check_error(ctx,
              rl_attention(ctx, f, f, 64, f, 64, f, 64, 2, 3, 4, 4, 2, 8, 8, 1.0f, 0, 0.0f, NULL),
              RL_ERR_INVALID, "rl_attention", "kv_len");
  check_error(ctx,
              rl_attention(ctx, f, f, 16, f, 64, f, 64, 1, 0, 4, 4, 2, 8, 8, 1.0f, 0, 0.0f, NULL),
              RL_ERR_INVALID, "rl_attention", "q_stride");
  check_error(ctx,
              rl_attention(ctx, f, f, 64, f, 8, f, 8, 1, 0, 4, 4, 2, 8, 8, 1.0f, 0, 0.0f, NULL),
              RL_ERR_INVALID, "rl_attention", "k_stride");
  check_error(ctx,
              rl_attention(ctx, f, f, 64, f, 64, f, 64, 1, 0, 4, 4, 2, 0, 0, 1.0f, 0, 0.0f, NULL),
              RL_ERR_INVALID, "rl_attention", "head_dim");
  check_error(ctx,
              rl_attention(ctx, f, f, 64, NULL, 64, f, 64, 1, 0, 4, 4, 2, 8, 8, 1.0f, 0, 0.0f, NULL),
              RL_ERR_INVALID, "rl_attention", "k");
  /* ABI 5: v's stride and head size, overlaps (out [1, 2*8] at f; q, k, v elsewhere) */
  check_error(ctx,
              rl_attention(ctx, f, f + 512, 64, f + 1024, 64, f + 2048, 12, 1, 0, 4, 4, 2, 8, 8,
                           1.0f, 0, 0.0f, NULL),
              RL_ERR_INVALID, "rl_attention", "v_stride 12 is less than");
  check_error(ctx,
              rl_attention(ctx, f, f + 512, 64, f + 1024, 64, f + 2048, 64, 1, 0, 4, 4, 2, 8, 0,
                           1.0f, 0, 0.0f, NULL),
              RL_ERR_INVALID, "rl_attention", "v_head_dim must be > 0");
  check_error(ctx,
              rl_attention(ctx, f, f, 64, f + 1024, 64, NULL, 64, 1, 0, 4, 4, 2, 8, 8, 1.0f, 0,
                           0.0f, NULL),
              RL_ERR_INVALID, "rl_attention", "v is NULL");
  check_error(ctx,
              rl_attention(ctx, f + 512, f + 520, 64, f + 1024, 64, f + 2048, 64, 1, 0, 4, 2, 1,
                           8, 8, 1.0f, 0, 0.0f, NULL),
              RL_ERR_INVALID, "rl_attention", "out overlaps q");
  check_error(ctx,
              rl_attention(ctx, f + 1024 + 3 * 64, f, 64, f + 1024, 64, f + 1024, 64, 1, 0, 4, 2,
                           1, 8, 8, 1.0f, 0, 0.0f, NULL),
              RL_ERR_INVALID, "rl_attention", "out overlaps k");
  /* out past k's rows but inside v's (v = k with a wider head) */
  check_error(ctx,
              rl_attention(ctx, f + 1024 + 3 * 64 + 16, f, 64, f + 1024, 64, f + 1024, 64, 1, 0, 4,
                           2, 1, 8, 24, 1.0f, 0, 0.0f, NULL),
              RL_ERR_INVALID, "rl_attention", "out overlaps v");

  /* ABI 5 descriptors (rl_matmul_nd, rl_copy_nd): the shared checks. out [1,1,2,8] at f,
   * x [1,1,2,4] at f + 1024, w [1,1,4,8] at f + 2048. */
  {
    int64_t od[RL_DESC_LEN], xd[RL_DESC_LEN], wd[RL_DESC_LEN], bad[RL_DESC_LEN];
    make_desc(od, RL_F32, 0, (int64_t[]){1, 1, 2, 8}, (int64_t[]){0, 0, 8, 1});
    make_desc(xd, RL_F32, 0, (int64_t[]){1, 1, 2, 4}, (int64_t[]){0, 0, 4, 1});
    make_desc(wd, RL_BF16, 0, (int64_t[]){1, 1, 4, 8}, (int64_t[]){0, 0, 8, 1});
    float *x = f + 1024, *w = f + 2048;
    check(rl_matmul_nd(ctx, f, od, x, xd, w, wd) == RL_OK, "rl_matmul_nd: the valid call");
    check_error(ctx, rl_matmul_nd(ctx, f, NULL, x, xd, w, wd), RL_ERR_INVALID, "rl_matmul_nd",
                "out_desc is NULL");
    check_error(ctx, rl_matmul_nd(ctx, f, od, x, xd, w, NULL), RL_ERR_INVALID, "rl_matmul_nd",
                "w_desc is NULL");
    check_error(ctx, rl_matmul_nd(ctx, f, od, NULL, xd, w, wd), RL_ERR_INVALID, "rl_matmul_nd",
                "x is NULL");
    memcpy(bad, xd, sizeof bad);
    bad[RL_DESC_DTYPE] = 5;
    check_error(ctx, rl_matmul_nd(ctx, f, od, x, bad, w, wd), RL_ERR_INVALID, "rl_matmul_nd",
                "x_desc dtype 5");
    bad[RL_DESC_DTYPE] = RL_F16;
    check_error(ctx, rl_matmul_nd(ctx, f, od, x, bad, w, wd), RL_ERR_INVALID, "rl_matmul_nd",
                "x_desc dtype must be f32");
    memcpy(bad, od, sizeof bad);
    bad[RL_DESC_DTYPE] = RL_BF16;
    check_error(ctx, rl_matmul_nd(ctx, f, bad, x, xd, w, wd), RL_ERR_INVALID, "rl_matmul_nd",
                "out_desc dtype must be f32");
    memcpy(bad, wd, sizeof bad);
    bad[RL_DESC_SHAPE + 2] = 0;
    check_error(ctx, rl_matmul_nd(ctx, f, od, x, xd, w, bad), RL_ERR_INVALID, "rl_matmul_nd",
                "w_desc shape[2]");
    memcpy(bad, xd, sizeof bad);
    bad[RL_DESC_STRIDE + 3] = -1;
    check_error(ctx, rl_matmul_nd(ctx, f, od, x, bad, w, wd), RL_ERR_INVALID, "rl_matmul_nd",
                "x_desc stride[3]");
    memcpy(bad, wd, sizeof bad);
    bad[RL_DESC_OFFSET] = -4;
    check_error(ctx, rl_matmul_nd(ctx, f, od, x, xd, w, bad), RL_ERR_INVALID, "rl_matmul_nd",
                "w_desc offset");
    memcpy(bad, od, sizeof bad);
    bad[RL_DESC_STRIDE + 2] = 0; /* both rows of out on the same elements */
    check_error(ctx, rl_matmul_nd(ctx, f, bad, x, xd, w, wd), RL_ERR_INVALID, "rl_matmul_nd",
                "out_desc names an element more than once");
    bad[RL_DESC_STRIDE + 2] = 4; /* rows 4 apart, 8 wide: overlapping rows */
    check_error(ctx, rl_matmul_nd(ctx, f, bad, x, xd, w, wd), RL_ERR_INVALID, "rl_matmul_nd",
                "out_desc names an element more than once");
    memcpy(bad, xd, sizeof bad);
    bad[RL_DESC_SHAPE + 2] = 3;
    check_error(ctx, rl_matmul_nd(ctx, f, od, x, bad, w, wd), RL_ERR_INVALID, "rl_matmul_nd",
                "(M)");
    memcpy(bad, wd, sizeof bad);
    bad[RL_DESC_SHAPE + 3] = 7;
    check_error(ctx, rl_matmul_nd(ctx, f, od, x, xd, w, bad), RL_ERR_INVALID, "rl_matmul_nd",
                "(N)");
    bad[RL_DESC_SHAPE + 3] = 8;
    bad[RL_DESC_SHAPE + 2] = 5;
    check_error(ctx, rl_matmul_nd(ctx, f, od, x, xd, w, bad), RL_ERR_INVALID, "rl_matmul_nd",
                "(K)");
    memcpy(bad, wd, sizeof bad);
    bad[RL_DESC_SHAPE + 1] = 2;
    check_error(ctx, rl_matmul_nd(ctx, f, od, x, xd, w, bad), RL_ERR_INVALID, "rl_matmul_nd",
                "batch dims differ");
    check_error(ctx, rl_matmul_nd(ctx, f, od, f + 8, xd, w, wd), RL_ERR_INVALID, "rl_matmul_nd",
                "out overlaps x");
    check_error(ctx, rl_matmul_nd(ctx, f, od, x, xd, f + 12, wd), RL_ERR_INVALID, "rl_matmul_nd",
                "out overlaps w");
    memcpy(bad, xd, sizeof bad);
    bad[RL_DESC_OFFSET] = 1024; /* x's view at f + 1024 itself: out's offset reaches it */
    check_error(ctx, rl_matmul_nd(ctx, f + 1024, od, f, bad, w, wd), RL_ERR_INVALID,
                "rl_matmul_nd", "out overlaps x");

    /* rl_copy_nd: dst [1,1,2,8] at f, src at f + 1024 */
    check(rl_copy_nd(ctx, f, od, x, od) == RL_OK, "rl_copy_nd: the valid call");
    check_error(ctx, rl_copy_nd(ctx, f, od, x, NULL), RL_ERR_INVALID, "rl_copy_nd",
                "src_desc is NULL");
    check_error(ctx, rl_copy_nd(ctx, NULL, od, x, od), RL_ERR_INVALID, "rl_copy_nd",
                "dst is NULL");
    memcpy(bad, od, sizeof bad);
    bad[RL_DESC_DTYPE] = RL_F16;
    check_error(ctx, rl_copy_nd(ctx, f, od, x, bad), RL_ERR_INVALID, "rl_copy_nd",
                "dst dtype 0 differs from src dtype 1");
    bad[RL_DESC_DTYPE] = -1;
    check_error(ctx, rl_copy_nd(ctx, f, bad, x, od), RL_ERR_INVALID, "rl_copy_nd",
                "dst_desc dtype -1");
    memcpy(bad, od, sizeof bad);
    bad[RL_DESC_SHAPE + 3] = 4;
    check_error(ctx, rl_copy_nd(ctx, f, od, x, bad), RL_ERR_INVALID, "rl_copy_nd",
                "shape[3] differs");
    bad[RL_DESC_SHAPE + 3] = 8;
    bad[RL_DESC_SHAPE] = 0;
    check_error(ctx, rl_copy_nd(ctx, f, od, x, bad), RL_ERR_INVALID, "rl_copy_nd",
                "src_desc shape[0]");
    memcpy(bad, od, sizeof bad);
    bad[RL_DESC_STRIDE + 3] = 0;
    check_error(ctx, rl_copy_nd(ctx, f, bad, x, od), RL_ERR_INVALID, "rl_copy_nd",
                "dst_desc names an element more than once");
    check(rl_copy_nd(ctx, f, od, x, bad) == RL_OK, "rl_copy_nd: a broadcast src (stride 0) is valid");
    check_error(ctx, rl_copy_nd(ctx, f, od, f + 15, od), RL_ERR_INVALID, "rl_copy_nd",
                "dst overlaps src");
  }

  check_error(ctx, rl_act_mul(ctx, f, f, f, 2, 8, 8, 5), RL_ERR_INVALID, "rl_act_mul", "act 5");
  check_error(ctx, rl_act_mul(ctx, f, f, f + 8, 2, 8, 16, RL_ACT_SILU), RL_ERR_INVALID,
              "rl_act_mul", "other than in place");
  check_error(ctx, rl_act_mul(ctx, f + 1, f, f + 64, 2, 8, 8, RL_ACT_SILU), RL_ERR_INVALID,
              "rl_act_mul", "overlaps gate");
  check_error(ctx, rl_act_mul(ctx, f, f, f, 2, 8, 4, RL_ACT_SILU), RL_ERR_INVALID, "rl_act_mul",
              "in_stride");
  check_error(ctx, rl_act(ctx, f, f, 8, 3), RL_ERR_INVALID, "rl_act", "act 3");
  check_error(ctx, rl_act(ctx, f + 1, f, 8, RL_ACT_SILU), RL_ERR_INVALID, "rl_act",
              "other than in place");
  check_error(ctx, rl_act(ctx, f, f, 0, RL_ACT_SILU), RL_ERR_INVALID, "rl_act", "n must be > 0");
  {
    const int32_t rows[] = {0, 3, 4};
    const float weights[] = {1.0f, 1.0f, 1.0f};
    check_error(ctx, rl_gather_rows(ctx, f, f + 1024, rows, 3, 8, 4), RL_ERR_INVALID,
                "rl_gather_rows", "row 4 at position 2 out of range [0, 4)");
    check_error(ctx, rl_gather_rows(ctx, f, f + 1024, NULL, 3, 8, 8), RL_ERR_INVALID,
                "rl_gather_rows", "rows is NULL");
    check_error(ctx, rl_gather_rows(ctx, f, f + 1024, rows, 3, 0, 8), RL_ERR_INVALID,
                "rl_gather_rows", "cols");
    check_error(ctx, rl_gather_rows(ctx, f, f + 8, rows, 3, 8, 8), RL_ERR_INVALID,
                "rl_gather_rows", "overlaps");
    check_error(ctx, rl_scatter_add_rows(ctx, f, f + 1024, rows, weights, 3, 8, 4),
                RL_ERR_INVALID, "rl_scatter_add_rows", "row 4 at position 2");
    check_error(ctx, rl_scatter_add_rows(ctx, f, f + 1024, rows, NULL, 3, 8, 8), RL_ERR_INVALID,
                "rl_scatter_add_rows", "weights is NULL");
    check_error(ctx, rl_scatter_add_rows(ctx, f, f + 1024, rows, weights, 3, 8, 0),
                RL_ERR_INVALID, "rl_scatter_add_rows", "out_rows must be > 0");
    check_error(ctx, rl_scatter_add_rows(ctx, f, f + 16, rows, weights, 3, 8, 8), RL_ERR_INVALID,
                "rl_scatter_add_rows", "overlaps");
  }
  check_error(ctx, rl_add(ctx, f, f, f, 0), RL_ERR_INVALID, "rl_add", "n");
  check_error(ctx, rl_scale(ctx, f, NULL, 2.0f, 4), RL_ERR_INVALID, "rl_scale", "x");
  check_error(ctx, rl_argmax(ctx, out_ids, f, 1, 0), RL_ERR_INVALID, "rl_argmax", "cols");
  check_error(ctx, rl_argmax(ctx, NULL, f, 1, 4), RL_ERR_INVALID, "rl_argmax", "out");
  check_error(NULL, rl_add(NULL, f, f, f, 4), RL_ERR_INVALID, "rl_add", "ctx");
  rl_free(ctx, f);
}


/* ----------------------------------------------------------------------------------------------
 * Files: loads with drop-behind (direct I/O), mapped files with prefetch and eviction, the host
 * tier. Page-cache residency is checked with mincore on a mapping of our own. */

/* Pages of [off, off + n) of path that are in the page cache. */
static long cached_pages(const char *path, uint64_t off, uint64_t n) {
  const long page = sysconf(_SC_PAGESIZE);
  const uint64_t lo = off / page * page;
  int fd = open(path, O_RDONLY);
  void *m = mmap(NULL, n + (off - lo), PROT_READ, MAP_SHARED, fd, (off_t)lo);
  const size_t pages = (n + (off - lo) + page - 1) / page;
  unsigned char *vec = malloc(pages);
  long count = 0;
  if (m != MAP_FAILED && mincore(m, n + (off - lo), vec) == 0)
    for (size_t i = 0; i < pages; i++) count += vec[i] & 1;
  if (m != MAP_FAILED) munmap(m, n + (off - lo));
  free(vec);
  close(fd);
  return count;
}

static void drop_cache(const char *path) {
  int fd = open(path, O_RDONLY);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
}

static void test_files(void) {
  rl_ctx *ctx = rl_create(1, 0);
  /* In build/ (a real file system, as the split is): tmpfs pages are the file, never dropped. */
  char path[] = "build/rabbitllm-test-files-XXXXXX";
  int fd = mkstemp(path);
  enum { BYTES = 1 << 20 };
  uint8_t *data = malloc(BYTES), *back = malloc(BYTES);
  for (int i = 0; i < BYTES; i++) data[i] = (uint8_t)(i * 31 + (i >> 11));
  check(fd >= 0 && write(fd, data, BYTES) == BYTES && fsync(fd) == 0, "writing %s", path);
  close(fd);
  const uint8_t *p = (const uint8_t *)path;

  /* drop_behind: the bytes arrive and the page cache does not keep them (aligned: direct I/O;
   * unaligned head and tail: read, then dropped) */
  check(rl_set_option(ctx, (const uint8_t *)"drop_behind", 1) == RL_OK &&
            rl_get_option(ctx, (const uint8_t *)"drop_behind") == 1,
        "drop_behind can be set");
  uint8_t *dev = rl_alloc(ctx, BYTES);
  check((uintptr_t)dev % 4096 == 0, "a big rl_alloc block is page aligned");
  const uint64_t cases[][2] = {{0, BYTES}, {4096, 65536}, {100, 300000}, {777, 5}};
  for (int c = 0; c < 4; c++) {
    const uint64_t off = cases[c][0], n = cases[c][1];
    drop_cache(path);
    uint8_t *dst = rl_view(dev, off); /* dst congruent with the file offset */
    memset(dst, 0, n);
    int64_t t = rl_load_start(ctx, dst, p, off, n);
    check(t > 0 && rl_load_wait(ctx, t) == RL_OK && memcmp(dst, data + off, n) == 0,
          "drop-behind load of %llu bytes at %llu delivers them", (unsigned long long)n,
          (unsigned long long)off);
    check(cached_pages(path, off, n) == 0, "drop-behind load at %llu leaves %ld pages cached",
          (unsigned long long)off, cached_pages(path, off, n));
  }
  /* not congruent: still right (buffered, then dropped) */
  drop_cache(path);
  int64_t t = rl_load_start(ctx, rl_view(dev, 8), p, 4096, 8192);
  check(t > 0 && rl_load_wait(ctx, t) == RL_OK && memcmp(dev + 8, data + 4096, 8192) == 0 &&
            cached_pages(path, 4096, 8192) == 0,
        "drop-behind load into a misaligned dst");
  rl_set_option(ctx, (const uint8_t *)"drop_behind", 0);

  /* rl_load_ready: 1 once done, -1 after the wait */
  t = rl_load_start(ctx, dev, p, 0, 4096);
  int ready = 0;
  for (int i = 0; i < 10000 && ready == 0; i++) {
    ready = rl_load_ready(ctx, t);
    if (!ready) usleep(100);
  }
  check(ready == 1 && rl_load_wait(ctx, t) == RL_OK && rl_load_ready(ctx, t) == -1,
        "rl_load_ready says 1 when done, -1 once waited (got %d)", ready);

  /* mapped files */
  check(rl_get_option(ctx, (const uint8_t *)"map_files") == 1, "the CPU maps files");
  drop_cache(path);
  const uint64_t off = 1000, n = 500000;
  uint8_t *m = rl_map(ctx, p, off, n);
  check(m != NULL && stat_of(ctx, RL_STAT_MAPPED_BYTES) == n, "rl_map counts mapped bytes");
  const uint64_t h0 = stat_of(ctx, RL_STAT_H2D_BYTES);
  t = rl_prefetch_start(ctx, rl_view(m, 4096), 200000);
  check(t > 0 && rl_load_wait(ctx, t) == RL_OK && cached_pages(path, off + 4096, 200000) > 0 &&
            stat_of(ctx, RL_STAT_H2D_BYTES) - h0 == 200000,
        "rl_prefetch_start brings the range in and counts it");
  check(memcmp(m, data + off, n) == 0, "a mapping reads the file's bytes");
  check(rl_evict(ctx, m, n) == RL_OK && cached_pages(path, off, n) <= 2,
        "rl_evict drops the pages from the page cache (%ld left)", cached_pages(path, off, n));
  check(memcmp(m, data + off, n) == 0, "an evicted mapping reads the file again");
  t = rl_prefetch_start(ctx, m, n);
  check_error(ctx, rl_unmap(ctx, m), RL_ERR_INVALID, "rl_unmap", "not waited");
  check(rl_load_wait(ctx, t) == RL_OK && rl_unmap(ctx, m) == RL_OK &&
            stat_of(ctx, RL_STAT_MAPPED_BYTES) == 0,
        "rl_unmap once the prefetch was waited");
  check(rl_map(ctx, p, BYTES - 10, 11) == NULL, "rl_map past the end fails");
  check(message_names(ctx, "rl_map", "past its end", (char[512]){0}), "rl_map names the end");
  check(rl_map(ctx, (const uint8_t *)"/nonexistent/file", 0, 8) == NULL &&
            message_names(ctx, "rl_map", "/nonexistent/file", (char[512]){0}),
        "rl_map of a missing file names it");
  check_error(ctx, rl_unmap(ctx, dev), RL_ERR_INVALID, "rl_unmap", "not returned by rl_map");
  check(rl_prefetch_start(ctx, dev, 16) == 0 &&
            message_names(ctx, "rl_prefetch_start", "not inside", (char[512]){0}),
        "rl_prefetch_start outside a mapping fails");
  check_error(ctx, rl_evict(ctx, dev, 16), RL_ERR_INVALID, "rl_evict", "not inside");
  uint8_t *kept = rl_map(ctx, p, 0, 64); /* rl_destroy unmaps what is left */

  /* the host tier */
  uint8_t *host = rl_host_alloc(ctx, 70000);
  check(host && (uintptr_t)host % 4096 == 0 && stat_of(ctx, RL_STAT_HOST_BYTES) == 70000,
        "rl_host_alloc: page aligned, counted");
  t = rl_load_start(ctx, host, p, 123, 70000);
  check(t > 0 && rl_load_wait(ctx, t) == RL_OK && memcmp(host, data + 123, 70000) == 0,
        "rl_load_start fills host memory");
  memset(back, 0, 70000);
  uint8_t *dst2 = rl_alloc(ctx, 70000);
  t = rl_upload_start(ctx, dst2, rl_view(host, 1000), 69000);
  check(t > 0 && rl_load_wait(ctx, t) == RL_OK && rl_download(ctx, back, dst2, 69000) == RL_OK &&
            memcmp(back, data + 1123, 69000) == 0,
        "rl_upload_start copies host-tier bytes to the device");
  check(rl_upload_start(ctx, dst2, host, 70001) == 0 &&
            message_names(ctx, "rl_upload_start", "not inside", (char[512]){0}),
        "rl_upload_start beyond the host block fails");
  check_error(ctx, rl_host_free(ctx, dst2), RL_ERR_INVALID, "rl_host_free", "not returned");
  check(rl_host_free(ctx, host) == RL_OK && stat_of(ctx, RL_STAT_HOST_BYTES) == 0,
        "rl_host_free");
  /* Jobs on the same bytes give what running them one by one in issue order gives, though three
   * I/O threads run jobs at once: a load into a host block then an upload out of it, neither
   * waited in between, copies the file; an upload then a load over its source copies the old
   * bytes. */
  uint8_t *block = rl_host_alloc(ctx, BYTES);
  memset(block, 0, BYTES);
  int64_t first = rl_load_start(ctx, block, p, 0, BYTES);
  int64_t second = rl_upload_start(ctx, dev, block, BYTES);
  check(first > 0 && second > 0 && rl_load_wait(ctx, second) == RL_OK &&
            rl_load_wait(ctx, first) == RL_OK && memcmp(dev, data, BYTES) == 0,
        "an upload right after the load into its block copies the file's bytes");
  memset(block, 0x5a, BYTES);
  first = rl_upload_start(ctx, dev, block, BYTES);
  second = rl_load_start(ctx, block, p, 0, BYTES);
  int old_bytes = first > 0 && second > 0 && rl_load_wait(ctx, second) == RL_OK &&
                  rl_load_wait(ctx, first) == RL_OK;
  for (uint64_t i = 0; old_bytes && i < BYTES; i++) old_bytes = dev[i] == 0x5a;
  check(old_bytes && memcmp(block, data, BYTES) == 0,
        "an upload, then a load over its source: the upload copies the bytes from before the load");
  rl_host_free(ctx, block);
  (void)kept;
  rl_destroy(ctx);
  unlink(path);
  free(data);
  free(back);
}

/* ----------------------------------------------------------------------------------------------
 * ggml block formats (ABI 6) against tests/fixtures/quant/ (scripts/make_quant_reference.py):
 * blocks and gguf-py's dequantization of them. Run from the repository root (cpu/test.sh). */

#define QUANT_DIR "tests/fixtures/quant/"

typedef struct {
  char name[16];
  int dtype, rows, k, qk, bb;
  uint8_t *blocks; /* rows * k / qk blocks of bb bytes */
  float *values;   /* rows * k: the dequantized weights */
} quant_fixture;

/* The whole file at path (NULL when unreadable); *size its bytes. */
static void *read_whole(const char *path, long *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  *size = ftell(f);
  fseek(f, 0, SEEK_SET);
  void *p = malloc((size_t)*size + 1);
  const int ok = p && fread(p, 1, (size_t)*size, f) == (size_t)*size;
  fclose(f);
  if (!ok) {
    free(p);
    return NULL;
  }
  return p;
}

/* Reads manifest.txt and every format's files; returns the count (0 on failure, reported). */
static int load_quant_fixtures(quant_fixture *fx, int cap) {
  FILE *m = fopen(QUANT_DIR "manifest.txt", "r");
  check(m != NULL, "%s readable (run from the repository root)", QUANT_DIR "manifest.txt");
  if (!m) return 0;
  int n = 0;
  quant_fixture q;
  while (n < cap && fscanf(m, "%15s %d %d %d %d %d", q.name, &q.dtype, &q.rows, &q.k, &q.qk,
                           &q.bb) == 6) {
    char path[256];
    long bsize = 0, vsize = 0;
    snprintf(path, sizeof path, QUANT_DIR "%s.bin", q.name);
    q.blocks = read_whole(path, &bsize);
    snprintf(path, sizeof path, QUANT_DIR "%s.f32", q.name);
    q.values = read_whole(path, &vsize);
    const int ok = q.blocks && q.values && q.k % q.qk == 0 &&
                   bsize == (long)q.rows * (q.k / q.qk) * q.bb &&
                   vsize == (long)q.rows * q.k * 4;
    check(ok, "quant fixture %s: files present with %d rows of %d", q.name, q.rows, q.k);
    if (!ok) {
      free(q.blocks);
      free(q.values);
      continue;
    }
    fx[n++] = q;
  }
  fclose(m);
  check(n == RL_DTYPE_COUNT - 3, "quant fixtures: %d formats, want %d", n, RL_DTYPE_COUNT - 3);
  return n;
}

/* rl_matmul of x [M,K] with W [N,K] in q's format: block j of W (row-major over (n, block)) is
 * fixture block src[j]; reference in double from the fixture's dequantized values. */
static void check_quant_matmul(rl_ctx *ctx, const quant_fixture *q, int M, int N, int K,
                               const int64_t *src, int bias_dt) {
  const int64_t nbr = K / q->qk; /* blocks per W row */
  uint8_t *w = malloc((size_t)(N * nbr * q->bb));
  double *wv = doubles((int64_t)N * K);
  for (int64_t j = 0; j < N * nbr; j++) {
    memcpy(w + j * q->bb, q->blocks + src[j] * q->bb, (size_t)q->bb);
    for (int e = 0; e < q->qk; e++) wv[j * q->qk + e] = q->values[src[j] * q->qk + e];
  }
  float *x = rand_floats((int64_t)M * K, -1.0f, 1.0f);
  tensor b = rand_tensor(bias_dt < 0 ? RL_F32 : bias_dt, N);
  double *ref = doubles((int64_t)M * N);
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double s = bias_dt < 0 ? 0.0 : b.val[n];
      for (int k = 0; k < K; k++) s += (double)x[m * K + k] * wv[(int64_t)n * K + k];
      ref[m * N + n] = s;
    }
  float *dx = to_device(ctx, x, (int64_t)M * K * 4), *dout = device_floats(ctx, (int64_t)M * N);
  void *dw = to_device(ctx, w, N * nbr * q->bb);
  void *db = bias_dt < 0 ? NULL : to_device(ctx, b.data, N * dtype_size(bias_dt));
  const int32_t st = rl_matmul(ctx, dout, dx, dw, q->dtype, db, bias_dt < 0 ? 0 : bias_dt, M, N, K);
  float *got = download_free(ctx, dout, (int64_t)M * N);
  check_close(got, ref, (int64_t)M * N, st == RL_OK ? TOL : -1.0,
              "rl_matmul M=%d N=%d K=%d w %s bias %s", M, N, K, q->name,
              bias_dt < 0 ? "none" : dtype_name[bias_dt]);
  rl_free(ctx, dx);
  rl_free(ctx, dw);
  if (db) rl_free(ctx, db);
  free(x);
  free(got);
  free(ref);
  free(w);
  free(wv);
  free_tensor(b);
}

static void test_quant(rl_ctx *ctx) {
  quant_fixture fx[16];
  const int n_fx = load_quant_fixtures(fx, 16);
  for (int f = 0; f < n_fx; f++) {
    const quant_fixture *q = &fx[f];
    const int64_t nb = (int64_t)q->rows * (q->k / q->qk); /* fixture blocks */

    /* rl_embedding: rows (repeated, out of order) equal gguf-py's dequantization exactly (as
     * values: a weight d * 0 may come out +0 where gguf-py has -0 for a negative d) */
    const int32_t ids[] = {2 % q->rows, 0, 1 % q->rows, 2 % q->rows};
    const int n = 4;
    void *table = to_device(ctx, q->blocks, nb * q->bb);
    float *dout = device_floats(ctx, (int64_t)n * q->k);
    const int32_t st = rl_embedding(ctx, dout, table, q->dtype, ids, n, q->k, q->rows);
    float *got = download_free(ctx, dout, (int64_t)n * q->k);
    double *ref = doubles((int64_t)n * q->k);
    int64_t differ = 0;
    for (int i = 0; i < n; i++)
      for (int c = 0; c < q->k; c++) {
        ref[i * q->k + c] = q->values[(int64_t)ids[i] * q->k + c];
        differ += got[i * q->k + c] != ref[i * q->k + c];
      }
    check_close(got, ref, (int64_t)n * q->k, st == RL_OK ? 1e-6 : -1.0, "rl_embedding %s",
                q->name);
    check(st == RL_OK && differ == 0, "rl_embedding %s: %lld values differ from gguf-py's",
          q->name, (long long)differ);
    rl_free(ctx, table);
    free(got);
    free(ref);

    /* rl_matmul: the fixture's rows as W (GEMV and GEMM paths), then a larger W of fixture blocks
     * in another order: 67 rows (tiles with a remainder) of 1280 (two K chunks for the GEMM) */
    static const int ms[] = {1, 3, 17, 64};
    int64_t *src = malloc(sizeof(int64_t) * (size_t)(67 * (1280 / q->qk)));
    for (int64_t j = 0; j < nb; j++) src[j] = j;
    for (int i = 0; i < 4; i++)
      check_quant_matmul(ctx, q, ms[i], q->rows, q->k, src, i == 1 ? RL_F32 : -1);
    const int64_t nbr = 1280 / q->qk;
    for (int64_t j = 0; j < 67 * nbr; j++) src[j] = (j * 7 + j / nbr * 3) % nb;
    for (int i = 0; i < 4; i++)
      check_quant_matmul(ctx, q, ms[i], 67, 1280, src, i == 0 ? RL_F16 : i == 3 ? RL_BF16 : -1);
    free(src);
  }

  /* errors: a row length not a multiple of the block names the dtype and the length; dtype 11 is
   * not a dtype; a bias never has a block format */
  float *f = device_floats(ctx, 4096);
  const int32_t eids[] = {0, 1};
  char msg[512];
  check_error(ctx, rl_matmul(ctx, f, f + 64, f, RL_Q4_0, NULL, 0, 1, 8, 48), RL_ERR_INVALID,
              "rl_matmul", "K 48");
  rl_last_error(ctx, (uint8_t *)msg, sizeof msg);
  check(strstr(msg, "q4_0") != NULL && strstr(msg, "32") != NULL, "rl_matmul q4_0 K 48: \"%s\"",
        msg);
  check_error(ctx, rl_matmul(ctx, f, f + 64, f, RL_Q6_K, NULL, 0, 3, 8, 512 + 32),
              RL_ERR_INVALID, "rl_matmul", "q6_k");
  rl_last_error(ctx, (uint8_t *)msg, sizeof msg);
  check(strstr(msg, "K 544") != NULL && strstr(msg, "256") != NULL, "rl_matmul q6_k K 544: \"%s\"",
        msg);
  check_error(ctx, rl_matmul(ctx, f, f + 64, f, RL_DTYPE_COUNT, NULL, 0, 1, 8, 32),
              RL_ERR_INVALID, "rl_matmul", "wdtype 11");
  check_error(ctx, rl_matmul(ctx, f, f + 64, f, RL_Q8_0, f + 2048, RL_Q8_0, 1, 8, 32),
              RL_ERR_INVALID, "rl_matmul", "bias_dtype 3");
  check_error(ctx, rl_embedding(ctx, f, f, RL_Q4_K, eids, 2, 128, 4), RL_ERR_INVALID,
              "rl_embedding", "dim 128");
  rl_last_error(ctx, (uint8_t *)msg, sizeof msg);
  check(strstr(msg, "q4_k") != NULL, "rl_embedding q4_k dim 128: \"%s\"", msg);
  check_error(ctx, rl_embedding(ctx, f, f, RL_DTYPE_COUNT, eids, 2, 32, 4), RL_ERR_INVALID,
              "rl_embedding", "dtype 11");
  rl_free(ctx, f);
  for (int i = 0; i < n_fx; i++) {
    free(fx[i].blocks);
    free(fx[i].values);
  }
}


/* ----------------------------------------------------------------------------------------------
 * Option "int8_activations": the GEMV (M == 1) on q8_0, q4_0, q4_1, q5_0, q5_1 and q4_k W with
 * x quantized to int8 per 32 values. Checked against a scalar reference of the same int8 math
 * (quantization as ggml's quantize_row_q8_0 on x86: d = amax/127, q = x * (127/amax) rounded to
 * nearest even, d in f32; then sum_b d_w * d_x * exact integer dot (+ m_w * d_x * exact sum of
 * the block's q_x for q4_1 / q5_1, whose weights are d_w * q + m_w with q unsigned; q4_k so per
 * sub-block of 32, d_w = d * sc, m_w = -dmin * m), in double),
 * and against the f32 path within the bound of the activation quantization: |x - d q| <= d / 2 =
 * amax_b / 254 per value, so a row differs by at most E_n = sum_b amax_b / 254 * sum_{k in b}
 * |w_k| (plus f32 rounding). Option off (and every other dtype, and M > 1) is bit-identical to
 * before the option was ever set. */

#define I8_KEY ((const uint8_t *)"int8_activations")
#define I8_FIRST RL_Q8_0 /* the dtypes of the int8 path: RL_Q8_0 ... RL_Q4_K */
#define I8_LAST RL_Q4_K

static int i8_dtype(int dt) { return dt >= I8_FIRST && dt <= I8_LAST; }

/* A random f16 of magnitude in [2^e, 2^(e+2)) of either sign. */
static uint16_t rand_f16_mag(int e) {
  return (uint16_t)(((15 + e) << 10) + rand_u32() % 0x0800) | (rand_u32() & 1 ? 0x8000 : 0);
}

/* Q4_K's 6-bit scale and min of sub-block j from its 12 bytes s (ggml's get_scale_min_k4). */
static void ref_scale_min_k4(const uint8_t *s, int j, int *sc, int *m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
    *m = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
  }
}

/* A random W of N rows of K in dt (i8_dtype): random quants, f16 scales d of either sign with
 * magnitudes in [2^-8, 2^-6), for q4_1 / q5_1 f16 mins m of either sign in [2^-7, 2^-5) (q4_k:
 * d and dmin so, random 6-bit sub-block scales and mins); wq[n*K + k] its integer weights (q4_0:
 * q - 8, q5_0: q - 16, q4_1 / q5_1 / q4_k: q), per 32 values ws[n*K/32 + b] their scale, wm[...]
 * their min (0 without; q4_k: d * sc and -dmin * m of the sub-block). */
static uint8_t *rand_q_weights(int dt, int N, int K, int *wq, double *ws, double *wm) {
  const int qk = dt == RL_Q4_K ? 256 : 32, bb = (int)rl_row_bytes(dt, qk), nb = K / qk;
  const int has_min = dt == RL_Q4_1 || dt == RL_Q5_1, five = dt == RL_Q5_0 || dt == RL_Q5_1;
  const int qs = dt == RL_Q8_0 ? 2 : 2 + 2 * has_min + 4 * five; /* offset of the quants */
  const int off = dt == RL_Q4_0 ? 8 : dt == RL_Q5_0 ? 16 : 0;
  uint8_t *w = malloc((size_t)N * nb * bb);
  for (int64_t j = 0; j < (int64_t)N * nb; j++) {
    uint8_t *blk = w + j * bb;
    for (int i = 2; i < bb; i++) blk[i] = (uint8_t)rand_u32();
    const uint16_t h = rand_f16_mag(-8);
    blk[0] = (uint8_t)h;
    blk[1] = (uint8_t)(h >> 8);
    if (dt == RL_Q4_K) {
      const uint16_t hm = rand_f16_mag(-8);
      blk[2] = (uint8_t)hm;
      blk[3] = (uint8_t)(hm >> 8);
      for (int sub = 0; sub < 8; sub++) {
        int sc, m;
        ref_scale_min_k4(blk + 4, sub, &sc, &m);
        ws[8 * j + sub] = ref_f16(h) * sc;
        wm[8 * j + sub] = -ref_f16(hm) * m;
        for (int i = 0; i < 32; i++) {
          const uint8_t v = blk[16 + 32 * (sub / 2) + i];
          wq[256 * j + 32 * sub + i] = sub & 1 ? v >> 4 : v & 15;
        }
      }
      continue;
    }
    ws[j] = ref_f16(h);
    wm[j] = 0.0;
    if (has_min) {
      const uint16_t m = rand_f16_mag(-7);
      blk[2] = (uint8_t)m;
      blk[3] = (uint8_t)(m >> 8);
      wm[j] = ref_f16(m);
    }
    uint32_t qh = 0;
    if (five) memcpy(&qh, blk + qs - 4, 4);
    int *q = wq + j * 32;
    for (int i = 0; i < 32; i++)
      q[i] = dt == RL_Q8_0 ? (int8_t)blk[2 + i]
                           : ((i < 16 ? blk[qs + i] & 15 : blk[qs + i - 16] >> 4) |
                              (five ? (int)(qh >> i & 1) << 4 : 0)) -
                                 off;
  }
  return w;
}

/* The reference of the int8 path for one x row: res[n] (double) and the f32 bound err[n]. */
static void ref_int8_gemv(const float *x, const int *wq, const double *ws, const double *wm,
                          const double *bias, int N, int K, double *res, double *err) {
  const int nb = K / 32;
  int *qx = malloc(sizeof(int) * (size_t)K);
  float *dx = malloc(sizeof(float) * (size_t)nb), *amax = malloc(sizeof(float) * (size_t)nb);
  for (int b = 0; b < nb; b++) {
    float a = 0.0f;
    for (int i = 0; i < 32; i++) a = fmaxf(a, fabsf(x[32 * b + i]));
    const float id = a != 0.0f ? 127.0f / a : 0.0f;
    for (int i = 0; i < 32; i++) qx[32 * b + i] = (int)nearbyintf(x[32 * b + i] * id);
    dx[b] = a / 127.0f;
    amax[b] = a;
  }
  for (int n = 0; n < N; n++) {
    double s = bias ? bias[n] : 0.0, e = 0.0;
    for (int b = 0; b < nb; b++) {
      const double dw = ws[(int64_t)n * nb + b], mw = wm[(int64_t)n * nb + b];
      int64_t is = 0, sx = 0;
      double l1 = 0.0; /* sum of |w_k| */
      for (int i = 0; i < 32; i++) {
        const int64_t k = (int64_t)n * K + 32 * b + i;
        is += (int64_t)wq[k] * qx[32 * b + i];
        sx += qx[32 * b + i];
        l1 += fabs(dw * wq[k] + mw);
      }
      s += dw * (double)dx[b] * (double)is + mw * (double)dx[b] * (double)sx;
      e += (double)amax[b] / 254.0 * l1;
    }
    res[n] = s;
    err[n] = e;
  }
  free(qx);
  free(dx);
  free(amax);
}

/* rl_matmul of one x row with the option off, on and off again; *rel_rms, *rel_max: the on
 * result's error against the off one (relative to the off results' rms and max). */
static void check_int8_case(rl_ctx *ctx, int dt, int N, int K, int bias_dt, int x_kind,
                            double *rel_rms, double *rel_max) {
  const int nb = K / 32;
  int *wq = malloc(sizeof(int) * (size_t)N * K);
  double *ws = doubles((int64_t)N * nb), *wm = doubles((int64_t)N * nb);
  uint8_t *w = rand_q_weights(dt, N, K, wq, ws, wm);
  float *x = rand_floats(K, -1.0f, 1.0f);
  if (x_kind == 1) /* a zero block, an outlier, tiny values */
    for (int k = 0; k < K; k++) {
      if (k / 32 == 1 % nb) x[k] = 0.0f;
      else if (k % 97 == 5) x[k] *= 300.0f;
      else if (k / 32 == 2 % nb) x[k] *= 1e-30f;
    }
  tensor b = rand_tensor(bias_dt < 0 ? RL_F32 : bias_dt, N);
  double *res = doubles(N), *err = doubles(N);
  ref_int8_gemv(x, wq, ws, wm, bias_dt < 0 ? NULL : b.val, N, K, res, err);
  float *dx = to_device(ctx, x, (int64_t)K * 4);
  void *dw = to_device(ctx, w, (int64_t)N * (int64_t)rl_row_bytes(dt, K));
  void *db = bias_dt < 0 ? NULL : to_device(ctx, b.data, N * dtype_size(bias_dt));
  const int bdt = bias_dt < 0 ? 0 : bias_dt;
  float *got[3];
  int32_t st[3];
  for (int i = 0; i < 3; i++) {
    rl_set_option(ctx, I8_KEY, i == 1);
    float *d = device_floats(ctx, N);
    st[i] = rl_matmul(ctx, d, dx, dw, dt, db, bdt, 1, N, K);
    got[i] = download_free(ctx, d, N);
  }
  rl_set_option(ctx, I8_KEY, 0);
  const char *name = rl_dtype_name(dt);
  const char *bname = bias_dt < 0 ? "none" : dtype_name[bias_dt];
  check(st[0] == RL_OK && st[1] == RL_OK && st[2] == RL_OK &&
            memcmp(got[0], got[2], sizeof(float) * (size_t)N) == 0,
        "int8_activations off, on, off: %s N=%d K=%d: off results change", name, N, K);
  check_close(got[1], res, N, st[1] == RL_OK ? TOL : -1.0,
              "int8_activations %s N=%d K=%d bias %s x %d: against the int8 reference", name, N,
              K, bname, x_kind);
  double max_off = 0.0, worst = 0.0, se = 0.0, so = 0.0, me = 0.0;
  int64_t differ = 0;
  for (int n = 0; n < N; n++) max_off = fmax(max_off, fabs(got[0][n]));
  for (int n = 0; n < N; n++) {
    const double e = fabs((double)got[1][n] - got[0][n]);
    worst = fmax(worst, e / (err[n] * 1.001 + 2 * TOL * max_off));
    se += e * e;
    so += (double)got[0][n] * got[0][n];
    me = fmax(me, e);
    differ += got[1][n] != got[0][n];
  }
  check(worst <= 1.0 && (differ > 0 || nb < 3 /* x_kind 1: all zero */),
        "int8_activations %s N=%d K=%d x %d: |on - off| %.3g of the bound (<= 1), %lld differ",
        name, N, K, x_kind, worst, (long long)differ);
  *rel_rms = sqrt(se / (so > 0 ? so : 1));
  *rel_max = me / (max_off > 0 ? max_off : 1);
  rl_free(ctx, dx);
  rl_free(ctx, dw);
  if (db) rl_free(ctx, db);
  for (int i = 0; i < 3; i++) free(got[i]);
  free(wq);
  free(ws);
  free(wm);
  free(w);
  free(x);
  free(res);
  free(err);
  free_tensor(b);
}

static void test_int8_activations(rl_ctx *ctx) {
  check(rl_get_option(ctx, I8_KEY) == 0, "int8_activations is 0 by default");
  check(rl_set_option(ctx, I8_KEY, 1) == RL_OK && rl_get_option(ctx, I8_KEY) == 1,
        "int8_activations can be set");
  check_error(ctx, rl_set_option(ctx, I8_KEY, 2), RL_ERR_INVALID, "rl_set_option",
              "int8_activations");
  rl_set_option(ctx, I8_KEY, 0);

  static const int shapes[][2] = {{1, 32}, {7, 64}, {33, 96}, {67, 1280}, {129, 576},
                                  {5, 4096}, {3, 16416} /* x in a heap buffer */};
  static const int shapes_k[][2] = {{1, 256}, {7, 512}, {33, 768}, {67, 1280}, {129, 2304},
                                    {5, 4096}, {3, 16640} /* x in a heap buffer */};
  for (int dt = I8_FIRST; dt <= I8_LAST; dt++) {
    double rms_max = 0.0, max_max = 0.0;
    const int(*sh)[2] = dt == RL_Q4_K ? shapes_k : shapes;
    for (int s = 0; s < 7; s++)
      for (int v = 0; v < 2; v++) {
        double rr, rm;
        const int bias_dt = (s + v) % 4 == 0 ? -1 : (s + v) % 4 - 1;
        check_int8_case(ctx, dt, sh[s][0], sh[s][1], bias_dt, v, &rr, &rm);
        if (v == 0) {
          rms_max = fmax(rms_max, rr);
          max_max = fmax(max_max, rm);
        }
      }
    /* uniform x: the quantization error of a value is about d / sqrt(12), d <= 1/127 */
    check(rms_max < 0.02 && max_max < 0.05,
          "int8_activations %s: relRms %.3g, rel max %.3g against f32 (random x)",
          rl_dtype_name(dt), rms_max, max_max);
  }

  /* a non-finite x makes the results NaN (the f32 path's are inf or NaN) */
  {
    int *wq = malloc(sizeof(int) * 4 * 64);
    double *ws = doubles(8), *wm = doubles(8);
    uint8_t *w = rand_q_weights(RL_Q8_0, 4, 64, wq, ws, wm);
    float *x = rand_floats(64, -1.0f, 1.0f);
    x[40] = NAN;
    float *dx = to_device(ctx, x, 64 * 4), *dout = device_floats(ctx, 4);
    void *dw = to_device(ctx, w, 4 * 2 * 34);
    rl_set_option(ctx, I8_KEY, 1);
    const int32_t st = rl_matmul(ctx, dout, dx, dw, RL_Q8_0, NULL, 0, 1, 4, 64);
    rl_set_option(ctx, I8_KEY, 0);
    float *got = download_free(ctx, dout, 4);
    check(st == RL_OK && isnan(got[0]) && isnan(got[3]), "int8_activations: NaN in x gives NaN");
    rl_free(ctx, dx);
    rl_free(ctx, dw);
    free(got);
    free(wq);
    free(ws);
    free(wm);
    free(w);
    free(x);
  }

  /* every other dtype, and M > 1 on the int8 path's: results with the option on equal those with
   * it off, bit for bit */
  const int N = 37, K = 256;
  for (int dt = RL_F32; dt < RL_DTYPE_COUNT; dt++)
    for (int M = 1; M <= 3; M += 2) {
      if (M == 1 && i8_dtype(dt)) continue;
      const int64_t wbytes = (int64_t)N * (int64_t)rl_row_bytes(dt, K);
      uint8_t *w = malloc((size_t)wbytes);
      for (int64_t i = 0; i < wbytes; i++) w[i] = (uint8_t)rand_u32();
      if (dt <= RL_BF16) /* finite values (block formats: random bytes; the same NaNs either way) */
        for (int64_t i = 0; i < (int64_t)N * K; i++) {
          const float f = rand_float(-1.0f, 1.0f);
          if (dt == RL_F32) memcpy(w + 4 * i, &f, 4);
          else ((uint16_t *)w)[i] = dt == RL_F16 ? 0x3800 : 0x3f00;
        }
      float *x = rand_floats((int64_t)M * K, -1.0f, 1.0f);
      float *dx = to_device(ctx, x, (int64_t)M * K * 4);
      void *dw = to_device(ctx, w, wbytes);
      float *got[2];
      for (int i = 0; i < 2; i++) {
        rl_set_option(ctx, I8_KEY, i);
        float *d = device_floats(ctx, (int64_t)M * N);
        rl_matmul(ctx, d, dx, dw, dt, NULL, 0, M, N, K);
        got[i] = download_free(ctx, d, (int64_t)M * N);
      }
      rl_set_option(ctx, I8_KEY, 0);
      check(memcmp(got[0], got[1], sizeof(float) * (size_t)M * N) == 0,
            "int8_activations leaves dtype %d M=%d unchanged", dt, M);
      rl_free(ctx, dx);
      rl_free(ctx, dw);
      free(got[0]);
      free(got[1]);
      free(w);
      free(x);
    }
}

int main(void) {
  test_library();
  test_memory();
  test_files();
  rl_ctx *ctx = rl_create(0, 0);
  if (!ctx) {
    printf("FATAL: rl_create failed\n");
    return 1;
  }
  test_conversions(ctx);
  test_matmul(ctx);
  test_rmsnorm(ctx);
  test_rope(ctx);
  test_attention(ctx);
  test_act_mul(ctx);
  test_act(ctx);
  test_rows(ctx);
  test_add_scale(ctx);
  test_argmax(ctx);
  test_embedding(ctx);
  test_threads(ctx);
  test_errors(ctx);
  /* ABI 5 (after the rest: their random inputs stay those of before) */
  test_attention_v(ctx);
  test_matmul_nd(ctx);
  test_copy_nd(ctx);
  /* ABI 6 */
  test_quant(ctx);
  test_int8_activations(ctx);
  /* ABI 7 */
  test_attention_alibi(ctx);
  check(stat_of(ctx, RL_STAT_LIVE_ALLOCS) == 0 && stat_of(ctx, RL_STAT_LIVE_BYTES) == 0,
        "every test freed its device buffers (%llu live)",
        (unsigned long long)stat_of(ctx, RL_STAT_LIVE_ALLOCS));
  rl_destroy(ctx);
  printf("%d passed, %d failed\n", n_passed, n_failed);
  return n_failed ? 1 : 0;
}
