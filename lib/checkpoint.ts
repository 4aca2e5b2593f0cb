/**
 * Find a checkpoint (local directory or Hugging Face cache snapshot) and split it into one
 * safetensors file per part (embed, each decoder layer, final norm, lm_head) plus a manifest.
 *
 * Every tensor of the checkpoint is accounted for: it goes into a part, is a known unused tensor
 * (a tied duplicate head, a stored rotary table), or is an error naming it. Writes are atomic
 * (temp name → rename) and the manifest is written last, so a split whose manifest matches its
 * source is complete and is reused; anything else is redone. Peak extra memory is one tensor.
 *
 * Under faults: one process at a time writes a split directory (an flock on `<split>/.lock`,
 * released by the kernel when its holder dies, so a killed splitter never leaves a lock to
 * recover); a killed split leaves no manifest and is resumed from `<split>/.partial.json` (the
 * parts finished so far, keyed like the manifest) with its temp files removed; a full disk is a
 * CheckpointError naming the file and the bytes the split needs; a source that changes (size,
 * mtime, or sampled content — see {@link Manifest.source}) before or during a split is never
 * mixed into one.
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { ModelConfig, StorageDType } from "./config.ts";
import {
  bf16ToF32,
  type DType,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  isDType,
  tensorByteSize,
} from "./dtype.ts";
import { CheckpointError } from "./errors.ts";
import { type Family, type Part, type Placement, rowRange } from "./models/family.ts";
import {
  BLOCK,
  type BlockDType,
  dequantize,
  isBlockDType,
  type QuantError,
  quantError,
  quantize,
} from "./quant.ts";
import { SafetensorsFile, SafetensorsWriter, tensorBytes } from "./safetensors.ts";
import { isTorchBinName, TorchBinFile } from "./torch_bin.ts";
import { type GgufCheckpoint, readGgufTensor } from "./gguf_model.ts";

/** Format tag of manifest.json; a different tag means "redo the split". */
export const MANIFEST_FORMAT = "rabbitllm-split/1";

/**
 * Where the tensor data of a part file starts: a multiple of this (the header is padded with
 * spaces). Splits written before this was introduced start anywhere; they still load, with
 * buffered reads where direct I/O needs the alignment.
 */
export const SPLIT_DATA_ALIGN = 4096;

/** One tensor inside a part file. `offset` is relative to the part's data section. */
export interface ManifestTensor {
  name: string;
  dtype: DType;
  shape: number[];
  offset: number;
  nbytes: number;
  /** Quantized at split time: how far the stored blocks are from the source values. */
  quantError?: QuantError;
}

/** One part file of a split. */
export interface ManifestPart {
  /** "embed", "layer.N", "norm" or "lm_head". */
  id: string;
  file: string;
  /** Size of the whole file. */
  bytes: number;
  /** Where tensor data starts in the file (after the safetensors header). */
  dataOffset: number;
  dataBytes: number;
  /** sha256 of the data section. */
  sha256: string;
  tensors: ManifestTensor[];
}

/** manifest.json of a split directory. */
export interface Manifest {
  format: string;
  architecture: string;
  dtype: StorageDType;
  /** The block format matmul weights were quantized to at split time (absent: none). */
  quantize?: BlockDType;
  /**
   * Identity of the source files: a changed checkpoint invalidates the split. `sample` is the
   * sha256 of sampled bytes (the first and last MiB and 8 × 64 KiB evenly between; the whole file
   * when smaller), so a rewrite of the same size whose mtime was restored is caught too unless it
   * changes only bytes outside the samples. Splits written before it existed match on size and
   * mtime alone.
   */
  source: SourceFile[];
  /**
   * sha256 of how every stored tensor was made: its source tensor, the rows it took, and its
   * stored dtype, per part. A split made by a version that placed or transformed tensors
   * differently (or before recipes were recorded) is redone, never reused.
   */
  recipe?: string;
  parts: ManifestPart[];
}

/** One source file of a split: its name in the checkpoint directory and its identity. */
export interface SourceFile {
  file: string;
  size: number;
  mtimeMs: number;
  /** sha256 of sampled bytes; see {@link Manifest.source}. */
  sample?: string;
}

/** The parts of a model in order: embed, each layer, norm, and lm_head unless tied. */
export function partOrder(cfg: ModelConfig): Part[] {
  return [
    { kind: "embed" },
    ...Array.from({ length: cfg.numLayers }, (_, index) => ({ kind: "layer" as const, index })),
    { kind: "norm" },
    ...(cfg.tieWordEmbeddings ? [] : [{ kind: "lm_head" as const }]),
  ];
}

/** The part id used in manifests and file names. */
export function partId(part: Part): string {
  return part.kind === "layer" ? `layer.${part.index}` : part.kind;
}

const STORAGE_TO_DTYPE: Record<StorageDType, DType> = {
  float32: "F32",
  float16: "F16",
  bfloat16: "BF16",
};

function isDir(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function env(name: string): string | undefined {
  if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") return;
  return Deno.env.get(name) || undefined;
}

/** The Hugging Face hub cache directory (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache). */
export function hfHubCache(): string | undefined {
  const hub = env("HF_HUB_CACHE");
  if (hub) return hub;
  const home = env("HF_HOME");
  if (home) return `${home}/hub`;
  const xdg = env("XDG_CACHE_HOME");
  if (xdg) return `${xdg}/huggingface/hub`;
  const user = env("HOME");
  return user ? `${user}/.cache/huggingface/hub` : undefined;
}

/**
 * A local directory holding config.json and the weights: `pathOrRepoId` itself when it is a
 * directory, else the snapshot of `org/name` at `revision` in the Hugging Face cache.
 */
export function findCheckpoint(pathOrRepoId: string, revision = "main"): string {
  if (isDir(pathOrRepoId)) {
    return pathOrRepoId.startsWith("/") ? pathOrRepoId : `${Deno.cwd()}/${pathOrRepoId}`;
  }
  const cache = hfHubCache();
  if (/^[\w.-]+\/[\w.-]+$/.test(pathOrRepoId) && cache) {
    const repo = `${cache}/models--${pathOrRepoId.replace("/", "--")}`;
    let commit = revision;
    if (isFile(`${repo}/refs/${revision}`)) {
      commit = Deno.readTextFileSync(`${repo}/refs/${revision}`).trim();
    }
    const snap = `${repo}/snapshots/${commit}`;
    if (isDir(snap)) return snap;
    throw new CheckpointError(
      pathOrRepoId,
      `not a local directory and not in the Hugging Face cache (${repo}, revision ${revision})`,
    );
  }
  throw new CheckpointError(pathOrRepoId, "no such directory");
}

/** A weight shard: a safetensors file, or a torch.save `.bin` (lib/torch_bin.ts). */
export type Shard = SafetensorsFile | TorchBinFile;

/** Opens a shard by its name: `*.bin` / `*.pt` / `*.pth` as torch.save zips, else safetensors. */
export function openShard(path: string): Promise<Shard> {
  return isTorchBinName(path) ? TorchBinFile.open(path) : SafetensorsFile.open(path);
}

/** The weight map of a sharded checkpoint's index, its shards checked to exist. */
async function readIndex(
  dir: string,
  index: string,
): Promise<{ files: string[]; weightMap: Map<string, string> }> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await Deno.readTextFile(index));
  } catch (e) {
    throw new CheckpointError(index, `invalid JSON: ${(e as Error).message}`, { cause: e });
  }
  const map = (parsed as { weight_map?: unknown })?.weight_map;
  if (typeof map !== "object" || map === null || Array.isArray(map)) {
    throw new CheckpointError(index, "weight_map: expected an object of tensor name → file");
  }
  const weightMap = new Map<string, string>();
  for (const [name, file] of Object.entries(map)) {
    if (typeof file !== "string" || file.includes("/") || file.includes("\\")) {
      throw new CheckpointError(
        index,
        `weight_map.${name}: expected a file name, got ${JSON.stringify(file)}`,
      );
    }
    weightMap.set(name, file);
  }
  const files = [...new Set(weightMap.values())].sort();
  for (const f of files) {
    if (!isFile(`${dir}/${f}`)) {
      throw new CheckpointError(`${dir}/${f}`, `shard named by ${index} is missing`);
    }
  }
  return { files, weightMap };
}

/**
 * The weight files of a checkpoint directory, with the tensor → file map of a sharded one:
 * safetensors (`model.safetensors.index.json`, `model.safetensors`) when there are any, else
 * torch.save checkpoints (`pytorch_model.bin.index.json`, `pytorch_model.bin`).
 */
export async function listShards(
  dir: string,
): Promise<{ files: string[]; weightMap: Map<string, string> | null }> {
  for (const [index, single] of [SAFETENSORS_FILES, TORCH_BIN_FILES]) {
    if (isFile(`${dir}/${index}`)) return await readIndex(dir, `${dir}/${index}`);
    if (isFile(`${dir}/${single}`)) return { files: [single], weightMap: null };
  }
  throw new CheckpointError(
    dir,
    "no model.safetensors, model.safetensors.index.json, pytorch_model.bin or " +
      "pytorch_model.bin.index.json",
  );
}

const SAFETENSORS_FILES = ["model.safetensors.index.json", "model.safetensors"] as const;
const TORCH_BIN_FILES = ["pytorch_model.bin.index.json", "pytorch_model.bin"] as const;

/** Options of {@link splitCheckpoint}. */
export interface SplitOptions {
  /** Where to write the split; default `<checkpoint>/rabbitllm_split_<dtype>`. */
  layerShardsSavingPath?: string;
  /** Storage dtype of the split. */
  dtype: StorageDType;
  /**
   * Quantize every matmul weight (and the embedding table) whose rows hold whole blocks to this
   * block format; norms, biases and the rest stay in `dtype`. The manifest records each
   * quantized tensor's error.
   */
  quantize?: BlockDType;
  /** Called with (bytesDone, bytesTotal) while writing. */
  onProgress?: (done: number, total: number) => void;
}

/** Result of {@link splitCheckpoint}. */
export interface Split {
  dir: string;
  manifest: Manifest;
  /** True when an existing complete split was reused. */
  reused: boolean;
}

/** One tensor of the source checkpoint, placed in a part under its local name. */
interface SourceTensor {
  /** The file it is read from (named in errors). */
  path: string;
  /** Its name in the checkpoint. */
  name: string;
  local: string;
  dtype: DType;
  shape: number[];
  nbytes: number;
  read(): Promise<Uint8Array>;
  /** How it is derived from the checkpoint tensor (rows taken, normalized), for the recipe. */
  derived?: { rows?: readonly number[]; unitRows?: boolean };
}

/** A checkpoint tensor before placement. */
type Unplaced = Omit<SourceTensor, "local">;

/** A split's manifest.json if it is one — every field of the right type and in range — else null. */
async function readManifest(path: string): Promise<Manifest | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    return null;
  }
  return parseManifest(text);
}

const isCount = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0;
const isName = (x: unknown): x is string =>
  typeof x === "string" && x.length > 0 && x.length < 4096 && !/[/\\\0]|^\.\.?$/.test(x);

/**
 * manifest.json as text → the manifest, or null when anything is off (not JSON, a field missing or
 * of the wrong type, a file name with a path in it, a tensor outside its part's data): the split is
 * then redone, never used. A manifest that passes is safe for the loader to trust.
 */
export function parseManifest(text: string): Manifest | null {
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch {
    return null;
  }
  const obj = (x: unknown): x is Record<string, unknown> =>
    typeof x === "object" && x !== null && !Array.isArray(x);
  if (!obj(m) || m.format !== MANIFEST_FORMAT || typeof m.architecture !== "string") return null;
  if (!["float32", "float16", "bfloat16"].includes(m.dtype as string)) return null;
  if (m.quantize !== undefined && !isBlockDType(m.quantize)) return null;
  if (!Array.isArray(m.source) || !Array.isArray(m.parts)) return null;
  if (m.recipe !== undefined && typeof m.recipe !== "string") return null;
  for (const s of m.source) {
    if (!obj(s) || !isName(s.file) || !isCount(s.size) || typeof s.mtimeMs !== "number") {
      return null;
    }
    if (s.sample !== undefined && typeof s.sample !== "string") return null;
  }
  const ids = new Set<string>();
  for (const p of m.parts) {
    if (!obj(p) || typeof p.id !== "string" || ids.has(p.id) || !isName(p.file)) return null;
    ids.add(p.id);
    if (!isCount(p.bytes) || !isCount(p.dataOffset) || !isCount(p.dataBytes)) return null;
    if (p.dataOffset + p.dataBytes !== p.bytes || typeof p.sha256 !== "string") return null;
    if (!Array.isArray(p.tensors)) return null;
    for (const t of p.tensors) {
      if (!obj(t) || typeof t.name !== "string" || !isDType(t.dtype)) return null;
      if (!Array.isArray(t.shape) || t.shape.length > 8 || !t.shape.every(isCount)) return null;
      if (!isCount(t.offset) || !isCount(t.nbytes) || t.offset + t.nbytes > p.dataBytes) {
        return null;
      }
      let size: number;
      try {
        size = tensorByteSize(t.dtype, t.shape as number[]);
      } catch {
        return null; // a block format whose rows are not whole blocks
      }
      if (size !== t.nbytes) return null;
    }
  }
  return m as unknown as Manifest;
}

function sameSource(a: Manifest["source"], b: Manifest["source"]): boolean {
  return Array.isArray(a) && a.length === b.length &&
    a.every((s, i) =>
      typeof s === "object" && s !== null && s.file === b[i].file && s.size === b[i].size &&
      s.mtimeMs === b[i].mtimeMs &&
      (s.sample === undefined || b[i].sample === undefined || s.sample === b[i].sample)
    );
}

const SAMPLE_EDGE = 1 << 20;
const SAMPLE_MID = 64 << 10;
const SAMPLE_COUNT = 8;

/** sha256 of the first and last MiB of a file and 8 × 64 KiB evenly between (all of a small one). */
async function sampleHash(path: string, size: number): Promise<string> {
  const ranges: [number, number][] = [];
  if (size <= 2 * SAMPLE_EDGE + SAMPLE_COUNT * SAMPLE_MID) ranges.push([0, size]);
  else {
    ranges.push([0, SAMPLE_EDGE]);
    const span = size - 2 * SAMPLE_EDGE - SAMPLE_MID;
    for (let i = 1; i <= SAMPLE_COUNT; i++) {
      ranges.push([SAMPLE_EDGE + Math.floor((span * i) / (SAMPLE_COUNT + 1)), SAMPLE_MID]);
    }
    ranges.push([size - SAMPLE_EDGE, SAMPLE_EDGE]);
  }
  const hash = createHash("sha256");
  using f = await Deno.open(path, { read: true });
  for (const [offset, length] of ranges) {
    const buf = new Uint8Array(length);
    await f.seek(offset, Deno.SeekMode.Start);
    for (let got = 0; got < length;) {
      const n = await f.read(buf.subarray(got));
      if (n === null) {
        throw new CheckpointError(path, `changed while being read (shorter than ${size} bytes)`);
      }
      got += n;
    }
    hash.update(buf);
  }
  return hash.digest("hex");
}

/** The identity of each source file (`dir/<file>`): size, mtime and sampled content. */
async function sourceIdentity(dir: string, files: string[]): Promise<SourceFile[]> {
  const out: SourceFile[] = [];
  for (const file of files) {
    const st = await Deno.stat(`${dir}/${file}`);
    const sample = await sampleHash(`${dir}/${file}`, st.size);
    out.push({ file, size: st.size, mtimeMs: st.mtime?.getTime() ?? 0, sample });
  }
  return out;
}

/** What a split is keyed on besides its source: a manifest (or journal) of another is redone. */
interface SplitKey {
  /** The part ids the model has, in order. */
  parts: string[];
  architecture: string;
  dtype: StorageDType;
  quantize?: BlockDType;
  /** {@link Manifest.recipe} of the split this code writes. */
  recipe: string;
}

function sameKey(m: Partial<Manifest> | null, key: SplitKey, source: SourceFile[]): boolean {
  return !!m && m.format === MANIFEST_FORMAT && m.dtype === key.dtype &&
    m.quantize === key.quantize && m.architecture === key.architecture &&
    m.recipe === key.recipe &&
    Array.isArray(m.parts) && sameSource(m.source ?? [], source);
}

/**
 * The split in `out` when it is complete and of this source and key: its parts exactly the ones
 * the model has, and each part file's header saying what the manifest says (names, dtypes,
 * shapes, offsets) — a manifest that disagrees with its files is redone, never loaded.
 */
async function reusable(
  out: string,
  key: SplitKey,
  source: SourceFile[],
): Promise<Manifest | null> {
  const old = await readManifest(`${out}/manifest.json`);
  if (!old || !sameKey(old, key, source) || !splitIsComplete(out, old)) return null;
  if (old.parts.map((p) => p.id).join(",") !== key.parts.join(",")) return null;
  for (const p of old.parts) if (!(await partAgrees(out, p))) return null;
  return old;
}

/** Whether a part file's safetensors header holds exactly the manifest's tensors. */
async function partAgrees(out: string, p: ManifestPart): Promise<boolean> {
  let f: SafetensorsFile;
  try {
    f = await SafetensorsFile.open(`${out}/${p.file}`);
  } catch {
    return false;
  }
  try {
    if (f.dataStart !== p.dataOffset || f.tensors.size !== p.tensors.length) return false;
    return p.tensors.every((t) => {
      const h = f.tensors.get(t.name);
      return !!h && h.dtype === t.dtype && h.shape.join(",") === t.shape.join(",") &&
        h.offset === p.dataOffset + t.offset && h.nbytes === t.nbytes;
    });
  } finally {
    f.close();
  }
}

const LOCK = ".lock";
const JOURNAL = ".partial.json";
/** Temp names of SafetensorsWriter (`.tmp-<base36>`) and of the manifest/journal (`.tmp-<uuid>`). */
const TEMP = /\.(safetensors|json)\.tmp-[0-9a-z-]+$/;

/**
 * Takes the split directory's lock (an flock on `<out>/.lock`, held until the returned release;
 * the kernel drops it when the holder dies, so a killed splitter leaves nothing to recover).
 * Says so on stderr when it waits over a second for another process.
 */
async function lockSplit(out: string): Promise<() => void> {
  const path = `${out}/${LOCK}`;
  for (;;) {
    const f = await Deno.open(path, { read: true, write: true, create: true });
    const timer = setTimeout(() => {
      let who = "another process";
      try {
        const pid = Deno.readTextFileSync(path).trim();
        if (/^\d+$/.test(pid)) who = `process ${pid}`;
      } catch { /* gone: about to be ours */ }
      console.error(`rabbitllm: ${out}: waiting for ${who} splitting into it`);
    }, 1000);
    try {
      await f.lock(true);
    } catch (e) {
      f.close();
      throw e;
    } finally {
      clearTimeout(timer);
    }
    // A holder removes the file before releasing it: lock the file that is at the path now.
    let current = false;
    try {
      current = (await Deno.stat(path)).ino === (await f.stat()).ino;
    } catch { /* removed */ }
    if (!current) {
      f.close();
      continue;
    }
    try {
      await f.truncate(0);
      await f.write(new TextEncoder().encode(`${Deno.pid}\n`));
    } catch { /* the pid is for people; a full disk must not stop the split from saying so */ }
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      try {
        Deno.removeSync(path);
      } catch { /* already gone */ }
      f.close();
    };
  }
}

/**
 * Reuses the split in `out` when complete and of this source; else, holding its lock, checks
 * again (another process may just have written it), removes temp files left by a killed split
 * and writes it with `write`, resuming from the journal when it matches.
 */
async function splitOrReuse(
  out: string,
  key: SplitKey,
  source: SourceFile[],
  write: (resume: ManifestPart[]) => Promise<Manifest>,
): Promise<Split> {
  const done = await reusable(out, key, source);
  if (done) {
    // A splitter killed between its manifest and removing its journal left the journal: tidy.
    await Deno.remove(`${out}/${JOURNAL}`).catch(() => {});
    return { dir: out, manifest: done, reused: true };
  }
  const created = fileSize(out) < 0;
  try {
    await Deno.mkdir(out, { recursive: true });
  } catch (e) {
    throw new CheckpointError(out, `cannot create the split directory: ${(e as Error).message}`, {
      cause: e,
    });
  }
  const release = await lockSplit(out);
  try {
    const now = await reusable(out, key, source);
    if (now) return { dir: out, manifest: now, reused: true };
    for await (const e of Deno.readDir(out)) {
      if (e.isFile && TEMP.test(e.name)) await Deno.remove(`${out}/${e.name}`).catch(() => {});
    }
    const journal = await readManifest(`${out}/${JOURNAL}`); // the manifest's format, checked alike
    const resume = sameKey(journal, key, source) ? journal!.parts : [];
    return { dir: out, manifest: await write(resume), reused: false };
  } catch (e) {
    release();
    // An invalid checkpoint leaves no empty split directory behind.
    if (created) await Deno.remove(out).catch(() => {});
    throw e;
  } finally {
    release();
  }
}

function splitIsComplete(dir: string, m: Manifest): boolean {
  return m.parts.every((p) => {
    try {
      return Deno.statSync(`${dir}/${p.file}`).size === p.bytes;
    } catch {
      return false;
    }
  });
}

function convert(data: Uint8Array, from: DType, to: DType, where: string): Uint8Array {
  if (from === to) return data;
  const u16 = () => new Uint16Array(data.buffer, data.byteOffset, data.byteLength / 2);
  let f32: Float32Array;
  if (from === "F32") f32 = new Float32Array(data.buffer, data.byteOffset, data.byteLength / 4);
  else if (from === "F16") f32 = f16ToF32(u16());
  else if (from === "BF16") f32 = bf16ToF32(u16());
  else throw new CheckpointError(where, `dtype ${from}; expected a float tensor (F32, F16, BF16)`);
  const out = to === "F32" ? f32 : to === "F16" ? f32ToF16(f32) : f32ToBf16(f32);
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/**
 * Splits the checkpoint in `dir` into per-part files, or reuses a complete split of the same
 * source. Validates every tensor against the family's expected names and shapes.
 */
export async function splitCheckpoint(
  dir: string,
  family: Family,
  cfg: ModelConfig,
  opts: SplitOptions,
): Promise<Split> {
  const suffix = opts.quantize ? `_${opts.quantize.toLowerCase()}` : "";
  const out = opts.layerShardsSavingPath ?? `${dir}/rabbitllm_split_${opts.dtype}${suffix}`;
  const { files, weightMap } = await listShards(dir);
  const source = await sourceIdentity(dir, files);
  const shards: Shard[] = [];
  try {
    // Headers only: what goes where (and so the recipe) is known before any data is read.
    for (const f of files) shards.push(await openShard(`${dir}/${f}`));
    const parts = assignTensors(dir, safetensorsSources(dir, shards, weightMap), family, cfg);
    const target = STORAGE_TO_DTYPE[opts.dtype];
    const targets = new Map([...parts].map(([id, tensors]) => {
      const blocks = opts.quantize ? quantizedLocals(family, cfg, id, opts.quantize) : new Map();
      return [id, tensors.map((t): DType => blocks.get(t.local) ?? target)];
    }));
    return await splitPlaced(
      out,
      cfg,
      opts,
      parts,
      targets,
      source,
      () => checkSource(dir, files, source),
    );
  } finally {
    for (const s of shards) s.close();
  }
}

/** {@link Manifest.recipe}: every stored tensor's source, derivation and stored dtype. */
function recipeOf(parts: Map<string, SourceTensor[]>, targets: Map<string, DType[]>): string {
  const hash = createHash("sha256");
  hash.update(`recipe 1\n`);
  for (const [id, tensors] of parts) {
    hash.update(`part ${id}\n`);
    for (const [i, t] of tensors.entries()) {
      const d = t.derived;
      hash.update(
        `${t.local} <- ${t.name} ${t.dtype} [${t.shape}] -> ${targets.get(id)![i]}` +
          (d?.rows ? ` rows ${d.rows.join(",")}` : "") + (d?.unitRows ? " unit rows" : "") + "\n",
      );
    }
  }
  return hash.digest("hex");
}

/** Throws when a source file changed since `source` was taken (before the manifest is written). */
async function checkSource(dir: string, files: string[], source: SourceFile[]): Promise<void> {
  let now: SourceFile[] | null = null;
  try {
    now = await sourceIdentity(dir, files);
  } catch { /* removed or shrunk: changed */ }
  const i = source.findIndex((s, i) =>
    !now || s.size !== now[i].size || s.mtimeMs !== now[i].mtimeMs || s.sample !== now[i].sample
  );
  if (i >= 0) {
    throw new CheckpointError(
      `${dir}/${source[i].file}`,
      "changed while it was being split; the split was not finished (run again to split the new file)",
    );
  }
}

function isNoSpace(e: unknown): boolean {
  const code = (x: unknown) => (x as { code?: unknown } | null)?.code;
  return code(e) === "ENOSPC" || code((e as { cause?: unknown } | null)?.cause) === "ENOSPC";
}

/**
 * Writes every part not already finished (`resume`: the journal's parts, reused in order while
 * their files have their sizes), journaling each, then checks the source is unchanged and writes
 * the manifest (last, atomically: a split without one is redone or resumed). A full disk is a
 * CheckpointError naming the file and the bytes the split needs.
 */
async function writeSplit(
  out: string,
  parts: Map<string, SourceTensor[]>,
  key: SplitKey,
  source: Manifest["source"],
  resume: ManifestPart[],
  opts: SplitOptions,
  targetsOf: (id: string, tensors: SourceTensor[]) => DType[],
  checkSource: () => Promise<void>,
): Promise<Manifest> {
  const manifestPath = `${out}/manifest.json`;
  await Deno.remove(manifestPath).catch(() => {});
  const total = [...parts.values()].flat().reduce((s, t) => s + t.nbytes, 0);
  const targets = new Map([...parts].map(([id, ts]) => [id, targetsOf(id, ts)]));
  // What the split takes on disk: the data, and a header page per part (at least).
  const need = [...parts].reduce(
    (s, [id, ts]) =>
      s + SPLIT_DATA_ALIGN +
      ts.reduce((n, t, i) => n + tensorBytes(targets.get(id)![i], t.shape), 0),
    0,
  );
  const head = {
    format: MANIFEST_FORMAT,
    architecture: key.architecture,
    dtype: key.dtype,
    ...(key.quantize ? { quantize: key.quantize } : {}),
    source,
    recipe: key.recipe,
  };
  let done = 0;
  let written = 0;
  let current = out;
  const manifestParts: ManifestPart[] = [];
  try {
    for (const [id, tensors] of parts) {
      const prev = resume[manifestParts.length];
      if (
        typeof prev === "object" && prev !== null && prev.id === id &&
        prev.file === `${id}.safetensors` && typeof prev.sha256 === "string" &&
        Array.isArray(prev.tensors) && fileSize(`${out}/${prev.file}`) === prev.bytes
      ) {
        manifestParts.push(prev);
        done += tensors.reduce((s, t) => s + t.nbytes, 0);
        written += prev.bytes;
        opts.onProgress?.(done, total);
        continue;
      }
      resume = []; // from the first part redone on, everything is
      current = `${out}/${id}.safetensors`;
      const part = await writePart(out, id, tensors, targets.get(id)!, (n) => {
        done += n;
        opts.onProgress?.(done, total);
      });
      manifestParts.push(part);
      written += part.bytes;
      current = `${out}/${JOURNAL}`;
      await writeAtomic(current, JSON.stringify({ ...head, parts: manifestParts }));
    }
    await checkSource();
    const manifest: Manifest = { ...head, parts: manifestParts };
    current = manifestPath;
    await writeAtomic(manifestPath, JSON.stringify(manifest, null, 1));
    await Deno.remove(`${out}/${JOURNAL}`).catch(() => {});
    return manifest;
  } catch (e) {
    if (!isNoSpace(e)) throw e;
    throw new CheckpointError(
      current,
      `no space left on device: the split needs about ${need} bytes in ${out} ` +
        `(${written} written in ${manifestParts.length} finished parts, kept to resume: ` +
        `free space and run again, or remove ${out})`,
      { cause: e },
    );
  }
}

function fileSize(path: string): number {
  try {
    return Deno.statSync(path).size;
  } catch {
    return -1;
  }
}

/** Writes `text` to a temp name, flushes it and renames it to `path`; no temp is left on error. */
async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${crypto.randomUUID()}`;
  try {
    using f = await Deno.open(tmp, { write: true, createNew: true });
    const data = new TextEncoder().encode(text);
    for (let off = 0; off < data.length;) off += await f.write(data.subarray(off));
    await f.syncData();
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/**
 * Splits a GGUF file (lib/gguf_model.ts) like a safetensors checkpoint: every tensor keeps its
 * GGUF type — blocks are copied as they are, never requantized — with llama.cpp's q/k row
 * permutation and Gemma's stored 1 + w undone. The split goes to
 * `<dir of the file>/rabbitllm_split_<file name without .gguf>` unless told otherwise.
 */
export async function splitGguf(
  g: GgufCheckpoint,
  family: Family,
  cfg: ModelConfig,
  opts: Omit<SplitOptions, "quantize">,
): Promise<Split> {
  const slash = g.file.lastIndexOf("/");
  const base = g.file.slice(slash + 1).replace(/\.gguf$/i, "");
  const out = opts.layerShardsSavingPath ?? `${g.file.slice(0, slash)}/rabbitllm_split_${base}`;
  const srcDir = g.file.slice(0, slash);
  const files = [g.file.slice(slash + 1)];
  const source = await sourceIdentity(srcDir, files);
  using f = await Deno.open(g.file, { read: true });
  const sources: Unplaced[] = g.tensors.map((t) => ({
    path: g.file,
    name: t.gguf === t.name ? t.name : `${t.name} (from ${t.gguf})`,
    dtype: t.dtype,
    shape: t.shape,
    nbytes: t.nbytes,
    read: () => readGgufTensor(f, t),
  }));
  // Placement is by the Hugging Face name; errors name the GGUF tensor too.
  const byHf = sources.map((s, i) => ({ ...s, hf: g.tensors[i].name }));
  const parts = assignTensors(g.file, byHf, family, cfg, "the GGUF metadata");
  const targets = new Map([...parts].map(([id, ts]) => [id, ts.map((t) => t.dtype)]));
  return await splitPlaced(
    out,
    cfg,
    opts,
    parts,
    targets,
    source,
    () => checkSource(srcDir, files, source),
  );
}

/**
 * The split of placed tensors stored as `targets` says: reused when `out` holds a complete one
 * of this source and recipe, else written (resuming a journal of the same key).
 */
function splitPlaced(
  out: string,
  cfg: ModelConfig,
  opts: SplitOptions,
  parts: Map<string, SourceTensor[]>,
  targets: Map<string, DType[]>,
  source: SourceFile[],
  checkSource: () => Promise<void>,
): Promise<Split> {
  const key: SplitKey = {
    parts: partOrder(cfg).map(partId),
    architecture: cfg.architecture,
    dtype: opts.dtype,
    ...(opts.quantize ? { quantize: opts.quantize } : {}),
    recipe: recipeOf(parts, targets),
  };
  return splitOrReuse(
    out,
    key,
    source,
    (resume) =>
      writeSplit(out, parts, key, source, resume, opts, (id) => targets.get(id)!, checkSource),
  );
}

/** The tensors of the shards (safetensors or torch .bin), checked against the index's weight map. */
function safetensorsSources(
  dir: string,
  shards: Shard[],
  weightMap: Map<string, string> | null,
): (Unplaced & { hf: string })[] {
  const out: (Unplaced & { hf: string })[] = [];
  for (const shard of shards) {
    const shardName = shard.path.slice(shard.path.lastIndexOf("/") + 1);
    for (const [name, info] of shard.tensors) {
      if (weightMap && weightMap.get(name) !== shardName) {
        throw new CheckpointError(
          shard.path,
          `tensor ${name} is not mapped to this shard by ${
            isTorchBinName(shardName) ? TORCH_BIN_FILES[0] : SAFETENSORS_FILES[0]
          }`,
        );
      }
      out.push({
        path: shard.path,
        name,
        hf: name,
        dtype: info.dtype,
        shape: info.shape,
        nbytes: info.nbytes,
        read: () => shard.read(name),
      });
    }
  }
  if (weightMap) {
    const seen = new Set(out.map((t) => t.name));
    for (const name of weightMap.keys()) {
      if (!seen.has(name)) {
        throw new CheckpointError(
          `${dir}/${weightMap.get(name)}`,
          `tensor ${name} listed in the index is missing`,
        );
      }
    }
  }
  return out;
}

/**
 * The name a checkpoint gives the tensor `local` of `part` (the one a user greps for), when the
 * family places the usual Hugging Face name there; else null.
 */
function checkpointName(family: Family, cfg: ModelConfig, part: Part, local: string) {
  const candidates = part.kind === "layer"
    ? [`model.layers.${part.index}.${local}`]
    : part.kind === "embed"
    ? [`model.embed_tokens.${local}`]
    : part.kind === "norm"
    ? [`model.norm.${local}`, `model.final_layernorm.${local}`]
    : [`lm_head.${local}`];
  return candidates.find((name) =>
    placements(family, name, cfg)?.some((p) =>
      p.part && partId(p.part) === partId(part) && p.local === local
    )
  ) ?? null;
}

/** Every place the family puts a checkpoint tensor (fused tensors have several), or undefined. */
export function placements(
  family: Family,
  name: string,
  cfg: ModelConfig,
): readonly Placement[] | undefined {
  const fused = family.placeFused?.(name, cfg);
  if (fused) return fused;
  const p = family.place(name, cfg);
  return p === undefined ? undefined : [p];
}

/**
 * `t` as the local tensor of placement `pl`: the whole tensor, or the rows it takes (fused
 * tensors; the source is read once for all its placements), unit-normalized when asked.
 */
function placed(
  t: Unplaced,
  pl: Placement,
  siblings: number,
  shared: { data?: Promise<Uint8Array>; left: number },
): SourceTensor {
  if (!pl.rows && !pl.unitRows) return { ...t, local: pl.local };
  const n = t.shape[0] ?? 0;
  const rowBytes = n > 0 ? t.nbytes / n : 0;
  const rows = pl.rows ?? rowRange(0, n);
  for (const r of rows) {
    if (!Number.isInteger(r) || r < 0 || r >= n || !Number.isInteger(rowBytes)) {
      throw new CheckpointError(
        t.path,
        `tensor ${t.name} has shape [${t.shape}]: row ${r} (for ${pl.local}) does not exist`,
      );
    }
  }
  shared.left = siblings;
  return {
    ...t,
    local: pl.local,
    shape: [rows.length, ...t.shape.slice(1)],
    nbytes: rows.length * rowBytes,
    derived: { rows: pl.rows, unitRows: pl.unitRows },
    read: async () => {
      shared.data ??= t.read();
      const all = await shared.data;
      if (--shared.left <= 0) shared.data = undefined; // the last sibling lets it go
      const out = new Uint8Array(rows.length * rowBytes);
      rows.forEach((r, i) => out.set(all.subarray(r * rowBytes, (r + 1) * rowBytes), i * rowBytes));
      return pl.unitRows ? unitRows(out, t.dtype, rows.length, `${t.path}: ${t.name}`) : out;
    },
  };
}

/** Each of `n` rows scaled to unit L2 norm (torch's F.normalize, eps 1e-12), in `dtype`. */
function unitRows(data: Uint8Array, dtype: DType, n: number, where: string): Uint8Array {
  const f = convert(data, dtype, "F32", where).slice();
  const x = new Float32Array(f.buffer, f.byteOffset, f.byteLength / 4);
  const k = x.length / n;
  for (let r = 0; r < n; r++) {
    const row = x.subarray(r * k, (r + 1) * k);
    let ss = 0;
    for (const v of row) ss += v * v;
    const norm = Math.max(Math.fround(Math.sqrt(ss)), 1e-12);
    for (let i = 0; i < k; i++) row[i] = Math.fround(row[i] / norm);
  }
  return convert(new Uint8Array(x.buffer), "F32", dtype, where);
}

/** Places every tensor of the shards into parts (in model order) and validates names/shapes. */
function assignTensors(
  dir: string,
  sources: (Unplaced & { hf: string })[],
  family: Family,
  cfg: ModelConfig,
  configSource = "config.json",
): Map<string, SourceTensor[]> {
  const order = partOrder(cfg);
  const parts = new Map<string, SourceTensor[]>(order.map((p) => [partId(p), []]));
  const seen = new Set<string>();
  for (const src of sources) {
    const { hf, ...t } = src;
    if (seen.has(hf)) throw new CheckpointError(t.path, `tensor ${t.name} appears twice`);
    seen.add(hf);
    const where = placements(family, hf, cfg);
    if (!where) {
      throw new CheckpointError(
        t.path,
        `unknown tensor ${t.name} for ${cfg.architecture} with ${cfg.numLayers} layers`,
      );
    }
    const used = where.filter((pl) => pl.part);
    const shared = { left: 0 };
    for (const pl of used) {
      parts.get(partId(pl.part!))!.push(placed(t, pl, used.length, shared));
    }
  }
  for (const part of order) {
    const have = parts.get(partId(part))!;
    const byLocal = new Map(have.map((t) => [t.local, t]));
    const expected = family.expected(part, cfg);
    for (const e of expected) {
      const t = byLocal.get(e.local);
      if (!t) {
        throw new CheckpointError(
          dir,
          `missing tensor ${
            checkpointName(family, cfg, part, e.local) ?? `${e.local} of part ${partId(part)}`
          } (${cfg.architecture})`,
        );
      }
      if (t.shape.join(",") !== e.shape.join(",")) {
        throw new CheckpointError(
          t.path,
          `tensor ${t.name} has shape [${t.shape}], expected [${e.shape}] from ${configSource}`,
        );
      }
    }
    const names = new Set(expected.map((e) => e.local));
    for (const t of have) {
      if (!names.has(t.local)) {
        throw new CheckpointError(
          t.path,
          `unexpected tensor ${t.name} for ${cfg.architecture}`,
        );
      }
    }
  }
  // Each part's tensors in the family's expected order (attention q, k, v, ..., MLP gate, up, down):
  // projections of the same input lie back to back, and a decode step reads them as one matmul
  // (blocks.ts linearJoined). The order is part of the recipe: older splits are redone.
  for (const part of order) {
    const rank = new Map(family.expected(part, cfg).map((e, i) => [e.local, i]));
    parts.get(partId(part))!.sort((a, b) => rank.get(a.local)! - rank.get(b.local)!);
  }
  // On-demand groups (MoE experts) go after the tensors every step needs, each group contiguous:
  // a streamed layer reads its always-needed bytes in one range and each group in one more.
  if (family.lazyGroup) {
    for (const [id, tensors] of parts) {
      const rank = new Map<string, number>();
      const key = (t: SourceTensor) => {
        const g = family.lazyGroup!(t.local, cfg);
        if (g === null) return -1;
        if (!rank.has(g)) rank.set(g, rank.size);
        return rank.get(g)!;
      };
      const keyed = tensors.map((t, i) => ({ t, i, k: key(t) }));
      keyed.sort((a, b) => a.k - b.k || a.i - b.i);
      parts.set(id, keyed.map((e) => e.t));
    }
  }
  return parts;
}

/**
 * The block format a quantized split stores each quantized tensor of part `id` in, by local name:
 * matmul weights (and the embedding table) whose rows hold whole blocks of `q`; a row of whole
 * 32-blocks but not 256-blocks takes the 32-element fallback of a K format (llama.cpp's: Q4_K →
 * Q5_0, Q5_K → Q5_1, Q6_K → Q8_0). Tensors not listed stay in the split's float dtype.
 */
export function quantizedLocals(
  family: Family,
  cfg: ModelConfig,
  id: string,
  q: BlockDType,
): Map<string, BlockDType> {
  const part: Part = id.startsWith("layer.")
    ? { kind: "layer", index: Number(id.slice(6)) }
    : { kind: id as "embed" | "norm" | "lm_head" };
  const out = new Map<string, BlockDType>();
  for (const e of family.expected(part, cfg)) {
    if (!e.matmul || e.shape.length !== 2) continue;
    const k = e.shape[1];
    if (k % BLOCK[q].elems === 0) out.set(e.local, q);
    else if (K_FALLBACK[q] && k % 32 === 0) out.set(e.local, K_FALLBACK[q]!);
  }
  return out;
}

/** The 32-element format a K format falls back to for rows that are not whole 256-blocks. */
const K_FALLBACK: Partial<Record<BlockDType, BlockDType>> = {
  Q4_K: "Q5_0",
  Q5_K: "Q5_1",
  Q6_K: "Q8_0",
};

/** The tensor's bytes in `to`: a float conversion, or quantization (with its error). */
function encode(
  data: Uint8Array,
  from: DType,
  to: DType,
  shape: readonly number[],
  where: string,
): { data: Uint8Array; error?: QuantError } {
  if (from === to) return { data }; // a GGUF's blocks, or a float tensor kept as it is
  if (!isBlockDType(to)) return { data: convert(data, from, to, where) };
  const f = convert(data, from, "F32", where);
  const x = new Float32Array(f.buffer, f.byteOffset, f.byteLength / 4);
  const blocks = quantize(x, to, shape[shape.length - 1]);
  return { data: blocks, error: quantError(x, dequantize(blocks, to)) };
}

async function writePart(
  out: string,
  id: string,
  tensors: SourceTensor[],
  targets: DType[],
  progress: (bytes: number) => void,
): Promise<ManifestPart> {
  const file = `${id}.safetensors`;
  const specs = tensors.map((t, i) => ({ name: t.local, dtype: targets[i], shape: t.shape }));
  // Data page-aligned: a streamed layer is read with direct I/O straight into its slot.
  const writer = await SafetensorsWriter.create(`${out}/${file}`, specs, undefined, {
    dataAlign: SPLIT_DATA_ALIGN,
  });
  const hash = createHash("sha256");
  const manifestTensors: ManifestTensor[] = [];
  let offset = 0;
  try {
    for (const [i, t] of tensors.entries()) {
      const { data, error } = encode(
        await t.read(),
        t.dtype,
        targets[i],
        t.shape,
        `${t.path}: ${t.name}`,
      );
      await writer.write(t.local, data);
      hash.update(data);
      manifestTensors.push({
        name: t.local,
        dtype: targets[i],
        shape: t.shape,
        offset,
        nbytes: data.byteLength,
        ...(error ? { quantError: error } : {}),
      });
      offset += data.byteLength;
      progress(t.nbytes);
    }
    await writer.commit();
  } catch (e) {
    await writer.abort();
    throw e;
  }
  const bytes = Deno.statSync(`${out}/${file}`).size;
  return {
    id,
    file,
    bytes,
    dataOffset: bytes - offset,
    dataBytes: offset,
    sha256: hash.digest("hex"),
    tensors: manifestTensors,
  };
}
