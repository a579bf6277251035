"""IntelligentGenerationPipeline on the CPU and the simulated device.

Parity: the Python result is the C result (the bytes `vramfit generate` writes
for the same seed) and the diffusers reference image within 1/255; running the
stages one by one gives the whole run's image; cancellation and C errors raise.
"""

import json
import os

import pytest

import vramfit
from vramfit import GenerationStep, OffloadStrategy
from conftest import read_png, read_safetensors, run_cli

DEVICES = ["cpu", "sim"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_generate_equals_the_command(tiny, cli, tmp_path, device, arch):
    out = tmp_path / "cli.png"
    run_cli(cli, "generate", "--model", tiny[arch], "--prompt", "a red circle on a blue background",
            "--negative", "blurry", "--steps", 3, "--cfg", 6, "--seed", 42, "--device", device,
            "--quiet", "--output", out)
    w, h, rgb, _ = read_png(out)
    pipe = vramfit.IntelligentGenerationPipeline(tiny[arch], device=device)
    img = pipe.generate("a red circle on a blue background", negative_prompt="blurry", steps=3,
                        guidance_scale=6, seed=42)
    assert (img.width, img.height) == (w, h) == (64, 64)
    assert img.rgb == rgb
    assert len(img.pixels) == w * h * 3
    # The saved PNG holds the same pixels and the generation record.
    saved = tmp_path / "py.png"
    img.save(saved)
    w2, h2, rgb2, texts = read_png(saved)
    assert (w2, h2, rgb2) == (w, h, rgb)
    assert texts["parameters"].startswith("a red circle on a blue background\nNegative prompt: blurry\n")
    assert "Seed: 42" in texts["parameters"] and "Size: 64x64" in texts["parameters"]
    assert texts["Software"] == "vramfit " + vramfit.__version__
    img.save(saved, parameters="custom ✓")
    assert read_png(saved)[3]["parameters"] == "custom ✓"


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_generate_matches_the_diffusers_reference(reference, arch):
    folder = os.path.join(reference, f"tiny-{arch}")
    with open(os.path.join(folder, "reference.json")) as f:
        r = json.load(f)
    pipe = vramfit.IntelligentGenerationPipeline(os.path.join(folder, "diffusers"), device="sim")
    img = pipe.generate(r["prompt"], negative_prompt=r["negative_prompt"], steps=r["steps"],
                        guidance_scale=r["guidance_scale"], width=r["width"],
                        height=r["height"], seed=r["seed"])
    shape, want = read_safetensors(os.path.join(folder, "reference.safetensors"))["image"]
    assert shape == [img.height, img.width, 3]
    err = max(abs(a - b) for a, b in zip(img.pixels, want))
    assert err <= 1 / 255, f"max abs error {err}"
    err8 = max(abs(a - round(b * 255)) for a, b in zip(img.rgb, want))
    assert err8 <= 1


def test_single_file_checkpoint_with_tokenizer_and_config(reference):
    folder = os.path.join(reference, "tiny-sd15")
    args = dict(steps=2, guidance_scale=5.0, seed=11)
    want = vramfit.IntelligentGenerationPipeline(os.path.join(folder, "diffusers")).generate("a hat", **args)
    with pytest.raises(vramfit.VramfitError) as e:
        vramfit.IntelligentGenerationPipeline(os.path.join(folder, "tiny-sd15.safetensors"),
                                              tokenizer=os.path.join(folder, "no-such-dir"))
    assert "no-such-dir" in str(e.value)
    pipe = vramfit.IntelligentGenerationPipeline(os.path.join(folder, "tiny-sd15.safetensors"),
                                                 tokenizer=os.path.join(folder, "diffusers"),
                                                 config=os.path.join(folder, "diffusers"))
    assert pipe.generate("a hat", **args).rgb == want.rgb


@pytest.mark.parametrize("device", DEVICES)
def test_stage_by_stage_equals_whole(tiny, device):
    pipe = vramfit.IntelligentGenerationPipeline(tiny["sdxl"], device=device)
    args = dict(steps=3, guidance_scale=5.0, seed=7)
    whole = pipe.generate("two yellow squares", negative_prompt="dark", **args)
    emb = pipe.generate("two yellow squares", negative_prompt="dark",
                        step=GenerationStep.ENCODE_PROMPT)
    assert isinstance(emb, vramfit.Embeddings)
    assert (emb.seq_len, emb.pooled_dim) == (77, len(emb.pooled))
    assert len(emb.prompt) == emb.seq_len * emb.dim
    lat = pipe.generate(step=GenerationStep.DENOISE, prompt_embeds=emb, **args)
    assert isinstance(lat, vramfit.Latents) and lat.shape == (1, 4, 8, 8)
    img = pipe.generate(step="decode", latents=lat)
    assert img.rgb == whole.rgb and img.pixels == whole.pixels
    # Latents made in Python decode the same.
    copy = vramfit.Latents.from_floats(lat.shape, lat.data)
    assert pipe.generate(step=GenerationStep.DECODE, latents=copy).rgb == whole.rgb
    with pytest.raises(TypeError):
        pipe.generate(step=GenerationStep.DENOISE)
    with pytest.raises(ValueError):
        vramfit.Latents.from_floats((1, 4, 8, 8), [0.0] * 10)


def test_progress_and_cancel(tiny):
    pipe = vramfit.IntelligentGenerationPipeline(tiny["sd15"], device="sim")
    seen = []
    pipe.generate("a cat", steps=3, sampler="euler", seed=1,
                  callback=lambda s, i, n: seen.append((s, i, n)))
    assert seen[0] == (GenerationStep.ENCODE_PROMPT, 0, 1)
    assert (GenerationStep.DENOISE, 3, 3) in seen
    assert seen[-1] == (GenerationStep.DECODE, 1, 1)

    def stop_at_two(stage, i, n):
        return stage == GenerationStep.DENOISE and i == 2

    with pytest.raises(vramfit.Cancelled) as e:
        pipe.generate("a cat", steps=3, seed=1, callback=stop_at_two)
    assert e.value.status == vramfit.Status.CANCELLED
    assert isinstance(e.value, vramfit.VramfitError)
    emb = pipe.generate("a cat", step=GenerationStep.ENCODE_PROMPT)
    with pytest.raises(vramfit.Cancelled):
        pipe.generate(step=GenerationStep.DENOISE, prompt_embeds=emb, steps=3, callback=stop_at_two)

    def boom(stage, i, n):
        raise RuntimeError("from the callback")

    with pytest.raises(RuntimeError, match="from the callback") as e:
        pipe.generate("a cat", steps=3, seed=1, callback=boom)
    assert isinstance(e.value.__cause__, vramfit.Cancelled)
    # The pipeline is whole after a cancelled run.
    assert pipe.generate("a cat", steps=1, seed=1).width == 64


def test_errors_raise_with_the_c_message(tiny, tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(vramfit.VramfitError) as e:
        vramfit.IntelligentGenerationPipeline(missing)
    assert missing in str(e.value) and e.value.message == str(e.value)
    assert e.value.status in (vramfit.Status.NOT_FOUND, vramfit.Status.IO)

    pipe = vramfit.IntelligentGenerationPipeline(tiny["sd15"])
    with pytest.raises(vramfit.VramfitError) as e:
        pipe.generate("x", width=65, steps=1)
    assert e.value.status == vramfit.Status.INVALID_ARG and "width" in str(e.value)
    assert "65" in str(e.value)
    with pytest.raises(vramfit.VramfitError) as e:
        pipe.generate("x", steps=0)
    assert "steps" in str(e.value)

    with pytest.raises(vramfit.VramfitError) as e:
        vramfit.IntelligentGenerationPipeline(tiny["sd15"], offload_strategy="sequential")
    assert e.value.status == vramfit.Status.UNSUPPORTED

    with pytest.raises(vramfit.VramfitError) as e:
        vramfit.IntelligentGenerationPipeline(tiny["sd15"], device="tpu")
    assert "tpu" in str(e.value)

    with pytest.raises(vramfit.VramfitError) as e:
        vramfit.Image(0, 0, b"").save(tmp_path / "empty.png")
    assert "0x0" in str(e.value)
    nowhere = str(tmp_path / "no-dir" / "x.png")
    with pytest.raises(vramfit.VramfitError) as e:
        vramfit.Image(1, 1, b"abc").save(nowhere)
    assert e.value.status == vramfit.Status.IO and "no-dir" in str(e.value)
    assert not os.path.exists(nowhere)

    tight = vramfit.IntelligentGenerationPipeline(tiny["sd15"], device="sim",
                                                  max_vram_usage_gb="301M")
    with pytest.raises(vramfit.VramfitError) as e:
        tight.generate("x", steps=1)
    assert e.value.status == vramfit.Status.BUDGET


def test_components_and_plan(tiny):
    pipe = vramfit.IntelligentGenerationPipeline(tiny["sdxl"], device="sim",
                                                 max_vram_usage_gb=2)
    comps = pipe.components
    assert set(comps) == {"text_encoder", "text_encoder_2", "unet", "vae"}
    for c in comps.values():
        assert c["device"] == "sim" and c["dtype"] == "F32"
    assert comps["unet"]["stage"] is GenerationStep.DENOISE
    plan = pipe.plan()
    assert plan["strategy"] in {s.c_name for s in OffloadStrategy} - {"auto"}
    assert plan["budget_bytes"] == 2 << 30
    assert plan["peak_device_bytes"] <= plan["budget_bytes"]

    cpu = vramfit.IntelligentGenerationPipeline(tiny["sd15"])
    assert cpu.device == "cpu" and cpu.arch == "sd15"
    assert {c["device"] for c in cpu.components.values()} == {"cpu"}
    assert "text_encoder_2" not in cpu.components


def test_loading_strategies(tiny):
    lazy = vramfit.IntelligentGenerationPipeline(tiny["sd15"], device="sim")
    assert not lazy.is_loaded
    lazy.generate("x", steps=1)
    assert lazy.is_loaded
    lazy.unload()
    assert not lazy.is_loaded
    lazy.load()
    assert lazy.is_loaded
    eager = vramfit.IntelligentGenerationPipeline(tiny["sd15"], device="sim",
                                                  loading_strategy=vramfit.LoadingStrategy.EAGER)
    assert eager.is_loaded
    assert all(c["loaded"] for c in eager.components.values())


@pytest.mark.parametrize("strategy", [OffloadStrategy.SEQUENTIAL, OffloadStrategy.STREAM,
                                      OffloadStrategy.CPU_OFFLOAD, OffloadStrategy.FULL_GPU])
def test_offload_strategies_give_the_same_image(tiny, strategy):
    base = vramfit.IntelligentGenerationPipeline(tiny["sd15"], device="sim")
    want = base.generate("a green triangle", steps=2, seed=9)
    pipe = vramfit.IntelligentGenerationPipeline(tiny["sd15"], device="sim",
                                                 offload_strategy=strategy,
                                                 dtype_policy=vramfit.DTypePolicy.F32)
    assert pipe.generate("a green triangle", steps=2, seed=9).rgb == want.rgb
    assert pipe.plan()["strategy"] == strategy.c_name
    comps = pipe.components
    if strategy == OffloadStrategy.CPU_OFFLOAD:
        assert comps["unet"]["device"] == "sim" and comps["vae"]["device"] == "cpu"
    if strategy == OffloadStrategy.SEQUENTIAL:
        assert all(c["per_stage"] for c in comps.values())
