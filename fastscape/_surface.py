"""The surface data object and its HDF5 file format."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._optional import require

__all__ = ["Surface", "load_surface"]

_AXIS_KEYS = ("xcoordinates", "ycoordinates", "zcoordinates")


@dataclass
class Surface:
    """A loss landscape on a grid.

    Attributes
    ----------
    coords : list of k ndarrays
        ``coords[i]`` has shape (n_i,): the coordinates along direction ``i``.
    loss : ndarray of shape (n_0, ..., n_{k-1})
        ``loss[i, j]`` is the loss at ``origin + coords[0][i] * d_0 + coords[1][j] * d_1``:
        axis ``i`` runs along direction ``i`` (so for a plane, rows follow the
        first direction; transpose for ``matplotlib``'s (y, x) convention).
        Diverging points hold inf or NaN.
    metrics : dict name -> ndarray shaped like ``loss``
        Extra metrics computed in the same pass (e.g. ``"accuracy"``).
    meta : dict
        What is needed to reproduce the surface: norm, seed, device, dtype,
        number of samples, chunk and batch sizes, timings, cosines between
        directions, model fingerprint.
    """

    coords: list[np.ndarray]
    loss: np.ndarray
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return len(self.coords)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.loss.shape

    def argmin(self) -> tuple[float, ...]:
        """Grid coordinates of the smallest finite loss."""
        flat = np.where(np.isfinite(self.loss), self.loss, np.inf)
        idx = np.unravel_index(int(np.argmin(flat)), self.loss.shape)
        return tuple(float(c[i]) for c, i in zip(self.coords, idx))

    def save(self, path) -> Path:
        """Write the surface to an HDF5 file (lossless; read back with :func:`load_surface`).

        The layout follows the Li et al. tools: ``xcoordinates`` (and
        ``ycoordinates``, ``zcoordinates``), ``train_loss`` and, when an
        ``"accuracy"`` metric exists, ``train_acc`` in percent. For a plane,
        those tools index ``train_loss[j, i]`` = loss at (x_i, y_j), so it is
        stored transposed; our own arrays live under ``fastscape/``.
        """
        h5py = require("h5py", what="Writing a surface file")

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            for key, c in zip(_AXIS_KEYS, self.coords):
                f.create_dataset(key, data=c)
            f.create_dataset("train_loss", data=_li_layout(self.loss))
            if "accuracy" in self.metrics:
                f.create_dataset("train_acc", data=_li_layout(100.0 * self.metrics["accuracy"]))
            g = f.create_group("fastscape")
            g.create_dataset("loss", data=self.loss)
            for name, arr in self.metrics.items():
                g.create_dataset(f"metrics/{name}", data=arr)
            f.attrs["fastscape_meta"] = json.dumps(self.meta, default=str)
        return path


def _li_layout(arr: np.ndarray) -> np.ndarray:
    return arr.T if arr.ndim == 2 else arr


def load_surface(path) -> Surface:
    """Read a surface written by :meth:`Surface.save`."""
    h5py = require("h5py", what="Reading a surface file")

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"`path` {str(path)!r} does not exist.")
    with h5py.File(path, "r") as f:
        if "fastscape" not in f:
            raise ValueError(f"{str(path)!r} is not a fastscape surface file (no 'fastscape' group).")
        coords = [np.asarray(f[k][()]) for k in _AXIS_KEYS if k in f]
        g = f["fastscape"]
        loss = np.asarray(g["loss"][()])
        metrics = {k: np.asarray(v[()]) for k, v in g["metrics"].items()} if "metrics" in g else {}
        meta = json.loads(f.attrs.get("fastscape_meta", "{}"))
    return Surface(coords=coords, loss=loss, metrics=metrics, meta=meta)
