"""Filled contours of a plane (matplotlib), with a path and named positions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._common import (
    axis_titles,
    check_path,
    check_points,
    check_surface,
    finite,
    new_axes,
    path_unit,
    require,
    resolve_value,
)
from ._marks import best_point, draw_best, draw_path, draw_points, legend_below, stored_path
from ._display import displays

if TYPE_CHECKING:  # the return annotations only
    from matplotlib.axes import Axes

__all__ = ["contour", "round_ticks", "tick_text", "levels_for", "tidy_colorbar"]


def levels_for(lo: float, hi: float, levels, log: bool):
    """(levels, norm, is_log): log-spaced when asked and the positive range spans > 20x."""
    from matplotlib.colors import LogNorm

    if not isinstance(levels, (int, np.integer)):
        lv = np.unique(np.asarray(levels, dtype=float))
        if lv.ndim != 1 or lv.size < 2:
            raise ValueError(f"`levels` must be an int >= 2 or at least two level values; got {levels!r}.")
        is_log = log and lv[0] > 0 and lv[-1] > 20 * lv[0]
        return lv, (LogNorm(lv[0], lv[-1]) if is_log else None), is_log
    if levels < 2:
        raise ValueError(f"`levels` must be an int >= 2 or at least two level values; got {levels!r}.")
    if log and lo > 0 and hi > 20 * lo:
        return np.geomspace(lo, hi, levels), LogNorm(vmin=lo, vmax=hi), True
    return np.linspace(lo, hi if hi > lo else lo + 1.0, levels), None, False


def round_ticks(lo: float, hi: float, is_log: bool) -> np.ndarray:
    """Round values inside [lo, hi] for colour-bar ticks and labelled contour lines, 3 to about 9 of them.

    Log: 1-2-5 per decade (only the powers of ten when that is too many; 1 to 9
    per decade when too few). Linear: matplotlib's 1-2-2.5-5 steps.
    """
    if is_log and lo > 0:
        decades = np.arange(np.floor(np.log10(lo)), np.ceil(np.log10(hi)) + 1)
        for mult in ((1, 2, 5), (1,), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
            t = np.array([m * 10.0**d for d in decades for m in mult])
            t = t[(t >= lo * (1 - 1e-9)) & (t <= hi * (1 + 1e-9))]
            if 3 <= len(t) <= 9:
                return np.array([float(f"{q:.6g}") for q in t])
        return np.geomspace(lo, hi, 5)
    from matplotlib.ticker import MaxNLocator

    t = MaxNLocator(nbins=7, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    t = t[(t >= lo - 1e-9 * abs(hi - lo)) & (t <= hi + 1e-9 * abs(hi - lo))]
    return np.array([float(f"{q:.6g}") for q in t])


#: room along x per tick label, in multiples of the label font size (a 5-character label and a gap)
TICK_ROOM = 4.5


def spaced_xticks(ax) -> None:
    """Round x ticks no closer than :data:`TICK_ROOM` font sizes, however wide the Axes ends up:
    matplotlib's default allows 3, and labels like "−2.75" then touch."""
    from matplotlib import rcParams
    from matplotlib.font_manager import FontProperties
    from matplotlib.ticker import MaxNLocator

    size = FontProperties(size=rcParams["xtick.labelsize"]).get_size_in_points()

    class _Spaced(MaxNLocator):
        def __call__(self):
            width = self.axis.axes.bbox.width * 72.0 / self.axis.axes.figure.dpi  # points
            self.set_params(nbins=max(2, int(width // (TICK_ROOM * size))))
            return super().__call__()

    ax.xaxis.set_major_locator(_Spaced(steps=[1, 2, 2.5, 5, 10]))


#: contour labels sit at least this share of the Axes away from its edges (at an edge, the stub of
#: line before "20" reads as a minus sign)
LABEL_MARGIN = 0.08


def label_spots(ax, lines, avoid=None) -> list[tuple[float, float]]:
    """Where to label each level of ``lines``: on its longest piece, at a point along it staggered from
    level to level (half-way, 0.3, 0.7, ... of its length), never within :data:`LABEL_MARGIN` of the edges
    and, where the piece allows, not within :data:`LABEL_MARGIN` of any of the (n, 2) ``avoid`` points
    (the path, named points: a label there hides under their markers)."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    away = np.empty((0, 2)) if avoid is None else (np.asarray(avoid, dtype=float).reshape(-1, 2) - [x0, y0]) / [
        x1 - x0, y1 - y0]
    spots = []
    for k, path in enumerate(lines.get_paths()):
        best = None
        starts = np.flatnonzero(path.codes == 1) if path.codes is not None else np.array([0])  # MOVETO
        for seg in np.split(path.vertices, starts[1:]):  # its pieces, unsimplified (to_polygons drops points)
            fx, fy = (seg[:, 0] - x0) / (x1 - x0), (seg[:, 1] - y0) / (y1 - y0)
            inside = (fx > LABEL_MARGIN) & (fx < 1 - LABEL_MARGIN) & (fy > LABEL_MARGIN) & (fy < 1 - LABEL_MARGIN)
            if len(seg) < 2 or not inside.any():
                continue
            arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(fx), np.diff(fy)))])
            if best is None or arc[-1] > best[0]:
                want = (0.5, 0.3, 0.7, 0.4, 0.6)[k % 5] * arc[-1]
                gap = np.hypot(fx[:, None] - away[:, 0], fy[:, None] - away[:, 1]).min(axis=1, initial=np.inf)
                clear = inside & (gap >= LABEL_MARGIN)
                cost = np.where(clear if clear.any() else inside, np.abs(arc - want), np.inf)
                best = (arc[-1], seg[int(np.argmin(cost))])
        if best is not None:
            spots.append((float(best[1][0]), float(best[1][1])))
    return spots


def tick_text(q: float) -> str:
    """A round value as printed on ticks and contour labels alike, with a true minus sign."""
    return f"{q:g}".replace("-", "\u2212")


def tidy_colorbar(cb, ticks):
    """Ticks at ``ticks`` (the labelled contour lines' values), printed as the lines' labels are."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    axis = cb.ax.yaxis if cb.orientation == "vertical" else cb.ax.xaxis
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda q, _pos: tick_text(q)))


@displays
def contour(surface, *, value: str = "loss", path=None, points=None, ax=None, levels=30, log: bool = True,
            filled: bool = True, labels: bool = True, axis_labels=None, explained_variance=None, title=None,
            cmap: str = "viridis", path_cmap: str = "plasma", path_label: str | None = None,
            colorbar: bool = True, legend: bool = True, minimum: bool = True, norm=None) -> Axes:
    """Contours of a plane, with a path coloured by snapshot and named positions.

    Parameters
    ----------
    surface : Surface along two directions
        Drawn with ``coords[0]`` along x (matplotlib gets the array transposed).
    value : str
        What to draw: ``"loss"`` or a metric of the surface (``"accuracy"``,
        ``"test/accuracy"``); it names the colour bar, and only a loss gets log levels.
    path : array of shape (T, 2), None or False
        Plane coordinates of a trajectory (e.g. from :func:`fastscape.project`):
        a line with markers coloured by snapshot, start (circle) and end (star).
        None (default): the path stored with the surface (``surface.path``),
        if any; False: no path.
    points : dict label -> (x, y), or array of shape (n, 2), optional
        Named positions (e.g. the models of :func:`fastscape.interpolation_plane`;
        rows of an array are labelled "A", "B", ...): each drawn with its own
        marker and label.
    ax : matplotlib Axes, optional
        Drawn into when given; otherwise a new figure is made (no pyplot).
    levels : int or 1-D array
        Number of levels (log-spaced when ``log``, the value is a loss, and it
        spans more than a factor 20) or the level values themselves.
    filled : bool
        Filled contours with a few labelled black lines; False draws coloured lines only.
    labels : bool
        Label the lines with their value.
    axis_labels, explained_variance :
        Axis titles; PCA explained-variance ratios (given, or read from
        ``surface.meta["directions"]``) are appended, e.g. "PC1 (87.3% of variance)".
    path_label : str, optional
        Title of the path's colour bar: what the colour counts. Default: the
        unit the path carries ("epoch" for :func:`fastscape.project` of a
        :func:`fastscape.train` trajectory, whose colours are then its epoch
        numbers), else "recorded snapshot". A label of your own numbers the
        points 0, 1, 2, ... unless it is the path's own unit.
    legend : bool
        Put a legend for the path and points under the Axes.
    minimum : bool
        Mark the grid's best point (lowest loss, highest accuracy) with a cross;
        the legend gives its value and says when it lies on the grid's edge.
    norm : matplotlib Normalize, optional
        A colour scale shared with other panels (:func:`contour_grid`); default:
        this surface's own range.

    Returns
    -------
    matplotlib.axes.Axes
        NaN/inf regions are left blank (masked).
    """
    require("matplotlib", "`fastscape.plot.contour`")
    check_surface(surface, 2, "contour")
    v = resolve_value(surface, value)
    path = stored_path(surface, path)
    path_label, counts = path_unit(path, path_label)
    path = check_path(path)
    pts = check_points(points)
    if ax is None:
        ax = new_axes((6.4, 5.6))
    z = finite(v.array).T  # matplotlib wants (y, x)
    xl, yl = axis_titles(surface, axis_labels, explained_variance)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    if title:
        ax.set_title(title)
    vals = z[np.isfinite(z)]
    if vals.size == 0:
        ax.text(0.5, 0.5, f"no finite {v.label} on this grid", transform=ax.transAxes, ha="center")
        return ax
    given = norm
    lo, hi = (float(vals.min()), float(vals.max())) if given is None else (float(given.vmin), float(given.vmax))
    lv, norm, is_log = levels_for(lo, hi, levels, log and v.is_loss)
    norm = given if given is not None else norm
    if norm is None and v.limits is not None:  # a fixed colour range (accuracy: 0 to 1)
        from matplotlib.colors import Normalize

        norm = Normalize(*v.limits)
    X, Y = surface.coords
    zm = np.ma.masked_invalid(z)
    ticks = round_ticks(float(lv[0]), float(lv[-1]), is_log)
    cbar_label = v.label + (" (log scale)" if is_log else "")
    if filled:
        cs = ax.contourf(X, Y, zm, levels=lv, cmap=cmap, norm=norm, extend="neither")
        lines = ax.contour(X, Y, zm, levels=ticks, colors="k", linewidths=0.5)
    else:
        cs = lines = ax.contour(X, Y, zm, levels=lv, cmap=cmap, norm=norm, linewidths=0.9)
    ax.set_xlim(X[0], X[-1])
    ax.set_ylim(Y[0], Y[-1])
    along = None if path is None else np.concatenate([path[:1], *(  # the path's segments too, not only its dots
        a + np.linspace(0, 1, 9)[1:, None] * (b - a) for a, b in zip(path[:-1], path[1:]))])
    best_xy = best_point(surface, v) if minimum else None  # its cross is drawn last, over any label
    marks = [q for q in (along, None if pts is None else np.array([c for _, c in pts]),
                         None if best_xy is None else np.array([best_xy["xy"]])) if q is not None]
    spots = label_spots(ax, lines, np.concatenate(marks) if marks else None) if labels and len(lines.levels) else []
    if spots:
        ax.clabel(lines, inline=True, fontsize=7, fmt=tick_text, inline_spacing=2, manual=spots)
    spaced_xticks(ax)
    if path is not None:  # its colour bar first: constrained layout puts the last one next to the Axes
        draw_path(ax, path, cmap=path_cmap, colorbar=colorbar, path_label=path_label, counts=counts)
    if colorbar:
        tidy_colorbar(ax.figure.colorbar(cs, ax=ax, label=cbar_label), ticks)
    if pts is not None:
        draw_points(ax, pts)
    best = draw_best(ax, surface, v) if minimum else None
    if legend and (path is not None or pts is not None or best is not None):
        legend_below(ax)
    return ax
