"""Gradient views (source article 004): what the gradient says, and where a step lands.

- :func:`plot_cross_sections`: the loss along each chosen parameter through the
  current point, with the tangent line whose slope is the autograd gradient.
- :func:`plot_lr_steps`: on a plane's contours, the point one gradient-descent
  step would reach for each of several learning rates, with the loss there.

Losses on grids come from the evaluator (``loss_surface``); the gradient from
``torch.func.grad`` over ``functional_call``. The model is only read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ._plot_common import finite

__all__ = ["loss_and_gradient", "plot_cross_sections", "plot_lr_steps", "lr_steps"]


def loss_and_gradient(model: torch.nn.Module, data, *, loss_fn: Callable, batch_size: int | None = None):
    """The model's whole-data mean loss and its gradient, without touching the model.

    The mean is sample-weighted over batches, as the evaluator computes it, in
    eval mode; the gradient is ``torch.func.grad`` of that mean with respect to
    every parameter (``.grad`` attributes are not written).

    Returns
    -------
    loss : float
    gradient : dict name -> Tensor
        Keyed and shaped like ``model.named_parameters()``, on the model's device.
    """
    from torch.func import grad

    from ._core.data import Batches
    from ._core.objective import check_differentiable, mean_loss
    from ._core.params import model_device, model_parameters

    check_differentiable(model, "the gradient")
    params = model_parameters(model)
    dtype = next(iter(params.values())).dtype
    batches = Batches(data, batch_size=batch_size, device=model_device(model), dtype=dtype)

    def with_aux(p):
        value = mean_loss(model, p, batches, loss_fn)
        return value, value.detach()

    g, value = grad(with_aux, has_aux=True)(params)
    return float(value), {k: v.detach() for k, v in g.items()}


def _entries(model, names):
    from ._directions import _locate
    from ._core.params import model_parameters

    weights = model_parameters(model)
    if names is None:
        total = sum(w.numel() for w in weights.values())
        if total > 8:
            raise ValueError(
                f"`names` is needed for a model with {total} parameter entries (at most 8 are drawn "
                "by default); name entries such as 'fc.weight[0, 1]'."
            )
        names = []
        for n, w in weights.items():
            for idx in np.ndindex(*w.shape):
                names.append(n if w.numel() == 1 else f"{n}[{', '.join(map(str, idx))}]")
    if isinstance(names, str):
        names = [names]
    return [(entry, *_locate(weights, entry)) for entry in names]


def plot_cross_sections(model: torch.nn.Module, data, *, loss_fn: Callable, names=None, span: float = 1.0,
                        num: int = 61, title: str | None = "Loss along each parameter, with the gradient",
                        batch_size: int | None = None):
    """One panel per parameter entry: the loss as that entry moves, the others held fixed.

    Each panel shows the loss curve through the current value (a dot), and the
    tangent ``loss + g * (theta - theta_now)`` whose slope ``g`` is the autograd
    partial derivative, labelled with its value. A negative slope means
    increasing that parameter lowers the loss.

    Parameters
    ----------
    names : list of str, optional
        Entries such as ``"fc.weight[0, 1]"`` or ``"fc.bias"`` (a one-element
        tensor). Default: every entry of a model with at most 8 of them.
    span : float
        Each entry moves over ``[theta_now - span, theta_now + span]``.
    num : int
        Points per curve.

    Returns
    -------
    matplotlib.figure.Figure
        Axes ``i`` holds the curve (``"loss"``) and the tangent (``"gradient"``)
        of ``names[i]``.
    """
    from matplotlib.figure import Figure

    from ._directions import axis_directions
    from ._landscape import loss_surface

    if not np.isfinite(span) or span <= 0:
        raise ValueError(f"`span` must be a positive number; got {span!r}.")
    entries = _entries(model, names)
    loss0, g = loss_and_gradient(model, data, loss_fn=loss_fn, batch_size=batch_size)
    params = dict(model.named_parameters())
    k = len(entries)
    cols = min(k, 3)
    rows = -(-k // cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    device = next(model.parameters()).device
    for ax, (entry, name, idx) in zip(axes, entries):
        now = float(params[name].detach()[idx])
        slope = float(g[name][idx])
        line = loss_surface(model, data, axis_directions(model, [entry]), loss_fn=loss_fn,
                            grid=(-span, span, num), device=device, dtype=params[name].dtype,
                            batch_size=batch_size, progress=False)
        theta = now + line.coords[0]
        ax.plot(theta, finite(line.loss), color="C0", linewidth=2, label="loss")
        t = np.array([now - span / 2, now + span / 2])
        ax.plot(t, loss0 + slope * (t - now), color="crimson", linewidth=1.5, label="gradient")
        ax.scatter([now], [loss0], color="crimson", zorder=3)
        ax.annotate(f"gradient = {slope:.3g}", (now, loss0), textcoords="offset points", xytext=(6, 8),
                    fontsize=8, color="crimson")
        ax.set_xlabel(entry)
        ax.set_ylabel("loss")
        ax.legend(fontsize=7, loc="upper center")
    for ax in axes[k:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def _flat(d, keys):
    return torch.cat([d[k].reshape(-1).double().cpu() for k in keys])


def lr_steps(model: torch.nn.Module, data, directions, *, loss_fn: Callable, lrs: Sequence[float],
             origin=None, batch_size: int | None = None):
    """Where one gradient-descent step with each learning rate lands, in plane coordinates.

    Returns
    -------
    start : ndarray of shape (2,)
        The model's own parameters, projected on the plane (least squares).
    ends : ndarray of shape (len(lrs), 2)
        ``theta - lr * gradient`` projected the same way.
    losses : ndarray of shape (len(lrs) + 1,)
        The loss at the model, then at each full (unprojected) stepped point,
        computed by the evaluator.
    """
    from ._core.data import Batches
    from ._core.evaluator import evaluate
    from ._core.points import ExplicitPoints
    from ._core.params import check_directions, check_origin, model_device, model_parameters

    lrs = [float(v) for v in lrs]
    if not lrs or any(not np.isfinite(v) or v <= 0 for v in lrs):
        raise ValueError(f"`lrs` must be positive learning rates; got {lrs!r}.")
    directions = check_directions(model, directions)
    if len(directions) != 2:
        raise ValueError(f"`directions` must hold 2 directions (a plane); got {len(directions)}.")
    keys = list(directions[0])
    orig = check_origin(model, origin, keys)
    params = model_parameters(model)
    _, g = loss_and_gradient(model, data, loss_fn=loss_fn, batch_size=batch_size)
    D = torch.stack([_flat(d, keys) for d in directions], dim=1).numpy()
    base = _flat(orig, keys).numpy()

    def coords(p):
        return np.linalg.lstsq(D, _flat(p, keys).numpy() - base, rcond=None)[0]

    stepped = [{k: params[k] - lr * g[k] if k in g else params[k] for k in params} for lr in lrs]
    start = coords(params)
    ends = np.array([coords(p) for p in stepped])
    dtype = next(iter(params.values())).dtype
    values, _ = evaluate(model, Batches(data, batch_size=batch_size, device=model_device(model), dtype=dtype),
                         ExplicitPoints([params, *stepped]), loss_fn=loss_fn)
    return start, ends, values["loss"]


def plot_lr_steps(model: torch.nn.Module, data, directions, *, loss_fn: Callable,
                  lrs: Sequence[float] = (0.01, 0.1, 1.0), origin=None, surface=None, grid=(-1.0, 1.0, 41),
                  ax=None, batch_size: int | None = None, title: str | None = "One gradient step per learning rate",
                  **contour_kw):
    """The step each learning rate would take from the model, drawn on the plane's contours.

    Parameters
    ----------
    directions : 2 direction dicts, and ``origin`` (default: the model)
        The plane, as given to :func:`fastscape.loss_surface`; e.g.
        ``axis_directions(model, ["fc.weight", "fc.bias"])`` with
        ``axis_origin(model, names)`` for a plane over two raw parameters.
    lrs : learning rates
        Each arrow goes from the model to ``theta - lr * gradient`` (projected on
        the plane), labelled with the loss there.
    surface : Surface, optional
        The plane's surface if already computed; else computed on ``grid``.
    contour_kw :
        Passed to :func:`fastscape.plot_contour`.

    Returns
    -------
    matplotlib.axes.Axes
    """
    from ._plotting import plot_contour
    from ._landscape import loss_surface

    start, ends, losses = lr_steps(model, data, directions, loss_fn=loss_fn, lrs=lrs, origin=origin,
                                   batch_size=batch_size)
    if surface is None:
        surface = loss_surface(model, data, directions, loss_fn=loss_fn, grid=grid, origin=origin,
                               device=next(model.parameters()).device, batch_size=batch_size, progress=False)
    ax = plot_contour(surface, ax=ax, title=title, **contour_kw)
    ax.scatter(*start, s=80, color="white", edgecolors="k", zorder=6, label=f"now: loss {losses[0]:.3g}")
    for i, (lr, end) in enumerate(zip(lrs, ends)):
        color = f"C{(i + 1) % 10}"
        ax.annotate("", xy=end, xytext=start, zorder=6,
                    arrowprops=dict(arrowstyle="-|>", color=color, linewidth=1.8, shrinkA=0, shrinkB=0))
        ax.scatter(*end, s=30, color=color, zorder=7, label=f"lr={lr:g}: loss {losses[i + 1]:.3g}")
    ax.legend(fontsize=8, loc="upper right")
    return ax
