/*
 * The physical bounds `deno task bench` compares against (not part of the library):
 *
 *   build/bench_io mem          memory read bandwidth, every core (what a decode GEMV can reach)
 *   build/bench_io disk FILE..  sequential read of the files with their page cache dropped first,
 *                               the way the engine streams a layer that does not fit (direct I/O,
 *                               one whole file per read, in order)
 *   build/bench_io drop FILE..  drops the files from the page cache (a cold start for a row)
 *
 * Prints one JSON line: {"memory_gbps": x} or {"disk_gbps": x, "bytes": n}. GB = 1e9 bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <omp.h>
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

static int disk(int n_files, char **files) {
  const size_t align = 4096;
  size_t cap = 0;
  for (int i = 0; i < n_files; i++) {
    struct stat st;
    if (stat(files[i], &st) != 0) {
      fprintf(stderr, "bench_io: %s: %s\n", files[i], strerror(errno));
      return 1;
    }
    if ((size_t)st.st_size > cap) cap = (size_t)st.st_size;
  }
  cap = (cap + align - 1) / align * align;
  void *buf = NULL;
  if (posix_memalign(&buf, align, cap) != 0) {
    fprintf(stderr, "bench_io: out of memory for %zu bytes\n", cap);
    return 1;
  }
  drop(n_files, files); /* page cache dropped first */
  uint64_t bytes = 0;
  const double t = now();
  for (int i = 0; i < n_files; i++) {
    int fd = open(files[i], O_RDONLY | O_DIRECT);
    if (fd < 0) fd = open(files[i], O_RDONLY); /* a file system without O_DIRECT */
    if (fd < 0) {
      fprintf(stderr, "bench_io: %s: %s\n", files[i], strerror(errno));
      return 1;
    }
    for (;;) {
      const ssize_t r = read(fd, buf, cap);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        fprintf(stderr, "bench_io: reading %s: %s\n", files[i], strerror(errno));
        return 1;
      }
      if (r == 0) break;
      bytes += (uint64_t)r;
    }
    close(fd);
  }
  printf("{\"disk_gbps\": %.3f, \"bytes\": %llu}\n", (double)bytes / (now() - t) / 1e9,
         (unsigned long long)bytes);
  free(buf);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "mem") == 0) return memory();
  if (argc >= 3 && strcmp(argv[1], "disk") == 0) return disk(argc - 2, argv + 2);
  if (argc >= 3 && strcmp(argv[1], "drop") == 0) return drop(argc - 2, argv + 2);
  fprintf(stderr, "usage: bench_io mem | bench_io disk FILE... | bench_io drop FILE...\n");
  return 2;
}
