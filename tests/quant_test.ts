/**
 * lib/quant.ts against gguf-py (scripts/make_quantize_reference.py): the same blocks byte for byte
 * (ggml's reference quantizers) and the same dequantized values; the K formats against ggml's own
 * blocks (scripts/make_kquant_ggml_reference.py) and the backend's dequantization.
 */
import assert from "node:assert/strict";
import {
  BLOCK,
  type BlockDType,
  blockRowBytes,
  dequantize,
  quantError,
  quantize,
} from "../lib/quant.ts";
import { Backend } from "../ffi/backend.ts";

const dir = new URL("./fixtures/quantize/", import.meta.url);
const meta = JSON.parse(await Deno.readTextFile(new URL("meta.json", dir)));
const f32 = async (name: string) => {
  const b = await Deno.readFile(new URL(name, dir));
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
};

// gguf-py quantizes the 32-element formats; the K formats (no gguf-py quantizer) are tested below.
for (const dtype of meta.types as BlockDType[]) {
  Deno.test(`quant ${dtype}: blocks equal gguf-py's byte for byte, dequantized values too`, async () => {
    const x = await f32("input.f32");
    const want = await Deno.readFile(new URL(`${dtype}.bin`, dir));
    const got = quantize(x, dtype, meta.cols);
    assert.equal(got.length, meta.rows * blockRowBytes(dtype, meta.cols));
    assert.equal(got.length, want.length);
    const first = got.findIndex((b, i) => b !== want[i]);
    assert.equal(
      first,
      -1,
      `first differing byte ${first} (block ${Math.floor(first / BLOCK[dtype].bytes)})`,
    );
    const deq = dequantize(got, dtype), ref = await f32(`${dtype}.dequant.f32`);
    assert.equal(deq.length, ref.length);
    for (let i = 0; i < ref.length; i++) assert.equal(deq[i], ref[i], `value ${i}`);
    // The error is what the format allows: half a step of the block's scale, at most.
    const e = quantError(x, deq);
    assert.ok(e.relRms < (dtype === "Q8_0" ? 0.01 : 0.15), `${dtype} rel rms ${e.relRms}`);
  });
}

Deno.test("quant: rows must hold whole blocks", () => {
  assert.throws(() => quantize(new Float32Array(48), "Q8_0", 48), /multiples of 32/);
  assert.throws(() => blockRowBytes("Q4_K", 512 + 32), /multiples of 256/);
  assert.equal(blockRowBytes("Q6_K", 512), 420);
  assert.throws(() => quantize(new Float32Array(288), "Q6_K", 288), /multiples of 256/);
});

// The K formats against ggml's own blocks of the same input (scripts/make_kquant_ggml_reference.py:
// quantize_row_q{4,5,6}_K_ref of a GGML_NATIVE build of llama-cpp-python). ggml's bytes could depend
// on its compiler fusing a*b + c into FMAs (a build with -ffp-contract=fast at -O2 gives other Q5_K
// bytes), but that build's are ours to the byte: the fraction equal is 1. Where a rebuild differs,
// neither choice is better: the error must stay ggml's.
const K_ERROR: Record<string, number> = { Q4_K: 0.08, Q5_K: 0.045, Q6_K: 0.025 };
for (const dtype of ["Q4_K", "Q5_K", "Q6_K"] as const) {
  Deno.test(`quant ${dtype}: ggml's algorithm, the bytes of ggml's own blocks, its error`, async () => {
    const x = await f32("input.f32");
    const ours = quantize(x, dtype, meta.cols);
    const ggml = await Deno.readFile(new URL(`${dtype}.ggml.bin`, dir));
    assert.equal(ours.length, meta.rows * blockRowBytes(dtype, meta.cols));
    assert.equal(ours.length, ggml.length);
    const same = ours.reduce((n, b, i) => n + (b === ggml[i] ? 1 : 0), 0);
    const first = ours.findIndex((b, i) => b !== ggml[i]);
    assert.equal(
      same / ours.length,
      1,
      `${same} of ${ours.length} bytes equal; first differing ${first} (block ${
        Math.floor(first / BLOCK[dtype].bytes)
      })`,
    );
    const eOurs = quantError(x, dequantize(ours, dtype));
    const eGgml = quantError(x, dequantize(ggml, dtype));
    assert.ok(eOurs.relRms <= eGgml.relRms, `ours ${eOurs.relRms} vs ggml ${eGgml.relRms}`);
    assert.ok(eGgml.relRms < K_ERROR[dtype], `ggml's own error ${eGgml.relRms}`);
  });
}

/** Deterministic test values: uniform in [-1, 1) times 1..5 per block, 2% of them 20 times that. */
function mixed(n: number): Float32Array {
  let s = 1;
  const r = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
  return Float32Array.from(
    { length: n },
    (_, i) => (2 * r() - 1) * (r() < 0.02 ? 20 : 1) * (1 + Math.floor(i / 256) % 5),
  );
}

Deno.test("quant K formats: dequantize(quantize(x)) within 1.5 steps of the levels", () => {
  const x = mixed(256 * 64);
  // Per super-block, max |x - x̂| over the block's range: under 1.5 steps of nmax levels (the
  // sub-block scales are themselves quantized, 6 or 8 bits, so a little over half a step).
  const levels = { Q4_K: 15, Q5_K: 31, Q6_K: 63 }, rms = { Q4_K: 0.12, Q5_K: 0.06, Q6_K: 0.04 };
  let prev = Infinity;
  for (const dtype of ["Q4_K", "Q5_K", "Q6_K"] as const) {
    const y = dequantize(quantize(x, dtype, 512), dtype);
    assert.equal(y.length, x.length);
    for (let b = 0; b < x.length / 256; b++) {
      const xs = x.subarray(256 * b, 256 * b + 256), ys = y.subarray(256 * b, 256 * b + 256);
      let lo = Infinity, hi = -Infinity, err = 0;
      for (let i = 0; i < 256; i++) {
        lo = Math.min(lo, xs[i]);
        hi = Math.max(hi, xs[i]);
        err = Math.max(err, Math.abs(xs[i] - ys[i]));
      }
      assert.ok(err <= (1.5 * (hi - lo)) / levels[dtype], `${dtype} block ${b}: ${err}`);
    }
    const e = quantError(x, y);
    assert.ok(e.relRms < rms[dtype] && e.relRms < prev, `${dtype} rel rms ${e.relRms}`);
    prev = e.relRms;
  }
});

Deno.test("quant K formats: zero and constant blocks", () => {
  const zero = new Float32Array(256);
  for (const dtype of ["Q4_K", "Q5_K", "Q6_K"] as const) {
    const q = quantize(zero, dtype, 256);
    assert.ok(q.every((b) => b === 0), `${dtype} of zeros`);
    assert.ok(dequantize(q, dtype).every((v) => v === 0));
    for (const c of [0.3, -2]) {
      const x = new Float32Array(256).fill(c), y = dequantize(quantize(x, dtype, 256), dtype);
      assert.ok(quantError(x, y).relRms < 0.01, `${dtype} of ${c}: ${y[0]}`);
    }
  }
  assert.throws(() => dequantize(new Uint8Array(211), "Q6_K"), /whole Q6_K blocks/);
});

for (const dtype of ["Q4_K", "Q5_K", "Q6_K"] as const) {
  Deno.test(`quant ${dtype}: the TS dequantization equals the backend's (checked against gguf-py)`, async () => {
    const x = await f32("input.f32");
    const blocks = quantize(x, dtype, meta.cols);
    const ts = dequantize(blocks, dtype);
    using be = Backend.open();
    const table = be.alloc(blocks.length), out = be.alloc(ts.length * 4);
    be.upload(table, blocks);
    be.embedding(
      out,
      table,
      dtype,
      Int32Array.from({ length: meta.rows }, (_, i) => i),
      meta.cols,
      meta.rows,
    );
    const got = new Float32Array(ts.length);
    be.download(got, out);
    // -0 and +0 aside (the backend's fma gives +0 where d * 0 is -0).
    for (let i = 0; i < ts.length; i++) {
      assert.equal(got[i] === 0 ? 0 : got[i], ts[i] === 0 ? 0 : ts[i], `value ${i}`);
    }
    be.free(table);
    be.free(out);
  });
}
