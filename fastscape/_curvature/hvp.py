"""Hessian-vector products at many points at once, and the timed choice of how to compute them.

A chunk of points is computed one of two ways (its *plan*):

- ``"vmap"``: every Lanczos step is one ``vmap`` over the chunk's (point, vector) pairs per
  data batch (reverse-over-reverse, or forward-over-reverse where that fails);
- ``"per-point"``: each point's linearisation (its gradient computed with the graph kept, one
  forward and backward, :func:`_kept_gradient`) is built once per chunk and every later product
  at that point is one double-backward through it (reused while the data is one batch; rebuilt per product
  otherwise, so that memory never holds more than one point's graph per batch). The products
  of kept linearisations can run in ``torch.get_num_threads()`` Python threads, one operator
  thread each (a recorded graph's backward is thread-safe; building one is not, since
  ``functional_call`` swaps the module's parameters), where that was timed faster than one
  thread of calls with the threads inside each operator: the small kernels of a small model
  use a core each better than they share two.

On CPU the convolutions of a ``vmap`` over points become grouped kernels whose double
backward costs more per point than one point's plain kernels, and reusing the linearisation
saves the forward and backward of every later product; on a GPU one ``vmap`` over the chunk
should win (untested here).
Neither is right everywhere, so the first chunk's first product is computed both ways and
timed (:func:`pick_plan`); the measured cases are in benchmarks/README.md, "Curvature".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, grad_and_value, jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from .._core.auto import time_call
from .._core.data import Batches, as_args
from .._core.memory import is_out_of_memory
from .._core.objective import check_scalar
from .._core.params import unflatten

__all__ = ["PointHVP", "flat_loss", "pick_plan", "pick_workers", "PLANS", "PLAN_NAMES"]

#: the ``plan=`` names of :func:`fastscape.curvature.curvature_surface`: "auto" times the other two
PLAN_NAMES = ("auto", "vmap", "per-point")


def flat_loss(model: nn.Module, buffers: dict, shapes: dict, loss_fn: Callable, args: tuple, y) -> Callable:
    """``flat -> loss_fn(model(args; flat), y)``: one batch's loss at a flat parameter vector."""
    def loss_at(flat):
        out = functional_call(model, {**buffers, **unflatten(flat, shapes)}, args)
        return check_scalar(loss_fn(out, y), "loss_fn")
    return loss_at


def gradient_of(loss_at: Callable) -> Callable:
    """``flat -> (gradient, loss)`` with the loss as an auxiliary output (detached), so that a
    ``vjp`` of it pulls back through the gradient alone: with the loss as a second output, its
    zero cotangent still went back through the forward graph (8% of a product on the digits CNN)."""
    def value(flat):
        loss = loss_at(flat)
        return loss, loss.detach()
    return grad(value, has_aux=True)


#: how a batch's products are computed, in the order tried: reverse-over-reverse (``vjp`` of
#: ``grad``) under ``vmap`` over the points; forward-over-reverse (``jvp`` of ``grad``) under
#: ``vmap`` (PyTorch's conv backward under vmap fails for some batch sizes with "NYI: querying
#: is_contiguous inside of vmap"); then one point at a time, each way (``nn.LSTM``). One point at
#: a time reverse-over-reverse keeps each point's linearisation for the chunk (the "per-point" plan).
PLANS = (("reverse-over-reverse", True), ("forward-over-reverse", True),
         ("reverse-over-reverse", False), ("forward-over-reverse", False))


def pick_plan(seconds: dict[str, float], products: int) -> str:
    """``"vmap"`` or ``"per-point"``: the plan that computes ``products`` Hessian-vector products
    of a chunk sooner, from one product of the chunk timed each way.

    ``seconds["vmap"]``: one vmapped product of the chunk; ``seconds["build"]``: building the
    chunk's linearisations (once per chunk); ``seconds["pull"]``: one product of every point
    through them, and ``seconds["pull-threads"]`` (optional) the same in threads
    (:func:`pick_workers`), the faster of the two counting. A tie keeps ``"vmap"`` (no graphs held).
    """
    vmapped = seconds["vmap"] * products
    per_point = seconds["build"] + min(seconds["pull"], seconds.get("pull-threads", float("inf"))) * products
    return "per-point" if per_point < vmapped else "vmap"


def pick_workers(seconds: dict[str, float], threads: int) -> int:
    """How many threads pull products through kept linearisations: ``threads`` (one operator
    thread each) where ``seconds["pull-threads"]`` beat ``seconds["pull"]`` (one thread of
    calls, ``threads`` inside each operator), else 1. A tie keeps 1."""
    return threads if seconds.get("pull-threads", float("inf")) < seconds["pull"] else 1


@contextlib.contextmanager
def _operator_threads(count: int):
    """``torch.set_num_threads(count)`` for the block, restored after (a thread started inside
    it takes ``count`` too)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class AffineBatchNorm(TorchFunctionMode):
    """Eval-mode batch normalisation as the affine map it is,
    ``(x - running_mean) * weight / sqrt(running_var + eps) + bias``, written with elementwise ops.

    The same function of the input and of ``weight`` and ``bias``, so the same Hessian (to
    round-off); its second derivative is a few elementwise products, where PyTorch's
    ``native_batch_norm_backward`` is differentiated by a composite that costs about a fifth
    of a convolutional net's Hessian-vector product on CPU (benchmarks/README.md, "Curvature").
    Training-mode calls (batch statistics) pass through unchanged.
    """

    NAMES = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            a = {**dict(zip(self.NAMES, args)), **kwargs}
            if not a.get("training", False) and a.get("running_mean") is not None and a.get("running_var") is not None:
                x = a["input"]
                shape = (1, -1) + (1,) * (x.dim() - 2)
                scale = torch.rsqrt(a["running_var"] + a.get("eps", 1e-5))
                if a.get("weight") is not None:
                    scale = scale * a["weight"]
                out = (x - a["running_mean"].reshape(shape)) * scale.reshape(shape)
                return out + a["bias"].reshape(shape) if a.get("bias") is not None else out
        return func(*args, **kwargs)


@contextlib.contextmanager
def _kernels():
    """What every product here runs under: attention on the composite (math) kernel, whose second
    derivative exists (the fused ones have none), and :class:`AffineBatchNorm`."""
    with sdpa_kernel([SDPBackend.MATH]), AffineBatchNorm():
        yield


#: timed rounds of each plan on the first chunk (the fastest counts): each round costs one product
#: of the chunk both ways, against the tens of products a chunk takes (benchmarks/README.md, "Curvature")
ROUNDS = 2


def _time(label: str, fn: Callable, device) -> tuple[float, object]:
    """Seconds of one call of ``fn`` and its result (``label`` names the timing; tests replace this)."""
    return time_call(fn, device)


class PointHVP:
    """``(P, V) -> (H(P_i) V_i for each row i, loss at each P_i)``: Hessian-vector products of
    the whole-dataset loss at many points at once.

    ``P`` and ``V`` have shape (B, n) over the model's parameters in order; batches are
    weighted by their sample counts (float64 sums). :meth:`chunk` fixes the points and
    returns the operator that :func:`fastscape._curvature.lanczos.lockstep_lanczos` calls.
    ``plan`` is None until the first chunk of more than one point chose one
    (:func:`pick_plan`, ``products`` per point expected), or the name it was given;
    ``workers`` (threads pulling kept linearisations) is None until the per-point plan's first
    chunk of more than one point timed it (:func:`pick_workers`).
    Must run inside ``model_state_guard(model)`` (eval mode).
    """

    def __init__(self, model: nn.Module, batches: Batches, loss_fn: Callable, buffers: dict, shapes: dict, *,
                 products: int = 1, plan: str | None = None):
        self.model, self.batches, self.loss_fn = model, batches, loss_fn
        self.buffers, self.shapes = buffers, shapes
        self.products, self.plan = products, plan
        self.workers: int | None = None
        self.mode = PLANS[0]
        self.seconds: dict[str, float] = {}

    # -- one batch, the whole chunk vmapped (or one point at a time without a kept graph) --
    def _one(self, args, y, mode: str):
        loss_at = flat_loss(self.model, self.buffers, self.shapes, self.loss_fn, args, y)

        def product(p, v):
            if mode == "forward-over-reverse":
                (_, value), (hv, _) = jvp(grad_and_value(loss_at), (p,), (v,))
                return hv, value
            _, pull, value = vjp(gradient_of(loss_at), p, has_aux=True)
            return pull(v)[0], value
        return product

    def _batch(self, args, y, P, V, vectorised_first: bool = True):
        """One batch's products: the way that worked before first, then the others (:data:`PLANS`)."""
        plans = sorted(PLANS, key=lambda plan: (plan != self.mode, plan[1] != vectorised_first))
        errors = []
        for mode, vectorised in plans:
            fn = self._one(args, y, mode)
            try:
                if vectorised:
                    out = vmap(fn)(P, V)
                else:
                    rows = [fn(p, v) for p, v in zip(P, V)]
                    out = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
            except (RuntimeError, NotImplementedError) as err:
                if is_out_of_memory(err):
                    raise
                errors.append(err)
                continue
            self.mode = (mode, vectorised)
            return out
        raise errors[-1]

    def _sum(self, per_batch: Callable, B: int, like: torch.Tensor):
        hv = torch.zeros(like.shape, dtype=torch.float64, device=like.device)
        loss = torch.zeros(B, dtype=torch.float64, device=like.device)
        with _kernels():
            for b, (x, y, n) in enumerate(self.batches):
                h, value = per_batch(b, as_args(x), y)
                hv += h.double() * n
                loss += value.double() * n
        return (hv / self.batches.n_samples).to(like.dtype), loss / self.batches.n_samples

    def __call__(self, P: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Products and losses at the rows of ``P`` (B, n) by the vmapped plan."""
        return self._sum(lambda b, args, y: self._batch(args, y, P, V), P.shape[0], V)

    def chunk(self, P: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``(rows, V) -> (H(P[rows]) V, loss at P[rows])`` for the points ``P`` (B, n) of one chunk."""
        kept = _Linearised(self, P)

        def matvec(rows: torch.Tensor, V: torch.Tensor):
            if self.plan is None and P.shape[0] > 1:
                return self._choose(kept, rows, V)
            if self.plan == "per-point":
                if self.workers is None and len(rows) > 1:
                    kept.build(rows)
                    return self._time_pulls(kept, rows, V)
                return kept(rows, V, self.workers or 1)
            return self(P[rows], V)
        return matvec

    def _choose(self, kept: "_Linearised", rows: torch.Tensor, V: torch.Tensor):
        """The first product of the first chunk both ways, timed; the plan picked from the timings.

        Two points go through ``vmap`` untimed first, and one point's linearisation is built
        untimed: the first call of a process pays one-time costs (decompositions built) that
        would stand for a plan's time otherwise. Each
        way is then timed :data:`ROUNDS` times, interleaved, and its fastest round kept, so that
        a burst of load on a shared machine does not decide alone."""
        device, P = V.device, kept.P[rows]
        kept.build(rows[:1])  # untimed too: the first linearisation of a process pays one-time costs
        t_build, _ = _time("build", lambda: kept.build(rows[1:]), device)
        t_build *= len(rows) / max(1, len(rows) - 1)
        vmap_ok = True
        try:
            self(P[:2], V[:2])
        except (RuntimeError, NotImplementedError) as err:
            if is_out_of_memory(err):
                raise
            vmap_ok = False
        t_vmap = float("inf")
        for _ in range(ROUNDS):
            if vmap_ok:
                t_vmap = min(t_vmap, _time("vmap", lambda: self(P, V), device)[0])
        out = self._time_pulls(kept, rows, V)
        self.seconds = {"vmap": t_vmap, "build": t_build, **self.seconds}
        self.plan = "vmap" if kept.failed else pick_plan(self.seconds, self.products)
        return out

    def _time_pulls(self, kept: "_Linearised", rows: torch.Tensor, V: torch.Tensor):
        """One product of every point through its built linearisation, in one thread of calls
        and in ``torch.get_num_threads()`` threads, each timed :data:`ROUNDS` times interleaved
        (fastest round counts); ``workers`` picked from the timings (:func:`pick_workers`)."""
        threads = torch.get_num_threads() if kept.keep else 1
        seconds = {"pull": float("inf")}
        if threads > 1:
            seconds["pull-threads"] = float("inf")
        for _ in range(ROUNDS):
            for label, workers in (("pull", 1), ("pull-threads", threads)):
                if label in seconds:
                    t, out = _time(label, lambda: kept(rows, V, workers), V.device)
                    seconds[label] = min(seconds[label], t)
        self.seconds.update(seconds)
        self.workers = pick_workers(seconds, threads)
        return out


def _kept_gradient(loss_at: Callable, p: torch.Tensor) -> tuple[Callable, torch.Tensor]:
    """``(v -> H(p) v, loss at p)``: the gradient at ``p`` computed once with its graph kept
    (plain autograd, ``create_graph``), each product one backward through it.

    Plain autograd, not ``torch.func.vjp``: building costs 25-30% less and a product about 5%
    less on the digits CNN (benchmarks/README.md, "Curvature"), and the kept graph may be pulled
    from any thread. Works inside ``torch.no_grad()`` and ``torch.inference_mode()``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        leaf = p.detach().clone().requires_grad_(True)
        loss = loss_at(leaf)
        (g,) = torch.autograd.grad(loss, leaf, create_graph=True)

    def pull(v: torch.Tensor) -> torch.Tensor:
        if not g.requires_grad:  # the gradient does not depend on the weights: H = 0
            return torch.zeros_like(v)
        with torch.inference_mode(False):
            (hv,) = torch.autograd.grad(g, leaf, v, retain_graph=True, allow_unused=True, materialize_grads=True)
        return hv
    return pull, loss.detach()


class _Linearised:
    """The per-point plan for the points ``P`` of one chunk: each point's kept gradient
    (:func:`_kept_gradient`), built on first use and kept for the chunk while the data is one batch."""

    def __init__(self, hvp: PointHVP, P: torch.Tensor):
        self.hvp, self.P = hvp, P
        self.keep = len(hvp.batches) == 1
        self.pulls: dict[int, list] = {}
        self.failed = False

    def _pull(self, i: int, b: int, args, y):
        h = self.hvp
        if i in self.pulls:
            return self.pulls[i][b]
        loss_at = flat_loss(h.model, h.buffers, h.shapes, h.loss_fn, args, y)
        out = _kept_gradient(loss_at, self.P[i])
        if self.keep:
            self.pulls[i] = [out]
        return out

    def build(self, rows: torch.Tensor) -> None:
        """Build (and keep, for one batch) the linearisations of ``rows``."""
        missing = [i for i in rows.tolist() if i not in self.pulls]
        if not self.keep or not missing:
            return
        x, y, _ = self.hvp.batches.first()
        with _kernels():
            for i in missing:
                try:
                    self._pull(i, 0, as_args(x), y)
                except (RuntimeError, NotImplementedError) as err:
                    if is_out_of_memory(err):
                        raise
                    self.failed = True
                    return

    def __call__(self, rows: torch.Tensor, V: torch.Tensor, workers: int = 1):
        """Products at ``rows`` of ``V`` (len(rows), n) and the losses there; with ``workers`` > 1
        and the linearisations kept, pulled in that many threads (built first, in this one)."""
        if self.failed:
            return self.hvp._sum(lambda b, args, y: self.hvp._batch(args, y, self.P[rows], V, False), len(rows), V)

        def product(i: int, v: torch.Tensor, b: int, args, y):
            pull, value = self._pull(i, b, args, y)
            return pull(v), value

        def per_batch(b, args, y):
            pairs = list(zip(rows.tolist(), V))
            if workers > 1 and self.keep and len(pairs) > 1:
                self.build(rows)
                if self.failed:
                    raise RuntimeError("a linearisation could not be built")
                share = [pairs[k::workers] for k in range(workers)]
                with _operator_threads(1), ThreadPoolExecutor(workers) as pool:
                    done = list(pool.map(lambda part: [product(i, v, b, args, y) for i, v in part], share))
                out = [None] * len(pairs)
                for k, part in enumerate(done):
                    out[k::workers] = part
            else:
                out = [product(i, v, b, args, y) for i, v in pairs]
            return torch.stack([h for h, _ in out]), torch.stack([value for _, value in out])
        try:
            return self.hvp._sum(per_batch, len(rows), V)
        except (RuntimeError, NotImplementedError) as err:
            if is_out_of_memory(err):
                raise
            self.failed = True  # e.g. nn.LSTM: forward-over-reverse, one point at a time, no kept graph
            return self(rows, V)
