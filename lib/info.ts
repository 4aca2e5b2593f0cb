/**
 * What running a checkpoint costs, read from its config and safetensors headers alone: bytes per
 * part, bytes streamed per token, and the memory the engine will hold.
 *
 * @module
 */
import { type Backend, cstr } from "../ffi/backend.ts";
import type { Checkpoint } from "./auto_model.ts";
import { listShards, openShard, partId, placements, quantizedLocals } from "./checkpoint.ts";
import { tensorByteSize } from "./dtype.ts";
import type { BlockDType } from "./quant.ts";
import type { ModelConfig } from "./config.ts";
import { workBytes } from "./engine/kv_cache.ts";
import {
  type Bandwidths,
  type Plan,
  type PlanInput,
  type PlanLayer,
  planLayers,
  predictSecondsPerToken,
} from "./engine/planner.ts";
import { formatBytes } from "./progress.ts";

export { formatBytes } from "./progress.ts";

const BYTES: Record<string, number> = { float32: 4, float16: 2, bfloat16: 2 };

/** The summary `rabbit info` prints. */
export interface ModelInfo {
  /** The checkpoint directory, or the GGUF file. */
  dir: string;
  architecture: string;
  dtype: string;
  parameters: number;
  layers: number;
  hiddenSize: number;
  heads: string;
  headDim: number;
  vocabSize: number;
  context: number;
  rope: string;
  tiedEmbeddings: boolean;
  /** Bytes of each part in the storage dtype. */
  partBytes: Record<string, number>;
  /** Decoder layer bytes: largest and total. */
  layerBytes: { max: number; total: number };
  /**
   * Weight bytes a batch-1 decode step reads when every layer streams (layers + head); a MoE
   * layer counts its always-needed tensors plus the config's experts per token (its config class's
   * default when config.json omits `num_experts_per_tok`) average experts.
   */
  streamedPerToken: number;
  /** MoE only: experts per layer (on-demand groups of the largest layer) and chosen per token. */
  experts: { perLayer: number; perToken: number } | null;
  /** Device memory with every layer streamed: small parts + slots + KV cache + activations. */
  minDeviceBytes: number;
  /** Device memory with every layer resident. */
  allResidentBytes: number;
  /** KV cache bytes at maxSeqLen for one sequence. */
  kvCacheBytes: number;
  maxSeqLen: number;
  /** Each decoder layer as the memory planner sees it. */
  planLayers: PlanLayer[];
  /** Embedding, final norm and head. */
  smallBytes: number;
  /** The head's bytes (lm_head, or the tied embedding): read every decoded token. */
  headBytes: number;
}

/** A GGUF's tensor types by count, most first ("Q4_K ×120, F32 ×61"). */
function ggufTypes(ck: Checkpoint): string {
  const n = new Map<string, number>();
  for (const t of ck.gguf!.header.tensors) n.set(t.type, (n.get(t.type) ?? 0) + 1);
  return [...n].sort((a, b) => b[1] - a[1]).map(([t, c]) => `${t} ×${c}`).join(", ");
}

/** The checkpoint's tensors by Hugging Face name; a GGUF tensor with the bytes it keeps. */
async function* checkpointTensors(
  ck: Checkpoint,
): AsyncGenerator<{ name: string; shape: number[]; nbytes?: number }> {
  if (ck.gguf) {
    yield* ck.gguf.tensors;
    return;
  }
  const { files } = await listShards(ck.dir);
  for (const f of files) {
    using shard = await openShard(`${ck.dir}/${f}`);
    for (const [name, t] of shard.tensors) yield { name, shape: t.shape };
  }
}

/** Sizes from the headers; `maxSeqLen` and `prefetchDepth` as fromPretrained would use them. */
export async function modelInfo(
  ck: Checkpoint,
  opts: { maxSeqLen?: number; prefetchDepth?: number } = {},
): Promise<ModelInfo> {
  const c = ck.config;
  const size = BYTES[ck.dtype];
  const partBytes: Record<string, number> = {};
  /** Per layer part: its tensors (local name, bytes in the storage dtype). */
  const layerTensors = new Map<string, { name: string; nbytes: number }[]>();
  let parameters = 0;
  const quantized = new Map<string, Map<string, BlockDType>>();
  for await (const t of checkpointTensors(ck)) {
    const where = placements(ck.family, t.name, c) ?? [];
    if (where.some((p) => p.part)) parameters += t.shape.reduce((a, b) => a * b, 1);
    for (const placed of where) {
      if (!placed.part) continue;
      // A fused tensor's share: its rows.
      const n = (placed.rows?.length ?? t.shape[0] ?? 1) *
        t.shape.slice(1).reduce((a, b) => a * b, 1);
      const id = partId(placed.part);
      // What the split stores: blocks for the tensors a quantized split quantizes; a GGUF tensor
      // as it is.
      let blocks = quantized.get(id);
      if (!blocks) {
        blocks = ck.quantize ? quantizedLocals(ck.family, c, id, ck.quantize) : new Map();
        quantized.set(id, blocks);
      }
      const block = blocks.get(placed.local);
      const shape = [placed.rows?.length ?? t.shape[0], ...t.shape.slice(1)];
      const nbytes = t.nbytes !== undefined && t.shape.length > 0
        ? t.nbytes / t.shape[0] * shape[0]
        : t.nbytes ?? (block ? tensorByteSize(block, shape) : n * size);
      partBytes[id] = (partBytes[id] ?? 0) + nbytes;
      if (placed.part.kind === "layer") {
        const list = layerTensors.get(id) ?? [];
        list.push({ name: placed.local, nbytes });
        layerTensors.set(id, list);
      }
    }
  }
  const ids = Array.from({ length: c.numLayers }, (_, i) => `layer.${i}`);
  const lazy = ck.family.lazyGroup && ((local: string) => ck.family.lazyGroup!(local, c));
  const k = c.expertsPerToken; // the typed config's, class default included
  const layers = planLayers(
    ids.map((id) => ({ dataBytes: partBytes[id] ?? 0, tensors: layerTensors.get(id) ?? [] })),
    lazy,
    k,
  );
  const max = Math.max(...layers.map((l) => l.bytes));
  const total = layers.reduce((s, l) => s + l.bytes, 0);
  const head = partBytes.lm_head ?? partBytes.embed;
  let experts: ModelInfo["experts"] = null;
  if (lazy && k !== null) {
    const perLayer = Math.max(
      0,
      ...[...layerTensors.values()].map((ts) =>
        new Set(ts.map((t) => lazy(t.name)).filter((g) => g !== null)).size
      ),
    );
    if (perLayer > 0) experts = { perLayer, perToken: k };
  }
  const small = (partBytes.embed ?? 0) + (partBytes.norm ?? 0) + (partBytes.lm_head ?? 0);
  const maxSeqLen = opts.maxSeqLen ?? Math.min(c.maxPositionEmbeddings, 4096);
  const kvCacheBytes = workBytes(c, 1, maxSeqLen, 0, 0);
  // One decode step's activations (fp32) and logits.
  const act = workBytes(c, 1, 0, 1, 1);
  const slots = Math.min(c.numLayers, (opts.prefetchDepth ?? 2) + 1);
  return {
    dir: ck.gguf?.file ?? ck.dir,
    architecture: c.architecture,
    dtype: ck.gguf
      ? `GGUF (${ggufTypes(ck)})`
      : ck.quantize
      ? `${ck.dtype} + ${ck.quantize.toLowerCase()} matmul weights`
      : ck.dtype,
    parameters,
    layers: c.numLayers,
    hiddenSize: c.hiddenSize,
    heads: `${c.numHeads} q / ${c.numKvHeads} kv`,
    headDim: c.headDim,
    vocabSize: c.vocabSize,
    context: c.maxPositionEmbeddings,
    rope: `${c.rope.type}, theta ${c.rope.theta}`,
    tiedEmbeddings: c.tieWordEmbeddings,
    partBytes,
    layerBytes: { max, total },
    streamedPerToken: layers.reduce((s, l) => s + l.perToken, 0) + head,
    experts,
    minDeviceBytes: small + slots * max + kvCacheBytes + act,
    allResidentBytes: small + total + kvCacheBytes + act,
    kvCacheBytes,
    maxSeqLen,
    planLayers: layers,
    smallBytes: small,
    headBytes: head,
  };
}

/** The planner's input for this checkpoint (as fromPretrained would make it). */
export function planInputFor(
  i: ModelInfo,
  c: ModelConfig,
  o: Pick<PlanInput, "device" | "hostAvailable" | "deviceFree" | "maxCpuMemory">,
): PlanInput {
  return {
    ...o,
    layers: i.planLayers,
    smallBytes: i.smallBytes,
    smallPerToken: i.headBytes,
    smallMapped: o.device === "cpu", // the CPU backend maps them by default
    workBytes: workBytes(c, 1, i.maxSeqLen, 1, 1),
    prefetchDepth: 2,
  };
}

/**
 * Measures the bandwidths a plan's prediction needs: memory as a decode GEMV reads it (the
 * backend's own kernel over 512 MiB), and sequential disk reads of `files` with direct I/O (the
 * way drop-behind layers stream), up to 256 MiB.
 */
export async function measureBandwidths(be: Backend, files: string[]): Promise<Bandwidths> {
  const K = 4096, N = 32768; // 512 MiB of f32 weights: well past any cache
  const w = be.alloc(N * K * 4), x = be.alloc(K * 4), y = be.alloc(N * 4);
  let memory = 0;
  try {
    be.upload(x, new Float32Array(K));
    const zeros = new Float32Array(1024 * K);
    for (let r = 0; r < N; r += 1024) be.upload(be.view(w, r * K * 4), zeros);
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      be.matmul(y, x, w, "F32", null, 1, N, K);
      be.sync();
      memory = Math.max(memory, (N * K * 4) / ((performance.now() - t) / 1000) / 1e9);
    }
  } finally {
    for (const p of [w, x, y]) be.free(p);
  }
  const chunk = 64 * 2 ** 20, budget = 256 * 2 ** 20;
  const buf = be.alloc(chunk);
  let read = 0;
  const t = performance.now();
  try {
    be.setOption("drop_behind", 1); // direct I/O: the disk, not the page cache
    for (const f of files) {
      const size = (await Deno.stat(f)).size, path = cstr(f);
      for (let off = 0; off < size && read < budget; off += chunk) {
        const n = Math.min(chunk, size - off);
        be.loadWait(be.loadStart(buf, path, off, n));
        read += n;
      }
      if (read >= budget) break;
    }
  } finally {
    be.setOption("drop_behind", 0);
    be.free(buf);
  }
  return { memory, disk: read / ((performance.now() - t) / 1000) / 1e9 };
}

/** Pinned host → device copy bandwidth, GB/s (GPU backends: rl_host_alloc + rl_upload_start). */
export function measureH2d(be: Backend): number {
  const bytes = 256 * 2 ** 20;
  const host = be.hostAlloc(bytes), dev = be.alloc(bytes);
  let best = 0;
  try {
    for (let i = 0; i < 3; i++) {
      const t = performance.now();
      be.loadWait(be.uploadStart(dev, host, bytes));
      be.sync();
      best = Math.max(best, bytes / ((performance.now() - t) / 1000) / 1e9);
    }
  } finally {
    be.free(dev);
    be.hostFree(host);
  }
  return best;
}

const TIER_TEXT: Record<string, string> = {
  resident: "resident",
  host: "pinned host tier, copied to the device each step",
  stream: "streamed each step",
};

/** `rabbit info --memory`: the plan, layer by layer, with the predicted time per token. */
export function formatPlan(
  i: ModelInfo,
  p: Plan,
  device: "cpu" | "cuda",
  bw: Bandwidths | null,
): string {
  const out: string[] = [];
  let start = 0;
  const flush = (end: number) => {
    const t = p.tiers[start];
    const n = end - start;
    const bytes = i.planLayers.slice(start, end).reduce((s, l) => s + l.bytes, 0);
    const where = t === "stream"
      ? p.dropBehind
        ? device === "cpu"
          ? "streamed from disk each step (direct I/O into a slot, never cached)"
          : "streamed from disk each step (page cache dropped behind)"
        : "streamed through the page cache"
      : t === "resident" && device === "cpu"
      ? "resident (read into memory once, kept)"
      : TIER_TEXT[t];
    out.push(
      `  layers ${start}${n > 1 ? `–${end - 1}` : ""} (${n}, ${formatBytes(bytes)}): ${where}`,
    );
  };
  for (let l = 1; l <= p.tiers.length; l++) {
    if (l === p.tiers.length || p.tiers[l] !== p.tiers[start]) {
      flush(l);
      start = l;
    }
  }
  out.push(`  embedding, final norm, head (${formatBytes(i.smallBytes)}): resident`);
  const t = p.perToken;
  out.push(
    `per decoded token: ${formatBytes(t.device)} from ${
      device === "cpu" ? "memory" : "the device"
    }${t.host ? `, ${formatBytes(t.host)} from the pinned host tier` : ""}${
      t.pageCache ? `, ${formatBytes(t.pageCache)} from the page cache` : ""
    }${t.disk ? `, ${formatBytes(t.disk)} from disk` : ""}`,
  );
  if (bw) {
    const s = predictSecondsPerToken(p, bw, device);
    out.push(
      `measured: memory ${bw.memory.toFixed(1)} GB/s, disk ${bw.disk.toFixed(2)} GB/s${
        bw.h2d ? `, host→device ${bw.h2d.toFixed(1)} GB/s` : ""
      } → predicted ${s.toFixed(3)} s/token (${(1 / s).toFixed(1)} tok/s, batch 1)`,
    );
  }
  out.push(...p.notes.map((n) => `note: ${n}`));
  return out.join("\n");
}
