#!/usr/bin/env python3
"""Trains vramfit's demo model: a tiny Stable Diffusion 1.x pipeline that draws coloured shapes.

The model `vramfit generate` uses when no --model is given (models/demo in the
source tree). It has SD1.5's architecture at toy size, so that the C pipeline
runs it through exactly the code paths of a real checkpoint: a CLIPTextModel
(hidden 64, 3 layers) over a vocabulary of its own (tools/demo/vocab.py), a
UNet2DConditionModel (64/96/128 channels, cross-attention at every level) on
8x8x4 latents, and an AutoencoderKL with SD's 4 levels (64x64 RGB <-> 8x8x4,
scale 8, which vramfit's planner assumes), plus a DDIM scheduler with SD's
scaled_linear betas and trailing timesteps. Weights are saved as float16
safetensors in the diffusers folder layout (about 14.5 MB).

Everything is shaped for a short run on one GPU (about 6 minutes on an H100):
the captioned pictures are drawn on the device for every batch
(tools/demo/data.py), so nothing waits on a data loader; training is in two
phases inside one wall-clock budget (--minutes, counted from the start of the
process, with time kept back for saving and a check):

 1. the VAE (--vae-share of the time): L1 + MSE reconstruction of posterior
    samples plus a small KL term. Afterwards the latents' per-channel mean is
    folded into quant_conv / post_quant_conv (the decoder computes the same
    function; the latents become centred) and scaling_factor is set to
    1/std of the latents, as SD's 0.18215 was.
 2. the UNet and the text encoder together, on latents of the frozen VAE, with
    the epsilon-prediction DDPM loss (min-SNR-5 weighted), captions replaced by
    the empty prompt 10% of the time so that classifier-free guidance works,
    and an EMA of the weights, which is what is saved.

bf16 autocast on CUDA, float32 on the CPU. Learning rates follow the clock
(warm-up, then cosine to 10%), so a run of any length ends annealed. At the
end the script samples the saved (float16-rounded) weights for --eval captions
with 20 DDIM steps and guidance 7.5, measures each picture with
data.describe() and prints how many match their caption; a grid of them goes
to --samples (default OUT-samples.png).

usage: python tools/demo/train.py --out DIR [--minutes 6] [--device cuda|cpu] [--seed 0]
           [--batch N] [--vae-batch N] [--lr X] [--vae-share F] [--eval N] [--samples PNG]
Needs torch, diffusers and transformers (with their own dependencies: numpy,
safetensors, huggingface_hub, Pillow). A tool, not a product dependency.
"""
import time

T_START = time.time()  # the budget counts from here, imports included

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import vocab as vocab_mod  # noqa: E402

SIZE = 64
LATENT = 8
BETA_START, BETA_END, TRAIN_STEPS = 0.00085, 0.012, 1000
CFG_DROP = 0.1
MIN_SNR_GAMMA = 5.0


def log(msg):
    print(f"[{time.time() - T_START:6.1f}s] {msg}", flush=True)


def make_models(vocab_size, bos, eos):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[32, 64, 64, 64], layers_per_block=1, norm_num_groups=16,
        act_fn="silu", sample_size=SIZE, scaling_factor=1.0)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=vocab_mod.CONTEXT, hidden_act="quick_gelu",
        projection_dim=64, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos))
    unet = UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4,
        down_block_types=["CrossAttnDownBlock2D"] * 3, up_block_types=["CrossAttnUpBlock2D"] * 3,
        block_out_channels=[64, 96, 128], layers_per_block=1, cross_attention_dim=64,
        attention_head_dim=4, norm_num_groups=16)
    return vae, text, unet


def scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=TRAIN_STEPS, beta_start=BETA_START, beta_end=BETA_END,
        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        prediction_type="epsilon", timestep_spacing="trailing")


def lr_at(base, step, warmup, frac):
    """Linear warm-up over `warmup` steps, then cosine from base to base/10 as
    frac (the share of the phase's time used) goes 0 -> 1."""
    w = min(1.0, (step + 1) / warmup)
    return base * w * (0.1 + 0.45 * (1 + math.cos(math.pi * min(frac, 1.0))))


def count(m):
    return sum(p.numel() for p in m.parameters())


class Phase:
    """A loop bounded by wall-clock time, with progress lines every ~10 s.
    Losses are summed on the device and read back only for a progress line,
    so the host never waits for the GPU inside the loop."""

    def __init__(self, name, seconds):
        self.name, self.t0, self.seconds = name, time.time(), max(seconds, 1.0)
        self.step, self.acc, self.n, self.last = 0, 0.0, 0, self.t0

    def frac(self):
        return (time.time() - self.t0) / self.seconds

    def running(self):
        return self.frac() < 1.0

    def tick(self, loss, extra=None):
        """loss: a 0-dim tensor; extra: a function of the mean loss giving more text."""
        self.step += 1
        self.acc = self.acc + loss.detach().float()
        self.n += 1
        now = time.time()
        if now - self.last >= 10 or self.step == 1:
            mean = float(self.acc) / self.n
            log(f"{self.name} step {self.step} ({self.step / max(now - self.t0, 1e-9):.1f} it/s) "
                f"loss {mean:.5f}{extra() if extra else ''}")
            self.acc, self.n, self.last = 0.0, 0, now


def train_vae(vae, args, dev, gen, seconds, autocast):
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0, betas=(0.9, 0.99),
                            fused=dev.type == "cuda")
    ph = Phase("vae", seconds)
    while ph.running():
        lr = lr_at(args.vae_lr, ph.step, 100, ph.frac())
        for g in opt.param_groups:
            g["lr"] = lr
        x, _ = data.batch(args.vae_batch, gen, dev, SIZE)
        with autocast():
            post = vae.encode(x).latent_dist
            y = vae.decode(post.sample()).sample
        y = y.float()
        mse = F.mse_loss(y, x)
        loss = mse + F.l1_loss(y, x) + args.kl * post.kl().mean() / (4 * LATENT * LATENT)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        # PSNR of [0,1] pictures: the range [-1,1] is 2 wide, hence the 4.
        ph.tick(loss, lambda: f" psnr {10 * math.log10(4 / max(mse.item(), 1e-10)):.1f} dB")
    log(f"vae: {ph.step} steps in {time.time() - ph.t0:.0f} s")


@torch.no_grad()
def center_latents(vae, dev, gen, autocast, batches, n):
    """Folds the latents' per-channel mean into the VAE and sets
    scaling_factor to 1/std, so that scaled latents are centred with unit
    variance, as the diffusion loss assumes."""
    vae.eval()
    zs = []
    for _ in range(batches):
        x, _ = data.batch(n, gen, dev, SIZE)
        with autocast():
            zs.append(vae.encode(x).latent_dist.sample().float())
    with autocast():
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample.float()
    log(f"vae: reconstruction of fresh pictures {10 * math.log10(4 / max(F.mse_loss(y, x).item(), 1e-10)):.1f} dB PSNR")
    z = torch.cat(zs)
    mu = z.mean(dim=(0, 2, 3))
    std = (z - mu[None, :, None, None]).std().item()
    vae.quant_conv.bias[:4] -= mu
    w = vae.post_quant_conv.weight[:, :, 0, 0]
    vae.post_quant_conv.bias += w @ mu
    sf = 1.0 / std
    vae.register_to_config(scaling_factor=sf)
    log(f"latents: per-channel mean {[round(v, 3) for v in mu.tolist()]} folded in, std {std:.4f}, "
        f"scaling_factor {sf:.5f}")
    return sf


def encode_latents(vae, x, sf, autocast):
    with torch.no_grad(), autocast():
        return vae.encode(x).latent_dist.sample().float() * sf


def train_unet(unet, text, vae, sf, ids_table, args, dev, gen, seconds, autocast):
    unet.train()
    text.train()
    betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, TRAIN_STEPS, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0).float().to(dev)
    snr = abar / (1 - abar)
    weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr  # min-SNR-gamma for epsilon prediction
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99), fused=dev.type == "cuda")
    ema = [p.detach().clone().float() for p in params]
    empty = ids_table.shape[0] - 1
    ph = Phase("unet", seconds)
    while ph.running():
        lr = lr_at(args.lr, ph.step, 200, ph.frac())
        for g in opt.param_groups:
            g["lr"] = lr
        x, cap = data.batch(args.batch, gen, dev, SIZE)
        drop = torch.rand(cap.shape[0], generator=gen, device=dev) < CFG_DROP
        ids = ids_table[torch.where(drop, torch.full_like(cap, empty), cap)]
        z0 = encode_latents(vae, x, sf, autocast)
        t = torch.randint(0, TRAIN_STEPS, (z0.shape[0],), generator=gen, device=dev)
        eps = torch.randn(z0.shape, generator=gen, device=dev)
        a = abar[t][:, None, None, None]
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        with autocast():
            ctx = text(ids).last_hidden_state
            pred = unet(zt, t, encoder_hidden_states=ctx).sample
        per = ((pred.float() - eps) ** 2).mean(dim=(1, 2, 3))
        loss = (per * weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + ph.step) / (10 + ph.step))
        with torch.no_grad():
            torch._foreach_mul_(ema, decay)
            torch._foreach_add_(ema, [p.detach() for p in params], alpha=1 - decay)
        ph.tick(loss, lambda: f" lr {lr:.2e}")
    log(f"unet: {ph.step} steps in {time.time() - ph.t0:.0f} s")
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)


def write_model_index(out, diffusers_version):
    idx = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers_version,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(idx, f, indent=2)
        f.write("\n")


def save_text_encoder(m, path):
    """config.json and model.safetensors with the published key names
    (text_model.*). transformers 5.24's save_pretrained drops the text_model.
    prefix (its CLIPTextModel has no such submodule any more), which files on
    the Hub, older transformers and vramfit's loader do not expect; every
    version loads the prefixed form."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    m.config.save_pretrained(path)
    sd = {k if k.startswith("text_model.") else "text_model." + k: v.contiguous()
          for k, v in m.state_dict().items() if not k.endswith("position_ids")}
    save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def save(out, vae, text, unet):
    """float16 copies in the diffusers layout; returns the models rounded to
    float16 and back to float32 (what the C pipeline computes with)."""
    import diffusers

    os.makedirs(out, exist_ok=True)
    vocab_mod.write(os.path.join(out, "tokenizer"))
    rounded = []
    for name, m in (("vae", vae), ("text_encoder", text), ("unet", unet)):
        h = copy.deepcopy(m).to("cpu", torch.float16)
        if name == "text_encoder":
            save_text_encoder(h, os.path.join(out, name))
        else:
            h.save_pretrained(os.path.join(out, name), safe_serialization=True)
        rounded.append(h.float())
    scheduler().save_pretrained(os.path.join(out, "scheduler"))
    write_model_index(out, diffusers.__version__)
    total = 0
    for root, _, files in os.walk(out):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    log(f"saved {out}: {total / 1e6:.2f} MB")
    return rounded


@torch.no_grad()
def sample(vae, text, unet, ids, neg_ids, seed, steps=20, cfg=7.5):
    """Pictures (n,3,64,64) in [-1,1] for prompt ids (n,77), diffusers' DDIM
    loop with classifier-free guidance (noise from one CPU generator)."""
    dev = ids.device
    sch = scheduler()
    sch.set_timesteps(steps)
    n = ids.shape[0]
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn((n, 4, LATENT, LATENT), generator=g).to(dev) * sch.init_noise_sigma
    ctx = text(torch.cat([neg_ids.expand(n, -1), ids])).last_hidden_state
    for t in sch.timesteps:
        e = unet(torch.cat([lat, lat]), t.to(dev), encoder_hidden_states=ctx).sample
        eu, ec = e.chunk(2)
        lat = sch.step(eu + cfg * (ec - eu), t, lat).prev_sample
    return vae.decode(lat / vae.config.scaling_factor).sample


def evaluate(models, ids_table, captions, args, dev):
    vae, text, unet = (m.to(dev).eval() for m in models)
    n = min(args.eval, len(captions))
    pick = torch.linspace(0, len(captions) - 1, n).round().long().tolist()
    ids = ids_table[pick]
    imgs = torch.cat([sample(vae, text, unet, ids[i:i + 64], ids_table[-1:], args.seed + i)
                      for i in range(0, n, 64)])
    u8 = data.to_uint8(imgs)
    ok = 0
    for k, i in enumerate(pick):
        good = data.matches(data.describe(u8[k]), captions[i])
        ok += good
        if not good and k < 24:
            log(f"  miss: {captions[i]!r}")
    data.write_png(args.samples, data.grid(u8, int(math.ceil(math.sqrt(n)))))
    log(f"check: {ok}/{n} samples match their captions (20 DDIM steps, cfg 7.5); grid in {args.samples}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="the diffusers folder to write")
    ap.add_argument("--minutes", type=float, default=6.0, help="wall-clock budget, whole run (default 6)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=0, help="UNet batch (default 512 on CUDA, 16 on the CPU)")
    ap.add_argument("--vae-batch", type=int, default=0, help="VAE batch (default 128 on CUDA, 8 on the CPU)")
    ap.add_argument("--lr", type=float, default=5e-4, help="UNet and text encoder learning rate")
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--kl", type=float, default=1e-4, help="weight of the KL term (per latent element)")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--vae-share", type=float, default=0.28, help="share of the training time for the VAE")
    ap.add_argument("--reserve", type=float, default=0, help="seconds kept back for saving and the check "
                    "(default 30 on CUDA, 45 on the CPU)")
    ap.add_argument("--eval", type=int, default=None, help="captions sampled for the final check "
                    "(default 72 on CUDA, 8 on the CPU; 0: no check)")
    ap.add_argument("--samples", help="PNG grid of the check's pictures (default OUT-samples.png)")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    args.batch = args.batch or (512 if cuda else 16)
    args.vae_batch = args.vae_batch or (128 if cuda else 8)
    args.reserve = args.reserve or (30.0 if cuda else 45.0)
    args.eval = (72 if cuda else 8) if args.eval is None else args.eval
    args.samples = args.samples or args.out.rstrip("/") + "-samples.png"
    deadline = T_START + args.minutes * 60

    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        import contextlib

        def autocast():
            return contextlib.nullcontext()
    gen = torch.Generator(device=dev).manual_seed(args.seed + 1)

    voc, _ = vocab_mod.vocabulary()
    captions = data.caption_table()[0]
    ids_table = torch.tensor([vocab_mod.encode(c, voc) for c in captions + [""]], device=dev)
    vae, text, unet = make_models(len(voc), voc[vocab_mod.BOS], voc[vocab_mod.EOS])
    log(f"device {dev} ({torch.cuda.get_device_name(dev) if cuda else 'cpu'}), torch {torch.__version__}; "
        f"params: vae {count(vae):,}, text encoder {count(text):,}, unet {count(unet):,}; "
        f"{len(captions)} captions, vocabulary {len(voc)}")
    vae, text, unet = vae.to(dev), text.to(dev), unet.to(dev)

    left = deadline - time.time() - args.reserve
    if left < 10:
        sys.exit(f"train.py: --minutes {args.minutes} leaves {left:.0f} s to train; give more")
    train_vae(vae, args, dev, gen, left * args.vae_share, autocast)
    sf = center_latents(vae, dev, gen, autocast, 8, 256 if cuda else 16)
    vae.requires_grad_(False)
    train_unet(unet, text, vae, sf, ids_table, args, dev, gen, deadline - time.time() - args.reserve, autocast)
    models = save(args.out, vae, text, unet)
    if args.eval > 0:
        evaluate(models, ids_table, captions, args, dev)
    log(f"done in {time.time() - T_START:.0f} s (budget {args.minutes * 60:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
