"""``strategy="auto"``: which registered strategy evaluates a job, all of it in this file.

:func:`select` builds the named strategy, or for "auto" walks the registry
(:data:`fastscape._core.strategies.STRATEGIES`): it times the eager strategies that apply on a
probe chunk in interleaved rounds, checks each candidate's values against ``"vmap"``, picks by
the rule below, tries the compiled form of a vectorised pick only when compiling can repay
its estimated cost, and remembers its pick per model structure, device, dtype, shapes and
job size class (:data:`AUTO_CHOICES`).

The rule (:func:`pick`, :func:`compile_cost`), in the order it applies:

1. Each candidate's time is the fastest of its rounds, weighed by ``TIE ** rank`` (its
   structural rank, :attr:`Strategy.rank`: how much work a point costs, cheapest first).
2. A structurally dearer path (higher rank) displaces a cheaper one only when it wins in every
   round: its weighed slowest round beats the cheaper one's weighed fastest. A probe disturbed
   by load (rounds that disagree) therefore never trades the cheaper path for a dearer one.
3. Compiling is estimated in the seconds the job's probe measured in: the warm-cache estimate
   (:data:`COMPILE_SECONDS`) times the machine's load (runnable tasks per core, at least 1),
   since a loaded machine slows a compile at least as much as the job it would speed up. It
   is tried only when the best case of the compiled form (:data:`COMPILE_SPEEDUP`) saves more
   than that, and never on a probe that saw vmap's slow batching fallback.

Timings come from :func:`clock`; tests inject a fake one (``monkeypatch`` this module's
``clock`` and ``load``), so the rule is tested on chosen timings, never measured ones.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import torch
from torch import nn

from .data import Batches, as_args
from .guards import values_agree
from .memory import is_out_of_memory
from .report import EvalReport, batching_warnings, fall_back
from .strategies import STRATEGIES, Context, NotApplicable, Strategy, VmapStrategy, make_strategy

__all__ = ["select", "pick", "compile_cost", "AUTO_CHOICES", "auto_key", "clock", "time_call", "job_class"]

#: strategy="auto" picks, keyed by :func:`auto_key`: (strategy name, its probed seconds per point)
AUTO_CHOICES: dict[tuple, tuple[str, float]] = {}
#: the weight per step of structural rank: a path that does less work per point is kept unless
#: one further down the order is faster by 25% per step (measured cases: benchmarks/README.md,
#: "The constants of auto")
TIE = 1.25
#: timing rounds of the probe: every candidate once per round, interleaved so that a burst
#: of load hits all of them. At least MIN_ROUNDS and PROBE_SECONDS of timed work, when the
#: job is long enough to afford it.
MIN_ROUNDS, MAX_ROUNDS, PROBE_SECONDS = 3, 7, 0.1
#: how much faster a compiled strategy may be than its eager form, at best (benchmarks/README.md,
#: "The constants of auto"): compiling is tried only when that best case saves more than it costs
COMPILE_SPEEDUP = 6.0
#: estimated seconds to compile a chunk function with a warm on-disk cache on a quiet machine:
#: a base plus a cost per leaf module (benchmarks/README.md, "The constants of auto")
COMPILE_SECONDS = {"cpu": (1.0, 0.5), "cuda": (2.0, 0.5)}


def auto_key(model: nn.Module, points, device, dtype, chunk: int, batch_shapes, job: int = 0,
             objective: tuple = ()) -> tuple:
    """What an automatic choice depends on: the model's structure (class and
    repr), the moving names, device, dtype, chunk size, batch shapes, the size
    class of the job (whether compiling pays depends on how many points there are)
    and the loss and metric names (the "quadratic" strategy needs a mean squared error)."""
    return (type(model).__qualname__, repr(model), tuple(points.moving), str(device), str(dtype),
            int(chunk), tuple(batch_shapes), int(job), tuple(objective))


def clock(device) -> float:
    """``time.perf_counter()`` once the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def time_call(fn: Callable[[], torch.Tensor], device) -> tuple[float, torch.Tensor]:
    """Seconds of one call of ``fn`` (by :func:`clock`) and its result."""
    t = clock(device)
    out = fn()
    return clock(device) - t, out


def load() -> float:
    """Runnable tasks per CPU core over the last minute, at least 1 (1 where unknown)."""
    try:
        return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except (AttributeError, OSError):
        return 1.0


def job_class(points: int) -> int:
    """The size class of a job for :data:`AUTO_CHOICES`: jobs within a factor of 4 share one.
    A choice made for a small grid (no compiling, a few chunks) is never reused for a big one."""
    return int(math.log2(max(1, points))) // 2


def pick(rounds: dict[str, list[float]], rank: dict[str, int]) -> str:
    """The candidate to run, from each one's seconds per point in every timed round.

    The smallest weighed fastest round, ``min(rounds[k]) * TIE ** rank[k]``, wins (ties go to
    the lower rank), except that a dearer path (higher rank) keeps its win over a cheaper one
    only when its weighed *slowest* round is below the cheaper one's weighed fastest: when it
    is not, the cheapest-weighed of the cheaper candidates it did not beat in every round is
    taken instead, and the rule applies again to it.
    """
    lo = {k: min(v) * TIE ** rank[k] for k, v in rounds.items()}
    hi = {k: max(v) * TIE ** rank[k] for k, v in rounds.items()}
    best = min(rounds, key=lambda k: (lo[k], rank[k]))
    while True:
        held = [k for k in rounds if rank[k] < rank[best] and hi[best] >= lo[k]]
        if not held:
            return best
        best = min(held, key=lambda k: (lo[k], rank[k]))


def compile_cost(model: nn.Module, device) -> float:
    """Estimated seconds to compile a chunk function of ``model`` on ``device`` now: the
    warm-cache estimate of :data:`COMPILE_SECONDS` times the machine's :func:`load`."""
    base, per_module = COMPILE_SECONDS["cuda" if device.type == "cuda" else "cpu"]
    leaves = sum(1 for m in model.modules() if not any(True for _ in m.children()))
    return (base + per_module * leaves) * load()


def select(strategy: str, ctx: Context, batches: Batches, report: EvalReport) -> Strategy:
    """The strategy to run, its ``chunk`` set to the chunk it runs best at: the named one, or
    for "auto" the remembered or the probed pick (:class:`_Probe`).

    ``ctx.job_points`` is the size of the whole job (more than ``ctx.points`` when this call
    evaluates a probe or a unit of a file-backed run): the compile decision and a strategy's
    larger chunk go by it. Eval-mode BatchNorm that follows a Linear/Conv is folded into it
    first, for every strategy.
    """
    folded = ctx.fold_batchnorm()
    if folded:
        report.notes.append(f"BatchNorm folded into the layer before it: {', '.join(folded)}")
    if strategy != "auto":
        try:
            return _sized(make_strategy(strategy, ctx), report)
        except NotApplicable as err:
            raise ValueError(f"`strategy={strategy!r}` cannot evaluate this model: {err}.") from None
    total = ctx.job_points
    if math.ceil(total / ctx.chunk) * len(batches) <= 1:
        return VmapStrategy(ctx)  # one call in all: probing would cost more than it saves
    key = auto_key(ctx.user_model, ctx.points, batches.device, batches.dtype, ctx.chunk,
                   [tuple(getattr(x, "shape", ())) for x, _, _ in batches], job_class(total),
                   (_name_of(ctx.loss_fn), *sorted(ctx.metrics)))
    if key in AUTO_CHOICES:
        try:
            name, report.point_seconds = AUTO_CHOICES[key]
            chosen = _sized(make_strategy(name, ctx), report)
            report.notes.append(f"auto: {chosen.name} (remembered for jobs of this size)")
            return chosen
        except NotApplicable:
            pass
    runner = _Probe(ctx, batches, report).choose(total)
    if not report.fallback:  # a model vmap cannot batch warns again on its next call
        AUTO_CHOICES[key] = (runner.name, report.point_seconds)
    return runner


def _sized(runner: Strategy, report: EvalReport) -> Strategy:
    """``runner``, its ``chunk`` grown to the chunk it runs best at when the chunk was planned
    (``chunk_size="auto"``): compiled kernels, mlp and quadratic take larger chunks than the
    eager plan (:meth:`Strategy.best_chunk`)."""
    if report.memory_plan:
        runner.chunk = runner.best_chunk(report.memory_plan)
    return runner


def _name_of(fn) -> str:
    """What the choice depends on in a loss function: which one it is ("quadratic" needs MSE)."""
    if isinstance(fn, nn.Module):
        return repr(fn)
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


class _Probe:
    """One probed choice: the first data batch, the probe chunk's points, vmap's values on them
    (the reference every candidate must agree with), and each candidate built so far as
    ``name -> (strategy, timed call, points it evaluates)`` with its warm-up seconds per point."""

    def __init__(self, ctx: Context, batches: Batches, report: EvalReport):
        self.ctx, self.report, self.device, self.n_batches = ctx, report, batches.device, len(batches)
        x, self.y, _ = batches.first()
        self.args = as_args(x)
        self.stop = min(ctx.chunk, ctx.points.n)
        self.moving = ctx.points.stack(0, self.stop)
        self.built: dict[str, tuple] = {}
        self.warm: dict[str, float] = {}
        self.ref = None

    def call(self, s: Strategy, size: int, moving: dict) -> Callable[[], torch.Tensor]:
        def fn():
            with batching_warnings(self.report):
                return s.run(0, size, moving, 0, self.args, self.y)
        return fn

    def choose(self, total: int) -> Strategy:
        """Time every eager candidate, pick, then weigh the compiled form when it can pay."""
        plain = VmapStrategy(self.ctx)
        fn = self.call(plain, self.stop, self.moving)
        try:
            _, self.ref = time_call(fn, self.device)  # vmap's values: the reference
        except RuntimeError as err:
            return fall_back(err, plain, "auto", self.ctx, self.report)
        # timed again: the first vmapped call of a process pays one-time costs (the decomposition of
        # cross_entropy under vmap is built then: 0.5 s), which would stand for vmap's time in a job
        # too short for timed rounds, and make the first call of a process choose unlike later ones
        t_warm, _ = time_call(fn, self.device)
        self.built["vmap"], self.warm["vmap"] = (plain, fn, self.stop), t_warm / self.stop
        for name, cls in STRATEGIES.items():
            if not cls.compiled and name not in self.built:
                self.consider(name)
        # a budget for the timing rounds: a tenth of the job as the warm-up calls project it
        job = min(self.warm.values()) * total * self.n_batches
        budget = max(0.01, 0.1 * job)
        rounds = self.time_rounds(list(self.built), budget, warm=True)
        best = pick(rounds, self.ranks(rounds))
        notes = [f"{k} {min(v) * 1e6:.2f} us" for k, v in rounds.items()]
        best = self.maybe_compile(best, rounds, total, budget, notes)
        self.report.notes.append("auto: " + ", ".join(notes)
                                 + f" per point on a probe chunk (min of rounds); chose {best}")
        self.report.point_seconds = min(rounds[best]) * self.n_batches
        return self.built[best][0]

    def ranks(self, rounds: dict) -> dict[str, int]:
        return {k: self.built[k][0].rank for k in rounds}

    def consider(self, name: str) -> float | None:
        """Build, grow the chunk where the strategy runs best on a bigger one, warm up
        (compiles), check the values against vmap's; the warm-up's seconds, or None."""
        ctx, report, chunk = self.ctx, self.report, self.ctx.chunk
        try:
            s = _sized(make_strategy(name, ctx), report)
            chunk = s.chunk
            size = min(chunk, ctx.points.n)
            fn = self.call(s, size, self.moving if size == self.stop else ctx.points.stack(0, size))
            t, vals = time_call(fn, self.device)
        except NotApplicable as err:
            report.notes.append(f"auto: {name} skipped ({err})")
            return None
        except RuntimeError as err:
            if is_out_of_memory(err) and chunk <= ctx.chunk:
                raise  # the planned chunk does not fit: the caller halves it
            report.notes.append(f"auto: {name} " + ("skipped (out of memory at its larger chunk)"
                                                     if is_out_of_memory(err)
                                                     else f"failed ({str(err).splitlines()[0]})"))
            return None
        n = min(len(vals), len(self.ref))
        if not values_agree(vals[:n], self.ref[:n], rtol=1e-3):
            report.notes.append(f"auto: {name} skipped (values differ from vmap)")
            return None
        self.built[name], self.warm[name] = (s, fn, size), t / size
        return t

    def maybe_compile(self, best: str, rounds: dict, total: int, budget: float, notes: list) -> str:
        """The faster eager strategy that has a compiled form, compiled and weighed against
        ``best`` when its best case saves more than :func:`compile_cost`, unless a hand-fused or
        structural path won (:attr:`Strategy.fused`) or vmap fell back to slow batching."""
        variants = {cls.eager: name for name, cls in STRATEGIES.items() if cls.compiled}
        vectorised = [k for k in variants if k in rounds]
        slow = any("slow batching" in n for n in self.report.notes)
        if not vectorised or self.built[best][0].fused or slow:
            return best
        eager = min(vectorised, key=lambda k: min(rounds[k]))
        compiled = variants[eager]
        gain = (min(rounds[best]) - min(rounds[eager]) / COMPILE_SPEEDUP) * total * self.n_batches
        cost = compile_cost(self.ctx.model, self.device)
        if gain < cost:
            notes.append(f"{compiled} not tried (compiling est. {cost:.1f} s > best-case saving {gain:.1f} s)")
            return best
        t_compile = self.consider(compiled)
        if t_compile is None:
            return best
        self.report.notes.append(f"auto: compiling {compiled} took {t_compile:.1f} s (estimated "
                                 f"{cost:.1f} s against a best-case saving of {gain:.1f} s)")
        pair = self.time_rounds([best, compiled], budget)
        notes.append(f"{compiled} {min(pair[compiled]) * 1e6:.2f} us")
        rounds.update(pair)
        return pick(pair, self.ranks(pair))

    def time_rounds(self, names: list[str], budget: float, warm: bool = False) -> dict[str, list[float]]:
        """Seconds per point of each candidate in every round, a round running each once,
        interleaved; :data:`MIN_ROUNDS` to :data:`MAX_ROUNDS` rounds, fewer when ``budget``
        seconds are spent (a short job cannot afford a long probe), none when one round would
        cost more than the budget: then the warm-up times decide (with ``warm``)."""
        sizes = {k: self.built[k][2] for k in names}
        if warm and sum(self.warm[k] * sizes[k] for k in names) > budget:
            return {k: [self.warm[k]] for k in names}
        rounds: dict[str, list[float]] = {k: [] for k in names}
        spent = 0.0
        for r in range(1, MAX_ROUNDS + 1):
            for k in names:
                t, _ = time_call(self.built[k][1], self.device)
                rounds[k].append(t / sizes[k])
                spent += t
            if (r >= MIN_ROUNDS and spent >= PROBE_SECONDS) or spent >= budget:
                break
        return rounds
