/**
 * Parity of our engine against the stored Hugging Face transformers outputs in tests/fixtures/
 * (written by scripts/make_reference.py). Used by `deno task parity` (a table) and by
 * tests/parity_test.ts (one test per fixture and mode).
 *
 * @module
 */
import { AutoModel } from "../mod.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url);
const SPLITS = new URL("./.tmp/split/", import.meta.url);

/** reference.json, as scripts/make_reference.py writes it. */
export interface Reference {
  name: string;
  architecture: string;
  storage_dtype: string;
  compute_dtype: string;
  /** Relative to the fixture directory, when the weights live elsewhere (stories260k). */
  model_dir?: string;
  logits: { input_ids: number[][]; file: string; dims: [number, number, number] };
  greedy: { input_ids: number[][]; new_tokens: number[] };
}

/** One loaded fixture. */
export interface Fixture {
  name: string;
  dir: string;
  ref: Reference;
  logits: Float32Array;
}

/**
 * Fixtures whose family is not implemented yet (none today): a new family's reference outputs can
 * land first, listed here, and parity runs them once the family does. The test "exactly the
 * fixtures of unimplemented families are pending" fails when this list and the unsupported
 * fixtures disagree.
 */
export const PENDING: string[] = [];

/** Every fixture directory holding a reference.json, sorted by name (pending ones included). */
export async function loadAllFixtures(): Promise<Fixture[]> {
  const out: Fixture[] = [];
  for await (const e of Deno.readDir(FIXTURES)) {
    if (!e.isDirectory) continue;
    const dir = new URL(`${e.name}/`, FIXTURES);
    let ref: Reference;
    try {
      ref = JSON.parse(await Deno.readTextFile(new URL("reference.json", dir)));
    } catch {
      continue;
    }
    if (!ref.logits) continue; // another kind of reference (tokenizers)
    const bytes = await Deno.readFile(new URL(ref.logits.file, dir));
    const modelDir = new URL(ref.model_dir ? `${ref.model_dir.replace(/\/?$/, "/")}` : "./", dir);
    out.push({ name: e.name, dir: modelDir.pathname, ref, logits: new Float32Array(bytes.buffer) });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

/** The fixtures parity runs: all but {@link PENDING}. */
export async function loadFixtures(): Promise<Fixture[]> {
  return (await loadAllFixtures()).filter((f) => !PENDING.includes(f.name));
}

/** The engine settings one parity row runs under. */
export interface Mode {
  prefetching: boolean;
  /** true: prompt fed in two chunks through the KV cache, then token by token. */
  useCache: boolean;
  /** Backend device (default "cpu"). */
  device?: "cpu" | "cuda";
  attnImplementation?: "flash" | "eager";
  asyncCopy?: boolean;
}

export const MODES: readonly Mode[] = [
  { prefetching: true, useCache: true },
  { prefetching: true, useCache: false },
  { prefetching: false, useCache: true },
  { prefetching: false, useCache: false },
];

/** One row of the parity table. */
export interface ParityResult {
  fixture: string;
  dtype: string;
  mode: Mode;
  maxAbsDiff: number;
  maxAbsLogit: number;
  /** max|Δ| allowed: 1e-4 × max|logit|. */
  tolerance: number;
  cosine: number;
  greedyEqual: boolean;
  ours: number[];
  expected: number[];
  ok: boolean;
}

/** Runs our engine on one fixture in one mode and compares with the reference. */
export async function runParity(f: Fixture, mode: Mode): Promise<ParityResult> {
  const split = new URL(`${f.name}-${f.ref.storage_dtype}/`, SPLITS).pathname;
  await using model = await AutoModel.fromPretrained(f.dir, {
    device: mode.device ?? "cpu",
    dtype: "auto",
    prefetching: mode.prefetching,
    attnImplementation: mode.attnImplementation,
    asyncCopy: mode.asyncCopy,
    layerShardsSavingPath: split,
    maxResidentBytes: 0, // stream every layer every step: the path under test
    maxCpuMemory: 0, // CUDA: from the files, not the pinned host tier (tests/gpu covers that one)
  });
  const ids = f.ref.logits.input_ids;
  const [B, S, V] = f.ref.logits.dims;
  let ours: Float32Array;
  if (mode.useCache) {
    // Prefill half the prompt, then one token at a time: every position goes through the cache.
    ours = new Float32Array(B * S * V);
    const half = Math.max(1, Math.floor(S / 2));
    const put = (logits: Float32Array, from: number, n: number) => {
      for (let b = 0; b < B; b++) {
        ours.set(logits.subarray(b * n * V, (b + 1) * n * V), (b * S + from) * V);
      }
    };
    model.resetCache();
    put(await model.forward(ids.map((r) => r.slice(0, half)), { useCache: true }), 0, half);
    for (let s = half; s < S; s++) {
      put(await model.forward(ids.map((r) => [r[s]]), { useCache: true }), s, 1);
    }
  } else {
    ours = await model.forward(ids);
  }
  let maxAbsDiff = 0, maxAbsLogit = 0, dot = 0, na = 0, nb = 0;
  for (let i = 0; i < ours.length; i++) {
    const a = ours[i], b = f.logits[i];
    const d = Math.abs(a - b);
    if (!(d <= maxAbsDiff)) maxAbsDiff = Number.isNaN(d) ? Infinity : d;
    maxAbsLogit = Math.max(maxAbsLogit, Math.abs(b));
    dot += a * b;
    na += a * a;
    nb += b * b;
  }
  const prompt = f.ref.greedy.input_ids;
  const expected = f.ref.greedy.new_tokens;
  const out = await model.generate(prompt, {
    maxNewTokens: expected.length,
    useCache: mode.useCache,
    eosTokenId: [], // the reference generates exactly this many tokens, EOS or not
  });
  const got = out[0].slice(prompt[0].length);
  const tolerance = 1e-4 * maxAbsLogit;
  const greedyEqual = got.length === expected.length && got.every((t, i) => t === expected[i]);
  return {
    fixture: f.name,
    dtype: f.ref.storage_dtype,
    mode,
    maxAbsDiff,
    maxAbsLogit,
    tolerance,
    cosine: dot / Math.sqrt(na * nb),
    greedyEqual,
    ours: got,
    expected,
    ok: maxAbsDiff <= tolerance && greedyEqual,
  };
}

/** A fixed-width table of results. */
export function formatTable(rows: ParityResult[]): string {
  const head = [
    "fixture",
    "device",
    "dtype",
    "prefetch",
    "cache",
    "max|Δlogit|",
    "tolerance",
    "cosine",
    "greedy",
    "ok",
  ];
  const body = rows.map((r) => [
    r.fixture,
    `${r.mode.device ?? "cpu"}${r.mode.attnImplementation ? ` ${r.mode.attnImplementation}` : ""}${
      r.mode.asyncCopy === false ? " sync-copy" : ""
    }`,
    r.dtype,
    r.mode.prefetching ? "on" : "off",
    r.mode.useCache ? "on" : "off",
    r.maxAbsDiff.toExponential(2),
    r.tolerance.toExponential(2),
    r.cosine.toFixed(9),
    r.greedyEqual ? `= (${r.expected.length})` : "DIFFERENT",
    r.ok ? "PASS" : "FAIL",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join("  ");
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}
