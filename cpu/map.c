/*
 * rl_map / rl_unmap / rl_prefetch_start / rl_evict: on the CPU the page cache is host memory, so
 * a layer's weights are computed straight from its file's pages (a read-only shared mapping), with
 * no copy into a buffer of ours. Prefetch is read-ahead on the I/O thread (load.c); eviction drops
 * the pages from this process and from the page cache, for layers that stream through memory
 * smaller than the model (drop-behind keeps them from evicting the resident set).
 *
 * Faults: a mapped page whose read fails raises SIGBUS when touched. The engine checks every file's
 * size against its manifest before mapping, rl_map checks the range against the file, split files
 * are replaced only by rename (a mapped inode stays intact), and rl_prefetch_start reads the pages
 * before the ops touch them, reporting a failure as an error naming the file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

struct cpu_mapping {
  uint8_t *base;     /* what mmap returned (page aligned) */
  size_t length;     /* bytes mapped from base */
  uint8_t *user;     /* the pointer rl_map returned: base + (file_offset % page) */
  uint64_t bytes;    /* bytes asked for */
  uint64_t offset;   /* file offset of user */
  int fd;            /* kept for posix_fadvise */
  char *path;
  cpu_mapping *next;
};

static uintptr_t page_size(void) { return (uintptr_t)sysconf(_SC_PAGESIZE); }

/* The mapping holding [p, p + bytes), or NULL. */
static cpu_mapping *mapping_of(rl_ctx *ctx, const void *p, uint64_t bytes) {
  const uint8_t *q = p;
  for (cpu_mapping *m = ctx->maps; m; m = m->next)
    if (q >= m->user && bytes <= m->bytes && (uint64_t)(q - m->user) <= m->bytes - bytes) return m;
  return NULL;
}

static void release(rl_ctx *ctx, cpu_mapping *m) {
  munmap(m->base, m->length);
  close(m->fd);
  ctx->stats[RL_STAT_MAPPED_BYTES] -= m->bytes;
  free(m->path);
  free(m);
}

RL_API void *rl_map(rl_ctx *ctx, const uint8_t *path, uint64_t file_offset, uint64_t bytes) {
  if (!ctx) return cpu_fail(NULL, RL_ERR_INVALID, __func__, "ctx is NULL"), NULL;
  if (!path || bytes == 0) {
    cpu_fail(ctx, RL_ERR_INVALID, __func__, "%s", !path ? "path is NULL" : "bytes must be > 0");
    return NULL;
  }
  const char *file = (const char *)path;
  cpu_mapping *m = calloc(1, sizeof *m);
  char *copy = strdup(file);
  if (!m || !copy) {
    free(m);
    free(copy);
    cpu_fail(ctx, RL_ERR_OOM, __func__, "out of memory mapping %s", file);
    return NULL;
  }
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    cpu_fail(ctx, RL_ERR_INVALID, __func__, "cannot open %s: %s", file, strerror(errno));
    goto fail;
  }
  if (file_offset > (uint64_t)st.st_size || bytes > (uint64_t)st.st_size - file_offset) {
    cpu_fail(ctx, RL_ERR_INVALID, __func__,
             "%s is %llu bytes; %llu bytes at offset %llu lie past its end", file,
             (unsigned long long)st.st_size, (unsigned long long)bytes,
             (unsigned long long)file_offset);
    goto fail;
  }
  const uint64_t delta = file_offset % page_size();
  m->length = (size_t)(bytes + delta);
  m->base = mmap(NULL, m->length, PROT_READ, MAP_SHARED, fd, (off_t)(file_offset - delta));
  if (m->base == MAP_FAILED) {
    cpu_fail(ctx, errno == ENOMEM ? RL_ERR_OOM : RL_ERR_INVALID, __func__, "mmap of %s: %s", file,
             strerror(errno));
    goto fail;
  }
  /* The kernel's read-ahead stays on: rl_prefetch_start reads exactly what will run (a MoE
   * layer's routed experts, not their neighbours), so faults happen only on pages the kernel
   * reclaimed from a resident layer under memory pressure, and those then come back in large
   * reads instead of one page per fault. */
  m->fd = fd;
  m->user = m->base + delta;
  m->bytes = bytes;
  m->offset = file_offset;
  m->path = copy;
  m->next = ctx->maps;
  ctx->maps = m;
  ctx->stats[RL_STAT_MAPPED_BYTES] += bytes;
  return m->user;
fail:
  if (fd >= 0) close(fd);
  free(m);
  free(copy);
  return NULL;
}

RL_API int32_t rl_unmap(rl_ctx *ctx, void *p) {
  REQUIRE_CTX();
  REQUIRE_PTR(p);
  cpu_mapping **link = &ctx->maps;
  while (*link && (*link)->user != p) link = &(*link)->next;
  REQUIRE(*link != NULL, "%p was not returned by rl_map on this context (a view, or unmapped)", p);
  REQUIRE(!cpu_loader_uses(ctx->loader, *link),
          "a prefetch of %s is not waited for yet; rl_load_wait its ticket first", (*link)->path);
  cpu_mapping *m = *link;
  *link = m->next;
  release(ctx, m);
  return RL_OK;
}

void cpu_unmap_all(rl_ctx *ctx) {
  while (ctx->maps) {
    cpu_mapping *m = ctx->maps;
    ctx->maps = m->next;
    release(ctx, m);
  }
}

RL_API int64_t rl_prefetch_start(rl_ctx *ctx, const void *p, uint64_t bytes) {
  if (!ctx) return cpu_fail(NULL, RL_ERR_INVALID, __func__, "ctx is NULL"), 0;
  if (!p || bytes == 0) {
    cpu_fail(ctx, RL_ERR_INVALID, __func__, "%s", !p ? "p is NULL" : "bytes must be > 0");
    return 0;
  }
  const cpu_mapping *m = mapping_of(ctx, p, bytes);
  if (!m) {
    cpu_fail(ctx, RL_ERR_INVALID, __func__, "%p + %llu bytes is not inside one rl_map mapping", p,
             (unsigned long long)bytes);
    return 0;
  }
  const job_spec spec = {.kind = JOB_PREFETCH,
                         .src = p,
                         .path = m->path,
                         .offset = m->offset + (uint64_t)((const uint8_t *)p - m->user),
                         .bytes = bytes,
                         .mapping = m};
  return cpu_loader_submit(ctx, __func__, &spec);
}

RL_API int32_t rl_evict(rl_ctx *ctx, const void *p, uint64_t bytes) {
  REQUIRE_CTX();
  REQUIRE_PTR(p);
  REQUIRE_POS(bytes);
  const cpu_mapping *m = mapping_of(ctx, p, bytes);
  REQUIRE(m != NULL, "%p + %llu bytes is not inside one rl_map mapping", p,
          (unsigned long long)bytes);
  /* Whole pages, clipped to the mapping: the pages at the ends may hold neighbouring bytes of the
   * same file, which are read again if touched. */
  const uintptr_t page = page_size();
  uint8_t *lo = (uint8_t *)((uintptr_t)p & ~(page - 1));
  uint8_t *hi = (uint8_t *)(((uintptr_t)p + bytes + page - 1) & ~(page - 1));
  if (lo < m->base) lo = m->base;
  if (hi > m->base + m->length) hi = m->base + m->length;
  /* Unmap the pages from this process first: the page cache drops only pages nobody maps. */
  if (madvise(lo, (size_t)(hi - lo), MADV_DONTNEED) != 0)
    return cpu_fail(ctx, RL_ERR_DEVICE, __func__, "madvise(DONTNEED) on %s: %s", m->path,
                    strerror(errno));
  const off_t file_lo = (off_t)(m->offset - (uint64_t)(m->user - m->base) + (uint64_t)(lo - m->base));
  (void)posix_fadvise(m->fd, file_lo, (off_t)(hi - lo), POSIX_FADV_DONTNEED);
  return RL_OK;
}
