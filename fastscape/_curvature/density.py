"""The spectral density of the loss Hessian by stochastic Lanczos quadrature.

Ghorbani, Krishnan and Xiao, "An Investigation into Neural Net Optimization via
Hessian Eigenvalue Density", ICML 2019, Sec. 3: for a probe ``v`` with
``E[v v^T] = I`` and ``m`` Lanczos steps from ``v / ||v||``, the Ritz values
``theta_j`` and weights ``tau_j`` of the tridiagonal matrix give the Gauss
quadrature ``v^T f(H) v / ||v||^2 ~ sum_j tau_j f(theta_j)``, exact for
polynomials ``f`` of degree up to ``2m - 1``. Averaged over ``runs`` probes, with
``f`` a Gaussian kernel of width ``sigma``, it is the smoothed density

    phi_sigma(t) = (1 / runs) sum_r sum_j tau_rj g_sigma(t - theta_rj),

which integrates to 1 (the eigenvalue distribution ``(1/n) sum_i delta(t - lambda_i)``
convolved with ``g_sigma``). Its ``k``-th moment estimates ``tr(H^k) / n``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._core.guards import warn_once
from .._core.params import model_state_guard, positive_int, positive_number
from .._directions import make_generator
from .._hessian import HessianOperator
from .lanczos import lockstep_lanczos, ritz

__all__ = ["SpectralDensity", "hessian_density"]


@dataclass
class SpectralDensity:
    """A smoothed Hessian eigenvalue density and the quadrature it came from.

    Attributes
    ----------
    grid : ndarray of shape (G,)
        Eigenvalues (units of the loss per squared parameter unit) where the density is given.
    density : ndarray of shape (G,)
        ``phi_sigma`` on ``grid`` (see the module docstring); integrates to about 1.
    ritz_values : ndarray of shape (runs, m)
        Each run's Ritz values, ascending; NaN past a run's length.
    weights : ndarray of shape (runs, m)
        Each run's quadrature weights (sum 1 per run); 0 past a run's length.
    sigma : float
        Width (standard deviation) of the Gaussian kernel.
    n_params : int
        The Hessian's size ``n``.
    meta : dict
        seed, steps, runs, device, dtype.
    """

    grid: np.ndarray
    density: np.ndarray
    ritz_values: np.ndarray
    weights: np.ndarray
    sigma: float
    n_params: int
    meta: dict = field(default_factory=dict)

    def moment(self, k: int) -> tuple[float, float]:
        """The ``k``-th spectral moment ``tr(H^k) / n``, with its standard error.

        Each run's quadrature ``sum_j tau_j theta_j^k`` is exact for the run's probe
        when ``2m - 1 >= k``: the error is then that of Hutchinson's estimator alone,
        the spread over the probes. ``trace = n * moment(1)``; ``moment(2)`` is
        ``||H||_F^2 / n``.

        Returns
        -------
        (mean, stderr) : floats
            Mean over runs and the sample standard deviation over ``sqrt(runs)``
            (inf for one run).
        """
        per_run = np.nansum(self.weights * np.nan_to_num(self.ritz_values) ** k, axis=1)
        runs = len(per_run)
        stderr = float(per_run.std(ddof=1) / math.sqrt(runs)) if runs > 1 else math.inf
        return float(per_run.mean()), stderr

    @property
    def trace(self) -> tuple[float, float]:
        """``(tr H, stderr)``: ``n`` times :meth:`moment` ``(1)``."""
        mean, err = self.moment(1)
        return self.n_params * mean, self.n_params * err

    def extremes(self) -> tuple[float, float]:
        """``(smallest, largest)`` Ritz value over all runs: estimates of ``lambda_min, lambda_max``."""
        return float(np.nanmin(self.ritz_values)), float(np.nanmax(self.ritz_values))

    def top(self, k: int = 5) -> np.ndarray:
        """The ``k`` largest Ritz values of the run that reached the largest one, descending:
        estimates of the top eigenvalues (outliers) that a density plot marks."""
        r = int(np.nanargmax(np.nanmax(self.ritz_values, axis=1)))
        vals = self.ritz_values[r][np.isfinite(self.ritz_values[r])]
        return np.sort(vals)[::-1][:k]


def smooth(values: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """``(1/runs) sum_r sum_j w_rj g_sigma(grid - v_rj)``, shape ``grid.shape``."""
    ok = np.isfinite(values)
    v, w = values[ok], weights[ok]
    z = (grid[:, None] - v[None, :]) / sigma
    return (np.exp(-0.5 * z * z) @ w) / (sigma * math.sqrt(2 * math.pi) * values.shape[0])


def hessian_density(model: nn.Module, data, *, loss_fn: Callable, runs: int = 10, steps: int = 80,
                    sigma: float | None = None, points: int = 1000, seed: int | None = 0, device=None,
                    dtype=torch.float32, batch_size: int | None = None) -> SpectralDensity:
    """The eigenvalue density of the loss Hessian by stochastic Lanczos quadrature.

    Ghorbani, Krishnan and Xiao (ICML 2019): ``runs`` Lanczos runs of ``steps``
    Hessian-vector products from Rademacher probes, Gauss quadrature on each
    run's tridiagonal matrix, Gaussian smoothing (see the module docstring). The
    runs go in lockstep: one pass over the data per step serves all of them
    (``vmap`` over the probes). The loss and Hessian are those of
    :func:`fastscape.curvature.hessian_eigenpairs` (eval mode, whole dataset).

    Parameters
    ----------
    model : nn.Module
        Evaluated in eval mode through ``functional_call``; never written.
    data : (inputs, targets) pair, DataLoader, Dataset or iterable of such pairs
    loss_fn : callable ``(output, target) -> scalar tensor``
    runs : int
        Probes (independent quadratures); the moments' standard error falls as ``1/sqrt(runs)``.
    steps : int
        Lanczos steps per run (capped at the number of parameters). The extreme Ritz
        values converge to the extreme eigenvalues first; moments up to order
        ``2 * steps - 1`` are exact per probe.
    sigma : float, optional
        Kernel width, in eigenvalue units. Default: 1% of the Ritz values' span.
    points : int
        Size of the eigenvalue grid, which spans the Ritz values plus ``5 sigma`` each side.
    seed : int or None
        Seeds the probes (default 0: the same density from run to run).
    device, dtype, batch_size
        As for :func:`fastscape.curvature.hessian_eigenpairs`.

    Returns
    -------
    SpectralDensity
    """
    positive_int(runs, "runs")
    positive_int(steps, "steps")
    positive_int(points, "points")
    if sigma is not None:
        positive_number(sigma, "sigma")
    with warn_once():
        op = HessianOperator(model, data, loss_fn, device=device, dtype=dtype, batch_size=batch_size)
        g = make_generator(seed, None)
        probes = (torch.randint(0, 2, (runs, op.numel), generator=g, device=g.device) * 2 - 1)
        probes = probes.to(op.device, op.dtype)
        with model_state_guard(model):
            tri = lockstep_lanczos(lambda rows, vecs: (op.many(vecs), None), probes, steps)
    values, weights = ritz(tri)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if sigma is None:
        sigma = max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, points)
    meta = {"seed": seed, "steps": int(tri.alphas.shape[1]), "runs": runs, "device": str(op.device),
            "dtype": str(op.dtype).replace("torch.", ""), "method": "stochastic Lanczos quadrature"}
    return SpectralDensity(grid, smooth(values, weights, grid, float(sigma)), values, weights, float(sigma),
                           op.numel, meta)
