/**
 * Mistral: Llama's layer with a sliding attention window on every layer (`sliding_window`).
 *
 * @module
 */
import { optionalInt } from "../config.ts";
import { type Family } from "./family.ts";
import {
  expectedLlamaLike,
  llama,
  LLAMA_DEFAULTS,
  llamaLayer,
  llamaLayerSpec,
  parseLlamaLike,
} from "./llama.ts";

export const mistral: Family = {
  ...llama,
  expected: expectedLlamaLike,
  forwardLayer: (ctx, w) => llamaLayer(ctx, w, llamaLayerSpec(ctx.cfg)),
  architectures: ["MistralForCausalLM"],
  parseConfig(raw, source) {
    const cfg = parseLlamaLike(raw, source, {
      ...LLAMA_DEFAULTS,
      maxPositionEmbeddings: 4096 * 32,
    });
    // MistralConfig defaults sliding_window to 4096 only when the key is absent; null turns it off.
    const window = "sliding_window" in raw ? optionalInt(raw, source, "sliding_window") : 4096;
    cfg.layerWindows.fill(window ?? 0);
    return cfg;
  },
};
