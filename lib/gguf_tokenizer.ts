/**
 * A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) rebuilt from the tokenizer
 * metadata of a GGUF file, so that {@link Tokenizer.fromGguf} encodes and decodes like the HF
 * tokenizer the GGUF was converted from.
 *
 * What a GGUF holds (llama.cpp's convert_hf_to_gguf.py writes it): `tokenizer.ggml.model`,
 * `tokens`, `scores`, `token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
 * 6 byte), `merges`, `pre`, the special ids, `add_bos_token` / `add_eos_token` /
 * `add_space_prefix` and `tokenizer.chat_template` (named ones as `tokenizer.chat_template.<name>`,
 * listed in `tokenizer.chat_templates`). The rebuild follows transformers 5's GGUF loader
 * (transformers/integrations/gguf/gguf_tokenizer_mapping.py) except where that loader does not
 * reproduce the original tokenizer and the metadata says enough to do so:
 *
 * - `llama` (SentencePiece): a BPE with byte fallback over the tokens; merges from
 *   `tokenizer.ggml.merges` when present, else derived from tokens + scores exactly as
 *   transformers' `generate_merges`; Metaspace pre-tokenization (prepend "first", or "never" when
 *   `add_space_prefix` is false — transformers ignores that key); Replace/ByteFallback/Fuse/Strip
 *   decoders; a BOS (and EOS) post-processor per `add_bos_token` (default true, as transformers
 *   and llama.cpp) / `add_eos_token`. Architecture-specific SentencePiece variants transformers
 *   special-cases (gemma, phi3: prefix space from a normalizer) are not handled: a TokenizerError.
 * - `gpt2` (byte-level BPE): tokens (respelled into the byte alphabet when they are not spelled in
 *   it, as transformers does), merges, ByteLevel decoder, and the pre-tokenizer `tokenizer.ggml.pre`
 *   names: "default"/"gpt2"/"gpt-2" (GPT-2's ByteLevel regex), the Llama-3 family ("llama-bpe",
 *   ...; also `ignore_merges`, as llama.cpp and Llama-3's tokenizer.json), the Qwen2 family
 *   ("qwen2", ...), "smollm" / "starcoder" / "refact" (Digits(individual) + GPT-2 regex, as their tokenizer.json;
 *   llama.cpp splits digits the same way, transformers' GGUF loader does not). Any other value is a
 *   TokenizerError naming the key, never a silent fallback.
 *
 * Not recoverable from a GGUF, documented rather than guessed:
 * - Normalizers are not stored (convert_hf_to_gguf.py records only lowercase / strip-accents
 *   flags). Qwen2's tokenizer.json applies NFC; the Qwen2 pre names are given NFC here because
 *   every Qwen2 tokenizer has it (llama.cpp and transformers' GGUF loader do not normalize, so
 *   they split "e\u0301" differently from the HF tokenizer). A lowercase/strip-accents flag is
 *   rejected (TokenizerError) rather than ignored.
 * - A `llama` GGUF does not say whether the HF tokenizer prepended "▁" with Metaspace "first"
 *   (transformers 5's LlamaTokenizer, what this builds) or with Llama-2's legacy Prepend/Replace
 *   normalizer (and llama.cpp): they differ only on text that starts with a space (" Hello" is
 *   [▁Hello] here, [▁, ▁Hello] there; llama.cpp's ggml-vocab-llama-spm.gguf.out has the latter).
 * - Added-token flags (lstrip/rstrip/single_word/normalized) are not stored: control tokens become
 *   special, user-defined ones plain added tokens, all matched whole and unnormalized.
 * - The byte-level converter writes added tokens as their decoded text; a non-special added token
 *   whose text is not the token's spelling keeps its id but is matched by its decoded text.
 *
 * @module
 */
import { GgufError, TokenizerError } from "./errors.ts";
import { type GgufHeader, type GgufValue, ggufValue } from "./gguf.ts";

/** What {@link ggufTokenizerFiles} returns: the files a model directory would hold. */
export interface GgufTokenizerFiles {
  /** tokenizer.json (HF `tokenizers` format). */
  tokenizerJson: Record<string, unknown>;
  /** tokenizer_config.json: named special tokens, add_bos_token / add_eos_token. */
  tokenizerConfig: Record<string, unknown>;
  /** `tokenizer.chat_template`, the "default" template; null when absent. */
  chatTemplate: string | null;
  /** The named templates (`tokenizer.chat_template.<name>`), without "default". */
  namedChatTemplates: Record<string, string>;
}

/** llama.cpp's token types (`tokenizer.ggml.token_type`). */
const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 };

const LLAMA3_SPLIT = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}` +
  String.raw`| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const QWEN2_SPLIT = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}` +
  String.raw`| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;

type Json = Record<string, unknown>;

/** The byte-level pipeline a `tokenizer.ggml.pre` value stands for. */
interface BytePre {
  normalizer: Json | null;
  preTokenizer: Json;
  ignoreMerges: boolean;
}

const BYTE_LEVEL_REGEX: Json = {
  type: "ByteLevel",
  add_prefix_space: false,
  trim_offsets: true,
  use_regex: true,
};

/** A Split(regex, Isolated) + ByteLevel(no regex) pre-tokenizer (also used by lib/tiktoken.ts). */
export function splitThenBytes(regex: string): Json {
  return {
    type: "Sequence",
    pretokenizers: [
      { type: "Split", pattern: { Regex: regex }, behavior: "Isolated", invert: false },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  };
}

/** `tokenizer.ggml.pre` → pipeline; the names follow llama.cpp's llama-vocab.cpp groups. */
function bytePre(pre: string): BytePre | null {
  switch (pre) {
    case "default":
    case "gpt2":
    case "gpt-2":
      return { normalizer: null, preTokenizer: BYTE_LEVEL_REGEX, ignoreMerges: false };
    case "llama3":
    case "llama-v3":
    case "llama-bpe":
    case "falcon3":
    case "pixtral":
      return { normalizer: null, preTokenizer: splitThenBytes(LLAMA3_SPLIT), ignoreMerges: true };
    case "qwen2":
    case "deepseek-r1-qwen":
      // NFC: Qwen2's tokenizer.json has it; the GGUF does not say so (see the module comment).
      return {
        normalizer: { type: "NFC" },
        preTokenizer: splitThenBytes(QWEN2_SPLIT),
        ignoreMerges: false,
      };
    case "smollm":
    case "starcoder":
    case "refact":
      return {
        normalizer: null,
        preTokenizer: {
          type: "Sequence",
          // Digits(individual_digits) isolates each char::is_numeric (\p{N}) character; the npm
          // Digits only ASCII digits, so the same split is written as a regex.
          pretokenizers: [
            {
              type: "Split",
              pattern: { Regex: String.raw`\p{N}` },
              behavior: "Isolated",
              invert: false,
            },
            BYTE_LEVEL_REGEX,
          ],
        },
        ignoreMerges: false,
      };
    default:
      return null;
  }
}

/** Reads the tokenizer metadata of a GGUF header, each key checked and named on error. */
const saidNoPre = new Set<string>();

class Meta {
  constructor(readonly h: GgufHeader) {}

  has(key: string): boolean {
    return this.h.metadata.has(key);
  }

  string(key: string): string {
    return ggufValue(this.h, key, "string");
  }

  optionalString(key: string): string | null {
    return this.has(key) ? this.string(key) : null;
  }

  optionalBool(key: string): boolean | null {
    return this.has(key) ? ggufValue(this.h, key, "boolean") : null;
  }

  /** An array whose elements all satisfy `ok`, else a GgufError naming the key and element. */
  array<T extends GgufValue>(key: string, what: string, ok: (v: GgufValue) => boolean): T[] {
    const values = ggufValue(this.h, key, "array");
    for (const [i, v] of values.entries()) {
      if (!ok(v)) this.fail(key, `element ${i} is ${JSON.stringify(String(v))}, expected ${what}`);
    }
    return values as T[];
  }

  /** A token id key: an integer in [0, n); null when absent. */
  optionalId(key: string, n: number): number | null {
    if (!this.has(key)) return null;
    const v = this.h.metadata.get(key);
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v >= n) {
      this.fail(key, `expected a token id in [0, ${n}), got ${String(v)}`);
    }
    return v;
  }

  fail(key: string, what: string): never {
    throw new GgufError(this.h.file, `key ${key}`, what);
  }
}

/**
 * The tokenizer.json and tokenizer_config.json equivalent of a GGUF file's tokenizer metadata.
 *
 * @param h a header from `readGgufHeader`
 * @returns the tokenizer files and chat templates
 * @throws {GgufError} a needed key is missing, has the wrong type, or arrays disagree in length
 * @throws {TokenizerError} the tokenizer model or pre-tokenizer named is not supported
 */
export function ggufTokenizerFiles(h: GgufHeader): GgufTokenizerFiles {
  const m: Meta = new Meta(h);
  const model = m.string("tokenizer.ggml.model");
  const tokens = m.array<string>(
    "tokenizer.ggml.tokens",
    "a string",
    (v) => typeof v === "string",
  );
  const n = tokens.length;
  if (n === 0) m.fail("tokenizer.ggml.tokens", "is empty");
  const types = m.has("tokenizer.ggml.token_type")
    ? m.array<number>("tokenizer.ggml.token_type", "an integer token type", Number.isInteger)
    : null;
  if (types !== null && types.length !== n) {
    m.fail("tokenizer.ggml.token_type", `has ${types.length} entries, tokenizer.ggml.tokens ${n}`);
  }
  for (
    const key of ["tokenizer.ggml.normalizer_lowercase", "tokenizer.ggml.normalizer_strip_accents"]
  ) {
    if (m.optionalBool(key) === true) {
      throw new TokenizerError(h.file, key, "normalizers are not supported for GGUF tokenizers");
    }
  }

  const ids = {
    bos: m.optionalId("tokenizer.ggml.bos_token_id", n),
    eos: m.optionalId("tokenizer.ggml.eos_token_id", n),
    unk: m.optionalId("tokenizer.ggml.unknown_token_id", n),
    pad: m.optionalId("tokenizer.ggml.padding_token_id", n),
  };
  const addBos = m.optionalBool("tokenizer.ggml.add_bos_token") ?? model === "llama";
  const addEos = m.optionalBool("tokenizer.ggml.add_eos_token") ?? false;

  let json: Json;
  if (model === "llama") {
    const arch = h.metadata.get("general.architecture");
    if (typeof arch === "string" && /^(gemma[0-9]*|phi3)$/.test(arch)) {
      throw new TokenizerError(
        h.file,
        "general.architecture",
        `SentencePiece tokenizers of ${arch} need architecture-specific handling (not supported)`,
      );
    }
    const merges = m.has("tokenizer.ggml.merges")
      ? parseMerges(m)
      : generateMerges(tokens, scoresOf(m, n));
    const prefix = m.optionalBool("tokenizer.ggml.add_space_prefix") ?? true;
    json = {
      version: "1.0",
      truncation: null,
      padding: null,
      added_tokens: [],
      normalizer: null,
      pre_tokenizer: {
        type: "Metaspace",
        replacement: "▁",
        prepend_scheme: prefix ? "first" : "never",
        split: false,
      },
      post_processor: null,
      decoder: {
        type: "Sequence",
        decoders: [
          { type: "Replace", pattern: { String: "▁" }, content: " " },
          { type: "ByteFallback" },
          { type: "Fuse" },
          ...(prefix ? [{ type: "Strip", content: " ", start: 1, stop: 0 }] : []),
        ],
      },
      model: {
        type: "BPE",
        dropout: null,
        unk_token: ids.unk === null ? null : tokens[ids.unk],
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: true,
        byte_fallback: true,
        ignore_merges: false,
        vocab: vocabObject(tokens),
        merges,
      },
    };
  } else if (model === "gpt2") {
    // GGUF files written before llama.cpp recorded the pre-tokenizer (spring 2024) lack the key;
    // llama.cpp then uses GPT-2's split, and so do we, saying so once.
    let preName = m.optionalString("tokenizer.ggml.pre");
    if (preName === null) {
      preName = "default";
      if (!saidNoPre.has(h.file)) {
        saidNoPre.add(h.file);
        console.error(
          `rabbitllm: ${h.file}: no tokenizer.ggml.pre; using GPT-2's pre-tokenizer as llama.cpp does (text may split differently from the original tokenizer)`,
        );
      }
    }
    const pre = bytePre(preName);
    if (pre === null) {
      throw new TokenizerError(
        h.file,
        "tokenizer.ggml.pre",
        `pre-tokenizer "${preName}" is not supported (supported: default, gpt2, llama-bpe, ` +
          `llama3, qwen2, smollm, starcoder, refact and their aliases)`,
      );
    }
    json = {
      version: "1.0",
      truncation: null,
      padding: null,
      added_tokens: [],
      normalizer: pre.normalizer,
      pre_tokenizer: pre.preTokenizer,
      post_processor: null,
      decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: {
        type: "BPE",
        dropout: null,
        unk_token: null,
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: false,
        byte_fallback: false,
        ignore_merges: pre.ignoreMerges,
        vocab: vocabObject(tokens.map(byteLevelSpelling)),
        merges: parseMerges(m),
      },
    };
  } else {
    throw new TokenizerError(
      h.file,
      "tokenizer.ggml.model",
      `tokenizer model "${model}" is not supported (supported: llama, gpt2)`,
    );
  }

  // Control tokens → special added tokens; user-defined → plain added tokens (matched whole).
  const added: Json[] = [];
  for (const [id, type] of (types ?? []).entries()) {
    if (type !== TOKEN_TYPE.control && type !== TOKEN_TYPE.userDefined) continue;
    added.push({
      id,
      content: tokens[id],
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: type === TOKEN_TYPE.control,
    });
  }
  // A byte-level added token whose text is not in the byte alphabet has its respelled form in the
  // vocabulary and its text here, both under its id.
  json.added_tokens = added;

  const single: Json[] = [];
  const pair: Json[] = [];
  const specials: Record<string, Json> = {};
  const special = (key: "bos" | "eos", typeId: number) => {
    const id = ids[key];
    if (id === null) {
      m.fail(
        `tokenizer.ggml.${key}_token_id`,
        `missing, but tokenizer.ggml.add_${key}_token is true`,
      );
    }
    specials[tokens[id]] = { id: tokens[id], ids: [id], tokens: [tokens[id]] };
    return { SpecialToken: { id: tokens[id], type_id: typeId } };
  };
  if (addBos) single.push(special("bos", 0)), pair.push(special("bos", 0));
  single.push({ Sequence: { id: "A", type_id: 0 } });
  pair.push({ Sequence: { id: "A", type_id: 0 } });
  if (addEos) single.push(special("eos", 0)), pair.push(special("eos", 0));
  if (addBos) pair.push(special("bos", 1));
  pair.push({ Sequence: { id: "B", type_id: 1 } });
  if (addEos) pair.push(special("eos", 1));
  const template = { type: "TemplateProcessing", single, pair, special_tokens: specials };
  json.post_processor = model === "gpt2"
    ? { type: "Sequence", processors: [{ type: "ByteLevel", trim_offsets: false }, template] }
    : template;

  const config: Json = {
    add_bos_token: addBos,
    add_eos_token: addEos,
    clean_up_tokenization_spaces: false,
  };
  for (const [name, id] of Object.entries(ids)) {
    if (id !== null) config[`${name}_token`] = tokens[id];
  }

  const chatTemplate = m.optionalString("tokenizer.chat_template");
  const namedChatTemplates: Record<string, string> = {};
  if (m.has("tokenizer.chat_templates")) {
    const names = m.array<string>(
      "tokenizer.chat_templates",
      "a template name",
      (v) => typeof v === "string",
    );
    for (const name of names) {
      namedChatTemplates[name] = m.string(`tokenizer.chat_template.${name}`);
    }
  }
  return { tokenizerJson: json, tokenizerConfig: config, chatTemplate, namedChatTemplates };
}

function scoresOf(m: Meta, n: number): number[] {
  const scores = m.array<number>(
    "tokenizer.ggml.scores",
    "a number",
    (v) => typeof v === "number",
  );
  if (scores.length !== n) {
    m.fail("tokenizer.ggml.scores", `has ${scores.length} entries, tokenizer.ggml.tokens ${n}`);
  }
  return scores;
}

/** `"a b"` strings → `[a, b]` pairs. */
function parseMerges(m: Meta): [string, string][] {
  const key = "tokenizer.ggml.merges";
  const merges = m.array<string>(key, "a merge string", (v) => typeof v === "string");
  return merges.map((s, i) => {
    const parts = s.split(" ");
    if (parts.length !== 2 || parts[0] === "" || parts[1] === "") {
      m.fail(key, `element ${i} is ${JSON.stringify(s)}, expected "<left> <right>"`);
    }
    return [parts[0], parts[1]];
  });
}

/** token → id; a token listed twice keeps its last id, as a Python dict comprehension does. */
function vocabObject(tokens: readonly string[]): Record<string, number> {
  const vocab = new Map<string, number>();
  for (const [id, token] of tokens.entries()) vocab.set(token, id);
  return Object.fromEntries(vocab);
}

/**
 * A trie over the UTF-16 units of a list of strings, for finding which substrings of a token are
 * themselves tokens without building the substrings (a real vocabulary has ~10^6 splits to test).
 * Also used by lib/tiktoken.ts (byte strings: one unit per byte). The edges live in one
 * open-addressing hash table (parent node, unit) → child node over typed arrays: a JS Map of ~10^6
 * number keys is several times slower to fill and to probe.
 */
export class TokenTrie {
  #parent = new Int32Array(1 << 10).fill(-1);
  #unit = new Int32Array(1 << 10);
  #childOf = new Int32Array(1 << 10);
  #edges = 0;
  /** node → the id of the token ending there, -1 for none. */
  readonly #id: number[] = [-1];

  #slot(parent: number, unit: number): number {
    const mask = this.#parent.length - 1;
    let h = (Math.imul(parent, 0x9e3779b1) ^ Math.imul(unit + 1, 0x85ebca6b)) & mask;
    while (this.#parent[h] !== -1 && (this.#parent[h] !== parent || this.#unit[h] !== unit)) {
      h = (h + 1) & mask;
    }
    return h;
  }

  #child(parent: number, unit: number): number {
    const h = this.#slot(parent, unit);
    return this.#parent[h] === -1 ? -1 : this.#childOf[h];
  }

  #grow(): void {
    const [parent, unit, childOf] = [this.#parent, this.#unit, this.#childOf];
    this.#parent = new Int32Array(parent.length * 2).fill(-1);
    this.#unit = new Int32Array(parent.length * 2);
    this.#childOf = new Int32Array(parent.length * 2);
    for (let i = 0; i < parent.length; i++) {
      if (parent[i] === -1) continue;
      const h = this.#slot(parent[i], unit[i]);
      this.#parent[h] = parent[i];
      this.#unit[h] = unit[i];
      this.#childOf[h] = childOf[i];
    }
  }

  /** Adds a token; a token added twice keeps the last id (as a Python dict does). */
  add(token: string, id: number): void {
    let node = 0;
    for (let i = 0; i < token.length; i++) {
      const unit = token.charCodeAt(i);
      let h = this.#slot(node, unit);
      if (this.#parent[h] === -1) {
        if (2 * (this.#edges + 1) > this.#parent.length) {
          this.#grow();
          h = this.#slot(node, unit);
        }
        this.#parent[h] = node;
        this.#unit[h] = unit;
        this.#childOf[h] = this.#id.length;
        this.#id.push(-1);
        this.#edges++;
      }
      node = this.#childOf[h];
    }
    this.#id[node] = id;
  }

  /** The id of `token.slice(from, to)`, -1 when it is not a token. */
  find(token: string, from: number, to: number): number {
    let node = 0;
    for (let i = from; i < to; i++) {
      node = this.#child(node, token.charCodeAt(i));
      if (node < 0) return -1;
    }
    return this.#id[node];
  }

  /**
   * Every split of `token` into two tokens: [split position (UTF-16 index), left id, right id],
   * left to right. With `codePoints`, positions inside a surrogate pair are skipped.
   */
  splits(token: string, codePoints: boolean): [number, number, number][] {
    const out: [number, number, number][] = [];
    let node = 0;
    for (let i = 1; i < token.length; i++) {
      node = this.#child(node, token.charCodeAt(i - 1));
      if (node < 0) break; // no longer prefix is a token either
      const left = this.#id[node];
      if (left < 0) continue;
      if (
        codePoints && isLowSurrogate(token.charCodeAt(i)) &&
        isHighSurrogate(token.charCodeAt(i - 1))
      ) continue;
      const right = this.find(token, i, token.length);
      if (right >= 0) out.push([i, left, right]);
    }
    return out;
  }
}

function isHighSurrogate(u: number): boolean {
  return u >= 0xd800 && u <= 0xdbff;
}

function isLowSurrogate(u: number): boolean {
  return u >= 0xdc00 && u <= 0xdfff;
}

/** Number of code points of `s.slice(0, end)`. */
function codePointsBefore(s: string, end: number): number {
  let n = 0;
  for (let i = 0; i < end; i++) {
    if (!(isLowSurrogate(s.charCodeAt(i)) && i > 0 && isHighSurrogate(s.charCodeAt(i - 1)))) n++;
  }
  return n;
}

/**
 * transformers' `generate_merges(vocab, vocab_scores)`: every split of every token into two
 * tokens of the vocabulary, ordered by the token's score (high first), then by the lengths of the
 * left and right pieces in code points (long first); ties keep vocabulary order (Python's sort is
 * stable, also with reverse=True).
 */
export function generateMerges(tokens: readonly string[], scores: readonly number[]): [
  string,
  string,
][] {
  const trie = new TokenTrie();
  for (const [id, token] of tokens.entries()) trie.add(token, id); // dict: last id wins
  const byToken = new Map<string, number>(); // dict(zip(tokens, scores)): first position, last score
  for (const [i, token] of tokens.entries()) byToken.set(token, scores[i]);
  const merges: { l: string; r: string; score: number; ll: number; rl: number }[] = [];
  for (const [token, score] of byToken) {
    const splits = trie.splits(token, true);
    if (splits.length === 0) continue;
    // Python's sort of the local list by (vocab[left], vocab[right]); stable.
    splits.sort((a, b) => a[1] - b[1] || a[2] - b[2]);
    const total = codePointsBefore(token, token.length);
    for (const [i] of splits) {
      const ll = codePointsBefore(token, i);
      merges.push({ l: token.slice(0, i), r: token.slice(i), score, ll, rl: total - ll });
    }
  }
  merges.sort((a, b) => b.score - a.score || b.ll - a.ll || b.rl - a.rl);
  return merges.map((x) => [x.l, x.r]);
}

/** GPT-2's byte → printable character table (`bytes_to_unicode`; also used by lib/tiktoken.ts). */
export const BYTE_CHARS: string[] = (() => {
  const keep = (b: number) =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const out: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) out.push(String.fromCodePoint(keep(b) ? b : 256 + extra++));
  return out;
})();
const BYTE_ALPHABET = new Set(BYTE_CHARS);
const UTF8 = new TextEncoder();

/** A token as the byte-level vocabulary spells it: as is when it is in the byte alphabet. */
function byteLevelSpelling(token: string): string {
  if ([...token].every((c) => BYTE_ALPHABET.has(c))) return token;
  return [...UTF8.encode(token)].map((b) => BYTE_CHARS[b]).join("");
}
