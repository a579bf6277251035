#!/usr/bin/env python3
"""Make tests/data/tokenizer_extra_cases.json: awkward texts and the ids Hugging
Face's slow CLIPTokenizer gives them, for tests/unit/test_tokenizer.c.

The shared tokenizer_cases.json covers everyday prompts; these cover the corners
of the text path (control and format characters, CJK spacing, NFC, Python's
full lowercasing and final sigma, the regex's IGNORECASE, SDXL's "!" pad token
splitting the text, long words for BPE) plus random strings. Only texts and ids
are written; the vocabulary stays in the shared tree.

Needs the slow tokenizer, i.e. transformers 4.x (5.x only has the fast one) and
no ftfy, as diffusers runs it:
    python3 -m venv --system-site-packages /tmp/tok-venv
    /tmp/tok-venv/bin/pip install --no-deps transformers==4.46.3 tokenizers==0.20.3 \
        huggingface-hub==0.26.5
    /tmp/tok-venv/bin/python tools/gen_tokenizer_cases.py ../shared/reference
"""
import json
import random
import sys

import transformers
from transformers import CLIPTokenizer

transformers.logging.set_verbosity_error()

FIXED = [
    "cat!!! wow!", "hello! world", "a!b", "!", "!!!", "x'<|endoftext|>y", "<|ENDOFTEXT|>",
    "foo<|startoftext|>bar", "<<|endoftext|>>", "<|startoftext|>only", "<|endoftext|",
    "it'\u017f", "<|\u017ftartoftext|>", "\u039f\u0394\u039f\u03a3 \u039f\u0394\u039f\u03a3.",
    "\u1f48\u0394\u03a5\u03a3\u03a3\u0395\u038e\u03a3", "\u03a3", "a\u03a3", "a\u03a3b", "a'\u03a3",
    "\u00aa\u03a3", "\u0130stanbul \u0130", "\u4e2d\u6587\u5b57\u7b26 mixed \u65e5\u672c\u8a9e\u30c6\u30ad\u30b9\u30c8",
    "a\u200bb", "a\u2028b", "a\u2029b", "a\x01b\x1fc\ufffd", "e\u0301 cafe\u0301 \u1e9b\u0323",
    "\u00a0x\u3000y\u2009z", "don'T WE'LL", "\u01c5", "\ufb01", "\u00df \u1e9e", "'S", "a\x85b",
    "a\x1cb", "a\u0345b", "\u03b1\u0345", "TAB\there\r\nCRLF\x0bvt\x0cff",
    "  leading and trailing  ", "emoji \U0001f469\u200d\U0001f469\u200d\U0001f467 \U0001f3f3\ufe0f\u200d\U0001f308",
    "\u216b \u217b \u2460 \u00bd \u0663", "\U0001f600" * 50, "abc123def", "'re'll've'd'm's't",
    "''s", "\ufeffbom", "tag\U000e0041chars", "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "\u0939\u093f\u0928\u094d\u0926\u0940",
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22", "\u24b6\u24d1", "\u0149 \u01f0 \u0390",
    "\u00abquotes\u00bb \u201eGerman\u201c \u2018single\u2019 \u201cdouble\u201d",
    "C++ & C# / F#", "100% $5 \u20ac10 \u00a5", "a.b.c", "e-mail@example.com",
    "http://x.y/z?q=1", "(((((deep)))))", "[a:b:0.5]", "\\backslash", "\x7f del",
    "\u00ad soft\u00adhyphen", "\uffff nonchar", "\U0010fffd", "\ue000 private",
    "\u3400\U00020000\uf900\U0002f800", "\u2f00 radical", "\uff21\uff22\uff23 fullwidth",
    "x" * 1000, "ab" * 400, "supercalifragilisticexpialidocious" * 8,
]

POOL = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "          \t\n!!!'''...,,,;:-_()[]{}<>|/\\@#$%^&*+=~`\"?"
    "\u00e9\u00e8\u00ea\u00eb\u00fc\u00f6\u00e4\u00df\u00e7\u00f1\u00c9\u00d6\u0130\u017f"
    "\u0301\u0308\u0327\u0345\u200b\u200d\u00a0\u3000\u2028"
    "\u03a3\u03c3\u03b1\u0391\u0414\u0434\u05d0\u0627\u0915\u0e01"
    "\u4e00\u4e2d\u3042\u30a2\uac00\U00020001"
    "\U0001f600\U0001f431\u2764\ufe0f\u00bd\u2460\u216b\u0663\ufffd\x01\x7f\x85"
)


def random_texts(rng, n):
    out = []
    for _ in range(n):
        k = rng.randint(0, 90)
        s = "".join(rng.choice(POOL) for _ in range(k))
        if rng.random() < 0.2:
            s += rng.choice(["<|endoftext|>", "<|startoftext|>", "'s", "!"])
        out.append(s)
    return out


def long_words(rng, n):
    letters = "abcdefghijklmnopqrstuvwxyz\u00e9\u00f6\u03b1\u0434"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(50, 400))) for _ in range(n)]


def main():
    ref = sys.argv[1] if len(sys.argv) > 1 else "../shared/reference"
    out = sys.argv[2] if len(sys.argv) > 2 else "tests/data/tokenizer_extra_cases.json"
    t1 = CLIPTokenizer.from_pretrained(ref + "/tiny-sd15/diffusers/tokenizer")
    t2 = CLIPTokenizer.from_pretrained(ref + "/tiny-sdxl/diffusers/tokenizer_2")
    assert t1.fix_text is None, "uninstall ftfy: diffusers' default path has none"
    rng = random.Random(1234)
    texts = FIXED + random_texts(rng, 300) + long_words(rng, 20)
    cases = []
    for s in texts:
        assert "\x00" not in s  # a C string cannot hold it
        cases.append({"text": s, "ids": t1(s).input_ids, "ids_2": t2(s).input_ids})
    doc = {
        "generator": "tools/gen_tokenizer_cases.py, transformers %s slow CLIPTokenizer, no ftfy"
        % transformers.__version__,
        "ids": "untruncated ids of tiny-sd15/diffusers/tokenizer (pad <|endoftext|>)",
        "ids_2": "untruncated ids of tiny-sdxl/diffusers/tokenizer_2 (pad '!', id 0)",
        "cases": cases,
    }
    # One case per line: small, and a diff shows which case changed.
    head = {k: v for k, v in doc.items() if k != "cases"}
    lines = [json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases]
    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "cases": [\n')
        f.write(",\n".join(lines) + "\n]}\n")
    print("wrote %d cases to %s" % (len(cases), out))


if __name__ == "__main__":
    main()
