"""Can a PCA picture be trusted? Each snapshot's distance from the PCA plane beside the share of
the trajectory's variance the plane explains."""

from __future__ import annotations

import numpy as np

from ._common import check_path, new_figure, path_unit, require
from ._display import displays

__all__ = ["pca_fidelity"]


@displays
def pca_fidelity(coords, residuals, explained_variance_ratio, *, path_label: str | None = None,
                 title: str | None = "How much of the path the PCA plane shows") -> np.ndarray:
    """Explained variance per component, and every snapshot's distance from the plane against its
    distance within it.

    A PCA plane shows the path faithfully when the first two components explain
    most of its variance *and* every snapshot lies near the plane compared with
    how far it moved within it; otherwise the contours under a marker are not the
    loss of that snapshot.

    Parameters
    ----------
    coords : array of shape (T, 2)
        Plane coordinates of the snapshots (:func:`fastscape.project`), the
        origin at (0, 0).
    residuals : array of shape (T,)
        Each snapshot's distance from the plane, in the same parameter units
        (``fastscape.project(..., return_residuals=True)``).
    path_label : str, optional
        The x axis: what a snapshot is. Default: the unit ``coords`` carry
        ("epoch" for a :func:`fastscape.train` trajectory, plotted at its epoch
        numbers), else "recorded snapshot".
    explained_variance_ratio : array of shape (k,)
        Share of the trajectory's variance per principal component (the first
        two span the plane), e.g. ``directions.info["explained_variance_ratio"]``.

    Returns
    -------
    ndarray of 2 Axes
        Left: bars per component (the plane's two highlighted) and a bar for the
        rest (1 - sum). Right: lines ``"within the plane"`` (``|coords_t|``) and
        ``"off the plane"`` (``residuals_t``) against the snapshot index.
    """
    require("matplotlib", "`fastscape.plot.pca_fidelity`")
    path_label, counts = path_unit(coords, path_label)
    c = check_path(coords, name="coords")
    r = np.asarray(residuals, dtype=float).reshape(-1)
    if r.shape[0] != c.shape[0]:
        raise ValueError(f"`residuals` must hold one distance per snapshot ({c.shape[0]}); got {r.shape[0]}.")
    ev = np.asarray(explained_variance_ratio, dtype=float).reshape(-1)
    if ev.size < 2 or np.any(ev < 0) or ev.sum() > 1 + 1e-6:
        raise ValueError("`explained_variance_ratio` must hold at least two shares in [0, 1] summing to at most 1; "
                         f"got {ev.tolist()}.")
    fig = new_figure((10.0, 4.0))
    left, right = fig.subplots(1, 2, width_ratios=(1, 2))
    names = [f"PC{i + 1}" for i in range(ev.size)] + ["rest"]
    shares = np.append(ev, max(0.0, 1.0 - ev.sum()))
    colors = ["#1f77b4", "#1f77b4"] + ["#9ecae1"] * (ev.size - 2) + ["#d9d9d9"]
    bars = left.bar(names, 100 * shares, color=colors, edgecolor="k", linewidth=0.6)
    left.bar_label(bars, labels=[f"{100 * s:.1f}%" for s in shares], fontsize=8, padding=2)
    left.set_ylabel("share of the path's variance (%)")
    left.set_ylim(0, 110)
    left.set_title(f"the plane (PC1 + PC2) explains {100 * ev[:2].sum():.1f}%", fontsize=10)
    t = np.arange(len(c)) if counts is None else counts
    right.plot(t, np.hypot(c[:, 0], c[:, 1]), color="#1f77b4", linewidth=1.8, label="within the plane")
    right.plot(t, r, color="#d62728", linewidth=1.8, linestyle="--", label="off the plane")
    right.set_xlabel(path_label)
    right.set_ylabel("distance (parameter units)")
    right.legend(fontsize=8, frameon=False)
    right.set_ylim(bottom=0)
    if title:
        fig.suptitle(title)
    return np.array([left, right], dtype=object)
