/**
 * K-quant splits where K blocks really apply: stories260K's 64-value rows all take q4_k's q5_0
 * fallback (tests/quant_split_test.ts), so this builds a tiny Llama whose every matmul row and the
 * tied embedding hold whole 256-value blocks (scripts/make_bench_model.ts "tiny-256", seeded random
 * weights) and checks the q4_k / q5_k / q6_k splits against the same checkpoint's f32 split: which
 * tensors are stored in the K format, and the logits error, as max|Δlogit| / max|logit|.
 *
 * Measured here (seed 1234; random weights give large logits, so these read high next to a trained
 * model's, e.g. stories260K q8_0 1.6e-2): q4_k 1.07e-1, q5_k 5.7e-2, q6_k 2.5e-2, and q8_0 8.2e-3
 * for scale. The bounds below are about twice those. That the engine computes exact f32 math on the dequantized
 * K blocks is checked against transformers' GGUF loader by the gguf_llama_q4_k parity fixture.
 */
import assert from "node:assert/strict";
import { AutoModel } from "../mod.ts";
import type { Manifest } from "../lib/checkpoint.ts";
import { makeBenchModel } from "../scripts/make_bench_model.ts";

const root = new URL("./.tmp/quant_k/", import.meta.url).pathname;
const model = `${root}tiny-256`;
await Deno.stat(`${model}/config.json`).catch(() => makeBenchModel("tiny-256", model, "F32"));

/** Decoded prompt ids (any ids below the vocabulary of 512). */
const IDS = [[1, 17, 300, 45, 99, 256, 3, 511, 8, 64, 128, 7]];

async function logitsOf(dtype: string): Promise<{ logits: Float32Array; manifest: Manifest }> {
  const split = `${root}split-${dtype}`;
  await using m = await AutoModel.fromPretrained(model, {
    dtype: dtype as "q4_k",
    layerShardsSavingPath: split,
    quiet: true,
  });
  const logits = await m.forward(IDS);
  return { logits, manifest: JSON.parse(await Deno.readTextFile(`${split}/manifest.json`)) };
}

const reference = await logitsOf("float32");

const BOUND: Record<string, number> = { q4_k: 0.2, q5_k: 0.1, q6_k: 0.05, q8_0: 0.02 };
for (const [q, bound] of Object.entries(BOUND)) {
  Deno.test(`quantized split ${q} of 256-value rows: every matmul weight and the embedding in ${q}, logits within ${bound} of f32`, async () => {
    const { logits, manifest } = await logitsOf(q);
    assert.equal(manifest.quantize, q.toUpperCase());
    const layer0 = manifest.parts.find((p) => p.id === "layer.0")!;
    for (const t of layer0.tensors) {
      const matmul = t.name.endsWith("proj.weight");
      assert.equal(t.dtype, matmul ? q.toUpperCase() : "F32", t.name);
      if (matmul) assert.ok(t.quantError!.relRms > 0 && t.quantError!.relRms < 0.2, t.name);
    }
    const embed = manifest.parts.find((p) => p.id === "embed")!.tensors[0];
    assert.equal(embed.dtype, q.toUpperCase(), "the (tied) embedding table");

    let maxAbs = 0, maxDiff = 0;
    for (let i = 0; i < reference.logits.length; i++) {
      maxAbs = Math.max(maxAbs, Math.abs(reference.logits[i]));
      maxDiff = Math.max(maxDiff, Math.abs(logits[i] - reference.logits[i]));
    }
    console.log(`${q}: max|Δlogit| ${(maxDiff / maxAbs).toExponential(2)} × max|logit|`);
    assert.ok(maxDiff > 0, "quantization changes something");
    assert.ok(maxDiff <= bound * maxAbs, `${maxDiff} > ${bound} × ${maxAbs}`);
  });
}

Deno.test("quantized splits of 256-value rows: error grows as bits shrink (q6_k < q5_k < q4_k)", async () => {
  const err = async (q: string) => {
    const { logits } = await logitsOf(q);
    let d = 0;
    for (let i = 0; i < logits.length; i++) d += (logits[i] - reference.logits[i]) ** 2;
    return Math.sqrt(d / logits.length);
  };
  const [e4, e5, e6] = [await err("q4_k"), await err("q5_k"), await err("q6_k")];
  assert.ok(e6 < e5 && e5 < e4, `rms error q6_k ${e6}, q5_k ${e5}, q4_k ${e4}`);
});
