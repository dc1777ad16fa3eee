"""What curves, barriers and alignment share: checked model states, and the evaluation of
points that are combinations of a few anchor states, all in one call of the evaluator.

A point of a line or a curve is ``sum_j w_j * anchor_j`` (a line: ``(1-t) A + t B``; a
quadratic Bezier curve: ``(1-t)^2 A + 2t(1-t) bend + t^2 B``): an affine grid with origin 0,
the anchors as directions and the weights as coordinates, so every point of several lines
and curves is evaluated by one call of :func:`fastscape._core.evaluator.evaluate` (every
strategy of the evaluator applies). A weight of exactly 1 on one anchor and 0 on the others
reproduces that anchor bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from .._core.data import Batches, NamedBatches
from .._core.evaluator import evaluate
from .._core.metrics import check_metrics
from .._core.params import ParamDict, check_model, resolve_device, resolve_dtype
from .._core.points import AffinePoints
from .._core.recalibrate import RecalibratedPoints

__all__ = ["state_of", "check_same", "evaluate_combinations", "positive_count", "same_layout"]


def state_of(model: nn.Module, name: str) -> ParamDict:
    """Parameters and floating buffers of ``model`` (detached, not copied), in module order."""
    check_model(model, name)
    out = {k: p.detach() for k, p in model.named_parameters()}
    out.update({k: b.detach() for k, b in model.named_buffers() if b.is_floating_point()})
    return out


def check_same(reference: nn.Module, other: nn.Module, ref_name: str, name: str) -> ParamDict:
    """``state_of(other)`` after checking that it has the names and shapes of ``reference``'s;
    a ``ValueError`` naming the first difference otherwise."""
    check_model(other, name)
    if type(other) is not type(reference):
        raise ValueError(f"`{name}` is a {type(other).__name__} and `{ref_name}` a {type(reference).__name__}; "
                         "both must have the same architecture.")
    b = state_of(other, name)
    same_layout(state_of(reference, ref_name), b, ref_name, name)
    return b


def same_layout(a: ParamDict, b: ParamDict, ref_name: str, name: str) -> None:
    """A ``ValueError`` naming the first name or shape in which state ``b`` differs from ``a``."""
    if list(a) != list(b):
        missing = sorted(set(a) ^ set(b)) or [next(x for x, y in zip(a, b) if x != y)]
        raise ValueError(f"`{name}` and `{ref_name}` have different parameters ({missing[0]!r} is not in both, "
                         "or not in the same place); both must have the same architecture.")
    for k in a:
        if a[k].shape != b[k].shape:
            raise ValueError(f"`{name}[{k!r}]` has shape {tuple(b[k].shape)}; `{ref_name}`'s has shape "
                             f"{tuple(a[k].shape)}.")


def positive_count(n, name: str, least: int = 2) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < least:
        raise ValueError(f"`{name}` must be an integer >= {least}; got {n!r}.")
    return int(n)


def as_batches(data, device, dtype):
    if isinstance(data, Mapping):
        return NamedBatches(data, device=device, dtype=dtype)
    return Batches(data, device=device, dtype=dtype)


def evaluate_combinations(model: nn.Module, anchors: list[ParamDict], weights: np.ndarray, data, *,
                          loss_fn: Callable, metrics=None, recalibrate=None, device=None, dtype=torch.float32,
                          chunk_size="auto", strategy: str = "auto") -> tuple[dict[str, np.ndarray], object]:
    """Loss and metrics at the points ``weights @ anchors``, one evaluator call.

    Parameters
    ----------
    model : nn.Module
        Gives the architecture and the non-floating buffers; never written.
    anchors : list of k dicts name -> Tensor
        Same keys as :func:`state_of` of ``model``.
    weights : ndarray of shape (N, k)
        Each point's weights on the anchors.
    recalibrate : data, optional
        Calibration data: BatchNorm statistics recomputed at every point
        (:class:`~fastscape._core.recalibrate.RecalibratedPoints`).

    Returns
    -------
    values : dict name -> ndarray of shape (N,)
    report : EvalReport
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable (output, target) -> scalar; got {loss_fn!r}.")
    metrics = check_metrics(metrics)
    dev = resolve_device(device, model)
    dt = resolve_dtype(dtype)
    batches = as_batches(data, dev, dt)
    origin = {k: torch.zeros_like(v) for k, v in anchors[0].items()}
    coords = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    points = AffinePoints(origin, anchors, coords)
    if recalibrate is not None:
        base = {**{k: p.detach() for k, p in model.named_parameters()},
                **{k: b.detach() for k, b in model.named_buffers()}}
        points = RecalibratedPoints(points, model, recalibrate, base)
    return evaluate(model, batches, points, loss_fn=loss_fn, metrics=metrics, chunk_size=chunk_size,
                    strategy=strategy)
