"""The surface data object (its file format: :mod:`fastscape._surface_file`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._paths import file_path
from ._surface_file import NOT_HDF5, read_surface_file, surface_image, write_file

__all__ = ["Surface", "SurfaceValue", "load_surface", "check_shapes"]


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
        On a surface of several datasets (``data={"train": ..., "test": ...}``),
        every value but ``loss`` itself, keyed ``"train/accuracy"``,
        ``"test/loss"``, ``"test/accuracy"``, ...
    meta : dict
        What is needed to reproduce the surface: norm, seed, device, dtype,
        number of samples (``meta["datasets"]``: samples per dataset), chunk and
        batch sizes, timings, cosines between directions, model fingerprint.
    path : ndarray of shape (T, k) or None
        A training path in the surface's coordinates, drawn by the views and
        kept by :meth:`save`. Not a constructor argument (the constructor's
        signature is fixed): assign it, e.g.
        ``surface.path = fastscape.project(trajectory, directions, origin=model)``.

    Every value (the loss, each metric, each dataset's) is read the same way
    with :meth:`value`, which also says how to draw it.
    """

    coords: list[np.ndarray]
    loss: np.ndarray
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    path: np.ndarray | None = field(default=None, init=False)

    def __post_init__(self):
        check_shapes(self)

    @property
    def datasets(self) -> list[str]:
        """Names of the datasets in order (``[]`` for a surface of one unnamed dataset)."""
        return list(self.meta.get("datasets") or [])

    @property
    def value_names(self) -> list[str]:
        """Every value :meth:`value` reads, in order: ``["loss", *metrics]``, or for several
        datasets ``["train/loss", "train/accuracy", "test/loss", "test/accuracy"]``."""
        datasets = self.datasets
        if not datasets:
            return ["loss", *self.metrics]
        return [f"{datasets[0]}/loss", *self.metrics]

    def value(self, name: str = "loss") -> "SurfaceValue":
        """One value of the surface with what a view needs to draw it.

        Parameters
        ----------
        name : str
            One of :attr:`value_names`, e.g. ``"loss"``, ``"accuracy"``,
            ``"test/accuracy"``. ``"loss"`` is always :attr:`loss` (on a surface
            of several datasets, the first dataset's loss).

        Returns
        -------
        SurfaceValue
            ``data`` (shaped like ``loss``), ``label``, and the colour-scale
            hints ``log``, ``limits`` and ``best``.
        """
        if not isinstance(name, str):
            raise TypeError(f"`value` must be a string such as 'loss' or 'test/accuracy'; got {name!r}.")
        names = self.value_names
        if name == "loss" or name == names[0]:
            key, data = names[0], self.loss
        elif name in self.metrics:
            key, data = name, self.metrics[name]
        else:
            raise ValueError(f"`value` must be one of {names}; got {name!r}.")
        dataset, _, metric = key.rpartition("/")
        return SurfaceValue.describe(key, np.asarray(data), dataset or None, metric)

    def __repr__(self) -> str:
        lines = [f"Surface({_describe_grid(self)}"]
        datasets = self.meta.get("datasets")
        if datasets:
            lines.append("  datasets: " + ", ".join(f"{k}: {v}" for k, v in datasets.items()) + " samples")
        elif "n_samples" in self.meta:
            lines.append(f"  samples: {self.meta['n_samples']}")
        width = max(len(n) for n in self.value_names)
        for name in self.value_names:
            lines.append(f"  {name:<{width}}  {_summary(self, self.value(name))}")
        extra = []
        info = self.meta.get("directions") or {}
        if info.get("kind"):
            norm = f", {info['norm']} norm" if info.get("norm") else ""
            extra.append(f"directions: {info['kind']}{norm}")
        if self.path is not None:
            extra.append(f"path: {len(self.path)} points")
        if extra:
            lines.append("  " + "; ".join(extra))
        return "\n".join(lines) + ")"

    def _repr_html_(self) -> str:
        import html

        rows = "".join(f"<tr><td><code>{html.escape(n)}</code></td><td>{html.escape(_summary(self, self.value(n)))}"
                       "</td></tr>" for n in self.value_names)
        head = html.escape(_describe_grid(self))
        datasets = self.meta.get("datasets")
        if datasets:
            head += "; " + html.escape(", ".join(f"{k}: {v}" for k, v in datasets.items())) + " samples"
        if self.path is not None:
            head += f"; path of {len(self.path)} points"
        return (f"<div><b>Surface</b> {head}<table><tr><th>value</th><th>range</th></tr>{rows}</table>"
                "<small>read one with <code>surface.value(name)</code></small></div>")

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
        stored transposed; a surface of several datasets adds ``test_loss`` and
        ``test_acc`` from a dataset named ``"test"``. Our own arrays live under
        ``fastscape/``: ``loss``, ``metrics/<name>`` (``metrics/test/accuracy``
        for several datasets) and ``path`` when the surface has one.

        Every array and every attribute (the metadata included) get a SHA-256,
        stored in the attribute ``fastscape_checksums``: :func:`load_surface`
        refuses a file whose contents no longer match them. The file begins with a 512-byte HDF5 user block (HDF5 and the Li et al.
        tools skip it) holding ``fastscape surface sha256=<hex>``: the SHA-256 of
        every byte after it, verified before HDF5 parses anything, so a damaged
        file is refused naming it, never handed to HDF5.
        """
        path = file_path(path, "path")
        if path.suffix.lower() in NOT_HDF5:
            raise ValueError(f"`path` {path.name!r} ends in {path.suffix!r}, but Surface.save writes an HDF5 file "
                             "(.h5): save a figure with fastscape.plot.save, a ParaView file with "
                             "fastscape.save_vtp.")
        write_file(path, surface_image(self))
        return path


def check_shapes(surface: Surface) -> None:
    """A ValueError unless ``surface.loss`` has one axis per coordinate array, of its length, and
    every metric has the loss's shape."""
    grid = tuple(len(c) for c in surface.coords)
    shape = tuple(np.shape(surface.loss))
    if shape != grid:
        raise ValueError(f"`loss` has shape {shape}; `coords` make a {grid} grid (one axis per coordinate "
                         "array, as long as it).")
    for name, values in surface.metrics.items():
        if tuple(np.shape(values)) != shape:
            raise ValueError(f"`metrics[{name!r}]` has shape {tuple(np.shape(values))}; the loss has shape {shape}.")


@dataclass(frozen=True, repr=False)
class SurfaceValue:
    """One value of a :class:`Surface` (its loss, a metric, one dataset's loss or metric) and
    how to draw it: what :meth:`Surface.value` returns and every view reads.

    Attributes
    ----------
    name : str
        The key: ``"loss"``, ``"accuracy"``, ``"test/accuracy"``, ...
    data : ndarray shaped like ``Surface.loss``
    label : str
        For an axis or a colour bar: ``"loss"``, ``"test accuracy"``.
    dataset : str or None
        ``"test"`` for ``"test/accuracy"``; None on a surface of one dataset.
    metric : str
        The name after the ``"/"``: ``"loss"``, ``"accuracy"``, or the user's.
    kind : {"loss", "accuracy", "metric"}
        ``"accuracy"`` for a metric named ``accuracy``/``acc`` (or ending in ``accuracy``).
    log : bool
        Hint: a log colour/height scale (losses span decades); linear otherwise.
    limits : (float, float) or None
        A fixed colour range: ``(0.0, 1.0)`` for accuracy.
    best : {"min", "max"} or None
        Where the best point is: lowest loss, highest accuracy; None for other metrics.
    """

    name: str
    data: np.ndarray
    label: str
    dataset: str | None
    metric: str
    kind: str
    log: bool
    limits: tuple[float, float] | None
    best: str | None

    @classmethod
    def describe(cls, name: str, data: np.ndarray, dataset: str | None, metric: str) -> "SurfaceValue":
        low = metric.lower()
        kind = "loss" if low == "loss" else "accuracy" if low in ("acc", "accuracy") or low.endswith("accuracy") \
            else "metric"
        return cls(name=name, data=data, label=metric if dataset is None else f"{dataset} {metric}",
                   dataset=dataset, metric=metric, kind=kind, log=kind == "loss",
                   limits=(0.0, 1.0) if kind == "accuracy" else None,
                   best={"loss": "min", "accuracy": "max"}.get(kind))

    def __repr__(self) -> str:
        return (f"SurfaceValue({self.name!r}, shape {self.data.shape}, label {self.label!r}, kind {self.kind!r}, "
                f"log={self.log}, limits={self.limits}, best={self.best!r})")


def _describe_grid(surface: Surface) -> str:
    names = ("x", "y", "z")
    kind = {1: "line", 2: "plane", 3: "volume"}.get(surface.ndim, f"{surface.ndim}-D grid")
    size = f"{len(surface.coords[0])} points" if surface.ndim == 1 else \
        " x ".join(str(len(c)) for c in surface.coords)
    spans = ", ".join(f"{n} in [{_num(np.min(c))}, {_num(np.max(c))}]" for n, c in zip(names, surface.coords)
                      if len(c))
    return f"{kind} {size} over {spans}" if spans else f"{kind} {size}"


def _summary(surface: Surface, v: SurfaceValue) -> str:
    """``"0.982 .. 1.31, min at (0, 0.5)"``: the finite range and where the best point is."""
    finite = np.isfinite(v.data)
    if not finite.any():
        return "no finite value"
    lo, hi = float(v.data[finite].min()), float(v.data[finite].max())
    text = f"{_num(lo)} .. {_num(hi)}"
    bad = int(v.data.size - finite.sum())
    if v.best is not None and len(surface.coords) == v.data.ndim:
        flat = np.where(finite, v.data, np.inf if v.best == "min" else -np.inf)
        idx = np.unravel_index(int(np.argmin(flat) if v.best == "min" else np.argmax(flat)), v.data.shape)
        text += f", {v.best} at ({', '.join(_num(c[i]) for c, i in zip(surface.coords, idx))})"
    if bad:
        text += f", {bad} not finite"
    return text


def _num(x) -> str:
    return f"{float(x):.4g}"


def load_surface(path) -> Surface:
    """Read a surface written by :meth:`Surface.save`.

    The whole-file digest in the file's first bytes is verified before HDF5
    reads anything; then every array and attribute is checked against its own
    checksum. A file of an older fastscape (HDF5 from its first byte, no digest)
    is read as before.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        ``path`` is damaged (a flipped byte, a truncated copy: the message names
        the file and says so), is not a surface file (a text file, an HDF5 file of
        another tool), or its arrays or metadata no longer match their checksums.
    """
    parts = read_surface_file(path)
    surface = Surface(coords=parts["coords"], loss=parts["loss"], metrics=parts["metrics"], meta=parts["meta"])
    surface.path = parts["path"]
    return surface
