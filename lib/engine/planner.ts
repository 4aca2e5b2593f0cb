/**
 * The memory planner: where each decoder layer lives, decided from measured budgets, never by LRU
 * (in a sequential sweep over the layers LRU evicts every layer just before its reuse, so it keeps
 * nothing).
 *
 * Tiers, fastest first:
 *  - `resident`: kept in device memory between steps (on the CPU: a buffer backed by huge pages,
 *    read once and never dropped);
 *  - `host`: GPU only, a copy in pinned host memory, copied to the device each step;
 *  - `stream`: read from its file each step, through the page cache. When the page cache cannot
 *    hold the streamed layers next to everything else (`dropBehind`), each one is dropped from
 *    memory right after use: it would be evicted before its reuse anyway, and this way it never
 *    evicts the resident set — its bytes come from the disk every step.
 *
 * The budget is what the process may really use (see lib/memory.ts: available RAM and cgroup
 * limits), minus the KV cache and activations (`workBytes`), the small always-resident parts
 * (embedding, final norm, head), the streaming window (the layers in flight) and a margin for the
 * runtime's own growth. Users cap it with `maxResidentBytes`, `maxGpuMemory`, `maxCpuMemory`.
 * Layers are kept in order of bytes saved per token per byte held (a dense layer saves all its
 * bytes every token; a MoE layer only the experts a token routes to), then by index.
 *
 * Memory that cannot hold even the smallest plan (the work bytes, the small parts unless they are
 * mapped file pages, and one streaming slot) is refused with a `MemoryLimitError` naming each
 * part, instead of a plan that the out-of-memory killer would end mid-call.
 *
 * Pure: no I/O, no timing; tests/engine/planner_test.ts covers it.
 *
 * @module
 */
import type { ModelConfig } from "../config.ts";
import { MemoryLimitError } from "../errors.ts";

/** One decoder layer as the planner sees it. */
export interface PlanLayer {
  /** Bytes the layer holds. */
  bytes: number;
  /** Bytes a decode step reads when the layer streams (a MoE layer: its routed share). */
  perToken: number;
}

/** Bytes of a layer part's tensors: the part as a split manifest lists it. */
export interface LayerTensors {
  dataBytes: number;
  tensors: { name: string; nbytes: number }[];
}

/**
 * Experts a MoE token routes to, as the family parsed it (its config class's default when
 * config.json omits `num_experts_per_tok`), or null for a dense model.
 */
export function expertsPerToken(cfg: ModelConfig): number | null {
  return cfg.expertsPerToken;
}

/**
 * A split's decoder layers as the planner sees them: a MoE layer streamed reads its always-needed
 * tensors plus `expertsPerToken` of its on-demand groups (unknown: all of them).
 */
export function planLayers(
  parts: LayerTensors[],
  lazyGroup: ((local: string) => string | null) | undefined,
  expertsPerToken: number | null,
): PlanLayer[] {
  return parts.map((p) => {
    const groups = new Map<string, number>();
    let eager = 0;
    for (const t of p.tensors) {
      const g = lazyGroup?.(t.name) ?? null;
      if (g === null) eager += t.nbytes;
      else groups.set(g, (groups.get(g) ?? 0) + t.nbytes);
    }
    if (groups.size === 0 || expertsPerToken === null) {
      return { bytes: p.dataBytes, perToken: p.dataBytes };
    }
    const all = [...groups.values()].reduce((a, b) => a + b, 0);
    const k = Math.min(expertsPerToken, groups.size);
    return { bytes: p.dataBytes, perToken: eager + Math.round((k * all) / groups.size) };
  });
}

/** What the planner plans from. */
export interface PlanInput {
  /** The device the layers compute on. */
  device: "cpu" | "cuda";
  /** Each decoder layer's bytes and per-token reads ({@link planLayers}). */
  layers: PlanLayer[];
  /** Embedding, final norm and head: always resident. */
  smallBytes: number;
  /** Bytes of the small parts a decode step reads (the head; one embedding row is nothing). */
  smallPerToken: number;
  /** KV cache and activations the engine will allocate. */
  workBytes: number;
  /**
   * CPU: the small parts are mapped file pages while no layer is resident (page cache, reclaimable
   * under pressure), so they are not part of the least memory a plan needs; false or absent: they
   * are held buffers. (With a layer resident they are buffers, inside the reserve.)
   */
  smallMapped?: boolean;
  /** Layers read ahead. */
  prefetchDepth: number;
  /** Host memory the process may still use (lib/memory.ts), null when unknown. */
  hostAvailable: number | null;
  /** GPU: device memory free now. */
  deviceFree?: number | null;
  /** Cap on resident decoder-layer bytes (`maxResidentBytes`); undefined = as the budget allows. */
  maxResidentBytes?: number;
  /** GPU: device bytes the engine may use in all (`maxGpuMemory`). */
  maxGpuMemory?: number;
  /** GPU: pinned host bytes for the host tier (`maxCpuMemory`). */
  maxCpuMemory?: number;
}

/** Where a layer lives. */
export type Tier = "resident" | "host" | "stream";

/** The plan: a tier per layer and what a decode step then reads from where. */
export interface Plan {
  /** Where each decoder layer lives, by index. */
  tiers: Tier[];
  /** Streamed layers are dropped from memory after use (their bytes come from disk each step). */
  dropBehind: boolean;
  /**
   * Layers read ahead: the input's, or fewer when memory cannot hold that many streaming slots
   * (a MoE layer's slot is the whole layer).
   */
  prefetchDepth: number;
  /** Layer bytes held per tier. */
  bytes: Record<Tier, number>;
  /** Bytes a batch-1 decode step reads from each source. */
  perToken: { device: number; host: number; pageCache: number; disk: number };
  /** Budgets the plan was made under (bytes; null = unknown / unlimited). */
  budget: { host: number | null; device: number | null; reserve: number };
  /** How the plan was reached, one line each, for `rabbit info --memory` and logs. */
  notes: string[];
}

const MiB = 2 ** 20;
/**
 * Head-room for the runtime's own growth after load (JS heap, allocator slack; a Deno process
 * grows by 15–40 MiB while generating): 48 MiB + 5%.
 */
export function runtimeMargin(budget: number): number {
  return 48 * MiB + Math.round(0.05 * budget);
}
/** GPU staging: the loader's two 64 MiB pinned buffers. */
const STAGING = 128 * MiB;

const mb = (n: number) => `${(n / MiB).toFixed(0)} MiB`;

/** Chooses layers for a tier: best bytes saved per byte held first, within `budget`. */
function choose(layers: PlanLayer[], candidates: number[], budget: number): Set<number> {
  const order = [...candidates].sort((a, b) =>
    layers[b].perToken / layers[b].bytes - layers[a].perToken / layers[a].bytes || a - b
  );
  const out = new Set<number>();
  let left = budget;
  for (const i of order) {
    if (layers[i].bytes > left) continue;
    left -= layers[i].bytes;
    out.add(i);
  }
  return out;
}

/** Plans where every layer lives. */
export function plan(input: PlanInput): Plan {
  const { layers } = input;
  const notes: string[] = [];
  const total = layers.reduce((s, l) => s + l.bytes, 0);
  const maxLayer = Math.max(0, ...layers.map((l) => l.bytes));
  const all = layers.map((_, i) => i);
  let depth = input.prefetchDepth;
  let window = Math.min(layers.length, depth + 1) * maxLayer;
  /** Shrinks the read-ahead until its slots fit `room` (one slot at least: depth 0). */
  const fitWindow = (room: number) => {
    while (depth > 0 && window > room) {
      depth--;
      window = Math.min(layers.length, depth + 1) * maxLayer;
    }
    if (depth < input.prefetchDepth) {
      notes.push(
        `prefetch depth ${depth} instead of ${input.prefetchDepth}: ${
          mb(window)
        } of streaming slots is what fits`,
      );
    }
  };
  const cap = input.maxResidentBytes ?? Infinity;
  const host = input.hostAvailable;
  const tiers: Tier[] = layers.map(() => "stream");
  let reserve = input.workBytes + input.smallBytes;
  let deviceBudget: number | null = null;

  // The smallest plan: the call's work, the small parts (unless mapped: page cache, which the
  // kernel reclaims rather than kill) and one streaming slot. Less than that cannot run at all (it
  // would be killed for memory mid-call): refused before anything is held.
  const mappedSmall = input.device === "cpu" && input.smallMapped === true;
  const parts = {
    work: input.workBytes,
    small: mappedSmall ? 0 : input.smallBytes,
    layer: maxLayer,
  };
  const need = parts.work + parts.small + parts.layer;
  const refuse = (memory: "host" | "device", available: number) => {
    if (available < need) throw new MemoryLimitError(memory, need, available, parts);
  };

  if (input.device === "cpu") {
    if (host !== null) refuse("host", host);
    // Host memory is device memory; resident layers are buffers the store reads them into.
    reserve += host === null ? 0 : runtimeMargin(host);
    if (host === null) {
      notes.push("host memory unknown: every layer streams through the page cache");
    } else {
      const room = host - reserve;
      const fitsAll = total <= Math.min(cap, room);
      if (!fitsAll) fitWindow(room);
      const budget = fitsAll ? total : Math.min(cap, room - window);
      for (const i of choose(layers, all, Math.max(0, budget))) tiers[i] = "resident";
      notes.push(
        `${mb(host)} available; reserved ${mb(reserve)} (KV cache + activations ${
          mb(input.workBytes)
        }, embedding/norm/head ${mb(input.smallBytes)}, runtime margin)${
          fitsAll ? "" : `, streaming window ${mb(window)}`
        }`,
      );
      if (cap < Infinity) notes.push(`maxResidentBytes caps resident layers at ${mb(cap)}`);
    }
  } else {
    const free = Math.min(input.deviceFree ?? Infinity, input.maxGpuMemory ?? Infinity);
    if (free !== Infinity) refuse("device", free);
    const deviceReserve = reserve + (free === Infinity ? 0 : runtimeMargin(free));
    const room = free - deviceReserve;
    const fitsAll = total <= Math.min(cap, room);
    if (!fitsAll) fitWindow(room);
    const budget = fitsAll ? total : Math.min(cap, room - window); // slots for streamed layers
    for (const i of choose(layers, all, Math.max(0, budget))) tiers[i] = "resident";
    deviceBudget = free === Infinity ? null : free;
    reserve = deviceReserve;
    notes.push(
      `device: ${free === Infinity ? "free memory unknown" : `${mb(free)} free`}; reserved ${
        mb(deviceReserve)
      } (KV cache + activations, embedding/norm/head, margin)${
        fitsAll ? "" : `, ${mb(window)} of streaming slots`
      }`,
    );
    const rest = all.filter((i) => tiers[i] !== "resident");
    if (rest.length > 0) {
      const hostRoom = host === null ? 0 : host - runtimeMargin(host) - STAGING - window;
      const hostBudget = Math.min(input.maxCpuMemory ?? Infinity, Math.max(0, hostRoom));
      for (const i of choose(layers, rest, hostBudget)) tiers[i] = "host";
      notes.push(
        `host tier (pinned): ${
          hostBudget === Infinity ? "unbounded" : mb(hostBudget)
        } for ${rest.length} non-resident layers`,
      );
    }
  }

  const bytes: Record<Tier, number> = { resident: 0, host: 0, stream: 0 };
  const per = { device: input.smallPerToken, host: 0, pageCache: 0, disk: 0 };
  for (const [i, t] of tiers.entries()) bytes[t] += layers[i].bytes;
  // The page cache keeps the streamed layers only when they fit beside everything else.
  const held = input.device === "cpu" ? bytes.resident : bytes.host;
  const dropBehind = bytes.stream > 0 && host !== null &&
    held + bytes.stream + (input.device === "cpu" ? reserve : runtimeMargin(host) + STAGING) >
      host;
  for (const [i, t] of tiers.entries()) {
    const n = t === "stream" ? layers[i].perToken : layers[i].bytes;
    if (t === "resident") per.device += layers[i].perToken;
    else if (t === "host") per.host += n;
    else if (dropBehind) per.disk += n;
    else per.pageCache += n;
  }
  if (bytes.stream > 0) {
    notes.push(
      dropBehind
        ? `${
          mb(bytes.stream)
        } of layers stream from disk, dropped after use (the page cache cannot hold them beside the rest)`
        : `${mb(bytes.stream)} of layers stream through the page cache (it can hold them)`,
    );
  }
  return {
    tiers,
    dropBehind,
    prefetchDepth: depth,
    bytes,
    perToken: per,
    budget: { host, device: deviceBudget, reserve },
    notes,
  };
}

/** Measured bandwidths, GB/s (1e9 bytes per second). */
export interface Bandwidths {
  /** Device memory read (the CPU: RAM, as a decode GEMV reads it). */
  memory: number;
  /** Sequential reads of files not in the page cache. */
  disk: number;
  /** Page cache → compute: on the CPU mapped pages are read in place (memory speed). */
  pageCache?: number;
  /** Pinned host → device copies (GPU). */
  h2d?: number;
}

/**
 * Predicted seconds per batch-1 decode token: every source streams concurrently with compute, so
 * the slowest one bounds the step.
 */
export function predictSecondsPerToken(p: Plan, bw: Bandwidths, device: "cpu" | "cuda"): number {
  const G = 1e9;
  const t = p.perToken;
  if (device === "cpu") {
    const compute = (t.device + t.pageCache + t.disk) / (bw.memory * G);
    return Math.max(compute, t.disk / (bw.disk * G));
  }
  const h2d = bw.h2d ?? bw.memory;
  return Math.max(
    (t.device + t.host + t.pageCache + t.disk) / (bw.memory * G),
    (t.host + t.pageCache + t.disk) / (h2d * G),
    t.disk / (bw.disk * G),
  );
}
