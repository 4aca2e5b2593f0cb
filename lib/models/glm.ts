/**
 * GLM: transformers' native `GlmForCausalLM` (GLM-4-9b-hf) and `Glm4ForCausalLM` (GLM-4-0414,
 * sandwich norms), and the remote-code `ChatGLMModel` / `ChatGLMForConditionalGeneration`
 * (ChatGLM2-6B, ChatGLM3-6B, GLM-4-9B with `trust_remote_code`) loaded from their hub layout.
 *
 * All of them rotate the first half of each head (`partial_rotary_factor` 0.5; ChatGLM's
 * `RotaryEmbedding(kv_channels // 2)`) on ADJACENT pairs (x0, x1), (x2, x3), ... The engine's rope
 * rotates halves (x_i with x_{i + rot/2}); a consistent permutation of the rotary dims of q and k
 * within each head leaves q·k unchanged, so the q and k rows (weights and biases) are reordered at
 * split time (even rotary dims first, then odd; {@link halfRotaryRows}) and the layer runs the
 * usual rotate-half rope.
 *
 * ChatGLM (modeling_chatglm.py of chatglm2-6b, chatglm3-6b, glm-4-9b):
 * - `transformer.encoder.layers.N.self_attention.query_key_value` holds q | k | v rows
 *   (`multi_query_attention`: heads·kv_channels, then groups·kv_channels twice; without it the rows
 *   interleave per head: q_h | k_h | v_h), split at split time; biased with `add_qkv_bias` or
 *   `add_bias_linear`. `self_attention.dense`, `mlp.dense_h_to_4h` ([gate | up], SwiGLU) and
 *   `mlp.dense_4h_to_h` are biased with `add_bias_linear`.
 * - `rope_ratio`: chatglm3-6b-32k/128k and GLM-4 code scale the base (10000·rope_ratio);
 *   chatglm2-6b-32k's code divides the positions by it instead (linear rope). No config key tells
 *   the two codes apart; `_name_or_path` naming chatglm2 / codegeex2 selects the ChatGLM2 reading.
 * - `rmsnorm: false` runs LayerNorms (with bias); `apply_residual_connection_post_layernorm` adds
 *   each block's output to its normed input instead of its input. `post_layer_norm: false`,
 *   `quantization_bit` (the remote int4/int8 format), `pre_seq_len` (P-tuning prefixes) and
 *   ChatGLM-6B v1 configs are ConfigErrors naming the key.
 * - `apply_query_key_layer_scaling` divides the scores by the layer number and multiplies them
 *   back before the softmax (exact in fp32): ignored.
 *
 * @module
 */
import {
  architectureOf,
  type ConfigDefaults,
  ConfigReader,
  MAX_LAYERS,
  type ModelConfig,
  parseCommonConfig,
  type RopeConfig,
} from "../config.ts";
import { ConfigError } from "../errors.ts";
import { checkRopeType } from "../rope.ts";
import {
  type ExpectedTensor,
  type Family,
  type LayerContext,
  type Part,
  type PartWeights,
  type Placement,
  rowRange,
} from "./family.ts";
import {
  attention,
  denseLayerScratch,
  gatedMlp,
  type LinearSpec,
  norm,
  type NormSpec,
  normTensors,
  perConfig,
  residual,
} from "./blocks.ts";
import {
  type DenseBuffers,
  expectedGlobal,
  LLAMA_DEFAULTS,
  llamaLayer,
  type LlamaLayerSpec,
  llamaLayerSpec,
  llamaLayerTensors,
  parseLlamaLike,
  placeExpected,
} from "./llama.ts";

// ------------------------------------------------------------------------------------------------
// Adjacent-pair rope as rotate-half rope

/**
 * The rows of a [heads · headDim] q or k tensor (from `start`) reordered so that rotate-half rope
 * on them equals adjacent-pair rope on the stored rows: within each head, its first `rot` rows go
 * even ones first (0, 2, 4, ...), then odd ones (1, 3, 5, ...); the rest keep their place.
 */
export function halfRotaryRows(
  start: number,
  heads: number,
  headDim: number,
  rot: number,
): number[] {
  const rows: number[] = [];
  for (let h = 0; h < heads; h++) {
    const base = start + h * headDim;
    for (let i = 0; i < rot; i += 2) rows.push(base + i);
    for (let i = 1; i < rot; i += 2) rows.push(base + i);
    for (let i = rot; i < headDim; i++) rows.push(base + i);
  }
  return rows;
}

/** Rotated dims of each head; an odd count has no adjacent pairs (ConfigError naming `key`). */
function rotaryDims(cfg: ModelConfig, source: string, key: string): number {
  const rot = Math.trunc(cfg.headDim * cfg.rope.partialRotaryFactor);
  if (rot % 2 !== 0 || rot <= 0 || rot > cfg.headDim) {
    throw new ConfigError(
      source,
      key,
      `head_dim ${cfg.headDim} × partial_rotary_factor ${cfg.rope.partialRotaryFactor} gives ${rot} ` +
        "rotary dims; GLM's rope needs a positive even number of them (adjacent pairs)",
    );
  }
  return rot;
}

const LAYER = /^model\.layers\.(\d+)\.(.+)$/;

// ------------------------------------------------------------------------------------------------
// Native GlmForCausalLM / Glm4ForCausalLM

/** GlmConfig / Glm4Config's defaults (transformers 5.23) for keys a checkpoint may omit. */
export const GLM_DEFAULTS: ConfigDefaults = {
  ...LLAMA_DEFAULTS,
  rmsNormEps: 1.5625e-7,
  maxPositionEmbeddings: 131072,
  ropeTheta: 10000,
};

/** GlmConfig's eos_token_id when config.json has none. */
const GLM_EOS = [151329, 151336, 151338];

/** Parses a GlmConfig / Glm4Config (head_dim 128 and 2 KV heads when absent, biased q/k/v). */
export function parseGlm(raw: Readonly<Record<string, unknown>>, source: string): ModelConfig {
  for (const key of ["head_dim", "num_key_value_heads"]) {
    if (raw[key] === null) {
      throw new ConfigError(source, key, "expected a positive integer, got null");
    }
  }
  const cfg = parseLlamaLike(raw, source, GLM_DEFAULTS, {
    headDim: "head_dim" in raw ? undefined : 128,
    numKvHeads: "num_key_value_heads" in raw ? undefined : 2,
  });
  // GlmConfig: partial_rotary_factor 0.5 unless the rope dict or the config sets one.
  const rope = (raw.rope_parameters ?? raw.rope_scaling ?? {}) as Record<string, unknown>;
  if (rope.partial_rotary_factor == null && raw.partial_rotary_factor == null) {
    cfg.rope = { ...cfg.rope, partialRotaryFactor: 0.5 };
    cfg.layerRopes.fill(cfg.rope);
  }
  rotaryDims(cfg, source, "partial_rotary_factor");
  cfg.attentionBias = ConfigReader.of(raw, source).bool("attention_bias", true);
  if (!("eos_token_id" in raw)) cfg.eosTokenIds = [...GLM_EOS];
  return cfg;
}

/** A GLM layer: Llama's (q/k/v biases with attention_bias, none on o_proj), sandwich norms for GLM-4. */
interface GlmLayerSpec extends LlamaLayerSpec {
  post?: { attn: NormSpec; mlp: NormSpec };
}

const glmSpec = perConfig((cfg: ModelConfig): GlmLayerSpec => llamaLayerSpec(cfg));
const glm4Spec = perConfig((cfg: ModelConfig): GlmLayerSpec => ({
  ...llamaLayerSpec(cfg),
  post: {
    attn: { name: "post_self_attn_layernorm", kind: "rms" },
    mlp: { name: "post_mlp_layernorm", kind: "rms" },
  },
}));

function expectedGlmLike(part: Part, cfg: ModelConfig, s: GlmLayerSpec): ExpectedTensor[] {
  if (part.kind !== "layer") return expectedGlobal(part, cfg);
  const D = cfg.hiddenSize;
  return [
    ...llamaLayerTensors(s, cfg),
    ...(s.post ? [...normTensors(s.post.attn, D), ...normTensors(s.post.mlp, D)] : []),
  ];
}

/** `mlp.gate_up_proj` ([gate | up] rows) split into the spec's gate and up weights. */
function placeGlmFused(name: string, cfg: ModelConfig, s: GlmLayerSpec): Placement[] | undefined {
  const m = LAYER.exec(name);
  if (!m || m[2] !== "mlp.gate_up_proj.weight") return undefined;
  const index = Number(m[1]);
  if (index >= cfg.numLayers) return undefined;
  const part: Part = { kind: "layer", index }, I = cfg.intermediateSize;
  return [
    { part, local: `${s.mlp.gate.name}.weight`, rows: rowRange(0, I) },
    { part, local: `${s.mlp.up.name}.weight`, rows: rowRange(I, I) },
  ];
}

/** The expected names, with q/k rows reordered for rotate-half rope; gate/up come fused only. */
function placeGlm(
  name: string,
  cfg: ModelConfig,
  s: GlmLayerSpec,
  expected: (part: Part, cfg: ModelConfig) => ExpectedTensor[],
): Placement | undefined {
  const p = placeExpected(name, cfg, expected);
  if (p?.part?.kind !== "layer") return p;
  const tensor = p.local.slice(0, p.local.lastIndexOf("."));
  if (tensor === s.mlp.gate.name || tensor === s.mlp.up.name) return undefined;
  const rot = Math.trunc(cfg.headDim * cfg.rope.partialRotaryFactor);
  if (tensor === s.attn.q.name) {
    return { ...p, rows: halfRotaryRows(0, cfg.numHeads, cfg.headDim, rot) };
  }
  if (tensor === s.attn.k.name) {
    return { ...p, rows: halfRotaryRows(0, cfg.numKvHeads, cfg.headDim, rot) };
  }
  return p;
}

/** Glm4DecoderLayer: x += post_self_attn_norm(attn(norm(x))); x += post_mlp_norm(mlp(norm(x))). */
function glm4Layer(ctx: LayerContext<ModelConfig, DenseBuffers>, w: PartWeights): void {
  const { cfg, T } = ctx, D = cfg.hiddenSize, s = glm4Spec(cfg), { h, o } = ctx.s;
  norm(ctx, w, s.inputNorm, h, ctx.x, T, D);
  attention(ctx, w, s.attn, h, o);
  norm(ctx, w, s.post!.attn, o, o, T, D);
  residual(ctx, o);
  norm(ctx, w, s.postNorm, h, ctx.x, T, D);
  gatedMlp(ctx, w, s.mlp, h, o, T, cfg.intermediateSize, ctx.s);
  norm(ctx, w, s.post!.mlp, o, o, T, D);
  residual(ctx, o);
}

export const glm: Family<ModelConfig, DenseBuffers> = {
  architectures: ["GlmForCausalLM"],
  scratch: denseLayerScratch,
  parseConfig: parseGlm,
  placeFused: (name, cfg) => placeGlmFused(name, cfg, glmSpec(cfg)),
  place: (name, cfg) => placeGlm(name, cfg, glmSpec(cfg), glm.expected),
  expected: (part, cfg) => expectedGlmLike(part, cfg, glmSpec(cfg)),
  forwardLayer: (ctx, w) => llamaLayer(ctx, w, glmSpec(ctx.cfg)),
};

export const glm4: Family<ModelConfig, DenseBuffers> = {
  architectures: ["Glm4ForCausalLM"],
  scratch: denseLayerScratch,
  parseConfig: parseGlm,
  placeFused: (name, cfg) => placeGlmFused(name, cfg, glm4Spec(cfg)),
  place: (name, cfg) => placeGlm(name, cfg, glm4Spec(cfg), glm4.expected),
  expected: (part, cfg) => expectedGlmLike(part, cfg, glm4Spec(cfg)),
  forwardLayer: glm4Layer,
};

// ------------------------------------------------------------------------------------------------
// Remote-code ChatGLM2 / ChatGLM3 / GLM-4 (model_type "chatglm")

/** A ChatGLM config: the common one plus the remote code's layer switches. */
export interface ChatGlmConfig extends ModelConfig {
  chatglm: {
    /** `multi_query_attention`: q | k | v blocks; else q_h | k_h | v_h per head. */
    multiQuery: boolean;
    /** Biases on query_key_value (`add_qkv_bias` or `add_bias_linear`). */
    qkvBias: boolean;
    /** Biases on dense, dense_h_to_4h, dense_4h_to_h (`add_bias_linear`). */
    linearBias: boolean;
    /** `rmsnorm`: RMSNorm; false: LayerNorm with bias. */
    rmsNorm: boolean;
    /** `apply_residual_connection_post_layernorm`: residuals from the normed inputs. */
    residualFromNorm: boolean;
  };
}

/** ChatGLMConfig's defaults (configuration_chatglm.py of chatglm3-6b / glm-4-9b). */
const CHATGLM = {
  numLayers: 28,
  vocab: 65024,
  hidden: 4096,
  ffn: 13696,
  kvChannels: 128,
  heads: 32,
  seqLength: 2048,
  eps: 1e-5,
  base: 10000,
};

/** `_name_or_path` of the checkpoints whose code divides positions by rope_ratio. */
const CHATGLM2_NAME = /chatglm2|codegeex2/i;

/** Parses a remote-code ChatGLM config.json (ChatGLM2/3, GLM-4) into the engine's config. */
export function parseChatGlm(
  raw: Readonly<Record<string, unknown>>,
  source: string,
): ChatGlmConfig {
  const r = ConfigReader.of(raw, source);
  const architecture = architectureOf(raw, source);
  for (const key of ["position_encoding_2d", "inner_hidden_size"]) {
    if (key in raw) {
      r.fail(
        key,
        "ChatGLM-6B (v1: 2D positions, GELU MLP) is not supported; ChatGLM2/3 and GLM-4 are",
      );
    }
  }
  const hidden = r.int("hidden_size", CHATGLM.hidden);
  const heads = r.int("num_attention_heads", CHATGLM.heads);
  const numLayers = r.int("num_layers", CHATGLM.numLayers);
  if (numLayers > MAX_LAYERS) r.fail("num_layers", `${numLayers} is more than ${MAX_LAYERS}`);
  const multiQuery = r.bool("multi_query_attention", false);
  const groups = multiQuery ? r.int("multi_query_group_num", 1) : heads;
  if (heads % groups !== 0) {
    r.fail("multi_query_group_num", `${groups} does not divide num_attention_heads ${heads}`);
  }
  let headDim: number;
  if (raw.kv_channels === null) {
    if (hidden % heads !== 0) {
      r.fail("kv_channels", `null, and hidden_size ${hidden} is not a multiple of ${heads} heads`);
    }
    headDim = hidden / heads;
  } else headDim = r.int("kv_channels", CHATGLM.kvChannels);
  if (headDim % 4 !== 0) {
    r.fail(
      "kv_channels",
      `${headDim}: rope rotates kv_channels / 2 dims in pairs (need a multiple of 4)`,
    );
  }
  const eps = r.num("layernorm_epsilon", CHATGLM.eps);
  if (!(eps > 0)) r.fail("layernorm_epsilon", `expected a positive number, got ${eps}`);
  if (!r.bool("post_layer_norm", true)) {
    r.fail("post_layer_norm", "false (no final_layernorm) is not supported");
  }
  const qbits = raw.quantization_bit;
  if (qbits !== undefined && qbits !== null && qbits !== 0) {
    r.fail(
      "quantization_bit",
      `${
        JSON.stringify(qbits)
      }: the remote code's own quantized weights are not supported (use the float checkpoint)`,
    );
  }
  if (raw.pre_seq_len !== undefined && raw.pre_seq_len !== null) {
    r.fail("pre_seq_len", "P-tuning prefixes (prefix_encoder) are not supported");
  }
  const ratio = r.num("rope_ratio", 1);
  if (!(ratio > 0)) r.fail("rope_ratio", `expected a positive number, got ${ratio}`);
  const name = typeof raw._name_or_path === "string" ? raw._name_or_path : "";
  const rope: RopeConfig = ratio !== 1 && CHATGLM2_NAME.test(name)
    ? { type: "linear", theta: CHATGLM.base, partialRotaryFactor: 0.5, params: { factor: ratio } }
    : { type: "default", theta: CHATGLM.base * ratio, partialRotaryFactor: 0.5, params: {} };
  // The shared keys under their common names (each validated above under its own name).
  const common: Record<string, unknown> = {
    architectures: [architecture],
    model_type: r.model,
    hidden_size: hidden,
    intermediate_size: r.int("ffn_hidden_size", CHATGLM.ffn),
    num_hidden_layers: numLayers,
    num_attention_heads: heads,
    num_key_value_heads: groups,
    head_dim: headDim,
    vocab_size: r.int("padded_vocab_size", CHATGLM.vocab),
    max_position_embeddings: r.int("seq_length", CHATGLM.seqLength),
    rms_norm_eps: eps,
    tie_word_embeddings: false, // output_layer is always its own tensor
  };
  for (const key of ["dtype", "torch_dtype", "bos_token_id", "eos_token_id"]) {
    if (key in raw) common[key] = raw[key];
  }
  const cfg = parseCommonConfig(common, source, LLAMA_DEFAULTS);
  cfg.rope = rope;
  cfg.layerRopes.fill(rope);
  checkRopeType(rope, source, "rope_ratio");
  const linearBias = r.bool("add_bias_linear", false);
  const qkvBias = r.bool("add_qkv_bias", false) || linearBias;
  cfg.attentionBias = qkvBias;
  return {
    ...cfg,
    raw,
    chatglm: {
      multiQuery,
      qkvBias,
      linearBias,
      rmsNorm: r.bool("rmsnorm", true),
      residualFromNorm: r.bool("apply_residual_connection_post_layernorm", false),
    },
  };
}

/** The ChatGLM layer, named after the checkpoint (q/k/v and gate/up split from the fused ones). */
const chatGlmSpec = perConfig((cfg: ChatGlmConfig): LlamaLayerSpec => {
  const { qkvBias, linearBias, rmsNorm } = cfg.chatglm;
  const kind = rmsNorm ? "rms" : "layer";
  const lin = (name: string, bias: boolean): LinearSpec => ({ name, bias });
  return {
    inputNorm: { name: "input_layernorm", kind },
    attn: {
      q: lin("self_attention.query", qkvBias),
      k: lin("self_attention.key", qkvBias),
      v: lin("self_attention.value", qkvBias),
      o: lin("self_attention.dense", linearBias),
      scale: 1 / Math.sqrt(cfg.headDim),
    },
    postNorm: { name: "post_attention_layernorm", kind },
    mlp: {
      gate: lin("mlp.gate", linearBias),
      up: lin("mlp.up", linearBias),
      down: lin("mlp.dense_4h_to_h", linearBias),
    },
  };
});

const CHATGLM_LAYER = /^transformer\.encoder\.layers\.(\d+)\.(.+)$/;

/** Layer index and the name inside the layer, or null (also for layers past num_layers). */
function chatGlmLayer(name: string, cfg: ModelConfig): { part: Part; rest: string } | null {
  const m = CHATGLM_LAYER.exec(name);
  if (!m) return null;
  const index = Number(m[1]);
  return index < cfg.numLayers ? { part: { kind: "layer", index }, rest: m[2] } : null;
}

/** query_key_value → q, k, v (rows reordered for rotate-half rope); dense_h_to_4h → gate, up. */
function placeChatGlmFused(name: string, cfg: ChatGlmConfig): Placement[] | undefined {
  const l = chatGlmLayer(name, cfg);
  if (!l) return undefined;
  const s = chatGlmSpec(cfg), { part } = l;
  const dot = l.rest.lastIndexOf("."), tensor = l.rest.slice(0, dot), kind = l.rest.slice(dot);
  if (kind !== ".weight" && kind !== ".bias") return undefined;
  if (tensor === "mlp.dense_h_to_4h") {
    const I = cfg.intermediateSize;
    return [
      { part, local: s.mlp.gate.name + kind, rows: rowRange(0, I) },
      { part, local: s.mlp.up.name + kind, rows: rowRange(I, I) },
    ];
  }
  if (tensor !== "self_attention.query_key_value") return undefined;
  const H = cfg.numHeads, G = cfg.numKvHeads, hd = cfg.headDim, rot = hd / 2;
  let q: number[], k: number[], v: number[];
  if (cfg.chatglm.multiQuery) {
    q = halfRotaryRows(0, H, hd, rot);
    k = halfRotaryRows(H * hd, G, hd, rot);
    v = rowRange((H + G) * hd, G * hd);
  } else { // [q_h | k_h | v_h] per head
    q = [], k = [], v = [];
    for (let h = 0; h < H; h++) {
      const base = 3 * hd * h;
      q.push(...halfRotaryRows(base, 1, hd, rot));
      k.push(...halfRotaryRows(base + hd, 1, hd, rot));
      v.push(...rowRange(base + 2 * hd, hd));
    }
  }
  return [
    { part, local: s.attn.q.name + kind, rows: q },
    { part, local: s.attn.k.name + kind, rows: k },
    { part, local: s.attn.v.name + kind, rows: v },
  ];
}

/** Names that could come from fusion only (a checkpoint never stores them as they are). */
const SPLIT_ONLY = /^(self_attention\.(query|key|value)|mlp\.(gate|up))\./;

function placeChatGlm(name: string, cfg: ChatGlmConfig): Placement | undefined {
  switch (name) {
    case "transformer.embedding.word_embeddings.weight":
      return { part: { kind: "embed" }, local: "weight" };
    case "transformer.encoder.final_layernorm.weight":
      return { part: { kind: "norm" }, local: "weight" };
    case "transformer.encoder.final_layernorm.bias":
      return cfg.chatglm.rmsNorm ? undefined : { part: { kind: "norm" }, local: "bias" };
    case "transformer.output_layer.weight":
      return { part: { kind: "lm_head" }, local: "weight" };
    case "transformer.rotary_pos_emb.inv_freq": // a persistent buffer, recomputed from the config
      return { part: null, local: "inv_freq" };
  }
  const l = chatGlmLayer(name, cfg);
  if (!l || SPLIT_ONLY.test(l.rest)) return undefined;
  const known = chatGlm.expected(l.part, cfg).some((e) => e.local === l.rest);
  return known ? { part: l.part, local: l.rest } : undefined;
}

/** GLMBlock with apply_residual_connection_post_layernorm: residuals from the normed inputs. */
function chatGlmBlock(ctx: LayerContext<ChatGlmConfig, DenseBuffers>, w: PartWeights): void {
  const { be, cfg, T } = ctx, D = cfg.hiddenSize, s = chatGlmSpec(cfg), { h, o } = ctx.s;
  if (!cfg.chatglm.residualFromNorm) return llamaLayer(ctx, w, s);
  norm(ctx, w, s.inputNorm, h, ctx.x, T, D);
  attention(ctx, w, s.attn, h, o);
  be.add(ctx.x, h, o, T * D);
  norm(ctx, w, s.postNorm, h, ctx.x, T, D);
  gatedMlp(ctx, w, s.mlp, h, o, T, cfg.intermediateSize, ctx.s);
  be.add(ctx.x, h, o, T * D);
}

export const chatGlm: Family<ChatGlmConfig, DenseBuffers> = {
  architectures: ["ChatGLMModel", "ChatGLMForConditionalGeneration"],
  scratch: denseLayerScratch,
  parseConfig: parseChatGlm,
  placeFused: placeChatGlmFused,
  place: placeChatGlm,
  expected(part, cfg) {
    if (part.kind === "norm") {
      return normTensors({ name: "", kind: cfg.chatglm.rmsNorm ? "rms" : "layer" }, cfg.hiddenSize)
        .map((t) => ({ ...t, local: t.local.slice(1) }));
    }
    if (part.kind !== "layer") return expectedGlobal(part, cfg);
    return llamaLayerTensors(chatGlmSpec(cfg), cfg);
  },
  forwardLayer: chatGlmBlock,
  finalNorm(be, cfg, w, out, x, rows) {
    const wt = w.get("weight"), D = cfg.hiddenSize, eps = cfg.rmsNormEps;
    if (cfg.chatglm.rmsNorm) be.rmsnorm(out, x, wt.ptr, wt.dtype, rows, D, eps, 0);
    else be.layernorm(out, x, wt.ptr, w.get("bias").ptr, wt.dtype, rows, D, eps);
  },
};
