"""Several optimizers' paths on one shared plane (:func:`fastscape.compare_optimizers`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._common import require
from ._contour import contour
from ._marks import legend_below
from ._display import displays

if TYPE_CHECKING:  # the return annotations only
    from matplotlib.axes import Axes

__all__ = ["optimizer_comparison", "RUN_COLORS", "RUN_DASHES", "BACKGROUND", "OFF_PLANE", "off_plane_share"]

#: run colours: matplotlib's qualitative ``tab10`` palette in its order, so neighbouring runs get
#: hues far apart (blue, orange, green, red, ...); each drawn with a dark outline, and over a
#: grey map of the loss (:data:`BACKGROUND`) so no run's colour is also a loss colour.
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
              "#bcbd22", "#17becf")
#: the loss under several runs: matplotlib's ``Greys`` from white (low loss) to a mid grey (high loss), so every
#: run's colour reads on it and none is also a loss colour; ``cmap=`` overrides it
BACKGROUND = ("Greys", 0.0, 0.55)


def _background():
    from matplotlib import colormaps
    from matplotlib.colors import LinearSegmentedColormap

    name, lo, hi = BACKGROUND
    return LinearSegmentedColormap.from_list(f"{name}_{lo}_{hi}", colormaps[name](np.linspace(lo, hi, 256)))
#: one dash pattern per run, so a run on another's track still shows through its gaps
RUN_DASHES = ("-", (0, (5, 2)), (0, (1.5, 1.5)), (0, (6, 2, 1.5, 2)), (0, (3, 3)), (0, (8, 3)))
#: an end point is drawn hollow when more than this share of its distance from the origin lies off the plane
OFF_PLANE = 0.5


def off_plane_share(coords: np.ndarray, residual: float) -> float:
    """Share of a point's distance from the plane's origin that the plane misses: r / sqrt(|c|^2 + r^2).

    ``coords`` are its plane coordinates along orthonormal directions (PCA's),
    ``residual`` its distance from the plane (:func:`fastscape.project`).
    """
    total = float(np.hypot(np.linalg.norm(coords), residual))
    return float(residual) / total if total > 0 else 0.0


@displays
def optimizer_comparison(comparison, surface, *, ax=None, title: str | None = None, **contour_kw) -> Axes:
    """Contours of the shared plane with every optimizer's path, each in its own colour.

    Parameters
    ----------
    comparison : OptimizerComparison
        From :func:`fastscape.compare_optimizers` (``coords``: name -> (T, 2) path,
        ``explained_variance_ratio``).
    surface : Surface
        The plane's surface, e.g. ``comparison.loss_surface(data, loss_fn=...)``.
    ax : matplotlib Axes, optional
    contour_kw :
        Passed to :func:`contour` (``value=``, ``levels=``, ``axis_labels=`` ...).

    Returns
    -------
    matplotlib.axes.Axes
        The loss in greys (:data:`BACKGROUND`; ``cmap=`` overrides it) under one
        line per run (labelled with its name and, when the comparison holds
        residuals, its end's distance from the plane), each with its own
        colour of the qualitative ``tab10`` palette (:data:`RUN_COLORS`) and dash, ending in a star of its colour: filled when the end
        lies near the plane, hollow when more than :data:`OFF_PLANE` of its
        distance from the origin is off the plane (there, the contours under
        the star do not give its loss); a start shared by every run is one neutral marker
        (``"shared start"``), otherwise each run's start is a circle of its colour.
        The legend sits under the Axes.
    """
    require("matplotlib", "`fastscape.plot.optimizer_comparison`")
    from matplotlib import patheffects

    coords = getattr(comparison, "coords", None)
    if not isinstance(coords, dict) or not coords:
        raise TypeError("`comparison` must be the result of fastscape.compare_optimizers; got "
                        f"{type(comparison).__name__}.")
    ratio = getattr(comparison, "explained_variance_ratio", None)
    if ratio is not None and "axis_labels" not in contour_kw:
        contour_kw["axis_labels"] = tuple(f"PC{i + 1} ({100 * r:.1f}% of variance)" for i, r in enumerate(ratio[:2]))
    contour_kw.setdefault("legend", False)
    contour_kw.setdefault("cmap", _background())
    ax = contour(surface, ax=ax, title=title, **contour_kw)
    paths = {name: np.asarray(c, dtype=float) for name, c in coords.items()}
    starts = np.array([c[0] for c in paths.values()])
    scale = max(float(np.ptp(np.concatenate(list(paths.values())), axis=0).max()), 1e-12)
    shared = bool(np.all(np.abs(starts - starts[0]) <= 1e-6 * scale))
    residuals = getattr(comparison, "residuals", None) or {}
    for i, (name, c) in enumerate(paths.items()):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        label, far = name, False
        if name in residuals and len(residuals[name]):
            r = float(np.asarray(residuals[name], dtype=float)[-1])
            far = off_plane_share(c[-1], r) > OFF_PLANE
            label = f"{name} (end {r:.3g} off the plane)"
        # earlier runs drawn wider, so a later run on the same track leaves them visible at its sides
        lw = 1.6 + 1.0 * (len(paths) - 1 - i)
        outline = [patheffects.Stroke(linewidth=lw + 1.6, foreground="black"), patheffects.Normal()]
        ax.plot(c[:, 0], c[:, 1], color=color, lw=lw, ls=RUN_DASHES[i % len(RUN_DASHES)], label=label, zorder=4,
                path_effects=outline)
        if not shared:
            ax.plot(c[0, 0], c[0, 1], "o", color=color, mec="k", ms=7, zorder=5)
        # earlier runs' end stars larger too, so a later run ending at the same place leaves a rim of them
        ms = 13 + 4 * (len(paths) - 1 - i)
        ax.plot(c[-1, 0], c[-1, 1], "*", color="none" if far else color, mec=color if far else "k",
                mew=2.5 if far else 1.0, ms=ms + 2 if far else ms, zorder=6 + 0.01 * i)
    if shared:
        ax.plot(*starts[0], "o", color="white", mec="k", mew=1.5, ms=9, zorder=7, label="shared start")
    legend_below(ax, ncols=len(paths) + int(shared))
    return ax
