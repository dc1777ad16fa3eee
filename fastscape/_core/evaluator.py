"""The one evaluator: the loss (and metrics) of a model at many points of weight space.

:func:`evaluate` plans the chunk and data batches from the free memory
(:mod:`fastscape._core.plan`), selects a *strategy* (:mod:`fastscape._core.auto`) and runs the
chunk loop: for each chunk of points and each data batch it calls the strategy's ``run``,
whose ``PointLoss`` computes the model's output at a point and calls ``loss_fn``. Chunks bound
the memory; each point's loss is the exact sample-weighted mean over the whole dataset:
``sum_b n_b * loss_fn(out_b, y_b) / sum_b n_b``. The user's model is never written: only its
``training`` flags are switched to eval for the call and restored after.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .auto import clock, select
from .data import Batches, NamedBatches, as_args, positional_note
from .guards import named_failure, warn_once
from .memory import is_out_of_memory
from .metrics import check_metrics
from .objective import scalar_of
from .params import ParamDict, model_state_guard
from .plan import PROBE_SAMPLES, loop_batches, plan_chunk_and_batches
from .report import EvalReport, FallbackWarning, batching_warnings, fall_back
from .strategies import Context, LoopStrategy, Strategy, make_strategy, strategy_names

__all__ = ["evaluate", "value_names", "FallbackWarning", "EvalReport"]


@warn_once()  # a warning of the model or loss (e.g. broadcasting) once, not once per chunk and batch
def evaluate(model: nn.Module, batches: Batches | NamedBatches, points, *, loss_fn: Callable,
             metrics: Mapping[str, Callable] | None = None, chunk_size: int | str = "auto",
             strategy: str = "auto", buffers: ParamDict | None = None,
             progress: Callable[[int], None] | None = None, expected_points: int | None = None,
             ) -> tuple[dict[str, np.ndarray], EvalReport]:
    """Loss and metrics at every point of ``points``.

    Parameters
    ----------
    model : nn.Module
        Evaluated in eval mode through ``functional_call``; never written.
    batches : Batches or NamedBatches
        The data, already on the evaluation device and dtype. Several named
        datasets are evaluated in the same pass: each chunk of stacked
        parameters runs over every dataset's batches.
    points : AffinePoints or ExplicitPoints
        The points; ``points.n`` of them.
    loss_fn : callable ``(output, target) -> scalar tensor``
        The batch mean; batches are weighted by their sample counts.
    metrics : dict name -> callable, optional
        Extra batch-mean metrics computed in the same pass (e.g. accuracy).
    chunk_size : int or "auto"
        Points evaluated at once. "auto" plans from the model's measured
        activation size (a few MiB per intermediate on CPU).
    strategy : str
        One of :func:`~fastscape._core.strategies.strategy_names`: how a chunk is computed
        (see :mod:`fastscape._core.strategies`; "auto": :mod:`fastscape._core.auto`); the
        values do not depend on it beyond float32 rounding, and with the same
        strategy, chunk and batch they are the same bits from run to run.
        "auto" times the strategies that apply on a probe chunk, weighs the
        times by structural rank, compiles only when that can repay itself, and
        remembers the pick per job size class; it falls back to the loop (with
        a FallbackWarning) when the model has no batching rule. A named strategy
        that cannot apply to the model raises ``ValueError`` saying why.
    buffers : dict, optional
        Values for the model's buffers (default: the model's own).
    progress : callable ``(n_points_done) -> None``, optional
    expected_points : int, optional
        Size of the whole job when ``points`` is only part of it (a probe or a unit
        of a file-backed run): "auto" uses it to decide whether compiling pays, and
        with ``chunk_size="auto"`` the chunk a strategy runs best at (mlp and
        quadratic take more points than the eager plan) grows up to it, so that
        ``report.chunk_size`` is the chunk for the whole job.

    Returns
    -------
    values : dict name -> ndarray of shape (N,)
        ``"loss"`` and one entry per metric, float64, each dataset averaged over
        its own samples; with :class:`NamedBatches` keyed ``"train/loss"``,
        ``"train/accuracy"``, ``"test/loss"``, ... (see :func:`value_names`).
    report : EvalReport
    """
    metrics = check_metrics(metrics)
    if strategy not in strategy_names():
        raise ValueError(f"`strategy` must be one of {strategy_names()}; got {strategy!r}.")
    if not points.moving:
        if points.n > 1:
            return _repeated(model, batches, points, loss_fn, metrics, strategy, buffers, progress)
        strategy = "loop"  # no tensor to map over: one plain forward, which every strategy computes
    device, dtype = batches.device, batches.dtype
    batches = batches.bind(model)  # inputs given by name, in the forward's positional places
    points.to(device, dtype)
    shared = _shared_tensors(model, points, buffers, device, dtype)
    guard = model_state_guard(model)
    with guard:
        args0, p0, n0 = _check_first_point(model, batches, points, shared, loss_fn, metrics)
        given_batches = batches
        chunk, batches, memory_plan = plan_chunk_and_batches(model, batches, points, p0, args0, n0, chunk_size,
                                                             device, dtype)
        ctx = Context(model, shared, points, loss_fn, metrics, chunk, mha_fastpath=guard.fastpath,
                      job_points=expected_points or points.n, args0=args0)
        report = EvalReport(strategy=strategy, chunk_size=chunk, batch_size=max(batches.batch_sizes),
                            n_points=points.n, n_samples=batches.n_samples, device=str(device),
                            dtype=str(dtype).replace("torch.", ""), memory_plan=memory_plan)
        t0 = time.perf_counter()
        with torch.no_grad():
            runner, batches = _select_fitting(strategy, ctx, batches, given_batches, report)
            # one row per point, one block of (loss, *metrics) per dataset
            n_sets, width = len(batches.counts), 1 + len(metrics)
            sums = torch.zeros(points.n, n_sets, width, dtype=torch.float64, device=device)
            start, finished = 0, 0
            while start < points.n:
                stop = min(start + runner.chunk, points.n)
                if finished == 1:  # the second chunk is timed: per-batch tables are built by then
                    t_chunk = clock(device)
                try:
                    moving = points.stack(start, stop)
                    acc = torch.zeros(stop - start, n_sets, width, dtype=torch.float64, device=device)
                    for b, (g, (x, y, n)) in enumerate(zip(batches.groups, batches)):
                        with batching_warnings(report):
                            vals = runner.run(start, stop, moving, b, as_args(x), y)
                        acc[:, g] += vals.to(torch.float64) * n
                except RuntimeError as err:
                    if not is_out_of_memory(err):
                        runner = fall_back(err, runner, strategy, ctx, report)
                        continue  # this chunk again, point by point
                    runner = _halved(runner, ctx, _halve(err, runner.chunk, report, f"at chunk {stop - start};"))
                    continue
                sums[start:stop] = acc
                if finished == 1:
                    report.point_seconds = (clock(device) - t_chunk) / (stop - start)
                finished += 1
                if progress is not None:
                    progress(stop - start)
                start = stop
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        report.seconds = time.perf_counter() - t0
        report.strategy, report.chunk_size = runner.name, runner.chunk
    counts = torch.tensor(batches.counts, dtype=torch.float64, device=device)
    means = (sums / counts[:, None]).reshape(points.n, -1).cpu().numpy()
    return {name: means[:, j] for j, name in enumerate(value_names(batches, metrics))}, report


def value_names(batches, metrics) -> list[str]:
    """Names of the values :func:`evaluate` returns, in order: ``["loss", *metrics]`` for one
    dataset, ``["train/loss", "train/accuracy", "test/loss", ...]`` for :class:`NamedBatches`."""
    base = ["loss", *(metrics or {})]
    if batches.names is None:
        return base
    return [f"{d}/{m}" for d in batches.names for m in base]


def _repeated(model, batches, points, loss_fn, metrics, strategy, buffers, progress):
    """Every point has the same parameters (all directions zero): evaluate one, repeat it."""
    values, report = evaluate(model, batches, points.first_only(), loss_fn=loss_fn, metrics=metrics,
                              chunk_size=1, strategy=strategy, buffers=buffers)
    if progress is not None:
        progress(points.n)
    report.n_points = points.n
    report.notes.append("no direction moves any tensor: one evaluation repeated at every point")
    return {k: np.repeat(v, points.n) for k, v in values.items()}, report


def _shared_tensors(model, points, buffers, device, dtype) -> dict:
    """The tensors every point shares: buffers (``buffers`` over the model's own), parameters no
    direction moves and the points' fixed tensors, on the evaluation device and dtype."""
    own = {n: b.detach() for n, b in model.named_buffers()}
    own.update({n: p.detach() for n, p in model.named_parameters()})
    if buffers:
        own.update(buffers)
    shared = {
        k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
        for k, v in own.items() if k not in points.moving
    }
    shared.update(points.fixed)
    return shared


def _check_first_point(model, batches, points, shared, loss_fn, metrics):
    """``(args0, p0, n0)``: the model's inputs of the probe samples (the first
    :data:`PROBE_SAMPLES`; a full batch of 2000 images costs seconds on CPU), the first point's
    tensors and the number of samples, after one forward there that checks the data, the loss
    and every metric (each must return a scalar)."""
    probe = batches.resplit(PROBE_SAMPLES) if max(batches.batch_sizes) > PROBE_SAMPLES else batches
    x0, y0, n0 = probe.first()
    args0 = as_args(x0)
    p0 = {**shared, **{k: v[0] for k, v in points.stack(0, 1).items()}}
    with torch.no_grad():
        try:
            with named_failure(model, args0):  # data the model does not take: say which layer and shape
                out0 = functional_call(model, p0, args0)
        except (RuntimeError, TypeError, ValueError, AttributeError, IndexError) as err:
            note = positional_note(model, args0)  # several positional inputs: which parameter each took
            if not note:
                raise
            raise type(err)(f"{err}{note}") from err
        scalar_of(loss_fn, out0, y0, "loss_fn")
        for name, m in metrics.items():
            scalar_of(m, out0, y0, f"metrics[{name!r}]")
    return args0, p0, n0


def _select_fitting(strategy: str, ctx: Context, batches, given_batches, report: EvalReport):
    """``(runner, batches)``: the selected strategy (:func:`fastscape._core.auto.select`), the
    planned chunk halved while choosing runs out of memory, and the data re-planned for the
    per-point loop: the few-MiB batch plan serves vectorised chunks, one point at a time runs
    best on the largest batch that memory and the allocator allow."""
    while True:
        try:
            runner = select(strategy, ctx, batches, report)
            break
        except RuntimeError as err:
            ctx.chunk = _halve(err, ctx.chunk, report, "while choosing a strategy; chunk")
    report.chunk_size = runner.chunk
    if isinstance(runner, LoopStrategy) and report.memory_plan:
        batches = loop_batches(given_batches, report.memory_plan)
        report.batch_size = max(batches.batch_sizes)
    return runner, batches


def _halve(err: RuntimeError, chunk: int, report: EvalReport, where: str) -> int:
    """``chunk`` halved after ``err``, out of memory ``where``; ``err`` again when it is not out of
    memory or the chunk is already one point."""
    if not is_out_of_memory(err) or chunk == 1:
        raise err
    chunk = max(1, chunk // 2)
    report.oom_backoffs += 1
    report.notes.append(f"out of memory {where} halved to {chunk}")
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return chunk


def _halved(runner: Strategy, ctx: Context, chunk: int) -> Strategy:
    """``runner`` at the smaller ``chunk``; a compiled one gives way to its eager form (its
    compiled function is specialised to the chunk it padded to)."""
    if runner.compiled:
        runner = make_strategy(runner.eager, ctx)
    runner.chunk = chunk
    return runner
