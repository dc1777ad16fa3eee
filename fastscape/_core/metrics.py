"""Batch-mean metrics for the ``metrics=`` argument of the evaluator."""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Mapping

import torch

__all__ = ["accuracy", "check_metrics"]

#: names a user metric may not take: the loss itself is stored under "loss"
RESERVED = ("loss",)


def check_metrics(metrics) -> dict[str, Callable]:
    """``metrics`` as a dict after checking every name and function, before anything runs.

    A name must be a non-empty string, not ``"loss"`` (the loss is stored under
    that name, so the metric would replace it) and without ``"/"`` (reserved for
    the ``"dataset/metric"`` keys of multi-dataset surfaces, and a path separator
    in the HDF5 file).
    """
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"`metrics` must be a dict name -> callable(output, target); got {type(metrics).__name__}.")
    for name, fn in metrics.items():
        if not isinstance(name, str):
            raise TypeError(f"`metrics` names must be strings; got {name!r} ({type(name).__name__}).")
        if not name.strip():
            raise ValueError(f"`metrics[{name!r}]` has an empty name; name it, e.g. 'accuracy'.")
        if name in RESERVED:
            raise ValueError(f"`metrics[{name!r}]`: the name {name!r} is reserved for the loss itself, which the "
                             "metric would replace; name it otherwise, e.g. 'loss_metric'.")
        if name.strip() in (".", ".."):
            raise ValueError(f"`metrics[{name!r}]`: a name cannot be '.' or '..' (they name folders in the HDF5 "
                             "file a surface is saved to); name it, e.g. 'accuracy'.")
        if "/" in name:
            raise ValueError(f"`metrics[{name!r}]`: '/' is reserved for the 'dataset/metric' keys of "
                             "multi-dataset surfaces (and separates groups in the HDF5 file); use another "
                             "character, e.g. '_'.")
        if not callable(fn):
            raise TypeError(f"`metrics[{name!r}]` must be callable (output, target) -> scalar; got "
                            f"{type(fn).__name__}.")
    return dict(metrics)


def accuracy(output: torch.Tensor | None = None, target: torch.Tensor | None = None, *,
             from_logits: bool | None = None, threshold: float | None = None):
    """Fraction of correct predictions in a batch, as a scalar tensor; or, called with
    keywords only, the metric with that convention.

    The convention, by the shape of ``output``:

    - (B, C) with C >= 2: the class is the argmax of each row (the same for logits
      and probabilities), scored against class indices ``target`` of shape (B,) or
      one-hot / probability rows of shape (B, C) (their argmax).
    - one column, (B,) or (B, 1): a binary classifier, scored against 0/1 targets
      of shape (B,) or (B, 1). ``from_logits=True`` reads logits (class 1 where
      ``output > log(t / (1 - t))``, i.e. ``output > 0`` for ``t = 0.5``);
      ``from_logits=False`` reads probabilities (class 1 where ``output > t``),
      ``t = threshold`` (default 0.5, a probability either way).
      ``from_logits=None`` (the default) detects it per batch: **probabilities
      when every output of the batch lies in [0, 1]** (a sigmoid output),
      logits otherwise. A logit net whose outputs all fall in [0, 1] would be
      misread, so force the convention when that can happen.

    Parameters
    ----------
    output : Tensor of shape (B, C), (B, 1) or (B,)
    target : Tensor of shape (B,), (B, 1) or (B, C)
    from_logits : bool or None
    threshold : float in (0, 1), optional
        A probability; needs ``from_logits`` to say which scale ``output`` is on.

    Returns
    -------
    Tensor
        The batch's accuracy, a 0-d tensor in the output's dtype. Called as
        ``accuracy(from_logits=..., threshold=...)`` (no tensors), the metric
        ``(output, target) -> Tensor`` with that convention, for
        ``metrics={"accuracy": fastscape.accuracy(from_logits=True)}``.

    Raises
    ------
    ValueError
        Where the convention cannot be decided: one output column with targets
        other than 0/1 (several classes, or a regression target), shapes that do
        not pair up, a ``threshold`` without ``from_logits``.

    The rule reads only tensor values, so it holds at every point of a
    vmapped grid without synchronising with the device.
    """
    if from_logits is not None and not isinstance(from_logits, bool):
        raise TypeError(f"`from_logits` must be True, False or None; got {from_logits!r}.")
    if threshold is not None:
        if from_logits is None:
            raise ValueError(f"`threshold` ({threshold!r}) is a probability; `from_logits` must say which scale "
                             "the outputs are on (True: logits, False: probabilities).")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise ValueError(f"`threshold` must lie in (0, 1) (a probability); got {threshold!r}.")
    if output is None and target is None:
        return functools.partial(accuracy, from_logits=from_logits, threshold=threshold)
    if output is None or target is None:
        raise TypeError("`accuracy` takes both `output` and `target` (or neither, to build the metric).")
    B = output.shape[0] if output.dim() else 0
    if output.dim() == 2 and output.shape[1] >= 2:
        pred = output.argmax(dim=-1)
        if target.dim() == 2 and target.shape == output.shape:
            target = target.argmax(dim=-1)
        elif target.shape != (B,):
            raise ValueError(f"`output` has shape {tuple(output.shape)} ({output.shape[1]} classes); targets must "
                             f"be class indices of shape ({B},) or rows of shape {tuple(output.shape)}; "
                             f"got targets of shape {tuple(target.shape)}.")
        return (pred == target).to(output.dtype).mean()
    if output.dim() not in (1, 2) or output.dim() == 2 and output.shape[1] != 1:
        raise ValueError(f"`output` must have shape (B, C), (B, 1) or (B,); got {tuple(output.shape)}.")
    if target.shape not in ((B,), (B, 1)):
        raise ValueError(f"`output` has one output column, shape {tuple(output.shape)}; targets must have shape "
                         f"({B},) or ({B}, 1); got {tuple(target.shape)}.")
    _check_binary(target)
    z = output.reshape(B)
    t = 0.5 if threshold is None else float(threshold)
    as_prob = z > t
    as_logit = z > math.log(t / (1 - t))
    if from_logits is True:
        pred = as_logit
    elif from_logits is False:
        pred = as_prob
    else:
        probabilities = ((z >= 0) & (z <= 1)).all()
        pred = torch.where(probabilities, as_prob, as_logit)
    return (pred == (target.reshape(B) > 0.5)).to(output.dtype).mean()


#: id -> weak reference of target tensors already checked (the evaluator passes the same batches
#: at every chunk; checking once keeps the device from synchronising at every call)
_CHECKED: dict[int, weakref.ref] = {}
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def _check_binary(target: torch.Tensor) -> None:
    """Raise unless every target is 0 or 1 (skipped while torch.compile traces: no data-dependent branches)."""
    if _is_compiling():
        return
    key = id(target)
    ref = _CHECKED.get(key)
    if ref is not None and ref() is target:
        return
    bad = (target != 0) & (target != 1)
    if bool(bad.any()):
        example = target[bad].reshape(-1)[0].item()
        raise ValueError(f"`output` has one output column (a binary classifier), which needs 0/1 targets; "
                         f"got a target of {example!r}. For several classes, give the model one output per "
                         "class; for a regression, accuracy does not apply.")
    try:
        _CHECKED[key] = weakref.ref(target, lambda _, k=key: _CHECKED.pop(k, None))
    except TypeError:  # not weak-referenceable: check every time
        pass
