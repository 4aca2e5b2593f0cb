/**
 * MoE layers read only the experts their tokens route to: measured with the backend's byte
 * counter (H2D bytes of waited loads) against the split's manifest, with the routing checked
 * against the per-expert counts transformers recorded for the fixture (reference.json `routing`).
 */
import assert from "node:assert/strict";
import { AutoModel, type TraceEvent } from "../mod.ts";
import type { Manifest, ManifestPart } from "../lib/checkpoint.ts";
import { expertGroup } from "../lib/models/moe.ts";

const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url).pathname;
const splitDir = (name: string) => new URL(`./.tmp/split/moe-${name}`, import.meta.url).pathname;

interface Ref {
  logits: { input_ids: number[][]; dims: [number, number, number] };
  routing: number[][];
}

async function load(name: string) {
  const ref: Ref = JSON.parse(await Deno.readTextFile(`${fixture(name)}/reference.json`));
  const logits = new Float32Array((await Deno.readFile(`${fixture(name)}/logits.bin`)).buffer);
  return { ref, logits };
}

async function manifestOf(name: string): Promise<Manifest> {
  return JSON.parse(await Deno.readTextFile(`${splitDir(name)}/manifest.json`));
}

/** Bytes of a layer part's tensors that load with the layer (no group), or of one group. */
function bytesOf(part: ManifestPart, group: string | null): number {
  return part.tensors.filter((t) => expertGroup(t.name) === group)
    .reduce((s, t) => s + t.nbytes, 0);
}

function open(name: string, trace: TraceEvent[], maxResidentBytes = 0) {
  return AutoModel.fromPretrained(fixture(name), {
    layerShardsSavingPath: splitDir(name),
    maxResidentBytes,
    prefetching: false,
    trace,
  });
}

for (const name of ["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3"]) {
  Deno.test(`moe ${name}: one token reads only its routed experts' bytes`, async () => {
    const { ref, logits } = await load(name);
    const trace: TraceEvent[] = [];
    await using model = await open(name, trace);
    const m = await manifestOf(name);
    const layers = m.parts.filter((p) => p.id.startsWith("layer."));
    const k = model.config.raw.num_experts_per_tok as number;
    // A first step uploads the families' constants (DeepSeek's MLA selection matrices).
    await model.forward([[ref.logits.input_ids[0][1]]]);
    trace.length = 0;
    const before = model.backend.stats().h2dBytes;
    // The first token alone at position 0 is row (0, 0) of the reference logits (causal).
    const out = await model.forward([[ref.logits.input_ids[0][0]]]);
    const read = model.backend.stats().h2dBytes - before;

    let expected = 0, full = 0, moeLayers = 0;
    for (const p of layers) {
      full += p.dataBytes;
      expected += bytesOf(p, null);
      const route = trace.find((e) => e.kind === "route" && e.part === p.id);
      const groups = trace.filter((e) => e.kind === "read-end" && e.part.startsWith(`${p.id}/`))
        .map((e) => e.part.slice(p.id.length + 1)).sort();
      if (!route) {
        assert.deepEqual(groups, [], `${p.id} is dense: no groups`);
        assert.equal(bytesOf(p, null), p.dataBytes);
        continue;
      }
      moeLayers++;
      assert.equal(route.experts!.length, k);
      const chosen = [...new Set(route.experts!)].sort().map((e) => `expert.${e}`);
      assert.deepEqual(groups, chosen, `${p.id} read exactly the chosen experts`);
      for (const g of groups) expected += bytesOf(p, g);
    }
    assert.ok(moeLayers > 0);
    assert.equal(read, expected, "H2D bytes = always-needed bytes + routed experts' bytes");
    assert.ok(read < full, `read ${read} of ${full} layer bytes`);

    const V = ref.logits.dims[2];
    const want = logits.subarray(0, V);
    const tol = 1e-4 * Math.max(...want.map(Math.abs));
    for (let v = 0; v < V; v++) assert.ok(Math.abs(out[v] - want[v]) <= tol, `logit ${v}`);
  });

  Deno.test(`moe ${name}: routing of the logits batch matches transformers'`, async () => {
    const { ref } = await load(name);
    const trace: TraceEvent[] = [];
    await using model = await open(name, trace);
    trace.length = 0;
    await model.forward(ref.logits.input_ids);
    const routes = trace.filter((e) => e.kind === "route");
    assert.equal(routes.length, ref.routing.length, "one routing per MoE layer");
    routes.forEach((r, i) => {
      const counts = new Array(ref.routing[i].length).fill(0);
      for (const e of r.experts!) counts[e]++;
      assert.deepEqual(counts, ref.routing[i], `${r.part}: times each expert was chosen`);
    });
  });
}

Deno.test("moe: a resident layer loads whole on first use, groups included, once", async () => {
  const trace: TraceEvent[] = [];
  await using model = await open("mixtral", trace, 1 << 30);
  assert.equal(model.residentLayers, 2);
  const m = await manifestOf("mixtral");
  const layerBytes = m.parts.filter((p) => p.id.startsWith("layer."))
    .reduce((s, p) => s + p.dataBytes, 0);
  const ids = [[5, 9, 17]];
  let before = model.backend.stats().h2dBytes;
  await model.forward(ids);
  assert.equal(model.backend.stats().h2dBytes - before, layerBytes, "every layer byte, once");
  assert.equal(trace.filter((e) => e.kind === "read-start" && e.part.includes("/")).length, 0);
  trace.length = 0;
  before = model.backend.stats().h2dBytes;
  await model.forward([[40, 41, 42, 43, 44, 45, 46]]);
  assert.equal(model.backend.stats().h2dBytes, before, "nothing read again");
  assert.equal(trace.filter((e) => e.kind.startsWith("read")).length, 0);
});

Deno.test("moe: the split stores each expert contiguously after the always-needed tensors", async () => {
  await using _model = await open("qwen2_moe", []);
  const m = await manifestOf("qwen2_moe");
  for (const p of m.parts.filter((p) => p.id.startsWith("layer."))) {
    const groups = p.tensors.map((t) => expertGroup(t.name));
    const firstGroup = groups.findIndex((g) => g !== null);
    if (firstGroup < 0) continue;
    assert.ok(groups.slice(firstGroup).every((g) => g !== null), `${p.id}: groups last`);
    const runs = groups.slice(firstGroup).filter((g, i, a) => i === 0 || a[i - 1] !== g);
    assert.equal(new Set(runs).size, runs.length, `${p.id}: each expert in one run`);
  }
});

Deno.test("moe: a failed expert read is an error naming the file; the next step reads it afresh", async () => {
  const trace: TraceEvent[] = [];
  await using model = await open("mixtral", trace);
  const m = await manifestOf("mixtral");
  const part = m.parts.find((p) => p.id === "layer.1")!;
  const path = `${splitDir("mixtral")}/${part.file}`;
  const original = await Deno.readFile(path);
  const ids = [[5, 9, 17, 33]];
  const want = await model.forward(ids);
  // Cut the file inside the experts: the layer's always-needed bytes still read, the experts not.
  const firstExpert = Math.min(
    ...part.tensors.filter((t) => expertGroup(t.name) !== null).map((t) => t.offset),
  );
  try {
    await Deno.truncate(path, part.dataOffset + firstExpert + 16);
    await assert.rejects(() => model.forward(ids), (e: Error) => e.message.includes(part.file));
  } finally {
    await Deno.writeFile(path, original);
  }
  assert.deepEqual(await model.forward(ids), want);
});
