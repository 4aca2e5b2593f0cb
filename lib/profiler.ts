/**
 * Where the time of forward passes went, per category. The engine adds host-timed spans; on the
 * CPU backend ops are synchronous so host timers measure them exactly. (A GPU backend times its
 * async work with device events and reports through the same categories.)
 *
 * @module
 */

/** Categories the engine reports. */
export type ProfileCategory =
  | "read wait" // the streaming loop waiting for a layer (or its routed experts) to load
  | "layers" // decoder layer compute
  | "embed + head" // embedding gather, final norm, lm_head
  | "logits download" // device → host copy of the logits rows
  | "sampling"; // logits processors and token choice on the host

/** One category's totals. */
export interface ProfileEntry {
  /** What the time was spent on. */
  category: ProfileCategory;
  /** Milliseconds in all. */
  ms: number;
  /** Spans recorded. */
  count: number;
}

/** Accumulates spans per category; cheap enough to stay on. */
export class Profiler {
  readonly #totals = new Map<ProfileCategory, { ms: number; count: number }>();
  /** Compute ms per decoder layer. */
  readonly #layers: number[] = [];
  #tokens = 0;
  #steps = 0;

  /** Adds a span; `layer` attributes decoder-layer compute to its layer. */
  add(category: ProfileCategory, ms: number, layer: number | null = null): void {
    if (layer !== null) this.#layers[layer] = (this.#layers[layer] ?? 0) + ms;
    const t = this.#totals.get(category);
    if (t) {
      t.ms += ms;
      t.count++;
    } else this.#totals.set(category, { ms, count: 1 });
  }

  /** Counts one forward step that produced `tokens` new tokens. */
  step(tokens: number): void {
    this.#steps++;
    this.#tokens += tokens;
  }

  /** Forgets everything recorded so far. */
  reset(): void {
    this.#totals.clear();
    this.#layers.length = 0;
    this.#tokens = 0;
    this.#steps = 0;
  }

  /** Totals per category, largest first, for tools. */
  toJSON(): { steps: number; tokens: number; entries: ProfileEntry[]; layerMs: number[] } {
    const entries = [...this.#totals].map(([category, t]) => ({ category, ...t }));
    entries.sort((a, b) => b.ms - a.ms);
    return { steps: this.#steps, tokens: this.#tokens, entries, layerMs: [...this.#layers] };
  }

  /** A table: category, total ms, share of the in-loop time, ms per step. */
  summary(): string {
    const { steps, tokens, entries } = this.toJSON();
    const loop = entries.reduce((s, e) => s + e.ms, 0);
    const lines = [
      `${steps} steps, ${tokens} tokens`,
      "category         total ms   share  ms/step",
    ];
    for (const e of entries) {
      const share = `${(100 * e.ms / (loop || 1)).toFixed(1)}%`;
      lines.push(
        `${e.category.padEnd(15)} ${e.ms.toFixed(1).padStart(9)}  ${share.padStart(6)}  ${
          (e.ms / Math.max(steps, 1)).toFixed(2).padStart(7)
        }`,
      );
    }
    return lines.join("\n");
  }
}
