/**
 * The safetensors format: an 8-byte little-endian header length, a JSON header mapping tensor names
 * to `{dtype, shape, data_offsets}` (offsets relative to the data section) plus an optional
 * `__metadata__` string map, then the raw little-endian tensor bytes.
 *
 * Reading opens the file and parses only the header; each tensor is read on demand from its own
 * byte range, so a shard is never loaded whole. Writing goes to a temporary file that is renamed
 * into place, so a half-written file never appears under the final name.
 *
 * @example Round trip
 * ```ts
 * import { SafetensorsFile, writeSafetensors } from "./safetensors.ts";
 *
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * const data = new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer);
 * await writeSafetensors(path, [{ name: "w", dtype: "F32", shape: [2, 2], data }]);
 * using file = await SafetensorsFile.open(path);
 * const bytes = await file.read("w");
 * console.assert(new Float32Array(bytes.buffer)[3] === 4);
 * await Deno.remove(path);
 * ```
 *
 * @module
 */

import { DTYPES, isDType, tensorByteSize } from "./dtype.ts";
import { BLOCK } from "./quant.ts";
import type { DType } from "./dtype.ts";
import { jsonTooDeep, MAX_JSON_DEPTH, SafetensorsError } from "./errors.ts";

export type { DType } from "./dtype.ts";

/** Where one tensor lives in a safetensors file. */
export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute byte offset of the tensor's data in the file. */
  offset: number;
  /** Byte length of the tensor's data. */
  nbytes: number;
}

/** What a tensor to be written looks like, without its data. */
export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: number[];
}

/** A tensor to be written: its spec and its raw little-endian bytes. */
export interface TensorData extends TensorSpec {
  data: Uint8Array;
}

/** Largest header accepted, as in the reference implementation. */
export const MAX_HEADER_BYTES = 100_000_000;

const METADATA_KEY = "__metadata__";

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function checkShape(file: string, name: string, shape: unknown): number[] {
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    throw new SafetensorsError(
      file,
      name,
      `shape ${JSON.stringify(shape)} is not a list of non-negative integers`,
    );
  }
  return shape;
}

function checkDType(file: string, name: string, dtype: unknown): DType {
  if (isDType(dtype)) return dtype;
  const what = typeof dtype === "string" ? dtype : `dtype ${JSON.stringify(dtype)}`;
  throw new SafetensorsError(
    file,
    name,
    `${what} is not supported; expected one of ${DTYPES.join(", ")} (or, in a quantized split, ${
      Object.keys(BLOCK).join(", ")
    })`,
  );
}

/**
 * Bytes a tensor of this shape and dtype occupies (a block format: rows of its last dim, each a
 * whole number of blocks).
 */
export function tensorBytes(dtype: DType, shape: readonly number[]): number {
  return tensorByteSize(dtype, shape);
}

/** Validates a parsed header; offsets in the result are relative to the data section. */
function parseHeader(file: string, header: unknown, dataBytes: number) {
  if (!isRecord(header)) {
    throw new SafetensorsError(file, undefined, "header is not a JSON object");
  }
  let metadata: Record<string, string> = {};
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === METADATA_KEY) {
      if (!isRecord(entry) || !Object.values(entry).every((v) => typeof v === "string")) {
        throw new SafetensorsError(file, name, "must be an object of string values");
      }
      metadata = Object.fromEntries(Object.entries(entry)) as Record<string, string>;
      continue;
    }
    if (!isRecord(entry)) {
      throw new SafetensorsError(file, name, "entry is not a JSON object");
    }
    const dtype = checkDType(file, name, entry.dtype);
    const shape = checkShape(file, name, entry.shape);
    const offsets = entry.data_offsets;
    if (
      !Array.isArray(offsets) || offsets.length !== 2 || !isCount(offsets[0]) ||
      !isCount(offsets[1]) || offsets[0] > offsets[1]
    ) {
      throw new SafetensorsError(
        file,
        name,
        `data_offsets ${JSON.stringify(offsets)} is not [begin, end] with 0 <= begin <= end`,
      );
    }
    const [begin, end] = offsets as [number, number];
    let nbytes: number;
    try {
      nbytes = tensorBytes(dtype, shape);
    } catch (e) {
      // A block format whose last dim is not whole blocks.
      throw new SafetensorsError(
        file,
        name,
        `shape ${JSON.stringify(shape)}: ${(e as Error).message}`,
      );
    }
    if (nbytes !== end - begin) {
      throw new SafetensorsError(
        file,
        name,
        `shape [${shape}] of ${dtype} needs ${nbytes} bytes but data_offsets [${begin}, ${end}] ` +
          `span ${end - begin}`,
      );
    }
    if (end > dataBytes) {
      throw new SafetensorsError(
        file,
        name,
        `data_offsets [${begin}, ${end}] run past the end of the data section ` +
          `(${dataBytes} bytes)`,
      );
    }
    tensors.push({ name, dtype, shape, offset: begin, nbytes });
  }
  tensors.sort((a, b) => a.offset - b.offset || a.nbytes - b.nbytes);
  let last: TensorInfo | undefined; // the tensor reaching furthest so far
  for (const t of tensors) {
    if (last !== undefined && t.offset < last.offset + last.nbytes) {
      throw new SafetensorsError(
        file,
        t.name,
        `data_offsets [${t.offset}, ${t.offset + t.nbytes}] overlap ${last.name} ` +
          `[${last.offset}, ${last.offset + last.nbytes}]`,
      );
    }
    if (last === undefined || t.offset + t.nbytes >= last.offset + last.nbytes) last = t;
  }
  return { metadata, tensors };
}

/** Reads until `buf` is full; fails naming the file when it ends first. */
async function readFull(
  f: Deno.FsFile,
  buf: Uint8Array,
  file: string,
  tensor: string | undefined,
  position: number,
): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const n = await f.read(buf.subarray(done));
    if (n === null) {
      throw new SafetensorsError(
        file,
        tensor,
        `file ended at byte ${position + done}, expected ${buf.length} bytes from ${position}` +
          ` (was it truncated after opening?)`,
      );
    }
    done += n;
  }
}

async function writeFull(f: Deno.FsFile, buf: Uint8Array): Promise<void> {
  let done = 0;
  while (done < buf.length) done += await f.write(buf.subarray(done));
}

/**
 * An open safetensors file: its validated header and on-demand reads of single tensors.
 *
 * Reads on one file are serialised (one file handle, seek + read), so concurrent `read` calls are
 * safe; open the file twice for parallel I/O.
 */
export class SafetensorsFile {
  /** The path as given to {@linkcode SafetensorsFile.open}. */
  readonly path: string;
  /** File size in bytes when it was opened. */
  readonly size: number;
  /** Absolute offset of the data section (8 + header length). */
  readonly dataStart: number;
  /** The `__metadata__` map (empty when absent). */
  readonly metadata: Record<string, string>;
  /** Every tensor, in the order of its data in the file. */
  readonly tensors: ReadonlyMap<string, TensorInfo>;

  #file: Deno.FsFile | undefined;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(
    path: string,
    file: Deno.FsFile,
    size: number,
    dataStart: number,
    metadata: Record<string, string>,
    tensors: TensorInfo[],
  ) {
    this.path = path;
    this.#file = file;
    this.size = size;
    this.dataStart = dataStart;
    this.metadata = metadata;
    this.tensors = new Map(tensors.map((t) => [t.name, t]));
  }

  /** Opens `path` and validates its header; throws {@linkcode SafetensorsError} when malformed. */
  static async open(path: string): Promise<SafetensorsFile> {
    const f = await Deno.open(path, { read: true });
    try {
      const size = (await f.stat()).size;
      if (size < 8) {
        throw new SafetensorsError(
          path,
          undefined,
          `file is ${size} bytes; a safetensors file starts with an 8-byte header length`,
        );
      }
      const lenBytes = new Uint8Array(8);
      await readFull(f, lenBytes, path, undefined, 0);
      const len = new DataView(lenBytes.buffer).getBigUint64(0, true);
      if (len > BigInt(MAX_HEADER_BYTES)) {
        throw new SafetensorsError(
          path,
          undefined,
          `header length ${len} is over the ${MAX_HEADER_BYTES}-byte limit`,
        );
      }
      const headerBytes = Number(len);
      if (8 + headerBytes > size) {
        throw new SafetensorsError(
          path,
          undefined,
          `header length ${headerBytes} runs past the end of the ${size}-byte file`,
        );
      }
      const raw = new Uint8Array(headerBytes);
      await readFull(f, raw, path, undefined, 8);
      let text: string;
      try {
        text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(raw);
      } catch (e) {
        throw new SafetensorsError(path, undefined, "header is not valid UTF-8", { cause: e });
      }
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch (e) {
        throw new SafetensorsError(
          path,
          undefined,
          `header is not valid JSON (${(e as Error).message})`,
          { cause: e },
        );
      }
      if (jsonTooDeep(json)) {
        throw new SafetensorsError(
          path,
          undefined,
          `header is nested deeper than ${MAX_JSON_DEPTH} levels`,
        );
      }
      const dataStart = 8 + headerBytes;
      const { metadata, tensors } = parseHeader(path, json, size - dataStart);
      for (const t of tensors) t.offset += dataStart;
      return new SafetensorsFile(path, f, size, dataStart, metadata, tensors);
    } catch (e) {
      f.close();
      throw e;
    }
  }

  /** The tensor's info; throws {@linkcode SafetensorsError} when the file has no such tensor. */
  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (t === undefined) {
      throw new SafetensorsError(
        this.path,
        name,
        `no such tensor (the file has ${this.tensors.size})`,
      );
    }
    return t;
  }

  /**
   * Reads one tensor's bytes: exactly its byte range, nothing else.
   *
   * @param name the tensor
   * @param into where to read to; must hold at least the tensor's bytes. A new buffer when omitted.
   * @returns the tensor's bytes: `into.subarray(0, nbytes)`, or the new buffer
   */
  read(name: string): Promise<Uint8Array<ArrayBuffer>>;
  read<B extends ArrayBufferLike>(name: string, into: Uint8Array<B>): Promise<Uint8Array<B>>;
  read(name: string, into?: Uint8Array): Promise<Uint8Array> {
    let t: TensorInfo;
    try {
      t = this.info(name);
    } catch (e) {
      return Promise.reject(e);
    }
    if (into !== undefined && into.length < t.nbytes) {
      return Promise.reject(
        new SafetensorsError(
          this.path,
          name,
          `buffer holds ${into.length} bytes, the tensor needs ${t.nbytes}`,
        ),
      );
    }
    const buf = into === undefined ? new Uint8Array(t.nbytes) : into.subarray(0, t.nbytes);
    const run = async () => {
      const f = this.#file;
      if (f === undefined) throw new SafetensorsError(this.path, name, "file is closed");
      await f.seek(t.offset, Deno.SeekMode.Start);
      await readFull(f, buf, this.path, name, t.offset);
      return buf;
    };
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => {});
    return result;
  }

  /** Closes the file; later reads fail. Safe to call twice. */
  close(): void {
    const f = this.#file;
    this.#file = undefined;
    f?.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** The header bytes (length prefix included) for these tensors, laid out in the given order. */
function encodeHeader(
  path: string,
  specs: readonly TensorSpec[],
  metadata: Record<string, string> | undefined,
  dataAlign = 8,
): { header: Uint8Array<ArrayBuffer>; sizes: number[] } {
  const obj: Record<string, unknown> = {};
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") {
        throw new SafetensorsError(path, METADATA_KEY, `value of ${k} is not a string`);
      }
    }
    obj[METADATA_KEY] = metadata;
  }
  const sizes: number[] = [];
  let offset = 0;
  for (const { name, dtype, shape } of specs) {
    if (name === METADATA_KEY || Object.hasOwn(obj, name)) {
      throw new SafetensorsError(path, name, "tensor name is reserved or used twice");
    }
    checkDType(path, name, dtype);
    checkShape(path, name, shape);
    let n: number;
    try {
      n = tensorBytes(dtype, shape);
    } catch (e) {
      throw new SafetensorsError(
        path,
        name,
        `shape ${JSON.stringify(shape)}: ${(e as Error).message}`,
      );
    }
    obj[name] = { dtype, shape, data_offsets: [offset, offset + n] };
    sizes.push(n);
    offset += n;
  }
  const json = new TextEncoder().encode(JSON.stringify(obj));
  // Spaces up to a multiple of 8, like the reference; with a larger `dataAlign` the tensor data
  // starts at a multiple of it (the format allows trailing spaces in the header).
  const padded = Math.ceil((8 + json.length) / dataAlign) * dataAlign - 8;
  const header = new Uint8Array(8 + padded).fill(0x20, 8 + json.length);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(json, 8);
  return { header, sizes };
}

/**
 * Writes a safetensors file tensor by tensor, so that only one tensor need be in memory at a time.
 * The header is computed up front from the specs; tensors must then be written in that order. The
 * data goes to `<path>.tmp-<random>`, which {@linkcode SafetensorsWriter.commit} renames to `path`.
 */
export class SafetensorsWriter {
  /** The final path. */
  readonly path: string;
  /** The temporary file written until {@linkcode SafetensorsWriter.commit}. */
  readonly tempPath: string;
  readonly #specs: readonly TensorSpec[];
  readonly #sizes: number[];
  #file: Deno.FsFile | undefined;
  #next = 0;
  #busy = false;

  private constructor(path: string, tempPath: string, specs: TensorSpec[], sizes: number[]) {
    this.path = path;
    this.tempPath = tempPath;
    this.#specs = specs;
    this.#sizes = sizes;
  }

  /** Validates the specs, creates the temporary file and writes the header. */
  static async create(
    path: string,
    specs: readonly TensorSpec[],
    metadata?: Record<string, string>,
    opts: { dataAlign?: number } = {},
  ): Promise<SafetensorsWriter> {
    const align = opts.dataAlign ?? 8;
    if (!Number.isInteger(align) || align < 8 || (align & (align - 1)) !== 0) {
      throw new SafetensorsError(
        path,
        undefined,
        `dataAlign ${align}: expected a power of two >= 8`,
      );
    }
    const copy = specs.map(({ name, dtype, shape }) => ({ name, dtype, shape: [...shape] }));
    const { header, sizes } = encodeHeader(path, copy, metadata, align);
    const rand = crypto.getRandomValues(new Uint32Array(2));
    const tempPath = `${path}.tmp-${rand[0].toString(36)}${rand[1].toString(36)}`;
    const w = new SafetensorsWriter(path, tempPath, copy, sizes);
    w.#file = await Deno.open(tempPath, { write: true, createNew: true });
    try {
      await writeFull(w.#file, header);
    } catch (e) {
      await w.abort();
      throw e;
    }
    return w;
  }

  /** Writes the next tensor's bytes; `name` must be the next one in the spec order. */
  async write(name: string, data: Uint8Array): Promise<void> {
    const f = this.#file;
    if (f === undefined) throw new SafetensorsError(this.path, name, "writer is closed");
    if (this.#busy) {
      throw new SafetensorsError(this.path, name, "written while another write is in progress");
    }
    const spec = this.#specs[this.#next];
    if (spec === undefined || spec.name !== name) {
      const what = spec === undefined ? "every tensor is already written" : `expected ${spec.name}`;
      throw new SafetensorsError(this.path, name, `written out of order; ${what}`);
    }
    const want = this.#sizes[this.#next];
    if (data.length !== want) {
      throw new SafetensorsError(
        this.path,
        name,
        `shape [${spec.shape}] of ${spec.dtype} needs ${want} bytes but ${data.length} were given`,
      );
    }
    this.#busy = true;
    try {
      await writeFull(f, data);
      this.#next++;
    } finally {
      this.#busy = false;
    }
  }

  /** Flushes, closes and renames the temporary file to `path`; every tensor must be written. */
  async commit(): Promise<void> {
    const f = this.#file;
    if (f === undefined) throw new SafetensorsError(this.path, undefined, "writer is closed");
    if (this.#busy) throw new SafetensorsError(this.path, undefined, "commit during a write");
    const missing = this.#specs[this.#next];
    if (missing !== undefined) {
      throw new SafetensorsError(
        this.path,
        missing.name,
        `not written (${this.#specs.length - this.#next} of ${this.#specs.length} missing)`,
      );
    }
    this.#file = undefined;
    try {
      await f.syncData();
    } finally {
      f.close();
    }
    try {
      await Deno.rename(this.tempPath, this.path);
    } catch (e) {
      await Deno.remove(this.tempPath).catch(() => {});
      throw e;
    }
  }

  /** Closes and deletes the temporary file. Does nothing after commit or a previous abort. */
  async abort(): Promise<void> {
    const f = this.#file;
    if (f === undefined) return;
    this.#file = undefined;
    f.close();
    await Deno.remove(this.tempPath).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  }

  /** Aborts unless committed. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.abort();
  }
}

/**
 * Writes a whole safetensors file at once: header (padded with spaces to a multiple of 8, as the
 * reference implementation does) then each tensor's data in the given order. Sizes are checked
 * before anything is written; the file appears at `path` only when complete.
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorData[],
  metadata?: Record<string, string>,
): Promise<void> {
  for (const t of tensors) {
    checkDType(path, t.name, t.dtype);
    const n = tensorBytes(t.dtype, checkShape(path, t.name, t.shape));
    if (t.data.length !== n) {
      throw new SafetensorsError(
        path,
        t.name,
        `shape [${t.shape}] of ${t.dtype} needs ${n} bytes but ${t.data.length} were given`,
      );
    }
  }
  const w = await SafetensorsWriter.create(path, tensors, metadata);
  try {
    for (const t of tensors) await w.write(t.name, t.data);
    await w.commit();
  } catch (e) {
    await w.abort();
    throw e;
  }
}
