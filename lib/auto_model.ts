/**
 * `AutoModel.fromPretrained`: checkpoint → config → family → split → backend → streaming model.
 *
 * @module
 */
import { Backend, ensureLibrary } from "../ffi/backend.ts";
import {
  findCheckpoint,
  type Manifest,
  partId,
  partOrder,
  type Split,
  splitCheckpoint,
  splitGguf,
} from "./checkpoint.ts";
import { type GgufCheckpoint, openGguf } from "./gguf_model.ts";
import { type Progress, progress } from "./progress.ts";
import { snapshotDownload } from "./hub.ts";
import { Tokenizer } from "./tokenizer.ts";
import { architectureOf, readConfigJson, type StorageDType } from "./config.ts";
import { type BlockDType, QUANTIZABLE } from "./quant.ts";
import { CheckpointError, GgufError, HubError, InputError, TokenizerError } from "./errors.ts";
import { CausalLM } from "./engine/causal_lm.ts";
import { readGenerationDefaults } from "./engine/generate.ts";
import { Profiler } from "./profiler.ts";
import { LayerStore, type TraceEvent } from "./engine/store.ts";
import { expertsPerToken, type Plan, plan, type PlanInput, planLayers } from "./engine/planner.ts";
import { workBytes } from "./engine/kv_cache.ts";
import { type MemoryLimits, readMemoryLimits } from "./memory.ts";
import type { Family } from "./models/family.ts";
import type { ModelConfig } from "./config.ts";
import { familyFor } from "./models/registry.ts";

/** Options of {@link AutoModel.fromPretrained}. */
export interface FromPretrainedOptions {
  /** "cpu" (default), "cuda", "cuda:N", or "auto" (CUDA when its library loads, else CPU). */
  device?: "cpu" | "cuda" | `cuda:${number}` | "auto";
  /**
   * "auto" (default) keeps the config's dtype (float16 when it names none). A block format
   * ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"; K-format rows that are not
   * whole 256-blocks take llama.cpp's fallback: q5_0, q5_1, q8_0) quantizes the matmul weights and
   * the embedding table
   * at split time (norms and biases stay in the config's dtype); the manifest records each
   * quantized tensor's error.
   */
  dtype?: "auto" | StorageDType | Lowercase<BlockDType>;
  /** Read the next layers while the current one computes (default true). */
  prefetching?: boolean;
  /** Layers read ahead when prefetching (default 2). */
  prefetchDepth?: number;
  /** Where the per-layer split is written; default `<checkpoint>/rabbitllm_split_<dtype>`. */
  layerShardsSavingPath?: string;
  /**
   * Longest sequence (prompt + new tokens) the KV cache holds; default min(context, 4096). A model
   * whose rope is dynamic NTK may generate past its context up to an explicit maxSeqLen.
   */
  maxSeqLen?: number;
  /**
   * Device bytes decoder layers may keep resident between steps (the rest stream each step).
   * "auto" (default): as much as the memory planner finds room for, from the memory the process
   * may really use — available RAM and cgroup limits (containers), less the KV cache,
   * activations and the runtime's own footprint. A number caps that (the planner keeps fewer
   * layers when memory is short); 0 streams every layer.
   */
  maxResidentBytes?: number | "auto";
  /**
   * Host memory the process may use in all, bytes, like a container's memory limit (default:
   * what it may really use — available RAM and cgroup limits, read at load). The planner keeps
   * resident what fits in it beside the runtime's own footprint and streams the rest.
   */
  maxMemory?: number;
  /**
   * Compute streamed layers straight from their files' mapped pages where the backend can (the
   * CPU; default true). false reads them into buffers instead (network file systems where mapping
   * is slow). Resident layers are read into buffers either way (huge pages: faster GEMVs).
   */
  mapFiles?: boolean;
  /**
   * Advanced: replaces the memory planner (lib/engine/planner.ts `plan`), e.g. to pin chosen
   * layers. Called at load and before each call with that call's KV cache and activations.
   */
  planner?: (input: PlanInput) => Plan;
  /** GPU: device bytes the engine may use in all (default: what is free). */
  maxGpuMemory?: number;
  /**
   * GPU: pinned host bytes for the host tier — layers kept in host RAM and copied to the device
   * each step instead of read from disk (default: as the host memory budget allows).
   */
  maxCpuMemory?: number;
  /** CPU worker threads; 0 = all cores. */
  threads?: number;
  /**
   * A GGUF file inside the directory or hub repo to load (transformers' `gguf_file`); only that
   * file is downloaded. Not needed when the path is the .gguf file itself, or a directory holding
   * exactly one .gguf and no config.json.
   */
  ggufFile?: string;
  /** Hub revision (branch, tag or commit) for an `org/name` id. */
  revision?: string;
  /** Hub access token for gated/private repos (default `HF_TOKEN`); never printed. */
  token?: string;
  /** Hub endpoint (default `HF_ENDPOINT`, else https://huggingface.co). */
  hubUrl?: string;
  /** Use only the local cache (also `HF_HUB_OFFLINE=1`). */
  offline?: boolean;
  /** Record read/upload/compute events in order (for tests and profiling). */
  trace?: TraceEvent[];
  /** No progress bars (they are drawn only on a terminal anyway). */
  quiet?: boolean;
  /**
   * "auto" (default: flash where the backend has it, else eager), "flash", "eager";
   * transformers' "sdpa" and "flash_attention_2" are aliases of flash.
   */
  attnImplementation?: AttnImplementation;
  /**
   * CPU: decode matmuls on q8_0 / q4_0 / q4_1 / q5_0 / q5_1 / q4_k weights (not q5_k, q6_k)
   * quantize the activation row to int8 per 32 values (as llama.cpp does) and use integer dot
   * products — faster, and approximate: each output is within Σ_blocks max|x_block|/254 ·
   * Σ|w_block| of the f32 math (default false: activations stay f32, results equal f32 math on
   * the dequantized weights). Other devices: said once, off.
   */
  int8Activations?: boolean;
  /** Pinned host staging for layer loads (GPU; default true). */
  prefetchPinMemory?: boolean;
  /** Layer loads on a transfer stream overlapping compute (GPU; default true). */
  asyncCopy?: boolean;
}

/** Names accepted by `attnImplementation`. */
export type AttnImplementation = "auto" | "flash" | "eager" | "sdpa" | "flash_attention_2";

const DTYPE_ALIASES: Record<string, StorageDType> = {
  float32: "float32",
  fp32: "float32",
  float16: "float16",
  fp16: "float16",
  bfloat16: "bfloat16",
  bf16: "bfloat16",
};

const logged = new Set<string>();
/** A fallback that costs something is said once per process. */
function logOnce(msg: string): void {
  if (logged.has(msg)) return;
  logged.add(msg);
  console.error(`rabbitllm: ${msg}`);
}

/** Whether the kernel's transparent huge pages mode (its sysfs file) is "never". */
export function hugePagesOff(mode: string | null): boolean {
  return mode !== null && /\[never\]/.test(mode);
}

/**
 * The CPU backend asks for 2 MiB pages for resident layers (a GEMV over 4 KiB pages misses the
 * TLB on every page); where the kernel has them off, that is said once.
 */
function sayHugePages(be: Backend, plan: Plan): void {
  if (be.device !== "cpu" || !plan.tiers.includes("resident")) return;
  const path = "/sys/kernel/mm/transparent_hugepage/enabled";
  if (hugePagesOff(be.readSysfile(path))) {
    logOnce(
      `transparent huge pages are off (${path}: never): resident layers use 4 KiB pages, and ` +
        "decode reads them about 20% slower",
    );
  }
}

/**
 * The host memory this process may still use (lib/memory.ts): cgroup limits and the system's
 * available memory, read through the backend (Deno reads /proc and /sys only with --allow-all).
 */
function hostMemory(be: Backend): MemoryLimits {
  const sys = Deno.permissions.querySync({ name: "sys", kind: "systemMemoryInfo" }).state ===
      "granted"
    ? Deno.systemMemoryInfo().available
    : null;
  const limits = readMemoryLimits({ systemAvailable: sys, read: (p) => be.readSysfile(p) });
  if (limits.available === null) {
    logOnce("host memory unknown: every layer streams through the page cache");
  }
  return limits;
}

/** What the planner needs besides the per-call work bytes; see lib/engine/planner.ts. */
function planInputOf(
  m: Manifest,
  family: Family,
  cfg: ModelConfig,
  be: Backend,
  opts: FromPretrainedOptions,
): Omit<PlanInput, "workBytes"> {
  const small = m.parts.filter((p) => !p.id.startsWith("layer."));
  const head = small.find((p) => p.id === (cfg.tieWordEmbeddings ? "embed" : "lm_head"));
  const cap = opts.maxResidentBytes ?? "auto";
  if (cap !== "auto" && !(cap >= 0)) {
    throw new InputError(`maxResidentBytes: expected "auto" or a number >= 0, got ${cap}`);
  }
  if (opts.maxMemory !== undefined && !(opts.maxMemory >= 0)) {
    throw new InputError(`maxMemory: expected a number of bytes >= 0, got ${opts.maxMemory}`);
  }
  return {
    device: be.device,
    layers: planLayers(
      m.parts.filter((p) => p.id.startsWith("layer.")),
      family.lazyGroup && ((local) => family.lazyGroup!(local, cfg)),
      expertsPerToken(cfg),
    ),
    smallBytes: small.reduce((s, p) => s + p.dataBytes, 0),
    smallPerToken: head?.dataBytes ?? 0,
    smallMapped: be.canMap && opts.mapFiles !== false, // as LayerStore maps them
    prefetchDepth: opts.prefetching === false ? 0 : opts.prefetchDepth ?? 2,
    hostAvailable: opts.maxMemory === undefined
      ? hostMemory(be).available
      : Math.max(0, opts.maxMemory - Deno.memoryUsage().rss),
    deviceFree: be.device === "cuda" ? be.getOption("device_memory_free") : null,
    maxResidentBytes: cap === "auto" ? undefined : cap,
    maxGpuMemory: opts.maxGpuMemory,
    maxCpuMemory: opts.maxCpuMemory,
  };
}

/** How a plan that streams from disk came about (it costs speed; said once per model). */
function planMessage(p: Plan, source: string): string {
  const n = p.tiers.filter((t) => t !== "resident").length;
  return `${source}: the model does not fit in memory; ${n} of ${p.tiers.length} layers stream from disk each step (${
    p.notes.join("; ")
  })`;
}

/** Attention implementations by name (transformers' names accepted as aliases). */
const ATTN_IMPL: Record<AttnImplementation, number> = {
  auto: 0,
  flash: 1,
  sdpa: 1,
  flash_attention_2: 1,
  eager: 2,
};

/** Applies the transfer and attention options; returns the attention that will run. */
function configureBackend(be: Backend, opts: FromPretrainedOptions): "flash" | "eager" {
  const impl = opts.attnImplementation ?? "auto";
  if (!(impl in ATTN_IMPL)) {
    throw new InputError(
      `attnImplementation: expected one of ${Object.keys(ATTN_IMPL).join(", ")}, got ${impl}`,
    );
  }
  be.setOption("attn_impl", ATTN_IMPL[impl]);
  be.setOption("pin_memory", opts.prefetchPinMemory === false ? 0 : 1);
  be.setOption("async_copy", opts.asyncCopy === false ? 0 : 1);
  if (opts.int8Activations) {
    if (be.device === "cpu") be.setOption("int8_activations", 1);
    else logOnce(`int8Activations: the ${be.device} backend has none; activations stay f32`);
  }
  const code = ATTN_IMPL[impl] || (be.getOption("flash_available") === 1 ? 1 : 2);
  return code === 1 ? "flash" : "eager";
}

/**
 * Whether the fused (flash) attention can run here: the CUDA backend loads and the GPU is
 * sm_80 or newer. `reason` says why not.
 */
export function isFlashAttentionAvailable(): { available: boolean; reason: string } {
  let be: Backend;
  try {
    be = Backend.open({ device: "cuda" });
  } catch (e) {
    return { available: false, reason: (e as Error).message };
  }
  try {
    const ok = be.getOption("flash_available") === 1;
    return {
      available: ok,
      reason: ok ? `flash attention on ${be.info}` : `${be.info}: needs sm_80 or newer`,
    };
  } finally {
    be.close();
  }
}

function openBackend(device: string, threads: number | undefined): Backend {
  const m = /^cuda(?::(\d+))?$/.exec(device);
  if (device === "cpu") return Backend.open({ device: "cpu", threads });
  if (m) return Backend.open({ device: "cuda", ordinal: Number(m[1] ?? 0) });
  if (device === "auto") {
    try {
      return Backend.open({ device: "cuda" });
    } catch (e) {
      logOnce(`device "auto": CUDA unavailable (${(e as Error).message}); using the CPU`);
      return Backend.open({ device: "cpu", threads });
    }
  }
  throw new InputError(
    `device: expected "cpu", "cuda", "cuda:N" or "auto", got ${JSON.stringify(device)}`,
  );
}

/** Checks a split's parts against what the family expects, so a stale split never loads. */
function checkManifest(m: Manifest, family: Family, cfg: ModelConfig, dir: string): void {
  const byId = new Map(m.parts.map((p) => [p.id, p]));
  for (const part of partOrder(cfg)) {
    const id = partId(part);
    const p = byId.get(id);
    if (!p) throw new CheckpointError(`${dir}/manifest.json`, `part ${id} is missing`);
    const have = new Map(p.tensors.map((t) => [t.name, t.shape.join(",")]));
    for (const e of family.expected(part, cfg)) {
      if (have.get(e.local) !== e.shape.join(",")) {
        throw new CheckpointError(
          `${dir}/${p.file}`,
          `tensor ${e.local}: expected shape [${e.shape}]`,
        );
      }
    }
  }
}

/** A checkpoint resolved to a local directory, with its family, config and storage dtype. */
export interface Checkpoint {
  dir: string;
  family: Family;
  config: ModelConfig;
  /** The dtype the split stores (the config's, or the one asked for). */
  dtype: StorageDType;
  /** The block format matmul weights are quantized to, or null. */
  quantize: BlockDType | null;
  /** The GGUF file the model comes from (its tensors keep their types), or null. */
  gguf: GgufCheckpoint | null;
}

/** Finds the checkpoint directory and reads its config (no weights are touched). */
export async function openCheckpoint(
  pathOrRepoId: string,
  opts: Pick<
    FromPretrainedOptions,
    "revision" | "dtype" | "token" | "hubUrl" | "offline" | "quiet" | "ggufFile"
  > = {},
): Promise<Checkpoint> {
  const ggufPath = await locateGguf(pathOrRepoId, opts);
  if (ggufPath) {
    const gguf = await openGguf(ggufPath);
    const family = familyFor(gguf.architecture, ggufPath);
    const config = family.parseConfig(gguf.config, ggufPath);
    const wanted = opts.dtype ?? "auto";
    if (wanted !== "auto") {
      throw new InputError(
        `dtype: a GGUF file keeps its own tensor types; got ${wanted} (leave dtype "auto")`,
      );
    }
    const dir = ggufPath.slice(0, ggufPath.lastIndexOf("/"));
    return { dir, family, config, dtype: "float32", quantize: null, gguf };
  }
  const dir = await locate(pathOrRepoId, opts);
  const raw = await readConfigJson(dir);
  const source = `${dir}/config.json`;
  const family = familyFor(architectureOf(raw, source), source);
  const config = family.parseConfig(raw, source);
  const wanted = opts.dtype ?? "auto";
  const block = String(wanted).toUpperCase();
  if (QUANTIZABLE.includes(block as BlockDType)) {
    return {
      dir,
      family,
      config,
      dtype: config.dtype,
      quantize: block as BlockDType,
      gguf: null,
    };
  }
  const dtype = wanted === "auto" ? config.dtype : DTYPE_ALIASES[wanted];
  if (!dtype) {
    throw new InputError(
      `dtype: expected "auto", float32, float16, bfloat16 or a block format (${
        QUANTIZABLE.map((q) => q.toLowerCase()).join(", ")
      }), got ${wanted}`,
    );
  }
  return { dir, family, config, dtype, quantize: null, gguf: null };
}

const absolute = (p: string) => (p.startsWith("/") ? p : `${Deno.cwd()}/${p}`).replace(/\/+$/, "");

/**
 * The GGUF file to load, or null for a safetensors checkpoint: `ggufFile` inside the directory or
 * hub repo (only that file is fetched), the path itself when it is a .gguf file, or the one .gguf
 * of a directory without config.json.
 */
async function locateGguf(
  pathOrRepoId: string,
  opts: Pick<
    FromPretrainedOptions,
    "revision" | "token" | "hubUrl" | "offline" | "quiet" | "ggufFile"
  >,
): Promise<string | null> {
  if (opts.ggufFile !== undefined) {
    const name = opts.ggufFile;
    if (!/\.gguf$/i.test(name) || name.split("/").includes("..")) {
      throw new InputError(`ggufFile: expected a .gguf file name inside the repo, got ${name}`);
    }
    const dir = isDir(pathOrRepoId) ? absolute(pathOrRepoId) : await snapshotDownload(
      pathOrRepoId,
      {
        revision: opts.revision,
        token: opts.token,
        hubUrl: opts.hubUrl,
        offline: opts.offline,
        quiet: opts.quiet,
        allowPatterns: [name],
      },
    );
    if (!isFile(`${dir}/${name}`)) throw new CheckpointError(`${dir}/${name}`, "no such GGUF file");
    return `${dir}/${name}`;
  }
  if (isFile(pathOrRepoId) && /\.gguf$/i.test(pathOrRepoId)) return absolute(pathOrRepoId);
  if (!isDir(pathOrRepoId) || isFile(`${pathOrRepoId}/config.json`)) return null;
  const ggufs: string[] = [];
  for (const e of Deno.readDirSync(pathOrRepoId)) {
    if (e.isFile && /\.gguf$/i.test(e.name)) ggufs.push(e.name);
  }
  if (ggufs.length === 0) return null;
  if (ggufs.length > 1) {
    throw new CheckpointError(
      pathOrRepoId,
      `holds ${ggufs.length} GGUF files (${ggufs.sort().join(", ")}): name one with ggufFile`,
    );
  }
  return `${absolute(pathOrRepoId)}/${ggufs[0]}`;
}

const stat = (p: string) => {
  try {
    return Deno.statSync(p);
  } catch {
    return null;
  }
};
const isDir = (p: string) => stat(p)?.isDirectory ?? false;
const isFile = (p: string) => stat(p)?.isFile ?? false;

/**
 * A local directory as is; a hub repo id through the Hugging Face cache (downloading what is
 * missing). When the hub cannot be reached, a cached snapshot is used and that is said once.
 */
async function locate(
  pathOrRepoId: string,
  opts: Pick<FromPretrainedOptions, "revision" | "token" | "hubUrl" | "offline" | "quiet">,
): Promise<string> {
  if (isDir(pathOrRepoId) || !/^[\w.-]+\/[\w.-]+$/.test(pathOrRepoId)) {
    return findCheckpoint(pathOrRepoId, opts.revision);
  }
  try {
    return await snapshotDownload(pathOrRepoId, {
      revision: opts.revision,
      token: opts.token,
      hubUrl: opts.hubUrl,
      offline: opts.offline,
      quiet: opts.quiet,
    });
  } catch (e) {
    if (!(e instanceof HubError && e.kind === "network")) throw e;
    const cached = (() => {
      try {
        return findCheckpoint(pathOrRepoId, opts.revision);
      } catch {
        return null;
      }
    })();
    if (!cached) throw e;
    logOnce(`${e.message}; using the cached snapshot ${cached}`);
    return cached;
  }
}

/** Splits (or reuses the split of) a checkpoint, with a progress bar on a terminal. */
export async function splitWithProgress(
  ck: Checkpoint,
  opts: Pick<FromPretrainedOptions, "layerShardsSavingPath" | "quiet"> = {},
): Promise<Split> {
  let bar: Progress | null = null;
  const onProgress = (done: number, total: number) => {
    bar ??= progress(`split ${ck.gguf?.file ?? ck.dir}`, total, { quiet: opts.quiet });
    bar.update(done);
  };
  const split = ck.gguf
    ? await splitGguf(ck.gguf, ck.family, ck.config, {
      dtype: ck.dtype,
      layerShardsSavingPath: opts.layerShardsSavingPath,
      onProgress,
    })
    : await splitCheckpoint(ck.dir, ck.family, ck.config, {
      dtype: ck.dtype,
      quantize: ck.quantize ?? undefined,
      layerShardsSavingPath: opts.layerShardsSavingPath,
      onProgress,
    });
  (bar as Progress | null)?.done();
  return split;
}

/**
 * The tokenizer a GGUF file carries; null (said once) when it carries none or one we cannot build
 * exactly — the model then runs on token ids.
 */
function ggufTokenizer(g: GgufCheckpoint): Tokenizer | null {
  if (!g.header.metadata.has("tokenizer.ggml.tokens")) {
    logOnce(`${g.file}: no tokenizer in the GGUF metadata; the model runs on token ids`);
    return null;
  }
  try {
    return Tokenizer.fromGguf(g.header);
  } catch (e) {
    // The weights load whatever the tokenizer metadata holds (transformers reads them alike); a
    // tokenizer we cannot build exactly is said, never guessed.
    if (!(e instanceof TokenizerError || e instanceof GgufError)) throw e;
    logOnce(`${e.message}; no tokenizer: the model runs on token ids`);
    return null;
  }
}

/** Entry point: loads any supported checkpoint as a streaming {@link CausalLM}. */
export class AutoModel {
  /**
   * Opens a checkpoint — a directory, a hub `org/name` (downloaded into the Hugging Face cache), a
   * `.gguf` file or one named by `ggufFile` — splits it into per-layer files once, and returns a
   * model ready for `forward` / `generate` / `stream`.
   *
   * @example Generate text, then a chat turn
   * ```ts ignore
   * import { AutoModel } from "jsr:@rabbitllm/rabbitllm";
   * await using model = await AutoModel.fromPretrained("Qwen/Qwen2.5-0.5B-Instruct", {
   *   maxMemory: 2e9, // stream what does not fit in 2 GB
   * });
   * for await (const c of model.stream("Once upon a time", { maxNewTokens: 40 })) {
   *   await Deno.stdout.write(new TextEncoder().encode(c.text));
   * }
   * ```
   *
   * @example A GGUF file as it is
   * ```ts ignore
   * const model = await AutoModel.fromPretrained("bartowski/Llama-3.2-1B-Instruct-GGUF", {
   *   ggufFile: "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
   * });
   * ```
   */
  static async fromPretrained(
    pathOrRepoId: string,
    opts: FromPretrainedOptions = {},
  ): Promise<CausalLM> {
    const ck = await openCheckpoint(pathOrRepoId, opts);
    const { dir, family, config } = ck;
    const maxSeqLen = opts.maxSeqLen ?? Math.min(config.maxPositionEmbeddings, 4096);
    if (!Number.isInteger(maxSeqLen) || maxSeqLen <= 0) {
      throw new InputError(`maxSeqLen: expected a positive integer, got ${maxSeqLen}`);
    }
    const split = await splitWithProgress(ck, opts);
    checkManifest(split.manifest, family, config, split.dir);
    const generationDefaults = await readGenerationDefaults(dir, config.eosTokenIds);
    // A checkpoint without a tokenizer (tokenizer.json, or a remote class's tokenizer.model /
    // qwen.tiktoken) still runs on token ids.
    const tokenizer = ck.gguf
      ? ggufTokenizer(ck.gguf)
      : await Tokenizer.hasFiles(dir)
      ? await Tokenizer.fromDir(dir)
      : null;
    const profiler = new Profiler();
    // A remote install's first run builds (or downloads) the library into the cache (ffi/native.ts).
    const device = opts.device ?? "cpu";
    if (device === "cpu" || /^cuda(:\d+)?$/.test(device)) {
      await ensureLibrary(device === "cpu" ? "cpu" : "cuda");
    } else if (device === "auto") await ensureLibrary("cpu").catch(() => {});
    const backend = openBackend(device, opts.threads);
    try {
      const attention = configureBackend(backend, opts);
      const base = planInputOf(split.manifest, family, config, backend, opts);
      const planner = opts.planner ?? plan;
      let saidPlan = false; // the notes change with every call's work bytes: say the first
      const planFor = (workBytes: number) => {
        const p = planner({ ...base, workBytes });
        if (p.tiers.length !== config.numLayers) {
          throw new InputError(`planner: ${p.tiers.length} tiers for ${config.numLayers} layers`);
        }
        if (p.dropBehind && !saidPlan) {
          saidPlan = true;
          console.error(`rabbitllm: ${planMessage(p, dir)}`);
        }
        return p;
      };
      // Before the first call says its batch: one sequence at maxSeqLen (what a GPU allocates).
      const first = planFor(workBytes(config, 1, maxSeqLen));
      sayHugePages(backend, first);
      const store = await LayerStore.open(backend, split.dir, split.manifest, {
        plan: first,
        mapFiles: opts.mapFiles,
        trace: opts.trace,
        profiler,
        lazyGroup: family.lazyGroup && ((local) => family.lazyGroup!(local, config)),
      });
      return new CausalLM({
        planFor,
        config,
        family,
        backend,
        store,
        maxSeqLen,
        source: ck.gguf?.file ?? dir,
        tokenizer,
        generationDefaults,
        profiler,
        attention,
        trace: opts.trace,
      });
    } catch (e) {
      backend.close();
      throw e;
    }
  }
}
