"""Reference outputs for lib/quant.ts: gguf-py's quantizers on seeded f32 rows.

  python scripts/make_quantize_reference.py          # (re)write tests/fixtures/quantize/
  python scripts/make_quantize_reference.py --check  # regenerate into a temp dir and compare

For each of Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (gguf-py's quantize_blocks are bit-exact with ggml's
reference quantizers): input.f32 (rows x 256 little-endian f32, with zeros, equal values, outliers,
tiny and large magnitudes), <type>.bin (the blocks) and <type>.dequant.f32 (gguf-py's
dequantization of those blocks). meta.json lists shapes and types. stories260k_<type>.logits.f32:
transformers' logits of the real stories260K model on the inputs of tests/fixtures/stories260k,
with its matmul weights and embedding table quantized (by gguf-py) and dequantized — what our own
quantized split must compute.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import quants
from gguf.constants import GGMLQuantizationType as T

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "quantize"
TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
ROWS, COLS = 12, 256


def inputs() -> np.ndarray:
    rng = np.random.default_rng(20261206)
    x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    x[1] *= 1e-3
    x[2] *= 50.0
    x[3, :32] = 0.0  # an all-zero block: d = 0
    x[4, 32:64] = 0.75  # one value repeated
    x[5, 7] = 40.0  # an outlier in a block
    x[6] = np.abs(x[6])  # all positive: Q4_1's min > 0
    x[7] = -np.abs(x[7])  # all negative
    x[8, ::2] = 0.0
    x[9] = np.round(x[9] * 4) / 4  # values on a grid: ties in rounding
    x[10] *= 1e-6  # tiny: f16 scales near subnormal
    return x


REPO = Path(__file__).resolve().parent.parent
STORIES = REPO / "models" / "stories260k"
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def stories_logits(block: str) -> np.ndarray:
    """transformers' f32 logits of stories260K whose matmul weights (rows of whole blocks) and
    embedding table were quantized to `block` and dequantized by gguf-py: what our quantized split
    must compute (the split's rule, lib/checkpoint.ts)."""
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    state = load_file(str(STORIES / "model.safetensors"))
    for name, w in state.items():
        matmul = name == "model.embed_tokens.weight" or (
            w.ndim == 2 and name.split(".")[-2] in LINEAR
        )
        if matmul and w.shape[1] % 32 == 0:
            t = getattr(T, block)
            q = quants.quantize(w.astype(np.float32), t)
            state[name] = quants.dequantize(q, t).astype(np.float32).reshape(w.shape)
    cfg = AutoConfig.from_pretrained(str(STORIES))
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=False
    )
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    ref = json.loads((REPO / "tests" / "fixtures" / "stories260k" / "reference.json").read_text())
    ids = torch.tensor(ref["logits"]["input_ids"])
    with torch.no_grad():
        return model(ids).logits.float().numpy()


def write(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    x = inputs()
    (out / "input.f32").write_bytes(x.astype("<f4").tobytes())
    for name in TYPES:
        blocks = quants.quantize(x, getattr(T, name))
        (out / f"{name}.bin").write_bytes(blocks.tobytes())
        deq = quants.dequantize(blocks, getattr(T, name)).astype("<f4")
        (out / f"{name}.dequant.f32").write_bytes(deq.tobytes())
    for name in ("Q8_0", "Q4_0", "Q5_0"):
        logits = stories_logits(name).astype("<f4")
        (out / f"stories260k_{name}.logits.f32").write_bytes(logits.tobytes())
    meta = {"rows": ROWS, "cols": COLS, "types": TYPES, "generator": "gguf " + quants.__name__}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        write(fresh)
        bad = []
        for f in sorted(fresh.iterdir()):
            have = OUT / f.name
            if not have.exists():
                bad.append(f"{f.name}: missing")
            elif f.suffix == ".f32":
                a = np.frombuffer(f.read_bytes(), "<f4")
                b = np.frombuffer(have.read_bytes(), "<f4")
                # Logits come from transformers: CPUs differ in the last bits.
                atol = 1e-5 * float(np.abs(b).max()) if f.name.startswith("stories") else 0
                if a.shape != b.shape or not np.allclose(a, b, rtol=1e-6, atol=atol):
                    bad.append(f"{f.name}: floats differ")
            elif f.read_bytes() != have.read_bytes():
                bad.append(f"{f.name}: bytes differ")
        for line in bad:
            print(f"quantize reference: {line}", file=sys.stderr)
        print(f"quantize reference: {len(TYPES)} types, {'OK' if not bad else 'DIFFERENT'}")
        return 1 if bad else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    if ap.parse_args().check:
        sys.exit(check())
    write(OUT)
    print(f"wrote {OUT}")
