/**
 * The LayerStore (lib/engine/store.ts) driven directly, without a model: slots, the read-ahead,
 * the trace, on-demand groups and typed errors, over fixture splits on the CPU backend.
 */
import assert from "node:assert/strict";
import type { ManifestPart } from "../../lib/checkpoint.ts";
import type { Tier } from "../../lib/engine/planner.ts";
import { LayerStore, type TraceEvent } from "../../lib/engine/store.ts";
import { CheckpointError, InternalError, ModelClosedError } from "../../lib/errors.ts";
import { Backend } from "../../ffi/backend.ts";
import { download, openStore, planOf, splitDir, splitFixture } from "./_helpers.ts";

const layerParts = (parts: ManifestPart[]) => parts.filter((p) => p.id.startsWith("layer."));

/** The float32 data of `tensor` in a layer's part file, read from disk. */
async function fromFile(dir: string, part: ManifestPart, tensor: string): Promise<Float32Array> {
  const t = part.tensors.find((x) => x.name === tensor)!;
  using f = await Deno.open(`${dir}/${part.file}`);
  await f.seek(part.dataOffset + t.offset, Deno.SeekMode.Start);
  const buf = new Uint8Array(t.nbytes);
  let got = 0;
  while (got < buf.length) got += (await f.read(buf.subarray(got)))!;
  return new Float32Array(buf.buffer);
}

const reads = (trace: TraceEvent[], part: string) =>
  trace.filter((e) => e.kind === "read-start" && e.part === part).length;

const NORM = "input_layernorm.weight";

Deno.test("store: a streamed layer released from the one pool slot leaves it to the next layer", async () => {
  using s = await openStore("llama_tied", "store", {
    plan: planOf(["stream", "stream"]),
    mapFiles: false,
  });
  const [l0, l1] = layerParts(s.split.manifest.parts);
  const off = (p: ManifestPart) => p.tensors.find((t) => t.name === NORM)!.offset;
  assert.equal(off(l0), off(l1), "both layer files place the tensor at the same offset");
  const d0 = await fromFile(s.split.dir, l0, NORM), d1 = await fromFile(s.split.dir, l1, NORM);
  assert.notDeepEqual(d0, d1, "the layers' weights differ");

  const allocs = s.be.stats().allocs;
  const w0 = await s.store.acquire(0);
  const p0 = w0.get(NORM).ptr;
  assert.deepEqual(download(s.be, p0, d0.length), d0);
  s.store.release(0);
  const w1 = await s.store.acquire(1);
  assert.deepEqual(download(s.be, w1.get(NORM).ptr, d1.length), d1);
  // Layer 0's view now shows layer 1's bytes: layer 1 was read into the slot layer 0 had.
  assert.deepEqual(download(s.be, p0, d1.length), d1, "the slot now holds layer 1");
  s.store.release(1);
  assert.equal(s.be.stats().allocs, allocs, "no allocation per layer: the slot was sized at open");
});

Deno.test("store: a layer in use keeps its slot; another streamed layer then has none", async () => {
  using s = await openStore("llama_tied", "store", {
    plan: planOf(["stream", "stream"]),
    mapFiles: false,
  });
  await s.store.acquire(0);
  await assert.rejects(
    s.store.acquire(1),
    (e) => e instanceof InternalError && /no free slot for layer 1/.test(e.message),
  );
  s.store.release(0);
  const w1 = await s.store.acquire(1);
  assert.ok(w1.get(NORM));
  s.store.release(1);
});

Deno.test("store: trace: small parts at open, each layer read before it is handed out", async () => {
  const trace: TraceEvent[] = [];
  using s = await openStore("llama_tied", "store", {
    plan: planOf(["stream", "stream"]),
    mapFiles: false,
    trace,
  });
  assert.deepEqual(trace, [
    { kind: "read-start", part: "embed" },
    { kind: "read-end", part: "embed" },
    { kind: "read-start", part: "norm" },
    { kind: "read-end", part: "norm" },
  ]);
  trace.length = 0;
  for (const layer of [0, 1, 0, 1]) {
    const before = trace.length;
    await s.store.acquire(layer);
    // acquire returns once the read ended: no later read-end for it.
    assert.deepEqual(trace.slice(before), [
      { kind: "read-start", part: `layer.${layer}` },
      { kind: "read-end", part: `layer.${layer}` },
    ]);
    s.store.release(layer);
  }
  // The slot still holds layer 1: acquiring it again reads nothing.
  const before = trace.length;
  await s.store.acquire(1);
  assert.equal(trace.length, before);
  s.store.release(1);
});

Deno.test("store: resident layers are read once, streamed ones again unless their slot kept them", async () => {
  for (const mapFiles of [false, true]) {
    const trace: TraceEvent[] = [];
    using s = await openStore("llama_tied", "store", {
      plan: planOf(["resident", "stream"]),
      mapFiles,
      trace,
    });
    const views = new Set<unknown>();
    for (let step = 0; step < 3; step++) {
      for (const layer of [0, 1]) {
        const w = await s.store.acquire(layer);
        if (layer === 0) views.add(w);
        s.store.release(layer);
      }
    }
    assert.equal(reads(trace, "layer.0"), 1, `mapFiles ${mapFiles}: resident layer read once`);
    // A mapped streamed layer is read ahead again on each use; an unmapped one keeps the pool
    // slot it was read into while no other layer takes it.
    assert.equal(reads(trace, "layer.1"), mapFiles ? 3 : 1, `mapFiles ${mapFiles}: streamed layer`);
    assert.equal(views.size, 1, "a resident layer keeps its slot and its views");
    assert.equal(s.store.residentLayers, 1);
    assert.equal(s.store.numLayers, 2);
  }
});

Deno.test("store: mapped files: streamed layers in place; resident ones and small parts in buffers", async () => {
  const be0 = Backend.open({ device: "cpu" });
  const canMap = be0.canMap;
  be0.close();
  if (!canMap) return; // a backend that cannot map (none on the CPU today)
  const sum = (ps: ManifestPart[]) => ps.reduce((a, p) => a + p.dataBytes, 0);
  {
    // Nothing resident (memory is tight): every part is mapped page cache, nothing allocated.
    using s = await openStore("llama_tied", "store", { plan: planOf(["stream", "stream"]) });
    const st = s.be.stats();
    assert.equal(st.mappedBytes, sum(s.split.manifest.parts));
    assert.equal(st.liveAllocs, 0);
  }
  using s = await openStore("llama_tied", "store", { plan: planOf(["stream", "resident"]) });
  const m = s.split.manifest;
  const [l0, l1] = layerParts(m.parts);
  const small = m.parts.filter((p) => !p.id.startsWith("layer."));
  const st = s.be.stats();
  // Layer 0 streams from its mapping; layer 1 and the small parts live in their own buffers.
  assert.equal(st.mappedBytes, l0.dataBytes);
  assert.equal(st.liveBytes, l1.dataBytes + sum(small));
  assert.equal(st.liveAllocs, 1 + small.length);
  for (const [layer, part] of [[0, l0], [1, l1]] as const) {
    const want = await fromFile(s.split.dir, part, NORM);
    const w = await s.store.acquire(layer);
    assert.deepEqual(download(s.be, w.get(NORM).ptr, want.length), want, `layer ${layer}`);
    s.store.release(layer);
  }
});

Deno.test("store: prefetchAfter reads the next streamed layers ahead, skipping resident ones, wrapping", async () => {
  const trace: TraceEvent[] = [];
  using s = await openStore("gemma3_text", "store", {
    plan: planOf(["stream", "resident", "stream", "stream"], { prefetchDepth: 1 }),
    mapFiles: false,
    trace,
  });
  trace.length = 0;
  // Step 1: layer 1 (resident) is not held yet, so it is read ahead too.
  await s.store.acquire(0);
  s.store.prefetchAfter(0);
  assert.deepEqual(trace.slice(-1), [{ kind: "read-start", part: "layer.1" }]);
  s.store.release(0);
  await s.store.acquire(1);
  assert.equal(reads(trace, "layer.1"), 1, "acquire waits for the read-ahead, no second read");
  s.store.prefetchAfter(1);
  assert.deepEqual(trace.slice(-1), [{ kind: "read-start", part: "layer.2" }]);
  s.store.release(1);
  for (const layer of [2, 3]) {
    await s.store.acquire(layer);
    s.store.prefetchAfter(layer);
    s.store.release(layer);
  }
  // After the last layer the read-ahead wraps to the next step's first.
  assert.deepEqual(trace.slice(-1), [{ kind: "read-start", part: "layer.0" }]);
  // Step 2: layer 1 is resident and held: the read-ahead after layer 0 goes past it to layer 2.
  await s.store.acquire(0);
  const before = trace.length;
  s.store.prefetchAfter(0);
  assert.deepEqual(trace.slice(before), [{ kind: "read-start", part: "layer.2" }]);
  s.store.release(0);
  for (const layer of [1, 2, 3]) {
    await s.store.acquire(layer);
    s.store.release(layer);
  }
  assert.equal(reads(trace, "layer.1"), 1);
  assert.equal(reads(trace, "layer.2"), 2);
  // Every read-end follows its read-start.
  for (const [i, e] of trace.entries()) {
    if (e.kind !== "read-end") continue;
    const start = trace.findLastIndex((x, j) => j < i && x.part === e.part);
    assert.equal(trace[start].kind, "read-start", `${e.part} at ${i}`);
  }
});

Deno.test("store: without read-ahead, prefetchAfter reads nothing", async () => {
  const trace: TraceEvent[] = [];
  using s = await openStore("gemma3_text", "store", {
    plan: planOf(["stream", "stream", "stream", "stream"], { prefetchDepth: 0 }),
    mapFiles: false,
    trace,
  });
  trace.length = 0;
  await s.store.acquire(0);
  s.store.prefetchAfter(0);
  assert.equal(trace.length, 2); // layer 0's read-start and read-end
  s.store.release(0);
});

Deno.test("store: on-demand groups of a streamed layer load when asked, resident layers load whole", async () => {
  const trace: TraceEvent[] = [];
  const { ck } = await splitFixture("qwen2_moe", "store");
  const lazyGroup = (local: string) => ck.family.lazyGroup!(local, ck.config);
  using s = await openStore("qwen2_moe", "store", {
    plan: planOf(["resident", "resident", "stream"]),
    mapFiles: false,
    trace,
    lazyGroup,
  });
  const expert = "mlp.experts.1.up_proj.weight";
  assert.equal(lazyGroup(expert), "expert.1");

  const streamed = await s.store.acquire(2);
  assert.throws(
    () => streamed.get(expert),
    (e) => e instanceof InternalError && /layer.2 tensor .* used before load/.test(e.message),
  );
  assert.throws(() => streamed.opt(expert), InternalError);
  assert.ok(streamed.get("mlp.gate.weight"), "group-less tensors load with the layer");
  await streamed.load(["expert.1"]);
  assert.ok(streamed.get(expert));
  assert.deepEqual(trace.filter((e) => e.part.startsWith("layer.2/")), [
    { kind: "read-start", part: "layer.2/expert.1" },
    { kind: "read-end", part: "layer.2/expert.1" },
  ]);
  await streamed.load(["expert.1"]); // loaded: no second read
  assert.equal(reads(trace, "layer.2/expert.1"), 1);
  assert.throws(() => streamed.get("mlp.experts.0.up_proj.weight"), InternalError);
  await assert.rejects(streamed.load(["expert.99"]), CheckpointError);
  s.store.release(2);

  const resident = await s.store.acquire(0);
  assert.ok(resident.get(expert), "a resident layer's groups came with it");
  assert.equal(trace.filter((e) => e.part.startsWith("layer.0/")).length, 0);
  s.store.release(0);

  const embed = s.store.part("embed");
  await embed.load([]);
  await assert.rejects(embed.load(["expert.0"]), CheckpointError);
});

Deno.test("store: bad parts, plans and files are typed errors", async () => {
  {
    using s = await openStore("llama_tied", "store", { plan: planOf(["resident", "resident"]) });
    assert.throws(() => s.store.part("lm_head"), CheckpointError); // tied: no such part
    assert.throws(
      () => s.store.part("embed").get("bias"),
      (e) => e instanceof CheckpointError && /part embed has no tensor bias/.test(e.message),
    );
    assert.equal(s.store.part("embed").opt("bias"), null);
    assert.deepEqual(s.store.part("embed").get("weight").shape, [256, 64]);
  }
  await assert.rejects(
    openStore("llama_tied", "store", { plan: planOf(["resident"]) }),
    (e) => e instanceof InternalError && /a plan of 1 layers for 2/.test(e.message),
  );
  // A part file that no longer matches the manifest is never loaded.
  const { split } = await splitFixture("llama_tied", "store");
  const dir = splitDir("store-truncated");
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir, { recursive: true });
  try {
    for (const p of split.manifest.parts) {
      await Deno.copyFile(`${split.dir}/${p.file}`, `${dir}/${p.file}`);
    }
    const victim = layerParts(split.manifest.parts)[1];
    await Deno.truncate(`${dir}/${victim.file}`, victim.bytes - 4);
    const be = Backend.open({ device: "cpu" });
    try {
      await assert.rejects(
        LayerStore.open(be, dir, split.manifest, { plan: planOf(["resident", "resident"]) }),
        (e) =>
          e instanceof CheckpointError && e.message.includes(victim.file) &&
          e.message.includes(`the manifest says ${victim.bytes}`),
      );
      assert.equal(be.stats().liveAllocs, 0, "nothing was loaded");
    } finally {
      be.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("store: close waits, frees everything and is idempotent; later use is ModelClosedError", async () => {
  for (const mapFiles of [false, true]) {
    const s = await openStore("gemma3_text", "store", {
      plan: planOf(["resident", "host", "stream", "stream"], { prefetchDepth: 1 }),
      mapFiles,
    });
    try {
      await s.store.acquire(0);
      s.store.prefetchAfter(0); // a read in flight at close
      s.store.close();
      s.store.close();
      const st = s.be.stats();
      assert.equal(st.liveAllocs, 0, `mapFiles ${mapFiles}: every allocation freed`);
      assert.equal(st.mappedBytes, 0, `mapFiles ${mapFiles}: every mapping dropped`);
      assert.equal(st.hostBytes, 0, `mapFiles ${mapFiles}: the host tier freed`);
      await assert.rejects(s.store.acquire(1), ModelClosedError);
    } finally {
      s[Symbol.dispose]();
    }
  }
});

Deno.test("store: replan moves tiers on mapped files; unmapped buffers keep their tiers", async () => {
  {
    const trace: TraceEvent[] = [];
    using s = await openStore("llama_tied", "store", {
      plan: planOf(["stream", "stream"]),
      mapFiles: false,
      trace,
    });
    assert.equal(s.store.replan(planOf(["stream", "stream"])), true, "the same plan");
    assert.equal(s.store.replan(planOf(["resident", "stream"])), false, "buffers sized at open");
    assert.equal(s.store.replan(planOf(["stream", "stream"], { prefetchDepth: 1 })), false);
    assert.deepEqual(s.store.plan.tiers, ["stream", "stream"]);
    assert.equal(s.store.replan(planOf(["stream", "stream"], { dropBehind: true })), true);
    assert.equal(s.store.plan.dropBehind, true);
  }
  const be0 = Backend.open({ device: "cpu" });
  const canMap = be0.canMap;
  be0.close();
  if (!canMap) return;
  const trace: TraceEvent[] = [];
  using s = await openStore("llama_tied", "store", { plan: planOf(["stream", "stream"]), trace });
  const p = planOf(["resident", "resident"]);
  assert.equal(s.store.replan(p), true);
  assert.equal(s.store.plan, p);
  assert.equal(s.store.residentLayers, 2);
  trace.length = 0;
  for (let step = 0; step < 2; step++) {
    for (const layer of [0, 1]) {
      await s.store.acquire(layer);
      s.store.release(layer);
    }
  }
  assert.equal(reads(trace, "layer.0"), 1, "now resident: read once");
  assert.equal(s.store.replan(planOf(["stream", "resident"])), true);
  assert.equal(s.store.residentLayers, 1);
  trace.length = 0;
  for (let step = 0; step < 2; step++) {
    for (const layer of [0, 1]) {
      await s.store.acquire(layer);
      s.store.release(layer);
    }
  }
  assert.equal(reads(trace, "layer.0"), 2, "streamed again: read on each use");
  assert.equal(reads(trace, "layer.1"), 0, "still resident: not read again");
  // Layer 0 went back from its buffer to its mapping; layer 1 kept its buffer. Both still give
  // their file's bytes.
  const [l0, l1] = layerParts(s.split.manifest.parts);
  const small = s.split.manifest.parts.filter((p) => !p.id.startsWith("layer."));
  const st = s.be.stats();
  // The small parts stay as they were opened (mapped: nothing was resident).
  assert.equal(st.mappedBytes, l0.dataBytes + small.reduce((a, p) => a + p.dataBytes, 0));
  assert.equal(st.liveBytes, l1.dataBytes, "one resident buffer");
  for (const [layer, part] of [[0, l0], [1, l1]] as const) {
    const want = await fromFile(s.split.dir, part, NORM);
    const w = await s.store.acquire(layer);
    assert.deepEqual(download(s.be, w.get(NORM).ptr, want.length), want, `layer ${layer}`);
    s.store.release(layer);
  }
});

Deno.test("store: a layer index the split does not have is an InternalError", async () => {
  // Every tier and file mode, streamed through pool slots (unmapped) included.
  for (
    const [tiers, mapFiles] of [
      [["resident", "resident"], false],
      [["stream", "stream"], true],
      [["stream", "stream"], false],
    ]
  ) {
    using s = await openStore("llama_tied", "store", {
      plan: planOf(tiers as Tier[]),
      mapFiles: mapFiles as boolean,
    });
    for (const layer of [2, -1, 0.5]) {
      await assert.rejects(
        s.store.acquire(layer),
        (e) => e instanceof InternalError && e.message.includes(`layer ${layer}`),
        `layer ${layer}`,
      );
    }
    const w = await s.store.acquire(1);
    assert.ok(w.get(NORM), "the store still works");
    s.store.release(1);
  }
});
