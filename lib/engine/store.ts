/**
 * Where each part of a split lives on the device, and the prefetch that keeps it fed.
 *
 * Small parts (embed, final norm, lm_head) are loaded once and stay. Decoder layers are resident
 * while they fit the residency budget (loaded on first use, kept); the rest stream through a pool
 * of preallocated slots: a read of layer i+1.. (disk → host buffer, on Deno's I/O threads) runs
 * while layer i computes, then one upload host → device. No allocation per layer or per token.
 *
 * @module
 */
import type { Backend, DevPtr, WeightDType } from "../../ffi/backend.ts";
import type { Manifest, ManifestPart } from "../checkpoint.ts";
import { CheckpointError } from "../errors.ts";
import type { PartWeights, Weight } from "../models/family.ts";
import type { Profiler } from "../profiler.ts";

/** One step of the streaming loop, recorded when tracing is on. */
export interface TraceEvent {
  kind: "read-start" | "read-end" | "upload" | "compute-start" | "compute-end";
  /** Part id: "layer.3", "embed", ... */
  part: string;
}

/** Options of {@link LayerStore}. */
export interface StoreOptions {
  /** Read the next layers while the current one computes. */
  prefetching: boolean;
  /** How many layers ahead to read when prefetching. */
  prefetchDepth: number;
  /** Device bytes that decoder layers may keep resident across steps. */
  maxResidentBytes: number;
  /** When given, every read/upload/compute is appended here in order. */
  trace?: TraceEvent[];
  /** Receives "disk read", "read wait" and "upload" times. */
  profiler?: Profiler;
}

interface Slot {
  dev: DevPtr;
  /** Host staging buffer (pool slots keep one; resident slots allocate per load). */
  host: Uint8Array | null;
  /** Layer index held or being read, -1 when empty. */
  layer: number;
  read: Promise<Uint8Array> | null;
  reading: boolean;
  uploaded: boolean;
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

/** Reads the data section of a part file into `into` (which must be large enough). */
async function readPart(dir: string, part: ManifestPart, into: Uint8Array): Promise<Uint8Array> {
  const path = `${dir}/${part.file}`;
  using file = await Deno.open(path, { read: true });
  const size = (await file.stat()).size;
  if (size !== part.bytes) {
    throw new CheckpointError(
      path,
      `file is ${size} bytes, the manifest says ${part.bytes}; re-split`,
    );
  }
  await file.seek(part.dataOffset, Deno.SeekMode.Start);
  const dst = into.subarray(0, part.dataBytes);
  let n = 0;
  while (n < dst.length) {
    const got = await file.read(dst.subarray(n));
    if (got === null) {
      throw new CheckpointError(path, `unexpected end of file at byte ${part.dataOffset + n}`);
    }
    n += got;
  }
  return dst;
}

/** The device-side home of every part of one split. */
export class LayerStore {
  readonly #be: Backend;
  readonly #dir: string;
  readonly #opts: StoreOptions;
  readonly #layers: ManifestPart[];
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
    let budget = opts.maxResidentBytes;
    this.#resident = this.#layers.map((p) => {
      if (p.dataBytes > budget) {
        budget = 0; // keep residency a prefix: later layers stream in order
        return null;
      }
      budget -= p.dataBytes;
      return this.#newSlot(p.dataBytes, false);
    });
    const streamed = this.#layers.filter((_, i) => this.#resident[i] === null);
    if (streamed.length > 0) {
      const bytes = Math.max(...streamed.map((p) => p.dataBytes));
      const n = Math.min(streamed.length, opts.prefetching ? opts.prefetchDepth + 1 : 1);
      for (let i = 0; i < n; i++) this.#pool.push(this.#newSlot(bytes, true));
    }
  }

  /** Loads the small parts and sets up the layer slots. */
  static async open(
    be: Backend,
    dir: string,
    manifest: Manifest,
    opts: StoreOptions,
  ): Promise<LayerStore> {
    const store = new LayerStore(be, dir, manifest, opts);
    try {
      for (const p of manifest.parts) {
        if (p.id.startsWith("layer.")) continue;
        store.#trace("read-start", p.id);
        const host = await readPart(dir, p, new Uint8Array(p.dataBytes));
        store.#trace("read-end", p.id);
        const dev = be.alloc(Math.max(p.dataBytes, 1));
        store.#small.set(p.id, { dev, weights: weightsOf(be, dev, p) });
        be.upload(dev, host);
        store.#trace("upload", p.id);
      }
    } catch (e) {
      store.close();
      throw e;
    }
    return store;
  }

  #newSlot(bytes: number, pooled: boolean): Slot {
    return {
      dev: this.#be.alloc(Math.max(bytes, 1)),
      host: pooled ? new Uint8Array(bytes) : null,
      layer: -1,
      read: null,
      reading: false,
      uploaded: false,
      inUse: false,
      weights: null,
    };
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

  /** Starts reading `layer` into a slot unless it is loaded, being read, or no slot is free. */
  #startRead(layer: number, protect: Set<number>): void {
    if (this.#slotHolding(layer)) return;
    let slot: Slot | null | undefined = this.#resident[layer];
    if (!slot) {
      slot = this.#pool.find((s) => !s.inUse && !s.reading && !protect.has(s.layer));
      if (!slot) return;
    }
    const part = this.#layers[layer];
    slot.layer = layer;
    slot.uploaded = false;
    slot.weights = null;
    slot.reading = true;
    this.#trace("read-start", part.id);
    const target = slot, t0 = performance.now();
    slot.read = readPart(this.#dir, part, slot.host ?? new Uint8Array(part.dataBytes)).finally(
      () => {
        target.reading = false;
        this.#opts.profiler?.add("disk read", performance.now() - t0);
        this.#trace("read-end", part.id);
      },
    );
    // A read nobody awaits yet must not surface as an unhandled rejection; acquire rethrows it.
    slot.read.catch(() => {});
  }

  /** The weights of `layer` on the device, waiting for its read when needed. */
  async acquire(layer: number): Promise<PartWeights> {
    if (this.#closed) throw new CheckpointError(this.#dir, "the model was closed");
    this.#startRead(layer, new Set([layer]));
    const slot = this.#slotHolding(layer);
    if (!slot) throw new Error(`internal: no free slot for layer ${layer}`);
    slot.inUse = true;
    if (!slot.uploaded) {
      let host: Uint8Array;
      const t0 = performance.now();
      try {
        host = await slot.read!;
      } catch (e) {
        slot.layer = -1;
        slot.inUse = false;
        throw e;
      }
      const t1 = performance.now();
      this.#be.upload(slot.dev, host);
      this.#opts.profiler?.add("read wait", t1 - t0);
      this.#opts.profiler?.add("upload", performance.now() - t1);
      this.#trace("upload", this.#layers[layer].id);
      slot.uploaded = true;
      slot.read = null;
      slot.weights = weightsOf(this.#be, slot.dev, this.#layers[layer]);
    }
    return slot.weights!;
  }

  /** Starts reads of the layers after `layer` (wrapping to the next step) when prefetching. */
  prefetchAfter(layer: number): void {
    if (!this.#opts.prefetching) return;
    const n = this.#layers.length;
    const ahead: number[] = [];
    for (let d = 1; d <= this.#opts.prefetchDepth && d < n; d++) ahead.push((layer + d) % n);
    const protect = new Set([layer, ...ahead]);
    for (const l of ahead) this.#startRead(l, protect);
  }

  /** Marks `layer` as no longer needed by the running step. */
  release(layer: number): void {
    const slot = this.#slotHolding(layer);
    if (slot) slot.inUse = false;
  }

  /** Frees every device allocation. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of [...this.#resident, ...this.#pool]) if (s) this.#be.free(s.dev);
    for (const p of this.#small.values()) this.#be.free(p.dev);
    this.#small.clear();
  }
}
