"""Our BpeTokenizer against the Hugging Face `tokenizers` package.

Trains small byte-level BPE tokenizers here (no download), saves their
tokenizer.json, and compares the ids of both implementations on varied text:
ASCII, punctuation, digits, whitespace runs, newlines, accented, CJK, Arabic,
Devanagari, emoji (with ZWJ and skin tones), special tokens, a long text, and
random strings drawn from all of those. Variants: ByteLevelBPETokenizer with
and without add_prefix_space; models.BPE + BpeTrainer with added tokens
(lstrip, rstrip, normalized); merges written as "a b" strings; ignore_merges;
an unknown token with and without fuse_unk.

Usage: tokenizer_parity.py DATA_TOOL WORK_DIR
Exit codes: 0 all match, 1 a mismatch, 77 `tokenizers` is missing (skipped).
"""

import inspect
import json
import os
import random
import subprocess
import sys

TOOL, WORK = sys.argv[1], sys.argv[2]

try:
    from tokenizers import AddedToken, ByteLevelBPETokenizer, Tokenizer, models, pre_tokenizers
    from tokenizers import trainers
except ImportError as error:
    print(f"SKIP: the tokenizers package is missing ({error}); run scripts/install-deps.sh")
    sys.exit(77)

os.makedirs(WORK, exist_ok=True)
failures = []

MULTILINGUAL = """The quick brown fox jumps over the lazy dog. It's 12:45, isn't it?
Naïve café owners déjà vu — “quoted” and ‘single’ «guillemets» ¿Qué? ¡Olé!
日本語のテキストと中文字符，还有한국어 텍스트。 Ελληνικά κείμενα. Русский текст.
مرحبا بالعالم نص عربي ١٢٣ — नमस्ते दुनिया १२३ — ไทย ภาษา
Emoji 😀 👍🏽 👨‍👩‍👧 ❤️ 🇫🇷 and symbols ©®™ ∑∫√ ≤≥ ½ ¾ ² ³ Ⅻ
	Tabs	and  double  spaces,   triple   spaces
and\u00a0no-break\u2003em\u3000ideographic spaces.
"""

# Training text: some of Python's own sources plus the multilingual lines.
CORPUS = "\n".join(inspect.getsource(m) for m in (json.decoder, json.encoder, random)) + (
    MULTILINGUAL * 20
)

TEXTS = [
    "",
    " ",
    "   ",
    "\n",
    "Hello, world!",
    "Hello world",
    " Hello world",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nend\r\nwindows",
    "don't you'll we've I'M they'RE it's 'tis '' ''s",
    "numbers 12345 3.14159 1,000,000 007 x2 2x",
    "def f(x):\n    return x ** 2  # square\n\n\n",
    "a    b\n  \n c \t d",
    "\u00a0nbsp\u2003em\u3000ideo \u2028line\u2029para \u0085nel",
    "Ω≈ç√∫ ǅ ǈ titlecase e\u0301 combining ﬁ ligature",
    "<|endoftext|>",
    "<|endoftext|>start and end<|endoftext|>",
    "x<|endoftext|><|endoftext|>y <|endoftext|> z",
    "a <mask> b  <mask>c<mask>",
    "x [R]   y [R]\nz",
    "xyzxyz abcxyz xy z",
    "<|endoftext",
    MULTILINGUAL,
    CORPUS[:20000],
]

rng = random.Random(1234)
POOL = list("aAzZ09 _-'.,;:!?()[]{}<>\"\\/\t\n\r") + [
    "é", "ß", "ñ", "日", "本", "中", "한", "ع", "१", "٣", "Ⅻ", "½", "😀", "👍", "🏽",
    "\u200d", "\u0301", "\u00a0", "\u3000", "\u2028", "<|endoftext|>", "<mask>", "[R]", "xyz",
    "'s", "'ll", " ", "  ", "\u0085", "\U0001F1EB",
]
for _ in range(300):
    TEXTS.append("".join(rng.choice(POOL) for _ in range(rng.randint(1, 40))))
# Long words without spaces (minified code, base64): many merges per word.
TEXTS.append("".join(rng.choice("abcdefghij") for _ in range(50000)))
TEXTS.append("=" * 20000 + "x" * 5000)


def check(what, ok, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}{'' if ok else ': ' + detail}")
    if not ok:
        failures.append(what)


def ours(tokenizer_path):
    texts_path = os.path.join(WORK, "texts.json")
    with open(texts_path, "w", encoding="utf-8") as f:
        json.dump(TEXTS, f, ensure_ascii=False)
    result = subprocess.run([TOOL, "encode", tokenizer_path, texts_path], capture_output=True,
                            text=True)
    if result.returncode != 0:
        print(f"FAIL: data_tool encode {tokenizer_path}: {result.stderr}")
        sys.exit(1)
    return json.loads(result.stdout)


def compare(name, json_text):
    path = os.path.join(WORK, f"{name}.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(json_text)
    reference = Tokenizer.from_file(path)
    got = ours(path)
    mismatches = []
    for text, ids in zip(TEXTS, got["ids"]):
        expected = reference.encode(text).ids
        if ids != expected:
            mismatches.append((text, expected, ids))
    detail = ""
    if mismatches:
        text, expected, ids = mismatches[0]
        first = next((i for i, (a, b) in enumerate(zip(expected, ids)) if a != b),
                     min(len(expected), len(ids)))
        detail = (f"{len(mismatches)} of {len(TEXTS)} texts differ; first {text[:80]!r}: "
                  f"tokens from {first}: expected {expected[first:first + 8]} "
                  f"({[reference.id_to_token(i) for i in expected[first:first + 8]]}), "
                  f"got {ids[first:first + 8]}")
    check(f"{name}: ids on {len(TEXTS)} texts", not mismatches, detail)
    check(f"{name}: vocab_size", got["vocab_size"] == reference.get_vocab_size(),
          f"{got['vocab_size']} vs {reference.get_vocab_size()}")
    eod = reference.token_to_id("<|endoftext|>")
    check(f"{name}: eod_id", got["eod_id"] == (eod if eod is not None else -1),
          f"{got['eod_id']} vs {eod}")


def edited(json_text, edit):
    data = json.loads(json_text)
    edit(data)
    return json.dumps(data, ensure_ascii=False)


print("ByteLevelBPETokenizer")
for prefix_space in (False, True):
    tok = ByteLevelBPETokenizer(add_prefix_space=prefix_space)
    tok.train_from_iterator([CORPUS], vocab_size=1200, min_frequency=2,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    compare(f"byte_level_prefix_{prefix_space}", tok._tokenizer.to_str())

print("models.BPE + BpeTrainer with added tokens")
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<|endoftext|>", "<pad>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                              show_progress=False)
tok.train_from_iterator([CORPUS], trainer=trainer)
tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
tok.add_tokens([AddedToken("[R]", rstrip=True, normalized=False), AddedToken("xyz")])
bpe_json = tok.to_str()
compare("bpe_added_tokens", bpe_json)


def merges_as_strings(data):
    data["model"]["merges"] = [m if isinstance(m, str) else " ".join(m)
                               for m in data["model"]["merges"]]


def ignore_merges(data):
    data["model"]["ignore_merges"] = True


compare("bpe_string_merges", edited(bpe_json, merges_as_strings))
compare("bpe_ignore_merges", edited(bpe_json, ignore_merges))

print("unknown token (no byte alphabet: non-ASCII bytes are unknown)")
ascii_corpus = CORPUS.encode("ascii", "ignore").decode()
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<|endoftext|>"],
                              show_progress=False)
tok.train_from_iterator([ascii_corpus], trainer=trainer)
unk_json = tok.to_str()
compare("bpe_unk", unk_json)
compare("bpe_fuse_unk", edited(unk_json, lambda d: d["model"].update(fuse_unk=True)))
compare("bpe_no_unk_drops", edited(unk_json, lambda d: d["model"].update(unk_token=None)))

if failures:
    print(f"FAILED: {len(failures)} check(s): {failures}")
    sys.exit(1)
print("all checks passed")
