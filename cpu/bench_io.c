/*
 * The physical bounds `deno task bench` compares against (not part of the library):
 *
 *   build/bench_io mem          memory read bandwidth, every core (what a decode GEMV can reach)
 *   build/bench_io disk FILE..  sequential read of the files, page cache dropped first: direct
 *                               I/O in 4 MiB chunks taken in order by 4 threads (a deep queue,
 *                               the most a sequential stream gets from the device), best of 2
 *   build/bench_io drop FILE..  drops the files from the page cache (a cold start for a row)
 *
 * Prints one JSON line: {"memory_gbps": x} or {"disk_gbps": x, "bytes": n}. GB = 1e9 bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Best of 5 passes summing a 1 GiB buffer with all threads (32 independent accumulators each,
 * four vectors' worth, so the loop is bound by loads, not by add latency). */
static int memory(void) {
  const size_t n = (size_t)1 << 28; /* floats: 1 GiB */
  float *a = aligned_alloc(4096, n * sizeof *a);
  if (!a) {
    fprintf(stderr, "bench_io: out of memory\n");
    return 1;
  }
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) a[i] = (float)(i & 7);
  double best = 0.0, sink = 0.0;
  for (int pass = 0; pass < 5; pass++) {
    const double t = now();
    double total = 0.0;
#pragma omp parallel reduction(+ : total)
    {
      float s[32] = {0};
#pragma omp for schedule(static)
      for (size_t i = 0; i < n; i += 32)
        for (int k = 0; k < 32; k++) s[k] += a[i + k];
      for (int k = 0; k < 32; k++) total += s[k];
    }
    const double gbps = (double)(n * sizeof *a) / (now() - t) / 1e9;
    if (gbps > best) best = gbps;
    sink += total;
  }
  printf("{\"memory_gbps\": %.2f, \"threads\": %d, \"checksum\": %.0f}\n", best,
         omp_get_max_threads(), sink);
  free(a);
  return 0;
}

/* Drops the files' pages from the page cache (pages someone maps stay). */
static int drop(int n_files, char **files) {
  int failed = 0;
  for (int i = 0; i < n_files; i++) {
    int fd = open(files[i], O_RDONLY);
    if (fd < 0 || posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0) {
      fprintf(stderr, "bench_io: dropping %s from the page cache: %s\n", files[i], strerror(errno));
      failed = 1;
    }
    if (fd >= 0) close(fd);
  }
  return failed;
}

/* The files as one sequence of CHUNK-byte reads, taken in order by READERS threads: a deep queue
 * of large sequential direct reads, the most the device gives a sequential stream. */
#define CHUNK (4u << 20)
#define READERS 4
typedef struct {
  int n_files;
  int *fds;
  uint64_t *sizes;
  uint64_t next; /* chunk index over all files, taken under lock */
  uint64_t bytes;
  int failed;
  pthread_mutex_t lock;
} disk_job;

static void *reader(void *arg) {
  disk_job *d = arg;
  void *buf = NULL;
  if (posix_memalign(&buf, 4096, CHUNK) != 0) return NULL;
  for (;;) {
    pthread_mutex_lock(&d->lock);
    uint64_t k = d->next++;
    pthread_mutex_unlock(&d->lock);
    int f = 0;
    while (f < d->n_files && k >= (d->sizes[f] + CHUNK - 1) / CHUNK) k -= (d->sizes[f++] + CHUNK - 1) / CHUNK;
    if (f == d->n_files) break;
    const ssize_t r = pread(d->fds[f], buf, CHUNK, (off_t)(k * CHUNK));
    pthread_mutex_lock(&d->lock);
    if (r < 0) d->failed = 1;
    else d->bytes += (uint64_t)r;
    pthread_mutex_unlock(&d->lock);
  }
  free(buf);
  return NULL;
}

/* Best of two passes over the files (dropped from the page cache first; direct I/O). */
static int disk(int n_files, char **files) {
  disk_job d = {.n_files = n_files};
  d.fds = calloc((size_t)n_files, sizeof *d.fds);
  d.sizes = calloc((size_t)n_files, sizeof *d.sizes);
  pthread_mutex_init(&d.lock, NULL);
  for (int i = 0; i < n_files; i++) {
    struct stat st;
    d.fds[i] = open(files[i], O_RDONLY | O_DIRECT);
    if (d.fds[i] < 0) d.fds[i] = open(files[i], O_RDONLY); /* a file system without O_DIRECT */
    if (d.fds[i] < 0 || fstat(d.fds[i], &st) != 0) {
      fprintf(stderr, "bench_io: %s: %s\n", files[i], strerror(errno));
      return 1;
    }
    d.sizes[i] = (uint64_t)st.st_size;
  }
  double best = 0.0;
  for (int pass = 0; pass < 2; pass++) {
    drop(n_files, files);
    d.next = d.bytes = 0;
    pthread_t t[READERS];
    const double t0 = now();
    for (int i = 0; i < READERS; i++) pthread_create(&t[i], NULL, reader, &d);
    for (int i = 0; i < READERS; i++) pthread_join(t[i], NULL);
    const double gbps = (double)d.bytes / (now() - t0) / 1e9;
    if (gbps > best) best = gbps;
  }
  if (d.failed) {
    fprintf(stderr, "bench_io: a read failed\n");
    return 1;
  }
  printf("{\"disk_gbps\": %.3f, \"bytes\": %llu}\n", best, (unsigned long long)d.bytes);
  for (int i = 0; i < n_files; i++) close(d.fds[i]);
  free(d.fds);
  free(d.sizes);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "mem") == 0) return memory();
  if (argc >= 3 && strcmp(argv[1], "disk") == 0) return disk(argc - 2, argv + 2);
  if (argc >= 3 && strcmp(argv[1], "drop") == 0) return drop(argc - 2, argv + 2);
  fprintf(stderr, "usage: bench_io mem | bench_io disk FILE... | bench_io drop FILE...\n");
  return 2;
}
