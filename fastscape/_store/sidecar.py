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
:func:`fastscape._store.hasher.callable_fingerprint`) makes a file that is never reused: give the
callable a ``fastscape_fingerprint`` string attribute to vouch for it.

Under ``torch.distributed`` the units still to do are dealt round-robin over
the ranks (see :mod:`fastscape._units`); rank 0 holds the lock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np

from .._surface import load_surface
from .._paths import file_path
from .._surface_file import NotASurfaceFile, surface_image, write_file
from .fingerprint import check_settings, differing, manifest_digest, values_digest

__all__ = ["SurfaceStore", "unit_len"]

logger = logging.getLogger("fastscape")

_UNIT = re.compile(r"^unit-(\d+)\.npz$")
_SUFFIXES = (".h5", ".hdf5")


def fsync_dir(path: Path) -> None:
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


def atomic_write(path: Path, write) -> None:
    """Write through ``write(file)`` to a temporary name, fsync, then rename onto ``path``.

    An OSError (a full disk, a file-size limit) leaves no temporary behind and names ``path``.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise type(err)(err.errno, f"cannot write {str(path)!r}: {err.strerror or err}") from err



class SurfaceStore:
    """The file ``path`` (HDF5) and its sidecar folder ``path + ".parts"`` of finished units.

    Parameters
    ----------
    path : str or Path
        Ends in ``.h5`` or ``.hdf5``.
    """

    def __init__(self, path):
        self.path = file_path(path, "out")
        if self.path.suffix.lower() not in _SUFFIXES:
            raise ValueError(f"`out` must end in {' or '.join(_SUFFIXES)}; got {self.path.name!r}.")
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.manifest_path = self.parts / "manifest.json"
        self.lock_path = self.parts / "lock"
        self._lock_fd = None
        self.manifest: dict | None = None
        self.run_id: str | None = None

    # ------------------------------------------------------------------ the lock

    def acquire(self, settings: dict | None = None) -> None:
        """Take the sidecar's advisory lock for this run.

        Raises ``RuntimeError`` while another live process holds it; the message
        says whether a retry can succeed (the other run has this request's
        ``settings``) or will be refused too. Where the
        platform or file system has no ``flock``, a warning is logged and the
        run goes on unguarded.
        """
        try:
            import fcntl
        except ImportError:  # not POSIX
            logger.warning("no advisory file locks on this platform; %s is not guarded against a "
                           "second process", self.path)
            return
        self._make_parts()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            other = self._other_settings(settings)
            if other:
                raise RuntimeError(
                    f"another process{f' ({holder})' if holder else ''} is computing into {str(self.path)!r} now "
                    f"with other settings ({', '.join(other)}): a retry will be refused too, since the file will "
                    "hold that other request; choose another `out`.") from None
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

    def _other_settings(self, settings: dict | None) -> list[str]:
        """The settings in which the sidecar's manifest differs from ``settings`` ([] if unknown)."""
        if settings is None:
            return []
        try:
            manifest = json.loads(self.manifest_path.read_text())
            return differing(settings, manifest["settings"])
        except (OSError, ValueError, KeyError, TypeError):
            return []

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
        try:
            surface = load_surface(self.path)  # the whole-file digest, then every checksum
        except NotASurfaceFile:
            raise ValueError(f"`out` {str(self.path)!r} exists and is not a fastscape surface file; "
                             "choose another path.") from None
        except ValueError as err:
            raise ValueError(f"`out` exists and cannot be reused: {err}") from err
        check_settings(settings, surface.meta.get("settings", {}), where=f"`out` {str(self.path)!r}",
                       remedy="Choose another `out` path, or delete the file to recompute.", why=why)
        if self.parts.exists():  # finished, but killed before the sidecar was removed
            self._remove_sidecar(locked)
        logger.info("%s is complete with these settings; nothing to compute", self.path)
        run = surface.meta.get("run")
        if run:  # nothing was computed this time: the file is returned as it was
            surface.meta["run"] = {**run, "reused_units": run["units"], "reused_file": True}
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
        """Write ``surface`` onto ``path`` atomically, then remove the sidecar folder.

        The file is built in memory and written with plain writes: a full disk or a
        file-size limit is an OSError naming the file and the units kept for the next run.
        """
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            write_file(tmp, surface_image(surface), sync=True)
            os.replace(tmp, self.path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            kept = sum(1 for f in self.parts.iterdir() if _UNIT.match(f.name)) if self.parts.is_dir() else 0
            raise type(err)(err.errno, f"cannot write the finished surface {str(self.path)!r} "
                            f"({err.strerror or err}); its {kept} computed units are kept in {str(self.parts)!r}: "
                            "make room (or raise the file-size limit) and run the same call again to write it "
                            "without computing them again.") from err
        fsync_dir(self.path.parent)
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
        if values.dtype != np.float64 or header.get("sha256") != values_digest(values):
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

    def _make_parts(self) -> None:
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise type(err)(err.errno, f"cannot create the folder {str(self.parts)!r} that keeps the finished "
                            f"units of `out` {str(self.path)!r} ({err.strerror or err}); choose an `out` in a "
                            "folder you can write to.") from err

    def _kept(self, err: OSError) -> OSError:
        """``err`` (writing into the sidecar) saying which units are kept for the next run."""
        kept = sum(1 for f in self.parts.iterdir() if _UNIT.match(f.name)) if self.parts.is_dir() else 0
        return type(err)(err.errno, f"{err.strerror}; the {kept} units finished so far are kept in "
                         f"{str(self.parts)!r}: make room (or raise the file-size limit) and run the same call "
                         "again to resume.")

    def _write_manifest(self, manifest: dict) -> None:
        self._make_parts()
        try:
            atomic_write(self.manifest_path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        except OSError as err:
            raise self._kept(err) from err
        fsync_dir(self.parts)

    def recorded(self, settings: dict, *, why: dict | None = None) -> dict | None:
        """The manifest of the partial run in the sidecar, or None when there is none to follow.

        Stale temporaries of a killed run are removed. A manifest with other
        settings is refused (``ValueError``); a lost or unreadable one is rebuilt
        from the units that carry a copy matching ``settings``. ``why``: the
        request's loss or metrics that cannot be fingerprinted (see
        :func:`check_settings`): a partial run is then refused, never resumed.
        """
        self._make_parts()
        # a unit in flight, or the final file being written, when a run was killed
        for stale in [*self.parts.glob(".*.tmp-*"), *self.path.parent.glob(f".{self.path.name}.tmp-*")]:
            stale.unlink(missing_ok=True)
        where = f"the partial run in {str(self.parts)!r}"
        remedy = f"Choose another `out` path, or delete {str(self.parts)!r} to start over."
        self.refuse_partial(settings, why)
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
            return manifest
        manifest = self._adopt(settings)
        if manifest is not None:
            logger.warning("%s had no readable manifest; following the plan its units record", self.parts)
        return manifest

    def refuse_partial(self, settings: dict, why: dict | None) -> None:
        """A ValueError when a partial run exists and the request cannot be fingerprinted (``why``)."""
        if why and self.parts.is_dir() and (self.manifest_path.exists()
                                            or any(_UNIT.match(f.name) for f in self.parts.iterdir())):
            check_settings(settings, {}, where=f"the partial run in {str(self.parts)!r}",
                           remedy=f"Choose another `out` path, or delete {str(self.parts)!r} to start over.", why=why)

    def start(self, manifest: dict) -> dict[int, np.ndarray]:
        """Follow ``manifest`` (``settings`` plus the plan: ``chunk``, ``batch``, ``batching``,
        ``strategy``, ``fallback``, ``unit``, ``n_units``, ``width``, ``n_points``,
        ``memory_plan``), writing it when it is new; the finished units it vouches for.

        Returns
        -------
        done : dict unit index -> ndarray of shape (points in unit, width)
            Any other unit file (damaged, of another run) is deleted.
        """
        if not self._manifest_is(manifest):
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
                want = (unit_len(manifest, u), manifest["width"])
                if values.shape != want:
                    raise ValueError(f"shape {values.shape}, expected {want}")
            except ValueError as err:
                logger.warning("ignoring damaged unit file %s (%s); it will be recomputed", f, err)
                f.unlink(missing_ok=True)
                continue
            done[u] = values
        return done

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
        header = json.dumps({"unit": int(u), "run": self.run_id, "sha256": values_digest(arr),
                             "manifest": self.manifest}).encode()
        try:
            atomic_write(self.parts / f"unit-{u:07d}.npz",
                         lambda f: np.savez(f, values=arr, header=np.frombuffer(header, dtype=np.uint8)))
        except OSError as err:
            raise self._kept(err) from err



def unit_len(manifest: dict, u: int) -> int:
    start = u * manifest["unit"]
    return max(0, min(manifest["n_points"], start + manifest["unit"]) - start)

