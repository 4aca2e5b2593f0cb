/**
 * Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2's attention (q/k/v biases with `qkv_bias`) and,
 * on MoE layers, `num_experts_per_tok` of `num_experts` routed experts — softmax, top k,
 * renormalized only with `norm_topk_prob` — plus a shared expert scaled by
 * sigmoid(shared_expert_gate(x)). Layer i is MoE iff i ∉ `mlp_only_layers` and
 * (i + 1) % `decoder_sparse_step` == 0; the others run a dense MLP of `intermediate_size`.
 *
 * @module
 */
import { type ModelConfig, optionalInt } from "../config.ts";
import { ConfigError } from "../errors.ts";
import type { ExpectedTensor, Family, LayerContext, Part, PartWeights } from "./family.ts";
import {
  attentionBlock,
  expectedLlamaLike,
  LLAMA_DEFAULTS,
  mlpBlock,
  parseLlamaLike,
  placeExpected,
} from "./llama.ts";
import { moeInt } from "./mixtral.ts";
import { expertGroup, mlpNames, softmaxTopK, sparseMoeBlock } from "./moe.ts";

/** The MoE shape of a Qwen-MoE config, normalized by {@link parseQwenMoe}. */
export interface QwenMoe {
  experts: number;
  topK: number;
  moeIntermediate: number;
  /** 0 when the family has no shared expert (Qwen3-MoE). */
  sharedIntermediate: number;
  normTopK: boolean;
  /** Per layer: runs the MoE block (else the dense MLP). */
  moeLayers: boolean[];
}

/** A Qwen-MoE config (Qwen2-MoE, Qwen3-MoE): the common one plus its MoE shape. */
export interface QwenMoeConfig extends ModelConfig {
  moe: QwenMoe;
  /** `moe.topK`. */
  expertsPerToken: number;
}

/** The normalized MoE shape parsed by {@link parseQwenMoe}. */
export function qwenMoe(cfg: QwenMoeConfig): QwenMoe {
  return cfg.moe;
}

/**
 * Reads the Qwen-MoE keys (the expert count: Qwen3-MoE files may say `num_local_experts`,
 * transformers' own name, or `num_experts`, the hub's) with the config class's defaults `d`, and
 * returns `cfg` with them.
 */
export function parseQwenMoe(
  raw: Readonly<Record<string, unknown>>,
  source: string,
  cfg: ModelConfig,
  d: { experts: number; topK: number; moeIntermediate: number; shared: number | null },
): QwenMoeConfig {
  const key = raw.num_experts !== undefined ? "num_experts" : "num_local_experts";
  const E = moeInt(raw, source, key, d.experts);
  const k = moeInt(raw, source, "num_experts_per_tok", d.topK);
  if (k > E) throw new ConfigError(source, "num_experts_per_tok", `${k} exceeds ${E} experts`);
  const step = moeInt(raw, source, "decoder_sparse_step", 1);
  const only = raw.mlp_only_layers ?? [];
  if (!Array.isArray(only) || !only.every((i) => Number.isInteger(i))) {
    throw new ConfigError(source, "mlp_only_layers", `expected a list of layer indices`);
  }
  const norm = raw.norm_topk_prob ?? false;
  if (typeof norm !== "boolean") {
    throw new ConfigError(source, "norm_topk_prob", `expected true or false, got ${norm}`);
  }
  const moe: QwenMoe = {
    experts: E,
    topK: k,
    moeIntermediate: moeInt(raw, source, "moe_intermediate_size", d.moeIntermediate),
    sharedIntermediate: d.shared === null
      ? 0
      : moeInt(raw, source, "shared_expert_intermediate_size", d.shared),
    normTopK: norm,
    moeLayers: Array.from(
      { length: cfg.numLayers },
      (_, i) => !only.includes(i) && (i + 1) % step === 0,
    ),
  };
  return { ...cfg, moe, expertsPerToken: k };
}

/** A layer's MLP tensors: dense, or router + experts (+ shared expert). */
export function expectedQwenMoe(part: Part, cfg: QwenMoeConfig, base: ExpectedTensor[]) {
  if (part.kind !== "layer") return base;
  const moe = qwenMoe(cfg);
  if (!moe.moeLayers[part.index]) return base;
  const D = cfg.hiddenSize, I = moe.moeIntermediate, S = moe.sharedIntermediate;
  const t = base.filter((e) => !e.local.startsWith("mlp."));
  t.push({ local: "mlp.gate.weight", shape: [moe.experts, D] });
  for (let e = 0; e < moe.experts; e++) {
    const p = `mlp.experts.${e}`;
    t.push(
      { local: `${p}.gate_proj.weight`, shape: [I, D] },
      { local: `${p}.up_proj.weight`, shape: [I, D] },
      { local: `${p}.down_proj.weight`, shape: [D, I] },
    );
  }
  if (S > 0) {
    t.push(
      { local: "mlp.shared_expert.gate_proj.weight", shape: [S, D] },
      { local: "mlp.shared_expert.up_proj.weight", shape: [S, D] },
      { local: "mlp.shared_expert.down_proj.weight", shape: [D, S] },
      { local: "mlp.shared_expert_gate.weight", shape: [1, D] },
    );
  }
  return t;
}

/** x += routed experts (+ sigmoid-gated shared expert) of post_attention_layernorm(x). */
export function qwenMoeBlock(ctx: LayerContext<QwenMoeConfig>, w: PartWeights): Promise<void> {
  const moe = qwenMoe(ctx.cfg);
  return sparseMoeBlock(ctx, w, {
    router: "mlp.gate.weight",
    route: (logits) => softmaxTopK(logits, ctx.T, moe.experts, moe.topK, moe.normTopK),
    expert: (e) => mlpNames(`mlp.experts.${e}`),
    inter: moe.moeIntermediate,
    shared: moe.sharedIntermediate > 0
      ? {
        names: mlpNames("mlp.shared_expert"),
        inter: moe.sharedIntermediate,
        gate: "mlp.shared_expert_gate.weight",
      }
      : undefined,
  });
}

export const qwen2Moe: Family<QwenMoeConfig> = {
  architectures: ["Qwen2MoeForCausalLM"],
  parseConfig(raw, source) {
    const cfg = parseLlamaLike(raw, source, { ...LLAMA_DEFAULTS, maxPositionEmbeddings: 32768 });
    const bias = raw.qkv_bias ?? true;
    if (typeof bias !== "boolean") {
      throw new ConfigError(source, "qkv_bias", `expected true or false, got ${bias}`);
    }
    cfg.attentionBias = bias;
    // Qwen2MoeConfig: a window only with use_sliding_window; layers per layer_types, else the
    // even layers below max_window_layers.
    if (raw.use_sliding_window === true) {
      const window = "sliding_window" in raw ? optionalInt(raw, source, "sliding_window") : 4096;
      const types = raw.layer_types;
      const below = optionalInt(raw, source, "max_window_layers") ?? 28;
      cfg.layerWindows.forEach((_, i) => {
        const sliding = Array.isArray(types)
          ? types[i] === "sliding_attention"
          : (i + 1) % 2 === 1 && i < below;
        cfg.layerWindows[i] = sliding ? window ?? 0 : 0;
      });
    }
    return parseQwenMoe(raw, source, cfg, {
      experts: 60,
      topK: 4,
      moeIntermediate: 1408,
      shared: 5632,
    });
  },
  place: (name, cfg) => placeExpected(name, cfg, qwen2Moe.expected),
  expected: (part, cfg) => expectedQwenMoe(part, cfg, expectedLlamaLike(part, cfg)),
  lazyGroup: (local) => expertGroup(local),
  async forwardLayer(ctx, w) {
    attentionBlock(ctx, w);
    if (qwenMoe(ctx.cfg).moeLayers[ctx.layer]) await qwenMoeBlock(ctx, w);
    else mlpBlock(ctx, w);
  },
};
