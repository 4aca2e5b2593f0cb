/**
 * Continuous batching: the scheduler behind `rabbit serve` (lib/serve.ts). Requests wait in a
 * bounded FIFO queue, join the running batch at the next step when a row is free, and leave it as
 * soon as they finish or are cancelled (their row is emptied for the next one). Each step is ONE
 * pass over the layers for every active row (StepLoop.stepPacked): a decoding row feeds its last
 * token, a newcomer a chunk of its prompt, at most `prefillChunk` prompt tokens per step in all
 * (oldest first), so a long prompt never stalls the decoding rows for more than one step's budget.
 * Rows are packed one after another without padding, each continuing its own row of one KV cache
 * of `maxBatch` rows × maxSeqLen, with its own sampling settings, seeded generator, stop strings,
 * token limit and EOS ids: each request gets exactly what `model.generate` gives it alone.
 *
 * While it has work the batcher holds the model (openBatch): other calls on the model wait until
 * it is idle, and it waits for them. A model whose rope depends on the sequence length (dynamic,
 * longrope) cannot share a step exactly (one rope table per step): its requests run one at a time
 * through `model.stream` instead.
 *
 * @module
 */
import { InputError, QueueFullError } from "../errors.ts";
import {
  type BatchAccess,
  type CausalLM,
  openBatch,
  packedStepsExact,
  type StreamChunk,
} from "./causal_lm.ts";
import { type GenerateOptions, type ResolvedGenerate, resolveGenerate } from "./generate.ts";
import { nextToken, Rng } from "./sampling.ts";
import type { PackedSeq } from "./step.ts";
import { sequenceLimit } from "../rope.ts";

/** Options of a {@link Batcher}. */
export interface BatcherOptions {
  /** Requests decoding at once (rows of the batch's KV cache). Default 16. */
  maxBatch?: number;
  /** Requests waiting for a row; one more is refused with a QueueFullError. Default 64. */
  maxQueue?: number;
  /** Prompt tokens fed per step, newcomers together (longer prompts go in chunks). Default 256. */
  prefillChunk?: number;
}

/** Why a request ended: the model's EOS, one of its stop strings, its token limit, or cancel(). */
export type FinishReason = NonNullable<StreamChunk["finishReason"]> | "cancelled";

/** Checks a {@link BatcherOptions} and fills in its defaults. */
export function batcherOptions(opts: BatcherOptions): Required<BatcherOptions> {
  const int = (v: number | undefined, d: number, what: string) => {
    const n = v ?? d;
    if (!Number.isInteger(n) || n < 1) {
      throw new InputError(`${what} must be a positive integer, got ${v}`);
    }
    return n;
  };
  return {
    maxBatch: int(opts.maxBatch, 16, "maxBatch"),
    maxQueue: int(opts.maxQueue, 64, "maxQueue"),
    prefillChunk: int(opts.prefillChunk, 256, "prefillChunk"),
  };
}

/** A queued or running request: iterate it for its chunks (each new token and its text). */
export class BatchRequest implements AsyncIterable<StreamChunk> {
  /** Prompt tokens. */
  readonly promptTokens: number;
  /** Tokens generated so far. */
  completionTokens = 0;
  /** Set once the request ended. */
  finishReason: FinishReason | null = null;
  readonly #chunks: StreamChunk[] = [];
  #ended = false;
  #error: unknown = null;
  #wake: (() => void) | null = null;
  #onCancel: (() => void) | null = null;
  #onEnd: (() => void) | null = null;

  /** @internal made by {@link Batcher.submit} */
  constructor(
    readonly prompt: readonly number[],
    readonly options: ResolvedGenerate,
  ) {
    this.promptTokens = prompt.length;
  }

  /** Whether it ended (finished, failed or cancelled). */
  get ended(): boolean {
    return this.#ended;
  }

  /** Stops it: it leaves the queue at once, or the batch before the next step (its row freed). */
  cancel(): void {
    if (this.#ended) return;
    this.finishReason = "cancelled";
    this.#end();
    this.#onCancel?.();
  }

  /** @internal the batcher's side: called on cancel() */
  set onCancel(f: () => void) {
    this.#onCancel = f;
  }

  /** @internal the batcher's side: called once it ended, however */
  set onEnd(f: () => void) {
    this.#onEnd = f;
  }

  /** @internal a chunk from the batcher */
  push(c: StreamChunk): void {
    if (this.#ended) return;
    this.completionTokens++;
    this.#chunks.push(c);
    if (c.finishReason) {
      this.finishReason = c.finishReason;
      this.#end();
    }
    this.#notify();
  }

  /** @internal the request failed (a step threw) */
  fail(e: unknown): void {
    if (this.#ended) return;
    this.#error = e;
    this.#end();
  }

  #end(): void {
    this.#ended = true;
    this.#notify();
    this.#onEnd?.();
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  /** The chunks as they come; stopping early cancels the request. */
  async *[Symbol.asyncIterator](): AsyncGenerator<StreamChunk> {
    try {
      for (;;) {
        while (this.#chunks.length > 0) yield this.#chunks.shift()!;
        if (this.#error !== null) throw this.#error;
        if (this.#ended) return;
        await new Promise<void>((r) => this.#wake = r);
      }
    } finally {
      this.cancel();
    }
  }
}

/** A request holding a row of the batch. */
interface Row {
  req: BatchRequest;
  slot: number;
  /** Prompt tokens in the cache so far (prefill is done when all are). */
  fed: number;
  /** Slots of the row used in the cache. */
  cached: number;
  /** Prompt and generated ids (the repetition penalty's history; the last one is fed next). */
  seq: number[];
  rng: Rng;
  decoder?: { push(id: number): string; flush(): string };
  emitted: string;
}

/** The continuous-batching scheduler over one model (see the module doc). */
export class Batcher {
  readonly #model: CausalLM;
  /** Requests decoding at once. */
  readonly maxBatch: number;
  /** Requests that may wait for a row. */
  readonly maxQueue: number;
  /** Prompt tokens fed per step. */
  readonly prefillChunk: number;
  /** Longest sequence (prompt + new tokens) a request may reach. */
  readonly limit: number;
  readonly #exact: boolean;
  readonly #queue: BatchRequest[] = [];
  /** Active rows in order of admission. */
  readonly #rows: Row[] = [];
  /** The scheduling loop's promise (close() waits for it), and whether one runs. */
  #running: Promise<void> = Promise.resolve();
  #looping = false;
  /** The request running alone (models whose steps cannot be shared). */
  #serial: BatchRequest | null = null;
  #closed = false;
  #lastYield = 0;
  /** Steps run and token rows fed (for tests and stats). */
  readonly stats = { steps: 0, tokens: 0, maxRowsInStep: 0 };

  constructor(model: CausalLM, opts: BatcherOptions = {}) {
    this.#model = model;
    ({
      maxBatch: this.maxBatch,
      maxQueue: this.maxQueue,
      prefillChunk: this.prefillChunk,
    } = batcherOptions(opts));
    this.limit = sequenceLimit(model.config, model.maxSeqLen);
    this.#exact = packedStepsExact(model);
  }

  /** Requests holding a row. */
  get active(): number {
    return this.#rows.length + (this.#serial ? 1 : 0);
  }

  /** Requests waiting for a row. */
  get queued(): number {
    return this.#queue.length;
  }

  /**
   * Queues a request for `prompt` (token ids) with generate()'s options (`maxNewTokens`,
   * sampling, `seed`, `stopStrings`, `eosTokenId`; caching options do not apply). Throws an
   * InputError for bad input (ids, options, prompt + maxNewTokens past the context) and a
   * QueueFullError when `maxQueue` requests wait already. `signal` cancels it.
   */
  submit(
    prompt: readonly number[],
    opts: GenerateOptions = {},
    signal?: AbortSignal,
  ): BatchRequest {
    if (this.#closed) throw new InputError("Batcher: closed");
    const V = this.#model.config.vocabSize;
    if (!Array.isArray(prompt) || prompt.length === 0) {
      throw new InputError("Batcher: the prompt must be a non-empty array of token ids");
    }
    for (const [j, id] of prompt.entries()) {
      if (!Number.isInteger(id) || id < 0 || id >= V) {
        throw new InputError(`prompt[${j}] = ${id} is not a token id in [0, ${V})`);
      }
    }
    const o = resolveGenerate(opts, this.#model.generationDefaults);
    if (prompt.length + o.maxNewTokens > this.limit) {
      throw new InputError(
        `prompt of ${prompt.length} tokens + maxNewTokens ${o.maxNewTokens} exceeds the context ${this.limit}`,
      );
    }
    if (o.stopStrings.length > 0 && !this.#model.tokenizer) {
      throw new InputError("generate: stopStrings need a tokenizer, and this model has none");
    }
    if (this.#queue.length >= this.maxQueue) throw new QueueFullError(this.#queue.length);
    const req = new BatchRequest([...prompt], o);
    req.onCancel = () => {
      const i = this.#queue.indexOf(req);
      if (i >= 0) this.#queue.splice(i, 1); // a running one leaves before the next step
    };
    if (signal?.aborted) req.cancel();
    else {
      if (signal) {
        const stop = () => req.cancel();
        signal.addEventListener("abort", stop, { once: true });
        req.onEnd = () => signal.removeEventListener("abort", stop);
      }
      this.#queue.push(req);
      if (!this.#looping) {
        this.#looping = true;
        this.#running = this.#run();
      }
    }
    return req;
  }

  /** Refuses new requests, cancels the queued and running ones and waits for the loop to stop. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const r of [...this.#queue, ...this.#rows.map((x) => x.req)]) r.cancel();
    this.#serial?.cancel();
    await this.#running;
  }

  /**
   * The scheduling loop: runs while requests wait or decode. Each loop clears `#looping` in the
   * same tick as it finds no work (no await between), so a request submitted after that starts a
   * new loop rather than waiting on one that is ending.
   */
  async #run(): Promise<void> {
    await Promise.resolve(); // let submit() return first
    if (this.#exact) await this.#runBatched();
    else await this.#runSerial();
  }

  /** Packed steps over every active row. */
  async #runBatched(): Promise<void> {
    let access: BatchAccess | null = null;
    try {
      while (this.#queue.length > 0 || this.#rows.length > 0) {
        if (!access) {
          try {
            access = await openBatch(this.#model, this.maxBatch, this.maxBatch + this.prefillChunk);
          } catch (e) {
            for (const r of this.#queue.splice(0)) r.fail(e);
            return;
          }
        }
        this.#admit(access);
        this.#dropEnded(access);
        if (this.#rows.length === 0) continue;
        try {
          await this.#step(access);
        } catch (e) {
          // A step that failed half-way leaves the cache unusable: every row fails with it.
          for (const r of this.#rows.splice(0)) r.req.fail(e);
          access.release();
          access = null;
        }
        await this.#yield();
      }
    } finally {
      access?.release();
      this.#looping = false;
    }
  }

  /** Moves waiting requests into free rows, oldest first. */
  #admit(access: BatchAccess): void {
    const used = new Set(this.#rows.map((r) => r.slot));
    for (let slot = 0; slot < this.maxBatch && this.#queue.length > 0; slot++) {
      if (used.has(slot)) continue;
      const req = this.#queue.shift()!;
      access.resetRow(slot);
      this.#rows.push({
        req,
        slot,
        fed: 0,
        cached: 0,
        seq: [...req.prompt],
        rng: new Rng(req.options.seed),
        // The prompt is context: a continuation's first token keeps its leading space.
        decoder: this.#model.tokenizer?.decodeStream({
          skipSpecialTokens: true,
          context: req.prompt,
        }),
        emitted: "",
      });
    }
  }

  /** Rows whose request ended (finished or cancelled) leave; their cache rows are emptied. */
  #dropEnded(access: BatchAccess): void {
    for (let i = this.#rows.length - 1; i >= 0; i--) {
      if (!this.#rows[i].req.ended) continue;
      access.resetRow(this.#rows[i].slot);
      this.#rows.splice(i, 1);
    }
  }

  /** One pass for every active row, then each finished prompt or decoding row samples a token. */
  async #step(access: BatchAccess): Promise<void> {
    const seqs: PackedSeq[] = [], stepped: Row[] = [];
    for (const r of this.#rows) {
      if (r.fed < r.req.prompt.length) continue;
      seqs.push({ slot: r.slot, ids: [r.seq.at(-1)!], start: r.cached });
      stepped.push(r);
    }
    let budget = this.prefillChunk;
    for (const r of this.#rows) {
      const left = r.req.prompt.length - r.fed;
      if (left === 0 || budget === 0) continue;
      const n = Math.min(left, budget);
      seqs.push({ slot: r.slot, ids: r.req.prompt.slice(r.fed, r.fed + n), start: r.cached });
      stepped.push(r);
      budget -= n;
    }
    const logits = await access.step(seqs);
    this.stats.steps++;
    this.stats.tokens += seqs.reduce((n, s) => n + s.ids.length, 0);
    this.stats.maxRowsInStep = Math.max(this.stats.maxRowsInStep, seqs.length);
    const V = this.#model.config.vocabSize;
    const t0 = performance.now();
    for (const [i, r] of stepped.entries()) {
      const n = seqs[i].ids.length;
      r.cached += n;
      if (r.fed < r.req.prompt.length) {
        r.fed += n;
        if (r.fed < r.req.prompt.length) continue; // more prompt to feed
      }
      if (r.req.ended) continue; // cancelled during the step
      this.#sample(r, logits.subarray(i * V, (i + 1) * V));
    }
    this.#model.profiler.add("sampling", performance.now() - t0);
  }

  /** The row's next token, its text and whether it ends the request (as generate() decides). */
  #sample(r: Row, logits: Float32Array): void {
    const o = r.req.options;
    const token = nextToken(logits, r.seq, o, r.rng);
    r.seq.push(token);
    const chunk: StreamChunk = { row: r.slot, tokenId: token, text: r.decoder?.push(token) ?? "" };
    r.emitted += chunk.text;
    if (o.eos.has(token)) chunk.finishReason = "eos";
    else if (o.stopStrings.some((s) => r.emitted.includes(s))) chunk.finishReason = "stop string";
    else if (r.req.completionTokens + 1 === o.maxNewTokens) chunk.finishReason = "length";
    if (chunk.finishReason) chunk.text += r.decoder?.flush() ?? "";
    r.req.push(chunk);
  }

  /**
   * Lets the event loop run (new requests arrive, streamed chunks go out) at least every few
   * milliseconds; a timer is the only wait that lets socket I/O in, and it costs ~1–2 ms.
   */
  async #yield(): Promise<void> {
    const now = performance.now();
    if (now - this.#lastYield < 4) return;
    await new Promise((r) => setTimeout(r, 0));
    this.#lastYield = performance.now();
  }

  /** Models whose steps cannot be shared: one request at a time through model.stream. */
  async #runSerial(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const req = this.#queue.shift()!;
        if (req.ended) continue;
        this.#serial = req;
        const o = req.options;
        try {
          for await (
            const c of this.#model.stream([[...req.prompt]], {
              maxNewTokens: o.maxNewTokens,
              doSample: o.doSample,
              temperature: o.temperature,
              topK: o.topK,
              topP: o.topP,
              minP: o.minP,
              repetitionPenalty: o.repetitionPenalty,
              seed: o.seed,
              stopStrings: o.stopStrings,
              eosTokenId: [...o.eos],
            })
          ) {
            req.push(c);
            if (req.ended) break;
          }
        } catch (e) {
          req.fail(e);
        } finally {
          this.#serial = null;
        }
        await this.#yield();
      }
    } finally {
      this.#looping = false;
    }
  }
}
