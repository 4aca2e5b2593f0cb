/**
 * What generate() needs besides the forward pass: turning strings / chat messages / ids into
 * prompt rows, left padding with an attention mask, the generation defaults of the checkpoint
 * (generation_config.json) and the stop rules.
 *
 * @module
 */
import { InputError } from "../errors.ts";
import type { ChatMessage } from "../tokenizer.ts";
import type { SamplingOptions } from "./sampling.ts";

export type { ChatMessage };

/** What generate() accepts: token ids, text, or chat messages — one prompt or a batch. */
export type GenerateInput =
  | number[][]
  | number[]
  | string
  | string[]
  | ChatMessage[]
  | ChatMessage[][];

/** The part of the tokenizer generate() uses (lib/tokenizer.ts implements it). */
export interface TextCodec {
  /** Text → ids; special tokens (BOS) added unless `addSpecialTokens` is false. */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  /** Ids → text, without special tokens when `skipSpecialTokens`. */
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean }): string;
  /** Text deltas of ids fed one at a time, never splitting a character. */
  decodeStream(
    opts?: { skipSpecialTokens?: boolean; context?: readonly number[] },
  ): { push(id: number): string; flush(): string };
  /** A conversation rendered with the model's chat template (text, to be encoded). */
  applyChatTemplate(
    messages: readonly ChatMessage[],
    opts?: { addGenerationPrompt?: boolean },
  ): string;
  /** Id of the padding token, null when there is none. */
  readonly padTokenId: number | null;
}

/** Options of generate() and stream(); unset ones come from generation_config.json. */
export interface GenerateOptions extends Partial<SamplingOptions> {
  /** Tokens to generate at most per row (default from generation_config.json, else 20). */
  maxNewTokens?: number;
  /** Makes sampling reproducible. Default: a random seed. */
  seed?: number;
  /** Generation stops for a row once its new text contains one of these. */
  stopStrings?: string[];
  /** Token ids that end a row; default from generation_config.json / config.json. */
  eosTokenId?: number | number[];
  /** false: every step recomputes the whole sequence (same tokens, slower). Default true. */
  useCache?: boolean;
  /**
   * Keep the KV cache of the previous call when this (single) prompt extends its tokens — a chat's
   * earlier turns are not recomputed. Default false (every call starts from an empty cache).
   */
  reuseCache?: boolean;
}

/** Defaults from generation_config.json, over transformers' GenerationConfig defaults. */
export interface GenerationDefaults extends SamplingOptions {
  /** `max_new_tokens` of generation_config.json, else 20. */
  maxNewTokens: number;
  /** `eos_token_id` of generation_config.json, else config.json's. */
  eosTokenIds: number[];
}

/** transformers' GenerationConfig defaults. */
export const HF_GENERATION_DEFAULTS: GenerationDefaults = {
  doSample: false,
  temperature: 1,
  topK: 50,
  topP: 1,
  minP: 0,
  repetitionPenalty: 1,
  maxNewTokens: 20,
  eosTokenIds: [],
};

/** Reads generation_config.json (optional) over the defaults; eos ids fall back to config.json's. */
export async function readGenerationDefaults(
  dir: string,
  configEos: number[],
): Promise<GenerationDefaults> {
  let g: Record<string, unknown> = {};
  try {
    g = JSON.parse(await Deno.readTextFile(`${dir}/generation_config.json`));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      throw new InputError(`${dir}/generation_config.json: ${(e as Error).message}`, { cause: e });
    }
  }
  const num = (k: string, d: number) => (typeof g[k] === "number" ? g[k] as number : d);
  const eos = g.eos_token_id;
  const d = HF_GENERATION_DEFAULTS;
  return {
    doSample: typeof g.do_sample === "boolean" ? g.do_sample : d.doSample,
    temperature: num("temperature", d.temperature),
    topK: num("top_k", d.topK),
    topP: num("top_p", d.topP),
    minP: num("min_p", d.minP),
    repetitionPenalty: num("repetition_penalty", d.repetitionPenalty),
    maxNewTokens: num("max_new_tokens", d.maxNewTokens),
    eosTokenIds: Array.isArray(eos) ? eos as number[] : typeof eos === "number" ? [eos] : configEos,
  };
}

/** Settings of one generate() call after defaults. */
export interface ResolvedGenerate extends SamplingOptions {
  maxNewTokens: number;
  eos: Set<number>;
  seed: number;
  stopStrings: string[];
  useCache: boolean;
  reuseCache: boolean;
}

/** Merges call options over the checkpoint's defaults and validates them. */
export function resolveGenerate(o: GenerateOptions, d: GenerationDefaults): ResolvedGenerate {
  const temperature = o.temperature ?? d.temperature;
  const r: ResolvedGenerate = {
    // Temperature 0 is greedy (as in llama.cpp, ollama and the OpenAI API) unless doSample is
    // asked for explicitly, which stays an error below.
    doSample: o.doSample ?? (temperature === 0 ? false : d.doSample),
    temperature,
    topK: o.topK ?? d.topK,
    topP: o.topP ?? d.topP,
    minP: o.minP ?? d.minP,
    repetitionPenalty: o.repetitionPenalty ?? d.repetitionPenalty,
    maxNewTokens: o.maxNewTokens ?? d.maxNewTokens,
    eos: new Set(o.eosTokenId === undefined ? d.eosTokenIds : [o.eosTokenId].flat()),
    seed: o.seed ?? Math.floor(Math.random() * 2 ** 32),
    stopStrings: o.stopStrings ?? [],
    useCache: o.useCache ?? true,
    reuseCache: o.reuseCache ?? false,
  };
  const check = (ok: boolean, what: string) => {
    if (!ok) throw new InputError(`generate: ${what}`);
  };
  check(
    Number.isInteger(r.maxNewTokens) && r.maxNewTokens >= 1,
    `maxNewTokens must be ≥ 1, got ${r.maxNewTokens}`,
  );
  check(
    r.temperature > 0 || (r.temperature === 0 && !r.doSample),
    r.temperature === 0
      ? "temperature must be > 0 when doSample is true (temperature 0 means greedy: leave " +
        "doSample unset or false)"
      : `temperature must be > 0 (or 0 for greedy), got ${r.temperature}`,
  );
  check(Number.isInteger(r.topK) && r.topK >= 0, `topK must be an integer ≥ 0, got ${r.topK}`);
  check(r.topP > 0 && r.topP <= 1, `topP must be in (0, 1], got ${r.topP}`);
  check(r.minP >= 0 && r.minP <= 1, `minP must be in [0, 1], got ${r.minP}`);
  check(r.repetitionPenalty > 0, `repetitionPenalty must be > 0, got ${r.repetitionPenalty}`);
  check(
    r.stopStrings.every((s) => typeof s === "string" && s.length > 0),
    "stopStrings must be non-empty strings",
  );
  return r;
}

const isMessage = (x: unknown): x is ChatMessage =>
  typeof x === "object" && x !== null && !Array.isArray(x) &&
  typeof (x as ChatMessage).role === "string";

/** Turns any accepted input into prompt rows of token ids (unpadded). */
export function promptRows(input: GenerateInput, codec: TextCodec | null): number[][] {
  const needCodec = (what: string): TextCodec => {
    if (!codec) {
      throw new InputError(
        `generate: ${what} needs a tokenizer, and this model has none (tokenizer.json)`,
      );
    }
    return codec;
  };
  const chat = (m: ChatMessage[]) => {
    const c = needCodec("chat messages");
    return c.encode(c.applyChatTemplate(m, { addGenerationPrompt: true }), {
      addSpecialTokens: false,
    });
  };
  let rows: number[][];
  if (typeof input === "string") rows = [needCodec("a text prompt").encode(input)];
  else if (!Array.isArray(input) || input.length === 0) {
    throw new InputError("generate: empty input");
  } else if (typeof input[0] === "number") rows = [input as number[]];
  else if (typeof input[0] === "string") {
    rows = (input as string[]).map((s) => needCodec("a text prompt").encode(s));
  } else if (isMessage(input[0])) rows = [chat(input as ChatMessage[])];
  else if (Array.isArray(input[0]) && isMessage(input[0][0])) {
    rows = (input as ChatMessage[][]).map(chat);
  } else rows = input as number[][];
  for (const [b, r] of rows.entries()) {
    if (!Array.isArray(r) || r.length === 0) throw new InputError(`generate: prompt ${b} is empty`);
  }
  return rows;
}

/** Left-pads rows to one length: ids (pads = `pad`) and the attention mask (1 = real token). */
export function leftPad(rows: number[][], pad: number): { ids: number[][]; mask: number[][] } {
  const S = Math.max(...rows.map((r) => r.length));
  return {
    ids: rows.map((r) => [...new Array(S - r.length).fill(pad), ...r]),
    mask: rows.map((r) => [...new Array(S - r.length).fill(0), ...new Array(r.length).fill(1)]),
  };
}
