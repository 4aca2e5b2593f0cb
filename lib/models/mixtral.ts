/**
 * Mixtral: Mistral's attention (window from `sliding_window`, off when null or absent) with a
 * sparse MoE in place of the MLP: softmax over `num_local_experts` router logits, the top
 * `num_experts_per_tok` renormalized to sum 1; expert = w2(silu(w1 x) · w3 x).
 *
 * @module
 */
import { type ModelConfig, optionalInt } from "../config.ts";
import { ConfigError } from "../errors.ts";
import type { ExpectedTensor, Family, LayerContext, PartWeights } from "./family.ts";
import {
  attentionBlock,
  expectedLlamaLike,
  LLAMA_DEFAULTS,
  parseLlamaLike,
  placeExpected,
} from "./llama.ts";
import { expertGroup, softmaxTopK, sparseMoeBlock } from "./moe.ts";

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

function moeBlock(ctx: LayerContext<MixtralConfig>, w: PartWeights): Promise<void> {
  const { experts, expertsPerToken } = ctx.cfg;
  return sparseMoeBlock(ctx, w, {
    router: "block_sparse_moe.gate.weight",
    route: (logits) => softmaxTopK(logits, ctx.T, experts, expertsPerToken, true),
    expert: (e) => ({
      gate: `block_sparse_moe.experts.${e}.w1.weight`,
      up: `block_sparse_moe.experts.${e}.w3.weight`,
      down: `block_sparse_moe.experts.${e}.w2.weight`,
    }),
    inter: ctx.cfg.intermediateSize,
  });
}

export const mixtral: Family<MixtralConfig> = {
  architectures: ["MixtralForCausalLM"],
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
    const t = expectedLlamaLike(part, cfg);
    if (part.kind !== "layer") return t;
    const D = cfg.hiddenSize, I = cfg.intermediateSize, E = cfg.experts;
    const out: ExpectedTensor[] = t.filter((e) => !e.local.startsWith("mlp."));
    out.push({ local: "block_sparse_moe.gate.weight", shape: [E, D] });
    for (let e = 0; e < E; e++) {
      const p = `block_sparse_moe.experts.${e}`;
      out.push(
        { local: `${p}.w1.weight`, shape: [I, D] },
        { local: `${p}.w2.weight`, shape: [D, I] },
        { local: `${p}.w3.weight`, shape: [I, D] },
      );
    }
    return out;
  },
  lazyGroup: (local) => expertGroup(local),
  async forwardLayer(ctx, w) {
    attentionBlock(ctx, w);
    await moeBlock(ctx, w);
  },
};
