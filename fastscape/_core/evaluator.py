"""The one evaluator: the loss (and metrics) of a model at many points of weight space.

Every point of a chunk is evaluated at once: the moving tensors are stacked
along a leading grid dimension and ``torch.func.vmap`` maps
``torch.func.functional_call`` over them, with buffers, fixed tensors and the
data batch shared by all points. Chunks bound the memory; the data is walked in
batches, and each point's loss is the exact sample-weighted mean over the whole
dataset: ``sum_b n_b * loss_fn(out_b, y_b) / sum_b n_b``.

How a chunk is computed is a *strategy* (:mod:`fastscape._strategies`): plain
vmap, the first-layer affine fast path, their ``torch.compile`` variants, or
the per-point loop; ``strategy="auto"`` picks by a measured probe. Models whose
operations have no vmap batching rule (``nn.LSTM``, ``nn.GRU``) fall back to a per-point path with one warning. The user's model is never
written: only its ``training`` flags are switched to eval for the call and
restored after.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .data import Batches, NamedBatches, as_args
from .guards import named_failure, values_agree, warn_once
from .memory import LIVE_FACTOR, peak_memory, plan_chunk
from .metrics import check_metrics
from .objective import check_scalar
from .params import ParamDict, model_state_guard, positive_int
from .strategies import (
    AUTO_CHOICES,
    LoopStrategy,
    NotApplicable,
    Strategy,
    VmapStrategy,
    _Context,
    auto_key,
    make_strategy,
    strategy_names,
    time_call,
)

__all__ = ["evaluate", "value_names", "FallbackWarning", "EvalReport"]

#: bytes of one intermediate tensor a chunk aims at on CPU: past a few MiB every
#: allocation page-faults and the same grid runs several times slower.
CPU_TARGET_BYTES = 4 << 20
#: the same on CUDA, where larger chunks keep the GPU busy.
CUDA_TARGET_BYTES = 256 << 20
#: largest intermediate of one point's forward when the per-point loop runs on CPU.
#: glibc serves blocks up to 32 MiB from its heap once they have been freed, larger
#: ones are mapped fresh, page by page, at every allocation: measured on the
#: benchmark CNN (2000 images), batches of 250 ran 2.7x faster than one batch of 2000.
CPU_LOOP_TARGET_BYTES = 16 << 20


class FallbackWarning(UserWarning):
    """The model could not be vectorised with vmap; points are evaluated one by one."""


# --------------------------------------------------------------------------- planning


@dataclass
class EvalReport:
    """What the evaluator did: the plan and the time it took."""

    strategy: str
    chunk_size: int
    batch_size: int
    n_points: int
    n_samples: int
    device: str
    dtype: str
    seconds: float = 0.0
    fallback: bool = False
    oom_backoffs: int = 0
    notes: list[str] = field(default_factory=list)
    memory_plan: dict = field(default_factory=dict)

    @property
    def points_per_second(self) -> float:
        return self.n_points / self.seconds if self.seconds > 0 else float("inf")


def _per_sample_elements(model, params, args, n) -> int:
    """Largest number of activation elements per sample over the model's submodules.

    Measured with forward hooks on one un-vectorised forward pass.
    """
    largest = [0]

    def hook(_m, _inp, out):
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            functional_call(model, params, args)
    finally:
        for h in handles:
            h.remove()
    return max(1, math.ceil(largest[0] / max(n, 1)))


def plan_sizes(per_sample_elems: int, n_samples: int, n_points: int, itemsize: int,
               target_bytes: int, moving_numel: int) -> tuple[int, int]:
    """Choose ``(chunk_size, batch_size)`` so that one intermediate tensor of a chunk,
    ``chunk * batch * per_sample_elems * itemsize`` bytes, stays near ``target_bytes``,
    and the stacked parameters of a chunk stay within the same budget.
    """
    per_sample = per_sample_elems * itemsize
    batch = max(1, min(n_samples, target_bytes // per_sample))
    chunk = max(1, target_bytes // (per_sample * batch))
    chunk = min(chunk, max(1, target_bytes // max(1, moving_numel * itemsize)))
    return int(min(chunk, n_points)), int(batch)


# --------------------------------------------------------------------------- evaluation


def _is_oom(err: BaseException) -> bool:
    msg = str(err)
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in msg \
        or "can't allocate memory" in msg or "not enough memory" in msg


#: samples of the first batch that the validation and memory probes run on
PROBE_SAMPLES = 256
#: strategy="auto" adds a compiled candidate only when the projected run is
#: at least this long: compiling costs seconds to tens of seconds on a small CPU.
COMPILE_WORTH_SECONDS = 2.0
#: a vectorised strategy must beat the per-point loop by this factor on the probe
#: to be chosen (measured: the transformer benchmark's vmap_compiled probed 6% faster
#: than the loop and then ran 20% slower over the whole grid)
LOOP_MARGIN = 0.8
#: compiled strategies run chunks this many times the eager plan on CPU
COMPILED_CHUNK_FACTOR = 4


def _plan_chunk(model, batches: Batches, points, p0, args0, n0, chunk_size, device, dtype):
    """The memory-planning step: ``(chunk, batches, plan)``, the data re-split
    when the planned batch is smaller than the given one.

    "auto" takes the speed target (a few MiB per intermediate on CPU, see
    :func:`plan_sizes`) and fits it into the free memory (:mod:`._memory`).
    """
    if chunk_size != "auto":
        return positive_int(chunk_size, "chunk_size", allow=("auto",)), batches, {}
    with peak_memory(device) as peak:
        per_sample = _per_sample_elements(model, p0, args0, n0)
    target = CUDA_TARGET_BYTES if device.type == "cuda" else CPU_TARGET_BYTES
    itemsize = torch.empty((), dtype=dtype).element_size()
    # the speed target for a grid of any size, then fitted into free memory
    target_chunk, auto_batch = plan_sizes(per_sample, max(batches.batch_sizes), 1 << 62,
                                          itemsize, target, points.moving_numel())
    measured = peak.bytes is not None and peak.bytes > 0
    plan = plan_chunk(
        device, n_points=points.n, target_chunk=target_chunk, batch=auto_batch,
        param_bytes=points.moving_numel() * itemsize,
        sample_bytes=(math.ceil(peak.bytes / n0) if measured else LIVE_FACTOR * per_sample * itemsize),
        measured=measured)
    if max(batches.batch_sizes) > plan.batch:
        batches = batches.resplit(plan.batch)
    return plan.chunk, batches, {**plan.as_dict(), "largest_sample_bytes": per_sample * itemsize,
                                 "device_type": device.type}


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
    strategy : {"auto", "vmap", "loop", "affine", "mlp", "vmap_compiled", "affine_compiled"}
        How a chunk is computed (see :mod:`fastscape._strategies`); the values
        do not depend on it beyond float32 rounding. "auto" times the
        strategies that apply on a probe chunk, picks the fastest and
        remembers the pick; it falls back to the loop (with a
        FallbackWarning) when the model has no batching rule. A named strategy
        that cannot apply to the model raises ``ValueError`` saying why.
    buffers : dict, optional
        Values for the model's buffers (default: the model's own).
    progress : callable ``(n_points_done) -> None``, optional
    expected_points : int, optional
        Size of the whole job when ``points`` is only part of it; "auto" uses it
        to decide whether compiling pays.

    Returns
    -------
    values : dict name -> ndarray of shape (N,)
        ``"loss"`` and one entry per metric, float64, each dataset averaged over
        its own samples; with :class:`NamedBatches` keyed ``"train/loss"``,
        ``"train/accuracy"``, ``"test/loss"``, ... (see :func:`value_names`).
    report : EvalReport
    """
    metrics = check_metrics(metrics)
    if not points.moving and points.n > 1:
        # every point has the same parameters (all directions zero): evaluate one, repeat it
        values, report = evaluate(model, batches, points.first_only(), loss_fn=loss_fn, metrics=metrics,
                                  chunk_size=1, strategy="loop" if strategy == "auto" else strategy,
                                  buffers=buffers)
        if progress is not None:
            progress(points.n)
        report.n_points = points.n
        report.notes.append("no direction moves any tensor: one evaluation repeated at every point")
        return {k: np.repeat(v, points.n) for k, v in values.items()}, report
    if strategy not in strategy_names():
        raise ValueError(f"`strategy` must be one of {strategy_names()}; got {strategy!r}.")
    device, dtype = batches.device, batches.dtype
    points.to(device, dtype)

    own = {n: b.detach() for n, b in model.named_buffers()}
    own.update({n: p.detach() for n, p in model.named_parameters()})
    if buffers:
        own.update(buffers)
    shared = {
        k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
        for k, v in own.items() if k not in points.moving
    }
    shared.update(points.fixed)

    guard = model_state_guard(model)
    with guard:
        # probe: validate loss/metrics on the first point and measure activations, on the
        # first PROBE_SAMPLES samples (a full batch of 2000 images costs seconds on CPU)
        probe = batches.resplit(PROBE_SAMPLES) if max(batches.batch_sizes) > PROBE_SAMPLES else batches
        x0, y0, n0 = probe.first()
        args0 = as_args(x0)
        first = points.stack(0, 1)
        p0 = {**shared, **{k: v[0] for k, v in first.items()}}
        with torch.no_grad():
            with named_failure(model, args0):  # data the model does not take: say which layer and shape
                out0 = functional_call(model, p0, args0)
            check_scalar(loss_fn(out0, y0), "loss_fn")
            for name, m in metrics.items():
                check_scalar(m(out0, y0), f"metrics[{name!r}]")
        given_batches = batches
        chunk, batches, memory_plan = _plan_chunk(model, batches, points, p0, args0, n0, chunk_size, device, dtype)

        ctx = _Context(model, shared, points, loss_fn, metrics, chunk, mha_fastpath=guard.fastpath)
        report = EvalReport(strategy=strategy, chunk_size=chunk, batch_size=max(batches.batch_sizes),
                            n_points=points.n, n_samples=batches.n_samples, device=str(device),
                            dtype=str(dtype).replace("torch.", ""),
                            memory_plan=memory_plan)
        t0 = time.perf_counter()
        with torch.no_grad():
            while True:
                try:
                    runner = _select(strategy, ctx, batches, args0, report, expected_points)
                    chunk = report.chunk_size = ctx.chunk
                    if isinstance(runner, LoopStrategy) and memory_plan:
                        # the few-MiB batch plan serves vectorised chunks; one point at a time
                        # runs best on the largest batch that memory and the allocator allow
                        batches = _loop_batches(given_batches, memory_plan)
                        report.batch_size = max(batches.batch_sizes)
                    break
                except RuntimeError as err:  # out of memory while probing: halve as below
                    if not _is_oom(err) or chunk == 1:
                        raise
                    chunk = ctx.chunk = max(1, chunk // 2)
                    report.oom_backoffs += 1
                    report.notes.append(f"out of memory while choosing a strategy; chunk halved to {chunk}")
            # one row per point, one block of (loss, *metrics) per dataset
            n_sets, width = len(batches.counts), 1 + len(metrics)
            sums = torch.zeros(points.n, n_sets, width, dtype=torch.float64, device=device)
            start = 0
            while start < points.n:
                stop = min(start + chunk, points.n)
                try:
                    moving = points.stack(start, stop)
                    acc = torch.zeros(stop - start, n_sets, width, dtype=torch.float64, device=device)
                    for b, (g, (x, y, n)) in enumerate(zip(batches.groups, batches)):
                        vals = _run(runner, strategy, ctx, start, stop, moving, b, as_args(x), y, report)
                        if report.fallback and not isinstance(runner, LoopStrategy):
                            runner = LoopStrategy(ctx)
                        acc[:, g] += vals.to(torch.float64) * n
                except RuntimeError as err:
                    if not _is_oom(err) or chunk == 1:
                        raise
                    chunk = max(1, chunk // 2)
                    ctx.chunk = chunk
                    if runner.compiled:
                        runner = make_strategy(runner.name.replace("_compiled", ""), ctx, args0)
                    report.oom_backoffs += 1
                    report.notes.append(f"out of memory at chunk {stop - start}; halved to {chunk}")
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                sums[start:stop] = acc
                if progress is not None:
                    progress(stop - start)
                start = stop
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        report.seconds = time.perf_counter() - t0
        report.strategy = runner.name
        report.chunk_size = chunk
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


def _build(name: str, ctx: _Context, args0) -> Strategy:
    try:
        return make_strategy(name, ctx, args0)
    except NotApplicable as err:
        raise ValueError(f"`strategy={name!r}` cannot evaluate this model: {err}.") from None


def _select(strategy: str, ctx: _Context, batches: Batches, args0, report: EvalReport,
            expected_points: int | None = None) -> Strategy:
    """The strategy to run: the named one, or for "auto" the fastest on a probe chunk.

    ``expected_points`` is the size of the whole job when this call evaluates
    only part of it (a unit of a file-backed run), for the compile decision.
    """
    if strategy != "auto":
        if strategy.endswith("_compiled"):
            _enlarge_for_compiled(ctx, report)
        return _build(strategy, ctx, args0)
    points = ctx.points
    total = expected_points or points.n
    n_chunks = math.ceil(total / ctx.chunk)
    if n_chunks * len(batches) <= 1:
        return VmapStrategy(ctx)  # one call in all: probing would cost more than it saves
    key = auto_key(ctx.model, points, batches.device, batches.dtype, ctx.chunk,
                   [tuple(getattr(x, "shape", ())) for x, _, _ in batches])
    if key in AUTO_CHOICES:
        eager_chunk = ctx.chunk
        try:
            name = AUTO_CHOICES[key]
            if name.endswith("_compiled"):
                _enlarge_for_compiled(ctx, report)
            chosen = make_strategy(name, ctx, args0)
            report.notes.append(f"auto: {chosen.name} (remembered)")
            return chosen
        except NotApplicable:
            ctx.chunk = eager_chunk
    x, y, _ = batches.first()
    args = as_args(x)
    device = batches.device

    def trial(s: Strategy):
        """Seconds per point on one chunk of ``ctx.chunk`` points, and the values."""
        stop = min(ctx.chunk, points.n)
        moving = points.stack(0, stop)
        first = _run(s, "auto", ctx, 0, stop, moving, 0, args, y, report)  # warm-up (compiles)
        if report.fallback:
            return 0.0, first
        t, vals = time_call(lambda: _run(s, "auto", ctx, 0, stop, moving, 0, args, y, report), device)
        return t / stop, vals

    plain = VmapStrategy(ctx)
    t_plain, ref = trial(plain)
    if report.fallback:
        return LoopStrategy(ctx)
    timings = {"vmap": t_plain}
    built = {"vmap": (plain, ctx.chunk)}

    def consider(name):
        try:
            s = make_strategy(name, ctx, args0)
            t, vals = trial(s)
        except NotApplicable as err:
            report.notes.append(f"auto: {name} skipped ({err})")
            return
        except RuntimeError as err:
            if _is_oom(err):
                raise
            report.notes.append(f"auto: {name} failed ({str(err).splitlines()[0]})")
            return
        n = min(len(vals), len(ref))
        if not values_agree(vals[:n], ref[:n], rtol=1e-3):
            report.notes.append(f"auto: {name} skipped (values differ from vmap)")
            return
        timings[name], built[name] = t, (s, ctx.chunk)

    consider("affine")
    consider("mlp")
    best = min(timings, key=timings.get)
    projected = timings[best] * total * len(batches)
    slow = any("slow batching" in n for n in report.notes)
    if projected >= COMPILE_WORTH_SECONDS and not slow:
        eager_chunk = ctx.chunk
        _enlarge_for_compiled(ctx, report)
        consider(COMPILED_VARIANT[best])
        ctx.chunk = eager_chunk
    consider("loop")  # vectorising does not always pay (e.g. attention at tiny chunks): never be slower
    best = min(timings, key=timings.get)
    if best != "loop" and "loop" in timings and timings[best] > LOOP_MARGIN * timings["loop"]:
        # a near tie on one probe chunk is noise; the loop is the safe side of it
        report.notes.append(f"auto: {best} within {1 - LOOP_MARGIN:.0%} of the loop on the probe; "
                            "taking the loop")
        best = "loop"
    report.notes.append("auto: " + ", ".join(f"{k} {v * 1e6:.2f} us" for k, v in timings.items())
                        + f" per point on a probe chunk; chose {best}")
    AUTO_CHOICES[key] = best
    runner, ctx.chunk = built[best]
    return runner


#: the compiled strategy tried when an eager one wins the probe (inductor fuses what "mlp" fuses by hand)
COMPILED_VARIANT = {"vmap": "vmap_compiled", "affine": "affine_compiled", "mlp": "affine_compiled"}


def _loop_batches(given: Batches, plan: dict) -> Batches:
    """The data as given, split only where one point's batch would not fit the
    memory budget or, on CPU, where its largest intermediate would pass
    ``CPU_LOOP_TARGET_BYTES``."""
    per_sample = plan["point_bytes"] / max(1, plan["batch"])
    cap = max(1, int(plan["budget_bytes"] // max(1.0, per_sample)))
    if plan.get("device_type") == "cpu":
        cap = min(cap, max(1, CPU_LOOP_TARGET_BYTES // max(1, plan["largest_sample_bytes"])))
    return given if max(given.batch_sizes) <= cap else given.resplit(cap)


def _enlarge_for_compiled(ctx: _Context, report: EvalReport) -> None:
    """Compiled kernels fuse the chunk's intermediates, so on CPU they run best on
    chunks several times the eager plan (measured: seed-000 net 4x chunk, 1.7x
    faster; past ~32 MiB per gathered intermediate it falls off a cliff). Only a
    planned ("auto") chunk is enlarged, within the memory plan's limit."""
    plan = report.memory_plan
    if not plan or ctx.points.n <= ctx.chunk or str(report.device).startswith("cuda"):
        return
    fits = plan["budget_bytes"] // max(1, plan["point_bytes"])  # what free memory allows
    ctx.chunk = int(max(ctx.chunk, min(ctx.chunk * COMPILED_CHUNK_FACTOR, fits, ctx.points.n)))


def _run(runner: Strategy, strategy: str, ctx: _Context, start, stop, moving, b, args, y,
         report: EvalReport):
    if isinstance(runner, LoopStrategy):
        return runner.run(start, stop, moving, b, args, y)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vals = runner.run(start, stop, moving, b, args, y)
        for w in caught:
            msg = str(w.message)
            if "performance drop" in msg and "batching rule" in msg:
                # correct but slow: PyTorch loops over points inside vmap for this op
                if not report.fallback and not any("slow batching" in n for n in report.notes):
                    report.notes.append(f"slow batching: {msg.split('.')[0]}")
                    warnings.warn(f"vmap has no batching rule for an operation of this model "
                                  f"({msg.split('.')[0].split('for ')[-1]}); PyTorch evaluates it "
                                  "point by point inside vmap, which is slower.", FallbackWarning,
                                  stacklevel=4)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return vals
    except RuntimeError as err:
        if _is_oom(err):
            raise
        if strategy != "auto":
            # the named strategy was checked against the model, but vmap meets an operation
            # without a batching rule only now (nn.LSTM, nn.GRU): say what to use instead
            raise ValueError(f"`strategy={strategy!r}` cannot evaluate this model: "
                             f"{str(err).splitlines()[0]}. Use strategy='auto' (it falls back to the "
                             "per-point loop) or strategy='loop'.") from err
        # no batching rule (nn.LSTM, nn.GRU, ...): the per-point path gives the same
        # numbers; if it fails too, its error is the real one and propagates.
        vals = LoopStrategy(ctx).run(start, stop, moving, b, args, y)
        warnings.warn(
            f"the model could not be vectorised with torch.func.vmap ({str(err).splitlines()[0]}); "
            "falling back to evaluating points one by one, which is slower.",
            FallbackWarning, stacklevel=4,
        )
        report.fallback = True
        report.notes.append(f"vmap fallback: {str(err).splitlines()[0]}")
        return vals
