#!/usr/bin/env python3
"""Quantization-error study for the SDXL UNet (CPU, float32 compute).

Emulates vramfit's weight formats (BF16, Q8 blocks of 32 with fp16 scale,
F8 e4m3 with per-row fp32 scale) on the weights of nn.Linear / nn.Conv2d with
K = in_features (or in_ch*kh*kw) >= 32, and measures the UNet output error
against the float32 output of the same weights.

    tools/quant_init_study.py --unet DIR --out OUT --init a   # diffusers' default init (seed 0)
    tools/quant_init_study.py --unet DIR --out OUT --init b   # the weights in DIR

DIR is the unet folder of a `vramfit synth --arch sdxl` model (its config.json
builds the model; with --init b its diffusion_pytorch_model.safetensors are the
weights). Results are appended to OUT/results_<init>.json (re-running skips
finished variants). A tool of the study in bench/RESULTS.md ("Quantization
error on synthesized SDXL"), not part of the product; about 45 minutes and 22
GB of RAM on two cores for both inits.
Original weights are never kept twice in RAM: they are read back from a
safetensors file (fp32 dump for init a, the fp16 synth file for init b).
"""
import argparse, json, os, resource, time

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from diffusers import UNet2DConditionModel

torch.set_num_threads(2)
# set from the command line in main()
HERE = UNET_DIR = SYNTH_FILE = INIT_A_FILE = None

# ----------------------------------------------------------------------------- formats

def q8_codes(w2, block=32):
    """w2: (rows, K) fp32 -> (codes int8 (rows, nb, block), d fp16 (rows, nb))."""
    rows, K = w2.shape
    Kp = (K + block - 1) // block * block
    if Kp != K:
        w2 = torch.nn.functional.pad(w2, (0, Kp - K))
    wb = w2.view(rows, Kp // block, block)
    d = (wb.abs().amax(-1) / 127.0).to(torch.float16)
    df = d.float().unsqueeze(-1)
    q = torch.where(df > 0, torch.round(wb / torch.where(df > 0, df, torch.ones_like(df))),
                    torch.zeros_like(wb))
    return q.clamp_(-127, 127).to(torch.int8), d


def q8_dequant(codes, d, K):
    rows = codes.shape[0]
    return (codes.float() * d.float().unsqueeze(-1)).view(rows, -1)[:, :K]


def fmt_bf16(w2):
    return w2.to(torch.bfloat16).float()


def fmt_f8(w2):
    s = w2.abs().amax(1, keepdim=True) / 448.0
    safe = torch.where(s > 0, s, torch.ones_like(s))
    x = (w2 / safe).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float()
    return torch.where(s > 0, x * s, torch.zeros_like(w2))


def fmt_f8_trunc(w2):
    """Diagnostic only: like fmt_f8 but e4m3 rounding toward zero (not RNE)."""
    s = w2.abs().amax(1, keepdim=True) / 448.0
    safe = torch.where(s > 0, s, torch.ones_like(s))
    x = (w2 / safe).clamp(-448.0, 448.0)
    normal = (x.view(torch.int32) & ~((1 << 20) - 1)).view(torch.float32)  # keep 3 mantissa bits
    sub = torch.trunc(x * 512.0) / 512.0                                     # e4m3 subnormal step 2^-9
    x = torch.where(x.abs() >= 2.0 ** -6, normal, sub)
    return torch.where(s > 0, x * s, torch.zeros_like(w2))


# ----------------------------------------------------------------------------- groups

GROUPS = {
    "attn1_qk": lambda n: ".attn1.to_q." in n or ".attn1.to_k." in n,
    "attn1": lambda n: ".attn1." in n,
    "attn2": lambda n: ".attn2." in n,
    "ff": lambda n: ".ff.net." in n,
    "resnets": lambda n: ".resnets." in n,
    "proj_io": lambda n: ".proj_in." in n or ".proj_out." in n,
    "misc": lambda n: (n.startswith(("conv_in.", "conv_out.", "time_embedding.", "add_embedding."))
                       or ".downsamplers." in n or ".upsamplers." in n),
}


# ----------------------------------------------------------------------------- helpers

def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def packed_weights(model):
    """name -> parameter for Linear/Conv2d weights with K >= 32."""
    out = {}
    for mname, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            K = m.in_features
        elif isinstance(m, torch.nn.Conv2d):
            K = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            continue
        if K >= 32:
            out[mname + ".weight"] = m.weight
    return out


def make_inputs():
    g = torch.Generator().manual_seed(1)
    return dict(
        sample=torch.randn(1, 4, 32, 32, generator=g),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 77, 2048, generator=g),
        added_cond_kwargs=dict(
            text_embeds=torch.randn(1, 1280, generator=g),
            time_ids=torch.tensor([[256.0, 256.0, 0.0, 0.0, 256.0, 256.0]]),
        ),
    )


class Study:
    def __init__(self, init):
        self.init = init
        self.res_path = os.path.join(HERE, f"results_{init}.json")
        self.results = json.load(open(self.res_path)) if os.path.exists(self.res_path) else {}
        cfg = UNet2DConditionModel.load_config(UNET_DIR)
        t0 = time.time()
        torch.manual_seed(0)
        self.model = UNet2DConditionModel.from_config(cfg).float().eval()
        print(f"[{init}] built model in {time.time()-t0:.1f}s", flush=True)
        t0 = time.time()
        self.packed = packed_weights(self.model)
        if init == "a":
            files = self.dump_init_a()
        else:
            self.load_synth()
            files = [SYNTH_FILE]
        self.src = {}                                     # name -> safe_open handle
        for fn in files:
            h = safe_open(fn, "pt")
            self.src.update({k: h for k in h.keys()})
        self.index = {n: i for i, n in enumerate(self.packed)}
        self.state = {n: "orig" for n in self.packed}   # what each packed param holds now
        self.q8cache = {}                                 # block -> {name: (codes, d)}
        self.errsq, self.wsq = {}, {}                     # per-weight squared errors / norms
        print(f"[{init}] weights ready in {time.time()-t0:.1f}s", flush=True)
        self.inputs = make_inputs()
        self.ref = None
        n_all = sum(p.numel() for p in self.packed.values())
        fr = {g: sum(p.numel() for n, p in self.packed.items() if fn(n)) / n_all
              for g, fn in GROUPS.items()}
        fr["(none of i-vii)"] = sum(p.numel() for n, p in self.packed.items()
                                    if not any(fn(n) for fn in GROUPS.values())) / n_all
        self.results["packed_params"] = n_all
        self.results["group_fraction"] = fr
        self.save()
        print(f"[{init}] packed params {n_all/1e9:.3f}G in {len(self.packed)} tensors; "
              f"fractions {json.dumps({k: round(v, 4) for k, v in fr.items()})}", flush=True)

    def dump_init_a(self, shard_bytes=1 << 30):
        """Write the packed fp32 weights of init a to ~1 GB shards (save_file
        serialises in memory, so one 10 GB file would double the RAM)."""
        files, shard, size = [], {}, 0
        names = list(self.packed)
        for i, n in enumerate(names + [None]):
            if n is not None:
                shard[n] = self.packed[n].detach()
                size += shard[n].numel() * 4
            if shard and (n is None or size >= shard_bytes):
                fn = INIT_A_FILE.replace(".safetensors", f"-{len(files):03d}.safetensors")
                if not os.path.exists(fn):
                    save_file(shard, fn)
                files.append(fn)
                shard, size = {}, 0
        return files

    def load_synth(self):
        model_sd = self.model.state_dict()
        with safe_open(SYNTH_FILE, "pt") as f:
            fkeys = set(f.keys())
            missing = sorted(set(model_sd) - fkeys)
            unexpected = sorted(fkeys - set(model_sd))
            print(f"[b] missing keys: {missing}\n[b] unexpected keys: {unexpected}", flush=True)
            self.results["load_missing"], self.results["load_unexpected"] = missing, unexpected
            assert not missing and not unexpected
            with torch.no_grad():
                for k in fkeys:
                    t = f.get_tensor(k)
                    assert t.shape == model_sd[k].shape, k
                    model_sd[k].copy_(t.float())

    def save(self):
        json.dump(self.results, open(self.res_path, "w"), indent=1)

    def orig(self, name):
        return self.src[name].get_tensor(name).float()

    def q8(self, name, block):
        cache = self.q8cache.setdefault(block, {})
        if name not in cache:
            w = self.orig(name)
            cache[name] = q8_codes(w.reshape(w.shape[0], -1), block)
        return cache[name]

    def value(self, name, fmt):
        p = self.packed[name]
        if fmt == "orig":
            return self.orig(name)
        w2 = self.orig(name).reshape(p.shape[0], -1)
        if fmt == "bf16":
            v = fmt_bf16(w2)
        elif fmt == "f8":
            v = fmt_f8(w2)
        elif fmt == "f8trunc":
            v = fmt_f8_trunc(w2)
        elif fmt.startswith("noise"):   # "noise<eps>_<seed>": w + eps*rms(row)*N(0,1)
            eps, seed = fmt[5:].split("_")
            g = torch.Generator().manual_seed(int(seed) * 100003 + self.index[name])
            rms = w2.pow(2).mean(1, keepdim=True).sqrt()
            v = w2 + float(eps) * rms * torch.randn(w2.shape, generator=g)
        elif fmt.startswith("q8"):
            block = int(fmt[2:] or 32)
            codes, d = self.q8(name, block)
            v = q8_dequant(codes, d, w2.shape[1])
        return v.reshape(p.shape)

    @torch.no_grad()
    def set_formats(self, fmt_of):
        """fmt_of: name -> format. Rewrites only params whose format changes.
        Returns the per-weight RMS relative error over all packed weights."""
        num = den = 0.0
        for n, p in self.packed.items():
            fmt = fmt_of(n)
            if self.state[n] != fmt:
                v = self.value(n, fmt)
                if (n, fmt) not in self.errsq:
                    w = self.orig(n)
                    self.errsq[n, fmt] = (v - w).double().pow(2).sum().item()
                    self.wsq[n] = w.double().pow(2).sum().item()
                p.copy_(v)
                self.state[n] = fmt
            num += 0.0 if fmt == "orig" else self.errsq[n, fmt]
            if n not in self.wsq:
                self.wsq[n] = self.orig(n).double().pow(2).sum().item()
            den += self.wsq[n]
        return (num / den) ** 0.5

    @torch.no_grad()
    def forward(self):
        inp = self.inputs
        t0 = time.time()
        out = self.model(inp["sample"], inp["timestep"], inp["encoder_hidden_states"],
                         added_cond_kwargs=inp["added_cond_kwargs"]).sample
        return out, time.time() - t0

    def run(self, key, fmt_of):
        if key in self.results and self.ref is not None:
            print(f"[{self.init}] {key}: cached {self.results[key]}", flush=True)
            return
        t0 = time.time()
        werr = self.set_formats(fmt_of)
        tq = time.time() - t0
        out, tf = self.forward()
        if self.ref is None:
            assert key == "f32"
            self.ref = out
            r = dict(ref_absmax=out.abs().max().item(), ref_rms=out.pow(2).mean().sqrt().item())
        else:
            diff = out - self.ref
            r = dict(max_rel=(diff.abs().max() / self.ref.abs().max()).item(),
                     rms_rel=(diff.norm() / self.ref.norm()).item())
        r.update(w_rms_rel=werr, t_forward_s=round(tf, 2), t_setweights_s=round(tq, 2),
                 peak_rss_gb=round(peak_rss_gb(), 2), finite=bool(torch.isfinite(out).all()))
        self.results[key] = r
        self.save()
        print(f"[{self.init}] {key}: {r}", flush=True)


def main():
    global HERE, UNET_DIR, SYNTH_FILE, INIT_A_FILE
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", choices=["a", "b"], required=True)
    ap.add_argument("--unet", required=True, help="unet folder of a synthesized SDXL")
    ap.add_argument("--out", required=True, help="folder for results and the init-a weight dump")
    ap.add_argument("--no-groups", action="store_true")
    ap.add_argument("--block16", action="store_true")
    ap.add_argument("--f8trunc", action="store_true", help="diagnostic: F8 rounded toward zero")
    ap.add_argument("--noise", action="store_true",
                    help="diagnostic: Gaussian weight noise (0.5%% x3 seeds, 0.25%%) -> amplification")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    HERE = os.path.abspath(args.out)
    UNET_DIR = os.path.abspath(args.unet)
    SYNTH_FILE = os.path.join(UNET_DIR, "diffusion_pytorch_model.safetensors")
    INIT_A_FILE = os.path.join(HERE, "init_a_fp32.safetensors")
    s = Study(args.init)

    s.run("f32", lambda n: "orig")
    for fmt in ["bf16", "f8", "q8"]:
        s.run(fmt, lambda n, fmt=fmt: fmt)
    if not args.no_groups:
        for g, fn in GROUPS.items():   # one group kept float32, the rest Q8
            s.run(f"q8_except_{g}", lambda n, fn=fn: "orig" if fn(n) else "q8")
        for g, fn in GROUPS.items():   # only that group Q8, the rest float32
            s.run(f"q8_only_{g}", lambda n, fn=fn: "q8" if fn(n) else "orig")
    if args.block16:
        s.q8cache.pop(32, None)
        s.run("q8_block16", lambda n: "q816")
    if args.f8trunc:
        s.run("f8trunc", lambda n: "f8trunc")
    if args.noise:
        for fmt in ["noise0.005_0", "noise0.005_1", "noise0.005_2", "noise0.0025_0"]:
            s.run(fmt, lambda n, fmt=fmt: fmt)
    print(f"[{args.init}] done, peak RSS {peak_rss_gb():.2f} GB", flush=True)


if __name__ == "__main__":
    main()
