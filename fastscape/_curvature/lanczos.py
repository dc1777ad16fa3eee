"""Lanczos in lockstep: many Krylov runs advanced together, one batched product per step.

Every run ``r`` builds its own orthonormal basis ``Q_r`` and tridiagonal matrix
``T_r = Q_r^T A_r Q_r`` of its own symmetric operator ``A_r`` (the same Hessian
from several start vectors for stochastic Lanczos quadrature, or the Hessians
at several grid points for a curvature map). A step computes ``A_r q_r`` for
every run still going in one call of ``matvec`` (one ``vmap`` over the runs),
then reorthogonalises each run's vector against its whole basis, twice (full
reorthogonalisation: Ghorbani, Krishnan and Xiao, ICML 2019, Sec. 3; without it
Ritz values repeat). A run leaves the lockstep when its Krylov space is
invariant (breakdown), when its extreme Ritz values have converged (``tol``), or
when its products are not finite (a diverging region: its results are NaN).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Tridiagonal", "extreme_vectors", "lockstep_lanczos", "ritz"]


@dataclass
class Tridiagonal:
    """The Lanczos coefficients of ``runs`` runs.

    Attributes
    ----------
    alphas : ndarray of shape (runs, m)
        Diagonals; a run shorter than ``m`` steps is padded with NaN.
    betas : ndarray of shape (runs, m)
        Off-diagonals ``betas[r, :size-1]``; the rest is padding.
    sizes : ndarray of int, shape (runs,)
        Steps each run took (0 for a run whose first product was not finite).
    converged : ndarray of bool, shape (runs,)
        Whether a run stopped by ``tol``, by breakdown or by filling the space (exact).
    aux : object
        What ``matvec`` returned beside the products on its first call (all runs).
    basis : Tensor of shape (runs, m, n)
        The orthonormal Lanczos vectors ``Q_r`` (rows past ``sizes[r]`` are zero), so that
        ``T_r = Q_r^T A_r Q_r``.
    """

    alphas: np.ndarray
    betas: np.ndarray
    sizes: np.ndarray
    converged: np.ndarray
    aux: object = None
    basis: torch.Tensor | None = None


def ritz(tri: Tridiagonal) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values and Gauss quadrature weights of each run.

    Returns
    -------
    values : ndarray of shape (runs, m)
        Ascending eigenvalues of each ``T_r``, NaN-padded past ``sizes[r]``.
    weights : ndarray of shape (runs, m)
        ``tau_j = (e_1^T s_j)^2``, the squared first components of the eigenvectors
        of ``T_r`` (Golub and Meurant 2009), summing to 1 per run; 0 in the padding.
    """
    runs, m = tri.alphas.shape
    values = np.full((runs, m), np.nan)
    weights = np.zeros((runs, m))
    for r in range(runs):
        k = int(tri.sizes[r])
        if k == 0:
            continue
        t = np.diag(tri.alphas[r, :k]) + np.diag(tri.betas[r, :k - 1], 1) + np.diag(tri.betas[r, :k - 1], -1)
        theta, s = np.linalg.eigh(t)
        values[r, :k], weights[r, :k] = theta, s[0] ** 2
    return values, weights


def extreme_vectors(tri: Tridiagonal) -> torch.Tensor:
    """The Ritz vectors of the largest and the smallest Ritz value of each run.

    Returns
    -------
    Tensor of shape (runs, 2, n)
        ``[:, 0]`` the largest's, ``[:, 1]`` the smallest's, unit norm (``Q_r s``); zero for a
        run with no finite step.
    """
    runs, _, n = tri.basis.shape
    out = torch.zeros(runs, 2, n, dtype=tri.basis.dtype, device=tri.basis.device)
    for r in range(runs):
        k = int(tri.sizes[r])
        if k == 0:
            continue
        t = np.diag(tri.alphas[r, :k]) + np.diag(tri.betas[r, :k - 1], 1) + np.diag(tri.betas[r, :k - 1], -1)
        s = np.linalg.eigh(t)[1][:, [-1, 0]]
        out[r] = (tri.basis[r, :k].T @ torch.as_tensor(s, dtype=tri.basis.dtype, device=tri.basis.device)).T
    return out


def _extremes_converged(alphas: list, betas: list, beta: np.ndarray, tol: float) -> np.ndarray:
    """Per run: whether the largest and the smallest Ritz values have residual
    ``|beta_m s_{m,i}| <= tol * max|theta|``."""
    a = np.stack(alphas, axis=1)
    b = np.stack(betas, axis=1) if betas else np.zeros((a.shape[0], 0))
    out = np.zeros(a.shape[0], dtype=bool)
    for r in range(a.shape[0]):
        if not (np.all(np.isfinite(a[r])) and np.all(np.isfinite(b[r]))):
            continue
        t = np.diag(a[r]) + np.diag(b[r], 1) + np.diag(b[r], -1)
        theta, s = np.linalg.eigh(t)
        scale = max(float(np.abs(theta).max()), np.finfo(np.float64).tiny)
        out[r] = bool(np.all(np.abs(beta[r] * s[-1, [0, -1]]) <= tol * scale))
    return out


def lockstep_lanczos(matvec: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, object]],
                     start: torch.Tensor, steps: int, *, tol: float | None = None) -> Tridiagonal:
    """Run ``start.shape[0]`` Lanczos iterations side by side.

    Parameters
    ----------
    matvec : callable ``(rows, vectors) -> (products, aux)``
        ``rows`` is a LongTensor of the runs still going, ``vectors`` their current
        unit vectors of shape (len(rows), n); returns ``A_r q_r`` for each, shape
        (len(rows), n). ``aux`` of the first call (all runs) is kept in ``Tridiagonal.aux``.
    start : Tensor of shape (runs, n)
        Start vectors (normalised here).
    steps : int
        Most steps (Krylov dimension) per run; capped at ``n``.
    tol : float, optional
        A run stops when its largest and smallest Ritz values have relative
        residual at most ``tol`` (checked every step); None runs all ``steps``.

    Returns
    -------
    Tridiagonal
    """
    runs, n = start.shape
    steps = min(steps, n)
    q = start / start.norm(dim=1, keepdim=True)
    basis = torch.zeros(runs, steps, n, dtype=start.dtype, device=start.device)
    alphas = np.full((runs, steps), np.nan)
    betas = np.full((runs, steps), np.nan)
    sizes = np.zeros(runs, dtype=np.int64)
    converged = np.zeros(runs, dtype=bool)
    active = torch.arange(runs, device=start.device)
    prev_beta = torch.zeros(runs, dtype=start.dtype, device=start.device)
    aux = None
    for j in range(steps):
        basis[active, j] = q
        w, extra = matvec(active, q)
        if j == 0:
            aux = extra
        alpha = (q * w).sum(dim=1)
        w = w - alpha[:, None] * q
        if j > 0:
            w = w - prev_beta[:, None] * basis[active, j - 1]
        Q = basis[active, : j + 1]
        for _ in range(2):
            w = w - torch.einsum("rkn,rk->rn", Q, torch.einsum("rkn,rn->rk", Q, w))
        beta = w.norm(dim=1)
        idx = active.cpu().numpy()
        alphas[idx, j] = alpha.double().cpu().numpy()
        betas[idx, j] = beta.double().cpu().numpy()
        finite = np.isfinite(alphas[idx, j]) & np.isfinite(betas[idx, j])
        sizes[idx[finite]] = j + 1
        scale = (np.abs(np.nan_to_num(alphas[idx, : j + 1])).max(axis=1)
                 + np.abs(np.nan_to_num(betas[idx, : j + 1])).max(axis=1))
        keep = finite & (betas[idx, j] > 1e-10 * np.maximum(scale, np.finfo(np.float64).tiny))
        converged[idx[finite & ~keep]] = True  # an invariant subspace: its Ritz values are exact
        if tol is not None and j + 1 >= 2:
            done = _extremes_converged([alphas[idx, i] for i in range(j + 1)],
                                       [betas[idx, i] for i in range(j)], betas[idx, j], tol)
            converged[idx[keep & done]] = True
            keep &= ~done
        if j + 1 == n:
            converged[idx[keep]] = True  # the Krylov space is all of R^n
        if j + 1 == steps or not keep.any():
            break
        sel = torch.as_tensor(np.flatnonzero(keep), device=start.device)
        active, q, prev_beta = active[sel], (w[sel] / beta[sel, None]), beta[sel]
    return Tridiagonal(alphas, betas, sizes, converged, aux, basis)
