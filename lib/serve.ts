/**
 * `rabbit serve`: an OpenAI-compatible HTTP server on `Deno.serve` — `POST /v1/chat/completions`,
 * `POST /v1/completions`, `GET /v1/models` — whose concurrent requests share each pass over the
 * weights through the continuous-batching scheduler (lib/engine/batcher.ts). This file is the HTTP
 * layer only: OpenAI's JSON shapes and server-sent events, the API key, limits, error bodies and
 * the request log.
 *
 * @module
 */
import { Batcher, batcherOptions, type BatchRequest } from "./engine/batcher.ts";
import type { CausalLM } from "./engine/causal_lm.ts";
import { type ChatMessage, type GenerateOptions, promptRows } from "./engine/generate.ts";
import { InputError, QueueFullError, TokenizerError } from "./errors.ts";

/** Options of {@link serve}. */
export interface ServeOptions {
  /** Interface to listen on. Default `127.0.0.1` (this machine only). */
  hostname?: string;
  /** TCP port; 0 picks a free one (see {@link RabbitServer.addr}). Default 8000. */
  port?: number;
  /**
   * When set, every request must send `Authorization: Bearer <apiKey>` (compared in constant
   * time; never logged).
   */
  apiKey?: string;
  /** The model id `GET /v1/models` lists and requests must name. Default `"rabbitllm"`. */
  modelId?: string;
  /** Requests decoding at once, sharing each pass over the weights. Default 16. */
  maxBatch?: number;
  /** Requests waiting for a free row; more are answered 429 with Retry-After. Default 64. */
  maxQueue?: number;
  /** Prompt tokens fed per step (a long prompt goes in chunks beside the decoding rows). 256. */
  prefillChunk?: number;
  /** Largest request body; a larger one is answered 413. Default 1 MiB. */
  maxBodyBytes?: number;
  /** Longest prompt in tokens. Default: the model's context (maxSeqLen) less one. */
  maxPromptTokens?: number;
  /** Receives one line per request (id, route, status, tokens in/out, time). Default stderr. */
  log?: ((line: string) => void) | null;
  /** Called once listening, with the address. */
  onListen?: (addr: { hostname: string; port: number }) => void;
}

/** What the server reports about its scheduler (see {@link RabbitServer.stats}). */
export interface ServeStats {
  /** The model is still loading (completion requests get 503; 500 if loading failed). */
  loading: boolean;
  /** Requests decoding. */
  active: number;
  /** Requests waiting for a row. */
  queued: number;
  /** Passes over the weights so far. */
  steps: number;
  /** Token rows fed so far (prompt and generated). */
  tokens: number;
  /** The most requests one pass has served. */
  maxRowsInStep: number;
}

/** A running server made by {@link serve}. */
export interface RabbitServer {
  /** The address it listens on. */
  readonly addr: { hostname: string; port: number };
  /** `http://<hostname>:<port>`: the OpenAI base URL is this plus `/v1`. */
  readonly url: string;
  /** Settles once the server has stopped. */
  readonly finished: Promise<void>;
  /** The scheduler's state now. */
  stats(): ServeStats;
  /** Stops it: running and queued requests are cancelled, then the listener closes. */
  shutdown(): Promise<void>;
  /** `await using server = serve(...)`: {@link RabbitServer.shutdown}. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** An error answered as OpenAI's error body with an HTTP status. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

const bad = (message: string, param: string | null = null, code: string | null = null) =>
  new HttpError(400, message, "invalid_request_error", code, param);

const encoder = new TextEncoder();

/** SHA-256 of a string: keys are compared as digests, in constant time. */
async function digest(s: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(s)));
}

/** Equal bytes, without an early exit (both are 32-byte digests). */
function sameDigest(a: Uint8Array, b: Uint8Array): boolean {
  let d = a.length ^ b.length;
  for (let i = 0; i < a.length && i < b.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

/**
 * Holds back text that may be the start of a stop string, and cuts the text at the first stop
 * string (OpenAI leaves it out of the answer).
 */
class StopTrim {
  #text = "";
  #sent = 0;
  stopped = false;
  constructor(readonly stops: readonly string[]) {}

  /** The text that can go out now. */
  push(delta: string): string {
    if (this.stopped) return "";
    this.#text += delta;
    if (this.stops.length === 0) return this.#take(this.#text.length);
    let cut = -1;
    for (const s of this.stops) {
      const i = this.#text.indexOf(s, this.#sent);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      this.stopped = true;
      return this.#take(cut);
    }
    let hold = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.#text.length - this.#sent); k > hold; k--) {
        if (this.#text.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    return this.#take(this.#text.length - hold);
  }

  /** What was held back, at the end of a request that did not stop on a stop string. */
  flush(): string {
    return this.stopped ? "" : this.#take(this.#text.length);
  }

  #take(end: number): string {
    const out = this.#text.slice(this.#sent, end);
    this.#sent = Math.max(this.#sent, end);
    return out;
  }
}

/** A parsed completion request. */
interface Job {
  kind: "chat" | "text";
  prompt: number[];
  options: GenerateOptions;
  stops: string[];
  stream: boolean;
  includeUsage: boolean;
}

/** OpenAI's finish_reason. */
function finishReason(r: BatchRequest): "stop" | "length" {
  return r.finishReason === "length" ? "length" : "stop";
}

/**
 * Serves `model` (or the model a promise will give: requests meanwhile get 503) over an
 * OpenAI-compatible API on `Deno.serve`. Needs `--allow-net=<hostname>:<port>` besides what the
 * model needs. While the server has work, it is the model's only user (other calls on the model
 * wait until it is idle); the caller still owns the model and closes it after
 * {@link RabbitServer.shutdown}.
 *
 * @example
 * ```ts ignore
 * const server = serve(AutoModel.fromPretrained("HuggingFaceTB/SmolLM2-135M-Instruct"), {
 *   port: 8000,
 *   apiKey: Deno.env.get("RABBIT_API_KEY"),
 * });
 * await server.finished;
 * ```
 */
export function serve(
  model: CausalLM | Promise<CausalLM>,
  options: ServeOptions = {},
): RabbitServer {
  const o = options;
  // Checked now, not on the first request: bad numbers are the caller's error.
  batcherOptions({ maxBatch: o.maxBatch, maxQueue: o.maxQueue, prefillChunk: o.prefillChunk });
  for (const [k, v] of [["maxBodyBytes", o.maxBodyBytes], ["maxPromptTokens", o.maxPromptTokens]]) {
    if (v !== undefined && (!Number.isInteger(v) || (v as number) < 1)) {
      throw new InputError(`serve: ${k} must be a positive integer, got ${v}`);
    }
  }
  const modelId = o.modelId ?? "rabbitllm";
  const maxBody = o.maxBodyBytes ?? 1 << 20;
  const log = o.log === undefined ? (s: string) => console.error(s) : o.log;
  const created = Math.floor(Date.now() / 1000);
  let lm: CausalLM | null = null;
  let batcher: Batcher | null = null;
  let loadError: unknown = null;
  let closing = false;
  const keyDigest = o.apiKey === undefined ? null : digest(o.apiKey);
  const setModel = (m: CausalLM) => {
    lm = m;
    batcher = new Batcher(m, {
      maxBatch: o.maxBatch,
      maxQueue: o.maxQueue,
      prefillChunk: o.prefillChunk,
    });
  };
  if (model instanceof Promise) {
    model.then(setModel, (e) => loadError = e);
  } else setModel(model);
  let seq = 0;

  const handler = async (req: Request): Promise<Response> => {
    const t0 = performance.now();
    const id = `req-${(++seq).toString(36)}-${crypto.randomUUID().slice(0, 8)}`;
    const path = new URL(req.url).pathname;
    const line = (status: number, extra = "") =>
      log?.(
        `${id} ${req.method} ${path} ${status}${extra} ${
          ((performance.now() - t0) / 1000).toFixed(3)
        }s`,
      );
    try {
      const res = await route(req, path, id, (status, r) => {
        const tokens = r ? ` in=${r.promptTokens} out=${r.completionTokens}` : "";
        line(status, `${tokens}${r?.finishReason ? ` ${r.finishReason}` : ""}`);
      });
      res.headers.set("x-request-id", id);
      return res;
    } catch (e) {
      const err = e instanceof HttpError ? e : internal(e);
      line(err.status, ` ${err.code ?? err.type}${err.status === 500 ? `: ${errorText(e)}` : ""}`);
      const res = errorResponse(err);
      res.headers.set("x-request-id", id);
      return res;
    }
  };

  const internal = (e: unknown): HttpError => {
    if (e instanceof QueueFullError) {
      return new HttpError(
        429,
        "the server is busy: too many requests waiting; retry later",
        "rate_limit_error",
        "rate_limit_exceeded",
        null,
        { "retry-after": "1" },
      );
    }
    if (e instanceof InputError) return bad(e.message);
    return new HttpError(500, `internal error: ${(e as Error)?.name ?? "Error"}`, "server_error");
  };

  /** Answers a request; `done` logs it (once its tokens are known). */
  async function route(
    req: Request,
    path: string,
    id: string,
    done: (status: number, r?: BatchRequest) => void,
  ): Promise<Response> {
    if (keyDigest) {
      const auth = req.headers.get("authorization") ?? "";
      const m = /^Bearer (.*)$/i.exec(auth);
      if (!m || !sameDigest(await digest(m[1]), await keyDigest)) {
        throw new HttpError(
          401,
          "Incorrect API key provided.",
          "invalid_request_error",
          "invalid_api_key",
        );
      }
    }
    if (path === "/v1/models" || path.startsWith("/v1/models/")) {
      if (req.method !== "GET") throw methodNotAllowed("GET");
      const entry = { id: modelId, object: "model", created, owned_by: "rabbitllm" };
      if (path === "/v1/models") {
        done(200);
        return Response.json({ object: "list", data: [entry] });
      }
      const name = path.slice("/v1/models/".length);
      let decoded: string | null = null;
      try {
        decoded = decodeURIComponent(name);
      } catch { /* not a name */ }
      if (decoded !== modelId) throw unknownModel(decoded ?? name);
      done(200);
      return Response.json(entry);
    }
    const kind = path === "/v1/chat/completions"
      ? "chat"
      : path === "/v1/completions"
      ? "text"
      : null;
    if (!kind) throw new HttpError(404, `no route ${path}`, "invalid_request_error", "not_found");
    if (req.method !== "POST") throw methodNotAllowed("POST");
    if (closing) throw shuttingDown();
    const body = await readJson(req);
    if (loadError) {
      throw new HttpError(500, "the model failed to load", "server_error", "model_load_failed");
    }
    if (!lm || !batcher) {
      throw new HttpError(
        503,
        "the model is loading; retry shortly",
        "server_error",
        "model_loading",
        null,
        { "retry-after": "5" },
      );
    }
    const job = parseJob(kind, body, lm, batcher);
    // A client that goes away cancels its request: a stream when a write fails (its body is
    // cancelled), a plain request through request.signal (the only sign of it; Deno then prints
    // a one-time notice that the signal also aborts after successful responses, its legacy
    // behaviour, harmless here: the request has ended by then).
    const r = batcher.submit(job.prompt, job.options, job.stream ? undefined : req.signal);
    return job.stream
      ? streamResponse(kind, job, r, id, done)
      : await fullResponse(kind, job, r, id, done);
  }

  const shuttingDown = () =>
    new HttpError(503, "the server is shutting down", "server_error", "shutting_down");

  const methodNotAllowed = (allow: string) =>
    new HttpError(405, `use ${allow}`, "invalid_request_error", "method_not_allowed", null, {
      allow,
    });

  const unknownModel = (name: string) =>
    new HttpError(
      404,
      `The model \`${name}\` does not exist; this server has \`${modelId}\``,
      "invalid_request_error",
      "model_not_found",
      "model",
    );

  /** The body as JSON, at most maxBody bytes. */
  async function readJson(req: Request): Promise<Record<string, unknown>> {
    const tooLarge = () =>
      new HttpError(
        413,
        `the request body exceeds ${maxBody} bytes`,
        "invalid_request_error",
        "request_too_large",
      );
    const length = Number(req.headers.get("content-length") ?? NaN);
    if (length > maxBody) throw tooLarge();
    const parts: Uint8Array[] = [];
    let n = 0;
    if (req.body) {
      for await (const part of req.body) {
        n += part.length;
        if (n > maxBody) throw tooLarge();
        parts.push(part);
      }
    }
    const bytes = new Uint8Array(n);
    let at = 0;
    for (const p of parts) {
      bytes.set(p, at);
      at += p.length;
    }
    let v: unknown;
    try {
      v = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
    } catch {
      throw bad(
        "We could not parse the JSON body of your request: expected a JSON object.",
        null,
        "invalid_json",
      );
    }
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      throw bad("The request body must be a JSON object.", null, "invalid_json");
    }
    return v as Record<string, unknown>;
  }

  /** Checks a completion request and turns it into a prompt and generate() options. */
  function parseJob(
    kind: "chat" | "text",
    b: Record<string, unknown>,
    m: CausalLM,
    bt: Batcher,
  ): Job {
    if (typeof b.model !== "string") throw bad("`model` is required (a string)", "model");
    if (b.model !== modelId) throw unknownModel(b.model);
    const num = (k: string, lo: number, hi: number, int = false): number | undefined => {
      const v = b[k];
      if (v === undefined || v === null) return undefined;
      if (
        typeof v !== "number" || !Number.isFinite(v) || v < lo || v > hi ||
        (int && !Number.isInteger(v))
      ) {
        throw bad(
          `\`${k}\` must be ${int ? "an integer" : "a number"} in [${lo}, ${hi}], got ${
            JSON.stringify(v)
          }`,
          k,
        );
      }
      return v;
    };
    if (b.stream !== undefined && b.stream !== null && typeof b.stream !== "boolean") {
      throw bad("`stream` must be a boolean", "stream");
    }
    if ((num("n", 1, 1, true) ?? 1) !== 1) throw bad("`n` must be 1", "n");
    if (b.logprobs === true || (typeof b.logprobs === "number" && b.logprobs > 0)) {
      throw bad("`logprobs` is not supported", "logprobs");
    }
    if (kind === "text" && b.echo === true) throw bad("`echo` is not supported", "echo");
    if ((num("best_of", 1, 1, true) ?? 1) !== 1) throw bad("`best_of` must be 1", "best_of");
    for (const k of ["presence_penalty", "frequency_penalty"]) {
      if ((num(k, -2, 2) ?? 0) !== 0) throw bad(`\`${k}\` is not supported (only 0)`, k);
    }
    const temperature = num("temperature", 0, 2);
    const topP = num("top_p", 0, 1);
    if (topP === 0) throw bad("`top_p` must be > 0", "top_p");
    const seed = num("seed", -(2 ** 63), 2 ** 64, true);
    const maxTokens = num("max_completion_tokens", 1, 2 ** 31, true) ??
      num("max_tokens", 1, 2 ** 31, true);
    let stops: string[] = [];
    if (typeof b.stop === "string") stops = [b.stop];
    else if (Array.isArray(b.stop)) stops = b.stop as string[];
    else if (b.stop !== undefined && b.stop !== null) {
      throw bad("`stop` must be a string or an array of strings", "stop");
    }
    if (stops.length > 4 || stops.some((s) => typeof s !== "string" || s.length === 0)) {
      throw bad("`stop` takes up to 4 non-empty strings", "stop");
    }
    let includeUsage = false;
    if (b.stream_options !== undefined && b.stream_options !== null) {
      const so = b.stream_options as Record<string, unknown>;
      if (typeof so !== "object" || b.stream !== true) {
        throw bad("`stream_options` needs `stream: true`", "stream_options");
      }
      includeUsage = so.include_usage === true;
    }

    let prompt: number[];
    try {
      prompt = kind === "chat" ? chatPrompt(b.messages, m) : textPrompt(b.prompt, m);
    } catch (e) {
      if (e instanceof HttpError) throw e;
      if (e instanceof TokenizerError) {
        const what = /the model has no chat template/.test(e.message)
          ? "this model has no chat template: use /v1/completions"
          : e.message.replace(/^.*?chat_template: /, "chat template: ");
        throw bad(what, kind === "chat" ? "messages" : "prompt");
      }
      if (e instanceof InputError) {
        throw bad(e.message.replace(/^generate: /, ""), kind === "chat" ? "messages" : "prompt");
      }
      throw e;
    }
    const limit = bt.limit, maxPrompt = Math.min(o.maxPromptTokens ?? limit - 1, limit - 1);
    const P = prompt.length;
    if (P > maxPrompt || P + (maxTokens ?? 1) > limit) {
      throw bad(
        `This model's maximum context length is ${limit} tokens (prompts up to ${maxPrompt}). However, you requested ${
          P + (maxTokens ?? 1)
        } tokens (${P} in the ${kind === "chat" ? "messages" : "prompt"}, ${
          maxTokens ?? 1
        } in the completion).`,
        kind === "chat" ? "messages" : "prompt",
        "context_length_exceeded",
      );
    }
    // OpenAI's semantics: temperature 1 and top_p 1 unless given, no top-k, no repetition penalty.
    const t = temperature ?? 1;
    const options: GenerateOptions = {
      maxNewTokens: maxTokens ?? limit - P,
      doSample: t > 0,
      temperature: t,
      topP: topP ?? 1,
      topK: 0,
      minP: 0,
      repetitionPenalty: 1,
      stopStrings: stops,
      seed: seed === undefined ? undefined : Number(BigInt.asUintN(32, BigInt(seed))),
    };
    return { kind, prompt, options, stops, stream: b.stream === true, includeUsage };
  }

  function chatPrompt(messages: unknown, m: CausalLM): number[] {
    if (!Array.isArray(messages) || messages.length === 0) {
      throw bad("`messages` must be a non-empty array", "messages");
    }
    const out: ChatMessage[] = messages.map((x, i) => {
      if (typeof x !== "object" || x === null || typeof (x as ChatMessage).role !== "string") {
        throw bad(`messages[${i}] must be an object with a \`role\``, `messages[${i}]`);
      }
      const { role, content } = x as { role: string; content: unknown };
      let text: string;
      if (typeof content === "string") text = content;
      else if (content === null || content === undefined) text = "";
      else if (Array.isArray(content)) {
        text = content.map((p, j) => {
          if (
            typeof p !== "object" || p === null || p.type !== "text" || typeof p.text !== "string"
          ) {
            throw bad(
              `messages[${i}].content[${j}]: only text parts are supported`,
              `messages[${i}].content`,
            );
          }
          return p.text as string;
        }).join("");
      } else {throw bad(
          `messages[${i}].content must be a string or an array of text parts`,
          `messages[${i}].content`,
        );}
      return { role, content: text };
    });
    if (!m.tokenizer) {
      throw bad("this model has no tokenizer: send token ids to /v1/completions", "messages");
    }
    return promptRows(out, m.tokenizer)[0];
  }

  function textPrompt(p: unknown, m: CausalLM): number[] {
    if (Array.isArray(p) && p.length === 1 && (typeof p[0] === "string" || Array.isArray(p[0]))) {
      p = p[0];
    }
    if (typeof p === "string") {
      if (p.length === 0) throw bad("`prompt` is empty", "prompt");
      if (!m.tokenizer) throw bad("this model has no tokenizer: send token ids", "prompt");
      return promptRows(p, m.tokenizer)[0];
    }
    if (Array.isArray(p) && p.length > 0 && p.every((x) => Number.isInteger(x))) {
      const V = m.config.vocabSize;
      if (p.some((x) => x < 0 || x >= V)) {
        throw bad(`\`prompt\` token ids must be in [0, ${V})`, "prompt");
      }
      return p as number[];
    }
    throw bad(
      "`prompt` must be a string, an array of token ids, or an array of one of these",
      "prompt",
    );
  }

  /** The whole answer as one JSON body. */
  async function fullResponse(
    kind: "chat" | "text",
    job: Job,
    r: BatchRequest,
    id: string,
    done: (status: number, r?: BatchRequest) => void,
  ): Promise<Response> {
    const trim = new StopTrim(job.stops);
    let text = "";
    for await (const c of r) text += trim.push(c.text);
    text += trim.flush();
    if (r.finishReason === "cancelled") {
      if (closing) throw shuttingDown();
      done(499, r); // the client went away
      return new Response(null, { status: 499 });
    }
    const usage = usageOf(r);
    const choice = kind === "chat"
      ? {
        index: 0,
        message: { role: "assistant", content: text },
        logprobs: null,
        finish_reason: finishReason(r),
      }
      : { index: 0, text, logprobs: null, finish_reason: finishReason(r) };
    done(200, r);
    return Response.json({
      id: kind === "chat" ? `chatcmpl-${id}` : `cmpl-${id}`,
      object: kind === "chat" ? "chat.completion" : "text_completion",
      created: Math.floor(Date.now() / 1000),
      model: modelId,
      choices: [choice],
      usage,
    });
  }

  /** Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. */
  function streamResponse(
    kind: "chat" | "text",
    job: Job,
    r: BatchRequest,
    id: string,
    done: (status: number, r?: BatchRequest) => void,
  ): Response {
    const base = {
      id: kind === "chat" ? `chatcmpl-${id}` : `cmpl-${id}`,
      object: kind === "chat" ? "chat.completion.chunk" : "text_completion",
      created: Math.floor(Date.now() / 1000),
      model: modelId,
    };
    const chunk = (text: string | null, finish: string | null, first = false) => ({
      ...base,
      choices: [
        kind === "chat"
          ? {
            index: 0,
            delta: first
              ? { role: "assistant", content: "" }
              : text === null
              ? {}
              : { content: text },
            logprobs: null,
            finish_reason: finish,
          }
          : { index: 0, text: text ?? "", logprobs: null, finish_reason: finish },
      ],
    });
    const trim = new StopTrim(job.stops);
    let logged = false;
    const log1 = (status: number) => {
      if (!logged) done(status, r);
      logged = true;
    };
    const body = new ReadableStream<Uint8Array>({
      async start(controller) {
        const send = (x: unknown) =>
          controller.enqueue(encoder.encode(`data: ${JSON.stringify(x)}\n\n`));
        try {
          if (kind === "chat") send(chunk(null, null, true));
          for await (const c of r) {
            const text = trim.push(c.text) + (c.finishReason ? trim.flush() : "");
            if (text !== "") send(chunk(text, null));
          }
          if (r.finishReason === "cancelled") {
            if (closing) {
              const e = shuttingDown();
              send({ error: { message: e.message, type: e.type, code: e.code, param: null } });
              log1(503);
            } else log1(499);
            controller.close();
            return;
          }
          send(chunk(null, finishReason(r)));
          if (job.includeUsage) send({ ...base, choices: [], usage: usageOf(r) });
          controller.enqueue(encoder.encode("data: [DONE]\n\n"));
          controller.close();
          log1(200);
        } catch (e) {
          if (r.finishReason === "cancelled") return log1(499); // the client went away
          const err = internal(e);
          try {
            send({ error: { message: err.message, type: err.type, code: err.code, param: null } });
            controller.close();
          } catch { /* the stream is gone */ }
          log1(err.status);
        }
      },
      cancel() {
        r.cancel(); // the client disconnected: its row is freed before the next step
        log1(499);
      },
    });
    return new Response(body, {
      headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
    });
  }

  const usageOf = (r: BatchRequest) => ({
    prompt_tokens: r.promptTokens,
    completion_tokens: r.completionTokens,
    total_tokens: r.promptTokens + r.completionTokens,
  });

  const http = Deno.serve({
    hostname: o.hostname ?? "127.0.0.1",
    port: o.port ?? 8000,
    onListen: () => {}, // (the default prints to stdout)
  }, handler);
  const { hostname, port } = http.addr as Deno.NetAddr;
  const addr = { hostname, port };
  o.onListen?.(addr);
  let stopping: Promise<void> | null = null;
  const shutdown = () =>
    stopping ??= (async () => {
      closing = true;
      await (batcher as Batcher | null)?.close();
      await http.shutdown();
    })();
  return {
    addr,
    url: `http://${
      addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname
    }:${addr.port}`,
    finished: http.finished,
    stats: () => {
      const bt = batcher as Batcher | null;
      return {
        loading: lm === null && loadError === null,
        active: bt?.active ?? 0,
        queued: bt?.queued ?? 0,
        steps: bt?.stats.steps ?? 0,
        tokens: bt?.stats.tokens ?? 0,
        maxRowsInStep: bt?.stats.maxRowsInStep ?? 0,
      };
    },
    shutdown,
    [Symbol.asyncDispose]: shutdown,
  };
}

/** An error's name and message on one line, for the log. */
function errorText(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}`.replace(/\s+/g, " ") : String(e);
}

/** OpenAI's error body. */
function errorResponse(e: HttpError): Response {
  return Response.json(
    { error: { message: e.message, type: e.type, param: e.param, code: e.code } },
    { status: e.status, headers: e.headers },
  );
}
