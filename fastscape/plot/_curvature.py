"""Curvature views: the Hessian spectral density, the convexity map, sharpness against
generalisation, and the top eigenvalue along training against ``2 / lr``.

Each takes data only (a :class:`fastscape.curvature.SpectralDensity`, a curvature
:class:`fastscape.Surface`, arrays), draws into ``ax=`` or a new figure, and
returns the Axes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from ._common import axis_titles, check_surface, new_axes, require
from ._display import displays

if TYPE_CHECKING:  # the return annotations only
    from matplotlib.axes import Axes

__all__ = ["curvature_map", "edge_of_stability", "sharpness_generalization", "spectral_density"]


@displays
def spectral_density(density, *, ax=None, top: int = 5, floor: float = 1e-8, label: str | None = None) -> Axes:
    """The Hessian eigenvalue density on a log scale, the top eigenvalues marked.

    Parameters
    ----------
    density : SpectralDensity
        From :func:`fastscape.curvature.hessian_density` (``grid``, ``density``, ``top()``).
    ax : matplotlib Axes, optional
        Drawn into when given; otherwise a new figure (no pyplot).
    top : int
        How many of the largest Ritz values to mark (dotted lines); 0 for none.
    floor : float
        Densities below it are drawn at it (a log axis has no zero).
    label : str, optional
        Legend label of the density curve (for several densities on one Axes).

    Returns
    -------
    matplotlib.axes.Axes
    """
    require("matplotlib", "`fastscape.plot.spectral_density`")
    for attr in ("grid", "density", "top"):
        if not hasattr(density, attr):
            raise TypeError(f"`density` must be a SpectralDensity (from hessian_density); got {type(density).__name__}.")
    if ax is None:
        ax = new_axes((6.4, 4.2))
    (curve,) = ax.semilogy(density.grid, np.maximum(density.density, floor), lw=1.4, label=label)
    if top:
        for i, lam in enumerate(density.top(top)):
            ax.axvline(lam, color=curve.get_color(), ls=":", lw=1.0,
                       label=f"top {top} Ritz values" if i == 0 and label is None else None)
    ax.set_xlabel(r"eigenvalue $\lambda$ of the Hessian")
    ax.set_ylabel("density (log scale)")
    ax.set_ylim(bottom=floor)
    ax.legend(loc="upper center", fontsize=8)
    return ax


#: colour-bar labels of the curvature values, in mathtext
LABELS = {"ratio": r"$|\lambda_{\min} / \lambda_{\max}|$", "lambda_max": r"$\lambda_{\max}$",
          "lambda_min": r"$\lambda_{\min}$", "trace": r"$\mathrm{tr}\,H$"}


@displays
def curvature_map(surface, *, value: str = "ratio", ax=None, levels=20, cmap: str = "viridis",
                  zero_line: bool = True, title: str | None = None, norm=None, colorbar: bool = True) -> Axes:
    """A curvature value over a plane, with the line where the smallest eigenvalue crosses zero.

    Li et al. (NeurIPS 2018, Fig. 9) map ``|lambda_min / lambda_max|``: near 0 where the
    loss is locally convex, larger where negative curvature matters. The dashed line
    ``lambda_min = 0`` bounds the locally convex region; crosses mark the points whose
    Lanczos run stopped at ``max_iter`` before ``tol`` (metric ``converged`` = 0).

    Parameters
    ----------
    surface : Surface along two directions
        From :func:`fastscape.curvature.curvature_surface` (metrics ``ratio``,
        ``lambda_min``, ...).
    value : str
        The value filled: ``"ratio"`` (default), ``"lambda_max"``, ``"lambda_min"``, ``"trace"``.
    ax : matplotlib Axes, optional
    levels : int or array of float
        Number of filled contour levels, or the level boundaries themselves (several panels
        on one colour scale: pass the same boundaries and ``norm`` to each).
    zero_line : bool
        Draw ``lambda_min = 0`` (when the surface has ``lambda_min`` and it changes sign).
    title : str, optional
    norm : matplotlib Normalize, optional
        A colour scale shared with other panels; default: this surface's own range.
    colorbar : bool
        Draw this panel's colour bar (False when one bar serves several panels).

    Returns
    -------
    matplotlib.axes.Axes
    """
    require("matplotlib", "`fastscape.plot.curvature_map`")
    check_surface(surface, 2, "curvature_map")
    v = surface.value(value)
    if ax is None:
        ax = new_axes((6.4, 5.4))
    X, Y = surface.coords
    z = np.ma.masked_invalid(np.asarray(v.data, dtype=float).T)
    cs = ax.contourf(X, Y, z, levels=levels, cmap=cmap, norm=norm)
    if colorbar:
        ax.figure.colorbar(cs, ax=ax, label=LABELS.get(value, v.label))
    if zero_line and "lambda_min" in surface.metrics:
        lam = np.ma.masked_invalid(np.asarray(surface.metrics["lambda_min"], dtype=float).T)
        if lam.min() < 0 < lam.max():
            ax.contour(X, Y, lam, levels=[0.0], colors="w", linestyles="--", linewidths=1.5)
            ax.plot([], [], "w--", label=r"$\lambda_{\min} = 0$")
        elif lam.count():  # no zero line to draw: say why
            sign = "< 0" if lam.max() < 0 else "> 0" if lam.min() > 0 else "= 0"
            ax.text(0.02, 0.02, rf"$\lambda_{{\min}}$ {sign} at every point", transform=ax.transAxes, fontsize=8,
                    color="w", bbox={"facecolor": "0.3", "alpha": 0.6, "lw": 0})
    missed = np.asarray(surface.metrics.get("converged", np.ones(np.shape(v.data))), dtype=float) == 0
    if missed.any():  # values there are the last Ritz values, not converged to `tol`
        a, b = np.meshgrid(X, Y, indexing="ij")
        ax.plot(a[missed], b[missed], "x", color="0.85", ms=5, mew=1.2, ls="none",
                label=f"stopped at max_iter ({int(missed.sum())})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8, facecolor="0.5", framealpha=0.6)  # marks beneath stay visible
    ax.plot(0, 0, "k+", ms=10)
    xl, yl = axis_titles(surface)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    if title:
        ax.set_title(title)
    return ax


@displays
def sharpness_generalization(sharpness: Mapping[str, float], generalization: Mapping[str, float], *, ax=None,
                             xlabel: str = "sharpness",
                             ylabel: str = "generalisation gap (train − test accuracy)") -> Axes:
    """Sharpness against test accuracy or the generalisation gap, one labelled point per model
    (Keskar et al., ICLR 2017, Fig. 4).

    Parameters
    ----------
    sharpness : dict label -> float
        One sharpness value per trained model (e.g. :func:`fastscape.curvature.epsilon_sharpness`).
    generalization : dict label -> float
        The same labels: test accuracy or generalisation gap.
    ax : matplotlib Axes, optional
    xlabel, ylabel : str

    Returns
    -------
    matplotlib.axes.Axes
    """
    require("matplotlib", "`fastscape.plot.sharpness_generalization`")
    if not isinstance(sharpness, Mapping) or not isinstance(generalization, Mapping):
        raise TypeError("`sharpness` and `generalization` must be dicts label -> float.")
    missing = sorted(set(sharpness) ^ set(generalization))
    if missing:
        raise ValueError(f"`sharpness` and `generalization` must have the same labels; unmatched: {missing}.")
    if ax is None:
        ax = new_axes((6.0, 4.4))
    xs = [float(sharpness[label]) for label in sharpness]
    lo, span = min(xs), (max(xs) - min(xs)) or 1.0
    for label in sharpness:
        x, y = float(sharpness[label]), float(generalization[label])
        ax.scatter([x], [y], s=40, zorder=3)
        # above its point: centred, or running inward from a point near a side (never into the frame,
        # never sideways into a neighbour at the same height)
        f = (x - lo) / span
        ha = "left" if f < 0.2 else "right" if f > 0.8 else "center"
        ax.annotate(str(label), (x, y), textcoords="offset points", xytext=(0, 6), ha=ha, va="bottom",
                    fontsize=8)
    ax.margins(0.2)  # room for the labels beside the points
    ax.xaxis.set_major_locator(require("matplotlib.ticker").MaxNLocator(4))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return ax


@displays
def edge_of_stability(steps, top_eigenvalues, lr: float, *, ax=None, xlabel: str = "training step",
                      label: str = r"top Hessian eigenvalue $\lambda_{\max}$") -> Axes:
    """The top Hessian eigenvalue along training next to the ``2 / lr`` line.

    Cohen, Kaur, Li, Kolter and Talwalkar, "Gradient Descent on Neural Networks
    Typically Occurs at the Edge of Stability", ICLR 2021: under full-batch gradient
    descent with step ``lr``, ``lambda_max`` rises to about ``2 / lr`` and hovers there.

    Parameters
    ----------
    steps : array of shape (T,)
        Where along training each eigenvalue was measured.
    top_eigenvalues : array of shape (T,)
        E.g. :func:`fastscape.curvature.hessian_eigenpairs` at each snapshot.
    lr : float
        The learning rate; the dashed line is ``2 / lr``.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    require("matplotlib", "`fastscape.plot.edge_of_stability`")
    s, lam = np.asarray(steps, dtype=float), np.asarray(top_eigenvalues, dtype=float)
    if s.ndim != 1 or s.shape != lam.shape:
        raise ValueError(f"`steps` and `top_eigenvalues` must be 1-D of the same length; got shapes "
                         f"{s.shape} and {lam.shape}.")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"`lr` must be a positive number; got {lr!r}.")
    if ax is None:
        ax = new_axes((6.4, 4.0))
    ax.plot(s, lam, "o-", ms=3, label=label)
    ax.axhline(2.0 / lr, color="k", ls="--", lw=1.0, label=f"2 / lr = {2.0 / lr:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("eigenvalue")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return ax
