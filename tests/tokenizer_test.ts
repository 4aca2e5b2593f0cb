import assert from "node:assert/strict";
import { TokenizerError } from "../lib/errors.ts";
import { type ChatMessage, type DecodeOptions, Tokenizer } from "../lib/tokenizer.ts";

/** tests/fixtures/tokenizers/<name>/reference.json, written by scripts/make_tokenizer_reference.py. */
interface Reference {
  name: string;
  dir: string;
  bos_token_id: number | null;
  eos_token_id: number | null;
  pad_token_id: number | null;
  unk_token_id: number | null;
  vocab_size: number;
  special_ids: number[];
  cases: {
    text: string;
    ids: number[];
    ids_plain: number[];
    decoded: string;
    decoded_skip: string;
    decoded_plain: string;
  }[];
  random_decode: { ids: number[]; decoded: string; decoded_skip: string }[];
  chat: {
    name: string;
    messages: ChatMessage[];
    add_generation_prompt?: boolean;
    template_name?: string;
    tools?: unknown[];
    extra?: Record<string, unknown>;
    text?: string;
    error?: string;
  }[];
}

const REPO = new URL("../", import.meta.url);
const FIXTURES = ["stories260k", "llama_legacy", "chatml", "llama3"];

async function load(name: string): Promise<{ ref: Reference; tok: Tokenizer }> {
  const path = new URL(`tests/fixtures/tokenizers/${name}/reference.json`, REPO);
  const ref = JSON.parse(await Deno.readTextFile(path)) as Reference;
  return { ref, tok: await Tokenizer.fromDir(new URL(ref.dir, REPO).pathname) };
}

/** Deterministic texts over an alphabet of ASCII, whitespace and 2-, 3- and 4-byte characters. */
function randomTexts(count: number, seed: number): string[] {
  const alphabet = [..."abcdefghij XYZ.,!?'\"\n\t0123456789éñøßÆ€日本語中文한🙂👍🏽🇫🇷"];
  let state = seed;
  const next = () => (state = (state * 1103515245 + 12345) % 2 ** 31);
  return Array.from({ length: count }, () => {
    const length = 1 + next() % 24;
    return Array.from({ length }, () => alphabet[next() % alphabet.length]).join("");
  });
}

/** Streams `ids` through a fresh decoder; returns the deltas (flush's output last). */
function stream(tok: Tokenizer, ids: number[], opts: DecodeOptions = {}): string[] {
  const decoder = tok.decodeStream(opts);
  return [...ids.map((id) => decoder.push(id)), decoder.flush()];
}

for (const name of FIXTURES) {
  Deno.test(`Tokenizer.fromDir ${name}: special token ids, vocabSize, specialIds as transformers`, async () => {
    const { ref, tok } = await load(name);
    assert.equal(tok.bosTokenId, ref.bos_token_id);
    assert.equal(tok.eosTokenId, ref.eos_token_id);
    assert.equal(tok.padTokenId, ref.pad_token_id);
    assert.equal(tok.unkTokenId, ref.unk_token_id);
    assert.equal(tok.vocabSize, ref.vocab_size);
    assert.deepEqual([...tok.specialIds].sort((a, b) => a - b), ref.special_ids);
    const byteFallback = name === "stories260k" || name === "llama_legacy";
    assert.equal(tok.byteFallbackIds.size, byteFallback ? 256 : 0);
  });

  Deno.test(`Tokenizer.encode/decode ${name}: equal transformers on every text and id list`, async () => {
    const { ref, tok } = await load(name);
    for (const c of ref.cases) {
      const what = `${name}: ${JSON.stringify(c.text)}`;
      assert.deepEqual(tok.encode(c.text), c.ids, `${what}: encode`);
      assert.deepEqual(tok.encode(c.text, { addSpecialTokens: false }), c.ids_plain, what);
      assert.equal(tok.decode(c.ids), c.decoded, `${what}: decode`);
      assert.equal(tok.decode(c.ids, { skipSpecialTokens: true }), c.decoded_skip, what);
      assert.equal(tok.decode(c.ids_plain), c.decoded_plain, `${what}: decode without specials`);
    }
    for (const c of ref.random_decode) {
      assert.equal(tok.decode(c.ids), c.decoded, `${name}: decode(${JSON.stringify(c.ids)})`);
      assert.equal(tok.decode(c.ids, { skipSpecialTokens: true }), c.decoded_skip);
    }
  });

  Deno.test(`Tokenizer.applyChatTemplate ${name}: equals transformers`, async () => {
    const { ref, tok } = await load(name);
    if (name === "stories260k") assert.equal(ref.chat.length, 0); // it has no template
    for (const c of ref.chat) {
      const render = () =>
        tok.applyChatTemplate(c.messages, {
          addGenerationPrompt: c.add_generation_prompt,
          templateName: c.template_name,
          tools: c.tools,
          extra: c.extra,
        });
      if (c.error === undefined) {
        assert.equal(render(), c.text, `${name}: ${c.name}`);
      } else {
        assert.throws(render, (e) => {
          assert.ok(e instanceof TokenizerError);
          assert.equal(e.key, "chat_template");
          assert.match(e.message, /the template raised: /);
          assert.ok(e.message.includes(c.error!), e.message);
          return true;
        });
      }
    }
  });

  Deno.test(`Tokenizer ${name}: decode(encode(text)) round-trips`, async () => {
    const { tok } = await load(name);
    for (let text of randomTexts(200, 7)) {
      if (name === "chatml") text = text.normalize("NFC"); // its normalizer is NFC
      // SentencePiece decoding drops the space its pre-tokenizer puts before the first word.
      if (name === "stories260k" || name === "llama_legacy") text = text.replace(/^\s+/, "");
      assert.equal(tok.decode(tok.encode(text), { skipSpecialTokens: true }), text);
      assert.equal(tok.decode(tok.encode(text, { addSpecialTokens: false })), text);
    }
  });

  Deno.test(`IncrementalDecoder ${name}: deltas join to decode(ids), never a broken character`, async () => {
    const { ref, tok } = await load(name);
    const texts = [...ref.cases.map((c) => c.text), ...randomTexts(100, 11)];
    for (const text of texts) {
      const ids = tok.encode(text);
      for (const opts of [{}, { skipSpecialTokens: true }]) {
        const deltas = stream(tok, ids, opts);
        const what = `${name}: ${JSON.stringify(text)} ${JSON.stringify(opts)}`;
        for (const delta of deltas) assert.ok(!delta.includes("\uFFFD"), `${what}: ${delta}`);
        assert.equal(deltas.join(""), tok.decode(ids, opts), what);
      }
    }
  });

  Deno.test(`IncrementalDecoder ${name}: deltas join to decode(ids) for arbitrary ids`, async () => {
    const { tok } = await load(name);
    let state = 3;
    const next = () => (state = (state * 1103515245 + 12345) % 2 ** 31);
    for (let n = 0; n < 300; n++) {
      // Random ids: invalid UTF-8 byte runs, special tokens anywhere.
      const ids = Array.from({ length: 1 + next() % 30 }, () => next() % tok.vocabSize);
      for (const opts of [{}, { skipSpecialTokens: true }]) {
        assert.equal(stream(tok, ids, opts).join(""), tok.decode(ids, opts), JSON.stringify(ids));
      }
    }
  });
}

Deno.test("stories260k: multi-byte characters are byte-fallback tokens; the stream holds them back", async () => {
  const { tok } = await load("stories260k");
  for (const text of ["日本", "🙂"]) {
    const ids = tok.encode(text, { addSpecialTokens: false }).slice(1); // after "▁"
    assert.equal(ids.length, new TextEncoder().encode(text).length, text); // one token per byte
    for (const id of ids) assert.equal(tok.decode([id]), "\uFFFD");
    for (const id of ids) assert.ok(tok.byteFallbackIds.has(id));
    const deltas = stream(tok, tok.encode(`a ${text} b`), { skipSpecialTokens: true });
    // A byte run comes out whole when the next non-byte token closes it.
    assert.deepEqual(deltas.filter((d) => d !== ""), ["a", " ", `${text} b`]);
  }
});

Deno.test("IncrementalDecoder: keeps SentencePiece's spaces that per-token decoding loses", async () => {
  const { tok } = await load("stories260k");
  const ids = tok.encode("Once upon a time");
  assert.equal(
    ids.map((id) => tok.decode([id], { skipSpecialTokens: true })).join(""),
    "Onceuponatime",
  );
  assert.deepEqual(stream(tok, ids), ["<s>", " Once", " upon", " a", " time", ""]);
  assert.deepEqual(stream(tok, ids, { skipSpecialTokens: true }), [
    "",
    "Once",
    " upon",
    " a",
    " time",
    "",
  ]);
});

Deno.test("IncrementalDecoder: flush emits an incomplete character as decode does, then starts over", async () => {
  const { tok } = await load("stories260k");
  const ids = tok.encode("x🙂", { addSpecialTokens: false });
  const decoder = tok.decodeStream();
  const partial = ids.slice(0, -1);
  const out = partial.map((id) => decoder.push(id)).join("");
  assert.equal(out + decoder.flush(), tok.decode(partial));
  assert.ok(tok.decode(partial).endsWith("\uFFFD"));
  assert.equal(ids.map((id) => decoder.push(id)).join("") + decoder.flush(), "x🙂");
});

Deno.test("IncrementalDecoder: with the prompt as context a continuation keeps its leading space", async () => {
  const { tok } = await load("stories260k");
  const prompt = tok.encode("Lily went");
  const whole = tok.encode("Lily went to the park");
  assert.deepEqual(whole.slice(0, prompt.length), prompt);
  const next = whole.slice(prompt.length);
  // Alone, the first new piece "▁to" decodes without its space (the decoder strips a sequence's
  // first "▁"); as a continuation of the prompt it is " to".
  assert.equal(tok.decode(next), "to the park");
  const alone = tok.decodeStream({ skipSpecialTokens: true });
  assert.equal(next.map((id) => alone.push(id)).join("") + alone.flush(), "to the park");
  const cont = tok.decodeStream({ skipSpecialTokens: true, context: prompt });
  assert.equal(next.map((id) => cont.push(id)).join("") + cont.flush(), " to the park");
});

Deno.test("Tokenizer.decode: empty list, unknown ids dropped, invalid ids rejected", async () => {
  const { tok } = await load("chatml");
  assert.equal(tok.decode([]), "");
  const ids = tok.encode("hello");
  assert.equal(tok.decode([...ids, 10_000_000]), "hello");
  for (const bad of [-1, 1.5, Number.NaN]) {
    assert.throws(() => tok.decode([bad]), TokenizerError);
  }
});

Deno.test("Tokenizer.applyChatTemplate: no template → TokenizerError that says how to pass one", async () => {
  const { tok } = await load("stories260k");
  assert.equal(tok.chatTemplates.size, 0);
  const messages = [{ role: "user", content: "hi" }];
  assert.throws(() => tok.applyChatTemplate(messages), (e) => {
    assert.ok(e instanceof TokenizerError);
    assert.match(e.message, /models\/stories260k: the model has no chat template/);
    assert.match(e.message, /chatTemplate/);
    return true;
  });
  const chatTemplate =
    "{{ bos_token }}{% for m in messages %}{{ m.role }}={{ m.content }}{% endfor %}" +
    "{% if add_generation_prompt %}>{% endif %}";
  assert.equal(
    tok.applyChatTemplate(messages, { chatTemplate, addGenerationPrompt: true }),
    "<s>user=hi>",
  );
});

Deno.test("Tokenizer.applyChatTemplate: named templates, default first; unknown name → TokenizerError", async () => {
  const { tok } = await load("chatml");
  assert.deepEqual([...tok.chatTemplates.keys()], ["default", "plain"]);
  const legacy = (await load("llama_legacy")).tok;
  assert.deepEqual([...legacy.chatTemplates.keys()], ["default", "plain"]);
  const messages = [{ role: "user", content: "hi" }];
  assert.equal(tok.applyChatTemplate(messages, { templateName: "plain" }), "user: hi\n");
  assert.throws(() => tok.applyChatTemplate(messages, { templateName: "tool_use" }), (e) => {
    assert.ok(e instanceof TokenizerError);
    assert.match(e.message, /no template named "tool_use"; the model has: default, plain/);
    return true;
  });
});

Deno.test("Tokenizer.applyChatTemplate: messages as transformers hands them over", async () => {
  const { tok } = await load("chatml");
  const chatTemplate = "{{ messages | tojson }}";
  const messages = [
    { role: "user", content: "Zürich?", name: null },
    { role: "assistant", content: "ok", thinking: "hm" },
  ];
  assert.equal(
    tok.applyChatTemplate(messages, { chatTemplate }),
    '[{"role": "user", "content": "Zürich?"}, ' +
      '{"thinking": "hm", "role": "assistant", "content": "ok", "reasoning_content": "hm"}]',
  );
  assert.throws(() => tok.applyChatTemplate([], { chatTemplate }), TokenizerError);
  assert.throws(() => tok.applyChatTemplate(messages, { chatTemplate: "{% for %}" }), (e) => {
    assert.ok(e instanceof TokenizerError);
    assert.match(e.message, /^options\.chatTemplate: chat_template: cannot parse/);
    return true;
  });
});

Deno.test("Tokenizer.applyChatTemplate: strftime_now formats the local time in the C locale", async () => {
  const { tok } = await load("chatml");
  const chatTemplate = "{{ strftime_now('%Y-%m-%d|%d %b %Y|%A %B|%%') }}";
  const now = new Date();
  const got = tok.applyChatTemplate([{ role: "user", content: "" }], { chatTemplate });
  const day = String(now.getDate()).padStart(2, "0");
  const month = now.toLocaleString("en-US", { month: "long" });
  const weekday = now.toLocaleString("en-US", { weekday: "long" });
  const iso = `${now.getFullYear()}-${String(now.getMonth() + 1).padStart(2, "0")}-${day}`;
  assert.equal(
    got,
    `${iso}|${day} ${month.slice(0, 3)} ${now.getFullYear()}|${weekday} ${month}|%`,
  );
});

Deno.test("Tokenizer.fromDir: a missing tokenizer.json is a TokenizerError naming the file", async () => {
  await assert.rejects(Tokenizer.fromDir("tests/fixtures/tokenizers/absent"), (e) => {
    assert.ok(e instanceof TokenizerError);
    assert.equal(e.file, "tests/fixtures/tokenizers/absent/tokenizer.json");
    return true;
  });
});
