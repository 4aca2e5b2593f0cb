/*
 * The I/O threads of a CPU context: rl_load_start (file -> memory), rl_prefetch_start (a mapped
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
  int advised;     /* PREFETCH: its read-ahead was queued (under the lock) */
  int started;     /* an I/O thread took it (under the lock) */
  int done;        /* set by the I/O thread under the lock */
  int32_t status;  /* RL_OK or the failure */
  char err[400];   /* failure message */
  struct job *next;
} job;

#define IO_THREADS 3

struct cpu_loader {
  pthread_t threads[IO_THREADS];
  int n_threads;
  pthread_mutex_t lock;
  pthread_cond_t work;     /* for the I/O threads: a job was queued, or stop was set */
  pthread_cond_t finished; /* for rl_load_wait: a job finished */
  job *head, *tail;       /* every job not yet waited for, in issue order */
  int64_t next_ticket;
  int stop;
};

/* Reads n bytes at file offset `at` of fd into dst; on failure fills the job's status/err. */
static int read_range(job *j, int fd, uint8_t *dst, uint64_t at, uint64_t n) {
  const job_spec *s = &j->spec;
  for (uint64_t done = 0; done < n;) {
    size_t chunk = (size_t)(n - done < (1u << 30) ? n - done : (1u << 30));
    ssize_t r = pread(fd, dst + done, chunk, (off_t)(at + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      const int err = r < 0 ? errno : 0;
      j->status = r < 0 ? RL_ERR_DEVICE : RL_ERR_INVALID;
      snprintf(j->err, sizeof j->err, "%s: %s at byte %llu of the %llu requested from offset %llu",
               s->path, r < 0 ? strerror(err) : "file ends",
               (unsigned long long)(at + done - s->offset), (unsigned long long)s->bytes,
               (unsigned long long)s->offset);
      errno = err; /* for read_direct's fallback */
      return 0;
    }
    done += (uint64_t)r;
  }
  return 1;
}

/* Direct I/O (DMA into dst, no page cache) needs dst, offset and length aligned to the device's
 * blocks; 4096 covers every common one. Split files start their data on such a boundary and big
 * rl_alloc blocks are page aligned, so a layer's bytes line up with its slot. */
#define DIRECT_ALIGN 4096u

/* Reads the aligned middle of a drop-behind READ with O_DIRECT; returns the bytes it read there
 * as [*lo, *hi) of the file, or leaves *lo == *hi when direct I/O does not apply. */
static void read_direct(job *j, uint64_t *lo, uint64_t *hi) {
  const job_spec *s = &j->spec;
  const uint64_t end = s->offset + s->bytes;
  *lo = *hi = s->offset;
  if (((uintptr_t)s->dst - s->offset) % DIRECT_ALIGN != 0) return; /* not congruent */
  const uint64_t a = (s->offset + DIRECT_ALIGN - 1) / DIRECT_ALIGN * DIRECT_ALIGN;
  const uint64_t b = end / DIRECT_ALIGN * DIRECT_ALIGN;
  if (b <= a) return;
  int fd = open(s->path, O_RDONLY | O_CLOEXEC | O_DIRECT);
  if (fd < 0) return; /* a file system without O_DIRECT: the buffered read below does it all */
  if (read_range(j, fd, (uint8_t *)s->dst + (a - s->offset), a, b - a)) {
    *lo = a;
    *hi = b;
  } else if (errno == EINVAL) {
    j->status = RL_OK; /* O_DIRECT refused at read time: fall back to buffered reads */
  }
  close(fd);
}

/* Reads spec->bytes at spec->offset of spec->path into spec->dst; fills status/err. With
 * drop_behind the bytes bypass the page cache (direct I/O where aligned; the rest is dropped
 * from the cache after reading): a streamed layer is not reused before the cache would evict
 * it, and must not evict what stays resident. */
static void run_read(job *j) {
  const job_spec *s = &j->spec;
  int fd = open(s->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    j->status = RL_ERR_INVALID;
    snprintf(j->err, sizeof j->err, "cannot open %s: %s", s->path, strerror(errno));
    return;
  }
  uint64_t lo = s->offset, hi = s->offset;
  if (s->drop_behind) read_direct(j, &lo, &hi);
  uint8_t *dst = s->dst;
  if (j->status == RL_OK && read_range(j, fd, dst, s->offset, lo - s->offset))
    read_range(j, fd, dst + (hi - s->offset), hi, s->offset + s->bytes - hi);
  if (s->drop_behind) { /* whole pages: the kernel drops only pages wholly inside the range */
    const uint64_t lo_page = s->offset / DIRECT_ALIGN * DIRECT_ALIGN;
    const uint64_t hi_page = (s->offset + s->bytes + DIRECT_ALIGN - 1) / DIRECT_ALIGN * DIRECT_ALIGN;
    (void)posix_fadvise(fd, (off_t)lo_page, (off_t)(hi_page - lo_page), POSIX_FADV_DONTNEED);
  }
  close(fd);
}

/* 1 when every page of [lo, hi) is in the page cache (mincore, a few µs for a layer). Pages a
 * mapping already touched stay mapped until evicted, so a layer the page cache kept since its
 * last use needs nothing: the I/O thread stays off the cores that compute. */
static int all_cached(uint8_t *lo, uint8_t *hi, uintptr_t page) {
  unsigned char vec[4096];
  for (uint8_t *p = lo; p < hi;) {
    size_t pages = (size_t)((uintptr_t)(hi - p) / page);
    if (pages > sizeof vec) pages = sizeof vec;
    if (mincore(p, pages * page, vec) != 0) return 0;
    for (size_t i = 0; i < pages; i++)
      if (!(vec[i] & 1)) return 0;
    p += pages * page;
  }
  return 1;
}

static void page_range(const job_spec *s, uint8_t **lo, uint8_t **hi) {
  const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  *lo = (uint8_t *)((uintptr_t)s->src & ~(page - 1));
  *hi = (uint8_t *)(((uintptr_t)s->src + s->bytes + page - 1) & ~(page - 1));
}

/* Queues the reads of a prefetch's pages that are not cached, without waiting for them. The
 * kernel caps one read-ahead request at its read-ahead window (read_ahead_kb), so a layer is
 * advised in chunks: every read is in the disk's queue at once. */
#define ADVISE_CHUNK (2u << 20)
static void advise(job *j) {
  uint8_t *lo, *hi;
  page_range(&j->spec, &lo, &hi);
  if (all_cached(lo, hi, (uintptr_t)sysconf(_SC_PAGESIZE))) return;
  for (uint8_t *p = lo; p < hi; p += ADVISE_CHUNK) {
    size_t n = (size_t)(hi - p) < ADVISE_CHUNK ? (size_t)(hi - p) : ADVISE_CHUNK;
    (void)madvise(p, n, MADV_WILLNEED);
  }
}

/* Brings a mapped range in: its reads were queued (advise), POPULATE_READ waits for them and
 * fills the page tables, so the ops take no faults. A failed read comes back as an error here
 * instead of a SIGBUS in an op. */
static void run_prefetch(job *j) {
  const job_spec *s = &j->spec;
  const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uint8_t *lo, *hi;
  page_range(s, &lo, &hi);
  if (all_cached(lo, hi, page)) return;
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

/* Whether job j must wait for the earlier job k: one writes bytes the other reads or writes (a
 * load into a host block, then an upload out of it; an upload, then a load over its source).
 * Prefetches write nothing. */
static int depends_on(const job *j, const job *k) {
  const job_spec *a = &k->spec, *b = &j->spec;
  if (a->kind == JOB_PREFETCH || b->kind == JOB_PREFETCH) return 0;
  return rl_ranges_overlap(a->dst, a->bytes, b->dst, b->bytes) ||
         (b->kind == JOB_COPY && rl_ranges_overlap(a->dst, a->bytes, b->src, b->bytes)) ||
         (a->kind == JOB_COPY && rl_ranges_overlap(a->src, a->bytes, b->dst, b->bytes));
}

/* The oldest job not started whose earlier dependencies are all done (under the lock), or NULL. */
static job *next_job(cpu_loader *l) {
  for (job *j = l->head; j; j = j->next) {
    if (j->started) continue;
    int ready = 1;
    for (job *k = l->head; k != j && ready; k = k->next) ready = k->done || !depends_on(j, k);
    if (ready) return j;
  }
  return NULL;
}

/* Each I/O thread takes the oldest job not started, so jobs start in issue order and up to
 * IO_THREADS run at once: the next layer's reads are in the disk's queue while this one's
 * finish (direct reads are synchronous, one layer per call). A job that touches the bytes of an
 * earlier one not yet done (depends_on) starts only after it: results are those of running the
 * jobs one by one in issue order. */
static void *io_thread(void *arg) {
  cpu_loader *l = arg;
  pthread_mutex_lock(&l->lock);
  for (;;) {
    job *j = next_job(l);
    if (!j) {
      if (l->stop) break;
      pthread_cond_wait(&l->work, &l->lock);
      continue;
    }
    j->started = 1;
    /* Read-ahead of this and every later queued prefetch goes out first: the disk works on the
     * next layers while this one is waited for (jobs stay in the list until waited for). */
    job *ahead[64];
    int n_ahead = 0;
    for (job *k = j; k && n_ahead < 64; k = k->next) {
      if (k->spec.kind != JOB_PREFETCH || k->advised || k->done) continue;
      k->advised = 1;
      ahead[n_ahead++] = k;
    }
    pthread_mutex_unlock(&l->lock);
    for (int i = 0; i < n_ahead; i++) advise(ahead[i]);
    run_job(j); /* the job stays in the list, untouched by others, until it is done and waited */
    pthread_mutex_lock(&l->lock);
    j->done = 1;
    pthread_cond_broadcast(&l->finished);
    pthread_cond_broadcast(&l->work); /* a job that depends on j may start now */
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
  /* Jobs not started yet are dropped; those in progress finish before the join. */
  for (job *j = l->head; j; j = j->next) j->started = 1;
  l->stop = 1;
  pthread_cond_broadcast(&l->work);
  pthread_mutex_unlock(&l->lock);
  for (int i = 0; i < l->n_threads; i++) pthread_join(l->threads[i], NULL);
  for (job *j = l->head, *n; j; j = n) {
    n = j->next;
    free_job(j);
  }
  pthread_mutex_destroy(&l->lock);
  pthread_cond_destroy(&l->work);
  pthread_cond_destroy(&l->finished);
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
  pthread_cond_init(&l->work, NULL);
  pthread_cond_init(&l->finished, NULL);
  l->next_ticket = 1;
  while (l->n_threads < IO_THREADS &&
         pthread_create(&l->threads[l->n_threads], NULL, io_thread, l) == 0)
    l->n_threads++;
  if (l->n_threads == 0) {
    pthread_mutex_destroy(&l->lock);
    pthread_cond_destroy(&l->work);
    pthread_cond_destroy(&l->finished);
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
  if (spec->kind == JOB_PREFETCH) {
    /* A range the page cache holds needs nothing: done now, without waking the I/O thread (a
     * streamed layer that the page cache keeps costs what a resident one costs). */
    uint8_t *lo, *hi;
    page_range(spec, &lo, &hi);
    j->started = j->done = j->advised = all_cached(lo, hi, (uintptr_t)sysconf(_SC_PAGESIZE));
  }
  pthread_mutex_lock(&l->lock);
  j->ticket = l->next_ticket++;
  if (l->tail) l->tail->next = j;
  else l->head = j;
  l->tail = j;
  if (!j->started) pthread_cond_signal(&l->work); /* one I/O thread; a job done at once: none */
  pthread_mutex_unlock(&l->lock);
  return j->ticket;
}

RL_API int64_t rl_load_start(rl_ctx *ctx, void *dst, const uint8_t *path, uint64_t file_offset,
                             uint64_t bytes) {
  if (!ctx) return cpu_fail(NULL, RL_ERR_INVALID, __func__, "ctx is NULL"), 0;
  char m[RL_MSG_CAP];
  if (rl_check_load(m, sizeof m, dst, path, bytes) != RL_OK)
    return cpu_fail(ctx, RL_ERR_INVALID, __func__, "%s", m), 0;
  const job_spec spec = {.kind = JOB_READ,
                         .dst = dst,
                         .path = (const char *)path,
                         .offset = file_offset,
                         .bytes = bytes,
                         .drop_behind = ctx->options[OPT_DROP_BEHIND] != 0};
  return cpu_loader_submit(ctx, __func__, &spec);
}

RL_API int32_t rl_load_ready(rl_ctx *ctx, int64_t ticket) {
  cpu_loader *l = ctx ? ctx->loader : NULL;
  if (!l) return -1;
  pthread_mutex_lock(&l->lock);
  job *j = l->head;
  while (j && j->ticket != ticket) j = j->next;
  int32_t ready = j ? j->done : -1;
  pthread_mutex_unlock(&l->lock);
  return ready;
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
  while (!j->done) pthread_cond_wait(&l->finished, &l->lock);
  /* Another thread may have removed jobs while this one waited: find j's predecessor again. */
  for (prev = NULL, j = l->head; j->ticket != ticket; j = j->next) prev = j;
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
