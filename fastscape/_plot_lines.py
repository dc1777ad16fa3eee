"""1-D views: the loss (and a metric such as accuracy) along lines and interpolations."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._plot_common import check_surface, finite, new_axes

__all__ = ["plot_line"]


def _as_lines(lines) -> list[tuple[str | None, object]]:
    if hasattr(lines, "coords") and hasattr(lines, "loss"):
        return [(None, lines)]
    if isinstance(lines, Mapping):
        items = [(str(k), v) for k, v in lines.items()]
    elif isinstance(lines, (list, tuple)):
        items = [(None, v) for v in lines]
    else:
        raise TypeError(
            "`lines` must be a Surface along one direction, a list of them, or a dict "
            f"label -> Surface; got {type(lines).__name__}."
        )
    if not items:
        raise ValueError("`lines` is empty; expected at least one Surface along one direction.")
    return items


def plot_line(lines, *, ax=None, metric: str | None = "accuracy", log: bool = False,
              xlabel: str | None = None, title: str | None = None, marks: Mapping[str, float] | None = None):
    """The loss along one or several lines, on one Axes; a metric on a twin y-axis.

    Parameters
    ----------
    lines : Surface, list of Surface, or dict label -> Surface
        Each along one direction: ``coords[0]`` of shape (n,) and ``loss`` of shape (n,),
        e.g. a random direction through a minimum or the interpolation between
        two models (then 0 and 1 are the two models).
    ax : matplotlib Axes, optional
        Drawn into; default: a new ``matplotlib.figure.Figure``.
    metric : str or None
        Name of a metric in ``surface.metrics`` (e.g. ``"accuracy"``) drawn dashed
        in the same colour on a twin axis on the right, where present.
    log : bool
        Log-scaled loss axis.
    marks : dict label -> coordinate, optional
        Vertical dotted lines, e.g. ``{"model A": 0, "model B": 1}``.

    Returns
    -------
    matplotlib.axes.Axes
        The loss axes. When a metric was drawn, its twin axes is the figure's
        last Axes (``ax.figure.axes[-1]``). NaN/inf losses are gaps in the lines.
    """
    items = _as_lines(lines)
    for _, s in items:
        check_surface(s, 1, "plot_line")
    if ax is None:
        ax = new_axes((6.4, 4.2))
    twin = None
    colors = [f"C{i % 10}" for i in range(len(items))]
    for i, ((label, s), color) in enumerate(zip(items, colors)):
        name = label or (f"line {i + 1}" if len(items) > 1 else "loss")
        x = np.asarray(s.coords[0], dtype=float)
        ax.plot(x, finite(s.loss), color=color, linewidth=1.8, label=name)
        if metric is not None and metric in s.metrics:
            if twin is None:
                twin = ax.twinx()
                twin.set_ylabel(f"{metric} (dashed)")
            twin.plot(x, finite(s.metrics[metric]), color=color, linestyle="--", linewidth=1.3,
                      label=f"{name}: {metric}")
    for label, where in (marks or {}).items():
        ax.axvline(where, color="0.4", linestyle=":", linewidth=1)
        ax.annotate(label, (where, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                    fontsize=8)
    if log:
        ax.set_yscale("log")
    info = (getattr(items[0][1], "meta", None) or {}).get("directions") or {}
    ax.set_xlabel(xlabel or ("interpolation coefficient" if info.get("kind") == "interpolation"
                             else "distance along the direction"))
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    handles, names = ax.get_legend_handles_labels()
    if twin is not None:
        h2, n2 = twin.get_legend_handles_labels()
        handles, names = handles + h2, names + n2
    ax.legend(handles, names, fontsize=8, loc="best")
    return ax
