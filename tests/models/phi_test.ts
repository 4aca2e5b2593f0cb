import assert from "node:assert/strict";
import { familyFor } from "../../lib/models/registry.ts";
import { base, parse } from "./_helpers.ts";

// Qwen3 / Phi-3 / Phi: expected values are what transformers 5.23's Qwen3Config, Phi3Config and
// PhiConfig (and their rotary modules) give for the same dicts.
const phiRaw = { ...base, architectures: ["PhiForCausalLM"], model_type: "phi" };

Deno.test("config: Phi partial rotary 0.5 by default, LayerNorm eps, gelu_new, biased head", () => {
  const d = parse(phiRaw);
  assert.equal(d.rope.partialRotaryFactor, 0.5);
  assert.equal(d.rmsNormEps, 1e-5); // layer_norm_eps
  assert.equal(d.hiddenAct, "gelu_new");
  assert.equal(d.maxPositionEmbeddings, 2048);
  assert.equal(d.numKvHeads, 4);
  const c = parse({ ...phiRaw, partial_rotary_factor: 0.4, layer_norm_eps: 1e-6, rope_theta: 500 });
  assert.deepEqual(c.rope, { type: "default", theta: 500, partialRotaryFactor: 0.4, params: {} });
  assert.deepEqual(c.layerRopes, [c.rope, c.rope]);
  assert.equal(c.rmsNormEps, 1e-6);
  const v5 = parse({
    ...phiRaw,
    rope_parameters: { rope_type: "default", rope_theta: 100, partial_rotary_factor: 0.25 },
  });
  assert.equal(v5.rope.partialRotaryFactor, 0.25);
  assert.throws(
    () => parse({ ...phiRaw, tie_word_embeddings: true }),
    /m\/config.json: tie_word_embeddings: a tied Phi lm_head/,
  );
  const f = familyFor("PhiForCausalLM", "m");
  assert.deepEqual(f.expected({ kind: "lm_head" }, d), [
    { local: "weight", shape: [256, 64], matmul: true }, // a quantized split may store it in blocks
    { local: "bias", shape: [256] },
  ]);
  assert.deepEqual(f.place("model.final_layernorm.bias", d), {
    part: { kind: "norm" },
    local: "bias",
  });
  assert.deepEqual(f.place("lm_head.bias", d), { part: { kind: "lm_head" }, local: "bias" });
  assert.equal(f.place("model.layers.0.self_attn.q_layernorm.weight", d), undefined);
  const qk = parse({ ...phiRaw, qk_layernorm: true });
  assert.deepEqual(f.place("model.layers.0.self_attn.q_layernorm.weight", qk)?.part, {
    kind: "layer",
    index: 0,
  });
  assert.equal(f.expected({ kind: "layer", index: 0 }, d).length, 14);
  assert.equal(f.expected({ kind: "layer", index: 0 }, qk).length, 18);
});
