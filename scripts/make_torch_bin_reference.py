"""torch.save checkpoints (`pytorch_model.bin`, zip format) for tests/torch_bin_test.ts.

    python3 scripts/make_torch_bin_reference.py          # writes tests/fixtures/torch_bin/
    python3 scripts/make_torch_bin_reference.py --check  # fails when the committed files differ

torch.save's output is byte-deterministic for the same torch version (checked: the same bytes
across processes; `.data/serialization_id` is derived from the content), so --check regenerates
everything and compares bytes, .bin files included.

- tensors.bin: an OrderedDict state dict (with `_metadata`, as nn.Module.state_dict has) of f32,
  f16, bf16, i64, i32, i8, u8, bool, scalar and empty tensors; views of one shared storage at offsets;
  a tensor saved under two keys (tied weights); an nn.Parameter.
- noncontiguous.bin: a transposed view (refused).
- legacy.bin: the pre-1.6 non-zip format (refused).
- malicious.bin: a zip whose data.pkl is `os.system("touch <marker>")` via GLOBAL + REDUCE (refused
  without running anything).
- sharded/: pytorch_model-0000N-of-00002.bin + pytorch_model.bin.index.json.
- expected.json: per file, each tensor's torch dtype, shape and raw bytes (hex).
- llama_tied/: tests/fixtures/llama_tied's weights as torch.save shards with an index (and
  lm_head.weight sharing the embedding's storage, as transformers' .bin files of tied models
  have), next to its config.json: split and generate must equal the safetensors fixture.
"""
import json
import pickle
import shutil
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "torch_bin"
MARKER = "/tmp/rabbitllm-torch-bin-pwned"


def describe(sd) -> dict:
    return {k: {"dtype": str(v.dtype), "shape": list(v.shape),
                "hex": v.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()}
            for k, v in sd.items()}


class Evil:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {MARKER}",))


def write(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    expected = {}
    # Exactly representable values (no RNG): the bytes are the same on every CPU.
    base = (torch.arange(24, dtype=torch.float32) - 12) * 0.25
    emb = (torch.arange(12, dtype=torch.float32) * 0.5).reshape(4, 3)
    sd = OrderedDict()
    sd["w.f32"] = ((torch.arange(15, dtype=torch.float32) - 7) * 0.375).reshape(3, 5)
    sd["w.f16"] = ((torch.arange(8, dtype=torch.float32) - 3.5) * 1.25).half().reshape(4, 2)
    sd["w.bf16"] = ((torch.arange(12, dtype=torch.float32) - 6) * -0.625).bfloat16().reshape(2, 3, 2)
    sd["ids.i64"] = torch.tensor([1, -2, 3], dtype=torch.int64)
    sd["ids.i32"] = torch.tensor([[7, -8]], dtype=torch.int32)
    sd["q.i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    sd["q.u8"] = torch.tensor([255, 1], dtype=torch.uint8)
    sd["mask.bool"] = torch.tensor([True, False, True])  # read as U8 (one byte each)
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["view.head"] = base[:12].view(3, 4)   # storage offset 0
    sd["view.tail"] = base[12:].view(2, 6)   # same storage, offset 12
    sd["view.row"] = base[4:8]               # same storage, overlapping head
    sd["emb.weight"] = emb
    sd["lm_head.weight"] = emb               # tied: the same tensor under two keys
    sd["param"] = torch.nn.Parameter(torch.tensor([[1.5, -2.0]]))
    sd._metadata = OrderedDict([("", {"version": 1})])
    torch.save(sd, d / "tensors.bin")
    expected["tensors.bin"] = describe(sd)

    torch.save({"t": torch.arange(6, dtype=torch.float32).reshape(2, 3).t()}, d / "noncontiguous.bin")
    torch.save({"t": torch.ones(2)}, d / "legacy.bin", _use_new_zipfile_serialization=False)

    # The archive layout torch.save uses, with a pickle that would run os.system if unpickled.
    with zipfile.ZipFile(d / "malicious.bin", "w", zipfile.ZIP_STORED) as z:
        for name, data in [("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2)),
                           ("archive/byteorder", b"little"), ("archive/version", b"3\n")]:
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)

    sh = d / "sharded"
    sh.mkdir(exist_ok=True)
    a = OrderedDict([("a.weight", torch.arange(6, dtype=torch.float32).reshape(2, 3)),
                     ("a.bias", torch.tensor([0.5, -0.5], dtype=torch.bfloat16))])
    b = OrderedDict([("b.weight", torch.arange(4, dtype=torch.float16).reshape(2, 2))])
    torch.save(a, sh / "pytorch_model-00001-of-00002.bin")
    torch.save(b, sh / "pytorch_model-00002-of-00002.bin")
    index = {"metadata": {"total_size": 32},
             "weight_map": {**{k: "pytorch_model-00001-of-00002.bin" for k in a},
                            **{k: "pytorch_model-00002-of-00002.bin" for k in b}}}
    (sh / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")
    expected["sharded/pytorch_model-00001-of-00002.bin"] = describe(a)
    expected["sharded/pytorch_model-00002-of-00002.bin"] = describe(b)
    (d / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")

    # The llama_tied fixture as a torch.save checkpoint in two shards.
    ll = d / "llama_tied"
    ll.mkdir(exist_ok=True)
    src = ROOT / "tests" / "fixtures" / "llama_tied"
    shutil.copyfile(src / "config.json", ll / "config.json")
    w = load_file(str(src / "model.safetensors"))
    w["lm_head.weight"] = w["model.embed_tokens.weight"]  # shares its storage, as in .bin files
    names = sorted(w)
    first = [n for n in names
             if n.startswith(("model.embed_tokens", "lm_head")) or ".layers.0." in n]
    shards = {"pytorch_model-00001-of-00002.bin": first,
              "pytorch_model-00002-of-00002.bin": [n for n in names if n not in first]}
    wm = {}
    for file, keys in shards.items():
        torch.save(OrderedDict((k, w[k]) for k in keys), ll / file)
        wm.update({k: file for k in keys})
    total = sum(w[k].numel() * w[k].element_size() for k in names if k != "lm_head.weight")
    (ll / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(wm.items()))},
                   indent=2) + "\n")


def files(d: Path) -> list:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())


def main() -> None:
    if "--check" not in sys.argv:
        if OUT.exists():
            shutil.rmtree(OUT)
        write(OUT)
        print(f"wrote {OUT}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        want, have = files(Path(tmp)), files(OUT)
        # The legacy format keys storages by object id: not deterministic; only its kind matters.
        bad = [f for f in want if f not in have or (
            f != "legacy.bin" and (Path(tmp) / f).read_bytes() != (OUT / f).read_bytes())]
        if (OUT / "legacy.bin").read_bytes()[:2] != b"\x80\x02":
            bad.append("legacy.bin (not a legacy torch.save pickle)")
        bad += [f"{f} (not written)" for f in have if f not in want]
    # The committed files load in torch as expected.json says (the .bin files themselves).
    exp = json.loads((OUT / "expected.json").read_text())
    for f, tensors in exp.items():
        sd = torch.load(OUT / f, weights_only=True)
        if describe(sd) != tensors:
            bad.append(f"{f} (torch.load disagrees with expected.json)")
    print("torch_bin fixtures: " + ("ok" if not bad else "DIFFER: " + ", ".join(bad)))
    sys.exit(0 if not bad else 1)


if __name__ == "__main__":
    main()
