/**
 * PyTorch checkpoints as torch.save (≥ 1.6) writes them (`pytorch_model.bin`,
 * `pytorch_model-0000N-of-0000M.bin`): an uncompressed zip archive holding `<name>/data.pkl` (a
 * pickle of the state dict), one `<name>/data/<key>` entry per storage, `<name>/byteorder` and
 * `<name>/version`.
 *
 * Nothing in the pickle is executed. A restricted interpreter runs the opcodes torch.save emits
 * (protocols 2–5) and resolves only the globals a state dict needs — `collections.OrderedDict`,
 * `torch._utils._rebuild_tensor_v2` / `_rebuild_tensor_v3` / `_rebuild_parameter`, the typed
 * storage classes (`torch.FloatStorage`, ...) and dtypes (`torch.float32`, ...) — and storages
 * through `persistent_load` records `('storage', type, key, location, numel)`. Any other global
 * (`os.system`, `builtins.eval`, ...) is a {@linkcode TorchBinError} naming it, raised before
 * anything could be called. Tensors must be contiguous row-major views of their storage (several
 * may share one storage at different offsets); each is read on demand from its own byte range.
 *
 * @module
 */

import { DTYPE_SIZE } from "./dtype.ts";
import type { PlainDType } from "./dtype.ts";
import { TorchBinError } from "./errors.ts";

/** Where one tensor lives in a torch .bin file. */
export interface TorchTensorInfo {
  name: string;
  dtype: PlainDType;
  shape: number[];
  /** Absolute byte offset of the tensor's data in the file. */
  offset: number;
  /** Byte length of the tensor's data. */
  nbytes: number;
  /** The storage key (zip entry `<archive>/data/<key>`) the tensor is a view of. */
  storage: string;
}

/** Largest data.pkl accepted (a state dict of thousands of tensors takes well under 1 MB). */
export const MAX_PICKLE_BYTES = 64 * 1024 * 1024;
/** Largest zip central directory accepted. */
export const MAX_DIRECTORY_BYTES = 64 * 1024 * 1024;

/** Random-access bytes: a file, or a buffer in tests. */
interface Source {
  size: number;
  /** Fills `buf` from `position`; throws when the source ends first. */
  readAt(position: number, buf: Uint8Array, what: string): Promise<void>;
}

// ---------------------------------------------------------------- zip

interface ZipEntry {
  name: string;
  method: number;
  compressedSize: number;
  size: number;
  localOffset: number;
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const SIG_ZIP64_EOCD = 0x06064b50;

function u64(dv: DataView, at: number, file: string, what: string): number {
  const v = dv.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new TorchBinError(file, undefined, `zip ${what} ${v} is too large`);
  }
  return Number(v);
}

/** The central directory of a zip archive (ZIP64 included), bounded in size and entries. */
async function readZipDirectory(file: string, src: Source): Promise<Map<string, ZipEntry>> {
  const size = src.size;
  if (size < 22) {
    throw new TorchBinError(file, undefined, `file is ${size} bytes; too short for a zip archive`);
  }
  const tailLen = Math.min(size, 22 + 0xffff);
  const tail = new Uint8Array(tailLen);
  await src.readAt(size - tailLen, tail, "zip end of central directory");
  const tv = new DataView(tail.buffer);
  let eocd = -1;
  for (let i = tailLen - 22; i >= 0; i--) {
    if (tv.getUint32(i, true) === SIG_EOCD && i + 22 + tv.getUint16(i + 20, true) <= tailLen) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) {
    throw new TorchBinError(file, undefined, "no zip end-of-central-directory record");
  }
  let count = tv.getUint16(eocd + 10, true);
  let cdSize = tv.getUint32(eocd + 12, true);
  let cdOffset = tv.getUint32(eocd + 16, true);
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    const loc = eocd - 20;
    if (loc < 0 || tv.getUint32(loc, true) !== SIG_ZIP64_LOCATOR) {
      throw new TorchBinError(file, undefined, "zip64 sizes without a zip64 locator");
    }
    const at = u64(tv, loc + 8, file, "zip64 record offset");
    if (at + 56 > size) {
      throw new TorchBinError(file, undefined, `zip64 record at ${at} runs past the file end`);
    }
    const rec = new Uint8Array(56);
    await src.readAt(at, rec, "zip64 end of central directory");
    const rv = new DataView(rec.buffer);
    if (rv.getUint32(0, true) !== SIG_ZIP64_EOCD) {
      throw new TorchBinError(file, undefined, `no zip64 end-of-central-directory record at ${at}`);
    }
    count = u64(rv, 32, file, "entry count");
    cdSize = u64(rv, 40, file, "central directory size");
    cdOffset = u64(rv, 48, file, "central directory offset");
  }
  if (cdSize > MAX_DIRECTORY_BYTES) {
    throw new TorchBinError(
      file,
      undefined,
      `zip central directory of ${cdSize} bytes is over the ${MAX_DIRECTORY_BYTES}-byte limit`,
    );
  }
  if (cdOffset + cdSize > size) {
    throw new TorchBinError(
      file,
      undefined,
      `zip central directory [${cdOffset}, ${cdOffset + cdSize}) runs past the ${size}-byte file`,
    );
  }
  if (count * 46 > cdSize) {
    throw new TorchBinError(
      file,
      undefined,
      `zip says ${count} entries but its central directory has only ${cdSize} bytes`,
    );
  }
  const cd = new Uint8Array(cdSize);
  await src.readAt(cdOffset, cd, "zip central directory");
  const dv = new DataView(cd.buffer);
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const entries = new Map<string, ZipEntry>();
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cdSize || dv.getUint32(p, true) !== SIG_CENTRAL) {
      throw new TorchBinError(file, undefined, `zip central directory entry ${i} is malformed`);
    }
    const method = dv.getUint16(p + 10, true);
    let compressedSize = dv.getUint32(p + 20, true);
    let usize = dv.getUint32(p + 24, true);
    const nameLen = dv.getUint16(p + 28, true);
    const extraLen = dv.getUint16(p + 30, true);
    const commentLen = dv.getUint16(p + 32, true);
    let localOffset = dv.getUint32(p + 42, true);
    const end = p + 46 + nameLen + extraLen + commentLen;
    if (end > cdSize) {
      throw new TorchBinError(
        file,
        undefined,
        `zip central directory entry ${i} runs past its end`,
      );
    }
    let name: string;
    try {
      name = decoder.decode(cd.subarray(p + 46, p + 46 + nameLen));
    } catch {
      throw new TorchBinError(file, undefined, `zip entry ${i}: name is not UTF-8`);
    }
    // ZIP64 extended information: the 64-bit values of the fields that read 0xffffffff.
    let q = p + 46 + nameLen;
    const extraEnd = q + extraLen;
    while (q + 4 <= extraEnd) {
      const id = dv.getUint16(q, true);
      const len = dv.getUint16(q + 2, true);
      if (q + 4 + len > extraEnd) {
        throw new TorchBinError(file, name, "zip extra field runs past its entry");
      }
      if (id === 0x0001) {
        let r = q + 4;
        const take = (what: string) => {
          if (r + 8 > q + 4 + len) {
            throw new TorchBinError(file, name, `zip64 extra field lacks the ${what}`);
          }
          const v = u64(dv, r, file, what);
          r += 8;
          return v;
        };
        if (usize === 0xffffffff) usize = take("size");
        if (compressedSize === 0xffffffff) compressedSize = take("compressed size");
        if (localOffset === 0xffffffff) localOffset = take("local header offset");
      }
      q += 4 + len;
    }
    if (entries.has(name)) throw new TorchBinError(file, name, "zip entry appears twice");
    entries.set(name, { name, method, compressedSize, size: usize, localOffset });
    p = end;
  }
  return entries;
}

/** Absolute offset of a stored (uncompressed) entry's data, checked against the file. */
async function entryData(file: string, src: Source, e: ZipEntry): Promise<number> {
  if (e.method !== 0 || e.compressedSize !== e.size) {
    throw new TorchBinError(
      file,
      e.name,
      `zip entry is compressed (method ${e.method}); torch.save stores entries uncompressed`,
    );
  }
  if (e.localOffset + 30 > src.size) {
    throw new TorchBinError(file, e.name, `local header at ${e.localOffset} is past the file end`);
  }
  const h = new Uint8Array(30);
  await src.readAt(e.localOffset, h, `local header of ${e.name}`);
  const hv = new DataView(h.buffer);
  if (hv.getUint32(0, true) !== SIG_LOCAL) {
    throw new TorchBinError(file, e.name, `no zip local header at ${e.localOffset}`);
  }
  const start = e.localOffset + 30 + hv.getUint16(26, true) + hv.getUint16(28, true);
  if (start + e.size > src.size) {
    throw new TorchBinError(
      file,
      e.name,
      `data [${start}, ${start + e.size}) runs past the ${src.size}-byte file`,
    );
  }
  return start;
}

// ---------------------------------------------------------------- pickle

class PTuple {
  constructor(readonly items: unknown[]) {}
}
class PList {
  constructor(readonly items: unknown[]) {}
}
class PDict {
  readonly map = new Map<unknown, unknown>();
}
class PGlobal {
  constructor(readonly module: string, readonly name: string) {}
  get full(): string {
    return `${this.module}.${this.name}`;
  }
}
class PStorage {
  constructor(
    readonly key: string,
    /** The storage class, e.g. FloatStorage. */
    readonly type: string,
    readonly numel: number,
    readonly location: string,
  ) {}
  get bytes(): number {
    return this.numel * STORAGE_BYTES[this.type];
  }
}
class PTensor {
  constructor(
    readonly storage: PStorage,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
    /** null: a dtype we do not load (named by `dtypeName`). */
    readonly dtype: PlainDType | null,
    readonly dtypeName: string,
  ) {}
}

/** Bytes per element of each storage class. */
const STORAGE_BYTES: Record<string, number> = {
  FloatStorage: 4,
  HalfStorage: 2,
  BFloat16Storage: 2,
  LongStorage: 8,
  IntStorage: 4,
  CharStorage: 1,
  ByteStorage: 1,
  DoubleStorage: 8,
  ShortStorage: 2,
  BoolStorage: 1,
  ComplexFloatStorage: 8,
  ComplexDoubleStorage: 16,
  UntypedStorage: 1,
};
/** Storage classes torch.save names, by the dtype they hold (null: not one we load). */
const STORAGES: Record<string, PlainDType | null> = {
  FloatStorage: "F32",
  HalfStorage: "F16",
  BFloat16Storage: "BF16",
  LongStorage: "I64",
  IntStorage: "I32",
  CharStorage: "I8",
  ByteStorage: "U8",
  DoubleStorage: null,
  ShortStorage: null,
  BoolStorage: "U8", // one byte per element, 0 or 1
  ComplexFloatStorage: null,
  ComplexDoubleStorage: null,
  UntypedStorage: null, // bytes; the tensor's dtype comes from _rebuild_tensor_v3
};
const DTYPE_OBJECTS: Record<string, PlainDType | null> = {
  float32: "F32",
  float: "F32",
  float16: "F16",
  half: "F16",
  bfloat16: "BF16",
  int64: "I64",
  long: "I64",
  int32: "I32",
  int: "I32",
  int8: "I8",
  uint8: "U8",
  float64: null,
  double: null,
  int16: null,
  bool: "U8",
};
const FUNCTIONS = new Set([
  "collections.OrderedDict",
  "torch._utils._rebuild_tensor_v2",
  "torch._utils._rebuild_tensor_v3",
  "torch._utils._rebuild_parameter",
  "torch._utils._rebuild_parameter_with_state",
]);

function allowedGlobal(module: string, name: string): boolean {
  if (FUNCTIONS.has(`${module}.${name}`)) return true;
  if (module === "torch" && (Object.hasOwn(STORAGES, name) || Object.hasOwn(DTYPE_OBJECTS, name))) {
    return true;
  }
  return module === "torch.storage" && name === "UntypedStorage";
}

function describe(v: unknown): string {
  if (v === null) return "None";
  if (v instanceof PTuple) return `tuple of ${v.items.length}`;
  if (v instanceof PList) return "list";
  if (v instanceof PDict) return "dict";
  if (v instanceof PGlobal) return v.full;
  if (v instanceof PStorage) return "storage";
  if (v instanceof PTensor) return "tensor";
  if (v instanceof Uint8Array) return "bytes";
  return typeof v;
}

/**
 * Runs a torch.save pickle without executing anything: only whitelisted globals, only the calls
 * that rebuild a state dict. Returns the top-level object.
 */
function unpickle(file: string, where: string, data: Uint8Array): unknown {
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const fail = (what: string, w = where): never => {
    throw new TorchBinError(file, w, what);
  };
  const stack: unknown[] = [];
  const marks: number[] = [];
  const memo = new Map<number, unknown>();
  const storages = new Map<string, PStorage>();
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  let p = 0;
  const need = (n: number, op: string) => {
    if (!(n >= 0) || p + n > data.length) fail(`pickle ends inside ${op} at byte ${p}`);
  };
  const pop = (op: string): unknown => {
    const base = marks.length ? marks[marks.length - 1] : 0;
    if (stack.length <= base) fail(`pickle stack underflow at ${op} (byte ${p})`);
    return stack.pop();
  };
  const top = (op: string): unknown => {
    const base = marks.length ? marks[marks.length - 1] : 0;
    if (stack.length <= base) fail(`pickle stack underflow at ${op} (byte ${p})`);
    return stack[stack.length - 1];
  };
  const popMark = (op: string): unknown[] => {
    const m = marks.pop();
    if (m === undefined) fail(`${op} without a MARK (byte ${p})`);
    return stack.splice(m!);
  };
  const int = (v: unknown, what: string): number => {
    if (typeof v !== "number" || !Number.isSafeInteger(v)) {
      fail(`${what}: expected an integer, got ${describe(v)}`);
    }
    return v as number;
  };
  const ints = (v: unknown, what: string): number[] => {
    if (!(v instanceof PTuple || v instanceof PList)) {
      fail(`${what}: expected a tuple of integers, got ${describe(v)}`);
    }
    return (v as PTuple).items.map((x) => int(x, what));
  };
  const text = (n: number, op: string): string => {
    need(n, op);
    try {
      return utf8.decode(data.subarray(p, p += n));
    } catch {
      return fail(`${op} at byte ${p - n} is not UTF-8`);
    }
  };
  const line = (op: string): string => {
    const nl = data.indexOf(0x0a, p);
    if (nl < 0) fail(`pickle ends inside ${op} at byte ${p}`);
    const s = text(nl - p, op);
    p = nl + 1;
    return s;
  };
  const long = (n: number): number => {
    need(n, "LONG");
    if (n > 7) {
      // Only values that fit in 53 bits are of use here.
      const bytes = data.subarray(p, p + n);
      const sign = n > 0 && (bytes[n - 1] & 0x80) ? 0xff : 0;
      if (bytes.subarray(7).some((b) => b !== sign)) fail(`LONG of ${n} bytes is too large`);
    }
    let v = 0n;
    for (let i = Math.min(n, 8) - 1; i >= 0; i--) v = (v << 8n) | BigInt(data[p + i]);
    const bits = BigInt(Math.min(n, 8) * 8);
    if (n > 0 && (data[p + Math.min(n, 8) - 1] & 0x80)) v -= 1n << bits;
    p += n;
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) {
      fail(`LONG ${v} is too large`);
    }
    return Number(v);
  };
  const globalOf = (module: string, name: string): PGlobal => {
    if (!allowedGlobal(module, name)) {
      fail(
        `pickle global ${module}.${name} is not allowed (a torch.save state dict needs only ` +
          "collections.OrderedDict, torch._utils._rebuild_tensor_v2 and torch storages/dtypes); " +
          "nothing was executed",
        `global ${module}.${name}`,
      );
    }
    return new PGlobal(module, name);
  };
  const tensor = (args: unknown[], v3: boolean): PTensor => {
    const [storage, offset, size, stride] = args;
    if (!(storage instanceof PStorage)) {
      return fail(`tensor rebuilt from ${describe(storage)}, expected a storage`);
    }
    let dtype = STORAGES[storage.type];
    let dtypeName = `torch.${storage.type}`;
    if (v3) {
      const d = args[6];
      if (
        !(d instanceof PGlobal) || d.module !== "torch" || !Object.hasOwn(DTYPE_OBJECTS, d.name)
      ) {
        return fail(`_rebuild_tensor_v3: dtype is ${describe(d)}, expected a torch dtype`);
      }
      dtype = DTYPE_OBJECTS[d.name];
      dtypeName = d.full;
    } else if (storage.type === "UntypedStorage") {
      return fail("_rebuild_tensor_v2 of an untyped storage: its dtype is unknown");
    }
    return new PTensor(
      storage,
      int(offset, "storage offset"),
      ints(size, "tensor size"),
      ints(stride, "tensor stride"),
      dtype,
      dtypeName,
    );
  };
  const call = (fn: unknown, args: unknown): unknown => {
    if (!(fn instanceof PGlobal)) return fail(`REDUCE calls ${describe(fn)}, not a global`);
    if (!(args instanceof PTuple)) return fail(`REDUCE of ${fn.full} with ${describe(args)} args`);
    const a = args.items;
    switch (fn.full) {
      case "collections.OrderedDict": {
        const d = new PDict();
        if (a.length === 0) return d;
        if (a.length === 1 && a[0] instanceof PList) {
          for (const kv of a[0].items) {
            if (!(kv instanceof PTuple) || kv.items.length !== 2) {
              fail("OrderedDict(items): bad item");
            }
            setItem(d, (kv as PTuple).items[0], (kv as PTuple).items[1]);
          }
          return d;
        }
        return fail(`OrderedDict called with ${a.length} arguments`);
      }
      case "torch._utils._rebuild_tensor_v2":
        if (a.length !== 6 && a.length !== 7) fail(`_rebuild_tensor_v2 with ${a.length} arguments`);
        return tensor(a, false);
      case "torch._utils._rebuild_tensor_v3":
        if (a.length !== 7 && a.length !== 8) fail(`_rebuild_tensor_v3 with ${a.length} arguments`);
        return tensor(a, true);
      case "torch._utils._rebuild_parameter":
      case "torch._utils._rebuild_parameter_with_state":
        if (!(a[0] instanceof PTensor)) fail(`${fn.name} of ${describe(a[0])}, expected a tensor`);
        return a[0];
      default:
        return fail(`pickle calls ${fn.full}, which is not a function a state dict needs`);
    }
  };
  const setItem = (d: unknown, k: unknown, v: unknown) => {
    if (!(d instanceof PDict)) fail(`SETITEM on ${describe(d)}, expected a dict`);
    if (k !== null && typeof k === "object") fail(`dict key is a ${describe(k)}`);
    (d as PDict).map.set(k, v);
  };
  const persistent = (pid: unknown): PStorage => {
    if (!(pid instanceof PTuple) || pid.items.length !== 5 || pid.items[0] !== "storage") {
      return fail(`persistent id ${describe(pid)} is not ('storage', type, key, location, numel)`);
    }
    const [, type, key, location, numel] = pid.items;
    if (
      !(type instanceof PGlobal) ||
      !((type.module === "torch" || type.module === "torch.storage") &&
        Object.hasOwn(STORAGES, type.name))
    ) {
      return fail(`persistent storage type ${describe(type)} is not a torch storage class`);
    }
    if (typeof key !== "string" || !/^[\w.-]+$/.test(key)) {
      return fail(`persistent storage key ${JSON.stringify(key)} is not a plain name`);
    }
    const n = int(numel, `storage ${key} numel`);
    if (n < 0) fail(`storage ${key} has ${n} elements`);
    const old = storages.get(key);
    if (old) {
      if (old.type !== type.name || old.numel !== n) {
        fail(`storage ${key} is loaded twice with different types or sizes`);
      }
      return old;
    }
    const s = new PStorage(key, type.name, n, typeof location === "string" ? location : "");
    storages.set(key, s);
    return s;
  };

  while (true) {
    need(1, "opcode");
    const op = data[p++];
    switch (op) {
      case 0x80: // PROTO
        need(1, "PROTO");
        if (data[p] < 2 || data[p] > 5) fail(`pickle protocol ${data[p]}; expected 2 to 5`);
        p++;
        break;
      case 0x95: // FRAME
        need(8, "FRAME");
        p += 8;
        break;
      case 0x2e: { // STOP
        const result = pop("STOP");
        return result;
      }
      case 0x28: // MARK
        marks.push(stack.length);
        break;
      case 0x30: // POP
        pop("POP");
        break;
      case 0x31: // POP_MARK
        popMark("POP_MARK");
        break;
      case 0x32: // DUP
        stack.push(top("DUP"));
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88:
        stack.push(true);
        break;
      case 0x89:
        stack.push(false);
        break;
      case 0x4a: // BININT
        need(4, "BININT");
        stack.push(dv.getInt32(p, true));
        p += 4;
        break;
      case 0x4b: // BININT1
        need(1, "BININT1");
        stack.push(data[p++]);
        break;
      case 0x4d: // BININT2
        need(2, "BININT2");
        stack.push(dv.getUint16(p, true));
        p += 2;
        break;
      case 0x8a: // LONG1
        need(1, "LONG1");
        stack.push(long(data[p++]));
        break;
      case 0x8b: { // LONG4
        need(4, "LONG4");
        const n = dv.getInt32(p, true);
        p += 4;
        stack.push(long(n));
        break;
      }
      case 0x47: // BINFLOAT
        need(8, "BINFLOAT");
        stack.push(dv.getFloat64(p, false));
        p += 8;
        break;
      case 0x58: { // BINUNICODE
        need(4, "BINUNICODE");
        const n = dv.getUint32(p, true);
        p += 4;
        stack.push(text(n, "BINUNICODE"));
        break;
      }
      case 0x8c: // SHORT_BINUNICODE
        need(1, "SHORT_BINUNICODE");
        stack.push(text(data[p++], "SHORT_BINUNICODE"));
        break;
      case 0x8d: { // BINUNICODE8
        need(8, "BINUNICODE8");
        const n = u64(dv, p, file, "BINUNICODE8 length");
        p += 8;
        stack.push(text(n, "BINUNICODE8"));
        break;
      }
      case 0x54: // BINSTRING
      case 0x55: { // SHORT_BINSTRING
        const short = op === 0x55;
        need(short ? 1 : 4, "BINSTRING");
        const n = short ? data[p] : dv.getInt32(p, true);
        p += short ? 1 : 4;
        need(n, "BINSTRING");
        stack.push(String.fromCharCode(...data.subarray(p, p += n).slice(0, 4096)));
        break;
      }
      case 0x42: // BINBYTES
      case 0x43: // SHORT_BINBYTES
      case 0x8e: // BINBYTES8
      case 0x96: { // BYTEARRAY8
        const w = op === 0x43 ? 1 : op === 0x42 ? 4 : 8;
        need(w, "BINBYTES");
        const n = w === 1 ? data[p] : w === 4 ? dv.getUint32(p, true) : u64(dv, p, file, "bytes");
        p += w;
        need(n, "BINBYTES");
        stack.push(data.subarray(p, p += n));
        break;
      }
      case 0x29: // EMPTY_TUPLE
        stack.push(new PTuple([]));
        break;
      case 0x74: // TUPLE
        stack.push(new PTuple(popMark("TUPLE")));
        break;
      case 0x85:
      case 0x86:
      case 0x87: { // TUPLE1..3
        const n = op - 0x84;
        const items: unknown[] = [];
        for (let i = 0; i < n; i++) items.unshift(pop("TUPLEn"));
        stack.push(new PTuple(items));
        break;
      }
      case 0x5d: // EMPTY_LIST
      case 0x8f: // EMPTY_SET (a set is only ever filled and passed on)
        stack.push(new PList([]));
        break;
      case 0x6c: // LIST
      case 0x91: { // FROZENSET
        const items = popMark("LIST");
        stack.push(new PList(items));
        break;
      }
      case 0x61: { // APPEND
        const v = pop("APPEND");
        const l = top("APPEND");
        if (!(l instanceof PList)) fail(`APPEND to ${describe(l)}`);
        (l as PList).items.push(v);
        break;
      }
      case 0x65: // APPENDS
      case 0x90: { // ADDITEMS
        const items = popMark("APPENDS");
        const l = top("APPENDS");
        if (!(l instanceof PList)) fail(`APPENDS to ${describe(l)}`);
        for (const v of items) (l as PList).items.push(v);
        break;
      }
      case 0x7d: // EMPTY_DICT
        stack.push(new PDict());
        break;
      case 0x64: { // DICT
        const items = popMark("DICT");
        if (items.length % 2) fail("DICT with an odd number of items");
        const d = new PDict();
        for (let i = 0; i < items.length; i += 2) setItem(d, items[i], items[i + 1]);
        stack.push(d);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop("SETITEM");
        const k = pop("SETITEM");
        setItem(top("SETITEM"), k, v);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark("SETITEMS");
        if (items.length % 2) fail("SETITEMS with an odd number of items");
        const d = top("SETITEMS");
        for (let i = 0; i < items.length; i += 2) setItem(d, items[i], items[i + 1]);
        break;
      }
      case 0x63: { // GLOBAL
        const module = line("GLOBAL");
        const name = line("GLOBAL");
        stack.push(globalOf(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop("STACK_GLOBAL");
        const module = pop("STACK_GLOBAL");
        if (typeof module !== "string" || typeof name !== "string") {
          fail("STACK_GLOBAL of non-strings");
        }
        stack.push(globalOf(module as string, name as string));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop("REDUCE");
        const fn = pop("REDUCE");
        stack.push(call(fn, args));
        break;
      }
      case 0x62: { // BUILD
        const state = pop("BUILD");
        const obj = top("BUILD");
        // OrderedDict state (e.g. a state dict's `_metadata`): attributes we ignore.
        if (!(obj instanceof PDict) || !(state instanceof PDict || state instanceof PTuple)) {
          fail(`BUILD of ${describe(obj)} with ${describe(state)}`);
        }
        break;
      }
      case 0x51: // BINPERSID
        stack.push(persistent(pop("BINPERSID")));
        break;
      case 0x68: // BINGET
      case 0x6a: { // LONG_BINGET
        const w = op === 0x68 ? 1 : 4;
        need(w, "BINGET");
        const i = w === 1 ? data[p] : dv.getUint32(p, true);
        p += w;
        if (!memo.has(i)) fail(`BINGET ${i} of an empty memo slot`);
        stack.push(memo.get(i));
        break;
      }
      case 0x71: // BINPUT
      case 0x72: { // LONG_BINPUT
        const w = op === 0x71 ? 1 : 4;
        need(w, "BINPUT");
        const i = w === 1 ? data[p] : dv.getUint32(p, true);
        p += w;
        memo.set(i, top("BINPUT"));
        break;
      }
      case 0x94: // MEMOIZE
        memo.set(memo.size, top("MEMOIZE"));
        break;
      default:
        fail(
          `pickle opcode 0x${op.toString(16).padStart(2, "0")} at byte ${p - 1} is not one ` +
            "torch.save emits; refused",
        );
    }
  }
}

// ---------------------------------------------------------------- file

const LEGACY_MAGIC = 0x80; // a pickle PROTO opcode: torch.save's pre-1.6 format starts with one

async function parse(file: string, src: Source): Promise<TorchTensorInfo[]> {
  const magic = new Uint8Array(Math.min(4, src.size));
  await src.readAt(0, magic, "magic");
  if (magic.length < 4 || new DataView(magic.buffer).getUint32(0, true) !== SIG_LOCAL) {
    if (magic[0] === LEGACY_MAGIC) {
      throw new TorchBinError(
        file,
        undefined,
        "legacy (pre-1.6, non-zip) torch.save format is not supported; only the zip format " +
          "torch ≥ 1.6 writes (re-save it with torch.save, or use safetensors)",
      );
    }
    throw new TorchBinError(file, undefined, "not a torch.save zip archive (no zip signature)");
  }
  const entries = await readZipDirectory(file, src);
  const pkls = [...entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
  if (pkls.length !== 1) {
    throw new TorchBinError(
      file,
      undefined,
      `expected one <archive>/data.pkl entry, found ${pkls.length}`,
    );
  }
  const prefix = pkls[0].slice(0, -"data.pkl".length);
  const bo = entries.get(`${prefix}byteorder`);
  if (bo) {
    if (bo.size > 16) throw new TorchBinError(file, bo.name, `${bo.size} bytes; expected "little"`);
    const buf = new Uint8Array(bo.size);
    await src.readAt(await entryData(file, src, bo), buf, bo.name);
    const order = new TextDecoder().decode(buf);
    if (order !== "little") {
      throw new TorchBinError(
        file,
        bo.name,
        `byte order ${JSON.stringify(order)}; expected little`,
      );
    }
  }
  const pe = entries.get(pkls[0])!;
  if (pe.size > MAX_PICKLE_BYTES) {
    throw new TorchBinError(
      file,
      pe.name,
      `${pe.size} bytes is over the ${MAX_PICKLE_BYTES}-byte limit`,
    );
  }
  const pkl = new Uint8Array(pe.size);
  await src.readAt(await entryData(file, src, pe), pkl, pe.name);
  const root = unpickle(file, pe.name, pkl);
  if (!(root instanceof PDict)) {
    throw new TorchBinError(file, pe.name, `holds a ${describe(root)}, expected a state dict`);
  }
  const starts = new Map<string, number>();
  const out: TorchTensorInfo[] = [];
  for (const [name, t] of root.map) {
    if (typeof name !== "string") {
      throw new TorchBinError(file, pe.name, `state dict key ${String(name)} is not a string`);
    }
    if (!(t instanceof PTensor)) {
      throw new TorchBinError(file, name, `state dict value is a ${describe(t)}, not a tensor`);
    }
    if (t.dtype === null) {
      throw new TorchBinError(
        file,
        name,
        `dtype ${t.dtypeName} is not supported; expected float32, float16, bfloat16, int64, ` +
          "int32, int8, uint8 or bool",
      );
    }
    const size = DTYPE_SIZE[t.dtype];
    if (t.stride.length !== t.shape.length) {
      throw new TorchBinError(file, name, `size [${t.shape}] but stride [${t.stride}]`);
    }
    let numel = 1;
    for (const d of t.shape) {
      if (d < 0) throw new TorchBinError(file, name, `negative size [${t.shape}]`);
      numel *= d;
      if (numel > Number.MAX_SAFE_INTEGER) throw new TorchBinError(file, name, "size overflows");
    }
    if (numel > 0) {
      let expect = 1;
      for (let i = t.shape.length - 1; i >= 0; i--) {
        if (t.shape[i] !== 1 && t.stride[i] !== expect) {
          throw new TorchBinError(
            file,
            name,
            `tensor is not contiguous (size [${t.shape}], stride [${t.stride}]); only contiguous ` +
              "row-major tensors are supported",
          );
        }
        expect *= t.shape[i];
      }
    }
    const s = t.storage;
    // The offset counts elements of the tensor's dtype (torch's storage_offset).
    const offsetBytes = t.offset * size;
    const storageBytes = s.bytes;
    const nbytes = numel * size;
    if (t.offset < 0 || offsetBytes + nbytes > storageBytes) {
      throw new TorchBinError(
        file,
        name,
        `view [${offsetBytes}, ${offsetBytes + nbytes}) bytes runs past its storage ${s.key} ` +
          `(${storageBytes} bytes)`,
      );
    }
    let start = starts.get(s.key);
    if (start === undefined) {
      const e = entries.get(`${prefix}data/${s.key}`);
      if (!e) {
        throw new TorchBinError(file, name, `storage entry ${prefix}data/${s.key} is missing`);
      }
      if (e.size < storageBytes) {
        throw new TorchBinError(
          file,
          e.name,
          `holds ${e.size} bytes; storage ${s.key} needs ${storageBytes}`,
        );
      }
      start = await entryData(file, src, e);
      starts.set(s.key, start);
    }
    out.push({
      name,
      dtype: t.dtype,
      shape: t.shape,
      offset: start + offsetBytes,
      nbytes,
      storage: s.key,
    });
  }
  return out;
}

/** Whether a weight file's name marks a torch.save checkpoint (`.bin`, `.pt`, `.pth`). */
export function isTorchBinName(file: string): boolean {
  return /\.(bin|pt|pth)$/.test(file);
}

/**
 * An open torch.save checkpoint: its tensors (parsed from data.pkl without executing it) and
 * on-demand ranged reads of single tensors. Reads on one file are serialised, like
 * {@linkcode SafetensorsFile}'s.
 */
export class TorchBinFile {
  /** The path as given to {@linkcode TorchBinFile.open}. */
  readonly path: string;
  /** File size in bytes when it was opened. */
  readonly size: number;
  /** Every tensor, in the state dict's order. */
  readonly tensors: ReadonlyMap<string, TorchTensorInfo>;

  #read: ((pos: number, buf: Uint8Array, what: string) => Promise<void>) | undefined;
  #close: () => void;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(
    path: string,
    size: number,
    tensors: TorchTensorInfo[],
    read: (pos: number, buf: Uint8Array, what: string) => Promise<void>,
    close: () => void,
  ) {
    this.path = path;
    this.size = size;
    this.tensors = new Map(tensors.map((t) => [t.name, t]));
    this.#read = read;
    this.#close = close;
  }

  /** Opens `path` and parses its directory and pickle; throws {@linkcode TorchBinError}. */
  static async open(path: string): Promise<TorchBinFile> {
    const f = await Deno.open(path, { read: true });
    try {
      const size = (await f.stat()).size;
      const readAt = async (pos: number, buf: Uint8Array, what: string) => {
        await f.seek(pos, Deno.SeekMode.Start);
        let done = 0;
        while (done < buf.length) {
          const n = await f.read(buf.subarray(done));
          if (n === null) {
            throw new TorchBinError(
              path,
              what,
              `file ended at byte ${pos + done}, expected ${buf.length} bytes from ${pos}`,
            );
          }
          done += n;
        }
      };
      const tensors = await parse(path, { size, readAt });
      return new TorchBinFile(path, size, tensors, readAt, () => f.close());
    } catch (e) {
      f.close();
      throw e;
    }
  }

  /** Parses an in-memory archive (tests, fuzzing); `name` stands for the file in errors. */
  static async fromBytes(name: string, bytes: Uint8Array): Promise<TorchBinFile> {
    const readAt = (pos: number, buf: Uint8Array, what: string) => {
      if (pos < 0 || pos + buf.length > bytes.length) {
        return Promise.reject(
          new TorchBinError(name, what, `[${pos}, ${pos + buf.length}) is past the end`),
        );
      }
      buf.set(bytes.subarray(pos, pos + buf.length));
      return Promise.resolve();
    };
    const tensors = await parse(name, { size: bytes.length, readAt });
    return new TorchBinFile(name, bytes.length, tensors, readAt, () => {});
  }

  /** The tensor's info; throws {@linkcode TorchBinError} when the file has no such tensor. */
  info(name: string): TorchTensorInfo {
    const t = this.tensors.get(name);
    if (t === undefined) {
      throw new TorchBinError(
        this.path,
        name,
        `no such tensor (the file has ${this.tensors.size})`,
      );
    }
    return t;
  }

  /** Reads one tensor's bytes (exactly its byte range), into `into` when given. */
  read(name: string): Promise<Uint8Array<ArrayBuffer>>;
  read<B extends ArrayBufferLike>(name: string, into: Uint8Array<B>): Promise<Uint8Array<B>>;
  read(name: string, into?: Uint8Array): Promise<Uint8Array> {
    let t: TorchTensorInfo;
    try {
      t = this.info(name);
    } catch (e) {
      return Promise.reject(e);
    }
    if (into !== undefined && into.length < t.nbytes) {
      return Promise.reject(
        new TorchBinError(this.path, name, `buffer holds ${into.length} bytes, needs ${t.nbytes}`),
      );
    }
    const buf = into === undefined ? new Uint8Array(t.nbytes) : into.subarray(0, t.nbytes);
    const run = async () => {
      const read = this.#read;
      if (read === undefined) throw new TorchBinError(this.path, name, "file is closed");
      await read(t.offset, buf, name);
      return buf;
    };
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => {});
    return result;
  }

  /** Closes the file; later reads fail. Safe to call twice. */
  close(): void {
    if (this.#read === undefined) return;
    this.#read = undefined;
    this.#close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
