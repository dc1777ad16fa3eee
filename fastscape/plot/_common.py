"""Pieces every view shares: lazy imports of the drawing libraries, input checks,
the value a view draws (loss or a metric) with its label and scale, axis titles,
clipping of huge peaks, and the native matplotlib form a plotly view carries.

Nothing here imports matplotlib, plotly, kaleido or Pillow at module level: the
core of fastscape runs without them, and a view that needs one says which extra
to install.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .. import _optional

__all__ = ["require", "finite", "check_surface", "check_path", "check_points", "Value", "resolve_value",
           "axis_titles", "auto_zmax", "new_axes", "new_figure", "MplForm", "attach_mpl", "mpl_form",
           "check_backend", "BACKENDS", "PATH_LABEL", "path_unit", "LOG_SPAN",
           "use_log"]

#: what the colour of a path's markers counts when neither the caller nor the path says
#: (a path from ``fastscape.project`` of a ``train()`` trajectory says "epoch").
PATH_LABEL = "recorded snapshot"


def path_unit(path, path_label: str | None = None) -> tuple[str, np.ndarray | None]:
    """What a path's points count, and each point's count: ``(label, counts)``.

    The label is ``path_label`` when given; otherwise the unit the path carries
    (``path.unit`` of what :func:`fastscape.project` returns: "epoch" for a
    ``train()`` trajectory, "step"); otherwise :data:`PATH_LABEL`. ``counts``
    are the path's own epoch or step numbers (``path.counts``) when the label
    is its unit, else None: the views then number the points 0, 1, 2, ..., so
    a caller's own label never sits over numbers of another unit. Read it
    before :func:`check_path`, which keeps only the coordinates.
    """
    if path_label is not None and not isinstance(path_label, str):
        raise TypeError(f"`path_label` must be a string such as 'epoch', or None to read it from the path; "
                        f"got {path_label!r}.")
    unit, counts = getattr(path, "unit", None), getattr(path, "counts", None)
    if counts is not None:
        counts = np.asarray(counts).reshape(-1)
        if unit is None or len(counts) != len(path) or (path_label is not None and path_label != unit):
            unit = counts = None
    return (path_label or (f"{unit}" if unit else PATH_LABEL)), counts

#: every view's ``log=True`` (the default) draws a loss on a log scale when its finite positive values
#: span more than this factor; a narrower range, a metric or a non-positive value stays linear.
LOG_SPAN = 20.0


def use_log(values, log: bool, is_loss: bool) -> bool:
    """The shared log rule: ``log`` asked, a loss, all finite values positive and spanning > LOG_SPAN."""
    if not (log and is_loss):
        return False
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return bool(v.size and v.min() > 0 and v.max() > LOG_SPAN * v.min())

#: the drawing libraries a view with a ``backend=`` argument can use.
BACKENDS = ("plotly", "matplotlib")


def require(module: str, what: str = "this view"):
    """Import ``module`` (e.g. ``"plotly.graph_objects"``) or raise an ImportError naming the ``plot`` extra."""
    return _optional.require(module, what=what)


def check_backend(backend: str, what: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"`backend` of `{what}` must be one of {list(BACKENDS)}; got {backend!r}.")
    return backend


def finite(z) -> np.ndarray:
    """A float64 copy with inf turned into NaN, which both libraries draw as gaps."""
    z = np.array(z, dtype=np.float64)
    z[~np.isfinite(z)] = np.nan
    return z


def check_surface(surface, ndim: int, what: str) -> None:
    if not (hasattr(surface, "coords") and hasattr(surface, "loss")):
        raise TypeError(f"`surface` must be a fastscape Surface; got {type(surface).__name__}.")
    if len(surface.coords) != ndim:
        raise ValueError(
            f"`{what}` needs a surface along {ndim} direction{'s' if ndim > 1 else ''}; "
            f"got one along {len(surface.coords)}."
        )


def check_path(path, k: int = 2, name: str = "path"):
    """``path`` as a float64 array of shape (T, k), or None."""
    if path is None:
        return None
    if hasattr(path, "matrix") and hasattr(path, "names"):  # a Trajectory: weights, not plane coordinates
        raise TypeError(f"`{name}` must be plane coordinates of shape (T, {k}); got a {type(path).__name__} of "
                        "parameter snapshots. Project it onto the surface's directions first: "
                        "`fastscape.project(trajectory, directions, origin=...)`, and pass the result "
                        "(or assign it to `surface.path`).")
    if isinstance(path, (list, tuple)) and path and isinstance(path[0], dict):
        raise TypeError(f"`{name}` must be plane coordinates of shape (T, {k}); got a list of state dicts. "
                        "Project them first: `fastscape.project(snapshots, directions, origin=...)`.")
    arr = np.asarray(path, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != k or arr.shape[0] < 1:
        raise ValueError(f"`{name}` must have shape (T, {k}) of plane coordinates; got {arr.shape}.")
    return arr


def check_points(points, k: int = 2) -> list[tuple[str, np.ndarray]] | None:
    """Named positions as ``[(label, coords of shape (k,))]``.

    ``points`` is a dict label -> coordinates, or an array of shape (n, k)
    whose rows are labelled "A", "B", "C", ... (the models of
    :func:`fastscape.interpolation_plane`, in the order given).
    """
    if points is None:
        return None
    if isinstance(points, dict):
        items = [(str(name), np.asarray(c, dtype=np.float64).reshape(-1)) for name, c in points.items()]
    else:
        arr = np.asarray(points, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != k:
            raise ValueError(
                f"`points` must be a dict label -> {k} coordinates or an array of shape (n, {k}); got "
                f"shape {arr.shape}."
            )
        items = [(_letter(i), row) for i, row in enumerate(arr)]
    for name, c in items:
        if c.shape != (k,):
            raise ValueError(f"`points[{name!r}]` must hold {k} plane coordinates; got shape {c.shape}.")
    if not items:
        raise ValueError("`points` is empty; give at least one named position.")
    return items


def _letter(i: int) -> str:
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(65 + r) + out
    return out


@dataclass(frozen=True)
class Value:
    """What a view draws: the array, its name, a label for axes and colour bars, and how to scale it.

    ``is_loss``: a loss, drawn on a log scale where the view allows it (a metric
    such as accuracy never is); ``limits``: a fixed colour range, e.g. (0, 1)
    for accuracy; ``best``: "min", "max" or None, where a best-point marker goes.
    """

    array: np.ndarray
    name: str
    label: str
    is_loss: bool
    limits: tuple[float, float] | None = None
    best: str | None = None


def _is_loss(name: str) -> bool:
    return name.rsplit("/", 1)[-1].endswith("loss")


def resolve_value(surface, value: str = "loss") -> Value:
    """The array a view draws from ``surface`` for ``value`` ("loss", "accuracy", "test/accuracy", ...).

    A surface with the ``value(name)`` accessor (:class:`fastscape.Surface`)
    answers itself: its data, label, log hint, colour limits and best side.
    Otherwise ``"loss"`` reads ``surface.loss`` and any other name
    ``surface.metrics[name]``.
    """
    if not isinstance(value, str) or not value:
        raise TypeError(f"`value` must be the name of a value of the surface, e.g. 'loss'; got {value!r}.")
    getter = getattr(surface, "value", None)
    if callable(getter):
        v = getter(value)  # the surface's own contract (raises ValueError for an unknown name)
        arr = np.asarray(v.data)
        out = Value(array=arr, name=v.name, label=v.label, is_loss=bool(v.log),
                    limits=None if v.limits is None else tuple(float(q) for q in v.limits), best=v.best)
    else:
        if value == "loss":
            arr = surface.loss
        else:
            metrics = getattr(surface, "metrics", None) or {}
            if value not in metrics:
                raise ValueError(
                    f"`value` must be 'loss' or a metric of the surface, one of {sorted(metrics)}; got {value!r}."
                )
            arr = metrics[value]
        arr = np.asarray(arr)
        metric = value.rsplit("/", 1)[-1]
        accuracy = metric in ("accuracy", "acc")
        out = Value(array=arr, name=value, label=value.replace("/", " "), is_loss=_is_loss(value),
                    limits=(0.0, 1.0) if accuracy else None,
                    best="min" if _is_loss(value) else ("max" if accuracy else None))
    if out.array.shape != np.shape(surface.loss):
        raise ValueError(f"`value` {value!r} has shape {out.array.shape}; the surface's grid is "
                         f"{np.shape(surface.loss)}.")
    return out


def _ratios(surface, explained_variance):
    if explained_variance is None:
        info = (getattr(surface, "meta", None) or {}).get("directions") or {}
        explained_variance = info.get("explained_variance_ratio", info.get("explained_variance"))
    if explained_variance is None:
        return None
    ev = np.asarray(explained_variance, dtype=float).reshape(-1)
    if np.any(ev < 0) or np.any(ev > 1):
        raise ValueError(
            "`explained_variance` must hold fractions in [0, 1], one per direction "
            f"(e.g. PCA's explained_variance_ratio_); got {ev.tolist()}."
        )
    return ev


#: what one unit along a direction is, by the normalisation recorded with the directions
_NORM_WORDS = {"filter": "filter-normalised direction", "layer": "layer-normalised direction",
               "model": "model-normalised direction"}


def _direction_word(info: dict) -> str:
    kind, norm = info.get("kind"), info.get("norm", "missing")
    if kind == "random":
        return _NORM_WORDS.get(norm, "unnormalised random direction" if norm is None else "random direction")
    if kind == "interpolation":
        return "interpolation coefficient"
    return "direction"


def axis_titles(surface, axis_labels=None, explained_variance=None) -> list[str]:
    """One title per direction of ``surface``.

    ``axis_labels`` wins; otherwise the raw parameter names of axis directions
    (``surface.meta["directions"]["names"]``), else ``"direction i"`` named for its
    scaling ("filter-normalised direction 1" for filter-normalised random directions). When PCA
    explained-variance ratios are given (``explained_variance=``) or recorded in
    ``surface.meta["directions"]["explained_variance_ratio"]``, each title gets
    ``" (xx.x% of variance)"`` unless it already says so.
    """
    k = len(surface.coords)
    if axis_labels is not None:
        labels = [str(v) for v in axis_labels]
        if len(labels) != k:
            raise ValueError(f"`axis_labels` must hold {k} labels, one per direction; got {len(labels)}.")
    else:
        info = (getattr(surface, "meta", None) or {}).get("directions") or {}
        names = info.get("names")
        if names is not None and len(names) == k:
            labels = [str(v) for v in names]
        elif info.get("kind") == "pca":
            labels = [f"PC{i + 1}" for i in range(k)]
        else:  # say how the direction was scaled: the axis' unit
            labels = [f"{_direction_word(info)} {i + 1}" for i in range(k)]
    ev = _ratios(surface, explained_variance)
    if ev is not None:
        if len(ev) < k:
            raise ValueError(f"`explained_variance` must hold {k} ratios, one per direction; got {len(ev)}.")
        # a label that already states its share (a caller's own wording) is kept as is
        labels = [lab if "% of variance" in lab else f"{lab} ({100 * r:.1f}% of variance)"
                  for lab, r in zip(labels, ev)]
    return labels


def auto_zmax(z: np.ndarray) -> float | None:
    """A clipping height for surfaces with huge peaks, or None when no clipping is needed.

    The spread of the bulk of the values is ``q95 - q05`` (finite values only);
    anything higher than ``q95 + 3 * spread`` is a peak that would flatten the
    rest of the picture. A smooth bowl never reaches that height, so it is
    left as it is.
    """
    v = z[np.isfinite(z)]
    if v.size < 4:
        return None
    q05, q95 = np.quantile(v, [0.05, 0.95])
    cap = q95 + 3.0 * (q95 - q05)
    return float(cap) if v.max() > cap and cap > v.min() else None


def log10_floor(v: np.ndarray) -> np.ndarray:
    """log10 of ``v`` with values <= 0 raised to the smallest positive one (NaN stays NaN)."""
    v = finite(v)
    pos = v[np.isfinite(v) & (v > 0)]
    floor = float(pos.min()) if pos.size else 1e-12
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log10(np.maximum(v, floor))


def new_figure(figsize=(6.4, 5.0)):
    """A ``matplotlib.figure.Figure`` with constrained layout (no pyplot, no backend switch)."""
    Figure = require("matplotlib.figure").Figure
    return Figure(figsize=figsize, layout="constrained")


def new_axes(figsize=(6.4, 5.0), projection=None):
    """A fresh Axes on a new :func:`new_figure`."""
    return new_figure(figsize).add_subplot(projection=projection)


def fmt(v: float) -> str:
    """A number as views print it: 3 significant digits, a true minus sign (as on the ticks)."""
    return f"{v:.3g}".replace("-", "\u2212")


# ----------------------------------------------------------------------------- the native form of a plotly view


@dataclass(frozen=True)
class MplForm:
    """How a plotly view draws itself natively with matplotlib (static files and GIF frames).

    ``make()`` returns ``(figure, update)``: a new matplotlib Figure showing the
    view, and ``update(i)`` which redraws it as animation frame ``frames[i]``
    (None for a still view). ``size`` is the pixel size kaleido should use for
    the plotly figure when the layout does not fix one; ``hold_ms`` how much
    longer a GIF shows its last frame (so its end can be read before it loops).
    """

    make: Callable[[], tuple[object, Callable[[int], None] | None]]
    frames: Sequence[int] = ()
    size: tuple[int, int] = (1000, 800)
    hold_ms: int = 0


def attach_mpl(fig, make, *, frames: Sequence[int] = (), size=(1000, 800), hold_ms: int = 0):
    """Record on plotly figure ``fig`` the matplotlib drawing of the same data; returns ``fig``.

    The record lives on the figure object the view returned (a copy made with
    ``go.Figure(fig)`` does not carry it).
    """
    fig._fastscape_mpl = MplForm(make=make, frames=tuple(frames), size=tuple(size), hold_ms=int(hold_ms))
    return fig


def mpl_form(fig) -> MplForm | None:
    return getattr(fig, "_fastscape_mpl", None)
