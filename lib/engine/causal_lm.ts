/**
 * The streaming loop (ARCHITECTURE.md "One forward pass"), forward(), generate() and stream().
 *
 * @module
 */
import type { Backend, DevPtr } from "../../ffi/backend.ts";
import type { ModelConfig, RopeConfig } from "../config.ts";
import { InputError, InternalError, ModelClosedError, NonFiniteError } from "../errors.ts";
import type { AttentionCall, Family, LayerContext, PartWeights } from "../models/family.ts";
import type { ProfileCategory, Profiler } from "../profiler.ts";
import { ropeDependsOnLength, type RopeTable, ropeTable } from "../rope.ts";
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
import { nextToken, Rng } from "./sampling.ts";
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

/** Device scratch buffers by name, grown only when a step needs more. */
class Scratch {
  readonly #bufs = new Map<string, { ptr: DevPtr; floats: number }>();
  constructor(private readonly be: Backend) {}

  get(name: string, floats: number): DevPtr {
    const b = this.#bufs.get(name);
    if (b && b.floats >= floats) return b.ptr;
    if (b) this.be.free(b.ptr);
    const size = Math.max(floats, (b?.floats ?? 0) * 2);
    const ptr = this.be.alloc(size * 4);
    this.#bufs.set(name, { ptr, floats: size });
    return ptr;
  }

  free(): void {
    for (const b of this.#bufs.values()) this.be.free(b.ptr);
    this.#bufs.clear();
  }
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

/** Checks a stage's output on the host; used only to find where a non-finite value came from. */
type Probe = (stage: string, layer: number | null, x: DevPtr, floats: number) => void;

/** A decoder-only causal LM whose layers stream through a backend. */
export class CausalLM {
  readonly config: ModelConfig;
  readonly family: Family;
  readonly backend: Backend;
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
  readonly #scratch: Scratch;
  readonly #source: string;
  readonly #trace?: TraceEvent[];
  readonly #planFor?: (workBytes: number) => Plan;
  #cache: KVCache | null = null;
  /** Backend timing marks of the running step. */
  readonly #marks: { category: ProfileCategory; layer: number | null; from: number; to: number }[] =
    [];
  /** The token ids whose K/V the session cache holds (one sequence), for prefix reuse. */
  #cachedIds: number[] = [];
  /** Rope tables by rope config (one per distinct config; "dynamic" ones per length). */
  readonly #ropes = new Map<RopeConfig, { seqLen: number; table: RopeTable }>();
  #busy: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(p: CausalLMParts) {
    this.config = p.config;
    this.family = p.family;
    this.backend = p.backend;
    this.maxSeqLen = p.maxSeqLen;
    this.tokenizer = p.tokenizer;
    this.generationDefaults = p.generationDefaults;
    this.profiler = p.profiler;
    this.activeAttentionImplementation = p.attention;
    this.#store = p.store;
    this.#source = p.source;
    this.#trace = p.trace;
    this.#planFor = p.planFor;
    this.#scratch = new Scratch(p.backend);
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
    return this.#cache?.length ?? 0;
  }

  /** Empties the model's KV cache. */
  resetCache(): void {
    this.#cache?.free();
    this.#cache = null;
    this.#cachedIds = [];
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
      const past = opts.useCache && this.#cache?.batch === batch ? this.#cache.length : 0;
      this.#planWork(batch, past + seq, batch * seq, batch * seq);
      const cache = opts.useCache ? this.#sessionCache(batch) : this.#tempCache(batch, seq);
      if (opts.useCache) this.#cachedIds = []; // ids fed by hand are not tracked
      try {
        const logits = await this.#checkedStep(inputIds, opts.attentionMask ?? null, cache, false);
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
    const limit = Math.min(this.maxSeqLen, this.config.maxPositionEmbeddings);
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
    const decoders = rows.map(() => this.tokenizer?.decodeStream({ skipSpecialTokens: true }));
    const emitted = rows.map(() => "");
    const finished = new Array<boolean>(B).fill(false);
    const host = new Float32Array(B * V);
    // Prefix reuse: one prompt extending the ids already cached (a chat's earlier turns) feeds
    // only its new tokens.
    const cached = this.#cachedIds;
    const reuse = o.reuseCache && o.useCache && B === 1 && this.#cache?.batch === 1 &&
      cached.length > 0 && cached.length < rows[0].length &&
      cached.every((t, i) => rows[0][i] === t);
    if (!reuse) this.resetCache();
    for (let step = 0; step < o.maxNewTokens; step++) {
      // Feed: the padded prompt first, then one token per row (finished rows get the pad id). A
      // family may ask to recompute the cache (Phi-3 longrope crossing its original length).
      const recompute = o.useCache && step > 0 &&
        (this.family.recomputeCache?.(
          this.config,
          this.#cache?.length ?? 0,
          this.#cache!.length + 1,
        ) ??
          false);
      if (recompute) this.resetCache();
      const full = !o.useCache || step === 0 || recompute;
      const { ids, mask } = reuse && step === 0 && !recompute
        ? { ids: [seqs[0].slice(cached.length)], mask: null }
        : full
        ? leftPad(seqs, pad)
        : { ids: seqs.map((s) => [s.at(-1)!]), mask: null };
      const cache = o.useCache ? this.#sessionCache(B) : this.#tempCache(B, ids[0].length);
      try {
        host.set(await this.#checkedStep(ids, mask, cache, true));
      } catch (e) {
        this.resetCache(); // a step that failed half-way leaves the cache unusable
        throw e;
      } finally {
        if (!o.useCache) cache.free();
      }
      this.#cachedIds = o.useCache && B === 1 ? [...seqs[0]] : [];
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

  #sessionCache(batch: number): KVCache {
    if (this.#cache && this.#cache.batch !== batch) {
      if (this.#cache.length > 0) {
        throw new InputError(
          `the KV cache holds ${this.#cache.batch} sequences, the input has ${batch}; call resetCache() first`,
        );
      }
      this.resetCache();
    }
    this.#cache ??= new KVCache(this.backend, this.config, batch, this.maxSeqLen);
    return this.#cache;
  }

  #tempCache(batch: number, seq: number): KVCache {
    if (seq > this.maxSeqLen) {
      throw new InputError(`${this.#source}: ${seq} tokens exceed maxSeqLen ${this.maxSeqLen}`);
    }
    return new KVCache(this.backend, this.config, batch, seq);
  }

  #ropeFor(rope: RopeConfig, seqLen: number): RopeTable {
    const have = this.#ropes.get(rope);
    if (have && (!ropeDependsOnLength(rope) || have.seqLen === seqLen)) return have.table;
    const shape = {
      headDim: this.config.ropeHeadDim ?? this.config.headDim,
      maxPositionEmbeddings: this.config.maxPositionEmbeddings,
    };
    const table = ropeTable(rope, shape, seqLen, this.#source);
    this.#ropes.set(rope, { seqLen, table });
    return table;
  }

  /** Turns the step's backend marks into profiler entries (the step has completed). */
  #resolveMarks(): void {
    for (const m of this.#marks) {
      this.profiler.add(m.category, this.backend.elapsedMs(m.from, m.to), m.layer);
    }
    this.#marks.length = 0;
    this.backend.resetMarks();
  }

  /**
   * One step, its logits on the host ([batch, seq, vocab] or [batch, vocab] when lastOnly),
   * checked for NaN/Inf; a non-finite result is replayed stage by stage to name where it began.
   */
  async #checkedStep(
    ids: number[][],
    mask: number[][] | null,
    cache: KVCache,
    lastOnly: boolean,
  ): Promise<Float32Array> {
    const past = cache.length, pos = cache.nextPosition.slice();
    const rows = lastOnly ? ids.length : ids.length * ids[0].length;
    this.#marks.length = 0; // a failed step may have left some
    this.backend.resetMarks();
    const logits = await this.#step(ids, mask, cache, lastOnly);
    const t0 = performance.now();
    const host = new Float32Array(rows * this.config.vocabSize);
    this.backend.download(host, logits);
    this.profiler.add("logits download", performance.now() - t0);
    this.#resolveMarks();
    this.profiler.step(ids.length * ids[0].length);
    if (host.every(Number.isFinite)) return host;
    cache.length = past;
    cache.nextPosition.set(pos);
    let found: NonFiniteError | null = null;
    await this.#step(ids, mask, cache, lastOnly, (stage, layer, x, floats) => {
      if (found) return;
      const v = new Float32Array(floats);
      this.backend.download(v, x);
      if (!v.every(Number.isFinite)) found = new NonFiniteError(stage, layer, this.#source);
    });
    throw found ?? new NonFiniteError("lm_head", null, this.#source);
  }

  /**
   * One pass of the streaming loop over `ids` appended to `cache`. Returns device logits:
   * [batch, seq, vocab], or [batch, vocab] for the last position only.
   */
  async #step(
    ids: number[][],
    mask: number[][] | null,
    cache: KVCache,
    lastOnly: boolean,
    probe?: Probe,
  ): Promise<DevPtr> {
    const be = this.backend, cfg = this.config;
    const B = ids.length, S = ids[0].length, T = B * S, D = cfg.hiddenSize, V = cfg.vocabSize;
    const past = cache.length;
    if (past + S > cache.capacity) {
      throw new InputError(
        `${this.#source}: ${past} cached + ${S} new tokens exceed maxSeqLen ${cache.capacity}`,
      );
    }
    // Positions count real tokens only (left padding does not shift them), as transformers does.
    const positions = new Int32Array(T);
    for (let b = 0; b < B; b++) {
      for (let j = 0; j < S; j++) {
        const real = mask ? mask[b][j] === 1 : true;
        cache.valid[b][past + j] = real ? 1 : 0;
        positions[b * S + j] = real ? cache.nextPosition[b]++ : 0;
      }
    }
    const seqLen = Math.max(...cache.nextPosition);

    // Compute is timed with backend marks (device events on a GPU), resolved after the step.
    const marks = this.#marks;
    let m0 = be.mark();
    const x = this.#scratch.get("x", T * D);
    const embed = this.#store.part("embed").get("weight");
    be.embedding(x, embed.ptr, embed.dtype, Int32Array.from(ids.flat()), D, V);
    const embedScale = this.family.embedScale?.(cfg);
    if (embedScale !== undefined) be.scale(x, x, embedScale, T * D);
    probe?.("embedding", null, x, T * D);
    marks.push({ category: "embed + head", layer: null, from: m0, to: be.mark() });

    const ctx: LayerContext = {
      be,
      cfg,
      layer: 0,
      T,
      x,
      positions,
      rope: this.#ropeFor(cfg.layerRopes[0], seqLen),
      buf: (name, floats) => this.#scratch.get(name, floats),
      attention: (call) => this.#attend(ctx.layer, call, cache, B, S),
      onRoute: this.#trace &&
        ((experts) =>
          this.#trace!.push({ kind: "route", part: `layer.${ctx.layer}`, experts: [...experts] })),
    };
    const n = this.#store.numLayers;
    for (let layer = 0; layer < n; layer++) {
      const stored = await this.#store.acquire(layer);
      this.#store.prefetchAfter(layer);
      const id = `layer.${layer}`;
      this.#trace?.push({ kind: "compute-start", part: id });
      m0 = be.mark();
      // Waiting for on-demand groups (routed experts) is read time, not this layer's compute.
      const w: PartWeights = {
        get: stored.get,
        opt: stored.opt,
        prefetch: stored.prefetch,
        load: async (groups) => {
          marks.push({ category: "layers", layer, from: m0, to: be.mark() });
          try {
            await stored.load(groups);
          } finally {
            m0 = be.mark();
          }
        },
      };
      ctx.layer = layer;
      ctx.rope = this.#ropeFor(cfg.layerRopes[layer], seqLen);
      try {
        await this.family.forwardLayer(ctx, w);
      } finally {
        this.#store.release(layer); // a failed layer must not keep its slot
      }
      marks.push({ category: "layers", layer, from: m0, to: be.mark() });
      this.#trace?.push({ kind: "compute-end", part: id });
      probe?.(`layer ${layer}`, layer, x, T * D);
    }
    cache.length = past + S;

    m0 = be.mark();
    let rows = T, h = x;
    if (lastOnly && S > 1) {
      rows = B;
      h = this.#scratch.get("last", B * D);
      for (let b = 0; b < B; b++) {
        be.copy(be.view(h, b * D * 4), be.view(x, ((b + 1) * S - 1) * D * 4), D * 4);
      }
    } else if (lastOnly) rows = B;
    const normed = this.#scratch.get("h", rows * D);
    const normPart = this.#store.part("norm");
    if (this.family.finalNorm) this.family.finalNorm(be, cfg, normPart, normed, h, rows);
    else {
      const norm = normPart.get("weight");
      be.rmsnorm(normed, h, norm.ptr, norm.dtype, rows, D, cfg.rmsNormEps);
    }
    probe?.("final norm", null, normed, rows * D);
    const headPart = this.#head(), head = headPart.get("weight");
    const logits = this.#scratch.get("logits", rows * V);
    const bias = this.config.tieWordEmbeddings ? null : headPart.opt("bias")?.ptr ?? null;
    be.matmul(logits, normed, head.ptr, head.dtype, bias, rows, V, D);
    if (cfg.finalLogitSoftcap > 0) be.softcap(logits, logits, cfg.finalLogitSoftcap, rows * V);
    marks.push({ category: "embed + head", layer: null, from: m0, to: be.mark() });
    return logits;
  }

  /** lm_head, or the embedding itself when tied (one copy on the device). */
  #head(): PartWeights {
    return this.#store.part(this.config.tieWordEmbeddings ? "embed" : "lm_head");
  }

  /** Appends this step's K/V to the cache and runs attention for each sequence. */
  #attend(layer: number, c: AttentionCall, cache: KVCache, B: number, S: number): void {
    const be = this.backend, cfg = this.config;
    const kvDim = cache.kvDim, qDim = cfg.numHeads * cfg.headDim;
    if (c.kvStride !== kvDim) {
      throw new InputError(`layer ${layer}: attention needs contiguous k/v rows (stride ${kvDim})`);
    }
    const { k, v } = cache.layer(layer);
    const past = cache.length;
    for (let b = 0; b < B; b++) {
      const rowK = be.view(k, cache.offset(b, 0)), rowV = be.view(v, cache.offset(b, 0));
      const src = b * S * kvDim * 4, dst = cache.offset(b, past), bytes = S * kvDim * 4;
      be.copy(be.view(k, dst), be.view(c.k, src), bytes);
      be.copy(be.view(v, dst), be.view(c.v, src), bytes);
      be.attention({
        out: be.view(c.out, b * S * qDim * 4),
        q: be.view(c.q, b * S * c.qStride * 4),
        qStride: c.qStride,
        k: rowK,
        v: rowV,
        kvStride: kvDim,
        nQ: S,
        qStart: past,
        kvLen: past + S,
        nHeads: cfg.numHeads,
        nKvHeads: cfg.numKvHeads,
        headDim: cfg.headDim,
        scale: c.scale,
        window: cfg.layerWindows[layer],
        softcap: c.softcap,
        kvValid: cache.valid[b].subarray(0, past + S),
      });
    }
  }

  /** Frees the device memory and the backend. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#cache?.free();
    this.#scratch.free();
    this.#store.close();
    const leaked = this.backend.stats().liveAllocs;
    this.backend.close();
    if (leaked !== 0) throw new InternalError(`${leaked} device allocations leaked at close`);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#closed) return;
    (await this.#lock())();
    this.close();
  }
}
