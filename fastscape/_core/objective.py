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

from .data import Batches, as_args, output_note
from .params import ParamDict, model_buffers, model_state_guard

__all__ = ["batch_loss", "mean_loss", "sample_mean", "check_scalar", "check_differentiable"]


def check_differentiable(model: nn.Module, what: str) -> None:
    """A ``ValueError`` naming the submodules whose full backward hooks ``torch.func`` cannot run.

    ``register_full_backward_hook`` and ``register_full_backward_pre_hook`` wrap
    a module's inputs and outputs in an ``autograd.Function`` that the
    ``torch.func`` transforms (``grad``, ``jvp``, ``vmap``) reject with an error
    about ``setup_context``; ``what`` names the caller (the Hessian, a gradient view).
    """
    from torch.nn.modules import module as _module

    hooked = [name or "(the model itself)" for name, m in model.named_modules()
              if m._backward_pre_hooks or (m._backward_hooks and m._is_full_backward_hook)]
    global_hooks = bool(_module._global_backward_pre_hooks) or (
        bool(_module._global_backward_hooks) and bool(getattr(_module, "_global_is_full_backward_hook", False)))
    if hooked or global_hooks:
        where = (f"on {', '.join(repr(n) for n in hooked[:5])}" + (" and more" if len(hooked) > 5 else "")
                 if hooked else "registered globally (register_module_full_backward_hook)")
        raise ValueError(
            f"`model` has full backward hooks {where}; {what} differentiates with torch.func, which cannot "
            "run them. Remove them for this call (keep the handle that register_full_backward_hook "
            "returned and call handle.remove()), then register them again.")


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


def scalar_of(fn: Callable, out, y, what: str) -> torch.Tensor:
    """``fn(out, y)``, checked to be a scalar tensor; an error inside ``fn`` is re-raised (same
    type) naming ``what`` and the shapes of the model's output and of the targets it got."""
    try:
        value = fn(out, y)
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise type(err)(f"`{what}` failed on the model's output of shape {_shape(out)} and targets of shape "
                        f"{_shape(y)}: {first}{output_note(out)}") from err
    return check_scalar(value, what)


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def batch_loss(model: nn.Module, params: ParamDict, args: tuple, y, loss_fn: Callable,
               buffers: ParamDict | None = None) -> torch.Tensor:
    """``loss_fn(model(*args), y)`` at ``params`` (and ``buffers``): a differentiable 0-d tensor.

    ``params`` may hold any subset of the model's tensors; the rest come from
    ``buffers``, then from the model itself.
    """
    out = functional_call(model, {**(buffers or {}), **params}, args)
    return scalar_of(loss_fn, out, y, "loss_fn")


def sample_mean(per_batch: Callable[[tuple, object], torch.Tensor], batches: Batches, *,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """The sample-weighted mean over ``batches`` of ``per_batch(args, y)``, a batch's mean
    of anything: its loss, the loss's gradient, Hessian-vector products.

    ``sum_b n_b * per_batch(args_b, y_b) / sum_b n_b``; each batch's term is
    computed and weighted before the next batch is read, so whatever graph or
    transform a term builds is released with its batch. ``dtype``, if given, is
    the dtype the terms are summed in (e.g. float64 for many small terms).
    """
    total = None
    for x, y, n in batches:
        term = per_batch(as_args(x), y)
        if dtype is not None:
            term = term.to(dtype)
        total = term * n if total is None else total + term * n
    return total / batches.n_samples


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
    with model_state_guard(model):
        return sample_mean(lambda args, y: batch_loss(model, params, args, y, loss_fn, buffers), batches)
