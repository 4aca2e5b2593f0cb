/**
 * What running a checkpoint costs, read from its config and safetensors headers alone: bytes per
 * part, bytes streamed per token, and the memory the engine will hold.
 *
 * @module
 */
import type { Checkpoint } from "./auto_model.ts";
import { listShards, partId } from "./checkpoint.ts";
import { SafetensorsFile } from "./safetensors.ts";

export { formatBytes } from "./progress.ts";

const BYTES: Record<string, number> = { float32: 4, float16: 2, bfloat16: 2 };

/** The summary `rabbit info` prints. */
export interface ModelInfo {
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
   * layer counts its always-needed tensors plus `num_experts_per_tok` average experts.
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
}

/** Sizes from the headers; `maxSeqLen` and `prefetchDepth` as fromPretrained would use them. */
export async function modelInfo(
  ck: Checkpoint,
  opts: { maxSeqLen?: number; prefetchDepth?: number } = {},
): Promise<ModelInfo> {
  const c = ck.config;
  const size = BYTES[ck.dtype];
  const partBytes: Record<string, number> = {};
  /** Per layer part: bytes of each on-demand group (MoE expert). */
  const groupBytes: Record<string, Map<string, number>> = {};
  let parameters = 0;
  const { files } = await listShards(ck.dir);
  for (const f of files) {
    using shard = await SafetensorsFile.open(`${ck.dir}/${f}`);
    for (const [name, t] of shard.tensors) {
      const placed = ck.family.place(name, c);
      if (!placed?.part) continue;
      const n = t.shape.reduce((a, b) => a * b, 1);
      parameters += n;
      const id = partId(placed.part);
      partBytes[id] = (partBytes[id] ?? 0) + n * size;
      const g = placed.part.kind === "layer" ? ck.family.lazyGroup?.(placed.local, c) : null;
      if (g) {
        const m = groupBytes[id] ??= new Map();
        m.set(g, (m.get(g) ?? 0) + n * size);
      }
    }
  }
  const layers = Object.entries(partBytes).filter(([id]) => id.startsWith("layer."));
  const max = Math.max(...layers.map(([, b]) => b));
  const total = layers.reduce((s, [, b]) => s + b, 0);
  const head = partBytes.lm_head ?? partBytes.embed;
  const perToken = c.raw.num_experts_per_tok;
  let streamed = total, experts: ModelInfo["experts"] = null;
  if (Object.keys(groupBytes).length > 0 && typeof perToken === "number") {
    streamed = 0;
    for (const [id, bytes] of layers) {
      const g = groupBytes[id];
      if (!g) {
        streamed += bytes;
        continue;
      }
      const all = [...g.values()].reduce((a, b) => a + b, 0);
      streamed += bytes - all + Math.min(perToken, g.size) * (all / g.size);
    }
    const perLayer = Math.max(...Object.values(groupBytes).map((g) => g.size));
    experts = { perLayer, perToken };
  }
  const small = (partBytes.embed ?? 0) + (partBytes.norm ?? 0) + (partBytes.lm_head ?? 0);
  const maxSeqLen = opts.maxSeqLen ?? Math.min(c.maxPositionEmbeddings, 4096);
  const kvCacheBytes = 2 * c.numLayers * c.numKvHeads * c.headDim * maxSeqLen * 4;
  // One decode step's activations (fp32): residual, q/k/v/attn, MLP, logits.
  const act = 4 *
    (4 * c.hiddenSize + 2 * c.numHeads * c.headDim + 3 * c.intermediateSize + c.vocabSize);
  const slots = Math.min(c.numLayers, (opts.prefetchDepth ?? 2) + 1);
  return {
    dir: ck.dir,
    architecture: c.architecture,
    dtype: ck.dtype,
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
    streamedPerToken: streamed + head,
    experts,
    minDeviceBytes: small + slots * max + kvCacheBytes + act,
    allResidentBytes: small + total + kvCacheBytes + act,
    kvCacheBytes,
    maxSeqLen,
  };
}
