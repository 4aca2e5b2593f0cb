/**
 * A one-line progress bar for long work (downloads, checkpoint splits): bytes done / total,
 * percent, rate and ETA, redrawn in place on stderr at most ten times a second, and a final line
 * when the work ends. It draws only when stderr is a terminal and `quiet` is not set; otherwise
 * every call is a no-op, so piped output and logs stay clean.
 *
 * @example
 * ```ts
 * import { progress } from "./progress.ts";
 * const p = progress("download org/name", 2_000_000, { quiet: true });
 * p.update(1_000_000);
 * p.update(2_000_000);
 * p.done();
 * ```
 *
 * @module
 */

/** Where and whether a bar draws; the defaults are stderr and its terminal check. */
export interface ProgressOptions {
  /** Draw nothing at all. */
  quiet?: boolean;
  /** Receives the bar's bytes; default `Deno.stderr`. */
  writer?: { writeSync(p: Uint8Array): number };
  /** Whether the writer is a terminal; default `Deno.stderr.isTerminal()`. */
  isTTY?: boolean;
  /** Milliseconds clock; default `performance.now`. */
  now?: () => number;
}

/** A running progress bar. */
export interface Progress {
  /** Sets the bytes done so far (absolute, not a delta); redraws when 100 ms have passed. */
  update(done: number): void;
  /** Draws the final line (bytes, elapsed time, average rate). Later calls do nothing. */
  done(): void;
}

const REDRAW_MS = 100;
const SILENT: Progress = { update() {}, done() {} };

/** Bytes with a decimal unit: `"512 B"`, `"3.4 MB"`, `"1.20 GB"`. */
export function formatBytes(n: number): string {
  if (n < 1e3) return `${Math.round(n)} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e9).toFixed(2)} GB`;
}

/** Seconds as `m:ss` or `h:mm:ss`. */
function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const pad = (x: number) => String(x).padStart(2, "0");
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

/**
 * Starts a progress bar labelled `label` over `total` bytes. The rate is the average since the
 * first `update`, so bytes that were already there (a resumed download) do not inflate it.
 */
export function progress(label: string, total: number, opts: ProgressOptions = {}): Progress {
  const isTTY = opts.isTTY ?? Deno.stderr.isTerminal();
  if (opts.quiet || !isTTY) return SILENT;
  const writer = opts.writer ?? Deno.stderr;
  const now = opts.now ?? (() => performance.now());
  const encoder = new TextEncoder();
  const write = (s: string) => {
    const bytes = encoder.encode(s);
    for (let off = 0; off < bytes.length;) off += writer.writeSync(bytes.subarray(off));
  };
  let first: { t: number; bytes: number } | undefined;
  let lastDraw = -Infinity;
  let current = 0;
  let finished = false;
  const rate = (t: number) => {
    if (!first || t <= first.t) return 0;
    return (current - first.bytes) / ((t - first.t) / 1000);
  };

  return {
    update(done: number) {
      if (finished) return;
      const t = now();
      first ??= { t, bytes: done };
      current = done;
      if (t - lastDraw < REDRAW_MS) return;
      lastDraw = t;
      const r = rate(t);
      const pct = total > 0 ? ` ${Math.floor((100 * done) / total)}%` : "";
      const eta = r > 0 && total > done ? formatDuration((total - done) / r) : "-:--";
      write(
        `\r${label}  ${formatBytes(done)}/${formatBytes(total)}${pct}  ` +
          `${formatBytes(r)}/s  ETA ${eta}\x1b[K`,
      );
    },
    done() {
      if (finished) return;
      finished = true;
      const t = now();
      const amount = current === total
        ? formatBytes(total)
        : `${formatBytes(current)} of ${formatBytes(total)}`;
      const elapsed = first ? (t - first.t) / 1000 : 0;
      write(
        `\r${label}  ${amount} in ${formatDuration(elapsed)} (${formatBytes(rate(t))}/s)\x1b[K\n`,
      );
    },
  };
}
