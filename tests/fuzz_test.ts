/**
 * Fuzzing the parsers of everything rabbitllm reads from disk: safetensors headers,
 * model.safetensors.index.json, config.json (+ each family's parseConfig), tokenizer.json /
 * tokenizer_config.json, sentencepiece tokenizer.model and tiktoken ranks files (parseSpmModel /
 * spmTokenizerJson, parseTiktokenRanks / tiktokenTokenizerJson), a split's manifest.json (through
 * splitCheckpoint's reuse check), GGUF headers (readGgufHeader, openGguf, ggufTokenizerFiles /
 * Tokenizer.fromGguf) and torch.save `.bin` checkpoints (TorchBinFile: zip directory, pickle
 * opcodes, forbidden globals, huge sizes, deep nesting).
 *
 * Each parser gets at least 10,000 inputs made from the real fixtures by seeded mutations (bit
 * flips, truncation, huge lengths and counts, deep JSON nesting, wrong types, NaN / negative / huge
 * sizes, duplicate keys, splices of valid files). The contract: every input either parses or throws
 * a typed error (a subclass of RabbitError); nothing else escapes (TypeError, RangeError, a raw
 * SyntaxError...), no input takes longer than PER_INPUT_MS, and the process's RSS does not grow
 * without bound over the run. Each test logs `fuzz <parser>: N inputs, K typed errors, M accepted`.
 * A failing input is written to tests/.tmp/fuzz/failures/ with its stack in the assertion message.
 *
 * Inputs live in memory; parsers that only take a path read one temp file (or directory) under
 * tests/.tmp/fuzz/, rewritten per input.
 *
 * Longer mode: FUZZ_ITERATIONS inputs per parser (default 10000; at least 10000), e.g.
 * `deno task fuzz` (100000 per parser, with tests/split_faults_test.ts's longer mode) or
 * `FUZZ_ITERATIONS=20000 deno task fuzz`. `deno task test` does not grant the variable, so it
 * always runs the default 10000. FUZZ_SEED (same permission rule) changes the seed.
 *
 * tests/fuzz_regressions_test.ts holds one minimized input per bug this fuzzer found.
 */
import assert from "node:assert/strict";
import { listShards, parseManifest, splitCheckpoint } from "../lib/checkpoint.ts";
import { architectureOf, readConfigJson } from "../lib/config.ts";
import { CheckpointError, RabbitError } from "../lib/errors.ts";
import { type GgufHeader, type GgufValue, readGgufHeader } from "../lib/gguf.ts";
import { openGguf } from "../lib/gguf_model.ts";
import { ggufTokenizerFiles } from "../lib/gguf_tokenizer.ts";
import { familyFor, SUPPORTED_ARCHITECTURES } from "../lib/models/registry.ts";
import { SafetensorsFile, writeSafetensors } from "../lib/safetensors.ts";
import { parseSpmModel, spmTokenizerJson } from "../lib/spm_model.ts";
import { parseTiktokenRanks, tiktokenTokenizerJson } from "../lib/tiktoken.ts";
import { Tokenizer } from "../lib/tokenizer.ts";
import { TorchBinFile } from "../lib/torch_bin.ts";
import {
  localEntries,
  pglobal,
  pickleStateDict,
  pstr,
  type PTensorSpec,
  torchEntries,
  zipBytes,
} from "./torch_bin_zip.ts";

function envInt(name: string, fallback: number): number {
  if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") {
    return fallback;
  }
  const v = Deno.env.get(name);
  if (v === undefined || v === "") return fallback;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name}=${v}: expected an integer`);
  return n;
}

const MIN_INPUTS = 10_000;
const ITERATIONS = Math.max(MIN_INPUTS, envInt("FUZZ_ITERATIONS", MIN_INPUTS));
const SEED = envInt("FUZZ_SEED", 0x5eed);
/** No single input may take longer than this (generous: CI runners are slow and shared). */
const PER_INPUT_MS = 2_000;
/** RSS may grow at most this much between the warm-up and the end of a parser's run. */
const MAX_RSS_GROWTH = 1024 * 2 ** 20;

const here = new URL(".", import.meta.url).pathname;
const fixture = (p: string) => `${here}fixtures/${p}`;
const TMP = `${here}.tmp/fuzz`;

// ---------------------------------------------------------------------------------------------
// Seeded PRNG and mutators

/** mulberry32: small, fast, seeded. */
class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

const U64S: bigint[] = [
  0n,
  1n,
  7n,
  8n,
  0xffn,
  0x7fffffffn,
  0xffffffffn,
  0x100000000n,
  2n ** 53n - 1n,
  2n ** 53n,
  2n ** 53n + 1n,
  2n ** 63n - 1n,
  2n ** 63n,
  2n ** 64n - 1n,
];
const U32S = [0, 1, 2, 3, 4, 8, 9, 12, 13, 30, 31, 255, 0x7fffffff, 0x80000000, 0xffffffff];
const BYTES = [0, 1, 0x7f, 0x80, 0xff, 0x22, 0x5c, 0x7b, 0x7d, 0x5b, 0x5d, 0x3a, 0x2c, 0x30];

/**
 * 1-4 stacked byte mutations of `src`; `hot` bounds where most of them land (the header: data
 * bytes do not matter to a header parser), `pool` holds other valid files to splice from.
 */
function mutateBytes(rng: Rng, src: Uint8Array, pool: readonly Uint8Array[], hot = src.length) {
  let b = src.slice();
  const pos = (len = b.length) =>
    len === 0 ? 0 : rng.chance(0.9) ? rng.int(Math.max(1, Math.min(hot, len))) : rng.int(len);
  for (let k = 1 + rng.int(4); k > 0; k--) {
    switch (rng.int(11)) {
      case 0: // bit flips
        for (let n = 1 + rng.int(4); n > 0 && b.length > 0; n--) b[pos()] ^= 1 << rng.int(8);
        break;
      case 1: // interesting byte
        if (b.length > 0) b[pos()] = rng.pick(BYTES);
        break;
      case 2: // truncation
        b = b.slice(0, pos(b.length + 1));
        break;
      case 3: { // delete a range
        const at = pos(), n = 1 + rng.int(rng.chance(0.5) ? 8 : 256);
        b = concat(b.subarray(0, at), b.subarray(Math.min(b.length, at + n)));
        break;
      }
      case 4: { // insert random bytes
        const junk = new Uint8Array(1 + rng.int(16)).map(() => rng.int(256));
        const at = pos();
        b = concat(b.subarray(0, at), junk, b.subarray(at));
        break;
      }
      case 5: { // splice in a chunk of another valid file
        const other = rng.pick(pool);
        if (other.length === 0) break;
        const from = rng.int(other.length), n = 1 + rng.int(Math.min(512, other.length - from));
        const at = pos();
        const chunk = other.subarray(from, from + n);
        b = rng.chance(0.5)
          ? concat(b.subarray(0, at), chunk, b.subarray(at))
          : concat(b.subarray(0, at), chunk, b.subarray(Math.min(b.length, at + n)));
        break;
      }
      case 6: // interesting u32 (little-endian) at a 4-aligned or any position
        if (b.length >= 4) {
          const at = Math.min(b.length - 4, rng.chance(0.5) ? pos() & ~3 : pos());
          new DataView(b.buffer).setUint32(at, rng.pick(U32S), true);
        }
        break;
      case 7: // interesting u64
        if (b.length >= 8) {
          const at = Math.min(b.length - 8, rng.chance(0.5) ? pos() & ~7 : pos());
          new DataView(b.buffer).setBigUint64(at, rng.pick(U64S), true);
        }
        break;
      case 8: { // duplicate a range
        const at = pos(), n = 1 + rng.int(64);
        b = concat(b.subarray(0, at + n), b.subarray(at, at + n), b.subarray(at + n));
        break;
      }
      case 9: { // cross-over: a prefix of this, the rest of another
        const other = rng.pick(pool);
        b = concat(b.subarray(0, pos()), other.subarray(rng.int(other.length + 1)));
        break;
      }
      default: { // a run of one byte
        const at = pos(), n = 1 + rng.int(32);
        b.fill(rng.pick(BYTES), at, at + n);
      }
    }
  }
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, at), at += p.length;
  return out;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** JSON texts that JSON.stringify cannot produce, spliced in through placeholders. */
function rawJson(rng: Rng): string {
  const d = rng.pick([64, 100, 5_000]);
  switch (rng.int(16)) {
    case 0:
      return rng.pick(["1e999", "-1e999", "-0", "1e-400", "9007199254740993", "-9007199254740993"]);
    case 1:
      return "[".repeat(d) + "]".repeat(d);
    case 2:
      return '{"a":'.repeat(d) + "1" + "}".repeat(d);
    case 3:
      return `[${"[".repeat(d)}"x"${"]".repeat(d)}]`;
    case 4:
      return JSON.stringify("x".repeat(rng.pick([1, 1_000, 20_000])));
    case 5:
      return `[${"0,".repeat(rng.pick([10, 500, 10_000]))}0]`;
    case 6:
      return '{"__proto__": {"polluted": 1}, "constructor": 1, "toString": 2}';
    case 7:
      return rng.pick(['"__proto__"', '"constructor"', '"toString"', '"hasOwnProperty"']);
    case 8:
      return rng.pick(["NaN", "Infinity", "undefined", "'x'", "0x10", "01", "+1", "1.", ".5"]);
    case 9:
      return rng.pick(['"\\ud800"', '"\\u0000"', '"a\\/b"', '"../x"', '"/etc/passwd"', '"\u00e9"']);
    default:
      return JSON.stringify(interesting(rng));
  }
}

function interesting(rng: Rng): unknown {
  return rng.pick<unknown>([
    null,
    true,
    false,
    0,
    -1,
    1,
    2,
    -0.5,
    0.5,
    1.5,
    3.14,
    255,
    256,
    4096,
    65536,
    2 ** 31,
    2 ** 32,
    2 ** 53,
    -(2 ** 53),
    1e20,
    1e308,
    "",
    "x",
    "F32",
    "BF16",
    "Q4_0",
    "float16",
    "llama",
    "LlamaForCausalLM",
    "model.safetensors",
    [],
    [0],
    [-1],
    [1, 2],
    [0, 2 ** 60],
    [null],
    [[]],
    {},
    { content: 1 },
    { content: "<s>" },
  ]);
}

type Path = (string | number)[];

function paths(v: unknown, out: Path[] = [], at: Path = [], budget = { n: 4000 }): Path[] {
  if (budget.n-- <= 0) return out;
  out.push(at);
  if (Array.isArray(v)) {
    // Long arrays (vocabularies, merges): a sample of their elements.
    const step = Math.max(1, Math.floor(v.length / 16));
    for (let i = 0; i < v.length; i += step) paths(v[i], out, [...at, i], budget);
  } else if (typeof v === "object" && v !== null) {
    const keys = Object.keys(v);
    const step = Math.max(1, Math.floor(keys.length / 32));
    for (let i = 0; i < keys.length; i += step) {
      paths((v as Record<string, unknown>)[keys[i]], out, [...at, keys[i]], budget);
    }
  }
  return out;
}

function getAt(v: unknown, p: Path): unknown {
  for (const k of p) v = (v as Record<string | number, unknown>)[k];
  return v;
}

/**
 * A structured mutation of a JSON document, as text: values replaced by ones of another type or
 * by extreme ones (deep nesting, huge numbers and strings, Infinity), keys deleted, added or
 * duplicated, subtrees swapped, arrays emptied or lengthened.
 */
function mutateJson(rng: Rng, doc: unknown, pool: readonly unknown[]): string {
  const root = structuredClone(doc);
  const raws: string[] = [];
  const mark = (raw: string) => `\u0000RAW${raws.push(raw) - 1}\u0000`;
  let box: unknown = { r: root };
  for (let k = 1 + rng.int(3); k > 0; k--) {
    const all = paths((box as { r: unknown }).r).map((p) => ["r", ...p]);
    const p = rng.pick(all);
    const parent = getAt(box, p.slice(0, -1)) as Record<string | number, unknown>;
    const key = p[p.length - 1];
    const value = parent[key];
    switch (rng.int(8)) {
      case 0:
        parent[key] = interesting(rng);
        break;
      case 1:
        parent[key] = mark(rawJson(rng));
        break;
      case 2: // delete
        if (Array.isArray(parent)) parent.splice(key as number, 1);
        else if (p.length > 1) delete parent[key];
        break;
      case 3: { // swap in a subtree from anywhere in the pool
        const other = rng.pick(pool);
        parent[key] = structuredClone(getAt(other, rng.pick(paths(other))));
        break;
      }
      case 4: // wrap / unwrap
        parent[key] = rng.chance(0.5) ? [value] : { value };
        break;
      case 5: // numbers: off by one, negated, scaled, NaN-ish
        parent[key] = typeof value === "number"
          ? rng.pick([value + 1, value - 1, -value, value * 2 ** 32, value / 3])
          : typeof value === "string"
          ? rng.pick([value + value, value.slice(1), value.toUpperCase(), `${value}\u0000`])
          : mark(rawJson(rng));
        break;
      case 6: // a new key on an object (or a new element)
        if (Array.isArray(value)) value.push(structuredClone(rng.pick(value.length ? value : [0])));
        else if (typeof value === "object" && value !== null) {
          (value as Record<string, unknown>)[
            rng.pick(["__proto__", "constructor", "extra", "0", "", "weight_map", "dtype"])
          ] = interesting(rng);
        } else parent[key] = mark(rawJson(rng));
        break;
      default: // a huge array of copies
        if (Array.isArray(value) && value.length > 0) {
          parent[key] = Array.from({ length: 1 + rng.int(2000) }, () => rng.pick(value));
        } else parent[key] = mark(rawJson(rng));
    }
  }
  let text = JSON.stringify((box as { r: unknown }).r, null, rng.chance(0.2) ? 1 : undefined) ??
    "null";
  text = text.replace(/"\\u0000RAW(\d+)\\u0000"/g, (_, i) => raws[Number(i)]);
  box = null;
  // Duplicate keys: an earlier copy of a key with another value (JSON.parse keeps the last).
  if (rng.chance(0.25)) {
    const keys = [...text.matchAll(/"((?:[^"\\]|\\.){0,60})":/g)];
    if (keys.length > 0) {
      const m = rng.pick(keys);
      const dup = `"${m[1]}":${JSON.stringify(interesting(rng))},`;
      const at = rng.chance(0.5) ? m.index : text.indexOf("{") + 1;
      text = text.slice(0, at) + dup + text.slice(at);
    }
  }
  return text;
}

/** A mutated JSON text: structured (mostly), byte-level, or both. */
function mutateJsonText(rng: Rng, doc: unknown, texts: readonly Uint8Array[], pool: unknown[]) {
  const r = rng.int(10);
  if (r < 6) return enc.encode(mutateJson(rng, doc, pool));
  const base = r < 9
    ? enc.encode(JSON.stringify(doc, null, 2))
    : enc.encode(mutateJson(rng, doc, pool));
  return mutateBytes(rng, base, texts);
}

// ---------------------------------------------------------------------------------------------
// The harness

interface Stats {
  inputs: number;
  typed: number;
  accepted: number;
}

/**
 * Runs `n` inputs; each must succeed or throw a RabbitError within PER_INPUT_MS. Untyped failures
 * are collected (up to 8 distinct ones, by message) with the input saved, then reported together.
 */
async function fuzz<I>(
  parser: string,
  make: (rng: Rng, i: number) => I,
  run: (input: I) => Promise<void>,
  save: (input: I) => Uint8Array,
  n = ITERATIONS,
): Promise<Stats> {
  const rng = new Rng(SEED ^ hash(parser));
  const stats: Stats = { inputs: 0, typed: 0, accepted: 0 };
  const failures = new Map<string, string>();
  let rss0 = 0;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const input = make(rng, i);
    const start = performance.now();
    let err: unknown = null;
    try {
      await run(input);
    } catch (e) {
      err = e;
    }
    const ms = performance.now() - start;
    stats.inputs++;
    if (err === null) stats.accepted++;
    else if (err instanceof RabbitError) stats.typed++;
    const problem = err !== null && !(err instanceof RabbitError)
      ? `${(err as Error)?.name ?? typeof err}: ${
        String((err as Error)?.message ?? err).slice(0, 200)
      }`
      : ms > PER_INPUT_MS
      ? `input ${i} took ${ms.toFixed(0)} ms (bound ${PER_INPUT_MS} ms)`
      : null;
    if (problem !== null) {
      const key = problem.replace(/\d+/g, "N");
      if (!failures.has(key) && failures.size < 8) {
        await Deno.mkdir(`${TMP}/failures`, { recursive: true });
        const file = `${TMP}/failures/${parser.replace(/\W+/g, "_")}-${i}.bin`;
        await Deno.writeFile(file, save(input));
        failures.set(key, `input ${i} (${file}): ${problem}\n${(err as Error)?.stack ?? ""}`);
      }
    }
    if (i === Math.min(500, n - 1)) rss0 = Deno.memoryUsage().rss;
  }
  const rss = Deno.memoryUsage().rss;
  const secs = (performance.now() - t0) / 1000;
  console.log(
    `fuzz ${parser}: ${stats.inputs} inputs, ${stats.typed} typed errors, ${stats.accepted} ` +
      `accepted (${secs.toFixed(1)} s, rss +${((rss - rss0) / 2 ** 20).toFixed(0)} MiB)`,
  );
  assert.deepEqual([...failures.values()], [], `fuzz ${parser}: untyped failures or hangs`);
  assert.ok(stats.inputs >= MIN_INPUTS, `fuzz ${parser}: ${stats.inputs} < ${MIN_INPUTS}`);
  assert.ok(stats.typed > 0 && stats.accepted > 0, `fuzz ${parser}: degenerate run`);
  assert.ok(
    rss - rss0 < MAX_RSS_GROWTH,
    `fuzz ${parser}: RSS grew ${rss - rss0} bytes over the run (bound ${MAX_RSS_GROWTH})`,
  );
  return stats;
}

function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

async function freshDir(name: string): Promise<string> {
  const dir = `${TMP}/${name}`;
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir, { recursive: true });
  return dir;
}

/** Writes `bytes`, then extends the file to `size` (a sparse tail) when that is larger. */
async function writeSized(path: string, bytes: Uint8Array, size = 0): Promise<void> {
  await Deno.writeFile(path, bytes);
  if (size > bytes.length) await Deno.truncate(path, size);
}

async function fixtureDirs(file: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(fixture(""))) {
    if (e.isDirectory) {
      try {
        await Deno.stat(fixture(`${e.name}/${file}`));
        out.push(fixture(`${e.name}/${file}`));
      } catch { /* not in this fixture */ }
    }
  }
  return out.sort();
}

const sanitize = { sanitizeOps: false, sanitizeResources: true };

// ---------------------------------------------------------------------------------------------
// safetensors

/** A safetensors file as header + the length of its data (the data itself is a sparse tail). */
interface StInput {
  bytes: Uint8Array;
  size: number;
}

function stHeader(file: Uint8Array): { json: unknown; len: number } {
  const len = Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true));
  return { json: JSON.parse(dec.decode(file.subarray(8, 8 + len))), len };
}

Deno.test("fuzz: safetensors headers", sanitize, async () => {
  const files = [
    ...await fixtureDirs("model.safetensors"),
    ...(await fixtureDirs("model-00001-of-00004.safetensors")),
    fixture("safetensors/python_written.safetensors"),
  ];
  const seeds = await Promise.all(files.map(async (p) => {
    const bytes = await Deno.readFile(p);
    const { json, len } = stHeader(bytes);
    // Keep the header and a little data; the rest of the data is a sparse tail of the same size.
    return {
      head: bytes.slice(0, Math.min(bytes.length, 8 + len + 64)),
      json,
      len,
      size: bytes.length,
    };
  }));
  const heads = seeds.map((s) => s.head);
  const jsons = seeds.map((s) => s.json);
  const dir = await freshDir("safetensors");
  const path = `${dir}/model.safetensors`;
  await fuzz(
    "safetensors",
    (rng): StInput => {
      const s = rng.pick(seeds);
      const dataBytes = s.size - 8 - s.len;
      if (rng.chance(0.5)) {
        const text = mutateJsonText(rng, s.json, heads, jsons);
        const head = new Uint8Array(8);
        const len = rng.chance(0.9) ? BigInt(text.length) : rng.pick(U64S);
        new DataView(head.buffer).setBigUint64(0, len, true);
        const size = 8 + text.length + (rng.chance(0.8) ? dataBytes : rng.int(dataBytes + 1));
        return { bytes: concat(head, text), size };
      }
      const bytes = mutateBytes(rng, s.head, heads, 8 + s.len + 8);
      const size = rng.chance(0.8) ? bytes.length + dataBytes : bytes.length + rng.int(64);
      return { bytes, size };
    },
    async ({ bytes, size }) => {
      await writeSized(path, bytes, size);
      using f = await SafetensorsFile.open(path);
      // Accepted: every tensor's range is inside the file and reads back whole.
      for (const t of [...f.tensors.values()].slice(0, 2)) {
        assert.equal((await f.read(t.name)).length, t.nbytes);
      }
    },
    (x) => x.bytes,
  );
});

// ---------------------------------------------------------------------------------------------
// model.safetensors.index.json

Deno.test("fuzz: model.safetensors.index.json", sanitize, async () => {
  const indexes = await fixtureDirs("model.safetensors.index.json");
  const texts = await Promise.all(indexes.map((p) => Deno.readFile(p)));
  const docs = texts.map((t) => JSON.parse(dec.decode(t)));
  const dir = await freshDir("index");
  // The shards named by the fixtures, as empty files (listShards checks they exist).
  for (const d of docs) {
    for (const f of new Set(Object.values(d.weight_map) as string[])) {
      await Deno.writeFile(`${dir}/${f}`, new Uint8Array());
    }
  }
  await fuzz(
    "index.json",
    (rng) => mutateJsonText(rng, rng.pick(docs), texts, docs),
    async (bytes) => {
      await Deno.writeFile(`${dir}/model.safetensors.index.json`, bytes);
      const { weightMap } = await listShards(dir);
      assert.ok(weightMap !== null);
    },
    (x) => x,
  );
});

// ---------------------------------------------------------------------------------------------
// config.json → familyFor → parseConfig

Deno.test("fuzz: config.json and every family's parseConfig", sanitize, async () => {
  const paths = await fixtureDirs("config.json");
  const texts = await Promise.all(paths.map((p) => Deno.readFile(p)));
  const docs = texts.map((t) => JSON.parse(dec.decode(t)));
  const dir = await freshDir("config");
  const path = `${dir}/config.json`;
  await fuzz(
    "config.json",
    (rng) => {
      const doc = structuredClone(rng.pick(docs));
      // Every family sees every other family's keys.
      if (rng.chance(0.3)) doc.architectures = [rng.pick(SUPPORTED_ARCHITECTURES)];
      return mutateJsonText(rng, doc, texts, docs);
    },
    async (bytes) => {
      await Deno.writeFile(path, bytes);
      const raw = await readConfigJson(dir);
      const family = familyFor(architectureOf(raw, path), path);
      const cfg = family.parseConfig(raw, path);
      assert.ok(cfg.numLayers > 0 && cfg.hiddenSize > 0);
    },
    (x) => x,
  );
});

// ---------------------------------------------------------------------------------------------
// tokenizer.json + tokenizer_config.json

Deno.test("fuzz: tokenizer.json and tokenizer_config.json", sanitize, async () => {
  const names = ["chatml", "llama3", "llama_legacy"];
  const seeds = await Promise.all(names.map(async (n) => {
    const json = await Deno.readFile(fixture(`tokenizers/${n}/tokenizer.json`));
    const config = await Deno.readFile(fixture(`tokenizers/${n}/tokenizer_config.json`));
    return {
      json,
      config,
      jsonDoc: JSON.parse(dec.decode(json)),
      configDoc: JSON.parse(dec.decode(config)),
    };
  }));
  const texts = seeds.flatMap((s) => [s.json, s.config]);
  const docs = seeds.flatMap((s) => [s.jsonDoc, s.configDoc]);
  const dir = await freshDir("tokenizer");
  await fuzz(
    "tokenizer",
    (rng) => {
      const s = rng.pick(seeds);
      const which = rng.int(10);
      return {
        json: which < 6 || which === 9 ? mutateJsonText(rng, s.jsonDoc, texts, docs) : s.json,
        config: which >= 6 ? mutateJsonText(rng, s.configDoc, texts, docs) : s.config,
      };
    },
    async ({ json, config }) => {
      await Deno.writeFile(`${dir}/tokenizer.json`, json);
      await Deno.writeFile(`${dir}/tokenizer_config.json`, config);
      await Tokenizer.fromDir(dir);
    },
    ({ json, config }) => concat(json, enc.encode("\n\u0000tokenizer_config.json\u0000\n"), config),
  );
});

// ---------------------------------------------------------------------------------------------
// sentencepiece tokenizer.model and tiktoken ranks (the remote-code families' vocabularies)

Deno.test("fuzz: sentencepiece tokenizer.model and tiktoken ranks", sanitize, async () => {
  const spms = await Promise.all(
    ["internlm2", "baichuan2", "chatglm3"].map((n) =>
      Deno.readFile(fixture(`remote_tokenizers/${n}/tokenizer.model`))
    ),
  );
  const ranks = [await Deno.readFile(fixture("remote_tokenizers/qwen/qwen.tiktoken"))];
  await fuzz(
    "tokenizer.model / tiktoken",
    (rng) => {
      const tiktoken = rng.chance(0.3);
      const pool = tiktoken ? ranks : spms;
      return { tiktoken, bytes: mutateBytes(rng, rng.pick(pool), pool) };
    },
    ({ tiktoken, bytes }) => {
      if (tiktoken) {
        tiktokenTokenizerJson(parseTiktokenRanks(dec.decode(bytes), "t.tiktoken"), {
          pattern: "x",
          nfc: false,
          specialTokens: [["<|endoftext|>", 1_000_000]],
        });
      } else spmTokenizerJson(parseSpmModel(bytes, "tokenizer.model"));
      return Promise.resolve();
    },
    ({ bytes }) => bytes,
  );
});

// ---------------------------------------------------------------------------------------------
// manifest.json of a split (splitCheckpoint's reuse check)

/** A tiny tied Llama checkpoint: the split of it is a few small files, so a redo is cheap. */
async function tinyCheckpoint(dir: string) {
  const H = 8, I = 16, V = 32, heads = 2, kv = 1, hd = H / heads;
  const config = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: H,
    intermediate_size: I,
    num_hidden_layers: 1,
    num_attention_heads: heads,
    num_key_value_heads: kv,
    vocab_size: V,
    max_position_embeddings: 64,
    rms_norm_eps: 1e-6,
    tie_word_embeddings: true,
    torch_dtype: "float32",
  };
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
  const t = (name: string, shape: number[]) => ({
    name,
    dtype: "F32" as const,
    shape,
    data: new Uint8Array(shape.reduce((a, b) => a * b, 4)),
  });
  const l = "model.layers.0.";
  await writeSafetensors(`${dir}/model.safetensors`, [
    t("model.embed_tokens.weight", [V, H]),
    t(`${l}input_layernorm.weight`, [H]),
    t(`${l}post_attention_layernorm.weight`, [H]),
    t(`${l}self_attn.q_proj.weight`, [heads * hd, H]),
    t(`${l}self_attn.k_proj.weight`, [kv * hd, H]),
    t(`${l}self_attn.v_proj.weight`, [kv * hd, H]),
    t(`${l}self_attn.o_proj.weight`, [H, heads * hd]),
    t(`${l}mlp.gate_proj.weight`, [I, H]),
    t(`${l}mlp.up_proj.weight`, [I, H]),
    t(`${l}mlp.down_proj.weight`, [H, I]),
    t("model.norm.weight", [H]),
  ]);
  const raw = await readConfigJson(dir);
  const family = familyFor(architectureOf(raw, dir), dir);
  return { family, cfg: family.parseConfig(raw, dir) };
}

Deno.test(
  "fuzz: split manifest.json (parseManifest; a sample through splitCheckpoint's reuse)",
  sanitize,
  async () => {
    const dir = await freshDir("manifest");
    const { family, cfg } = await tinyCheckpoint(dir);
    const out = `${dir}/split`;
    const opts = { dtype: "float32" as const, layerShardsSavingPath: out };
    const first = await splitCheckpoint(dir, family, cfg, opts);
    assert.equal(first.reused, false);
    assert.equal((await splitCheckpoint(dir, family, cfg, opts)).reused, true);
    const valid = await Deno.readFile(`${out}/manifest.json`);
    const doc = JSON.parse(dec.decode(valid));
    assert.ok(parseManifest(dec.decode(valid)), "the real manifest parses");
    // A manifest that is not one is never an error: parseManifest says null and the split is
    // redone. Every input must give a manifest or null, nothing else, and what passes must be one
    // the loader can trust (checked here: every tensor inside its part's data).
    let kept = 0;
    await fuzz(
      "manifest.json",
      (rng) => mutateJsonText(rng, doc, [valid], [doc]),
      (bytes) => {
        const m = parseManifest(dec.decode(bytes));
        if (m === null) {
          throw new CheckpointError("manifest.json", "not a manifest: redo the split");
        }
        kept++;
        for (const p of m.parts) {
          for (const t of p.tensors) assert.ok(t.offset + t.nbytes <= p.dataBytes);
        }
        return Promise.resolve();
      },
      (x) => x,
    );
    console.log(`fuzz manifest.json: ${kept} accepted as manifests`);
    // A sample end to end: written over a complete split, the reuse check redoes or reuses it and
    // the split it returns is whole.
    const rng = new Rng(SEED);
    for (let i = 0; i < 200; i++) {
      await Deno.mkdir(out, { recursive: true });
      await Deno.writeFile(`${out}/manifest.json`, mutateJsonText(rng, doc, [valid], [doc]));
      const s = await splitCheckpoint(dir, family, cfg, opts);
      assert.deepEqual(s.manifest.parts.map((p) => p.id), first.manifest.parts.map((p) => p.id));
    }
  },
);

// ---------------------------------------------------------------------------------------------
// GGUF

const TYPE = { u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10, i64: 11, f64: 12 };

/** A GGUF header as the test rewrites it: entries in order (duplicates allowed), raw tensors. */
interface GgufDoc {
  version: number;
  kv: [string, number, GgufValue][];
  tensors: { name: string; dims: (number | bigint)[]; type: number; rel: number | bigint }[];
  /** Bytes of the data section, written as a sparse tail. */
  dataBytes: number;
}

function typeOf(v: GgufValue): number {
  if (typeof v === "string") return TYPE.string;
  if (typeof v === "boolean") return TYPE.bool;
  if (typeof v === "bigint") return v < 0n ? TYPE.i64 : TYPE.u64;
  if (Array.isArray(v)) return TYPE.array;
  if (!Number.isInteger(v)) return TYPE.f32;
  return v >= 0 && v <= 0xffffffff ? TYPE.u32 : TYPE.i64;
}

function docOf(h: GgufHeader): GgufDoc {
  return {
    version: h.version,
    kv: [...h.metadata].map(([k, v]) => [k, typeOf(v), v]),
    tensors: h.tensors.map((t) => ({
      name: t.name,
      dims: [...t.shape].reverse(),
      type: t.typeId,
      rel: t.offset - h.dataOffset,
    })),
    dataBytes: h.fileBytes - h.dataOffset,
  };
}

class Writer {
  bytes: number[] = [];
  #dv = new DataView(new ArrayBuffer(8));
  #put(n: number) {
    for (let i = 0; i < n; i++) this.bytes.push(this.#dv.getUint8(i));
  }
  u8(v: number) {
    this.bytes.push(v & 0xff);
  }
  u32(v: number) {
    this.#dv.setUint32(0, v >>> 0, true), this.#put(4);
  }
  u64(v: number | bigint) {
    this.#dv.setBigUint64(0, BigInt.asUintN(64, BigInt(v)), true), this.#put(8);
  }
  str(s: string) {
    const b = enc.encode(s);
    this.u64(b.length);
    for (const x of b) this.bytes.push(x);
  }
  value(type: number, v: GgufValue) {
    const num = typeof v === "number" ? v : typeof v === "bigint" ? Number(v) : 0;
    const big = typeof v === "bigint" ? v : BigInt(Number.isFinite(num) ? Math.trunc(num) : 0);
    switch (type) {
      case 0:
      case 1:
        return this.u8(num);
      case 2:
      case 3:
        this.#dv.setUint16(0, num & 0xffff, true), this.#put(2);
        return;
      case TYPE.u32:
      case TYPE.i32:
        return this.u32(num);
      case TYPE.f32:
        this.#dv.setFloat32(0, num, true), this.#put(4);
        return;
      case TYPE.bool:
        return this.u8(v === true ? 1 : v === false ? 0 : num);
      case TYPE.string:
        return this.str(typeof v === "string" ? v : String(v));
      case TYPE.array: {
        const arr = Array.isArray(v) ? v : [v];
        const elem = arr.length > 0 ? typeOf(arr[0]) : TYPE.u32;
        this.u32(elem);
        this.u64(arr.length);
        for (const x of arr) this.value(elem, x);
        return;
      }
      case TYPE.u64:
      case TYPE.i64:
        return this.u64(big);
      case TYPE.f64:
        this.#dv.setFloat64(0, num, true), this.#put(8);
        return;
      default: // an unknown type id: write four junk bytes
        return this.u32(num);
    }
  }
}

function encodeGguf(d: GgufDoc, alignment: number): { bytes: Uint8Array; size: number } {
  const w = new Writer();
  for (const c of "GGUF") w.u8(c.charCodeAt(0));
  w.u32(d.version);
  w.u64(d.tensors.length);
  w.u64(d.kv.length);
  for (const [k, type, v] of d.kv) w.str(k), w.u32(type), w.value(type, v);
  for (const t of d.tensors) {
    w.str(t.name);
    w.u32(t.dims.length);
    for (const x of t.dims) w.u64(x);
    w.u32(t.type);
    w.u64(t.rel);
  }
  const head = w.bytes.length;
  const align = alignment > 0 && Number.isSafeInteger(alignment) ? alignment : 32;
  const dataOffset = Math.ceil(head / align) * align;
  return { bytes: new Uint8Array(w.bytes), size: dataOffset + d.dataBytes };
}

function ggufInteresting(rng: Rng, like: GgufValue): [number, GgufValue] {
  switch (rng.int(10)) {
    case 0:
      return [TYPE.u64, rng.pick(U64S)];
    case 1:
      return [TYPE.i64, -rng.pick(U64S.slice(1, 12))];
    case 2:
      return [TYPE.f32, rng.pick([NaN, Infinity, -Infinity, -1, 0, 0.5, 1e30])];
    case 3:
      return [TYPE.f64, rng.pick([NaN, -0, 2 ** 60, 1e300])];
    case 4:
      return [TYPE.string, rng.pick(["", "llama", "gpt2", "qwen2", "gemma2", "none", "yarn", "x"])];
    case 5:
      return [TYPE.bool, rng.chance(0.5)];
    case 6:
      return [TYPE.array, rng.pick<GgufValue>([[], [0], [1, 2], ["a"], [[1]], [2n ** 60n], [NaN]])];
    case 7:
      return [TYPE.u32, rng.pick(U32S)];
    case 8: // the same value under another type
      return [rng.pick([0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12]), like];
    default:
      return [rng.pick([13, 99, 0xffffffff]), 0];
  }
}

function mutateGgufDoc(rng: Rng, base: GgufDoc, pool: readonly GgufDoc[]): GgufDoc {
  const d: GgufDoc = {
    version: base.version,
    kv: base.kv.map(([k, t, v]) => [k, t, Array.isArray(v) ? [...v] : v]),
    tensors: base.tensors.map((t) => ({ ...t, dims: [...t.dims] })),
    dataBytes: base.dataBytes,
  };
  for (let k = 1 + rng.int(3); k > 0; k--) {
    const r = rng.int(12);
    if (r < 4 && d.kv.length > 0) { // a value
      const i = rng.int(d.kv.length);
      const [key, , v] = d.kv[i];
      d.kv[i] = [key, ...ggufInteresting(rng, v)];
    } else if (r === 4 && d.kv.length > 0) d.kv.splice(rng.int(d.kv.length), 1);
    else if (r === 5 && d.kv.length > 0) d.kv.push(d.kv[rng.int(d.kv.length)]); // duplicate key
    else if (r === 6) { // a key from another file
      const o = rng.pick(pool);
      if (o.kv.length > 0) d.kv.push(rng.pick(o.kv));
    } else if (r === 7 && d.kv.length > 0) { // an array element
      const arrays = d.kv.filter(([, , v]) => Array.isArray(v));
      if (arrays.length > 0) {
        const a = rng.pick(arrays)[2] as GgufValue[];
        if (a.length > 0) {
          const j = rng.int(a.length);
          a[j] = rng.pick<GgufValue>([
            -1,
            2 ** 31,
            "",
            " ",
            "a b c",
            1.5,
            NaN,
            a[rng.int(a.length)],
          ]);
        }
      }
    } else if (r === 8 && d.tensors.length > 0) { // a dim
      const t = rng.pick(d.tensors);
      const j = rng.int(t.dims.length);
      t.dims[j] = rng.pick<number | bigint>([0, 1, 3, 32, 256, 2 ** 32, 2n ** 40n, 2n ** 63n]);
      if (rng.chance(0.2)) t.dims.push(rng.pick([1, 2, 0]));
    } else if (r === 9 && d.tensors.length > 0) { // a type or an offset
      const t = rng.pick(d.tensors);
      if (rng.chance(0.5)) t.type = rng.pick([0, 1, 2, 4, 8, 12, 16, 24, 28, 30, 31, 36, 99]);
      else t.rel = rng.pick<number | bigint>([0, 1, 32, Number(t.rel) + 32, 2n ** 63n, -1n]);
    } else if (r === 10 && d.tensors.length > 0) { // tensor names: renamed, duplicated, dropped
      const t = rng.pick(d.tensors);
      const c = rng.int(3);
      if (c === 0) {
        t.name = rng.pick([
          "output.weight",
          "rope_freqs.weight",
          "blk.0.ffn_gate_exps.weight",
          "blk.999999999999.attn_q.weight",
          "x",
        ]);
      } else if (c === 1) d.tensors.push({ ...t, dims: [...t.dims] });
      else d.tensors.splice(d.tensors.indexOf(t), 1);
    } else {
      d.dataBytes = rng.pick([0, 1, d.dataBytes - 1, d.dataBytes, d.dataBytes * 2]);
      if (rng.chance(0.3)) d.version = rng.pick([1, 2, 3, 4]);
    }
  }
  return d;
}

Deno.test("fuzz: GGUF headers, openGguf and ggufTokenizerFiles", sanitize, async () => {
  const files = [
    fixture("gguf/tiny.gguf"),
    ...[...Deno.readDirSync(fixture("gguf_tokenizers"))].filter((e) => e.name.endsWith(".gguf"))
      .map((e) => fixture(`gguf_tokenizers/${e.name}`)),
    ...await fixtureDirs("model.gguf"),
  ].sort();
  const headers = await Promise.all(files.map((p) => readGgufHeader(p)));
  const seeds = await Promise.all(headers.map(async (h) => {
    const bytes = await Deno.readFile(h.file);
    return {
      head: bytes.slice(0, h.dataOffset),
      size: h.fileBytes,
      doc: docOf(h),
      alignment: h.alignment,
    };
  }));
  const heads = seeds.map((s) => s.head);
  const docs = seeds.map((s) => s.doc);
  const dir = await freshDir("gguf");
  const path = `${dir}/model.gguf`;
  await fuzz(
    "gguf",
    (rng) => {
      const s = rng.pick(seeds);
      if (rng.chance(0.5)) return encodeGguf(mutateGgufDoc(rng, s.doc, docs), s.alignment);
      const bytes = mutateBytes(rng, s.head, heads);
      const size = rng.chance(0.8) ? s.size + bytes.length - s.head.length : bytes.length;
      return { bytes, size };
    },
    async ({ bytes, size }) => {
      await writeSized(path, bytes, size);
      const h = await readGgufHeader(path);
      // The two consumers of a header, each on its own: both must be typed or succeed.
      const errors: unknown[] = [];
      await openGguf(path).catch((e) => errors.push(e));
      try {
        ggufTokenizerFiles(h);
        Tokenizer.fromGguf(h);
      } catch (e) {
        errors.push(e);
      }
      const untyped = errors.find((e) => !(e instanceof RabbitError));
      if (untyped !== undefined) throw untyped;
      if (errors.length > 0) throw errors[0];
    },
    (x) => x.bytes,
  );
});

// ---------------------------------------------------------------------------------------------
// torch.save .bin (zip directory + restricted pickle)

/** Pickle snippets the structured generator strings together (forbidden globals included). */
const PICKLE_TOKENS: number[][] = [
  [0x28], // MARK
  [0x74], // TUPLE
  [0x29], // EMPTY_TUPLE
  [0x85],
  [0x86],
  [0x87],
  [0x5d], // EMPTY_LIST
  [0x61], // APPEND
  [0x65], // APPENDS
  [0x7d], // EMPTY_DICT
  [0x73], // SETITEM
  [0x75], // SETITEMS
  [0x64], // DICT
  [0x52], // REDUCE
  [0x62], // BUILD
  [0x51], // BINPERSID
  [0x32], // DUP
  [0x30], // POP
  [0x31], // POP_MARK
  [0x4e], // NONE
  [0x88],
  [0x89],
  [0x94], // MEMOIZE
  [0x71, 0],
  [0x68, 0],
  [0x68, 1],
  [0x93], // STACK_GLOBAL
  [0x81], // NEWOBJ (refused)
  [0x8f], // EMPTY_SET
  [0x90], // ADDITEMS
  [0x91], // FROZENSET
  pstr("storage"),
  pstr("0"),
  pstr("cpu"),
  pstr("w"),
  pstr("os"),
  pstr("system"),
  pglobal("collections", "OrderedDict"),
  pglobal("torch._utils", "_rebuild_tensor_v2"),
  pglobal("torch._utils", "_rebuild_tensor_v3"),
  pglobal("torch._utils", "_rebuild_parameter"),
  pglobal("torch", "FloatStorage"),
  pglobal("torch", "BFloat16Storage"),
  pglobal("torch", "float16"),
  pglobal("torch.storage", "UntypedStorage"),
  pglobal("os", "system"),
  pglobal("builtins", "eval"),
  pglobal("subprocess", "Popen"),
  pglobal("torch", "load"),
  [0x4b, 6],
  [0x4b, 0],
  [0x4b, 1],
  [0x4a, 0xff, 0xff, 0xff, 0xff],
  [0x8a, 8, 0, 0, 0, 0, 0, 0, 0x20, 0], // 2^53
  [0x8a, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], // 2^63 - 1
  [0x8b, 0xff, 0xff, 0xff, 0x7f], // LONG4 of 2 GiB (truncated)
  [0x58, 0xff, 0xff, 0xff, 0xff], // BINUNICODE of 4 GiB (truncated)
  [0x8d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // BINUNICODE8 huge
  [0x95, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // FRAME huge
  [0x6a, 0xff, 0xff, 0xff, 0xff], // LONG_BINGET huge
];

/** A random torch.save-like state dict: shapes, offsets and numels near the edges. */
function randomTorchBin(rng: Rng): { pkl: Uint8Array; storages: Record<string, Uint8Array> } {
  const specs: PTensorSpec[] = [];
  const storages: Record<string, Uint8Array> = {};
  const edge = () => rng.pick([0, 1, 2, 3, 4, 6, 7, 2 ** 31, 2 ** 32 + 1, 2 ** 53 - 1, -1]);
  for (let n = rng.int(4); n > 0; n--) {
    const shape = Array.from(
      { length: rng.int(4) },
      () => rng.chance(0.9) ? 1 + rng.int(3) : edge(),
    );
    const numel = shape.reduce((a, b) => a * b, 1);
    const key = String(rng.int(3));
    const storage = rng.pick([
      "FloatStorage",
      "HalfStorage",
      "BFloat16Storage",
      "LongStorage",
      "DoubleStorage",
    ]);
    const total = rng.chance(0.9) ? Math.max(0, numel) + rng.int(3) : edge();
    specs.push({
      name: rng.pick(["a", "b", "c", "model.embed_tokens.weight"]),
      storage,
      key,
      numel: total,
      offset: rng.chance(0.9) ? rng.int(3) : edge(),
      shape,
      ...(rng.chance(0.2) ? { stride: shape.map(() => edge()) } : {}),
    });
    const bytes = rng.chance(0.9) ? Math.max(0, Math.min(total, 64)) * 4 : rng.int(16);
    storages[key] ??= new Uint8Array(bytes).map((_, i) => i);
  }
  return { pkl: pickleStateDict(specs), storages };
}

Deno.test(
  "fuzz: torch.save .bin (zip directory, pickle opcodes, forbidden globals)",
  sanitize,
  async () => {
    const files = [
      "tensors.bin",
      "noncontiguous.bin",
      "malicious.bin",
      "legacy.bin",
      "sharded/pytorch_model-00001-of-00002.bin",
      "sharded/pytorch_model-00002-of-00002.bin",
    ];
    const archives = await Promise.all(files.map((f) => Deno.readFile(fixture(`torch_bin/${f}`))));
    // The pickles of the valid archives, for pickle-level mutations inside a valid zip.
    const pkls: { pkl: Uint8Array; storages: Record<string, Uint8Array> }[] = [];
    for (const f of ["tensors.bin", "sharded/pytorch_model-00001-of-00002.bin"]) {
      const entries = localEntries(await Deno.readFile(fixture(`torch_bin/${f}`)));
      const storages: Record<string, Uint8Array> = {};
      const pkl = [...entries.keys()].find((n) => n.endsWith("/data.pkl"))!;
      const prefix = pkl.slice(0, -"data.pkl".length) + "data/";
      for (const [name, data] of entries) {
        if (name.startsWith(prefix)) storages[name.slice(prefix.length)] = data;
      }
      pkls.push({ pkl: entries.get(pkl)!, storages });
      // Unmutated, it is the same state dict.
      using t = await TorchBinFile.fromBytes(
        f,
        zipBytes(torchEntries(entries.get(pkl)!, storages)),
      );
      using orig = await TorchBinFile.open(fixture(`torch_bin/${f}`));
      assert.deepEqual([...t.tensors.keys()], [...orig.tensors.keys()]);
    }
    const pklPool = pkls.map((p) => p.pkl);
    await fuzz(
      "torch_bin",
      (rng): { bytes: Uint8Array } => {
        const kind = rng.int(5);
        if (kind === 0) { // byte mutations of a whole archive
          return { bytes: mutateBytes(rng, rng.pick(archives), archives) };
        }
        if (kind === 1) { // mutations of the central directory and end records only
          const a = rng.pick(archives);
          const cut = Math.max(0, a.length - 22 - 46 * 8 - rng.int(200));
          return { bytes: concat(a.subarray(0, cut), mutateBytes(rng, a.subarray(cut), archives)) };
        }
        if (kind === 2) { // a mutated pickle in a valid zip (ZIP64 sometimes)
          const s = rng.pick(pkls);
          const pkl = mutateBytes(rng, s.pkl, pklPool);
          return { bytes: zipBytes(torchEntries(pkl, s.storages), rng.chance(0.3)) };
        }
        if (kind === 3) { // random opcode strings: deep nesting, huge lengths, forbidden globals
          const ops: number[] = [0x80, rng.pick([2, 4, 5, 1, 9])];
          const n = rng.chance(0.1) ? 20_000 : 1 + rng.int(64);
          const deep = rng.chance(0.2) ? rng.pick(PICKLE_TOKENS) : null;
          for (let i = 0; i < n; i++) ops.push(...(deep ?? rng.pick(PICKLE_TOKENS)));
          ops.push(0x2e);
          return {
            bytes: zipBytes(torchEntries(new Uint8Array(ops), { "0": new Uint8Array(24) })),
          };
        }
        const { pkl, storages } = randomTorchBin(rng); // valid pickles, edge sizes
        return { bytes: zipBytes(torchEntries(pkl, storages), rng.chance(0.3)) };
      },
      async ({ bytes }) => {
        using f = await TorchBinFile.fromBytes("fuzz.bin", bytes);
        // Accepted: every tensor's range is inside the archive and reads back whole.
        for (const t of [...f.tensors.values()].slice(0, 3)) {
          assert.equal((await f.read(t.name)).length, t.nbytes);
        }
      },
      (x) => x.bytes,
    );
  },
);
