import assert from "node:assert/strict";
import { AutoModel, InputError, NonFiniteError, type TraceEvent } from "../mod.ts";
import { SafetensorsFile, writeSafetensors } from "../lib/safetensors.ts";

const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url).pathname;
const splitDir = (name: string) =>
  new URL(`./.tmp/split/generate-${name}`, import.meta.url).pathname;

function open(name: string, opts: Parameters<typeof AutoModel.fromPretrained>[1] = {}) {
  return AutoModel.fromPretrained(fixture(name), {
    layerShardsSavingPath: splitDir(name),
    ...opts,
  });
}

const ROWS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [40, 41, 42], [100, 3, 77, 201, 9]];

for (const name of ["llama_tied", "qwen2", "mistral"]) {
  Deno.test(`generate: ${name} batch of unequal prompts (left padding) equals each row alone`, async () => {
    await using model = await open(name);
    const opts = { maxNewTokens: 10, eosTokenId: [] };
    const batch = await model.generate(ROWS, opts);
    for (const [i, r] of ROWS.entries()) {
      assert.deepEqual(batch[i], (await model.generate([r], opts))[0], `row ${i}`);
    }
    assert.deepEqual(await model.generate(ROWS, { ...opts, useCache: false }), batch);
  });
}

Deno.test("generate: padding also works when the pad id is the eos id", async () => {
  await using model = await open("llama_tied");
  // The pad fills are this id; a row that emits it stops, the others go on unchanged.
  const alone = await Promise.all(
    ROWS.map(async (r) => (await model.generate([r], { maxNewTokens: 8 }))[0]),
  );
  const eos = alone[1][ROWS[1].length + 2]; // the third token row 1 generates
  const batch = await model.generate(ROWS, { maxNewTokens: 8, eosTokenId: eos });
  for (const [i, r] of ROWS.entries()) {
    const want = await model.generate([r], { maxNewTokens: 8, eosTokenId: eos });
    assert.deepEqual(batch[i], want[0], `row ${i}`);
  }
  assert.equal(batch[1].length, ROWS[1].length + 3, "row 1 stops at its eos (kept)");
  assert.equal(batch[1].at(-1), eos);
});

Deno.test("forward: a left-padded row gives the logits of the unpadded row", async () => {
  await using model = await open("llama3_rope");
  const V = model.config.vocabSize;
  const short = [9, 8, 7, 6];
  const alone = await model.forward([short]);
  const padded = await model.forward([[0, 0, 0, ...short], [1, 2, 3, 4, 5, 6, 7]], {
    attentionMask: [[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]],
  });
  let max = 0;
  for (let j = 0; j < 4; j++) {
    for (let v = 0; v < V; v++) {
      max = Math.max(max, Math.abs(alone[j * V + v] - padded[(3 + j) * V + v]));
    }
  }
  assert.ok(max < 1e-4, `padded vs alone max |Δ| ${max}`);
});

Deno.test("generate: seeded sampling is reproducible and differs across seeds", async () => {
  await using model = await open("qwen2");
  const o = { maxNewTokens: 16, doSample: true, temperature: 1.5, topK: 0, eosTokenId: [] };
  const a = await model.generate(ROWS, { ...o, seed: 7 });
  assert.deepEqual(await model.generate(ROWS, { ...o, seed: 7 }), a);
  assert.notDeepEqual(await model.generate(ROWS, { ...o, seed: 8 }), a);
  // top-k 1 sampling is greedy
  const greedy = await model.generate(ROWS, { maxNewTokens: 8, eosTokenId: [] });
  assert.deepEqual(await model.generate(ROWS, { ...o, maxNewTokens: 8, topK: 1, seed: 3 }), greedy);
});

Deno.test("stream: yields every token in order with its row; stopping early frees the model", async () => {
  await using model = await open("llama_tied");
  const want = await model.generate(ROWS, { maxNewTokens: 6, eosTokenId: [] });
  const got = ROWS.map((r) => [...r]);
  const finish: string[] = [];
  for await (const c of model.stream(ROWS, { maxNewTokens: 6, eosTokenId: [] })) {
    got[c.row].push(c.tokenId);
    if (c.finishReason) finish.push(c.finishReason);
  }
  assert.deepEqual(got, want);
  assert.deepEqual(finish, ["length", "length", "length"]);
  for await (const _ of model.stream([[1, 2, 3]], { maxNewTokens: 50 })) break;
  assert.deepEqual(await model.generate(ROWS, { maxNewTokens: 6, eosTokenId: [] }), want);
});

Deno.test("generate: too long a request fails before any work", async () => {
  const trace: TraceEvent[] = [];
  await using model = await open("llama_tied", { maxSeqLen: 64, trace });
  trace.length = 0;
  await assert.rejects(
    model.generate([[1, 2, 3]], { maxNewTokens: 62 }),
    /prompt of 3 tokens \+ maxNewTokens 62 exceeds maxSeqLen 64/,
  );
  assert.equal(trace.length, 0, "no layer was read or computed");
  await using big = await open("llama_tied", { maxSeqLen: 4096 });
  await assert.rejects(
    big.generate([[1, 2, 3]], { maxNewTokens: 300 }),
    /exceeds the model's context \(max_position_embeddings\) 256/,
  );
  await assert.rejects(
    big.generate([[1, 999]]),
    (e: unknown) => e instanceof InputError && /prompt 0\[0\]\[1\] = 999/.test(e.message),
  );
});

Deno.test("generate: NaN weights give a typed error naming the first non-finite layer", async () => {
  const dir = await Deno.makeTempDir({ prefix: "rabbit-nan-" });
  try {
    for (const f of ["config.json"]) {
      await Deno.copyFile(`${fixture("llama3_rope")}/${f}`, `${dir}/${f}`);
    }
    using src = await SafetensorsFile.open(`${fixture("llama3_rope")}/model.safetensors`);
    const tensors = [];
    for (const [name, info] of src.tensors) {
      const data = (await src.read(name)).slice();
      if (name === "model.layers.1.mlp.down_proj.weight") {
        new Float32Array(data.buffer).fill(NaN, 0, 7);
      }
      tensors.push({ name, dtype: info.dtype, shape: info.shape, data });
    }
    await writeSafetensors(`${dir}/model.safetensors`, tensors);
    await using model = await AutoModel.fromPretrained(dir, { dtype: "float32" });
    await assert.rejects(
      model.generate([[5, 6, 7]], { maxNewTokens: 3 }),
      (e: unknown) =>
        e instanceof NonFiniteError && e.layer === 1 &&
        /output of layer 1 is not finite/.test(e.message),
    );
    await assert.rejects(model.forward([[5, 6, 7]]), NonFiniteError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("profiler: the loop's time is accounted per category", async () => {
  await using model = await open("llama_tied", { maxResidentBytes: 0 });
  model.profiler.reset();
  await model.generate([[1, 2, 3]], { maxNewTokens: 4, eosTokenId: [] });
  const p = model.profiler.toJSON();
  assert.equal(p.steps, 4);
  const cats = new Set(p.entries.map((e) => e.category));
  for (
    const c of [
      "layers",
      "embed + head",
      "read wait",
      "sampling",
      "logits download",
    ]
  ) {
    assert.ok(cats.has(c as never), `no ${c} in ${[...cats]}`);
  }
  assert.equal(p.entries.find((e) => e.category === "layers")!.count, 4 * model.config.numLayers);
  assert.equal(p.layerMs.length, model.config.numLayers);
  const layersMs = p.entries.find((e) => e.category === "layers")!.ms;
  assert.ok(Math.abs(p.layerMs.reduce((a, b) => a + b, 0) - layersMs) < 1e-6);
  assert.match(model.profiler.summary(), /layers/);
});

Deno.test("generate: reuseCache continues a conversation without recomputing its prefix", async () => {
  await using model = await open("llama_tied");
  const o = { maxNewTokens: 5, eosTokenId: [] };
  const turn1 = (await model.generate([[7, 8, 9, 10]], { ...o, reuseCache: true }))[0];
  const turn2Prompt = [...turn1, 33, 34, 35];
  model.profiler.reset();
  const reused = (await model.generate([turn2Prompt], { ...o, reuseCache: true }))[0];
  // Only what the cache lacks is fed: turn 1's last token and the 3 new ones, then 4 single steps.
  assert.equal(model.profiler.toJSON().tokens, 4 + 4);
  const fresh = (await model.generate([turn2Prompt], o))[0];
  assert.deepEqual(reused, fresh);
  // A prompt that does not extend the cached ids starts over.
  model.profiler.reset();
  await model.generate([[1, 2, 3]], { ...o, reuseCache: true });
  assert.equal(model.profiler.toJSON().tokens, 3 + 4);
});

Deno.test("generate: Phi-3 longrope recomputes the cache when the sequence passes the original context", async () => {
  // phi3_longrope: original_max_position_embeddings 8; short factors below, long ones above.
  await using model = await open("phi3_longrope");
  const o = { maxNewTokens: 10, eosTokenId: [] };
  model.profiler.reset();
  const cached = await model.generate([[5, 6, 7, 8, 9]], o);
  // 5 prompt tokens, 3 single steps to reach 8 cached, then the whole 9 again, then 5 single steps.
  assert.equal(model.profiler.toJSON().tokens, 5 + 3 + 9 + 5);
  assert.deepEqual(cached, await model.generate([[5, 6, 7, 8, 9]], { ...o, useCache: false }));
});
