"""MemoryManager: resources, usage scopes, peaks and the cache, on the simulated device."""

import pytest

import vramfit

GiB = 1 << 30


def test_detect_resources_keys():
    r = vramfit.MemoryManager().detect_resources()
    for key in ("has_cuda", "has_mps", "device_count", "driver_version", "runtime_version",
                "cuda_error", "devices", "total_ram", "available_ram", "cgroup_limit",
                "cpu_cores", "cpu_name", "simd"):
        assert key in r, key
    assert isinstance(r["has_cuda"], bool)
    assert r["total_ram"] > 0 and 0 < r["available_ram"] <= r["total_ram"]
    assert r["cpu_cores"] >= 1
    assert r["device_count"] == len(r["devices"])
    if not r["has_cuda"]:
        assert r["device_count"] == 0 and r["cuda_error"]
    for d in r["devices"]:
        assert d["total_vram"] >= d["free_vram"] > 0


def test_track_usage_on_the_simulated_device(tiny):
    mm = vramfit.MemoryManager()
    budget = 1 * GiB
    pipe = vramfit.IntelligentGenerationPipeline(tiny["sd15"], device="sim", max_vram_usage_gb=1)
    mm.reset_peak_usage()
    with mm.track_usage("py-generate") as scope:
        assert scope.peak is None
        pipe.generate("a red circle", steps=2, seed=3)
    peak = scope.peak
    assert set(peak) == {"device_reserved", "device_allocated", "host"}
    # The simulated device holds its context (300 MiB) plus the arena: all within the budget.
    assert 300 << 20 < peak["device_allocated"] <= peak["device_reserved"] <= budget
    assert mm.get_peak_vram_usage() >= peak["device_allocated"]
    names = [name for name, _ in mm.stages()]
    # generate's own stages, then this scope, which closed last.
    assert names[-1] == "py-generate"
    assert {"encode_prompt", "denoise", "decode"} <= set(names[-4:-1])
    now = mm.get_memory_usage()
    assert now["peak"]["device_allocated"] >= peak["device_allocated"]
    pipe.close()
    assert mm.get_memory_usage()["current"]["device_reserved"] == 0


def test_track_usage_ends_its_scope_on_an_exception():
    mm = vramfit.MemoryManager()
    with pytest.raises(KeyError):
        with mm.track_usage("failing") as scope:
            raise KeyError("x")
    assert scope.peak is not None
    assert mm.stages()[-1][0] == "failing"
    # The scope was closed: ending another one without a begin is a C error.
    with pytest.raises(vramfit.VramfitError):
        vramfit._lib.check(vramfit._lib.C.vf_track_usage_end(None))


def test_clear_cache_frees_host_conversions(tiny):
    """An F16 model on the CPU computes from F32 host conversions; clearing frees them."""
    mm = vramfit.MemoryManager()
    pipe = vramfit.IntelligentGenerationPipeline(tiny["sd15"])
    first = pipe.generate("a blue square", steps=2, seed=5)
    held = mm.get_memory_usage()["current"]["host"]
    assert held > 0
    freed = mm.clear_cache()
    assert 0 < freed <= held
    assert mm.get_memory_usage()["current"]["host"] == held - freed
    assert mm.clear_cache() == 0
    # Whatever was freed is rebuilt: the same image again.
    again = pipe.generate("a blue square", steps=2, seed=5)
    assert again.rgb == first.rgb
    assert mm.get_memory_usage()["current"]["host"] > 0
    pipe.close()
