/**
 * GPU-only tests (`deno task test:gpu`, or `deno task gpu:check`, on a machine with an NVIDIA
 * GPU). Not part of `deno task test`: CI has no GPU.
 *
 * The GPU computes the CPU's formulas, but sums in another order and with its own math library
 * (FMA contraction, expf), so logits agree to ~1e-6 relative, not bit for bit. A greedy step whose
 * two best logits are closer than that may pick the other token on the GPU without anything being
 * wrong. So each comparison with the CPU is of logits, within {@link TOLERANCE} × max|logit| (what
 * parity allows against transformers), and tokens are compared only for prompts whose every
 * greedy step on the CPU wins by at least {@link MARGIN} × max|logit|, which is checked first, as
 * a precondition: with logits that close, such a step cannot go the other way.
 */
import assert from "node:assert/strict";
import {
  AutoModel,
  Backend,
  type FromPretrainedOptions,
  isFlashAttentionAvailable,
} from "../../mod.ts";

const fixture = (name: string) => new URL(`../fixtures/${name}`, import.meta.url).pathname;
const split = (name: string) => new URL(`../.tmp/split/gpu-${name}`, import.meta.url).pathname;
const STORIES = new URL("../../models/stories260k", import.meta.url).pathname;
const ROWS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [40, 41, 42], [100, 3, 77, 201, 9]];

/** Largest |GPU − CPU| logit allowed, as a fraction of the row's largest |CPU logit|. */
const TOLERANCE = 1e-4;
/**
 * Smallest top-1 − top-2 logit gap a compared greedy step may have on the CPU, as a fraction of
 * the row's largest |logit|: over twice the tolerance (each of the two logits may move by it),
 * with room for generate()'s batched, cached steps rounding unlike a single forward().
 */
const MARGIN = 4e-4;

function open(dir: string, splitName: string, opts: FromPretrainedOptions = {}) {
  return AutoModel.fromPretrained(dir, { layerShardsSavingPath: split(splitName), ...opts });
}

/** What the CPU says for `rows`: its greedy tokens and, per row, the logits behind them. */
interface Reference {
  /** generate(): each row's prompt and its new tokens. */
  tokens: number[][];
  /** Per row: forward() over the prompt and the new tokens but the last, [seq, vocab]. */
  sequences: number[][];
  logits: Float32Array[];
}

async function cpuReference(
  dir: string,
  splitName: string,
  rows: number[][],
  maxNewTokens: number,
): Promise<Reference> {
  await using cpu = await open(dir, splitName, { device: "cpu" });
  const tokens = await cpu.generate(rows, { maxNewTokens, eosTokenId: [] });
  const sequences = tokens.map((t) => t.slice(0, -1));
  const logits: Float32Array[] = [];
  for (const s of sequences) logits.push(await cpu.forward([s]));
  return { tokens, sequences, logits };
}

function maxAbs(v: Float32Array): number {
  let m = 0;
  for (const x of v) m = Math.max(m, Math.abs(x));
  return m;
}

/**
 * The precondition of comparing tokens: at every greedy step of every row, the CPU's chosen token
 * is its logits' argmax and wins by at least MARGIN × max|logit|.
 */
function assertDecisive(what: string, ref: Reference, rows: number[][], vocab: number) {
  let narrowest = Infinity;
  for (const [b, row] of rows.entries()) {
    const logits = ref.logits[b], scale = maxAbs(logits);
    for (let step = row.length; step < ref.tokens[b].length; step++) {
      const at = logits.subarray((step - 1) * vocab, step * vocab);
      let best = 0;
      for (let i = 1; i < vocab; i++) if (at[i] > at[best]) best = i;
      let second = -Infinity;
      for (let i = 0; i < vocab; i++) if (i !== best && at[i] > second) second = at[i];
      const margin = (at[best] - second) / scale;
      narrowest = Math.min(narrowest, margin);
      assert.equal(ref.tokens[b][step], best, `${what}: row ${b} step ${step}: generate ≠ argmax`);
      assert.ok(
        margin >= MARGIN,
        `${what}: row ${b}, token ${step}: the top-2 logits differ by ${
          margin.toExponential(2)
        } × max|logit| < ${MARGIN} on the CPU, too close for the GPU to be sure to pick the same: choose other prompts or fewer tokens`,
      );
    }
  }
  console.log(`${what}: narrowest greedy margin ${narrowest.toExponential(2)} × max|logit|`);
}

/** max|got − want| ≤ TOLERANCE × max|want|, and the same finiteness. */
function assertClose(got: Float32Array, want: Float32Array, what: string) {
  assert.equal(got.length, want.length, `${what}: length`);
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
  }
  const allowed = TOLERANCE * maxAbs(want);
  assert.ok(
    worst <= allowed,
    `${what}: max|Δlogit| ${worst.toExponential(2)} > ${allowed.toExponential(2)}`,
  );
}

Deno.test("gpu: the CUDA backend loads and names its device", () => {
  using be = Backend.open({ device: "cuda" });
  console.log(`backend: ${be.info}`);
  assert.match(be.info, /^cuda/);
  assert.ok(be.getOption("device_memory") > 1e9);
  const flash = isFlashAttentionAvailable();
  console.log(`flash attention: ${flash.available} (${flash.reason})`);
});

for (const name of ["llama_tied", "qwen2", "mistral", "llama_untied_sharded"]) {
  Deno.test(`gpu: ${name} every option combination gives the CPU's logits and tokens`, async () => {
    const ref = await cpuReference(fixture(name), name, ROWS, 16);
    const vocab = ref.logits[0].length / ref.sequences[0].length;
    assertDecisive(name, ref, ROWS, vocab);
    // Every layer streams (maxResidentBytes 0): from its file through pinned or pageable staging
    // (maxCpuMemory 0: no host tier) under every combination, and once from the pinned host tier.
    const runs: FromPretrainedOptions[] = [];
    for (const attnImplementation of ["eager", "flash"] as const) {
      for (const prefetching of [true, false]) {
        for (const asyncCopy of [true, false]) {
          for (const prefetchPinMemory of [true, false]) {
            runs.push({
              attnImplementation,
              prefetching,
              asyncCopy,
              prefetchPinMemory,
              maxCpuMemory: 0,
            });
          }
        }
      }
    }
    runs.push({ attnImplementation: "flash" }); // host tier: as much as host memory allows
    for (const opts of runs) {
      const what = `${name} ${JSON.stringify(opts)}`;
      await using gpu = await open(fixture(name), name, {
        device: "cuda",
        maxResidentBytes: 0,
        ...opts,
      });
      for (const [b, s] of ref.sequences.entries()) {
        assertClose(await gpu.forward([s]), ref.logits[b], `${what}: row ${b}`);
      }
      const got = await gpu.generate(ROWS, { maxNewTokens: 16, eosTokenId: [] });
      assert.deepEqual(got, ref.tokens, what);
      assert.equal(gpu.activeAttentionImplementation, opts.attnImplementation);
      const tier = opts.maxCpuMemory === 0 ? "stream" : "host";
      assert.ok(gpu.plan.tiers.every((t) => t === tier), `${what}: tiers ${gpu.plan.tiers}`);
    }
  });
}

Deno.test("gpu: a tied head is held once; streaming allocates nothing per layer or token", async () => {
  await using model = await open(fixture("llama_tied"), "llama_tied", {
    device: "cuda",
    prefetching: false,
    maxResidentBytes: 0,
    maxCpuMemory: 0, // no host tier: its layers would be read at load, and count as H2D bytes
  });
  const m = JSON.parse(await Deno.readTextFile(`${split("llama_tied")}/manifest.json`)) as {
    parts: { id: string; dataBytes: number }[];
  };
  const bytes = (id: string) => m.parts.find((p) => p.id === id)?.dataBytes ?? 0;
  assert.equal(model.backend.stats().h2dBytes, bytes("embed") + bytes("norm"));
  await model.generate(ROWS, { maxNewTokens: 8 }); // sizes scratch buffers and the KV cache
  const allocs = model.backend.stats().allocs;
  await model.generate(ROWS, { maxNewTokens: 8 });
  // generate() starts a fresh KV cache (K and V per layer); nothing else is allocated.
  assert.equal(model.backend.stats().allocs - allocs, 2 * model.config.numLayers);
});

Deno.test("gpu: the profile times compute with device events", async () => {
  await using model = await open(fixture("llama3_rope"), "llama3_rope", {
    device: "cuda",
    maxResidentBytes: 0,
  });
  model.profiler.reset();
  await model.generate([[1, 2, 3]], { maxNewTokens: 8, eosTokenId: [] });
  const p = model.profiler.toJSON();
  console.log(model.profiler.summary());
  assert.equal(p.layerMs.length, model.config.numLayers);
  assert.ok(p.layerMs.every((ms) => ms > 0));
});

Deno.test("gpu: stories260k from BOS gives the CPU's logits and text", async () => {
  const ref = await cpuReference(STORIES, "stories", [[1]], 64);
  const vocab = ref.logits[0].length / ref.sequences[0].length;
  assertDecisive("stories260k", ref, [[1]], vocab);
  await using gpu = await open(STORIES, "stories", { device: "cuda" });
  assertClose(await gpu.forward(ref.sequences), ref.logits[0], "stories260k");
  assert.deepEqual(await gpu.generate([[1]], { maxNewTokens: 64, eosTokenId: [] }), ref.tokens);
});
