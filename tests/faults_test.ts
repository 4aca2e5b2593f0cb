/**
 * Faults at run time (issue 15's "long runs"): a device allocation that fails (injected on the CPU
 * with the backend's `device_memory_limit` option) and a 2,000-token generation whose memory must
 * stay flat. The split faults (kill -9, full disk, concurrency) are tests/split_faults_test.ts;
 * SIGINT during generate / chat is tests/cli_test.ts.
 */
import assert from "node:assert/strict";
import { AutoModel, DeviceMemoryError } from "../mod.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const STORIES = `${ROOT}models/stories260k`;
const MiB = 2 ** 20;

Deno.test("faults: a failed device allocation is a DeviceMemoryError with the bytes requested and free; the model goes on at a smaller batch", async () => {
  const split = await Deno.makeTempDir({ prefix: "rabbit-oom-" });
  try {
    await using model = await AutoModel.fromPretrained(STORIES, {
      layerShardsSavingPath: split,
      maxSeqLen: 512,
      quiet: true,
    });
    const be = model.backend;
    const prompt = "Once upon a time";
    const [alone] = await model.generate(prompt, { maxNewTokens: 16 });
    const held = be.stats().liveBytes;
    // Room for one sequence's KV cache (5 layers x 512 tokens x 2 x 64 floats: 1.25 MiB) and
    // its activations, not for eight.
    const limit = held + 2 * MiB;
    be.setOption("device_memory_limit", limit);
    assert.equal(be.getOption("device_memory_free"), 2 * MiB);

    let recovered = -1;
    for (let i = 0; i < 3; i++) {
      const e = await model.generate(Array(8).fill(prompt), { maxNewTokens: 16 }).then(
        () => assert.fail("eight sequences fit under the limit"),
        (e) => e,
      );
      assert.ok(e instanceof DeviceMemoryError, String(e));
      assert.ok(e.requested > 0 && e.free !== null && e.requested > e.free, e.message);
      assert.equal(e.live + e.free, limit, "free is the room left under the limit when it failed");
      assert.match(
        e.message,
        new RegExp(
          `^rl_alloc: out of device memory: .*\\(${e.requested} bytes\\) requested, .*\\(${e.free} bytes\\) free`,
        ),
      );
      assert.match(String(e.cause), /device_memory_limit/);
      // Nothing of the failed call is kept, and one sequence still runs under the same limit,
      // giving the tokens it gave before. Repeated failures hold no more memory.
      const [again] = await model.generate(prompt, { maxNewTokens: 16 });
      assert.deepEqual(again, alone);
      assert.ok(be.stats().liveBytes <= limit);
      if (i === 0) recovered = be.stats().liveBytes;
      else assert.equal(be.stats().liveBytes, recovered, "a repeated failure leaks nothing");
    }
    // A forward pass too long for the limit fails the same way; a shorter one works.
    const long = Array.from({ length: 480 }, (_, i) => 1 + (i * 7) % 500);
    await assert.rejects(model.forward([long]), DeviceMemoryError);
    const short = await model.forward([long.slice(0, 8)]);
    assert.deepEqual(short.dims, [1, 8, model.config.vocabSize]);
    // With the limit lifted, the batch of eight runs and each row is the sequence alone.
    be.setOption("device_memory_limit", 0);
    assert.equal(be.getOption("device_memory_free"), -1);
    const eight = await model.generate(Array(8).fill(prompt), { maxNewTokens: 16 });
    for (const row of eight) assert.deepEqual(row, alone);
  } finally {
    await Deno.remove(split, { recursive: true });
  }
});

Deno.test("faults: 2,000 tokens keep host RSS, the V8 heap and device live bytes flat after warm-up (resident and streamed)", async () => {
  // llama_tied with a 4096-token context: 2,000 tokens fit.
  const dir = await Deno.makeTempDir({ prefix: "rabbit-long-" });
  try {
    const src = `${ROOT}tests/fixtures/llama_tied`;
    for (const e of Deno.readDirSync(src)) {
      if (e.isFile) await Deno.copyFile(`${src}/${e.name}`, `${dir}/${e.name}`);
    }
    const cfg = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    cfg.max_position_embeddings = 4096;
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(cfg));
    const out = await new Deno.Command("deno", {
      args: [
        "run",
        "--v8-flags=--expose-gc",
        `--allow-read`,
        `--allow-write=${dir}`,
        "--allow-env",
        `--allow-ffi=${ROOT}build`,
        "--allow-sys=systemMemoryInfo",
        `${ROOT}tests/long_run_child.ts`,
        dir,
        `${dir}/split`,
      ],
      env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, err);
    const rows = new TextDecoder().decode(out.stdout).trim().split("\n").map((l) => JSON.parse(l));
    for (const mode of ["resident", "streamed"]) {
      const r = rows.filter((x) => x.mode === mode);
      assert.deepEqual(r.map((x) => x.tokens), [
        200,
        400,
        600,
        800,
        1000,
        1200,
        1400,
        1600,
        1800,
        2000,
      ]);
      assert.equal(r[0].resident, mode === "resident" ? cfg.num_hidden_layers : 0);
      // Device memory: the KV cache holds maxSeqLen from the start, so nothing grows at all.
      for (const x of r) {
        assert.equal(x.live, r[0].live, `${mode}: live device bytes at ${x.tokens} tokens`);
        assert.equal(x.allocs, r[0].allocs, `${mode}: live allocations at ${x.tokens} tokens`);
      }
      // Host: after warm-up (400 tokens) the heap grows by less than 1 MiB and RSS by less than
      // 16 MiB over 1,600 tokens (a leak of one logits row per token would be 1.6 MiB / 1.6k).
      const [w, end] = [r[1], r.at(-1)!];
      const heap = end.heap - w.heap, rss = end.rss - w.rss;
      console.log(
        `${mode}: 400 → 2000 tokens: heap ${(heap / MiB).toFixed(2)} MiB, rss ${
          (rss / MiB).toFixed(1)
        } MiB, device ${w.live} bytes live (${w.allocs} allocations) throughout`,
      );
      assert.ok(heap < MiB, `${mode}: V8 heap grew ${heap} bytes from 400 to 2000 tokens`);
      assert.ok(rss < 16 * MiB, `${mode}: RSS grew ${rss} bytes from 400 to 2000 tokens`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
