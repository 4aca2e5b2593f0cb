"""Convert a SentencePiece model (llama2.c's tok*.model) into a Hugging Face tokenizer directory.

usage: python3 scripts/convert_tokenizer.py <tok.model> <out_dir> [bos eos]

Writes tokenizer.json and tokenizer_config.json with transformers' own Llama conversion
(transformers 5: `LlamaTokenizer.from_pretrained` on a directory holding only `tokenizer.model`
converts it through SentencePieceExtractor; this needs the `protobuf` package). `bos` and `eos` are
piece strings, `<s>` and `</s>` by default; the unknown piece is `<unk>`; BOS is prepended.

The result is checked before the script exits: reloaded with AutoTokenizer, sample texts must encode
to [BOS] + SentencePiece's ids and decode back to the text. Known difference, by design of the
transformers conversion: SentencePiece models trained with remove_extra_whitespaces (as tok512 is)
collapse runs of spaces and drop trailing ones; the converted tokenizer keeps them (as llama2.c's
own encoder does).
"""

import json
import os
import shutil
import sys
import tempfile

import sentencepiece
import tokenizers
from transformers import AutoTokenizer, LlamaTokenizer

SAMPLES = [
    "Once upon a time",
    "Once upon a time, there was a little girl named Lily. She loved to play outside.",
    'Tom said, "I can\'t find my red ball!"\nHis mom smiled.',
    "Lily's café ☃ costs 123 coins.",  # byte fallback, or <unk> in a vocabulary without bytes
]

# Keys from_pretrained leaks into the saved config; they describe the load, not the tokenizer.
LOAD_ONLY_KEYS = ("is_local", "local_files_only")


def convert(model_path: str, out_dir: str, bos: str = "<s>", eos: str = "</s>") -> None:
    sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    for piece in (bos, eos, "<unk>"):
        if sp.piece_to_id(piece) == sp.unk_id() and piece != "<unk>":
            sys.exit(f"error: {model_path}: has no piece {piece!r}")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(model_path, os.path.join(tmp, "tokenizer.model"))
        tok = LlamaTokenizer.from_pretrained(
            tmp,
            bos_token=bos,
            eos_token=eos,
            unk_token="<unk>",
            add_bos_token=True,
            add_eos_token=False,
            legacy=False,
        )
        if len(tok) != sp.get_piece_size():
            n = sp.get_piece_size()
            sys.exit(f"error: {model_path}: converted {len(tok)} pieces, expected {n}")
        os.makedirs(out_dir, exist_ok=True)
        tok.save_pretrained(out_dir)

    # The converted BPE model has no unk_token, so text the vocabulary cannot spell (no byte pieces,
    # as in tok105) would be dropped silently; SentencePiece gives <unk> for it.
    tokenizer_path = os.path.join(out_dir, "tokenizer.json")
    with open(tokenizer_path, encoding="utf-8") as f:
        spec = json.load(f)
    if spec["model"].get("unk_token") is None:
        spec["model"]["unk_token"] = "<unk>"
        tokenizers.Tokenizer.from_str(json.dumps(spec)).save(tokenizer_path, pretty=True)

    config_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    for key in LOAD_ONLY_KEYS:
        config.pop(key, None)
    config["add_bos_token"] = True
    config["add_eos_token"] = False
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(dict(sorted(config.items())), f, indent=2, ensure_ascii=False)
        f.write("\n")
    check(sp, out_dir, bos)


def check(sp: "sentencepiece.SentencePieceProcessor", out_dir: str, bos: str) -> None:
    """tokenizer.json (read by the tokenizers library itself) and transformers' AutoTokenizer must
    both encode like SentencePiece with BOS prepended and decode back to the text. transformers 5
    rebuilds a LlamaTokenizer's BPE model without its unk_token, so it is only held to texts that
    SentencePiece spells without <unk>."""
    raw = tokenizers.Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(out_dir)
    for text in SAMPLES:
        want = [sp.piece_to_id(bos)] + sp.encode(text)
        spelled = sp.unk_id() not in want
        results = {
            "tokenizer.json": (raw.encode(text).ids, raw.decode(want, skip_special_tokens=True)),
        }
        if spelled:
            results["AutoTokenizer"] = (
                auto(text).input_ids,
                auto.decode(want, skip_special_tokens=True),
            )
        for name, (ids, back) in results.items():
            if ids != want:
                sys.exit(f"error: {out_dir}: {name}: {text!r} encodes to {ids}, expected {want}")
            if back != text and spelled:
                sys.exit(f"error: {out_dir}: {name}: {text!r} decodes back to {back!r}")


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 4):
        sys.exit(__doc__.split("\n\n")[1])
    convert(*argv)
    print(f"{argv[0]} → {argv[1]}: tokenizer.json, tokenizer_config.json")


if __name__ == "__main__":
    main(sys.argv[1:])
