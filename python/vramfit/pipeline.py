"""IntelligentGenerationPipeline: an open model with its memory options, and what it makes.

One pipeline is one vf_model opened with vf_pipeline_options (device,
offload strategy, VRAM budget, loading strategy, dtype policy). generate()
runs vf_generate, or one stage (step=GenerationStep.X) taking and returning the
stage objects: Embeddings (vf_embeddings), Latents (vf_latents) and Image. The
stage objects own their C memory and free it when collected (or on close()).

Defaults are the C defaults: an argument left None is not set, so
vf_generate_params_init's values (20 steps, guidance 7.5, the model's size,
seed 0, the scheduler of the model) apply.

The progress callback is callback(step: GenerationStep, i: int, total: int);
a truthy return cancels the run, which then raises vramfit.Cancelled. An
exception raised inside the callback also cancels and is re-raised (with the
Cancelled error as its context).
"""

import array
import ctypes
import json
import os

from . import _lib
from ._lib import C
from .enums import (DTypePolicy, GenerationStep, LoadingStrategy, OffloadStrategy, PromptSyntax,
                    Sampler, Tier)
from .pool import size_bytes


def _floats(ptr, n):
    """A copy of n floats at a C pointer, as array('f')."""
    out = array.array("f", bytes(n * 4))
    if n:
        ctypes.memmove(out.buffer_info()[0], ptr, n * 4)
    return out


class Embeddings:
    """ENCODE_PROMPT's output (vf_embeddings): prompt and negative (seq_len x dim floats),
    SDXL's pooled vectors (pooled_dim floats, or None)."""

    def __init__(self, ptr):
        self._ptr = ptr

    def _e(self):
        if not self._ptr:
            raise ValueError("Embeddings are closed")
        return self._ptr.contents

    @property
    def seq_len(self):
        return self._e().seq_len

    @property
    def dim(self):
        return self._e().dim

    @property
    def pooled_dim(self):
        return self._e().pooled_dim

    @property
    def prompt(self):
        e = self._e()
        return _floats(e.prompt, e.seq_len * e.dim)

    @property
    def negative(self):
        e = self._e()
        return _floats(e.negative, e.seq_len * e.dim)

    @property
    def pooled(self):
        e = self._e()
        return _floats(e.pooled, e.pooled_dim) if e.pooled else None

    @property
    def negative_pooled(self):
        e = self._e()
        return _floats(e.negative_pooled, e.pooled_dim) if e.negative_pooled else None

    def close(self):
        if getattr(self, "_ptr", None):
            C.vf_embeddings_free(self._ptr)
            self._ptr = None

    def __del__(self):
        self.close()

    def __repr__(self):
        return f"Embeddings(seq_len={self.seq_len}, dim={self.dim}, pooled_dim={self.pooled_dim})"


class Latents:
    """DENOISE's output (vf_latents): float32 (batch, channels, height, width), not yet
    divided by the VAE's scaling factor. Latents.from_floats makes ones to decode."""

    def __init__(self, ptr, owned_by_c=True, keep=None):
        self._ptr = ptr
        self._owned_by_c = owned_by_c
        self._keep = keep          # the Python buffer behind from_floats' latents

    @classmethod
    def from_floats(cls, shape, data):
        b, c, h, w = (int(x) for x in shape)
        n = b * c * h * w
        if min(b, c, h, w) <= 0 or len(data) != n:
            raise ValueError(f"Latents.from_floats: {len(data)} values for shape {tuple(shape)}")
        buf = (ctypes.c_float * n)(*data)
        lat = _lib.vf_latents(batch=b, channels=c, height=h, width=w,
                              data=ctypes.cast(buf, ctypes.POINTER(ctypes.c_float)))
        return cls(ctypes.pointer(lat), owned_by_c=False, keep=(buf, lat))

    def _l(self):
        if not self._ptr:
            raise ValueError("Latents are closed")
        return self._ptr.contents

    @property
    def shape(self):
        lt = self._l()
        return (lt.batch, lt.channels, lt.height, lt.width)

    @property
    def data(self):
        lt = self._l()
        return _floats(lt.data, lt.batch * lt.channels * lt.height * lt.width)

    def preview(self, arch, scale=8):
        """A cheap Image of the first latent without the VAE (vf_latents_preview); arch is
        "sd15" or "sdxl" (a pipeline's .arch); scale 1..64 pixels per latent pixel."""
        codes = {"sd15": 1, "sdxl": 2}
        if arch not in codes:
            raise ValueError(f"Latents.preview: arch {arch!r}: expected 'sd15' or 'sdxl'")
        out = ctypes.POINTER(_lib.vf_image)()
        _lib.check(C.vf_latents_preview(codes[arch], self._ptr, int(scale), ctypes.byref(out)))
        return Image._from_c(out)

    def close(self):
        if getattr(self, "_ptr", None):
            if self._owned_by_c:
                C.vf_latents_free(self._ptr)
            self._ptr = None
            self._keep = None

    def __del__(self):
        self.close()

    def __repr__(self):
        return f"Latents(shape={self.shape})"


class Image:
    """A generated image: width, height, rgb (bytes, (height, width, 3) uint8), pixels
    (array('f'), the same in [0,1] before quantization, or None) and parameters
    (the generation record saved in the PNG)."""

    def __init__(self, width, height, rgb, pixels=None, parameters=None):
        if len(rgb) != width * height * 3:
            raise ValueError(f"Image: rgb has {len(rgb)} bytes, {width}x{height}x3 expected")
        self.width = width
        self.height = height
        self.rgb = bytes(rgb)
        self.pixels = pixels
        self.parameters = parameters

    @classmethod
    def _from_c(cls, ptr, parameters=None):
        try:
            im = ptr.contents
            n = im.width * im.height
            rgb = ctypes.string_at(im.rgb, n * 3)
            pixels = _floats(im.pixels, n * 3) if im.pixels else None
            return cls(im.width, im.height, rgb, pixels, parameters)
        finally:
            C.vf_image_free(ptr)

    @property
    def size(self):
        return (self.width, self.height)

    def save(self, path, parameters=None):
        """Writes a PNG (vf_image_save_png) with a "parameters" text chunk: the argument,
        else the record generate() left in .parameters (none when both are None)."""
        buf = (ctypes.c_uint8 * len(self.rgb)).from_buffer_copy(self.rgb)
        im = _lib.vf_image(width=self.width, height=self.height,
                           rgb=ctypes.cast(buf, ctypes.POINTER(ctypes.c_uint8)), pixels=None)
        params = parameters if parameters is not None else self.parameters
        _lib.check(C.vf_image_save_png(ctypes.byref(im), _lib.enc(path), _lib.enc(params)))

    def __repr__(self):
        return f"Image({self.width}x{self.height})"


class _Progress:
    """The C callbacks around the Python ones; keeps the first exception raised in them."""

    def __init__(self, callback, latents_callback=None):
        self.callback = callback
        self.latents_callback = latents_callback
        self.error = None
        self.fn = _lib.vf_progress_fn(self._call) if callback else _lib.vf_progress_fn()
        self.latents_fn = (_lib.vf_latents_fn(self._latents) if latents_callback
                           else _lib.vf_latents_fn())

    def _call(self, user, stage, step, total):
        try:
            return 1 if self.callback(GenerationStep(stage), step, total) else 0
        except BaseException as e:  # noqa: B036 - handed back after the C call returns
            self.error = e
            return 1

    def _latents(self, user, step, total, latents):
        try:
            lt = latents.contents     # borrowed for the call: hand Python a copy
            shape = (lt.batch, lt.channels, lt.height, lt.width)
            copy = Latents.from_floats(shape, _floats(lt.data, shape[0] * shape[1] * shape[2] * shape[3]))
            return 1 if self.latents_callback(step, total, copy) else 0
        except BaseException as e:  # noqa: B036
            self.error = e
            return 1

    def check(self, status):
        if self.error is not None:
            err, self.error = self.error, None
            raise err from (_lib.error_for(status) if status != _lib.VF_OK else None)
        _lib.check(status)


class IntelligentGenerationPipeline(_lib.Owned):
    """A text-to-image pipeline under vramfit's memory manager.

    model_id_or_path: a diffusers folder or single-file checkpoint, or an id
    registered in `pool` (then the pool's path is opened and the pool loads the
    model into DEVICE, or HOST on the "cpu" device, at open and on each generate).
    offload_strategy, loading_strategy, dtype_policy: enum members or their names.
    max_vram_usage_gb: the device budget in GiB, or a size text ("6G"); None: automatic.
    tokenizer: a folder with tokenizer/ (single-file checkpoints); config: a diffusers
    folder describing a single-file checkpoint. device: "cpu" (default), "sim[...]"
    (the simulated device, see vf_pipeline_options) or "cuda". backend: the compute
    backend, None or "cpu" (float32), "cuda" / "cuda:bf16" (see vf_model_options).
    """

    def __init__(self, model_id_or_path, offload_strategy=OffloadStrategy.AUTO,
                 max_vram_usage_gb=None, loading_strategy=LoadingStrategy.ON_DEMAND,
                 dtype_policy=DTypePolicy.AUTO, pool=None, tokenizer=None, config=None,
                 device=None, backend=None):
        self._h = None
        self._borrowed = False
        self._lora_sources = {}
        self.model_id = str(model_id_or_path)
        self.pool = pool
        path = model_id_or_path
        if pool is not None and isinstance(model_id_or_path, str) and model_id_or_path in pool:
            path = pool.info(model_id_or_path)["path"]
            self._pool_id = model_id_or_path
        else:
            self._pool_id = None
        self.path = os.fspath(path)
        if self._pool_id is not None and getattr(pool, "device", None) is not None:
            # The pool moves weights: generate with its own model (its device and
            # options are the pool's), which goes back to the device through the
            # pool before every stage.
            self._h = pool._model(self._pool_id)
            self._borrowed = True
            return
        po = _lib.vf_pipeline_options()
        C.vf_pipeline_options_init(ctypes.byref(po))
        dev = _lib.enc(device)
        po.device = dev
        po.offload = int(OffloadStrategy.parse(offload_strategy))
        po.vram_budget = 0 if max_vram_usage_gb is None else size_bytes(max_vram_usage_gb,
                                                                        "max_vram_usage_gb")
        po.loading = int(LoadingStrategy.parse(loading_strategy))
        po.dtype_policy = int(DTypePolicy.parse(dtype_policy))
        mo = _lib.vf_model_options()
        C.vf_model_options_init(ctypes.byref(mo))
        tok, cfg = _lib.enc(tokenizer), _lib.enc(config)
        mo.tokenizer_dir = tok
        mo.config_dir = cfg
        mo.pipeline = ctypes.pointer(po)
        be = _lib.enc(backend)
        mo.backend = be
        h = ctypes.c_void_p()
        _lib.check(C.vf_model_open(_lib.enc(self.path), ctypes.byref(mo), ctypes.byref(h)))
        self._h = h
        self._pool_use()

    # ---- handle -------------------------------------------------------------------

    def _free(self, h):
        if not self._borrowed:
            C.vf_model_close(h)

    def _handle(self):
        # A pool's model lives as long as its pool: a closed pool leaves nothing to use.
        if self._borrowed and not self.pool._h:
            raise ValueError("IntelligentGenerationPipeline: its model pool is closed")
        return super()._handle()

    def _pool_use(self):
        if self._pool_id is not None and not self._borrowed:
            tier = Tier.HOST if self.device == "cpu" else Tier.DEVICE
            self.pool.load(self._pool_id, tier)

    # ---- the model ----------------------------------------------------------------

    @property
    def arch(self):
        """"sd15" or "sdxl" (vf_arch_name)."""
        return _lib.text(C.vf_arch_name(C.vf_model_arch(self._handle())))

    @property
    def device(self):
        """The device the model was opened on: "cpu", "sim" or "cuda"."""
        return _lib.text(C.vf_model_device_name(self._handle()))

    @property
    def is_loaded(self):
        """True while the model holds weights or device memory for generation."""
        return bool(C.vf_model_is_loaded(self._handle()))

    def load(self):
        """Loads now what EAGER loads at open (vf_model_load)."""
        _lib.check(C.vf_model_load(self._handle()))

    def unload(self):
        """Frees every loaded weight and the device arena; the next stage reloads."""
        C.vf_model_unload(self._handle())

    # ---- LoRAs --------------------------------------------------------------------

    def _lora_dict(self, i):
        return {
            "id": i.id, "strength": i.strength, "source": self._lora_sources.get(i.id),
            "rank": i.rank, "keys": i.keys, "matched_keys": i.matched_keys,
            "unmatched_keys": i.unmatched_keys, "weights": i.weights,
            "weights_by_component": {_lib.component_name(c): i.weights_by_component[c]
                                     for c in range(_lib.VF_COMPONENT_COUNT)
                                     if i.weights_by_component[c]},
            "bytes": i.bytes,
        }

    def add_lora(self, path_or_pool_id, strength=1.0, pool=None):
        """Applies a LoRA (kohya or diffusers/PEFT .safetensors) at strength; several
        may be active at once. path_or_pool_id: a file, or the id of a LoRA registered
        in `pool` (default: the pipeline's pool), which then counts a use and holds it
        in HOST. Returns its record: {"id", "strength", "weights", "unmatched_keys",
        ...}; "id" is what set_lora_strength and remove_lora take. A LoRA for another
        architecture, a malformed file or a shape that does not fit raises
        VramfitError and changes nothing. The model's weights are converted again
        with the LoRAs at the next stage (vf_model_add_lora)."""
        info = _lib.vf_lora_info()
        pool = self.pool if pool is None else pool
        if pool is not None and isinstance(path_or_pool_id, str) and path_or_pool_id in pool:
            _lib.check(C.vf_model_add_pool_lora(self._handle(), pool._handle(),
                                                _lib.enc(path_or_pool_id), float(strength),
                                                ctypes.byref(info)))
        else:
            _lib.check(C.vf_model_add_lora(self._handle(), _lib.enc(path_or_pool_id),
                                           float(strength), ctypes.byref(info)))
        self._lora_sources[info.id] = os.fspath(path_or_pool_id)
        return self._lora_dict(info)

    def set_lora_strength(self, lora_id, strength):
        """Changes one LoRA's strength (0 turns it off: the checkpoint's weights exactly)."""
        _lib.check(C.vf_model_set_lora_strength(self._handle(), int(lora_id), float(strength)))

    def remove_lora(self, lora_id):
        _lib.check(C.vf_model_remove_lora(self._handle(), int(lora_id)))
        self._lora_sources.pop(int(lora_id), None)

    def clear_loras(self):
        C.vf_model_clear_loras(self._handle())
        self._lora_sources.clear()

    @property
    def loras(self):
        """The active LoRAs' records, in the order they apply."""
        out = []
        for k in range(C.vf_model_lora_count(self._handle())):
            i = _lib.vf_lora_info()
            _lib.check(C.vf_model_lora_at(self._handle(), k, ctypes.byref(i)))
            out.append(self._lora_dict(i))
        return out

    @property
    def components(self):
        """{name: {"device", "dtype", "stage", "loaded", "per_stage", byte counts...}} under
        the model's current plan, for the components the model has."""
        out = {}
        for c in range(_lib.VF_COMPONENT_COUNT):
            p = _lib.vf_component_placement()
            _lib.check(C.vf_model_component_placement(self._handle(), c, ctypes.byref(p)))
            if not p.present:
                continue
            out[_lib.component_name(c)] = {
                "device": _lib.text(p.device), "dtype": _lib.text(C.vf_dtype_name(p.dtype)),
                "stage": GenerationStep(p.stage), "loaded": bool(p.loaded),
                "per_stage": bool(p.per_stage), "resident_bytes": p.resident_bytes,
                "streamed_bytes": p.streamed_bytes, "ring_bytes": p.ring_bytes,
                "activation_bytes": p.activation_bytes, "ring_depth": p.ring_depth,
            }
        return out

    @staticmethod
    def _plan_json(plan):
        s = ctypes.c_void_p()
        _lib.check(C.vf_plan_to_json(plan, ctypes.byref(s)))
        try:
            return json.loads(ctypes.string_at(s).decode("utf-8"))
        finally:
            C.vf_string_free(s)

    def plan(self, **what_if):
        """The plan the model runs (the last request's, or the default one) as a dict
        (vf_plan_to_json, as `vramfit plan --json` prints).

        With keyword arguments, a plan made for them instead (vf_model_plan; nothing
        is loaded): max_vram_usage_gb, offload_strategy, dtype_policy, width, height,
        steps, guidance (bool), allow_stream (bool), free_vram_gb, available_ram_gb
        (sizes as for max_vram_usage_gb: GiB or text), link_bandwidth, device_flops,
        host_flops (per second), context_overhead (bytes). Unset ones: the C defaults."""
        if not what_if:
            plan = ctypes.c_void_p()
            _lib.check(C.vf_model_get_plan(self._handle(), ctypes.byref(plan)))
            return self._plan_json(plan)
        o = _lib.vf_plan_options()
        C.vf_plan_options_init(ctypes.byref(o))
        setters = {
            "max_vram_usage_gb": lambda v: setattr(o, "vram_budget", size_bytes(v, "max_vram_usage_gb")),
            "free_vram_gb": lambda v: setattr(o, "free_vram", size_bytes(v, "free_vram_gb")),
            "available_ram_gb": lambda v: setattr(o, "available_ram", size_bytes(v, "available_ram_gb")),
            "offload_strategy": lambda v: setattr(o, "offload", int(OffloadStrategy.parse(v))),
            "dtype_policy": lambda v: setattr(o, "dtype_policy", int(DTypePolicy.parse(v))),
            "guidance": lambda v: setattr(o, "cfg", 1 if v else 0),
            "allow_stream": lambda v: setattr(o, "allow_stream", 1 if v else 0),
        }
        for name in ("width", "height", "steps", "context_overhead", "link_bandwidth",
                     "device_flops", "host_flops"):
            setters[name] = (lambda n: lambda v: setattr(o, n, v))(name)
        for name, value in what_if.items():
            if name not in setters:
                raise TypeError(f"plan: unknown option {name!r}; known: {', '.join(sorted(setters))}")
            setters[name](value)
        plan = ctypes.c_void_p()
        _lib.check(C.vf_model_plan(self._handle(), ctypes.byref(o), ctypes.byref(plan)))
        try:
            return self._plan_json(plan)
        finally:
            C.vf_plan_free(plan)

    def sampler(self, requested=Sampler.DEFAULT):
        """The sampler a generation with `requested` runs (DEFAULT resolved)."""
        out = ctypes.c_int()
        _lib.check(C.vf_model_sampler(self._handle(), int(Sampler.parse(requested)),
                                      ctypes.byref(out)))
        return Sampler(out.value)

    # ---- stages -------------------------------------------------------------------

    def encode_prompt(self, prompt, negative_prompt=None, prompt_syntax=PromptSyntax.A1111):
        """ENCODE_PROMPT: Embeddings of the prompt and its negative."""
        out = ctypes.POINTER(_lib.vf_embeddings)()
        _lib.check(C.vf_encode_prompt_ex(self._handle(), _lib.enc(prompt or ""),
                                         _lib.enc(negative_prompt),
                                         int(PromptSyntax.parse(prompt_syntax)), ctypes.byref(out)))
        return Embeddings(out)

    def _params(self, prompt, negative_prompt, steps, guidance_scale, width, height, seed,
                sampler, prompt_syntax, progress):
        p = _lib.vf_generate_params()
        C.vf_generate_params_init(ctypes.byref(p))
        keep = [_lib.enc(prompt), _lib.enc(negative_prompt)]
        p.prompt, p.negative_prompt = keep
        if steps is not None:
            p.steps = steps
        if guidance_scale is not None:
            p.guidance_scale = guidance_scale
        if width is not None:
            p.width = width
        if height is not None:
            p.height = height
        if seed is not None:
            p.seed = seed
        p.sampler = int(Sampler.parse(sampler))
        p.prompt_syntax = int(PromptSyntax.parse(prompt_syntax))
        p.on_step = progress.fn
        p.on_latents = progress.latents_fn
        return p, keep

    def _parameters_text(self, prompt, negative_prompt, p, img):
        used = self.sampler(p.sampler).c_name
        name = os.path.basename(os.path.normpath(self.path))
        for ext in (".safetensors", ".ckpt"):
            if name.endswith(ext) and len(name) > len(ext):
                name = name[: -len(ext)]
        neg = f"Negative prompt: {negative_prompt}\n" if negative_prompt else ""
        return (f"{prompt or ''}\n{neg}Steps: {p.steps}, Sampler: {used}, CFG scale: "
                f"{p.guidance_scale:g}, Seed: {p.seed}, Size: {img.width}x{img.height}, "
                f"Model: {name}")

    def generate(self, prompt="", negative_prompt=None, steps=None, guidance_scale=None,
                 width=None, height=None, seed=None, sampler=Sampler.DEFAULT, step=None,
                 prompt_embeds=None, latents=None, callback=None,
                 prompt_syntax=PromptSyntax.A1111, latents_callback=None):
        """Text to image (vf_generate) -> Image; or with step= only that stage:

        step=GenerationStep.ENCODE_PROMPT -> Embeddings (prompt, negative_prompt)
        step=GenerationStep.DENOISE       -> Latents, from prompt_embeds (Embeddings)
        step=GenerationStep.DECODE        -> Image, from latents (Latents)

        callback(step, i, total) reports progress; a truthy return cancels
        (raises vramfit.Cancelled). The C stage calls of ENCODE_PROMPT and DECODE
        alone take no callback, so it is called for the whole run and DENOISE.
        latents_callback(i, total, latents) gets a copy of the Latents after each
        denoising step (Latents.preview makes a cheap picture); truthy cancels too.
        """
        progress = _Progress(callback, latents_callback)
        if step is not None:
            step = GenerationStep.parse(step)
        if step == GenerationStep.ENCODE_PROMPT:
            return self.encode_prompt(prompt, negative_prompt, prompt_syntax)
        self._pool_use()
        if step == GenerationStep.DECODE:
            if not isinstance(latents, Latents):
                raise TypeError("generate(step=DECODE) needs latents=Latents (from step=DENOISE)")
            out = ctypes.POINTER(_lib.vf_image)()
            _lib.check(C.vf_decode(self._handle(), latents._ptr, ctypes.byref(out)))
            return Image._from_c(out)
        p, keep = self._params(prompt, negative_prompt, steps, guidance_scale, width, height,
                               seed, sampler, prompt_syntax, progress)
        if step == GenerationStep.DENOISE:
            if not isinstance(prompt_embeds, Embeddings):
                raise TypeError("generate(step=DENOISE) needs prompt_embeds=Embeddings "
                                "(from step=ENCODE_PROMPT)")
            out = ctypes.POINTER(_lib.vf_latents)()
            st = C.vf_denoise(self._handle(), ctypes.byref(p), prompt_embeds._ptr, ctypes.byref(out))
            progress.check(st)
            return Latents(out)
        out = ctypes.POINTER(_lib.vf_image)()
        st = C.vf_generate(self._handle(), ctypes.byref(p), ctypes.byref(out))
        progress.check(st)
        del keep  # the C strings p pointed at
        img = Image._from_c(out)
        img.parameters = self._parameters_text(prompt, negative_prompt, p, img)
        return img

    __call__ = generate
