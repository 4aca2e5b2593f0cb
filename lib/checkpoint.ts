/**
 * Find a checkpoint (local directory or Hugging Face cache snapshot) and split it into one
 * safetensors file per part (embed, each decoder layer, final norm, lm_head) plus a manifest.
 *
 * Every tensor of the checkpoint is accounted for: it goes into a part, is a known unused tensor
 * (a tied duplicate head, a stored rotary table), or is an error naming it. Writes are atomic
 * (temp name → rename) and the manifest is written last, so a split whose manifest matches its
 * source is complete and is reused; anything else is redone. Peak extra memory is one tensor.
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { ModelConfig, StorageDType } from "./config.ts";
import { bf16ToF32, type DType, f16ToF32, f32ToBf16, f32ToF16 } from "./dtype.ts";
import { CheckpointError } from "./errors.ts";
import type { Family, Part } from "./models/family.ts";
import {
  BLOCK,
  type BlockDType,
  dequantize,
  isBlockDType,
  type QuantError,
  quantError,
  quantize,
} from "./quant.ts";
import { SafetensorsFile, SafetensorsWriter } from "./safetensors.ts";
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
  /** Identity of the source files: a changed checkpoint invalidates the split. */
  source: { file: string; size: number; mtimeMs: number }[];
  parts: ManifestPart[];
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

/** The safetensors files of a checkpoint directory, with the tensor → file map. */
export async function listShards(
  dir: string,
): Promise<{ files: string[]; weightMap: Map<string, string> | null }> {
  const index = `${dir}/model.safetensors.index.json`;
  if (isFile(index)) {
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
  if (isFile(`${dir}/model.safetensors`)) return { files: ["model.safetensors"], weightMap: null };
  throw new CheckpointError(
    dir,
    "no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)",
  );
}

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
}

/** A checkpoint tensor before placement. */
type Unplaced = Omit<SourceTensor, "local">;

async function readManifest(path: string): Promise<Manifest | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as Manifest;
  } catch {
    return null;
  }
}

function sameSource(a: Manifest["source"], b: Manifest["source"]): boolean {
  return a.length === b.length &&
    a.every((s, i) => s.file === b[i].file && s.size === b[i].size && s.mtimeMs === b[i].mtimeMs);
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
  const source = files.map((f) => {
    const st = Deno.statSync(`${dir}/${f}`);
    return { file: f, size: st.size, mtimeMs: st.mtime?.getTime() ?? 0 };
  });
  const manifestPath = `${out}/manifest.json`;
  const old = await readManifest(manifestPath);
  if (
    old && old.format === MANIFEST_FORMAT && old.dtype === opts.dtype &&
    old.quantize === opts.quantize &&
    old.architecture === cfg.architecture && sameSource(old.source, source) &&
    splitIsComplete(out, old)
  ) {
    return { dir: out, manifest: old, reused: true };
  }

  const shards: SafetensorsFile[] = [];
  try {
    for (const f of files) shards.push(await SafetensorsFile.open(`${dir}/${f}`));
    const parts = assignTensors(dir, safetensorsSources(dir, shards, weightMap), family, cfg);
    const target = STORAGE_TO_DTYPE[opts.dtype];
    const manifest = await writeSplit(out, parts, cfg, source, opts, (id, tensors) => {
      const blocks = opts.quantize ? quantizedLocals(family, cfg, id, opts.quantize) : new Map();
      return tensors.map((t): DType => blocks.get(t.local) ?? target);
    });
    return { dir: out, manifest, reused: false };
  } finally {
    for (const s of shards) s.close();
  }
}

/** Writes every part, then the manifest (last, atomically: a split without one is redone). */
async function writeSplit(
  out: string,
  parts: Map<string, SourceTensor[]>,
  cfg: ModelConfig,
  source: Manifest["source"],
  opts: SplitOptions,
  targetsOf: (id: string, tensors: SourceTensor[]) => DType[],
): Promise<Manifest> {
  const manifestPath = `${out}/manifest.json`;
  await Deno.mkdir(out, { recursive: true });
  await Deno.remove(manifestPath).catch(() => {});
  const total = [...parts.values()].flat().reduce((s, t) => s + t.nbytes, 0);
  let done = 0;
  const manifestParts: ManifestPart[] = [];
  for (const [id, tensors] of parts) {
    manifestParts.push(
      await writePart(out, id, tensors, targetsOf(id, tensors), (n) => {
        done += n;
        opts.onProgress?.(done, total);
      }),
    );
  }
  const manifest: Manifest = {
    format: MANIFEST_FORMAT,
    architecture: cfg.architecture,
    dtype: opts.dtype,
    ...(opts.quantize ? { quantize: opts.quantize } : {}),
    source,
    parts: manifestParts,
  };
  const tmp = `${manifestPath}.tmp-${crypto.randomUUID()}`;
  await Deno.writeTextFile(tmp, JSON.stringify(manifest, null, 1));
  await Deno.rename(tmp, manifestPath);
  return manifest;
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
  const st = Deno.statSync(g.file);
  const source = [{
    file: g.file.slice(slash + 1),
    size: st.size,
    mtimeMs: st.mtime?.getTime() ?? 0,
  }];
  const old = await readManifest(`${out}/manifest.json`);
  if (
    old && old.format === MANIFEST_FORMAT && old.dtype === opts.dtype && !old.quantize &&
    old.architecture === cfg.architecture && sameSource(old.source, source) &&
    splitIsComplete(out, old)
  ) {
    return { dir: out, manifest: old, reused: true };
  }
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
  const manifest = await writeSplit(
    out,
    parts,
    cfg,
    source,
    opts,
    (_id, ts) => ts.map((t) => t.dtype),
  );
  return { dir: out, manifest, reused: false };
}

/** The tensors of safetensors shards, checked against the index's weight map. */
function safetensorsSources(
  dir: string,
  shards: SafetensorsFile[],
  weightMap: Map<string, string> | null,
): (Unplaced & { hf: string })[] {
  const out: (Unplaced & { hf: string })[] = [];
  for (const shard of shards) {
    const shardName = shard.path.slice(shard.path.lastIndexOf("/") + 1);
    for (const [name, info] of shard.tensors) {
      if (weightMap && weightMap.get(name) !== shardName) {
        throw new CheckpointError(
          shard.path,
          `tensor ${name} is not mapped to this shard by model.safetensors.index.json`,
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

/** Places every tensor of the shards into parts (in model order) and validates names/shapes. */
function assignTensors(
  dir: string,
  sources: (Unplaced & { hf: string })[],
  family: Family,
  cfg: ModelConfig,
  configSource = "config.json",
): Map<string, SourceTensor[]> {
  const order: Part[] = [
    { kind: "embed" },
    ...Array.from({ length: cfg.numLayers }, (_, index) => ({ kind: "layer" as const, index })),
    { kind: "norm" },
    ...(cfg.tieWordEmbeddings ? [] : [{ kind: "lm_head" as const }]),
  ];
  const parts = new Map<string, SourceTensor[]>(order.map((p) => [partId(p), []]));
  const seen = new Set<string>();
  for (const src of sources) {
    const { hf, ...t } = src;
    if (seen.has(hf)) throw new CheckpointError(t.path, `tensor ${t.name} appears twice`);
    seen.add(hf);
    const placed = family.place(hf, cfg);
    if (!placed) {
      throw new CheckpointError(
        t.path,
        `unknown tensor ${t.name} for ${cfg.architecture} with ${cfg.numLayers} layers`,
      );
    }
    if (placed.part) parts.get(partId(placed.part))!.push({ ...t, local: placed.local });
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
          `missing tensor ${e.local} of part ${partId(part)} (${cfg.architecture})`,
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
