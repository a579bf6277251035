#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz (tests/fuzz/corpus/<target>/).

Seeds are small: hand-made edge cases, plus real *headers* (never weights) of
the tiny reference fixtures in ../shared/reference and of a tiny synthesized
model, and their config files. The fuzz_safetensors harness completes a
header-only input with zero data, so a header alone is a valid file there.

usage: tools/make_fuzz_seeds.py SHARED_DIR SYNTH_SD15_DIR SYNTH_SDXL_DIR
(SYNTH_*: folders written by `vramfit synth --preset tiny --dtype f16`)
"""
import json
import os
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def st_file(header, data=b"", hlen=None):
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h) if hlen is None else hlen) + h + data


def header_of(path, drop_meta=True):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    if drop_meta:
        h.pop("__metadata__", None)
    return h


def safetensors_seeds(shared):
    t = lambda dt, shape, a, b: {"dtype": dt, "shape": shape, "data_offsets": [a, b]}
    put("safetensors", "one_f32", st_file({"w": t("F32", [2, 2], 0, 16)}, bytes(16)))
    put("safetensors", "empty_header", st_file({}))
    put("safetensors", "metadata", st_file({"__metadata__": {"format": "pt", "k": "v"},
                                              "a": t("F16", [3], 0, 6), "b": t("BF16", [1], 6, 8)},
                                             bytes(8)))
    put("safetensors", "all_dtypes", st_file({
        "f32": t("F32", [1], 0, 4), "f16": t("F16", [1], 4, 6), "bf16": t("BF16", [1], 6, 8),
        "e4": t("F8_E4M3", [1], 8, 9), "e5": t("F8_E5M2", [1], 9, 10), "i8": t("I8", [1], 10, 11),
        "u8": t("U8", [1], 11, 12), "i16": t("I16", [1], 12, 14), "i32": t("I32", [1], 14, 18),
        "i64": t("I64", [1], 18, 26), "f64": t("F64", [1], 26, 34), "b": t("BOOL", [1], 34, 35)},
        bytes(35)))
    put("safetensors", "zero_sized", st_file({"z": t("F32", [0, 5], 0, 0), "w": t("F32", [1], 0, 4)},
                                             bytes(4)))
    put("safetensors", "scalar", st_file({"s": t("F32", [], 0, 4)}, bytes(4)))
    put("safetensors", "overlap", st_file({"a": t("F32", [2], 0, 8), "b": t("F32", [2], 4, 12)}, bytes(12)))
    put("safetensors", "gap", st_file({"a": t("F32", [1], 4, 8)}, bytes(8)))
    put("safetensors", "trailing", st_file({"a": t("F32", [1], 0, 4)}, bytes(9)))
    put("safetensors", "duplicate", st_file(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                                            b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', bytes(8)))
    put("safetensors", "huge_shape", st_file({"a": t("F32", [2**40, 2**40], 0, 4)}, bytes(4)))
    put("safetensors", "many_dims", st_file({"a": t("U8", [1] * 9, 0, 1)}, bytes(1)))
    put("safetensors", "bad_dtype", st_file({"a": t("F12", [1], 0, 4)}, bytes(4)))
    put("safetensors", "hlen_past_end", st_file({"a": t("F32", [1], 0, 4)}, bytes(4), hlen=1000))
    put("safetensors", "hlen_huge", struct.pack("<Q", 2**63) + b"{}")
    put("safetensors", "not_json", st_file(b"{\"a\":", b""))
    put("safetensors", "text_after", st_file(b"{} x"))
    put("safetensors", "bad_utf8", st_file(b'{"\xff":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4)))
    put("safetensors", "short", b"\x02\x00\x00")
    put("safetensors", "float_offsets", st_file({"a": t("F32", [1], 0.5, 4)}, bytes(4)))
    put("safetensors", "meta_not_string", st_file({"__metadata__": {"k": 1}}))
    ref = os.path.join(shared, "reference")
    # Real headers (the harness adds zero data): the diffusers components and
    # the single files, whose original key layout drives the key maps.
    put("safetensors", "sd15_text_encoder_header",
        st_file(header_of(os.path.join(ref, "tiny-sd15/diffusers/text_encoder/model.safetensors"))))
    put("safetensors", "sd15_vae_header",
        st_file(header_of(os.path.join(ref, "tiny-sd15/diffusers/vae/diffusion_pytorch_model.safetensors"))))
    put("safetensors", "sd15_single_header", st_file(header_of(os.path.join(ref, "tiny-sd15/tiny-sd15.safetensors"))))
    put("safetensors", "sdxl_single_header", st_file(header_of(os.path.join(ref, "tiny-sdxl/tiny-sdxl.safetensors"))))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def json_config_seeds(shared, sd15, sdxl):
    ref = os.path.join(shared, "reference")
    for arch in ("sd15", "sdxl"):
        for comp in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler"):
            name = "scheduler_config.json" if comp == "scheduler" else "config.json"
            p = os.path.join(ref, "tiny-" + arch, "diffusers", comp, name)
            if os.path.exists(p):
                put("json_config", "ref_%s_%s" % (arch, comp), read(p))
    for arch, d in (("sd15", sd15), ("sdxl", sdxl)):
        p = os.path.join(d, "scheduler", "scheduler_config.json")
        put("json_config", "synth_%s_scheduler" % arch, read(p))
    for cls in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DDIMScheduler",
                "DPMSolverMultistepScheduler", "PNDMScheduler"):
        put("json_config", "sched_" + cls, json.dumps({
            "_class_name": cls, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
            "num_train_timesteps": 1000, "steps_offset": 1, "timestep_spacing": "trailing",
            "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "use_karras_sigmas": True,
            "skip_prk_steps": True, "clip_sample": False, "set_alpha_to_one": False}))
    put("json_config", "empty", "{}")
    put("json_config", "wrong_types", '{"block_out_channels":"320","layers_per_block":[2],'
                                      '"num_train_timesteps":"x","hidden_size":true}')
    put("json_config", "huge_numbers", '{"block_out_channels":[1e300,-5,2147483648],"layers_per_block":1e19,'
                                       '"hidden_size":1e308,"num_train_timesteps":1e18,"norm_num_groups":0}')
    put("json_config", "nonfinite", '{"beta_start":NaN,"beta_end":Infinity,"scaling_factor":-Infinity}')


def model_index_seeds(shared, sd15, sdxl):
    ref = os.path.join(shared, "reference")
    put("model_index", "ref_sd15_model_index", b"0" + read(os.path.join(ref, "tiny-sd15/diffusers/model_index.json")))
    put("model_index", "ref_sdxl_model_index", b"2" + read(os.path.join(ref, "tiny-sdxl/diffusers/model_index.json")))
    # The shard index the harness writes: the UNet's tensors in file order, the
    # first half in shard 1 (must match fuzz_model_index.c's split).
    for sel, d in ((b"1", sd15), (b"3", sdxl)):
        h = header_of(os.path.join(d, "unet", "diffusion_pytorch_model.safetensors"))
        names = sorted(h, key=lambda k: (h[k]["data_offsets"][0], h[k]["data_offsets"][1] - h[k]["data_offsets"][0], k))
        half = len(names) // 2
        wm = {k: "diffusion_pytorch_model-0000%d-of-00002.safetensors" % (1 + (i >= half))
              for i, k in enumerate(names)}
        put("model_index", "shard_index_" + ("sd15" if sel == b"1" else "sdxl"),
            sel + json.dumps({"metadata": {"total_size": 1}, "weight_map": wm}, separators=(",", ":")).encode())
    put("model_index", "empty", b"0{}")
    put("model_index", "class_only", b'0{"_class_name":"StableDiffusionPipeline"}')
    put("model_index", "wrong_class", b'2{"_class_name":"FluxPipeline","unet":["diffusers","X"]}')
    put("model_index", "component_not_pair", b'0{"_class_name":"StableDiffusionPipeline","unet":"x"}')
    put("model_index", "sdxl_missing_te2", b'2{"_class_name":"StableDiffusionXLPipeline","unet":["a","b"],'
                                           b'"text_encoder_2":[null,null],"force_zeros_for_empty_prompt":1}')
    put("model_index", "shard_escape", b'1{"weight_map":{"conv_in.weight":"../model_index.json"}}')
    put("model_index", "shard_missing", b'1{"weight_map":{"conv_in.weight":"nope.safetensors"}}')
    put("model_index", "shard_not_string", b'3{"weight_map":{"conv_in.weight":1}}')
    put("model_index", "no_weight_map", b'1{"metadata":{}}')


def tokenizer_seeds():
    for i, s in enumerate([
            "a photo of a cat", "A Red Circle on a blue background, 4k, highly detailed!!",
            "", "   \t\n  ", "it's the cat's hat; don't we'll I'd", "&amp; &lt;b&gt; html &quot;",
            "Ünïcödé ñ ß straße ǅ Ωmega", "日本語のテキスト 中文 한국어", "emoji 🐱🏳️‍🌈👍🏽",
            "numbers 1234567890 3.14 1,000", "<|startoftext|> <|endoftext|> tokens",
            "x" * 300, "word " * 90, "a\u0301 e\u0301 combining", "\u200bzero\u200dwidth\ufeff",
            "mixed123abc_DEF-ghi.jkl", "​ ‌ ‍ weird   spaces "]):
        put("tokenizer", "prompt%02d" % i, s)
    put("tokenizer", "invalid_utf8", b"abc \xff\xfe \xc0\xaf overlong \xed\xa0\x80 surrogate")
    put("tokenizer", "nul_inside", b"before\x00after")


def tokenizer_files_seeds(sd15):
    # vocab.json NUL merges.txt [NUL tokenizer_config.json]
    tok = os.path.join(sd15, "tokenizer")
    vocab = json.loads(read(os.path.join(tok, "vocab.json")))
    put("tokenizer_files", "synth", json.dumps(vocab, separators=(",", ":")).encode() + b"\0" +
        read(os.path.join(tok, "merges.txt")) + b"\0" + read(os.path.join(tok, "tokenizer_config.json")))
    put("tokenizer_files", "synth_no_config", json.dumps(vocab, separators=(",", ":")).encode() + b"\0" +
        read(os.path.join(tok, "merges.txt")))
    small = {"a": 0, "b": 1, "c": 2, "a</w>": 3, "b</w>": 4, "c</w>": 5, "ab": 6, "ab</w>": 7,
             "<|startoftext|>": 8, "<|endoftext|>": 9}
    put("tokenizer_files", "small", json.dumps(small).encode() + b"\0#version: 0.2\na b\na b</w>\n")
    put("tokenizer_files", "pad_bang", json.dumps(dict(small, **{"!": 10})).encode() +
        b"\0#version: 0.2\na b\n\0" + json.dumps({"pad_token": "!", "bos_token": "<|startoftext|>",
                                                     "eos_token": {"content": "<|endoftext|>"}}).encode())
    put("tokenizer_files", "bad_merge", json.dumps(small).encode() + b"\0#version: 0.2\nx y\na\n a b c\n")
    put("tokenizer_files", "bad_ids", b'{"a":-1,"b":1.5,"c":"x","<|endoftext|>":99999999999}\0')
    put("tokenizer_files", "dup_ids", b'{"a":0,"b":0,"<|startoftext|>":1,"<|endoftext|>":1}\0a b\n')


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    shared, sd15, sdxl = sys.argv[1:]
    safetensors_seeds(shared)
    json_config_seeds(shared, sd15, sdxl)
    model_index_seeds(shared, sd15, sdxl)
    tokenizer_seeds()
    tokenizer_files_seeds(sd15)


if __name__ == "__main__":
    main()
