"""Tokenizer fixtures and transformers' outputs on them, for tests/tokenizer_test.ts.

    python3 scripts/make_tokenizer_reference.py          # writes tests/fixtures/tokenizers/
    python3 scripts/make_tokenizer_reference.py --check  # regenerates in a temp dir; exit 1 on drift

Fixtures (each a directory under tests/fixtures/tokenizers/ with a reference.json; stories260k's
tokenizer files stay in models/stories260k and only its reference.json lives here):

- stories260k: the embedded model's SentencePiece-derived Llama tokenizer (512 pieces, byte
  fallback pieces <0x00>..<0xFF>, Metaspace prepend "first", BOS post-processor). No template.
- llama_legacy: the same vocabulary serialized the way Llama-2 hub repos are (a Prepend/Replace
  normalizer and no pre-tokenizer; tokenizer_class LlamaTokenizerFast, legacy: false). transformers
  5 rebuilds LlamaTokenizer's pipeline from the class and keeps only the vocabulary, merges and
  post-processor of tokenizer.json, so "a <s>b" encodes differently than tokenizer.json says. Its
  tokenizer_config.json also says add_bos_token: false / add_eos_token: true, which transformers 5
  ignores when tokenizer.json exists. Templates: the legacy list form (Llama-2 [INST] as "default",
  a short "plain" one reading an extra variable).
- chatml: a byte-level BPE trained here on an inline corpus, saved by Qwen2Tokenizer (NFC, Qwen2
  split regex, ByteLevel), special <|endoftext|> <|im_start|> <|im_end|>, non-special added
  <tool_call> </tool_call>, eos <|im_end|>, no bos. Qwen2.5's ChatML template with tools, written
  by save_pretrained to chat_template.jinja, plus additional_chat_templates/plain.jinja.
- llama3: a byte-level BPE with Llama-3's split regex and ignore_merges, a Sequence[ByteLevel,
  TemplateProcessing] post-processor adding <|begin_of_text|>, tokenizer_class
  PreTrainedTokenizerFast, Llama-3-Instruct's template as a string in tokenizer_config.json. Its
  eos <|eot_id|> is not special in tokenizer.json and tokenizer_config.json names a special token
  tokenizer.json lacks (<|reserved_0|>): transformers marks the first special and adds the second.

reference.json: for every text, tokenizer(text) and tokenizer(text, add_special_tokens=False) ids
and decode() of both with and without skip_special_tokens; decode() of random id sequences; for
every conversation, apply_chat_template(..., tokenize=False) or the error message it raised.
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

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AddedToken, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Tokenizer  # noqa: E402

transformers.logging.set_verbosity_error()  # the llama3 fixture's BPE clean-up warning is the point

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "tokenizers"
STORIES = REPO / "models" / "stories260k"

QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
LLAMA3_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

CORPUS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "One day, she saw a big red ball under the tree. \"Can I play with it?\" she asked her mom.",
    "The quick brown fox jumps over the lazy dog! It's 12:45 and we're at 3.14159 or 1,024.",
    "def main():\n    print('hello world')\n    return 0\n\nif __name__ == '__main__':\n    main()\n",
    "User: What is the capital of France?\nAssistant: The capital of France is Paris.",
    "Le café est très bon. Ça coûte 3 €. Naïve résumé, déjà vu. Straße, Ærøskøbing.",
    "日本語のテキストと中文的文本。東京は日本の首都です。",
    "Emoji: 🙂 👍🏽 🇫🇷 ❤️ — dashes – and “quotes”.",
]

# Qwen2.5-Instruct's template (tools, tool calls, tool responses).
CHATML_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Llama-2-chat's template (raise_exception on roles that do not alternate, bos/eos tokens).
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

# Llama-3-Instruct's template (bos_token, | trim).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# A named template that reads a caller-supplied variable.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}{{ prompt_prefix | default('assistant:') }}{% endif %}"
)

TEXTS = [
    "",
    " ",
    "Hello world",
    "Once upon a time, there was a little girl named Lily. She loved to play outside.",
    "  leading spaces,   runs   of spaces and a trailing one ",
    "line one\nline two\n\n\tindented line\r\nwindows line",
    "Punctuation: (a), [b]; {c}! 'single' \"double\" -- ok? 3.14 + 42 = 45.14 ...",
    "don't can't I'm we're it's they've you'll he'd ,.!? ' s",
    "café naïve résumé Ærøskøbing Straße",
    "e\u0301 and \u00e9: decomposed and composed",
    "日本語のテキスト 中文 한국어",
    "emoji 🙂👍🏽 and flags 🇫🇷 ❤️",
    "1234567890 12 345",
    "\ufeffa byte order mark first",
]

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello! Who are you?"}],
    "system_multi_turn": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 日本語 for “Japanese” 🙂?"},
    ],
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name, e.g. Zürich"}},
                "required": ["city"],
            },
        },
    }
]

TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}],
    },
    {"role": "tool", "content": '{"temperature_c": 21, "sky": "sunny"}'},
]


def train_byte_level(split_regex: str, normalizer, vocab_size: int) -> tuple[dict, list]:
    """A byte-level BPE on CORPUS: (vocab, merges)."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def build_llama_legacy(out: Path) -> None:
    out.mkdir(parents=True)
    tj = json.loads((STORIES / "tokenizer.json").read_text(encoding="utf-8"))
    tj["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    tj["pre_tokenizer"] = None
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    def tok(content: str) -> dict:
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
                "rstrip": False, "single_word": False, "special": True}

    config = {
        "add_bos_token": False,
        "add_eos_token": True,
        "added_tokens_decoder": {str(i): {k: v for k, v in tok(c).items() if k != "__type"}
                                 for i, c in enumerate(["<unk>", "<s>", "</s>"])},
        "bos_token": tok("<s>"),
        "chat_template": [
            {"name": "default", "template": LLAMA2_TEMPLATE},
            {"name": "plain", "template": PLAIN_TEMPLATE},
        ],
        "clean_up_tokenization_spaces": False,
        "eos_token": tok("</s>"),
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizerFast",
        "unk_token": tok("<unk>"),
        "use_default_system_prompt": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def build_chatml(out: Path) -> None:
    vocab, merges = train_byte_level(QWEN2_SPLIT, normalizers.NFC(), 384)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                         eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens([AddedToken(t, special=True, normalized=False)
                    for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]], special_tokens=True)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ["<tool_call>", "</tool_call>"]])
    tok.chat_template = {"default": CHATML_TEMPLATE, "plain": PLAIN_TEMPLATE}
    tok.save_pretrained(str(out))


def build_llama3(out: Path) -> None:
    vocab, merges = train_byte_level(LLAMA3_SPLIT, None, 320)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in specials])
    bos_id = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                special_tokens=[("<|begin_of_text|>", bos_id)],
            ),
        ]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                  eos_token="<|eot_id|>", clean_up_tokenization_spaces=True)
    tok.save_pretrained(str(out))
    # Hub Llama-3 repos keep the template as a string in tokenizer_config.json (the pre-v5 form).
    # The config also names tokens that tokenizer.json lacks or does not mark special: transformers
    # adds <|reserved_0|> (next free id) and marks <|eot_id|> (eos_token) special.
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = LLAMA3_TEMPLATE
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["additional_special_tokens"] = ["<|reserved_0|>"]
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    for token in tj["added_tokens"]:
        if token["content"] == "<|eot_id|>":
            token["special"] = False
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def chat_case(tok, name: str, messages: list, **kwargs) -> dict:
    case = {"name": name, "messages": messages}
    for key in ("add_generation_prompt", "template_name", "tools", "extra"):
        if key in kwargs:
            case[key] = kwargs[key]
    call = {"add_generation_prompt": kwargs.get("add_generation_prompt", False), **kwargs.get("extra", {})}
    if "template_name" in kwargs:
        call["chat_template"] = kwargs["template_name"]
    if "tools" in kwargs:
        call["tools"] = kwargs["tools"]
    try:
        case["text"] = tok.apply_chat_template(messages, tokenize=False, **call)
    except Exception as e:  # the template's raise_exception: the message is the reference
        case["error"] = str(e)
    return case


def chat_cases(name: str, tok) -> list:
    if tok.chat_template is None:
        return []
    cases = []
    for conv_name, messages in CONVERSATIONS.items():
        for gen in (False, True):
            cases.append(chat_case(tok, f"{conv_name} gen={gen}", messages, add_generation_prompt=gen))
    if name == "llama_legacy":
        cases.append(chat_case(tok, "roles do not alternate", [{"role": "user", "content": "a"}] * 2))
    if name == "chatml":
        cases.append(chat_case(tok, "tools", TOOL_CONVERSATION, tools=TOOLS, add_generation_prompt=True))
    if isinstance(tok.chat_template, dict) and "plain" in tok.chat_template:
        messages = CONVERSATIONS["system_multi_turn"]
        cases.append(chat_case(tok, "plain", messages, template_name="plain", add_generation_prompt=True))
        cases.append(chat_case(tok, "plain extra", messages, template_name="plain", add_generation_prompt=True,
                               extra={"prompt_prefix": "bot>"}))
    return cases


def reference(name: str, tok_dir: Path) -> dict:
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    specials = [t for t in ("bos_token", "eos_token", "unk_token", "pad_token") if getattr(tok, t) is not None]
    texts = TEXTS + [
        " ".join(["special", *(str(getattr(tok, t)) for t in specials), "tokens"]),
        "".join(str(t) for t in tok.added_tokens_decoder.values()) + "glued",
    ]
    cases = []
    for text in texts:
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
    rng = random.Random(name)
    random_ids = [[rng.randrange(len(tok)) for _ in range(rng.randint(1, 24))] for _ in range(40)]
    return {
        "name": name,
        "dir": os.path.relpath(tok_dir, REPO) if tok_dir == STORIES else f"tests/fixtures/tokenizers/{name}",
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "class": type(tok).__name__,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "unk_token_id": tok.unk_token_id,
        "vocab_size": len(tok),
        "special_ids": sorted(i for i, t in tok.added_tokens_decoder.items() if t.special),
        "cases": cases,
        # Arbitrary ids, as a model may generate them: invalid UTF-8 byte runs, specials anywhere.
        "random_decode": [
            {"ids": ids, "decoded": tok.decode(ids), "decoded_skip": tok.decode(ids, skip_special_tokens=True)}
            for ids in random_ids
        ],
        "chat": chat_cases(name, tok),
    }


def write_all(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, build in (("llama_legacy", build_llama_legacy), ("chatml", build_chatml), ("llama3", build_llama3)):
        build(out / name)
    (out / "stories260k").mkdir()
    for name in ("stories260k", "llama_legacy", "chatml", "llama3"):
        tok_dir = STORIES if name == "stories260k" else out / name
        ref = reference(name, tok_dir)
        (out / name / "reference.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n",
                                                   encoding="utf-8")


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
            fresh = Path(tmp) / "tokenizers"
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
