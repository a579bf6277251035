#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz (tests/fuzz/corpus/<target>/).

Seeds are small: hand-made edge cases, plus real *headers* (never weights) of
the tiny reference fixtures in ../shared/reference and of a tiny synthesized
model, and their config files. The fuzz_safetensors harness completes a
header-only input with zero data, so a header alone is a valid file there.
The LoRA seeds are whole files (factors included, a few KB each): a few
modules cut from each fixture of tests/data/lora, and hand-made edge cases.

usage: tools/make_fuzz_seeds.py SHARED_DIR SYNTH_SD15_DIR SYNTH_SDXL_DIR
(SYNTH_*: folders written by `vramfit synth --preset tiny --dtype f16`)
   or: tools/make_fuzz_seeds.py lora     (the LoRA seeds only, cut from tests/data/lora)
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


# ---- LoRA seeds (fuzz_lora: a LoRA file added to a tiny SD1.5 and SDXL model) ----

LORA_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "lora")
DT_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1,
           "I16": 2, "I32": 4, "I64": 8, "BOOL": 1}


def load_st(path):
    """(header, data) of a .safetensors file."""
    raw = read(path)
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_tensors(tensors, meta=None):
    """A whole file from [(name, dtype, shape, bytes)] (bytes None: a deterministic pattern)."""
    h, blob = {}, b""
    if meta is not None:
        h["__metadata__"] = meta
    for name, dt, shape, data in tensors:
        n = DT_SIZE[dt]
        for d in shape:
            n *= d
        if data is None:
            data = bytes((i * 37 + 11) % 61 for i in range(n))
            if dt == "F32":
                data = b"".join(struct.pack("<f", ((i * 7) % 13 - 6) / 64.0) for i in range(n // 4))
            elif dt == "F16":
                data = b"".join(struct.pack("<e", ((i * 7) % 13 - 6) / 64.0) for i in range(n // 2))
        h[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    return st_file(h, blob)


def cut(fixture, modules, meta_keys=None):
    """The tensors of a fixture whose module (the key before its role suffix) is
    one of modules, with their data; meta_keys: the adapter metadata entries to keep."""
    h, data = load_st(os.path.join(LORA_DATA, fixture))
    meta = h.pop("__metadata__", None)
    out = []
    for k in sorted(h):
        if any(k.startswith(m + ".") or k.startswith(m + "_lora.") for m in modules):
            a, b = h[k]["data_offsets"]
            out.append((k, h[k]["dtype"], h[k]["shape"], data[a:b]))
    if len(out) < 2:
        sys.exit("make_fuzz_seeds: %s has no tensors for %s" % (fixture, modules))
    if meta is not None and meta_keys is not None:
        am = json.loads(meta["lora_adapter_metadata"])
        meta = {"format": "pt", "lora_adapter_metadata": json.dumps(
            {k: v for k, v in am.items() if k.split(".", 1)[1] in meta_keys}, sort_keys=True)}
    elif meta is not None:
        meta = {"format": meta.get("format", "pt")}
    return st_tensors(out, meta)


def lora_seeds():
    # Cut from the fixtures of tests/data/lora (made for the reference models,
    # whose names and shapes the tiny synthesized ones share): a few modules each.
    kq = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    put("lora", "sd15_kohya", cut("sd15_kohya.safetensors", [
        kq, "lora_unet_down_blocks_0_resnets_0_conv1", "lora_te_text_model_encoder_layers_0_self_attn_q_proj"]))
    put("lora", "sd15_peft", cut("sd15_peft.safetensors", [
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v",
        "unet.down_blocks.0.downsamplers.0.conv", "text_encoder.encoder.layers.0.mlp.fc1"],
        meta_keys={"lora_alpha", "alpha_pattern", "rank_pattern", "r", "use_rslora", "use_dora"}))
    put("lora", "sd15_attn_old", cut("sd15_attn_old.safetensors", [
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out"]))
    put("lora", "sd15_b", cut("sd15_b.safetensors", [
        "text_encoder.encoder.layers.0.self_attn.q_proj", "unet.up_blocks.3.resnets.1.conv2"]))
    put("lora", "sdxl_kohya", cut("sdxl_kohya.safetensors", [
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k",
        "lora_te1_text_model_encoder_layers_0_self_attn_out_proj",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1"]))
    put("lora", "sdxl_kohya_sgm", cut("sdxl_kohya_sgm.safetensors", [
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "lora_unet_input_blocks_4_0_skip_connection",
        "lora_unet_input_blocks_4_0_in_layers_2", "lora_unet_time_embed_2"]))
    put("lora", "sdxl_peft", cut("sdxl_peft.safetensors", [
        "unet.up_blocks.2.resnets.2.time_emb_proj", "text_encoder_2.encoder.layers.1.self_attn.v_proj"],
        meta_keys={"lora_alpha", "alpha_pattern", "rank_pattern", "use_rslora", "use_dora"}))
    # Hand-made, on SD1.5's to_q (16, 16) and conv1 (16, 16, 3, 3).
    q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    c = "unet.down_blocks.0.resnets.0.conv1"
    te = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    A = lambda m, dt="F16", shape=(4, 16), data=None: (m + ".lora_A.weight", dt, list(shape), data)
    B = lambda m, dt="F16", shape=(16, 4), data=None: (m + ".lora_B.weight", dt, list(shape), data)
    kd = lambda m, dt="F32", shape=(4, 16), data=None: (m + ".lora_down.weight", dt, list(shape), data)
    ku = lambda m, dt="F32", shape=(16, 4), data=None: (m + ".lora_up.weight", dt, list(shape), data)
    ka = lambda m, dt="F32", shape=(), data=None: (m + ".alpha", dt, list(shape), data)
    f32 = lambda *v: struct.pack("<%df" % len(v), *v)
    meta = lambda d: {"format": "pt", "lora_adapter_metadata": json.dumps(d)}
    kc = "lora_unet_down_blocks_0_resnets_0_conv1"
    cases = {
        "empty": st_tensors([]),
        "only_other": st_tensors([("something.else", "F32", [1], None)]),
        "only_down": st_tensors([A(q)]),
        "only_alpha": st_tensors([ka(kq, data=f32(4))]),
        "same_factor_twice": st_tensors([A(q), (q + ".lora.down.weight", "F16", [4, 16], None), B(q)]),
        "up_transposed": st_tensors([A(q), B(q, shape=(4, 16))]),
        "rank_zero": st_tensors([A(q, shape=(0, 16)), B(q, shape=(16, 0))]),
        "rank_mismatch": st_tensors([A(q, shape=(2, 16)), B(q)]),
        "down_3d": st_tensors([A(q, shape=(4, 4, 4)), B(q)]),
        "linear_down_1x1": st_tensors([A(q, shape=(4, 16, 1, 1)), B(q, shape=(16, 4, 1, 1))]),
        "conv_down_2d": st_tensors([A(c, shape=(4, 144)), B(c)]),
        "conv_wrong_kernel": st_tensors([A(c, shape=(4, 16, 1, 9)), B(c, shape=(16, 4, 1, 1))]),
        "conv_kohya": st_tensors([kd(kc, shape=(2, 16, 3, 3)), ku(kc, shape=(16, 2, 1, 1)), ka(kc, data=f32(1))]),
        "nan_factor": st_tensors([A(q, data=b"\x00\x7e" * 64), B(q)]),
        "inf_factor": st_tensors([kd(kq), ku(kq, data=f32(*([float("inf")] + [0.0] * 63)))]),
        "big_factors": st_tensors([kd(kq, data=f32(*[3e38] * 64)), ku(kq, data=f32(*[3e38] * 64))]),
        "alpha_nan": st_tensors([kd(kq), ku(kq), ka(kq, data=f32(float("nan")))]),
        "alpha_zero": st_tensors([kd(kq), ku(kq), ka(kq, data=f32(0))]),
        "alpha_negative": st_tensors([kd(kq), ku(kq), ka(kq, data=f32(-8))]),
        "alpha_vector": st_tensors([kd(kq), ku(kq), ka(kq, shape=(2,), data=f32(1, 2))]),
        "alpha_int": st_tensors([kd(kq), ku(kq), ka(kq, dt="I32", data=struct.pack("<i", 4))]),
        "alpha_f64": st_tensors([kd(kq), ku(kq), ka(kq, dt="F64", shape=(1, 1), data=struct.pack("<d", 2))]),
        "alpha_bf16": st_tensors([kd(kq), ku(kq), ka(kq, dt="BF16", data=b"\x80\x40")]),
        "int_factors": st_tensors([A(q, dt="I8"), B(q, dt="I8")]),
        "bf16_factors": st_tensors([A(q, dt="BF16"), B(q, dt="BF16")]),
        "f8_factors": st_tensors([A(q, dt="F8_E4M3"), B(q, dt="F8_E5M2")]),
        "f64_factors": st_tensors([A(q, dt="F64"), B(q, dt="F64")]),
        "mixed_dtypes": st_tensors([kd(kq, dt="F16"), ku(kq, dt="BF16"), ka(kq, dt="F16", data=b"\x00\x44")]),
        "dora_scale": st_tensors([A(q), B(q), (q + ".dora_scale", "F16", [16, 1], None)]),
        "magnitude": st_tensors([A(q), B(q), (q + ".lora_magnitude_vector.weight", "F16", [16], None)]),
        "lora_mid": st_tensors([kd(kc, shape=(2, 16, 1, 1)), (kc + ".lora_mid.weight", "F32", [2, 2, 3, 3], None),
                                ku(kc, shape=(16, 2, 1, 1))]),
        "loha": st_tensors([(kq + ".hada_w1_a", "F32", [16, 2], None), (kq + ".hada_w1_b", "F32", [2, 16], None)]),
        "lokr": st_tensors([(kq + ".lokr_w1", "F32", [4, 4], None), (kq + ".lokr_w2", "F32", [4, 4], None)]),
        "bias": st_tensors([A(q), B(q), (q + ".lora_B.bias", "F16", [16], None)]),
        "base_model_prefix": st_tensors([A("base_model.model.unet." + q[5:]), B("base_model.model.unet." + q[5:])]),
        "bare_unet": st_tensors([A(q[5:]), B(q[5:])]),
        "te_text_model": st_tensors([A(te), B(te)]),
        "te_no_text_model_kohya": st_tensors([kd("lora_te_encoder_layers_1_mlp_fc2", shape=(4, 64)),
                                              ku("lora_te_encoder_layers_1_mlp_fc2")]),
        "linear_layer_names": st_tensors([(q + ".lora_linear_layer.down.weight", "F32", [4, 16], None),
                                          (q + ".lora_linear_layer.up.weight", "F32", [16, 4], None)]),
        "old_te_processor": st_tensors([(te[:-6] + "to_q_lora.down.weight", "F32", [4, 16], None),
                                        (te[:-6] + "to_q_lora.up.weight", "F32", [16, 4], None)]),
        "old_unet_to_out": st_tensors([(q[:-4] + "processor.to_out_lora.down.weight", "F32", [4, 16], None),
                                       (q[:-4] + "processor.to_out_lora.up.weight", "F32", [16, 4], None)]),
        "two_pairs_one_weight": st_tensors([A(q), B(q), kd(kq), ku(kq)]),
        "unmatched_extra": st_tensors([A(q), B(q), A("unet.no.such.module"), B("unet.no.such.module"),
                                       (q + ".extra", "F16", [1], None)]),
        "long_key": st_tensors([A("unet." + "x" * 600), B("unet." + "x" * 600), A(q), B(q)]),
        "sgm_odd": st_tensors([kd("lora_unet_input_blocks__4__1_proj_in"), ku("lora_unet_input_blocks__4__1_proj_in"),
                               kd("lora_unet_output_blocks_99_1_proj_in"), ku("lora_unet_output_blocks_99_1_proj_in"),
                               kd("lora_unet_middle_block_1_proj_in", shape=(4, 64)),
                               ku("lora_unet_middle_block_1_proj_in", shape=(64, 4))]),
        "meta_not_json": st_tensors([A(q), B(q)], {"lora_adapter_metadata": "{\"unet.lora_alpha\": "}),
        "meta_array": st_tensors([A(q), B(q)], {"lora_adapter_metadata": "[1, 2]"}),
        "meta_alpha_string": st_tensors([A(q), B(q)], meta({"unet.lora_alpha": "8"})),
        "meta_alpha_huge": st_tensors([A(q), B(q)], meta({"unet.lora_alpha": 1e300})),
        "meta_rslora": st_tensors([A(q), B(q), A(te), B(te)], meta({"unet.lora_alpha": 8, "unet.use_rslora": True,
                                                                   "text_encoder.lora_alpha": 2})),
        "meta_dora": st_tensors([A(q), B(q)], meta({"unet.use_dora": True})),
        "meta_pattern": st_tensors([A(q), B(q)], meta({"unet.lora_alpha": 8, "unet.alpha_pattern": {
            "attn1.to_q": 2, "to_q": "x", "": 1, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": 3}})),
        "meta_pattern_not_number": st_tensors([A(q), B(q)], meta({"unet.alpha_pattern": {"to_q": [1]}})),
    }
    for name, data in cases.items():
        put("lora", name, data)


def main():
    if sys.argv[1:] == ["lora"]:
        lora_seeds()
        return
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    shared, sd15, sdxl = sys.argv[1:]
    safetensors_seeds(shared)
    json_config_seeds(shared, sd15, sdxl)
    model_index_seeds(shared, sd15, sdxl)
    tokenizer_seeds()
    tokenizer_files_seeds(sd15)
    lora_seeds()


if __name__ == "__main__":
    main()
