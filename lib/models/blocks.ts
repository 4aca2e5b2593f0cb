/**
 * The blocks decoder layers are made of — norms, linears, rotary attention, the gated MLP — each
 * described once by a spec naming its tensors. The same spec gives the tensors a family expects
 * (`*Tensors`: names and shapes, which also drive placement through `placeExpected`) and the
 * lookups of its forward (`norm`, `linear`, `attention`, `gatedMlp`), so a tensor name is written
 * in one place per family.
 *
 * A layer then reads like llama2.c's forward:
 *
 *   h = norm(x); o = attention(h); x += o; h = norm(x); o = mlp(h); x += o
 *
 * @module
 */
import type { DevPtr } from "../../ffi/backend.ts";
import type { ModelConfig } from "../config.ts";
import type { ExpectedTensor, LayerContext, PartWeights, ScratchSizes } from "./family.ts";
import { ACTIVATIONS } from "./activations.ts";

/** A norm over the last dim, tensors `<name>.weight` (and `<name>.bias` for LayerNorm). */
export interface NormSpec {
  name: string;
  /** "rms": x̂·w; "rms1": x̂·(1 + w) (Gemma); "layer": LayerNorm with bias (Phi). */
  kind: "rms" | "rms1" | "layer";
  /** Its epsilon when it is not the config's `rmsNormEps`. */
  eps?: number;
}

/** A linear `<name>.weight` [out, in], with `<name>.bias` [out] when `bias`. */
export interface LinearSpec {
  name: string;
  bias: boolean;
}

/** Rotary self-attention: projections, optional per-head q/k norms, the softmax scale. */
export interface AttentionSpec {
  q: LinearSpec;
  k: LinearSpec;
  v: LinearSpec;
  o: LinearSpec;
  /** Norms of each query and key head (over head_dim) before the rope (Qwen3, Gemma 3, Phi). */
  qkNorm?: { q: NormSpec; k: NormSpec };
  scale: number;
  /** > 0: score = softcap · tanh(score / softcap) (Gemma 2). */
  softcap?: number;
}

/** down(act(gate(x)) · up(x)). */
export interface GatedMlpSpec {
  gate: LinearSpec;
  up: LinearSpec;
  down: LinearSpec;
}

/**
 * `build(cfg)` once per config object: a spec is read by every layer of every step, so it is built
 * once and shared (treat it as immutable).
 */
export function perConfig<C extends object, T>(build: (cfg: C) => T): (cfg: C) => T {
  const cache = new WeakMap<C, T>();
  return (cfg) => {
    let v = cache.get(cfg);
    if (v === undefined) cache.set(cfg, v = build(cfg));
    return v;
  };
}

/** A linear spec without bias (`<prefix>.<name>`). */
export function plain(name: string): LinearSpec {
  return { name, bias: false };
}

/** The gate/up/down projections under `prefix` (`mlp`, `mlp.experts.3`, ...), no biases. */
export function gatedMlpNames(prefix: string): GatedMlpSpec {
  return {
    gate: plain(`${prefix}.gate_proj`),
    up: plain(`${prefix}.up_proj`),
    down: plain(`${prefix}.down_proj`),
  };
}

// ------------------------------------------------------------------------------------------------
// Scratch: the buffers each block uses, in fp32 floats per token row

/** A layer's normed input and block output, [T, hidden]. */
export type LayerBuffers = "h" | "o";
/** Queries, new keys and values, attention output. */
export type AttentionBuffers = "q" | "k" | "v" | "attn";
/** The gated MLP's two intermediate rows. */
export type MlpBuffers = "gate" | "up";

export function layerScratch(cfg: ModelConfig): ScratchSizes<LayerBuffers> {
  return { h: cfg.hiddenSize, o: cfg.hiddenSize };
}

export function attentionScratch(cfg: ModelConfig): ScratchSizes<AttentionBuffers> {
  const q = cfg.numHeads * cfg.headDim, kv = cfg.numKvHeads * cfg.headDim;
  return { q, k: kv, v: kv, attn: q };
}

export function mlpScratch(inter: number): ScratchSizes<MlpBuffers> {
  return { gate: inter, up: inter };
}

/** The scratch of a pre-norm attention + gated MLP layer. */
export function denseLayerScratch(
  cfg: ModelConfig,
): ScratchSizes<LayerBuffers | AttentionBuffers | MlpBuffers> {
  return { ...layerScratch(cfg), ...attentionScratch(cfg), ...mlpScratch(cfg.intermediateSize) };
}

// ------------------------------------------------------------------------------------------------
// Tensors

export function normTensors(n: NormSpec, dim: number): ExpectedTensor[] {
  const t = [{ local: `${n.name}.weight`, shape: [dim] }];
  if (n.kind === "layer") t.push({ local: `${n.name}.bias`, shape: [dim] });
  return t;
}

export function linearTensors(l: LinearSpec, out: number, inDim: number): ExpectedTensor[] {
  const t: ExpectedTensor[] = [{ local: `${l.name}.weight`, shape: [out, inDim], matmul: true }];
  if (l.bias) t.push({ local: `${l.name}.bias`, shape: [out] });
  return t;
}

/** Weights of the attention of `heads`/`kvHeads` heads of `headDim` over `hidden`. */
export function attentionTensors(
  a: AttentionSpec,
  hidden: number,
  heads: number,
  kvHeads: number,
  headDim: number,
): ExpectedTensor[] {
  const qDim = heads * headDim, kvDim = kvHeads * headDim;
  return [
    ...linearTensors(a.q, qDim, hidden),
    ...linearTensors(a.k, kvDim, hidden),
    ...linearTensors(a.v, kvDim, hidden),
    ...(a.qkNorm ? [...normTensors(a.qkNorm.q, headDim), ...normTensors(a.qkNorm.k, headDim)] : []),
    ...linearTensors(a.o, hidden, qDim),
  ];
}

export function gatedMlpTensors(m: GatedMlpSpec, hidden: number, inter: number): ExpectedTensor[] {
  return [
    ...linearTensors(m.gate, inter, hidden),
    ...linearTensors(m.up, inter, hidden),
    ...linearTensors(m.down, hidden, inter),
  ];
}

// ------------------------------------------------------------------------------------------------
// Forward

/** out = norm(x) over `rows` rows of `dim`; out may equal x. */
export function norm(
  ctx: LayerContext,
  w: PartWeights,
  n: NormSpec,
  out: DevPtr,
  x: DevPtr,
  rows: number,
  dim: number,
): void {
  const wt = w.get(`${n.name}.weight`), eps = n.eps ?? ctx.cfg.rmsNormEps;
  if (n.kind === "layer") {
    const b = w.get(`${n.name}.bias`);
    ctx.be.layernorm(out, x, wt.ptr, b.ptr, wt.dtype, rows, dim, eps);
  } else ctx.be.rmsnorm(out, x, wt.ptr, wt.dtype, rows, dim, eps, n.kind === "rms1" ? 1 : 0);
}

/** out [rows, N] = x [rows, K] · Wᵀ (+ bias). */
export function linear(
  ctx: LayerContext,
  w: PartWeights,
  l: LinearSpec,
  out: DevPtr,
  x: DevPtr,
  rows: number,
  N: number,
  K: number,
): void {
  const wt = w.get(`${l.name}.weight`), bias = l.bias ? w.get(`${l.name}.bias`) : null;
  ctx.be.matmul(out, x, wt.ptr, wt.dtype, bias?.ptr ?? null, rows, N, K, bias?.dtype);
}

/**
 * At T = 1, the linears `ls` (no bias, one dtype and input width `K`) as one matmul of `N` output
 * rows into `out`, when their weights lie back to back in the part and the engine laid the
 * outputs out back to back (LayerContext.joinedScratch, `out` the first buffer). One call reads
 * one contiguous stream of weights (the q, k, v and gate, up projections of a decode step).
 * Returns false, having done nothing, when that does not hold.
 */
export function linearJoined(
  ctx: LayerContext,
  w: PartWeights,
  ls: readonly LinearSpec[],
  out: DevPtr,
  x: DevPtr,
  N: number,
  K: number,
): boolean {
  if (ctx.T !== 1 || !ctx.joinedScratch || ls.some((l) => l.bias)) return false;
  const ws = ls.map((l) => w.get(`${l.name}.weight`));
  for (let i = 1; i < ws.length; i++) {
    const a = ws[i - 1], b = ws[i];
    if (
      b.dtype !== a.dtype || b.shape[1] !== K || a.shape[1] !== K || a.offset === undefined ||
      a.nbytes === undefined || b.offset !== a.offset + a.nbytes
    ) return false;
  }
  if (ws.reduce((n, t) => n + t.shape[0], 0) !== N) return false;
  ctx.be.matmul(out, x, ws[0].ptr, ws[0].dtype, null, 1, N, K);
  return true;
}

/**
 * out [T, D] = o_proj(attention(rope(q), rope(k), v)) of the normed input h [T, D]; the new keys
 * and values go into the KV cache (ctx.attention).
 */
export function attention(
  ctx: LayerContext<ModelConfig, AttentionBuffers>,
  w: PartWeights,
  a: AttentionSpec,
  h: DevPtr,
  out: DevPtr,
): void {
  const { be, cfg, T } = ctx, { q, k, v, attn } = ctx.s;
  const D = cfg.hiddenSize, hd = cfg.headDim, H = cfg.numHeads, KV = cfg.numKvHeads;
  const qDim = H * hd, kvDim = KV * hd;
  if (!linearJoined(ctx, w, [a.q, a.k, a.v], q, h, qDim + 2 * kvDim, D)) {
    linear(ctx, w, a.q, q, h, T, qDim, D);
    linear(ctx, w, a.k, k, h, T, kvDim, D);
    linear(ctx, w, a.v, v, h, T, kvDim, D);
  }
  if (a.qkNorm) {
    // [T, heads · hd] is T · heads rows of hd: one norm row per head.
    norm(ctx, w, a.qkNorm.q, q, q, T * H, hd);
    norm(ctx, w, a.qkNorm.k, k, k, T * KV, hd);
  }
  const { rotDim, invFreq, mscale } = ctx.rope;
  be.rope(q, T, qDim, H, hd, rotDim, ctx.positions, invFreq, mscale);
  be.rope(k, T, kvDim, KV, hd, rotDim, ctx.positions, invFreq, mscale);
  ctx.attention({
    q,
    qStride: qDim,
    k,
    v,
    kvStride: kvDim,
    out: attn,
    scale: a.scale,
    softcap: a.softcap,
  });
  linear(ctx, w, a.o, out, attn, T, D, qDim);
}

/**
 * out [rows, D] = down(act(gate(x)) · up(x)) of x [rows, D], intermediate size `inter`, through
 * the buffers `gate` and `up` of rows × inter floats.
 */
export function gatedMlp(
  ctx: LayerContext,
  w: PartWeights,
  m: GatedMlpSpec,
  x: DevPtr,
  out: DevPtr,
  rows: number,
  inter: number,
  { gate, up }: { gate: DevPtr; up: DevPtr },
): void {
  const { be, cfg } = ctx, D = cfg.hiddenSize;
  const own = gate === (ctx.s as Record<string, DevPtr>).gate &&
    up === (ctx.s as Record<string, DevPtr>).up;
  if (!own || rows !== ctx.T || !linearJoined(ctx, w, [m.gate, m.up], gate, x, 2 * inter, D)) {
    linear(ctx, w, m.gate, gate, x, rows, inter, D);
    linear(ctx, w, m.up, up, x, rows, inter, D);
  }
  be.actMul(gate, gate, up, rows, inter, inter, ACTIVATIONS[cfg.hiddenAct]);
  linear(ctx, w, m.down, out, gate, rows, D, inter);
}

/** x += o. */
export function residual(ctx: LayerContext, o: DevPtr): void {
  ctx.be.add(ctx.x, ctx.x, o, ctx.T * ctx.cfg.hiddenSize);
}
