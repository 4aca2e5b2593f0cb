/**
 * `deno task bench`: prefill and decode speed on a synthetic checkpoint of a real model's shape
 * with every layer resident and with layers streamed from their files, next to transformers on
 * the same checkpoint (CPU, when python3 has torch + transformers) or to the measured pinned
 * host → device bandwidth (CUDA, build/bench_h2d).
 *
 *   deno task bench [--device cpu|cuda] [--shape smollm2-135m|llama3-8b|qwen3-30b-a3b]
 *                   [--dtype F32|F16|BF16] [--layers N] [--prompt 32] [--new 64] [--no-hf]
 *
 * Defaults: cpu → SmolLM2-135M shape in F32; cuda → Llama-3-8B shape in BF16. The MoE shape
 * (Qwen3-30B-A3B, 4 of its 48 layers unless --layers) counts the weights a token touches as the
 * always-needed tensors plus 8 of 128 experts; streamed rows also show the bytes actually read
 * per decoded token (the backend's H2D counter).
 */
import { parseArgs } from "node:util";
import { AutoModel } from "../mod.ts";
import { openCheckpoint } from "../lib/auto_model.ts";
import { modelInfo } from "../lib/info.ts";
import { BENCH_LAYERS, makeBenchModel } from "./make_bench_model.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    device: { type: "string", default: "cpu" },
    shape: { type: "string" },
    dtype: { type: "string" },
    layers: { type: "string" },
    prompt: { type: "string", default: "32" },
    new: { type: "string", default: "64" },
    "no-hf": { type: "boolean", default: false },
  },
});
const device = args.device as "cpu" | "cuda";
const shape = args.shape ?? (device === "cuda" ? "llama3-8b" : "smollm2-135m");
const dtype = (args.dtype ?? (device === "cuda" ? "BF16" : "F32")) as "F32" | "F16" | "BF16";
const layers = args.layers ? Number(args.layers) : BENCH_LAYERS[shape];
const promptLen = Number(args.prompt), newTokens = Number(args.new);
const dir = new URL(
  `../tests/.tmp/bench/${shape}-${dtype}${layers ? `-${layers}l` : ""}`,
  import.meta.url,
).pathname;
try {
  await Deno.stat(`${dir}/config.json`);
} catch {
  console.log(`writing a synthetic ${shape} checkpoint (${dtype}) to ${dir} ...`);
  await makeBenchModel(shape, dir, dtype, layers);
}

const prompt = [Array.from({ length: promptLen }, (_, i) => 3 + ((i * 7919) % 1000))];

interface Row {
  engine: string;
  prefill: number;
  decode: number;
  /** Bytes moved into the device per decoded token (streamed runs), measured. */
  readPerToken?: number;
}
const rows: Row[] = [];
// Weights one decoded token touches (`rabbit info`'s figure): the layers and the head; a MoE layer
// counts num_experts_per_tok of its experts.
const weightBytes = (await modelInfo(await openCheckpoint(dir, { quiet: true }))).streamedPerToken;

async function run(
  name: string,
  opts: { maxResidentBytes: number; prefetching: boolean; asyncCopy?: boolean },
) {
  await using model = await AutoModel.fromPretrained(dir, {
    ...opts,
    device,
    maxSeqLen: promptLen + newTokens + 8,
  });
  // Warm: page cache, resident layers, threads, and the first touch of every streaming slot's
  // pages (a MoE prompt touches only the routed experts' areas of a slot per pass, and first
  // touches cost ~1 GB/s on a VM).
  for (let i = 0; i < 3; i++) await model.generate(prompt, { maxNewTokens: 2 });
  const loaded = () => model.backend.stats().h2dBytes;
  let b0 = loaded(), t = performance.now();
  await model.generate(prompt, { maxNewTokens: 1 });
  const prefillS = (performance.now() - t) / 1000, prefillBytes = loaded() - b0;
  b0 = loaded();
  t = performance.now();
  await model.generate(prompt, { maxNewTokens: newTokens + 1 });
  const decodeS = (performance.now() - t) / 1000 - prefillS;
  rows.push({
    engine: name,
    prefill: promptLen / prefillS,
    decode: newTokens / decodeS,
    readPerToken: opts.maxResidentBytes === 0
      ? (loaded() - b0 - prefillBytes) / newTokens
      : undefined,
  });
}

let h2d: { device: string; pinned_gbps: number; pageable_gbps: number } | null = null;
if (device === "cuda") {
  // The physical bound of streaming: pinned host → device bandwidth of this machine.
  const exe = new URL("../build/bench_h2d", import.meta.url).pathname;
  const out = await new Deno.Command(exe, { args: ["1024"] }).output();
  if (!out.success) throw new Error(`bench_h2d failed: ${new TextDecoder().decode(out.stderr)}`);
  h2d = JSON.parse(new TextDecoder().decode(out.stdout));
}
const tag = `rabbitllm ${device}`;
await run(`${tag}, all layers resident`, { maxResidentBytes: Infinity, prefetching: true });
await run(`${tag}, streamed from host memory (page cache), prefetch`, {
  maxResidentBytes: 0,
  prefetching: true,
});
if (device === "cuda") {
  await run(`${tag}, streamed, prefetch, copies on the compute stream`, {
    maxResidentBytes: 0,
    prefetching: true,
    asyncCopy: false,
  });
}
await run(`${tag}, streamed, no prefetch`, { maxResidentBytes: 0, prefetching: false });

if (!args["no-hf"] && device === "cpu") {
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

if (h2d) {
  console.log(
    `\n${h2d.device}: pinned host→device ${h2d.pinned_gbps} GB/s, pageable ${h2d.pageable_gbps} GB/s`,
  );
}
console.log(
  `\n${shape}${layers ? ` (${layers} layers)` : ""} ${dtype}: ${
    (weightBytes / 1e6).toFixed(0)
  } MB of weights per decoded token; ` +
    `prompt ${promptLen}, ${newTokens} new tokens, ${navigator.hardwareConcurrency} cores`,
);
const w = Math.max(...rows.map((r) => r.engine.length));
console.log(
  `${"engine".padEnd(w)}  prefill tok/s  decode tok/s  s/token  decode GB/s of weights` +
    `  read MB/token${h2d ? "  % of pinned H2D" : ""}`,
);
for (const r of rows) {
  const gbps = r.decode * weightBytes / 1e9;
  const share = h2d ? `  ${(100 * gbps / h2d.pinned_gbps).toFixed(0).padStart(15)}%` : "";
  const read = r.readPerToken === undefined ? "—" : (r.readPerToken / 1e6).toFixed(0);
  console.log(
    `${r.engine.padEnd(w)}  ${r.prefill.toFixed(1).padStart(13)}  ${
      r.decode.toFixed(1).padStart(12)
    }  ${(1 / r.decode).toFixed(3).padStart(7)}  ${gbps.toFixed(1).padStart(22)}  ${
      read.padStart(13)
    }${share}`,
  );
}
