import assert from "node:assert/strict";
import { base, parse } from "./_helpers.ts";

Deno.test("config: Mistral's sliding window defaults to 4096, null turns it off", () => {
  const m = { ...base, architectures: ["MistralForCausalLM"], model_type: "mistral" };
  assert.deepEqual(parse(m).layerWindows, [4096, 4096]);
  assert.deepEqual(parse({ ...m, sliding_window: null }).layerWindows, [0, 0]);
  assert.deepEqual(parse({ ...m, sliding_window: 8 }).layerWindows, [8, 8]);
});
