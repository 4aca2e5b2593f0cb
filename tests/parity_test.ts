import assert from "node:assert/strict";
import { SUPPORTED_ARCHITECTURES } from "../mod.ts";
import { loadAllFixtures, loadFixtures, MODES, PENDING, runParity } from "./parity_lib.ts";

const fixtures = await loadFixtures();

Deno.test("parity: the fixture set is complete", () => {
  const names = fixtures.map((f) => f.name);
  for (
    const want of [
      "llama_tied",
      "llama_untied_sharded",
      "llama3_rope",
      "llama_linear_rope",
      "llama_bf16",
      "mistral",
      "qwen2",
      "gemma2",
      "gemma2_bf16",
      "gemma3_text",
      "qwen3",
      "qwen3_bf16",
      "phi3",
      "phi3_longrope",
      "phi2",
      "llama_attn_bias",
      "mixtral",
      "qwen2_moe",
      "qwen3_moe",
      "deepseek_v2",
      "deepseek_v3",
      "internlm",
      "internlm2",
      "internlm2_bf16",
      "internlm3",
      "baichuan",
      "baichuan2",
      "baichuan2_bf16",
      "baichuan2_13b",
      "glm",
      "glm4",
      "chatglm3",
      "glm4_remote",
      "chatglm2_32k",
      "chatglm_layernorm",
      "qwen1",
      "qwen1_bf16",
      "qwen1_long",
      "stories260k",
    ]
  ) assert.ok(names.includes(want), `fixture ${want} missing from tests/fixtures`);
});

Deno.test("parity: exactly the fixtures of unimplemented families are pending", async () => {
  const all = await loadAllFixtures();
  const unsupported = all.filter((f) => !SUPPORTED_ARCHITECTURES.includes(f.ref.architecture));
  assert.deepEqual(unsupported.map((f) => f.name).sort(), [...PENDING].sort());
});

for (const f of fixtures) {
  for (const mode of MODES) {
    const name = `parity: ${f.name} prefetch ${mode.prefetching ? "on" : "off"} cache ${
      mode.useCache ? "on" : "off"
    } matches transformers`;
    Deno.test(name, async () => {
      const r = await runParity(f, mode);
      assert.ok(
        r.maxAbsDiff <= r.tolerance,
        `max|Δlogit| ${r.maxAbsDiff} > ${r.tolerance} (1e-4 × max|logit| ${r.maxAbsLogit})`,
      );
      assert.deepEqual(r.ours, r.expected, "greedy continuation differs from transformers");
    });
  }
}
