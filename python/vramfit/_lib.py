"""The ctypes layer: finding libvramfit, the C structs, the prototypes, status checks.

Everything the rest of the package calls goes through here, declared once with
its argument and result types so that ctypes converts and checks arguments
instead of guessing (a guessed int for a uint64_t or a pointer is silent
corruption). The struct layouts mirror include/vramfit.h field for field; the
test suite compiles a C program that prints sizeof() of each and compares.

Library search order (first hit wins):
  1. the VRAMFIT_LIB environment variable (a path to the .so);
  2. next to the package: a libvramfit.so* inside it, or the library the
     installation recorded in _installed.py (relative to the package, so an
     installed tree can be moved as a whole);
  3. the build tree of a source checkout (<repo>/build/, then the most
     recently built <repo>/build*/);
  4. the system path (ctypes.util.find_library, then libvramfit.so.0).
"""

import ctypes
import ctypes.util
import glob
import os

from ctypes import (POINTER, Structure, c_char, c_char_p, c_double, c_float, c_int,
                    c_int32, c_size_t, c_uint8, c_uint64, c_void_p)

# ---- errors -------------------------------------------------------------------

VF_OK = 0
VF_ERR_CANCELLED = 10


class VramfitError(Exception):
    """A vramfit call failed: .status is the vf_status code, .message the C message."""

    def __init__(self, status, message):
        self.status = int(status)
        self.message = message
        super().__init__(message if message else f"vramfit error {self.status}")


class Cancelled(VramfitError):
    """A progress callback asked to stop (VF_ERR_CANCELLED)."""


VramfitError.__module__ = Cancelled.__module__ = "vramfit"


# ---- finding the library --------------------------------------------------------

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def _candidates():
    env = os.environ.get("VRAMFIT_LIB")
    if env:
        yield env
        return
    for p in sorted(glob.glob(os.path.join(_PKG_DIR, "libvramfit.so*"))):
        yield p
    try:
        from . import _installed  # written by `cmake --install`
        yield os.path.normpath(os.path.join(_PKG_DIR, _installed.LIBRARY_RELATIVE))
        yield _installed.LIBRARY
    except ImportError:
        pass
    repo = os.path.dirname(os.path.dirname(_PKG_DIR))
    if os.path.isfile(os.path.join(repo, "include", "vramfit.h")):
        default = os.path.join(repo, "build", "libvramfit.so")
        if os.path.exists(default):
            yield default
        built = glob.glob(os.path.join(repo, "build*", "libvramfit.so"))
        for p in sorted(built, key=os.path.getmtime, reverse=True):
            yield p
    found = ctypes.util.find_library("vramfit")
    if found:
        yield found
    yield "libvramfit.so.0"


def _load():
    tried = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            tried.append(f"{path} (absent)")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append(f"{path} ({e})")
            if os.environ.get("VRAMFIT_LIB"):
                break
    hint = ""
    if any("ASan runtime" in t for t in tried):
        hint = (" (an AddressSanitizer build: run Python with "
                "LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0)")
    raise OSError("vramfit: cannot load libvramfit; set VRAMFIT_LIB to its path. Tried: "
                  + "; ".join(tried) + hint)


lib, LIBRARY_PATH = _load()

# ---- structs (include/vramfit.h) --------------------------------------------------

VF_MAX_DEVICES = 16
VF_COMPONENT_COUNT = 4
VF_TIER_COUNT = 4
VF_DTYPE_COUNT = 14
VF_POOL_UNLIMITED = 2**64 - 1


class Owned:
    """Owns one C handle (self._h): closed once, by close(), a `with` block or
    garbage collection. Subclasses name the C function that frees it."""

    _h = None

    def _free(self, h):
        raise NotImplementedError

    def _handle(self):
        if not self._h:
            raise ValueError(f"{type(self).__name__} is closed")
        return self._h

    def close(self):
        if self._h:
            self._free(self._h)
            self._h = None

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class vf_device_info(Structure):
    _fields_ = [("name", c_char * 256), ("index", c_int), ("cc_major", c_int), ("cc_minor", c_int),
                ("total_vram", c_uint64), ("free_vram", c_uint64), ("multiprocessors", c_int)]


class vf_resources(Structure):
    _fields_ = [("has_cuda", c_int), ("has_mps", c_int), ("device_count", c_int),
                ("driver_version", c_int), ("runtime_version", c_int), ("cuda_error", c_char * 256),
                ("devices", vf_device_info * VF_MAX_DEVICES), ("total_ram", c_uint64),
                ("available_ram", c_uint64), ("cgroup_limit", c_uint64), ("cpu_cores", c_int),
                ("cpu_name", c_char * 128), ("simd", c_char * 128)]


class vf_pipeline_options(Structure):
    _fields_ = [("device", c_char_p), ("offload", c_int), ("vram_budget", c_uint64),
                ("loading", c_int), ("dtype_policy", c_int)]


class vf_model_options(Structure):
    _fields_ = [("tokenizer_dir", c_char_p), ("config_dir", c_char_p),
                ("pipeline", POINTER(vf_pipeline_options)), ("backend", c_char_p)]


class vf_component_info(Structure):
    _fields_ = [("present", c_int), ("params", c_uint64), ("bytes", c_uint64),
                ("bytes_by_dtype", c_uint64 * VF_DTYPE_COUNT), ("ntensors", c_int)]


class vf_embeddings(Structure):
    _fields_ = [("seq_len", c_int), ("dim", c_int), ("pooled_dim", c_int),
                ("prompt", POINTER(c_float)), ("negative", POINTER(c_float)),
                ("pooled", POINTER(c_float)), ("negative_pooled", POINTER(c_float))]


class vf_latents(Structure):
    _fields_ = [("batch", c_int), ("channels", c_int), ("height", c_int), ("width", c_int),
                ("data", POINTER(c_float))]


class vf_image(Structure):
    _fields_ = [("width", c_int), ("height", c_int), ("rgb", POINTER(c_uint8)),
                ("pixels", POINTER(c_float))]


# int (*)(void *user, vf_generation_step stage, int step, int total)
vf_progress_fn = ctypes.CFUNCTYPE(c_int, c_void_p, c_int, c_int, c_int)
# int (*)(void *user, int step, int total, const vf_latents *latents)
vf_latents_fn = ctypes.CFUNCTYPE(c_int, c_void_p, c_int, c_int, POINTER(vf_latents))


class vf_generate_params(Structure):
    _fields_ = [("prompt", c_char_p), ("negative_prompt", c_char_p), ("steps", c_int),
                ("guidance_scale", c_float), ("width", c_int), ("height", c_int),
                ("seed", c_uint64), ("sampler", c_int),
                ("original_width", c_int), ("original_height", c_int),
                ("crop_top", c_int), ("crop_left", c_int),
                ("target_width", c_int), ("target_height", c_int),
                ("on_step", vf_progress_fn), ("user", c_void_p), ("dump_path", c_char_p),
                ("prompt_syntax", c_int), ("on_latents", vf_latents_fn)]


class vf_plan_options(Structure):
    _fields_ = [("vram_budget", c_uint64), ("offload", c_int), ("allow_stream", c_int),
                ("dtype_policy", c_int), ("width", c_int), ("height", c_int), ("steps", c_int),
                ("cfg", c_int), ("link_bandwidth", c_double), ("device_flops", c_double),
                ("host_flops", c_double), ("context_overhead", c_uint64), ("free_vram", c_uint64),
                ("available_ram", c_uint64), ("flash_attention", c_int)]


class vf_memory_usage(Structure):
    _fields_ = [("device_reserved", c_uint64), ("device_allocated", c_uint64), ("host", c_uint64)]


class vf_component_placement(Structure):
    _fields_ = [("present", c_int), ("device", c_char_p), ("dtype", c_int), ("stage", c_int),
                ("loaded", c_int), ("per_stage", c_int), ("resident_bytes", c_uint64),
                ("streamed_bytes", c_uint64), ("ring_bytes", c_uint64),
                ("activation_bytes", c_uint64), ("ring_depth", c_int)]


class vf_pool_options(Structure):
    _fields_ = [("device_capacity", c_uint64), ("host_capacity", c_uint64),
                ("pinned_capacity", c_uint64), ("eviction", c_int),
                ("pipeline", c_void_p)]


class vf_pool_model_info(Structure):
    _fields_ = [("id", c_char_p), ("path", c_char_p), ("kind", c_int), ("tier", c_int),
                ("bytes", c_uint64), ("bytes_at", c_uint64 * VF_TIER_COUNT),
                ("component_bytes", c_uint64 * VF_COMPONENT_COUNT), ("uses", c_uint64),
                ("last_use", c_uint64)]


class vf_pool_usage(Structure):
    _fields_ = [("bytes", c_uint64 * VF_TIER_COUNT), ("device_capacity", c_uint64),
                ("host_capacity", c_uint64), ("pinned_capacity", c_uint64), ("models", c_size_t),
                ("loaded", c_size_t), ("evictions", c_uint64)]


class vf_lora_info(Structure):
    _fields_ = [("id", c_int), ("strength", c_float), ("rank", c_int), ("keys", c_int),
                ("matched_keys", c_int), ("unmatched_keys", c_int), ("weights", c_int),
                ("weights_by_component", c_int * VF_COMPONENT_COUNT), ("bytes", c_uint64)]


# Checked by the tests against the C compiler's sizeof().
STRUCTS = {
    "vf_device_info": vf_device_info, "vf_resources": vf_resources,
    "vf_pipeline_options": vf_pipeline_options, "vf_model_options": vf_model_options,
    "vf_component_info": vf_component_info, "vf_embeddings": vf_embeddings,
    "vf_latents": vf_latents, "vf_image": vf_image, "vf_generate_params": vf_generate_params,
    "vf_memory_usage": vf_memory_usage, "vf_plan_options": vf_plan_options, "vf_component_placement": vf_component_placement,
    "vf_pool_options": vf_pool_options, "vf_pool_model_info": vf_pool_model_info,
    "vf_pool_usage": vf_pool_usage,
}
STRUCTS["vf_lora_info"] = vf_lora_info

# ---- prototypes ----------------------------------------------------------------------

_P = c_void_p       # opaque handles
_PP = POINTER(c_void_p)
_status = c_int

_PROTOTYPES = {
    # name: (restype, argtypes)
    "vf_status_str": (c_char_p, [c_int]),
    "vf_last_error": (c_char_p, []),
    "vf_version": (c_char_p, []),
    "vf_dtype_name": (c_char_p, [c_int]),
    "vf_detect_resources": (_status, [POINTER(vf_resources)]),
    "vf_resources_to_json": (_status, [POINTER(vf_resources), c_char_p, c_size_t]),
    "vf_arch_name": (c_char_p, [c_int]),
    "vf_component_name": (c_char_p, [c_int]),
    "vf_model_options_init": (None, [POINTER(vf_model_options)]),
    "vf_model_open": (_status, [c_char_p, POINTER(vf_model_options), _PP]),
    "vf_model_close": (None, [_P]),
    "vf_model_arch": (c_int, [_P]),
    "vf_model_component_info": (_status, [_P, c_int, POINTER(vf_component_info)]),
    "vf_tokenizer_load": (_status, [c_char_p, _PP]),
    "vf_tokenizer_load_files": (_status, [c_char_p, c_char_p, c_char_p, _PP]),
    "vf_tokenizer_free": (None, [_P]),
    "vf_tokenizer_special_ids": (None, [_P, POINTER(c_int32), POINTER(c_int32), POINTER(c_int32)]),
    "vf_tokenizer_vocab_size": (c_int32, [_P]),
    "vf_tokenize": (_status, [_P, c_char_p, POINTER(c_int32), c_size_t, POINTER(c_size_t)]),
    "vf_tokenize_window": (_status, [_P, c_char_p, POINTER(c_int32)]),
    "vf_prompt_syntax_name": (c_char_p, [c_int]),
    "vf_prompt_syntax_parse": (_status, [c_char_p, POINTER(c_int)]),
    "vf_encode_prompt_ex": (_status, [_P, c_char_p, c_char_p, c_int, POINTER(POINTER(vf_embeddings))]),
    "vf_embeddings_free": (None, [POINTER(vf_embeddings)]),
    "vf_sampler_name": (c_char_p, [c_int]),
    "vf_sampler_parse": (_status, [c_char_p, POINTER(c_int)]),
    "vf_generation_step_name": (c_char_p, [c_int]),
    "vf_generate_params_init": (None, [POINTER(vf_generate_params)]),
    "vf_latents_free": (None, [POINTER(vf_latents)]),
    "vf_image_free": (None, [POINTER(vf_image)]),
    "vf_image_save_png": (_status, [POINTER(vf_image), c_char_p, c_char_p]),
    "vf_latents_preview": (_status, [c_int, POINTER(vf_latents), c_int, POINTER(POINTER(vf_image))]),
    "vf_model_sampler": (_status, [_P, c_int, POINTER(c_int)]),
    "vf_denoise": (_status, [_P, POINTER(vf_generate_params), POINTER(vf_embeddings),
                             POINTER(POINTER(vf_latents))]),
    "vf_decode": (_status, [_P, POINTER(vf_latents), POINTER(POINTER(vf_image))]),
    "vf_generate": (_status, [_P, POINTER(vf_generate_params), POINTER(POINTER(vf_image))]),
    "vf_offload_strategy_name": (c_char_p, [c_int]),
    "vf_offload_strategy_parse": (_status, [c_char_p, POINTER(c_int)]),
    "vf_loading_strategy_name": (c_char_p, [c_int]),
    "vf_loading_strategy_parse": (_status, [c_char_p, POINTER(c_int)]),
    "vf_dtype_policy_name": (c_char_p, [c_int]),
    "vf_dtype_policy_parse": (_status, [c_char_p, POINTER(c_int)]),
    "vf_eviction_policy_name": (c_char_p, [c_int]),
    "vf_eviction_policy_parse": (_status, [c_char_p, POINTER(c_int)]),
    "vf_tier_name": (c_char_p, [c_int]),
    "vf_tier_parse": (_status, [c_char_p, POINTER(c_int)]),
    "vf_parse_size": (_status, [c_char_p, POINTER(c_uint64)]),
    "vf_track_usage_begin": (_status, [c_char_p]),
    "vf_track_usage_end": (_status, [POINTER(vf_memory_usage)]),
    "vf_usage_stage_count": (c_int, []),
    "vf_usage_stage": (_status, [c_int, c_char_p, c_size_t, POINTER(vf_memory_usage)]),
    "vf_get_memory_usage": (None, [POINTER(vf_memory_usage), POINTER(vf_memory_usage)]),
    "vf_get_peak_vram_usage": (c_uint64, []),
    "vf_reset_peak_usage": (None, []),
    "vf_clear_cache": (c_uint64, []),
    "vf_plan_options_init": (None, [POINTER(vf_plan_options)]),
    "vf_model_plan": (_status, [_P, POINTER(vf_plan_options), _PP]),
    "vf_plan_free": (None, [_P]),
    "vf_plan_to_json": (_status, [_P, POINTER(ctypes.c_void_p)]),
    "vf_string_free": (None, [c_void_p]),
    "vf_pipeline_options_init": (None, [POINTER(vf_pipeline_options)]),
    "vf_model_is_loaded": (c_int, [_P]),
    "vf_model_load": (_status, [_P]),
    "vf_model_unload": (None, [_P]),
    "vf_model_device_name": (c_char_p, [_P]),
    "vf_model_component_placement": (_status, [_P, c_int, POINTER(vf_component_placement)]),
    "vf_model_get_plan": (_status, [_P, _PP]),
    "vf_pool_kind_name": (c_char_p, [c_int]),
    "vf_pool_options_init": (None, [POINTER(vf_pool_options)]),
    "vf_pool_create": (_status, [POINTER(vf_pool_options), _PP]),
    "vf_pool_free": (None, [_P]),
    "vf_pool_register": (_status, [_P, c_char_p, c_char_p]),
    "vf_pool_register_lora": (_status, [_P, c_char_p, c_char_p]),
    "vf_pool_load_registry": (_status, [_P, c_char_p]),
    "vf_pool_load": (_status, [_P, c_char_p, c_int]),
    "vf_pool_unload": (_status, [_P, c_char_p]),
    "vf_pool_is_loaded": (_status, [_P, c_char_p, POINTER(c_int)]),
    "vf_pool_touch": (_status, [_P, c_char_p]),
    "vf_pool_info": (_status, [_P, c_char_p, POINTER(vf_pool_model_info)]),
    "vf_pool_count": (c_size_t, [_P]),
    "vf_pool_info_at": (_status, [_P, c_size_t, POINTER(vf_pool_model_info)]),
    "vf_pool_get_usage": (_status, [_P, POINTER(vf_pool_usage)]),
    "vf_pool_model": (_status, [_P, c_char_p, _PP]),
    "vf_model_add_lora": (_status, [_P, c_char_p, c_float, POINTER(vf_lora_info)]),
    "vf_model_add_pool_lora": (_status, [_P, _P, c_char_p, c_float, POINTER(vf_lora_info)]),
    "vf_model_set_lora_strength": (_status, [_P, c_int, c_float]),
    "vf_model_remove_lora": (_status, [_P, c_int]),
    "vf_model_clear_loras": (None, [_P]),
    "vf_model_lora_count": (c_size_t, [_P]),
    "vf_model_lora_at": (_status, [_P, c_size_t, POINTER(vf_lora_info)]),
}


class _Missing:
    """Stands in for a function this build of the library lacks: calling it says so."""

    def __init__(self, name):
        self.name = name

    def __call__(self, *args):
        raise NotImplementedError(f"{self.name} is not in {LIBRARY_PATH} (an older libvramfit?)")


class _Functions:
    pass


C = _Functions()
for _name, (_res, _args) in _PROTOTYPES.items():
    try:
        _f = getattr(lib, _name)
    except AttributeError:
        setattr(C, _name, _Missing(_name))
        continue
    _f.restype = _res
    _f.argtypes = _args
    setattr(C, _name, _f)

# ---- helpers ---------------------------------------------------------------------------


def text(b):
    """A C string (bytes or None) as str."""
    return b.decode("utf-8", "replace") if b is not None else None


def enc(s):
    """A str (or path-like, or None) as a NUL-free UTF-8 C string."""
    if s is None:
        return None
    s = os.fspath(s)
    b = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else bytes(s)
    if b"\0" in b:
        raise ValueError("vramfit: strings passed to the library cannot contain NUL characters")
    return b


def error_for(status):
    """The exception for a failed call, with the message vf_last_error() holds now."""
    msg = text(C.vf_last_error()) or text(C.vf_status_str(status))
    cls = Cancelled if status == VF_ERR_CANCELLED else VramfitError
    return cls(status, msg)


def check(status):
    """Raises VramfitError (Cancelled for VF_ERR_CANCELLED) unless status is VF_OK."""
    if status != VF_OK:
        raise error_for(status)


def component_name(c):
    return text(C.vf_component_name(c))


def version():
    return text(C.vf_version())
