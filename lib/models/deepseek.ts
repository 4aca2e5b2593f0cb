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
 * The KV cache holds the latent, not per-head keys and values: one row [normed latent | roped
 * rope key] of kv_lora_rank + qk_rope_head_dim floats per token and layer (576 at V3 size, 2.3 KB
 * fp32, where per-head keys and values would take 196 KB). `kv_b_proj` is absorbed into the
 * queries and applied to the attention output per head (see mlaBlock), with batched matmuls over
 * strided views of its rows (rl_matmul_nd) and strided copies (rl_copy_nd): no head is padded.
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
import type { DevPtr, TensorView } from "../../ffi/backend.ts";
import { bf16ToF32, f16ToF32 } from "../dtype.ts";
import { ConfigError } from "../errors.ts";
import type {
  ExpectedTensor,
  Family,
  LayerContext,
  Part,
  PartWeights,
  ScratchSizes,
  Weight,
} from "./family.ts";
import {
  gatedMlpNames,
  type LayerBuffers,
  layerScratch,
  linear,
  type LinearSpec,
  linearTensors,
  type MlpBuffers,
  mlpScratch,
  norm,
  type NormSpec,
  normTensors,
  perConfig,
  plain,
  residual,
} from "./blocks.ts";
import {
  expectedGlobal,
  LLAMA_DEFAULTS,
  llamaLayerSpec,
  mlpBlock,
  mlpLayerTensors,
  parseLlamaLike,
  placeExpected,
} from "./llama.ts";
import {
  expertGroup,
  type MoeBuffers,
  moeScratch,
  type MoeSpec,
  moeTensors,
  type Routing,
  softmaxRows,
  sparseMoeBlock,
  topK,
} from "./moe.ts";

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
  const headDim = nope + rope;
  // head_dim in the file is transformers' rope dim; a query/key head is nope + rope (transformers'
  // qk_head_dim), KV heads one per query head as transformers has them. The cache holds the
  // latent instead (kvCache below).
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
      `expected a number, got ${JSON.stringify(routedScaling)}`,
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
  // One cache row per token: [latent | rope key], the value being the latent (mlaBlock).
  const kvCache = { kvHeads: 1, keyDim: kvLora + rope, valueDim: kvLora, sharedKV: true };
  return { ...cfg, deepseek: ds, expertsPerToken: k, kvCache };
}

// ------------------------------------------------------------------------------------------------
// Tensors

/** The MLA tensors of a layer, each named once; q/kv LoRA norms use eps 1e-6 (transformers). */
interface MlaSpec {
  inputNorm: NormSpec;
  /** q_proj, or the q LoRA q_b(q_a_layernorm(q_a(x))). */
  q: { proj: LinearSpec } | { a: LinearSpec; norm: NormSpec; b: LinearSpec };
  kvA: LinearSpec;
  kvANorm: NormSpec;
  kvB: LinearSpec;
  o: LinearSpec;
}

const mlaSpec = perConfig((cfg: DeepseekConfig): MlaSpec => {
  const bias = cfg.attentionBias,
    lora = (name: string): NormSpec => ({ name, kind: "rms", eps: 1e-6 });
  return {
    inputNorm: { name: "input_layernorm", kind: "rms" },
    q: cfg.deepseek.qLoraRank === null ? { proj: plain("self_attn.q_proj") } : {
      a: { name: "self_attn.q_a_proj", bias },
      norm: lora("self_attn.q_a_layernorm"),
      b: plain("self_attn.q_b_proj"),
    },
    kvA: { name: "self_attn.kv_a_proj_with_mqa", bias },
    kvANorm: lora("self_attn.kv_a_layernorm"),
    kvB: plain("self_attn.kv_b_proj"),
    o: { name: "self_attn.o_proj", bias },
  };
});

/** noaux_tc's per-expert bias added to the router's choice scores (not to its logits). */
const CORRECTION_BIAS = "mlp.gate.e_score_correction_bias";

/** The MoE of a layer from `first_k_dense_replace` on (shared experts: `mlp.shared_experts`). */
const deepseekMoeSpec = perConfig((cfg: DeepseekConfig): MoeSpec => {
  const ds = cfg.deepseek;
  return {
    norm: { name: "post_attention_layernorm", kind: "rms" },
    router: plain("mlp.gate"),
    experts: ds.router.experts,
    expert: (e) => gatedMlpNames(`mlp.experts.${e}`),
    inter: ds.moeIntermediate,
    shared: ds.sharedIntermediate > 0
      ? { mlp: gatedMlpNames("mlp.shared_experts"), inter: ds.sharedIntermediate }
      : undefined,
  };
});

function expectedDeepseek(part: Part, cfg: DeepseekConfig): ExpectedTensor[] {
  if (part.kind !== "layer") return expectedGlobal(part, cfg);
  const ds = deepseekShape(cfg), D = cfg.hiddenSize, H = cfg.numHeads;
  const qk = ds.nope + ds.rope, L = ds.kvLoraRank, s = mlaSpec(cfg);
  const t = normTensors(s.inputNorm, D);
  if ("proj" in s.q) t.push(...linearTensors(s.q.proj, H * qk, D));
  else {
    const R = ds.qLoraRank!;
    t.push(
      ...linearTensors(s.q.a, R, D),
      ...normTensors(s.q.norm, R),
      ...linearTensors(s.q.b, H * qk, R),
    );
  }
  t.push(
    ...linearTensors(s.kvA, L + ds.rope, D),
    ...normTensors(s.kvANorm, L),
    // Read through strided views (rl_matmul_nd), which take float weights only.
    ...linearTensors(s.kvB, H * (ds.nope + ds.v), L).map((t) => ({ ...t, matmul: false })),
    ...linearTensors(s.o, D, H * ds.v),
  );
  if (part.index < ds.firstDense) return t.concat(mlpLayerTensors(llamaLayerSpec(cfg), cfg));
  t.push(...moeTensors(deepseekMoeSpec(cfg), D));
  if (ds.router.method === "noaux_tc") {
    t.push({ local: CORRECTION_BIAS, shape: [ds.router.experts] });
  }
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

function range<T>(n: number, f: (i: number) => T): T[] {
  return Array.from({ length: n }, (_, i) => f(i));
}

/**
 * The rope dims of `rows` rows into rotate-half order: with interleaved pairs, a view
 * [rows, 2, rope/2] reading element 2j + i of the source into i·rope/2 + j of the destination.
 */
function ropeViews(
  ds: DeepseekShape,
  rows: number,
  src: { offset: number; stride: number },
  dst: { offset: number; stride: number },
): [TensorView, TensorView] {
  const half = ds.rope / 2;
  if (!ds.interleaved) {
    return [
      { offset: dst.offset, shape: [rows, ds.rope], strides: [dst.stride, 1] },
      { offset: src.offset, shape: [rows, ds.rope], strides: [src.stride, 1] },
    ];
  }
  return [
    { offset: dst.offset, shape: [rows, 2, half], strides: [dst.stride, half, 1] },
    { offset: src.offset, shape: [rows, 2, half], strides: [src.stride, 1, 2] },
  ];
}

/** MLA's buffers (per token row: see mlaScratch). */
type MlaBuffers =
  | "mla_q"
  | "mla_qa"
  | "mla_kv_a"
  | "mla_latent"
  | "mla_rows"
  | "mla_q_latent"
  | "attn"
  | "mla_values";

/** The scratch of a DeepSeek model: MLA, dense MLP layers and MoE layers. */
export type DeepseekBuffers = LayerBuffers | MlpBuffers | MoeBuffers | MlaBuffers;

function deepseekScratch(cfg: DeepseekConfig): ScratchSizes<DeepseekBuffers> {
  const ds = cfg.deepseek, H = cfg.numHeads, L = ds.kvLoraRank, R = L + ds.rope;
  return {
    ...layerScratch(cfg),
    ...mlpScratch(cfg.intermediateSize),
    ...moeScratch(deepseekMoeSpec(cfg), cfg.hiddenSize),
    mla_q: H * (ds.nope + ds.rope),
    mla_qa: ds.qLoraRank ?? 1,
    mla_kv_a: R,
    mla_latent: L,
    mla_rows: R,
    mla_q_latent: H * R,
    attn: H * L,
    mla_values: H * ds.v,
  };
}

/**
 * x += o_proj(MLA(input_layernorm(x))), with `kv_b_proj` absorbed so the cache holds the latent.
 *
 * Per head h, kv_b_proj's rows are W_uk(h) [nope, L] then W_uv(h) [v, L]. Key j of head h is
 * [W_uk(h)·c_j | r_j] (c_j the normed latent, r_j the shared rope key), so
 *   q_h · k_j = (W_uk(h)ᵀ q_nope) · c_j + q_rope · r_j,
 * an attention of queries [W_uk(h)ᵀ q_nope | q_rope] over one shared key row [c_j | r_j] per
 * token; and Σ_j p_j W_uv(h)·c_j = W_uv(h)·(Σ_j p_j c_j), so the values are the c_j (the first L
 * floats of the same row) and W_uv(h) applies after the attention. Both per-head products are
 * one batched rl_matmul_nd over views of kv_b_proj. Rope pairs are moved into rotate-half order
 * in q and k alike (q·k is unchanged), so the backend's rope applies at offset L of each row.
 */
export function mlaBlock(ctx: LayerContext<DeepseekConfig, DeepseekBuffers>, w: PartWeights): void {
  const { be, cfg, T } = ctx;
  const ds = deepseekShape(cfg), D = cfg.hiddenSize, H = cfg.numHeads;
  const { nope, rope, v } = ds, qk = nope + rope, L = ds.kvLoraRank, R = L + rope;
  const s = mlaSpec(cfg), b = ctx.s, h = b.h;
  norm(ctx, w, s.inputNorm, h, ctx.x, T, D);

  // Queries [T, H·qk], per head [nope | rope].
  const q = b.mla_q;
  if ("proj" in s.q) linear(ctx, w, s.q.proj, q, h, T, H * qk, D);
  else {
    const Rq = ds.qLoraRank!, qa = b.mla_qa;
    linear(ctx, w, s.q.a, qa, h, T, Rq, D);
    norm(ctx, w, s.q.norm, qa, qa, T, Rq);
    linear(ctx, w, s.q.b, q, qa, T, H * qk, Rq);
  }

  // The new tokens' cache rows [T, R] = [normed latent | rope key].
  const kvRaw = b.mla_kv_a, lat = b.mla_latent;
  linear(ctx, w, s.kvA, kvRaw, h, T, R, D);
  be.copyNd(lat, { shape: [T, L], strides: [L, 1] }, kvRaw, { shape: [T, L], strides: [R, 1] });
  norm(ctx, w, s.kvANorm, lat, lat, T, L);
  const rows = b.mla_rows;
  be.copyNd(rows, { shape: [T, L], strides: [R, 1] }, lat, { shape: [T, L], strides: [L, 1] });
  const [kDst, kSrc] = ropeViews(ds, T, { offset: L, stride: R }, { offset: L, stride: R });
  be.copyNd(rows, kDst, kvRaw, kSrc);

  // Latent queries [T, H, R]: W_uk(h)ᵀ q_nope(h) | q_rope(h).
  const kvb = w.get(`${s.kvB.name}.weight`), headRows = (nope + v) * L;
  const ql = b.mla_q_latent;
  be.matmulNd(
    ql,
    { shape: [H, T, L], strides: [R, H * R, 1] },
    q,
    { shape: [H, T, nope], strides: [qk, H * qk, 1] },
    kvb.ptr,
    { dtype: kvb.dtype, shape: [H, nope, L], strides: [headRows, L, 1] },
  );
  const [qDst, qSrc] = ropeViews(ds, T * H, { offset: nope, stride: qk }, {
    offset: L,
    stride: R,
  });
  be.copyNd(ql, qDst, q, qSrc);

  // Rotate-half rope on the rope dims (offset L of every row).
  const { rotDim, invFreq, mscale } = ctx.rope;
  const at = (p: DevPtr) => be.view(p, L * Float32Array.BYTES_PER_ELEMENT);
  be.rope(at(ql), T, H * R, H, R, rotDim, ctx.positions, invFreq, mscale);
  be.rope(at(rows), T, R, 1, R, rotDim, ctx.positions, invFreq, mscale);

  // Attention over the latent rows: out [T, H·L] = Σ_j p_j c_j per head.
  const attn = b.attn;
  ctx.attention({ q: ql, qStride: H * R, k: rows, kvStride: R, out: attn, scale: ds.scale });

  // Values per head: W_uv(h) · out(h) → [T, H·v].
  const vals = b.mla_values;
  be.matmulNd(
    vals,
    { shape: [H, T, v], strides: [v, H * v, 1] },
    attn,
    { shape: [H, T, L], strides: [L, H * L, 1] },
    kvb.ptr,
    { dtype: kvb.dtype, offset: nope * L, shape: [H, L, v], strides: [headRows, 1, L] },
  );
  const o = b.o;
  linear(ctx, w, s.o, o, vals, T, D, H * v);
  residual(ctx, o);
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
  const bias = hostVector(ctx, w.get(CORRECTION_BIAS));
  return routeNoauxTc(logits, bias, ctx.T, r);
}

/** x += routed experts + shared experts of post_attention_layernorm(x). */
export function deepseekMoeBlock(
  ctx: LayerContext<DeepseekConfig, DeepseekBuffers>,
  w: PartWeights,
): Promise<void> {
  return sparseMoeBlock(ctx, w, deepseekMoeSpec(ctx.cfg), (logits) => routeLayer(ctx, w, logits));
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

export const deepseekV2: Family<DeepseekConfig, DeepseekBuffers> = {
  architectures: ["DeepseekV2ForCausalLM"],
  scratch: deepseekScratch,
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
    if (ctx.layer < deepseekShape(ctx.cfg).firstDense) mlpBlock(ctx, w, llamaLayerSpec(ctx.cfg));
    else await deepseekMoeBlock(ctx, w);
  },
};

/** V3: V2's layer with `noaux_tc` routing (any `topk_method` key is ignored, as transformers). */
export const deepseekV3: Family<DeepseekConfig, DeepseekBuffers> = {
  ...deepseekV2,
  architectures: ["DeepseekV3ForCausalLM"],
  parseConfig(raw, source) {
    const interleaved = bool(raw, source, "rope_interleave", true);
    return parseDeepseek(raw, source, V3_DEFAULTS, () => "noaux_tc", interleaved);
  },
};
