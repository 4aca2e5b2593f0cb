#!/usr/bin/env python3
"""Reference blocks of ggml's block formats and their dequantization by gguf-py, for the backends'
tests of rl_matmul / rl_embedding with quantized weights (cpu/test_ops.c).

  python3 scripts/make_quant_reference.py          # (re)write tests/fixtures/quant/
  python3 scripts/make_quant_reference.py --check  # regenerate into a temp dir and compare with the
                                                   # committed files; exit 1 on any difference

For each format (q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k), ROWS rows of K elements:
  <name>.bin  the rows' blocks, ggml's bytes (ROWS * K / QK blocks, row after row)
  <name>.f32  gguf.quants.dequantize of those bytes: ROWS * K float32, little-endian
manifest.txt lists one line per format: name, rl_dtype, rows, k, block elements, block bytes;
README.md says the same.

The blocks are seeded (numpy PCG64) and valid: every f16 scale finite and moderate (|d| in about
[2^-9, 2^-5), with negative ones, and one block per file with d = 0). Formats gguf-py can quantize
(the 32-element ones) get ROWS - 1 rows quantized from random normal data and one row of random
bytes; the K formats are random bytes throughout (with d, dmin set as above), so every bit of
every field is exercised.

--check passes when the .bin files and manifest.txt are byte-identical and the .f32 values agree
within 1e-6 relative (max|delta| <= 1e-6 * max|value| per file).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import tempfile
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tests" / "fixtures" / "quant"

ROWS = 3
K = 512  # a multiple of 256: whole K-format blocks
SEED = 20250611
RTOL = 1e-6

# name, rl_dtype (ffi/rabbitllm.h enum rl_dtype), gguf type, byte offsets of the f16 scales in a block
FORMATS = [
    ("q8_0", 3, Q.Q8_0, [0]),
    ("q4_0", 4, Q.Q4_0, [0]),
    ("q4_1", 5, Q.Q4_1, [0, 2]),  # d, m
    ("q5_0", 6, Q.Q5_0, [0]),
    ("q5_1", 7, Q.Q5_1, [0, 2]),
    ("q4_k", 8, Q.Q4_K, [0, 2]),  # d, dmin
    ("q5_k", 9, Q.Q5_K, [0, 2]),
    ("q6_k", 10, Q.Q6_K, [208]),  # d after ql, qh, scales
]


README = f"""# ggml block formats: blocks and gguf-py's dequantization

Written by `scripts/make_quant_reference.py` (seed {SEED}); do not edit by hand. Check with
`python3 scripts/make_quant_reference.py --check`. Read by `cpu/test_ops.c` (test_quant).

`manifest.txt`: one line per format: name, rl_dtype, rows, k, block elements, block bytes.
`<name>.bin`: the rows' blocks (ggml's bytes); `<name>.f32`: `gguf.quants.dequantize` of them,
rows * k float32 little-endian.
"""


def random_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """n finite f16 scales: sign random, magnitude 2^u for u uniform in [-9, -5)."""
    mag = np.exp2(rng.uniform(-9.0, -5.0, n))
    sign = np.where(rng.random(n) < 0.25, -1.0, 1.0)
    return (sign * mag).astype(np.float16)


def make_blocks(rng: np.random.Generator, qtype: Q, scale_offsets: list[int]) -> np.ndarray:
    """ROWS x row_bytes uint8: the format's blocks."""
    qk, bb = gguf.GGML_QUANT_SIZES[qtype]
    nb = K // qk
    rows = []
    quantizable = qk == 32  # gguf-py quantizes the 32-element formats
    for r in range(ROWS):
        if quantizable and r < ROWS - 1:
            data = rng.standard_normal((1, K)).astype(np.float32) * np.float32(0.05 * (r + 1))
            row = np.asarray(gguf.quants.quantize(data, qtype), dtype=np.uint8).reshape(nb, bb)
        else:
            row = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
            for off in scale_offsets:
                row[:, off:off + 2] = random_f16(rng, nb).view(np.uint8).reshape(nb, 2)
        rows.append(row.copy())
    blocks = np.stack(rows)  # (ROWS, nb, bb)
    blocks[-1, nb // 2, scale_offsets[0]:scale_offsets[0] + 2] = 0  # one block with d = +0
    return blocks.reshape(ROWS, nb * bb)


def build(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    lines = []
    for name, dtype, qtype, offsets in FORMATS:
        qk, bb = gguf.GGML_QUANT_SIZES[qtype]
        blocks = make_blocks(rng, qtype, offsets)
        values = np.asarray(gguf.quants.dequantize(blocks, qtype), dtype=np.float32).reshape(ROWS, K)
        assert np.isfinite(values).all(), name
        (out / f"{name}.bin").write_bytes(blocks.tobytes())
        (out / f"{name}.f32").write_bytes(values.astype("<f4").tobytes())
        lines.append(f"{name} {dtype} {ROWS} {K} {qk} {bb}")
    (out / "manifest.txt").write_text("\n".join(lines) + "\n")
    (out / "README.md").write_text(README)


def compare(new: Path, old: Path) -> list[str]:
    errors = []
    names = sorted(p.name for p in new.iterdir())
    extra = sorted(set(p.name for p in old.iterdir()) - set(names)) if old.exists() else []
    if extra:
        errors.append(f"files the script does not make: {extra}")
    for fname in names:
        a, b = new / fname, old / fname
        if not b.exists():
            errors.append(f"{fname}: missing")
            continue
        if fname.endswith(".f32"):
            x, y = np.fromfile(a, dtype="<f4"), np.fromfile(b, dtype="<f4")
            if x.shape != y.shape:
                errors.append(f"{fname}: {y.size} values, expected {x.size}")
                continue
            scale = max(float(np.abs(x).max()), 1e-30)
            err = float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())
            if not err <= RTOL * scale:
                errors.append(f"{fname}: max|delta| {err:.3g} > {RTOL} * {scale:.3g}")
        elif a.read_bytes() != b.read_bytes():
            errors.append(f"{fname}: bytes differ")
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help=argparse.SUPPRESS)
    args = ap.parse_args()
    print(f"gguf {importlib.metadata.version('gguf')}, numpy {np.__version__}", file=sys.stderr)
    if not args.check:
        build(args.out)
        total = sum(p.stat().st_size for p in args.out.iterdir())
        print(f"wrote {args.out} ({total / 1024:.0f} KiB)", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="rabbit-quant-") as tmp:
        build(Path(tmp))
        errors = compare(Path(tmp), args.out)
    for e in errors:
        print(f"FAIL {e}", file=sys.stderr)
    print(f"check {'FAILED' if errors else 'passed'}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
