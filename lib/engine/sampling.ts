/**
 * Choosing the next token from one row of logits: greedy, or sampling after the logits
 * processors of transformers' generate(), in its order — repetition penalty, then temperature,
 * top-k, top-p, min-p — with a seeded generator so a `seed` reproduces a run.
 *
 * @module
 */

/** Sampling settings (camelCase of transformers' GenerationConfig). */
export interface SamplingOptions {
  /** false: greedy (argmax after the repetition penalty). */
  doSample: boolean;
  /**
   * Divides the logits; 1 = unchanged. 0 means greedy (as in llama.cpp, ollama and the OpenAI
   * API): generate() then turns sampling off unless `doSample: true` is passed, which is an error.
   */
  temperature: number;
  /** Keep the k most likely tokens; 0 = off. */
  topK: number;
  /** Keep the smallest set of tokens whose probability sums past p; 1 = off. */
  topP: number;
  /** Drop tokens less likely than minP × the top token's probability; 0 = off. */
  minP: number;
  /** > 1 discourages tokens already in the sequence; 1 = off. */
  repetitionPenalty: number;
}

/** A small seeded generator (sfc32): uniform floats in [0, 1). */
export class Rng {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  constructor(seed: number) {
    this.#a = 0x9e3779b9;
    this.#b = 0x243f6a88;
    this.#c = 0xb7e15162;
    this.#d = seed >>> 0;
    for (let i = 0; i < 12; i++) this.next();
  }

  next(): number {
    const t = (((this.#a + this.#b) | 0) + this.#d) | 0;
    this.#d = (this.#d + 1) | 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) | 0;
    this.#c = (this.#c << 21) | (this.#c >>> 11);
    this.#c = (this.#c + t) | 0;
    return (t >>> 0) / 4294967296;
  }
}

/** RepetitionPenaltyLogitsProcessor: each token seen in `seen` is penalized once. */
export function applyRepetitionPenalty(
  logits: Float32Array,
  seen: Iterable<number>,
  penalty: number,
): void {
  if (penalty === 1) return;
  for (const id of new Set(seen)) {
    const v = logits[id];
    logits[id] = v < 0 ? v * penalty : v / penalty;
  }
}

/**
 * The warpers of transformers (temperature, top-k, top-p, min-p), in place: removed tokens
 * become -Infinity.
 */
export function applyWarpers(logits: Float32Array, o: SamplingOptions): void {
  const V = logits.length;
  if (o.temperature !== 1) { for (let i = 0; i < V; i++) logits[i] = logits[i] / o.temperature; }
  if (o.topK > 0 && o.topK < V) {
    const kth = kthLargest(logits, o.topK);
    for (let i = 0; i < V; i++) if (logits[i] < kth) logits[i] = -Infinity;
  }
  if (o.topP < 1) {
    // Ascending cumulative probability; -Infinity tokens (probability 0) stay removed, so only
    // the finite ones need ordering.
    const order = ascendingFinite(logits);
    const probs = softmax(logits);
    let cum = 0;
    for (let r = 0; r < order.length - 1; r++) {
      cum += probs[order[r]];
      if (cum <= 1 - o.topP) logits[order[r]] = -Infinity;
    }
  }
  if (o.minP > 0) {
    const probs = softmax(logits);
    let best = 0;
    for (let i = 1; i < V; i++) if (probs[i] > probs[best]) best = i;
    const threshold = o.minP * probs[best];
    for (let i = 0; i < V; i++) if (i !== best && probs[i] < threshold) logits[i] = -Infinity;
  }
}

/** The k-th largest value of `x` (1 ≤ k ≤ length), with a size-k min-heap: O(n log k). */
export function kthLargest(x: Float32Array, k: number): number {
  const heap = new Float32Array(k);
  let n = 0;
  const down = (i: number) => {
    for (;;) {
      const l = 2 * i + 1, r = l + 1;
      let m = i;
      if (l < n && heap[l] < heap[m]) m = l;
      if (r < n && heap[r] < heap[m]) m = r;
      if (m === i) return;
      [heap[i], heap[m]] = [heap[m], heap[i]];
      i = m;
    }
  };
  for (const v of x) {
    if (n < k) {
      let i = n++;
      heap[i] = v;
      while (i > 0 && heap[(i - 1) >> 1] > heap[i]) {
        const p = (i - 1) >> 1;
        [heap[i], heap[p]] = [heap[p], heap[i]];
        i = p;
      }
    } else if (v > heap[0]) {
      heap[0] = v;
      down(0);
    }
  }
  return heap[0];
}

/**
 * Indices of the finite entries of `x`, ascending by value, ties by index (stable): an LSD radix
 * sort (3 passes of 11 bits) of the order-preserving 32-bit codes of the float32 values.
 */
export function ascendingFinite(x: Float32Array): Int32Array {
  const bits = new Uint32Array(Float32Array.from(x).buffer);
  let n = 0;
  for (let i = 0; i < x.length; i++) if (Number.isFinite(x[i])) n++;
  let keys = new Uint32Array(n), idx = new Int32Array(n);
  n = 0;
  for (let i = 0; i < x.length; i++) {
    if (!Number.isFinite(x[i])) continue;
    const b = bits[i] === 0x80000000 ? 0 : bits[i]; // -0 sorts as 0
    keys[n] = b & 0x80000000 ? ~b >>> 0 : (b | 0x80000000) >>> 0;
    idx[n++] = i;
  }
  let keys2 = new Uint32Array(n), idx2 = new Int32Array(n);
  const count = new Int32Array(2048);
  for (let shift = 0; shift < 33; shift += 11) {
    count.fill(0);
    for (let j = 0; j < n; j++) count[(keys[j] >>> shift) & 2047]++;
    for (let d = 0, sum = 0; d < 2048; d++) {
      const c = count[d];
      count[d] = sum;
      sum += c;
    }
    for (let j = 0; j < n; j++) {
      const at = count[(keys[j] >>> shift) & 2047]++;
      keys2[at] = keys[j];
      idx2[at] = idx[j];
    }
    [keys, keys2] = [keys2, keys];
    [idx, idx2] = [idx2, idx];
  }
  return idx;
}

/** Probabilities of a logits row (fp64 accumulation). */
export function softmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of logits) if (v > max) max = v;
  const out = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) {
    const e = logits[i] === -Infinity ? 0 : Math.exp(logits[i] - max);
    out[i] = e;
    sum += e;
  }
  for (let i = 0; i < out.length; i++) out[i] /= sum;
  return out;
}

/** Index of the largest value (first on ties). */
export function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/**
 * The next token for one row. `row` is consumed (processed in place); `seen` are the ids of the
 * sequence so far (prompt + generated) for the repetition penalty.
 */
export function nextToken(
  row: Float32Array,
  seen: Iterable<number>,
  o: SamplingOptions,
  rng: Rng,
): number {
  applyRepetitionPenalty(row, seen, o.repetitionPenalty);
  if (!o.doSample) return argmax(row);
  applyWarpers(row, o);
  const probs = softmax(row);
  let u = rng.next();
  for (let i = 0; i < probs.length; i++) {
    u -= probs[i];
    if (u < 0 && probs[i] > 0) return i;
  }
  return argmax(row); // rounding left u ≥ 0: the most likely token
}
