"""1-D views: a value (the loss, a metric) along lines and interpolations."""

from __future__ import annotations

from collections.abc import Mapping

from typing import TYPE_CHECKING

import numpy as np

from ._common import check_surface, finite, new_axes, require, resolve_value
from ._marks import legend_below
from ._display import displays

if TYPE_CHECKING:  # the return annotations only
    from matplotlib.axes import Axes

__all__ = ["line"]


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


def _per_dataset(items, value: str, metric: str | None) -> list[tuple[str | None, object, str, str | None, str]]:
    """(name, surface, value, metric, axis word) per drawn line: a surface of several datasets gives one
    line per dataset when ``value``/``metric`` name no dataset ("loss" -> "train/loss", "test/loss")."""
    out = []
    for label, s in items:
        datasets = list(getattr(s, "datasets", None) or [])
        if datasets and "/" not in value:
            for d in datasets:
                m = None if metric is None or "/" in metric else f"{d}/{metric}"
                out.append((f"{label}: {d}" if label else d, s, f"{d}/{value}", m or metric, value))
        else:
            out.append((label, s, value, metric, None))
    return out


def _has(surface, name) -> bool:
    try:
        resolve_value(surface, name)
    except (KeyError, ValueError):
        return False
    return True


@displays
def line(lines, *, value: str = "loss", metric: str | None = "accuracy", ax=None, log: bool = False,
         xlabel: str | None = None, title: str | None = None, marks: Mapping[str, float] | None = None,
         legend: bool = True) -> Axes:
    """A value along one or several lines on one Axes; a second value dashed on a twin axis.

    Parameters
    ----------
    lines : Surface, list of Surface, or dict label -> Surface
        Each along one direction: ``coords[0]`` of shape (n,) and values of shape
        (n,), e.g. a random direction through a minimum or the interpolation
        between two models (then 0 and 1 are the two models).
    value : str
        What the solid lines show: ``"loss"`` (default) or a metric
        (``"test/loss"``, ``"accuracy"``); it names the left axis. On a surface
        of several datasets (``{"train": ..., "test": ...}``) a name without a
        dataset draws one line per dataset ("train", "test"): the figure of
        Goodfellow et al. (2015), train and test loss with accuracy on a twin
        axis, is ``line(surface)``.
    metric : str or None
        A second value (e.g. ``"accuracy"``) drawn dashed in the same colour on a
        twin axis on the right, for the lines that have it (per dataset, as ``value``).
    ax : matplotlib Axes, optional
        Drawn into; default: a new figure.
    log : bool
        Log-scaled left axis (for a loss).
    marks : dict label -> coordinate, optional
        Vertical dotted lines, e.g. ``{"model A": 0, "model B": 1}``, named by
        tick labels along the top edge (clear of the title and the curves).
    legend : bool
        One entry per line, plus a key for solid/dashed, under the Axes.

    Returns
    -------
    matplotlib.axes.Axes
        The left axes. When a second value was drawn, its twin axes is the
        figure's last Axes (``ax.figure.axes[-1]``). NaN/inf values are gaps.
    """
    require("matplotlib", "`fastscape.plot.line`")
    from matplotlib.lines import Line2D

    items = _as_lines(lines)
    for _, s in items:
        check_surface(s, 1, "line")
    drawn = _per_dataset(items, value, metric)
    if ax is None:
        ax = new_axes((6.6, 4.8))
    twin = None
    handles, names = [], []
    label_v = label_m = None
    for i, (label, s, vname, mname, word) in enumerate(drawn):
        color = f"C{i % 10}"
        name = label or (f"line {i + 1}" if len(drawn) > 1 else None)
        x = np.asarray(s.coords[0], dtype=float)
        v = resolve_value(s, vname)
        label_v = word or v.label
        (h,) = ax.plot(x, finite(v.array), color=color, linewidth=1.8, label=name or v.label)
        handles.append(h)
        names.append(name or v.label)
        if mname is not None and _has(s, mname):
            m = resolve_value(s, mname)
            label_m = metric if word else m.label
            if twin is None:
                twin = ax.twinx()
            twin.plot(x, finite(m.array), color=color, linestyle="--", linewidth=1.3,
                      label=f"{name}: {m.label}" if name else m.label)
    if twin is not None:
        twin.set_ylabel(f"{label_m} (dashed)")
        if len(drawn) > 1:  # a key for the two line styles
            handles += [Line2D([], [], color="k", linewidth=1.8), Line2D([], [], color="k", linestyle="--")]
            names += [f"{label_v} (solid, left)", f"{label_m} (dashed, right)"]
        else:
            handles += twin.get_lines()[:1]
            names += [f"{label_m} (right)"]
    if marks:
        for where in marks.values():
            ax.axvline(where, color="0.4", linestyle=":", linewidth=1)
        top = ax.secondary_xaxis("top")
        top.set_ticks([float(w) for w in marks.values()], labels=[str(k) for k in marks])
        top.tick_params(labelsize=8, length=3)
    if log:
        ax.set_yscale("log")
    info = (getattr(items[0][1], "meta", None) or {}).get("directions") or {}
    ax.set_xlabel(xlabel or ("interpolation coefficient" if info.get("kind") == "interpolation"
                             else "distance along the direction"))
    ax.set_ylabel(label_v)
    if title:
        ax.set_title(title)
    if legend and (len(drawn) > 1 or twin is not None):
        legend_below(ax, handles, names, ncols=2)
    return ax
