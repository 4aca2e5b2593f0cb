/**
 * linearJoined (lib/models/blocks.ts): at T = 1, linears whose weights lie back to back in a part
 * run as one matmul into back-to-back outputs; anything else is left to the separate linears.
 * Over a real split's layer on the CPU backend, against the separate matmuls.
 */
import assert from "node:assert/strict";
import type { Backend, DevPtr } from "../../ffi/backend.ts";
import { linearJoined, type LinearSpec } from "../../lib/models/blocks.ts";
import type { LayerContext } from "../../lib/models/family.ts";
import { download, openStore, planOf } from "./_helpers.ts";

const lin = (name: string, bias = false): LinearSpec => ({ name: `self_attn.${name}`, bias });
const Q = lin("q_proj"), K = lin("k_proj"), V = lin("v_proj");

/** A backend whose matmul calls are counted. */
function counting(be: Backend): { be: Backend; calls: () => number } {
  let n = 0;
  const proxy = new Proxy(be, {
    get(target, key) {
      const v = Reflect.get(target, key, target);
      if (key === "matmul") {
        return (...a: Parameters<Backend["matmul"]>) => {
          n++;
          return target.matmul(...a);
        };
      }
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  return { be: proxy, calls: () => n };
}

Deno.test("linearJoined: q, k, v back to back are one matmul, equal to three", async () => {
  using s = await openStore("llama_tied", "joined", { plan: planOf(["resident", "resident"]) });
  const cfg = s.ck.config, D = cfg.hiddenSize;
  const qDim = cfg.numHeads * cfg.headDim, kvDim = cfg.numKvHeads * cfg.headDim;
  const N = qDim + 2 * kvDim;
  const w = await s.store.acquire(0);
  const x = s.be.alloc(D * 4);
  s.be.upload(x, Float32Array.from({ length: D }, (_, i) => Math.sin(i * 0.37) * 2));
  const out = s.be.alloc(N * 4), sep = s.be.alloc(N * 4);
  const { be, calls } = counting(s.be);
  const ctx = (T: number, joined: boolean) =>
    ({ be, cfg, T, joinedScratch: joined }) as unknown as LayerContext;

  assert.equal(linearJoined(ctx(1, true), w, [Q, K, V], out, x, N, D), true);
  assert.equal(calls(), 1, "one matmul");
  let at = 0;
  for (const [l, n] of [[Q, qDim], [K, kvDim], [V, kvDim]] as const) {
    const t = w.get(`${l.name}.weight`);
    s.be.matmul(s.be.view(sep, at * 4), x, t.ptr, t.dtype, null, 1, n, D);
    at += n;
  }
  assert.deepEqual(download(s.be, out, N), download(s.be, sep, N), "the same floats as three");

  // Not joined, nothing done: T > 1, the engine's layout unknown, a bias, weights out of order,
  // a wrong total.
  const before = calls();
  const no = (c: LayerContext, ls: LinearSpec[], n = N) =>
    assert.equal(linearJoined(c, w, ls, out, x, n, D), false);
  no(ctx(2, true), [Q, K, V]);
  no(ctx(1, false), [Q, K, V]);
  no(ctx(1, true), [Q, lin("k_proj", true), V]);
  no(ctx(1, true), [Q, V, K]);
  no(ctx(1, true), [K, Q, V]);
  no(ctx(1, true), [Q, K, V], N - 1);
  assert.equal(calls(), before, "no matmul when not joined");
  s.store.release(0);
  for (const p of [x, out, sep] as DevPtr[]) s.be.free(p);
});
