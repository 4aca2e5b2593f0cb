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
  /**
   * read-start: a load was issued; read-end: the loop has the part (its load was waited for);
   * route: a MoE layer routed its tokens (see `experts`).
   */
  kind: "read-start" | "read-end" | "compute-start" | "compute-end" | "route";
  /** Part id: "layer.3", "embed", ...; an on-demand group of a layer: "layer.3/expert.5". */
  part: string;
  /** route only: the chosen expert of every (token, choice), token-major. */
  experts?: number[];
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
  /** The on-demand group of a layer tensor (Family.lazyGroup); absent = none. */
  lazyGroup?: (local: string) => string | null;
}

/** A byte range of a part's data section. */
interface Range {
  offset: number;
  bytes: number;
}

/** Which bytes of a layer file load with the layer, and which per on-demand group. */
interface Layout {
  eager: Range[];
  /** Every byte of the part (a resident layer loads whole). */
  whole: Range[];
  groups: Map<string, Range[]>;
  /** Tensor local name → its group (group-less tensors are absent). */
  groupOf: Map<string, string>;
}

/** Adjacent tensors merged into as few reads as possible. */
function coalesce(ranges: Range[]): Range[] {
  const out: Range[] = [];
  for (const r of [...ranges].sort((a, b) => a.offset - b.offset)) {
    const last = out.at(-1);
    if (last && last.offset + last.bytes === r.offset) last.bytes += r.bytes;
    else out.push({ ...r });
  }
  return out;
}

function layoutOf(part: ManifestPart, lazyGroup?: (local: string) => string | null): Layout {
  const eager: Range[] = [], byGroup = new Map<string, Range[]>();
  const groupOf = new Map<string, string>();
  for (const t of part.tensors) {
    const g = lazyGroup?.(t.name) ?? null;
    const r = { offset: t.offset, bytes: t.nbytes };
    if (g === null) eager.push(r);
    else {
      groupOf.set(t.name, g);
      byGroup.set(g, [...byGroup.get(g) ?? [], r]);
    }
  }
  const groups = new Map([...byGroup].map(([g, rs]) => [g, coalesce(rs)]));
  const whole = coalesce(part.tensors.map((t) => ({ offset: t.offset, bytes: t.nbytes })));
  return { eager: coalesce(eager), whole, groups, groupOf };
}

interface Slot {
  dev: DevPtr;
  /** Layer index held or being loaded, -1 when empty. */
  layer: number;
  /** Tickets of the pending load of the layer's group-less bytes; empty when none. */
  tickets: bigint[];
  loaded: boolean;
  inUse: boolean;
  /** On-demand groups of the held layer that are on the device. */
  groups: Set<string>;
  /** On-demand groups being read: their tickets, in issue order. */
  pending: Map<string, bigint[]>;
  weights: PartWeights | null;
}

/** The device-side home of every part of one split. */
export class LayerStore {
  readonly #be: Backend;
  readonly #dir: string;
  readonly #opts: StoreOptions;
  readonly #layers: ManifestPart[];
  readonly #layouts: Layout[];
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
    this.#layouts = this.#layers.map((p) => layoutOf(p, opts.lazyGroup));
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
        store.#small.set(p.id, { dev, weights: store.#weightsOf(dev, p, null, null) });
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
    return {
      dev,
      layer: -1,
      tickets: [],
      loaded: false,
      inUse: false,
      groups: new Set(),
      pending: new Map(),
      weights: null,
    };
  }

  /** Views of a part's tensors at `base`; with a slot, on-demand groups load into it. */
  #weightsOf(base: DevPtr, part: ManifestPart, slot: Slot | null, layout: Layout | null) {
    const be = this.#be;
    const map = new Map<string, Weight>();
    for (const t of part.tensors) {
      map.set(t.name, {
        ptr: be.view(base, t.offset),
        dtype: t.dtype as WeightDType,
        shape: t.shape,
      });
    }
    const check = (local: string) => {
      const g = layout?.groupOf.get(local);
      if (g !== undefined && !slot!.groups.has(g)) {
        throw new Error(`internal: ${part.id} tensor ${local} used before load(["${g}"])`);
      }
    };
    const weights: PartWeights = {
      get(local) {
        const w = map.get(local);
        if (!w) throw new CheckpointError(part.file, `part ${part.id} has no tensor ${local}`);
        check(local);
        return w;
      },
      opt(local) {
        if (!map.has(local)) return null;
        check(local);
        return map.get(local)!;
      },
      load: async (groups) => {
        if (!slot || !layout) {
          if (groups.length === 0) return;
          throw new CheckpointError(part.file, `part ${part.id} has no on-demand groups`);
        }
        this.#issueGroups(slot, part, layout, groups);
        await this.#waitGroups(slot, part, groups);
      },
      prefetch: (groups) => {
        if (slot && layout) this.#issueGroups(slot, part, layout, groups);
        else if (groups.length > 0) {
          throw new CheckpointError(part.file, `part ${part.id} has no on-demand groups`);
        }
      },
    };
    return weights;
  }

  /** Starts reading the `groups` of the layer in `slot` that are neither loaded nor being read. */
  #issueGroups(slot: Slot, part: ManifestPart, layout: Layout, groups: readonly string[]): void {
    for (const g of groups) {
      if (slot.groups.has(g) || slot.pending.has(g)) continue;
      const ranges = layout.groups.get(g);
      if (!ranges) throw new CheckpointError(part.file, `part ${part.id} has no group ${g}`);
      this.#trace("read-start", `${part.id}/${g}`);
      slot.pending.set(g, this.#read(slot, ranges));
    }
  }

  /** Starts reading `ranges` of the data of the layer `slot` holds into the same offsets. */
  #read(slot: Slot, ranges: Range[]): bigint[] {
    const part = this.#layers[slot.layer], path = this.#paths[slot.layer];
    return ranges.map((r) =>
      this.#be.loadStart(
        this.#be.view(slot.dev, r.offset),
        path,
        part.dataOffset + r.offset,
        r.bytes,
      )
    );
  }

  /** Waits for the reads of `groups` (issued before); on a failure the slot is given up. */
  async #waitGroups(slot: Slot, part: ManifestPart, groups: readonly string[]): Promise<void> {
    const t0 = performance.now();
    let waited = false;
    for (const g of groups) {
      const tickets = slot.pending.get(g);
      if (!tickets) continue;
      slot.pending.delete(g);
      waited = true;
      try {
        for (const t of tickets) await this.#be.loadWaitAsync(t);
      } catch (e) {
        // Nothing else may land in this slot once it is given up: wait for every other read.
        this.#drainPending(slot);
        slot.layer = -1;
        slot.loaded = false;
        slot.inUse = false;
        throw e;
      }
      slot.groups.add(g);
      this.#trace("read-end", `${part.id}/${g}`);
    }
    if (waited) this.#opts.profiler?.add("read wait", performance.now() - t0);
  }

  /** Waits (blocking) for every group read still in flight in `slot`; they are not used. */
  #drainPending(slot: Slot): void {
    for (const tickets of slot.pending.values()) {
      for (const t of tickets) {
        try {
          this.#be.loadWait(t);
        } catch { /* unused reads: the failure that matters was reported */ }
      }
    }
    slot.pending.clear();
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
      slot = this.#pool.find((s) => !s.inUse && s.tickets.length === 0 && !protect.has(s.layer));
      if (!slot) return;
    }
    const part = this.#layers[layer], layout = this.#layouts[layer];
    slot.layer = layer;
    slot.loaded = false;
    slot.weights = null;
    slot.groups = new Set();
    slot.pending = new Map();
    this.#trace("read-start", part.id);
    // A resident layer loads whole, groups included: its memory is reserved anyway, and decode
    // then never stalls on a first-time expert. Only streamed layers read groups on demand.
    const whole = slot === this.#resident[layer];
    if (whole) slot.groups = new Set(layout.groups.keys());
    slot.tickets = this.#read(slot, whole ? layout.whole : layout.eager);
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
      const tickets = slot.tickets;
      slot.tickets = [];
      let failure: unknown = null;
      for (const t of tickets) {
        try {
          // After a failure the remaining reads are still waited for: they write into the slot.
          if (failure === null) await this.#be.loadWaitAsync(t);
          else this.#be.loadWait(t);
        } catch (e) {
          failure ??= e;
        }
      }
      if (failure !== null) {
        slot.layer = -1;
        slot.inUse = false;
        throw failure;
      }
      this.#opts.profiler?.add("read wait", performance.now() - t0);
      this.#trace("read-end", this.#layers[layer].id);
      slot.loaded = true;
      slot.weights = this.#weightsOf(slot.dev, this.#layers[layer], slot, this.#layouts[layer]);
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
    if (!slot) return;
    // Group reads the forward started but never waited for (it failed): finish them, unused, so
    // the slot can take another layer.
    if (slot.pending.size > 0) {
      this.#drainPending(slot);
      slot.groups.clear();
      slot.layer = -1;
      slot.loaded = false;
    }
    slot.inUse = false;
  }

  /** Waits for loads still in flight, then frees every device allocation. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of [...this.#resident, ...this.#pool]) {
      if (!s) continue;
      this.#drainPending(s);
      for (const t of s.tickets) {
        try {
          this.#be.loadWait(t);
        } catch { /* a failed prefetch nobody used: nothing to report at close */ }
      }
      this.#be.free(s.dev);
    }
    for (const p of this.#small.values()) this.#be.free(p.dev);
    this.#small.clear();
  }
}
