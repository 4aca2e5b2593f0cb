"""Rotary tables (inv_freq, attention scaling) as transformers computes them, for tests/rope_test.ts.

    python3 scripts/make_rope_reference.py          # writes tests/fixtures/rope_tables.json
    python3 scripts/make_rope_reference.py --check  # fails when the committed file differs
"""
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

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


def build():
    out = {"transformers_version": transformers.__version__, "cases": []}
    for name, kw, seq_len in CASES:
        # The model's own rotary module; a forward over positions [0, seq_len) applies the
        # dynamic update exactly as a model forward would.
        rot = LlamaRotaryEmbedding(LlamaConfig(**BASE, **kw))
        if seq_len is not None:
            rot(torch.zeros(1), torch.arange(seq_len)[None])
        inv_freq, scaling = rot.inv_freq, rot.attention_scaling
        out["cases"].append({
            "name": name,
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
        old = json.loads(OUT.read_text())
        ok = len(old["cases"]) == len(data["cases"]) and all(
            a["name"] == b["name"] and a["attention_scaling"] == b["attention_scaling"]
            and a["inv_freq"] == b["inv_freq"] for a, b in zip(old["cases"], data["cases"]))
        print(f"rope_tables.json: {'ok' if ok else 'DIFFERS from transformers'}")
        sys.exit(0 if ok else 1)
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
