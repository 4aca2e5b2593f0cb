"""InternLM 1 / 2 / 3 fixtures for make_reference.py (see scripts/remote_families/).

Reference route: native transformers classes on the same weights.
- internlm: LlamaForCausalLM(attention_bias=True) on the unchanged state dict (InternLM's q/k/v/o
  biases are Llama's attention_bias); hub layout = the remote config (`rotary`, `bias`, auto_map)
  plus the persistent `self_attn.rotary_emb.inv_freq` buffers the hub files carry.
- internlm2 / internlm2_bf16: LlamaForCausalLM; hub layout = q/k/v fused into `attention.wqkv`
  interleaved by KV group (rows (kv_heads, r + 2, head_dim): [q of heads g*r .. g*r+r-1 | k_g | v_g])
  and InternLM2's tensor names.
- internlm3: transformers 5.23's native InternLM3Config (AutoModelForCausalLM -> LlamaForCausalLM);
  hub layout = the remote config keys (`qkv_bias`, `bias`, auto_map).
The remote modeling code (PyPI xtuner==0.2.0, xtuner/_lite/modelings/internlm2|internlm3) was
checked once against these references on the same weights (never committed, never imported here).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import InternLM3Config

HEADS, KV_HEADS, HIDDEN = 4, 2, 64
HEAD_DIM = HIDDEN // HEADS
# internlm / internlm2 carry dynamic NTK rope. Their logits batch and greedy run stay within
# max_position_embeddings (256: the parity harness compares cached forwards with the uncached
# reference, and past it the original code's cached and uncached forwards differ for InternLM2,
# while only a full recompute is exact for InternLM). hub_layout adds beyond_max.json: a prompt of
# BEYOND_PROMPT tokens and the greedy continuation of BEYOND_NEW tokens, which crosses
# max_position_embeddings (tests/models/internlm_test.ts runs it with maxSeqLen raised).
BEYOND_PROMPT, BEYOND_NEW, BEYOND_SEED = 250, 16, 1717


def _write_config(out_dir: Path, cfg: dict) -> None:
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _save(out_dir: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: tensors[k].contiguous() for k in sorted(tensors)}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})


def _common(src: dict, dtype: str) -> dict:
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "rms_norm_eps", "hidden_act", "bos_token_id", "eos_token_id",
            "tie_word_embeddings", "initializer_range")
    out = {k: src[k] for k in keep}
    out["torch_dtype"] = dtype
    out["use_cache"] = True
    return out


def _dtype_of(src: dict) -> str:
    return str(src.get("dtype") or src.get("torch_dtype")).replace("torch.", "")


@torch.no_grad()
def _greedy_cached(model, prompt: torch.Tensor, n: int) -> tuple[list[int], torch.Tensor]:
    """Argmax decoding through the KV cache: the prompt in one forward, then one token at a time
    (each step's keys rotated with that step's table and kept so)."""
    out = model(input_ids=prompt, use_cache=True)
    tokens, rows = [], []
    for i in range(n):
        last = out.logits[0, -1].float()
        rows.append(last)
        tokens.append(int(torch.argmax(last)))
        if i + 1 < n:
            out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens, torch.stack(rows)


def _beyond_max(ref, out_dir: Path, fx, cache_keeps_rotation: bool) -> None:
    """beyond_max.json: greedy tokens of a prompt that ends just below max_position_embeddings, so
    the continuation crosses it and runs on the dynamic-NTK tables. "nocache": full forwards each
    step (what InternLM's original code computes with or without its cache: it re-rotates every
    cached key); "cache" (InternLM2 only): through the KV cache, keys kept with the table of their
    step, as InternLM2's original code does; "plain_rope": the no-cache tokens without the scaling,
    which must differ (else the seed is rejected: the file would not test the scaling)."""
    model = ref.load_f32(fx.model_cls, out_dir)
    c = model.config
    max_pos = c.max_position_embeddings
    assert BEYOND_PROMPT < max_pos < BEYOND_PROMPT + BEYOND_NEW, (BEYOND_PROMPT, max_pos)
    rng = np.random.default_rng(BEYOND_SEED)
    prompt = torch.from_numpy(rng.integers(3, c.vocab_size, size=(1, BEYOND_PROMPT))).long()
    nocache, rows = ref.greedy_manual(model, prompt, BEYOND_NEW)
    margin = ref.margins(rows)[0]
    out = {"prompt": prompt[0].tolist(), "max_position_embeddings": max_pos, "nocache": nocache}
    if cache_keeps_rotation:
        cached, crows = _greedy_cached(model, prompt, BEYOND_NEW)
        assert ref.greedy_generate(model, prompt, BEYOND_NEW) == cached, "generate() != the cached loop"
        margin = min(margin, ref.margins(crows)[0])
        out["cache"] = cached
    if margin <= ref.MARGIN_MIN:
        raise ref.SeedRejected(f"beyond_max: min top1-top2 margin {margin:.3g} <= {ref.MARGIN_MIN}")
    theta = c.rope_parameters["rope_theta"]
    plain = ref._reload_with(out_dir, fx.model_cls, rope_parameters={"rope_type": "default", "rope_theta": theta})
    out["plain_rope"], _ = ref.greedy_manual(plain, prompt, BEYOND_NEW)
    if out["plain_rope"] == nocache:
        raise ref.SeedRejected("beyond_max: the dynamic scaling does not change the greedy tokens")
    # tokens only: --check compares this file byte for byte (the margin check above keeps them stable)
    (out_dir / "beyond_max.json").write_text(ref.dump_json(out), encoding="utf-8")


# ---- InternLM (1) -------------------------------------------------------------------------------


def _internlm_layout(ref, theta: float, factor: float):
    def hub_layout(out_dir: Path, fx) -> str:
        _beyond_max(ref, out_dir, fx, cache_keeps_rotation=False)
        src = json.loads((out_dir / "config.json").read_text())
        rp = src["rope_parameters"]
        assert rp == {"rope_type": "dynamic", "factor": factor, "rope_theta": theta}, rp
        assert src["attention_bias"] is True and src["num_key_value_heads"] == src["num_attention_heads"]
        cfg = _common(src, _dtype_of(src))
        cfg.update(
            architectures=["InternLMForCausalLM"],
            auto_map={
                "AutoConfig": "configuration_internlm.InternLMConfig",
                "AutoModel": "modeling_internlm.InternLMForCausalLM",
                "AutoModelForCausalLM": "modeling_internlm.InternLMForCausalLM",
            },
            model_type="internlm",
            bias=True,
            # internlm-7b's form ({base: 10000, type: dynamic}, scaling_factor 1 when absent) with
            # scaling_factor 2: plain rope up to max_position_embeddings, past it base ·
            # (f · len / max − (f − 1))^(d / (d − 2))
            rotary={"base": int(theta), "type": "dynamic", "scaling_factor": factor},
            pad_token_id=0,
        )
        _write_config(out_dir, cfg)
        sd = load_file(str(out_dir / "model.safetensors"))
        dtype = next(iter(sd.values())).dtype
        inv_freq = 1.0 / (theta ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
        for i in range(src["num_hidden_layers"]):  # persistent in the hub files (older transformers)
            sd[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.to(dtype).clone()
        _save(out_dir, sd)
        return "InternLMForCausalLM"

    return hub_layout


# ---- InternLM2 ----------------------------------------------------------------------------------


def _interleave(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_heads: int, head_dim: int) -> torch.Tensor:
    """q [H*d, ...], k/v [KV*d, ...] -> wqkv rows (KV, r + 2, d): group g = q of heads g*r.. | k_g | v_g."""
    r = q.shape[0] // (kv_heads * head_dim)
    rest = q.shape[1:]
    qg = q.reshape(kv_heads, r, head_dim, *rest)
    kg = k.reshape(kv_heads, 1, head_dim, *rest)
    vg = v.reshape(kv_heads, 1, head_dim, *rest)
    return torch.cat([qg, kg, vg], dim=1).reshape(-1, *rest)


INTERNLM2_NAMES = {
    "self_attn.o_proj.weight": "attention.wo.weight",
    "self_attn.o_proj.bias": "attention.wo.bias",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
}


def _internlm2_layout(ref, beyond_max: bool):
    def hub_layout(out_dir: Path, fx) -> str:
        if beyond_max:
            _beyond_max(ref, out_dir, fx, cache_keeps_rotation=True)
        return _internlm2_files(out_dir)

    return hub_layout


def _internlm2_files(out_dir: Path) -> str:
    src = json.loads((out_dir / "config.json").read_text())
    kv, d = src["num_key_value_heads"], src["hidden_size"] // src["num_attention_heads"]
    rp = src["rope_parameters"]
    bias = bool(src["attention_bias"])
    sd = load_file(str(out_dir / "model.safetensors"))
    out: dict[str, torch.Tensor] = {
        "model.tok_embeddings.weight": sd.pop("model.embed_tokens.weight"),
        "model.norm.weight": sd.pop("model.norm.weight"),
        "output.weight": sd.pop("lm_head.weight"),
    }
    for i in range(src["num_hidden_layers"]):
        p = f"model.layers.{i}."
        kinds = ("weight", "bias") if bias else ("weight",)
        for kind in kinds:
            q, k, v = (sd.pop(f"{p}self_attn.{n}_proj.{kind}") for n in "qkv")
            out[f"{p}attention.wqkv.{kind}"] = _interleave(q, k, v, kv, d)
        for ours, theirs in INTERNLM2_NAMES.items():
            if f"{p}{ours}" in sd:
                out[f"{p}{theirs}"] = sd.pop(f"{p}{ours}")
    assert not sd, f"unmapped tensors: {sorted(sd)}"
    _save(out_dir, out)
    cfg = _common(src, _dtype_of(src))
    scaling = None if rp["rope_type"] == "default" else {"type": rp["rope_type"], "factor": rp["factor"]}
    cfg.update(
        architectures=["InternLM2ForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        },
        model_type="internlm2",
        num_key_value_heads=kv,
        bias=bias,
        rope_theta=rp["rope_theta"],
        rope_scaling=scaling,
        attn_implementation="eager",
        pretraining_tp=1,
        pad_token_id=2,
    )
    _write_config(out_dir, cfg)
    return "InternLM2ForCausalLM"


def _feat_wqkv_blocks(ref):
    """The alternative a reader of wqkv as [q | k | v] blocks (no KV-group interleave) computes."""

    def feat(model_dir: Path, fx):
        m = ref.load_f32(fx.model_cls, model_dir)
        c = m.config
        d = c.hidden_size // c.num_attention_heads
        qd, kvd = c.num_attention_heads * d, c.num_key_value_heads * d
        with torch.no_grad():
            for layer in m.model.layers:
                a = layer.self_attn
                for kind in ("weight", "bias"):
                    ps = [getattr(getattr(a, f"{n}_proj"), kind) for n in "qkv"]
                    if ps[0] is None:
                        continue
                    fused = _interleave(*(p.detach().clone() for p in ps), c.num_key_value_heads, d)
                    for p, part in zip(ps, fused.split([qd, kvd, kvd], dim=0)):
                        p.copy_(part)
        return ("wqkv read as [q | k | v] blocks (no KV-group interleave)", m)

    return feat


# ---- InternLM3 ----------------------------------------------------------------------------------


def _internlm3_layout(out_dir: Path, fx) -> str:
    src = json.loads((out_dir / "config.json").read_text())
    assert src["model_type"] == "internlm3", src["model_type"]
    rp = src["rope_parameters"]
    cfg = _common(src, _dtype_of(src))
    cfg.update(
        architectures=["InternLM3ForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_internlm3.InternLM3Config",
            "AutoModel": "modeling_internlm3.InternLM3Model",
            "AutoModelForCausalLM": "modeling_internlm3.InternLM3ForCausalLM",
        },
        model_type="internlm3",
        num_key_value_heads=src["num_key_value_heads"],
        head_dim=src["head_dim"],
        qkv_bias=src["attention_bias"],
        bias=src["mlp_bias"],
        rope_theta=rp["rope_theta"],
        rope_scaling=None,
        attention_dropout=0.0,
        pad_token_id=2,
    )
    _write_config(out_dir, cfg)
    return "InternLM3ForCausalLM"


def _feat_zero_mlp_bias(ref):
    def feat(model_dir: Path, fx):
        m = ref.load_f32(fx.model_cls, model_dir)
        with torch.no_grad():
            for layer in m.model.layers:
                for proj in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                    proj.bias.zero_()
        return ("MLP (bias) biases -> 0", m)

    return feat


def _feat_theta(ref, theta: float):
    def feat(model_dir: Path, fx):
        return (
            f"rope theta -> {theta:g}",
            ref._reload_with(model_dir, fx.model_cls, rope_parameters={"rope_type": "default", "rope_theta": theta}),
        )

    return feat


def fixtures(ref) -> list:
    base = dict(ref.BASE, tie_word_embeddings=False)
    return [
        ref.Fixture(
            name="internlm",
            model_cls=ref.LlamaForCausalLM,
            config_cls=ref.LlamaConfig,
            config=dict(base, num_key_value_heads=HEADS, attention_bias=True,
                        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
            seed=17113,
            feature=ref.feat_zero_attention_bias,
            more_features=(_feat_theta(ref, 50000.0),),
            hub_layout=_internlm_layout(ref, 10000.0, 2.0),
            notes="InternLM (1) hub layout: remote config (bias true, legacy rotary {base 10000, type dynamic, "
            "scaling_factor 2}), Llama tensor names plus persistent self_attn.rotary_emb.inv_freq; MHA; "
            "random q/k/v/o biases; max_position_embeddings 16: greedy tokens 9..24 use the dynamic NTK table "
            "(the original re-rotates all keys, = a full recompute). "
            "Reference: LlamaForCausalLM(attention_bias, rope dynamic factor 2), greedy = the no-cache loop",
        ),
        ref.Fixture(
            name="internlm2",
            model_cls=ref.LlamaForCausalLM,
            config_cls=ref.LlamaConfig,
            config=dict(base,
                        rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}),
            seed=17214,
            feature=_feat_wqkv_blocks(ref),
            hub_layout=_internlm2_layout(ref, beyond_max=True),
            notes="InternLM2 hub layout: attention.wqkv interleaved by KV group (4 heads / 2 KV heads: r = 2), "
            "wo, feed_forward.w1/w3/w2, attention_norm, ffn_norm, tok_embeddings, output; bias false as released; "
            "rope_scaling {type dynamic, factor 4} with max_position_embeddings 16: greedy tokens "
            "9..24 use the scaled tables. Reference: de-interleaved + renamed -> LlamaForCausalLM (rope dynamic)",
        ),
        ref.Fixture(
            name="internlm2_bf16",
            model_cls=ref.LlamaForCausalLM,
            config_cls=ref.LlamaConfig,
            config=dict(base, attention_bias=True,
                        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
            seed=17300,
            storage_dtype="bfloat16",
            feature=_feat_wqkv_blocks(ref),
            more_features=(ref.feat_zero_attention_bias,),
            hub_layout=_internlm2_layout(ref, beyond_max=False),
            notes="internlm2 layout stored as bfloat16, with bias true (InternLM2Config's default): wqkv.bias "
            "interleaved like its rows, wo.bias. Reference: bf16 weights upcast, float32 compute",
        ),
        ref.Fixture(
            name="internlm3",
            model_cls=ref.LlamaForCausalLM,
            config_cls=InternLM3Config,
            config=dict(base, head_dim=32, attention_bias=True, mlp_bias=True,
                        rope_parameters={"rope_type": "default", "rope_theta": 50000000.0}),
            seed=17400,
            feature=ref.feat_zero_attention_bias,
            more_features=(_feat_zero_mlp_bias(ref),),
            hub_layout=_internlm3_layout,
            notes="InternLM3 hub layout (remote config keys qkv_bias / bias, auto_map); head_dim 32 != hidden/heads; "
            "qkv_bias and bias true (random q/k/v, o_proj and MLP biases); rope_theta 5e7. "
            "Reference: transformers 5.23's native InternLM3Config -> LlamaForCausalLM",
        ),
    ]
