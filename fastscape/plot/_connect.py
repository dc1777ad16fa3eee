"""Mode-connectivity views: a value along a curve against the straight line, and barriers
before and after alignment. They draw the data objects of :mod:`fastscape.connect`
(``CurveProfile``, ``Barrier``), read through their public attributes only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ._common import finite, new_axes, require
from ._display import displays
from ._marks import legend_below

if TYPE_CHECKING:  # the return annotations only
    from matplotlib.axes import Axes

__all__ = ["curve_profile", "barriers"]


def _names(values: Mapping, value: str, what: str) -> list[str]:
    """``value`` itself, or every ``"<dataset>/<value>"`` (train and test) when the values are per dataset."""
    if value in values:
        return [value]
    found = [k for k in values if k.rsplit("/", 1)[-1] == value]
    if not found:
        raise ValueError(f"`value` must name one of {sorted(values)} (or their last part) for {what}; got {value!r}.")
    return found


def _label(name: str) -> str:
    return name.replace("/", " ")


@displays
def curve_profile(profile, *, value: str = "loss", ax=None, log: bool | None = None, title: str | None = None,
                  legend: bool = True) -> Axes:
    """A value along a trained curve (solid) and along the straight line between its ends (dashed).

    Parameters
    ----------
    profile : CurveProfile
        From :func:`fastscape.connect.evaluate_curve`.
    value : str
        ``"loss"`` or a metric (``"accuracy"``): with several datasets every one of them
        (``"train/loss"``, ``"test/loss"``) is drawn in its own colour; or one full name.
    ax : matplotlib Axes, optional
    log : bool, optional
        Log-scaled y axis (default: for a loss).

    Returns
    -------
    matplotlib.axes.Axes
    """
    require("matplotlib", "`fastscape.plot.curve_profile`")
    if not (hasattr(profile, "t") and hasattr(profile, "curve") and hasattr(profile, "heights")):
        raise TypeError(f"`profile` must be a CurveProfile (from fastscape.connect.evaluate_curve); got "
                        f"{type(profile).__name__}.")
    names = _names(profile.curve, value, "the profile")
    if ax is None:
        ax = new_axes((6.6, 4.6))
    t = np.asarray(profile.t, dtype=float)
    kind = {"bezier": "Bezier curve", "polychain": "polygonal chain"}.get(profile.meta.get("kind"), "curve")
    handles, labels = [], []
    for i, name in enumerate(names):
        color = f"C{i % 10}"
        h_line = profile.heights.get("line", {}).get(name)
        (h,) = ax.plot(t, finite(profile.curve[name]), color=color, linewidth=1.9)
        handles.append(h)
        labels.append(f"{_label(name)}, {kind} (barrier {profile.heights['curve'][name]:.3g})")
        if profile.line is not None:
            (h,) = ax.plot(t, finite(profile.line[name]), color=color, linewidth=1.4, linestyle="--")
            handles.append(h)
            labels.append(f"{_label(name)}, straight line (barrier {h_line:.3g})")
    if log if log is not None else value.rsplit("/", 1)[-1] == "loss":
        ax.set_yscale("log")
    ax.set_xlabel("t (0: model A, 1: model B)")
    ax.set_ylabel(_label(value))
    ax.set_xlim(0, 1)
    recal = "\nBatchNorm statistics recalibrated at each point" if profile.meta.get("recalibrated") else ""
    ax.set_title(title or f"{_label(value)} along the {kind} (solid) and the straight line (dashed){recal}",
                 fontsize=10)
    if legend:
        legend_below(ax, handles, labels, ncols=1 if len(labels) <= 2 else 2)
    return ax


@displays
def barriers(lines, *, value: str = "loss", ax=None, log: bool = False, title: str | None = None,
             legend: bool = True) -> Axes:
    """A value along straight lines (e.g. before and after alignment), each with its barrier height.

    Parameters
    ----------
    lines : Barrier, list of Barrier, or dict label -> Barrier
        From :func:`fastscape.connect.barrier`; a list is labelled by each ``meta["label"]``.
    value : str
        ``"loss"``, a metric, or a full name (``"test/accuracy"``); with several datasets,
        the first one's.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        The peak of each barrier is marked by a vertical segment from the interpolation of
        the ends up to the value.
    """
    require("matplotlib", "`fastscape.plot.barriers`")
    if hasattr(lines, "heights"):
        lines = [lines]
    items = list(lines.items()) if isinstance(lines, Mapping) else [
        ((b.meta or {}).get("label") or f"line {i + 1}", b) for i, b in enumerate(lines)
    ] if isinstance(lines, Sequence) else None
    if not items or not all(hasattr(b, "heights") and hasattr(b, "values") and hasattr(b, "argmax") for _, b in items):
        raise TypeError("`lines` must be a Barrier, a list of them or a dict label -> Barrier (from "
                        "fastscape.connect.barrier).")
    if ax is None:
        ax = new_axes((6.6, 4.6))
    handles, labels = [], []
    for i, (label, b) in enumerate(items):
        name = _names(b.values, value, "the barrier")[0]
        t, v = np.asarray(b.t, dtype=float), np.asarray(b.values[name], dtype=float)
        color = f"C{i % 10}"
        (h,) = ax.plot(t, finite(v), color=color, linewidth=1.9)
        ax.plot([0, 1], [v[0], v[-1]], color=color, linewidth=0.9, linestyle=":")
        peak = b.argmax[name]
        if np.isfinite(peak):
            j = int(np.argmin(np.abs(t - peak)))
            ax.plot([t[j], t[j]], [(1 - t[j]) * v[0] + t[j] * v[-1], v[j]], color=color, linewidth=2.5, alpha=0.5)
        handles.append(h)
        labels.append(f"{label}: barrier {b.heights[name]:.3g} at t = {peak:.2f}")
    if log:
        ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel("t (0: model A, 1: model B)")
    ax.set_ylabel(_label(value))
    ax.set_title(title or f"{_label(value)} on the straight line (dotted: interpolation of the ends)", fontsize=10)
    if legend:
        legend_below(ax, handles, labels, ncols=1)
    return ax
