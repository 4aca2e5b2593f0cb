import assert from "node:assert/strict";
import { findCheckpoint, listShards, splitCheckpoint } from "../lib/checkpoint.ts";
import { readConfigJson } from "../lib/config.ts";
import { f32ToF16 } from "../lib/dtype.ts";
import { CheckpointError } from "../lib/errors.ts";
import { familyFor } from "../lib/models/registry.ts";
import { SafetensorsFile, writeSafetensors } from "../lib/safetensors.ts";

const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url).pathname;

/** A writable copy of a fixture checkpoint in a temp dir. */
async function copyFixture(name: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "rabbit-ckpt-" });
  for await (const e of Deno.readDir(fixture(name))) {
    if (e.isFile) await Deno.copyFile(`${fixture(name)}/${e.name}`, `${dir}/${e.name}`);
  }
  return dir;
}

async function load(dir: string) {
  const raw = await readConfigJson(dir);
  const family = familyFor((raw.architectures as string[])[0], dir);
  return { family, cfg: family.parseConfig(raw, dir) };
}

async function split(dir: string, out = `${dir}/split`, dtype: "float32" | "float16" = "float32") {
  const { family, cfg } = await load(dir);
  return splitCheckpoint(dir, family, cfg, { dtype, layerShardsSavingPath: out });
}

Deno.test("split: a sharded checkpoint becomes one file per part, tensors byte-identical", async () => {
  const dir = await copyFixture("llama_untied_sharded");
  const { files, weightMap } = await listShards(dir);
  assert.equal(files.length, 4);
  assert.ok(weightMap);
  const s = await split(dir);
  assert.equal(s.reused, false);
  assert.deepEqual(s.manifest.parts.map((p) => p.id), [
    "embed",
    "layer.0",
    "layer.1",
    "norm",
    "lm_head",
  ]);
  // Every source tensor lands in exactly one part, with the same bytes.
  let count = 0;
  for (const f of files) {
    using src = await SafetensorsFile.open(`${dir}/${f}`);
    for (const [name, info] of src.tensors) {
      const m = /^model\.layers\.(\d+)\.(.+)$/.exec(name);
      const [id, local] = m
        ? [`layer.${m[1]}`, m[2]]
        : name === "lm_head.weight"
        ? ["lm_head", "weight"]
        : name === "model.norm.weight"
        ? ["norm", "weight"]
        : ["embed", "weight"];
      const part = s.manifest.parts.find((p) => p.id === id)!;
      using out = await SafetensorsFile.open(`${s.dir}/${part.file}`);
      assert.deepEqual(await out.read(local), await src.read(name), name);
      assert.deepEqual(out.tensors.get(local)!.shape, info.shape);
      count++;
    }
  }
  assert.equal(count, s.manifest.parts.reduce((n, p) => n + p.tensors.length, 0));
  const names = [...Deno.readDirSync(s.dir)].map((e) => e.name).sort();
  assert.deepEqual(
    names,
    [...s.manifest.parts.map((p) => p.file), "manifest.json"].sort(),
    "no temp files left",
  );
});

Deno.test("split: a complete split is reused; a changed source or a missing part redoes it", async () => {
  const dir = await copyFixture("llama_tied");
  const first = await split(dir);
  assert.equal(first.reused, false);
  assert.equal((await split(dir)).reused, true);
  // Manifest is written last.
  const mtime = (f: string) => Deno.statSync(`${first.dir}/${f}`).mtime!.getTime();
  for (const p of first.manifest.parts) assert.ok(mtime(p.file) <= mtime("manifest.json"));
  await Deno.remove(`${first.dir}/layer.1.safetensors`);
  assert.equal((await split(dir)).reused, false);
  assert.equal((await split(dir)).reused, true);
  await Deno.utime(`${dir}/model.safetensors`, new Date(), new Date(Date.now() + 5000));
  assert.equal((await split(dir)).reused, false);
  // A different dtype is a different split.
  assert.equal((await split(dir, `${dir}/split`, "float16")).reused, false);
});

Deno.test("split: a split made another way (older recipe, other rows) is redone, not reused", async () => {
  const dir = await copyFixture("llama_tied");
  try {
    const first = await split(dir);
    assert.match(first.manifest.recipe ?? "", /^[0-9a-f]{64}$/);
    assert.equal((await split(dir)).reused, true);
    // A manifest from before recipes were recorded (or of another recipe) is not trusted.
    const path = `${dir}/split/manifest.json`;
    const m = JSON.parse(await Deno.readTextFile(path));
    delete m.recipe;
    await Deno.writeTextFile(path, JSON.stringify(m));
    const again = await split(dir);
    assert.equal(again.reused, false);
    assert.equal(again.manifest.recipe, first.manifest.recipe);
    // The same checkpoint placed differently (a family taking q_proj's rows reversed) gets
    // another recipe: the split is redone with the rows as now placed.
    const { family, cfg } = await load(dir);
    const q = "model.layers.0.self_attn.q_proj.weight";
    const reversed = {
      ...family,
      placeFused: (name: string, c: typeof cfg) =>
        name === q
          ? [{
            ...family.place(name, c)!,
            rows: Array.from(
              { length: cfg.numHeads * cfg.headDim },
              (_, i) => cfg.numHeads * cfg.headDim - 1 - i,
            ),
          }]
          : undefined,
    };
    const other = await splitCheckpoint(dir, reversed, cfg, {
      dtype: "float32",
      layerShardsSavingPath: `${dir}/split`,
    });
    assert.equal(other.reused, false);
    assert.notEqual(other.manifest.recipe, first.manifest.recipe);
    const src = (await SafetensorsFile.open(`${dir}/model.safetensors`)).read(q);
    const got = (await SafetensorsFile.open(`${dir}/split/layer.0.safetensors`)).read(
      "self_attn.q_proj.weight",
    );
    const [a, b] = [await src, await got];
    const row = a.byteLength / (cfg.numHeads * cfg.headDim);
    assert.deepEqual(b.subarray(0, row), a.subarray(a.byteLength - row));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("split: dtype conversion rounds like torch (float32 → float16)", async () => {
  const dir = await copyFixture("llama_tied");
  const s = await split(dir, `${dir}/f16`, "float16");
  using src = await SafetensorsFile.open(`${dir}/model.safetensors`);
  using out = await SafetensorsFile.open(`${s.dir}/norm.safetensors`);
  assert.equal(out.tensors.get("weight")!.dtype, "F16");
  const f32 = new Float32Array((await src.read("model.norm.weight")).slice().buffer);
  const f16 = new Uint16Array((await out.read("weight")).slice().buffer);
  assert.deepEqual(f16, f32ToF16(f32));
});

async function rewriteWith(
  dir: string,
  edit: (t: Map<string, { dtype: "F32"; shape: number[]; data: Uint8Array }>) => void,
) {
  using src = await SafetensorsFile.open(`${dir}/model.safetensors`);
  const tensors = new Map<string, { dtype: "F32"; shape: number[]; data: Uint8Array }>();
  for (const [name, info] of src.tensors) {
    tensors.set(name, { dtype: "F32", shape: info.shape, data: await src.read(name) });
  }
  edit(tensors);
  await writeSafetensors(
    `${dir}/model.safetensors`,
    [...tensors].map(([name, t]) => ({ name, ...t })),
  );
}

Deno.test("split: an unknown tensor is an error naming it, never dropped", async () => {
  const dir = await copyFixture("llama_tied");
  await rewriteWith(
    dir,
    (t) =>
      t.set("model.layers.0.mlp.extra.weight", {
        dtype: "F32",
        shape: [2],
        data: new Uint8Array(8),
      }),
  );
  await assert.rejects(
    split(dir),
    (e: unknown) =>
      e instanceof CheckpointError &&
      /unexpected tensor model.layers.0.mlp.extra.weight/.test(e.message),
  );
  await rewriteWith(dir, (t) => {
    t.delete("model.layers.0.mlp.extra.weight");
    t.set("model.vision_tower.weight", { dtype: "F32", shape: [2], data: new Uint8Array(8) });
  });
  await assert.rejects(split(dir), /unknown tensor model.vision_tower.weight for LlamaForCausalLM/);
  await rewriteWith(dir, (t) => {
    t.delete("model.vision_tower.weight");
    t.set("model.layers.7.mlp.up_proj.weight", {
      dtype: "F32",
      shape: [2],
      data: new Uint8Array(8),
    });
  });
  await assert.rejects(
    split(dir),
    /unknown tensor model.layers.7.mlp.up_proj.weight for LlamaForCausalLM with 2 layers/,
  );
});

Deno.test("split: a missing tensor or a wrong shape is an error naming the tensor", async () => {
  const dir = await copyFixture("llama_tied");
  await rewriteWith(dir, (t) => t.delete("model.layers.1.self_attn.k_proj.weight"));
  await assert.rejects(split(dir), /missing tensor model\.layers\.1\.self_attn\.k_proj\.weight \(/);
  const dir2 = await copyFixture("llama_tied");
  await rewriteWith(
    dir2,
    (t) => t.set("model.norm.weight", { dtype: "F32", shape: [32], data: new Uint8Array(128) }),
  );
  await assert.rejects(
    split(dir2),
    /tensor model.norm.weight has shape \[32\], expected \[64\] from config.json/,
  );
  assert.equal(
    [...Deno.readDirSync(dir2)].some((e) =>
      e.name === "split" && Deno.statSync(`${dir2}/split/manifest.json`).isFile
    ),
    false,
  );
});

Deno.test("split: the index names the shards; a missing shard or tensor is an error", async () => {
  const dir = await copyFixture("llama_untied_sharded");
  const index = JSON.parse(await Deno.readTextFile(`${dir}/model.safetensors.index.json`));
  const shard = Object.values(index.weight_map)[0] as string;
  await Deno.rename(`${dir}/${shard}`, `${dir}/${shard}.moved`);
  await assert.rejects(listShards(dir), new RegExp(`${shard}: shard named by .* is missing`));
  await Deno.rename(`${dir}/${shard}.moved`, `${dir}/${shard}`);
  index.weight_map["model.layers.9.ghost.weight"] = shard;
  await Deno.writeTextFile(`${dir}/model.safetensors.index.json`, JSON.stringify(index));
  await assert.rejects(
    split(dir),
    /tensor model.layers.9.ghost.weight listed in the index is missing/,
  );
  const empty = await Deno.makeTempDir();
  await assert.rejects(
    listShards(empty),
    /no model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json/,
  );
});

Deno.test("findCheckpoint: resolves org/name from the Hugging Face cache layout", async () => {
  const cache = await Deno.makeTempDir();
  const repo = `${cache}/models--org--tiny`;
  await Deno.mkdir(`${repo}/snapshots/abc123`, { recursive: true });
  await Deno.mkdir(`${repo}/refs`);
  await Deno.writeTextFile(`${repo}/refs/main`, "abc123");
  const old = Deno.env.get("HF_HUB_CACHE");
  Deno.env.set("HF_HUB_CACHE", cache);
  try {
    assert.equal(findCheckpoint("org/tiny"), `${repo}/snapshots/abc123`);
    assert.equal(findCheckpoint("org/tiny", "abc123"), `${repo}/snapshots/abc123`);
    assert.throws(
      () => findCheckpoint("org/other"),
      /not a local directory and not in the Hugging Face cache/,
    );
  } finally {
    if (old === undefined) Deno.env.delete("HF_HUB_CACHE");
    else Deno.env.set("HF_HUB_CACHE", old);
  }
});
