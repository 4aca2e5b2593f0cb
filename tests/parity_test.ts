import assert from "node:assert/strict";
import { loadFixtures, MODES, runParity } from "./parity_lib.ts";

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
      "stories260k",
    ]
  ) assert.ok(names.includes(want), `fixture ${want} missing from tests/fixtures`);
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
