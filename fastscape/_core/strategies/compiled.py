"""``"vmap_compiled"``, ``"affine_compiled"``: the vmap and affine chunk functions through
``torch.compile`` (inductor: fused C++ on CPU, Triton on CUDA), and the compile cache.

Compiled functions are cached per model, strategy, loss and metrics; the chunk does not
depend on the grid (a smaller grid pads its one chunk) and the affine path's table of
distinct rows has a dynamic row count, so one compilation serves every grid size. The
first call pays the compilation (a few seconds with a warm on-disk cache, more the first
time on a machine: benchmarks/README.md); inductor's on-disk caches are kept on
(:func:`_persistent_compile_cache`).
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import nn

from .affine import AffineStrategy
from .base import NotApplicable, compiler_available
from .vmap import VmapStrategy


#: compiled chunk functions: the user's model -> {(strategy, loss, metrics, folded): (loss ref, function)}
_COMPILED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


class VmapCompiled(VmapStrategy):
    name = "vmap_compiled"
    compiled, eager = True, "vmap"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.fn = _compiled(self.name, ctx, self.fn)

    def best_chunk(self, plan: dict) -> int:
        return _compiled_chunk(self.ctx, plan)



class AffineCompiled(AffineStrategy):
    name = "affine_compiled"
    compiled, eager = True, "affine"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.fn = _compiled(self.name, ctx, self.fn)

    def best_chunk(self, plan: dict) -> int:
        return _compiled_chunk(self.ctx, plan)


#: compiled strategies run chunks this many times the eager plan on CPU
COMPILED_CHUNK_FACTOR = 4


def _compiled_chunk(ctx, plan: dict) -> int:
    """Compiled kernels fuse the chunk's intermediates, so on CPU they run best on chunks
    several times the eager plan (measured: seed-000 net 4x chunk, 1.7x faster; past ~32 MiB
    per gathered intermediate it falls off a cliff), within what free memory allows.

    The compiled chunk depends on the model, data and memory only, never on the number of
    points: a smaller grid pads its one chunk, and a new grid size reuses the compiled function
    instead of compiling another."""
    if plan.get("device_type") == "cuda":
        return ctx.chunk
    fits = plan["budget_bytes"] // max(1, plan["point_bytes"])
    limit = plan.get("chunk_limit", ctx.chunk)
    return int(max(limit, min(limit * COMPILED_CHUNK_FACTOR, fits)))



def _compiled(name: str, ctx, fn: Callable) -> Callable:
    """``torch.compile(fn)``, cached per model object, strategy, loss function and metrics, so
    that repeated surfaces of one model compile once (dynamo's guards still recompile for new
    shapes or dtypes): on a hit the cached function is returned and ``fn`` is not used.

    The cache holds a model's functions only while the user holds the model (its key is a weak
    reference to it), so ``fn`` must not reference the user's model object itself: it runs a
    shallow clone (:func:`shallow_clone_with`), which shares the parameters and submodules."""
    if not compiler_available():
        raise NotApplicable("torch.compile needs a C++ compiler (g++ or clang++) on PATH")
    model = ctx.user_model  # (ctx.model is a fresh clone per call when BatchNorm is folded)
    key = (name, id(ctx.loss_fn), tuple((k, id(m)) for k, m in ctx.metrics.items()), tuple(ctx.folded))
    mine = _COMPILED.setdefault(model, {})
    hit = mine.get(key)
    if hit is not None and hit[0]() is ctx.loss_fn:
        return hit[1]
    _persistent_compile_cache()
    with warnings.catch_warnings():
        # inductor imports torch.utils.mkldnn, which warns about torch.jit at import
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch.utils.mkldnn  # noqa: F401
    compiled = torch.compile(fn, dynamic=False)
    mine[key] = (_ref(ctx.loss_fn), compiled)
    return compiled


def _persistent_compile_cache() -> None:
    """Keep PyTorch's on-disk compile caches on, in a directory that outlives the process.

    Inductor's FX graph cache and AOTAutograd cache store compiled kernels on disk, so a
    second process that compiles the same graph loads them instead of generating and
    building C++ (measured on the seed-000 net: 6.6 s of compiling in the first process,
    2.6 s in the next). Unless the user chose a directory (``TORCHINDUCTOR_CACHE_DIR``),
    fastscape keeps them in ``$XDG_CACHE_HOME/fastscape/torchinductor`` (default
    ``~/.cache/...``) rather than PyTorch's default under ``/tmp``, which a reboot empties.
    A cache the user switched off (``TORCHINDUCTOR_FX_GRAPH_CACHE=0``) stays off.
    """
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") is None:
        root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(root, "fastscape", "torchinductor")
        try:
            os.makedirs(path, exist_ok=True)
            if os.access(path, os.W_OK):
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
        except OSError:
            pass  # an unwritable home: PyTorch's default directory
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    if os.environ.get("TORCHINDUCTOR_FX_GRAPH_CACHE") != "0":
        inductor_config.fx_graph_cache = True
    if os.environ.get("TORCHINDUCTOR_AUTOGRAD_CACHE") != "0":
        functorch_config.enable_autograd_cache = True


def _ref(obj):
    try:
        return weakref.ref(obj)
    except TypeError:  # builtins such as torch.nn.functional functions are immortal enough
        return lambda: obj

