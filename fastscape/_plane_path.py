"""A path in a plane's coordinates: what :func:`fastscape.project` returns.

It is a plain (T, k) float64 array that also knows what its points count
(``unit``: "epoch", "step", or None when unknown, with ``counts`` the epoch or
step of each point), so every view labels the path without being told, and it
frames a grid around itself (:meth:`PlanePath.frame`) for
:func:`fastscape.loss_surface`'s ``grid=``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PlanePath"]


class PlanePath(np.ndarray):
    """Plane coordinates of a path, shape (T, k), that know what their points count.

    An ``ndarray`` subclass: index it, slice it, pass it anywhere an array of
    plane coordinates goes (``surface.path = ...``, ``plot.contour(path=...)``).

    Attributes
    ----------
    unit : str or None
        What one point of the path is: ``"epoch"`` (a :func:`fastscape.train`
        trajectory recorded per epoch), ``"step"`` (optimizer steps:
        :func:`fastscape.train` with ``every_steps``, or :func:`fastscape.record`),
        or None when unknown (snapshots given as a list of dicts). The views
        name the path's colour bar, titles and slider with it; an explicit
        ``path_label=`` still wins.
    counts : ndarray of shape (T,) or None
        The epoch (or step) of each point, e.g. ``[0, 5, 10, ...]`` for
        ``train(every=5)``; None when ``unit`` is None.
    """

    unit: str | None
    counts: np.ndarray | None

    def __new__(cls, coords, *, unit: str | None = None, counts=None) -> PlanePath:
        obj = np.asarray(coords, dtype=np.float64).view(cls)
        if obj.ndim != 2:
            raise ValueError(f"`coords` must have shape (T, k); got {obj.shape}.")
        if counts is not None:
            counts = np.asarray(counts).reshape(-1)
            if len(counts) != len(obj):
                raise ValueError(f"`counts` must hold one count per point ({len(obj)}); got {len(counts)}.")
        if (unit is None) != (counts is None):
            raise ValueError("`unit` and `counts` go together: give both or neither.")
        obj.unit, obj.counts = unit, counts
        return obj

    def __array_finalize__(self, obj) -> None:
        unit, counts = getattr(obj, "unit", None), getattr(obj, "counts", None)
        if counts is not None and not (self.ndim == 2 and len(self) == len(counts)):
            unit = counts = None  # a reduction or a column: no longer one point per count
        self.unit, self.counts = unit, counts

    def __getitem__(self, key):
        out = super().__getitem__(key)
        if not isinstance(out, PlanePath) or self.counts is None or out.ndim != 2:
            return out
        rows, cols = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        if all(isinstance(c, slice) and c == slice(None) for c in cols) and rows is not Ellipsis:
            out.unit, out.counts = self.unit, np.asarray(self.counts[rows]).reshape(-1)  # the rows' own counts
        return out

    def __reduce__(self):  # pickling keeps what the points count
        rebuild, args, state = super().__reduce__()
        return rebuild, args, (state, self.unit, self.counts)

    def __setstate__(self, state) -> None:
        base, self.unit, self.counts = state
        super().__setstate__(base)

    def frame(self, n: int | Sequence[int] = 101, *, pad: float = 0.25,
              min_width: float = 0.25) -> list[tuple[float, float, int]]:
        """A grid that holds the path with room around it: ``grid=`` of :func:`fastscape.loss_surface`.

        Along each axis the frame is the path's extent widened by ``pad`` of
        itself on both sides. An axis along which the path barely moves is
        first widened, around the path's middle, to ``min_width`` of the widest
        axis' extent, so a path that runs along one direction still gets a
        picture of the other.

        Parameters
        ----------
        n : int or sequence of k ints
            Grid points per axis.
        pad : float
            Room on each side, as a share of the axis' (widened) extent; >= 0.
        min_width : float
            Least extent of an axis, as a share of the widest one; in [0, 1].

        Returns
        -------
        list of k tuples (lo, hi, n)
            Plane coordinates, for ``grid=``.

        Examples
        --------
        >>> path = fastscape.project(trajectory, directions)            # doctest: +SKIP
        >>> surface = fastscape.loss_surface(model, data, directions, loss_fn=loss_fn,
        ...                                  grid=path.frame(81))         # doctest: +SKIP
        """
        k = self.shape[1]
        ns = [n] * k if isinstance(n, (int, np.integer)) and not isinstance(n, bool) else list(n) \
            if isinstance(n, Sequence) else None
        if ns is None or len(ns) != k or any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 2
                                            for v in ns):
            raise ValueError(f"`n` must be an integer >= 2 or {k} of them, one per axis; got {n!r}.")
        if not (isinstance(pad, (int, float)) and np.isfinite(pad) and pad >= 0):
            raise ValueError(f"`pad` must be a non-negative share of the path's extent, e.g. 0.25; got {pad!r}.")
        if not (isinstance(min_width, (int, float)) and 0 <= min_width <= 1):
            raise ValueError(f"`min_width` must be a share in [0, 1] of the widest axis' extent; got {min_width!r}.")
        c = np.asarray(self)
        if len(c) == 0 or not np.all(np.isfinite(c)):
            raise ValueError("the path must hold finite coordinates to be framed; got "
                             f"{'no point' if len(c) == 0 else 'NaN or inf'}.")
        lo, hi = c.min(axis=0), c.max(axis=0)
        widest = float((hi - lo).max())
        if widest == 0.0:
            raise ValueError("the path does not move (every point is the same), so it has no extent to frame; "
                             "give `grid=` explicitly.")
        width = np.maximum(hi - lo, min_width * widest)
        mid = (lo + hi) / 2
        lo, hi = mid - width / 2 - pad * width, mid + width / 2 + pad * width
        return [(float(a), float(b), int(m)) for a, b, m in zip(lo, hi, ns)]

    def __repr__(self) -> str:
        body = np.array2string(np.asarray(self), prefix="PlanePath(", separator=", ", threshold=20)
        return f"PlanePath({body}, unit={self.unit!r})"
