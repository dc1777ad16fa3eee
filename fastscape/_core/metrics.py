"""Batch-mean metrics for the ``metrics=`` argument of the evaluator."""

from __future__ import annotations

import torch

__all__ = ["accuracy"]


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
