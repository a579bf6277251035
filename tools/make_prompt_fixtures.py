#!/usr/bin/env python3
"""Make tests/data/prompt/: what AUTOMATIC1111 does with prompts, for test_prompt.c.

A1111 (stable-diffusion-webui) cannot be installed as a library, so this script
re-implements the three pieces of it that vramfit reproduces, from A1111's
published algorithm (modules/prompt_parser.py, sd_hijack_clip.py,
sd_hijack_open_clip.py, sd_emphasis.py, sd_samplers_cfg_denoiser.py):

  parse_prompt_attention  text -> [[fragment, weight], ...]: the regular
                          expression re_attention, bracket stacks, BREAK, merge
  tokenize_line           fragments -> 77-token chunks: 75 tokens each, the
                          comma backtrack (comma_padding_backtrack = 20), BREAK,
                          id_end padding then (OpenCLIP, id_pad = 0) everything
                          after the first EOS set to the pad id
  emphasis "Original"     z * multipliers, then z * (old mean / new mean)
  pad_cond_uncond         the shorter of cond / uncond gets encodings of ""

Text encoders are transformers' CLIPTextModel(WithProjection) loaded from the
shared tiny reference models, run on each chunk as A1111 does (SD1.5:
last_hidden_state; SDXL: hidden_states[-2] of both, concatenated, pooled
text_embeds of the first chunk). Fragments are tokenized with the model's own
Hugging Face tokenizers (A1111 uses open_clip's for OpenCLIP-G; they agree on
these prompts). transformers 5 has only the fast CLIP tokenizer, which splits
CJK text differently from the slow one vramfit reproduces (and diffusers runs),
so the window cases keep to scripts where both agree.

Outputs (no vocabulary is written, only texts, ids and numbers):
  tests/data/prompt/a1111_cases.json         parse cases, parse errors, windows
  tests/data/prompt/encode_cases.safetensors embeddings of the encode cases
                                             (listed in a1111_cases.json)

    python3 tools/make_prompt_fixtures.py ../shared/reference
"""
import json
import os
import re
import sys

import torch
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

# ---- parse_prompt_attention -------------------------------------------------------

ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|
\(|\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|]|
[^\\()\[\]:]+|
:
""", re.X)
BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse(text):
    res, rounds, squares = [], [], []

    def mul(start, m):
        for p in range(start, len(res)):
            res[p][1] *= m

    for m in ATTENTION.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            res.append([tok[1:], 1.0])
        elif tok == "(":
            rounds.append(len(res))
        elif tok == "[":
            squares.append(len(res))
        elif weight is not None and rounds:
            mul(rounds.pop(), float(weight))
        elif tok == ")" and rounds:
            mul(rounds.pop(), 1.1)
        elif tok == "]" and squares:
            mul(squares.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(re.split(BREAK, tok)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for pos in rounds:
        mul(pos, 1.1)
    for pos in squares:
        mul(pos, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res

# ---- tokenize_line ----------------------------------------------------------------------


def tokenize_line(tok, line, plain=False, backtrack=20):
    parsed = [[line, 1.0]] if plain else parse(line)
    tokenized = [tok(t, add_special_tokens=False)["input_ids"] for t, _ in parsed]
    id_start, id_end = tok.bos_token_id, tok.eos_token_id
    id_pad = tok.pad_token_id  # A1111: id_end for CLIP-L, 0 for OpenCLIP-G
    comma = tok.get_vocab().get(",</w>")
    chunks, state = [], {"tokens": [], "mults": [], "count": 0, "last_comma": -1}

    def next_chunk(is_last=False):
        c = state
        c["count"] += len(c["tokens"]) if is_last else 75
        add = 75 - len(c["tokens"])
        toks = [id_start] + c["tokens"] + [id_end] * add + [id_end]
        mults = [1.0] + c["mults"] + [1.0] * add + [1.0]
        if id_end != id_pad:  # process_tokens: pad everything after the first EOS
            k = toks.index(id_end)
            toks = toks[:k + 1] + [id_pad] * (len(toks) - k - 1)
        chunks.append((toks, mults))
        c["tokens"], c["mults"], c["last_comma"] = [], [], -1

    for ids, (text, weight) in zip(tokenized, parsed):
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        for token in ids:
            c = state
            if token == comma:
                c["last_comma"] = len(c["tokens"])
            elif (backtrack and len(c["tokens"]) == 75 and c["last_comma"] != -1
                  and len(c["tokens"]) - c["last_comma"] <= backtrack):
                at = c["last_comma"] + 1
                rt, rm = c["tokens"][at:], c["mults"][at:]
                c["tokens"], c["mults"] = c["tokens"][:at], c["mults"][:at]
                next_chunk()
                c["tokens"], c["mults"] = rt, rm
            if len(c["tokens"]) == 75:
                next_chunk()
            c["tokens"].append(token)
            c["mults"].append(weight)
    if state["tokens"] or not chunks:
        next_chunk(is_last=True)
    return chunks, state["count"]

# ---- encoders -----------------------------------------------------------------------------


def emphasis(z, mults):
    # z (1,77,D) float32, mults (77) as A1111's torch.asarray (float32)
    m = torch.asarray(mults, dtype=torch.float32)
    old = z.mean()
    z = z * m.reshape(m.shape + (1,)).expand(z.shape)
    new = z.mean()
    return z * (old / new)


class Encoder:
    def __init__(self, folder, sub, tok_sub, projection, layer):
        cls = CLIPTextModelWithProjection if projection else CLIPTextModel
        self.model = cls.from_pretrained(os.path.join(folder, sub), torch_dtype=torch.float32).eval()
        self.tok = CLIPTokenizer.from_pretrained(os.path.join(folder, tok_sub))
        self.projection, self.layer = projection, layer

    def chunk(self, ids, mults):
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        z = out.last_hidden_state if self.layer == "last" else out.hidden_states[-2]
        pooled = out.text_embeds[0] if self.projection else None
        return emphasis(z, mults)[0], pooled

    def encode(self, text, plain=False):
        chunks, _ = tokenize_line(self.tok, text, plain)
        outs = [self.chunk(t, m) for t, m in chunks]
        return [z for z, _ in outs], outs[0][1]


def encode_case(encoders, prompt, negative):
    """A1111's cond and uncond for one prompt pair, padded to the same length."""
    conds, pooled = [], []
    for text in (prompt, negative):
        per = [e.encode(text) for e in encoders]
        n = max(len(zs) for zs, _ in per)
        empty = [e.encode("")[0][0] for e in encoders]
        cols = []
        for (zs, _), emp in zip(per, empty):
            cols.append(torch.cat(zs + [emp] * (n - len(zs)), 0))
        conds.append(torch.cat(cols, 1))
        pooled.append(per[-1][1])
    n = max(c.shape[0] for c in conds)
    empty_row = torch.cat([e.encode("")[0][0] for e in encoders], 1)
    for i, c in enumerate(conds):
        reps = (n - c.shape[0]) // 77
        conds[i] = torch.cat([c] + [empty_row] * reps, 0)
    return conds, pooled

# ---- cases --------------------------------------------------------------------------------------

PARSE = [
    "normal text", "an (important) word", "(unbalanced", "\\(literal\\]", "(unnecessary)(parens)",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", "", "()", "[]", "(:1.2)", "((a)", "a))", "[[a]",
    "[a)", "(a]", "([a])", "[(a:2)]", "(a [b] c:1.5)", "(a : 1.5 )", "(a:+1.5)", "(a:-1)", "(a:.5)", "(a:5.)",
    "(a:0)", "a :1.2) b", ":1.2)", "a:b", "a:", "::", "a\\b", "\\\\", "trailing \\", "\\", "\\x\\(y\\)",
    "\\[a\\]\\\\(b)", "a BREAK b", "aBREAK b", "a BREAKb", "BREAK", "BREAK BREAK", "a BREAK BREAK b",
    "a,BREAK,b", "a\u3000BREAK\u2003b", "\u00e9BREAK x", "x BREAK\u00e9", "(a BREAK b)", "[BREAK]",
    "(x)BREAK(y)", "a\tBREAK\nb", "BREAKING news", "(caf\u00e9:1.5), \u65e5\u672c\u8a9e [\u30c6\u30b9\u30c8]",
    "((((((((((deep))))))))))", "[[[[[shallow]]]]]", "(a(b(c:2):3):4)", "(a:1.1)(b)", "[a][b]",
    "(a:1e3)", "(a:1,5)", "(a: 2 )x", "( a )", "(a\\):2)", "(a:2\\)", "\\(a:2)", "(a\\:2)",
    "a (b:1.21) (c) ((d))", "(((a)))(((b)))", "[a:b:0.5]", "{a|b}", "a <lora:x:0.5> b",
]
PARSE_ERRORS = ["(a:.)", "(a:1.2.3)", "(a:..)", "(a:+.)", "x (y:1..2) z"]

LONG_COMMAS = ("masterpiece, best quality, a (red:1.2) fox sitting in a [snowy] forest at dawn, soft light, "
               "detailed fur, ") * 5
LONG_PLAIN = " ".join(["word%d" % (i % 10) for i in range(160)])
WINDOWS = [
    ("sd15", "a photo of a cat wearing a tiny hat", False),
    ("sd15", "an (important) word, [less] ((very:1.3)) \\(literal\\) end", False),
    ("sd15", LONG_COMMAS, False),
    ("sd15", LONG_PLAIN, False),
    ("sd15", LONG_PLAIN, True),
    ("sd15", "a cat BREAK a dog", False),
    ("sd15", "BREAK a dog", False),
    ("sd15", "(a BREAK b)", False),
    ("sd15", " ".join(["cat"] * 75), False),
    ("sd15", " ".join(["cat"] * 76), False),
    ("sd15", " ".join(["cat"] * 54) + " , " + " ".join(["dog"] * 30), False),
    ("sd15", " ".join(["cat"] * 55) + " , " + " ".join(["dog"] * 30), False),
    ("sd15", " ".join(["cat"] * 74) + " , " + " ".join(["dog"] * 10), False),
    ("sd15", " ".join(["cat"] * 75) + " , " + " ".join(["dog"] * 10), False),
    ("sd15", "(caf\u00e9:1.5), na\u00efve \u03a9mega [se\u00f1or] " * 12, False),
    ("sd15", "", False),
    ("sdxl_2", "a photo of a cat wearing a tiny hat", False),
    ("sdxl_2", LONG_COMMAS, False),
    ("sdxl_2", "a cat BREAK BREAK (a dog:0.7)", False),
]
ENCODE = [
    ("sd15_long", "tiny-sd15", LONG_COMMAS, "blurry, (low quality:1.3)"),
    ("sd15_short", "tiny-sd15", "a (photo:1.4) of a [cat] wearing a tiny hat", "blurry, low quality"),
    ("sdxl_break", "tiny-sdxl", "a (red:1.3) fox BREAK in a [snowy] forest, soft light", "blurry"),
    ("sdxl_long_negative", "tiny-sdxl", "a photo of a cat", LONG_COMMAS),
]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    ref = sys.argv[1]
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "prompt")
    os.makedirs(out_dir, exist_ok=True)

    toks = {"sd15": CLIPTokenizer.from_pretrained(os.path.join(ref, "tiny-sd15/diffusers/tokenizer")),
            "sdxl_2": CLIPTokenizer.from_pretrained(os.path.join(ref, "tiny-sdxl/diffusers/tokenizer_2"))}
    doc = {"source": "tools/make_prompt_fixtures.py (AUTOMATIC1111's algorithm re-implemented)",
           "parse": [{"text": t, "fragments": parse(t)} for t in PARSE],
           "parse_errors": [], "windows": [], "encode": []}
    for t in PARSE_ERRORS:
        try:
            parse(t)
        except ValueError:
            doc["parse_errors"].append(t)
        else:
            sys.exit("expected A1111 to fail on %r" % t)
    for name, text, plain in WINDOWS:
        chunks, count = tokenize_line(toks[name], text, plain)
        doc["windows"].append({"tokenizer": name, "text": text, "syntax": "plain" if plain else "a1111",
                               "token_count": count, "ids": [c[0] for c in chunks],
                               "weights": [c[1] for c in chunks]})

    encs = {}
    for model in ("tiny-sd15", "tiny-sdxl"):
        folder = os.path.join(ref, model, "diffusers")
        if model == "tiny-sd15":
            encs[model] = [Encoder(folder, "text_encoder", "tokenizer", False, "last")]
        else:
            encs[model] = [Encoder(folder, "text_encoder", "tokenizer", False, "penultimate"),
                           Encoder(folder, "text_encoder_2", "tokenizer_2", True, "penultimate")]
    tensors = {}
    for name, model, prompt, negative in ENCODE:
        (cond, uncond), (pooled, npooled) = encode_case(encs[model], prompt, negative)
        tensors[name + ".prompt_embeds"] = cond.unsqueeze(0).contiguous()
        tensors[name + ".negative_prompt_embeds"] = uncond.unsqueeze(0).contiguous()
        if pooled is not None:
            tensors[name + ".pooled_prompt_embeds"] = pooled.unsqueeze(0).contiguous()
            tensors[name + ".negative_pooled_prompt_embeds"] = npooled.unsqueeze(0).contiguous()
        doc["encode"].append({"name": name, "model": model, "prompt": prompt, "negative": negative,
                              "seq_len": cond.shape[0]})
    save_file(tensors, os.path.join(out_dir, "encode_cases.safetensors"))
    with open(os.path.join(out_dir, "a1111_cases.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote %d parse cases, %d windows cases, %d encode cases to %s" %
          (len(doc["parse"]), len(doc["windows"]), len(doc["encode"]), out_dir))


if __name__ == "__main__":
    main()
