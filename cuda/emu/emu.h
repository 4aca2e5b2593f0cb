/*
 * A CPU emulation of the subset of CUDA that the cuda/ sources use, so the backend's real kernel code can
 * run (and be checked by AddressSanitizer) on a machine without a GPU. Test tooling only: it is
 * never part of build/librabbitllm_cuda.so. See cuda/emu/build.sh.
 *
 * Streams (see emu.cc): a launch or a copy does not run when it is issued; it is queued on its
 * stream, with event records and cudaStreamWaitEvent as queue entries too. Queued work runs only
 * when the host must see a result (cudaStreamSynchronize, cudaEventSynchronize, a copy into
 * pageable host memory, cudaFree), and then in an adversarial order that respects nothing but
 * stream order and the recorded events: while the host waits for stream S, every other stream
 * runs as far as its waits allow before S takes one step. A missing cross-stream wait (a copy on
 * one stream overwriting a buffer a kernel queued on another still reads, a kernel reading a
 * buffer before the copy into it) therefore changes results, as it can on a GPU.
 *
 * A kernel runs one block after another. The threads of a block are fibers (ucontext) scheduled
 * round robin; __syncthreads() and the warp shuffles are barriers, so a fiber runs until it
 * reaches one. A thread that returns leaves the barriers (as an exited GPU thread does). When no
 * fiber can run and some have not finished, the launch reports a deadlock (e.g. a __syncthreads()
 * that not every thread reaches) and aborts. `__shared__` variables are function-local statics,
 * shared by the fibers of the block running. Device memory is host memory (aligned_alloc), so
 * ASan sees out-of-bounds accesses by kernels (and uses of a block freed before queued work ran).
 * Launch checks as on a GPU: block size 1..1024, grid limits, dynamic shared memory above 48 KiB
 * only after cudaFuncSetAttribute(MaxDynamicSharedMemorySize).
 */
#ifndef RL_CUDA_EMU_H
#define RL_CUDA_EMU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

/* ----------------------------------------------------------------------------------------------
 * Keywords and vector types */

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

/* ----------------------------------------------------------------------------------------------
 * Runtime API (the part the backend uses) */

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInsufficientDriver = 35,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoDevice = 100,
  cudaErrorNotReady = 600,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
#define cudaStreamNonBlocking 0x01
#define cudaEventDisableTiming 0x02
#define cudaHostAllocDefault 0x00
#define cudaHostAllocPortable 0x01

struct emu_stream;
struct emu_event;
typedef emu_stream *cudaStream_t;
typedef emu_event *cudaEvent_t;

struct cudaDeviceProp {
  char name[256];
  int major, minor;
  int multiProcessorCount;
  size_t sharedMemPerBlockOptin;
  size_t totalGlobalMem;
};

const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaRuntimeGetVersion(int *v);
cudaError_t cudaDriverGetVersion(int *v);
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags);
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t from, cudaEvent_t to);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned flags);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s);
cudaError_t emu_func_set_attribute(const void *fn, cudaFuncAttribute attr, int value);
template <class F> cudaError_t cudaFuncSetAttribute(F *fn, cudaFuncAttribute attr, int value) {
  return emu_func_set_attribute((const void *)fn, attr, value);
}

/* ----------------------------------------------------------------------------------------------
 * Device side: thread indices, barriers, shuffles */

namespace emu {

struct fiber; /* one GPU thread */
fiber *current();
uint3 &thread_idx();
extern uint3 block_idx;
extern dim3 block_dim, grid_dim;
void *dynamic_smem();
void syncthreads();
/* Writes v (8 bytes) to this lane's slot, waits for the warp, returns the slot of lane src. */
uint64_t warp_exchange(uint64_t v, int src, unsigned mask);
int lane_id();

template <class T> T shfl(T v, int src, unsigned mask) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a scalar");
  uint64_t u = 0;
  memcpy(&u, &v, sizeof v);
  u = warp_exchange(u, src, mask);
  T r;
  memcpy(&r, &u, sizeof r);
  return r;
}

/* Checks the launch configuration (an error is reported as by a GPU, nothing is queued) and
 * queues the kernel on `stream`: body then runs for every thread of every block, later. */
void launch(const void *fn, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            std::function<void()> body);

struct launcher {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  launcher(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr)
      : grid(g), block(b), smem(s), stream(st) {}
  template <class... P, class... A> void run(void (*fn)(P...), A &&...args) {
    /* The arguments are converted as CUDA does and copied when the kernel is queued. */
    auto params = std::make_shared<std::tuple<std::decay_t<P>...>>(std::forward<A>(args)...);
    launch((const void *)fn, grid, block, smem, stream, [fn, params] { std::apply(fn, *params); });
  }
};

} /* namespace emu */

#define threadIdx (emu::thread_idx())
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::syncthreads(); }
template <class T> inline T __shfl_sync(unsigned mask, T v, int src) {
  return emu::shfl(v, src & 31, mask);
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  return emu::shfl(v, (emu::lane_id() ^ lane_mask) & 31, mask);
}

/* ----------------------------------------------------------------------------------------------
 * Scalar intrinsics (host libm for the math functions) */

inline float __uint_as_float(unsigned u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  return u;
}
/* No contraction happens in these: each is one IEEE operation. */
inline float __fmul_rn(float a, float b) {
  volatile float r = a * b;
  return r;
}
inline float __fadd_rn(float a, float b) {
  volatile float r = a + b;
  return r;
}
inline float __fsub_rn(float a, float b) {
  volatile float r = a - b;
  return r;
}

struct __half {
  unsigned short x;
};
struct __nv_bfloat16 {
  unsigned short x;
};
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
/* IEEE binary16 -> binary32, exact (as the hardware conversion). */
inline float __half2float(__half h) {
  const unsigned sign = (unsigned)(h.x & 0x8000u) << 16, exp = (h.x >> 10) & 0x1fu,
                 man = h.x & 0x3ffu;
  if (exp == 0) {
    const float f = (float)man * 0x1p-24f;
    return sign ? -f : f;
  }
  if (exp == 0x1f) return __uint_as_float(sign | 0x7f800000u | (man << 13));
  return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}

#endif /* RL_CUDA_EMU_H */
