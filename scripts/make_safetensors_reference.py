"""A safetensors file written by the reference implementation, for tests/safetensors_test.ts.

    python3 scripts/make_safetensors_reference.py          # writes tests/fixtures/safetensors/
    python3 scripts/make_safetensors_reference.py --check  # fails when the committed files differ

python_written.safetensors comes from safetensors.torch.save_file; python_written.json lists each
tensor's torch dtype, shape and raw bytes (hex), so the Deno test needs no Python at run time.
(The other direction is covered in CI: transformers loads models/stories260k/model.safetensors,
which our TypeScript converter writes.)
"""
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "safetensors"


def write(dir: Path) -> None:
    # Exactly representable values (no RNG, no libm): the bytes are the same on every CPU.
    t = {
        "w.f32": ((torch.arange(15, dtype=torch.float32) - 7) * 0.375).reshape(3, 5),
        "w.f16": ((torch.arange(8, dtype=torch.float32) - 3.5) * 1.25).half().reshape(4, 2),
        "w.bf16": ((torch.arange(12, dtype=torch.float32) - 6) * -0.625).bfloat16().reshape(2, 3, 2),
        "ids.i64": torch.tensor([1, -2, 3], dtype=torch.int64),
        "ids.i32": torch.tensor([[7, -8]], dtype=torch.int32),
        "q.i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "q.u8": torch.tensor([255, 1], dtype=torch.uint8),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    dir.mkdir(parents=True, exist_ok=True)
    save_file(t, str(dir / "python_written.safetensors"), metadata={"format": "pt"})  # one key: Rust map order varies
    desc = {k: {"dtype": str(v.dtype), "shape": list(v.shape),
                "hex": v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()}
            for k, v in t.items()}
    (dir / "python_written.json").write_text(json.dumps(desc, indent=1) + "\n")


def main() -> None:
    if "--check" not in sys.argv:
        write(OUT)
        print(f"wrote {OUT}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        same = all((Path(tmp) / f).read_bytes() == (OUT / f).read_bytes()
                   for f in ("python_written.safetensors", "python_written.json"))
    print(f"safetensors fixture: {'ok' if same else 'DIFFERS from safetensors.torch.save_file'}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
