"""Figures of surfaces and paths: plotly 3D, matplotlib contours, and saving either.

Nothing here shows a figure or switches matplotlib's backend: figures are made
with ``matplotlib.figure.Figure`` directly (no pyplot state), so this works on
headless servers whatever backend the user has chosen.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

__all__ = ["plot_surface3d", "plot_contour", "save_figure", "path_heights", "find_chrome"]


def _finite(z: np.ndarray) -> np.ndarray:
    """Float copy with inf turned into NaN (drawn as gaps)."""
    z = np.array(z, dtype=np.float64)
    z[~np.isfinite(z)] = np.nan
    return z


def _check_plane(surface, what):
    if surface.ndim != 2:
        raise ValueError(f"`{what}` needs a 2-D surface (two directions); got {surface.ndim}-D.")


def _check_path(path):
    if path is None:
        return None
    path = np.asarray(path, dtype=np.float64)
    if path.ndim != 2 or path.shape[1] != 2:
        raise ValueError(f"`path` must have shape (T, 2) of plane coordinates; got {path.shape}.")
    return path


def path_heights(surface, path) -> np.ndarray:
    """Loss at plane coordinates ``path`` (T, 2), bilinearly interpolated from the grid."""
    path = _check_path(path)
    x, y = surface.coords
    z = surface.loss

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


def plot_surface3d(surface, *, path=None, path_loss=None, log: bool = False, zmax=None,
                   title: str = "Loss surface", axis_labels=None, colorscale: str = "Viridis"):
    """An interactive 3D view of a plane's loss, with the optimiser's path on it.

    Parameters
    ----------
    surface : Surface with two directions
    path : array of shape (T, 2), optional
        Plane coordinates of the path (e.g. from :func:`project`).
    path_loss : array of shape (T,), optional
        Loss at each path point; default: interpolated from the surface so the
        path lies on it.
    log : bool
        Plot log10 of the loss (for surfaces with huge peaks).
    zmax : float, optional
        Clip the loss above this value (drawn flat at ``zmax``).

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go

    _check_plane(surface, "plot_surface3d")
    path = _check_path(path)
    z = _finite(surface.loss)
    if zmax is not None:
        z = np.minimum(z, zmax)
    transform = (lambda v: np.log10(np.maximum(v, 1e-12))) if log else (lambda v: v)
    zt = transform(z)
    xl, yl = axis_labels or ("direction 1", "direction 2")
    zlabel = "log10 loss" if log else "loss"
    fig = go.Figure()
    fig.add_trace(go.Surface(
        x=surface.coords[0], y=surface.coords[1], z=zt.T, colorscale=colorscale, name="loss",
        colorbar=dict(title=zlabel),
        contours=dict(z=dict(show=True, project=dict(z=True), usecolormap=True, highlightcolor="white")),
    ))
    if path is not None:
        h = path_heights(surface, path) if path_loss is None else np.asarray(path_loss, float)
        h = _finite(h)
        if zmax is not None:
            h = np.minimum(h, zmax)
        ht = transform(h)
        steps = np.arange(len(path))
        fig.add_trace(go.Scatter3d(
            x=path[:, 0], y=path[:, 1], z=ht, mode="lines+markers", name="path",
            line=dict(color="red", width=4),
            marker=dict(size=3, color=steps, colorscale="Plasma", showscale=False),
        ))
        for idx, label, color in ((0, "start", "white"), (-1, "end", "black")):
            fig.add_trace(go.Scatter3d(
                x=[path[idx, 0]], y=[path[idx, 1]], z=[ht[idx]], mode="markers+text",
                text=[label], name=label, marker=dict(size=6, color=color, line=dict(width=1)),
            ))
    fig.update_layout(
        title=title, width=900, height=800, template="plotly_white",
        scene=dict(xaxis_title=xl, yaxis_title=yl, zaxis_title=zlabel,
                   aspectmode="manual", aspectratio=dict(x=1, y=1, z=0.6)),
    )
    return fig


def plot_contour(surface, *, path=None, ax=None, levels: int = 30, log: bool = True,
                 filled: bool = True, labels: bool = True, axis_labels=None, title=None,
                 cmap: str = "viridis"):
    """Contours of a plane's loss with the path coloured by step.

    Parameters
    ----------
    surface : Surface with two directions
    path : array of shape (T, 2), optional
    ax : matplotlib Axes, optional
        Drawn into when given; otherwise a new ``Figure`` is made (no pyplot).
    levels : int
        Number of contour levels, log-spaced when ``log`` and the loss is positive.
    filled, labels : filled contours; inline level labels.

    Returns
    -------
    matplotlib.axes.Axes
    """
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    _check_plane(surface, "plot_contour")
    path = _check_path(path)
    if ax is None:
        ax = Figure(figsize=(6.4, 5.4), layout="constrained").add_subplot()
    z = _finite(surface.loss).T  # matplotlib wants (y, x)
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        ax.text(0.5, 0.5, "no finite loss on this grid", transform=ax.transAxes, ha="center")
        return ax
    lo, hi = float(finite.min()), float(finite.max())
    use_log = log and lo > 0 and hi > 20 * lo  # log levels only where the range spans decades
    if use_log:
        lv = np.geomspace(lo, hi, levels)
        norm = LogNorm(vmin=lo, vmax=hi)
    else:
        lv = np.linspace(lo, hi if hi > lo else lo + 1.0, levels)
        norm = None
    X, Y = surface.coords
    zm = np.ma.masked_invalid(z)
    if filled:
        cs = ax.contourf(X, Y, zm, levels=lv, cmap=cmap, norm=norm)
        ax.figure.colorbar(cs, ax=ax, label="loss")
        lines = ax.contour(X, Y, zm, levels=lv[:: max(1, levels // 10)], colors="k", linewidths=0.4)
    else:
        lines = ax.contour(X, Y, zm, levels=lv, cmap=cmap, norm=norm, linewidths=0.8)
    if labels:
        ax.clabel(lines, inline=True, fontsize=7, fmt="%.3g")
    if path is not None:
        steps = np.arange(len(path))
        ax.plot(path[:, 0], path[:, 1], color="red", linewidth=1.0, zorder=3)
        sc = ax.scatter(path[:, 0], path[:, 1], c=steps, cmap="plasma", s=14, zorder=4,
                        edgecolors="none")
        ax.figure.colorbar(sc, ax=ax, label="step")
        ax.scatter(*path[0], marker="o", s=60, facecolors="none", edgecolors="k", zorder=5, label="start")
        ax.scatter(*path[-1], marker="*", s=120, color="k", zorder=5, label="end")
        ax.legend(loc="upper right", fontsize=8)
    xl, yl = axis_labels or ("direction 1", "direction 2")
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    if title:
        ax.set_title(title)
    return ax


def find_chrome() -> str | None:
    """A local Chrome/Chromium for kaleido: ``$BROWSER_PATH``, then the usual names."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).exists():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


_SUFFIXES = (".html", ".png", ".svg", ".pdf")


def save_figure(fig, path) -> Path:
    """Write a plotly Figure or a matplotlib Figure/Axes by suffix.

    ``.html`` (plotly only) embeds plotly.js, so the file works offline.
    ``.png``, ``.svg``, ``.pdf`` of a plotly figure go through kaleido with a
    local Chrome/Chromium; without one a ``RuntimeError`` says so.

    Returns the path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"`path` must end in one of {list(_SUFFIXES)}; got {path.name!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(fig, "to_plotly_json"):
        if suffix == ".html":
            fig.write_html(path, include_plotlyjs=True, full_html=True)
            return path
        chrome = find_chrome()
        if chrome is None:
            raise RuntimeError(
                "static export of a plotly figure needs Chrome or Chromium for kaleido; none was "
                "found (install Debian's `chromium` or set BROWSER_PATH). Write '.html', or draw "
                "the matplotlib equivalent (plot_contour) for a static picture."
            )
        os.environ.setdefault("BROWSER_PATH", chrome)
        fig.write_image(path)
        return path
    figure = getattr(fig, "figure", None) if not hasattr(fig, "savefig") else fig
    if figure is None or not hasattr(figure, "savefig"):
        raise TypeError(f"`fig` must be a plotly Figure or a matplotlib Figure/Axes; got {type(fig).__name__}.")
    if suffix == ".html":
        raise ValueError("`.html` is for plotly figures; save a matplotlib figure as .png, .svg or .pdf.")
    figure.savefig(path, dpi=150)
    return path
