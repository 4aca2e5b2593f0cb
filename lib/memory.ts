/**
 * How much host memory this process may still use: the smaller of the system's available memory
 * and what every enclosing memory cgroup allows (containers, `docker --memory`, systemd slices,
 * cgroup v1 `memory.limit_in_bytes` or v2 `memory.max`), less what is already used there.
 *
 * Page cache counts against a cgroup's limit, but clean file pages are reclaimed before anything
 * is killed, so a cgroup's "used" is its usage minus its file cache. Every level of the hierarchy
 * with a limit is checked (a parent's limit binds its children, and siblings share it).
 *
 * Everything is read from files under a root directory (default `/`) so tests run on a fake tree.
 *
 * @module
 */

/** One memory cgroup level with a limit. */
export interface CgroupLevel {
  /** The cgroup directory that holds the limit. */
  dir: string;
  /** cgroup v1 (memory.limit_in_bytes) or v2 (memory.max). */
  version: 1 | 2;
  /** The limit, bytes. */
  limit: number;
  /** Current usage, bytes (page cache included). */
  usage: number;
  /** File-backed page cache inside `usage` (reclaimable), bytes. */
  file: number;
}

/** What {@link readMemoryLimits} found. */
export interface MemoryLimits {
  /** Bytes the process may still use, or null when nothing could be read. */
  available: number | null;
  /** The system's available memory (MemAvailable), or null. */
  systemAvailable: number | null;
  /** The binding cgroup level (the one leaving the least), or null when none limits memory. */
  cgroup: CgroupLevel | null;
  /** One line saying where `available` came from. */
  source: string;
}

/** Limits at or above this are "no limit" (v1 writes 2^63 rounded down to a page). */
const UNLIMITED = 2 ** 62;

/** Reads a file's text, or null (missing, or not permitted: the caller falls back). */
export type FileReader = (path: string) => string | null;

function readWithDeno(path: string): string | null {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return null;
  }
}

function num(text: string | null): number | null {
  if (text === null) return null;
  const t = text.trim();
  if (t === "max") return Infinity;
  const n = Number(t);
  return Number.isFinite(n) ? n : null;
}

/** `key value` lines (memory.stat, meminfo) → map. */
function keyed(text: string | null): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text?.split("\n") ?? []) {
    const [k, v] = line.split(/[:\s]+/);
    if (k && v !== undefined && Number.isFinite(Number(v))) out.set(k, Number(v));
  }
  return out;
}

interface Mount {
  root: string;
  point: string;
  fstype: string;
  superOptions: string[];
}

function mounts(root: string, read: FileReader): Mount[] {
  const out: Mount[] = [];
  for (const line of read(`${root}/proc/self/mountinfo`)?.split("\n") ?? []) {
    const [pre, post] = line.split(" - ");
    if (!post) continue;
    const f = pre.split(" ");
    const [fstype, , opts] = post.split(" ");
    out.push({ root: f[3], point: f[4], fstype, superOptions: (opts ?? "").split(",") });
  }
  return out;
}

/** The memory cgroup directories from the process's own up to its hierarchy's root. */
function cgroupDirs(root: string, read: FileReader): { dirs: string[]; version: 1 | 2 } | null {
  const lines = read(`${root}/proc/self/cgroup`)?.split("\n") ?? [];
  const all = mounts(root, read);
  // v1: "N:memory:/path" (the memory controller on its own hierarchy); v2: "0::/path".
  const v1 = lines.map((l) => l.split(":")).find((p) => p[1]?.split(",").includes("memory"));
  const v2 = lines.map((l) => l.split(":")).find((p) => p[0] === "0" && p[1] === "");
  let cg: { path: string; mount: Mount | undefined; version: 1 | 2 } | null = null;
  if (v1) {
    const mount = all.find((m) => m.fstype === "cgroup" && m.superOptions.includes("memory"));
    cg = { path: v1.slice(2).join(":"), mount, version: 1 };
  } else if (v2) {
    cg = {
      path: v2.slice(2).join(":"),
      mount: all.find((m) => m.fstype === "cgroup2"),
      version: 2,
    };
  }
  if (!cg) return null;
  const point = cg.mount?.point ?? (cg.version === 1 ? "/sys/fs/cgroup/memory" : "/sys/fs/cgroup");
  // A container sees its own cgroup as the mount's root: strip that prefix.
  const mountRoot = cg.mount?.root ?? "/";
  let rel = cg.path;
  if (mountRoot !== "/" && (rel === mountRoot || rel.startsWith(`${mountRoot}/`))) {
    rel = rel.slice(mountRoot.length);
  }
  const parts = rel.split("/").filter((p) => p.length > 0);
  const dirs: string[] = [];
  for (let n = parts.length; n >= 0; n--) {
    dirs.push(`${root}${point}${n > 0 ? `/${parts.slice(0, n).join("/")}` : ""}`);
  }
  return { dirs, version: cg.version };
}

function level(dir: string, version: 1 | 2, read: FileReader): CgroupLevel | null {
  if (version === 1) {
    const limit = num(read(`${dir}/memory.limit_in_bytes`));
    const usage = num(read(`${dir}/memory.usage_in_bytes`));
    if (limit === null || usage === null || limit >= UNLIMITED) return null;
    const stat = keyed(read(`${dir}/memory.stat`));
    const file = (stat.get("total_active_file") ?? stat.get("active_file") ?? 0) +
      (stat.get("total_inactive_file") ?? stat.get("inactive_file") ?? 0);
    return { dir, version, limit, usage, file };
  }
  const limit = num(read(`${dir}/memory.max`));
  const usage = num(read(`${dir}/memory.current`));
  if (limit === null || usage === null || limit >= UNLIMITED) return null;
  const stat = keyed(read(`${dir}/memory.stat`));
  return { dir, version, limit, usage, file: stat.get("file") ?? 0 };
}

const MiB = 1 << 20;
const mb = (n: number) => `${Math.round(n / MiB)} MiB`;

/**
 * Reads the memory this process may still use. `systemAvailable` overrides the MemAvailable read
 * from `<root>/proc/meminfo` (the engine passes Deno.systemMemoryInfo() when granted). `read`
 * reads the files (default: Deno, which allows /proc and /sys only with --allow-all; the engine
 * passes its backend's reader).
 */
export function readMemoryLimits(
  opts: { root?: string; systemAvailable?: number | null; read?: FileReader } = {},
): MemoryLimits {
  const root = (opts.root ?? "").replace(/\/$/, "");
  const read = opts.read ?? readWithDeno;
  const meminfo = keyed(read(`${root}/proc/meminfo`)).get("MemAvailable");
  const systemAvailable = opts.systemAvailable ?? (meminfo === undefined ? null : meminfo * 1024);
  let binding: CgroupLevel | null = null;
  const found = cgroupDirs(root, read);
  for (const dir of found?.dirs ?? []) {
    const l = level(dir, found!.version, read);
    if (l && (binding === null || free(l) < free(binding))) binding = l;
  }
  const cgFree = binding ? free(binding) : null;
  if (cgFree !== null && (systemAvailable === null || cgFree < systemAvailable)) {
    return {
      available: cgFree,
      systemAvailable,
      cgroup: binding,
      source: `cgroup v${binding!.version} ${binding!.dir.slice(root.length)}: limit ${
        mb(binding!.limit)
      }, ${mb(binding!.usage - binding!.file)} used besides page cache`,
    };
  }
  return {
    available: systemAvailable,
    systemAvailable,
    cgroup: binding,
    source: systemAvailable === null
      ? "unknown (neither cgroup limits nor MemAvailable could be read)"
      : `MemAvailable ${mb(systemAvailable)}`,
  };
}

/** What a cgroup level leaves: its limit less its usage besides reclaimable page cache. */
function free(l: CgroupLevel): number {
  return Math.max(0, l.limit - Math.max(0, l.usage - l.file));
}

/** Parses "400M", "1.5G", "8GiB", "123456" (bytes) → bytes. */
export function parseBytes(text: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$/i.exec(text);
  if (!m) return null;
  const unit = { "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase()]!;
  return Math.round(Number(m[1]) * unit);
}
