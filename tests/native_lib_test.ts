/**
 * The native library's lookup, cache, build and download (ffi/native.ts), each against a temporary
 * cache ($XDG_CACHE_HOME) and, for remote sources and prebuilt downloads, a server on 127.0.0.1.
 * The end-to-end check as a user installs it is scripts/remote_import_check.sh.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { Backend } from "../ffi/backend.ts";
import { cacheDir, ensureLibrary, findCached, findLibrary, LIB_FILE } from "../ffi/native.ts";
import { NATIVE_SOURCES, PACKAGE_VERSION } from "../ffi/native_sources.ts";
import { render } from "../scripts/native_sources.ts";

const root = new URL("../", import.meta.url);
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** Runs `fn` with an empty cache, no RABBITLLM_* overrides and an empty local build dir. */
async function isolated(
  fn: (
    env: { cache: string; buildDir: URL; logs: string[]; log: (l: string) => void },
  ) => void | Promise<void>,
): Promise<void> {
  const names = ["XDG_CACHE_HOME", "RABBITLLM_LIB", "RABBITLLM_CUDA_LIB"];
  const old = names.map((n) => Deno.env.get(n));
  const cache = await Deno.makeTempDir({ prefix: "rabbitllm-cache-" });
  const build = await Deno.makeTempDir({ prefix: "rabbitllm-nobuild-" });
  Deno.env.set("XDG_CACHE_HOME", cache);
  Deno.env.delete("RABBITLLM_LIB");
  Deno.env.delete("RABBITLLM_CUDA_LIB");
  const logs: string[] = [];
  try {
    await fn({ cache, buildDir: new URL(`file://${build}/`), logs, log: (l) => logs.push(l) });
  } finally {
    names.forEach((n, i) => old[i] === undefined ? Deno.env.delete(n) : Deno.env.set(n, old[i]!));
    await Deno.remove(cache, { recursive: true });
    await Deno.remove(build, { recursive: true });
  }
}

/** Serves `dir` (a file: path) on 127.0.0.1; `hits` counts requests per path. */
function serve(dir: string) {
  const hits = new Map<string, number>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    hits.set(path, (hits.get(path) ?? 0) + 1);
    try {
      return new Response(await Deno.readFile(`${dir}${path}`));
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  return { url: `http://127.0.0.1:${server.addr.port}`, hits, server };
}

/** The local build (the test task depends on `deno task build`). */
const LOCAL_LIB = new URL("build/librabbitllm_cpu.so", root).pathname;
const builds = (logs: string[]) =>
  logs.filter((l) => l.includes("building the cpu backend")).length;

Deno.test("native: ffi/native_sources.ts is current (version, every source and its sha256)", () => {
  const version = JSON.parse(Deno.readTextFileSync(new URL("deno.json", root))).version;
  assert.equal(PACKAGE_VERSION, version);
  assert.equal(
    Deno.readTextFileSync(new URL("ffi/native_sources.ts", root)),
    render(),
    "ffi/native_sources.ts is out of date: run `deno task native:sources`",
  );
  // What the build needs is there: every C source of the CPU backend and the ABI headers.
  const paths = NATIVE_SOURCES.map(([p]) => p);
  for (const p of ["cpu/ctx.c", "cpu/internal.h", "ffi/rabbitllm.h", "ffi/rl_shared.h"]) {
    assert.ok(paths.includes(p), p);
  }
  assert.ok(!paths.some((p) => /\/(test|bench)_/.test(p)));
});

Deno.test("native: the cache is per version and platform under $XDG_CACHE_HOME", async () => {
  await isolated(({ cache, buildDir }) => {
    assert.equal(
      cacheDir(),
      `${cache}/rabbitllm/${PACKAGE_VERSION}/${Deno.build.os}-${Deno.build.arch}`,
    );
    assert.equal(findCached("cpu"), undefined);
    assert.throws(() => findLibrary("cpu", buildDir), /nothing valid in .*rabbitllm.*openAsync/);
  });
});

Deno.test("native: builds from source into the cache once, reuses it, rebuilds a tampered one", async () => {
  await isolated(async ({ buildDir, logs, log }) => {
    // Two callers at once: one build under the lock, the other reuses it.
    const [a, b] = await Promise.all([
      ensureLibrary("cpu", { buildDir, log }),
      ensureLibrary("cpu", { buildDir, log }),
    ]);
    assert.equal(a, b);
    assert.equal(builds(logs), 1, logs.join("\n"));
    assert.equal(a, `${cacheDir()}/${LIB_FILE.cpu}`);
    const record = JSON.parse(await Deno.readTextFile(`${a}.json`));
    assert.equal(record.sha256, sha(await Deno.readFile(a)));
    assert.equal(record.origin, "built");
    assert.match(record.how, /-O3 .*-fopenmp .*-Wl,-z,nodelete/);
    // The synchronous lookup finds it; it loads and speaks this ABI.
    assert.equal(findLibrary("cpu", buildDir), a);
    {
      using be = Backend.open({ libraryPath: a });
      assert.match(be.info, /cpu/i);
    }
    await ensureLibrary("cpu", { buildDir, log });
    assert.equal(builds(logs), 1, "a valid cache is reused");

    // One byte flipped: never loaded, rebuilt. Written as a new file renamed over the old one —
    // this process has the old one mapped, and writing into it in place would change its code.
    const bytes = await Deno.readFile(a);
    bytes[bytes.length >> 1] ^= 0xff;
    await Deno.writeFile(`${a}.tampered`, bytes);
    await Deno.rename(`${a}.tampered`, a);
    assert.equal(findCached("cpu"), undefined);
    assert.throws(() => findLibrary("cpu", buildDir), /not found/);
    assert.equal(await ensureLibrary("cpu", { buildDir, log }), a);
    assert.equal(builds(logs), 2);
    assert.ok(logs.some((l) => l.includes("does not match the recorded one")), logs.join("\n"));
    assert.equal(findCached("cpu"), a);

    // A missing record is as bad as a wrong hash.
    await Deno.remove(`${a}.json`);
    assert.equal(findCached("cpu"), undefined);
  });
});

Deno.test("native: a remote package's sources are fetched from its URL and checked", async () => {
  const { url, hits, server } = serve(root.pathname.replace(/\/$/, ""));
  try {
    await isolated(async ({ buildDir, logs, log }) => {
      const lib = await ensureLibrary("cpu", { buildDir, sourceRoot: new URL(`${url}/`), log });
      assert.equal(builds(logs), 1);
      assert.equal(findCached("cpu"), lib);
      // Every CPU source and header was fetched once, no CUDA source.
      for (const [p] of NATIVE_SOURCES) {
        assert.equal(hits.get(`/${p}`) ?? 0, p.startsWith("cuda/") ? 0 : 1, p);
      }
      // The build's temporary folder (fetched sources) is gone.
      const left = [...Deno.readDirSync(cacheDir()!)].map((e) => e.name).sort();
      assert.deepEqual(left, [LIB_FILE.cpu, `${LIB_FILE.cpu}.json`, `${LIB_FILE.cpu}.lock`]);
    });
  } finally {
    await server.shutdown();
  }
  // A source that differs from the manifest is refused before compiling.
  const dir = await Deno.makeTempDir();
  const bad = serve(dir);
  try {
    for (const [p] of NATIVE_SOURCES) {
      await Deno.mkdir(`${dir}/${p.slice(0, p.lastIndexOf("/"))}`, { recursive: true });
      await Deno.copyFile(new URL(p, root), `${dir}/${p}`);
    }
    await Deno.writeTextFile(`${dir}/cpu/ops.c`, "int evil;\n", { append: true });
    await isolated(async ({ buildDir, logs, log }) => {
      await assert.rejects(
        ensureLibrary("cpu", { buildDir, sourceRoot: new URL(`${bad.url}/`), log }),
        /cpu\/ops\.c: sha256 differs from ffi\/native_sources\.ts/,
      );
      assert.equal(builds(logs), 0);
      assert.equal(findCached("cpu"), undefined);
    });
  } finally {
    await bad.server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("native: a compile error shows the compiler's output", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(`${dir}/cpu`);
  await Deno.mkdir(`${dir}/ffi`);
  await Deno.writeTextFile(`${dir}/cpu/broken.c`, "int f(void) { return no_such_name; }\n");
  try {
    await isolated(async ({ buildDir, log }) => {
      await assert.rejects(
        ensureLibrary("cpu", { buildDir, sourceRoot: new URL(`file://${dir}/`), log }),
        (e: Error) => {
          assert.match(e.message, /build: .*failed \(exit \d+\):/);
          assert.match(e.message, /broken\.c.*no_such_name/);
          return true;
        },
      );
      assert.equal(findCached("cpu"), undefined);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("native: without a compiler, a prebuilt is downloaded and checked against its sha256", async () => {
  // The prebuilt: the local build (deno task build), served from a folder.
  const dir = await Deno.makeTempDir();
  const lib = `${dir}/prebuilt.so`;
  await Deno.copyFile(LOCAL_LIB, lib);
  const hash = sha(await Deno.readFile(lib));
  const { url, hits, server } = serve(dir);
  try {
    await isolated(async ({ buildDir, logs, log }) => {
      const prebuilt = { url: `${url}/prebuilt.so`, sha256: "0".repeat(64) };
      await assert.rejects(
        ensureLibrary("cpu", { buildDir, build: false, prebuilt, log }),
        /has sha256 [0-9a-f]{64}, expected 0{64}: not used/,
      );
      assert.equal(findCached("cpu"), undefined);
      assert.deepEqual(
        [...Deno.readDirSync(cacheDir()!)].map((e) => e.name),
        [`${LIB_FILE.cpu}.lock`],
        "no partial file is left",
      );
      prebuilt.sha256 = hash;
      const got = await ensureLibrary("cpu", { buildDir, build: false, prebuilt, log });
      assert.equal(builds(logs), 0);
      assert.equal(hits.get("/prebuilt.so"), 2);
      assert.equal(findCached("cpu"), got);
      assert.equal(JSON.parse(await Deno.readTextFile(`${got}.json`)).origin, "downloaded");
      using be = Backend.open({ libraryPath: got });
      assert.ok(be.info.length > 0);
      // Nothing to build with and nothing to download: an error that says what to do.
      await Deno.remove(got);
      await assert.rejects(
        ensureLibrary("cpu", { buildDir, build: false, log }),
        /building it needs a C compiler.*RABBITLLM_LIB_URL and RABBITLLM_LIB_SHA256.*RABBITLLM_LIB/,
      );
    });
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

const urlEnvGranted = ["RABBITLLM_LIB_URL", "RABBITLLM_LIB_SHA256"].every((variable) =>
  Deno.permissions.querySync({ name: "env", variable }).state === "granted"
);
Deno.test({
  name: "native: $RABBITLLM_LIB_URL and $RABBITLLM_LIB_SHA256 point the download elsewhere",
  ignore: !urlEnvGranted,
  async fn() {
    const dir = await Deno.makeTempDir();
    await Deno.copyFile(LOCAL_LIB, `${dir}/lib.so`);
    const { url, hits, server } = serve(dir);
    try {
      await isolated(async ({ buildDir, log }) => {
        Deno.env.set("RABBITLLM_LIB_URL", `${url}/lib.so`);
        Deno.env.set("RABBITLLM_LIB_SHA256", sha(await Deno.readFile(`${dir}/lib.so`)));
        try {
          const got = await ensureLibrary("cpu", { buildDir, build: false, log });
          assert.equal(hits.get("/lib.so"), 1);
          assert.equal(findCached("cpu"), got);
        } finally {
          Deno.env.delete("RABBITLLM_LIB_URL");
          Deno.env.delete("RABBITLLM_LIB_SHA256");
        }
      });
    } finally {
      await server.shutdown();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("native: an explicit path wins and must exist", async () => {
  await isolated(async ({ buildDir }) => {
    Deno.env.set("RABBITLLM_LIB", "/nonexistent/lib.so");
    await assert.rejects(
      ensureLibrary("cpu", { buildDir }),
      /RABBITLLM_LIB=\/nonexistent\/lib.so: no such file/,
    );
    Deno.env.set("RABBITLLM_LIB", LOCAL_LIB);
    assert.equal(await ensureLibrary("cpu", { buildDir }), LOCAL_LIB);
  });
});
