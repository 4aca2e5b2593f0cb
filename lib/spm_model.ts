/**
 * SentencePiece `tokenizer.model` files (a protobuf `ModelProto`) → an HF tokenizer.json, for the
 * remote-code checkpoints that ship no tokenizer.json (InternLM 1/2/3, Baichuan 1/2, ChatGLM2/3).
 *
 * {@link parseSpmModel} is a bounded protobuf reader: it reads only the fields the conversion needs
 * (`pieces`: piece, score, type; `trainer_spec`: model_type, byte_fallback, treat_whitespace_as_suffix,
 * unk/bos/eos/pad ids; `normalizer_spec`: name, precompiled_charsmap, add_dummy_prefix,
 * remove_extra_whitespaces, escape_whitespaces), skips the others by wire type, and checks every
 * length against the bytes left, so a malformed file is a {@link TokenizerError}, never a crash or
 * an unbounded allocation.
 *
 * {@link spmTokenizerJson} builds the tokenizer.json that reproduces `sp_model.encode(segment)` on
 * each text segment between special tokens, which is what these families' remote tokenizer classes
 * call (transformers' slow tokenizers with `legacy: true` behave the same):
 * - BPE models (`model_type` 2, what all of these families ship): a BPE with the pieces as
 *   vocabulary and merges derived from the scores as transformers' `LlamaConverter` /
 *   `generate_merges` does ({@link generateMerges}, shared with lib/gguf_tokenizer.ts), over the
 *   NORMAL pieces only: sentencepiece never merges into (or out of) a control, user-defined, unused
 *   or byte piece, while transformers' list would let BPE spell "<s>" from "<" and "s>";
 *   `byte_fallback` from the trainer spec; unknown characters fuse into one unk (as transformers).
 * - Unigram models (`model_type` 1): an HF `Unigram` model over (piece, score) with `unk_id` and
 *   `byte_fallback`, as transformers' `SpmConverter` makes it. npm:@huggingface/tokenizers' Viterbi
 *   is not checked against sentencepiece here (no family of this issue ships one).
 * - WORD / CHAR models and `treat_whitespace_as_suffix` are refused (TokenizerError).
 * - Normalizer: the normalizer spec as sentencepiece applies it, per segment: the precompiled
 *   charsmap when there is one (npm:@huggingface/tokenizers does not run the charsmap: its
 *   `Precompiled` is NFKC plus sentencepiece's NMT whitespace and control-character rules, which
 *   agrees with sentencepiece's `nmt_nfkc` on the fixture's fullwidth, ligature, compatibility,
 *   ideographic/no-break/zero-width space and tab texts; a custom rule set is approximated by
 *   it; the `identity` rule has an empty charsmap and needs nothing), then `remove_extra_whitespaces`
 *   (leading/trailing spaces dropped, runs collapsed), the dummy prefix "▁" (`add_dummy_prefix`),
 *   spaces → "▁" (`escape_whitespaces`). Every segment between special tokens is normalized on
 *   its own, as `sp_model.encode(segment)` does it.
 * - Decoder: "▁" → " ", byte pieces → bytes, and the leading space of the text dropped when
 *   `add_dummy_prefix` or `remove_extra_whitespaces` is set (sentencepiece's decode rule).
 * - Added tokens: CONTROL pieces are special, USER_DEFINED pieces are plain added tokens (matched
 *   whole in the text), as transformers' converter makes them.
 *
 * @module
 */
import { TokenizerError } from "./errors.ts";
import { generateMerges } from "./gguf_tokenizer.ts";

/** sentencepiece's `ModelProto.SentencePiece.Type`. */
export const SPM_PIECE_TYPE = {
  normal: 1,
  unknown: 2,
  control: 3,
  userDefined: 4,
  unused: 5,
  byte: 6,
} as const;

/** sentencepiece's `TrainerSpec.ModelType`. */
export const SPM_MODEL_TYPE = { unigram: 1, bpe: 2, word: 3, char: 4 } as const;

/** One vocabulary entry of a sentencepiece model. */
export interface SpmPiece {
  /** The piece text ("▁the", "<0x0A>", "<s>"). */
  piece: string;
  /** Its score (log probability for unigram, merge priority for BPE). */
  score: number;
  /** Its type ({@link SPM_PIECE_TYPE}; 1 when the file omits it). */
  type: number;
}

/** What {@link parseSpmModel} reads from a `tokenizer.model`. */
export interface SpmModel {
  /** The file, for error messages. */
  file: string;
  /** Vocabulary in id order. */
  pieces: SpmPiece[];
  /** `trainer_spec.model_type` ({@link SPM_MODEL_TYPE}; default unigram). */
  modelType: number;
  /** `trainer_spec.byte_fallback`. */
  byteFallback: boolean;
  /** `trainer_spec.treat_whitespace_as_suffix`. */
  treatWhitespaceAsSuffix: boolean;
  /** `trainer_spec.unk_id` (default 0). */
  unkId: number;
  /** `trainer_spec.bos_id` (default 1; -1: none). */
  bosId: number;
  /** `trainer_spec.eos_id` (default 2; -1: none). */
  eosId: number;
  /** `trainer_spec.pad_id` (default -1: none). */
  padId: number;
  /** `normalizer_spec.name` ("" when absent). */
  normalizerName: string;
  /** `normalizer_spec.precompiled_charsmap` (empty for `identity`). */
  precompiledCharsmap: Uint8Array;
  /** `normalizer_spec.add_dummy_prefix` (default true). */
  addDummyPrefix: boolean;
  /** `normalizer_spec.remove_extra_whitespaces` (default true). */
  removeExtraWhitespaces: boolean;
  /** `normalizer_spec.escape_whitespaces` (default true). */
  escapeWhitespaces: boolean;
}

/** Most pieces a model may have (the largest real vocabularies are ~256k). */
export const MAX_SPM_PIECES = 4_000_000;

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** A protobuf reader over one message's bytes; every failure names the file and field path. */
class Reader {
  pos: number;
  constructor(
    readonly bytes: Uint8Array,
    readonly file: string,
    readonly path: string,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  fail(what: string): never {
    throw new TokenizerError(this.file, this.path, `${what} (byte ${this.pos})`);
  }

  done(): boolean {
    return this.pos >= this.end;
  }

  /** A varint as [low 32 bits, high 32 bits], both unsigned. */
  varint(): [number, number] {
    let lo = 0, hi = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) this.fail("truncated varint");
      const b = this.bytes[this.pos++];
      if (i < 4) lo |= (b & 0x7f) << (7 * i);
      else if (i === 4) {
        lo |= (b & 0x0f) << 28;
        hi |= (b & 0x7f) >> 4;
      } else hi |= (b & 0x7f) << (7 * i - 32);
      if ((b & 0x80) === 0) return [lo >>> 0, hi >>> 0];
    }
    this.fail("varint longer than 10 bytes");
  }

  /** An int32 field (negative values are sign-extended 10-byte varints). */
  int32(): number {
    return this.varint()[0] | 0;
  }

  bool(): boolean {
    const [lo, hi] = this.varint();
    return lo !== 0 || hi !== 0;
  }

  /** A length-delimited field's [start, end). */
  span(): [number, number] {
    const [lo, hi] = this.varint();
    if (hi !== 0 || lo > this.end - this.pos) {
      this.fail(`length ${hi !== 0 ? "≥ 2^32" : lo} runs past the end of the message`);
    }
    const start = this.pos;
    this.pos += lo;
    return [start, this.pos];
  }

  string(): string {
    const [s, e] = this.span();
    try {
      return UTF8.decode(this.bytes.subarray(s, e));
    } catch {
      this.pos = s;
      return this.fail("string is not valid UTF-8");
    }
  }

  float(): number {
    if (this.end - this.pos < 4) this.fail("truncated float");
    const v = new DataView(this.bytes.buffer, this.bytes.byteOffset + this.pos, 4)
      .getFloat32(0, true);
    this.pos += 4;
    return v;
  }

  /** Field number and wire type of the next tag. */
  tag(): [number, number] {
    const [lo, hi] = this.varint();
    if (hi !== 0 || lo >>> 3 === 0) this.fail("invalid field tag");
    return [lo >>> 3, lo & 7];
  }

  skip(wire: number): void {
    switch (wire) {
      case 0:
        this.varint();
        return;
      case 1:
        if (this.end - this.pos < 8) this.fail("truncated fixed64");
        this.pos += 8;
        return;
      case 2:
        this.span();
        return;
      case 5:
        if (this.end - this.pos < 4) this.fail("truncated fixed32");
        this.pos += 4;
        return;
      default:
        this.fail(`unsupported wire type ${wire}`);
    }
  }

  /** Checks a known field's wire type. */
  expect(field: string, wire: number, want: number): void {
    if (wire !== want) this.fail(`${field}: wire type ${wire}, expected ${want}`);
  }

  sub(path: string): Reader {
    const [s, e] = this.span();
    return new Reader(this.bytes, this.file, path, s, e);
  }
}

/**
 * Reads a sentencepiece `tokenizer.model`.
 *
 * @param bytes the file's bytes
 * @param file the file's path, for error messages
 * @returns the pieces and the trainer/normalizer settings the conversion uses
 * @throws {TokenizerError} malformed protobuf, a string that is not UTF-8, no pieces, a duplicate
 *   piece, a piece type or special id out of range, a non-finite score
 */
export function parseSpmModel(bytes: Uint8Array, file: string): SpmModel {
  const m: SpmModel = {
    file,
    pieces: [],
    modelType: SPM_MODEL_TYPE.unigram,
    byteFallback: false,
    treatWhitespaceAsSuffix: false,
    unkId: 0,
    bosId: 1,
    eosId: 2,
    padId: -1,
    normalizerName: "",
    precompiledCharsmap: new Uint8Array(),
    addDummyPrefix: true,
    removeExtraWhitespaces: true,
    escapeWhitespaces: true,
  };
  const r = new Reader(bytes, file, "ModelProto", 0, bytes.length);
  while (!r.done()) {
    const [field, wire] = r.tag();
    if (field === 1) {
      r.expect("pieces", wire, 2);
      if (m.pieces.length >= MAX_SPM_PIECES) r.fail(`more than ${MAX_SPM_PIECES} pieces`);
      m.pieces.push(readPiece(r.sub(`pieces[${m.pieces.length}]`)));
    } else if (field === 2) {
      r.expect("trainer_spec", wire, 2);
      readTrainerSpec(r.sub("trainer_spec"), m);
    } else if (field === 3) {
      r.expect("normalizer_spec", wire, 2);
      readNormalizerSpec(r.sub("normalizer_spec"), m);
    } else r.skip(wire);
  }
  validate(m);
  return m;
}

function readPiece(r: Reader): SpmPiece {
  const p: SpmPiece = { piece: "", score: 0, type: SPM_PIECE_TYPE.normal };
  let hasPiece = false;
  while (!r.done()) {
    const [field, wire] = r.tag();
    if (field === 1) {
      r.expect("piece", wire, 2);
      p.piece = r.string();
      hasPiece = true;
    } else if (field === 2) {
      r.expect("score", wire, 5);
      p.score = r.float();
    } else if (field === 3) {
      r.expect("type", wire, 0);
      p.type = r.int32();
    } else r.skip(wire);
  }
  if (!hasPiece || p.piece === "") r.fail("empty or missing piece");
  if (!Number.isFinite(p.score)) r.fail(`score ${p.score} is not finite`);
  if (p.type < SPM_PIECE_TYPE.normal || p.type > SPM_PIECE_TYPE.byte) {
    r.fail(`type ${p.type} is not a sentencepiece piece type (1..6)`);
  }
  return p;
}

function readTrainerSpec(r: Reader, m: SpmModel): void {
  while (!r.done()) {
    const [field, wire] = r.tag();
    const int = (name: string) => (r.expect(name, wire, 0), r.int32());
    const bool = (name: string) => (r.expect(name, wire, 0), r.bool());
    switch (field) {
      case 3:
        m.modelType = int("model_type");
        break;
      case 24:
        m.treatWhitespaceAsSuffix = bool("treat_whitespace_as_suffix");
        break;
      case 35:
        m.byteFallback = bool("byte_fallback");
        break;
      case 40:
        m.unkId = int("unk_id");
        break;
      case 41:
        m.bosId = int("bos_id");
        break;
      case 42:
        m.eosId = int("eos_id");
        break;
      case 43:
        m.padId = int("pad_id");
        break;
      default:
        r.skip(wire);
    }
  }
}

function readNormalizerSpec(r: Reader, m: SpmModel): void {
  while (!r.done()) {
    const [field, wire] = r.tag();
    switch (field) {
      case 1:
        r.expect("name", wire, 2);
        m.normalizerName = r.string();
        break;
      case 2: {
        r.expect("precompiled_charsmap", wire, 2);
        const [s, e] = r.span();
        m.precompiledCharsmap = r.bytes.slice(s, e);
        break;
      }
      case 3:
        r.expect("add_dummy_prefix", wire, 0);
        m.addDummyPrefix = r.bool();
        break;
      case 4:
        r.expect("remove_extra_whitespaces", wire, 0);
        m.removeExtraWhitespaces = r.bool();
        break;
      case 5:
        r.expect("escape_whitespaces", wire, 0);
        m.escapeWhitespaces = r.bool();
        break;
      default:
        r.skip(wire);
    }
  }
}

function validate(m: SpmModel): void {
  const fail = (key: string, what: string): never => {
    throw new TokenizerError(m.file, key, what);
  };
  const n = m.pieces.length;
  if (n === 0) fail("pieces", "the model has no pieces");
  const seen = new Map<string, number>();
  for (const [id, p] of m.pieces.entries()) {
    const first = seen.get(p.piece);
    if (first !== undefined) {
      fail(`pieces[${id}]`, `piece ${JSON.stringify(p.piece)} is already pieces[${first}]`);
    }
    seen.set(p.piece, id);
    if (p.type === SPM_PIECE_TYPE.byte && !/^<0x[0-9A-F]{2}>$/.test(p.piece)) {
      fail(`pieces[${id}]`, `byte piece ${JSON.stringify(p.piece)} is not <0xNN>`);
    }
  }
  for (
    const [key, id] of [["bos_id", m.bosId], ["eos_id", m.eosId], ["pad_id", m.padId]] as const
  ) {
    if (id !== -1 && (id < 0 || id >= n)) {
      fail(`trainer_spec.${key}`, `${id} is not -1 or a piece id in [0, ${n})`);
    }
  }
  if (m.unkId < 0 || m.unkId >= n) {
    fail("trainer_spec.unk_id", `${m.unkId} is not a piece id in [0, ${n})`);
  }
  if (m.pieces[m.unkId].type !== SPM_PIECE_TYPE.unknown) {
    fail("trainer_spec.unk_id", `pieces[${m.unkId}] is not of type UNKNOWN (2)`);
  }
}

type Json = Record<string, unknown>;

/**
 * The tokenizer.json equivalent of a sentencepiece model (see the module comment).
 *
 * @param m a model from {@link parseSpmModel}
 * @returns a tokenizer.json object for npm:@huggingface/tokenizers
 * @throws {TokenizerError} WORD/CHAR models, treat_whitespace_as_suffix
 */
export function spmTokenizerJson(m: SpmModel): Json {
  if (m.treatWhitespaceAsSuffix) {
    throw new TokenizerError(m.file, "trainer_spec.treat_whitespace_as_suffix", "not supported");
  }
  const tokens = m.pieces.map((p) => p.piece);
  let model: Json;
  if (m.modelType === SPM_MODEL_TYPE.bpe) {
    const vocab: Record<string, number> = {};
    for (const [id, t] of tokens.entries()) vocab[t] = id;
    model = {
      type: "BPE",
      dropout: null,
      unk_token: tokens[m.unkId],
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: m.byteFallback,
      ignore_merges: false,
      vocab,
      // sentencepiece merges only into NORMAL pieces (control, user-defined, unused and byte pieces
      // are never made by merging); transformers' generate_merges takes every piece.
      merges: generateMerges(
        tokens.filter((_, id) => m.pieces[id].type === SPM_PIECE_TYPE.normal),
        m.pieces.filter((p) => p.type === SPM_PIECE_TYPE.normal).map((p) => p.score),
      ),
    };
  } else if (m.modelType === SPM_MODEL_TYPE.unigram) {
    model = {
      type: "Unigram",
      unk_id: m.unkId,
      vocab: m.pieces.map((p) => [p.piece, p.score]),
      byte_fallback: m.byteFallback,
    };
  } else {
    throw new TokenizerError(
      m.file,
      "trainer_spec.model_type",
      `model type ${m.modelType} is not supported (supported: 1 unigram, 2 BPE)`,
    );
  }

  const normalizers: Json[] = [];
  if (m.precompiledCharsmap.length > 0) {
    normalizers.push({ type: "Precompiled", precompiled_charsmap: base64(m.precompiledCharsmap) });
  }
  if (m.removeExtraWhitespaces) {
    normalizers.push(
      { type: "Replace", pattern: { Regex: String.raw`\A +| +\z` }, content: "" },
      { type: "Replace", pattern: { Regex: " {2,}" }, content: " " },
    );
  }
  if (m.addDummyPrefix) {
    // sentencepiece adds the prefix only to non-empty text; whitespace removal can empty a segment.
    normalizers.push(
      m.removeExtraWhitespaces
        ? { type: "Replace", pattern: { Regex: String.raw`\A(?=[\s\S])` }, content: " " }
        : { type: "Prepend", prepend: " " },
    );
  }
  if (m.escapeWhitespaces) {
    normalizers.push({ type: "Replace", pattern: { String: " " }, content: "▁" });
  }

  const decoders: Json[] = [];
  if (m.escapeWhitespaces) {
    decoders.push({ type: "Replace", pattern: { String: "▁" }, content: " " });
  }
  if (m.byteFallback) decoders.push({ type: "ByteFallback" });
  decoders.push({ type: "Fuse" });
  if (m.addDummyPrefix || m.removeExtraWhitespaces) {
    decoders.push({ type: "Strip", content: " ", start: 1, stop: 0 });
  }

  const added = m.pieces.flatMap((p, id) =>
    p.type === SPM_PIECE_TYPE.control || p.type === SPM_PIECE_TYPE.userDefined
      ? [{
        id,
        content: p.piece,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: p.type === SPM_PIECE_TYPE.control,
      }]
      : []
  );
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: normalizers.length === 0 ? null : { type: "Sequence", normalizers },
    pre_tokenizer: null,
    post_processor: null, // what encode adds (BOS, ChatGLM's prefix) is added by lib/tokenizer.ts
    decoder: { type: "Sequence", decoders },
    model,
  };
}

function base64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}
