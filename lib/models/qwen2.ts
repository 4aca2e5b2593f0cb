/**
 * Qwen2 / Qwen2.5: Llama's layer with q/k/v biases; sliding window only when
 * `use_sliding_window` is set, on layers from `max_window_layers` on.
 *
 * @module
 */
import { optionalInt } from "../config.ts";
import { type Family } from "./family.ts";
import { expectedLlamaLike, llama, LLAMA_DEFAULTS, parseLlamaLike } from "./llama.ts";

export const qwen2: Family = {
  ...llama,
  expected: expectedLlamaLike,
  architectures: ["Qwen2ForCausalLM"],
  parseConfig(raw, source) {
    const cfg = parseLlamaLike(raw, source, {
      ...LLAMA_DEFAULTS,
      maxPositionEmbeddings: 32768,
    });
    cfg.attentionBias = true;
    // Qwen2Config: the window exists only with use_sliding_window (4096 when the key is absent);
    // layers are "sliding_attention" per layer_types, else from max_window_layers on.
    const window = raw.use_sliding_window !== true
      ? null
      : "sliding_window" in raw
      ? optionalInt(raw, source, "sliding_window")
      : 4096;
    if (window !== null) {
      const types = raw.layer_types;
      const from = optionalInt(raw, source, "max_window_layers") ?? 28;
      cfg.layerWindows.forEach((_, i) => {
        const sliding = Array.isArray(types) ? types[i] === "sliding_attention" : i >= from;
        cfg.layerWindows[i] = sliding ? window : 0;
      });
    }
    return cfg;
  },
};
