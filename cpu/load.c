/*
 * The I/O thread of a CPU context: rl_load_start (file -> memory), rl_prefetch_start (a mapped
 * range -> page cache and page tables) and rl_upload_start (host tier -> memory) are jobs of one
 * FIFO, run in issue order while the caller keeps computing, and waited for with rl_load_wait.
 * No staging copy: a read lands where the ops read it, and a prefetched mapping is read in place.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14; older kernels answer EINVAL and pages are touched */
#endif

typedef struct job {
  job_spec spec;   /* spec.path points at the job's own copy */
  int64_t ticket;
  int done;        /* set by the I/O thread under the lock */
  int32_t status;  /* RL_OK or the failure */
  char err[400];   /* failure message */
  struct job *next;
} job;

struct cpu_loader {
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t changed; /* a job was queued, finished, or stop was set */
  job *head, *tail;       /* every job not yet waited for, in issue order */
  int64_t next_ticket;
  int stop;
};

/* Reads spec->bytes at spec->offset of spec->path into spec->dst; fills status/err. */
static void run_read(job *j) {
  const job_spec *s = &j->spec;
  int fd = open(s->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    j->status = RL_ERR_INVALID;
    snprintf(j->err, sizeof j->err, "cannot open %s: %s", s->path, strerror(errno));
    return;
  }
  uint64_t done = 0;
  while (done < s->bytes) {
    size_t chunk = (size_t)(s->bytes - done < (1u << 30) ? s->bytes - done : (1u << 30));
    ssize_t n = pread(fd, (uint8_t *)s->dst + done, chunk, (off_t)(s->offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      j->status = n < 0 ? RL_ERR_DEVICE : RL_ERR_INVALID;
      snprintf(j->err, sizeof j->err, "%s: %s at byte %llu of the %llu requested from offset %llu",
               s->path, n < 0 ? strerror(errno) : "file ends", (unsigned long long)done,
               (unsigned long long)s->bytes, (unsigned long long)s->offset);
      break;
    }
    done += (uint64_t)n;
  }
  /* Drop-behind: these bytes will not be read again before the cache would evict them. */
  if (s->drop_behind) (void)posix_fadvise(fd, (off_t)s->offset, (off_t)s->bytes, POSIX_FADV_DONTNEED);
  close(fd);
}

/* Brings a mapped range in: WILLNEED queues the reads of every page not cached at once (deep
 * queue, full disk bandwidth), POPULATE_READ waits for them and fills the page tables, so the ops
 * take no faults. A failed read comes back as an error here instead of a SIGBUS in an op. */
static void run_prefetch(job *j) {
  const job_spec *s = &j->spec;
  const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uint8_t *lo = (uint8_t *)((uintptr_t)s->src & ~(page - 1));
  uint8_t *hi = (uint8_t *)(((uintptr_t)s->src + s->bytes + page - 1) & ~(page - 1));
  (void)madvise(lo, (size_t)(hi - lo), MADV_WILLNEED);
  if (madvise(lo, (size_t)(hi - lo), MADV_POPULATE_READ) == 0) return;
  if (errno == EINVAL) { /* a kernel before 5.14: touch one byte per page instead */
    volatile uint8_t sink = 0;
    for (const uint8_t *p = lo; p < hi; p += page) sink ^= *p;
    (void)sink;
    return;
  }
  j->status = RL_ERR_DEVICE;
  snprintf(j->err, sizeof j->err, "%s: reading %llu bytes at offset %llu: %s", s->path,
           (unsigned long long)s->bytes, (unsigned long long)s->offset, strerror(errno));
}

static void run_job(job *j) {
  switch (j->spec.kind) {
  case JOB_READ: run_read(j); break;
  case JOB_PREFETCH: run_prefetch(j); break;
  case JOB_COPY: memcpy(j->spec.dst, j->spec.src, (size_t)j->spec.bytes); break;
  }
}

static void *io_thread(void *arg) {
  cpu_loader *l = arg;
  pthread_mutex_lock(&l->lock);
  for (;;) {
    job *j = l->head;
    while (j && j->done) j = j->next;
    if (!j) {
      if (l->stop) break;
      pthread_cond_wait(&l->changed, &l->lock);
      continue;
    }
    pthread_mutex_unlock(&l->lock);
    run_job(j); /* the job stays in the list, untouched by others, until it is done and waited */
    pthread_mutex_lock(&l->lock);
    j->done = 1;
    pthread_cond_broadcast(&l->changed);
  }
  pthread_mutex_unlock(&l->lock);
  return NULL;
}

static void free_job(job *j) {
  free((char *)j->spec.path);
  free(j);
}

void cpu_loader_free(cpu_loader *l) {
  if (!l) return;
  pthread_mutex_lock(&l->lock);
  /* Jobs not started yet are dropped; the one in progress finishes before the join. */
  for (job *j = l->head; j; j = j->next) j->done = 1;
  l->stop = 1;
  pthread_cond_broadcast(&l->changed);
  pthread_mutex_unlock(&l->lock);
  pthread_join(l->thread, NULL);
  for (job *j = l->head, *n; j; j = n) {
    n = j->next;
    free_job(j);
  }
  pthread_mutex_destroy(&l->lock);
  pthread_cond_destroy(&l->changed);
  free(l);
}

int cpu_loader_uses(cpu_loader *l, const cpu_mapping *m) {
  if (!l) return 0;
  pthread_mutex_lock(&l->lock);
  int found = 0;
  for (job *j = l->head; j && !found; j = j->next) found = j->spec.mapping == m;
  pthread_mutex_unlock(&l->lock);
  return found;
}

static cpu_loader *loader_of(rl_ctx *ctx) {
  if (ctx->loader) return ctx->loader;
  cpu_loader *l = calloc(1, sizeof *l);
  if (!l) return NULL;
  pthread_mutex_init(&l->lock, NULL);
  pthread_cond_init(&l->changed, NULL);
  l->next_ticket = 1;
  if (pthread_create(&l->thread, NULL, io_thread, l) != 0) {
    pthread_mutex_destroy(&l->lock);
    pthread_cond_destroy(&l->changed);
    free(l);
    return NULL;
  }
  return ctx->loader = l;
}

int64_t cpu_loader_submit(rl_ctx *ctx, const char *op, const job_spec *spec) {
  cpu_loader *l = loader_of(ctx);
  job *j = calloc(1, sizeof *j);
  char *p = spec->path ? strdup(spec->path) : NULL;
  if (!l || !j || (spec->path && !p)) {
    free(j);
    free(p);
    cpu_fail(ctx, RL_ERR_OOM, op, "cannot start the I/O thread or queue a job%s%s",
             spec->path ? " for " : "", spec->path ? spec->path : "");
    return 0;
  }
  j->spec = *spec;
  j->spec.path = p;
  j->status = RL_OK;
  pthread_mutex_lock(&l->lock);
  j->ticket = l->next_ticket++;
  if (l->tail) l->tail->next = j;
  else l->head = j;
  l->tail = j;
  pthread_cond_broadcast(&l->changed);
  pthread_mutex_unlock(&l->lock);
  return j->ticket;
}

RL_API int64_t rl_load_start(rl_ctx *ctx, void *dst, const uint8_t *path, uint64_t file_offset,
                             uint64_t bytes) {
  if (!ctx) return cpu_fail(NULL, RL_ERR_INVALID, __func__, "ctx is NULL"), 0;
  if (!dst || !path || bytes == 0) {
    cpu_fail(ctx, RL_ERR_INVALID, __func__, "%s", !dst ? "dst is NULL" : !path ? "path is NULL"
                                                                                : "bytes must be > 0");
    return 0;
  }
  const job_spec spec = {.kind = JOB_READ,
                         .dst = dst,
                         .path = (const char *)path,
                         .offset = file_offset,
                         .bytes = bytes,
                         .drop_behind = ctx->options[OPT_DROP_BEHIND] != 0};
  return cpu_loader_submit(ctx, __func__, &spec);
}

RL_API int32_t rl_load_wait(rl_ctx *ctx, int64_t ticket) {
  REQUIRE_CTX();
  cpu_loader *l = ctx->loader;
  REQUIRE(l != NULL, "no load was started (ticket %lld)", (long long)ticket);
  pthread_mutex_lock(&l->lock);
  job *prev = NULL, *j = l->head;
  while (j && j->ticket != ticket) {
    prev = j;
    j = j->next;
  }
  if (!j) {
    pthread_mutex_unlock(&l->lock);
    return cpu_fail(ctx, RL_ERR_INVALID, __func__, "unknown or already waited ticket %lld",
                    (long long)ticket);
  }
  while (!j->done) pthread_cond_wait(&l->changed, &l->lock);
  if (prev) prev->next = j->next;
  else l->head = j->next;
  if (l->tail == j) l->tail = prev;
  pthread_mutex_unlock(&l->lock);
  int32_t status = j->status;
  if (status != RL_OK) cpu_fail(ctx, status, __func__, "%s", j->err);
  else ctx->stats[RL_STAT_H2D_BYTES] += j->spec.bytes;
  free_job(j);
  return status;
}
