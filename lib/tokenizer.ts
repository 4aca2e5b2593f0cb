/**
 * Tokenizers and chat templates, matching transformers 5 on the same files.
 *
 * {@link Tokenizer.fromDir} reads `tokenizer.json` (run by npm:@huggingface/tokenizers),
 * `tokenizer_config.json` (special tokens, chat templates) and the chat template files transformers
 * 5 writes (`chat_template.jinja`, `additional_chat_templates/*.jinja`). Templates render with
 * npm:@huggingface/jinja and the variables transformers passes. {@link IncrementalDecoder} turns
 * generated ids into text deltas that never split a character.
 *
 * Where transformers 5 does not run tokenizer.json as written, this module follows transformers:
 * - `tokenizer_class: LlamaTokenizer(Fast)` with a non-ByteLevel tokenizer.json: transformers builds
 *   the normalizer, pre-tokenizer and decoder from the class (Metaspace, prepend scheme from
 *   `add_prefix_space` and `legacy`) and keeps only the model (vocabulary, merges) and the
 *   post-processor of tokenizer.json.
 * - `add_bos_token` / `add_eos_token` in tokenizer_config.json are ignored when tokenizer.json
 *   exists: its post-processor alone decides what encode adds.
 * - `clean_up_tokenization_spaces` applies only to non-BPE models (transformers skips it for BPE).
 * - Special tokens named in tokenizer_config.json that tokenizer.json lacks are added as special.
 * - decode drops ids the vocabulary does not have (the Rust tokenizer does the same), and a
 *   byte-fallback run that is not valid UTF-8 decodes to one U+FFFD per byte (as in Rust).
 *
 * Checkpoints whose tokenizer class is remote code and that ship no tokenizer.json (the class from
 * `tokenizer_class`, else `auto_map.AutoTokenizer`) are converted once per load, and the
 * conversion is logged once per directory, following each class's original code:
 * - InternLMTokenizer, InternLM2Tokenizer, InternLM3Tokenizer, BaichuanTokenizer (BaiChuanTokenizer):
 *   sentencepiece `tokenizer.model` (lib/spm_model.ts); `sp_model.encode` per segment between the
 *   tokens tokenizer_config.json names; BOS per `add_bos_token` (default true), EOS per
 *   `add_eos_token`; decode = sentencepiece's decode of each run between special tokens, special
 *   tokens as their text (a control piece the config does not name decodes to nothing, as in
 *   sentencepiece), invalid UTF-8 in byte pieces one U+FFFD per byte; InternLM 1/2 then apply
 *   transformers' `clean_up_tokenization` (" ." → "." ...), as their `convert_tokens_to_string`
 *   always does. Not reproduced: those classes' transformers-4 `convert_tokens_to_string` also
 *   puts a " " before a special token that follows text (Baichuan, InternLM 1/2; InternLM 1/2
 *   even before one at the start), which only shows when special tokens are decoded.
 * - ChatGLMTokenizer with a sentencepiece model (ChatGLM2/3): the same, no BOS, `[gMASK] sop` in
 *   front; its own tokens [MASK] [gMASK] [sMASK] sop eop (and ChatGLM3's <|system|> <|user|>
 *   <|assistant|> <|observation|>, when tokenizer_config.json mentions <|user|>) take the ids after
 *   the sentencepiece vocabulary, are matched in text only when tokenizer_config.json names them,
 *   and decode to their text; control pieces decode to nothing (SPTokenizer.decode).
 * - ChatGLMTokenizer / ChatGLM4Tokenizer with a tiktoken `tokenizer.model` (GLM-4) and
 *   QWenTokenizer (`qwen.tiktoken`): byte-level BPE (lib/tiktoken.ts); GLM-4 puts `[gMASK] <sop>`
 *   (ids from `added_tokens_decoder`) in front; QWen adds nothing, NFC-normalizes, and has its
 *   special tokens from id 151643.
 *
 * @example
 * ```ts
 * import { Tokenizer } from "./tokenizer.ts";
 *
 * const tok = await Tokenizer.fromDir("models/stories260k");
 * const ids = tok.encode("Once upon a time");
 * console.assert(ids[0] === tok.bosTokenId); // the post-processor adds BOS, as in transformers
 * console.assert(tok.decode(ids, { skipSpecialTokens: true }) === "Once upon a time");
 * ```
 *
 * @module
 */
import { Environment, Interpreter, Template } from "@huggingface/jinja";
import {
  ByteFallbackDecoder,
  SequenceDecoder,
  Tokenizer as HfTokenizer,
} from "@huggingface/tokenizers";
import { jsonTooDeep, MAX_JSON_DEPTH, TokenizerError } from "./errors.ts";
import type { GgufHeader } from "./gguf.ts";
import { ggufTokenizerFiles } from "./gguf_tokenizer.ts";
import { parseSpmModel, SPM_PIECE_TYPE, spmTokenizerJson } from "./spm_model.ts";
import {
  GLM4_PATTERN,
  looksLikeTiktoken,
  parseTiktokenRanks,
  QWEN_PATTERN,
  QWEN_SPECIAL_START_ID,
  QWEN_SPECIAL_TOKENS,
  tiktokenTokenizerJson,
} from "./tiktoken.ts";

/** One chat message. Keys other than role and content (tool_calls, reasoning_content...) reach the template. */
export interface ChatMessage {
  /** "system", "user", "assistant", "tool"... as the template expects. */
  role: string;
  /** Usually a string; a list of content blocks for templates that take them. */
  content?: unknown;
  /** Anything else the template reads (tool_calls, reasoning_content, name...). */
  [key: string]: unknown;
}

/** Options of {@link Tokenizer.encode}. */
export interface EncodeOptions {
  /** Add what the tokenizer's post-processor adds (BOS for Llama); default true, like transformers. */
  addSpecialTokens?: boolean;
}

/** Options of {@link Tokenizer.decode} and {@link IncrementalDecoder}. */
export interface DecodeOptions {
  /** Leave out special tokens; default false, like transformers. */
  skipSpecialTokens?: boolean;
}

/** Options of {@link Tokenizer.decodeStream}. */
export interface DecodeStreamOptions extends DecodeOptions {
  /**
   * Ids already shown (a prompt): the deltas are what the new ids add to their text, so a
   * continuation keeps the space a SentencePiece decoder strips from a sequence's first token
   * ("Lily went" + "▁to" streams " to"). Only the last few are kept.
   */
  context?: readonly number[];
}

/** Options of {@link Tokenizer.applyChatTemplate}. */
export interface ChatTemplateOptions {
  /** End with the header of an assistant turn (`add_generation_prompt`); default false. */
  addGenerationPrompt?: boolean;
  /** A named template of the model (e.g. "tool_use"); default: "default", or "tool_use" with tools. */
  templateName?: string;
  /** A Jinja template to use instead of the model's (required when the model has none). */
  chatTemplate?: string;
  /** Tool JSON schemas (`tools`). */
  tools?: unknown[];
  /** Documents for retrieval-augmented templates (`documents`). */
  documents?: unknown[];
  /** More template variables (e.g. `enable_thinking`); they override the special tokens. */
  extra?: Record<string, unknown>;
}

type Json = Record<string, unknown>;

/** One entry of tokenizer.json's `added_tokens`. */
interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/** transformers' `SPECIAL_TOKENS_ATTRIBUTES`: the named special tokens templates see. */
const NAMED_SPECIAL_TOKENS = [
  "bos_token",
  "eos_token",
  "unk_token",
  "sep_token",
  "pad_token",
  "cls_token",
  "mask_token",
] as const;

/** Where a chat template came from, for error messages. */
interface ChatTemplateSource {
  template: string;
  file: string;
}

/** A Hugging Face tokenizer: encode, decode, chat templates. Build one with {@link Tokenizer.fromDir}. */
export class Tokenizer {
  /** Id of `bos_token`, null when the tokenizer files name none. */
  readonly bosTokenId: number | null;
  /** Id of `eos_token`, null when the tokenizer files name none. */
  readonly eosTokenId: number | null;
  /** Id of `pad_token`, null when the tokenizer files name none. */
  readonly padTokenId: number | null;
  /** Id of `unk_token`, null when the tokenizer files name none. */
  readonly unkTokenId: number | null;
  /** Number of distinct tokens, added tokens included (transformers' `len(tokenizer)`). */
  readonly vocabSize: number;
  /** Ids of the special tokens: what `skipSpecialTokens` leaves out. */
  readonly specialIds: Set<number>;
  /**
   * Ids of the `<0xNN>` byte pieces when the decoder does byte fallback (SentencePiece-style
   * tokenizers), else empty. A run of them decodes as one byte string: as a whole, to text when it
   * is valid UTF-8, else to one U+FFFD per byte.
   */
  readonly byteFallbackIds: ReadonlySet<number>;
  /** The model's chat templates by name; a single template is named "default". */
  readonly chatTemplates: ReadonlyMap<string, string>;

  readonly #dir: string;
  readonly #hf: HfTokenizer;
  readonly #cleanUp: boolean;
  /** Named special tokens as strings (`bos_token` → "<s>"), passed to chat templates. */
  readonly #specialTokens: Record<string, string>;
  readonly #templateFiles: ReadonlyMap<string, string>;
  readonly #compiled = new Map<string, Template>();
  /** What a remote-code tokenizer class does beyond tokenizer.json (see {@link RemoteParts}). */
  readonly #remote: RemoteParts | null;

  private constructor(
    dir: string,
    tokenizerJson: Json,
    config: Json,
    templates: Map<string, ChatTemplateSource>,
    remote: RemoteParts | null = null,
  ) {
    this.#dir = dir;
    this.#remote = remote;
    const configFile = `${dir}/tokenizer_config.json`;
    const specialTokens: Record<string, string> = {};
    for (const key of NAMED_SPECIAL_TOKENS) {
      const token = tokenContent(config[key], configFile, key);
      if (token !== null) specialTokens[key] = token;
    }
    this.#specialTokens = specialTokens;

    const jsonFile = remote?.file ?? `${dir}/tokenizer.json`;
    const json = tokenizerJson; // freshly parsed by fromDir: adjusted in place
    applyClassPipeline(json, config);
    const vocab = modelVocab(json, jsonFile);
    const added = mergeAddedTokens(json, vocab, config, specialTokens, configFile, jsonFile);
    this.specialIds = new Set(added.filter((t) => t.special).map((t) => t.id));
    for (const t of added) vocab.set(t.content, t.id);
    for (const id of remote?.decodeOnly.keys() ?? []) this.specialIds.add(id);
    for (const id of remote?.silent ?? []) this.specialIds.add(id);
    this.vocabSize = vocab.size + (remote?.decodeOnly.size ?? 0);
    this.byteFallbackIds = new Set(
      JSON.stringify(json.decoder ?? null).includes('"ByteFallback"')
        ? [...vocab].filter(([token]) => /^<0x[0-9A-Fa-f]{2}>$/.test(token)).map(([, id]) => id)
        : [],
    );
    const idOf = (key: string) => {
      const token = specialTokens[key];
      return token === undefined ? null : vocab.get(token) ?? null;
    };
    this.bosTokenId = idOf("bos_token");
    this.eosTokenId = idOf("eos_token");
    this.padTokenId = idOf("pad_token");
    this.unkTokenId = idOf("unk_token");

    const modelType = (json.model as Json).type;
    this.#cleanUp = config.clean_up_tokenization_spaces === true &&
      (modelType !== "BPE" ||
        config.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output === true);
    try {
      this.#hf = new HfTokenizer(json, {
        ...config,
        ...specialTokens,
        clean_up_tokenization_spaces: this.#cleanUp,
      });
    } catch (e) {
      throw new TokenizerError(jsonFile, null, `unsupported: ${errorText(e)}`, {
        cause: e,
      });
    }
    useByteFallbackText(
      this.#hf.decoder,
      remote?.segmentDecode ? () => new SpmByteFallbackText() : () => new RustByteFallbackText(),
    );

    this.chatTemplates = new Map([...templates].map(([name, t]) => [name, t.template]));
    this.#templateFiles = new Map([...templates].map(([name, t]) => [name, t.file]));
  }

  /**
   * Loads the tokenizer of a model directory: `tokenizer.json` (or, for a remote-code tokenizer
   * class, its `tokenizer.model` / `qwen.tiktoken`: see the module comment), `tokenizer_config.json`,
   * `chat_template.jinja` and `additional_chat_templates/*.jinja` (each optional).
   *
   * @param dir a model directory (a local checkpoint or a Hugging Face cache snapshot)
   * @returns the tokenizer
   * @throws {TokenizerError} a file is missing, is not valid JSON, or holds an unusable value
   */
  static async fromDir(dir: string): Promise<Tokenizer> {
    const tokenizerJson = await readJson(`${dir}/tokenizer.json`, false);
    const config = await readJson(`${dir}/tokenizer_config.json`, false) ?? {};
    const templates = await readChatTemplates(dir, config);
    if (tokenizerJson !== null) return new Tokenizer(dir, tokenizerJson, config, templates);
    const remote = await remoteTokenizer(dir, config);
    if (remote === null) {
      await readJson(`${dir}/tokenizer.json`, true); // throws: tokenizer.json is missing
    }
    const { json, config: remoteConfig, parts } = remote!;
    if (!saidConversion.has(dir)) {
      saidConversion.add(dir);
      console.error(`rabbitllm: ${dir}: no tokenizer.json; ${parts.what}`);
    }
    return new Tokenizer(dir, json, remoteConfig, templates, parts);
  }

  /**
   * Whether a model directory has a tokenizer {@link fromDir} can load: tokenizer.json, or (for the
   * remote-code families) a tokenizer_config.json naming a class handled here with its vocabulary
   * file (tokenizer.model, qwen.tiktoken). An unreadable tokenizer_config.json next to such a file
   * counts as a tokenizer, so that {@link fromDir} reports what is wrong with it.
   *
   * @param dir a model directory
   * @returns true when {@link fromDir} has files to load
   */
  static async hasFiles(dir: string): Promise<boolean> {
    if (await isFile(`${dir}/tokenizer.json`)) return true;
    const vocab = [`${dir}/tokenizer.model`, `${dir}/qwen.tiktoken`];
    const found = await Promise.all(vocab.map(isFile));
    if (!found.some((f) => f)) return false;
    let config: Json | null;
    try {
      config = await readJson(`${dir}/tokenizer_config.json`, false);
    } catch {
      return true;
    }
    const cls = config === null ? null : remoteClass(config);
    if (cls === null) return false;
    return cls === "QWenTokenizer" ? found[1] : REMOTE_SPM_CLASSES.has(cls) && found[0];
  }

  /**
   * Builds the tokenizer a GGUF file's metadata describes (see lib/gguf_tokenizer.ts):
   * `tokenizer.chat_template` is the "default" template, `tokenizer.chat_template.<name>` the
   * named ones.
   *
   * @param h a header from `readGgufHeader`
   * @returns the tokenizer
   * @throws {GgufError} a tokenizer key is missing or malformed
   * @throws {TokenizerError} the tokenizer model or pre-tokenizer is not supported
   */
  static fromGguf(h: GgufHeader): Tokenizer {
    const files = ggufTokenizerFiles(h);
    const templates = new Map<string, ChatTemplateSource>();
    if (files.chatTemplate !== null) {
      templates.set("default", { template: files.chatTemplate, file: h.file });
    }
    for (const [name, template] of Object.entries(files.namedChatTemplates)) {
      templates.set(name, { template, file: h.file });
    }
    return new Tokenizer(h.file, files.tokenizerJson, files.tokenizerConfig, templates);
  }

  /**
   * Text → token ids, as transformers' `tokenizer(text)["input_ids"]`.
   *
   * @param text the text; special-token strings in it (e.g. "<s>") become their ids
   * @param opts `addSpecialTokens` (default true): what the post-processor adds (BOS for Llama)
   * @returns the token ids
   */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    const add = opts.addSpecialTokens ?? true;
    const ids = this.#hf.encode(text, { add_special_tokens: add }).ids;
    const r = this.#remote;
    return r === null || !add ? ids : [...r.encodePrefix, ...ids, ...r.encodeSuffix];
  }

  /**
   * Token ids → text, as transformers' `tokenizer.decode(ids)`. Ids the vocabulary does not have
   * are dropped, as transformers does.
   *
   * @param ids token ids
   * @param opts `skipSpecialTokens` (default false): leave out the ids in {@link specialIds}
   * @returns the text
   * @throws {TokenizerError} an id is not a non-negative integer
   */
  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    const kept: number[] = [];
    for (const [i, id] of ids.entries()) {
      if (!Number.isInteger(id) || id < 0) {
        throw new TokenizerError(this.#dir, null, `decode: ids[${i}] = ${id} is not a token id`);
      }
      if (opts.skipSpecialTokens && this.specialIds.has(id)) continue;
      if (this.#remote?.silent.has(id)) continue;
      if (this.#hf.id_to_token(id) !== undefined || this.#remote?.decodeOnly.has(id)) kept.push(id);
    }
    const r = this.#remote;
    if (r === null || !r.segmentDecode) return this.#decodeRun(kept);
    // sentencepiece families: each run between special tokens is decoded on its own (the remote
    // classes call sp_model.decode per run), special tokens as their text.
    let text = "";
    let start = 0;
    for (let i = 0; i <= kept.length; i++) {
      if (i < kept.length && !this.specialIds.has(kept[i])) continue;
      let run = this.#decodeRun(kept.slice(start, i));
      if (
        r.stripLeadingSpace && i > start && run.startsWith(" ") &&
        this.#hf.id_to_token(kept[start])?.startsWith("▁")
      ) run = run.slice(1);
      text += run;
      if (i < kept.length) text += r.decodeOnly.get(kept[i]) ?? this.#decodeRun([kept[i]]);
      start = i + 1;
    }
    // Not prefix-stable: streamed text keeps a space a later "." removes (as TextStreamer does).
    return r.cleanUpAlways ? cleanUpTokenization(text) : text;
  }

  #decodeRun(ids: number[]): string {
    // The npm decoder rejects an empty list; transformers returns "".
    return ids.length === 0 ? "" : this.#hf.decode(ids, {
      skip_special_tokens: false,
      clean_up_tokenization_spaces: this.#cleanUp,
    });
  }

  /**
   * A decoder for generated ids, one at a time: see {@link IncrementalDecoder}.
   *
   * @param opts `skipSpecialTokens` (default false)
   * @returns a fresh decoder
   */
  decodeStream(opts: DecodeStreamOptions = {}): IncrementalDecoder {
    return new IncrementalDecoder(this, opts);
  }

  /**
   * Renders a conversation with the model's chat template, as transformers'
   * `apply_chat_template(messages, tokenize=False, ...)`. The template sees `messages`, `tools`,
   * `documents`, `add_generation_prompt`, the named special tokens (`bos_token`, `eos_token`, ...),
   * `raise_exception`, `strftime_now` and the `extra` variables. Keys whose value is null or
   * undefined are dropped from messages first; `reasoning_content` / `thinking` / `reasoning` are
   * aliased as transformers does. Encode the result with `addSpecialTokens: false`: the template
   * already holds BOS where the model wants one.
   *
   * @param messages the conversation, at least one message
   * @param opts generation prompt, template choice or override, tools, extra variables
   * @returns the prompt text
   * @throws {TokenizerError} the model has no (such) template, or the template fails or raises
   */
  applyChatTemplate(messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): string {
    const { template, file } = this.#chatTemplate(opts);
    if (messages.length === 0) {
      throw new TokenizerError(file, "chat_template", "cannot render an empty conversation");
    }
    let compiled = this.#compiled.get(template);
    if (compiled === undefined) {
      try {
        compiled = new Template(template);
      } catch (e) {
        throw new TokenizerError(file, "chat_template", `cannot parse: ${errorText(e)}`, {
          cause: e,
        });
      }
      this.#compiled.set(template, compiled);
    }
    const env = new Environment(templateGlobals());
    const variables = {
      ...this.#specialTokens,
      ...opts.extra,
      messages: messages.map(templateMessage),
      tools: opts.tools ?? null,
      documents: opts.documents ?? null,
      add_generation_prompt: opts.addGenerationPrompt ?? false,
    };
    try {
      for (const [name, value] of Object.entries(variables)) env.set(name, value);
      return (new Interpreter(env).run(compiled.parsed) as { value: string }).value;
    } catch (e) {
      const what = e instanceof TemplateRaised
        ? `the template raised: ${e.message}`
        : `cannot render: ${errorText(e)}`;
      throw new TokenizerError(file, "chat_template", what, { cause: e });
    }
  }

  /** The template to render and where it came from (transformers' `get_chat_template`). */
  #chatTemplate(opts: ChatTemplateOptions): ChatTemplateSource {
    if (opts.chatTemplate !== undefined) {
      return { template: opts.chatTemplate, file: "options.chatTemplate" };
    }
    const names = [...this.chatTemplates.keys()];
    let name = opts.templateName;
    if (name === undefined) {
      if (names.length === 0) {
        throw new TokenizerError(
          this.#dir,
          null,
          "the model has no chat template (no chat_template in tokenizer_config.json, no " +
            "chat_template.jinja); pass one: applyChatTemplate(messages, { chatTemplate: " +
            '"{% for m in messages %}...{% endfor %}" })',
        );
      }
      name = opts.tools !== undefined && this.chatTemplates.has("tool_use")
        ? "tool_use"
        : this.chatTemplates.has("default")
        ? "default"
        : undefined;
      if (name === undefined) {
        throw new TokenizerError(
          this.#dir,
          "chat_template",
          `several templates and none is "default"; choose one with templateName: ${
            names.join(", ")
          }`,
        );
      }
    }
    const template = this.chatTemplates.get(name);
    if (template === undefined) {
      throw new TokenizerError(
        this.#dir,
        "chat_template",
        `no template named "${name}"; the model has: ${names.join(", ") || "none"}`,
      );
    }
    return { template, file: this.#templateFiles.get(name)! };
  }
}

/** Context ids an {@link IncrementalDecoder} keeps: enough for any token's leading-space rule. */
const CONTEXT_IDS = 4;

/**
 * Turns generated token ids into text deltas, one id at a time, the way transformers' TextStreamer
 * and text-generation-inference do: it decodes a short window of recent ids with and without the
 * new one and emits the difference. The window keeps the context that decoding needs (SentencePiece
 * drops the leading space of the first token it decodes, so ids decoded one by one and joined
 * differ from ids decoded together). Nothing is emitted while the window's text ends in U+FFFD (a
 * multi-byte character split across byte-level tokens) or while it ends in a run of byte-fallback
 * tokens (a later byte can still make the whole run invalid UTF-8, which decodes to one U+FFFD per
 * byte). After {@link flush}, the concatenated deltas equal `tokenizer.decode(allIds, opts)`.
 *
 * @example
 * ```ts
 * import { Tokenizer } from "./tokenizer.ts";
 *
 * const tok = await Tokenizer.fromDir("models/stories260k");
 * const stream = tok.decodeStream({ skipSpecialTokens: true });
 * let text = "";
 * for (const id of tok.encode("Lily's café 🙂")) text += stream.push(id);
 * text += stream.flush();
 * console.assert(text === "Lily's café 🙂");
 * ```
 */
export class IncrementalDecoder {
  readonly #tokenizer: Tokenizer;
  readonly #skipSpecial: boolean;
  #ids: number[] = [];
  /** Start of the context window: ids before it have been emitted and are not needed again. */
  #prefix = 0;
  /** Ids before this index have been emitted. */
  #read = 0;

  /**
   * A decoder with nothing pushed yet ({@link Tokenizer.decodeStream} makes one too).
   *
   * @param tokenizer the tokenizer that decodes
   * @param opts `skipSpecialTokens` (default false), `context` (ids already shown)
   */
  constructor(tokenizer: Tokenizer, opts: DecodeStreamOptions = {}) {
    this.#tokenizer = tokenizer;
    this.#skipSpecial = opts.skipSpecialTokens ?? false;
    const ctx = (opts.context ?? []).filter((id) =>
      !(this.#skipSpecial && tokenizer.specialIds.has(id))
    );
    this.#ids = ctx.slice(-CONTEXT_IDS);
    this.#read = this.#ids.length;
  }

  /**
   * Adds one generated id.
   *
   * @param id a token id
   * @returns the text it completes ("" while a character or byte run is still open)
   */
  push(id: number): string {
    if (this.#skipSpecial && this.#tokenizer.specialIds.has(id)) return "";
    this.#ids.push(id);
    if (this.#tokenizer.byteFallbackIds.has(id)) return "";
    const { before, after } = this.#window();
    if (after.length <= before.length || after.endsWith("\uFFFD")) return "";
    this.#prefix = this.#read;
    this.#read = this.#ids.length;
    this.#compact();
    return after.slice(before.length);
  }

  /**
   * Emits what is still held back (an incomplete character at the end of the output decodes to
   * U+FFFD, as in `decode`) and starts over.
   *
   * @returns the remaining text
   */
  flush(): string {
    const { before, after } = this.#window();
    this.#ids = [];
    this.#prefix = 0;
    this.#read = 0;
    return after.slice(before.length);
  }

  /** The window's text without and with the ids not emitted yet. */
  #window(): { before: string; after: string } {
    const tok = this.#tokenizer;
    return {
      before: tok.decode(this.#ids.slice(this.#prefix, this.#read)),
      after: tok.decode(this.#ids.slice(this.#prefix)),
    };
  }

  /** Drops ids before the window, so memory stays bounded over long generations. */
  #compact(): void {
    if (this.#prefix === 0) return;
    this.#ids = this.#ids.slice(this.#prefix);
    this.#read -= this.#prefix;
    this.#prefix = 0;
  }
}

/**
 * The Rust ByteFallback decoder turns a run of byte tokens that is not valid UTF-8 into one U+FFFD
 * per byte (valid bytes in the run included) and keeps a leading U+FEFF; the npm one decodes the
 * run with a lenient TextDecoder (one U+FFFD per invalid subsequence, BOM dropped). Model output
 * can hold such runs, so the npm decoder gets the Rust behaviour.
 */
class RustByteFallbackText extends TextDecoder {
  readonly #strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

  override decode(input: Uint8Array): string {
    try {
      return this.#strict.decode(input);
    } catch {
      return "\uFFFD".repeat(input.byteLength);
    }
  }
}

/**
 * sentencepiece's own decode of a run of byte pieces (the remote-code SPM families call
 * `sp_model.decode`): each valid UTF-8 character is kept, each byte of an invalid sequence becomes
 * one U+FFFD, and a leading U+FEFF is kept.
 */
class SpmByteFallbackText extends TextDecoder {
  readonly #strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

  override decode(input: Uint8Array): string {
    let out = "";
    let i = 0;
    while (i < input.length) {
      const n = utf8Length(input, i);
      if (n === 0) {
        out += "\uFFFD";
        i++;
      } else {
        out += this.#strict.decode(input.subarray(i, i + n));
        i += n;
      }
    }
    return out;
  }
}

/** Length of the valid UTF-8 character at `i` (1-4), or 0 when the bytes there are not one. */
function utf8Length(b: Uint8Array, i: number): number {
  const c = b[i];
  if (c < 0x80) return 1;
  let n: number, lo = 0x80, hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) n = 2;
  else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c === 0xe0) lo = 0xa0;
    if (c === 0xed) hi = 0x9f; // no surrogates
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c === 0xf0) lo = 0x90;
    if (c === 0xf4) hi = 0x8f;
  } else return 0;
  if (i + n > b.length) return 0;
  for (let k = 1; k < n; k++) {
    const x = b[i + k];
    if (k === 1 ? x < lo || x > hi : x < 0x80 || x > 0xbf) return 0;
  }
  return n;
}

function useByteFallbackText(decoder: unknown, make: () => TextDecoder): void {
  if (decoder instanceof ByteFallbackDecoder) decoder.text_decoder = make();
  if (decoder instanceof SequenceDecoder) {
    for (const d of decoder.decoders) useByteFallbackText(d, make);
  }
}

/** transformers' `clean_up_tokenization` (the same replacements, in the same order). */
function cleanUpTokenization(text: string): string {
  return text.replaceAll(" .", ".").replaceAll(" ?", "?").replaceAll(" !", "!")
    .replaceAll(" ,", ",").replaceAll(" ' ", "'").replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m").replaceAll(" 's", "'s").replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

/** Thrown by a template's `raise_exception(message)`. */
class TemplateRaised extends Error {}

/**
 * The globals of transformers' template environment. npm:@huggingface/jinja's own set (which
 * `Template.render` will not let variables replace) has a `raise_exception` whose error cannot be
 * told from a rendering bug and a locale-dependent `strftime_now`, so templates run under this one.
 */
function templateGlobals(): Environment {
  const env = new Environment();
  for (const [name, value] of [["true", true], ["false", false], ["none", null]] as const) {
    env.set(name, value);
    env.set(name[0].toUpperCase() + name.slice(1), value);
  }
  env.set("range", (start: number, stop?: number, step = 1) => {
    if (stop === undefined) [start, stop] = [0, start];
    if (step === 0) throw new Error("range() arg 3 must not be zero");
    const out: number[] = [];
    for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
    return out;
  });
  env.set("raise_exception", (message: unknown) => {
    throw new TemplateRaised(String(message));
  });
  env.set("strftime_now", (format: string) => strftime(new Date(), format));
  return env;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Reads and parses a JSON object; null when the file is absent and not required. */
async function readJson(path: string, required: boolean): Promise<Json | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (!required && e instanceof Deno.errors.NotFound) return null;
    throw new TokenizerError(path, null, `cannot read: ${errorText(e)}`, { cause: e });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new TokenizerError(path, null, `not valid JSON: ${errorText(e)}`, { cause: e });
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new TokenizerError(path, null, "expected a JSON object");
  }
  if (jsonTooDeep(value)) {
    throw new TokenizerError(path, null, `nested deeper than ${MAX_JSON_DEPTH} levels`);
  }
  return value as Json;
}

/**
 * What a remote-code tokenizer class (no tokenizer.json) does beyond the tokenizer.json built for
 * it: the ids encode adds, ids it decodes to text that no text encodes to, ids it decodes to
 * nothing, and whether special tokens split decoding into separately decoded runs.
 */
interface RemoteParts {
  /** The file the tokenizer was built from (tokenizer.model, qwen.tiktoken), for errors. */
  file: string;
  /** What was converted, for the one log line. */
  what: string;
  /** Ids encode puts before the text with special tokens (BOS; ChatGLM's [gMASK] sop). */
  encodePrefix: number[];
  /** Ids encode puts after it (EOS when add_eos_token). */
  encodeSuffix: number[];
  /** Special ids decoded to this text but never matched in text (ChatGLM2/3's own tokens). */
  decodeOnly: Map<number, string>;
  /** Ids decoded to nothing (sentencepiece control pieces in ChatGLM2/3's decode). */
  silent: Set<number>;
  /** Decode each run between special tokens on its own (sentencepiece families). */
  segmentDecode: boolean;
  /**
   * Drop the leading space of a run whose first piece starts with "▁" (sentencepiece's decode with
   * add_dummy_prefix or remove_extra_whitespaces; a space from a byte piece <0x20> stays).
   */
  stripLeadingSpace: boolean;
  /**
   * Apply transformers' `clean_up_tokenization` (" ." → ".", " n't" → "n't", ...) to the decoded
   * text: InternLM 1/2's `convert_tokens_to_string` always does, whatever the config says.
   */
  cleanUpAlways: boolean;
}

const saidConversion = new Set<string>();

/** The remote classes whose vocabulary is `tokenizer.model` (sentencepiece, or GLM-4's tiktoken). */
const REMOTE_SPM_CLASSES = new Set([
  "InternLMTokenizer",
  "InternLM2Tokenizer",
  "InternLM3Tokenizer",
  "BaichuanTokenizer",
  "BaiChuanTokenizer",
  "ChatGLMTokenizer",
  "ChatGLM4Tokenizer",
]);

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/** ChatGLM2/3's SPTokenizer tokens, ids from the sentencepiece vocabulary size on. */
const CHATGLM_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"];
const CHATGLM3_ROLES = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"];

/** The remote class a tokenizer_config.json names (`tokenizer_class`, else `auto_map`), "Fast" dropped. */
function remoteClass(config: Json): string | null {
  let name: unknown = config.tokenizer_class;
  if (typeof name !== "string") {
    const auto = (config.auto_map as Json | undefined)?.AutoTokenizer;
    name = Array.isArray(auto) ? auto[0] : auto;
  }
  if (typeof name !== "string") return null;
  return name.slice(name.lastIndexOf(".") + 1).replace(/Fast$/, "");
}

async function readBytes(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    throw new TokenizerError(path, null, `cannot read: ${errorText(e)}`, { cause: e });
  }
}

/** Every token string tokenizer_config.json names (special tokens, added tokens). */
function namedTokens(config: Json, file: string): Set<string> {
  const out = new Set<string>();
  for (const key of NAMED_SPECIAL_TOKENS) {
    const t = tokenContent(config[key], file, key);
    if (t !== null) out.add(t);
  }
  const decoder = config.added_tokens_decoder;
  if (typeof decoder === "object" && decoder !== null) {
    for (const [id, v] of Object.entries(decoder)) {
      const t = tokenContent(v, file, `added_tokens_decoder.${id}`);
      if (t !== null) out.add(t);
    }
  }
  for (const key of ["additional_special_tokens", "extra_special_tokens"]) {
    const list = config[key];
    if (Array.isArray(list)) {
      for (const [i, v] of list.entries()) {
        const t = tokenContent(v, file, `${key}[${i}]`);
        if (t !== null) out.add(t);
      }
    }
  }
  return out;
}

/** The id tokenizer_config.json's `added_tokens_decoder` gives a token, or null. */
function addedTokenId(config: Json, token: string): number | null {
  const decoder = config.added_tokens_decoder;
  if (typeof decoder !== "object" || decoder === null) return null;
  for (const [id, v] of Object.entries(decoder)) {
    const content = typeof v === "string" ? v : (v as Json | null)?.content;
    if (content === token && /^\d+$/.test(id)) return Number(id);
  }
  return null;
}

/**
 * The tokenizer of a checkpoint whose tokenizer class is remote code and that ships no
 * tokenizer.json: sentencepiece `tokenizer.model` (InternLM 1/2/3, Baichuan 1/2, ChatGLM2/3) or a
 * tiktoken ranks file (QWen v1's `qwen.tiktoken`, GLM-4's `tokenizer.model`), converted by
 * lib/spm_model.ts / lib/tiktoken.ts and completed with what the class's code does (BOS, ChatGLM's
 * prefix, QWen's special tokens). Null when tokenizer_config.json names no class handled here.
 */
async function remoteTokenizer(
  dir: string,
  config: Json,
): Promise<{ json: Json; config: Json; parts: RemoteParts } | null> {
  const cls = remoteClass(config);
  if (cls === null) return null;
  const configFile = `${dir}/tokenizer_config.json`;
  const outConfig: Json = { ...config };
  delete outConfig.remove_space; // the remote classes ignore it; npm:@huggingface/tokenizers would not
  const parts = (file: string, what: string): RemoteParts => ({
    file,
    what,
    encodePrefix: [],
    encodeSuffix: [],
    decodeOnly: new Map(),
    silent: new Set(),
    segmentDecode: false,
    stripLeadingSpace: false,
    cleanUpAlways: false,
  });

  if (cls === "QWenTokenizer") {
    const file = `${dir}/qwen.tiktoken`;
    const ranks = parseTiktokenRanks(new TextDecoder().decode(await readBytes(file)), file);
    const json = tiktokenTokenizerJson(ranks, {
      pattern: QWEN_PATTERN,
      nfc: true,
      specialTokens: QWEN_SPECIAL_TOKENS.map((t, i) => [t, QWEN_SPECIAL_START_ID + i] as const),
    });
    return {
      json,
      config: outConfig,
      parts: parts(file, `converted ${file} (tiktoken ranks) as QWenTokenizer`),
    };
  }

  const isChatGlm = cls === "ChatGLMTokenizer" || cls === "ChatGLM4Tokenizer";
  if (!REMOTE_SPM_CLASSES.has(cls)) return null;
  const file = `${dir}/tokenizer.model`;
  const bytes = await readBytes(file);

  if (isChatGlm && looksLikeTiktoken(bytes)) { // GLM-4
    const ranks = parseTiktokenRanks(new TextDecoder().decode(bytes), file);
    const json = tiktokenTokenizerJson(ranks, {
      pattern: GLM4_PATTERN,
      nfc: false,
      specialTokens: [],
    });
    const p = parts(file, `converted ${file} (tiktoken ranks) as GLM-4's ${cls}`);
    for (const token of ["[gMASK]", "<sop>"]) {
      const id = addedTokenId(config, token);
      if (id === null) {
        throw new TokenizerError(
          configFile,
          "added_tokens_decoder",
          `GLM-4's prefix token ${token} is not listed (encode starts with [gMASK] <sop>)`,
        );
      }
      p.encodePrefix.push(id);
    }
    return { json, config: outConfig, parts: p };
  }
  if (cls === "ChatGLM4Tokenizer") {
    throw new TokenizerError(file, null, "ChatGLM4Tokenizer expects a tiktoken ranks file");
  }

  const m = parseSpmModel(bytes, file);
  const json = spmTokenizerJson(m);
  const kind = m.modelType === 2 ? "BPE" : "unigram";
  const p = parts(file, `converted ${file} (sentencepiece ${kind}) as ${cls}`);
  p.segmentDecode = true;
  // The Strip decoder would also drop a space decoded from a byte piece: done per run instead.
  const decoder = json.decoder as { decoders: Json[] };
  const strips = decoder.decoders.filter((d) => d.type === "Strip").length;
  decoder.decoders = decoder.decoders.filter((d) => d.type !== "Strip");
  p.stripLeadingSpace = strips > 0;
  p.cleanUpAlways = cls === "InternLMTokenizer" || cls === "InternLM2Tokenizer";
  const pieceId = new Map(m.pieces.map((piece, id) => [piece.piece, id]));
  // The remote classes match in text only the tokens tokenizer_config.json names (and
  // sentencepiece matches its user-defined pieces itself); a control piece they do not name is
  // text to sentencepiece and decodes to nothing. ChatGLM's SPTokenizer.decode drops every one.
  const named = namedTokens(config, configFile);
  json.added_tokens = (json.added_tokens as Json[]).filter((t) => {
    const control = m.pieces[t.id as number].type === SPM_PIECE_TYPE.control;
    if (control && (isChatGlm || !named.has(t.content as string))) p.silent.add(t.id as number);
    return !control || named.has(t.content as string);
  });

  if (isChatGlm) { // ChatGLM2/3: SPTokenizer
    const n = m.pieces.length;
    const chatglm3 = JSON.stringify(config).includes("<|user|>");
    const specials = chatglm3 ? [...CHATGLM_SPECIALS, ...CHATGLM3_ROLES] : CHATGLM_SPECIALS;
    const added = json.added_tokens as Json[];
    for (const [k, token] of specials.entries()) {
      if (named.has(token)) {
        added.push({
          id: n + k,
          content: token,
          single_word: false,
          lstrip: false,
          rstrip: false,
          normalized: false,
          special: true,
        });
      } else p.decodeOnly.set(n + k, token);
    }
    p.encodePrefix.push(n + 1, n + 3); // [gMASK] sop
    return { json, config: outConfig, parts: p };
  }

  // InternLM 1/2/3, Baichuan 1/2: BOS (add_bos_token, default true) and EOS (add_eos_token).
  for (
    const [key, flag, dflt, fallback, list] of [
      ["bos_token", "add_bos_token", true, m.bosId, p.encodePrefix],
      ["eos_token", "add_eos_token", false, m.eosId, p.encodeSuffix],
    ] as const
  ) {
    const add = config[flag] ?? dflt;
    if (typeof add !== "boolean") throw new TokenizerError(configFile, flag, "expected a boolean");
    if (!add) continue;
    const token = tokenContent(config[key], configFile, key);
    const id = token === null ? (fallback >= 0 ? fallback : null) : pieceId.get(token) ?? null;
    if (id === null) {
      throw new TokenizerError(
        configFile,
        key,
        `${flag} is true but ${
          token === null ? "no token is named" : `${token} is not a piece of ${file}`
        }`,
      );
    }
    list.push(id);
  }
  return { json, config: outConfig, parts: p };
}

async function readTextIfExists(path: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new TokenizerError(path, null, `cannot read: ${errorText(e)}`, { cause: e });
  }
}

/**
 * The model's chat templates, as transformers 5 loads them: `chat_template.jinja` ("default") and
 * `additional_chat_templates/<name>.jinja` take priority; otherwise tokenizer_config.json's
 * `chat_template`, a string ("default") or a list of `{name, template}`.
 */
async function readChatTemplates(
  dir: string,
  config: Json,
): Promise<Map<string, ChatTemplateSource>> {
  const templates = new Map<string, ChatTemplateSource>();
  const defaultFile = `${dir}/chat_template.jinja`;
  const defaultTemplate = await readTextIfExists(defaultFile);
  if (defaultTemplate !== null) {
    templates.set("default", { template: defaultTemplate, file: defaultFile });
  }
  const extraDir = `${dir}/additional_chat_templates`;
  const extraNames: string[] = [];
  try {
    for await (const entry of Deno.readDir(extraDir)) {
      if (entry.isFile && entry.name.endsWith(".jinja")) extraNames.push(entry.name);
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      throw new TokenizerError(extraDir, null, `cannot read: ${errorText(e)}`, { cause: e });
    }
  }
  for (const fileName of extraNames.sort()) {
    const file = `${extraDir}/${fileName}`;
    templates.set(fileName.slice(0, -".jinja".length), {
      template: await Deno.readTextFile(file),
      file,
    });
  }
  if (templates.size > 0) return templates;

  const file = `${dir}/tokenizer_config.json`;
  const value = config.chat_template;
  if (value === undefined || value === null) return templates;
  if (typeof value === "string") return templates.set("default", { template: value, file });
  if (!Array.isArray(value)) {
    throw new TokenizerError(
      file,
      "chat_template",
      "expected a string or a list of {name, template}",
    );
  }
  for (const [i, entry] of value.entries()) {
    const { name, template } = (entry ?? {}) as Json;
    if (typeof name !== "string" || typeof template !== "string") {
      throw new TokenizerError(
        file,
        `chat_template[${i}]`,
        "expected {name: string, template: string}",
      );
    }
    templates.set(name, { template, file });
  }
  // "default" first, as the documented order of names.
  const def = templates.get("default");
  if (def === undefined) return templates;
  templates.delete("default");
  return new Map([["default", def], ...templates]);
}

/** A special token as tokenizer_config.json writes it: a string, an AddedToken object or null. */
function tokenContent(value: unknown, file: string, key: string): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value === "string") return value;
  if (typeof value === "object" && typeof (value as Json).content === "string") {
    return (value as Json).content as string;
  }
  throw new TokenizerError(file, key, "expected a token string or {content: string, ...}");
}

/** The model's own vocabulary (token → id) from tokenizer.json. */
function modelVocab(json: Json, file: string): Map<string, number> {
  const model = json.model;
  const vocab = typeof model === "object" && model !== null ? (model as Json).vocab : undefined;
  if (Array.isArray(vocab)) { // Unigram: [[piece, score], ...], id = index
    return new Map(vocab.map((entry, id) => {
      if (!Array.isArray(entry) || typeof entry[0] !== "string" || typeof entry[1] !== "number") {
        throw new TokenizerError(file, `model.vocab[${id}]`, "expected [piece, score]");
      }
      return [entry[0], id];
    }));
  }
  if (typeof vocab === "object" && vocab !== null) {
    const entries = Object.entries(vocab as Record<string, unknown>);
    for (const [token, id] of entries) {
      if (typeof id !== "number" || !Number.isSafeInteger(id) || id < 0) {
        throw new TokenizerError(
          file,
          `model.vocab.${token}`,
          `expected a token id (a non-negative integer), got ${JSON.stringify(id)}`,
        );
      }
    }
    return new Map(entries as [string, number][]);
  }
  throw new TokenizerError(file, "model.vocab", "expected an object or a list");
}

/**
 * tokenizer.json's `added_tokens`, completed the way transformers 5 completes them: entries of
 * `added_tokens_decoder`, the named special tokens and `additional_special_tokens` /
 * `extra_special_tokens` of tokenizer_config.json that tokenizer.json lacks are added (special,
 * not normalized), with their vocabulary id or the next free one. Named special tokens are special.
 * Writes the result back into `json.added_tokens` and returns it.
 */
function mergeAddedTokens(
  json: Json,
  vocab: ReadonlyMap<string, number>,
  config: Json,
  specialTokens: Record<string, string>,
  configFile: string,
  jsonFile: string,
): AddedTokenJson[] {
  const list = json.added_tokens ?? [];
  if (!Array.isArray(list)) {
    throw new TokenizerError(jsonFile, "added_tokens", "expected a list of {id, content, ...}");
  }
  const added = list.map((t, i): AddedTokenJson => {
    if (
      typeof t !== "object" || t === null || typeof t.content !== "string" ||
      typeof t.id !== "number" || !Number.isSafeInteger(t.id) || t.id < 0
    ) {
      throw new TokenizerError(
        jsonFile,
        `added_tokens[${i}]`,
        "expected {id: a non-negative integer, content: string, ...}",
      );
    }
    return { ...t };
  });
  const byContent = new Map(added.map((t) => [t.content, t]));
  let nextId = 0;
  for (const id of [...vocab.values(), ...added.map((t) => t.id)]) {
    nextId = Math.max(nextId, id + 1);
  }
  const add = (content: string, id: number | undefined, props: Partial<AddedTokenJson>) => {
    const existing = byContent.get(content);
    if (existing !== undefined) {
      if (props.special) existing.special = true;
      return;
    }
    const token: AddedTokenJson = {
      id: id ?? vocab.get(content) ?? nextId++,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
      ...props,
    };
    added.push(token);
    byContent.set(content, token);
  };

  const decoder = config.added_tokens_decoder;
  if (decoder !== undefined && decoder !== null) {
    if (typeof decoder !== "object" || Array.isArray(decoder)) {
      throw new TokenizerError(configFile, "added_tokens_decoder", "expected {id: token}");
    }
    for (const [id, value] of Object.entries(decoder as Record<string, Json>)) {
      const key = `added_tokens_decoder.${id}`;
      const content = tokenContent(value, configFile, key);
      if (content === null || !/^\d+$/.test(id)) {
        throw new TokenizerError(
          configFile,
          key,
          "expected {content: string, ...} under an integer id",
        );
      }
      const flags: Partial<AddedTokenJson> = {};
      for (const flag of ["single_word", "lstrip", "rstrip", "normalized", "special"] as const) {
        if (typeof value[flag] === "boolean") flags[flag] = value[flag] as boolean;
      }
      add(content, Number(id), flags);
    }
  }
  for (const content of Object.values(specialTokens)) add(content, undefined, { special: true });
  for (const key of ["additional_special_tokens", "extra_special_tokens"]) {
    const list = config[key];
    if (list === undefined || list === null) continue;
    const values = Array.isArray(list)
      ? list
      : typeof list === "object"
      ? Object.values(list)
      : null;
    if (values === null) throw new TokenizerError(configFile, key, "expected a list of tokens");
    for (const [i, value] of values.entries()) {
      add(tokenContent(value, configFile, `${key}[${i}]`)!, undefined, { special: true });
    }
  }
  json.added_tokens = added;
  return added;
}

/**
 * transformers 5 builds some tokenizer classes' pipelines in code and takes only the model
 * (vocabulary, merges) and the post-processor from tokenizer.json. LlamaTokenizer (SentencePiece BPE) is the one
 * whose hub files often disagree with its class: Llama-2 era tokenizer.json files carry a
 * Prepend/Replace normalizer. transformers loads ByteLevel files declared LlamaTokenizer (Llama 3
 * conversions) as written, and so does this.
 */
function applyClassPipeline(json: Json, config: Json): void {
  const cls = typeof config.tokenizer_class === "string" ? config.tokenizer_class : "";
  if (cls.replace(/Fast$/, "") !== "LlamaTokenizer") return;
  const pipeline = [json.normalizer, json.pre_tokenizer, json.decoder, json.post_processor];
  if (JSON.stringify(pipeline).includes('"ByteLevel"')) return;
  const addPrefixSpace = config.add_prefix_space ?? true;
  const legacy = config.legacy ?? false;
  json.normalizer = null;
  json.pre_tokenizer = {
    type: "Metaspace",
    replacement: "▁",
    prepend_scheme: addPrefixSpace ? (legacy ? "always" : "first") : "never",
    split: false,
  };
  json.decoder = {
    type: "Sequence",
    decoders: [
      { type: "Replace", pattern: { String: "▁" }, content: " " },
      { type: "ByteFallback" },
      { type: "Fuse" },
      ...(addPrefixSpace ? [{ type: "Strip", content: " ", start: 1, stop: 0 }] : []),
    ],
  };
}

/** A message as transformers hands it to the template: no null values, reasoning aliases filled. */
function templateMessage(message: ChatMessage): Record<string, unknown> {
  const out = Object.fromEntries(
    Object.entries(message).filter(([, v]) => v !== null && v !== undefined),
  );
  const reasoning = ["reasoning_content", "thinking", "reasoning"].map((k) => out[k])
    .find((v) => v !== undefined);
  return reasoning === undefined
    ? out
    : { thinking: reasoning, ...out, reasoning_content: reasoning };
}

const DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS = [
  "January",
  "February",
  "March",
  "April",
  "May",
  "June",
  "July",
  "August",
  "September",
  "October",
  "November",
  "December",
];

/**
 * Python's `datetime.now().strftime(format)` in the C locale (what transformers' `strftime_now`
 * gives templates), for the directives chat templates use; others are left as written.
 */
function strftime(date: Date, format: string): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  const hour12 = date.getHours() % 12 === 0 ? 12 : date.getHours() % 12;
  const fields: Record<string, string> = {
    a: DAYS[date.getDay()].slice(0, 3),
    A: DAYS[date.getDay()],
    b: MONTHS[date.getMonth()].slice(0, 3),
    B: MONTHS[date.getMonth()],
    d: pad(date.getDate()),
    H: pad(date.getHours()),
    I: pad(hour12),
    m: pad(date.getMonth() + 1),
    M: pad(date.getMinutes()),
    p: date.getHours() < 12 ? "AM" : "PM",
    S: pad(date.getSeconds()),
    y: pad(date.getFullYear() % 100),
    Y: String(date.getFullYear()),
    "%": "%",
  };
  return format.replace(/%(.)/g, (whole, c: string) => fields[c] ?? whole);
}
