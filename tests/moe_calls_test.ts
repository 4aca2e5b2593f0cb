/**
 * A MoE layer's backend calls grow with the experts its tokens chose, not with the tokens: each
 * chosen expert is one row gather, its MLP on that batch and one weighted scatter-add
 * (rl_gather_rows / rl_scatter_add_rows), whatever T·k is. Counted by wrapping every method of the
 * model's Backend and attributing each call to the layer whose compute is in progress (trace).
 */
import assert from "node:assert/strict";
import { AutoModel, type TraceEvent } from "../mod.ts";
import { Backend } from "../ffi/backend.ts";

const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url).pathname;
const splitDir = (name: string) =>
  new URL(`./.tmp/split/moe-calls-${name}`, import.meta.url).pathname;

/** Wraps every method of `be` (on the instance) so each call adds 1 to the current part's count. */
function countCalls(be: Backend, trace: TraceEvent[]): Map<string, number> {
  const counts = new Map<string, number>();
  const current = () => {
    for (let i = trace.length - 1; i >= 0; i--) {
      const e = trace[i];
      if (e.kind === "compute-start") return e.part;
      if (e.kind === "compute-end") return "(between parts)";
    }
    return "(before)";
  };
  const target = be as unknown as Record<string, (...args: unknown[]) => unknown>;
  for (const name of Object.getOwnPropertyNames(Backend.prototype)) {
    const d = Object.getOwnPropertyDescriptor(Backend.prototype, name)!;
    if (name === "constructor" || typeof d.value !== "function") continue;
    const method = d.value as (...args: unknown[]) => unknown;
    target[name] = function (this: unknown, ...args: unknown[]) {
      const part = current();
      counts.set(part, (counts.get(part) ?? 0) + 1);
      return method.apply(be, args);
    };
  }
  return counts;
}

for (const name of ["qwen2_moe", "mixtral"]) {
  Deno.test(`moe ${name}: a 64-token prefill costs O(experts) backend calls per layer, not O(T·k)`, async () => {
    const trace: TraceEvent[] = [];
    await using model = await AutoModel.fromPretrained(fixture(name), {
      layerShardsSavingPath: splitDir(name),
      maxResidentBytes: 0,
      prefetching: false,
      trace,
    });
    const raw = model.config.raw;
    const E = (raw.num_experts ?? raw.num_local_experts) as number;
    const k = raw.num_experts_per_tok as number;
    const T = 64;
    const ids = Array.from({ length: T }, (_, i) => (i * 7 + 3) % 256);
    await model.forward([ids]); // grows the scratch buffers (allocations are not per layer)
    trace.length = 0;
    const counts = countCalls(model.backend, trace);
    await model.forward([ids]);
    const routes = trace.filter((e) => e.kind === "route");
    assert.ok(routes.length > 0, "the fixture has MoE layers");
    for (const r of routes) {
      const calls = counts.get(r.part) ?? 0;
      const chosen = new Set(r.experts!).size;
      assert.equal(r.experts!.length, T * k);
      // Per chosen expert: gather, 3 matmuls, act_mul, scatter-add, its prefetch, load wait and
      // views; the rest (norms, attention, router, shared expert, timing marks) is a constant.
      assert.ok(calls <= 12 * chosen + 48, `${r.part}: ${calls} calls for ${chosen} experts`);
      assert.ok(calls < T * k, `${r.part}: ${calls} calls, T·k = ${T * k}`);
      assert.ok(chosen <= E);
    }
  });
}
