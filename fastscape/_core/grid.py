"""Grid coordinates along each direction."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .memory import human_bytes, free_memory

def _bytes_per_point(k: int) -> int:
    """Host bytes of one point of a k-direction grid: its k coordinates twice while the
    mesh is built, then float64 losses (the evaluator's sums, its means, the surface's array)."""
    return 8 * (2 * k + 3)


def _is_spec(obj) -> bool:
    return (isinstance(obj, (tuple, list)) and len(obj) == 3
            and all(isinstance(v, numbers.Real) for v in obj))


def _linspace(lo: float, hi: float, num: int) -> np.ndarray:
    """``num`` evenly spaced points from ``lo`` to ``hi``, both ends exact.

    Point ``i`` is ``(lo * (m - i) + hi * i) / m`` with ``m = num - 1``: for a
    symmetric span the grid is exactly antisymmetric, so an odd count holds the
    origin exactly (``np.linspace(-0.1, 0.1, 23)`` puts 1.4e-17 there instead).
    """
    if num == 1:
        return np.array([lo])
    i = np.arange(num, dtype=np.float64)
    m = num - 1
    out = (lo * (m - i) + hi * i) / m
    out[0], out[-1] = lo, hi
    return out


def _axis(spec, i: int) -> np.ndarray:
    if _is_spec(spec):
        lo, hi, num = spec
        if not float(num).is_integer() or int(num) < 1:
            raise ValueError(
                f"`grid` axis {i}: the step count must be an integer >= 1; got {num!r}."
            )
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"`grid` axis {i}: the span ({lo}, {hi}) must be finite.")
        return _linspace(float(lo), float(hi), int(num))
    arr = np.asarray(spec, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(
            f"`grid` axis {i} must be a (min, max, num) triple or a 1-D array; got an array of "
            f"shape {arr.shape}."
        )
    if arr.size < 1:
        raise ValueError(f"`grid` axis {i} has no points; expected at least 1.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`grid` axis {i} has non-finite coordinates; expected finite numbers.")
    return arr


def make_axes(grid, k: int) -> list[np.ndarray]:
    """Coordinates along each of ``k`` directions.

    ``grid`` is one of:

    - an int ``num``: ``num`` points on [-1, 1] along every direction;
    - a triple ``(min, max, num)``: the same span and count along every direction;
    - a list of ``k`` per-axis entries, each a triple or an explicit 1-D array
      (non-square and non-uniform grids, e.g. cubed spacing, are fine).

    Returns a list of ``k`` float64 arrays.
    """
    if isinstance(grid, numbers.Integral):
        grid = (-1.0, 1.0, grid)
    if _is_spec(grid):
        return [_axis(grid, i) for i in range(k)]
    if isinstance(grid, np.ndarray) and grid.ndim == 1 and k == 1:
        return [_axis(grid, 0)]
    if isinstance(grid, (tuple, list)) and len(grid) == 2 and all(isinstance(v, numbers.Real) for v in grid):
        raise ValueError(f"`grid` {tuple(grid)!r} gives the span but not the number of points: use a (min, max, num) "
                         f"triple, e.g. ({grid[0]}, {grid[1]}, 51).")
    if not isinstance(grid, (tuple, list)) or len(grid) != k:
        raise ValueError(
            f"`grid` must be an int, a (min, max, num) triple, or a list of {k} per-direction "
            f"entries (one per direction); got {grid!r}."
        )
    return [_axis(g, i) for i, g in enumerate(grid)]


def check_grid_size(axes: list[np.ndarray]) -> int:
    """The number of grid points, or a ValueError saying how many points and bytes
    when the host cannot hold the grid's coordinates and losses (before any of it
    is allocated)."""
    sizes = [len(a) for a in axes]
    n = math.prod(sizes)
    need = n * _bytes_per_point(len(axes))
    free, source = free_memory("cpu", budget=False)
    if need > free:
        raise ValueError(
            f"`grid` has {n} points ({' x '.join(map(str, sizes))}); its coordinates and losses need "
            f"{human_bytes(need)} ({_bytes_per_point(len(axes))} bytes a point), more than the {human_bytes(free)} "
            f"of memory available ({source}). Use fewer points.")
    return n


def mesh(axes: list[np.ndarray]) -> np.ndarray:
    """All grid points, shape (prod(len(a)), k), in C order of the grid (axis 0 slowest).

    Raises ValueError, before allocating, for a grid the host cannot hold
    (:func:`check_grid_size`).
    """
    check_grid_size(axes)
    grids = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.reshape(-1) for g in grids], axis=1)
