/**
 * One row of `deno task bench`, in its own process (so a memory limit applies to it alone and
 * every row starts cold): loads the model with the row's options, warms up, then measures prefill
 * and decode, best of `--repeat`. Prints one JSON line (see {@link RowResult}).
 *
 *   deno run ... scripts/bench_run.ts --model DIR --split DIR [--device cpu|cuda]
 *     [--mode auto|resident|streamed|host] [--prompt 64] [--new 64] [--batch 1] [--repeat 3]
 *     [--depth prefetchDepth]
 *
 * Modes: auto = default options (the memory planner decides); resident = every layer resident;
 * streamed = maxResidentBytes 0 and no host tier (every layer streams from its file, through the
 * page cache when it can hold them); host = GPU: nothing resident on the device, everything in the
 * pinned host tier.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { AutoModel } from "../mod.ts";

const { values: a } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    split: { type: "string" },
    device: { type: "string", default: "cpu" },
    mode: { type: "string", default: "auto" },
    prompt: { type: "string", default: "64" },
    new: { type: "string", default: "64" },
    batch: { type: "string", default: "1" },
    repeat: { type: "string", default: "3" },
    depth: { type: "string" },
    /** The split's dtype as fromPretrained takes it (float32, q8_0, ...): the same split is reused. */
    dtype: { type: "string", default: "auto" },
    /** int8 activations on q8_0 / q4_0 / q4_1 / q5_0 / q5_1 / q4_k decode matmuls (CPU). */
    int8: { type: "boolean", default: false },
  },
});
if (!a.model || !a.split) throw new Error("bench_run: --model and --split are required");

/** What a row prints. */
export interface RowResult {
  /** Prompt tokens per second (all rows of the batch). */
  prefill: number;
  /** Generated tokens per second, all rows together. */
  decode: number;
  /** Seconds per decode step (one token for every row). */
  stepSeconds: number;
  /** Bytes read from storage per decode step (/proc/self/io), null when unreadable. */
  diskPerStep: number | null;
  /** Bytes brought to the device per decode step (the backend's counter). */
  streamedPerStep: number;
  residentLayers: number;
  layers: number;
  dropBehind: boolean;
}

const P = Number(a.prompt), N = Number(a.new), B = Number(a.batch), repeat = Number(a.repeat);
const mode = a.mode;
const opts = mode === "resident"
  ? { maxResidentBytes: Infinity }
  : mode === "streamed"
  ? { maxResidentBytes: 0, maxCpuMemory: 0 }
  : mode === "host"
  ? { maxResidentBytes: 0, maxCpuMemory: Number.MAX_SAFE_INTEGER }
  : {};
await using model = await AutoModel.fromPretrained(a.model, {
  ...opts,
  device: a.device as "cpu" | "cuda",
  layerShardsSavingPath: a.split,
  dtype: a.dtype as "auto",
  maxSeqLen: P + N + 8,
  prefetchDepth: a.depth === undefined ? undefined : Number(a.depth),
  int8Activations: a.int8,
  quiet: true,
});
// Different prompts per row (equal lengths): a batch is B sequences, not one repeated.
const prompts = Array.from(
  { length: B },
  (_, b) => Array.from({ length: P }, (_, i) => 3 + ((i * 7919 + b * 104729) % 1000)),
);

/** Bytes this process read from storage (/proc/self/io, through the backend), or null. */
function readBytes(): number | null {
  const io = model.backend.readSysfile("/proc/self/io");
  const n = Number(/read_bytes:\s*(\d+)/.exec(io ?? "")?.[1]);
  return Number.isFinite(n) ? n : null;
}

// Warm: threads, the resident set, every streaming slot's pages.
for (let i = 0; i < 2; i++) {
  await model.generate(prompts, { maxNewTokens: 2, doSample: false, eosTokenId: [] });
}
const results: RowResult[] = [];
for (let r = 0; r < repeat; r++) {
  // One run, timed from its own stream: the prefill step ends at the first token, the N decode
  // steps at the last (no subtraction of two runs, which noise can drive to zero).
  const h2d0 = model.backend.stats().h2dBytes, io0 = readBytes();
  const t = performance.now();
  let first = 0, last = 0, tokens = 0;
  // Greedy, no EOS: every row runs its N + 1 tokens.
  const o = { maxNewTokens: N + 1, doSample: false, eosTokenId: [] };
  for await (const _ of model.stream(prompts, o)) {
    last = performance.now();
    if (tokens++ === 0) first = last;
  }
  if (tokens !== B * (N + 1)) {
    throw new Error(`bench_run: ${tokens} tokens streamed, expected ${B * (N + 1)}`);
  }
  const prefillS = (first - t) / 1000, decodeS = (last - first) / 1000;
  const io1 = readBytes();
  // The run is a prefill step and N decode steps; reads are averaged over all N + 1.
  const h2d = model.backend.stats().h2dBytes - h2d0;
  results.push({
    prefill: (B * P) / prefillS,
    decode: (B * N) / decodeS,
    stepSeconds: decodeS / N,
    diskPerStep: io0 === null || io1 === null ? null : Math.max(0, io1 - io0) / (N + 1),
    streamedPerStep: h2d / (N + 1),
    residentLayers: model.residentLayers,
    layers: model.config.numLayers,
    dropBehind: model.plan.dropBehind,
  });
}
// Best of `repeat`: the fastest decode run, with the fastest prefill.
const best = results.reduce((a, b) => b.decode > a.decode ? b : a);
best.prefill = Math.max(...results.map((r) => r.prefill));
console.log(JSON.stringify(best));
