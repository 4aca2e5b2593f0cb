/**
 * One step of the streaming loop (ARCHITECTURE.md "One forward pass"): embed, every decoder layer
 * as the store hands it over (read-ahead of the next ones started), final norm and head. Also the
 * NaN replay that names the stage a non-finite value began at, and the backend timing marks the
 * profiler gets. Knows nothing of generation, locking or which cache to use.
 *
 * @module
 */
import type { Backend, DevPtr } from "../../ffi/backend.ts";
import type { ModelConfig, RopeConfig } from "../config.ts";
import { InputError, InternalError, NonFiniteError } from "../errors.ts";
import type { AttentionCall, Family, LayerContext, PartWeights } from "../models/family.ts";
import type { ProfileCategory, Profiler } from "../profiler.ts";
import { ropeDependsOnLength, type RopeTable, ropeTable } from "../rope.ts";
import type { KVCache } from "./kv_cache.ts";
import type { LayerStore, TraceEvent } from "./store.ts";

/** Device scratch buffers by name, grown only when a step needs more. */
export class Scratch {
  readonly #bufs = new Map<string, { ptr: DevPtr; floats: number }>();
  constructor(private readonly be: Backend) {}

  get(name: string, floats: number): DevPtr {
    const b = this.#bufs.get(name);
    if (b && b.floats >= floats) return b.ptr;
    if (b) {
      this.be.free(b.ptr);
      this.#bufs.delete(name); // an allocation failing next must not leave it to be freed again
    }
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

/** What a {@link StepLoop} runs on. */
export interface StepLoopParts {
  config: ModelConfig;
  family: Family;
  backend: Backend;
  store: LayerStore;
  profiler: Profiler;
  /** Names the model in messages. */
  source: string;
  trace?: TraceEvent[];
}

/**
 * One sequence of a packed step (see {@link StepLoop.stepPacked}): `ids` are fed to row `slot` of
 * the cache at slots `start ..`, continuing that row's positions.
 */
export interface PackedSeq {
  /** The cache row (batch index) of this sequence. */
  slot: number;
  /** Its new tokens this step (≥ 1). */
  ids: number[];
  /** Cache slots of the row already used (its keys and values before this step). */
  start: number;
}

/**
 * Where the sequences of one step sit: token rows `[offset, offset + n)` of the step's
 * activations go to cache row `slot` at slots `[start, start + n)`; `mask` (n values, 1 = real
 * token) marks left padding, absent when every token is real.
 */
interface SeqLayout {
  slot: number;
  offset: number;
  n: number;
  start: number;
  mask?: number[];
}

/** Checks a stage's output on the host; used only to find where a non-finite value came from. */
type Probe = (stage: string, layer: number | null, x: DevPtr, floats: number) => void;

/** The per-step loop over the decoder layers, with its scratch buffers and rope tables. */
export class StepLoop {
  readonly #cfg: ModelConfig;
  readonly #family: Family;
  readonly #be: Backend;
  readonly #store: LayerStore;
  readonly #profiler: Profiler;
  readonly #source: string;
  readonly #trace?: TraceEvent[];
  readonly #scratch: Scratch;
  /** The family's scratch struct: floats per token row of each buffer. */
  readonly #scratchSizes: [string, number][];
  /** Backend timing marks of the running step. */
  readonly #marks: { category: ProfileCategory; layer: number | null; from: number; to: number }[] =
    [];
  /** Rope tables by rope config (one per distinct config; "dynamic" ones per length). */
  readonly #ropes = new Map<RopeConfig, { seqLen: number; table: RopeTable }>();

  constructor(p: StepLoopParts) {
    this.#cfg = p.config;
    this.#family = p.family;
    this.#be = p.backend;
    this.#store = p.store;
    this.#profiler = p.profiler;
    this.#source = p.source;
    this.#trace = p.trace;
    this.#scratch = new Scratch(p.backend);
    // Family buffers live beside the engine's own (x, last, final_norm, logits) under a prefix.
    this.#scratchSizes = Object.entries(p.family.scratch(p.config)).map(([n, f]) => [n, f]);
  }

  /**
   * One step over `ids` ([batch][seq]; `mask` 1 = real token, null = all real) appended to
   * `cache`. Returns its logits on the host ([batch, seq, vocab], or [batch, vocab] when
   * lastOnly), checked for NaN/Inf; a non-finite result is replayed stage by stage to name where
   * it began (and thrown as a NonFiniteError).
   */
  async step(
    ids: number[][],
    mask: number[][] | null,
    cache: KVCache,
    lastOnly: boolean,
  ): Promise<Float32Array> {
    const S = ids[0].length, past = cache.length;
    if (past + S > cache.capacity) {
      throw new InputError(
        `${this.#source}: ${past} cached + ${S} new tokens exceed maxSeqLen ${cache.capacity}`,
      );
    }
    const seqs: SeqLayout[] = ids.map((_, b) => ({
      slot: b,
      offset: b * S,
      n: S,
      start: past,
      mask: mask?.[b],
    }));
    return await this.#run(Int32Array.from(ids.flat()), seqs, cache, lastOnly, () => {
      cache.length = past + S;
    });
  }

  /**
   * One step over sequences of different lengths packed one after another (no padding), each
   * continuing its own row of `cache` from its own `start`: a decoding row feeds one token, a
   * prefilling one a chunk of its prompt, and one pass over the weights serves them all. Returns
   * the logits of each sequence's last token ([seqs, vocab], in the order given), checked like
   * {@link StepLoop.step}. Leaves `cache.length` alone: the caller keeps each row's length.
   */
  async stepPacked(seqs: readonly PackedSeq[], cache: KVCache): Promise<Float32Array> {
    if (seqs.length === 0) throw new InternalError("stepPacked: no sequences");
    const layout: SeqLayout[] = [];
    const slots = new Set<number>();
    let offset = 0;
    for (const s of seqs) {
      if (!Number.isInteger(s.slot) || s.slot < 0 || s.slot >= cache.batch || slots.has(s.slot)) {
        throw new InternalError(`stepPacked: bad or repeated cache row ${s.slot}`);
      }
      if (s.ids.length === 0) throw new InternalError(`stepPacked: row ${s.slot} feeds no tokens`);
      if (s.start + s.ids.length > cache.capacity) {
        throw new InputError(
          `${this.#source}: ${s.start} cached + ${s.ids.length} new tokens exceed maxSeqLen ${cache.capacity}`,
        );
      }
      slots.add(s.slot);
      layout.push({ slot: s.slot, offset, n: s.ids.length, start: s.start });
      offset += s.ids.length;
    }
    return await this.#run(
      Int32Array.from(seqs.flatMap((s) => s.ids)),
      layout,
      cache,
      true,
      () => {},
    );
  }

  /** A step over a layout; `done` records the cache's new length once the pass succeeded. */
  async #run(
    tokens: Int32Array,
    seqs: SeqLayout[],
    cache: KVCache,
    lastOnly: boolean,
    done: () => void,
  ): Promise<Float32Array> {
    const pos = cache.nextPosition.slice();
    const rows = lastOnly ? seqs.length : tokens.length;
    this.#marks.length = 0; // a failed step may have left some
    this.#be.resetMarks();
    const logits = await this.#pass(tokens, seqs, cache, lastOnly);
    const t0 = performance.now();
    const host = new Float32Array(rows * this.#cfg.vocabSize);
    this.#be.download(host, logits);
    this.#profiler.add("logits download", performance.now() - t0);
    this.#resolveMarks();
    this.#profiler.step(tokens.length);
    if (allFinite(host)) {
      done();
      return host;
    }
    cache.nextPosition.set(pos);
    let found: NonFiniteError | null = null;
    await this.#pass(tokens, seqs, cache, lastOnly, (stage, layer, x, floats) => {
      if (found) return;
      const v = new Float32Array(floats);
      this.#be.download(v, x);
      if (!allFinite(v)) found = new NonFiniteError(stage, layer, this.#source);
    });
    throw found ?? new NonFiniteError("lm_head", null, this.#source);
  }

  /** Frees the scratch buffers. */
  free(): void {
    this.#scratch.free();
  }

  /** Turns the step's backend marks into profiler entries (the step has completed). */
  #resolveMarks(): void {
    for (const m of this.#marks) {
      this.#profiler.add(m.category, this.#be.elapsedMs(m.from, m.to), m.layer);
    }
    this.#marks.length = 0;
    this.#be.resetMarks();
  }

  /**
   * One pass of the streaming loop over `ids` appended to `cache`. Returns device logits:
   * [batch, seq, vocab], or [batch, vocab] for the last position only.
   */
  async #pass(
    tokens: Int32Array,
    seqs: SeqLayout[],
    cache: KVCache,
    lastOnly: boolean,
    probe?: Probe,
  ): Promise<DevPtr> {
    const be = this.#be, cfg = this.#cfg, store = this.#store, family = this.#family;
    const B = seqs.length, T = tokens.length, D = cfg.hiddenSize, V = cfg.vocabSize;
    // Positions count real tokens only (left padding does not shift them), as transformers does.
    const positions = new Int32Array(T);
    for (const s of seqs) {
      const valid = cache.valid[s.slot];
      for (let j = 0; j < s.n; j++) {
        const real = s.mask ? s.mask[j] === 1 : true;
        valid[s.start + j] = real ? 1 : 0;
        positions[s.offset + j] = real ? cache.nextPosition[s.slot]++ : 0;
      }
    }
    const seqLen = Math.max(...cache.nextPosition);

    // Compute is timed with backend marks (device events on a GPU), resolved after the step.
    const marks = this.#marks;
    let m0 = be.mark();
    const x = this.#scratch.get("x", T * D);
    const embed = store.part("embed").get("weight");
    be.embedding(x, embed.ptr, embed.dtype, tokens, D, V);
    const embedScale = family.embedScale?.(cfg);
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
      s: this.#layerScratch(T),
      joinedScratch: true,
      attention: (call) => this.#attend(ctx.layer, call, cache, seqs),
      onRoute: this.#trace &&
        ((experts) =>
          this.#trace!.push({ kind: "route", part: `layer.${ctx.layer}`, experts: [...experts] })),
    };
    const n = store.numLayers;
    for (let layer = 0; layer < n; layer++) {
      const stored = store.acquireLoaded(layer) ?? await store.acquire(layer);
      store.prefetchAfter(layer);
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
        await family.forwardLayer(ctx, w);
      } finally {
        store.release(layer); // a failed layer must not keep its slot
      }
      marks.push({ category: "layers", layer, from: m0, to: be.mark() });
      this.#trace?.push({ kind: "compute-end", part: id });
      probe?.(`layer ${layer}`, layer, x, T * D);
    }

    m0 = be.mark();
    let rows = T, h = x;
    if (lastOnly && T > B) {
      rows = B;
      h = this.#scratch.get("last", B * D);
      for (const [b, s] of seqs.entries()) {
        be.copy(be.view(h, b * D * 4), be.view(x, (s.offset + s.n - 1) * D * 4), D * 4);
      }
    } else if (lastOnly) rows = B;
    const normed = this.#scratch.get("final_norm", rows * D);
    const normPart = store.part("norm");
    if (family.finalNorm) family.finalNorm(be, cfg, normPart, normed, h, rows);
    else {
      const norm = normPart.get("weight");
      be.rmsnorm(normed, h, norm.ptr, norm.dtype, rows, D, cfg.rmsNormEps);
    }
    probe?.("final norm", null, normed, rows * D);
    const headPart = this.#head(), head = headPart.get("weight");
    const logits = this.#scratch.get("logits", rows * V);
    const bias = cfg.tieWordEmbeddings ? null : headPart.opt("bias");
    be.matmul(logits, normed, head.ptr, head.dtype, bias?.ptr ?? null, rows, V, D, bias?.dtype);
    if (cfg.finalLogitSoftcap > 0) be.softcap(logits, logits, cfg.finalLogitSoftcap, rows * V);
    marks.push({ category: "embed + head", layer: null, from: m0, to: be.mark() });
    return logits;
  }

  /**
   * The family's scratch struct for T token rows (grown buffers are reallocated). q, k, v and
   * gate, up, where the family has them, are each one buffer in that order
   * (LayerContext.joinedScratch): at T = 1 a fused matmul fills them in one call.
   */
  #layerScratch(T: number): Record<string, DevPtr> {
    const s: Record<string, DevPtr> = {};
    const sizes = new Map(this.#scratchSizes);
    for (const group of JOINED_SCRATCH) {
      if (!group.every((n) => sizes.has(n))) continue;
      const floats = group.reduce((a, n) => a + sizes.get(n)!, 0);
      const base = this.#scratch.get(`layer.${group.join("+")}`, T * floats);
      let at = 0;
      for (const n of group) {
        s[n] = this.#be.view(base, at * 4);
        at += T * sizes.get(n)!;
        sizes.delete(n);
      }
    }
    for (const [name, floats] of sizes) s[name] = this.#scratch.get(`layer.${name}`, T * floats);
    return s;
  }

  #ropeFor(rope: RopeConfig, seqLen: number): RopeTable {
    const have = this.#ropes.get(rope);
    if (have && (!ropeDependsOnLength(rope) || have.seqLen === seqLen)) return have.table;
    const shape = {
      headDim: this.#cfg.ropeHeadDim ?? this.#cfg.headDim,
      maxPositionEmbeddings: this.#cfg.maxPositionEmbeddings,
    };
    const table = ropeTable(rope, shape, seqLen, this.#source);
    this.#ropes.set(rope, { seqLen, table });
    return table;
  }

  /** lm_head, or the embedding itself when tied (one copy on the device). */
  #head(): PartWeights {
    return this.#store.part(this.#cfg.tieWordEmbeddings ? "embed" : "lm_head");
  }

  /** Appends this step's K/V to the cache and runs attention for each sequence. */
  #attend(layer: number, c: AttentionCall, cache: KVCache, seqs: SeqLayout[]): void {
    const be = this.#be, cfg = this.#cfg, L = cache.layout;
    const kF = cache.keyFloats, vF = cache.valueFloats, outDim = cfg.numHeads * L.valueDim;
    if (c.kvStride !== kF || (vF > 0 && c.kvStride !== vF)) {
      throw new InternalError(
        `layer ${layer}: attention needs contiguous k/v rows (stride ${kF}${
          vF > 0 ? `/${vF}` : ""
        }), got ${c.kvStride}`,
      );
    }
    if ((vF > 0) !== (c.v !== undefined)) {
      throw new InternalError(
        `layer ${layer}: the cache layout ${
          L.sharedKV ? "reads values from the keys" : "needs values"
        }`,
      );
    }
    const { k, v } = cache.layer(layer);
    for (const { slot: b, offset: o, n: S, start: past } of seqs) {
      const rowK = be.view(k, cache.offset(b, 0, kF));
      be.copy(be.view(k, cache.offset(b, past, kF)), be.view(c.k, o * kF * 4), S * kF * 4);
      let rowV = rowK;
      if (v && c.v) {
        rowV = be.view(v, cache.offset(b, 0, vF));
        be.copy(be.view(v, cache.offset(b, past, vF)), be.view(c.v, o * vF * 4), S * vF * 4);
      }
      be.attention({
        out: be.view(c.out, o * outDim * 4),
        q: be.view(c.q, o * c.qStride * 4),
        qStride: c.qStride,
        k: rowK,
        kStride: kF,
        v: rowV,
        vStride: v ? vF : kF,
        nQ: S,
        qStart: past,
        kvLen: past + S,
        nHeads: cfg.numHeads,
        nKvHeads: L.kvHeads,
        headDim: L.keyDim,
        vHeadDim: L.valueDim,
        scale: c.scale,
        window: cfg.layerWindows[layer],
        softcap: c.softcap,
        kvValid: cache.valid[b].subarray(0, past + S),
        alibiSlopes: c.alibiSlopes,
      });
    }
  }
}

/**
 * Whether every value is finite. A plain loop: `every(Number.isFinite)` took 0.6 ms on a 49k
 * logits row, 7% of a decode step of a small model.
 */
function allFinite(a: Float32Array): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] - a[i] !== 0) return false; // NaN and ±Inf
  return true;
}

/** Scratch buffers laid out back to back, in this order (#layerScratch). */
const JOINED_SCRATCH = [["q", "k", "v"], ["gate", "up"]] as const;
