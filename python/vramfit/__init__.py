"""vramfit: Stable Diffusion (SD1.5, SDXL) in whatever GPU memory you have.

Python bindings over libvramfit's C API (ctypes, no other dependency). Every
C call is checked: a failure raises VramfitError(status, message) with the
library's message (vf_last_error); a cancelled run raises Cancelled.

    import vramfit
    pipe = vramfit.IntelligentGenerationPipeline("path/to/model", device="sim",
                                                 max_vram_usage_gb=2)
    image = pipe.generate("a red circle on a blue background", steps=20, seed=1)
    image.save("out.png")
"""

from ._lib import LIBRARY_PATH, Cancelled, VramfitError, version
from .enums import (DTypePolicy, EvictionPolicy, GenerationStep, LoadingStrategy, OffloadStrategy,
                    PromptSyntax, Sampler, Status, Tier)
from .memory import MemoryManager
from .pipeline import Embeddings, Image, IntelligentGenerationPipeline, Latents
from .pool import ModelPool
from .tokenizer import Tokenizer

__version__ = version()

__all__ = [
    "VramfitError", "Cancelled", "LIBRARY_PATH", "version", "__version__",
    "OffloadStrategy", "LoadingStrategy", "DTypePolicy", "EvictionPolicy", "GenerationStep",
    "Tier", "Sampler", "PromptSyntax", "Status",
    "MemoryManager", "ModelPool", "IntelligentGenerationPipeline", "Embeddings", "Latents",
    "Image", "Tokenizer",
]
