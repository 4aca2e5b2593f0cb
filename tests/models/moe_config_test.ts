/**
 * Experts per token come from the family's typed config, with the config class's default when
 * config.json omits `num_experts_per_tok` (transformers 5.23: Qwen2MoeConfig 4, Qwen3MoeConfig 8,
 * DeepseekV3Config 8, MixtralConfig 2; DeepseekV2Config has none), so `rabbit info` and the planner
 * see a MoE model as one, not as dense.
 */
import assert from "node:assert/strict";
import { openCheckpoint } from "../../lib/auto_model.ts";
import { ConfigError } from "../../lib/errors.ts";
import { modelInfo } from "../../lib/info.ts";
import { expertsPerToken } from "../../lib/engine/planner.ts";
import { familyFor } from "../../lib/models/registry.ts";
import type { MixtralConfig } from "../../lib/models/mixtral.ts";
import type { QwenMoeConfig } from "../../lib/models/qwen2_moe.ts";

type Raw = Record<string, unknown>;

const fixtureDir = (name: string) => new URL(`../fixtures/${name}`, import.meta.url).pathname;

async function fixture(name: string): Promise<Raw> {
  return JSON.parse(await Deno.readTextFile(`${fixtureDir(name)}/config.json`));
}

/** The fixture's config without `num_experts_per_tok`, with `extra` keys. */
async function withoutTopK(name: string, extra: Raw = {}): Promise<Raw> {
  const { num_experts_per_tok: _, ...rest } = await fixture(name);
  return { ...rest, ...extra };
}

function parse(raw: Raw) {
  const arch = (raw.architectures as string[])[0];
  return familyFor(arch, "m/config.json").parseConfig(raw, "m/config.json");
}

Deno.test("moe config: experts per token default to the config class's when absent", async () => {
  // Enough experts for each default (the fixtures have 4 or 8).
  const cases: [string, Raw, number][] = [
    ["qwen2_moe", {}, 4],
    ["qwen3_moe", { num_local_experts: 16 }, 8],
    ["deepseek_v3", { n_routed_experts: 16, topk_group: 2 }, 8],
    ["mixtral", {}, 2],
  ];
  for (const [name, extra, k] of cases) {
    const cfg = parse(await withoutTopK(name, extra));
    assert.equal(cfg.expertsPerToken, k, name);
    assert.equal(expertsPerToken(cfg), k, name);
  }
  // Given in the file: that value.
  for (const name of ["qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "mixtral"]) {
    assert.equal(expertsPerToken(parse(await fixture(name))), 2 + Number(name === "deepseek_v2"));
  }
  // DeepseekV2Config has no default: the key is required.
  await assert.rejects(
    async () => parse(await withoutTopK("deepseek_v2")),
    (e) => e instanceof ConfigError && e.message.includes("num_experts_per_tok"),
  );
  // Dense families: null.
  assert.equal(expertsPerToken(parse(await fixture("qwen2"))), null);
});

Deno.test("moe config: rabbit info reports a Qwen2-MoE relying on the default as MoE", async () => {
  const dir = await Deno.makeTempDir({ prefix: "rabbit-moe-default-" });
  try {
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(await withoutTopK("qwen2_moe")));
    await Deno.copyFile(`${fixtureDir("qwen2_moe")}/model.safetensors`, `${dir}/model.safetensors`);
    const ck = await openCheckpoint(dir, { quiet: true });
    const i = await modelInfo(ck);
    // 4 experts per MoE layer, Qwen2MoeConfig's top 4 chosen per token.
    assert.deepEqual(i.experts, { perLayer: 4, perToken: 4 });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config: MoE keys — hub and transformers spellings, defaults, layer rules, errors", async () => {
  const fixture = async (name: string) =>
    JSON.parse(
      await Deno.readTextFile(new URL(`../fixtures/${name}/config.json`, import.meta.url)),
    );
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
