"""llama.cpp baseline for `deno task bench --peers`: prefill and decode tok/s of a GGUF file, best
of `repeat`, with the same prompt ids as the engine's rows (batch 1, greedy, mmap as llama.cpp
defaults to).

    <venv>/bin/python scripts/bench_llamacpp.py <model.gguf> <prompt_len> <new_tokens> [repeat] [no-extra-bufts]

`no-extra-bufts` loads the model with `use_extra_bufts = false`: no repacked / AMX weight
layouts (llama.cpp's `--no-repack`). A build without the bench's AMX fix (scripts/bench.ts
AMX_FIX) segfaults with them on every quantized file on an AMX CPU when GCC 12 compiled it.

Runs in the venv `deno task bench --peers` builds (llama-cpp-python from source, GGML_NATIVE, the
AMX tile-config fix applied).
Prints one JSON line: {"prefill", "decode", "llama_cpp", "threads", "disk_per_step"}.
"""
import json
import os
import re
import sys
import time

import llama_cpp
import llama_cpp.llama
import numpy as np

path, n_prompt, n_new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
repeat = int(sys.argv[4]) if len(sys.argv) > 4 else 3
if len(sys.argv) > 5 and sys.argv[5] == "no-extra-bufts":
    # Llama() takes its model params from llama_model_default_params(); it has no keyword for this.
    _defaults = llama_cpp.llama_model_default_params

    def _no_extra():
        p = _defaults()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama.llama_cpp.llama_model_default_params = _no_extra
from llama_cpp import Llama  # noqa: E402
threads = os.cpu_count() or 1
llm = Llama(model_path=path, n_ctx=n_prompt + n_new + 8, n_threads=threads, n_threads_batch=threads,
            n_batch=512, use_mmap=True, verbose=False)
prompt = [3 + (i * 7919) % 1000 for i in range(n_prompt)]


def read_bytes():
    try:
        with open("/proc/self/io") as f:
            return int(re.search(r"read_bytes:\s*(\d+)", f.read()).group(1))
    except OSError:
        return None


n_vocab = llm.n_vocab()


def greedy():
    """The argmax of the last position's logits. (llama-cpp-python 0.3.36's eval no longer fills
    `llm.scores` unless logits_all: read the context's logits directly.)"""
    logits = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return int(np.ctypeslib.as_array(logits, shape=(n_vocab,)).argmax())


def run():
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - t
    tok = greedy()
    io0 = read_bytes()
    t = time.perf_counter()
    for _ in range(n_new):
        llm.eval([tok])
        tok = greedy()
    decode = time.perf_counter() - t
    io1 = read_bytes()
    disk = None if io0 is None or io1 is None else (io1 - io0) / n_new
    return n_prompt / prefill, n_new / decode, disk


run()  # warm: threads, the page cache, first touches
best = None
for _ in range(repeat):
    p, d, disk = run()
    if best is None or d > best[1]:
        best = (max(p, best[0] if best else 0), d, disk)
print(json.dumps({"prefill": best[0], "decode": best[1], "disk_per_step": best[2],
                  "llama_cpp": llama_cpp.__version__, "threads": threads}))
