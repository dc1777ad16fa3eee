"""The one differentiable objective: a model's whole-data mean loss as a function of its weights.

``f(params) = sum_b n_b * loss_fn(model(x_b; params), y_b) / sum_b n_b``

over the data batches ``b`` (``n_b`` samples each), computed through
``torch.func.functional_call`` with the model in eval mode, so the model's own
weights, ``.grad`` attributes and BatchNorm statistics are never written. The
Hessian functions differentiate it twice, training evaluates it without
gradients, and the gradient views take its gradient. The grid evaluator
computes the same mean for many points at once without gradients
(:mod:`.evaluator`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from .data import Batches, as_args
from .params import ParamDict, model_buffers, model_state_guard

__all__ = ["batch_loss", "mean_loss", "check_scalar"]


def check_scalar(value, what: str) -> torch.Tensor:
    """``value`` if it is a 0-d tensor (a batch mean), else an error naming ``what``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{what}` must return a scalar tensor; got {type(value).__name__}.")
    if value.numel() != 1 or value.dim() != 0:
        raise ValueError(
            f"`{what}` must return a scalar tensor (the mean over the batch); got shape "
            f"{tuple(value.shape)}. Use reduction='mean'."
        )
    return value


def batch_loss(model: nn.Module, params: ParamDict, args: tuple, y, loss_fn: Callable,
               buffers: ParamDict | None = None) -> torch.Tensor:
    """``loss_fn(model(*args), y)`` at ``params`` (and ``buffers``): a differentiable 0-d tensor.

    ``params`` may hold any subset of the model's tensors; the rest come from
    ``buffers``, then from the model itself.
    """
    out = functional_call(model, {**(buffers or {}), **params}, args)
    return check_scalar(loss_fn(out, y), "loss_fn")


def mean_loss(model: nn.Module, params: ParamDict, batches: Batches, loss_fn: Callable, *,
              buffers: ParamDict | None = None) -> torch.Tensor:
    """The sample-weighted mean of ``loss_fn`` over all of ``batches``, at ``params``.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode for the call (every submodule's flag restored after).
    params : dict name -> Tensor
        The weights to evaluate at (autograd or ``torch.func`` may track them).
    batches : Batches
        The data, on the device and in the dtype of ``params``.
    loss_fn : callable ``(output, target) -> scalar tensor``
        The mean loss of one batch.
    buffers : dict name -> Tensor, optional
        Buffer values (default: the model's own).

    Returns
    -------
    Tensor of shape ()
        Differentiable with respect to ``params``.
    """
    buffers = model_buffers(model) if buffers is None else buffers
    total = None
    with model_state_guard(model):
        for x, y, n in batches:
            term = batch_loss(model, params, as_args(x), y, loss_fn, buffers) * n
            total = term if total is None else total + term
    return total / batches.n_samples
