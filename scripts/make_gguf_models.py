#!/usr/bin/env python3
"""Tiny GGUF checkpoints with Hugging Face transformers' reference outputs.

Builds tests/fixtures/gguf_<name>/ = model.gguf + reference.json + logits.bin (reference.json and
logits.bin in exactly the format of scripts/make_reference.py; see tests/fixtures/README.md).

  python scripts/make_gguf_models.py               # (re)write every GGUF fixture
  python scripts/make_gguf_models.py --only NAME   # one fixture (NAME without the gguf_ prefix or with it)
  python scripts/make_gguf_models.py --check       # regenerate into a temp dir, compare; exit 1 on drift

How a fixture is made (per seed, the first seed passing make_reference.py's margin checks wins):

1. A tiny HF model is built in torch with seeded numpy (PCG64) weights (make_reference.reinit_).
2. Its state dict is converted the way llama.cpp's convert_hf_to_gguf.py converts that family
   (tensor names from gguf-py's tensor map; llama/mistral q/k rows permuted (LlamaModel.permute);
   gemma norms stored +1; phi3's fused qkv_proj/gate_up_proj kept fused as attn_qkv/ffn_up; MoE
   experts stacked into ffn_{gate,up,down}_exps; 1-D tensors, norms and routers F32) and written
   with gguf-py's GGUFWriter, each weight in the fixture's block type. Q8_0/Q4_0/Q4_1/Q5_0/Q5_1,
   F16 and BF16 come from gguf.quants.quantize; Q4_K/Q5_K/Q6_K (which gguf-py cannot quantize) from
   the simple min/max block quantizers below (valid blocks; round trip checked against gguf-py's
   dequantizer).
3. The in-memory model gets the dequantized weights (mapped back to HF layout), and the reference
   is `AutoModelForCausalLM.from_pretrained(dir, gguf_file="model.gguf", dtype=float32)`.
   Independence check: the GGUF-loaded state dict must equal the dequantized original exactly
   (F32 tensors: the original itself; block types: within the format's error of the original) and
   its logits must match the in-memory model's; config fields are compared too.

float32, eager attention, one thread; greedy = generate(use_cache) == argmax loop, as make_reference.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_reference as mr  # noqa: E402  (environment setup, helpers, output format)

import gguf  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

QT = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType
FIXTURES_DIR = mr.FIXTURES_DIR
PREFIX = "gguf_"

# ---------------------------------------------------------------------------------------------
# K-quant block writers (gguf-py only dequantizes these). Plain min/max fits, not llama.cpp's
# search, but valid blocks: d/dmin f16, 6-bit scales/mins packed as get_scale_min_k4 reads them.

QK_K = 256


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def _pack_scales_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """sc, m: [n, 8] ints 0..63 -> [n, 12] bytes (ggml's get_scale_min_k4 layout)."""
    sc = sc.astype(np.uint8)
    m = m.astype(np.uint8)
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0xF) | ((m[:, 4:8] & 0xF) << 4)
    return out


def _affine_k(x: np.ndarray, qmax: int):
    """x [n, 256] -> (d f16 [n], dmin f16 [n], sc [n,8], m [n,8], q [n,8,32]) for y = d*sc*q - dmin*m."""
    n = x.shape[0]
    sub = x.reshape(n, 8, 32).astype(np.float64)
    lo = np.minimum(sub.min(-1), 0.0)
    hi = np.maximum(sub.max(-1), 0.0)
    scale = (hi - lo) / qmax
    mins = -lo
    d = _f16(scale.max(-1) / 63.0)
    dmin = _f16(mins.max(-1) / 63.0)
    d64, dmin64 = d.astype(np.float64), dmin.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d64[:, None] > 0, np.rint(scale / d64[:, None]), 0)
        m = np.where(dmin64[:, None] > 0, np.rint(mins / dmin64[:, None]), 0)
    sc = np.clip(sc, 0, 63)
    m = np.clip(m, 0, 63)
    D = d64[:, None] * sc
    M = dmin64[:, None] * m
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(D[..., None] > 0, np.rint((sub + M[..., None]) / D[..., None]), 0)
    q = np.clip(q, 0, qmax).astype(np.uint8)
    return d, dmin, sc.astype(np.uint8), m.astype(np.uint8), q


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    rows = x.reshape(-1, QK_K)
    d, dmin, sc, m, q = _affine_k(rows, 15)
    n = rows.shape[0]
    qs = np.zeros((n, 128), dtype=np.uint8)
    for c in range(4):
        qs[:, 32 * c : 32 * c + 32] = q[:, 2 * c] | (q[:, 2 * c + 1] << 4)
    blocks = np.concatenate(
        [d.view(np.uint8).reshape(n, 2), dmin.view(np.uint8).reshape(n, 2), _pack_scales_k4(sc, m), qs], axis=1
    )
    return blocks.reshape(*x.shape[:-1], x.shape[-1] // QK_K * 144)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    rows = x.reshape(-1, QK_K)
    d, dmin, sc, m, q = _affine_k(rows, 31)
    n = rows.shape[0]
    qs = np.zeros((n, 128), dtype=np.uint8)
    qh = np.zeros((n, 32), dtype=np.uint8)
    for c in range(4):
        qs[:, 32 * c : 32 * c + 32] = (q[:, 2 * c] & 0xF) | ((q[:, 2 * c + 1] & 0xF) << 4)
    for j in range(8):
        qh |= ((q[:, j] >> 4) & 1) << j
    blocks = np.concatenate(
        [d.view(np.uint8).reshape(n, 2), dmin.view(np.uint8).reshape(n, 2), _pack_scales_k4(sc, m), qh, qs], axis=1
    )
    return blocks.reshape(*x.shape[:-1], x.shape[-1] // QK_K * 176)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    rows = x.reshape(-1, QK_K)
    n = rows.shape[0]
    sub = rows.reshape(n, 16, 16).astype(np.float64)
    amax = np.abs(sub).max(-1)
    scale = amax / 31.0
    d = _f16(scale.max(-1) / 127.0)
    d64 = d.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d64[:, None] > 0, np.rint(scale / d64[:, None]), 0)
    sc = np.clip(sc, 0, 127)
    D = d64[:, None] * sc
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(D[..., None] > 0, np.rint(sub / D[..., None]), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, QK_K)
    ql = np.zeros((n, 128), dtype=np.uint8)
    qh = np.zeros((n, 64), dtype=np.uint8)
    for h in range(2):
        y = q[:, 128 * h : 128 * h + 128]
        k0, k1, k2, k3 = y[:, 0:32], y[:, 32:64], y[:, 64:96], y[:, 96:128]
        ql[:, 64 * h : 64 * h + 32] = (k0 & 0xF) | ((k2 & 0xF) << 4)
        ql[:, 64 * h + 32 : 64 * h + 64] = (k1 & 0xF) | ((k3 & 0xF) << 4)
        qh[:, 32 * h : 32 * h + 32] = (k0 >> 4) | ((k1 >> 4) << 2) | ((k2 >> 4) << 4) | ((k3 >> 4) << 6)
    blocks = np.concatenate(
        [ql, qh, sc.astype(np.int8).view(np.uint8), d.view(np.uint8).reshape(n, 2)], axis=1
    )
    return blocks.reshape(*x.shape[:-1], x.shape[-1] // QK_K * 210)


K_QUANTIZERS = {QT.Q4_K: quantize_q4_k, QT.Q5_K: quantize_q5_k, QT.Q6_K: quantize_q6_k}


def quantize(arr: np.ndarray, qt: QT) -> np.ndarray:
    """float32 array (GGUF row layout) -> what GGUFWriter.add_tensor(raw_dtype=qt) takes."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if qt == QT.F32:
        return arr
    if qt == QT.F16:
        return arr.astype(np.float16)
    if qt in K_QUANTIZERS:
        return K_QUANTIZERS[qt](arr)
    return gguf.quants.quantize(arr, qt)


def dequantize(data: np.ndarray, qt: QT) -> np.ndarray:
    if qt == QT.F32:
        return data.astype(np.float32)
    if qt == QT.F16:
        return data.astype(np.float32)
    return gguf.quants.dequantize(data, qt).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# fixtures


@dataclass
class GgufFixture:
    name: str  # directory = gguf_<name>
    arch: str  # general.architecture
    general_name: str
    model_cls: type
    config_cls: type
    config: dict[str, Any]
    seed: int
    # gguf tensor name (without .weight/.bias) -> type, for 2-D+ weights; first matching rule wins
    types: list[tuple[str, QT]]
    file_type: int
    tokenizer_model: str = "llama"
    pad_token_id: int | None = None
    init: dict[str, Any] = field(default_factory=dict)  # make_reference.Fixture knobs (gains, ...)
    logits_len: int = 12
    greedy_prompt_len: int = 8
    notes: str = ""


def _types(*rules: tuple[str, QT]) -> list[tuple[str, QT]]:
    return list(rules)


BASE = dict(mr.BASE)

GGUF_FIXTURES: list[GgufFixture] = [
    GgufFixture(
        name="llama_q8_0",
        arch="llama",
        general_name="tiny-llama",
        model_cls=LlamaForCausalLM,
        config_cls=LlamaConfig,
        config=dict(BASE, tie_word_embeddings=False),
        seed=20002,
        types=_types(("", QT.Q8_0)),
        file_type=FT.MOSTLY_Q8_0,
        notes="llama, GQA 4/2, head_dim 16, untied output; every matrix Q8_0 (convert --outtype q8_0), norms F32; "
        "attn_q/attn_k rows permuted (LlamaModel.permute)",
    ),
    GgufFixture(
        name="llama_q4_k",
        arch="llama",
        general_name="tiny-llama-k",
        model_cls=LlamaForCausalLM,
        config_cls=LlamaConfig,
        config=dict(BASE, hidden_size=256, intermediate_size=256, head_dim=64, tie_word_embeddings=True),
        seed=21002,
        types=_types(
            ("token_embd", QT.Q6_K),
            ("attn_v", QT.Q5_K),
            ("blk.0.ffn_down", QT.Q6_K),
            ("blk.1.ffn_down", QT.Q5_K),
            ("", QT.Q4_K),
        ),
        file_type=FT.MOSTLY_Q4_K_M,
        init=dict(out_gain=16.0),
        notes="llama, hidden 256 (K-quant rows), heads 4 / kv 2, head_dim 64, intermediate 256, tied (no output.weight: "
        "token_embd Q6_K is the lm_head); Q4_K attn_q/k/output + ffn_gate/up, Q5_K attn_v and blk.1.ffn_down, "
        "Q6_K blk.0.ffn_down; q/k permuted",
    ),
    GgufFixture(
        name="mistral_q4_0",
        arch="llama",
        general_name="tiny-mistral",
        # llama.cpp writes Mistral as general.architecture "llama". transformers 5.23 switches to
        # MistralForCausalLM only when general.name is exactly "mistral" (it tests `"mistral" in
        # [name]`), and then fails: gguf-py 0.19 has no "mistral" tensor map. A name that merely
        # contains "mistral" (as on the hub) loads as LlamaForCausalLM, the reference here.
        model_cls=LlamaForCausalLM,
        config_cls=LlamaConfig,
        config=dict(BASE, tie_word_embeddings=False),
        seed=22004,
        types=_types(("output", QT.Q8_0), ("", QT.Q4_0)),
        file_type=FT.MOSTLY_Q4_0,
        notes="Mistral-style GGUF: general.architecture llama, general.name 'tiny-mistral' (transformers loads it as "
        "LlamaForCausalLM; a name of exactly 'mistral' makes transformers 5.23 + gguf 0.19 fail); Q4_0 weights incl. "
        "token_embd, output Q8_0 (llama.cpp's fallback when rows are not a multiple of 256); q/k permuted; no "
        "sliding window",
    ),
    GgufFixture(
        name="qwen2_q4_1",
        arch="qwen2",
        general_name="tiny-qwen2",
        model_cls=Qwen2ForCausalLM,
        config_cls=Qwen2Config,
        config=dict(
            BASE,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        seed=23003,
        types=_types(("output", QT.Q8_0), ("ffn_", QT.Q5_0), ("", QT.Q4_1)),
        file_type=FT.MOSTLY_Q4_1,
        tokenizer_model="gpt2",
        notes="qwen2 with q/k/v biases (F32 attn_{q,k,v}.bias); Q4_1 token_embd + attention, Q5_0 ffn, Q8_0 output; "
        "rope theta 1e6; no permutation",
    ),
    GgufFixture(
        name="qwen3_q5_1",
        arch="qwen3",
        general_name="tiny-qwen3",
        model_cls=Qwen3ForCausalLM,
        config_cls=Qwen3Config,
        # transformers reads no head_dim for qwen3 GGUFs (Qwen3Config default 128 applies), so 128
        config=dict(
            BASE,
            head_dim=128,
            intermediate_size=64,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        seed=24002,
        types=_types(("token_embd", QT.Q8_0), ("", QT.Q5_1)),
        file_type=FT.MOSTLY_Q5_1,
        tokenizer_model="gpt2",
        init=dict(out_gain=16.0),
        notes="qwen3: attn_q_norm/attn_k_norm [head_dim] F32; head_dim 128 != hidden/heads (attention.key_length 128; "
        "transformers ignores the key and uses Qwen3Config's default 128); tied (token_embd Q8_0), rest Q5_1",
    ),
    GgufFixture(
        name="gemma2_q8_0",
        arch="gemma2",
        general_name="tiny-gemma2",
        model_cls=Gemma2ForCausalLM,
        config_cls=Gemma2Config,
        # transformers reads neither softcap nor query_pre_attn_scalar nor rope theta from a gemma2
        # GGUF: the config holds their defaults (50, 30, 256, 1e4); head_dim 256 so that llama.cpp's
        # 1/sqrt(key_length) scale equals transformers' query_pre_attn_scalar^-0.5
        config=dict(
            BASE,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=256,
            intermediate_size=64,
            sliding_window=4,
            query_pre_attn_scalar=256,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
            pad_token_id=0,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        seed=25001,
        types=_types(("", QT.Q8_0)),
        file_type=FT.MOSTLY_Q8_0,
        init=dict(
            norm_offset=0.0,
            embed_std=0.25,
            norm_gains=dict(mr.GEMMA_POST_NORMS, **{"model.norm.weight": 4.0}),
            gains={"q_proj.weight": 4.0, "k_proj.weight": 4.0},
        ),
        logits_len=16,
        greedy_prompt_len=12,
        notes="gemma2: norms stored +1 (x*(1+w) -> x*w'), 4 norms per layer (attn_norm, post_attention_norm, "
        "ffn_norm, post_ffw_norm); attn_logit_softcapping 50, final_logit_softcapping 30, sliding_window 4 "
        "(layer 0 sliding, layer 1 full); heads 2 / kv 1, key_length = value_length = 256; tied; all Q8_0",
    ),
    GgufFixture(
        name="gemma3_f16",
        arch="gemma3",
        general_name="tiny-gemma3",
        model_cls=Gemma3ForCausalLM,
        config_cls=Gemma3TextConfig,
        # 6 layers: transformers (and llama.cpp) use the sliding pattern 6 for GGUF gemma3 (5 sliding, 1 full)
        config=dict(
            BASE,
            hidden_size=32,
            num_hidden_layers=6,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=256,
            intermediate_size=64,
            sliding_window=4,
            query_pre_attn_scalar=256,
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
            pad_token_id=0,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        ),
        seed=26003,
        types=_types(("attn_", QT.BF16), ("", QT.F16)),
        file_type=FT.MOSTLY_F16,
        init=dict(norm_offset=0.0, embed_std=0.25, norm_gains=mr.GEMMA_POST_NORMS),
        logits_len=16,
        greedy_prompt_len=12,
        notes="gemma3 text: 6 layers (sliding pattern 6: layers 0-4 sliding window 4, layer 5 full), rope.freq_base 1e6 "
        "(full) and rope.freq_base_swa 1e4 (sliding); attn_q_norm/attn_k_norm and all layer norms stored +1; "
        "hidden 32, heads 2 / kv 1, key_length 256; tied; attention matrices BF16, token_embd + ffn F16",
    ),
    GgufFixture(
        name="phi3_q8_0",
        arch="phi3",
        general_name="tiny-phi3",
        model_cls=Phi3ForCausalLM,
        config_cls=Phi3Config,
        config=dict(
            BASE,
            intermediate_size=64,
            tie_word_embeddings=False,
            pad_token_id=0,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        seed=27000,
        types=_types(("", QT.Q8_0)),
        file_type=FT.MOSTLY_Q8_0,
        pad_token_id=0,
        notes="phi3: fused attn_qkv (rows q [heads*hd], k [kv*hd], v [kv*hd]) and fused ffn_up (rows gate [I] then "
        "up [I]; no ffn_gate tensor); all Q8_0; tokenizer.ggml.padding_token_id 0 (Phi3Config's default pad 32000 "
        "would not fit the 256 vocab)",
    ),
    GgufFixture(
        name="qwen3_moe_q4_0",
        arch="qwen3moe",
        general_name="tiny-qwen3moe",
        model_cls=Qwen3MoeForCausalLM,
        config_cls=Qwen3MoeConfig,
        # transformers reads no expert_feed_forward_length: moe_intermediate_size stays 768 (default);
        # every layer is MoE (mlp_only_layers [] / decoder_sparse_step 1 defaults); norm_topk_prob True
        config=dict(
            BASE,
            hidden_size=32,
            head_dim=32,
            intermediate_size=64,
            moe_intermediate_size=768,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        seed=28001,
        types=_types(("output", QT.Q8_0), ("", QT.Q4_0)),
        file_type=FT.MOSTLY_Q4_0,
        tokenizer_model="gpt2",
        notes="qwen3moe: 4 experts top-2 renormalized; stacked ffn_gate_exps/ffn_up_exps [E, I, H] and ffn_down_exps "
        "[E, H, I] (numpy order), router ffn_gate_inp F32; q/k norms; hidden 32, head_dim 32 (key_length), "
        "expert_feed_forward_length 768 (transformers' default, which it does not read); Q4_0, output Q8_0",
    ),
]
NAMES = [f.name for f in GGUF_FIXTURES]
SKIPPED = {
    "qwen2_moe_q8_0": "transformers 5.23 reads neither qwen2moe.expert_feed_forward_length nor "
    "expert_shared_feed_forward_length from a GGUF (Qwen2MoeConfig defaults 1408 / 5632 apply), so a tiny "
    "qwen2moe GGUF cannot load (shape mismatch); at the default sizes the file would be several MB",
}


# ---------------------------------------------------------------------------------------------
# HF state dict -> GGUF tensors (convert_hf_to_gguf.py's transformations)


def llama_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf LlamaModel.permute (HF rotate-half -> GGML interleaved pairs)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_unpermute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass
class GTensor:
    gname: str  # gguf name incl. .weight/.bias
    hf: list[tuple[str, slice | None]]  # HF tensor(s) it comes from (slice along dim 1 for fused experts)
    data: np.ndarray  # float32 in GGUF numpy layout (before quantization)
    qt: QT = QT.F32
    raw: np.ndarray | None = None  # what is written
    deq: np.ndarray | None = None  # dequantized (GGUF layout)


def tensor_type(fx: GgufFixture, gname: str, ndim: int) -> QT:
    base = gname.rsplit(".", 1)[0]
    if ndim <= 1 or base.endswith("_norm") or base.endswith("ffn_gate_inp") or not gname.endswith(".weight"):
        return QT.F32
    for pat, qt in fx.types:
        if pat in base:
            return qt
    raise RuntimeError(f"{fx.name}: no type rule for {gname}")


def to_gguf_tensors(fx: GgufFixture, model) -> list[GTensor]:
    cfg = model.config
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == fx.arch)
    tmap = gguf.get_tensor_name_map(arch_enum, cfg.num_hidden_layers)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out: list[GTensor] = []
    permute = fx.arch == "llama"
    gemma = fx.arch in ("gemma2", "gemma3")
    for name, w in sd.items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        w = w.copy()
        if name.endswith("mlp.experts.gate_up_proj"):  # transformers 5: fused in memory [E, 2I, H]
            inter = w.shape[1] // 2
            base = name[: -len("gate_up_proj")]
            for part, sl in (("gate_proj", slice(0, inter)), ("up_proj", slice(inter, 2 * inter))):
                g = tmap.get_name(base + part)
                assert g is not None, name
                out.append(GTensor(g + ".weight", [(name, sl)], np.ascontiguousarray(w[:, sl, :])))
            continue
        if name.endswith("mlp.experts.down_proj"):  # [E, H, I]
            g = tmap.get_name(name)
            assert g is not None, name
            out.append(GTensor(g + ".weight", [(name, None)], w))
            continue
        stem, suffix = name.rsplit(".", 1)
        g = tmap.get_name(stem)
        assert g is not None, f"{fx.name}: no gguf name for {name}"
        if permute and stem.endswith("q_proj"):
            w = llama_permute(w, cfg.num_attention_heads, cfg.num_attention_heads)
        if permute and stem.endswith("k_proj"):
            w = llama_permute(w, cfg.num_attention_heads, cfg.num_key_value_heads)
        if gemma and name.endswith("norm.weight"):
            w = w + 1.0
        out.append(GTensor(f"{g}.{suffix}", [(name, None)], w.astype(np.float32)))
    for t in out:
        t.qt = tensor_type(fx, t.gname, t.data.ndim)
        t.raw = quantize(t.data, t.qt)
        t.deq = dequantize(t.raw, t.qt).reshape(t.data.shape)
    return out


def from_gguf_layout(fx: GgufFixture, model, tensors: list[GTensor]) -> dict[str, torch.Tensor]:
    """The dequantized tensors mapped back to the HF state dict (inverse of to_gguf_tensors)."""
    cfg = model.config
    sd = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    for t in tensors:
        (name, sl), = t.hf
        w = t.deq.copy()
        stem = name.rsplit(".", 1)[0]
        if fx.arch == "llama" and stem.endswith("q_proj"):
            w = llama_unpermute(w, cfg.num_attention_heads, cfg.num_attention_heads)
        if fx.arch == "llama" and stem.endswith("k_proj"):
            w = llama_unpermute(w, cfg.num_attention_heads, cfg.num_key_value_heads)
        if fx.arch in ("gemma2", "gemma3") and name.endswith("norm.weight"):
            w = w - 1.0
        if sl is not None:
            sd[name][:, sl, :] = torch.from_numpy(w)
        else:
            sd[name] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    if cfg.tie_word_embeddings and "lm_head.weight" in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return sd


def max_format_error(t: GTensor) -> float:
    """Bound on |dequant - original| for one tensor's type (per-block step based, generous)."""
    x = t.data
    if t.qt == QT.F32:
        return 0.0
    amax = float(np.abs(x).max())
    rel = {
        QT.F16: 2**-10,
        QT.BF16: 2**-7,
        QT.Q8_0: 1 / 127,
        QT.Q4_0: 1 / 8,
        QT.Q4_1: 1 / 15,
        QT.Q5_0: 1 / 16,
        QT.Q5_1: 1 / 31,
        QT.Q4_K: 1 / 15 * 2,
        QT.Q5_K: 1 / 31 * 2,
        QT.Q6_K: 1 / 31,
    }[t.qt]
    return amax * rel


# ---------------------------------------------------------------------------------------------
# GGUF writer (metadata as convert_hf_to_gguf.py writes it for each architecture)


def write_gguf(fx: GgufFixture, cfg, tensors: list[GTensor], path: Path) -> None:
    w = gguf.GGUFWriter(str(path), fx.arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(fx.general_name)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rp = cfg.rope_parameters
    theta = (rp.get("full_attention", rp) or {}).get("rope_theta")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if fx.arch == "gemma2":  # Gemma2Model.set_gguf_parameters (no rope base: llama.cpp's default 1e4)
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        w.add_sliding_window(cfg.sliding_window)
    elif fx.arch == "phi3":  # Phi3MiniModel.set_gguf_parameters
        w.add_rope_scaling_orig_ctx_len(cfg.original_max_position_embeddings)
        rot = rp.get("partial_rotary_factor", 1.0)
        w.add_rope_dimension_count(int(rot * cfg.hidden_size) // cfg.num_attention_heads)
        w.add_rope_freq_base(theta)
        w.add_sliding_window(cfg.sliding_window or 0)
    else:  # TextModel.set_gguf_parameters (+ arch extras)
        w.add_rope_freq_base(theta)
        if fx.arch == "gemma3":
            w.add_rope_freq_base_swa(rp["sliding_attention"]["rope_theta"])
        if getattr(cfg, "num_experts", None):
            w.add_expert_count(cfg.num_experts)
            w.add_expert_used_count(cfg.num_experts_per_tok)
        w.add_key_length(hd)
        w.add_value_length(hd)
        if fx.arch == "llama":  # LlamaModel.set_gguf_parameters
            w.add_vocab_size(cfg.vocab_size)
            w.add_rope_dimension_count(hd)
        if fx.arch == "qwen3moe":
            w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
        if fx.arch == "gemma3":
            w.add_sliding_window(cfg.sliding_window)
    w.add_file_type(int(fx.file_type))
    # tokenizer: transformers takes vocab_size from tokenizer.ggml.tokens for every family but llama
    # (which has llama.vocab_size); real files always carry one. Ids 0..2 unk/bos/eos, then bytes.
    V = cfg.vocab_size
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(V - 3)]
    w.add_tokenizer_model(fx.tokenizer_model)
    w.add_token_list(toks)
    if fx.tokenizer_model == "llama":
        w.add_token_scores([0.0] * V)
    w.add_token_types([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
                      + [gguf.TokenType.BYTE] * (V - 3))
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    if fx.pad_token_id is not None:
        w.add_pad_token_id(fx.pad_token_id)
    for t in sorted(tensors, key=_tensor_order):
        w.add_tensor(t.gname, t.raw, raw_dtype=t.qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tensor_order(t: GTensor):
    n = t.gname
    if n.startswith("token_embd"):
        return (0, 0, n)
    if n.startswith("blk."):
        return (1, int(n.split(".")[1]), n)
    return (2, 0, n)


# ---------------------------------------------------------------------------------------------


def build_fixture(fx: GgufFixture, out_dir: Path) -> dict[str, Any]:
    t0 = time.time()
    last = None
    for seed in range(fx.seed, fx.seed + mr.SEED_TRIES):
        tmp = out_dir.parent / (out_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            row = _build_seed(fx, seed, tmp)
        except mr.SeedRejected as e:
            last = e
            mr.log(f"  {fx.name}: seed {seed} rejected ({e})")
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        if seed != fx.seed:
            mr.log(f"  NOTE {fx.name}: configured seed {fx.seed} failed the margin check; used {seed}.")
        tmp.rename(out_dir)
        row["seconds"] = time.time() - t0
        return row
    raise RuntimeError(f"{fx.name}: no seed passes: {last}")


def _build_seed(fx: GgufFixture, seed: int, out_dir: Path) -> dict[str, Any]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = fx.config_cls(**fx.config)
    model = fx.model_cls._from_config(config, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    knobs = mr.Fixture(name=fx.name, model_cls=fx.model_cls, config_cls=fx.config_cls, config=fx.config,
                       seed=seed, **fx.init)
    mr.reinit_(model, rng, knobs)
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}

    V = config.vocab_size
    logits_ids = torch.from_numpy(rng.integers(3, V, size=(2, fx.logits_len))).long()
    prompt = torch.from_numpy(rng.integers(3, V, size=(1, fx.greedy_prompt_len))).long()

    tensors = to_gguf_tensors(fx, model)
    for t in tensors:  # block writers/quantizers: within the format's error
        err = float(np.abs(t.deq - t.data).max())
        assert err <= max_format_error(t) + 1e-7, f"{fx.name}: {t.gname} {t.qt.name} error {err} > bound"
    expected = from_gguf_layout(fx, model, tensors)
    with torch.no_grad():
        model.load_state_dict(expected, strict=True)

    out_dir.mkdir(parents=True)
    write_gguf(fx, config, tensors, out_dir / "model.gguf")

    # ---- the reference: transformers' own GGUF loader
    ref = AutoModelForCausalLM.from_pretrained(
        out_dir, gguf_file="model.gguf", dtype=torch.float32, attn_implementation="eager"
    )
    ref.eval()
    assert type(ref) is fx.model_cls, f"{fx.name}: transformers built {type(ref).__name__}"
    for k, v in fx.config.items():
        got = getattr(ref.config, k, None)
        if k == "rope_parameters":
            got = {kk: vv for kk, vv in (got or {}).items() if kk != "type"}
        if k == "mlp_only_layers" and got is None:
            got = []
        assert got == v, f"{fx.name}: GGUF config {k}: {got!r} != built {v!r}"
    ref_sd = ref.state_dict()
    assert set(ref_sd) == set(expected), f"{fx.name}: state dict keys differ {set(ref_sd) ^ set(expected)}"
    for k, v in ref_sd.items():
        assert torch.equal(v, expected[k]), f"{fx.name}: GGUF-loaded {k} != dequantized original"
    # F32 tensors are written exactly (gemma norms: w + 1 in float32, so HF gets (w + 1) - 1)
    for t in tensors:
        if t.qt == QT.F32:
            assert np.array_equal(t.deq, t.data) and t.raw.dtype == np.float32, f"{fx.name}: F32 {t.gname}"
            (name, _), = t.hf
            if fx.arch not in ("gemma2", "gemma3"):
                assert torch.equal(ref_sd[name], original[name]), f"{fx.name}: F32 {name} changed"

    logits = mr.forward_logits(ref, logits_ids)
    logits_mem = mr.forward_logits(model, logits_ids)
    max_abs = float(logits.abs().max())
    d_mem = float((logits - logits_mem).abs().max())
    assert d_mem <= 1e-6 * max_abs, f"{fx.name}: GGUF-loaded vs in-memory logits differ by {d_mem}"
    for b in range(logits_ids.shape[0]):
        d = float((mr.forward_logits(ref, logits_ids[b : b + 1])[0] - logits[b]).abs().max())
        assert d <= 1e-5 * max_abs, f"{fx.name}: batch row {b} differs from a batch-1 forward by {d}"

    routing = routing_gap = None
    if mr._router_modules(ref):
        with mr.RoutingRecorder(ref) as rec:
            mr.forward_logits(ref, logits_ids)
        routing = [c.tolist() for c in rec.counts]
        n_tok = logits_ids.numel()
        for li, c in enumerate(routing):
            if min(c) == 0 or max(c) >= n_tok:
                raise mr.SeedRejected(f"degenerate routing in MoE layer {li}: {c}")
        routing_gap = rec.min_gap

    new_tokens = mr.greedy_generate(ref, prompt, mr.GREEDY_NEW_TOKENS)
    if routing is not None:
        with mr.RoutingRecorder(ref) as rec:
            manual, rows = mr.greedy_manual(ref, prompt, mr.GREEDY_NEW_TOKENS)
        routing_gap = min(routing_gap, rec.min_gap)
        if routing_gap <= mr.ROUTING_GAP_MIN:
            raise mr.SeedRejected(f"routing decision within {routing_gap:.3g} of a tie")
    else:
        manual, rows = mr.greedy_manual(ref, prompt, mr.GREEDY_NEW_TOKENS)
    if new_tokens != manual:
        raise mr.SeedRejected(f"generate (cache) {new_tokens} != manual argmax loop {manual}")
    if len(set(new_tokens)) < mr.MIN_DISTINCT:
        raise mr.SeedRejected(f"greedy continuation has only {len(set(new_tokens))} distinct tokens")
    m_l, g_l = mr.margins(logits)
    m_g, g_g = mr.margins(rows)
    m_min, g_min = min(m_l, m_g), min(g_l, g_g)
    if m_min <= mr.MARGIN_MIN:
        raise mr.SeedRejected(f"min top1-top2 margin {m_min:.3g} <= {mr.MARGIN_MIN} * max|logit|")

    mr.write_logits(out_dir / "logits.bin", logits)
    type_counts: dict[str, int] = {}
    for t in tensors:
        type_counts[t.qt.name] = type_counts.get(t.qt.name, 0) + 1
    ref_json = {
        "name": PREFIX + fx.name,
        "architecture": fx.model_cls.__name__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "storage_dtype": "float32",
        "compute_dtype": "float32",
        "config_form": "gguf",
        "seed": seed,
        "notes": fx.notes,
        "weights": ["model.gguf"],
        "gguf": {
            "file": "model.gguf",
            "architecture": fx.arch,
            "general_name": fx.general_name,
            "file_type": FT(fx.file_type).name,
            "tensor_types": dict(sorted(type_counts.items())),
            "tensors": {t.gname: t.qt.name for t in sorted(tensors, key=_tensor_order)},
            "gguf_py_version": _gguf_version(),
        },
        "logits": {
            "input_ids": logits_ids.tolist(),
            "file": "logits.bin",
            "dims": list(logits.shape),
            "max_abs": mr.fnum(max_abs),
        },
        "greedy": {"input_ids": prompt.tolist(), "new_tokens": new_tokens, "use_cache": True},
        "min_top2_margin": mr.fnum(m_min),
        "min_top2_gap": mr.fnum(g_min),
    }
    if routing is not None:
        ref_json["routing"] = routing
        ref_json["min_routing_gap"] = mr.fnum(routing_gap)
    (out_dir / "reference.json").write_text(mr.dump_json(ref_json), encoding="utf-8")
    return {
        "name": PREFIX + fx.name,
        "arch": fx.model_cls.__name__,
        "storage": "+".join(sorted(type_counts)),
        "form": "gguf",
        "seed": seed,
        "dims": "x".join(map(str, logits.shape)),
        "max_abs": max_abs,
        "margin": m_min,
        "distinct": len(set(new_tokens)),
        "routing": "" if routing is None else " ".join("[" + ",".join(map(str, c)) + "]" for c in routing),
        "routing_gap": "" if routing_gap is None else f"{routing_gap:.2g}",
        "bytes": mr.dir_size(out_dir),
    }


def _gguf_version() -> str:
    try:
        from importlib.metadata import version

        return version("gguf")
    except Exception:  # pragma: no cover
        return "unknown"


def build(name: str, out_root: Path) -> dict[str, Any]:
    fx = next(f for f in GGUF_FIXTURES if f.name == name)
    out_dir = out_root / (PREFIX + name)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    return build_fixture(fx, out_dir)


def _is_ours(ref: Path) -> bool:
    try:
        return json.loads(ref.read_text()).get("config_form") == "gguf"
    except (OSError, ValueError, AttributeError):
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare")
    ap.add_argument("--only", help="one fixture: " + ", ".join(NAMES))
    ap.add_argument("--out", type=Path, default=FIXTURES_DIR, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only is not None:
        only = args.only.removeprefix(PREFIX)
        if only not in NAMES:
            if only in SKIPPED:
                mr.log(f"{only}: not made: {SKIPPED[only]}")
            ap.error(f"--only: unknown fixture {args.only!r}; choose from {NAMES}")
        names = [only]
    else:
        names = NAMES

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()
    mr.log(f"transformers {transformers.__version__}, torch {torch.__version__}, gguf {_gguf_version()}")
    for k, why in SKIPPED.items():
        mr.log(f"  skipped {k}: {why}")

    if not args.check:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in names:
            mr.log(f"building {PREFIX}{name} ...")
            rows.append(build(name, args.out))
        mr.log("")
        mr.print_table(rows)
        total = sum(mr.dir_size(args.out / (PREFIX + n)) for n in NAMES if (args.out / (PREFIX + n)).exists())
        mr.log(f"\ntotal gguf fixtures size: {total / 1024:.0f} KiB; {time.time() - t_start:.1f} s")
        return 0

    failed = False
    with tempfile.TemporaryDirectory(prefix="rabbit-gguf-") as tmp:
        tmp_root = Path(tmp)
        for name in names:
            d = PREFIX + name
            row = build(name, tmp_root)
            ok, why = mr.compare_fixture(d, tmp_root / d, args.out / d)
            mr.log(f"{'ok  ' if ok else 'FAIL'} {d}: {why} ({row['seconds']:.1f} s)")
            failed |= not ok
        if args.only is None:
            known = {PREFIX + n for n in NAMES}
            # stale: a directory holding a reference.json this script wrote (config_form "gguf") that
            # it no longer makes (other gguf_* directories, e.g. gguf_tokenizers, belong to other scripts)
            extra = sorted(
                p.name for p in args.out.iterdir()
                if p.is_dir() and p.name not in known and _is_ours(p / "reference.json")
            )
            if extra:
                mr.log(f"FAIL unknown {PREFIX}* fixture directories in {args.out}: {extra}")
                failed = True
    mr.log(f"check {'FAILED' if failed else 'passed'} in {time.time() - t_start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
