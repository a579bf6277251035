"""diffusers baseline for bench/gpu.sh: the SDXL UNet step and the VAE decode on this card.

Loads the UNet and the VAE of a diffusers folder (the `vramfit synth --arch sdxl
--preset full --dtype f16` model vramfit is benchmarked on) in float16, eager
(default attention processor: PyTorch SDPA), and times with CUDA events:
- one denoising step's UNet call at batch 2 (classifier-free guidance), latents
  (2,4,H/8,W/8), 77-token context of width 2048, SDXL text_time conditioning;
  median of 20 after 5 warm-ups;
- the VAE decode of one (1,4,H/8,W/8) latent; median of 5 after 2 warm-ups,
  peak = torch.cuda.max_memory_allocated() during one decode (weights included).
Inputs are random normal (never zeros). Prints one JSON object last.
"""
import json
import statistics
import sys

import torch

try:
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
except Exception as exc:  # the GPU image has no diffusers unless it is carried
    print(json.dumps({"error": f"diffusers not importable: {exc}"}))
    sys.exit(3)


def time_ms(fn, warm, reps):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    e0 = torch.cuda.Event(enable_timing=True)
    e1 = torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(reps):
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1))
    return statistics.median(ts), min(ts), max(ts)


def main():
    folder = sys.argv[1]
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    dev = torch.device("cuda")
    h = w = size // 8
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "diffusers": diffusers.__version__, "size": size}
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        unet = UNet2DConditionModel.from_pretrained(folder + "/unet", torch_dtype=torch.float16).to(dev).eval()
        x = torch.randn(2, 4, h, w, generator=g, device=dev, dtype=torch.float16)
        ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g, device=dev, dtype=torch.float16)
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        cond = {"text_embeds": torch.randn(2, pooled, generator=g, device=dev, dtype=torch.float16),
                "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=dev, dtype=torch.float16)}
        t = torch.tensor([500.0, 500.0], device=dev)

        def step():
            return unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=cond).sample

        torch.cuda.reset_peak_memory_stats()
        med, lo, hi = time_ms(step, 5, 20)
        out.update(unet_step_ms=med, unet_step_min_ms=lo, unet_step_max_ms=hi,
                   unet_peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                   unet_params=sum(p.numel() for p in unet.parameters()),
                   unet_finite=bool(torch.isfinite(step()).all()))
        del unet
        torch.cuda.empty_cache()

        vae = AutoencoderKL.from_pretrained(folder + "/vae", torch_dtype=torch.float16).to(dev).eval()
        z = torch.randn(1, 4, h, w, generator=g, device=dev, dtype=torch.float16)

        def decode():
            return vae.decode(z).sample

        med, lo, hi = time_ms(decode, 2, 5)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        decode()
        torch.cuda.synchronize()
        out.update(vae_decode_ms=med, vae_decode_min_ms=lo, vae_decode_max_ms=hi,
                   vae_peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                   vae_weights_bytes=base)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
