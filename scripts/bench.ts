/**
 * `deno task bench`: prefill and decode speed on a synthetic checkpoint of a real model's shape
 * (default SmolLM2-135M, fp32), with every layer resident and with layers streamed from disk, next
 * to transformers on the same checkpoint when python3 has torch + transformers.
 *
 *   deno task bench [--shape smollm2-135m] [--dtype F32|F16|BF16] [--prompt 32] [--new 64] [--no-hf]
 */
import { parseArgs } from "node:util";
import { AutoModel } from "../mod.ts";
import { makeBenchModel } from "./make_bench_model.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    shape: { type: "string", default: "smollm2-135m" },
    dtype: { type: "string", default: "F32" },
    prompt: { type: "string", default: "32" },
    new: { type: "string", default: "64" },
    "no-hf": { type: "boolean", default: false },
  },
});
const dtype = args.dtype as "F32" | "F16" | "BF16";
const promptLen = Number(args.prompt), newTokens = Number(args.new);
const dir = new URL(`../tests/.tmp/bench/${args.shape}-${dtype}`, import.meta.url).pathname;
try {
  await Deno.stat(`${dir}/config.json`);
} catch {
  console.log(`writing a synthetic ${args.shape} checkpoint (${dtype}) to ${dir} ...`);
  await makeBenchModel(args.shape!, dir, dtype);
}

const prompt = [Array.from({ length: promptLen }, (_, i) => 3 + ((i * 7919) % 1000))];

interface Row {
  engine: string;
  prefill: number;
  decode: number;
}
const rows: Row[] = [];
let weightBytes = 0;

async function run(name: string, opts: { maxResidentBytes: number; prefetching: boolean }) {
  await using model = await AutoModel.fromPretrained(dir, {
    ...opts,
    maxSeqLen: promptLen + newTokens + 8,
  });
  const manifest = JSON.parse(
    await Deno.readTextFile(`${dir}/rabbitllm_split_${model.config.dtype}/manifest.json`),
  ) as { parts: { dataBytes: number }[] };
  weightBytes = manifest.parts.reduce((s, p) => s + p.dataBytes, 0);
  await model.generate(prompt, { maxNewTokens: 2 }); // warm: page cache, resident layers, threads
  let t = performance.now();
  await model.generate(prompt, { maxNewTokens: 1 });
  const prefillS = (performance.now() - t) / 1000;
  t = performance.now();
  await model.generate(prompt, { maxNewTokens: newTokens + 1 });
  const decodeS = (performance.now() - t) / 1000 - prefillS;
  rows.push({ engine: name, prefill: promptLen / prefillS, decode: newTokens / decodeS });
}

await run("rabbitllm cpu, all layers resident", { maxResidentBytes: Infinity, prefetching: true });
await run("rabbitllm cpu, streamed from disk, prefetch", {
  maxResidentBytes: 0,
  prefetching: true,
});
await run("rabbitllm cpu, streamed from disk, no prefetch", {
  maxResidentBytes: 0,
  prefetching: false,
});

if (!args["no-hf"]) {
  const script = new URL("./bench_hf.py", import.meta.url).pathname;
  const out = await new Deno.Command("python3", {
    args: [script, dir, String(promptLen), String(newTokens)],
    stderr: "inherit",
  }).output().catch((e) => ({ success: false, stdout: new TextEncoder().encode(String(e)) }));
  const text = new TextDecoder().decode(out.stdout).trim();
  if (out.success) {
    const r = JSON.parse(text.split("\n").at(-1)!);
    rows.push({
      engine: `transformers ${r.transformers} (torch ${r.torch}, ${r.threads} threads)`,
      ...r,
    });
  } else console.log(`transformers baseline skipped: ${text.split("\n").at(-1)}`);
}

console.log(
  `\n${args.shape} ${dtype}: ${
    (weightBytes / 1e6).toFixed(0)
  } MB of weights read per decoded token; ` +
    `prompt ${promptLen}, ${newTokens} new tokens, ${navigator.hardwareConcurrency} cores`,
);
const w = Math.max(...rows.map((r) => r.engine.length));
console.log(`${"engine".padEnd(w)}  prefill tok/s  decode tok/s  decode GB/s of weights`);
for (const r of rows) {
  console.log(
    `${r.engine.padEnd(w)}  ${r.prefill.toFixed(1).padStart(13)}  ${
      r.decode.toFixed(1).padStart(12)
    }  ${(r.decode * weightBytes / 1e9).toFixed(1).padStart(22)}`,
  );
}
