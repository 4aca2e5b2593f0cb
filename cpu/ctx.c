/*
 * CPU backend: library info, contexts, errors, statistics and memory.
 * "Device memory" is host memory here: 64-byte aligned blocks, tracked per context so rl_free
 * can reject pointers it never returned and rl_destroy can release what is still live. Blocks of
 * HUGE_BLOCK bytes or more (layers, slots, the host tier) are their own 2 MiB-aligned mappings
 * advised for transparent huge pages: a GEMV streaming 4 KiB pages misses the TLB on every page,
 * and with 2 MiB pages the decode pass of a q8_0 SmolLM2-135M ran 15-25% faster here.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, MADV_HUGEPAGE */
#include <omp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "simd.h"

static void block_free(void *p, uint64_t bytes);

/* ----------------------------------------------------------------------------------------------
 * Errors */

/* The error of calls made without a context (rl_create failure, NULL ctx); one for all threads. */
static char g_err[512];
static pthread_mutex_t g_err_lock = PTHREAD_MUTEX_INITIALIZER;

int32_t cpu_fail(rl_ctx *ctx, int32_t status, const char *op, const char *fmt, ...) {
  char *dst = ctx ? ctx->err : g_err;
  size_t cap = ctx ? sizeof ctx->err : sizeof g_err;
  if (!ctx) pthread_mutex_lock(&g_err_lock);
  int n = snprintf(dst, cap, "%s: ", op);
  va_list ap;
  va_start(ap, fmt);
  if (n >= 0 && (size_t)n < cap) vsnprintf(dst + n, cap - (size_t)n, fmt, ap);
  va_end(ap);
  if (!ctx) pthread_mutex_unlock(&g_err_lock);
  return status;
}

RL_API int64_t rl_last_error(rl_ctx *ctx, uint8_t *buf, int64_t cap) {
  if (ctx) return rl_copy_string(ctx->err, buf, cap);
  pthread_mutex_lock(&g_err_lock);
  int64_t len = rl_copy_string(g_err, buf, cap);
  pthread_mutex_unlock(&g_err_lock);
  return len;
}

/* ----------------------------------------------------------------------------------------------
 * Library and context */

RL_API uint32_t rl_abi_version(void) { return RL_ABI_VERSION; }

RL_API int64_t rl_backend_info(uint8_t *buf, int64_t cap) {
  char info[128];
  snprintf(info, sizeof info, "cpu %s openmp procs=%d gcc %d.%d", RL_SIMD_NAME,
           omp_get_num_procs(), __GNUC__, __GNUC_MINOR__);
  return rl_copy_string(info, buf, cap);
}

RL_API rl_ctx *rl_create(int32_t n_threads, int32_t device) {
  (void)device; /* one CPU device */
  rl_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx) {
    cpu_fail(NULL, RL_ERR_OOM, __func__, "out of memory for the context (%zu bytes)", sizeof *ctx);
    return NULL;
  }
  ctx->n_threads = n_threads > 0 ? n_threads : omp_get_num_procs();
  ctx->options[OPT_PIN_MEMORY] = 1;
  ctx->options[OPT_ASYNC_COPY] = 1;
  return ctx;
}

RL_API void rl_destroy(rl_ctx *ctx) {
  if (!ctx) return;
  cpu_loader_free(ctx->loader); /* before the memory a load may be writing into */
  cpu_unmap_all(ctx);
  free(ctx->marks);
  for (uint64_t i = 0; i < ctx->allocs.cap; i++)
    if (ctx->allocs.slots[i].p) block_free(ctx->allocs.slots[i].p, ctx->allocs.slots[i].bytes);
  free(ctx->allocs.slots);
  for (uint64_t i = 0; i < ctx->host_allocs.cap; i++)
    if (ctx->host_allocs.slots[i].p)
      block_free(ctx->host_allocs.slots[i].p, ctx->host_allocs.slots[i].bytes);
  free(ctx->host_allocs.slots);
  free(ctx);
}

RL_API int32_t rl_stats(rl_ctx *ctx, uint64_t *out, int32_t n) {
  CHECK_ARGS(rl_check_stats, out, n);
  memcpy(out, ctx->stats, (size_t)(n < RL_STAT_COUNT ? n : RL_STAT_COUNT) * sizeof *out);
  return RL_OK;
}

RL_API int32_t rl_sync(rl_ctx *ctx) {
  REQUIRE_CTX();
  return RL_OK; /* every op has finished when it returns */
}

/* ----------------------------------------------------------------------------------------------
 * Allocation table: block address -> size (open addressing, linear probing) */

static uint64_t slot_of(const alloc_table *t, const void *p) {
  uint64_t h = (uint64_t)(uintptr_t)p >> 6; /* blocks are 64-byte aligned */
  return ((h * 0x9e3779b97f4a7c15ull) >> 17) & (t->cap - 1); /* Fibonacci hashing */
}

/* Index of p's slot, or of the empty slot where it would go. The table is never full. */
static uint64_t table_find(const alloc_table *t, const void *p) {
  uint64_t i = slot_of(t, p);
  while (t->slots[i].p && t->slots[i].p != p) i = (i + 1) & (t->cap - 1);
  return i;
}

/* Makes room for one more entry (load factor <= 1/2). Returns 0 when out of memory. */
static int table_reserve(alloc_table *t) {
  if (2 * (t->count + 1) <= t->cap) return 1;
  const uint64_t cap = t->cap ? 2 * t->cap : 64;
  alloc_table grown = {calloc(cap, sizeof(alloc_entry)), cap, t->count};
  if (!grown.slots) return 0;
  for (uint64_t i = 0; i < t->cap; i++)
    if (t->slots[i].p) grown.slots[table_find(&grown, t->slots[i].p)] = t->slots[i];
  free(t->slots);
  *t = grown;
  return 1;
}

/* Empties slot i, shifting later entries of the same probe run back so lookups stay correct. */
static void table_remove(alloc_table *t, uint64_t i) {
  uint64_t mask = t->cap - 1;
  for (uint64_t j = (i + 1) & mask; t->slots[j].p; j = (j + 1) & mask) {
    uint64_t home = slot_of(t, t->slots[j].p);
    /* Entry j may move to the hole i unless its home lies cyclically in (i, j]. */
    if (((j - home) & mask) >= ((j - i) & mask)) {
      t->slots[i] = t->slots[j];
      i = j;
    }
  }
  t->slots[i] = (alloc_entry){0};
  t->count--;
}

int cpu_table_insert(alloc_table *t, void *p, uint64_t bytes) {
  if (!table_reserve(t)) return 0;
  t->slots[table_find(t, p)] = (alloc_entry){p, bytes};
  t->count++;
  return 1;
}

uint64_t cpu_table_remove(alloc_table *t, void *p) {
  if (!t->cap) return 0;
  uint64_t i = table_find(t, p);
  uint64_t bytes = t->slots[i].p ? t->slots[i].bytes : 0;
  if (bytes) table_remove(t, i);
  return bytes;
}

int cpu_table_contains(const alloc_table *t, const void *p, uint64_t bytes) {
  const uint8_t *q = p;
  for (uint64_t i = 0; i < t->cap; i++) {
    const uint8_t *b = t->slots[i].p;
    if (b && q >= b && bytes <= t->slots[i].bytes && (uint64_t)(q - b) <= t->slots[i].bytes - bytes)
      return 1;
  }
  return 0;
}

/* ----------------------------------------------------------------------------------------------
 * Memory */

#define HUGE_BLOCK (2u << 20)

/* The mapping of a block of `bytes` >= HUGE_BLOCK: whole 4 KiB pages, or whole huge pages where
 * that adds at most an eighth (a huge page is only used where it is wholly inside the mapping). */
static size_t huge_len(uint64_t bytes) {
  const uint64_t pages = (bytes + 4095) & ~(uint64_t)4095;
  const uint64_t huge = (bytes + HUGE_BLOCK - 1) & ~(uint64_t)(HUGE_BLOCK - 1);
  return (size_t)(huge - bytes <= bytes / 8 ? huge : pages);
}

/* `bytes` aligned to `align`; from HUGE_BLOCK up, a 2 MiB-aligned anonymous mapping advised for
 * huge pages (the kernel may decline: then it is ordinary pages, as before). NULL when out of
 * memory. Released by block_free with the same `bytes`. */
static void *block_alloc(size_t align, uint64_t bytes) {
#if defined(MADV_HUGEPAGE) && defined(MAP_ANONYMOUS)
  if (bytes >= HUGE_BLOCK) {
    const size_t page = HUGE_BLOCK, len = huge_len(bytes);
    uint8_t *m = mmap(NULL, len + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    uint8_t *p = (uint8_t *)(((uintptr_t)m + page - 1) & ~(uintptr_t)(page - 1));
    if (p > m) munmap(m, (size_t)(p - m));
    if (p + len < m + len + page) munmap(p + len, (size_t)(m + len + page - (p + len)));
    (void)madvise(p, len, MADV_HUGEPAGE);
    return p;
  }
#endif
  void *p = NULL;
  return posix_memalign(&p, align, bytes) == 0 ? p : NULL;
}

static void block_free(void *p, uint64_t bytes) {
#if defined(MADV_HUGEPAGE) && defined(MAP_ANONYMOUS)
  if (bytes >= HUGE_BLOCK) {
    munmap(p, huge_len(bytes));
    return;
  }
#endif
  free(p);
}

/* A block of `bytes` aligned to `align`, recorded in `t`; NULL with ctx's error set on failure. */
static void *table_alloc(rl_ctx *ctx, alloc_table *t, size_t align, uint64_t bytes,
                         const char *op, const char *what) {
  if (!ctx) {
    cpu_fail(NULL, RL_ERR_INVALID, op, "ctx is NULL");
    return NULL;
  }
  if (bytes == 0) {
    cpu_fail(ctx, RL_ERR_INVALID, op, "bytes must be > 0, got 0");
    return NULL;
  }
  void *p = block_alloc(align, bytes);
  if (!p || !cpu_table_insert(t, p, bytes)) {
    if (p) block_free(p, bytes);
    cpu_fail(ctx, RL_ERR_OOM, op, "out of memory allocating %llu bytes of %s (%llu live)",
             (unsigned long long)bytes, what, (unsigned long long)ctx->stats[RL_STAT_LIVE_BYTES]);
    return NULL;
  }
  return p;
}

RL_API void *rl_alloc(rl_ctx *ctx, uint64_t bytes) {
  if (ctx && bytes > 0 && ctx->options[OPT_DEVICE_MEMORY_LIMIT] > 0) {
    const uint64_t limit = (uint64_t)ctx->options[OPT_DEVICE_MEMORY_LIMIT];
    const uint64_t live = ctx->stats[RL_STAT_LIVE_BYTES];
    if (bytes > limit - (live < limit ? live : limit)) {
      cpu_fail(ctx, RL_ERR_OOM, __func__,
               "out of memory allocating %llu bytes of device memory (%llu free, %llu live; "
               "device_memory_limit %llu)",
               (unsigned long long)bytes, (unsigned long long)(live < limit ? limit - live : 0),
               (unsigned long long)live, (unsigned long long)limit);
      return NULL;
    }
  }
  /* Big blocks (layer slots) are page aligned, so direct I/O can read a layer file into them. */
  void *p = table_alloc(ctx, ctx ? &ctx->allocs : NULL, bytes >= (64u << 10) ? 4096 : 64, bytes,
                        __func__, "device memory");
  if (!p) return NULL;
  uint64_t *s = ctx->stats;
  s[RL_STAT_LIVE_BYTES] += bytes;
  if (s[RL_STAT_LIVE_BYTES] > s[RL_STAT_PEAK_BYTES]) s[RL_STAT_PEAK_BYTES] = s[RL_STAT_LIVE_BYTES];
  s[RL_STAT_ALLOCS]++;
  s[RL_STAT_LIVE_ALLOCS]++;
  return p;
}

RL_API int32_t rl_free(rl_ctx *ctx, void *p) {
  REQUIRE_CTX();
  REQUIRE_PTR(p);
  uint64_t bytes = cpu_table_remove(&ctx->allocs, p);
  REQUIRE(bytes, "%p was not returned by rl_alloc on this context (a view, or already freed)", p);
  ctx->stats[RL_STAT_LIVE_BYTES] -= bytes;
  ctx->stats[RL_STAT_FREES]++;
  ctx->stats[RL_STAT_LIVE_ALLOCS]--;
  block_free(p, bytes);
  return RL_OK;
}

/* The host tier is ordinary memory here (the device reads it directly); page-aligned so a
 * file read into it can be as large and aligned as the kernel likes. */
RL_API void *rl_host_alloc(rl_ctx *ctx, uint64_t bytes) {
  void *p = table_alloc(ctx, ctx ? &ctx->host_allocs : NULL, 4096, bytes, __func__,
                        "host memory");
  if (p) ctx->stats[RL_STAT_HOST_BYTES] += bytes;
  return p;
}

RL_API int32_t rl_host_free(rl_ctx *ctx, void *p) {
  REQUIRE_CTX();
  REQUIRE_PTR(p);
  uint64_t bytes = cpu_table_remove(&ctx->host_allocs, p);
  REQUIRE(bytes, "%p was not returned by rl_host_alloc on this context", p);
  ctx->stats[RL_STAT_HOST_BYTES] -= bytes;
  block_free(p, bytes);
  return RL_OK;
}

RL_API int64_t rl_upload_start(rl_ctx *ctx, void *dst, const void *src, uint64_t bytes) {
  if (!ctx) return cpu_fail(NULL, RL_ERR_INVALID, __func__, "ctx is NULL"), 0;
  char m[RL_MSG_CAP];
  if (rl_check_copy(m, sizeof m, dst, src, bytes) != RL_OK)
    return cpu_fail(ctx, RL_ERR_INVALID, __func__, "%s", m), 0;
  if (!cpu_table_contains(&ctx->host_allocs, src, bytes)) {
    cpu_fail(ctx, RL_ERR_INVALID, __func__,
             "src %p + %llu bytes is not inside one rl_host_alloc block", src,
             (unsigned long long)bytes);
    return 0;
  }
  const job_spec spec = {.kind = JOB_COPY, .dst = dst, .src = src, .bytes = bytes};
  return cpu_loader_submit(ctx, __func__, &spec);
}

RL_API void *rl_view(void *base, uint64_t byte_offset) { return (uint8_t *)base + byte_offset; }

/* The three copies differ only in which statistic they count. */
static int32_t copy_bytes(rl_ctx *ctx, const char *op, void *dst, const void *src, uint64_t bytes,
                          int stat) {
  if (!ctx) return cpu_fail(NULL, RL_ERR_INVALID, op, "ctx is NULL");
  CHECK_ARGS_AS(op, rl_check_copy, dst, src, bytes);
  memmove(dst, src, (size_t)bytes);
  if (stat >= 0) ctx->stats[stat] += bytes;
  return RL_OK;
}

RL_API int32_t rl_upload(rl_ctx *ctx, void *dst, const void *src, uint64_t bytes) {
  return copy_bytes(ctx, __func__, dst, src, bytes, RL_STAT_H2D_BYTES);
}

RL_API int32_t rl_download(rl_ctx *ctx, void *dst, const void *src, uint64_t bytes) {
  return copy_bytes(ctx, __func__, dst, src, bytes, RL_STAT_D2H_BYTES);
}

RL_API int32_t rl_copy(rl_ctx *ctx, void *dst, const void *src, uint64_t bytes) {
  return copy_bytes(ctx, __func__, dst, src, bytes, -1);
}

/* ----------------------------------------------------------------------------------------------
 * Options and timing marks */

static const char *const OPTION_KEYS[OPT_COUNT] = {"attn_impl",   "pin_memory",
                                                    "async_copy",  "drop_behind",
                                                    "int8_activations", "device_memory_limit"};

static int option_index(const uint8_t *key) {
  for (int i = 0; i < OPT_COUNT; i++)
    if (strcmp((const char *)key, OPTION_KEYS[i]) == 0) return i;
  return -1;
}

RL_API int32_t rl_set_option(rl_ctx *ctx, const uint8_t *key, int64_t value) {
  REQUIRE_CTX();
  REQUIRE_PTR(key);
  int i = option_index(key);
  if (i < 0) return cpu_fail(ctx, RL_ERR_UNSUPPORTED, __func__, "unknown option \"%s\"", key);
  if (i == OPT_ATTN_IMPL && value == 1)
    return cpu_fail(ctx, RL_ERR_UNSUPPORTED, __func__,
                    "attn_impl flash: the CPU backend has one attention (cpu/attention.c, an "
                    "online softmax over key blocks), reported as eager");
  REQUIRE(value >= 0 && (i == OPT_DEVICE_MEMORY_LIMIT || value <= (i == OPT_ATTN_IMPL ? 2 : 1)),
          "%s: value %lld out of range", key,
          (long long)value);
  /* pin_memory and async_copy concern GPU transfers; the CPU reads straight into place.
   * int8_activations: rl_matmul's GEMV on q8_0 / q4_0 weights (matmul.c). */
  ctx->options[i] = value;
  return RL_OK;
}

RL_API int64_t rl_get_option(rl_ctx *ctx, const uint8_t *key) {
  if (!ctx || !key) return -1;
  int i = option_index(key);
  if (i >= 0) return ctx->options[i];
  if (strcmp((const char *)key, "flash_available") == 0) return 0;
  if (strcmp((const char *)key, "device_memory") == 0)
    return (int64_t)sysconf(_SC_PHYS_PAGES) * (int64_t)sysconf(_SC_PAGESIZE);
  if (strcmp((const char *)key, "map_files") == 0) return 1;
  /* "device_memory_free": the room left under device_memory_limit; without one -1, host memory
   * is the engine's to budget (cgroups, page cache). */
  if (strcmp((const char *)key, "device_memory_free") == 0) {
    const uint64_t limit = (uint64_t)ctx->options[OPT_DEVICE_MEMORY_LIMIT];
    const uint64_t live = ctx->stats[RL_STAT_LIVE_BYTES];
    return limit == 0 ? -1 : (int64_t)(live < limit ? limit - live : 0);
  }
  return -1;
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

RL_API int64_t rl_mark(rl_ctx *ctx) {
  if (!ctx) return -1;
  if (ctx->n_marks == ctx->cap_marks) {
    int64_t cap = ctx->cap_marks ? ctx->cap_marks * 2 : 64;
    double *m = realloc(ctx->marks, (size_t)cap * sizeof *m);
    if (!m) {
      cpu_fail(ctx, RL_ERR_OOM, __func__, "out of memory for %lld marks", (long long)cap);
      return -1;
    }
    ctx->marks = m;
    ctx->cap_marks = cap;
  }
  ctx->marks[ctx->n_marks] = now_ms(); /* every op issued before has finished */
  return ctx->n_marks++;
}

RL_API double rl_elapsed_ms(rl_ctx *ctx, int64_t from_mark, int64_t to_mark) {
  if (!ctx || from_mark < 0 || to_mark < 0 || from_mark >= ctx->n_marks || to_mark >= ctx->n_marks) {
    if (ctx) cpu_fail(ctx, RL_ERR_INVALID, __func__, "no such marks %lld, %lld",
                      (long long)from_mark, (long long)to_mark);
    return -1;
  }
  return ctx->marks[to_mark] - ctx->marks[from_mark];
}

RL_API int32_t rl_marks_reset(rl_ctx *ctx) {
  REQUIRE_CTX();
  ctx->n_marks = 0;
  return RL_OK;
}
