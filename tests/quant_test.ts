/**
 * lib/quant.ts against gguf-py (scripts/make_quantize_reference.py): the same blocks byte for byte
 * (ggml's reference quantizers) and the same dequantized values.
 */
import assert from "node:assert/strict";
import {
  BLOCK,
  blockRowBytes,
  dequantize,
  quantError,
  QUANTIZABLE,
  quantize,
} from "../lib/quant.ts";

const dir = new URL("./fixtures/quantize/", import.meta.url);
const meta = JSON.parse(await Deno.readTextFile(new URL("meta.json", dir)));
const f32 = async (name: string) => {
  const b = await Deno.readFile(new URL(name, dir));
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
};

for (const dtype of QUANTIZABLE) {
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
  assert.throws(() => quantize(new Float32Array(256), "Q4_K", 256), /not implemented/);
});
