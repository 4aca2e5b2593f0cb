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
import type { Family, LayerContext, Part, PartWeights, ScratchSizes } from "./family.ts";
import { denseLayerScratch, gatedMlpNames, perConfig, plain } from "./blocks.ts";
import {
  attentionBlock,
  attentionLayerTensors,
  type DenseBuffers,
  expectedGlobal,
  LLAMA_DEFAULTS,
  type LlamaLayerSpec,
  llamaLayerSpec,
  mlpBlock,
  mlpLayerTensors,
  parseLlamaLike,
  placeExpected,
} from "./llama.ts";
import { moeInt } from "./mixtral.ts";
import {
  expertGroup,
  type MoeBuffers,
  moeScratch,
  type MoeSpec,
  moeTensors,
  softmaxTopK,
  sparseMoeBlock,
} from "./moe.ts";

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
    throw new ConfigError(
      source,
      "norm_topk_prob",
      `expected true or false, got ${JSON.stringify(norm)}`,
    );
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

/** The MoE of a Qwen-MoE layer: `mlp.experts.{e}`, a shared expert with its sigmoid gate. */
export const qwenMoeSpec = perConfig((cfg: QwenMoeConfig): MoeSpec => {
  const moe = qwenMoe(cfg);
  return {
    norm: { name: "post_attention_layernorm", kind: "rms" },
    router: plain("mlp.gate"),
    experts: moe.experts,
    expert: (e) => gatedMlpNames(`mlp.experts.${e}`),
    inter: moe.moeIntermediate,
    shared: moe.sharedIntermediate > 0
      ? {
        mlp: gatedMlpNames("mlp.shared_expert"),
        inter: moe.sharedIntermediate,
        gate: plain("mlp.shared_expert_gate"),
      }
      : undefined,
  };
});

/** Part tensors of a Qwen-MoE model whose attention layers are `spec`'s. */
export function expectedQwenMoe(part: Part, cfg: QwenMoeConfig, spec: LlamaLayerSpec) {
  if (part.kind !== "layer") return expectedGlobal(part, cfg);
  const attn = attentionLayerTensors(spec, cfg);
  if (!qwenMoe(cfg).moeLayers[part.index]) return attn.concat(mlpLayerTensors(spec, cfg));
  return attn.concat(moeTensors(qwenMoeSpec(cfg), cfg.hiddenSize));
}

/** The scratch of a Qwen-MoE model: dense layers' and MoE layers'. */
export type QwenMoeBuffers = DenseBuffers | MoeBuffers;

export function qwenMoeScratch(cfg: QwenMoeConfig): ScratchSizes<QwenMoeBuffers> {
  return { ...denseLayerScratch(cfg), ...moeScratch(qwenMoeSpec(cfg), cfg.hiddenSize) };
}

/** A Qwen-MoE layer: attention of `spec`, then the MoE (or the dense MLP below the sparse step). */
export async function qwenMoeLayer(
  ctx: LayerContext<QwenMoeConfig, QwenMoeBuffers>,
  w: PartWeights,
  spec: LlamaLayerSpec,
): Promise<void> {
  const moe = qwenMoe(ctx.cfg);
  attentionBlock(ctx, w, spec);
  if (!moe.moeLayers[ctx.layer]) return mlpBlock(ctx, w, spec);
  await sparseMoeBlock(
    ctx,
    w,
    qwenMoeSpec(ctx.cfg),
    (logits) => softmaxTopK(logits, ctx.T, moe.experts, moe.topK, moe.normTopK),
  );
}

export const qwen2Moe: Family<QwenMoeConfig, QwenMoeBuffers> = {
  architectures: ["Qwen2MoeForCausalLM"],
  scratch: qwenMoeScratch,
  parseConfig(raw, source) {
    const cfg = parseLlamaLike(raw, source, { ...LLAMA_DEFAULTS, maxPositionEmbeddings: 32768 });
    const bias = raw.qkv_bias ?? true;
    if (typeof bias !== "boolean") {
      throw new ConfigError(
        source,
        "qkv_bias",
        `expected true or false, got ${JSON.stringify(bias)}`,
      );
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
  expected: (part, cfg) => expectedQwenMoe(part, cfg, llamaLayerSpec(cfg)),
  lazyGroup: (local) => expertGroup(local),
  forwardLayer: (ctx, w) => qwenMoeLayer(ctx, w, llamaLayerSpec(ctx.cfg)),
};
