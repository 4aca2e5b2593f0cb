import assert from "node:assert/strict";
import { SafetensorsError } from "../lib/errors.ts";
import {
  MAX_HEADER_BYTES,
  SafetensorsFile,
  SafetensorsWriter,
  type TensorData,
  writeSafetensors,
} from "../lib/safetensors.ts";

// Needs --allow-read and --allow-write (temp files).

/** A temporary directory, removed with everything in it when disposed. */
async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "rabbitllm-safetensors-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

function bytes(n: number, seed: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return b;
}

/** A file of the 8-byte length, `header` (a string or an object to JSON-encode), and `data`. */
async function craft(
  path: string,
  header: unknown,
  dataBytes: number,
  opts: { length?: bigint } = {},
): Promise<string> {
  const text = typeof header === "string" ? header : JSON.stringify(header);
  const h = header instanceof Uint8Array ? header : new TextEncoder().encode(text);
  const buf = new Uint8Array(8 + h.length + dataBytes);
  new DataView(buf.buffer).setBigUint64(0, opts.length ?? BigInt(h.length), true);
  buf.set(h, 8);
  await Deno.writeFile(path, buf);
  return path;
}

async function expectError(
  path: string,
  tensor: string | undefined,
  includes: string,
): Promise<SafetensorsError> {
  const err = await SafetensorsFile.open(path).then(
    () => assert.fail(`${path} opened without error; expected "${includes}"`),
    (e: unknown) => e,
  );
  assert.ok(err instanceof SafetensorsError, `not a SafetensorsError: ${err}`);
  assert.equal(err.name, "SafetensorsError");
  assert.equal(err.file, path);
  assert.equal(err.tensor, tensor);
  const prefix = tensor === undefined ? `${path}: ` : `${path}: ${tensor}: `;
  assert.ok(err.message.startsWith(prefix), `message "${err.message}" lacks "${prefix}"`);
  assert.ok(err.message.includes(includes), `message "${err.message}" lacks "${includes}"`);
  return err;
}

const SAMPLE: TensorData[] = [
  { name: "model.embed_tokens.weight", dtype: "F32", shape: [3, 4], data: bytes(48, 1) },
  { name: "half", dtype: "F16", shape: [5], data: bytes(10, 2) },
  { name: "brain", dtype: "BF16", shape: [2, 1, 3], data: bytes(12, 3) },
  { name: "i8", dtype: "I8", shape: [7], data: bytes(7, 4) },
  { name: "empty", dtype: "F32", shape: [0, 9], data: new Uint8Array(0) },
  { name: "scalar", dtype: "I64", shape: [], data: bytes(8, 5) },
  { name: "u8", dtype: "U8", shape: [1], data: bytes(1, 6) },
  { name: "i32", dtype: "I32", shape: [2, 2], data: bytes(16, 7) },
];

Deno.test("writeSafetensors → SafetensorsFile keeps metadata, layout and bytes", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const path = `${dir}/m.safetensors`;
  await writeSafetensors(path, SAMPLE, { format: "pt", note: "ünïcode ✓" });
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["m.safetensors"]);
  using f = await SafetensorsFile.open(path);
  assert.equal(f.path, path);
  assert.deepEqual(f.metadata, { format: "pt", note: "ünïcode ✓" });
  assert.equal(f.dataStart % 8, 0, "header padded to a multiple of 8");
  const raw = await Deno.readFile(path);
  const headerText = new TextDecoder().decode(raw.subarray(8, f.dataStart));
  assert.match(headerText, /^\{"__metadata__":\{.*\} *$/);
  assert.equal(f.size, raw.length);
  assert.deepEqual([...f.tensors.keys()], SAMPLE.map((t) => t.name), "data in the given order");
  let offset = f.dataStart;
  for (const t of SAMPLE) {
    const info = f.tensors.get(t.name)!;
    assert.deepEqual(info, {
      name: t.name,
      dtype: t.dtype,
      shape: t.shape,
      offset,
      nbytes: t.data.length,
    });
    assert.deepEqual(await f.read(t.name), t.data);
    assert.deepEqual(raw.subarray(offset, offset + t.data.length), t.data);
    offset += t.data.length;
  }
  assert.equal(offset, raw.length);
});

Deno.test("SafetensorsFile.read fills a given buffer and serialises concurrent reads", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const path = `${dir}/m.safetensors`;
  await writeSafetensors(path, SAMPLE);
  const f = await SafetensorsFile.open(path);
  const into = new Uint8Array(64).fill(0xee);
  const got = await f.read("half", into);
  assert.equal(got.buffer, into.buffer);
  assert.equal(got.byteOffset, 0);
  assert.deepEqual(got, SAMPLE[1].data);
  assert.equal(into[10], 0xee, "nothing past the tensor is touched");
  const all = await Promise.all([...SAMPLE, ...SAMPLE].map((t) => f.read(t.name)));
  all.forEach((b, i) => assert.deepEqual(b, SAMPLE[i % SAMPLE.length].data));
  await assert.rejects(() => f.read("nope"), (e: SafetensorsError) => e.tensor === "nope");
  await assert.rejects(
    () => f.read("brain", new Uint8Array(11)),
    /: brain: buffer holds 11 bytes, the tensor needs 12$/,
  );
  f.close();
  f.close();
  await assert.rejects(() => f.read("half"), /: half: file is closed/);
});

Deno.test("SafetensorsFile reads only the header on open and only the tensor's range", async () => {
  // Count the bytes that come through FsFile.read, the only way the reader touches file contents.
  const realRead = Deno.FsFile.prototype.read;
  let readBytes = 0;
  Deno.FsFile.prototype.read = async function (this: Deno.FsFile, p: Uint8Array) {
    const n = await realRead.call(this, p);
    readBytes += n ?? 0;
    return n;
  };
  await using tmp = await tempDir();
  const dir = tmp.path;
  try {
    const path = `${dir}/big.safetensors`;
    const half = 32 << 20;
    const big = bytes(half, 9);
    await writeSafetensors(path, [
      { name: "a", dtype: "U8", shape: [half], data: big },
      { name: "b", dtype: "F32", shape: [4], data: bytes(16, 10) },
      { name: "c", dtype: "F16", shape: [half / 2], data: big },
    ]);
    readBytes = 0;
    using f = await SafetensorsFile.open(path);
    assert.ok(f.size > 64 << 20);
    assert.equal(readBytes, f.dataStart, "open reads the length and the header, nothing more");

    readBytes = 0;
    assert.deepEqual(await f.read("b", new Uint8Array(16)), bytes(16, 10));
    assert.equal(readBytes, 16);
    readBytes = 0;
    const c = await f.read("c", new Uint8Array(half + 100));
    assert.equal(readBytes, half);
    assert.equal(c.length, half);
    assert.ok(c.every((v, i) => v === big[i]));

    // with the file cut right after "b", "b" still reads and "c" fails cleanly
    const b = f.tensors.get("b")!;
    await Deno.truncate(path, b.offset + b.nbytes);
    assert.deepEqual(await f.read("b"), bytes(16, 10));
    await assert.rejects(() => f.read("c"), /: c: file ended at byte/);
  } finally {
    Deno.FsFile.prototype.read = realRead;
  }
});

const TORCH_DTYPE: Record<string, string> = {
  "torch.float32": "F32",
  "torch.float16": "F16",
  "torch.bfloat16": "BF16",
  "torch.int64": "I64",
  "torch.int32": "I32",
  "torch.int8": "I8",
  "torch.uint8": "U8",
};

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

// Written by safetensors.torch.save_file in scripts/make_safetensors_reference.py (checked in CI).
// The other direction, a file we write loaded by the reference implementation, is checked in CI
// too: transformers loads models/stories260k/model.safetensors, written by our converter.
const PY_FIXTURE = new URL("./fixtures/safetensors/python_written", import.meta.url).pathname;

Deno.test("a file written by safetensors.torch.save_file reads back with exact bytes", async () => {
  const want: Record<string, { dtype: string; shape: number[]; hex: string }> = JSON.parse(
    await Deno.readTextFile(`${PY_FIXTURE}.json`),
  );
  using f = await SafetensorsFile.open(`${PY_FIXTURE}.safetensors`);
  assert.deepEqual(f.metadata, { format: "pt" });
  assert.deepEqual([...f.tensors.keys()].sort(), Object.keys(want).sort());
  for (const [name, w] of Object.entries(want)) {
    const info = f.tensors.get(name)!;
    assert.equal(info.dtype, TORCH_DTYPE[w.dtype], name);
    assert.deepEqual(info.shape, w.shape, name);
    assert.equal(hex(await f.read(name)), w.hex, name);
  }
});

Deno.test("SafetensorsFile.open rejects malformed files naming the file and tensor", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const p = (n: string) => `${dir}/${n}.safetensors`;
  const ok = { dtype: "F32", shape: [2], data_offsets: [0, 8] };

  await Deno.writeFile(p("short"), new Uint8Array(5));
  await expectError(p("short"), undefined, "file is 5 bytes");
  await craft(p("huge"), "{}", 0, { length: BigInt(MAX_HEADER_BYTES + 1) });
  await expectError(p("huge"), undefined, "header length 100000001 is over the 100000000-byte");
  await craft(p("u64"), "{}", 0, { length: 1n << 63n });
  await expectError(p("u64"), undefined, "is over the 100000000-byte limit");
  await craft(p("past"), "{}", 0, { length: 3n });
  await expectError(p("past"), undefined, "header length 3 runs past the end of the 10-byte file");
  await craft(p("utf8"), new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), 0);
  await expectError(p("utf8"), undefined, "header is not valid UTF-8");
  await craft(p("json"), '{"a": ', 0);
  await expectError(p("json"), undefined, "header is not valid JSON");
  await craft(p("array"), "[1, 2]", 0);
  await expectError(p("array"), undefined, "header is not a JSON object");
  await craft(p("meta"), { __metadata__: { a: 1 } }, 0);
  await expectError(p("meta"), "__metadata__", "must be an object of string values");
  await craft(p("entry"), { x: ok, "w.q": [1] }, 8);
  await expectError(p("entry"), "w.q", "entry is not a JSON object");
  await craft(p("fp8"), { x: ok, "w.fp8": { ...ok, dtype: "F8_E4M3" } }, 8);
  await expectError(
    p("fp8"),
    "w.fp8",
    "F8_E4M3 is not supported; expected one of F32, F16, BF16, I8, U8, I32, I64",
  );
  await craft(p("nodtype"), { "w.q": { shape: [2], data_offsets: [0, 8] } }, 8);
  await expectError(p("nodtype"), "w.q", "dtype undefined is not supported");
  await craft(p("frac"), { "w.q": { ...ok, shape: [1.5] } }, 8);
  await expectError(p("frac"), "w.q", "shape [1.5] is not a list of non-negative integers");
  await craft(p("neg"), { "w.q": { ...ok, shape: [-1, 2] } }, 8);
  await expectError(p("neg"), "w.q", "shape [-1,2] is not a list of non-negative integers");
  await craft(p("order"), { "w.q": { ...ok, data_offsets: [8, 0] } }, 8);
  await expectError(p("order"), "w.q", "data_offsets [8,0] is not [begin, end]");
  await craft(p("three"), { "w.q": { ...ok, data_offsets: [0, 4, 8] } }, 8);
  await expectError(p("three"), "w.q", "data_offsets [0,4,8] is not [begin, end]");
  await craft(p("size"), { "w.q": { ...ok, shape: [3] } }, 8);
  await expectError(
    p("size"),
    "w.q",
    "shape [3] of F32 needs 12 bytes but data_offsets [0, 8] span 8",
  );
  await craft(p("beyond"), { a: ok, "w.q": { ...ok, data_offsets: [8, 16] } }, 12);
  await expectError(
    p("beyond"),
    "w.q",
    "data_offsets [8, 16] run past the end of the data section (12 bytes)",
  );
  const overlap = {
    "w.a": { dtype: "U8", shape: [10], data_offsets: [0, 10] },
    "w.b": { dtype: "U8", shape: [2], data_offsets: [2, 4] },
    "w.c": { dtype: "U8", shape: [4], data_offsets: [8, 12] },
  };
  await craft(p("overlap"), overlap, 12);
  await expectError(p("overlap"), "w.b", "data_offsets [2, 4] overlap w.a [0, 10]");
  await craft(
    p("overlap2"),
    { ...overlap, "w.b": { ...overlap["w.b"], data_offsets: [0, 2] } },
    12,
  );
  await expectError(p("overlap2"), "w.a", "data_offsets [0, 10] overlap w.b [0, 2]");
  await craft(p("overlap3"), { "w.a": overlap["w.a"], "w.c": overlap["w.c"] }, 12);
  await expectError(p("overlap3"), "w.c", "data_offsets [8, 12] overlap w.a [0, 10]");

  // what must still be accepted: empty header, zero-size tensors, gaps, trailing bytes
  await craft(p("fine"), {
    e: { dtype: "F32", shape: [0], data_offsets: [4, 4] },
    a: { dtype: "I32", shape: [1], data_offsets: [0, 4] },
    z: { dtype: "F16", shape: [2, 0], data_offsets: [4, 4] },
    b: { dtype: "U8", shape: [2], data_offsets: [6, 8] },
  }, 9);
  using fine = await SafetensorsFile.open(p("fine"));
  assert.deepEqual([...fine.tensors.keys()], ["a", "e", "z", "b"]);
  await craft(p("empty"), '{"__metadata__": {"__proto__": "x"}}', 0);
  using empty = await SafetensorsFile.open(p("empty"));
  assert.equal(empty.tensors.size, 0);
  assert.deepEqual(Object.entries(empty.metadata), [["__proto__", "x"]]);
  assert.equal(Object.getPrototypeOf(empty.metadata), Object.prototype);
});

Deno.test("SafetensorsFile.read names the tensor when the file shrank after opening", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const path = `${dir}/m.safetensors`;
  await writeSafetensors(path, SAMPLE);
  using f = await SafetensorsFile.open(path);
  await Deno.truncate(path, f.tensors.get("i8")!.offset + 3);
  await assert.rejects(() => f.read("i8"), (e: SafetensorsError) => {
    assert.equal(e.tensor, "i8");
    assert.match(e.message, /: i8: file ended at byte \d+, expected 7 bytes from \d+/);
    return true;
  });
});

Deno.test("writeSafetensors checks sizes before writing and leaves no file behind", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const path = `${dir}/bad.safetensors`;
  const bad = [...SAMPLE, { name: "w.bad", dtype: "F16" as const, shape: [3], data: bytes(5, 0) }];
  await assert.rejects(() => writeSafetensors(path, bad), (e: SafetensorsError) => {
    assert.equal(e.file, path);
    assert.equal(e.tensor, "w.bad");
    assert.match(e.message, /: w\.bad: shape \[3\] of F16 needs 6 bytes but 5 were given$/);
    return true;
  });
  await assert.rejects(
    () => writeSafetensors(path, [SAMPLE[0], SAMPLE[0]]),
    /: model\.embed_tokens\.weight: tensor name is reserved or used twice/,
  );
  await assert.rejects(
    () => writeSafetensors(path, [{ ...SAMPLE[0], dtype: "F64" as "F32" }]),
    /F64 is not supported; expected one of F32, F16, BF16, I8, U8, I32, I64/,
  );
  assert.deepEqual([...Deno.readDirSync(dir)], []);
});

Deno.test("SafetensorsWriter streams in order, commits atomically, aborts cleanly", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  const path = `${dir}/s.safetensors`;
  const specs = SAMPLE.map(({ name, dtype, shape }) => ({ name, dtype, shape }));
  const w = await SafetensorsWriter.create(path, specs, { format: "pt" });
  assert.ok(w.tempPath.startsWith(`${path}.tmp-`));
  await assert.rejects(
    () => w.write("half", SAMPLE[1].data),
    /: half: written out of order; expected model\.embed_tokens\.weight$/,
  );
  await assert.rejects(
    () => w.write(SAMPLE[0].name, bytes(47, 0)),
    /needs 48 bytes but 47 were given/,
  );
  for (const t of SAMPLE.slice(0, 3)) await w.write(t.name, t.data);
  await assert.rejects(() => w.commit(), /: i8: not written \(5 of 8 missing\)/);
  for (const t of SAMPLE.slice(3)) await w.write(t.name, t.data);
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), [
    w.tempPath.slice(dir.length + 1),
  ]);
  await assert.rejects(() => w.write("x", new Uint8Array(0)), /every tensor is already written/);
  await w.commit();
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["s.safetensors"]);
  await w.abort(); // no effect after commit
  const whole = `${dir}/whole.safetensors`;
  await writeSafetensors(whole, SAMPLE, { format: "pt" });
  assert.deepEqual(await Deno.readFile(path), await Deno.readFile(whole));

  const aborted = `${dir}/a.safetensors`;
  {
    await using a = await SafetensorsWriter.create(aborted, specs);
    await a.write(SAMPLE[0].name, SAMPLE[0].data);
  } // disposed without commit
  await assert.rejects(() => Deno.stat(aborted), Deno.errors.NotFound);
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
    "s.safetensors",
    "whole.safetensors",
  ]);
});
