/**
 * lib/gguf.ts: the header of a GGUF written by gguf-py reads as gguf-py's own reader reads it
 * (scripts/make_gguf_reference.py), and every malformed header is a GgufError naming the key or
 * tensor — truncation at every point included — never another error or an unbounded allocation.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { GgufError } from "../lib/errors.ts";
import { ggufValue, readGgufHeader } from "../lib/gguf.ts";
import { Backend } from "../ffi/backend.ts";

const fixture = new URL("./fixtures/gguf/", import.meta.url);
const tiny = new URL("tiny.gguf", fixture).pathname;
const expected = JSON.parse(await Deno.readTextFile(new URL("expected.json", fixture)));
const tmp = new URL("./.tmp/gguf/", import.meta.url).pathname;
await Deno.mkdir(tmp, { recursive: true });

Deno.test("gguf: tiny.gguf reads as gguf-py reads it: metadata, shapes, types, offsets, bytes", async () => {
  const h = await readGgufHeader(tiny);
  assert.equal(h.version, 3);
  assert.equal(h.alignment, 64);
  assert.equal(h.fileBytes, expected.file_bytes);
  for (const [key, want] of Object.entries(expected.metadata)) {
    const got = h.metadata.get(key);
    // gguf-py's reader flattens nested arrays; ours keeps the nesting the writer was given.
    if (key === "test.nested") {
      assert.deepEqual(got, [[1, 2], [3]]);
      continue;
    }
    if (typeof want === "number" && !Number.isInteger(want)) assert.equal(got, want, key);
    else assert.deepEqual(got, want, key);
  }
  assert.equal(h.metadata.size, Object.keys(expected.metadata).length);
  const bytes = await Deno.readFile(tiny);
  assert.deepEqual(
    h.tensors.map((t) => t.name),
    expected.tensors.map((t: { name: string }) => t.name),
  );
  for (const [i, t] of h.tensors.entries()) {
    const e = expected.tensors[i];
    assert.deepEqual(t.shape, e.shape, t.name);
    assert.equal(t.type, e.type, t.name);
    assert.equal(t.offset, e.offset, t.name);
    assert.equal(t.nbytes, e.nbytes, t.name);
    const sha = createHash("sha256").update(bytes.subarray(t.offset, t.offset + t.nbytes)).digest(
      "hex",
    );
    assert.equal(sha, e.sha256, t.name);
  }
});

// ---- malformed headers ------------------------------------------------------------------------

const enc = new TextEncoder();
function u32(v: number) {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
}
function u64(v: number | bigint) {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
  return b;
}
function str(s: string, len?: number | bigint) {
  const b = enc.encode(s);
  return [u64(len ?? b.length), b];
}
interface Spec {
  magic?: number;
  version?: number;
  kv?: Uint8Array[][];
  tensors?: { name: string; dims: number[]; type: number; offset: number; nd?: number }[];
  /** Bytes of data after the header (aligned to 32). */
  data?: number;
  nTensors?: bigint;
  nKv?: bigint;
}
async function craft(name: string, s: Spec): Promise<string> {
  const kv = s.kv ?? [];
  const tensors = s.tensors ?? [];
  const parts: Uint8Array[] = [
    u32(s.magic ?? 0x46554747),
    u32(s.version ?? 3),
    u64(s.nTensors ?? tensors.length),
    u64(s.nKv ?? kv.length),
    ...kv.flat(),
  ];
  for (const t of tensors) {
    parts.push(
      ...str(t.name),
      u32(t.nd ?? t.dims.length),
      ...t.dims.map(u64),
      u32(t.type),
      u64(t.offset),
    );
  }
  let n = parts.reduce((a, p) => a + p.length, 0);
  const pad = (32 - (n % 32)) % 32;
  parts.push(new Uint8Array(pad + (s.data ?? 0)));
  n += pad + (s.data ?? 0);
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
const kvU32 = (key: string, v: number) => [...str(key), u32(4), u32(v)];
const f32Tensor = (name: string, offset = 0, dims = [8, 2]) => ({ name, dims, type: 0, offset });

async function refused(path: string, where: string | undefined, includes: string | RegExp) {
  const err = await readGgufHeader(path).then(() => null, (e: unknown) => e);
  assert.ok(err instanceof GgufError, `${path}: expected a GgufError, got ${err}`);
  assert.equal(err.where, where, err.message);
  if (typeof includes === "string") assert.ok(err.message.includes(includes), err.message);
  else assert.match(err.message, includes);
}

Deno.test("gguf: a crafted minimal file reads (the crafting helper is right)", async () => {
  const p = await craft("ok", { kv: [kvU32("a.b", 7)], tensors: [f32Tensor("w")], data: 64 });
  const h = await readGgufHeader(p);
  assert.equal(h.metadata.get("a.b"), 7);
  assert.deepEqual(h.tensors[0].shape, [2, 8]);
  assert.equal(h.tensors[0].nbytes, 64);
});

Deno.test("gguf: malformed headers are GgufErrors naming the key or tensor", async () => {
  await refused(await craft("magic", { magic: 0x46554746 }), undefined, "not a GGUF file");
  await refused(await craft("version", { version: 1 }), undefined, "version 1");
  await refused(await craft("ntensors", { nTensors: 2n ** 60n }), undefined, "tensor count");
  await refused(await craft("nkv", { nKv: 2n ** 40n }), undefined, "metadata count");
  await refused(
    await craft("keylen", { kv: [[...str("k", 2n ** 62n)]], nKv: 1n }),
    undefined,
    /metadata key 0 length .* exceeds/,
  );
  await refused(
    await craft("vtype", { kv: [[...str("k"), u32(13), u32(0)]] }),
    "key k",
    "value type 13",
  );
  await refused(
    await craft("dupkey", { kv: [kvU32("k", 1), kvU32("k", 2)] }),
    "key k",
    "appears twice",
  );
  await refused(
    await craft("bool", { kv: [[...str("k"), u32(7), new Uint8Array([2])]] }),
    "key k",
    "bool",
  );
  await refused(
    await craft("arrlen", { kv: [[...str("k"), u32(9), u32(4), u64(2n ** 50n)]] }),
    "key k",
    "array's length",
  );
  await refused(
    await craft("arrdeep", {
      kv: [[
        ...str("k"),
        u32(9),
        ...Array.from({ length: 6 }, () => [u32(9), u64(1)]).flat(),
        u32(4),
        u64(1),
        u32(0),
      ]],
    }),
    "key k",
    "nested deeper",
  );
  await refused(
    await craft("utf8", { kv: [[u64(2), new Uint8Array([0xff, 0xfe]), u32(4), u32(0)]] }),
    undefined,
    "UTF-8",
  );
  await refused(
    await craft("align", { kv: [kvU32("general.alignment", 48)] }),
    "key general.alignment",
    "power of two",
  );
  await refused(
    await craft("ndims", { tensors: [{ ...f32Tensor("w"), nd: 5, dims: [1, 1, 1, 1, 1] }] }),
    "tensor w",
    "n_dims 5",
  );
  await refused(
    await craft("dim0", { tensors: [f32Tensor("w", 0, [8, 0])] }),
    "tensor w",
    "dim 1 is 0",
  );
  await refused(
    await craft("type", { tensors: [{ ...f32Tensor("w"), type: 99 }], data: 64 }),
    "tensor w",
    "ggml type 99",
  );
  await refused(
    await craft("blockrow", {
      tensors: [{ name: "w", dims: [48, 2], type: 8, offset: 0 }],
      data: 256,
    }),
    "tensor w",
    "multiples of 32",
  );
  await refused(
    await craft("misaligned", { tensors: [f32Tensor("w", 8)], data: 128 }),
    "tensor w",
    "alignment",
  );
  await refused(
    await craft("past", { tensors: [f32Tensor("w")], data: 32 }),
    "tensor w",
    "past the end",
  );
  await refused(
    await craft("overlap", { tensors: [f32Tensor("a", 0), f32Tensor("b", 32)], data: 128 }),
    "tensor b",
    "overlaps tensor a",
  );
  await refused(
    await craft("duptensor", { tensors: [f32Tensor("a", 0), f32Tensor("a", 64)], data: 128 }),
    "tensor a",
    "appears twice",
  );
});

Deno.test("gguf: tiny.gguf cut at every 7th byte of its header is a GgufError (truncated)", async () => {
  const bytes = await Deno.readFile(tiny);
  const h = await readGgufHeader(tiny);
  let cuts = 0;
  for (let n = 0; n < h.dataOffset + 1; n += 7) {
    const p = `${tmp}cut.gguf`;
    await Deno.writeFile(p, bytes.subarray(0, n));
    const err = await readGgufHeader(p).then(() => null, (e: unknown) => e);
    assert.ok(err instanceof GgufError, `cut at ${n}: ${err}`);
    cuts++;
  }
  assert.ok(cuts > 100);
});

Deno.test("gguf: the backend dequantizes every block format as gguf-py does (rl_embedding of row 0)", async () => {
  const h = await readGgufHeader(tiny);
  const bytes = await Deno.readFile(tiny);
  using be = Backend.open();
  let checked = 0;
  for (const t of h.tensors) {
    const e = expected.tensors.find((x: { name: string }) => x.name === t.name);
    if (!e.row0 || t.shape.length !== 2) continue;
    const [rows, dim] = t.shape;
    const table = be.alloc(t.nbytes);
    be.upload(table, bytes.subarray(t.offset, t.offset + t.nbytes));
    const out = be.alloc(dim * 4);
    be.embedding(out, table, t.type as "Q8_0", Int32Array.of(0), dim, rows);
    const got = new Float32Array(dim);
    be.download(got, out);
    for (let i = 0; i < dim; i++) {
      assert.ok(
        Math.abs(got[i] - e.row0[i]) <= 1e-6 * Math.max(1, Math.abs(e.row0[i])),
        `${t.name}[${i}]: ${got[i]} vs ${e.row0[i]}`,
      );
    }
    be.free(table);
    be.free(out);
    checked++;
  }
  assert.deepEqual(checked, 6); // bf16, q8_0, q4_0, q5_1, q4_k, q6_k
});

Deno.test("gguf: ggufValue returns a value of the asked kind or names the key", async () => {
  const h = await readGgufHeader(tiny);
  assert.equal(ggufValue(h, "test.string", "string"), "héllo ✓");
  assert.equal(ggufValue(h, "test.u32", "number"), 4000000000);
  assert.deepEqual(ggufValue(h, "test.strings", "array"), ["a", "", "ü"]);
  assert.throws(
    () => ggufValue(h, "test.u32", "string"),
    /key test.u32: expected a string, got number/,
  );
  assert.throws(() => ggufValue(h, "test.nope", "number"), /key test.nope: missing/);
});
