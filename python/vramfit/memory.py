"""MemoryManager: resources and the memory monitor (vf_detect_resources, vf_track_usage_*).

The monitor is process-wide in C (one account of what the memory manager
holds), so a MemoryManager carries no state: any number of them see the same
figures. Byte counts are ints; usage records are dicts with the keys of
vf_memory_usage (device_reserved, device_allocated, host).
"""

import contextlib
import ctypes
import json

from . import _lib
from ._lib import C


def _usage_dict(u):
    return {"device_reserved": u.device_reserved, "device_allocated": u.device_allocated,
            "host": u.host}


class UsageScope:
    """What track_usage yields: .name, and .peak (a usage dict) once the block ends."""

    def __init__(self, name):
        self.name = name
        self.peak = None

    def __repr__(self):
        return f"UsageScope({self.name!r}, peak={self.peak!r})"


class MemoryManager:
    """Resources and memory figures of this process (Python name for vramfit's monitor)."""

    def detect_resources(self):
        """GPUs, RAM (cgroup limits included), CPU: vf_resources_to_json's object as a dict."""
        r = _lib.vf_resources()
        _lib.check(C.vf_detect_resources(ctypes.byref(r)))
        cap = 1 << 16
        buf = ctypes.create_string_buffer(cap)
        _lib.check(C.vf_resources_to_json(ctypes.byref(r), buf, cap))
        return json.loads(buf.value.decode("utf-8"))

    @contextlib.contextmanager
    def track_usage(self, name):
        """with mm.track_usage("stage") as s: ... ; s.peak: the peaks inside the block.

        The scope is also recorded under `name` (see stages())."""
        scope = UsageScope(name)
        _lib.check(C.vf_track_usage_begin(_lib.enc(name)))
        try:
            yield scope
        finally:
            peak = _lib.vf_memory_usage()
            _lib.check(C.vf_track_usage_end(ctypes.byref(peak)))
            scope.peak = _usage_dict(peak)

    def stages(self):
        """Recorded scopes, oldest first: [(name, peak usage dict)]."""
        out = []
        for i in range(C.vf_usage_stage_count()):
            name = ctypes.create_string_buffer(256)
            peak = _lib.vf_memory_usage()
            _lib.check(C.vf_usage_stage(i, name, len(name), ctypes.byref(peak)))
            out.append((_lib.text(name.value), _usage_dict(peak)))
        return out

    def get_memory_usage(self):
        """{"current": usage, "peak": usage} (peak since start or the last reset)."""
        cur, peak = _lib.vf_memory_usage(), _lib.vf_memory_usage()
        C.vf_get_memory_usage(ctypes.byref(cur), ctypes.byref(peak))
        return {"current": _usage_dict(cur), "peak": _usage_dict(peak)}

    def get_peak_vram_usage(self):
        """Peak device bytes allocated (PyTorch's max_memory_allocated)."""
        return int(C.vf_get_peak_vram_usage())

    def reset_peak_usage(self):
        C.vf_reset_peak_usage()

    def clear_cache(self):
        """Frees weight conversions that can be rebuilt; returns the bytes freed."""
        return int(C.vf_clear_cache())
