/**
 * Converts a llama2.c legacy checkpoint (`export.py --version 0`, as the tinyllamas `.bin` files)
 * into a Hugging Face Llama directory: `config.json` and `model.safetensors` (f32).
 *
 * ```sh
 * deno run --allow-read --allow-write scripts/convert_llama2c.ts <model.bin> <out_dir>
 * ```
 *
 * The legacy file is 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 * vocab_size — negative when the classifier is not shared with the embedding —, seq_len), then f32
 * arrays, each weight in PyTorch's (out, in) layout:
 * ```
 * token_embedding (vocab, dim)        rms_att (layer, dim)
 * wq (layer, dim, dim)                wk (layer, kv_dim, dim)
 * wv (layer, kv_dim, dim)             wo (layer, dim, dim)
 * rms_ffn (layer, dim)                w1 (layer, hidden, dim)
 * w2 (layer, dim, hidden)             w3 (layer, hidden, dim)
 * rms_final (dim)                     freq_cis_real, freq_cis_imag (seq_len, head_size/2), unused
 * wcls (vocab, dim)                   only when unshared
 * ```
 * llama2.c rotates adjacent pairs (2i, 2i+1) of each head; Hugging Face Llama rotates halves
 * (i, i + head_size/2). So the rows of wq and wk are permuted per head: new row order
 * [0, 2, 4, …, hd-2, 1, 3, …, hd-1] of the old, the `permute` of transformers'
 * `convert_llama_weights_to_hf.py`: `w.view(heads, hd/2, 2, dim).transpose(1, 2)`.
 *
 * @module
 */

import { RabbitError } from "../lib/errors.ts";
import { type TensorData, writeSafetensors } from "../lib/safetensors.ts";

/** A llama2.c checkpoint is malformed or not in the legacy format. */
export class Llama2cError extends RabbitError {
  readonly file: string;
  constructor(file: string, what: string) {
    super(`${file}: ${what}`);
    this.file = file;
  }
}

/** The 7-int header of a legacy llama2.c checkpoint. */
export interface Llama2cHeader {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  seqLen: number;
  /** The classifier is the token embedding (vocab_size was positive). */
  sharedClassifier: boolean;
}

/** Bytes of the header: 7 int32. */
export const HEADER_BYTES = 28;

/** The magic of llama2.c's versioned exports ("ak42" little-endian), which this does not read. */
const VERSIONED_MAGIC = 0x616b3432;

/** Parses and checks the header from the first 28 bytes of `file`. */
export function parseLlama2cHeader(file: string, bytes: Uint8Array): Llama2cHeader {
  if (bytes.length < HEADER_BYTES) {
    throw new Llama2cError(file, `file is ${bytes.length} bytes, shorter than the 28-byte header`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  const i = (k: number) => v.getInt32(4 * k, true);
  if (v.getUint32(0, true) === VERSIONED_MAGIC) {
    throw new Llama2cError(
      file,
      `is a versioned llama2.c export (magic "ak42", version ${i(1)}); ` +
        `only the legacy format (export.py --version 0) is supported`,
    );
  }
  const h: Llama2cHeader = {
    dim: i(0),
    hiddenDim: i(1),
    nLayers: i(2),
    nHeads: i(3),
    nKvHeads: i(4),
    vocabSize: Math.abs(i(5)),
    seqLen: i(6),
    sharedClassifier: i(5) > 0,
  };
  const bad = (what: string) =>
    new Llama2cError(file, `header ${JSON.stringify(h)} is not a llama2.c checkpoint: ${what}`);
  for (const k of ["dim", "hiddenDim", "nLayers", "nHeads", "nKvHeads", "vocabSize", "seqLen"]) {
    if (!(h[k as keyof Llama2cHeader] as number > 0)) throw bad(`${k} must be positive`);
  }
  if (h.dim % h.nHeads !== 0) throw bad("dim is not a multiple of nHeads");
  if (h.nHeads % h.nKvHeads !== 0) throw bad("nHeads is not a multiple of nKvHeads");
  if ((h.dim / h.nHeads) % 2 !== 0) throw bad("the head size is odd");
  return h;
}

/** Each array of the checkpoint: its shape and its offset in floats after the header. */
export function llama2cLayout(h: Llama2cHeader): Map<string, { shape: number[]; at: number }> {
  const { dim, hiddenDim: hidden, nLayers: L, vocabSize: vocab, seqLen } = h;
  const headSize = dim / h.nHeads;
  const kvDim = headSize * h.nKvHeads;
  const arrays: [string, number[]][] = [
    ["token_embedding", [vocab, dim]],
    ["rms_att", [L, dim]],
    ["wq", [L, dim, dim]],
    ["wk", [L, kvDim, dim]],
    ["wv", [L, kvDim, dim]],
    ["wo", [L, dim, dim]],
    ["rms_ffn", [L, dim]],
    ["w1", [L, hidden, dim]],
    ["w2", [L, dim, hidden]],
    ["w3", [L, hidden, dim]],
    ["rms_final", [dim]],
    ["freq_cis_real", [seqLen, headSize / 2]],
    ["freq_cis_imag", [seqLen, headSize / 2]],
  ];
  if (!h.sharedClassifier) arrays.push(["wcls", [vocab, dim]]);
  const layout = new Map<string, { shape: number[]; at: number }>();
  let at = 0;
  for (const [name, shape] of arrays) {
    layout.set(name, { shape, at });
    at += shape.reduce((a, b) => a * b, 1);
  }
  layout.set("end", { shape: [], at });
  return layout;
}

/**
 * Reorders the rows of a (heads·headSize, cols) projection from llama2.c's interleaved rotary
 * pairs to Hugging Face's rotated halves: per head, new row j < hd/2 is old row 2j, new row
 * hd/2 + j is old row 2j + 1.
 */
export function permuteRotary(
  w: Float32Array,
  heads: number,
  headSize: number,
  cols: number,
): Float32Array {
  const out = new Float32Array(w.length);
  const half = headSize / 2;
  for (let h = 0; h < heads; h++) {
    for (let r = 0; r < headSize; r++) {
      const from = h * headSize + 2 * (r % half) + (r < half ? 0 : 1);
      out.set(w.subarray(from * cols, (from + 1) * cols), (h * headSize + r) * cols);
    }
  }
  return out;
}

/** The Hugging Face `config.json` of a converted checkpoint (transformers 5 keys). */
export function hfConfig(h: Llama2cHeader): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: 1,
    dtype: "float32",
    eos_token_id: 2,
    head_dim: h.dim / h.nHeads,
    hidden_act: "silu",
    hidden_size: h.dim,
    initializer_range: 0.02,
    intermediate_size: h.hiddenDim,
    max_position_embeddings: h.seqLen,
    mlp_bias: false,
    model_type: "llama",
    num_attention_heads: h.nHeads,
    num_hidden_layers: h.nLayers,
    num_key_value_heads: h.nKvHeads,
    rms_norm_eps: 1e-5,
    rope_parameters: { rope_theta: 10000.0, rope_type: "default" },
    rope_theta: 10000.0,
    tie_word_embeddings: h.sharedClassifier,
    use_cache: true,
    vocab_size: h.vocabSize,
  };
}

function bytesOf(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * Converts `binPath` into `outDir` (created if needed): `model.safetensors`, then `config.json`.
 * Throws {@linkcode Llama2cError} when the file's size does not match its header.
 */
export async function convertLlama2c(
  binPath: string | URL,
  outDir: string,
): Promise<{ header: Llama2cHeader; tensors: string[] }> {
  const file = binPath instanceof URL ? decodeURIComponent(binPath.pathname) : binPath;
  const raw = await Deno.readFile(binPath);
  const h = parseLlama2cHeader(file, raw);
  const layout = llama2cLayout(h);
  const want = HEADER_BYTES + 4 * layout.get("end")!.at;
  if (raw.length !== want) {
    throw new Llama2cError(
      file,
      `file is ${raw.length} bytes but its header (dim ${h.dim}, hidden ${h.hiddenDim}, ` +
        `${h.nLayers} layers, ${h.nHeads} heads, ${h.nKvHeads} kv heads, vocab ${h.vocabSize}, ` +
        `seq_len ${h.seqLen}, ${h.sharedClassifier ? "shared" : "separate"} classifier) ` +
        `needs ${want}` + (raw.length < want ? "; is it truncated?" : ""),
    );
  }
  const floats = new Float32Array(raw.buffer, raw.byteOffset + HEADER_BYTES, (want - 28) / 4);
  /** Array `name`, or its `layer`-th slice. */
  const get = (name: string, layer?: number): { data: Float32Array; shape: number[] } => {
    const { shape, at } = layout.get(name)!;
    const n = shape.reduce((a, b) => a * b, 1);
    if (layer === undefined) return { data: floats.subarray(at, at + n), shape };
    const per = n / shape[0];
    return {
      data: floats.subarray(at + layer * per, at + (layer + 1) * per),
      shape: shape.slice(1),
    };
  };
  const tensors: TensorData[] = [];
  const add = (name: string, t: { data: Float32Array; shape: number[] }) =>
    tensors.push({ name, dtype: "F32", shape: t.shape, data: bytesOf(t.data) });
  const headSize = h.dim / h.nHeads;
  const rotary = (t: { data: Float32Array; shape: number[] }, heads: number) => ({
    data: permuteRotary(t.data, heads, headSize, h.dim),
    shape: t.shape,
  });

  add("model.embed_tokens.weight", get("token_embedding"));
  for (let l = 0; l < h.nLayers; l++) {
    const p = `model.layers.${l}.`;
    add(p + "input_layernorm.weight", get("rms_att", l));
    add(p + "self_attn.q_proj.weight", rotary(get("wq", l), h.nHeads));
    add(p + "self_attn.k_proj.weight", rotary(get("wk", l), h.nKvHeads));
    add(p + "self_attn.v_proj.weight", get("wv", l));
    add(p + "self_attn.o_proj.weight", get("wo", l));
    add(p + "post_attention_layernorm.weight", get("rms_ffn", l));
    add(p + "mlp.gate_proj.weight", get("w1", l));
    add(p + "mlp.up_proj.weight", get("w3", l));
    add(p + "mlp.down_proj.weight", get("w2", l));
  }
  add("model.norm.weight", get("rms_final"));
  if (!h.sharedClassifier) add("lm_head.weight", get("wcls"));

  await Deno.mkdir(outDir, { recursive: true });
  await writeSafetensors(`${outDir}/model.safetensors`, tensors, { format: "pt" });
  await Deno.writeTextFile(`${outDir}/config.json`, JSON.stringify(hfConfig(h), null, 2) + "\n");
  return { header: h, tensors: tensors.map((t) => t.name) };
}

if (import.meta.main) {
  const [bin, out] = Deno.args;
  if (bin === undefined || out === undefined || Deno.args.length !== 2) {
    console.error(
      "usage: deno run --allow-read --allow-write scripts/convert_llama2c.ts <model.bin> <out_dir>",
    );
    Deno.exit(2);
  }
  try {
    const { header, tensors } = await convertLlama2c(bin, out);
    console.log(`${bin} → ${out}: ${tensors.length} tensors, ${JSON.stringify(header)}`);
  } catch (e) {
    if (!(e instanceof RabbitError)) throw e;
    console.error(`error: ${e.message}`);
    Deno.exit(1);
  }
}
