/*
 * rl_read_sysfile: the few kernel files the memory planner reads (memory cgroup limits and usage,
 * MemAvailable, this process's I/O counters, whether transparent huge pages are on), which Deno
 * only lets a program read with --allow-all. Shared by both backends (cuda/build.sh compiles this
 * file too): the whitelist is the whole security argument, so there is exactly one.
 */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "rabbitllm.h"

static int allowed(const char *p) {
  static const char *const files[] = {"/proc/meminfo", "/proc/self/cgroup", "/proc/self/mountinfo",
                                      "/proc/self/io",
                                      "/sys/kernel/mm/transparent_hugepage/enabled"};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++)
    if (strcmp(p, files[i]) == 0) return 1;
  static const char prefix[] = "/sys/fs/cgroup/";
  if (strncmp(p, prefix, sizeof prefix - 1) != 0) return 0;
  /* No way out of the tree: no ".." component anywhere. */
  for (const char *q = p; (q = strstr(q, "..")) != NULL; q += 2) {
    const int starts = q[-1] == '/', ends = q[2] == '/' || q[2] == 0;
    if (starts && ends) return 0;
  }
  return 1;
}

RL_API int64_t rl_read_sysfile(const uint8_t *path, uint8_t *buf, int64_t cap) {
  if (!path || !buf || cap <= 0 || !allowed((const char *)path)) return -1;
  int fd = open((const char *)path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  int64_t got = 0;
  for (;;) { /* kernel files report size 0: read until the end */
    if (got == cap - 1) break;
    ssize_t r = read(fd, buf + got, (size_t)(cap - 1 - got));
    if (r < 0) {
      close(fd);
      return -1;
    }
    if (r == 0) break;
    got += r;
  }
  close(fd);
  buf[got] = 0;
  return got;
}
