/**
 * Qwen3: Llama's layer with an RMSNorm on every query and key head (`q_norm`, `k_norm`, over
 * head_dim) before rope. head_dim defaults to 128, not hidden / heads; q/k/v/o carry biases only
 * with `attention_bias`; the sliding window follows Qwen2's rules.
 *
 * @module
 */
import { ConfigError } from "../errors.ts";
import type { ExpectedTensor, Family, LayerContext, PartWeights } from "./family.ts";
import { expectedLlamaLike, llama, mlpBlock, placeExpected } from "./llama.ts";
import { parseQwen2Like } from "./qwen2.ts";

/** x += o_proj(attn(rope(q_norm(q)), rope(k_norm(k)), v)), pre-norm. */
export function qkNormAttentionBlock(ctx: LayerContext, w: PartWeights): void {
  const { be, cfg, T } = ctx;
  const D = cfg.hiddenSize, hd = cfg.headDim, H = cfg.numHeads, KV = cfg.numKvHeads;
  const qDim = H * hd, kvDim = KV * hd, eps = cfg.rmsNormEps;
  const h = ctx.buf("h", T * D);
  const q = ctx.buf("q", T * qDim), k = ctx.buf("k", T * kvDim), v = ctx.buf("v", T * kvDim);
  const attn = ctx.buf("attn", T * qDim), o = ctx.buf("o", T * D);
  const norm = w.get("input_layernorm.weight");
  be.rmsnorm(h, ctx.x, norm.ptr, norm.dtype, T, D, eps);
  const proj = (out: typeof q, x: typeof q, name: string, n: number, inDim: number) => {
    const wt = w.get(`self_attn.${name}.weight`);
    be.matmul(out, x, wt.ptr, wt.dtype, w.opt(`self_attn.${name}.bias`)?.ptr ?? null, T, n, inDim);
  };
  proj(q, h, "q_proj", qDim, D);
  proj(k, h, "k_proj", kvDim, D);
  proj(v, h, "v_proj", kvDim, D);
  // [T, heads * hd] is T * heads rows of hd: one norm row per head.
  const qn = w.get("self_attn.q_norm.weight"), kn = w.get("self_attn.k_norm.weight");
  be.rmsnorm(q, q, qn.ptr, qn.dtype, T * H, hd, eps);
  be.rmsnorm(k, k, kn.ptr, kn.dtype, T * KV, hd, eps);
  const { rotDim, invFreq, mscale } = ctx.rope;
  be.rope(q, T, qDim, H, hd, rotDim, ctx.positions, invFreq, mscale);
  be.rope(k, T, kvDim, KV, hd, rotDim, ctx.positions, invFreq, mscale);
  ctx.attention({ q, qStride: qDim, k, v, kvStride: kvDim, out: attn, scale: 1 / Math.sqrt(hd) });
  proj(o, attn, "o_proj", D, qDim);
  be.add(ctx.x, ctx.x, o, T * D);
}

export const qwen3: Family = {
  ...llama,
  architectures: ["Qwen3ForCausalLM"],
  parseConfig(raw, source) {
    // Qwen3Config: head_dim 128 and 32 KV heads when absent (not hidden / heads and heads);
    // windows as Qwen2Config (use_sliding_window, max_window_layers, layer_types).
    // A key present with null takes the common rule (hidden / heads, one KV head per head).
    const cfg = parseQwen2Like(raw, source, {
      headDim: "head_dim" in raw ? undefined : 128,
      numKvHeads: "num_key_value_heads" in raw ? undefined : 32,
    });
    const bias = raw.attention_bias ?? false;
    if (typeof bias !== "boolean") {
      throw new ConfigError(source, "attention_bias", `expected true or false, got ${bias}`);
    }
    cfg.attentionBias = bias;
    return cfg;
  },
  place: (name, cfg) => placeExpected(name, cfg, qwen3.expected),
  expected(part, cfg) {
    const t: ExpectedTensor[] = expectedLlamaLike(part, cfg);
    if (part.kind === "layer") {
      t.push(
        { local: "self_attn.q_norm.weight", shape: [cfg.headDim] },
        { local: "self_attn.k_norm.weight", shape: [cfg.headDim] },
      );
      if (cfg.attentionBias) t.push({ local: "self_attn.o_proj.bias", shape: [cfg.hiddenSize] });
    }
    return t;
  },
  forwardLayer(ctx, w) {
    qkNormAttentionBlock(ctx, w);
    mlpBlock(ctx, w);
  },
};
