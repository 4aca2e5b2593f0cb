/*
 * rabbitllm backend ABI — the one contract between the TypeScript engine and a compute device.
 *
 * Implemented by cpu/ (C, threads + SIMD) and cuda/ (CUDA). Bound once in ffi/backend.ts with
 * Deno.dlopen; ffi/backend.ts keeps a symbol table that must match this header (tests check it).
 *
 * Conventions
 *  - Only buffers and opaque handles cross the boundary, so `--allow-ffi=<lib>` is enough:
 *    `rl_ctx*` and device pointers are returned by the library and passed back unchanged.
 *    Host data is passed as a buffer (a TypedArray on the Deno side, zero-copy).
 *  - Pointer arithmetic on device memory is done by the library: rl_view(base, byte_offset).
 *  - Every entry that can fail returns int32 status (RL_OK = 0). On failure the context keeps a
 *    message naming the op and the bad argument; rl_last_error copies it out. Nothing calls exit().
 *  - Activations, KV cache and outputs are fp32. Weights may be f32, f16, bf16 or (matmul and
 *    embedding) ggml block formats (enum rl_dtype); all arithmetic and accumulation is fp32.
 *  - Shapes are row-major. A matrix "W[N,K]" is N rows of K elements (the nn.Linear layout).
 *  - Ops on one context are ordered: each op sees the results of the ops issued before it.
 *    rl_sync waits until all issued work is done (a no-op on the CPU backend).
 *  - Sizes are positive: a zero-byte alloc/copy or n == 0 is RL_ERR_INVALID (callers skip empty
 *    work). rl_free(NULL) is RL_ERR_INVALID. Copies must not overlap (the CPU allows it; CUDA
 *    need not).
 */
#ifndef RABBITLLM_H
#define RABBITLLM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RL_ABI_VERSION 7

#if defined(_WIN32)
#define RL_API __declspec(dllexport)
#else
#define RL_API __attribute__((visibility("default")))
#endif

typedef struct rl_ctx rl_ctx;

enum rl_status {
  RL_OK = 0,
  RL_ERR_INVALID = 1,     /* bad argument: null pointer, zero/negative size, unknown enum */
  RL_ERR_OOM = 2,         /* allocation failed */
  RL_ERR_UNSUPPORTED = 3, /* op/dtype combination not implemented by this backend */
  RL_ERR_DEVICE = 4,      /* device/runtime failure (driver, launch) */
};

/* Element types. F32/F16/BF16 are plain arrays. The block formats (ABI 6) are ggml's (the layouts
 * of GGUF files, bit for bit): a row of K elements is K / QK blocks of the bytes below, QK = 32
 * (Q8_0 ... Q5_1) or 256 (the K formats); d, dmin, m are IEEE f16, little-endian.
 *   Q8_0 (34 B)  d, qs[32] int8:                 w[i] = d * qs[i]
 *   Q4_0 (18 B)  d, qs[16]:                      w[i] = d * (nib(i) - 8)
 *   Q4_1 (20 B)  d, m, qs[16]:                   w[i] = d * nib(i) + m
 *   Q5_0 (22 B)  d, qh uint32, qs[16]:           w[i] = d * ((nib(i) | bit(qh, i) << 4) - 16)
 *   Q5_1 (24 B)  d, m, qh uint32, qs[16]:        w[i] = d * (nib(i) | bit(qh, i) << 4) + m
 *       nib(i) = qs[i] & 15 for i < 16, qs[i - 16] >> 4 for i >= 16.
 *   Q4_K (144 B) d, dmin, scales[12], qs[128]:   8 sub-blocks j of 32: w = d*sc[j] * q - dmin*mn[j]
 *   Q5_K (176 B) d, dmin, scales[12], qh[32], qs[128]: as Q4_K with a fifth bit from qh
 *   Q6_K (210 B) ql[128], qh[64], scales[16] int8, d: 16 sub-blocks j of 16: w = d*scales[j] * (q - 32)
 *       (sc/mn: 6-bit pairs packed in scales[12]; the nibble and high-bit orders are ggml's
 *       dequantize_row_q4_K / q5_K / q6_K, as gguf-py's dequantize implements them).
 * Block formats are accepted as the weights of rl_matmul and the table of rl_embedding (K, resp.
 * dim, a multiple of QK; the weights are dequantized to f32 in registers and all arithmetic is f32,
 * so results are those of f32 math on the dequantized values). Everything else takes f32/f16/bf16. */
enum rl_dtype {
  RL_F32 = 0,
  RL_F16 = 1,
  RL_BF16 = 2,
  RL_Q8_0 = 3,
  RL_Q4_0 = 4,
  RL_Q4_1 = 5,
  RL_Q5_0 = 6,
  RL_Q5_1 = 7,
  RL_Q4_K = 8,
  RL_Q5_K = 9,
  RL_Q6_K = 10,
  RL_DTYPE_COUNT = 11,
};

enum rl_act {
  RL_ACT_SILU = 0,      /* x * sigmoid(x) */
  RL_ACT_GELU_TANH = 1, /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
  RL_ACT_GELU = 2,      /* 0.5 x (1 + erf(x / sqrt(2))) */
};

/* Statistics returned by rl_stats, in this order (uint64 each). */
enum rl_stat {
  RL_STAT_LIVE_BYTES = 0,  /* device bytes currently allocated by rl_alloc */
  RL_STAT_PEAK_BYTES = 1,  /* high-water mark of LIVE_BYTES */
  RL_STAT_ALLOCS = 2,      /* number of successful rl_alloc calls */
  RL_STAT_FREES = 3,       /* number of successful rl_free calls */
  RL_STAT_H2D_BYTES = 4,   /* bytes moved into device memory by rl_upload and by waited loads */
  RL_STAT_D2H_BYTES = 5,   /* bytes copied device -> host by rl_download */
  RL_STAT_LIVE_ALLOCS = 6, /* allocations not yet freed */
  RL_STAT_MAPPED_BYTES = 7, /* bytes of files currently mapped by rl_map */
  RL_STAT_HOST_BYTES = 8,   /* host bytes currently allocated by rl_host_alloc */
  RL_STAT_COUNT = 9,
};

/* ---- library and context ---------------------------------------------------------------- */

/* RL_ABI_VERSION of the built library; the binding refuses a library with another version. */
RL_API uint32_t rl_abi_version(void);
/* Writes a NUL-terminated backend name ("cpu", "cuda") and build info into buf; returns the
 * length that the full string needs (excluding NUL). */
RL_API int64_t rl_backend_info(uint8_t *buf, int64_t cap);

/* Creates a context. n_threads <= 0 means "all cores". device selects the GPU ordinal (ignored on
 * CPU). Returns NULL on failure; then rl_last_error(NULL, ...) holds the reason. */
RL_API rl_ctx *rl_create(int32_t n_threads, int32_t device);
/* Frees everything the context still owns (including live allocations). NULL is a no-op. */
RL_API void rl_destroy(rl_ctx *ctx);
/* Copies the last error message of ctx (or the global one when ctx is NULL) into buf,
 * NUL-terminated; returns the message length (excluding NUL). */
RL_API int64_t rl_last_error(rl_ctx *ctx, uint8_t *buf, int64_t cap);
/* Copies min(n, RL_STAT_COUNT) statistics into out. */
RL_API int32_t rl_stats(rl_ctx *ctx, uint64_t *out, int32_t n);
/* Waits for all ops issued on ctx (loads are waited for with rl_load_wait). */
RL_API int32_t rl_sync(rl_ctx *ctx);

/* ---- memory ----------------------------------------------------------------------------- */

/* Allocates `bytes` of device memory (64-byte aligned). NULL on failure (see rl_last_error); for
 * lack of memory the message reads "rl_alloc: out of memory allocating <bytes> bytes of device
 * memory (<free> free, <live> live...)". */
RL_API void *rl_alloc(rl_ctx *ctx, uint64_t bytes);
/* Frees a pointer returned by rl_alloc (not a view). */
RL_API int32_t rl_free(rl_ctx *ctx, void *p);
/* Returns base + byte_offset as a device pointer (no allocation, no check of bounds). */
RL_API void *rl_view(void *base, uint64_t byte_offset);
/* host buffer -> device */
RL_API int32_t rl_upload(rl_ctx *ctx, void *dst, const void *src, uint64_t bytes);
/* device -> host buffer */
RL_API int32_t rl_download(rl_ctx *ctx, void *dst, const void *src, uint64_t bytes);
/* device -> device */
RL_API int32_t rl_copy(rl_ctx *ctx, void *dst, const void *src, uint64_t bytes);

/* ---- loading layers: file -> device, on the backend's I/O thread ------------------------ */

/* Starts reading `bytes` at `file_offset` of the file `path` (NUL-terminated UTF-8, a host buffer)
 * into device memory `dst`, on the backend's own I/O thread, so the read overlaps the ops issued
 * meanwhile. CPU: read straight into dst. CUDA: through reused pinned staging buffers and async
 * copies on a transfer stream (option "pin_memory" 0 = pageable staging, "async_copy" 0 = copy on
 * the compute stream). Returns a ticket > 0, or 0 on failure (see rl_last_error). Loads start in
 * the order they were issued. dst may also be host memory from rl_host_alloc (filling the host
 * tier). */
RL_API int64_t rl_load_start(rl_ctx *ctx, void *dst, const uint8_t *path, uint64_t file_offset,
                             uint64_t bytes);
/* Waits until the load of `ticket` finished (CPU: the bytes are in dst; CUDA: later ops on the
 * compute stream are ordered after the copy, the host does not block on the copy). Each ticket is
 * waited for exactly once; a failed read (short file, I/O error) is reported here, naming the
 * file. */
RL_API int32_t rl_load_wait(rl_ctx *ctx, int64_t ticket);
/* 1 when rl_load_wait(ticket) would return at once (the I/O thread is done with it), 0 while it
 * is pending, -1 for a ticket not issued or already waited. Never blocks: a caller can wait
 * synchronously (cheap) when the load is ready and off the calling thread otherwise. */
RL_API int32_t rl_load_ready(rl_ctx *ctx, int64_t ticket);

/* ---- mapped files: weights computed in place (devices that read host memory) ------------ */

/* Maps `bytes` at `file_offset` of the file `path` read-only and returns a device pointer to its
 * first byte: ops read the file's pages in place, with no copy. Pages come in when touched or when
 * rl_prefetch_start asks for them. The mapping lives until rl_unmap or rl_destroy; its bytes count
 * in RL_STAT_MAPPED_BYTES. A device that cannot read host pages (CUDA) returns NULL with
 * RL_ERR_UNSUPPORTED: ask rl_get_option("map_files") first and use rl_load_start there. */
RL_API void *rl_map(rl_ctx *ctx, const uint8_t *path, uint64_t file_offset, uint64_t bytes);
/* Unmaps a pointer returned by rl_map (not a view into it). */
RL_API int32_t rl_unmap(rl_ctx *ctx, void *p);
/* Starts bringing [p, p + bytes) of a mapping into memory on the backend's I/O thread, in issue
 * order with loads: pages not in the page cache are read from the file, and the page tables are
 * filled, so the ops that read them later take no page faults. Returns a ticket for rl_load_wait
 * (0 on failure), which reports a failed read (I/O error, file shrunk) naming the file instead
 * of the fault a touched page would raise. Waited bytes count in RL_STAT_H2D_BYTES. */
RL_API int64_t rl_prefetch_start(rl_ctx *ctx, const void *p, uint64_t bytes);
/* Drops [p, p + bytes) of a mapping from this process's memory and from the page cache (pages
 * other processes map stay); the next use reads the file again. For streamed layers that would
 * be evicted before their next use anyway ("drop-behind"): they never push the resident set out.
 * Call it only when no issued op still reads those bytes. */
RL_API int32_t rl_evict(rl_ctx *ctx, const void *p, uint64_t bytes);

/* ---- host tier: layers kept in host memory, copied to the device each step ------------------ */

/* Host memory the device copies from fastest (CUDA: pinned, page-locked; CPU: ordinary memory,
 * 4096-byte aligned). rl_load_start may fill it (dst may be a host pointer from here). NULL on
 * failure. Its bytes count in RL_STAT_HOST_BYTES. */
RL_API void *rl_host_alloc(rl_ctx *ctx, uint64_t bytes);
/* Frees a pointer returned by rl_host_alloc (after every copy out of it was waited for). */
RL_API int32_t rl_host_free(rl_ctx *ctx, void *p);
/* Starts copying `bytes` from host memory `src` (inside an rl_host_alloc block) into device memory
 * `dst`, in issue order with loads (CUDA: an async copy on the transfer stream, overlapping
 * compute). Returns a ticket for rl_load_wait (0 on failure); waited bytes count in
 * RL_STAT_H2D_BYTES. */
RL_API int64_t rl_upload_start(rl_ctx *ctx, void *dst, const void *src, uint64_t bytes);

/* ---- the host's memory limits ------------------------------------------------------------ */

/* Copies the text of a kernel file that the engine's memory planner reads into buf (cap bytes,
 * NUL-terminated, truncated to fit): /proc/meminfo, /proc/self/cgroup, /proc/self/mountinfo,
 * /proc/self/io, or a file under /sys/fs/cgroup/ with no ".." component. (Deno grants reads of
 * /proc and /sys only with --allow-all; through the backend, --allow-ffi suffices.) Returns the
 * file's length, or -1 when the path is not one of those or cannot be read. Needs no context. */
RL_API int64_t rl_read_sysfile(const uint8_t *path, uint8_t *buf, int64_t cap);

/* ---- options and timing ----------------------------------------------------------------- */

/* Sets a backend option by name (NUL-terminated key, a host buffer). Known keys:
 *   "attn_impl"   0 = auto, 1 = flash (fused online softmax), 2 = eager (scores materialized)
 *   "pin_memory"  1 (default) / 0: pinned host staging for rl_load_start (CUDA)
 *   "async_copy"  1 (default) / 0: loads on a transfer stream overlapping compute (CUDA)
 *   "drop_behind" 0 (default) / 1: rl_load_start keeps the bytes it reads out of the page cache
 *                 (direct I/O where the file offset and dst line up on 4096-byte blocks, else
 *                 dropped after reading): streamed layers that will not be reused before they
 *                 would be evicted must not evict what stays resident
 *   "int8_activations" 0 (default) / 1: rl_matmul with M == 1 on q8_0, q4_0, q4_1, q5_0,
 *                 q5_1 or q4_k weights quantizes x to int8 per 32 values as ggml's
 *                 quantize_row_q8_0 does (d = max|x|/127, q = x * (127/max|x|) rounded to
 *                 nearest even; d kept in f32, not f16) and sums exact integer dot products of
 *                 the weights' integers with x's per block of 32 (q4_k: per sub-block), each
 *                 times d_w * d_x (q4_k: d * sc * d_x), q4_1 / q5_1 adding m_w * d_x * (the
 *                 exact sum of the block's int8 x), q4_k -dmin * m * d_x * (that sum)
 *                 (llama.cpp's vec_dot_q8_0_q8_0 / q4_0_q8_0 / q4_1_q8_1 / q5_0_q8_0 /
 *                 q5_1_q8_1; for q4_k x keeps a scale per 32 values where llama.cpp's q8_K has
 *                 one per 256). Faster, and approximate: a W row's result
 *                 differs from the f32 math by at most sum over blocks of
 *                 max|x_block| / 254 * sum|w_block| (plus f32 rounding); any non-finite x in a
 *                 block makes the results NaN. Other dtypes, M > 1 and value 0 are unaffected
 *                 (f32 math on the dequantized weights). The CPU backend only.
 *   "device_memory_limit" 0 (default: none) / bytes: rl_alloc fails (RL_ERR_OOM) once its live
 *                 bytes would pass this; "device_memory_free" reports at most the room left
 *                 under it. Shares a device with other work, and injects allocation failures
 *                 in tests (on the CPU too).
 * An unknown key or a value the backend cannot honour is RL_ERR_UNSUPPORTED with the reason. */
RL_API int32_t rl_set_option(rl_ctx *ctx, const uint8_t *key, int64_t value);
/* Reads an option or a capability: the keys above, plus "flash_available" (1/0),
 * "device_memory" (bytes of device memory, total), "device_memory_free" (bytes of device memory
 * free now; CPU: the room under device_memory_limit, else -1: the host's budget is the engine's
 * to compute) and "map_files" (1 when rl_map works: ops can read host file pages). Returns -1
 * for an unknown key. */
RL_API int64_t rl_get_option(rl_ctx *ctx, const uint8_t *key);
/* Records a timing mark after the ops issued so far (a CUDA event on the compute stream; the
 * host clock on CPU). Returns a mark id >= 0, or -1 on failure. Marks are recycled by
 * rl_marks_reset. */
RL_API int64_t rl_mark(rl_ctx *ctx);
/* Milliseconds between two marks (waits for the later one to complete). Negative on failure. */
RL_API double rl_elapsed_ms(rl_ctx *ctx, int64_t from_mark, int64_t to_mark);
/* Forgets every mark (their ids may be reused). */
RL_API int32_t rl_marks_reset(rl_ctx *ctx);

/* ---- tensor descriptors (ABI 5) ----------------------------------------------------------
 *
 * A descriptor says how to read a strided view of device memory starting at a device pointer
 * `base` passed beside it: a host buffer of RL_DESC_LEN int64,
 *   [dtype, offset, shape0, shape1, shape2, shape3, stride0, stride1, stride2, stride3]
 * Element (i0, i1, i2, i3) (0 <= i_d < shape_d) is at base + (offset + sum_d i_d * stride_d)
 * elements of dtype (enum rl_dtype). Views always have 4 dims: a matrix [M, N] is
 * [1, 1, M, N]. Shapes are >= 1; offset and strides are >= 0, in elements, so head splits,
 * transposes and column ranges are views, not copies. A stride of 0 broadcasts (every index of
 * that dim reads the same elements; inputs only). An output view must name each element once
 * (its strides, sorted, each exceed the span of the smaller ones). Every descriptor is checked
 * before anything runs; a bad one is RL_ERR_INVALID naming the argument and the field.
 * (Quantized block dtypes will index blocks; none exist yet.) */
enum rl_desc_field {
  RL_DESC_DTYPE = 0,
  RL_DESC_OFFSET = 1,
  RL_DESC_SHAPE = 2,  /* 4 entries */
  RL_DESC_STRIDE = 6, /* 4 entries */
  RL_DESC_LEN = 10,
};

/* Batched matmul over views: for every batch index (a, b) < (shape0, shape1) of out,
 *   out[a, b, m, n] = sum_k x[a, b, m, k] * w[a, b, k, n]   (fp32 accumulation)
 * out [A, B, M, N] and x [A, B, M, K] are f32; w [A, B, K, N] is f32, f16 or bf16. All three
 * share A and B (broadcast an input with stride 0). nn.Linear's W[N, K] is the view with strides
 * (.., .., 1, K) of its rows: w[k, n] = W[n, k]; a plain [K, N] matrix is (.., .., N, 1). out
 * must not overlap x or w. (ABI 5) */
RL_API int32_t rl_matmul_nd(rl_ctx *ctx, float *out, const int64_t *out_desc, const float *x,
                            const int64_t *x_desc, const void *w, const int64_t *w_desc);

/* Strided copy: dst[i0, i1, i2, i3] = src[i0, i1, i2, i3] for every index of the (equal) shapes;
 * dtypes equal (no conversion). dst must not overlap src. (ABI 5) */
RL_API int32_t rl_copy_nd(rl_ctx *ctx, void *dst, const int64_t *dst_desc, const void *src,
                          const int64_t *src_desc);

/* ---- ops (all tensors are device pointers unless said otherwise) ------------------------ */

/* out[n, dim] (f32) = table[ids[i], :] converted to f32. ids is a host buffer of n int32;
 * every id must be in [0, vocab). */
RL_API int32_t rl_embedding(rl_ctx *ctx, float *out, const void *table, int32_t dtype,
                            const int32_t *ids, int32_t n, int32_t dim, int32_t vocab);

/* out[r,:] = x[r,:] / sqrt(mean(x[r,:]^2) + eps) * (w + weight_offset), r < rows.
 * weight_offset is 0 for Llama, 1 for Gemma's (1 + w) norm. out may equal x. */
RL_API int32_t rl_rmsnorm(rl_ctx *ctx, float *out, const float *x, const void *w, int32_t wdtype,
                          int32_t rows, int32_t dim, float eps, float weight_offset);

/* LayerNorm: out[r,:] = (x[r,:] - mean) / sqrt(var + eps) * w + b (biased variance, fp32), as
 * torch.nn.LayerNorm. b may be NULL (no bias); w and b share wdtype. out may equal x. */
RL_API int32_t rl_layernorm(rl_ctx *ctx, float *out, const float *x, const void *w, const void *b,
                            int32_t wdtype, int32_t rows, int32_t dim, float eps);

/* out[i] = cap * tanh(x[i] / cap) (Gemma's logit soft-capping), in place allowed. */
RL_API int32_t rl_softcap(rl_ctx *ctx, float *out, const float *x, float cap, int64_t n);

/* out[M,N] = x[M,K] . W[N,K]^T (+ bias[N] when bias != NULL). fp32 accumulation.
 * out must not alias x. */
RL_API int32_t rl_matmul(rl_ctx *ctx, float *out, const float *x, const void *w, int32_t wdtype,
                         const void *bias, int32_t bias_dtype, int32_t M, int32_t N, int32_t K);

/* Rotary embedding, Hugging Face "rotate half" layout, in place.
 * x: n_tokens rows with stride row_stride (elements); each row holds n_heads heads of head_dim
 * starting at element 0. The first rot_dim (even, <= head_dim) dims of each head rotate:
 * for i < h = rot_dim/2: angle = (float)positions[t] * inv_freq[i] (fp32), c = cos(angle) * mscale,
 * s = sin(angle) * mscale, (x[i], x[i+h]) <- (x[i]*c - x[i+h]*s, x[i+h]*c + x[i]*s).
 * mscale is the rope "attention scaling" (1 for default rope, yarn/longrope change it).
 * positions (n_tokens int32) and inv_freq (rot_dim/2 float) are host buffers. */
RL_API int32_t rl_rope(rl_ctx *ctx, float *x, int32_t n_tokens, int32_t row_stride,
                       int32_t n_heads, int32_t head_dim, int32_t rot_dim,
                       const int32_t *positions, const float *inv_freq, float mscale);

/* Causal attention with GQA for one sequence, reading its KV cache.
 * q:   [n_q, q_stride]; head h occupies q[t, h*head_dim : (h+1)*head_dim]
 * k:   [kv_len, k_stride] cache rows; kv head g at k[j, g*head_dim ...]
 * v:   [kv_len, v_stride] cache rows; kv head g at v[j, g*v_head_dim ...]. v may equal k (or point
 *      into k's rows): an MLA latent cache keeps one row per token, whose first v_head_dim floats
 *      are the value (k and v are only read).
 * Query head h reads kv head h / (n_heads / n_kv_heads).
 * out: [n_q, n_heads*v_head_dim]; it must not overlap q, k or v.
 * Query t sits at cache index q_start + t and sees key j iff
 *   j <= q_start + t, (window <= 0 || q_start + t - j < window), and (kv_valid == NULL || kv_valid[j]).
 * Requires q_start + n_q <= kv_len: the new tokens' keys are already in the cache.
 * kv_valid is an optional host buffer of kv_len uint8 (0 = padding key). A query that sees no
 * key yields zeros. score = (q.k) * scale over head_dim dims; if softcap > 0:
 * score = softcap * tanh(score / softcap). (ABI 5: v_stride and v_head_dim; before, v shared
 * k's stride and head_dim.) */
RL_API int32_t rl_attention(rl_ctx *ctx, float *out, const float *q, int32_t q_stride,
                            const float *k, int32_t k_stride, const float *v, int32_t v_stride,
                            int32_t n_q, int32_t q_start, int32_t kv_len, int32_t n_heads,
                            int32_t n_kv_heads, int32_t head_dim, int32_t v_head_dim, float scale,
                            int32_t window, float softcap, const uint8_t *kv_valid);

/* rl_attention with ALiBi (ABI 7; the arguments before alibi_slopes are rl_attention's, and mean
 * the same). alibi_slopes is a host buffer of n_heads floats (each finite, checked before anything
 * runs), or NULL: then the call is exactly rl_attention. With slopes, every visible score of
 * query t (cache index pos = q_start + t), head h and key j gains a linear bias:
 *   score = (q.k) * scale;  if softcap > 0: score = softcap * tanh(score / softcap);
 *   score = score + alibi_slopes[h] * (float)(j - pos)       (j - pos <= 0 for visible keys)
 * in f32: the distance (float)(j - pos) is exact (while |j - pos| <= 2^24), the product is
 * rounded, then added (a backend may fuse the two into one fma: CUDA does). Masking, windows,
 * GQA, softcap and the output are rl_attention's.
 * ALiBi as trained (Press et al.; Baichuan-13B's alibi mask) adds slope_h * j, the key's cache
 * index, to (q.k) / sqrt(head_dim). Under the softmax of each query's row that is the same as
 * slope_h * (j - pos): the rows differ by the constant slope_h * pos, which cancels. The relative
 * form is used because it stays small near the query, where the weight is, instead of growing
 * with the sequence (slope_h * j is rounded to a step of ulp(slope_h * j)). Slopes:
 * lib/models/alibi.ts. A backend without ALiBi returns RL_ERR_UNSUPPORTED naming
 * rl_attention_alibi. (ABI 7 only adds this entry: rl_attention and everything else are those of
 * ABI 6.) */
RL_API int32_t rl_attention_alibi(rl_ctx *ctx, float *out, const float *q, int32_t q_stride,
                                  const float *k, int32_t k_stride, const float *v,
                                  int32_t v_stride, int32_t n_q, int32_t q_start, int32_t kv_len,
                                  int32_t n_heads, int32_t n_kv_heads, int32_t head_dim,
                                  int32_t v_head_dim, float scale, int32_t window, float softcap,
                                  const uint8_t *kv_valid, const float *alibi_slopes);

/* out[r, c] = act(gate[r*in_stride + c]) * up[r*in_stride + c] for r < rows, c < cols.
 * out is [rows, cols] contiguous. In place: out may equal gate or up when in_stride == cols;
 * any other overlap of out with gate or up is RL_ERR_INVALID. */
RL_API int32_t rl_act_mul(rl_ctx *ctx, float *out, const float *gate, const float *up,
                          int32_t rows, int32_t cols, int32_t in_stride, int32_t act);

/* out[i] = act(x[i]), i < n: the activation without a gate (the formulas of enum rl_act, as in
 * rl_act_mul). out may equal x; any other overlap is RL_ERR_INVALID. (ABI 4) */
RL_API int32_t rl_act(rl_ctx *ctx, float *out, const float *x, int64_t n, int32_t act);

/* Row gather: out[i, :] = x[rows[i], :] for i < n; x is [x_rows, cols], out [n, cols].
 * rows is a host buffer of n int32, each in [0, x_rows) (all checked before anything runs); a
 * row may be gathered more than once. out must not overlap x. (ABI 4) */
RL_API int32_t rl_gather_rows(rl_ctx *ctx, float *out, const float *x, const int32_t *rows,
                              int32_t n, int32_t cols, int32_t x_rows);

/* Weighted row scatter-add: for i = 0, 1, ..., n - 1 in this order,
 *   out[rows[i], c] = out[rows[i], c] + weights[i] * x[i, c]   (c < cols)
 * with the product rounded to f32 before the add (never fused into an FMA), so a destination row
 * named more than once accumulates its contributions in increasing i on every backend, and one
 * named once gets exactly rl_scale then rl_add. x is [n, cols], out [out_rows, cols]. rows (n
 * int32, each in [0, out_rows), checked) and weights (n float) are host buffers. out must not
 * overlap x. (ABI 4) */
RL_API int32_t rl_scatter_add_rows(rl_ctx *ctx, float *out, const float *x, const int32_t *rows,
                                   const float *weights, int32_t n, int32_t cols,
                                   int32_t out_rows);

/* out[i] = a[i] + b[i], i < n. out may alias a or b. */
RL_API int32_t rl_add(rl_ctx *ctx, float *out, const float *a, const float *b, int64_t n);

/* out[i] = x[i] * s, in place allowed. */
RL_API int32_t rl_scale(rl_ctx *ctx, float *out, const float *x, float s, int64_t n);

/* out[r] = argmax_c x[r, c] (first index on ties); out is a host buffer of rows int32. */
RL_API int32_t rl_argmax(rl_ctx *ctx, int32_t *out, const float *x, int32_t rows, int32_t cols);

#ifdef __cplusplus
}
#endif
#endif /* RABBITLLM_H */
