/**
 * The StepLoop (lib/engine/step.ts) driven directly over a LayerStore and a KVCache, without
 * CausalLM: the same logits as AutoModel.forward (the same code path, so exactly), transformers'
 * logits, positions under left padding, the trace, NaN replay and a failed layer's slot.
 */
import assert from "node:assert/strict";
import type { Backend } from "../../ffi/backend.ts";
import { AutoModel } from "../../lib/auto_model.ts";
import type { ModelConfig } from "../../lib/config.ts";
import { KVCache } from "../../lib/engine/kv_cache.ts";
import { StepLoop } from "../../lib/engine/step.ts";
import type { TraceEvent } from "../../lib/engine/store.ts";
import { InputError, NonFiniteError } from "../../lib/errors.ts";
import type { Family } from "../../lib/models/family.ts";
import { Profiler } from "../../lib/profiler.ts";
import { fixture, openStore, planOf, splitDir } from "./_helpers.ts";

const NAME = "llama_tied";

/** A store, a loop and a way to make caches over the fixture; dispose frees them all. */
async function rig(
  opts: {
    family?: (f: Family) => Family;
    trace?: TraceEvent[];
    mapFiles?: boolean;
    prefetchDepth?: number;
  } = {},
) {
  const s = await openStore(NAME, "step", {
    plan: planOf(["stream", "stream"], { prefetchDepth: opts.prefetchDepth ?? 1 }),
    mapFiles: opts.mapFiles,
    trace: opts.trace,
  });
  const cfg: ModelConfig = s.ck.config;
  const loop = new StepLoop({
    config: cfg,
    family: opts.family ? opts.family(s.ck.family) : s.ck.family,
    backend: s.be,
    store: s.store,
    profiler: new Profiler(),
    source: "step-test",
    trace: opts.trace,
  });
  const caches: KVCache[] = [];
  return {
    ...s,
    cfg,
    loop,
    cache(batch: number, capacity: number): KVCache {
      const c = new KVCache(s.be as Backend, cfg, batch, capacity);
      caches.push(c);
      return c;
    },
    [Symbol.dispose]() {
      for (const c of caches) c.free();
      loop.free();
      s[Symbol.dispose]();
    },
  };
}

interface Ref {
  logits: { input_ids: number[][]; dims: [number, number, number] };
}

async function reference(): Promise<{ ids: number[][]; logits: Float32Array; V: number }> {
  const ref: Ref = JSON.parse(await Deno.readTextFile(`${fixture(NAME)}/reference.json`));
  const bytes = await Deno.readFile(`${fixture(NAME)}/logits.bin`);
  return {
    ids: ref.logits.input_ids,
    logits: new Float32Array(bytes.buffer),
    V: ref.logits.dims[2],
  };
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

Deno.test("step: one step equals AutoModel.forward exactly, and transformers within tolerance", async () => {
  const { ids, logits: hf, V } = await reference();
  const direct = await (async () => {
    using r = await rig();
    const cache = r.cache(ids.length, ids[0].length);
    const out = await r.loop.step(ids, null, cache, false);
    assert.equal(cache.length, ids[0].length);
    assert.deepEqual([...cache.nextPosition], ids.map(() => ids[0].length));
    return out;
  })();
  assert.equal(direct.length, ids.length * ids[0].length * V);
  await using model = await AutoModel.fromPretrained(fixture(NAME), {
    layerShardsSavingPath: splitDir(`step-${NAME}`),
    quiet: true,
  });
  const viaModel = await model.forward(ids);
  assert.equal(maxDiff(direct, viaModel), 0);
  const maxAbs = hf.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  const d = maxDiff(direct, hf);
  assert.ok(d <= 1e-4 * maxAbs, `vs transformers max |Δ| ${d}`);
});

Deno.test("step: lastOnly gives each row's last position; the cache continues a sequence", async () => {
  const { ids, V } = await reference();
  const S = ids[0].length;
  using r = await rig();
  const full = await r.loop.step(ids, null, r.cache(2, S), false);
  const last = await r.loop.step(ids, null, r.cache(2, S), true);
  assert.equal(last.length, 2 * V);
  for (let b = 0; b < 2; b++) {
    const row = full.subarray((b * S + S - 1) * V, (b * S + S) * V);
    assert.equal(maxDiff(last.subarray(b * V, (b + 1) * V), row), 0, `row ${b}`);
  }
  // The same tokens fed in two steps through one cache.
  const cache = r.cache(2, S);
  const a = await r.loop.step(ids.map((row) => row.slice(0, 7)), null, cache, false);
  assert.equal(cache.length, 7);
  const b = await r.loop.step(ids.map((row) => row.slice(7)), null, cache, false);
  assert.equal(cache.length, S);
  assert.deepEqual([...cache.nextPosition], [S, S]);
  for (let row = 0; row < 2; row++) {
    const want = full.subarray(row * S * V, (row + 1) * S * V);
    const got = new Float32Array(S * V);
    got.set(a.subarray(row * 7 * V, (row + 1) * 7 * V), 0);
    got.set(b.subarray(row * (S - 7) * V, (row + 1) * (S - 7) * V), 7 * V);
    const d = maxDiff(got, want);
    assert.ok(d < 1e-4, `row ${row}: two steps vs one, max |Δ| ${d}`);
  }
});

Deno.test("step: left padding does not shift positions; padded rows equal unpadded ones", async () => {
  const { ids, V } = await reference();
  using r = await rig();
  const row = ids[0].slice(0, 6), pad = 3;
  const alone = await r.loop.step([row], null, r.cache(1, row.length), true);
  const cache = r.cache(2, pad + row.length + 1);
  const padded = [[0, 0, 0, ...row], ids[1].slice(0, pad + row.length)];
  const mask = [[0, 0, 0, 1, 1, 1, 1, 1, 1], padded[1].map(() => 1)];
  const out = await r.loop.step(padded, mask, cache, true);
  assert.deepEqual([...cache.nextPosition], [row.length, pad + row.length]);
  assert.deepEqual([...cache.valid[0].subarray(0, 9)], mask[0]);
  assert.deepEqual([...cache.valid[1].subarray(0, 9)], mask[1]);
  assert.equal(cache.length, pad + row.length);
  const d = maxDiff(out.subarray(0, V), alone);
  assert.ok(d < 1e-5, `padded row vs alone max |Δ| ${d}`);
  // The next token continues at position 6 of row 0 (and 9 of row 1).
  await r.loop.step([[7], [8]], null, cache, true);
  assert.deepEqual([...cache.nextPosition], [row.length + 1, pad + row.length + 1]);
});

Deno.test("step: each layer is loaded before it computes, the next read ahead during it", async () => {
  const trace: TraceEvent[] = [];
  using r = await rig({ trace, mapFiles: false, prefetchDepth: 1 });
  const { ids } = await reference();
  trace.length = 0;
  await r.loop.step(ids, null, r.cache(2, ids[0].length), false);
  const at = (kind: TraceEvent["kind"], part: string) =>
    trace.findIndex((e) => e.kind === kind && e.part === part);
  for (let i = 0; i < r.cfg.numLayers; i++) {
    assert.ok(at("read-end", `layer.${i}`) >= 0, `layer ${i} read`);
    assert.ok(at("read-end", `layer.${i}`) < at("compute-start", `layer.${i}`), `layer ${i}`);
    assert.ok(at("compute-start", `layer.${i}`) < at("compute-end", `layer.${i}`));
  }
  assert.ok(at("read-start", "layer.1") < at("compute-end", "layer.0"), "layer 1 read ahead");
  assert.ok(at("compute-end", "layer.0") < at("compute-start", "layer.1"));
});

Deno.test("step: a non-finite value is replayed to the stage it began at", async () => {
  const { ids } = await reference();
  const S = ids[0].length;
  {
    using r = await rig({ family: (f) => ({ ...f, embedScale: () => NaN }) });
    await assert.rejects(
      r.loop.step(ids, null, r.cache(2, S), false),
      (e) =>
        e instanceof NonFiniteError && e.stage === "embedding" && e.layer === null &&
        e.message.startsWith("step-test: the output of embedding is not finite"),
    );
  }
  {
    const poison = (f: Family): Family => ({
      ...f,
      async forwardLayer(ctx, w) {
        await f.forwardLayer(ctx, w);
        if (ctx.layer === 1) {
          ctx.be.upload(ctx.x, new Float32Array(ctx.T * ctx.cfg.hiddenSize).fill(Infinity));
        }
      },
    });
    using r = await rig({ family: poison });
    await assert.rejects(
      r.loop.step(ids, null, r.cache(2, S), false),
      (e) => e instanceof NonFiniteError && e.stage === "layer 1" && e.layer === 1,
    );
  }
});

Deno.test("step: too many tokens for the cache is an InputError before any work", async () => {
  const trace: TraceEvent[] = [];
  using r = await rig({ trace });
  const cache = r.cache(1, 4);
  trace.length = 0;
  await assert.rejects(
    r.loop.step([[1, 2, 3, 4, 5]], null, cache, false),
    (e) => e instanceof InputError && /0 cached \+ 5 new tokens exceed maxSeqLen 4/.test(e.message),
  );
  assert.equal(cache.length, 0);
  assert.deepEqual([...cache.nextPosition], [0]);
  assert.deepEqual(trace, [], "no layer was read");
});

Deno.test("step: a layer that throws gives its slot back", async () => {
  let fail = true;
  const flaky = (f: Family): Family => ({
    ...f,
    async forwardLayer(ctx, w) {
      if (fail && ctx.layer === 0) throw new Error("boom");
      await f.forwardLayer(ctx, w);
    },
  });
  // One pool slot (no read-ahead): had layer 0 kept it, layer 1 could not load.
  using r = await rig({ family: flaky, mapFiles: false, prefetchDepth: 0 });
  await assert.rejects(r.loop.step([[1, 2, 3]], null, r.cache(1, 3), false), /boom/);
  const w = await r.store.acquire(1);
  assert.ok(w.get("input_layernorm.weight"));
  r.store.release(1);
  fail = false;
  const out = await r.loop.step([[1, 2, 3]], null, r.cache(1, 3), false);
  assert.ok(out.every(Number.isFinite));
});
