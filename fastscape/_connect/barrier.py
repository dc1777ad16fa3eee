"""Barrier height along the straight line between two models (linear mode connectivity).

Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis", ICML 2020, sec. 2: along ``θ(t) = (1 - t) θ_A + t θ_B`` the *error barrier
height* is ``max_t E(θ(t)) - ((1 - t) E(θ_A) + t E(θ_B))``, the largest rise above the
linear interpolation of the endpoint values; the two networks are linearly connected when it
is about zero. It is computed here for the loss and every metric, on a grid of t, every
point of every pair in one batched call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .common import check_same, evaluate_combinations, positive_count, state_of

__all__ = ["Barrier", "barrier", "barrier_heights"]

#: metric names (the last part of ``"test/accuracy"``) whose higher values are better: their
#: barrier is the largest fall below the interpolation (Frankle et al. measure the error, 1 - accuracy)
HIGHER_IS_BETTER = ("accuracy",)


@dataclass
class Barrier:
    """The values along one straight line between two models and their barrier heights.

    Attributes
    ----------
    t : ndarray of shape (n,)
        Positions on the line, 0 (``model_a``) to 1 (``model_b``).
    values : dict name -> ndarray of shape (n,)
        ``"loss"`` and each metric (``"train/loss"``, ... for a dict of datasets) at each t.
    heights : dict name -> float
        Barrier height of each value (same units as the value; for accuracy, the rise of
        the error ``1 - accuracy``).
    argmax : dict name -> float
        The t where each barrier peaks.
    meta : dict
        ``recalibrated``, ``label``, the evaluator's ``strategy`` and ``seconds``.
    """

    t: np.ndarray
    values: dict
    heights: dict
    argmax: dict
    meta: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k} {v:.4g} at t={self.argmax[k]:.3g}" for k, v in self.heights.items())
        return f"Barrier({len(self.t)} points; {parts})"


def barrier_heights(t: np.ndarray, values: dict, higher_is_better=HIGHER_IS_BETTER) -> tuple[dict, dict]:
    """``(heights, argmax)`` of each value along ``t`` (see the module docstring). NaN where
    the values are not finite."""
    heights, argmax = {}, {}
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        sign = -1.0 if name.rsplit("/", 1)[-1] in higher_is_better else 1.0
        rise = sign * (v - ((1 - t) * v[0] + t * v[-1]))
        if not np.all(np.isfinite(rise)):
            heights[name], argmax[name] = float("nan"), float("nan")
            continue
        i = int(np.argmax(rise))
        heights[name], argmax[name] = float(rise[i]), float(t[i])
    return heights, argmax


def barrier(model_a: nn.Module | Sequence[nn.Module], model_b: nn.Module | Sequence[nn.Module], data, *,
            loss_fn: Callable, metrics=None, n: int = 51, recalibrate=None, label: str | None = None,
            higher_is_better: Sequence[str] = HIGHER_IS_BETTER, device=None, dtype=torch.float32,
            chunk_size="auto", strategy: str = "auto") -> Barrier | list[Barrier]:
    """Barrier height on the straight line between two models (Frankle et al., ICML 2020).

    Parameters
    ----------
    model_a, model_b : nn.Module, or equal-length lists of them
        The endpoints; a list gives one line per pair, all evaluated in one batched call
        (every model with the architecture of the first). Floating buffers (BatchNorm
        statistics) are interpolated with the weights. Never modified.
    data : (inputs, targets), DataLoader, Dataset, iterable of batches, or a dict of them
    loss_fn : callable ``(output, target) -> scalar``
    metrics : dict name -> callable, optional
    n : int
        Points on the line, t evenly spaced on [0, 1] (ends included).
    recalibrate : data, optional
        Calibration data (targets unused): every BatchNorm layer's running statistics are
        recomputed at each point before it is evaluated (see
        :mod:`fastscape._core.recalibrate`), as Frankle et al. and Garipov et al. do.
    label : str, optional
        Kept in ``meta["label"]`` for the views (e.g. "raw", "aligned").
    higher_is_better : names
        Metric names whose barrier is a fall (default: accuracy).

    Returns
    -------
    Barrier, or a list of them (one per pair) when lists were given.
    """
    pairs = isinstance(model_a, (list, tuple))
    if pairs != isinstance(model_b, (list, tuple)):
        raise TypeError("`model_a` and `model_b` must both be models or both be lists of models.")
    As, Bs = (list(model_a), list(model_b)) if pairs else ([model_a], [model_b])
    if not As or len(As) != len(Bs):
        raise ValueError(f"`model_a` and `model_b` must hold as many models, at least one; got {len(As)} "
                         f"and {len(Bs)}.")
    n = positive_count(n, "n")
    ref = As[0]
    state_of(ref, "model_a")
    anchors = []
    for i, (a, b) in enumerate(zip(As, Bs)):
        where = f"[{i}]" if pairs else ""
        anchors += [check_same(ref, a, "model_a[0]" if pairs else "model_a", f"model_a{where}"),
                    check_same(ref, b, "model_a[0]" if pairs else "model_a", f"model_b{where}")]
    t = np.linspace(0.0, 1.0, n)
    weights = np.zeros((len(As) * n, 2 * len(As)))
    for p in range(len(As)):
        weights[p * n:(p + 1) * n, 2 * p] = 1 - t
        weights[p * n:(p + 1) * n, 2 * p + 1] = t
    values, report = evaluate_combinations(ref, anchors, weights, data, loss_fn=loss_fn, metrics=metrics,
                                           recalibrate=recalibrate, device=device, dtype=dtype,
                                           chunk_size=chunk_size, strategy=strategy)
    out = []
    for p in range(len(As)):
        vals = {k: v[p * n:(p + 1) * n] for k, v in values.items()}
        heights, argmax = barrier_heights(t, vals, tuple(higher_is_better))
        out.append(Barrier(t=t, values=vals, heights=heights, argmax=argmax,
                           meta={"recalibrated": recalibrate is not None, "label": label,
                                 "strategy": report.strategy, "seconds": report.seconds}))
    return out if pairs else out[0]
