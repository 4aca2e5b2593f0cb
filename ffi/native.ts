/**
 * Where the native backend library comes from, for a checkout and for a package imported from JSR
 * (or any https: URL), which cannot carry a `.so` through the module graph. In order:
 *
 * 1. an explicit path: `libraryPath`, `$RABBITLLM_LIB` / `$RABBITLLM_CUDA_LIB`;
 * 2. a local build beside a `file:` module (`build/`, `deno task build`);
 * 3. the per-version cache `$XDG_CACHE_HOME/rabbitllm/<version>/<os>-<arch>/` (else
 *    `$HOME/.cache/...`), used only while the library's sha256 and the sources it was built from
 *    match what is recorded beside it (`<lib>.json`); anything else is rebuilt, never loaded;
 * 4. {@link ensureLibrary} only: a build from the C (CUDA) sources shipped in the package with the
 *    system compiler (cc/gcc, OpenMP, `-march=native` when accepted; nvcc for CUDA) into the cache —
 *    under a lock, to a temporary name then renamed, the compiler's output in the error when it
 *    fails. A remote package's sources are fetched from the module's own URL (the list and their
 *    sha256: ffi/native_sources.ts) and checked before compiling;
 * 5. {@link ensureLibrary} only: a prebuilt library downloaded into the cache, checked against the
 *    sha256 pinned in this file (`$RABBITLLM_LIB_URL` + `$RABBITLLM_LIB_SHA256`, or the CUDA ones,
 *    point elsewhere, e.g. at a local server in tests).
 *
 * Steps 1–3 are synchronous ({@link findLibrary}, used by `Backend.open`); 4–5 need `fetch` and a
 * subprocess, hence `ensureLibrary` (used by `Backend.openAsync` and `AutoModel.fromPretrained`).
 * Environment variables are read only when granted (`--allow-env=NAME`), never prompted for.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { BackendError } from "../lib/errors.ts";
import { NATIVE_SOURCES, PACKAGE_VERSION } from "./native_sources.ts";

/** Which backend library. */
export type LibraryKind = "cpu" | "cuda";

/** The library's file name per backend. */
export const LIB_FILE: Record<LibraryKind, string> = {
  cpu: "librabbitllm_cpu.so",
  cuda: "librabbitllm_cuda.so",
};
/** The environment variable that names an explicit library path. */
export const LIB_ENV: Record<LibraryKind, string> = {
  cpu: "RABBITLLM_LIB",
  cuda: "RABBITLLM_CUDA_LIB",
};
/** The environment variables that override the prebuilt download (URL, sha256). */
export const LIB_URL_ENV: Record<LibraryKind, [string, string]> = {
  cpu: ["RABBITLLM_LIB_URL", "RABBITLLM_LIB_SHA256"],
  cuda: ["RABBITLLM_CUDA_LIB_URL", "RABBITLLM_CUDA_LIB_SHA256"],
};
const BUILD_TASK: Record<LibraryKind, string> = {
  cpu: "deno task build",
  cuda: "deno task build:cuda",
};

/** A prebuilt library: where to download it and the sha256 it must have. */
export interface Prebuilt {
  /** An http(s) URL. */
  url: string;
  /** Lowercase hex sha256 of the file. */
  sha256: string;
}

/**
 * Prebuilt libraries of this version, per `<kind>-<os>-<arch>`, pinned by sha256; filled by the
 * release (none is published yet, so a machine without a compiler needs `$RABBITLLM_LIB_URL` or
 * `$RABBITLLM_LIB`).
 */
export const PREBUILT: Readonly<Record<string, Prebuilt>> = {};

/** The package root this module belongs to (a `file:` or remote URL). */
const PACKAGE_ROOT = new URL("../", import.meta.url);

function granted(desc: Deno.PermissionDescriptor): boolean {
  try {
    return Deno.permissions.querySync(desc).state === "granted";
  } catch {
    return false;
  }
}

function envVar(name: string): string | undefined {
  if (!granted({ name: "env", variable: name })) return;
  return Deno.env.get(name) || undefined;
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function sha256(bytes: Uint8Array | string): string {
  return createHash("sha256").update(bytes).digest("hex");
}

function absolute(path: string): string {
  return path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
}

/**
 * The cache directory for this version and platform, or undefined when neither
 * `$XDG_CACHE_HOME` nor `$HOME` is readable (`--allow-env=XDG_CACHE_HOME,HOME`).
 */
export function cacheDir(): string | undefined {
  const xdg = envVar("XDG_CACHE_HOME");
  const home = envVar("HOME");
  const base = xdg ? absolute(xdg) : home ? `${absolute(home)}/.cache` : undefined;
  if (!base) return;
  return `${base}/rabbitllm/${PACKAGE_VERSION}/${Deno.build.os}-${Deno.build.arch}`;
}

/** What is recorded beside a cached library (`<lib>.json`). */
interface CacheRecord {
  sha256: string;
  /** The digest of the sources it was built from ({@link sourcesDigest}). */
  sources: string;
  origin: "built" | "downloaded";
  /** The compiler command line, or the URL it came from. */
  how: string;
}

/** The sources of this package, as the manifest lists them: [path, sha256]. */
function manifestDigest(files: readonly (readonly [string, string])[]): string {
  return sha256(files.map(([p, h]) => `${p} ${h}\n`).join(""));
}

let localDigest: string | undefined;
/**
 * The digest of the sources a library of this package is built from: for a `file:` module the
 * files on disk (so an edited checkout rebuilds), for a remote one the manifest's.
 */
function sourcesDigest(): string {
  if (PACKAGE_ROOT.protocol !== "file:") return manifestDigest(NATIVE_SOURCES);
  if (localDigest === undefined) {
    localDigest = manifestDigest(NATIVE_SOURCES.map(([p, h]) => {
      try {
        return [p, sha256(Deno.readFileSync(new URL(p, PACKAGE_ROOT)))] as const;
      } catch {
        return [p, h] as const;
      }
    }));
  }
  return localDigest;
}

/** Why a cached library is not used, or null when it is valid. */
function checkCached(lib: string): string | null {
  if (!isFile(lib)) return "absent";
  let rec: CacheRecord;
  try {
    rec = JSON.parse(Deno.readTextFileSync(`${lib}.json`));
  } catch {
    return "no record of its sha256";
  }
  if (rec.sources !== sourcesDigest()) return "built from other sources";
  let bytes: Uint8Array;
  try {
    bytes = Deno.readFileSync(lib);
  } catch (e) {
    return `unreadable (${(e as Error).message})`;
  }
  if (sha256(bytes) !== rec.sha256) return "its sha256 does not match the recorded one";
  return null;
}

/** The cached library of `kind` when it is valid, else undefined (synchronous). */
export function findCached(kind: LibraryKind): string | undefined {
  const dir = cacheDir();
  if (!dir) return;
  const lib = `${dir}/${LIB_FILE[kind]}`;
  return checkCached(lib) === null ? lib : undefined;
}

/**
 * Steps 1–3 of the lookup (explicit, local build, cache): the library's absolute path, or a
 * BackendError that says how to get one. `buildDir` is the local build directory.
 */
export function findLibrary(
  kind: LibraryKind,
  buildDir: URL = new URL("build/", PACKAGE_ROOT),
): string {
  const found = findExplicitOrLocal(kind, buildDir) ?? findCached(kind);
  if (found) return found;
  const dir = cacheDir();
  throw new BackendError(
    "load",
    `the ${kind} backend library ${LIB_FILE[kind]} was not found (${LIB_ENV[kind]} unset, no ${
      buildDir.protocol === "file:" ? `${buildDir.pathname}${LIB_FILE[kind]}` : "local build"
    }, ${dir ? `nothing valid in ${dir}` : "no cache: XDG_CACHE_HOME/HOME not readable"}); ` +
      `build it with \`${BUILD_TASK[kind]}\`, set ${LIB_ENV[kind]} to its path, or open the ` +
      "backend with `await Backend.openAsync()` (AutoModel.fromPretrained does), which builds it " +
      "into the cache",
  );
}

function findExplicitOrLocal(kind: LibraryKind, buildDir: URL): string | undefined {
  const fromEnv = envVar(LIB_ENV[kind]);
  if (fromEnv) {
    const abs = absolute(fromEnv);
    if (!isFile(abs)) throw new BackendError("load", `${LIB_ENV[kind]}=${fromEnv}: no such file`);
    return abs;
  }
  const local = new URL(LIB_FILE[kind], buildDir);
  if (local.protocol === "file:" && isFile(local.pathname)) return local.pathname;
}

/** Options of {@link ensureLibrary}. */
export interface EnsureOptions {
  /** The local build directory (default: `build/` beside the package). */
  buildDir?: URL;
  /** Where the package's sources are (default: the package root, a file: or remote URL). */
  sourceRoot?: URL;
  /** The prebuilt to download when no compiler is there (default: env, then {@link PREBUILT}). */
  prebuilt?: Prebuilt;
  /** false: never compile (download only). */
  build?: boolean;
  /** Progress lines (default: stderr). */
  log?: (line: string) => void;
}

/**
 * The backend library of `kind`, built or downloaded into the cache when the synchronous lookup
 * finds none: its absolute path. Concurrent callers (processes) wait on one lock; the loser reuses
 * the winner's result.
 */
export async function ensureLibrary(
  kind: LibraryKind,
  opts: EnsureOptions = {},
): Promise<string> {
  const buildDir = opts.buildDir ?? new URL("build/", PACKAGE_ROOT);
  const found = findExplicitOrLocal(kind, buildDir);
  if (found) return found;
  const dir = cacheDir();
  if (!dir) {
    throw new BackendError(
      "load",
      `no ${LIB_FILE[kind]}: ${LIB_ENV[kind]} is unset and there is no cache directory ` +
        "(grant --allow-env=XDG_CACHE_HOME,HOME, or set " + LIB_ENV[kind] + ")",
    );
  }
  const lib = `${dir}/${LIB_FILE[kind]}`;
  const log = opts.log ?? ((line: string) => console.error(line));
  let why = checkCached(lib);
  if (why === null) return lib;
  await Deno.mkdir(dir, { recursive: true });
  const lock = await Deno.open(`${lib}.lock`, { create: true, write: true });
  try {
    await lock.lock(true);
    why = checkCached(lib); // another process may have made it while we waited
    if (why === null) return lib;
    if (why !== "absent") log(`rabbitllm: ${lib}: ${why}; replacing it`);
    return await makeLibrary(kind, lib, opts, log);
  } finally {
    lock.close(); // releases the lock
  }
}

async function makeLibrary(
  kind: LibraryKind,
  lib: string,
  opts: EnsureOptions,
  log: (line: string) => void,
): Promise<string> {
  const prebuilt = opts.prebuilt ?? prebuiltFor(kind);
  let buildError: Error | undefined;
  const compiler = opts.build === false ? undefined : await findCompiler(kind);
  if (compiler) {
    try {
      await buildLibrary(kind, lib, compiler, opts.sourceRoot ?? PACKAGE_ROOT, log);
      return lib;
    } catch (e) {
      if (!prebuilt) throw e;
      buildError = e as Error;
      log(`rabbitllm: ${(e as Error).message}\nrabbitllm: downloading a prebuilt library instead`);
    }
  }
  if (prebuilt) {
    await download(lib, prebuilt, log);
    return lib;
  }
  const [urlEnv, shaEnv] = LIB_URL_ENV[kind];
  const tool = kind === "cpu" ? "a C compiler with OpenMP (cc or gcc)" : "nvcc (CUDA toolkit)";
  throw new BackendError(
    "load",
    `no ${LIB_FILE[kind]} for ${Deno.build.os}-${Deno.build.arch}: building it needs ${tool} ` +
      `and --allow-run=${kind === "cpu" ? "cc,gcc" : "nvcc,cc,gcc"}; no prebuilt is pinned for ` +
      `this platform (set ${urlEnv} and ${shaEnv}), or set ${LIB_ENV[kind]} to a library you built`,
    { cause: buildError },
  );
}

function prebuiltFor(kind: LibraryKind): Prebuilt | undefined {
  const [urlEnv, shaEnv] = LIB_URL_ENV[kind];
  const url = envVar(urlEnv);
  if (url) {
    const sha = envVar(shaEnv) ?? PREBUILT[`${kind}-${Deno.build.os}-${Deno.build.arch}`]?.sha256;
    if (!sha) throw new BackendError("load", `${urlEnv} is set but ${shaEnv} is not`);
    return { url, sha256: sha.toLowerCase() };
  }
  return PREBUILT[`${kind}-${Deno.build.os}-${Deno.build.arch}`];
}

/** The compilers to use: [C compiler, nvcc (CUDA only)], or undefined when none may run. */
interface Compiler {
  cc: string;
  nvcc?: string;
}

async function runs(cmd: string, args: string[]): Promise<boolean> {
  if (!granted({ name: "run", command: cmd })) return false;
  try {
    const r = await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output();
    return r.success;
  } catch {
    return false;
  }
}

async function findCompiler(kind: LibraryKind): Promise<Compiler | undefined> {
  let cc: string | undefined;
  for (const c of [envVar("CC"), "cc", "gcc"]) {
    if (c && await runs(c, ["--version"])) {
      cc = c;
      break;
    }
  }
  if (!cc) return;
  if (kind === "cpu") return { cc };
  for (const n of [envVar("NVCC"), "nvcc", "/usr/local/cuda/bin/nvcc"]) {
    if (n && await runs(n, ["--version"])) return { cc, nvcc: n };
  }
}

async function run(cmd: string, args: string[], cwd: string): Promise<string> {
  const r = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  if (!r.success) {
    throw new BackendError("build", `${cmd} ${args.join(" ")} failed (exit ${r.code}):\n${text}`);
  }
  return text;
}

/** A flag set is accepted when a tiny program compiles and links with it. */
async function accepts(cc: string, dir: string, flags: string[], code: string): Promise<boolean> {
  const src = `${dir}/probe.c`;
  await Deno.writeTextFile(src, code);
  try {
    await run(cc, [...flags, "-o", `${dir}/probe.out`, src], dir);
    return true;
  } catch {
    return false;
  } finally {
    await Deno.remove(`${dir}/probe.out`).catch(() => {});
  }
}

/**
 * Promise.all that waits for every promise before throwing the first failure, so no fetch or
 * compiler is still writing into a folder its caller is about to remove.
 */
async function allSettled<T>(ps: Promise<T>[]): Promise<T[]> {
  const rs = await Promise.allSettled(ps);
  const bad = rs.find((r) => r.status === "rejected");
  if (bad) throw (bad as PromiseRejectedResult).reason;
  return rs.map((r) => (r as PromiseFulfilledResult<T>).value);
}

/**
 * Puts the sources into `work` (remote: fetched from `root` and checked against the manifest) and
 * returns the directory to compile in.
 */
async function stageSources(root: URL, work: string, kind: LibraryKind): Promise<string> {
  if (root.protocol === "file:") return root.pathname;
  const wanted = NATIVE_SOURCES.filter(([p]) =>
    kind === "cuda" || p.startsWith("cpu/") || p.startsWith("ffi/")
  );
  await allSettled(wanted.map(async ([p, hash]) => {
    const url = new URL(p, root);
    let bytes: Uint8Array;
    try {
      const res = await fetch(url);
      if (!res.ok) {
        await res.body?.cancel();
        throw new Error(`HTTP ${res.status}`);
      }
      bytes = new Uint8Array(await res.arrayBuffer());
    } catch (e) {
      throw new BackendError(
        "build",
        `fetching the source ${url}: ${(e as Error).message} (needs --allow-net=${url.host})`,
        { cause: e },
      );
    }
    if (sha256(bytes) !== hash) {
      throw new BackendError("build", `${url}: sha256 differs from ffi/native_sources.ts`);
    }
    const path = `${work}/${p}`;
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
    await Deno.writeFile(path, bytes);
  }));
  return work;
}

/** The C flags cpu/build.sh uses, less what this compiler rejects (-march=native). */
async function cpuFlags(cc: string, work: string): Promise<string[]> {
  const omp = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n";
  if (!await accepts(cc, work, ["-fopenmp"], omp)) {
    throw new BackendError(
      "build",
      `${cc} cannot build with OpenMP (-fopenmp, omp.h): install gcc (libgomp) or libomp`,
    );
  }
  const simd = (await accepts(cc, work, ["-march=native"], "int main(void) { return 0; }\n"))
    ? ["-march=native"]
    : [];
  const nodelete = Deno.build.os === "linux" ? ["-Wl,-z,nodelete"] : [];
  return [
    "-std=c11",
    "-O3",
    ...simd,
    "-fopenmp",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    "-Wall",
    "-Wextra",
    ...nodelete,
  ];
}

async function buildLibrary(
  kind: LibraryKind,
  lib: string,
  compiler: Compiler,
  root: URL,
  log: (line: string) => void,
): Promise<void> {
  const dir = lib.slice(0, lib.lastIndexOf("/"));
  const work = await Deno.makeTempDir({ dir, prefix: `build-${kind}-` });
  const tmp = `${lib}.tmp.${Deno.pid}`;
  const t0 = performance.now();
  try {
    const src = await stageSources(root, work, kind);
    const cpuSrcs = (root.protocol === "file:"
      // A checkout compiles what is on disk, as cpu/build.sh does (new files included).
      ? [...Deno.readDirSync(`${src}/cpu`)].map((e) => `cpu/${e.name}`)
      : NATIVE_SOURCES.map(([p]) => p))
      .filter((p) => p.endsWith(".c") && !/^cpu\/(test|bench)_/.test(p) && p.startsWith("cpu/"))
      .sort();
    let how: string;
    if (kind === "cpu") {
      const args = [...await cpuFlags(compiler.cc, work), "-Iffi", "-o", tmp, ...cpuSrcs, "-lm"];
      how = `${compiler.cc} ${args.join(" ")}`;
      log(`rabbitllm: building the cpu backend from source: ${how}`);
      await run(compiler.cc, args, src);
    } else {
      how = await buildCuda(compiler, src, work, tmp, log);
    }
    const bytes = await Deno.readFile(tmp);
    const record: CacheRecord = {
      sha256: sha256(bytes),
      sources: sourcesDigest(),
      origin: "built",
      how,
    };
    await Deno.rename(tmp, lib);
    await writeRecord(lib, record);
    log(
      `rabbitllm: built ${lib} (sha256 ${record.sha256.slice(0, 12)}…) in ${
        ((performance.now() - t0) / 1000).toFixed(1)
      } s`,
    );
  } finally {
    await Deno.remove(tmp).catch(() => {});
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

/** cuda/build.sh's steps, without its incremental bookkeeping: objects, sysfile.o, the link. */
async function buildCuda(
  compiler: Compiler,
  src: string,
  work: string,
  out: string,
  log: (line: string) => void,
): Promise<string> {
  const nvcc = compiler.nvcc!;
  const cus = NATIVE_SOURCES.map(([p]) => p).filter((p) =>
    p.startsWith("cuda/") && p.endsWith(".cu")
  );
  log(`rabbitllm: building the cuda backend from source with ${nvcc} (${cus.length} files)`);
  const objs = await allSettled(cus.map(async (f) => {
    const o = `${work}/${f.slice(5, -3)}.o`;
    await run(nvcc, [
      "--threads",
      "0",
      "-O3",
      "-std=c++17",
      "-c",
      "-gencode",
      "arch=compute_80,code=sm_80",
      "-gencode",
      "arch=compute_90,code=sm_90",
      "-gencode",
      "arch=compute_90,code=compute_90",
      "-Xcompiler",
      "-fPIC,-fvisibility=hidden,-Wall,-Wextra",
      "-Iffi",
      "-o",
      o,
      f,
    ], src);
    return o;
  }));
  const sysfile = `${work}/sysfile.o`;
  await run(compiler.cc, [
    "-std=c11",
    "-O2",
    "-fPIC",
    "-fvisibility=hidden",
    "-Wall",
    "-Wextra",
    "-Iffi",
    "-c",
    "-o",
    sysfile,
    "cpu/sysfile.c",
  ], src);
  const link = [
    "-shared",
    "-cudart",
    "static",
    "-Xlinker",
    "--version-script=cuda/exports.map",
    "-Xlinker",
    "-Bsymbolic",
    "-o",
    out,
    ...objs,
    sysfile,
  ];
  await run(nvcc, link, src);
  return `${nvcc} ${link.join(" ")}`;
}

async function writeRecord(lib: string, record: CacheRecord): Promise<void> {
  const tmp = `${lib}.json.tmp.${Deno.pid}`;
  await Deno.writeTextFile(tmp, JSON.stringify(record, null, 1) + "\n");
  await Deno.rename(tmp, `${lib}.json`);
}

async function download(lib: string, pre: Prebuilt, log: (line: string) => void): Promise<void> {
  const tmp = `${lib}.tmp.${Deno.pid}`;
  log(`rabbitllm: downloading ${pre.url} into ${lib}`);
  try {
    let res: Response;
    try {
      res = await fetch(pre.url);
    } catch (e) {
      throw new BackendError(
        "load",
        `downloading ${pre.url}: ${(e as Error).message} (needs --allow-net=${
          new URL(pre.url).host
        })`,
        { cause: e },
      );
    }
    if (!res.ok || !res.body) {
      await res.body?.cancel();
      throw new BackendError("load", `downloading ${pre.url}: HTTP ${res.status}`);
    }
    const hash = createHash("sha256");
    const file = await Deno.open(tmp, { create: true, write: true, truncate: true });
    try {
      for await (const chunk of res.body) {
        hash.update(chunk);
        let off = 0;
        while (off < chunk.length) off += await file.write(chunk.subarray(off));
      }
    } finally {
      file.close();
    }
    const got = hash.digest("hex");
    if (got !== pre.sha256.toLowerCase()) {
      throw new BackendError(
        "load",
        `downloaded ${pre.url} has sha256 ${got}, expected ${pre.sha256}: not used`,
      );
    }
    await Deno.chmod(tmp, 0o755).catch(() => {});
    await Deno.rename(tmp, lib);
    await writeRecord(lib, {
      sha256: got,
      sources: sourcesDigest(),
      origin: "downloaded",
      how: pre.url,
    });
  } finally {
    await Deno.remove(tmp).catch(() => {});
  }
}
