/**
 * QWen v1 (`QWenLMHeadModel`, model_type `qwen`, remote code: Qwen-1.8B/7B/14B/72B and their
 * Chat models), loaded from its hub layout as the original modeling_qwen.py reads it:
 *
 * - tensors `transformer.wte`, `transformer.h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.w1,
 *   mlp.w2, mlp.c_proj}`, `transformer.ln_f`, `lm_head`; `c_attn` holds the q, k and v rows
 *   (q | k | v, each hidden wide, with a bias) and is split into three at split time;
 *   `mlp.c_proj(w1(x) · silu(w2(x)))`, so `w2` is the gate and `w1` the up projection, each
 *   `intermediate_size / 2` wide; RMSNorm (`layer_norm_epsilon`); no BOS.
 * - config: the keys of QWenConfig (hidden_size, num_attention_heads, num_hidden_layers,
 *   intermediate_size, kv_channels, rotary_emb_base, rotary_pct, seq_length, use_dynamic_ntk,
 *   use_logn_attn, no_bias) or of the first, GPT-2 style QWenConfig (n_embd, n_head, n_layer,
 *   ffn_hidden_size, n_positions; its own defaults); the precision flags `bf16` / `fp16` /
 *   `fp32` where hub configs carry no `torch_dtype`.
 * - past `seq_length`: dynamic NTK rope (`use_dynamic_ntk`: base · α^(d/(d−2)), α =
 *   max(2^ceil(log2(L / seq_length) + 1) − 1, 1) for a forward over L positions) and logn
 *   attention (`use_logn_attn`: the query at position p, after rope, times log(p+1) /
 *   log(seq_length) when p + 1 > seq_length).
 *
 * The NTK alpha follows the original's state exactly: a forward without a cache (prefill, or every
 * step with the cache off) picks α from its own length and remembers it
 * (`rotary_emb._ntk_alpha_cached_list`); a forward continuing a cache reuses the remembered α,
 * so a generation with the cache keeps its prefill's α while it grows. The memory is per loaded
 * model, as the original's is per module. Batched prompts of different lengths past seq_length
 * get one α, the longest row's (the original picks one per row from the attention mask).
 *
 * @module
 */
import type { DevPtr } from "../../ffi/backend.ts";
import { ConfigReader, MAX_LAYERS, type ModelConfig, type StorageDType } from "../config.ts";
import { qwenNtkAlpha, qwenNtkTable, type RopeTable } from "../rope.ts";
import type { ExpectedTensor, Family, LayerContext, Part, Placement } from "./family.ts";
import {
  attention,
  type AttentionBuffers,
  type AttentionSpec,
  attentionTensors,
  denseLayerScratch,
  gatedMlp,
  type GatedMlpSpec,
  gatedMlpTensors,
  type LayerBuffers,
  type MlpBuffers,
  norm,
  type NormSpec,
  normTensors,
  perConfig,
  plain,
  residual,
} from "./blocks.ts";
import { expectedGlobal } from "./llama.ts";

/** What QWen v1 adds to the common config. */
export interface QwenConfig extends ModelConfig {
  qwen: {
    /** `seq_length`: the trained context, where dynamic NTK and logn attention start. */
    seqLength: number;
    /** `use_dynamic_ntk`. */
    dynamicNtk: boolean;
    /** `use_logn_attn`. */
    lognAttn: boolean;
  };
}

/** The two QWenConfig classes: key names and the class defaults of the keys a file may omit. */
const FORMS = {
  /** configuration_qwen.py since Sep 2023 (every current hub checkpoint). */
  current: {
    hidden: "hidden_size",
    heads: "num_attention_heads",
    layers: "num_hidden_layers",
    ffn: "intermediate_size",
    maxPos: "max_position_embeddings",
    eps: 1e-6,
    maxPosDefault: 8192,
    ntk: true,
    logn: true,
  },
  /** The first configuration_qwen.py (Aug 2023): GPT-2 names, attribute_map onto them. */
  gpt2: {
    hidden: "n_embd",
    heads: "n_head",
    layers: "n_layer",
    ffn: "ffn_hidden_size",
    maxPos: "n_positions",
    eps: 1e-5,
    maxPosDefault: undefined, // not set by that class: QWenAttention's causal mask needs it
    ntk: false,
    logn: false,
  },
} as const;

/** The logn table of the original covers positions below this (range(1, 32768)). */
const LOGN_POSITIONS = 32767;

function storageDType(r: ConfigReader): StorageDType {
  const key = r.has("dtype") ? "dtype" : r.has("torch_dtype") ? "torch_dtype" : null;
  if (key !== null) {
    const v = r.raw[key];
    const name = typeof v === "string" ? v.replace(/^torch\./, "") : "";
    const known: Record<string, StorageDType> = {
      float32: "float32",
      float16: "float16",
      bfloat16: "bfloat16",
    };
    if (!(name in known)) {
      r.fail(
        key,
        `unsupported dtype ${JSON.stringify(r.raw[key])}; expected float32, float16, bfloat16`,
      );
    }
    return known[name];
  }
  const bf16 = r.bool("bf16", false), fp16 = r.bool("fp16", false), fp32 = r.bool("fp32", false);
  if (Number(bf16) + Number(fp16) + Number(fp32) > 1) {
    r.fail("bf16", 'only one of "bf16", "fp16", "fp32" can be true');
  }
  // All false: the original picks bf16 on a GPU that has it (the hub weights are stored bf16).
  return fp32 ? "float32" : fp16 ? "float16" : "bfloat16";
}

/** Parses a QWen v1 config.json (either QWenConfig form). */
export function parseQwenConfig(
  raw: Readonly<Record<string, unknown>>,
  source: string,
): QwenConfig {
  const r = ConfigReader.of(raw, source);
  const form = r.has("n_embd") && !r.has("hidden_size") ? FORMS.gpt2 : FORMS.current;
  const hiddenSize = r.int(form.hidden);
  const numHeads = r.int(form.heads);
  const numLayers = r.int(form.layers);
  if (numLayers > MAX_LAYERS) r.fail(form.layers, `${numLayers} is more than ${MAX_LAYERS}`);
  const ffn = r.int(form.ffn);
  const kvChannels = r.int("kv_channels", 128);
  if (kvChannels * numHeads !== hiddenSize) {
    // QWenAttention splits c_attn's output in hidden_size chunks: the projection must be that wide.
    r.fail(
      "kv_channels",
      `${kvChannels} × ${form.heads} ${numHeads} must equal ${form.hidden} ${hiddenSize}`,
    );
  }
  if (ffn < 2) r.fail(form.ffn, `${ffn} is twice the MLP width and must be at least 2`);
  const seqLength = r.int("seq_length");
  const rotaryPct = r.num("rotary_pct", 1);
  const rotDim = Math.trunc(kvChannels * rotaryPct);
  if (!(rotaryPct > 0 && rotaryPct <= 1) || rotDim % 2 !== 0 || rotDim < 2) {
    r.fail("rotary_pct", `${rotaryPct} × kv_channels ${kvChannels} must give an even rotary width`);
  }
  if (r.bool("no_bias", true) !== true) {
    r.fail("no_bias", "false (biases on c_proj, w1, w2) is not supported yet");
  }
  const expansion = r.num("seq_length_expansion", 1);
  if (expansion !== 1) r.fail("seq_length_expansion", `${expansion} is not supported yet (only 1)`);
  const dynamicNtk = r.bool("use_dynamic_ntk", form.ntk);
  const lognAttn = r.bool("use_logn_attn", form.logn);
  const theta = r.num("rotary_emb_base", 10000);
  const rope = {
    type: dynamicNtk ? "qwen_dynamic_ntk" : "default",
    theta,
    partialRotaryFactor: rotaryPct,
    params: dynamicNtk ? { seq_length: seqLength } : {},
  };
  let maxPos = r.int(form.maxPos, form.maxPosDefault);
  // Dynamic NTK is what runs the model past its trained context; the original's limit is then
  // its logn table (32767 positions), or none without logn.
  if (dynamicNtk) maxPos = Math.max(maxPos, LOGN_POSITIONS);
  if (lognAttn) maxPos = Math.min(maxPos, LOGN_POSITIONS);
  return {
    architecture: (raw.architectures as string[])[0],
    modelType: r.model,
    hiddenSize,
    intermediateSize: Math.floor(ffn / 2),
    numLayers,
    numHeads,
    numKvHeads: numHeads,
    headDim: kvChannels,
    vocabSize: r.int("vocab_size", form === FORMS.gpt2 ? 151851 : 151936),
    maxPositionEmbeddings: maxPos,
    rmsNormEps: r.num("layer_norm_epsilon", form.eps),
    rope,
    layerRopes: new Array(numLayers).fill(rope),
    finalLogitSoftcap: 0,
    tieWordEmbeddings: r.bool("tie_word_embeddings", false),
    attentionBias: true,
    layerWindows: new Array(numLayers).fill(0),
    hiddenAct: "silu",
    dtype: storageDType(r),
    bosTokenId: null,
    eosTokenIds: r.ids("eos_token_id"),
    expertsPerToken: null,
    raw,
    qwen: { seqLength, dynamicNtk, lognAttn },
  };
}

/** The tensors of a QWen block, by the local names of its part. */
interface QwenLayerSpec {
  ln1: NormSpec;
  attn: AttentionSpec;
  ln2: NormSpec;
  mlp: GatedMlpSpec;
}

/** c_attn's q, k and v rows become these locals (with biases). */
const QKV = ["attn.q", "attn.k", "attn.v"] as const;

const layerSpec = perConfig((cfg: QwenConfig): QwenLayerSpec => ({
  ln1: { name: "ln_1", kind: "rms" },
  attn: {
    q: { name: QKV[0], bias: true },
    k: { name: QKV[1], bias: true },
    v: { name: QKV[2], bias: true },
    o: plain("attn.c_proj"),
    // QWenAttention: scores / sqrt(value head dim).
    scale: 1 / Math.sqrt(cfg.headDim),
  },
  ln2: { name: "ln_2", kind: "rms" },
  // a1 = w1(x), a2 = w2(x), c_proj(a1 · silu(a2)): w2 is the gate, w1 the up projection.
  mlp: { gate: plain("mlp.w2"), up: plain("mlp.w1"), down: plain("mlp.c_proj") },
}));

function expected(part: Part, cfg: QwenConfig): ExpectedTensor[] {
  if (part.kind !== "layer") return expectedGlobal(part, cfg);
  const s = layerSpec(cfg), D = cfg.hiddenSize;
  return [
    ...normTensors(s.ln1, D),
    ...attentionTensors(s.attn, D, cfg.numHeads, cfg.numKvHeads, cfg.headDim),
    ...normTensors(s.ln2, D),
    ...gatedMlpTensors(s.mlp, D, cfg.intermediateSize),
  ];
}

const LAYER = /^transformer\.h\.(\d+)\.(.+)$/;
/** Buffers some checkpoints carry; recomputed here (rotary tables, the old causal-mask constant). */
const BUFFERS = new Set(["attn.rotary_emb.inv_freq", "attn.masked_bias"]);

function layerOf(name: string, cfg: QwenConfig): { index: number; local: string } | undefined {
  const m = LAYER.exec(name);
  if (!m) return undefined;
  const index = Number(m[1]);
  return index < cfg.numLayers ? { index, local: m[2] } : undefined;
}

/** Each layer's local names, for placement (a name outside them is unknown to the family). */
const localNames = perConfig((cfg: QwenConfig) =>
  new Set(expected({ kind: "layer", index: 0 }, cfg).map((e) => e.local))
);

function place(name: string, cfg: QwenConfig): Placement | undefined {
  if (name === "transformer.wte.weight") return { part: { kind: "embed" }, local: "weight" };
  if (name === "transformer.ln_f.weight") return { part: { kind: "norm" }, local: "weight" };
  if (name === "transformer.rotary_emb.inv_freq") return { part: null, local: name };
  if (name === "lm_head.weight") {
    return { part: cfg.tieWordEmbeddings ? null : { kind: "lm_head" }, local: "weight" };
  }
  const l = layerOf(name, cfg);
  if (!l) return undefined;
  if (BUFFERS.has(l.local)) return { part: null, local: l.local };
  if (!localNames(cfg).has(l.local)) return undefined;
  return { part: { kind: "layer", index: l.index }, local: l.local };
}

function placeFused(name: string, cfg: QwenConfig): readonly Placement[] | undefined {
  const l = layerOf(name, cfg);
  if (!l) return undefined;
  const which = l.local === "attn.c_attn.weight"
    ? "weight"
    : l.local === "attn.c_attn.bias"
    ? "bias"
    : null;
  if (which === null) return undefined;
  const n = cfg.numHeads * cfg.headDim; // q, k and v are each this many rows
  return QKV.map((local, i) => ({
    part: { kind: "layer", index: l.index },
    local: `${local}.${which}`,
    rows: Array.from({ length: n }, (_, r) => i * n + r),
  }));
}

type QwenBuffers = LayerBuffers | AttentionBuffers | MlpBuffers | "qlogn";

/** Per loaded model (its config object): the NTK alpha of the last forward without a cache. */
const ntkState = new WeakMap<QwenConfig, { alpha: number; tables: Map<number, RopeTable> }>();

/**
 * The rope of this step: α from this forward's length when it starts the cache (a position 0 is
 * fed), else the α remembered from the forward that did (modeling_qwen.py QWenModel.forward).
 */
function ntkRope(ctx: LayerContext<QwenConfig, QwenBuffers>): RopeTable {
  const { cfg, positions } = ctx;
  let st = ntkState.get(cfg);
  if (!st) ntkState.set(cfg, st = { alpha: 1, tables: new Map() });
  let fresh = false, longest = 0;
  for (const p of positions) {
    if (p === 0) fresh = true;
    if (p + 1 > longest) longest = p + 1;
  }
  if (fresh) st.alpha = qwenNtkAlpha(longest, cfg.qwen.seqLength);
  let table = st.tables.get(st.alpha);
  if (!table) {
    table = qwenNtkTable(cfg.rope.theta, ctx.rope.rotDim, st.alpha);
    st.tables.set(st.alpha, table);
  }
  return table;
}

/**
 * logn attention: each query row at position p with p + 1 > seq_length times
 * f32(log(p+1) / log(seq_length)), exactly (`query * logn_tensor`): the rows are gathered, zeroed
 * by a scatter-add of −1 × themselves, and scatter-added back × the factor (0 + f32(w·x)).
 */
function lognScale(ctx: LayerContext<QwenConfig, QwenBuffers>, q: DevPtr, qDim: number): void {
  const S = ctx.cfg.qwen.seqLength, logS = Math.log(S);
  const rows: number[] = [], weights: number[] = [];
  ctx.positions.forEach((p, t) => {
    if (p + 1 > S) {
      rows.push(t);
      weights.push(Math.log(p + 1) / logS);
    }
  });
  if (rows.length === 0) return;
  const idx = Int32Array.from(rows), tmp = ctx.s.qlogn;
  ctx.be.gatherRows(tmp, q, idx, qDim, ctx.T);
  ctx.be.scatterAddRows(q, tmp, idx, new Float32Array(rows.length).fill(-1), qDim, ctx.T);
  ctx.be.scatterAddRows(q, tmp, idx, Float32Array.from(weights), qDim, ctx.T);
}

export const qwen: Family<QwenConfig, QwenBuffers> = {
  architectures: ["QWenLMHeadModel"],
  parseConfig: parseQwenConfig,
  place,
  placeFused,
  expected,
  scratch: (cfg) => ({ ...denseLayerScratch(cfg), qlogn: cfg.numHeads * cfg.headDim }),
  forwardLayer(ctx, w) {
    const { T, cfg } = ctx, D = cfg.hiddenSize, { h, o } = ctx.s, s = layerSpec(cfg);
    const qDim = cfg.numHeads * cfg.headDim;
    const inner = ctx.attention;
    const step: LayerContext<QwenConfig, QwenBuffers> = {
      ...ctx,
      rope: cfg.qwen.dynamicNtk ? ntkRope(ctx) : ctx.rope,
      attention: cfg.qwen.lognAttn
        ? (call) => {
          lognScale(ctx, call.q, qDim);
          inner(call);
        }
        : inner,
    };
    norm(step, w, s.ln1, h, ctx.x, T, D);
    attention(step, w, s.attn, h, o);
    residual(step, o);
    norm(step, w, s.ln2, h, ctx.x, T, D);
    gatedMlp(step, w, s.mlp, h, o, T, cfg.intermediateSize, ctx.s);
    residual(step, o);
  },
};
