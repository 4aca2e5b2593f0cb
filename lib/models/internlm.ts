/**
 * InternLM 1, 2 / 2.5 and 3: Llama's layer under each family's own config keys and (for
 * InternLM2) tensor names, loaded from the original hub layout (remote-code config.json with
 * `auto_map`) without conversion.
 *
 * - InternLM (`InternLMForCausalLM`, model_type `internlm`): Llama tensor names, always MHA,
 *   head_dim = hidden / heads; `bias` (true on the released 7B) puts a bias on q, k, v **and** o.
 *   Rope from the old `rotary: {base, type: origin|dynamic, scaling_factor}` (InternLMConfig's
 *   default: dynamic, base 10000, factor 1) or the newer `rope_theta`/`rope_scaling`. Its dynamic
 *   NTK rope re-rotates every cached key with the current length's table (keys are cached
 *   unrotated), which is a full recompute: {@link internlm}'s `recomputeCache` asks for one at
 *   every decode step past max_position_embeddings.
 * - InternLM2 (`InternLM2ForCausalLM`): `attention.wqkv` interleaved by KV group — rows
 *   (kvHeads, r + 2, headDim) with r = heads / kvHeads: group g holds the q of heads g·r ..
 *   g·r + r − 1, then k_g, then v_g — split at split time into q/k/v rows; `attention.wo`,
 *   `feed_forward.w1|w3|w2` (gate | up | down), `attention_norm`, `ffn_norm`, `tok_embeddings`,
 *   `output`. `bias` (InternLM2Config default true; false in the released files) on wqkv and wo.
 *   `rope_scaling: {type: linear|dynamic, factor}`; its dynamic NTK is sticky (see
 *   lib/rope.ts `stickyDynamic`).
 * - InternLM3 (`InternLM3ForCausalLM`; transformers 5.23 maps `internlm3` to Llama): Llama names;
 *   `qkv_bias` on q/k/v, `bias` on o_proj and the MLP (transformers 5 names them `attention_bias`
 *   / `mlp_bias`); the remote config class's defaults for absent keys.
 *
 * @module
 */
import {
  type ConfigDefaults,
  type ConfigOverrides,
  ConfigReader,
  type ModelConfig,
  parseCommonConfig,
  type RopeConfig,
} from "../config.ts";
import { ConfigError } from "../errors.ts";
import { checkRopeType, stickyDynamic } from "../rope.ts";
import { ACTIVATIONS } from "./activations.ts";
import { denseLayerScratch, perConfig } from "./blocks.ts";
import type { Family, Part, Placement } from "./family.ts";
import { rowRange } from "./family.ts";
import {
  type DenseBuffers,
  expectedGlobal,
  LLAMA_DEFAULTS,
  llamaLayer,
  type LlamaLayerSpec,
  llamaLayerTensors,
  placeExpected,
} from "./llama.ts";

/** ModelConfig plus where the InternLM families put biases. */
export interface InternLMConfig extends ModelConfig {
  /** q/k/v biases, the o_proj bias, and biases on the MLP's gate/up/down. */
  biases: { qkv: boolean; o: boolean; mlp: boolean };
}

type Raw = Readonly<Record<string, unknown>>;

/** Common keys + the checks Llama's parser makes (activation, rope type), `mlp_bias` aside. */
function parseBase(
  raw: Raw,
  source: string,
  defaults: ConfigDefaults,
  overrides: ConfigOverrides,
): ModelConfig {
  const cfg = parseCommonConfig(raw, source, defaults, overrides);
  if (!(cfg.hiddenAct in ACTIVATIONS)) {
    throw new ConfigError(
      source,
      "hidden_act",
      `unsupported activation "${cfg.hiddenAct}"; supported: ${
        Object.keys(ACTIVATIONS).join(", ")
      }`,
    );
  }
  return cfg;
}

/** hidden / heads, which InternLM 1 and 2 use whatever head_dim says. */
function splitHeadDim(raw: Raw, source: string): number {
  const r = ConfigReader.of(raw, source);
  const hidden = r.int("hidden_size"), heads = r.int("num_attention_heads");
  if (hidden % heads !== 0) {
    r.fail("hidden_size", `${hidden} is not a multiple of num_attention_heads ${heads}`);
  }
  return hidden / heads;
}

/** One rope with a new identity for every layer (`layerRopes`). */
function withRope(cfg: ModelConfig, rope: RopeConfig): void {
  cfg.rope = rope;
  cfg.layerRopes = new Array(cfg.numLayers).fill(rope);
}

function bias(raw: Raw, source: string, key: string, fallback: boolean): boolean {
  return ConfigReader.of(raw, source).bool(key, fallback);
}

/** The Llama layer spec of an InternLM config (Llama's local names; biases per family). */
export const internlmSpec: (cfg: InternLMConfig) => LlamaLayerSpec = perConfig((cfg) => {
  const b = cfg.biases;
  return {
    inputNorm: { name: "input_layernorm", kind: "rms" },
    attn: {
      q: { name: "self_attn.q_proj", bias: b.qkv },
      k: { name: "self_attn.k_proj", bias: b.qkv },
      v: { name: "self_attn.v_proj", bias: b.qkv },
      o: { name: "self_attn.o_proj", bias: b.o },
      scale: 1 / Math.sqrt(cfg.headDim),
    },
    postNorm: { name: "post_attention_layernorm", kind: "rms" },
    mlp: {
      gate: { name: "mlp.gate_proj", bias: b.mlp },
      up: { name: "mlp.up_proj", bias: b.mlp },
      down: { name: "mlp.down_proj", bias: b.mlp },
    },
  };
});

function expectedInternLM(part: Part, cfg: InternLMConfig) {
  return part.kind === "layer"
    ? llamaLayerTensors(internlmSpec(cfg), cfg)
    : expectedGlobal(part, cfg);
}

/** What the three families share: Llama's layer over {@link internlmSpec}. */
const shared = {
  scratch: denseLayerScratch,
  expected: expectedInternLM,
  forwardLayer: (ctx, w) => llamaLayer(ctx, w, internlmSpec(ctx.cfg)),
} satisfies Partial<Family<InternLMConfig, DenseBuffers>>;

// ------------------------------------------------------------------------------------------------
// InternLM (1)

/** InternLMConfig's defaults (remote configuration_internlm.py). */
const INTERNLM_DEFAULTS: ConfigDefaults = { ...LLAMA_DEFAULTS, rmsNormEps: 1e-6 };

/**
 * The rope of an InternLM (1) config: `rotary: {base, type, scaling_factor}` when present
 * ("origin" = plain rope, "dynamic" = dynamic NTK with factor scaling_factor, default 1), else the
 * newer `rope_theta`/`rope_scaling` (or `rope_parameters`) as parsed, else InternLMConfig's
 * default `{base: 10000, type: dynamic}`.
 */
function internlmRope(raw: Raw, source: string, parsed: RopeConfig): RopeConfig {
  const rotary = raw.rotary;
  const newer = ["rope_theta", "rope_scaling", "rope_parameters"].some((k) =>
    raw[k] !== undefined && raw[k] !== null
  );
  if (rotary === undefined || rotary === null) {
    if (newer) return parsed;
    return { type: "dynamic", theta: 10000, partialRotaryFactor: 1, params: { factor: 1 } };
  }
  if (typeof rotary !== "object" || Array.isArray(rotary)) {
    throw new ConfigError(source, "rotary", `expected an object, got ${JSON.stringify(rotary)}`);
  }
  const r = new ConfigReader(rotary as Raw, source, "internlm");
  const type = r.str("type", "");
  const base = (rotary as Raw).base;
  if (typeof base !== "number" || !Number.isFinite(base) || base <= 0) {
    throw new ConfigError(
      source,
      "rotary.base",
      `expected a positive number, got ${JSON.stringify(base)} (model type internlm)`,
    );
  }
  if (type === "origin") {
    return { type: "default", theta: base, partialRotaryFactor: 1, params: {} };
  }
  if (type === "dynamic") {
    const factor = (rotary as Raw).scaling_factor ?? 1;
    if (typeof factor !== "number" || !Number.isFinite(factor)) {
      throw new ConfigError(
        source,
        "rotary.scaling_factor",
        `expected a number, got ${JSON.stringify(factor)} (model type internlm)`,
      );
    }
    return { type: "dynamic", theta: base, partialRotaryFactor: 1, params: { factor } };
  }
  throw new ConfigError(
    source,
    "rotary.type",
    `expected "origin" or "dynamic", got ${
      JSON.stringify((rotary as Raw).type)
    } (model type internlm)`,
  );
}

/** InternLM (1): `InternLMForCausalLM`. */
export const internlm: Family<InternLMConfig, DenseBuffers> = {
  ...shared,
  architectures: ["InternLMForCausalLM"],
  parseConfig(raw, source) {
    // InternLM's attention is always MHA of hidden / heads (num_key_value_heads, head_dim unread).
    const cfg = parseBase(raw, source, INTERNLM_DEFAULTS, {
      numKvHeads: "heads",
      headDim: splitHeadDim(raw, source),
    });
    withRope(cfg, internlmRope(raw, source, cfg.rope));
    checkRopeType(cfg.rope, source, raw.rotary ? "rotary.type" : undefined);
    const b = bias(raw, source, "bias", true);
    return { ...cfg, attentionBias: b, biases: { qkv: b, o: b, mlp: false } };
  },
  place: (name, cfg) => placeExpected(name, cfg, expectedInternLM),
  // Its dynamic rope rotates all keys (cached unrotated) with the table of the current length:
  // past max_position_embeddings every step is a full recompute.
  recomputeCache: (cfg, _past, total) =>
    cfg.rope.type === "dynamic" && total > cfg.maxPositionEmbeddings,
};

// ------------------------------------------------------------------------------------------------
// InternLM2 / 2.5

/** InternLM2Config's defaults (remote configuration_internlm2.py). */
const INTERNLM2_DEFAULTS: ConfigDefaults = { ...LLAMA_DEFAULTS, rmsNormEps: 1e-6 };

/** InternLM2's rope: default, or `rope_scaling: {type: linear|dynamic, factor >= 1}`. */
function internlm2Rope(rope: RopeConfig, raw: Raw, source: string): RopeConfig {
  const key = raw.rope_parameters !== undefined && raw.rope_parameters !== null
    ? "rope_parameters"
    : "rope_scaling";
  if (rope.type === "default") return rope;
  if (rope.type !== "linear" && rope.type !== "dynamic") {
    throw new ConfigError(
      source,
      `${key}.type`,
      `InternLM2 runs rope scaling types linear and dynamic, not ${JSON.stringify(rope.type)}`,
    );
  }
  const factor = rope.params.factor;
  if (typeof factor !== "number" || !Number.isFinite(factor) || factor < 1) {
    throw new ConfigError(
      source,
      `${key}.factor`,
      `expected a number >= 1, got ${JSON.stringify(factor)} (model type internlm2)`,
    );
  }
  // Once a forward passes max_position_embeddings, the remote code keeps the scaled table.
  return rope.type === "dynamic" ? stickyDynamic(rope) : rope;
}

const LAYER = /^model\.layers\.(\d+)\.(.+)$/;

/** InternLM2's layer tensor names → Llama's local names (wqkv aside: placeFused). */
const INTERNLM2_LOCAL: Readonly<Record<string, string>> = {
  "attention.wo.weight": "self_attn.o_proj.weight",
  "attention.wo.bias": "self_attn.o_proj.bias",
  "attention_norm.weight": "input_layernorm.weight",
  "ffn_norm.weight": "post_attention_layernorm.weight",
  "feed_forward.w1.weight": "mlp.gate_proj.weight",
  "feed_forward.w3.weight": "mlp.up_proj.weight",
  "feed_forward.w2.weight": "mlp.down_proj.weight",
};

/** The layer index of `name` when it is a layer tensor of this config, and the rest. */
function layerOf(name: string, cfg: ModelConfig): [number, string] | undefined {
  const m = LAYER.exec(name);
  if (!m) return undefined;
  const index = Number(m[1]);
  return index < cfg.numLayers ? [index, m[2]] : undefined;
}

/**
 * The rows of `wqkv` each of q, k and v takes: rows are (kvHeads, r + 2, headDim), group g =
 * [q of heads g·r .. g·r + r − 1 | k_g | v_g].
 */
export function internlm2QkvRows(cfg: ModelConfig): { q: number[]; k: number[]; v: number[] } {
  const hd = cfg.headDim, r = cfg.numHeads / cfg.numKvHeads;
  const q: number[] = [], k: number[] = [], v: number[] = [];
  for (let g = 0; g < cfg.numKvHeads; g++) {
    const base = g * (r + 2) * hd;
    q.push(...rowRange(base, r * hd));
    k.push(...rowRange(base + r * hd, hd));
    v.push(...rowRange(base + (r + 1) * hd, hd));
  }
  return { q, k, v };
}

const qkvRows = perConfig(internlm2QkvRows);

/** InternLM2 / 2.5: `InternLM2ForCausalLM`. */
export const internlm2: Family<InternLMConfig, DenseBuffers> = {
  ...shared,
  architectures: ["InternLM2ForCausalLM"],
  parseConfig(raw, source) {
    const cfg = parseBase(raw, source, INTERNLM2_DEFAULTS, { headDim: splitHeadDim(raw, source) });
    withRope(cfg, internlm2Rope(cfg.rope, raw, source));
    const b = bias(raw, source, "bias", true);
    return { ...cfg, attentionBias: b, biases: { qkv: b, o: b, mlp: false } };
  },
  placeFused(name, cfg) {
    const l = layerOf(name, cfg);
    if (!l) return undefined;
    const [index, rest] = l;
    const m = /^attention\.wqkv\.(weight|bias)$/.exec(rest);
    if (!m || (m[1] === "bias" && !cfg.biases.qkv)) return undefined;
    const rows = qkvRows(cfg), part = { kind: "layer", index } as const;
    return (["q", "k", "v"] as const).map((p): Placement => ({
      part,
      local: `self_attn.${p}_proj.${m[1]}`,
      rows: rows[p],
    }));
  },
  place(name, cfg) {
    if (name === "model.tok_embeddings.weight") return { part: { kind: "embed" }, local: "weight" };
    if (name === "model.norm.weight") return { part: { kind: "norm" }, local: "weight" };
    if (name === "output.weight") {
      return { part: cfg.tieWordEmbeddings ? null : { kind: "lm_head" }, local: "weight" };
    }
    const l = layerOf(name, cfg);
    if (!l) return undefined;
    const local = INTERNLM2_LOCAL[l[1]];
    if (local === undefined || (local.endsWith(".bias") && !cfg.biases.o)) return undefined;
    return { part: { kind: "layer", index: l[0] }, local };
  },
};

// ------------------------------------------------------------------------------------------------
// InternLM3

/**
 * The remote InternLM3Config's defaults (configuration_internlm3.py of the hub files; transformers
 * 5.23's native InternLM3Config differs: rms_norm_eps 1e-5, 2 KV heads, head_dim 128). The
 * released config.json files carry every one of these keys.
 */
const INTERNLM3_DEFAULTS: ConfigDefaults = {
  ...LLAMA_DEFAULTS,
  rmsNormEps: 1e-6,
  maxPositionEmbeddings: 32768,
};

/** InternLM3: `InternLM3ForCausalLM`. */
export const internlm3: Family<InternLMConfig, DenseBuffers> = {
  ...shared,
  architectures: ["InternLM3ForCausalLM"],
  parseConfig(raw, source) {
    // The remote class: 32 KV heads when absent; head_dim hidden / heads when absent or null.
    const overrides: ConfigOverrides = {
      ...(raw.num_key_value_heads === undefined ? { numKvHeads: 32 } : {}),
      ...(raw.head_dim === undefined || raw.head_dim === null
        ? { headDim: splitHeadDim(raw, source) }
        : {}),
    };
    const cfg = parseBase(raw, source, INTERNLM3_DEFAULTS, overrides);
    checkRopeType(cfg.rope, source);
    // The remote config's keys, or transformers 5's names for them (attribute_map).
    const key = (remote: string, v5: string) => raw[remote] !== undefined ? remote : v5;
    const qkv = bias(raw, source, key("qkv_bias", "attention_bias"), false);
    const other = bias(raw, source, key("bias", "mlp_bias"), false);
    return { ...cfg, attentionBias: qkv, biases: { qkv, o: other, mlp: other } };
  },
  place: (name, cfg) => placeExpected(name, cfg, expectedInternLM),
};
