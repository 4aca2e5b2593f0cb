/**
 * DeepSeek's MLA caches the latent: a DeepSeek-V3-shaped attention (128 heads, kv_lora_rank 512,
 * qk_rope_head_dim 64, qk_nope_head_dim 128, v_head_dim 128) keeps kv_lora_rank + qk_rope_head_dim
 * = 576 fp32 per token and layer (2,304 bytes), measured on the backend's live-byte counter, where
 * per-head keys and values would take 2 · 128 · 192 · 4 = 196,608. The checkpoint has V3's
 * attention dims with a small hidden size, vocabulary and expert count (the cache does not depend
 * on those), bf16 weights written from the family's own tensor declarations.
 */
import assert from "node:assert/strict";
import { AutoModel } from "../mod.ts";
import { SafetensorsWriter } from "../lib/safetensors.ts";
import { f32ToBf16 } from "../lib/dtype.ts";
import { deepseekV3 } from "../lib/models/deepseek.ts";
import type { Part } from "../lib/models/family.ts";

const dir = new URL("./.tmp/mla-v3-shape", import.meta.url).pathname;

/** V3's attention dims over the deepseek_v3 fixture's small everything else. */
async function v3ShapedConfig(): Promise<Record<string, unknown>> {
  const fixture = new URL("./fixtures/deepseek_v3/config.json", import.meta.url);
  const raw = JSON.parse(await Deno.readTextFile(fixture));
  return {
    ...raw,
    num_attention_heads: 128,
    num_key_value_heads: 128,
    kv_lora_rank: 512,
    qk_rope_head_dim: 64,
    qk_nope_head_dim: 128,
    qk_head_dim: 192,
    v_head_dim: 128,
    head_dim: 64,
    num_hidden_layers: 2,
    num_nextn_predict_layers: 0,
    dtype: "bfloat16",
  };
}

/** Seeded values in [-s, s). */
function fill(n: number, s: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = (x / 4294967296 * 2 - 1) * s;
  }
  return out;
}

async function writeCheckpoint(raw: Record<string, unknown>): Promise<void> {
  const cfg = deepseekV3.parseConfig(raw, "config.json");
  const global: Record<string, Part> = {
    "model.embed_tokens.": { kind: "embed" },
    "model.norm.": { kind: "norm" },
    "lm_head.": { kind: "lm_head" },
  };
  const specs: { name: string; shape: number[] }[] = [];
  for (const [prefix, part] of Object.entries(global)) {
    for (const t of deepseekV3.expected(part, cfg)) specs.push({ name: prefix + t.local, ...t });
  }
  for (let l = 0; l < cfg.numLayers; l++) {
    for (const t of deepseekV3.expected({ kind: "layer", index: l }, cfg)) {
      specs.push({ name: `model.layers.${l}.${t.local}`, shape: t.shape });
    }
  }
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(raw));
  const w = await SafetensorsWriter.create(
    `${dir}/model.safetensors`,
    specs.map(({ name, shape }) => ({ name, dtype: "BF16" as const, shape })),
    { format: "pt" },
  );
  for (const [i, s] of specs.entries()) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    const f = s.name.includes("norm") || s.name.endsWith("correction_bias")
      ? new Float32Array(n).fill(1)
      : fill(n, 1 / Math.sqrt(s.shape.at(-1)!), i + 1);
    const b = f32ToBf16(f);
    await w.write(s.name, new Uint8Array(b.buffer, b.byteOffset, b.byteLength));
  }
  await w.commit();
}

Deno.test("mla: a DeepSeek-V3-shaped KV cache holds the latent, 576 floats per token and layer", async () => {
  const raw = await v3ShapedConfig();
  await writeCheckpoint(raw);
  const maxSeqLen = 96;
  await using model = await AutoModel.fromPretrained(dir, {
    layerShardsSavingPath: `${dir}/split`,
    maxSeqLen,
  });
  const be = model.backend;
  const ids = [[1, 17, 42, 99, 7, 3, 250, 64]];
  const out = await model.generate(ids, { maxNewTokens: 3, doSample: false, eosTokenId: [] });
  assert.equal(out[0].length, ids[0].length + 3);
  const withCache = be.stats().liveBytes;
  model.resetCache();
  const cacheBytes = withCache - be.stats().liveBytes;
  const perTokenLayer = cacheBytes / (maxSeqLen * 2);
  assert.equal(perTokenLayer, (512 + 64) * 4, `${cacheBytes} bytes of cache`);
  // What per-head keys and values [128 heads × (nope + rope)] would take: 85 times more.
  assert.ok(perTokenLayer * 85 <= 2 * 128 * 192 * 4);
  // The cached decode (one token at a time over latent rows) chose what a fresh pass over the
  // whole sequence gives, wherever the choice is clear (top-2 margin above fp32 noise).
  const full = await model.forward([out[0]]);
  const V = model.config.vocabSize;
  let checked = 0;
  for (let p = ids[0].length - 1; p < out[0].length - 1; p++) {
    const row = full.subarray(p * V, (p + 1) * V);
    const order = [...row.keys()].sort((a, b) => row[b] - row[a]);
    if (row[order[0]] - row[order[1]] < 1e-3 * Math.max(1, Math.abs(row[order[0]]))) continue;
    assert.equal(out[0][p + 1], order[0], `token ${p + 1}`);
    checked++;
  }
  assert.ok(checked >= 1, "no position had a clear choice");
});
