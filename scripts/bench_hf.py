"""transformers baseline for `deno task bench`: prefill and decode tok/s on the same checkpoint.

    python3 scripts/bench_hf.py <model_dir | file.gguf> <prompt_len> <new_tokens>

A .gguf is read by transformers' GGUF loader (dequantized to float32).

Prints one JSON line: {"prefill", "decode", "transformers", "torch", "threads"}.
"""
import json
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

model_dir, prompt_len, new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if model_dir.endswith(".gguf"):
    folder, name = model_dir.rsplit("/", 1)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
else:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").eval()
prompt = torch.tensor([[3 + (i * 7919) % 1000 for i in range(prompt_len)]])


def gen(n):
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                       pad_token_id=0)


gen(2)
t = time.perf_counter()
gen(1)
prefill = time.perf_counter() - t
t = time.perf_counter()
gen(new_tokens + 1)
decode = time.perf_counter() - t - prefill
print(json.dumps({"prefill": prompt_len / prefill, "decode": new_tokens / decode,
                  "transformers": transformers.__version__, "torch": torch.__version__,
                  "threads": torch.get_num_threads()}))
