"""The surface file: HDF5 behind a whole-file digest, built in memory, read only when verified.

A file begins with an HDF5 user block of :data:`USER_BLOCK` bytes (HDF5 and the
Li et al. tools skip it) holding ``fastscape surface sha256=<hex>\\n`` and zeros:
the SHA-256 of every byte after the block. :func:`read_surface_file` checks it
before HDF5 parses a byte, so a damaged file is refused naming it and never
handed to HDF5 (which can crash on damaged metadata). The HDF5 part also stores a
SHA-256 of every array and attribute (``fastscape_checksums``). The bytes are
built in memory (:func:`surface_image`) and written with plain writes
(:func:`write_file`): a full disk is an ``OSError`` naming the file, never HDF5
failing halfway through its own write.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np

from ._optional import require
from ._plane_path import PlanePath

__all__ = ["USER_BLOCK", "NotASurfaceFile", "surface_image", "read_surface_file", "write_file",
           "NOT_HDF5"]

_AXIS_KEYS = ("xcoordinates", "ycoordinates", "zcoordinates")
#: a surface file begins with an HDF5 user block of this many bytes (HDF5 skips it): ``_MAGIC``, the
#: SHA-256 of every byte after the block in hex, a newline, zeros. It is checked before HDF5 reads a byte.
USER_BLOCK = 512
_MAGIC = b"fastscape surface sha256="
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: suffixes of files that are not HDF5 (figures, ParaView, arrays): Surface.save refuses them
NOT_HDF5 = (".png", ".jpg", ".jpeg", ".svg", ".pdf", ".gif", ".html", ".htm", ".vtp", ".vtk", ".npz", ".npy",
            ".json", ".csv", ".txt", ".pt", ".pth")


class NotASurfaceFile(ValueError):
    """A readable HDF5 file that holds no fastscape surface (no ``fastscape`` group)."""


def surface_image(surface) -> bytes:
    """The bytes of ``surface``'s file (see :meth:`Surface.save`), built in memory: a full disk
    then fails a plain write, never HDF5 halfway through its own."""
    h5py = require("h5py", what="Writing a surface file")

    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=USER_BLOCK) as f:
        _write_h5(surface, f)
    image = buffer.getvalue()
    head = _MAGIC + hashlib.sha256(image[USER_BLOCK:]).hexdigest().encode() + b"\n"
    return head.ljust(USER_BLOCK, b"\0") + image[USER_BLOCK:]


def _write_h5(self, f) -> None:
    for key, c in zip(_AXIS_KEYS, self.coords):
        f.create_dataset(key, data=c)
    f.create_dataset("train_loss", data=_li_layout(self.loss))
    first = self.datasets[0] + "/" if self.datasets else ""
    if f"{first}accuracy" in self.metrics:
        f.create_dataset("train_acc", data=_li_layout(100.0 * self.metrics[f"{first}accuracy"]))
    if first and first != "test/":  # the Li et al. tools also read a test split
        for theirs, ours, scale in (("test_loss", "test/loss", 1.0), ("test_acc", "test/accuracy", 100.0)):
            if ours in self.metrics:
                f.create_dataset(theirs, data=_li_layout(scale * self.metrics[ours]))
    g = f.create_group("fastscape")
    g.create_dataset("loss", data=self.loss)
    for name, arr in self.metrics.items():  # "test/accuracy" is metrics/test/accuracy
        g.create_dataset(f"metrics/{name}", data=arr)
    if self.metrics:
        g["metrics"].attrs["order"] = json.dumps(list(self.metrics))
    if self.path is not None:
        d = g.create_dataset("path", data=np.asarray(self.path, dtype=np.float64))
        if getattr(self.path, "counts", None) is not None:  # what the path counts (a PlanePath of train())
            d.attrs["unit"] = str(self.path.unit)
            g.create_dataset("path_counts", data=np.asarray(self.path.counts))
    f.attrs["fastscape_meta"] = json.dumps(self.meta, default=str)
    f.attrs["fastscape_checksums"] = json.dumps(_checksums(f), sort_keys=True)


def write_file(path: Path, data: bytes, *, sync: bool = False) -> None:
    """Write ``data`` to ``path`` (its folder made); a partial file is removed, and an OSError
    (a full disk, a file-size limit) names the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as err:
        if path.is_file():
            path.unlink(missing_ok=True)
        raise type(err)(err.errno, f"cannot write {str(path)!r}: {err.strerror or err}") from err


def _li_layout(arr: np.ndarray) -> np.ndarray:
    return arr.T if arr.ndim == 2 else arr


def _digest(arr: np.ndarray) -> str:
    a = np.ascontiguousarray(arr)
    return hashlib.sha256(f"{a.shape} {a.dtype.str}".encode() + a.tobytes()).hexdigest()


def _checksums(f) -> dict[str, str]:
    """SHA-256 of every dataset (as read back) and every attribute of an open HDF5 file, keyed
    ``"fastscape/loss"`` and ``"fastscape/metrics@order"``, ``"@fastscape_meta"``."""
    sums = {}

    def attrs(name, obj):
        for key, value in obj.attrs.items():
            if key != "fastscape_checksums":
                text = value if isinstance(value, str) else None
                sums[f"{name}@{key}"] = (hashlib.sha256(text.encode()).hexdigest() if text is not None
                                         else _digest(np.asarray(value)))

    def visit(name, obj):
        if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # a dataset
            sums[name] = _digest(np.asarray(obj[()]))
        attrs(name, obj)

    attrs("", f)
    f.visititems(visit)
    return sums


def read_surface_file(path) -> dict:
    """The parts of the surface file ``path`` (``coords``, ``loss``, ``metrics``, ``meta``, ``path``),
    verified; see :func:`fastscape.load_surface` for what it refuses."""
    h5py = require("h5py", what="Reading a surface file")

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a file path (str or os.PathLike); got {type(path).__name__} {path!r}.")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"`path` {str(path)!r} does not exist.")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"`path` {str(path)!r} cannot be read ({err.strerror or err}).") from err
    digested = raw.startswith(_MAGIC) or raw[USER_BLOCK:USER_BLOCK + 8] == _HDF5_SIGNATURE
    if digested:
        want = (_MAGIC + hashlib.sha256(raw[USER_BLOCK:]).hexdigest().encode() + b"\n").ljust(USER_BLOCK, b"\0")
        if len(raw) <= USER_BLOCK or raw[:USER_BLOCK] != want:
            raise ValueError(f"`path` {str(path)!r} is damaged: it fails its whole-file checksum (the SHA-256 in "
                             f"its first {USER_BLOCK} bytes does not match the bytes after them; the file was "
                             "changed, damaged or truncated after it was written). Delete it and compute it again.")
    elif not raw.startswith(_HDF5_SIGNATURE):
        raise ValueError(f"`path` {str(path)!r} is not a surface file, or is damaged: it begins with neither "
                         "fastscape's header nor HDF5's signature (a text file, or a truncated or damaged copy?).")
    try:
        return _read(h5py, io.BytesIO(raw) if digested else path, path, digested)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # h5py, codec and json errors alike: the bytes are not a valid surface file
        first = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(f"`path` {str(path)!r} is damaged: reading it failed ({type(err).__name__}: {first}). "
                         "Delete it and compute it again.") from err


def _read(h5py, source, path: Path, digested: bool) -> dict:
    """The surface in the HDF5 file ``source`` (a verified image, or an older file's path)."""
    name = str(path)
    try:
        f = h5py.File(source, "r")
    except OSError as err:
        raise ValueError(f"`path` {name!r} is not a readable HDF5 file ({str(err).splitlines()[0]}): it is damaged, "
                         "or truncated by an interrupted copy.") from err
    with f:
        if "fastscape" not in f:
            raise NotASurfaceFile(f"{name!r} is not a fastscape surface file (no 'fastscape' group).")
        raw = f.attrs.get("fastscape_checksums")
        if raw is None and digested:
            raise ValueError(f"`path` {name!r} is damaged: it has fastscape's header but no 'fastscape_checksums' "
                             "attribute.")
        if raw is None:
            warnings.warn(f"{name!r} holds no checksums (written by an older fastscape or another "
                          "tool); its values cannot be verified.", UserWarning, stacklevel=3)
        else:
            try:
                want = json.loads(raw)
            except (TypeError, ValueError) as err:
                raise ValueError(f"`path` {name!r} is damaged: its 'fastscape_checksums' attribute is not "
                                 f"readable ({err}).") from err
            have = _checksums(f)
            bad = sorted(k for k in set(want) | set(have) if have.get(k) != want.get(k))
            if bad:
                raise ValueError(f"{name!r} fails its checksum for {', '.join(bad[:5])}: the file was "
                                 "changed or damaged after it was written. Delete it and compute it again.")
        coords = [np.asarray(f[k][()]) for k in _AXIS_KEYS if k in f]
        g = f["fastscape"]
        loss = np.asarray(g["loss"][()])
        metrics = {}
        if "metrics" in g:
            g["metrics"].visititems(lambda key, obj: metrics.__setitem__(key, np.asarray(obj[()]))
                                    if isinstance(obj, h5py.Dataset) else None)
            order = json.loads(g["metrics"].attrs.get("order", "[]"))
            metrics = {k: metrics[k] for k in [*order, *sorted(metrics)] if k in metrics}
        path_ = np.asarray(g["path"][()]) if "path" in g else None
        if path_ is not None and "unit" in g["path"].attrs and "path_counts" in g:
            path_ = PlanePath(path_, unit=str(g["path"].attrs["unit"]), counts=np.asarray(g["path_counts"][()]))
        meta = json.loads(f.attrs.get("fastscape_meta", "{}"))
    return {"coords": coords, "loss": loss, "metrics": metrics, "meta": meta, "path": path_}
