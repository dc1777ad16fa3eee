"""How the evaluator computes one chunk of points on one data batch.

Every strategy returns the same numbers (up to float32 rounding); they differ
only in speed. Registered names (``STRATEGIES``):

``"vmap"``
    ``torch.func.vmap`` over ``functional_call`` on the stacked parameters of
    the chunk; the data batch is shared by all points.
``"loop"``
    One point after another (the fallback for models vmap cannot batch).
``"affine"``
    The first-layer fast path. When an ``nn.Linear`` or ``nn.Conv1d/2d/3d``
    receives the model's raw input (or an ``nn.Flatten`` of it), its output is affine in the grid
    coordinates: ``f(X; W0 + sum_i c_i D_i) = f(X; W0) + sum_i c_i f_0(X; D_i)``
    (``f_0`` without the origin's bias). Those ``1 + k`` outputs are computed
    once per data batch and combined per point; the rest of the model runs
    under vmap as usual. Parameter-free elementwise activations that directly
    follow the layer in an ``nn.Sequential`` are folded in, and when only some
    directions move the layer (e.g. axis directions over single weights), the
    layer and its activation are computed once per distinct value of those
    coordinates instead of once per point. Applies only where a probe forward
    shows the layer receiving the raw input tensor, once per forward; forcing
    it on another model raises ``ValueError`` with the reason.
``"mlp"``
    For an ``nn.Sequential`` of ``nn.Linear`` layers, parameter-free
    elementwise activations and ``nn.Flatten`` (also first, as in an MLP on
    images) that receives the raw input and
    whose output is the model's (the model itself, or a module whose forward
    returns it; checked on a probe forward): the first layer by the affine
    rule above, then every later layer as one batched matrix product per chunk
    into a work buffer reused from chunk to chunk, with the bias added and the
    activation applied in place. It computes what vmap computes without vmap's
    fresh tensor for each of bmm, bias add and activation (measured 1.4-1.8x
    faster on the 1-64-64-64-1 MLP benchmark).
``"quadratic"``
    For ``F.mse_loss`` (mean) with no metrics, on a model whose output is the
    output of an ``nn.Linear``: the loss is a quadratic form in that layer's
    weights, ``(tr(W G W^T) - 2 tr(W C) + sum(Y^2)) / (n * out)`` with
    ``G = H^T H`` and ``C = H^T Y`` over the layer's input ``H``. When some
    directions move only that layer (axis directions over the seed-000 net's
    two weights), ``H`` depends on the other coordinates alone: the rest of the
    model runs once per distinct value of those, and each point costs a few
    float64 numbers whatever the number of samples (measured: the seed-000
    1001x1001 grid at 26 M points/s, 1100x the per-point loop, no compiling).
``"vmap_compiled"``, ``"affine_compiled"``
    The same functions through ``torch.compile`` (inductor: fused C++ on CPU,
    Triton on CUDA). Compiled functions are cached per model, strategy, loss and
    metrics; the chunk does not depend on the grid (a smaller grid pads its one
    chunk) and the affine path's table of distinct rows has a dynamic row count,
    so one compilation serves every grid size. The first call pays the
    compilation (a few seconds with a warm on-disk cache on a 2-core CPU, tens of
    seconds the first time on a machine); inductor's on-disk caches are kept on
    (:func:`_persistent_compile_cache`).

Every strategy evaluates a shallow clone in which each eval-mode BatchNorm that
directly follows a Linear/Conv in an ``nn.Sequential`` is folded into that layer,
per point (:func:`fold_batchnorm`); the affine and mlp paths apply it to their
first-layer table, once per batch when no direction moves it.

Every strategy is a :class:`Strategy` subclass registered in ``STRATEGIES``, built
as ``cls(ctx)``, with its structural ``rank`` and the chunk it runs best at
(``best_chunk``); a compiled one names the ``eager`` strategy it compiles.
``"auto"`` (:func:`fastscape._core.evaluator._choose`) walks the registry: it times
the eager strategies that apply on a probe chunk in interleaved rounds (minimum per candidate),
weighs each time by its structural rank so that a disturbed probe cannot trade
a path that does less work for one several times slower, tries the compiled
variant of a vectorised pick only when compiling can repay its estimated cost,
checks each candidate's values against ``"vmap"``, and remembers its pick per
model structure, device, dtype, shapes and job size class (``AUTO_CHOICES``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time
import warnings
import weakref
from collections.abc import Callable, Mapping

import torch
from torch import nn
import torch.nn.functional as F
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode

from .guards import values_agree
from .points import AffinePoints

__all__ = ["STRATEGIES", "AUTO_CHOICES", "Strategy", "NotApplicable", "make_strategy", "strategy_names",
           "auto_key", "compiler_available"]

#: parameter-free modules that act element by element on any shape; they may be
#: folded into the first layer of the affine path when they follow it in a Sequential.
ELEMENTWISE = (nn.Identity, nn.ReLU, nn.ReLU6, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU,
               nn.LeakyReLU, nn.Softplus, nn.Hardtanh, nn.Mish, nn.Dropout)
AFFINE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: F.linear with at most this many weights and a 1-wide side is broadcast (eager strategies)
TINY_LINEAR = 16
#: bytes of cached per-batch tensors (first-layer outputs, channels-last inputs) kept
#: across chunks by one strategy, i.e. per evaluate call
AFFINE_CACHE_BYTES = 512 << 20
#: the "mlp" strategy on CPU: points per chunk at least, and bytes of the widest activation of
#: one block of samples (measured on the 784-256-128-10 MLP, 10 000 samples: 8 points in blocks
#: of 512 samples ran 1.24x faster per point than one point over the whole batch, which reads
#: the first layer's base and direction outputs, 30 MB, once per point)
MLP_CHUNK, MLP_BLOCK_BYTES = 8, 4 << 20

#: device types on which the affine path finds the distinct coordinate rows of each chunk
#: anew; elsewhere (GPUs) it finds those of the whole grid once, because ``torch.unique``
#: makes the host wait for the device to learn its output size (measured on CPU: per chunk
#: is 2-3x cheaper than once over a 1001 x 1001 grid)
PER_CHUNK_UNIQUE_DEVICES = frozenset({"cpu"})

#: first points the loop probes for its channels-last decision before it keeps the
#: plain layout, when each of them diverges (no finite output to compare)
LAYOUT_TRIES = 4

#: strategy="auto" picks, keyed by :func:`auto_key`: (strategy name, its probed seconds per point)
AUTO_CHOICES: dict[tuple, tuple[str, float]] = {}
#: compiled chunk functions: the user's model -> {(strategy, loss, metrics, folded): (loss ref, function)}
_COMPILED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


class NotApplicable(ValueError):
    """A strategy cannot evaluate this model (the message says why)."""


def compiler_available() -> bool:
    """Whether torch.compile can build CPU kernels here (a C++ compiler on PATH)."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def _math_attention():
    """Scaled-dot-product attention through its composite (math) kernel, which
    vmap batches; the fused CPU/CUDA kernels have no batching rule."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


class _TinyLinear(TorchFunctionMode):
    """``F.linear`` with a 1-wide input or output as a broadcast product.

    Under vmap a linear layer with a batched weight becomes a batched matmul,
    which is very slow when its inner dimensions are tiny (the 1 -> 1 layers of
    the seed-000 net); the broadcast computes the same sums elementwise.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if w.dim() == 2 and w.shape[0] * w.shape[1] <= TINY_LINEAR and 1 in w.shape:
                out = x * w.t() if w.shape[1] == 1 else (x * w.view(-1)).sum(-1, keepdim=True)
                return out if b is None else out + b
        return func(*args, **kwargs)


class PointLoss:
    """The loss and metrics at one point of weight space: the model's forward with that point's
    tensors, then ``loss_fn`` and every metric of its output. This is where the loss is computed:
    the vectorised strategies map it over a chunk of points with ``torch.func.vmap`` (and
    ``torch.compile``), the loop calls it point by point.

    Parameters
    ----------
    model : nn.Module or None
        Run through ``functional_call`` with the point's tensors. None when the strategy has
        computed the model's output itself (the mlp path): it comes in as ``table``.
    loss_fn, metrics : the batch-mean loss and the metrics, each ``(output, target) -> scalar``
    pre_key : str, optional
        The name under which ``table[row]`` enters the parameters: the affine path's precomputed
        first-layer output (see :class:`_Injected`).
    tiny_linear : bool
        Rewrite 1-wide ``F.linear`` calls as broadcasts (eager code; see :class:`_TinyLinear`).
    """

    def __init__(self, model, loss_fn, metrics, *, pre_key: str | None = None, tiny_linear: bool = True):
        self.model, self.loss_fn, self.metrics = model, loss_fn, metrics
        self.pre_key, self.tiny_linear = pre_key, tiny_linear

    def __call__(self, shared, moving, args, y, table=None, row=None) -> torch.Tensor:
        """Values at one point, shape (1 + n_metrics,): the loss first, then the metrics in order.

        ``shared`` holds the tensors every point has (buffers, unmoved parameters), ``moving``
        this point's own; ``args`` the model's inputs and ``y`` the targets of one data batch;
        ``table[row]`` (or ``table`` when ``row`` is None) a precomputed output, see above.
        """
        if self.model is None:
            out = table
        else:
            params = {**shared, **moving}
            if table is not None:
                params[self.pre_key] = table if row is None else table[row]
            with _TinyLinear() if self.tiny_linear else contextlib.nullcontext():
                out = functional_call(self.model, params, args)
        if isinstance(out, torch.Tensor) and out.dtype in (torch.bfloat16, torch.float16):
            # a bf16 evaluation: the loss of the model's output in float32 (as autocast does),
            # not rounded to 8 bits of mantissa itself
            out = out.float()
            y = y.float() if isinstance(y, torch.Tensor) and y.is_floating_point() else y
        values = [self.loss_fn(out, y), *(m(out, y) for m in self.metrics.values())]
        return torch.stack([v.to(values[0].dtype) for v in values])


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` with its last row repeated up to ``rows`` rows (fixed shapes for compiled code)."""
    if t.shape[0] >= rows:
        return t
    return torch.cat([t, t[-1:].expand(rows - t.shape[0], *t.shape[1:])])


class _PerBatch:
    """Tensors derived from one data batch (first-layer outputs, a channels-last copy),
    kept across chunks up to ``AFFINE_CACHE_BYTES`` per strategy. A hit needs the
    very input object it was made from."""

    def __init__(self):
        self._items: dict[int, tuple] = {}
        self._bytes = 0

    def get(self, batch_index: int, x: torch.Tensor, make: Callable[[], tuple]) -> tuple:
        """``make()`` for batch ``batch_index`` with input ``x``, from the cache when there."""
        hit = self._items.get(batch_index)
        if hit is not None and hit[0] is x:
            return hit[1]
        value = make()
        size = sum(t.numel() * t.element_size() for t in value if isinstance(t, torch.Tensor))
        if self._bytes + size <= AFFINE_CACHE_BYTES:
            self._items[batch_index] = (x, value)
            self._bytes += size
        return value


class Strategy:
    """One way to evaluate a chunk, registered in :data:`STRATEGIES` under its ``name``.

    Every strategy is built the same way, ``cls(ctx)``, once per :func:`evaluate` call, and
    raises :class:`NotApplicable` when it cannot evaluate the model; ``strategy="auto"`` walks
    the registry, builds what applies and times it.

    Parameters
    ----------
    ctx : Context
        The model, the probe's inputs, shared tensors (buffers, unmoved parameters), points,
        loss function and metrics, and the planned chunk.
    """

    name = "?"
    #: structural rank for ``strategy="auto"``, cheapest first: how much work a point costs
    #: (the quadratic form of an MSE head 0, the affine path over distinct coordinates 1, the
    #: hand-fused MLP 2, the affine path 3, the per-point loop 4, plain vmap 5). auto weighs
    #: each measured time by ``TIE ** rank`` (:data:`fastscape._core.evaluator.TIE`); a
    #: compiled strategy has its eager form's rank (the same work, fused).
    rank = 5
    #: whether ``run`` goes through ``torch.compile``, and then the eager strategy it compiles
    compiled = False
    eager: str | None = None
    #: hand-fused or structural (mlp, quadratic): compiled code has not beaten it, so auto does
    #: not try compiling when it wins (inductor calls the same GEMMs: MLP-64 2.6x vs 3.6x the loop)
    fused = False

    def __init__(self, ctx):
        self.ctx = ctx

    def best_chunk(self, plan: dict) -> int:
        """The chunk this strategy runs best at, given the memory plan of a ``chunk_size="auto"``
        call (:meth:`fastscape._core.memory.MemoryPlan.as_dict`): by default the planned
        ``ctx.chunk``. Never more than the plan's memory allows."""
        return self.ctx.chunk

    def run(self, start: int, stop: int, moving: dict, batch_index: int, args: tuple, y):
        """Values of points ``start:stop`` on one batch: a tensor of shape (stop-start, 1 + n_metrics)."""
        raise NotImplementedError


class Context:
    """What every strategy shares. ``mha_fastpath`` is the caller's setting of
    PyTorch's fused transformer inference path, which the evaluator switches off
    for vectorised strategies (it has no vmap batching rule)."""

    def __init__(self, model, shared, points, loss_fn, metrics, chunk, mha_fastpath=False, job_points=None,
                 args0: tuple = ()):
        self.model, self.shared, self.points = model, shared, points
        #: the model's inputs on the probe's samples: strategies find their layers on one forward of them
        self.args0 = args0
        self.loss_fn, self.metrics, self.chunk = loss_fn, metrics, chunk
        self.mha_fastpath = mha_fastpath
        #: points of the whole job (more than ``points`` when this call is a probe or a unit of it):
        #: a strategy's chunk grows at most to it
        self.job_points = getattr(points, "n", 0) if job_points is None else job_points
        #: the caller's model; ``model`` becomes a shallow clone when BatchNorm is folded
        self.user_model = model
        self.folded: list[str] = []

    def first_point(self) -> dict:
        """Every tensor of the first point: the shared ones and the first point's moving ones."""
        return {**self.shared, **{k: v[0] for k, v in self.points.stack(0, 1).items()}}

    def fold_batchnorm(self) -> list[str]:
        """Evaluate a shallow clone in which every eval-mode BatchNorm that directly follows a
        Linear/Conv in an ``nn.Sequential`` is folded into that layer (see :func:`fold_batchnorm`).
        Returns the folded BatchNorm paths; idempotent."""
        if self.model is self.user_model:
            p0 = self.first_point()
            self.model, self.folded = fold_batchnorm(self.user_model, self.args0, p0)
        return self.folded


@contextlib.contextmanager
def _mha_fastpath(enabled: bool):
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


class LoopStrategy(Strategy):
    name = "loop"
    rank = 4

    def __init__(self, ctx):
        super().__init__(ctx)
        # one point at a time has no batched matmul to rewrite: plain F.linear (see _TinyLinear)
        self.point = PointLoss(ctx.model, ctx.loss_fn, ctx.metrics, tiny_linear=False)
        self.channels_last: bool | None = None  # decided on a probe forward (see _layout)
        self._layout_tries = 0
        self._converted = _PerBatch()  # channels-last args per data batch

    def run(self, start, stop, moving, batch_index, args, y):
        c = self.ctx
        points = [{k: v[i] for k, v in moving.items()} for i in range(stop - start)]
        # one point at a time may use the fused transformer kernels, as a plain forward would
        # (measured: 12% faster on the benchmark's encoder layer)
        with _mha_fastpath(c.mha_fastpath):
            if self.channels_last is None:
                # a diverging first point cannot tell the layouts apart: ask again on the
                # next chunk's first point, a few times, then keep the plain layout
                self._layout_tries += 1
                decided = self._layout({**c.shared, **points[0]}, args)
                self.channels_last = decided if decided is not None or self._layout_tries >= LAYOUT_TRIES else None
            if self.channels_last:
                args = self._to_channels_last(args, batch_index)
            values = []
            for one in points:
                values.append(self.point(c.shared, one, args, y))
            return torch.stack(values)

    def _to_channels_last(self, args: tuple, batch_index: int) -> tuple:
        """``args`` with the image batch in channels-last layout, converted once per data batch."""
        return self._converted.get(
            batch_index, args[0], lambda: (args[0].contiguous(memory_format=torch.channels_last),) + args[1:])

    def _layout(self, params, args) -> bool | None:
        """Whether to feed a CPU image batch to the model in channels-last layout.

        oneDNN's CPU convolutions run about twice as fast on channels-last data
        (measured on the benchmark CNN: 244 -> 127 ms per point). Used only where
        one probe forward in that layout runs and matches the plain one: a
        model that calls ``.view`` on a convolution's output cannot take it.
        None when the probe cannot tell (the point diverges: no finite output).
        """
        x = args[0] if args else None
        if (not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point()
                or x.device.type != "cpu"
                or not any(isinstance(getattr(m, "inner", m), nn.Conv2d) for m in self.ctx.model.modules())):
            return False
        plain = functional_call(self.ctx.model, params, args)
        try:
            other = functional_call(self.ctx.model, params, (x.contiguous(memory_format=torch.channels_last),) + args[1:])
        except RuntimeError:
            return False
        if not isinstance(plain, torch.Tensor) or not isinstance(other, torch.Tensor):
            return False
        if not bool(torch.isfinite(plain).any()):
            return None
        return values_agree(plain, other, rtol=1e-4)


class VmapStrategy(Strategy):
    name = "vmap"

    def __init__(self, ctx):
        super().__init__(ctx)
        # a compiled function is cached while the user holds the model: it must not hold the model itself
        model = _shallow_clone_with(ctx.model, {}) if self.compiled else ctx.model
        self.point = PointLoss(model, ctx.loss_fn, ctx.metrics, tiny_linear=not self.compiled)
        self.fn = vmap(self.point, in_dims=(None, 0, None, None))  # every point of a chunk at once
        if self.compiled:
            self.fn = _compiled(self.name, ctx, self.fn)

    def run(self, start, stop, moving, batch_index, args, y):
        c = stop - start
        if self.compiled:
            moving = {k: _pad_rows(v, self.ctx.chunk) for k, v in moving.items()}
        with _math_attention():
            return self.fn(self.ctx.shared, moving, args, y)[:c]


class VmapCompiled(VmapStrategy):
    name = "vmap_compiled"
    compiled, eager = True, "vmap"

    def best_chunk(self, plan: dict) -> int:
        return _compiled_chunk(self.ctx, plan)


# ----------------------------------------------------------------------------- BatchNorm folding

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _BatchNormParams(nn.Module):
    """Stands in for a BatchNorm folded into the layer before it: holds the BatchNorm's
    parameters and buffers under their own names (so every point's values still reach
    them through ``functional_call``) and passes its input through."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        for name, p in bn.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in bn.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.eps = bn.eps

    def forward(self, x):
        return x


def batchnorm_scale_shift(bn):
    """Per-channel ``(scale, shift)`` of an eval-mode BatchNorm, ``bn(h) = h * scale + shift``,
    from whatever values ``bn``'s tensors hold now (a point's, under ``functional_call``, or
    rows of stacked values, shape (R, C), through :class:`_Values`)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


class _FoldedLayer(nn.Module):
    """A Linear/Conv with the eval-mode BatchNorm after it folded in, per point: the
    weight scaled per output channel, the bias replaced by the BatchNorm's shift
    (``bn(conv(x; W, b)) == conv(x; W * s, b * s + t)`` up to rounding). The layer's own
    parameters keep their names; the BatchNorm's stay in its ``_BatchNormParams`` stand-in,
    which this module reads (without owning it) at call time."""

    def __init__(self, layer: nn.Module, holder: _BatchNormParams):
        super().__init__()
        for name, p in layer.named_parameters(recurse=False):
            self.register_parameter(name, p)
        if "bias" not in self._parameters:
            self.bias = None
        object.__setattr__(self, "inner", layer)  # not a submodule: names stay unchanged
        object.__setattr__(self, "bn", holder)

    def forward(self, x):
        scale, shift = batchnorm_scale_shift(self.bn)
        w = self.weight * scale.view(-1, *[1] * (self.weight.dim() - 1))
        b = shift if self.bias is None else self.bias * scale + shift
        if isinstance(self.inner, nn.Linear):
            return F.linear(x, w, b)
        return self.inner._conv_forward(x, w, b)


def _plain(mod: nn.Module, kinds) -> bool:
    """``mod`` is one of ``kinds`` and runs that class's own forward."""
    return isinstance(mod, kinds) and type(mod).forward in {k.forward for k in kinds}


def fold_batchnorm(model: nn.Module, args: tuple, params: Mapping[str, torch.Tensor]):
    """``(clone, folded)``: a shallow clone of ``model`` in which each eval-mode BatchNorm that
    directly follows a Linear/Conv in an ``nn.Sequential`` is folded into that layer, and the
    paths of the folded BatchNorms (``model`` itself and ``[]`` when there are none).

    Eval-mode BatchNorm is an affine map per channel, so the fold is exact up to rounding and
    saves a pass over the layer's output at every point. A pair is folded only where one probe
    forward shows the Sequential running the pair once, the BatchNorm receiving exactly the
    layer's output, and the BatchNorm using running statistics. Parameters are shared, the
    model is not touched.
    """
    pairs = []
    for seq_path, seq in model.named_modules():
        if type(seq) is not nn.Sequential:
            continue
        names = list(seq._modules)
        for a, b in zip(names[:-1], names[1:]):
            layer, bn = seq._modules[a], seq._modules[b]
            if (_plain(layer, AFFINE_MODULES) and _plain(bn, BATCHNORMS) and bn.track_running_stats
                    and bn.running_mean is not None and bn.running_var is not None):
                prefix = f"{seq_path}." if seq_path else ""
                pairs.append((seq, f"{prefix}{a}", layer, f"{prefix}{b}", bn))
    if not pairs:
        return model, []
    # one probe forward: each pair runs once, inside its Sequential, the BatchNorm on the layer's output
    seen: dict[int, list] = {}
    inside: dict[int, int] = {}
    handles = []

    def enter(mod, inp):
        inside[id(mod)] = inside.get(id(mod), 0) + 1

    def leave(mod, inp, out):
        inside[id(mod)] -= 1

    for seq, _, layer, _, bn in pairs:
        if id(seq) not in inside:
            inside[id(seq)] = 0
            handles += [seq.register_forward_pre_hook(enter), seq.register_forward_hook(leave)]

        def after_layer(mod, inp, out, seq=seq):
            seen.setdefault(id(mod), []).append((out, inside[id(seq)] == 1))

        def before_bn(mod, inp):
            seen.setdefault(id(mod), []).append(inp)

        handles += [layer.register_forward_hook(after_layer), bn.register_forward_pre_hook(before_bn)]
    try:
        with torch.no_grad():
            functional_call(model, dict(params), args)
    finally:
        for h in handles:
            h.remove()
    swaps, folded = {}, []
    for _, lpath, layer, bpath, bn in pairs:
        outs, ins = seen.get(id(layer), []), seen.get(id(bn), [])
        out = outs[0][0] if len(outs) == 1 else None
        if (out is not None and len(ins) == 1 and outs[0][1] and len(ins[0]) == 1 and ins[0][0] is out
                and not bn.training and isinstance(out, torch.Tensor) and out.dim() >= 2
                and out.shape[1] == bn.num_features and (out.dim() == 2 or not isinstance(layer, nn.Linear))):
            # (a Linear on (n, T, F) inputs feeds BatchNorm1d its T axis as channels: not folded)
            holder = _BatchNormParams(bn)
            swaps[lpath], swaps[bpath] = _FoldedLayer(layer, holder), holder
            folded.append(bpath)
    if not folded:
        return model, []
    return _shallow_clone_with(model, swaps), folded


# ----------------------------------------------------------------------------- affine path


class _Injected(nn.Module):
    """Stands in for the first layer in a shallow clone of the model: returns the
    precomputed (per-point) output held in its ``pre`` buffer. Keeps the layer's
    own parameters under the same names, so the parameter dict is unchanged."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        for name, p in layer.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in layer.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.register_buffer("pre", torch.empty(0), persistent=False)

    def forward(self, *args, **kwargs):
        return self.pre


def _find_raw_input_layer(model: nn.Module, args: tuple, shared: Mapping[str, torch.Tensor]):
    """(path, layer, flatten) of the Linear/Conv that receives the model's raw first input,
    found with forward hooks on one plain forward; raises NotApplicable.

    ``flatten`` is the ``nn.Flatten`` module between the raw input and the layer when
    the layer receives ``flatten(raw)`` (an MLP on images), else None: the layer's output
    is still affine in its weights, computed on the flattened input."""
    if len(args) != 1 or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
        raise NotApplicable("the model's input is not a single floating-point tensor")
    raw = args[0]
    calls: dict[str, list] = {}
    flattened: list[tuple[torch.Tensor, nn.Module]] = []  # (flatten(raw), the Flatten module)
    handles = []

    def source(t):
        if t is raw:
            return "raw"
        return next((f for out, f in flattened if t is out), False)

    for path, mod in model.named_modules():
        if isinstance(mod, (*AFFINE_MODULES, _FoldedLayer)):
            def hook(m, inp, path=path):
                calls.setdefault(path, []).append(source(inp[0]) if len(inp) == 1 else False)
            handles.append(mod.register_forward_pre_hook(hook))
        elif type(mod) is nn.Flatten:
            def flat_hook(m, inp, out):
                if len(inp) == 1 and inp[0] is raw:
                    flattened.append((out, m))
            handles.append(mod.register_forward_hook(flat_hook))
    try:
        with torch.no_grad():
            functional_call(model, dict(shared), args)
    finally:
        for h in handles:
            h.remove()
    for path, seen in calls.items():
        mod = model.get_submodule(path)
        if len(seen) == 1 and seen[0] is not False and (_plain(mod, AFFINE_MODULES) or type(mod) is _FoldedLayer):
            return path, mod, (None if seen[0] == "raw" else seen[0])
    raise NotApplicable("no nn.Linear/nn.Conv layer receives the model's raw input tensor "
                        "(or its nn.Flatten) exactly once per forward")


def _shallow_clone_with(model: nn.Module, swaps: Mapping[str, nn.Module]):
    """A shallow copy of ``model`` in which the submodule at each path of ``swaps`` is
    replaced by its value. Only the modules on the way are copied; parameters are
    shared; the model itself is not touched."""
    if "" in swaps:
        return swaps[""]

    def rebuild(mod: nn.Module, prefix: str) -> nn.Module:
        clone = copy.copy(mod)
        clone._modules = dict(mod._modules)
        for name, child in mod._modules.items():
            full = f"{prefix}{name}"
            if full in swaps:
                clone._modules[name] = swaps[full]
            elif any(s.startswith(full + ".") for s in swaps):
                clone._modules[name] = rebuild(child, full + ".")
        return clone

    return rebuild(model, "")


def _affine_points(ctx) -> AffinePoints:
    """``ctx.points``, when they are an affine grid (the first-layer and quadratic paths need
    ``origin + coords @ directions``); raises NotApplicable otherwise."""
    if not isinstance(ctx.points, AffinePoints):
        raise NotApplicable("points are not an affine grid (origin + coords @ directions)")
    return ctx.points


class AffineStrategy(Strategy):
    name = "affine"

    def __init__(self, ctx):
        super().__init__(ctx)
        points = _affine_points(ctx)
        path, layer, self.flatten = _find_raw_input_layer(ctx.model, ctx.args0, ctx.first_point())
        prefix = f"{path}." if path else ""
        own = [n for n, _ in layer.named_parameters(recurse=False)]
        self.keys = {n: prefix + n for n in own}
        # a BatchNorm folded into the layer (see fold_batchnorm): applied per table row
        self.raw = layer.inner if isinstance(layer, _FoldedLayer) else layer
        self.bn, self.bn_keys = None, {}
        if isinstance(layer, _FoldedLayer):
            bn_path = next(p for p, m in ctx.model.named_modules() if m is layer.bn)
            self.bn = layer.bn
            self.bn_keys = {n: f"{bn_path}.{n}" for n in ("weight", "bias", "running_mean", "running_var")
                            if getattr(layer.bn, n, None) is not None}
        # which directions move the layer (or its BatchNorm); the rest do not change its output
        mine = [*self.keys.values(), *self.bn_keys.values()]
        self.dirs_used = [i for i in range(len(points.directions))
                          if any(k in points.moving and bool(points.directions[i][k].any()) for k in mine)]
        self.bn_moves = any(k in points.moving for k in self.bn_keys.values())
        # parameter-free elementwise modules right after the layer in a Sequential
        # (a folded BatchNorm's stand-in passes its input through and is stepped over)
        self.acts, identities, self.consumed = [], [], 0
        if path:
            parent_path, _, idx = path.rpartition(".")
            parent = ctx.model.get_submodule(parent_path)
            if type(parent) is nn.Sequential:
                names = list(parent._modules)
                for name in names[names.index(idx) + 1:]:
                    mod = parent._modules[name]
                    if isinstance(mod, _BatchNormParams) and mod is self.bn:
                        self.consumed += 1
                        continue
                    if not isinstance(mod, ELEMENTWISE) or any(True for _ in mod.parameters()):
                        break
                    self.acts.append(mod)
                    self.consumed += 1
                    identities.append(f"{parent_path}.{name}" if parent_path else name)
        self.layer, self.path = layer, path
        self.clone = _shallow_clone_with(ctx.model, {path: _Injected(layer),
                                                     **{p: nn.Identity() for p in identities}})
        self.pre_key = prefix + "pre"
        self._cache = _PerBatch()  # (base, z) per data batch
        self._grid_rows = None  # (distinct rows, each point's row, the same on the host): see _distinct
        self._used_index = None  # dirs_used on the device, when they are not consecutive
        self.point = PointLoss(self.clone, ctx.loss_fn, ctx.metrics, pre_key=self.pre_key,
                               tiny_linear=not self.compiled)
        # every point of a chunk at once; each takes its first-layer output from the table's row
        self.fn = vmap(self.point, in_dims=(None, 0, None, None, None, 0))
        if self.compiled:
            self.fn = _compiled(self.name, ctx, self.fn)

    @property
    def rank(self) -> int:
        """1 when only some directions move the first layer (it is computed once per distinct
        value of their coordinates), else 3 (see :attr:`Strategy.rank`)."""
        return 1 if 0 < len(self.dirs_used) < self.ctx.points._coords.shape[1] else 3

    def _layer_outputs(self, batch_index, x):
        """(base, Z): the layer's output at the origin, shape (n, ...), and the
        outputs of the used directions without bias offset, shape (len(dirs_used), n*...).
        A folded BatchNorm that no direction moves is applied here, once per batch."""
        return self._cache.get(batch_index, x, lambda: self._compute_layer_outputs(x))

    def _compute_layer_outputs(self, x) -> tuple:
        pts, shared = self.ctx.points, self.ctx.shared
        if self.flatten is not None:
            x = self.flatten(x)
        origin = {n: (pts._origin[k].view(pts._shapes[k]) if k in pts.moving else shared[k])
                  for n, k in self.keys.items()}
        base = functional_call(self.raw, origin, (x,))
        zs = []
        for i in self.dirs_used:
            d = {n: (pts._dirs[k][i].view(pts._shapes[k]) if k in pts.moving else torch.zeros_like(shared[k]))
                 for n, k in self.keys.items()}
            zs.append(functional_call(self.raw, d, (x,)).reshape(-1))
        z = torch.stack(zs) if zs else base.new_zeros(0, base.numel())
        if self.bn is not None and not self.bn_moves:
            # fixed BatchNorm: bn(base + c.z) = bn(base) + c.(scale * z)
            scale, shift = self._bn_rows(None)
            view = (1, -1, *[1] * (base.dim() - 2))
            base = base * scale.view(view) + shift.view(view)
            z = (z.view(z.shape[0], *base.shape) * scale.view(view)).reshape(z.shape[0], -1)
        return base, z

    def _bn_rows(self, rows):
        """(scale, shift) of the folded BatchNorm: shape (C,) from the shared values when
        ``rows`` is None, else (R, C), one per row of coordinates over ``dirs_used``."""
        pts, shared = self.ctx.points, self.ctx.shared
        vals = {}
        for n, k in self.bn_keys.items():
            if rows is not None and k in pts.moving:
                vals[n] = torch.addmm(pts._origin[k], rows, pts._dirs[k][self.dirs_used])
            else:
                vals[n] = pts._origin[k].view(pts._shapes[k]) if k in pts.moving else shared[k]
        return batchnorm_scale_shift(_Values(vals, self.bn.eps))

    def _table(self, rows, base, z):
        """The layer's output (its BatchNorm and activations applied) for each row of
        ``rows`` (R, len(dirs_used)): shape (R, *base.shape)."""
        table = torch.addmm(base.reshape(1, -1), rows, z).view(rows.shape[0], *base.shape)
        if self.bn is not None and self.bn_moves:  # the BatchNorm moves: per row, in place
            scale, shift = self._bn_rows(rows)
            view = (rows.shape[0], 1, -1, *[1] * (base.dim() - 2))
            table.mul_(scale.view(view)).add_(shift.view(view))
        for act in self.acts:
            table = act(table)
        return table

    def run(self, start, stop, moving, batch_index, args, y):
        c = stop - start
        base, z = self._layer_outputs(batch_index, args[0])
        coords = self._used_coords(start, stop)
        if self.compiled:
            moving = {k: _pad_rows(v, self.ctx.chunk) for k, v in moving.items()}
            coords = _pad_rows(coords, self.ctx.chunk)
        if 0 < len(self.dirs_used) < self.ctx.points._coords.shape[1]:
            # the layer depends on some coordinates only: once per distinct value
            distinct, index = self._distinct(start, stop, coords)
            table = self._table(distinct, base, z)
            if self.compiled:
                # the compiled function takes the table's row count as a dynamic size, so a
                # new grid (another number of distinct rows per chunk) does not recompile;
                # at least 2 rows, as sizes 0 and 1 are always specialised
                table = _pad_rows(table, 2)
                torch._dynamo.mark_dynamic(table, 0)
        else:  # one row per point (coords is already padded to the chunk when compiled)
            table, index = self._table(coords, base, z), torch.arange(coords.shape[0], device=coords.device)
        with _math_attention():
            return self.fn(self.ctx.shared, moving, args, y, table, index)[:c]


    def _used_coords(self, start: int, stop: int) -> torch.Tensor:
        """Coordinates of points ``start:stop`` along the directions that move the layer,
        shape (stop-start, len(dirs_used)): a slice when those directions are consecutive
        (always, for 1 or 2 directions); a Python list as an index would be copied to the
        device, and waited for, at every chunk."""
        c = self.ctx.points._coords[start:stop]
        used = self.dirs_used
        if not used:
            return c[:, :0]
        if used == list(range(used[0], used[-1] + 1)):
            return c[:, used[0]:used[-1] + 1]
        if self._used_index is None or self._used_index.device != c.device:
            self._used_index = torch.tensor(used, device=c.device)
        return c.index_select(1, self._used_index)

    def _distinct(self, start: int, stop: int, coords: torch.Tensor):
        """``(distinct, index)``: the distinct rows of the used coordinates of points
        ``start:stop`` and each point's row (``coords`` is those coordinates, padded to
        the chunk on the compiled path).

        On CPU per chunk. On a GPU the whole grid's distinct rows (sorted) and each
        point's row are found once, with the one host wait of an evaluation, and a
        chunk takes the consecutive range of rows its points use, decided on the
        host copy of the index: no wait per chunk.
        """
        if coords.device.type in PER_CHUNK_UNIQUE_DEVICES:
            if coords.shape[1] == 1:  # 1-D unique sorts; unique(dim=0) compares row by row
                values, index = torch.unique(coords[:, 0], return_inverse=True)
                return values[:, None], index
            return torch.unique(coords, dim=0, return_inverse=True)
        if self._grid_rows is None:
            used = self._used_coords(0, self.ctx.points.n)
            if used.shape[1] == 1:
                rows, inverse = torch.unique(used[:, 0], return_inverse=True)
                rows = rows[:, None]
            else:
                rows, inverse = torch.unique(used, dim=0, return_inverse=True)
            self._grid_rows = (rows, inverse, inverse.cpu().numpy())
        rows, inverse, host = self._grid_rows
        part = host[start:stop]
        lo, hi = int(part.min()), int(part.max()) + 1
        if hi - lo > coords.shape[0]:  # rows far apart in this chunk: one row per point
            return coords, torch.arange(coords.shape[0], device=coords.device)
        return rows[lo:hi], _pad_rows(inverse[start:stop] - lo, coords.shape[0])


class _Values:
    """Attribute access to a dict of tensors (a BatchNorm's values for :func:`batchnorm_scale_shift`)."""

    def __init__(self, values: dict, eps: float):
        self.__dict__.update(values)
        self.eps = eps
        for n in ("weight", "bias"):
            self.__dict__.setdefault(n, None)


class AffineCompiled(AffineStrategy):
    name = "affine_compiled"
    compiled, eager = True, "affine"

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


def _in_place(act: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``act`` as a function that may overwrite its argument (the module itself is not changed)."""
    if isinstance(act, (nn.Identity, nn.Dropout)):  # dropout: the model is in eval mode
        return lambda h: h
    if isinstance(act, nn.Tanh):
        return torch.tanh_
    if isinstance(act, nn.Sigmoid):
        return torch.sigmoid_
    if hasattr(act, "inplace"):
        twin = copy.copy(act)
        twin.inplace = True
        return twin
    return act


def _returns_output_of(model: nn.Module, seq: nn.Module, args: tuple, shared, points) -> bool:
    """Whether, on one probe forward, ``seq`` receives the model's raw input and the
    model returns exactly the tensor ``seq`` returns (``forward: return self.net(x)``)."""
    seen = {}

    def hook(mod, inp, out):
        seen["in"], seen["out"] = inp, out

    handle = seq.register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = functional_call(model, {**shared, **{k: v[0] for k, v in points.stack(0, 1).items()}}, args)
    finally:
        handle.remove()
    return len(seen.get("in", ())) == 1 and seen["in"][0] is args[0] and out is seen.get("out")


class MlpStrategy(AffineStrategy):
    name = "mlp"
    rank, fused = 2, True

    def __init__(self, ctx):
        super().__init__(ctx)
        args0 = ctx.args0
        seq_path, _, first = self.path.rpartition(".")
        seq = ctx.model.get_submodule(seq_path)
        names = list(seq._modules) if type(seq) is nn.Sequential else []
        if names and self.flatten is not None and seq._modules[names[0]] is self.flatten:
            names = names[1:]  # Flatten, then the Linear: the first layer computes on flatten(x)
        if not names or first != names[0] or not isinstance(self.raw, nn.Linear):
            raise NotApplicable("the input layer is not an nn.Linear opening an nn.Sequential "
                                "(after an optional nn.Flatten)")
        if seq is not ctx.model and not _returns_output_of(ctx.model, seq, args0, ctx.shared, self.ctx.points):
            raise NotApplicable("the model's output is not its nn.Sequential's output on the raw input")
        prefix = f"{seq_path}." if seq_path else ""
        self.first_acts = [_in_place(a) for a in self.acts]
        # ("linear", parameter prefix, BatchNorm prefix or None) | ("flatten", None, None) | ("act", fn, None)
        self.tail = []
        for name in names[1 + self.consumed:]:
            mod = seq._modules[name]
            if _plain(mod, (nn.Linear,)):
                self.tail.append(("linear", f"{prefix}{name}.", None))
            elif type(mod) is _FoldedLayer and isinstance(mod.inner, nn.Linear):
                bn_name = next(n for n, m in seq._modules.items() if m is mod.bn)
                self.tail.append(("linear", f"{prefix}{name}.", f"{prefix}{bn_name}."))
            elif type(mod) is _BatchNormParams:
                continue  # folded into the Linear before it
            elif type(mod) is nn.Flatten and mod.start_dim == 1 and mod.end_dim == -1:
                self.tail.append(("flatten", None, None))
            elif isinstance(mod, ELEMENTWISE) and not any(True for _ in mod.parameters()):
                self.tail.append(("act", _in_place(mod), None))
            else:
                raise NotApplicable(f"module {prefix}{name} ({type(mod).__name__}) is not a Linear, Flatten "
                                    "or parameter-free elementwise activation")
        # the model's output is computed here, layer by layer: only the loss remains for each point
        self.values = vmap(PointLoss(None, ctx.loss_fn, ctx.metrics), in_dims=(None, None, None, None, 0, None))
        self._work: dict[tuple, torch.Tensor] = {}

    def best_chunk(self, plan: dict) -> int:
        """On CPU at least :data:`MLP_CHUNK` points (within the memory plan): the mlp path walks
        the samples in cache-sized blocks, and the first layer's per-batch outputs are then read
        once for several points."""
        if plan.get("device_type") == "cuda":
            return self.ctx.chunk
        fits = plan["budget_bytes"] // max(1, plan["point_bytes"])
        return int(max(self.ctx.chunk, min(MLP_CHUNK, fits, self.ctx.job_points)))

    def _param(self, key: str, moving: dict):
        return moving[key] if key in moving else self.ctx.shared.get(key)

    def _weights(self, moving: dict) -> list:
        """(weight, bias) of every Linear of the tail for this chunk, a folded BatchNorm applied:
        (P, out, in) and (P, out) where the point moves them, else (out, in) and (out,)."""
        out = []
        for kind, what, bn in self.tail:
            if kind != "linear":
                out.append(None)
                continue
            w, b = self._param(what + "weight", moving), self._param(what + "bias", moving)
            if bn is not None:
                vals = {n: self._param(bn + n, moving) for n in ("weight", "bias", "running_mean", "running_var")}
                holder = self.ctx.model.get_submodule(bn[:-1])
                scale, shift = batchnorm_scale_shift(_Values(vals, holder.eps))
                w = w * scale.unsqueeze(-1)
                b = shift if b is None else b * scale + shift
            out.append((w, b))
        return out

    def _buffer(self, tag, shape, like: torch.Tensor) -> torch.Tensor:
        """A work tensor reused from chunk to chunk. On CPU a fresh
        multi-MiB tensor is mapped page by page on first touch (measured: the MNIST-size
        MLP ran 1.6x slower allocating its activations anew for every chunk)."""
        key = (tag, tuple(shape))
        buf = self._work.get(key)
        if buf is None or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._work[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def _block(self, points: int, base: torch.Tensor, weights: list) -> int:
        """Samples per block: the chunk's widest activation of a block stays near
        ``MLP_BLOCK_BYTES``, so each layer reads what the one before it just wrote from cache,
        and the first layer's base and direction outputs are read once for all the chunk's
        points (CPU; one block on CUDA)."""
        n = base.shape[0]
        if base.device.type != "cpu":
            return n
        lead = base[0].numel() // base.shape[-1]  # positions per sample (tokens) before the features
        widths = [base[0].numel()] + [wb[0].shape[-2] * lead for wb in weights if wb is not None]
        per_sample = points * max(widths) * base.element_size()
        return int(max(1, min(n, MLP_BLOCK_BYTES // max(1, per_sample))))

    def run(self, start, stop, moving, batch_index, args, y):
        base, z = self._layer_outputs(batch_index, args[0])
        coords = self._used_coords(start, stop)
        P, n = stop - start, base.shape[0]
        weights = self._weights(moving)
        block = self._block(P, base, weights)
        z3 = z.view(z.shape[0], n, -1)
        total = None
        for s0 in range(0, n, block):
            s1 = min(n, s0 + block)
            rows = s1 - s0
            # the first layer for this block of samples, every point: base + coords @ Z into a reused buffer
            table = self._buffer("first", (P, rows * z3.shape[2]), base)
            h = torch.addmm(base[s0:s1].reshape(1, -1), coords, z3[:, s0:s1].reshape(z.shape[0], -1), out=table)
            h = h.view(P, rows, *base.shape[1:])  # (P, rows, ..., F)
            if self.bn is not None and self.bn_moves:
                scale, shift = self._bn_rows(coords)
                view = (P, 1, -1, *[1] * (base.dim() - 2))
                h.mul_(scale.view(view)).add_(shift.view(view))
            for act in self.first_acts:
                h = act(h)
            for i, (kind, what, _) in enumerate(self.tail):
                if kind == "act":
                    h = what(h)
                elif kind == "flatten":
                    h = h.flatten(2)
                else:
                    h = self._linear(i, h, *weights[i])
            vals = self.values({}, {}, (), y[s0:s1], h, None)
            if block >= n:
                return vals
            # sample-weighted, as the evaluator weighs its batches
            total = vals.double() * rows if total is None else total.add_(vals.double(), alpha=rows)
        return (total / n).to(base.dtype)

    def _linear(self, i, h, w, b):
        """``F.linear`` of each point's activations ``h`` (P, n, ..., in) with its own
        (``w`` (P, out, in), ``b`` (P, out)) or a shared (``w`` (out, in), ``b`` (out,)) layer."""
        if w.dim() == 2:
            out = F.linear(h, w, b if b is None or b.dim() == 1 else None)
            return out if b is None or b.dim() == 1 else out.add_(b.view(b.shape[0], *[1] * (h.dim() - 2), -1))
        flat = h.reshape(h.shape[0], -1, h.shape[-1])
        out = torch.bmm(flat, w.transpose(1, 2), out=self._buffer(i, (flat.shape[0], flat.shape[1], w.shape[1]), h))
        if b is not None:
            out.add_(b.unsqueeze(-2))  # (P, 1, out) or (1, out)
        return out.view(*h.shape[:-1], w.shape[1])


# ----------------------------------------------------------------------------- quadratic head


def _is_mean_mse(loss_fn) -> bool:
    return loss_fn is F.mse_loss or (type(loss_fn) is nn.MSELoss and loss_fn.reduction == "mean")


def _output_linear(model: nn.Module, args: tuple, params) -> tuple[str, nn.Module]:
    """(path, layer) of the plain ``nn.Linear`` whose output is the model's output, called
    once per forward and sharing no parameter with another module; raises NotApplicable."""
    outs: dict[str, list] = {}
    handles = []
    for path, mod in model.named_modules():
        if _plain(mod, (nn.Linear,)):
            handles.append(mod.register_forward_hook(
                lambda m, i, o, path=path: outs.setdefault(path, []).append(o)))
    try:
        with torch.no_grad():
            out = functional_call(model, dict(params), args)
    finally:
        for h in handles:
            h.remove()
    for path, seen in outs.items():
        if len(seen) == 1 and seen[0] is out:
            head = model.get_submodule(path)
            own = [p for p in head.parameters(recurse=False)]
            if any(q is p for m in model.modules() if m is not head for q in m.parameters(recurse=False)
                   for p in own):
                raise NotApplicable("the output layer shares a parameter with another module")
            return path, head
    raise NotApplicable("the model's output is not the output of an nn.Linear called once")


class QuadraticStrategy(Strategy):
    """Mean squared error of a model that ends in an ``nn.Linear``: with ``H`` the layer's input
    (plus a column of ones for its bias) and ``W`` its weights, ``mean((H W^T - Y)^2)`` is
    ``(tr(W G W^T) - 2 tr(W C) + sum(Y^2)) / (n * out)`` with ``G = H^T H`` and ``C = H^T Y``.
    When some directions move only that layer, ``H`` depends on the other coordinates alone:
    the rest of the model runs once per distinct value of those (vmap over the distinct rows),
    ``G`` and ``C`` are formed once per distinct value, and each point costs a quadratic form
    in its weights, whatever the number of samples. ``G``, ``C`` and the forms are float64,
    so the expansion loses nothing to cancellation at float32 precision."""

    name = "quadratic"
    rank, fused = 0, True

    def __init__(self, ctx):
        super().__init__(ctx)
        args0 = ctx.args0
        points = _affine_points(ctx)
        if not _is_mean_mse(ctx.loss_fn) or ctx.metrics:
            raise NotApplicable("the loss is not F.mse_loss (mean) with no metrics")
        if len(args0) != 1 or not isinstance(args0[0], torch.Tensor):
            raise NotApplicable("the model's input is not a single tensor")
        p0 = ctx.first_point()
        path, head = _output_linear(ctx.model, args0, p0)
        prefix = f"{path}." if path else ""
        self.w_key, self.b_key = prefix + "weight", (prefix + "bias" if head.bias is not None else None)
        self.in_features, self.out_features = head.in_features, head.out_features
        head_keys = {self.w_key, self.b_key} - {None}
        k = len(points.directions)
        moves = [{key for key in points.moving if bool(points.directions[i][key].any())} for i in range(k)]
        self.dirs_rest = [i for i in range(k) if moves[i] - head_keys]
        if len(self.dirs_rest) == k:
            raise NotApplicable("every direction moves layers before the output layer, so its input "
                                "differs at every point")
        self.body_moving = [key for key in points.moving if key not in head_keys]
        self.body = _shallow_clone_with(ctx.model, {path: nn.Identity()}) if path else None
        if self.body is None:
            raise NotApplicable("the model is a single nn.Linear")
        self.body_shared = {key: v for key, v in ctx.shared.items() if key not in head_keys}
        body = self.body

        def one_row(moving, args):
            with _TinyLinear():
                return functional_call(body, {**self.body_shared, **moving}, args)

        self.body_fn = vmap(one_row, in_dims=(0, None))
        self._cache = _PerBatch()  # (G, C, yy) per batch when no direction moves the body

    def best_chunk(self, plan: dict) -> int:
        """A point costs a few numbers, not a forward: up to :data:`QUADRATIC_CHUNK` points within
        :data:`QUADRATIC_CHUNK_BYTES` of per-point tensors."""
        fits = max(1, QUADRATIC_CHUNK_BYTES // max(1, self.point_bytes()))
        return int(max(self.ctx.chunk, min(QUADRATIC_CHUNK, fits, self.ctx.job_points)))

    def point_bytes(self) -> int:
        """Bytes a chunk holds per point: its moving tensors and its (G, C) in float64."""
        f = self.in_features + (self.b_key is not None)
        return 8 * f * (f + self.out_features) + 8 * self.ctx.points.moving_numel()

    def _stats(self, rows, args, y):
        """G (R, F+1, F+1), C (R, F+1, out), sum(y^2), float64, for rows of body coordinates."""
        pts = self.ctx.points
        moving = {key: torch.addmm(pts._origin[key], rows, pts._dirs[key][self.dirs_rest])
                  .view(rows.shape[0], *pts._shapes[key]) for key in self.body_moving}
        with _math_attention():
            if moving:
                h = self.body_fn(moving, args)  # (R, n, F)
            else:  # nothing before the output layer moves
                with _TinyLinear():
                    h = functional_call(self.body, self.body_shared, args).unsqueeze(0)
        if h.dim() != 3 or y.shape != (h.shape[1], self.out_features):
            raise NotApplicable(f"the targets' shape {tuple(y.shape)} is not the output's "
                                f"({h.shape[1]}, {self.out_features}): mse_loss would broadcast")
        h = h.double()
        if self.b_key is not None:
            h = torch.cat([h, h.new_ones(h.shape[0], h.shape[1], 1)], dim=2)
        yd = y.double()
        return h.transpose(1, 2) @ h, h.transpose(1, 2) @ yd, float((yd * yd).sum())

    def run(self, start, stop, moving, batch_index, args, y):
        pts, P = self.ctx.points, stop - start
        w = moving[self.w_key] if self.w_key in moving else self.ctx.shared[self.w_key].expand(P, -1, -1)
        w = w.double()
        if self.b_key is not None:
            b = moving[self.b_key] if self.b_key in moving else self.ctx.shared[self.b_key].expand(P, -1)
            w = torch.cat([w, b.double().unsqueeze(2)], dim=2)  # (P, out, F+1)
        if self.dirs_rest:
            coords = pts._coords[start:stop][:, self.dirs_rest]
            if coords.shape[1] == 1:  # 1-D unique sorts; unique(dim=0) compares row by row (10x slower)
                rows, index = torch.unique(coords[:, 0], return_inverse=True)
                rows = rows[:, None]
            else:
                rows, index = torch.unique(coords, dim=0, return_inverse=True)
            g, c, yy = self._stats(rows, args, y)
        else:  # nothing before the output layer moves: one (G, C) per batch
            one = pts._coords[:1, :0]
            g, c, yy = self._cache.get(batch_index, args[0], lambda: self._stats(one, args, y))
            index = torch.zeros(P, dtype=torch.long, device=w.device)
        # sum_o w_o^T G w_o = <G, sum_o w_o w_o^T> and tr(W C) = <C, W^T>, per point with its row's G, C
        wwt = torch.einsum("poi,poj->pij", w, w).reshape(P, -1)
        quad = (g.reshape(g.shape[0], -1)[index] * wwt).sum(1)
        lin = (c.reshape(c.shape[0], -1)[index] * w.transpose(1, 2).reshape(P, -1)).sum(1)
        loss = (quad - 2 * lin + yy) / (y.shape[0] * self.out_features)
        return loss.to(y.dtype).unsqueeze(1)


#: points per chunk of the "quadratic" strategy, at most (a point costs a few numbers, not a
#: forward), and the bytes its per-point tensors may take. Few chunks matter on a loaded
#: machine: every kernel of a chunk is a parallel region that waits for a descheduled
#: thread (measured at load 3 on 2 cores: seed-000 1001x1001 in 16 chunks took 1.27 s warm)
QUADRATIC_CHUNK, QUADRATIC_CHUNK_BYTES = 1 << 20, 256 << 20


# ----------------------------------------------------------------------------- registry


def _compiled(name: str, ctx, fn: Callable) -> Callable:
    """``torch.compile(fn)``, cached per model object, strategy, loss function and metrics, so
    that repeated surfaces of one model compile once (dynamo's guards still recompile for new
    shapes or dtypes): on a hit the cached function is returned and ``fn`` is not used.

    The cache holds a model's functions only while the user holds the model (its key is a weak
    reference to it), so ``fn`` must not reference the user's model object itself: it runs a
    shallow clone (:func:`_shallow_clone_with`), which shares the parameters and submodules."""
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


STRATEGIES: dict[str, type[Strategy]] = {
    "vmap": VmapStrategy,
    "loop": LoopStrategy,
    "affine": AffineStrategy,
    "vmap_compiled": VmapCompiled,
    "affine_compiled": AffineCompiled,
    "mlp": MlpStrategy,
    "quadratic": QuadraticStrategy,
}


def strategy_names() -> list[str]:
    """Valid values of ``strategy``: "auto" and the registered names."""
    return ["auto", *STRATEGIES]


def make_strategy(name: str, ctx) -> Strategy:
    """Build strategy ``name``; raises NotApplicable when it cannot evaluate the model."""
    return STRATEGIES[name](ctx)


def auto_key(model: nn.Module, points, device, dtype, chunk: int, batch_shapes, job: int = 0,
             objective: tuple = ()) -> tuple:
    """What an automatic choice depends on: the model's structure (class and
    repr), the moving names, device, dtype, chunk size, batch shapes, the size
    class of the job (whether compiling pays depends on how many points there are)
    and the loss and metric names (the "quadratic" strategy needs a mean squared error)."""
    return (type(model).__qualname__, repr(model), tuple(points.moving), str(device), str(dtype),
            int(chunk), tuple(batch_shapes), int(job), tuple(objective))


def clock(device) -> float:
    """``time.perf_counter()`` once the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def time_call(fn: Callable[[], torch.Tensor], device) -> tuple[float, torch.Tensor]:
    """Seconds of one call of ``fn`` (synchronised on CUDA) and its result."""
    t = clock(device)
    out = fn()
    return clock(device) - t, out
