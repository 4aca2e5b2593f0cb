/*
 * Matmul benchmark for the CPU backend on the shapes of a SmolLM2-135M-shaped Llama (hidden 576,
 * intermediate 1536, 9/3 heads of 64, 30 layers, vocab 49152), for f32, f16 and bf16 weights:
 *  - gemv: every decode shape (M = 1), GB/s of weights against this machine's read bandwidth.
 *    "hot" repeats one weight matrix (it may sit in cache), "cold" cycles through enough copies
 *    to exceed the last-level cache, as decode does across layers.
 *  - gemm: every prefill shape at M = 64 (and a few other M), GFLOP/s.
 *  - decode, prefill: the matmuls of one whole forward pass in model order (30 layers x q, k, v,
 *    o, gate, up, down with distinct weights, then the lm_head on one row): a decoded token
 *    (M = 1) and a 64-token prompt (M = 64); what the engine's decode and prefill spend in
 *    rl_matmul.
 * Each line shows the best call (or pass) and the median: other processes share the cores.
 *
 *  - quant: the block formats against f32/f16 at N=K=4096 and the SmolLM2 up/gate shape
 *    (N=1536, K=576): M = 1 cold (GB/s of weight bytes, ggml's block bytes for the quantized
 *    ones) and M = 64 hot. Then Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and Q4_K at M = 1 cold with the option
 *    int8_activations off and on (+i8) at 4096^2 and the SmolLM2 decode shapes, the decode pass
 *    of the model in each off and on, and the int8 path's error against the f32 path on random
 *    data (Q4_K: only the shapes whose K is whole 256-blocks, 4096^2 and 576 x 1536; no decode
 *    pass, the model's K = 576 is not).
 *
 * Build and run: sh cpu/bench.sh [n_threads] [sections] [int8 dtypes], sections a comma list of
 * memory,gemv,gemm,decode,prefill,quant,int8 (default: all but quant and int8; quant includes
 * int8, the int8 activations part alone); int8 dtypes, e.g. q4_1,q5_0, limits the int8 part to
 * those (default: all six).
 */
#define _POSIX_C_SOURCE 200809L
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rabbitllm.h"
#include "rl_shared.h" /* rl_row_bytes, rl_dtype_name (header-only helpers) */

#define COLD_BYTES (512ull << 20) /* total weight bytes cycled through for "cold" runs */
#define MIN_SECONDS 0.3
#define MIN_CALLS 5
#define MAX_CALLS 100000

static volatile float sink; /* keeps the read loop's result alive */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xmalloc(size_t bytes) {
  void *p = NULL;
  if (posix_memalign(&p, 64, bytes) != 0) {
    fprintf(stderr, "bench: out of memory (%zu bytes)\n", bytes);
    exit(1);
  }
  memset(p, 0, bytes); /* touch every page */
  return p;
}

/* n elements of dtype dt, all 0.5 (so no product is subnormal: those take slow microcode paths);
 * a block format (n a multiple of its block) gets pseudo-random quants and every f16 scale
 * (d, m, dmin) 2^-6. */
static void *half_values(size_t n, int dt) {
  const size_t bytes = dt > RL_BF16 ? rl_row_bytes(dt, (int64_t)n) : n * (dt == RL_F32 ? 4 : 2);
  void *p = xmalloc(bytes);
  if (dt > RL_BF16) {
    uint8_t *b = p;
    uint32_t r = 12345;
    for (size_t i = 0; i < bytes; i++) b[i] = (uint8_t)((r = r * 1664525u + 1013904223u) >> 24);
    const size_t bb = (size_t)rl_block_bytes(dt);
    const int offs = dt == RL_Q6_K ? 208 : 0, two = dt == RL_Q4_1 || dt == RL_Q5_1 || dt >= RL_Q4_K;
    for (size_t blk = 0; blk < bytes; blk += bb) {
      b[blk + offs] = 0x00, b[blk + offs + 1] = 0x24; /* f16 2^-6 */
      if (two && dt != RL_Q6_K) b[blk + 2] = 0x00, b[blk + 3] = 0x24;
    }
    return p;
  }
  const uint16_t h = dt == RL_F16 ? 0x3800 : 0x3f00;
  for (size_t i = 0; i < n; i++)
    if (dt == RL_F32) ((float *)p)[i] = 0.5f;
    else ((uint16_t *)p)[i] = h;
  return p;
}

static void check(rl_ctx *ctx, int32_t status) {
  if (status == RL_OK) return;
  char msg[512];
  rl_last_error(ctx, (uint8_t *)msg, sizeof msg);
  fprintf(stderr, "bench: %s\n", msg);
  exit(1);
}

/* ----------------------------------------------------------------------------------------------
 * Machine bandwidth */

static void bench_memory(int n_threads) {
  const size_t bytes = 512ull << 20;
  char *a = xmalloc(bytes), *b = xmalloc(bytes);
  double best = 1e30;
  for (int r = 0; r < 5; r++) {
    double t = now();
    memcpy(b, a, bytes);
    t = now() - t;
    if (t < best) best = t;
  }
  printf("memcpy (1 thread)          %7.1f GB/s copied  (%.1f GB/s read+write)\n",
         (double)bytes / best * 1e-9, 2.0 * (double)bytes / best * 1e-9);

  /* The bound for a GEMV: every thread sums its share of the buffer, 32 independent lanes. */
  const float *f = (const float *)a;
  const size_t n = bytes / sizeof(float);
  best = 1e30;
  for (int r = 0; r < 5; r++) {
    double t = now();
#pragma omp parallel num_threads(n_threads)
    {
      float lanes[32] = {0};
#pragma omp for schedule(static)
      for (size_t i = 0; i < n; i += 32)
        for (int l = 0; l < 32; l++) lanes[l] += f[i + l];
      sink = lanes[0];
    }
    t = now() - t;
    if (t < best) best = t;
  }
  printf("read (%d threads)          %7.1f GB/s\n", n_threads, (double)bytes / best * 1e-9);
  free(a);
  free(b);
}

/* ----------------------------------------------------------------------------------------------
 * Matmul */

static const char *dtype_name(int dt) { return rl_dtype_name(dt); }

/* The dtype's name, "+i8" appended while the option int8_activations is on. */
static const char *dt_label(rl_ctx *ctx, int dt) {
  static char buf[32];
  snprintf(buf, sizeof buf, "%s%s", dtype_name(dt),
           rl_get_option(ctx, (const uint8_t *)"int8_activations") == 1 ? "+i8" : "");
  return buf;
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Best and median of n samples (sorts t). */
static void best_median(double *t, int n, double *best, double *median) {
  qsort(t, (size_t)n, sizeof t[0], cmp_double);
  *best = t[0];
  *median = t[n / 2];
}

/* Times single rl_matmul calls, cycling over n_w weight matrices, for MIN_SECONDS (at least
 * MIN_CALLS calls). */
static void time_matmul(rl_ctx *ctx, float *out, const float *x, void **w, int n_w, int dt,
                        int M, int N, int K, double *best, double *median) {
  static double t[MAX_CALLS];
  int n = 0;
  for (double start = now(); n < MAX_CALLS && (n < MIN_CALLS || now() - start < MIN_SECONDS); n++) {
    const double t0 = now();
    check(ctx, rl_matmul(ctx, out, x, w[n % n_w], dt, NULL, 0, M, N, K));
    t[n] = now() - t0;
  }
  best_median(t, n, best, median);
}

/* cold: cycle through that many times COLD_BYTES of weight copies (0: one hot copy). */
static void bench_matmul(rl_ctx *ctx, int M, int N, int K, int dt, int cold) {
  if (K % rl_block_elems(dt) != 0) {
    printf("M=%-3d N=%-6d K=%-4d %-4s: K is not a multiple of the %s block (%d)\n", M, N, K,
           dtype_name(dt), dtype_name(dt), rl_block_elems(dt));
    return;
  }
  const size_t wbytes = (size_t)N * rl_row_bytes(dt, K);
  int n_w = cold ? (int)((COLD_BYTES * (size_t)cold + wbytes - 1) / wbytes) : 1;
  void **w = malloc(sizeof(void *) * (size_t)n_w);
  for (int i = 0; i < n_w; i++) w[i] = half_values((size_t)N * K, dt);
  float *x = half_values((size_t)M * K, RL_F32), *out = xmalloc(sizeof(float) * (size_t)M * N);
  double t, median;
  time_matmul(ctx, out, x, w, n_w, dt, M, N, K, &t, &median);
  printf("M=%-3d N=%-6d K=%-4d %-4s %-4s %9.1f us %7.1f GB/s %7.1f GFLOP/s  (median %.1f us)\n",
         M, N, K, dt_label(ctx, dt), cold ? "cold" : "hot", t * 1e6, (double)wbytes / t * 1e-9,
         2.0 * M * N * K / t * 1e-9, median * 1e6);
  for (int i = 0; i < n_w; i++) free(w[i]);
  free(w);
  free(x);
  free(out);
}

/* N x K of the per-layer matmuls (q, k, v, o, gate, up, down) and the lm_head. */
#define N_LAYERS 30
static const int layer_shapes[7][2] = {{576, 576},  {192, 576},  {192, 576}, {576, 576},
                                       {1536, 576}, {1536, 576}, {576, 1536}};
static const int head_shape[2] = {49152, 576};

/* The matmuls of forward passes over M rows, each pass through all weights in model order (the
 * lm_head on the last row only), repeated for MIN_SECONDS: best and median pass. */
static void bench_model(rl_ctx *ctx, int M, int dt) {
  void *w[N_LAYERS][7];
  double flop = 0.0, bytes = 0.0;
  for (int l = 0; l < N_LAYERS; l++)
    for (int i = 0; i < 7; i++) {
      w[l][i] = half_values((size_t)layer_shapes[i][0] * layer_shapes[i][1], dt);
      flop += 2.0 * M * layer_shapes[i][0] * layer_shapes[i][1];
      bytes += (double)layer_shapes[i][0] * (double)rl_row_bytes(dt, layer_shapes[i][1]);
    }
  void *head = half_values((size_t)head_shape[0] * head_shape[1], dt);
  flop += 2.0 * head_shape[0] * head_shape[1];
  bytes += (double)head_shape[0] * (double)rl_row_bytes(dt, head_shape[1]);
  float *x = half_values((size_t)M * 1536, RL_F32);
  float *out = xmalloc(sizeof(float) * (size_t)M * head_shape[0]);
  static double t[MAX_CALLS];
  int n = 0;
  for (double start = now(); n < MAX_CALLS && (n < MIN_CALLS || now() - start < 3 * MIN_SECONDS);
       n++) {
    const double t0 = now();
    for (int l = 0; l < N_LAYERS; l++)
      for (int i = 0; i < 7; i++)
        check(ctx, rl_matmul(ctx, out, x, w[l][i], dt, NULL, 0, M, layer_shapes[i][0],
                             layer_shapes[i][1]));
    check(ctx, rl_matmul(ctx, out, x, head, dt, NULL, 0, 1, head_shape[0], head_shape[1]));
    t[n] = now() - t0;
  }
  double best, median;
  best_median(t, n, &best, &median);
  printf("%-7s M=%-3d %-4s %8.2f ms %7.1f GB/s %7.1f GFLOP/s  (median %.2f ms)\n",
         M == 1 ? "decode" : "prefill", M, dt_label(ctx, dt), best * 1e3, bytes / best * 1e-9,
         flop / best * 1e-9, median * 1e3);
  for (int l = 0; l < N_LAYERS; l++)
    for (int i = 0; i < 7; i++) free(w[l][i]);
  free(head);
  free(x);
  free(out);
}

/* sqrt without libm (the bench links none): Newton's iteration. */
static double sqrt_d(double v) {
  double y = v > 1 ? v : 1;
  for (int i = 0; i < 200 && v > 0; i++) y = 0.5 * (y + v / y);
  return v > 0 ? y : 0;
}

/* The int8 path's error against the f32 one on random data: W of random quants and f16 scales
 * in [2^-8, 2^-6), x uniform in (-1, 1) (outliers: every 50th value times 20). relRms is
 * rms(on - off) / rms(off), max is max|on - off| / max|off|. */
static void bench_i8_error(rl_ctx *ctx, int dt, int N, int K, int outliers) {
  const size_t wbytes = (size_t)N * rl_row_bytes(dt, K), bb = (size_t)rl_block_bytes(dt);
  uint8_t *w = xmalloc(wbytes);
  float *x = xmalloc(sizeof(float) * (size_t)K), *out[2];
  uint32_t r = 777;
#define RND() (r = r * 1664525u + 1013904223u, r >> 8)
  for (size_t i = 0; i < wbytes; i++) w[i] = (uint8_t)RND();
  for (size_t b = 0; b < wbytes; b += bb) {
    const uint32_t h = 0x1c00 + RND() % 0x0800;
    w[b] = (uint8_t)h, w[b + 1] = (uint8_t)(h >> 8);
    if (dt == RL_Q4_1 || dt == RL_Q5_1) { /* the min m: -(about 8 scales), as quantizers make */
      const uint32_t m = 0x8000 | (0x2800 + RND() % 0x0800);
      w[b + 2] = (uint8_t)m, w[b + 3] = (uint8_t)(m >> 8);
    } else if (dt == RL_Q4_K) { /* dmin like d (the 6-bit scales and mins: random) */
      const uint32_t m = 0x1c00 + RND() % 0x0800;
      w[b + 2] = (uint8_t)m, w[b + 3] = (uint8_t)(m >> 8);
    }
  }
  for (int k = 0; k < K; k++)
    x[k] = ((float)RND() * 0x1p-24f * 2.0f - 1.0f) * (outliers && k % 50 == 7 ? 20.0f : 1.0f);
#undef RND
  for (int i = 0; i < 2; i++) {
    out[i] = xmalloc(sizeof(float) * (size_t)N);
    rl_set_option(ctx, (const uint8_t *)"int8_activations", i);
    check(ctx, rl_matmul(ctx, out[i], x, w, dt, NULL, 0, 1, N, K));
  }
  rl_set_option(ctx, (const uint8_t *)"int8_activations", 0);
  double se = 0, so = 0, me = 0, mo = 0;
  for (int n = 0; n < N; n++) {
    const double e = (double)out[1][n] - out[0][n];
    se += e * e;
    so += (double)out[0][n] * out[0][n];
    me = e < 0 ? (-e > me ? -e : me) : (e > me ? e : me);
    const double a = out[0][n] < 0 ? -(double)out[0][n] : out[0][n];
    mo = a > mo ? a : mo;
  }
  printf("N=%-6d K=%-4d %-4s x %-12s relRms %.2e  max %.2e\n", N, K, dtype_name(dt),
         outliers ? "with outliers" : "uniform", sqrt_d(se / so), me / mo);
  free(w);
  free(x);
  free(out[0]);
  free(out[1]);
}

/* Whether the int8 part runs dtype dt: every one when only is NULL, else those named in it. */
static int i8_dtype_on(int dt, const char *only) {
  return !only || strstr(only, dtype_name(dt)) != NULL;
}

int main(int argc, char **argv) {
  const int n_threads = argc > 1 ? atoi(argv[1]) : 0;
  const char *sections = argc > 2 ? argv[2] : "memory,gemv,gemm,decode,prefill";
  const char *i8_only = argc > 3 ? argv[3] : NULL; /* the int8 part's dtypes, e.g. q4_1,q5_0 */
  rl_ctx *ctx = rl_create(n_threads, 0);
  if (!ctx) {
    char msg[512];
    rl_last_error(NULL, (uint8_t *)msg, sizeof msg);
    fprintf(stderr, "bench: %s\n", msg);
    return 1;
  }
  char info[256];
  rl_backend_info((uint8_t *)info, sizeof info);
  printf("%s, threads=%d\n", info, n_threads > 0 ? n_threads : omp_get_num_procs());

  if (strstr(sections, "memory")) {
    printf("\n");
    bench_memory(n_threads > 0 ? n_threads : omp_get_num_procs());
  }

  if (strstr(sections, "gemv")) {
    printf("\nGEMV (M = 1); GB/s counts weight bytes\n");
    static const int gemv[][2] = {{576, 576}, {192, 576}, {1536, 576}, {576, 1536}, {49152, 576}};
    for (int dt = RL_F32; dt <= RL_BF16; dt++) {
      bench_matmul(ctx, 1, 576, 576, dt, 0);
      for (int s = 0; s < 5; s++) bench_matmul(ctx, 1, gemv[s][0], gemv[s][1], dt, 1);
    }
  }

  if (strstr(sections, "gemm")) {
    printf("\nGEMM (prefill)\n");
    static const int gemm[][2] = {{576, 576}, {192, 576}, {1536, 576}, {576, 1536}};
    for (int dt = RL_F32; dt <= RL_BF16; dt++)
      for (int s = 0; s < 4; s++) bench_matmul(ctx, 64, gemm[s][0], gemm[s][1], dt, 0);
    static const int gemm_m[] = {2, 5, 16, 256};
    for (int i = 0; i < 4; i++) bench_matmul(ctx, gemm_m[i], 1536, 576, RL_F32, 0);
  }

  if (strstr(sections, "quant")) {
    printf("\nBlock formats; GB/s counts weight bytes (M = 1 cycles through 1 GiB of copies)\n");
    static const int dts[] = {RL_F32, RL_F16, RL_Q8_0, RL_Q4_0, RL_Q4_1, RL_Q4_K, RL_Q6_K};
    static const int shapes[][2] = {{4096, 4096}, {1536, 576}};
    for (int s = 0; s < 2; s++)
      for (int i = 0; i < 7; i++) bench_matmul(ctx, 1, shapes[s][0], shapes[s][1], dts[i], 2);
    for (int s = 0; s < 2; s++)
      for (int i = 0; i < 7; i++) bench_matmul(ctx, 64, shapes[s][0], shapes[s][1], dts[i], 0);
  }

  if (strstr(sections, "quant") || strstr(sections, "int8")) {
    printf("\nint8 activations (option int8_activations), M = 1 cold, off then on (+i8)\n");
    static const int i8_shapes[][2] = {{4096, 4096}, {576, 576},  {192, 576},
                                       {1536, 576},  {576, 1536}, {49152, 576}};
    static const int i8_dts[] = {RL_Q8_0, RL_Q4_0, RL_Q4_1, RL_Q5_0, RL_Q5_1, RL_Q4_K};
    for (int d = 0; d < 6; d++)
      for (int s = 0; s < 6 && i8_dtype_on(i8_dts[d], i8_only); s++)
        for (int on = 0; on < 2 && i8_shapes[s][1] % rl_block_elems(i8_dts[d]) == 0; on++) {
          rl_set_option(ctx, (const uint8_t *)"int8_activations", on);
          bench_matmul(ctx, 1, i8_shapes[s][0], i8_shapes[s][1], i8_dts[d], 2);
        }
    for (int d = 0; d < 6; d++)
      for (int on = 0; on < 2 && i8_dtype_on(i8_dts[d], i8_only) && i8_dts[d] != RL_Q4_K; on++) {
        rl_set_option(ctx, (const uint8_t *)"int8_activations", on);
        bench_model(ctx, 1, i8_dts[d]);
      }
    rl_set_option(ctx, (const uint8_t *)"int8_activations", 0);
    printf("\nint8 activations: error against the f32 path (random W and x)\n");
    for (int d = 0; d < 6; d++)
      for (int s = 0; s < 6 && i8_dtype_on(i8_dts[d], i8_only); s++)
        for (int o = 0; o < 2 && i8_shapes[s][1] % rl_block_elems(i8_dts[d]) == 0; o++)
          bench_i8_error(ctx, i8_dts[d], i8_shapes[s][0], i8_shapes[s][1], o);
  }

  if (strstr(sections, "decode") || strstr(sections, "prefill"))
    printf("\nOne forward pass's matmuls (%d layers + lm_head on one row)\n", N_LAYERS);
  for (int dt = RL_F32; dt <= RL_BF16; dt++) {
    if (strstr(sections, "decode")) bench_model(ctx, 1, dt);
    if (strstr(sections, "prefill")) bench_model(ctx, 64, dt);
  }
  rl_destroy(ctx);
  return 0;
}
