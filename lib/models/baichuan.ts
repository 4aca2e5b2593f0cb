/**
 * Baichuan 1 and 2 (remote code, model_type "baichuan"): Llama's layer with the q, k and v
 * projections fused into `self_attn.W_pack` (rows q | k | v, contiguous thirds, no bias), which
 * the split takes apart ({@link Family.placeFused}); MHA, head_dim = hidden / heads; rope base
 * 10000 (the remote code reads no rope key).
 *
 * Which checkpoint is which (hub configs carry no flag; the remote code of each repository is
 * different):
 *
 * - `BaiChuanForCausalLM` (capital C): Baichuan-7B. Rotary; files carry a persistent
 *   `rotary_emb.inv_freq` per layer (ignored: recomputed).
 * - `BaichuanForCausalLM`: Baichuan-13B, Baichuan2-7B and Baichuan2-13B.
 *   - Rotary when config.json has `max_position_embeddings`: only Baichuan2-7B's configuration
 *     class knows that key (its rope table length); the 13B classes (Baichuan and Baichuan 2) know
 *     only `model_max_length`, and their remote code uses ALiBi. On every released checkpoint this
 *     agrees with vLLM's rule (hidden_size 4096 → rope) and llama.cpp's (32 layers → rope, 40 →
 *     ALiBi); unlike a shape rule it also reads a tiny test model right.
 *   - NormHead (Baichuan 2: `lm_head` stored un-normalized, used as normalize(W) per row) when
 *     `vocab_size` is 125696 (vLLM's rule: Baichuan 2's tokenizer) or config.json carries
 *     `z_loss_weight` (written by Baichuan 2's configuration classes, absent from Baichuan-13B's).
 *     The rows are normalized once at split time (Placement.unitRows), in float32, and stored in
 *     the checkpoint's dtype.
 *
 * @module
 */
import type { DevPtr } from "../../ffi/backend.ts";
import type { ModelConfig } from "../config.ts";
import { ConfigReader } from "../config.ts";
import { ConfigError } from "../errors.ts";
import { alibiSlopes } from "./alibi.ts";
import { rowRange } from "./family.ts";
import type { Family, LayerContext, PartWeights, Placement } from "./family.ts";
import { type AttentionSpec, denseLayerScratch, linear, norm, residual } from "./blocks.ts";
import {
  type DenseBuffers,
  expectedLlamaLike,
  LLAMA_DEFAULTS,
  llamaLayer,
  type LlamaLayerSpec,
  llamaLayerSpec,
  mlpBlock,
  parseLlamaLike,
  placeExpected,
} from "./llama.ts";

/** A Baichuan config: which of the three deltas from Llama this checkpoint has. */
export interface BaichuanConfig extends ModelConfig {
  /** `lm_head` rows are L2-normalized before use (Baichuan 2's NormHead). */
  normHead: boolean;
  /**
   * Per-head ALiBi slopes (the 13B models: no rope, score + slope · key position; alibi.ts), or
   * null for the rotary 7B models.
   */
  alibiSlopes: Float32Array | null;
}

/** Baichuan 2's vocabulary size: vLLM's (and our) NormHead rule. */
export const BAICHUAN2_VOCAB = 125696;

const LAYER_W_PACK = /^model\.layers\.(\d+)\.self_attn\.W_pack\.weight$/;
/** The split projections, which the original layout never carries (only W_pack). */
const SPLIT_QKV = /^model\.layers\.\d+\.self_attn\.[qkv]_proj\./;

function parseBaichuan(raw: Readonly<Record<string, unknown>>, source: string): BaichuanConfig {
  const r = ConfigReader.of(raw, source);
  // Baichuan2-7B writes both lengths (equal); the 13B models only model_max_length.
  const maxLen = r.int("max_position_embeddings", r.int("model_max_length", 4096));
  for (const key of ["rope_scaling", "rope_parameters"]) {
    if (r.has(key)) {
      throw new ConfigError(
        source,
        key,
        "Baichuan's remote code reads no rope scaling (base 10000, or ALiBi); remove the key",
      );
    }
  }
  if (r.num("rope_theta", 10000) !== 10000) {
    throw new ConfigError(
      source,
      "rope_theta",
      "Baichuan's remote code fixes the rope base at 10000",
    );
  }
  const hidden = r.int("hidden_size"), heads = r.int("num_attention_heads");
  if (hidden % heads !== 0) {
    throw new ConfigError(
      source,
      "num_attention_heads",
      `${heads} does not divide hidden_size ${hidden} (Baichuan's head_dim is hidden / heads)`,
    );
  }
  if (r.has("num_key_value_heads") && r.int("num_key_value_heads") !== heads) {
    throw new ConfigError(
      source,
      "num_key_value_heads",
      `Baichuan's W_pack holds one key and value head per query head (${heads}), got ${
        r.int("num_key_value_heads")
      }`,
    );
  }
  const cfg = parseLlamaLike(raw, source, { ...LLAMA_DEFAULTS, maxPositionEmbeddings: maxLen }, {
    headDim: hidden / heads,
    numKvHeads: "heads",
  });
  cfg.attentionBias = false; // W_pack and o_proj carry no bias
  const v2Arch = cfg.architecture === "BaichuanForCausalLM";
  const rotary = !v2Arch || r.has("max_position_embeddings");
  return {
    ...cfg,
    normHead: v2Arch && (cfg.vocabSize === BAICHUAN2_VOCAB || r.has("z_loss_weight")),
    alibiSlopes: rotary ? null : alibiSlopes(heads),
  };
}

/** W_pack → q_proj | k_proj | v_proj (each hidden rows). */
function placeWPack(name: string, cfg: BaichuanConfig): Placement[] | undefined {
  const m = LAYER_W_PACK.exec(name);
  if (!m) return undefined;
  const index = Number(m[1]);
  if (index >= cfg.numLayers) return undefined;
  const D = cfg.hiddenSize, part = { kind: "layer" as const, index };
  return ["q", "k", "v"].map((p, i) => ({
    part,
    local: `self_attn.${p}_proj.weight`,
    rows: rowRange(i * D, D),
  }));
}

const spec = (cfg: ModelConfig) => llamaLayerSpec(cfg); // no biases (attentionBias false)

/**
 * The 13B models' attention: q, k, v without rope; scores q·kᵀ / sqrt(head_dim) plus the ALiBi
 * bias of each head (the backend's relative form, alibi.ts), causal; then o_proj.
 */
function alibiAttention(
  ctx: LayerContext<BaichuanConfig, DenseBuffers>,
  w: PartWeights,
  a: AttentionSpec,
  h: DevPtr,
  out: DevPtr,
  slopes: Float32Array,
): void {
  const { cfg, T } = ctx, { q, k, v, attn } = ctx.s;
  const D = cfg.hiddenSize, dim = cfg.numHeads * cfg.headDim;
  linear(ctx, w, a.q, q, h, T, dim, D);
  linear(ctx, w, a.k, k, h, T, dim, D);
  linear(ctx, w, a.v, v, h, T, dim, D);
  ctx.attention({
    q,
    qStride: dim,
    k,
    v,
    kvStride: dim,
    out: attn,
    scale: a.scale,
    alibiSlopes: slopes,
  });
  linear(ctx, w, a.o, out, attn, T, D, dim);
}

/** Llama's pre-norm layer with {@link alibiAttention} in place of rotary attention. */
function alibiLayer(
  ctx: LayerContext<BaichuanConfig, DenseBuffers>,
  w: PartWeights,
  s: LlamaLayerSpec,
  slopes: Float32Array,
): void {
  const { T, cfg } = ctx, { h, o } = ctx.s;
  norm(ctx, w, s.inputNorm, h, ctx.x, T, cfg.hiddenSize);
  alibiAttention(ctx, w, s.attn, h, o, slopes);
  residual(ctx, o);
  mlpBlock(ctx, w, s);
}

export const baichuan: Family<BaichuanConfig, DenseBuffers> = {
  architectures: ["BaiChuanForCausalLM", "BaichuanForCausalLM"],
  scratch: denseLayerScratch,
  parseConfig: parseBaichuan,
  placeFused: placeWPack,
  place(name, cfg) {
    if (SPLIT_QKV.test(name)) return undefined; // only W_pack is the original layout
    const p = placeExpected(name, cfg, expectedLlamaLike);
    if (p && name === "lm_head.weight" && cfg.normHead && p.part) return { ...p, unitRows: true };
    return p;
  },
  expected: expectedLlamaLike,
  forwardLayer(ctx, w) {
    const slopes = ctx.cfg.alibiSlopes;
    if (slopes) alibiLayer(ctx, w, spec(ctx.cfg), slopes);
    else llamaLayer(ctx, w, spec(ctx.cfg));
  },
};
