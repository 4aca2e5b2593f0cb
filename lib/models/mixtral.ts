/**
 * Mixtral: Mistral's attention (window from `sliding_window`, off when null or absent) with a
 * sparse MoE in place of the MLP: softmax over `num_local_experts` router logits, the top
 * `num_experts_per_tok` renormalized to sum 1; expert = w2(silu(w1 x) · w3 x).
 *
 * @module
 */
import { type ModelConfig, optionalInt } from "../config.ts";
import { ConfigError } from "../errors.ts";
import type { Family } from "./family.ts";
import { denseLayerScratch, perConfig, plain } from "./blocks.ts";
import {
  attentionBlock,
  attentionLayerTensors,
  type DenseBuffers,
  expectedGlobal,
  LLAMA_DEFAULTS,
  llamaLayerSpec,
  parseLlamaLike,
  placeExpected,
} from "./llama.ts";
import {
  expertGroup,
  type MoeBuffers,
  moeScratch,
  type MoeSpec,
  moeTensors,
  softmaxTopK,
  sparseMoeBlock,
} from "./moe.ts";

/** A positive integer config key (MoE sizes), with a fallback when absent. */
export function moeInt(
  raw: Readonly<Record<string, unknown>>,
  source: string,
  key: string,
  fallback?: number,
): number {
  const v = raw[key] ?? fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    throw new ConfigError(source, key, `expected a positive integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** A Mixtral config: the common one plus its expert counts (MixtralConfig's when absent). */
export interface MixtralConfig extends ModelConfig {
  /** `num_local_experts`. */
  experts: number;
  /** `num_experts_per_tok`. */
  expertsPerToken: number;
}

/** Mixtral's MoE: `block_sparse_moe` with experts w1 (gate), w3 (up), w2 (down). */
const moeSpec = perConfig((cfg: MixtralConfig): MoeSpec => {
  return {
    norm: { name: "post_attention_layernorm", kind: "rms" },
    router: plain("block_sparse_moe.gate"),
    experts: cfg.experts,
    expert: (e) => ({
      gate: plain(`block_sparse_moe.experts.${e}.w1`),
      up: plain(`block_sparse_moe.experts.${e}.w3`),
      down: plain(`block_sparse_moe.experts.${e}.w2`),
    }),
    inter: cfg.intermediateSize,
  };
});

export const mixtral: Family<MixtralConfig, DenseBuffers | MoeBuffers> = {
  architectures: ["MixtralForCausalLM"],
  scratch: (cfg) => ({ ...denseLayerScratch(cfg), ...moeScratch(moeSpec(cfg), cfg.hiddenSize) }),
  parseConfig(raw, source) {
    const cfg = parseLlamaLike(raw, source, {
      ...LLAMA_DEFAULTS,
      maxPositionEmbeddings: 4096 * 32,
      ropeTheta: 1e6,
    });
    cfg.layerWindows.fill(optionalInt(raw, source, "sliding_window") ?? 0);
    const E = moeInt(raw, source, "num_local_experts", 8);
    const k = moeInt(raw, source, "num_experts_per_tok", 2);
    if (k > E) {
      throw new ConfigError(source, "num_experts_per_tok", `${k} exceeds num_local_experts ${E}`);
    }
    return { ...cfg, experts: E, expertsPerToken: k };
  },
  place: (name, cfg) => placeExpected(name, cfg, mixtral.expected),
  expected(part, cfg) {
    if (part.kind !== "layer") return expectedGlobal(part, cfg);
    return attentionLayerTensors(llamaLayerSpec(cfg), cfg).concat(
      moeTensors(moeSpec(cfg), cfg.hiddenSize),
    );
  },
  lazyGroup: (local) => expertGroup(local),
  async forwardLayer(ctx, w) {
    const { experts, expertsPerToken } = ctx.cfg;
    attentionBlock(ctx, w, llamaLayerSpec(ctx.cfg));
    await sparseMoeBlock(
      ctx,
      w,
      moeSpec(ctx.cfg),
      (logits) => softmaxTopK(logits, ctx.T, experts, expertsPerToken, true),
    );
  },
};
