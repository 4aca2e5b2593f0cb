/**
 * GGUF files (llama.cpp's format): the header — metadata key/values and tensor infos — parsed and
 * validated like a safetensors header. Every problem is a {@link GgufError} naming the key or tensor
 * and what was expected; nothing is trusted before it is checked against the file's size, so a
 * corrupt or hostile header cannot make us allocate or read without bound.
 *
 * Layout (little-endian, GGUF v2/v3): magic "GGUF", version u32, tensor count u64, metadata count
 * u64; each metadata entry: key (string), value type u32, value; each tensor: name (string), n_dims
 * u32, dims u64 × n_dims (dims[0] varies fastest: the row length), ggml type u32, offset u64 from
 * the data section, which starts at the next multiple of `general.alignment` (default 32) after the
 * header. A string is a u64 length then UTF-8 bytes; an array is an element type u32, a count u64,
 * then the elements.
 *
 * @module
 */
import { GgufError } from "./errors.ts";

/** A metadata value: numbers (u64/i64 as bigint when beyond 2^53), strings, booleans, arrays. */
export type GgufValue = number | bigint | string | boolean | GgufValue[];

/** ggml's tensor types by id, and how many bytes a row of them takes. */
const GGML_TYPES: Readonly<Record<number, { name: string; elems: number; bytes: number }>> = {
  0: { name: "F32", elems: 1, bytes: 4 },
  1: { name: "F16", elems: 1, bytes: 2 },
  2: { name: "Q4_0", elems: 32, bytes: 18 },
  3: { name: "Q4_1", elems: 32, bytes: 20 },
  6: { name: "Q5_0", elems: 32, bytes: 22 },
  7: { name: "Q5_1", elems: 32, bytes: 24 },
  8: { name: "Q8_0", elems: 32, bytes: 34 },
  9: { name: "Q8_1", elems: 32, bytes: 36 },
  10: { name: "Q2_K", elems: 256, bytes: 84 },
  11: { name: "Q3_K", elems: 256, bytes: 110 },
  12: { name: "Q4_K", elems: 256, bytes: 144 },
  13: { name: "Q5_K", elems: 256, bytes: 176 },
  14: { name: "Q6_K", elems: 256, bytes: 210 },
  15: { name: "Q8_K", elems: 256, bytes: 292 },
  16: { name: "IQ2_XXS", elems: 256, bytes: 66 },
  17: { name: "IQ2_XS", elems: 256, bytes: 74 },
  18: { name: "IQ3_XXS", elems: 256, bytes: 98 },
  19: { name: "IQ1_S", elems: 256, bytes: 50 },
  20: { name: "IQ4_NL", elems: 32, bytes: 18 },
  21: { name: "IQ3_S", elems: 256, bytes: 110 },
  22: { name: "IQ2_S", elems: 256, bytes: 82 },
  23: { name: "IQ4_XS", elems: 256, bytes: 136 },
  24: { name: "I8", elems: 1, bytes: 1 },
  25: { name: "I16", elems: 1, bytes: 2 },
  26: { name: "I32", elems: 1, bytes: 4 },
  27: { name: "I64", elems: 1, bytes: 8 },
  28: { name: "F64", elems: 1, bytes: 8 },
  29: { name: "IQ1_M", elems: 256, bytes: 56 },
  30: { name: "BF16", elems: 1, bytes: 2 },
  34: { name: "TQ1_0", elems: 256, bytes: 54 },
  35: { name: "TQ2_0", elems: 256, bytes: 66 },
};

/** One tensor of a GGUF file. */
export interface GgufTensor {
  name: string;
  /** Row-major, as safetensors and PyTorch write it: GGUF's dims reversed (last = row length). */
  shape: number[];
  /** ggml type id and name ("Q4_K", "IQ2_XS", ...). */
  typeId: number;
  type: string;
  /** Absolute offset of its data in the file, and its size. */
  offset: number;
  nbytes: number;
}

/** A parsed GGUF header. */
export interface GgufHeader {
  file: string;
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensor[];
  alignment: number;
  /** Absolute offset of the data section. */
  dataOffset: number;
  /** Size of the file. */
  fileBytes: number;
}

/** Bounds that keep a hostile header from costing more than the file itself. */
const MAX_DIMS = 4;
const MAX_ARRAY_DEPTH = 4;
/** The header may not exceed this (a 256k-token vocabulary with merges is ~10 MB). */
const MAX_HEADER_BYTES = 512 * 2 ** 20;

const VALUE_TYPES = [
  "u8",
  "i8",
  "u16",
  "i16",
  "u32",
  "i32",
  "f32",
  "bool",
  "string",
  "array",
  "u64",
  "i64",
  "f64",
] as const;

/** Reads the header of an open file through a growing buffer, checking every length first. */
class HeaderReader {
  #buf = new Uint8Array(0);
  #view = new DataView(this.#buf.buffer);
  pos = 0;
  readonly #decoder = new TextDecoder("utf-8", { fatal: true });

  constructor(
    private readonly f: Deno.FsFile,
    readonly file: string,
    readonly size: number,
  ) {}

  fail(where: string | undefined, what: string): never {
    throw new GgufError(this.file, where, what);
  }

  /** Makes bytes [pos, pos + n) available, or fails naming `what` was being read. */
  async need(n: number, what: string, where?: string): Promise<void> {
    const end = this.pos + n;
    if (end > this.size) {
      this.fail(
        where,
        `truncated: ${what} needs ${n} bytes at offset ${this.pos}, the file has ${this.size}`,
      );
    }
    if (end > MAX_HEADER_BYTES) this.fail(where, `header larger than ${MAX_HEADER_BYTES} bytes`);
    if (end <= this.#buf.length) return;
    const want = Math.min(this.size, Math.max(end, this.#buf.length * 2, 1 << 16));
    const grown = new Uint8Array(want);
    grown.set(this.#buf);
    await this.f.seek(this.#buf.length, Deno.SeekMode.Start);
    let at = this.#buf.length;
    while (at < want) {
      const got = await this.f.read(grown.subarray(at));
      if (got === null) this.fail(where, `truncated: read ended at ${at} of ${this.size} bytes`);
      at += got;
    }
    this.#buf = grown;
    this.#view = new DataView(grown.buffer);
  }

  async u32(what: string, where?: string): Promise<number> {
    await this.need(4, what, where);
    const v = this.#view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }

  /** A u64 that must be at most `max` (a count or length bounded by the file). */
  async count(what: string, max: number, where?: string): Promise<number> {
    await this.need(8, what, where);
    const v = this.#view.getBigUint64(this.pos, true);
    this.pos += 8;
    if (v > BigInt(max)) this.fail(where, `${what} ${v} exceeds ${max} (the file cannot hold it)`);
    return Number(v);
  }

  async string(what: string, where?: string): Promise<string> {
    const n = await this.count(`${what} length`, this.size - this.pos - 8, where);
    await this.need(n, what, where);
    try {
      return this.#decoder.decode(this.#buf.subarray(this.pos, this.pos + n));
    } catch {
      this.fail(where, `${what} is not valid UTF-8`);
    } finally {
      this.pos += n;
    }
  }

  async value(type: number, where: string, depth: number): Promise<GgufValue> {
    const scalar = async (n: number, get: (o: number) => GgufValue) => {
      await this.need(n, `a ${VALUE_TYPES[type]} value`, where);
      const out = get(this.pos);
      this.pos += n;
      return out;
    };
    switch (type) {
      case 0:
        return scalar(1, (o) => this.#view.getUint8(o));
      case 1:
        return scalar(1, (o) => this.#view.getInt8(o));
      case 2:
        return scalar(2, (o) => this.#view.getUint16(o, true));
      case 3:
        return scalar(2, (o) => this.#view.getInt16(o, true));
      case 4:
        return scalar(4, (o) => this.#view.getUint32(o, true));
      case 5:
        return scalar(4, (o) => this.#view.getInt32(o, true));
      case 6:
        return scalar(4, (o) => this.#view.getFloat32(o, true));
      case 7: {
        const b = await scalar(1, (o) => this.#view.getUint8(o));
        if (b !== 0 && b !== 1) this.fail(where, `a bool must be 0 or 1, got ${b}`);
        return b === 1;
      }
      case 8:
        return this.string("a string value", where);
      case 9: {
        if (depth >= MAX_ARRAY_DEPTH) {
          this.fail(where, `arrays nested deeper than ${MAX_ARRAY_DEPTH}`);
        }
        const elem = await this.u32("an array's element type", where);
        if (elem >= VALUE_TYPES.length) {
          this.fail(where, `array element type ${elem} is not a GGUF value type`);
        }
        // Each element takes at least one byte: the count is bounded by what is left of the file.
        const n = await this.count("an array's length", this.size - this.pos, where);
        const out: GgufValue[] = [];
        for (let i = 0; i < n; i++) out.push(await this.value(elem, where, depth + 1));
        return out;
      }
      case 10:
        return scalar(8, (o) => small(this.#view.getBigUint64(o, true)));
      case 11:
        return scalar(8, (o) => small(this.#view.getBigInt64(o, true)));
      case 12:
        return scalar(8, (o) => this.#view.getFloat64(o, true));
      default:
        this.fail(where, `value type ${type} is not a GGUF value type (0..12)`);
    }
  }
}

/** A 64-bit integer as a number when it is exact, else a bigint. */
function small(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
    ? Number(v)
    : v;
}

/** Parses and validates the header of the GGUF file at `path` (the tensor data is not read). */
export async function readGgufHeader(path: string): Promise<GgufHeader> {
  using f = await Deno.open(path, { read: true });
  const size = (await f.stat()).size;
  const r: HeaderReader = new HeaderReader(f, path, size);
  await r.need(4, "the magic");
  const magic = await r.u32("the magic");
  if (magic !== 0x46554747) {
    r.fail(
      undefined,
      `not a GGUF file: magic 0x${magic.toString(16).padStart(8, "0")}, expected "GGUF"`,
    );
  }
  const version = await r.u32("the version");
  if (version !== 2 && version !== 3) {
    r.fail(undefined, `GGUF version ${version} is not supported (2 or 3)`);
  }
  // Every tensor info takes at least 8 + 4 + 8 + 4 + 8 bytes; every key/value at least 8 + 4 + 1.
  const nTensors = await r.count("the tensor count", Math.floor(size / 32));
  const nKv = await r.count("the metadata count", Math.floor(size / 13));

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < nKv; i++) {
    const key = await r.string(`metadata key ${i}`);
    const where = `key ${key}`;
    if (metadata.has(key)) r.fail(where, "appears twice");
    const type = await r.u32("a value type", where);
    metadata.set(key, await r.value(type, where, 0));
  }

  const align = metadata.get("general.alignment") ?? 32;
  if (
    typeof align !== "number" || !Number.isInteger(align) || align <= 0 ||
    (align & (align - 1)) !== 0
  ) {
    r.fail("key general.alignment", `must be a power of two, got ${String(align)}`);
  }

  const raw: { name: string; dims: number[]; typeId: number; rel: number }[] = [];
  const names = new Set<string>();
  for (let i = 0; i < nTensors; i++) {
    const name = await r.string(`tensor name ${i}`);
    const where = `tensor ${name}`;
    if (names.has(name)) r.fail(where, "appears twice");
    names.add(name);
    const nd = await r.u32("n_dims", where);
    if (nd < 1 || nd > MAX_DIMS) r.fail(where, `n_dims ${nd} must be 1..${MAX_DIMS}`);
    const dims: number[] = [];
    for (let d = 0; d < nd; d++) {
      const n = await r.count(`dim ${d}`, 2 ** 40, where);
      if (n === 0) r.fail(where, `dim ${d} is 0`);
      dims.push(n);
    }
    const typeId = await r.u32("the type", where);
    const rel = await r.count("the data offset", size, where);
    raw.push({ name, dims, typeId, rel });
  }
  const dataOffset = Math.ceil(r.pos / align) * align;

  const tensors: GgufTensor[] = raw.map(({ name, dims, typeId, rel }) => {
    const where = `tensor ${name}`;
    const t = GGML_TYPES[typeId];
    if (!t) r.fail(where, `ggml type ${typeId} is unknown`);
    if (dims[0] % t.elems !== 0) {
      r.fail(where, `${t.name} rows hold multiples of ${t.elems} values; dims[0] is ${dims[0]}`);
    }
    const rows = dims.slice(1).reduce((a, b) => a * b, 1);
    const nbytes = rows * (dims[0] / t.elems) * t.bytes;
    if (rel % align !== 0) {
      r.fail(where, `data offset ${rel} is not a multiple of the alignment ${align}`);
    }
    const offset = dataOffset + rel;
    if (!Number.isSafeInteger(nbytes) || offset + nbytes > size) {
      r.fail(
        where,
        `data [${offset}, ${offset + nbytes}) runs past the end of the file (${size} bytes)`,
      );
    }
    return { name, shape: [...dims].reverse(), typeId, type: t.name, offset, nbytes };
  });
  // Tensors may not share bytes.
  const byOffset = [...tensors].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < byOffset.length; i++) {
    const p = byOffset[i - 1], t = byOffset[i];
    if (t.offset < p.offset + p.nbytes) {
      r.fail(`tensor ${t.name}`, `data overlaps tensor ${p.name}`);
    }
  }
  return { file: path, version, metadata, tensors, alignment: align, dataOffset, fileBytes: size };
}

/** A metadata value of the expected kind, or a GgufError naming the key. */
export function ggufValue<T extends "string" | "number" | "boolean" | "array">(
  h: GgufHeader,
  key: string,
  kind: T,
): T extends "string" ? string
  : T extends "number" ? number
  : T extends "boolean" ? boolean
  : GgufValue[] {
  const v = h.metadata.get(key);
  if (v === undefined) throw new GgufError(h.file, `key ${key}`, "missing");
  const actual: string = Array.isArray(v) ? "array" : typeof v;
  if (actual !== kind) {
    throw new GgufError(h.file, `key ${key}`, `expected a ${kind}, got ${actual}`);
  }
  return v as never;
}
