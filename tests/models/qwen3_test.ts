import assert from "node:assert/strict";
import { familyFor } from "../../lib/models/registry.ts";
import { base, parse } from "./_helpers.ts";

// Qwen3 / Phi-3 / Phi: expected values are what transformers 5.23's Qwen3Config, Phi3Config and
// PhiConfig (and their rotary modules) give for the same dicts.
const qwen3Raw = { ...base, architectures: ["Qwen3ForCausalLM"], model_type: "qwen3" };

Deno.test("config: Qwen3 head_dim 128 and 32 KV heads when absent, bias only when set", () => {
  const d = parse({ ...qwen3Raw, num_attention_heads: 32 });
  assert.equal(d.headDim, 128); // not hidden / heads (2)
  assert.equal(d.numKvHeads, 32);
  assert.equal(d.attentionBias, false);
  assert.equal(d.rmsNormEps, 1e-6);
  assert.equal(d.maxPositionEmbeddings, 32768);
  assert.deepEqual(d.rope, { type: "default", theta: 10000, partialRotaryFactor: 1, params: {} });
  const c = parse({
    ...qwen3Raw,
    head_dim: 32,
    num_key_value_heads: 2,
    attention_bias: true,
    use_sliding_window: true,
    sliding_window: 8,
    max_window_layers: 1,
  });
  assert.equal(c.headDim, 32); // != hidden / heads (16)
  assert.equal(c.attentionBias, true);
  assert.deepEqual(c.layerWindows, [0, 8]);
  assert.deepEqual(parse({ ...qwen3Raw, num_key_value_heads: 2, sliding_window: 8 }).layerWindows, [
    0,
    0,
  ]);
  const f = familyFor("Qwen3ForCausalLM", "m");
  const layer = f.expected({ kind: "layer", index: 0 }, c);
  assert.deepEqual(layer.filter((e) => /_norm|o_proj.bias/.test(e.local)), [
    { local: "self_attn.q_norm.weight", shape: [32] },
    { local: "self_attn.k_norm.weight", shape: [32] },
    { local: "self_attn.o_proj.bias", shape: [64] },
  ]);
  assert.deepEqual(f.place("model.layers.1.self_attn.q_norm.weight", c), {
    part: { kind: "layer", index: 1 },
    local: "self_attn.q_norm.weight",
  });
  const unbiased = parse({ ...qwen3Raw, num_key_value_heads: 2 });
  assert.equal(f.place("model.layers.1.self_attn.o_proj.bias", unbiased), undefined);
  assert.equal(f.place("model.layers.1.mlp.gate_up_proj.weight", unbiased), undefined);
});
