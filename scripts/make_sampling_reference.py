"""transformers' logits processors on fixed logits, for tests/sampling_test.ts.

    python3 scripts/make_sampling_reference.py          # writes tests/fixtures/sampling_reference.json
    python3 scripts/make_sampling_reference.py --check  # fails when the committed file differs

Each case runs the processors generate() builds for its settings, in generate()'s order
(repetition penalty, temperature, top-k, top-p, min-p), on one logits row.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers.generation.logits_process import (
    LogitsProcessorList, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sampling_reference.json"
CASES = [
    dict(name="repetition_penalty", repetition_penalty=1.3),
    dict(name="temperature", temperature=0.7),
    dict(name="top_k", top_k=5),
    dict(name="top_p", top_p=0.8),
    dict(name="min_p", min_p=0.1),
    dict(name="all", repetition_penalty=1.2, temperature=0.8, top_k=20, top_p=0.9, min_p=0.05),
    dict(name="hot_top_p", temperature=1.7, top_p=0.5),
]


def processors(c):
    p = LogitsProcessorList()
    if c.get("repetition_penalty", 1.0) != 1.0:
        p.append(RepetitionPenaltyLogitsProcessor(c["repetition_penalty"]))
    if c.get("temperature", 1.0) != 1.0:
        p.append(TemperatureLogitsWarper(c["temperature"]))
    if c.get("top_k", 0):
        p.append(TopKLogitsWarper(c["top_k"]))
    if c.get("top_p", 1.0) < 1.0:
        p.append(TopPLogitsWarper(c["top_p"]))
    if c.get("min_p") is not None:
        p.append(MinPLogitsWarper(c["min_p"]))
    return p


def build():
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal(64) * 3).astype(np.float32)
    seen = [int(x) for x in rng.integers(0, 64, 10)]
    out = {"transformers_version": transformers.__version__, "logits": logits.tolist(), "seen": seen,
           "cases": []}
    for c in CASES:
        scores = processors(c)(torch.tensor([seen]), torch.tensor(logits)[None].clone())[0]
        out["cases"].append({**c, "processed": [None if v == float("-inf") else float(v)
                                                for v in scores.tolist()]})
    return out


def main():
    text = json.dumps(build(), indent=1) + "\n"
    if "--check" in sys.argv:
        # Scores compare with a tolerance (torch's kernels differ by CPU in the last bit); -inf
        # (null) positions, the cases and their settings must match exactly.
        old, new = json.loads(OUT.read_text()), json.loads(text)
        def close(x, y):
            if x is None or y is None:
                return x is y
            return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7)
        same = len(old["cases"]) == len(new["cases"]) and all(
            {k: v for k, v in a.items() if k != "processed"} == {k: v for k, v in b.items() if k != "processed"}
            and len(a["processed"]) == len(b["processed"])
            and all(close(x, y) for x, y in zip(a["processed"], b["processed"]))
            for a, b in zip(new["cases"], old["cases"])) and {k: v for k, v in old.items() if k != "cases"} == {k: v for k, v in new.items() if k != "cases"}
        print(f"sampling_reference.json: {'ok' if same else 'DIFFERS from transformers'}")
        sys.exit(0 if same else 1)
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
