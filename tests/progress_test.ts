import assert from "node:assert/strict";
import { progress } from "../lib/progress.ts";

/** A fake stderr that records what is drawn, and a clock the test moves. */
function terminal() {
  const out: string[] = [];
  const decoder = new TextDecoder();
  let t = 0;
  return {
    out,
    tick(ms: number) {
      t += ms;
    },
    opts: {
      isTTY: true,
      now: () => t,
      writer: {
        writeSync(p: Uint8Array) {
          out.push(decoder.decode(p));
          return p.length;
        },
      },
    },
  };
}

Deno.test("progress: silent when stderr is not a terminal, or quiet", () => {
  for (const extra of [{ isTTY: false }, { isTTY: true, quiet: true }]) {
    const term = terminal();
    const p = progress("download acme/tiny", 1000, { ...term.opts, ...extra });
    p.update(500);
    term.tick(1000);
    p.update(1000);
    p.done();
    assert.deepEqual(term.out, []);
  }
});

Deno.test("progress: draws bytes, percent, rate and ETA in place on a terminal", () => {
  const term = terminal();
  const p = progress("download acme/tiny", 10e6, term.opts);
  p.update(0);
  term.tick(1000);
  p.update(5e6);
  assert.deepEqual(term.out, [
    "\rdownload acme/tiny  0 B/10.0 MB 0%  0 B/s  ETA -:--\x1b[K",
    "\rdownload acme/tiny  5.0 MB/10.0 MB 50%  5.0 MB/s  ETA 0:01\x1b[K",
  ]);
  term.tick(1000);
  p.update(10e6);
  p.done();
  assert.equal(term.out.at(-1), "\rdownload acme/tiny  10.0 MB in 0:02 (5.0 MB/s)\x1b[K\n");
});

Deno.test("progress: redraws at most every 100 ms; the final line is always drawn once", () => {
  const term = terminal();
  const p = progress("split", 3e9, term.opts);
  for (let i = 1; i <= 100; i++) {
    term.tick(10); // 100 updates over one second
    p.update(i * 1e7);
  }
  assert.equal(term.out.length, 10);
  p.done();
  p.done();
  p.update(3e9);
  assert.equal(term.out.length, 11);
  assert.equal(term.out[10], "\rsplit  1.00 GB of 3.00 GB in 0:01 (1.00 GB/s)\x1b[K\n");
});

Deno.test("progress: bytes present before the first update (a resumed download) do not count as rate", () => {
  const term = terminal();
  const p = progress("download acme/tiny", 8e6, term.opts);
  p.update(4e6); // resumed from a partial file
  term.tick(2000);
  p.update(6e6);
  assert.equal(
    term.out.at(-1),
    "\rdownload acme/tiny  6.0 MB/8.0 MB 75%  1.0 MB/s  ETA 0:02\x1b[K",
  );
});
