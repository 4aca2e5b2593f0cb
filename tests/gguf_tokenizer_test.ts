/**
 * Tokenizers rebuilt from GGUF metadata (lib/gguf_tokenizer.ts) against the ORIGINAL HF
 * tokenizers' outputs, recorded by scripts/make_gguf_tokenizer_reference.py in
 * tests/fixtures/gguf_tokenizers/reference.json; and the typed errors of malformed metadata.
 */
import assert from "node:assert/strict";
import { GgufError, TokenizerError } from "../lib/errors.ts";
import { type GgufHeader, type GgufValue, readGgufHeader } from "../lib/gguf.ts";
import { generateMerges, ggufTokenizerFiles } from "../lib/gguf_tokenizer.ts";
import { Tokenizer } from "../lib/tokenizer.ts";

const DIR = new URL("./fixtures/gguf_tokenizers/", import.meta.url).pathname;

interface Case {
  text: string;
  ids: number[];
  ids_plain: number[];
  decoded: string;
  decoded_skip: string;
  decoded_plain: string;
}

interface Fixture {
  name: string;
  gguf: string;
  hf_dir: string;
  bos_token_id: number | null;
  eos_token_id: number | null;
  pad_token_id: number | null;
  unk_token_id: number | null;
  vocab_size: number;
  special_ids: number[];
  has_chat_template: boolean;
  cases: Case[];
  random_decode: { ids: number[]; decoded: string; decoded_skip: string }[];
}

const reference = JSON.parse(await Deno.readTextFile(`${DIR}reference.json`)) as {
  fixtures: Fixture[];
};

for (const fx of reference.fixtures) {
  Deno.test(`gguf tokenizer ${fx.name}: encodes and decodes like the original HF tokenizer`, async () => {
    const tok = Tokenizer.fromGguf(await readGgufHeader(`${DIR}${fx.gguf}`));
    for (const c of fx.cases) {
      const what = JSON.stringify(c.text);
      assert.deepEqual(tok.encode(c.text), c.ids, `encode ${what}`);
      assert.deepEqual(
        tok.encode(c.text, { addSpecialTokens: false }),
        c.ids_plain,
        `plain ${what}`,
      );
      assert.equal(tok.decode(c.ids), c.decoded, `decode ${what}`);
      assert.equal(tok.decode(c.ids, { skipSpecialTokens: true }), c.decoded_skip, `skip ${what}`);
      assert.equal(tok.decode(c.ids_plain), c.decoded_plain, `decode plain ${what}`);
    }
    for (const r of fx.random_decode) {
      assert.equal(tok.decode(r.ids), r.decoded, `decode ${JSON.stringify(r.ids)}`);
      assert.equal(tok.decode(r.ids, { skipSpecialTokens: true }), r.decoded_skip);
    }
  });

  Deno.test(`gguf tokenizer ${fx.name}: special ids, vocabulary and chat template`, async () => {
    const tok = Tokenizer.fromGguf(await readGgufHeader(`${DIR}${fx.gguf}`));
    assert.equal(tok.bosTokenId, fx.bos_token_id);
    assert.equal(tok.eosTokenId, fx.eos_token_id);
    assert.equal(tok.padTokenId, fx.pad_token_id);
    assert.equal(tok.unkTokenId, fx.unk_token_id);
    assert.equal(tok.vocabSize, fx.vocab_size);
    assert.deepEqual([...tok.specialIds].sort((a, b) => a - b), fx.special_ids);
    assert.equal(tok.chatTemplates.has("default"), fx.has_chat_template);
  });
}

Deno.test("gguf tokenizer: chat templates render like the HF directory's", async () => {
  for (const name of ["chatml", "llama3", "smollm"]) {
    const fx = reference.fixtures.find((f) => f.name === name)!;
    const fromGguf = Tokenizer.fromGguf(await readGgufHeader(`${DIR}${fx.gguf}`));
    const fromDir = await Tokenizer.fromDir(new URL(`../${fx.hf_dir}`, import.meta.url).pathname);
    const messages = [{ role: "user", content: "Hello 日本語 🙂" }];
    assert.equal(
      fromGguf.applyChatTemplate(messages, { addGenerationPrompt: true }),
      fromDir.applyChatTemplate(messages, { addGenerationPrompt: true }),
      name,
    );
  }
  // Named templates (tokenizer.chat_template.<name>) keep their names.
  const chatml = Tokenizer.fromGguf(await readGgufHeader(`${DIR}chatml.gguf`));
  assert.deepEqual([...chatml.chatTemplates.keys()].sort(), ["default", "plain"]);
});

Deno.test("gguf tokenizer: stories260k's derived merges are the HF tokenizer's merges", async () => {
  const h = await readGgufHeader(`${DIR}stories260k.gguf`);
  const tokens = h.metadata.get("tokenizer.ggml.tokens") as string[];
  const scores = h.metadata.get("tokenizer.ggml.scores") as number[];
  const hf = JSON.parse(
    await Deno.readTextFile(new URL("../models/stories260k/tokenizer.json", import.meta.url)),
  ) as { model: { merges: ([string, string] | string)[] } };
  const expected = hf.model.merges.map((m) => Array.isArray(m) ? m : m.split(" "));
  const derived = generateMerges(tokens, scores);
  // The same merges; the rank of each merge only matters relative to the merges it competes with.
  assert.deepEqual(
    new Set(derived.map((m) => m.join(" "))),
    new Set(expected.map((m) => m.join(" "))),
  );
});

/** A copy of a fixture's header with some keys replaced (undefined: removed). */
async function patched(name: string, changes: Record<string, GgufValue | undefined>) {
  const h = await readGgufHeader(`${DIR}${name}.gguf`);
  const metadata = new Map(h.metadata);
  for (const [key, value] of Object.entries(changes)) {
    if (value === undefined) metadata.delete(key);
    else metadata.set(key, value);
  }
  return { ...h, metadata } satisfies GgufHeader;
}

type ErrorClass = typeof GgufError | typeof TokenizerError;

function assertNamedError(
  fn: () => unknown,
  cls: ErrorClass,
  key: string,
  what: RegExp,
) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${String(e)}`);
    assert.ok(e.message.includes(key), `${e.message} names ${key}`);
    assert.match(e.message, what);
    if (e instanceof TokenizerError) assert.equal(e.key, key);
    if (e instanceof GgufError) assert.equal(e.where, `key ${key}`);
    return true;
  });
}

Deno.test("gguf tokenizer: malformed or unsupported metadata is a typed error naming the key", async () => {
  const cases: [string, Record<string, GgufValue | undefined>, ErrorClass, string, RegExp][] = [
    [
      "stories260k",
      { "tokenizer.ggml.tokens": undefined },
      GgufError,
      "tokenizer.ggml.tokens",
      /missing/,
    ],
    [
      "stories260k",
      { "tokenizer.ggml.model": undefined },
      GgufError,
      "tokenizer.ggml.model",
      /missing/,
    ],
    [
      "stories260k",
      { "tokenizer.ggml.model": 3 },
      GgufError,
      "tokenizer.ggml.model",
      /expected a string/,
    ],
    [
      "stories260k",
      { "tokenizer.ggml.model": "bert" },
      TokenizerError,
      "tokenizer.ggml.model",
      /"bert"/,
    ],
    [
      "llama3",
      { "tokenizer.ggml.pre": "made-up" },
      TokenizerError,
      "tokenizer.ggml.pre",
      /"made-up"/,
    ],
    [
      "llama3",
      { "tokenizer.ggml.merges": undefined },
      GgufError,
      "tokenizer.ggml.merges",
      /missing/,
    ],
    [
      "llama3",
      { "tokenizer.ggml.merges": ["a b c"] },
      GgufError,
      "tokenizer.ggml.merges",
      /element 0/,
    ],
    [
      "llama3",
      { "tokenizer.ggml.bos_token_id": 99999 },
      GgufError,
      "tokenizer.ggml.bos_token_id",
      /\[0, 326\)/,
    ],
    [
      "llama3",
      { "tokenizer.ggml.bos_token_id": undefined },
      GgufError,
      "tokenizer.ggml.bos_token_id",
      /add_bos_token/,
    ],
    [
      "llama3",
      { "tokenizer.ggml.tokens": ["a", 1] },
      GgufError,
      "tokenizer.ggml.tokens",
      /element 1/,
    ],
    [
      "stories260k",
      { "tokenizer.ggml.scores": [0, 1, 2] },
      GgufError,
      "tokenizer.ggml.scores",
      /3 entries.* 512/,
    ],
    [
      "stories260k",
      { "tokenizer.ggml.scores": undefined },
      GgufError,
      "tokenizer.ggml.scores",
      /missing/,
    ],
    [
      "stories260k",
      { "tokenizer.ggml.token_type": [1] },
      GgufError,
      "tokenizer.ggml.token_type",
      /1 entries/,
    ],
    [
      "stories260k",
      { "tokenizer.ggml.add_bos_token": "yes" },
      GgufError,
      "tokenizer.ggml.add_bos_token",
      /expected a boolean/,
    ],
    [
      "stories260k",
      { "general.architecture": "gemma2" },
      TokenizerError,
      "general.architecture",
      /gemma2/,
    ],
    [
      "chatml",
      { "tokenizer.ggml.normalizer_lowercase": true },
      TokenizerError,
      "tokenizer.ggml.normalizer_lowercase",
      /normalizer/,
    ],
    [
      "chatml",
      { "tokenizer.chat_templates": ["nope"] },
      GgufError,
      "tokenizer.chat_template.nope",
      /missing/,
    ],
  ];
  for (const [name, changes, cls, key, what] of cases) {
    const h = await patched(name, changes);
    assertNamedError(() => ggufTokenizerFiles(h), cls, key, what);
    assertNamedError(() => Tokenizer.fromGguf(h), cls, key, what);
  }
});

Deno.test("gguf tokenizer: add_space_prefix false and add_eos_token true are honoured", async () => {
  const tok = Tokenizer.fromGguf(
    await patched("stories260k", {
      "tokenizer.ggml.add_space_prefix": false,
      "tokenizer.ggml.add_eos_token": true,
    }),
  );
  const ids = tok.encode("Hello");
  assert.equal(ids[0], 1);
  assert.equal(ids.at(-1), 2);
  // No "▁" prefix: "Hello" does not start with the word-initial piece of " Hello".
  const withPrefix = Tokenizer.fromGguf(await readGgufHeader(`${DIR}stories260k.gguf`));
  assert.notDeepEqual(ids.slice(1, -1), withPrefix.encode("Hello").slice(1));
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), "Hello");
});

Deno.test("gguf tokenizer: a gpt2 vocabulary without tokenizer.ggml.pre splits as GPT-2 (llama.cpp's default), said once", async () => {
  const h = await patched("llama3", { "tokenizer.ggml.pre": undefined });
  const said: string[] = [];
  const error = console.error;
  console.error = (...a: unknown[]) => said.push(a.join(" "));
  try {
    const tok = Tokenizer.fromGguf(h);
    Tokenizer.fromGguf(h);
    const text = "in 1234567 years";
    assert.deepEqual(tok.decode(tok.encode(text, { addSpecialTokens: false })), text);
    const pre = (x: GgufHeader) =>
      (ggufTokenizerFiles(x).tokenizerJson as { pre_tokenizer: unknown }).pre_tokenizer;
    assert.deepEqual(pre(h), pre(await patched("llama3", { "tokenizer.ggml.pre": "default" })));
    assert.notDeepEqual(pre(h), pre(await patched("llama3", {})));
  } finally {
    console.error = error;
  }
  assert.equal(said.filter((l) => l.includes("no tokenizer.ggml.pre")).length, 1);
});
