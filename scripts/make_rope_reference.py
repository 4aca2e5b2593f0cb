"""Rotary tables (inv_freq, attention scaling) as transformers computes them, for tests/rope_test.ts.

    python3 scripts/make_rope_reference.py          # writes tests/fixtures/rope_tables.json
    python3 scripts/make_rope_reference.py --check  # fails when the committed file differs
"""
import json
import math
import sys
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, Phi3Config
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "rope_tables.json"

BASE = dict(hidden_size=256, num_attention_heads=4, max_position_embeddings=256)
CASES = [
    ("default", dict(rope_theta=10000.0), None),
    ("default_theta_500k_head_dim_32", dict(rope_theta=500000.0, head_dim=32), None),
    ("linear", dict(rope_theta=10000.0, rope_scaling={"rope_type": "linear", "factor": 4.0}), None),
    ("dynamic_short", dict(rope_theta=10000.0, rope_scaling={"rope_type": "dynamic", "factor": 2.0}), 100),
    ("dynamic_long", dict(rope_theta=10000.0, rope_scaling={"rope_type": "dynamic", "factor": 2.0}), 700),
    ("llama3", dict(rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32}), None),
    ("yarn", dict(rope_theta=10000.0, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}), None),
    ("yarn_mscale", dict(rope_theta=10000.0, rope_scaling={
        "rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 64,
        "mscale": 1.0, "mscale_all_dim": 0.707, "beta_fast": 32, "beta_slow": 1}), None),
]

# LongRoPE through Phi-3's own config and rotary module: short_factor up to and including
# original_max_position_embeddings (max(position) + 1 <= 64), long_factor past it.
SHORT = [1.0 + 0.02 * i for i in range(32)]
LONG = [1.0 + 0.5 * i for i in range(32)]
LONGROPE = dict(rope_theta=10000.0, original_max_position_embeddings=64,
                rope_scaling={"type": "longrope", "short_factor": SHORT, "long_factor": LONG})
PHI3_CASES = [
    ("phi3_longrope_short", LONGROPE, None),
    ("phi3_longrope_at_original", LONGROPE, 64),
    ("phi3_longrope_long", LONGROPE, 65),
    # Phi3Config reads the legacy types "yarn" and "su" as longrope, and its top-level
    # original_max_position_embeddings wins over the rope dict's (transformers 5.23 rejects "su"
    # without one in the dict, then uses the top-level 64 anyway: 20 tokens stay short).
    ("phi3_longrope_yarn_partial_attention_factor", dict(
        rope_theta=10000.0, original_max_position_embeddings=64, partial_rotary_factor=0.75,
        rope_scaling={"type": "yarn", "short_factor": SHORT[:24], "long_factor": LONG[:24],
                      "attention_factor": 1.25}), 200),
    ("phi3_longrope_su", dict(
        rope_theta=10000.0, original_max_position_embeddings=64,
        rope_scaling={"type": "su", "short_factor": SHORT, "long_factor": LONG,
                      "original_max_position_embeddings": 16}), 20),
    ("phi3_longrope_factor", dict(
        original_max_position_embeddings=32,
        rope_parameters={"rope_type": "longrope", "rope_theta": 50000.0, "factor": 16.0,
                         "short_factor": SHORT, "long_factor": LONG}), 100),
]


def build():
    out = {"transformers_version": transformers.__version__, "cases": []}
    families = [("llama", LlamaConfig, LlamaRotaryEmbedding, CASES),
                ("phi3", Phi3Config, Phi3RotaryEmbedding, PHI3_CASES)]
    for model, config_cls, rotary_cls, cases in families:
        for name, kw, seq_len in cases:
            # The model's own rotary module; a forward over positions [0, seq_len) applies the
            # dynamic/longrope update exactly as a model forward would.
            rot = rotary_cls(config_cls(**BASE, **kw))
            if seq_len is not None:
                rot(torch.zeros(1), torch.arange(seq_len)[None])
            inv_freq, scaling = rot.inv_freq, rot.attention_scaling
            case = {"name": name}
            if model != "llama":
                case["model"] = model
            out["cases"].append({
                **case,
                "config": {**BASE, **kw},
                "seq_len": seq_len,
                "inv_freq": [float(x) for x in inv_freq.float().tolist()],
                "attention_scaling": float(scaling),
            })
    return out


def main():
    data = build()
    text = json.dumps(data, indent=1) + "\n"
    if "--check" in sys.argv:
        # Floats compare with a tolerance: torch picks its vector kernels by CPU (AVX2, AVX-512),
        # so the last bit may differ between machines (tests/rope_test.ts allows 4e-7 relative).
        old = json.loads(OUT.read_text())
        close = lambda x, y: math.isclose(x, y, rel_tol=1e-7, abs_tol=1e-30)
        ok = len(old["cases"]) == len(data["cases"]) and all(
            a["name"] == b["name"] and a["config"] == b["config"] and a["seq_len"] == b["seq_len"]
            and close(a["attention_scaling"], b["attention_scaling"])
            and len(a["inv_freq"]) == len(b["inv_freq"])
            and all(close(x, y) for x, y in zip(a["inv_freq"], b["inv_freq"]))
            for a, b in zip(old["cases"], data["cases"]))
        print(f"rope_tables.json: {'ok' if ok else 'DIFFERS from transformers'}")
        sys.exit(0 if ok else 1)
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
