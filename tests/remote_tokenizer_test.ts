/**
 * Tokenizers of the remote-code families built from their vocabulary files (lib/spm_model.ts,
 * lib/tiktoken.ts, Tokenizer.fromDir without tokenizer.json) against the original tokenizer code's
 * outputs, recorded by scripts/make_remote_tokenizer_reference.py in
 * tests/fixtures/remote_tokenizers/outputs.json; and the typed errors of malformed files.
 */
import assert from "node:assert/strict";
import { TokenizerError } from "../lib/errors.ts";
import { generateMerges } from "../lib/gguf_tokenizer.ts";
import { parseSpmModel, spmTokenizerJson } from "../lib/spm_model.ts";
import { parseTiktokenRanks, tiktokenVocabMerges } from "../lib/tiktoken.ts";
import { Tokenizer } from "../lib/tokenizer.ts";

const DIR = new URL("./fixtures/remote_tokenizers/", import.meta.url).pathname;

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
  special_ids: number[];
  cases: Case[];
  random_decode: { ids: number[]; decoded: string; decoded_skip: string }[];
}

const reference = JSON.parse(await Deno.readTextFile(`${DIR}outputs.json`)) as {
  fixtures: Fixture[];
};

/** Loads a fixture's tokenizer with the one-line conversion log silenced. */
async function load(dir: string): Promise<Tokenizer> {
  const error = console.error;
  console.error = () => {};
  try {
    return await Tokenizer.fromDir(dir);
  } finally {
    console.error = error;
  }
}

Deno.test("remote tokenizers: every family has a fixture", () => {
  assert.deepEqual(
    reference.fixtures.map((f) => f.name).sort(),
    ["baichuan2", "chatglm3", "glm4", "internlm", "internlm2", "qwen"],
  );
});

for (const fx of reference.fixtures) {
  Deno.test(`remote tokenizer ${fx.name}: encodes and decodes like the original code`, async () => {
    const tok = await load(`${DIR}${fx.name}`);
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
      assert.equal(
        tok.decode(r.ids, { skipSpecialTokens: true }),
        r.decoded_skip,
        `skip ${JSON.stringify(r.ids)}`,
      );
    }
    assert.deepEqual([...tok.specialIds].sort((a, b) => a - b), fx.special_ids);
  });

  Deno.test(`remote tokenizer ${fx.name}: streaming decode equals decode`, async () => {
    const tok = await load(`${DIR}${fx.name}`);
    for (const c of fx.cases) {
      // InternLM 1/2's clean_up_tokenization can drop a space already streamed ("Hello " + ".").
      if (fx.name.startsWith("internlm") && / [.?!,']| n't/.test(c.text)) continue;
      const stream = tok.decodeStream();
      let text = "";
      for (const id of c.ids) text += stream.push(id);
      text += stream.flush();
      assert.equal(text, c.decoded, JSON.stringify(c.text));
    }
  });
}

Deno.test("remote tokenizers: special ids and chat templates", async () => {
  const internlm2 = await load(`${DIR}internlm2`);
  assert.equal(internlm2.bosTokenId, 1);
  assert.equal(internlm2.eosTokenId, 2);
  const prompt = internlm2.applyChatTemplate([{ role: "user", content: "Hi" }], {
    addGenerationPrompt: true,
  });
  assert.equal(prompt, "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  const ids = internlm2.encode(prompt, { addSpecialTokens: false });
  assert.equal(ids[0], 1);
  assert.equal(internlm2.decode(ids), prompt);

  const qwen = await load(`${DIR}qwen`);
  assert.equal(qwen.bosTokenId, null); // QWenTokenizer names no special tokens
  assert.deepEqual(qwen.encode("<|endoftext|>"), [151643]);
  assert.equal(qwen.chatTemplates.size, 0);

  const glm4 = await load(`${DIR}glm4`);
  const rendered = glm4.applyChatTemplate([{ role: "user", content: "Hi" }], {
    addGenerationPrompt: true,
  });
  const glmIds = glm4.encode(rendered, { addSpecialTokens: false });
  assert.deepEqual(glmIds.slice(0, 2), glm4.encode("").slice(0, 2)); // [gMASK] <sop>
  assert.equal(glm4.eosTokenId, glm4.encode("<|endoftext|>", { addSpecialTokens: false })[0]);

  const chatglm3 = await load(`${DIR}chatglm3`);
  // [gMASK] and sop are ChatGLM's own tokens: added by encode, never matched in text.
  const [gmask, sop] = chatglm3.encode("");
  assert.equal(chatglm3.decode([gmask, sop]), "[gMASK]sop");
  assert.ok(!chatglm3.encode("[gMASK]sop", { addSpecialTokens: false }).includes(gmask));
  assert.equal(chatglm3.decode([gmask, sop], { skipSpecialTokens: true }), "");
});

Deno.test("remote tokenizers: logs the conversion once per directory", async () => {
  const lines: string[] = [];
  const error = console.error;
  const dir = await Deno.makeTempDir();
  try {
    for (const f of ["qwen.tiktoken", "tokenizer_config.json"]) {
      await Deno.copyFile(`${DIR}qwen/${f}`, `${dir}/${f}`);
    }
    console.error = (...args: unknown[]) => void lines.push(args.join(" "));
    await Tokenizer.fromDir(dir);
    await Tokenizer.fromDir(dir);
  } finally {
    console.error = error;
    await Deno.remove(dir, { recursive: true });
  }
  assert.equal(lines.length, 1);
  assert.match(
    lines[0],
    /no tokenizer\.json; converted .*qwen\.tiktoken \(tiktoken ranks\) as QWenTokenizer/,
  );
});

Deno.test("remote tokenizers: Tokenizer.hasFiles sees a remote class's vocabulary file", async () => {
  for (const fx of reference.fixtures) assert.ok(await Tokenizer.hasFiles(`${DIR}${fx.name}`));
  const dir = await Deno.makeTempDir();
  try {
    assert.equal(await Tokenizer.hasFiles(dir), false);
    await Deno.copyFile(`${DIR}internlm2/tokenizer.model`, `${dir}/tokenizer.model`);
    assert.equal(await Tokenizer.hasFiles(dir), false); // no tokenizer_config.json: which class?
    await Deno.writeTextFile(`${dir}/tokenizer_config.json`, '{"tokenizer_class": "FooTokenizer"}');
    assert.equal(await Tokenizer.hasFiles(dir), false);
    await Deno.writeTextFile(
      `${dir}/tokenizer_config.json`,
      '{"tokenizer_class": "QWenTokenizer"}',
    );
    assert.equal(await Tokenizer.hasFiles(dir), false); // QWen's file is qwen.tiktoken
    await Deno.writeTextFile(
      `${dir}/tokenizer_config.json`,
      '{"tokenizer_class": "BaichuanTokenizer"}',
    );
    assert.equal(await Tokenizer.hasFiles(dir), true);
    await Deno.writeTextFile(`${dir}/tokenizer_config.json`, "{not json");
    assert.equal(await Tokenizer.hasFiles(dir), true); // fromDir reports the broken file
    await assert.rejects(() => Tokenizer.fromDir(dir), TokenizerError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("remote tokenizers: no tokenizer.json and no known class is the missing-file error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/tokenizer_config.json`, '{"tokenizer_class": "FooTokenizer"}');
    await assert.rejects(
      () => Tokenizer.fromDir(dir),
      (e) => e instanceof TokenizerError && /tokenizer\.json: cannot read/.test(e.message),
    );
    // A known class whose vocabulary file is missing names that file.
    await Deno.writeTextFile(
      `${dir}/tokenizer_config.json`,
      '{"tokenizer_class": "QWenTokenizer"}',
    );
    await assert.rejects(
      () => Tokenizer.fromDir(dir),
      (e) => e instanceof TokenizerError && /qwen\.tiktoken: cannot read/.test(e.message),
    );
    await Deno.writeTextFile(
      `${dir}/tokenizer_config.json`,
      '{"auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", null]}}',
    );
    await assert.rejects(
      () => Tokenizer.fromDir(dir),
      (e) => e instanceof TokenizerError && /tokenizer\.model: cannot read/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- sentencepiece reader: malformed files are TokenizerErrors naming what is wrong

const SPM = await Deno.readFile(`${DIR}internlm2/tokenizer.model`);

function spmError(bytes: Uint8Array, pattern: RegExp): void {
  assert.throws(
    () => parseSpmModel(bytes, "t.model"),
    (e) => e instanceof TokenizerError && pattern.test(e.message),
    `expected ${pattern}`,
  );
}

/** A protobuf field: tag + payload. */
function field(num: number, wire: number, payload: number[]): number[] {
  const tag: number[] = [];
  for (let v = (num << 3) | wire;; v >>>= 7) {
    if (v < 0x80) {
      tag.push(v);
      break;
    }
    tag.push((v & 0x7f) | 0x80);
  }
  return [...tag, ...payload];
}
function lenField(num: number, body: number[]): number[] {
  return field(num, 2, [body.length, ...body]);
}
function piece(text: string, type?: number): number[] {
  const body = lenField(1, [...new TextEncoder().encode(text)]);
  if (type !== undefined) body.push(...field(3, 0, [type]));
  return lenField(1, body);
}

Deno.test("spm model: reads the trainer and normalizer settings", () => {
  const m = parseSpmModel(SPM, "t.model");
  assert.equal(m.modelType, 2);
  assert.equal(m.byteFallback, true);
  assert.equal(m.addDummyPrefix, true);
  assert.equal(m.removeExtraWhitespaces, false);
  assert.equal(m.normalizerName, "identity");
  assert.deepEqual([m.unkId, m.bosId, m.eosId, m.padId], [0, 1, 2, -1]);
  assert.deepEqual(m.pieces.slice(0, 3).map((p) => [p.piece, p.type]), [
    ["<unk>", 2],
    ["<s>", 3],
    ["</s>", 3],
  ]);
  // A minimal hand-written model: unk piece, one normal piece, defaults elsewhere (unigram).
  const minus1 = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]; // int32 -1
  const tiny = parseSpmModel(
    new Uint8Array([
      ...piece("<unk>", 2),
      ...piece("a"),
      ...lenField(2, [...field(41, 0, minus1), ...field(42, 0, minus1)]),
    ]),
    "t.model",
  );
  assert.equal(tiny.modelType, 1);
  assert.deepEqual([tiny.bosId, tiny.eosId], [-1, -1]);
  assert.deepEqual(tiny.pieces.map((p) => p.type), [2, 1]);
  const json = spmTokenizerJson(tiny);
  assert.equal((json.model as { type: string }).type, "Unigram");
});

Deno.test("spm model: BPE merges only make NORMAL pieces, as sentencepiece", () => {
  const bpe = [...lenField(2, field(3, 0, [2]))];
  const m = parseSpmModel(
    new Uint8Array([
      ...piece("<unk>", 2),
      ...piece("<s>", 3),
      ...piece("</s>", 3),
      ...piece("a"),
      ...piece("b"),
      ...piece("c"),
      ...piece("ab", 3), // a control piece spelled like a merge of two pieces
      ...piece("bc"),
      ...bpe,
    ]),
    "t.model",
  );
  const json = spmTokenizerJson(m);
  assert.deepEqual((json.model as { merges: string[][] }).merges, [["b", "c"]]);
});

Deno.test("spm model: malformed files are typed errors", () => {
  spmError(SPM.subarray(0, SPM.length - 3), /runs past the end|truncated/);
  spmError(new Uint8Array([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), /runs past the end/);
  spmError(new Uint8Array([0x0a]), /truncated varint/);
  spmError(new Uint8Array(Array(11).fill(0x80)), /varint longer than 10 bytes/);
  spmError(new Uint8Array([0x3b]), /unsupported wire type 3/);
  spmError(new Uint8Array([0x08, 0x01]), /pieces: wire type 0, expected 2/);
  spmError(new Uint8Array([]), /no pieces/);
  spmError(new Uint8Array(piece("a")), /bos_id: 1 is not -1 or a piece id/);
  spmError(new Uint8Array([...piece("<unk>", 2), ...piece("<unk>")]), /already pieces\[0\]/);
  spmError(new Uint8Array([...piece("<unk>", 2), ...piece("x", 9)]), /type 9 is not/);
  spmError(new Uint8Array([...piece("<unk>", 2), ...piece("xy", 6)]), /byte piece "xy"/);
  spmError(new Uint8Array(lenField(1, lenField(1, [0xff]))), /not valid UTF-8/);
  spmError(new Uint8Array(lenField(1, [])), /empty or missing piece/);
  // bos_id 5 of a 2-piece model
  spmError(
    new Uint8Array([...piece("<unk>", 2), ...piece("a"), ...lenField(2, field(41, 0, [5]))]),
    /trainer_spec\.bos_id: 5 is not -1 or a piece id/,
  );
  // WORD model type
  const word = parseSpmModel(
    new Uint8Array([
      ...piece("<unk>", 2),
      ...piece("<s>", 3),
      ...piece("</s>", 3),
      ...lenField(2, field(3, 0, [3])),
    ]),
    "t.model",
  );
  assert.throws(
    () => spmTokenizerJson(word),
    (e) => e instanceof TokenizerError && /model type 3 is not supported/.test(e.message),
  );
});

/** transformers' generate_merges written the direct way (the library's uses a trie). */
function naiveGenerateMerges(tokens: string[], scores: number[]): [string, string][] {
  const vocab = new Map<string, number>();
  for (const [id, token] of tokens.entries()) vocab.set(token, id);
  const byToken = new Map<string, number>();
  for (const [i, token] of tokens.entries()) byToken.set(token, scores[i]);
  const merges: { l: string; r: string; score: number; ll: number; rl: number }[] = [];
  for (const [token, score] of byToken) {
    const chars = [...token];
    const local: typeof merges = [];
    for (let i = 1; i < chars.length; i++) {
      const l = chars.slice(0, i).join(""), r = chars.slice(i).join("");
      if (vocab.has(l) && vocab.has(r)) local.push({ l, r, score, ll: i, rl: chars.length - i });
    }
    local.sort((a, b) => vocab.get(a.l)! - vocab.get(b.l)! || vocab.get(a.r)! - vocab.get(b.r)!);
    merges.push(...local);
  }
  merges.sort((a, b) => b.score - a.score || b.ll - a.ll || b.rl - a.rl);
  return merges.map((x) => [x.l, x.r]);
}

Deno.test("merges: the trie derivation equals the direct one (sentencepiece and tiktoken)", async () => {
  for (const name of ["internlm", "internlm2", "baichuan2", "chatglm3"]) {
    const m = parseSpmModel(await Deno.readFile(`${DIR}${name}/tokenizer.model`), "t");
    const tokens = m.pieces.map((p) => p.piece), scores = m.pieces.map((p) => p.score);
    assert.deepEqual(generateMerges(tokens, scores), naiveGenerateMerges(tokens, scores), name);
  }
  // Surrogate pairs (splits only between code points), duplicates (last id, last score), ties.
  const tokens = [
    "a",
    "🙂",
    "a🙂",
    "🙂a",
    "\ud83d",
    "\ude42",
    "a",
    "aa",
    "aaa",
    "b",
    "ab",
    "ba",
    "aba",
  ];
  const scores = [0, 0, -1, -1, 0, 0, 5, -2, -2, 0, -3, -3, -3];
  assert.deepEqual(generateMerges(tokens, scores), naiveGenerateMerges(tokens, scores));

  const r = parseTiktokenRanks(await Deno.readTextFile(`${DIR}qwen/qwen.tiktoken`), "t");
  const ranks = r.ranks;
  const direct: { l: string; r: string; rank: number }[] = [];
  for (const [token, rank] of ranks) {
    const local: typeof direct = [];
    for (let i = 1; i < token.length; i++) {
      const l = token.slice(0, i), rr = token.slice(i);
      if (ranks.has(l) && ranks.has(rr)) local.push({ l, r: rr, rank });
    }
    local.sort((a, b) => ranks.get(a.l)! - ranks.get(b.l)! || ranks.get(a.r)! - ranks.get(b.r)!);
    direct.push(...local);
  }
  direct.sort((a, b) => a.rank - b.rank);
  const { vocab, merges } = tiktokenVocabMerges(r);
  const byRank = new Map(Object.entries(vocab).map(([s, rank]) => [rank, s]));
  assert.deepEqual(
    merges,
    direct.map((m) => [byRank.get(ranks.get(m.l)!), byRank.get(ranks.get(m.r)!)]),
  );
});

Deno.test("tiktoken ranks: merges as transformers derives them; malformed files are typed errors", () => {
  const b64 = (s: string) => btoa(s);
  const file = ["a", "b", "c", "ab", "abc", "bc"].map((t, i) => `${b64(t)} ${i}`).join("\n");
  const { vocab, merges } = tiktokenVocabMerges(parseTiktokenRanks(file, "t.tiktoken"));
  assert.deepEqual(vocab, { a: 0, b: 1, c: 2, ab: 3, abc: 4, bc: 5 });
  // "abc" (rank 4) splits as a+bc and ab+c, ordered by the ranks of (left, right): (0, 5) < (3, 2).
  assert.deepEqual(merges, [["a", "b"], ["a", "bc"], ["ab", "c"], ["b", "c"]]);
  // Bytes outside printable ASCII are spelled in GPT-2's byte alphabet.
  const spaced = tiktokenVocabMerges(parseTiktokenRanks(`${b64(" ")} 0\n${b64("\n")} 1`, "t"));
  assert.deepEqual(spaced.vocab, { "Ġ": 0, "Ċ": 1 });

  const bad = (text: string, pattern: RegExp) =>
    assert.throws(
      () => parseTiktokenRanks(text, "t.tiktoken"),
      (e) => e instanceof TokenizerError && pattern.test(e.message),
      `expected ${pattern}`,
    );
  bad("", /no tokens/);
  bad("YQ== 0 1", /line 1: expected/);
  bad("YQ== x", /line 1: expected/);
  bad("Y!== 0", /line 1: expected/);
  bad("YQ 0", /not valid base64/);
  bad("YQ== 0\nYQ== 1", /line 2: token YQ== is listed twice/);
  bad("YQ== 0\nYg== 0", /line 2: rank 0 is listed twice/);
  bad("YQ== 99999999999999999999", /rank out of range/);
});
