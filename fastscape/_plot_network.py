"""Inside a small network: what its hidden units do to the data (source article 003).

- :func:`plot_hidden_lines`: for a classifier on 2-D inputs, each hidden unit's
  line ``w . x + b = 0`` over the data, with an arrow to the side where the unit
  is on.
- :func:`plot_hidden_space`: the data mapped into hidden-activation space,
  three chosen units at a time, as a 3D scatter coloured by class.
- :func:`plot_thresholded`: for a 1-D regression net, the prediction with every
  hidden unit switched hard on/off next to the smooth prediction.

The model is only read: weights through ``named_parameters`` (detached),
activations through a temporary forward hook in eval mode under ``no_grad``;
training flags are restored after.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._plot_common import new_axes

__all__ = ["plot_hidden_lines", "plot_hidden_space", "plot_thresholded", "hidden_activations"]


def _linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _linear(model: nn.Module, layer: str | None, what: str) -> tuple[str, nn.Linear]:
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


def _labels(y, n) -> np.ndarray:
    lab = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y).reshape(-1)
    if lab.shape[0] != n:
        raise ValueError(f"`y` must hold one label per input ({n}); got {lab.shape[0]}.")
    return lab


def hidden_activations(model: nn.Module, x, *, layer: str | None = None) -> np.ndarray:
    """The output of one submodule for inputs ``x`` (its first call in a forward pass).

    Parameters
    ----------
    layer : str, optional
        Name of the submodule (as in ``model.named_modules()``). Default: the
        first module after the first ``nn.Linear`` that is not itself a Linear
        (usually its activation), else that Linear.

    Returns
    -------
    ndarray of shape (N, units)
    """
    from ._core.params import model_state_guard

    modules = dict(model.named_modules())
    if layer is None:
        first, _ = _linear(model, None, "hidden_activations")
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


def plot_hidden_lines(model: nn.Module, x, y, *, layer: str | None = None, ax=None,
                      title: str | None = "Hidden units: lines w·x + b = 0"):
    """Each hidden unit's line ``w . x + b = 0`` over 2-D data coloured by class.

    Parameters
    ----------
    model : nn.Module whose first (or ``layer``) nn.Linear takes 2 inputs
    x : array or Tensor of shape (N, 2)
    y : array or Tensor of shape (N,)
        Class labels.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        One line per unit, labelled ``"unit i"``; an arrow from its middle points
        along ``w`` (the side where the unit's pre-activation is positive).
    """
    name, lin = _linear(model, layer, "plot_hidden_lines")
    if lin.in_features != 2:
        raise ValueError(f"`plot_hidden_lines` needs a layer with 2 inputs; {name!r} has {lin.in_features}.")
    xd = _numpy(x)
    if xd.ndim != 2 or xd.shape[1] != 2:
        raise ValueError(f"`x` must have shape (N, 2); got {xd.shape}.")
    lab = _labels(y, len(xd))
    w = _numpy(lin.weight)
    b = _numpy(lin.bias) if lin.bias is not None else np.zeros(len(w))
    if ax is None:
        ax = new_axes((6.0, 5.6))
    for k, c in enumerate(np.unique(lab)):
        sel = lab == c
        ax.scatter(xd[sel, 0], xd[sel, 1], s=9, alpha=0.55, color=f"C{k}", label=f"class {c}", edgecolors="none")
    lo, hi = xd.min(axis=0), xd.max(axis=0)
    pad = 0.1 * (hi - lo + 1e-12)
    lo, hi = lo - pad, hi + pad
    centre = (lo + hi) / 2
    scale = 0.12 * float(np.max(hi - lo))
    for i, (wi, bi) in enumerate(zip(w, b)):
        color = f"C{(i + 3) % 10}"
        norm = float(np.hypot(*wi))
        if norm == 0:
            continue
        # the point of the line nearest the data's centre, and the line's direction
        p0 = centre - (wi @ centre + bi) / norm**2 * wi
        d = np.array([-wi[1], wi[0]]) / norm
        t = np.linspace(-2, 2, 2) * float(np.max(hi - lo))
        seg = p0 + t[:, None] * d
        ax.plot(seg[:, 0], seg[:, 1], color=color, linewidth=1.8, label=f"unit {i}")
        ax.annotate("", xy=p0 + scale * wi / norm, xytext=p0,
                    arrowprops=dict(arrowstyle="->", color=color, linewidth=1.5))
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.legend(fontsize=7, loc="upper right")
    if title:
        ax.set_title(title)
    return ax


def plot_hidden_space(model: nn.Module, x, y, *, units=(0, 1, 2), layer: str | None = None,
                      title: str | None = "Data in hidden-activation space"):
    """The data mapped into the activations of three hidden units, coloured by class.

    Parameters
    ----------
    x : array or Tensor of shape (N, d_in)
    y : array or Tensor of shape (N,)
        Class labels.
    units : 3 ints
        Which hidden units give the x, y and z axes.
    layer : str, optional
        Submodule whose output is the hidden representation (see :func:`hidden_activations`).

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Scatter3d`` trace per class, named ``"class c"``.
    """
    import plotly.graph_objects as go

    h = hidden_activations(model, x, layer=layer)
    units = [int(u) for u in units]
    if len(units) != 3 or len(set(units)) != 3:
        raise ValueError(f"`units` must name 3 different hidden units; got {units}.")
    if any(not 0 <= u < h.shape[1] for u in units):
        raise ValueError(f"`units` must be in [0, {h.shape[1]}) (the layer has {h.shape[1]} units); got {units}.")
    lab = _labels(y, len(h))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    fig = go.Figure([
        go.Scatter3d(x=h[lab == c, units[0]], y=h[lab == c, units[1]], z=h[lab == c, units[2]],
                     mode="markers", name=f"class {c}",
                     marker=dict(size=2.5, color=palette[k % len(palette)], opacity=0.75))
        for k, c in enumerate(np.unique(lab))
    ])
    fig.update_layout(
        title=dict(text=title) if title else None, width=760, height=680, template="plotly_white",
        margin=dict(l=0, r=0, t=50 if title else 0, b=0),
        scene=dict(xaxis_title=f"unit {units[0]}", yaxis_title=f"unit {units[1]}",
                   zaxis_title=f"unit {units[2]}"),
    )
    return fig


def thresholded_prediction(model: nn.Module, x, *, layer: str | None = None, on: float = 1.0,
                           off: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(smooth, thresholded, thresholds) for a net Linear(1, H) -> activation -> Linear(H, out).

    ``thresholded`` replaces every hidden activation by ``on`` where the unit's
    pre-activation ``w x + b`` is positive and ``off`` elsewhere, then applies
    the output layer; ``thresholds`` are the inputs ``-b / w`` where units switch.
    Shapes: (N,), (N,), (H,).
    """
    from ._core.params import model_state_guard

    name, first = _linear(model, layer, "plot_thresholded")
    linears = _linears(model)
    after = [m for n, m in linears[[n for n, _ in linears].index(name) + 1 :]]
    if first.in_features != 1 or not after or after[0].in_features != first.out_features:
        raise ValueError(
            "`plot_thresholded` needs a 1-D regression net Linear(1, H) -> activation -> "
            f"Linear(H, out); layer {name!r} is Linear({first.in_features}, {first.out_features})"
            + ("" if after else " with no Linear after it") + "."
        )
    out_layer = after[0]
    xt = _as_input(model, x).reshape(-1, 1)
    with model_state_guard(model), torch.no_grad():
        smooth = model(xt)
        pre = xt @ first.weight.detach().T + (first.bias.detach() if first.bias is not None else 0.0)
        hard = torch.where(pre > 0, torch.as_tensor(on, dtype=pre.dtype), torch.as_tensor(off, dtype=pre.dtype))
        thresh = hard @ out_layer.weight.detach().T + (out_layer.bias.detach() if out_layer.bias is not None else 0.0)
    w = _numpy(first.weight).reshape(-1)
    b = _numpy(first.bias).reshape(-1) if first.bias is not None else np.zeros_like(w)
    with np.errstate(divide="ignore", invalid="ignore"):
        cuts = np.where(w != 0, -b / w, np.nan)
    return _numpy(smooth).reshape(len(xt), -1)[:, 0], _numpy(thresh)[:, 0], cuts


def plot_thresholded(model: nn.Module, x, y=None, *, layer: str | None = None, ax=None, on: float = 1.0,
                     off: float = 0.0, title: str | None = "Hidden units switched on/off vs smooth"):
    """A 1-D regression net's prediction with hidden units thresholded, next to the smooth one.

    Parameters
    ----------
    model : nn.Module, Linear(1, H) -> activation -> Linear(H, out)
        A saturating activation (sigmoid-like: ``off`` = 0, ``on`` = 1) makes the
        thresholded net a piecewise-constant approximation of the smooth one.
    x : array or Tensor of shape (N,) or (N, 1)
        Inputs, drawn in sorted order.
    y : array of shape (N,), optional
        Targets, drawn as points.

    Returns
    -------
    matplotlib.axes.Axes
        Lines ``"smooth"`` and ``"thresholded"``; dotted verticals at the units'
        switching points ``-b/w`` inside the data range.
    """
    xd = _numpy(x).reshape(-1)
    order = np.argsort(xd)
    smooth, hard, cuts = thresholded_prediction(model, xd[order].reshape(-1, 1), layer=layer, on=on, off=off)
    if ax is None:
        ax = new_axes((7.0, 4.4))
    if y is not None:
        yd = _numpy(y).reshape(-1)
        if yd.shape[0] != xd.shape[0]:
            raise ValueError(f"`y` must hold one target per input ({xd.shape[0]}); got {yd.shape[0]}.")
        ax.scatter(xd, yd, s=6, color="0.6", label="data", zorder=1)
    ax.plot(xd[order], smooth, color="crimson", linewidth=2, label="smooth", zorder=3)
    ax.plot(xd[order], hard, color="navy", linewidth=1.5, drawstyle="steps-mid", label="thresholded", zorder=2)
    for c in cuts[np.isfinite(cuts) & (cuts >= xd.min()) & (cuts <= xd.max())]:
        ax.axvline(c, color="0.5", linestyle=":", linewidth=0.8, zorder=0)
    ax.set_xlabel("x")
    ax.set_ylabel("prediction")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax
