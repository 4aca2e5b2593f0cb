/**
 * Qwen2 / Qwen2.5: Llama's layer with q/k/v biases; sliding window only when
 * `use_sliding_window` is set, on layers from `max_window_layers` on.
 *
 * @module
 */
import { type ConfigOverrides, type ModelConfig, optionalInt } from "../config.ts";
import { type Family } from "./family.ts";
import {
  expectedLlamaLike,
  llama,
  LLAMA_DEFAULTS,
  llamaLayer,
  llamaLayerSpec,
  parseLlamaLike,
} from "./llama.ts";

/**
 * A Qwen2Config: Llama's keys with Qwen2's defaults, q/k/v biases and window rules; `overrides`
 * are what a derived config class (Qwen3Config) defaults differently.
 */
export function parseQwen2Like(
  raw: Readonly<Record<string, unknown>>,
  source: string,
  overrides: ConfigOverrides = {},
): ModelConfig {
  const cfg = parseLlamaLike(raw, source, {
    ...LLAMA_DEFAULTS,
    maxPositionEmbeddings: 32768,
  }, overrides);
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
}

export const qwen2: Family = {
  ...llama,
  expected: expectedLlamaLike,
  forwardLayer: (ctx, w) => llamaLayer(ctx, w, llamaLayerSpec(ctx.cfg)),
  architectures: ["Qwen2ForCausalLM"],
  parseConfig: (raw, source) => parseQwen2Like(raw, source),
};
