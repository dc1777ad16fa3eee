"""``loss_surface``: the loss on a grid ``origin + sum_i c_i * d_i`` of weight space."""

from __future__ import annotations

import math
import platform
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from ._core.data import Batches, NamedBatches
from ._core.evaluator import evaluate
from ._core.grid import make_axes, mesh
from ._core.guards import warn_once
from ._core.metrics import check_metrics
from ._core.params import (
    check_directions,
    check_loss_fn,
    check_model,
    check_origin,
    flatten,
    positive_int,
    resolve_device,
    resolve_dtype,
)
from ._core.points import AffinePoints
from ._core.recalibrate import RecalibratedPoints, calibration_batches
from ._distributed import on_rank0, rank_world
from ._store import SurfaceStore, data_fingerprint, request_settings, unfingerprintable_message
from ._surface import Surface
from ._units import Units

__all__ = ["loss_surface"]


def _cosines(directions) -> list[list[float]]:
    """Cosines between the directions (Euclidean over every entry), a (k, k) nested list.

    Entries that are zero in every direction (the frozen parameters of a subset) add nothing to a
    dot product or a norm: only the others are flattened (resnet18 with only ``fc`` moving: 5 k of
    11.2 M entries)."""
    keys = [k for k in directions[0] if any(_nonzero(d[k]) for d in directions)]
    flat = [flatten(d, keys, dtype=torch.float64, device="cpu") if keys else torch.zeros(1, dtype=torch.float64)
            for d in directions]
    k = len(flat)
    cos = np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            den = float(flat[i].norm() * flat[j].norm())
            cos[i, j] = cos[j, i] = float(flat[i] @ flat[j]) / den if den > 0 else 0.0
    return cos.tolist()


def _nonzero(t: torch.Tensor) -> bool:
    """Whether ``t`` holds an entry other than 0 (NaN counts), in one pass without a temporary."""
    if t.numel() == 0:
        return False
    if not (t.is_floating_point() or t.is_complex()):
        return bool(t.any())
    lo, hi = torch.aminmax(t.detach().reshape(-1))
    return not (float(lo) == 0.0 and float(hi) == 0.0)


def loss_surface(model: nn.Module, data, directions, *, loss_fn: Callable, grid=(-1.0, 1.0, 51),
                 origin=None, metrics: Mapping[str, Callable] | None = None,
                 device=None, dtype=torch.float32, chunk_size="auto", batch_size: int | None = None,
                 strategy: str = "auto", progress: bool | Callable | None = None,
                 out=None, recalibrate=None) -> Surface:
    """The loss of ``model`` on ``data`` at every point of a grid in weight space.

    Point ``(c_0, ..., c_{k-1})`` of the grid has parameters
    ``origin + sum_i c_i * directions[i]``. All points of a chunk are evaluated
    at once (``torch.func.vmap`` over ``functional_call``), the model in eval mode;
    the model itself is left exactly as given.

    Parameters
    ----------
    model : nn.Module
    data : (inputs, targets) pair, DataLoader, Dataset or iterable of such pairs; or a dict of them
        The loss is the sample-weighted mean over all of it. A dict name -> data,
        e.g. ``{"train": (x, y), "test": test_loader}``, evaluates every dataset
        in the same pass over the grid (each chunk of points runs over all of
        them); the values are then keyed ``"train/loss"``, ``"train/accuracy"``,
        ``"test/loss"``, ... (see :meth:`Surface.value`), and ``Surface.loss`` is
        the first dataset's loss. Names are non-empty and hold no ``"/"``.
    directions : list of 1, 2 or 3 dicts name -> Tensor
        Keyed like ``model.named_parameters()`` (floating buffers may be
        included to move BatchNorm statistics too), e.g. from
        :func:`random_directions`.
    loss_fn : callable ``(output, target) -> scalar tensor``
        The mean loss of a batch, e.g. ``torch.nn.functional.cross_entropy``.
    grid : int, (min, max, num), or list of per-direction (min, max, num) / 1-D arrays
        Coordinates along each direction: an int ``num`` is ``num`` points on
        [-1, 1] along every direction; a triple the same span and count along
        every direction; a list holds one triple or 1-D array per direction
        (non-square and non-uniform grids).
    origin : nn.Module or dict, optional
        Where the directions start (default: the model's own parameters).
    metrics : dict name -> callable, optional
        Extra batch-mean metrics in the same pass, e.g. ``{"accuracy": fastscape.accuracy}``.
    device : str or torch.device, optional
        Default: CUDA when available (the current CUDA device, ``cuda:LOCAL_RANK``
        under :func:`init_distributed`), else CPU.
    dtype : "float32" (default), "float64" or "bfloat16" (or the torch dtypes)
        The dtype of parameters, data and activations. "bfloat16" runs the model
        in bf16 (the loss of its output in float32; coordinates rounded to bf16 too):
        fast on GPUs, with deviations of about 1e-2. TF32 matmuls and convolutions
        follow PyTorch's switches (``torch.backends.cuda.matmul.allow_tf32``,
        ``torch.backends.cudnn.allow_tf32``).
    chunk_size : int or "auto"
        Grid points evaluated at once. "auto" plans the chunk from the device's
        free memory and a measured footprint of one point, capped by a speed
        target; it halves and retries on out-of-memory. The plan is in
        ``meta["memory_plan"]``.
    batch_size : int, optional
        Largest data batch (default: planned from the model's activation size).
    strategy : {"auto", "vmap", "loop", "affine", "mlp", "quadratic", "prefix", "vmap_compiled", "affine_compiled"}
        How chunks are computed (see :mod:`fastscape._core.strategies`); the values
        do not depend on it beyond float32 rounding. "auto" picks by a short measured
        probe weighed by structure and remembers the pick per job size; the chosen
        one is ``meta["strategy"]`` (and the chunk ``meta["chunk_size"]``): passing
        both back gives the same bits in any later run.
    progress : bool or callable, optional
        Show a progress bar with points per second and ETA (default: when
        stderr is a terminal), or a callable receiving the number of points
        finished.
    out : str or Path, optional
        An HDF5 file (``.h5``) to compute into, crash-safe and resumable:
        finished chunks are kept in ``out + ".parts/"`` as they complete, a
        repeated call evaluates only the missing ones (identical result), and
        a complete file with the same settings is returned without computing.
        A file with other settings (model, origin, directions, grid, the
        data's content, the loss and metric functions, dtype) or whose
        checksums fail is refused with a ``ValueError``; one another live
        process is computing into, with a ``RuntimeError``. A loss or metric
        whose behaviour cannot be fingerprinted (it holds an open file, a
        lock, ...) is announced with a warning and its file is never reused:
        give it a string attribute ``fastscape_fingerprint`` to vouch for it.
        See :mod:`fastscape._store` (what a file vouches for: :mod:`fastscape._store.fingerprint`).
    recalibrate : data, optional
        Calibration data (an ``(inputs, targets)`` pair, a DataLoader, ...; targets unused): every
        BatchNorm layer's running statistics are recomputed at each grid point before it is
        evaluated, all points of a chunk in one vmapped train-mode pass (as PyTorch's BatchNorm
        with ``momentum=None`` accumulates them over the batches as given; see
        :mod:`fastscape._core.recalibrate`). A file's settings then include the calibration data.

    Under ``torch.distributed`` (e.g. ``torchrun`` and :func:`init_distributed`)
    the grid is sharded over the ranks; every rank returns the whole surface
    and rank 0 writes ``out``.

    Returns
    -------
    Surface
        ``loss`` of shape ``(len(coords[0]), ..., len(coords[k-1]))``.
    """
    _check_model(model, loss_fn)
    metrics = check_metrics(metrics)
    store = SurfaceStore(out) if out is not None else None
    info = dict(getattr(directions, "info", {}))
    directions, orig, axes = _check_grid(model, directions, origin, grid)
    dev = resolve_device(device, model)
    dt = resolve_dtype(dtype, bfloat16=True)
    given, batches = _data(data, dev, dt, batch_size)
    coords = torch.from_numpy(mesh(axes))
    buffers = None
    if isinstance(origin, nn.Module):
        buffers = {n: b.detach() for n, b in origin.named_buffers()}
    rank, world = rank_world()
    settings, why = request_settings(model, given, batches, orig, buffers, directions, axes, dt, loss_fn=loss_fn,
                                     metrics=metrics, hash_inputs=store is not None, data=data)
    recal = _recalibration(model, recalibrate, orig, buffers)
    if recalibrate is not None and store is not None:  # the statistics depend on the batches as given
        each = [data_fingerprint(calibration_batches([(x, y)], device=dev, dtype=dt))
                for x, y, _ in calibration_batches(recalibrate, device=dev, dtype=dt)]
        settings["data_fingerprint"] += f"; recalibrate={each}"
    if store is not None:
        found = _reuse_or_lock(store, settings, why)
        if found is not None:
            return found
        for arg, reason in why.items():  # a new run: say now, before the grid, that it cannot be reused
            if rank == 0:
                warnings.warn(unfingerprintable_message(arg, reason), UserWarning, stacklevel=2)
    try:
        bar = _progress(progress, coords.shape[0], show=rank == 0,
                        desc=f"fastscape rank {rank}/{world}" if world > 1 else "fastscape")
        orig_d = {n: t.to(dev, dt) for n, t in orig.items()}
        dirs_d = [{n: t.to(dev, dt) for n, t in d.items()} for d in directions]

        def points(lo, hi):  # points lo:hi of the grid, C order
            return recal(AffinePoints(orig_d, dirs_d, coords[lo:hi]))

        try:
            with warn_once():  # the grid's warnings (a loss's, once for all units and batches)
                if store is None and world == 1:  # one unit, evaluated as asked
                    units = Units.whole(batches, coords.shape[0], chunk_size=chunk_size, strategy=strategy)
                else:  # planned units: into the file, over the ranks
                    units = Units.planned(model, given, points, coords.shape[0], loss_fn=loss_fn, metrics=metrics,
                                          chunk_size=chunk_size, batch_size=batch_size, strategy=strategy,
                                          buffers=buffers, settings=settings, store=store, progress=bar, why=why)
                for u, lo, hi in units.pending():
                    values, rep = evaluate(model, units.batches, points(lo, hi), loss_fn=loss_fn, metrics=metrics,
                                           chunk_size=units.chunk, strategy=units.strategy, buffers=buffers,
                                           progress=bar)
                    units.keep(u, values, rep)
                values, report, run = units.gather()
        finally:
            if hasattr(bar, "close"):
                bar.close()
        surface = _surface(values, report, run, axes=axes, batches=batches, directions=directions,
                           settings=settings, info=info)
        if store is not None:
            on_rank0(lambda: store.finish(surface))
        return surface
    finally:
        if store is not None and rank == 0:
            store.release()


def _recalibration(model, recalibrate, orig, buffers):
    """A function wrapping grid points so that BatchNorm statistics are recomputed at each
    (identity when ``recalibrate`` is None)."""
    if recalibrate is None:
        return lambda points: points
    base = {**{n: p.detach() for n, p in model.named_parameters()}, **dict(model.named_buffers()), **orig,
            **(buffers or {})}
    return lambda points: RecalibratedPoints(points, model, recalibrate, base)


def _check_model(model, loss_fn) -> None:
    check_model(model)
    check_loss_fn(loss_fn)
    if not any(True for _ in model.parameters()):
        raise ValueError(f"`model` has no parameters ({type(model).__name__}); a loss surface moves the "
                         "weights, so the model needs some.")


def _check_grid(model, directions, origin, grid):
    """``(directions, origin over their names, axes)``, each checked against ``model``."""
    directions = check_directions(model, directions)
    for i, d in enumerate(directions):
        for name, t in d.items():
            if t.device.type == "meta":
                raise ValueError(f"`directions[{i}][{name!r}]` is on the 'meta' device: it has a shape but no "
                                 "values. Pass directions that hold values, e.g. fastscape.random_directions(model).")
    k = len(directions)
    if k > 3:
        raise ValueError(f"`directions` must hold 1, 2 or 3 directions; got {k}.")
    axes = make_axes(grid, k)
    orig = check_origin(model, origin, list(directions[0]))
    _warn_nonfinite(directions, orig)
    return directions, orig, axes


def _data(data, dev, dt, batch_size):
    """``(given, batches)``: the data as given, and cut to ``batch_size`` (a file's plan records
    how it cut the given data); a warning when it holds NaN or inf."""
    given = NamedBatches(data, device=dev, dtype=dt) if isinstance(data, Mapping) else \
        Batches(data, device=dev, dtype=dt)
    batches = given if batch_size is None else given.resplit(positive_int(batch_size, "batch_size"))
    bad = given.nonfinite()
    if bad is not None:
        warnings.warn(f"`data` holds {bad}: the loss will be NaN (or inf) at every point of the surface.",
                      UserWarning, stacklevel=3)
    return given, batches


def _warn_nonfinite(directions, origin) -> None:
    """One warning naming the first direction (or origin) entry that holds NaN or inf."""
    named = [(f"directions[{i}][{k!r}]", t) for i, d in enumerate(directions) for k, t in d.items()]
    named += [(f"origin[{k!r}]", t) for k, t in origin.items()]
    for where, t in named:
        if t.is_floating_point() and t.numel() and not _finite(t):
            kind = "NaN" if bool(torch.isnan(t).any()) else "inf"
            warnings.warn(f"`{where}` holds {kind}: every point it reaches is NaN (0 * inf is NaN too, so "
                          "usually the whole surface).", UserWarning, stacklevel=4)
            return


def _finite(t: torch.Tensor) -> bool:
    """Whether every entry of a non-empty floating tensor is finite: NaN and inf reach its min or max
    (one pass, no boolean temporary: a tenth of ``isfinite(t).all()``'s time on an 11 M tensor)."""
    lo, hi = torch.aminmax(t.detach().reshape(-1))
    return math.isfinite(float(lo)) and math.isfinite(float(hi))


def _reuse_or_lock(store: SurfaceStore, settings: dict, why: dict) -> Surface | None:
    """The complete surface ``store`` holds for ``settings``, or None with rank 0 holding its lock."""
    # a complete file needs no lock (it may sit in a read-only folder)
    found = on_rank0(lambda: store.completed(settings, why=why))
    if found is not None:
        return found

    def lock():
        store.acquire(settings)
        try:  # another process may have finished it meanwhile
            done = store.completed(settings, why=why, locked=True)
            if done is None:
                store.refuse_partial(settings, why)
        except BaseException:
            store.release()
            raise
        if done is not None:
            store.release()
        return done

    return on_rank0(lock)


def _surface(values: dict, report, run: dict | None, *, axes, batches, directions, settings: dict,
             info: dict) -> Surface:
    """The Surface of a grid's ``values`` (name -> one value per point, C order), with its meta."""
    dev, dt = batches.device, batches.dtype
    shape = tuple(len(a) for a in axes)
    meta = {
        "n_directions": len(directions),
        "grid_shape": list(shape),
        "n_samples": batches.n_samples,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "dtype": str(dt).replace("torch.", ""),
        "strategy": report.strategy,
        "chunk_size": report.chunk_size,
        "batch_size": report.batch_size,
        "seconds": report.seconds,
        "points_per_second": report.points_per_second,
        "fallback": report.fallback,
        "oom_backoffs": report.oom_backoffs,
        "memory_plan": report.memory_plan,
        "notes": report.notes,
        "cosines": _cosines(directions),
        "model_fingerprint": settings["model_fingerprint"],
        "origin_fingerprint": settings["origin_fingerprint"],
        "directions_fingerprint": settings["directions_fingerprint"],
        "torch_version": torch.__version__,
        "settings": settings,
    }
    if batches.names is not None:
        meta["datasets"] = dict(zip(batches.names, batches.counts))
    if run is not None:
        meta["run"] = run
    meta["directions"] = info
    first = next(iter(values))  # "loss", or the first dataset's "train/loss"
    return Surface(
        coords=axes,
        loss=values.pop(first).reshape(shape),
        metrics={name: v.reshape(shape) for name, v in values.items()},
        meta=meta,
    )


def _progress(progress, total, *, desc="fastscape", show=True):
    """A progress callable ``(n_done) -> None`` (or None).

    ``progress`` may be a user callable (returned as is), ``True``/``False``, or
    ``None``: a bar when stderr is a terminal. The bar (tqdm) counts grid
    points and shows points per second and the ETA; :meth:`start` resets its
    total when a resumed or sharded run has less to do.
    """
    if callable(progress) and not isinstance(progress, bool):
        return progress
    import sys

    if progress is None:
        progress = sys.stderr.isatty()
    if not progress or not show:
        return None
    from tqdm.auto import tqdm

    class _Bar:
        def __init__(self):
            self.bar = tqdm(total=total, unit="pt", unit_scale=True, desc=desc, leave=False,
                            dynamic_ncols=True, smoothing=0.1)

        def start(self, total):
            self.bar.reset(total=total)

        def __call__(self, n):
            self.bar.update(n)

        def close(self):
            self.bar.close()

    return _Bar()
