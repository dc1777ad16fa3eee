"""What every strategy shares: the protocol (:class:`Strategy`, :class:`Context`,
:class:`NotApplicable`) and the kernel pieces (:class:`PointLoss`, the one place that
calls ``loss_fn``; the tiny-linear rewrite; the per-batch cache; row padding).

Every strategy returns the same numbers (up to float32 rounding); they differ only in
speed. Every strategy evaluates a shallow clone in which each eval-mode BatchNorm that
directly follows a Linear/Conv in an ``nn.Sequential`` is folded into that layer, per
point (:func:`fastscape._core.rewrite.fold_batchnorm`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from ..data import head_samples
from ..points import AffinePoints
from ..rewrite import fold_batchnorm

__all__ = ["Strategy", "Context", "PointLoss", "NotApplicable", "compiler_available"]


#: F.linear with at most this many weights and a 1-wide side is broadcast (eager strategies)
TINY_LINEAR = 16
#: samples of the probe batch that BatchNorm folding's structural probe forward runs on
FOLD_SAMPLES = 8
#: bytes of cached per-batch tensors (first-layer outputs, channels-last inputs) kept
#: across chunks by one strategy, i.e. per evaluate call
AFFINE_CACHE_BYTES = 512 << 20


class NotApplicable(ValueError):
    """A strategy cannot evaluate this model (the message says why)."""


def compiler_available() -> bool:
    """Whether torch.compile can build CPU kernels here (a C++ compiler on PATH)."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def math_attention():
    """Scaled-dot-product attention through its composite (math) kernel, which
    vmap batches; the fused CPU/CUDA kernels have no batching rule."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


class TinyLinear(TorchFunctionMode):
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
        Rewrite 1-wide ``F.linear`` calls as broadcasts (eager code; see :class:`TinyLinear`).
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
            with TinyLinear() if self.tiny_linear else contextlib.nullcontext():
                out = functional_call(self.model, params, args)
        if isinstance(out, torch.Tensor) and out.dtype in (torch.bfloat16, torch.float16):
            # a bf16 evaluation: the loss of the model's output in float32 (as autocast does),
            # not rounded to 8 bits of mantissa itself
            out = out.float()
            y = y.float() if isinstance(y, torch.Tensor) and y.is_floating_point() else y
        values = [self.loss_fn(out, y), *(m(out, y) for m in self.metrics.values())]
        return torch.stack([v.to(values[0].dtype) for v in values])


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` with its last row repeated up to ``rows`` rows (fixed shapes for compiled code)."""
    if t.shape[0] >= rows:
        return t
    return torch.cat([t, t[-1:].expand(rows - t.shape[0], *t.shape[1:])])


class PerBatch:
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
    #: each measured time by ``TIE ** rank`` (:data:`fastscape._core.auto.TIE`); a
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
        #: points this strategy evaluates per ``run``: the planned ``ctx.chunk`` until its owner
        #: (the evaluator, or auto's probe) sets it, e.g. to :meth:`best_chunk`; compiled
        #: strategies pad every chunk to it
        self.chunk = ctx.chunk

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
        self.loss_fn, self.metrics = loss_fn, metrics
        #: the planned chunk (the memory plan's, or the caller's ``chunk_size``): written only by
        #: the evaluator, which halves it when choosing a strategy runs out of memory
        self.chunk = chunk
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
            # the fold's probe looks at which module feeds which: a few samples tell as much as all
            self.model, self.folded = fold_batchnorm(self.user_model, head_samples(self.args0, FOLD_SAMPLES), p0)
        return self.folded


@contextlib.contextmanager
def mha_fastpath_set(enabled: bool):
    """PyTorch's fused transformer inference path switched to ``enabled`` inside the block."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)




def affine_points(ctx) -> AffinePoints:
    """``ctx.points``, when they are an affine grid (the first-layer and quadratic paths need
    ``origin + coords @ directions``); raises NotApplicable otherwise."""
    if not isinstance(ctx.points, AffinePoints):
        raise NotApplicable("points are not an affine grid (origin + coords @ directions)")
    return ctx.points

