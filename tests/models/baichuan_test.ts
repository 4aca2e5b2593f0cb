import assert from "node:assert/strict";
import { ConfigError } from "../../lib/errors.ts";
import { alibiSlopes } from "../../lib/models/alibi.ts";
import { baichuan, type BaichuanConfig } from "../../lib/models/baichuan.ts";
import { base, parse } from "./_helpers.ts";

// The keys the remote configuration classes write (tests/fixtures/baichuan*/config.json).
const v1 = {
  ...base,
  architectures: ["BaiChuanForCausalLM"],
  model_type: "baichuan",
  max_position_embeddings: 4096,
  auto_map: {
    AutoConfig: "configuration_baichuan.BaiChuanConfig",
    AutoModelForCausalLM: "modeling_baichuan.BaiChuanForCausalLM",
  },
};
const v2 = {
  ...v1,
  architectures: ["BaichuanForCausalLM"],
  model_max_length: 4096,
  z_loss_weight: 0,
};
const bc = (raw: Record<string, unknown>) => parse(raw) as BaichuanConfig;

function throwsConfig(raw: Record<string, unknown>, key: string, what: RegExp) {
  assert.throws(() => parse(raw), (e) => {
    assert.ok(e instanceof ConfigError, String(e));
    assert.equal(e.key, key);
    assert.match(e.message, what);
    return true;
  });
}

Deno.test("config: Baichuan-7B is MHA llama with rope base 10000 and a plain head", () => {
  const c = bc(v1);
  assert.equal(c.normHead, false);
  assert.equal(c.alibiSlopes, null);
  assert.equal(c.numKvHeads, 4);
  assert.equal(c.headDim, 16);
  assert.equal(c.rope.theta, 10000);
  assert.equal(c.maxPositionEmbeddings, 4096);
  assert.equal(c.attentionBias, false);
  // the same vocab as Baichuan 2 does not make Baichuan-7B's head a NormHead
  assert.equal(bc({ ...v1, vocab_size: 125696 }).normHead, false);
});

Deno.test("config: Baichuan 2's NormHead is read from vocab_size 125696 or z_loss_weight", () => {
  assert.equal(bc(v2).normHead, true);
  const { z_loss_weight: _, ...noZ } = v2;
  assert.equal(bc(noZ).normHead, false); // a BaichuanForCausalLM without either: Baichuan-13B's head
  assert.equal(bc({ ...noZ, vocab_size: 125696 }).normHead, true);
  assert.equal(bc(v2).alibiSlopes, null); // max_position_embeddings: rotary (Baichuan2-7B)
});

Deno.test("config: a BaichuanForCausalLM without max_position_embeddings is 13B (ALiBi)", () => {
  const { max_position_embeddings: _, ...v13 } = v2;
  const c = bc({ ...v13, num_attention_heads: 40, hidden_size: 5120, model_max_length: 4096 });
  assert.deepEqual(c.alibiSlopes, alibiSlopes(40));
  // 40 heads: 2^(-k/4) for k = 1..32, then 2^(-(2k-1)/8) for k = 1..8
  assert.equal(c.alibiSlopes![0], Math.fround(2 ** -0.25));
  assert.equal(c.alibiSlopes![31], Math.fround(2 ** -8));
  assert.equal(c.alibiSlopes![32], Math.fround(2 ** -0.125));
  assert.equal(c.alibiSlopes![39], Math.fround(2 ** (-15 / 8)));
  assert.equal(c.maxPositionEmbeddings, 4096);
  assert.equal(c.normHead, true);
  // Baichuan-13B (v1): vocab 64000, no z_loss_weight: ALiBi with a plain head
  const { z_loss_weight: _z, ...b13 } = v13;
  const c1 = bc({ ...b13, vocab_size: 64000 });
  assert.equal(c1.normHead, false);
  assert.deepEqual(c1.alibiSlopes, alibiSlopes(4));
  // Baichuan-7B's architecture is rotary whatever its length keys say
  const { max_position_embeddings: _m, ...v1NoLen } = v1;
  assert.equal(bc(v1NoLen).alibiSlopes, null);
});

Deno.test("config: Baichuan keys the remote code cannot run are ConfigErrors naming them", () => {
  throwsConfig({ ...v2, num_key_value_heads: 2 }, "num_key_value_heads", /one key and value head/);
  throwsConfig({ ...v1, num_attention_heads: 5 }, "num_attention_heads", /does not divide/);
  throwsConfig({ ...v1, rope_theta: 500000 }, "rope_theta", /10000/);
  throwsConfig({ ...v1, rope_scaling: { type: "linear", factor: 2 } }, "rope_scaling", /no rope/);
  throwsConfig({ ...v1, max_position_embeddings: "4k" }, "max_position_embeddings", /positive/);
  throwsConfig({ ...v1, hidden_act: "relu2" }, "hidden_act", /unsupported activation/);
  // the length falls back to model_max_length, then to the class default 4096
  const { max_position_embeddings: _, ...noLen } = v1;
  assert.equal(bc(noLen).maxPositionEmbeddings, 4096);
  assert.equal(bc({ ...noLen, model_max_length: 512 }).maxPositionEmbeddings, 512);
});

Deno.test("placement: W_pack is q | k | v rows; split projections are not the hub layout", () => {
  const c = bc(v2);
  const fused = baichuan.placeFused!("model.layers.1.self_attn.W_pack.weight", c)!;
  assert.deepEqual(
    fused.map((p) => [p.part, p.local, p.rows![0], p.rows!.length, p.rows!.at(-1)]),
    [
      [{ kind: "layer", index: 1 }, "self_attn.q_proj.weight", 0, 64, 63],
      [{ kind: "layer", index: 1 }, "self_attn.k_proj.weight", 64, 64, 127],
      [{ kind: "layer", index: 1 }, "self_attn.v_proj.weight", 128, 64, 191],
    ],
  );
  assert.equal(baichuan.placeFused!("model.layers.2.self_attn.W_pack.weight", c), undefined);
  assert.equal(baichuan.placeFused!("model.layers.0.self_attn.o_proj.weight", c), undefined);
  assert.equal(baichuan.place("model.layers.0.self_attn.q_proj.weight", c), undefined);
  assert.equal(baichuan.place("model.layers.0.self_attn.W_pack.bias", c), undefined);
  assert.deepEqual(baichuan.place("model.layers.0.self_attn.o_proj.weight", c), {
    part: { kind: "layer", index: 0 },
    local: "self_attn.o_proj.weight",
  });
  // Baichuan-7B's persistent rotary buffer is known and unused
  assert.equal(baichuan.place("model.layers.0.self_attn.rotary_emb.inv_freq", bc(v1))?.part, null);
});

Deno.test("placement: Baichuan 2's lm_head rows are normalized at split time, Baichuan-7B's not", () => {
  assert.deepEqual(baichuan.place("lm_head.weight", bc(v2)), {
    part: { kind: "lm_head" },
    local: "weight",
    unitRows: true,
  });
  assert.deepEqual(baichuan.place("lm_head.weight", bc(v1)), {
    part: { kind: "lm_head" },
    local: "weight",
  });
});
