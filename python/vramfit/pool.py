"""ModelPool: many registered models sharing device and host memory (vf_pool_*).

Sizes in the constructor are GiB (2**30 bytes) as floats, or size text the C
parser reads ("6G", "1.5GiB", "6GB" = 6e9); None means unlimited. Eviction,
demotion between tiers and sizes are all the C pool's; this is its Python face.
"""

import ctypes

from . import _lib
from ._lib import C
from .enums import DTypePolicy, EvictionPolicy, OffloadStrategy, Tier


def size_bytes(value, what):
    """GiB (int/float) or size text -> bytes; None -> unlimited."""
    if value is None:
        return _lib.VF_POOL_UNLIMITED
    if isinstance(value, str):
        out = ctypes.c_uint64()
        _lib.check(C.vf_parse_size(_lib.enc(value), ctypes.byref(out)))
        return out.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what}: expected GiB as a number or a size like '6G', "
                        f"got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what}: {value} is negative")
    return int(value * (1 << 30))


class ModelPool(_lib.Owned):
    """vf_pool: register models by id, load them into tiers, evict by policy.

    max_size_gb: device capacity; host_size_gb: host (pageable + pinned)
    capacity; pinned_size_gb: the part of it that may be pinned. A model
    evicted from the device is demoted (to pinned or host memory if those
    capacities allow, else to disk only); is_loaded is true in any tier above disk.

    device: None (default) keeps the accounting only; "cpu", "sim[...]" or "cuda"
    makes the pool move weights (each checkpoint opened on that device with
    max_vram_usage_gb, offload_strategy and dtype_policy; see vf_pool_options):
    pipelines made from a pool id then generate with the pool's own model.
    """

    def __init__(self, max_size_gb=None, eviction_policy=EvictionPolicy.LRU, host_size_gb=None,
                 pinned_size_gb=None, device=None, max_vram_usage_gb=None,
                 offload_strategy=OffloadStrategy.AUTO, dtype_policy=DTypePolicy.AUTO):
        o = _lib.vf_pool_options()
        C.vf_pool_options_init(ctypes.byref(o))
        o.device_capacity = size_bytes(max_size_gb, "max_size_gb")
        o.host_capacity = size_bytes(host_size_gb, "host_size_gb")
        o.pinned_capacity = size_bytes(pinned_size_gb, "pinned_size_gb")
        o.eviction = int(EvictionPolicy.parse(eviction_policy))
        self.device = device
        if device is not None:
            po = _lib.vf_pipeline_options()
            C.vf_pipeline_options_init(ctypes.byref(po))
            dev = _lib.enc(device)
            po.device = dev
            po.vram_budget = (0 if max_vram_usage_gb is None
                              else size_bytes(max_vram_usage_gb, "max_vram_usage_gb"))
            po.offload = int(OffloadStrategy.parse(offload_strategy))
            po.dtype_policy = int(DTypePolicy.parse(dtype_policy))
            o.pipeline = ctypes.cast(ctypes.pointer(po), ctypes.c_void_p)  # copied by vf_pool_create
        h = ctypes.c_void_p()
        _lib.check(C.vf_pool_create(ctypes.byref(o), ctypes.byref(h)))
        self._h = h

    def _free(self, h):
        C.vf_pool_free(h)

    def register(self, model_id, path, kind="checkpoint"):
        """Registers a checkpoint (or kind="lora"); reads its headers to size it."""
        if kind not in ("checkpoint", "lora"):
            raise ValueError(f"register: kind {kind!r}: expected 'checkpoint' or 'lora'")
        fn = C.vf_pool_register if kind == "checkpoint" else C.vf_pool_register_lora
        _lib.check(fn(self._handle(), _lib.enc(model_id), _lib.enc(path)))

    def load_registry(self, path):
        """Registers every model of a registry JSON file (all or none)."""
        _lib.check(C.vf_pool_load_registry(self._handle(), _lib.enc(path)))

    def load(self, model_id, tier=Tier.DEVICE):
        """Makes the model resident in tier (default the device), evicting by the policy."""
        _lib.check(C.vf_pool_load(self._handle(), _lib.enc(model_id), int(Tier.parse(tier))))

    def _model(self, model_id):
        """The pool's own model handle (vf_pool_model): borrowed, valid while the pool is."""
        h = ctypes.c_void_p()
        _lib.check(C.vf_pool_model(self._handle(), _lib.enc(model_id), ctypes.byref(h)))
        return h

    def unload(self, model_id):
        _lib.check(C.vf_pool_unload(self._handle(), _lib.enc(model_id)))

    def is_loaded(self, model_id):
        out = ctypes.c_int()
        _lib.check(C.vf_pool_is_loaded(self._handle(), _lib.enc(model_id), ctypes.byref(out)))
        return bool(out.value)

    def touch(self, model_id):
        """Counts a use (for LRU and LFU) without moving anything."""
        _lib.check(C.vf_pool_touch(self._handle(), _lib.enc(model_id)))

    @staticmethod
    def _info_dict(i):
        return {
            "id": _lib.text(i.id), "path": _lib.text(i.path),
            "kind": _lib.text(C.vf_pool_kind_name(i.kind)), "tier": Tier(i.tier),
            "bytes": i.bytes,
            "bytes_at": {Tier(t).c_name: i.bytes_at[t] for t in range(_lib.VF_TIER_COUNT)},
            "component_bytes": {_lib.component_name(c): i.component_bytes[c]
                                for c in range(_lib.VF_COMPONENT_COUNT)},
            "uses": i.uses, "last_use": i.last_use,
        }

    def info(self, model_id):
        """The model's record: id, path, kind, tier (a Tier), bytes, bytes_at, uses, ..."""
        i = _lib.vf_pool_model_info()
        _lib.check(C.vf_pool_info(self._handle(), _lib.enc(model_id), ctypes.byref(i)))
        return self._info_dict(i)

    def models(self):
        """Every model's record, in registration order."""
        out = []
        for k in range(C.vf_pool_count(self._handle())):
            i = _lib.vf_pool_model_info()
            _lib.check(C.vf_pool_info_at(self._handle(), k, ctypes.byref(i)))
            out.append(self._info_dict(i))
        return out

    def __len__(self):
        return int(C.vf_pool_count(self._handle()))

    def __contains__(self, model_id):
        return any(m["id"] == model_id for m in self.models())

    def usage(self):
        """Bytes per tier, capacities, counts of models and evictions."""
        u = _lib.vf_pool_usage()
        _lib.check(C.vf_pool_get_usage(self._handle(), ctypes.byref(u)))
        return {
            "bytes": {Tier(t).c_name: u.bytes[t] for t in range(_lib.VF_TIER_COUNT)},
            "device_capacity": u.device_capacity, "host_capacity": u.host_capacity,
            "pinned_capacity": u.pinned_capacity, "models": u.models, "loaded": u.loaded,
            "evictions": u.evictions,
        }
