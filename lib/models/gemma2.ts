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
import type { DevPtr } from "../../ffi/backend.ts";
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
import { ACTIVATIONS, expectedLlamaLike, placeLlamaLike } from "./llama.ts";

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

/** Expected tensors of a Gemma part: Llama's, the extra norms, and o_proj's bias with the others. */
export function expectedGemmaLike(part: Part, cfg: ModelConfig, qkNorm: boolean): ExpectedTensor[] {
  const t = expectedLlamaLike(part, cfg);
  if (part.kind !== "layer") return t;
  const D = cfg.hiddenSize, hd = cfg.headDim;
  t.push(
    { local: "pre_feedforward_layernorm.weight", shape: [D] },
    { local: "post_feedforward_layernorm.weight", shape: [D] },
  );
  if (qkNorm) {
    t.push(
      { local: "self_attn.q_norm.weight", shape: [hd] },
      { local: "self_attn.k_norm.weight", shape: [hd] },
    );
  }
  if (cfg.attentionBias) t.push({ local: "self_attn.o_proj.bias", shape: [D] });
  return t;
}

/** Where a Gemma tensor goes; exactly the names {@link expectedGemmaLike} lists, else undefined. */
export function placeGemmaLike(
  name: string,
  cfg: ModelConfig,
  qkNorm: boolean,
): Placement | undefined {
  const p = placeLlamaLike(name, cfg);
  if (!p) return undefined;
  // embed, norm, lm_head (null part when tied); no stored rotary table in Gemma checkpoints.
  if (p.part?.kind !== "layer") return p.local === "weight" ? p : undefined;
  const known = expectedGemmaLike(p.part, cfg, qkNorm).some((e) => e.local === p.local);
  return known ? p : undefined;
}

/** Gemma RMSNorm, x · (1 + w) in fp32, of `rows` rows of `dim` into out (may equal x). */
function norm(
  ctx: LayerContext,
  w: PartWeights,
  name: string,
  out: DevPtr,
  x: DevPtr,
  rows: number,
  dim: number,
): void {
  const n = w.get(name);
  ctx.be.rmsnorm(out, x, n.ptr, n.dtype, rows, dim, ctx.cfg.rmsNormEps, 1);
}

/**
 * x += post_norm(o_proj(attn(rope(q), rope(k), v))) of input_norm(x); with `qkNorm` (Gemma 3)
 * q and k are Gemma-RMS-normed per head before the rope.
 */
export function gemmaAttentionBlock(
  ctx: LayerContext<GemmaConfig>,
  w: PartWeights,
  qkNorm: boolean,
): void {
  const { be, cfg, T } = ctx;
  const D = cfg.hiddenSize, hd = cfg.headDim;
  const qDim = cfg.numHeads * hd, kvDim = cfg.numKvHeads * hd;
  const h = ctx.buf("h", T * D);
  const q = ctx.buf("q", T * qDim), k = ctx.buf("k", T * kvDim), v = ctx.buf("v", T * kvDim);
  const attn = ctx.buf("attn", T * qDim), o = ctx.buf("o", T * D);
  norm(ctx, w, "input_layernorm.weight", h, ctx.x, T, D);
  const proj = (out: DevPtr, x: DevPtr, name: string, n: number, inDim: number) => {
    const wt = w.get(`self_attn.${name}.weight`);
    be.matmul(out, x, wt.ptr, wt.dtype, w.opt(`self_attn.${name}.bias`)?.ptr ?? null, T, n, inDim);
  };
  proj(q, h, "q_proj", qDim, D);
  proj(k, h, "k_proj", kvDim, D);
  proj(v, h, "v_proj", kvDim, D);
  if (qkNorm) {
    norm(ctx, w, "self_attn.q_norm.weight", q, q, T * cfg.numHeads, hd);
    norm(ctx, w, "self_attn.k_norm.weight", k, k, T * cfg.numKvHeads, hd);
  }
  const { rotDim, invFreq, mscale } = ctx.rope;
  be.rope(q, T, qDim, cfg.numHeads, hd, rotDim, ctx.positions, invFreq, mscale);
  be.rope(k, T, kvDim, cfg.numKvHeads, hd, rotDim, ctx.positions, invFreq, mscale);
  ctx.attention({
    q,
    qStride: qDim,
    k,
    v,
    kvStride: kvDim,
    out: attn,
    scale: cfg.attnScale,
    softcap: cfg.attnSoftcap,
  });
  proj(o, attn, "o_proj", D, qDim);
  norm(ctx, w, "post_attention_layernorm.weight", o, o, T, D);
  be.add(ctx.x, ctx.x, o, T * D);
}

/** x += post_norm(down(act(gate(h)) · up(h))), h = pre_norm(x). */
export function gemmaMlpBlock(ctx: LayerContext, w: PartWeights): void {
  const { be, cfg, T } = ctx;
  const D = cfg.hiddenSize, I = cfg.intermediateSize;
  const h = ctx.buf("h", T * D), o = ctx.buf("o", T * D);
  const gate = ctx.buf("gate", T * I), up = ctx.buf("up", T * I);
  norm(ctx, w, "pre_feedforward_layernorm.weight", h, ctx.x, T, D);
  const wg = w.get("mlp.gate_proj.weight"), wu = w.get("mlp.up_proj.weight");
  be.matmul(gate, h, wg.ptr, wg.dtype, null, T, I, D);
  be.matmul(up, h, wu.ptr, wu.dtype, null, T, I, D);
  be.actMul(gate, gate, up, T, I, I, ACTIVATIONS[cfg.hiddenAct]);
  const wd = w.get("mlp.down_proj.weight");
  be.matmul(o, gate, wd.ptr, wd.dtype, null, T, D, I);
  norm(ctx, w, "post_feedforward_layernorm.weight", o, o, T, D);
  be.add(ctx.x, ctx.x, o, T * D);
}

/** The model-level hooks Gemma 2 and 3 share: √hidden embedding scale, (1 + w) final norm. */
export const GEMMA_HOOKS: Pick<Family<GemmaConfig>, "embedScale" | "finalNorm"> = {
  embedScale: (cfg) => Math.sqrt(cfg.hiddenSize),
  finalNorm(be, cfg, w, out, x, rows) {
    const n = w.get("weight");
    be.rmsnorm(out, x, n.ptr, n.dtype, rows, cfg.hiddenSize, cfg.rmsNormEps, 1);
  },
};

export const gemma2: Family<GemmaConfig> = {
  ...GEMMA_HOOKS,
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
  forwardLayer(ctx, w) {
    gemmaAttentionBlock(ctx, w, false);
    gemmaMlpBlock(ctx, w);
  },
};
