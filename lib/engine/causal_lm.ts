/**
 * The streaming loop (DESIGN.md "one forward pass"), forward() and greedy generate().
 *
 * @module
 */
import type { Backend, DevPtr } from "../../ffi/backend.ts";
import type { ModelConfig } from "../config.ts";
import { InputError } from "../errors.ts";
import type { AttentionCall, Family, LayerContext, PartWeights } from "../models/family.ts";
import { type RopeTable, ropeTable } from "../rope.ts";
import { KVCache } from "./kv_cache.ts";
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
}

/** Options of {@link CausalLM.generate}. */
export interface GenerateOptions {
  maxNewTokens?: number;
  /** Only greedy decoding is implemented so far. */
  doSample?: boolean;
  /** false: every step recomputes the whole sequence (same tokens, slower). Default true. */
  useCache?: boolean;
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
  trace?: TraceEvent[];
}

/** A decoder-only causal LM whose layers stream through a backend. */
export class CausalLM {
  readonly config: ModelConfig;
  readonly family: Family;
  readonly backend: Backend;
  readonly maxSeqLen: number;
  readonly #store: LayerStore;
  readonly #scratch: Scratch;
  readonly #source: string;
  readonly #trace?: TraceEvent[];
  #cache: KVCache | null = null;
  #rope: { seqLen: number; table: RopeTable } | null = null;
  #busy: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(p: CausalLMParts) {
    this.config = p.config;
    this.family = p.family;
    this.backend = p.backend;
    this.maxSeqLen = p.maxSeqLen;
    this.#store = p.store;
    this.#source = p.source;
    this.#trace = p.trace;
    this.#scratch = new Scratch(p.backend);
  }

  /** How many decoder layers stay on the device between steps (the rest stream). */
  get residentLayers(): number {
    return this.#store.residentLayers;
  }

  /** Tokens in the model's KV cache (per sequence). */
  get cacheLength(): number {
    return this.#cache?.length ?? 0;
  }

  /** Empties the model's KV cache. */
  resetCache(): void {
    this.#cache?.free();
    this.#cache = null;
  }

  /** Runs `fn` after every earlier call finished: calls share scratch buffers and the cache. */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#closed) {
      return Promise.reject(new InputError(`${this.#source}: the model was closed`));
    }
    const run = this.#busy.then(fn, fn);
    this.#busy = run.catch(() => {});
    return run;
  }

  /** Logits for every position of `inputIds` ([batch][seq], equal lengths). */
  forward(inputIds: number[][], opts: ForwardOptions = {}): Promise<Logits> {
    return this.#exclusive(async () => {
      const { batch, seq } = this.#checkIds(inputIds);
      const cache = opts.useCache
        ? this.#sessionCache(batch)
        : new KVCache(this.backend, this.config, batch, seq);
      try {
        const logits = await this.#step(inputIds, cache, false);
        const out = new Float32Array(batch * seq * this.config.vocabSize);
        this.backend.download(out, logits);
        return Object.assign(out, {
          dims: [batch, seq, this.config.vocabSize] as [number, number, number],
        });
      } finally {
        if (!opts.useCache) cache.free();
      }
    });
  }

  /** Greedy continuation: returns each row's prompt followed by its new tokens. */
  generate(inputIds: number[][], opts: GenerateOptions = {}): Promise<number[][]> {
    return this.#exclusive(async () => {
      if (opts.doSample) {
        throw new InputError("doSample: true is not implemented yet; only greedy decoding is");
      }
      const maxNew = opts.maxNewTokens ?? 20;
      const { batch, seq } = this.#checkIds(inputIds);
      if (seq + maxNew > this.maxSeqLen) {
        throw new InputError(
          `${this.#source}: prompt of ${seq} tokens + maxNewTokens ${maxNew} exceeds maxSeqLen ${this.maxSeqLen}`,
        );
      }
      const seqs = inputIds.map((r) => [...r]);
      const next = new Int32Array(batch);
      const useCache = opts.useCache ?? true;
      this.resetCache();
      let feed = seqs;
      for (let i = 0; i < maxNew; i++) {
        const cache = useCache
          ? this.#sessionCache(batch)
          : new KVCache(this.backend, this.config, batch, feed[0].length);
        try {
          const logits = await this.#step(feed, cache, true);
          this.backend.argmax(next, logits, batch, this.config.vocabSize);
        } finally {
          if (!useCache) cache.free();
        }
        seqs.forEach((s, b) => s.push(next[b]));
        feed = useCache ? seqs.map((s) => s.slice(-1)) : seqs;
      }
      return seqs;
    });
  }

  #checkIds(ids: number[][]): { batch: number; seq: number } {
    if (!Array.isArray(ids) || ids.length === 0 || !Array.isArray(ids[0]) || ids[0].length === 0) {
      throw new InputError("inputIds: expected a non-empty [batch][seq] array of token ids");
    }
    const seq = ids[0].length, V = this.config.vocabSize;
    for (const [b, row] of ids.entries()) {
      if (row.length !== seq) {
        throw new InputError(
          `inputIds: row ${b} has ${row.length} tokens, row 0 has ${seq}; rows must be equal`,
        );
      }
      for (const [j, id] of row.entries()) {
        if (!Number.isInteger(id) || id < 0 || id >= V) {
          throw new InputError(`inputIds[${b}][${j}] = ${id} is not a token id in [0, ${V})`);
        }
      }
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

  #ropeFor(seqLen: number): RopeTable {
    const dynamic = this.config.rope.type === "dynamic";
    if (!this.#rope || (dynamic && this.#rope.seqLen !== seqLen)) {
      const shape = {
        headDim: this.config.headDim,
        maxPositionEmbeddings: this.config.maxPositionEmbeddings,
      };
      this.#rope = { seqLen, table: ropeTable(this.config.rope, shape, seqLen, this.#source) };
    }
    return this.#rope.table;
  }

  /**
   * One pass of the streaming loop over `ids` appended to `cache`. Returns device logits:
   * [batch, seq, vocab], or [batch, vocab] for the last position only.
   */
  async #step(ids: number[][], cache: KVCache, lastOnly: boolean): Promise<DevPtr> {
    const be = this.backend, cfg = this.config;
    const B = ids.length, S = ids[0].length, T = B * S, D = cfg.hiddenSize, V = cfg.vocabSize;
    const past = cache.length;
    if (past + S > cache.capacity) {
      throw new InputError(
        `${this.#source}: ${past} cached + ${S} new tokens exceed maxSeqLen ${cache.capacity}`,
      );
    }
    const positions = new Int32Array(T);
    for (let t = 0; t < T; t++) positions[t] = past + (t % S);
    const rope = this.#ropeFor(past + S);

    const x = this.#scratch.get("x", T * D);
    const embed = this.#store.part("embed").get("weight");
    be.embedding(x, embed.ptr, embed.dtype, Int32Array.from(ids.flat()), D, V);

    const ctx: LayerContext = {
      be,
      cfg,
      layer: 0,
      T,
      x,
      positions,
      rope,
      buf: (name, floats) => this.#scratch.get(name, floats),
      attention: (call) => this.#attend(ctx.layer, call, cache, B, S),
    };
    const n = this.#store.numLayers;
    for (let layer = 0; layer < n; layer++) {
      const w = await this.#store.acquire(layer);
      this.#store.prefetchAfter(layer);
      const id = `layer.${layer}`;
      this.#trace?.push({ kind: "compute-start", part: id });
      ctx.layer = layer;
      this.family.forwardLayer(ctx, w);
      this.#trace?.push({ kind: "compute-end", part: id });
      this.#store.release(layer);
    }
    cache.length = past + S;

    let rows = T, h = x;
    if (lastOnly && S > 1) {
      rows = B;
      h = this.#scratch.get("last", B * D);
      for (let b = 0; b < B; b++) {
        be.copy(be.view(h, b * D * 4), be.view(x, ((b + 1) * S - 1) * D * 4), D * 4);
      }
    } else if (lastOnly) rows = B;
    const normed = this.#scratch.get("h", rows * D);
    const norm = this.#store.part("norm").get("weight");
    be.rmsnorm(normed, h, norm.ptr, norm.dtype, rows, D, cfg.rmsNormEps);
    const head = this.#head().get("weight");
    const logits = this.#scratch.get("logits", rows * V);
    be.matmul(logits, normed, head.ptr, head.dtype, null, rows, V, D);
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
    if (leaked !== 0) throw new Error(`internal: ${leaked} device allocations leaked at close`);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#busy;
    this.close();
  }
}
