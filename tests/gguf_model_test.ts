/**
 * lib/gguf_model.ts: a GGUF file as a checkpoint. Small GGUF files written here (a writer of the
 * format's few value types) check each thing llama.cpp's converter does that the loader undoes —
 * the q/k row permutation (by hand-derived row order, on float and on block rows), Gemma's stored
 * 1 + w, stacked experts — the config built from the metadata, and every refusal: a type without
 * kernels, an unknown architecture or tensor, per-dimension rope factors, several files in one
 * directory. Parity of whole models against transformers' GGUF loader is in tests/parity_test.ts
 * (the gguf_* fixtures).
 */
import assert from "node:assert/strict";
import { CheckpointError, GgufError, InputError } from "../lib/errors.ts";
import { openGguf, readGgufTensor } from "../lib/gguf_model.ts";
import { readGgufHeader } from "../lib/gguf.ts";
import { quantize } from "../lib/quant.ts";
import { AutoModel } from "../mod.ts";
import { openCheckpoint } from "../lib/auto_model.ts";
import { SafetensorsFile } from "../lib/safetensors.ts";
import { runParity } from "./parity_lib.ts";

const tmp = new URL("./.tmp/gguf_model/", import.meta.url).pathname;
await Deno.mkdir(tmp, { recursive: true });

const enc = new TextEncoder();
type Val =
  | { u32: number }
  | { f32: number }
  | { str: string }
  | { strs: string[] }
  | { bool: boolean }
  | { i32s: number[] }
  | { f32s: number[] };
interface T {
  name: string;
  /** Row-major shape (GGUF dims are its reverse). */
  shape: number[];
  /** ggml type id (0 F32, 8 Q8_0, 17 IQ2_XS, ...). */
  type?: number;
  data: Uint8Array;
}

function u32(v: number) {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
}
function u64(v: number) {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
  return b;
}
function str(s: string) {
  const b = enc.encode(s);
  return [u64(b.length), b];
}
function value(v: Val): Uint8Array[] {
  if ("u32" in v) return [u32(4), u32(v.u32)];
  if ("f32" in v) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v.f32, true);
    return [u32(6), b];
  }
  if ("str" in v) return [u32(8), ...str(v.str)];
  if ("bool" in v) return [u32(7), new Uint8Array([v.bool ? 1 : 0])];
  if ("i32s" in v) {
    return [u32(9), u32(5), u64(v.i32s.length), new Uint8Array(new Int32Array(v.i32s).buffer)];
  }
  if ("f32s" in v) {
    return [u32(9), u32(6), u64(v.f32s.length), new Uint8Array(new Float32Array(v.f32s).buffer)];
  }
  return [u32(9), u32(8), u64(v.strs.length), ...v.strs.flatMap(str)];
}

/** Writes a GGUF v3 file (alignment 32) with `kv` and `tensors`; returns its path. */
async function writeGguf(name: string, kv: Record<string, Val>, tensors: T[]): Promise<string> {
  const parts: Uint8Array[] = [u32(0x46554747), u32(3), u64(tensors.length)];
  parts.push(u64(Object.keys(kv).length));
  for (const [k, v] of Object.entries(kv)) parts.push(...str(k), ...value(v));
  let offset = 0;
  for (const t of tensors) {
    parts.push(...str(t.name), u32(t.shape.length), ...[...t.shape].reverse().map(u64));
    parts.push(u32(t.type ?? 0), u64(offset));
    offset += Math.ceil(t.data.length / 32) * 32;
  }
  let n = parts.reduce((a, p) => a + p.length, 0);
  parts.push(new Uint8Array((32 - (n % 32)) % 32));
  for (const t of tensors) {
    parts.push(t.data, new Uint8Array((32 - (t.data.length % 32)) % 32));
  }
  n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  const path = `${tmp}${name}.gguf`;
  await Deno.writeFile(path, out);
  return path;
}

const f32 = (values: number[]) => new Uint8Array(new Float32Array(values).buffer);
/** An F32 tensor of `shape` whose row r holds r + 0.5 in every element (row identity). */
const rowIds = (name: string, shape: number[], base = 0): T => {
  const cols = shape.length > 1 ? shape[shape.length - 1] : 1;
  const rows = shape.reduce((a, b) => a * b, 1) / cols;
  const v: number[] = [];
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) v.push(base + r + 0.5);
  return { name, shape, data: f32(v) };
};

/** A minimal llama: D=8, 2 heads of 4, 1 kv head, FF 16, 1 layer, vocab 6, tied. */
function llamaKv(extra: Record<string, Val> = {}): Record<string, Val> {
  return {
    "general.architecture": { str: "llama" },
    "general.name": { str: "tiny" },
    "llama.context_length": { u32: 64 },
    "llama.embedding_length": { u32: 8 },
    "llama.block_count": { u32: 1 },
    "llama.feed_forward_length": { u32: 16 },
    "llama.attention.head_count": { u32: 2 },
    "llama.attention.head_count_kv": { u32: 1 },
    "llama.attention.layer_norm_rms_epsilon": { f32: 1e-5 },
    "llama.rope.freq_base": { f32: 500000 },
    ...extra,
  };
}
function llamaTensors(): T[] {
  return [
    rowIds("token_embd.weight", [6, 8]),
    rowIds("output_norm.weight", [8]),
    rowIds("blk.0.attn_norm.weight", [8]),
    rowIds("blk.0.attn_q.weight", [8, 8]),
    rowIds("blk.0.attn_k.weight", [4, 8]),
    rowIds("blk.0.attn_v.weight", [4, 8]),
    rowIds("blk.0.attn_output.weight", [8, 8]),
    rowIds("blk.0.ffn_norm.weight", [8]),
    rowIds("blk.0.ffn_gate.weight", [16, 8]),
    rowIds("blk.0.ffn_up.weight", [16, 8]),
    rowIds("blk.0.ffn_down.weight", [8, 16]),
  ];
}

async function rowsOf(path: string, hfName: string): Promise<number[]> {
  const g = await openGguf(path);
  const t = g.tensors.find((t) => t.name === hfName);
  assert.ok(t, `${hfName} mapped`);
  using f = await Deno.open(path);
  const bytes = await readGgufTensor(f, t);
  const x = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const cols = t.shape.length > 1 ? t.shape[t.shape.length - 1] : 1;
  return Array.from({ length: x.length / cols }, (_, r) => x[r * cols]);
}

Deno.test("gguf model: llama's config comes from the metadata; names map to transformers'", async () => {
  const p = await writeGguf("llama", llamaKv(), llamaTensors());
  const g = await openGguf(p);
  assert.equal(g.architecture, "LlamaForCausalLM");
  assert.equal(g.config.hidden_size, 8);
  assert.equal(g.config.num_key_value_heads, 1);
  assert.equal(g.config.intermediate_size, 16);
  assert.equal(g.config.rope_theta, 500000);
  assert.equal(g.config.vocab_size, 6); // token_embd's rows
  assert.equal(g.config.tie_word_embeddings, true); // no output.weight
  assert.deepEqual(
    g.tensors.map((t) => t.name).sort(),
    [
      "model.embed_tokens.weight",
      "model.norm.weight",
      "model.layers.0.input_layernorm.weight",
      "model.layers.0.self_attn.q_proj.weight",
      "model.layers.0.self_attn.k_proj.weight",
      "model.layers.0.self_attn.v_proj.weight",
      "model.layers.0.self_attn.o_proj.weight",
      "model.layers.0.post_attention_layernorm.weight",
      "model.layers.0.mlp.gate_proj.weight",
      "model.layers.0.mlp.up_proj.weight",
      "model.layers.0.mlp.down_proj.weight",
    ].sort(),
  );
  const ck = await openCheckpoint(p);
  assert.equal(ck.config.numKvHeads, 1);
  assert.equal(ck.config.headDim, 4);
  assert.ok(ck.gguf);
  await assert.rejects(openCheckpoint(p, { dtype: "q8_0" }), InputError);
});

Deno.test("gguf model: llama.cpp's q/k row permutation is undone (hand-derived row order)", async () => {
  const p = await writeGguf("perm", llamaKv(), llamaTensors());
  // Per head of 4 rows (half = 2) the converter wrote HF rows [0, 2, 1, 3] as GGUF rows 0..3:
  // GGUF row 2i + j holds HF row j·half + i. Reading GGUF rows r (value r + 0.5) back in HF order:
  assert.deepEqual(await rowsOf(p, "model.layers.0.self_attn.q_proj.weight"), [
    0.5,
    2.5,
    1.5,
    3.5,
    4.5,
    6.5,
    5.5,
    7.5,
  ]);
  assert.deepEqual(await rowsOf(p, "model.layers.0.self_attn.k_proj.weight"), [
    0.5,
    2.5,
    1.5,
    3.5,
  ]);
  // v is not permuted.
  assert.deepEqual(await rowsOf(p, "model.layers.0.self_attn.v_proj.weight"), [
    0.5,
    1.5,
    2.5,
    3.5,
  ]);
});

Deno.test("gguf model: block rows move whole, byte for byte (Q8_0 q_proj)", async () => {
  // 8 rows of one Q8_0 block (32 values, 34 bytes) each: row r's bytes all equal r.
  const rows = 8, rowBytes = 34;
  const data = new Uint8Array(rows * rowBytes);
  for (let r = 0; r < rows; r++) data.fill(r, r * rowBytes, (r + 1) * rowBytes);
  const kv = llamaKv({
    "llama.embedding_length": { u32: 32 },
    "llama.attention.head_count": { u32: 2 },
  });
  const p = await writeGguf("q8", kv, [
    { name: "blk.0.attn_q.weight", shape: [8, 32], type: 8, data },
  ]);
  const g = await openGguf(p).catch((e) => e);
  // token_embd is missing: refused, naming it
  assert.ok(g instanceof GgufError && g.message.includes("token_embd.weight"), String(g));
  const p2 = await writeGguf("q8b", kv, [rowIds("token_embd.weight", [6, 32]), {
    name: "blk.0.attn_q.weight",
    shape: [8, 32],
    type: 8,
    data,
  }]);
  const t = (await openGguf(p2)).tensors.find((t) => t.name.endsWith("q_proj.weight"))!;
  assert.equal(t.dtype, "Q8_0");
  using f = await Deno.open(p2);
  const out = await readGgufTensor(f, t);
  assert.deepEqual(
    Array.from({ length: rows }, (_, r) => out[r * rowBytes]),
    [0, 2, 1, 3, 4, 6, 5, 7],
  );
  for (let r = 0; r < rows; r++) {
    const row = out.subarray(r * rowBytes, (r + 1) * rowBytes);
    assert.ok(row.every((b) => b === row[0]), `row ${r} moved whole`);
  }
});

Deno.test("gguf model: gemma norms lose the stored +1; others keep their values", async () => {
  const kv: Record<string, Val> = {
    "general.architecture": { str: "gemma2" },
    "gemma2.context_length": { u32: 64 },
    "gemma2.embedding_length": { u32: 8 },
    "gemma2.block_count": { u32: 1 },
    "gemma2.feed_forward_length": { u32: 16 },
    "gemma2.attention.head_count": { u32: 2 },
    "gemma2.attention.head_count_kv": { u32: 1 },
    "gemma2.attention.key_length": { u32: 4 },
    "gemma2.attention.layer_norm_rms_epsilon": { f32: 1e-6 },
    "gemma2.attention.sliding_window": { u32: 16 },
    "gemma2.attn_logit_softcapping": { f32: 50 },
    "gemma2.final_logit_softcapping": { f32: 30 },
  };
  const p = await writeGguf("gemma2", kv, [
    rowIds("token_embd.weight", [6, 8]),
    { name: "output_norm.weight", shape: [2], data: f32([1.25, 3]) },
    { name: "blk.0.post_ffw_norm.weight", shape: [2], data: f32([1, 0.5]) },
    rowIds("blk.0.attn_q.weight", [8, 8]),
  ]);
  const g = await openGguf(p);
  assert.equal(g.architecture, "Gemma2ForCausalLM");
  assert.equal(g.config.sliding_window, 16);
  assert.equal(g.config.final_logit_softcapping, 30);
  assert.deepEqual(await rowsOf(p, "model.norm.weight"), [0.25, 2]);
  assert.deepEqual(await rowsOf(p, "model.layers.0.post_feedforward_layernorm.weight"), [0, -0.5]);
  // gemma is not permuted
  assert.deepEqual(
    await rowsOf(p, "model.layers.0.self_attn.q_proj.weight"),
    [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5],
  );
});

Deno.test("gguf model: stacked experts become one tensor per expert", async () => {
  const kv: Record<string, Val> = {
    "general.architecture": { str: "qwen3moe" },
    "qwen3moe.context_length": { u32: 64 },
    "qwen3moe.embedding_length": { u32: 8 },
    "qwen3moe.block_count": { u32: 1 },
    "qwen3moe.feed_forward_length": { u32: 16 },
    "qwen3moe.expert_feed_forward_length": { u32: 4 },
    "qwen3moe.expert_count": { u32: 3 },
    "qwen3moe.expert_used_count": { u32: 2 },
    "qwen3moe.attention.head_count": { u32: 2 },
    "qwen3moe.attention.head_count_kv": { u32: 1 },
    "qwen3moe.attention.key_length": { u32: 4 },
    "qwen3moe.attention.layer_norm_rms_epsilon": { f32: 1e-6 },
  };
  const p = await writeGguf("moe", kv, [
    rowIds("token_embd.weight", [6, 8]),
    rowIds("blk.0.ffn_up_exps.weight", [3, 4, 8]),
  ]);
  const g = await openGguf(p);
  assert.equal(g.config.num_experts, 3);
  assert.equal(g.config.moe_intermediate_size, 4);
  assert.equal(g.config.norm_topk_prob, true);
  for (let e = 0; e < 3; e++) {
    const rows = await rowsOf(p, `model.layers.0.mlp.experts.${e}.up_proj.weight`);
    assert.deepEqual(rows, [0, 1, 2, 3].map((r) => e * 4 + r + 0.5), `expert ${e}`);
  }
});

Deno.test("gguf model: refusals name the type, architecture, tensor or files", async () => {
  const bad = async (
    name: string,
    kv: Record<string, Val>,
    ts: T[],
    where: string,
    what: RegExp,
  ) => {
    const err = await openGguf(await writeGguf(name, kv, ts)).then(() => null, (e) => e);
    assert.ok(err instanceof GgufError, `${name}: ${err}`);
    assert.equal(err.where, where, err.message);
    assert.match(err.message, what);
  };
  // IQ2_XS (type 17, 256 values in 74 bytes): no kernel.
  await bad(
    "iq",
    llamaKv(),
    [...llamaTensors(), {
      name: "blk.0.attn_v.bias",
      shape: [256],
      type: 17,
      data: new Uint8Array(74),
    }],
    "tensor blk.0.attn_v.bias",
    /type IQ2_XS is not supported/,
  );
  await bad(
    "arch",
    { ...llamaKv(), "general.architecture": { str: "mamba" } },
    llamaTensors(),
    "key general.architecture",
    /"mamba" is not supported/,
  );
  await bad(
    "unknown",
    llamaKv(),
    [...llamaTensors(), rowIds("blk.0.attn_zz.weight", [2])],
    "tensor blk.0.attn_zz.weight",
    /unknown tensor for llama/,
  );
  await bad(
    "ropefreqs",
    llamaKv(),
    [...llamaTensors(), rowIds("rope_freqs.weight", [3])],
    "tensor rope_freqs.weight",
    /expected F32 \[2\], got F32 \[3\]/,
  );
  await bad(
    "nohead",
    { ...llamaKv(), "llama.attention.head_count": { str: "two" } },
    llamaTensors(),
    "key llama.attention.head_count",
    /expected a number/,
  );
  // A directory with two GGUF files and no config.json: which one is for the user to say.
  const dir = `${tmp}two/`;
  await Deno.mkdir(dir, { recursive: true });
  await Deno.copyFile(await writeGguf("a", llamaKv(), llamaTensors()), `${dir}a.gguf`);
  await Deno.copyFile(await writeGguf("b", llamaKv(), llamaTensors()), `${dir}b.gguf`);
  const err = await openCheckpoint(dir).then(() => null, (e) => e);
  assert.ok(err instanceof CheckpointError && /a\.gguf, b\.gguf.*ggufFile/.test(err.message), err);
  const ck = await openCheckpoint(dir, { ggufFile: "b.gguf" });
  assert.ok(ck.gguf?.file.endsWith("/two/b.gguf"));
});

/** HF layer tensor → llama.cpp's name (convert_hf_to_gguf.py's tensor map, the part used here). */
const GGUF_NAMES: Record<string, string> = {
  input_layernorm: "attn_norm",
  "self_attn.q_proj": "attn_q",
  "self_attn.k_proj": "attn_k",
  "self_attn.v_proj": "attn_v",
  "self_attn.o_proj": "attn_output",
  post_attention_layernorm: "ffn_norm",
  "mlp.gate_proj": "ffn_gate",
  "mlp.up_proj": "ffn_up",
  "mlp.down_proj": "ffn_down",
  "mlp.gate": "ffn_gate_inp",
  "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
  "mlp.shared_expert.up_proj": "ffn_up_shexp",
  "mlp.shared_expert.down_proj": "ffn_down_shexp",
  "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
};

/**
 * A safetensors fixture (F32) written as llama.cpp's converter writes it: renamed, experts stacked,
 * the shared expert gate 1-D, q/k rows permuted when `heads` is given ([q heads, kv heads]), plus
 * `extra` tensors. Returns the directory holding model.gguf.
 */
async function ggufOfFixture(
  fixture: string,
  kv: Record<string, Val>,
  heads: [number, number] | null,
  extra: T[] = [],
): Promise<string> {
  const src = new URL(`./fixtures/${fixture}/`, import.meta.url).pathname;
  using st = await SafetensorsFile.open(`${src}model.safetensors`);
  return await ggufOfFixtureFrom(st, fixture, kv, heads, extra);
}

/** {@link ggufOfFixture} of an open file; `encode` may store a tensor in a block type instead. */
async function ggufOfFixtureFrom(
  st: SafetensorsFile,
  fixture: string,
  kv: Record<string, Val>,
  heads: [number, number] | null,
  extra: T[] = [],
  encode: (
    gguf: string,
    shape: number[],
    f32: Uint8Array,
  ) => { type: number; data: Uint8Array } | null = () => null,
): Promise<string> {
  const tensors: T[] = [...extra];
  const stacked = new Map<string, { shape: number[]; parts: Uint8Array[] }>();
  const permute = (data: Uint8Array, shape: number[], n: number) => {
    // llama.cpp's LlamaModel.permute: HF row j·half + i of each head becomes row 2i + j.
    const rows = shape[0], rowBytes = data.length / rows, half = rows / n / 2;
    const out = new Uint8Array(data.length);
    for (let h = 0; h < n; h++) {
      for (let j = 0; j < 2; j++) {
        for (let i = 0; i < half; i++) {
          const from = h * 2 * half + j * half + i, to = h * 2 * half + 2 * i + j;
          out.set(data.subarray(from * rowBytes, (from + 1) * rowBytes), to * rowBytes);
        }
      }
    }
    return out;
  };
  for (const [name, info] of st.tensors) {
    assert.equal(info.dtype, "F32");
    let data = await st.read(name);
    if (name === "model.embed_tokens.weight") {
      tensors.push({ name: "token_embd.weight", shape: info.shape, data });
    } else if (name === "model.norm.weight") {
      tensors.push({ name: "output_norm.weight", shape: info.shape, data });
    } else if (name === "lm_head.weight") {
      tensors.push({ name: "output.weight", shape: info.shape, data });
    } else {
      const m = /^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(name)!;
      const e = /^mlp\.experts\.(\d+)\.(gate|up|down)_proj$/.exec(m[2]);
      if (e) {
        const key = `blk.${m[1]}.ffn_${e[2]}_exps.weight`;
        const s = stacked.get(key) ?? { shape: info.shape, parts: [] };
        s.parts[Number(e[1])] = data;
        stacked.set(key, s);
        continue;
      }
      if (heads && m[2] === "self_attn.q_proj") data = permute(data, info.shape, heads[0]);
      if (heads && m[2] === "self_attn.k_proj") data = permute(data, info.shape, heads[1]);
      const shape = m[2] === "mlp.shared_expert_gate" ? [info.shape[1]] : info.shape; // GGUF: 1-D
      tensors.push({ name: `blk.${m[1]}.${GGUF_NAMES[m[2]]}.${m[3]}`, shape, data });
    }
  }
  for (const [name, s] of stacked) {
    const all = new Uint8Array(s.parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of s.parts) all.set(p, (o += p.length) - p.length);
    tensors.push({ name, shape: [s.parts.length, ...s.shape], data: all });
  }
  for (const t of tensors) {
    const e = t.type === undefined ? encode(t.name, t.shape, t.data) : null;
    if (e) Object.assign(t, e);
  }
  const dir = `${tmp}${fixture}/`;
  await Deno.mkdir(dir, { recursive: true });
  await Deno.rename(await writeGguf(fixture, kv, tensors), `${dir}model.gguf`);
  return dir;
}

/** Parity of the GGUF in `dir` against a safetensors fixture's transformers reference. */
async function parityWith(fixture: string, dir: string) {
  const src = new URL(`./fixtures/${fixture}/`, import.meta.url).pathname;
  const ref = JSON.parse(await Deno.readTextFile(`${src}reference.json`));
  const logits = new Float32Array((await Deno.readFile(`${src}${ref.logits.file}`)).buffer);
  for (const useCache of [false, true]) {
    const r = await runParity(
      { name: `gguf_of_${fixture}`, dir, ref, logits },
      { prefetching: true, useCache },
    );
    assert.ok(
      r.ok,
      `useCache ${useCache}: max|Δ| ${r.maxAbsDiff} (tolerance ${r.tolerance}), greedy ${r.greedyEqual}`,
    );
  }
}

Deno.test("gguf model: Qwen2-MoE (dense layer, shared expert, stacked experts) equals its safetensors reference", async () => {
  // transformers' GGUF loader ignores expert_feed_forward_length, so no tiny qwen2moe GGUF has a
  // transformers reference; the qwen2_moe safetensors fixture's does: write its F32 weights as
  // llama.cpp would (stacked experts, 1-D shared expert gate) and compare with its logits.
  const cfg = JSON.parse(
    await Deno.readTextFile(new URL("./fixtures/qwen2_moe/config.json", import.meta.url)),
  );
  const dir = await ggufOfFixture("qwen2_moe", {
    "general.architecture": { str: "qwen2moe" },
    "qwen2moe.context_length": { u32: cfg.max_position_embeddings },
    "qwen2moe.embedding_length": { u32: cfg.hidden_size },
    "qwen2moe.block_count": { u32: cfg.num_hidden_layers },
    "qwen2moe.feed_forward_length": { u32: cfg.intermediate_size },
    "qwen2moe.expert_feed_forward_length": { u32: cfg.moe_intermediate_size },
    "qwen2moe.expert_shared_feed_forward_length": { u32: cfg.shared_expert_intermediate_size },
    "qwen2moe.expert_count": { u32: cfg.num_experts },
    "qwen2moe.expert_used_count": { u32: cfg.num_experts_per_tok },
    "qwen2moe.attention.head_count": { u32: cfg.num_attention_heads },
    "qwen2moe.attention.head_count_kv": { u32: cfg.num_key_value_heads },
    "qwen2moe.attention.layer_norm_rms_epsilon": { f32: cfg.rms_norm_eps },
    "qwen2moe.rope.freq_base": { f32: cfg.rope_parameters?.rope_theta ?? cfg.rope_theta },
  }, null);
  assert.deepEqual((await openGguf(`${dir}model.gguf`)).config.mlp_only_layers, [1]);
  await parityWith("qwen2_moe", dir);
});

Deno.test("gguf model: Llama 3 rope from rope_freqs (as convert_hf_to_gguf.py writes it) equals the llama3-rope reference", async () => {
  // The llama3_rope fixture: factor 8, low 1, high 4, original 32, theta 500000, head_dim 32, and
  // sequences of 40 — its frequencies fall in all three bands. convert_hf_to_gguf.py stores the
  // per-pair divisors as rope_freqs.weight (LlamaModel.generate_extra_tensors), computed here the
  // same way from the fixture's config.
  const cfg = JSON.parse(
    await Deno.readTextFile(new URL("./fixtures/llama3_rope/config.json", import.meta.url)),
  );
  const sc = cfg.rope_scaling;
  const theta = cfg.rope_theta, dim = cfg.hidden_size / cfg.num_attention_heads;
  const low = sc.original_max_position_embeddings / sc.low_freq_factor;
  const high = sc.original_max_position_embeddings / sc.high_freq_factor;
  const factors: number[] = [];
  for (let i = 0; i < dim; i += 2) {
    const freq = 1 / Math.fround(Math.pow(theta, Math.fround(i / dim)));
    const wavelen = 2 * Math.PI / freq;
    if (wavelen < high) factors.push(1);
    else if (wavelen > low) factors.push(sc.factor);
    else {
      const smooth = (sc.original_max_position_embeddings / wavelen - sc.low_freq_factor) /
        (sc.high_freq_factor - sc.low_freq_factor);
      factors.push(1 / ((1 - smooth) / sc.factor + smooth));
    }
  }
  assert.ok(
    factors.includes(1) && factors.includes(sc.factor) &&
      factors.some((f) => f !== 1 && f !== sc.factor),
    "all three bands",
  );
  const H = cfg.num_attention_heads, KV = cfg.num_key_value_heads ?? H;
  const dir = await ggufOfFixture(
    "llama3_rope",
    {
      "general.architecture": { str: "llama" },
      "llama.context_length": { u32: cfg.max_position_embeddings },
      "llama.embedding_length": { u32: cfg.hidden_size },
      "llama.block_count": { u32: cfg.num_hidden_layers },
      "llama.feed_forward_length": { u32: cfg.intermediate_size },
      "llama.attention.head_count": { u32: H },
      "llama.attention.head_count_kv": { u32: KV },
      "llama.attention.layer_norm_rms_epsilon": { f32: cfg.rms_norm_eps },
      "llama.rope.freq_base": { f32: theta },
      "llama.rope.dimension_count": { u32: dim },
    },
    [H, KV],
    [{ name: "rope_freqs.weight", shape: [dim / 2], data: f32(factors) }],
  );
  await parityWith("llama3_rope", dir);
});

Deno.test("gguf model: stories260k as a Q8_0 GGUF with its tokenizer metadata writes the reference story", async () => {
  // The real model: weights as convert_hf_to_gguf.py + Q8_0 would write them (q/k permuted, every
  // matmul weight with whole 32-blocks in Q8_0 — quantized by lib/quant.ts, byte-equal to gguf-py;
  // ffn_down's 172-value rows stay F32 — norms F32, the tied embedding Q8_0), and the tokenizer
  // metadata tests/fixtures/gguf_tokenizers/stories260k.gguf carries (as convert_hf_to_gguf.py
  // writes it from tok512.model). Greedy from BOS must give transformers' story, as text.
  const tok = await readGgufHeader(
    new URL("./fixtures/gguf_tokenizers/stories260k.gguf", import.meta.url).pathname,
  );
  const kv: Record<string, Val> = {
    ...llamaKv(),
    "general.name": { str: "stories260K" },
    "llama.context_length": { u32: 512 },
    "llama.embedding_length": { u32: 64 },
    "llama.block_count": { u32: 5 },
    "llama.feed_forward_length": { u32: 172 },
    "llama.attention.head_count": { u32: 8 },
    "llama.attention.head_count_kv": { u32: 4 },
    "llama.rope.freq_base": { f32: 10000 },
  };
  for (const [key, v] of tok.metadata) {
    if (!key.startsWith("tokenizer.")) continue;
    if (key === "tokenizer.ggml.scores") kv[key] = { f32s: v as number[] };
    else if (key === "tokenizer.ggml.token_type") kv[key] = { i32s: v as number[] };
    else if (Array.isArray(v)) kv[key] = { strs: v as string[] };
    else if (typeof v === "boolean") kv[key] = { bool: v };
    else if (typeof v === "number") kv[key] = { u32: v };
    else kv[key] = { str: String(v) };
  }
  const stories = new URL("../models/stories260k/", import.meta.url).pathname;
  using st = await SafetensorsFile.open(`${stories}model.safetensors`);
  const q8 = new Set(["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"]);
  const extra: T[] = [];
  const dir = await ggufOfFixtureFrom(st, "stories260k", kv, [8, 4], extra, (gguf, shape, data) => {
    const blk = /^blk\.\d+\.(\w+)\.weight$/.exec(gguf)?.[1];
    if (gguf !== "token_embd.weight" && !(blk && q8.has(blk))) return null;
    const x = new Float32Array(data.buffer, data.byteOffset, data.byteLength / 4);
    return { type: 8, data: quantize(x, "Q8_0", shape[shape.length - 1]) };
  });
  const g = await openGguf(`${dir}model.gguf`);
  assert.equal(g.tensors.find((t) => t.name === "model.embed_tokens.weight")?.dtype, "Q8_0");
  await using model = await AutoModel.fromPretrained(dir, {
    layerShardsSavingPath: `${tmp}stories260k-split`,
    quiet: true,
  });
  assert.ok(model.tokenizer, "the tokenizer comes from the metadata");
  const ref = JSON.parse(
    await Deno.readTextFile(new URL("./fixtures/stories260k/reference.json", import.meta.url)),
  );
  const [ids] = await model.generate([[1]], { maxNewTokens: 64, eosTokenId: [] });
  assert.deepEqual(ids.slice(1), ref.greedy.new_tokens);
  assert.equal(model.tokenizer.decode(ids.slice(1), { skipSpecialTokens: true }), ref.greedy_text);
  // A string prompt goes through the GGUF tokenizer (with its BOS) like the HF one.
  const [viaText] = await model.generate("Once upon a time", { maxNewTokens: 8 });
  assert.deepEqual(viaText.slice(0, 1), [1]);
  assert.ok(
    model.tokenizer.decode(viaText, { skipSpecialTokens: true }).startsWith("Once upon a time"),
  );
});
