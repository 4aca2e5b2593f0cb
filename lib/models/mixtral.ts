/**
 * Mixtral: Mistral's attention (window from `sliding_window`, off when null or absent) with a
 * sparse MoE in place of the MLP: softmax over `num_local_experts` router logits, the top
 * `num_experts_per_tok` renormalized to sum 1; expert = w2(silu(w1 x) · w3 x).
 *
 * @module
 */
import { optionalInt } from "../config.ts";
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
  raw: Record<string, unknown>,
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

function experts(cfg: { raw: Record<string, unknown> }): { E: number; k: number } {
  return { E: cfg.raw.num_local_experts as number, k: cfg.raw.num_experts_per_tok as number };
}

function moeBlock(ctx: LayerContext, w: PartWeights): Promise<void> {
  const { E, k } = experts(ctx.cfg);
  return sparseMoeBlock(ctx, w, {
    router: "block_sparse_moe.gate.weight",
    route: (logits) => softmaxTopK(logits, ctx.T, E, k, true),
    expert: (e) => ({
      gate: `block_sparse_moe.experts.${e}.w1.weight`,
      up: `block_sparse_moe.experts.${e}.w3.weight`,
      down: `block_sparse_moe.experts.${e}.w2.weight`,
    }),
    inter: ctx.cfg.intermediateSize,
  });
}

export const mixtral: Family = {
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
    cfg.raw = { ...raw, num_local_experts: E, num_experts_per_tok: k };
    return cfg;
  },
  place: (name, cfg) => placeExpected(name, cfg, mixtral.expected),
  expected(part, cfg) {
    const t = expectedLlamaLike(part, cfg);
    if (part.kind !== "layer") return t;
    const D = cfg.hiddenSize, I = cfg.intermediateSize, { E } = experts(cfg);
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
