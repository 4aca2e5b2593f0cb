/**
 * GPU-only tests (`deno task test:gpu` on a machine with an NVIDIA GPU). Not part of
 * `deno task test`: CI has no GPU.
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
const ROWS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [40, 41, 42], [100, 3, 77, 201, 9]];

function open(name: string, opts: FromPretrainedOptions = {}) {
  return AutoModel.fromPretrained(fixture(name), { layerShardsSavingPath: split(name), ...opts });
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
  Deno.test(`gpu: ${name} every option combination gives the CPU's tokens`, async () => {
    const o = { maxNewTokens: 16, eosTokenId: [] };
    let want: number[][];
    {
      await using cpu = await open(name, { device: "cpu" });
      want = await cpu.generate(ROWS, o);
    }
    for (const attnImplementation of ["eager", "flash"] as const) {
      for (const prefetching of [true, false]) {
        for (const asyncCopy of [true, false]) {
          for (const prefetchPinMemory of [true, false]) {
            await using gpu = await open(name, {
              device: "cuda",
              attnImplementation,
              prefetching,
              asyncCopy,
              prefetchPinMemory,
              maxResidentBytes: 0, // stream every layer: the copy path under test
            });
            const got = await gpu.generate(ROWS, o);
            assert.deepEqual(
              got,
              want,
              `${attnImplementation} prefetch ${prefetching} async ${asyncCopy} pinned ${prefetchPinMemory}`,
            );
            assert.equal(gpu.activeAttentionImplementation, attnImplementation);
          }
        }
      }
    }
  });
}

Deno.test("gpu: a tied head is held once; streaming allocates nothing per layer or token", async () => {
  await using model = await open("llama_tied", {
    device: "cuda",
    prefetching: false,
    maxResidentBytes: 0,
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
  await using model = await open("llama3_rope", { device: "cuda", maxResidentBytes: 0 });
  model.profiler.reset();
  await model.generate([[1, 2, 3]], { maxNewTokens: 8, eosTokenId: [] });
  const p = model.profiler.toJSON();
  console.log(model.profiler.summary());
  assert.equal(p.layerMs.length, model.config.numLayers);
  assert.ok(p.layerMs.every((ms) => ms > 0));
});

Deno.test("gpu: stories260k text from BOS equals the CPU's", async () => {
  const dir = new URL("../../models/stories260k", import.meta.url).pathname;
  await using gpu = await AutoModel.fromPretrained(dir, {
    device: "cuda",
    layerShardsSavingPath: split("stories"),
  });
  await using cpu = await AutoModel.fromPretrained(dir, {
    layerShardsSavingPath: split("stories"),
  });
  const o = { maxNewTokens: 64, eosTokenId: [] };
  assert.deepEqual(await gpu.generate([[1]], o), await cpu.generate([[1]], o));
});
