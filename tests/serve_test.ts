/**
 * `rabbit serve` (lib/serve.ts) and its scheduler (lib/engine/batcher.ts), through the real
 * `openai` npm client against the server on 127.0.0.1: each request's text equals what the model
 * gives that prompt alone, however requests overlap.
 */
import assert from "node:assert/strict";
import OpenAI from "npm:openai@7.60.0";
import { AutoModel, type CausalLM, type ChatMessage, InputError, plan, serve } from "../mod.ts";
import { workBytes } from "../lib/engine/kv_cache.ts";
import { Batcher } from "../lib/engine/batcher.ts";
import { QueueFullError } from "../lib/errors.ts";
import { chatModel, run } from "./_cli.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const KEY = "sk-test-0123456789";
const MODEL_ID = "stories";

/** One model for the whole file (single-threaded: steadier on a busy 2-core machine). */
let shared: { dir: string; model: CausalLM } | null = null;
async function model(): Promise<CausalLM> {
  if (!shared) {
    const dir = await chatModel();
    shared = { dir, model: await AutoModel.fromPretrained(dir, { quiet: true, threads: 1 }) };
  }
  return shared.model;
}

/** A server on a free port of 127.0.0.1 and a client for it (no retries). */
async function start(opts: Parameters<typeof serve>[1] = {}, key = KEY) {
  const lines: string[] = [];
  const server = serve(await model(), {
    port: 0,
    apiKey: KEY,
    modelId: MODEL_ID,
    log: (l) => lines.push(l),
    ...opts,
  });
  const client = new OpenAI({
    apiKey: key,
    baseURL: `${server.url}/v1`,
    maxRetries: 0,
    timeout: 30_000,
  });
  return { server, client, lines };
}

/** What the model gives `input` alone: greedy text (streamed deltas joined) and token count. */
async function alone(
  input: string | ChatMessage[],
  maxNewTokens: number,
): Promise<{ text: string; tokens: number; finish: string | undefined }> {
  const m = await model();
  let text = "", tokens = 0, finish: string | undefined;
  for await (
    const c of m.stream(input, { maxNewTokens, temperature: 0, repetitionPenalty: 1 })
  ) {
    text += c.text;
    tokens++;
    finish = c.finishReason;
  }
  return { text, tokens, finish };
}

const PROMPTS = [
  "Once upon a time",
  "The cat",
  "Lily and Tom went to the park and they saw a big dog. The dog was very big and it barked at " +
  "them, so they ran home to tell mom what they saw, and mom said",
  "One day",
  "Sam had a red ball",
  "The sun was hot",
  "A little bird sat on a tree near the house where a girl named Sue lived with her dad and her " +
  "cat",
  "Mom said",
];

async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const end = performance.now() + ms;
  while (!ok()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

Deno.test("serve: models, plain chat and completion equal the model alone; usage; log lines", async () => {
  const { server, client, lines } = await start();
  try {
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), [MODEL_ID]);
    assert.equal((await client.models.retrieve(MODEL_ID)).id, MODEL_ID);

    const messages: ChatMessage[] = [{ role: "user", content: "Tell me a story" }];
    const want = await alone(messages, 24);
    const chat = await client.chat.completions.create({
      model: MODEL_ID,
      messages: messages as OpenAI.ChatCompletionMessageParam[],
      max_tokens: 24,
      temperature: 0,
    });
    assert.equal(chat.object, "chat.completion");
    assert.equal(chat.choices.length, 1);
    assert.equal(chat.choices[0].message.role, "assistant");
    assert.equal(chat.choices[0].message.content, want.text);
    assert.equal(chat.choices[0].finish_reason, want.finish === "length" ? "length" : "stop");
    const t = (await model()).tokenizer!;
    const promptLen = t.encode(t.applyChatTemplate(messages, { addGenerationPrompt: true }), {
      addSpecialTokens: false,
    }).length;
    assert.deepEqual(chat.usage, {
      prompt_tokens: promptLen,
      completion_tokens: want.tokens,
      total_tokens: promptLen + want.tokens,
    });

    const textWant = await alone("Once upon a time", 20);
    const c = await client.completions.create({
      model: MODEL_ID,
      prompt: "Once upon a time",
      max_tokens: 20,
      temperature: 0,
    });
    assert.equal(c.object, "text_completion");
    assert.equal(c.choices[0].text, textWant.text);
    assert.equal(c.usage?.completion_tokens, textWant.tokens);
    // Token ids work as a prompt too.
    const ids = t.encode("Once upon a time");
    const c2 = await client.completions.create({
      model: MODEL_ID,
      prompt: ids,
      max_tokens: 20,
      temperature: 0,
    });
    assert.equal(c2.choices[0].text, textWant.text);

    // One line per request: id, route, status, tokens in/out, time; never the key.
    const done = lines.filter((l) => / 200 in=/.test(l));
    assert.equal(done.length, 3, lines.join("\n"));
    assert.match(done[0], /^req-\S+ POST \/v1\/chat\/completions 200 in=\d+ out=\d+ \S+ [\d.]+s$/);
    assert.ok(lines.every((l) => !l.includes(KEY)));
  } finally {
    await server.shutdown();
  }
});

Deno.test("serve: streamed chat and completion: OpenAI chunks, [DONE], usage, the text alone", async () => {
  const { server, client } = await start();
  try {
    const messages: ChatMessage[] = [{ role: "user", content: "Hello" }];
    const want = await alone(messages, 30);
    const stream = await client.chat.completions.create({
      model: MODEL_ID,
      messages: messages as OpenAI.ChatCompletionMessageParam[],
      max_tokens: 30,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "", finish: string | null = null, usage: OpenAI.CompletionUsage | null = null;
    let first = true;
    for await (const c of stream) {
      assert.equal(c.object, "chat.completion.chunk");
      if (c.usage) usage = c.usage;
      if (c.choices.length === 0) continue;
      if (first) assert.equal(c.choices[0].delta.role, "assistant");
      first = false;
      text += c.choices[0].delta.content ?? "";
      finish = c.choices[0].finish_reason ?? finish;
    }
    assert.equal(text, want.text);
    assert.equal(finish, want.finish === "length" ? "length" : "stop");
    assert.equal(usage?.completion_tokens, want.tokens);

    // The raw event stream ends with data: [DONE].
    const res = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
      body: JSON.stringify({
        model: MODEL_ID,
        prompt: "The cat",
        max_tokens: 12,
        temperature: 0,
        stream: true,
      }),
    });
    assert.equal(res.headers.get("content-type"), "text/event-stream");
    const events = (await res.text()).split("\n\n").filter(Boolean);
    assert.equal(events.at(-1), "data: [DONE]");
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e.replace(/^data: /, "")));
    assert.ok(chunks.every((c) => c.object === "text_completion"));
    assert.equal(
      chunks.map((c) => c.choices[0].text).join(""),
      (await alone("The cat", 12)).text,
    );
    assert.equal(chunks.at(-1).choices[0].finish_reason, "length");
  } finally {
    await server.shutdown();
  }
});

Deno.test("serve: 8 concurrent streamed clients (staggered, long prompts chunked) each get the text alone; they share passes", async () => {
  const N = 40;
  const wants = [];
  for (const p of PROMPTS) wants.push(await alone(p, N));
  // prefillChunk 16: the two long prompts are fed in chunks beside rows already decoding.
  const { server, client } = await start({ maxBatch: 8, prefillChunk: 16 });
  try {
    // Staggered by progress, not time: client i starts once client i - 1 has its first chunk, so
    // it joins while the earlier ones decode (a timed stagger let fast runs finish alone).
    const streaming = PROMPTS.map(() => Promise.withResolvers<void>());
    const texts = await Promise.all(PROMPTS.map(async (prompt, i) => {
      if (i > 0) await streaming[i - 1].promise;
      const stream = await client.completions.create({
        model: MODEL_ID,
        prompt,
        max_tokens: N,
        temperature: 0,
        stream: true,
      });
      let text = "";
      for await (const c of stream) {
        text += c.choices[0]?.text ?? "";
        streaming[i].resolve();
      }
      streaming[i].resolve();
      return text;
    }));
    for (const [i, t] of texts.entries()) assert.equal(t, wants[i].text, `client ${i}`);
    const s = server.stats();
    assert.ok(s.maxRowsInStep > 1, `one pass served at most ${s.maxRowsInStep} request(s)`);
    const generated = wants.reduce((n, w) => n + w.tokens, 0);
    assert.ok(s.steps < generated, `${s.steps} passes for ${generated} generated tokens`);
    assert.equal(s.active, 0);
  } finally {
    await server.shutdown();
  }
});

Deno.test("serve: a client that disconnects mid-stream leaves at once; its row serves the next request", async () => {
  const { server, client } = await start({ maxBatch: 2, maxQueue: 4 });
  try {
    const want = await alone("The sun was hot", 40);
    const other = (async () => {
      const s = await client.completions.create({
        model: MODEL_ID,
        prompt: "The sun was hot",
        max_tokens: 40,
        temperature: 0,
        stream: true,
      });
      let text = "";
      for await (const c of s) text += c.choices[0]?.text ?? "";
      return text;
    })();
    const s = await client.completions.create({
      model: MODEL_ID,
      prompt: "Once upon a time",
      max_tokens: 400,
      temperature: 0,
      stream: true,
    });
    let got = 0;
    for await (const _ of s) if (++got === 3) break; // closes the connection
    await until("the disconnected row to leave", () => server.stats().active <= 1);
    assert.equal(await other, want.text);
    await until("no active rows", () => server.stats().active === 0);
    // The freed rows serve new requests with the same results.
    const again = await client.completions.create({
      model: MODEL_ID,
      prompt: "The sun was hot",
      max_tokens: 40,
      temperature: 0,
    });
    assert.equal(again.choices[0].text, want.text);
    assert.ok(server.stats().steps < 400, "the disconnected request did not run to its limit");
    // A plain (not streamed) request whose client goes away leaves too.
    const gone = new AbortController();
    const plain = fetch(`${server.url}/v1/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL_ID, prompt: "One day", max_tokens: 450 }),
      signal: gone.signal,
    });
    await until("the plain request to start", () => server.stats().active === 1);
    const before = server.stats().steps;
    gone.abort();
    await assert.rejects(plain);
    await until("the plain request to leave", () => server.stats().active === 0);
    assert.ok(server.stats().steps - before < 450, "it did not run to its limit");
  } finally {
    await server.shutdown();
  }
});

Deno.test("serve: errors are OpenAI error bodies: 401 bad key, 400 bad JSON / fields, 404 model, 400 prompt too long, 413 body", async () => {
  const { server, client } = await start({ maxBodyBytes: 4096 });
  try {
    const post = (path: string, body: string, headers: Record<string, string> = {}) =>
      fetch(`${server.url}${path}`, {
        method: "POST",
        headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json", ...headers },
        body,
      });
    const wrong = new OpenAI({ apiKey: "sk-wrong", baseURL: `${server.url}/v1`, maxRetries: 0 });
    await assert.rejects(() => wrong.models.list(), (e: unknown) => {
      assert.ok(e instanceof OpenAI.AuthenticationError);
      assert.equal(e.status, 401);
      assert.equal(e.code, "invalid_api_key");
      return true;
    });
    const noKey = await fetch(`${server.url}/v1/models`);
    assert.equal(noKey.status, 401);
    assert.equal((await noKey.json()).error.code, "invalid_api_key");

    const badJson = await post("/v1/chat/completions", "{not json");
    assert.equal(badJson.status, 400);
    const body = await badJson.json();
    assert.equal(body.error.type, "invalid_request_error");
    assert.equal(typeof body.error.message, "string");

    for (
      const [fields, param] of [
        [{ messages: [] }, "messages"],
        [{ messages: [{ role: "user", content: "Hi" }], temperature: 3 }, "temperature"],
        [{ messages: [{ role: "user", content: "Hi" }], n: 2 }, "n"],
        [{ messages: [{ role: "user", content: "Hi" }], max_tokens: 0 }, "max_tokens"],
        [{ messages: [{ role: "user", content: "Hi" }], stop: [""] }, "stop"],
        // The chat template raises (roles must alternate): its message, without the file path.
        [
          { messages: [{ role: "user", content: "a" }, { role: "user", content: "b" }] },
          "messages",
        ],
      ] as const
    ) {
      const r = await post("/v1/chat/completions", JSON.stringify({ model: MODEL_ID, ...fields }));
      assert.equal(r.status, 400, JSON.stringify(fields));
      const e = (await r.json()).error;
      assert.equal(e.param, param);
      assert.ok(!e.message.includes("rabbit-chat-"), e.message); // no file paths
    }

    await assert.rejects(
      () =>
        client.chat.completions.create({
          model: "gpt-4o",
          messages: [{ role: "user", content: "Hi" }],
        }),
      (e: unknown) => e instanceof OpenAI.NotFoundError && e.code === "model_not_found",
    );

    // Longer than the context (512 tokens): refused before any work.
    await assert.rejects(
      () =>
        client.completions.create({
          model: MODEL_ID,
          prompt: "the cat sat ".repeat(300),
          max_tokens: 8,
        }),
      (e: unknown) => e instanceof OpenAI.BadRequestError && e.code === "context_length_exceeded",
    );
    // Fits alone, but not with max_tokens.
    await assert.rejects(
      () => client.completions.create({ model: MODEL_ID, prompt: "Once", max_tokens: 600 }),
      (e: unknown) => e instanceof OpenAI.BadRequestError && e.code === "context_length_exceeded",
    );
    const big = await post(
      "/v1/completions",
      JSON.stringify({ model: MODEL_ID, prompt: "x".repeat(5000) }),
    );
    assert.equal(big.status, 413);
    assert.equal((await big.json()).error.code, "request_too_large");

    const nowhere = await fetch(`${server.url}/v2/nothing`, {
      headers: { authorization: `Bearer ${KEY}` },
    });
    assert.equal(nowhere.status, 404);
    await nowhere.body?.cancel();
    assert.equal(server.stats().steps, 0, "no bad request reached the model");
  } finally {
    await server.shutdown();
  }
});

Deno.test("serve: a full queue is 429 with Retry-After; the queued request is then served", async () => {
  const { server, client } = await start({ maxBatch: 1, maxQueue: 1 });
  try {
    const first = await client.completions.create({
      model: MODEL_ID,
      prompt: "Once upon a time",
      max_tokens: 300,
      temperature: 0,
      stream: true,
    });
    const it = first[Symbol.asyncIterator]();
    await it.next(); // it holds the only row
    const queued = client.completions.create({
      model: MODEL_ID,
      prompt: "The cat",
      max_tokens: 8,
      temperature: 0,
    });
    await until("the second request to queue", () => server.stats().queued === 1);
    await assert.rejects(
      () => client.completions.create({ model: MODEL_ID, prompt: "Hi", max_tokens: 8 }),
      (e: unknown) => {
        assert.ok(e instanceof OpenAI.RateLimitError);
        assert.equal(e.status, 429);
        assert.ok(Number(e.headers?.get("retry-after")) >= 1);
        return true;
      },
    );
    await it.return?.(undefined); // disconnect: the queued request gets the row
    assert.equal((await queued).choices[0].text, (await alone("The cat", 8)).text);
  } finally {
    await server.shutdown();
  }
});

Deno.test("serve: shutdown ends running requests (503, or an error event in a stream) and stops listening", async () => {
  const { server, client } = await start({ maxBatch: 2 });
  const stream = await client.completions.create({
    model: MODEL_ID,
    prompt: "Once upon a time",
    max_tokens: 400,
    temperature: 0,
    stream: true,
  });
  const it = stream[Symbol.asyncIterator]();
  await it.next();
  // Settled into a value at once: it fails while the stream is drained below (no dangling rejection).
  const plain = client.completions.create({
    model: MODEL_ID,
    prompt: "One day",
    max_tokens: 400,
    temperature: 0,
  }).then(() => assert.fail("served after shutdown"), (e: unknown) => e);
  await until("both requests to run", () => server.stats().active === 2);
  await server.shutdown();
  await assert.rejects(
    async () => {
      while (!(await it.next()).done) { /* drain */ }
    },
    (e: unknown) => e instanceof OpenAI.APIError && /shutting down/.test(e.message),
  );
  const e = await plain;
  assert.ok(e instanceof OpenAI.APIError && e.status === 503, String(e));
  await assert.rejects(fetch(`${server.url}/v1/models`));
  assert.equal(server.stats().active, 0);
});

Deno.test("serve: 503 while the model loads, then served", async () => {
  const loading = Promise.withResolvers<CausalLM>();
  const lines: string[] = [];
  const server = serve(loading.promise, { port: 0, modelId: MODEL_ID, log: (l) => lines.push(l) });
  try {
    const client = new OpenAI({ apiKey: "none", baseURL: `${server.url}/v1`, maxRetries: 0 });
    assert.equal(server.stats().loading, true);
    await assert.rejects(
      () => client.completions.create({ model: MODEL_ID, prompt: "Hi", max_tokens: 4 }),
      (e: unknown) =>
        e instanceof OpenAI.InternalServerError && e.status === 503 &&
        e.headers?.get("retry-after") !== null,
    );
    loading.resolve(await model());
    await until("the model", () => !server.stats().loading);
    const c = await client.completions.create({
      model: MODEL_ID,
      prompt: "Hi",
      max_tokens: 4,
      temperature: 0,
    });
    assert.equal(c.choices[0].text, (await alone("Hi", 4)).text);
  } finally {
    await server.shutdown();
  }
  // A model that failed to load: 500, the error not shown to clients.
  const failed = Promise.reject(new InputError("/secret/path: no such checkpoint"));
  await using broken = serve(failed, { port: 0, modelId: MODEL_ID, log: null });
  await failed.catch(() => {});
  const res = await fetch(`${broken.url}/v1/completions`, {
    method: "POST",
    body: JSON.stringify({ model: MODEL_ID, prompt: "Hi" }),
  });
  assert.equal(res.status, 500);
  const body = await res.text();
  assert.match(body, /model_load_failed/);
  assert.ok(!body.includes("secret"));
  assert.equal(broken.stats().loading, false);
});

Deno.test("serve: stop strings are cut from the answer; seeded sampling repeats; defaults bind 127.0.0.1", async () => {
  const { server, client } = await start();
  try {
    assert.equal(server.addr.hostname, "127.0.0.1");
    const full = await alone("Once upon a time", 30);
    const stop = full.text.slice(10, 14);
    const want = full.text.slice(0, full.text.indexOf(stop));
    for (const stream of [false, true]) {
      let text = "", finish: string | null = null;
      if (stream) {
        const s = await client.completions.create({
          model: MODEL_ID,
          prompt: "Once upon a time",
          max_tokens: 30,
          temperature: 0,
          stop,
          stream: true,
        });
        for await (const c of s) {
          text += c.choices[0]?.text ?? "";
          finish = c.choices[0]?.finish_reason ?? finish;
        }
      } else {
        const c = await client.completions.create({
          model: MODEL_ID,
          prompt: "Once upon a time",
          max_tokens: 30,
          temperature: 0,
          stop: [stop],
        });
        text = c.choices[0].text;
        finish = c.choices[0].finish_reason;
      }
      assert.equal(text, want, `stream ${stream}`);
      assert.equal(finish, "stop");
    }
    // Sampling with a seed: the same answer twice, and what the model gives with that seed.
    const sampled = () =>
      client.completions.create({
        model: MODEL_ID,
        prompt: "The cat",
        max_tokens: 24,
        temperature: 0.9,
        top_p: 0.95,
        seed: 7,
      });
    const a = await sampled(), b = await sampled();
    assert.equal(a.choices[0].text, b.choices[0].text);
    let direct = "";
    for await (
      const c of (await model()).stream("The cat", {
        maxNewTokens: 24,
        doSample: true,
        temperature: 0.9,
        topP: 0.95,
        topK: 0,
        repetitionPenalty: 1,
        seed: 7,
      })
    ) direct += c.text;
    assert.equal(a.choices[0].text, direct);
  } finally {
    await server.shutdown();
  }
});

Deno.test("batcher: bad input is an InputError, a full queue a QueueFullError; cancel leaves the queue", async () => {
  const m = await model();
  const b = new Batcher(m, { maxBatch: 1, maxQueue: 1 });
  try {
    assert.throws(() => b.submit([]), InputError);
    assert.throws(() => b.submit([1, 99999]), InputError);
    assert.throws(() => b.submit([1], { maxNewTokens: 512 }), InputError);
    assert.throws(() => b.submit([1], { temperature: -1 }), InputError);
    assert.throws(() => new Batcher(m, { maxBatch: 0 }), InputError);
    const r1 = b.submit([1], { maxNewTokens: 200, eosTokenId: [] });
    await until("the first request to hold the row", () => b.active === 1);
    const r2 = b.submit([1], { maxNewTokens: 2 });
    assert.throws(() => b.submit([1]), QueueFullError);
    r2.cancel();
    assert.equal(b.queued, 0);
    const r3 = b.submit([1], { maxNewTokens: 3, temperature: 0 });
    let n = 0;
    for await (const _ of r1) if (++n === 2) break; // leaves the batch
    const ids = [];
    for await (const c of r3) ids.push(c.tokenId);
    const [row] = await m.generate([[1]], { maxNewTokens: 3, temperature: 0 });
    assert.deepEqual(ids, row.slice(1));
    assert.equal(r1.finishReason, "cancelled");
    assert.equal(r3.finishReason, "length");
    // Requests submitted one right after another (the loop may be ending) are all served.
    for (let i = 0; i < 30; i++) {
      const got = [];
      for await (const c of b.submit([1], { maxNewTokens: 1 + (i % 3), temperature: 0 })) {
        got.push(c.tokenId);
      }
      assert.deepEqual(got, row.slice(1, 2 + (i % 3)));
    }
  } finally {
    await b.close();
  }
});

Deno.test("batcher: memory is planned for the batch (every row's KV cache at maxSeqLen, a step's rows) as a batched generate plans it", async () => {
  const seen: number[] = [];
  await using m = await AutoModel.fromPretrained(`${ROOT}models/stories260k`, {
    quiet: true,
    threads: 1,
    maxSeqLen: 128,
    planner: (input) => {
      seen.push(input.workBytes);
      return plan(input);
    },
  });
  const b = new Batcher(m, { maxBatch: 4, prefillChunk: 32 });
  try {
    for await (const _ of b.submit([1, 2, 3], { maxNewTokens: 2 })) { /* run */ }
  } finally {
    await b.close();
  }
  assert.equal(seen.at(-1), workBytes(m.config, 4, 128, 4 + 32, 4));
  await m.generate([[1, 2, 3], [4, 5]], { maxNewTokens: 2 }); // the model is free again
  assert.equal(seen.at(-1), workBytes(m.config, 2, 3 + 2, 2 * 3, 2));
});

Deno.test("batcher: a long prompt joins in chunks; the decoding row gets a token at every step meanwhile", async () => {
  const m = await model();
  const b = new Batcher(m, { maxBatch: 2, prefillChunk: 16 });
  try {
    const long = Array.from({ length: 300 }, (_, i) => 3 + (i * 37) % 500);
    const aSteps: number[] = [];
    let bSubmitted = -1, bFirst = -1;
    const a = (async () => {
      for await (const _ of b.submit([1, 2, 3], { maxNewTokens: 60, eosTokenId: [] })) {
        aSteps.push(b.stats.steps);
        if (aSteps.length === 3) {
          bSubmitted = b.stats.steps;
          void (async () => {
            for await (const _ of b.submit(long, { maxNewTokens: 2, temperature: 0 })) {
              if (bFirst < 0) bFirst = b.stats.steps;
            }
          })();
        }
      }
    })();
    await a;
    await until("the long prompt's answer", () => b.active === 0);
    const prefill = bFirst - bSubmitted;
    assert.ok(prefill >= Math.ceil(300 / 16), `prefilled in ${prefill} steps`);
    const during = aSteps.filter((s) => s > bSubmitted && s <= bFirst).length;
    assert.ok(during >= prefill - 1, `${during} tokens of the decoding row in ${prefill} steps`);
    assert.ok(b.stats.maxRowsInStep === 2);
  } finally {
    await b.close();
  }
});

// Every family through packed steps: rows joining while others decode, prompts fed in chunks of
// 4 (sliding windows of 4, MoE routing, MLA's latent cache, Phi-3 longrope served one at a time).
for (
  const name of [
    "llama_tied",
    "mistral",
    "gemma2",
    "qwen3_moe",
    "deepseek_v2",
    "phi2",
    "phi3_longrope",
  ]
) {
  Deno.test(`batcher: ${name}: rows that join mid-decode get what generate gives each alone`, async () => {
    await using m = await AutoModel.fromPretrained(`${ROOT}tests/fixtures/${name}`, {
      layerShardsSavingPath: `${ROOT}tests/.tmp/split/batcher-${name}`,
      quiet: true,
      threads: 1,
    });
    const rows = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [40, 41, 42], [
      100,
      3,
      77,
      201,
      9,
      4,
      4,
      8,
      1,
      2,
    ]];
    const opts = { maxNewTokens: 10, eosTokenId: [], doSample: false };
    const want = [];
    for (const r of rows) want.push((await m.generate([r], opts))[0].slice(r.length));
    const b = new Batcher(m, { maxBatch: 3, prefillChunk: 4 });
    try {
      const collect = async (r: number[]) => {
        const ids = [];
        for await (const c of b.submit(r, opts)) ids.push(c.tokenId);
        return ids;
      };
      const first = b.submit(rows[0], opts);
      const got0: number[] = [];
      const rest: Promise<number[]>[] = [];
      for await (const c of first) {
        got0.push(c.tokenId);
        if (got0.length === 2) rest.push(collect(rows[1]), collect(rows[2]));
      }
      assert.deepEqual([got0, ...await Promise.all(rest)], want);
    } finally {
      await b.close();
    }
  });
}

Deno.test("serve: load test: 32 requests from 8 clients, bounded in time; aggregate tok/s vs one alone", async () => {
  const { server, client } = await start({ maxBatch: 8 });
  const ask = async (prompt: string) => {
    const c = await client.completions.create({
      model: MODEL_ID,
      prompt,
      max_tokens: 48,
      temperature: 0,
    });
    return c.usage!.completion_tokens;
  };
  try {
    await ask("Warm up");
    let t0 = performance.now();
    const single = await ask(PROMPTS[0]);
    const singleRate = single / ((performance.now() - t0) / 1000);
    t0 = performance.now();
    const counts = await Promise.all(
      Array.from({ length: 8 }, async (_, w) => {
        let n = 0;
        for (let i = 0; i < 4; i++) n += await ask(PROMPTS[(w + i) % PROMPTS.length]);
        return n;
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const total = counts.reduce((a, b) => a + b, 0);
    console.log(
      `load: 32 requests, ${total} tokens in ${seconds.toFixed(2)} s: ${
        (total / seconds).toFixed(0)
      } tok/s aggregate vs ${singleRate.toFixed(0)} tok/s for one request alone (${
        (total / seconds / singleRate).toFixed(1)
      }×); ${server.stats().steps} passes, up to ${server.stats().maxRowsInStep} rows each`,
    );
    assert.ok(total > 0);
    assert.ok(seconds < 50, `the load test took ${seconds.toFixed(1)} s`);
  } finally {
    await server.shutdown();
  }
});

Deno.test("cli: rabbit serve --help; bad options exit 1 before loading; a taken port is named", async () => {
  const h = await run(["--help"]);
  assert.match(h.out, /^ {2}serve +\S/m);
  const r = await run(["serve", "--help"]);
  assert.equal(r.code, 0);
  assert.match(r.out, /^usage: rabbit serve\b/);
  assert.match(r.out, /--api-key KEY[\s\S]*--max-batch N[\s\S]*--model/);
  const badPort = await run(["serve", "--port", "http"]);
  assert.equal(badPort.code, 1);
  assert.match(badPort.err, /--port/);
  const badBatch = await run(["serve", "--max-batch", "0"]);
  assert.equal(badBatch.code, 1);
  assert.match(badBatch.err, /--max-batch/);
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = String((taken.addr as Deno.NetAddr).port);
  const busy = await run(["serve", "--port", port, "-q"]);
  assert.equal(busy.code, 1);
  assert.match(busy.err, new RegExp(`--port ${port}: the address is in use`));
});

Deno.test("cli: rabbit serve with its documented permissions answers, then stops on SIGINT", async () => {
  const child = new Deno.Command("deno", {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-net=127.0.0.1",
      `--allow-ffi=${ROOT}build`,
      "--allow-sys=systemMemoryInfo",
      `${ROOT}cli.ts`,
      "serve",
      "--model",
      `${ROOT}models/stories260k`,
      "--port",
      "0",
      "--api-key",
      KEY,
      "-q",
    ],
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let err = "";
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  const read = async (re: RegExp) => {
    while (!re.test(err)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`rabbit serve ended:\n${err}`);
      err += value;
    }
    return re.exec(err)!;
  };
  try {
    const url = (await read(/listening on (http:\/\/127\.0\.0\.1:\d+)\/v1/))[1];
    await read(/"stories260k" ready/);
    const client = new OpenAI({ apiKey: KEY, baseURL: `${url}/v1`, maxRetries: 0 });
    assert.deepEqual((await client.models.list()).data.map((m) => m.id), ["stories260k"]);
    const c = await client.completions.create({
      model: "stories260k",
      prompt: "Once upon a time",
      max_tokens: 8,
      temperature: 0,
    });
    assert.equal(c.usage?.completion_tokens, 8);
    await read(/POST \/v1\/completions 200 in=\d+ out=8/);
    child.kill("SIGINT");
    const [status] = await Promise.all([child.status, read(/stopped/).catch(() => null)]);
    assert.equal(status.code, 0, err);
    assert.ok(!err.includes(KEY), "the key is never printed");
  } finally {
    try {
      child.kill();
    } catch { /* exited */ }
    await reader.cancel().catch(() => {});
    await child.status;
    await child.stdout.cancel().catch(() => {});
  }
});

Deno.test("serve: cleanup", async () => {
  if (!shared) return;
  shared.model.close();
  await Deno.remove(shared.dir, { recursive: true });
  shared = null;
});
