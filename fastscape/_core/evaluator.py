"""The one evaluator: the loss (and metrics) of a model at many points of weight space.

:func:`evaluate` plans the chunk and data batches from the free memory, selects
a *strategy* (:mod:`fastscape._core.strategies`) and runs the chunk loop: for
each chunk of points and each data batch it calls the strategy's ``run``, whose
``PointLoss`` computes the model's output at a point and calls ``loss_fn``. The
vectorised strategies evaluate every point of a chunk at once: the moving
tensors are stacked along a leading grid dimension and ``torch.func.vmap`` maps
``PointLoss`` over them, with buffers, fixed tensors and the data batch shared
by all points. Chunks bound the memory; each point's loss is the exact
sample-weighted mean over the whole dataset: ``sum_b n_b * loss_fn(out_b, y_b) / sum_b n_b``.

``strategy="auto"`` picks by a measured probe. Models whose operations have no
vmap batching rule (``nn.LSTM``, ``nn.GRU``) fall back to the per-point loop with
one warning. The user's model is never written: only its ``training`` flags are
switched to eval for the call and restored after.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .data import Batches, NamedBatches, as_args, positional_note
from .guards import named_failure, values_agree, warn_once
from .memory import LIVE_FACTOR, is_out_of_memory, peak_memory, plan_chunk
from .metrics import check_metrics
from .objective import scalar_of
from .params import ParamDict, model_state_guard, positive_int
from .prefix import PrefixStrategy
from .strategies import (
    AUTO_CHOICES,
    STRATEGIES,
    Context,
    LoopStrategy,
    NotApplicable,
    Strategy,
    VmapStrategy,
    auto_key,
    clock,
    make_strategy,
    strategy_names,
    time_call,
)

__all__ = ["evaluate", "value_names", "FallbackWarning", "EvalReport"]

STRATEGIES["prefix"] = PrefixStrategy  # registered beside the others once strategies/ is a package

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
    #: seconds per point over all the data batches, warm (the strategy's per-batch tables built):
    #: the second chunk's time, or for a single chunk what strategy="auto"'s probe measured; 0
    #: when nothing was timed
    point_seconds: float = 0.0

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


#: samples of the first batch that the validation and memory probes run on
PROBE_SAMPLES = 256


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
    strategy : {"auto", "vmap", "loop", "affine", "mlp", "quadratic", "prefix", "vmap_compiled", "affine_compiled"}
        How a chunk is computed (see :mod:`fastscape._core.strategies`); the
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
    batches = batches.bind(model)  # inputs given by name, in the forward's positional places
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
            try:
                with named_failure(model, args0):  # data the model does not take: say which layer and shape
                    out0 = functional_call(model, p0, args0)
            except (RuntimeError, TypeError, ValueError, AttributeError, IndexError) as err:
                note = positional_note(model, args0)
                if not note:
                    raise
                raise type(err)(f"{err}{note}") from err
            scalar_of(loss_fn, out0, y0, "loss_fn")
            for name, m in metrics.items():
                scalar_of(m, out0, y0, f"metrics[{name!r}]")
        given_batches = batches
        chunk, batches, memory_plan = _plan_chunk(model, batches, points, p0, args0, n0, chunk_size, device, dtype)

        ctx = Context(model, shared, points, loss_fn, metrics, chunk, mha_fastpath=guard.fastpath,
                      job_points=expected_points or points.n, args0=args0)
        report = EvalReport(strategy=strategy, chunk_size=chunk, batch_size=max(batches.batch_sizes),
                            n_points=points.n, n_samples=batches.n_samples, device=str(device),
                            dtype=str(dtype).replace("torch.", ""),
                            memory_plan=memory_plan)
        t0 = time.perf_counter()
        with torch.no_grad():
            while True:
                try:
                    runner = _select(strategy, ctx, batches, report)
                    chunk = report.chunk_size = ctx.chunk
                    if isinstance(runner, LoopStrategy) and memory_plan:
                        # the few-MiB batch plan serves vectorised chunks; one point at a time
                        # runs best on the largest batch that memory and the allocator allow
                        batches = _loop_batches(given_batches, memory_plan)
                        report.batch_size = max(batches.batch_sizes)
                    break
                except RuntimeError as err:  # out of memory while probing: halve as below
                    if not is_out_of_memory(err) or chunk == 1:
                        raise
                    chunk = ctx.chunk = max(1, chunk // 2)
                    report.oom_backoffs += 1
                    report.notes.append(f"out of memory while choosing a strategy; chunk halved to {chunk}")
            # one row per point, one block of (loss, *metrics) per dataset
            n_sets, width = len(batches.counts), 1 + len(metrics)
            sums = torch.zeros(points.n, n_sets, width, dtype=torch.float64, device=device)
            start, finished = 0, 0
            while start < points.n:
                stop = min(start + chunk, points.n)
                if finished == 1:  # the second chunk is timed: per-batch tables are built by then
                    t_chunk = clock(device)
                try:
                    moving = points.stack(start, stop)
                    acc = torch.zeros(stop - start, n_sets, width, dtype=torch.float64, device=device)
                    for b, (g, (x, y, n)) in enumerate(zip(batches.groups, batches)):
                        with _batching_warnings(report):
                            vals = runner.run(start, stop, moving, b, as_args(x), y)
                        acc[:, g] += vals.to(torch.float64) * n
                except RuntimeError as err:
                    if not is_out_of_memory(err):
                        runner = _fall_back(err, runner, strategy, ctx, report)
                        continue  # this chunk again, point by point
                    if chunk == 1:
                        raise
                    chunk = max(1, chunk // 2)
                    ctx.chunk = chunk
                    if runner.compiled:
                        runner = make_strategy(runner.eager, ctx)
                    report.oom_backoffs += 1
                    report.notes.append(f"out of memory at chunk {stop - start}; halved to {chunk}")
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
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


def _build(name: str, ctx: Context) -> Strategy:
    try:
        return make_strategy(name, ctx)
    except NotApplicable as err:
        raise ValueError(f"`strategy={name!r}` cannot evaluate this model: {err}.") from None


def _select(strategy: str, ctx: Context, batches: Batches, report: EvalReport) -> Strategy:
    """The strategy to run: the named one, or for "auto" the one :func:`_choose` picks, with
    ``ctx.chunk`` set to the chunk it runs best at.

    ``ctx.job_points`` is the size of the whole job (more than ``ctx.points`` when this call
    evaluates a probe or a unit of a file-backed run): the compile decision and a strategy's
    larger chunk go by it. Eval-mode BatchNorm that follows a Linear/Conv is folded into it
    first, for every strategy.
    """
    folded = ctx.fold_batchnorm()
    if folded:
        report.notes.append(f"BatchNorm folded into the layer before it: {', '.join(folded)}")
    if strategy != "auto":
        return _sized(_build(strategy, ctx), ctx, report)
    points = ctx.points
    total = ctx.job_points
    n_chunks = math.ceil(total / ctx.chunk)
    if n_chunks * len(batches) <= 1:
        return VmapStrategy(ctx)  # one call in all: probing would cost more than it saves
    key = auto_key(ctx.user_model, points, batches.device, batches.dtype, ctx.chunk,
                   [tuple(getattr(x, "shape", ())) for x, _, _ in batches], job_class(total),
                   (_name_of(ctx.loss_fn), *sorted(ctx.metrics)))
    if key in AUTO_CHOICES:
        try:
            name, report.point_seconds = AUTO_CHOICES[key]
            chosen = _sized(make_strategy(name, ctx), ctx, report)
            report.notes.append(f"auto: {chosen.name} (remembered for jobs of this size)")
            return chosen
        except NotApplicable:
            pass
    runner = _choose(ctx, batches, report, total)
    if not report.fallback:  # a model vmap cannot batch warns again on its next call
        AUTO_CHOICES[key] = (runner.name, report.point_seconds)
    return runner


def _sized(runner: Strategy, ctx: Context, report: EvalReport) -> Strategy:
    """``runner``, with ``ctx.chunk`` grown to the chunk it runs best at when the chunk was
    planned (``chunk_size="auto"``): compiled kernels, mlp and quadratic take larger chunks
    than the eager plan (:meth:`Strategy.best_chunk`)."""
    if report.memory_plan:
        ctx.chunk = runner.best_chunk(report.memory_plan)
    return runner


def _name_of(fn) -> str:
    """What the choice depends on in a loss function: which one it is ("quadratic" needs MSE)."""
    if isinstance(fn, nn.Module):
        return repr(fn)
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


#: strategy="auto" weighs each timed candidate by TIE ** its structural rank (Strategy.rank): a path that
#: does less work per point is kept unless one further down the order is faster by 25% per
#: step. A probe disturbed by load (every parallel kernel waiting for a descheduled thread)
#: measured the seed-000 net's loop 1.5x faster than its deduplicated affine path, which
#: does a thirtieth of the work and ran 8x faster over the grid; the transformer
#: benchmark's vmap_compiled probed 6% faster than the loop and ran 20% slower.
TIE = 1.25
#: timing rounds of the probe: every candidate once per round, interleaved so that a burst
#: of load hits all of them; the minimum per candidate is kept. At least MIN_ROUNDS and
#: PROBE_SECONDS of timed work, when the job is long enough to afford it.
MIN_ROUNDS, MAX_ROUNDS, PROBE_SECONDS = 3, 7, 0.1
#: how much faster a compiled strategy may be than its eager form, at best (measured on CPU:
#: seed-000 affine 10x, benchmark CNN vmap 5.5x, transformer vmap 1.5x, MNIST-size MLP affine
#: 1x): compiling is tried only when that best case saves more than the compilation costs
COMPILE_SPEEDUP = 6.0
#: estimated seconds to compile a chunk function with a warm on-disk cache: a base plus a
#: cost per leaf module (measured on a 2-core CPU: seed-000 net 2.6 s for its graph); a
#: first compile on a machine costs several times more
COMPILE_SECONDS = {"cpu": (1.0, 0.5), "cuda": (2.0, 0.5)}


def job_class(points: int) -> int:
    """The size class of a job for :data:`AUTO_CHOICES`: jobs within a factor of 4 share one.
    A choice made for a small grid (no compiling, a few chunks) is never reused for a big one."""
    return int(math.log2(max(1, points))) // 2


def _choose(ctx: Context, batches: Batches, report: EvalReport, total: int) -> Strategy:
    """``strategy="auto"``: walk the registry (:data:`STRATEGIES`), time every eager strategy
    that applies on a probe chunk and take the fastest once each is weighed by its structural
    rank (:data:`TIE`, :attr:`Strategy.rank`); then, when the best case of compiling the faster
    vectorised one (:data:`COMPILE_SPEEDUP`) beats the pick by more than the compilation's
    estimated cost, compile it and weigh it against the pick."""
    points = ctx.points
    x, y, _ = batches.first()
    args = as_args(x)
    device = batches.device
    stop = min(ctx.chunk, points.n)
    moving = points.stack(0, stop)

    def call(s: Strategy, size: int, mov, chunk: int):
        def fn():
            ctx.chunk = chunk  # compiled strategies pad to it: every call sees the chunk it compiled for
            with _batching_warnings(report):
                return s.run(0, size, mov, 0, args, y)
        return fn

    eager_chunk = ctx.chunk
    plain = VmapStrategy(ctx)
    try:
        _, ref = time_call(call(plain, stop, moving, eager_chunk), device)  # vmap's values: the reference
    except RuntimeError as err:
        return _fall_back(err, plain, "auto", ctx, report)
    # timed again: the first vmapped call of a process pays one-time costs (the decomposition of
    # cross_entropy under vmap is built then: 0.5 s), which would stand for vmap's time in a job
    # too short for timed rounds, and make the first call of a process choose unlike later ones
    t_warm, _ = time_call(call(plain, stop, moving, eager_chunk), device)
    built = {"vmap": (plain, eager_chunk, call(plain, stop, moving, eager_chunk), stop)}
    warm = {"vmap": t_warm / stop}

    def consider(name):
        """Build, grow the chunk where the strategy runs best on a bigger one, warm up
        (compiles), check the values against vmap's; the warm-up's seconds, or None."""
        try:
            s = _sized(make_strategy(name, ctx), ctx, report)
            chunk, size = ctx.chunk, min(ctx.chunk, points.n)
            fn = call(s, size, moving if size == stop else points.stack(0, size), chunk)
            t, vals = time_call(fn, device)
        except NotApplicable as err:
            report.notes.append(f"auto: {name} skipped ({err})")
            return None
        except RuntimeError as err:
            if is_out_of_memory(err) and ctx.chunk <= eager_chunk:
                raise  # the planned chunk does not fit: the caller halves it
            report.notes.append(f"auto: {name} " + ("skipped (out of memory at its larger chunk)" if is_out_of_memory(err)
                                                     else f"failed ({str(err).splitlines()[0]})"))
            return None
        finally:
            ctx.chunk = eager_chunk
        n = min(len(vals), len(ref))
        if not values_agree(vals[:n], ref[:n], rtol=1e-3):
            report.notes.append(f"auto: {name} skipped (values differ from vmap)")
            return None
        built[name] = (s, chunk, fn, size)
        warm[name] = t / size
        return t

    for name, cls in STRATEGIES.items():
        if not cls.compiled and name not in built:
            consider(name)
    rank = {k: v[0].rank for k, v in built.items()}
    # a budget for the timing rounds: a tenth of the job as the warm-up calls project it
    job = min(warm.values()) * total * len(batches)
    timings = _time_rounds({k: v[2] for k, v in built.items()}, {k: v[3] for k, v in built.items()},
                           device, budget=max(0.01, 0.1 * job), warm=warm)
    best = _pick(timings, rank)
    seconds = dict(timings)
    notes = [f"{k} {v * 1e6:.2f} us" for k, v in timings.items()]

    # compiling: the faster eager strategy that has a compiled form, unless a hand-fused or
    # structural path won (Strategy.fused), when its best case beats the pick by more than the
    # compilation's estimated cost
    variants = {cls.eager: name for name, cls in STRATEGIES.items() if cls.compiled}
    vectorised = [k for k in variants if k in timings]
    slow = any("slow batching" in n for n in report.notes)
    if vectorised and not built[best][0].fused and not slow:
        eager = min(vectorised, key=timings.get)
        compiled = variants[eager]
        work = total * len(batches)
        gain = (timings[best] - timings[eager] / COMPILE_SPEEDUP) * work
        base, per_module = COMPILE_SECONDS["cuda" if device.type == "cuda" else "cpu"]
        leaves = sum(1 for m in ctx.model.modules() if not any(True for _ in m.children()))
        cost = base + per_module * leaves
        if gain >= cost:
            t_compile = consider(compiled)
            if t_compile is not None:
                report.notes.append(f"auto: compiling {compiled} took {t_compile:.1f} s (estimated "
                                    f"{cost:.1f} s against a best-case saving of {gain:.1f} s)")
                pair = _time_rounds({k: built[k][2] for k in (best, compiled)},
                                    {k: built[k][3] for k in (best, compiled)}, device,
                                    budget=max(0.01, 0.1 * job))
                notes.append(f"{compiled} {pair[compiled] * 1e6:.2f} us")
                seconds.update(pair)
                rank[compiled] = built[compiled][0].rank
                best = _pick(pair, rank)
        else:
            notes.append(f"{compiled} not tried (compiling est. {cost:.1f} s > best-case saving {gain:.1f} s)")
    report.notes.append("auto: " + ", ".join(notes) + f" per point on a probe chunk (min of rounds); chose {best}")
    runner, ctx.chunk = built[best][0], built[best][1]
    report.point_seconds = seconds[best] * len(batches)
    return runner


def _time_rounds(fns: dict, sizes: dict, device, budget: float, warm: dict | None = None) -> dict:
    """Seconds per point of each function: the minimum over rounds in which every function
    runs once, interleaved; :data:`MIN_ROUNDS` to :data:`MAX_ROUNDS` rounds, fewer when
    ``budget`` seconds are spent (a short job cannot afford a long probe), none when one
    round would cost more than the budget: then the warm-up times ``warm`` decide."""
    if warm is not None and sum(warm[k] * sizes[k] for k in fns) > budget:
        return {k: warm[k] for k in fns}
    best = {k: math.inf for k in fns}
    spent = 0.0
    for r in range(1, MAX_ROUNDS + 1):
        for k, fn in fns.items():
            t, _ = time_call(fn, device)
            best[k] = min(best[k], t / sizes[k])
            spent += t
        if (r >= MIN_ROUNDS and spent >= PROBE_SECONDS) or spent >= budget:
            break
    return best


def _pick(timings: dict, rank: dict) -> str:
    """The candidate with the smallest ``time * TIE ** rank`` (see :data:`TIE`)."""
    return min(timings, key=lambda k: (timings[k] * TIE ** rank.get(k, len(rank)), rank.get(k, len(rank))))


def _loop_batches(given: Batches, plan: dict) -> Batches:
    """The data as given, split only where one point's batch would not fit the
    memory budget or, on CPU, where its largest intermediate would pass
    ``CPU_LOOP_TARGET_BYTES``."""
    per_sample = plan["point_bytes"] / max(1, plan["batch"])
    cap = max(1, int(plan["budget_bytes"] // max(1.0, per_sample)))
    if plan.get("device_type") == "cpu":
        cap = min(cap, max(1, CPU_LOOP_TARGET_BYTES // max(1, plan["largest_sample_bytes"])))
    return given if max(given.batch_sizes) <= cap else given.resplit(cap)


@contextlib.contextmanager
def _batching_warnings(report: EvalReport):
    """Warnings raised while a strategy runs a chunk, passed on, except PyTorch's "performance
    drop ... batching rule" warning: vmap is correct but loops over points inside for an operation
    without a batching rule, which becomes one FallbackWarning and a note in ``report``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        msg = str(w.message)
        if "performance drop" in msg and "batching rule" in msg:
            if not report.fallback and not any("slow batching" in n for n in report.notes):
                report.notes.append(f"slow batching: {msg.split('.')[0]}")
                warnings.warn(f"vmap has no batching rule for an operation of this model "
                              f"({msg.split('.')[0].split('for ')[-1]}); PyTorch evaluates it "
                              "point by point inside vmap, which is slower.", FallbackWarning, stacklevel=4)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _fall_back(err: RuntimeError, runner: Strategy, strategy: str, ctx: Context,
               report: EvalReport) -> Strategy:
    """The per-point loop, after vectorised ``runner`` failed with ``err`` (not out of memory)
    under ``strategy="auto"``: vmap met an operation without a batching rule (``nn.LSTM``,
    ``nn.GRU``), and the loop gives the same numbers. Warns once (FallbackWarning) and notes it.
    A named strategy raises ``ValueError`` saying what to use instead; an error of the loop
    itself, or out of memory, is the real one and propagates."""
    if is_out_of_memory(err) or isinstance(runner, LoopStrategy):
        raise err
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    if strategy != "auto":
        # the named strategy was checked against the model, but vmap meets an operation
        # without a batching rule only now
        raise ValueError(f"`strategy={strategy!r}` cannot evaluate this model: {first}. Use strategy='auto' "
                         "(it falls back to the per-point loop) or strategy='loop'.") from err
    warnings.warn(f"the model could not be vectorised with torch.func.vmap ({first}); falling back to "
                  "evaluating points one by one, which is slower.", FallbackWarning, stacklevel=3)
    report.fallback = True
    report.notes.append(f"vmap fallback: {first}")
    return LoopStrategy(ctx)
