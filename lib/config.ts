/**
 * config.json → a normalized, validated {@link ModelConfig}.
 *
 * Reads both forms found in the wild: transformers 5 writes `rope_parameters` and `dtype`; most hub
 * checkpoints carry `rope_theta` + `rope_scaling`, `torch_dtype` and often no `head_dim`.
 * Family files (lib/models/) call {@link parseCommonConfig} with their defaults (and
 * {@link ConfigOverrides}), read their own keys with the readers exported here ({@link ConfigReader},
 * {@link optionalInt}), and return their own config type extending ModelConfig: a family's values
 * live in typed fields, never in `raw`.
 *
 * @module
 */
import { ConfigError, jsonTooDeep, MAX_JSON_DEPTH } from "./errors.ts";

/** Storage dtype of the weights as the engine keeps them. */
export type StorageDType = "float32" | "float16" | "bfloat16";

/** Rotary embedding parameters, normalized from `rope_parameters` or `rope_theta`/`rope_scaling`. */
export interface RopeConfig {
  /** "default" | "linear" | "dynamic" | "llama3" | "yarn" | "longrope" ... */
  type: string;
  /** Base of the rotary frequencies (`rope_theta`). */
  theta: number;
  /** Fraction of head_dim that rotates (Phi uses < 1). */
  partialRotaryFactor: number;
  /** The remaining scaling keys as found (factor, low_freq_factor, ...). */
  params: Readonly<Record<string, unknown>>;
}

/** A normalized model configuration. Field names are the engine's, not the checkpoint's. */
export interface ModelConfig {
  /** `architectures[0]` of config.json. */
  architecture: string;
  /** `model_type` of config.json. */
  modelType: string;
  /** Width of the residual stream (`hidden_size`). */
  hiddenSize: number;
  /** Width of the MLP (`intermediate_size`). */
  intermediateSize: number;
  /** Decoder layers (`num_hidden_layers`). */
  numLayers: number;
  /** Query heads (`num_attention_heads`). */
  numHeads: number;
  /** Key/value heads (`num_key_value_heads`; numHeads when absent). */
  numKvHeads: number;
  /** From config.json when present; else hiddenSize / numHeads. Never forced. */
  headDim: number;
  /**
   * Head dimension the rope table is built for, when it is not headDim (DeepSeek's MLA rotates
   * only `qk_rope_head_dim` of each head); the rotated dims are this × partialRotaryFactor.
   */
  ropeHeadDim?: number;
  /** Rows of the embedding and the head (`vocab_size`). */
  vocabSize: number;
  /** Longest context the model was trained for (`max_position_embeddings`). */
  maxPositionEmbeddings: number;
  /** Epsilon of the RMSNorms (`rms_norm_eps`, or the family's own key). */
  rmsNormEps: number;
  /** The rotary embedding of the layers (see `layerRopes` for per-layer ones). */
  rope: RopeConfig;
  /** Per layer: its rope (Gemma 3 uses a local and a global one); default `rope` everywhere. */
  layerRopes: RopeConfig[];
  /** > 0: logits = cap · tanh(logits / cap) (Gemma 2); 0 = off. */
  finalLogitSoftcap: number;
  /** The head is the embedding matrix (`tie_word_embeddings`). */
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry a bias (Qwen2). */
  attentionBias: boolean;
  /** Per layer: attention window in tokens, 0 for full attention. */
  layerWindows: number[];
  /** Activation of the gated MLP (`hidden_act`). */
  hiddenAct: string;
  /** Storage dtype from `dtype`/`torch_dtype`; float16 when the config names none. */
  dtype: StorageDType;
  /** `bos_token_id`, null when absent. */
  bosTokenId: number | null;
  /** `eos_token_id` as a list (one or several). */
  eosTokenIds: number[];
  /**
   * MoE: experts each token routes to, as the family's config class resolves it (its class
   * default when config.json omits `num_experts_per_tok`); null for a dense model.
   */
  expertsPerToken: number | null;
  /**
   * What the KV cache keeps per token and layer, when it is not keys and values of numKvHeads ×
   * headDim each (DeepSeek's MLA caches one latent row per token); see {@link cacheLayout}.
   */
  kvCache?: CacheLayout;
  /**
   * config.json as read, unchanged. Families read their keys at parse time into typed fields of
   * their own config type (e.g. QwenMoeConfig); nothing reads or writes family values here.
   */
  raw: Readonly<Record<string, unknown>>;
}

/**
 * The attention's cache rows. Keys are kvHeads × keyDim floats per token; values kvHeads ×
 * valueDim, either in rows of their own or, with `sharedKV`, read from the key rows (each kv
 * head's value is the first valueDim floats of its key: an MLA latent cache, one row per token).
 * The attention output is numHeads × valueDim per token.
 */
export interface CacheLayout {
  /** Cached heads per token and layer. */
  kvHeads: number;
  /** Floats of each cached key row. */
  keyDim: number;
  /** Floats of each value. */
  valueDim: number;
  /** Values are read from the key rows (no value rows of their own). */
  sharedKV: boolean;
}

/** The config's cache layout: its own, else keys and values of numKvHeads × headDim. */
export function cacheLayout(cfg: ModelConfig): CacheLayout {
  return cfg.kvCache ??
    { kvHeads: cfg.numKvHeads, keyDim: cfg.headDim, valueDim: cfg.headDim, sharedKV: false };
}

/** fp32 floats the KV cache keeps per token and layer. */
export function cacheFloatsPerToken(cfg: ModelConfig): number {
  const c = cacheLayout(cfg);
  return c.kvHeads * (c.keyDim + (c.sharedKV ? 0 : c.valueDim));
}

/** Defaults a family supplies for keys its transformers config class defaults. */
export interface ConfigDefaults {
  rmsNormEps: number;
  maxPositionEmbeddings: number;
  ropeTheta: number;
  hiddenAct: string;
  tieWordEmbeddings: boolean;
}

/**
 * What a family fixes instead of the common rule for a key (the common rule: config.json's value,
 * else hidden / heads for head_dim and num_attention_heads for num_key_value_heads).
 */
export interface ConfigOverrides {
  /** head_dim, whatever config.json says (a class default the family resolved, DeepSeek's head). */
  headDim?: number;
  /** KV heads, whatever config.json says; "heads": one per query head (DeepSeek's MLA). */
  numKvHeads?: number | "heads";
  /** Rope type aliases a config class reads (Phi-3: "su" and "yarn" are "longrope"). */
  ropeTypeAliases?: Readonly<Record<string, string>>;
}

type Raw = Record<string, unknown>;

/** Reads and parses config.json from a model directory. */
export async function readConfigJson(dir: string): Promise<Raw> {
  const path = `${dir}/config.json`;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new ConfigError(path, null, `cannot read: ${(e as Error).message}`, { cause: e });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(path, null, `invalid JSON: ${(e as Error).message}`, { cause: e });
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ConfigError(path, null, "expected a JSON object");
  }
  if (jsonTooDeep(raw)) {
    throw new ConfigError(path, null, `nested deeper than ${MAX_JSON_DEPTH} levels`);
  }
  return raw as Raw;
}

/** The `architectures[0]` entry, or an error naming the file. */
export function architectureOf(raw: Readonly<Raw>, source: string): string {
  const archs = raw.architectures;
  if (!Array.isArray(archs) || typeof archs[0] !== "string") {
    throw new ConfigError(source, "architectures", "expected a non-empty list of strings");
  }
  return archs[0];
}

/**
 * Typed reads of config.json keys; a wrong value throws a ConfigError naming the file, the key and
 * the model type. Shared by {@link parseCommonConfig} and the family files.
 */
export class ConfigReader {
  constructor(readonly raw: Readonly<Raw>, readonly source: string, readonly model: string) {}

  /** A reader for `raw`, naming its `model_type` in errors. */
  static of(raw: Readonly<Raw>, source: string): ConfigReader {
    return new ConfigReader(
      raw,
      source,
      typeof raw.model_type === "string" ? raw.model_type : "unknown",
    );
  }

  fail(key: string, what: string): never {
    throw new ConfigError(this.source, key, `${what} (model type ${this.model})`);
  }

  has(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
  }

  int(key: string, fallback?: number): number {
    const v = this.raw[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      this.fail(key, "required key is missing");
    }
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
      this.fail(key, `expected a positive integer, got ${JSON.stringify(v)}`);
    }
    return v;
  }

  num(key: string, fallback: number): number {
    const v = this.raw[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== "number" || !Number.isFinite(v)) {
      this.fail(key, `expected a number, got ${JSON.stringify(v)}`);
    }
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.raw[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== "boolean") this.fail(key, `expected true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  str(key: string, fallback: string): string {
    const v = this.raw[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== "string") this.fail(key, `expected a string, got ${JSON.stringify(v)}`);
    return v;
  }

  ids(key: string): number[] {
    const v = this.raw[key];
    if (v === undefined || v === null) return [];
    const list = Array.isArray(v) ? v : [v];
    for (const id of list) {
      if (typeof id !== "number" || !Number.isInteger(id) || id < 0) {
        this.fail(key, `expected a token id or a list of them, got ${JSON.stringify(v)}`);
      }
    }
    return list as number[];
  }
}

const DTYPES: Record<string, StorageDType> = {
  float32: "float32",
  float: "float32",
  float16: "float16",
  half: "float16",
  bfloat16: "bfloat16",
};

function parseDType(r: ConfigReader): StorageDType {
  const key = r.has("dtype") ? "dtype" : "torch_dtype";
  const v = r.raw[key];
  if (v === undefined || v === null) return "float16";
  const name = typeof v === "string" ? v.replace(/^torch\./, "") : "";
  const dtype = DTYPES[name];
  if (!dtype) {
    throw new ConfigError(
      r.source,
      key,
      `unsupported dtype ${JSON.stringify(v)}; expected one of float32, float16, bfloat16`,
    );
  }
  return dtype;
}

/** Keys of a rope dict that are not scaling parameters. */
const ROPE_META = new Set(["rope_type", "type", "rope_theta", "partial_rotary_factor"]);

/** The scaling keys of a rope dict: everything but its type, theta and partial rotary factor. */
export function ropeScalingParams(p: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const rest: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(p)) if (!ROPE_META.has(k)) rest[k] = v;
  return rest;
}

function parseRope(
  r: ConfigReader,
  defaultTheta: number,
  aliases: Readonly<Record<string, string>>,
): RopeConfig {
  const params = r.raw.rope_parameters ?? r.raw.rope_scaling;
  if (
    params !== undefined && params !== null && (typeof params !== "object" || Array.isArray(params))
  ) {
    const key = r.raw.rope_parameters !== undefined ? "rope_parameters" : "rope_scaling";
    throw new ConfigError(r.source, key, `expected an object, got ${JSON.stringify(params)}`);
  }
  const p = (params ?? {}) as Raw;
  const named = p.rope_type ?? p.type ?? "default";
  if (typeof named !== "string") {
    const key = r.raw.rope_parameters !== undefined ? "rope_parameters" : "rope_scaling";
    const field = p.rope_type !== undefined && p.rope_type !== null ? "rope_type" : "type";
    throw new ConfigError(
      r.source,
      `${key}.${field}`,
      `expected a rope type name, got ${JSON.stringify(named)}`,
    );
  }
  const type = Object.hasOwn(aliases, named) ? aliases[named] : named;
  const theta = typeof p.rope_theta === "number" ? p.rope_theta : r.num("rope_theta", defaultTheta);
  const partial = typeof p.partial_rotary_factor === "number"
    ? p.partial_rotary_factor
    : r.num("partial_rotary_factor", 1);
  return { type, theta, partialRotaryFactor: partial, params: ropeScalingParams(p) };
}

/** Most decoder layers a config may declare (per-layer tables are built from the count). */
export const MAX_LAYERS = 65_536;

/**
 * The keys every decoder-only family shares. `source` names the file in errors.
 * Families add their own variants on top (see lib/models/).
 */
export function parseCommonConfig(
  raw: Readonly<Raw>,
  source: string,
  d: ConfigDefaults,
  o: ConfigOverrides = {},
): ModelConfig {
  const r = ConfigReader.of(raw, source);
  const modelType = r.model;
  const architecture = architectureOf(raw, source);
  const hiddenSize = r.int("hidden_size");
  const numHeads = r.int("num_attention_heads");
  const numKvHeads = o.numKvHeads === "heads"
    ? numHeads
    : o.numKvHeads ?? r.int("num_key_value_heads", numHeads);
  const numLayers = r.int("num_hidden_layers");
  if (numLayers > MAX_LAYERS) {
    throw new ConfigError(
      source,
      "num_hidden_layers",
      `${numLayers} is more than ${MAX_LAYERS} (model type ${modelType})`,
    );
  }
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(
      source,
      "num_key_value_heads",
      `${numKvHeads} does not divide num_attention_heads ${numHeads} (model type ${modelType})`,
    );
  }
  let headDim: number;
  if (o.headDim !== undefined) headDim = o.headDim;
  else if (r.has("head_dim")) headDim = r.int("head_dim");
  else {
    if (hiddenSize % numHeads !== 0) {
      throw new ConfigError(
        source,
        "head_dim",
        `missing, and hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads}`,
      );
    }
    headDim = hiddenSize / numHeads;
  }
  const rope = parseRope(r, d.ropeTheta, o.ropeTypeAliases ?? {});
  return {
    architecture,
    modelType,
    hiddenSize,
    intermediateSize: r.int("intermediate_size"),
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: r.int("vocab_size"),
    maxPositionEmbeddings: r.int("max_position_embeddings", d.maxPositionEmbeddings),
    rmsNormEps: r.num("rms_norm_eps", d.rmsNormEps),
    rope,
    layerRopes: new Array(numLayers).fill(rope),
    finalLogitSoftcap: 0,
    tieWordEmbeddings: r.bool("tie_word_embeddings", d.tieWordEmbeddings),
    attentionBias: r.bool("attention_bias", false),
    layerWindows: new Array(numLayers).fill(0),
    hiddenAct: r.str("hidden_act", d.hiddenAct),
    dtype: parseDType(r),
    bosTokenId: r.has("bos_token_id") ? r.ids("bos_token_id")[0] : null,
    eosTokenIds: r.ids("eos_token_id"),
    expertsPerToken: null,
    raw,
  };
}

/** Reads an optional positive integer of a family-specific key (e.g. `sliding_window`). */
export function optionalInt(raw: Readonly<Raw>, source: string, key: string): number | null {
  const v = raw[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    throw new ConfigError(
      source,
      key,
      `expected a positive integer or null, got ${JSON.stringify(v)}`,
    );
  }
  return v;
}
