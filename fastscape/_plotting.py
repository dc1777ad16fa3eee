"""Figures of a plane of the landscape: the plotly 3D surface and the matplotlib contour.

Nothing here shows a figure or switches matplotlib's backend: figures are made
with ``matplotlib.figure.Figure`` directly (no pyplot state), so this works on
headless servers whatever backend the user has chosen. Writing them to files is
:func:`fastscape.save_figure` (in ``_save.py``, re-exported here).
"""

from __future__ import annotations

import numpy as np

from ._plot_common import auto_zmax, axis_titles, check_path, check_surface, finite, new_axes
from ._save import find_chrome, save_figure

__all__ = ["plot_surface3d", "plot_contour", "save_figure", "path_heights", "find_chrome"]


def path_heights(surface, path) -> np.ndarray:
    """Loss at plane coordinates ``path`` (T, 2), bilinearly interpolated from the grid.

    Points outside the grid take the value at its nearest edge; a NaN/inf corner
    makes the height NaN (drawn as a gap).
    """
    check_surface(surface, 2, "path_heights")
    path = check_path(path)
    x, y = surface.coords
    z = finite(surface.loss)

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


def _log10(v: np.ndarray, floor: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log10(np.maximum(v, floor))


def _height_transform(z: np.ndarray, log: bool, zmax):
    """(transform, clip) for heights: clip at ``zmax`` ("auto": :func:`auto_zmax`), then log10."""
    if isinstance(zmax, str):
        if zmax != "auto":
            raise ValueError(f"`zmax` must be a number, None or 'auto'; got {zmax!r}.")
        zmax = auto_zmax(z)
    positive = z[np.isfinite(z) & (z > 0)]
    floor = float(positive.min()) if positive.size else 1e-12

    def transform(v):
        v = finite(v)
        if zmax is not None:
            v = np.minimum(v, zmax)  # NaN stays NaN: a gap
        return _log10(v, floor) if log else v

    return transform, zmax


def plot_surface3d(surface, *, path=None, path_loss=None, log: bool = False, zmax="auto",
                   title: str | None = "Loss surface", axis_labels=None, explained_variance=None,
                   colorscale: str = "Viridis", floor_contours: bool = True):
    """An interactive 3D view of a plane's loss, with the optimiser's path on it.

    Parameters
    ----------
    surface : Surface along two directions
        ``surface.loss[i, j]`` is drawn at ``(coords[0][i], coords[1][j])``
        (the trace's ``z`` is ``loss.T``, plotly's (y, x) layout).
    path : array of shape (T, 2), optional
        Plane coordinates of the path (e.g. from ``fastscape.project``), drawn as
        a 3D line with markers coloured by step; start and end are marked.
    path_loss : array of shape (T,), optional
        Loss at each path point; default: interpolated from the surface so the
        path lies on it (:func:`path_heights`).
    log : bool
        Draw log10 of the loss (surfaces spanning decades).
    zmax : float, None or "auto"
        Heights above ``zmax`` are drawn flat at ``zmax``; "auto" clips only
        huge peaks (see :func:`fastscape._plot_common.auto_zmax`); None never
        clips. NaN/inf points are gaps in the surface whatever this is.
    axis_labels : pair of str, optional
        Default: the parameter names of axis directions, else "direction 1/2".
    explained_variance : pair of float, optional
        PCA explained-variance ratios shown in the axis titles (default: read
        from ``surface.meta["directions"]["explained_variance_ratio"]`` if there).
    floor_contours : bool
        Project the contour lines onto the floor of the box.

    Returns
    -------
    plotly.graph_objects.Figure
        Traces: ``"loss"`` (surface), then ``"path"``, ``"start"``, ``"end"`` when a path is given.
    """
    import plotly.graph_objects as go

    check_surface(surface, 2, "plot_surface3d")
    path = check_path(path)
    raw = finite(surface.loss)
    transform, clip = _height_transform(raw, log, zmax)
    zt = transform(raw)
    xl, yl = axis_titles(surface, axis_labels, explained_variance)
    zlabel = "log10 loss" if log else "loss"
    if clip is not None:
        zlabel += f" (clipped at {clip:.3g})"
    fig = go.Figure()
    fig.add_trace(go.Surface(
        x=surface.coords[0], y=surface.coords[1], z=zt.T, colorscale=colorscale, name="loss",
        colorbar=dict(title=dict(text=zlabel), x=1.0, len=0.75),
        contours=dict(z=dict(show=floor_contours, project=dict(z=True), usecolormap=True,
                             highlightcolor="white")),
        hovertemplate="%{x:.3g}, %{y:.3g}<br>" + zlabel + " %{z:.4g}<extra></extra>",
    ))
    if path is not None:
        if path_loss is None:
            h = path_heights(surface, path)
        else:
            h = np.asarray(path_loss, dtype=float).reshape(-1)
            if h.shape[0] != path.shape[0]:
                raise ValueError(
                    f"`path_loss` must hold one loss per path point ({path.shape[0]}); got {h.shape[0]}."
                )
        ht = transform(h)
        steps = np.arange(len(path))
        fig.add_trace(go.Scatter3d(
            x=path[:, 0], y=path[:, 1], z=ht, mode="lines+markers", name="path",
            line=dict(color="crimson", width=5),
            marker=dict(size=3.5, color=steps, colorscale="Plasma", showscale=True,
                        colorbar=dict(title=dict(text="step"), x=1.12, len=0.5)),
            customdata=steps, hovertemplate="step %{customdata}<br>" + zlabel + " %{z:.4g}<extra></extra>",
        ))
        for idx, label, color, symbol in ((0, "start", "white", "circle"), (-1, "end", "black", "diamond")):
            fig.add_trace(go.Scatter3d(
                x=[path[idx, 0]], y=[path[idx, 1]], z=[ht[idx]], mode="markers+text",
                text=[label], textposition="top center", name=label,
                marker=dict(size=7, color=color, symbol=symbol, line=dict(width=2, color="black")),
            ))
    fig.update_layout(
        title=dict(text=title) if title else None, width=900, height=750, template="plotly_white",
        margin=dict(l=10, r=10, t=50 if title else 10, b=10),
        legend=dict(x=0.01, y=0.98),
        scene=dict(xaxis_title=xl, yaxis_title=yl, zaxis_title=zlabel,
                   aspectmode="manual", aspectratio=dict(x=1, y=1, z=0.6)),
    )
    return fig


def _levels(lo: float, hi: float, levels, log: bool):
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


def plot_contour(surface, *, path=None, ax=None, levels=30, log: bool = True, filled: bool = True,
                 labels: bool = True, axis_labels=None, explained_variance=None, title=None,
                 cmap: str = "viridis", path_cmap: str = "plasma", colorbar: bool = True):
    """Contours of a plane's loss, with the path coloured by step.

    Parameters
    ----------
    surface : Surface along two directions
        Drawn with ``coords[0]`` along x (matplotlib gets ``loss.T``).
    path : array of shape (T, 2), optional
        Plane coordinates, drawn as a line with markers coloured by step and
        start (circle) / end (star) marked.
    ax : matplotlib Axes, optional
        Drawn into when given; otherwise a new ``matplotlib.figure.Figure`` is
        made (no pyplot).
    levels : int or 1-D array
        Number of levels (log-spaced when ``log`` and the positive loss spans
        more than a factor 20) or the level values themselves.
    filled : bool
        Filled contours with a few labelled black lines; False draws coloured lines only.
    labels : bool
        Label the lines with their loss.
    axis_labels, explained_variance :
        As in :func:`plot_surface3d`: PCA explained-variance ratios are
        appended to the axis labels, e.g. "PC1 (87.3% of variance)".

    Returns
    -------
    matplotlib.axes.Axes
        NaN/inf regions are left blank (masked).
    """
    check_surface(surface, 2, "plot_contour")
    path = check_path(path)
    if ax is None:
        ax = new_axes((6.4, 5.2))
    z = finite(surface.loss).T  # matplotlib wants (y, x)
    xl, yl = axis_titles(surface, axis_labels, explained_variance)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    if title:
        ax.set_title(title)
    vals = z[np.isfinite(z)]
    if vals.size == 0:
        ax.text(0.5, 0.5, "no finite loss on this grid", transform=ax.transAxes, ha="center")
        return ax
    lv, norm, is_log = _levels(float(vals.min()), float(vals.max()), levels, log)
    X, Y = surface.coords
    zm = np.ma.masked_invalid(z)
    fmt = (lambda v: f"{v:.2g}") if is_log else (lambda v: f"{v:.3g}")
    if filled:
        cs = ax.contourf(X, Y, zm, levels=lv, cmap=cmap, norm=norm, extend="neither")
        if colorbar:
            cb = ax.figure.colorbar(cs, ax=ax, label="loss" + (" (log scale)" if is_log else ""))
            _tidy_colorbar(cb, lv)
        lines = ax.contour(X, Y, zm, levels=lv[:: max(1, len(lv) // 8)], colors="k", linewidths=0.5)
    else:
        lines = ax.contour(X, Y, zm, levels=lv, cmap=cmap, norm=norm, linewidths=0.9)
        if colorbar:
            cb = ax.figure.colorbar(lines, ax=ax, label="loss" + (" (log scale)" if is_log else ""))
            _tidy_colorbar(cb, lv)
    if labels and len(lines.levels):
        ax.clabel(lines, inline=True, fontsize=7, fmt=fmt)
    if path is not None:
        draw_path(ax, path, cmap=path_cmap, colorbar=colorbar)
    return ax


def _tidy_colorbar(cb, lv):
    """About eight ticks at level values, printed with 3 significant digits."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    cb.ax.yaxis.set_major_locator(FixedLocator(lv[:: max(1, len(lv) // 8)]))
    cb.ax.yaxis.set_minor_locator(NullLocator())
    cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}"))


def draw_path(ax, path, *, cmap="plasma", colorbar=True, label="path"):
    """Draw a (T, 2) path on a 2-D Axes: line, markers coloured by step, start and end."""
    steps = np.arange(len(path))
    ax.plot(path[:, 0], path[:, 1], color="crimson", linewidth=1.2, zorder=3, label=label)
    sc = ax.scatter(path[:, 0], path[:, 1], c=steps, cmap=cmap, s=16, zorder=4, edgecolors="none")
    if colorbar and len(path) > 1:
        ax.figure.colorbar(sc, ax=ax, label="step")
    ax.scatter(*path[0], marker="o", s=70, facecolors="white", edgecolors="k", zorder=5, label="start")
    ax.scatter(*path[-1], marker="*", s=150, color="k", zorder=5, label="end")
    ax.legend(loc="upper right", fontsize=8)
    return sc
