/**
 * `config.architectures[0]` → family, by exact name.
 *
 * @module
 */
import { UnsupportedArchitectureError } from "../errors.ts";
import type { Family } from "./family.ts";
import { llama } from "./llama.ts";
import { mistral } from "./mistral.ts";
import { qwen2 } from "./qwen2.ts";

const FAMILIES: readonly Family[] = [llama, mistral, qwen2];

const BY_ARCH = new Map(FAMILIES.flatMap((f) => f.architectures.map((a) => [a, f] as const)));

/** Every architecture name we run. */
export const SUPPORTED_ARCHITECTURES: readonly string[] = [...BY_ARCH.keys()].sort();

/** The family for an architecture, or an error naming it and listing the supported ones. */
export function familyFor(architecture: string, source: string): Family {
  const f = BY_ARCH.get(architecture);
  if (!f) throw new UnsupportedArchitectureError(architecture, SUPPORTED_ARCHITECTURES, source);
  return f;
}
