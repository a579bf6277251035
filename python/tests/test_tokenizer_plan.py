"""Tokenizer (against the CLIP reference cases), what-if plans, latents callbacks and previews."""

import json
import os

import pytest

import vramfit
from vramfit import GenerationStep


def test_tokenizer_matches_the_clip_reference(reference):
    tok = vramfit.Tokenizer(os.path.join(reference, "clip", "bpe_simple_vocab_16e6.txt.gz"))
    assert tok.vocab_size == 49408
    assert tok.special_ids == {"bos": 49406, "eos": 49407, "pad": 49407}
    with open(os.path.join(reference, "tokenizer_cases.json"), encoding="utf-8") as f:
        cases = json.load(f)
    for case in cases:
        assert tok.encode(case["text"]) == case["ids_untruncated"], case["text"][:40]
        assert tok.encode_window(case["text"]) == case["ids"], case["text"][:40]
    tok.close()


def test_tokenizer_of_a_synthesized_model(tiny):
    folder = os.path.join(tiny["sd15"], "tokenizer")
    tok = vramfit.Tokenizer(folder)
    files = vramfit.Tokenizer(vocab_json=os.path.join(folder, "vocab.json"),
                              merges_txt=os.path.join(folder, "merges.txt"))
    ids = tok.encode("a red circle on a blue background")
    assert ids[0] == tok.special_ids["bos"] and ids[-1] == tok.special_ids["eos"]
    assert files.encode("a red circle on a blue background") == ids
    assert len(tok.encode("word " * 200)) > 77
    with pytest.raises(vramfit.VramfitError) as e:
        vramfit.Tokenizer("/no/such/tokenizer")
    assert "/no/such/tokenizer" in str(e.value)
    with pytest.raises(vramfit.VramfitError):
        tok.encode(b"\xff\xfe not utf-8")


def test_what_if_plans(tiny):
    pipe = vramfit.IntelligentGenerationPipeline(tiny["sdxl"])
    own = pipe.plan()
    assert own["budget_bytes"] == 0 and own["peak_device_bytes"] == 0   # the CPU plan
    assert {c["device"] for c in own["components"]} == {"cpu"}
    plan = pipe.plan(max_vram_usage_gb=1, free_vram_gb=8, offload_strategy="sequential",
                     width=128, height=128, steps=4)
    assert plan["strategy"] == "sequential" and plan["budget_bytes"] == 1 << 30
    assert plan["request"]["width"] == 128 and plan["request"]["steps"] == 4
    with pytest.raises(vramfit.VramfitError) as e:
        pipe.plan(max_vram_usage_gb="100M", free_vram_gb=8)
    assert e.value.status == vramfit.Status.BUDGET and "needs at least" in str(e.value)
    with pytest.raises(TypeError):
        pipe.plan(vram=3)
    # What-if plans leave the model's own plan alone.
    assert pipe.components["unet"]["device"] == "cpu"


def test_latents_callback_and_preview(tiny):
    pipe = vramfit.IntelligentGenerationPipeline(tiny["sd15"], device="sim")
    seen = []

    def on_latents(i, n, latents):
        seen.append((i, n, latents.shape))
        if i == n:
            seen.append(latents.preview(pipe.arch, scale=8))

    final = pipe.generate("a cat", steps=3, sampler="euler", seed=2, step=None)
    lat = pipe.generate(step=GenerationStep.DENOISE, steps=3, sampler="euler", seed=2,
                        prompt_embeds=pipe.generate("a cat", step="encode_prompt"),
                        latents_callback=on_latents)
    assert [s[:2] for s in seen[:3]] == [(1, 3), (2, 3), (3, 3)]
    assert seen[0][2] == (1, 4, 8, 8)
    preview = seen[3]
    assert (preview.width, preview.height) == (64, 64) and preview.pixels is None
    assert preview.rgb == lat.preview("sd15").rgb
    assert pipe.generate(step=GenerationStep.DECODE, latents=lat).rgb == final.rgb
    with pytest.raises(vramfit.Cancelled):
        pipe.generate("a cat", steps=3, latents_callback=lambda i, n, l: i == 2)
    with pytest.raises(ValueError):
        lat.preview("sd3")
