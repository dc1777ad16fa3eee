"""Several planes side by side on one shared colour scale, with one colour bar (the
comparisons of Li et al. 2018: small vs large batch; random vs Hessian vs three-model plane)."""

from __future__ import annotations

from collections.abc import Mapping
import numpy as np

from ._common import check_surface, finite, new_figure, require, resolve_value
from ._contour import contour, levels_for, round_ticks, tidy_colorbar
from ._display import displays

__all__ = ["contour_grid"]


def _panels(surfaces) -> list[tuple[str | None, object]]:
    if isinstance(surfaces, Mapping):
        items = [(str(k), s) for k, s in surfaces.items()]
    elif isinstance(surfaces, (list, tuple)):
        items = [(None, s) for s in surfaces]
    else:
        raise TypeError("`surfaces` must be a list of Surfaces along two directions or a dict title -> Surface; "
                        f"got {type(surfaces).__name__}.")
    if not items:
        raise ValueError("`surfaces` is empty; expected at least one Surface along two directions.")
    for _, s in items:
        check_surface(s, 2, "contour_grid")
    return items


@displays
def contour_grid(surfaces, *, value: str = "loss", ncols: int | None = None, log: bool = True, levels: int = 30,
                 panel_kw: Mapping[str, Mapping] | None = None, figsize=None, cmap: str = "viridis",
                 equal: bool = False, **contour_kw) -> np.ndarray:
    """Planes side by side, every panel on the same colour scale, with one colour bar for all.

    Parameters
    ----------
    surfaces : list of Surface, or dict title -> Surface
        Each along two directions; a dict's keys title the panels.
    value : str
        ``"loss"`` or a metric, as in :func:`contour`; the same for every panel.
    ncols : int, optional
        Panels per row (default: all in one row, up to 4).
    log : bool
        Log levels when the shared range of a loss spans more than a factor 20.
    levels : int
        Number of filled levels over the shared range.
    panel_kw : dict title -> dict, optional
        Extra :func:`contour` arguments for one panel (``points=``, ``path=``,
        ``axis_labels=``); with a list of surfaces, keyed by position as a string.
    equal : bool
        Equal aspect in every panel (distances along both axes alike).
    contour_kw :
        Passed to :func:`contour` for every panel (``labels=``, ``minimum=`` ...).

    Returns
    -------
    ndarray of Axes, shape (rows, ncols)
        Unused panels are hidden. Every panel's filled contours share one norm
        and one set of levels (the union of the panels' finite values), so one
        colour means one value in every panel; the single colour bar sits at the
        right of the last column.
    """
    require("matplotlib", "`fastscape.plot.contour_grid`")
    items = _panels(surfaces)
    values = [resolve_value(s, value) for _, s in items]
    finite_vals = np.concatenate([finite(v.array)[np.isfinite(finite(v.array))] for v in values])
    if finite_vals.size == 0:
        raise ValueError(f"`surfaces` hold no finite {value!r} to draw.")
    lv, norm, is_log = levels_for(float(finite_vals.min()), float(finite_vals.max()), levels,
                                  log and values[0].is_loss)
    if norm is None:
        from matplotlib.colors import Normalize

        lim = values[0].limits
        norm = Normalize(*(lim if lim is not None else (lv[0], lv[-1])))
    n = len(items)
    ncols = min(n, 4) if ncols is None else int(ncols)
    if ncols < 1:
        raise ValueError(f"`ncols` must be a positive integer; got {ncols!r}.")
    nrows = -(-n // ncols)
    fig = new_figure(figsize or (4.2 * ncols + 1.2, 3.9 * nrows + 0.6))
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    panel_kw = dict(panel_kw or {})
    for k, ((title, s), ax) in enumerate(zip(items, axes.flat)):
        kw = {**contour_kw, **panel_kw.get(title if title is not None else str(k), {})}
        kw.setdefault("title", title)
        contour(s, value=value, ax=ax, levels=lv, log=log, norm=norm, colorbar=False, cmap=cmap, **kw)
        if equal:
            ax.set_aspect("equal")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    from matplotlib.contour import QuadContourSet

    # the first panel's filled set: the shared levels and norm, so the bar shows the same bands
    mappable = next(c for c in axes.flat[0].collections if isinstance(c, QuadContourSet) and c.filled)
    label = values[0].label if len(items) == 1 or all(v.label == values[0].label for v in values) else value
    cb = fig.colorbar(mappable, ax=axes[:, :].ravel().tolist(), label=label + (" (log scale)" if is_log else ""),
                      shrink=0.9)
    tidy_colorbar(cb, round_ticks(float(lv[0]), float(lv[-1]), is_log))
    return axes
