#!/usr/bin/env python3
"""GPU references for the LoRA fixtures: diffusers + PEFT on CUDA.

The same computation as tools/make_lora_fixtures.py's references (the shared
reference's first UNet call and the prompt encodings, with LoRA "a" at 0.8 and
then "a" at 0.8 + "b" at 0.5), but with the pipeline and the LoRAs on the GPU in
the compute dtype vramfit's CUDA backend uses (float16 or bfloat16; float32 for
a check of the GPU itself). It reads the LoRA files of tests/data/lora (made on
the CPU; the PEFT ones, as users load them) and writes

    <out>/<m>_ref_cuda_<dtype>.safetensors   tensors named as in <m>_ref.safetensors

and prints each output's max relative error (max|a-b| / max|b|) against the
CPU float32 reference, which is the tolerance a vramfit CUDA LoRA test can be
held to (vramfit's CUDA result vs the CPU reference should be within the same
order as diffusers' own GPU result is).

    python3 tools/make_lora_gpu_reference.py [--dtype fp16|bf16|fp32] [--shared /work/shared]
                                             [--data tests/data/lora] [--out DIR] [--device cuda]

Needs torch with CUDA, diffusers, transformers and peft (>= the versions in
tools/make_lora_fixtures.py).
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_lora_fixtures as fx  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def outputs_on(pipe, ref, meta, xl, dtype, device):
    """fx.outputs with the inputs moved to device in dtype; results float32 on the CPU."""
    dev = {k: v.to(device, dtype) for k, v in ref.items() if v.is_floating_point()}
    with torch.no_grad():
        added = None
        if xl:
            added = {"text_embeds": dev["unet0_text_embeds"], "time_ids": dev["unet0_time_ids"]}
        u = pipe.unet(dev["unet0_sample"], ref["unet0_timestep"].to(device),
                      encoder_hidden_states=dev["unet0_encoder_hidden_states"], added_cond_kwargs=added).sample
        out = {"unet0_out": u}
        if xl:
            pe, ne, pp, npl = pipe.encode_prompt(meta["prompt"], device=device, num_images_per_prompt=1,
                                                 do_classifier_free_guidance=True,
                                                 negative_prompt=meta["negative_prompt"])
            out.update(pooled_prompt_embeds=pp, negative_pooled_prompt_embeds=npl)
        else:
            pe, ne = pipe.encode_prompt(meta["prompt"], device, 1, True, meta["negative_prompt"])
        out.update(prompt_embeds=pe, negative_prompt_embeds=ne)
    return {k: v.float().cpu().contiguous() for k, v in out.items()}


def make(args, model):
    short = "sdxl" if model == "tiny-sdxl" else "sd15"
    xl = short == "sdxl"
    dtype = DTYPES[args.dtype]
    refdir = os.path.join(args.shared, "reference", model)
    ref = load_file(os.path.join(refdir, "reference.safetensors"))
    with open(os.path.join(refdir, "reference.json")) as f:
        meta = json.load(f)
    cpu_ref = load_file(os.path.join(args.data, f"{short}_ref.safetensors"))
    pipe = fx.pipeline(args.shared, model).to(args.device, dtype)
    pipe.load_lora_weights(os.path.join(args.data, f"{short}_peft.safetensors"), adapter_name="a")
    pipe.set_adapters(["a"], adapter_weights=[fx.STRENGTH_A])
    out = {f"{k}_a": v for k, v in outputs_on(pipe, ref, meta, xl, dtype, args.device).items()}
    pipe.load_lora_weights(os.path.join(args.data, f"{short}_b.safetensors"), adapter_name="b")
    pipe.set_adapters(["a", "b"], adapter_weights=[fx.STRENGTH_A, fx.STRENGTH_B])
    out.update({f"{k}_ab": v for k, v in outputs_on(pipe, ref, meta, xl, dtype, args.device).items()})
    for k in sorted(out):
        print(f"  {short} {args.dtype}: {k}: max rel err vs the CPU float32 reference "
              f"{fx.rel_err(out[k], cpu_ref[k]):.3g}")
    path = os.path.join(args.out, f"{short}_ref_{args.device}_{args.dtype}.safetensors")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    save_file(out, path, metadata={"dtype": args.dtype, "device": name, "torch": torch.__version__})
    print(f"  wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--shared", default=fx.SHARED)
    ap.add_argument("--data", default=fx.OUT)
    ap.add_argument("--out", default=None, help="default: --data")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu with --dtype fp32 checks the "
                    "script itself against the CPU reference")
    args = ap.parse_args()
    args.out = args.out or args.data
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("make_lora_gpu_reference: no CUDA device")
    for model in ("tiny-sd15", "tiny-sdxl"):
        make(args, model)


if __name__ == "__main__":
    main()
