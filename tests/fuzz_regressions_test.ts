/**
 * Regressions for the bugs tests/fuzz_test.ts found (commit 9994e16): one minimized, hand-written
 * input per fix, fed to the public entry point the fuzzer used for that parser
 * (readConfigJson + familyFor + parseConfig, Tokenizer.fromDir, SafetensorsFile.open, openGguf).
 * Each case asserts the exact typed error class and that its message names the file, the key and
 * what was expected. Each comment says which fix of lib/ the case guards and what happened before
 * it (checked by reverting that hunk alone: the case fails).
 *
 * A JSON object with a non-function `toString` ({"toString": 2}, one of the fuzzer's raw JSON
 * texts) cannot be turned into a string: `${v}`, `v + 1` and its use as a property key throw a
 * TypeError.
 */
import assert from "node:assert/strict";
import { architectureOf, readConfigJson } from "../lib/config.ts";
import {
  ConfigError,
  GgufError,
  MAX_JSON_DEPTH,
  SafetensorsError,
  TokenizerError,
} from "../lib/errors.ts";
import { openGguf } from "../lib/gguf_model.ts";
import { familyFor } from "../lib/models/registry.ts";
import { SafetensorsFile } from "../lib/safetensors.ts";
import { Tokenizer } from "../lib/tokenizer.ts";

const here = new URL(".", import.meta.url).pathname;
const dir = await Deno.makeTempDir({ prefix: "rabbit-fuzz-regressions-" });
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(dir, { recursive: true });
  } catch { /* already gone */ }
});

/** A JSON value that cannot be converted to a string (its `toString` is not a function). */
const RAW = { toString: 2 };

/**
 * `f` rejects with exactly `cls` (not a subclass, not a TypeError), and the message is
 * `<file>: <key>: <what>` with `what` matching `expected`.
 */
async function rejectsWith(
  f: () => Promise<unknown>,
  cls: new (...args: never[]) => Error,
  file: string,
  key: string | null,
  expected: RegExp,
): Promise<void> {
  const e = await f().then(() => null, (e) => e);
  assert.ok(e !== null, `expected ${cls.name}, but the input was accepted`);
  assert.equal(
    e.constructor,
    cls,
    `expected ${cls.name}, got ${e?.name}: ${String(e?.message ?? e).slice(0, 300)}`,
  );
  const prefix = key === null ? `${file}: ` : `${file}: ${key}: `;
  assert.ok(e.message.startsWith(prefix), `"${e.message}" does not start with "${prefix}"`);
  assert.match(e.message.slice(prefix.length), expected);
}

// ---------------------------------------------------------------------------------------------
// config.json: the fuzzer's entry point (readConfigJson, familyFor, the family's parseConfig)

const CONFIG = `${dir}/config/config.json`;
await Deno.mkdir(`${dir}/config`);

async function parseConfigText(text: string) {
  await Deno.writeTextFile(CONFIG, text);
  const raw = await readConfigJson(`${dir}/config`);
  const family = familyFor(architectureOf(raw, CONFIG), CONFIG);
  return family.parseConfig(raw, CONFIG);
}

/** A minimal Llama config.json. */
const LLAMA = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 8,
  intermediate_size: 16,
  num_hidden_layers: 1,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  vocab_size: 32,
  max_position_embeddings: 64,
  rms_norm_eps: 1e-6,
};

/** A fixture's config.json with `change` applied on top. */
async function fixtureConfig(name: string, change: Record<string, unknown>): Promise<string> {
  const doc = JSON.parse(await Deno.readTextFile(`${here}fixtures/${name}/config.json`));
  return JSON.stringify({ ...doc, ...change });
}

Deno.test("fuzz regression: the minimal configs parse (the cases below change one key)", async () => {
  assert.equal((await parseConfigText(JSON.stringify(LLAMA))).numLayers, 1);
  assert.ok(await parseConfigText(await fixtureConfig("qwen3", {})));
});

// Guards config.ts parseCommonConfig's MAX_LAYERS check ("huge layer counts"). Before it, 2^32
// layers reached the per-layer tables: RangeError: Invalid array length (2^31 first spent ~12 s
// allocating).
Deno.test("fuzz regression: config.json num_hidden_layers 2^32 -> ConfigError", async () => {
  await rejectsWith(
    () => parseConfigText(JSON.stringify({ ...LLAMA, num_hidden_layers: 2 ** 32 })),
    ConfigError,
    CONFIG,
    "num_hidden_layers",
    /^4294967296 is more than 65536 \(model type llama\)$/,
  );
});

// Guards config.ts parseRope's typeof check ("non-string rope types"). Before it, the type was
// cast to a string: {"toString": 2} threw TypeError: Cannot convert object to primitive value
// (and a number was reported as `unsupported rope type "5"`).
Deno.test("fuzz regression: config.json rope_scaling.rope_type {toString: 2} -> ConfigError", async () => {
  await rejectsWith(
    () =>
      parseConfigText(JSON.stringify({ ...LLAMA, rope_scaling: { rope_type: RAW, factor: 2 } })),
    ConfigError,
    CONFIG,
    "rope_scaling.rope_type",
    /^expected a rope type name, got \{"toString":2\}$/,
  );
  // The legacy key `type` is named as such.
  await rejectsWith(
    () => parseConfigText(JSON.stringify({ ...LLAMA, rope_scaling: { type: 5, factor: 2 } })),
    ConfigError,
    CONFIG,
    "rope_scaling.type",
    /^expected a rope type name, got 5$/,
  );
});

// Guards config.ts readConfigJson's jsonTooDeep check ("JSON nested past 64 levels"). Before it,
// a 100-deep value under a key nobody reads was accepted, and kept for any later recursive step.
Deno.test("fuzz regression: config.json nested 100 levels deep -> ConfigError", async () => {
  const deep = "[".repeat(100) + "]".repeat(100);
  await rejectsWith(
    () => parseConfigText(`${JSON.stringify(LLAMA).slice(0, -1)},"x":${deep}}`),
    ConfigError,
    CONFIG,
    null,
    new RegExp(`^nested deeper than ${MAX_JSON_DEPTH} levels$`),
  );
  // The real files' nesting (a few levels) is far from the bound.
  const fine = "[".repeat(MAX_JSON_DEPTH - 1) + "]".repeat(MAX_JSON_DEPTH - 1);
  assert.ok(await parseConfigText(`${JSON.stringify(LLAMA).slice(0, -1)},"x":${fine}}`));
});

// Guards the same check, on the shape the fuzzer found (its input nested rope_parameters.rope_type
// ~50,000 deep). With neither this check nor parseRope's typeof check, the rope type was converted
// to a string, recursing once per level: RangeError: Maximum call stack size exceeded (from about
// 5,000 levels). With only the typeof check, the error named the key and printed the whole value.
Deno.test("fuzz regression: config.json rope_type nested 5000 levels deep -> ConfigError", async () => {
  const deep = "[".repeat(5000) + "]".repeat(5000);
  await rejectsWith(
    () =>
      parseConfigText(
        `${JSON.stringify(LLAMA).slice(0, -1)},"rope_parameters":{"rope_type":${deep}}}`,
      ),
    ConfigError,
    CONFIG,
    null,
    new RegExp(`^nested deeper than ${MAX_JSON_DEPTH} levels$`),
  );
});

// Guards the families' messages that printed a raw value with `${v}` ("raw objects in
// messages"): lib/models/qwen2_moe.ts (qkv_bias; norm_topk_prob in parseQwenMoe), phi.ts
// (qk_layernorm, layer_norm_eps), gemma3.ts (ropeOf's rope_theta) and deepseek.ts
// (routed_scaling_factor). Before, each threw TypeError: Cannot convert object to primitive value
// on {"toString": 2} while building its own error message. (The same fix in qwen3.ts and
// qwen3_moe.ts has no case: their attention_bias check cannot be reached from parseConfig, since
// parseCommonConfig's reader refuses a non-boolean attention_bias first, with a typed error.)
const RAW_IN_MESSAGE: [fixture: string, key: string, change: Record<string, unknown>, RegExp][] = [
  ["qwen2_moe", "qkv_bias", { qkv_bias: RAW }, /^expected true or false, got \{"toString":2\}$/],
  [
    "qwen2_moe",
    "norm_topk_prob",
    { norm_topk_prob: RAW },
    /^expected true or false, got \{"toString":2\}$/,
  ],
  ["phi2", "qk_layernorm", { qk_layernorm: RAW }, /^expected true or false, got \{"toString":2\}$/],
  [
    "phi2",
    "layer_norm_eps",
    { layer_norm_eps: RAW },
    /^expected a positive number, got \{"toString":2\}$/,
  ],
  [
    "gemma3_text",
    "rope_parameters.full_attention.rope_theta",
    {
      rope_parameters: {
        full_attention: { rope_type: "default", rope_theta: RAW },
        sliding_attention: { rope_type: "default", rope_theta: 10000 },
      },
    },
    /^expected a positive number, got \{"toString":2\}$/,
  ],
  // Guards gemma3.ts ropeOf's typeof check (found by `deno task fuzz` at 100,000 inputs, after
  // 9994e16): String({"toString": 2}) threw TypeError: Cannot convert object to primitive value.
  [
    "gemma3_text",
    "rope_parameters.full_attention.rope_type",
    {
      rope_parameters: {
        full_attention: { rope_type: RAW, rope_theta: 10000 },
        sliding_attention: { rope_type: "default", rope_theta: 10000 },
      },
    },
    /^expected a rope type name, got \{"toString":2\}$/,
  ],
  // ...and a number there was named as rope_scaling.rope_type (a key the file does not have).
  [
    "gemma3_text",
    "rope_parameters.full_attention.rope_type",
    {
      rope_parameters: {
        full_attention: { rope_type: 5, rope_theta: 10000 },
        sliding_attention: { rope_type: "default", rope_theta: 10000 },
      },
    },
    /^expected a rope type name, got 5$/,
  ],
  [
    "deepseek_v3",
    "routed_scaling_factor",
    { routed_scaling_factor: RAW },
    /^expected a number, got \{"toString":2\}$/,
  ],
];

for (const [fixture, key, change, expected] of RAW_IN_MESSAGE) {
  const value = expected.source.match(/got (.*)\$$/)?.[1].replaceAll("\\", "") ?? "";
  Deno.test(`fuzz regression: ${fixture} config.json ${key} ${value} -> ConfigError`, async () => {
    assert.ok(await parseConfigText(await fixtureConfig(fixture, {})), `${fixture} parses`);
    await rejectsWith(
      async () => parseConfigText(await fixtureConfig(fixture, change)),
      ConfigError,
      CONFIG,
      key,
      expected,
    );
  });
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json: the fuzzer's entry point (Tokenizer.fromDir)

const TOKENIZER = `${dir}/tokenizer`;
await Deno.mkdir(TOKENIZER);
const TOKENIZER_JSON = `${TOKENIZER}/tokenizer.json`;

/** A minimal BPE tokenizer.json (a, b, ab). */
const BPE = {
  version: "1.0",
  added_tokens: [] as unknown,
  normalizer: null,
  pre_tokenizer: null,
  post_processor: null,
  decoder: null,
  model: { type: "BPE", vocab: { a: 0, b: 1, ab: 2 } as unknown, merges: [["a", "b"]] },
};

async function tokenizerFrom(json: string) {
  await Deno.writeTextFile(TOKENIZER_JSON, json);
  await Deno.writeTextFile(`${TOKENIZER}/tokenizer_config.json`, '{"eos_token": "</s>"}');
  return await Tokenizer.fromDir(TOKENIZER);
}

Deno.test("fuzz regression: the minimal tokenizer.json loads", async () => {
  const t = await tokenizerFrom(JSON.stringify(BPE));
  assert.deepEqual(t.encode("ab"), [2]);
});

// Guards tokenizer.ts mergeAddedTokens' Array.isArray check ("non-list added_tokens"). Before it:
// TypeError: (json.added_tokens ?? []).map is not a function.
Deno.test("fuzz regression: tokenizer.json added_tokens {} -> TokenizerError", async () => {
  await rejectsWith(
    () => tokenizerFrom(JSON.stringify({ ...BPE, added_tokens: {} })),
    TokenizerError,
    TOKENIZER_JSON,
    "added_tokens",
    /^expected a list of \{id, content, \.\.\.\}$/,
  );
});

// Guards the same fix's per-element check. Before it, an id that is not a number reached
// `id + 1` in the next free id: TypeError: Cannot convert object to primitive value.
Deno.test("fuzz regression: tokenizer.json added_tokens[0].id {toString: 2} -> TokenizerError", async () => {
  await rejectsWith(
    () => tokenizerFrom(JSON.stringify({ ...BPE, added_tokens: [{ id: RAW, content: "<s>" }] })),
    TokenizerError,
    TOKENIZER_JSON,
    "added_tokens[0]",
    /^expected \{id: a non-negative integer, content: string, \.\.\.\}$/,
  );
});

// Guards tokenizer.ts modelVocab's id check for BPE/WordPiece vocabularies ("non-numeric vocab
// ids"). Before it, the id reached `id + 1` in mergeAddedTokens: TypeError: Cannot convert object
// to primitive value (a string id such as "1" was silently accepted).
Deno.test("fuzz regression: tokenizer.json model.vocab.b {toString: 2} -> TokenizerError", async () => {
  const json = { ...BPE, model: { ...BPE.model, vocab: { a: 0, b: RAW }, merges: [] } };
  await rejectsWith(
    () => tokenizerFrom(JSON.stringify(json)),
    TokenizerError,
    TOKENIZER_JSON,
    "model.vocab.b",
    /^expected a token id \(a non-negative integer\), got \{"toString":2\}$/,
  );
});

// Guards modelVocab's entry check for Unigram vocabularies (same fix). Before it, a null entry
// threw TypeError: Cannot read properties of null (reading '0').
Deno.test("fuzz regression: tokenizer.json Unigram model.vocab[1] null -> TokenizerError", async () => {
  const json = {
    ...BPE,
    model: { type: "Unigram", unk_id: 0, vocab: [["<unk>", 0], null, ["b", -2]] },
  };
  await rejectsWith(
    () => tokenizerFrom(JSON.stringify(json)),
    TokenizerError,
    TOKENIZER_JSON,
    "model.vocab[1]",
    /^expected \[piece, score\]$/,
  );
});

// Guards tokenizer.ts readJson's jsonTooDeep check ("JSON nested past 64 levels"). Before it, a
// 100-deep value under a key nobody reads was accepted.
Deno.test("fuzz regression: tokenizer.json nested 100 levels deep -> TokenizerError", async () => {
  const deep = "[".repeat(100) + "]".repeat(100);
  await rejectsWith(
    () => tokenizerFrom(`${JSON.stringify(BPE).slice(0, -1)},"x":${deep}}`),
    TokenizerError,
    TOKENIZER_JSON,
    null,
    new RegExp(`^nested deeper than ${MAX_JSON_DEPTH} levels$`),
  );
});

// Guards the same check, on the shape the fuzzer found (its input had a vocab id nested ~50,000
// deep). With neither this check nor modelVocab's id check, `id + 1` converted it to a string,
// recursing once per level: RangeError: Maximum call stack size exceeded.
Deno.test("fuzz regression: tokenizer.json vocab id nested 5000 levels deep -> TokenizerError", async () => {
  const deep = "[".repeat(5000) + "]".repeat(5000);
  const json = JSON.stringify({ ...BPE, model: { ...BPE.model, vocab: { a: 0, b: "DEEP" } } });
  await rejectsWith(
    () => tokenizerFrom(json.replace('"DEEP"', deep)),
    TokenizerError,
    TOKENIZER_JSON,
    null,
    new RegExp(`^nested deeper than ${MAX_JSON_DEPTH} levels$`),
  );
});

// ---------------------------------------------------------------------------------------------
// safetensors: the fuzzer's entry point (SafetensorsFile.open)

const SAFETENSORS = `${dir}/model.safetensors`;

async function safetensorsWith(header: string, dataBytes: number) {
  const h = new TextEncoder().encode(header);
  const bytes = new Uint8Array(8 + h.length + dataBytes);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(h.length), true);
  bytes.set(h, 8);
  await Deno.writeFile(SAFETENSORS, bytes);
  using f = await SafetensorsFile.open(SAFETENSORS);
  return f.tensors.size;
}

// Guards safetensors.ts SafetensorsFile.open's jsonTooDeep check ("JSON nested past 64 levels").
// Before it, a 100-deep value in a tensor entry's unknown key was accepted.
Deno.test("fuzz regression: safetensors header nested 100 levels deep -> SafetensorsError", async () => {
  const tensor = '"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]';
  assert.equal(await safetensorsWith(`{${tensor}}}`, 4), 1);
  const deep = '{"a":'.repeat(100) + "1" + "}".repeat(100);
  await rejectsWith(
    () => safetensorsWith(`{${tensor},"x":${deep}}}`, 4),
    SafetensorsError,
    SAFETENSORS,
    null,
    new RegExp(`^header is nested deeper than ${MAX_JSON_DEPTH} levels$`),
  );
});

// ---------------------------------------------------------------------------------------------
// GGUF: the fuzzer's entry point (openGguf)

const GGUF = `${dir}/model.gguf`;
const U32 = 4, F32 = 6, STRING = 8, ARRAY = 9, U64 = 10;
type Kv = [key: string, type: number, value: number | bigint | string | bigint[]];

/**
 * A GGUF v3 file with the metadata `kv` and one F32 tensor token_embd.weight of shape [4, 2]
 * (eight floats of data).
 */
async function ggufWith(kv: Kv[]): Promise<void> {
  const out: number[] = [];
  const dv = new DataView(new ArrayBuffer(8));
  const put = (n: number) => {
    for (let i = 0; i < n; i++) out.push(dv.getUint8(i));
  };
  const u32 = (v: number) => (dv.setUint32(0, v, true), put(4));
  const u64 = (v: number | bigint) => (dv.setBigUint64(0, BigInt(v), true), put(8));
  const str = (s: string) => {
    const b = new TextEncoder().encode(s);
    u64(b.length);
    out.push(...b);
  };
  const value = (type: number, v: Kv[2]) => {
    if (type === U32) u32(v as number);
    else if (type === F32) (dv.setFloat32(0, v as number, true), put(4));
    else if (type === STRING) str(v as string);
    else if (type === U64) u64(v as bigint);
    else if (type === ARRAY) {
      u32(U64), u64((v as bigint[]).length);
      for (const x of v as bigint[]) u64(x);
    }
  };
  out.push(..."GGUF".split("").map((c) => c.charCodeAt(0)));
  u32(3), u64(1), u64(kv.length);
  for (const [k, type, v] of kv) str(k), u32(type), value(type, v);
  str("token_embd.weight"), u32(2), u64(2), u64(4), u32(0), u64(0); // dims [2, 4], F32, offset 0
  const dataOffset = Math.ceil(out.length / 32) * 32;
  const bytes = new Uint8Array(dataOffset + 4 * 8);
  bytes.set(out);
  await Deno.writeFile(GGUF, bytes);
}

// Guards gguf_model.ts num()'s show() ("bigint metadata"). A u64 beyond 2^53 is a bigint; before,
// the message's JSON.stringify threw TypeError: Do not know how to serialize a BigInt.
Deno.test("fuzz regression: GGUF llama.attention.head_count u64 2^64-1 -> GgufError", async () => {
  await ggufWith([
    ["general.architecture", STRING, "llama"],
    ["llama.attention.head_count", U64, 2n ** 64n - 1n],
  ]);
  await rejectsWith(
    () => openGguf(GGUF),
    GgufError,
    GGUF,
    "key llama.attention.head_count",
    /^expected a number, got 18446744073709551615$/,
  );
});

// Guards gguf_model.ts uniform()'s show() (same fix, per-layer arrays). Before, the message's
// JSON.stringify of the array's bigints threw TypeError: Do not know how to serialize a BigInt.
Deno.test("fuzz regression: GGUF per-layer head_count [2^63, 1] -> GgufError", async () => {
  await ggufWith([
    ["general.architecture", STRING, "llama"],
    ["llama.attention.head_count", ARRAY, [2n ** 63n, 1n]],
  ]);
  await rejectsWith(
    () => openGguf(GGUF),
    GgufError,
    GGUF,
    "key llama.attention.head_count",
    /^per-layer values \[9223372036854775808, 1\] differ; only uniform layers load$/,
  );
});

// Guards gguf_model.ts buildConfig's layer-count bound for MoE files ("huge layer counts").
// Before it, the loop listing the dense layers ran to block_count = 2^32-1, pushing one number per
// layer: a hang and an unbounded allocation (still running after 60 s, at 2.8 GB RSS).
Deno.test("fuzz regression: GGUF qwen3moe.block_count 2^32-1 -> GgufError", async () => {
  await ggufWith([
    ["general.architecture", STRING, "qwen3moe"],
    ["qwen3moe.attention.head_count", U32, 2],
    ["qwen3moe.embedding_length", U32, 8],
    ["qwen3moe.block_count", U32, 0xffffffff],
    ["qwen3moe.attention.layer_norm_rms_epsilon", F32, 1e-6],
    ["qwen3moe.context_length", U32, 64],
    ["qwen3moe.expert_count", U32, 4],
    ["qwen3moe.expert_used_count", U32, 2],
    ["qwen3moe.expert_feed_forward_length", U32, 16],
  ]);
  await rejectsWith(
    () => openGguf(GGUF),
    GgufError,
    GGUF,
    "key qwen3moe.block_count",
    /^expected a layer count in 1\.\.65536, got 4294967295$/,
  );
});
