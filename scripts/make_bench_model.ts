/**
 * Writes a synthetic checkpoint of a real model's shape with seeded random weights, for
 * `deno task bench`. Shapes are data: add one to SHAPES.
 *
 *   deno run --allow-read --allow-write scripts/make_bench_model.ts smollm2-135m <out_dir> [dtype]
 */
import { SafetensorsWriter } from "../lib/safetensors.ts";
import { f32ToBf16, f32ToF16 } from "../lib/dtype.ts";

/** config.json fields of each benchmark shape (transformers 5 form). */
export const SHAPES: Record<string, Record<string, unknown>> = {
  "smollm2-135m": {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: 576,
    intermediate_size: 1536,
    num_hidden_layers: 30,
    num_attention_heads: 9,
    num_key_value_heads: 3,
    head_dim: 64,
    vocab_size: 49152,
    max_position_embeddings: 8192,
    rms_norm_eps: 1e-5,
    rope_parameters: { rope_type: "default", rope_theta: 100000 },
    tie_word_embeddings: true,
    hidden_act: "silu",
    bos_token_id: 1,
    eos_token_id: 2,
  },
  "llama3-8b": {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: 4096,
    intermediate_size: 14336,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    head_dim: 128,
    vocab_size: 128256,
    max_position_embeddings: 8192,
    rms_norm_eps: 1e-5,
    rope_parameters: {
      rope_type: "llama3",
      rope_theta: 500000,
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    },
    tie_word_embeddings: false,
    hidden_act: "silu",
    bos_token_id: 128000,
    eos_token_id: 128001,
  },
  // Tests only (tests/quant_split_test.ts): every row a whole number of 256-value K blocks.
  "tiny-256": {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: 256,
    intermediate_size: 512,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 64,
    vocab_size: 512,
    max_position_embeddings: 512,
    rms_norm_eps: 1e-5,
    rope_parameters: { rope_type: "default", rope_theta: 10000 },
    tie_word_embeddings: true,
    hidden_act: "silu",
    bos_token_id: 1,
    eos_token_id: 2,
  },
  // A MoE: 128 experts of which 8 run per token; bench with a few layers (BENCH_LAYERS).
  "qwen3-30b-a3b": {
    architectures: ["Qwen3MoeForCausalLM"],
    model_type: "qwen3_moe",
    hidden_size: 2048,
    intermediate_size: 6144,
    moe_intermediate_size: 768,
    num_experts: 128,
    num_experts_per_tok: 8,
    norm_topk_prob: true,
    decoder_sparse_step: 1,
    mlp_only_layers: [],
    num_hidden_layers: 48,
    num_attention_heads: 32,
    num_key_value_heads: 4,
    head_dim: 128,
    vocab_size: 151936,
    max_position_embeddings: 40960,
    rms_norm_eps: 1e-6,
    rope_parameters: { rope_type: "default", rope_theta: 1000000 },
    tie_word_embeddings: false,
    hidden_act: "silu",
    bos_token_id: 151643,
    eos_token_id: 151645,
  },
};

/** Layers written when the bench does not say (a full-depth checkpoint would not fit here). */
export const BENCH_LAYERS: Record<string, number> = { "qwen3-30b-a3b": 4 };

/** A small fast seeded generator (mulberry32) → roughly normal values via a sum of uniforms. */
function filler(seed: number): (out: Float32Array, std: number) => void {
  let s = seed >>> 0;
  const u = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return (out, std) => {
    for (let i = 0; i < out.length; i++) out[i] = (u() + u() + u() - 1.5) * 2 * std;
  };
}

/**
 * Writes config.json + model.safetensors (storage `dtype`) + tokenizer.model for `shape` into `dir`, one tensor at a
 * time (memory stays at one tensor). `layers` overrides the layer count (smaller runs).
 */
export async function makeBenchModel(
  shape: string,
  dir: string,
  dtype: "F32" | "F16" | "BF16" = "F32",
  layers?: number,
): Promise<void> {
  const base = SHAPES[shape];
  if (!base) throw new Error(`unknown shape ${shape}; known: ${Object.keys(SHAPES).join(", ")}`);
  const c: Record<string, unknown> & { num_hidden_layers: number } = {
    ...base,
    num_hidden_layers: layers ?? BENCH_LAYERS[shape] ?? base.num_hidden_layers as number,
  };
  const D = c.hidden_size as number, I = c.intermediate_size as number;
  const hd = c.head_dim as number, H = c.num_attention_heads as number;
  const KV = c.num_key_value_heads as number, V = c.vocab_size as number;
  const specs: { name: string; shape: number[]; std: number }[] = [];
  const add = (name: string, shape: number[], std: number) => specs.push({ name, shape, std });
  add("model.embed_tokens.weight", [V, D], 0.5);
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    add(`${p}input_layernorm.weight`, [D], 0);
    add(`${p}self_attn.q_proj.weight`, [H * hd, D], 1 / Math.sqrt(D));
    add(`${p}self_attn.k_proj.weight`, [KV * hd, D], 1 / Math.sqrt(D));
    add(`${p}self_attn.v_proj.weight`, [KV * hd, D], 1 / Math.sqrt(D));
    add(`${p}self_attn.o_proj.weight`, [D, H * hd], 1 / Math.sqrt(H * hd));
    add(`${p}post_attention_layernorm.weight`, [D], 0);
    const E = c.num_experts as number | undefined;
    if (E === undefined) {
      add(`${p}mlp.gate_proj.weight`, [I, D], 1 / Math.sqrt(D));
      add(`${p}mlp.up_proj.weight`, [I, D], 1 / Math.sqrt(D));
      add(`${p}mlp.down_proj.weight`, [D, I], 1 / Math.sqrt(I));
      continue;
    }
    // Qwen3-MoE: q/k norms, a router and E experts.
    const M = c.moe_intermediate_size as number;
    add(`${p}self_attn.q_norm.weight`, [hd], 0);
    add(`${p}self_attn.k_norm.weight`, [hd], 0);
    add(`${p}mlp.gate.weight`, [E, D], 1 / Math.sqrt(D));
    for (let e = 0; e < E; e++) {
      add(`${p}mlp.experts.${e}.gate_proj.weight`, [M, D], 1 / Math.sqrt(D));
      add(`${p}mlp.experts.${e}.up_proj.weight`, [M, D], 1 / Math.sqrt(D));
      add(`${p}mlp.experts.${e}.down_proj.weight`, [D, M], 1 / Math.sqrt(M));
    }
  }
  add("model.norm.weight", [D], 0);
  if (!c.tie_word_embeddings) add("lm_head.weight", [V, D], 1 / Math.sqrt(D));
  await Deno.mkdir(dir, { recursive: true });
  const writer = await SafetensorsWriter.create(
    `${dir}/model.safetensors`,
    specs.map(({ name, shape }) => ({ name, dtype, shape })),
    { format: "pt" },
  );
  const fill = filler(1234);
  try {
    for (const s of specs) {
      const f = new Float32Array(s.shape.reduce((a, b) => a * b, 1));
      if (s.std === 0) f.fill(1); // norm weights
      else fill(f, s.std);
      const out = dtype === "F32" ? f : dtype === "F16" ? f32ToF16(f) : f32ToBf16(f);
      await writer.write(s.name, new Uint8Array(out.buffer, out.byteOffset, out.byteLength));
    }
    await writer.commit();
  } catch (e) {
    await writer.abort();
    throw e;
  }
  // A sentencepiece model for converters that need one (llama.cpp's convert_hf_to_gguf.py pads
  // the vocabulary to vocab_size); the engine runs on token ids and never reads it.
  await Deno.copyFile(
    new URL("../models/stories260k/source/tok512.model", import.meta.url),
    `${dir}/tokenizer.model`,
  );
  const torchDtype = { F32: "float32", F16: "float16", BF16: "bfloat16" }[dtype];
  await Deno.writeTextFile(
    `${dir}/config.json`,
    JSON.stringify({ ...c, dtype: torchDtype }, null, 2),
  );
}

if (import.meta.main) {
  const [shape, dir, dtype, layers] = Deno.args;
  if (!shape || !dir) {
    console.error("usage: make_bench_model.ts <shape> <out_dir> [F32|F16|BF16] [layers]");
    Deno.exit(2);
  }
  const n = layers ? Number(layers) : undefined;
  await makeBenchModel(shape, dir, (dtype ?? "F32") as "F32" | "F16" | "BF16", n);
  console.log(`wrote ${dir}`);
}
