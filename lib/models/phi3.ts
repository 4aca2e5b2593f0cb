/**
 * Phi-3 / Phi-3.5 / Phi-4(-mini): Llama's layer with fused projections — `qkv_proj` holds the
 * q, k and v rows, `gate_up_proj` the gate and up rows — run as Llama's blocks over row views of
 * the fused weights. Rope "longrope" (legacy "su"/"yarn"), partial rotary, an optional sliding
 * window on every layer.
 *
 * @module
 */
import type { Backend } from "../../ffi/backend.ts";
import { type ModelConfig, optionalInt } from "../config.ts";
import { rowByteSize } from "../dtype.ts";
import { ConfigError } from "../errors.ts";
import { ropeTable } from "../rope.ts";
import type { Family, PartWeights, Weight } from "./family.ts";
import {
  expectedGlobal,
  llama,
  LLAMA_DEFAULTS,
  llamaLayer,
  type LlamaLayerSpec,
  llamaLayerSpec,
  parseLlamaLike,
  placeExpected,
} from "./llama.ts";
import { linearTensors, normTensors, plain } from "./blocks.ts";

/** Phi3Config reads the legacy rope types "su" and "yarn" as longrope. */
const LONGROPE_ALIASES = { su: "longrope", yarn: "longrope" };

/** The fused projections: q, k, v rows in `qkv_proj`, gate and up rows in `gate_up_proj`. */
const QKV = plain("self_attn.qkv_proj"), GATE_UP = plain("mlp.gate_up_proj");

/** Llama's layer (no biases), run over row views of the fused weights. */
const spec = (cfg: ModelConfig): LlamaLayerSpec => llamaLayerSpec(cfg); // attentionBias is false

/** The spec's q/k/v and gate/up weights as row views of the fused ones (a row range of W is a weight). */
function unfused(be: Backend, cfg: ModelConfig, w: PartWeights): PartWeights {
  const D = cfg.hiddenSize, I = cfg.intermediateSize, s = spec(cfg);
  const qDim = cfg.numHeads * cfg.headDim, kvDim = cfg.numKvHeads * cfg.headDim;
  const rows = (wt: Weight, from: number, n: number): Weight => ({
    ptr: be.view(wt.ptr, from * rowByteSize(wt.dtype, D)),
    dtype: wt.dtype,
    shape: [n, D],
  });
  const qkv = w.get(`${QKV.name}.weight`), gateUp = w.get(`${GATE_UP.name}.weight`);
  const views = new Map([
    [`${s.attn.q.name}.weight`, rows(qkv, 0, qDim)],
    [`${s.attn.k.name}.weight`, rows(qkv, qDim, kvDim)],
    [`${s.attn.v.name}.weight`, rows(qkv, qDim + kvDim, kvDim)],
    [`${s.mlp.gate.name}.weight`, rows(gateUp, 0, I)],
    [`${s.mlp.up.name}.weight`, rows(gateUp, I, I)],
  ]);
  return {
    get: (name) => views.get(name) ?? w.get(name),
    opt: (name) => views.get(name) ?? w.opt(name),
    load: (groups) => w.load(groups),
    prefetch: (groups) => w.prefetch(groups),
  };
}

export const phi3: Family = {
  ...llama,
  architectures: ["Phi3ForCausalLM"],
  parseConfig(raw, source) {
    const cfg = parseLlamaLike(raw, source, {
      ...LLAMA_DEFAULTS,
      rmsNormEps: 1e-5,
      maxPositionEmbeddings: 4096,
    }, { ropeTypeAliases: LONGROPE_ALIASES });
    cfg.attentionBias = false; // Phi3Attention has no biases, whatever attention_bias says
    if (cfg.rope.type !== "default" && cfg.rope.type !== "longrope") {
      throw new ConfigError(
        source,
        "rope_scaling.rope_type",
        `Phi-3 runs rope types default and longrope (su, yarn), not "${cfg.rope.type}"`,
      );
    }
    if (cfg.rope.type === "longrope") {
      // Phi3Config's own original_max_position_embeddings (default 4096) wins over the rope dict's.
      const original = optionalInt(raw, source, "original_max_position_embeddings") ?? 4096;
      cfg.rope = {
        ...cfg.rope,
        params: { ...cfg.rope.params, original_max_position_embeddings: original },
      };
      cfg.layerRopes.fill(cfg.rope);
      // Both factor lists are checked now, not at the first long prompt.
      ropeTable(cfg.rope, cfg, original, source);
      ropeTable(cfg.rope, cfg, original + 1, source);
    }
    cfg.layerWindows.fill(optionalInt(raw, source, "sliding_window") ?? 0);
    return cfg;
  },
  place: (name, cfg) => placeExpected(name, cfg, phi3.expected),
  expected(part, cfg) {
    if (part.kind !== "layer") return expectedGlobal(part, cfg);
    const D = cfg.hiddenSize, I = cfg.intermediateSize, s = spec(cfg);
    const qkvDim = (cfg.numHeads + 2 * cfg.numKvHeads) * cfg.headDim;
    return [
      ...normTensors(s.inputNorm, D),
      ...linearTensors(QKV, qkvDim, D), // [q; k; v] rows
      ...linearTensors(s.attn.o, D, cfg.numHeads * cfg.headDim),
      ...normTensors(s.postNorm, D),
      ...linearTensors(GATE_UP, 2 * I, D), // [gate; up] rows
      ...linearTensors(s.mlp.down, D, I),
    ];
  },
  forwardLayer: (ctx, w) => llamaLayer(ctx, unfused(ctx.be, ctx.cfg, w), spec(ctx.cfg)),
  // Phi3ForCausalLM.prepare_inputs_for_generation: the first time the sequence passes the original
  // context, longrope switches to the long factors and the cache is recomputed with them.
  recomputeCache(cfg, past, total) {
    if (cfg.rope.type !== "longrope") return false;
    const original = cfg.rope.params.original_max_position_embeddings as number;
    return past <= original && total > original;
  },
};
