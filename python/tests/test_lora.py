"""LoRAs from Python: IntelligentGenerationPipeline.add_lora / set_lora_strength /
remove_lora / clear_loras / loras, on the tiny reference fixtures with the LoRAs of
tests/data/lora (tools/make_lora_fixtures.py). The image with LoRAs is the command's
(`vramfit generate --lora`), strength 0 and removal give the image of no LoRA, the
same factors in both formats give the same image, a pool LoRA applies by id, and
errors raise without changing the model.
"""

import os

import pytest

import vramfit
from conftest import REPO, read_png, run_cli

DATA = os.path.join(REPO, "tests", "data", "lora")
PROMPT = "a photo of a cat wearing a tiny hat"


def lora(name):
    return os.path.join(DATA, name)


def gen(pipe):
    return pipe.generate(PROMPT, negative_prompt="blurry", steps=2, guidance_scale=5, seed=3)


@pytest.fixture
def sdxl(reference):
    return os.path.join(reference, "tiny-sdxl", "diffusers")


def test_add_set_remove(sdxl):
    pipe = vramfit.IntelligentGenerationPipeline(sdxl)
    plain = gen(pipe).rgb
    a = pipe.add_lora(lora("sdxl_peft.safetensors"), 0.8)
    assert a["id"] == 1 and a["strength"] == pytest.approx(0.8)
    assert a["weights"] == 288 and a["unmatched_keys"] == 0 and a["rank"] == 4
    assert a["weights_by_component"] == {"text_encoder": 12, "text_encoder_2": 12, "unet": 264}
    assert a["source"] == lora("sdxl_peft.safetensors")
    with_a = gen(pipe).rgb
    assert with_a != plain
    b = pipe.add_lora(lora("sdxl_b.safetensors"), -0.5)
    assert [x["id"] for x in pipe.loras] == [1, 2]
    assert gen(pipe).rgb not in (plain, with_a)
    pipe.set_lora_strength(b["id"], 0)
    assert gen(pipe).rgb == with_a
    pipe.remove_lora(a["id"])
    assert [x["id"] for x in pipe.loras] == [2]
    assert gen(pipe).rgb == plain          # the remaining LoRA is at strength 0
    pipe.clear_loras()
    assert pipe.loras == []
    with pytest.raises(vramfit.VramfitError) as e:
        pipe.set_lora_strength(2, 1.0)
    assert e.value.status == vramfit.Status.NOT_FOUND


def test_same_image_as_the_command(sdxl, cli, tmp_path):
    out = tmp_path / "cli.png"
    run_cli(cli, "generate", "--model", sdxl, "--prompt", PROMPT, "--negative", "blurry", "--steps", 2,
            "--cfg", 5, "--seed", 3, "--quiet", "--lora", lora("sdxl_kohya_sgm.safetensors") + ":0.8",
            "--lora", lora("sdxl_b.safetensors") + ":0.5", "--output", out)
    pipe = vramfit.IntelligentGenerationPipeline(sdxl)
    pipe.add_lora(lora("sdxl_peft.safetensors"), 0.8)     # the same factors as the kohya file
    pipe.add_lora(lora("sdxl_b.safetensors"), 0.5)
    assert gen(pipe).rgb == read_png(out)[2]


def test_pool_lora(sdxl):
    pool = vramfit.ModelPool(host_size_gb="64M")
    pool.register("style", lora("sdxl_peft.safetensors"), kind="lora")
    pool.register("base", sdxl)
    size = pool.info("style")["bytes"]
    pipe = vramfit.IntelligentGenerationPipeline(sdxl)
    info = pipe.add_lora("style", 0.8, pool=pool)
    assert pool.info("style")["tier"] == vramfit.Tier.HOST
    assert info["bytes"] == size and info["source"] == "style"
    by_pool = gen(pipe).rgb
    pipe.clear_loras()
    pipe.add_lora(lora("sdxl_peft.safetensors"), 0.8)
    assert gen(pipe).rgb == by_pool
    with pytest.raises(vramfit.VramfitError) as e:
        pipe.add_lora("base", 1.0, pool=pool)
    assert e.value.status == vramfit.Status.INVALID_ARG and "not a LoRA" in str(e.value)
    assert len(pipe.loras) == 1


def test_errors_change_nothing(sdxl):
    pipe = vramfit.IntelligentGenerationPipeline(sdxl)
    pipe.add_lora(lora("sdxl_b.safetensors"), 0.3)
    before = gen(pipe).rgb
    with pytest.raises(vramfit.VramfitError) as e:
        pipe.add_lora(lora("sd15_peft.safetensors"), 1.0)
    assert "another architecture" in str(e.value)
    with pytest.raises(vramfit.VramfitError) as e:
        pipe.add_lora(lora("sdxl_b.safetensors"), float("nan"))
    assert e.value.status == vramfit.Status.INVALID_ARG
    with pytest.raises(vramfit.VramfitError):
        pipe.add_lora(os.path.join(DATA, "absent.safetensors"))
    assert len(pipe.loras) == 1
    assert gen(pipe).rgb == before
