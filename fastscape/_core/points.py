"""Sets of points in weight space, handed to the evaluator a chunk at a time.

Every kind exposes the same small protocol: ``n`` points, the names that
``moving`` between points, the ``fixed`` tensors shared by all, ``to(device,
dtype)``, ``stack(start, stop)`` (the moving tensors of a chunk, stacked along a
leading point dimension), ``moving_numel()`` and ``first_only()``.

:class:`AffinePoints` also hands the strategies that use its structure (affine, mlp,
quadratic) its device tables: :attr:`~AffinePoints.device_coords`, :meth:`~AffinePoints.origin_of`,
:meth:`~AffinePoints.direction_of` and :meth:`~AffinePoints.at` (the moving tensors at any rows of
coordinates along some of the directions). :func:`distinct_rows` finds the distinct rows of
coordinates and each point's row. :class:`SampledPoints` makes its points a chunk at a time
(random perturbations of one origin, for sharpness), so that no more than a chunk of them is
ever in memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .params import ParamDict

__all__ = ["AffinePoints", "ExplicitPoints", "SampledPoints", "distinct_rows"]


class AffinePoints:
    """Points ``origin + sum_i coords[:, i] * directions[i]``.

    Parameters
    ----------
    origin : dict name -> Tensor
        The point the directions start from, over the moving names.
    directions : list of k dicts name -> Tensor
        Same keys and shapes as ``origin``.
    coords : Tensor of shape (N, k)
        One row of coordinates per point.
    """

    def __init__(self, origin: ParamDict, directions: list[ParamDict], coords: torch.Tensor):
        if coords.dim() != 2 or coords.shape[1] != len(directions):
            raise ValueError(
                f"`coords` must have shape (N, {len(directions)}); got {tuple(coords.shape)}."
            )
        self.origin = origin
        self.directions = directions
        self.coords = coords
        self.n = coords.shape[0]
        # tensors that no direction moves are shared by all points, like buffers
        self.moving = [k for k in origin if any(bool(d[k].any()) for d in directions)]
        self.fixed = {k: origin[k] for k in origin if k not in self.moving}

    def to(self, device, dtype):
        """Move and cast; direction matrices are flattened to (k, numel) once."""
        self._origin = {k: self.origin[k].to(device, dtype).reshape(1, -1) for k in self.moving}
        self._dirs = {
            k: torch.stack([d[k].to(device, dtype).reshape(-1) for d in self.directions])
            for k in self.moving
        }
        self._coords = self.coords.to(device, dtype)
        self._shapes = {k: self.origin[k].shape for k in self.moving}
        self.fixed = {k: v.to(device, dtype) for k, v in self.fixed.items()}
        return self

    def stack(self, start: int, stop: int) -> ParamDict:
        """Moving tensors of points ``start:stop``, each of shape (stop-start, *shape)."""
        return self.at(self._coords[start:stop])

    @property
    def device_coords(self) -> torch.Tensor:
        """The coordinates on the evaluation device and dtype (after :meth:`to`), shape (N, k)."""
        return self._coords

    def origin_of(self, key: str) -> torch.Tensor:
        """The origin's tensor ``key`` (a moving name) on the device, in its parameter's shape."""
        return self._origin[key].view(self._shapes[key])

    def direction_of(self, i: int, key: str) -> torch.Tensor:
        """Direction ``i``'s tensor ``key`` (a moving name) on the device, in its parameter's shape."""
        return self._dirs[key][i].view(self._shapes[key])

    def at(self, rows: torch.Tensor, directions: list[int] | None = None,
           keys: list[str] | None = None) -> ParamDict:
        """Moving tensors at rows of coordinates: ``origin + rows @ directions``, each of shape
        (R, *shape).

        ``rows`` has shape (R, k), or (R, len(directions)) along the directions of index
        ``directions`` only (the others held at 0); ``keys`` are moving names (default all).
        """
        return {
            k: torch.addmm(self._origin[k], rows, self._dirs[k] if directions is None else self._dirs[k][directions])
            .view(rows.shape[0], *self._shapes[k])
            for k in (self.moving if keys is None else keys)
        }

    def moving_numel(self) -> int:
        return sum(self.origin[k].numel() for k in self.moving)

    def first_only(self) -> "AffinePoints":
        """The first point alone (all points are equal when nothing moves)."""
        return AffinePoints(self.origin, self.directions, self.coords[:1])


class ExplicitPoints:
    """Points given one by one, as a list of parameter dicts (e.g. training snapshots)."""

    def __init__(self, points: list[ParamDict]):
        if len(points) == 0:
            raise ValueError("`points` must hold at least one parameter dict.")
        self.points = points
        keys = list(points[0])
        self.moving = [k for k in keys if any(not torch.equal(p[k], points[0][k]) for p in points)]
        self.fixed = {k: points[0][k] for k in keys if k not in self.moving}
        self.n = len(points)

    def to(self, device, dtype):
        self._device, self._dtype = device, dtype
        self.fixed = {k: v.to(device, dtype) for k, v in self.fixed.items()}
        return self

    def stack(self, start: int, stop: int) -> ParamDict:
        # host snapshots go to the GPU without the host waiting for the copy
        return {
            k: torch.stack([p[k] for p in self.points[start:stop]]).to(self._device, self._dtype, non_blocking=True)
            for k in self.moving
        }

    def moving_numel(self) -> int:
        return sum(self.points[0][k].numel() for k in self.moving)

    def first_only(self) -> "ExplicitPoints":
        return ExplicitPoints(self.points[:1])


class SampledPoints:
    """``count`` points ``origin + perturb(rows)``, made a chunk at a time.

    Parameters
    ----------
    origin : Tensor of shape (numel,)
        The flat parameters, in the order of ``shapes``.
    shapes : dict name -> torch.Size
        The parameters ``origin`` holds; every one of them moves.
    perturb : callable ``range -> Tensor (len(rows), numel)``
        The flat perturbations of those points (the same whichever chunk asks for a row).
    count : int
    """

    def __init__(self, origin: torch.Tensor, shapes: dict, perturb: Callable[[range], torch.Tensor], count: int):
        self.origin, self.shapes, self.perturb, self.n = origin, dict(shapes), perturb, count
        self.moving, self.fixed = list(self.shapes), {}

    def to(self, device, dtype):
        self.origin = self.origin.to(device, dtype)
        return self

    def stack(self, start: int, stop: int) -> ParamDict:
        P = self.origin + self.perturb(range(start, stop)).to(self.origin.device, self.origin.dtype)
        out, i = {}, 0
        for k, shape in self.shapes.items():
            out[k] = P[:, i: i + shape.numel()].reshape(stop - start, *shape)
            i += shape.numel()
        return out

    def moving_numel(self) -> int:
        return self.origin.numel()

    def first_only(self) -> "SampledPoints":
        return SampledPoints(self.origin, self.shapes, self.perturb, 1)


def distinct_rows(coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, index)``: the distinct rows of ``coords`` (N, j), sorted, shape (R, j), and each
    row's index into them, shape (N,), so that ``rows[index] == coords``.

    One column goes through the 1-D ``torch.unique``, which sorts; ``unique(dim=0)`` compares
    row by row and is about ten times slower.
    """
    if coords.shape[1] == 1:
        values, index = torch.unique(coords[:, 0], return_inverse=True)
        return values[:, None], index
    return torch.unique(coords, dim=0, return_inverse=True)
