import assert from "node:assert/strict";
import { llama } from "../lib/models/llama.ts";
import { ropeTable } from "../lib/rope.ts";

interface Case {
  name: string;
  config: Record<string, unknown>;
  seq_len: number | null;
  inv_freq: number[];
  attention_scaling: number;
}
// Written by scripts/make_rope_reference.py from transformers' own LlamaRotaryEmbedding.
const tables = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/rope_tables.json", import.meta.url)),
) as { cases: Case[] };

for (const c of tables.cases) {
  Deno.test(`ropeTable: ${c.name} matches transformers' inv_freq and attention scaling`, () => {
    const cfg = llama.parseConfig({
      architectures: ["LlamaForCausalLM"],
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
