#!/usr/bin/env python3
"""The demo model's own CLIP BPE vocabulary, built from the caption words.

The OpenAI CLIP vocabulary may not be committed, and the demo model only ever
sees the words of its captions (tools/demo/data.py), so it gets a vocabulary of
its own in the same format, which our tokenizer (src/pipeline/tokenizer.c) and
Hugging Face's CLIPTokenizer both read:

    ids 0..255     the 256 byte symbols of CLIP's bytes_to_unicode alphabet, in its order
    ids 256..511   the same followed by "</w>" (the end-of-word form)
    then           one token per merge, in merge order
    last two       <|startoftext|> (BOS) and <|endoftext|> (EOS, also pad and unk)

Because every byte has a symbol, any text tokenizes (a word outside the captions
becomes several pieces the model has never seen). The merges come from BPE
training on the caption words, each counted once, until every word is a single
token: the most frequent adjacent pair first, ties broken by the pair's text,
so the result is the same on every machine. This mirrors the vocabulary
`vramfit synth` makes in C (src/pipeline/synth_vocab.c) with another word list.

Every caption word is therefore one token, and encode() gives the 77 ids the
text encoder sees without a tokenizer library (train.py uses it; the smoke test
checks it against ours and Hugging Face's).

usage: tools/demo/vocab.py --out DIR     writes DIR/vocab.json, merges.txt,
                                         tokenizer_config.json, special_tokens_map.json
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CONTEXT = 77


def bytes_to_unicode():
    """CLIP's byte -> character map, as a list of (byte, char) in vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    order, n = [], 0
    for b in printable:
        order.append((b, chr(b)))
    for b in range(256):
        if b not in printable:
            order.append((b, chr(256 + n)))
            n += 1
    return order


def build(words):
    """(tokens in id order, merges as (left, right) text pairs)."""
    alphabet = bytes_to_unicode()
    char = dict(alphabet)
    tokens = [c for _, c in alphabet] + [c + "</w>" for _, c in alphabet]
    known = set(tokens)
    seqs = []
    for w in words:
        sym = [char[b] for b in w.encode("utf-8")]
        sym[-1] += "</w>"
        seqs.append(sym)
    merges = []
    while True:
        counts = {}
        for s in seqs:
            for i in range(len(s) - 1):
                counts[(s[i], s[i + 1])] = counts.get((s[i], s[i + 1]), 0) + 1
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p[0], p[1]))
        merges.append(best)
        joined = best[0] + best[1]
        if joined not in known:
            known.add(joined)
            tokens.append(joined)
        for k, s in enumerate(seqs):
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[k] = out
    tokens += [BOS, EOS]
    return tokens, merges


def vocabulary():
    """{token: id} and the merges for the demo captions."""
    tokens, merges = build(data.words())
    return {t: i for i, t in enumerate(tokens)}, merges


def encode(text, vocab):
    """The 77 ids of a caption (or ""): BOS, one id per word, EOS, EOS padding.
    Only for the caption words (each one token); anything else is an error."""
    ids = [vocab[BOS]] + [vocab[w + "</w>"] for w in text.lower().split()] + [vocab[EOS]]
    if len(ids) > CONTEXT:
        raise ValueError(f"{text!r}: more than {CONTEXT - 2} words")
    return ids + [vocab[EOS]] * (CONTEXT - len(ids))


def write(out):
    vocab, merges = vocabulary()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=2)
        f.write("\n")
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    cfg = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": CONTEXT,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, f, indent=2)
        f.write("\n")
    return vocab, merges


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder to write the tokenizer files to")
    args = ap.parse_args()
    vocab, merges = write(args.out)
    print(f"{args.out}: {len(vocab)} tokens, {len(merges)} merges, words: {' '.join(data.words())}")
    print("ids of 'a red circle on a blue background':",
          " ".join(str(i) for i in encode("a red circle on a blue background", vocab)[:9]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
