import assert from "node:assert/strict";
import { base, parse } from "./_helpers.ts";

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
