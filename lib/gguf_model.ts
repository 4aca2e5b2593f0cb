/**
 * A GGUF file as a checkpoint: its architecture and `<arch>.*` metadata turned into the
 * config.json transformers would build, and its tensors renamed to the Hugging Face names our
 * families place — with what llama.cpp's converter did undone:
 *
 * - llama (and Mistral, which llama.cpp writes as llama): the q and k rows are permuted for
 *   llama.cpp's interleaved rope; the permutation is undone row by row, which moves whole rows of
 *   blocks, so quantized tensors are never requantized.
 * - gemma2/gemma3: RMSNorm weights are stored as 1 + w; 1 is subtracted (norms are F32).
 * - MoE (qwen2moe, qwen3moe): experts are stacked in one tensor per projection; each expert's rows
 *   are one contiguous byte range and become that expert's tensor.
 * - phi3: the fused `attn_qkv` / `ffn_up` are Phi-3's own fused qkv_proj / gate_up_proj.
 * - Llama 3.x: the llama3 rope scaling is stored as per-pair divisors, `rope_freqs.weight`; they
 *   become the config's rope (see {@link ropeFreqs}).
 *
 * Tensor blocks go into the split as they are. A tensor type the backend has no kernel for (IQ*,
 * TQ*, Q2_K, Q3_K, ...) is an error naming the type and the tensor, raised before anything is
 * written. Config values transformers does not read from GGUF (gemma's query_pre_attn_scalar)
 * keep the config class's defaults, as transformers does.
 *
 * @module
 */
import type { DType } from "./dtype.ts";
import { GgufError } from "./errors.ts";
import { type GgufHeader, type GgufTensor, type GgufValue, readGgufHeader } from "./gguf.ts";
import { BLOCK } from "./quant.ts";
import { MAX_LAYERS } from "./config.ts";

/** The tensor types our backends compute with (ABI 6): floats and every block format. */
const SUPPORTED_TYPES: ReadonlySet<string> = new Set(["F32", "F16", "BF16", ...Object.keys(BLOCK)]);

/** GGUF `general.architecture` → what we load it as. */
interface ArchInfo {
  architecture: string;
  modelType: string;
  /** llama.cpp permuted q/k rows for its rope layout (LlamaModel.permute). */
  permuteQK?: boolean;
  /** Norm weights stored as 1 + w (Gemma). */
  normPlusOne?: boolean;
  /** Gemma's layer: ffn_norm is the pre-feedforward norm, post norms around both blocks. */
  gemmaNorms?: boolean;
  moe?: "qwen2moe" | "qwen3moe";
  /** Fused qkv / gate_up projections (Phi-3). */
  fused?: boolean;
}

const ARCHES: Readonly<Record<string, ArchInfo>> = {
  llama: { architecture: "LlamaForCausalLM", modelType: "llama", permuteQK: true },
  qwen2: { architecture: "Qwen2ForCausalLM", modelType: "qwen2" },
  qwen3: { architecture: "Qwen3ForCausalLM", modelType: "qwen3" },
  qwen2moe: { architecture: "Qwen2MoeForCausalLM", modelType: "qwen2_moe", moe: "qwen2moe" },
  qwen3moe: { architecture: "Qwen3MoeForCausalLM", modelType: "qwen3_moe", moe: "qwen3moe" },
  phi3: { architecture: "Phi3ForCausalLM", modelType: "phi3", fused: true },
  gemma2: {
    architecture: "Gemma2ForCausalLM",
    modelType: "gemma2",
    normPlusOne: true,
    gemmaNorms: true,
  },
  gemma3: {
    architecture: "Gemma3ForCausalLM",
    modelType: "gemma3_text",
    normPlusOne: true,
    gemmaNorms: true,
  },
};

/** GGUF architectures we load. */
export const GGUF_ARCHITECTURES: readonly string[] = Object.keys(ARCHES).sort();

/** One checkpoint tensor read out of a GGUF file (a whole GGUF tensor or one expert's slice). */
export interface GgufSourceTensor {
  /** The Hugging Face name. */
  name: string;
  /** The GGUF file and tensor it comes from (named in errors). */
  file: string;
  gguf: string;
  dtype: DType;
  shape: number[];
  nbytes: number;
  /** Absolute offset of its bytes in the file. */
  offset: number;
  /** What to do to the bytes as read. */
  transform: null | { kind: "permute"; heads: number } | { kind: "minusOne" };
}

/** A GGUF file opened as a checkpoint. */
export interface GgufCheckpoint {
  file: string;
  /** The Hugging Face architecture it loads as (config.json's `architectures[0]`). */
  architecture: string;
  header: GgufHeader;
  /** The config.json transformers builds from the metadata. */
  config: Record<string, unknown>;
  tensors: GgufSourceTensor[];
}

/** A metadata value for an error message: bounded, bigints included (JSON.stringify throws). */
function show(v: GgufValue): string {
  if (typeof v === "bigint") return String(v);
  if (typeof v === "string") return JSON.stringify(v.length > 64 ? `${v.slice(0, 64)}...` : v);
  if (Array.isArray(v)) {
    return `[${v.slice(0, 8).map(show).join(", ")}${v.length > 8 ? ", ..." : ""}]`;
  }
  return String(v);
}

function meta(h: GgufHeader, key: string): GgufValue | undefined {
  return h.metadata.get(key);
}

/** A numeric metadata value (a u/i/f scalar), or `fallback` when absent; else a GgufError. */
function num(h: GgufHeader, key: string, fallback?: number): number {
  const v = meta(h, key);
  if (v === undefined) {
    if (fallback !== undefined) return fallback;
    throw new GgufError(h.file, `key ${key}`, "missing (needed to build the model's config)");
  }
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new GgufError(h.file, `key ${key}`, `expected a number, got ${show(v)}`);
  }
  return v;
}

/** A count that llama.cpp may write per layer as an array: it must be one value for all. */
function uniform(h: GgufHeader, key: string, fallback?: number): number {
  const v = meta(h, key);
  if (Array.isArray(v)) {
    const set = new Set(v);
    if (set.size !== 1 || typeof v[0] !== "number") {
      throw new GgufError(
        h.file,
        `key ${key}`,
        `per-layer values ${show(v)} differ; only uniform layers load`,
      );
    }
    return v[0];
  }
  return num(h, key, fallback);
}

function str(h: GgufHeader, key: string): string | undefined {
  const v = meta(h, key);
  if (v === undefined) return undefined;
  if (typeof v !== "string") {
    throw new GgufError(h.file, `key ${key}`, `expected a string, got ${typeof v}`);
  }
  return v;
}

/** The rope scaling llama.cpp writes (`<arch>.rope.scaling.*`), as config.json's rope_scaling. */
function ropeScaling(h: GgufHeader, a: string): Record<string, unknown> | undefined {
  const type = str(h, `${a}.rope.scaling.type`);
  if (type === undefined || type === "none") return undefined;
  if (type !== "linear" && type !== "yarn") {
    throw new GgufError(h.file, `key ${a}.rope.scaling.type`, `"${type}" is not supported`);
  }
  const out: Record<string, unknown> = {
    rope_type: type,
    factor: num(h, `${a}.rope.scaling.factor`),
  };
  const orig = meta(h, `${a}.rope.scaling.original_context_length`);
  if (orig !== undefined) {
    out.original_max_position_embeddings = num(h, `${a}.rope.scaling.original_context_length`);
  }
  return out;
}

/** config.json for the model in `h` (what transformers' GGUF loader builds, plus rope scaling). */
function buildConfig(h: GgufHeader, arch: ArchInfo, a: string, names: Set<string>) {
  const embd = h.tensors.find((t) => t.name === "token_embd.weight");
  if (!embd) throw new GgufError(h.file, "tensor token_embd.weight", "missing");
  const heads = uniform(h, `${a}.attention.head_count`);
  const hidden = num(h, `${a}.embedding_length`);
  const cfg: Record<string, unknown> = {
    architectures: [arch.architecture],
    model_type: arch.modelType,
    hidden_size: hidden,
    num_hidden_layers: num(h, `${a}.block_count`),
    num_attention_heads: heads,
    num_key_value_heads: uniform(h, `${a}.attention.head_count_kv`, heads),
    rms_norm_eps: num(h, `${a}.attention.layer_norm_rms_epsilon`),
    rope_theta: num(h, `${a}.rope.freq_base`, 10000),
    max_position_embeddings: num(h, `${a}.context_length`),
    vocab_size: meta(h, `${a}.vocab_size`) !== undefined
      ? num(h, `${a}.vocab_size`)
      : embd.shape[0],
    tie_word_embeddings: !names.has("output.weight"),
    torch_dtype: "float32",
  };
  const ff = meta(h, `${a}.feed_forward_length`);
  if (ff !== undefined) cfg.intermediate_size = uniform(h, `${a}.feed_forward_length`);
  const keyLength = meta(h, `${a}.attention.key_length`);
  if (keyLength !== undefined) cfg.head_dim = num(h, `${a}.attention.key_length`);
  else if (a === "llama" && meta(h, `${a}.rope.dimension_count`) !== undefined) {
    cfg.head_dim = num(h, `${a}.rope.dimension_count`);
  }
  const scaling = ropeScaling(h, a);
  if (scaling) cfg.rope_scaling = scaling;
  const bos = meta(h, "tokenizer.ggml.bos_token_id");
  if (bos !== undefined) cfg.bos_token_id = num(h, "tokenizer.ggml.bos_token_id");
  const eos = meta(h, "tokenizer.ggml.eos_token_id");
  if (eos !== undefined) cfg.eos_token_id = num(h, "tokenizer.ggml.eos_token_id");
  if (a === "llama" && names.has("blk.0.attn_q.bias")) cfg.attention_bias = true;
  if (arch.gemmaNorms) {
    const window = meta(h, `${a}.attention.sliding_window`);
    if (window !== undefined) cfg.sliding_window = num(h, `${a}.attention.sliding_window`);
    const attnCap = meta(h, `${a}.attn_logit_softcapping`);
    if (attnCap !== undefined) cfg.attn_logit_softcapping = num(h, `${a}.attn_logit_softcapping`);
    const swaBase = meta(h, `${a}.rope.freq_base_swa`);
    if (swaBase !== undefined) cfg.rope_local_base_freq = num(h, `${a}.rope.freq_base_swa`);
    const finalCap = meta(h, `${a}.final_logit_softcapping`);
    if (finalCap !== undefined) {
      cfg.final_logit_softcapping = num(h, `${a}.final_logit_softcapping`);
    }
  }
  if (arch.moe) {
    const E = num(h, `${a}.expert_count`);
    cfg.num_experts = E;
    cfg.num_experts_per_tok = num(h, `${a}.expert_used_count`);
    cfg.moe_intermediate_size = num(h, `${a}.expert_feed_forward_length`);
    if (arch.moe === "qwen2moe") {
      const shared = meta(h, `${a}.expert_shared_feed_forward_length`);
      cfg.shared_expert_intermediate_size = shared === undefined
        ? 0
        : num(h, `${a}.expert_shared_feed_forward_length`);
    } else cfg.norm_topk_prob = true; // llama.cpp always renormalizes Qwen3-MoE's top-k
    const dense: number[] = [];
    const layers = cfg.num_hidden_layers as number;
    if (!Number.isInteger(layers) || layers < 1 || layers > MAX_LAYERS) {
      throw new GgufError(
        h.file,
        `key ${a}.block_count`,
        `expected a layer count in 1..${MAX_LAYERS}, got ${layers}`,
      );
    }
    for (let i = 0; i < layers; i++) {
      if (!names.has(`blk.${i}.ffn_gate_exps.weight`)) dense.push(i);
    }
    cfg.mlp_only_layers = dense;
    if (cfg.intermediate_size === undefined) cfg.intermediate_size = cfg.moe_intermediate_size;
  }
  return cfg;
}

/**
 * Llama 3.x's rope as llama.cpp stores it: `rope_freqs.weight`, one divisor per rotated pair
 * (theta_i = base^(-2i/d) / f_i), which convert_hf_to_gguf.py computes from the llama3
 * rope_scaling. The same per-pair divisors are LongRoPE's factors (lib/rope.ts), with one set for
 * every length and no attention scaling — so the model runs with the frequencies the original
 * checkpoint had (transformers' GGUF loader ignores this tensor).
 */
async function ropeFreqs(
  h: GgufHeader,
  t: GgufTensor,
  config: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  const where = `tensor ${t.name}`;
  const headDim = (config.head_dim as number | undefined) ??
    (config.hidden_size as number) / (config.num_attention_heads as number);
  if (t.type !== "F32" || t.shape.length !== 1 || t.shape[0] !== headDim / 2) {
    throw new GgufError(h.file, where, `expected F32 [${headDim / 2}], got ${t.type} [${t.shape}]`);
  }
  if (config.rope_scaling !== undefined) {
    throw new GgufError(
      h.file,
      where,
      "rope_freqs together with rope.scaling.type is not supported",
    );
  }
  using f = await Deno.open(h.file, { read: true });
  const bytes = await readRange(f, h.file, where, t.offset, t.nbytes);
  const factors = Array.from(new Float32Array(bytes.buffer));
  if (!factors.every((x) => Number.isFinite(x) && x > 0)) {
    throw new GgufError(h.file, where, "rope frequency factors must be finite and positive");
  }
  return {
    rope_type: "longrope",
    short_factor: factors,
    long_factor: factors,
    original_max_position_embeddings: config.max_position_embeddings,
    attention_factor: 1,
  };
}

/** GGUF layer tensor suffix → Hugging Face name inside `model.layers.N.`. */
function layerName(arch: ArchInfo, t: string): string | undefined {
  const common: Record<string, string> = {
    attn_norm: "input_layernorm",
    attn_q: "self_attn.q_proj",
    attn_k: "self_attn.k_proj",
    attn_v: "self_attn.v_proj",
    attn_output: "self_attn.o_proj",
    attn_qkv: "self_attn.qkv_proj",
    attn_q_norm: "self_attn.q_norm",
    attn_k_norm: "self_attn.k_norm",
    ffn_gate: "mlp.gate_proj",
    ffn_up: arch.fused ? "mlp.gate_up_proj" : "mlp.up_proj",
    ffn_down: "mlp.down_proj",
    ffn_norm: arch.gemmaNorms ? "pre_feedforward_layernorm" : "post_attention_layernorm",
    post_attention_norm: "post_attention_layernorm",
    post_ffw_norm: "post_feedforward_layernorm",
    ffn_gate_inp: "mlp.gate",
    ffn_gate_shexp: "mlp.shared_expert.gate_proj",
    ffn_up_shexp: "mlp.shared_expert.up_proj",
    ffn_down_shexp: "mlp.shared_expert.down_proj",
    ffn_gate_inp_shexp: "mlp.shared_expert_gate",
  };
  return common[t];
}

const LAYER = /^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$/;
const EXPERTS = /^(ffn_gate_exps|ffn_up_exps|ffn_down_exps)$/;

/**
 * Opens the GGUF file at `path` as a checkpoint: validates the header, maps the architecture and
 * every tensor (an unknown tensor or type is a {@link GgufError} naming it).
 */
export async function openGguf(path: string): Promise<GgufCheckpoint> {
  const h = await readGgufHeader(path);
  const a = str(h, "general.architecture");
  if (a === undefined) throw new GgufError(path, "key general.architecture", "missing");
  const arch = ARCHES[a];
  if (!arch) {
    throw new GgufError(
      path,
      "key general.architecture",
      `"${a}" is not supported (supported: ${GGUF_ARCHITECTURES.join(", ")})`,
    );
  }
  // Mistral is written as llama (permutation included) and loads as Llama, as transformers loads
  // it: the GGUF carries no sliding window, so the two compute alike.
  if (a === "llama" && meta(h, "llama.expert_count") !== undefined) {
    throw new GgufError(
      path,
      "key llama.expert_count",
      "llama-architecture MoE (Mixtral) GGUF files are not supported yet",
    );
  }
  for (const t of h.tensors) {
    if (!SUPPORTED_TYPES.has(t.type)) {
      throw new GgufError(
        path,
        `tensor ${t.name}`,
        `type ${t.type} is not supported (supported: ${[...SUPPORTED_TYPES].join(", ")})`,
      );
    }
  }
  const names = new Set(h.tensors.map((t) => t.name));
  const config = buildConfig(h, arch, a, names);
  const heads = config.num_attention_heads as number;
  const kvHeads = config.num_key_value_heads as number;
  const experts = (config.num_experts as number | undefined) ?? 0;

  const tensors: GgufSourceTensor[] = [];
  const whole = (t: GgufTensor, name: string, extra: Partial<GgufSourceTensor> = {}) =>
    tensors.push({
      name,
      file: path,
      gguf: t.name,
      dtype: t.type as DType,
      shape: t.shape,
      nbytes: t.nbytes,
      offset: t.offset,
      transform: null,
      ...extra,
    });
  for (const t of h.tensors) {
    const where = `tensor ${t.name}`;
    if (t.name === "token_embd.weight") whole(t, "model.embed_tokens.weight");
    else if (t.name === "output_norm.weight") {
      whole(t, "model.norm.weight", arch.normPlusOne ? { transform: { kind: "minusOne" } } : {});
    } else if (t.name === "output.weight") whole(t, "lm_head.weight");
    else if (t.name === "rope_freqs.weight") {
      continue; // read into the config below
    } else {
      const m = LAYER.exec(t.name);
      if (!m) throw new GgufError(path, where, `unknown tensor for ${a}`);
      const [, layer, key, kind] = m;
      const prefix = `model.layers.${layer}.`;
      if (EXPERTS.test(key)) {
        if (kind !== "weight" || t.shape.length !== 3 || t.shape[0] !== experts) {
          throw new GgufError(
            path,
            where,
            `expected stacked expert weights [${experts}, rows, cols], got [${t.shape}]`,
          );
        }
        const proj = key === "ffn_gate_exps"
          ? "gate_proj"
          : key === "ffn_up_exps"
          ? "up_proj"
          : "down_proj";
        const each = t.nbytes / experts;
        for (let e = 0; e < experts; e++) {
          tensors.push({
            name: `${prefix}mlp.experts.${e}.${proj}.weight`,
            file: path,
            gguf: t.name,
            dtype: t.type as DType,
            shape: t.shape.slice(1),
            nbytes: each,
            offset: t.offset + e * each,
            transform: null,
          });
        }
        continue;
      }
      const hf = layerName(arch, key);
      if (!hf) throw new GgufError(path, where, `unknown tensor for ${a}`);
      const extra: Partial<GgufSourceTensor> = {};
      if (arch.normPlusOne && key.endsWith("norm")) extra.transform = { kind: "minusOne" };
      if (arch.permuteQK && (key === "attn_q" || key === "attn_k")) {
        extra.transform = { kind: "permute", heads: key === "attn_q" ? heads : kvHeads };
      }
      // transformers keeps Qwen2-MoE's shared expert gate as [1, D]; GGUF stores it as [D].
      if (key === "ffn_gate_inp_shexp" && t.shape.length === 1) extra.shape = [1, t.shape[0]];
      whole(t, `${prefix}${hf}.${kind}`, extra);
    }
  }
  const freqs = h.tensors.find((t) => t.name === "rope_freqs.weight");
  if (freqs) config.rope_scaling = await ropeFreqs(h, freqs, config);
  for (const t of tensors) {
    if (t.transform?.kind === "minusOne" && t.dtype !== "F32") {
      throw new GgufError(path, `tensor ${t.gguf}`, `a Gemma norm must be F32, got ${t.dtype}`);
    }
  }
  return { file: path, architecture: arch.architecture, header: h, config, tensors };
}

/** `n` bytes of the open GGUF file `f` from `offset`; a GgufError naming `where` if it ends first. */
async function readRange(
  f: Deno.FsFile,
  file: string,
  where: string,
  offset: number,
  n: number,
): Promise<Uint8Array> {
  const buf = new Uint8Array(n);
  await f.seek(offset, Deno.SeekMode.Start);
  for (let at = 0; at < n;) {
    const got = await f.read(buf.subarray(at));
    if (got === null) throw new GgufError(file, where, "file ended inside its data");
    at += got;
  }
  return buf;
}

/** The bytes of a source tensor, with the converter's changes undone. */
export async function readGgufTensor(f: Deno.FsFile, t: GgufSourceTensor): Promise<Uint8Array> {
  const buf = await readRange(f, t.file, `tensor ${t.gguf}`, t.offset, t.nbytes);
  if (!t.transform) return buf;
  if (t.transform.kind === "minusOne") {
    const x = new Float32Array(buf.buffer);
    for (let i = 0; i < x.length; i++) x[i] = x[i] - 1;
    return buf;
  }
  // llama.cpp's permute: within each head, HF row j·half + i (j ∈ {0,1}, i < half) was written as
  // row 2i + j. Undo it by rows (a row is whole blocks, so no block is touched).
  const rows = t.shape[0], rowBytes = t.nbytes / rows, heads = t.transform.heads;
  const half = rows / heads / 2;
  if (!Number.isInteger(half)) {
    throw new GgufError(
      "",
      `tensor ${t.gguf}`,
      `${rows} rows do not split into ${heads} heads of rope pairs`,
    );
  }
  const out = new Uint8Array(t.nbytes);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < 2; j++) {
      for (let i = 0; i < half; i++) {
        const dst = h * 2 * half + j * half + i, src = h * 2 * half + 2 * i + j;
        out.set(buf.subarray(src * rowBytes, (src + 1) * rowBytes), dst * rowBytes);
      }
    }
  }
  return out;
}
