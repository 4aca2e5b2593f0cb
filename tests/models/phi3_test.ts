import assert from "node:assert/strict";
import { familyFor } from "../../lib/models/registry.ts";
import { base, parse } from "./_helpers.ts";

// Qwen3 / Phi-3 / Phi: expected values are what transformers 5.23's Qwen3Config, Phi3Config and
// PhiConfig (and their rotary modules) give for the same dicts.
const phi3Raw = { ...base, architectures: ["Phi3ForCausalLM"], model_type: "phi3" };

Deno.test("config: Phi-3 longrope, legacy su/yarn, original_max_position_embeddings, window", () => {
  const d = parse(phi3Raw);
  assert.equal(d.rmsNormEps, 1e-5);
  assert.equal(d.maxPositionEmbeddings, 4096);
  assert.deepEqual(d.layerWindows, [0, 0]);
  assert.deepEqual(d.rope, { type: "default", theta: 10000, partialRotaryFactor: 1, params: {} });
  const short_factor = [1, 1, 1, 1, 1, 1], long_factor = [2, 2, 2, 2, 2, 2];
  for (const type of ["su", "yarn", "longrope"]) {
    const c = parse({
      ...phi3Raw,
      partial_rotary_factor: 0.75, // head_dim 16 -> 12 rotary dims, 6 factors
      max_position_embeddings: 512,
      original_max_position_embeddings: 128,
      sliding_window: 7,
      rope_scaling: { type, short_factor, long_factor, original_max_position_embeddings: 99 },
    });
    assert.deepEqual(c.rope, {
      type: "longrope",
      theta: 10000,
      partialRotaryFactor: 0.75,
      // the top-level original_max_position_embeddings wins over the rope dict's
      params: { short_factor, long_factor, original_max_position_embeddings: 128 },
    });
    assert.deepEqual(c.layerRopes, [c.rope, c.rope]);
    assert.deepEqual(c.layerWindows, [7, 7]);
  }
  // No top-level key: Phi3Config's default 4096.
  const v5 = parse({
    ...phi3Raw,
    rope_parameters: {
      rope_type: "longrope",
      rope_theta: 5e4,
      short_factor: [...short_factor, 1, 1],
      long_factor: [...long_factor, 2, 2],
      original_max_position_embeddings: 64,
    },
  });
  assert.equal(v5.rope.params.original_max_position_embeddings, 4096);
  assert.throws(
    () => parse({ ...phi3Raw, rope_scaling: { type: "longrope", short_factor, long_factor } }),
    /m\/config.json: rope_scaling.short_factor: rope type longrope needs a list of 8 numbers/,
  );
  assert.throws(
    () => parse({ ...phi3Raw, rope_scaling: { type: "linear", factor: 2 } }),
    /Phi-3 runs rope types default and longrope \(su, yarn\), not "linear"/,
  );
  const f = familyFor("Phi3ForCausalLM", "m");
  assert.deepEqual(
    f.expected({ kind: "layer", index: 0 }, d).map((e) => [e.local, e.shape]),
    [
      ["input_layernorm.weight", [64]],
      ["self_attn.qkv_proj.weight", [192, 64]],
      ["self_attn.o_proj.weight", [64, 64]],
      ["post_attention_layernorm.weight", [64]],
      ["mlp.gate_up_proj.weight", [256, 64]],
      ["mlp.down_proj.weight", [64, 128]],
    ],
  );
  assert.equal(f.place("model.layers.0.self_attn.q_proj.weight", d), undefined);
  assert.equal(f.place("model.layers.0.mlp.gate_proj.weight", d), undefined);
});
