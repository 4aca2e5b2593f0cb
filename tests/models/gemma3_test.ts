import assert from "node:assert/strict";
import { gemma, gemma3Raw, parse } from "./_helpers.ts";

// Gemma: the expected values are what transformers 5.23's Gemma2Config / Gemma3TextConfig give
// for the same dicts (from_dict), e.g. head_dim 256 and 4 KV heads when absent.

const dflt = (theta: number) => ({ type: "default", theta, partialRotaryFactor: 1, params: {} });

Deno.test("config: Gemma 3 defaults: 5 sliding layers per full one, ropes 1e4 / 1e6", () => {
  const c = gemma({ ...gemma3Raw, num_hidden_layers: 7, attn_logit_softcapping: 20 });
  assert.deepEqual(c.layerWindows, [4096, 4096, 4096, 4096, 4096, 0, 4096]);
  assert.deepEqual(c.layerRopes.map((r) => r.theta), [1e4, 1e4, 1e4, 1e4, 1e4, 1e6, 1e4]);
  assert.deepEqual(c.layerRopes[0], dflt(1e4));
  assert.deepEqual(c.layerRopes[5], dflt(1e6));
  assert.equal(c.layerRopes[0], c.layerRopes[1]); // one table per rope, not per layer
  assert.equal(c.rope, c.layerRopes[5]);
  assert.equal(c.finalLogitSoftcap, 0);
  assert.equal(c.attnSoftcap, 0); // Gemma3Attention does not pass attn_logit_softcapping
  assert.equal(c.attnScale, 0.0625);
  assert.equal(c.headDim, 256);
  assert.equal(c.maxPositionEmbeddings, 131072);
});

Deno.test("config: Gemma 3 legacy keys and transformers 5 rope_parameters agree", () => {
  const legacy = gemma({
    ...gemma3Raw,
    num_hidden_layers: 7,
    sliding_window: 512,
    sliding_window_pattern: 3,
    rope_theta: 5e5,
    rope_local_base_freq: 123,
    rope_scaling: { rope_type: "linear", factor: 8 },
  });
  const v5 = gemma({
    ...gemma3Raw,
    num_hidden_layers: 7,
    sliding_window: 512,
    layer_types: [0, 1, 2, 3, 4, 5, 6].map((i) =>
      (i + 1) % 3 ? "sliding_attention" : "full_attention"
    ),
    rope_parameters: {
      full_attention: { rope_type: "linear", factor: 8, rope_theta: 5e5 },
      sliding_attention: { rope_type: "default", rope_theta: 123 },
    },
  });
  for (const c of [legacy, v5]) {
    assert.deepEqual(c.layerWindows, [512, 512, 0, 512, 512, 0, 512]);
    const full = { type: "linear", theta: 5e5, partialRotaryFactor: 1, params: { factor: 8 } };
    assert.deepEqual(c.layerRopes, [1, 1, 0, 1, 1, 0, 1].map((s) => s ? dflt(123) : full));
  }
});

Deno.test("config: Gemma 3 rope quirks follow Gemma3TextConfig", () => {
  // A flat rope_parameters is not nested by layer type: transformers ignores it entirely.
  const flat = gemma({ ...gemma3Raw, rope_parameters: { rope_type: "linear", factor: 8 } });
  assert.deepEqual(flat.layerRopes, [dflt(1e4), dflt(1e4), dflt(1e4), dflt(1e4)]);
  assert.deepEqual(flat.rope, dflt(1e6));
  // Legacy rope_scaling with the old "type" key merges into {rope_type: "default"}: still default.
  const old = gemma({ ...gemma3Raw, rope_scaling: { type: "yarn", factor: 4 } });
  assert.equal(old.rope.type, "default");
  // Scaled types default original_max_position_embeddings to max_position_embeddings.
  const yarn = gemma({ ...gemma3Raw, rope_scaling: { rope_type: "yarn", factor: 4 } });
  assert.deepEqual(yarn.rope.params, { factor: 4, original_max_position_embeddings: 131072 });
  assert.throws(
    () => parse({ ...gemma3Raw, rope_scaling: { rope_type: "su", factor: 4 } }),
    /unsupported rope type "su"/,
  );
});
