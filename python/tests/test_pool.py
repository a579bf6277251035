"""ModelPool: registration sizes, load / unload / is_loaded, eviction order, demotion, errors."""

import json

import pytest

import vramfit
from vramfit import EvictionPolicy, Tier


def _size(tiny, name):
    p = vramfit.ModelPool()
    p.register("m", tiny[name])
    return p.info("m")["bytes"]


def test_register_and_info(tiny):
    pool = vramfit.ModelPool(max_size_gb=1)
    pool.register("sd15", tiny["sd15"])
    pool.register("sd15-f32", tiny["sd15_f32"])
    info = pool.info("sd15")
    assert info["id"] == "sd15" and info["path"] == tiny["sd15"] and info["kind"] == "checkpoint"
    assert info["tier"] is Tier.DISK and info["uses"] == 0
    assert info["bytes"] == sum(info["component_bytes"].values()) > 0
    assert info["component_bytes"]["text_encoder_2"] == 0
    # The same model stored in F32 has exactly twice the bytes of the F16 one.
    assert pool.info("sd15-f32")["bytes"] == 2 * info["bytes"]
    assert len(pool) == 2 and "sd15" in pool and "nope" not in pool
    assert [m["id"] for m in pool.models()] == ["sd15", "sd15-f32"]
    assert pool.usage()["device_capacity"] == 1 << 30


def test_load_unload_is_loaded(tiny):
    pool = vramfit.ModelPool()
    pool.register("a", tiny["sd15"])
    assert not pool.is_loaded("a")
    pool.load("a")
    assert pool.is_loaded("a") and pool.info("a")["tier"] is Tier.DEVICE
    assert pool.info("a")["uses"] == 1
    pool.unload("a")
    assert not pool.is_loaded("a") and pool.info("a")["tier"] is Tier.DISK
    pool.load("a", "host")
    assert pool.info("a")["tier"] is Tier.HOST
    u = pool.usage()
    assert u["loaded"] == 1 and u["bytes"]["host"] == pool.info("a")["bytes"]


def _pool_of_three(tiny, policy, ids=("a", "b", "c")):
    """Room on the device for two copies of the tiny SD1.5 model, none on the host."""
    s = _size(tiny, "sd15")
    pool = vramfit.ModelPool(max_size_gb=f"{s * 5 // 2}B", eviction_policy=policy,
                             host_size_gb=0)
    for i in ids:
        pool.register(i, tiny["sd15"])
    return pool


def test_lru_evicts_the_least_recently_used(tiny):
    pool = _pool_of_three(tiny, EvictionPolicy.LRU)
    pool.load("a")
    pool.load("b")
    pool.touch("a")
    pool.load("c")
    assert [pool.is_loaded(i) for i in "abc"] == [True, False, True]
    assert pool.usage()["evictions"] == 1


def test_lfu_evicts_the_least_used(tiny):
    pool = _pool_of_three(tiny, "lfu")
    pool.load("a")
    pool.touch("a")
    pool.touch("a")
    pool.load("b")      # b is the most recent, but used once
    pool.load("c")
    assert [pool.is_loaded(i) for i in "abc"] == [True, False, True]


def test_largest_evicts_the_largest(tiny):
    s, s32 = _size(tiny, "sd15"), _size(tiny, "sd15_f32")
    for policy, evicted in ((EvictionPolicy.SIZE, "big"), (EvictionPolicy.LRU, "small")):
        pool = vramfit.ModelPool(max_size_gb=f"{s + s32 + s // 2}B", eviction_policy=policy,
                                 host_size_gb=0)
        pool.register("small", tiny["sd15"])
        pool.register("big", tiny["sd15_f32"])
        pool.register("other", tiny["sd15"])
        pool.load("small")
        pool.load("big")
        pool.load("other")
        assert not pool.is_loaded(evicted), policy
        assert pool.is_loaded("other")


def test_eviction_demotes_to_host_memory(tiny):
    s = _size(tiny, "sd15")
    pool = vramfit.ModelPool(max_size_gb=f"{s}B", pinned_size_gb=0)
    pool.register("a", tiny["sd15"])
    pool.register("b", tiny["sd15"])
    pool.load("a")
    pool.load("b")
    assert pool.info("a")["tier"] is Tier.HOST and pool.is_loaded("a")
    assert pool.info("b")["tier"] is Tier.DEVICE


def test_pool_errors_carry_the_c_message(tiny):
    s = _size(tiny, "sd15")
    pool = vramfit.ModelPool(max_size_gb=f"{s - 1}B")
    pool.register("a", tiny["sd15"])
    with pytest.raises(vramfit.VramfitError) as e:
        pool.load("a")
    assert e.value.status == vramfit.Status.BUDGET
    assert "'a' needs" in str(e.value) and f"({s} bytes)" in str(e.value)
    assert "capacity is" in str(e.value) and f"({s - 1} bytes)" in str(e.value)
    assert not pool.is_loaded("a")
    with pytest.raises(vramfit.VramfitError) as e:
        pool.load("missing-model")
    assert e.value.status == vramfit.Status.NOT_FOUND and "missing-model" in str(e.value)
    with pytest.raises(vramfit.VramfitError) as e:
        pool.register("a", tiny["sd15"])
    assert "a" in str(e.value)
    with pytest.raises(vramfit.VramfitError):
        pool.register("x", "/nonexistent/model")


def test_load_registry(tiny, tmp_path):
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"models": {"tiny": tiny["sd15"],
                                          "tiny-xl": {"path": tiny["sdxl"], "kind": "checkpoint"}}}))
    pool = vramfit.ModelPool()
    pool.load_registry(reg)
    assert [m["id"] for m in pool.models()] == ["tiny", "tiny-xl"]
    assert pool.info("tiny-xl")["component_bytes"]["text_encoder_2"] > 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": {"x": {"path": tiny["sd15"], "colour": "red"}}}))
    with pytest.raises(vramfit.VramfitError) as e:
        vramfit.ModelPool().load_registry(bad)
    assert "bad.json" in str(e.value)


def test_pipeline_from_a_pool_id(tiny):
    pool = vramfit.ModelPool()
    pool.register("tiny", tiny["sd15"])
    pipe = vramfit.IntelligentGenerationPipeline("tiny", pool=pool, device="sim")
    assert pipe.path == tiny["sd15"]
    assert pool.is_loaded("tiny") and pool.info("tiny")["tier"] is Tier.DEVICE
    uses = pool.info("tiny")["uses"]
    pipe.generate("a cat", steps=1, seed=0)
    assert pool.info("tiny")["uses"] == uses + 1
    pipe.close()


def test_a_pool_with_a_device_moves_weights(tiny):
    """device= makes the pool hold weights: pipelines from its ids share its models."""
    s = _size(tiny, "sd15")
    pool = vramfit.ModelPool(max_size_gb=f"{s * 3 // 2}B", device="sim,context=1M")
    pool.register("a", tiny["sd15"])
    pool.register("b", tiny["sd15"])
    want = vramfit.IntelligentGenerationPipeline(tiny["sd15"]).generate("a cat", steps=2, seed=3)
    a = vramfit.IntelligentGenerationPipeline("a", pool=pool)
    b = vramfit.IntelligentGenerationPipeline("b", pool=pool)   # a is demoted to pinned memory
    assert a.device == "sim" and a.is_loaded
    assert pool.info("a")["tier"] is Tier.PINNED and pool.info("b")["tier"] is Tier.DEVICE
    # a generates: back on the device through the pool, b demoted, same image as the CPU
    assert a.generate("a cat", steps=2, seed=3).rgb == want.rgb
    assert pool.info("a")["tier"] is Tier.DEVICE and pool.info("b")["tier"] is Tier.PINNED
    assert pool.usage()["evictions"] == 2
    a.close()   # the pool's model: closing the pipeline leaves it to the pool
    assert pool.is_loaded("a")
    pool.close()
    with pytest.raises(ValueError, match="pool is closed"):
        b.generate("a cat", steps=1)
