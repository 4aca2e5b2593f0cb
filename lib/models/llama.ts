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
import type { Activation } from "../../ffi/backend.ts";
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

/** LlamaConfig's defaults for keys a checkpoint may omit. */
export const LLAMA_DEFAULTS: ConfigDefaults = {
  rmsNormEps: 1e-6,
  maxPositionEmbeddings: 2048,
  ropeTheta: 10000,
  hiddenAct: "silu",
  tieWordEmbeddings: false,
};

/** `hidden_act` names (transformers' ACT2FN) → the backend's activation; every family uses it. */
export const ACTIVATIONS: Readonly<Record<string, Activation>> = {
  silu: "silu",
  swish: "silu",
  gelu_pytorch_tanh: "gelu_tanh",
  gelu_new: "gelu_tanh",
  gelu: "gelu",
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

/** Expected tensors of a Llama-shaped part (qkv biases when cfg.attentionBias). */
export function expectedLlamaLike(part: Part, cfg: ModelConfig): ExpectedTensor[] {
  const D = cfg.hiddenSize, I = cfg.intermediateSize, V = cfg.vocabSize;
  const qDim = cfg.numHeads * cfg.headDim, kvDim = cfg.numKvHeads * cfg.headDim;
  switch (part.kind) {
    case "embed":
      return [{ local: "weight", shape: [V, D] }];
    case "norm":
      return [{ local: "weight", shape: [D] }];
    case "lm_head":
      return [{ local: "weight", shape: [V, D] }];
    case "layer": {
      const t: ExpectedTensor[] = [
        { local: "input_layernorm.weight", shape: [D] },
        { local: "self_attn.q_proj.weight", shape: [qDim, D] },
        { local: "self_attn.k_proj.weight", shape: [kvDim, D] },
        { local: "self_attn.v_proj.weight", shape: [kvDim, D] },
        { local: "self_attn.o_proj.weight", shape: [D, qDim] },
        { local: "post_attention_layernorm.weight", shape: [D] },
        { local: "mlp.gate_proj.weight", shape: [I, D] },
        { local: "mlp.up_proj.weight", shape: [I, D] },
        { local: "mlp.down_proj.weight", shape: [D, I] },
      ];
      if (cfg.attentionBias) {
        t.push(
          { local: "self_attn.q_proj.bias", shape: [qDim] },
          { local: "self_attn.k_proj.bias", shape: [kvDim] },
          { local: "self_attn.v_proj.bias", shape: [kvDim] },
        );
      }
      return t;
    }
  }
}

/** Pre-norm attention block: x += o_proj(attn(rope(q), rope(k), v)). */
export function attentionBlock(ctx: LayerContext, w: PartWeights): void {
  const { be, cfg, T } = ctx;
  const D = cfg.hiddenSize, hd = cfg.headDim;
  const qDim = cfg.numHeads * hd, kvDim = cfg.numKvHeads * hd;
  const h = ctx.buf("h", T * D);
  const q = ctx.buf("q", T * qDim), k = ctx.buf("k", T * kvDim), v = ctx.buf("v", T * kvDim);
  const attn = ctx.buf("attn", T * qDim), o = ctx.buf("o", T * D);
  const norm = w.get("input_layernorm.weight");
  be.rmsnorm(h, ctx.x, norm.ptr, norm.dtype, T, D, cfg.rmsNormEps);
  const proj = (out: typeof q, name: string, n: number) => {
    const wt = w.get(`self_attn.${name}.weight`);
    be.matmul(out, h, wt.ptr, wt.dtype, w.opt(`self_attn.${name}.bias`)?.ptr ?? null, T, n, D);
  };
  proj(q, "q_proj", qDim);
  proj(k, "k_proj", kvDim);
  proj(v, "v_proj", kvDim);
  const { rotDim, invFreq, mscale } = ctx.rope;
  be.rope(q, T, qDim, cfg.numHeads, hd, rotDim, ctx.positions, invFreq, mscale);
  be.rope(k, T, kvDim, cfg.numKvHeads, hd, rotDim, ctx.positions, invFreq, mscale);
  ctx.attention({ q, qStride: qDim, k, v, kvStride: kvDim, out: attn, scale: 1 / Math.sqrt(hd) });
  const wo = w.get("self_attn.o_proj.weight");
  be.matmul(o, attn, wo.ptr, wo.dtype, w.opt("self_attn.o_proj.bias")?.ptr ?? null, T, D, qDim);
  be.add(ctx.x, ctx.x, o, T * D);
}

/** Pre-norm gated MLP block: x += down(act(gate(h)) * up(h)). */
export function mlpBlock(ctx: LayerContext, w: PartWeights): void {
  const { be, cfg, T } = ctx;
  const D = cfg.hiddenSize, I = cfg.intermediateSize;
  const h = ctx.buf("h", T * D), o = ctx.buf("o", T * D);
  const gate = ctx.buf("gate", T * I), up = ctx.buf("up", T * I);
  const norm = w.get("post_attention_layernorm.weight");
  be.rmsnorm(h, ctx.x, norm.ptr, norm.dtype, T, D, cfg.rmsNormEps);
  const wg = w.get("mlp.gate_proj.weight"), wu = w.get("mlp.up_proj.weight");
  be.matmul(gate, h, wg.ptr, wg.dtype, null, T, I, D);
  be.matmul(up, h, wu.ptr, wu.dtype, null, T, I, D);
  be.actMul(gate, gate, up, T, I, I, ACTIVATIONS[cfg.hiddenAct]);
  const wd = w.get("mlp.down_proj.weight");
  be.matmul(o, gate, wd.ptr, wd.dtype, null, T, D, I);
  be.add(ctx.x, ctx.x, o, T * D);
}

export const llama: Family = {
  architectures: ["LlamaForCausalLM"],
  parseConfig: (raw, source) => parseLlamaLike(raw, source, LLAMA_DEFAULTS),
  place: placeLlamaLike,
  expected(part, cfg) {
    // LlamaConfig's attention_bias puts a bias on o_proj too (Qwen2's qkv bias does not).
    const t = expectedLlamaLike(part, cfg);
    if (part.kind === "layer" && cfg.attentionBias) {
      t.push({ local: "self_attn.o_proj.bias", shape: [cfg.hiddenSize] });
    }
    return t;
  },
  forwardLayer(ctx, w) {
    attentionBlock(ctx, w);
    mlpBlock(ctx, w);
  },
};
