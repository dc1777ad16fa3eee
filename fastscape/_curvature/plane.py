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
from torch.func import functional_call

from .._core.data import Batches, as_args
from .._core.grid import make_axes, mesh
from .._core.guards import named_failure, warn_once
from .._core.objective import check_differentiable
from .._core.params import (check_directions, check_origin, flatten, model_buffers, model_state_guard,
                            positive_int, positive_number, resolve_device, resolve_dtype, unflatten)
from .._directions import make_generator
from .._hessian import ConvergenceWarning
from .._surface import Surface
from .hvp import PLAN_NAMES, PointHVP
from .lanczos import extreme_vectors, lockstep_lanczos, ritz

__all__ = ["curvature_surface"]

#: the weight of the random part of a warm start (a unit Rademacher vector times this, added to
#: the unit sum of the neighbour's two extreme Ritz vectors): keeps every eigenvector in reach of
#: the Krylov space at no cost in steps (benchmarks/README.md, "Curvature")
WARM_RANDOM = 0.3


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
                      batch_size: int | None = None, plan: str = "auto", warm_start: bool = True) -> Surface:
    """The top and bottom Hessian eigenvalues, their ratio and the trace at every grid point.

    At point ``theta = origin + sum_i c_i d_i`` of the grid, the Hessian ``H`` of the
    whole-dataset loss (eval mode, as :func:`fastscape.curvature.hessian_eigenpairs`) gives

    - ``lambda_max``, ``lambda_min``: its extreme eigenvalues, by Lanczos with full
      reorthogonalisation, both ends from one Krylov space; the start is a Rademacher vector,
      or with ``warm_start`` (after the first row) the unit sum of the extreme Ritz vectors of
      the grid neighbour one row back plus a random part (continuation: the neighbour's
      eigenvectors are close to this point's, so fewer steps reach ``tol``);
    - ``ratio = |lambda_min / lambda_max|``: Li et al. (NeurIPS 2018, Fig. 9)'s measure of
      non-convexity; near 0 where the loss is locally convex, large where negative
      curvature dominates (inf where ``lambda_max = 0``);
    - ``trace``: Hutchinson's estimator deflated by the Krylov basis ``Q`` (the idea of
      Hutch++, Meyer, Musco, Musco and Woodruff, SOSA 2021, with the Lanczos basis as the
      captured subspace): ``tr(Q^T H Q) + (1/p) sum_j g_j^T H g_j`` with
      ``g_j = (I - Q Q^T) v_j`` over ``trace_probes`` Rademacher probes ``v_j`` drawn
      independently of ``Q``, so unbiased; ``trace_stderr`` is the standard error of the
      second term (the first is exact). The top and bottom eigen-directions that dominate
      the variance of plain Hutchinson are in ``Q``.

    A grid is computed row by row (rows along the last direction, in pieces of at most
    ``chunk_size`` points): a piece's Lanczos runs advance in lockstep (a point leaves when
    both extremes converge), each step one batched Hessian-vector product of the piece
    (:class:`fastscape._curvature.hvp.PointHVP`: one ``vmap`` over the points, or each
    point's kept linearisation, whichever the first piece timed faster; kept linearisations
    are pulled in ``torch.get_num_threads()`` threads where that timed faster). Points where the
    loss or its derivatives are not finite hold NaN.

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
        Hutchinson probes per point, each one Hessian-vector product after the Lanczos run.
    chunk_size : int
        Most points computed at once.
    seed : int or None
        Seeds the start vectors and probes, drawn per point (default 0: reproducible,
        whatever the ``chunk_size``).
    device, dtype, batch_size
        As for :func:`fastscape.curvature.hessian_eigenpairs`.
    plan : {"auto", "vmap", "per-point"}
        How a piece's products are computed (:data:`fastscape._curvature.hvp.PLAN_NAMES`);
        "auto" times both on the first piece.
    warm_start : bool
        Start each point after the first row from its neighbour's Ritz vectors (default);
        False starts every point from a random vector.

    Returns
    -------
    Surface
        ``loss`` shaped like the grid, and ``metrics`` ``"lambda_max"``,
        ``"lambda_min"``, ``"ratio"``, ``"trace"``, ``"trace_stderr"`` and ``"converged"``
        (1 where both extremes reached ``tol``, 0 where ``max_iter`` came first, NaN where
        the loss is not finite) of the same shape; ``meta["curvature"]`` holds the settings,
        the plan used, the threads that pulled its products (``workers``), the probe timings
        and the mean Lanczos steps a point took.
    """
    for value, name in ((max_iter, "max_iter"), (trace_probes, "trace_probes"), (chunk_size, "chunk_size")):
        positive_int(value, name)
    positive_number(tol, "tol")
    if plan not in PLAN_NAMES:
        raise ValueError(f"`plan` must be one of {list(PLAN_NAMES)}; got {plan!r}.")
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
    batches = Batches(data, batch_size=batch_size, device=dev, dtype=dt).bind(model)
    coords = torch.from_numpy(mesh(axes))
    points = (o + coords @ D).to(dev, dt)
    hvp = PointHVP(model, batches, loss_fn, buffers, shapes, products=max_iter + trace_probes,
                   plan=None if plan == "auto" else plan)
    base = int(torch.randint(0, 2 ** 62, (1,), generator=make_generator(seed, None)))
    shape = tuple(len(a) for a in axes)
    t0 = time.perf_counter()
    with warn_once(), model_state_guard(model):
        x0, _, _ = batches.first()
        with torch.no_grad(), named_failure(model, as_args(x0)):
            functional_call(model, {**buffers, **unflatten(points[0], shapes)}, as_args(x0))
        parts = []
        sources = _warm_sources(np.arange(points.shape[0]), shape) if warm_start else np.full(points.shape[0], -1)
        uses = np.bincount(sources[sources >= 0], minlength=points.shape[0])
        kept: dict[int, torch.Tensor] = {}  # the extreme Ritz vectors (2, n) of points a later one starts from
        for idx in _pieces(shape, chunk_size):
            warm = [kept[int(i)] if i >= 0 else None for i in sources[idx]]
            part, vectors = _chunk(hvp, points[torch.as_tensor(idx)], idx, base, warm, max_iter, tol,
                                   trace_probes)
            for i in sources[idx][sources[idx] >= 0]:
                uses[i] -= 1
                if uses[i] == 0:
                    del kept[int(i)]
            kept.update({int(i): vectors[k] for k, i in enumerate(idx) if uses[i] > 0})
            parts.append(part)
    values = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    finite = np.isfinite(values["loss"])
    unconverged = int((~values["converged"] & finite).sum())
    values["converged"] = np.where(finite, values["converged"].astype(float), np.nan)
    steps = values.pop("steps")
    if unconverged:
        warnings.warn(f"curvature_surface: {unconverged} of {len(steps)} points reached `max_iter`={max_iter} "
                      f"Lanczos steps before `tol`={tol}; raise `max_iter` or `tol`.", ConvergenceWarning,
                      stacklevel=2)
    meta = {"kind": "curvature", "n_directions": len(directions), "grid_shape": list(shape),
            "n_samples": batches.n_samples, "device": str(dev), "dtype": str(dt).replace("torch.", ""),
            "chunk_size": chunk_size, "seconds": time.perf_counter() - t0, "directions": info,
            "curvature": {"max_iter": max_iter, "tol": tol, "trace_probes": trace_probes, "seed": seed,
                          "n_params": int(o.numel()), "mean_steps": float(steps.mean()),
                          "unconverged": unconverged, "plan": hvp.plan or "vmap", "workers": hvp.workers or 1,
                          "warm_start": warm_start,
                          "plan_seconds": dict(hvp.seconds)}}
    loss = values.pop("loss").reshape(shape)
    return Surface(coords=axes, loss=loss, metrics={k: v.reshape(shape) for k, v in values.items()}, meta=meta)


def _pieces(shape: tuple, chunk_size: int) -> list[np.ndarray]:
    """The flat indices of the grid (C order) in rows along the last axis, each row cut into
    pieces of at most ``chunk_size``: every point's neighbour one row back is in an earlier piece."""
    row = shape[-1]
    return [np.arange(r * row + s, r * row + min(row, s + chunk_size))
            for r in range(math.prod(shape[:-1])) for s in range(0, row, chunk_size)]


def _warm_sources(idx: np.ndarray, shape: tuple) -> np.ndarray:
    """The flat index of each point's neighbour one row back (the last axis before the row axis
    whose index is above 0, one less), -1 on the first row and on a line."""
    out = np.full(len(idx), -1)
    for k, flat in enumerate(idx):
        at = list(np.unravel_index(int(flat), shape))
        back = [a for a in range(len(shape) - 1) if at[a] > 0]
        if back:
            at[back[-1]] -= 1
            out[k] = int(np.ravel_multi_index(at, shape))
    return out


def _rademacher(count: int, n: int, point: int, base: int) -> torch.Tensor:
    """``count`` Rademacher vectors (count, n) of one point, from its own seed (chunk-independent)."""
    g = torch.Generator().manual_seed((base + point) % (2 ** 63))
    return (torch.randint(0, 2, (count, n), generator=g) * 2 - 1).double()


def _chunk(hvp: PointHVP, P: torch.Tensor, idx: np.ndarray, base: int, warm: list, max_iter: int, tol: float,
           probes: int) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """The curvature values of the points ``P`` (B, n) at flat indices ``idx``, and their extreme
    Ritz vectors (B, 2, n); ``warm[i]``: the Ritz vectors (2, n) that start point i, or None."""
    B, n = P.shape
    draws = torch.stack([_rademacher(probes + 1, n, int(i), base) for i in idx]).to(P.device, P.dtype)
    start = draws[:, 0].clone()
    for k, vectors in enumerate(warm):
        if vectors is not None and bool(torch.isfinite(vectors).all()) and float(vectors.sum(0).norm()) > 0:
            w = vectors.sum(dim=0)
            start[k] = w / w.norm() + WARM_RANDOM * start[k] / math.sqrt(n)
    matvec = hvp.chunk(P)
    tri = lockstep_lanczos(matvec, start, max_iter, tol=tol)
    loss = tri.aux.cpu().numpy()
    values, _ = ritz(tri)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: diverging points
        lam_max, lam_min = np.nanmax(values, axis=1), np.nanmin(values, axis=1)
        ratio = np.abs(lam_min / lam_max)
    # the trace: exact on the Krylov basis Q, Hutchinson on the rest (probes independent of Q)
    sizes = torch.as_tensor(tri.sizes, device=P.device)
    Q = tri.basis * (torch.arange(tri.basis.shape[1], device=P.device)[None, :] < sizes[:, None])[..., None]
    captured = np.array([tri.alphas[r, :k].sum() if k else np.nan for r, k in enumerate(tri.sizes)])
    rows = torch.arange(B, device=P.device)
    quad = np.empty((B, probes))
    for j in range(probes):
        v = draws[:, j + 1]
        g = v - torch.einsum("bkn,bk->bn", Q, torch.einsum("bkn,bn->bk", Q, v))
        hv, _ = matvec(rows, g)
        quad[:, j] = (hv.double() * g.double()).sum(dim=1).cpu().numpy()
    stderr = quad.std(axis=1, ddof=1) / math.sqrt(probes) if probes > 1 else np.full(B, np.inf)
    part = {"loss": loss, "lambda_max": lam_max, "lambda_min": lam_min, "ratio": ratio,
            "trace": captured + quad.mean(axis=1), "trace_stderr": stderr, "converged": tri.converged,
            "steps": tri.sizes}
    return part, extreme_vectors(tri)
