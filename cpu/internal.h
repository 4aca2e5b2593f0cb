/*
 * Shared by the CPU backend's translation units: the context, error reporting, argument checks
 * and scalar dtype conversion. Nothing here is exported (the library builds with
 * -fvisibility=hidden; only RL_API entries of ffi/rabbitllm.h are visible).
 */
#ifndef RL_CPU_INTERNAL_H
#define RL_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rabbitllm.h"
#include "rl_shared.h"

/* ----------------------------------------------------------------------------------------------
 * The context */

/* One live rl_alloc block; the table maps block address -> size so rl_free can account for it
 * and reject pointers it never handed out (views, double frees). */
typedef struct {
  void *p;
  uint64_t bytes;
} alloc_entry;

typedef struct {
  alloc_entry *slots; /* open addressing, linear probing; p == NULL marks an empty slot */
  uint64_t cap;       /* power of two, or 0 before the first allocation */
  uint64_t count;
} alloc_table;

typedef struct cpu_loader cpu_loader; /* the I/O threads of loads and prefetches (load.c) */
typedef struct cpu_mapping cpu_mapping; /* one rl_map (map.c) */

/* Option slots, in the order of OPTION_KEYS (ctx.c). */
enum {
  OPT_ATTN_IMPL,
  OPT_PIN_MEMORY,
  OPT_ASYNC_COPY,
  OPT_DROP_BEHIND,
  OPT_INT8_ACTIVATIONS,
  OPT_DEVICE_MEMORY_LIMIT, /* bytes rl_alloc may hold live in all; 0 = no limit */
  OPT_COUNT
};

struct rl_ctx {
  int n_threads;                 /* OpenMP team size for every parallel op */
  uint64_t stats[RL_STAT_COUNT]; /* indexed by enum rl_stat */
  alloc_table allocs;            /* rl_alloc blocks */
  alloc_table host_allocs;       /* rl_host_alloc blocks */
  cpu_mapping *maps;             /* rl_map mappings, a linked list */
  cpu_loader *loader;            /* started on the first load, prefetch or upload */
  double *marks;                 /* rl_mark timestamps (ms, monotonic clock) */
  int64_t n_marks, cap_marks;
  int64_t options[OPT_COUNT];
  char err[512]; /* last error message, NUL-terminated */
};

/* ----------------------------------------------------------------------------------------------
 * The I/O threads (load.c): one FIFO of jobs per context, tickets shared by every kind. */

typedef enum { JOB_READ, JOB_PREFETCH, JOB_COPY } job_kind;

typedef struct {
  job_kind kind;
  void *dst;          /* READ, COPY: where the bytes go */
  const void *src;    /* PREFETCH: the mapped range; COPY: the host source */
  const char *path;   /* READ: the file; PREFETCH: the mapping's file (for messages); copied */
  uint64_t offset;    /* READ: file offset; PREFETCH: file offset of src (for messages) */
  uint64_t bytes;
  int drop_behind;    /* READ: drop the bytes read from the page cache */
  const cpu_mapping *mapping; /* PREFETCH: the mapping (rl_unmap refuses while it is queued) */
} job_spec;

/* Queues a job; returns its ticket (> 0), or 0 with ctx's error set. */
int64_t cpu_loader_submit(rl_ctx *ctx, const char *op, const job_spec *spec);
/* 1 when a job not yet waited for refers to `m`. */
int cpu_loader_uses(cpu_loader *l, const cpu_mapping *m);
/* Stops the I/O thread (finishing the job in progress) and frees its queue; NULL is a no-op. */
void cpu_loader_free(cpu_loader *l);
/* Unmaps every mapping of ctx (rl_destroy, after the I/O thread stopped). */
void cpu_unmap_all(rl_ctx *ctx);

/* The allocation table (ctx.c): block address -> size. */
int cpu_table_insert(alloc_table *t, void *p, uint64_t bytes); /* 0 when out of memory */
/* Removes p; returns its size, or 0 when p is not a block of t. */
uint64_t cpu_table_remove(alloc_table *t, void *p);
/* 1 when [p, p + bytes) lies inside one block of t. */
int cpu_table_contains(const alloc_table *t, const void *p, uint64_t bytes);

/* ----------------------------------------------------------------------------------------------
 * Errors and argument checks */

/* Writes "op: <message>" into ctx's error (the global one when ctx is NULL); returns status. */
int32_t cpu_fail(rl_ctx *ctx, int32_t status, const char *op, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Argument checks. They return the failed check's status from the calling entry, naming it via
 * __func__ (CHECK_ARGS_AS names another op), and expect a variable named ctx in scope.
 * CHECK_ARGS(rl_check_<op>, args...) is an op's entry check: ctx must not be NULL, then the
 * arguments must pass rl_check_<op>, the check shared with the CUDA backend (ffi/rl_shared.h). */
#define CHECK_ARGS_AS(op, check, ...)                                                             \
  do {                                                                                            \
    char m_[RL_MSG_CAP];                                                                          \
    const int32_t s_ = check(m_, sizeof m_, __VA_ARGS__);                                         \
    if (s_ != RL_OK) return cpu_fail(ctx, s_, (op), "%s", m_);                                    \
  } while (0)
#define CHECK_ARGS(check, ...)                                                                    \
  do {                                                                                            \
    REQUIRE_CTX();                                                                                \
    CHECK_ARGS_AS(__func__, check, __VA_ARGS__);                                                  \
  } while (0)
#define REQUIRE(cond, ...)                                                                        \
  do {                                                                                            \
    if (!(cond)) return cpu_fail(ctx, RL_ERR_INVALID, __func__, __VA_ARGS__);                     \
  } while (0)
#define REQUIRE_CTX() REQUIRE(ctx != NULL, "ctx is NULL")
#define REQUIRE_PTR(p) CHECK_ARGS_AS(__func__, rl_check_ptr, (p), #p)
#define REQUIRE_POS(n) CHECK_ARGS_AS(__func__, rl_check_pos, (n) > 0, (long long)(n), #n)

/* ----------------------------------------------------------------------------------------------
 * Exact scalar conversion to f32 */

static inline float bits_to_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* bf16 is the top half of an f32. */
static inline float bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

/* IEEE binary16 -> binary32, exact for every input: normals, subnormals, +-0, +-inf, NaN
 * (payload kept, as F16C does). */
static inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0) { /* zero or subnormal: man * 2^-24, exact in f32 */
    float f = (float)man * 0x1p-24f;
    return sign ? -f : f;
  }
  if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (man << 13)); /* inf, NaN */
  return bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13)); /* rebias 15 -> 127 */
}

/* Element i of a tensor of dtype dt, as f32. */
static inline float load_f32(const void *p, int dt, int64_t i) {
  switch (dt) {
  case RL_F16: return f16_to_f32(((const uint16_t *)p)[i]);
  case RL_BF16: return bf16_to_f32(((const uint16_t *)p)[i]);
  default: return ((const float *)p)[i];
  }
}

/* Dequantizes a row of k elements (k a multiple of the block) of block format dt (or f16/bf16)
 * into out, as f32 (matmul.c, quant.h). */
void cpu_dequantize_row(float *out, const void *row, int dt, int64_t k);

/* Run an OpenMP loop in parallel only when it has enough work to pay for waking the team. */
#define PAR_MIN_WORK 32768

#endif /* RL_CPU_INTERNAL_H */
