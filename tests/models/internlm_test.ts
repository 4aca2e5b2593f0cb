import assert from "node:assert/strict";
import { ConfigError } from "../../lib/errors.ts";
import { familyFor } from "../../lib/models/registry.ts";
import { internlm2QkvRows, type InternLMConfig } from "../../lib/models/internlm.ts";
import { rowRange } from "../../lib/models/family.ts";
import { ropeTable } from "../../lib/rope.ts";
import { AutoModel } from "../../mod.ts";
import { base, parse } from "./_helpers.ts";

// Expected values: what the remote configuration_internlm.py / configuration_internlm2.py /
// configuration_internlm3.py (xtuner 0.2.0 for 2 and 3) give for the same dicts.
const v1Raw = { ...base, architectures: ["InternLMForCausalLM"], model_type: "internlm" };
const v2Raw = {
  ...base,
  architectures: ["InternLM2ForCausalLM"],
  model_type: "internlm2",
  num_key_value_heads: 2,
};
const v3Raw = {
  ...base,
  architectures: ["InternLM3ForCausalLM"],
  model_type: "internlm3",
  num_key_value_heads: 2,
};
const cfgOf = (raw: Record<string, unknown>) => parse(raw) as InternLMConfig;
const layer0 = { kind: "layer", index: 0 } as const;

Deno.test("config: InternLM (1) rotary forms, bias, always MHA of hidden / heads", () => {
  // No rotary and no rope keys: InternLMConfig's default {base: 10000, type: dynamic}, factor 1.
  const d = cfgOf(v1Raw);
  assert.deepEqual(d.rope, {
    type: "dynamic",
    theta: 10000,
    partialRotaryFactor: 1,
    params: { factor: 1 },
  });
  assert.deepEqual(d.biases, { qkv: true, o: true, mlp: false });
  assert.equal(d.rmsNormEps, 1e-6);
  assert.equal(d.maxPositionEmbeddings, 2048);
  // num_key_value_heads and head_dim are not InternLM keys: MHA over hidden / heads.
  const mha = cfgOf({ ...v1Raw, num_key_value_heads: 2, head_dim: 32, bias: false });
  assert.equal(mha.numKvHeads, 4);
  assert.equal(mha.headDim, 16);
  assert.deepEqual(mha.biases, { qkv: false, o: false, mlp: false });
  assert.equal(mha.attentionBias, false);
  const origin = cfgOf({ ...v1Raw, rotary: { base: 50000, type: "origin" } });
  assert.deepEqual(origin.rope, {
    type: "default",
    theta: 50000,
    partialRotaryFactor: 1,
    params: {},
  });
  assert.deepEqual(origin.layerRopes, [origin.rope, origin.rope]);
  const dyn = cfgOf({ ...v1Raw, rotary: { base: 1e6, type: "dynamic", scaling_factor: 2.5 } });
  assert.deepEqual(dyn.rope.params, { factor: 2.5 });
  assert.equal(dyn.rope.theta, 1e6);
  // The newer form: rope_theta / rope_scaling as Llama reads them.
  const newer = cfgOf({ ...v1Raw, rope_theta: 5e5, rope_scaling: { type: "linear", factor: 2 } });
  assert.deepEqual(newer.rope, {
    type: "linear",
    theta: 5e5,
    partialRotaryFactor: 1,
    params: { factor: 2 },
  });
  assert.equal(cfgOf({ ...v1Raw, rope_theta: 5e5 }).rope.type, "default");
  for (
    const [rotary, re] of [
      [
        { base: 10000, type: "ntk" },
        /config.json: rotary.type: expected "origin" or "dynamic", got "ntk"/,
      ],
      [{ type: "dynamic" }, /config.json: rotary.base: expected a positive number, got undefined/],
      [
        { base: 1e4, type: "dynamic", scaling_factor: "2" },
        /rotary.scaling_factor: expected a number/,
      ],
      ["dynamic", /config.json: rotary: expected an object, got "dynamic"/],
    ] as const
  ) {
    assert.throws(
      () => parse({ ...v1Raw, rotary }),
      (e) => e instanceof ConfigError && re.test(e.message),
    );
  }
  assert.throws(
    () => parse({ ...v1Raw, bias: "yes" }),
    /config.json: bias: expected true or false/,
  );
  assert.throws(
    () => parse({ ...v1Raw, hidden_size: 66 }),
    /hidden_size: 66 is not a multiple of num_attention_heads 4/,
  );
});

Deno.test("tensors: InternLM (1) keeps Llama names, q/k/v/o biases, skips rotary_emb.inv_freq", () => {
  const f = familyFor("InternLMForCausalLM", "m");
  const d = cfgOf(v1Raw);
  assert.deepEqual(
    f.expected(layer0, d).map((e) => [e.local, e.shape]),
    [
      ["input_layernorm.weight", [64]],
      ["self_attn.q_proj.weight", [64, 64]],
      ["self_attn.q_proj.bias", [64]],
      ["self_attn.k_proj.weight", [64, 64]],
      ["self_attn.k_proj.bias", [64]],
      ["self_attn.v_proj.weight", [64, 64]],
      ["self_attn.v_proj.bias", [64]],
      ["self_attn.o_proj.weight", [64, 64]],
      ["self_attn.o_proj.bias", [64]],
      ["post_attention_layernorm.weight", [64]],
      ["mlp.gate_proj.weight", [128, 64]],
      ["mlp.up_proj.weight", [128, 64]],
      ["mlp.down_proj.weight", [64, 128]],
    ],
  );
  assert.deepEqual(f.place("model.layers.1.self_attn.rotary_emb.inv_freq", d), {
    part: null,
    local: "self_attn.rotary_emb.inv_freq",
  });
  assert.deepEqual(f.place("model.layers.1.self_attn.o_proj.bias", d), {
    part: { kind: "layer", index: 1 },
    local: "self_attn.o_proj.bias",
  });
  // Without bias, a bias tensor is unknown (the split names it); so is a layer past the config.
  assert.equal(
    f.place("model.layers.0.self_attn.q_proj.bias", cfgOf({ ...v1Raw, bias: false })),
    undefined,
  );
  assert.equal(f.place("model.layers.2.self_attn.q_proj.weight", d), undefined);
  assert.equal(f.placeFused, undefined);
});

Deno.test("InternLM (1) dynamic rope: a full recompute at every step past max_position_embeddings", () => {
  const f = familyFor("InternLMForCausalLM", "m");
  const dyn = cfgOf({ ...v1Raw, max_position_embeddings: 16 });
  assert.equal(f.recomputeCache!(dyn, 14, 15), false);
  assert.equal(f.recomputeCache!(dyn, 15, 16), false);
  assert.equal(f.recomputeCache!(dyn, 16, 17), true);
  assert.equal(f.recomputeCache!(dyn, 30, 31), true);
  const origin = cfgOf({
    ...v1Raw,
    max_position_embeddings: 16,
    rotary: { base: 1e4, type: "origin" },
  });
  assert.equal(f.recomputeCache!(origin, 30, 31), false);
});

Deno.test("InternLM2: wqkv rows are interleaved by KV group", () => {
  // r = 2: group g = [q of heads 2g, 2g+1 | k_g | v_g], 16 rows each.
  const gqa = internlm2QkvRows(cfgOf(v2Raw));
  assert.deepEqual(gqa.q, [...rowRange(0, 32), ...rowRange(64, 32)]);
  assert.deepEqual(gqa.k, [...rowRange(32, 16), ...rowRange(96, 16)]);
  assert.deepEqual(gqa.v, [...rowRange(48, 16), ...rowRange(112, 16)]);
  // MHA (r = 1): [q_h | k_h | v_h] per head.
  const mha = internlm2QkvRows(cfgOf({ ...v2Raw, num_key_value_heads: 4 }));
  assert.deepEqual(mha.q.slice(0, 32), [...rowRange(0, 16), ...rowRange(48, 16)]);
  assert.deepEqual(mha.k.slice(0, 16), rowRange(16, 16));
  // MQA (r = 4): one group, all q first.
  const mqa = internlm2QkvRows(cfgOf({ ...v2Raw, num_key_value_heads: 1 }));
  assert.deepEqual(mqa, { q: rowRange(0, 64), k: rowRange(64, 16), v: rowRange(80, 16) });
});

Deno.test("tensors: InternLM2 names, wqkv split into q/k/v, biases per `bias`", () => {
  const f = familyFor("InternLM2ForCausalLM", "m");
  const off = cfgOf({ ...v2Raw, bias: false });
  const on = cfgOf(v2Raw); // InternLM2Config's default: bias true
  assert.deepEqual(on.biases, { qkv: true, o: true, mlp: false });
  assert.deepEqual(off.biases, { qkv: false, o: false, mlp: false });
  const rows = internlm2QkvRows(off);
  assert.deepEqual(f.placeFused!("model.layers.1.attention.wqkv.weight", off), [
    { part: { kind: "layer", index: 1 }, local: "self_attn.q_proj.weight", rows: rows.q },
    { part: { kind: "layer", index: 1 }, local: "self_attn.k_proj.weight", rows: rows.k },
    { part: { kind: "layer", index: 1 }, local: "self_attn.v_proj.weight", rows: rows.v },
  ]);
  assert.equal(f.placeFused!("model.layers.1.attention.wqkv.bias", off), undefined);
  assert.deepEqual(
    f.placeFused!("model.layers.0.attention.wqkv.bias", on)!.map((p) => [p.local, p.rows]),
    [["self_attn.q_proj.bias", rows.q], ["self_attn.k_proj.bias", rows.k], [
      "self_attn.v_proj.bias",
      rows.v,
    ]],
  );
  assert.equal(f.placeFused!("model.layers.2.attention.wqkv.weight", off), undefined);
  assert.equal(f.placeFused!("model.layers.0.attention.wo.weight", off), undefined);
  const local = (name: string, cfg = off) => {
    const p = f.place(name, cfg);
    return p && [p.part, p.local];
  };
  assert.deepEqual(local("model.tok_embeddings.weight"), [{ kind: "embed" }, "weight"]);
  assert.deepEqual(local("model.norm.weight"), [{ kind: "norm" }, "weight"]);
  assert.deepEqual(local("output.weight"), [{ kind: "lm_head" }, "weight"]);
  assert.deepEqual(local("output.weight", cfgOf({ ...v2Raw, tie_word_embeddings: true })), [
    null,
    "weight",
  ]);
  const L = { kind: "layer", index: 1 };
  assert.deepEqual(local("model.layers.1.attention.wo.weight"), [L, "self_attn.o_proj.weight"]);
  assert.deepEqual(local("model.layers.1.attention.wo.bias", on), [L, "self_attn.o_proj.bias"]);
  assert.equal(local("model.layers.1.attention.wo.bias"), undefined);
  assert.deepEqual(local("model.layers.1.attention_norm.weight"), [L, "input_layernorm.weight"]);
  assert.deepEqual(local("model.layers.1.ffn_norm.weight"), [L, "post_attention_layernorm.weight"]);
  assert.deepEqual(local("model.layers.1.feed_forward.w1.weight"), [L, "mlp.gate_proj.weight"]);
  assert.deepEqual(local("model.layers.1.feed_forward.w3.weight"), [L, "mlp.up_proj.weight"]);
  assert.deepEqual(local("model.layers.1.feed_forward.w2.weight"), [L, "mlp.down_proj.weight"]);
  // Llama's names are not InternLM2's.
  for (
    const name of [
      "model.embed_tokens.weight",
      "lm_head.weight",
      "model.layers.0.self_attn.q_proj.weight",
      "model.layers.0.mlp.gate_proj.weight",
      "model.layers.0.feed_forward.w4.weight",
    ]
  ) assert.equal(f.place(name, off), undefined, name);
  assert.deepEqual(
    f.expected(layer0, off).map((e) => e.local).filter((l) => l.includes("attn")),
    [
      "self_attn.q_proj.weight",
      "self_attn.k_proj.weight",
      "self_attn.v_proj.weight",
      "self_attn.o_proj.weight",
    ],
  );
});

Deno.test("config: InternLM2 rope_scaling linear / dynamic (sticky), others refused", () => {
  const d = cfgOf(v2Raw);
  assert.equal(d.headDim, 16);
  assert.equal(d.rmsNormEps, 1e-6);
  assert.equal(cfgOf({ ...v2Raw, head_dim: 32 }).headDim, 16); // not an InternLM2 key
  const lin = cfgOf({ ...v2Raw, rope_theta: 1e6, rope_scaling: { type: "linear", factor: 2 } });
  assert.deepEqual(lin.rope, {
    type: "linear",
    theta: 1e6,
    partialRotaryFactor: 1,
    params: { factor: 2 },
  });
  assert.throws(
    () => parse({ ...v2Raw, rope_scaling: { type: "yarn", factor: 2 } }),
    /config.json: rope_scaling.type: InternLM2 runs rope scaling types linear and dynamic, not "yarn"/,
  );
  assert.throws(
    () => parse({ ...v2Raw, rope_scaling: { type: "dynamic", factor: 0.5 } }),
    /config.json: rope_scaling.factor: expected a number >= 1, got 0.5/,
  );
  assert.throws(
    () => parse({ ...v2Raw, rope_scaling: { type: "dynamic" } }),
    /rope_scaling.factor: expected a number >= 1, got undefined/,
  );
});

Deno.test("rope: InternLM2's dynamic NTK keeps the last scaled table (sticky); Llama's resets", () => {
  const raw = {
    ...v2Raw,
    max_position_embeddings: 16,
    rope_scaling: { type: "dynamic", factor: 2 },
  };
  const shape = { headDim: 16, maxPositionEmbeddings: 16 };
  const sticky = cfgOf(raw).rope;
  const plain = parse({ ...raw, architectures: ["LlamaForCausalLM"] }).rope;
  const base = ropeTable(plain, shape, 10, "m").invFreq;
  const at20 = ropeTable(plain, shape, 20, "m").invFreq;
  assert.notDeepEqual(at20, base);
  // Before any scaling both are the base table.
  assert.deepEqual(ropeTable(sticky, shape, 10, "m").invFreq, base);
  assert.deepEqual(ropeTable(sticky, shape, 20, "m").invFreq, at20);
  // Back within max_position_embeddings: InternLM2 keeps the table of length 20.
  assert.deepEqual(ropeTable(sticky, shape, 10, "m").invFreq, at20);
  assert.deepEqual(ropeTable(plain, shape, 10, "m").invFreq, base);
  // A later, shorter scaled forward replaces it (the last one, not the longest).
  const at18 = ropeTable(plain, shape, 18, "m").invFreq;
  assert.deepEqual(ropeTable(sticky, shape, 18, "m").invFreq, at18);
  assert.deepEqual(ropeTable(sticky, shape, 5, "m").invFreq, at18);
  // The state is per parsed config (per loaded model).
  assert.deepEqual(ropeTable(cfgOf(raw).rope, shape, 10, "m").invFreq, base);
});

Deno.test("config + tensors: InternLM3 qkv_bias / bias (or attention_bias / mlp_bias), head_dim", () => {
  const f = familyFor("InternLM3ForCausalLM", "m");
  const d = cfgOf(v3Raw);
  assert.deepEqual(d.biases, { qkv: false, o: false, mlp: false });
  assert.equal(d.headDim, 16); // remote class: hidden / heads when absent
  assert.equal(d.rmsNormEps, 1e-6);
  assert.equal(d.maxPositionEmbeddings, 32768);
  assert.equal(cfgOf({ ...v3Raw, head_dim: null }).headDim, 16);
  assert.equal(
    cfgOf({ ...v3Raw, num_key_value_heads: undefined, num_attention_heads: 32 }).numKvHeads,
    32,
  );
  const both = cfgOf({ ...v3Raw, head_dim: 32, qkv_bias: true, bias: true });
  assert.deepEqual(both.biases, { qkv: true, o: true, mlp: true });
  assert.deepEqual(cfgOf({ ...v3Raw, qkv_bias: true }).biases, { qkv: true, o: false, mlp: false });
  assert.deepEqual(cfgOf({ ...v3Raw, attention_bias: false, mlp_bias: true }).biases, {
    qkv: false,
    o: true,
    mlp: true,
  });
  assert.deepEqual(
    f.expected(layer0, both).map((e) => [e.local, e.shape]),
    [
      ["input_layernorm.weight", [64]],
      ["self_attn.q_proj.weight", [128, 64]],
      ["self_attn.q_proj.bias", [128]],
      ["self_attn.k_proj.weight", [64, 64]],
      ["self_attn.k_proj.bias", [64]],
      ["self_attn.v_proj.weight", [64, 64]],
      ["self_attn.v_proj.bias", [64]],
      ["self_attn.o_proj.weight", [64, 128]],
      ["self_attn.o_proj.bias", [64]],
      ["post_attention_layernorm.weight", [64]],
      ["mlp.gate_proj.weight", [128, 64]],
      ["mlp.gate_proj.bias", [128]],
      ["mlp.up_proj.weight", [128, 64]],
      ["mlp.up_proj.bias", [128]],
      ["mlp.down_proj.weight", [64, 128]],
      ["mlp.down_proj.bias", [64]],
    ],
  );
  assert.equal(f.place("model.layers.0.mlp.up_proj.bias", d), undefined);
  assert.deepEqual(f.place("model.layers.0.mlp.up_proj.bias", both)?.local, "mlp.up_proj.bias");
  assert.throws(
    () => parse({ ...v3Raw, qkv_bias: 1 }),
    /config.json: qkv_bias: expected true or false/,
  );
  assert.throws(
    () => parse({ ...v3Raw, rope_scaling: { rope_type: "su" } }),
    /unsupported rope type "su"/,
  );
});

// beyond_max.json (scripts/remote_families/internlm.py): a 250-token prompt whose greedy
// continuation crosses max_position_embeddings 256, so it runs on the dynamic-NTK tables, through
// forward() and generate() (a dynamic rope is bounded by maxSeqLen only). "nocache":
// a full forward per token (InternLM's original code computes exactly this with its cache too, as
// it re-rotates every cached key); "cache" (InternLM2): one token at a time through the KV cache,
// each step's keys kept as that step's table rotated them, as InternLM2's original code does.
function argmaxLast(logits: Float32Array, V: number): number {
  const row = logits.subarray(logits.length - V);
  let best = 0;
  for (let i = 1; i < V; i++) if (row[i] > row[best]) best = i;
  return best;
}

for (const name of ["internlm", "internlm2"]) {
  Deno.test(`${name}: greedy past max_position_embeddings (dynamic NTK)`, async () => {
    const dir = new URL(`../fixtures/${name}/`, import.meta.url).pathname;
    const ref = JSON.parse(await Deno.readTextFile(`${dir}beyond_max.json`));
    const prompt: number[] = ref.prompt, n = ref.nocache.length;
    assert.ok(prompt.length < ref.max_position_embeddings);
    assert.ok(prompt.length + n > ref.max_position_embeddings);
    assert.notDeepEqual(ref.plain_rope, ref.nocache); // the scaling decides some tokens
    await using model = await AutoModel.fromPretrained(dir, {
      device: "cpu",
      dtype: "auto",
      maxSeqLen: prompt.length + n,
      layerShardsSavingPath: new URL(`../.tmp/split/${name}-beyond/`, import.meta.url).pathname,
    });
    const V = model.config.vocabSize;
    const seq = [...prompt];
    for (let i = 0; i < n; i++) seq.push(argmaxLast(await model.forward([seq]), V));
    assert.deepEqual(seq.slice(prompt.length), ref.nocache, "no cache");
    if (ref.cache) {
      model.resetCache();
      const got = [argmaxLast(await model.forward([prompt], { useCache: true }), V)];
      while (got.length < n) {
        got.push(argmaxLast(await model.forward([[got.at(-1)!]], { useCache: true }), V));
      }
      assert.deepEqual(got, ref.cache, "through the KV cache");
    }
    // generate() runs past max_position_embeddings too (a dynamic rope, maxSeqLen set beyond
    // the context): v1 recomputes the whole sequence each step past it, as its original re-rotates
    // every cached key; InternLM2 continues its cache, as its original does.
    model.resetCache();
    const [ids] = await model.generate([prompt], { maxNewTokens: n, eosTokenId: [] });
    assert.deepEqual(ids.slice(prompt.length), ref.cache ?? ref.nocache, "generate");
  });
}
