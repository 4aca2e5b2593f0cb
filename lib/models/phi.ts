/**
 * Phi-1 / Phi-1.5 / Phi-2 (`PhiForCausalLM`): one LayerNorm (with bias) feeds attention and the
 * MLP in parallel, x += dense(attn(ln x)) + fc2(act(fc1(ln x))); every projection has a bias,
 * partial rotary (default 0.5), optional LayerNorm on query and key heads (`qk_layernorm`), a
 * final LayerNorm and an lm_head with bias.
 *
 * @module
 */
import type { DevPtr } from "../../ffi/backend.ts";
import type { ModelConfig } from "../config.ts";
import { ConfigError } from "../errors.ts";
import type { ExpectedTensor, Family, LayerContext, PartWeights } from "./family.ts";
import { ACTIVATIONS, LLAMA_DEFAULTS, parseLlamaLike, placeExpected } from "./llama.ts";

/** A Phi config: the common one plus `qk_layernorm`. */
export interface PhiConfig extends ModelConfig {
  /** LayerNorm on each query and key head before the rope. */
  qkLayerNorm: boolean;
}

/** LayerNorm of `rows` rows of `dim` with `<prefix>.weight` and `<prefix>.bias`. */
function layernorm(
  ctx: LayerContext,
  w: PartWeights,
  prefix: string,
  out: DevPtr,
  x: DevPtr,
  rows: number,
  dim: number,
): void {
  const wt = w.get(`${prefix}.weight`), b = w.get(`${prefix}.bias`);
  ctx.be.layernorm(out, x, wt.ptr, b.ptr, wt.dtype, rows, dim, ctx.cfg.rmsNormEps);
}

function forwardLayer(ctx: LayerContext<PhiConfig>, w: PartWeights): void {
  const { be, cfg, T } = ctx;
  const D = cfg.hiddenSize, I = cfg.intermediateSize, hd = cfg.headDim;
  const H = cfg.numHeads, KV = cfg.numKvHeads, qDim = H * hd, kvDim = KV * hd;
  const h = ctx.buf("h", T * D);
  const q = ctx.buf("q", T * qDim), k = ctx.buf("k", T * kvDim), v = ctx.buf("v", T * kvDim);
  const attn = ctx.buf("attn", T * qDim), o = ctx.buf("o", T * D), mlp = ctx.buf("mlp", T * D);
  const fc = ctx.buf("gate", T * I);
  const linear = (out: DevPtr, x: DevPtr, name: string, n: number, inDim: number) => {
    const wt = w.get(`${name}.weight`);
    be.matmul(out, x, wt.ptr, wt.dtype, w.get(`${name}.bias`).ptr, T, n, inDim);
  };
  layernorm(ctx, w, "input_layernorm", h, ctx.x, T, D);
  linear(q, h, "self_attn.q_proj", qDim, D);
  linear(k, h, "self_attn.k_proj", kvDim, D);
  linear(v, h, "self_attn.v_proj", kvDim, D);
  if (cfg.qkLayerNorm) {
    layernorm(ctx, w, "self_attn.q_layernorm", q, q, T * H, hd);
    layernorm(ctx, w, "self_attn.k_layernorm", k, k, T * KV, hd);
  }
  const { rotDim, invFreq, mscale } = ctx.rope;
  be.rope(q, T, qDim, H, hd, rotDim, ctx.positions, invFreq, mscale);
  be.rope(k, T, kvDim, KV, hd, rotDim, ctx.positions, invFreq, mscale);
  ctx.attention({ q, qStride: qDim, k, v, kvStride: kvDim, out: attn, scale: 1 / Math.sqrt(hd) });
  linear(o, attn, "self_attn.dense", D, qDim);
  linear(fc, h, "mlp.fc1", I, D);
  be.act(fc, fc, T * I, ACTIVATIONS[cfg.hiddenAct]); // no gate
  linear(mlp, fc, "mlp.fc2", D, I);
  be.add(o, o, mlp, T * D); // (attn + mlp) + residual, transformers' order
  be.add(ctx.x, ctx.x, o, T * D);
}

export const phi: Family<PhiConfig> = {
  architectures: ["PhiForCausalLM"],
  parseConfig(raw, source) {
    const cfg = parseLlamaLike(raw, source, {
      ...LLAMA_DEFAULTS,
      hiddenAct: "gelu_new",
      tieWordEmbeddings: false,
    });
    if (!(cfg.hiddenAct in ACTIVATIONS)) {
      throw new ConfigError(
        source,
        "hidden_act",
        `unsupported activation "${cfg.hiddenAct}" for Phi; supported: ${
          Object.keys(ACTIVATIONS).join(", ")
        }`,
      );
    }
    if (cfg.tieWordEmbeddings) {
      throw new ConfigError(
        source,
        "tie_word_embeddings",
        "a tied Phi lm_head keeps its own bias, which a tied head does not carry; not supported",
      );
    }
    if (raw.qk_layernorm != null && typeof raw.qk_layernorm !== "boolean") {
      throw new ConfigError(
        source,
        "qk_layernorm",
        `expected true or false, got ${raw.qk_layernorm}`,
      );
    }
    const eps = raw.layer_norm_eps ?? 1e-5;
    if (typeof eps !== "number" || !(eps > 0)) {
      throw new ConfigError(source, "layer_norm_eps", `expected a positive number, got ${eps}`);
    }
    cfg.rmsNormEps = eps; // the LayerNorms' eps
    cfg.attentionBias = true;
    // PhiConfig: partial_rotary_factor 0.5 when neither the rope dict nor the config sets it.
    const rope = (raw.rope_parameters ?? raw.rope_scaling ?? {}) as Record<string, unknown>;
    if (rope.partial_rotary_factor == null && raw.partial_rotary_factor == null) {
      cfg.rope = { ...cfg.rope, partialRotaryFactor: 0.5 };
      cfg.layerRopes.fill(cfg.rope);
    }
    return { ...cfg, qkLayerNorm: raw.qk_layernorm === true };
  },
  place(name, cfg) {
    if (name === "model.final_layernorm.weight") return { part: { kind: "norm" }, local: "weight" };
    if (name === "model.final_layernorm.bias") return { part: { kind: "norm" }, local: "bias" };
    if (name === "lm_head.bias") return { part: { kind: "lm_head" }, local: "bias" };
    if (name === "model.norm.weight") return undefined;
    return placeExpected(name, cfg, phi.expected);
  },
  expected(part, cfg) {
    const D = cfg.hiddenSize, I = cfg.intermediateSize, hd = cfg.headDim;
    const qDim = cfg.numHeads * hd, kvDim = cfg.numKvHeads * hd;
    // weight [n, k] (a norm: [n]) and bias [n] under `<name>.`
    const withBias = (name: string, n: number, k?: number): ExpectedTensor[] => [
      { local: `${name}weight`, shape: k === undefined ? [n] : [n, k] },
      { local: `${name}bias`, shape: [n] },
    ];
    switch (part.kind) {
      case "embed":
        return [{ local: "weight", shape: [cfg.vocabSize, D] }];
      case "norm":
        return withBias("", D);
      case "lm_head":
        return withBias("", cfg.vocabSize, D);
      case "layer":
        return [
          ...withBias("input_layernorm.", D),
          ...withBias("self_attn.q_proj.", qDim, D),
          ...withBias("self_attn.k_proj.", kvDim, D),
          ...withBias("self_attn.v_proj.", kvDim, D),
          ...withBias("self_attn.dense.", D, qDim),
          ...(cfg.qkLayerNorm
            ? [...withBias("self_attn.q_layernorm.", hd), ...withBias("self_attn.k_layernorm.", hd)]
            : []),
          ...withBias("mlp.fc1.", I, D),
          ...withBias("mlp.fc2.", D, I),
        ];
    }
  },
  forwardLayer,
  finalNorm(be, cfg, w, out, x, rows) {
    const wt = w.get("weight");
    be.layernorm(out, x, wt.ptr, w.get("bias").ptr, wt.dtype, rows, cfg.hiddenSize, cfg.rmsNormEps);
  },
};
