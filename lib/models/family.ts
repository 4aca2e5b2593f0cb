/**
 * What a model family file provides. One small file per family (llama.ts, mistral.ts, ...);
 * variants compose by reusing another family's pieces, not by flags in a base class. A family
 * parses config.json into its own config type `C` (ModelConfig plus its typed fields, e.g.
 * QwenMoeConfig), which every other hook then receives.
 *
 * @module
 */
import type { ModelConfig } from "../config.ts";
import type { Backend, DevPtr, WeightDType } from "../../ffi/backend.ts";
import type { RopeTable } from "../rope.ts";

/** Which split part a checkpoint tensor belongs to. */
export type Part =
  | { kind: "embed" }
  | { kind: "norm" }
  | { kind: "lm_head" }
  | { kind: "layer"; index: number };

/** Where a checkpoint tensor goes, under which local name; `null` part = known and unused. */
export interface Placement {
  part: Part | null;
  /** Name inside the part file (layer tensors drop the `model.layers.N.` prefix). */
  local: string;
  /**
   * The rows (first dimension) of the checkpoint tensor this local tensor takes, in this order:
   * a tensor the checkpoint fuses (Baichuan's `W_pack` = q | k | v, InternLM2's `wqkv`
   * interleaved by KV group) split into the ones the family computes with, or rows reordered for
   * another rope layout. Row r of a block-format tensor is its r-th row of blocks. Default: every
   * row, as stored.
   */
  rows?: readonly number[];
  /** Each taken row scaled to unit L2 norm at split time (Baichuan 2's NormHead `lm_head`). */
  unitRows?: boolean;
}

/** Rows `start .. start + count - 1`, for {@link Placement.rows}. */
export function rowRange(start: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => start + i);
}

/** A tensor a part must contain, with its shape. */
export interface ExpectedTensor {
  local: string;
  shape: number[];
  /**
   * The weight W [N, K] of an rl_matmul (or an embedding table): a quantized split may store it
   * in a block format (lib/quant.ts). Anything else stays a float tensor.
   */
  matmul?: boolean;
}

/** A weight as the engine hands it to a family's forward. */
export interface Weight {
  ptr: DevPtr;
  dtype: WeightDType;
  shape: readonly number[];
  /**
   * Where the tensor lies in its part's data (bytes), when the store knows it: tensors of one
   * part with `offset + nbytes` of one equal to the other's `offset` are back to back in memory.
   */
  offset?: number;
  /** The tensor's bytes (with {@link offset}). */
  nbytes?: number;
}

/** The tensors of one loaded part, by local name. */
export interface PartWeights {
  get(local: string): Weight;
  /** The weight, or null when the part does not carry it (optional biases). */
  opt(local: string): Weight | null;
  /**
   * Brings the given on-demand groups ({@link Family.lazyGroup}) of this part onto the device and
   * resolves when they are there; groups already loaded cost nothing. `get` of a tensor whose
   * group is not loaded throws. Several groups load concurrently on the backend's I/O thread.
   */
  load(groups: readonly string[]): Promise<void>;
  /**
   * Starts reading the given groups without waiting (a later `load` of them waits): a forward
   * that needs several groups issues them all, then computes each as it arrives.
   */
  prefetch(groups: readonly string[]): void;
}

/** Arguments of {@link LayerContext.attention}; shapes per config.ts `cacheLayout`. */
export interface AttentionCall {
  /** Rotated queries [T, qStride], numHeads heads of keyDim each. */
  q: DevPtr;
  qStride: number;
  /** Keys [T, kvStride] of the new tokens (kvStride = kvHeads · keyDim). */
  k: DevPtr;
  /** Values [T, kvStride] of the new tokens; omitted when the layout reads values from keys. */
  v?: DevPtr;
  kvStride: number;
  /** Output [T, numHeads * valueDim]. */
  out: DevPtr;
  scale: number;
  softcap?: number;
  /**
   * ALiBi (Baichuan-13B, Baichuan2-13B): one slope per query head (alibi.ts `alibiSlopes`);
   * scores gain `slope[h] · (key position − query position)` after the scale, in the cache's
   * positions. Absent: no bias.
   */
  alibiSlopes?: Float32Array;
}

/**
 * A family's scratch buffers as one typed struct: fp32 floats per token row of each buffer, by
 * name (blocks.ts declares those of the shared blocks). The engine allocates each for the step's
 * T rows before the layers run and hands them to the forward as {@link LayerContext.s}.
 */
export type ScratchSizes<S extends string> = Readonly<Record<S, number>>;

/**
 * What the engine gives a family's layer forward: the backend, the step's shape, scratch buffers
 * and the attention mechanism (KV cache append + attention per sequence, handled by the engine).
 */
export interface LayerContext<C extends ModelConfig = ModelConfig, S extends string = string> {
  be: Backend;
  cfg: C;
  /** Index of the layer being run. */
  layer: number;
  /** Tokens in this step (batch × new tokens per row). */
  T: number;
  /** Residual stream [T, hiddenSize], updated in place. */
  x: DevPtr;
  /** Absolute position of each of the T tokens. */
  positions: Int32Array;
  rope: RopeTable;
  /** The family's scratch buffers ({@link Family.scratch}), each T × its floats per row. */
  s: Readonly<Record<S, DevPtr>>;
  /**
   * The scratch buffers named q, k, v (and gate, up) are laid out back to back in that order, so
   * at T = 1 they are one row that a single matmul over weights stored back to back can fill
   * (blocks.ts). Set by the engine; absent means nothing is known about the layout.
   */
  joinedScratch?: boolean;
  /** Appends k/v of this step to the layer's cache and writes attention output. */
  attention(call: AttentionCall): void;
  /** Records a MoE layer's routing (every token's chosen experts, token-major) when tracing. */
  onRoute?(experts: Int32Array): void;
}

/**
 * One architecture family, over its config type `C`. The engine holds it as `Family` (of
 * ModelConfig) and hands each hook the config that family's own parseConfig returned.
 */
export interface Family<C extends ModelConfig = ModelConfig, S extends string = string> {
  /** `architectures[0]` values this file implements, exactly. */
  architectures: readonly string[];
  /**
   * Parses config.json (already JSON, never modified) into the family's config; `source` names
   * the file in errors.
   */
  parseConfig(raw: Readonly<Record<string, unknown>>, source: string): C;
  /** Where a checkpoint tensor goes; `undefined` when the name is unknown to the family. */
  place(name: string, cfg: C): Placement | undefined;
  /**
   * Where a fused checkpoint tensor goes (Baichuan's `W_pack`, InternLM2's `wqkv`): several
   * places, each taking its {@link Placement.rows}. Asked before {@link place}; `undefined` for a
   * tensor that is not fused. Families without fused tensors leave it out.
   */
  placeFused?(name: string, cfg: C): readonly Placement[] | undefined;
  /** Tensors a part must carry (used to validate at split and load time). */
  expected(part: Part, cfg: C): ExpectedTensor[];
  /**
   * The on-demand group of a layer tensor (a MoE expert: "expert.3"), or null for tensors every
   * step needs. A layer's group-less tensors load with the layer; a group loads only when the
   * forward asks for it ({@link PartWeights.load}), so a streamed MoE layer reads only the experts
   * its tokens route to. Default: no groups.
   */
  lazyGroup?(local: string, cfg: C): string | null;
  /** The scratch buffers its forward uses: fp32 floats per token row of each. */
  scratch(cfg: C): ScratchSizes<S>;
  /** One decoder layer, in place on ctx.x (async when it waits for on-demand groups). */
  forwardLayer(ctx: LayerContext<C, S>, w: PartWeights): void | Promise<void>;
  /**
   * true: drop the KV cache and recompute the whole sequence before this decode step, which grows
   * the cached `past` tokens to `total` (Phi-3 longrope, when `total` first passes the original
   * context: its rope factors change). Default never.
   */
  recomputeCache?(cfg: C, past: number, total: number): boolean;
  /** Multiplies the embeddings after the lookup (Gemma: √hidden); default none. */
  embedScale?(cfg: C): number;
  /** The final norm of `rows` rows of x into out; default RMSNorm (weight "weight"). */
  finalNorm?(
    be: Backend,
    cfg: C,
    w: PartWeights,
    out: DevPtr,
    x: DevPtr,
    rows: number,
  ): void;
}
