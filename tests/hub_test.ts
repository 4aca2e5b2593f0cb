import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { findCheckpoint } from "../lib/checkpoint.ts";
import { HubError } from "../lib/errors.ts";
import { openCheckpoint } from "../lib/auto_model.ts";
import { snapshotDownload, type SnapshotDownloadOptions } from "../lib/hub.ts";
import { FakeHub, type FakeRepo, HUB_ENV } from "./fake_hub.ts";

const GRANTED = "hf_granted_0123456789";
const NO_ACCESS = "hf_no_access_0123456789";

/** Deterministic pseudo-random bytes (xorshift), so LFS files are not trivially compressible. */
function bytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const config = (layers: number) =>
  JSON.stringify({ architectures: ["LlamaForCausalLM"], num_hidden_layers: layers });

const TINY_MAIN = {
  ".gitattributes": "*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
  "README.md": "# tiny\n",
  "config.json": config(2),
  "generation_config.json": JSON.stringify({ bos_token_id: 1 }),
  "tokenizer.json": JSON.stringify({ model: { type: "BPE" } }),
  "tokenizer_config.json": JSON.stringify({ bos_token: "<s>" }),
  "special_tokens_map.json": JSON.stringify({ bos_token: "<s>" }),
  "model.safetensors": bytes(300_000, 1),
  "pytorch_model.bin": bytes(1000, 2),
};
const TINY_FILES = [
  "config.json",
  "generation_config.json",
  "model.safetensors",
  "special_tokens_map.json",
  "tokenizer.json",
  "tokenizer_config.json",
];
const SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];

const GGUF = Deno.readFileSync(new URL("./fixtures/gguf_llama_q8_0/model.gguf", import.meta.url));

const REPOS: FakeRepo[] = [
  {
    id: "acme/tiny",
    branches: {
      main: TINY_MAIN,
      dev: { ...TINY_MAIN, "config.json": config(3), "model.safetensors": bytes(200_000, 3) },
    },
  },
  {
    id: "acme/sharded",
    branches: {
      main: {
        "config.json": config(2),
        "model.safetensors.index.json": JSON.stringify({
          metadata: { total_size: 1 },
          weight_map: { "a.weight": SHARDS[0], "b.weight": SHARDS[1], "c.weight": SHARDS[1] },
        }),
        [SHARDS[0]]: bytes(250_000, 4),
        [SHARDS[1]]: bytes(150_001, 5),
        "tokenizer.model": bytes(5000, 6),
        "chat_template.jinja": "{{ messages }}",
      },
    },
  },
  {
    id: "acme/gated",
    access: "gated",
    granted: [GRANTED],
    branches: { main: { "config.json": config(1), "model.safetensors": bytes(1000, 7) } },
  },
  {
    id: "acme/private",
    access: "private",
    granted: [GRANTED],
    branches: { main: { "config.json": config(1), "model.safetensors": bytes(1000, 8) } },
  },
  { id: "acme/no-weights", branches: { main: { "config.json": config(1) } } },
  {
    id: "acme/bin-sharded",
    branches: {
      main: {
        "config.json": config(2),
        "pytorch_model.bin.index.json": JSON.stringify({
          metadata: { total_size: 1 },
          weight_map: {
            "a.weight": "pytorch_model-00001-of-00002.bin",
            "b.weight": "pytorch_model-00002-of-00002.bin",
          },
        }),
        "pytorch_model-00001-of-00002.bin": bytes(2000, 10),
        "pytorch_model-00002-of-00002.bin": bytes(1500, 11),
        "training_args.bin": bytes(100, 12),
      },
    },
  },
  {
    id: "acme/bin",
    branches: { main: { "config.json": config(1), "pytorch_model.bin": bytes(1000, 13) } },
  },
  {
    id: "acme/tiny-GGUF",
    branches: {
      main: { "README.md": "# quants", "tiny-Q8_0.gguf": GGUF, "tiny-F16.gguf": bytes(300_000, 9) },
    },
  },
];

/** Parent of the cache of the one test that runs with --allow-write scoped to it. */
const SCOPED_TMP = Deno.makeTempDirSync({ prefix: "rabbit-hub-scoped-" });

/**
 * Runs `fn` with a fresh fake hub, an empty temp cache and the HF_* variables cleared (a token
 * file path that does not exist, so a developer's own login is never sent), restoring them after.
 * `scopedWrite` runs it with write permission for the temp cache only.
 */
function hubTest(
  name: string,
  fn: (t: { hub: FakeHub; cache: string; opts: SnapshotDownloadOptions }) => Promise<void>,
  scopedWrite = false,
) {
  const permissions: Deno.PermissionOptions = scopedWrite
    ? { read: "inherit", net: "inherit", env: "inherit", write: [SCOPED_TMP] }
    : "inherit";
  Deno.test({ name, permissions }, async () => {
    const saved = new Map(HUB_ENV.map((k) => [k, Deno.env.get(k)]));
    for (const k of HUB_ENV) Deno.env.delete(k);
    const cache = await Deno.makeTempDir({
      prefix: "rabbit-hub-",
      dir: scopedWrite ? SCOPED_TMP : undefined,
    });
    Deno.env.set("HF_TOKEN_PATH", `${cache}/no-token-here`);
    await using hub = FakeHub.start(REPOS, [GRANTED, NO_ACCESS]);
    try {
      await fn({ hub, cache, opts: { hubUrl: hub.url, cacheDir: `${cache}/hub`, quiet: true } });
    } finally {
      for (const [k, v] of saved) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
      await Deno.remove(scopedWrite ? SCOPED_TMP : cache, { recursive: true });
    }
  });
}

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const enc = (d: Uint8Array | string) => typeof d === "string" ? new TextEncoder().encode(d) : d;
const fileRequests = (hub: FakeHub) =>
  hub.requests.filter((r) => r.server === "cdn" || r.path.includes("/resolve/"));

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

/** Asserts the HF cache layout of one snapshot: symlinks into blobs named by their hash. */
async function assertSnapshot(
  hub: FakeHub,
  repoDir: string,
  repoId: string,
  branch: string,
  files: Record<string, Uint8Array | string>,
) {
  const commit = hub.commit(repoId, branch);
  for (const [name, content] of Object.entries(files)) {
    const pointer = `${repoDir}/snapshots/${commit}/${name}`;
    const blob = hub.blobName(repoId, branch, name);
    assert.ok(Deno.lstatSync(pointer).isSymlink, `${name} is a symlink`);
    assert.equal(Deno.readLinkSync(pointer), `../../blobs/${blob}`);
    const data = await Deno.readFile(pointer);
    assert.deepEqual(data, enc(content), `${name} has the hub's bytes`);
    if (name.endsWith(".safetensors")) assert.equal(sha256(data), blob);
  }
}

Deno.test("hub tests run with unscoped --allow-read and --allow-write", () => {
  // Deno creates symlinks (the HF cache's snapshot → blob links) only under unscoped grants;
  // with path-scoped ones hub.ts makes hard links instead, and the layout tests below fail.
  for (const name of ["read", "write"] as const) {
    assert.equal(Deno.permissions.querySync({ name }).state, "granted", `--allow-${name}`);
  }
});

hubTest("snapshotDownload writes the HF cache layout with the causal-LM files", async (t) => {
  const dir = await snapshotDownload("acme/tiny", t.opts);
  const repoDir = `${t.cache}/hub/models--acme--tiny`;
  const commit = t.hub.commit("acme/tiny", "main");
  assert.equal(dir, `${repoDir}/snapshots/${commit}`);
  assert.equal(await Deno.readTextFile(`${repoDir}/refs/main`), commit);
  assert.deepEqual(await listDir(dir), TINY_FILES); // no README.md, pytorch_model.bin
  await assertSnapshot(
    t.hub,
    repoDir,
    "acme/tiny",
    "main",
    Object.fromEntries(TINY_FILES.map((f) => [f, TINY_MAIN[f as keyof typeof TINY_MAIN]])),
  );
  // One blob per distinct content (two tokenizer files are equal here), no .incomplete left.
  const names = new Set(TINY_FILES.map((f) => t.hub.blobName("acme/tiny", "main", f)));
  assert.equal(names.size, TINY_FILES.length - 1);
  assert.deepEqual(await listDir(`${repoDir}/blobs`), [...names].sort());
  // The LFS weights came through the CDN redirect; everything else straight from the hub.
  const cdn = t.hub.requests.filter((r) => r.server === "cdn");
  assert.deepEqual(cdn.map((r) => r.path), [
    `/lfs/${t.hub.blobName("acme/tiny", "main", "model.safetensors")}`,
  ]);
  assert.ok(existsSync(`${t.cache}/hub/.locks/models--acme--tiny`), "Python's lock folder");
  // Files are asked for uncompressed, so byte ranges and hashes are about the file itself.
  assert.ok(fileRequests(t.hub).every((r) => r.acceptEncoding === "identity"));
});

hubTest("with path-scoped --allow-write, snapshot files are hard links to the blobs", async (t) => {
  const said: string[] = [];
  const error = console.error;
  console.error = (msg: string) => said.push(msg);
  try {
    await snapshotDownload("acme/tiny", t.opts);
    await snapshotDownload("acme/tiny", { ...t.opts, revision: "dev" });
  } finally {
    console.error = error;
  }
  assert.equal(said.length, 1);
  assert.match(said[0], /hard links .* symlinks only with unscoped --allow-read and --allow-write/);
  const repoDir = `${t.cache}/hub/models--acme--tiny`;
  const dir = `${repoDir}/snapshots/${t.hub.commit("acme/tiny", "main")}`;
  for (const f of TINY_FILES) {
    const blob = `${repoDir}/blobs/${t.hub.blobName("acme/tiny", "main", f)}`;
    assert.ok(Deno.lstatSync(`${dir}/${f}`).isFile, f);
    assert.equal(Deno.statSync(`${dir}/${f}`).ino, Deno.statSync(blob).ino, f);
  }
  assert.deepEqual(await Deno.readFile(`${dir}/model.safetensors`), TINY_MAIN["model.safetensors"]);
}, true);

hubTest("a second call makes no file requests: only the revision lookup", async (t) => {
  await snapshotDownload("acme/tiny", t.opts);
  const before = t.hub.requests.length;
  await snapshotDownload("acme/tiny", t.opts);
  const again = t.hub.requests.slice(before);
  assert.equal(again.length, 1);
  assert.match(again[0].path, /^\/api\/models\/acme\/tiny\/revision\/main$/);
});

hubTest("a blob Python left in the cache is linked, not downloaded", async (t) => {
  const repoDir = `${t.cache}/hub/models--acme--tiny`;
  const weights = t.hub.blobName("acme/tiny", "main", "model.safetensors");
  await Deno.mkdir(`${repoDir}/blobs`, { recursive: true });
  await Deno.writeFile(`${repoDir}/blobs/${weights}`, TINY_MAIN["model.safetensors"]);
  const dir = await snapshotDownload("acme/tiny", t.opts);
  assert.equal(t.hub.requests.filter((r) => r.server === "cdn").length, 0);
  assert.ok(!fileRequests(t.hub).some((r) => r.path.endsWith("model.safetensors")));
  assert.deepEqual(await Deno.readFile(`${dir}/model.safetensors`), TINY_MAIN["model.safetensors"]);
});

hubTest("a complete snapshot Python left is used as is", async (t) => {
  // The layout huggingface_hub writes: blobs, refs/main, relative symlinks.
  const repoDir = `${t.cache}/hub/models--acme--tiny`;
  const commit = t.hub.commit("acme/tiny", "main");
  await Deno.mkdir(`${repoDir}/refs`, { recursive: true });
  await Deno.mkdir(`${repoDir}/snapshots/${commit}`, { recursive: true });
  await Deno.mkdir(`${repoDir}/blobs`, { recursive: true });
  await Deno.writeTextFile(`${repoDir}/refs/main`, commit);
  for (const f of TINY_FILES) {
    const blob = t.hub.blobName("acme/tiny", "main", f);
    await Deno.writeFile(`${repoDir}/blobs/${blob}`, enc(TINY_MAIN[f as keyof typeof TINY_MAIN]));
    await Deno.symlink(`../../blobs/${blob}`, `${repoDir}/snapshots/${commit}/${f}`);
  }
  const dir = await snapshotDownload("acme/tiny", t.opts);
  assert.equal(dir, `${repoDir}/snapshots/${commit}`);
  assert.deepEqual(fileRequests(t.hub), []);
  assert.equal(t.hub.requests.length, 1);
});

hubTest("sharded: the index and every shard it names, with tokenizer.model", async (t) => {
  const dir = await snapshotDownload("acme/sharded", t.opts);
  const files = REPOS[1].branches.main;
  assert.deepEqual(await listDir(dir), Object.keys(files).sort());
  await assertSnapshot(
    t.hub,
    `${t.cache}/hub/models--acme--sharded`,
    "acme/sharded",
    "main",
    files,
  );
});

hubTest(
  "a repo with only torch.save weights: pytorch_model.bin, or its index and shards",
  async (t) => {
    const dir = await snapshotDownload("acme/bin-sharded", t.opts);
    assert.deepEqual(await listDir(dir), [
      "config.json",
      "pytorch_model-00001-of-00002.bin",
      "pytorch_model-00002-of-00002.bin",
      "pytorch_model.bin.index.json",
    ]);
    assert.equal(await snapshotDownload("acme/bin-sharded", { ...t.opts, offline: true }), dir);
    const one = await snapshotDownload("acme/bin", t.opts);
    assert.deepEqual(await listDir(one), ["config.json", "pytorch_model.bin"]);
    assert.equal(await snapshotDownload("acme/bin", { ...t.opts, offline: true }), one);
    // A repo with safetensors too (acme/tiny has a pytorch_model.bin) gets only the safetensors.
    assert.ok(
      !(await listDir(await snapshotDownload("acme/tiny", t.opts))).includes("pytorch_model.bin"),
    );
  },
);

hubTest("revision by branch name writes refs/<branch>; by commit hash no ref", async (t) => {
  const repoDir = `${t.cache}/hub/models--acme--tiny`;
  const dev = t.hub.commit("acme/tiny", "dev");
  const dirDev = await snapshotDownload("acme/tiny", { ...t.opts, revision: "dev" });
  assert.equal(dirDev, `${repoDir}/snapshots/${dev}`);
  assert.equal(await Deno.readTextFile(`${repoDir}/refs/dev`), dev);
  assert.equal(await Deno.readTextFile(`${dirDev}/config.json`), config(3));

  const main = t.hub.commit("acme/tiny", "main");
  const dirMain = await snapshotDownload("acme/tiny", { ...t.opts, revision: main });
  assert.equal(dirMain, `${repoDir}/snapshots/${main}`);
  assert.equal(await Deno.readTextFile(`${dirMain}/config.json`), config(2));
  assert.deepEqual(await listDir(`${repoDir}/refs`), ["dev"]);
  // Files equal across the commits share one blob.
  assert.equal(
    Deno.readLinkSync(`${dirMain}/tokenizer.json`),
    Deno.readLinkSync(`${dirDev}/tokenizer.json`),
  );
});

hubTest("allowPatterns picks the files instead of the causal-LM list", async (t) => {
  const dir = await snapshotDownload("acme/tiny", {
    ...t.opts,
    allowPatterns: ["*.md", "config.jso?"],
  });
  assert.deepEqual(await listDir(dir), ["README.md", "config.json"]);
});

hubTest(
  "HF_HUB_CACHE, HF_ENDPOINT and HF_TOKEN from the environment; findCheckpoint finds it",
  async (t) => {
    Deno.env.set("HF_HUB_CACHE", `${t.cache}/env-cache`);
    Deno.env.set("HF_ENDPOINT", t.hub.url);
    Deno.env.set("HF_TOKEN", GRANTED);
    const dir = await snapshotDownload("acme/gated", { quiet: true });
    assert.ok(dir.startsWith(`${t.cache}/env-cache/models--acme--gated/snapshots/`));
    assert.equal(findCheckpoint("acme/gated"), dir);
    const hub = t.hub.requests.filter((r) => r.server === "hub");
    assert.ok(hub.every((r) => r.authorization === `Bearer ${GRANTED}`), "token sent to the hub");
  },
);

hubTest(
  "a GGUF repo: ggufFile downloads that file only; without it the error lists the GGUF files",
  async (t) => {
    Deno.env.set("HF_HUB_CACHE", `${t.cache}/env-cache`);
    const opts = { hubUrl: t.hub.url, quiet: true };
    const err = await openCheckpoint("acme/tiny-GGUF", opts).then(() => null, (e) => e);
    assert.ok(err instanceof HubError, String(err));
    assert.match(err.message, /ggufFile.*tiny-F16\.gguf, tiny-Q8_0\.gguf/);
    const ck = await openCheckpoint("acme/tiny-GGUF", { ...opts, ggufFile: "tiny-Q8_0.gguf" });
    assert.equal(ck.config.architecture, "LlamaForCausalLM");
    assert.ok(ck.gguf?.file.endsWith("/tiny-Q8_0.gguf"));
    const fetched = fileRequests(t.hub).map((r) => r.path);
    assert.ok(fetched.length > 0 && fetched.every((p) => !p.includes("F16")), fetched.join(" "));
    assert.deepEqual(await listDir(ck.dir), ["tiny-Q8_0.gguf"]);
  },
);

hubTest("the token is never sent to the CDN", async (t) => {
  await snapshotDownload("acme/gated", { ...t.opts, token: GRANTED });
  const cdn = t.hub.requests.filter((r) => r.server === "cdn");
  assert.equal(cdn.length, 1);
  assert.equal(cdn[0].authorization, null);
});

hubTest("the token file huggingface-cli login writes is used when no token is given", async (t) => {
  await Deno.writeTextFile(`${t.cache}/token`, `${GRANTED}\n`);
  Deno.env.set("HF_TOKEN_PATH", `${t.cache}/token`);
  await snapshotDownload("acme/private", t.opts);
  assert.ok(
    t.hub.requests.every((r) => r.server === "cdn" || r.authorization === `Bearer ${GRANTED}`),
  );
});

/** Runs `p`, expects a HubError, and checks that no token appears in its message or stack. */
async function hubError(p: Promise<unknown>, kind: string): Promise<HubError> {
  const e = await p.then(() => assert.fail("expected a HubError"), (e) => e);
  assert.ok(e instanceof HubError, `expected HubError, got ${e}`);
  assert.equal(e.kind, kind, e.message);
  for (const token of [GRANTED, NO_ACCESS, "hf_wrong"]) {
    assert.ok(!e.message.includes(token), "token in the message");
    assert.ok(!String(e.stack).includes(token), "token in the stack");
    assert.ok(!Deno.inspect(e).includes(token), "token in the printed error (with its cause)");
  }
  return e;
}

hubTest(
  "gated: 401 without a token, 403 with one lacking access, each says what to do",
  async (t) => {
    let e = await hubError(snapshotDownload("acme/gated", t.opts), "auth");
    assert.match(e.message, /^acme\/gated@main: config.json: access denied \(HTTP 401\)/);
    assert.match(e.message, /no token was sent/);
    assert.match(e.message, /Accept the model's licence on http:\/\/127\.0\.0\.1:\d+\/acme\/gated/);
    assert.match(e.message, /`token` option or HF_TOKEN/);
    assert.equal(e.file, "config.json");

    e = await hubError(snapshotDownload("acme/gated", { ...t.opts, token: NO_ACCESS }), "auth");
    assert.match(e.message, /HTTP 403\): the model is gated and the token that was sent has not/);
    assert.match(
      e.message,
      /licence on http:\/\/127\.0\.0\.1:\d+\/acme\/gated as the token's owner/,
    );
  },
);

hubTest(
  "private: 401 without a token, and an unknown token, name the repo and revision",
  async (t) => {
    let e = await hubError(snapshotDownload("acme/private", t.opts), "auth");
    assert.match(e.message, /^acme\/private@main: access denied \(HTTP 401\)/);
    e = await hubError(snapshotDownload("acme/private", { ...t.opts, token: "hf_wrong" }), "auth");
    assert.match(e.message, /HTTP 401\): .* the token that was sent is invalid or has no access/);
  },
);

hubTest("404: unknown model and unknown revision name both", async (t) => {
  let e = await hubError(
    snapshotDownload("acme/nope", { ...t.opts, token: NO_ACCESS }),
    "not_found",
  );
  assert.equal(e.message, "acme/nope@main: no such model or revision (HTTP 404)");
  e = await hubError(snapshotDownload("acme/tiny", { ...t.opts, revision: "v9" }), "not_found");
  assert.equal(e.message, "acme/tiny@v9: no such model or revision (HTTP 404)");
  assert.equal(e.repoId, "acme/tiny");
  assert.equal(e.revision, "v9");
});

hubTest(
  "a repo without config.json or safetensors weights is refused before downloading",
  async (t) => {
    const e = await hubError(snapshotDownload("acme/no-weights", t.opts), "not_found");
    assert.match(e.message, /neither model.safetensors\(.index.json\) nor pytorch_model.bin/);
    assert.deepEqual(fileRequests(t.hub), []);
  },
);

hubTest(
  "bad repo id and a token that is not an hf_ token are refused without a request",
  async (t) => {
    await hubError(snapshotDownload("../etc", t.opts), "invalid");
    const e = await hubError(
      snapshotDownload("acme/tiny", { ...t.opts, token: "secret-value" }),
      "invalid",
    );
    assert.ok(!e.message.includes("secret-value"));
    assert.equal(t.hub.requests.length, 0);
  },
);

hubTest("an unreachable hub gives a network error naming the host, not the token", async (t) => {
  const port = t.hub.url.split(":").at(-1);
  await t.hub.close();
  const e = await hubError(snapshotDownload("acme/tiny", { ...t.opts, token: GRANTED }), "network");
  assert.match(e.message, new RegExp(`cannot reach 127\\.0\\.0\\.1:${port}`));
  assert.match(e.message, /HF_HUB_OFFLINE=1/);
});

hubTest("offline: served from the cache without a request; a missing file is named", async (t) => {
  const online = await snapshotDownload("acme/sharded", t.opts);
  const before = t.hub.requests.length;
  Deno.env.set("HF_HUB_OFFLINE", "1");
  assert.equal(await snapshotDownload("acme/sharded", t.opts), online);
  assert.equal(t.hub.requests.length, before);

  await Deno.remove(`${online}/${SHARDS[1]}`);
  let e = await hubError(snapshotDownload("acme/sharded", t.opts), "offline");
  assert.equal(e.file, SHARDS[1]);
  assert.match(e.message, /offline mode is on/);
  assert.match(e.message, new RegExp(`${SHARDS[1]}: offline mode is on .* not in the cache`));

  e = await hubError(snapshotDownload("acme/tiny", { ...t.opts, revision: "dev" }), "offline");
  assert.match(e.message, /^acme\/tiny@dev: offline mode is on .* no .*refs\/dev/);
  // The option wins over the environment: online again, the shard is relinked from its blob.
  await snapshotDownload("acme/sharded", { ...t.opts, offline: false });
  assert.ok(await Deno.stat(`${online}/${SHARDS[1]}`));
  assert.equal(t.hub.requests.filter((r) => r.server === "cdn").length, 3);
});

hubTest(
  "a cut connection resumes with a Range request and ends with the right bytes",
  async (t) => {
    t.hub.cutOnce("model.safetensors");
    const dir = await snapshotDownload("acme/tiny", t.opts);
    const weights = TINY_MAIN["model.safetensors"];
    assert.deepEqual(await Deno.readFile(`${dir}/model.safetensors`), weights);
    const cdn = t.hub.requests.filter((r) => r.server === "cdn");
    assert.deepEqual(cdn.map((r) => r.range), [null, `bytes=${weights.length >> 1}-`]);
  },
);

hubTest("a partial file from an earlier run resumes; a 200 answer restarts it", async (t) => {
  const repoDir = `${t.cache}/hub/models--acme--tiny`;
  const weights = TINY_MAIN["model.safetensors"];
  const blob = t.hub.blobName("acme/tiny", "main", "model.safetensors");
  await Deno.mkdir(`${repoDir}/blobs`, { recursive: true });
  await Deno.writeFile(`${repoDir}/blobs/${blob}.incomplete`, weights.subarray(0, 1000));
  await snapshotDownload("acme/tiny", t.opts);
  const cdn = () => t.hub.requests.filter((r) => r.server === "cdn");
  assert.deepEqual(cdn().map((r) => r.range), ["bytes=1000-"]);
  assert.equal(sha256(await Deno.readFile(`${repoDir}/blobs/${blob}`)), blob);

  // Same for dev's weights, but the server ignores Range: the file restarts from byte 0.
  const devBlob = t.hub.blobName("acme/tiny", "dev", "model.safetensors");
  await Deno.writeFile(`${repoDir}/blobs/${devBlob}.incomplete`, new Uint8Array(5000).fill(9));
  t.hub.ignoreRange = true;
  const dir = await snapshotDownload("acme/tiny", { ...t.opts, revision: "dev" });
  assert.equal(cdn().at(-1)!.range, "bytes=5000-");
  assert.equal(sha256(await Deno.readFile(`${dir}/model.safetensors`)), devBlob);
});

hubTest("a stalled connection is cut after stallTimeoutMs and resumed", async (t) => {
  t.hub.stallOnce("model.safetensors");
  const dir = await snapshotDownload("acme/tiny", { ...t.opts, stallTimeoutMs: 300 });
  assert.deepEqual(await Deno.readFile(`${dir}/model.safetensors`), TINY_MAIN["model.safetensors"]);
  const cdn = t.hub.requests.filter((r) => r.server === "cdn");
  assert.deepEqual(cdn.map((r) => r.range), [null, `bytes=${300_000 >> 1}-`]);
});

hubTest("a corrupted download fails the hash check and leaves nothing behind", async (t) => {
  t.hub.corruptOnce("model.safetensors");
  const e = await hubError(snapshotDownload("acme/tiny", t.opts), "integrity");
  assert.equal(e.file, "model.safetensors");
  assert.match(e.message, /sha256 [0-9a-f]{64}; the hub announced 300000 bytes with [0-9a-f]{64}/);
  const blobs = await listDir(`${t.cache}/hub/models--acme--tiny/blobs`);
  assert.ok(
    !blobs.some((b) => b.startsWith(t.hub.blobName("acme/tiny", "main", "model.safetensors"))),
  );
  // The next call downloads it cleanly.
  const dir = await snapshotDownload("acme/tiny", t.opts);
  assert.deepEqual(await Deno.readFile(`${dir}/model.safetensors`), TINY_MAIN["model.safetensors"]);
});

hubTest("onProgress reports bytes up to the total of what was missing", async (t) => {
  const seen: [number, number][] = [];
  await snapshotDownload("acme/sharded", { ...t.opts, onProgress: (d, n) => seen.push([d, n]) });
  const files = REPOS[1].branches.main;
  const total = Object.entries(files)
    .filter(([f]) => f !== "model.safetensors.index.json")
    .reduce((s, [, c]) => s + enc(c).length, 0);
  assert.ok(seen.length > 0);
  assert.ok(seen.every(([, n]) => n === total));
  assert.deepEqual(seen.at(-1), [total, total]);
});

function existsSync(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}
