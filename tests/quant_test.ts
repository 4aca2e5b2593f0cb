/**
 * lib/quant.ts against gguf-py (scripts/make_quantize_reference.py): the same blocks byte for byte
 * (ggml's reference quantizers) and the same dequantized values.
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

// gguf-py quantizes the 32-element formats; Q4_K (no gguf-py quantizer) is tested below.
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
  assert.throws(() => quantize(new Float32Array(256), "Q6_K", 256), /not implemented/);
});

Deno.test("quant Q4_K: ggml's algorithm; its error matches ggml's own blocks, most bytes equal", async () => {
  const x = await f32("input.f32");
  const ours = quantize(x, "Q4_K", meta.cols);
  const ggml = await Deno.readFile(new URL("Q4_K.ggml.bin", dir));
  assert.equal(ours.length, ggml.length);
  // ggml's bytes depend on its compiler fusing a*b + c into FMAs; ours rounds each step as the C
  // reads. The choices agree almost everywhere; where they differ, neither is better.
  const same = ours.reduce((n, b, i) => n + (b === ggml[i] ? 1 : 0), 0);
  assert.ok(same / ours.length > 0.9, `${same} of ${ours.length} bytes equal`);
  const eOurs = quantError(x, dequantize(ours, "Q4_K"));
  const eGgml = quantError(x, dequantize(ggml, "Q4_K"));
  assert.ok(eOurs.relRms <= 1.01 * eGgml.relRms, `ours ${eOurs.relRms} vs ggml ${eGgml.relRms}`);
  assert.ok(eGgml.relRms < 0.12, `ggml's own error ${eGgml.relRms}`);
});

Deno.test("quant Q4_K: the TS dequantization equals the backend's (checked against gguf-py)", async () => {
  const x = await f32("input.f32");
  const blocks = quantize(x, "Q4_K", meta.cols);
  const ts = dequantize(blocks, "Q4_K");
  using be = Backend.open();
  const table = be.alloc(blocks.length), out = be.alloc(ts.length * 4);
  be.upload(table, blocks);
  be.embedding(
    out,
    table,
    "Q4_K",
    Int32Array.from({ length: meta.rows }, (_, i) => i),
    meta.cols,
    meta.rows,
  );
  const got = new Float32Array(ts.length);
  be.download(got, out);
  for (let i = 0; i < ts.length; i++) {
    assert.equal(got[i] === 0 ? 0 : got[i], ts[i] === 0 ? 0 : ts[i], `value ${i}`);
  }
  be.free(table);
  be.free(out);
});
