"""ggml's own K-format blocks (Q4_K, Q5_K, Q6_K) of tests/fixtures/quantize/input.f32, for
tests/quant_test.ts.

  <llama-cpp-python venv>/bin/python scripts/make_kquant_ggml_reference.py

gguf-py has no K-format quantizer, so the reference is ggml's quantize_row_q{4,5,6}_K_ref from the
libggml-base of llama-cpp-python 0.3.36 (the venv `deno task bench --peers` builds, GGML_NATIVE).
Its bytes depend on how that C was compiled (gcc may fuse a*b + c into one FMA), so they are a
reference for the error our quantizer reaches, not for every byte. Not regenerated in CI (building
llama-cpp-python takes about 10 minutes); the committed .txt files record the build they came from.
"""

import ctypes
import os
from pathlib import Path

import llama_cpp
import numpy as np

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "quantize"
BLOCK_BYTES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}  # per super-block of 256 values

lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
x = np.fromfile(FIX / "input.f32", dtype="<f4")
for name, nbytes in BLOCK_BYTES.items():
    fn = f"quantize_row_{name[0].lower()}{name[1]}_K_ref"
    out = np.zeros(x.size // 256 * nbytes, dtype=np.uint8)
    getattr(lib, fn)(
        x.ctypes.data_as(ctypes.c_void_p),
        out.ctypes.data_as(ctypes.c_void_p),
        ctypes.c_int64(x.size),
    )
    out.tofile(FIX / f"{name}.ggml.bin")
    (FIX / f"{name}.ggml.txt").write_text(
        f"{fn} of llama-cpp-python {llama_cpp.__version__} (GGML_NATIVE build)\n"
    )
    print(f"wrote {FIX / f'{name}.ggml.bin'}")
