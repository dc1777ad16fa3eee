"""Small helpers shared by the figure modules: input checks, gaps, labels, clipping."""

from __future__ import annotations

import numpy as np

__all__ = ["finite", "check_surface", "check_path", "axis_titles", "auto_zmax", "new_axes"]


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
    arr = np.asarray(path, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != k or arr.shape[0] < 1:
        raise ValueError(f"`{name}` must have shape (T, {k}) of plane coordinates; got {arr.shape}.")
    return arr


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


def axis_titles(surface, axis_labels=None, explained_variance=None) -> list[str]:
    """One title per direction of ``surface``.

    ``axis_labels`` wins; otherwise the raw parameter names of axis directions
    (``surface.meta["directions"]["names"]``), else ``"direction i"``. When PCA
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
        else:
            labels = [f"direction {i + 1}" for i in range(k)]
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


def new_axes(figsize=(6.4, 5.0), projection=None):
    """A fresh Axes on a ``matplotlib.figure.Figure`` (no pyplot, no backend switch)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained").add_subplot(projection=projection)
