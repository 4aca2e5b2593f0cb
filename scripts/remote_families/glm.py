"""GLM fixtures for make_reference.py (see scripts/remote_families/).

Native classes (transformers 5.23):
- glm: GlmForCausalLM (q/k/v biases, fused gate_up_proj, rope on the first half of each head on
  adjacent pairs).
- glm4: Glm4ForCausalLM (GlmForCausalLM's layer plus post_self_attn_layernorm / post_mlp_layernorm).

Remote-code ChatGLM2/3 and GLM-4 (model_type "chatglm", ChatGLMModel): the reference is
GlmForCausalLM on the same weights after splitting query_key_value and renaming
(head_dim = kv_channels, partial_rotary_factor 0.5, rope_theta = 10000 * rope_ratio; ChatGLM2-32k's
positions / rope_ratio = a linear rope of factor rope_ratio). hub_layout then writes the remote
config.json (auto_map, the remote keys) and the original tensor names: query_key_value fused
(q | k | v rows with multi_query_attention, q_h | k_h | v_h per head without), dense,
dense_h_to_4h ([gate | up]), dense_4h_to_h, final_layernorm, output_layer, and the persistent
transformer.rotary_pos_emb.inv_freq buffer the hub files carry.
- chatglm3: ChatGLM3-6B's layout: MQA with 2 groups (4 heads), qkv bias, no rope_ratio, fp32.
- glm4_remote: GLM-4-9B's layout: rope_ratio 500 (base 5e6), layernorm_epsilon 1.5625e-07, bf16.
- chatglm2_32k: ChatGLM2-6B-32k's code (positions / rope_ratio 16; selected by _name_or_path),
  multi_query_attention false (per-head interleaved query_key_value rows), fp32.
- chatglm_layernorm: the switches no native class has (rmsnorm false, add_bias_linear,
  apply_residual_connection_post_layernorm) and one MQA group; reference ChatGlmVariantForCausalLM
  (GlmForCausalLM with LayerNorms, the extra biases and the other residual, below).
The original modeling code was checked once against these references (cross_check() below: the
ChatGLM2 modeling file modelscope 1.40.2 vendors, plus a transcription of the base * rope_ratio rope
of the chatglm3 / glm-4 files): max|Δlogit| 8.3e-7, 7.8e-7, 7.8e-7, 7.2e-7 (chatglm3, glm4_remote,
chatglm2_32k, chatglm_layernorm). It is never committed nor imported by fixture generation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Glm4Config, Glm4ForCausalLM, GlmConfig, GlmForCausalLM
from transformers.models.glm.modeling_glm import GlmDecoderLayer

AUTO_MAP = {
    "AutoConfig": "configuration_chatglm.ChatGLMConfig",
    "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
}


def remote_config(name_or_path: str, dtype: str, **over) -> dict:
    """A chatglm config.json as the hub carries it (chatglm3-6b's keys, scaled down)."""
    cfg = {
        "_name_or_path": name_or_path,
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": AUTO_MAP,
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": 128,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": 64,
        "kv_channels": 16,
        "layernorm_epsilon": 1e-05,
        "multi_query_attention": True,
        "multi_query_group_num": 2,
        "num_attention_heads": 4,
        "num_layers": 2,
        "original_rope": True,
        "padded_vocab_size": 256,
        "post_layer_norm": True,
        "rmsnorm": True,
        "seq_length": 256,
        "use_cache": True,
        "torch_dtype": dtype,
        "transformers_version": "4.30.2",
        "tie_word_embeddings": False,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    cfg.update(over)
    return cfg


def native_config(remote: dict) -> dict:
    """The GlmConfig kwargs that compute what the remote code computes for `remote`."""
    heads = remote["num_attention_heads"]
    ratio = remote.get("rope_ratio", 1)
    chatglm2 = any(n in remote["_name_or_path"].lower() for n in ("chatglm2", "codegeex2"))
    if ratio != 1 and chatglm2:  # chatglm2-6b-32k: seq_idx / rope_ratio
        rope = {"rope_type": "linear", "factor": float(ratio), "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    else:  # chatglm3 / glm-4: base = 10000 * rope_ratio
        rope = {"rope_type": "default", "rope_theta": 10000.0 * ratio, "partial_rotary_factor": 0.5}
    assert remote["post_layer_norm"]
    variant = dict(
        chatglm_layernorm=not remote["rmsnorm"],
        chatglm_bias_linear=remote["add_bias_linear"],
        chatglm_residual_from_norm=remote["apply_residual_connection_post_layernorm"],
    )
    return dict(
        **{k: v for k, v in variant.items() if v},
        vocab_size=remote["padded_vocab_size"],
        hidden_size=remote["hidden_size"],
        intermediate_size=remote["ffn_hidden_size"],
        num_hidden_layers=remote["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=remote["multi_query_group_num"] if remote["multi_query_attention"] else heads,
        head_dim=remote["kv_channels"],
        max_position_embeddings=remote["seq_length"],
        rms_norm_eps=remote["layernorm_epsilon"],
        attention_bias=remote["add_qkv_bias"] or remote["add_bias_linear"],
        tie_word_embeddings=False,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=remote["eos_token_id"],
        rope_parameters=rope,
    )


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, remote: dict) -> torch.Tensor:
    """query_key_value rows (weight [rows, D] or bias [rows]) as the remote code splits them."""
    if remote["multi_query_attention"]:
        return torch.cat([q, k, v], dim=0)
    heads, hd = remote["num_attention_heads"], remote["kv_channels"]
    per_head = [t.reshape(heads, hd, *t.shape[1:]) for t in (q, k, v)]
    return torch.stack(per_head, dim=1).reshape(3 * heads * hd, *q.shape[1:])


def to_remote(sd: dict[str, torch.Tensor], remote: dict) -> dict[str, torch.Tensor]:
    """GlmForCausalLM tensor names -> ChatGLMModel's (fused query_key_value and dense_h_to_4h)."""
    norms = ("weight",) if remote["rmsnorm"] else ("weight", "bias")  # LayerNorm: weight and bias
    linear = ("weight", "bias") if remote["add_bias_linear"] else ("weight",)
    qkv = ("weight", "bias") if remote["add_qkv_bias"] or remote["add_bias_linear"] else ("weight",)
    out = {
        "transformer.embedding.word_embeddings.weight": sd["model.embed_tokens.weight"],
        "transformer.output_layer.weight": sd["lm_head.weight"],
    }
    for kind in norms:
        out[f"transformer.encoder.final_layernorm.{kind}"] = sd[f"model.norm.{kind}"]
    for i in range(remote["num_layers"]):
        p, r = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        for kind in norms:
            out[f"{r}input_layernorm.{kind}"] = sd[f"{p}input_layernorm.{kind}"]
            out[f"{r}post_attention_layernorm.{kind}"] = sd[f"{p}post_attention_layernorm.{kind}"]
        for kind in qkv:
            q, k, v = (sd[f"{p}self_attn.{n}_proj.{kind}"] for n in "qkv")
            out[f"{r}self_attention.query_key_value.{kind}"] = fuse_qkv(q, k, v, remote)
        for kind in linear:
            out[f"{r}self_attention.dense.{kind}"] = sd[f"{p}self_attn.o_proj.{kind}"]
            out[f"{r}mlp.dense_h_to_4h.{kind}"] = sd[f"{p}mlp.gate_up_proj.{kind}"]  # [gate | up], SwiGLU
            out[f"{r}mlp.dense_4h_to_h.{kind}"] = sd[f"{p}mlp.down_proj.{kind}"]
    fused = len(qkv) * 3 * remote["num_layers"]  # q/k/v tensors that became query_key_value ones
    assert len(sd) == len(out) - len(qkv) * remote["num_layers"] + fused, (sorted(sd), sorted(out))
    dtype = out["transformer.output_layer.weight"].dtype
    dim = remote["kv_channels"] // 2  # RotaryEmbedding(rotary_dim // 2)'s persistent buffer
    out["transformer.rotary_pos_emb.inv_freq"] = (
        1.0 / (10000 ** (torch.arange(0, dim, 2).to(dtype=dtype) / dim))
    ).to(dtype)
    return out


class _ResidualFromNormLayer(GlmDecoderLayer):
    """GLMBlock with apply_residual_connection_post_layernorm: residuals from the normed inputs."""

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, position_embeddings=None, **kwargs):
        normed = self.input_layernorm(hidden_states)
        attn, _ = self.self_attn(hidden_states=normed, attention_mask=attention_mask, position_ids=position_ids,
                                 past_key_values=past_key_values, use_cache=use_cache,
                                 position_embeddings=position_embeddings, **kwargs)
        normed = self.post_attention_layernorm(normed + attn)
        return normed + self.mlp(normed)


class ChatGlmVariantForCausalLM(GlmForCausalLM):
    """GlmForCausalLM with the ChatGLM switches no native class has (the chatglm_layernorm
    reference), from config attributes: chatglm_layernorm (rmsnorm false: every norm a LayerNorm
    with bias), chatglm_bias_linear (add_bias_linear: biases on o_proj, gate_up_proj, down_proj),
    chatglm_residual_from_norm (apply_residual_connection_post_layernorm)."""

    def __init__(self, config):
        super().__init__(config)
        D, I, eps = config.hidden_size, config.intermediate_size, config.rms_norm_eps
        layernorm = getattr(config, "chatglm_layernorm", False)
        if layernorm:
            self.model.norm = torch.nn.LayerNorm(D, eps=eps)
        for layer in self.model.layers:
            if layernorm:
                layer.input_layernorm = torch.nn.LayerNorm(D, eps=eps)
                layer.post_attention_layernorm = torch.nn.LayerNorm(D, eps=eps)
            if getattr(config, "chatglm_bias_linear", False):
                a, m = layer.self_attn, layer.mlp
                a.o_proj = torch.nn.Linear(a.o_proj.in_features, D, bias=True)
                m.gate_up_proj = torch.nn.Linear(D, 2 * I, bias=True)
                m.down_proj = torch.nn.Linear(I, D, bias=True)
            if getattr(config, "chatglm_residual_from_norm", False):
                layer.__class__ = _ResidualFromNormLayer
        self.post_init()


def _feat_residual_from_input(model_dir: Path, fx):
    return ("apply_residual_connection_post_layernorm -> false",
            _reload(model_dir, fx, chatglm_residual_from_norm=False))


def _chatglm_layout(remote: dict):
    def hub_layout(out_dir: Path, fx) -> str:
        native = json.loads((out_dir / "config.json").read_text())
        assert native["head_dim"] == remote["kv_channels"], native
        sd = load_file(str(out_dir / "model.safetensors"))
        tensors = to_remote(sd, remote)
        (out_dir / "model.safetensors").unlink()
        save_file({k: tensors[k].contiguous() for k in sorted(tensors)}, str(out_dir / "model.safetensors"),
                  metadata={"format": "pt"})
        (out_dir / "config.json").write_text(json.dumps(remote, indent=2) + "\n")
        return remote["architectures"][0]

    return hub_layout


def _feat_rope_theta(theta: float):
    def feat(model_dir: Path, fx):
        rp = dict(fx.config["rope_parameters"], rope_type="default", rope_theta=theta)
        rp.pop("factor", None)
        return (f"rope -> default, rope_theta {theta:g}", _reload(model_dir, fx, rope_parameters=rp))

    return feat


def _reload(model_dir: Path, fx, **over):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    for k, v in over.items():
        setattr(cfg, k, v)
    m = fx.model_cls.from_pretrained(model_dir, config=cfg, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


def _feat_rotate_half(model_dir: Path, fx):
    """GLM's adjacent-pair rope swapped for rotate-half (Llama's): a different model."""
    import transformers.models.glm.modeling_glm as mg
    import transformers.models.glm4.modeling_glm4 as mg4
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_rope

    def half(q, k, cos, sin, unsqueeze_dim=1):
        rot = cos.shape[-1]
        qr, kr = llama_rope(q[..., :rot], k[..., :rot], cos, sin, unsqueeze_dim)
        return torch.cat([qr, q[..., rot:]], dim=-1), torch.cat([kr, k[..., rot:]], dim=-1)

    m = _reload(model_dir, fx)
    mod = mg4 if fx.model_cls is Glm4ForCausalLM else mg
    orig = mod.apply_rotary_pos_emb

    class Swapped(torch.nn.Module):  # applies the swap only while this model runs
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config
            self.generation_config = inner.generation_config

        def forward(self, *a, **kw):
            mod.apply_rotary_pos_emb = half
            try:
                return self.inner(*a, **kw)
            finally:
                mod.apply_rotary_pos_emb = orig

    return ("adjacent-pair rope -> rotate-half rope", Swapped(m))


def _feat_no_sandwich(model_dir: Path, fx):
    m = _reload(model_dir, fx)
    for layer in m.model.layers:
        layer.post_self_attn_layernorm = torch.nn.Identity()
        layer.post_mlp_layernorm = torch.nn.Identity()
    return ("post_self_attn_layernorm / post_mlp_layernorm -> identity", m)


def fixtures(ref) -> list:
    base = dict(ref.BASE, head_dim=16, pad_token_id=None, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    chatglm3 = remote_config("THUDM/chatglm3-6b", "float32")
    glm4_remote = remote_config("THUDM/glm-4-9b-chat", "bfloat16", rope_ratio=500, layernorm_epsilon=1.5625e-07,
                                seq_length=1024, eos_token_id=[2, 3], transformers_version="4.44.0")
    chatglm_ln = remote_config("THUDM/chatglm3-6b", "float32", rmsnorm=False, add_bias_linear=True, add_qkv_bias=False,
                               apply_residual_connection_post_layernorm=True, multi_query_group_num=1)
    chatglm2 = remote_config("THUDM/chatglm2-6b-32k", "float32", rope_ratio=16, multi_query_attention=False,
                             multi_query_group_num=2, transformers_version="4.27.1")
    return [
        ref.Fixture(
            name="glm",
            model_cls=GlmForCausalLM,
            config_cls=GlmConfig,
            config=base,
            seed=12000,
            logits_len=16,
            feature=_feat_rotate_half,
            more_features=(ref.feat_full_rotary, ref.feat_zero_qkv_bias),
            notes="GlmForCausalLM: q/k/v biases, no o_proj bias, fused gate_up_proj, partial_rotary_factor 0.5 "
            "on adjacent pairs, GQA 4/2, head_dim 16",
        ),
        ref.Fixture(
            name="glm4",
            model_cls=Glm4ForCausalLM,
            config_cls=Glm4Config,
            config=base,
            seed=12104,
            logits_len=16,
            feature=_feat_no_sandwich,
            more_features=(_feat_rotate_half,),
            notes="Glm4ForCausalLM: GLM's layer plus post_self_attn_layernorm and post_mlp_layernorm",
        ),
        ref.Fixture(
            name="chatglm3",
            model_cls=GlmForCausalLM,
            config_cls=GlmConfig,
            config=native_config(chatglm3),
            seed=12200,
            logits_len=16,
            feature=ref.feat_zero_qkv_bias,
            more_features=(_feat_rotate_half,),
            hub_layout=_chatglm_layout(chatglm3),
            notes="ChatGLM3-6B hub layout (remote code, ChatGLMModel): query_key_value q | k | v with "
            "multi_query_group_num 2, qkv bias, dense_h_to_4h [gate | up]; reference GlmForCausalLM",
        ),
        ref.Fixture(
            name="glm4_remote",
            model_cls=GlmForCausalLM,
            config_cls=GlmConfig,
            config=native_config(glm4_remote),
            seed=12301,
            storage_dtype="bfloat16",
            logits_len=16,
            feature=_feat_rope_theta(10000.0),
            hub_layout=_chatglm_layout(glm4_remote),
            notes="GLM-4-9B hub layout (remote code): rope_ratio 500 (base 5e6), layernorm_epsilon 1.5625e-07, "
            "weights bf16; reference GlmForCausalLM on the bf16 weights upcast, fp32 compute",
        ),
        ref.Fixture(
            name="chatglm2_32k",
            model_cls=GlmForCausalLM,
            config_cls=GlmConfig,
            config=native_config(chatglm2),
            seed=12403,
            logits_len=16,
            feature=_feat_rope_theta(10000.0),
            hub_layout=_chatglm_layout(chatglm2),
            notes="ChatGLM2-6B-32k code (selected by _name_or_path): positions / rope_ratio 16 (linear rope); "
            "multi_query_attention false: query_key_value rows q_h | k_h | v_h per head",
        ),
        ref.Fixture(
            name="chatglm_layernorm",
            model_cls=ChatGlmVariantForCausalLM,
            config_cls=GlmConfig,
            config=native_config(chatglm_ln),
            seed=12501,
            logits_len=16,
            feature=_feat_residual_from_input,
            more_features=(_feat_rotate_half,),
            hub_layout=_chatglm_layout(chatglm_ln),
            notes="ChatGLM switches no native class has: rmsnorm false (LayerNorms with bias, final one too), "
            "add_bias_linear (biases on query_key_value, dense, dense_h_to_4h, dense_4h_to_h), "
            "apply_residual_connection_post_layernorm (residuals from the normed inputs), one MQA group; "
            "reference GlmForCausalLM with those three swaps (ChatGlmVariantForCausalLM)",
        ),
    ]


# ---- one-off cross-check against the original remote code ---------------------------------------
#
#   pip download --no-deps -d /tmp/msdl modelscope==1.40.2   (or pip install --no-deps --target /tmp/ms)
#   cd /tmp/ms && unzip -o /tmp/msdl/modelscope-1.40.2-py3-none-any.whl 'modelscope/models/nlp/chatglm2/*'
#   python scripts/remote_families/glm.py /tmp/ms
#
# modelscope vendors ChatGLM2's modeling file (modelscope/models/nlp/chatglm2/text_generation.py,
# the chatglm2-6b-32k version: seq_idx / rope_ratio). Its GLMTransformer, RotaryEmbedding and
# Embedding run on each committed chatglm fixture's hub files (the few lines of ChatGLMModel.forward
# that join them are repeated here); for rope_ratio without a chatglm2 _name_or_path the rope table
# is the chatglm3 / glm-4 files' forward_impl (base = 10000 * rope_ratio), transcribed below.


def _load_original(root: Path):
    import importlib.util
    import sys
    import types

    def stub(name: str, **attrs):
        m = types.ModuleType(name)
        m.__path__ = []  # a package
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    class _Any:
        def __getattr__(self, _):
            return "x"

    class _Registry:
        def register_module(self, *a, **k):
            return lambda cls: cls

    import logging

    stub("modelscope", Model=type("Model", (), {}), TorchModel=type("TorchModel", (), {}))
    stub("modelscope.metainfo", Models=_Any())
    stub("modelscope.outputs", OutputKeys=_Any())
    stub("modelscope.utils", logger=types.SimpleNamespace(get_logger=lambda *a: logging.getLogger("x")))
    stub("modelscope.utils.constant", Tasks=_Any())
    stub("modelscope.models", MODELS=_Registry())
    stub("modelscope.models.nlp")
    stub("modelscope.models.nlp.chatglm2")
    d = root / "modelscope" / "models" / "nlp" / "chatglm2"
    mods = {}
    for name in ("configuration", "text_generation"):
        full = f"modelscope.models.nlp.chatglm2.{name}"
        spec = importlib.util.spec_from_file_location(full, d / f"{name}.py")
        mods[name] = importlib.util.module_from_spec(spec)
        sys.modules[full] = mods[name]
        spec.loader.exec_module(mods[name])
    return mods["configuration"], mods["text_generation"]


def _glm4_forward_impl(self, seq_len, n_elem, dtype, device, base=10000):
    """RotaryEmbedding.forward_impl of chatglm3-6b(-32k) / glm-4-9b modeling_chatglm.py."""
    base = base * self.rope_ratio
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float, device=device) / n_elem))
    seq_idx = torch.arange(seq_len, dtype=torch.float, device=device)
    idx_theta = torch.outer(seq_idx, theta).float()
    cache = torch.stack([torch.cos(idx_theta), torch.sin(idx_theta)], dim=-1)
    if dtype in (torch.float16, torch.bfloat16, torch.int8):
        cache = cache.bfloat16() if dtype == torch.bfloat16 else cache.half()
    return cache


@torch.no_grad()
def original_logits(conf_mod, tg, model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    raw = json.loads((model_dir / "config.json").read_text())
    cfg = conf_mod.ChatGLM2Config(**{k: v for k, v in raw.items() if k not in ("auto_map", "architectures")})
    cfg.torch_dtype = torch.float32
    chatglm2 = any(n in raw["_name_or_path"].lower() for n in ("chatglm2", "codegeex2"))
    emb = tg.Embedding(cfg)
    rotary = tg.RotaryEmbedding(cfg.kv_channels // 2, rope_ratio=cfg.rope_ratio, original_impl=cfg.original_rope,
                                dtype=torch.float32)
    if not chatglm2:
        rotary.forward_impl = types_method(_glm4_forward_impl, rotary)
    enc = tg.GLMTransformer(cfg)
    out = torch.nn.Linear(cfg.hidden_size, cfg.padded_vocab_size, bias=False)
    sd = {k: v.float() for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    emb.load_state_dict({"word_embeddings.weight": sd.pop("transformer.embedding.word_embeddings.weight")})
    out.load_state_dict({"weight": sd.pop("transformer.output_layer.weight")})
    rotary.load_state_dict({"inv_freq": sd.pop("transformer.rotary_pos_emb.inv_freq")})
    enc.load_state_dict({k.removeprefix("transformer.encoder."): v for k, v in sd.items()})
    for m in (emb, rotary, enc, out):
        m.eval()
    # ChatGLMModel.forward / ChatGLMForConditionalGeneration.forward, no cache, no mask given
    hidden = emb(ids)
    rope = rotary(cfg.seq_length)[None, : ids.shape[1]].transpose(0, 1).contiguous()
    hidden = enc(hidden, None, rotary_pos_emb=rope, kv_caches=None, use_cache=False)[0]
    return out(hidden).transpose(0, 1).float()


def types_method(fn, obj):
    import types

    return types.MethodType(fn, obj)


def cross_check(root: Path) -> None:
    import numpy as np

    conf_mod, tg = _load_original(root)
    fixtures = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
    for name in ("chatglm3", "glm4_remote", "chatglm2_32k", "chatglm_layernorm"):
        d = fixtures / name
        ref = json.loads((d / "reference.json").read_text())
        ids = torch.tensor(ref["logits"]["input_ids"])
        want = torch.from_numpy(np.fromfile(d / "logits.bin", dtype="<f4").reshape(ref["logits"]["dims"]))
        got = original_logits(conf_mod, tg, d, ids)
        diff = float((got - want).abs().max())
        print(f"{name}: original remote code vs fixture reference max|Δlogit| = {diff:.3g} "
              f"(max|logit| {float(want.abs().max()):.3g})")


if __name__ == "__main__":
    import sys

    cross_check(Path(sys.argv[1]))
