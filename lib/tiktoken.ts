/**
 * tiktoken ranks files → an HF byte-level BPE tokenizer.json, for the remote-code checkpoints that
 * ship one instead of tokenizer.json: QWen v1 (`qwen.tiktoken`) and GLM-4 (`tokenizer.model` in
 * tiktoken format).
 *
 * A ranks file has one `<base64 bytes> <rank>` per line (tiktoken's `load_tiktoken_bpe`; blank
 * lines skipped). The conversion is transformers' `TikTokenConverter`:
 * - vocabulary: each token's bytes spelled in GPT-2's byte alphabet (`bytes_to_unicode`) → rank;
 * - merges: for every token of two or more bytes, each split into two tokens of the file, ordered
 *   by the ranks of (left, right); all merges then ordered (stably) by the rank of the token they
 *   make;
 * - `ignore_merges: true` (tiktoken looks a whole pre-token up before merging);
 * - pre-tokenizer: the family's regex (Split, Isolated) then ByteLevel without its own regex;
 *   ByteLevel decoder (bytes → UTF-8 with U+FFFD for invalid sequences, as Python's
 *   `errors="replace"`).
 *
 * The family regexes are those of the original tokenizer code:
 * - QWen v1 (tokenization_qwen.py `PAT_STR`): {@link QWEN_PATTERN}; the text is NFC-normalized
 *   first (`unicodedata.normalize("NFC", text)` in its `tokenize`); special tokens `<|endoftext|>`,
 *   `<|im_start|>`, `<|im_end|>`, `<|extra_0|>` … `<|extra_204|>` at ids 151643 … (its fixed
 *   `SPECIAL_START_ID`).
 * - GLM-4 (tokenization_chatglm.py `ChatGLM4Tokenizer`'s `pat_str`): {@link GLM4_PATTERN} (digits in
 *   runs of up to three), no normalization; its special tokens are those of tokenizer_config.json.
 *
 * @module
 */
import { TokenizerError } from "./errors.ts";
import { BYTE_CHARS, splitThenBytes, TokenTrie } from "./gguf_tokenizer.ts";

/** QWen v1's pre-tokenizer regex (tokenization_qwen.py `PAT_STR`). */
export const QWEN_PATTERN =
  String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}` +
  String.raw`| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;

/** GLM-4's pre-tokenizer regex (tokenization_chatglm.py `ChatGLM4Tokenizer`, `pat_str`). */
export const GLM4_PATTERN = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+` +
  String.raw`|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;

/** QWen v1's special tokens in id order, from id {@link QWEN_SPECIAL_START_ID}. */
export const QWEN_SPECIAL_TOKENS: readonly string[] = [
  "<|endoftext|>",
  "<|im_start|>",
  "<|im_end|>",
  ...Array.from({ length: 205 }, (_, i) => `<|extra_${i}|>`),
];

/** tokenization_qwen.py's `SPECIAL_START_ID`. */
export const QWEN_SPECIAL_START_ID = 151643;

/** Most lines a ranks file may have (the largest real files have ~200k). */
export const MAX_TIKTOKEN_RANKS = 4_000_000;

/** A token's bytes as a string of chars 0..255 (one per byte): a Map key. */
type ByteString = string;

/** The tokens of a ranks file, in file order, with their ranks. */
export interface TiktokenRanks {
  /** The file, for error messages. */
  file: string;
  /** Token bytes (as a byte string) → rank, in file order. */
  ranks: Map<ByteString, number>;
}

const B64_LINE = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * Reads a tiktoken ranks file.
 *
 * @param text the file's text
 * @param file its path, for error messages
 * @returns the ranks
 * @throws {TokenizerError} a line that is not `<base64> <rank>`, an empty token, a token or rank
 *   listed twice, no tokens
 */
export function parseTiktokenRanks(text: string, file: string): TiktokenRanks {
  const ranks = new Map<ByteString, number>();
  const seenRanks = new Set<number>();
  const lines = text.split(/\r\n|\n|\r/);
  for (const [i, raw] of lines.entries()) {
    if (raw === "") continue;
    const where = `line ${i + 1}`;
    const parts = raw.trim().split(/\s+/);
    if (parts.length !== 2 || !B64_LINE.test(parts[0]) || !/^\d+$/.test(parts[1])) {
      throw new TokenizerError(file, where, "expected `<base64 token> <rank>`");
    }
    let token: string;
    try {
      if (parts[0].length % 4 !== 0) throw new Error("unpadded"); // Python's b64decode refuses it
      token = atob(parts[0]);
    } catch {
      throw new TokenizerError(file, where, "the token is not valid base64");
    }
    const rank = Number(parts[1]);
    if (token === "") throw new TokenizerError(file, where, "empty token");
    if (!Number.isSafeInteger(rank)) throw new TokenizerError(file, where, "rank out of range");
    if (ranks.has(token)) {
      throw new TokenizerError(file, where, `token ${parts[0]} is listed twice`);
    }
    if (seenRanks.has(rank)) throw new TokenizerError(file, where, `rank ${rank} is listed twice`);
    if (ranks.size >= MAX_TIKTOKEN_RANKS) {
      throw new TokenizerError(file, where, `more than ${MAX_TIKTOKEN_RANKS} tokens`);
    }
    ranks.set(token, rank);
    seenRanks.add(rank);
  }
  if (ranks.size === 0) throw new TokenizerError(file, null, "no tokens");
  return { file, ranks };
}

/** Whether a file's text looks like a tiktoken ranks file (its first line is `<base64> <rank>`). */
export function looksLikeTiktoken(bytes: Uint8Array): boolean {
  const head = new TextDecoder("latin1").decode(bytes.subarray(0, 256));
  const line = head.split(/\r?\n/, 1)[0];
  return /^[A-Za-z0-9+/]+={0,2} \d+$/.test(line);
}

/** Byte string → GPT-2 byte-alphabet spelling. */
function spell(token: ByteString): string {
  let s = "";
  for (let i = 0; i < token.length; i++) s += BYTE_CHARS[token.charCodeAt(i)];
  return s;
}

/**
 * transformers' `TikTokenConverter.extract_vocab_merges_from_model`: vocabulary and merges.
 *
 * @param r ranks from {@link parseTiktokenRanks}
 * @returns vocabulary (byte-level spelling → rank) and merges (pairs of spellings)
 */
export function tiktokenVocabMerges(r: TiktokenRanks): {
  vocab: Record<string, number>;
  merges: [string, string][];
} {
  const { ranks } = r;
  const vocab: Record<string, number> = {};
  const trie = new TokenTrie();
  const spelled = new Map<number, string>(); // rank → spelling
  for (const [token, rank] of ranks) {
    const s = spell(token);
    vocab[s] = rank;
    spelled.set(rank, s);
    trie.add(token, rank);
  }
  // Python sorts all merges by the rank of the token they make (stably): the tokens in rank order,
  // each token's splits ordered by the ranks of (left, right).
  const byRank = [...ranks].sort((a, b) => a[1] - b[1]);
  const merges: [string, string][] = [];
  for (const [token] of byRank) {
    if (token.length === 1) continue;
    const splits = trie.splits(token, false);
    splits.sort((a, b) => a[1] - b[1] || a[2] - b[2]);
    for (const [, left, right] of splits) merges.push([spelled.get(left)!, spelled.get(right)!]);
  }
  return { vocab, merges };
}

/** Options of {@link tiktokenTokenizerJson}. */
export interface TiktokenJsonOptions {
  /** The pre-tokenizer regex ({@link QWEN_PATTERN}, {@link GLM4_PATTERN}). */
  pattern: string;
  /** NFC-normalize the text first (QWen v1). */
  nfc: boolean;
  /** Special tokens [text, id], matched whole in the text. */
  specialTokens: readonly (readonly [string, number])[];
}

/**
 * The tokenizer.json equivalent of a tiktoken tokenizer (see the module comment).
 *
 * @param r ranks from {@link parseTiktokenRanks}
 * @param opts regex, normalization, special tokens
 * @returns a tokenizer.json object for npm:@huggingface/tokenizers
 * @throws {TokenizerError} a special token's id is also a rank
 */
export function tiktokenTokenizerJson(
  r: TiktokenRanks,
  opts: TiktokenJsonOptions,
): Record<string, unknown> {
  const { vocab, merges } = tiktokenVocabMerges(r);
  const rankIds = new Set(r.ranks.values());
  const added = opts.specialTokens.map(([content, id]) => {
    if (rankIds.has(id)) {
      throw new TokenizerError(
        r.file,
        null,
        `special token ${content} has id ${id}, which is also a token's rank`,
      );
    }
    return {
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    };
  });
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: opts.nfc ? { type: "NFC" } : null,
    pre_tokenizer: splitThenBytes(opts.pattern),
    post_processor: null, // what encode adds (GLM-4's prefix) is added by lib/tokenizer.ts
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: true,
      vocab,
      merges,
    },
  };
}
