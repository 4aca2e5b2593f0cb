/**
 * Llama (2, 3, 3.x): pre-norm decoder, RMSNorm, rotary attention with GQA, SiLU-gated MLP.
 * Also the base that Mistral and Qwen2 compose.
 *
 * @module
 */
import {
  type ConfigDefaults,
  type ConfigOverrides,
  type ModelConfig,
  parseCommonConfig,
} from "../config.ts";
import { ConfigError } from "../errors.ts";
import { checkRopeType } from "../rope.ts";
import type {
  ExpectedTensor,
  Family,
  LayerContext,
  Part,
  PartWeights,
  Placement,
} from "./family.ts";
import { ACTIVATIONS } from "./activations.ts";
import {
  attention,
  type AttentionBuffers,
  type AttentionSpec,
  attentionTensors,
  denseLayerScratch,
  gatedMlp,
  gatedMlpNames,
  type GatedMlpSpec,
  gatedMlpTensors,
  type LayerBuffers,
  type MlpBuffers,
  norm,
  type NormSpec,
  normTensors,
  perConfig,
  residual,
} from "./blocks.ts";

/** LlamaConfig's defaults for keys a checkpoint may omit. */
export const LLAMA_DEFAULTS: ConfigDefaults = {
  rmsNormEps: 1e-6,
  maxPositionEmbeddings: 2048,
  ropeTheta: 10000,
  hiddenAct: "silu",
  tieWordEmbeddings: false,
};

/** Parses the Llama-shaped config keys with the given defaults and validates what we run. */
export function parseLlamaLike(
  raw: Readonly<Record<string, unknown>>,
  source: string,
  defaults: ConfigDefaults,
  overrides: ConfigOverrides = {},
): ModelConfig {
  const cfg = parseCommonConfig(raw, source, defaults, overrides);
  checkRopeType(cfg.rope, source);
  if (!(cfg.hiddenAct in ACTIVATIONS)) {
    throw new ConfigError(
      source,
      "hidden_act",
      `unsupported activation "${cfg.hiddenAct}"; supported: ${
        Object.keys(ACTIVATIONS).join(", ")
      }`,
    );
  }
  if (raw.mlp_bias === true) {
    throw new ConfigError(source, "mlp_bias", "mlp_bias true is not supported yet");
  }
  return cfg;
}

const LAYER = /^model\.layers\.(\d+)\.(.+)$/;

/** Tensor names shared by the Llama-shaped families. */
export function placeLlamaLike(name: string, cfg: ModelConfig): Placement | undefined {
  if (name === "model.embed_tokens.weight") return { part: { kind: "embed" }, local: "weight" };
  if (name === "model.norm.weight") return { part: { kind: "norm" }, local: "weight" };
  if (name === "lm_head.weight") {
    // A tied head is the embedding; a checkpoint that also stores it carries a duplicate.
    return { part: cfg.tieWordEmbeddings ? null : { kind: "lm_head" }, local: "weight" };
  }
  const m = LAYER.exec(name);
  if (!m) return undefined;
  const index = Number(m[1]);
  if (index >= cfg.numLayers) return undefined;
  // Old checkpoints store the rotary table; it is recomputed from the config.
  if (m[2] === "self_attn.rotary_emb.inv_freq") return { part: null, local: m[2] };
  return { part: { kind: "layer", index }, local: m[2] };
}

/** Per config and layer: the local names `expected` lists (placement runs once per tensor). */
const expectedNames = new WeakMap<ModelConfig, Map<number, Set<string>>>();

/**
 * {@link placeLlamaLike}, with layer tensors limited to the names `expected` lists for their
 * layer (anything else is unknown, so the split names it); for families stricter than Llama.
 */
export function placeExpected<C extends ModelConfig>(
  name: string,
  cfg: C,
  expected: (part: Part, cfg: C) => ExpectedTensor[],
): Placement | undefined {
  const p = placeLlamaLike(name, cfg);
  if (p?.part?.kind !== "layer") return p;
  let byLayer = expectedNames.get(cfg);
  if (!byLayer) expectedNames.set(cfg, byLayer = new Map());
  const i = p.part.index;
  let names = byLayer.get(i);
  if (!names) byLayer.set(i, names = new Set(expected(p.part, cfg).map((e) => e.local)));
  return names.has(p.local) ? p : undefined;
}

/** The tensors of a Llama-shaped layer, each named once (blocks.ts). */
export interface LlamaLayerSpec {
  inputNorm: NormSpec;
  attn: AttentionSpec;
  postNorm: NormSpec;
  mlp: GatedMlpSpec;
}

/**
 * Llama's layer: q/k/v biases with `attention_bias`; an o_proj bias only when `oBias` (LlamaConfig
 * puts one there with attention_bias, Qwen2's qkv bias does not).
 */
export function llamaLayerSpec(cfg: ModelConfig, oBias = false): LlamaLayerSpec {
  return LLAMA_SPECS[oBias ? 1 : 0](cfg);
}

function buildLlamaLayerSpec(cfg: ModelConfig, oBias: boolean): LlamaLayerSpec {
  const bias = cfg.attentionBias;
  return {
    inputNorm: { name: "input_layernorm", kind: "rms" },
    attn: {
      q: { name: "self_attn.q_proj", bias },
      k: { name: "self_attn.k_proj", bias },
      v: { name: "self_attn.v_proj", bias },
      o: { name: "self_attn.o_proj", bias: oBias },
      scale: 1 / Math.sqrt(cfg.headDim),
    },
    postNorm: { name: "post_attention_layernorm", kind: "rms" },
    mlp: gatedMlpNames("mlp"),
  };
}

const LLAMA_SPECS = [
  perConfig((cfg: ModelConfig) => buildLlamaLayerSpec(cfg, false)),
  perConfig((cfg: ModelConfig) => buildLlamaLayerSpec(cfg, true)),
];

/** Expected tensors of the global parts shared by the Llama-shaped families. */
export function expectedGlobal(part: Exclude<Part, { kind: "layer" }>, cfg: ModelConfig) {
  const D = cfg.hiddenSize, V = cfg.vocabSize;
  switch (part.kind) {
    case "embed": // a table, and the head when tied
      return [{ local: "weight", shape: [V, D], matmul: true }];
    case "norm":
      return [{ local: "weight", shape: [D] }];
    case "lm_head":
      return [{ local: "weight", shape: [V, D], matmul: true }];
  }
}

/** The tensors of a layer of `spec` (attention over the config's heads, MLP of intermediate). */
export function llamaLayerTensors(spec: LlamaLayerSpec, cfg: ModelConfig): ExpectedTensor[] {
  return attentionLayerTensors(spec, cfg).concat(mlpLayerTensors(spec, cfg));
}

/** The input norm and attention tensors of a layer of `spec` (a MoE layer adds its own MLP). */
export function attentionLayerTensors(spec: LlamaLayerSpec, cfg: ModelConfig): ExpectedTensor[] {
  const D = cfg.hiddenSize;
  return [
    ...normTensors(spec.inputNorm, D),
    ...attentionTensors(spec.attn, D, cfg.numHeads, cfg.numKvHeads, cfg.headDim),
  ];
}

/** The post-attention norm and MLP tensors of a dense layer of `spec`. */
export function mlpLayerTensors(spec: LlamaLayerSpec, cfg: ModelConfig): ExpectedTensor[] {
  const D = cfg.hiddenSize;
  return [...normTensors(spec.postNorm, D), ...gatedMlpTensors(spec.mlp, D, cfg.intermediateSize)];
}

/** Expected tensors of a Llama-shaped part (qkv biases when cfg.attentionBias, no o_proj bias). */
export function expectedLlamaLike(part: Part, cfg: ModelConfig): ExpectedTensor[] {
  if (part.kind !== "layer") return expectedGlobal(part, cfg);
  return llamaLayerTensors(llamaLayerSpec(cfg), cfg);
}

/** Pre-norm attention: x += o_proj(attention(input_layernorm(x))). */
export function attentionBlock(
  ctx: LayerContext<ModelConfig, LayerBuffers | AttentionBuffers>,
  w: PartWeights,
  spec: LlamaLayerSpec,
): void {
  const { T, cfg } = ctx, D = cfg.hiddenSize, { h, o } = ctx.s;
  norm(ctx, w, spec.inputNorm, h, ctx.x, T, D);
  attention(ctx, w, spec.attn, h, o);
  residual(ctx, o);
}

/** Pre-norm gated MLP: x += down(act(gate(h)) · up(h)), h = post_attention_layernorm(x). */
export function mlpBlock(
  ctx: LayerContext<ModelConfig, LayerBuffers | MlpBuffers>,
  w: PartWeights,
  spec: LlamaLayerSpec,
): void {
  const { T, cfg } = ctx, D = cfg.hiddenSize, { h, o } = ctx.s;
  norm(ctx, w, spec.postNorm, h, ctx.x, T, D);
  gatedMlp(ctx, w, spec.mlp, h, o, T, cfg.intermediateSize, ctx.s);
  residual(ctx, o);
}

/** A Llama-shaped layer of `spec`: attention, then the gated MLP. */
export function llamaLayer(
  ctx: LayerContext<ModelConfig, DenseBuffers>,
  w: PartWeights,
  spec: LlamaLayerSpec,
): void {
  attentionBlock(ctx, w, spec);
  mlpBlock(ctx, w, spec);
}

/** The scratch of a Llama-shaped dense layer. */
export type DenseBuffers = LayerBuffers | AttentionBuffers | MlpBuffers;

export const llama: Family<ModelConfig, DenseBuffers> = {
  architectures: ["LlamaForCausalLM"],
  scratch: denseLayerScratch,
  parseConfig: (raw, source) => parseLlamaLike(raw, source, LLAMA_DEFAULTS),
  place: placeLlamaLike,
  expected: (part, cfg) =>
    part.kind === "layer"
      ? llamaLayerTensors(llamaLayerSpec(cfg, cfg.attentionBias), cfg)
      : expectedGlobal(part, cfg),
  forwardLayer: (ctx, w) => llamaLayer(ctx, w, llamaLayerSpec(ctx.cfg, ctx.cfg.attentionBias)),
};
