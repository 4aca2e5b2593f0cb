import assert from "node:assert/strict";
import { llama } from "../lib/models/llama.ts";
import { phi3 } from "../lib/models/phi3.ts";
import { ropeDependsOnLength, ropeTable } from "../lib/rope.ts";

interface Case {
  name: string;
  /** Whose config class and rotary module computed it (absent: llama). */
  model?: "phi3";
  config: Record<string, unknown>;
  seq_len: number | null;
  inv_freq: number[];
  attention_scaling: number;
}
// Written by scripts/make_rope_reference.py from transformers' own LlamaRotaryEmbedding (and
// Phi3RotaryEmbedding for longrope).
const tables = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/rope_tables.json", import.meta.url)),
) as { cases: Case[] };

for (const c of tables.cases) {
  Deno.test(`ropeTable: ${c.name} matches transformers' inv_freq and attention scaling`, () => {
    const family = c.model === "phi3" ? phi3 : llama;
    const cfg = family.parseConfig({
      architectures: family.architectures,
      vocab_size: 32,
      intermediate_size: 64,
      num_hidden_layers: 1,
      ...c.config,
    }, "test");
    const t = ropeTable(cfg.rope, cfg, c.seq_len ?? 1, "test");
    assert.equal(t.invFreq.length, c.inv_freq.length);
    assert.equal(t.rotDim, 2 * c.inv_freq.length);
    for (const [i, want] of c.inv_freq.entries()) {
      const err = Math.abs(t.invFreq[i] - want) / Math.abs(want);
      assert.ok(err <= 4e-7, `inv_freq[${i}] = ${t.invFreq[i]}, transformers ${want} (rel ${err})`);
    }
    assert.ok(
      Math.abs(t.mscale - c.attention_scaling) < 1e-12,
      `mscale ${t.mscale} vs ${c.attention_scaling}`,
    );
  });
}

Deno.test("ropeTable: an unknown rope type is an error naming it", () => {
  const cfg = llama.parseConfig({
    architectures: ["LlamaForCausalLM"],
    vocab_size: 32,
    hidden_size: 64,
    intermediate_size: 64,
    num_hidden_layers: 1,
    num_attention_heads: 4,
  }, "m/config.json");
  assert.throws(
    () => ropeTable({ ...cfg.rope, type: "su" }, cfg, 1, "m/config.json"),
    /m\/config.json: rope_scaling.rope_type: unsupported rope type "su"/,
  );
});

Deno.test("ropeTable: longrope switches factors past original_max_position_embeddings", () => {
  const cfg = phi3.parseConfig({
    architectures: ["Phi3ForCausalLM"],
    vocab_size: 32,
    hidden_size: 16,
    intermediate_size: 64,
    num_hidden_layers: 1,
    num_attention_heads: 2, // head_dim 8: 4 factors
    max_position_embeddings: 64,
    original_max_position_embeddings: 16,
    rope_scaling: { type: "longrope", short_factor: [1, 1, 1, 1], long_factor: [1, 2, 4, 8] },
  }, "test");
  assert.ok(ropeDependsOnLength(cfg.rope));
  const short = ropeTable(cfg.rope, cfg, 16, "test"), long = ropeTable(cfg.rope, cfg, 17, "test");
  assert.deepEqual([...short.invFreq], [
    ...ropeTable({ ...cfg.rope, type: "default" }, cfg, 1, "test").invFreq,
  ]);
  // long = short / factor, exactly for powers of two
  assert.deepEqual([...long.invFreq].map((x, i) => Math.fround(x * [1, 2, 4, 8][i])), [
    ...short.invFreq,
  ]);
  assert.equal(short.mscale, Math.sqrt(1 + Math.log(4) / Math.log(16)));
  assert.equal(long.mscale, short.mscale);
});
