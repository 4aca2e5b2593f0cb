// Pinned and pageable host -> device copy bandwidth of this machine, the physical bound that
// `deno task bench --device cuda` compares layer streaming against.
//   nvcc -O2 -o build/bench_h2d cuda/bench_h2d.cu && build/bench_h2d [MiB]
// Prints one JSON line: {"device", "pinned_gbps", "pageable_gbps", "bytes"}.
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(x)                                                                                  \
  do {                                                                                            \
    cudaError_t e_ = (x);                                                                         \
    if (e_ != cudaSuccess) {                                                                      \
      fprintf(stderr, "bench_h2d: %s: %s (%s:%d)\n", #x, cudaGetErrorString(e_), __FILE__,         \
              __LINE__);                                                                          \
      return 1;                                                                                   \
    }                                                                                             \
  } while (0)

// Best of `reps` copies of `bytes` from src to dst, in GB/s.
static int best_gbps(void *dst, const void *src, size_t bytes, int reps, double *out) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  float best = 1e30f;
  for (int i = 0; i < reps; i++) {
    CHECK(cudaEventRecord(a));
    CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice));
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    if (ms < best) best = ms;
  }
  *out = (double)bytes / (best * 1e-3) / 1e9;
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  return 0;
}

int main(int argc, char **argv) {
  size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 1024;
  size_t bytes = mib << 20;
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  void *dev, *pinned, *pageable = malloc(bytes);
  if (!pageable) return fprintf(stderr, "bench_h2d: out of host memory\n"), 1;
  CHECK(cudaMalloc(&dev, bytes));
  CHECK(cudaHostAlloc(&pinned, bytes, cudaHostAllocDefault));
  for (size_t i = 0; i < bytes; i += 4096) ((char *)pinned)[i] = ((char *)pageable)[i] = (char)i;
  double pinned_gbps, pageable_gbps;
  if (best_gbps(dev, pinned, bytes, 5, &pinned_gbps) || best_gbps(dev, pageable, bytes, 3, &pageable_gbps))
    return 1;
  printf("{\"device\": \"%s\", \"pinned_gbps\": %.2f, \"pageable_gbps\": %.2f, \"bytes\": %zu}\n",
         prop.name, pinned_gbps, pageable_gbps, bytes);
  CHECK(cudaFreeHost(pinned));
  CHECK(cudaFree(dev));
  free(pageable);
  return 0;
}
