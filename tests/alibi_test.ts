/**
 * ALiBi: the slopes (lib/models/alibi.ts) against hand-derived values, rl_attention_alibi through
 * the Backend against a TS reference of the original form (score + slope · key index), its
 * errors, and the engine's plumbing of AttentionCall.alibiSlopes (lib/engine/step.ts).
 */
import assert from "node:assert/strict";
import { ABI_VERSION, type AttentionArgs, Backend, SYMBOLS } from "../ffi/backend.ts";
import type { ModelConfig } from "../lib/config.ts";
import { KVCache } from "../lib/engine/kv_cache.ts";
import { StepLoop } from "../lib/engine/step.ts";
import { BackendError, InternalError } from "../lib/errors.ts";
import { alibiSlopes } from "../lib/models/alibi.ts";
import type { Family } from "../lib/models/family.ts";
import { Profiler } from "../lib/profiler.ts";
import { openStore, planOf } from "./engine/_helpers.ts";

Deno.test("alibi: slopes of 8 and 40 heads are the hand-derived powers of two", () => {
  // 8 heads: 2^(-8k/8) = 2^-k, exact.
  assert.deepEqual([...alibiSlopes(8)], [
    0.5,
    0.25,
    0.125,
    0.0625,
    2 ** -5,
    2 ** -6,
    2 ** -7,
    2 ** -8,
  ]);
  // 40 heads (Baichuan-13B): the 32 of a power of two, 2^(-8k/32) = 2^(-k/4), then 8 of the 64
  // heads' 2^(-k/8) at odd k: 2^(-1/8), 2^(-3/8), ..., 2^(-15/8).
  const want40 = [
    ...Array.from({ length: 32 }, (_, i) => Math.fround(2 ** (-(i + 1) / 4))),
    ...Array.from({ length: 8 }, (_, i) => Math.fround(2 ** (-(2 * i + 1) / 8))),
  ];
  assert.deepEqual([...alibiSlopes(40)], want40);
  assert.equal(alibiSlopes(40)[0], Math.fround(0.8408964152537145)); // 2^(-1/4)
  assert.equal(alibiSlopes(40)[32], Math.fround(0.9170040432046712)); // 2^(-1/8)
  assert.equal(alibiSlopes(40)[39], Math.fround(0.27262693403457046)); // 2^(-15/8)
  // 1 head: 2^-8; 12 heads: 8 of 2^-k, then 2^(-1/2), 2^(-3/2), 2^(-5/2), 2^(-7/2).
  assert.deepEqual([...alibiSlopes(1)], [2 ** -8]);
  assert.deepEqual(
    [...alibiSlopes(12)].slice(8),
    [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5].map(Math.fround),
  );
  for (const bad of [0, -4, 2.5, NaN]) {
    assert.throws(() => alibiSlopes(bad), InternalError);
  }
});

interface Case {
  nQ: number;
  qStart: number;
  heads: number;
  kvHeads: number;
  dim: number;
  window?: number;
  mask?: boolean;
}

function rand(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 * 2 - 1;
  };
}

/**
 * The original form (Baichuan-13B): score = (q·k) · scale + slope[h] · j for key index j, masked
 * keys dropped, softmax in f64.
 */
function reference(
  c: Case,
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  valid: Uint8Array,
  slopes: Float32Array,
  scale: number,
): Float64Array {
  const { nQ, qStart, heads: H, kvHeads: G, dim: D } = c;
  const out = new Float64Array(nQ * H * D);
  for (let t = 0; t < nQ; t++) {
    const pos = qStart + t;
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / (H / G));
      const s: number[] = [];
      for (let j = 0; j <= pos; j++) {
        if (!valid[j] || (c.window && pos - j >= c.window)) continue;
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[t * H * D + h * D + d] * k[j * G * D + g * D + d];
        s.push(j, dot * scale + slopes[h] * j);
      }
      let max = -Infinity, sum = 0;
      for (let i = 1; i < s.length; i += 2) max = Math.max(max, s[i]);
      for (let i = 1; i < s.length; i += 2) sum += s[i] = Math.exp(s[i] - max);
      for (let i = 0; i < s.length; i += 2) {
        for (let d = 0; d < D; d++) {
          out[(t * H + h) * D + d] += s[i + 1] / sum * v[s[i] * G * D + g * D + d];
        }
      }
    }
  }
  return out;
}

Deno.test("alibi: rl_attention_alibi through the Backend equals score + slope · key index", () => {
  using be = Backend.open({ device: "cpu" });
  const cases: Case[] = [
    { nQ: 1, qStart: 50, heads: 8, kvHeads: 2, dim: 16 }, // decode, GQA
    { nQ: 12, qStart: 0, heads: 8, kvHeads: 8, dim: 32 }, // prefill
    { nQ: 7, qStart: 20, heads: 12, kvHeads: 4, dim: 16, mask: true }, // padding, q_start > 0
    { nQ: 5, qStart: 90, heads: 40, kvHeads: 40, dim: 8, window: 16 }, // 40 heads, window
    { nQ: 1, qStart: 400, heads: 6, kvHeads: 3, dim: 24, mask: true }, // long decode
  ];
  const next = rand(7);
  for (const c of cases) {
    const { nQ, qStart, heads: H, kvHeads: G, dim: D } = c;
    const kvLen = qStart + nQ;
    const q = Float32Array.from({ length: nQ * H * D }, () => 2 * next());
    const k = Float32Array.from({ length: kvLen * G * D }, next);
    const v = Float32Array.from({ length: kvLen * G * D }, next);
    const valid = Uint8Array.from({ length: kvLen }, (_, j) => c.mask && j % 5 === 2 ? 0 : 1);
    const slopes = alibiSlopes(H), scale = 1 / Math.sqrt(D);
    const want = reference(c, q, k, v, valid, slopes, scale);

    const put = (x: Float32Array) => {
      const p = be.alloc(x.byteLength);
      be.upload(p, x);
      return p;
    };
    const dq = put(q), dk = put(k), dv = put(v), dout = be.alloc(nQ * H * D * 4);
    const args: AttentionArgs = {
      out: dout,
      q: dq,
      qStride: H * D,
      k: dk,
      kStride: G * D,
      v: dv,
      nQ,
      qStart,
      kvLen,
      nHeads: H,
      nKvHeads: G,
      headDim: D,
      scale,
      window: c.window,
      kvValid: valid,
    };
    const run = (slopes?: Float32Array) => {
      be.attention({ ...args, alibiSlopes: slopes });
      const got = new Float32Array(nQ * H * D);
      be.download(got, dout);
      return got;
    };
    const got = run(slopes);
    let err = 0, ref = 0;
    for (let i = 0; i < got.length; i++) {
      err = Math.max(err, Math.abs(got[i] - want[i]));
      ref = Math.max(ref, Math.abs(want[i]));
    }
    const what = JSON.stringify(c);
    assert.ok(err <= 1e-5 * ref, `${what}: max |Δ| ${err} (max |ref| ${ref})`);
    // The bias matters here: without it the result is far off.
    const plain = run();
    let off = 0;
    for (let i = 0; i < got.length; i++) off = Math.max(off, Math.abs(plain[i] - want[i]));
    assert.ok(off > 1e-2 * ref, `${what}: without slopes, max |Δ| only ${off}`);
    // Zero slopes are no bias at all, bit for bit.
    assert.deepEqual(run(new Float32Array(H)), plain);
    for (const p of [dq, dk, dv, dout]) be.free(p);
  }
});

Deno.test("alibi: wrong slope counts and non-finite slopes are BackendErrors naming them", () => {
  using be = Backend.open({ device: "cpu" });
  const buf = be.alloc(4096 * 4), at = (floats: number) => be.view(buf, floats * 4);
  const args: AttentionArgs = {
    out: at(0),
    q: at(512),
    qStride: 64,
    k: at(1024),
    kStride: 64,
    v: at(2048),
    nQ: 1,
    qStart: 0,
    kvLen: 4,
    nHeads: 4,
    nKvHeads: 2,
    headDim: 8,
    scale: 1,
  };
  assert.throws(
    () => be.attention({ ...args, alibiSlopes: new Float32Array(3) }),
    (e: unknown) =>
      e instanceof BackendError && e.op === "rl_attention_alibi" && e.status === 1 &&
      /3 slopes, want one per query head \(nHeads 4\)/.test(e.message),
  );
  assert.throws(
    () => be.attention({ ...args, alibiSlopes: new Float32Array([0.5, 0.25, Infinity, 0.1]) }),
    (e: unknown) =>
      e instanceof BackendError && e.op === "rl_attention_alibi" && e.status === 1 &&
      /alibi_slopes\[2\] is inf/.test(e.message),
  );
  be.free(buf);
});

Deno.test("alibi: the engine hands AttentionCall.alibiSlopes to the backend, every layer", async () => {
  const s = await openStore("llama_tied", "alibi", { plan: planOf(["stream", "stream"]) });
  using _ = s;
  const cfg: ModelConfig = s.ck.config;
  const seen: (Float32Array | null | undefined)[] = [];
  const attention = s.be.attention.bind(s.be);
  s.be.attention = (a: AttentionArgs) => {
    seen.push(a.alibiSlopes);
    attention(a);
  };
  /** The fixture's family, its layers asking for `slopes` (none: unchanged). */
  const withSlopes = (f: Family, slopes?: Float32Array): Family => ({
    ...f,
    forwardLayer: (ctx, w) =>
      f.forwardLayer({
        ...ctx,
        attention: (call) => ctx.attention({ ...call, alibiSlopes: slopes }),
      }, w),
  });
  const logits = async (
    slopes: Float32Array | undefined,
    ids: number[][],
    mask: number[][] | null,
  ) => {
    const loop = new StepLoop({
      config: cfg,
      family: withSlopes(s.ck.family, slopes),
      backend: s.be,
      store: s.store,
      profiler: new Profiler(),
      source: "alibi-test",
    });
    const cache = new KVCache(s.be, cfg, ids.length, ids[0].length);
    try {
      return await loop.step(ids, mask, cache, true);
    } finally {
      cache.free();
      loop.free();
    }
  };
  const ids = [[1, 5, 9, 13, 17, 21, 25]];
  const slopes = alibiSlopes(cfg.numHeads).map((x) => 4 * x);
  seen.length = 0;
  const biased = await logits(slopes, ids, null);
  assert.equal(seen.length, cfg.numLayers);
  for (const got of seen) assert.equal(got, slopes);
  seen.length = 0;
  const plain = await logits(undefined, ids, null);
  assert.deepEqual(seen, Array(cfg.numLayers).fill(undefined));
  assert.deepEqual(await logits(new Float32Array(cfg.numHeads), ids, null), plain);
  assert.notDeepEqual(biased, plain);
  // Left padding moves the cache indices, not the distances: the padded row is the unpadded one.
  const padded = await logits(slopes, [[0, 0, 0, ...ids[0]]], [[0, 0, 0, ...ids[0].map(() => 1)]]);
  let d = 0;
  for (let i = 0; i < biased.length; i++) d = Math.max(d, Math.abs(padded[i] - biased[i]));
  assert.ok(d < 1e-4, `left-padded vs unpadded with ALiBi: max |Δ| ${d}`);
});

Deno.test("alibi: a library built before ABI 7 (no rl_attention_alibi) is refused by its version", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const src = `${dir}/abi6.c`;
    const stubs = Object.keys(SYMBOLS)
      .filter((n) => n !== "rl_abi_version" && n !== "rl_attention_alibi")
      .map((n) => `int ${n}(void) { return 0; }`);
    await Deno.writeTextFile(
      src,
      [...stubs, "unsigned rl_abi_version(void) { return 6; }", ""].join("\n"),
    );
    const lib = `${dir}/libabi6.so`;
    const cc = await new Deno.Command("gcc", { args: ["-shared", "-fPIC", "-o", lib, src] })
      .output();
    assert.equal(cc.code, 0, new TextDecoder().decode(cc.stderr));
    assert.equal(ABI_VERSION, 7);
    assert.throws(
      () => Backend.open({ libraryPath: lib }),
      /speaks backend ABI 6, this package needs 7; rebuild it with `deno task build`/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
