"""Gradient views (source article 004): what the gradient says, and where a step lands.

Both draw numbers computed by :mod:`fastscape._views`:
:func:`fastscape.cross_sections` and :func:`fastscape.lr_steps`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._common import finite, fmt, new_figure, require
from ._contour import contour
from ._marks import legend_below
from ._display import displays

if TYPE_CHECKING:  # the return annotations only
    from matplotlib.axes import Axes

__all__ = ["cross_sections", "lr_steps", "clip_segment"]


@displays
def cross_sections(sections, *, ax=None,
                   title: str | None = "Loss along each parameter, with the gradient") -> np.ndarray:
    """One panel per parameter entry: the loss as it moves, and the tangent given by the gradient.

    Each panel shows the loss curve through the current value (a dot) and the
    tangent ``loss + g * (theta - theta_now)`` whose slope ``g`` is the
    autograd partial derivative, labelled with its value. A negative slope
    means increasing that parameter lowers the loss.

    Parameters
    ----------
    sections : CrossSections
        From :func:`fastscape.cross_sections`.
    ax : sequence of matplotlib Axes, optional
        One per entry; default: a new figure with up to three panels a row.

    Returns
    -------
    ndarray of matplotlib Axes, shape (k,)
        Axes ``i`` holds the curve (``"loss"``) and the tangent (``"gradient"``)
        of ``sections.names[i]``.
    """
    require("matplotlib", "`fastscape.plot.cross_sections`")
    for attr in ("names", "at", "gradient", "loss", "offsets", "losses"):
        if not hasattr(sections, attr):
            raise TypeError(f"`sections` must be the result of fastscape.cross_sections; got "
                            f"{type(sections).__name__}.")
    k = len(sections.names)
    if ax is None:
        cols = min(k, 3)
        rows = -(-k // cols)
        fig = new_figure((4.2 * cols, 3.5 * rows + 0.4))
        grid = fig.subplots(rows, cols, squeeze=False).ravel()
        for extra in grid[k:]:
            extra.set_visible(False)
        axes = grid[:k]
    else:
        axes = np.atleast_1d(np.asarray(ax, dtype=object)).ravel()
        if len(axes) != k:
            raise ValueError(f"`ax` must hold one Axes per entry ({k}); got {len(axes)}.")
        fig = axes[0].figure
    span = float(np.ptp(sections.offsets)) / 2 or 1.0
    for a, name, now, slope, curve in zip(axes, sections.names, sections.at, sections.gradient, sections.losses):
        theta = now + np.asarray(sections.offsets, dtype=float)
        a.plot(theta, finite(curve), color="C0", linewidth=2, label="loss")
        t = np.array([now - span / 2, now + span / 2])
        a.plot(t, sections.loss + slope * (t - now), color="crimson", linewidth=1.5, label="gradient")
        a.scatter([now], [sections.loss], color="crimson", zorder=3)
        a.annotate(f"gradient = {fmt(slope)}", (now, sections.loss), textcoords="offset points", xytext=(6, 8),
                   fontsize=8, color="crimson")
        a.set_xlabel(name)
        a.set_ylabel("loss")
    handles, labels = axes[0].get_legend_handles_labels()
    if ax is None:
        fig.legend(handles, ["loss as this entry moves", "tangent: slope = partial derivative"],
                   loc="outside lower center", ncols=2, fontsize=8, frameon=False)
        if title:
            fig.suptitle(title)
    else:
        legend_below(axes[0], handles, labels)
    return np.asarray(axes, dtype=object)


def clip_segment(p0, p1, lo, hi):
    """The part of segment p0 -> p1 inside the box [lo, hi] (Liang-Barsky), or None when it misses."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    t0, t1 = 0.0, 1.0
    for p, q in ((-d, p0 - lo), (d, hi - p0)):
        for pi, qi in zip(p, q):
            if pi == 0:
                if qi < 0:
                    return None
                continue
            r = qi / pi
            if pi < 0:
                t0 = max(t0, r)
            else:
                t1 = min(t1, r)
    if t0 > t1:
        return None
    return p0 + t0 * d, p0 + t1 * d


#: half the gap between neighbouring arrows where they leave "now", as a share of the Axes' width:
#: every alternative starts inside the "now" marker, side by side, so none reads as the next of another
LANE = 0.011


def _lanes(start, ends, lo, hi) -> np.ndarray:
    """Where each step's arrow leaves "now": side by side across the (shared) step direction, in data units.

    The steps all run along the gradient, so drawn from one point they lie on one line and read as a
    chain; each gets its own tail, offset across that line by ``LANE`` of the Axes per neighbour.
    """
    scale = np.where(hi > lo, hi - lo, 1.0)
    d = (ends - start) / scale  # in Axes fractions
    longest = d[np.argmax(np.hypot(*d.T))] if len(d) else np.zeros(2)
    norm = float(np.hypot(*longest))
    across = np.array([-longest[1], longest[0]]) / norm if norm > 0 else np.array([0.0, 1.0])
    k = np.arange(len(ends)) - (len(ends) - 1) / 2
    return start + (2 * LANE * k[:, None] * across[None, :]) * scale


@displays
def lr_steps(steps, surface, *, ax=None, title: str | None = "Alternatives from now: one gradient step per learning rate",
             **contour_kw) -> Axes:
    """The step each learning rate would take from the model's current point, drawn on the plane's contours.

    Every learning rate is an alternative taken from the same point ("now"),
    not a chain of steps: each arrow leaves the "now" marker in its own lane
    (side by side across the gradient's direction, which all the steps share)
    and ends exactly at its landing point, labelled with its learning rate.

    Parameters
    ----------
    steps : LRSteps
        From :func:`fastscape.lr_steps` (same directions and origin as ``surface``).
    surface : Surface along the same two directions
        The view is framed on its grid. A step that lands outside the grid is
        drawn dashed to the grid's edge, ending in an open circle, its legend
        entry giving where it lands; compute the surface over ``steps.span()``
        to see every landing point.
    ax : matplotlib Axes, optional
    contour_kw :
        Passed to :func:`contour` (e.g. ``axis_labels``, ``levels``).

    Returns
    -------
    matplotlib.axes.Axes
        One arrow per learning rate (an annotation whose ``xy`` is the landing
        point, clipped to the grid, and ``xyann`` its tail beside "now"), one
        marker per landing labelled ``"lr=...: loss ..."``; the legend sits
        under the Axes, clear of the landing points.
    """
    require("matplotlib", "`fastscape.plot.lr_steps`")
    from matplotlib import patheffects

    for attr in ("lrs", "start", "ends", "loss", "losses"):
        if not hasattr(steps, attr):
            raise TypeError(f"`steps` must be the result of fastscape.lr_steps; got {type(steps).__name__}.")
    contour_kw.setdefault("legend", False)
    ax = contour(surface, ax=ax, title=title, **contour_kw)
    lo = np.array([surface.coords[0][0], surface.coords[1][0]], dtype=float)
    hi = np.array([surface.coords[0][-1], surface.coords[1][-1]], dtype=float)
    start = np.asarray(steps.start, dtype=float)
    ends = np.asarray(steps.ends, float)
    tails = _lanes(start, ends, lo, hi)
    ax.scatter(*np.clip(start, lo, hi), s=220, color="white", edgecolors="k", linewidths=1.5, zorder=6,
               label=f"now: loss {fmt(steps.loss)} (every step starts here)")
    halo = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    # shorter arrows on top of longer ones
    rank = np.argsort(np.argsort(-np.hypot(*(ends - start).T)))
    for i, (lr, end, loss) in enumerate(zip(steps.lrs, ends, steps.losses)):
        color = f"C{(i + 1) % 10}"
        z = 6.5 + 0.01 * rank[i]
        inside = bool(np.all(end >= lo) and np.all(end <= hi))
        label = f"lr={lr:g}: loss {fmt(loss)}"
        seg = clip_segment(start, end, lo, hi)  # the step itself, on the grid
        if seg is None:  # neither the start nor the step is on this grid
            ax.scatter([], [], marker=">", color=color, label=label + f" (off the grid, at {fmt(end[0])}, {fmt(end[1])})")
            continue
        a, b = seg[0] + (tails[i] - start), seg[1]  # its arrow leaves from its own lane, ends where it lands
        ax.annotate("", xy=b, xytext=a, zorder=z, annotation_clip=False,
                    arrowprops=dict(arrowstyle="-|>", color=color, linewidth=2.2, shrinkA=0, shrinkB=0,
                                    mutation_scale=14, linestyle="-" if inside else (0, (4, 2)),
                                    path_effects=[patheffects.Stroke(linewidth=3.6, foreground="k"),
                                                  patheffects.Normal()]))
        if inside:
            ax.scatter(*b, s=55, color=color, edgecolors="k", linewidths=0.9, zorder=7.5, label=label)
        else:  # a dashed arrow to the grid's edge, ending in an open circle: the step goes on from there
            ax.scatter(*b, s=70, facecolors="white", edgecolors=color, linewidths=2.0, zorder=7.5, clip_on=False,
                       label=label + f"; lands off the grid at ({fmt(end[0])}, {fmt(end[1])})")
        ax.annotate(f"lr={lr:g}", b, textcoords="offset points", xytext=(8, -4 if i % 2 else 6), fontsize=8,
                    fontweight="bold", color=color, path_effects=halo, zorder=8, annotation_clip=False)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    legend_below(ax, ncols=2)
    return ax
