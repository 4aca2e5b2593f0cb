import assert from "node:assert/strict";
import {
  AutoModel,
  InputError,
  isFlashAttentionAvailable,
  MemoryLimitError,
  ModelClosedError,
  type Plan,
  plan,
  type TraceEvent,
} from "../mod.ts";
import type { Manifest } from "../lib/checkpoint.ts";

const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url).pathname;
const splitDir = (name: string) => new URL(`./.tmp/split/engine-${name}`, import.meta.url).pathname;

async function manifestOf(name: string): Promise<Manifest> {
  return JSON.parse(await Deno.readTextFile(`${splitDir(name)}/manifest.json`));
}

function open(name: string, opts: Parameters<typeof AutoModel.fromPretrained>[1] = {}) {
  return AutoModel.fromPretrained(fixture(name), {
    layerShardsSavingPath: splitDir(name),
    maxResidentBytes: 0,
    ...opts,
  });
}

const PROMPT = [[3, 14, 15, 92, 65]];

function at(trace: TraceEvent[], kind: TraceEvent["kind"], part: string, from = 0): number {
  const i = trace.findIndex((e, j) => j >= from && e.kind === kind && e.part === part);
  assert.ok(i >= 0, `no ${kind} ${part} in the trace`);
  return i;
}

Deno.test("engine: with prefetching, the read of layer i+1 starts before layer i's compute ends", async () => {
  const trace: TraceEvent[] = [];
  await using model = await open("llama3_rope", { prefetching: true, trace });
  const n = model.config.numLayers;
  assert.ok(n >= 2);
  trace.length = 0;
  await model.forward(PROMPT);
  for (let i = 0; i + 1 < n; i++) {
    const readNext = at(trace, "read-start", `layer.${i + 1}`);
    const computeEnd = at(trace, "compute-end", `layer.${i}`);
    const computeStart = at(trace, "compute-start", `layer.${i}`);
    assert.ok(readNext < computeEnd, `read of layer ${i + 1} started after layer ${i} finished`);
    assert.ok(readNext < computeStart, `read of layer ${i + 1} started after layer ${i} began`);
  }
});

Deno.test("engine: without prefetching, each layer is read only after the previous one computed", async () => {
  const trace: TraceEvent[] = [];
  await using model = await open("llama3_rope", { prefetching: false, trace });
  trace.length = 0;
  await model.forward(PROMPT);
  for (let i = 0; i + 1 < model.config.numLayers; i++) {
    assert.ok(at(trace, "read-start", `layer.${i + 1}`) > at(trace, "compute-end", `layer.${i}`));
  }
});

Deno.test("engine: streamed layers are read every step, resident layers once", async () => {
  const trace: TraceEvent[] = [];
  const countReads = () =>
    trace.filter((e) => e.kind === "read-start" && e.part.startsWith("layer.")).length;
  {
    await using model = await open("llama_tied", { prefetching: false, trace });
    await model.forward(PROMPT);
    await model.forward(PROMPT);
    assert.equal(model.residentLayers, 0);
    assert.equal(countReads(), 2 * model.config.numLayers);
  }
  trace.length = 0;
  {
    await using model = await open("llama_tied", {
      prefetching: true,
      trace,
      maxResidentBytes: 1e12,
    });
    await model.forward(PROMPT);
    await model.forward(PROMPT);
    await model.generate(PROMPT, { maxNewTokens: 3 });
    assert.equal(model.residentLayers, model.config.numLayers);
    assert.equal(countReads(), model.config.numLayers);
  }
});

Deno.test("engine: a tied lm_head is the embedding, held once on the device", async () => {
  await using model = await open("llama_tied", { prefetching: false });
  assert.equal(model.config.tieWordEmbeddings, true);
  const m = await manifestOf("llama_tied");
  const bytes = (id: string) => m.parts.find((p) => p.id === id)?.dataBytes ?? 0;
  assert.equal(m.parts.some((p) => p.id === "lm_head"), false, "a tied split has no lm_head part");
  const layerMax = Math.max(
    ...m.parts.filter((p) => p.id.startsWith("layer.")).map((p) => p.dataBytes),
  );
  const s = model.backend.stats();
  // Loaded once: embed + norm, nothing else.
  assert.equal(s.h2dBytes, bytes("embed") + bytes("norm"));
  if (model.backend.canMap) {
    // Every part file is mapped (computed in place); no device copy of any weight.
    const layers = m.parts.filter((p) => p.id.startsWith("layer.")).map((p) => p.dataBytes);
    assert.equal(s.mappedBytes, bytes("embed") + bytes("norm") + layers.reduce((a, b) => a + b));
    assert.equal(s.liveAllocs, 0);
  } else {
    // embed + norm and one streaming slot (prefetch off).
    assert.equal(s.liveBytes, bytes("embed") + bytes("norm") + layerMax);
    assert.equal(s.liveAllocs, 3);
  }
});

Deno.test("engine: an untied lm_head is its own part", async () => {
  await using model = await open("llama_untied_sharded", { prefetching: false });
  const m = await manifestOf("llama_untied_sharded");
  const bytes = (id: string) => m.parts.find((p) => p.id === id)!.dataBytes;
  assert.equal(model.backend.stats().h2dBytes, bytes("embed") + bytes("norm") + bytes("lm_head"));
});

Deno.test("engine: useCache false gives the same logits as the cached path", async () => {
  await using model = await open("qwen2");
  const ids = [[5, 6, 7, 8, 9, 10, 11, 12]];
  const full = await model.forward(ids);
  model.resetCache();
  const a = await model.forward([ids[0].slice(0, 5)], { useCache: true });
  const b = await model.forward([ids[0].slice(5)], { useCache: true });
  const V = model.config.vocabSize;
  assert.equal(model.cacheLength, 8);
  const cached = new Float32Array(full.length);
  cached.set(a, 0);
  cached.set(b, 5 * V);
  let max = 0;
  for (let i = 0; i < full.length; i++) max = Math.max(max, Math.abs(full[i] - cached[i]));
  assert.ok(max < 1e-5, `cached vs uncached max |Δ| ${max}`);
  assert.deepEqual(full.dims, [1, 8, V]);
  const g1 = await model.generate(ids, { maxNewTokens: 8 });
  const g2 = await model.generate(ids, { maxNewTokens: 8, useCache: false });
  assert.deepEqual(g1, g2);
});

Deno.test("engine: batch rows equal running each row alone", async () => {
  await using model = await open("mistral");
  const rows = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42, 43, 44, 45, 46]];
  const both = await model.generate(rows, { maxNewTokens: 6 });
  for (const [i, r] of rows.entries()) {
    assert.deepEqual((await model.generate([r], { maxNewTokens: 6 }))[0], both[i]);
  }
});

Deno.test("engine: bad input is a typed error before any work", async () => {
  await using model = await open("llama_tied", { maxSeqLen: 16 });
  await assert.rejects(model.forward([[1, 2], [3]]), InputError);
  await assert.rejects(
    model.forward([[1, 9999]]),
    /inputIds\[0\]\[1\] = 9999 is not a token id in \[0, 256\)/,
  );
  await assert.rejects(model.forward([]), InputError);
  await assert.rejects(model.generate([[1, 2, 3]], { maxNewTokens: 20 }), /exceeds maxSeqLen 16/);
  await assert.rejects(
    model.generate([[1]], { doSample: true, temperature: 0 }),
    /temperature must be > 0/,
  );
  await assert.rejects(model.generate([[1]], { topP: 1.5 }), /topP must be in \(0, 1\]/);
  await assert.rejects(model.generate("hello"), /needs a tokenizer/);
  model.resetCache();
  await model.forward([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], { useCache: true });
  await assert.rejects(
    model.forward([[1, 2, 3, 4, 5, 6, 7]], { useCache: true }),
    /10 cached \+ 7 new tokens exceed maxSeqLen 16/,
  );
  await assert.rejects(model.forward([[1], [2]], { useCache: true }), /call resetCache\(\) first/);
});

Deno.test("engine: close frees every device allocation and later calls fail", async () => {
  const model = await open("llama_tied");
  await model.generate(PROMPT, { maxNewTokens: 2 });
  const be = model.backend;
  model.close();
  model.close();
  await assert.rejects(model.forward(PROMPT), /closed/);
  assert.throws(() => be.stats(), /closed/);
  await assert.rejects(model.forward(PROMPT), ModelClosedError);
});

Deno.test("engine: attention implementation options on the CPU backend", async () => {
  for (const impl of ["auto", "eager"] as const) {
    await using model = await open("llama_tied", { attnImplementation: impl });
    assert.equal(model.activeAttentionImplementation, "eager");
  }
  for (const impl of ["flash", "sdpa", "flash_attention_2"] as const) {
    await assert.rejects(
      open("llama_tied", { attnImplementation: impl }),
      /CPU backend has one attention/,
    );
  }
  await assert.rejects(
    open("llama_tied", { attnImplementation: "fast" as never }),
    /attnImplementation: expected one of/,
  );
  const flash = isFlashAttentionAvailable();
  assert.equal(typeof flash.available, "boolean");
  assert.ok(flash.reason.length > 0);
});

Deno.test("engine: streaming allocates nothing per layer or token once buffers are sized", async () => {
  await using model = await open("llama_tied", { prefetching: true, maxResidentBytes: 0 });
  const rows = [[5, 6, 7, 8, 9], [40, 41, 42]];
  await model.generate(rows, { maxNewTokens: 8 });
  const allocs = model.backend.stats().allocs;
  await model.generate(rows, { maxNewTokens: 8 });
  // generate() starts a fresh KV cache (K and V per layer); nothing else is allocated.
  assert.equal(model.backend.stats().allocs - allocs, 2 * model.config.numLayers);
});

/** Logits of the same forward under `opts`, and the H2D bytes its second step moved. */
async function stepUnder(name: string, opts: Parameters<typeof open>[1], ids = PROMPT) {
  await using model = await open(name, { maxResidentBytes: "auto", ...opts });
  await model.forward(ids);
  const before = model.backend.stats().h2dBytes;
  const logits = await model.forward(ids);
  return {
    logits,
    read: model.backend.stats().h2dBytes - before,
    plan: model.plan,
    resident: model.residentLayers,
  };
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

Deno.test("engine: bigger than memory (maxMemory: current RSS + 16 MiB), every layer streams from disk, drop-behind", async () => {
  // 4 layers through a pool of 2 slots (prefetch depth 1): every layer is read every step.
  const ref = await stepUnder("gemma3_text", { prefetchDepth: 1 });
  assert.equal(ref.plan.dropBehind, false);
  assert.equal(ref.resident, ref.plan.tiers.length, "with room, every layer is resident");
  assert.equal(ref.read, 0, "resident layers are not read again");
  // 16 MiB beyond what the process holds: the layers (KiB each) fit, the runtime margin does not.
  const small = await stepUnder("gemma3_text", {
    maxMemory: Deno.memoryUsage().rss + 16 * 2 ** 20,
    prefetchDepth: 1,
  });
  assert.equal(small.resident, 0);
  assert.equal(small.plan.dropBehind, true);
  const m = await manifestOf("gemma3_text");
  const layers = m.parts.filter((p) => p.id.startsWith("layer."));
  assert.equal(
    small.read,
    layers.reduce((s, p) => s + p.dataBytes, 0),
    "every layer read per step",
  );
  assert.equal(maxDiff(small.logits, ref.logits), 0, "the same weights give the same logits");
});

Deno.test("engine: memory that cannot hold one streamed layer is refused at load, and by a call that needs more", async () => {
  // No room beyond the current RSS: the KV cache, the embedding and one layer cannot fit.
  await assert.rejects(open("gemma3_text", { maxMemory: 0 }), (e: unknown) => {
    assert.ok(e instanceof MemoryLimitError, String(e));
    assert.equal(e.memory, "host");
    assert.equal(e.available, 0);
    // The embedding/norm/head are mapped file pages (reclaimable): not counted.
    assert.ok(e.parts.work > 0 && e.parts.small === 0 && e.parts.layer > 0);
    assert.equal(e.needed, e.parts.work + e.parts.small + e.parts.layer);
    return true;
  });
  // A model that loads in a given room refuses a call whose KV cache cannot fit there, and stays
  // usable: the next call that fits gives the same logits as before.
  const m = await manifestOf("gemma3_text");
  const small = m.parts.filter((p) => !p.id.startsWith("layer.")).reduce(
    (s, p) => s + p.dataBytes,
    0,
  );
  const layer = Math.max(
    ...m.parts.filter((p) => p.id.startsWith("layer.")).map((p) => p.dataBytes),
  );
  await using model = await open("gemma3_text", {
    maxMemory: Deno.memoryUsage().rss + small + layer + 32 * 2 ** 20,
    maxSeqLen: 64,
  });
  const first = await model.forward(PROMPT);
  // 256 rows of 64 tokens: their logits alone (2 × 4 × 16,384 × 256 bytes) are 32 MiB.
  const big = Array.from({ length: 256 }, () => Array.from({ length: 64 }, (_, i) => i + 1));
  await assert.rejects(model.forward(big), MemoryLimitError);
  assert.equal(maxDiff(await model.forward(PROMPT), first), 0);
});

Deno.test("engine: a mixed plan keeps its resident layers and streams the rest each step", async () => {
  const ref = await stepUnder("gemma3_text", {});
  const m = await manifestOf("gemma3_text");
  const layers = m.parts.filter((p) => p.id.startsWith("layer."));
  assert.equal(layers.length, 4);
  for (const dropBehind of [true, false]) {
    const mixed = await stepUnder("gemma3_text", {
      prefetching: false, // one streaming slot: the streamed layers take turns in it
      planner: (input) => {
        const p = plan(input);
        return { ...p, tiers: p.tiers.map((_, i) => i % 2 ? "stream" : "resident"), dropBehind };
      },
    });
    const streamed = layers.filter((_, i) => i % 2).reduce((s, p) => s + p.dataBytes, 0);
    assert.equal(mixed.read, streamed, `dropBehind ${dropBehind}: only streamed layers are read`);
    assert.equal(maxDiff(mixed.logits, ref.logits), 0);
  }
});

Deno.test("engine: a plan that changes between calls moves layers between tiers", async () => {
  let call = 0;
  const m = await manifestOf("llama_tied");
  const n = m.parts.filter((p) => p.id.startsWith("layer.")).length;
  const ref = await stepUnder("llama_tied", {});
  await using model = await open("llama_tied", {
    planner: (input) => {
      const p = plan(input);
      const k = call++ % 3; // all resident / half streamed with drop-behind / all streamed kept
      const tiers = p.tiers.map((_, i) =>
        k === 0 || (k === 1 && i % 2 === 0) ? "resident" : "stream"
      );
      return { ...p, tiers, dropBehind: k === 1 } as Plan;
    },
  });
  for (let i = 0; i < 7; i++) {
    const logits = await model.forward(PROMPT);
    assert.equal(maxDiff(logits, ref.logits), 0, `call ${i}`);
  }
  assert.ok(call >= 7);
  assert.ok(model.residentLayers <= n);
  const g = await model.generate(PROMPT, { maxNewTokens: 4 });
  const gRef = await (async () => {
    await using r = await open("llama_tied", { maxResidentBytes: "auto" });
    return await r.generate(PROMPT, { maxNewTokens: 4 });
  })();
  assert.deepEqual(g, gRef);
});

Deno.test("engine: without mapping, resident, pinned-host-tier and streamed layers (the GPU's path)", async () => {
  const ref = await stepUnder("gemma3_text", {});
  const m = await manifestOf("gemma3_text");
  const layers = m.parts.filter((p) => p.id.startsWith("layer."));
  const tiers = ["resident", "host", "stream", "host"] as const;
  const bytes = (t: string) =>
    layers.filter((_, i) => tiers[i] === t).reduce((s, p) => s + p.dataBytes, 0);
  await using model = await open("gemma3_text", {
    mapFiles: false,
    prefetching: false,
    planner: (input) => ({ ...plan(input), tiers: [...tiers], dropBehind: false }),
  });
  const s0 = model.backend.stats();
  assert.equal(s0.mappedBytes, 0, "nothing is mapped");
  assert.equal(s0.hostBytes, bytes("host"), "the host tier holds its layers");
  await model.forward(PROMPT);
  const before = model.backend.stats().h2dBytes;
  const logits = await model.forward(PROMPT);
  const read = model.backend.stats().h2dBytes - before;
  assert.equal(
    read,
    bytes("host") + bytes("stream"),
    "host-tier and streamed layers move each step",
  );
  assert.equal(maxDiff(logits, ref.logits), 0);
});
