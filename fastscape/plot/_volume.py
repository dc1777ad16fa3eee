"""3-D views: the landscape along three directions as nested shells of equal value, or as slices."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._common import (
    attach_mpl,
    auto_zmax,
    axis_titles,
    check_backend,
    check_surface,
    finite,
    fmt,
    log10_floor,
    new_axes,
    require,
    resolve_value,
    use_log,
)
from ._contour import round_ticks, tick_text
from ._display import displays

if TYPE_CHECKING:  # the return annotations only
    import plotly.graph_objects as go
    from matplotlib.axes import Axes

__all__ = ["volume", "VOLUME_KINDS", "shell_levels", "INNER_OPACITY", "SHELL_SHARE"]

#: how :func:`volume` draws a 3-direction surface.
VOLUME_KINDS = ("isosurface", "slices")


#: least share of the grid's finite points a shell encloses
SHELL_SHARE = 0.01
#: opacity of the innermost shell (the best values); shells further out fade to ``opacity``
INNER_OPACITY = 0.8


def shell_levels(lo: float, hi: float, n: int, log: bool = False) -> np.ndarray:
    """At most ``n`` shell values strictly inside (lo, hi), on round values where there are any.

    ``lo`` and ``hi`` are in drawn units (log10 of the value when ``log``). The
    shells sit on the round values the colour bars tick (1-2-5 per decade on a
    log scale) nearest to ``n`` evenly spaced ones (so their colours spread over
    the scale), none within 2% of either end (no shell hugs the minimum or the
    box); without such values, the ``n`` evenly spaced ones.
    """
    margin = 0.02 * (hi - lo)
    if log:
        candidates = np.log10(round_ticks(10.0**lo, 10.0**hi, True))
    else:
        candidates = round_ticks(lo, hi, False)
    candidates = candidates[(candidates > lo + margin) & (candidates < hi - margin)]
    if len(candidates) == 0:
        return lo + (hi - lo) * np.arange(1, n + 1) / (n + 1)
    targets = lo + (hi - lo) * np.arange(1, n + 1) / (n + 1)  # evenly spread colours
    pick = np.unique([int(np.argmin(np.abs(candidates - t))) for t in targets])
    return candidates[pick]


def _stepped(colorscale, shells, lo, hi) -> list:
    """A plotly colour scale over [lo, hi] that is constant around each shell (its colour on
    ``colorscale`` at the shell's value): the colour bar reads as one band per shell."""
    from plotly.colors import get_colorscale, sample_colorscale

    scale = get_colorscale(colorscale) if isinstance(colorscale, str) else colorscale
    pos = np.clip((np.asarray(shells) - lo) / (hi - lo), 0.0, 1.0)
    colors = sample_colorscale(scale, pos.tolist())
    edges = [0.0, *((pos[1:] + pos[:-1]) / 2).tolist(), 1.0]
    return [[float(e), c] for k, c in enumerate(colors) for e in (edges[k], edges[k + 1])]


@displays
def volume(surface, *, value: str = "loss", kind: str = "isosurface", log: bool = True, levels: int = 4,
           opacity: float = 0.15, at=None, zmax="auto", axis_labels=None, explained_variance=None,
           title: str | None = "Loss volume", colorscale: str = "Viridis", backend: str = "plotly",
           ax=None) -> go.Figure | Axes:
    """A value along three directions, as nested shells of equal value or as three orthogonal slices.

    Parameters
    ----------
    surface : Surface along three directions
        Values of shape (n0, n1, n2); ``[i, j, k]`` sits at
        ``(coords[0][i], coords[1][j], coords[2][k])``.
    value : str
        ``"loss"`` or a metric of the surface; names the colour bar.
    kind : {"isosurface", "slices"}
        "isosurface": at most ``levels`` shells of equal value on round values
        strictly between the minimum and the top of the colour range, each
        enclosing at least :data:`SHELL_SHARE` of the grid (:func:`shell_levels`), each one colour, with a stepped colour bar (one
        band per shell, ticked at its value); "slices": the planes through
        ``at`` parallel to each pair of directions, coloured by value. Both kinds
        share one colour scale: the same transform (``log``) and range, so a
        shell and a slice at the same value have the same colour. Either way the
        best grid point (the lowest loss, the highest accuracy) is marked and
        labelled with its value.
    log : bool
        Colour by log10 of a loss spanning more than 20 times (the rule every
        view shares; colour-bar ticks still read in loss units).
    levels : int
        Most shells drawn (fewer when the range holds fewer round values).
    opacity : float
        Opacity of the outermost shell; shells further in are more opaque, up
        to :data:`INNER_OPACITY` for the innermost, so each shows through the
        ones around it.
    at : 3 coordinates, optional
        Where the slices cross (snapped to the grid); default: the lowest point.
    zmax : float, None or "auto"
        Top of the colour range; "auto" leaves out huge peaks. NaN/inf points
        are holes in slices and never close a shell.
    backend : {"plotly", "matplotlib"}
        "matplotlib" draws on a 3-D Axes (``ax=``): shells as stacked contour
        rings along the third direction, slices as coloured planes.

    Returns
    -------
    plotly.graph_objects.Figure, or matplotlib Axes (3-D) with ``backend="matplotlib"``
    """
    check_backend(backend, "volume")
    check_surface(surface, 3, "volume")
    if kind not in VOLUME_KINDS:
        raise ValueError(f"`kind` must be one of {list(VOLUME_KINDS)}; got {kind!r}.")
    if not isinstance(levels, (int, np.integer)) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"`levels` must be a positive integer; got {levels!r}.")
    val = resolve_value(surface, value)
    log = use_log(val.array, log, val.is_loss)
    v = log10_floor(val.array) if log else finite(val.array)
    if not np.isfinite(v).any():
        raise ValueError(f"`surface` has no finite {val.label} to draw; every grid point diverged.")
    if zmax == "auto":
        cmax = auto_zmax(v)
    elif zmax is None:
        cmax = None
    else:
        cmax = float(np.log10(zmax)) if log else float(zmax)
    vals = v[np.isfinite(v)]
    lo = float(vals.min())
    hi = float(cmax if cmax is not None else vals.max())
    if hi <= lo:
        hi = lo + 1.0
    # the best grid point: lowest for a loss, highest for accuracy
    best = "max" if val.best == "max" else "min"
    scores = np.where(np.isfinite(v), v if best == "min" else -v, np.inf)
    idx_best = np.unravel_index(int(np.argmin(scores)), v.shape)
    minimum = (tuple(float(c[i]) for c, i in zip(surface.coords, idx_best)), float(finite(val.array)[idx_best]),
               "minimum" if best == "min" else "maximum")
    labels = [*axis_titles(surface, axis_labels, explained_variance), val.label]
    unlog = (lambda q: 10.0**q) if log else (lambda q: q)
    # shells enclose at least SHELL_SHARE of the grid: a smaller one hides inside the minimum's marker
    inner = float(np.quantile(vals, SHELL_SHARE if best == "min" else 1 - SHELL_SHARE))
    shells = shell_levels(max(lo, inner), hi, int(levels), log) if best == "min" else \
        shell_levels(lo, min(hi, inner), int(levels), log)
    args = dict(surface=surface, v=v, lo=lo, hi=hi, labels=labels, shells=shells, opacity=float(opacity),
                colorscale=colorscale, at=at, minimum=minimum, unlog=unlog, title=title, log=log, best=best)
    if kind == "slices":
        args["idx"] = _slice_index(surface, at)
    if backend == "matplotlib":
        return (_iso_mpl if kind == "isosurface" else _slices_mpl)(ax=ax, **args)
    if ax is not None:
        raise ValueError("`ax` is for backend='matplotlib'; a plotly view makes its own figure.")
    go = require("plotly.graph_objects", "`fastscape.plot.volume`")
    traces = (_iso_plotly if kind == "isosurface" else _slices_plotly)(go, **args)
    (mx, my, mz), mloss, word = minimum
    traces.append(go.Scatter3d(x=[mx], y=[my], z=[mz], mode="markers", name=f"{word}: {val.label} {fmt(mloss)}",
                               marker=dict(size=7, color="red", symbol="diamond", line=dict(width=2, color="black"))))
    fig = go.Figure(traces)
    fig.update_layout(
        title=dict(text=title) if title else None, template="plotly_white", autosize=True,
        margin=dict(l=10, r=10, t=50 if title else 10, b=10), legend=dict(x=0.01, y=0.98),
        scene=dict(xaxis_title=labels[0], yaxis_title=labels[1], zaxis_title=labels[2], aspectmode="cube",
                   annotations=[dict(x=mx, y=my, z=mz, text=f"<b>{word}</b><br>{val.label} {fmt(mloss)}",
                                     showarrow=True, arrowhead=0, ax=40, ay=-40, bgcolor="rgba(255,255,255,0.85)",
                                     bordercolor="black", borderwidth=1)]),
    )
    return attach_mpl(fig, lambda: ((_iso_mpl if kind == "isosurface" else _slices_mpl)(ax=None, **args).figure,
                                    None), size=(1000, 850))


def _slice_index(surface, at):
    if at is None:
        return None
    if len(at) != 3:
        raise ValueError(f"`at` must hold 3 coordinates, one per direction; got {len(at)}.")
    return [int(np.argmin(np.abs(np.asarray(c, dtype=float) - a))) for c, a in zip(surface.coords, at)]


def _iso_plotly(go, *, surface, v, lo, hi, labels, shells, opacity, colorscale, unlog, best, **_):
    X, Y, Z = np.meshgrid(*surface.coords, indexing="ij")
    # NaN/inf (diverged) points sit above every shell, so they never close a surface
    filled = np.where(np.isfinite(v), v, hi + abs(hi - lo) + 1.0)
    scale = _stepped(colorscale, shells, lo, hi)
    inward = shells if best == "min" else shells[::-1]  # innermost first: the best values
    fade = np.linspace(max(INNER_OPACITY, opacity), opacity, len(shells))
    traces = []
    for k, (s, alpha) in enumerate(zip(inward, fade)):
        traces.append(go.Isosurface(
            x=X.ravel(), y=Y.ravel(), z=Z.ravel(), value=filled.ravel(), name=f"{labels[3]} {tick_text(unlog(s))}",
            isomin=float(s), isomax=float(s), surface_count=1, opacity=float(alpha), cmin=lo, cmax=hi,
            colorscale=scale, caps=dict(x_show=False, y_show=False, z_show=False), showscale=k == 0,
            colorbar=dict(title=dict(text=f"{labels[3]} of each shell"), tickvals=shells.tolist(),
                          ticktext=[tick_text(unlog(s)) for s in shells]),
        ))
    return traces


def _slices_plotly(go, *, surface, v, lo, hi, labels, colorscale, idx, minimum, unlog, log, **_):
    c0, c1, c2 = (np.asarray(c, dtype=float) for c in surface.coords)
    if idx is None:
        idx = [int(np.argmin(np.abs(c - m))) for c, m in zip((c0, c1, c2), minimum[0])]
    traces = []
    planes = (
        (v[idx[0], :, :], lambda a, b: (np.full_like(a, c0[idx[0]]), a, b), (c1, c2)),
        (v[:, idx[1], :], lambda a, b: (a, np.full_like(a, c1[idx[1]]), b), (c0, c2)),
        (v[:, :, idx[2]], lambda a, b: (a, b, np.full_like(a, c2[idx[2]])), (c0, c1)),
    )
    ticks = _round_ticks(lo, hi, log)
    for k, (color, place, (ca, cb)) in enumerate(planes):
        A, B = np.meshgrid(ca, cb, indexing="ij")
        x, y, z = place(A, B)
        z = np.where(np.isfinite(color), z, np.nan)  # diverged points: holes in the slice
        traces.append(go.Surface(
            x=x, y=y, z=z, surfacecolor=np.minimum(color, hi), cmin=lo, cmax=hi,
            colorscale=colorscale, opacity=1.0, showscale=k == 0, name=f"slice {k + 1}",
            colorbar=dict(title=dict(text=labels[3]), tickvals=ticks.tolist(),
                          ticktext=[tick_text(unlog(t)) for t in ticks]),
        ))
    return traces


def _round_ticks(lo, hi, log) -> np.ndarray:
    """Colour-bar ticks on round values inside [lo, hi], in drawn units (log10 of the value when ``log``)."""
    return np.log10(round_ticks(10.0**lo, 10.0**hi, True)) if log else round_ticks(lo, hi, False)


def _mpl_axes(ax):
    require("matplotlib", "`fastscape.plot.volume(backend='matplotlib')`")
    return ax if ax is not None else new_axes((8.0, 6.8), projection="3d")


def _finish_mpl(ax, labels, minimum, title, label):
    (mx, my, mz), mloss, word = minimum
    ax.scatter([mx], [my], [mz], marker="D", s=70, color="red", edgecolors="k", depthshade=False, zorder=20,
               label=f"{word}: {label} {fmt(mloss)}")
    ax.text(mx, my, mz, f"  {word}\n  {label} {fmt(mloss)}", fontsize=8, zorder=21,
            bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="k", lw=0.5, alpha=0.85))
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_zlabel(labels[2])
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    return ax


def _iso_mpl(*, ax, surface, v, lo, hi, labels, shells, colorscale, minimum, unlog, title, **_):
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize

    ax = _mpl_axes(ax)
    base = colormaps[colorscale.lower() if isinstance(colorscale, str) else "viridis"]
    # one band per shell, in the colour the continuous scale over [lo, hi] gives its value (as the slices)
    cmap = ListedColormap(base(Normalize(lo, hi)(shells)))
    norm = BoundaryNorm([lo, *((shells[1:] + shells[:-1]) / 2), hi], len(shells))
    c0, c1, c2 = surface.coords
    X, Y = np.meshgrid(c0, c1)
    filled = np.where(np.isfinite(v), v, hi + abs(hi - lo) + 1.0)
    for k in np.unique(np.linspace(0, len(c2) - 1, min(len(c2), 15)).round().astype(int)):
        # each shell as the stack of its rings, one ring per slice (at most 15 slices)
        z = c2[k]
        sl = filled[:, :, k].T
        if sl.min() < shells[-1] and sl.max() > shells[0]:
            ax.contour(X, Y, sl, levels=shells, zdir="z", offset=float(z), cmap=cmap, norm=norm,
                       linewidths=1.1)
    ax.set_zlim(float(c2[0]), float(c2[-1]))
    sm = ScalarMappable(norm=norm, cmap=cmap)
    cb = ax.figure.colorbar(sm, ax=ax, shrink=0.6, pad=0.1, label=f"{labels[3]} of each shell")
    cb.set_ticks(shells, labels=[tick_text(unlog(s)) for s in shells])
    return _finish_mpl(ax, labels, minimum, title, labels[3])


def _slices_mpl(*, ax, surface, v, lo, hi, labels, colorscale, idx, minimum, unlog, title, log, **_):
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    ax = _mpl_axes(ax)
    c0, c1, c2 = (np.asarray(c, dtype=float) for c in surface.coords)
    if idx is None:
        idx = [int(np.argmin(np.abs(c - m))) for c, m in zip((c0, c1, c2), minimum[0])]
    cmap = colormaps[colorscale.lower() if isinstance(colorscale, str) else "viridis"]
    norm = Normalize(lo, hi)

    def faces(color):
        rgba = cmap(norm(np.minimum(np.nan_to_num(color, nan=lo), hi)))
        rgba[~np.isfinite(color)] = (1, 1, 1, 0)  # diverged: a hole
        return rgba

    A, B = np.meshgrid(c1, c2, indexing="ij")
    ax.plot_surface(np.full_like(A, c0[idx[0]]), A, B, facecolors=faces(v[idx[0]]), shade=False)
    A, B = np.meshgrid(c0, c2, indexing="ij")
    ax.plot_surface(A, np.full_like(A, c1[idx[1]]), B, facecolors=faces(v[:, idx[1]]), shade=False)
    A, B = np.meshgrid(c0, c1, indexing="ij")
    ax.plot_surface(A, B, np.full_like(A, c2[idx[2]]), facecolors=faces(v[:, :, idx[2]]), shade=False)
    cb = ax.figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.6, pad=0.1, label=labels[3])
    ticks = _round_ticks(lo, hi, log)
    cb.set_ticks(ticks, labels=[tick_text(unlog(t)) for t in ticks])
    return _finish_mpl(ax, labels, minimum, title, labels[3])
