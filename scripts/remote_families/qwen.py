"""QWen v1 (QWenLMHeadModel, remote code) fixtures for make_reference.py (see scripts/remote_families/).

Reference route:
- qwen1 / qwen1_bf16 (every position within seq_length, so dynamic NTK and logn attention are the
  identity): transformers' native Qwen2ForCausalLM, MHA, q/k/v biases and no o_proj bias, on the
  same weights; exact.
- qwen1_long (past seq_length, use_dynamic_ntk + use_logn_attn): Qwen2ForCausalLM with its rotary
  embedding and attention replaced by a transcription of the original modeling_qwen.py
  (QWenModel.forward's `_ntk_alpha_cached_list` / `get_ntk_alpha`, RotaryEmbedding's
  base · α^(dim/(dim−2)), QWenAttention's `logn_tensor` and `_attn`), below.
Hub layout (all three): the remote config (QWenConfig keys, auto_map, the bf16/fp16/fp32 flags
instead of torch_dtype, intermediate_size = 2 × the MLP width) and the original tensor names
(transformer.wte / h.N.ln_1, attn.c_attn = q | k | v rows with bias, attn.c_proj, ln_2, mlp.w1 = up,
mlp.w2 = gate, mlp.c_proj / ln_f, lm_head).

qwen1_long's parity fixture keeps every forward of every parity mode at the same NTK alpha (the
original's cache-on and cache-off semantics differ otherwise, and parity compares every mode with
one reference): logits over 8 positions (= seq_length: alpha 1, no logn), greedy from a 40-token
prompt (every forward is 40..63 long: alpha 15 throughout; logn on every position from 8). The
semantics that differ by mode are in `ntk_reference.json` + `ntk_logits.bin` (tests/models/
qwen_test.ts): the original's cache-on and cache-off greedy from a 12-token prompt (alpha 3 kept vs
3 → 7 → 15), and logits of a 12-token sequence fed whole (alpha 3) and as 6 + 1 + 1 ... through
the cache (alpha 1 kept from the 6-token prefill, logn from position 8).

Cross-checked once (`python scripts/remote_families/qwen.py --cross-check DIR`, below; not run by
make_reference.py) against the original modeling code PyPI's modelscope==1.40.2 vendors
(modelscope/models/nlp/qwen/backbone.py: the first Qwen-7B release, same NTK state and logn as the
current hub code) on the committed hub tensors: max|Δlogit| 0 for qwen1, qwen1_bf16, qwen1_long and
both ntk_logits.bin rows; every greedy list (cache on and off) identical.
"""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

HEADS, HIDDEN = 4, 64
HEAD_DIM = HIDDEN // HEADS
LOGN_POSITIONS = 32768  # the original's logn table: range(1, 32768)

# ---- a transcription of the original's NTK alpha, rotary table, logn and attention ---------------


def get_ntk_alpha(true_seq_len: int, seq_length: int) -> int:
    """QWenModel.get_ntk_alpha."""
    context_value = math.log(true_seq_len / seq_length, 2) + 1
    ntk_alpha = 2 ** math.ceil(context_value) - 1
    return max(ntk_alpha, 1)


class QwenRotary(torch.nn.Module):
    """QWenModel.forward's alpha choice + RotaryEmbedding, returning Qwen2's (cos, sin) of the new
    positions. The alpha list is module state, as in the original: a forward without past picks it
    from its length (kv_seq_len == the input length), a forward with past reuses it."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.dim = int(HEAD_DIM * getattr(config, "rotary_pct", 1.0))
        self.base = config.rope_parameters["rope_theta"]
        self._ntk_alpha_cached_list = [1.0]

    @torch.no_grad()
    def forward(self, x, position_ids):
        cur = position_ids.shape[-1]
        past = int(position_ids[0, 0])  # unpadded rows: the cache length
        kv_seq_len = past + cur
        if not self.config.use_dynamic_ntk:
            ntk_alpha_list = [1.0]
        elif kv_seq_len != cur:
            ntk_alpha_list = self._ntk_alpha_cached_list
        else:
            # unpadded rows: every row's true length is kv_seq_len, so one alpha serves them all
            ntk_alpha_list = [get_ntk_alpha(kv_seq_len, self.config.seq_length)]
        self._ntk_alpha_cached_list = ntk_alpha_list
        ntk_alpha = ntk_alpha_list[0]
        # RotaryEmbedding.update_rotary_pos_emb_cache
        base = self.base * ntk_alpha ** (self.dim / (self.dim - 2))
        inv_freq = 1.0 / (base ** (torch.arange(0, self.dim, 2).float() / self.dim))
        seq = torch.arange(kv_seq_len)
        freqs = torch.outer(seq.type_as(inv_freq), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        return cos[-cur:], sin[-cur:]  # [cur, rot]: the original's cos[:, -cur_len:]


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary(t, cos, sin):
    """apply_rotary_pos_emb (non-flash path); t [b, s, h, d], cos/sin [s, rot]."""
    rot = cos.shape[-1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    t_, t_pass = t[..., :rot].float(), t[..., rot:].float()
    t_ = (t_ * cos) + (_rotate_half(t_) * sin)
    return torch.cat((t_, t_pass), dim=-1).type_as(t)


def _logn_tensor(seq_length: int) -> torch.Tensor:
    logn_list = [math.log(i, seq_length) if i > seq_length else 1 for i in range(1, LOGN_POSITIONS)]
    return torch.tensor(logn_list)[None, :, None, None]


def _attn_forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None, **kwargs):
    """QWenAttention.forward (fp32, no flash): q/k/v, rope, cache, logn, _attn, c_proj."""
    cfg = self.config
    b, s, _ = hidden_states.shape
    query = self.q_proj(hidden_states).view(b, s, HEADS, HEAD_DIM)
    key = self.k_proj(hidden_states).view(b, s, HEADS, HEAD_DIM)
    value = self.v_proj(hidden_states).view(b, s, HEADS, HEAD_DIM)
    cos, sin = position_embeddings
    query = _apply_rotary(query, cos, sin)
    key = _apply_rotary(key, cos, sin)
    query, key, value = (t.permute(0, 2, 1, 3) for t in (query, key, value))
    if past_key_values is not None:
        key, value = past_key_values.update(key, value, self.layer_idx)
    key_size = key.shape[2]
    if key_size > cfg.seq_length and cfg.use_logn_attn:
        seq_start, seq_end = key_size - s, key_size
        if getattr(self, "_logn", None) is None:  # built at first use (from_pretrained inits on meta)
            self._logn = _logn_tensor(cfg.seq_length)
        logn = self._logn[:, seq_start:seq_end, :, :].type_as(query).permute(0, 2, 1, 3)
        query = query * logn.expand_as(query)
    # _attn: scores / sqrt(d), causal over the new rows, softmax, @ v
    attn_weights = torch.matmul(query, key.transpose(-1, -2))
    attn_weights = attn_weights / torch.full([], value.size(-1) ** 0.5, dtype=attn_weights.dtype)
    causal = torch.ones((s, key_size), dtype=torch.bool).tril(key_size - s)
    attn_weights = torch.where(causal, attn_weights, torch.finfo(attn_weights.dtype).min)
    attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1).type(value.dtype)
    out = torch.matmul(attn_weights, value).transpose(1, 2).reshape(b, s, HIDDEN)
    return self.o_proj(out), None


class QwenLongRef(Qwen2ForCausalLM):
    """Qwen2ForCausalLM (MHA, q/k/v biases) with the original QWen rotary, NTK state and logn."""

    def __init__(self, config):
        super().__init__(config)
        self.model.rotary_emb = QwenRotary(config)
        for layer in self.model.layers:
            layer.self_attn.forward = types.MethodType(_attn_forward, layer.self_attn)


# ---- hub layout ---------------------------------------------------------------------------------

NAMES = {  # ours (Qwen2) -> QWen's, per layer
    "input_layernorm.weight": "ln_1.weight",
    "self_attn.o_proj.weight": "attn.c_proj.weight",
    "post_attention_layernorm.weight": "ln_2.weight",
    "mlp.up_proj.weight": "mlp.w1.weight",
    "mlp.gate_proj.weight": "mlp.w2.weight",
    "mlp.down_proj.weight": "mlp.c_proj.weight",
}


def _hub_layout(flags: dict):
    def hub_layout(out_dir: Path, fx) -> str:
        src = json.loads((out_dir / "config.json").read_text())
        assert src["num_key_value_heads"] == src["num_attention_heads"] == HEADS
        assert src["hidden_size"] == HIDDEN and not src["tie_word_embeddings"]
        if fx.name == "qwen1_long":
            _ntk_reference(out_dir, fx)
        sd = load_file(str(out_dir / "model.safetensors"))
        out = {
            "transformer.wte.weight": sd.pop("model.embed_tokens.weight"),
            "transformer.ln_f.weight": sd.pop("model.norm.weight"),
            "lm_head.weight": sd.pop("lm_head.weight"),
        }
        for i in range(src["num_hidden_layers"]):
            p, h = f"model.layers.{i}.", f"transformer.h.{i}."
            for kind in ("weight", "bias"):
                out[f"{h}attn.c_attn.{kind}"] = torch.cat([sd.pop(f"{p}self_attn.{n}_proj.{kind}") for n in "qkv"])
            for ours, theirs in NAMES.items():
                out[h + theirs] = sd.pop(p + ours)
        assert not sd, f"unmapped tensors: {sorted(sd)}"
        save_file({k: out[k].contiguous() for k in sorted(out)}, str(out_dir / "model.safetensors"),
                  metadata={"format": "pt"})
        cfg = {
            "architectures": ["QWenLMHeadModel"],
            "auto_map": {
                "AutoConfig": "configuration_qwen.QWenConfig",
                "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
            },
            "model_type": "qwen",
            "attn_dropout_prob": 0.0,
            "emb_dropout_prob": 0.0,
            "bf16": False,
            "fp16": False,
            "fp32": False,
            "hidden_size": src["hidden_size"],
            "intermediate_size": 2 * src["intermediate_size"],  # QWenMLP: w1, w2 are intermediate_size // 2
            "initializer_range": src["initializer_range"],
            "kv_channels": src["hidden_size"] // src["num_attention_heads"],
            "layer_norm_epsilon": src["rms_norm_eps"],
            "max_position_embeddings": src["max_position_embeddings"],
            "no_bias": True,
            "num_attention_heads": src["num_attention_heads"],
            "num_hidden_layers": src["num_hidden_layers"],
            "onnx_safe": None,
            "rotary_emb_base": src["rope_parameters"]["rope_theta"],
            "rotary_pct": 1.0,
            "scale_attn_weights": True,
            "seq_length": src["seq_length"],
            "softmax_in_fp32": False,
            "tie_word_embeddings": False,
            "tokenizer_class": "QWenTokenizer",
            "use_cache": True,
            "use_cache_kernel": False,
            "use_cache_quantization": False,
            "use_dynamic_ntk": src["use_dynamic_ntk"],
            "use_flash_attn": "auto",
            "use_logn_attn": src["use_logn_attn"],
            "vocab_size": src["vocab_size"],
        }
        cfg.update(flags)
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        return "QWenLMHeadModel"

    return hub_layout


# ---- the cache-on / cache-off semantics of the original (qwen1_long) -----------------------------

NTK_PROMPT, NTK_NEW, NTK_SEQ, NTK_PREFILL = 12, 24, 12, 6


@torch.no_grad()
def _greedy(model, prompt: list[int], n: int, cache: bool) -> tuple[list[int], torch.Tensor]:
    """The original's greedy: with the cache, the prompt then one token per forward (past given);
    without, the whole sequence every forward. Returns the tokens and each step's logits row."""
    from transformers import DynamicCache

    seq, rows = list(prompt), []
    past = DynamicCache(config=model.config) if cache else None
    feed = list(prompt)
    for _ in range(n):
        ids = torch.tensor([feed if cache else seq])
        out = model(input_ids=ids, past_key_values=past, use_cache=cache)
        last = out.logits[0, -1].float()
        rows.append(last)
        tok = int(torch.argmax(last))
        seq.append(tok)
        feed = [tok]
    return seq[len(prompt):], torch.stack(rows)


@torch.no_grad()
def _ntk_reference(out_dir: Path, fx) -> None:
    from transformers import DynamicCache

    model = QwenLongRef.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    g = torch.Generator().manual_seed(fx.seed + 1)
    V = model.config.vocab_size
    prompt = torch.randint(3, V, (NTK_PROMPT,), generator=g).tolist()
    seq = torch.randint(3, V, (NTK_SEQ,), generator=g).tolist()
    on, rows_on = _greedy(model, prompt, NTK_NEW, cache=True)
    off, rows_off = _greedy(model, prompt, NTK_NEW, cache=False)
    full = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0].float()
    past = DynamicCache(config=model.config)
    chunks = [model(input_ids=torch.tensor([seq[:NTK_PREFILL]]), past_key_values=past, use_cache=True).logits[0]]
    for t in seq[NTK_PREFILL:]:
        chunks.append(model(input_ids=torch.tensor([[t]]), past_key_values=past, use_cache=True).logits[0])
    cached = torch.cat(chunks).float()
    if on == off:
        raise _seed_rejected()("cache-on and cache-off greedy agree: the NTK state is not tested")
    scale = float(torch.cat([full, cached]).abs().max())
    if float((full - cached).abs().max()) <= 1e-2 * scale:
        raise _seed_rejected()("cached and full logits agree: the NTK state is not tested")
    for rows in (rows_on, rows_off):
        top2 = torch.topk(rows.double(), 2, dim=-1).values
        if float((top2[:, 0] - top2[:, 1]).min()) <= 1e-3 * float(rows.abs().max()):
            raise _seed_rejected()("an NTK-reference greedy step is within 1e-3 of a tie")
    # the parity fixture's regime (forwards of 40..63 positions) depends on both features
    long_ids = torch.randint(3, V, (1, 63), generator=g)
    base_logits = model(input_ids=long_ids, use_cache=False).logits.float()
    for key in ("use_dynamic_ntk", "use_logn_attn"):
        cfg = type(model.config).from_dict({**model.config.to_dict(), key: False})
        alt = QwenLongRef.from_pretrained(out_dir, config=cfg, dtype=torch.float32, attn_implementation="eager")
        d = float((alt(input_ids=long_ids, use_cache=False).logits.float() - base_logits).abs().max())
        assert d > 1e-2 * float(base_logits.abs().max()), f"{key} off changes 63-position logits by only {d}"
    (out_dir / "ntk_logits.bin").write_bytes(torch.stack([full, cached]).numpy().astype("<f4").tobytes())
    (out_dir / "ntk_reference.json").write_text(_REF.dump_json({
        "what": "the original's dynamic-NTK state by cache mode (scripts/remote_families/qwen.py)",
        "greedy_prompt": prompt,
        "greedy_cache_on": on,
        "greedy_cache_off": off,
        "logits_ids": seq,
        "logits_prefill": NTK_PREFILL,
        "logits_file": "ntk_logits.bin",
        "logits_dims": [2, NTK_SEQ, V],
        "logits_rows": ["whole sequence, no cache", "prefill then one token at a time through the cache"],
    }))


_REF = None  # the make_reference module, set by fixtures()


def _seed_rejected():
    return _REF.SeedRejected


# ---- feature checks -----------------------------------------------------------------------------


def _feat_theta(ref, theta: float):
    def feat(model_dir: Path, fx):
        return (
            f"rotary_emb_base -> {theta:g}",
            ref._reload_with(model_dir, fx.model_cls, rope_parameters={"rope_type": "default", "rope_theta": theta}),
        )

    return feat


def _feat_swap_w1_w2(ref):
    def feat(model_dir: Path, fx):
        m = ref.load_f32(fx.model_cls, model_dir)
        with torch.no_grad():
            for layer in m.model.layers:
                g, u = layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight
                tmp = g.detach().clone()
                g.copy_(u)
                u.copy_(tmp)
        return ("mlp.w1 read as the gate, w2 as up", m)

    return feat


def fixtures(ref) -> list:
    global _REF
    _REF = ref
    base = dict(ref.BASE, num_key_value_heads=HEADS, tie_word_embeddings=False, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    within = dict(base, seq_length=64, use_dynamic_ntk=True, use_logn_attn=True)  # 8 + 24 < 64
    return [
        ref.Fixture(
            name="qwen1",
            model_cls=Qwen2ForCausalLM,
            config_cls=Qwen2Config,
            config=within,
            seed=18100,
            feature=ref.feat_zero_qkv_bias,
            more_features=(_feat_theta(ref, 10000.0), _feat_swap_w1_w2(ref)),
            hub_layout=_hub_layout({"fp32": True}),
            notes="QWen v1 hub layout (QWenLMHeadModel, remote config, fp32: true and no torch_dtype): c_attn = "
            "q | k | v rows with bias, c_proj without, w1 = up, w2 = gate, intermediate_size 256 = 2 x 128; MHA; "
            "rotary_emb_base 1e6; seq_length 64 with use_dynamic_ntk and use_logn_attn on but every sequence "
            "within it. Reference: Qwen2ForCausalLM on the split weights",
        ),
        ref.Fixture(
            name="qwen1_bf16",
            model_cls=Qwen2ForCausalLM,
            config_cls=Qwen2Config,
            config=within,
            seed=18200,
            storage_dtype="bfloat16",
            feature=ref.feat_zero_qkv_bias,
            hub_layout=_hub_layout({"bf16": True}),
            notes="qwen1 stored as bfloat16 with the config's bf16: true flag (no torch_dtype), as Qwen-72B's. "
            "Reference: bf16 weights upcast, float32 compute",
        ),
        ref.Fixture(
            name="qwen1_long",
            model_cls=QwenLongRef,
            config_cls=Qwen2Config,
            config=dict(base, seq_length=8, use_dynamic_ntk=True, use_logn_attn=True),
            seed=18300,
            logits_len=8,
            greedy_prompt_len=40,
            hub_layout=_hub_layout({"fp32": True}),
            notes="QWen v1 past seq_length 8: greedy from a 40-token prompt (forwards of 40..63 positions: dynamic "
            "NTK alpha 15 in every mode, logn attention on every position from 8); logits over 8 positions "
            "(alpha 1, no logn: the modes agree). ntk_reference.json / ntk_logits.bin: the original's cache-on vs "
            "cache-off NTK state (tests/models/qwen_test.ts). Reference: Qwen2ForCausalLM with a transcription of "
            "modeling_qwen.py's rotary / NTK state / logn attention",
        ),
    ]


# ---- one-off cross-check against the original remote code (not run by make_reference.py) ---------


def cross_check(qwen_dir: Path) -> None:
    """Runs the original QWen modeling code that PyPI's modelscope vendors (modelscope==1.40.2:
    modelscope/models/nlp/qwen/backbone.py, the first Qwen-7B release's modeling_qwen.py with its
    GPT-2 style QWenConfig) on the committed fixtures' hub tensors, and prints max|Δlogit| against
    their references: logits.bin, the greedy tokens (with its own KV cache) and, for qwen1_long,
    ntk_reference.json / ntk_logits.bin. Only modelscope's plumbing is stubbed (its Model base
    class, registry, logger); the model code runs as published.
    Usage: pip download --no-deps modelscope==1.40.2 && unzip the wheel, then
      python scripts/remote_families/qwen.py --cross-check DIR/modelscope/models/nlp/qwen"""
    import importlib.util
    import sys

    import numpy as np

    def stub(name: str, **attrs):
        m = types.ModuleType(name)
        m.__path__ = []
        for k, v in attrs.items():
            setattr(m, k, v)
        sys.modules[name] = m
        return m

    class Model:
        def __init__(self, *args, **kwargs):
            pass

    class TorchModel(Model):
        pass

    class Registry:
        def register_module(self, *a, **k):
            return lambda cls: cls

    import logging

    stub("modelscope", Model=Model, TorchModel=TorchModel)
    stub("modelscope.metainfo", Models=types.SimpleNamespace(qwen_7b="qwen-7b"))
    stub("modelscope.utils")
    stub("modelscope.utils.constant", Tasks=types.SimpleNamespace(backbone="backbone"))
    stub("modelscope.utils.logger", get_logger=lambda *a, **k: logging.getLogger("qwen"))
    stub("modelscope.models", MODELS=Registry())
    stub("modelscope.models.nlp")
    stub("modelscope.models.nlp.qwen")
    stub("transformers.utils.model_parallel_utils", assert_device_map=None, get_device_map=None)

    def load(mod: str):
        spec = importlib.util.spec_from_file_location(f"modelscope.models.nlp.qwen.{mod}", qwen_dir / f"{mod}.py")
        m = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = m
        spec.loader.exec_module(m)
        return m

    load("configuration")
    load("qwen_generation_utils")
    backbone = load("backbone")

    fixtures = Path(__file__).resolve().parent.parent.parent / "tests" / "fixtures"
    for name in ("qwen1", "qwen1_bf16", "qwen1_long"):
        d = fixtures / name
        hub = json.loads((d / "config.json").read_text())
        ref = json.loads((d / "reference.json").read_text())
        cfg = backbone.QWenConfig(
            vocab_size=hub["vocab_size"], padded_vocab_size=hub["vocab_size"], n_embd=hub["hidden_size"],
            n_layer=hub["num_hidden_layers"], n_head=hub["num_attention_heads"],
            n_positions=hub["max_position_embeddings"], ffn_hidden_size=hub["intermediate_size"],
            kv_channels=hub["kv_channels"], layer_norm_epsilon=hub["layer_norm_epsilon"],
            rotary_emb_base=hub["rotary_emb_base"], rotary_pct=hub["rotary_pct"], seq_length=hub["seq_length"],
            use_dynamic_ntk=hub["use_dynamic_ntk"], use_logn_attn=hub["use_logn_attn"], no_bias=True,
            bf16=False, fp16=False, use_flash_attn=False, pos_emb="rotary", params_dtype="torch.float32",
            embd_pdrop=0.0, attn_pdrop=0.0,
        )
        model = backbone.QWenModel(cfg).float().eval()
        if not hasattr(model, "get_head_mask"):
            model.get_head_mask = lambda hm, n: [None] * n
        sd = load_file(str(d / "model.safetensors"))
        head = sd.pop("lm_head.weight").float()
        missing, unexpected = model.load_state_dict(
            {k.removeprefix("transformer."): v.float() for k, v in sd.items()}, strict=False)
        assert not unexpected and all("masked_bias" in k or k.endswith(".attn.bias") for k in missing), (missing, unexpected)

        @torch.no_grad()
        def logits(ids, past=None):
            out = model(input_ids=torch.tensor(ids), past_key_values=past, use_cache=True, return_dict=True)
            return out.last_hidden_state @ head.T, out.past_key_values

        def greedy(prompt, n, cache):
            seq, past, feed = list(prompt), None, list(prompt)
            for _ in range(n):
                lg, p = logits([feed if cache else seq], past if cache else None)
                tok = int(torch.argmax(lg[0, -1]))
                seq.append(tok)
                past, feed = p, [tok]
            return seq[len(prompt):]

        want = torch.from_numpy(np.frombuffer((d / "logits.bin").read_bytes(), dtype="<f4").copy()).view(
            *ref["logits"]["dims"])
        got = torch.cat([logits([row])[0] for row in ref["logits"]["input_ids"]])
        print(f"{name}: logits max|Δ| {float((got - want).abs().max()):.3g} (max|logit| {float(want.abs().max()):.3g});"
              f" greedy (cache) {'=' if greedy(ref['greedy']['input_ids'][0], len(ref['greedy']['new_tokens']), True) == ref['greedy']['new_tokens'] else '!='}"
              f" reference")
        if (d / "ntk_reference.json").exists():
            ntk = json.loads((d / "ntk_reference.json").read_text())
            want = torch.from_numpy(np.frombuffer((d / ntk["logits_file"]).read_bytes(), dtype="<f4").copy()).view(
                *ntk["logits_dims"])
            ids, n = ntk["logits_ids"], ntk["logits_prefill"]
            full = logits([ids])[0][0]
            first, past = logits([ids[:n]])
            rows = [first[0]]
            for t in ids[n:]:
                lg, past = logits([[t]], past)
                rows.append(lg[0])
            cached = torch.cat(rows)
            on = greedy(ntk["greedy_prompt"], len(ntk["greedy_cache_on"]), True)
            off = greedy(ntk["greedy_prompt"], len(ntk["greedy_cache_off"]), False)
            print(f"{name} NTK by cache mode: whole-sequence logits max|Δ| {float((full - want[0]).abs().max()):.3g},"
                  f" cached {float((cached - want[1]).abs().max()):.3g}; greedy cache on"
                  f" {'=' if on == ntk['greedy_cache_on'] else '!='}, off {'=' if off == ntk['greedy_cache_off'] else '!='}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cross-check", type=Path, required=True, metavar="DIR",
                    help="modelscope/models/nlp/qwen of an unpacked modelscope==1.40.2 wheel")
    cross_check(ap.parse_args().cross_check)
