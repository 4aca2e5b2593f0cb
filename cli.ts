/**
 * `rabbit` — pull, list, remove, run, benchmark, generate, chat, split, inspect and serve
 * checkpoints from the command line.
 *
 *   deno task rabbit generate --model models/stories260k --prompt "Once upon a time"
 *   deno task rabbit pull HuggingFaceTB/SmolLM2-135M-Instruct && deno task rabbit list
 *   deno task rabbit run HuggingFaceTB/SmolLM2-135M-Instruct "Why is the sky blue?"
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
import { type ChatMessage, type GenerateOptions, promptRows } from "./lib/engine/generate.ts";
import { sequenceLimit } from "./lib/rope.ts";
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
import { snapshotDownload } from "./lib/hub.ts";
import { hfHubCache } from "./lib/checkpoint.ts";
import {
  type CachedModel,
  cachedModel,
  describeModel,
  listCachedModels,
  removeCachedModel,
} from "./lib/cache.ts";
import { HubError, InputError, MemoryLimitError } from "./lib/errors.ts";
import { serve } from "./lib/serve.ts";

/** The embedded demo model: in a checkout only (the published package leaves it out). */
const DEMO = new URL("./models/stories260k", import.meta.url);
const DEFAULT_MODEL = DEMO.protocol === "file:" ? DEMO.pathname : "";

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
  run        run MODEL [PROMPT]: answer PROMPT, or chat when there is none
  pull       download a hub model into the Hugging Face cache (progress, resumes)
  list       the models in the Hugging Face cache: size, architecture, splits (alias: ls)
  rm         remove models from the Hugging Face cache, their splits included
  bench      a quick prefill and decode tok/s measurement of a model on this machine
  generate   continue a prompt (or one chat turn with --chat), streaming the text
  chat       an interactive chat using the model's chat template; keeps the KV cache across turns
  split      pre-split a checkpoint into per-layer files (with progress)
  info       config summary, layer sizes, bytes streamed per token, estimated memory
  serve      an OpenAI-compatible HTTP server; concurrent requests share each weight pass

MODEL is a checkpoint directory, a .gguf file or a hub id ORG/NAME (downloaded on first use into
the Hugging Face cache, which Python's huggingface_hub shares).`,
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
  -t, --temperature T         sampling temperature; setting it (or top-p/k, min-p) turns sampling
                              on; 0 means greedy (as llama.cpp, ollama and the OpenAI API)
      --top-p P, --top-k K, --min-p P, --repetition-penalty R
      --seed N                reproducible sampling
      --stop TEXT             stop when the text contains TEXT (repeatable)
      --profile               print where the time went`,
  run: `usage: rabbit run MODEL [PROMPT...] [options]
  With PROMPT: streams the answer (through the model's chat template when it has one, else as a
  continuation of the text) and exits. Without: an interactive chat (as rabbit chat).
      --system TEXT           system message
      --raw                   continue PROMPT as plain text, without the chat template`,
  pull: `usage: rabbit pull ORG/NAME [options]
  Downloads what the model needs (config, tokenizer, safetensors weights, else torch .bin shards)
  into the Hugging Face cache, with a progress bar on a terminal; an interrupted pull resumes where
  it stopped.
      --gguf-file NAME        a GGUF repo: download only this file
      --revision REV          branch, tag or commit (default main)
      --token TOKEN           hub access token (default: $HF_TOKEN); never printed
  -q, --quiet                 no progress bar
  The hub is $HF_ENDPOINT (default https://huggingface.co); the cache $HF_HUB_CACHE, else
  $HF_HOME/hub, else ~/.cache/huggingface/hub.`,
  list: `usage: rabbit list [--json]     (alias: rabbit ls)
  The models in the Hugging Face cache (Python's downloads too): size on disk (blobs, partial
  downloads and splits), architecture from config.json (or the GGUF files), the rabbitllm splits
  in the snapshots (incomplete: no manifest.json yet) and when they last changed.
      --json                  one JSON array, every detail`,
  rm: `usage: rabbit rm ORG/NAME... [-y]
  Removes each model from the Hugging Face cache: blobs, snapshots, refs, locks and the splits
  inside its snapshots. Asks first; only folders of the cache are ever removed.
  -y, --yes                   do not ask`,
  bench: `usage: rabbit bench [MODEL] [options]
  Prefill and decode tokens per second of MODEL (default: the embedded stories260k) here: a
  warm-up, then --repetitions runs of a synthetic prompt, greedy, without an EOS stop.
  -p, --prompt-len N          prompt tokens (default 64)
  -n, --max-new-tokens N      decoded tokens (default 32)
  -r, --repetitions N         measured runs (default 3; the table shows mean ± sd)
      --json                  the numbers as JSON`,
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
  serve: `usage: rabbit serve [model options] [--host H] [--port N] [--api-key KEY] [--max-batch N]
  An OpenAI-compatible server: POST /v1/chat/completions, POST /v1/completions, GET /v1/models
  (stream: true as server-sent events). Requests that arrive while others decode join the batch
  at the next step, so N clients share each pass over the weights. One log line per request on
  stderr; Ctrl-C stops it.
      --host HOST             interface to listen on (default 127.0.0.1: this machine only)
      --port N                TCP port (default 8000; 0: any free port, printed)
      --api-key KEY           require "Authorization: Bearer KEY" (never printed)
      --model-id NAME         the model name clients send (default: the --model name, a
                              directory's base name)
      --max-batch N           requests decoding at once (default 16)
      --max-queue N           requests waiting for a free row; more get 429 (default 64)
      --prefill-chunk N       prompt tokens per step: longer prompts go in chunks (default 256)`,
};

function help(cmd: string): string {
  const parts = [HELP[cmd] ?? HELP[""]];
  if (["generate", "chat", "run", "bench", "split", "info", "serve"].includes(cmd)) {
    parts.push(HELP.common);
  }
  if (["generate", "chat", "run"].includes(cmd)) parts.push(HELP.sampling);
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
  if (o.temperature === 0) o.doSample = false; // greedy, whatever else is set
  else if (sampling) o.doSample = true;
  return Object.fromEntries(Object.entries(o).filter(([, x]) => x !== undefined));
}

/** Writes text as it streams; returns the whole text and the token count. */
async function streamOut(
  model: CausalLM,
  input: Parameters<CausalLM["stream"]>[0],
  o: GenerateOptions,
  out: (s: string) => void,
  stop?: { readonly stopReply: boolean },
): Promise<{ text: string; tokens: number; seconds: number }> {
  let text = "", tokens = 0;
  const t0 = performance.now();
  let yielded = t0;
  for await (const c of model.stream(input, o)) {
    tokens++;
    text += c.text;
    out(c.text);
    if (stop && performance.now() - yielded > 20) {
      // Steps on resident layers never wait on the event loop: give a Ctrl-C its turn.
      await new Promise((r) => setTimeout(r, 0));
      yielded = performance.now();
    }
    if (stop?.stopReply) break; // ends the stream: the model is free, its cache consistent
  }
  return { text, tokens, seconds: (performance.now() - t0) / 1000 };
}

/**
 * Keeps a chat inside the model's length, as llama.cpp's and ollama's chats do: while the
 * conversation leaves no room for a reply of `minReply` tokens, the oldest exchange (a user turn and
 * its answer) is dropped from `messages`; a system message and the newest user turn always stay.
 * Returns how many messages were dropped and the reply's token cap (what is left, at most
 * `maxNewTokens`). The newest turn alone too long for any reply is an InputError.
 */
export function fitChat(
  lm: Pick<CausalLM, "config" | "maxSeqLen" | "tokenizer">,
  messages: ChatMessage[],
  maxNewTokens: number,
  minReply: number = Math.min(64, maxNewTokens),
): { dropped: number; maxNewTokens: number } {
  const limit = sequenceLimit(lm.config, lm.maxSeqLen);
  const length = () => promptRows(messages, lm.tokenizer)[0].length;
  let dropped = 0, n = length();
  while (n + minReply > limit) {
    const first = messages.findIndex((m) => m.role !== "system");
    if (first < 0 || first >= messages.length - 1) break; // only the newest turn is left
    const cut = messages[first + 1]?.role === "assistant" && first + 1 < messages.length - 1
      ? 2
      : 1;
    messages.splice(first, cut);
    dropped += cut;
    n = length();
  }
  if (n >= limit) {
    throw new InputError(
      `this message makes a prompt of ${n} tokens, and the model's length is ${limit} ` +
        "(--max-seq-len): no room is left for a reply",
    );
  }
  return { dropped, maxNewTokens: Math.min(maxNewTokens, limit - n) };
}

/**
 * SIGINT (Ctrl-C) in an interactive chat: while a reply is written it stops that reply (the chat
 * goes on); at the prompt it ends the chat (exit status 130). Listens while in scope.
 */
class ChatInterrupts {
  /** A reply is being written. */
  replying = false;
  /** Ctrl-C came while replying: stop the reply. */
  stopReply = false;
  /** Ctrl-C came at the prompt: end the chat. */
  quit = false;
  readonly #installed: boolean;

  constructor(private readonly onQuit: () => void) {
    try {
      Deno.addSignalListener("SIGINT", this.interrupt);
      this.#installed = true;
    } catch {
      this.#installed = false; // no signals here (Windows): Ctrl-C keeps its default
    }
  }

  /** What Ctrl-C does now. */
  readonly interrupt = (): void => {
    if (this.replying) this.stopReply = true;
    else {
      this.quit = true;
      this.onQuit();
    }
  };

  [Symbol.dispose](): void {
    if (this.#installed) Deno.removeSignalListener("SIGINT", this.interrupt);
  }
}

/** Options of each command besides --help; `positionals`: the operands it takes. */
const COMMANDS: Record<
  string,
  { options: Record<string, unknown>; positionals?: { min: number; max: number; usage: string } }
> = {
  generate: {
    options: {
      ...COMMON,
      ...SAMPLING,
      prompt: { type: "string", short: "p" },
      chat: { type: "string" },
      system: { type: "string" },
    },
  },
  chat: { options: { ...COMMON, ...SAMPLING, system: { type: "string" } } },
  split: { options: COMMON },
  info: {
    options: {
      ...COMMON,
      json: { type: "boolean", default: false },
      memory: { type: "string" },
      "gpu-memory": { type: "string" },
      "cpu-memory": { type: "string" },
    },
  },
  run: {
    options: {
      ...COMMON,
      ...SAMPLING,
      system: { type: "string" },
      raw: { type: "boolean", default: false },
    },
    positionals: { min: 1, max: Infinity, usage: "expected MODEL [PROMPT...]" },
  },
  pull: {
    options: {
      revision: COMMON.revision,
      "gguf-file": COMMON["gguf-file"],
      token: COMMON.token,
      quiet: COMMON.quiet,
      help: COMMON.help,
    },
    positionals: { min: 1, max: 1, usage: "expected one ORG/NAME" },
  },
  list: { options: { json: { type: "boolean", default: false }, help: COMMON.help } },
  rm: {
    options: { yes: { type: "boolean", short: "y", default: false }, help: COMMON.help },
    positionals: { min: 1, max: Infinity, usage: "expected ORG/NAME..." },
  },
  bench: {
    options: {
      ...COMMON,
      "prompt-len": { type: "string", short: "p", default: "64" },
      "max-new-tokens": { type: "string", short: "n", default: "32" },
      repetitions: { type: "string", short: "r", default: "3" },
      json: { type: "boolean", default: false },
    },
    positionals: { min: 0, max: 1, usage: "expected at most one MODEL" },
  },
  serve: {
    options: {
      ...COMMON,
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "8000" },
      "api-key": { type: "string" },
      "model-id": { type: "string" },
      "max-batch": { type: "string", default: "16" },
      "max-queue": { type: "string", default: "64" },
      "prefill-chunk": { type: "string", default: "256" },
    },
  },
};
const ALIASES: Record<string, string> = { ls: "list" };

/** Whether the model's tokenizer has a chat template (a text model may have none). */
function hasChatTemplate(lm: CausalLM): boolean {
  const t = lm.tokenizer as { chatTemplates?: ReadonlyMap<string, string> } | null;
  return (t?.chatTemplates?.size ?? 0) > 0;
}

/** Runs one CLI invocation; returns the exit code. Output goes through `io` (tests capture it). */
export async function main(
  args: string[],
  io: { out: (s: string) => void; err: (s: string) => void; input?: AsyncIterable<string> } = {
    out: (s) => Deno.stdout.writeSync(new TextEncoder().encode(s)),
    err: (s) => Deno.stderr.writeSync(new TextEncoder().encode(s)),
  },
): Promise<number> {
  const [given, ...rest] = args;
  if (!given || given === "--help" || given === "-h" || given === "help") {
    io.out(help("") + "\n");
    return given ? 0 : 2;
  }
  const cmd = ALIASES[given] ?? given;
  const spec = COMMANDS[cmd];
  if (!spec) {
    io.err(`rabbit: unknown command ${given}\n\n${help("")}\n`);
    return 2;
  }
  let v: Values, positionals: string[];
  try {
    ({ values: v, positionals } = parseArgs({
      args: rest,
      options: spec.options as never,
      strict: true,
      allowPositionals: spec.positionals !== undefined,
    }) as { values: Values; positionals: string[] });
  } catch (e) {
    io.err(`rabbit ${cmd}: ${(e as Error).message}\n\n${help(cmd)}\n`);
    return 2;
  }
  if (v.help) {
    io.out(help(cmd) + "\n");
    return 0;
  }
  const p = spec.positionals;
  if (p && (positionals.length < p.min || positionals.length > p.max)) {
    io.err(`rabbit ${cmd}: ${p.usage}\n\n${help(cmd)}\n`);
    return 2;
  }
  try {
    if (cmd === "list") return await list(v, io);
    if (cmd === "pull") return await pull(positionals[0], v, io);
    if (cmd === "rm") return await rm(positionals, v, io);
    if ((cmd === "run" || cmd === "bench") && positionals.length > 0) v.model = positionals[0];
    const model = v.model as string;
    if (!model) {
      throw new InputError(
        "--model is required: the demo model (stories260k) comes with a checkout, not with the package installed from a URL; pass a directory, a .gguf file or a hub id",
      );
    }
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
    if (cmd === "serve") return await serveCommand(model, v, io);
    const load = loadOptions(v);
    let benchShape: { promptLen: number; newTokens: number; runs: number } | undefined;
    if (cmd === "bench") {
      benchShape = {
        promptLen: count(v, "prompt-len"),
        newTokens: count(v, "max-new-tokens"),
        runs: count(v, "repetitions"),
      };
      load.maxSeqLen ??= benchShape.promptLen + benchShape.newTokens + 1;
    }
    await using lm = await AutoModel.fromPretrained(model, load);
    if (benchShape) return await bench(lm, model, benchShape, v, io);
    let mode = cmd;
    if (cmd === "run") {
      const prompt = positionals.slice(1).join(" ");
      mode = prompt === "" ? "chat" : "generate";
      if (prompt !== "" && !v.raw && hasChatTemplate(lm)) v.chat = prompt;
      else if (prompt !== "") v.prompt = prompt;
    }
    if (mode === "generate") {
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
    // chat: through the chat template; a model without one continues each line as plain text
    const templated = hasChatTemplate(lm);
    const o = templated ? { ...generateOptions(v), reuseCache: true } : generateOptions(v, 200);
    const messages: ChatMessage[] = v.system
      ? [{ role: "system", content: v.system as string }]
      : [];
    const rl = io.input ? null : createInterface({ input: process.stdin });
    const lines = io.input ?? rl!;
    // Ctrl-C stops the reply being written (back to the prompt); at the prompt it ends the chat.
    using ctrlC = new ChatInterrupts(() => rl?.close());
    rl?.on("SIGINT", ctrlC.interrupt); // a terminal's ^C reaches readline, not the process
    io.err(
      templated
        ? `chatting with ${lm.config.architecture} (empty line to end)\n`
        : `${lm.config.architecture} has no chat template: each line is continued as plain ` +
          "text (empty line to end)\n",
    );
    io.out("> ");
    for await (const line of lines) {
      if (line.trim() === "" || ctrlC.quit) break;
      ctrlC.replying = true;
      if (templated) {
        messages.push({ role: "user", content: line });
        let fit;
        try {
          fit = fitChat(lm, messages, o.maxNewTokens ?? lm.generationDefaults.maxNewTokens);
        } catch (e) {
          if (!(e instanceof InputError)) throw e;
          messages.pop(); // the chat goes on without it
          io.err(`[${e.message}]\n`);
        }
        if (fit) {
          if (fit.dropped > 0) {
            io.err(`[context full: the ${fit.dropped} oldest messages were dropped]\n`);
          }
          const r = await streamOut(
            lm,
            messages,
            { ...o, maxNewTokens: fit.maxNewTokens },
            io.out,
            ctrlC,
          );
          messages.push({ role: "assistant", content: r.text });
        }
      } else {
        io.out(line);
        await streamOut(lm, line, o, io.out, ctrlC);
      }
      ctrlC.replying = false;
      if (ctrlC.stopReply) io.err("\n[interrupted]");
      ctrlC.stopReply = false;
      io.out("\n> ");
    }
    io.out("\n");
    if (v.profile) io.err(lm.profiler.summary() + "\n");
    return ctrlC.quit ? 130 : 0;
  } catch (e) {
    if (
      e instanceof RabbitError || e instanceof Deno.errors.NotCapable ||
      e instanceof Deno.errors.PermissionDenied
    ) {
      io.err(`rabbit ${cmd}: ${e.name}: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

/** A positive integer option. */
function count(v: Values, key: string): number {
  const n = num(v, key);
  if (n === undefined || !Number.isInteger(n) || n < 1) {
    throw new InputError(`--${key}: expected a positive integer, got ${v[key]}`);
  }
  return n;
}

/**
 * `rabbit serve`: listens at once (requests get 503 while the model loads), serves until SIGINT
 * or SIGTERM, then closes the model.
 */
async function serveCommand(
  model: string,
  v: Values,
  io: { out: (s: string) => void; err: (s: string) => void },
): Promise<number> {
  const port = num(v, "port");
  if (port === undefined || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new InputError(`--port: expected a port number in [0, 65535], got ${v.port}`);
  }
  const local = await Deno.stat(model).then(() => true, () => false);
  const modelId = (v["model-id"] as string | undefined) ??
    (local ? model.replace(/\/+$/, "").split("/").at(-1)! : model);
  const opts = {
    hostname: v.host as string,
    port,
    apiKey: v["api-key"] as string | undefined,
    modelId,
    maxBatch: count(v, "max-batch"),
    maxQueue: count(v, "max-queue"),
    prefillChunk: count(v, "prefill-chunk"),
    log: (line: string) => io.err(line + "\n"),
  };
  // Listen first (a taken port fails before any loading), then load: 503 until loaded.
  const loaded = Promise.withResolvers<CausalLM>();
  loaded.promise.catch(() => {}); // awaited below
  let server: ReturnType<typeof serve>;
  try {
    server = serve(loaded.promise, opts);
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) {
      throw new InputError(`--host ${opts.hostname} --port ${port}: the address is in use`);
    }
    throw e;
  }
  io.err(`rabbit serve: listening on ${server.url}/v1 (model "${modelId}" loading)\n`);
  const loading = AutoModel.fromPretrained(model, loadOptions(v));
  loading.then(loaded.resolve, loaded.reject);
  const stop = () => void server.shutdown();
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, stop);
  try {
    let lm: CausalLM;
    try {
      lm = await loading;
    } catch (e) {
      await server.shutdown();
      throw e;
    }
    await using _ = lm;
    io.err(
      `rabbit serve: "${modelId}" ready: ${lm.config.architecture}, ${lm.residentLayers}/` +
        `${lm.config.numLayers} layers resident, up to ${opts.maxBatch} requests per step, ` +
        `context ${lm.maxSeqLen}\n`,
    );
    await server.finished;
    io.err("rabbit serve: stopped\n");
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, stop);
  }
  return 0;
}

/** The cache directory, or the error saying how to name one. */
function cacheDir(): string {
  const dir = hfHubCache();
  if (!dir) {
    throw new InputError("no Hugging Face cache directory: set HF_HUB_CACHE or HF_HOME (or HOME)");
  }
  return dir;
}

/** Files (not the splits) of a snapshot, following its links: [path inside, bytes]. */
async function snapshotFiles(dir: string, rel = ""): Promise<[string, number][]> {
  const out: [string, number][] = [];
  for await (const e of Deno.readDir(`${dir}/${rel}`)) {
    const path = `${rel}${e.name}`;
    if (e.name.startsWith("rabbitllm_split_")) continue;
    const info = await Deno.stat(`${dir}/${path}`).catch(() => null);
    if (info?.isDirectory) out.push(...await snapshotFiles(dir, `${path}/`));
    else if (info?.isFile) out.push([path, info.size]);
  }
  return out.sort((a, b) => a[0] < b[0] ? -1 : 1);
}

/** `rabbit pull ORG/NAME`: snapshotDownload into the cache (a progress bar on a terminal). */
async function pull(repo: string, v: Values, io: { out: (s: string) => void }): Promise<number> {
  const gguf = v["gguf-file"] as string | undefined;
  const revision = (v.revision as string | undefined) ?? "main";
  if (
    gguf !== undefined &&
    (!/\.gguf$/i.test(gguf) || /[*?\\]/.test(gguf) || gguf.split("/").includes(".."))
  ) {
    throw new InputError(`--gguf-file: expected a .gguf file name inside the repo, got ${gguf}`);
  }
  const dir = await snapshotDownload(repo, {
    revision,
    token: v.token as string | undefined,
    quiet: v.quiet as boolean,
    allowPatterns: gguf === undefined ? undefined : [gguf],
    cacheDir: cacheDir(),
  });
  let files = await snapshotFiles(dir);
  if (gguf !== undefined) {
    files = files.filter(([f]) => f === gguf);
    if (files.length === 0) {
      throw new HubError("not_found", repo, revision, "no such file in the repo", { file: gguf });
    }
  }
  const commit = dir.slice(dir.lastIndexOf("/") + 1);
  const bytes = files.reduce((n, [, b]) => n + b, 0);
  const what = gguf ?? `${files.length} files`;
  io.out(
    `pulled ${repo} (${
      revision === commit ? commit.slice(0, 7) : `${revision} → ${commit.slice(0, 7)}`
    }): ${what}, ${formatBytes(bytes)} in ${dir}\n`,
  );
  return 0;
}

/** "3 minutes ago", as ollama list says it. */
function ago(d: Date | null, now = Date.now()): string {
  if (d === null) return "-";
  const s = Math.max(0, (now - d.getTime()) / 1000);
  const units: [number, string][] = [
    [365 * 86400, "year"],
    [30 * 86400, "month"],
    [7 * 86400, "week"],
    [86400, "day"],
    [3600, "hour"],
    [60, "minute"],
  ];
  for (const [size, unit] of units) {
    const n = Math.floor(s / size);
    if (n >= 1) return `${n} ${unit}${n > 1 ? "s" : ""} ago`;
  }
  return "just now";
}

function splitsOf(m: CachedModel): string {
  if (m.splits.length === 0) return "-";
  return m.splits.map((s) => s.complete ? s.name : `${s.name} (incomplete)`).join(", ");
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((x, c) => c === r.length - 1 ? x : x.padEnd(widths[c])).join("  "))
    .join("\n");
}

/** `rabbit list`: the models of the Hugging Face cache. */
async function list(v: Values, io: { out: (s: string) => void }): Promise<number> {
  const cache = cacheDir();
  const models = await listCachedModels(cache);
  if (v.json) {
    io.out(JSON.stringify(models, null, 2) + "\n");
    return 0;
  }
  if (models.length === 0) {
    io.out(`no models in the Hugging Face cache (${cache})\n`);
    return 0;
  }
  const rows = [["NAME", "SIZE", "MODEL", "SPLITS", "MODIFIED"]];
  for (const m of models) {
    rows.push([
      m.repoId,
      formatBytes(m.bytes) + (m.incompleteBytes > 0 ? " (partial download)" : ""),
      describeModel(m),
      splitsOf(m),
      ago(m.modified),
    ]);
  }
  io.out(table(rows) + "\n");
  return 0;
}

/** `rabbit rm ORG/NAME...`: checks every name first, then asks (unless -y) and removes. */
async function rm(
  names: string[],
  v: Values,
  io: { out: (s: string) => void; err: (s: string) => void; input?: AsyncIterable<string> },
): Promise<number> {
  const cache = cacheDir();
  const models: CachedModel[] = [];
  for (const name of names) models.push(await cachedModel(name, cache));
  const input = v.yes ? null : (io.input ?? createInterface({ input: process.stdin }));
  const lines = input?.[Symbol.asyncIterator]();
  let code = 0;
  try {
    for (const m of models) {
      if (lines) {
        const splits = m.splits.length > 0 ? `, splits ${splitsOf(m)}` : "";
        io.err(`remove ${m.repoId} (${formatBytes(m.bytes)}${splits}) from ${cache}? [y/N] `);
        const answer = await lines.next();
        if (answer.done) io.err("\n");
        if (answer.done || !/^\s*y(es)?\s*$/i.test(answer.value)) {
          io.err(`rabbit rm: ${m.repoId} not removed (answer y, or pass -y)\n`);
          code = 1;
          continue;
        }
      }
      await removeCachedModel(m.dir, cache);
      io.out(`removed ${m.repoId} (${formatBytes(m.bytes)})\n`);
    }
  } finally {
    await lines?.return?.();
  }
  return code;
}

/** Mean and sample standard deviation. */
function meanSd(xs: number[]): { mean: number; sd: number } {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const sd = xs.length < 2
    ? 0
    : Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1));
  return { mean, sd };
}

/**
 * `rabbit bench`: a warm-up, then `runs` greedy generations of `newTokens + 1` tokens after a
 * synthetic prompt of `promptLen` ids, without an EOS stop. Prefill is the time to the first
 * token; decode the `newTokens` steps after it.
 */
async function bench(
  lm: CausalLM,
  model: string,
  shape: { promptLen: number; newTokens: number; runs: number },
  v: Values,
  io: { out: (s: string) => void; err: (s: string) => void },
): Promise<number> {
  const { promptLen: P, newTokens: N, runs: R } = shape;
  const V = lm.config.vocabSize;
  // Spread over the vocabulary, away from the usual special ids 0–2 (as scripts/bench_run.ts).
  const ids = Array.from({ length: P }, (_, i) => V > 3 ? 3 + (i * 7919) % (V - 3) : i % V);
  const o: GenerateOptions = { maxNewTokens: N + 1, doSample: false, eosTokenId: [] };
  for await (const _ of lm.stream([ids], { ...o, maxNewTokens: Math.min(2, N + 1) })) { /* warm */ }
  const prefill: number[] = [], decode: number[] = [];
  for (let r = 0; r < R; r++) {
    const t0 = performance.now();
    let first = 0;
    for await (const _ of lm.stream([ids], o)) first ||= performance.now();
    const end = performance.now();
    prefill.push(P / ((first - t0) / 1000));
    decode.push(N / ((end - first) / 1000));
  }
  const pf = meanSd(prefill), dc = meanSd(decode);
  const device = lm.backend.device, layers = lm.config.numLayers;
  const gguf = v["gguf-file"] !== undefined || /\.gguf$/i.test(model);
  const dtype = v.dtype !== "auto" ? v.dtype as string : gguf ? "gguf" : lm.config.dtype;
  const about = {
    model,
    architecture: lm.config.architecture,
    device,
    dtype,
    residentLayers: lm.residentLayers,
    layers,
    promptLen: P,
    newTokens: N,
    repetitions: R,
    prefill: { tokPerS: pf.mean, sd: pf.sd, runs: prefill },
    decode: { tokPerS: dc.mean, sd: dc.sd, runs: decode },
  };
  if (v.json) {
    io.out(JSON.stringify(about, null, 2) + "\n");
    return 0;
  }
  const rate = (x: { mean: number; sd: number }) =>
    R > 1 ? `${x.mean.toFixed(1)} ± ${x.sd.toFixed(1)}` : x.mean.toFixed(1);
  io.out(
    `${model}: ${lm.config.architecture}, ${dtype}, ${device}, ${lm.residentLayers}/${layers} ` +
      `layers resident; greedy, mean of ${R} run${R > 1 ? "s" : ""} after a warm-up\n` +
      table([
        ["test", "tokens", "tok/s", "ms/token"],
        ["prefill", String(P), rate(pf), (1000 / pf.mean).toFixed(2)],
        ["decode", String(N), rate(dc), (1000 / dc.mean).toFixed(2)],
      ]) + "\n",
  );
  return 0;
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
  let plan;
  try {
    plan = planFn(planInputFor(i, ck.config, {
      device,
      hostAvailable,
      deviceFree: gpu,
      maxCpuMemory: bytesOption(v, "cpu-memory"),
    }));
  } catch (e) {
    // The answer to "does it run in this limit" is no: said as the plan, not as a failure.
    if (!(e instanceof MemoryLimitError)) throw e;
    const { memory, needed, available, parts } = e;
    return {
      plan: null,
      refused: { memory, needed, available, parts, message: e.message },
      text: `  does not run in this limit: ${e.message}`,
    };
  }
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
