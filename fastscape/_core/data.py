"""Evaluation data: an ``(inputs, targets)`` pair, a DataLoader, a Dataset or any
iterable of ``(inputs, targets)`` batches, turned into a re-iterable list of
batches on the evaluation device.

``inputs`` is a tensor or a tuple of tensors (passed to ``model(*inputs)``);
``targets`` is a tensor whose first dimension counts the samples. Floating
tensors are cast to the evaluation dtype; integer tensors (class labels, token
ids) keep theirs.

Several datasets (say a train and a test split) evaluated together are
:class:`NamedBatches`: the evaluator runs each chunk of grid points over the
batches of every dataset in turn and averages each dataset over its own samples.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

import torch

from .memory import free_memory
from .params import positive_int


#: data up to this many bytes is always kept on the evaluation device
RESIDENT_MIN_BYTES = 2 << 30
#: and up to this share of the device's free memory (``free_memory``), when that is more
RESIDENT_SHARE = 0.25


def resident_bytes(device: torch.device) -> int | None:
    """Bytes of data that :class:`Batches` moves to ``device`` once and keeps there, or
    ``None`` on CPU (data is used where it is). On a GPU: a quarter of its free memory
    (``torch.cuda.mem_get_info``, or ``FASTSCAPE_MEMORY_BUDGET``), at least 2 GiB; larger
    data is copied batch by batch as it is used, without waiting for the copy."""
    if device.type == "cpu":
        return None
    try:
        free, _source = free_memory(device)
    except (RuntimeError, AssertionError):  # a device without memory statistics
        return RESIDENT_MIN_BYTES
    return max(RESIDENT_MIN_BYTES, int(free * RESIDENT_SHARE))


def _cast(t, device, dtype, non_blocking=False):
    if isinstance(t, torch.Tensor):
        t = t.detach()
        if t.is_floating_point() and dtype is not None:
            return t.to(device=device, dtype=dtype, non_blocking=non_blocking)
        return t.to(device=device, non_blocking=non_blocking)
    if isinstance(t, (tuple, list)):
        return tuple(_cast(x, device, dtype, non_blocking) for x in t)
    raise TypeError(f"data batches must hold tensors; got {type(t).__name__}.")


def _first_dim(t) -> int:
    if isinstance(t, torch.Tensor):
        if t.dim() == 0:
            raise ValueError("data tensors need a sample dimension first; got a 0-d tensor.")
        return t.shape[0]
    return _first_dim(t[0])


def _slice(t, start, stop):
    if isinstance(t, torch.Tensor):
        return t[start:stop]
    return tuple(_slice(x, start, stop) for x in t)


def _nbytes(t) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    return sum(_nbytes(x) for x in t)


def as_pair(item, i):
    """``(inputs, targets)`` of batch ``i`` of ``data``, or a TypeError naming the batch."""
    if isinstance(item, dict) or not isinstance(item, Sequence) or len(item) != 2:
        raise TypeError(
            f"`data` batch {i} must be an (inputs, targets) pair; got {type(item).__name__}"
            + (f" of length {len(item)}" if isinstance(item, Sequence) else "")
            + "."
        )
    return item[0], item[1]


class Batches:
    """A fixed, re-iterable list of ``(inputs, targets, n)`` batches.

    Parameters
    ----------
    data : (inputs, targets) pair, DataLoader, Dataset or iterable of pairs
    batch_size : int or None
        Largest number of samples per batch. A tensor pair is split into
        batches of this size; a loader's batches larger than it are split too.
        ``None`` keeps the data as given (one batch for a tensor pair).
    device, dtype : where and in which floating dtype batches are used.
    cache_bytes : int, optional
        Batches are moved to ``device`` once, and stay there for every chunk of
        points, when they total at most this many bytes (default: see
        :func:`resident_bytes`, a quarter of a GPU's free memory); otherwise each
        is copied on use, asynchronously.
    """

    def __init__(self, data, *, batch_size=None, device="cpu", dtype=torch.float32,
                 cache_bytes: int | None = None):
        self.device = torch.device(device)
        self.dtype = dtype
        raw = self._collect(data)
        if batch_size is not None:
            batch_size = positive_int(batch_size, "batch_size")
            raw = [piece for x, y in raw for piece in self._split(x, y, batch_size)]
        self.n_samples = sum(_first_dim(y) for _, y in raw)
        if self.n_samples == 0:
            raise ValueError("`data` is empty: it holds no samples to evaluate the loss on.")
        total = sum(_nbytes(x) + _nbytes(y) for x, y in raw)
        if cache_bytes is None:
            cache_bytes = resident_bytes(self.device)
        self.on_device = self.device.type == "cpu" or total <= cache_bytes
        if self.on_device:
            raw = [(_cast(x, self.device, dtype), _cast(y, self.device, dtype)) for x, y in raw]
        self._raw = [(x, y) for x, y in raw if _first_dim(y) > 0]
        self.batch_sizes = [_first_dim(y) for _, y in self._raw]

    @staticmethod
    def _collect(data):
        if isinstance(data, (tuple, list)) and len(data) == 2 and any(type(t).__module__ == "numpy" for t in data):
            raise TypeError("`data` holds numpy arrays; fastscape needs torch tensors: pass "
                            "(torch.from_numpy(inputs), torch.from_numpy(targets)).")
        if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], torch.Tensor):
            x, y = data
            nx, ny = _first_dim(x), _first_dim(y)
            if nx != ny:
                raise ValueError(
                    f"`data` inputs have {nx} samples but targets have {ny}; they must match."
                )
            return [(x, y)]
        if isinstance(data, torch.Tensor):
            raise TypeError("`data` must be an (inputs, targets) pair or an iterable of such "
                            "batches; got a single tensor.")
        if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, Sequence):
            # a map-style Dataset: batch it with a DataLoader
            from torch.utils.data import DataLoader, Dataset

            if isinstance(data, Dataset):
                data = DataLoader(data, batch_size=256, shuffle=False)
        if not isinstance(data, Iterable):
            raise TypeError(
                f"`data` must be an (inputs, targets) pair, a DataLoader, a Dataset or an iterable "
                f"of (inputs, targets) batches; got {type(data).__name__}."
            )
        out = []
        for i, item in enumerate(data):
            x, y = as_pair(item, i)
            if not isinstance(y, torch.Tensor):
                y = torch.as_tensor(y)
            if _first_dim(x) != _first_dim(y):
                raise ValueError(
                    f"`data` batch {i}: inputs have {_first_dim(x)} samples but targets have "
                    f"{_first_dim(y)}."
                )
            out.append((x, y))
        return out

    @staticmethod
    def _split(x, y, size):
        n = _first_dim(y)
        return [(_slice(x, s, s + size), _slice(y, s, s + size)) for s in range(0, n, size)]

    #: one dataset, unnamed (see :class:`NamedBatches`)
    names = None

    @property
    def groups(self) -> list[int]:
        """The dataset of each batch: all 0."""
        return [0] * len(self._raw)

    @property
    def counts(self) -> list[int]:
        """Samples per dataset: ``[n_samples]``."""
        return [self.n_samples]

    def __len__(self):
        return len(self._raw)

    def __iter__(self):
        for x, y in self._raw:
            if not self.on_device:  # a host-to-device copy that the host does not wait for
                x, y = _cast(x, self.device, self.dtype, True), _cast(y, self.device, self.dtype, True)
            yield x, y, _first_dim(y)

    def tensors(self):
        """The ``(inputs, targets)`` batches as stored, without moving or casting them."""
        return iter(self._raw)

    def nonfinite(self) -> str | None:
        """Where the data first holds NaN or inf, e.g. ``"NaN in its inputs (batch 0)"``; None if nowhere."""
        for b, (x, y) in enumerate(self._raw):
            for what, group in (("inputs", x if isinstance(x, (tuple, list)) else (x,)), ("targets", (y,))):
                for t in group:
                    if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        kind = "NaN" if bool(torch.isnan(t).any()) else "inf"
                        return f"{kind} in its {what} (batch {b})"
        return None

    def first(self):
        """The first batch ``(inputs, targets, n)`` on the device."""
        return next(iter(self))

    def resplit(self, batch_size: int) -> "Batches":
        """The same samples in batches of at most ``batch_size`` (a new object)."""
        new = object.__new__(Batches)
        new.device, new.dtype, new.on_device = self.device, self.dtype, self.on_device
        new._raw = [p for x, y in self._raw for p in self._split(x, y, batch_size)]
        new.n_samples = self.n_samples
        new.batch_sizes = [_first_dim(y) for _, y in new._raw]
        return new


class NamedBatches:
    """Several datasets, each a :class:`Batches`, walked one after the other as one list of
    batches; ``groups[b]`` is the dataset of batch ``b``.

    Parameters
    ----------
    data : dict name -> data
        Each value anything :class:`Batches` takes; names are non-empty strings
        without ``"/"`` (values are keyed ``"name/loss"``), in the order given.
    batch_size, device, dtype, cache_bytes
        As in :class:`Batches`, for every dataset.
    """

    def __init__(self, data: Mapping, *, batch_size=None, device="cpu", dtype=torch.float32,
                 cache_bytes: int | None = None):
        if len(data) == 0:
            raise ValueError("`data` must name at least one dataset, e.g. {'train': (x, y)}; got an empty dict.")
        for name in data:
            if not isinstance(name, str) or not name:
                raise TypeError(f"`data` names must be non-empty strings; got {name!r}.")
            if "/" in name:
                raise ValueError(f"`data` names may not contain '/' (values are keyed 'name/loss'); got {name!r}.")
        self._parts = {name: Batches(d, batch_size=batch_size, device=device, dtype=dtype,
                                     cache_bytes=cache_bytes) for name, d in data.items()}
        self._index()

    def _index(self):
        parts = list(self._parts.values())
        self.names = list(self._parts)
        self.device, self.dtype = parts[0].device, parts[0].dtype
        self.counts = [p.n_samples for p in parts]
        self.n_samples = sum(self.counts)
        self.groups = [g for g, p in enumerate(parts) for _ in range(len(p))]
        self.batch_sizes = [n for p in parts for n in p.batch_sizes]

    def __len__(self):
        return len(self.groups)

    def __iter__(self):
        for part in self._parts.values():
            yield from part

    def first(self):
        """The first batch of the first dataset ``(inputs, targets, n)`` on the device."""
        return next(iter(self))

    @property
    def parts(self) -> dict[str, Batches]:
        """Each dataset's :class:`Batches`, by name, in order."""
        return dict(self._parts)

    def tensors(self):
        """Every dataset's ``(inputs, targets)`` batches as stored, one dataset after the other."""
        for part in self._parts.values():
            yield from part.tensors()

    def nonfinite(self) -> str | None:
        """Where the data first holds NaN or inf, naming the dataset; None if nowhere."""
        for name, part in self._parts.items():
            found = part.nonfinite()
            if found is not None:
                return found.replace(" (batch", f" (dataset {name!r}, batch")
        return None

    def resplit(self, batch_size: int) -> "NamedBatches":
        """Every dataset in batches of at most ``batch_size`` (a new object)."""
        new = object.__new__(NamedBatches)
        new._parts = {name: p.resplit(batch_size) for name, p in self._parts.items()}
        new._index()
        return new


def as_args(inputs) -> tuple:
    """Model arguments from batch inputs: a tensor is one argument, a tuple several."""
    return inputs if isinstance(inputs, tuple) else (inputs,)


def warn_nonfinite(batches, consequence: str = "the loss will be NaN (or inf) at every point",
                   stacklevel: int = 3) -> None:
    """Warn once, naming where, when ``batches`` hold NaN or inf (what ``loss_surface`` says too)."""
    bad = batches.nonfinite()
    if bad is not None:
        warnings.warn(f"`data` holds {bad}: {consequence}.", UserWarning, stacklevel=stacklevel)
