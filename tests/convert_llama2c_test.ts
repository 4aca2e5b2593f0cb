import assert from "node:assert/strict";
import { SafetensorsFile } from "../lib/safetensors.ts";
import { convertLlama2c, Llama2cError, permuteRotary } from "../scripts/convert_llama2c.ts";

// Needs --allow-read --allow-write. The llama2.c source of the embedded model is committed beside it.
const STORIES_BIN = new URL("../models/stories260k/source/stories260K.bin", import.meta.url);
const COMMITTED = new URL("../models/stories260k/", import.meta.url);

/** A temporary directory, removed with everything in it when disposed. */
async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "rabbitllm-convert-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

async function floatsOf(f: SafetensorsFile, name: string): Promise<Float32Array> {
  return new Float32Array((await f.read(name)).buffer);
}

Deno.test("convertLlama2c reproduces the committed models/stories260k byte for byte", async () => {
  await using tmp = await tempDir();
  const out = tmp.path;
  const { header, tensors } = await convertLlama2c(STORIES_BIN, out);
  assert.deepEqual(header, {
    dim: 64,
    hiddenDim: 172,
    nLayers: 5,
    nHeads: 8,
    nKvHeads: 4,
    vocabSize: 512,
    seqLen: 512,
    sharedClassifier: true,
  });
  assert.equal(tensors.length, 1 + 5 * 9 + 1);
  assert.ok(!tensors.includes("lm_head.weight"));
  for (const file of ["model.safetensors", "config.json"]) {
    const got = await Deno.readFile(`${out}/${file}`);
    const want = await Deno.readFile(new URL(file, COMMITTED));
    assert.ok(got.length === want.length && got.every((b, i) => b === want[i]), `${file} differs`);
  }
  const config = JSON.parse(await Deno.readTextFile(`${out}/config.json`));
  assert.equal(config.head_dim, 8);
  assert.equal(config.tie_word_embeddings, true);
  assert.equal(config.max_position_embeddings, 512);
});

Deno.test("stories260k weights equal the llama2.c file at hand-computed offsets", async () => {
  const bin = await Deno.readFile(STORIES_BIN);
  const at = (floatIndex: number) => new DataView(bin.buffer).getFloat32(28 + 4 * floatIndex, true);
  using f = await SafetensorsFile.open(
    decodeURIComponent(new URL("model.safetensors", COMMITTED).pathname),
  );
  const dim = 64, hidden = 172, layers = 5, vocab = 512;

  // token embedding (512, 64) right after the 7-int header: token 300, columns 0, 17 and 63
  const emb = await floatsOf(f, "model.embed_tokens.weight");
  for (const [tok, col] of [[0, 0], [300, 0], [300, 17], [511, 63]]) {
    assert.equal(emb[tok * dim + col], at(tok * dim + col));
  }
  // wq of layer 1 after embedding, 5 attention norms and layer 0's wq; head size 8, so per head
  // HF row r < 4 is llama2.c row 2r, and HF row 4 + r is llama2.c row 2r + 1: in head 3,
  // HF row 29 (r = 5) is llama2.c row 27 and HF row 26 (r = 2) is llama2.c row 28.
  const wq1 = vocab * dim + layers * dim + dim * dim;
  const q = await floatsOf(f, "model.layers.1.self_attn.q_proj.weight");
  for (const [hfRow, binRow] of [[29, 27], [26, 28], [0, 0], [63, 63]]) {
    for (const col of [0, 5, 63]) {
      assert.equal(q[hfRow * dim + col], at(wq1 + binRow * dim + col), `q row ${hfRow}`);
    }
  }
  // wk of layer 0 (kv_dim 32) after all five wq: HF row 12 (head 1, r = 4) is llama2.c row 9
  const wk0 = vocab * dim + layers * dim + layers * dim * dim;
  const k = await floatsOf(f, "model.layers.0.self_attn.k_proj.weight");
  assert.equal(k.length, 32 * dim);
  assert.equal(k[12 * dim + 7], at(wk0 + 9 * dim + 7));
  // the final norm follows w1, w2 and w3 of every layer
  const kv = 32;
  const rmsFinal = vocab * dim + layers * (dim + 2 * dim * dim + 2 * kv * dim + dim) +
    layers * 3 * hidden * dim;
  const norm = await floatsOf(f, "model.norm.weight");
  assert.deepEqual([...norm], Array.from({ length: dim }, (_, i) => at(rmsFinal + i)));
});

/** A tiny synthetic legacy checkpoint whose every float is its own index. */
async function synthetic(path: string, header: number[], floats: number): Promise<void> {
  const buf = new ArrayBuffer(28 + 4 * floats);
  new Int32Array(buf, 0, 7).set(header);
  new Float32Array(buf, 28).set(Float32Array.from({ length: floats }, (_, i) => i));
  await Deno.writeFile(path, new Uint8Array(buf));
}

Deno.test("convertLlama2c handles other sizes and an unshared classifier", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  // dim 8, hidden 12, 2 layers, 2 heads (head size 4), 1 kv head, vocab 5 unshared, seq_len 3
  const [dim, hidden, L, kv, vocab, seq] = [8, 12, 2, 4, 5, 3];
  const beforeCls = vocab * dim + L * (2 * dim + 2 * dim * dim + 2 * kv * dim + 3 * hidden * dim) +
    dim + 2 * seq * 2;
  await synthetic(`${dir}/tiny.bin`, [dim, hidden, L, 2, 1, -vocab, seq], beforeCls + vocab * dim);
  const { tensors } = await convertLlama2c(`${dir}/tiny.bin`, `${dir}/out`);
  assert.equal(tensors.at(-1), "lm_head.weight");
  const config = JSON.parse(await Deno.readTextFile(`${dir}/out/config.json`));
  assert.equal(config.tie_word_embeddings, false);
  assert.equal(config.head_dim, 4);
  assert.equal(config.num_key_value_heads, 1);
  using f = await SafetensorsFile.open(`${dir}/out/model.safetensors`);
  assert.deepEqual(f.tensors.get("model.layers.1.mlp.down_proj.weight")!.shape, [dim, hidden]);
  assert.deepEqual(f.tensors.get("model.layers.0.self_attn.k_proj.weight")!.shape, [kv, dim]);
  const head = await floatsOf(f, "lm_head.weight");
  assert.equal(head[0], beforeCls);
  assert.equal(head.at(-1), beforeCls + vocab * dim - 1);
  // layer 1's k rows (1 head of size 4) come in order 0, 2, 1, 3
  const wk1 = vocab * dim + L * dim + L * dim * dim + kv * dim;
  const k = await floatsOf(f, "model.layers.1.self_attn.k_proj.weight");
  assert.deepEqual([0, 1, 2, 3].map((r) => k[r * dim]), [0, 2, 1, 3].map((r) => wk1 + r * dim));
});

Deno.test("permuteRotary takes each head's even rows, then its odd rows", () => {
  const w = Float32Array.from({ length: 2 * 6 }, (_, i) => i); // 2 heads of 6 rows, 1 column
  assert.deepEqual([...permuteRotary(w, 2, 6, 1)], [0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11]);
});

Deno.test("convertLlama2c rejects a truncated or foreign file and writes nothing", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const bin = await Deno.readFile(STORIES_BIN);
  const cut = `${dir}/cut.bin`;
  await Deno.writeFile(cut, bin.subarray(0, bin.length - 4));
  await assert.rejects(() => convertLlama2c(cut, `${dir}/out`), (e: Llama2cError) => {
    assert.ok(e instanceof Llama2cError);
    assert.equal(e.file, cut);
    assert.equal(
      e.message,
      `${cut}: file is 1056536 bytes but its header (dim 64, hidden 172, 5 layers, 8 heads, ` +
        `4 kv heads, vocab 512, seq_len 512, shared classifier) needs 1056540; is it truncated?`,
    );
    return true;
  });
  await Deno.writeFile(cut, bin.subarray(0, 20));
  await assert.rejects(() => convertLlama2c(cut, `${dir}/out`), /shorter than the 28-byte header/);
  const v1 = new Uint8Array(bin.subarray(0, 256));
  new DataView(v1.buffer).setUint32(0, 0x616b3432, true);
  new DataView(v1.buffer).setInt32(4, 1, true);
  await Deno.writeFile(cut, v1);
  await assert.rejects(() => convertLlama2c(cut, `${dir}/out`), /versioned llama2\.c export/);
  await synthetic(cut, [64, 172, 5, 7, 1, 512, 512], 100);
  await assert.rejects(() => convertLlama2c(cut, `${dir}/out`), /dim is not a multiple of nHeads/);
  await assert.rejects(() => Deno.stat(`${dir}/out`), Deno.errors.NotFound);
});
