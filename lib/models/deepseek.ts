/**
 * DeepSeek V2 and V3: multi-head latent attention (MLA) and a routed + shared expert MoE.
 *
 * MLA: queries come from `q_proj`, or the q LoRA `q_b_proj(q_a_layernorm(q_a_proj(x)))`; keys and
 * values from a latent `kv_a_layernorm(kv_a_proj_with_mqa(x)[:kv_lora])` expanded per head by
 * `kv_b_proj` (per head: k_nope then v), plus one rope key `kv_a_proj_with_mqa(x)[kv_lora:]`
 * shared by every head. Query/key per head = [nope | rope]; rope acts on the interleaved pairs
 * (x0, x1), (x2, x3)… of the rope part. Softmax scale = qk_head_dim^-0.5 · mscale(factor,
 * mscale_all_dim)² with yarn; q_a_layernorm and kv_a_layernorm use eps 1e-6 (transformers builds
 * them without `rms_norm_eps`).
 *
 * The engine caches keys and values per head (numKvHeads = heads, headDim = max(nope + rope, v)),
 * and its attention takes one head_dim for q, k and v, so each layer builds, with exact 0/1
 * matrix products (x·1 + 0 is exact in fp32), keys [k_nope_h | k_rope], values [v_h | 0…] and
 * queries [q_nope | q_rope], the rope dims de-interleaved in both (q·k is unchanged) so the
 * backend's rotate-half rope applies at an offset of nope dims; the attention output is compacted
 * back to v dims per head before `o_proj`.
 *
 * MoE: layers from `first_k_dense_replace` on; a shared MLP of `moe_intermediate_size ·
 * n_shared_experts` is added to the routed experts. V2 routes with a softmax (`greedy`, or
 * `group_limited_greedy`: keep the `topk_group` groups with the best max probability), never
 * renormalized (transformers 5 ignores `norm_topk_prob` here); V3 with `noaux_tc`: sigmoid scores,
 * choice = score + `e_score_correction_bias`, group score = sum of its best two choices, weights =
 * the un-biased scores (renormalized with `norm_topk_prob`). Both × `routed_scaling_factor`.
 *
 * @module
 */
import type { ModelConfig } from "../config.ts";
import type { DevPtr } from "../../ffi/backend.ts";
import { bf16ToF32, f16ToF32 } from "../dtype.ts";
import { ConfigError } from "../errors.ts";
import type { ExpectedTensor, Family, LayerContext, Part, PartWeights, Weight } from "./family.ts";
import {
  expectedLlamaLike,
  LLAMA_DEFAULTS,
  mlpBlock,
  parseLlamaLike,
  placeExpected,
} from "./llama.ts";
import { expertGroup, mlpNames, type Routing, softmaxRows, sparseMoeBlock, topK } from "./moe.ts";

/** How a MoE layer picks its experts. */
export type TopkMethod = "greedy" | "group_limited_greedy" | "noaux_tc";

/** The routing knobs of {@link route}. */
export interface Router {
  method: TopkMethod;
  experts: number;
  topK: number;
  /** Expert groups (1 when the method has none). */
  nGroup: number;
  /** Groups kept per token. */
  topkGroup: number;
  /** Renormalize the chosen weights to sum 1 (noaux_tc only, as transformers). */
  normTopK: boolean;
  routedScaling: number;
}

/** The DeepSeek shape of a config, normalized by the families' parseConfig. */
export interface DeepseekShape {
  /** null: `q_proj` (no q LoRA). */
  qLoraRank: number | null;
  kvLoraRank: number;
  nope: number;
  rope: number;
  v: number;
  /** Rope pairs are (x0, x1), (x2, x3)… (else rotate-half within the rope dims). */
  interleaved: boolean;
  /** Attention softmax scale. */
  scale: number;
  router: Router;
  moeIntermediate: number;
  /** 0: no shared experts. */
  sharedIntermediate: number;
  /** Layers below this run a dense MLP of `intermediate_size`. */
  firstDense: number;
  /** Extra multi-token-prediction layers stored after the decoder (`model.layers.{N + i}`). */
  mtpLayers: number;
}

/** A DeepSeek config: the common one plus its MLA and MoE shape. */
export interface DeepseekConfig extends ModelConfig {
  deepseek: DeepseekShape;
  /** `deepseek.router.topK`. */
  expertsPerToken: number;
}

/** The normalized DeepSeek shape parsed by the families' parseConfig. */
export function deepseekShape(cfg: DeepseekConfig): DeepseekShape {
  return cfg.deepseek;
}

type Raw = Record<string, unknown>;

/** Transformers' config defaults that differ between V2 and V3. */
interface Defaults {
  maxPositionEmbeddings: number;
  experts: number;
  shared: number;
  moeIntermediate: number;
  routedScaling: number;
  nGroup: number | null;
  topkGroup: number | null;
  topK: number | null;
  firstDense: number;
  normTopK: boolean;
  mtpLayers: number;
}

function int(
  raw: Readonly<Raw>,
  source: string,
  key: string,
  fallback: number | null,
  min = 1,
): number {
  const v = raw[key] === undefined ? fallback : raw[key];
  if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
    throw new ConfigError(
      source,
      key,
      `expected an integer >= ${min}, got ${JSON.stringify(v ?? null)}`,
    );
  }
  return v;
}

function bool(raw: Readonly<Raw>, source: string, key: string, fallback: boolean): boolean {
  const v = raw[key] ?? fallback;
  if (typeof v !== "boolean") {
    throw new ConfigError(source, key, `expected true or false, got ${JSON.stringify(v)}`);
  }
  return v;
}

function yarnMscale(scale: number, m: number): number {
  return scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1;
}

/**
 * Parses a DeepSeek config (transformers-5 `rope_parameters` or hub `rope_theta` +
 * `rope_scaling: {type: yarn, …}`) into the engine's shape: headDim = max(nope + rope, v),
 * one KV head per query head, rope table for `qk_rope_head_dim`.
 */
function parseDeepseek(
  raw: Readonly<Raw>,
  source: string,
  d: Defaults,
  method: (raw: Readonly<Raw>) => TopkMethod,
  interleaved: boolean,
): DeepseekConfig {
  if (raw.quantization_config !== undefined && raw.quantization_config !== null) {
    throw new ConfigError(
      source,
      "quantization_config",
      "quantized (FP8) checkpoints are not supported; use a BF16 or FP16 conversion",
    );
  }
  const nope = int(raw, source, "qk_nope_head_dim", 128);
  const rope = int(raw, source, "qk_rope_head_dim", 64);
  if (rope % 2 !== 0) {
    throw new ConfigError(source, "qk_rope_head_dim", `must be even, got ${rope}`);
  }
  const v = int(raw, source, "v_head_dim", 128);
  const headDim = Math.max(nope + rope, v);
  // head_dim in the file is transformers' rope dim; attention runs on the padded qk head, with
  // keys and values cached per query head.
  const cfg = parseLlamaLike(
    raw,
    source,
    { ...LLAMA_DEFAULTS, maxPositionEmbeddings: d.maxPositionEmbeddings },
    { headDim, numKvHeads: "heads" },
  );
  cfg.ropeHeadDim = rope;
  if (cfg.rope.partialRotaryFactor !== 1) {
    throw new ConfigError(
      source,
      "partial_rotary_factor",
      `DeepSeek rotates all qk_rope_head_dim dims; got ${cfg.rope.partialRotaryFactor}`,
    );
  }
  const qLora = raw.q_lora_rank === null ? null : int(raw, source, "q_lora_rank", 1536);
  const kvLora = int(raw, source, "kv_lora_rank", 512);

  let scale = 1 / Math.sqrt(nope + rope);
  const p = cfg.rope.params;
  if (cfg.rope.type !== "default" && typeof p.mscale_all_dim === "number" && p.mscale_all_dim) {
    const orig = p.original_max_position_embeddings;
    const factor = typeof p.factor === "number"
      ? p.factor
      : typeof orig === "number"
      ? cfg.maxPositionEmbeddings / orig
      : NaN;
    if (!Number.isFinite(factor)) {
      throw new ConfigError(source, "rope_scaling.factor", "mscale_all_dim needs a factor");
    }
    const m = yarnMscale(factor, p.mscale_all_dim);
    scale = scale * m * m;
  }

  const E = int(raw, source, "n_routed_experts", d.experts);
  const k = int(raw, source, "num_experts_per_tok", d.topK);
  if (k > E) throw new ConfigError(source, "num_experts_per_tok", `${k} exceeds ${E} experts`);
  const m = method(raw);
  let nGroup = 1, topkGroup = 1;
  if (m !== "greedy") {
    nGroup = int(raw, source, "n_group", d.nGroup);
    topkGroup = int(raw, source, "topk_group", d.topkGroup);
    if (E % nGroup !== 0) {
      throw new ConfigError(source, "n_group", `${nGroup} does not divide ${E} routed experts`);
    }
    if (topkGroup > nGroup) {
      throw new ConfigError(source, "topk_group", `${topkGroup} exceeds n_group ${nGroup}`);
    }
    if (m === "noaux_tc" && E / nGroup < 2) {
      throw new ConfigError(source, "n_group", `noaux_tc needs 2 or more experts per group`);
    }
    if (k > topkGroup * (E / nGroup)) {
      throw new ConfigError(
        source,
        "num_experts_per_tok",
        `${k} exceeds the ${topkGroup * (E / nGroup)} experts of the topk_group kept groups`,
      );
    }
  }
  const routedScaling = raw.routed_scaling_factor ?? d.routedScaling;
  if (typeof routedScaling !== "number" || !Number.isFinite(routedScaling)) {
    throw new ConfigError(
      source,
      "routed_scaling_factor",
      `expected a number, got ${routedScaling}`,
    );
  }
  const moeIntermediate = int(raw, source, "moe_intermediate_size", d.moeIntermediate);
  const shared = raw.n_shared_experts === null
    ? 0
    : int(raw, source, "n_shared_experts", d.shared, 0);
  const mtpKey = "num_nextn_predict_layers" in raw ? "num_nextn_predict_layers" : "num_mtp_layers";
  const ds: DeepseekShape = {
    qLoraRank: qLora,
    kvLoraRank: kvLora,
    nope,
    rope,
    v,
    interleaved,
    scale,
    router: {
      method: m,
      experts: E,
      topK: k,
      nGroup,
      topkGroup,
      normTopK: bool(raw, source, "norm_topk_prob", d.normTopK),
      routedScaling,
    },
    moeIntermediate,
    sharedIntermediate: moeIntermediate * shared,
    firstDense: int(raw, source, "first_k_dense_replace", d.firstDense, 0),
    mtpLayers: raw[mtpKey] === null ? 0 : int(raw, source, mtpKey, d.mtpLayers, 0),
  };
  return { ...cfg, deepseek: ds, expertsPerToken: k };
}

// ------------------------------------------------------------------------------------------------
// Tensors

function expectedDeepseek(part: Part, cfg: DeepseekConfig): ExpectedTensor[] {
  const base = expectedLlamaLike(part, cfg);
  if (part.kind !== "layer") return base;
  const ds = deepseekShape(cfg), D = cfg.hiddenSize, H = cfg.numHeads;
  const qk = ds.nope + ds.rope, L = ds.kvLoraRank, bias = cfg.attentionBias;
  const a = (name: string, shape: number[]) => ({ local: `self_attn.${name}`, shape });
  const t: ExpectedTensor[] = base.filter((e) =>
    !e.local.startsWith("self_attn.") && !e.local.startsWith("mlp.")
  );
  if (ds.qLoraRank === null) t.push(a("q_proj.weight", [H * qk, D]));
  else {
    const R = ds.qLoraRank;
    t.push(
      a("q_a_proj.weight", [R, D]),
      a("q_a_layernorm.weight", [R]),
      a("q_b_proj.weight", [H * qk, R]),
    );
    if (bias) t.push(a("q_a_proj.bias", [R]));
  }
  t.push(
    a("kv_a_proj_with_mqa.weight", [L + ds.rope, D]),
    a("kv_a_layernorm.weight", [L]),
    a("kv_b_proj.weight", [H * (ds.nope + ds.v), L]),
    a("o_proj.weight", [D, H * ds.v]),
  );
  if (bias) t.push(a("kv_a_proj_with_mqa.bias", [L + ds.rope]), a("o_proj.bias", [D]));
  if (part.index < ds.firstDense) {
    return t.concat(base.filter((e) => e.local.startsWith("mlp.")));
  }
  const E = ds.router.experts, I = ds.moeIntermediate, S = ds.sharedIntermediate;
  t.push({ local: "mlp.gate.weight", shape: [E, D] });
  if (ds.router.method === "noaux_tc") {
    t.push({ local: "mlp.gate.e_score_correction_bias", shape: [E] });
  }
  const mlp = (p: string, inter: number) =>
    t.push(
      { local: `${p}.gate_proj.weight`, shape: [inter, D] },
      { local: `${p}.up_proj.weight`, shape: [inter, D] },
      { local: `${p}.down_proj.weight`, shape: [D, inter] },
    );
  if (S > 0) mlp("mlp.shared_experts", S);
  for (let e = 0; e < E; e++) mlp(`mlp.experts.${e}`, I);
  return t;
}

function placeDeepseek(name: string, cfg: DeepseekConfig) {
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(name);
  if (m) {
    const index = Number(m[1]);
    // Multi-token-prediction modules (V3): stored, never run.
    const mtp = deepseekShape(cfg).mtpLayers;
    if (index >= cfg.numLayers && index < cfg.numLayers + mtp) return { part: null, local: m[2] };
  }
  return placeExpected(name, cfg, expectedDeepseek);
}

// ------------------------------------------------------------------------------------------------
// Multi-head latent attention

/** Scratch buffers this module has filled with a constant (by pointer: a regrown one refills). */
const filled = new WeakSet<DevPtr>();

/** A constant fp32 matrix on the device, in a scratch buffer of its own, uploaded once. */
function constant(ctx: LayerContext, name: string, floats: number, build: () => Float32Array) {
  const p = ctx.buf(name, floats);
  if (!filled.has(p)) {
    ctx.be.upload(p, build());
    filled.add(p);
  }
  return p;
}

/** Source index inside the rope part of attention dim j (de-interleaving pairs, or identity). */
function ropeSource(ds: DeepseekShape, j: number): number {
  const half = ds.rope / 2;
  if (!ds.interleaved) return j;
  return j < half ? 2 * j : 2 * (j - half) + 1;
}

/** 0/1 matrix [rows, cols] with ones at (r, c) for each given pair. */
function selection(rows: number, cols: number, ones: [number, number][]): Float32Array {
  const m = new Float32Array(rows * cols);
  for (const [r, c] of ones) m[r * cols + c] = 1;
  return m;
}

function range<T>(n: number, f: (i: number) => T): T[] {
  return Array.from({ length: n }, (_, i) => f(i));
}

/** x += o_proj(MLA(input_layernorm(x))). */
export function mlaBlock(ctx: LayerContext<DeepseekConfig>, w: PartWeights): void {
  const { be, cfg, T } = ctx;
  const ds = deepseekShape(cfg), D = cfg.hiddenSize, H = cfg.numHeads, hd = cfg.headDim;
  const { nope, rope, v } = ds, qk = nope + rope, L = ds.kvLoraRank, kvw = nope + v;
  const tag = `${nope}.${rope}.${v}.${hd}.${ds.interleaved ? "i" : "h"}`;
  const h = ctx.buf("h", T * D);
  const norm = w.get("input_layernorm.weight");
  be.rmsnorm(h, ctx.x, norm.ptr, norm.dtype, T, D, cfg.rmsNormEps);
  const mm = (out: DevPtr, x: DevPtr, wt: Weight, N: number, K: number, bias: Weight | null) =>
    be.matmul(out, x, wt.ptr, wt.dtype, bias?.ptr ?? null, T, N, K);
  const f32 = (out: DevPtr, x: DevPtr, m: DevPtr, rows: number, N: number, K: number) =>
    be.matmul(out, x, m, "F32", null, rows, N, K);

  // Queries [T, H·qk], per head [nope | rope].
  let q = ctx.buf("mla_q", T * H * qk);
  if (ds.qLoraRank === null) mm(q, h, w.get("self_attn.q_proj.weight"), H * qk, D, null);
  else {
    const R = ds.qLoraRank, qa = ctx.buf("mla_qa", T * R);
    mm(qa, h, w.get("self_attn.q_a_proj.weight"), R, D, w.opt("self_attn.q_a_proj.bias"));
    const qn = w.get("self_attn.q_a_layernorm.weight");
    be.rmsnorm(qa, qa, qn.ptr, qn.dtype, T, R, 1e-6);
    mm(q, qa, w.get("self_attn.q_b_proj.weight"), H * qk, R, null);
  }
  if (ds.interleaved || hd !== qk) {
    // Per head [nope | rope de-interleaved | 0…]: rows of qk → rows of hd.
    const P = constant(ctx, `mla_Pq.${tag}`, hd * qk, () =>
      selection(hd, qk, [
        ...range(nope, (i): [number, number] => [i, i]),
        ...range(rope, (j): [number, number] => [nope + j, nope + ropeSource(ds, j)]),
      ]));
    const qh = ctx.buf("q", T * H * hd);
    f32(qh, q, P, T * H, hd, qk);
    q = qh;
  }

  // Latent [T, L] (normed) and the shared rope key [T, rope]: the two row ranges of kv_a.
  const kva = w.get("self_attn.kv_a_proj_with_mqa.weight"),
    kvaBias = w.opt(
      "self_attn.kv_a_proj_with_mqa.bias",
    );
  const rowBytes = D * (kva.dtype === "F32" ? 4 : 2), biasBytes = kva.dtype === "F32" ? 4 : 2;
  const lat = ctx.buf("mla_lat", T * L), kr = ctx.buf("mla_kr", T * rope);
  be.matmul(lat, h, kva.ptr, kva.dtype, kvaBias?.ptr ?? null, T, L, D);
  be.matmul(
    kr,
    h,
    be.view(kva.ptr, L * rowBytes),
    kva.dtype,
    kvaBias ? be.view(kvaBias.ptr, L * biasBytes) : null,
    T,
    rope,
    D,
  );
  const kvn = w.get("self_attn.kv_a_layernorm.weight");
  be.rmsnorm(lat, lat, kvn.ptr, kvn.dtype, T, L, 1e-6);
  // Per head [k_nope | v] = kv_b(latent): [T, H·(nope + v)], i.e. T·H rows of nope + v.
  const kv = ctx.buf("mla_kv", T * H * kvw);
  mm(kv, lat, w.get("self_attn.kv_b_proj.weight"), H * kvw, L, null);

  // Keys per head [k_nope | rope key de-interleaved | 0…], values [v | 0…].
  const k = ctx.buf("k", T * H * hd), kRope = ctx.buf("mla_krope", T * H * hd);
  const vals = ctx.buf("v", T * H * hd);
  const Sk = constant(
    ctx,
    `mla_Sk.${tag}`,
    hd * kvw,
    () => selection(hd, kvw, range(nope, (i): [number, number] => [i, i])),
  );
  const Sv = constant(
    ctx,
    `mla_Sv.${tag}`,
    hd * kvw,
    () => selection(hd, kvw, range(v, (j): [number, number] => [j, nope + j])),
  );
  const B = constant(ctx, `mla_Bk.${H}.${tag}`, H * hd * rope, () =>
    selection(
      H * hd,
      rope,
      range(H * rope, (i): [number, number] => {
        const head = Math.floor(i / rope), j = i % rope;
        return [head * hd + nope + j, ropeSource(ds, j)];
      }),
    ));
  f32(k, kv, Sk, T * H, hd, kvw);
  f32(kRope, kr, B, T, H * hd, rope);
  be.add(k, k, kRope, T * H * hd);
  f32(vals, kv, Sv, T * H, hd, kvw);

  // Rotate-half rope on the rope dims of every head (at offset nope).
  const { rotDim, invFreq, mscale } = ctx.rope;
  const at = (p: DevPtr) => be.view(p, nope * 4);
  be.rope(at(q), T, H * hd, H, hd, rotDim, ctx.positions, invFreq, mscale);
  be.rope(at(k), T, H * hd, H, hd, rotDim, ctx.positions, invFreq, mscale);

  const attn = ctx.buf("attn", T * H * hd);
  ctx.attention({ q, qStride: H * hd, k, v: vals, kvStride: H * hd, out: attn, scale: ds.scale });
  let out = attn;
  if (hd !== v) {
    // [T·H, hd] → [T·H, v]: the values' dims of each head.
    const So = constant(
      ctx,
      `mla_So.${tag}`,
      v * hd,
      () => selection(v, hd, range(v, (j): [number, number] => [j, j])),
    );
    out = ctx.buf("mla_attn_v", T * H * v);
    f32(out, attn, So, T * H, v, hd);
  }
  const o = ctx.buf("o", T * D);
  mm(o, out, w.get("self_attn.o_proj.weight"), D, H * v, w.opt("self_attn.o_proj.bias"));
  be.add(ctx.x, ctx.x, o, T * D);
}

// ------------------------------------------------------------------------------------------------
// Routing

const f32 = Math.fround;

/** The kept groups' mask per expert: the `topkGroup` best group scores of one token. */
function groupMask(groupScores: Float32Array, r: Router): boolean[] {
  const size = r.experts / r.nGroup;
  const kept = new Set(topK(groupScores, r.topkGroup));
  return range(r.experts, (e) => kept.has(Math.floor(e / size)));
}

/**
 * DeepSeek-V2 routing of [T, E] router logits: softmax; `greedy` = the top k probabilities;
 * `group_limited_greedy` = the top k among the `topkGroup` groups whose best probability is
 * highest. Weights = probabilities × routedScaling, never renormalized (as transformers 5).
 */
export function routeSoftmax(logits: Float32Array, T: number, r: Router): Routing {
  const E = r.experts, k = r.topK, size = E / r.nGroup;
  const probs = softmaxRows(logits, T, E);
  const experts = new Int32Array(T * k), weights = new Float32Array(T * k);
  for (let t = 0; t < T; t++) {
    const p = probs.subarray(t * E, (t + 1) * E);
    let pick: ArrayLike<number> = p;
    if (r.method === "group_limited_greedy") {
      const groups = Float32Array.from(
        range(r.nGroup, (g) => Math.max(...p.subarray(g * size, (g + 1) * size))),
      );
      const keep = groupMask(groups, r);
      pick = p.map((x, e) => keep[e] ? x : 0);
    }
    topK(pick, k).forEach((e, j) => {
      experts[t * k + j] = e;
      weights[t * k + j] = f32(p[e] * r.routedScaling);
    });
  }
  return { k, experts, weights };
}

/**
 * DeepSeek-V3 `noaux_tc` routing of [T, E] router logits with the [E] correction bias: scores =
 * sigmoid; choice = score + bias; group score = the sum of its two best choices; the top k
 * choices within the `topkGroup` best groups; weights = their un-biased scores (divided by their
 * sum with normTopK) × routedScaling.
 */
export function routeNoauxTc(
  logits: Float32Array,
  bias: Float32Array,
  T: number,
  r: Router,
): Routing {
  const E = r.experts, k = r.topK, size = E / r.nGroup;
  const experts = new Int32Array(T * k), weights = new Float32Array(T * k);
  for (let t = 0; t < T; t++) {
    const s = Float32Array.from(
      logits.subarray(t * E, (t + 1) * E),
      (x) => 1 / (1 + Math.exp(-x)),
    );
    const choice = s.map((x, e) => x + bias[e]);
    const groups = Float32Array.from(range(r.nGroup, (g) => {
      const [a, b] = topK(choice.subarray(g * size, (g + 1) * size), 2);
      return choice[g * size + a] + choice[g * size + b];
    }));
    const keep = groupMask(groups, r);
    const top = topK(choice.map((x, e) => keep[e] ? x : -Infinity), k);
    let sum = 0;
    for (const e of top) sum = f32(sum + s[e]);
    const denom = f32(sum + 1e-20);
    top.forEach((e, j) => {
      experts[t * k + j] = e;
      weights[t * k + j] = f32((r.normTopK ? f32(s[e] / denom) : s[e]) * r.routedScaling);
    });
  }
  return { k, experts, weights };
}

/** A small weight (a bias vector) as fp32 on the host. */
function hostVector(ctx: LayerContext, wt: Weight): Float32Array {
  const n = wt.shape.reduce((a, b) => a * b, 1);
  if (wt.dtype === "F32") {
    const out = new Float32Array(n);
    ctx.be.download(out, wt.ptr);
    return out;
  }
  const raw = new Uint16Array(n);
  ctx.be.download(raw, wt.ptr);
  return wt.dtype === "BF16" ? bf16ToF32(raw) : f16ToF32(raw);
}

/** The routing of one MoE layer from its router logits. */
function routeLayer(
  ctx: LayerContext<DeepseekConfig>,
  w: PartWeights,
  logits: Float32Array,
): Routing {
  const r = deepseekShape(ctx.cfg).router;
  if (r.method !== "noaux_tc") return routeSoftmax(logits, ctx.T, r);
  const bias = hostVector(ctx, w.get("mlp.gate.e_score_correction_bias"));
  return routeNoauxTc(logits, bias, ctx.T, r);
}

/** x += routed experts + shared experts of post_attention_layernorm(x). */
export function deepseekMoeBlock(
  ctx: LayerContext<DeepseekConfig>,
  w: PartWeights,
): Promise<void> {
  const ds = deepseekShape(ctx.cfg);
  return sparseMoeBlock(ctx, w, {
    router: "mlp.gate.weight",
    route: (logits) => routeLayer(ctx, w, logits),
    expert: (e) => mlpNames(`mlp.experts.${e}`),
    inter: ds.moeIntermediate,
    shared: ds.sharedIntermediate > 0
      ? { names: mlpNames("mlp.shared_experts"), inter: ds.sharedIntermediate }
      : undefined,
  });
}

// ------------------------------------------------------------------------------------------------
// Families

const V2_DEFAULTS: Defaults = {
  maxPositionEmbeddings: 2048,
  experts: 64,
  shared: 2,
  moeIntermediate: 1407,
  routedScaling: 1,
  nGroup: null,
  topkGroup: null,
  topK: null,
  firstDense: 0,
  normTopK: false,
  mtpLayers: 0,
};

const V3_DEFAULTS: Defaults = {
  maxPositionEmbeddings: 4096,
  experts: 256,
  shared: 1,
  moeIntermediate: 2048,
  routedScaling: 2.5,
  nGroup: 8,
  topkGroup: 4,
  topK: 8,
  firstDense: 3,
  normTopK: true,
  mtpLayers: 1,
};

export const deepseekV2: Family<DeepseekConfig> = {
  architectures: ["DeepseekV2ForCausalLM"],
  parseConfig(raw, source) {
    return parseDeepseek(raw, source, V2_DEFAULTS, (raw) => {
      const m = raw.topk_method ?? "greedy";
      if (m !== "greedy" && m !== "group_limited_greedy") {
        throw new ConfigError(
          source,
          "topk_method",
          `DeepSeek-V2 routes with "greedy" or "group_limited_greedy", got ${JSON.stringify(m)}`,
        );
      }
      return m;
    }, true);
  },
  place: placeDeepseek,
  expected: expectedDeepseek,
  lazyGroup: (local) => expertGroup(local),
  async forwardLayer(ctx, w) {
    mlaBlock(ctx, w);
    if (ctx.layer < deepseekShape(ctx.cfg).firstDense) mlpBlock(ctx, w);
    else await deepseekMoeBlock(ctx, w);
  },
};

/** V3: V2's layer with `noaux_tc` routing (any `topk_method` key is ignored, as transformers). */
export const deepseekV3: Family<DeepseekConfig> = {
  ...deepseekV2,
  architectures: ["DeepseekV3ForCausalLM"],
  parseConfig(raw, source) {
    const interleaved = bool(raw, source, "rope_interleave", true);
    return parseDeepseek(raw, source, V3_DEFAULTS, () => "noaux_tc", interleaved);
  },
};
