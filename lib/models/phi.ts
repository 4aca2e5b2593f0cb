/**
 * Phi-1 / Phi-1.5 / Phi-2 (`PhiForCausalLM`): one LayerNorm (with bias) feeds attention and the
 * MLP in parallel, x += dense(attn(ln x)) + fc2(act(fc1(ln x))); every projection has a bias,
 * partial rotary (default 0.5), optional LayerNorm on query and key heads (`qk_layernorm`), a
 * final LayerNorm and an lm_head with bias.
 *
 * @module
 */
import type { ModelConfig } from "../config.ts";
import { ConfigError } from "../errors.ts";
import type { ExpectedTensor, Family, LayerContext, PartWeights } from "./family.ts";
import { LLAMA_DEFAULTS, parseLlamaLike, placeExpected } from "./llama.ts";
import { ACTIVATIONS } from "./activations.ts";
import {
  attention,
  type AttentionBuffers,
  attentionScratch,
  type AttentionSpec,
  attentionTensors,
  type LayerBuffers,
  layerScratch,
  linear,
  type LinearSpec,
  linearTensors,
  norm,
  type NormSpec,
  normTensors,
  perConfig,
  residual,
} from "./blocks.ts";

/** A Phi config: the common one plus `qk_layernorm`. */
export interface PhiConfig extends ModelConfig {
  /** LayerNorm on each query and key head before the rope. */
  qkLayerNorm: boolean;
}

/** The tensors of a Phi layer, each named once (blocks.ts): everything biased, LayerNorms. */
const phiLayerSpec = perConfig((cfg: PhiConfig) => {
  const linear = (name: string): LinearSpec => ({ name, bias: true });
  const ln = (name: string): NormSpec => ({ name, kind: "layer" });
  const attn: AttentionSpec = {
    q: linear("self_attn.q_proj"),
    k: linear("self_attn.k_proj"),
    v: linear("self_attn.v_proj"),
    o: linear("self_attn.dense"),
    qkNorm: cfg.qkLayerNorm
      ? { q: ln("self_attn.q_layernorm"), k: ln("self_attn.k_layernorm") }
      : undefined,
    scale: 1 / Math.sqrt(cfg.headDim),
  };
  return { inputNorm: ln("input_layernorm"), attn, fc1: linear("mlp.fc1"), fc2: linear("mlp.fc2") };
});

/** Phi's scratch: the attention's, fc1's output `fc` [I] and fc2's `mlp` [D] per row. */
type PhiBuffers = LayerBuffers | AttentionBuffers | "fc" | "mlp";

/** Parallel attention and MLP on one LayerNorm: x += dense(attn(h)) + fc2(act(fc1(h))). */
function forwardLayer(ctx: LayerContext<PhiConfig, PhiBuffers>, w: PartWeights): void {
  const { be, cfg, T } = ctx, s = phiLayerSpec(cfg);
  const D = cfg.hiddenSize, I = cfg.intermediateSize, { h, o, mlp, fc } = ctx.s;
  norm(ctx, w, s.inputNorm, h, ctx.x, T, D);
  attention(ctx, w, s.attn, h, o);
  linear(ctx, w, s.fc1, fc, h, T, I, D);
  be.act(fc, fc, T * I, ACTIVATIONS[cfg.hiddenAct]); // no gate
  linear(ctx, w, s.fc2, mlp, fc, T, D, I);
  be.add(o, o, mlp, T * D); // (attn + mlp) + residual, transformers' order
  residual(ctx, o);
}

/** A global part's tensor spec of name "" is `.weight`/`.bias`: its local names drop the dot. */
const unprefixed = (t: ExpectedTensor): ExpectedTensor => ({ ...t, local: t.local.slice(1) });

export const phi: Family<PhiConfig, PhiBuffers> = {
  architectures: ["PhiForCausalLM"],
  scratch: (cfg) => ({
    ...layerScratch(cfg),
    ...attentionScratch(cfg),
    fc: cfg.intermediateSize,
    mlp: cfg.hiddenSize,
  }),
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
        `expected true or false, got ${JSON.stringify(raw.qk_layernorm)}`,
      );
    }
    const eps = raw.layer_norm_eps ?? 1e-5;
    if (typeof eps !== "number" || !(eps > 0)) {
      throw new ConfigError(
        source,
        "layer_norm_eps",
        `expected a positive number, got ${JSON.stringify(eps)}`,
      );
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
    const D = cfg.hiddenSize, I = cfg.intermediateSize, V = cfg.vocabSize;
    switch (part.kind) {
      case "embed":
        return [{ local: "weight", shape: [V, D], matmul: true }];
      case "norm": // final_layernorm
        return normTensors({ name: "", kind: "layer" }, D).map(unprefixed);
      case "lm_head":
        return linearTensors({ name: "", bias: true }, V, D).map(unprefixed);
      case "layer": {
        const s = phiLayerSpec(cfg);
        return [
          ...normTensors(s.inputNorm, D),
          ...attentionTensors(s.attn, D, cfg.numHeads, cfg.numKvHeads, cfg.headDim),
          ...linearTensors(s.fc1, I, D),
          ...linearTensors(s.fc2, D, I),
        ];
      }
    }
  },
  forwardLayer,
  finalNorm(be, cfg, w, out, x, rows) {
    const wt = w.get("weight");
    be.layernorm(out, x, wt.ptr, w.get("bias").ptr, wt.dtype, rows, cfg.hiddenSize, cfg.rmsNormEps);
  },
};
