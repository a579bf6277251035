"""Tokenizer: CLIP's BPE tokenizer of the C library (vf_tokenizer_*).

Loaded from a folder holding vocab.json + merges.txt (+ tokenizer_config.json),
a bpe_simple_vocab_16e6.txt.gz, or explicit files. Ids are lists of ints.
"""

import ctypes

from . import _lib
from ._lib import C

CONTEXT_LEN = 77


class Tokenizer(_lib.Owned):
    """tok = Tokenizer("model/tokenizer"); tok.encode("a cat") -> [49406, ..., 49407]."""

    def __init__(self, path=None, vocab_json=None, merges_txt=None, config_json=None):
        h = ctypes.c_void_p()
        if path is not None:
            _lib.check(C.vf_tokenizer_load(_lib.enc(path), ctypes.byref(h)))
        elif vocab_json is not None and merges_txt is not None:
            _lib.check(C.vf_tokenizer_load_files(_lib.enc(vocab_json), _lib.enc(merges_txt),
                                                 _lib.enc(config_json), ctypes.byref(h)))
        else:
            raise ValueError("Tokenizer: give a path, or vocab_json and merges_txt")
        self._h = h

    def _free(self, h):
        C.vf_tokenizer_free(h)

    @property
    def vocab_size(self):
        return int(C.vf_tokenizer_vocab_size(self._handle()))

    @property
    def special_ids(self):
        """{"bos": id, "eos": id, "pad": id}."""
        b, e, p = ctypes.c_int32(), ctypes.c_int32(), ctypes.c_int32()
        C.vf_tokenizer_special_ids(self._handle(), ctypes.byref(b), ctypes.byref(e), ctypes.byref(p))
        return {"bos": b.value, "eos": e.value, "pad": p.value}

    def encode(self, text):
        """Untruncated ids, BOS and EOS included."""
        t = _lib.enc(text)
        n = ctypes.c_size_t()
        cap = len(t) + 2
        while True:
            ids = (ctypes.c_int32 * cap)()
            _lib.check(C.vf_tokenize(self._handle(), t, ids, cap, ctypes.byref(n)))
            if n.value <= cap:
                return list(ids[: n.value])
            cap = n.value

    def encode_window(self, text):
        """One 77-id window: BOS, up to 75 tokens, EOS, then the pad id."""
        ids = (ctypes.c_int32 * CONTEXT_LEN)()
        _lib.check(C.vf_tokenize_window(self._handle(), _lib.enc(text), ids))
        return list(ids)
