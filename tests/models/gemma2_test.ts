import assert from "node:assert/strict";
import { familyFor } from "../../lib/models/registry.ts";
import { gemma, gemma2Raw, gemma3Raw, parse } from "./_helpers.ts";

// Gemma: the expected values are what transformers 5.23's Gemma2Config / Gemma3TextConfig give
// for the same dicts (from_dict), e.g. head_dim 256 and 4 KV heads when absent.

Deno.test("config: Gemma 2 defaults are Gemma2Config's", () => {
  const c = gemma(gemma2Raw);
  assert.equal(c.headDim, 256);
  assert.equal(c.numKvHeads, 4);
  assert.deepEqual(c.layerWindows, [4096, 0, 4096, 0]); // even layers slide
  assert.equal(c.finalLogitSoftcap, 30);
  assert.equal(c.attnSoftcap, 50);
  assert.equal(c.attnScale, 0.0625); // query_pre_attn_scalar 256
  assert.equal(c.hiddenAct, "gelu_pytorch_tanh");
  assert.equal(c.rmsNormEps, 1e-6);
  assert.equal(c.maxPositionEmbeddings, 8192);
  assert.equal(c.tieWordEmbeddings, true);
  assert.deepEqual(c.eosTokenIds, [1]);
  assert.equal(c.bosTokenId, 2);
  assert.deepEqual(c.rope, { type: "default", theta: 10000, partialRotaryFactor: 1, params: {} });
  assert.ok(c.layerRopes.every((r) => r === c.rope));
  assert.equal(familyFor("Gemma2ForCausalLM", "m").embedScale!(c), 8);
});

Deno.test("config: Gemma 2 reads layer_types, sliding_window, softcaps, scalar, hidden_activation", () => {
  const c = gemma({
    ...gemma2Raw,
    head_dim: 16,
    num_key_value_heads: 2,
    layer_types: ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
    sliding_window: 4,
    final_logit_softcapping: null,
    attn_logit_softcapping: 20,
    query_pre_attn_scalar: 24,
    hidden_act: "silu", // ignored: Gemma's MLP reads hidden_activation
    hidden_activation: "gelu",
  });
  assert.equal(c.headDim, 16);
  assert.equal(c.numKvHeads, 2);
  assert.deepEqual(c.layerWindows, [0, 4, 4, 0]);
  assert.equal(c.finalLogitSoftcap, 0);
  assert.equal(c.attnSoftcap, 20);
  assert.equal(c.attnScale, 0.2041241452319315);
  assert.equal(c.hiddenAct, "gelu");
  const legacy = gemma({
    ...gemma2Raw,
    rope_theta: 5e5,
    rope_scaling: { type: "linear", factor: 8 },
  });
  assert.deepEqual(legacy.rope, {
    type: "linear",
    theta: 5e5,
    partialRotaryFactor: 1,
    params: { factor: 8 },
  });
});

Deno.test("config: Gemma rejects what transformers rejects or we do not run", () => {
  assert.throws(() => parse({ ...gemma2Raw, head_dim: null }), /head_dim: expected a positive/);
  assert.throws(
    () => parse({ ...gemma2Raw, sliding_window: null }),
    /sliding_window: is null, but layer_types has sliding_attention layers/,
  );
  assert.throws(() => parse({ ...gemma2Raw, layer_types: ["full_attention"] }), /layer_types/);
  assert.throws(
    () => parse({ ...gemma2Raw, rope_parameters: { full_attention: { rope_type: "default" } } }),
    /rope_parameters: Gemma 2 takes one rope/,
  );
  assert.throws(
    () => parse({ ...gemma3Raw, use_bidirectional_attention: true }),
    /use_bidirectional_attention/,
  );
  assert.throws(() => parse({ ...gemma2Raw, hidden_activation: "relu" }), /hidden_activation/);
  assert.throws(
    () => parse({ ...gemma2Raw, num_attention_heads: 6, num_key_value_heads: 6 }),
    /hidden_size 64 is not a multiple of num_attention_heads 6/,
  );
});

Deno.test("config: Gemma tensor names are exact; q_norm / k_norm only in Gemma 3", () => {
  const g2 = familyFor("Gemma2ForCausalLM", "m"), g3 = familyFor("Gemma3ForCausalLM", "m");
  const c2 = g2.parseConfig(gemma2Raw, "m"), c3 = g3.parseConfig(gemma3Raw, "m");
  const layer = { kind: "layer", index: 1 };
  const norms = [
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "pre_feedforward_layernorm.weight",
    "post_feedforward_layernorm.weight",
  ];
  assert.deepEqual(g2.place("model.layers.1.pre_feedforward_layernorm.weight", c2), {
    part: layer,
    local: "pre_feedforward_layernorm.weight",
  });
  assert.equal(g2.place("model.layers.1.self_attn.q_norm.weight", c2), undefined);
  assert.deepEqual(g3.place("model.layers.1.self_attn.k_norm.weight", c3)?.part, layer);
  for (const f of [g2, g3]) {
    const c = f === g2 ? c2 : c3;
    assert.deepEqual(f.place("lm_head.weight", c), { part: null, local: "weight" }); // tied
    assert.deepEqual(f.place("model.norm.weight", c), { part: { kind: "norm" }, local: "weight" });
    for (
      const bad of [
        "model.layers.1.self_attn.rotary_emb.inv_freq",
        "model.layers.1.self_attn.o_proj.bias",
        "model.layers.4.input_layernorm.weight",
        "model.layers.1.mlp.gate_proj.bias",
        "model.embed_tokens.bias",
      ]
    ) assert.equal(f.place(bad, c), undefined, bad);
    const names = f.expected({ kind: "layer", index: 0 }, c).map((e) => e.local);
    for (const n of norms) assert.ok(names.includes(n), n);
  }
  assert.equal(g2.expected({ kind: "layer", index: 0 }, c2).length, 11);
  assert.deepEqual(
    g3.expected({ kind: "layer", index: 0 }, c3).filter((e) => e.local.includes("_norm")),
    [
      { local: "self_attn.q_norm.weight", shape: [256] },
      { local: "self_attn.k_norm.weight", shape: [256] },
    ],
  );
  const biased = g2.parseConfig({ ...gemma2Raw, attention_bias: true }, "m");
  assert.deepEqual(g2.place("model.layers.1.self_attn.o_proj.bias", biased)?.part, layer);
  assert.equal(g2.expected({ kind: "layer", index: 0 }, biased).length, 15);
});
