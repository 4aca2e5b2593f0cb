/**
 * Qwen3-MoE (Qwen3-30B-A3B, 235B-A22B): Qwen3's attention (per-head q/k RMSNorm) with
 * Qwen2-MoE's routed experts, no shared expert; `norm_topk_prob` renormalizes the top k. head_dim
 * is hidden / heads when absent (unlike dense Qwen3); a sliding window applies to every layer
 * when `use_sliding_window` is set.
 *
 * @module
 */
import { optionalInt } from "../config.ts";
import { ConfigError } from "../errors.ts";
import type { Family } from "./family.ts";
import { LLAMA_DEFAULTS, parseLlamaLike, placeExpected } from "./llama.ts";
import { expertGroup } from "./moe.ts";
import { qwen3LayerSpec } from "./qwen3.ts";
import {
  expectedQwenMoe,
  parseQwenMoe,
  type QwenMoeBuffers,
  type QwenMoeConfig,
  qwenMoeLayer,
  qwenMoeScratch,
} from "./qwen2_moe.ts";

export const qwen3Moe: Family<QwenMoeConfig, QwenMoeBuffers> = {
  architectures: ["Qwen3MoeForCausalLM"],
  scratch: qwenMoeScratch,
  parseConfig(raw, source) {
    // Qwen3MoeConfig: 4 KV heads when absent (or null); head_dim hidden / heads when absent.
    const cfg = parseLlamaLike(
      raw,
      source,
      { ...LLAMA_DEFAULTS, maxPositionEmbeddings: 32768 },
      { numKvHeads: raw.num_key_value_heads == null ? 4 : undefined },
    );
    const bias = raw.attention_bias ?? false;
    if (typeof bias !== "boolean") {
      throw new ConfigError(
        source,
        "attention_bias",
        `expected true or false, got ${JSON.stringify(bias)}`,
      );
    }
    cfg.attentionBias = bias;
    if (raw.use_sliding_window === true) {
      const window = "sliding_window" in raw ? optionalInt(raw, source, "sliding_window") : 4096;
      cfg.layerWindows.fill(window ?? 0);
    }
    return parseQwenMoe(raw, source, cfg, {
      experts: 128,
      topK: 8,
      moeIntermediate: 768,
      shared: null,
    });
  },
  place: (name, cfg) => placeExpected(name, cfg, qwen3Moe.expected),
  expected: (part, cfg) => expectedQwenMoe(part, cfg, qwen3LayerSpec(cfg)),
  lazyGroup: (local) => expertGroup(local),
  forwardLayer: (ctx, w) => qwenMoeLayer(ctx, w, qwen3LayerSpec(ctx.cfg)),
};
