/**
 * The memory planner: tiers from budgets, with the arithmetic done by hand for each case.
 */
import assert from "node:assert/strict";
import {
  plan,
  type PlanInput,
  planLayers,
  predictSecondsPerToken,
  runtimeMargin,
} from "../../lib/engine/planner.ts";
import { MemoryLimitError } from "../../lib/errors.ts";

const MiB = 2 ** 20;

/** 10 dense layers of 10 MiB, 20 MiB of small parts (a 20 MiB head), 5 MiB of work. */
function cpu(over: Partial<PlanInput> = {}): PlanInput {
  return {
    device: "cpu",
    layers: Array.from({ length: 10 }, () => ({ bytes: 10 * MiB, perToken: 10 * MiB })),
    smallBytes: 20 * MiB,
    smallPerToken: 20 * MiB,
    workBytes: 5 * MiB,
    prefetchDepth: 2,
    hostAvailable: 16 * 1024 * MiB,
    ...over,
  };
}

Deno.test("planner: everything fits → every layer resident, nothing streams", () => {
  const p = plan(cpu());
  assert.deepEqual(p.tiers, Array(10).fill("resident"));
  assert.equal(p.dropBehind, false);
  assert.deepEqual(p.perToken, { device: 120 * MiB, host: 0, pageCache: 0, disk: 0 });
});

Deno.test("planner: maxResidentBytes 0 with room to spare streams through the page cache", () => {
  const p = plan(cpu({ maxResidentBytes: 0 }));
  assert.deepEqual(p.tiers, Array(10).fill("stream"));
  assert.equal(p.dropBehind, false, "the page cache can hold them: no drop-behind");
  assert.equal(p.perToken.pageCache, 100 * MiB);
  assert.equal(p.perToken.disk, 0);
});

Deno.test("planner: a cap keeps that many bytes of layers, in order", () => {
  const p = plan(cpu({ maxResidentBytes: 35 * MiB }));
  assert.deepEqual(p.tiers.slice(0, 4), ["resident", "resident", "resident", "stream"]);
  assert.equal(p.bytes.resident, 30 * MiB);
});

Deno.test("planner: a model bigger than memory keeps a fixed set and drops the rest behind", () => {
  const host = 160 * MiB;
  const p = plan(cpu({ hostAvailable: host }));
  // Reserve: 5 work + 20 small + margin; the streaming window is 3 layers (depth 2 + 1).
  const reserve = 25 * MiB + runtimeMargin(host);
  const room = host - reserve - 30 * MiB;
  const kept = Math.floor(room / (10 * MiB));
  assert.equal(p.budget.reserve, reserve);
  assert.equal(p.tiers.filter((t) => t === "resident").length, kept);
  assert.deepEqual(p.tiers.slice(0, kept), Array(kept).fill("resident"));
  assert.equal(p.dropBehind, true);
  assert.equal(p.perToken.disk, (10 - kept) * 10 * MiB);
  assert.equal(p.perToken.pageCache, 0);
  assert.match(p.notes.join("\n"), /stream from disk, dropped after use/);
});

Deno.test("planner: memory below the reserve streams everything from disk", () => {
  // 40 MiB: above the least a plan needs (5 work + 20 small + one 10 MiB slot = 35) but below the
  // reserve with its runtime margin, so no layer can be kept.
  const p = plan(cpu({ hostAvailable: 40 * MiB }));
  assert.deepEqual(p.tiers, Array(10).fill("stream"));
  assert.equal(p.dropBehind, true);
  assert.equal(p.perToken.disk, 100 * MiB);
});

Deno.test("planner: memory that cannot hold the work, the small parts and one layer is refused", () => {
  // Least plan: 5 MiB work + 20 MiB small + one 10 MiB streaming slot = 35 MiB.
  assert.equal(plan(cpu({ hostAvailable: 35 * MiB })).tiers.length, 10, "35 MiB is enough");
  assert.throws(
    () => plan(cpu({ hostAvailable: 35 * MiB - 1 })),
    (e: unknown) => {
      assert.ok(e instanceof MemoryLimitError);
      assert.equal(e.memory, "host");
      assert.equal(e.needed, 35 * MiB);
      assert.equal(e.available, 35 * MiB - 1);
      assert.deepEqual(e.parts, { work: 5 * MiB, small: 20 * MiB, layer: 10 * MiB });
      assert.match(e.message, /^host memory: the model needs at least 35\.0 MiB/);
      assert.match(e.message, /KV cache and activations 5\.0 MiB/);
      assert.match(e.message, /one streamed layer 10\.0 MiB/);
      assert.match(e.message, /maxSeqLen/);
      return true;
    },
  );
  // The GPU: device memory (free or maxGpuMemory) is what must hold them.
  assert.throws(
    () => plan(cpu({ device: "cuda", deviceFree: 30 * MiB })),
    (e: unknown) =>
      e instanceof MemoryLimitError && e.memory === "device" && e.available === 30 * MiB,
  );
  assert.throws(
    () => plan(cpu({ device: "cuda", deviceFree: 1024 * MiB, maxGpuMemory: 20 * MiB })),
    (e: unknown) => e instanceof MemoryLimitError && e.available === 20 * MiB,
  );
  // CPU small parts mapped from their file are page cache (reclaimable), not held: 15 MiB needed.
  assert.equal(plan(cpu({ hostAvailable: 15 * MiB, smallMapped: true })).tiers.length, 10);
  assert.throws(
    () => plan(cpu({ hostAvailable: 15 * MiB - 1, smallMapped: true })),
    (e: unknown) =>
      e instanceof MemoryLimitError && e.needed === 15 * MiB && e.parts.small === 0 &&
      !/embedding/.test(e.message),
  );
  // On a GPU they are device buffers whatever the flag says.
  assert.throws(
    () => plan(cpu({ device: "cuda", deviceFree: 30 * MiB, smallMapped: true })),
    (e: unknown) => e instanceof MemoryLimitError && e.needed === 35 * MiB,
  );
  // Unknown memory is not refused (nothing to compare with).
  assert.equal(plan(cpu({ hostAvailable: null })).tiers.length, 10);
});

Deno.test("planner: unknown host memory streams through the page cache, no drop-behind", () => {
  const p = plan(cpu({ hostAvailable: null }));
  assert.deepEqual(p.tiers, Array(10).fill("stream"));
  assert.equal(p.dropBehind, false);
});

Deno.test("planner: dense layers are kept before MoE layers (more bytes saved per byte held)", () => {
  const layers = [
    { bytes: 40 * MiB, perToken: 8 * MiB }, // MoE: reads a fifth of itself per token
    { bytes: 10 * MiB, perToken: 10 * MiB },
    { bytes: 40 * MiB, perToken: 8 * MiB },
    { bytes: 10 * MiB, perToken: 10 * MiB },
  ];
  const p = plan(cpu({ layers, maxResidentBytes: 30 * MiB }));
  assert.deepEqual(p.tiers, ["stream", "resident", "stream", "resident"]);
});

Deno.test("planLayers: a MoE layer streamed reads its shared tensors and k of its experts", () => {
  const part = {
    dataBytes: 100,
    tensors: [
      { name: "attn", nbytes: 20 },
      ...[0, 1, 2, 3].map((e) => ({ name: `experts.${e}.w`, nbytes: 20 })),
    ],
  };
  const group = (n: string) => n.startsWith("experts.") ? n.split(".").slice(0, 2).join(".") : null;
  assert.deepEqual(planLayers([part], group, 2), [{ bytes: 100, perToken: 20 + 40 }]);
  assert.deepEqual(planLayers([part], group, null), [{ bytes: 100, perToken: 100 }]);
  assert.deepEqual(planLayers([part], undefined, 2), [{ bytes: 100, perToken: 100 }]);
});

Deno.test("planner: GPU fills device memory, then the pinned host tier, then streams from disk", () => {
  const p = plan({ ...cpu(), device: "cuda", deviceFree: 150 * MiB, hostAvailable: 250 * MiB });
  // Device: 150 − (5 work + 20 small + margin) leaves less than the 100 MiB of layers, so 3
  // slots (depth 2 + 1) come off too.
  const room = 150 * MiB - 25 * MiB - runtimeMargin(150 * MiB);
  assert.ok(room < 100 * MiB);
  const resident = Math.floor((room - 30 * MiB) / (10 * MiB));
  // Host: 250 − margin − 128 MiB of pinned staging − the streaming window.
  const hostRoom = 250 * MiB - runtimeMargin(250 * MiB) - 128 * MiB - 30 * MiB;
  const host = Math.min(10 - resident, Math.floor(hostRoom / (10 * MiB)));
  assert.ok(resident > 0 && host > 0 && resident + host < 10, "all three tiers are used");
  assert.equal(p.tiers.filter((t) => t === "resident").length, resident);
  assert.equal(p.tiers.filter((t) => t === "host").length, host);
  assert.equal(p.tiers.filter((t) => t === "stream").length, 10 - resident - host);
  assert.equal(p.perToken.host, host * 10 * MiB);
  assert.equal(p.perToken.disk, (10 - resident - host) * 10 * MiB);
});

Deno.test("planner: GPU caps maxGpuMemory and maxCpuMemory", () => {
  const p = plan({
    ...cpu(),
    device: "cuda",
    deviceFree: 80 * 1024 * MiB,
    maxGpuMemory: 160 * MiB,
    maxCpuMemory: 20 * MiB,
  });
  const room = 160 * MiB - 25 * MiB - runtimeMargin(160 * MiB);
  const resident = Math.floor((room - 30 * MiB) / (10 * MiB));
  assert.ok(resident > 0);
  assert.equal(p.tiers.filter((t) => t === "resident").length, resident);
  assert.equal(p.tiers.filter((t) => t === "host").length, 2);
});

Deno.test("predictSecondsPerToken: the slowest source bounds a step", () => {
  const p = plan(cpu({ hostAvailable: 160 * MiB }));
  const bw = { memory: 20, disk: 2 };
  const disk = p.perToken.disk / 2e9;
  assert.equal(predictSecondsPerToken(p, bw, "cpu"), disk);
  const fits = plan(cpu());
  assert.equal(predictSecondsPerToken(fits, bw, "cpu"), 120 * MiB / 20e9);
});

Deno.test("planner: too little memory for the streaming slots shrinks the read-ahead", () => {
  // A MoE-like model: 4 layers of 1500 MiB (a slot holds a whole layer), 1240 MiB of head.
  const input = cpu({
    layers: Array.from({ length: 4 }, () => ({ bytes: 1500 * MiB, perToken: 200 * MiB })),
    smallBytes: 1240 * MiB,
    smallPerToken: 620 * MiB,
    hostAvailable: 4600 * MiB,
  });
  const room = 4600 * MiB - 5 * MiB - 1240 * MiB - runtimeMargin(4600 * MiB);
  assert.ok(room < 3 * 1500 * MiB && room >= 2 * 1500 * MiB);
  const p = plan(input);
  assert.equal(p.prefetchDepth, 1, "two slots fit, three do not");
  assert.deepEqual(p.tiers, Array(4).fill("stream"));
  assert.match(p.notes.join("\n"), /prefetch depth 1 instead of 2/);
  assert.equal(plan(cpu()).prefetchDepth, 2, "with room the depth asked for stays");
});
