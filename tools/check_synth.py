#!/usr/bin/env python3
"""Checks that a `vramfit synth` folder is a diffusers model diffusers itself loads.

Loads the folder with StableDiffusionPipeline / StableDiffusionXLPipeline
.from_pretrained (the class from model_index.json) and fails on any missing or
unexpected weight (diffusers and transformers report those as warnings, so
they are caught from the loaders' output info and from the log). Then, unless
--no-run, it tokenizes a prompt with both tokenizers and runs a short
generation on the CPU in float32, checking that every output is finite. Meant
for --preset tiny folders (a full one loads too, but slowly and with GBs of RAM).

With --dtype f16 --size 256 it also serves to check a full preset: every UNet
and VAE module output is watched and the largest magnitude reported (float16
overflows at 65504); about 8 GB of RAM for SDXL.

usage: tools/check_synth.py DIR [--no-run] [--steps N] [--dtype f32|f16] [--size PX]
Exit status 0 when everything held, 1 otherwise. A tool, not a product dependency.
"""
import argparse
import json
import logging
import sys


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--no-run", action="store_true")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    ap.add_argument("--size", type=int, default=0, help="image side in pixels (default: the model's)")
    args = ap.parse_args()

    import numpy as np
    import torch
    import diffusers
    import transformers

    cap = Capture()
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).addHandler(cap)
    diffusers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.set_verbosity_warning()

    with open(f"{args.dir}/model_index.json") as f:
        index = json.load(f)
    cls = getattr(diffusers, index["_class_name"])
    dtype = torch.float16 if args.dtype == "f16" else torch.float32

    failures = []
    # Each component on its own with output_loading_info, which lists key
    # mismatches (one at a time, so that a full preset fits in RAM), then the pipeline.
    for comp, entry in sorted(index.items()):
        if comp.startswith("_") or not isinstance(entry, list) or not isinstance(entry[0], str):
            continue
        lib, klass = entry
        if "Tokenizer" in klass or "Scheduler" in klass:
            continue
        mod = getattr(diffusers if lib == "diffusers" else transformers, klass)
        model, info = mod.from_pretrained(args.dir, subfolder=comp, output_loading_info=True, dtype=dtype)
        nparams = sum(p.numel() for p in model.parameters())
        del model
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
            bad = [k for k in info.get(key, []) if "position_ids" not in str(k)]
            if bad:
                failures.append(f"{comp}: {key}: {bad[:5]}{' ...' if len(bad) > 5 else ''}")
        print(f"  {comp:15s} {klass:30s} {nparams:>14,d} parameters")
    pipe = cls.from_pretrained(args.dir, dtype=dtype)
    for line in cap.lines:
        low = line.lower()
        if "were not used" in low or "newly initialized" in low or "missing" in low or "unexpected" in low:
            failures.append("log: " + line.splitlines()[0])

    prompt = "a red circle"
    toks = [pipe.tokenizer] + ([pipe.tokenizer_2] if getattr(pipe, "tokenizer_2", None) else [])
    for i, tok in enumerate(toks):
        ids = tok(prompt, padding="max_length", max_length=77).input_ids
        vocab = len(tok)
        te = pipe.text_encoder if i == 0 else pipe.text_encoder_2
        print(f"  tokenizer{'_2' if i else ''}: {prompt!r} -> {ids[:8]} ... (vocab {vocab}, pad {ids[-1]})")
        if vocab != te.config.vocab_size:
            failures.append(f"tokenizer {i}: vocabulary {vocab} != text encoder vocab_size {te.config.vocab_size}")
        if max(ids) >= te.config.vocab_size:
            failures.append(f"tokenizer {i}: id {max(ids)} outside the vocabulary")

    if not args.no_run:
        peak = {}

        def watch(name):
            def hook(mod, inp, out):
                t = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
                if torch.is_tensor(t) and t.is_floating_point():
                    m = t.detach().float().abs().max().item()
                    peak[name] = max(peak.get(name, 0.0), m)
            return hook

        for comp in ("unet", "vae"):
            for name, mod in getattr(pipe, comp).named_modules():
                if name and len(list(mod.children())) == 0:
                    mod.register_forward_hook(watch(f"{comp}.{name}"))
        size = {"height": args.size, "width": args.size} if args.size else {}
        out = pipe(prompt, num_inference_steps=args.steps, output_type="np",
                   generator=torch.Generator().manual_seed(0), **size)
        img = out.images[0]
        print(f"  generated {img.shape} ({args.dtype}), range [{img.min():.3f}, {img.max():.3f}]")
        if not np.isfinite(img).all():
            failures.append("generated image has non-finite values")
        for comp in ("unet", "vae"):
            items = [(v, k) for k, v in peak.items() if k.startswith(comp + ".")]
            if items:
                v, k = max(items)
                print(f"  largest |activation| in {comp}: {v:.4g} at {k}")
                if not np.isfinite(v) or (dtype == torch.float16 and v >= 65504):
                    failures.append(f"{comp}: activation overflow at {k}")

    for f in failures:
        print("FAIL " + f)
    print("ok" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
