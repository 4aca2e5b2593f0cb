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
  /** Divides the logits; 1 = unchanged. */
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
    const kth = [...logits].sort((a, b) => b - a)[o.topK - 1];
    for (let i = 0; i < V; i++) if (logits[i] < kth) logits[i] = -Infinity;
  }
  if (o.topP < 1) {
    const order = [...logits.keys()].sort((a, b) => logits[a] - logits[b]); // ascending
    const probs = softmax(logits);
    let cum = 0;
    for (let r = 0; r < V - 1; r++) {
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
