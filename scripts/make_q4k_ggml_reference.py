"""ggml's own Q4_K blocks of tests/fixtures/quantize/input.f32, for tests/quant_test.ts.

  <llama-cpp-python venv>/bin/python scripts/make_q4k_ggml_reference.py

gguf-py has no K-format quantizer, so the reference is ggml's quantize_row_q4_K_ref from the
libggml-base of llama-cpp-python 0.3.36 (the venv `deno task bench --peers` builds, GGML_NATIVE).
Its bytes depend on how that C was compiled (gcc may fuse a*b + c into one FMA), so they are a
reference for the error our quantizer reaches, not for every byte. Not regenerated in CI (building
llama-cpp-python takes about 10 minutes); the committed file records the build it came from.
"""

import ctypes
import os
from pathlib import Path

import llama_cpp
import numpy as np

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "quantize"
lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
x = np.fromfile(FIX / "input.f32", dtype="<f4")
out = np.zeros(x.size // 256 * 144, dtype=np.uint8)
lib.quantize_row_q4_K_ref(
    x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(x.size)
)
out.tofile(FIX / "Q4_K.ggml.bin")
(FIX / "Q4_K.ggml.txt").write_text(
    f"quantize_row_q4_K_ref of llama-cpp-python {llama_cpp.__version__} (GGML_NATIVE build)\n"
)
print(f"wrote {FIX / 'Q4_K.ggml.bin'}")
