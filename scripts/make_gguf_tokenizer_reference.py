"""GGUF tokenizer fixtures and the original HF tokenizers' outputs, for tests/gguf_tokenizer_test.ts.

    python3 scripts/make_gguf_tokenizer_reference.py          # writes tests/fixtures/gguf_tokenizers/
    python3 scripts/make_gguf_tokenizer_reference.py --check  # regenerates in a temp dir; exit 1 on drift

For each HF tokenizer below this writes `<name>.gguf`: a GGUF holding only the tokenizer metadata
(no tensors), written the way llama.cpp's convert_hf_to_gguf.py writes it for that tokenizer
(`_set_vocab_sentencepiece` for the SentencePiece one, `_set_vocab_gpt2` / `get_vocab_base` for the
byte-level ones, `gguf.SpecialVocab` for special ids, add_bos/add_eos, merges and chat templates).
The `tokenizer.ggml.pre` value is the one convert_hf_to_gguf.py's hash table gives the real model
family (our vocabularies are too small to hash to it):

- stories260k: models/stories260k (SentencePiece tok512.model; model "llama", pre "default").
- chatml: tests/fixtures/tokenizers/chatml (Qwen2Tokenizer: NFC + Qwen2 split; pre "qwen2").
- llama3: tests/fixtures/tokenizers/llama3 (Llama-3 split, ignore_merges; pre "llama-bpe").
- smollm: a byte-level BPE trained here like SmolLM's (Digits(individual) + ByteLevel regex,
  <|endoftext|> <|im_start|> <|im_end|> at ids 0..2, ChatML template), saved to smollm_hf/;
  pre "smollm".

reference.json: for every fixture and text, the ORIGINAL HF tokenizer's (AutoTokenizer on the HF
directory) ids with and without special tokens and its decodes, decodes of random id sequences,
bos/eos/pad/unk ids; and, for information only, whether transformers' own GGUF tokenizer
(AutoTokenizer.from_pretrained(dir, gguf_file=...)) gives the same ids (the texts where it does not).
The texts are those of tests/fixtures/tokenizers/*/reference.json plus one line of each fixture's
special tokens.
"""

import argparse
import filecmp
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the BPE trainer stays deterministic on one thread

import gguf  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from sentencepiece import SentencePieceProcessor  # noqa: E402
from tokenizers import decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

transformers.logging.set_verbosity_error()
import logging  # noqa: E402

logging.getLogger("gguf").setLevel(logging.ERROR)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "gguf_tokenizers"
TOKENIZERS = REPO / "tests" / "fixtures" / "tokenizers"
STORIES = REPO / "models" / "stories260k"

SMOLLM_CORPUS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "One day, she saw a big red ball under the tree. \"Can I play with it?\" she asked her mom.",
    "The quick brown fox jumps over the lazy dog! It's 12:45 and we're at 3.14159 or 1,024.",
    "def main():\n    print('hello world')\n    return 0\n\nif __name__ == '__main__':\n    main()\n",
    "User: What is the capital of France?\nAssistant: The capital of France is Paris.",
    "Le café est très bon. Ça coûte 3 €. Naïve résumé, déjà vu. Straße, Ærøskøbing.",
    "日本語のテキストと中文的文本。東京は日本の首都です。",
    "Emoji: 🙂 👍🏽 🇫🇷 ❤️ — dashes – and “quotes”.",
]

# SmolLM-Instruct's ChatML template.
SMOLLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# convert_hf_to_gguf.py: SentencePieceTokenTypes / gguf.TokenType
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def does_token_look_special(token_text: str) -> bool:
    """convert_hf_to_gguf.py's TextModel.does_token_look_special."""
    seems_special = token_text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
    seems_special = seems_special or (token_text.startswith("<|") and token_text.endswith("|>"))
    seems_special = seems_special or (token_text.startswith("<｜") and token_text.endswith("｜>"))
    seems_special = seems_special or (token_text.startswith("<unused") and token_text.endswith(">"))
    return seems_special


def vocab_sentencepiece(model_file: Path, tok_dir: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """convert_hf_to_gguf.py's _create_vocab_sentencepiece (tokenizer.model = model_file)."""
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(model_file))
    tokens = [f"[PAD{i}]".encode("utf-8") for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    toktypes = [UNUSED] * vocab_size
    for token_id in range(min(sp.vocab_size(), vocab_size)):
        toktype = NORMAL
        if sp.IsUnknown(token_id):
            toktype = UNKNOWN
        elif sp.IsControl(token_id):
            toktype = CONTROL
        elif sp.IsUnused(token_id):
            toktype = UNUSED
        elif sp.IsByte(token_id):
            toktype = BYTE
        tokens[token_id] = sp.IdToPiece(token_id).encode("utf-8")
        scores[token_id] = sp.GetScore(token_id)
        toktypes[token_id] = toktype
    config = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    for token_id, data in config.get("added_tokens_decoder", {}).items():
        token_id = int(token_id)
        if token_id >= vocab_size:
            continue
        token = data["content"]
        if data.get("special") or does_token_look_special(token):
            toktypes[token_id] = CONTROL
        else:
            token = token.replace("\u2581", " ")
            toktypes[token_id] = USER_DEFINED
        scores[token_id] = -1000.0
        tokens[token_id] = token.encode("utf-8")
    return tokens, scores, toktypes


def vocab_base(tok_dir: Path) -> tuple[list[str], list[int]]:
    """convert_hf_to_gguf.py's get_vocab_base (no config.json: vocab_size = len(vocab))."""
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    vocab_size = len(tokenizer.vocab)
    reverse_vocab = {id_: tok for tok, id_ in tokenizer.vocab.items()}
    added_vocab = tokenizer.get_added_vocab()
    added_tokens_decoder = tokenizer.added_tokens_decoder
    tokens, toktypes = [], []
    for i in range(vocab_size):
        if i not in reverse_vocab:
            tokens.append(f"[PAD{i}]")
            toktypes.append(UNUSED)
            continue
        token = reverse_vocab[i]
        if token in added_vocab:
            if not added_tokens_decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if added_tokens_decoder[i].special or does_token_look_special(token):
                toktypes.append(CONTROL)
            else:
                token = token.replace("\u2581", " ")
                toktypes.append(USER_DEFINED)
        else:
            toktypes.append(NORMAL)
        tokens.append(token)
    return tokens, toktypes


def write_gguf(path: Path, arch: str, model: str, pre: str, tok_dir: Path, tokens, toktypes,
               scores=None) -> None:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(path.stem)
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    if scores is not None:
        w.add_token_scores(scores)
    w.add_token_types(toktypes)
    special = gguf.SpecialVocab(tok_dir, load_merges=model == "gpt2", n_vocab=len(tokens))
    special.add_to_gguf(w, quiet=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def build_smollm(out: Path) -> None:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    trainer = trainers.BpeTrainer(vocab_size=360, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SMOLLM_CORPUS * 4, trainer)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>",
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = SMOLLM_TEMPLATE
    fast.save_pretrained(str(out))


FIXTURES = {
    # name: (HF directory (None: built under OUT), arch, model, pre)
    "stories260k": (STORIES, "llama", "llama", "default"),
    "chatml": (TOKENIZERS / "chatml", "qwen2", "gpt2", "qwen2"),
    "llama3": (TOKENIZERS / "llama3", "llama", "gpt2", "llama-bpe"),
    "smollm": (None, "llama", "gpt2", "smollm"),
}


# Beyond tests/fixtures/tokenizers' texts: non-ASCII numerals (\p{N} but not \d), digit runs.
EXTRA_TEXTS = ["ied 4 ½ months ①② ٣٤٥ Ⅻ", "3333 33.3 1,000,000 007"]


def texts() -> list[str]:
    out: list[str] = []
    for ref in sorted(TOKENIZERS.glob("*/reference.json")):
        for case in json.loads(ref.read_text(encoding="utf-8"))["cases"]:
            if case["text"] not in out:
                out.append(case["text"])
    return out + EXTRA_TEXTS


def cases_of(tok, all_texts: list[str]) -> list[dict]:
    specials = [t for t in ("bos_token", "eos_token", "unk_token", "pad_token") if getattr(tok, t) is not None]
    own = [" ".join(["special", *(str(getattr(tok, t)) for t in specials), "tokens"]),
           "".join(str(t) for t in tok.added_tokens_decoder.values()) + "glued",
           "a" + "".join(f" {t} x" for t in tok.added_tokens_decoder.values())]
    cases = []
    for text in all_texts + [t for t in own if t not in all_texts]:
        ids = tok(text)["input_ids"]
        plain = tok(text, add_special_tokens=False)["input_ids"]
        cases.append({
            "text": text,
            "ids": ids,
            "ids_plain": plain,
            "decoded": tok.decode(ids),
            "decoded_skip": tok.decode(ids, skip_special_tokens=True),
            "decoded_plain": tok.decode(plain),
        })
    return cases


def transformers_gguf(gguf_path: Path, cases: list[dict]) -> dict:
    """Whether transformers' own GGUF tokenizer agrees with the original (information only)."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(gguf_path, Path(tmp) / gguf_path.name)
        try:
            tok = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_path.name)
        except Exception as e:  # noqa: BLE001 -- recorded, not raised
            return {"loads": False, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
    differ = [c["text"] for c in cases
              if tok(c["text"])["input_ids"] != c["ids"]
              or tok(c["text"], add_special_tokens=False)["input_ids"] != c["ids_plain"]]
    decode_differ = [c["text"] for c in cases if tok.decode(c["ids"]) != c["decoded"]]
    return {"loads": True, "agrees": not differ and not decode_differ, "encode_differs": differ,
            "decode_differs": decode_differ}


def write_all(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    all_texts = texts()
    fixtures = []
    for name, (tok_dir, arch, model, pre) in FIXTURES.items():
        if tok_dir is None:
            tok_dir = out / f"{name}_hf"
            build_smollm(tok_dir)
        gguf_path = out / f"{name}.gguf"
        if model == "llama":
            vocab_size = json.loads((tok_dir / "config.json").read_text())["vocab_size"]
            tokens, scores, toktypes = vocab_sentencepiece(tok_dir / "source" / "tok512.model", tok_dir, vocab_size)
            write_gguf(gguf_path, arch, model, pre, tok_dir, tokens, toktypes, scores)
        else:
            tokens, toktypes = vocab_base(tok_dir)
            write_gguf(gguf_path, arch, model, pre, tok_dir, tokens, toktypes)
        tok = AutoTokenizer.from_pretrained(str(tok_dir))
        cases = cases_of(tok, all_texts)
        rng = random.Random(name)
        random_ids = [[rng.randrange(len(tok)) for _ in range(rng.randint(1, 24))] for _ in range(40)]
        fixtures.append({
            "name": name,
            "gguf": os.path.relpath(gguf_path, out),
            "hf_dir": os.path.relpath(tok_dir, REPO) if not tok_dir.is_relative_to(out)
            else f"tests/fixtures/gguf_tokenizers/{tok_dir.name}",
            "pre": pre,
            "class": type(tok).__name__,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "unk_token_id": tok.unk_token_id,
            "vocab_size": len(tok),
            "special_ids": sorted(i for i, t in tok.added_tokens_decoder.items() if t.special),
            "has_chat_template": tok.chat_template is not None,
            "transformers_gguf": transformers_gguf(gguf_path, cases),
            "cases": cases,
            "random_decode": [
                {"ids": ids, "decoded": tok.decode(ids), "decoded_skip": tok.decode(ids, skip_special_tokens=True)}
                for ids in random_ids
            ],
        })
    ref = {
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "gguf": getattr(gguf, "__version__", "?")},
        "fixtures": fixtures,
    }
    (out / "reference.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def differences(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two trees (missing on either side, or other bytes)."""
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    return sorted(str(p) for p in files_a ^ files_b) + sorted(
        str(p) for p in files_a & files_b if not filecmp.cmp(a / p, b / p, shallow=False)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare a fresh build with the committed fixtures")
    args = ap.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "gguf_tokenizers"
            write_all(fresh)
            diff = differences(fresh, OUT)
        if diff:
            print(f"{OUT.relative_to(REPO)}: differs from a fresh build: {', '.join(diff)}", file=sys.stderr)
            sys.exit(1)
        print(f"{OUT.relative_to(REPO)}: matches transformers {transformers.__version__}")
        return
    if OUT.exists():
        shutil.rmtree(OUT)
    write_all(OUT)
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT.relative_to(REPO)} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
