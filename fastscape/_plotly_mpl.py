"""A matplotlib rendering of a plotly figure: static pictures without a browser.

Used by :func:`fastscape.save_figure` when kaleido has no Chrome to drive, and
to draw GIF frames of plotly animations. It covers the trace types fastscape's
own figures use (scatter, scatter3d, surface, contour, heatmap, isosurface),
their subplot layout (``xaxis2`` ... and ``scene2`` ... domains), titles and
axis titles; other trace types are skipped with a note in the figure.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plotly_to_matplotlib"]

_SCALES = {"viridis": "viridis", "plasma": "plasma", "inferno": "inferno", "magma": "magma",
           "cividis": "cividis", "rdbu": "RdBu", "bluered": "bwr", "greys": "Greys", "turbo": "turbo"}


def _cmap(scale, default="viridis"):
    if isinstance(scale, str) and scale.lower() in _SCALES:
        return _SCALES[scale.lower()]
    if isinstance(scale, (list, tuple)) and scale:
        from matplotlib.colors import LinearSegmentedColormap, to_rgb

        try:
            stops = [(float(s), to_rgb(_css(c))) for s, c in scale]
            return LinearSegmentedColormap.from_list("plotly", stops)
        except (ValueError, TypeError):
            return default
    return default


def _css(color):
    """A plotly colour string in a form matplotlib reads."""
    if isinstance(color, str) and color.startswith("rgb"):
        nums = [float(v) for v in color[color.index("(") + 1 : color.index(")")].split(",")]
        rgb = tuple(v / 255 for v in nums[:3])
        return (*rgb, nums[3]) if len(nums) == 4 else rgb
    return color


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _traces(fig, frame):
    data = [t.to_plotly_json() for t in fig.data]
    if frame is None:
        return data
    fr = fig.frames[frame]
    idx = list(fr.traces) if fr.traces is not None else list(range(len(fr.data)))
    for i, t in zip(idx, fr.data):
        data[i] = _merge(data[i], t.to_plotly_json())
    return data


def _title(obj):
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get("text")
    return getattr(obj, "text", obj if isinstance(obj, str) else None)


def _arr(v):
    return None if v is None else np.asarray(v, dtype=float)


def _rect(domain_x, domain_y):
    x0, x1 = domain_x or (0.0, 1.0)
    y0, y1 = domain_y or (0.0, 1.0)
    # leave room for tick labels and titles
    pad_l, pad_b, pad_r, pad_t = 0.08, 0.1, 0.12, 0.1
    w, h = x1 - x0, y1 - y0
    return [x0 + pad_l * w, y0 + pad_b * h, w * (1 - pad_l - pad_r), h * (1 - pad_b - pad_t)]


def plotly_to_matplotlib(fig, *, frame: int | None = None):
    """Draw a plotly figure's traces with matplotlib.

    Parameters
    ----------
    fig : plotly.graph_objects.Figure
    frame : int, optional
        Draw the figure as it looks at animation frame ``frame``.

    Returns
    -------
    matplotlib.figure.Figure
        A new figure (no pyplot state), the size of the plotly layout at 100 dpi.
    """
    from matplotlib.figure import Figure

    layout = fig.layout
    width, height = (layout.width or 800) / 100, (layout.height or 600) / 100
    mfig = Figure(figsize=(width, height))
    axes = {}

    def axes_for(trace):
        if trace["type"] in ("scatter3d", "surface", "isosurface", "volume", "mesh3d"):
            key = trace.get("scene", "scene")
            if key not in axes:
                sc = layout[key] if key in layout else None
                dom = sc.domain if sc is not None else None
                rect = _rect(dom.x if dom else None, dom.y if dom else None)
                ax = mfig.add_axes(rect, projection="3d")
                if sc is not None:
                    ax.set_xlabel(_title(sc.xaxis.title) or "")
                    ax.set_ylabel(_title(sc.yaxis.title) or "")
                    ax.set_zlabel(_title(sc.zaxis.title) or "")
                axes[key] = ax
            return axes[key]
        xa, ya = trace.get("xaxis", "x"), trace.get("yaxis", "y")
        key = (xa, ya)
        if key not in axes:
            xl = layout["xaxis" + xa[1:]]
            yl = layout["yaxis" + ya[1:]]
            ax = mfig.add_axes(_rect(xl.domain, yl.domain))
            ax.set_xlabel(_title(xl.title) or "")
            ax.set_ylabel(_title(yl.title) or "")
            if xl.type == "log":
                ax.set_xscale("log")
            if yl.type == "log":
                ax.set_yscale("log")
            if xl.range is not None:
                ax.set_xlim(*xl.range)
            if yl.range is not None:
                ax.set_ylim(*yl.range)
            axes[key] = ax
        return axes[key]

    skipped = []
    for t in _traces(fig, frame):
        kind = t["type"]
        draw = _DRAW.get(kind)
        if draw is None:
            skipped.append(kind)
            continue
        draw(axes_for(t), t)
    for ax in axes.values():
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7, loc="upper left")
    # subplot titles are annotations in plotly
    for ann in layout.annotations or ():
        if ann.xref == "paper" and ann.yref == "paper" and ann.text:
            mfig.text(ann.x, ann.y, ann.text, ha="center", va="bottom", fontsize=9)
    title = _title(layout.title)
    if frame is not None and fig.frames[frame].layout is not None:
        title = _title(fig.frames[frame].layout.title) or title
    if title:
        mfig.suptitle(title.replace("<br>", "\n"), fontsize=11)
    if skipped:
        mfig.text(0.01, 0.01, f"not drawn: {sorted(set(skipped))}", fontsize=7)
    return mfig


def _label(t):
    if t.get("showlegend") is False or not t.get("name"):
        return None
    return t["name"]


def _scatter(ax, t):
    x, y = _arr(t.get("x")), _arr(t.get("y"))
    if y is None:
        return
    if x is None:
        x = np.arange(len(y))
    mode = t.get("mode", "lines+markers")
    line, marker = t.get("line", {}), t.get("marker", {})
    dash = {"dash": "--", "dot": ":", "dashdot": "-."}.get(line.get("dash"), "-")
    color = _css(line.get("color") or (marker.get("color") if isinstance(marker.get("color"), str) else None))
    label = _label(t)
    if "lines" in mode:
        ax.plot(x, y, dash, color=color, linewidth=line.get("width", 2) / 1.5, label=label)
        label = None
    if "markers" in mode:
        c = marker.get("color")
        if isinstance(c, (list, tuple, np.ndarray)):
            ax.scatter(x, y, c=np.asarray(c, float), cmap=_cmap(marker.get("colorscale"), "plasma"),
                       s=max(4, marker.get("size", 6)) ** 2 / 3, label=label, zorder=3)
        else:
            ax.scatter(x, y, color=_css(c) if c else color, s=max(4, marker.get("size", 6)) ** 2 / 3,
                       label=label, zorder=3, marker="*" if marker.get("symbol") == "star" else "o")
    if "text" in mode and t.get("text") is not None:
        for xi, yi, s in zip(x, y, np.atleast_1d(t["text"])):
            ax.annotate(str(s), (xi, yi), fontsize=7)


def _scatter3d(ax, t):
    x, y, z = _arr(t.get("x")), _arr(t.get("y")), _arr(t.get("z"))
    mode = t.get("mode", "lines+markers")
    line, marker = t.get("line", {}), t.get("marker", {})
    label = _label(t)
    if "lines" in mode:
        ax.plot(x, y, z, color=_css(line.get("color", "red")), linewidth=1.5, label=label)
        label = None
    if "markers" in mode:
        c = marker.get("color")
        if isinstance(c, (list, tuple, np.ndarray)) and not isinstance(c[0], str):
            ax.scatter(x, y, z, c=np.asarray(c, float), cmap=_cmap(marker.get("colorscale"), "plasma"),
                       s=max(2, marker.get("size", 4)) ** 2 / 2, label=label, depthshade=False)
        else:
            ax.scatter(x, y, z, c=_css(c) if isinstance(c, str) else None,
                       s=max(2, marker.get("size", 4)) ** 2 / 2, label=label, depthshade=False)


def _surface(ax, t):
    z = _arr(t.get("z"))
    x = _arr(t.get("x")) if t.get("x") is not None else np.arange(z.shape[1])
    y = _arr(t.get("y")) if t.get("y") is not None else np.arange(z.shape[0])
    if x.ndim == 1:
        x, y = np.meshgrid(x, y)
    color = _arr(t.get("surfacecolor"))
    cmap = _cmap(t.get("colorscale"))
    if color is not None:
        from matplotlib import colormaps
        from matplotlib.colors import Normalize

        finite = color[np.isfinite(color)]
        norm = Normalize(finite.min(), finite.max()) if finite.size else Normalize(0, 1)
        cm = colormaps[cmap] if isinstance(cmap, str) else cmap
        faces = cm(norm(np.nan_to_num(color, nan=finite.min() if finite.size else 0)))
        ax.plot_surface(x, y, np.ma.masked_invalid(z), facecolors=faces, shade=False, alpha=0.9)
        return
    ax.plot_surface(x, y, np.ma.masked_invalid(z), cmap=cmap, linewidth=0, antialiased=False, alpha=0.9)
    proj = (t.get("contours") or {}).get("z", {})
    if proj.get("show") and np.isfinite(z).any():
        floor = float(np.nanmin(z))
        ax.contour(x, y, np.ma.masked_invalid(z), levels=12, zdir="z", offset=floor, cmap=cmap)


def _contour(ax, t):
    z = np.ma.masked_invalid(_arr(t.get("z")))
    x = _arr(t.get("x")) if t.get("x") is not None else np.arange(z.shape[1])
    y = _arr(t.get("y")) if t.get("y") is not None else np.arange(z.shape[0])
    cmap = _cmap(t.get("colorscale"))
    if z.count() == 0:
        return
    filled = (t.get("contours") or {}).get("coloring", "fill") != "lines"
    (ax.contourf if filled else ax.contour)(x, y, z, levels=20, cmap=cmap)


def _heatmap(ax, t):
    z = np.ma.masked_invalid(_arr(t.get("z")))
    x = _arr(t.get("x")) if t.get("x") is not None else np.arange(z.shape[1])
    y = _arr(t.get("y")) if t.get("y") is not None else np.arange(z.shape[0])
    ax.pcolormesh(x, y, z, cmap=_cmap(t.get("colorscale")), shading="auto")


def _isosurface(ax, t):
    x, y, z, v = (_arr(t.get(k)) for k in ("x", "y", "z", "value"))
    lo = t.get("isomin", np.nanmin(v))
    hi = t.get("isomax", np.nanmax(v))
    keep = np.isfinite(v) & (v >= lo) & (v <= hi)
    ax.scatter(x[keep], y[keep], z[keep], c=v[keep], cmap=_cmap(t.get("colorscale")), s=4,
               alpha=0.35, depthshade=False)


_DRAW = {"scatter": _scatter, "scattergl": _scatter, "scatter3d": _scatter3d, "surface": _surface,
         "contour": _contour, "heatmap": _heatmap, "isosurface": _isosurface, "volume": _isosurface}
