"""Crash-safe, resumable surface files.

Why not write the HDF5 file as chunks finish? HDF5 is not crash-safe: a
process killed in the middle of a write can leave the whole file unreadable,
taking every finished chunk with it. So a run into ``out.h5`` keeps its
finished work in a sidecar folder ``out.h5.parts/``:

- ``manifest.json`` holds the request's settings (model, origin and directions
  fingerprints, grid, data size, loss, metrics, dtype) and the plan (chunk,
  data batch, unit size) fixed when the run started;
- each finished unit (a run of whole chunks of the grid, in C order) is one
  ``unit-NNNNNNN.npy`` file, written to a temporary name, flushed to disk and
  renamed into place with ``os.replace``, which is atomic on POSIX: a unit file
  either exists complete or not at all.

Killing the process at any moment (SIGKILL included) loses at most the units in
flight. Running the same request again reads the manifest, refuses it if any
setting differs, and evaluates only the missing units, with the manifest's chunk
and batch sizes: every unit is computed exactly as in an uninterrupted run, so
the result is identical bit for bit (same device and PyTorch build). When all
units exist, the surface is written to a temporary HDF5 file that is renamed
onto ``out.h5`` (again atomic) and the sidecar folder is removed. A complete
``out.h5`` whose settings match is returned as is; one whose settings differ is
refused.

Under ``torch.distributed`` the units still to do are dealt round-robin over
the ranks (see :mod:`fastscape._distributed`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import re
import shutil
import time
from pathlib import Path

import numpy as np

from ._core.evaluator import EvalReport, evaluate
from ._core.params import positive_int
from ._distributed import all_gather_object, broadcast_object, rank_world
from ._optional import require
from ._surface import load_surface

__all__ = ["SurfaceStore", "run_grid", "on_rank0", "SETTINGS_KEYS", "grid_fingerprint"]

logger = logging.getLogger("fastscape")

FORMAT = 1
#: the settings a file must share with a request to be resumed or reused.
SETTINGS_KEYS = ("format", "model_fingerprint", "origin_fingerprint", "directions_fingerprint",
                 "grid_shape", "grid_fingerprint", "n_samples", "loss", "metrics", "dtype")
#: at most this many unit files per surface; units hold whole chunks.
MAX_UNITS = 2048
_UNIT = re.compile(r"^unit-(\d+)\.npy$")
_SUFFIXES = (".h5", ".hdf5")


def grid_fingerprint(axes) -> str:
    """SHA-1 over the exact float64 coordinates of every axis."""
    h = hashlib.sha1()
    for a in axes:
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _show(key: str, value) -> str:
    if value is None:
        return "none"
    if key.endswith("fingerprint") and isinstance(value, str):
        return value[:10]
    return json.dumps(value)


def check_settings(wanted: dict, found: dict, *, where: str, remedy: str) -> None:
    """Raise ``ValueError`` naming every setting where ``found`` differs from ``wanted``."""
    diff = [k for k in SETTINGS_KEYS if json.dumps(found.get(k)) != json.dumps(wanted.get(k))]
    if diff:
        parts = ", ".join(f"{k} ({_show(k, found.get(k))} in the file, {_show(k, wanted.get(k))} now)" for k in diff)
        raise ValueError(f"{where} was computed with different settings: {parts}. {remedy}")


def on_rank0(fn):
    """Run ``fn`` on rank 0 only and hand its result (or its exception) to every rank."""
    rank, world = rank_world()
    if world == 1:
        return fn()
    box = None
    if rank == 0:
        try:
            box = ("ok", fn())
        except Exception as err:  # re-raised on every rank below
            try:
                pickle.dumps(err)
                box = ("error", err)
            except Exception:
                box = ("error", RuntimeError(f"{type(err).__name__}: {err}"))
    box = broadcast_object(box)
    if box[0] == "error":
        raise box[1]
    return box[1]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:
    """Write through ``write(file)`` to a temporary name, fsync, then rename onto ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SurfaceStore:
    """The file ``path`` (HDF5) and its sidecar folder ``path + ".parts"`` of finished units.

    Parameters
    ----------
    path : str or Path
        Ends in ``.h5`` or ``.hdf5``.
    """

    def __init__(self, path):
        self.path = Path(path)
        if self.path.suffix.lower() not in _SUFFIXES:
            raise ValueError(f"`out` must end in {' or '.join(_SUFFIXES)}; got {self.path.name!r}.")
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.manifest_path = self.parts / "manifest.json"

    # ------------------------------------------------------------------ the final file

    def completed(self, settings: dict):
        """The finished surface if ``path`` holds one with these settings, else ``None``.

        Raises ``ValueError`` when ``path`` exists with other settings or is
        not a fastscape file.
        """
        if not self.path.exists():
            return None
        h5py = require("h5py", what="Writing or reading a surface file")


        try:
            with h5py.File(self.path, "r") as f:
                raw = f.attrs.get("fastscape_meta")
        except OSError as err:
            raise ValueError(f"`out` {str(self.path)!r} exists and is not a readable HDF5 file "
                             f"({err}); choose another path.") from err
        if raw is None:
            raise ValueError(f"`out` {str(self.path)!r} exists and is not a fastscape surface file; "
                             "choose another path.")
        found = json.loads(raw).get("settings", {})
        check_settings(settings, found, where=f"`out` {str(self.path)!r}",
                       remedy="Choose another `out` path, or delete the file to recompute.")
        if self.parts.exists():  # finished, but killed before the sidecar was removed
            shutil.rmtree(self.parts, ignore_errors=True)
        logger.info("%s is complete with these settings; nothing to compute", self.path)
        surface = load_surface(self.path)
        run = surface.meta.get("run")
        if run:  # nothing was computed this time
            surface.meta["run"] = {**run, "reused_units": run["units"]}
        return surface

    def finish(self, surface) -> Path:
        """Write ``surface`` onto ``path`` atomically, then remove the sidecar folder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        surface.save(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        shutil.rmtree(self.parts, ignore_errors=True)
        return self.path

    # ------------------------------------------------------------------ units

    def open(self, settings: dict, plan) -> tuple[dict, dict[int, np.ndarray]]:
        """The manifest (created with ``plan()`` when new) and the finished units.

        Returns
        -------
        manifest : dict
            ``settings`` plus the plan: ``chunk``, ``batch``, ``unit``, ``n_units``,
            ``width``, ``n_points``, ``memory_plan``.
        done : dict unit index -> ndarray of shape (points in unit, width)
        """
        if self.manifest_path.exists():
            try:
                manifest = json.loads(self.manifest_path.read_text())
            except (OSError, ValueError) as err:
                raise ValueError(f"{str(self.manifest_path)!r} is unreadable ({err}); delete "
                                 f"{str(self.parts)!r} to start over.") from err
            check_settings(settings, manifest.get("settings", {}), where=f"the partial run in {str(self.parts)!r}",
                           remedy=f"Choose another `out` path, or delete {str(self.parts)!r} to start over.")
            logger.info("resuming %s", self.parts)
        else:
            manifest = {"settings": settings, **plan()}
            self.parts.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.manifest_path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
            _fsync_dir(self.parts)
        # a unit in flight, or the final file being written, when a run was killed
        for stale in [*self.parts.glob(".*.tmp-*"), *self.path.parent.glob(f".{self.path.name}.tmp-*")]:
            stale.unlink(missing_ok=True)
        done = {}
        for f in self.parts.iterdir():
            m = _UNIT.match(f.name)
            if not m:
                continue
            u = int(m.group(1))
            want = (_unit_len(manifest, u), manifest["width"])
            try:
                arr = np.load(f, allow_pickle=False)
                if u >= manifest["n_units"] or arr.shape != want or arr.dtype != np.float64:
                    raise ValueError(f"shape {arr.shape}, expected {want}")
            except (OSError, ValueError) as err:
                logger.warning("ignoring damaged unit file %s (%s); it will be recomputed", f, err)
                f.unlink(missing_ok=True)
                continue
            done[u] = arr
        return manifest, done

    def write_unit(self, u: int, values: np.ndarray) -> None:
        """Persist unit ``u`` atomically."""
        arr = np.ascontiguousarray(values, dtype=np.float64)
        _atomic_write(self.parts / f"unit-{u:07d}.npy", lambda f: np.save(f, arr, allow_pickle=False))


def _unit_len(manifest: dict, u: int) -> int:
    start = u * manifest["unit"]
    return max(0, min(manifest["n_points"], start + manifest["unit"]) - start)


def _plan(model, batches, make_points, n_points, *, loss_fn, metrics, chunk_size, batch_size, strategy,
          buffers) -> dict:
    """Chunk, data batch and unit size of a run, fixed when it starts."""
    if chunk_size == "auto":
        # the planner needs one point on the real data; its value is discarded
        _, probe = evaluate(model, batches, make_points(0, 1), loss_fn=loss_fn, metrics=metrics,
                            chunk_size="auto", strategy=strategy, buffers=buffers)
        chunk = min(probe.memory_plan["chunk_limit"], n_points)
        batch = probe.memory_plan["batch"]
        memory_plan = {**probe.memory_plan, "chunk": chunk}
    else:
        chunk, batch, memory_plan = min(positive_int(chunk_size, "chunk_size"), n_points), batch_size, {}
    if strategy == "auto":
        # choose once, on one chunk, for the whole run: units computed in other runs or
        # on other ranks then use the same strategy, so a resumed or sharded result is
        # bit-identical to an uninterrupted one (strategies agree only to rounding)
        _, probe = evaluate(model, batches, make_points(0, min(chunk, n_points)), loss_fn=loss_fn,
                            metrics=metrics, chunk_size=chunk, strategy="auto", buffers=buffers,
                            expected_points=n_points)
        strategy = probe.strategy
    per_unit = max(1, math.ceil(math.ceil(n_points / chunk) / MAX_UNITS))
    unit = chunk * per_unit
    return {"chunk": int(chunk), "strategy": strategy,
            "batch": None if batch is None else int(batch), "unit": int(unit),
            "n_units": math.ceil(n_points / unit), "n_points": int(n_points),
            "width": 1 + len(metrics), "memory_plan": memory_plan}


def run_grid(model, batches, make_points, n_points: int, *, loss_fn, metrics: dict, chunk_size,
             batch_size, strategy: str, buffers, settings: dict, store: SurfaceStore | None,
             progress) -> tuple[dict[str, np.ndarray], EvalReport, dict]:
    """Evaluate a grid unit by unit, persisting units into ``store`` and sharing them over ranks.

    Parameters
    ----------
    make_points : callable ``(start, stop) -> AffinePoints``
        Points ``start:stop`` of the grid in C order.
    settings : dict
        What a file must match to be resumed (see :data:`SETTINGS_KEYS`).
    store : SurfaceStore or None
        ``None`` keeps units in memory (a distributed run without a file).
    progress : callable ``(n_done) -> None`` or None; see :func:`fastscape._landscape._progress`.

    Returns
    -------
    values : dict name -> ndarray of shape (n_points,)
    report : EvalReport
        Of this process's work in this run.
    run : dict
        ``units``, ``unit_points``, ``reused_units``, ``world_size``.
    """
    rank, world = rank_world()
    metrics = dict(metrics or {})

    def plan():
        return _plan(model, batches, make_points, n_points, loss_fn=loss_fn, metrics=metrics,
                     chunk_size=chunk_size, batch_size=batch_size, strategy=strategy, buffers=buffers)

    def start():
        if store is None:
            return plan(), {}
        return store.open(settings, plan)

    done: dict[int, np.ndarray] = {}

    def start_rank0():
        manifest, found = start()
        done.update(found)
        return manifest, sorted(found)

    manifest, done_ids = on_rank0(start_rank0)
    if chunk_size != "auto" and manifest["chunk"] != min(int(chunk_size), n_points):
        logger.info("resuming with the file's chunk size %d (asked %s)", manifest["chunk"], chunk_size)
    if manifest["batch"] is not None and max(batches.batch_sizes) > manifest["batch"]:
        batches = batches.resplit(manifest["batch"])
    todo = sorted(set(range(manifest["n_units"])) - set(done_ids))
    mine = todo[rank::world]
    if hasattr(progress, "start"):
        progress.start(total=sum(_unit_len(manifest, u) for u in mine))

    chunk = manifest["chunk"]
    strategy = manifest.get("strategy", strategy)
    report = EvalReport(strategy=strategy, chunk_size=chunk, batch_size=max(batches.batch_sizes),
                        n_points=0, n_samples=batches.n_samples, device=str(batches.device),
                        dtype=str(batches.dtype).replace("torch.", ""),
                        memory_plan=dict(manifest["memory_plan"]))
    new: dict[int, np.ndarray] = {}
    names = ["loss", *metrics]
    t0 = time.perf_counter()
    for u in mine:
        lo = u * manifest["unit"]
        hi = lo + _unit_len(manifest, u)
        values, rep = evaluate(model, batches, make_points(lo, hi), loss_fn=loss_fn, metrics=metrics,
                               chunk_size=chunk, strategy=strategy, buffers=buffers, progress=progress)
        arr = np.stack([values[k] for k in names], axis=1)
        if store is not None:
            store.write_unit(u, arr)
        new[u] = arr
        report.n_points += hi - lo
        report.strategy = rep.strategy
        report.fallback = report.fallback or rep.fallback
        report.oom_backoffs += rep.oom_backoffs
        report.notes.extend(n for n in rep.notes if n not in report.notes)
        if rep.chunk_size < chunk:  # an out-of-memory back-off: keep the smaller chunk
            chunk = report.chunk_size = rep.chunk_size
    report.seconds = time.perf_counter() - t0

    # every rank receives every unit; rank 0 also contributes the units found on disk
    shares = all_gather_object({**new, **done} if rank == 0 else new)
    table = np.empty((n_points, len(names)), dtype=np.float64)
    seen = 0
    for share in shares:
        for u, arr in share.items():
            lo = u * manifest["unit"]
            table[lo:lo + len(arr)] = arr
            seen += 1
    if seen < manifest["n_units"]:
        raise RuntimeError(f"only {seen} of {manifest['n_units']} units were computed; a rank failed.")
    run = {"units": manifest["n_units"], "unit_points": manifest["unit"], "reused_units": len(done_ids),
           "world_size": world}
    logger.info("rank %d evaluated %d of %d units (%d reused from disk)", rank, len(mine),
                manifest["n_units"], len(done_ids))
    return {k: table[:, j].copy() for j, k in enumerate(names)}, report, run
