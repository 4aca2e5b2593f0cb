/**
 * Gemma 3 (text): Gemma 2's layer with q/k Gemma-RMS-normed per head before the rope and no
 * attention soft-capping; five sliding layers per full one by default (`sliding_window_pattern` 6);
 * two ropes: sliding layers use `rope_local_base_freq` with the default rope, full-attention layers
 * `rope_theta` with the config's scaling. transformers 5 nests them in `rope_parameters` by layer
 * type; hub checkpoints carry the flat keys.
 *
 * @module
 */
import { optionalInt, type RopeConfig, ropeScalingParams } from "../config.ts";
import { ConfigError } from "../errors.ts";
import { checkRopeType } from "../rope.ts";
import type { Family } from "./family.ts";
import { denseLayerScratch } from "./blocks.ts";
import type { DenseBuffers } from "./llama.ts";
import {
  expectedGemmaLike,
  GEMMA2_DEFAULTS,
  GEMMA_HOOKS,
  type GemmaConfig,
  type GemmaDefaults,
  gemmaLayer,
  parseGemmaLike,
  placeGemmaLike,
} from "./gemma2.ts";

type Raw = Record<string, unknown>;

/** Gemma3TextConfig's defaults for keys a checkpoint may omit. */
export const GEMMA3_DEFAULTS: GemmaDefaults = {
  ...GEMMA2_DEFAULTS,
  maxPositionEmbeddings: 131072,
  ropeTheta: 1e6,
  finalLogitSoftcap: null,
  attnSoftcap: null,
};

/** A dict-valued key: the object, null when absent or null, else an error naming the key. */
function dict(v: unknown, source: string, key: string): Raw | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== "object" || Array.isArray(v)) {
    throw new ConfigError(source, key, `expected an object, got ${JSON.stringify(v)}`);
  }
  return v as Raw;
}

/** One layer type's rope dict (after Gemma3TextConfig's defaulting) as a RopeConfig. */
function ropeOf(
  p: Raw,
  raw: Readonly<Raw>,
  maxPositions: number,
  source: string,
  key: string,
): RopeConfig {
  const theta = p.rope_theta;
  if (typeof theta !== "number" || !(theta > 0)) {
    throw new ConfigError(
      source,
      `${key}.rope_theta`,
      `expected a positive number, got ${JSON.stringify(theta)}`,
    );
  }
  const partial = p.partial_rotary_factor ?? raw.partial_rotary_factor ?? 1;
  if (typeof partial !== "number") {
    throw new ConfigError(source, `${key}.partial_rotary_factor`, "expected a number");
  }
  const params = ropeScalingParams(p);
  const named = p.rope_type ?? p.type ?? "default";
  const field = `${key}.${
    p.rope_type !== undefined && p.rope_type !== null ? "rope_type" : "type"
  }`;
  if (typeof named !== "string") {
    throw new ConfigError(source, field, `expected a rope type name, got ${JSON.stringify(named)}`);
  }
  const type = named;
  // standardize_rope_params: scaled types default their pretraining length to the context.
  if (["llama3", "yarn", "longrope"].includes(type)) {
    params.original_max_position_embeddings ??= maxPositions;
  }
  const rope = { type, theta, partialRotaryFactor: partial, params };
  checkRopeType(rope, source, field);
  return rope;
}

export const gemma3: Family<GemmaConfig, DenseBuffers> = {
  ...GEMMA_HOOKS,
  scratch: denseLayerScratch,
  architectures: ["Gemma3ForCausalLM"],
  parseConfig(raw, source) {
    // Gemma3TextConfig: layer i slides unless (i + 1) is a multiple of sliding_window_pattern.
    const pattern = optionalInt(raw, source, "sliding_window_pattern") ?? 6;
    const cfg = parseGemmaLike(raw, source, GEMMA3_DEFAULTS, (i) => (i + 1) % pattern !== 0);
    // Gemma3Attention never passes attn_logit_softcapping to the attention: it has no effect.
    cfg.attnSoftcap = 0;
    // Gemma3TextConfig.convert_rope_params_to_dict: legacy rope_scaling applies to the full
    // layers only; only the nested keys of rope_parameters count (a flat dict is ignored there).
    const params = dict(raw.rope_parameters, source, "rope_parameters") ?? {};
    const scaling = dict(raw.rope_scaling, source, "rope_scaling") ?? {};
    const full: Raw = {
      ...(dict(params.full_attention, source, "rope_parameters.full_attention") ??
        { rope_type: "default" }),
      ...scaling,
    };
    full.rope_theta ??= raw.rope_theta ?? 1e6;
    const sliding: Raw = {
      ...(dict(params.sliding_attention, source, "rope_parameters.sliding_attention") ??
        { rope_type: "default" }),
    };
    sliding.rope_theta ??= raw.rope_local_base_freq ?? 1e4;
    const M = cfg.maxPositionEmbeddings;
    const global = ropeOf(full, raw, M, source, "rope_parameters.full_attention");
    const local = ropeOf(sliding, raw, M, source, "rope_parameters.sliding_attention");
    cfg.rope = global;
    cfg.layerRopes = cfg.layerWindows.map((w) => w > 0 ? local : global);
    return cfg;
  },
  place: (name, cfg) => placeGemmaLike(name, cfg, true),
  expected: (part, cfg) => expectedGemmaLike(part, cfg, true),
  forwardLayer: (ctx, w) => gemmaLayer(ctx, w, true),
};
