"""Curvature over a plane: the extreme Hessian eigenvalues and the trace at every grid point.

The convexity map of Li, Xu, Taylor, Studer and Goldstein, "Visualizing the Loss
Landscape of Neural Nets", NeurIPS 2018, Fig. 9: ``|lambda_min / lambda_max|`` of
the Hessian at each point ``origin + a d_0 + b d_1``. A chunk of points is one
batch: their Hessian-vector products are one ``vmap`` over (point, vector) pairs
per data batch, and their Lanczos runs advance in lockstep
(:func:`fastscape._curvature.lanczos.lockstep_lanczos`), never a run per point.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._core.data import Batches, as_args
from .._core.grid import make_axes, mesh
from .._core.guards import named_failure, warn_once
from .._core.memory import is_out_of_memory
from .._core.objective import check_differentiable, check_scalar
from .._core.params import (check_directions, check_origin, flatten, model_buffers, model_state_guard,
                            positive_int, positive_number, resolve_device, resolve_dtype, unflatten)
from .._directions import make_generator
from .._hessian import ConvergenceWarning
from .._surface import Surface
from .lanczos import lockstep_lanczos, ritz

__all__ = ["PointHVP", "curvature_surface", "flat_loss"]


def flat_loss(model: nn.Module, buffers: dict, shapes: dict, loss_fn: Callable, args: tuple, y) -> Callable:
    """``flat -> loss_fn(model(args; flat), y)``: one batch's loss at a flat parameter vector."""
    def loss_at(flat):
        out = functional_call(model, {**buffers, **unflatten(flat, shapes)}, args)
        return check_scalar(loss_fn(out, y), "loss_fn")
    return loss_at


#: how a batch's products are computed, in the order tried: reverse-over-reverse (``vjp`` of
#: ``grad``) under ``vmap`` over the points; forward-over-reverse (``jvp`` of ``grad``) under
#: ``vmap`` (PyTorch's conv backward under vmap fails for some batch sizes with "NYI: querying
#: is_contiguous inside of vmap"); then one point at a time, each way (``nn.LSTM``).
PLANS = (("reverse-over-reverse", True), ("forward-over-reverse", True),
         ("reverse-over-reverse", False), ("forward-over-reverse", False))


class PointHVP:
    """``(P, V) -> (H(P_i) V_i for each row i, loss at each P_i)``: Hessian-vector products of
    the whole-dataset loss at many points at once.

    ``P`` and ``V`` have shape (B, n) over the model's parameters in order; one
    reverse-over-reverse product (``vjp`` of ``grad``) per row, all rows in one
    ``vmap`` per data batch (or another of :data:`PLANS` where that fails), batches
    weighted by their sample counts (float64 sums).
    Must run inside ``model_state_guard(model)`` (eval mode).
    """

    def __init__(self, model: nn.Module, batches: Batches, loss_fn: Callable, buffers: dict, shapes: dict):
        self.model, self.batches, self.loss_fn = model, batches, loss_fn
        self.buffers, self.shapes = buffers, shapes
        self.plan = PLANS[0]

    def _one(self, args, y, mode: str):
        loss_at = flat_loss(self.model, self.buffers, self.shapes, self.loss_fn, args, y)

        def product(p, v):
            if mode == "forward-over-reverse":
                (_, value), (hv, _) = jvp(grad_and_value(loss_at), (p,), (v,))
                return hv, value
            (_, value), pull = vjp(grad_and_value(loss_at), p)
            return pull((v, torch.zeros_like(value)))[0], value
        return product

    def _batch(self, args, y, P, V):
        """One batch's products: the plan that worked before first, then the others (see :data:`PLANS`)."""
        plans = sorted(PLANS, key=lambda plan: plan != self.plan)
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
            self.plan = (mode, vectorised)
            return out
        raise errors[-1]

    def __call__(self, P: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hv = torch.zeros(P.shape, dtype=torch.float64, device=P.device)
        loss = torch.zeros(P.shape[0], dtype=torch.float64, device=P.device)
        with sdpa_kernel([SDPBackend.MATH]):
            for x, y, n in self.batches:
                h, value = self._batch(as_args(x), y, P, V)
                hv += h.double() * n
                loss += value.double() * n
        return (hv / self.batches.n_samples).to(P.dtype), loss / self.batches.n_samples


def _flat_directions(model, directions, origin) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(origin (n,), directions (k, n), shapes)`` over the model's parameters."""
    params = dict(model.named_parameters())
    moved = [k for d in directions for k, t in d.items() if k not in params and bool(t.any())]
    if moved:
        raise ValueError(f"`directions` move buffer(s) {sorted(set(moved))[:5]}; the Hessian is taken "
                         "with respect to the parameters, so a curvature surface moves parameters only.")
    shapes = {k: p.shape for k, p in params.items()}
    o = flatten(origin, list(shapes), dtype=torch.float64)
    D = torch.stack([flatten(d, list(shapes), dtype=torch.float64) for d in directions])
    return o, D, shapes


def curvature_surface(model: nn.Module, data, directions, *, loss_fn: Callable, grid=(-1.0, 1.0, 21),
                      origin=None, max_iter: int = 30, tol: float = 1e-3, trace_probes: int = 8,
                      chunk_size: int = 32, seed: int | None = 0, device=None, dtype=torch.float32,
                      batch_size: int | None = None) -> Surface:
    """The top and bottom Hessian eigenvalues, their ratio and the trace at every grid point.

    At point ``theta = origin + sum_i c_i d_i`` of the grid, the Hessian ``H`` of the
    whole-dataset loss (eval mode, as :func:`fastscape.curvature.hessian_eigenpairs`) gives

    - ``lambda_max``, ``lambda_min``: its extreme eigenvalues, by Lanczos with full
      reorthogonalisation from a Rademacher start; both ends of one Krylov space;
    - ``ratio = |lambda_min / lambda_max|``: Li et al. (NeurIPS 2018, Fig. 9)'s measure of
      non-convexity; near 0 where the loss is locally convex, large where negative
      curvature dominates (inf where ``lambda_max = 0``);
    - ``trace``: Hutchinson's ``(1/p) sum_j v_j^T H v_j`` over ``trace_probes``
      Rademacher probes (the first is the Lanczos start), with ``trace_stderr``.

    Chunks of ``chunk_size`` points are computed together: one ``vmap`` over the
    chunk's Hessian-vector products per data batch, their Lanczos runs in lockstep
    (a point leaves when both extremes converge). Points where the loss or its
    derivatives are not finite hold NaN.

    Parameters
    ----------
    model : nn.Module
        Evaluated in eval mode through ``functional_call``; never written.
    data : (inputs, targets) pair, DataLoader, Dataset or iterable of such pairs
    directions : list of 1, 2 or 3 dicts name -> Tensor
        Over the model's parameters (e.g. :func:`fastscape.random_directions`).
    loss_fn : callable ``(output, target) -> scalar tensor``
    grid : int, (min, max, num), or per-direction list
        As for :func:`fastscape.loss_surface` (default 21 points on [-1, 1]).
    origin : nn.Module or dict, optional
        Where the directions start (default: the model's parameters).
    max_iter : int
        Most Lanczos steps per point; a :class:`ConvergenceWarning` counts the points
        that reached it before ``tol``.
    tol : float
        A point stops when the residuals of its largest and smallest Ritz pairs are at
        most ``tol * max|theta|``; eigenvalues are then accurate to about ``tol**2`` relative.
    trace_probes : int
        Hutchinson probes per point (one of them is the Lanczos start vector).
    chunk_size : int
        Points computed at once.
    seed : int or None
        Seeds the probes (default 0: reproducible for a given ``chunk_size``).
    device, dtype, batch_size
        As for :func:`fastscape.curvature.hessian_eigenpairs`.

    Returns
    -------
    Surface
        ``loss`` shaped like the grid, and ``metrics`` ``"lambda_max"``,
        ``"lambda_min"``, ``"ratio"``, ``"trace"``, ``"trace_stderr"`` of the same
        shape; ``meta["curvature"]`` holds the settings and the Lanczos steps taken.
    """
    for value, name in ((max_iter, "max_iter"), (trace_probes, "trace_probes"), (chunk_size, "chunk_size")):
        positive_int(value, name)
    positive_number(tol, "tol")
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable (output, target) -> scalar; got {loss_fn!r}.")
    info = dict(getattr(directions, "info", {}))
    directions = check_directions(model, directions)
    if len(directions) > 3:
        raise ValueError(f"`directions` must hold 1, 2 or 3 directions; got {len(directions)}.")
    check_differentiable(model, "the Hessian")
    axes = make_axes(grid, len(directions))
    dev, dt = resolve_device(device, model), resolve_dtype(dtype)
    o, D, shapes = _flat_directions(model, directions, check_origin(model, origin, list(directions[0])))
    buffers = model_buffers(origin) if isinstance(origin, nn.Module) else model_buffers(model)
    buffers = {k: (b.to(dev, dt) if b.is_floating_point() else b.to(dev)) for k, b in buffers.items()}
    batches = Batches(data, batch_size=batch_size, device=dev, dtype=dt)
    coords = torch.from_numpy(mesh(axes))
    points = (o + coords @ D).to(dev, dt)
    hvp = PointHVP(model, batches, loss_fn, buffers, shapes)
    g = make_generator(seed, None)
    t0 = time.perf_counter()
    with warn_once(), model_state_guard(model):
        x0, _, _ = batches.first()
        with torch.no_grad(), named_failure(model, as_args(x0)):
            functional_call(model, {**buffers, **unflatten(points[0], shapes)}, as_args(x0))
        parts = [_chunk(hvp, points[s:s + chunk_size], g, max_iter, tol, trace_probes)
                 for s in range(0, points.shape[0], chunk_size)]
    values = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    unconverged = int((~values.pop("converged") & np.isfinite(values["loss"])).sum())
    steps = values.pop("steps")
    if unconverged:
        warnings.warn(f"curvature_surface: {unconverged} of {len(steps)} points reached `max_iter`={max_iter} "
                      f"Lanczos steps before `tol`={tol}; raise `max_iter` or `tol`.", ConvergenceWarning,
                      stacklevel=2)
    shape = tuple(len(a) for a in axes)
    meta = {"kind": "curvature", "n_directions": len(directions), "grid_shape": list(shape),
            "n_samples": batches.n_samples, "device": str(dev), "dtype": str(dt).replace("torch.", ""),
            "chunk_size": chunk_size, "seconds": time.perf_counter() - t0, "directions": info,
            "curvature": {"max_iter": max_iter, "tol": tol, "trace_probes": trace_probes, "seed": seed,
                          "n_params": int(o.numel()), "mean_steps": float(steps.mean()),
                          "unconverged": unconverged}}
    loss = values.pop("loss").reshape(shape)
    return Surface(coords=axes, loss=loss, metrics={k: v.reshape(shape) for k, v in values.items()}, meta=meta)


def _chunk(hvp: PointHVP, P: torch.Tensor, g: torch.Generator, max_iter: int, tol: float,
           probes: int) -> dict[str, np.ndarray]:
    """The curvature values of the points ``P`` (B, n), one chunk."""
    B, n = P.shape
    V = (torch.randint(0, 2, (B, probes, n), generator=g, device=g.device) * 2 - 1).to(P.device, P.dtype)
    quad = torch.empty(B, probes, dtype=torch.float64)
    for j in range(1, probes):  # the extra probes, a chunk's worth per call
        hv, _ = hvp(P, V[:, j])
        quad[:, j] = (hv.double() * V[:, j].double()).sum(dim=1).cpu()
    tri = lockstep_lanczos(lambda rows, q: hvp(P[rows], q), V[:, 0], max_iter, tol=tol)
    loss = tri.aux.cpu().numpy()
    quad[:, 0] = torch.as_tensor(tri.alphas[:, 0] * n)  # v^T H v = n q^T H q for the start q = v / sqrt(n)
    values, _ = ritz(tri)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: diverging points
        lam_max, lam_min = np.nanmax(values, axis=1), np.nanmin(values, axis=1)
        ratio = np.abs(lam_min / lam_max)
    q = quad.numpy()
    stderr = q.std(axis=1, ddof=1) / math.sqrt(probes) if probes > 1 else np.full(B, np.inf)
    return {"loss": loss, "lambda_max": lam_max, "lambda_min": lam_min, "ratio": ratio,
            "trace": q.mean(axis=1), "trace_stderr": stderr, "converged": tri.converged, "steps": tri.sizes}
