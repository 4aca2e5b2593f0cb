/**
 * DeepSeek V2/V3 configs (transformers-5 and hub legacy forms), tensor placement (MTP layers,
 * dense vs MoE layers, expert groups) and the two routers on hand-computed inputs. The forward
 * itself is checked against transformers by the parity fixtures.
 */
import assert from "node:assert/strict";
import type { ModelConfig } from "../../lib/config.ts";
import { ConfigError } from "../../lib/errors.ts";
import {
  deepseekShape,
  deepseekV2,
  deepseekV3,
  routeNoauxTc,
  type Router,
  routeSoftmax,
} from "../../lib/models/deepseek.ts";
import { ropeTable } from "../../lib/rope.ts";

type Raw = Record<string, unknown>;

const fixture = (name: string) =>
  new URL(`../fixtures/${name}/config.json`, import.meta.url).pathname;

async function rawConfig(name: string): Promise<Raw> {
  return JSON.parse(await Deno.readTextFile(fixture(name)));
}

/** The same config as hub checkpoints write it: rope_theta + rope_scaling {type}, no head_dim. */
function legacy(raw: Raw): Raw {
  const { rope_parameters, head_dim: _h, qk_head_dim: _q, dtype, ...rest } = raw;
  const { rope_theta, rope_type, ...scaling } = rope_parameters as Raw;
  return { ...rest, torch_dtype: dtype, rope_theta, rope_scaling: { type: rope_type, ...scaling } };
}

function table(cfg: ModelConfig) {
  const shape = { headDim: cfg.ropeHeadDim!, maxPositionEmbeddings: cfg.maxPositionEmbeddings };
  return ropeTable(cfg.rope, shape, 1, "config.json");
}

function close(actual: number, expected: number, rel = 1e-6, what = "") {
  assert.ok(
    Math.abs(actual - expected) <= rel * Math.abs(expected),
    `${what}: ${actual} vs ${expected}`,
  );
}

// What transformers 5.23 computes for the fixture configs (ROPE_INIT_FUNCTIONS["yarn"] and
// yarn_apply_mscale(rope_parameters, qk_head_dim ** -0.5)).
const TRANSFORMERS = {
  deepseek_v2: {
    attentionScaling: 1.036992729910394,
    softmaxScale: 0.2131269655944733,
    invFreq: [1.0, 0.31622776, 0.1, 0.025693506, 0.00625, 0.0013834966, 0.00025, 7.9056947e-05],
  },
  deepseek_v3: {
    attentionScaling: 1.0,
    softmaxScale: 0.33125375419753433,
    invFreq: [1.0, 0.31622776, 0.1, 0.023914725, 0.005125, 0.00084986218, 2.5e-05, 7.9056945e-06],
  },
};

for (const [name, family] of [["deepseek_v2", deepseekV2], ["deepseek_v3", deepseekV3]] as const) {
  Deno.test(`deepseek ${name}: fixture config → MLA shape, yarn as transformers`, async () => {
    const cfg = family.parseConfig(await rawConfig(name), "config.json");
    const ds = deepseekShape(cfg);
    // head_dim 16 in the file is the rope dim; attention runs on nope + rope = 32 per head.
    assert.equal(cfg.headDim, 32);
    assert.equal(cfg.ropeHeadDim, 16);
    assert.equal(cfg.numKvHeads, cfg.numHeads);
    assert.equal(cfg.rope.type, "yarn");
    assert.deepEqual([ds.nope, ds.rope, ds.v, ds.kvLoraRank], [16, 16, 16, 16]);
    assert.equal(ds.qLoraRank, name === "deepseek_v2" ? 32 : null);
    assert.equal(ds.interleaved, true);
    assert.equal(ds.firstDense, 1);
    const ref = TRANSFORMERS[name];
    close(ds.scale, ref.softmaxScale, 1e-12, "softmax scale");
    const t = table(cfg);
    assert.equal(t.rotDim, 16);
    close(t.mscale, ref.attentionScaling, 1e-12, "attention scaling");
    t.invFreq.forEach((f, i) => close(f, ref.invFreq[i], 1e-7, `inv_freq[${i}]`));
  });

  Deno.test(`deepseek ${name}: the hub legacy config form parses to the same numbers`, async () => {
    const raw = await rawConfig(name);
    const a = family.parseConfig(raw, "config.json");
    const b = family.parseConfig(legacy(raw), "config.json");
    assert.equal(b.headDim, a.headDim);
    assert.equal(b.ropeHeadDim, a.ropeHeadDim);
    assert.equal(b.numKvHeads, a.numKvHeads);
    assert.equal(b.dtype, a.dtype);
    assert.deepEqual(b.rope, a.rope);
    assert.deepEqual(deepseekShape(b), deepseekShape(a));
    assert.deepEqual(table(b), table(a));
  });
}

Deno.test("deepseek: V2 fixture routing knobs", async () => {
  const r = deepseekShape(deepseekV2.parseConfig(await rawConfig("deepseek_v2"), "c")).router;
  assert.deepEqual(r, {
    method: "group_limited_greedy",
    experts: 8,
    topK: 3,
    nGroup: 4,
    topkGroup: 2,
    normTopK: false,
    routedScaling: 2,
  });
  const v2lite = deepseekShape(
    deepseekV2.parseConfig({ ...await rawConfig("deepseek_v2"), topk_method: "greedy" }, "c"),
  );
  assert.equal(v2lite.router.method, "greedy");
});

Deno.test("deepseek: V3 fixture routing knobs, shared experts, q_proj", async () => {
  const cfg = deepseekV3.parseConfig(await rawConfig("deepseek_v3"), "c");
  const ds = deepseekShape(cfg);
  assert.deepEqual(ds.router, {
    method: "noaux_tc",
    experts: 8,
    topK: 2,
    nGroup: 2,
    topkGroup: 1,
    normTopK: true,
    routedScaling: 2.5,
  });
  assert.equal(ds.sharedIntermediate, 8);
  assert.equal(ds.mtpLayers, 1);
  const names = deepseekV3.expected({ kind: "layer", index: 1 }, cfg).map((e) => e.local);
  assert.ok(names.includes("self_attn.q_proj.weight"));
  assert.ok(!names.includes("self_attn.q_a_proj.weight"));
  assert.ok(names.includes("mlp.gate.e_score_correction_bias"));
  assert.ok(names.includes("mlp.shared_experts.down_proj.weight"));
  const dense = deepseekV3.expected({ kind: "layer", index: 0 }, cfg).map((e) => e.local);
  assert.ok(dense.includes("mlp.gate_proj.weight"));
  assert.ok(!dense.some((n) => n.includes("experts")));
});

Deno.test("deepseek: MTP layers are known and unused (V3 only), experts are lazy groups", async () => {
  const v3 = deepseekV3.parseConfig(await rawConfig("deepseek_v3"), "c"); // 3 layers + 1 MTP
  for (const name of ["model.layers.3.eh_proj.weight", "model.layers.3.self_attn.q_proj.weight"]) {
    assert.deepEqual(deepseekV3.place(name, v3)?.part, null, name);
  }
  assert.equal(deepseekV3.place("model.layers.4.eh_proj.weight", v3), undefined);
  assert.deepEqual(deepseekV3.place("model.layers.2.mlp.experts.7.up_proj.weight", v3), {
    part: { kind: "layer", index: 2 },
    local: "mlp.experts.7.up_proj.weight",
  });
  // Layer 0 is dense: an expert tensor there is unknown.
  assert.equal(deepseekV3.place("model.layers.0.mlp.experts.0.up_proj.weight", v3), undefined);
  const v2 = deepseekV2.parseConfig(await rawConfig("deepseek_v2"), "c");
  assert.equal(deepseekV2.place("model.layers.3.eh_proj.weight", v2), undefined);
  assert.equal(deepseekV2.lazyGroup!("mlp.experts.5.gate_proj.weight", v2), "expert.5");
  assert.equal(deepseekV2.lazyGroup!("mlp.shared_experts.gate_proj.weight", v2), null);
  assert.equal(deepseekV2.lazyGroup!("mlp.gate.weight", v2), null);
});

Deno.test("deepseek: bad config values name their key", async () => {
  const v2 = await rawConfig("deepseek_v2"), v3 = await rawConfig("deepseek_v3");
  const cases: [typeof deepseekV2, Raw, string][] = [
    [deepseekV2, { ...v2, topk_method: "noaux_tc" }, "topk_method"],
    [deepseekV2, { ...v2, n_group: 3 }, "n_group"],
    [deepseekV2, { ...v2, n_group: null }, "n_group"],
    [deepseekV2, { ...v2, topk_group: 5 }, "topk_group"],
    [deepseekV2, { ...v2, num_experts_per_tok: 9 }, "num_experts_per_tok"],
    [deepseekV2, { ...v2, qk_rope_head_dim: 15 }, "qk_rope_head_dim"],
    [deepseekV2, { ...v2, kv_lora_rank: 0 }, "kv_lora_rank"],
    [deepseekV2, { ...v2, q_lora_rank: "32" }, "q_lora_rank"],
    [deepseekV2, { ...v2, routed_scaling_factor: "2" }, "routed_scaling_factor"],
    [deepseekV3, { ...v3, rope_interleave: "yes" }, "rope_interleave"],
    [deepseekV3, { ...v3, n_group: 8, topk_group: 1 }, "n_group"], // 1 expert per group
    [deepseekV3, { ...v3, quantization_config: { quant_method: "fp8" } }, "quantization_config"],
    [deepseekV3, { ...v3, first_k_dense_replace: -1 }, "first_k_dense_replace"],
  ];
  for (const [family, raw, key] of cases) {
    assert.throws(
      () => family.parseConfig(raw, "config.json"),
      (e) => e instanceof ConfigError && e.key === key && e.message.startsWith("config.json: "),
      key,
    );
  }
});

const ln = Math.log;

Deno.test("deepseek: V2 routing, greedy and group_limited_greedy", () => {
  const r: Router = {
    method: "group_limited_greedy",
    experts: 4,
    topK: 2,
    nGroup: 2, // groups {0, 1} and {2, 3}
    topkGroup: 1,
    normTopK: true, // ignored by V2, as in transformers
    routedScaling: 2,
  };
  // Softmax of ln p is p when Σp = 1.
  // Token 0: p = [0.1, 0.4, 0.3, 0.2]; group max 0.4 vs 0.3 → keep {0, 1}; its top 2 are 1 (0.4)
  //   and 0 (0.1), though expert 2 (0.3) beats 0 overall; weights × 2 = 0.8, 0.2.
  // Token 1: p = [0.35, 0.05, 0.3, 0.3]; group max 0.35 vs 0.3 → keep {0, 1} (the group score is
  //   the max, not the sum 0.4 vs 0.6); experts 0, 1 → 0.7, 0.1.
  const logits = Float32Array.from([0.1, 0.4, 0.3, 0.2, 0.35, 0.05, 0.3, 0.3].map(ln));
  const g = routeSoftmax(logits, 2, r);
  assert.deepEqual([...g.experts], [1, 0, 0, 1]);
  [0.8, 0.2, 0.7, 0.1].forEach((w, i) => close(g.weights[i], w, 1e-6, `weight ${i}`));
  // greedy: the top 2 of all → token 0: 1 (0.4), 2 (0.3) → 0.8, 0.6; token 1: 0 (0.35), then
  //   the tie 2/3 (0.3) goes to the lower index 2 → 0.7, 0.6.
  const gr = routeSoftmax(logits, 2, { ...r, method: "greedy", nGroup: 1, topkGroup: 1 });
  assert.deepEqual([...gr.experts], [1, 2, 0, 2]);
  [0.8, 0.6, 0.7, 0.6].forEach((w, i) => close(gr.weights[i], w, 1e-6, `weight ${i}`));
});

Deno.test("deepseek: V3 noaux_tc routing", () => {
  const r: Router = {
    method: "noaux_tc",
    experts: 4,
    topK: 2,
    nGroup: 2, // groups {0, 1} and {2, 3}
    topkGroup: 1,
    normTopK: true,
    routedScaling: 2.5,
  };
  // sigmoid(ln 3) = 0.75, sigmoid(0) = 0.5, sigmoid(-ln 3) = 0.25.
  const bias = Float32Array.from([0, 0, 0.1, 0]);
  // Token 0: s = [0.75, 0.25, 0.5, 0.5], choice = s + bias = [0.75, 0.25, 0.6, 0.5]; group sums
  //   of the best two: 1.0 vs 1.1 → keep {2, 3} although expert 0 has the best choice value;
  //   experts 2, 3 with un-biased scores 0.5, 0.5 → /1.0 → × 2.5 = 1.25, 1.25.
  // Token 1: s = [0.5, 0.5, 0.75, 0.25], choice [0.5, 0.5, 0.85, 0.25]: 1.0 vs 1.1 → {2, 3};
  //   weights 0.75, 0.25 (not the biased 0.85) → / 1.0 → × 2.5 = 1.875, 0.625.
  const logits = Float32Array.from([ln(3), -ln(3), 0, 0, 0, 0, ln(3), -ln(3)]);
  const g = routeNoauxTc(logits, bias, 2, r);
  assert.deepEqual([...g.experts], [2, 3, 2, 3]);
  [1.25, 1.25, 1.875, 0.625].forEach((w, i) => close(g.weights[i], w, 1e-6, `weight ${i}`));

  // One group, no renormalization, scaling 1: s = [0.75, 0.5, 0.5, 0.25], bias
  //   [-0.3, 0, 0.05, 0.4] → choice [0.45, 0.5, 0.55, 0.65]: the bias picks 3 (0.65) and 2
  //   (0.55) over expert 0 (best score 0.75); weights are their scores 0.25, 0.5.
  const one = routeNoauxTc(
    Float32Array.from([ln(3), 0, 0, -ln(3)]),
    Float32Array.from([-0.3, 0, 0.05, 0.4]),
    1,
    { ...r, nGroup: 1, normTopK: false, routedScaling: 1 },
  );
  assert.deepEqual([...one.experts], [3, 2]);
  [0.25, 0.5].forEach((w, i) => close(one.weights[i], w, 1e-6, `weight ${i}`));
});
