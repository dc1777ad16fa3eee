"""Inside a small network (source article 003): its hidden units' lines over the data,
the data in hidden-activation space, and the prediction with units switched on/off.

The activations and predictions come from :func:`fastscape.hidden_activations` and
:func:`fastscape.thresholded_prediction`; :func:`hidden_lines` only reads a layer's weights
(this module imports no compute module of fastscape).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._common import attach_mpl, check_backend, new_axes, require
from ._display import displays

if TYPE_CHECKING:  # the return annotations only
    import plotly.graph_objects as go
    from matplotlib.axes import Axes

__all__ = ["hidden_lines", "hidden_space", "thresholded"]

_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=float)


def _labels(y, n) -> np.ndarray:
    lab = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y).reshape(-1)
    if lab.shape[0] != n:
        raise ValueError(f"`y` must hold one label per input ({n}); got {lab.shape[0]}.")
    return lab


def _linear(model, layer):
    """(name, module): the nn.Linear named ``layer`` of ``model``, or its first one (``model`` itself if a Linear).

    Only the module tree is read (torch's own ``named_modules``): the view takes
    the weights it is given and runs nothing.
    """
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError("`model` must be an nn.Module or a (weight of shape (H, 2), bias of shape (H,)) pair; "
                        f"got {type(model).__name__}.")
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, m in found:
        if layer is None or name == layer:
            return name or "layer", m
    if layer is None:
        raise ValueError(f"`hidden_lines` needs a model with an nn.Linear layer; {type(model).__name__} has none.")
    raise ValueError(f"`layer` must name an nn.Linear of the model, one of {[n for n, _ in found]}; got {layer!r}.")


def _unit_lines(model, layer):
    """(name, weight (H, 2), bias (H,)) of a 2-input layer: a model's nn.Linear, or a (weight, bias) pair."""
    if isinstance(model, (tuple, list)) and len(model) == 2:
        w, b = _numpy(model[0]), _numpy(model[1]).reshape(-1)
        name = "layer"
    else:
        name, lin = _linear(model, layer)
        w = _numpy(lin.weight)
        b = _numpy(lin.bias) if lin.bias is not None else np.zeros(len(w))
    if w.ndim != 2 or w.shape[1] != 2:
        raise ValueError(f"`hidden_lines` needs a layer with 2 inputs; {name!r} has {w.shape[-1]}.")
    if b.shape != (w.shape[0],):
        raise ValueError(f"`bias` must hold one value per unit ({w.shape[0]}); got shape {b.shape}.")
    return name, w, b


@displays
def hidden_lines(model, x, y, *, layer: str | None = None, ax=None,
                 title: str | None = "Hidden units: lines w·x + b = 0") -> Axes:
    """Each hidden unit's line ``w . x + b = 0`` over 2-D data coloured by class.

    Parameters
    ----------
    model : nn.Module, or a pair (weight of shape (H, 2), bias of shape (H,))
        The first (or ``layer``) nn.Linear, which takes 2 inputs; its weights
        are only read.
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
    require("matplotlib", "`fastscape.plot.hidden_lines`")
    _, w, b = _unit_lines(model, layer)
    xd = _numpy(x)
    if xd.ndim != 2 or xd.shape[1] != 2:
        raise ValueError(f"`x` must have shape (N, 2); got {xd.shape}.")
    lab = _labels(y, len(xd))
    if ax is None:
        ax = new_axes((6.0, 6.2))
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
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    if title:
        ax.set_title(title)
    return ax


@displays
def hidden_space(activations, y, *, units=(0, 1, 2), title: str | None = "Data in hidden-activation space",
                 backend: str = "plotly", ax=None) -> go.Figure | Axes:
    """The data mapped into the activations of three hidden units, coloured by class.

    Parameters
    ----------
    activations : ndarray of shape (N, units)
        From :func:`fastscape.hidden_activations`.
    y : array or Tensor of shape (N,)
        Class labels.
    units : 3 ints
        Which hidden units give the x, y and z axes.
    backend : {"plotly", "matplotlib"}

    Returns
    -------
    plotly.graph_objects.Figure (one ``Scatter3d`` trace per class, named
    ``"class c"``), or a 3-D matplotlib Axes with ``backend="matplotlib"``.
    """
    check_backend(backend, "hidden_space")
    h = _numpy(activations)
    if h.ndim != 2:
        raise ValueError(f"`activations` must have shape (N, units); got {h.shape}.")
    units = [int(u) for u in units]
    if len(units) != 3 or len(set(units)) != 3:
        raise ValueError(f"`units` must name 3 different hidden units; got {units}.")
    if any(not 0 <= u < h.shape[1] for u in units):
        raise ValueError(f"`units` must be in [0, {h.shape[1]}) (the layer has {h.shape[1]} units); got {units}.")
    lab = _labels(y, len(h))
    classes = np.unique(lab)
    names = [f"unit {u}" for u in units]

    def draw_mpl(a=None):
        require("matplotlib", "`fastscape.plot.hidden_space(backend='matplotlib')`")
        a = a if a is not None else new_axes((7.0, 6.2), projection="3d")
        for k, c in enumerate(classes):
            sel = lab == c
            a.scatter(h[sel, units[0]], h[sel, units[1]], h[sel, units[2]], s=5, alpha=0.7,
                      color=_PALETTE[k % len(_PALETTE)], label=f"class {c}", depthshade=False)
        a.set_xlabel(names[0])
        a.set_ylabel(names[1])
        a.set_zlabel(names[2])
        a.set_box_aspect((1, 1, 1))  # a cube, as the plotly scene
        a.legend(loc="upper left", fontsize=8)
        if title:
            a.set_title(title)
        return a

    if backend == "matplotlib":
        return draw_mpl(ax)
    if ax is not None:
        raise ValueError("`ax` is for backend='matplotlib'; a plotly view makes its own figure.")
    go = require("plotly.graph_objects", "`fastscape.plot.hidden_space`")
    fig = go.Figure([
        go.Scatter3d(x=h[lab == c, units[0]], y=h[lab == c, units[1]], z=h[lab == c, units[2]],
                     mode="markers", name=f"class {c}",
                     marker=dict(size=2.5, color=_PALETTE[k % len(_PALETTE)], opacity=0.75))
        for k, c in enumerate(classes)
    ])
    fig.update_layout(
        title=dict(text=title) if title else None, template="plotly_white", autosize=True,
        margin=dict(l=0, r=0, t=50 if title else 0, b=0), legend=dict(x=0.01, y=0.98),
        scene=dict(xaxis_title=names[0], yaxis_title=names[1], zaxis_title=names[2], aspectmode="cube"),
    )
    return attach_mpl(fig, lambda: (draw_mpl().figure, None), size=(900, 800))


@displays
def thresholded(prediction, y=None, *, ax=None,
                title: str | None = "Hidden units switched on/off vs smooth") -> Axes:
    """A 1-D regression net's prediction with its hidden units thresholded, next to the smooth one.

    Parameters
    ----------
    prediction : ThresholdedPrediction
        From :func:`fastscape.thresholded_prediction`.
    y : array of shape (N,), optional
        Targets at ``prediction.x`` (same order), drawn as points.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        Lines ``"smooth"`` and ``"thresholded"`` in increasing x; dotted
        verticals at the units' switching points inside the data range.
    """
    require("matplotlib", "`fastscape.plot.thresholded`")
    for attr in ("x", "smooth", "thresholded", "switches"):
        if not hasattr(prediction, attr):
            raise TypeError("`prediction` must be the result of fastscape.thresholded_prediction; got "
                            f"{type(prediction).__name__}.")
    xd = np.asarray(prediction.x, dtype=float).reshape(-1)
    order = np.argsort(xd, kind="stable")
    if ax is None:
        ax = new_axes((7.0, 4.6))
    if y is not None:
        yd = _numpy(y).reshape(-1)
        if yd.shape[0] != xd.shape[0]:
            raise ValueError(f"`y` must hold one target per input ({xd.shape[0]}); got {yd.shape[0]}.")
        ax.scatter(xd, yd, s=6, color="0.6", label="data", zorder=1)
    ax.plot(xd[order], np.asarray(prediction.smooth)[order], color="crimson", linewidth=2, label="smooth", zorder=3)
    ax.plot(xd[order], np.asarray(prediction.thresholded)[order], color="navy", linewidth=1.5,
            drawstyle="steps-mid", label="thresholded", zorder=2)
    cuts = np.asarray(prediction.switches, dtype=float)
    for c in cuts[np.isfinite(cuts) & (cuts >= xd.min()) & (cuts <= xd.max())]:
        ax.axvline(c, color="0.5", linestyle=":", linewidth=0.8, zorder=0)
    ax.set_xlabel("x")
    ax.set_ylabel("prediction")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax
