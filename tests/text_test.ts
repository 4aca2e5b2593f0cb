import assert from "node:assert/strict";
import { AutoModel, type CausalLM } from "../mod.ts";

const STORIES = new URL("../models/stories260k", import.meta.url).pathname;
const split = new URL("./.tmp/split/text-stories260k", import.meta.url).pathname;
const ref = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/stories260k/reference.json", import.meta.url)),
) as { greedy_text: string; greedy: { new_tokens: number[] } };

const open = () => AutoModel.fromPretrained(STORIES, { layerShardsSavingPath: split });

Deno.test("text: stories260k greedy from BOS reproduces transformers' continuation, as text", async () => {
  await using model = await open();
  const [ids] = await model.generate([[1]], { maxNewTokens: 64, eosTokenId: [] });
  assert.deepEqual(ids.slice(1), ref.greedy.new_tokens);
  assert.equal(model.tokenizer!.decode(ids.slice(1), { skipSpecialTokens: true }), ref.greedy_text);
  assert.ok(ref.greedy_text.startsWith("Once upon a time, there was a little girl named Lily."));
});

Deno.test("text: a string prompt is tokenized with BOS, and stream() text equals the decoded tokens", async () => {
  await using model = await open();
  const tok = model.tokenizer!;
  const [ids] = await model.generate("Once upon a time", { maxNewTokens: 40 });
  const prompt = tok.encode("Once upon a time");
  assert.equal(prompt[0], 1, "BOS first");
  assert.deepEqual(ids.slice(0, prompt.length), prompt);
  let text = "";
  const streamed: number[] = [];
  for await (const c of model.stream("Once upon a time", { maxNewTokens: 40 })) {
    text += c.text;
    streamed.push(c.tokenId);
    assert.ok(!c.text.includes("\uFFFD"), "no broken character in a delta");
  }
  assert.deepEqual(streamed, ids.slice(prompt.length));
  // The deltas are what the new tokens add to the prompt's text: its continuation, leading space
  // included (decoding the new ids alone strips it, as a SentencePiece decoder does at the start).
  const whole = tok.decode(ids, { skipSpecialTokens: true });
  const shown = tok.decode(prompt, { skipSpecialTokens: true });
  assert.ok(whole.startsWith(shown));
  assert.equal(text, whole.slice(shown.length));
});

async function newText(model: CausalLM, prompt: string, opts: Parameters<CausalLM["generate"]>[1]) {
  const [ids] = await model.generate(prompt, opts);
  const n = model.tokenizer!.encode(prompt).length;
  return {
    ids: ids.slice(n),
    text: model.tokenizer!.decode(ids.slice(n), { skipSpecialTokens: true }),
  };
}

Deno.test("text: generation stops at a stop string, at EOS and at maxNewTokens", async () => {
  await using model = await open();
  const free = await newText(model, "Once upon a time", { maxNewTokens: 60, eosTokenId: [] });
  const at = free.text.indexOf("park");
  assert.ok(at > 0, free.text);
  const stopped = await newText(model, "Once upon a time", {
    maxNewTokens: 60,
    stopStrings: ["park"],
    eosTokenId: [],
  });
  assert.ok(stopped.text.includes("park"), stopped.text);
  assert.ok(stopped.ids.length < free.ids.length);
  assert.deepEqual(
    stopped.ids,
    free.ids.slice(0, stopped.ids.length),
    "same tokens up to the stop",
  );
  // The token completing "park" is the last one.
  const before = model.tokenizer!.decode(stopped.ids.slice(0, -1), { skipSpecialTokens: true });
  assert.ok(!before.includes("park"));
  // EOS: make the 5th generated token the EOS id.
  const eos = free.ids[4];
  const ended = await newText(model, "Once upon a time", { maxNewTokens: 60, eosTokenId: eos });
  assert.equal(ended.ids.length, free.ids.indexOf(eos) + 1);
  assert.equal((await newText(model, "Once upon a time", { maxNewTokens: 7 })).ids.length, 7);
});

Deno.test("text: a batch of different prompts equals each prompt alone", async () => {
  await using model = await open();
  const prompts = ["Once upon a time", "The dog", "Lily and Tom went to the big park with"];
  const batch = await model.generate(prompts, { maxNewTokens: 20, eosTokenId: [] });
  for (const [i, p] of prompts.entries()) {
    assert.deepEqual(
      batch[i],
      (await model.generate(p, { maxNewTokens: 20, eosTokenId: [] }))[0],
      p,
    );
  }
});
