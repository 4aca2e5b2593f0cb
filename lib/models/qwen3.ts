/**
 * Qwen3: Llama's layer with an RMSNorm on every query and key head (`q_norm`, `k_norm`, over
 * head_dim) before rope. head_dim defaults to 128, not hidden / heads; q/k/v/o carry biases only
 * with `attention_bias`; the sliding window follows Qwen2's rules.
 *
 * @module
 */
import type { ModelConfig } from "../config.ts";
import { ConfigError } from "../errors.ts";
import type { Family } from "./family.ts";
import {
  expectedGlobal,
  llama,
  llamaLayer,
  type LlamaLayerSpec,
  llamaLayerSpec,
  llamaLayerTensors,
  placeExpected,
} from "./llama.ts";
import { parseQwen2Like } from "./qwen2.ts";
import { perConfig } from "./blocks.ts";

/** Llama's layer with q_norm / k_norm, every projection biased with `attention_bias`. */
export const qwen3LayerSpec = perConfig((cfg: ModelConfig): LlamaLayerSpec => {
  const spec = llamaLayerSpec(cfg, cfg.attentionBias);
  const qkNorm = {
    q: { name: "self_attn.q_norm", kind: "rms" as const },
    k: { name: "self_attn.k_norm", kind: "rms" as const },
  };
  return { ...spec, attn: { ...spec.attn, qkNorm } };
});

export const qwen3: Family = {
  ...llama,
  architectures: ["Qwen3ForCausalLM"],
  parseConfig(raw, source) {
    // Qwen3Config: head_dim 128 and 32 KV heads when absent (not hidden / heads and heads);
    // windows as Qwen2Config (use_sliding_window, max_window_layers, layer_types).
    // A key present with null takes the common rule (hidden / heads, one KV head per head).
    const cfg = parseQwen2Like(raw, source, {
      headDim: "head_dim" in raw ? undefined : 128,
      numKvHeads: "num_key_value_heads" in raw ? undefined : 32,
    });
    const bias = raw.attention_bias ?? false;
    if (typeof bias !== "boolean") {
      throw new ConfigError(
        source,
        "attention_bias",
        `expected true or false, got ${JSON.stringify(bias)}`,
      );
    }
    cfg.attentionBias = bias;
    return cfg;
  },
  place: (name, cfg) => placeExpected(name, cfg, qwen3.expected),
  expected: (part, cfg) =>
    part.kind === "layer" ? llamaLayerTensors(qwen3LayerSpec(cfg), cfg) : expectedGlobal(part, cfg),
  forwardLayer: (ctx, w) => llamaLayer(ctx, w, qwen3LayerSpec(ctx.cfg)),
};
