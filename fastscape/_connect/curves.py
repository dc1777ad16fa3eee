"""Mode-connecting curves (Garipov, Izmailov, Podoprikhin, Vetrov & Wilson, "Loss Surfaces,
Mode Connectivity, and Fast Ensembling of DNNs", NeurIPS 2018, sec. 3).

Two trained networks ``w1`` and ``w2`` are joined by a curve ``φ_θ(t)``, t in [0, 1], with
one free point ``θ`` (the bend):

- quadratic Bezier: ``φ(t) = (1-t)^2 w1 + 2t(1-t) θ + t^2 w2``;
- polygonal chain with one bend: ``φ(t) = 2(t θ + (0.5 - t) w1)`` for t in [0, 0.5] and
  ``2((t - 0.5) w2 + (1 - t) θ)`` for t in [0.5, 1].

The bend minimises the loss expected along the curve under t uniform on [0, 1]: at each step
one t is drawn, the loss of ``φ_θ(t)`` on a minibatch is differentiated with respect to θ
only, and θ takes an SGD (momentum) step (the paper's stochastic estimate). It starts at the
midpoint of the endpoints. BatchNorm layers normalise by batch statistics while training
(the model's train mode, on a private copy); evaluation then uses recalibrated statistics
when ``recalibrate`` is given.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from .._core.data import Batches, as_args
from .._core.objective import scalar_of
from .._core.params import ParamDict, positive_int, positive_number
from .barrier import HIGHER_IS_BETTER, barrier_heights
from .common import check_same, evaluate_combinations, positive_count, same_layout, state_of

__all__ = ["Curve", "CurveProfile", "KINDS", "train_curve", "evaluate_curve", "curve_weights"]


def _bezier(t: np.ndarray) -> np.ndarray:
    return np.stack([(1 - t) ** 2, 2 * t * (1 - t), t ** 2], axis=1)


def _polychain(t: np.ndarray) -> np.ndarray:
    first = t <= 0.5
    w1 = np.where(first, 1 - 2 * t, 0.0)
    bend = np.where(first, 2 * t, 2 - 2 * t)
    w2 = np.where(first, 0.0, 2 * t - 1)
    return np.stack([w1, bend, w2], axis=1)


#: the curve families: name -> weights (n, 3) of (w1, bend, w2) at t of shape (n,)
KINDS = {"bezier": _bezier, "polychain": _polychain}


def curve_weights(kind: str, t) -> np.ndarray:
    """Weights of shape (n, 3) on (``model_a``, bend, ``model_b``) of the curve ``kind`` at ``t``."""
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {sorted(KINDS)}; got {kind!r}.")
    return KINDS[kind](np.asarray(t, dtype=np.float64).reshape(-1))


@dataclass
class Curve:
    """A trained curve between two models.

    Attributes
    ----------
    kind : {"bezier", "polychain"}
    a, bend, b : dict name -> Tensor
        Parameters and floating buffers of the two ends and the bend (the bend's buffers
        are the endpoints' mean).
    meta : dict
        ``epochs``, ``lr``, ``steps`` and ``train_loss`` (the mean minibatch loss of each epoch).
    """

    kind: str
    a: ParamDict
    bend: ParamDict
    b: ParamDict
    meta: dict = field(default_factory=dict)

    def weights(self, t) -> np.ndarray:
        """Weights (n, 3) on ``(a, bend, b)`` at ``t`` (n,)."""
        return curve_weights(self.kind, t)

    def plane_path(self, positions: np.ndarray, t) -> np.ndarray:
        """The curve in the plane through a, b and the bend: (n, 2) coordinates, given the three
        points' ``positions`` (3, 2) in the order a, b, bend (as
        :func:`fastscape.interpolation_plane` returns them)."""
        pos = np.asarray(positions, dtype=np.float64)[[0, 2, 1]]
        return self.weights(t) @ pos


@dataclass
class CurveProfile:
    """Values along a curve, and along the straight line between the same ends.

    Attributes
    ----------
    t : ndarray of shape (n,)
    curve, line : dict name -> ndarray of shape (n,)
        ``"loss"`` and each metric (``"train/loss"``, ``"test/accuracy"``, ... for a dict of
        datasets); ``line`` is None when it was not asked for.
    heights : dict "curve"/"line" -> dict name -> float
        Barrier heights (:func:`fastscape.connect.barrier`'s definition) along each.
    meta : dict
        ``kind``, ``recalibrated``, ``strategy``, ``seconds``.
    """

    t: np.ndarray
    curve: dict
    line: dict | None
    heights: dict
    meta: dict = field(default_factory=dict)


def _train_copy(model: nn.Module) -> nn.Module:
    """A copy in train mode whose BatchNorm layers use batch statistics and update nothing."""
    clone = copy.deepcopy(model)
    clone.train()
    for mod in clone.modules():
        if isinstance(mod, _BatchNorm):
            mod.track_running_stats = False
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _shuffled_batches(data, model: nn.Module, batch_size: int, device, dtype, gen: torch.Generator):
    """A function ``epoch() -> list of (args, y)``: the samples reshuffled each epoch; inputs
    given by name (a Hugging Face collator's dicts) bound to ``model.forward``'s parameters, with
    ``None`` where a parameter between them keeps its default."""
    given = Batches(data, device=device, dtype=dtype).bind(model)
    xs, ys = zip(*[(x, y) for x, y, _ in given])

    def cat(parts):
        if parts[0] is None:
            return None
        if isinstance(parts[0], torch.Tensor):
            return torch.cat(parts)
        return tuple(cat([p[i] for p in parts]) for i in range(len(parts[0])))

    def take(t, idx):
        if t is None:
            return None
        return t[idx] if isinstance(t, torch.Tensor) else tuple(take(u, idx) for u in t)

    x, y = cat(list(xs)), cat(list(ys))
    n = given.n_samples

    def epoch():
        order = torch.randperm(n, generator=gen).to(y.device)
        return [(as_args(take(x, order[i:i + batch_size])), take(y, order[i:i + batch_size]))
                for i in range(0, n, batch_size)]
    return epoch


def train_curve(model_a: nn.Module, model_b: nn.Module, data, *, loss_fn: Callable, kind: str = "bezier",
                epochs: int = 10, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
                batch_size: int = 128, seed: int = 0, device=None, dtype=torch.float32) -> Curve:
    """Train the bend of a curve between two models (Garipov et al., NeurIPS 2018, sec. 3.2).

    Parameters
    ----------
    model_a, model_b : nn.Module
        The two ends, of the same architecture; never modified.
    data : (inputs, targets), DataLoader, Dataset or iterable of batches
        Training data, reshuffled each epoch into minibatches of ``batch_size``.
    loss_fn : callable ``(output, target) -> scalar``
    kind : {"bezier", "polychain"}
    epochs, lr, momentum, weight_decay : SGD settings for the bend
    batch_size : int
    seed : int
        Seeds the shuffling and the t drawn at each step.

    Returns
    -------
    Curve
    """
    curve_weights(kind, [0.0])
    a = state_of(model_a, "model_a")
    b = check_same(model_a, model_b, "model_a", "model_b")
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable (output, target) -> scalar; got {loss_fn!r}.")
    epochs, batch_size = positive_int(epochs, "epochs"), positive_int(batch_size, "batch_size")
    lr = positive_number(lr, "lr")
    dev = next(iter(a.values())).device if device is None else torch.device(device)
    a = {k: v.to(dev, dtype) for k, v in a.items()}
    b = {k: v.to(dev, dtype) for k, v in b.items()}
    pkeys = [k for k, _ in model_a.named_parameters()]
    bend = {k: ((a[k] + b[k]) / 2).clone() for k in a}
    theta = {k: bend[k].requires_grad_(True) for k in pkeys}
    gen = torch.Generator().manual_seed(seed)
    epoch_batches = _shuffled_batches(data, model_a, batch_size, dev, dtype, gen)
    net = _train_copy(model_a).to(dev)
    opt = torch.optim.SGD(list(theta.values()), lr=lr, momentum=momentum, weight_decay=weight_decay)
    history, steps = [], 0
    for _ in range(epochs):
        total, count = 0.0, 0
        for args, y in epoch_batches():
            t = float(torch.rand((), generator=gen))
            w = curve_weights(kind, [t])[0]
            params = {k: w[0] * a[k] + w[1] * theta[k] + w[2] * b[k] for k in pkeys}
            loss = scalar_of(loss_fn, functional_call(net, params, args), y, "loss_fn")
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count, steps = total + float(loss.detach()) * len(y), count + len(y), steps + 1
        history.append(total / count)
    bend = {k: v.detach() for k, v in bend.items()}
    return Curve(kind=kind, a=a, bend=bend, b=b,
                 meta={"epochs": epochs, "lr": lr, "steps": steps, "train_loss": history})


def evaluate_curve(curve: Curve, model: nn.Module, data, *, loss_fn: Callable, metrics=None, n: int = 61,
                   line: bool = True, recalibrate=None, higher_is_better=HIGHER_IS_BETTER, device=None,
                   dtype=torch.float32, chunk_size="auto", strategy: str = "auto") -> CurveProfile:
    """Loss and metrics along a curve, and along the straight line between its ends, in one call.

    Parameters
    ----------
    curve : Curve
    model : nn.Module
        The architecture (e.g. ``model_a``); its weights are not used and never modified.
    data : data, or a dict of datasets (``{"train": ..., "test": ...}``)
    n : int
        Points on each, t evenly spaced on [0, 1] (ends included): the ends are the models
        themselves, bit for bit.
    line : bool
        Also evaluate the straight line (in the same call).
    recalibrate : data, optional
        Calibration data: BatchNorm statistics recomputed at every point (Garipov et al. sec. 4);
        without it the floating buffers follow the curve as the weights do.

    Returns
    -------
    CurveProfile
    """
    if not isinstance(curve, Curve):
        raise TypeError(f"`curve` must be a Curve (from train_curve); got {type(curve).__name__}.")
    n = positive_count(n, "n")
    t = np.linspace(0.0, 1.0, n)
    dev = next(iter(curve.a.values())).device if device is None else device
    anchors = [curve.a, curve.bend, curve.b]
    same_layout(state_of(model, "model"), curve.a, "model", "curve.a")
    weights = curve.weights(t)
    if line:
        weights = np.concatenate([weights, np.stack([1 - t, np.zeros(n), t], axis=1)])
    values, report = evaluate_combinations(model, anchors, weights, data, loss_fn=loss_fn, metrics=metrics,
                                           recalibrate=recalibrate, device=dev, dtype=dtype,
                                           chunk_size=chunk_size, strategy=strategy)
    on_curve = {k: v[:n] for k, v in values.items()}
    on_line = {k: v[n:] for k, v in values.items()} if line else None
    heights = {"curve": barrier_heights(t, on_curve, tuple(higher_is_better))[0]}
    if line:
        heights["line"] = barrier_heights(t, on_line, tuple(higher_is_better))[0]
    return CurveProfile(t=t, curve=on_curve, line=on_line, heights=heights,
                        meta={"kind": curve.kind, "recalibrated": recalibrate is not None,
                              "strategy": report.strategy, "seconds": report.seconds})

