/**
 * Experts per token come from the family's typed config, with the config class's default when
 * config.json omits `num_experts_per_tok` (transformers 5.23: Qwen2MoeConfig 4, Qwen3MoeConfig 8,
 * DeepseekV3Config 8, MixtralConfig 2; DeepseekV2Config has none), so `rabbit info` and the planner
 * see a MoE model as one, not as dense.
 */
import assert from "node:assert/strict";
import { openCheckpoint } from "../lib/auto_model.ts";
import { ConfigError } from "../lib/errors.ts";
import { modelInfo } from "../lib/info.ts";
import { expertsPerToken } from "../lib/engine/planner.ts";
import { familyFor } from "../lib/models/registry.ts";

type Raw = Record<string, unknown>;

const fixtureDir = (name: string) => new URL(`./fixtures/${name}`, import.meta.url).pathname;

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
