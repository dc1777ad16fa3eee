"""Batch-mean metrics for the ``metrics=`` argument of the evaluator."""

from __future__ import annotations

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
        if "/" in name:
            raise ValueError(f"`metrics[{name!r}]`: '/' is reserved for the 'dataset/metric' keys of "
                             "multi-dataset surfaces (and separates groups in the HDF5 file); use another "
                             "character, e.g. '_'.")
        if not callable(fn):
            raise TypeError(f"`metrics[{name!r}]` must be callable (output, target) -> scalar; got "
                            f"{type(fn).__name__}.")
    return dict(metrics)


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of correct predictions in a batch, as a scalar tensor.

    ``output`` of shape (B, C) with C > 1 is scored by its argmax against class
    indices ``target`` (B,); a single logit per sample, shape (B,) or (B, 1),
    is scored as ``logit > 0`` against 0/1 targets.
    """
    if output.dim() >= 2 and output.shape[-1] > 1:
        pred = output.argmax(dim=-1)
    else:
        pred = (output.reshape(target.shape) > 0).to(target.dtype)
    return (pred == target).to(output.dtype).mean()
