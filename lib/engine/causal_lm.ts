/**
 * The public model: forward(), generate() and stream(), one call at a time, and close(). The
 * per-step loop is step.ts; the session KV cache and prefix reuse are prefix.ts.
 *
 * @module
 */
import type { Backend } from "../../ffi/backend.ts";
import type { ModelConfig } from "../config.ts";
import { InputError, InternalError, ModelClosedError } from "../errors.ts";
import type { Family } from "../models/family.ts";
import type { Profiler } from "../profiler.ts";
import {
  type GenerateInput,
  type GenerateOptions,
  type GenerationDefaults,
  leftPad,
  promptRows,
  type ResolvedGenerate,
  resolveGenerate,
  type TextCodec,
} from "./generate.ts";
import { KVCache, workBytes } from "./kv_cache.ts";
import type { Plan } from "./planner.ts";
import { SessionCache } from "./prefix.ts";
import { nextToken, Rng } from "./sampling.ts";
import { type PackedSeq, StepLoop } from "./step.ts";
import { ropeDependsOnLength, sequenceLimit } from "../rope.ts";
import type { LayerStore, TraceEvent } from "./store.ts";

/** Logits of a forward pass: [batch, seq, vocab] row-major, with their dims. */
export type Logits = Float32Array & { dims: [number, number, number] };

/** Options of {@link CausalLM.forward}. */
export interface ForwardOptions {
  /**
   * true: the tokens continue the model's KV cache (call `resetCache()` to start over);
   * false (default): a stateless pass over exactly these tokens.
   */
  useCache?: boolean;
  /** [batch][seq] of 1 (token) / 0 (padding), as transformers takes it; default all ones. */
  attentionMask?: number[][];
}

/** What stream() yields after each generated token of a row. */
export interface StreamChunk {
  /** The prompt (batch row) this token belongs to. */
  row: number;
  /** The new token. */
  tokenId: number;
  /** New text since the previous chunk of this row ("" while a character is incomplete). */
  text: string;
  /** Set on the row's last chunk: why it ended. */
  finishReason?: "eos" | "stop string" | "length";
}

/** Parts a CausalLM is built from (see AutoModel.fromPretrained). */
export interface CausalLMParts {
  config: ModelConfig;
  family: Family;
  backend: Backend;
  store: LayerStore;
  maxSeqLen: number;
  /** Names the model in messages. */
  source: string;
  tokenizer: TextCodec | null;
  generationDefaults: GenerationDefaults;
  profiler: Profiler;
  /** The attention implementation the backend runs. */
  attention: "flash" | "eager";
  trace?: TraceEvent[];
  /** The memory plan for a call needing `workBytes` besides weights (planner.ts). */
  planFor?: (workBytes: number) => Plan;
}

/**
 * The model held by the continuous-batching scheduler (lib/engine/batcher.ts) between
 * {@link openBatch} and `release()`: no other call runs meanwhile (they wait, as calls wait for
 * each other). Not part of the public API.
 */
export interface BatchAccess {
  /** The batch's KV cache: `batch` rows of maxSeqLen slots; each row keeps its own length. */
  readonly cache: KVCache;
  /** One pass over the layers for every sequence (see StepLoop.stepPacked). */
  step(seqs: readonly PackedSeq[]): Promise<Float32Array>;
  /** Empties row `slot` of the cache for its next sequence. */
  resetRow(slot: number): void;
  /** Frees the batch's cache and lets other calls run. Idempotent. */
  release(): void;
}

/** What batcher.ts may ask of a model besides its public API (by model, see constructor). */
interface BatchHooks {
  /** Whether packed steps give each row what it gets alone (see {@link packedStepsExact}). */
  exact: boolean;
  open(batch: number, stepRows: number): Promise<BatchAccess>;
}
const batchHooks = new WeakMap<CausalLM, BatchHooks>();

/**
 * Takes the model for a batch of up to `batch` sequences, stepping at most `stepRows` token rows
 * at once: waits for the running call, plans memory for that work as a batched generate() does
 * (the KV cache of every row at maxSeqLen, the activations and logits), then allocates the cache.
 */
export function openBatch(model: CausalLM, batch: number, stepRows: number): Promise<BatchAccess> {
  const hooks = batchHooks.get(model);
  if (!hooks) throw new InternalError("openBatch: not a CausalLM");
  return hooks.open(batch, stepRows);
}

/**
 * Whether sequences stepped together (and prompts fed in chunks) give exactly what each gives
 * alone: false when the rope table depends on the sequence length ("dynamic", "longrope") or the
 * family recomputes its cache past a length (Phi-3), since one table serves the whole step.
 */
export function packedStepsExact(model: CausalLM): boolean {
  return batchHooks.get(model)?.exact ?? false;
}

/** A decoder-only causal LM whose layers stream through a backend. */
export class CausalLM {
  /** The normalized config the model runs with. */
  readonly config: ModelConfig;
  /** The family implementation (lib/models/) that computes its layers. */
  readonly #family: Family;
  /** The native backend the layers run on. */
  readonly backend: Backend;
  /** Longest sequence (prompt + new tokens) the KV cache holds. */
  readonly maxSeqLen: number;
  /** The checkpoint's tokenizer (null when it ships none). */
  readonly tokenizer: TextCodec | null;
  /** generation_config.json over transformers' defaults. */
  readonly generationDefaults: GenerationDefaults;
  /** Where the time went, per category (see {@link Profiler.summary}). */
  readonly profiler: Profiler;
  /** The attention implementation that runs ("flash" or "eager"). */
  readonly activeAttentionImplementation: "flash" | "eager";
  readonly #store: LayerStore;
  readonly #source: string;
  readonly #planFor?: (workBytes: number) => Plan;
  /** The per-step loop: embed, layers, norm and head. */
  readonly #loop: StepLoop;
  /** The KV cache kept between calls and the ids it holds. */
  readonly #kv: SessionCache;
  /** Caches of open batches (openBatch), freed by close() if still open. */
  readonly #batchCaches = new Set<KVCache>();
  #busy: Promise<unknown> = Promise.resolve();
  #closed = false;

  /** Built by `AutoModel.fromPretrained`; not meant to be called directly. */
  constructor(p: CausalLMParts) {
    this.config = p.config;
    this.#family = p.family;
    this.backend = p.backend;
    this.maxSeqLen = p.maxSeqLen;
    this.tokenizer = p.tokenizer;
    this.generationDefaults = p.generationDefaults;
    this.profiler = p.profiler;
    this.activeAttentionImplementation = p.attention;
    this.#store = p.store;
    this.#source = p.source;
    this.#planFor = p.planFor;
    this.#loop = new StepLoop(p);
    this.#kv = new SessionCache(p.backend, p.config, p.maxSeqLen, p.source);
    batchHooks.set(this, {
      exact: !p.family.recomputeCache && !p.config.layerRopes.some(ropeDependsOnLength),
      open: (batch, stepRows) => this.#openBatch(batch, stepRows),
    });
  }

  /** See {@link openBatch}: holds the call lock until the access is released. */
  async #openBatch(batch: number, stepRows: number): Promise<BatchAccess> {
    const release = await this.#lock();
    let cache: KVCache;
    try {
      this.#kv.reset(); // the session cache's ids would no longer match after the batch
      this.#planWork(batch, this.maxSeqLen, stepRows, batch);
      cache = new KVCache(this.backend, this.config, batch, this.maxSeqLen);
      this.#batchCaches.add(cache);
    } catch (e) {
      release();
      throw e;
    }
    let open = true;
    return {
      cache,
      step: (seqs) => {
        if (!open) throw new InternalError("batch step after release");
        return this.#loop.stepPacked(seqs, cache);
      },
      resetRow: (slot) => {
        cache.valid[slot].fill(0);
        cache.nextPosition[slot] = 0;
      },
      release: () => {
        if (!open) return;
        open = false;
        this.#batchCaches.delete(cache);
        cache.free();
        release();
      },
    };
  }

  /** The memory plan in force: where each layer lives (see `rabbit info --memory`). */
  get plan(): Plan {
    return this.#store.plan;
  }

  /**
   * Re-plans memory for a call: its KV cache and activations (a larger batch or a longer
   * sequence leave less room for resident layers).
   */
  #planWork(batch: number, kvTokens: number, stepRows: number, logitRows: number): void {
    if (!this.#planFor) return;
    const bytes = workBytes(this.config, batch, kvTokens, stepRows, logitRows);
    this.#store.replan(this.#planFor(bytes));
  }

  /** How many decoder layers stay on the device between steps (the rest stream). */
  get residentLayers(): number {
    return this.#store.residentLayers;
  }

  /** Slots used in the model's KV cache (per sequence). */
  get cacheLength(): number {
    return this.#kv.length;
  }

  /** Empties the model's KV cache. */
  resetCache(): void {
    this.#kv.reset();
  }

  /** Waits for every earlier call: calls share scratch buffers and the cache. */
  async #lock(): Promise<() => void> {
    if (this.#closed) throw new ModelClosedError(this.#source);
    const prev = this.#busy;
    let release!: () => void;
    this.#busy = new Promise<void>((r) => release = r);
    await prev;
    return release;
  }

  async #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.#lock();
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** Logits for every position of `inputIds` ([batch][seq], equal lengths). */
  forward(inputIds: number[][], opts: ForwardOptions = {}): Promise<Logits> {
    return this.#exclusive(async () => {
      const { batch, seq } = this.#checkIds(inputIds, opts.attentionMask);
      const past = opts.useCache && this.#kv.batch === batch ? this.#kv.length : 0;
      this.#planWork(batch, past + seq, batch * seq, batch * seq);
      const cache = opts.useCache ? this.#kv.session(batch) : this.#kv.temp(batch, seq);
      if (opts.useCache) this.#kv.remember([]); // ids fed by hand are not tracked
      try {
        const logits = await this.#loop.step(inputIds, opts.attentionMask ?? null, cache, false);
        return Object.assign(logits, {
          dims: [batch, seq, this.config.vocabSize] as [number, number, number],
        });
      } finally {
        if (!opts.useCache) cache.free();
      }
    });
  }

  /**
   * Continues each prompt until EOS, a stop string or `maxNewTokens`; returns each row's prompt
   * followed by its new tokens. Prompts may differ in length (left-padded with an attention mask;
   * every row equals running it alone).
   *
   * @example Greedy ids, a text prompt, a chat
   * ```ts ignore
   * const [ids] = await model.generate([[1]], { maxNewTokens: 32 }); // BOS, greedy
   * const [row] = await model.generate("Once upon a time", { temperature: 0.7, seed: 1 });
   * console.log(model.tokenizer!.decode(row, { skipSpecialTokens: true }));
   * await model.generate([{ role: "user", content: "Hi!" }], { maxNewTokens: 64 });
   * ```
   */
  generate(input: GenerateInput, opts: GenerateOptions = {}): Promise<number[][]> {
    return this.#exclusive(async () => {
      const rows = promptRows(input, this.tokenizer);
      const out = rows.map((r) => [...r]);
      for await (const c of this.#decode(rows, resolveGenerate(opts, this.generationDefaults))) {
        out[c.row].push(c.tokenId);
      }
      return out;
    });
  }

  /**
   * Like generate(), yielding each new token with its text delta as soon as it exists
   * (`for await (const chunk of model.stream("Once upon a time"))`).
   */
  async *stream(input: GenerateInput, opts: GenerateOptions = {}): AsyncGenerator<StreamChunk> {
    const r = resolveGenerate(opts, this.generationDefaults);
    const rows = promptRows(input, this.tokenizer);
    const release = await this.#lock(); // held while the caller iterates; freed if it stops early
    try {
      yield* this.#decode(rows, r);
    } finally {
      release();
    }
  }

  /** The generation loop shared by generate() and stream(). */
  async *#decode(rows: number[][], o: ResolvedGenerate): AsyncGenerator<StreamChunk> {
    const B = rows.length, V = this.config.vocabSize;
    const longest = Math.max(...rows.map((r) => r.length));
    const limit = sequenceLimit(this.config, this.maxSeqLen);
    if (longest + o.maxNewTokens > limit) {
      const which = limit === this.maxSeqLen
        ? "maxSeqLen"
        : "the model's context (max_position_embeddings)";
      throw new InputError(
        `${this.#source}: prompt of ${longest} tokens + maxNewTokens ${o.maxNewTokens} exceeds ${which} ${limit}`,
      );
    }
    for (const [b, r] of rows.entries()) this.#checkIds([r], undefined, `prompt ${b}`);
    if (o.stopStrings.length > 0 && !this.tokenizer) {
      throw new InputError("generate: stopStrings need a tokenizer, and this model has none");
    }
    this.#planWork(B, longest + o.maxNewTokens, B * longest, B);
    const pad = this.tokenizer?.padTokenId ?? [...o.eos][0] ?? 0;
    const rng = new Rng(o.seed);
    const seqs = rows.map((r) => [...r]);
    const generated: number[][] = rows.map(() => []);
    // The prompt is context: a continuation's first token keeps its leading space.
    const decoders = rows.map((r) =>
      this.tokenizer?.decodeStream({ skipSpecialTokens: true, context: r })
    );
    const emitted = rows.map(() => "");
    const finished = new Array<boolean>(B).fill(false);
    const host = new Float32Array(B * V);
    // Prefix reuse: one prompt extending the ids already cached (a chat's earlier turns) feeds
    // only its new tokens.
    const reused = this.#kv.begin(rows, o.reuseCache && o.useCache);
    for (let step = 0; step < o.maxNewTokens; step++) {
      // Feed: the padded prompt first, then one token per row (finished rows get the pad id). A
      // family may ask to recompute the cache (Phi-3 longrope crossing its original length).
      const recompute = o.useCache && step > 0 &&
        (this.#family.recomputeCache?.(this.config, this.#kv.length, this.#kv.length + 1) ?? false);
      if (recompute) this.resetCache();
      const full = !o.useCache || step === 0 || recompute;
      const { ids, mask } = reused > 0 && step === 0 && !recompute
        ? { ids: [seqs[0].slice(reused)], mask: null }
        : full
        ? leftPad(seqs, pad)
        : { ids: seqs.map((s) => [s.at(-1)!]), mask: null };
      const cache = o.useCache ? this.#kv.session(B) : this.#kv.temp(B, ids[0].length);
      try {
        host.set(await this.#loop.step(ids, mask, cache, true));
      } catch (e) {
        this.resetCache(); // a step that failed half-way leaves the cache unusable
        throw e;
      } finally {
        if (!o.useCache) cache.free();
      }
      this.#kv.remember(o.useCache && B === 1 ? seqs[0] : []);
      const t0 = performance.now();
      const chunks: StreamChunk[] = [];
      for (let b = 0; b < B; b++) {
        if (finished[b]) {
          seqs[b].push(pad);
          continue;
        }
        const token = nextToken(host.subarray(b * V, (b + 1) * V), seqs[b], o, rng);
        seqs[b].push(token);
        generated[b].push(token);
        const chunk: StreamChunk = { row: b, tokenId: token, text: decoders[b]?.push(token) ?? "" };
        emitted[b] += chunk.text;
        if (o.eos.has(token)) chunk.finishReason = "eos";
        else if (o.stopStrings.some((s) => emitted[b].includes(s))) {
          chunk.finishReason = "stop string";
        } else if (generated[b].length === o.maxNewTokens) chunk.finishReason = "length";
        if (chunk.finishReason) chunk.text += decoders[b]?.flush() ?? "";
        if (chunk.finishReason) finished[b] = true;
        chunks.push(chunk);
      }
      this.profiler.add("sampling", performance.now() - t0);
      yield* chunks;
      if (finished.every(Boolean)) break;
    }
  }

  #checkIds(ids: number[][], mask?: number[][], what = "inputIds"): { batch: number; seq: number } {
    if (!Array.isArray(ids) || ids.length === 0 || !Array.isArray(ids[0]) || ids[0].length === 0) {
      throw new InputError(`${what}: expected a non-empty [batch][seq] array of token ids`);
    }
    const seq = ids[0].length, V = this.config.vocabSize;
    for (const [b, row] of ids.entries()) {
      if (row.length !== seq) {
        throw new InputError(
          `${what}: row ${b} has ${row.length} tokens, row 0 has ${seq}; rows must be equal`,
        );
      }
      for (const [j, id] of row.entries()) {
        if (!Number.isInteger(id) || id < 0 || id >= V) {
          throw new InputError(`${what}[${b}][${j}] = ${id} is not a token id in [0, ${V})`);
        }
      }
      if (mask && (mask[b]?.length !== seq || mask[b].some((m) => m !== 0 && m !== 1))) {
        throw new InputError(`attentionMask: row ${b} must be ${seq} values of 0 or 1`);
      }
    }
    if (mask && mask.length !== ids.length) {
      throw new InputError(`attentionMask: ${mask.length} rows for ${ids.length} sequences`);
    }
    return { batch: ids.length, seq };
  }

  /** Frees the device memory and the backend. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#kv.free();
    for (const c of this.#batchCaches) c.free();
    this.#batchCaches.clear();
    this.#loop.free();
    this.#store.close();
    const leaked = this.backend.stats().liveAllocs;
    this.backend.close();
    if (leaked !== 0) throw new InternalError(`${leaked} device allocations leaked at close`);
  }

  /** `using model = ...`: {@link CausalLM.close} at the end of the scope. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** `await using model = ...`: waits for the running call, then {@link CausalLM.close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#closed) return;
    (await this.#lock())();
    this.close();
  }
}
