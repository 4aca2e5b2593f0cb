"""Reference for lib/gguf.ts: a small GGUF file written by gguf-py's GGUFWriter, and what gguf-py's
own GGUFReader (an independent parser) reads back from it.

  python scripts/make_gguf_reference.py          # (re)write tests/fixtures/gguf/
  python scripts/make_gguf_reference.py --check  # regenerate into a temp dir and compare

tiny.gguf holds metadata of every value type (nested arrays included, a non-default alignment) and
tensors of F32, F16, BF16, Q8_0, Q4_0, Q5_1 (quantized by gguf-py) and Q4_K, Q6_K (seeded random
blocks with finite f16 scales: any such bytes are valid blocks). expected.json: the metadata and,
per tensor, its row-major shape, type, absolute data offset, size and sha256, plus gguf-py's
dequantization of each tensor's first row (for the quantized ones).
"""

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import gguf
from gguf import GGUFReader, GGUFWriter, quants
from gguf.constants import GGMLQuantizationType as T

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"


def k_blocks(rng: np.random.Generator, t: T, rows: int, cols: int) -> np.ndarray:
    """Random blocks with small finite f16 scales at their ggml positions."""
    elems, size = gguf.GGML_QUANT_SIZES[t]
    b = rng.integers(0, 256, size=(rows * cols // elems, size), dtype=np.uint8)
    half = lambda v: np.full((b.shape[0], 1), v, dtype=np.float16).view(np.uint8)
    if t == T.Q4_K:
        b[:, 0:2] = half(0.01)
        b[:, 2:4] = half(0.005)
    elif t == T.Q6_K:
        b[:, 208:210] = half(0.002)
    return b.reshape(rows, cols // elems * size)


def write(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tiny.gguf"
    rng = np.random.default_rng(20261206)
    w = GGUFWriter(str(path), "llama")
    w.add_custom_alignment(64)
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.25)
    w.add_uint64("test.u64", 2**40 + 3)
    w.add_int64("test.i64", -(2**40))
    w.add_float64("test.f64", 1e-300)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo ✓")
    w.add_array("test.strings", ["a", "", "ü"])
    w.add_array("test.ints", [1, -2, 3])
    w.add_array("test.nested", [[1, 2], [3]])
    x = rng.standard_normal((4, 64)).astype(np.float32)
    w.add_tensor("f32", x)
    w.add_tensor("f16", x.astype(np.float16))
    w.add_tensor("bf16", quants.quantize(x, T.BF16), raw_dtype=T.BF16)
    for t in (T.Q8_0, T.Q4_0, T.Q5_1):
        w.add_tensor(t.name.lower(), quants.quantize(x, t), raw_dtype=t)
    y = rng.standard_normal((2, 3, 256)).astype(np.float32)
    w.add_tensor("vec", y[0, 0])  # 1-D
    w.add_tensor("cube", y)  # 3-D
    for t in (T.Q4_K, T.Q6_K):
        w.add_tensor(t.name.lower(), k_blocks(rng, t, 3, 512), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    r = GGUFReader(str(path))
    meta = {}
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        meta[f.name] = f.contents()
    tensors = []
    raw = path.read_bytes()
    for t in r.tensors:
        start, n = int(t.data_offset), int(t.n_bytes)
        entry = {
            "name": t.name,
            "shape": [int(d) for d in reversed(t.shape.tolist())],
            "type": t.tensor_type.name,
            "offset": start,
            "nbytes": n,
            "sha256": hashlib.sha256(raw[start:start + n]).hexdigest(),
        }
        if t.tensor_type not in (T.F32, T.F16):
            rows = quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(-1, entry["shape"][-1])
            entry["row0"] = [float(v) for v in rows[0].astype(np.float32)]
        tensors.append(entry)
    doc = {"metadata": meta, "tensors": tensors, "alignment": 64, "file_bytes": len(raw)}
    (out / "expected.json").write_text(json.dumps(doc, indent=1) + "\n")


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        write(fresh)
        bad = []
        if (fresh / "tiny.gguf").read_bytes() != (OUT / "tiny.gguf").read_bytes():
            bad.append("tiny.gguf: bytes differ")
        a = json.loads((fresh / "expected.json").read_text())
        b = json.loads((OUT / "expected.json").read_text())
        if a != b:
            bad.append("expected.json differs")
        for line in bad:
            print(f"gguf reference: {line}", file=sys.stderr)
        print(f"gguf reference: {'OK' if not bad else 'DIFFERENT'}")
        return 1 if bad else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    if ap.parse_args().check:
        sys.exit(check())
    write(OUT)
    print(f"wrote {OUT}")
