/**
 * The models in the Hugging Face hub cache, as `rabbit list` and `rabbit rm` see them: every
 * `models--org--name` folder in the layout huggingface_hub (Python) and lib/hub.ts write,
 *
 * ```
 * <cache>/models--org--name/
 *   blobs/<hash>[.incomplete]     file contents (a partial download ends in .incomplete)
 *   refs/<revision>               the commit a branch or tag pointed at
 *   snapshots/<commit>/<file>     symlink (or hard link) → ../../blobs/<hash>
 *   snapshots/<commit>/rabbitllm_split_<dtype|gguf name>/   a per-layer split (manifest.json last)
 * <cache>/.locks/models--org--name/
 * ```
 *
 * with its size on disk, the architecture its config.json names (or its GGUF files) and the
 * rabbitllm splits inside its snapshots. Removal deletes the repo folder (blobs, snapshots, refs,
 * splits) and its lock folder, and only ever a folder directly inside the cache.
 *
 * @module
 */
import { hfHubCache } from "./checkpoint.ts";
import { CheckpointError, InputError } from "./errors.ts";

/** A per-layer split found inside a snapshot. */
export interface CachedSplit {
  /** What follows `rabbitllm_split_` (a dtype or a GGUF file's name), with its folder if any. */
  name: string;
  /** The split directory. */
  dir: string;
  /** True when its manifest.json exists (the split writes it last). */
  complete: boolean;
  /** Bytes of its files. */
  bytes: number;
}

/** One model repo in the cache. */
export interface CachedModel {
  /** `org/name` (or `name` for a repo without an organization). */
  repoId: string;
  /** `<cache>/models--org--name`. */
  dir: string;
  /**
   * Bytes on disk: blobs (partial downloads included) and splits; hard-linked files count once,
   * refs/ not at all (as huggingface_hub's `size_on_disk`, which counts the blobs).
   */
  bytes: number;
  /** Bytes of partial downloads (`blobs/*.incomplete`); `rabbit pull` resumes them. */
  incompleteBytes: number;
  /** Revision (branch or tag) → commit, from `refs/`. */
  refs: Record<string, string>;
  /** Commits with a snapshot folder. */
  snapshots: string[];
  /** The snapshot described below: refs/main's, else the newest; null when there is none yet. */
  snapshot: string | null;
  /** config.json's `architectures[0]`, or null. */
  architecture: string | null;
  /** config.json's `model_type`, or null. */
  modelType: string | null;
  /** The .gguf files of the snapshot (paths inside it), sorted. */
  ggufFiles: string[];
  /** The rabbitllm splits inside every snapshot. */
  splits: CachedSplit[];
  /** Newest modification time of a file of the repo, or null when it has none. */
  modified: Date | null;
}

const PREFIX = "models--";
const SPLIT_PREFIX = "rabbitllm_split_";
const REPO_ID = /^(?:[\w.-]+\/)?[\w.-]+$/;

/** The cache directory to use: `cacheDir`, else HF_HUB_CACHE / HF_HOME / XDG / HOME. */
function cacheOf(cacheDir: string | undefined): string {
  const dir = cacheDir ?? hfHubCache();
  if (!dir) {
    throw new InputError(
      "no Hugging Face cache directory: set HF_HUB_CACHE or HF_HOME (or HOME)",
    );
  }
  return dir.replace(/\/+$/, "") || "/";
}

/** `models--org--name` → `org/name`. */
function repoIdOf(folder: string): string {
  return folder.slice(PREFIX.length).replaceAll("--", "/");
}

async function lstat(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.lstat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

async function entries(dir: string): Promise<Deno.DirEntry[]> {
  const out: Deno.DirEntry[] = [];
  try {
    for await (const e of Deno.readDir(dir)) out.push(e);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return [];
    throw e;
  }
  return out.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
}

/** Sizes of the regular files under `dir` (symlinks not followed), each inode once. */
async function walkSizes(
  dir: string,
  seen: Set<string>,
  visit?: (path: string, info: Deno.FileInfo) => void,
): Promise<number> {
  let total = 0;
  for (const e of await entries(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isSymlink) continue;
    if (e.isDirectory) {
      total += await walkSizes(path, seen, visit);
      continue;
    }
    const info = await lstat(path);
    if (!info?.isFile) continue;
    const key = info.ino === null ? path : `${info.dev}:${info.ino}`;
    visit?.(path, info);
    if (seen.has(key)) continue;
    seen.add(key);
    total += info.size;
  }
  return total;
}

/** refs/ → { revision: commit }, revisions with slashes (refs/pr/1) included. */
async function readRefs(dir: string, prefix = ""): Promise<Record<string, string>> {
  const refs: Record<string, string> = {};
  for (const e of await entries(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) Object.assign(refs, await readRefs(path, `${prefix}${e.name}/`));
    else if (e.isFile) refs[`${prefix}${e.name}`] = (await Deno.readTextFile(path)).trim();
  }
  return refs;
}

/** Splits and .gguf files under a snapshot folder (splits are not searched inside). */
async function scanSnapshot(
  dir: string,
  rel = "",
  depth = 0,
): Promise<{ splits: CachedSplit[]; ggufs: string[] }> {
  const splits: CachedSplit[] = [], ggufs: string[] = [];
  for (const e of await entries(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory && e.name.startsWith(SPLIT_PREFIX)) {
      splits.push({
        name: `${rel}${e.name.slice(SPLIT_PREFIX.length)}`,
        dir: path,
        complete: (await lstat(`${path}/manifest.json`))?.isFile ?? false,
        bytes: await walkSizes(path, new Set()),
      });
    } else if (e.isDirectory && depth < 8) {
      const sub = await scanSnapshot(path, `${rel}${e.name}/`, depth + 1);
      splits.push(...sub.splits);
      ggufs.push(...sub.ggufs);
    } else if (/\.gguf$/i.test(e.name)) ggufs.push(`${rel}${e.name}`);
  }
  return { splits, ggufs };
}

async function readConfig(
  snapshot: string,
): Promise<{ architecture: string | null; modelType: string | null } | null> {
  let raw: unknown;
  try {
    raw = JSON.parse(await Deno.readTextFile(`${snapshot}/config.json`));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    if (e instanceof SyntaxError) return { architecture: null, modelType: null };
    throw e;
  }
  const c = raw as { architectures?: unknown; model_type?: unknown } | null;
  const arch = Array.isArray(c?.architectures) ? c.architectures[0] : undefined;
  return {
    architecture: typeof arch === "string" ? arch : null,
    modelType: typeof c?.model_type === "string" ? c.model_type : null,
  };
}

/** Describes one `models--…` folder of the cache. */
async function describe(dir: string, folder: string): Promise<CachedModel> {
  const seen = new Set<string>();
  let newest = -Infinity, incompleteBytes = 0;
  const visit = (path: string, info: Deno.FileInfo) => {
    const t = info.mtime?.getTime();
    if (t !== undefined && t > newest) newest = t;
    if (path.endsWith(".incomplete")) incompleteBytes += info.size;
  };
  // As huggingface_hub's scan_cache counts it (blobs; refs are a few bytes of metadata), plus the
  // splits and any hard-linked snapshot files not already counted as a blob.
  const bytes = await walkSizes(`${dir}/blobs`, seen, visit) +
    await walkSizes(`${dir}/snapshots`, seen, visit);
  const refs = await readRefs(`${dir}/refs`);
  const snaps = (await entries(`${dir}/snapshots`)).filter((e) => e.isDirectory);
  const snapshots = snaps.map((e) => e.name);
  let snapshot: string | null = null;
  if (refs.main !== undefined && snapshots.includes(refs.main)) snapshot = refs.main;
  else {
    let best = -Infinity;
    for (const c of snapshots) {
      const t = (await lstat(`${dir}/snapshots/${c}`))?.mtime?.getTime() ?? 0;
      if (t > best) [best, snapshot] = [t, c];
    }
  }
  const splits: CachedSplit[] = [];
  let ggufFiles: string[] = [];
  for (const c of snapshots) {
    const s = await scanSnapshot(`${dir}/snapshots/${c}`);
    const tag = snapshots.length > 1 ? `@${c.slice(0, 7)}` : "";
    splits.push(...s.splits.map((x) => ({ ...x, name: x.name + tag })));
    if (c === snapshot) ggufFiles = s.ggufs.sort();
  }
  const config = snapshot === null ? null : await readConfig(`${dir}/snapshots/${snapshot}`);
  return {
    repoId: repoIdOf(folder),
    dir,
    bytes,
    incompleteBytes,
    refs,
    snapshots,
    snapshot,
    architecture: config?.architecture ?? null,
    modelType: config?.modelType ?? null,
    ggufFiles,
    splits,
    modified: Number.isFinite(newest) ? new Date(newest) : null,
  };
}

/**
 * Every model repo in the Hugging Face cache (`cacheDir`, default HF_HUB_CACHE, else
 * `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), sorted by repo id; none when the cache does
 * not exist. Repos Python's huggingface_hub downloaded are listed alike.
 *
 * @throws {InputError} no cache directory can be determined.
 */
export async function listCachedModels(cacheDir?: string): Promise<CachedModel[]> {
  const cache = cacheOf(cacheDir);
  const out: CachedModel[] = [];
  for (const e of await entries(cache)) {
    if (!e.isDirectory || !e.name.startsWith(PREFIX) || e.name === PREFIX) continue;
    out.push(await describe(`${cache}/${e.name}`, e.name));
  }
  return out.sort((a, b) => a.repoId.localeCompare(b.repoId));
}

/** What a model is: `"llama (LlamaForCausalLM)"`, `"GGUF: a.gguf, b.gguf"`, or a hint. */
export function describeModel(m: CachedModel): string {
  if (m.architecture || m.modelType) {
    return m.modelType && m.architecture
      ? `${m.modelType} (${m.architecture})`
      : (m.architecture ?? m.modelType)!;
  }
  if (m.ggufFiles.length > 0) return `GGUF: ${m.ggufFiles.join(", ")}`;
  return m.snapshot === null ? "(no files yet)" : "(no config.json)";
}

/**
 * The cache folder of a model: `org/name`, or the path of a `models--…` folder directly inside
 * the cache. Anything else — a path elsewhere, `..`, a folder that is a symlink out of the cache
 * — is refused.
 *
 * @throws {InputError} not a repo id or a folder of the cache.
 * @throws {CheckpointError} the model is not in the cache.
 */
export async function cachedModelDir(repoIdOrPath: string, cacheDir?: string): Promise<string> {
  const cache = cacheOf(cacheDir);
  const outside = (why: string) =>
    new InputError(
      `${repoIdOrPath}: ${why}; rabbit rm removes only models of the Hugging Face cache ` +
        `(${cache}), named org/name`,
    );
  let folder: string;
  const bare = !repoIdOrPath.includes("/") && repoIdOrPath.startsWith(PREFIX) &&
    repoIdOrPath !== PREFIX && REPO_ID.test(repoIdOrPath) && !repoIdOrPath.includes("..");
  const looksLikePath = repoIdOrPath.startsWith("/") || repoIdOrPath.startsWith(".") ||
    repoIdOrPath.startsWith("~") || repoIdOrPath.includes("--");
  if (bare) folder = repoIdOrPath; // the folder's own name
  else if (!looksLikePath && REPO_ID.test(repoIdOrPath) && !repoIdOrPath.includes("..")) {
    folder = `${PREFIX}${repoIdOrPath.replaceAll("/", "--")}`;
  } else {
    // A path: only a models--… folder whose parent is the cache itself.
    const path = repoIdOrPath.replace(/\/+$/, "");
    const name = path.slice(path.lastIndexOf("/") + 1);
    let parent: string;
    try {
      parent = await Deno.realPath(
        path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".",
      );
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw outside("no such path");
      throw e;
    }
    if (!name.startsWith(PREFIX) || name === PREFIX || !(await sameDir(parent, cache))) {
      throw outside("not a model folder of the cache");
    }
    folder = name;
  }
  const dir = `${cache}/${folder}`;
  const info = await lstat(dir);
  if (info === null) {
    throw new CheckpointError(repoIdOf(folder), `not in the Hugging Face cache (${cache})`);
  }
  if (info.isSymlink || !info.isDirectory) {
    throw outside(`${dir} is a ${info.isSymlink ? "symlink" : "file"}, not a folder of the cache`);
  }
  return dir;
}

async function sameDir(a: string, b: string): Promise<boolean> {
  try {
    return (await Deno.realPath(a)) === (await Deno.realPath(b));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** The cached model `repoIdOrPath` names (see {@link cachedModelDir}). */
export async function cachedModel(repoIdOrPath: string, cacheDir?: string): Promise<CachedModel> {
  const dir = await cachedModelDir(repoIdOrPath, cacheDir);
  return await describe(dir, dir.slice(dir.lastIndexOf("/") + 1));
}

/**
 * Removes a model from the cache: its folder (blobs, snapshots, refs and the splits inside the
 * snapshots) and its folder of lock files. Returns what was removed.
 *
 * @throws {InputError} not a repo id or a folder of the cache (nothing is removed).
 * @throws {CheckpointError} the model is not in the cache.
 */
export async function removeCachedModel(
  repoIdOrPath: string,
  cacheDir?: string,
): Promise<CachedModel> {
  const m = await cachedModel(repoIdOrPath, cacheDir);
  const cache = m.dir.slice(0, m.dir.lastIndexOf("/"));
  const folder = m.dir.slice(cache.length + 1);
  await Deno.remove(m.dir, { recursive: true });
  const locks = `${cache}/.locks/${folder}`;
  if ((await lstat(locks))?.isDirectory) await Deno.remove(locks, { recursive: true });
  return m;
}
