/**
 * Test helpers for lib/torch_bin.ts: torch.save-shaped zip archives (stored entries, optional
 * ZIP64 records) and state-dict pickles, built byte by byte so tests and the fuzzer can make
 * archives torch would never write (huge sizes, forbidden globals, odd opcodes).
 */

/** One zip entry: its bytes, or only a size (zeros; a sparse hole when written to a file). */
export interface Entry {
  name: string;
  data?: Uint8Array;
  size?: number;
}

/** The pieces of an archive: each chunk's bytes at its offset; zeros elsewhere up to `size`. */
export interface Layout {
  chunks: { offset: number; bytes: Uint8Array }[];
  size: number;
}

const enc = new TextEncoder();

/** Lays out a stored zip; `zip64` writes 0xffffffff sizes/offsets with ZIP64 extra fields. */
export function zipLayout(entries: Entry[], zip64 = false): Layout {
  const chunks: Layout["chunks"] = [];
  const central: Uint8Array[] = [];
  let pos = 0;
  for (const e of entries) {
    const name = enc.encode(e.name);
    const size = e.data?.length ?? e.size ?? 0;
    const local = new Uint8Array(30 + name.length);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(4, 45, true);
    lv.setUint16(12, 0x21, true);
    lv.setUint32(18, Math.min(size, 0xffffffff), true);
    lv.setUint32(22, Math.min(size, 0xffffffff), true);
    lv.setUint16(26, name.length, true);
    local.set(name, 30);
    chunks.push({ offset: pos, bytes: local });
    const at = pos;
    pos += local.length;
    if (e.data) chunks.push({ offset: pos, bytes: e.data });
    pos += size;
    const extra = zip64 ? new Uint8Array(4 + 24) : new Uint8Array(0);
    if (zip64) {
      const ev = new DataView(extra.buffer);
      ev.setUint16(0, 1, true);
      ev.setUint16(2, 24, true);
      ev.setBigUint64(4, BigInt(size), true);
      ev.setBigUint64(12, BigInt(size), true);
      ev.setBigUint64(20, BigInt(at), true);
    }
    const c = new Uint8Array(46 + name.length + extra.length);
    const cv = new DataView(c.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(4, 45, true);
    cv.setUint16(6, 45, true);
    cv.setUint16(14, 0x21, true);
    cv.setUint32(20, zip64 ? 0xffffffff : size, true);
    cv.setUint32(24, zip64 ? 0xffffffff : size, true);
    cv.setUint16(28, name.length, true);
    cv.setUint16(30, extra.length, true);
    cv.setUint32(42, zip64 ? 0xffffffff : at, true);
    c.set(name, 46);
    c.set(extra, 46 + name.length);
    central.push(c);
  }
  const cdOffset = pos;
  const cdSize = central.reduce((n, c) => n + c.length, 0);
  for (const c of central) {
    chunks.push({ offset: pos, bytes: c });
    pos += c.length;
  }
  if (zip64) {
    const rec = new Uint8Array(56 + 20);
    const rv = new DataView(rec.buffer);
    rv.setUint32(0, 0x06064b50, true);
    rv.setBigUint64(4, 44n, true);
    rv.setUint16(12, 45, true);
    rv.setUint16(14, 45, true);
    rv.setBigUint64(24, BigInt(entries.length), true);
    rv.setBigUint64(32, BigInt(entries.length), true);
    rv.setBigUint64(40, BigInt(cdSize), true);
    rv.setBigUint64(48, BigInt(cdOffset), true);
    rv.setUint32(56, 0x07064b50, true);
    rv.setBigUint64(64, BigInt(pos), true);
    rv.setUint32(72, 1, true);
    chunks.push({ offset: pos, bytes: rec });
    pos += rec.length;
  }
  const eocd = new Uint8Array(22);
  const dv = new DataView(eocd.buffer);
  dv.setUint32(0, 0x06054b50, true);
  dv.setUint16(8, zip64 ? 0xffff : entries.length, true);
  dv.setUint16(10, zip64 ? 0xffff : entries.length, true);
  dv.setUint32(12, zip64 ? 0xffffffff : cdSize, true);
  dv.setUint32(16, zip64 ? 0xffffffff : cdOffset, true);
  chunks.push({ offset: pos, bytes: eocd });
  pos += eocd.length;
  return { chunks, size: pos };
}

/** The archive in memory. */
export function zipBytes(entries: Entry[], zip64 = false): Uint8Array {
  const { chunks, size } = zipLayout(entries, zip64);
  const out = new Uint8Array(size);
  for (const c of chunks) out.set(c.bytes, c.offset);
  return out;
}

/** The archive written to `path`; entries given only a size become sparse holes. */
export async function writeZip(path: string, entries: Entry[], zip64 = false): Promise<void> {
  const { chunks, size } = zipLayout(entries, zip64);
  using f = await Deno.open(path, { write: true, create: true, truncate: true });
  for (const c of chunks) {
    await f.seek(c.offset, Deno.SeekMode.Start);
    let done = 0;
    while (done < c.bytes.length) done += await f.write(c.bytes.subarray(done));
  }
  await f.truncate(size);
}

/** A tensor for {@link pickleStateDict}. */
export interface PTensorSpec {
  name: string;
  /** `torch.<storage>`: FloatStorage, HalfStorage, BFloat16Storage, ... */
  storage: string;
  key: string;
  numel: number;
  offset: number;
  shape: number[];
  stride?: number[];
}

/** Pickle opcodes of an integer: BININT when it fits, else LONG1 of 8 bytes. */
export function pint(n: number): number[] {
  if (Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31) {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setInt32(0, n, true);
    return [0x4a, ...b];
  }
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigInt64(0, BigInt(n), true);
  return [0x8a, 8, ...b];
}

/** BINUNICODE of a string. */
export function pstr(s: string): number[] {
  const b = enc.encode(s);
  const n = new Uint8Array(4);
  new DataView(n.buffer).setUint32(0, b.length, true);
  return [0x58, ...n, ...b];
}

/** GLOBAL module.name. */
export function pglobal(module: string, name: string): number[] {
  return [0x63, ...enc.encode(`${module}\n${name}\n`)];
}

/** The protocol-2 pickle torch.save writes for an OrderedDict of tensors. */
export function pickleStateDict(tensors: PTensorSpec[]): Uint8Array {
  const op: number[] = [0x80, 2, ...pglobal("collections", "OrderedDict"), 0x29, 0x52, 0x28];
  for (const t of tensors) {
    const stride = t.stride ??
      t.shape.map((_, i) => t.shape.slice(i + 1).reduce((a, b) => a * b, 1));
    op.push(...pstr(t.name), ...pglobal("torch._utils", "_rebuild_tensor_v2"), 0x28);
    op.push(0x28, ...pstr("storage"), ...pglobal("torch", t.storage), ...pstr(t.key));
    op.push(...pstr("cpu"), ...pint(t.numel), 0x74, 0x51);
    op.push(...pint(t.offset), 0x28, ...t.shape.flatMap(pint), 0x74);
    op.push(0x28, ...stride.flatMap(pint), 0x74, 0x89);
    op.push(...pglobal("collections", "OrderedDict"), 0x29, 0x52, 0x74, 0x52);
  }
  op.push(0x75, 0x2e);
  return new Uint8Array(op);
}

/** A torch.save-shaped archive of one pickle and its storages (`archive/data/<key>`). */
export function torchEntries(pkl: Uint8Array, storages: Record<string, Uint8Array | number>) {
  const entries: Entry[] = [
    { name: "archive/data.pkl", data: pkl },
    { name: "archive/byteorder", data: enc.encode("little") },
  ];
  for (const [key, v] of Object.entries(storages)) {
    entries.push(
      typeof v === "number"
        ? { name: `archive/data/${key}`, size: v }
        : { name: `archive/data/${key}`, data: v },
    );
  }
  entries.push({ name: "archive/version", data: enc.encode("3\n") });
  return entries;
}

/** The entries of a small stored zip, by its central directory (torch.save's local headers
 * carry no sizes: it writes data descriptors). */
export function localEntries(zip: Uint8Array): Map<string, Uint8Array> {
  const dv = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  let eocd = zip.length - 22;
  while (eocd > 0 && dv.getUint32(eocd, true) !== 0x06054b50) eocd--;
  const count = dv.getUint16(eocd + 10, true);
  let p = dv.getUint32(eocd + 16, true);
  const out = new Map<string, Uint8Array>();
  for (let i = 0; i < count; i++) {
    const size = dv.getUint32(p + 24, true);
    const nameLen = dv.getUint16(p + 28, true);
    const name = new TextDecoder().decode(zip.subarray(p + 46, p + 46 + nameLen));
    const local = dv.getUint32(p + 42, true);
    const start = local + 30 + dv.getUint16(local + 26, true) + dv.getUint16(local + 28, true);
    out.set(name, zip.subarray(start, start + size));
    p += 46 + nameLen + dv.getUint16(p + 30, true) + dv.getUint16(p + 32, true);
  }
  return out;
}

const STORAGE_OF: Record<string, string> = {
  F32: "FloatStorage",
  F16: "HalfStorage",
  BF16: "BFloat16Storage",
  I64: "LongStorage",
  I32: "IntStorage",
  I8: "CharStorage",
  U8: "ByteStorage",
};

/** A torch.save-shaped archive of these tensors, one storage each (a test-side writer). */
export function torchSave(
  tensors: { name: string; dtype: string; shape: number[]; data: Uint8Array }[],
): Uint8Array {
  const specs: PTensorSpec[] = [];
  const storages: Record<string, Uint8Array> = {};
  tensors.forEach((t, i) => {
    const storage = STORAGE_OF[t.dtype];
    if (!storage) throw new Error(`${t.name}: no torch storage for ${t.dtype}`);
    const numel = t.shape.reduce((a, b) => a * b, 1);
    specs.push({ name: t.name, storage, key: String(i), numel, offset: 0, shape: t.shape });
    storages[String(i)] = t.data;
  });
  return zipBytes(torchEntries(pickleStateDict(specs), storages));
}
