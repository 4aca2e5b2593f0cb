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

import torch
from safetensors.torch import load_file, save_file
from transformers import InternLM3Config

HEADS, KV_HEADS, HIDDEN = 4, 2, 64
HEAD_DIM = HIDDEN // HEADS


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


# ---- InternLM (1) -------------------------------------------------------------------------------


def _internlm_layout(theta: float):
    def hub_layout(out_dir: Path, fx) -> str:
        src = json.loads((out_dir / "config.json").read_text())
        assert src["rope_parameters"] == {"rope_type": "default", "rope_theta": theta}, src["rope_parameters"]
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
            # as released (internlm-7b): dynamic NTK with the default scaling_factor 1, which is plain
            # rope up to max_position_embeddings (every position here)
            rotary={"base": int(theta), "type": "dynamic"},
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


def _internlm2_layout(out_dir: Path, fx) -> str:
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
                        rope_parameters={"rope_type": "default", "rope_theta": 50000.0}),
            seed=17102,
            feature=ref.feat_zero_attention_bias,
            more_features=(_feat_theta(ref, 10000.0),),
            hub_layout=_internlm_layout(50000.0),
            notes="InternLM (1) hub layout: remote config (bias true, legacy rotary {base 50000, type dynamic}: "
            "plain rope below max_position_embeddings), Llama tensor names plus persistent "
            "self_attn.rotary_emb.inv_freq; MHA; random q/k/v/o biases. Reference: LlamaForCausalLM(attention_bias)",
        ),
        ref.Fixture(
            name="internlm2",
            model_cls=ref.LlamaForCausalLM,
            config_cls=ref.LlamaConfig,
            config=dict(base, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
            seed=17203,
            feature=_feat_wqkv_blocks(ref),
            hub_layout=_internlm2_layout,
            notes="InternLM2 hub layout: attention.wqkv interleaved by KV group (4 heads / 2 KV heads: r = 2), "
            "wo, feed_forward.w1/w3/w2, attention_norm, ffn_norm, tok_embeddings, output; bias false as released; "
            "rope_theta 1e6. Reference: de-interleaved + renamed -> LlamaForCausalLM",
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
            hub_layout=_internlm2_layout,
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
