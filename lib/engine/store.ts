/**
 * Where each part of a split lives on the device, and the prefetch that keeps it fed.
 *
 * Small parts (embed, final norm, lm_head) are loaded once and stay. Decoder layers are resident
 * while they fit the residency budget (loaded on first use, kept); the rest stream through a pool
 * of preallocated slots. Loads run on the backend's I/O thread (rl_load_start: file → device, on a
 * GPU through pinned staging and a copy stream), so the load of layer i+1.. overlaps the compute of
 * layer i. No allocation per layer or per token.
 *
 * @module
 */
import { type Backend, cstr, type DevPtr, type WeightDType } from "../../ffi/backend.ts";
import type { Manifest, ManifestPart } from "../checkpoint.ts";
import { CheckpointError } from "../errors.ts";
import type { PartWeights, Weight } from "../models/family.ts";
import type { Profiler } from "../profiler.ts";

/** One step of the streaming loop, recorded when tracing is on. */
export interface TraceEvent {
  /** read-start: a load was issued; read-end: the loop has the part (its load was waited for). */
  kind: "read-start" | "read-end" | "compute-start" | "compute-end";
  /** Part id: "layer.3", "embed", ... */
  part: string;
}

/** Options of {@link LayerStore}. */
export interface StoreOptions {
  /** Load the next layers while the current one computes. */
  prefetching: boolean;
  /** How many layers ahead to load when prefetching. */
  prefetchDepth: number;
  /** Device bytes that decoder layers may keep resident across steps. */
  maxResidentBytes: number;
  /** When given, every load and compute is appended here in order. */
  trace?: TraceEvent[];
  /** Receives "read wait" times. */
  profiler?: Profiler;
}

interface Slot {
  dev: DevPtr;
  /** Layer index held or being loaded, -1 when empty. */
  layer: number;
  /** The pending load's ticket, 0 when none. */
  ticket: bigint;
  loaded: boolean;
  inUse: boolean;
  weights: PartWeights | null;
}

function weightsOf(be: Backend, base: DevPtr, part: ManifestPart): PartWeights {
  const map = new Map<string, Weight>();
  for (const t of part.tensors) {
    map.set(t.name, {
      ptr: be.view(base, t.offset),
      dtype: t.dtype as WeightDType,
      shape: t.shape,
    });
  }
  return {
    get(local) {
      const w = map.get(local);
      if (!w) throw new CheckpointError(part.file, `part ${part.id} has no tensor ${local}`);
      return w;
    },
    opt: (local) => map.get(local) ?? null,
  };
}

/** The device-side home of every part of one split. */
export class LayerStore {
  readonly #be: Backend;
  readonly #dir: string;
  readonly #opts: StoreOptions;
  readonly #layers: ManifestPart[];
  /** NUL-terminated path of each layer file, for rl_load_start. */
  readonly #paths: Uint8Array[];
  readonly #small = new Map<string, { dev: DevPtr; weights: PartWeights }>();
  /** Per layer: its own slot when resident, else null (streams through the pool). */
  readonly #resident: (Slot | null)[];
  readonly #pool: Slot[] = [];
  #closed = false;

  private constructor(be: Backend, dir: string, manifest: Manifest, opts: StoreOptions) {
    this.#be = be;
    this.#dir = dir;
    this.#opts = opts;
    this.#layers = manifest.parts.filter((p) => p.id.startsWith("layer."));
    this.#paths = this.#layers.map((p) => cstr(`${dir}/${p.file}`));
    let budget = opts.maxResidentBytes;
    this.#resident = this.#layers.map((p) => {
      if (p.dataBytes > budget) {
        budget = 0; // keep residency a prefix: later layers stream in order
        return null;
      }
      budget -= p.dataBytes;
      return this.#newSlot(p.dataBytes);
    });
    const streamed = this.#layers.filter((_, i) => this.#resident[i] === null);
    if (streamed.length > 0) {
      const bytes = Math.max(...streamed.map((p) => p.dataBytes));
      const n = Math.min(streamed.length, opts.prefetching ? opts.prefetchDepth + 1 : 1);
      for (let i = 0; i < n; i++) this.#pool.push(this.#newSlot(bytes));
    }
  }

  /**
   * Checks every part file against the manifest (a changed or truncated file is never loaded),
   * loads the small parts and sets up the layer slots.
   */
  static async open(
    be: Backend,
    dir: string,
    manifest: Manifest,
    opts: StoreOptions,
  ): Promise<LayerStore> {
    for (const p of manifest.parts) {
      const path = `${dir}/${p.file}`;
      const size = await Deno.stat(path).then((s) => s.size, () => -1);
      if (size !== p.bytes) {
        throw new CheckpointError(
          path,
          `file is ${
            size < 0 ? "missing" : `${size} bytes`
          }, the manifest says ${p.bytes}; re-split`,
        );
      }
    }
    const store = new LayerStore(be, dir, manifest, opts);
    try {
      for (const p of manifest.parts) {
        if (p.id.startsWith("layer.")) continue;
        const dev = be.alloc(Math.max(p.dataBytes, 1));
        store.#small.set(p.id, { dev, weights: weightsOf(be, dev, p) });
        store.#trace("read-start", p.id);
        be.loadWait(be.loadStart(dev, cstr(`${dir}/${p.file}`), p.dataOffset, p.dataBytes));
        store.#trace("read-end", p.id);
      }
    } catch (e) {
      store.close();
      throw e;
    }
    return store;
  }

  #newSlot(bytes: number): Slot {
    const dev = this.#be.alloc(Math.max(bytes, 1));
    return { dev, layer: -1, ticket: 0n, loaded: false, inUse: false, weights: null };
  }

  #trace(kind: TraceEvent["kind"], part: string): void {
    this.#opts.trace?.push({ kind, part });
  }

  /** Number of decoder layers. */
  get numLayers(): number {
    return this.#layers.length;
  }

  /** How many decoder layers are resident (the rest stream). */
  get residentLayers(): number {
    return this.#resident.filter((s) => s !== null).length;
  }

  /** Weights of a small resident part ("embed", "norm", "lm_head"). */
  part(id: string): PartWeights {
    const p = this.#small.get(id);
    if (!p) throw new CheckpointError(this.#dir, `the split has no part ${id}`);
    return p.weights;
  }

  #slotHolding(layer: number): Slot | undefined {
    const own = this.#resident[layer];
    if (own) return own.layer === layer ? own : undefined;
    return this.#pool.find((s) => s.layer === layer);
  }

  /** Starts loading `layer` into a slot unless it is loaded, being loaded, or no slot is free. */
  #startLoad(layer: number, protect: Set<number>): void {
    if (this.#slotHolding(layer)) return;
    let slot: Slot | null | undefined = this.#resident[layer];
    if (!slot) {
      // A slot whose load is still pending is not reused: its bytes are still arriving.
      slot = this.#pool.find((s) => !s.inUse && s.ticket === 0n && !protect.has(s.layer));
      if (!slot) return;
    }
    const part = this.#layers[layer];
    slot.layer = layer;
    slot.loaded = false;
    slot.weights = null;
    this.#trace("read-start", part.id);
    slot.ticket = this.#be.loadStart(slot.dev, this.#paths[layer], part.dataOffset, part.dataBytes);
  }

  /** The weights of `layer` on the device, waiting for its load when needed. */
  async acquire(layer: number): Promise<PartWeights> {
    if (this.#closed) throw new CheckpointError(this.#dir, "the model was closed");
    this.#startLoad(layer, new Set([layer]));
    const slot = this.#slotHolding(layer);
    if (!slot) throw new Error(`internal: no free slot for layer ${layer}`);
    slot.inUse = true;
    if (!slot.loaded) {
      const t0 = performance.now();
      const ticket = slot.ticket;
      slot.ticket = 0n;
      try {
        await this.#be.loadWaitAsync(ticket);
      } catch (e) {
        slot.layer = -1;
        slot.inUse = false;
        throw e;
      }
      this.#opts.profiler?.add("read wait", performance.now() - t0);
      this.#trace("read-end", this.#layers[layer].id);
      slot.loaded = true;
      slot.weights = weightsOf(this.#be, slot.dev, this.#layers[layer]);
    }
    return slot.weights!;
  }

  /** Starts loads of the layers after `layer` (wrapping to the next step) when prefetching. */
  prefetchAfter(layer: number): void {
    if (!this.#opts.prefetching) return;
    const n = this.#layers.length;
    const ahead: number[] = [];
    for (let d = 1; d <= this.#opts.prefetchDepth && d < n; d++) ahead.push((layer + d) % n);
    const protect = new Set([layer, ...ahead]);
    for (const l of ahead) this.#startLoad(l, protect);
  }

  /** Marks `layer` as no longer needed by the running step. */
  release(layer: number): void {
    const slot = this.#slotHolding(layer);
    if (slot) slot.inUse = false;
  }

  /** Waits for loads still in flight, then frees every device allocation. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of [...this.#resident, ...this.#pool]) {
      if (!s) continue;
      if (s.ticket !== 0n) {
        try {
          this.#be.loadWait(s.ticket);
        } catch { /* a failed prefetch nobody used: nothing to report at close */ }
      }
      this.#be.free(s.dev);
    }
    for (const p of this.#small.values()) this.#be.free(p.dev);
    this.#small.clear();
  }
}
