/**
 * Gemma 2: embeddings scaled by √hidden, Gemma RMSNorm (x · (1 + w), fp32), a norm before and
 * after both attention and MLP, attention scaled by query_pre_attn_scalar^-½ and soft-capped
 * (attn_logit_softcapping) before the mask, GELU-tanh gated MLP, a sliding window on the
 * "sliding_attention" layers (every even layer by default), soft-capped logits, tied head.
 * Also the base of Gemma 3 (gemma3.ts).
 *
 * @module
 */
import {
  type ConfigDefaults,
  type ModelConfig,
  optionalInt,
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
  type AttentionSpec,
  attentionTensors,
  denseLayerScratch,
  gatedMlp,
  gatedMlpNames,
  type GatedMlpSpec,
  gatedMlpTensors,
  norm,
  type NormSpec,
  normTensors,
  perConfig,
  residual,
} from "./blocks.ts";
import { type DenseBuffers, expectedGlobal, placeLlamaLike } from "./llama.ts";

/** A Gemma config: the common one plus the attention constants Gemma reads from config.json. */
export interface GemmaConfig extends ModelConfig {
  /** query_pre_attn_scalar^-½. */
  attnScale: number;
  /** attn_logit_softcapping; 0 = off. */
  attnSoftcap: number;
}

/** The class defaults of a Gemma config (Gemma2Config / Gemma3TextConfig) we depend on. */
export interface GemmaDefaults extends ConfigDefaults {
  headDim: number;
  numKvHeads: number;
  finalLogitSoftcap: number | null;
  attnSoftcap: number | null;
}

/** Gemma2Config's defaults for keys a checkpoint may omit. */
export const GEMMA2_DEFAULTS: GemmaDefaults = {
  rmsNormEps: 1e-6,
  maxPositionEmbeddings: 8192,
  ropeTheta: 10000,
  hiddenAct: "gelu_pytorch_tanh",
  tieWordEmbeddings: true,
  headDim: 256,
  numKvHeads: 4,
  finalLogitSoftcap: 30,
  attnSoftcap: 50,
};

/**
 * Parses the keys Gemma 2 and Gemma 3 share. `defaultSliding(i)` says whether layer i slides when
 * config.json has no `layer_types`.
 */
export function parseGemmaLike(
  raw: Readonly<Record<string, unknown>>,
  source: string,
  d: GemmaDefaults,
  defaultSliding: (layer: number) => boolean,
): GemmaConfig {
  const fail = (key: string, what: string): never => {
    throw new ConfigError(source, key, what);
  };
  const got = (v: unknown) => `got ${JSON.stringify(v)}`;
  // Gemma's config classes default head_dim to 256 (not hidden / heads) and the KV heads to 4
  // (not num_attention_heads); null is not an integer to them.
  for (const key of ["head_dim", "num_key_value_heads"]) {
    if (raw[key] === null) fail(key, "expected a positive integer, got null");
  }
  const cfg = parseCommonConfig(raw, source, d, {
    headDim: "head_dim" in raw ? undefined : d.headDim,
    numKvHeads: "num_key_value_heads" in raw ? undefined : d.numKvHeads,
  });
  if (cfg.hiddenSize % cfg.numHeads !== 0) {
    fail(
      "num_attention_heads",
      `hidden_size ${cfg.hiddenSize} is not a multiple of num_attention_heads ${cfg.numHeads}`,
    );
  }
  // The MLP reads `hidden_activation`; a `hidden_act` beside it is ignored, as in transformers.
  const act = raw.hidden_activation ?? d.hiddenAct;
  if (typeof act !== "string" || !(act in ACTIVATIONS)) {
    fail("hidden_activation", `unsupported, ${got(act)}; supported: ${Object.keys(ACTIVATIONS)}`);
  }
  cfg.hiddenAct = act as string;
  if (raw.use_bidirectional_attention === true) {
    fail("use_bidirectional_attention", "bidirectional attention is not supported");
  }
  const scalar = raw.query_pre_attn_scalar ?? 256;
  if (typeof scalar !== "number" || !(scalar > 0)) {
    fail("query_pre_attn_scalar", `expected a positive number, ${got(scalar)}`);
  }
  const types: unknown = raw.layer_types ??
    cfg.layerWindows.map((_, i) => defaultSliding(i) ? "sliding_attention" : "full_attention");
  if (
    !Array.isArray(types) || types.length !== cfg.numLayers ||
    types.some((t) => t !== "sliding_attention" && t !== "full_attention")
  ) {
    fail(
      "layer_types",
      `expected ${cfg.numLayers} sliding_attention / full_attention, ${got(types)}`,
    );
  }
  const window = "sliding_window" in raw ? optionalInt(raw, source, "sliding_window") : 4096;
  const sliding = (types as string[]).map((t) => t === "sliding_attention");
  if (window === null && sliding.includes(true)) {
    fail("sliding_window", "is null, but layer_types has sliding_attention layers");
  }
  cfg.layerWindows = sliding.map((s) => s ? window! : 0);
  // Soft-caps: a positive number, or null (off); the class default when absent.
  const softcap = (key: string, fallback: number | null): number => {
    const v = key in raw ? raw[key] : fallback;
    if (v === null) return 0;
    return typeof v === "number" && v > 0 ? v : fail(key, `expected a positive number, ${got(v)}`);
  };
  cfg.finalLogitSoftcap = softcap("final_logit_softcapping", d.finalLogitSoftcap);
  if (!("bos_token_id" in raw)) cfg.bosTokenId = 2;
  if (!("eos_token_id" in raw)) cfg.eosTokenIds = [1];
  return {
    ...cfg,
    attnScale: (scalar as number) ** -0.5,
    attnSoftcap: softcap("attn_logit_softcapping", d.attnSoftcap),
  };
}

/** The tensors of a Gemma layer, each named once (blocks.ts). */
export interface GemmaLayerSpec {
  inputNorm: NormSpec;
  attn: AttentionSpec;
  postAttnNorm: NormSpec;
  preMlpNorm: NormSpec;
  mlp: GatedMlpSpec;
  postMlpNorm: NormSpec;
}

/**
 * A Gemma layer: (1 + w) RMSNorms around attention and MLP, q_norm / k_norm with `qkNorm`
 * (Gemma 3), biases on every projection with `attention_bias`, the query_pre_attn_scalar scale
 * and the attention soft-cap.
 */
export function gemmaLayerSpec(cfg: GemmaConfig, qkNorm: boolean): GemmaLayerSpec {
  return GEMMA_SPECS[qkNorm ? 1 : 0](cfg);
}

const GEMMA_SPECS = [
  perConfig((cfg: GemmaConfig) => buildGemmaLayerSpec(cfg, false)),
  perConfig((cfg: GemmaConfig) => buildGemmaLayerSpec(cfg, true)),
];

function buildGemmaLayerSpec(cfg: GemmaConfig, qkNorm: boolean): GemmaLayerSpec {
  const bias = cfg.attentionBias, n = (name: string): NormSpec => ({ name, kind: "rms1" });
  return {
    inputNorm: n("input_layernorm"),
    attn: {
      q: { name: "self_attn.q_proj", bias },
      k: { name: "self_attn.k_proj", bias },
      v: { name: "self_attn.v_proj", bias },
      o: { name: "self_attn.o_proj", bias },
      qkNorm: qkNorm ? { q: n("self_attn.q_norm"), k: n("self_attn.k_norm") } : undefined,
      scale: cfg.attnScale,
      softcap: cfg.attnSoftcap,
    },
    postAttnNorm: n("post_attention_layernorm"),
    preMlpNorm: n("pre_feedforward_layernorm"),
    mlp: gatedMlpNames("mlp"),
    postMlpNorm: n("post_feedforward_layernorm"),
  };
}

/** Expected tensors of a Gemma part (layer tensors from {@link gemmaLayerSpec}). */
export function expectedGemmaLike(part: Part, cfg: GemmaConfig, qkNorm: boolean): ExpectedTensor[] {
  if (part.kind !== "layer") return expectedGlobal(part, cfg);
  const s = gemmaLayerSpec(cfg, qkNorm), D = cfg.hiddenSize;
  return [
    ...normTensors(s.inputNorm, D),
    ...attentionTensors(s.attn, D, cfg.numHeads, cfg.numKvHeads, cfg.headDim),
    ...normTensors(s.postAttnNorm, D),
    ...normTensors(s.preMlpNorm, D),
    ...gatedMlpTensors(s.mlp, D, cfg.intermediateSize),
    ...normTensors(s.postMlpNorm, D),
  ];
}

/** Where a Gemma tensor goes; exactly the names {@link expectedGemmaLike} lists, else undefined. */
export function placeGemmaLike(
  name: string,
  cfg: GemmaConfig,
  qkNorm: boolean,
): Placement | undefined {
  const p = placeLlamaLike(name, cfg);
  if (!p) return undefined;
  // embed, norm, lm_head (null part when tied); no stored rotary table in Gemma checkpoints.
  if (p.part?.kind !== "layer") return p.local === "weight" ? p : undefined;
  const known = expectedGemmaLike(p.part, cfg, qkNorm).some((e) => e.local === p.local);
  return known ? p : undefined;
}

/**
 * A Gemma layer: x += post_attention_norm(attention(input_norm(x))), then
 * x += post_feedforward_norm(mlp(pre_feedforward_norm(x))).
 */
export function gemmaLayer(
  ctx: LayerContext<GemmaConfig, DenseBuffers>,
  w: PartWeights,
  qkNorm: boolean,
): void {
  const { cfg, T } = ctx, D = cfg.hiddenSize, s = gemmaLayerSpec(cfg, qkNorm), { h, o } = ctx.s;
  norm(ctx, w, s.inputNorm, h, ctx.x, T, D);
  attention(ctx, w, s.attn, h, o);
  norm(ctx, w, s.postAttnNorm, o, o, T, D);
  residual(ctx, o);
  norm(ctx, w, s.preMlpNorm, h, ctx.x, T, D);
  gatedMlp(ctx, w, s.mlp, h, o, T, cfg.intermediateSize, ctx.s);
  norm(ctx, w, s.postMlpNorm, o, o, T, D);
  residual(ctx, o);
}

/** The model-level hooks Gemma 2 and 3 share: √hidden embedding scale, (1 + w) final norm. */
export const GEMMA_HOOKS: Pick<Family<GemmaConfig>, "embedScale" | "finalNorm"> = {
  embedScale: (cfg) => Math.sqrt(cfg.hiddenSize),
  finalNorm(be, cfg, w, out, x, rows) {
    const n = w.get("weight");
    be.rmsnorm(out, x, n.ptr, n.dtype, rows, cfg.hiddenSize, cfg.rmsNormEps, 1);
  },
};

export const gemma2: Family<GemmaConfig, DenseBuffers> = {
  ...GEMMA_HOOKS,
  scratch: denseLayerScratch,
  architectures: ["Gemma2ForCausalLM"],
  parseConfig(raw, source) {
    // Gemma2Config: layer i slides when i is even.
    const cfg = parseGemmaLike(raw, source, GEMMA2_DEFAULTS, (i) => i % 2 === 0);
    // One rope for every layer: transformers fails on rope_parameters nested by layer type.
    if (Object.keys(cfg.rope.params).some((k) => k.endsWith("_attention"))) {
      throw new ConfigError(
        source,
        "rope_parameters",
        "Gemma 2 takes one rope, not one per layer type",
      );
    }
    checkRopeType(cfg.rope, source);
    return cfg;
  },
  place: (name, cfg) => placeGemmaLike(name, cfg, false),
  expected: (part, cfg) => expectedGemmaLike(part, cfg, false),
  forwardLayer: (ctx, w) => gemmaLayer(ctx, w, false),
};
