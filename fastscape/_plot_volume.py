"""3-D views: the landscape along three directions as nested isosurfaces or as slices."""

from __future__ import annotations

import numpy as np

from ._plot_common import auto_zmax, axis_titles, check_surface, finite

__all__ = ["plot_volume", "VOLUME_KINDS"]


def _transform(loss, log):
    v = finite(loss)
    if log:
        pos = v[np.isfinite(v) & (v > 0)]
        floor = float(pos.min()) if pos.size else 1e-12
        with np.errstate(invalid="ignore"):
            v = np.log10(np.maximum(v, floor))
    return v


def _isosurface(surface, v, labels, *, levels, opacity, colorscale, at, cmax):
    import plotly.graph_objects as go

    X, Y, Z = np.meshgrid(*surface.coords, indexing="ij")
    vals = v[np.isfinite(v)]
    lo = float(vals.min())
    hi = float(cmax if cmax is not None else vals.max())
    # NaN/inf (diverged) points sit above every shell, so they never close a surface
    filled = np.where(np.isfinite(v), v, hi + abs(hi - lo) + 1.0)
    return [go.Isosurface(
        x=X.ravel(), y=Y.ravel(), z=Z.ravel(), value=filled.ravel(), name="loss",
        isomin=lo + 0.02 * (hi - lo), isomax=hi, surface_count=levels, opacity=opacity,
        colorscale=colorscale, caps=dict(x_show=False, y_show=False, z_show=False),
        colorbar=dict(title=dict(text=labels[3])),
    )]


def _slices(surface, v, labels, *, levels, opacity, colorscale, at, cmax):
    import plotly.graph_objects as go

    c0, c1, c2 = (np.asarray(c, dtype=float) for c in surface.coords)
    if at is None:
        at = surface.argmin()
    if len(at) != 3:
        raise ValueError(f"`at` must hold 3 coordinates, one per direction; got {len(at)}.")
    idx = [int(np.argmin(np.abs(c - a))) for c, a in zip((c0, c1, c2), at)]
    vals = v[np.isfinite(v)]
    cmin, cmax = float(vals.min()), float(cmax if cmax is not None else vals.max())
    traces = []
    planes = (
        (v[idx[0], :, :], lambda a, b: (np.full_like(a, c0[idx[0]]), a, b), (c1, c2)),
        (v[:, idx[1], :], lambda a, b: (a, np.full_like(a, c1[idx[1]]), b), (c0, c2)),
        (v[:, :, idx[2]], lambda a, b: (a, b, np.full_like(a, c2[idx[2]])), (c0, c1)),
    )
    for k, (color, place, (ca, cb)) in enumerate(planes):
        A, B = np.meshgrid(ca, cb, indexing="ij")
        x, y, z = place(A, B)
        z = np.where(np.isfinite(color), z, np.nan)  # diverged points: holes in the slice
        traces.append(go.Surface(
            x=x, y=y, z=z, surfacecolor=np.minimum(color, cmax), cmin=cmin, cmax=cmax,
            colorscale=colorscale, opacity=1.0, showscale=k == 0, name=f"slice {k + 1}",
            colorbar=dict(title=dict(text=labels[3])),
        ))
    return traces


#: how :func:`plot_volume` draws a 3-direction surface.
VOLUME_KINDS = {"isosurface": _isosurface, "slices": _slices}


def plot_volume(surface, *, kind: str = "isosurface", log: bool = False, levels: int = 6,
                opacity: float = 0.3, at=None, zmax="auto", axis_labels=None, explained_variance=None,
                title: str | None = "Loss volume", colorscale: str = "Viridis"):
    """The loss along three directions, as nested isosurfaces or as three orthogonal slices.

    Parameters
    ----------
    surface : Surface along three directions
        ``loss`` of shape (n0, n1, n2); ``loss[i, j, k]`` sits at
        ``(coords[0][i], coords[1][j], coords[2][k])``.
    kind : {"isosurface", "slices"}
        "isosurface": ``levels`` shells of equal loss between the minimum and the
        top of the colour range; "slices": the planes through ``at`` parallel to
        each pair of directions, coloured by loss.
    log : bool
        Colour by log10 of the loss.
    levels : int
        Number of isosurfaces.
    opacity : float
        Isosurface opacity (inner shells show through).
    at : 3 coordinates, optional
        Where the slices cross (snapped to the grid); default: the lowest point.
    zmax : float, None or "auto"
        Top of the colour range / outermost shell; "auto" leaves out huge peaks.
        NaN/inf points are holes in slices and never close an isosurface.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go

    check_surface(surface, 3, "plot_volume")
    if kind not in VOLUME_KINDS:
        raise ValueError(f"`kind` must be one of {list(VOLUME_KINDS)}; got {kind!r}.")
    if not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"`levels` must be a positive integer; got {levels!r}.")
    v = _transform(surface.loss, log)
    if not np.isfinite(v).any():
        raise ValueError("`surface` has no finite loss to draw; every grid point diverged.")
    if zmax == "auto":
        cmax = auto_zmax(v)
    elif zmax is None:
        cmax = None
    else:
        cmax = float(np.log10(zmax)) if log else float(zmax)
    labels = [*axis_titles(surface, axis_labels, explained_variance), "log10 loss" if log else "loss"]
    traces = VOLUME_KINDS[kind](surface, v, labels, levels=int(levels), opacity=float(opacity),
                                colorscale=colorscale, at=at, cmax=cmax)
    fig = go.Figure(traces)
    fig.update_layout(
        title=dict(text=title) if title else None, width=850, height=750, template="plotly_white",
        margin=dict(l=10, r=10, t=50 if title else 10, b=10),
        scene=dict(xaxis_title=labels[0], yaxis_title=labels[1], zaxis_title=labels[2],
                   aspectmode="cube"),
    )
    return fig
