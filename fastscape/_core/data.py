"""Evaluation data: an ``(inputs, targets)`` pair, a DataLoader, a Dataset or any
iterable of ``(inputs, targets)`` batches, turned into a re-iterable list of
batches on the evaluation device.

``inputs`` is a tensor or a tuple of tensors (passed to ``model(*inputs)``), or a dict of
tensors passed by name (``{"input_ids": ids, "attention_mask": mask}``: :class:`KeywordInputs`,
bound to the model's forward by :meth:`Batches.bind`); ``targets`` is a tensor whose first
dimension counts the samples. A batch may also be one dict with a ``"labels"`` entry, as a
Hugging Face collator yields it: the labels are the targets, the other entries the inputs.
Floating tensors are cast to the evaluation dtype; integer tensors (class labels, token ids)
keep theirs.

Several datasets (say a train and a test split) evaluated together are
:class:`NamedBatches`: the evaluator runs each chunk of grid points over the
batches of every dataset in turn and averages each dataset over its own samples.
"""

from __future__ import annotations

import copy
import inspect
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


class KeywordInputs(tuple):
    """A batch's inputs given by name: the tensors (a tuple, so that every tuple of inputs is
    handled alike) and their ``names``, the model's forward parameters they go to."""

    def __new__(cls, values, names):
        new = super().__new__(cls, values)
        new.names = tuple(names)
        return new

    def __reduce__(self):
        return (KeywordInputs, (tuple(self), self.names))


def _like(t, values):
    """``values`` as the same kind of tuple as ``t`` (keyword inputs keep their names)."""
    return KeywordInputs(values, t.names) if isinstance(t, KeywordInputs) else tuple(values)


def head_samples(args: tuple, k: int) -> tuple:
    """The first ``k`` samples of a batch's model inputs (same kind of tuple): every tensor whose
    first dimension is the sample count of the first such tensor is cut; other inputs (a mask shared
    by every sample) are kept whole. For checks that look at structure, not at values."""
    n = next((a.shape[0] for a in args if isinstance(a, torch.Tensor) and a.dim() > 0), None)
    if n is None or n <= k:
        return args
    return _like(args, [a[:k] if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == n else a
                        for a in args])


def _cast(t, device, dtype, non_blocking=False):
    if isinstance(t, torch.Tensor):
        t = t.detach()
        if t.is_floating_point() and dtype is not None:
            return t.to(device=device, dtype=dtype, non_blocking=non_blocking)
        return t.to(device=device, non_blocking=non_blocking)
    if t is None:  # a forward parameter left at its default between two given by name
        return None
    if isinstance(t, (tuple, list)):
        return _like(t, [_cast(x, device, dtype, non_blocking) for x in t])
    raise TypeError(f"data batches must hold tensors; got {type(t).__name__}.")


def _first_dim(t) -> int:
    if isinstance(t, torch.Tensor):
        if t.dim() == 0:
            raise ValueError("data tensors need a sample dimension first; got a 0-d tensor.")
        return t.shape[0]
    return _first_dim(next(x for x in t if x is not None))


def _slice(t, start, stop):
    if isinstance(t, torch.Tensor):
        return t[start:stop]
    if t is None:
        return None
    return _like(t, [_slice(x, start, stop) for x in t])


def _nbytes(t) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    return 0 if t is None else sum(_nbytes(x) for x in t)


def _inputs(x, i):
    """Batch ``i``'s inputs as stored: a dict of tensors becomes :class:`KeywordInputs`."""
    if isinstance(x, Mapping):
        bad = [k for k, v in x.items() if not isinstance(v, torch.Tensor)]
        if bad or not x:
            raise TypeError(f"`data` batch {i}: inputs given by name must be tensors; got "
                            + (f"{type(x[bad[0]]).__name__} for {bad[0]!r}." if bad else "an empty dict."))
        return KeywordInputs(list(x.values()), list(x))
    return x


def as_pair(item, i):
    """``(inputs, targets)`` of batch ``i`` of ``data``, or a TypeError naming the batch. A dict batch
    with a ``"labels"`` entry (a Hugging Face collator's) is ``(the other entries, labels)``."""
    if isinstance(item, Mapping):
        if "labels" not in item:
            raise TypeError(
                f"`data` batch {i} is a dict without a 'labels' entry (keys {list(item)}). Give a dict batch "
                "with 'labels' (the targets; the other entries go to the model by name), or (inputs, targets) "
                "pairs such as ({'input_ids': ids, 'attention_mask': mask}, targets).")
        return {k: v for k, v in item.items() if k != "labels"}, item["labels"]
    if not isinstance(item, Sequence) or len(item) != 2:
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
            return [(_inputs(x, 0), y)]
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
            x = _inputs(x, i)
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

    def bind(self, model) -> "Batches":
        """The batches with inputs given by name passed to ``model.forward`` positionally
        (:func:`bind_inputs`); ``self`` when none are."""
        if not any(isinstance(x, KeywordInputs) for x, _ in self._raw):
            return self
        new = copy.copy(self)
        new._raw = [(bind_inputs(model, x) if isinstance(x, KeywordInputs) else x, y) for x, y in self._raw]
        return new

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

    def bind(self, model) -> "NamedBatches":
        """Every dataset's inputs given by name bound to ``model.forward`` (see :meth:`Batches.bind`)."""
        new = object.__new__(NamedBatches)
        new._parts = {name: p.bind(model) for name, p in self._parts.items()}
        new._index()
        return new

    def resplit(self, batch_size: int) -> "NamedBatches":
        """Every dataset in batches of at most ``batch_size`` (a new object)."""
        new = object.__new__(NamedBatches)
        new._parts = {name: p.resplit(batch_size) for name, p in self._parts.items()}
        new._index()
        return new


def _positional(model) -> list[inspect.Parameter]:
    """The positional parameters of ``model.forward``; for a wrapper whose forward takes only
    ``*args, **kwargs`` and passes them on (a peft ``PeftModel``), those of the model it wraps
    (``get_base_model()``, or its only child)."""
    for _ in range(4):
        sig = inspect.signature(model.forward).parameters.values()
        named = [p for p in sig if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if named or not any(p.kind is p.VAR_POSITIONAL for p in sig):
            return named
        children = list(model.children())
        inner = model.get_base_model() if hasattr(model, "get_base_model") else children[0] if len(children) == 1 else None
        if inner is None or inner is model:
            return named
        model = inner
    return named


def bind_inputs(model, inputs: KeywordInputs) -> tuple:
    """Inputs given by name as the positional arguments of ``model.forward``: each in its
    parameter's place, the parameters between them at their defaults (``None`` for the
    ``past_key_values`` of a Hugging Face model). ``functional_call`` and ``vmap`` take
    positional arguments; this is how keyword inputs reach them."""
    params = _positional(model)
    names = [p.name for p in params]
    unknown = [k for k in inputs.names if k not in names]
    if unknown:
        raise TypeError(f"`data` inputs are given by name, and {type(model).__name__}.forward has no "
                        f"parameter {unknown[0]!r} to take one (its parameters: {names[:8]}).")
    given = dict(zip(inputs.names, inputs))
    last = max(names.index(k) for k in given)
    args = []
    for p in params[: last + 1]:
        if p.name not in given and p.default is p.empty:
            raise TypeError(f"`data` inputs are given by name and leave out {p.name!r}, which "
                            f"{type(model).__name__}.forward requires.")
        args.append(given.get(p.name, p.default))
    return tuple(args)


def positional_note(model, args: tuple) -> str:
    """For an error raised by a forward that got several positional inputs: which parameter each
    went to, and how to name them instead ("" for a single input or inputs given by name)."""
    if len(args) < 2 or isinstance(args, KeywordInputs):
        return ""
    try:
        names = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return ""
    went = ", ".join(f"input {i} to `{n}`" for i, n in enumerate(names[: len(args)]))
    return (f" The batch's {len(args)} inputs go to {type(model).__name__}.forward by position ({went}); to "
            f"pass them by name, give the inputs as a dict, e.g. ({{{names[0]!r}: ids, 'attention_mask': mask}}, "
            "targets).")


def output_note(out) -> str:
    """For an error of a loss on the model's output: what to write when the output is not a tensor
    (a Hugging Face ``ModelOutput``: read ``.logits`` in the loss)."""
    if isinstance(out, torch.Tensor) or not hasattr(out, "logits"):
        return ""
    return (f" The model returns a {type(out).__name__}, not a tensor: read its logits in the loss, e.g. "
            "loss_fn=lambda out, y: F.cross_entropy(out.logits.flatten(0, -2), y.flatten()) (a causal LM's "
            "next-token loss: out.logits[:, :-1] against y[:, 1:]).")


def as_args(inputs) -> tuple:
    """Model arguments from batch inputs: a tensor is one argument, a tuple several."""
    if isinstance(inputs, (KeywordInputs, Mapping)):
        raise TypeError("inputs given by name need the model's signature: bind them with Batches.bind(model) "
                        "(loss_surface and the curvature functions do).")
    return inputs if isinstance(inputs, tuple) else (inputs,)


def batch_args(model, item, i: int, device) -> tuple[tuple, torch.Tensor]:
    """``(args, targets)`` of batch ``i`` as a loader yields it, for calling ``model(*args)`` directly (a
    training step): the same batch forms as :class:`Batches` (:func:`as_pair`; inputs given by name bound
    by :func:`bind_inputs`), on ``device`` in their own dtypes."""
    x, y = as_pair(item, i)
    x = _cast(_inputs(x, i), device, None)
    y = torch.as_tensor(y).to(device)
    return (bind_inputs(model, x) if isinstance(x, KeywordInputs) else as_args(x)), y


def warn_nonfinite(batches, consequence: str = "the loss will be NaN (or inf) at every point",
                   stacklevel: int = 3) -> None:
    """Warn once, naming where, when ``batches`` hold NaN or inf (what ``loss_surface`` says too)."""
    bad = batches.nonfinite()
    if bad is not None:
        warnings.warn(f"`data` holds {bad}: {consequence}.", UserWarning, stacklevel=stacklevel)
