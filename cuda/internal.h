/*
 * Shared by the CUDA backend's translation units: the context, error reporting, argument checks,
 * device scratch, small host->device parameter uploads and the device-side dtype loads.
 * Nothing here is exported: the library builds with -fvisibility=hidden and a version script, so
 * only the RL_API entries of ffi/rabbitllm.h are visible.
 *
 * Streams: every op runs on ctx->compute, in issue order. The I/O thread of rl_load_start and
 * rl_upload_start copies on ctx->transfer (or on compute when the option async_copy is 0), each
 * job's first copy ordered after the compute work issued before the job; rl_load_wait makes
 * compute wait for a job's completion event, so the host never blocks on a layer copy.
 */
#ifndef RL_CUDA_INTERNAL_H
#define RL_CUDA_INTERNAL_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "rabbitllm.h"
#include "rl_shared.h"

/* ----------------------------------------------------------------------------------------------
 * The context */

/* Device scratch owned by the context, one buffer per purpose (grown on demand, never shrunk).
 * Each op that uses one issues its writes and reads on the compute stream, so reuse by the next
 * op is ordered after the previous op's kernels. */
enum scratch_id {
  SCR_IDS,       /* rl_embedding: int32 ids */
  SCR_POSITIONS, /* rl_rope: int32 positions */
  SCR_INV_FREQ,  /* rl_rope: float inv_freq */
  SCR_KV_VALID,  /* rl_attention: uint8 mask */
  SCR_ARGMAX,    /* rl_argmax: int32 result per row */
  SCR_SCORES,    /* rl_attention eager: scores/probabilities + row sums */
  SCR_PARTIAL,   /* rl_attention flash split-K: partial outputs + (max, sum) */
  SCR_ROWS,      /* rl_gather_rows, rl_scatter_add_rows: int32 row indices */
  SCR_ROW_WEIGHTS, /* rl_scatter_add_rows: float weights */
  SCR_ALIBI,     /* rl_attention_alibi: float slope per query head */
  SCR_COUNT,
};

struct device_buffer {
  void *p = nullptr;
  uint64_t cap = 0; /* bytes */
};

/* A pinned host buffer that small host arguments (ids, positions, masks) are copied through, so
 * their host->device copy is truly asynchronous. `copied` is recorded after the copy out of it;
 * the buffer is reused only once that event has completed. */
struct host_stage {
  void *p = nullptr;
  uint64_t cap = 0;
  cudaEvent_t copied = nullptr;
};
/* The stages are a ring, used in turn. When the next one is still being copied out of, a new
 * stage is inserted before it instead of waiting, up to MAX_HOST_STAGES (three per layer: the
 * host may run this many uploads ahead of the GPU before it blocks). */
constexpr size_t MIN_HOST_STAGES = 8, MAX_HOST_STAGES = 128;

/* The I/O thread's jobs (ctx.cu): rl_load_start into device memory (through staging) or into an
 * rl_host_alloc block (read straight into it), and rl_upload_start (host block -> device). One
 * FIFO queue and one ticket sequence for all three; rl_load_wait waits for any of them. */
constexpr uint64_t LOAD_CHUNK = 64ull << 20; /* bytes per staging buffer (two of them) */

enum job_kind {
  JOB_FILE_TO_DEVICE, /* rl_load_start, dst device memory */
  JOB_FILE_TO_HOST,   /* rl_load_start, dst inside an rl_host_alloc block */
  JOB_UPLOAD,         /* rl_upload_start */
};

struct load_job {
  int64_t ticket = 0;
  int kind = JOB_FILE_TO_DEVICE;
  void *dst = nullptr;
  const void *src = nullptr; /* JOB_UPLOAD: inside a host block */
  std::string path;          /* the file; for JOB_UPLOAD a description for messages */
  uint64_t offset = 0, bytes = 0;
  bool pinned = true;       /* option pin_memory at rl_load_start */
  bool async = true;        /* option async_copy at rl_load_start / rl_upload_start */
  bool drop_behind = false; /* option drop_behind at rl_load_start */
  /* Recorded on the compute stream when the job was issued (device dst, async): the transfer
   * stream waits on it before the job's first copy, so the copy cannot overwrite a buffer that
   * kernels issued before it still read. Back to loader::free_events once waited on. */
  cudaEvent_t issued = nullptr;
};

struct load_result {
  uint64_t bytes = 0;           /* counted in RL_STAT_H2D_BYTES when waited for successfully */
  bool done = false;            /* set by the I/O thread under loader::lock */
  int32_t status = RL_OK;       /* RL_OK or the failure */
  std::string error;            /* failure message (without the "rl_load_wait: " prefix) */
  cudaEvent_t finished = nullptr; /* recorded after the last copy of the job (on success; none
                                     for a load into host memory) */
};

struct loader {
  std::thread thread; /* started by the first rl_load_start / rl_upload_start */
  bool started = false;
  std::mutex lock;
  std::condition_variable wake; /* a job was queued, or stop was set */
  std::condition_variable done; /* a job finished */
  std::deque<load_job> queue;   /* issued, not yet started */
  std::map<int64_t, load_result> results; /* issued, not yet waited for */
  std::vector<cudaEvent_t> free_events;   /* recycled "finished" and "issued" events */
  int64_t next_ticket = 1;
  bool stop = false;
  /* Owned by the I/O thread (given back by rl_destroy after the join). */
  void *pinned[2] = {nullptr, nullptr};   /* LOAD_CHUNK each, from the process's pool */
  void *pageable[2] = {nullptr, nullptr}; /* malloc, LOAD_CHUNK each */
  cudaEvent_t staged[2] = {nullptr, nullptr}; /* last copy out of staging buffer i */
  int next_staging = 0; /* the buffer the next chunk goes through, across jobs */
  /* After the last rl_upload_start copy on the transfer [0] / compute [1] stream: a load into a
   * host block first waits for them, so it never overwrites bytes a copy still reads. */
  cudaEvent_t uploaded[2] = {nullptr, nullptr};
};

struct rl_ctx {
  int device = 0;
  int sm_count = 0;          /* multiprocessors, for the split-K heuristics */
  int cc_major = 0, cc_minor = 0;
  uint64_t smem_optin = 0;   /* max dynamic shared memory per block (opt-in) */
  uint64_t total_memory = 0; /* bytes of device memory */
  cudaStream_t compute = nullptr, transfer = nullptr;
  /* Indexed by enum rl_stat, under stats_lock: rl_load_wait may run on another thread (Deno's
   * nonblocking calls) while ops and copies are issued on this one. */
  std::mutex stats_lock;
  uint64_t stats[RL_STAT_COUNT] = {};
  std::unordered_map<void *, uint64_t> allocs; /* rl_alloc block -> bytes */
  /* rl_host_alloc block -> bytes, ordered so that the block holding a pointer is found */
  std::map<uintptr_t, uint64_t> host_allocs;
  device_buffer scratch[SCR_COUNT];
  std::vector<host_stage> stages; /* the ring (see MIN_HOST_STAGES) */
  size_t next_stage = 0;
  std::vector<cudaEvent_t> marks; /* timing events; the first marks_used are recorded */
  size_t marks_used = 0;
  int64_t attn_impl = 0, pin_memory = 1, async_copy = 1, drop_behind = 0; /* options */
  int64_t memory_limit = 0; /* option device_memory_limit: bytes rl_alloc may hold; 0 = none */
  loader load;
  std::mutex err_lock;
  char err[512] = {}; /* last error message, NUL-terminated */
};

/* ----------------------------------------------------------------------------------------------
 * Errors and argument checks */

/* Writes "op: <message>" into ctx's error (the global one when ctx is NULL); returns status. */
int32_t cu_fail(rl_ctx *ctx, int32_t status, const char *op, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A failed CUDA call: "op: <cudaGetErrorString> (file:line)". Returns RL_ERR_OOM for an
 * allocation failure, RL_ERR_DEVICE otherwise. Clears the runtime's (non-sticky) last error. */
int32_t cu_fail_cuda(rl_ctx *ctx, const char *op, cudaError_t e, const char *file, int line);

/* The macros below expect `ctx` and `op` (the entry's name, for messages) in scope. ENTER()
 * defines op as the current function's name, checks ctx and makes its device current on the
 * calling thread (Deno calls from different threads); ENTER_AS names another op. */
#define REQUIRE(cond, ...)                                                                        \
  do {                                                                                            \
    if (!(cond)) return cu_fail(ctx, RL_ERR_INVALID, op, __VA_ARGS__);                            \
  } while (0)
#define CUDA_CHECK(call)                                                                          \
  do {                                                                                            \
    const cudaError_t e_ = (call);                                                                \
    if (e_ != cudaSuccess) return cu_fail_cuda(ctx, op, e_, __FILE__, __LINE__);                  \
  } while (0)
/* After a kernel launch: a bad launch configuration is reported here, naming the op. With the
 * environment variable RABBITLLM_CUDA_SYNC=1, the compute stream is also synchronized, so a
 * kernel that faults is named by its op (slow; for diagnosis). */
int32_t launch_check(rl_ctx *ctx, const char *op, const char *file, int line);
#define LAUNCH_CHECK() TRY(launch_check(ctx, op, __FILE__, __LINE__))
/* Whether RABBITLLM_CUDA_SYNC=1 (read once; says so once on stderr). */
bool sync_every_op();
/* Propagates a non-OK status of a helper. */
#define TRY(expr)                                                                                 \
  do {                                                                                            \
    const int32_t s_ = (expr);                                                                    \
    if (s_ != RL_OK) return s_;                                                                   \
  } while (0)
#define ENTER_AS(name)                                                                            \
  const char *const op = (name);                                                                  \
  if (ctx == NULL) return cu_fail(NULL, RL_ERR_INVALID, op, "ctx is NULL");                       \
  CUDA_CHECK(cudaSetDevice(ctx->device))
#define ENTER() ENTER_AS(__func__)

/* The argument checks of each op are shared with the CPU backend (ffi/rl_shared.h):
 * CHECK_ARGS(rl_check_<op>, args...) runs one and returns its status, naming op. */
#define CHECK_ARGS(check, ...)                                                                    \
  do {                                                                                            \
    char m_[RL_MSG_CAP];                                                                          \
    const int32_t s_ = check(m_, sizeof m_, __VA_ARGS__);                                         \
    if (s_ != RL_OK) return cu_fail(ctx, s_, op, "%s", m_);                                       \
  } while (0)
#define REQUIRE_PTR(p) CHECK_ARGS(rl_check_ptr, (p), #p)
#define REQUIRE_POS(n) CHECK_ARGS(rl_check_pos, (n) > 0, (long long)(n), #n)
/* A device pointer must be aligned to its element size, or the kernel would fault. */
#define REQUIRE_ALIGNED(p, align)                                                                 \
  REQUIRE((uintptr_t)(p) % (uintptr_t)(align) == 0, "%s %p is not aligned to %d bytes", #p,       \
          (const void *)(p), (int)(align))

/* Bytes of an element of a plain dtype (f32, f16, bf16; the block formats have none). */
static inline int dtype_size(int dt) { return dt == RL_F32 ? 4 : 2; }
static inline bool is_plain_dtype(int dt) { return dt == RL_F32 || dt == RL_F16 || dt == RL_BF16; }

/* ----------------------------------------------------------------------------------------------
 * ggml block formats (quant.cu): rl_matmul weights and rl_embedding tables of dtype RL_Q8_0 ..
 * RL_Q6_K, after the op's argument checks (K resp. dim a multiple of the block). Any other dtype
 * is refused with RL_ERR_UNSUPPORTED naming it. w / table may have any alignment (bytes are read
 * one by one); ids is the device copy. Launched on the compute stream. */
int32_t launch_quant_matmul(rl_ctx *ctx, const char *op, float *out, const float *x,
                            const void *w, int32_t wdtype, const void *bias, int32_t bias_dtype,
                            int32_t M, int32_t N, int32_t K);
int32_t launch_quant_embedding(rl_ctx *ctx, const char *op, float *out, const void *table,
                               int32_t dtype, const int32_t *d_ids, int32_t n, int32_t dim);

/* ----------------------------------------------------------------------------------------------
 * Scratch and parameter uploads (ctx.cu) */

/* Makes scratch `which` at least `bytes` long and returns it in *out. Growing it synchronizes
 * the compute stream first (kernels issued earlier may still read the old buffer). */
int32_t scratch_reserve(rl_ctx *ctx, const char *op, int which, uint64_t bytes, void **out);

/* Copies `bytes` of host memory into scratch `which`, asynchronously on the compute stream,
 * through a pinned staging buffer (the host buffer may change as soon as this returns).
 * Returns the device copy in *out. */
int32_t upload_params(rl_ctx *ctx, const char *op, int which, const void *host, uint64_t bytes,
                      void **out);

/* ----------------------------------------------------------------------------------------------
 * Launch helpers */

/* Blocks for a grid-stride loop over n items: enough to fill the device, never more than
 * needed, and within the 2^31 - 1 limit of gridDim.x. */
static inline unsigned grid_for(int64_t n, int block) {
  int64_t b = (n + block - 1) / block;
  const int64_t cap = 1 << 20;
  return (unsigned)(b < 1 ? 1 : b > cap ? cap : b);
}

#ifdef __CUDACC__
/* ----------------------------------------------------------------------------------------------
 * Device helpers */

/* Element i of a dtype-DT tensor, as f32 (exact for every f16/bf16 value). */
template <int DT> __device__ __forceinline__ float load_elt(const void *p, int64_t i) {
  if constexpr (DT == RL_F32) {
    return static_cast<const float *>(p)[i];
  } else if constexpr (DT == RL_F16) {
    return __half2float(static_cast<const __half *>(p)[i]);
  } else {
    /* bf16 is the top half of an f32 */
    return __uint_as_float((uint32_t)static_cast<const uint16_t *>(p)[i] << 16);
  }
}

/* The same with the dtype known only at run time (biases, epilogues). */
__device__ __forceinline__ float load_any(const void *p, int dt, int64_t i) {
  switch (dt) {
  case RL_F16: return load_elt<RL_F16>(p, i);
  case RL_BF16: return load_elt<RL_BF16>(p, i);
  default: return load_elt<RL_F32>(p, i);
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/* ---- pieces shared by the f32/f16/bf16 kernels (matmul.cu) and the block-format ones (quant.cu) */

/* GEMV epilogue: sums each W row's lanes and, from lane 0, writes out[m, n0 + r] = acc + bias. */
template <int ROWS, int M>
__device__ __forceinline__ void gemv_store(float (&acc)[ROWS][M], float *out, const void *bias,
                                           int bias_dt, int N, int n0, int lane) {
#pragma unroll
  for (int r = 0; r < ROWS; r++) {
#pragma unroll
    for (int m = 0; m < M; m++) acc[r][m] = warp_sum(acc[r][m]);
    const int n = n0 + r;
    if (lane == 0 && n < N) {
      const float b = bias ? load_any(bias, bias_dt, n) : 0.0f;
#pragma unroll
      for (int m = 0; m < M; m++) out[(int64_t)m * N + n] = acc[r][m] + b;
    }
  }
}

/* The 64 x 64 output tile of a GEMM block of 256 threads, thread (ty, tx) = (tid / 16, tid % 16)
 * owning rows ty + 16 i and columns tx + 16 j (i, j < 4). TILE_LD is the padded row of the
 * transposed shared tiles xs[k][m], ws[k][n]. One K step: acc[i][j] += sum_kk xs * ws. */
constexpr int TILE_LD = 64 + 4;
template <int BK>
__device__ __forceinline__ void tile_fma(const float (*xs)[TILE_LD], const float (*ws)[TILE_LD],
                                         float (&acc)[4][4], int tx, int ty) {
#pragma unroll
  for (int kk = 0; kk < BK; kk++) {
    float a[4], b[4];
#pragma unroll
    for (int i = 0; i < 4; i++) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
    for (int j = 0; j < 4; j++) b[j] = ws[kk][tx + 16 * j];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

/* out[m0 + ty + 16 i, n0 + tx + 16 j] = acc[i][j] + bias, inside M x N. */
__device__ __forceinline__ void tile_store(const float (&acc)[4][4], float *out, const void *bias,
                                           int bias_dt, int M, int N, int m0, int n0, int tx,
                                           int ty) {
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const int n = n0 + tx + 16 * j;
    if (n >= N) continue;
    const float b = bias ? load_any(bias, bias_dt, n) : 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int m = m0 + ty + 16 * i;
      if (m < M) out[(int64_t)m * N + n] = acc[i][j] + b;
    }
  }
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/* Sum over the whole block, returned to every thread. blockDim.x must be a multiple of 32 and
 * <= 1024; every thread of the block must call it (it synchronizes). */
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads(); /* partial[] may still be read by a previous call */
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float s = lane < n_warps ? partial[lane] : 0.0f;
  return warp_sum(s);
}

/* Max over the whole block (same rules as block_sum). */
__device__ __forceinline__ float block_max(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float s = lane < n_warps ? partial[lane] : -INFINITY;
  return warp_max(s);
}
#endif /* __CUDACC__ */

#endif /* RL_CUDA_INTERNAL_H */
