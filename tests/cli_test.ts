import assert from "node:assert/strict";
import { chatModel, cliProcess, run } from "./_cli.ts";
import { AutoModel, type ChatMessage, InputError } from "../mod.ts";
import { fitChat } from "../cli.ts";
import { FakeHub } from "./fake_hub.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const STORIES = `${ROOT}models/stories260k`;

Deno.test("cli: --help lists the commands; each command has --help; bad usage exits 2", async () => {
  const h = await run(["--help"]);
  assert.equal(h.code, 0);
  const all = ["run", "pull", "list", "rm", "bench", "generate", "chat", "split", "info"];
  for (const c of all) assert.match(h.out, new RegExp(`^  ${c} +\\S`, "m"));
  for (const c of ["generate", "chat", "split", "info", "run", "bench"]) {
    const r = await run([c, "--help"]);
    assert.equal(r.code, 0);
    assert.match(r.out, /--model/);
  }
  for (const c of all) {
    const r = await run([c, "-h"]);
    assert.equal(r.code, 0);
    assert.match(r.out, new RegExp(`^usage: rabbit ${c}\\b`));
  }
  assert.equal((await run(["ls", "--help"])).out, (await run(["list", "--help"])).out);
  assert.match((await run(["pull", "--help"])).out, /--gguf-file NAME/);
  assert.match((await run(["rm", "--help"])).out, /-y, --yes/);
  assert.match((await run(["bench", "--help"])).out, /--prompt-len N[\s\S]*--max-new-tokens N/);
  assert.equal((await run(["run"])).code, 2);
  assert.equal((await run(["list", "extra"])).code, 2);
  assert.equal((await run(["bench", "a", "b"])).code, 2);
  assert.equal((await run(["fly"])).code, 2);
  assert.equal((await run(["generate", "--no-such-flag"])).code, 2);
});

Deno.test("cli: info reports sizes read from the headers", async () => {
  const r = await run(["info", "--model", STORIES, "--json"]);
  assert.equal(r.code, 0, r.err);
  const i = JSON.parse(r.out);
  // dim 64, hidden 172, 5 layers, 8 heads / 4 kv (head 8), vocab 512, tied
  const layer = 64 * 2 + 64 * 64 * 2 + 32 * 64 * 2 + 172 * 64 * 3;
  assert.equal(i.parameters, 512 * 64 + 5 * layer + 64);
  assert.equal(i.layerBytes.max, layer * 4);
  assert.equal(i.streamedPerToken, 5 * layer * 4 + 512 * 64 * 4);
  assert.equal(i.kvCacheBytes, 2 * 5 * 32 * 512 * 4);
});

Deno.test("cli: info of a MoE checkpoint counts only the routed experts per token", async () => {
  const mixtral = new URL("./fixtures/mixtral", import.meta.url).pathname;
  const r = await run(["info", "--model", mixtral, "--json"]);
  assert.equal(r.code, 0, r.err);
  const i = JSON.parse(r.out);
  // hidden 64, 4 q / 2 kv heads of 16, 2 layers, 4 experts of intermediate 32, top 2, vocab 256
  const attn = 64 * 64 * 2 + 32 * 64 * 2 + 64 * 2, router = 4 * 64, expert = 3 * 32 * 64;
  assert.deepEqual(i.experts, { perLayer: 4, perToken: 2 });
  assert.equal(i.layerBytes.max, (attn + router + 4 * expert) * 4);
  assert.equal(i.streamedPerToken, 2 * (attn + router + 2 * expert) * 4 + 256 * 64 * 4);
});

Deno.test("cli: info --memory prints the plan for that limit, with a measured prediction", async () => {
  // stories260k: 5 layers of 111 kB; a 1 MB limit leaves no room beside the runtime itself: the
  // planner refuses (MemoryLimitError), and info says so as its answer.
  const none = await run(["info", "--model", STORIES, "--memory", "1M"]);
  assert.equal(none.code, 0, none.err);
  assert.match(
    none.out,
    /memory plan\n {2}does not run in this limit: host memory: the model needs at least [\d.]+ MiB/,
  );
  const noneJson = await run(["info", "--model", STORIES, "--memory", "1M", "--json"]);
  const refused = JSON.parse(noneJson.out).memory.refused;
  assert.equal(refused.available, 0);
  assert.equal(refused.needed, refused.parts.work + refused.parts.small + refused.parts.layer);
  // 8 MiB beyond this command's own RSS (read from a roomy run's budget): above the least plan,
  // below the runtime margin, so every layer streams from disk.
  const probe = JSON.parse(
    (await run(["info", "--model", STORIES, "--memory", "64G", "--json"])).out,
  );
  const rss = 64 * 2 ** 30 - probe.memory.plan.budget.host;
  const tight = await run(["info", "--model", STORIES, "--memory", String(rss + 8 * 2 ** 20)]);
  assert.equal(tight.code, 0, tight.err);
  assert.match(
    tight.out,
    /memory plan\n {2}layers 0–4 \(5, [\d.]+ kB\): streamed from disk each step/,
  );
  assert.match(tight.out, /per decoded token: [\d.]+ kB from memory, [\d.]+ kB from disk/);
  assert.match(
    tight.out,
    /measured: memory [\d.]+ GB\/s, disk [\d.]+ GB\/s → predicted [\d.]+ s\/token/,
  );
  const roomy = await run(["info", "--model", STORIES, "--memory", "64G", "--json"]);
  assert.equal(roomy.code, 0, roomy.err);
  const plan = JSON.parse(roomy.out).memory.plan;
  assert.deepEqual(plan.tiers, Array(5).fill("resident"));
  assert.equal(plan.dropBehind, false);
  const gpu = await run(["info", "--model", STORIES, "--gpu-memory", "8G", "--memory", "64G"]);
  assert.equal(gpu.code, 0, gpu.err);
  assert.match(gpu.out, /layers 0–4 \(5, [\d.]+ kB\): resident/);
  const bad = await run(["info", "--model", STORIES, "--memory", "lots"]);
  assert.equal(bad.code, 1);
  assert.match(bad.err, /--memory: expected a size like 400M or 8G, got lots/);
});

Deno.test("cli: split writes the per-layer files once", async () => {
  const out = await Deno.makeTempDir();
  const first = await run(["split", "--model", STORIES, "--split-dir", out, "-q"]);
  assert.equal(first.code, 0, first.err);
  assert.match(first.out, /^wrote 7 parts/);
  assert.match(
    (await run(["split", "--model", STORIES, "--split-dir", out])).out,
    /^reused 7 parts/,
  );
});

Deno.test("cli: errors are one line naming the problem, exit 1", async () => {
  const r = await run(["info", "--model", "/nonexistent/model"]);
  assert.equal(r.code, 1);
  assert.match(r.err, /CheckpointError: \/nonexistent\/model: no such directory/);
});

Deno.test("cli: rabbit generate runs end to end in a subprocess", async () => {
  const cmd = cliProcess([
    "generate",
    "--model",
    STORIES,
    "--prompt",
    "Once upon a time",
    "-n",
    "30",
    "--profile",
  ]);
  const r = await cmd.output();
  const out = new TextDecoder().decode(r.stdout), err = new TextDecoder().decode(r.stderr);
  assert.equal(r.code, 0, err);
  await using model = await AutoModel.fromPretrained(STORIES);
  const [ids] = await model.generate("Once upon a time", { maxNewTokens: 30 });
  const n = model.tokenizer!.encode("Once upon a time").length;
  const want = "Once upon a time" +
    model.tokenizer!.decode(ids.slice(n), { skipSpecialTokens: true });
  assert.equal(out, want + "\n");
  assert.match(err, /30 tokens in [\d.]+ s/);
  assert.match(err, /layers/);
});

Deno.test("cli: SIGINT during rabbit generate stops it mid-stream; the next run works", async () => {
  const split = await Deno.makeTempDir({ prefix: "rabbit-sigint-" });
  const args = (n: number) => [
    "generate",
    "--model",
    STORIES,
    "--split-dir",
    split,
    "--prompt",
    "Once upon a time",
    "-n",
    String(n),
    "-q",
  ];
  const child = (n: number) => cliProcess(args(n)).spawn();
  const p = child(480);
  // Interrupt once the story is streaming (the split is written by then).
  const reader = p.stdout.getReader();
  let seen = "";
  while (seen.length < 40) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += new TextDecoder().decode(value);
  }
  p.kill("SIGINT");
  reader.releaseLock();
  const [status] = await Promise.all([p.status, p.stdout.cancel(), p.stderr.cancel()]);
  assert.ok(!status.success, "interrupted, not finished");
  assert.ok(status.signal === "SIGINT" || status.code === 130, JSON.stringify(status));
  // The split it left is complete (it was reused) and a new run generates as before.
  const again = await child(12).output();
  assert.equal(again.code, 0, new TextDecoder().decode(again.stderr));
  assert.ok(new TextDecoder().decode(again.stdout).startsWith(seen.slice(0, 20)));
  await Deno.remove(split, { recursive: true });
});

Deno.test("cli: SIGINT during a chat reply stops the reply, the chat goes on; at the prompt it ends the chat", async () => {
  const dir = await chatModel();
  try {
    // The reply must still be streaming when the signal lands: a long one, interrupted early. On a
    // machine fast enough to finish it first, the attempt is repeated.
    for (let attempt = 1;; attempt++) {
      const p = cliProcess(["chat", "--model", dir, "-n", "300", "-q"], "piped").spawn();
      const w = p.stdin.getWriter();
      const reader = p.stdout.getReader();
      let out = "";
      const until = async (done: (s: string) => boolean) => {
        while (!done(out)) {
          const r = await reader.read();
          if (r.done) break;
          out += new TextDecoder().decode(r.value);
        }
      };
      const say = (line: string) => w.write(new TextEncoder().encode(line + "\n"));
      await until((s) => s.startsWith("> "));
      await say("Tell me a story");
      await until((s) => s.length > 40);
      p.kill("SIGINT");
      await until((s) => s.indexOf("\n> ") > 0);
      const first = out.slice(2, out.indexOf("\n> "));
      await say("Hello");
      const mark = out.length;
      await until((s) => s.slice(mark).includes("\n> "));
      const second = out.slice(mark, out.indexOf("\n> ", mark));
      p.kill("SIGINT"); // at the prompt: the chat ends
      await until(() => false);
      await w.close().catch(() => {});
      const [status, err] = await Promise.all([p.status, new Response(p.stderr).text()]);
      if (!err.includes("[interrupted]") && attempt < 3) continue; // the first reply had ended
      assert.match(err, /\[interrupted\]/, "the first reply was cut short");
      assert.equal(status.code, 130, err);
      // The conversation goes on from the cut reply exactly as a fresh model continues that
      // conversation (the KV cache kept from the cut reply was consistent).
      assert.ok(first.length > 0);
      await using m = await AutoModel.fromPretrained(dir, { quiet: true });
      const messages = [
        { role: "user" as const, content: "Tell me a story" },
        { role: "assistant" as const, content: first },
        { role: "user" as const, content: "Hello" },
      ];
      const t = m.tokenizer!;
      const prompt = t.encode(t.applyChatTemplate(messages, { addGenerationPrompt: true }), {
        addSpecialTokens: false,
      });
      const [ids] = await m.generate(messages, { maxNewTokens: 300 });
      // decode() drops a first token's leading space; the streamed reply keeps it.
      const want = t.decode(ids.slice(prompt.length), { skipSpecialTokens: true });
      assert.equal(second.trimStart(), want.trimStart());
      break;
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: a chat past --max-seq-len drops its oldest exchanges and goes on", async () => {
  const dir = await chatModel();
  try {
    const lines = Array.from({ length: 6 }, (_, i) => `Tell me story ${i} about a cat and a dog`);
    const r = await run(
      ["chat", "--model", dir, "-n", "40", "-q", "--max-seq-len", "128"],
      [...lines, ""],
    );
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /\[context full: the \d+ oldest messages were dropped\]/);
    assert.equal(r.out.split("> ").length - 1, lines.length + 1, "every line got its turn");

    // fitChat itself, on the same tokenizer: exact lengths from the chat template.
    await using model = await AutoModel.fromPretrained(dir);
    const t = model.tokenizer!;
    const len = (m: ChatMessage[]) =>
      t.encode(t.applyChatTemplate(m, { addGenerationPrompt: true }), { addSpecialTokens: false })
        .length;
    const sys = { role: "system", content: "You tell short stories." };
    const turn = (role: string, i: number) => ({ role, content: `${role} turn ${i} about a dog` });
    const all = [
      sys,
      turn("user", 1),
      turn("assistant", 1),
      turn("user", 2),
      turn("assistant", 2),
      turn("user", 3),
    ];
    const kept = [sys, turn("user", 2), turn("assistant", 2), turn("user", 3)];
    const lm = (maxSeqLen: number) => ({ config: model.config, tokenizer: t, maxSeqLen });
    // Room for 10 new tokens once the first exchange is gone: exactly that one is dropped.
    const m1 = structuredClone(all);
    assert.deepEqual(fitChat(lm(len(kept) + 10), m1, 40, 10), { dropped: 2, maxNewTokens: 10 });
    assert.deepEqual(m1, kept);
    // Enough room: nothing dropped, the reply capped by what is left.
    const m2 = structuredClone(all);
    assert.deepEqual(fitChat(lm(len(all) + 30), m2, 40, 10), { dropped: 0, maxNewTokens: 30 });
    assert.deepEqual(m2, all);
    // The system message and the newest turn always stay; alone too long, they are refused.
    const m3 = structuredClone(all);
    assert.throws(() => fitChat(lm(len([sys, turn("user", 3)])), m3, 40, 10), InputError);
    assert.deepEqual(m3, [sys, turn("user", 3)]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: chat keeps the KV cache across turns and answers like a fresh run", async () => {
  const dir = await chatModel();
  try {
    const r = await run(["chat", "--model", dir, "-n", "12", "-q", "--profile"], [
      "Hello",
      "Tell me a story",
      "",
    ]);
    assert.equal(r.code, 0, r.err);
    const replies = r.out.split("> ").map((s) => s.trim()).filter(Boolean);
    assert.equal(replies.length, 2, r.out);
    // The same conversation from scratch (no cache reuse) gives the same second reply.
    await using model = await AutoModel.fromPretrained(dir);
    const first = await model.generate([{ role: "user", content: "Hello" }], { maxNewTokens: 12 });
    const t = model.tokenizer!;
    const firstText = t.decode(
      first[0].slice(
        t.encode(
          t.applyChatTemplate([{ role: "user", content: "Hello" }], { addGenerationPrompt: true }),
          { addSpecialTokens: false },
        ).length,
      ),
      { skipSpecialTokens: true },
    );
    assert.equal(replies[0], firstText.trim());
    // Turn 2 fed only what the cache lacked: fewer tokens than both prompts in full.
    const fed = Number(/\d+ steps, (\d+) tokens/.exec(r.err)![1]);
    const turn2 = [
      { role: "user", content: "Hello" },
      { role: "assistant", content: replies[0] },
      { role: "user", content: "Tell me a story" },
    ];
    const len = (m: typeof turn2) =>
      t.encode(t.applyChatTemplate(m, { addGenerationPrompt: true }), { addSpecialTokens: false })
        .length;
    const fresh = len(turn2.slice(0, 1)) + 11 + len(turn2) + 11;
    assert.ok(
      fed < fresh - len(turn2.slice(0, 1)),
      `fed ${fed} tokens, fresh runs would feed ${fresh}`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli and fromPretrained: an org/name id downloads from the hub into the HF cache", async () => {
  const files: Record<string, Uint8Array> = {};
  for (const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]) {
    files[f] = await Deno.readFile(`${STORIES}/${f}`);
  }
  await using hub = FakeHub.start([{ id: "karpathy/stories260k", branches: { main: files } }]);
  const cache = await Deno.makeTempDir();
  const old = Deno.env.get("HF_HUB_CACHE");
  Deno.env.set("HF_HUB_CACHE", cache);
  try {
    await using model = await AutoModel.fromPretrained("karpathy/stories260k", {
      hubUrl: hub.url,
      quiet: true,
    });
    const [ids] = await model.generate([[1]], { maxNewTokens: 20 });
    await using local = await AutoModel.fromPretrained(STORIES);
    assert.deepEqual(ids, (await local.generate([[1]], { maxNewTokens: 20 }))[0]);
    // Offline, the cached snapshot is used without a request.
    const before = hub.requests.length;
    await using offline = await AutoModel.fromPretrained("karpathy/stories260k", { offline: true });
    assert.equal(hub.requests.length, before);
    assert.equal(offline.config.vocabSize, 512);
  } finally {
    if (old === undefined) Deno.env.delete("HF_HUB_CACHE");
    else Deno.env.set("HF_HUB_CACHE", old);
  }
});

Deno.test("temperature 0 is greedy: GenerateOptions and rabbit generate / run", async () => {
  // stories260k with a generation_config.json that samples by default.
  const dir = await Deno.makeTempDir({ prefix: "rabbit-t0-" });
  try {
    for (
      const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    ) {
      await Deno.copyFile(`${STORIES}/${f}`, `${dir}/${f}`);
    }
    await Deno.writeTextFile(
      `${dir}/generation_config.json`,
      JSON.stringify({ do_sample: true, temperature: 0.9, top_k: 40, max_new_tokens: 30 }),
    );
    await using model = await AutoModel.fromPretrained(dir, { quiet: true });
    const prompt = "Once upon a time";
    const [greedy] = await model.generate(prompt, { maxNewTokens: 30, doSample: false });
    const [sampled] = await model.generate(prompt, { maxNewTokens: 30, seed: 3 });
    assert.notDeepEqual(sampled, greedy, "the checkpoint's default samples");
    for (const seed of [1, 2]) {
      assert.deepEqual(
        (await model.generate(prompt, { maxNewTokens: 30, temperature: 0, seed }))[0],
        greedy,
      );
    }
    await assert.rejects(
      model.generate(prompt, { doSample: true, temperature: 0 }),
      (e) =>
        e instanceof InputError && /temperature must be > 0 when doSample is true/.test(e.message),
    );
    await assert.rejects(model.generate(prompt, { temperature: -1 }), /temperature must be > 0/);

    const n = model.tokenizer!.encode(prompt).length;
    const want = prompt + model.tokenizer!.decode(greedy.slice(n), { skipSpecialTokens: true }) +
      "\n";
    for (
      const args of [
        ["generate", "--prompt", prompt, "--temperature", "0", "--seed", "5"],
        ["generate", "--prompt", prompt, "-t", "0", "--top-k", "5", "--top-p", "0.5"],
        ["run", dir, prompt, "--temperature", "0"],
      ]
    ) {
      const r = await run([...args, "--model", dir, "-n", "30", "-q"]);
      assert.equal(r.code, 0, r.err);
      assert.equal(r.out, want, args.join(" "));
    }
    const bad = await run(["generate", "--model", dir, "--temperature=-1", "-q"]);
    assert.equal(bad.code, 1);
    assert.match(bad.err, /^rabbit generate: InputError: generate: temperature must be > 0 .*\n$/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli run: generates with a prompt, else chats (plain text without a template)", async () => {
  const prompt = "Once upon a time";
  const gen = await run(["generate", "--model", STORIES, "--prompt", prompt, "-n", "25", "-q"]);
  const r = await run(["run", STORIES, "Once", "upon", "a", "time", "-n", "25", "-q"]);
  assert.equal(r.code, 0, r.err);
  assert.equal(r.out, gen.out);
  assert.match(r.err, /25 tokens in [\d.]+ s/);
  // No prompt: interactive; stories260k has no chat template, so each line is continued.
  const chat = await run(["run", STORIES, "-n", "10", "-q"], ["Lily went", "Tom saw", ""]);
  assert.equal(chat.code, 0, chat.err);
  assert.match(chat.err, /has no chat template: each line is continued as plain text/);
  const turns = chat.out.split("> ").map((t) => t.trim()).filter(Boolean);
  assert.equal(turns.length, 2, chat.out);
  await using model = await AutoModel.fromPretrained(STORIES);
  for (const [i, line] of ["Lily went", "Tom saw"].entries()) {
    // The line, then its continuation as the whole sequence decodes (spaces kept).
    const [ids] = await model.generate(line, { maxNewTokens: 10 });
    assert.equal(turns[i], model.tokenizer!.decode(ids, { skipSpecialTokens: true }).trim());
  }
  // With a chat template, a prompt is one chat turn (as rabbit generate --chat).
  const dir = await chatModel();
  try {
    const a = await run(["run", dir, "Hello", "-n", "12", "-q"]);
    const b = await run(["generate", "--model", dir, "--chat", "Hello", "-n", "12", "-q"]);
    assert.equal(a.code, 0, a.err);
    assert.equal(a.out, b.out);
    const raw = await run(["run", dir, "Hello", "--raw", "-n", "12", "-q"]);
    const plain = await run(["generate", "--model", dir, "--prompt", "Hello", "-n", "12", "-q"]);
    assert.equal(raw.out, plain.out);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli bench: prefill and decode tok/s of stories260k, as a table or JSON", async () => {
  const j = await run(["bench", STORIES, "--prompt-len", "16", "-n", "8", "-r", "2", "--json"]);
  assert.equal(j.code, 0, j.err);
  const b = JSON.parse(j.out);
  assert.equal(b.promptLen, 16);
  assert.equal(b.newTokens, 8);
  assert.equal(b.prefill.runs.length, 2);
  for (const x of [b.prefill, b.decode]) {
    assert.ok(x.runs.every((t: number) => Number.isFinite(t) && t > 0), JSON.stringify(x));
    assert.ok(x.tokPerS > 0 && x.sd >= 0);
  }
  assert.equal(b.layers, 5);
  assert.equal(b.dtype, "float32");
  const t = await run(["bench", "-p", "8", "-n", "4", "-r", "1"]); // default model
  assert.equal(t.code, 0, t.err);
  const lines = t.out.trimEnd().split("\n");
  assert.match(lines[0], /stories260k: LlamaForCausalLM, float32, cpu, \d\/5 layers resident/);
  assert.match(lines[1], /^test +tokens +tok\/s +ms\/token$/);
  assert.match(lines[2], /^prefill +8 +[\d.]+ +[\d.]+$/);
  assert.match(lines[3], /^decode +4 +[\d.]+ +[\d.]+$/);
  const bad = await run(["bench", "-p", "0"]);
  assert.equal(bad.code, 1);
  assert.match(
    bad.err,
    /^rabbit bench: InputError: --prompt-len: expected a positive integer, got 0\n$/,
  );
});
