"""The numbers behind the views: computed here, returned as arrays and small data
objects the user keeps, and drawn by :mod:`fastscape.plot` (which never runs the model).

- :func:`loss_and_gradient`: the whole-data mean loss and its gradient (``_core.objective``).
- :func:`cross_sections`: the loss as each chosen parameter entry moves, with its partial derivative.
- :func:`lr_steps`: where one gradient-descent step per learning rate lands on a plane.
- :func:`hidden_activations`: a layer's output for some inputs.
- :func:`thresholded_prediction`: a 1-D regression net with its hidden units switched hard on/off.
- :func:`snapshot_predictions`: a model's outputs at every snapshot of a trajectory.

The model is only read: weights detached, buffers and training flags restored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._core.data import Batches, warn_nonfinite
from ._core.evaluator import evaluate
from ._core.objective import check_differentiable, mean_loss
from ._core.params import (
    check_directions,
    check_loss_fn,
    check_model,
    check_origin,
    model_buffers,
    model_device,
    model_parameters,
    model_state_guard,
    positive_int,
)
from ._core.points import ExplicitPoints
from ._directions import axis_directions, locate_entry
from ._landscape import loss_surface
from ._pca import project

__all__ = [
    "loss_and_gradient",
    "CrossSections",
    "cross_sections",
    "LRSteps",
    "lr_steps",
    "hidden_activations",
    "ThresholdedPrediction",
    "thresholded_prediction",
    "SnapshotPredictions",
    "snapshot_predictions",
    "linear_layer",
]


def _batches(model, data, batch_size):
    params = model_parameters(model)
    dtype = next(iter(params.values())).dtype
    batches = Batches(data, batch_size=batch_size, device=model_device(model), dtype=dtype)
    return params, batches.bind(model)  # inputs given by name, in the forward's positional places


def loss_and_gradient(model: nn.Module, data, *, loss_fn: Callable,
                      batch_size: int | None = None) -> tuple[float, dict[str, torch.Tensor]]:
    """The model's whole-data mean loss and its gradient, without touching the model.

    The mean is the sample-weighted mean over batches in eval mode
    (:func:`fastscape._core.objective.mean_loss`, the one the Hessian and
    training use); the gradient is ``torch.func.grad`` of it with respect to
    every parameter (``.grad`` attributes are not written).

    Returns
    -------
    loss : float
    gradient : dict name -> Tensor
        Keyed and shaped like ``model.named_parameters()``, on the model's device.
    """
    from torch.func import grad

    check_model(model)
    check_loss_fn(loss_fn)
    check_differentiable(model, "the gradient")
    params, batches = _batches(model, data, batch_size)
    buffers = model_buffers(model)

    def with_aux(p):
        value = mean_loss(model, p, batches, loss_fn, buffers=buffers)
        return value, value.detach()

    with model_state_guard(model):
        g, value = grad(with_aux, has_aux=True)(params)
    return float(value), {k: v.detach() for k, v in g.items()}


# ----------------------------------------------------------------------------- cross sections


@dataclass
class CrossSections:
    """The loss along each chosen parameter entry through the model, with the gradient there.

    Attributes
    ----------
    names : list of str
        The entries, e.g. ``"fc.weight[0, 1]"``.
    at : ndarray of shape (k,)
        Each entry's value in the model.
    gradient : ndarray of shape (k,)
        The partial derivative of the loss with respect to each entry (autograd).
    loss : float
        The whole-data loss at the model.
    offsets : ndarray of shape (n,)
        How far each entry moves from ``at`` (the same for every entry).
    losses : ndarray of shape (k, n)
        ``losses[i, j]``: the loss with entry ``i`` at ``at[i] + offsets[j]``,
        every other parameter held at the model's value.
    """

    names: list[str]
    at: np.ndarray
    gradient: np.ndarray
    loss: float
    offsets: np.ndarray
    losses: np.ndarray


def _entry_names(weights, names) -> list[str]:
    if names is None:
        total = sum(w.numel() for w in weights.values())
        if total > 8:
            raise ValueError(
                f"`names` is needed for a model with {total} parameter entries (at most 8 are taken "
                "by default); name entries such as 'fc.weight[0, 1]'."
            )
        out = []
        for n, w in weights.items():
            for idx in np.ndindex(*w.shape):
                out.append(n if w.numel() == 1 else f"{n}[{', '.join(map(str, idx))}]")
        return out
    return [names] if isinstance(names, str) else list(names)


def cross_sections(model: nn.Module, data, *, loss_fn: Callable, names=None, span: float = 1.0, n: int = 61,
                   batch_size: int | None = None) -> CrossSections:
    """The loss as each parameter entry moves alone, and the gradient at the model (source article 004).

    Parameters
    ----------
    names : str or list of str, optional
        Entries such as ``"fc.weight[0, 1]"`` or ``"fc.bias"`` (a one-element
        tensor). Default: every entry of a model with at most 8 of them.
    span : float
        Each entry moves over ``[at - span, at + span]``.
    n : int
        Points per curve.

    Returns
    -------
    CrossSections
        Draw it with :func:`fastscape.plot.cross_sections`.
    """
    check_model(model)
    check_loss_fn(loss_fn)
    if not np.isfinite(span) or span <= 0:
        raise ValueError(f"`span` must be a positive number; got {span!r}.")
    n = positive_int(n, "n")
    weights = model_parameters(model)
    entries = _entry_names(weights, names)
    if not entries:
        raise ValueError("`names` must list at least one parameter entry, e.g. 'fc.weight[0, 1]'.")
    located = [locate_entry(weights, e) for e in entries]
    loss0, g = loss_and_gradient(model, data, loss_fn=loss_fn, batch_size=batch_size)
    device = model_device(model)
    curves = []
    for entry, (name, _idx) in zip(entries, located):
        line = loss_surface(model, data, axis_directions(model, [entry]), loss_fn=loss_fn, grid=(-span, span, n),
                            device=device, dtype=weights[name].dtype, batch_size=batch_size, progress=False)
        curves.append(np.asarray(line.loss, dtype=float))
        offsets = np.asarray(line.coords[0], dtype=float)
    return CrossSections(
        names=entries,
        at=np.array([float(weights[name][idx]) for name, idx in located]),
        gradient=np.array([float(g[name][idx]) for name, idx in located]),
        loss=loss0, offsets=offsets, losses=np.stack(curves),
    )


# ----------------------------------------------------------------------------- learning-rate steps


@dataclass
class LRSteps:
    """One gradient-descent step per learning rate from the model, in a plane's coordinates.

    Attributes
    ----------
    lrs : ndarray of shape (m,)
    start : ndarray of shape (2,)
        The model, projected on the plane (least squares).
    ends : ndarray of shape (m, 2)
        ``theta - lr * gradient``, projected the same way.
    loss : float
        The loss at the model.
    losses : ndarray of shape (m,)
        The loss at each full (unprojected) stepped point, from the evaluator.
    residuals : ndarray of shape (m,)
        Distance of each stepped point from the plane (parameter units): 0 when
        the plane holds the gradient, as for axis directions over every parameter.
    """

    lrs: np.ndarray
    start: np.ndarray
    ends: np.ndarray
    loss: float
    losses: np.ndarray
    residuals: np.ndarray

    def span(self, margin: float = 0.15) -> list[tuple[float, float]]:
        """Per-axis (min, max) holding the start and every landing point, widened by ``margin`` of its extent.

        Use it to compute a surface on which every step lands, e.g.
        ``grid=[(lo, hi, 81) for lo, hi in steps.span()]``.
        """
        pts = np.vstack([self.start[None], self.ends])
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        pad = margin * np.maximum(hi - lo, 1e-12)
        return [(float(a - p), float(b + p)) for a, b, p in zip(lo, hi, pad)]


def lr_steps(model: nn.Module, data, directions, *, loss_fn: Callable, lrs: Sequence[float], origin=None,
             batch_size: int | None = None) -> LRSteps:
    """Where one gradient-descent step with each learning rate lands, in plane coordinates.

    Parameters
    ----------
    directions : 2 direction dicts
        The plane, as given to :func:`fastscape.loss_surface`; e.g.
        ``axis_directions(model, ["fc.weight", "fc.bias"])`` with
        ``origin=axis_origin(model, names)``.
    lrs : learning rates
    origin : optional
        The plane's origin (default: the model).

    Returns
    -------
    LRSteps
        Draw it on the plane's surface with :func:`fastscape.plot.lr_steps`.
    """
    check_model(model)
    check_loss_fn(loss_fn)
    lrs = [float(v) for v in lrs]
    if not lrs or any(not np.isfinite(v) or v <= 0 for v in lrs):
        raise ValueError(f"`lrs` must be positive learning rates; got {lrs!r}.")
    directions = check_directions(model, directions)
    if len(directions) != 2:
        raise ValueError(f"`directions` must hold 2 directions (a plane); got {len(directions)}.")
    keys = list(directions[0])
    orig = check_origin(model, origin, keys)
    params, batches = _batches(model, data, batch_size)
    warn_nonfinite(batches, "the loss, its gradient and every step will be NaN (or inf)")
    loss0, g = loss_and_gradient(model, data, loss_fn=loss_fn, batch_size=batch_size)
    stepped = [{k: params[k] - lr * g[k] if k in g else params[k] for k in params} for lr in lrs]
    # the start and each landing, in plane coordinates: the package's one least-squares projection
    state = {**params, **model_buffers(model)}  # a "states" plane moves buffers too
    points = [{k: p[k] if k in p else state[k] for k in keys} for p in [params, *stepped]]
    coords, residuals = project(points, [{k: d[k] for k in keys} for d in directions],
                                origin={k: orig[k] for k in keys}, return_residuals=True)
    values, _ = evaluate(model, batches, ExplicitPoints(stepped), loss_fn=loss_fn)
    return LRSteps(lrs=np.array(lrs), start=coords[0], ends=coords[1:], loss=loss0,
                   losses=np.asarray(values["loss"], dtype=float), residuals=residuals[1:])


# ----------------------------------------------------------------------------- inside a small network


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def linear_layer(model: nn.Module, layer: str | None = None, what: str = "this view") -> tuple[str, nn.Linear]:
    """(name, module) of the nn.Linear called ``layer``, or of the first one."""
    found = _linears(model)
    if layer is None:
        if not found:
            raise ValueError(f"`{what}` needs a model with an nn.Linear layer; {type(model).__name__} has none.")
        return found[0]
    for name, m in found:
        if name == layer:
            return name, m
    raise ValueError(f"`layer` must name an nn.Linear of the model, one of {[n for n, _ in found]}; got {layer!r}.")


def _numpy(t) -> np.ndarray:
    return (t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor)
            else np.asarray(t, dtype=float))


def _as_input(model, x) -> torch.Tensor:
    p = next(model.parameters())
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(p.device, p.dtype)


def hidden_activations(model: nn.Module, x, *, layer: str | None = None) -> np.ndarray:
    """The output of one submodule for inputs ``x`` (its first call in a forward pass).

    Parameters
    ----------
    x : array or Tensor of shape (N, ...)
    layer : str, optional
        Name of the submodule (as in ``model.named_modules()``). Default: the
        first module after the first ``nn.Linear`` that is not itself a Linear
        (usually its activation), else that Linear.

    Returns
    -------
    ndarray of shape (N, units)
        Draw it with :func:`fastscape.plot.hidden_space`.
    """
    modules = dict(model.named_modules())
    if layer is None:
        first, _ = linear_layer(model, None, "hidden_activations")
        names = list(modules)
        after = [n for n in names[names.index(first) + 1 :]
                 if not isinstance(modules[n], nn.Linear) and not list(modules[n].children())]
        layer = after[0] if after else first
    if layer not in modules:
        raise ValueError(f"`layer` must name a submodule of the model; got {layer!r}.")
    captured = []

    def hook(_m, _inp, out):
        if not captured:
            captured.append(out.detach())

    handle = modules[layer].register_forward_hook(hook)
    try:
        with model_state_guard(model), torch.no_grad():
            model(_as_input(model, x))
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"`layer` {layer!r} was not called in the model's forward pass.")
    out = _numpy(captured[0])
    return out.reshape(out.shape[0], -1)


@dataclass
class ThresholdedPrediction:
    """A 1-D regression net's prediction, smooth and with its hidden units switched hard on/off.

    Attributes
    ----------
    x : ndarray of shape (N,)
        The inputs, in the order given.
    smooth : ndarray of shape (N,)
        The net's own prediction.
    thresholded : ndarray of shape (N,)
        The prediction with every hidden activation replaced by ``on`` where the
        unit's pre-activation ``w x + b`` is positive and ``off`` elsewhere.
    switches : ndarray of shape (H,)
        The inputs ``-b / w`` where each unit switches (NaN for ``w = 0``).
    """

    x: np.ndarray
    smooth: np.ndarray
    thresholded: np.ndarray
    switches: np.ndarray


def thresholded_prediction(model: nn.Module, x, *, layer: str | None = None, on: float = 1.0,
                           off: float = 0.0) -> ThresholdedPrediction:
    """The prediction of a net Linear(1, H) -> activation -> Linear(H, out), smooth and thresholded.

    A saturating activation (sigmoid-like: ``off`` = 0, ``on`` = 1) makes the
    thresholded net a piecewise-constant approximation of the smooth one
    (source article 003).

    Parameters
    ----------
    x : array or Tensor of shape (N,) or (N, 1)

    Returns
    -------
    ThresholdedPrediction
        Draw it with :func:`fastscape.plot.thresholded`.
    """
    name, first = linear_layer(model, layer, "thresholded_prediction")
    linears = _linears(model)
    after = [m for n, m in linears[[n for n, _ in linears].index(name) + 1 :]]
    if first.in_features != 1 or not after or after[0].in_features != first.out_features:
        raise ValueError(
            "`thresholded_prediction` needs a 1-D regression net Linear(1, H) -> activation -> "
            f"Linear(H, out); layer {name!r} is Linear({first.in_features}, {first.out_features})"
            + ("" if after else " with no Linear after it") + "."
        )
    out_layer = after[0]
    xd = _numpy(x).reshape(-1)
    xt = _as_input(model, xd).reshape(-1, 1)
    with model_state_guard(model), torch.no_grad():
        smooth = model(xt)
        pre = xt @ first.weight.detach().T + (first.bias.detach() if first.bias is not None else 0.0)
        hard = torch.where(pre > 0, torch.as_tensor(on, dtype=pre.dtype), torch.as_tensor(off, dtype=pre.dtype))
        thresh = hard @ out_layer.weight.detach().T + (out_layer.bias.detach() if out_layer.bias is not None else 0.0)
    w = _numpy(first.weight).reshape(-1)
    b = _numpy(first.bias).reshape(-1) if first.bias is not None else np.zeros_like(w)
    with np.errstate(divide="ignore", invalid="ignore"):
        cuts = np.where(w != 0, -b / w, np.nan)
    return ThresholdedPrediction(x=xd, smooth=_numpy(smooth).reshape(len(xt), -1)[:, 0],
                                 thresholded=_numpy(thresh)[:, 0], switches=cuts)


# ----------------------------------------------------------------------------- predictions along a trajectory


@dataclass
class SnapshotPredictions:
    """A model's outputs at every snapshot of a trajectory.

    Attributes
    ----------
    x : ndarray of shape (N, ...)
        The inputs.
    outputs : ndarray of shape (T, N, ...)
        float64 outputs, one row per snapshot.
    steps : ndarray of shape (T,)
        The snapshot's optimizer step (from a Trajectory), else 0..T-1.
    losses : ndarray of shape (T,) or None
        The loss recorded with each snapshot, when the trajectory has them.
    """

    x: np.ndarray
    outputs: np.ndarray
    steps: np.ndarray
    losses: np.ndarray | None = None


def _snapshots(snapshots) -> list[dict]:
    if hasattr(snapshots, "__getitem__") and hasattr(snapshots, "__len__") and not isinstance(snapshots, dict):
        out = [snapshots[i] for i in range(len(snapshots))]
    else:
        raise TypeError(
            "`snapshots` must be a fastscape Trajectory or a list of parameter dicts; "
            f"got {type(snapshots).__name__}."
        )
    if not out:
        raise ValueError("`snapshots` is empty; expected at least one parameter snapshot.")
    return out


@torch.no_grad()
def snapshot_predictions(model: nn.Module, snapshots, x) -> SnapshotPredictions:
    """The model's outputs on ``x`` at every snapshot, without touching the model.

    All snapshots are evaluated at once: ``torch.func.vmap`` over
    ``functional_call`` on the stacked snapshot parameters (eval mode for the
    call; the model's weights and flags are left as they were).

    Parameters
    ----------
    snapshots : Trajectory or list of dicts name -> Tensor
        Parameters keyed like ``model.named_parameters()`` (missing names keep
        the model's own values).
    x : array or Tensor of shape (N, ...)

    Returns
    -------
    SnapshotPredictions
        Draw it with :func:`fastscape.plot.animate_fit`.
    """
    from torch.func import functional_call, vmap

    snaps = _snapshots(snapshots)
    device = model_device(model)
    own = model_parameters(model)
    keys = [k for k in snaps[0] if k in own]
    if not keys:
        raise ValueError(
            f"`snapshots` share no parameter name with the model; expected names like {list(own)[:4]}."
        )
    dtype = own[keys[0]].dtype
    stacked = {k: torch.stack([torch.as_tensor(s[k]) for s in snaps]).to(device, dtype) for k in keys}
    shared = {**model_buffers(model), **{k: v for k, v in own.items() if k not in stacked}}
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device, dtype)
    with model_state_guard(model):
        out = vmap(lambda p: functional_call(model, {**shared, **p}, (xt,)))(stacked)
    steps = getattr(snapshots, "steps", None)
    losses = getattr(snapshots, "losses", None)
    return SnapshotPredictions(
        x=_numpy(xt), outputs=out.detach().cpu().double().numpy(),
        steps=np.asarray(steps if steps is not None else range(len(snaps))),
        losses=None if losses is None else np.asarray(losses, dtype=float),
    )
