/**
 * readMemoryLimits on fake /proc and /sys/fs/cgroup trees: cgroup v1 and v2, nested limits, a
 * container's cgroup namespace, unlimited cgroups, and what is left when nothing can be read.
 */
import assert from "node:assert/strict";
import { parseBytes, readMemoryLimits } from "../lib/memory.ts";

const MiB = 2 ** 20;

const roots: string[] = [];
globalThis.addEventListener("unload", () => {
  for (const r of roots) Deno.removeSync(r, { recursive: true });
});

/** Writes `files` (path → content) under a fresh temporary root; returns the root. */
function tree(files: Record<string, string>): string {
  const root = Deno.makeTempDirSync({ prefix: "rabbitllm-memory-" });
  roots.push(root);
  for (const [path, text] of Object.entries(files)) {
    Deno.mkdirSync(`${root}${path.slice(0, path.lastIndexOf("/"))}`, { recursive: true });
    Deno.writeTextFileSync(`${root}${path}`, text);
  }
  return root;
}

const MEMINFO =
  `MemTotal:       24683792 kB\nMemFree:        20000000 kB\nMemAvailable:   16777216 kB\n`;
const V1_MOUNTS = [
  "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755",
  "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
  "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw",
].join("\n");
const UNLIMITED_V1 = "9223372036854771712";

function v1Stat(activeFile: number, inactiveFile: number): string {
  return `cache 0\nrss 0\ntotal_active_file ${activeFile}\ntotal_inactive_file ${inactiveFile}\n`;
}

Deno.test("memory: cgroup v1 limit less usage besides page cache binds below MemAvailable", () => {
  const root = tree({
    "/proc/meminfo": MEMINFO,
    "/proc/self/mountinfo": V1_MOUNTS,
    "/proc/self/cgroup": "9:name=systemd:/\n4:memory:/bench/run1\n0::/\n",
    "/sys/fs/cgroup/memory/memory.limit_in_bytes": UNLIMITED_V1,
    "/sys/fs/cgroup/memory/memory.usage_in_bytes": String(3000 * MiB),
    "/sys/fs/cgroup/memory/bench/memory.limit_in_bytes": UNLIMITED_V1,
    "/sys/fs/cgroup/memory/bench/memory.usage_in_bytes": String(200 * MiB),
    "/sys/fs/cgroup/memory/bench/run1/memory.limit_in_bytes": String(400 * MiB),
    "/sys/fs/cgroup/memory/bench/run1/memory.usage_in_bytes": String(150 * MiB),
    "/sys/fs/cgroup/memory/bench/run1/memory.stat": v1Stat(60 * MiB, 40 * MiB),
  });
  const m = readMemoryLimits({ root });
  // 400 − (150 − 100 of page cache) = 350 MiB; MemAvailable is 16 GiB.
  assert.equal(m.available, 350 * MiB);
  assert.equal(m.systemAvailable, 16 * 1024 * MiB);
  assert.equal(m.cgroup?.version, 1);
  assert.equal(m.cgroup?.dir, `${root}/sys/fs/cgroup/memory/bench/run1`);
  assert.match(
    m.source,
    /cgroup v1 \/sys\/fs\/cgroup\/memory\/bench\/run1: limit 400 MiB, 50 MiB used/,
  );
});

Deno.test("memory: a parent's tighter limit binds its children (siblings share it)", () => {
  const root = tree({
    "/proc/meminfo": MEMINFO,
    "/proc/self/mountinfo": V1_MOUNTS,
    "/proc/self/cgroup": "4:memory:/slice/job\n",
    "/sys/fs/cgroup/memory/slice/memory.limit_in_bytes": String(1024 * MiB),
    "/sys/fs/cgroup/memory/slice/memory.usage_in_bytes": String(900 * MiB),
    "/sys/fs/cgroup/memory/slice/memory.stat": v1Stat(0, 100 * MiB),
    "/sys/fs/cgroup/memory/slice/job/memory.limit_in_bytes": String(2048 * MiB),
    "/sys/fs/cgroup/memory/slice/job/memory.usage_in_bytes": String(10 * MiB),
  });
  const m = readMemoryLimits({ root });
  assert.equal(m.available, 1024 * MiB - 800 * MiB);
  assert.equal(m.cgroup?.dir, `${root}/sys/fs/cgroup/memory/slice`);
});

Deno.test("memory: cgroup v2 memory.max inside a container's namespace", () => {
  const root = tree({
    "/proc/meminfo": MEMINFO,
    // The container sees its cgroup as the mount's root: /proc/self/cgroup says "/".
    "/proc/self/mountinfo": "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw",
    "/proc/self/cgroup": "0::/\n",
    "/sys/fs/cgroup/memory.max": String(512 * MiB),
    "/sys/fs/cgroup/memory.current": String(300 * MiB),
    "/sys/fs/cgroup/memory.stat": `anon ${100 * MiB}\nfile ${200 * MiB}\n`,
  });
  const m = readMemoryLimits({ root });
  assert.equal(m.available, 512 * MiB - 100 * MiB);
  assert.equal(m.cgroup?.version, 2);
});

Deno.test("memory: cgroup v2 nested path with a mount root prefix; 'max' is no limit", () => {
  const root = tree({
    "/proc/meminfo": MEMINFO,
    "/proc/self/mountinfo": "30 25 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw",
    "/proc/self/cgroup": "0::/docker/abc/inner\n",
    "/sys/fs/cgroup/memory.max": String(8192 * MiB),
    "/sys/fs/cgroup/memory.current": String(100 * MiB),
    "/sys/fs/cgroup/inner/memory.max": "max\n",
    "/sys/fs/cgroup/inner/memory.current": String(50 * MiB),
  });
  const m = readMemoryLimits({ root });
  assert.equal(m.available, 8092 * MiB, "the outer limit; the inner one is 'max'");
  assert.equal(m.cgroup?.dir, `${root}/sys/fs/cgroup`);
});

Deno.test("memory: no limiting cgroup → MemAvailable; the caller's figure wins over meminfo", () => {
  const root = tree({
    "/proc/meminfo": MEMINFO,
    "/proc/self/mountinfo": V1_MOUNTS,
    "/proc/self/cgroup": "4:memory:/\n",
    "/sys/fs/cgroup/memory/memory.limit_in_bytes": UNLIMITED_V1,
    "/sys/fs/cgroup/memory/memory.usage_in_bytes": String(100 * MiB),
  });
  let m = readMemoryLimits({ root });
  assert.equal(m.available, 16 * 1024 * MiB);
  assert.equal(m.cgroup, null);
  assert.match(m.source, /MemAvailable 16384 MiB/);
  m = readMemoryLimits({ root, systemAvailable: 123 * MiB });
  assert.equal(m.available, 123 * MiB);
});

Deno.test("memory: a cgroup limit above MemAvailable does not bind", () => {
  const root = tree({
    "/proc/meminfo": "MemAvailable: 1048576 kB\n",
    "/proc/self/mountinfo": V1_MOUNTS,
    "/proc/self/cgroup": "4:memory:/big\n",
    "/sys/fs/cgroup/memory/big/memory.limit_in_bytes": String(4096 * MiB),
    "/sys/fs/cgroup/memory/big/memory.usage_in_bytes": String(100 * MiB),
  });
  const m = readMemoryLimits({ root });
  assert.equal(m.available, 1024 * MiB);
  assert.equal(m.cgroup?.limit, 4096 * MiB, "the cgroup is still reported");
});

Deno.test("memory: nothing readable → unknown, said so", () => {
  const m = readMemoryLimits({ root: tree({}) });
  assert.equal(m.available, null);
  assert.match(m.source, /unknown/);
});

Deno.test("parseBytes: units and plain numbers", () => {
  assert.equal(parseBytes("400M"), 400 * MiB);
  assert.equal(parseBytes("1.5G"), 1.5 * 1024 * MiB);
  assert.equal(parseBytes("8GiB"), 8 * 1024 * MiB);
  assert.equal(parseBytes("512k"), 512 * 1024);
  assert.equal(parseBytes("123456"), 123456);
  assert.equal(parseBytes("lots"), null);
  assert.equal(parseBytes("-5M"), null);
});
