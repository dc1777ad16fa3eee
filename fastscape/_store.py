"""Crash-safe, resumable surface files that know what they hold.

Why not write the HDF5 file as chunks finish? HDF5 is not crash-safe: a
process killed in the middle of a write can leave the whole file unreadable,
taking every finished chunk with it. So a run into ``out.h5`` keeps its
finished work in a sidecar folder ``out.h5.parts/``:

- ``lock``: an advisory lock (``fcntl.flock``) held by the process computing
  into ``out.h5`` for the whole run. Another process asking for the same file
  meanwhile is refused with a ``RuntimeError``; the lock dies with its process
  (``kill -9`` included), so a killed run never blocks the next one.
- ``manifest.json`` holds the request's settings (fingerprints of the model,
  origin and directions, of the data's content, of the loss and metric
  functions; the grid, dtype, sample count) and the plan fixed when the run
  started (chunk, data batch and the batch sizes it produced, strategy, unit
  size). Its SHA-256 names the run.
- each finished unit (a run of whole chunks of the grid, in C order) is one
  ``unit-NNNNNNN.npz`` file holding the values, the unit's index, the
  manifest it was computed under and a SHA-256 of the values; written to a
  temporary name, flushed to disk and renamed into place with ``os.replace``,
  which is atomic on POSIX: a unit file either exists complete or not at all.

Killing the process at any moment (SIGKILL included) loses at most the units in
flight. Running the same request again reads the manifest, refuses it if any
setting differs, and evaluates only the missing units, with the manifest's plan:
every unit is computed exactly as in an uninterrupted run, so the result is
identical bit for bit (same device and PyTorch build). A unit is reused only
when its checksum holds, its index is its name's and its manifest is this
run's; any other unit file is deleted and recomputed. A lost or unreadable
manifest is rebuilt from the units' own copies when they match the request;
when the data now comes in other batches than the plan recorded, no unit can
be reproduced and all are recomputed. When all units exist, the surface is
written to a temporary HDF5 file (with a checksum of every array and of the
metadata, see :meth:`fastscape.Surface.save`) that is renamed onto ``out.h5``
(again atomic) and the sidecar folder is removed. A complete ``out.h5`` whose
settings match and whose checksums hold is returned as is; one whose settings
differ, or whose checksums fail, is refused.

A loss or metric whose behaviour cannot be fingerprinted (see
:func:`callable_fingerprint`) makes a file that is never reused: give the
callable a ``fastscape_fingerprint`` string attribute to vouch for it.

Under ``torch.distributed`` the units still to do are dealt round-robin over
the ranks (see :mod:`fastscape._distributed`); rank 0 holds the lock.
"""

from __future__ import annotations

import dis
import enum
import functools
import hashlib
import json
import logging
import math
import os
import pickle
import re
import shutil
import socket
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch

from ._core.evaluator import EvalReport, FallbackWarning, evaluate, value_names
from ._core.params import positive_int
from ._distributed import all_gather_object, broadcast_object, rank_world
from ._optional import require
from ._surface import load_surface

__all__ = ["SurfaceStore", "GridRun", "on_rank0", "SETTINGS_KEYS", "grid_fingerprint", "data_fingerprint",
           "callable_fingerprint", "FORMAT"]

logger = logging.getLogger("fastscape")

FORMAT = 2
#: the settings a file must share with a request to be resumed or reused.
SETTINGS_KEYS = ("format", "model_fingerprint", "origin_fingerprint", "directions_fingerprint",
                 "grid_shape", "grid_fingerprint", "n_samples", "data_fingerprint", "loss", "loss_fingerprint",
                 "metrics", "metrics_fingerprint", "dtype")
#: at most this many unit files per surface; units hold whole chunks.
MAX_UNITS = 2048
#: with chunk_size="auto", a unit holds at least this many seconds of work as the plan's probe
#: measured it (and there are at least as many units as ranks). Every unit is one evaluate
#: call that derives its per-batch tables anew (the affine and mlp paths' first-layer outputs):
#: 19 units of 24 points made a 441-point MNIST-size MLP surface 1.8x slower into a file than
#: in memory (2 units: 1.0x). A kill loses at most the units in flight, a few seconds of work.
UNIT_SECONDS = 2.0
#: data up to this many bytes is hashed whole; larger data through a strided sample of its samples.
DATA_HASH_BYTES = 256 << 20
_UNIT = re.compile(r"^unit-(\d+)\.npz$")
_SUFFIXES = (".h5", ".hdf5")
#: how a user vouches for a callable fastscape cannot fingerprint.
VOUCH_ATTR = "fastscape_fingerprint"


def grid_fingerprint(axes) -> str:
    """SHA-1 over the exact float64 coordinates of every axis."""
    h = hashlib.sha1()
    for a in axes:
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- fingerprints


def data_fingerprint(batches) -> str:
    """SHA-256 of the data's content, independent of how it is cut into batches.

    Every input tensor and the targets are hashed as one stream each: the
    per-sample shape and dtype (floating data as float64, so that the evaluation
    dtype, a setting of its own, does not count twice), the sample count, and the
    bytes of every sample
    (data of at most :data:`DATA_HASH_BYTES`), or of every ``stride``-th sample
    (larger data: about :data:`DATA_HASH_BYTES` of them, the stride counted over
    the whole data so that the batching does not matter).
    """
    if getattr(batches, "names", None) is not None:  # several datasets: one fingerprint each, by name
        top = hashlib.sha256(b"datasets")
        for name, part in batches.parts.items():
            top.update(f"{name}={data_fingerprint(part)};".encode())
        return top.hexdigest()
    pairs = list(batches.tensors())
    n = batches.n_samples

    def parts(x, y):
        return [*(x if isinstance(x, (tuple, list)) else (x,)), y]

    total = sum(t.numel() * t.element_size() for x, y in pairs for t in parts(x, y))
    stride = max(1, math.ceil(total / DATA_HASH_BYTES))
    streams = None
    start = 0
    for x, y in pairs:
        ts = parts(x, y)
        if streams is None:
            streams = [hashlib.sha256() for _ in ts]
            for h, t in zip(streams, ts):
                kind = "float" if t.is_floating_point() else str(t.dtype)
                h.update(f"{tuple(t.shape[1:])} {kind} {n}/{stride}".encode())
        if len(ts) != len(streams):
            raise ValueError("`data` batches must all hold the same number of input tensors.")
        m = ts[-1].shape[0]
        first = (-start) % stride  # the first sample of this batch on the global stride
        for h, t in zip(streams, ts):
            rows = t[first::stride] if stride > 1 else t
            if rows.is_floating_point():  # float32 data cast to float64 is exact: the dtype is a separate setting
                rows = rows.double()
            if rows.numel():
                h.update(rows.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
        start += m
    top = hashlib.sha256(f"samples {n}".encode())
    for h in streams or ():
        top.update(h.digest())
    return top.hexdigest()


class _Unhashable(Exception):
    """What made a callable impossible to fingerprint."""


#: modules whose functions and classes are named, not hashed: what they compute is fixed by
#: the library's version (recorded in a surface's meta as ``torch_version``).
_LIBRARIES = frozenset({"torch", "numpy", "math", "builtins", "operator", "_operator", "functools", "fastscape",
                        "typing", "collections", "abc", "_abc", "einops"})


def _library(module) -> bool:
    return isinstance(module, str) and module.split(".")[0] in _LIBRARIES


def _global_loads(co: types.CodeType) -> set[str]:
    names = {i.argval for i in dis.get_instructions(co) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            names |= _global_loads(c)
    return names


class _Hasher:
    """A SHA-256 of a value's behaviour-relevant content, stable across processes."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.seen: dict[int, int] = {}

    def tag(self, text: str) -> None:
        self.h.update(text.encode() + b"\0")

    def once(self, obj) -> bool:
        """False (and a back-reference) when ``obj`` was hashed already: cycles end here."""
        if id(obj) in self.seen:
            self.tag(f"seen {self.seen[id(obj)]}")
            return False
        self.seen[id(obj)] = len(self.seen)
        return True

    def value(self, v, where: str, depth: int = 0) -> None:
        if depth > 40:
            raise _Unhashable(f"{where} nests too deeply")
        if v is None or v is Ellipsis or isinstance(v, (bool, int, str, bytes, complex)):
            self.tag(f"{type(v).__name__} {v!r}")
        elif isinstance(v, float):
            self.tag(f"float {v.hex()}")
        elif isinstance(v, (tuple, list)):
            self.tag(f"{type(v).__name__} {len(v)}")
            for i, x in enumerate(v):
                self.value(x, f"{where}[{i}]", depth + 1)
        elif isinstance(v, (set, frozenset)):
            # iteration order follows the hash seed: sort the members' own digests
            self.tag(f"set {sorted(_digest(x, where, depth + 1) for x in v)}")
        elif isinstance(v, dict):
            items = sorted((_digest(k, where, depth + 1), k, x) for k, x in v.items()) if v else []
            self.tag(f"dict {len(v)}")
            for _, k, x in items:
                self.value(k, f"{where} (a key)", depth + 1)
                self.value(x, f"{where}[{k!r}]", depth + 1)
        elif isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            self.tag(f"tensor {tuple(t.shape)} {t.dtype}")
            if t.numel():
                self.h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(v, np.ndarray) and v.dtype != object:
            a = np.ascontiguousarray(v)
            self.tag(f"ndarray {a.shape} {a.dtype.str}")
            self.h.update(a.tobytes())
        elif isinstance(v, np.generic):
            self.value(v.item(), where, depth + 1)
        elif isinstance(v, (torch.dtype, torch.device, torch.Size, torch.layout, torch.memory_format)):
            self.tag(f"{type(v).__name__} {v}")
        elif isinstance(v, enum.Enum):
            self.tag(f"enum {type(v).__module__}.{type(v).__qualname__}.{v.name}")
        elif isinstance(v, types.ModuleType):
            self.tag(f"module {v.__name__}")
        elif isinstance(v, type):
            self.cls(v, where, depth)
        elif isinstance(v, types.CodeType):
            self.code(v, where, depth)
        elif callable(v):
            self.callable(v, where, depth)
        else:
            raise _Unhashable(f"{where} is a {type(v).__module__}.{type(v).__qualname__}")

    def code(self, co: types.CodeType, where: str, depth: int) -> None:
        self.tag(f"code {co.co_argcount} {co.co_kwonlyargcount} {co.co_flags}")
        self.h.update(co.co_code)
        self.tag(" ".join(co.co_names) + "|" + " ".join(co.co_varnames) + "|" + " ".join(co.co_freevars))
        self.tag(f"consts {len(co.co_consts)}")
        for c in co.co_consts:
            self.value(c, f"{where} (a constant)", depth + 1)

    def function(self, fn: types.FunctionType, where: str, depth: int) -> None:
        if not self.once(fn):
            return
        self.code(fn.__code__, where, depth)
        self.value(fn.__defaults__, f"{where} (its defaults)", depth + 1)
        self.value(fn.__kwdefaults__, f"{where} (its keyword defaults)", depth + 1)
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                content = cell.cell_contents
            except ValueError:  # not yet assigned
                self.tag(f"cell {name} empty")
                continue
            self.tag(f"cell {name}")
            self.value(content, f"{where} (the variable {name!r} it closes over)", depth + 1)
        glb = fn.__globals__
        for name in sorted(_global_loads(fn.__code__)):
            if name in glb:  # a builtin otherwise
                self.tag(f"global {name}")
                self.value(glb[name], f"{where} (the global {name!r} it reads)", depth + 1)

    def cls(self, cls: type, where: str, depth: int) -> None:
        self.tag(f"class {cls.__module__}.{cls.__qualname__}")
        if _library(cls.__module__) or not self.once(cls):
            return
        for klass in cls.__mro__:  # the user's classes: every method they define
            if _library(klass.__module__) or klass is object:
                continue
            for attr in sorted(vars(klass)):
                member = vars(klass)[attr]
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                if isinstance(member, types.FunctionType):
                    self.tag(f"method {klass.__qualname__}.{attr}")
                    self.function(member, f"{where}.{attr}", depth + 1)

    def callable(self, fn, where: str, depth: int) -> None:
        if isinstance(fn, functools.partial):
            self.tag("partial")
            self.value(fn.func, f"{where}.func", depth + 1)
            self.value(fn.args, f"{where} (its positional arguments)", depth + 1)
            self.value(fn.keywords, f"{where} (its keyword arguments)", depth + 1)
        elif isinstance(fn, types.MethodType):
            self.tag("method")
            self.value(fn.__func__, where, depth + 1)
            self.value(fn.__self__, f"{where} (its object)", depth + 1)
        elif isinstance(fn, types.FunctionType):
            if _library(fn.__module__):
                self.tag(f"named {fn.__module__}.{fn.__qualname__}")
            else:
                self.function(fn, where, depth)
        elif isinstance(fn, (types.BuiltinFunctionType, types.BuiltinMethodType)) or (
                hasattr(fn, "__qualname__") and _library(getattr(fn, "__module__", None))):
            self.tag(f"named {getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', type(fn).__name__)}")
        else:  # a callable object: its class's code and its state
            self.cls(type(fn), where, depth)
            if not self.once(fn):
                return
            if isinstance(fn, torch.nn.Module):
                for k, t in fn.state_dict().items():
                    self.tag(f"state {k}")
                    self.value(t, f"{where}.{k}", depth + 1)
                state = {k: v for k, v in vars(fn).items() if not k.startswith("_") and k != "training"}
            elif hasattr(fn, "__dict__"):
                state = dict(vars(fn))
            else:
                slots = [n for c in type(fn).__mro__ for n in getattr(c, "__slots__", ())]
                if not slots:
                    raise _Unhashable(f"{where} is a {type(fn).__qualname__} whose state cannot be read")
                state = {n: getattr(fn, n) for n in slots if hasattr(fn, n)}
            state.pop(VOUCH_ATTR, None)
            self.tag(f"attributes {len(state)}")
            for k in sorted(state, key=str):
                self.tag(f"attribute {k}")
                self.value(state[k], f"{where}.{k}", depth + 1)


def _digest(v, where: str, depth: int = 0) -> str:
    h = _Hasher()
    h.value(v, where, depth)
    return h.h.hexdigest()


def callable_fingerprint(fn, *, name: str) -> tuple[str | None, str | None]:
    """``(fingerprint, why_not)`` of what a loss or metric computes.

    A function is hashed through its code (bytecode, constants, names), its
    defaults, the values it closes over and the globals it reads; a
    ``functools.partial`` through its function and arguments; a callable
    object through its class's methods and its attributes (an ``nn.Module``
    loss through its state too). Functions of torch, numpy and fastscape are
    named, not hashed. The result does not depend on the process (hash seeds,
    addresses), so a run resumes across processes.

    When something it depends on cannot be hashed (an open file, a lock, an
    object without readable state), the fingerprint is ``None`` and
    ``why_not`` says what. A callable with a non-empty string attribute
    ``fastscape_fingerprint`` is vouched for by its owner: that string is the
    fingerprint.
    """
    vouched = getattr(fn, VOUCH_ATTR, None)
    if isinstance(vouched, str) and vouched:
        return "vouched:" + vouched, None
    try:
        return _digest(fn, f"`{name}`"), None
    except (_Unhashable, RecursionError) as err:
        return None, str(err) if isinstance(err, _Unhashable) else f"`{name}` nests too deeply"


def unfingerprintable_message(name: str, why: str, where: str | None = None) -> str:
    """How to vouch for a callable fastscape cannot fingerprint."""
    head = (f"`{name}` cannot be fingerprinted ({why}), so fastscape cannot tell whether "
            + (f"{where} was computed with the same function; it is not reused. " if where else
               "a later run uses the same function: this run's file will not be resumed or reused. "))
    return (head + f"Delete the file (and its .parts folder) to recompute, or vouch for the callable: give it "
            f"an attribute `{VOUCH_ATTR}`, a string you change whenever what it computes changes.")


def _show(key: str, value) -> str:
    if value is None:
        return "none"
    if key.endswith("fingerprint") and isinstance(value, str):
        return value[:10]
    if key == "metrics_fingerprint" and isinstance(value, dict):
        return json.dumps({k: v[:10] if isinstance(v, str) else v for k, v in value.items()})
    return json.dumps(value)


def check_settings(wanted: dict, found: dict, *, where: str, remedy: str, why: dict | None = None) -> None:
    """Raise ``ValueError`` naming every setting where ``found`` differs from ``wanted``.

    A loss or metric that cannot be fingerprinted (``None`` in ``wanted``) is
    never taken as equal: ``why`` maps its argument name (``"loss_fn"``,
    ``"metrics['acc']"``) to the reason, which the message gives.
    """
    for arg, reason in (why or {}).items():
        raise ValueError(unfingerprintable_message(arg, reason, where))
    diff = [k for k in SETTINGS_KEYS if json.dumps(found.get(k), sort_keys=True) != json.dumps(wanted.get(k), sort_keys=True)]
    if diff:
        parts = ", ".join(f"{k} ({_show(k, found.get(k))} in the file, {_show(k, wanted.get(k))} now)" for k in diff)
        raise ValueError(f"{where} was computed with different settings: {parts}. {remedy}")


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of a manifest (its settings and plan): the name of a run's units."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def _values_digest(arr: np.ndarray) -> str:
    a = np.ascontiguousarray(arr, dtype=np.float64)
    return hashlib.sha256(f"{a.shape}".encode() + a.tobytes()).hexdigest()


# --------------------------------------------------------------------------- ranks and files


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
        self.lock_path = self.parts / "lock"
        self._lock_fd = None
        self.manifest: dict | None = None
        self.run_id: str | None = None

    # ------------------------------------------------------------------ the lock

    def acquire(self) -> None:
        """Take the sidecar's advisory lock for this run.

        Raises ``RuntimeError`` while another live process holds it. Where the
        platform or file system has no ``flock``, a warning is logged and the
        run goes on unguarded.
        """
        try:
            import fcntl
        except ImportError:  # not POSIX
            logger.warning("no advisory file locks on this platform; %s is not guarded against a "
                           "second process", self.path)
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            raise RuntimeError(
                f"another process{f' ({holder})' if holder else ''} is computing into {str(self.path)!r} "
                f"now (it holds the lock {str(self.lock_path)!r}); run this again when it has finished "
                "(the finished file is then returned at once), or choose another `out`.") from None
        except OSError as err:  # a file system without flock (some network mounts)
            os.close(fd)
            logger.warning("cannot lock %s (%s); %s is not guarded against a second process",
                           self.lock_path, err, self.path)
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._lock_fd = fd

    def release(self) -> None:
        """Give the lock back (closing the descriptor releases the ``flock``)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ the final file

    def completed(self, settings: dict, *, why: dict | None = None, locked: bool = False):
        """The finished surface if ``path`` holds one with these settings, else ``None``.

        Raises ``ValueError`` when ``path`` exists with other settings, fails
        its checksums, is not a fastscape file, or the request's loss or a
        metric cannot be fingerprinted (``why``). ``locked``: this process
        holds the lock, so a leftover sidecar of the finished run may go.
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
        try:
            found = json.loads(raw).get("settings", {})
        except ValueError as err:
            raise ValueError(f"`out` {str(self.path)!r} has damaged metadata ({err}); delete it to "
                             "recompute.") from err
        check_settings(settings, found, where=f"`out` {str(self.path)!r}",
                       remedy="Choose another `out` path, or delete the file to recompute.", why=why)
        surface = load_surface(self.path)  # verifies the checksums
        if self.parts.exists():  # finished, but killed before the sidecar was removed
            self._remove_sidecar(locked)
        logger.info("%s is complete with these settings; nothing to compute", self.path)
        run = surface.meta.get("run")
        if run:  # nothing was computed this time
            surface.meta["run"] = {**run, "reused_units": run["units"]}
        return surface

    def _remove_sidecar(self, locked: bool) -> None:
        """Remove the sidecar of a finished run, unless another live process holds its lock."""
        if not locked:
            try:
                self.acquire()
            except (RuntimeError, OSError):
                return  # busy, or a read-only folder: leave it
        try:
            shutil.rmtree(self.parts, ignore_errors=True)
        finally:
            if not locked:
                self.release()

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

    def _read_unit(self, f: Path, u: int):
        """``(values, header)`` of a unit file; ValueError saying what is wrong with it."""
        try:
            with open(f, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                values = z["values"]
                header = json.loads(z["header"].tobytes().decode())
        except Exception as err:  # zip, npy and json errors alike: the file is damaged
            raise ValueError(f"unreadable: {type(err).__name__}: {err}") from None
        if header.get("unit") != u:
            raise ValueError(f"it holds unit {header.get('unit')}, not unit {u}")
        if values.dtype != np.float64 or header.get("sha256") != _values_digest(values):
            raise ValueError("its checksum does not match its values")
        return values, header

    def _adopt(self, settings: dict):
        """The manifest most units carry, among those whose settings match the request."""
        counts: dict[str, list] = {}
        for f in self.parts.iterdir():
            m = _UNIT.match(f.name)
            if not m:
                continue
            try:
                _, header = self._read_unit(f, int(m.group(1)))
                manifest = header["manifest"]
                check_settings(settings, manifest.get("settings", {}), where="", remedy="")
            except (ValueError, KeyError, AttributeError):
                continue
            entry = counts.setdefault(manifest_digest(manifest), [manifest, 0])
            entry[1] += 1
        if not counts:
            return None
        return max(counts.values(), key=lambda e: e[1])[0]

    def _write_manifest(self, manifest: dict) -> None:
        self.parts.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.manifest_path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        _fsync_dir(self.parts)

    def open(self, settings: dict, plan, reproducible=None, *, why: dict | None = None
             ) -> tuple[dict, dict[int, np.ndarray]]:
        """The manifest (created with ``plan()`` when new) and the finished units it vouches for.

        Parameters
        ----------
        settings : dict
            The request's; a manifest with other settings is refused.
        plan : callable ``() -> dict``
            A new plan, when there is no manifest to follow.
        reproducible : callable ``(manifest) -> str | None``, optional
            Why the manifest's plan cannot be reproduced now (None: it can); then
            every unit is recomputed under a new plan.
        why : dict, optional
            The request's loss or metrics that cannot be fingerprinted (see
            :func:`check_settings`): a partial run is then refused, never resumed.

        Returns
        -------
        manifest : dict
            ``settings`` plus the plan: ``chunk``, ``batch``, ``batching``,
            ``strategy``, ``fallback``, ``unit``, ``n_units``, ``width``,
            ``n_points``, ``memory_plan``.
        done : dict unit index -> ndarray of shape (points in unit, width)
        """
        self.parts.mkdir(parents=True, exist_ok=True)
        # a unit in flight, or the final file being written, when a run was killed
        for stale in [*self.parts.glob(".*.tmp-*"), *self.path.parent.glob(f".{self.path.name}.tmp-*")]:
            stale.unlink(missing_ok=True)
        where = f"the partial run in {str(self.parts)!r}"
        remedy = f"Choose another `out` path, or delete {str(self.parts)!r} to start over."
        if why and (self.manifest_path.exists() or any(_UNIT.match(f.name) for f in self.parts.iterdir())):
            check_settings(settings, {}, where=where, remedy=remedy, why=why)
        manifest = None
        if self.manifest_path.exists():
            try:
                manifest = json.loads(self.manifest_path.read_text())
                if not isinstance(manifest, dict) or not isinstance(manifest.get("settings"), dict):
                    raise ValueError("not a manifest")
            except (OSError, ValueError) as err:
                logger.warning("ignoring the unreadable manifest %s (%s)", self.manifest_path, err)
                manifest = None
        if manifest is not None:
            check_settings(settings, manifest["settings"], where=where, remedy=remedy)
            logger.info("resuming %s", self.parts)
        else:
            manifest = self._adopt(settings)
            if manifest is not None:
                logger.warning("%s had no readable manifest; following the plan its units record", self.parts)
        fresh = manifest is None
        if not fresh and reproducible is not None:
            why_not = reproducible(manifest)
            if why_not:
                logger.warning("the units in %s cannot be reproduced (%s); recomputing them all", self.parts, why_not)
                fresh = True
        if fresh:
            manifest = {"settings": settings, **plan()}
        if fresh or not self._manifest_is(manifest):
            self._write_manifest(manifest)
        self.use(manifest)
        done = {}
        for f in sorted(self.parts.iterdir()):
            m = _UNIT.match(f.name)
            if not m:
                continue
            u = int(m.group(1))
            try:
                if u >= manifest["n_units"]:
                    raise ValueError(f"the run has {manifest['n_units']} units")
                values, header = self._read_unit(f, u)
                if header.get("run") != self.run_id:
                    raise ValueError("it was computed by another run (other settings or plan)")
                want = (_unit_len(manifest, u), manifest["width"])
                if values.shape != want:
                    raise ValueError(f"shape {values.shape}, expected {want}")
            except ValueError as err:
                logger.warning("ignoring damaged unit file %s (%s); it will be recomputed", f, err)
                f.unlink(missing_ok=True)
                continue
            done[u] = values
        return manifest, done

    def _manifest_is(self, manifest: dict) -> bool:
        try:
            return json.loads(self.manifest_path.read_text()) == manifest
        except (OSError, ValueError):
            return False

    def use(self, manifest: dict) -> None:
        """Write units under ``manifest`` (every rank calls this with rank 0's manifest)."""
        self.manifest = manifest
        self.run_id = manifest_digest(manifest)

    def write_unit(self, u: int, values: np.ndarray) -> None:
        """Persist unit ``u`` atomically, with its index, its run's manifest and a checksum."""
        arr = np.ascontiguousarray(values, dtype=np.float64)
        header = json.dumps({"unit": int(u), "run": self.run_id, "sha256": _values_digest(arr),
                             "manifest": self.manifest}).encode()
        _atomic_write(self.parts / f"unit-{u:07d}.npz",
                      lambda f: np.savez(f, values=arr, header=np.frombuffer(header, dtype=np.uint8)))


def _unit_len(manifest: dict, u: int) -> int:
    start = u * manifest["unit"]
    return max(0, min(manifest["n_points"], start + manifest["unit"]) - start)


def _quiet_fallback(call):
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


def _batching(batches) -> str:
    """The batch sizes a plan cut the data into, compactly: ``"12 batches, sha1 ..."``."""
    sizes = list(batches.batch_sizes)
    return f"{len(sizes)} batches, sha1 {hashlib.sha1(json.dumps(sizes).encode()).hexdigest()[:16]}"


def _batches_for(given, batch):
    """The data as the plan cuts it: ``given`` with batches larger than ``batch`` split."""
    if batch is not None and max(given.batch_sizes) > batch:
        return given.resplit(batch)
    return given


def _plan(model, given, make_points, n_points, *, loss_fn, metrics, chunk_size, batch_size, strategy,
          buffers) -> dict:
    """Chunk, data batch, strategy and unit size of a run, fixed when it starts.

    With ``chunk_size="auto"`` the strategy, chunk and data batches are planned as
    :func:`evaluate` plans them for the whole grid in memory (the probes are told
    the job's size), and a unit holds :data:`UNIT_SECONDS` of work; an explicit
    chunk is also the unit. The probes may fall back to the per-point loop; their
    FallbackWarning is given once, here, and the plan records ``fallback``.
    """
    batches = _batches_for(given, None if batch_size is None else positive_int(batch_size, "batch_size"))
    fallback = None
    if chunk_size == "auto":
        # the memory plan needs one point on the real data (its value is discarded); a named
        # strategy's chunk grows to what it runs best at over the whole job (expected_points)
        (_, probe), fallback = _quiet_fallback(lambda: evaluate(
            model, batches, make_points(0, 1), loss_fn=loss_fn, metrics=metrics, chunk_size="auto",
            strategy=strategy, buffers=buffers, expected_points=None if strategy == "auto" else n_points))
        eager = min(probe.memory_plan["chunk_limit"], n_points)
        chunk, batch = min(max(eager, probe.chunk_size), n_points), probe.batch_size
        memory_plan, per_point = probe.memory_plan, probe.seconds / max(1, probe.n_points)
        if strategy != "auto" and n_points > chunk:
            # a named strategy's warm time per point, for the unit size: two chunks, the second
            # timed (the one-point probe above mostly measured building the per-batch tables)
            (_, timed), _ = _quiet_fallback(lambda: evaluate(
                model, _batches_for(given, batch), make_points(0, min(n_points, 2 * chunk)), loss_fn=loss_fn,
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
        (_, probe), seen = _quiet_fallback(lambda: evaluate(
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
            "batch": batch, "batching": _batching(_batches_for(given, batch)), "unit": int(unit),
            "n_units": math.ceil(n_points / unit), "n_points": int(n_points),
            "width": len(value_names(batches, metrics)), "memory_plan": memory_plan}


class GridRun:
    """The bookkeeping of a grid evaluated unit by unit, into ``store`` and over the ranks.

    It never evaluates a unit itself (only :func:`_plan`'s probes, when it
    starts a new plan); the caller evaluates each pending unit and hands the
    values back::

        grid = GridRun(...)
        for u, lo, hi in grid.pending():
            values, rep = evaluate(model, grid.batches, points[lo:hi], chunk_size=grid.chunk,
                                   strategy=grid.strategy, ...)
            grid.keep(u, values, rep)
        values, report, run = grid.gather()

    Starting it fixes the plan (rank 0 resumes it from ``store``, or makes a new
    one), shares it with every rank and deals the units still to do over them.

    Parameters
    ----------
    given : Batches
        The data as given (not yet cut to ``batch_size``): the plan cuts it, and a
        resumed run cuts it again exactly as the plan recorded.
    make_points : callable ``(start, stop) -> AffinePoints``
        Points ``start:stop`` of the grid in C order (for the plan's probes).
    settings : dict
        What a file must match to be resumed (see :data:`SETTINGS_KEYS`).
    store : SurfaceStore or None
        ``None`` keeps units in memory (a distributed run without a file).
    progress : callable ``(n_done) -> None`` or None; see :func:`fastscape._landscape._progress`.
        Its ``start(total)``, when it has one, is told this rank's points.
    why : dict, optional
        The loss or metrics that cannot be fingerprinted: a partial run is refused.

    Attributes
    ----------
    batches : Batches
        The data as the plan cuts it.
    chunk : int
        The chunk to evaluate the next unit with (smaller after an out-of-memory back-off).
    strategy : str
        The plan's strategy.
    """

    def __init__(self, model, given, make_points, n_points: int, *, loss_fn, metrics: dict, chunk_size,
                 batch_size, strategy: str, buffers, settings: dict, store: SurfaceStore | None,
                 progress, why: dict | None = None):
        self.rank, self.world = rank_world()
        self.n_points = n_points
        self.store = store
        metrics = dict(metrics or {})

        def plan():
            return _plan(model, given, make_points, n_points, loss_fn=loss_fn, metrics=metrics,
                         chunk_size=chunk_size, batch_size=batch_size, strategy=strategy, buffers=buffers)

        def reproducible(manifest):
            if "batching" not in manifest or "batch" not in manifest:
                return "the manifest records no data batching"
            now = _batching(_batches_for(given, manifest["batch"]))
            if now != manifest["batching"]:
                return f"the data now comes in other batches ({now}) than the plan recorded ({manifest['batching']})"
            return None

        #: units found finished on disk (rank 0 only) and units this rank computed
        self.done: dict[int, np.ndarray] = {}
        self.new: dict[int, np.ndarray] = {}

        def start_rank0():
            if store is None:
                return plan(), []
            manifest, found = store.open(settings, plan, reproducible, why=why)
            self.done.update(found)
            return manifest, sorted(found)

        manifest, self.done_ids = on_rank0(start_rank0)
        self.manifest = manifest
        if store is not None:
            store.use(manifest)
            for arg, reason in (why or {}).items():
                if self.rank == 0:  # a new run (a partial one was refused): say now that it cannot be reused
                    warnings.warn(unfingerprintable_message(arg, reason), UserWarning, stacklevel=3)
        if chunk_size != "auto" and manifest["chunk"] != min(int(chunk_size), n_points):
            logger.info("resuming with the file's chunk size %d (asked %s)", manifest["chunk"], chunk_size)
        self.batches = _batches_for(given, manifest["batch"])
        todo = sorted(set(range(manifest["n_units"])) - set(self.done_ids))
        self.mine = todo[self.rank::self.world]
        if hasattr(progress, "start"):
            progress.start(total=sum(_unit_len(manifest, u) for u in self.mine))

        self.chunk = manifest["chunk"]
        self.strategy = manifest.get("strategy", strategy)
        batches = self.batches
        self.report = EvalReport(strategy=self.strategy, chunk_size=self.chunk,
                                 batch_size=max(batches.batch_sizes), n_points=0, n_samples=batches.n_samples,
                                 device=str(batches.device), dtype=str(batches.dtype).replace("torch.", ""),
                                 memory_plan=dict(manifest["memory_plan"]),
                                 fallback=bool(manifest.get("fallback")))
        self.names = value_names(batches, metrics)
        self.t0 = time.perf_counter()

    def pending(self):
        """This rank's units still to do: ``(u, lo, hi)``, unit ``u`` holding points ``lo:hi``."""
        for u in self.mine:
            lo = u * self.manifest["unit"]
            yield u, lo, lo + _unit_len(self.manifest, u)

    def keep(self, u: int, values: dict[str, np.ndarray], rep: EvalReport) -> None:
        """Keep unit ``u``'s values (written to the store when there is one) and its report."""
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

    def gather(self) -> tuple[dict[str, np.ndarray], EvalReport, dict]:
        """Every unit, from every rank (a collective call).

        Returns
        -------
        values : dict name -> ndarray of shape (n_points,)
        report : EvalReport
            Of this process's work in this run.
        run : dict
            ``units``, ``unit_points``, ``reused_units``, ``world_size``.
        """
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
