/**
 * Download what a causal LM needs from the Hugging Face hub into the standard HF cache, in the
 * layout Python's huggingface_hub writes and reads:
 *
 * ```
 * <cache>/models--org--name/
 *   blobs/<sha256 of an LFS file, git blob sha1 of any other>
 *   refs/<revision>               the commit hash the branch or tag pointed at
 *   snapshots/<commit>/<file>     relative symlink → ../../blobs/<hash>
 * <cache>/.locks/models--org--name/<hash>.lock
 * ```
 *
 * A file Python already downloaded is reused without a request, and Python reuses ours. The repo
 * listing and file metadata come from npm:@huggingface/hub (`modelInfo`, `pathsInfo`); the file
 * transfer is a plain `fetch` of the hub's resolve URL, because the library neither resumes nor
 * writes this layout: it streams into `blobs/<hash>.incomplete` under the same lock file Python
 * uses, resumes with `Range: bytes=<size>-` after a cut or a stall (a few times automatically,
 * and on the next call after a crash), checks the sha256 (git sha1 for small files) against the
 * hub's hash, and renames into place.
 *
 * @module
 */
import { HubApiError, modelInfo, pathsInfo } from "@huggingface/hub";
import { createHash, type Hash } from "node:crypto";
import { hfHubCache } from "./checkpoint.ts";
import { CheckpointError, HubError, type HubErrorKind } from "./errors.ts";
import { progress } from "./progress.ts";

/**
 * What {@link snapshotDownload} fetches by default: the config, generation config, tokenizer
 * files and safetensors weights. Files the repo does not have are skipped; the shards that
 * model.safetensors.index.json names come on top. A repo without safetensors weights gets its
 * torch.save ones instead: pytorch_model.bin, or pytorch_model.bin.index.json and its shards.
 */
export const CAUSAL_LM_FILES: readonly string[] = [
  "config.json",
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
  "tokenizer.model",
  "qwen.tiktoken", // QWen v1's vocabulary (no tokenizer.json)
  "model.safetensors",
  "model.safetensors.index.json",
];

/** Options of {@link snapshotDownload}. */
export interface SnapshotDownloadOptions {
  /** Branch, tag or full commit hash; default `"main"`. */
  revision?: string;
  /**
   * Access token for gated and private repos. Default: `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`,
   * else the file `huggingface-cli login` writes (`HF_TOKEN_PATH`, default `$HF_HOME/token`).
   * Sent as `Authorization: Bearer` to the hub only (never to the CDN it redirects to) and never
   * printed.
   */
  token?: string;
  /** The hub; default `HF_ENDPOINT`, else `https://huggingface.co`. */
  hubUrl?: string;
  /** The cache; default `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. */
  cacheDir?: string;
  /**
   * Patterns (`*` matches any run of characters, `/` included; `?` one character) of the repo
   * files to fetch instead of {@link CAUSAL_LM_FILES}. The shards named by a selected
   * model.safetensors.index.json (or pytorch_model.bin.index.json) are fetched too. Without it, a
   * repo lacking config.json or weights (safetensors, else torch.save .bin) is an error.
   */
  allowPatterns?: string[];
  /**
   * Use only the cache, no network. Default: `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) set to
   * 1, ON, YES or TRUE.
   */
  offline?: boolean;
  /** Draw no progress bar (it only ever draws when stderr is a terminal). */
  quiet?: boolean;
  /**
   * Called with (bytesDone, bytesTotal) while files download; the total is what the cache lacks
   * (the small index, fetched first to learn the shards, is not counted).
   */
  onProgress?: (done: number, total: number) => void;
  /**
   * A request that receives nothing for this long is cut (and a download resumed); default
   * 30 000 ms.
   */
  stallTimeoutMs?: number;
}

const INDEX = "model.safetensors.index.json";
/** torch.save checkpoints (lib/torch_bin.ts), fetched only when the repo has no safetensors. */
const BIN_INDEX = "pytorch_model.bin.index.json";
const BIN = "pytorch_model.bin";
const COMMIT_HASH = /^[0-9a-f]{40}$/;
const BLOB_NAME = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;
/** Retries of one file after a cut connection, a stall or a 5xx; waits 0.5, 1, 2, 4, 8 s. */
const RETRIES = 5;
const RETRY_BASE_MS = 500;

interface Ctx {
  repoId: string;
  revision: string;
  hubUrl: string;
  token: string | undefined;
  cacheDir: string;
  /** `models--org--name`, the folder name in blobs' and locks' parents. */
  folder: string;
  opts: SnapshotDownloadOptions;
  stallMs: number;
}

/** One repo file at the resolved commit, as the hub describes it. */
interface RemoteFile {
  name: string;
  /** The blob's name in the cache: sha256 (LFS) or git blob sha1, lower-case hex. */
  blob: string;
  size: number;
  lfs: boolean;
}

/**
 * Makes the files of `repoId` that a causal LM needs ({@link CAUSAL_LM_FILES} plus the shards
 * of the index, or `allowPatterns`) present in the Hugging Face cache and returns the snapshot
 * directory, `<cache>/models--org--name/snapshots/<commit>`. Online it asks the hub for the
 * revision's commit and file list (one request) and downloads only what the cache lacks;
 * offline it resolves the revision from `refs/` and checks that config.json and the weights are
 * there.
 *
 * @throws {HubError} `auth` (gated or private: accept the licence and pass a token),
 *   `not_found` (no such model, revision or needed file), `network`, `http`, `integrity`,
 *   `offline` (a file is not in the cache), `invalid` (bad repo id or token).
 * @throws {CheckpointError} model.safetensors.index.json is malformed.
 *
 * @example
 * ```ts ignore
 * import { snapshotDownload } from "./hub.ts";
 * const dir = await snapshotDownload("HuggingFaceTB/SmolLM2-135M", { revision: "main" });
 * // dir/config.json, dir/model.safetensors, dir/tokenizer.json …
 * ```
 */
export async function snapshotDownload(
  repoId: string,
  opts: SnapshotDownloadOptions = {},
): Promise<string> {
  const revision = opts.revision ?? "main";
  const fail = (what: string) => new HubError("invalid", repoId, revision, what);
  if (!/^([\w.-]+\/)?[\w.-]+$/.test(repoId) || repoId.includes("--") || repoId.includes("..")) {
    throw fail("not a hub model id (expected org/name)");
  }
  const cacheDir = opts.cacheDir ?? hfHubCache();
  if (!cacheDir) {
    throw fail("no cache directory: set HF_HUB_CACHE or HF_HOME (or HOME), or pass cacheDir");
  }
  const ctx: Ctx = {
    repoId,
    revision,
    hubUrl: (opts.hubUrl ?? env("HF_ENDPOINT") ?? "https://huggingface.co").replace(/\/+$/, ""),
    token: undefined,
    cacheDir,
    folder: `models--${repoId.replaceAll("/", "--")}`,
    opts,
    stallMs: opts.stallTimeoutMs ?? 30_000,
  };
  const offline = opts.offline ??
    (isTrue(env("HF_HUB_OFFLINE")) || isTrue(env("TRANSFORMERS_OFFLINE")));
  if (offline) return await fromCache(ctx);

  ctx.token = await resolveToken(opts.token);
  if (ctx.token !== undefined && !ctx.token.startsWith("hf_")) {
    throw fail("the access token is not a Hugging Face token (those start with hf_)");
  }
  const info = await api(ctx, (fetch) =>
    modelInfo({
      name: repoId,
      revision,
      additionalFields: ["sha", "filePaths"],
      hubUrl: ctx.hubUrl,
      accessToken: ctx.token,
      fetch,
    }));
  const commit = info.sha;
  if (!COMMIT_HASH.test(commit)) {
    throw hubError(ctx, "http", `the hub answered without a commit hash (sha: ${commit})`);
  }
  if (revision !== commit) await writeRef(ctx, commit);

  const repoFiles = new Set(info.filePaths);
  const wanted = select(ctx, repoFiles);
  for (const index of [INDEX, BIN_INDEX]) {
    if (!wanted.includes(index)) continue;
    await fetchFiles(ctx, commit, [index], false);
    for (const shard of await shardsOf(`${snapshotDir(ctx, commit)}/${index}`)) {
      if (!repoFiles.has(shard)) {
        throw hubError(ctx, "not_found", `names shard ${shard}, which is not in the repo`, index);
      }
      if (!wanted.includes(shard)) wanted.push(shard);
    }
  }
  await fetchFiles(ctx, commit, wanted.filter((f) => f !== INDEX && f !== BIN_INDEX), true);
  return snapshotDir(ctx, commit);
}

// ---------------------------------------------------------------------------------------------
// Settings from the environment

/** An environment variable, or undefined when unset, empty or not permitted (never prompts). */
function env(name: string): string | undefined {
  if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") return;
  return Deno.env.get(name) || undefined;
}

function isTrue(value: string | undefined): boolean {
  return ["1", "ON", "YES", "TRUE"].includes(value?.toUpperCase() ?? "");
}

/** The token huggingface_hub would use: explicit, HF_TOKEN, HUGGING_FACE_HUB_TOKEN, token file. */
async function resolveToken(explicit: string | undefined): Promise<string | undefined> {
  const clean = (t: string | undefined) => t?.replace(/[\r\n]/g, "").trim() || undefined;
  const fromEnv = clean(explicit ?? env("HF_TOKEN") ?? env("HUGGING_FACE_HUB_TOKEN"));
  if (fromEnv !== undefined || explicit !== undefined) return fromEnv;
  const cache = env("XDG_CACHE_HOME") ?? (env("HOME") && `${env("HOME")}/.cache`);
  const home = env("HF_HOME") ?? (cache && `${cache}/huggingface`);
  const path = env("HF_TOKEN_PATH") ?? (home && `${home}/token`);
  if (!path || Deno.permissions.querySync({ name: "read", path }).state !== "granted") return;
  try {
    return clean(await Deno.readTextFile(path));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Cache layout

function snapshotDir(ctx: Ctx, commit: string): string {
  return `${ctx.cacheDir}/${ctx.folder}/snapshots/${commit}`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path); // follows the snapshot symlink: a dangling one is missing
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** `refs/<revision>` ← commit, atomically (a branch name may hold slashes: refs/pr/1). */
async function writeRef(ctx: Ctx, commit: string): Promise<void> {
  const ref = `${ctx.cacheDir}/${ctx.folder}/refs/${ctx.revision}`;
  await Deno.mkdir(ref.slice(0, ref.lastIndexOf("/")), { recursive: true });
  const tmp = `${ref}.tmp-${crypto.randomUUID()}`;
  await Deno.writeTextFile(tmp, commit);
  await Deno.rename(tmp, ref);
}

let hardLinkNoted = false;

/**
 * `snapshots/<commit>/<name>` → `../../blobs/<hash>` (one more `../` per folder in name), as
 * Python links them. Deno creates symlinks only under unscoped --allow-read and --allow-write;
 * with path-scoped grants the snapshot file is a hard link to the blob instead (same bytes on
 * disk, and Python reads it as a cached file), which is said once.
 */
async function link(ctx: Ctx, commit: string, f: RemoteFile): Promise<void> {
  const pointer = `${snapshotDir(ctx, commit)}/${f.name}`;
  await Deno.mkdir(pointer.slice(0, pointer.lastIndexOf("/")), { recursive: true });
  try {
    await Deno.remove(pointer);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const unscoped = (name: "read" | "write") =>
    Deno.permissions.querySync({ name }).state === "granted";
  if (unscoped("read") && unscoped("write")) {
    const up = "../".repeat(f.name.split("/").length + 1);
    await Deno.symlink(`${up}blobs/${f.blob}`, pointer, { type: "file" });
    return;
  }
  if (!hardLinkNoted) {
    hardLinkNoted = true;
    console.error(
      "rabbitllm: Hugging Face cache snapshot files are hard links to their blobs, not " +
        "symlinks: Deno creates symlinks only with unscoped --allow-read and --allow-write",
    );
  }
  await Deno.link(`${ctx.cacheDir}/${ctx.folder}/blobs/${f.blob}`, pointer);
}

/** The shard file names of an index (its weight_map values), sorted and de-duplicated. */
async function shardsOf(index: string): Promise<string[]> {
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
  const shards = [...new Set(Object.values(map))];
  for (const s of shards) {
    if (typeof s !== "string" || !isRelativePath(s)) {
      throw new CheckpointError(index, `weight_map: ${JSON.stringify(s)} is not a file name`);
    }
  }
  return (shards as string[]).sort();
}

/** A repo path that stays inside the snapshot: no absolute path, no `..`, `.` or empty part. */
function isRelativePath(name: string): boolean {
  return !name.includes("\\") && name.split("/").every((p) => p !== "" && p !== "." && p !== "..");
}

// ---------------------------------------------------------------------------------------------
// Offline

async function fromCache(ctx: Ctx): Promise<string> {
  const offline = "offline mode is on (HF_HUB_OFFLINE or the offline option) and";
  let commit = ctx.revision;
  if (!COMMIT_HASH.test(commit)) {
    const ref = `${ctx.cacheDir}/${ctx.folder}/refs/${ctx.revision}`;
    try {
      commit = (await Deno.readTextFile(ref)).trim();
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      throw hubError(ctx, "offline", `${offline} the cache has no ${ref}; download it once online`);
    }
  }
  const snapshot = snapshotDir(ctx, commit);
  if (!(await exists(snapshot))) {
    throw hubError(ctx, "offline", `${offline} the cache has no snapshot ${snapshot}`);
  }
  if (ctx.opts.allowPatterns) return snapshot;
  const needed = ["config.json"];
  if (!(await exists(`${snapshot}/model.safetensors`))) {
    if (await exists(`${snapshot}/${INDEX}`)) {
      needed.push(...await shardsOf(`${snapshot}/${INDEX}`));
    } else if (await exists(`${snapshot}/${BIN_INDEX}`)) {
      needed.push(...await shardsOf(`${snapshot}/${BIN_INDEX}`));
    } else if (!(await exists(`${snapshot}/${BIN}`))) needed.push("model.safetensors");
  }
  for (const file of needed) {
    if (!(await exists(`${snapshot}/${file}`))) {
      throw hubError(ctx, "offline", `${offline} it is not in the cache (${snapshot})`, file);
    }
  }
  return snapshot;
}

// ---------------------------------------------------------------------------------------------
// Online

function hubError(
  ctx: Ctx,
  kind: HubErrorKind,
  what: string,
  file?: string,
  cause?: unknown,
): HubError {
  const options = cause === undefined ? { file } : { file, cause };
  return new HubError(kind, ctx.repoId, ctx.revision, what, options);
}

/** The typed error for an HTTP error status of the hub. */
function statusError(ctx: Ctx, status: number, file?: string, cause?: unknown): HubError {
  const page = `${ctx.hubUrl}/${ctx.repoId}`;
  if (status === 403) {
    return hubError(
      ctx,
      "auth",
      "access denied (HTTP 403): the model is gated and the token that was sent has not been " +
        `granted access. Accept the model's licence on ${page} as the token's owner, then pass ` +
        "that token (the `token` option or HF_TOKEN)",
      file,
      cause,
    );
  }
  if (status === 401) {
    const sent = ctx.token === undefined
      ? "no token was sent"
      : "the token that was sent is invalid or has no access to it";
    return hubError(
      ctx,
      "auth",
      `access denied (HTTP 401): the model is gated or private (or does not exist) and ${sent}. ` +
        `Accept the model's licence on ${page} and pass a token with read access (the \`token\` ` +
        "option or HF_TOKEN)",
      file,
      cause,
    );
  }
  if (status === 404) {
    const what = file === undefined ? "no such model or revision" : "no such file at this revision";
    return hubError(ctx, "not_found", `${what} (HTTP 404)`, file, cause);
  }
  return hubError(ctx, "http", `the hub answered HTTP ${status}`, file, cause);
}

/**
 * Runs a call of npm:@huggingface/hub with a fetch that gives up after the stall timeout, turns
 * a failed or timed-out request into a `network` HubError naming the host, and maps the
 * library's HubApiError to a typed error.
 */
async function api<T>(ctx: Ctx, call: (fetch: typeof globalThis.fetch) => Promise<T>): Promise<T> {
  const host = new URL(ctx.hubUrl).host;
  const unreachable = (e: unknown) => {
    const why = e instanceof DOMException && e.name === "TimeoutError"
      ? `no answer within ${ctx.stallMs / 1000} s`
      : (e as Error).message;
    return hubError(
      ctx,
      "network",
      `cannot reach ${host} (${why}); set HF_HUB_OFFLINE=1 to use only the files already in the cache`,
      undefined,
      e,
    );
  };
  const guarded: typeof globalThis.fetch = async (input, init) => {
    try {
      return await fetch(input, { ...init, signal: AbortSignal.timeout(ctx.stallMs) });
    } catch (e) {
      throw unreachable(e);
    }
  };
  try {
    return await call(guarded);
  } catch (e) {
    if (e instanceof HubApiError) throw statusError(ctx, e.statusCode, undefined, e);
    if (e instanceof DOMException && e.name === "TimeoutError") throw unreachable(e);
    throw e;
  }
}

/** The repo files to fetch: `allowPatterns` or {@link CAUSAL_LM_FILES}, sorted. */
function select(ctx: Ctx, repoFiles: Set<string>): string[] {
  const patterns = (ctx.opts.allowPatterns ?? CAUSAL_LM_FILES).map((p) =>
    new RegExp(
      `^${p.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".")}$`,
    )
  );
  const wanted = [...repoFiles].filter((f) => patterns.some((p) => p.test(f))).sort();
  for (const f of wanted) {
    if (!isRelativePath(f)) throw hubError(ctx, "http", "the hub listed an unsafe file path", f);
  }
  if (ctx.opts.allowPatterns) return wanted;
  const ggufs = [...repoFiles].filter((f) => /\.gguf$/i.test(f)).sort();
  if (!repoFiles.has("config.json")) {
    throw hubError(
      ctx,
      "not_found",
      ggufs.length > 0
        ? `not in the repo, which holds GGUF files: choose one with ggufFile (--gguf-file): ${
          ggufs.slice(0, 12).join(", ")
        }${ggufs.length > 12 ? ", ..." : ""}`
        : "not in the repo; a causal-LM checkpoint needs it",
      "config.json",
    );
  }
  if (repoFiles.has("model.safetensors")) return wanted.filter((f) => f !== INDEX); // as transformers
  if (!repoFiles.has(INDEX)) {
    // No safetensors: torch.save's pytorch_model.bin (sharded with an index, or one file).
    if (repoFiles.has(BIN_INDEX)) return [...wanted, BIN_INDEX].sort();
    if (repoFiles.has(BIN)) return [...wanted, BIN].sort();
    throw hubError(
      ctx,
      "not_found",
      "the repo has neither model.safetensors(.index.json) nor pytorch_model.bin(.index.json) " +
        (ggufs.length > 0
          ? `(it holds GGUF files: choose one with ggufFile: ${ggufs.slice(0, 12).join(", ")})`
          : "(safetensors checkpoints, or a GGUF file with ggufFile)"),
    );
  }
  return wanted;
}

/**
 * Makes `names` present in the snapshot of `commit`: links blobs the cache already holds and
 * downloads the others (one paths-info request describes every missing file).
 */
async function fetchFiles(ctx: Ctx, commit: string, names: string[], report: boolean) {
  const missing: string[] = [];
  for (const name of names) {
    if (!(await exists(`${snapshotDir(ctx, commit)}/${name}`))) missing.push(name);
  }
  if (missing.length === 0) return;
  const infos = await api(ctx, (fetch) =>
    pathsInfo({
      repo: { type: "model", name: ctx.repoId },
      paths: missing,
      revision: commit,
      hubUrl: ctx.hubUrl,
      accessToken: ctx.token,
      fetch,
    }));
  const byPath = new Map(infos.map((i) => [i.path, i]));
  const files = missing.map((name): RemoteFile => {
    const i = byPath.get(name);
    const f = i?.lfs
      ? { name, blob: i.lfs.oid, size: i.lfs.size, lfs: true }
      : { name, blob: i?.oid ?? "", size: i?.size ?? 0, lfs: false };
    if (i?.type !== "file" || !BLOB_NAME.test(f.blob)) {
      throw hubError(ctx, "http", "the hub's paths-info gives no usable hash for it", name);
    }
    return f;
  });
  const blobs = `${ctx.cacheDir}/${ctx.folder}/blobs`;
  const todo = new Set<RemoteFile>();
  for (const f of files) if (!(await exists(`${blobs}/${f.blob}`))) todo.add(f);
  const total = [...todo].reduce((s, f) => s + f.size, 0);
  const bar = progress(`download ${ctx.repoId}`, total, { quiet: ctx.opts.quiet || !report });
  let done = 0;
  const onBytes = (delta: number) => {
    done += delta;
    bar.update(done);
    if (report) ctx.opts.onProgress?.(done, total);
  };
  try {
    for (const f of files) {
      if (todo.has(f)) await downloadBlob(ctx, commit, f, onBytes);
      await link(ctx, commit, f);
    }
  } finally {
    bar.done();
  }
}

/** A connection that broke, stalled or got a 5xx: worth another try from where it stopped. */
class Interrupted extends Error {}

/** The hash the hub names a blob by, fed incrementally: sha256, or git's sha1 of "blob N\0"+data. */
class BlobHash {
  #hash!: Hash;
  bytes = 0;

  constructor(readonly file: RemoteFile) {
    this.reset();
  }

  reset() {
    this.#hash = createHash(this.file.lfs ? "sha256" : "sha1");
    if (!this.file.lfs) this.#hash.update(`blob ${this.file.size}\0`);
    this.bytes = 0;
  }

  update(chunk: Uint8Array) {
    this.#hash.update(chunk);
    this.bytes += chunk.length;
  }

  /** Restarts from the first `upto` bytes of `file` (a partial download left by an earlier run). */
  async rehash(file: Deno.FsFile, upto: number) {
    this.reset();
    await file.seek(0, Deno.SeekMode.Start);
    const buf = new Uint8Array(1 << 20);
    while (this.bytes < upto) {
      const n = await file.read(buf.subarray(0, Math.min(buf.length, upto - this.bytes)));
      if (n === null) break;
      this.update(buf.subarray(0, n));
    }
  }

  hex(): string {
    return this.#hash.digest("hex");
  }
}

/**
 * Downloads one blob into `blobs/<hash>.incomplete` (resuming what is there), verifies it and
 * renames it to `blobs/<hash>`, holding Python's lock file for that blob meanwhile.
 */
async function downloadBlob(
  ctx: Ctx,
  commit: string,
  f: RemoteFile,
  onBytes: (delta: number) => void,
): Promise<void> {
  const blob = `${ctx.cacheDir}/${ctx.folder}/blobs/${f.blob}`;
  const part = `${blob}.incomplete`;
  const locks = `${ctx.cacheDir}/.locks/${ctx.folder}`;
  await Deno.mkdir(blob.slice(0, blob.lastIndexOf("/")), { recursive: true });
  await Deno.mkdir(locks, { recursive: true });
  using lock = await Deno.open(`${locks}/${f.blob}.lock`, { create: true, write: true });
  await lock.lock(true);
  if (await exists(blob)) return; // another process finished it while we waited for the lock

  const path = f.name.split("/").map(encodeURIComponent).join("/");
  const url = `${ctx.hubUrl}/${ctx.repoId}/resolve/${commit}/${path}`;
  const hash = new BlobHash(f);
  let counted = 0;
  const at = (bytes: number) => {
    onBytes(bytes - counted);
    counted = bytes;
  };
  for (let attempt = 0;; attempt++) {
    try {
      await fetchInto(ctx, url, part, f, hash, at);
      break;
    } catch (e) {
      if (!(e instanceof Interrupted)) throw e;
      if (attempt === RETRIES) {
        throw hubError(
          ctx,
          "network",
          `download from ${new URL(url).host} failed ${RETRIES + 1} times (last: ${e.message}); ` +
            `${counted} of ${f.size} bytes are kept in ${part} and the next call resumes there`,
          f.name,
          e,
        );
      }
      await new Promise((r) => setTimeout(r, RETRY_BASE_MS * 2 ** attempt));
    }
  }
  const size = (await Deno.stat(part)).size;
  const got = hash.hex();
  if (size !== f.size || got !== f.blob) {
    await Deno.remove(part);
    throw hubError(
      ctx,
      "integrity",
      `the download has ${size} bytes with ${f.lfs ? "sha256" : "git sha1"} ${got}; the hub ` +
        `announced ${f.size} bytes with ${f.blob}. The partial file was removed; run again`,
      f.name,
    );
  }
  await Deno.rename(part, blob);
}

/**
 * One attempt: GET the resolve URL (following the hub's redirect to its CDN; fetch drops the
 * Authorization header on the cross-origin hop) from the size already in `part`, appending to
 * it. A 200 answer to a range request restarts the file. Throws {@link Interrupted} for what a
 * retry may fix.
 */
async function fetchInto(
  ctx: Ctx,
  url: string,
  part: string,
  f: RemoteFile,
  hash: BlobHash,
  at: (bytes: number) => void,
): Promise<void> {
  using file = await Deno.open(part, { read: true, write: true, create: true });
  let have = (await file.stat()).size;
  if (have > f.size) {
    await file.truncate(0);
    have = 0;
  }
  if (hash.bytes !== have) await hash.rehash(file, have);
  at(have);
  if (have === f.size) return;

  // identity: byte ranges and the hash are about the file itself, never a compressed form.
  const headers = new Headers({ "accept-encoding": "identity" });
  if (ctx.token !== undefined) headers.set("authorization", `Bearer ${ctx.token}`);
  if (have > 0) headers.set("range", `bytes=${have}-`);
  const abort = new AbortController();
  let timer = setTimeout(() => abort.abort(), ctx.stallMs);
  const interrupted = (e: unknown) =>
    new Interrupted(
      abort.signal.aborted ? `no data for ${ctx.stallMs / 1000} s` : (e as Error).message,
    );
  try {
    let res: Response;
    try {
      res = await fetch(url, { headers, signal: abort.signal, redirect: "follow" });
    } catch (e) {
      throw interrupted(e);
    }
    if (res.status === 206) {
      const start = Number(/^bytes (\d+)-/.exec(res.headers.get("content-range") ?? "")?.[1]);
      if (start !== have) {
        await res.body?.cancel();
        throw hubError(ctx, "http", `asked for bytes ${have}- and got range ${start}-`, f.name);
      }
    } else if (res.status === 200) {
      if (have > 0) {
        await file.truncate(0);
        hash.reset();
        have = 0;
        at(0);
      }
    } else {
      await res.body?.cancel();
      if (res.status === 429 || res.status >= 500) throw new Interrupted(`HTTP ${res.status}`);
      throw statusError(ctx, res.status, f.name);
    }
    await file.seek(have, Deno.SeekMode.Start);
    const reader = res.body!.getReader();
    try {
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (e) {
          throw interrupted(e);
        }
        if (chunk.done) break;
        clearTimeout(timer);
        timer = setTimeout(() => abort.abort(), ctx.stallMs);
        for (let off = 0; off < chunk.value.length;) {
          off += await file.write(chunk.value.subarray(off));
        }
        hash.update(chunk.value);
        have += chunk.value.length;
        at(have);
      }
    } finally {
      await reader.cancel().catch(() => {});
    }
    if (have < f.size) throw new Interrupted(`the connection closed at ${have} of ${f.size} bytes`);
  } finally {
    clearTimeout(timer);
  }
}
