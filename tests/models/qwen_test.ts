import assert from "node:assert/strict";
import { AutoModel } from "../../mod.ts";
import { ConfigError } from "../../lib/errors.ts";
import { familyFor } from "../../lib/models/registry.ts";
import type { QwenConfig } from "../../lib/models/qwen.ts";
import { qwenNtkAlpha, ropeTable } from "../../lib/rope.ts";
import { parse } from "./_helpers.ts";

// QWen v1: expected values are what the original configuration_qwen.py / modeling_qwen.py give
// (Qwen-7B's config.json below, as on the hub since Sep 2023; the first, GPT-2 style form).
const qwen7b = {
  architectures: ["QWenLMHeadModel"],
  auto_map: {
    AutoConfig: "configuration_qwen.QWenConfig",
    AutoModelForCausalLM: "modeling_qwen.QWenLMHeadModel",
  },
  bf16: false,
  fp16: false,
  fp32: false,
  hidden_size: 4096,
  intermediate_size: 22016,
  kv_channels: 128,
  layer_norm_epsilon: 1e-6,
  max_position_embeddings: 8192,
  model_type: "qwen",
  no_bias: true,
  num_attention_heads: 32,
  num_hidden_layers: 32,
  rotary_emb_base: 10000,
  rotary_pct: 1.0,
  seq_length: 8192,
  tie_word_embeddings: false,
  use_dynamic_ntk: true,
  use_logn_attn: true,
  vocab_size: 151936,
};
const tiny = {
  ...qwen7b,
  hidden_size: 64,
  intermediate_size: 256,
  kv_channels: 16,
  num_attention_heads: 4,
  num_hidden_layers: 2,
  vocab_size: 256,
  seq_length: 8,
};
const qwen = (raw: Record<string, unknown>) => parse(raw) as QwenConfig;

Deno.test("config: QWen v1 (Qwen-7B's config.json)", () => {
  const c = qwen(qwen7b);
  assert.equal(c.intermediateSize, 11008); // w1 / w2 are intermediate_size // 2
  assert.equal(c.headDim, 128);
  assert.equal(c.numKvHeads, 32);
  assert.equal(c.rmsNormEps, 1e-6);
  assert.equal(c.attentionBias, true);
  assert.equal(c.bosTokenId, null);
  assert.equal(c.dtype, "bfloat16"); // no flag set: the original picks bf16 on a bf16 GPU
  assert.equal(c.maxPositionEmbeddings, 32767); // NTK runs past seq_length up to logn's table
  assert.deepEqual(c.qwen, { seqLength: 8192, dynamicNtk: true, lognAttn: true });
  assert.deepEqual(c.rope, {
    type: "qwen_dynamic_ntk",
    theta: 10000,
    partialRotaryFactor: 1,
    params: { seq_length: 8192 },
  });
  assert.equal(qwen({ ...qwen7b, fp32: true }).dtype, "float32");
  assert.equal(qwen({ ...qwen7b, fp16: true }).dtype, "float16");
  assert.equal(qwen({ ...qwen7b, bf16: true, torch_dtype: "float32" }).dtype, "float32");
  const plain = qwen({ ...qwen7b, use_dynamic_ntk: false, use_logn_attn: false });
  assert.equal(plain.rope.type, "default");
  assert.equal(plain.maxPositionEmbeddings, 8192);
  // Qwen-72B carries rope_theta beside rotary_emb_base; the remote code reads only the latter.
  assert.equal(qwen({ ...qwen7b, rope_theta: 1e6, rotary_emb_base: 5e5 }).rope.theta, 5e5);
});

Deno.test("config: QWen v1's first, GPT-2 style QWenConfig (Aug 2023 Qwen-7B-Chat)", () => {
  const c = qwen({
    architectures: ["QWenLMHeadModel"],
    model_type: "qwen",
    n_embd: 4096,
    n_head: 32,
    n_layer: 32,
    n_positions: 6144,
    ffn_hidden_size: 22016,
    kv_channels: 128,
    layer_norm_epsilon: 1e-5,
    seq_length: 2048,
    padded_vocab_size: 151936,
    vocab_size: 151936,
    eos_token_id: 151643,
    use_dynamic_ntk: true,
    use_logn_attn: true,
  });
  assert.equal(c.hiddenSize, 4096);
  assert.equal(c.numLayers, 32);
  assert.equal(c.intermediateSize, 11008);
  assert.equal(c.maxPositionEmbeddings, 32767);
  assert.deepEqual(c.eosTokenIds, [151643]);
  // Its class defaults: no NTK, no logn, layer_norm_epsilon 1e-5.
  const d = qwen({
    architectures: ["QWenLMHeadModel"],
    model_type: "qwen",
    n_embd: 64,
    n_head: 4,
    n_layer: 2,
    ffn_hidden_size: 256,
    kv_channels: 16,
    seq_length: 8,
    vocab_size: 256,
    n_positions: 2048,
  });
  assert.deepEqual(d.qwen, { seqLength: 8, dynamicNtk: false, lognAttn: false });
  assert.equal(d.rmsNormEps, 1e-5);
  assert.equal(d.maxPositionEmbeddings, 2048);
  assert.throws(
    () => parse({ ...d.raw, n_positions: undefined }),
    /config.json: n_positions: required key is missing/,
  );
});

Deno.test("config: QWen v1 values the remote code cannot run are ConfigErrors naming the key", () => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ seq_length: undefined }, /config.json: seq_length: required key is missing/],
    [{ kv_channels: 32 }, /kv_channels: 32 × num_attention_heads 4 must equal hidden_size 64/],
    [{ kv_channels: undefined }, /kv_channels: 128 × num_attention_heads 4 must equal/],
    [{ no_bias: false }, /no_bias: false \(biases on c_proj, w1, w2\) is not supported yet/],
    [{ bf16: true, fp32: true }, /bf16: only one of "bf16", "fp16", "fp32" can be true/],
    [{ rotary_pct: 0.2 }, /rotary_pct: 0.2 × kv_channels 16 must give an even rotary width/],
    [{ rotary_pct: 1.5 }, /rotary_pct: 1.5/],
    [{ seq_length_expansion: 2 }, /seq_length_expansion: 2 is not supported yet/],
    [{ use_logn_attn: "yes" }, /use_logn_attn: expected true or false/],
    [{ torch_dtype: "int8" }, /torch_dtype: unsupported dtype "int8"/],
    [{ torch_dtype: { toString: 2 } }, /torch_dtype: unsupported dtype \{"toString":2\}/],
    [{ num_hidden_layers: 70000 }, /num_hidden_layers: 70000 is more than 65536/],
  ];
  for (const [patch, msg] of bad) {
    assert.throws(
      () => parse({ ...tiny, ...patch }),
      (e) => e instanceof ConfigError && msg.test(e.message),
      JSON.stringify(patch),
    );
  }
  assert.equal(qwen({ ...tiny, rotary_pct: 0.5 }).rope.partialRotaryFactor, 0.5);
});

Deno.test("placement: c_attn split into q | k | v rows, w2 gate / w1 up, buffers known", () => {
  const c = qwen(tiny);
  const f = familyFor("QWenLMHeadModel", "m");
  const fused = f.placeFused!("transformer.h.1.attn.c_attn.weight", c)!;
  assert.deepEqual(fused.map((p) => [p.part, p.local, p.rows![0], p.rows!.length]), [
    [{ kind: "layer", index: 1 }, "attn.q.weight", 0, 64],
    [{ kind: "layer", index: 1 }, "attn.k.weight", 64, 64],
    [{ kind: "layer", index: 1 }, "attn.v.weight", 128, 64],
  ]);
  assert.deepEqual(
    f.placeFused!("transformer.h.0.attn.c_attn.bias", c)!.map((p) => p.local),
    ["attn.q.bias", "attn.k.bias", "attn.v.bias"],
  );
  assert.equal(f.placeFused!("transformer.h.0.mlp.w1.weight", c), undefined);
  assert.equal(f.placeFused!("transformer.h.2.attn.c_attn.weight", c), undefined); // 2 layers
  assert.deepEqual(f.place("transformer.h.0.mlp.w2.weight", c), {
    part: { kind: "layer", index: 0 },
    local: "mlp.w2.weight",
  });
  assert.deepEqual(f.place("transformer.wte.weight", c), {
    part: { kind: "embed" },
    local: "weight",
  });
  assert.deepEqual(f.place("transformer.ln_f.weight", c), {
    part: { kind: "norm" },
    local: "weight",
  });
  assert.deepEqual(f.place("lm_head.weight", c), { part: { kind: "lm_head" }, local: "weight" });
  assert.equal(f.place("transformer.h.0.attn.rotary_emb.inv_freq", c)?.part, null);
  assert.equal(f.place("transformer.h.0.attn.c_proj.bias", c), undefined); // no_bias
  assert.equal(f.place("model.layers.0.mlp.up_proj.weight", c), undefined);
  assert.deepEqual(
    f.expected({ kind: "layer", index: 0 }, c).map((e) => [e.local, e.shape]),
    [
      ["ln_1.weight", [64]],
      ["attn.q.weight", [64, 64]],
      ["attn.q.bias", [64]],
      ["attn.k.weight", [64, 64]],
      ["attn.k.bias", [64]],
      ["attn.v.weight", [64, 64]],
      ["attn.v.bias", [64]],
      ["attn.c_proj.weight", [64, 64]],
      ["ln_2.weight", [64]],
      ["mlp.w2.weight", [128, 64]],
      ["mlp.w1.weight", [128, 64]],
      ["mlp.c_proj.weight", [64, 128]],
    ],
  );
});

Deno.test("rope: QWen's NTK alpha (get_ntk_alpha) and table", () => {
  // max(2^ceil(log2(L / 8) + 1) - 1, 1): 1 up to seq_length, then 3, 7, 15 per doubling.
  const alphas = [1, 8, 9, 16, 17, 32, 33, 64, 65].map((L) => qwenNtkAlpha(L, 8));
  assert.deepEqual(alphas, [1, 1, 3, 3, 7, 7, 15, 15, 31]);
  const rope = qwen(tiny).rope;
  const shape = { headDim: 16, maxPositionEmbeddings: 32767 };
  assert.deepEqual(
    ropeTable(rope, shape, 8, "m").invFreq,
    ropeTable({ ...rope, type: "default" }, shape, 8, "m").invFreq,
  );
  // alpha 3: base 10000 · 3^(16/14), as RotaryEmbedding computes it (torch, float32).
  const t = ropeTable(rope, shape, 12, "m");
  const torch = [1, 0.2702961266040802, 0.07305999845266342, 0.019747832790017128];
  torch.forEach((x, i) =>
    assert.ok(Math.abs(t.invFreq[i] / x - 1) < 1e-6, `${i}: ${t.invFreq[i]}`)
  );
});

// The original's NTK state by cache mode, against the transcription's outputs stored beside the
// qwen1_long fixture (scripts/remote_families/qwen.py): with the cache, the alpha of the forward
// that filled it stays (3 for the 12-token prompt); without, every forward picks its own.
Deno.test("qwen1_long: dynamic NTK keeps the prefill's alpha with the cache, as the original", async () => {
  const dir = new URL("../fixtures/qwen1_long/", import.meta.url);
  const ref = JSON.parse(await Deno.readTextFile(new URL("ntk_reference.json", dir)));
  const want = new Float32Array((await Deno.readFile(new URL(ref.logits_file, dir))).buffer);
  const [, S, V] = ref.logits_dims as number[];
  await using model = await AutoModel.fromPretrained(dir.pathname, {
    dtype: "auto",
    layerShardsSavingPath: new URL("../.tmp/split/qwen1_long-ntk/", import.meta.url).pathname,
  });
  const close = (got: Float32Array, row: number, what: string) => {
    const exp = want.subarray(row * S * V, (row + 1) * S * V);
    let max = 0, diff = 0;
    for (let i = 0; i < exp.length; i++) {
      max = Math.max(max, Math.abs(exp[i]));
      diff = Math.max(diff, Math.abs(got[i] - exp[i]));
    }
    assert.ok(diff <= 1e-4 * max, `${what}: max|Δ| ${diff} > 1e-4 × ${max}`);
  };
  const ids: number[] = ref.logits_ids;
  close(await model.forward([ids]), 0, "whole sequence (alpha 3)");
  model.resetCache();
  const cached = new Float32Array(S * V);
  const n = ref.logits_prefill;
  cached.set(await model.forward([ids.slice(0, n)], { useCache: true }), 0);
  for (let s = n; s < S; s++) {
    cached.set(await model.forward([[ids[s]]], { useCache: true }), s * V);
  }
  close(cached, 1, "prefill then one at a time (alpha 1 kept)");
  const prompt: number[] = ref.greedy_prompt;
  for (const useCache of [true, false]) {
    const out = await model.generate([prompt], {
      maxNewTokens: ref.greedy_cache_on.length,
      useCache,
      eosTokenId: [],
    });
    assert.deepEqual(
      out[0].slice(prompt.length),
      useCache ? ref.greedy_cache_on : ref.greedy_cache_off,
    );
  }
});

// The first QWenConfig's keys (n_embd, n_head, n_layer, n_positions, ffn_hidden_size) on the same
// tensors load to the same model: qwen1's reference logits.
Deno.test("qwen1 with the GPT-2 style QWenConfig keys gives the fixture's logits", async () => {
  const src = new URL("../fixtures/qwen1/", import.meta.url);
  const hub = JSON.parse(await Deno.readTextFile(new URL("config.json", src)));
  const ref = JSON.parse(await Deno.readTextFile(new URL("reference.json", src)));
  const want = new Float32Array((await Deno.readFile(new URL("logits.bin", src))).buffer);
  const dir = await Deno.makeTempDir({ prefix: "qwen1-gpt2-" });
  try {
    const {
      hidden_size,
      num_attention_heads,
      num_hidden_layers,
      max_position_embeddings,
      ...rest
    } = hub;
    const { intermediate_size, ...keep } = rest;
    await Deno.writeTextFile(
      `${dir}/config.json`,
      JSON.stringify({
        ...keep,
        n_embd: hidden_size,
        n_head: num_attention_heads,
        n_layer: num_hidden_layers,
        n_positions: max_position_embeddings,
        ffn_hidden_size: intermediate_size,
      }),
    );
    await Deno.copyFile(new URL("model.safetensors", src), `${dir}/model.safetensors`);
    await using model = await AutoModel.fromPretrained(dir, { dtype: "auto" });
    assert.equal(model.config.intermediateSize, intermediate_size / 2);
    const got = await model.forward(ref.logits.input_ids);
    let diff = 0, max = 0;
    want.forEach((x, i) => {
      max = Math.max(max, Math.abs(x));
      diff = Math.max(diff, Math.abs(got[i] - x));
    });
    assert.ok(diff <= 1e-4 * max, `max|Δ| ${diff}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
