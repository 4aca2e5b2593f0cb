import assert from "node:assert/strict";
import {
  applyRepetitionPenalty,
  applyWarpers,
  ascendingFinite,
  kthLargest,
  nextToken,
  Rng,
  type SamplingOptions,
  softmax,
} from "../lib/engine/sampling.ts";

interface Case {
  name: string;
  repetition_penalty?: number;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  min_p?: number;
  processed: (number | null)[];
}
// Written by scripts/make_sampling_reference.py with transformers' own logits processors.
const ref = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/sampling_reference.json", import.meta.url)),
) as { logits: number[]; seen: number[]; cases: Case[] };

const options = (c: Partial<Case>): SamplingOptions => ({
  doSample: true,
  temperature: c.temperature ?? 1,
  topK: c.top_k ?? 0,
  topP: c.top_p ?? 1,
  minP: c.min_p ?? 0,
  repetitionPenalty: c.repetition_penalty ?? 1,
});

for (const c of ref.cases) {
  Deno.test(`sampling: ${c.name} processes logits like transformers`, () => {
    const row = Float32Array.from(ref.logits);
    const o = options(c);
    applyRepetitionPenalty(row, ref.seen, o.repetitionPenalty);
    applyWarpers(row, o);
    c.processed.forEach((want, i) => {
      if (want === null) assert.equal(row[i], -Infinity, `token ${i} should be removed`);
      else {assert.ok(
          Math.abs(row[i] - want) <= 1e-5 * Math.abs(want) + 1e-6,
          `token ${i}: ${row[i]} vs ${want}`,
        );}
    });
  });
}

Deno.test("sampling: the same seed gives the same tokens, another seed others", () => {
  const o = options({ temperature: 1.5 });
  const draw = (seed: number) => {
    const rng = new Rng(seed);
    return Array.from({ length: 50 }, () => nextToken(Float32Array.from(ref.logits), [], o, rng));
  };
  assert.deepEqual(draw(42), draw(42));
  assert.notDeepEqual(draw(42), draw(43));
});

Deno.test("sampling: draws follow the softmax distribution", () => {
  const logits = Float32Array.from([0, Math.log(3), -Infinity, Math.log(6)]); // p = .1 .3 0 .6
  const rng = new Rng(1);
  const counts = [0, 0, 0, 0];
  const n = 20000;
  for (let i = 0; i < n; i++) counts[nextToken(logits.slice(), [], options({}), rng)]++;
  [0.1, 0.3, 0, 0.6].forEach((p, i) =>
    assert.ok(Math.abs(counts[i] / n - p) < 0.015, `token ${i}: ${counts[i] / n}`)
  );
});

Deno.test("sampling: top-k 1 and greedy pick the argmax; greedy applies the repetition penalty", () => {
  const rng = new Rng(0);
  const best = ref.logits.indexOf(Math.max(...ref.logits));
  assert.equal(
    nextToken(Float32Array.from(ref.logits), [], { ...options({ top_k: 1 }) }, rng),
    best,
  );
  assert.equal(
    nextToken(Float32Array.from(ref.logits), [], { ...options({}), doSample: false }, rng),
    best,
  );
  const penalized = nextToken(Float32Array.from(ref.logits), [best], {
    ...options({ repetition_penalty: 1e6 }),
    doSample: false,
  }, rng);
  assert.notEqual(penalized, best);
  const p = softmax(Float32Array.from([1, 1]));
  assert.deepEqual([...p], [0.5, 0.5]);
});

Deno.test("sampling: the top-k heap and the top-p radix order equal plain sorts", () => {
  const rng = new Rng(7);
  // Quarter steps make ties common; -0 / 0, ±Infinity and NaN are in the mix.
  const x = new Float32Array(3000).map((_, i) =>
    i % 11 === 0 ? -Infinity : Math.round((rng.next() - 0.5) * 40) / 4
  );
  x[5] = -0;
  x[6] = 0;
  x[7] = Infinity;
  x[8] = NaN;
  const finite = [...x.keys()].filter((i) => Number.isFinite(x[i]));
  const want = finite.sort((a, b) => x[a] - x[b] || a - b);
  assert.deepEqual([...ascendingFinite(x)], want);
  const y = x.filter(Number.isFinite);
  const desc = [...y].sort((a, b) => b - a);
  for (const k of [1, 2, 17, 500, y.length]) assert.equal(kthLargest(y, k), desc[k - 1], `k=${k}`);
});
