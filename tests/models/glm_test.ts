import assert from "node:assert/strict";
import { ConfigError } from "../../lib/errors.ts";
import { chatGlm, type ChatGlmConfig, glm, glm4, halfRotaryRows } from "../../lib/models/glm.ts";
import { rowRange } from "../../lib/models/family.ts";
import { base, parse } from "./_helpers.ts";

// GLM / GLM-4: expected values are what transformers 5.23's GlmConfig / Glm4Config give for the
// same dicts. ChatGLM: what configuration_chatglm.py (chatglm3-6b / glm-4-9b) and
// modeling_chatglm.py read from them.
const glmRaw = { ...base, architectures: ["GlmForCausalLM"], model_type: "glm" };

/** chatglm3-6b's config.json, scaled down. */
const chatglm3Raw = {
  _name_or_path: "THUDM/chatglm3-6b",
  model_type: "chatglm",
  architectures: ["ChatGLMModel"],
  add_bias_linear: false,
  add_qkv_bias: true,
  apply_query_key_layer_scaling: true,
  apply_residual_connection_post_layernorm: false,
  ffn_hidden_size: 128,
  hidden_size: 64,
  kv_channels: 16,
  layernorm_epsilon: 1e-5,
  multi_query_attention: true,
  multi_query_group_num: 2,
  num_attention_heads: 4,
  num_layers: 2,
  original_rope: true,
  padded_vocab_size: 256,
  post_layer_norm: true,
  rmsnorm: true,
  seq_length: 8192,
  torch_dtype: "float16",
  eos_token_id: 2,
  pad_token_id: 0,
};

const chat = (over: Record<string, unknown> = {}) =>
  parse({ ...chatglm3Raw, ...over }) as ChatGlmConfig;

Deno.test("config: GlmForCausalLM / Glm4ForCausalLM class defaults", () => {
  const c = parse(glmRaw);
  assert.equal(c.headDim, 128); // GlmConfig.head_dim, not hidden / heads
  assert.equal(c.numKvHeads, 2);
  assert.equal(c.rmsNormEps, 1.5625e-7);
  assert.equal(c.maxPositionEmbeddings, 131072);
  assert.equal(c.attentionBias, true);
  assert.deepEqual(c.eosTokenIds, [151329, 151336, 151338]);
  assert.deepEqual(c.rope, { type: "default", theta: 10000, partialRotaryFactor: 0.5, params: {} });
  const d = parse({
    ...glmRaw,
    architectures: ["Glm4ForCausalLM"],
    head_dim: 16,
    num_key_value_heads: 4,
    attention_bias: false,
    eos_token_id: 2,
    rope_parameters: { rope_type: "default", rope_theta: 5e5, partial_rotary_factor: 1 },
  });
  assert.equal(d.headDim, 16);
  assert.equal(d.numKvHeads, 4);
  assert.equal(d.attentionBias, false);
  assert.deepEqual(d.eosTokenIds, [2]);
  assert.deepEqual(d.rope, { type: "default", theta: 5e5, partialRotaryFactor: 1, params: {} });
  assert.equal(parse({ ...glmRaw, partial_rotary_factor: 0.25 }).rope.partialRotaryFactor, 0.25);
});

Deno.test("config: GLM errors name the key", () => {
  // head_dim 16 × 0.3 = 4.8 → 4 rotary dims is fine; × 0.1875 = 3 dims has no pairs
  assert.throws(
    () => parse({ ...glmRaw, head_dim: 16, partial_rotary_factor: 0.1875 }),
    (e) =>
      e instanceof ConfigError && e.key === "partial_rotary_factor" &&
      /3 rotary dims/.test(e.message),
  );
  assert.throws(
    () => parse({ ...glmRaw, head_dim: null }),
    (e) => e instanceof ConfigError && e.key === "head_dim",
  );
  assert.throws(
    () => parse({ ...glmRaw, attention_bias: "yes" }),
    (e) => e instanceof ConfigError && e.key === "attention_bias",
  );
});

Deno.test("config: ChatGLM3 / GLM-4 / ChatGLM2-32k remote configs", () => {
  const c = chat();
  assert.equal(c.architecture, "ChatGLMModel");
  assert.equal(c.modelType, "chatglm");
  assert.equal(c.hiddenSize, 64);
  assert.equal(c.intermediateSize, 128);
  assert.equal(c.numLayers, 2);
  assert.equal(c.numHeads, 4);
  assert.equal(c.numKvHeads, 2);
  assert.equal(c.headDim, 16);
  assert.equal(c.vocabSize, 256);
  assert.equal(c.maxPositionEmbeddings, 8192);
  assert.equal(c.rmsNormEps, 1e-5);
  assert.equal(c.dtype, "float16");
  assert.equal(c.tieWordEmbeddings, false);
  assert.equal(c.attentionBias, true);
  assert.deepEqual(c.eosTokenIds, [2]);
  assert.equal(c.bosTokenId, null);
  assert.deepEqual(c.rope, { type: "default", theta: 10000, partialRotaryFactor: 0.5, params: {} });
  assert.deepEqual(c.chatglm, {
    multiQuery: true,
    qkvBias: true,
    linearBias: false,
    rmsNorm: true,
    residualFromNorm: false,
  });
  assert.equal(c.raw.padded_vocab_size, 256);
  // GLM-4 / chatglm3-6b-32k: the base is scaled.
  const g = chat({ _name_or_path: "THUDM/glm-4-9b-chat", rope_ratio: 500 });
  assert.deepEqual(g.rope, { type: "default", theta: 5e6, partialRotaryFactor: 0.5, params: {} });
  assert.deepEqual(g.layerRopes, [g.rope, g.rope]);
  // ChatGLM2-6B-32k's code divides the positions.
  const c2 = chat({ _name_or_path: "THUDM/chatglm2-6b-32k", rope_ratio: 16 });
  assert.deepEqual(c2.rope, {
    type: "linear",
    theta: 10000,
    partialRotaryFactor: 0.5,
    params: { factor: 16 },
  });
  // Without MQA every head has its own k/v; add_bias_linear biases everything.
  const m = chat({
    multi_query_attention: false,
    add_qkv_bias: false,
    add_bias_linear: true,
    rmsnorm: false,
    apply_residual_connection_post_layernorm: true,
  });
  assert.equal(m.numKvHeads, 4);
  assert.deepEqual(m.chatglm, {
    multiQuery: false,
    qkvBias: true,
    linearBias: true,
    rmsNorm: false,
    residualFromNorm: true,
  });
  // ChatGLMConfig's defaults for absent keys.
  const bare = parse({ architectures: ["ChatGLMForConditionalGeneration"], model_type: "chatglm" });
  assert.equal(bare.numLayers, 28);
  assert.equal(bare.hiddenSize, 4096);
  assert.equal(bare.headDim, 128);
  assert.equal(bare.numKvHeads, 32); // multi_query_attention false
  assert.equal(bare.vocabSize, 65024);
  assert.equal(bare.maxPositionEmbeddings, 2048);
  assert.equal(chat({ kv_channels: null }).headDim, 16);
});

Deno.test("config: ChatGLM errors name the key", () => {
  const cases: [Record<string, unknown>, string, RegExp][] = [
    [{ position_encoding_2d: true }, "position_encoding_2d", /ChatGLM-6B \(v1/],
    [{ quantization_bit: 4 }, "quantization_bit", /quantized weights/],
    [{ pre_seq_len: 128 }, "pre_seq_len", /P-tuning/],
    [{ post_layer_norm: false }, "post_layer_norm", /not supported/],
    [{ kv_channels: 6 }, "kv_channels", /multiple of 4/],
    [{ multi_query_group_num: 3 }, "multi_query_group_num", /does not divide/],
    [{ rope_ratio: 0 }, "rope_ratio", /positive/],
    [{ rope_ratio: "x" }, "rope_ratio", /expected a number/],
    [{ num_layers: 0 }, "num_layers", /positive integer/],
    [{ padded_vocab_size: 1.5 }, "padded_vocab_size", /positive integer/],
    [{ layernorm_epsilon: -1 }, "layernorm_epsilon", /positive/],
    [{ rmsnorm: "yes" }, "rmsnorm", /true or false/],
    [{ torch_dtype: "int8" }, "torch_dtype", /unsupported dtype/],
  ];
  for (const [over, key, what] of cases) {
    assert.throws(
      () => chat(over),
      (e) => e instanceof ConfigError && e.key === key && what.test(e.message),
      JSON.stringify(over),
    );
  }
});

Deno.test("placement: adjacent-pair rope rows, q/k/v and gate/up splits", () => {
  assert.deepEqual(halfRotaryRows(0, 1, 8, 4), [0, 2, 1, 3, 4, 5, 6, 7]);
  assert.deepEqual(halfRotaryRows(10, 2, 4, 4), [10, 12, 11, 13, 14, 16, 15, 17]);
  // ChatGLM, MQA: q | k | v blocks (heads 4 × 16, groups 2 × 16).
  const c = chat();
  const L = "transformer.encoder.layers.1.";
  const qkv = chatGlm.placeFused!(`${L}self_attention.query_key_value.weight`, c)!;
  assert.deepEqual(qkv.map((p) => p.local), [
    "self_attention.query.weight",
    "self_attention.key.weight",
    "self_attention.value.weight",
  ]);
  assert.deepEqual(qkv[0].part, { kind: "layer", index: 1 });
  assert.deepEqual(qkv[0].rows, halfRotaryRows(0, 4, 16, 8));
  assert.deepEqual(qkv[1].rows, halfRotaryRows(64, 2, 16, 8));
  assert.deepEqual(qkv[2].rows, rowRange(96, 32));
  // Without MQA: q_h | k_h | v_h per head.
  const m = chat({ multi_query_attention: false });
  const [q, k, v] = chatGlm.placeFused!(`${L}self_attention.query_key_value.bias`, m)!;
  assert.equal(q.local, "self_attention.query.bias");
  assert.deepEqual(q.rows!.slice(16, 32), halfRotaryRows(48, 1, 16, 8));
  assert.deepEqual(k.rows!.slice(0, 16), halfRotaryRows(16, 1, 16, 8));
  assert.deepEqual(v.rows!.slice(16, 32), rowRange(80, 16));
  const [gate, up] = chatGlm.placeFused!(`${L}mlp.dense_h_to_4h.weight`, c)!;
  assert.deepEqual([gate.local, gate.rows], ["mlp.gate.weight", rowRange(0, 128)]);
  assert.deepEqual([up.local, up.rows], ["mlp.up.weight", rowRange(128, 128)]);
  assert.equal(chatGlm.placeFused!(`${L}mlp.dense_4h_to_h.weight`, c), undefined);
  // Plain names.
  assert.deepEqual(chatGlm.place(`${L}self_attention.dense.weight`, c), {
    part: { kind: "layer", index: 1 },
    local: "self_attention.dense.weight",
  });
  assert.deepEqual(chatGlm.place("transformer.rotary_pos_emb.inv_freq", c)?.part, null);
  assert.deepEqual(chatGlm.place("transformer.output_layer.weight", c)?.part, { kind: "lm_head" });
  for (
    const unknown of [
      `${L}self_attention.query.weight`, // only ever made by the split
      `${L}self_attention.dense.bias`, // add_bias_linear is false
      "transformer.encoder.layers.2.input_layernorm.weight", // num_layers 2
      "transformer.encoder.final_layernorm.bias", // RMSNorm
      "model.embed_tokens.weight",
    ]
  ) assert.equal(chatGlm.place(unknown, c), undefined, unknown);
  const ln = chat({ rmsnorm: false, add_bias_linear: true });
  assert.deepEqual(chatGlm.place("transformer.encoder.final_layernorm.bias", ln)?.part, {
    kind: "norm",
  });
  assert.ok(chatGlm.place(`${L}self_attention.dense.bias`, ln));
  assert.ok(chatGlm.place(`${L}input_layernorm.bias`, ln));
  assert.deepEqual(chatGlm.expected({ kind: "norm" }, ln).map((t) => t.local), ["weight", "bias"]);
  // Native GLM: q/k rows permuted in place, gate_up_proj split, no separate gate/up tensors.
  const g = parse({ ...glmRaw, head_dim: 16 });
  const P = "model.layers.0.";
  assert.deepEqual(glm.place(`${P}self_attn.q_proj.bias`, g)?.rows, halfRotaryRows(0, 4, 16, 8));
  assert.deepEqual(glm.place(`${P}self_attn.k_proj.weight`, g)?.rows, halfRotaryRows(0, 2, 16, 8));
  assert.equal(glm.place(`${P}self_attn.v_proj.weight`, g)?.rows, undefined);
  assert.equal(glm.place(`${P}self_attn.o_proj.bias`, g), undefined);
  assert.equal(glm.place(`${P}mlp.gate_proj.weight`, g), undefined);
  assert.equal(glm.place(`${P}post_mlp_layernorm.weight`, g), undefined);
  // (placeExpected caches the expected names per config object: one config per family)
  const g4 = parse({ ...glmRaw, architectures: ["Glm4ForCausalLM"], head_dim: 16 });
  assert.ok(glm4.place(`${P}post_mlp_layernorm.weight`, g4));
  const gu = glm4.placeFused!(`${P}mlp.gate_up_proj.weight`, g4)!;
  assert.deepEqual(gu.map((p) => [p.local, p.rows![0], p.rows!.length]), [
    ["mlp.gate_proj.weight", 0, 128],
    ["mlp.up_proj.weight", 128, 128],
  ]);
});
