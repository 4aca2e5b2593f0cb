/**
 * Where each part of a split lives, and the prefetch that keeps compute fed. The memory planner
 * (planner.ts) puts every decoder layer in a tier; this file carries the plan out.
 *
 * On a device that reads host memory (the CPU backend, `Backend.canMap`) a streamed layer's file
 * is mapped: ops read its pages in place, with no copy, and it is read ahead (rl_prefetch_start:
 * page cache and page tables filled on the backend's I/O thread) while the layer before it
 * computes. A resident layer is read once into its own buffer and kept, and so are the small
 * parts (embedding, norm, head) whenever any layer is resident: the backend backs big buffers with
 * huge pages, and a decode GEMV over 4 KiB page-cache pages pays a TLB miss on every page (the
 * resident decode of a q8_0 SmolLM2-135M ran about 25% faster from buffers). With nothing
 * resident, memory is tight and the small parts stay mapped page cache, which the kernel can
 * reclaim. When the page cache cannot hold
 * the streamed layers (`dropBehind`: the model is bigger than memory), they stream instead
 * through a small pool of slots with direct I/O (rl_load_start with "drop_behind"): their bytes
 * never enter the page cache, so they cannot evict the resident set, and memory use stays what
 * the plan says.
 *
 * On a GPU a resident layer has its own device buffer, loaded on first use and kept; the others
 * stream through the pool, read from their file (rl_load_start: pinned staging and a copy
 * stream) or copied from a pinned host-tier copy (rl_upload_start). No allocation per layer or
 * per token.
 *
 * @module
 */
import { type Backend, cstr, type DevPtr, type WeightDType } from "../../ffi/backend.ts";
import type { Manifest, ManifestPart } from "../checkpoint.ts";
import { CheckpointError, InternalError, ModelClosedError } from "../errors.ts";
import type { PartWeights, Weight } from "../models/family.ts";
import type { Profiler } from "../profiler.ts";
import type { Plan, Tier } from "./planner.ts";

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
  /** Where each decoder layer lives (planner.ts); one tier per layer. */
  plan: Plan;
  /**
   * Compute from the part files' mapped pages where the backend can (default true); false reads
   * every part into buffers, as on a GPU (file systems where mapping is slow, and tests).
   */
  mapFiles?: boolean;
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

/**
 * Device memory holding one layer's data: a layer's own (its mapping, or a resident layer's
 * buffer) or a pool slot that streamed layers take turns in.
 */
interface Slot {
  dev: DevPtr;
  /** `dev` is a mapping of the layer's file (read ahead in place, unmapped at close). */
  mapping: boolean;
  /** The layer this slot always holds (own slots), or -1 for a pool slot. */
  owner: number;
  /** Pool slots: bytes allocated. */
  bytes: number;
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

function newSlot(dev: DevPtr, owner: number, bytes = 0, mapping = false): Slot {
  return {
    dev,
    mapping,
    owner,
    bytes,
    layer: -1,
    tickets: [],
    loaded: false,
    inUse: false,
    groups: new Set(),
    pending: new Map(),
    weights: null,
  };
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
  /** Whether part files are mapped (ops read them in place) rather than loaded. */
  readonly #mapped: boolean;
  readonly #small = new Map<string, { dev: DevPtr; mapped: boolean; weights: PartWeights }>();
  /** Per layer: its own slot (a buffer when resident; a mapping when mapped), else null. */
  readonly #own: (Slot | null)[];
  /** Per layer: its pinned host-tier copy (GPU), else null. */
  readonly #host: (DevPtr | null)[];
  readonly #pool: Slot[] = [];
  #plan: Plan;
  #closed = false;

  private constructor(be: Backend, dir: string, manifest: Manifest, opts: StoreOptions) {
    this.#be = be;
    this.#dir = dir;
    this.#opts = opts;
    this.#plan = opts.plan;
    this.#mapped = be.canMap && opts.mapFiles !== false;
    this.#layers = manifest.parts.filter((p) => p.id.startsWith("layer."));
    if (opts.plan.tiers.length !== this.#layers.length) {
      throw new InternalError(
        `a plan of ${opts.plan.tiers.length} layers for ${this.#layers.length}`,
      );
    }
    this.#layouts = this.#layers.map((p) => layoutOf(p, opts.lazyGroup));
    this.#paths = this.#layers.map((p) => cstr(`${dir}/${p.file}`));
    this.#own = this.#layers.map(() => null);
    this.#host = this.#layers.map(() => null);
  }

  /**
   * Checks every part file against the manifest (a changed or truncated file is never loaded),
   * loads the small parts and sets up the layers' homes.
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
      await store.#setUp(manifest);
    } catch (e) {
      store.close();
      throw e;
    }
    return store;
  }

  async #setUp(manifest: Manifest): Promise<void> {
    const be = this.#be;
    const anyResident = this.#plan.tiers.includes("resident");
    for (const p of manifest.parts) {
      if (p.id.startsWith("layer.")) continue;
      const path = cstr(`${this.#dir}/${p.file}`);
      // A part with no data (none today) still gets a valid pointer.
      const mapped = this.#mapped && !anyResident && p.dataBytes > 0;
      const dev = mapped
        ? be.map(path, p.dataOffset, p.dataBytes)
        : be.alloc(Math.max(p.dataBytes, 1));
      this.#small.set(p.id, { dev, mapped, weights: this.#weightsOf(dev, p, null, null) });
      if (p.dataBytes === 0) continue;
      this.#trace("read-start", p.id);
      be.loadWait(
        mapped
          ? be.prefetchStart(dev, p.dataBytes)
          : be.loadStart(dev, path, p.dataOffset, p.dataBytes),
      );
      this.#trace("read-end", p.id);
    }
    this.#apply(this.#plan);
    if (!this.#mapped) await this.#fillHostTier();
  }

  /**
   * Sets the plan up: resident layers get their own buffers, the others their mapping (when
   * mapped); the pool is sized.
   */
  #apply(plan: Plan): void {
    this.#be.setOption("drop_behind", plan.dropBehind ? 1 : 0);
    for (const i of this.#layers.keys()) this.#own[i] = this.#ownSlot(i, plan.tiers[i]);
    this.#sizePool();
  }

  /** The own slot of layer `i` in `tier`: a buffer when resident, its mapping, or none. */
  #ownSlot(i: number, tier: Tier): Slot | null {
    const p = this.#layers[i];
    if (tier === "resident") return newSlot(this.#be.alloc(Math.max(p.dataBytes, 1)), i);
    if (!this.#mapped) return null;
    return newSlot(this.#be.map(this.#paths[i], p.dataOffset, p.dataBytes), i, 0, true);
  }

  /** Frees or unmaps an own or pool slot's memory (its reads finished: see #empty). */
  #release(slot: Slot): void {
    if (slot.mapping) this.#be.unmap(slot.dev);
    else this.#be.free(slot.dev);
  }

  /** Whether `layer` streams through the pool (else it is read in its own slot or mapping). */
  #pooled(layer: number, plan = this.#plan): boolean {
    if (plan.tiers[layer] === "resident") return false;
    return !this.#mapped || plan.dropBehind;
  }

  /**
   * Makes the pool fit the pooled layers: prefetchDepth + 1 slots (1 without read-ahead) of the
   * largest one. Called between steps; a pool that must change is drained and reallocated.
   */
  #sizePool(): void {
    const pooled = this.#layers.filter((_, i) => this.#pooled(i));
    const bytes = Math.max(1, ...pooled.map((p) => p.dataBytes));
    const n = Math.min(pooled.length, this.#plan.prefetchDepth + 1);
    const fits = this.#pool.length >= n && this.#pool.every((s) => s.bytes >= bytes);
    if (fits && (n > 0 || this.#pool.length === 0)) return;
    for (const s of this.#pool) this.#empty(s);
    for (const s of this.#pool) this.#be.free(s.dev);
    this.#pool.length = 0;
    for (let i = 0; i < n; i++) this.#pool.push(newSlot(this.#be.alloc(bytes), -1, bytes));
  }

  /** Waits for every read into `slot` (unused) and leaves it holding nothing. */
  #empty(slot: Slot): void {
    this.#drainPending(slot);
    for (const t of slot.tickets) {
      try {
        this.#be.loadWait(t);
      } catch { /* a read nobody will use */ }
    }
    slot.tickets = [];
    slot.layer = -1;
    slot.loaded = false;
    slot.inUse = false;
    slot.groups.clear();
    slot.weights = null;
  }

  /** GPU: reads the host-tier layers into pinned host memory, once. */
  async #fillHostTier(): Promise<void> {
    for (const [i, p] of this.#layers.entries()) {
      if (this.#plan.tiers[i] !== "host" || p.dataBytes === 0) continue;
      const host = this.#be.hostAlloc(p.dataBytes);
      this.#host[i] = host;
      await this.#be.loadWaitAsync(
        this.#be.loadStart(host, this.#paths[i], p.dataOffset, p.dataBytes),
      );
    }
  }

  /** The plan in force. */
  get plan(): Plan {
    return this.#plan;
  }

  /**
   * Adopts a new plan between steps (the KV cache of a larger batch needs room). On mapped files
   * a layer changes tier in place: one that stops being resident is dropped now when streamed
   * layers drop behind, one that becomes resident is kept from its next use on. On a GPU the
   * buffers were sized at open, so a plan whose tiers differ is not adopted (false).
   */
  replan(plan: Plan): boolean {
    const sameTiers = plan.tiers.every((t, i) => t === this.#plan.tiers[i]);
    if (
      sameTiers && plan.dropBehind === this.#plan.dropBehind &&
      plan.prefetchDepth === this.#plan.prefetchDepth
    ) return true;
    if (!this.#mapped && (!sameTiers || plan.prefetchDepth !== this.#plan.prefetchDepth)) {
      return false;
    }
    const before = this.#plan;
    // Buffers for the layers that become resident first: if memory says no, nothing changed.
    // (Mapped, every layer has an own slot, so each of these replaces one below.)
    const fresh = new Map<number, Slot>();
    try {
      for (const i of this.#layers.keys()) {
        if (plan.tiers[i] === "resident" && before.tiers[i] !== "resident") {
          fresh.set(i, this.#ownSlot(i, "resident")!);
        }
      }
    } catch (e) {
      for (const s of fresh.values()) this.#release(s);
      throw e;
    }
    this.#plan = plan;
    this.#be.setOption("drop_behind", plan.dropBehind ? 1 : 0);
    for (const [i, own] of this.#own.entries()) {
      const wasPooled = this.#pooled(i, before), pooled = this.#pooled(i);
      if (wasPooled && !pooled) {
        const slot = this.#pool.find((s) => s.layer === i);
        if (slot) this.#empty(slot); // read ahead into the pool; the layer now lives elsewhere
      }
      const was = before.tiers[i] === "resident", is = plan.tiers[i] === "resident";
      if (own && was !== is) {
        // Residency moves the layer between its buffer and its mapping (loaded on next use).
        this.#empty(own);
        this.#release(own);
        this.#own[i] = fresh.get(i) ?? this.#ownSlot(i, plan.tiers[i]);
      } else if (own?.mapping && !wasPooled && pooled && own.layer === i) {
        // A layer leaving its mapping for the pool lets go of its pages.
        this.#empty(own);
        if (plan.dropBehind) this.#be.evict(own.dev, this.#layers[i].dataBytes);
      }
    }
    this.#sizePool();
    return true;
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
        offset: t.offset,
        nbytes: t.nbytes,
      });
    }
    const check = (local: string) => {
      const g = layout?.groupOf.get(local);
      if (g !== undefined && !slot!.groups.has(g)) {
        throw new InternalError(`${part.id} tensor ${local} used before load(["${g}"])`);
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

  /**
   * Starts bringing `ranges` of the data of the layer `slot` holds to the same offsets in the
   * slot: read ahead in place (mapped), copied from the host tier, or read from the file.
   */
  #read(slot: Slot, ranges: Range[]): bigint[] {
    const be = this.#be, layer = slot.layer;
    const at = (r: Range) => be.view(slot.dev, r.offset);
    if (slot.mapping) return ranges.map((r) => be.prefetchStart(at(r), r.bytes));
    const host = this.#host[layer];
    if (host) return ranges.map((r) => be.uploadStart(at(r), be.view(host, r.offset), r.bytes));
    const part = this.#layers[layer], path = this.#paths[layer];
    return ranges.map((r) => be.loadStart(at(r), path, part.dataOffset + r.offset, r.bytes));
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
    return this.#plan.tiers.filter((t) => t === "resident").length;
  }

  /** Weights of a small resident part ("embed", "norm", "lm_head"). */
  part(id: string): PartWeights {
    const p = this.#small.get(id);
    if (!p) throw new CheckpointError(this.#dir, `the split has no part ${id}`);
    return p.weights;
  }

  #tier(layer: number): Tier {
    return this.#plan.tiers[layer];
  }

  #slotHolding(layer: number): Slot | undefined {
    if (this.#pooled(layer)) return this.#pool.find((s) => s.layer === layer);
    const own = this.#own[layer];
    return own?.layer === layer ? own : undefined;
  }

  /** Starts loading `layer` into a slot unless it is loaded, being loaded, or no slot is free. */
  #startLoad(layer: number, protect: Set<number>): void {
    if (this.#slotHolding(layer)) return;
    let slot: Slot | null | undefined = this.#pooled(layer) ? null : this.#own[layer];
    if (!slot) {
      // A slot whose load is still pending is not reused: its bytes are still arriving.
      slot = this.#pool.find((s) => !s.inUse && s.tickets.length === 0 && !protect.has(s.layer));
      if (!slot) return;
    }
    const part = this.#layers[layer], layout = this.#layouts[layer];
    slot.layer = layer;
    slot.loaded = false;
    if (slot.owner !== layer) slot.weights = null; // views into a pool slot are per layer
    slot.groups = new Set();
    slot.pending = new Map();
    this.#trace("read-start", part.id);
    // A resident layer loads whole, groups included: its memory is reserved anyway, and decode
    // then never stalls on a first-time expert. Only streamed layers read groups on demand.
    const whole = this.#tier(layer) === "resident";
    if (whole) slot.groups = new Set(layout.groups.keys());
    slot.tickets = this.#read(slot, whole ? layout.whole : layout.eager);
  }

  /**
   * {@link acquire} without waiting: the weights of `layer` when they are already loaded (a
   * resident layer after its first use, a layer read ahead in time), else null and nothing done.
   */
  acquireLoaded(layer: number): PartWeights | null {
    if (this.#closed) return null;
    const slot = this.#slotHolding(layer);
    if (!slot?.loaded || !slot.weights) return null;
    slot.inUse = true;
    return slot.weights;
  }

  /** The weights of `layer` on the device, waiting for its load when needed. */
  async acquire(layer: number): Promise<PartWeights> {
    if (this.#closed) throw new ModelClosedError(this.#dir);
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.numLayers) {
      throw new InternalError(`layer ${layer} is not in [0, ${this.numLayers})`);
    }
    this.#startLoad(layer, new Set([layer]));
    const slot = this.#slotHolding(layer);
    if (!slot) throw new InternalError(`no free slot for layer ${layer}`);
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
      // A layer's own slot keeps its views (same memory every step); a pool slot's change.
      if (slot.owner !== layer || !slot.weights) {
        slot.weights = this.#weightsOf(slot.dev, this.#layers[layer], slot, this.#layouts[layer]);
      }
    }
    return slot.weights!;
  }

  /**
   * Starts loads of the next `prefetchDepth` layers after `layer` that stream (wrapping to the
   * next step); none at the plan's prefetch depth 0. Resident layers in between are skipped, so
   * the disk keeps working while they compute.
   */
  prefetchAfter(layer: number): void {
    const n = this.#layers.length;
    const ahead: number[] = [];
    for (let d = 1; d < n && ahead.length < this.#plan.prefetchDepth; d++) {
      const l = (layer + d) % n;
      if (this.#tier(l) !== "resident" || !this.#slotHolding(l)) ahead.push(l);
    }
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
    // A streamed layer's own mapping is read ahead again before its next use (a no-op while the
    // page cache keeps it).
    if (slot.owner === layer && this.#tier(layer) !== "resident") this.#unhold(slot, layer);
  }

  /**
   * Forgets that a mapped layer is loaded (its next use reads it ahead again); under drop-behind
   * its pages are dropped too. Not while in use or while reads into it are pending.
   */
  #unhold(slot: Slot, layer: number): void {
    if (slot.inUse || slot.tickets.length > 0 || slot.pending.size > 0) return;
    if (slot.loaded && this.#plan.dropBehind) {
      this.#be.evict(slot.dev, this.#layers[layer].dataBytes);
    }
    slot.layer = -1;
    slot.loaded = false;
    slot.groups.clear();
  }

  /** Waits for loads still in flight, then frees every device allocation. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const be = this.#be;
    for (const s of [...this.#own, ...this.#pool]) {
      if (!s) continue;
      this.#empty(s); // a failed prefetch nobody used: nothing to report at close
      this.#release(s);
    }
    for (const h of this.#host) if (h) be.hostFree(h);
    for (const p of this.#small.values()) {
      if (p.mapped) be.unmap(p.dev);
      else be.free(p.dev);
    }
    this.#small.clear();
  }
}
