"""Several optimizers trained from the same weights, their paths on one shared PCA plane.

Draw the result with :func:`fastscape.plot.optimizer_comparison`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ._core.params import ParamDict
from ._landscape import loss_surface
from ._pca import pca_directions, project
from ._plane_path import PlanePath
from ._trajectory import Trajectory, train

__all__ = ["OptimizerComparison", "compare_optimizers"]


@dataclass
class OptimizerComparison:
    """Several optimizers trained from the same weights, on one shared plane.

    Attributes
    ----------
    trajectories : dict name -> Trajectory
        One recorded path per optimizer, in the order given.
    models : dict name -> nn.Module
        The trained copies (the model given is never trained).
    directions : Directions
        Two unit-norm PCA directions of all snapshots pooled.
    explained_variance_ratio : ndarray of shape (2,)
    origin : dict name -> Tensor
        The plane's origin: the final weights of ``origin_name``'s run.
    origin_name : str
    coords : dict name -> ndarray of shape (T_name, 2)
        Each path projected (least squares) onto the plane.
    residuals : dict name -> ndarray of shape (T_name,)
        Distance of each snapshot from the plane (Euclidean, parameter units).
    """

    trajectories: dict[str, Trajectory]
    models: dict[str, nn.Module]
    directions: list
    explained_variance_ratio: np.ndarray
    origin: ParamDict
    origin_name: str
    coords: dict[str, np.ndarray]
    residuals: dict[str, np.ndarray] = field(default_factory=dict)

    def span(self, margin: float = 0.25) -> list[tuple[float, float]]:
        """Per-axis (min, max) that holds every path, widened by ``margin`` of its extent on each side
        (:meth:`PlanePath.frame` of all paths pooled)."""
        pooled = PlanePath(np.concatenate([np.asarray(c) for c in self.coords.values()]))
        return [(lo, hi) for lo, hi, _ in pooled.frame(pad=margin, min_width=0.0)]

    def loss_surface(self, data, *, loss_fn: Callable, n: int = 41, margin: float = 0.25, **kwargs):
        """The loss on the shared plane over :meth:`span` (``n`` points per axis).

        Extra keyword arguments go to :func:`fastscape.loss_surface`.
        """
        if "num" in kwargs or "grid" in kwargs:
            raise TypeError(f"`{'num' if 'num' in kwargs else 'grid'}` is not an argument of "
                            "OptimizerComparison.loss_surface: the grid holds every path, with `n` points per axis "
                            "(n=61) and `margin` around the paths.")
        grid = [(lo, hi, n) for lo, hi in self.span(margin)]
        model = self.models[self.origin_name]
        return loss_surface(model, data, self.directions, loss_fn=loss_fn, grid=grid, origin=self.origin,
                            **kwargs)


def compare_optimizers(model: nn.Module | Callable[[], nn.Module], data,
                       optimizers: Mapping[str, Callable], *, loss_fn: Callable, epochs: int,
                       every: int = 1, every_steps: int | None = None, eval_data=None,
                       origin: str | None = None, seed: int | None = 0) -> OptimizerComparison:
    """Train copies of one model with several optimizers and project every path on one plane.

    Each optimizer trains its own deep copy of the same initial weights (the
    model given is left untouched) with :func:`train`. The plane is spanned by
    the two principal components of all snapshots of all runs pooled
    (:func:`fastscape.pca_directions`); its origin is the final weights of one
    run, and every path is projected onto it by least squares.

    Parameters
    ----------
    model : nn.Module, or a callable returning one
        The initial weights (a callable is called once).
    data : iterable of (inputs, targets) batches
    optimizers : dict name -> callable(params) -> torch.optim.Optimizer
        E.g. ``{"SGD": lambda p: torch.optim.SGD(p, lr=0.1), "Adam": lambda p: torch.optim.Adam(p)}``.
    loss_fn, epochs, every, every_steps, eval_data
        As in :func:`train`.
    origin : str, optional
        Name of the run whose final weights are the plane's origin (default: the first).
    seed : int or None
        The global torch RNG is seeded with this before each run (inside
        ``torch.random.fork_rng``, so the caller's RNG state is kept): shuffling
        DataLoaders and dropout then see the same random numbers in every run.
        None leaves the RNG alone.

    Returns
    -------
    OptimizerComparison
    """
    if not isinstance(model, nn.Module):
        if not callable(model):
            raise TypeError(f"`model` must be an nn.Module or a callable returning one; got "
                            f"{type(model).__name__}.")
        model = model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model()` must return an nn.Module; got {type(model).__name__}.")
    if not isinstance(optimizers, Mapping) or len(optimizers) == 0:
        raise ValueError("`optimizers` must be a non-empty dict name -> callable(params) -> Optimizer; "
                         f"got {optimizers!r}.")
    for name, make in optimizers.items():
        if not callable(make):
            raise TypeError(f"`optimizers[{name!r}]` must be callable(params) -> Optimizer; got "
                            f"{type(make).__name__}.")
    names = list(optimizers)
    origin = names[0] if origin is None else origin
    if origin not in optimizers:
        raise ValueError(f"`origin` must be one of {names}; got {origin!r}.")
    if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs < 1:
        raise ValueError(f"`epochs` must be at least 1: the runs' paths span the plane; got {epochs!r}.")

    trajectories, models = {}, {}
    for name in names:
        m = copy.deepcopy(model)
        opt = optimizers[name](m.parameters())
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"`optimizers[{name!r}]` must return a torch.optim.Optimizer; got "
                            f"{type(opt).__name__}.")
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            trajectories[name] = train(m, data, loss_fn=loss_fn, optimizer=opt, epochs=epochs,
                                       every=every, every_steps=every_steps,
                                       eval_data=eval_data)
        models[name] = m

    pooled = [snap for t in trajectories.values() for snap in t]
    if len(pooled) < 3:
        raise ValueError(f"the runs took {len(pooled)} snapshots in all (`epochs`={epochs}, `every`={every}); the "
                         "plane needs at least 3 snapshots: raise `epochs` or lower `every`.")
    directions, ratio = pca_directions(pooled, n=2)
    directions.info["pooled_runs"] = names
    centre = {k: v.clone() for k, v in trajectories[origin][-1].items()}
    coords, residuals = {}, {}
    for name, t in trajectories.items():
        coords[name], residuals[name] = project(t, directions, origin=centre, return_residuals=True)
    return OptimizerComparison(trajectories=trajectories, models=models, directions=directions,
                               explained_variance_ratio=ratio, origin=centre, origin_name=origin,
                               coords=coords, residuals=residuals)
