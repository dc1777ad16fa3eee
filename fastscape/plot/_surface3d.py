"""The 3-D view of a plane: plotly by default, matplotlib for a static picture, with the path
and named positions lifted onto the surface."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import numpy as np

from ._common import (
    attach_mpl,
    auto_zmax,
    axis_titles,
    check_backend,
    check_path,
    check_points,
    check_surface,
    finite,
    new_axes,
    path_unit,
    require,
    resolve_value,
    use_log,
)
from ._contour import round_ticks, tick_text
from ._marks import POINT_COLORS, best_label, best_point, draw_points, path_heights, stored_path
from ._display import displays

if TYPE_CHECKING:  # the return annotations only
    import plotly.graph_objects as go
    from matplotlib.axes import Axes

__all__ = ["surface3d", "auto_camera", "frame_camera", "project_box", "LIFT"]

#: interpolated path and point heights are drawn this share of the height range above the
#: surface: on it, the markers sink into the rendered mesh between grid nodes.
LIFT = 0.02


def _heights(z: np.ndarray, log: bool, zmax):
    """(transform, clip) for heights: clip at ``zmax`` ("auto": :func:`auto_zmax`), then log10."""
    if isinstance(zmax, str):
        if zmax != "auto":
            raise ValueError(f"`zmax` must be a number, None or 'auto'; got {zmax!r}.")
        zmax = auto_zmax(z)
    positive = z[np.isfinite(z) & (z > 0)]
    floor = float(positive.min()) if positive.size else 1e-12

    def transform(q):
        q = finite(q)
        if zmax is not None:
            q = np.minimum(q, zmax)  # NaN stays NaN: a gap
        if not log:
            return q
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log10(np.maximum(q, floor))

    return transform, zmax


#: longest line of a colour bar's title (characters): two bars sit 0.08 of the page apart
BAR_TITLE_CHARS = 12
#: the scene's box in plotly's units (``aspectratio``): the contour's square plane, heights 0.6 of it
BOX = (1.0, 1.0, 0.6)
#: eye elevation above the plane, degrees: a landscape seen at a low angle without a path; with one,
#: raised (in 5-degree steps, at most to the second) only as far as needed to see the path's end
ELEVATION = (25.0, 60.0)
#: the eye swings at most this many degrees either side of straight in front (below direction 2's low
#: end): direction 1 then runs to the right and direction 2 away from the viewer, as on the contour
SWING = 25.0
#: share of the scene's height, and of its width at :data:`VIEW_ASPECT`, the box spans (the rest holds
#: the tick labels and axis titles)
FILL = 0.92
#: narrowest width/height of the scene the box is framed to fit (a 1000 x 800 page, the legend and
#: colour bars beside it); wider pages leave room at the sides
VIEW_ASPECT = 1.25
#: plotly's vertical field of view (gl-plot3d's default; the camera model is lookAt + perspective)
FOVY = np.pi / 4


def project_box(eye, center, box=BOX, view_aspect=VIEW_ASPECT) -> np.ndarray:
    """Where plotly draws the 8 corners of the scene's box: (8, 2) normalised device coordinates, x right
    and y up, the scene's viewport spanning [-1, 1] on each axis (a pinhole camera at ``eye`` looking at
    ``center`` with z up, vertical field of view :data:`FOVY`)."""
    eye, center = np.asarray(eye, dtype=float), np.asarray(center, dtype=float)
    corners = (np.array(np.meshgrid([-0.5, 0.5], [-0.5, 0.5], [-0.5, 0.5], indexing="ij")).reshape(3, -1).T
               * np.asarray(box, dtype=float))
    forward = (center - eye) / np.linalg.norm(center - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rel = corners - eye
    depth = rel @ forward
    t = np.tan(FOVY / 2)
    return np.stack([rel @ right / (depth * t * view_aspect), rel @ up / (depth * t)], axis=1)


def frame_camera(azimuth: float, elevation: float, box=BOX) -> dict:
    """The eye along (azimuth, elevation) (degrees) at the distance, and the look-at point, at which the
    box spans :data:`FILL` of the scene's height or width (whichever binds), centred."""
    a, e = np.radians(azimuth), np.radians(elevation)
    toward = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    center = np.zeros(3)
    dist = 2.0
    for _ in range(4):  # alternate: distance for the size, then the look-at point for the centring
        lo, hi = 0.5, 10.0
        for _ in range(40):
            dist = (lo + hi) / 2
            p = project_box(center + dist * toward, center, box)
            if max(np.ptp(p[:, 0]), np.ptp(p[:, 1])) > 2 * FILL:
                lo = dist
            else:
                hi = dist
        eye = center + dist * toward
        p = project_box(eye, center, box)
        mid = (p.min(axis=0) + p.max(axis=0)) / 2
        forward = -toward
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        t = np.tan(FOVY / 2)
        center = center + dist * t * (mid[0] * VIEW_ASPECT * right + mid[1] * up)
    eye = center + dist * toward
    as_dict = lambda v: dict(x=float(v[0]), y=float(v[1]), z=float(v[2]))  # noqa: E731
    return dict(eye=as_dict(eye), center=as_dict(center), up=dict(x=0.0, y=0.0, z=1.0))


def auto_camera(surface_coords, heights, target=None) -> dict:
    """A plotly camera in the contour's orientation, from which ``target`` (the path's end) is in view.

    The eye stands in front of the plane, below direction 2's low end, swung at
    most :data:`SWING` degrees to either side: direction 1 runs to the right and
    direction 2 away from the viewer, as on :func:`contour`. Without a target it
    looks from :data:`ELEVATION`'s low angle; the azimuth is the one from which
    the lowest point is seen over the ground in front of it (ties: the side away
    from the highest fifth of the surface, then 20 degrees right of straight
    in front). With a target the elevation rises in 5-degree steps, at most to
    :data:`ELEVATION`'s second value, until a line of sight from the target
    clears the surface. The camera is then framed (:func:`frame_camera`) so that
    the box fills the scene.

    Parameters
    ----------
    surface_coords : (x, y) coordinate arrays
    heights : ndarray of shape (n_x, n_y)
        As drawn (after clipping and log).
    target : (x, y), optional

    Returns
    -------
    dict
        ``eye``, ``center`` and ``up``, as plotly's ``scene.camera``.
    """
    x, y = (np.asarray(c, dtype=float) for c in surface_coords)
    h = np.asarray(heights, dtype=float)
    ok = np.isfinite(h)
    straight = -90.0 + 20.0
    if ok.sum() < 4 or len(x) < 2 or len(y) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return frame_camera(straight, ELEVATION[0])
    lo, hi = float(h[ok].min()), float(h[ok].max())
    top = BOX[2] / 2
    zs = np.where(ok, (h - lo) / (hi - lo if hi > lo else 1.0) * 2 * top - top, -top)  # holes: the floor
    ux, uy = (x - x.min()) / np.ptp(x) - 0.5, (y - y.min()) / np.ptp(y) - 0.5
    if target is None:
        i, j = np.unravel_index(int(np.argmin(np.where(ok, h, np.inf))), h.shape)
        t = np.array([ux[i], uy[j]])
    else:
        t = np.clip([(target[0] - x.min()) / np.ptp(x) - 0.5, (target[1] - y.min()) / np.ptp(y) - 0.5], -0.5, 0.5)

    def height(px, py):
        i = np.clip(np.searchsorted(ux, px), 0, len(ux) - 1)
        j = np.clip(np.searchsorted(uy, py), 0, len(uy) - 1)
        return zs[i, j]

    zt = float(height(np.array([t[0]]), np.array([t[1]]))[0])
    X, Y = np.meshgrid(ux, uy, indexing="ij")
    high = ok & (h >= np.quantile(h[ok], 0.8))
    away = t - np.array([X[high].mean(), Y[high].mean()])
    away = away / (np.hypot(*away) or 1.0)
    s = np.linspace(0.01, 1.5, 150)
    elevations = [ELEVATION[0]] if target is None else np.arange(ELEVATION[0], ELEVATION[1] + 1, 5.0)
    for el in elevations:
        best, best_score, best_clear = straight, -np.inf, -np.inf
        for az in np.arange(-90.0 - SWING, -90.0 + SWING + 1, 5.0):
            d = np.array([np.cos(np.radians(az)), np.sin(np.radians(az))])
            px, py = t[0] + s * d[0], t[1] + s * d[1]
            inside = (np.abs(px) <= 0.5) & (np.abs(py) <= 0.5)
            sight = zt + s[inside] * np.tan(np.radians(el))
            clear = float(np.min(sight - height(px[inside], py[inside]))) if inside.any() else 1.0
            score = min(clear, 0.02) + 0.01 * float(d @ away) - 0.0001 * abs(az - straight)
            if score > best_score:
                best, best_score, best_clear = float(az), score, clear
        if best_clear > 0:
            break
    return frame_camera(best, float(el))


def _floor_levels(zt: np.ndarray, n: int = 24):
    vals = zt[np.isfinite(zt)]
    if not vals.size:  # every point diverged: nothing to contour (saving such a figure says so)
        return 0.0, 1.0, 1.0 / n
    lo, hi = float(vals.min()), float(vals.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi, (hi - lo) / n


@displays
def surface3d(surface, *, value: str = "loss", path=None, path_loss=None, points=None, log: bool = True,
              zmax="auto", title: str | None = "Loss surface", axis_labels=None, explained_variance=None,
              colorscale: str = "Viridis", floor_contours: bool = True, camera="auto",
              path_label: str | None = None, minimum: bool = True, backend: str = "plotly",
              ax=None) -> go.Figure | Axes:
    """A 3-D view of a plane, with the optimiser's path and named positions on it.

    Parameters
    ----------
    surface : Surface along two directions
        ``value[i, j]`` is drawn at ``(coords[0][i], coords[1][j])``
        (plotly's trace holds the array transposed, its (y, x) layout).
    value : str
        ``"loss"`` or a metric (``"accuracy"``, ``"test/accuracy"``); names the
        height axis and colour bar. ``log`` applies to a loss only.
    path : array of shape (T, 2), None or False
        Plane coordinates of the path, drawn as a 3-D line with markers coloured
        by snapshot (colour bar titled ``path_label``); start and end are marked
        and labelled beside their markers. None (default): the path stored with
        the surface (``surface.path``), if any; False: no path.
    path_loss : array of shape (T,), optional
        Value at each path point; default: interpolated from the surface
        (:func:`path_heights`). Drawn lifted by :data:`LIFT` of the height
        range, so the markers sit on the surface instead of sinking into it;
        hovering reads the value itself (the surface's too, in loss units on a
        log view).
    points : dict label -> (x, y), or array of shape (n, 2), optional
        Named positions, each with its own marker and label (no colour bar).
    log : bool
        Heights on a log scale for a loss spanning more than ``LOG_SPAN`` (20)
        times (the rule every view shares); ticks read in loss values.
    zmax : float, None or "auto"
        Heights above ``zmax`` are drawn flat at ``zmax``; "auto" clips only
        huge peaks; None never clips. NaN/inf points are gaps whatever this is.
    axis_labels, explained_variance :
        As in :func:`contour`.
    floor_contours : bool
        Contour lines (about 24 levels) projected onto the floor of the box.
    camera : "auto", dict or None
        "auto": look from the low side toward the high side, so the valley and
        the path's end are in view (:func:`auto_camera`); a plotly camera dict;
        None: plotly's default.
    path_label : str, optional
        What the path's colours count. Default: the path's own unit ("epoch" for a
        :func:`fastscape.train` trajectory projected by :func:`fastscape.project`,
        coloured by its epoch numbers), else "recorded snapshot"; a label given
        here numbers the points 0, 1, 2, ...
    minimum : bool
        Mark the grid's best point (lowest loss, highest accuracy), named with
        its value and "(on the grid's edge)" where it lies on the border.
    backend : {"plotly", "matplotlib"}
        "matplotlib" draws the same view on a 3-D Axes (``ax=``) for static files.

    Returns
    -------
    plotly.graph_objects.Figure, or matplotlib Axes (3-D) with ``backend="matplotlib"``
        The plotly figure has no fixed size (it fills the page or the notebook
        cell); traces ``"loss"``, then ``"path"``, ``"start"``, ``"end"``,
        one per named point, and the best point (named "grid min ..."). ``fastscape.plot.save`` writes it as HTML, or as
        PNG/SVG/PDF through kaleido and Chromium.
    """
    check_backend(backend, "surface3d")
    check_surface(surface, 2, "surface3d")
    v = resolve_value(surface, value)
    path = stored_path(surface, path)
    path_label, counts = path_unit(path, path_label)  # before check_path keeps only the coordinates
    path = check_path(path)
    pts = check_points(points)
    raw = finite(v.array)
    log = use_log(raw, log, v.is_loss)
    transform, clip = _heights(raw, log, zmax)
    zt = transform(raw)
    xl, yl = axis_titles(surface, axis_labels, explained_variance)
    zlabel = f"{v.label} (log scale)" if log else v.label
    zticks = None
    if log and np.isfinite(zt).any():  # log heights, read in loss values on round ticks
        ticks = round_ticks(10.0 ** float(np.nanmin(zt)), 10.0 ** float(np.nanmax(zt)), True)
        zticks = (np.log10(ticks).tolist(), [tick_text(t) for t in ticks])
    if clip is not None:
        zlabel += f" (clipped at {clip:.3g})"
    h = None
    fin = zt[np.isfinite(zt)]
    lift = LIFT * float(np.ptp(fin)) if fin.size else 0.0
    hv = None  # the path's values, as hover reads them
    if path is not None:
        hv = path_heights(surface, path, value) if path_loss is None else np.asarray(path_loss, float).reshape(-1)
        if hv.shape[0] != path.shape[0]:
            raise ValueError(f"`path_loss` must hold one loss per path point ({path.shape[0]}); got {hv.shape[0]}.")
        h = transform(hv) + lift  # lifted like every mark: on the surface, not sunk into its mesh
    ph = None if pts is None else transform(path_heights(surface, np.array([c for _, c in pts]), value)) + lift
    best = best_point(surface, v) if minimum else None
    best = None if best is None else (best["xy"], float(transform(np.array(best["value"]))) + lift,
                                      best_label(best, v))
    limits = None if (log or v.limits is None) else tuple(float(q) for q in v.limits)
    args = dict(surface=surface, zt=zt, labels=(xl, yl, zlabel), path=path, h=h, pts=pts, ph=ph, title=title,
                colorscale=colorscale, floor_contours=floor_contours, path_label=path_label, counts=counts,
                limits=limits,
                best=best, zticks=zticks, hover=(raw if log or clip is not None else None, hv, v.label))
    if isinstance(camera, str):
        if camera != "auto":
            raise ValueError(f"`camera` must be 'auto', a plotly camera dict or None; got {camera!r}.")
        camera = auto_camera(surface.coords, zt, None if path is None else path[-1])
    args["camera"] = camera
    if backend == "matplotlib":
        return _surface3d_mpl(ax=ax, **args)
    if ax is not None:
        raise ValueError("`ax` is for backend='matplotlib'; a plotly view makes its own figure.")
    fig = _surface3d_plotly(**args)
    return attach_mpl(fig, lambda: (_surface3d_mpl(ax=None, **args).figure, None), size=(1280, 800))


def _surface3d_plotly(*, surface, zt, labels, path, h, pts, ph, title, colorscale, floor_contours,
                      path_label, camera, limits, counts=None, best=None, zticks=None, hover=(None, None, "")):
    go = require("plotly.graph_objects", "`fastscape.plot.surface3d`")
    xl, yl, zlabel = labels
    raw, hv, value_name = hover  # hover reads the values themselves, not their log or clip
    zhover = "%{z:.4g}" if raw is None else "%{customdata:.4g}"
    lo, hi, size = _floor_levels(zt)
    fig = go.Figure()
    fig.add_trace(go.Surface(
        x=surface.coords[0], y=surface.coords[1], z=zt.T, colorscale=colorscale, name=zlabel,
        cmin=None if limits is None else limits[0], cmax=None if limits is None else limits[1],
        colorbar=dict(title=_bar_title(zlabel), x=0.86, xanchor="left", len=0.8,
                      **({} if zticks is None else dict(tickvals=zticks[0], ticktext=zticks[1]))),
        contours=dict(z=dict(show=floor_contours, start=lo, end=hi, size=size, project=dict(z=True),
                             usecolormap=True, highlightcolor="white", width=1)),
        customdata=None if raw is None else raw.T,
        hovertemplate="%{x:.3g}, %{y:.3g}<br>" + value_name + " " + zhover + "<extra></extra>",
    ))
    annotations = []
    if path is not None:
        steps = np.arange(len(path)) if counts is None else counts  # the path's epochs or steps
        fig.add_trace(go.Scatter3d(
            x=path[:, 0], y=path[:, 1], z=h, mode="lines+markers", name="path",
            line=dict(color="crimson", width=5),
            marker=dict(size=3.5, color=steps, colorscale="Plasma", showscale=True,
                        colorbar=dict(title=_bar_title(path_label), x=0.94, xanchor="left", len=0.5)),
            customdata=np.stack([steps, hv], axis=1),
            hovertemplate=path_label + " %{customdata[0]}<br>" + value_name + " %{customdata[1]:.4g}<extra></extra>",
        ))
        for idx, label, color, symbol in ((0, "start", "white", "circle"), (-1, "end", "black", "diamond")):
            fig.add_trace(go.Scatter3d(
                x=[path[idx, 0]], y=[path[idx, 1]], z=[h[idx]], mode="markers", name=label,
                marker=dict(size=7, color=color, symbol=symbol, line=dict(width=2, color="black")),
            ))
            annotations.append(_label3d(path[idx, 0], path[idx, 1], h[idx], label))
    if pts is not None:
        symbols = ("diamond", "square", "cross", "x", "circle-open", "diamond-open")
        for i, ((name, c), z) in enumerate(zip(pts, ph)):
            fig.add_trace(go.Scatter3d(
                x=[c[0]], y=[c[1]], z=[z], mode="markers", name=name,
                marker=dict(size=8, color=POINT_COLORS[i % len(POINT_COLORS)], symbol=symbols[i % len(symbols)],
                            line=dict(width=2, color="black")),
            ))
            annotations.append(_label3d(c[0], c[1], z, name))
    if best is not None:
        fig.add_trace(go.Scatter3d(x=[best[0][0]], y=[best[0][1]], z=[best[1]], mode="markers", name=best[2],
                                   marker=dict(size=7, color="#00e5ff", symbol="square",
                                               line=dict(width=2, color="black"))))
    zaxis = dict(title=dict(text=zlabel)) if zticks is None else dict(title=dict(text=zlabel), tickvals=zticks[0],
                                                                      ticktext=zticks[1])
    scene = dict(xaxis_title=xl, yaxis_title=yl, zaxis=zaxis, aspectmode="manual",
                 aspectratio=dict(zip("xyz", BOX)), annotations=annotations, domain=dict(x=[0.0, 0.85], y=[0, 1]))
    if camera is not None:
        scene["camera"] = camera
    fig.update_layout(
        title=dict(text=title) if title else None, template="plotly_white", autosize=True,
        margin=dict(l=10, r=10, t=50 if title else 10, b=10),
        legend=dict(x=0.01, y=0.98), scene=scene,
    )
    return fig


def _bar_title(text: str) -> dict:
    """A colour bar's title above the bar, in lines of at most :data:`BAR_TITLE_CHARS` characters: plotly
    sets a title on the bar's side over the tick labels' column, and a long title above a narrow bar
    spills onto its neighbour or off the page."""
    parts = text.replace(" (", "\n(").split("\n")  # a parenthesis starts its own line
    lines = [line for part in parts for line in textwrap.wrap(part, BAR_TITLE_CHARS, break_long_words=False)]
    return dict(text="<br>".join(lines) or text, side="top")


def _label3d(x, y, z, text):
    """A scene annotation up and to the right of its point: never hidden under the marker."""
    return dict(x=float(x), y=float(y), z=float(z) if np.isfinite(z) else 0.0, text=f"<b>{text}</b>",
                showarrow=True, arrowhead=0, arrowwidth=1, arrowcolor="black", ax=28, ay=-28,
                bgcolor="rgba(255,255,255,0.85)", bordercolor="black", borderwidth=1, font=dict(size=12))


def _surface3d_mpl(*, ax, surface, zt, labels, path, h, pts, ph, title, colorscale, floor_contours, path_label,
                   camera=None, limits=None, counts=None, best=None, zticks=None, hover=None):
    require("matplotlib", "`fastscape.plot.surface3d(backend='matplotlib')`")
    xl, yl, zlabel = labels
    if ax is None:
        ax = new_axes((8.0, 6.4), projection="3d")
    cmap = colorscale.lower() if isinstance(colorscale, str) else "viridis"
    X, Y = np.meshgrid(surface.coords[0], surface.coords[1])
    Z = zt.T
    lo, hi, size = _floor_levels(zt)
    stride = max(1, max(Z.shape) // 120)
    ax.computed_zorder = False  # the path and labels stay on top of the surface
    vmin, vmax = (lo, hi) if limits is None else limits
    surf = ax.plot_surface(X, Y, np.ma.masked_invalid(Z), cmap=cmap, vmin=vmin, vmax=vmax, linewidth=0,
                           antialiased=False, alpha=0.92, rstride=stride, cstride=stride, zorder=1)
    floor = lo - 0.05 * (hi - lo)
    if floor_contours:
        ax.contour(X, Y, np.ma.masked_invalid(Z), levels=np.arange(lo, hi + size / 2, size), zdir="z",
                   offset=floor, cmap=cmap, linewidths=0.7)
    ax.set_zlim(floor, hi + 0.05 * (hi - lo))
    rise = 0.06 * (hi - lo)
    if path is not None:
        steps = np.arange(len(path)) if counts is None else counts  # the path's epochs or steps
        ax.plot(path[:, 0], path[:, 1], h, color="crimson", linewidth=2, zorder=10, label="path")
        sc = ax.scatter(path[:, 0], path[:, 1], h, c=steps, cmap="plasma", s=14, depthshade=False, zorder=11)
        if len(path) > 1:
            ax.figure.colorbar(sc, ax=ax, label=path_label, shrink=0.45, pad=0.02)
        for idx, label, color, marker in ((0, "start", "white", "o"), (-1, "end", "black", "D")):
            ax.scatter([path[idx, 0]], [path[idx, 1]], [h[idx]], marker=marker, s=60, color=color, edgecolors="k",
                       depthshade=False, zorder=12, label=label)
            ax.text(path[idx, 0], path[idx, 1], h[idx] + rise, label, fontsize=9, fontweight="bold", zorder=13,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="k", lw=0.6, alpha=0.85))
    if pts is not None:
        draw_points(ax, pts, z=ph)
    if best is not None:
        ax.scatter([best[0][0]], [best[0][1]], [best[1]], marker="X", s=80, color="#00e5ff", edgecolors="k",
                   depthshade=False, zorder=12, label=best[2])
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    cb = ax.figure.colorbar(surf, ax=ax, label=zlabel, shrink=0.6, pad=0.12)  # last: next to the Axes
    if zticks is not None:
        cb.set_ticks(zticks[0], labels=zticks[1])
        ax.set_zticks(zticks[0], labels=zticks[1])
    eye = (camera or {}).get("eye")
    if eye is not None:  # the direction from the look-at point to the eye
        c = (camera or {}).get("center") or {}
        dx, dy, dz = (eye[k] - c.get(k, 0.0) for k in "xyz")
        ax.view_init(elev=float(np.degrees(np.arctan2(dz, np.hypot(dx, dy)))),
                     azim=float(np.degrees(np.arctan2(dy, dx))))
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_zlabel(zlabel)
    if title:
        ax.set_title(title)
    return ax
