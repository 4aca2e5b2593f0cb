/**
 * Per-layer K/V on the device, kept between steps. Layout per layer: K and V each
 * [batch, capacity, numKvHeads * headDim] fp32, allocated on first use of the layer.
 *
 * @module
 */
import type { Backend, DevPtr } from "../../ffi/backend.ts";
import type { ModelConfig } from "../config.ts";

/**
 * Bytes the engine allocates besides weights for a step of `stepRows` token rows over a cache of
 * `batch` sequences of `kvTokens`: K and V of every layer, the step's activations, and the
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
  const kv = 2 * cfg.numLayers * cfg.numKvHeads * cfg.headDim * 4 * batch * kvTokens;
  const row = 4 * cfg.hiddenSize + 2 * cfg.numHeads * cfg.headDim + 3 * cfg.intermediateSize;
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
  readonly #layers: ({ k: DevPtr; v: DevPtr } | null)[];
  /** Floats per cached token: numKvHeads * headDim. */
  readonly kvDim: number;

  constructor(be: Backend, cfg: ModelConfig, readonly batch: number, readonly capacity: number) {
    this.#be = be;
    this.kvDim = cfg.numKvHeads * cfg.headDim;
    this.#layers = new Array(cfg.numLayers).fill(null);
    this.valid = Array.from({ length: batch }, () => new Uint8Array(capacity));
    this.nextPosition = new Int32Array(batch);
  }

  /** Device bytes of one layer's K (or V). */
  get layerBytes(): number {
    return this.batch * this.capacity * this.kvDim * 4;
  }

  /** K and V of `layer`, allocated on first use. */
  layer(layer: number): { k: DevPtr; v: DevPtr } {
    let kv = this.#layers[layer];
    if (!kv) {
      kv = { k: this.#be.alloc(this.layerBytes), v: this.#be.alloc(this.layerBytes) };
      this.#layers[layer] = kv;
    }
    return kv;
  }

  /** Byte offset of token `pos` of sequence `row` inside a layer's K or V. */
  offset(row: number, pos: number): number {
    return (row * this.capacity + pos) * this.kvDim * 4;
  }

  /** Frees the device memory. Idempotent. */
  free(): void {
    for (const [i, kv] of this.#layers.entries()) {
      if (!kv) continue;
      this.#be.free(kv.k);
      this.#be.free(kv.v);
      this.#layers[i] = null;
    }
    this.length = 0;
    this.nextPosition.fill(0);
  }
}
