#!/usr/bin/env python3
"""A random kohya-format LoRA for a diffusers model folder, for benchmarks.

Targets what trainers usually target: every UNet attention projection
(to_q/k/v/out.0), feed-forward (ff.net.0.proj, ff.net.2) and proj_in/proj_out,
and the text encoders' self_attn q/k/v/out_proj and mlp fc1/fc2, at rank R with
alpha R/2, float16 factors of small random values (the numbers do not matter for
timing; they are drawn once and reused). Standard library only, so it runs on a
GPU machine without numpy or torch:

    python3 tools/make_bench_lora.py MODEL_DIR OUT.safetensors [--rank 32]

For SDXL's full shapes at rank 32 the file is about 110 MB (kohya's typical
SDXL LoRAs are 50 to 400 MB).
"""
import argparse
import glob
import json
import os
import random
import struct

UNET_SUFFIXES = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight", ".ff.net.0.proj.weight",
                 ".ff.net.2.weight", ".proj_in.weight", ".proj_out.weight")
TE_SUFFIXES = (".q_proj.weight", ".k_proj.weight", ".v_proj.weight", ".out_proj.weight", ".fc1.weight",
               ".fc2.weight")


def headers(folder, component):
    """{name: shape} of a component's safetensors files (sharded or not)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, component, "*.safetensors"))):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            h = json.loads(f.read(n))
        out.update({k: v["shape"] for k, v in h.items() if k != "__metadata__"})
    return out


def targets(folder):
    """[(kohya module name, out, in, kernel dims)] for the model's components."""
    xl = os.path.isdir(os.path.join(folder, "text_encoder_2"))
    parts = [("unet", "lora_unet", UNET_SUFFIXES), ("text_encoder", "lora_te1" if xl else "lora_te", TE_SUFFIXES)]
    if xl:
        parts.append(("text_encoder_2", "lora_te2", TE_SUFFIXES))
    out = []
    for comp, head, suffixes in parts:
        for name, shape in sorted(headers(folder, comp).items()):
            if not name.endswith(suffixes) or len(shape) not in (2, 4) or shape[2:] not in ([], [1, 1]):
                continue
            module = name[: -len(".weight")].replace(".", "_")
            out.append((f"{head}_{module}", shape[0], shape[1], shape[2:]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("output")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    pool_n = 1 << 20
    pool = struct.pack(f"<{pool_n}e", *(rng.gauss(0.0, 0.02) for _ in range(pool_n)))
    mods = targets(a.model)
    if not mods:
        raise SystemExit(f"{a.model}: no target layers found (a diffusers folder?)")
    header, chunks, off = {}, [], 0

    def add(name, dtype, shape, data):
        nonlocal off
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        chunks.append(data)
        off += len(data)

    def noise(n):
        start = rng.randrange(pool_n) * 2
        raw = (pool[start:] + pool) * (1 + 2 * n // len(pool))
        return raw[: 2 * n]

    r = a.rank
    for name, oc, ic, k in mods:
        rr = min(r, oc, ic)
        add(f"{name}.alpha", "F32", [], struct.pack("<f", rr / 2))
        add(f"{name}.lora_down.weight", "F16", [rr, ic] + k, noise(rr * ic))
        add(f"{name}.lora_up.weight", "F16", [oc, rr] + k, noise(oc * rr))
    header["__metadata__"] = {"ss_network_module": "networks.lora", "ss_network_dim": str(r)}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(a.output, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)
    print(f"{a.output}: {len(mods)} layers, rank {r}, {os.path.getsize(a.output) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
