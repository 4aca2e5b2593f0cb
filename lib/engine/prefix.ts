/**
 * The model's session KV cache and prefix reuse: which token ids the cache holds, and whether a
 * new prompt extends them (a chat's earlier turns), so that only its new tokens are fed.
 *
 * @module
 */
import type { Backend } from "../../ffi/backend.ts";
import type { ModelConfig } from "../config.ts";
import { InputError } from "../errors.ts";
import { KVCache } from "./kv_cache.ts";

/** The KV cache kept between calls, and the ids it holds. */
export class SessionCache {
  #cache: KVCache | null = null;
  /** The token ids whose K/V the cache holds (one sequence), for prefix reuse. */
  #ids: number[] = [];

  constructor(
    private readonly be: Backend,
    private readonly cfg: ModelConfig,
    /** Capacity of a cache, in tokens per sequence. */
    private readonly maxSeqLen: number,
    /** Names the model in messages. */
    private readonly source: string,
  ) {}

  /** Slots used in the cache (per sequence); 0 when there is none. */
  get length(): number {
    return this.#cache?.length ?? 0;
  }

  /** Sequences the cache holds, or null when there is none. */
  get batch(): number | null {
    return this.#cache?.batch ?? null;
  }

  /** Empties the cache (and forgets its ids). */
  reset(): void {
    this.#cache?.free();
    this.#cache = null;
    this.#ids = [];
  }

  /** The session cache for `batch` sequences; an empty one of another batch is replaced. */
  session(batch: number): KVCache {
    if (this.#cache && this.#cache.batch !== batch) {
      if (this.#cache.length > 0) {
        throw new InputError(
          `the KV cache holds ${this.#cache.batch} sequences, the input has ${batch}; call resetCache() first`,
        );
      }
      this.reset();
    }
    this.#cache ??= new KVCache(this.be, this.cfg, batch, this.maxSeqLen);
    return this.#cache;
  }

  /** A cache for one stateless pass of `batch` rows of `seq` tokens; the caller frees it. */
  temp(batch: number, seq: number): KVCache {
    if (seq > this.maxSeqLen) {
      throw new InputError(`${this.source}: ${seq} tokens exceed maxSeqLen ${this.maxSeqLen}`);
    }
    return new KVCache(this.be, this.cfg, batch, seq);
  }

  /**
   * Starts a generation over `rows`: when `allow` and the single prompt extends the cached ids,
   * keeps the cache and returns how many leading tokens it already holds; otherwise empties it
   * and returns 0.
   */
  begin(rows: readonly (readonly number[])[], allow: boolean): number {
    const cached = this.#ids;
    const reuse = allow && rows.length === 1 && this.#cache?.batch === 1 &&
      cached.length > 0 && cached.length < rows[0].length &&
      cached.every((t, i) => rows[0][i] === t);
    if (!reuse) {
      this.reset();
      return 0;
    }
    return cached.length;
  }

  /** Records the ids the cache now holds ([] when they are not tracked). */
  remember(ids: readonly number[]): void {
    this.#ids = [...ids];
  }

  /** Frees the device memory. Idempotent. */
  free(): void {
    this.#cache?.free();
  }
}
