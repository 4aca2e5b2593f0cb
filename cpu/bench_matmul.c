/*
 * Matmul benchmark for the CPU backend: GEMV (M = 1) bandwidth against this machine's memory
 * bandwidth, and small-batch GEMM throughput. Build and run: sh cpu/bench.sh [n_threads]
 *
 * GEMV is reported twice: "hot" repeats one weight matrix (it may sit in cache), "cold" cycles
 * through enough copies to exceed the last-level cache, as decode does across layers.
 * Each line shows the best single call (GB/s of weights, GFLOP/s) and the median call.
 */
#define _POSIX_C_SOURCE 200809L
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rabbitllm.h"

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

/* n elements of dtype dt, all 0.5 (so no product is subnormal: those take slow microcode paths) */
static void *half_values(size_t n, int dt) {
  void *p = xmalloc(n * (dt == RL_F32 ? 4 : 2));
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

static const char *dtype_name[] = {"f32", "f16", "bf16"};

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Times single rl_matmul calls, cycling over n_w weight matrices, for MIN_SECONDS (at least
 * MIN_CALLS calls): the best call shows what the kernel can do, the median what this machine
 * gave it (other processes share the cores). */
static void time_matmul(rl_ctx *ctx, float *out, const float *x, void **w, int n_w, int dt,
                        int M, int N, int K, double *best, double *median) {
  static double t[MAX_CALLS];
  int n = 0;
  for (double start = now(); n < MAX_CALLS && (n < MIN_CALLS || now() - start < MIN_SECONDS); n++) {
    const double t0 = now();
    check(ctx, rl_matmul(ctx, out, x, w[n % n_w], dt, NULL, 0, M, N, K));
    t[n] = now() - t0;
  }
  qsort(t, (size_t)n, sizeof t[0], cmp_double);
  *best = t[0];
  *median = t[n / 2];
}

static void bench_matmul(rl_ctx *ctx, int M, int N, int K, int dt, int cold) {
  const size_t wbytes = (size_t)N * K * (dt == RL_F32 ? 4 : 2);
  int n_w = cold ? (int)((COLD_BYTES + wbytes - 1) / wbytes) : 1;
  void **w = malloc(sizeof(void *) * (size_t)n_w);
  for (int i = 0; i < n_w; i++) w[i] = half_values((size_t)N * K, dt);
  float *x = half_values((size_t)M * K, RL_F32), *out = xmalloc(sizeof(float) * (size_t)M * N);
  double t, median;
  time_matmul(ctx, out, x, w, n_w, dt, M, N, K, &t, &median);
  printf("M=%-3d N=%-6d K=%-4d %-4s %-4s %9.1f us %7.1f GB/s %7.1f GFLOP/s  (median %.1f us)\n",
         M, N, K, dtype_name[dt], cold ? "cold" : "hot", t * 1e6, (double)wbytes / t * 1e-9,
         2.0 * M * N * K / t * 1e-9, median * 1e6);
  for (int i = 0; i < n_w; i++) free(w[i]);
  free(w);
  free(x);
  free(out);
}

int main(int argc, char **argv) {
  const int n_threads = argc > 1 ? atoi(argv[1]) : 0;
  rl_ctx *ctx = rl_create(n_threads, 0);
  if (!ctx) {
    char msg[512];
    rl_last_error(NULL, (uint8_t *)msg, sizeof msg);
    fprintf(stderr, "bench: %s\n", msg);
    return 1;
  }
  char info[256];
  rl_backend_info((uint8_t *)info, sizeof info);
  printf("%s, threads=%d\n\n", info, n_threads > 0 ? n_threads : omp_get_num_procs());
  bench_memory(n_threads > 0 ? n_threads : omp_get_num_procs());

  printf("\nGEMV (M = 1); GB/s counts weight bytes\n");
  static const int gemv[][2] = {{576, 576}, {1536, 576}, {576, 1536}, {49152, 576}};
  for (int s = 0; s < 4; s++)
    for (int dt = RL_F32; dt <= RL_BF16; dt++)
      for (int cold = 0; cold <= 1; cold++) bench_matmul(ctx, 1, gemv[s][0], gemv[s][1], dt, cold);

  printf("\nGEMM (prefill)\n");
  static const int gemm_m[] = {8, 16, 32, 64, 256};
  for (int i = 0; i < 5; i++)
    for (int dt = RL_F32; dt <= RL_BF16; dt++) {
      bench_matmul(ctx, gemm_m[i], 576, 576, dt, 0);
      bench_matmul(ctx, gemm_m[i], 1536, 576, dt, 0);
    }
  rl_destroy(ctx);
  return 0;
}
