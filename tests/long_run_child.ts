/**
 * Child of tests/faults_test.ts: a 2,000-token generation (no EOS) on a tiny model whose context
 * allows it, once with every layer resident and mapped, once streaming every layer through
 * buffers. Prints one JSON line per 200 tokens: `{ mode, tokens, rss, heap, live, allocs }`
 * (host RSS and V8 heap after a full GC, the backend's live device bytes and live allocations).
 * Run with `--v8-flags=--expose-gc`.
 *
 * usage: deno run --v8-flags=--expose-gc ... tests/long_run_child.ts MODEL_DIR SPLIT_DIR
 */
import { AutoModel } from "../mod.ts";

const [dir, split] = Deno.args;
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("run with --v8-flags=--expose-gc");

for (const mode of ["resident", "streamed"] as const) {
  await using model = await AutoModel.fromPretrained(dir, {
    layerShardsSavingPath: split,
    maxSeqLen: 2048,
    quiet: true,
    ...(mode === "streamed" ? { maxResidentBytes: 0, mapFiles: false } : {}),
  });
  let tokens = 0;
  for await (
    const _ of model.stream([[1, 5, 9]], {
      maxNewTokens: 2000,
      eosTokenId: [],
      doSample: true,
      seed: 7,
      temperature: 1.5,
    })
  ) {
    if (++tokens % 200 !== 0) continue;
    gc();
    const m = Deno.memoryUsage(), s = model.backend.stats();
    console.log(JSON.stringify({
      mode,
      tokens,
      rss: m.rss,
      heap: m.heapUsed,
      live: s.liveBytes,
      allocs: s.liveAllocs,
      resident: model.residentLayers,
    }));
  }
}
