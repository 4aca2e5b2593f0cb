import assert from "node:assert/strict";
import { ConfigError, UnsupportedArchitectureError } from "../lib/errors.ts";
import { familyFor, SUPPORTED_ARCHITECTURES } from "../lib/models/registry.ts";
import type { GemmaConfig } from "../lib/models/gemma2.ts";
import type { MixtralConfig } from "../lib/models/mixtral.ts";
import type { QwenMoeConfig } from "../lib/models/qwen2_moe.ts";

const base = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  vocab_size: 256,
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
};

function parse(raw: Record<string, unknown>) {
  const arch = (raw.architectures as string[])[0];
  return familyFor(arch, "m/config.json").parseConfig(raw, "m/config.json");
}

Deno.test("config: transformers 5 rope_parameters and legacy rope_theta + rope_scaling agree", () => {
  const scaling = {
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 32,
  };
  const v5 = parse({
    ...base,
    rope_parameters: { rope_type: "llama3", rope_theta: 5e5, ...scaling },
  });
  const legacy = parse({ ...base, rope_theta: 5e5, rope_scaling: { type: "llama3", ...scaling } });
  assert.deepEqual(v5.rope, legacy.rope);
  assert.deepEqual(v5.rope, {
    type: "llama3",
    theta: 5e5,
    partialRotaryFactor: 1,
    params: scaling,
  });
  assert.deepEqual(parse(base).rope, {
    type: "default",
    theta: 10000,
    partialRotaryFactor: 1,
    params: {},
  });
});

Deno.test("config: head_dim comes from the config when present, else hidden / heads", () => {
  assert.equal(parse({ ...base, head_dim: 32 }).headDim, 32);
  assert.equal(parse(base).headDim, 16);
  assert.equal(parse({ ...base, head_dim: null }).headDim, 16);
});

Deno.test("config: dtype from dtype or torch_dtype, float16 when none", () => {
  assert.equal(parse({ ...base, dtype: "bfloat16" }).dtype, "bfloat16");
  assert.equal(parse({ ...base, torch_dtype: "float32" }).dtype, "float32");
  assert.equal(parse(base).dtype, "float16");
  assert.throws(
    () => parse({ ...base, torch_dtype: "int8" }),
    /m\/config.json: torch_dtype: unsupported dtype "int8"/,
  );
});

Deno.test("config: GQA, eps, tie and eos ids are read", () => {
  const c = parse({
    ...base,
    num_key_value_heads: 2,
    rms_norm_eps: 1e-5,
    tie_word_embeddings: true,
    eos_token_id: [2, 7],
    bos_token_id: 1,
  });
  assert.equal(c.numKvHeads, 2);
  assert.equal(c.rmsNormEps, 1e-5);
  assert.equal(c.tieWordEmbeddings, true);
  assert.deepEqual(c.eosTokenIds, [2, 7]);
  assert.equal(c.bosTokenId, 1);
  assert.equal(parse(base).numKvHeads, 4);
  assert.equal(parse(base).tieWordEmbeddings, false);
});

Deno.test("config: a missing required key names the key and the model type", () => {
  const { hidden_size: _, ...noHidden } = base;
  assert.throws(
    () => parse(noHidden),
    (e: unknown) =>
      e instanceof ConfigError && e.key === "hidden_size" &&
      /m\/config.json: hidden_size: required key is missing \(model type llama\)/.test(e.message),
  );
  assert.throws(
    () => parse({ ...base, num_key_value_heads: 3 }),
    /num_key_value_heads: 3 does not divide/,
  );
  assert.throws(
    () => parse({ ...base, vocab_size: "x" }),
    /vocab_size: expected a positive integer/,
  );
});

Deno.test("config: an unsupported architecture names it and lists the supported ones", () => {
  assert.throws(
    () => parse({ ...base, architectures: ["GPT2LMHeadModel"] }),
    (e: unknown) =>
      e instanceof UnsupportedArchitectureError &&
      e.message.includes("GPT2LMHeadModel is not supported") &&
      SUPPORTED_ARCHITECTURES.every((a) => e.message.includes(a)),
  );
  assert.deepEqual([...SUPPORTED_ARCHITECTURES], [
    "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "MixtralForCausalLM",
    "Phi3ForCausalLM",
    "PhiForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
  ]);
});

Deno.test("config: Mistral's sliding window defaults to 4096, null turns it off", () => {
  const m = { ...base, architectures: ["MistralForCausalLM"], model_type: "mistral" };
  assert.deepEqual(parse(m).layerWindows, [4096, 4096]);
  assert.deepEqual(parse({ ...m, sliding_window: null }).layerWindows, [0, 0]);
  assert.deepEqual(parse({ ...m, sliding_window: 8 }).layerWindows, [8, 8]);
});

Deno.test("config: Qwen2 has qkv bias; sliding window only with use_sliding_window", () => {
  const q = {
    ...base,
    architectures: ["Qwen2ForCausalLM"],
    model_type: "qwen2",
    sliding_window: 8,
  };
  assert.equal(parse(q).attentionBias, true);
  assert.deepEqual(parse(q).layerWindows, [0, 0]);
  assert.deepEqual(parse({ ...q, use_sliding_window: true, max_window_layers: 1 }).layerWindows, [
    0,
    8,
  ]);
  assert.deepEqual(
    parse({ ...q, layer_types: ["full_attention", "sliding_attention"], use_sliding_window: true })
      .layerWindows,
    [0, 8],
  );
});

// Gemma: the expected values are what transformers 5.23's Gemma2Config / Gemma3TextConfig give
// for the same dicts (from_dict), e.g. head_dim 256 and 4 KV heads when absent.
const gemmaBase = {
  vocab_size: 256,
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 4,
  num_attention_heads: 8,
};
const gemma2Raw = { ...gemmaBase, architectures: ["Gemma2ForCausalLM"], model_type: "gemma2" };
const gemma3Raw = {
  ...gemmaBase,
  architectures: ["Gemma3ForCausalLM"],
  model_type: "gemma3_text",
};
const gemma = (raw: Record<string, unknown>) => parse(raw) as GemmaConfig;

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

// Qwen3 / Phi-3 / Phi: expected values are what transformers 5.23's Qwen3Config, Phi3Config and
// PhiConfig (and their rotary modules) give for the same dicts.
const qwen3Raw = { ...base, architectures: ["Qwen3ForCausalLM"], model_type: "qwen3" };
const phi3Raw = { ...base, architectures: ["Phi3ForCausalLM"], model_type: "phi3" };
const phiRaw = { ...base, architectures: ["PhiForCausalLM"], model_type: "phi" };

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
    { local: "weight", shape: [256, 64] },
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

Deno.test("config: MoE keys — hub and transformers spellings, defaults, layer rules, errors", async () => {
  const fixture = async (name: string) =>
    JSON.parse(await Deno.readTextFile(new URL(`./fixtures/${name}/config.json`, import.meta.url)));
  const moe = (cfg: ReturnType<typeof parse>) => (cfg as QwenMoeConfig).moe;

  // Qwen3-MoE: transformers writes num_local_experts, hub files num_experts; head_dim when given.
  const q3 = await fixture("qwen3_moe");
  const { num_local_experts, ...hub } = q3;
  const a = parse(q3), b = parse({ ...hub, num_experts: num_local_experts });
  assert.deepEqual(moe(a), moe(b));
  assert.deepEqual(moe(a).moeLayers, [false, true, true]); // mlp_only_layers [0]
  assert.equal(moe(a).normTopK, true);
  assert.equal(moe(a).sharedIntermediate, 0);
  assert.equal(a.headDim, 32);
  // Qwen3MoeConfig: no head_dim → hidden / heads (not dense Qwen3's 128); 4 KV heads when absent.
  const { head_dim: _, num_key_value_heads: __, ...bare } = q3;
  assert.equal(parse(bare).headDim, 16);
  assert.equal(parse(bare).numKvHeads, 4);
  assert.deepEqual(parse({ ...q3, use_sliding_window: true, sliding_window: 8 }).layerWindows, [
    8,
    8,
    8,
  ]);

  // Qwen2-MoE: decoder_sparse_step 2 makes odd layers MoE; its own default sliding-layer rule.
  const q2 = await fixture("qwen2_moe");
  assert.deepEqual(moe(parse({ ...q2, mlp_only_layers: [], decoder_sparse_step: 2 })).moeLayers, [
    false,
    true,
    false,
  ]);
  const { layer_types: ___, ...noTypes } = q2;
  assert.deepEqual(
    parse({ ...noTypes, use_sliding_window: true, sliding_window: 4, max_window_layers: 2 })
      .layerWindows,
    [4, 0, 0], // even layers below max_window_layers
  );
  assert.equal(parse(q2).attentionBias, true);
  assert.equal(parse({ ...q2, qkv_bias: false }).attentionBias, false);
  assert.deepEqual(parse(q2).layerWindows, [0, 0, 0]); // use_sliding_window false: sliding_window ignored

  // Mixtral: head_dim null → hidden / heads; MixtralConfig defaults (8 experts, top 2).
  const mx = await fixture("mixtral");
  assert.equal(parse(mx).headDim, 16);
  const { num_local_experts: ____, num_experts_per_tok: _____, ...mxBare } = mx;
  assert.equal((parse(mxBare) as MixtralConfig).experts, 8);
  assert.equal(parse(mxBare).expertsPerToken, 2);
  assert.deepEqual(parse({ ...mx, sliding_window: 4 }).layerWindows, [4, 4]);

  for (
    const [raw, key] of [
      [{ ...mx, num_experts_per_tok: 5 }, "num_experts_per_tok"],
      [{ ...mx, num_local_experts: 0 }, "num_local_experts"],
      [{ ...q2, num_experts_per_tok: 9 }, "num_experts_per_tok"],
      [{ ...q2, mlp_only_layers: "none" }, "mlp_only_layers"],
      [{ ...q3, norm_topk_prob: "yes" }, "norm_topk_prob"],
      [{ ...q3, moe_intermediate_size: -1 }, "moe_intermediate_size"],
      [{ ...q3, num_local_experts: 1.5 }, "num_local_experts"],
      [{ ...q2, num_experts: 0 }, "num_experts"],
    ] as const
  ) {
    assert.throws(
      () => parse(raw),
      (e) => e instanceof ConfigError && e.message.includes(key),
      `${key} is rejected by name`,
    );
  }
});
