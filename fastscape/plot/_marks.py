"""The marks other views draw on a plane: the path, named positions, the heights of points
on the surface, and a legend under the Axes."""

from __future__ import annotations

import numpy as np

from ._common import PATH_LABEL, check_path, check_surface, finite, fmt, resolve_value

__all__ = ["stored_path", "path_heights", "legend_below", "draw_path", "draw_points", "POINT_COLORS", "POINT_MARKERS",
           "best_point", "best_label", "draw_best"]

#: colours of named positions: dark, saturated, distinct from viridis and plasma.
POINT_COLORS = ("#e41a1c", "#ff7f00", "#f781bf", "#a65628", "#984ea3", "#ffffff")
POINT_MARKERS = ("D", "s", "^", "v", "P", "X")


def stored_path(surface, path):
    """``path`` as given; None: the path stored with the surface (``surface.path``), if any; False: no path."""
    if path is False:
        return None
    if path is None:
        return getattr(surface, "path", None)
    return path


def path_heights(surface, path, value: str = "loss") -> np.ndarray:
    """``value`` at plane coordinates ``path`` (T, 2), bilinearly interpolated from the grid.

    Points outside the grid take the value at its nearest edge; a NaN/inf corner
    makes the height NaN (drawn as a gap).
    """
    check_surface(surface, 2, "path_heights")
    path = check_path(path)
    x, y = surface.coords
    z = finite(resolve_value(surface, value).array)

    def locate(c, v):
        i = np.clip(np.searchsorted(c, v) - 1, 0, max(len(c) - 2, 0))
        if len(c) == 1:
            return i, np.zeros_like(v)
        t = (v - c[i]) / (c[i + 1] - c[i])
        return i, np.clip(t, 0.0, 1.0)

    i, tx = locate(x, path[:, 0])
    j, ty = locate(y, path[:, 1])
    i1 = np.minimum(i + 1, len(x) - 1)
    j1 = np.minimum(j + 1, len(y) - 1)
    return ((1 - tx) * (1 - ty) * z[i, j] + tx * (1 - ty) * z[i1, j]
            + (1 - tx) * ty * z[i, j1] + tx * ty * z[i1, j1])


#: the characters of legend labels one row of a legend under a view may hold
LEGEND_ROW_CHARS = 90


def legend_below(ax, handles=None, labels=None, *, ncols=None, fontsize=8):
    """A legend under the Axes, outside the data area, so it never covers what is drawn."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    n = len(handles) if ncols is None else ncols
    # long labels take fewer columns, so a row stays about as wide as a figure (~90 characters)
    n = max(1, min(n, 4, LEGEND_ROW_CHARS // max(len(str(lab)) for lab in labels)))
    return ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=n,
                     fontsize=fontsize, frameon=False)


def draw_path(ax, path, *, cmap="plasma", colorbar=True, label="path", path_label=PATH_LABEL, counts=None):
    """A (T, 2) path on 2-D Axes: a line, markers coloured by ``counts``, start and end marked.

    ``counts`` (T,): each point's epoch or step (:func:`path_unit`); default the
    snapshot number 0, 1, 2, ... The colour bar says what the colour counts
    (``path_label``).
    """
    steps = np.arange(len(path)) if counts is None else np.asarray(counts)
    ax.plot(path[:, 0], path[:, 1], color="crimson", linewidth=1.2, zorder=3, label=label)
    sc = ax.scatter(path[:, 0], path[:, 1], c=steps, cmap=cmap, s=16, zorder=4, edgecolors="none")
    if colorbar and len(path) > 1:
        from matplotlib.ticker import MaxNLocator

        cb = ax.figure.colorbar(sc, ax=ax, label=path_label)
        cb.ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: whole numbers
    ax.scatter(*path[0], marker="o", s=70, facecolors="white", edgecolors="k", zorder=5, label="start")
    ax.scatter(*path[-1], marker="*", s=150, color="k", zorder=5, label="end")
    return sc


def draw_points(ax, points, *, z=None):
    """Named positions: each its own marker and colour, labelled beside it (no path, no colour bar)."""
    from matplotlib import patheffects

    halo = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    for i, (name, c) in enumerate(points):
        color, marker = POINT_COLORS[i % len(POINT_COLORS)], POINT_MARKERS[i % len(POINT_MARKERS)]
        if z is None:
            ax.scatter(*c, marker=marker, s=90, color=color, edgecolors="k", linewidths=1.2, zorder=6, label=name)
            ax.annotate(name, c, textcoords="offset points", xytext=(7, 7), fontsize=9, fontweight="bold",
                        color="k", path_effects=halo, zorder=7)
        else:
            ax.scatter([c[0]], [c[1]], [z[i]], marker=marker, s=70, color=color, edgecolors="k", depthshade=False,
                       label=name)
            ax.text(c[0], c[1], z[i], f"  {name}", fontsize=9, fontweight="bold", path_effects=halo, zorder=10)


def best_point(surface, v) -> dict | None:
    """The grid's best point of value ``v`` (lowest loss, highest accuracy: ``v.best``), or None.

    Returns a dict: ``xy`` (its plane coordinates), ``value``, ``index`` (i, j)
    and ``edge`` (True when it lies on the grid's border, so the true optimum
    may lie outside the frame).
    """
    if v.best not in ("min", "max"):
        return None
    z = finite(v.array)
    ok = np.isfinite(z)
    if not ok.any():
        return None
    flat = np.where(ok, z, np.inf if v.best == "min" else -np.inf)
    i, j = np.unravel_index(int(np.argmin(flat) if v.best == "min" else np.argmax(flat)), z.shape)
    x, y = surface.coords
    edge = bool(i in (0, len(x) - 1) or j in (0, len(y) - 1))
    return dict(xy=(float(x[i]), float(y[j])), value=float(z[i, j]), index=(int(i), int(j)), edge=edge)


def best_label(best: dict, v) -> str:
    """Legend text of the best point: "grid min 0.0123", with "(on the grid's edge)" where it is."""
    text = f"grid {v.best} {v.label} {fmt(best['value'])}"
    return text + (" (on the grid's edge)" if best["edge"] else "")


def draw_best(ax, surface, v):
    """The grid's best point as a white-edged cross with its value in the legend; returns the dict or None."""
    best = best_point(surface, v)
    if best is not None:
        ax.scatter(*best["xy"], marker="X", s=110, color="#00e5ff", edgecolors="k", linewidths=1.2, zorder=8,
                   label=best_label(best, v))
    return best
