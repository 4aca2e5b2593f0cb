"""Tokenizers of the remote-code families (no tokenizer.json) and their original code's outputs,
for tests/remote_tokenizer_test.ts.

    python3 scripts/make_remote_tokenizer_reference.py          # writes tests/fixtures/remote_tokenizers/
    python3 scripts/make_remote_tokenizer_reference.py --check  # regenerates in a temp dir; exit 1 on drift

Each fixture directory holds what the family's hub checkpoint holds for its tokenizer: the vocabulary
file (sentencepiece `tokenizer.model`, or a tiktoken ranks file), a tokenizer_config.json in the
family's form (class name, `auto_map`, special tokens; no remote code). The expected outputs of all
fixtures are in remote_tokenizers/outputs.json (not reference.json: make_reference.py --check would
take a directory holding one for a stale model fixture).

- internlm: sentencepiece BPE with byte fallback and sentencepiece's default normalizer (nmt_nfkc
  charsmap, remove_extra_whitespaces), InternLMTokenizer.
- internlm2: sentencepiece BPE with byte fallback (add_dummy_prefix, no whitespace removal, identity
  normalization, as llama's), InternLM2's special tokens as user-defined pieces, InternLM2Tokenizer.
- baichuan2: the same without the dummy prefix (Baichuan's tokenizer.model), BaichuanTokenizer with
  add_bos_token false.
- chatglm3: sentencepiece BPE with byte fallback and remove_extra_whitespaces (sentencepiece's
  default), ChatGLMTokenizer with ChatGLM3's role tokens in additional_special_tokens.
- qwen: a tiny `qwen.tiktoken` (ranks of a byte-level BPE trained here), QWenTokenizer.
- glm4: a tiny tiktoken `tokenizer.model`, ChatGLM4Tokenizer with GLM-4's added tokens.

The sentencepiece models are trained here (num_threads=1, fixed corpus; the script checks that two
trainings give the same bytes) and the ranks files are made from a `tokenizers` BPE trained on one
thread, so --check regenerates every file and compares bytes.

outputs.json records, for each text, the ids with and without special tokens and the decodes, as
the ORIGINAL remote tokenizer code computes them. That code is not committed and not importable
here (it subclasses transformers 4's PreTrainedTokenizer); what it does is transcribed below from
the files named, on top of the same engines it uses:
- InternLM/Baichuan (tokenization_internlm2.py, tokenization_baichuan.py): the text is split on the
  added tokens (PreTrainedTokenizer.tokenize), each other segment is `sp_model.encode(segment)`,
  BOS in front when add_bos_token (default true), EOS after when add_eos_token.
  Decode: each run between special tokens is `sp_model.decode(run)`, special tokens are their text;
  InternLM 1/2 then apply transformers' clean_up_tokenization, as their convert_tokens_to_string
  does. (That transformers-4-era convert_tokens_to_string also puts a " " before a special token
  that follows text, InternLM 1/2's even before one at the start; not reproduced, not recorded.)
- ChatGLM2/3 (tokenization_chatglm.py, SPTokenizer): `sp_model.encode` per segment between the added
  tokens tokenizer_config.json names; [gMASK] sop in front; decode = SPTokenizer.decode
  (sentencepiece per run, its own special tokens [MASK] [gMASK] [sMASK] sop eop and ChatGLM3's role
  tokens as text, sentencepiece control pieces as nothing).
- QWen v1 (tokenization_qwen.py): tiktoken with PAT_STR, NFC first, all special tokens allowed,
  special ids from 151643; no BOS; decode with errors="replace", skip_special_tokens keeps ids
  below <|endoftext|>.
- GLM-4 (tokenization_chatglm.py, ChatGLM4Tokenizer): added tokens split out, tiktoken (GLM-4's
  pat_str, no special tokens) on the rest; [gMASK] <sop> in front; decode joins added tokens' text
  and the UTF-8 (errors="replace") of the byte runs between them.
"""

import argparse
import base64
import filecmp
import io
import json
import os
import random
import re
import shutil
import sys
import tempfile
import unicodedata
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the BPE trainer stays deterministic on one thread

import sentencepiece as spm  # noqa: E402
import tiktoken  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import models, pre_tokenizers, trainers  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "remote_tokenizers"

CORPUS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "One day, she saw a big red ball under the tree. \"Can I play with it?\" she asked her mom.",
    "The quick brown fox jumps over the lazy dog! It's 12:45 and we're at 3.14159 or 1,024.",
    "def main():\n    print('hello world')\n    return 0\n\nif __name__ == '__main__':\n    main()\n",
    "User: What is the capital of France?\nAssistant: The capital of France is Paris.",
    "Le café est très bon. Ça coûte 3 €. Naïve résumé, déjà vu. Straße, Ærøskøbing.",
    "日本語のテキストと中文的文本。東京は日本の首都です。北京是中国的首都。你好，世界！",
    "Emoji: 🙂 👍🏽 🇫🇷 ❤️ — dashes – and “quotes”.",
]

TEXTS = [
    "Hello world",
    "Once upon a time, there was a little girl named Lily.",
    " leading space",
    "trailing space ",
    "  two  spaces   and   three",
    "tabs\tand\nnewlines\n\n  indented",
    "日本語のテキスト、中文的文本。",
    "你好，世界！北京是中国的首都。",
    "Emoji: 🙂 👍🏽 🇫🇷 ❤️ and rare 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ",
    "Le café est très bon. Ça coûte 3 €.",
    "e\u0301 and \u00e9 (combining accent vs precomposed)",
    "3333 33.3 1,000,000 007 ½ ①② ٣٤٥",
    "isopropyl sop eop [MASK] [gMASK]sop",
    "",
    " ",
    "\n",
]

# What sentencepiece's nmt_nfkc rule changes: fullwidth forms, ligatures, compatibility characters,
# ideographic / no-break / zero-width spaces, tabs.
NFKC_TEXTS = ["ｆｕｌｌ ｗｉｄｔｈ １２３", "ﬁne ① ™ ㎏ ｶﾀｶﾅ", "a\u3000b\u00a0c x\u200by", "tab\there\r\n"]

# What transformers' clean_up_tokenization changes (InternLM 1/2 decode through it).
CLEAN_UP_TEXTS = ["Hello . What ? Yes ! a , b", "don 't I 'm it 's we 've you 're ' quoted ' x"]

# InternLM2 (tokenizer_config.json of internlm2-chat-7b, trimmed): ChatML tokens as user-defined pieces.
INTERNLM2_SPECIALS = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>",
                      "<|im_start|>"]
INTERNLM2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATGLM3_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n "
    "{{ message['content'] }}{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                 "<|assistant|>", "<|observation|>"]
GLM4_TEMPLATE = (
    "[gMASK]<sop>{% for item in messages %}<|{{ item['role'] }}|>\n{{ item['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

QWEN_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
GLM4_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
QWEN_SPECIAL_START_ID = 151643


def train_spm(rule: str = "identity", **opts) -> bytes:
    def once() -> bytes:
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS * 8), model_writer=out, vocab_size=560, model_type="bpe",
            byte_fallback=True, num_threads=1, character_coverage=1.0, split_digits=True,
            normalization_rule_name=rule, minloglevel=2, hard_vocab_limit=False, **opts)
        return out.getvalue()
    a, b = once(), once()
    if a != b:
        sys.exit("sentencepiece training is not deterministic here: commit the .model files instead")
    return a


def train_ranks() -> dict[bytes, int]:
    """A byte-level BPE trained here, as tiktoken ranks: the 256 bytes, then each merge's token."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=2, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    model = json.loads(tok.to_str())["model"]
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
    for merge in model["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        token = bytes(byte_decoder[c] for c in left + right)
        if token not in ranks:
            ranks[token] = len(ranks)
    return ranks


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_ranks(path: Path, ranks: dict[bytes, int]) -> None:
    lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in sorted(ranks.items(), key=lambda x: x[1])]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


def split_on(text: str, tokens: list[str]) -> list[tuple[str, bool]]:
    """Text → (segment, is_token) with the tokens matched leftmost, longest first."""
    if not tokens or not text:
        return [(text, False)] if text else []
    pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))
    out, pos = [], 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            out.append((text[pos:m.start()], False))
        out.append((m.group(), True))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], False))
    return out


def config_tokens(config: dict) -> tuple[dict[str, int | None], set[str]]:
    """Tokens tokenizer_config.json names (→ id when added_tokens_decoder gives one), special ones."""
    names: dict[str, int | None] = {}
    special: set[str] = set()
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if isinstance(config.get(key), str):
            names.setdefault(config[key], None)
            special.add(config[key])
    for i, v in config.get("added_tokens_decoder", {}).items():
        names[v["content"]] = int(i)
        if v.get("special"):
            special.add(v["content"])
    for t in config.get("additional_special_tokens", []):
        names.setdefault(t, None)
        special.add(t)
    return names, special


def clean_up_tokenization(out_string: str) -> str:
    """transformers' PreTrainedTokenizerBase.clean_up_tokenization."""
    return (out_string.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
            .replace(" 've", "'ve").replace(" 're", "'re"))


class SpmFamily:
    """InternLM/Baichuan (chatglm=False) or ChatGLM2/3 (chatglm=True), as their remote code runs."""

    def __init__(self, model_file: Path, config: dict, chatglm: bool, clean_up: bool = False):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.chatglm = chatglm
        self.clean_up = clean_up
        n = self.sp.get_piece_size()
        names, special = config_tokens(config)
        self.own: dict[str, int] = {}
        if chatglm:
            own = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]
            if "<|user|>" in json.dumps(config):
                own += ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
            self.own = {t: n + k for k, t in enumerate(own)}
        self.matched = {}  # token → id: what PreTrainedTokenizer.tokenize splits out
        for t, i in names.items():
            self.matched[t] = i if i is not None else self.own.get(t, self.sp.piece_to_id(t))
        controls = {i for i in range(n) if self.sp.is_control(i)}
        self.special_ids = controls | {self.matched[t] for t in special} | set(self.own.values())
        self.text_of = {i: t for t, i in self.own.items()}
        # A control piece tokenizer_config.json does not name is not split out by
        # PreTrainedTokenizer and decodes to nothing in sentencepiece; SPTokenizer.decode (ChatGLM)
        # decodes every control piece with sentencepiece.
        self.silent = controls if chatglm else {i for i in controls if self.sp.id_to_piece(i) not in names}
        if chatglm:
            self.prefix, self.suffix = [self.own["[gMASK]"], self.own["sop"]], []
        else:
            self.prefix = [self.sp.piece_to_id(config["bos_token"])] if config.get("add_bos_token", True) else []
            self.suffix = [self.sp.piece_to_id(config["eos_token"])] if config.get("add_eos_token", False) else []
        self.size = n + len(self.own)

    def encode(self, text: str, add_special: bool) -> list[int]:
        ids = []
        for seg, is_token in split_on(text, list(self.matched)):
            ids += [self.matched[seg]] if is_token else self.sp.encode(seg)
        return self.prefix + ids + self.suffix if add_special else ids

    def decode(self, ids: list[int], skip: bool) -> str:
        text, run = "", []
        for i in ids:
            if i in self.silent or (skip and i in self.special_ids):
                continue
            if i in self.special_ids:
                text += self.sp.decode(run) if run else ""
                run = []
                text += self.text_of.get(i) or self.sp.id_to_piece(i)
            else:
                run.append(i)
        text += self.sp.decode(run) if run else ""
        return clean_up_tokenization(text) if self.clean_up else text

    def random_ids(self, rng: random.Random) -> list[int]:
        # <unk> is left out: sentencepiece decodes it to " ⁇ ", the converted tokenizer to "<unk>".
        pool = [i for i in range(self.size) if i != self.sp.unk_id()]
        return [rng.choice(pool) for _ in range(rng.randint(1, 24))]


class QwenFamily:
    def __init__(self, ranks: dict[bytes, int]):
        self.specials = {t: QWEN_SPECIAL_START_ID + i for i, t in enumerate(QWEN_SPECIALS)}
        self.enc = tiktoken.Encoding("Qwen", pat_str=QWEN_PAT, mergeable_ranks=ranks, special_tokens=self.specials)
        self.special_ids = set(self.specials.values())
        self.ids = sorted(ranks.values()) + sorted(self.special_ids)[:5]

    def encode(self, text: str, add_special: bool) -> list[int]:
        return self.enc.encode(unicodedata.normalize("NFC", text), allowed_special="all", disallowed_special=())

    def decode(self, ids: list[int], skip: bool) -> str:
        if skip:
            ids = [i for i in ids if i < QWEN_SPECIAL_START_ID]
        return self.enc.decode(ids, errors="replace")

    def random_ids(self, rng: random.Random) -> list[int]:
        return [rng.choice(self.ids) for _ in range(rng.randint(1, 24))]


class Glm4Family:
    def __init__(self, ranks: dict[bytes, int], config: dict):
        self.enc = tiktoken.Encoding("glm4", pat_str=GLM4_PAT, mergeable_ranks=ranks, special_tokens={})
        self.decoder = {r: t for t, r in ranks.items()}
        self.added = {v["content"]: int(i) for i, v in config["added_tokens_decoder"].items()}
        self.added_text = {i: t for t, i in self.added.items()}
        self.special_ids = {int(i) for i, v in config["added_tokens_decoder"].items() if v["special"]}
        self.prefix = [self.added["[gMASK]"], self.added["<sop>"]]
        self.ids = sorted(ranks.values()) + sorted(self.added_text)

    def encode(self, text: str, add_special: bool) -> list[int]:
        ids = []
        for seg, is_token in split_on(text, list(self.added)):
            ids += [self.added[seg]] if is_token else self.enc.encode(seg)
        return self.prefix + ids if add_special else ids

    def decode(self, ids: list[int], skip: bool) -> str:
        text, temp = "", b""
        for i in ids:
            if skip and i in self.special_ids:
                continue
            if i in self.added_text:
                text += temp.decode("utf-8", errors="replace") + self.added_text[i]
                temp = b""
            else:
                temp += self.decoder[i]
        return text + temp.decode("utf-8", errors="replace")

    def random_ids(self, rng: random.Random) -> list[int]:
        return [rng.choice(self.ids) for _ in range(rng.randint(1, 24))]


def spm_config(cls: str, module: str, **extra) -> dict:
    return {"auto_map": {"AutoTokenizer": [f"{module}.{cls}", None]}, "tokenizer_class": cls,
            "clean_up_tokenization_spaces": False, **extra}


def build(out: Path) -> list[dict]:
    fixtures = []

    def record(name: str, fam, config: dict, extra_texts: list[str]) -> None:
        d = out / name
        (d / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n",
                                                 encoding="utf-8")
        cases = []
        for text in TEXTS + extra_texts:
            ids = fam.encode(text, True)
            plain = fam.encode(text, False)
            cases.append({"text": text, "ids": ids, "ids_plain": plain, "decoded": fam.decode(ids, False),
                          "decoded_skip": fam.decode(ids, True), "decoded_plain": fam.decode(plain, False)})
        rng = random.Random(name)
        randoms = []
        for _ in range(40):
            ids = fam.random_ids(rng)
            randoms.append({"ids": ids, "decoded": fam.decode(ids, False), "decoded_skip": fam.decode(ids, True)})
        fixtures.append({"name": name, "special_ids": sorted(fam.special_ids), "cases": cases,
                         "random_decode": randoms})

    # internlm2
    d = out / "internlm2"
    d.mkdir(parents=True)
    (d / "tokenizer.model").write_bytes(train_spm(add_dummy_prefix=True, remove_extra_whitespaces=False,
                                                  user_defined_symbols=INTERNLM2_SPECIALS))
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    decoder = {str(i): {"content": sp.id_to_piece(i), "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True}
               for i in [0, 1, 2] + [sp.piece_to_id(t) for t in INTERNLM2_SPECIALS]}
    config = spm_config("InternLM2Tokenizer", "tokenization_internlm2", added_tokens_decoder=decoder,
                        additional_special_tokens=["<|im_start|>", "<|im_end|>", "<|action_start|>",
                                                   "<|action_end|>", "<|interpreter|>", "<|plugin|>"],
                        bos_token="<s>", eos_token="</s>", pad_token="</s>", unk_token="<unk>",
                        chat_template=INTERNLM2_TEMPLATE, decode_with_prefix_space=False)
    record("internlm2", SpmFamily(d / "tokenizer.model", config, chatglm=False, clean_up=True), config,
           ["<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", "<s>x</s>", "a<|im_end|>b"]
           + CLEAN_UP_TEXTS)

    # internlm (v1): sentencepiece's default normalizer (nmt_nfkc charsmap, whitespace removal)
    d = out / "internlm"
    d.mkdir(parents=True)
    (d / "tokenizer.model").write_bytes(train_spm("nmt_nfkc"))
    config = spm_config("InternLMTokenizer", "tokenization_internlm", bos_token="<s>", eos_token="</s>",
                        unk_token="<unk>", pad_token="</s>", add_bos_token=True, add_eos_token=False)
    record("internlm", SpmFamily(d / "tokenizer.model", config, chatglm=False, clean_up=True), config,
           NFKC_TEXTS + CLEAN_UP_TEXTS)

    # baichuan2
    d = out / "baichuan2"
    d.mkdir(parents=True)
    (d / "tokenizer.model").write_bytes(train_spm(add_dummy_prefix=False, remove_extra_whitespaces=False))
    config = spm_config("BaichuanTokenizer", "tokenization_baichuan", add_bos_token=False, add_eos_token=False,
                        bos_token={"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": True,
                                   "rstrip": False, "single_word": True},
                        eos_token={"__type": "AddedToken", "content": "</s>", "lstrip": False, "normalized": True,
                                   "rstrip": False, "single_word": True},
                        pad_token="<unk>", unk_token="<unk>")
    record("baichuan2", SpmFamily(d / "tokenizer.model", {**config, "bos_token": "<s>", "eos_token": "</s>"},
                                  chatglm=False), config, ["<s>x</s>"] + CLEAN_UP_TEXTS)

    # chatglm3
    d = out / "chatglm3"
    d.mkdir(parents=True)
    (d / "tokenizer.model").write_bytes(train_spm(add_dummy_prefix=True, remove_extra_whitespaces=True))
    config = spm_config("ChatGLMTokenizer", "tokenization_chatglm", eos_token="</s>", pad_token="<unk>",
                        unk_token="<unk>", padding_side="left", remove_space=False, do_lower_case=False,
                        additional_special_tokens=["<|user|>", "<|observation|>", "<|assistant|>"],
                        chat_template=CHATGLM3_TEMPLATE)
    record("chatglm3", SpmFamily(d / "tokenizer.model", config, chatglm=True), config,
           ["<|user|>\n hello<|assistant|>", "<|system|> stays text", "</s>x<s>"])

    ranks = train_ranks()
    # qwen
    d = out / "qwen"
    d.mkdir(parents=True)
    write_ranks(d / "qwen.tiktoken", ranks)
    config = {"auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
              "tokenizer_class": "QWenTokenizer", "model_max_length": 8192}
    record("qwen", QwenFamily(ranks), config,
           ["<|im_start|>user\nHello<|im_end|>\n<|endoftext|>", "<|extra_0|><|extra_204|>"])

    # glm4
    d = out / "glm4"
    d.mkdir(parents=True)
    write_ranks(d / "tokenizer.model", ranks)
    n = len(ranks)
    decoder = {str(n + k): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True} for k, t in enumerate(GLM4_SPECIALS)}
    config = {"added_tokens_decoder": decoder, "additional_special_tokens": GLM4_SPECIALS[1:],
              "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
              "chat_template": GLM4_TEMPLATE, "clean_up_tokenization_spaces": False, "do_lower_case": False,
              "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "padding_side": "left",
              "remove_space": False, "tokenizer_class": "ChatGLM4Tokenizer"}
    record("glm4", Glm4Family(ranks, config), config,
           ["[gMASK]<sop><|user|>\nHello<|assistant|>", "<|endoftext|>"])
    return fixtures


def write_all(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fixtures = build(out)
    ref = {"versions": {"sentencepiece": spm.__version__, "tiktoken": tiktoken.__version__,
                        "tokenizers": tokenizers.__version__},
           "fixtures": fixtures}
    (out / "outputs.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def differences(a: Path, b: Path) -> list[str]:
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
            fresh = Path(tmp) / "remote_tokenizers"
            write_all(fresh)
            diff = differences(fresh, OUT)
        if diff:
            print(f"{OUT.relative_to(REPO)}: differs from a fresh build: {', '.join(diff)}", file=sys.stderr)
            sys.exit(1)
        print(f"{OUT.relative_to(REPO)}: matches a fresh build")
        return
    if OUT.exists():
        shutil.rmtree(OUT)
    write_all(OUT)
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT.relative_to(REPO)} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
