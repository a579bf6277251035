#!/usr/bin/env python3
"""Makes tests/data/unet/*.safetensors: UNet inputs and diffusers outputs for
cases the shared reference does not cover (non-square latents, per-sample
timesteps, fractional timesteps, enough tokens to split the feed-forward into
chunks). Uses the tiny UNets of the shared reference tree, loaded in float32
(their float16 weights upcast exactly), so the C implementation can be checked
against them at float32 precision.

    python3 tools/make_unet_fixtures.py [/work/shared] [tests/data/unet]

With --dump NAME it instead writes every down/mid/up block output of the
shared reference's unet0 call for model NAME to /tmp/unet_dump_NAME.safetensors,
for stage-by-stage debugging (not committed).
"""
import os
import sys

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

SHARED = "/work/shared"
OUT = "tests/data/unet"


def load_unet(shared, model):
    path = os.path.join(shared, "reference", model, "diffusers")
    return UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch.float32).eval()


def run(unet, sample, t, ctx, added=None):
    with torch.no_grad():
        return unet(sample, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample


def make_sd15(shared, out):
    unet = load_unet(shared, "tiny-sd15")
    g = torch.Generator().manual_seed(7)
    # 64x72 latents: 4608 tokens at the first level, more than one chunk.
    sample = torch.randn(1, 4, 64, 72, generator=g)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([421.0])
    res = run(unet, sample, t, ctx)
    save_file({"sample": sample, "timesteps": t, "context": ctx, "out": res.contiguous()},
              os.path.join(out, "sd15_64x72.safetensors"))


def make_sdxl(shared, out):
    unet = load_unet(shared, "tiny-sdxl")
    g = torch.Generator().manual_seed(11)
    sample = torch.randn(2, 4, 24, 40, generator=g)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    text = torch.randn(2, pooled, generator=g)
    ids = torch.tensor([[192.0, 320.0, 0.0, 0.0, 192.0, 320.0], [1024.0, 768.0, 16.0, 32.0, 192.0, 320.0]])
    t = torch.tensor([999.0, 10.5])  # a different (and fractional) timestep per sample
    res = run(unet, sample, t, ctx, {"text_embeds": text, "time_ids": ids})
    save_file({"sample": sample, "timesteps": t, "context": ctx, "text_embeds": text, "time_ids": ids,
               "out": res.contiguous()}, os.path.join(out, "sdxl_24x40.safetensors"))


def dump(shared, model):
    unet = load_unet(shared, model)
    ref = load_file(os.path.join(shared, "reference", model, "reference.safetensors"))
    acts = {}

    def hook(name):
        def f(mod, inp, outp):
            o = outp[0] if isinstance(outp, tuple) else outp
            acts[name] = o.detach().clone().contiguous()
        return f

    for name, mod in unet.named_modules():
        if name.count(".") <= 3 and any(k in name for k in ("resnets.", "attentions.", "samplers.")):
            mod.register_forward_hook(hook(name))
    for name in ("conv_in", "time_embedding", "add_embedding", "conv_out"):
        if hasattr(unet, name):
            getattr(unet, name).register_forward_hook(hook(name))
    added = None
    if "unet0_text_embeds" in ref:
        added = {"text_embeds": ref["unet0_text_embeds"], "time_ids": ref["unet0_time_ids"]}
    run(unet, ref["unet0_sample"], ref["unet0_timestep"], ref["unet0_encoder_hidden_states"], added)
    save_file(acts, "/tmp/unet_dump_%s.safetensors" % model)


def main():
    args = sys.argv[1:]
    if args and args[0] == "--dump":
        dump(args[2] if len(args) > 2 else SHARED, args[1])
        return
    shared = args[0] if args else SHARED
    out = args[1] if len(args) > 1 else OUT
    os.makedirs(out, exist_ok=True)
    make_sd15(shared, out)
    make_sdxl(shared, out)


if __name__ == "__main__":
    main()
