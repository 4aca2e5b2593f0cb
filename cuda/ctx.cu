/*
 * CUDA backend: library info, contexts, errors, statistics, memory (device and pinned host) and
 * copies, scratch and parameter uploads, options, timing marks, the I/O thread of
 * rl_load_start/rl_upload_start/rl_load_wait, and the (unsupported) mapped-file entries.
 *
 * Every entry makes the context's device current first (Deno may call from any thread). Ops are
 * asynchronous on ctx->compute; rl_upload, rl_download, rl_argmax and rl_sync block the host.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <new>

#include "internal.h"

/* ----------------------------------------------------------------------------------------------
 * Errors */

/* The error of calls made without a context (rl_create failure, NULL ctx); one for all threads. */
static char g_err[512];
static std::mutex g_err_lock;

static int32_t cu_vfail(rl_ctx *ctx, int32_t status, const char *op, const char *fmt,
                        va_list ap) {
  std::lock_guard<std::mutex> guard(ctx ? ctx->err_lock : g_err_lock);
  char *dst = ctx ? ctx->err : g_err;
  const size_t cap = ctx ? sizeof ctx->err : sizeof g_err;
  int n = snprintf(dst, cap, "%s: ", op);
  if (n >= 0 && (size_t)n < cap) vsnprintf(dst + n, cap - (size_t)n, fmt, ap);
  return status;
}

int32_t cu_fail(rl_ctx *ctx, int32_t status, const char *op, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  cu_vfail(ctx, status, op, fmt, ap);
  va_end(ap);
  return status;
}

int32_t cu_fail_cuda(rl_ctx *ctx, const char *op, cudaError_t e, const char *file, int line) {
  (void)cudaGetLastError(); /* so a later launch check does not report this error again */
  const int32_t status = e == cudaErrorMemoryAllocation ? RL_ERR_OOM : RL_ERR_DEVICE;
  return cu_fail(ctx, status, op, "%s (%s:%d)", cudaGetErrorString(e), file, line);
}

bool sync_every_op() {
  static const bool on = [] {
    const char *v = getenv("RABBITLLM_CUDA_SYNC");
    const bool set = v && strcmp(v, "1") == 0;
    if (set)
      fprintf(stderr, "rabbitllm cuda: RABBITLLM_CUDA_SYNC=1: synchronizing after every kernel "
                      "and copy to name the op that fails (slow; for diagnosis only)\n");
    return set;
  }();
  return on;
}

int32_t launch_check(rl_ctx *ctx, const char *op, const char *file, int line) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return cu_fail_cuda(ctx, op, e, file, line);
  if (!sync_every_op()) return RL_OK;
  e = cudaStreamSynchronize(ctx->compute);
  if (e == cudaSuccess) return RL_OK;
  (void)cudaGetLastError();
  return cu_fail(ctx, e == cudaErrorMemoryAllocation ? RL_ERR_OOM : RL_ERR_DEVICE, op,
                 "the kernel failed: %s (RABBITLLM_CUDA_SYNC=1 synchronized after the launch at "
                 "%s:%d; a fault is sticky: the process's CUDA context is unusable from now on)",
                 cudaGetErrorString(e), file, line);
}

/* ----------------------------------------------------------------------------------------------
 * The pinned 64 MiB staging buffers of loads, pooled per process: a context takes two when its
 * first load into device memory runs and gives them back when it is destroyed, so a process that
 * creates many contexts (one after another) pins 2 x 64 MiB, not 2 per context. Allocated
 * portable (usable from every device's context); kept until the process exits. */

static std::mutex g_staging_lock;
static std::vector<void *> g_staging_pool;

static cudaError_t take_staging(void **p) {
  {
    std::lock_guard<std::mutex> guard(g_staging_lock);
    if (!g_staging_pool.empty()) {
      *p = g_staging_pool.back();
      g_staging_pool.pop_back();
      return cudaSuccess;
    }
  }
  return cudaHostAlloc(p, LOAD_CHUNK, cudaHostAllocPortable);
}

/* The caller has made sure no copy out of p is pending. */
static void give_staging(void *p) {
  std::lock_guard<std::mutex> guard(g_staging_lock);
  try {
    if (g_staging_pool.size() < 4) {
      g_staging_pool.push_back(p);
      return;
    }
  } catch (...) {
  }
  (void)cudaFreeHost(p);
}

RL_API int64_t rl_last_error(rl_ctx *ctx, uint8_t *buf, int64_t cap) {
  std::lock_guard<std::mutex> guard(ctx ? ctx->err_lock : g_err_lock);
  return rl_copy_string(ctx ? ctx->err : g_err, buf, cap);
}

/* ----------------------------------------------------------------------------------------------
 * Library */

RL_API uint32_t rl_abi_version(void) { return RL_ABI_VERSION; }

RL_API int64_t rl_backend_info(uint8_t *buf, int64_t cap) {
  char info[512];
  int runtime = 0, driver = 0, count = 0, dev = 0;
  (void)cudaRuntimeGetVersion(&runtime);
  (void)cudaDriverGetVersion(&driver);
  cudaDeviceProp prop;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count <= 0 || cudaGetDevice(&dev) != cudaSuccess ||
      cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    snprintf(info, sizeof info, "cuda (no device) runtime %d.%d", runtime / 1000,
             runtime % 1000 / 10);
  } else {
    snprintf(info, sizeof info, "cuda sm_%d%d %s devices=%d driver %d.%d runtime %d.%d",
             prop.major, prop.minor, prop.name, count, driver / 1000, driver % 1000 / 10,
             runtime / 1000, runtime % 1000 / 10);
  }
  return rl_copy_string(info, buf, cap);
}

/* ----------------------------------------------------------------------------------------------
 * Context */

static void loader_stop(rl_ctx *ctx);

/* Releases everything ctx owns; safe on a partly created context and after a sticky device
 * error (failures are ignored: there is nobody left to report them to). */
static void destroy_ctx(rl_ctx *ctx) {
  (void)cudaSetDevice(ctx->device);
  loader_stop(ctx);
  if (ctx->compute) (void)cudaStreamSynchronize(ctx->compute);
  if (ctx->transfer) (void)cudaStreamSynchronize(ctx->transfer);
  for (auto &a : ctx->allocs) (void)cudaFree(a.first);
  for (auto &h : ctx->host_allocs) (void)cudaFreeHost((void *)h.first);
  for (auto &s : ctx->scratch)
    if (s.p) (void)cudaFree(s.p);
  for (auto &s : ctx->stages) {
    if (s.p) (void)cudaFreeHost(s.p);
    if (s.copied) (void)cudaEventDestroy(s.copied);
  }
  for (cudaEvent_t e : ctx->marks) (void)cudaEventDestroy(e);
  loader &L = ctx->load;
  for (cudaEvent_t e : L.free_events) (void)cudaEventDestroy(e);
  for (auto &r : L.results)
    if (r.second.finished) (void)cudaEventDestroy(r.second.finished);
  for (int i = 0; i < 2; i++) {
    /* Both streams were drained above: no copy out of the staging buffers is pending. */
    if (L.pinned[i]) give_staging(L.pinned[i]);
    free(L.pageable[i]);
    if (L.staged[i]) (void)cudaEventDestroy(L.staged[i]);
    if (L.uploaded[i]) (void)cudaEventDestroy(L.uploaded[i]);
  }
  if (ctx->compute) (void)cudaStreamDestroy(ctx->compute);
  if (ctx->transfer) (void)cudaStreamDestroy(ctx->transfer);
  (void)cudaGetLastError();
  delete ctx;
}

/* Device properties, streams and the small-upload stages of a new context. */
static int32_t init_ctx(rl_ctx *ctx) {
  const char *const op = "rl_create";
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, ctx->device));
  if (prop.major < 8)
    return cu_fail(ctx, RL_ERR_UNSUPPORTED, op,
                   "device %d (%s) is sm_%d%d; this build needs sm_80 or newer", ctx->device,
                   prop.name, prop.major, prop.minor);
  ctx->cc_major = prop.major;
  ctx->cc_minor = prop.minor;
  ctx->sm_count = prop.multiProcessorCount;
  ctx->smem_optin = prop.sharedMemPerBlockOptin;
  ctx->total_memory = prop.totalGlobalMem;
  CUDA_CHECK(cudaSetDevice(ctx->device));
  CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->compute, cudaStreamNonBlocking));
  CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->transfer, cudaStreamNonBlocking));
  try {
    ctx->stages.resize(MIN_HOST_STAGES);
  } catch (...) {
    return cu_fail(ctx, RL_ERR_OOM, op, "out of host memory for the upload stages");
  }
  for (auto &s : ctx->stages)
    CUDA_CHECK(cudaEventCreateWithFlags(&s.copied, cudaEventDisableTiming));
  return RL_OK;
}

RL_API rl_ctx *rl_create(int32_t n_threads, int32_t device) {
  (void)n_threads; /* the GPU decides its own parallelism */
  const char *const op = __func__;
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    int driver = 0, runtime = 0;
    (void)cudaDriverGetVersion(&driver);
    (void)cudaRuntimeGetVersion(&runtime);
    if (driver == 0)
      cu_fail(NULL, RL_ERR_DEVICE, op,
              "no CUDA device: no NVIDIA driver found (libcuda.so.1 could not be loaded): %s",
              cudaGetErrorString(e));
    else if (e == cudaErrorInsufficientDriver)
      cu_fail(NULL, RL_ERR_DEVICE, op,
              "no CUDA device: the NVIDIA driver supports CUDA %d.%d, this library needs %d.%d",
              driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10);
    else
      cu_fail(NULL, RL_ERR_DEVICE, op, "no CUDA device: %s", cudaGetErrorString(e));
    return NULL;
  }
  if (count <= 0) {
    cu_fail(NULL, RL_ERR_DEVICE, op, "no CUDA device: the driver reports 0 devices");
    return NULL;
  }
  if (device < 0 || device >= count) {
    cu_fail(NULL, RL_ERR_INVALID, op, "device %d out of range: %d CUDA device(s)", device, count);
    return NULL;
  }
  rl_ctx *ctx = new (std::nothrow) rl_ctx();
  if (!ctx) {
    cu_fail(NULL, RL_ERR_OOM, op, "out of memory for the context (%zu bytes)", sizeof(rl_ctx));
    return NULL;
  }
  ctx->device = device;
  const int32_t status = init_ctx(ctx);
  if (status != RL_OK) {
    char msg[sizeof ctx->err];
    memcpy(msg, ctx->err, sizeof msg); /* already "rl_create: ..." */
    destroy_ctx(ctx);
    std::lock_guard<std::mutex> guard(g_err_lock);
    memcpy(g_err, msg, sizeof g_err);
    return NULL;
  }
  return ctx;
}

RL_API void rl_destroy(rl_ctx *ctx) {
  if (ctx) destroy_ctx(ctx);
}

RL_API int32_t rl_stats(rl_ctx *ctx, uint64_t *out, int32_t n) {
  ENTER();
  CHECK_ARGS(rl_check_stats, out, n);
  std::lock_guard<std::mutex> guard(ctx->stats_lock);
  memcpy(out, ctx->stats, (size_t)(n < RL_STAT_COUNT ? n : RL_STAT_COUNT) * sizeof *out);
  return RL_OK;
}

/* Waits for the ops issued on ctx (the compute stream). Loads are waited for by rl_load_wait. */
RL_API int32_t rl_sync(rl_ctx *ctx) {
  ENTER();
  CUDA_CHECK(cudaStreamSynchronize(ctx->compute));
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Memory */

static int32_t alloc_block(rl_ctx *ctx, uint64_t bytes, void **out) {
  ENTER_AS("rl_alloc");
  REQUIRE(bytes > 0, "bytes must be > 0, got 0");
  uint64_t live;
  {
    std::lock_guard<std::mutex> guard(ctx->stats_lock);
    live = ctx->stats[RL_STAT_LIVE_BYTES];
  }
  const uint64_t limit = (uint64_t)ctx->memory_limit;
  if (limit > 0 && bytes > limit - (live < limit ? live : limit))
    return cu_fail(ctx, RL_ERR_OOM, op,
                   "out of memory allocating %llu bytes of device memory (%llu free, %llu live; "
                   "device_memory_limit %llu)",
                   (unsigned long long)bytes, (unsigned long long)(live < limit ? limit - live : 0),
                   (unsigned long long)live, (unsigned long long)limit);
  void *p = NULL;
  const cudaError_t e = cudaMalloc(&p, bytes); /* 256-byte aligned */
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
    return cu_fail(ctx, e == cudaErrorMemoryAllocation ? RL_ERR_OOM : RL_ERR_DEVICE, op,
                   "out of memory allocating %llu bytes of device memory (%llu free, %llu live): %s",
                   (unsigned long long)bytes, (unsigned long long)free_b, (unsigned long long)live,
                   cudaGetErrorString(e));
  }
  try {
    ctx->allocs.emplace(p, bytes);
  } catch (...) {
    (void)cudaFree(p);
    return cu_fail(ctx, RL_ERR_OOM, op, "out of host memory for the allocation table");
  }
  std::lock_guard<std::mutex> guard(ctx->stats_lock);
  uint64_t *s = ctx->stats;
  s[RL_STAT_LIVE_BYTES] += bytes;
  if (s[RL_STAT_LIVE_BYTES] > s[RL_STAT_PEAK_BYTES]) s[RL_STAT_PEAK_BYTES] = s[RL_STAT_LIVE_BYTES];
  s[RL_STAT_ALLOCS]++;
  s[RL_STAT_LIVE_ALLOCS]++;
  *out = p;
  return RL_OK;
}

RL_API void *rl_alloc(rl_ctx *ctx, uint64_t bytes) {
  void *p = NULL;
  return alloc_block(ctx, bytes, &p) == RL_OK ? p : NULL;
}

/* Ops issued earlier may still use the block: the compute stream is drained first (cudaFree
 * usually waits for the device anyway). A load into the block must have been waited for. */
RL_API int32_t rl_free(rl_ctx *ctx, void *p) {
  ENTER();
  REQUIRE_PTR(p);
  auto it = ctx->allocs.find(p);
  REQUIRE(it != ctx->allocs.end(),
          "%p was not returned by rl_alloc on this context (a view, or already freed)", p);
  {
    std::lock_guard<std::mutex> guard(ctx->stats_lock);
    ctx->stats[RL_STAT_LIVE_BYTES] -= it->second;
    ctx->stats[RL_STAT_FREES]++;
    ctx->stats[RL_STAT_LIVE_ALLOCS]--;
  }
  ctx->allocs.erase(it);
  CUDA_CHECK(cudaStreamSynchronize(ctx->compute));
  CUDA_CHECK(cudaFree(p));
  return RL_OK;
}

RL_API void *rl_view(void *base, uint64_t byte_offset) { return (uint8_t *)base + byte_offset; }

/* The rl_host_alloc block of ctx holding address p: true and its base and size, or false. */
static bool find_host_block(const rl_ctx *ctx, const void *p, uintptr_t *base, uint64_t *size) {
  const uintptr_t a = (uintptr_t)p;
  auto it = ctx->host_allocs.upper_bound(a);
  if (it == ctx->host_allocs.begin()) return false;
  --it;
  if (a - it->first >= it->second) return false;
  *base = it->first;
  *size = it->second;
  return true;
}

static int32_t host_alloc_block(rl_ctx *ctx, uint64_t bytes, void **out) {
  ENTER_AS("rl_host_alloc");
  REQUIRE(bytes > 0, "bytes must be > 0, got 0");
  void *p = NULL;
  const cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocDefault); /* pinned, page-aligned */
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    uint64_t live;
    {
      std::lock_guard<std::mutex> guard(ctx->stats_lock);
      live = ctx->stats[RL_STAT_HOST_BYTES];
    }
    return cu_fail(ctx, e == cudaErrorMemoryAllocation ? RL_ERR_OOM : RL_ERR_DEVICE, op,
                   "out of memory allocating %llu bytes of pinned host memory (%llu live): %s",
                   (unsigned long long)bytes, (unsigned long long)live, cudaGetErrorString(e));
  }
  try {
    ctx->host_allocs.emplace((uintptr_t)p, bytes);
  } catch (...) {
    (void)cudaFreeHost(p);
    return cu_fail(ctx, RL_ERR_OOM, op, "out of host memory for the allocation table");
  }
  std::lock_guard<std::mutex> guard(ctx->stats_lock);
  ctx->stats[RL_STAT_HOST_BYTES] += bytes;
  *out = p;
  return RL_OK;
}

/* Pinned host memory (the host tier): rl_load_start reads files straight into it, and
 * rl_upload_start copies out of it asynchronously. */
RL_API void *rl_host_alloc(rl_ctx *ctx, uint64_t bytes) {
  void *p = NULL;
  return host_alloc_block(ctx, bytes, &p) == RL_OK ? p : NULL;
}

/* A copy out of the block runs on the transfer (or compute) stream even after its rl_load_wait,
 * which only orders the compute stream after it: both streams are drained before the block is
 * unpinned. */
RL_API int32_t rl_host_free(rl_ctx *ctx, void *p) {
  ENTER();
  REQUIRE_PTR(p);
  auto it = ctx->host_allocs.find((uintptr_t)p);
  REQUIRE(it != ctx->host_allocs.end(),
          "%p was not returned by rl_host_alloc on this context (a view, device memory, or "
          "already freed)",
          p);
  {
    std::lock_guard<std::mutex> guard(ctx->stats_lock);
    ctx->stats[RL_STAT_HOST_BYTES] -= it->second;
  }
  ctx->host_allocs.erase(it);
  CUDA_CHECK(cudaStreamSynchronize(ctx->transfer));
  CUDA_CHECK(cudaStreamSynchronize(ctx->compute));
  CUDA_CHECK(cudaFreeHost(p));
  return RL_OK;
}

/* The three copies differ in direction, in whether the host waits, and in the statistic. All are
 * issued on the compute stream, so they are ordered with the ops. */
static int32_t copy_bytes(rl_ctx *ctx, const char *name, void *dst, const void *src,
                          uint64_t bytes, cudaMemcpyKind kind, int stat) {
  ENTER_AS(name);
  CHECK_ARGS(rl_check_copy, dst, src, bytes);
  if (kind == cudaMemcpyDeviceToDevice)
    REQUIRE(!rl_ranges_overlap(dst, bytes, src, bytes), "dst %p and src %p overlap (%llu bytes)",
            dst, src, (unsigned long long)bytes);
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, ctx->compute));
  /* Host buffers from Deno are pageable and may be reused as soon as we return. */
  if (kind != cudaMemcpyDeviceToDevice || sync_every_op())
    CUDA_CHECK(cudaStreamSynchronize(ctx->compute));
  if (stat >= 0) {
    std::lock_guard<std::mutex> guard(ctx->stats_lock);
    ctx->stats[stat] += bytes;
  }
  return RL_OK;
}

RL_API int32_t rl_upload(rl_ctx *ctx, void *dst, const void *src, uint64_t bytes) {
  return copy_bytes(ctx, __func__, dst, src, bytes, cudaMemcpyHostToDevice, RL_STAT_H2D_BYTES);
}

RL_API int32_t rl_download(rl_ctx *ctx, void *dst, const void *src, uint64_t bytes) {
  return copy_bytes(ctx, __func__, dst, src, bytes, cudaMemcpyDeviceToHost, RL_STAT_D2H_BYTES);
}

RL_API int32_t rl_copy(rl_ctx *ctx, void *dst, const void *src, uint64_t bytes) {
  return copy_bytes(ctx, __func__, dst, src, bytes, cudaMemcpyDeviceToDevice, -1);
}

/* ----------------------------------------------------------------------------------------------
 * Scratch and parameter uploads */

int32_t scratch_reserve(rl_ctx *ctx, const char *op, int which, uint64_t bytes, void **out) {
  device_buffer &b = ctx->scratch[which];
  if (b.cap < bytes) {
    if (b.p) {
      CUDA_CHECK(cudaStreamSynchronize(ctx->compute)); /* earlier kernels may still read it */
      CUDA_CHECK(cudaFree(b.p));
      b.p = NULL;
      b.cap = 0;
    }
    uint64_t cap = b.cap + b.cap / 2;
    if (cap < bytes) cap = bytes;
    if (cap < 4096) cap = 4096;
    const cudaError_t e = cudaMalloc(&b.p, cap);
    if (e != cudaSuccess) {
      b.p = NULL;
      (void)cudaGetLastError();
      return cu_fail(ctx, e == cudaErrorMemoryAllocation ? RL_ERR_OOM : RL_ERR_DEVICE, op,
                     "cannot allocate %llu bytes of scratch: %s", (unsigned long long)cap,
                     cudaGetErrorString(e));
    }
    b.cap = cap;
  }
  *out = b.p;
  return RL_OK;
}

/* The next stage of the ring whose last copy has completed: a new one is inserted when that
 * copy is still pending (the host keeps running ahead), until the ring has MAX_HOST_STAGES;
 * then the host waits for it. */
static int32_t take_stage(rl_ctx *ctx, const char *op, host_stage **out) {
  std::vector<host_stage> &ring = ctx->stages;
  size_t i = ctx->next_stage < ring.size() ? ctx->next_stage : 0;
  const cudaError_t q = cudaEventQuery(ring[i].copied); /* never recorded: done */
  if (q == cudaErrorNotReady) {
    (void)cudaGetLastError(); /* some runtimes leave "not ready" as the last error */
    if (ring.size() < MAX_HOST_STAGES) {
      host_stage fresh;
      CUDA_CHECK(cudaEventCreateWithFlags(&fresh.copied, cudaEventDisableTiming));
      try {
        ring.insert(ring.begin() + (std::ptrdiff_t)i, fresh); /* i + 1 is the oldest again */
      } catch (...) {
        (void)cudaEventDestroy(fresh.copied);
        return cu_fail(ctx, RL_ERR_OOM, op, "out of host memory for an upload stage");
      }
    } else {
      CUDA_CHECK(cudaEventSynchronize(ring[i].copied));
    }
  } else {
    CUDA_CHECK(q);
  }
  ctx->next_stage = i + 1;
  *out = &ring[i];
  return RL_OK;
}

int32_t upload_params(rl_ctx *ctx, const char *op, int which, const void *host, uint64_t bytes,
                      void **out) {
  void *dev = NULL;
  TRY(scratch_reserve(ctx, op, which, bytes, &dev));
  host_stage *stage = NULL;
  TRY(take_stage(ctx, op, &stage));
  host_stage &s = *stage;
  if (s.cap < bytes) {
    if (s.p) CUDA_CHECK(cudaFreeHost(s.p));
    s.p = NULL;
    s.cap = 0;
    const uint64_t cap = bytes < 65536 ? 65536 : bytes;
    CUDA_CHECK(cudaHostAlloc(&s.p, cap, cudaHostAllocDefault));
    s.cap = cap;
  }
  memcpy(s.p, host, bytes);
  CUDA_CHECK(cudaMemcpyAsync(dev, s.p, bytes, cudaMemcpyHostToDevice, ctx->compute));
  CUDA_CHECK(cudaEventRecord(s.copied, ctx->compute));
  if (sync_every_op()) CUDA_CHECK(cudaStreamSynchronize(ctx->compute));
  *out = dev;
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Options */

static const char *const OPTION_KEYS[5] = {"attn_impl", "pin_memory", "async_copy",
                                           "drop_behind", "device_memory_limit"};

static int option_index(const uint8_t *key) {
  for (int i = 0; i < 5; i++)
    if (strcmp((const char *)key, OPTION_KEYS[i]) == 0) return i;
  return -1;
}

static int64_t *option_slot(rl_ctx *ctx, int i) {
  return i == 0 ? &ctx->attn_impl
         : i == 1 ? &ctx->pin_memory
         : i == 2 ? &ctx->async_copy
         : i == 3 ? &ctx->drop_behind
                  : &ctx->memory_limit;
}

RL_API int32_t rl_set_option(rl_ctx *ctx, const uint8_t *key, int64_t value) {
  ENTER();
  REQUIRE_PTR(key);
  const int i = option_index(key);
  if (i < 0)
    return cu_fail(ctx, RL_ERR_UNSUPPORTED, op, "unknown option \"%s\"", (const char *)key);
  REQUIRE(value >= 0 && (i == 4 || value <= (i == 0 ? 2 : 1)), "%s: value %lld out of range",
          (const char *)key, (long long)value);
  if (i == 0 && value == 1 && ctx->cc_major < 8)
    return cu_fail(ctx, RL_ERR_UNSUPPORTED, op, "attn_impl flash needs sm_80 or newer (sm_%d%d)",
                   ctx->cc_major, ctx->cc_minor);
  *option_slot(ctx, i) = value;
  return RL_OK;
}

RL_API int64_t rl_get_option(rl_ctx *ctx, const uint8_t *key) {
  if (!ctx || !key) return -1;
  const int i = option_index(key);
  if (i >= 0) return *option_slot(ctx, i);
  if (strcmp((const char *)key, "flash_available") == 0) return ctx->cc_major >= 8 ? 1 : 0;
  if (strcmp((const char *)key, "device_memory") == 0) {
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(ctx->device) != cudaSuccess ||
        cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
      (void)cudaGetLastError();
      return (int64_t)ctx->total_memory;
    }
    return (int64_t)total_b;
  }
  if (strcmp((const char *)key, "device_memory_free") == 0) {
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(ctx->device) != cudaSuccess ||
        cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
      (void)cudaGetLastError();
      return -1; /* the runtime cannot tell now */
    }
    if (ctx->memory_limit > 0) {
      uint64_t live;
      {
        std::lock_guard<std::mutex> guard(ctx->stats_lock);
        live = ctx->stats[RL_STAT_LIVE_BYTES];
      }
      const uint64_t limit = (uint64_t)ctx->memory_limit;
      const uint64_t room = live < limit ? limit - live : 0;
      if (room < free_b) return (int64_t)room;
    }
    return (int64_t)free_b;
  }
  if (strcmp((const char *)key, "map_files") == 0) return 0; /* kernels read device memory only */
  return -1;
}

/* ----------------------------------------------------------------------------------------------
 * Timing marks: events recorded on the compute stream */

static int32_t record_mark(rl_ctx *ctx, int64_t *id) {
  ENTER_AS("rl_mark");
  if (ctx->marks_used == ctx->marks.size()) {
    cudaEvent_t e = NULL;
    CUDA_CHECK(cudaEventCreate(&e));
    try {
      ctx->marks.push_back(e);
    } catch (...) {
      (void)cudaEventDestroy(e);
      return cu_fail(ctx, RL_ERR_OOM, op, "out of memory for %zu marks", ctx->marks_used + 1);
    }
  }
  CUDA_CHECK(cudaEventRecord(ctx->marks[ctx->marks_used], ctx->compute));
  *id = (int64_t)ctx->marks_used++;
  return RL_OK;
}

RL_API int64_t rl_mark(rl_ctx *ctx) {
  int64_t id = -1;
  return record_mark(ctx, &id) == RL_OK ? id : -1;
}

static int32_t elapsed(rl_ctx *ctx, int64_t from, int64_t to, float *ms) {
  ENTER_AS("rl_elapsed_ms");
  const int64_t n = (int64_t)ctx->marks_used;
  REQUIRE(from >= 0 && to >= 0 && from < n && to < n, "no such marks %lld, %lld",
          (long long)from, (long long)to);
  CUDA_CHECK(cudaEventSynchronize(ctx->marks[from]));
  CUDA_CHECK(cudaEventSynchronize(ctx->marks[to]));
  CUDA_CHECK(cudaEventElapsedTime(ms, ctx->marks[from], ctx->marks[to]));
  return RL_OK;
}

RL_API double rl_elapsed_ms(rl_ctx *ctx, int64_t from_mark, int64_t to_mark) {
  float ms = 0.0f;
  return elapsed(ctx, from_mark, to_mark, &ms) == RL_OK ? (double)ms : -1.0;
}

RL_API int32_t rl_marks_reset(rl_ctx *ctx) {
  ENTER();
  ctx->marks_used = 0;
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * The I/O thread: loads (file -> device or host block) and uploads (host block -> device).
 *
 * Jobs run one after another in issue order, from one FIFO queue with one ticket sequence.
 *  - A load into device memory reads the file into two staging buffers of LOAD_CHUNK bytes used
 *    alternately: chunk k is read into buffer k % 2 while the copy of chunk k - 1 runs; before a
 *    buffer is refilled, the host waits for the event recorded after the copy out of it.
 *  - A load into an rl_host_alloc block reads the file straight into it (no staging, no copy).
 *  - An upload issues one cudaMemcpyAsync out of the host block.
 * A job with device copies ends with its `finished` event, which rl_load_wait makes the compute
 * stream wait for; a load into host memory has none (waiting for it involves no GPU work).
 *
 * Ordering against the compute stream (a write-after-read race otherwise): the engine reuses a
 * device buffer (a streaming slot) for the next layer as soon as the kernels that read the old
 * layer were *issued*, not completed. A copy on the transfer stream is not ordered after them by
 * anything, so it could overwrite weights a queued kernel has yet to read. So when a load or an
 * upload into device memory is issued (rl_load_start / rl_upload_start, on the caller's thread, in
 * issue order with the ops), an event is recorded on the compute stream (`issued`), and the I/O
 * thread makes the transfer stream wait for it (cudaStreamWaitEvent, no host blocking) before the
 * job's first copy. Only the kernels issued before the job are waited for, so copies still overlap
 * the compute issued after it; the events come from the same recycled pool as `finished`. A job
 * copying on the compute stream itself (async_copy 0) is ordered by the stream and needs none. */

/* Takes a timing-free event from the pool, or creates one. */
static cudaError_t take_event(loader &L, cudaEvent_t *e) {
  {
    std::lock_guard<std::mutex> guard(L.lock);
    if (!L.free_events.empty()) {
      *e = L.free_events.back();
      L.free_events.pop_back();
      return cudaSuccess;
    }
  }
  return cudaEventCreateWithFlags(e, cudaEventDisableTiming);
}

/* Returns an event to the pool (the caller must not hold L.lock). Its last record may still be
 * pending: every user records it again before use, and waits already issued keep the old one. */
static void give_event(loader &L, cudaEvent_t e) {
  std::lock_guard<std::mutex> guard(L.lock);
  try {
    L.free_events.push_back(e);
  } catch (...) {
    (void)cudaEventDestroy(e);
  }
}

/* Reads exactly n bytes at offset of fd into buf; on failure fills *err and returns the status.
 * With drop_behind, the bytes read are then dropped from the page cache. */
static int32_t read_exactly(int fd, const load_job &job, uint8_t *buf, uint64_t n,
                            uint64_t done_before, std::string *err) {
  uint64_t got = 0;
  while (got < n) {
    const ssize_t r = pread(fd, buf + got, (size_t)(n - got), (off_t)(job.offset + done_before + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      char msg[768];
      snprintf(msg, sizeof msg, "%s: %s at byte %llu of the %llu requested from offset %llu",
               job.path.c_str(), r < 0 ? strerror(errno) : "file ends",
               (unsigned long long)(done_before + got), (unsigned long long)job.bytes,
               (unsigned long long)job.offset);
      *err = msg;
      return r < 0 ? RL_ERR_DEVICE : RL_ERR_INVALID;
    }
    got += (uint64_t)r;
  }
  /* Advice only: the bytes were read whatever it answers. */
  if (job.drop_behind)
    (void)posix_fadvise(fd, (off_t)(job.offset + done_before), (off_t)n, POSIX_FADV_DONTNEED);
  return RL_OK;
}

/* Formats a CUDA failure of the I/O thread. */
static int32_t load_cuda_error(const load_job &job, cudaError_t e, const char *what, int line,
                               std::string *err) {
  (void)cudaGetLastError();
  char msg[768];
  snprintf(msg, sizeof msg, "%s: %s: %s (%s:%d)", job.path.c_str(), what, cudaGetErrorString(e),
           __FILE__, line);
  *err = msg;
  return e == cudaErrorMemoryAllocation ? RL_ERR_OOM : RL_ERR_DEVICE;
}

/* In the job functions below: sets status and leaves through `out`. */
#define LOAD_CHECK(call, what)                                                                    \
  do {                                                                                            \
    const cudaError_t e_ = (call);                                                                \
    if (e_ != cudaSuccess) {                                                                      \
      status = load_cuda_error(job, e_, what, __LINE__, err);                                     \
      goto out;                                                                                   \
    }                                                                                             \
  } while (0)

/* Records the completion event of a job with device copies on `stream`. */
static int32_t record_finished(rl_ctx *ctx, const load_job &job, cudaStream_t stream,
                               cudaEvent_t *finished, std::string *err) {
  cudaEvent_t e = NULL;
  cudaError_t r = take_event(ctx->load, &e);
  if (r != cudaSuccess) return load_cuda_error(job, r, "creating an event", __LINE__, err);
  r = cudaEventRecord(e, stream);
  if (r != cudaSuccess) {
    (void)cudaEventDestroy(e);
    return load_cuda_error(job, r, "recording the completion event", __LINE__, err);
  }
  *finished = e;
  return RL_OK;
}

/* Opens the job's file; on failure fills *err. */
static int open_job_file(const load_job &job, std::string *err) {
  const int fd = open(job.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) *err = "cannot open " + job.path + ": " + strerror(errno);
  return fd;
}

/* A load into device memory, through the staging buffers. */
static int32_t run_load_device(rl_ctx *ctx, const load_job &job, cudaEvent_t *finished,
                               std::string *err) {
  loader &L = ctx->load;
  cudaStream_t stream = job.async ? ctx->transfer : ctx->compute;
  void **bufs = job.pinned ? L.pinned : L.pageable;
  int32_t status = RL_OK;
  int fd = -1;
  uint64_t done = 0;
  /* Staging alternates across jobs too: a small load right after another reads into the buffer
   * the previous one is not copying out of. */
  int k = L.next_staging;
  for (int i = 0; i < 2; i++) {
    if (!L.staged[i]) LOAD_CHECK(cudaEventCreateWithFlags(&L.staged[i], cudaEventDisableTiming),
                                 "creating a staging event");
    if (bufs[i]) continue;
    if (job.pinned) {
      LOAD_CHECK(take_staging(&bufs[i]), "allocating 64 MiB of pinned staging");
    } else if (!(bufs[i] = malloc(LOAD_CHUNK))) {
      *err = job.path + ": out of memory for 64 MiB of staging";
      return RL_ERR_OOM;
    }
  }
  fd = open_job_file(job, err);
  if (fd < 0) return RL_ERR_INVALID;
  /* The first copy waits for the kernels issued before the load (see above). */
  if (job.issued)
    LOAD_CHECK(cudaStreamWaitEvent(stream, job.issued, 0), "ordering the copy after earlier ops");
  for (; done < job.bytes; k ^= 1) {
    const uint64_t n = job.bytes - done < LOAD_CHUNK ? job.bytes - done : LOAD_CHUNK;
    LOAD_CHECK(cudaEventSynchronize(L.staged[k]), "waiting for a staging buffer");
    status = read_exactly(fd, job, (uint8_t *)bufs[k], n, done, err);
    if (status != RL_OK) goto out;
    LOAD_CHECK(cudaMemcpyAsync((uint8_t *)job.dst + done, bufs[k], n, cudaMemcpyHostToDevice,
                               stream),
               "copying to the device");
    LOAD_CHECK(cudaEventRecord(L.staged[k], stream), "recording a staging event");
    if (sync_every_op()) LOAD_CHECK(cudaStreamSynchronize(stream), "copying to the device");
    done += n;
  }
  L.next_staging = k;
  status = record_finished(ctx, job, stream, finished, err);
out:
  if (fd >= 0) close(fd);
  return status;
}

/* A load into an rl_host_alloc block: read straight into it, in chunks (so drop_behind frees the
 * page cache as it goes). Copies out of host blocks issued before it (rl_upload_start) may still
 * be running: they are waited for first, so the read never overwrites bytes being copied. */
static int32_t run_load_host(rl_ctx *ctx, const load_job &job, std::string *err) {
  loader &L = ctx->load;
  int32_t status = RL_OK;
  int fd = -1;
  for (int i = 0; i < 2; i++)
    if (L.uploaded[i])
      LOAD_CHECK(cudaEventSynchronize(L.uploaded[i]), "waiting for copies out of host memory");
  fd = open_job_file(job, err);
  if (fd < 0) return RL_ERR_INVALID;
  for (uint64_t done = 0; done < job.bytes;) {
    const uint64_t n = job.bytes - done < LOAD_CHUNK ? job.bytes - done : LOAD_CHUNK;
    status = read_exactly(fd, job, (uint8_t *)job.dst + done, n, done, err);
    if (status != RL_OK) goto out;
    done += n;
  }
out:
  if (fd >= 0) close(fd);
  return status;
}

/* An upload: host block -> device, one async copy. */
static int32_t run_upload(rl_ctx *ctx, const load_job &job, cudaEvent_t *finished,
                          std::string *err) {
  loader &L = ctx->load;
  cudaStream_t stream = job.async ? ctx->transfer : ctx->compute;
  cudaEvent_t &uploaded = L.uploaded[job.async ? 0 : 1];
  int32_t status = RL_OK;
  if (!uploaded)
    LOAD_CHECK(cudaEventCreateWithFlags(&uploaded, cudaEventDisableTiming), "creating an event");
  if (job.issued)
    LOAD_CHECK(cudaStreamWaitEvent(stream, job.issued, 0), "ordering the copy after earlier ops");
  LOAD_CHECK(cudaMemcpyAsync(job.dst, job.src, job.bytes, cudaMemcpyHostToDevice, stream),
             "copying to the device");
  LOAD_CHECK(cudaEventRecord(uploaded, stream), "recording the copy out of host memory");
  if (sync_every_op()) LOAD_CHECK(cudaStreamSynchronize(stream), "copying to the device");
  status = record_finished(ctx, job, stream, finished, err);
out:
  return status;
}

static void loader_main(rl_ctx *ctx) {
  loader &L = ctx->load;
  const cudaError_t set = cudaSetDevice(ctx->device);
  for (;;) {
    load_job job;
    {
      std::unique_lock<std::mutex> lk(L.lock);
      L.wake.wait(lk, [&] { return L.stop || !L.queue.empty(); });
      if (L.stop) return;
      job = std::move(L.queue.front());
      L.queue.pop_front();
    }
    int32_t status = RL_OK;
    std::string err;
    cudaEvent_t finished = NULL;
    try {
      if (set != cudaSuccess)
        status = load_cuda_error(job, set, "making the device current", __LINE__, &err);
      else if (job.kind == JOB_FILE_TO_HOST)
        status = run_load_host(ctx, job, &err);
      else if (job.kind == JOB_UPLOAD)
        status = run_upload(ctx, job, &finished, &err);
      else
        status = run_load_device(ctx, job, &finished, &err);
    } catch (...) {
      status = RL_ERR_OOM;
      err = "out of host memory";
    }
    /* The transfer stream's wait (if any) was issued: the event may be recorded again. */
    if (job.issued) give_event(L, job.issued);
    {
      std::lock_guard<std::mutex> guard(L.lock);
      auto it = L.results.find(job.ticket); /* inserted at issue, erased only once done */
      if (it != L.results.end()) {
        it->second.done = true;
        it->second.status = status;
        it->second.finished = finished;
        it->second.error = std::move(err);
      } else if (finished) {
        (void)cudaEventDestroy(finished);
      }
    }
    L.done.notify_all();
  }
}

/* Stops the I/O thread: jobs not started are dropped, the one in progress finishes first. */
static void loader_stop(rl_ctx *ctx) {
  loader &L = ctx->load;
  if (!L.started) return;
  {
    std::lock_guard<std::mutex> guard(L.lock);
    L.stop = true;
    for (const load_job &j : L.queue)
      if (j.issued) (void)cudaEventDestroy(j.issued);
    L.queue.clear();
  }
  L.wake.notify_all();
  L.thread.join();
  L.started = false;
}

/* Issues a job: orders a device copy after the compute work issued so far (the `issued` event),
 * starts the I/O thread on first use, queues the job and returns its ticket. A successful wait
 * adds its bytes to RL_STAT_H2D_BYTES; `what` names the job in an error. */
static int32_t queue_job(rl_ctx *ctx, const char *op, load_job &job, const char *what,
                         int64_t *ticket) {
  loader &L = ctx->load;
#ifndef RL_TEST_UNORDERED_COPIES /* test only: cuda/emu/test.sh shows the emulation sees the race */
  if (job.kind != JOB_FILE_TO_HOST && job.async) {
    cudaEvent_t e = NULL;
    CUDA_CHECK(take_event(L, &e));
    const cudaError_t r = cudaEventRecord(e, ctx->compute);
    if (r != cudaSuccess) give_event(L, e);
    CUDA_CHECK(r);
    job.issued = e;
  }
#endif
  try {
    if (!L.started) {
      L.thread = std::thread(loader_main, ctx);
      L.started = true;
    }
    std::lock_guard<std::mutex> guard(L.lock);
    const int64_t t = L.next_ticket;
    job.ticket = t;
    load_result pending;
    pending.bytes = job.bytes;
    L.results.emplace(t, std::move(pending));
    try {
      L.queue.push_back(std::move(job)); /* strong guarantee: job is intact if it throws */
    } catch (...) {
      L.results.erase(t);
      throw;
    }
    *ticket = L.next_ticket++;
  } catch (...) {
    if (job.issued) give_event(L, job.issued);
    return cu_fail(ctx, RL_ERR_OOM, op, "cannot start the I/O thread or queue %s", what);
  }
  L.wake.notify_one();
  return RL_OK;
}

static int32_t load_start(rl_ctx *ctx, void *dst, const uint8_t *path, uint64_t file_offset,
                          uint64_t bytes, int64_t *ticket) {
  ENTER_AS("rl_load_start");
  CHECK_ARGS(rl_check_load, dst, path, bytes);
  REQUIRE(path[0] != 0, "path is empty");
  uintptr_t base = 0;
  uint64_t size = 0;
  const bool host = find_host_block(ctx, dst, &base, &size);
  if (host)
    REQUIRE(bytes <= size - ((uintptr_t)dst - base),
            "dst %p + %llu bytes runs past the end of its rl_host_alloc block %p (%llu bytes)",
            dst, (unsigned long long)bytes, (void *)base, (unsigned long long)size);
  std::string what;
  try {
    what = std::string("a load of ") + (const char *)path;
    load_job job;
    job.kind = host ? JOB_FILE_TO_HOST : JOB_FILE_TO_DEVICE;
    job.dst = dst;
    job.path = (const char *)path;
    job.offset = file_offset;
    job.bytes = bytes;
    job.pinned = ctx->pin_memory != 0;
    job.async = ctx->async_copy != 0;
    job.drop_behind = ctx->drop_behind != 0;
    /* Every waited load counts in H2D bytes, as on the CPU (one into a host block as well). */
    return queue_job(ctx, op, job, what.c_str(), ticket);
  } catch (...) {
    return cu_fail(ctx, RL_ERR_OOM, op, "out of host memory queueing a load of %s",
                   (const char *)path);
  }
}

RL_API int64_t rl_load_start(rl_ctx *ctx, void *dst, const uint8_t *path, uint64_t file_offset,
                             uint64_t bytes) {
  int64_t ticket = 0;
  return load_start(ctx, dst, path, file_offset, bytes, &ticket) == RL_OK ? ticket : 0;
}

static int32_t upload_start(rl_ctx *ctx, void *dst, const void *src, uint64_t bytes,
                            int64_t *ticket) {
  ENTER_AS("rl_upload_start");
  CHECK_ARGS(rl_check_copy, dst, src, bytes);
  uintptr_t base = 0;
  uint64_t size = 0;
  REQUIRE(find_host_block(ctx, src, &base, &size),
          "src %p is not inside an rl_host_alloc block of this context", src);
  REQUIRE(bytes <= size - ((uintptr_t)src - base),
          "src %p + %llu bytes runs past the end of its rl_host_alloc block %p (%llu bytes)", src,
          (unsigned long long)bytes, (void *)base, (unsigned long long)size);
  REQUIRE(!find_host_block(ctx, dst, &base, &size),
          "dst %p is host memory from rl_host_alloc, not device memory", dst);
  char what[160];
  snprintf(what, sizeof what, "the upload of %llu bytes from host %p to device %p",
           (unsigned long long)bytes, src, dst);
  try {
    load_job job;
    job.kind = JOB_UPLOAD;
    job.dst = dst;
    job.src = src;
    job.path = what;
    job.bytes = bytes;
    job.async = ctx->async_copy != 0;
    return queue_job(ctx, op, job, what, ticket);
  } catch (...) {
    return cu_fail(ctx, RL_ERR_OOM, op, "out of host memory queueing %s", what);
  }
}

RL_API int64_t rl_upload_start(rl_ctx *ctx, void *dst, const void *src, uint64_t bytes) {
  int64_t ticket = 0;
  return upload_start(ctx, dst, src, bytes, &ticket) == RL_OK ? ticket : 0;
}

/* Never blocks and sets no error: 1 when the I/O thread is done with the job (rl_load_wait then
 * only queues the compute stream's wait and returns at once), 0 while it is queued or running, -1
 * for a ticket not issued or already waited (or a NULL ctx). May run on another thread than the
 * one issuing ops, like rl_load_wait. */
RL_API int32_t rl_load_ready(rl_ctx *ctx, int64_t ticket) {
  if (!ctx) return -1;
  loader &L = ctx->load;
  std::lock_guard<std::mutex> guard(L.lock);
  auto it = L.results.find(ticket);
  if (it == L.results.end()) return -1;
  return it->second.done ? 1 : 0;
}

RL_API int32_t rl_load_wait(rl_ctx *ctx, int64_t ticket) {
  ENTER();
  loader &L = ctx->load;
  load_result r;
  {
    std::unique_lock<std::mutex> lk(L.lock);
    auto it = L.results.find(ticket);
    if (it == L.results.end()) {
      const bool none = L.next_ticket == 1;
      lk.unlock();
      if (none)
        return cu_fail(ctx, RL_ERR_INVALID, op, "no load or upload was started (ticket %lld)",
                       (long long)ticket);
      return cu_fail(ctx, RL_ERR_INVALID, op, "unknown or already waited ticket %lld",
                     (long long)ticket);
    }
    L.done.wait(lk, [&] { return it->second.done; });
    r = std::move(it->second);
    L.results.erase(it);
  }
  if (r.status != RL_OK) return cu_fail(ctx, r.status, op, "%s", r.error.c_str());
  if (r.finished) {
    /* Later ops on the compute stream start after the copy; the host does not wait. */
    const cudaError_t e = cudaStreamWaitEvent(ctx->compute, r.finished, 0);
    give_event(L, r.finished);
    CUDA_CHECK(e);
  }
  std::lock_guard<std::mutex> guard(ctx->stats_lock);
  ctx->stats[RL_STAT_H2D_BYTES] += r.bytes; /* like the CPU backend: counted when waited for */
  return RL_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Mapped files: not on CUDA. Kernels read device memory only; weights reach it through
 * rl_load_start (or the host tier and rl_upload_start). rl_get_option("map_files") is 0. */

static int32_t no_mapping(rl_ctx *ctx, const char *name, const char *why) {
  ENTER_AS(name);
  return cu_fail(ctx, RL_ERR_UNSUPPORTED, op, "unsupported on CUDA: %s", why);
}

static const char NO_MAP_WHY[] = "the CUDA device cannot read host file pages "
                                 "(map_files is 0); load layers with rl_load_start";
static const char NO_MAPPINGS_WHY[] = "the CUDA backend maps no files (rl_map is unsupported)";

RL_API void *rl_map(rl_ctx *ctx, const uint8_t *path, uint64_t file_offset, uint64_t bytes) {
  (void)path;
  (void)file_offset;
  (void)bytes;
  (void)no_mapping(ctx, __func__, NO_MAP_WHY);
  return NULL;
}

RL_API int32_t rl_unmap(rl_ctx *ctx, void *p) {
  (void)p;
  return no_mapping(ctx, __func__, NO_MAPPINGS_WHY);
}

RL_API int64_t rl_prefetch_start(rl_ctx *ctx, const void *p, uint64_t bytes) {
  (void)p;
  (void)bytes;
  (void)no_mapping(ctx, __func__, NO_MAPPINGS_WHY);
  return 0;
}

RL_API int32_t rl_evict(rl_ctx *ctx, const void *p, uint64_t bytes) {
  (void)p;
  (void)bytes;
  return no_mapping(ctx, __func__, NO_MAPPINGS_WHY);
}
