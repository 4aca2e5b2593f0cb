"""Baichuan 1 / 2 (7B and 13B): tiny fixtures for scripts/make_reference.py.

Reference route: the original checkpoints are Llama with three deltas, so the reference is a
native transformers LlamaForCausalLM on the same weights, and `hub_layout` rewrites the directory
into the original hub layout afterwards:

- `model.layers.N.self_attn.W_pack.weight` [3·hidden, hidden] = q_proj | k_proj | v_proj rows
  (contiguous thirds, no bias; `proj.unflatten(-1, (3, hidden_size))` in the remote code).
- Baichuan-7B (`BaiChuanForCausalLM`, capital C) registers `rotary_emb.inv_freq` as a persistent
  buffer, so its files carry one per layer; Baichuan 2 keeps it as a plain attribute (not saved).
- Baichuan 2 (`BaichuanForCausalLM`) stores `lm_head.weight` un-normalized and computes with
  normalize(W) per row (NormHead; in eval mode it normalizes `self.weight` in place on the first
  forward). The native model here is `NormHeadLlamaForCausalLM`: LlamaForCausalLM whose lm_head
  Linear is replaced by that normalization (F.linear(x, F.normalize(W))); nothing else differs.
  The hub config has no flag for it: our rule (lib/models/baichuan.ts) is `BaichuanForCausalLM`
  with `vocab_size` 125696 (vLLM's rule; Baichuan 2's tokenizer) or a `z_loss_weight` key
  (written by Baichuan 2's configuration classes, absent from Baichuan-13B's), so the tiny
  fixtures carry `z_loss_weight: 0` as the Baichuan2-7B hub config does.
- Baichuan2-7B computes rope in float32 whatever the model dtype; the reference (and our engine)
  computes everything in float32, so this changes nothing here (bf16 fixtures store bf16 weights,
  compute stays float32).
- The 13B models (Baichuan-13B, Baichuan2-13B) have no rope: each head adds slope · j to the
  score of key j (ALiBi, slopes by `_get_interleave`), the mask is cast to the model dtype and the
  softmax runs in that dtype. No package index carries that code, so `Baichuan13BReference` is a
  short torch transcription of its attention (`AlibiAttention`, mask by `_gen_alibi_mask`) on
  LlamaForCausalLM's other modules + NormHead. Its mask equals, bit for bit, the one of the
  Baichuan2-13B code that ipex-llm 2.2.0 carries (ipex_llm/transformers/models/baichuan.py,
  `baichuan_13b_gen_alibi_mask`), checked for 5, 6, 12 and 40 heads. In float32 the dtype casts
  are no-ops; in bfloat16 compute they are not (a bias of 0.84 · 3000 rounds in steps of 16), which
  the float32 reference, like our engine (relative bias slope · (j − i), float32), does not follow.

The remote code itself is never imported here (see cross_check() for the one-off comparison).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention

# What the original configuration classes write next to the shape keys (remote config.json).
REMOTE_COMMON = {
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "model_type": "baichuan",
    "pad_token_id": 0,
    "tie_word_embeddings": False,
    "transformers_version": "4.29.2",
    "use_cache": True,
    "_from_model_config": True,
}


class NormHead(torch.nn.Module):
    """Baichuan 2's lm_head: logits = x · normalize(W)ᵀ (rows of W scaled to unit L2 norm, in
    float32). With `store` set, the normalized rows are rounded to that dtype once, as a model
    stored in it holds them: the original NormHead normalizes `self.weight` in place, in the
    weight's dtype, and our split (Placement.unitRows) stores the float32-normalized rows in the
    checkpoint's dtype."""

    def __init__(self, hidden_size: int, vocab_size: int, store: torch.dtype | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(vocab_size, hidden_size))
        self.store = store

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.nn.functional.normalize(self.weight.float())
        if self.store is not None:
            w = w.to(self.store).float()
        return torch.nn.functional.linear(x, w)


class NormHeadLlamaForCausalLM(LlamaForCausalLM):
    """LlamaForCausalLM with Baichuan 2's NormHead as lm_head (same tensor name lm_head.weight)."""

    head_store = None  # dtype the normalized head is rounded to (None: kept float32)

    def __init__(self, config):
        super().__init__(config)
        self.lm_head = NormHead(config.hidden_size, config.vocab_size, self.head_store)


class NormHeadBf16LlamaForCausalLM(NormHeadLlamaForCausalLM):
    """The same for bfloat16 storage: the normalized head rounded to bfloat16."""

    head_store = torch.bfloat16


# ---- Baichuan 13B / Baichuan2-13B: ALiBi instead of rope (torch transcription of the remote code;
# no package index carries it). Functions named as in modeling_baichuan.py of Baichuan-13B /
# Baichuan2-13B.


def _get_interleave(n: int) -> list[float]:
    def _get_interleave_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return _get_interleave_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (
        _get_interleave_power_of_2(closest_power_of_2)
        + _get_interleave(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]
    )


def _fill_with_neg_inf(t: torch.Tensor) -> torch.Tensor:
    return t.float().fill_(float("-inf")).type_as(t)


def _gen_alibi_mask(slopes: torch.Tensor, n_head: int, max_pos: int) -> torch.Tensor:
    """[n_head, max_pos, max_pos]: slope_h · j (j = key position), -inf above the diagonal."""
    alibi = slopes.unsqueeze(1).unsqueeze(1) * torch.arange(max_pos).unsqueeze(0).unsqueeze(0).expand(n_head, -1, -1)
    alibi = alibi.view(n_head, 1, max_pos)
    alibi_mask = torch.triu(_fill_with_neg_inf(torch.zeros([max_pos, max_pos])), 1)
    return alibi_mask.unsqueeze(0) + alibi


class AlibiAttention(LlamaAttention):
    """BaichuanAttention of the 13B models: W_pack (here q/k/v_proj), no rope; scores
    q·kᵀ / sqrt(head_dim) + alibi mask (cast to the model dtype), clamped at finfo.min, softmax
    in the model dtype (no float32 upcast), · v. The mask rows are the last q_len of the
    kv_len × kv_len mask (the original takes the last row when decoding one token with a cache)."""

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        bsz, q_len, _ = hidden_states.shape
        hd = self.head_dim
        q = self.q_proj(hidden_states).view(bsz, q_len, -1, hd).transpose(1, 2)
        k = self.k_proj(hidden_states).view(bsz, q_len, -1, hd).transpose(1, 2)
        v = self.v_proj(hidden_states).view(bsz, q_len, -1, hd).transpose(1, 2)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        kv_len = k.shape[2]
        n_head = q.shape[1]
        mask = _gen_alibi_mask(self.alibi_slopes, n_head, kv_len).to(hidden_states.dtype)[:, -q_len:, :]
        attn_weights = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(hd)
        attn_weights = attn_weights + mask.unsqueeze(0)
        attn_weights = torch.max(attn_weights, torch.tensor(torch.finfo(attn_weights.dtype).min))
        attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1)
        out = torch.matmul(attn_weights, v).transpose(1, 2).reshape(bsz, q_len, -1)
        return self.o_proj(out), None


class Baichuan13BReference(NormHeadLlamaForCausalLM):
    """Baichuan2-13B: LlamaForCausalLM's embedding, norms, MLP and NormHead with AlibiAttention
    (the rotary embedding Llama computes is not used)."""

    def __init__(self, config):
        super().__init__(config)
        slopes = torch.Tensor(_get_interleave(config.num_attention_heads))
        for layer in self.model.layers:
            layer.self_attn.__class__ = AlibiAttention
            layer.self_attn.alibi_slopes = slopes


def _hub_config(fx, arch: str, config_cls: str, extra: dict) -> dict:
    c = fx.config
    cfg = dict(REMOTE_COMMON)
    cfg.update(
        architectures=[arch],
        auto_map={
            "AutoConfig": f"configuration_baichuan.{config_cls}",
            "AutoModelForCausalLM": f"modeling_baichuan.{arch}",
        },
        bos_token_id=c["bos_token_id"],
        eos_token_id=c["eos_token_id"],
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_attention_heads=c["num_attention_heads"],
        num_hidden_layers=c["num_hidden_layers"],
        rms_norm_eps=c.get("rms_norm_eps", 1e-6),
        torch_dtype=fx.storage_dtype,
        vocab_size=c["vocab_size"],
    )
    cfg.update(extra)
    return cfg


def _fuse(out_dir: Path, fx, inv_freq: bool) -> None:
    """Native Llama tensors -> Baichuan's: W_pack = q | k | v rows; optional rotary inv_freq."""
    sd = load_file(str(out_dir / "model.safetensors"))
    n = fx.config["num_hidden_layers"]
    hd = fx.config["hidden_size"] // fx.config["num_attention_heads"]
    out = {}
    for k, v in sd.items():
        if any(k.endswith(f"self_attn.{p}_proj.weight") for p in "qkv"):
            continue
        out[k] = v.contiguous()
    for i in range(n):
        p = f"model.layers.{i}.self_attn."
        out[p + "W_pack.weight"] = torch.cat(
            [sd[p + "q_proj.weight"], sd[p + "k_proj.weight"], sd[p + "v_proj.weight"]], dim=0
        ).contiguous()
        if inv_freq:  # Baichuan-7B's persistent buffer, float32 as registered
            out[p + "rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    assert len(out) == len(sd) - 2 * n + (n if inv_freq else 0)
    for p in out_dir.glob("*.safetensors"):
        p.unlink()
    (out_dir / "model.safetensors.index.json").unlink(missing_ok=True)
    save_file(dict(sorted(out.items())), str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def _write_config(out_dir: Path, cfg: dict) -> None:
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def hub_baichuan7b(out_dir: Path, fx) -> str:
    arch = "BaiChuanForCausalLM"
    _fuse(out_dir, fx, inv_freq=True)
    cfg = _hub_config(fx, arch, "BaiChuanConfig", {"max_position_embeddings": fx.config["max_position_embeddings"]})
    _write_config(out_dir, cfg)
    return arch


def hub_baichuan2_7b(out_dir: Path, fx) -> str:
    arch = "BaichuanForCausalLM"
    _fuse(out_dir, fx, inv_freq=False)
    m = fx.config["max_position_embeddings"]
    cfg = _hub_config(
        fx,
        arch,
        "BaichuanConfig",
        {"max_position_embeddings": m, "model_max_length": m, "tokenizer_class": "BaichuanTokenizer", "z_loss_weight": 0},
    )
    _write_config(out_dir, cfg)
    return arch


def hub_baichuan2_13b(out_dir: Path, fx) -> str:
    arch = "BaichuanForCausalLM"
    _fuse(out_dir, fx, inv_freq=False)
    cfg = _hub_config(
        fx,
        arch,
        "BaichuanConfig",
        {
            "model_max_length": fx.config["max_position_embeddings"],
            "tokenizer_class": "BaichuanTokenizer",
            "z_loss_weight": 0,
        },
    )
    _write_config(out_dir, cfg)
    return arch


# ---- feature checks


class PlainHead(torch.nn.Module):
    def __init__(self, weight: torch.nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight)


def feat_plain_head(model_dir: Path, fx):
    m = fx.model_cls.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    m.lm_head = PlainHead(m.lm_head.weight)
    return ("lm_head used as stored (NormHead normalization skipped)", m)


def _with_slopes(model_dir: Path, slopes: list[float]):
    m = Baichuan13BReference.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    for layer in m.model.layers:
        layer.self_attn.alibi_slopes = torch.Tensor(slopes)
    return m


def feat_no_alibi(model_dir: Path, fx):
    n = fx.config["num_attention_heads"]
    return ("ALiBi slopes -> 0 (no position information)", _with_slopes(model_dir, [0.0] * n))


def feat_geometric_slopes(model_dir: Path, fx):
    n = fx.config["num_attention_heads"]
    return (
        f"slopes -> 2^(-8i/{n}), i = 1..{n} (the power-of-two formula without the interleave)",
        _with_slopes(model_dir, [2 ** (-8 * (i + 1) / n) for i in range(n)]),
    )


def fixtures(ref) -> list:
    base = dict(
        ref.BASE,
        num_key_value_heads=4,  # W_pack: q, k and v all [hidden, hidden] (MHA)
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    return [
        ref.Fixture(
            name="baichuan",
            model_cls=LlamaForCausalLM,
            config_cls=LlamaConfig,
            config=base,
            seed=17103,
            logits_len=16,
            hub_layout=hub_baichuan7b,
            notes="Baichuan-7B hub layout (BaiChuanForCausalLM, remote config with auto_map): fused "
            "self_attn.W_pack (q | k | v rows), persistent rotary_emb.inv_freq per layer; reference = "
            "LlamaForCausalLM on the split weights",
        ),
        ref.Fixture(
            name="baichuan2",
            model_cls=NormHeadLlamaForCausalLM,
            config_cls=LlamaConfig,
            config=base,
            seed=17200,
            logits_len=16,
            hub_layout=hub_baichuan2_7b,
            feature=feat_plain_head,
            notes="Baichuan2-7B hub layout (BaichuanForCausalLM, max_position_embeddings + model_max_length, "
            "z_loss_weight): fused W_pack, un-normalized lm_head used as normalize(W) per row (NormHead); "
            "reference = LlamaForCausalLM with that head on the split weights",
        ),
        ref.Fixture(
            name="baichuan2_bf16",
            model_cls=NormHeadBf16LlamaForCausalLM,
            config_cls=LlamaConfig,
            config=base,
            seed=17300,
            storage_dtype="bfloat16",
            logits_len=16,
            hub_layout=hub_baichuan2_7b,
            feature=feat_plain_head,
            notes="baichuan2 with weights stored as bfloat16; reference = those weights upcast to float32, "
            "float32 compute; the head is normalized in float32 and rounded to bfloat16 once (as the split "
            "stores it, and as the original NormHead holds it in a bfloat16 model)",
        ),
        ref.Fixture(
            name="baichuan2_13b",
            model_cls=Baichuan13BReference,
            config_cls=LlamaConfig,
            # 5 heads: the slopes of 4 (2^-2, 2^-4, 2^-6, 2^-8), then the first odd one of 8 (2^-1);
            # head_dim 16, so / sqrt(head_dim) is exact
            config=dict(base, hidden_size=80, num_attention_heads=5, num_key_value_heads=5, intermediate_size=64),
            seed=17400,
            logits_len=16,
            greedy_prompt_len=12,
            hub_layout=hub_baichuan2_13b,
            feature=feat_no_alibi,
            more_features=(feat_geometric_slopes, feat_plain_head),
            notes="Baichuan2-13B hub layout (BaichuanForCausalLM with model_max_length only: ALiBi, no rope): fused "
            "W_pack, ALiBi slopes of 5 heads by the interleave recipe, scores + slope * key position with a causal "
            "-inf, NormHead lm_head; reference = a torch transcription of the 13B attention on LlamaForCausalLM's "
            "other modules",
        ),
    ]


# ---- one-off cross-check against the original remote code (not run by make_reference.py)


def cross_check(remote_dir: Path, fixtures_dir: Path) -> None:
    """Runs the fixtures through the original modeling code and prints max|Δlogit| against
    logits.bin. `remote_dir` holds Baichuan-7B's configuration_baichuan.py + modeling_baichuan.py,
    e.g. from `pip install --no-deps --target /tmp/ipex ipex-llm==2.2.0`:
    /tmp/ipex/ipex_llm/transformers/gguf/models/model_implement/baichuan. Baichuan 2's modeling
    code is on no package index; its fixtures run through the same file with lm_head replaced by
    Baichuan 2's NormHead (transcribed above), which is the only delta that matters in float32."""
    import importlib
    import sys
    import types

    import numpy as np

    pkg = types.ModuleType("baichuan_remote")
    pkg.__path__ = [str(remote_dir)]
    sys.modules["baichuan_remote"] = pkg
    conf = importlib.import_module("baichuan_remote.configuration_baichuan")
    modeling = importlib.import_module("baichuan_remote.modeling_baichuan")
    torch.set_num_threads(1)
    for name in ("baichuan", "baichuan2", "baichuan2_bf16"):
        d = fixtures_dir / name
        if not d.exists():
            continue
        cfg_json = json.loads((d / "config.json").read_text())
        ref = json.loads((d / "reference.json").read_text())
        keep = {k: v for k, v in cfg_json.items() if k not in ("architectures", "auto_map", "torch_dtype", "model_type")}
        config = conf.BaiChuanConfig(**keep)
        with torch.device("cpu"):
            model = modeling.BaiChuanForCausalLM(config).float().eval()
        sd = {k: v.float() for k, v in load_file(str(d / "model.safetensors")).items()}
        if cfg_json["architectures"][0] == "BaichuanForCausalLM":
            model.lm_head = NormHead(config.hidden_size, config.vocab_size)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
        assert not missing and not unexpected, (missing, unexpected)
        ids = torch.tensor(ref["logits"]["input_ids"])
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        got = out.logits.float().numpy()
        want = np.fromfile(d / ref["logits"]["file"], dtype="<f4").reshape(ref["logits"]["dims"])
        diff = float(np.abs(got - want).max())
        print(f"{name}: original remote code vs reference: max|Δlogit| {diff:.3g} (max|logit| {np.abs(want).max():.4g})")


def cross_check_13b(ipex_baichuan_py: Path, fixtures_dir: Path) -> None:
    """baichuan2_13b through ipex-llm 2.2.0's copy of the Baichuan 13B attention
    (ipex_llm/transformers/models/baichuan.py: `baichuan_attention_forward_13b`, its non-SDPA path,
    on the fused W_pack, and `baichuan_13b_gen_alibi_mask`, Baichuan2-13B's mask), with the
    fixture's hub tensors; only those functions are taken from the file (its imports are ipex's
    own), the rest of the layer is written out here (RMSNorm, SiLU MLP, NormHead)."""
    import ast
    import typing
    import warnings

    import numpy as np

    names = ("_get_interleave", "_fill_with_neg_inf", "baichuan_13b_gen_alibi_mask", "baichuan_attention_forward_13b")
    tree = ast.parse(ipex_baichuan_py.read_text())
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert len(keep) == len(names), [n.name for n in keep]

    def update_past_key_value(past, k, v, kv_len, quantize, device):
        return (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))

    ns = dict(torch=torch, math=math, Optional=typing.Optional, Tuple=typing.Tuple, warnings=warnings,
              use_quantize_kv_cache=lambda *a: False, update_past_key_value=update_past_key_value,
              use_sdp=lambda *a: False)
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(ipex_baichuan_py), "exec"), ns)
    d = fixtures_dir / "baichuan2_13b"
    cfg = json.loads((d / "config.json").read_text())
    ref = json.loads((d / "reference.json").read_text())
    sd = load_file(str(d / "model.safetensors"))
    H, D = cfg["num_attention_heads"], cfg["hidden_size"]

    class Attn(torch.nn.Module):
        def __init__(self, i):
            super().__init__()
            self.num_heads, self.head_dim, self.hidden_size = H, D // H, D
            self.W_pack = torch.nn.Linear(D, 3 * D, bias=False)
            self.W_pack.weight.data = sd[f"model.layers.{i}.self_attn.W_pack.weight"]
            self.o_proj = torch.nn.Linear(D, D, bias=False)
            self.o_proj.weight.data = sd[f"model.layers.{i}.self_attn.o_proj.weight"]

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg["rms_norm_eps"]))

    ids = torch.tensor(ref["logits"]["input_ids"])
    S = ids.shape[1]
    with torch.no_grad():
        x = sd["model.embed_tokens.weight"][ids]
        mask = ns["baichuan_13b_gen_alibi_mask"](x, H, S)[:, :S, :S]
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            a, _, _ = ns["baichuan_attention_forward_13b"](Attn(i).eval(), rms(x, sd[p + "input_layernorm.weight"]), attention_mask=mask)
            x = x + a
            h = rms(x, sd[p + "post_attention_layernorm.weight"])
            g = torch.nn.functional.silu(h @ sd[p + "mlp.gate_proj.weight"].T) * (h @ sd[p + "mlp.up_proj.weight"].T)
            x = x + g @ sd[p + "mlp.down_proj.weight"].T
        logits = rms(x, sd["model.norm.weight"]) @ torch.nn.functional.normalize(sd["lm_head.weight"]).T
    want = np.fromfile(d / ref["logits"]["file"], dtype="<f4").reshape(ref["logits"]["dims"])
    diff = float(np.abs(logits.numpy() - want).max())
    print(f"baichuan2_13b: ipex-llm's Baichuan 13B attention + ALiBi mask vs reference: max|Δlogit| {diff:.3g} "
          f"(max|logit| {np.abs(want).max():.4g})")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="one-off cross-check against the original modeling code")
    ap.add_argument("--cross-check", type=Path, help="dir with Baichuan-7B's configuration_/modeling_baichuan.py")
    ap.add_argument("--cross-check-13b", type=Path, help="ipex-llm 2.2.0's ipex_llm/transformers/models/baichuan.py")
    args = ap.parse_args()
    fixtures_dir = Path(__file__).resolve().parent.parent.parent / "tests" / "fixtures"
    if args.cross_check:
        cross_check(args.cross_check, fixtures_dir)
    if args.cross_check_13b:
        cross_check_13b(args.cross_check_13b, fixtures_dir)
