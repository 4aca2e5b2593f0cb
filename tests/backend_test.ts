import assert from "node:assert/strict";
import { ABI_VERSION, Backend, cstr, findLibrary, SYMBOLS } from "../ffi/backend.ts";
import { BackendError } from "../lib/errors.ts";

const header = await Deno.readTextFile(new URL("../ffi/rabbitllm.h", import.meta.url));

/** RL_API declarations of the header: name → [result, params] as Deno FFI types. */
function declarations(): Map<string, { result: string; params: string[] }> {
  const scalar: Record<string, string> = {
    uint32_t: "u32",
    int32_t: "i32",
    int64_t: "i64",
    uint64_t: "u64",
    float: "f32",
    double: "f64",
    void: "void",
  };
  const toFfi = (decl: string): string => {
    const d = decl.replace(/\bconst\b/g, "").trim();
    if (d.includes("*")) return "ptr";
    const type = d.split(/\s+/)[0];
    assert.ok(type in scalar, `unmapped C type in ${decl}`);
    return scalar[type];
  };
  const out = new Map<string, { result: string; params: string[] }>();
  for (const m of header.matchAll(/RL_API\s+([\w\s*]+?)\s*\b(rl_\w+)\(([^)]*)\);/g)) {
    const params = m[3].trim() === "void" ? [] : m[3].split(",").map(toFfi);
    out.set(m[2], { result: toFfi(m[1]), params });
  }
  return out;
}

Deno.test("backend: the FFI symbol table matches ffi/rabbitllm.h", () => {
  const decls = declarations();
  const entry = (key: string, sym: Deno.ForeignFunction) => sym.name ?? key;
  const bound = new Set(Object.entries(SYMBOLS).map(([k, s]) => entry(k, s)));
  assert.deepEqual([...bound].sort(), [...decls.keys()].sort());
  for (const [key, sym] of Object.entries(SYMBOLS)) {
    const name = entry(key, sym);
    const d = decls.get(name)!;
    const norm = (t: string) => (t === "buffer" || t === "pointer" ? "ptr" : t);
    assert.deepEqual(
      (sym.parameters as readonly string[]).map(norm),
      d.params,
      `${name} parameters`,
    );
    assert.equal(norm(sym.result), d.result, `${name} result`);
  }
  assert.match(header, new RegExp(`#define RL_ABI_VERSION ${ABI_VERSION}\\b`));
});

Deno.test("backend: the CPU library loads, reports its build and counts allocations", () => {
  using be = Backend.open({ device: "cpu" });
  assert.match(be.info, /^cpu/);
  const a = be.alloc(100), b = be.alloc(200);
  let s = be.stats();
  assert.equal(s.liveBytes, 300);
  assert.equal(s.liveAllocs, 2);
  be.free(a);
  s = be.stats();
  assert.equal(s.liveBytes, 200);
  assert.equal(s.peakBytes, 300);
  assert.equal(s.frees, 1);
  be.upload(b, new Float32Array([1, 2, 3]));
  const back = new Float32Array(3);
  be.download(back, b);
  assert.deepEqual([...back], [1, 2, 3]);
  assert.equal(be.stats().h2dBytes, 12);
  // A view is not an allocation.
  assert.throws(
    () => be.free(be.view(b, 64)),
    (e: unknown) => e instanceof BackendError && e.op === "rl_free",
  );
});

Deno.test("backend: ops give hand-derived results", () => {
  using be = Backend.open({ device: "cpu" });
  const put = (xs: number[]) => {
    const p = be.alloc(xs.length * 4);
    be.upload(p, new Float32Array(xs));
    return p;
  };
  const get = (p: Deno.PointerObject, n: number) => {
    const out = new Float32Array(n);
    be.download(out, p);
    return [...out];
  };
  // [[1,2],[3,4]] · W[3,2]ᵀ with W = [[1,0],[0,1],[1,1]], bias [0.5, 0, -1]
  const out = be.alloc(6 * 4);
  be.matmul(out, put([1, 2, 3, 4]), put([1, 0, 0, 1, 1, 1]), "F32", put([0.5, 0, -1]), 2, 3, 2);
  assert.deepEqual(get(out, 6), [1.5, 2, 2, 3.5, 4, 6]);
  // rmsnorm of [3, 4]: rms = sqrt(12.5); w = [1, 2]
  const n = be.alloc(8);
  be.rmsnorm(n, put([3, 4]), put([1, 2]), "F32", 1, 2, 0);
  const r = Math.sqrt(12.5);
  get(n, 2).forEach((v, i) => assert.ok(Math.abs(v - [3 / r, 8 / r][i]) < 1e-6));
  // rope at position 1 with inv_freq [π/2]: (1, 0) → (cos, sin) = (0, 1)
  const x = put([1, 0]);
  be.rope(x, 1, 2, 1, 2, 2, new Int32Array([1]), new Float32Array([Math.PI / 2]), 1);
  get(x, 2).forEach((v, i) => assert.ok(Math.abs(v - [0, 1][i]) < 1e-6));
  // layernorm of [1, 2, 3]: mean 2, var 2/3; w = [1, 1, 2], b = [0, 1, 0]
  const ln = be.alloc(12);
  be.layernorm(ln, put([1, 2, 3]), put([1, 1, 2]), put([0, 1, 0]), "F32", 1, 3, 0);
  const sd = Math.sqrt(2 / 3);
  get(ln, 3).forEach((v, i) =>
    assert.ok(Math.abs(v - [-1 / sd, 1, 2 / sd][i]) < 1e-6, `ln ${i}: ${v}`)
  );
  // softcap 2·tanh(x/2)
  const sc = put([0, 2, -100]);
  be.softcap(sc, sc, 2, 3);
  get(sc, 3).forEach((v, i) => assert.ok(Math.abs(v - [0, 2 * Math.tanh(1), -2][i]) < 1e-6));
  const ids = new Int32Array(2);
  be.argmax(ids, put([1, 5, 5, 0, -1, -2]), 2, 3);
  assert.deepEqual([...ids], [1, 0]);
  assert.throws(
    () => be.embedding(be.alloc(8), put([1, 2, 3, 4]), "F32", new Int32Array([7]), 2, 2),
    /rl_embedding: .*7.*out of range/,
  );
});

Deno.test("backend: library lookup names the env override and the build command", async () => {
  const old = Deno.env.get("RABBITLLM_CUDA_LIB");
  const oldCache = Deno.env.get("XDG_CACHE_HOME");
  Deno.env.delete("RABBITLLM_CUDA_LIB");
  const empty = new URL(`file://${await Deno.makeTempDir()}/`);
  // An empty per-version cache too: a library a remote install built there would be found.
  Deno.env.set("XDG_CACHE_HOME", await Deno.makeTempDir());
  try {
    assert.throws(() => findLibrary("cuda", empty), /deno task build:cuda.*RABBITLLM_CUDA_LIB/);
    assert.throws(() => findLibrary("cpu", empty), /deno task build`.*RABBITLLM_LIB/);
    Deno.env.set("RABBITLLM_LIB", "/nonexistent/lib.so");
    assert.throws(() => findLibrary("cpu"), /RABBITLLM_LIB=\/nonexistent\/lib.so: no such file/);
  } finally {
    Deno.env.delete("RABBITLLM_LIB");
    if (old !== undefined) Deno.env.set("RABBITLLM_CUDA_LIB", old);
    if (oldCache === undefined) Deno.env.delete("XDG_CACHE_HOME");
    else Deno.env.set("XDG_CACHE_HOME", oldCache);
  }
});

Deno.test("backend: a library with another ABI version is refused with how to fix it", async () => {
  const dir = await Deno.makeTempDir();
  const src = `${dir}/old.c`;
  // Every symbol exists (dlopen binds them all); only the version differs.
  const stubs = Object.keys(SYMBOLS).filter((n) => n !== "rl_abi_version").map((n) =>
    `int ${n}(void) { return 0; }`
  );
  await Deno.writeTextFile(
    src,
    [...stubs, "unsigned rl_abi_version(void) { return 999; }", ""].join("\n"),
  );
  const lib = `${dir}/libold.so`;
  const cc = await new Deno.Command("gcc", { args: ["-shared", "-fPIC", "-o", lib, src] }).output();
  assert.equal(cc.code, 0, new TextDecoder().decode(cc.stderr));
  assert.throws(
    () => Backend.open({ libraryPath: lib }),
    new RegExp(
      `${lib} speaks backend ABI 999, this package needs ${ABI_VERSION}; rebuild it with \`deno task build\``,
    ),
  );
});

Deno.test("backend: the C op suite passes against its double-precision reference", async () => {
  const out = await new Deno.Command("sh", {
    args: ["cpu/test.sh"],
    cwd: new URL("..", import.meta.url),
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, text);
  assert.match(text, /\d+ passed, 0 failed/);
});

Deno.test("backend: rl_load_start reads a file range into device memory on the I/O thread", async () => {
  using be = Backend.open({ device: "cpu" });
  const dir = await Deno.makeTempDir();
  const data = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7) & 255);
  await Deno.writeFile(`${dir}/f.bin`, data);
  const dst = be.alloc(300), dst2 = be.alloc(8);
  const path = cstr(`${dir}/f.bin`);
  const a = be.loadStart(dst, path, 100, 300);
  const b = be.loadStart(dst2, path, 992, 8);
  be.loadWait(b); // out of order is fine
  be.loadWait(a);
  const back = new Uint8Array(300);
  be.download(back, dst);
  assert.deepEqual(back, data.subarray(100, 400));
  assert.equal(be.stats().h2dBytes, 308);
  assert.throws(() => be.loadWait(a), /unknown or already waited ticket/);
  const short = be.loadStart(dst, path, 900, 300);
  assert.throws(
    () => be.loadWait(short),
    new RegExp(`f.bin: file ends at byte 100 of the 300 requested`),
  );
  const missing = be.loadStart(dst, cstr(`${dir}/nope.bin`), 0, 4);
  assert.throws(() => be.loadWait(missing), /cannot open .*nope.bin/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("backend: options, capabilities and timing marks", () => {
  using be = Backend.open({ device: "cpu" });
  assert.equal(be.getOption("flash_available"), 0);
  assert.ok(be.getOption("device_memory") > 1e8);
  assert.equal(be.getOption("no_such_option"), -1);
  be.setOption("attn_impl", 2);
  assert.equal(be.getOption("attn_impl"), 2);
  assert.throws(() => be.setOption("attn_impl", 1), /CPU backend has one attention/);
  assert.throws(() => be.setOption("warp_speed", 1), /unknown option "warp_speed"/);
  const a = be.mark();
  const b = be.mark();
  assert.ok(be.elapsedMs(a, b) >= 0);
  be.resetMarks();
  assert.throws(() => be.elapsedMs(a, b), /no such marks/);
});
