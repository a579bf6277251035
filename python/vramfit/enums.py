"""The C enums as Python IntEnums, under the names Python users know.

The values are the C values (include/vramfit.h). Text names come from the
library itself: Enum.c_name is what vf_*_name() returns, and Enum.parse()
accepts a member, its int value, or any text the C parser accepts (so "cpu-offload",
"CPU_OFFLOAD" and OffloadStrategy.CPU_OFFLOAD are the same argument everywhere).
"""

import ctypes
import enum

from . import _lib
from ._lib import C


class _CEnum(enum.IntEnum):
    """Base: subclasses set _c_name_fn and _c_parse_fn (names in the C library)."""

    @property
    def c_name(self):
        return _lib.text(getattr(C, self._c_name_fn())(int(self)))

    @classmethod
    def parse(cls, value):
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            member = cls.__members__.get(value.upper().replace("-", "_"))
            if member is not None:
                return member
            parse = cls._c_parse_fn()
            if parse is None:
                raise ValueError(f"{cls.__name__}: unknown name {value!r}; expected one of "
                                 + ", ".join(m.name.lower() for m in cls))
            out = ctypes.c_int()
            _lib.check(getattr(C, parse)(_lib.enc(value), ctypes.byref(out)))
            return cls(out.value)
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value)
        raise TypeError(f"{cls.__name__}: expected a {cls.__name__}, an int or a name, "
                        f"got {type(value).__name__}")


class OffloadStrategy(_CEnum):
    """vf_offload_strategy: where components compute and how weights reach the device."""
    AUTO = 0
    FULL_GPU = 1
    CPU_OFFLOAD = 2
    SEQUENTIAL = 3
    STREAM = 4

    @staticmethod
    def _c_name_fn():
        return "vf_offload_strategy_name"

    @staticmethod
    def _c_parse_fn():
        return "vf_offload_strategy_parse"


class LoadingStrategy(_CEnum):
    """vf_loading_strategy: load at open (EAGER) or when a stage first needs it."""
    EAGER = 0
    ON_DEMAND = 1

    @staticmethod
    def _c_name_fn():
        return "vf_loading_strategy_name"

    @staticmethod
    def _c_parse_fn():
        return "vf_loading_strategy_parse"


class DTypePolicy(_CEnum):
    """vf_dtype_policy: the storage dtype of weights."""
    AUTO = 0
    FAST = 1
    F32 = 2
    F16 = 3
    BF16 = 4
    F8 = 5
    Q8 = 6
    Q4 = 7

    @staticmethod
    def _c_name_fn():
        return "vf_dtype_policy_name"

    @staticmethod
    def _c_parse_fn():
        return "vf_dtype_policy_parse"


class EvictionPolicy(_CEnum):
    """vf_eviction_policy: which pool models make room. SIZE is LARGEST (largest first)."""
    LRU = 0
    LFU = 1
    LARGEST = 2
    SIZE = 2

    @staticmethod
    def _c_name_fn():
        return "vf_eviction_policy_name"

    @staticmethod
    def _c_parse_fn():
        return "vf_eviction_policy_parse"


class Tier(_CEnum):
    """vf_tier: memory tiers, slowest first."""
    DISK = 0
    HOST = 1
    PINNED = 2
    DEVICE = 3

    @staticmethod
    def _c_name_fn():
        return "vf_tier_name"

    @staticmethod
    def _c_parse_fn():
        return "vf_tier_parse"


class GenerationStep(_CEnum):
    """vf_generation_step: the stages of text-to-image, in order."""
    ENCODE_PROMPT = 0
    DENOISE = 1
    DECODE = 2

    @staticmethod
    def _c_name_fn():
        return "vf_generation_step_name"

    @staticmethod
    def _c_parse_fn():
        return None


class Sampler(_CEnum):
    """vf_sampler: DEFAULT follows the model's scheduler_config.json."""
    DEFAULT = 0
    EULER = 1
    EULER_A = 2
    DDIM = 3
    DPMPP_2M = 4
    PNDM = 5

    @staticmethod
    def _c_name_fn():
        return "vf_sampler_name"

    @staticmethod
    def _c_parse_fn():
        return "vf_sampler_parse"


class PromptSyntax(_CEnum):
    """vf_prompt_syntax: how prompt text is read (A1111 weights, plain, diffusers)."""
    A1111 = 0
    PLAIN = 1
    DIFFUSERS = 2

    @staticmethod
    def _c_name_fn():
        return "vf_prompt_syntax_name"

    @staticmethod
    def _c_parse_fn():
        return "vf_prompt_syntax_parse"


class Status(enum.IntEnum):
    """vf_status (VramfitError.status)."""
    OK = 0
    INVALID_ARG = 1
    IO = 2
    FORMAT = 3
    NOT_FOUND = 4
    SHAPE = 5
    UNSUPPORTED = 6
    NO_MEMORY = 7
    DEVICE = 8
    BUDGET = 9
    CANCELLED = 10
    INTERNAL = 11
    NONFINITE = 12
