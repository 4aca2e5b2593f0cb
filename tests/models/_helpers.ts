/**
 * Shared by the per-family config tests (tests/models/*_test.ts): a minimal Llama-shaped config,
 * the registry's parse, and the Gemma base dicts.
 */
import { familyFor } from "../../lib/models/registry.ts";
import type { GemmaConfig } from "../../lib/models/gemma2.ts";

export const base = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  vocab_size: 256,
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
};

export function parse(raw: Record<string, unknown>) {
  const arch = (raw.architectures as string[])[0];
  return familyFor(arch, "m/config.json").parseConfig(raw, "m/config.json");
}

// Gemma: the expected values are what transformers 5.23's Gemma2Config / Gemma3TextConfig give
// for the same dicts (from_dict), e.g. head_dim 256 and 4 KV heads when absent.
export const gemmaBase = {
  vocab_size: 256,
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 4,
  num_attention_heads: 8,
};
export const gemma2Raw = {
  ...gemmaBase,
  architectures: ["Gemma2ForCausalLM"],
  model_type: "gemma2",
};
export const gemma3Raw = {
  ...gemmaBase,
  architectures: ["Gemma3ForCausalLM"],
  model_type: "gemma3_text",
};
export const gemma = (raw: Record<string, unknown>) => parse(raw) as GemmaConfig;
