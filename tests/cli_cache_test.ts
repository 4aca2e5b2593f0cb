/**
 * `rabbit pull`, `rabbit list` and `rabbit rm` against the fake hub on 127.0.0.1, in a temp
 * Hugging Face cache (HF_HUB_CACHE) that also holds a repo laid out by hand as Python's
 * huggingface_hub writes it. Needs the test task's permissions: unscoped --allow-read and
 * --allow-write (the cache's symlinks), --allow-net=127.0.0.1, the HF_* variables.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { run } from "./_cli.ts";
import { AutoModel } from "../mod.ts";
import { type CachedModel, listCachedModels } from "../lib/cache.ts";
import { FakeHub, HUB_ENV } from "./fake_hub.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const STORIES = `${ROOT}models/stories260k`;
const GGUF = Deno.readFileSync(`${ROOT}tests/fixtures/gguf_llama_q8_0/model.gguf`);
const STORIES_FILES = [
  "config.json",
  "model.safetensors",
  "tokenizer.json",
  "tokenizer_config.json",
];

interface Ctx {
  hub: FakeHub;
  /** HF_HUB_CACHE. */
  cache: string;
  /** A temp folder outside the cache. */
  tmp: string;
}

/**
 * Runs `fn` with the fake hub (stories260k as karpathy/stories260k, two GGUF files in
 * acme/tiny-GGUF) as HF_ENDPOINT and an empty temp cache as HF_HUB_CACHE; the HF_* variables are
 * restored after (and no token file of the developer is read).
 */
function cacheTest(name: string, fn: (t: Ctx) => Promise<void>) {
  Deno.test(name, async () => {
    const files: Record<string, Uint8Array> = {};
    for (const f of STORIES_FILES) files[f] = await Deno.readFile(`${STORIES}/${f}`);
    await using hub = FakeHub.start([
      { id: "karpathy/stories260k", branches: { main: files } },
      {
        id: "acme/tiny-GGUF",
        branches: {
          main: {
            "README.md": "# quants",
            "tiny-Q8_0.gguf": GGUF,
            "tiny-F16.gguf": new Uint8Array(200_000).fill(7),
          },
        },
      },
    ]);
    const saved = new Map(HUB_ENV.map((k) => [k, Deno.env.get(k)]));
    const tmp = await Deno.makeTempDir({ prefix: "rabbit-cli-cache-" });
    try {
      for (const k of HUB_ENV) Deno.env.delete(k);
      Deno.env.set("HF_HUB_CACHE", `${tmp}/hub`);
      Deno.env.set("HF_ENDPOINT", hub.url);
      Deno.env.set("HF_TOKEN_PATH", `${tmp}/no-token-here`);
      await fn({ hub, cache: `${tmp}/hub`, tmp });
    } finally {
      for (const [k, v] of saved) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
      await Deno.remove(tmp, { recursive: true });
    }
  });
}

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const gitSha1 = (b: Uint8Array) =>
  createHash("sha1").update(`blob ${b.length}\0`).update(b).digest("hex");
const exists = (p: string) => {
  try {
    Deno.lstatSync(p);
    return true;
  } catch {
    return false;
  }
};

/**
 * A repo as Python's huggingface_hub leaves it: blobs named by hash, relative symlinks from the
 * snapshot, refs/main; plus a partial download (`.incomplete`).
 */
async function pythonRepo(cache: string): Promise<{ dir: string; bytes: number }> {
  const dir = `${cache}/models--py-org--made`;
  const commit = "0123456789abcdef0123456789abcdef01234567";
  const config = new TextEncoder().encode(JSON.stringify({
    architectures: ["Qwen2ForCausalLM"],
    model_type: "qwen2",
  }));
  const weights = new Uint8Array(5000).fill(3);
  await Deno.mkdir(`${dir}/blobs`, { recursive: true });
  await Deno.mkdir(`${dir}/snapshots/${commit}`, { recursive: true });
  await Deno.mkdir(`${dir}/refs`, { recursive: true });
  await Deno.writeTextFile(`${dir}/refs/main`, commit);
  for (
    const [name, data, blob] of [
      ["config.json", config, gitSha1(config)],
      ["model.safetensors", weights, sha256(weights)],
    ] as const
  ) {
    await Deno.writeFile(`${dir}/blobs/${blob}`, data);
    await Deno.symlink(`../../blobs/${blob}`, `${dir}/snapshots/${commit}/${name}`);
  }
  await Deno.writeFile(`${dir}/blobs/${"f".repeat(64)}.incomplete`, new Uint8Array(700));
  return { dir, bytes: config.length + weights.length + 700 };
}

cacheTest("cli pull: the HF cache layout, GGUF files one by one, one-line errors", async (t) => {
  const r = await run(["pull", "karpathy/stories260k", "-q"]);
  assert.equal(r.code, 0, r.err);
  const commit = t.hub.commit("karpathy/stories260k", "main");
  const repo = `${t.cache}/models--karpathy--stories260k`;
  assert.equal(
    r.out.replace(/[\d.]+ MB/, "N MB"),
    `pulled karpathy/stories260k (main → ${
      commit.slice(0, 7)
    }): 4 files, N MB in ${repo}/snapshots/${commit}\n`,
  );
  assert.equal(await Deno.readTextFile(`${repo}/refs/main`), commit);
  for (const f of STORIES_FILES) {
    const pointer = `${repo}/snapshots/${commit}/${f}`;
    assert.ok(Deno.lstatSync(pointer).isSymlink, f);
    assert.equal(
      Deno.readLinkSync(pointer),
      `../../blobs/${t.hub.blobName("karpathy/stories260k", "main", f)}`,
    );
    assert.deepEqual(await Deno.readFile(pointer), await Deno.readFile(`${STORIES}/${f}`));
  }
  // A second pull finds everything in the cache: no file is fetched again.
  const before = t.hub.requests.length;
  assert.equal((await run(["pull", "karpathy/stories260k", "-q"])).code, 0);
  assert.ok(t.hub.requests.slice(before).every((q) => !q.path.includes("/resolve/")));

  // GGUF: only the file asked for.
  const g = await run(["pull", "acme/tiny-GGUF", "--gguf-file", "tiny-Q8_0.gguf", "-q"]);
  assert.equal(g.code, 0, g.err);
  assert.match(g.out, /^pulled acme\/tiny-GGUF \(main → [0-9a-f]{7}\): tiny-Q8_0\.gguf, /);
  const files = t.hub.requests.filter((q) => q.path.includes("/resolve/")).map((q) => q.path);
  assert.ok(files.some((p) => p.endsWith("/tiny-Q8_0.gguf")));
  assert.ok(!files.some((p) => p.includes("F16") || p.includes("README")), files.join());

  // Errors: one line, exit 1.
  const noFile = await run(["pull", "acme/tiny-GGUF", "-q"]);
  assert.equal(noFile.code, 1);
  assert.match(
    noFile.err,
    /^rabbit pull: HubError: .*--gguf-file.*tiny-F16\.gguf, tiny-Q8_0\.gguf\n$/,
  );
  const missing = await run(["pull", "acme/tiny-GGUF", "--gguf-file", "nope.gguf", "-q"]);
  assert.equal(missing.code, 1);
  assert.match(
    missing.err,
    /^rabbit pull: HubError: acme\/tiny-GGUF@main: nope\.gguf: no such file/,
  );
  const unknown = await run(["pull", "nobody/nothing", "-q"]);
  assert.equal(unknown.code, 1);
  assert.match(unknown.err, /^rabbit pull: HubError: nobody\/nothing@main: .*\n$/);
  assert.equal(unknown.err.split("\n").length, 2);
  const badName = await run(["pull", "acme/tiny-GGUF", "--gguf-file", "../x.gguf"]);
  assert.equal(badName.code, 1);
  assert.match(badName.err, /--gguf-file: expected a \.gguf file name inside the repo/);
  assert.equal((await run(["pull"])).code, 2);
  assert.equal((await run(["pull", "a/b", "c/d"])).code, 2);
});

cacheTest("cli pull resumes a partial download where it stopped", async (t) => {
  const blob = t.hub.blobName("karpathy/stories260k", "main", "model.safetensors");
  const data = await Deno.readFile(`${STORIES}/model.safetensors`);
  const blobs = `${t.cache}/models--karpathy--stories260k/blobs`;
  await Deno.mkdir(blobs, { recursive: true });
  await Deno.writeFile(`${blobs}/${blob}.incomplete`, data.subarray(0, 400_000));
  const r = await run(["pull", "karpathy/stories260k", "-q"]);
  assert.equal(r.code, 0, r.err);
  const cdn = t.hub.requests.filter((q) => q.server === "cdn");
  assert.deepEqual(cdn.map((q) => q.range), ["bytes=400000-"]);
  assert.deepEqual(await Deno.readFile(`${blobs}/${blob}`), data);
  assert.ok(!exists(`${blobs}/${blob}.incomplete`));
});

cacheTest("cli list: size, architecture or GGUF files, splits; Python's repos too", async (t) => {
  const empty = await run(["list"]);
  assert.equal(empty.code, 0, empty.err);
  assert.equal(empty.out, `no models in the Hugging Face cache (${t.cache})\n`);

  assert.equal((await run(["pull", "karpathy/stories260k", "-q"])).code, 0);
  assert.equal(
    (await run(["pull", "acme/tiny-GGUF", "--gguf-file", "tiny-Q8_0.gguf", "-q"])).code,
    0,
  );
  const py = await pythonRepo(t.cache);
  // A complete split (rabbit split) and one that stopped before its manifest.
  const split = await run(["split", "--model", "karpathy/stories260k", "-q"]);
  assert.equal(split.code, 0, split.err);
  const snap = `${t.cache}/models--karpathy--stories260k/snapshots/${
    t.hub.commit("karpathy/stories260k", "main")
  }`;
  assert.ok(split.out.endsWith(`${snap}/rabbitllm_split_float32\n`), split.out);
  await Deno.mkdir(`${snap}/rabbitllm_split_q8_0`);
  await Deno.writeFile(`${snap}/rabbitllm_split_q8_0/embed.safetensors`, new Uint8Array(1000));

  const r = await run(["list"]);
  assert.equal(r.code, 0, r.err);
  const lines = r.out.trimEnd().split("\n");
  assert.equal(lines.length, 4, r.out);
  assert.match(lines[0], /^NAME +SIZE +MODEL +SPLITS +MODIFIED$/);
  assert.match(lines[1], /^acme\/tiny-GGUF +[\d.]+ kB +GGUF: tiny-Q8_0\.gguf +- +just now$/);
  assert.match(
    lines[2],
    /^karpathy\/stories260k +[\d.]+ MB +llama \(LlamaForCausalLM\) +float32, q8_0 \(incomplete\) +just now$/,
  );
  assert.match(
    lines[3],
    /^py-org\/made +[\d.]+ kB \(partial download\) +qwen2 \(Qwen2ForCausalLM\) +- +(just now|\d+ \w+ ago)$/,
  );
  assert.equal((await run(["ls"])).out, r.out);

  const j = await run(["list", "--json"]);
  assert.equal(j.code, 0, j.err);
  const models: CachedModel[] = JSON.parse(j.out);
  assert.deepEqual(models.map((m) => m.repoId), [
    "acme/tiny-GGUF",
    "karpathy/stories260k",
    "py-org/made",
  ]);
  const [gguf, stories, made] = models;
  assert.equal(gguf.bytes, GGUF.length);
  assert.deepEqual(gguf.ggufFiles, ["tiny-Q8_0.gguf"]);
  // Blobs once each (the snapshot symlinks are not counted), the splits' files.
  let blobBytes = 0;
  for (const f of STORIES_FILES) blobBytes += (await Deno.stat(`${STORIES}/${f}`)).size;
  const splitBytes = stories.splits.reduce((n, s) => n + s.bytes, 0);
  assert.equal(stories.bytes, blobBytes + splitBytes);
  assert.deepEqual(
    stories.splits.map((s) => [s.name, s.complete]),
    [["float32", true], ["q8_0", false]],
  );
  assert.equal(stories.splits[1].bytes, 1000);
  assert.equal(stories.architecture, "LlamaForCausalLM");
  assert.deepEqual(stories.refs, { main: t.hub.commit("karpathy/stories260k", "main") });
  assert.equal(made.bytes, py.bytes);
  assert.equal(made.incompleteBytes, 700);
  assert.equal(made.modelType, "qwen2");
  assert.deepEqual(await listCachedModels(t.cache), await listCachedModels());
});

cacheTest("cli rm: asks unless -y, removes blobs/snapshots/refs/locks and splits", async (t) => {
  assert.equal((await run(["pull", "karpathy/stories260k", "-q"])).code, 0);
  assert.equal(
    (await run(["pull", "acme/tiny-GGUF", "--gguf-file", "tiny-Q8_0.gguf", "-q"])).code,
    0,
  );
  assert.equal((await run(["split", "--model", "karpathy/stories260k", "-q"])).code, 0);
  const py = await pythonRepo(t.cache);
  const stories = `${t.cache}/models--karpathy--stories260k`;
  assert.ok(exists(`${t.cache}/.locks/models--karpathy--stories260k`));

  // Declined, or no answer at all: nothing is removed, exit 1.
  const no = await run(["rm", "karpathy/stories260k"], ["n"]);
  assert.equal(no.code, 1);
  assert.match(
    no.err,
    /^remove karpathy\/stories260k \([\d.]+ MB, splits float32\) from .*\? \[y\/N\] /,
  );
  assert.match(no.err, /rabbit rm: karpathy\/stories260k not removed \(answer y, or pass -y\)\n$/);
  assert.ok(exists(stories));
  assert.equal((await run(["rm", "karpathy/stories260k"], [])).code, 1);
  assert.ok(exists(stories));

  const yes = await run(["rm", "karpathy/stories260k"], ["y"]);
  assert.equal(yes.code, 0, yes.err);
  assert.match(yes.out, /^removed karpathy\/stories260k \([\d.]+ MB\)\n$/);
  assert.ok(!exists(stories));
  assert.ok(!exists(`${t.cache}/.locks/models--karpathy--stories260k`));
  assert.doesNotMatch((await run(["list"])).out, /stories260k/);

  // Every name is checked before anything is removed.
  const partly = await run(["rm", "-y", "acme/tiny-GGUF", "nobody/here"]);
  assert.equal(partly.code, 1);
  assert.match(
    partly.err,
    /^rabbit rm: CheckpointError: nobody\/here: not in the Hugging Face cache/,
  );
  assert.ok(exists(`${t.cache}/models--acme--tiny-GGUF`));

  // Paths outside the cache are refused: a folder elsewhere, .., a cache entry linking out.
  const outside = `${t.tmp}/models--evil--elsewhere`;
  await Deno.mkdir(outside);
  await Deno.writeTextFile(`${outside}/keep`, "x");
  await Deno.symlink(outside, `${t.cache}/models--evil--link`);
  for (const name of [outside, `${t.cache}/../models--evil--elsewhere`, "../hub", "evil/link"]) {
    const r = await run(["rm", "-y", name]);
    assert.equal(r.code, 1, name);
    assert.match(
      r.err,
      /^rabbit rm: InputError: .*rabbit rm removes only models of the Hugging Face cache/,
    );
    assert.equal(r.err.split("\n").length, 2);
  }
  assert.ok(exists(`${outside}/keep`));
  assert.ok(exists(`${t.cache}/models--evil--link`));
  assert.ok(exists(t.cache));

  // Several at once, one by its cache path.
  const both = await run(["rm", "-y", "acme/tiny-GGUF", py.dir]);
  assert.equal(both.code, 0, both.err);
  assert.match(both.out, /^removed acme\/tiny-GGUF \(.*\)\nremoved py-org\/made \(.*\)\n$/);
  assert.ok(!exists(`${t.cache}/models--acme--tiny-GGUF`) && !exists(py.dir));
  assert.equal((await run(["rm"])).code, 2);
});

cacheTest("cli run: an ORG/NAME from the hub, a prompt, then exit", async () => {
  const r = await run([
    "run",
    "karpathy/stories260k",
    "Once",
    "upon",
    "a",
    "time",
    "-n",
    "20",
    "-q",
  ]);
  assert.equal(r.code, 0, r.err);
  await using model = await AutoModel.fromPretrained(STORIES);
  const prompt = "Once upon a time";
  const [ids] = await model.generate(prompt, { maxNewTokens: 20 });
  const n = model.tokenizer!.encode(prompt).length;
  assert.equal(
    r.out,
    prompt + model.tokenizer!.decode(ids.slice(n), { skipSpecialTokens: true }) + "\n",
  );
});
