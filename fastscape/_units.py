"""A grid in units: one plan, units dealt over the ranks, kept in memory or in a sidecar.

``loss_surface`` evaluates a grid unit by unit through :class:`Units`, on both
routes: in memory in one process the grid is one unit, evaluated exactly as asked
(``chunk_size`` and ``strategy`` as given, no store); into a file or over several
ranks, :func:`plan_units` fixes the plan once (probing the model, so that every
unit of every run and rank is computed alike) and the store keeps each unit as it
finishes. The store is asked only two things: is this unit done, and keep this
unit (see :mod:`fastscape._store`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import warnings

import numpy as np

from ._core.evaluator import EvalReport, FallbackWarning, evaluate, value_names
from ._core.params import positive_int
from ._distributed import all_gather_object, on_rank0, rank_world
from ._store import SurfaceStore, unit_len

__all__ = ["Units", "plan_units", "MAX_UNITS", "UNIT_SECONDS"]

logger = logging.getLogger("fastscape")

#: at most this many unit files per surface; units hold whole chunks.
MAX_UNITS = 2048
#: with chunk_size="auto", a unit holds at least this many seconds of work as the plan's probe
#: measured it (and there are at least as many units as ranks). Every unit is one evaluate
#: call that derives its per-batch tables anew (the affine and mlp paths' first-layer outputs):
#: 19 units of 24 points made a 441-point MNIST-size MLP surface 1.8x slower into a file than
#: in memory (2 units: 1.0x). A kill loses at most the units in flight, a few seconds of work.
UNIT_SECONDS = 2.0


def quiet_fallback(call):
    """Run ``call()``, holding back FallbackWarnings; ``(result, the first one or None)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    first = None
    for w in caught:
        if issubclass(w.category, FallbackWarning):
            first = first or w
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, first


def batching(batches) -> str:
    """The batch sizes a plan cut the data into, compactly: ``"12 batches, sha1 ..."``."""
    sizes = list(batches.batch_sizes)
    return f"{len(sizes)} batches, sha1 {hashlib.sha1(json.dumps(sizes).encode()).hexdigest()[:16]}"


def batches_for(given, batch):
    """The data as the plan cuts it: ``given`` with batches larger than ``batch`` split."""
    if batch is not None and max(given.batch_sizes) > batch:
        return given.resplit(batch)
    return given


def plan_units(model, given, make_points, n_points, *, loss_fn, metrics, chunk_size, batch_size, strategy,
          buffers) -> dict:
    """Chunk, data batch, strategy and unit size of a run, fixed when it starts.

    With ``chunk_size="auto"`` the strategy, chunk and data batches are planned as
    :func:`evaluate` plans them for the whole grid in memory (the probes are told
    the job's size), and a unit holds :data:`UNIT_SECONDS` of work; an explicit
    chunk is also the unit. The probes may fall back to the per-point loop; their
    FallbackWarning is given once, here, and the plan records ``fallback``.
    """
    batches = batches_for(given, None if batch_size is None else positive_int(batch_size, "batch_size"))
    fallback = None
    if chunk_size == "auto":
        # the memory plan needs one point on the real data (its value is discarded); a named
        # strategy's chunk grows to what it runs best at over the whole job (expected_points)
        (_, probe), fallback = quiet_fallback(lambda: evaluate(
            model, batches, make_points(0, 1), loss_fn=loss_fn, metrics=metrics, chunk_size="auto",
            strategy=strategy, buffers=buffers, expected_points=None if strategy == "auto" else n_points))
        eager = min(probe.memory_plan["chunk_limit"], n_points)
        chunk, batch = min(max(eager, probe.chunk_size), n_points), probe.batch_size
        memory_plan, per_point = probe.memory_plan, probe.seconds / max(1, probe.n_points)
        if strategy != "auto" and n_points > chunk:
            # a named strategy's warm time per point, for the unit size: two chunks, the second
            # timed (the one-point probe above mostly measured building the per-batch tables)
            (_, timed), _ = quiet_fallback(lambda: evaluate(
                model, batches_for(given, batch), make_points(0, min(n_points, 2 * chunk)), loss_fn=loss_fn,
                metrics=metrics, chunk_size=chunk, strategy=strategy, buffers=buffers))
            per_point = timed.point_seconds or per_point
    else:
        chunk, batch, memory_plan = min(positive_int(chunk_size, "chunk_size"), n_points), batch_size, {}
        eager = chunk
    if strategy == "auto":
        # choose once, on one chunk, for the whole run: units computed in other runs or
        # on other ranks then use the same strategy, so a resumed or sharded result is
        # bit-identical to an uninterrupted one (strategies agree only to rounding). With
        # chunk_size "auto" the chosen strategy's chunk is planned as in memory: the same
        # strategy, chunk and batches as loss_surface without a file.
        (_, probe), seen = quiet_fallback(lambda: evaluate(
            model, batches, make_points(0, eager), loss_fn=loss_fn, metrics=metrics,
            chunk_size="auto" if chunk_size == "auto" else chunk, strategy="auto", buffers=buffers,
            expected_points=n_points))
        strategy = probe.strategy
        fallback = fallback or seen
        if chunk_size == "auto":
            chunk, batch, memory_plan = min(probe.chunk_size, n_points), probe.batch_size, probe.memory_plan
            # the probe's warm time per point when auto timed it; else the probe's own, which
            # includes building its per-batch tables once (more units: safe, a little slower)
            per_point = probe.point_seconds or probe.seconds / max(1, probe.n_points)
    memory_plan = {**memory_plan, "chunk": chunk} if memory_plan else {}
    if fallback is not None:
        warnings.warn_explicit(fallback.message, fallback.category, fallback.filename, fallback.lineno)
    n_chunks = math.ceil(n_points / chunk)
    per_unit = max(1, math.ceil(n_chunks / MAX_UNITS))
    if chunk_size == "auto":  # an explicit chunk is also the unit of work, as the user chose it
        _, world = rank_world()
        per_unit = max(per_unit, min(math.floor(UNIT_SECONDS / max(per_point * chunk, 1e-9)),
                                     math.ceil(n_chunks / world)))
    unit = chunk * per_unit
    batch = None if batch is None else int(batch)
    return {"chunk": int(chunk), "strategy": strategy, "fallback": fallback is not None,
            "batch": batch, "batching": batching(batches_for(given, batch)), "unit": int(unit),
            "n_units": math.ceil(n_points / unit), "n_points": int(n_points),
            "width": len(value_names(batches, metrics)), "memory_plan": memory_plan}



class Units:
    """A grid of ``n_points`` points (C order) in units of whole chunks, and the values found so far.

    Never evaluates a unit itself; the caller evaluates each pending unit and
    hands the values back, on both routes alike::

        units = Units.whole(batches, n, chunk_size=..., strategy=...)        # in memory
        units = Units.planned(model, given, points, n, ..., store=store)    # a file, or ranks
        for u, lo, hi in units.pending():
            values, rep = evaluate(model, units.batches, points(lo, hi), chunk_size=units.chunk,
                                   strategy=units.strategy, ...)
            units.keep(u, values, rep)
        values, report, run = units.gather()

    Attributes
    ----------
    batches : Batches
        The data as the plan cuts it.
    chunk : int or "auto"
        The chunk to evaluate the next unit with (smaller after an out-of-memory back-off).
    strategy : str
        The plan's strategy.
    """

    def __init__(self, manifest: dict, batches, *, names=None, store: SurfaceStore | None = None,
                 done: dict | None = None, done_ids: list[int] | None = None, report: EvalReport | None = None):
        self.rank, self.world = rank_world()
        self.manifest, self.batches, self.names, self.store = manifest, batches, names, store
        self.n_points = manifest["n_points"]
        self.chunk, self.strategy = manifest["chunk"], manifest["strategy"]
        #: units found finished on disk (rank 0 only) and units this rank computed
        self.done: dict[int, np.ndarray] = dict(done or {})
        self.new: dict[int, np.ndarray] = {}
        self.done_ids = sorted(self.done) if done_ids is None else list(done_ids)  # known to every rank
        self.report = report
        self.values = None
        todo = sorted(set(range(manifest["n_units"])) - set(self.done_ids))
        self.mine = todo[self.rank::self.world]
        self.t0 = time.perf_counter()

    @classmethod
    def whole(cls, batches, n_points: int, *, chunk_size, strategy: str) -> "Units":
        """The grid as one unit, kept in memory and evaluated as asked (one process, no file)."""
        return cls({"n_points": n_points, "unit": n_points, "n_units": 1, "chunk": chunk_size,
                    "strategy": strategy}, batches)

    @classmethod
    def planned(cls, model, given, make_points, n_points: int, *, loss_fn, metrics: dict, chunk_size,
                batch_size, strategy: str, buffers, settings: dict, store: SurfaceStore | None, progress,
                why: dict | None = None) -> "Units":
        """Fix the plan (rank 0 resumes it from ``store`` or makes a new one), share it with every
        rank and deal the units still to do over them.

        ``given`` is the data as given (the plan cuts it, and a resumed run cuts it
        again exactly as the plan recorded); ``make_points(start, stop)`` the grid's
        points ``start:stop`` (for the plan's probes); ``settings`` what a file must
        match (see :mod:`fastscape._store.fingerprint`); ``store`` None keeps the units
        in memory (ranks without a file); ``progress.start(total)``, when it has one,
        is told this rank's points; ``why`` the loss or metrics that cannot be
        fingerprinted (a partial run is refused).
        """
        metrics = dict(metrics or {})

        def plan():
            return {"settings": settings, **plan_units(
                model, given, make_points, n_points, loss_fn=loss_fn, metrics=metrics, chunk_size=chunk_size,
                batch_size=batch_size, strategy=strategy, buffers=buffers)}

        found = {}  # the finished units on disk, read on rank 0 only

        def start_rank0():
            if store is None:
                return plan(), []
            manifest = store.recorded(settings, why=why)
            why_not = "no plan" if manifest is None else _unreproducible(given, manifest)
            if manifest is not None and why_not:
                logger.warning("the units in %s cannot be reproduced (%s); recomputing them all", store.parts,
                               why_not)
            if why_not:
                manifest = plan()
            found.update(store.start(manifest))
            return manifest, sorted(found)

        manifest, done_ids = on_rank0(start_rank0)
        rank, _ = rank_world()
        if store is not None:
            store.use(manifest)
        if chunk_size != "auto" and manifest["chunk"] != min(int(chunk_size), n_points):
            logger.info("resuming with the file's chunk size %d (asked %s)", manifest["chunk"], chunk_size)
        batches = batches_for(given, manifest["batch"])
        manifest = {**manifest, "strategy": manifest.get("strategy", strategy)}
        report = EvalReport(strategy=manifest["strategy"], chunk_size=manifest["chunk"],
                            batch_size=max(batches.batch_sizes), n_points=0, n_samples=batches.n_samples,
                            device=str(batches.device), dtype=str(batches.dtype).replace("torch.", ""),
                            memory_plan=dict(manifest["memory_plan"]), fallback=bool(manifest.get("fallback")))
        units = cls(manifest, batches, names=value_names(batches, metrics), store=store,
                    done=found, done_ids=done_ids, report=report)
        if hasattr(progress, "start"):
            progress.start(total=sum(unit_len(manifest, u) for u in units.mine))
        return units

    def pending(self):
        """This rank's units still to do: ``(u, lo, hi)``, unit ``u`` holding points ``lo:hi``."""
        for u in self.mine:
            lo = u * self.manifest["unit"]
            yield u, lo, lo + unit_len(self.manifest, u)

    def keep(self, u: int, values: dict[str, np.ndarray], rep: EvalReport) -> None:
        """Keep unit ``u``'s values (written to the store when there is one) and its report."""
        if self.names is None:  # the whole grid in memory: the unit's values and report are the run's
            self.values, self.report = values, rep
            return
        arr = np.stack([values[k] for k in self.names], axis=1)
        if self.store is not None:
            self.store.write_unit(u, arr)
        self.new[u] = arr
        report = self.report
        report.n_points += len(arr)
        report.strategy = rep.strategy
        report.fallback = report.fallback or rep.fallback
        report.oom_backoffs += rep.oom_backoffs
        report.notes.extend(n for n in rep.notes if n not in report.notes)
        if rep.chunk_size < self.chunk:  # an out-of-memory back-off: keep the smaller chunk
            self.chunk = report.chunk_size = rep.chunk_size

    def gather(self) -> tuple[dict[str, np.ndarray], EvalReport, dict | None]:
        """Every unit, from every rank (a collective call on the planned route).

        Returns
        -------
        values : dict name -> ndarray of shape (n_points,)
        report : EvalReport
            Of this process's work in this run.
        run : dict or None
            ``units``, ``unit_points``, ``reused_units``, ``world_size``; None for the whole grid in memory.
        """
        if self.names is None:
            return self.values, self.report, None
        self.report.seconds = time.perf_counter() - self.t0
        manifest, rank = self.manifest, self.rank
        # every rank receives every unit; rank 0 also contributes the units found on disk
        shares = all_gather_object({**self.new, **self.done} if rank == 0 else self.new)
        table = np.empty((self.n_points, len(self.names)), dtype=np.float64)
        seen = 0
        for share in shares:
            for u, arr in share.items():
                lo = u * manifest["unit"]
                table[lo:lo + len(arr)] = arr
                seen += 1
        if seen < manifest["n_units"]:
            raise RuntimeError(f"only {seen} of {manifest['n_units']} units were computed; a rank failed.")
        run = {"units": manifest["n_units"], "unit_points": manifest["unit"], "reused_units": len(self.done_ids),
               "world_size": self.world}
        logger.info("rank %d evaluated %d of %d units (%d reused from disk)", rank, len(self.mine),
                    manifest["n_units"], len(self.done_ids))
        return {k: table[:, j].copy() for j, k in enumerate(self.names)}, self.report, run


def _unreproducible(given, manifest: dict) -> str | None:
    """Why ``manifest``'s plan cannot be reproduced with the data as given now (None: it can)."""
    if "batching" not in manifest or "batch" not in manifest:
        return "the manifest records no data batching"
    now = batching(batches_for(given, manifest["batch"]))
    if now != manifest["batching"]:
        return f"the data now comes in other batches ({now}) than the plan recorded ({manifest['batching']})"
    return None
