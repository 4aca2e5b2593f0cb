// The CPU backend's option "int8_activations" through the TS binding: rl_matmul with M = 1 on
// Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q4_K weights quantizes x to int8 per 32 values (ggml's
// quantize_row_q8_0 on x86: d = amax/127, q = x·(127/amax) rounded to nearest even, d kept in f32)
// and sums exact integer block dot products times d_w·d_x (plus m_w·d_x·Σq_x for Q4_1 / Q5_1,
// whose weights are d·q + m; Q4_K so per sub-block of 32 with d_w = d·sc, m_w = -dmin·m). Checked against a scalar reference of that math, against the f32
// path within the activation quantization's bound (Σ_b amax_b/254 · Σ_{k∈b} |w_k| per row), and
// the option off is bit-identical before and after it was on. cpu/test_ops.c has the full suite.
import assert from "node:assert/strict";
import { Backend, type DevPtr, type WeightDType } from "../ffi/backend.ts";

let seed = 0x9e3779b9;
/** Deterministic uint32 (xorshift32). */
function rnd(): number {
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed;
}

/** IEEE binary16 bits → number (normals only: the scales used here). */
function f16(h: number): number {
  const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

/** Rounds to nearest, ties to even (as vroundps / nearbyintf). */
function roundEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v - Math.trunc(v)) === 0.5 ? 2 * Math.round(v / 2) : r;
}

type I8DType = "Q8_0" | "Q4_0" | "Q4_1" | "Q5_0" | "Q5_1" | "Q4_K";
const BLOCK_BYTES: Record<I8DType, number> = {
  Q8_0: 34,
  Q4_0: 18,
  Q4_1: 20,
  Q5_0: 22,
  Q5_1: 24,
  Q4_K: 144,
};

/** Q4_K's 6-bit scale and min of sub-block j from its 12 bytes at o (ggml's get_scale_min_k4). */
function scaleMinK4(b: Uint8Array, o: number, j: number): [number, number] {
  return j < 4 ? [b[o + j] & 63, b[o + j + 4] & 63] : [
    (b[o + j + 4] & 15) | ((b[o + j - 4] >> 6) << 4),
    (b[o + j + 4] >> 4) | ((b[o + j] >> 6) << 4),
  ];
}

/** A random f16 (bits) of magnitude in [2^e, 2^(e+2)), either sign. */
function randomF16(e: number): number {
  return ((15 + e) * 1024 + (rnd() % 0x0800)) | (rnd() & 1 ? 0x8000 : 0);
}

/**
 * A random W[N,K] in dtype dt: its bytes, integer weights (Q4_0: q - 8, Q5_0: q - 16, Q4_1 /
 * Q5_1 / Q4_K: the unsigned q), per 32 values their scale and min (0 but for Q4_1 / Q5_1; Q4_K:
 * d·sc and -dmin·m of the sub-block).
 */
function randomWeights(dt: I8DType, N: number, K: number) {
  if (dt === "Q4_K") return randomQ4K(N, K);
  const bb = BLOCK_BYTES[dt], nb = K / 32;
  const hasMin = dt === "Q4_1" || dt === "Q5_1", five = dt === "Q5_0" || dt === "Q5_1";
  const qs = dt === "Q8_0" ? 2 : 2 + (hasMin ? 2 : 0) + (five ? 4 : 0); // offset of the quants
  const off = dt === "Q4_0" ? 8 : dt === "Q5_0" ? 16 : 0;
  const bytes = new Uint8Array(N * nb * bb), q = new Int32Array(N * K);
  const scale = new Float64Array(N * nb), min = new Float64Array(N * nb);
  for (let j = 0; j < N * nb; j++) {
    const o = j * bb;
    for (let i = 2; i < bb; i++) bytes[o + i] = rnd() & 0xff;
    const h = randomF16(-8);
    bytes[o] = h & 0xff;
    bytes[o + 1] = h >> 8;
    scale[j] = f16(h);
    if (hasMin) {
      const m = randomF16(-7);
      bytes[o + 2] = m & 0xff;
      bytes[o + 3] = m >> 8;
      min[j] = f16(m);
    }
    const qh = five
      ? (bytes[o + qs - 4] | bytes[o + qs - 3] << 8 | bytes[o + qs - 2] << 16 |
        bytes[o + qs - 1] << 24) >>> 0
      : 0;
    for (let i = 0; i < 32; i++) {
      q[j * 32 + i] = dt === "Q8_0"
        ? (bytes[o + 2 + i] << 24) >> 24
        : ((i < 16 ? bytes[o + qs + i] & 15 : bytes[o + qs + i - 16] >> 4) |
          (((qh >>> i) & 1) << 4)) - off;
    }
  }
  return { bytes, q, scale, min };
}

/** randomWeights for Q4_K: blocks of 256, 8 sub-blocks of 32 with random 6-bit scales and mins. */
function randomQ4K(N: number, K: number) {
  const nb = K / 256, bytes = new Uint8Array(N * nb * 144), q = new Int32Array(N * K);
  const scale = new Float64Array(N * K / 32), min = new Float64Array(N * K / 32);
  for (let j = 0; j < N * nb; j++) {
    const o = j * 144;
    for (let i = 4; i < 144; i++) bytes[o + i] = rnd() & 0xff;
    const h = randomF16(-8), hm = randomF16(-8);
    bytes.set([h & 0xff, h >> 8, hm & 0xff, hm >> 8], o);
    for (let sub = 0; sub < 8; sub++) {
      const [sc, m] = scaleMinK4(bytes, o + 4, sub);
      scale[8 * j + sub] = f16(h) * sc;
      min[8 * j + sub] = -f16(hm) * m;
      for (let i = 0; i < 32; i++) {
        const v = bytes[o + 16 + 32 * (sub >> 1) + i];
        q[256 * j + 32 * sub + i] = sub & 1 ? v >> 4 : v & 15;
      }
    }
  }
  return { bytes, q, scale, min };
}

/** The int8 path's result per row (double) and the bound of its distance from the f32 math. */
function reference(
  x: Float32Array,
  w: { q: Int32Array; scale: Float64Array; min: Float64Array },
  bias: Float32Array | null,
  N: number,
  K: number,
) {
  const f = Math.fround, nb = K / 32;
  const qx = new Int32Array(K), dx = new Float64Array(nb), amax = new Float64Array(nb);
  for (let b = 0; b < nb; b++) {
    let a = 0;
    for (let i = 0; i < 32; i++) a = Math.max(a, Math.abs(x[32 * b + i]));
    const id = a !== 0 ? f(127 / a) : 0;
    for (let i = 0; i < 32; i++) qx[32 * b + i] = roundEven(f(x[32 * b + i] * id));
    dx[b] = f(a / 127);
    amax[b] = a;
  }
  const res = new Float64Array(N), bound = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    let s = bias ? bias[n] : 0, e = 0;
    for (let b = 0; b < nb; b++) {
      const dw = w.scale[n * nb + b], mw = w.min[n * nb + b];
      let is = 0, sx = 0, l1 = 0;
      for (let i = 0; i < 32; i++) {
        const wq = w.q[n * K + 32 * b + i];
        is += wq * qx[32 * b + i];
        sx += qx[32 * b + i];
        l1 += Math.abs(dw * wq + mw);
      }
      s += dw * dx[b] * is + mw * dx[b] * sx;
      e += (amax[b] / 254) * l1;
    }
    res[n] = s;
    bound[n] = e;
  }
  return { res, bound };
}

Deno.test("int8_activations: an option, off by default, 0 or 1", () => {
  using be = Backend.open({ device: "cpu" });
  assert.equal(be.getOption("int8_activations"), 0);
  be.setOption("int8_activations", 1);
  assert.equal(be.getOption("int8_activations"), 1);
  assert.throws(() => be.setOption("int8_activations", 2), /int8_activations/);
  be.setOption("int8_activations", 0);
  assert.equal(be.getOption("int8_activations"), 0);
});

Deno.test("int8_activations: the GEMV on Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q4_K equals the int8 reference", () => {
  using be = Backend.open({ device: "cpu" });
  const put = (a: ArrayBufferView) => {
    const p = be.alloc(a.byteLength);
    be.upload(p, a);
    return p;
  };
  const run = (
    on: number,
    x: DevPtr,
    w: DevPtr,
    dt: WeightDType,
    b: DevPtr | null,
    N: number,
    K: number,
  ) => {
    be.setOption("int8_activations", on);
    const out = be.alloc(N * 4), got = new Float32Array(N);
    be.matmul(out, x, w, dt, b, 1, N, K);
    be.download(got, out);
    be.free(out);
    return got;
  };
  // [N, K, bias]: one block, an odd N, an odd block count, the SmolLM2 hidden size
  const shapes: [number, number, boolean][] = [
    [1, 32, false],
    [5, 64, true],
    [33, 96, false],
    [17, 576, true],
  ];
  // Q4_K: K in whole 256-blocks
  const shapesK: [number, number, boolean][] = [
    [1, 256, false],
    [5, 512, true],
    [33, 768, false],
    [17, 1280, true],
  ];
  for (const dt of ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K"] as const) {
    for (const [N, K, withBias] of dt === "Q4_K" ? shapesK : shapes) {
      const w = randomWeights(dt, N, K);
      const x = new Float32Array(K).map(() => (rnd() / 2 ** 32) * 2 - 1);
      const bias = withBias ? new Float32Array(N).map(() => (rnd() / 2 ** 32) * 2 - 1) : null;
      const { res, bound } = reference(x, w, bias, N, K);
      const dx = put(x), dw = put(w.bytes), db = bias ? put(bias) : null;
      const off = run(0, dx, dw, dt, db, N, K);
      const on = run(1, dx, dw, dt, db, N, K);
      const offAgain = run(0, dx, dw, dt, db, N, K);
      const what = `${dt} N=${N} K=${K} bias ${withBias}`;
      assert.deepEqual(offAgain, off, `${what}: option off is unchanged`);
      const maxRef = Math.max(...res.map(Math.abs), 1e-30);
      const maxOff = Math.max(...off.map(Math.abs));
      for (let n = 0; n < N; n++) {
        assert.ok(
          Math.abs(on[n] - res[n]) <= 1e-5 * maxRef,
          `${what} row ${n}: ${on[n]} vs int8 reference ${res[n]}`,
        );
        assert.ok(
          Math.abs(on[n] - off[n]) <= bound[n] * 1.001 + 2e-5 * maxOff,
          `${what} row ${n}: |on - off| ${Math.abs(on[n] - off[n])} over the bound ${bound[n]}`,
        );
      }
      assert.ok(on.some((v, i) => v !== off[i]), `${what}: the option changes results`);
      for (const p of [dx, dw, db]) if (p) be.free(p);
    }
  }
  be.setOption("int8_activations", 0);
  assert.equal(be.stats().liveAllocs, 0);
});
