/**
 * Nothing lost under faults: a split killed (SIGKILL) at random and at chosen points, a full disk,
 * two processes splitting or loading at once, a checkpoint changed after (or during) its split.
 * Children are `deno run tests/split_child.ts`; the disk is a small tmpfs (root only, else said
 * and skipped). Fixed seeds; the synthetic checkpoint is written once per run.
 *
 * Longer mode (`deno task fuzz`): SPLIT_KILL_POINTS random SIGKILLs (default 24) and
 * SPLIT_CHOSEN_POINTS chosen tensors to kill at (default the 10 fixed ones; more adds seeded
 * ones, up to every tensor but the last). `deno task test` does not grant these variables, so it
 * always runs the defaults.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { type Manifest, splitCheckpoint } from "../lib/checkpoint.ts";
import { readConfigJson } from "../lib/config.ts";
import { CheckpointError } from "../lib/errors.ts";
import { familyFor } from "../lib/models/registry.ts";
import { writeSafetensors } from "../lib/safetensors.ts";

const CHILD = new URL("./split_child.ts", import.meta.url).pathname;
const HIDDEN = 128, KV = 64, INTER = 384, LAYERS = 16, VOCAB = 1024;

/** `name` as a non-negative integer when the variable is granted and set, else `fallback`. */
function envInt(name: string, fallback: number): number {
  if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") {
    return fallback;
  }
  const v = Deno.env.get(name);
  if (v === undefined || v === "") return fallback;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name}=${v}: expected an integer`);
  return n;
}

/** Random SIGKILLs the kill test aims for (it stops at that many, or after enough chains). */
const RANDOM_KILLS = envInt("SPLIT_KILL_POINTS", 24);
/** Tensors the child kills itself after (then again in the resumed run). */
const CHOSEN_POINTS = envInt("SPLIT_CHOSEN_POINTS", 10);

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A 16-layer llama of random f32 weights in two shards with an index (~13.6 MB). */
async function writeCheckpoint(dir: string, seed = 1): Promise<void> {
  const r = rng(seed);
  const t = (name: string, shape: number[]) => {
    const x = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < x.length; i++) x[i] = r() - 0.5;
    return { name, dtype: "F32" as const, shape, data: new Uint8Array(x.buffer) };
  };
  const layer = (i: number) => [
    t(`model.layers.${i}.input_layernorm.weight`, [HIDDEN]),
    t(`model.layers.${i}.self_attn.q_proj.weight`, [HIDDEN, HIDDEN]),
    t(`model.layers.${i}.self_attn.k_proj.weight`, [KV, HIDDEN]),
    t(`model.layers.${i}.self_attn.v_proj.weight`, [KV, HIDDEN]),
    t(`model.layers.${i}.self_attn.o_proj.weight`, [HIDDEN, HIDDEN]),
    t(`model.layers.${i}.post_attention_layernorm.weight`, [HIDDEN]),
    t(`model.layers.${i}.mlp.gate_proj.weight`, [INTER, HIDDEN]),
    t(`model.layers.${i}.mlp.up_proj.weight`, [INTER, HIDDEN]),
    t(`model.layers.${i}.mlp.down_proj.weight`, [HIDDEN, INTER]),
  ];
  const half = LAYERS / 2;
  const shards = {
    "model-00001-of-00002.safetensors": [
      t("model.embed_tokens.weight", [VOCAB, HIDDEN]),
      ...Array.from({ length: half }, (_, i) => layer(i)).flat(),
    ],
    "model-00002-of-00002.safetensors": [
      ...Array.from({ length: half }, (_, i) => layer(half + i)).flat(),
      t("model.norm.weight", [HIDDEN]),
      t("lm_head.weight", [VOCAB, HIDDEN]),
    ],
  };
  const weightMap: Record<string, string> = {};
  for (const [file, ts] of Object.entries(shards)) {
    await writeSafetensors(`${dir}/${file}`, ts);
    for (const x of ts) weightMap[x.name] = file;
  }
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
  await Deno.writeTextFile(
    `${dir}/config.json`,
    JSON.stringify({
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      hidden_size: HIDDEN,
      intermediate_size: INTER,
      num_hidden_layers: LAYERS,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      head_dim: 32,
      vocab_size: VOCAB,
      max_position_embeddings: 64,
      rms_norm_eps: 1e-6,
      rope_theta: 10000,
      tie_word_embeddings: false,
      hidden_act: "silu",
      torch_dtype: "float32",
    }),
  );
}

async function inProcess(
  src: string,
  out: string,
  onProgress?: (done: number, total: number) => void,
) {
  const raw = await readConfigJson(src);
  const family = familyFor((raw.architectures as string[])[0], src);
  const cfg = family.parseConfig(raw, src);
  return await splitCheckpoint(src, family, cfg, {
    dtype: "bfloat16",
    layerShardsSavingPath: out,
    onProgress,
  });
}

/** Every file of a directory, by name. */
async function files(dir: string): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for await (const e of Deno.readDir(dir)) out.set(e.name, await Deno.readFile(`${dir}/${e.name}`));
  return out;
}

/**
 * The split in `dir` is exactly the reference: the same files (nothing else), byte for byte. A
 * `.lock` left by a splitter killed after its manifest is allowed (empty of any flock: harmless).
 */
async function assertSameSplit(dir: string, ref: Map<string, Uint8Array>, what: string) {
  const got = await files(dir);
  got.delete(".lock");
  assert.deepEqual([...got.keys()].sort(), [...ref.keys()].sort(), `${what}: files`);
  for (const [name, bytes] of ref) {
    assert.ok(Buffer.compare(got.get(name)!, bytes) === 0, `${what}: ${name} differs`);
  }
}

/** A manifest in `dir`, if any, describes complete parts whose data hash to it. */
async function assertNoHalfSplit(dir: string, what: string) {
  let m: Manifest;
  try {
    m = JSON.parse(await Deno.readTextFile(`${dir}/manifest.json`));
  } catch {
    return; // no manifest: redone or resumed, never used
  }
  for (const p of m.parts) {
    const bytes = await Deno.readFile(`${dir}/${p.file}`);
    assert.equal(bytes.length, p.bytes, `${what}: ${p.file} size`);
    const sha = createHash("sha256").update(bytes.subarray(p.dataOffset)).digest("hex");
    assert.equal(sha, p.sha256, `${what}: ${p.file} data`);
  }
}

function names(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].map((e) => e.name);
  } catch {
    return []; // killed before it made the directory
  }
}

function sha(dir: string): string {
  const h = createHash("sha256");
  for (const e of [...Deno.readDirSync(dir)].sort((a, b) => a.name < b.name ? -1 : 1)) {
    if (e.isFile) h.update(e.name).update(Deno.readFileSync(`${dir}/${e.name}`));
  }
  return h.digest("hex");
}

interface ChildRun {
  /** Killed (by the parent or itself) before it printed its result. */
  killed: boolean;
  result: { reused: boolean; ms: number } | null;
  stderr: string;
  code: number;
}

/** Runs the child; `killAfterMs` from its "start" line, the parent SIGKILLs it. */
async function child(
  src: string,
  out: string,
  opts: { killAt?: number; killAfterMs?: number; verify?: boolean } = {},
): Promise<ChildRun> {
  const cmd = new Deno.Command("deno", {
    args: [
      "run",
      "--quiet",
      "--allow-read",
      "--allow-write",
      "--allow-env=KILL_AT",
      "--allow-run",
      CHILD,
      src,
      out,
      ...(opts.verify ? ["verify"] : []),
    ],
    env: { KILL_AT: String(opts.killAt ?? 0), NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  });
  const p = cmd.spawn();
  const stderr = new Response(p.stderr).text();
  let text = "";
  const dec = new TextDecoder();
  let timer: ReturnType<typeof setTimeout> | undefined;
  for await (const chunk of p.stdout) {
    text += dec.decode(chunk, { stream: true });
    if (opts.killAfterMs !== undefined && timer === undefined && text.includes("start\n")) {
      timer = setTimeout(() => {
        try {
          p.kill("SIGKILL");
        } catch { /* already exited */ }
      }, opts.killAfterMs);
    }
  }
  const status = await p.status;
  clearTimeout(timer);
  const line = text.split("\n").find((l) => l.startsWith("{"));
  return {
    killed: status.signal === "SIGKILL" && !line,
    result: line ? JSON.parse(line) : null,
    stderr: await stderr,
    code: status.code,
  };
}

const root = await Deno.makeTempDir({ prefix: "rabbit-faults-" });
const SRC = `${root}/ckpt`;
await Deno.mkdir(SRC);
await writeCheckpoint(SRC);
const REF_DIR = `${root}/ref`;
await inProcess(SRC, REF_DIR);
const REF = await files(REF_DIR);
const TENSORS = 1 + 9 * LAYERS + 2;
/** The fixed chosen points, then seeded others (distinct, 1..TENSORS-1) up to CHOSEN_POINTS. */
const CHOSEN = [1, 9, 20, 37, 55, 74, 90, 111, 130, 146].slice(0, CHOSEN_POINTS);
const pick = rng(7);
while (CHOSEN.length < Math.min(CHOSEN_POINTS, TENSORS - 1)) {
  const n = 1 + Math.floor(pick() * (TENSORS - 1));
  if (!CHOSEN.includes(n)) CHOSEN.push(n);
}

Deno.test("split killed (SIGKILL) at random and chosen points: never half-used, then identical", async () => {
  // Calibrate: how long the child's split takes here.
  const clean = await child(SRC, `${root}/kill-clean`);
  assert.equal(clean.result?.reused, false, clean.stderr);
  await assertSameSplit(`${root}/kill-clean`, REF, "clean child");
  const ms = clean.result!.ms;
  const r = rng(42);
  let randomKills = 0, chosenKills = 0, withTemps = 0, staleLocks = 0, resumed = 0;
  // Random: SIGKILL from the parent after a random delay, up to 4 times into the same directory
  // (each later run resumes), then a run to the end that must match the reference.
  const chains = Math.max(12, Math.ceil(RANDOM_KILLS / 2));
  for (let chain = 0; randomKills < RANDOM_KILLS && chain < chains; chain++) {
    const out = `${root}/kill-random-${chain}`;
    for (let k = 0; k < 4; k++) {
      const run = await child(SRC, out, { killAfterMs: r() * ms * 0.9 });
      if (!run.killed) {
        // Finished (possibly killed right after saying so): the split is complete.
        assert.ok(run.result, run.stderr);
        break;
      }
      randomKills++;
      await assertNoHalfSplit(out, `random kill ${randomKills}`);
      if (names(out).some((n) => n.includes(".tmp-"))) withTemps++;
    }
    if ((await Deno.stat(`${out}/.lock`).catch(() => null)) !== null) staleLocks++;
    if ((await Deno.stat(`${out}/.partial.json`).catch(() => null)) !== null) resumed++;
    const end = await child(SRC, out);
    assert.equal(end.code, 0, end.stderr);
    await assertSameSplit(out, REF, `random chain ${chain}`);
  }
  // Chosen: the child kills itself after the Nth tensor, then again after M more in the resumed
  // run, then an in-process split finishes.
  for (const [i, n] of CHOSEN.entries()) {
    const out = `${root}/kill-at-${n}`;
    const first = await child(SRC, out, { killAt: n });
    assert.ok(first.killed, `kill at ${n}: ${first.stderr}`);
    chosenKills++;
    await assertNoHalfSplit(out, `kill at ${n}`);
    if (names(out).some((n) => n.includes(".tmp-"))) withTemps++;
    const second = await child(SRC, out, { killAt: 1 + (i * 7) % 12 });
    if (second.killed) chosenKills++;
    await assertNoHalfSplit(out, `kill at ${n}, then again`);
    let from = -1;
    const s = await inProcess(SRC, out, (done) => from < 0 && (from = done));
    assert.equal(s.reused, false);
    // Parts finished before the kills are resumed, not redone (embed + layer.0 are 10 tensors).
    if (n >= 10) assert.ok(from > 0, `kill at ${n}: redone from the start`);
    if (from > 0) resumed++;
    await assertSameSplit(out, REF, `kill at ${n}`);
    assert.equal((await inProcess(SRC, out)).reused, true);
  }
  console.log(
    `split faults: child split ${ms.toFixed(0)} ms; ${randomKills} random SIGKILLs, ` +
      `${chosenKills} at ${CHOSEN.length} chosen tensors (of ${TENSORS}); ` +
      `${withTemps} left temp files, ${staleLocks} chains left a dead process's lock file; ` +
      `${resumed} runs resumed a journal`,
  );
  const enough = Math.floor(RANDOM_KILLS * 5 / 6);
  assert.ok(randomKills >= enough, `only ${randomKills} random kills landed in a split`);
  assert.ok(withTemps > 0, "no kill landed inside a part");
});

Deno.test("two processes splitting at once: one waits on the lock, both end with the same split; two load at once", async () => {
  const out = `${root}/concurrent`;
  const [a, b] = await Promise.all([child(SRC, out), child(SRC, out)]);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(b.code, 0, b.stderr);
  assert.deepEqual([a.result!.reused, b.result!.reused].sort(), [false, true]);
  await assertSameSplit(out, REF, "concurrent splits");
  // Loads (reuse + read every part against the manifest) at once.
  const loads = await Promise.all([0, 1, 2].map(() => child(SRC, out, { verify: true })));
  for (const l of loads) {
    assert.equal(l.code, 0, l.stderr);
    assert.equal(l.result!.reused, true);
  }
  // A lock held by another process (here: this one) is waited for, and said.
  const out2 = `${root}/locked`;
  await Deno.mkdir(out2);
  const lock = await Deno.open(`${out2}/.lock`, { read: true, write: true, create: true });
  await lock.lock(true);
  await lock.write(new TextEncoder().encode(`${Deno.pid}\n`));
  const waiting = child(SRC, out2);
  await new Promise((res) => setTimeout(res, 1800));
  assert.equal(await Deno.stat(`${out2}/manifest.json`).catch(() => null), null);
  // The holder removes the file, then releases: the waiter must lock the new file, not the old.
  await Deno.remove(`${out2}/.lock`);
  lock.close();
  const w = await waiting;
  assert.equal(w.code, 0, w.stderr);
  assert.match(w.stderr, new RegExp(`waiting for process ${Deno.pid} splitting into it`));
  await assertSameSplit(out2, REF, "after waiting");
  // A lock file left by a dead process does not block.
  await Deno.writeTextFile(`${out2}/.lock`, "999999999\n");
  await Deno.remove(`${out2}/manifest.json`);
  assert.equal((await inProcess(SRC, out2)).reused, false); // (would wait forever)
  await assertSameSplit(out2, REF, "after a stale lock");
});

// A full disk: a tmpfs, mounted only when we may.
const MNT = `${root}/mnt`;
await Deno.mkdir(MNT);
async function sh(cmd: string): Promise<{ ok: boolean; err: string }> {
  const o = await new Deno.Command("sh", { args: ["-c", cmd], stderr: "piped", stdout: "null" })
    .output();
  return { ok: o.success, err: new TextDecoder().decode(o.stderr).trim() };
}
const probe = await sh(`mount -t tmpfs -o size=1m tmpfs '${MNT}' && umount '${MNT}'`);
if (!probe.ok) {
  console.log(`split faults: cannot mount a tmpfs (${probe.err}); disk-full test skipped`);
}

Deno.test({
  name:
    "split into a full disk: a typed error naming the file and the bytes needed, nothing half-valid",
  ignore: !probe.ok,
  async fn() {
    const before = sha(SRC);
    const need = [...REF.values()].reduce((s, b) => s + b.length, 0);
    let faults = 0;
    try {
      for (const size of ["1m", "3m", "5m"]) {
        const m = await sh(`mount -t tmpfs -o size=${size} tmpfs '${MNT}'`);
        assert.ok(m.ok, m.err);
        try {
          const out = `${MNT}/split`;
          const e = await inProcess(SRC, out).then(() => null, (e) => e);
          assert.ok(e instanceof CheckpointError, `${size}: ${e}`);
          faults++;
          assert.ok(e.path.startsWith(`${out}/`), e.message);
          const m = /the split needs about (\d+) bytes/.exec(e.message);
          assert.ok(m, e.message);
          assert.ok(Number(m[1]) >= need * 0.99 && Number(m[1]) <= need * 1.1, e.message);
          const names = [...Deno.readDirSync(out)].map((e) => e.name);
          assert.ok(!names.includes("manifest.json"), `${size}: a manifest was left`);
          assert.ok(!names.some((n) => n.includes(".tmp-")), `${size}: temp files left: ${names}`);
          assert.ok(!names.includes(".lock"), `${size}: the lock was left`);
          // Room again: the finished parts are resumed and the split is the reference.
          const r = await sh(`mount -o remount,size=64m '${MNT}'`);
          assert.ok(r.ok, r.err);
          assert.equal((await inProcess(SRC, out)).reused, false);
          await assertSameSplit(out, REF, `after a full disk (${size})`);
        } finally {
          const u = await sh(`umount '${MNT}'`);
          assert.ok(u.ok, u.err);
        }
      }
    } finally {
      await sh(`mountpoint -q '${MNT}' && umount '${MNT}'`);
    }
    assert.equal(sha(SRC), before, "the source checkpoint changed");
    console.log(`split faults: ${faults} full disks (1, 3, 5 MiB of a ${need}-byte split)`);
  },
});

Deno.test("a checkpoint changed after (or during) its split is re-split, never mixed", async () => {
  const src = `${root}/changing`;
  await Deno.mkdir(src);
  await writeCheckpoint(src);
  const out = `${root}/changing-split`;
  assert.equal((await inProcess(src, out)).reused, false);
  assert.equal((await inProcess(src, out)).reused, true);
  const shard = `${src}/model-00002-of-00002.safetensors`;
  /** Rewrites `len` bytes at `at` (from the end when negative) of the shard, same size. */
  const rewrite = async (at: number, len: number, keepMtime: boolean) => {
    const st = await Deno.stat(shard);
    const bytes = await Deno.readFile(shard);
    const start = at < 0 ? bytes.length + at : at;
    for (let i = start; i < start + len; i++) bytes[i] ^= 0x5a;
    await Deno.writeFile(shard, bytes);
    if (keepMtime) await Deno.utime(shard, st.atime!, st.mtime!);
    assert.equal((await Deno.stat(shard)).size, st.size);
    if (keepMtime) assert.equal((await Deno.stat(shard)).mtime!.getTime(), st.mtime!.getTime());
  };
  const expectFresh = async (what: string) => {
    const fresh = `${root}/changing-ref-${crypto.randomUUID()}`;
    await inProcess(src, fresh);
    assert.equal((await inProcess(src, out)).reused, false, `${what}: reused`);
    await assertSameSplit(out, await files(fresh), what);
  };
  await new Promise((res) => setTimeout(res, 5)); // a new mtime
  await rewrite(-4096, 64, false); // same size, new mtime
  await expectFresh("same size, new mtime");
  await rewrite(-4096, 64, true); // same size and mtime: the last MiB is sampled
  await expectFresh("same size and mtime, tail changed");
  const header = new DataView((await Deno.readFile(shard)).buffer).getUint32(0, true);
  await rewrite(8 + header + 100, 8, true); // the first tensor's data, in the first MiB
  await expectFresh("same size and mtime, head changed");
  // Changed while being split: not mixed into a split; the next run splits the new file.
  let changed = false;
  const e = await inProcess(src, `${root}/changing-during`, () => {
    if (changed) return;
    changed = true;
    const bytes = Deno.readFileSync(shard);
    bytes[bytes.length - 1] ^= 1;
    Deno.writeFileSync(shard, bytes);
  }).then(() => null, (e) => e);
  assert.ok(e instanceof CheckpointError, String(e));
  assert.match(e.message, /model-00002-of-00002.safetensors: changed while it was being split/);
  assert.equal(await Deno.stat(`${root}/changing-during/manifest.json`).catch(() => null), null);
  const fresh = `${root}/changing-ref-last`;
  await inProcess(src, fresh);
  assert.equal((await inProcess(src, `${root}/changing-during`)).reused, false);
  await assertSameSplit(`${root}/changing-during`, await files(fresh), "changed during");
});

globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(root, { recursive: true });
  } catch { /* a mount left behind says so in the test */ }
});
