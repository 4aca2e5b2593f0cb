/**
 * Per-layer K/V on the device, kept between steps. Layout per layer (config.ts `cacheLayout`):
 * keys [batch, capacity, kvHeads * keyDim] fp32 and values [batch, capacity, kvHeads * valueDim]
 * — or, for a shared (MLA latent) layout, the key rows alone, the values being read from them.
 * Allocated on first use of the layer.
 *
 * @module
 */
import type { Backend, DevPtr } from "../../ffi/backend.ts";
import { cacheFloatsPerToken, type CacheLayout, cacheLayout, type ModelConfig } from "../config.ts";

/**
 * Bytes the engine allocates besides weights for a step of `stepRows` token rows over a cache of
 * `batch` sequences of `kvTokens`: the KV cache of every layer, the step's activations, and the
 * logits of `logitRows` rows (on the device and their host copy). What the memory planner
 * reserves.
 */
export function workBytes(
  cfg: ModelConfig,
  batch: number,
  kvTokens: number,
  stepRows = batch * kvTokens,
  logitRows = batch,
): number {
  const kv = cfg.numLayers * cacheFloatsPerToken(cfg) * 4 * batch * kvTokens;
  const c = cacheLayout(cfg);
  // Queries and attention output per token row (an MLA step holds latent queries and outputs).
  const heads = cfg.numHeads * (c.sharedKV ? c.keyDim + c.valueDim : 2 * cfg.headDim);
  const row = 4 * cfg.hiddenSize + heads + 3 * cfg.intermediateSize;
  return kv + 4 * stepRows * row + 2 * 4 * logitRows * cfg.vocabSize;
}

/** Per-layer K/V of `batch` sequences of up to `capacity` tokens. */
export class KVCache {
  /** Slots used per sequence (real tokens and left padding). */
  length = 0;
  /** Per sequence: 1 where the slot holds a real token, 0 for padding. */
  readonly valid: Uint8Array[];
  /** Per sequence: the position (rope) of its next real token. */
  readonly nextPosition: Int32Array;
  readonly #be: Backend;
  readonly #layers: ({ k: DevPtr; v: DevPtr | null } | null)[];
  readonly layout: CacheLayout;
  /** Floats per cached key row: kvHeads * keyDim. */
  readonly keyFloats: number;
  /** Floats per cached value row (kvHeads * valueDim), or 0 when values are read from the keys. */
  readonly valueFloats: number;

  constructor(be: Backend, cfg: ModelConfig, readonly batch: number, readonly capacity: number) {
    this.#be = be;
    this.layout = cacheLayout(cfg);
    this.keyFloats = this.layout.kvHeads * this.layout.keyDim;
    this.valueFloats = this.layout.sharedKV ? 0 : this.layout.kvHeads * this.layout.valueDim;
    this.#layers = new Array(cfg.numLayers).fill(null);
    this.valid = Array.from({ length: batch }, () => new Uint8Array(capacity));
    this.nextPosition = new Int32Array(batch);
  }

  /** Device bytes of one layer's cache (keys and values). */
  get layerBytes(): number {
    return this.batch * this.capacity * (this.keyFloats + this.valueFloats) * 4;
  }

  /** Keys and values of `layer` (v null: read from k), allocated on first use. */
  layer(layer: number): { k: DevPtr; v: DevPtr | null } {
    let kv = this.#layers[layer];
    if (!kv) {
      const rows = this.batch * this.capacity * 4;
      const k = this.#be.alloc(rows * this.keyFloats);
      let v: DevPtr | null = null;
      try {
        if (this.valueFloats > 0) v = this.#be.alloc(rows * this.valueFloats);
      } catch (e) {
        this.#be.free(k);
        throw e;
      }
      kv = { k, v };
      this.#layers[layer] = kv;
    }
    return kv;
  }

  /** Byte offset of token `pos` of sequence `row` inside a layer's rows of `floats` each. */
  offset(row: number, pos: number, floats: number): number {
    return (row * this.capacity + pos) * floats * 4;
  }

  /** Frees the device memory. Idempotent. */
  free(): void {
    for (const [i, kv] of this.#layers.entries()) {
      if (!kv) continue;
      this.#be.free(kv.k);
      if (kv.v) this.#be.free(kv.v);
      this.#layers[i] = null;
    }
    this.length = 0;
    this.nextPosition.fill(0);
  }
}
