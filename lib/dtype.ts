/**
 * Tensor element types as safetensors names them, their sizes, and exact conversions between f32
 * and the two 16-bit float formats.
 *
 * The conversions are bit-exact with PyTorch on CPU (round to nearest, ties to even; subnormals,
 * ±0, ±inf kept), checked against a table of torch outputs in `tests/dtype_test.ts`. NaN rules:
 * - f32 → f16: sign, quiet bit and the top 10 payload bits are kept (`sign | 0x7e00 | m >> 13`).
 * - f16 → f32: sign and payload kept, quiet bit set (a signalling NaN comes back quiet).
 * - f32 → bf16: every NaN becomes `0x7fc0`, as `c10::BFloat16` does. (torch's vectorised kernel for
 *   contiguous tensors writes `0xffff` instead; both are quiet NaNs.)
 * - bf16 → f32: the 16 bits shifted up, nothing else.
 *
 * `out` must not overlap `src`. Typed-array views are host-endian; safetensors data is
 * little-endian, as are all supported hosts.
 *
 * @module
 */
import { type BlockDType, blockRowBytes, isBlockDType } from "./quant.ts";

/** Element types of plain arrays, by their safetensors names. */
export type PlainDType = "F32" | "F16" | "BF16" | "I8" | "U8" | "I32" | "I64";

/**
 * Element types rabbitllm reads and writes: the plain ones, and ggml's block formats (lib/quant.ts),
 * which our own quantized split files carry under their GGUF names.
 */
export type DType = PlainDType | BlockDType;

/** Bytes per element of each plain dtype. */
export const DTYPE_SIZE: Readonly<Record<PlainDType, number>> = Object.freeze({
  F32: 4,
  F16: 2,
  BF16: 2,
  I8: 1,
  U8: 1,
  I32: 4,
  I64: 8,
});

/** Every plain dtype, in the order error messages list them (then the block formats). */
export const DTYPES: readonly PlainDType[] = Object.freeze(
  Object.keys(DTYPE_SIZE) as PlainDType[],
);

/** Whether `name` is a supported dtype name (case-sensitive, as in safetensors headers). */
export function isDType(name: unknown): name is DType {
  return typeof name === "string" && (Object.hasOwn(DTYPE_SIZE, name) || isBlockDType(name));
}

/**
 * Bytes of a tensor of `shape`: elements × size for plain dtypes; for a block format, rows of the
 * last dim, which must hold whole blocks (RangeError otherwise).
 */
export function tensorByteSize(dtype: DType, shape: readonly number[]): number {
  if (!isBlockDType(dtype)) return shape.reduce((n, d) => n * d, DTYPE_SIZE[dtype]);
  if (shape.length === 0) throw new RangeError(`a ${dtype} tensor needs at least one dim`);
  const rows = shape.slice(0, -1).reduce((n, d) => n * d, 1);
  return rows * blockRowBytes(dtype, shape[shape.length - 1]);
}

/** Bytes of one row of `k` elements (byte offsets of row views into a weight). */
export function rowByteSize(dtype: DType, k: number): number {
  return isBlockDType(dtype) ? blockRowBytes(dtype, k) : k * DTYPE_SIZE[dtype];
}

/** Bytes per element of a plain `dtype`. */
export function dtypeSize(dtype: PlainDType): number {
  return DTYPE_SIZE[dtype];
}

function f32Bits(src: Float32Array): Uint32Array {
  return new Uint32Array(src.buffer, src.byteOffset, src.length);
}

function checkOut<T extends { length: number }>(out: T, n: number, fn: string): T {
  if (out.length < n) {
    throw new RangeError(`${fn}: output holds ${out.length} elements, need ${n}`);
  }
  return out;
}

/** f32 bit pattern → f16 bit pattern, round to nearest even. */
export function f32BitsToF16Bits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const abs = x & 0x7fffffff;
  if (abs >= 0x477ff000) { // ≥ 65520 rounds to inf (65504 has an odd mantissa); NaN stays NaN
    if (abs > 0x7f800000) return sign | 0x7e00 | ((abs >>> 13) & 0x3ff);
    return sign | 0x7c00;
  }
  if (abs >= 0x38800000) { // normal f16 (≥ 2^-14)
    const r = abs - 0x38000000; // rebias the exponent from 127 to 15
    const q = r >>> 13;
    const rem = r & 0x1fff;
    return sign | (q + (rem > 0x1000 || (rem === 0x1000 && (q & 1)) ? 1 : 0));
  }
  // subnormal f16 (or zero): value in units of 2^-24 is m · 2^(e-126), with e ≤ 112
  const e = abs >>> 23;
  const shift = 126 - e;
  if (shift > 24) return sign; // < 2^-25: rounds to zero
  const m = (abs & 0x7fffff) | 0x800000;
  const q = m >>> shift;
  const rem = m & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  return sign | (q + (rem > half || (rem === half && (q & 1)) ? 1 : 0));
}

/** f16 bit pattern → f32 bit pattern (exact; NaNs quieted). */
export function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) {
    return (sign | 0x7f800000 | (mant === 0 ? 0 : 0x400000 | (mant << 13))) >>> 0;
  }
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  // subnormal: normalise the mantissa
  const lead = Math.clz32(mant) - 21; // shifts that bring the top set bit to bit 10
  return (sign | ((113 - lead) << 23) | (((mant << lead) & 0x3ff) << 13)) >>> 0;
}

/** f32 bit pattern → bf16 bit pattern, round to nearest even; NaN → 0x7fc0. */
export function f32BitsToBf16Bits(x: number): number {
  if ((x & 0x7fffffff) > 0x7f800000) return 0x7fc0;
  return ((x >>> 0) + 0x7fff + ((x >>> 16) & 1)) >>> 16;
}

/**
 * Converts f32 values to f16 bits (round to nearest even). Writes into `out` when given.
 * The platform's Float16Array rounds the same way and is faster; only its NaNs are redone.
 */
export function f32ToF16(src: Float32Array, out?: Uint16Array): Uint16Array {
  const n = src.length;
  const dst = out ? checkOut(out, n, "f32ToF16") : new Uint16Array(n);
  new Float16Array(dst.buffer, dst.byteOffset, n).set(src);
  const bits = f32Bits(src);
  for (let i = 0; i < n; i++) {
    if ((bits[i] & 0x7fffffff) > 0x7f800000) dst[i] = f32BitsToF16Bits(bits[i]);
  }
  return dst;
}

let f16Table: Uint32Array | undefined;

/** Converts f16 bits to f32 values (exact). Writes into `out` when given. */
export function f16ToF32(src: Uint16Array, out?: Float32Array): Float32Array {
  const n = src.length;
  const dst = out ? checkOut(out, n, "f16ToF32") : new Float32Array(n);
  if (f16Table === undefined) { // all 65536 f16 → f32 bit patterns, 256 KiB
    f16Table = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32Bits(h);
  }
  const bits = f32Bits(dst);
  for (let i = 0; i < n; i++) bits[i] = f16Table[src[i]];
  return dst;
}

/** Converts f32 values to bf16 bits (round to nearest even). Writes into `out` when given. */
export function f32ToBf16(src: Float32Array, out?: Uint16Array): Uint16Array {
  const n = src.length;
  const dst = out ? checkOut(out, n, "f32ToBf16") : new Uint16Array(n);
  const bits = f32Bits(src);
  for (let i = 0; i < n; i++) dst[i] = f32BitsToBf16Bits(bits[i]);
  return dst;
}

/** Converts bf16 bits to f32 values (exact). Writes into `out` when given. */
export function bf16ToF32(src: Uint16Array, out?: Float32Array): Float32Array {
  const n = src.length;
  const dst = out ? checkOut(out, n, "bf16ToF32") : new Float32Array(n);
  const bits = f32Bits(dst);
  for (let i = 0; i < n; i++) bits[i] = src[i] << 16;
  return dst;
}
