#!/usr/bin/env python3
"""Checks that vramfit and diffusers draw the same demo-model picture.

Runs `vramfit generate --model MODEL --prompt P --seed S` (20 DDIM steps,
guidance 7.5: the defaults of both) and diffusers' StableDiffusionPipeline on
the same folder with the same settings on the CPU in float32, and compares the
two 8-bit pictures. They should agree to within a level or two (both compute
in float32 from the same float16 weights; the last bits of some math
functions differ). Also fails when diffusers reports missing or unexpected
weights for the folder.

usage: tools/demo/parity.py [--vramfit build/vramfit] [--model models/demo]
                            [--prompt "a red circle on a blue background"] [--seed 1] [--tol 2]
Exit 0 when the largest difference is at most --tol levels of 255.
"""
import argparse
import logging
import os
import subprocess
import sys
import tempfile


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vramfit", default=os.path.join(root, "build", "vramfit"))
    ap.add_argument("--model", default=os.path.join(root, "models", "demo"))
    ap.add_argument("--prompt", default="a red circle on a blue background")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tol", type=int, default=2, help="largest allowed difference in levels of 255")
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image
    from diffusers import StableDiffusionPipeline

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ours.png")
        subprocess.run([args.vramfit, "generate", "--model", args.model, "--prompt", args.prompt,
                        "--seed", str(args.seed), "--quiet", "--output", out], check=True)
        ours = np.asarray(Image.open(out).convert("RGB")).astype(int)

    cap = Capture()
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).addHandler(cap)
    # float32 compute from the float16 files, as vramfit does on the CPU.
    pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    img = pipe(args.prompt, num_inference_steps=20, guidance_scale=7.5,
               generator=torch.Generator().manual_seed(args.seed), output_type="np").images[0]
    ref = (img * 255).round().astype(int)
    bad_keys = [l for l in cap.lines if "missing" in l.lower() or "unexpected" in l.lower()
                or "newly initialized" in l.lower() or "not used" in l.lower()]
    for line in bad_keys:
        print("diffusers:", line)

    d = np.abs(ours - ref)
    print(f"{args.prompt!r} seed {args.seed}: max |vramfit - diffusers| = {d.max()}/255, "
          f"mean {d.mean():.4f}, {(d > 0).sum()} of {d.size} values differ")
    return 0 if d.max() <= args.tol and not bad_keys else 1


if __name__ == "__main__":
    sys.exit(main())
