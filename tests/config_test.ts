import assert from "node:assert/strict";
import { ConfigError, UnsupportedArchitectureError } from "../lib/errors.ts";
import { SUPPORTED_ARCHITECTURES } from "../lib/models/registry.ts";
import { base, parse } from "./models/_helpers.ts";

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
    "BaiChuanForCausalLM",
    "BaichuanForCausalLM",
    "ChatGLMForConditionalGeneration",
    "ChatGLMModel",
    "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Glm4ForCausalLM",
    "GlmForCausalLM",
    "InternLM2ForCausalLM",
    "InternLM3ForCausalLM",
    "InternLMForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "MixtralForCausalLM",
    "Phi3ForCausalLM",
    "PhiForCausalLM",
    "QWenLMHeadModel",
    "Qwen2ForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
  ]);
});
