"""PCA planes from training paths, projection of paths onto any plane, and the loss along a path.

A path is a recorded :class:`~fastscape.Trajectory` or a plain list of
parameter dicts (one per snapshot). Internally it is a (T, P) matrix, T
snapshots of P parameters; nothing here builds a P x P matrix: the PCA works
on the T x T Gram matrix and every product over P is taken in column chunks,
in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ._core.data import Batches, warn_nonfinite
from ._core.evaluator import evaluate
from ._core.params import (ParamDict, check_loss_fn, check_model, as_param_dict, check_directions, check_origin,
                           flatten, positive_int, unflatten, resolve_device, resolve_dtype)
from ._core.points import AffinePoints, ExplicitPoints
from ._directions import Directions
from ._plane_path import PlanePath
from ._subset import chosen_names, describe
from ._trajectory import Trajectory

__all__ = ["pca_directions", "project", "path_loss"]

#: float64 elements of one column chunk (64 MiB).
_CHUNK_ELEMS = 1 << 23


class _Path:
    """A path as a (T, P) matrix with the names and shapes of its parameters."""

    def __init__(self, trajectory, *, name: str = "trajectory"):
        if isinstance(trajectory, Trajectory):
            if len(trajectory) == 0:
                raise ValueError(f"`{name}` holds no snapshots.")
            self.names = list(trajectory.names)
            self.shapes = list(trajectory.shapes)
            self.matrix = trajectory.matrix()
            self.snapshots = trajectory
            return
        if isinstance(trajectory, (Mapping, torch.Tensor, np.ndarray)) or not isinstance(trajectory, Sequence):
            raise TypeError(f"`{name}` must be a Trajectory or a list of parameter dicts (one per "
                            f"snapshot); got {type(trajectory).__name__}.")
        if len(trajectory) == 0:
            raise ValueError(f"`{name}` holds no snapshots.")
        snaps = [as_param_dict(s, name=f"{name}[{i}]") for i, s in enumerate(trajectory)]
        first = snaps[0]
        self.names = list(first)
        self.shapes = [t.shape for t in first.values()]
        for i, s in enumerate(snaps[1:], start=1):
            if list(s) != self.names:
                raise ValueError(f"`{name}[{i}]` has keys {list(s)[:5]}...; expected the keys of "
                                 f"`{name}[0]` in the same order: {self.names[:5]}...")
            for k, shape in zip(self.names, self.shapes):
                if s[k].shape != shape:
                    raise ValueError(f"`{name}[{i}][{k!r}]` has shape {tuple(s[k].shape)}; "
                                     f"`{name}[0][{k!r}]` has shape {tuple(shape)}.")
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in first.values()) else torch.float32
        self.matrix = torch.stack([flatten(s, self.names).to(dtype) for s in snaps])
        self.snapshots = snaps

    @property
    def n(self) -> int:
        return self.matrix.shape[0]

    def chunks(self):
        """Column ranges ``(start, stop)`` of about 64 MiB of float64 each."""
        T, P = self.matrix.shape
        step = max(1, _CHUNK_ELEMS // max(T, 1))
        return [(j, min(j + step, P)) for j in range(0, P, step)]

    def block(self, start: int, stop: int) -> torch.Tensor:
        return self.matrix[:, start:stop].to(torch.float64)

    def flat(self, d: Mapping[str, torch.Tensor], what: str) -> torch.Tensor:
        """A dict over exactly this path's names, flattened in its order (float64, CPU)."""
        d = as_param_dict(d, name=what)
        missing = [k for k in self.names if k not in d]
        extra = [k for k in d if k not in self.names]
        if missing or extra:
            raise ValueError(f"`{what}` must have the trajectory's keys; missing {missing[:5]}, "
                             f"unexpected {extra[:5]}.")
        for k, shape in zip(self.names, self.shapes):
            if d[k].shape != shape:
                raise ValueError(f"`{what}[{k!r}]` has shape {tuple(d[k].shape)}; the trajectory's "
                                 f"parameter has shape {tuple(shape)}.")
        return flatten(d, self.names, dtype=torch.float64, device="cpu")

    def unflatten(self, vec: torch.Tensor) -> ParamDict:
        return unflatten(vec, dict(zip(self.names, self.shapes)))


def _check_n(n, T):
    positive_int(n, "n")
    if n > T - 1:
        raise ValueError(f"`n` must be at most the number of snapshots minus one ({T - 1}): T "
                         f"centred snapshots span at most T - 1 directions. Got n={n}.")


def pca_directions(trajectory, n: int = 2, *, params: str | list[str] | None = None) -> tuple[Directions, np.ndarray]:
    """Principal directions of a training path (Li et al. 2018).

    The snapshots minus the final weights form a (T, P) matrix; its columns
    are centred (as scikit-learn's ``PCA`` centres them) and its top ``n``
    principal axes are returned. They come from the eigenvectors of the T x T
    Gram matrix, so P can be far larger than T: no P x P matrix is built.

    Parameters
    ----------
    trajectory : Trajectory or list of dicts name -> Tensor
        At least ``n + 1`` snapshots, the last one being the final weights.
    n : int
        Number of directions.
    params : str, list of str or None
        The PCA of the path restricted to a subset of the parameters (names or glob
        patterns, see :func:`fastscape.random_directions`); the directions are zero
        outside it. Default: every parameter of the snapshots (a frozen one does not
        move along a training path, so it adds nothing).

    Returns
    -------
    directions : Directions
        ``n`` dicts name -> Tensor keyed and shaped like the snapshots, on the
        CPU in the snapshots' dtype. Each has unit Euclidean norm over all
        parameters and they are mutually orthogonal, so plane coordinates are
        distances in parameter space. (To rescale them filter by filter, pass
        each through :func:`fastscape.normalize`; projection stays correct
        because :func:`project` does not assume orthogonality.) The sign is
        chosen so that the start of the path has a negative coordinate.
        ``directions.info`` holds ``kind="pca"``, the explained variance and
        its ratio, and the number of snapshots.
    explained_variance_ratio : ndarray of shape (n,)
        Share of the path's total variance along each direction.
    """
    path = _Path(trajectory)
    T = path.n
    _check_n(n, T)
    keep = chosen_names(path.names, params)
    # 1 on the subset's columns, 0 elsewhere: the PCA of the subset's columns alone
    mask = torch.cat([torch.full((int(np.prod(s)),), float(k in keep), dtype=torch.float64)
                      for k, s in zip(path.names, path.shapes)]).to(path.matrix.device)
    final = path.matrix[-1].to(torch.float64)
    mean = torch.zeros(path.matrix.shape[1], dtype=torch.float64, device=path.matrix.device)
    gram = torch.zeros(T, T, dtype=torch.float64, device=path.matrix.device)
    for a, b in path.chunks():
        m = (path.block(a, b) - final[a:b]) * mask[a:b]
        mean[a:b] = m.mean(dim=0)
        m -= mean[a:b]
        gram += m @ m.T
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals = evals.flip(0).clamp_min(0.0)
    evecs = evecs.flip(1)
    total = float(evals.sum())
    if total <= 0.0:
        raise ValueError("`trajectory` does not move: all snapshots are equal, so there is no "
                         "principal direction.")
    rank = int((evals > evals[0] * 1e-12).sum())
    if n > rank:
        raise ValueError(f"`trajectory` spans only {rank} direction(s) (centred snapshots of rank "
                         f"{rank}); `n` must be at most {rank}. Got n={n}.")
    sing = evals[:n].sqrt()
    u = evecs[:, :n]
    # start-of-path coordinate along v_i: s_i * (u[0, i] - u[-1, i]); make it negative
    sign = torch.where(u[0] - u[-1] > 0, -1.0, 1.0).to(torch.float64)
    u = u * sign
    comps = torch.empty(n, path.matrix.shape[1], dtype=torch.float64, device=path.matrix.device)
    for a, b in path.chunks():
        m = (path.block(a, b) - final[a:b]) * mask[a:b] - mean[a:b]
        comps[:, a:b] = (u.T @ m) / sing[:, None]
    comps /= comps.norm(dim=1, keepdim=True)
    comps = comps.to("cpu", path.matrix.dtype)
    variance = (evals[:n] / (T - 1)).cpu().numpy()
    ratio = (evals[:n] / total).cpu().numpy()
    dirs = Directions([path.unflatten(c) for c in comps], kind="pca", norm="unit", n_snapshots=T,
                      explained_variance=variance.tolist(), explained_variance_ratio=ratio.tolist(),
                      params=describe(params) if params is not None else "all")
    return dirs, ratio


def project(trajectory, directions, *, origin=None,
            return_residuals: bool = False) -> PlanePath | tuple[PlanePath, np.ndarray]:
    """Least-squares coordinates of every snapshot in the coordinate system ``(origin, directions)``.

    Snapshot ``w_t`` gets the coordinates ``c_t`` minimising
    ``|| w_t - origin - sum_i c_t[i] * directions[i] ||``, i.e.
    ``c_t = pinv(D^T) (w_t - origin)`` with ``D`` the (n, P) matrix of
    directions: right for any directions, orthogonal or not.

    Parameters
    ----------
    trajectory : Trajectory or list of dicts name -> Tensor
    directions : list of n dicts name -> Tensor
        Keyed and shaped like the snapshots (e.g. from :func:`pca_directions`
        or :func:`fastscape.random_directions`).
    origin : dict name -> Tensor or nn.Module, optional
        Default: the last snapshot (the final weights).
    return_residuals : bool
        Also return the distance of each snapshot from the plane.

    Returns
    -------
    coords : PlanePath, an ndarray of shape (T, n)
        It knows what its points count (``coords.unit``: "epoch" for a
        :func:`fastscape.train` trajectory, "step", or None for a list of
        dicts; ``coords.counts``), which the views use as the path's label, and
        frames a grid around itself: ``grid=coords.frame(81)``.
    residuals : ndarray of shape (T,), only with ``return_residuals=True``
        ``|| w_t - origin - sum_i c_t[i] d_i ||`` in parameter units; divide by
        ``|| w_t - origin ||`` for the share of each step the plane misses.
    """
    path = _Path(trajectory)
    if isinstance(directions, (Mapping, torch.Tensor)) or not isinstance(directions, Sequence) \
            or len(directions) == 0:
        raise TypeError(f"`directions` must be a non-empty list of direction dicts; got "
                        f"{type(directions).__name__}.")
    D = torch.stack([path.flat(d, f"directions[{i}]") for i, d in enumerate(directions)])
    o = path.matrix[-1].to("cpu", torch.float64) if origin is None else path.flat(origin, "origin")
    k = D.shape[0]
    gram = D @ D.T
    rhs = torch.zeros(path.n, k, dtype=torch.float64)
    for a, b in path.chunks():
        rhs += (path.block(a, b).cpu() - o[a:b]) @ D[:, a:b].T
    coords = rhs @ torch.linalg.pinv(gram, hermitian=True)
    counts = getattr(trajectory, "counts", None)  # a Trajectory knows whether it counts epochs or steps
    unit = getattr(trajectory, "unit", None) if counts is not None else None
    out = PlanePath(coords.numpy(), unit=unit, counts=counts)
    if not return_residuals:
        return out
    r2 = torch.zeros(path.n, dtype=torch.float64)
    for a, b in path.chunks():
        r2 += ((path.block(a, b).cpu() - o[a:b] - coords @ D[:, a:b]) ** 2).sum(dim=1)
    return out, r2.sqrt().numpy()


def path_loss(model: nn.Module, data, trajectory, *, loss_fn: Callable, directions=None, origin=None,
              device=None, dtype=torch.float32, chunk_size="auto", batch_size: int | None = None,
              strategy: str = "auto") -> np.ndarray:
    """The loss at every point of a path, all points evaluated with the batched evaluator.

    - Without ``directions``: at the snapshots themselves (the exact path).
    - With ``directions``: at the path's least-squares shadow on that plane,
      ``origin + sum_i c_t[i] d_i`` with ``c_t`` from :func:`project`, so the
      heights match a :func:`fastscape.loss_surface` on the same plane.
    - ``trajectory`` may also be plane coordinates (an array of shape (T, n));
      then ``directions`` is required.

    Parameters
    ----------
    model : nn.Module
        Supplies the architecture and its buffers; never written.
    data : (inputs, targets) pair, DataLoader, Dataset or iterable of pairs
    trajectory : Trajectory, list of dicts name -> Tensor, or array of shape (T, n)
    loss_fn : callable ``(output, target) -> scalar tensor``
    directions : list of n dicts name -> Tensor, optional
    origin : dict name -> Tensor or nn.Module, optional
        The plane's origin: by default the last snapshot for a trajectory (as
        in :func:`project`) and the model's parameters for plain coordinates
        (as in :func:`fastscape.loss_surface`).
    device, dtype, chunk_size, batch_size, strategy
        As in :func:`fastscape.loss_surface`.

    Returns
    -------
    ndarray of shape (T,)
        Sample-weighted mean loss over ``data`` at each point, float64.
    """

    check_model(model)
    check_loss_fn(loss_fn)
    is_coords = isinstance(trajectory, (np.ndarray, torch.Tensor))
    if directions is None:
        if is_coords:
            raise ValueError("`directions` is required when `trajectory` is an array of plane "
                             "coordinates.")
        points = ExplicitPoints(_check_snapshots(model, _Path(trajectory)))
    else:
        dirs = check_directions(model, directions)
        keys = list(dirs[0])
        if is_coords:
            coords = torch.as_tensor(np.asarray(trajectory, dtype=np.float64))
            if coords.dim() != 2 or coords.shape[1] != len(dirs):
                raise ValueError(f"`trajectory` coordinates must have shape (T, {len(dirs)}); got "
                                 f"{tuple(coords.shape)}.")
            orig = check_origin(model, origin, keys)
        else:
            path = _Path(trajectory)
            coords = torch.from_numpy(project(trajectory, directions, origin=origin))
            orig = check_origin(model, path.snapshots[-1] if origin is None else origin, keys)
        points = AffinePoints(orig, dirs, coords)
    batches = Batches(data, batch_size=batch_size, device=resolve_device(device, model),
                      dtype=resolve_dtype(dtype))
    warn_nonfinite(batches, "the loss will be NaN (or inf) at every point of the path")
    values, _ = evaluate(model, batches, points, loss_fn=loss_fn, chunk_size=chunk_size, strategy=strategy)
    return values["loss"]


def _check_snapshots(model: nn.Module, path: _Path) -> list[ParamDict]:
    shapes = {k: p.shape for k, p in model.named_parameters()}
    for k, shape in zip(path.names, path.shapes):
        if k not in shapes:
            raise ValueError(f"`trajectory` has parameter {k!r}, which the model does not have; "
                             f"expected names like {list(shapes)[:5]}.")
        if shape != shapes[k]:
            raise ValueError(f"`trajectory`'s {k!r} has shape {tuple(shape)}; the model's parameter "
                             f"has shape {tuple(shapes[k])}.")
    return [path.snapshots[i] for i in range(path.n)]
