/*
 * The CUDA emulator's runtime: memory, streams, events, launches and the fiber scheduler that
 * runs a block's threads (see emu.h for the model). Test tooling only.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <map>
#include <mutex>
#include <vector>

#include "emu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#endif

[[noreturn]] static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "cuda emu: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  abort();
}

/* ----------------------------------------------------------------------------------------------
 * Errors */

static thread_local cudaError_t t_last = cudaSuccess;
/* A kernel fault (injected, RL_CUDA_EMU_FAULT): sticky, as on a GPU: every later sync, copy and
 * cudaGetLastError reports it. Under g_dev (below) once set by queued work. */
static std::atomic<cudaError_t> g_sticky{cudaSuccess};

static cudaError_t fail(cudaError_t e) {
  t_last = e;
  return e;
}

const char *cudaGetErrorString(cudaError_t e) {
  switch (e) {
  case cudaSuccess: return "no error";
  case cudaErrorInvalidValue: return "invalid argument";
  case cudaErrorMemoryAllocation: return "out of memory";
  case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  case cudaErrorInvalidDevice: return "invalid device ordinal";
  case cudaErrorNoDevice: return "no CUDA-capable device is detected";
  case cudaErrorNotReady: return "device not ready";
  case cudaErrorLaunchFailure: return "unspecified launch failure";
  default: return "unknown error";
  }
}

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = t_last;
  t_last = cudaSuccess;
  return e != cudaSuccess ? e : g_sticky.load();
}
cudaError_t cudaPeekAtLastError(void) { return t_last != cudaSuccess ? t_last : g_sticky.load(); }

/* ----------------------------------------------------------------------------------------------
 * Device */

static const size_t EMU_MEMORY = 80ull << 30;

static bool no_device() { return getenv("RL_CUDA_EMU_NO_DEVICE") != nullptr; }

cudaError_t cudaGetDeviceCount(int *n) {
  if (no_device()) {
    *n = 0;
    return fail(cudaErrorNoDevice);
  }
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int *d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 && !no_device() ? cudaSuccess : fail(cudaErrorInvalidDevice); }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
  if (d != 0) return fail(cudaErrorInvalidDevice);
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "CPU emulation of an H100");
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 132;
  p->sharedMemPerBlockOptin = 232448;
  p->totalGlobalMem = EMU_MEMORY;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v) {
  *v = 13000;
  return cudaSuccess;
}

/* ----------------------------------------------------------------------------------------------
 * Memory: device and pinned blocks are tracked, so copies can be checked against them */

static std::mutex g_mem_lock;
static std::map<uintptr_t, size_t> g_device, g_pinned; /* base -> bytes */
static size_t g_device_bytes;                          /* live cudaMalloc bytes */

/* The block of `m` holding [p, p + n), or false. */
static bool inside(const std::map<uintptr_t, size_t> &m, const void *p, size_t n) {
  const uintptr_t a = (uintptr_t)p;
  auto it = m.upper_bound(a);
  if (it == m.begin()) return false;
  --it;
  return a >= it->first && a + n <= it->first + it->second;
}

static cudaError_t alloc_in(std::map<uintptr_t, size_t> &m, void **p, size_t bytes) {
  *p = nullptr;
  if (bytes == 0) return fail(cudaErrorInvalidValue);
  if (bytes > EMU_MEMORY) return fail(cudaErrorMemoryAllocation);
  if (&m == &g_device) {
    std::lock_guard<std::mutex> g(g_mem_lock);
    if (bytes > EMU_MEMORY - g_device_bytes) return fail(cudaErrorMemoryAllocation);
  }
  const size_t align = &m == &g_pinned ? 4096 : 256; /* cudaHostAlloc returns whole pages */
  const size_t rounded = (bytes + align - 1) / align * align;
  void *q = aligned_alloc(align, rounded);
  if (!q) return fail(cudaErrorMemoryAllocation);
  memset(q, 0xff, bytes); /* uninitialized device memory reads as NaN */
  std::lock_guard<std::mutex> g(g_mem_lock);
  m[(uintptr_t)q] = bytes;
  if (&m == &g_device) g_device_bytes += bytes;
  *p = q;
  return cudaSuccess;
}

static cudaError_t free_in(std::map<uintptr_t, size_t> &m, void *p) {
  if (!p) return cudaSuccess;
  std::lock_guard<std::mutex> g(g_mem_lock);
  auto it = m.find((uintptr_t)p);
  if (it == m.end()) return fail(cudaErrorInvalidValue);
  if (&m == &g_device) g_device_bytes -= it->second;
  m.erase(it);
  free(p);
  return cudaSuccess;
}

/* Free = the emulated capacity less the live cudaMalloc blocks (as a GPU reports it). */
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
  std::lock_guard<std::mutex> g(g_mem_lock);
  *free_b = EMU_MEMORY - g_device_bytes;
  *total_b = EMU_MEMORY;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes) { return alloc_in(g_device, p, bytes); }
cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned) { return alloc_in(g_pinned, p, bytes); }

/* ----------------------------------------------------------------------------------------------
 * Streams and events: deferred work, run in an adversarial order (see emu.h).
 *
 * Every queued item (a kernel, a copy, an event record, a wait for an event) gets a global id
 * that grows with issue order, and each stream runs its items first in, first out, so item (s,
 * id) has completed once s's queue holds nothing at or before id. A wait captures, when it is
 * issued, the record it waits for (as cudaStreamWaitEvent does), so recycling an event is safe.
 * One mutex (g_dev) guards the queues; queued work runs under it, on whichever host thread has
 * to wait for it (the caller's or the backend's I/O thread). */

struct emu_item {
  enum kind_t { KERNEL, COPY, RECORD, WAIT } kind;
  uint64_t id;
  std::function<void()> work; /* KERNEL, COPY */
  emu_event *event = nullptr; /* RECORD */
  emu_stream *wait_stream = nullptr; /* WAIT: the record waited for; null = nothing to wait for */
  uint64_t wait_id = 0;
};

struct emu_stream {
  unsigned flags;
  int index; /* creation order, for messages */
  bool destroyed = false;
  std::deque<emu_item> queue;
};

struct emu_event {
  unsigned flags;
  emu_stream *stream = nullptr; /* of its last record; null = never recorded */
  uint64_t record_id = 0;
  double ms = 0.0;   /* host clock when its last record ran */
  int pending = 0;   /* its records still queued */
  bool destroyed = false;
};

static std::recursive_mutex g_dev;
static std::vector<emu_stream *> g_streams; /* never freed: waits may still name them */
static uint64_t g_next_id = 1;
static uint64_t g_kernels_run;

static double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/* RL_CUDA_EMU_FAULT=N: the Nth kernel to run faults instead (sets the sticky error), as a kernel
 * that reads out of bounds does on a GPU; 0 or unset: none. */
static uint64_t fault_at() {
  static const uint64_t n = getenv("RL_CUDA_EMU_FAULT") ? strtoull(getenv("RL_CUDA_EMU_FAULT"), nullptr, 10) : 0;
  return n;
}

static bool item_done(const emu_stream *s, uint64_t id) {
  return !s || s->queue.empty() || s->queue.front().id > id;
}

static bool runnable(const emu_stream *s) {
  if (s->queue.empty()) return false;
  const emu_item &it = s->queue.front();
  return it.kind != emu_item::WAIT || item_done(it.wait_stream, it.wait_id);
}

static void run_head(emu_stream *s) {
  emu_item it = std::move(s->queue.front());
  switch (it.kind) {
  case emu_item::KERNEL:
    if (g_sticky == cudaSuccess && ++g_kernels_run == fault_at()) {
      fprintf(stderr, "cuda emu: kernel %llu faults (RL_CUDA_EMU_FAULT)\n",
              (unsigned long long)g_kernels_run);
      g_sticky = cudaErrorLaunchFailure;
    }
    if (g_sticky == cudaSuccess) it.work();
    break;
  case emu_item::COPY:
    if (g_sticky == cudaSuccess) it.work();
    break;
  case emu_item::RECORD:
    if (it.event->record_id == it.id) it.event->ms = now_ms();
    break;
  case emu_item::WAIT: break;
  }
  s->queue.pop_front(); /* only now is the item complete (others test queue fronts) */
  if (it.kind == emu_item::RECORD && --it.event->pending == 0 && it.event->destroyed)
    delete it.event;
}

/* Runs queued work until done() holds, under g_dev: streams other than `target` first, as far
 * as their waits allow, then one item of target, and again. */
static void drive(emu_stream *target, const std::function<bool()> &done) {
  while (!done()) {
    emu_stream *pick = nullptr;
    for (emu_stream *s : g_streams)
      if (s != target && runnable(s)) {
        pick = s;
        break;
      }
    if (!pick && target && runnable(target)) pick = target;
    if (!pick) {
      fprintf(stderr, "cuda emu: deadlock: the host waits for work that can never run\n");
      for (emu_stream *s : g_streams)
        if (!s->queue.empty())
          fprintf(stderr, "  stream %d: %zu queued, head kind %d waits on stream %d item %llu\n",
                  s->index, s->queue.size(), (int)s->queue.front().kind,
                  s->queue.front().wait_stream ? s->queue.front().wait_stream->index : -1,
                  (unsigned long long)s->queue.front().wait_id);
      abort();
    }
    run_head(pick);
  }
}

static void drive_all();

/* cudaFree and cudaFreeHost synchronize the device first, as on a GPU. */
cudaError_t cudaFree(void *p) {
  if (p) {
    std::lock_guard<std::recursive_mutex> g(g_dev);
    drive_all();
  }
  return free_in(g_device, p);
}
cudaError_t cudaFreeHost(void *p) {
  if (p) {
    std::lock_guard<std::recursive_mutex> g(g_dev);
    drive_all();
  }
  return free_in(g_pinned, p);
}

static void drive_all() {
  drive(nullptr, [] {
    for (emu_stream *s : g_streams)
      if (!s->queue.empty()) return false;
    return true;
  });
}

static cudaError_t enqueue(cudaStream_t s, emu_item &&it, uint64_t *id = nullptr) {
  if (!s) die("work queued on the legacy default stream (the emulation models explicit streams)");
  if (s->destroyed) die("work queued on a destroyed stream");
  it.id = g_next_id++;
  if (id) *id = it.id;
  s->queue.push_back(std::move(it));
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s) {
  bool host_pageable = false;
  {
    std::lock_guard<std::mutex> g(g_mem_lock);
    const bool dst_dev = inside(g_device, dst, bytes), src_dev = inside(g_device, src, bytes);
    bool good = true;
    switch (kind) {
    case cudaMemcpyHostToDevice:
      good = dst_dev && !inside(g_device, src, 1);
      host_pageable = !inside(g_pinned, src, bytes);
      break;
    case cudaMemcpyDeviceToHost:
      good = src_dev && !inside(g_device, dst, 1);
      host_pageable = !inside(g_pinned, dst, bytes);
      break;
    case cudaMemcpyDeviceToDevice: good = dst_dev && src_dev; break;
    default: good = false; break;
    }
    if (!good) {
      fprintf(stderr, "cuda emu: cudaMemcpyAsync(%p, %p, %zu, kind %d) outside device blocks\n",
              dst, src, bytes, (int)kind);
      return fail(cudaErrorInvalidValue);
    }
  }
  std::lock_guard<std::recursive_mutex> g(g_dev);
  if (g_sticky != cudaSuccess) return fail(g_sticky.load());
  emu_item it{emu_item::COPY, 0, {}};
  if (kind == cudaMemcpyHostToDevice && host_pageable) {
    /* From pageable memory the source is consumed before the call returns (the driver stages
     * it), so the host may reuse it at once: copy it now, deliver it in stream order. */
    auto snap = std::make_shared<std::vector<uint8_t>>((const uint8_t *)src,
                                                       (const uint8_t *)src + bytes);
    it.work = [dst, snap] { memcpy(dst, snap->data(), snap->size()); };
  } else {
    it.work = [dst, src, bytes] { memmove(dst, src, bytes); };
  }
  uint64_t id = 0;
  enqueue(s, std::move(it), &id);
  /* Into pageable memory the copy is synchronous: the call returns once it is done. */
  if (kind == cudaMemcpyDeviceToHost && host_pageable) {
    drive(s, [s, id] { return item_done(s, id); });
    if (g_sticky != cudaSuccess) return fail(g_sticky.load());
  }
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
  std::lock_guard<std::recursive_mutex> g(g_dev);
  *s = new emu_stream{flags, (int)g_streams.size(), false, {}};
  g_streams.push_back(*s);
  return cudaSuccess;
}
/* Work queued before still completes (as on a GPU); the object stays for waits naming it. */
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s) return fail(cudaErrorInvalidValue);
  std::lock_guard<std::recursive_mutex> g(g_dev);
  drive(s, [s] { return s->queue.empty(); });
  s->destroyed = true;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (!s) return fail(cudaErrorInvalidValue);
  std::lock_guard<std::recursive_mutex> g(g_dev);
  if (!s->queue.empty()) {
    const uint64_t last = s->queue.back().id;
    drive(s, [s, last] { return item_done(s, last); });
  }
  return g_sticky == cudaSuccess ? cudaSuccess : fail(g_sticky.load());
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  if (!s || !e) return fail(cudaErrorInvalidValue);
  std::lock_guard<std::recursive_mutex> g(g_dev);
  emu_item it{emu_item::WAIT, 0, {}};
  it.wait_stream = e->stream; /* its record as of now; never recorded: nothing to wait for */
  it.wait_id = e->record_id;
  return enqueue(s, std::move(it));
}
cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
  *e = new emu_event{};
  (*e)->flags = flags;
  return cudaSuccess;
}
/* As on a GPU, a record still queued completes; the event is freed after it. */
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (!e) return fail(cudaErrorInvalidValue);
  std::lock_guard<std::recursive_mutex> g(g_dev);
  if (e->pending) e->destroyed = true;
  else delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (!e || !s || e->destroyed) return fail(cudaErrorInvalidValue);
  std::lock_guard<std::recursive_mutex> g(g_dev);
  emu_item it{emu_item::RECORD, 0, {}};
  it.event = e;
  uint64_t id = 0;
  enqueue(s, std::move(it), &id);
  e->stream = s;
  e->record_id = id;
  e->pending++;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!e) return fail(cudaErrorInvalidValue);
  std::lock_guard<std::recursive_mutex> g(g_dev);
  emu_stream *s = e->stream;
  const uint64_t id = e->record_id;
  if (s) drive(s, [s, id] { return item_done(s, id); });
  return g_sticky == cudaSuccess ? cudaSuccess : fail(g_sticky.load());
}
/* Never runs queued work: answers whether the last record has completed. */
cudaError_t cudaEventQuery(cudaEvent_t e) {
  if (!e) return fail(cudaErrorInvalidValue);
  std::lock_guard<std::recursive_mutex> g(g_dev);
  if (g_sticky != cudaSuccess) return fail(g_sticky.load());
  /* Some CUDA runtimes also leave "not ready" as the last error (PyTorch clears it after every
   * query): so does the emulation, so that a caller that does not clear it fails its next
   * launch check here too. */
  return item_done(e->stream, e->record_id) ? cudaSuccess : fail(cudaErrorNotReady);
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t from, cudaEvent_t to) {
  std::lock_guard<std::recursive_mutex> g(g_dev);
  if (!from || !to || !from->stream || !to->stream ||
      (from->flags & cudaEventDisableTiming) || (to->flags & cudaEventDisableTiming))
    return fail(cudaErrorInvalidValue);
  if (!item_done(from->stream, from->record_id) || !item_done(to->stream, to->record_id))
    return fail(cudaErrorNotReady);
  *ms = (float)(to->ms - from->ms);
  return cudaSuccess;
}

/* ----------------------------------------------------------------------------------------------
 * Launches: fibers, barriers, shuffles */

namespace emu {

struct barrier {
  int expected = 0, arrived = 0;
  uint64_t gen = 0;
};

struct fiber {
  ucontext_t ctx;
  char *stack = nullptr;
  uint3 tid;
  int lane = 0, warp = 0;
  enum { RUNNABLE, WAITING, DONE } state = RUNNABLE;
  barrier *waiting_on = nullptr;
  uint64_t wait_gen = 0;
  uint64_t exchanges = 0; /* warp exchanges so far (double-buffered slots) */
};

static const size_t STACK = 64 * 1024; /* small: ASan clears a stack's shadow on every switch */

static std::mutex g_launch_lock;
static std::map<const void *, int> g_max_smem; /* cudaFuncSetAttribute */
static std::vector<fiber> g_fibers;
static fiber *g_cur;
static ucontext_t g_sched;
static barrier g_block_bar;
static std::vector<barrier> g_warp_bar;
static std::vector<uint64_t> g_slots;        /* [warp][2][32] */
static std::vector<uint64_t> g_slot_index;   /* [warp][2][32]: exchange number written */
static std::vector<float4> g_smem;
static const std::function<void()> *g_body;
static const void *g_fn;
#ifdef EMU_ASAN
static const void *g_sched_bottom;
static size_t g_sched_size;
#endif

uint3 block_idx;
dim3 block_dim, grid_dim;

fiber *current() {
  if (!g_cur) die("device code called outside a kernel");
  return g_cur;
}
uint3 &thread_idx() { return current()->tid; }
int lane_id() { return current()->lane; }
void *dynamic_smem() { return g_smem.data(); }

static void switch_to(fiber &f) {
#ifdef EMU_ASAN
  void *fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, STACK);
#endif
  g_cur = &f;
  swapcontext(&g_sched, &f.ctx);
  g_cur = nullptr;
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

static void yield(bool exiting) {
  fiber &f = *g_cur;
#ifdef EMU_ASAN
  void *fake = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, g_sched_bottom, g_sched_size);
#endif
  swapcontext(&f.ctx, &g_sched);
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, &g_sched_bottom, &g_sched_size);
#endif
  (void)exiting;
}

static void arrive(barrier &b) {
  if (++b.arrived == b.expected) {
    b.arrived = 0;
    b.gen++;
    return;
  }
  fiber &f = *g_cur;
  f.state = fiber::WAITING;
  f.waiting_on = &b;
  f.wait_gen = b.gen;
  yield(false);
}

/* An exited thread leaves the barrier; the others may now be complete. */
static void drop(barrier &b) {
  b.expected--;
  if (b.arrived > 0 && b.arrived == b.expected) {
    b.arrived = 0;
    b.gen++;
  }
}

void syncthreads() {
  current();
  arrive(g_block_bar);
}

uint64_t warp_exchange(uint64_t v, int src, unsigned mask) {
  fiber &f = *current();
  if (mask != 0xffffffffu) die("shuffle with mask %#x (only full warps are emulated)", mask);
  barrier &b = g_warp_bar[f.warp];
  if (b.expected != 32) die("warp shuffle with %d live lanes in warp %d", b.expected, f.warp);
  const int buf = (int)(f.exchanges & 1);
  const size_t base = ((size_t)f.warp * 2 + buf) * 32;
  const uint64_t index = f.exchanges++;
  g_slots[base + f.lane] = v;
  g_slot_index[base + f.lane] = index;
  arrive(b);
  if (g_slot_index[base + src] != index)
    die("divergent shuffles: lane %d is at exchange %llu, lane %d at %llu", f.lane,
        (unsigned long long)index, src, (unsigned long long)g_slot_index[base + src]);
  return g_slots[base + src];
}

static void trampoline() {
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_sched_bottom, &g_sched_size);
#endif
  (*g_body)();
  fiber &f = *g_cur;
  f.state = fiber::DONE;
  drop(g_block_bar);
  drop(g_warp_bar[f.warp]);
  yield(true);
  die("a finished fiber was resumed");
}

static void run_block(unsigned threads) {
  const unsigned n_warps = (threads + 31) / 32;
  g_block_bar = barrier();
  g_block_bar.expected = (int)threads;
  g_warp_bar.assign(n_warps, barrier());
  for (unsigned w = 0; w < n_warps; w++)
    g_warp_bar[w].expected = (int)(threads - 32 * w < 32 ? threads - 32 * w : 32);
  g_slots.assign((size_t)n_warps * 64, 0);
  g_slot_index.assign((size_t)n_warps * 64, ~0ull);
  memset(g_smem.data(), 0xff, g_smem.size() * sizeof(float4)); /* undefined: reads as NaN */
  for (unsigned t = 0; t < threads; t++) {
    fiber &f = g_fibers[t];
    f.tid = {t % block_dim.x, t / block_dim.x % block_dim.y, t / (block_dim.x * block_dim.y)};
    f.lane = (int)(t % 32);
    f.warp = (int)(t / 32);
    f.state = fiber::RUNNABLE;
    f.waiting_on = nullptr;
    f.exchanges = 0;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = STACK;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, trampoline, 0);
  }
  unsigned done = 0;
  while (done < threads) {
    bool progress = false;
    for (unsigned t = 0; t < threads; t++) {
      fiber &f = g_fibers[t];
      if (f.state == fiber::DONE) continue;
      if (f.state == fiber::WAITING) {
        if (f.waiting_on->gen == f.wait_gen) continue;
        f.state = fiber::RUNNABLE;
      }
      switch_to(f);
      progress = true;
      if (f.state == fiber::DONE) done++;
    }
    if (!progress)
      die("deadlock in kernel %p, block (%u,%u,%u): %u of %u threads wait at barriers that the "
          "others never reach",
          g_fn, block_idx.x, block_idx.y, block_idx.z, threads - done, threads);
  }
}

/* Runs a queued kernel (under g_dev): every block, one after another. */
static void run_kernel(const void *fn, dim3 grid, dim3 block, size_t smem,
                       const std::function<void()> &body) {
  const uint64_t threads = (uint64_t)block.x * block.y * block.z;
  std::lock_guard<std::mutex> guard(g_launch_lock);
  if (g_fibers.size() < threads) {
    const size_t old = g_fibers.size();
    g_fibers.resize(threads);
    for (size_t t = old; t < threads; t++) {
      void *s = mmap(nullptr, STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (s == MAP_FAILED) die("cannot map a fiber stack");
      g_fibers[t].stack = (char *)s;
    }
  }
  g_smem.assign((smem + sizeof(float4) - 1) / sizeof(float4) + 1, float4());
  g_body = &body;
  g_fn = fn;
  grid_dim = grid;
  block_dim = block;
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) {
        block_idx = {x, y, z};
        run_block((unsigned)threads);
      }
  g_body = nullptr;
}

void launch(const void *fn, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            std::function<void()> body) {
  const uint64_t threads = (uint64_t)block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    fprintf(stderr, "cuda emu: bad launch of %p: grid (%u,%u,%u) block (%u,%u,%u)\n", fn, grid.x,
            grid.y, grid.z, block.x, block.y, block.z);
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  if (smem > 48 * 1024) {
    std::lock_guard<std::mutex> guard(g_launch_lock);
    auto it = g_max_smem.find(fn);
    if (it == g_max_smem.end() || (size_t)it->second < smem) {
      fprintf(stderr, "cuda emu: launch of %p with %zu bytes of dynamic shared memory without "
                      "cudaFuncSetAttribute\n", fn, smem);
      fail(cudaErrorInvalidValue);
      return;
    }
  }
  std::lock_guard<std::recursive_mutex> g(g_dev);
  if (g_sticky != cudaSuccess) {
    fail(g_sticky.load());
    return;
  }
  emu_item it{emu_item::KERNEL, 0, {}};
  it.work = [fn, grid, block, smem, body = std::move(body)] { run_kernel(fn, grid, block, smem, body); };
  enqueue(stream, std::move(it));
}

} /* namespace emu */

cudaError_t emu_func_set_attribute(const void *fn, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > 232448)
    return fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> guard(emu::g_launch_lock);
  emu::g_max_smem[fn] = value;
  return cudaSuccess;
}
