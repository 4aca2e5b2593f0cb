/**
 * The one TypeScript binding of the backend ABI (ffi/rabbitllm.h): library lookup, the symbol
 * table, status → typed errors. The engine talks to a {@link Backend}; it never branches on the
 * device.
 *
 * Only buffers and library-returned pointers cross the boundary, so `--allow-ffi=<library path>`
 * is enough.
 *
 * @module
 */
import { BackendError, DeviceMemoryError } from "../lib/errors.ts";
import { ensureLibrary, type EnsureOptions, findLibrary } from "./native.ts";

/** The ABI version this binding speaks; must equal the library's `rl_abi_version()`. */
export const ABI_VERSION = 7;

/**
 * Weight dtypes the backend understands (rl_dtype): plain floats, and ggml's block formats (matmul
 * weights and embedding tables only; lib/quant.ts).
 */
export type WeightDType =
  | "F32"
  | "F16"
  | "BF16"
  | "Q8_0"
  | "Q4_0"
  | "Q4_1"
  | "Q5_0"
  | "Q5_1"
  | "Q4_K"
  | "Q5_K"
  | "Q6_K";
const DTYPE_CODE: Record<WeightDType, number> = {
  F32: 0,
  F16: 1,
  BF16: 2,
  Q8_0: 3,
  Q4_0: 4,
  Q4_1: 5,
  Q5_0: 6,
  Q5_1: 7,
  Q4_K: 8,
  Q5_K: 9,
  Q6_K: 10,
};

/** Gated-MLP activations (rl_act). */
export type Activation = "silu" | "gelu_tanh" | "gelu";
const ACT_CODE: Record<Activation, number> = { silu: 0, gelu_tanh: 1, gelu: 2 };

/** A device pointer returned by the library (opaque). */
export type DevPtr = Deno.PointerObject;

/** rl_attention's parameters; rl_attention_alibi takes them and its slopes. */
const ATTENTION_PARAMETERS = [
  "pointer", // ctx
  "pointer", // out
  "pointer", // q
  "i32", // q_stride
  "pointer", // k
  "i32", // k_stride
  "pointer", // v
  "i32", // v_stride
  "i32", // n_q
  "i32", // q_start
  "i32", // kv_len
  "i32", // n_heads
  "i32", // n_kv_heads
  "i32", // head_dim
  "i32", // v_head_dim
  "f32", // scale
  "i32", // window
  "f32", // softcap
  "buffer", // kv_valid
] as const;

/** The symbol table; tests check it against ffi/rabbitllm.h. */
export const SYMBOLS = {
  rl_abi_version: { parameters: [], result: "u32" },
  rl_backend_info: { parameters: ["buffer", "i64"], result: "i64" },
  rl_create: { parameters: ["i32", "i32"], result: "pointer" },
  rl_destroy: { parameters: ["pointer"], result: "void" },
  rl_last_error: { parameters: ["pointer", "buffer", "i64"], result: "i64" },
  rl_stats: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  rl_sync: { parameters: ["pointer"], result: "i32" },
  rl_alloc: { parameters: ["pointer", "u64"], result: "pointer" },
  rl_free: { parameters: ["pointer", "pointer"], result: "i32" },
  rl_view: { parameters: ["pointer", "u64"], result: "pointer" },
  rl_upload: { parameters: ["pointer", "pointer", "buffer", "u64"], result: "i32" },
  rl_download: { parameters: ["pointer", "buffer", "pointer", "u64"], result: "i32" },
  rl_copy: { parameters: ["pointer", "pointer", "pointer", "u64"], result: "i32" },
  rl_load_start: { parameters: ["pointer", "pointer", "buffer", "u64", "u64"], result: "i64" },
  rl_load_wait: { parameters: ["pointer", "i64"], result: "i32" },
  // The same entry on Deno's blocking pool: the event loop runs while a layer is still loading.
  rl_load_wait_async: {
    name: "rl_load_wait",
    parameters: ["pointer", "i64"],
    result: "i32",
    nonblocking: true,
  },
  rl_map: { parameters: ["pointer", "buffer", "u64", "u64"], result: "pointer" },
  rl_unmap: { parameters: ["pointer", "pointer"], result: "i32" },
  rl_prefetch_start: { parameters: ["pointer", "pointer", "u64"], result: "i64" },
  rl_evict: { parameters: ["pointer", "pointer", "u64"], result: "i32" },
  rl_host_alloc: { parameters: ["pointer", "u64"], result: "pointer" },
  rl_host_free: { parameters: ["pointer", "pointer"], result: "i32" },
  rl_upload_start: { parameters: ["pointer", "pointer", "pointer", "u64"], result: "i64" },
  rl_load_ready: { parameters: ["pointer", "i64"], result: "i32" },
  rl_read_sysfile: { parameters: ["buffer", "buffer", "i64"], result: "i64" },
  rl_set_option: { parameters: ["pointer", "buffer", "i64"], result: "i32" },
  rl_get_option: { parameters: ["pointer", "buffer"], result: "i64" },
  rl_mark: { parameters: ["pointer"], result: "i64" },
  rl_elapsed_ms: { parameters: ["pointer", "i64", "i64"], result: "f64" },
  rl_marks_reset: { parameters: ["pointer"], result: "i32" },
  rl_embedding: {
    parameters: ["pointer", "pointer", "pointer", "i32", "buffer", "i32", "i32", "i32"],
    result: "i32",
  },
  rl_rmsnorm: {
    parameters: ["pointer", "pointer", "pointer", "pointer", "i32", "i32", "i32", "f32", "f32"],
    result: "i32",
  },
  rl_layernorm: {
    parameters: ["pointer", "pointer", "pointer", "pointer", "pointer", "i32", "i32", "i32", "f32"],
    result: "i32",
  },
  rl_softcap: { parameters: ["pointer", "pointer", "pointer", "f32", "i64"], result: "i32" },
  rl_matmul: {
    parameters: [
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "i32",
      "pointer",
      "i32",
      "i32",
      "i32",
      "i32",
    ],
    result: "i32",
  },
  rl_rope: {
    parameters: [
      "pointer",
      "pointer",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "buffer",
      "buffer",
      "f32",
    ],
    result: "i32",
  },
  rl_attention: { parameters: ATTENTION_PARAMETERS, result: "i32" },
  // ABI 7. Optional, so that a library built before it is refused by its version (with how to
  // rebuild) rather than by dlopen's missing symbol.
  rl_attention_alibi: {
    parameters: [...ATTENTION_PARAMETERS, "buffer" /* alibi_slopes */],
    result: "i32",
    optional: true,
  },
  rl_act_mul: {
    parameters: ["pointer", "pointer", "pointer", "pointer", "i32", "i32", "i32", "i32"],
    result: "i32",
  },
  rl_act: { parameters: ["pointer", "pointer", "pointer", "i64", "i32"], result: "i32" },
  rl_gather_rows: {
    parameters: ["pointer", "pointer", "pointer", "buffer", "i32", "i32", "i32"],
    result: "i32",
  },
  rl_scatter_add_rows: {
    parameters: ["pointer", "pointer", "pointer", "buffer", "buffer", "i32", "i32", "i32"],
    result: "i32",
  },
  rl_matmul_nd: {
    parameters: ["pointer", "pointer", "buffer", "pointer", "buffer", "pointer", "buffer"],
    result: "i32",
  },
  rl_copy_nd: { parameters: ["pointer", "pointer", "buffer", "pointer", "buffer"], result: "i32" },
  rl_add: { parameters: ["pointer", "pointer", "pointer", "pointer", "i64"], result: "i32" },
  rl_scale: { parameters: ["pointer", "pointer", "pointer", "f32", "i64"], result: "i32" },
  rl_argmax: { parameters: ["pointer", "buffer", "pointer", "i32", "i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

type Lib = Deno.DynamicLibrary<typeof SYMBOLS>;

/** Backend statistics (rl_stats). */
export interface BackendStats {
  /** Device bytes allocated now. */
  liveBytes: number;
  /** Most device bytes allocated at once. */
  peakBytes: number;
  /** Allocations made. */
  allocs: number;
  /** Allocations freed. */
  frees: number;
  /** Bytes copied host → device. */
  h2dBytes: number;
  /** Bytes copied device → host. */
  d2hBytes: number;
  /** Allocations not freed yet. */
  liveAllocs: number;
  /** Bytes of files mapped by {@link Backend.map}. */
  mappedBytes: number;
  /** Bytes of host-tier memory from {@link Backend.hostAlloc}. */
  hostBytes: number;
}

/** Which backend library to load. */
export type DeviceKind = "cpu" | "cuda";

const BUILD_TASK: Record<DeviceKind, string> = {
  cpu: "deno task build",
  cuda: "deno task build:cuda",
};

export { cacheDir, ensureLibrary, findLibrary } from "./native.ts";
export type { EnsureOptions, Prebuilt } from "./native.ts";

/** Options of {@link Backend.open}. */
export interface BackendOptions {
  device?: DeviceKind;
  /** GPU ordinal (CUDA only). */
  ordinal?: number;
  /** Worker threads (CPU); 0 = all cores. */
  threads?: number;
  /** Explicit library path (overrides the lookup). */
  libraryPath?: string;
}

const errBuf = new Uint8Array(1024);
const encoder = new TextEncoder();

/** A NUL-terminated UTF-8 copy of `s`, for `const uint8_t*` string parameters. */
export function cstr(s: string): Uint8Array {
  const b = encoder.encode(s);
  const out = new Uint8Array(b.length + 1);
  out.set(b);
  return out;
}
const decoder = new TextDecoder();

/** One backend context: memory, copies and ops, each checked. */
export class Backend {
  /** The library's own description (device, SIMD level or GPU, compiler). */
  readonly info: string;
  /** The native library file this context runs on. */
  readonly libraryPath: string;
  /** "cpu" or "cuda". */
  readonly device: DeviceKind;
  #lib: Lib;
  #ctx: DevPtr | null;

  private constructor(lib: Lib, ctx: DevPtr, path: string, device: DeviceKind) {
    this.#lib = lib;
    this.#ctx = ctx;
    this.libraryPath = path;
    this.device = device;
    const buf = new Uint8Array(256);
    const n = Number(lib.symbols.rl_backend_info(buf, BigInt(buf.length)));
    this.info = decoder.decode(buf.subarray(0, Math.min(n, buf.length - 1)));
  }

  /**
   * {@link Backend.open}, after building or downloading the library into the per-version cache
   * when none is found (ffi/native.ts: a remote install's first run compiles the shipped sources).
   */
  static async openAsync(
    opts: BackendOptions = {},
    ensure: EnsureOptions = {},
  ): Promise<Backend> {
    const path = opts.libraryPath ?? await ensureLibrary(opts.device ?? "cpu", ensure);
    return Backend.open({ ...opts, libraryPath: path });
  }

  /**
   * Loads the library, checks its ABI version and creates a context. The library: `libraryPath`,
   * `$RABBITLLM_LIB` / `$RABBITLLM_CUDA_LIB`, `build/` beside a local package, or a valid one in
   * the cache; {@link Backend.openAsync} also builds or downloads it.
   */
  static open(opts: BackendOptions = {}): Backend {
    const device = opts.device ?? "cpu";
    const path = opts.libraryPath ?? findLibrary(device);
    const lib = loadLibrary(path);
    const version = lib.symbols.rl_abi_version();
    if (version !== ABI_VERSION) {
      throw new BackendError(
        "load",
        `${path} speaks backend ABI ${version}, this package needs ${ABI_VERSION}; rebuild it with \`${
          BUILD_TASK[device]
        }\``,
      );
    }
    const ctx = lib.symbols.rl_create(opts.threads ?? 0, opts.ordinal ?? 0);
    if (ctx === null) {
      throw new BackendError("rl_create", lastError(lib, null));
    }
    return new Backend(lib, ctx, path, device);
  }

  get #c(): DevPtr {
    if (this.#ctx === null) throw new BackendError("use", "the backend was closed");
    return this.#ctx;
  }

  #check(status: number, op: string): void {
    if (status !== 0) {
      throw new BackendError(op, lastError(this.#lib, this.#ctx), undefined, status);
    }
  }

  /**
   * Device memory of `bytes` (64-byte aligned). Lack of memory is a {@link DeviceMemoryError}
   * with the bytes requested and free.
   */
  alloc(bytes: number): DevPtr {
    const p = this.#lib.symbols.rl_alloc(this.#c, BigInt(bytes));
    if (p === null) {
      const msg = lastError(this.#lib, this.#ctx);
      if (/: out of memory allocating/.test(msg)) {
        const free = this.getOption("device_memory_free");
        throw new DeviceMemoryError(bytes, free < 0 ? null : free, this.stats().liveBytes, msg);
      }
      throw new BackendError("rl_alloc", msg);
    }
    return p;
  }

  /** Frees what {@link Backend.alloc} returned. */
  free(p: DevPtr): void {
    this.#check(this.#lib.symbols.rl_free(this.#c, p), "rl_free");
  }

  /** `base + byteOffset`, computed by the library. */
  view(base: DevPtr, byteOffset: number): DevPtr {
    if (byteOffset === 0) return base;
    return this.#lib.symbols.rl_view(base, BigInt(byteOffset))!;
  }

  /** Copies `src`'s bytes host → device at `dst`. */
  upload(dst: DevPtr, src: ArrayBufferView): void {
    this.#check(
      this.#lib.symbols.rl_upload(this.#c, dst, src as BufferSource, BigInt(src.byteLength)),
      "rl_upload",
    );
  }

  /** Copies `dst.byteLength` bytes device → host from `src`. */
  download(dst: ArrayBufferView, src: DevPtr): void {
    this.#check(
      this.#lib.symbols.rl_download(this.#c, dst as BufferSource, src, BigInt(dst.byteLength)),
      "rl_download",
    );
  }

  /** Copies `bytes` device → device. */
  copy(dst: DevPtr, src: DevPtr, bytes: number): void {
    this.#check(this.#lib.symbols.rl_copy(this.#c, dst, src, BigInt(bytes)), "rl_copy");
  }

  /**
   * Starts reading `bytes` at `offset` of the file `path` into `dst` on the backend's I/O thread;
   * returns the ticket to {@link loadWait} for.
   */
  loadStart(dst: DevPtr, path: Uint8Array, offset: number, bytes: number): bigint {
    const t = this.#lib.symbols.rl_load_start(
      this.#c,
      dst,
      path as BufferSource,
      BigInt(offset),
      BigInt(bytes),
    );
    if (t === 0n) throw new BackendError("rl_load_start", lastError(this.#lib, this.#ctx));
    return t;
  }

  /** Waits for a load (its bytes are then in place for every later op). */
  loadWait(ticket: bigint): void {
    this.#check(this.#lib.symbols.rl_load_wait(this.#c, ticket), "rl_load_wait");
  }

  /**
   * {@link loadWait} without blocking the event loop: a ready load is waited for at once (a
   * synchronous call), a pending one on Deno's blocking pool (≈ 20 µs a call).
   */
  async loadWaitAsync(ticket: bigint): Promise<void> {
    if (this.#lib.symbols.rl_load_ready(this.#c, ticket) === 1) return this.loadWait(ticket);
    this.#check(await this.#lib.symbols.rl_load_wait_async(this.#c, ticket), "rl_load_wait");
  }

  /** True when ops can read mapped file pages in place ({@link map}); the CPU backend. */
  get canMap(): boolean {
    return this.getOption("map_files") === 1;
  }

  /**
   * Maps `bytes` at `offset` of the file `path` read-only: a device pointer to the file's pages,
   * computed on in place (see {@link canMap}).
   */
  map(path: Uint8Array, offset: number, bytes: number): DevPtr {
    const p = this.#lib.symbols.rl_map(
      this.#c,
      path as BufferSource,
      BigInt(offset),
      BigInt(bytes),
    );
    if (p === null) throw new BackendError("rl_map", lastError(this.#lib, this.#ctx));
    return p;
  }

  /** Unmaps what {@link Backend.map} returned. */
  unmap(p: DevPtr): void {
    this.#check(this.#lib.symbols.rl_unmap(this.#c, p), "rl_unmap");
  }

  /** Starts reading a mapped range into memory on the I/O thread; a ticket for {@link loadWait}. */
  prefetchStart(p: DevPtr, bytes: number): bigint {
    const t = this.#lib.symbols.rl_prefetch_start(this.#c, p, BigInt(bytes));
    if (t === 0n) throw new BackendError("rl_prefetch_start", lastError(this.#lib, this.#ctx));
    return t;
  }

  /** Drops a mapped range from memory and from the page cache (drop-behind). */
  evict(p: DevPtr, bytes: number): void {
    this.#check(this.#lib.symbols.rl_evict(this.#c, p, BigInt(bytes)), "rl_evict");
  }

  /** Host-tier memory (pinned on a GPU) that {@link uploadStart} copies from. */
  hostAlloc(bytes: number): DevPtr {
    const p = this.#lib.symbols.rl_host_alloc(this.#c, BigInt(bytes));
    if (p === null) throw new BackendError("rl_host_alloc", lastError(this.#lib, this.#ctx));
    return p;
  }

  /** Frees a host-tier buffer (pinned on a GPU). */
  hostFree(p: DevPtr): void {
    this.#check(this.#lib.symbols.rl_host_free(this.#c, p), "rl_host_free");
  }

  /** Starts copying host-tier bytes to the device; a ticket for {@link loadWait}. */
  uploadStart(dst: DevPtr, src: DevPtr, bytes: number): bigint {
    const t = this.#lib.symbols.rl_upload_start(this.#c, dst, src, BigInt(bytes));
    if (t === 0n) throw new BackendError("rl_upload_start", lastError(this.#lib, this.#ctx));
    return t;
  }

  /**
   * The text of a kernel file the memory planner reads (/proc/meminfo, /proc/self/cgroup,
   * /proc/self/mountinfo, /proc/self/io, /sys/fs/cgroup/..., and
   * /sys/kernel/mm/transparent_hugepage/enabled), or null. Deno reads those only with
   * --allow-all; the backend reads them with --allow-ffi.
   */
  readSysfile(path: string): string | null {
    const p = cstr(path);
    for (let cap = 1 << 16; cap <= 1 << 24; cap *= 4) {
      const buf = new Uint8Array(cap);
      const n = Number(this.#lib.symbols.rl_read_sysfile(p, buf, BigInt(cap)));
      if (n < 0) return null;
      if (n < cap - 1) return decoder.decode(buf.subarray(0, n));
    }
    return null;
  }

  /**
   * Sets a backend option ("attn_impl", "pin_memory", "async_copy", "drop_behind",
   * "int8_activations" (CPU: int8 x int8 decode GEMV on q8_0 / q4_0 weights, off by default),
   * "device_memory_limit" (bytes allocations may hold in all, 0 = none; also injects allocation
   * failures in tests)).
   */
  setOption(key: string, value: number): void {
    this.#check(
      this.#lib.symbols.rl_set_option(this.#c, cstr(key), BigInt(value)),
      "rl_set_option",
    );
  }

  /**
   * An option or capability ("flash_available", "device_memory", "device_memory_free",
   * "map_files"); -1 when unknown.
   */
  getOption(key: string): number {
    return Number(this.#lib.symbols.rl_get_option(this.#c, cstr(key)));
  }

  /** A timing mark after the work issued so far (device events on a GPU). */
  mark(): number {
    const m = Number(this.#lib.symbols.rl_mark(this.#c));
    if (m < 0) throw new BackendError("rl_mark", lastError(this.#lib, this.#ctx));
    return m;
  }

  /** Milliseconds between two marks (waits for the later one). */
  elapsedMs(from: number, to: number): number {
    const ms = this.#lib.symbols.rl_elapsed_ms(this.#c, BigInt(from), BigInt(to));
    if (ms < 0) throw new BackendError("rl_elapsed_ms", lastError(this.#lib, this.#ctx));
    return ms;
  }

  /** Forgets all marks. */
  resetMarks(): void {
    this.#check(this.#lib.symbols.rl_marks_reset(this.#c), "rl_marks_reset");
  }

  /** Waits until every op issued so far has finished. */
  sync(): void {
    this.#check(this.#lib.symbols.rl_sync(this.#c), "rl_sync");
  }

  /** The allocation and copy counters. */
  stats(): BackendStats {
    const out = new BigUint64Array(9);
    this.#check(this.#lib.symbols.rl_stats(this.#c, out, out.length), "rl_stats");
    const n = (i: number) => Number(out[i]);
    return {
      liveBytes: n(0),
      peakBytes: n(1),
      allocs: n(2),
      frees: n(3),
      h2dBytes: n(4),
      d2hBytes: n(5),
      liveAllocs: n(6),
      mappedBytes: n(7),
      hostBytes: n(8),
    };
  }

  /** out[i, :] = table[ids[i], :] as f32 (the table in `dtype`, block formats included). */
  embedding(
    out: DevPtr,
    table: DevPtr,
    dtype: WeightDType,
    ids: Int32Array,
    dim: number,
    vocab: number,
  ): void {
    this.#check(
      this.#lib.symbols.rl_embedding(
        this.#c,
        out,
        table,
        DTYPE_CODE[dtype],
        ids,
        ids.length,
        dim,
        vocab,
      ),
      "rl_embedding",
    );
  }

  /** RMSNorm of `rows` rows of `dim`: x / rms(x) · (w + weightOffset), in f32. */
  rmsnorm(
    out: DevPtr,
    x: DevPtr,
    w: DevPtr,
    wdtype: WeightDType,
    rows: number,
    dim: number,
    eps: number,
    weightOffset = 0,
  ): void {
    this.#check(
      this.#lib.symbols.rl_rmsnorm(
        this.#c,
        out,
        x,
        w,
        DTYPE_CODE[wdtype],
        rows,
        dim,
        eps,
        weightOffset,
      ),
      "rl_rmsnorm",
    );
  }

  /** LayerNorm with weight and optional bias (torch.nn.LayerNorm). */
  layernorm(
    out: DevPtr,
    x: DevPtr,
    w: DevPtr,
    b: DevPtr | null,
    wdtype: WeightDType,
    rows: number,
    dim: number,
    eps: number,
  ): void {
    this.#check(
      this.#lib.symbols.rl_layernorm(this.#c, out, x, w, b, DTYPE_CODE[wdtype], rows, dim, eps),
      "rl_layernorm",
    );
  }

  /** out = cap · tanh(x / cap). */
  softcap(out: DevPtr, x: DevPtr, cap: number, n: number): void {
    this.#check(this.#lib.symbols.rl_softcap(this.#c, out, x, cap, BigInt(n)), "rl_softcap");
  }

  /**
   * out[M,N] = x[M,K] · W[N,K]ᵀ (+ bias). The bias is of `biasDType` (default: wdtype when that
   * is a float type, else F32 — a block-format weight's bias is a float vector).
   */
  matmul(
    out: DevPtr,
    x: DevPtr,
    w: DevPtr,
    wdtype: WeightDType,
    bias: DevPtr | null,
    M: number,
    N: number,
    K: number,
    biasDType?: WeightDType,
  ): void {
    const code = DTYPE_CODE[wdtype];
    const bcode = DTYPE_CODE[biasDType ?? (code <= 2 ? wdtype : "F32")];
    this.#check(
      this.#lib.symbols.rl_matmul(this.#c, out, x, w, code, bias, bcode, M, N, K),
      "rl_matmul",
    );
  }

  /** Rotary embedding in place (rotate-half on the first `rotDim` dims of each head). */
  rope(
    x: DevPtr,
    nTokens: number,
    rowStride: number,
    nHeads: number,
    headDim: number,
    rotDim: number,
    positions: Int32Array,
    invFreq: Float32Array,
    mscale: number,
  ): void {
    this.#check(
      this.#lib.symbols.rl_rope(
        this.#c,
        x,
        nTokens,
        rowStride,
        nHeads,
        headDim,
        rotDim,
        positions,
        invFreq,
        mscale,
      ),
      "rl_rope",
    );
  }

  /**
   * Causal GQA attention of new queries over the KV cache (see {@link AttentionArgs}); with
   * `alibiSlopes`, ALiBi's linear bias (rl_attention_alibi).
   */
  attention(a: AttentionArgs): void {
    if (a.alibiSlopes) {
      this.#attentionAlibi(a, a.alibiSlopes);
      return;
    }
    this.#check(this.#lib.symbols.rl_attention(...this.#attentionArgs(a)), "rl_attention");
  }

  /** rl_attention's arguments (rl_attention_alibi takes them and its slopes). */
  #attentionArgs(a: AttentionArgs) {
    return [
      this.#c,
      a.out,
      a.q,
      a.qStride,
      a.k,
      a.kStride,
      a.v,
      a.vStride ?? a.kStride,
      a.nQ,
      a.qStart,
      a.kvLen,
      a.nHeads,
      a.nKvHeads,
      a.headDim,
      a.vHeadDim ?? a.headDim,
      a.scale,
      a.window ?? 0,
      a.softcap ?? 0,
      a.kvValid ?? allValid(a.kvLen),
    ] as const;
  }

  #attentionAlibi(a: AttentionArgs, slopes: Float32Array): void {
    const op = "rl_attention_alibi", fn = this.#lib.symbols.rl_attention_alibi;
    if (slopes.length !== a.nHeads) {
      throw new BackendError(
        op,
        `alibiSlopes has ${slopes.length} slopes, want one per query head (nHeads ${a.nHeads})`,
        undefined,
        1, // RL_ERR_INVALID
      );
    }
    if (!fn) {
      throw new BackendError(op, "the library lacks this entry (ABI 7)", undefined, 3); // UNSUPPORTED
    }
    this.#check(fn(...this.#attentionArgs(a), slopes), op);
  }

  /** out = act(gate) · up, row by row (gate and up rows `inStride` apart). */
  actMul(
    out: DevPtr,
    gate: DevPtr,
    up: DevPtr,
    rows: number,
    cols: number,
    inStride: number,
    act: Activation,
  ): void {
    this.#check(
      this.#lib.symbols.rl_act_mul(this.#c, out, gate, up, rows, cols, inStride, ACT_CODE[act]),
      "rl_act_mul",
    );
  }

  /** out = act(x) elementwise (no gate); out may equal x. */
  act(out: DevPtr, x: DevPtr, n: number, act: Activation): void {
    this.#check(this.#lib.symbols.rl_act(this.#c, out, x, BigInt(n), ACT_CODE[act]), "rl_act");
  }

  /** out[i, :] = x[rows[i], :] for i < rows.length; x is [xRows, cols]. */
  gatherRows(out: DevPtr, x: DevPtr, rows: Int32Array, cols: number, xRows: number): void {
    this.#check(
      this.#lib.symbols.rl_gather_rows(this.#c, out, x, rows, rows.length, cols, xRows),
      "rl_gather_rows",
    );
  }

  /**
   * out[rows[i], :] += weights[i] · x[i, :] for i = 0 … rows.length − 1 in order (a repeated row
   * accumulates in that order); out is [outRows, cols].
   */
  scatterAddRows(
    out: DevPtr,
    x: DevPtr,
    rows: Int32Array,
    weights: Float32Array,
    cols: number,
    outRows: number,
  ): void {
    if (weights.length !== rows.length) {
      throw new BackendError(
        "rl_scatter_add_rows",
        `${weights.length} weights for ${rows.length} rows`,
        undefined,
        1, // RL_ERR_INVALID
      );
    }
    this.#check(
      this.#lib.symbols.rl_scatter_add_rows(
        this.#c,
        out,
        x,
        rows,
        weights,
        rows.length,
        cols,
        outRows,
      ),
      "rl_scatter_add_rows",
    );
  }

  /**
   * Batched matmul over strided views (rl_matmul_nd): out[a,b,m,n] = Σ_k x[a,b,m,k]·w[a,b,k,n].
   * Views have up to 4 dims (missing leading ones are 1); see {@link TensorView}.
   */
  matmulNd(
    out: DevPtr,
    outView: TensorView,
    x: DevPtr,
    xView: TensorView,
    w: DevPtr,
    wView: TensorView,
  ): void {
    this.#check(
      this.#lib.symbols.rl_matmul_nd(
        this.#c,
        out,
        descriptor(outView, "out", "rl_matmul_nd"),
        x,
        descriptor(xView, "x", "rl_matmul_nd"),
        w,
        descriptor(wView, "w", "rl_matmul_nd"),
      ),
      "rl_matmul_nd",
    );
  }

  /** Strided copy between equal-shaped views of one dtype (rl_copy_nd). */
  copyNd(dst: DevPtr, dstView: TensorView, src: DevPtr, srcView: TensorView): void {
    this.#check(
      this.#lib.symbols.rl_copy_nd(
        this.#c,
        dst,
        descriptor(dstView, "dst", "rl_copy_nd"),
        src,
        descriptor(srcView, "src", "rl_copy_nd"),
      ),
      "rl_copy_nd",
    );
  }

  /** out = a + b over `n` floats. */
  add(out: DevPtr, a: DevPtr, b: DevPtr, n: number): void {
    this.#check(this.#lib.symbols.rl_add(this.#c, out, a, b, BigInt(n)), "rl_add");
  }

  /** out = s · x over `n` floats. */
  scale(out: DevPtr, x: DevPtr, s: number, n: number): void {
    this.#check(this.#lib.symbols.rl_scale(this.#c, out, x, s, BigInt(n)), "rl_scale");
  }

  /** The index of each row's largest value (first on ties). */
  argmax(out: Int32Array, x: DevPtr, rows: number, cols: number): void {
    this.#check(this.#lib.symbols.rl_argmax(this.#c, out, x, rows, cols), "rl_argmax");
  }

  /** Frees everything the context owns. Idempotent. The library stays loaded (see loadLibrary). */
  close(): void {
    if (this.#ctx === null) return;
    this.#lib.symbols.rl_destroy(this.#ctx);
    this.#ctx = null;
  }

  /** `using be = Backend.open(...)`: {@link Backend.close} at the end of the scope. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Arguments of {@link Backend.attention}; see rl_attention in ffi/rabbitllm.h. */
export interface AttentionArgs {
  /** [nQ, nHeads · vHeadDim]; must not overlap q, k or v. */
  out: DevPtr;
  /** [nQ, qStride]: head h at columns [h · headDim, (h + 1) · headDim). */
  q: DevPtr;
  /** Floats between consecutive query rows. */
  qStride: number;
  /** [kvLen, kStride] cache rows: kv head g at columns g · headDim. */
  k: DevPtr;
  /** Floats between consecutive key rows. */
  kStride: number;
  /** Values; may equal k (an MLA latent cache: a value is the first vHeadDim floats of a key). */
  v: DevPtr;
  /** Floats between consecutive value rows (default kStride). */
  vStride?: number;
  /** New queries. */
  nQ: number;
  /** Cache index of the first query (its key is already in the cache). */
  qStart: number;
  /** Cache rows to attend over (≥ qStart + nQ). */
  kvLen: number;
  /** Query heads. */
  nHeads: number;
  /** Key/value heads (nHeads a multiple of it). */
  nKvHeads: number;
  /** Dims per query/key head. */
  headDim: number;
  /** Value dims per head (default headDim); the output is [nQ, nHeads * vHeadDim]. */
  vHeadDim?: number;
  /** Multiplies q·k (usually headDim^-0.5). */
  scale: number;
  /** Sliding window in tokens (query sees keys less than `window` behind it); 0/absent: none. */
  window?: number;
  /** > 0: scores = softcap · tanh(scores / softcap) (Gemma 2); 0/absent: off. */
  softcap?: number;
  /** kvLen bytes, 0 = a padding key no query sees; null/absent: every key valid. */
  kvValid?: Uint8Array | null;
  /**
   * ALiBi: one finite slope per query head (lib/models/alibi.ts `alibiSlopes`); every visible
   * score of query position `pos` and key `j` gains `slope[h] · (j − pos)` after the scale and
   * softcap: ALiBi's `slope[h] · j`, less a per-query constant the softmax cancels. null/absent:
   * no bias (rl_attention).
   */
  alibiSlopes?: Float32Array | null;
}

/**
 * A strided view of device memory (rabbitllm.h "tensor descriptors"): element (i0, …) sits at
 * `offset + Σ i_d · strides[d]` elements of `dtype` from the pointer passed beside the view.
 * Up to 4 dims; fewer are padded in front with extent 1. A stride of 0 broadcasts an input.
 */
export interface TensorView {
  /** Default F32. */
  dtype?: WeightDType;
  /** In elements; default 0. */
  offset?: number;
  /** Extent of each dim (1 to 4 dims). */
  shape: readonly number[];
  /** In elements, one per dim of `shape`. */
  strides: readonly number[];
}

/** The RL_DESC_LEN int64 descriptor of a view. */
function descriptor(v: TensorView, name: string, op: string): BigInt64Array {
  const n = v.shape.length;
  if (n < 1 || n > 4 || v.strides.length !== n) {
    throw new BackendError(
      op,
      `${name}: a view needs 1 to 4 dims with one stride each, got shape [${v.shape}] strides [${v.strides}]`,
      undefined,
      1, // RL_ERR_INVALID
    );
  }
  const d = new BigInt64Array(10);
  d[0] = BigInt(DTYPE_CODE[v.dtype ?? "F32"]);
  d[1] = BigInt(v.offset ?? 0);
  for (let i = 0; i < 4; i++) {
    const j = i - (4 - n);
    d[2 + i] = BigInt(j < 0 ? 1 : v.shape[j]);
    d[6 + i] = BigInt(j < 0 ? 0 : v.strides[j]);
  }
  return d;
}

const libraries = new Map<string, Lib>();
/**
 * Opens a library once per process and never unloads it: its worker threads (OpenMP, CUDA)
 * outlive any one context, and unloading code they may still run would crash the process.
 */
function loadLibrary(path: string): Lib {
  let lib = libraries.get(path);
  if (!lib) {
    try {
      lib = Deno.dlopen(path, SYMBOLS);
    } catch (e) {
      throw new BackendError("load", `cannot load ${path}: ${(e as Error).message}`, { cause: e });
    }
    libraries.set(path, lib);
  }
  return lib;
}

function lastError(lib: Lib, ctx: DevPtr | null): string {
  const n = Number(lib.symbols.rl_last_error(ctx, errBuf, BigInt(errBuf.length)));
  return decoder.decode(errBuf.subarray(0, Math.min(n, errBuf.length - 1))) || "unknown error";
}

let ones = new Uint8Array(0);
/**
 * A mask with every key valid. Deno's fast FFI path does not accept null for a "buffer"
 * parameter once the call is optimized, so "no mask" is passed as a mask of ones.
 */
function allValid(n: number): Uint8Array {
  if (ones.length < n) ones = new Uint8Array(Math.max(n, ones.length * 2)).fill(1);
  return ones.subarray(0, n);
}
