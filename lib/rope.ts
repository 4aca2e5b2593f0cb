/**
 * Rotary embedding frequencies for every rope variant, as transformers computes them
 * (modeling_rope_utils.py). The backend only ever sees `inv_freq` and a scale (`mscale`), so a new
 * variant is a function here, not a kernel.
 *
 * @module
 */
import type { RopeConfig } from "./config.ts";
import { ConfigError, InternalError } from "./errors.ts";

/** What the backend's rope op needs for one forward pass. */
export interface RopeTable {
  /** Number of leading dims of each head that rotate (even). */
  rotDim: number;
  /** rotDim / 2 inverse frequencies. */
  invFreq: Float32Array;
  /** The "attention scaling" multiplied into cos and sin (1 except yarn/longrope). */
  mscale: number;
}

/** Shape facts the variants need besides the rope dict. */
export interface RopeShape {
  headDim: number;
  maxPositionEmbeddings: number;
}

const f32 = Math.fround;

/** 1 / base^(2i/dim) in float32 steps, as torch does it. */
function baseInvFreq(base: number, dim: number): Float32Array {
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) out[i] = f32(1 / f32(Math.pow(base, f32(f32(2 * i) / dim))));
  return out;
}

function num(rope: RopeConfig, key: string, source: string): number {
  const v = rope.params[key];
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new ConfigError(source, `rope_scaling.${key}`, `rope type ${rope.type} needs a number`);
  }
  return v;
}

function optNum(rope: RopeConfig, key: string): number | undefined {
  const v = rope.params[key];
  return typeof v === "number" ? v : undefined;
}

/** The rope types {@link ropeTable} implements. */
export const ROPE_TYPES = [
  "default",
  "linear",
  "dynamic",
  "llama3",
  "yarn",
  "longrope",
  "qwen_dynamic_ntk",
] as const;

/**
 * Longest sequence a model may generate: its context (max_position_embeddings), or `maxSeqLen`
 * alone when every layer's rope is a dynamic NTK one, which exists to run past the context (as
 * transformers' generate does; the default maxSeqLen never exceeds the context).
 */
export function sequenceLimit(
  cfg: { maxPositionEmbeddings: number; layerRopes: readonly RopeConfig[] },
  maxSeqLen: number,
): number {
  const dynamic = cfg.layerRopes.length > 0 &&
    cfg.layerRopes.every((r) => r.type === "dynamic" || r.type === "qwen_dynamic_ntk");
  return dynamic ? maxSeqLen : Math.min(maxSeqLen, cfg.maxPositionEmbeddings);
}

/**
 * Whether the table depends on the forward's length (`seqLen` of {@link ropeTable}), so a cached
 * one must be rebuilt when the length changes: "dynamic" rescales, "longrope" switches factors,
 * "qwen_dynamic_ntk" picks its NTK alpha.
 */
export function ropeDependsOnLength(rope: RopeConfig): boolean {
  return rope.type === "dynamic" || rope.type === "longrope" || rope.type === "qwen_dynamic_ntk";
}

/**
 * QWen v1's dynamic-NTK alpha for a forward over `len` positions (modeling_qwen.py
 * `get_ntk_alpha`): `max(2^ceil(log2(len / seq_length) + 1) - 1, 1)`, with the logarithm taken as
 * Python's `math.log(x, 2)` (log x / log 2), so exact powers of two land where the original's do.
 */
export function qwenNtkAlpha(len: number, seqLength: number): number {
  const context = Math.log(len / seqLength) / Math.log(2) + 1;
  return Math.max(2 ** Math.ceil(context) - 1, 1);
}

/**
 * QWen v1's rope for NTK alpha `alpha` (modeling_qwen.py RotaryEmbedding): base · α^(dim/(dim−2))
 * over the rotary dims, the base rounded to float32 as torch's `base ** arange(...)` takes it.
 */
export function qwenNtkTable(theta: number, dim: number, alpha: number): RopeTable {
  const base = alpha === 1 ? theta : f32(theta * Math.pow(alpha, dim / (dim - 2)));
  return { rotDim: dim, invFreq: baseInvFreq(base, dim), mscale: 1 };
}

/** The length a sticky dynamic rope was last scaled for (0: not yet), per rope object. */
const stickyScaled = new WeakMap<RopeConfig, { seqLen: number }>();

/**
 * A copy of a "dynamic" rope whose scaling is sticky, as InternLM2's remote code does it: a
 * forward whose length passes max_position_embeddings rescales the table for that length and the
 * table stays, so a later forward within max_position_embeddings uses the last scaled one (plain
 * "dynamic", like transformers' own reset below the original length, goes back to the base
 * table). The state lives with the returned object: one per parsed config, i.e. per loaded model.
 */
export function stickyDynamic(rope: RopeConfig): RopeConfig {
  const copy = { ...rope };
  stickyScaled.set(copy, { seqLen: 0 });
  return copy;
}

/** Fails early (at load) for a rope type we do not implement, naming the key. */
export function checkRopeType(
  rope: RopeConfig,
  source: string,
  key = "rope_scaling.rope_type",
): void {
  if (!(ROPE_TYPES as readonly string[]).includes(rope.type)) {
    throw new ConfigError(
      source,
      key,
      `unsupported rope type "${rope.type}"; supported: ${ROPE_TYPES.join(", ")}`,
    );
  }
}

/**
 * The rope table for a forward pass whose largest position is `seqLen - 1`
 * ("dynamic" and "longrope" depend on it; see {@link ropeDependsOnLength}).
 */
export function ropeTable(
  rope: RopeConfig,
  shape: RopeShape,
  seqLen: number,
  source: string,
): RopeTable {
  const dim = Math.trunc(shape.headDim * rope.partialRotaryFactor);
  const base = rope.theta;
  switch (rope.type) {
    case "default":
      return { rotDim: dim, invFreq: baseInvFreq(base, dim), mscale: 1 };
    case "linear": {
      const factor = num(rope, "factor", source);
      return { rotDim: dim, invFreq: baseInvFreq(base, dim).map((x) => x / factor), mscale: 1 };
    }
    case "dynamic": {
      const factor = num(rope, "factor", source);
      const maxPos = shape.maxPositionEmbeddings;
      const sticky = stickyScaled.get(rope);
      if (sticky && seqLen > maxPos) sticky.seqLen = seqLen;
      const len = Math.max(sticky ? sticky.seqLen : seqLen, maxPos);
      const scaled = base * Math.pow(factor * len / maxPos - (factor - 1), dim / (dim - 2));
      return { rotDim: dim, invFreq: baseInvFreq(scaled, dim), mscale: 1 };
    }
    case "llama3": {
      const factor = num(rope, "factor", source);
      const low = num(rope, "low_freq_factor", source);
      const high = num(rope, "high_freq_factor", source);
      const oldLen = num(rope, "original_max_position_embeddings", source);
      const lowWavelen = oldLen / low;
      const highWavelen = oldLen / high;
      const inv = baseInvFreq(base, dim);
      const out = new Float32Array(inv.length);
      for (let i = 0; i < inv.length; i++) {
        const wavelen = f32(2 * Math.PI / inv[i]);
        const scaled = wavelen > lowWavelen ? f32(inv[i] / factor) : inv[i];
        if (wavelen < highWavelen || wavelen > lowWavelen) out[i] = scaled;
        else {
          const smooth = f32(f32(oldLen / wavelen - low) / (high - low));
          out[i] = f32(f32(f32(1 - smooth) * scaled) / factor + f32(smooth * scaled));
        }
      }
      return { rotDim: dim, invFreq: out, mscale: 1 };
    }
    case "yarn":
      return yarn(rope, shape, dim, source);
    case "longrope":
      return longrope(rope, shape, dim, seqLen, source);
    case "qwen_dynamic_ntk":
      // QWen v1 (lib/models/qwen.ts): alpha from this forward's length; with a KV cache the family
      // keeps the alpha of the forward that filled it (the original's _ntk_alpha_cached_list).
      return qwenNtkTable(base, dim, qwenNtkAlpha(seqLen, num(rope, "seq_length", source)));
  }
  checkRopeType(rope, source);
  throw new InternalError("unreachable rope type");
}

function yarn(rope: RopeConfig, shape: RopeShape, dim: number, source: string): RopeTable {
  const base = rope.theta;
  const origMax = num(rope, "original_max_position_embeddings", source);
  const factor = optNum(rope, "factor") ?? shape.maxPositionEmbeddings / origMax;
  const mscaleOf = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
  let attention = optNum(rope, "attention_factor");
  if (attention === undefined) {
    const m = optNum(rope, "mscale");
    const mAll = optNum(rope, "mscale_all_dim");
    attention = m && mAll ? mscaleOf(factor, m) / mscaleOf(factor, mAll) : mscaleOf(factor);
  }
  const betaFast = optNum(rope, "beta_fast") || 32;
  const betaSlow = optNum(rope, "beta_slow") || 1;
  const corr = (rot: number) =>
    (dim * Math.log(origMax / (rot * 2 * Math.PI))) / (2 * Math.log(base));
  const truncate = rope.params.truncate !== false;
  let lo = corr(betaFast);
  let hi = corr(betaSlow);
  if (truncate) {
    lo = Math.floor(lo);
    hi = Math.ceil(hi);
  }
  lo = Math.max(lo, 0);
  hi = Math.min(hi, dim - 1);
  if (lo === hi) hi += 0.001;
  const inv = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) {
    const posFreq = f32(Math.pow(base, f32(f32(2 * i) / dim)));
    const extrapolation = f32(1 / posFreq);
    const interpolation = f32(1 / f32(factor * posFreq));
    const ramp = Math.min(1, Math.max(0, f32(f32(i - lo) / f32(hi - lo))));
    const extraFactor = f32(1 - ramp);
    inv[i] = f32(f32(interpolation * f32(1 - extraFactor)) + f32(extrapolation * extraFactor));
  }
  return { rotDim: dim, invFreq: inv, mscale: attention };
}

function factors(rope: RopeConfig, key: string, n: number, source: string): number[] {
  const v = rope.params[key];
  if (!Array.isArray(v) || v.length !== n || !v.every((x) => typeof x === "number")) {
    throw new ConfigError(
      source,
      `rope_scaling.${key}`,
      `rope type longrope needs a list of ${n} numbers (rotary dims / 2)`,
    );
  }
  return v;
}

/**
 * LongRoPE (Phi-3): per-frequency divisors, `long_factor` when the forward reaches past
 * `original_max_position_embeddings` (transformers decides per forward from max(position) + 1),
 * else `short_factor`; the attention factor defaults to √(1 + ln s / ln original) with
 * s = `factor` or max_position_embeddings / original.
 */
function longrope(
  rope: RopeConfig,
  shape: RopeShape,
  dim: number,
  seqLen: number,
  source: string,
): RopeTable {
  const origMax = optNum(rope, "original_max_position_embeddings") ?? shape.maxPositionEmbeddings;
  const ext = factors(rope, seqLen > origMax ? "long_factor" : "short_factor", dim / 2, source);
  const factor = optNum(rope, "factor") ?? shape.maxPositionEmbeddings / origMax;
  const attention = optNum(rope, "attention_factor") ??
    (factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(origMax)));
  const inv = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) {
    inv[i] = f32(1 / f32(f32(ext[i]) * f32(Math.pow(rope.theta, f32(f32(2 * i) / dim)))));
  }
  return { rotDim: dim, invFreq: inv, mscale: attention };
}
