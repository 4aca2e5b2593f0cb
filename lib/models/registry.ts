/**
 * `config.architectures[0]` → family, by exact name.
 *
 * @module
 */
import { UnsupportedArchitectureError } from "../errors.ts";
import type { Family } from "./family.ts";
import { baichuan } from "./baichuan.ts";
import { deepseekV2, deepseekV3 } from "./deepseek.ts";
import { gemma2 } from "./gemma2.ts";
import { gemma3 } from "./gemma3.ts";
import { chatGlm, glm, glm4 } from "./glm.ts";
import { internlm, internlm2, internlm3 } from "./internlm.ts";
import { llama } from "./llama.ts";
import { mistral } from "./mistral.ts";
import { mixtral } from "./mixtral.ts";
import { phi } from "./phi.ts";
import { phi3 } from "./phi3.ts";
import { qwen } from "./qwen.ts";
import { qwen2 } from "./qwen2.ts";
import { qwen3 } from "./qwen3.ts";
import { qwen2Moe } from "./qwen2_moe.ts";
import { qwen3Moe } from "./qwen3_moe.ts";

const FAMILIES: readonly Family[] = [
  llama,
  mistral,
  qwen2,
  gemma2,
  gemma3,
  qwen3,
  phi3,
  phi,
  mixtral,
  qwen2Moe,
  qwen3Moe,
  deepseekV2,
  deepseekV3,
  glm,
  glm4,
  chatGlm,
  baichuan,
  internlm,
  internlm2,
  internlm3,
  qwen,
];

const BY_ARCH = new Map(FAMILIES.flatMap((f) => f.architectures.map((a) => [a, f] as const)));

/** Every architecture name we run. */
export const SUPPORTED_ARCHITECTURES: readonly string[] = [...BY_ARCH.keys()].sort();

/** The family for an architecture, or an error naming it and listing the supported ones. */
export function familyFor(architecture: string, source: string): Family {
  const f = BY_ARCH.get(architecture);
  if (!f) throw new UnsupportedArchitectureError(architecture, SUPPORTED_ARCHITECTURES, source);
  return f;
}
