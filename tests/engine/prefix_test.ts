/**
 * SessionCache (lib/engine/prefix.ts): which prompts reuse the cached prefix, and the cache's
 * device memory. Runs on a counting stand-in for the backend.
 */
import assert from "node:assert/strict";
import type { Backend } from "../../ffi/backend.ts";
import type { ModelConfig } from "../../lib/config.ts";
import { InputError } from "../../lib/errors.ts";
import { SessionCache } from "../../lib/engine/prefix.ts";

function fakeBackend() {
  const live = new Set<number>();
  let next = 1;
  const be = {
    alloc: () => {
      live.add(next);
      return next++;
    },
    free: (p: number) => {
      assert.ok(live.delete(p), `free of ${p}, not allocated`);
    },
  } as unknown as Backend;
  return { be, live };
}

const cfg = { numLayers: 2, numKvHeads: 1, headDim: 4 } as unknown as ModelConfig;

Deno.test("prefix: a prompt extending the remembered ids keeps the cache and skips them", () => {
  const { be, live } = fakeBackend();
  const kv = new SessionCache(be, cfg, 16, "test");
  assert.equal(kv.begin([[1, 2, 3]], true), 0); // nothing cached yet
  const c = kv.session(1);
  c.layer(0);
  c.length = 3;
  kv.remember([1, 2, 3, 4]);
  assert.equal(kv.begin([[1, 2, 3, 4, 5, 6]], true), 4);
  assert.equal(kv.length, 3);
  assert.equal(kv.session(1), c);
  assert.equal(live.size, 2);
  kv.free();
  assert.equal(live.size, 0);
});

Deno.test("prefix: anything else starts from an empty cache", () => {
  const { be, live } = fakeBackend();
  const kv = new SessionCache(be, cfg, 16, "test");
  const fill = () => {
    kv.session(1).layer(1);
    kv.session(1).length = 2;
    kv.remember([1, 2]);
  };
  const cases: [number[][], boolean][] = [
    [[[1, 2, 3]], false], // reuse not asked for
    [[[1, 9, 3]], true], // diverges
    [[[1, 2]], true], // no new token
    [[[1]], true], // shorter
    [[[1, 2, 3], [1, 2, 3]], true], // a batch
  ];
  for (const [rows, allow] of cases) {
    fill();
    assert.equal(kv.begin(rows, allow), 0, JSON.stringify(rows));
    assert.equal(kv.length, 0);
    assert.equal(kv.batch, null);
    assert.equal(live.size, 0);
  }
  fill();
  kv.remember([]); // ids fed by hand are not tracked
  assert.equal(kv.begin([[1, 2, 3]], true), 0);
});

Deno.test("prefix: a cache of another batch is replaced only while empty", () => {
  const { be, live } = fakeBackend();
  const kv = new SessionCache(be, cfg, 16, "test");
  kv.session(2).layer(0);
  assert.equal(kv.batch, 2);
  kv.session(1); // empty: replaced
  assert.equal(kv.batch, 1);
  assert.equal(live.size, 0);
  kv.session(1).length = 1;
  assert.throws(() => kv.session(2), InputError);
  assert.throws(() => kv.temp(1, 17), InputError);
  const t = kv.temp(1, 16);
  assert.equal(t.capacity, 16);
  t.free();
  kv.reset();
  assert.equal(kv.length, 0);
  assert.equal(live.size, 0);
});
