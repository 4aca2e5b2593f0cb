import assert from "node:assert/strict";
import { main } from "../cli.ts";
import { AutoModel } from "../mod.ts";
import { FakeHub } from "./fake_hub.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const STORIES = `${ROOT}models/stories260k`;

async function run(args: string[], input?: string[]) {
  let out = "", err = "";
  const code = await main(args, {
    out: (s) => out += s,
    err: (s) => err += s,
    input: input
      ? (async function* () {
        yield* input;
      })()
      : undefined,
  });
  return { code, out, err };
}

/** stories260k weights with a tokenizer that has a chat template (Llama-2 [INST], same vocab). */
async function chatModel(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "rabbit-chat-" });
  for (const f of ["config.json", "model.safetensors"]) {
    await Deno.copyFile(`${STORIES}/${f}`, `${dir}/${f}`);
  }
  const tok = `${ROOT}tests/fixtures/tokenizers/llama_legacy`;
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(`${tok}/${f}`, `${dir}/${f}`);
  }
  return dir;
}

Deno.test("cli: --help lists the commands; each command has --help; bad usage exits 2", async () => {
  const h = await run(["--help"]);
  assert.equal(h.code, 0);
  for (const c of ["generate", "chat", "split", "info"]) {
    assert.match(h.out, new RegExp(`\\b${c}\\b`));
  }
  for (const c of ["generate", "chat", "split", "info"]) {
    const r = await run([c, "--help"]);
    assert.equal(r.code, 0);
    assert.match(r.out, /--model/);
  }
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
  // stories260k: 5 layers of 111 kB; a 1 MB limit leaves no room beside the runtime itself.
  const tight = await run(["info", "--model", STORIES, "--memory", "1M"]);
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
  const cmd = new Deno.Command("deno", {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      `--allow-ffi=${ROOT}build`,
      "--allow-sys=systemMemoryInfo",
      `${ROOT}cli.ts`,
      "generate",
      "--model",
      STORIES,
      "--prompt",
      "Once upon a time",
      "-n",
      "30",
      "--profile",
    ],
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
  });
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
