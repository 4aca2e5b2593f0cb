/**
 * Qwen2 / Qwen2.5: Llama's layer with q/k/v biases; sliding window only when
 * `use_sliding_window` is set, on layers from `max_window_layers` on.
 *
 * @module
 */
import { optionalInt } from "../config.ts";
import { type Family } from "./family.ts";
import { LLAMA_DEFAULTS, llama, parseLlamaLike } from "./llama.ts";

export const qwen2: Family = {
  ...llama,
  architectures: ["Qwen2ForCausalLM"],
  parseConfig(raw, source) {
    const cfg = parseLlamaLike(raw, source, {
      ...LLAMA_DEFAULTS,
      maxPositionEmbeddings: 32768,
    });
    cfg.attentionBias = true;
    if (raw.use_sliding_window === true) {
      const window = optionalInt(raw, source, "sliding_window") ?? 4096;
      const from = optionalInt(raw, source, "max_window_layers") ?? 28;
      cfg.layerWindows.forEach((_, i) => cfg.layerWindows[i] = i >= from ? window : 0);
    }
    return cfg;
  },
};
