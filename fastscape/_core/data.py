"""Evaluation data: an ``(inputs, targets)`` pair, a DataLoader, a Dataset or any
iterable of ``(inputs, targets)`` batches, turned into a re-iterable list of
batches on the evaluation device.

``inputs`` is a tensor or a tuple of tensors (passed to ``model(*inputs)``);
``targets`` is a tensor whose first dimension counts the samples. Floating
tensors are cast to the evaluation dtype; integer tensors (class labels, token
ids) keep theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .params import positive_int


def _cast(t, device, dtype):
    if isinstance(t, torch.Tensor):
        t = t.detach()
        if t.is_floating_point() and dtype is not None:
            return t.to(device=device, dtype=dtype)
        return t.to(device=device)
    if isinstance(t, (tuple, list)):
        return tuple(_cast(x, device, dtype) for x in t)
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


def _as_pair(item, i):
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
    cache_bytes : int
        Batches are moved to ``device`` once when they total at most this many
        bytes; otherwise each is moved on use.
    """

    def __init__(self, data, *, batch_size=None, device="cpu", dtype=torch.float32,
                 cache_bytes: int = 2 << 30):
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
        self.on_device = total <= cache_bytes or self.device.type == "cpu"
        if self.on_device:
            raw = [(_cast(x, self.device, dtype), _cast(y, self.device, dtype)) for x, y in raw]
        self._raw = [(x, y) for x, y in raw if _first_dim(y) > 0]
        self.batch_sizes = [_first_dim(y) for _, y in self._raw]

    @staticmethod
    def _collect(data):
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
            x, y = _as_pair(item, i)
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

    def __len__(self):
        return len(self._raw)

    def __iter__(self):
        for x, y in self._raw:
            if not self.on_device:
                x, y = _cast(x, self.device, self.dtype), _cast(y, self.device, self.dtype)
            yield x, y, _first_dim(y)

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


def as_args(inputs) -> tuple:
    """Model arguments from batch inputs: a tensor is one argument, a tuple several."""
    return inputs if isinstance(inputs, tuple) else (inputs,)
