/**
 * Mixture-of-experts pieces the MoE families share (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek):
 * router logits brought to the host, routing there (each family's own rule), and the routed
 * experts' gated MLPs run on only the tokens that chose them. Each expert is an on-demand group of
 * its layer ({@link expertGroup}), so a streamed layer reads only the experts its tokens route to.
 *
 * @module
 */
import type { DevPtr } from "../../ffi/backend.ts";
import type { ModelConfig } from "../config.ts";
import type { ExpectedTensor, LayerContext, PartWeights, ScratchSizes, Weight } from "./family.ts";
import {
  gatedMlp,
  type GatedMlpSpec,
  gatedMlpTensors,
  type LinearSpec,
  linearTensors,
  norm,
  type NormSpec,
  normTensors,
} from "./blocks.ts";

/** The experts each token chose and their weights, token-major. */
export interface Routing {
  /** Choices per token. */
  k: number;
  /** [T·k] expert index of each choice. */
  experts: Int32Array;
  /** [T·k] weight of each choice. */
  weights: Float32Array;
}

const EXPERT = /(?:^|\.)experts\.(\d+)\./;

/** The on-demand group of an expert tensor (`…experts.{e}.…` → "expert.e"), else null. */
export function expertGroup(local: string): string | null {
  const m = EXPERT.exec(local);
  return m ? `expert.${m[1]}` : null;
}

/** x[T, D] · W[E, D]ᵀ on the device, downloaded: [T, E] router logits on the host. */
export function routerLogits(
  ctx: LayerContext<ModelConfig, "router">,
  x: DevPtr,
  w: Weight,
): Float32Array {
  const { be, T, cfg } = ctx;
  const E = w.shape[0], out = ctx.s.router;
  be.matmul(out, x, w.ptr, w.dtype, null, T, E, cfg.hiddenSize);
  const host = new Float32Array(T * E);
  be.download(host, out);
  return host;
}

const f32 = Math.fround;

/** Row-wise softmax in float32 steps (as torch's float softmax). */
export function softmaxRows(logits: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const row = logits.subarray(r * cols, (r + 1) * cols);
    const max = Math.max(...row);
    let sum = 0;
    for (let c = 0; c < cols; c++) {
      out[r * cols + c] = f32(Math.exp(f32(row[c] - max)));
      sum = f32(sum + out[r * cols + c]);
    }
    for (let c = 0; c < cols; c++) out[r * cols + c] = f32(out[r * cols + c] / sum);
  }
  return out;
}

/** Indices of the k largest of `v` (descending; the lower index first on ties, like torch.topk). */
export function topK(v: ArrayLike<number>, k: number): number[] {
  const idx = Array.from({ length: v.length }, (_, i) => i);
  idx.sort((a, b) => v[b] - v[a] || a - b);
  return idx.slice(0, k);
}

/**
 * Softmax over each token's router logits, the top k probabilities, optionally renormalized to
 * sum 1 (Mixtral always; Qwen-MoE with `norm_topk_prob`).
 */
export function softmaxTopK(
  logits: Float32Array,
  T: number,
  E: number,
  k: number,
  renormalize: boolean,
): Routing {
  const probs = softmaxRows(logits, T, E);
  const experts = new Int32Array(T * k), weights = new Float32Array(T * k);
  for (let t = 0; t < T; t++) {
    const p = probs.subarray(t * E, (t + 1) * E);
    const top = topK(p, k);
    let sum = 0;
    for (const e of top) sum = f32(sum + p[e]);
    top.forEach((e, j) => {
      experts[t * k + j] = e;
      weights[t * k + j] = renormalize ? f32(p[e] / sum) : p[e];
    });
  }
  return { k, experts, weights };
}

/**
 * acc[T, D] = Σ over each token's choices of weight · expert(h[token]), experts in ascending
 * order (as transformers accumulates them). Issues the reads of all chosen experts' groups at
 * once, in that order, and runs each expert as soon as its bytes are there, so later reads overlap
 * earlier experts' compute; experts no token chose are neither read nor run. Each expert costs a
 * fixed number of backend calls, whatever the number of tokens: one gather of its tokens' rows
 * (none when every token chose it), its MLP on that batch, one weighted scatter-add into acc
 * (rl_scatter_add_rows rounds weight · row before the add, as rl_scale then rl_add did).
 */
export async function routedExperts(
  ctx: LayerContext<ModelConfig, MoeBuffers>,
  w: PartWeights,
  h: DevPtr,
  acc: DevPtr,
  routing: Routing,
  names: (expert: number) => GatedMlpSpec,
  inter: number,
): Promise<void> {
  const { be, cfg, T } = ctx, D = cfg.hiddenSize;
  const { k, experts, weights } = routing;
  const byExpert = new Map<number, { tokens: number[]; weights: number[] }>();
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < k; j++) {
      const e = experts[t * k + j];
      let s = byExpert.get(e);
      if (!s) byExpert.set(e, s = { tokens: [], weights: [] });
      s.tokens.push(t);
      s.weights.push(weights[t * k + j]);
    }
  }
  ctx.onRoute?.(experts);
  const order = [...byExpert.keys()].sort((a, b) => a - b);
  w.prefetch(order.map((e) => `expert.${e}`));
  be.scale(acc, h, 0, T * D); // zeros (h is finite: a non-finite h is reported by the engine)
  const { moe_in: xin, moe_out: out } = ctx.s;
  for (const e of order) {
    await w.load([`expert.${e}`]);
    const { tokens, weights: wts } = byExpert.get(e)!;
    const n = tokens.length, rows = Int32Array.from(tokens);
    let x = h;
    if (n < T) {
      be.gatherRows(xin, h, rows, D, T);
      x = xin;
    }
    gatedMlp(ctx, w, names(e), x, out, n, inter, expertBuffers(ctx));
    be.scatterAddRows(acc, out, rows, Float32Array.from(wts), D, T);
  }
}

/** The scratch of a MoE MLP (expert MLPs run on varying row counts: buffers of their own). */
export type MoeBuffers =
  | "h"
  | "router"
  | "moe_in"
  | "moe_out"
  | "moe_acc"
  | "moe_shared"
  | "moe_gate"
  | "moe_up";

/** Floats per token row of each MoE buffer. */
export function moeScratch(spec: MoeSpec, D: number): ScratchSizes<MoeBuffers> {
  const inter = Math.max(spec.inter, spec.shared?.inter ?? 0);
  return {
    h: D,
    router: spec.experts,
    moe_in: D,
    moe_out: D,
    moe_acc: D,
    moe_shared: D,
    moe_gate: inter,
    moe_up: inter,
  };
}

function expertBuffers(ctx: LayerContext<ModelConfig, MoeBuffers>) {
  return { gate: ctx.s.moe_gate, up: ctx.s.moe_up };
}

/** One family's sparse MoE MLP: its tensors (each named once) and sizes. */
export interface MoeSpec {
  /** The norm before the MoE (post_attention_layernorm). */
  norm: NormSpec;
  /** The router, a linear [experts, D]. */
  router: LinearSpec;
  experts: number;
  /** Weight names of expert e. */
  expert(e: number): GatedMlpSpec;
  /** Intermediate size of one expert. */
  inter: number;
  /**
   * Shared expert(s) every token runs, added to the routed ones; with `gate` (a [1, D] linear,
   * Qwen2-MoE) each token's output is scaled by the sigmoid of it first.
   */
  shared?: { mlp: GatedMlpSpec; inter: number; gate?: LinearSpec };
}

/** The tensors of a MoE MLP of `spec` over hidden size D. */
export function moeTensors(spec: MoeSpec, D: number): ExpectedTensor[] {
  const t = [...normTensors(spec.norm, D), ...linearTensors(spec.router, spec.experts, D)];
  for (let e = 0; e < spec.experts; e++) t.push(...gatedMlpTensors(spec.expert(e), D, spec.inter));
  if (spec.shared) {
    t.push(...gatedMlpTensors(spec.shared.mlp, D, spec.shared.inter));
    if (spec.shared.gate) t.push(...linearTensors(spec.shared.gate, 1, D));
  }
  return t;
}

/**
 * x += routed experts (+ shared expert) of norm(x), pre-norm; `route` is the family's routing
 * rule over the router logits [T, E].
 */
export async function sparseMoeBlock(
  ctx: LayerContext<ModelConfig, MoeBuffers>,
  w: PartWeights,
  moe: MoeSpec,
  route: (logits: Float32Array) => Routing,
): Promise<void> {
  const { be, cfg, T } = ctx, D = cfg.hiddenSize;
  const { h, moe_acc: acc } = ctx.s;
  norm(ctx, w, moe.norm, h, ctx.x, T, D);
  const routing = route(routerLogits(ctx, h, w.get(`${moe.router.name}.weight`)));
  await routedExperts(ctx, w, h, acc, routing, moe.expert, moe.inter);
  if (moe.shared) {
    const shared = ctx.s.moe_shared;
    gatedMlp(ctx, w, moe.shared.mlp, h, shared, T, moe.shared.inter, expertBuffers(ctx));
    if (moe.shared.gate) {
      // acc[t] += sigmoid(gate[t]) · shared[t]: one weighted scatter-add onto the same rows.
      const gate = routerLogits(ctx, h, w.get(`${moe.shared.gate.name}.weight`)); // [T, 1]
      const s = new Float32Array(T), rows = new Int32Array(T);
      for (let t = 0; t < T; t++) {
        s[t] = 1 / (1 + Math.exp(-gate[t]));
        rows[t] = t;
      }
      be.scatterAddRows(acc, shared, rows, s, D, T);
    } else {
      be.add(acc, acc, shared, T * D);
    }
  }
  be.add(ctx.x, ctx.x, acc, T * D);
}
