/**
 * Shared by the direct engine tests (store_test.ts, step_test.ts): a fixture split the way
 * AutoModel.fromPretrained makes it, a CPU backend, and hand-made plans.
 */
import { Backend, type DevPtr } from "../../ffi/backend.ts";
import { type Checkpoint, openCheckpoint, splitWithProgress } from "../../lib/auto_model.ts";
import type { Split } from "../../lib/checkpoint.ts";
import type { Plan, Tier } from "../../lib/engine/planner.ts";
import { LayerStore, type StoreOptions } from "../../lib/engine/store.ts";

export const fixture = (name: string) => new URL(`../fixtures/${name}`, import.meta.url).pathname;
export const splitDir = (name: string) =>
  new URL(`../.tmp/split/${name}`, import.meta.url).pathname;

/** The checkpoint of a fixture and its split under tests/.tmp/split/<tag>-<name>. */
export async function splitFixture(
  name: string,
  tag: string,
): Promise<{ ck: Checkpoint; split: Split }> {
  const ck = await openCheckpoint(fixture(name), { quiet: true });
  const split = await splitWithProgress(ck, {
    layerShardsSavingPath: splitDir(`${tag}-${name}`),
    quiet: true,
  });
  return { ck, split };
}

/** A plan with the given tiers; the accounting fields are not read by the store. */
export function planOf(
  tiers: Tier[],
  opts: { dropBehind?: boolean; prefetchDepth?: number } = {},
): Plan {
  return {
    tiers,
    dropBehind: opts.dropBehind ?? false,
    prefetchDepth: opts.prefetchDepth ?? 0,
    bytes: { resident: 0, host: 0, stream: 0 },
    perToken: { device: 0, host: 0, pageCache: 0, disk: 0 },
    budget: { host: null, device: null, reserve: 0 },
    notes: [],
  };
}

/** A CPU backend and a store over a fixture's split; close() closes both. */
export async function openStore(
  name: string,
  tag: string,
  opts: StoreOptions,
): Promise<
  { ck: Checkpoint; split: Split; be: Backend; store: LayerStore; [Symbol.dispose](): void }
> {
  const { ck, split } = await splitFixture(name, tag);
  const be = Backend.open({ device: "cpu" });
  let store: LayerStore;
  try {
    store = await LayerStore.open(be, split.dir, split.manifest, opts);
  } catch (e) {
    be.close();
    throw e;
  }
  return {
    ck,
    split,
    be,
    store,
    [Symbol.dispose]() {
      store.close();
      be.close();
    },
  };
}

/** The float32 tensor at `p`, downloaded. */
export function download(be: Backend, p: DevPtr, floats: number): Float32Array {
  const out = new Float32Array(floats);
  be.download(out, p);
  return out;
}
