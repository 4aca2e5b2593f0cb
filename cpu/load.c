/*
 * rl_load_start / rl_load_wait on the CPU: one I/O thread per context reads layer files straight
 * into "device" memory (host memory here), in the order the loads were issued, while the caller
 * keeps computing. No staging copy: the bytes land where the ops read them.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

typedef struct job {
  int64_t ticket;
  void *dst;
  char *path;
  uint64_t offset, bytes;
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

/* Reads job->bytes at job->offset of job->path into job->dst; fills status/err. */
static void run_job(job *j) {
  int fd = open(j->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    j->status = RL_ERR_INVALID;
    snprintf(j->err, sizeof j->err, "cannot open %s: %s", j->path, strerror(errno));
    return;
  }
  uint64_t done = 0;
  while (done < j->bytes) {
    size_t chunk = (size_t)(j->bytes - done < (1u << 30) ? j->bytes - done : (1u << 30));
    ssize_t n = pread(fd, (uint8_t *)j->dst + done, chunk, (off_t)(j->offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      j->status = n < 0 ? RL_ERR_DEVICE : RL_ERR_INVALID;
      snprintf(j->err, sizeof j->err, "%s: %s at byte %llu of the %llu requested from offset %llu",
               j->path, n < 0 ? strerror(errno) : "file ends", (unsigned long long)done,
               (unsigned long long)j->bytes, (unsigned long long)j->offset);
      break;
    }
    done += (uint64_t)n;
  }
  close(fd);
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
  free(j->path);
  free(j);
}

void cpu_loader_free(cpu_loader *l) {
  if (!l) return;
  pthread_mutex_lock(&l->lock);
  /* Loads not started yet are dropped; the one in progress finishes before the join. */
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

RL_API int64_t rl_load_start(rl_ctx *ctx, void *dst, const uint8_t *path, uint64_t file_offset,
                             uint64_t bytes) {
  if (!ctx) return cpu_fail(NULL, RL_ERR_INVALID, __func__, "ctx is NULL"), 0;
  if (!dst || !path || bytes == 0) {
    cpu_fail(ctx, RL_ERR_INVALID, __func__, "%s", !dst ? "dst is NULL" : !path ? "path is NULL"
                                                                                : "bytes must be > 0");
    return 0;
  }
  cpu_loader *l = loader_of(ctx);
  job *j = calloc(1, sizeof *j);
  char *p = strdup((const char *)path);
  if (!l || !j || !p) {
    free(j);
    free(p);
    cpu_fail(ctx, RL_ERR_OOM, __func__, "cannot start the I/O thread or queue a load of %s",
             (const char *)path);
    return 0;
  }
  *j = (job){.dst = dst, .path = p, .offset = file_offset, .bytes = bytes, .status = RL_OK};
  pthread_mutex_lock(&l->lock);
  j->ticket = l->next_ticket++;
  if (l->tail) l->tail->next = j;
  else l->head = j;
  l->tail = j;
  pthread_cond_broadcast(&l->changed);
  pthread_mutex_unlock(&l->lock);
  return j->ticket;
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
  else ctx->stats[RL_STAT_H2D_BYTES] += j->bytes;
  free_job(j);
  return status;
}
