/**
 * `rabbit` — generate, chat, split and inspect checkpoints from the command line.
 *
 *   deno task rabbit generate --model models/stories260k --prompt "Once upon a time"
 *   deno install -g -n rabbit --allow-read --allow-write --allow-net --allow-env --allow-sys \
 *     --allow-ffi jsr:@rabbitllm/rabbitllm/cli
 *
 * @module
 */
import { parseArgs } from "node:util";
import process from "node:process";
import { createInterface } from "node:readline";
import {
  AutoModel,
  type FromPretrainedOptions,
  openCheckpoint,
  splitWithProgress,
} from "./lib/auto_model.ts";
import type { CausalLM } from "./lib/engine/causal_lm.ts";
import type { ChatMessage, GenerateOptions } from "./lib/engine/generate.ts";
import { RabbitError } from "./lib/errors.ts";
import {
  formatBytes,
  formatPlan,
  measureBandwidths,
  measureH2d,
  type ModelInfo,
  modelInfo,
  planInputFor,
} from "./lib/info.ts";
import { type Checkpoint } from "./lib/auto_model.ts";
import { listShards } from "./lib/checkpoint.ts";
import { plan as planFn } from "./lib/engine/planner.ts";
import { parseBytes, readMemoryLimits } from "./lib/memory.ts";
import { Backend } from "./ffi/backend.ts";

const DEFAULT_MODEL = new URL("./models/stories260k", import.meta.url).pathname;

const COMMON = {
  model: { type: "string", short: "m", default: DEFAULT_MODEL },
  revision: { type: "string" },
  "gguf-file": { type: "string" },
  token: { type: "string" },
  device: { type: "string", default: "cpu" },
  dtype: { type: "string", default: "auto" },
  "max-seq-len": { type: "string" },
  "split-dir": { type: "string" },
  quiet: { type: "boolean", short: "q", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const;

const SAMPLING = {
  "max-new-tokens": { type: "string", short: "n" },
  temperature: { type: "string", short: "t" },
  "top-p": { type: "string" },
  "top-k": { type: "string" },
  "min-p": { type: "string" },
  "repetition-penalty": { type: "string" },
  seed: { type: "string" },
  stop: { type: "string", multiple: true },
  profile: { type: "boolean", default: false },
} as const;

const HELP: Record<string, string> = {
  "": `rabbit — run Hugging Face LLMs larger than memory, one layer at a time

usage: rabbit <command> [options]     (rabbit <command> --help for its options)

commands:
  generate   continue a prompt (or one chat turn with --chat), streaming the text
  chat       an interactive chat using the model's chat template; keeps the KV cache across turns
  split      pre-split a checkpoint into per-layer files (with progress)
  info       config summary, layer sizes, bytes streamed per token, estimated memory`,
  common: `model options:
  -m, --model PATH|ORG/NAME   checkpoint directory, a .gguf file or a hub repo id (default: the
                              embedded stories260k)
      --gguf-file NAME        the GGUF file of a directory or hub repo to load (only it is fetched)
      --revision REV          hub branch, tag or commit
      --token TOKEN           hub access token (default: $HF_TOKEN); never printed
      --device DEV            cpu | cuda | cuda:N | auto (default cpu)
      --dtype DTYPE           auto | float32 | float16 | bfloat16 (default auto: the config's),
                              or q8_0 | q4_0 | q4_1 | q5_0 | q5_1 | q4_k | q5_k | q6_k: matmul
                              weights quantized
                              (a GGUF keeps its own types: leave auto)
      --max-seq-len N         KV cache length
      --split-dir DIR         where the per-layer split goes
  -q, --quiet                 no progress bars`,
  sampling: `generation options:
  -n, --max-new-tokens N      (default: generation_config.json, else 20; 200 for generate)
  -t, --temperature T         sampling temperature; setting it (or top-p/k, min-p) turns sampling on
      --top-p P, --top-k K, --min-p P, --repetition-penalty R
      --seed N                reproducible sampling
      --stop TEXT             stop when the text contains TEXT (repeatable)
      --profile               print where the time went`,
  generate: `usage: rabbit generate [options] [--prompt TEXT | --chat TEXT]
  -p, --prompt TEXT           text to continue (default: the BOS token only)
      --chat TEXT             one user turn through the chat template
      --system TEXT           system message for --chat`,
  chat: `usage: rabbit chat [options] [--system TEXT]
  Type a message and press enter; an empty line or Ctrl-D ends the chat.`,
  split: `usage: rabbit split [model options]
  Writes <checkpoint>/rabbitllm_split_<dtype> (or --split-dir) once; later loads reuse it.`,
  info:
    `usage: rabbit info [model options] [--json] [--memory SIZE] [--gpu-memory SIZE] [--cpu-memory SIZE]
      --memory SIZE           plan for a process limited to SIZE of host memory (400M, 8G; default:
                              what this process may use: available RAM and cgroup limits)
      --gpu-memory SIZE       plan for a GPU with SIZE of device memory (default: the CPU)
      --cpu-memory SIZE       cap the pinned host tier of a GPU plan (maxCpuMemory)
  With any of these, prints the memory plan: which layers live where, the bytes each decoded token
  reads from each tier, and the time per token predicted from bandwidths measured here.`,
};

function help(cmd: string): string {
  const parts = [HELP[cmd] ?? HELP[""]];
  if (cmd && cmd !== "") parts.push(HELP.common);
  if (cmd === "generate" || cmd === "chat") parts.push(HELP.sampling);
  return parts.join("\n\n");
}

type Values = Record<string, string | boolean | string[] | undefined>;

function num(v: Values, key: string): number | undefined {
  const s = v[key];
  if (s === undefined) return undefined;
  const n = Number(s);
  if (!Number.isFinite(n)) throw new RabbitError(`--${key}: expected a number, got ${s}`);
  return n;
}

function loadOptions(v: Values): FromPretrainedOptions {
  return {
    device: v.device as FromPretrainedOptions["device"],
    dtype: v.dtype as FromPretrainedOptions["dtype"],
    revision: v.revision as string | undefined,
    ggufFile: v["gguf-file"] as string | undefined,
    token: v.token as string | undefined,
    maxSeqLen: num(v, "max-seq-len"),
    layerShardsSavingPath: v["split-dir"] as string | undefined,
    quiet: v.quiet as boolean,
  };
}

function generateOptions(v: Values, fallbackNew?: number): GenerateOptions {
  const o: GenerateOptions = {
    maxNewTokens: num(v, "max-new-tokens") ?? fallbackNew,
    temperature: num(v, "temperature"),
    topP: num(v, "top-p"),
    topK: num(v, "top-k"),
    minP: num(v, "min-p"),
    repetitionPenalty: num(v, "repetition-penalty"),
    seed: num(v, "seed"),
    stopStrings: v.stop as string[] | undefined,
  };
  const sampling = [o.temperature, o.topP, o.topK, o.minP].some((x) => x !== undefined);
  if (sampling) o.doSample = true;
  return Object.fromEntries(Object.entries(o).filter(([, x]) => x !== undefined));
}

/** Writes text as it streams; returns the whole text and the token count. */
async function streamOut(
  model: CausalLM,
  input: Parameters<CausalLM["stream"]>[0],
  o: GenerateOptions,
  out: (s: string) => void,
): Promise<{ text: string; tokens: number; seconds: number }> {
  let text = "", tokens = 0;
  const t0 = performance.now();
  for await (const c of model.stream(input, o)) {
    tokens++;
    text += c.text;
    out(c.text);
  }
  return { text, tokens, seconds: (performance.now() - t0) / 1000 };
}

/** Runs one CLI invocation; returns the exit code. Output goes through `io` (tests capture it). */
export async function main(
  args: string[],
  io: { out: (s: string) => void; err: (s: string) => void; input?: AsyncIterable<string> } = {
    out: (s) => Deno.stdout.writeSync(new TextEncoder().encode(s)),
    err: (s) => Deno.stderr.writeSync(new TextEncoder().encode(s)),
  },
): Promise<number> {
  const [cmd, ...rest] = args;
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help") {
    io.out(help("") + "\n");
    return cmd ? 0 : 2;
  }
  const extra: Record<string, Record<string, unknown>> = {
    generate: {
      ...SAMPLING,
      prompt: { type: "string", short: "p" },
      chat: { type: "string" },
      system: { type: "string" },
    },
    chat: { ...SAMPLING, system: { type: "string" } },
    split: {},
    info: {
      json: { type: "boolean", default: false },
      memory: { type: "string" },
      "gpu-memory": { type: "string" },
      "cpu-memory": { type: "string" },
    },
  };
  if (!(cmd in extra)) {
    io.err(`rabbit: unknown command ${cmd}\n\n${help("")}\n`);
    return 2;
  }
  let v: Values;
  try {
    v = parseArgs({ args: rest, options: { ...COMMON, ...extra[cmd] } as never, strict: true })
      .values as Values;
  } catch (e) {
    io.err(`rabbit ${cmd}: ${(e as Error).message}\n\n${help(cmd)}\n`);
    return 2;
  }
  if (v.help) {
    io.out(help(cmd) + "\n");
    return 0;
  }
  try {
    const model = v.model as string;
    if (cmd === "split") {
      const ck = await openCheckpoint(model, loadOptions(v));
      const s = await splitWithProgress(ck, loadOptions(v));
      const bytes = s.manifest.parts.reduce((n, p) => n + p.bytes, 0);
      io.out(
        `${s.reused ? "reused" : "wrote"} ${s.manifest.parts.length} parts, ${
          formatBytes(bytes)
        } in ${s.dir}\n`,
      );
      return 0;
    }
    if (cmd === "info") {
      const ck = await openCheckpoint(model, loadOptions(v));
      const i = await modelInfo(ck, { maxSeqLen: num(v, "max-seq-len") });
      const planned = v.memory !== undefined || v["gpu-memory"] !== undefined ||
        v["cpu-memory"] !== undefined;
      const memory = planned ? await memoryPlan(ck, i, v) : null;
      if (v.json) io.out(JSON.stringify(memory ? { ...i, memory } : i, null, 2) + "\n");
      else io.out(formatInfo(i) + (memory ? `\n\nmemory plan\n${memory.text}` : "") + "\n");
      return 0;
    }
    await using lm = await AutoModel.fromPretrained(model, loadOptions(v));
    if (cmd === "generate") {
      const o = generateOptions(v, 200);
      let input: Parameters<CausalLM["stream"]>[0];
      if (v.chat !== undefined) {
        const messages: ChatMessage[] = [];
        if (v.system) messages.push({ role: "system", content: v.system as string });
        messages.push({ role: "user", content: v.chat as string });
        input = messages;
      } else if (v.prompt !== undefined) {
        input = v.prompt as string;
        io.out(v.prompt as string);
      } else input = [[lm.config.bosTokenId ?? 1]];
      lm.profiler.reset();
      const r = await streamOut(lm, input, o, io.out);
      io.out("\n");
      io.err(
        `${r.tokens} tokens in ${r.seconds.toFixed(2)} s (${
          (r.tokens / r.seconds).toFixed(1)
        } tok/s)\n`,
      );
      if (v.profile) io.err(lm.profiler.summary() + "\n");
      return 0;
    }
    // chat
    const o = { ...generateOptions(v), reuseCache: true };
    const messages: ChatMessage[] = v.system
      ? [{ role: "system", content: v.system as string }]
      : [];
    const lines = io.input ?? createInterface({ input: process.stdin });
    io.err(`chatting with ${lm.config.architecture} (empty line to end)\n`);
    io.out("> ");
    for await (const line of lines) {
      if (line.trim() === "") break;
      messages.push({ role: "user", content: line });
      const r = await streamOut(lm, messages, o, io.out);
      messages.push({ role: "assistant", content: r.text });
      io.out("\n> ");
    }
    io.out("\n");
    if (v.profile) io.err(lm.profiler.summary() + "\n");
    return 0;
  } catch (e) {
    if (e instanceof RabbitError) {
      io.err(`rabbit ${cmd}: ${e.name}: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

function bytesOption(v: Values, key: string): number | undefined {
  const s = v[key] as string | undefined;
  if (s === undefined) return undefined;
  const n = parseBytes(s);
  if (n === null) throw new RabbitError(`--${key}: expected a size like 400M or 8G, got ${s}`);
  return n;
}

/** The memory plan `rabbit info --memory/--gpu-memory` prints, with measured bandwidths. */
async function memoryPlan(ck: Checkpoint, i: ModelInfo, v: Values) {
  const limit = bytesOption(v, "memory"), gpu = bytesOption(v, "gpu-memory");
  const device = gpu === undefined ? "cpu" : "cuda";
  using be = Backend.open({ device: "cpu" });
  const hostAvailable = limit !== undefined
    ? Math.max(0, limit - Deno.memoryUsage().rss)
    : readMemoryLimits({ read: (p) => be.readSysfile(p) }).available;
  const plan = planFn(planInputFor(i, ck.config, {
    device,
    hostAvailable,
    deviceFree: gpu,
    maxCpuMemory: bytesOption(v, "cpu-memory"),
  }));
  const files = ck.gguf
    ? [ck.gguf.file]
    : (await listShards(ck.dir)).files.map((f) => `${ck.dir}/${f}`);
  const bw = await measureBandwidths(be, files);
  if (device === "cuda") {
    // Host→device bandwidth needs the GPU: measured when the CUDA backend loads here.
    try {
      using gpuBe = Backend.open({ device: "cuda" });
      bw.h2d = measureH2d(gpuBe);
    } catch { /* no GPU here: the prediction leaves the copies out, and says so */ }
  }
  let text = formatPlan(i, plan, device, bw);
  text += `\nnote: planned for a KV cache of ${i.maxSeqLen} tokens (one sequence); --max-seq-len ` +
    "changes it, and a running model re-plans every call for what that call needs";
  if (device === "cuda" && bw.h2d === undefined) {
    text += "\nnote: no GPU here: host→device copies are not in the prediction";
  }
  return { plan, bandwidths: bw, text };
}

function formatInfo(i: Awaited<ReturnType<typeof modelInfo>>): string {
  const rows: [string, string][] = [
    ["checkpoint", i.dir],
    ["architecture", i.architecture],
    ["parameters", `${(i.parameters / 1e6).toFixed(2)} M`],
    ["dtype", i.dtype],
    [
      "layers",
      `${i.layers} × ${formatBytes(i.layerBytes.max)} (largest), ${
        formatBytes(i.layerBytes.total)
      } in all`,
    ],
    ["hidden / heads / head_dim", `${i.hiddenSize} / ${i.heads} / ${i.headDim}`],
    ["vocab / context", `${i.vocabSize} / ${i.context}`],
    ["rope", i.rope],
    ["tied embeddings", String(i.tiedEmbeddings)],
    ...(i.experts
      ? [[
        "experts",
        `${i.experts.perLayer} per MoE layer, ${i.experts.perToken} per token`,
      ] as [string, string]]
      : []),
    [
      "streamed per token",
      `${formatBytes(i.streamedPerToken)} (every layer from disk${
        i.experts ? "; only the routed experts" : ""
      })`,
    ],
    ["KV cache", `${formatBytes(i.kvCacheBytes)} at ${i.maxSeqLen} tokens (one sequence)`],
    ["memory, layers streamed", formatBytes(i.minDeviceBytes)],
    ["memory, all resident", formatBytes(i.allResidentBytes)],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, val]) => `${k.padEnd(w)}  ${val}`).join("\n");
}

if (import.meta.main) Deno.exit(await main(Deno.args));
