/**
 * ggml's block formats (the layouts of GGUF files; ffi/rabbitllm.h enum rl_dtype): sizes, the
 * reference quantizers of the 32-element formats, bit-exact with ggml's `quantize_row_*_ref` (and
 * gguf-py's quantize_blocks; tests/quant_test.ts checks every byte against gguf-py's output), ports
 * of ggml's K-format reference quantizers (Q4_K, Q5_K, Q6_K; gguf-py has none, so the tests compare
 * them with blocks from ggml itself, scripts/make_kquant_ggml_reference.py), and dequantization.
 *
 * Arithmetic is f32 step by step, as in the C code: every product, quotient and sum is rounded to
 * f32 (`Math.fround`) where ggml rounds it, so the blocks are the same bytes.
 *
 * @module
 */
import { f16ToF32, f32ToF16 } from "./dtype.ts";

/** A ggml block format, by its GGUF name. */
export type BlockDType = "Q8_0" | "Q4_0" | "Q4_1" | "Q5_0" | "Q5_1" | "Q4_K" | "Q5_K" | "Q6_K";

/** Elements per block and bytes per block. */
export const BLOCK: Readonly<Record<BlockDType, { elems: number; bytes: number }>> = Object.freeze({
  Q8_0: { elems: 32, bytes: 34 },
  Q4_0: { elems: 32, bytes: 18 },
  Q4_1: { elems: 32, bytes: 20 },
  Q5_0: { elems: 32, bytes: 22 },
  Q5_1: { elems: 32, bytes: 24 },
  Q4_K: { elems: 256, bytes: 144 },
  Q5_K: { elems: 256, bytes: 176 },
  Q6_K: { elems: 256, bytes: 210 },
});

/** The formats {@link quantize} writes. */
export const QUANTIZABLE: readonly BlockDType[] = Object.keys(BLOCK) as BlockDType[];

export function isBlockDType(name: unknown): name is BlockDType {
  return typeof name === "string" && Object.hasOwn(BLOCK, name);
}

/** Bytes of a row of `k` elements (k a multiple of the block). */
export function blockRowBytes(dtype: BlockDType, k: number): number {
  const b = BLOCK[dtype];
  if (k % b.elems !== 0) {
    throw new RangeError(`${dtype} rows hold multiples of ${b.elems} elements, not ${k}`);
  }
  return (k / b.elems) * b.bytes;
}

const f = Math.fround;

/** ggml's roundf-like rounding of gguf-py's np_roundf: half away from zero. */
function roundAway(x: number): number {
  const a = Math.abs(x), fl = Math.floor(a);
  return Math.sign(x) * (fl + Math.floor(2 * (a - fl)));
}

function f16Bits(x: number): number {
  return f32ToF16(Float32Array.of(x))[0];
}

/** Writes one block of 32 values at out[o...]. */
type BlockWriter = (x: Float32Array, out: Uint8Array, o: number) => void;

/** Index of the first element of largest magnitude, and that element. */
function absMax(x: Float32Array): number {
  let best = 0, i = 0;
  for (let j = 0; j < x.length; j++) {
    if (Math.abs(x[j]) > best) {
      best = Math.abs(x[j]);
      i = j;
    }
  }
  return x[i];
}

function minMax(x: Float32Array): [number, number] {
  let lo = x[0], hi = x[0];
  for (const v of x) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

function put16(out: Uint8Array, o: number, bits: number): void {
  out[o] = bits & 0xff;
  out[o + 1] = bits >> 8;
}

/** Packs 32 values of 4 bits (q[j] low nibble, q[j + 16] high) into 16 bytes at out[o]. */
function packNibbles(q: Uint8Array, out: Uint8Array, o: number): void {
  for (let j = 0; j < 16; j++) out[o + j] = (q[j] & 15) | ((q[j + 16] & 15) << 4);
}

/** The fifth bits of 32 values as a little-endian uint32 at out[o]. */
function packHighBits(q: Uint8Array, out: Uint8Array, o: number): void {
  let h = 0;
  for (let j = 0; j < 32; j++) h |= ((q[j] >> 4) & 1) << j;
  new DataView(out.buffer, out.byteOffset).setUint32(o, h >>> 0, true);
}

/** Symmetric: d = max / -levels (the signed largest value), q = trunc(x/d + levels + 0.5). */
function symmetric(levels: number, maxQ: number, x: Float32Array, q: Uint8Array): number {
  const max = absMax(x);
  const d = f(max / -levels), id = d === 0 ? 0 : f(1 / d);
  for (let j = 0; j < 32; j++) q[j] = Math.min(maxQ, Math.trunc(f(f(x[j] * id) + levels + 0.5)));
  return d;
}

/** Asymmetric: d = (max - min) / maxQ, q = trunc((x - min)/d + 0.5). */
function asymmetric(maxQ: number, x: Float32Array, q: Uint8Array): [number, number] {
  const [min, max] = minMax(x);
  const d = f(f(max - min) / maxQ), id = d === 0 ? 0 : f(1 / d);
  for (let j = 0; j < 32; j++) q[j] = Math.min(maxQ, Math.trunc(f(f(f(x[j] - min) * id) + 0.5)));
  return [d, min];
}

const WRITERS: Readonly<Record<string, BlockWriter>> = {
  Q8_0(x, out, o) {
    let amax = 0;
    for (const v of x) amax = Math.max(amax, Math.abs(v));
    const d = f(amax / 127), id = d === 0 ? 0 : f(1 / d);
    put16(out, o, f16Bits(d));
    for (let j = 0; j < 32; j++) out[o + 2 + j] = roundAway(f(x[j] * id)) & 0xff;
  },
  Q4_0(x, out, o) {
    const q = new Uint8Array(32);
    put16(out, o, f16Bits(symmetric(8, 15, x, q)));
    packNibbles(q, out, o + 2);
  },
  Q4_1(x, out, o) {
    const q = new Uint8Array(32);
    const [d, min] = asymmetric(15, x, q);
    put16(out, o, f16Bits(d));
    put16(out, o + 2, f16Bits(min));
    packNibbles(q, out, o + 4);
  },
  Q5_0(x, out, o) {
    const q = new Uint8Array(32);
    put16(out, o, f16Bits(symmetric(16, 31, x, q)));
    packHighBits(q, out, o + 2);
    packNibbles(q, out, o + 6);
  },
  Q5_1(x, out, o) {
    const q = new Uint8Array(32);
    const [d, min] = asymmetric(31, x, q);
    put16(out, o, f16Bits(d));
    put16(out, o + 2, f16Bits(min));
    packHighBits(q, out, o + 4);
    packNibbles(q, out, o + 8);
  },
};

// ------------------------------------------------------------------------------------------------
// The K formats, super-blocks of 256: ggml's quantize_row_q{4,5,6}_K_ref.
// Q4_K / Q5_K: eight sub-blocks of 32 each get a scale and a min by a weighted least-squares search
// over candidate scales (fitMinScale); the scales and mins are quantized to 6 bits against the
// super-block's d and dmin (f16), then every value is re-quantized to 4 or 5 bits with the 6-bit
// scales actually stored. Q6_K: sixteen sub-blocks of 16 get a signed scale (fitScale), quantized
// to int8 against d (f16), and the values are re-quantized to 6 bits with them.

/** ggml's nearest_int: round half to even through the f32 addition of 1.5 · 2^23. */
function nearestInt(v: number): number {
  return f(v + 12582912) - 12582912;
}

/**
 * ggml's make_qkx2_quants for n values, levels 0..nmax: the scale and min (returned as -min >= 0)
 * minimizing Σ w (scale·l + min − x)² over nstep + 1 candidate scales; L gets the levels.
 */
function fitMinScale(
  x: Float32Array,
  w: Float32Array,
  nmax: number,
  L: Uint8Array,
  rmin: number,
  rdelta: number,
  nstep: number,
): { scale: number; min: number } {
  const n = x.length, aux = new Uint8Array(n);
  let min = x[0], max = x[0], sumW = w[0], sumX = f(w[0] * x[0]);
  for (let i = 1; i < n; i++) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sumW = f(sumW + w[i]);
    sumX = f(sumX + f(w[i] * x[i]));
  }
  if (min > 0) min = 0;
  if (max === min) {
    L.fill(0);
    return { scale: 0, min: -min };
  }
  let iscale = f(nmax / f(max - min)), scale = f(1 / iscale), best = 0;
  for (let i = 0; i < n; i++) {
    L[i] = Math.max(0, Math.min(nmax, nearestInt(f(iscale * f(x[i] - min)))));
    const diff = f(f(f(scale * L[i]) + min) - x[i]);
    best = f(best + f(w[i] * f(diff * diff)));
  }
  for (let is = 0; is <= nstep; is++) {
    // As in ggml, min is the best candidate's so far (not the data's) from the first improvement on,
    // in the range and in the offset of the levels.
    iscale = f(f(f(rmin + f(rdelta * is)) + nmax) / f(max - min));
    let sumL = 0, sumL2 = 0, sumXL = 0;
    for (let i = 0; i < n; i++) {
      const l = Math.max(0, Math.min(nmax, nearestInt(f(iscale * f(x[i] - min)))));
      aux[i] = l;
      const wl = f(w[i] * l);
      sumL = f(sumL + wl);
      sumL2 = f(sumL2 + f(wl * l));
      sumXL = f(sumXL + f(wl * x[i]));
    }
    const D = f(f(sumW * sumL2) - f(sumL * sumL));
    if (!(D > 0)) continue;
    let thisScale = f(f(f(sumW * sumXL) - f(sumX * sumL)) / D);
    let thisMin = f(f(f(sumL2 * sumX) - f(sumL * sumXL)) / D);
    if (thisMin > 0) {
      thisMin = 0;
      thisScale = f(sumXL / sumL2);
    }
    let err = 0;
    for (let i = 0; i < n; i++) {
      const diff = f(f(f(thisScale * aux[i]) + thisMin) - x[i]);
      err = f(err + f(w[i] * f(diff * diff)));
    }
    if (err < best) {
      L.set(aux);
      best = err;
      scale = thisScale;
      min = thisMin;
    }
  }
  return { scale, min: -min };
}

/** The 6-bit scale and min of sub-block j from the 12 packed bytes (ggml's get_scale_min_k4). */
function scaleMinK4(j: number, q: Uint8Array, o: number): [number, number] {
  if (j < 4) return [q[o + j] & 63, q[o + j + 4] & 63];
  return [
    (q[o + j + 4] & 0xf) | ((q[o + j - 4] >> 6) << 4),
    (q[o + j + 4] >> 4) | ((q[o + j] >> 6) << 4),
  ];
}

/**
 * A Q4_K (4 bits, 144 bytes: d, dmin, scales[12], qs[128]) or Q5_K (5 bits, 176 bytes: d, dmin,
 * scales[12], qh[32], qs[128]) super-block of 256 values: ggml's quantize_row_q4_K_ref and
 * quantize_row_q5_K_ref, which differ only in the levels, the candidate scales searched and the
 * fifth bits.
 */
function kMinWriter(bits: 4 | 5): BlockWriter {
  const nmax = (1 << bits) - 1, rmin = bits === 4 ? -1 : -0.5, nstep = bits === 4 ? 20 : 15;
  const qhAt = 16, qsAt = bits === 4 ? 16 : 48;
  return (x, out, o) => {
    const L = new Uint8Array(256), w = new Float32Array(32);
    const scales = new Float32Array(8), mins = new Float32Array(8);
    let maxScale = 0, maxMin = 0;
    for (let j = 0; j < 8; j++) {
      const xs = x.subarray(32 * j, 32 * j + 32);
      let sumX2 = 0;
      for (const v of xs) sumX2 = f(sumX2 + f(v * v));
      const avX = f(Math.sqrt(f(sumX2 / 32)));
      for (let l = 0; l < 32; l++) w[l] = f(avX + Math.abs(xs[l]));
      const r = fitMinScale(xs, w, nmax, L.subarray(32 * j, 32 * j + 32), rmin, f(0.1), nstep);
      scales[j] = r.scale;
      mins[j] = r.min;
      if (r.scale > maxScale) maxScale = r.scale;
      if (r.min > maxMin) maxMin = r.min;
    }
    const invScale = maxScale > 0 ? f(63 / maxScale) : 0, invMin = maxMin > 0 ? f(63 / maxMin) : 0;
    const sc = o + 4; // scales[12] after d and dmin
    out.fill(0, sc, sc + 12);
    for (let j = 0; j < 8; j++) {
      const ls = Math.min(63, nearestInt(f(invScale * scales[j])) & 0xff);
      const lm = Math.min(63, nearestInt(f(invMin * mins[j])) & 0xff);
      if (j < 4) {
        out[sc + j] = ls;
        out[sc + j + 4] = lm;
      } else {
        out[sc + j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
        out[sc + j - 4] |= (ls >> 4) << 6;
        out[sc + j] |= (lm >> 4) << 6;
      }
    }
    const dBits = f16Bits(f(maxScale / 63)), mBits = f16Bits(f(maxMin / 63));
    put16(out, o, dBits);
    put16(out, o + 2, mBits);
    const d16 = f16ToF32(Uint16Array.of(dBits))[0], m16 = f16ToF32(Uint16Array.of(mBits))[0];
    for (let j = 0; j < 8; j++) {
      const [s, m] = scaleMinK4(j, out, sc);
      const d = f(d16 * s);
      if (d === 0) continue; // L keeps the levels fitMinScale chose
      const dm = f(m16 * m);
      for (let i = 0; i < 32; i++) {
        L[32 * j + i] = Math.max(0, Math.min(nmax, nearestInt(f(f(x[32 * j + i] + dm) / d))));
      }
    }
    // Sub-blocks 2c and 2c + 1 share 32 bytes of qs (low nibbles, then high); Q5_K keeps their
    // fifth bits as bits 2c and 2c + 1 of qh[0..32].
    if (bits === 5) out.fill(0, o + qhAt, o + qhAt + 32);
    for (let c = 0; c < 4; c++) {
      for (let l = 0; l < 32; l++) {
        const l1 = L[64 * c + l], l2 = L[64 * c + l + 32];
        out[o + qsAt + 32 * c + l] = (l1 & 15) | ((l2 & 15) << 4);
        if (bits === 5) out[o + qhAt + l] |= ((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1));
      }
    }
  };
}

const GROUP_MAX_EPS = f(1e-15);

/**
 * ggml's make_qx_quants for rmse_type 1 without importance weights (w = x²), levels -nmax..nmax-1:
 * the signed scale maximizing (Σ w x l)² / Σ w l² over the scale -nmax/max and 18 nudged ones; L
 * gets the levels plus nmax.
 */
function fitScale(x: Float32Array, nmax: number, L: Uint8Array): number {
  const n = x.length;
  let max = 0, amax = 0;
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < GROUP_MAX_EPS) {
    L.fill(0);
    return 0;
  }
  const level = (iscale: number, v: number) =>
    Math.max(-nmax, Math.min(nmax - 1, nearestInt(f(iscale * v))));
  /** Σ w x l and Σ w l² at `iscale`, the levels (+ nmax) into `into` if given. */
  const sums = (iscale: number, into?: Uint8Array): [number, number] => {
    let sumLX = 0, sumL2 = 0;
    for (let i = 0; i < n; i++) {
      const l = level(iscale, x[i]), w = f(x[i] * x[i]);
      if (into) into[i] = l + nmax;
      sumLX = f(sumLX + f(f(w * x[i]) * l));
      sumL2 = f(sumL2 + f(f(w * l) * l));
    }
    return [sumLX, sumL2];
  };
  let [sumLX, sumL2] = sums(f(-nmax / max), L);
  let scale = sumL2 ? f(sumLX / sumL2) : 0, best = f(scale * sumLX);
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    const iscale = f(-f(nmax + f(f(0.1) * is)) / max);
    [sumLX, sumL2] = sums(iscale);
    if (sumL2 > 0 && f(sumLX * sumLX) > f(best * sumL2)) {
      for (let i = 0; i < n; i++) L[i] = level(iscale, x[i]) + nmax;
      scale = f(sumLX / sumL2);
      best = f(scale * sumLX);
    }
  }
  return scale;
}

/**
 * One Q6_K super-block of 256 values at out[o...] (210 bytes: ql[128], qh[64], scales[16] int8,
 * d): ggml's quantize_row_q6_K_ref. Each of the 16 sub-blocks of 16 gets a signed scale
 * (fitScale); the scales are quantized to int8 against the super-block's d (f16), then every value
 * is re-quantized to 6 bits (-32..31, stored + 32) with the scale actually stored.
 */
function writeQ6K(x: Float32Array, out: Uint8Array, o: number): void {
  const L = new Uint8Array(256), scales = new Float32Array(16);
  let maxScale = 0, maxAbsScale = 0;
  for (let ib = 0; ib < 16; ib++) {
    const scale = fitScale(
      x.subarray(16 * ib, 16 * ib + 16),
      32,
      L.subarray(16 * ib, 16 * ib + 16),
    );
    scales[ib] = scale;
    if (Math.abs(scale) > maxAbsScale) {
      maxAbsScale = Math.abs(scale);
      maxScale = scale;
    }
  }
  out.fill(0, o, o + 210);
  if (maxAbsScale < GROUP_MAX_EPS) return; // d = 0 and every byte 0
  const iscale = f(-128 / maxScale), dBits = f16Bits(f(1 / iscale)), sc = o + 192;
  put16(out, o + 208, dBits);
  for (let ib = 0; ib < 16; ib++) out[sc + ib] = Math.min(127, nearestInt(f(iscale * scales[ib])));
  const d16 = f16ToF32(Uint16Array.of(dBits))[0];
  for (let j = 0; j < 16; j++) {
    const d = f(d16 * ((out[sc + j] << 24) >> 24));
    if (d === 0) continue; // L keeps the levels fitScale chose
    for (let i = 0; i < 16; i++) {
      L[16 * j + i] = Math.max(-32, Math.min(31, nearestInt(f(x[16 * j + i] / d)))) + 32;
    }
  }
  // Per half of 128: ql[64 h + l] holds values l and l + 64 (low 4 bits), ql[64 h + 32 + l] values
  // l + 32 and l + 96; qh[32 h + l] their top 2 bits, in that order (l, l + 32, l + 64, l + 96).
  for (let h = 0; h < 2; h++) {
    const ql = o + 64 * h, qh = o + 128 + 32 * h;
    for (let l = 0; l < 32; l++) {
      const a = L[128 * h + l], b = L[128 * h + l + 32];
      const c = L[128 * h + l + 64], e = L[128 * h + l + 96];
      out[ql + l] = (a & 15) | ((c & 15) << 4);
      out[ql + l + 32] = (b & 15) | ((e & 15) << 4);
      out[qh + l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
    }
  }
}

const K_WRITERS: Readonly<Record<string, BlockWriter>> = {
  Q4_K: kMinWriter(4),
  Q5_K: kMinWriter(5),
  Q6_K: writeQ6K,
};

/**
 * Quantizes `x` (rows of `k` values, k a multiple of the block) into `dtype` blocks, row-major as
 * the source (a row of k values becomes k / block blocks).
 */
export function quantize(x: Float32Array, dtype: BlockDType, k: number): Uint8Array {
  const write = WRITERS[dtype] ?? K_WRITERS[dtype];
  if (!write) throw new RangeError(`quantizing to ${dtype} is not implemented`);
  const rowBytes = blockRowBytes(dtype, k), rows = x.length / k;
  if (!Number.isInteger(rows)) throw new RangeError(`${x.length} values are not rows of ${k}`);
  const out = new Uint8Array(rows * rowBytes), { elems, bytes } = BLOCK[dtype];
  for (let b = 0; b < x.length / elems; b++) {
    write(x.subarray(b * elems, (b + 1) * elems), out, b * bytes);
  }
  return out;
}

/** Dequantizes blocks written by {@link quantize} to f32 (as gguf-py's and ggml's dequantize). */
export function dequantize(blocks: Uint8Array, dtype: BlockDType): Float32Array {
  const { bytes, elems } = BLOCK[dtype];
  if (blocks.length % bytes !== 0) {
    throw new RangeError(`${blocks.length} bytes are not whole ${dtype} blocks of ${bytes}`);
  }
  if (dtype === "Q4_K" || dtype === "Q5_K") return dequantizeKMin(blocks, dtype);
  if (dtype === "Q6_K") return dequantizeQ6K(blocks);
  if (elems !== 32 || !WRITERS[dtype]) {
    throw new RangeError(`dequantizing ${dtype} is not implemented`);
  }
  const n = blocks.length / bytes, out = new Float32Array(n * 32);
  const dv = new DataView(blocks.buffer, blocks.byteOffset, blocks.byteLength);
  const half = (o: number) => f16ToF32(Uint16Array.of(dv.getUint16(o, true)))[0];
  for (let b = 0; b < n; b++) {
    const o = b * bytes, y = out.subarray(b * 32, b * 32 + 32);
    const d = half(o);
    const nib = (qs: number, j: number) => j < 16 ? blocks[qs + j] & 15 : blocks[qs + j - 16] >> 4;
    switch (dtype) {
      case "Q8_0":
        for (let j = 0; j < 32; j++) y[j] = d * ((blocks[o + 2 + j] << 24) >> 24);
        break;
      case "Q4_0":
        for (let j = 0; j < 32; j++) y[j] = d * (nib(o + 2, j) - 8);
        break;
      case "Q4_1": {
        const m = half(o + 2);
        for (let j = 0; j < 32; j++) y[j] = f(d * nib(o + 4, j)) + m;
        break;
      }
      case "Q5_0": {
        const qh = dv.getUint32(o + 2, true);
        for (let j = 0; j < 32; j++) y[j] = d * ((nib(o + 6, j) | (((qh >>> j) & 1) << 4)) - 16);
        break;
      }
      case "Q5_1": {
        const m = half(o + 2), qh = dv.getUint32(o + 4, true);
        for (let j = 0; j < 32; j++) y[j] = f(d * (nib(o + 8, j) | (((qh >>> j) & 1) << 4))) + m;
        break;
      }
    }
  }
  return out;
}

function dequantizeKMin(blocks: Uint8Array, dtype: "Q4_K" | "Q5_K"): Float32Array {
  const bytes = BLOCK[dtype].bytes, n = blocks.length / bytes, out = new Float32Array(n * 256);
  const half = (o: number) => f16ToF32(Uint16Array.of(blocks[o] | (blocks[o + 1] << 8)))[0];
  const five = dtype === "Q5_K", qsAt = five ? 48 : 16;
  for (let b = 0; b < n; b++) {
    const o = b * bytes, d = half(o), dmin = half(o + 2);
    for (let j = 0; j < 8; j++) {
      const [s, m] = scaleMinK4(j, blocks, o + 4);
      const d1 = f(d * s), m1 = f(dmin * m);
      // Sub-blocks 2i and 2i + 1 share 32 bytes: low nibbles, then high nibbles; Q5_K's fifth
      // bits are bit j of qh[0..32].
      const qs = o + qsAt + 32 * (j >> 1), shift = (j & 1) * 4;
      for (let l = 0; l < 32; l++) {
        let q = (blocks[qs + l] >> shift) & 15;
        if (five) q |= ((blocks[o + 16 + l] >> j) & 1) << 4;
        out[b * 256 + 32 * j + l] = f(f(d1 * q) - m1);
      }
    }
  }
  return out;
}

function dequantizeQ6K(blocks: Uint8Array): Float32Array {
  const n = blocks.length / 210, out = new Float32Array(n * 256);
  for (let b = 0; b < n; b++) {
    const o = b * 210;
    const d = f16ToF32(Uint16Array.of(blocks[o + 208] | (blocks[o + 209] << 8)))[0];
    for (let h = 0; h < 2; h++) {
      const ql = o + 64 * h, qh = o + 128 + 32 * h, sc = o + 192 + 8 * h;
      const y = out.subarray(b * 256 + 128 * h, b * 256 + 128 * h + 128);
      for (let l = 0; l < 32; l++) {
        const is = l >> 4, hi = blocks[qh + l];
        const q = [
          (blocks[ql + l] & 15) | ((hi & 3) << 4),
          (blocks[ql + l + 32] & 15) | (((hi >> 2) & 3) << 4),
          (blocks[ql + l] >> 4) | (((hi >> 4) & 3) << 4),
          (blocks[ql + l + 32] >> 4) | (((hi >> 6) & 3) << 4),
        ];
        for (let t = 0; t < 4; t++) {
          const s = (blocks[sc + is + 2 * t] << 24) >> 24;
          y[l + 32 * t] = f(f(d * s) * (q[t] - 32));
        }
      }
    }
  }
  return out;
}

/** How far quantized weights are from the source: what a split's manifest records per tensor. */
export interface QuantError {
  /** √(Σ(w − ŵ)² / Σw²). */
  relRms: number;
  /** max |w − ŵ|. */
  maxAbs: number;
}

export function quantError(w: Float32Array, q: Float32Array): QuantError {
  let num = 0, den = 0, maxAbs = 0;
  for (let i = 0; i < w.length; i++) {
    const e = w[i] - q[i];
    num += e * e;
    den += w[i] * w[i];
    maxAbs = Math.max(maxAbs, Math.abs(e));
  }
  return { relRms: den === 0 ? 0 : Math.sqrt(num / den), maxAbs };
}
