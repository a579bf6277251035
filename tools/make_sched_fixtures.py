#!/usr/bin/env python3
"""Writes the random-generator and scheduler fixtures in tests/data/sched/.

Needs torch (CPU) and diffusers; the C tests only read the JSON this writes.

  randn.json     torch.randn / torch.rand with torch.Generator().manual_seed(S) for
                 several seeds and sizes (both the n < 16 double path and the
                 vectorised n >= 16 path), a sequence of draws from one generator,
                 and, for a 4x128x128 latent, the first and last 64 values plus an
                 FNV-1a hash of all the float32 bytes.
  <case>.json    one scheduler run: the scheduler_config given to the C code, the
                 sampler override, timesteps, sigmas, init_noise_sigma, and the
                 latents after every step of a synthetic denoising loop:
                     latents = randn(shape, generator) * init_noise_sigma
                     for t in timesteps:
                         x_in = scheduler.scale_model_input(latents, t)
                         model_out = 0.1 * x_in + pattern(step)
                         latents = scheduler.step(model_out, t, latents, generator).prev_sample
                 with pattern(i)[j] = (((7*j + 3*i) % 11) - 5) * 0.0625 (exact in
                 float32, so C computes the same model_out). Euler, Euler ancestral,
                 DDIM, DPM++ (2M Karras and the DPM-Solver options) and PNDM (PLMS),
                 from the tiny reference pipelines' scheduler configs and variants.
  index.json     the list of cases.

The x86-64 torch build is the reference: its AVX2 randn kernel is what the C
generator reproduces bit for bit (torch without AVX2 differs in the last bit).

Usage: python3 tools/make_sched_fixtures.py [--out tests/data/sched]
"""
import argparse
import inspect
import json
import os

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, PNDMScheduler)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("VF_SHARED", os.path.join(os.path.dirname(REPO), "shared"))

CLASSES = {
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "DDIMScheduler": DDIMScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
    "PNDMScheduler": PNDMScheduler,
}
# What vramfit's --sampler overrides mean, as diffusers calls: Class.from_config(cfg, **kw).
SAMPLERS = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler,
                 {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++", "solver_order": 2}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
}


def f32(v):
    """A float32 value as the shortest JSON number that still reads back as exactly
    that float32: 9 significant digits put the decimal well inside the float's
    rounding interval, so even decimal -> double -> float cannot land elsewhere."""
    return float("%.9g" % v)


def floats(t):
    return [f32(v) for v in t.detach().to(torch.float32).reshape(-1).tolist()]


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def make_randn():
    cases = []
    for seed in [0, 1, 42, 1234, 2**32 + 1234, 2**63 + 5, 0xFFFFFFFF]:
        for n in [1, 2, 5, 15, 16, 17, 31, 64, 100]:
            g = torch.Generator().manual_seed(seed)
            cases.append({"seed": str(seed), "n": n, "values": floats(torch.randn(n, generator=g))})
    g = torch.Generator().manual_seed(1234)
    big = torch.randn((1, 4, 128, 128), generator=g).reshape(-1)
    raw = big.numpy().astype("<f4").tobytes()
    # Draws of several sizes from one generator: the n < 16 path caches the second
    # value of each Box-Muller pair in the generator; the n >= 16 path ignores it.
    g = torch.Generator().manual_seed(7)
    calls = [1, 1, 3, 16, 1, 5, 17, 2, 15, 1]
    seq = [floats(torch.randn(n, generator=g)) for n in calls]
    g = torch.Generator().manual_seed(99)
    rand = floats(torch.rand(40, generator=g))
    return {
        "torch_version": torch.__version__,
        "cases": cases,
        "big": {"seed": "1234", "n": big.numel(), "first": floats(big[:64]), "last": floats(big[-64:]),
                "fnv1a64": fnv1a64(raw)},
        "sequence": {"seed": "7", "calls": calls, "values": seq},
        "rand": {"seed": "99", "values": rand},
    }


def make_scheduler(config, sampler):
    if sampler == "default":
        return CLASSES[config["_class_name"]].from_config(config)
    cls, kw = SAMPLERS[sampler]
    return cls.from_config(config, **kw)


def pattern(i, n):
    return torch.tensor([(((7 * j + 3 * i) % 11) - 5) * 0.0625 for j in range(n)], dtype=torch.float32)


def run_case(name, config, sampler, steps, shape, seed):
    s = make_scheduler(config, sampler)
    s.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=g)
    ins = s.init_noise_sigma
    latents = noise * ins
    n = noise.numel()
    first_scaled = None
    after = []
    for i, t in enumerate(s.timesteps):
        x_in = s.scale_model_input(latents, t)
        if i == 0:
            first_scaled = floats(x_in)
        model_out = 0.1 * x_in + pattern(i, n).reshape(shape)
        kw = {"generator": g} if "generator" in inspect.signature(s.step).parameters else {}
        latents = s.step(model_out, t, latents, **kw).prev_sample
        after.append(floats(latents))
    sigmas = floats(s.sigmas) if getattr(s, "sigmas", None) is not None and not isinstance(s, DDIMScheduler) else None
    return {
        "name": name,
        "class": type(s).__name__,
        "config": config,
        "sampler": sampler,
        "steps": steps,
        "seed": seed,
        "shape": list(shape),
        "timesteps": [f32(t) for t in s.timesteps.tolist()],
        "sigmas": sigmas,
        "init_noise_sigma": f32(ins),
        "noise": floats(noise),
        "scaled_input0": first_scaled,
        "latents": after,
    }


def load_config(which):
    path = os.path.join(SHARED, "reference", which, "diffusers", "scheduler", "scheduler_config.json")
    with open(path) as f:
        return json.load(f)


def cases():
    xl = load_config("tiny-sdxl")     # EulerDiscreteScheduler, leading, steps_offset 1
    sd = load_config("tiny-sd15")     # DDIMScheduler, leading, steps_offset 1
    shape = (1, 4, 4, 4)
    odd = (1, 4, 5, 5)                # 100 values: exercises randn's recomputed tail
    out = []
    for steps in (4, 10):
        out.append(("euler_xl_%d" % steps, xl, "default", steps, shape))
        out.append(("euler_a_xl_%d" % steps, xl, "euler_a", steps, odd))
        out.append(("ddim_sd_%d" % steps, sd, "default", steps, shape))
        out.append(("dpmpp_2m_sd_%d" % steps, sd, "dpmpp_2m", steps, shape))
        out.append(("dpmpp_2m_xl_%d" % steps, xl, "dpmpp_2m", steps, shape))
    out.append(("dpmpp_2m_xl_20", xl, "dpmpp_2m", 20, shape))
    out.append(("euler_sd_7", sd, "euler", 7, shape))
    out.append(("ddim_xl_7", xl, "ddim", 7, shape))
    # Variants of the options the schedulers read.
    out.append(("euler_trailing_v_6", dict(xl, timestep_spacing="trailing", prediction_type="v_prediction"),
                "default", 6, shape))
    out.append(("euler_linspace_5", dict(xl, timestep_spacing="linspace"), "default", 5, shape))
    out.append(("euler_karras_8", dict(xl, use_karras_sigmas=True), "default", 8, shape))
    out.append(("euler_exp_sigmamin_6", dict(xl, use_exponential_sigmas=True, final_sigmas_type="sigma_min"),
                "default", 6, shape))
    out.append(("euler_zsnr_v_5", dict(xl, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                       prediction_type="v_prediction"), "default", 5, shape))
    out.append(("euler_a_linear_cos_6", dict(xl, beta_schedule="squaredcos_cap_v2", timestep_spacing="linspace"),
                "euler_a", 6, odd))
    out.append(("euler_a_v_trailing_5", dict(xl, prediction_type="v_prediction", timestep_spacing="trailing"),
                "euler_a", 5, odd))
    out.append(("ddim_trailing_v_clip_6", dict(sd, timestep_spacing="trailing", prediction_type="v_prediction",
                                               set_alpha_to_one=True, clip_sample=True), "default", 6, shape))
    out.append(("ddim_linspace_linear_5", dict(sd, timestep_spacing="linspace", beta_schedule="linear",
                                               beta_start=0.0001, beta_end=0.02), "default", 5, shape))
    out.append(("ddim_sample_zsnr_4", dict(sd, prediction_type="sample", rescale_betas_zero_snr=True,
                                           timestep_spacing="trailing"), "default", 4, shape))
    dpm = dict(sd, _class_name="DPMSolverMultistepScheduler")
    for k in ("clip_sample", "clip_sample_range", "set_alpha_to_one"):
        dpm.pop(k)
    out.append(("dpm_leading_6", dpm, "default", 6, shape))
    out.append(("dpm_linspace_heun_sigmamin_6", dict(dpm, timestep_spacing="linspace", solver_type="heun",
                                                     final_sigmas_type="sigma_min"), "default", 6, shape))
    out.append(("dpm_trailing_v_16", dict(dpm, timestep_spacing="trailing", prediction_type="v_prediction"),
                "default", 16, shape))
    out.append(("dpm_order1_karras_5", dict(dpm, solver_order=1, use_karras_sigmas=True), "default", 5, shape))
    out.append(("dpm_cos_clipped_6", dict(dpm, beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1,
                                          timestep_spacing="linspace"), "default", 6, shape))
    out.append(("dpm_exp_sigmamin_16", dict(dpm, use_exponential_sigmas=True, final_sigmas_type="sigma_min",
                                            lower_order_final=True), "default", 16, shape))
    # Stable Diffusion 1.x's published scheduler: PNDM with PLMS steps.
    pndm = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
            "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False}
    out.append(("pndm_sd_4", pndm, "default", 4, shape))
    out.append(("pndm_sd_10", pndm, "default", 10, shape))
    out.append(("pndm_1", pndm, "default", 1, shape))
    out.append(("pndm_v_trailing_6", dict(pndm, prediction_type="v_prediction", timestep_spacing="trailing",
                                          set_alpha_to_one=True), "default", 6, shape))
    out.append(("pndm_linspace_xl_5", dict(xl, timestep_spacing="linspace"), "pndm", 5, shape))
    # numpy.arange gives 62 trailing timesteps for 61 steps; diffusers runs them all.
    out.append(("euler_trailing_61", dict(xl, timestep_spacing="trailing"), "default", 61, (1, 1, 2, 2)))
    out.append(("euler_a_leading_3", xl, "euler_a", 3, odd))
    return out


# Cases whose latents are compared more loosely, and why.
TOLERANCE = {
    # Zero terminal SNR puts sigma_max at sqrt(2^24 - 1), within 1e-9 ulp of a float32
    # rounding tie: torch's sqrt (MKL) rounds it to 4096, a correctly rounded sqrt to
    # 4096 - 2^-12. The first Euler step then cancels values of ~4096 * noise down to
    # ~10, turning that one-ulp difference into ~6e-5 relative error in the latents.
    "euler_zsnr_v_5": 1e-4,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "sched"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "randn.json"), "w") as f:
        json.dump(make_randn(), f, separators=(",", ":"))
    names = []
    for name, config, sampler, steps, shape in cases():
        case = run_case(name, config, sampler, steps, shape, seed=42)
        if name in TOLERANCE:
            case["tolerance"] = TOLERANCE[name]
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            json.dump(case, f, separators=(",", ":"))
        names.append(name)
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump({"cases": names}, f, indent=1)
    print("wrote %d scheduler cases and randn.json to %s" % (len(names), args.out))


if __name__ == "__main__":
    main()
