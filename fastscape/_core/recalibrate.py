"""BatchNorm statistics recomputed at every point, all points of a chunk at once.

A network with BatchNorm evaluated at a point of weight space other than a trained model
(an interpolation, a curve, a grid) has no running statistics of its own: those of the
endpoints belong to other weights. Garipov et al. (NeurIPS 2018, sec. 4) and Frankle et al.
(ICML 2020, appendix) recompute them at each point from the training data before
evaluating. :class:`RecalibratedPoints` does that for a chunk of points at a time: one
``torch.func.vmap`` over ``functional_call`` of a private copy of the model, whose BatchNorm
layers normalise by the batch's statistics (train mode) and record them, runs every
calibration batch for all points of the chunk at once. The statistics are combined as
PyTorch's BatchNorm does with ``momentum=None`` (a cumulative average over batches): the
running mean is the mean of the batch means, the running variance the mean of the unbiased
batch variances. The other modules stay in eval mode (no dropout). The user's model is
never touched: the copy is made once, its parameters are replaced by ``functional_call``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from .data import Batches, as_args
from .params import ParamDict

__all__ = ["RecalibratedPoints", "batchnorm_stat_names", "calibration_batches"]


def batchnorm_stat_names(model: nn.Module) -> dict[str, tuple[str, str]]:
    """``{module path: (running_mean key, running_var key)}`` of every BatchNorm layer that
    keeps running statistics."""
    out = {}
    for path, mod in model.named_modules():
        if isinstance(mod, _BatchNorm) and mod.track_running_stats and mod.running_mean is not None:
            prefix = f"{path}." if path else ""
            out[path] = (f"{prefix}running_mean", f"{prefix}running_var")
    return out


def calibration_batches(data, *, device, dtype, name: str = "recalibrate") -> Batches:
    """The calibration data as :class:`Batches`, kept as given (the batches are what the statistics
    average over). A bare tensor of inputs is accepted. Raises ``ValueError`` naming ``name`` for
    empty data or a batch of one sample (train-mode BatchNorm cannot normalise it)."""
    if isinstance(data, torch.Tensor):
        data = (data, torch.zeros(data.shape[0] if data.dim() else 0))
    if isinstance(data, Mapping):
        raise TypeError(f"`{name}` must be one dataset (an (inputs, targets) pair, a DataLoader, ...), "
                        "not a dict of datasets.")
    try:
        batches = Batches(data, device=device, dtype=dtype)
    except ValueError as err:
        raise ValueError(f"`{name}` holds no samples: {err}") from None
    if batches.n_samples == 0:
        raise ValueError(f"`{name}` holds no samples; BatchNorm statistics need calibration data.")
    small = [i for i, n in enumerate(batches.batch_sizes) if n < 2]
    if small:
        raise ValueError(f"`{name}` batch {small[0]} holds {batches.batch_sizes[small[0]]} sample; train-mode "
                         "BatchNorm needs at least 2 samples per batch.")
    return batches


class _RecordingBatchNorm(nn.Module):
    """Stands in for a BatchNorm layer in the recorder's copy: normalises by the batch's statistics
    (train mode) and hands them to ``record``. The mean and variance are taken in one pass
    (``torch.var_mean``) and applied with elementwise operations: under ``vmap`` this avoids the
    copies that the batching rule of ``native_batch_norm`` makes (a third of the CPU time: see
    benchmarks/README.md, "Mode connectivity"). The layer's parameters and buffers are kept under
    their names, so the parameter dict is unchanged."""

    def __init__(self, bn: _BatchNorm, record):
        super().__init__()
        for name, p in bn.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in bn.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.eps, self.record = bn.eps, record

    def forward(self, x):
        var, mean = torch.var_mean(x, [0, *range(2, x.dim())], correction=0, keepdim=True)
        n = x.numel() // x.shape[1]
        self.record(mean.reshape(-1), var.reshape(-1) * (n / (n - 1)))  # unbiased, as running_var keeps it
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.reshape(shape)
        out = (x - mean) * scale
        return out if self.bias is None else out + self.bias.reshape(shape)


class _Recorder:
    """A copy of the model whose BatchNorm layers use batch statistics and record them."""

    def __init__(self, model: nn.Module, names: dict[str, tuple[str, str]]):
        self.model = copy.deepcopy(model)
        self.model.eval()
        self.names = names
        self.record: dict[str, list] = {}
        #: forward calls of each BatchNorm per batch: each counts as one update of ``momentum=None``
        self.calls: dict[str, int] = {}
        for path in names:
            parent, _, leaf = path.rpartition(".")
            owner = self.model.get_submodule(parent) if parent else self.model
            owner._modules[leaf] = _RecordingBatchNorm(owner._modules[leaf], self._recorder(path))

    def _recorder(self, path):
        def record(mean, var):
            self.record.setdefault(path, []).append((mean, var))
        return record

    def stats(self, params: ParamDict, args: tuple) -> tuple:
        """``(sum of means, sum of variances)`` over the calls of each BatchNorm path, in the order
        of ``names``, at one point."""
        self.record = {}
        functional_call(self.model, params, args)
        out = []
        for path in self.names:
            calls = self.record.get(path)
            if not calls:
                raise ValueError(f"BatchNorm layer {path!r} is not called by the model's forward; its "
                                 "statistics cannot be recalibrated.")
            self.calls[path] = len(calls)
            out.append((sum(c[0] for c in calls), sum(c[1] for c in calls)))
        self.record = {}
        return tuple(out)


class RecalibratedPoints:
    """Points whose BatchNorm running statistics are recomputed at each point.

    Wraps any points (:class:`~fastscape._core.points.AffinePoints`,
    :class:`~fastscape._core.points.ExplicitPoints`): the moving tensors of a chunk are those of
    ``inner`` plus every BatchNorm running mean and variance, computed for all points of the chunk
    in one vmapped pass per calibration batch (see the module docstring).

    Parameters
    ----------
    inner : points
    model : nn.Module
        Copied once (structure and weights); never written.
    calibration : data
        ``(inputs, targets)`` pair, DataLoader, ... (targets unused), or a tensor of inputs.
    base : dict name -> Tensor
        Every parameter and buffer of the model where ``inner`` does not move it.
    """

    def __init__(self, inner, model: nn.Module, calibration, base: ParamDict, *, _shared=None):
        self.inner = inner
        self.calibration, self.base = calibration, base
        if _shared is None:
            names = batchnorm_stat_names(model)
            if not names:
                raise ValueError("`recalibrate` was given, but the model has no BatchNorm layer with "
                                 "running statistics to recalibrate.")
            _shared = {"recorder": _Recorder(model, names)}
        self._shared = _shared
        self.names = self._shared["recorder"].names
        stat_keys = [k for pair in self.names.values() for k in pair]
        self.moving = [*inner.moving, *(k for k in stat_keys if k not in inner.moving)]
        self.fixed = {k: v for k, v in inner.fixed.items() if k not in stat_keys}
        self.n = inner.n
        self._stat_numel = sum(base[k].numel() for k in stat_keys)

    def to(self, device, dtype):
        self.inner.to(device, dtype)
        self.fixed = {k: v for k, v in self.inner.fixed.items() if k not in self.moving}
        if self._shared.get("key") != (device, dtype):
            batches = calibration_batches(self.calibration, device=device, dtype=dtype)
            self._shared.update(key=(device, dtype), batches=batches)
        self._const = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
                       for k, v in self.base.items() if k not in self.moving}
        self._const.update(self.fixed)
        return self

    def stack(self, start: int, stop: int) -> ParamDict:
        moving = self.inner.stack(start, stop)
        return {**moving, **self.statistics(moving)}

    def statistics(self, moving: ParamDict) -> ParamDict:
        """Running mean and variance of every BatchNorm layer at each point of ``moving``
        (stacked along dim 0), as ``momentum=None`` accumulates them over the calibration batches."""
        recorder, batches = self._shared["recorder"], self._shared["batches"]
        const = self._const
        inner_moving = {k: v for k, v in moving.items() if k not in self._stat_keys()}

        def one(m, args):
            return recorder.stats({**const, **m}, args)

        sums = None
        count = 0
        for x, _y, _n in batches:
            stats = vmap(one, in_dims=(0, None))(inner_moving, as_args(x))
            sums = stats if sums is None else tuple((a[0] + b[0], a[1] + b[1]) for a, b in zip(sums, stats))
            count += 1
        out = {}
        for (path, (mean_key, var_key)), (mean, var) in zip(self.names.items(), sums):
            updates = count * recorder.calls[path]
            out[mean_key] = mean / updates
            out[var_key] = var / updates
        return out

    def _stat_keys(self) -> set:
        return {k for pair in self.names.values() for k in pair}

    def moving_numel(self) -> int:
        return self.inner.moving_numel() + self._stat_numel

    def first_only(self) -> "RecalibratedPoints":
        return RecalibratedPoints(self.inner.first_only(), None, self.calibration, self.base, _shared=self._shared)
