#!/usr/bin/env python3
"""Makes tests/data/lora/: tiny LoRAs for the shared reference fixtures and the
outputs diffusers + PEFT compute with them applied (float32, CPU).

For tiny-sd15 and tiny-sdxl:
  <m>_peft.safetensors   LoRA "a" in the diffusers/PEFT format written by
                         pipe.save_lora_weights (unet.*, text_encoder*.*
                         lora_A / lora_B, F16) with its adapter metadata:
                         unet r 4 / lora_alpha 8, rank_pattern {to_k: 2},
                         alpha_pattern {to_v: 16}; text encoders r 4 /
                         lora_alpha 2. Linear and conv targets (3x3 resnet convs,
                         1x1 proj_in on SD1.5, down/upsamplers, conv_in/out).
  <m>_kohya.safetensors  the same factors by hand in kohya's format with
                         diffusers module names (lora_unet_*, lora_te_* /
                         lora_te1_* / lora_te2_*, lora_down / lora_up / alpha, F32)
  sdxl_kohya_sgm.safetensors  the same for SDXL with the UNet named in the
                         original (Stability) layout: lora_unet_input_blocks_4_1_...
  <m>_b.safetensors      LoRA "b": a second PEFT LoRA (rank 2, no metadata, so
                         alpha = rank) on a few UNet and text encoder layers
  sd15_attn_old.safetensors / sd15_attn_kohya.safetensors  the attention layers
                         of "a" in the old diffusers attention-processor naming
                         (unet.*.processor.to_q_lora.down.weight) and in kohya's
                         (alpha = rank): they must patch identically
  <m>_ref.safetensors    with "a" at strength 0.8: unet0_out_a (the reference's
                         first UNet call, same inputs), prompt_embeds_a,
                         negative_prompt_embeds_a (+ pooled ones for SDXL); with
                         "a" at 0.8 and "b" at 0.5: the same with suffix _ab

The kohya files are also loaded back into diffusers (its own kohya converter)
and must reproduce the PEFT outputs: that checks the hand-written files.

    python3 tools/make_lora_fixtures.py [/work/shared] [tests/data/lora]
"""
import json
import os
import sys
import tempfile

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

# transformers asks for PEFT >= 0.22 for text encoder adapters, the newest on
# PyPI here is 0.21.2, and what the adapters use is in both. The outputs are
# checked against a merge done by hand below, so a real incompatibility would
# show there.
import transformers.integrations.peft as _tpeft  # noqa: E402

_tpeft.MIN_PEFT_VERSION = "0.21.0"

SHARED = "/work/shared"
OUT = "tests/data/lora"
STRENGTH_A, STRENGTH_B = 0.8, 0.5

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "time_emb_proj", "conv_shortcut", "conv", "linear_1", "linear_2",
                "conv_in", "conv_out"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
UNET_TARGETS_B = ["to_k", "to_v", "ff.net.2", "conv2"]
TE_TARGETS_B = ["q_proj", "fc2"]


def pipeline(shared, model):
    path = os.path.join(shared, "reference", model, "diffusers")
    cls = StableDiffusionXLPipeline if model == "tiny-sdxl" else StableDiffusionPipeline
    kw = {} if model == "tiny-sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    return cls.from_pretrained(path, torch_dtype=torch.float32, **kw)


def encoders(pipe):
    out = [("text_encoder", pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        out.append(("text_encoder_2", pipe.text_encoder_2))
    return out


def randomize(model, adapter, gen, amp):
    """Sets every LoRA factor of the adapter to seeded noise rounded to float16
    values; returns {module name: (A, B)}."""
    factors = {}
    for name, mod in model.named_modules():
        if not hasattr(mod, "lora_A") or adapter not in mod.lora_A:
            continue
        a, b = mod.lora_A[adapter].weight, mod.lora_B[adapter].weight
        fan_in = a[0].numel()
        va = (torch.randn(a.shape, generator=gen) / fan_in ** 0.5).half().float()
        vb = (torch.randn(b.shape, generator=gen) * amp).half().float()
        with torch.no_grad():
            a.copy_(va)
            b.copy_(vb)
        factors[name] = (va, vb)
    return factors


def add_lora(pipe, adapter, gen, unet_targets, te_targets, rank, metadata):
    """Adds adapter to the UNet and text encoders; returns (factors per prefix, configs per prefix)."""
    factors, configs = {}, {}
    parts = [("unet", pipe.unet, unet_targets, 0.2)] + [(p, m, te_targets, 0.2) for p, m in encoders(pipe)]
    for prefix, model, targets, amp in parts:
        if metadata:
            unet = prefix == "unet"
            cfg = LoraConfig(r=rank, lora_alpha=8 if unet else 2, target_modules=targets,
                             init_lora_weights=False, rank_pattern={"to_k": 2} if unet else {},
                             alpha_pattern={"to_v": 16} if unet else {})
        else:
            cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
        model.add_adapter(cfg, adapter_name=adapter)
        factors[prefix] = randomize(model, adapter, gen, amp)
        configs[prefix] = cfg
    return factors, configs


def save_peft(pipe, adapter, configs, path, metadata):
    layers, meta = {}, {}
    for prefix, model in [("unet", pipe.unet)] + encoders(pipe):
        sd = get_peft_model_state_dict(model, adapter_name=adapter)
        layers[prefix + "_lora_layers"] = {k: v.half() for k, v in sd.items()}
        if metadata:
            meta[prefix + "_lora_adapter_metadata"] = configs[prefix].to_dict()
    d = tempfile.mkdtemp()
    type(pipe).save_lora_weights(d, weight_name="lora.safetensors", **layers, **meta)
    os.replace(os.path.join(d, "lora.safetensors"), path)
    os.rmdir(d)


def module_alpha(cfg, name):
    """The alpha PEFT gives module `name` under cfg."""
    for k, v in (cfg.alpha_pattern or {}).items():
        if name == k or name.endswith("." + k):
            return float(v)
    return float(cfg.lora_alpha)


def sgm_unet_name(name, cfg):
    """A diffusers UNet module path in the original (sgm) layout, or None."""
    lpb = cfg.layers_per_block
    p = name.split(".")
    res = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    plain = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_out": "out.2"}
    if name in plain:
        return plain[name]
    if p[0] == "down_blocks":
        i, kind = int(p[1]), p[2]
        if kind == "downsamplers":
            return f"input_blocks.{(i + 1) * (lpb + 1)}.0.op"
        j = int(p[3])
        blk = f"input_blocks.{i * (lpb + 1) + j + 1}"
        if kind == "resnets":
            return f"{blk}.0.{res[p[4]]}"
        return f"{blk}.1." + ".".join(p[4:])
    if p[0] == "up_blocks":
        i, kind = int(p[1]), p[2]
        has_attn = "Attn" in cfg.up_block_types[i]
        if kind == "upsamplers":
            return f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attn else 1}." + ".".join(p[4:])
        j = int(p[3])
        blk = f"output_blocks.{i * (lpb + 1) + j}"
        if kind == "resnets":
            return f"{blk}.0.{res[p[4]]}"
        return f"{blk}.1." + ".".join(p[4:])
    if p[0] == "mid_block":
        if p[1] == "attentions":
            return "middle_block.1." + ".".join(p[3:])
        return f"middle_block.{2 * int(p[2])}.{res[p[3]]}"
    return None


def save_kohya(pipe, factors, configs, path, sgm=None, sd15=False, dtype=torch.float32):
    out = {}
    te_prefix = {"text_encoder": "lora_te" if sd15 else "lora_te1", "text_encoder_2": "lora_te2"}
    for prefix, mods in factors.items():
        for name, (a, b) in mods.items():
            mname = name
            if prefix == "unet" and sgm is not None:
                mname = sgm_unet_name(name, pipe.unet.config)
                key = "model.diffusion_model." + mname + ".weight"
                assert key in sgm, f"{name} -> {key}: not in the single-file checkpoint"
            if prefix != "unet" and not mname.startswith("text_model."):
                # transformers 5's CLIPTextModel drops the text_model level from its
                # module paths; kohya files in the wild carry it.
                mname = "text_model." + mname
            head = "lora_unet" if prefix == "unet" else te_prefix[prefix]
            k = head + "_" + mname.replace(".", "_")
            out[k + ".lora_down.weight"] = a.to(dtype).contiguous()
            out[k + ".lora_up.weight"] = b.to(dtype).contiguous()
            out[k + ".alpha"] = torch.tensor(module_alpha(configs[prefix], name))
    save_file(out, path)


def save_attn_old(factors, path_old, path_kohya):
    """The attention layers of the UNet factors in the old attention-processor
    naming, and the same in kohya naming with alpha = rank (scale 1)."""
    old, koh = {}, {}
    for name, (a, b) in factors["unet"].items():
        p = name.split(".")
        if "attn1" not in p and "attn2" not in p:
            continue
        i = max(k for k, s in enumerate(p) if s in ("attn1", "attn2"))
        leaf = ".".join(p[i + 1:])
        lname = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}[leaf]
        base = "unet." + ".".join(p[:i + 1]) + ".processor." + lname
        old[base + ".down.weight"] = a.contiguous()
        old[base + ".up.weight"] = b.contiguous()
        k = "lora_unet_" + name.replace(".", "_")
        koh[k + ".lora_down.weight"] = a.contiguous()
        koh[k + ".lora_up.weight"] = b.contiguous()
        koh[k + ".alpha"] = torch.tensor(float(a.shape[0]))
    save_file(old, path_old)
    save_file(koh, path_kohya)


def outputs(pipe, ref, meta, xl):
    """The reference's first UNet call and the prompt encodings, with whatever
    adapters pipe has active."""
    with torch.no_grad():
        added = None
        if xl:
            added = {"text_embeds": ref["unet0_text_embeds"], "time_ids": ref["unet0_time_ids"]}
        u = pipe.unet(ref["unet0_sample"], ref["unet0_timestep"],
                      encoder_hidden_states=ref["unet0_encoder_hidden_states"],
                      added_cond_kwargs=added).sample
        out = {"unet0_out": u}
        if xl:
            pe, ne, pp, npl = pipe.encode_prompt(meta["prompt"], device="cpu", num_images_per_prompt=1,
                                                 do_classifier_free_guidance=True,
                                                 negative_prompt=meta["negative_prompt"])
            out.update(pooled_prompt_embeds=pp, negative_pooled_prompt_embeds=npl)
        else:
            pe, ne = pipe.encode_prompt(meta["prompt"], "cpu", 1, True, meta["negative_prompt"])
        out.update(prompt_embeds=pe, negative_prompt_embeds=ne)
    return {k: v.contiguous().float() for k, v in out.items()}


def merged(shared, model, loras):
    """A pipeline whose weights have the LoRAs merged by hand: W += strength *
    alpha / rank * (B @ A), conv factors flattened. loras: [(factors, configs, strength)]."""
    pipe = pipeline(shared, model)
    mods = dict([("unet", pipe.unet)] + encoders(pipe))
    with torch.no_grad():
        for factors, configs, strength in loras:
            for prefix, fs in factors.items():
                for name, (a, b) in fs.items():
                    w = mods[prefix].get_submodule(name).weight
                    scale = strength * module_alpha(configs[prefix], name) / a.shape[0]
                    w += scale * (b.flatten(1).double() @ a.flatten(1).double()).reshape(w.shape).float()
    return pipe


def check_kohya(pipe, factors, configs, what):
    """diffusers' own kohya converter must find every module of the file with the
    same factors. Its scale is only compared where the module's alpha is the
    file's most common one: diffusers 0.42 turns per-module kohya alphas into a
    PEFT alpha_pattern whose keys match no module, so such modules get the
    common alpha there (a diffusers bug; kohya's rule, alpha / rank per module,
    is what the merge by hand above checks against PEFT)."""
    for prefix, model in [("unet", pipe.unet)] + encoders(pipe):
        found, odd = set(), []
        for name, mod in model.named_modules():
            if not hasattr(mod, "lora_A") or "k" not in mod.lora_A:
                continue
            found.add(name)
            a, b = factors[prefix][name]
            assert torch.equal(mod.lora_A["k"].weight, a) and torch.equal(mod.lora_B["k"].weight, b), name
            want = module_alpha(configs[prefix], name) / a.shape[0]
            if abs(mod.scaling["k"] - want) > 1e-6:
                odd.append(name)
                assert module_alpha(configs[prefix], name) != configs[prefix].lora_alpha, name
        missed = set(factors[prefix]) - found
        assert found <= set(factors[prefix]), f"{what}: {prefix}: {found - set(factors[prefix])}"
        # diffusers' converter has no rule for SDXL's add_embedding under diffusers names.
        assert all(m.startswith("add_embedding.") for m in missed), f"{what}: {prefix}: misses {missed}"
        print(f"  diffusers reads {what} {prefix}: {len(found)} modules, same factors"
              + (f"; {len(odd)} with a per-module alpha it does not apply" if odd else "")
              + (f"; misses {sorted(missed)}" if missed else ""))


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def check_same(what, got, want, tol=1e-5):
    for k in want:
        e = rel_err(got[k], want[k])
        print(f"  {what}: {k}: max rel err {e:.3g}")
        assert e < tol, f"{what}: {k} differs by {e}"


def make(shared, out, model):
    short = "sdxl" if model == "tiny-sdxl" else "sd15"
    xl = short == "sdxl"
    refdir = os.path.join(shared, "reference", model)
    ref = load_file(os.path.join(refdir, "reference.safetensors"))
    with open(os.path.join(refdir, "reference.json")) as f:
        meta = json.load(f)
    gen = torch.Generator().manual_seed(20240 + (1 if xl else 0))
    files = {n: os.path.join(out, f"{short}_{n}.safetensors") for n in ("peft", "kohya", "b", "ref")}

    # The LoRAs, written from one pipeline.
    pipe = pipeline(shared, model)
    base = outputs(pipe, ref, meta, xl)
    check_same("no LoRA vs the shared reference", base, {k: ref[k] for k in base}, 2e-4)
    fa, ca = add_lora(pipe, "a", gen, UNET_TARGETS, TE_TARGETS, 4, True)
    save_peft(pipe, "a", ca, files["peft"], True)
    # F32 for SD1.5, F16 (exact: the factors are float16 values) for SDXL's larger files.
    kd = torch.float16 if xl else torch.float32
    save_kohya(pipe, fa, ca, files["kohya"], sd15=not xl, dtype=kd)
    if xl:
        sgm = load_file(os.path.join(refdir, f"{model}.safetensors"))
        save_kohya(pipe, fa, ca, os.path.join(out, "sdxl_kohya_sgm.safetensors"), sgm=sgm, dtype=kd)
    else:
        save_attn_old(fa, os.path.join(out, "sd15_attn_old.safetensors"),
                      os.path.join(out, "sd15_attn_kohya.safetensors"))
    fb, cb = add_lora(pipe, "b", gen, UNET_TARGETS_B, TE_TARGETS_B, 2, False)
    save_peft(pipe, "b", cb, files["b"], False)
    del pipe

    # The references: the files loaded back the way users load them.
    pipe = pipeline(shared, model)
    pipe.load_lora_weights(files["peft"], adapter_name="a")
    pipe.set_adapters(["a"], adapter_weights=[STRENGTH_A])
    out_a = outputs(pipe, ref, meta, xl)
    for k in out_a:
        print(f"  {short}: LoRA a changes {k} by {rel_err(out_a[k], base[k]):.3g} (relative)")
        assert rel_err(out_a[k], base[k]) > 0.05, f"{k}: the LoRA barely changes it"
    pipe.load_lora_weights(files["b"], adapter_name="b")
    pipe.set_adapters(["a", "b"], adapter_weights=[STRENGTH_A, STRENGTH_B])
    out_ab = outputs(pipe, ref, meta, xl)
    for k in out_ab:
        assert rel_err(out_ab[k], out_a[k]) > 0.01, f"{k}: LoRA b barely changes it"
    del pipe
    check_same("merged by hand vs diffusers (a)", outputs(merged(shared, model, [(fa, ca, STRENGTH_A)]), ref,
                                                          meta, xl), out_a)
    check_same("merged by hand vs diffusers (a+b)",
               outputs(merged(shared, model, [(fa, ca, STRENGTH_A), (fb, cb, STRENGTH_B)]), ref, meta, xl), out_ab)

    kohya = [files["kohya"]] + ([os.path.join(out, "sdxl_kohya_sgm.safetensors")] if xl else [])
    for path in kohya:
        pipe = pipeline(shared, model)
        pipe.load_lora_weights(path, adapter_name="k")
        check_kohya(pipe, fa, ca, os.path.basename(path))
        del pipe

    tensors = {f"{k}_a": v for k, v in out_a.items()}
    tensors.update({f"{k}_ab": v for k, v in out_ab.items()})
    save_file(tensors, files["ref"], metadata={"strength_a": str(STRENGTH_A), "strength_b": str(STRENGTH_B)})


def main():
    shared = sys.argv[1] if len(sys.argv) > 1 else SHARED
    out = sys.argv[2] if len(sys.argv) > 2 else OUT
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    for model in ("tiny-sd15", "tiny-sdxl"):
        print(model)
        make(shared, out, model)
    for f in sorted(os.listdir(out)):
        print(f"{os.path.join(out, f)}: {os.path.getsize(os.path.join(out, f))} bytes")


if __name__ == "__main__":
    main()
