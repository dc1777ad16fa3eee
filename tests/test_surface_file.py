"""The surface file survives damage: every byte of a finished file flipped, truncations, a
damaged header, a full disk (a file-size limit) at every phase of a run.

A file starts with a 512-byte HDF5 user block that HDF5 ignores, holding
``fastscape surface sha256=<hex>`` and zeros; the digest is the SHA-256 of every byte after
the block. The tests compute that digest themselves (hashlib) and read the HDF5 part with
h5py, the Li et al. tools' reader.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import fastscape
from tests.integrity_case import kwargs, make_case

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 512


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _finished(tmp_path) -> Path:
    model, data, dirs = make_case()
    out = tmp_path / "s.h5"
    fastscape.loss_surface(model, data, dirs, out=out, **kwargs())
    return out


def test_the_file_carries_a_digest_of_its_bytes_and_stays_plain_hdf5(tmp_path):
    out = _finished(tmp_path)
    raw = out.read_bytes()
    head = raw[:BLOCK].rstrip(b"\0")
    assert head == b"fastscape surface sha256=" + hashlib.sha256(raw[BLOCK:]).hexdigest().encode() + b"\n"
    with h5py.File(out, "r") as f:  # the Li et al. tools open it as it is
        assert f["train_loss"].shape == (5, 5)
        assert "fastscape_checksums" in f.attrs


# the scan: one process flips each byte in turn and loads the file, printing "i" before each load
# and "i outcome" after it; a crash (a segfault in HDF5) is the "i" left without an outcome
_SCAN = r"""
import sys
from pathlib import Path
import numpy as np
import fastscape
src, work, lo, hi = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
raw = src.read_bytes()
good = fastscape.load_surface(src)
for i in range(lo, hi):
    b = bytearray(raw)
    b[i] ^= 0xFF
    work.write_bytes(bytes(b))
    print(i, flush=True)
    try:
        s = fastscape.load_surface(work)
    except ValueError as err:
        text = str(err)
        clear = str(work) in text and "damaged" in text
        print(i, "refused" if clear else "unclear " + text.splitlines()[0][:150], flush=True)
        continue
    except Exception as err:
        print(i, f"unclear {type(err).__name__}: {str(err)[:150]}", flush=True)
        continue
    same = np.array_equal(s.loss, good.loss) and all(np.array_equal(s.metrics[k], v) for k, v in good.metrics.items())
    print(i, "same" if same else "wrong", flush=True)
"""


def flip_scan(src: Path, work: Path) -> dict[str, list]:
    """Byte index -> outcome of flipping it ("refused", "same", "wrong", "unclear ...", "crashed")."""
    n, lo, outcome = src.stat().st_size, 0, {}
    while lo < n:  # a process that dies is restarted after the byte it died on
        proc = subprocess.run([sys.executable, "-c", _SCAN, str(src), str(work), str(lo), str(n)], cwd=ROOT,
                              env=_env(), capture_output=True, text=True, timeout=600)
        last = lo - 1
        for line in proc.stdout.splitlines():
            i, _, what = line.partition(" ")
            last = int(i)
            if what:
                outcome[last] = what
        if proc.returncode != 0 and last >= lo and last not in outcome:
            outcome[last] = f"crashed (exit {proc.returncode})"
        elif proc.returncode != 0:
            raise AssertionError(proc.stderr[-2000:])
        lo = last + 1
    kinds: dict[str, list] = {}
    for i, what in sorted(outcome.items()):
        kinds.setdefault(what.split(" ")[0], []).append(i)
    return kinds


def test_every_flipped_byte_of_a_finished_file_is_refused_naming_it(tmp_path):
    out = _finished(tmp_path)
    n = out.stat().st_size
    kinds = flip_scan(out, tmp_path / "flipped.h5")
    print(f"{n} bytes flipped: " + ", ".join(f"{len(v)} {k}" for k, v in kinds.items()))
    assert set(kinds) == {"refused"}, {k: v[:10] for k, v in kinds.items()}
    assert len(kinds["refused"]) == n  # the digest covers every byte, its own header included


@pytest.mark.parametrize("keep", [0, 100, 511, 512, 600, -1])
def test_a_truncated_file_is_refused_naming_it(tmp_path, keep):
    out = _finished(tmp_path)
    raw = out.read_bytes()
    out.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
    with pytest.raises(ValueError, match=rf"{re.escape(str(out))}.*damaged"):
        fastscape.load_surface(out)
    model, data, dirs = make_case()
    with pytest.raises(ValueError, match=rf"{re.escape(str(out))}.*damaged"):
        fastscape.loss_surface(model, data, dirs, out=out, **kwargs())


def _with_digest(image: bytes) -> bytes:
    """An HDF5 image written with a 512-byte user block, given the header this format documents."""
    head = b"fastscape surface sha256=" + hashlib.sha256(image[BLOCK:]).hexdigest().encode() + b"\n"
    return head.ljust(BLOCK, b"\0") + image[BLOCK:]


def test_a_checksummed_file_without_its_checksums_attribute_is_damaged_not_old(tmp_path):
    out = _finished(tmp_path)
    bio = io.BytesIO(out.read_bytes())
    with h5py.File(bio, "r+") as f:
        del f.attrs["fastscape_checksums"]
    out.write_bytes(_with_digest(bio.getvalue()))
    with pytest.raises(ValueError, match=rf"{re.escape(str(out))}.*damaged.*fastscape_checksums"):
        fastscape.load_surface(out)


def test_an_unreadable_checksums_attribute_is_damage(tmp_path):
    out = _finished(tmp_path)
    bio = io.BytesIO(out.read_bytes())
    with h5py.File(bio, "r+") as f:
        f.attrs["fastscape_checksums"] = "{not json"
    out.write_bytes(_with_digest(bio.getvalue()))
    with pytest.raises(ValueError, match=rf"{re.escape(str(out))}.*damaged"):
        fastscape.load_surface(out)


def test_a_file_of_an_older_fastscape_still_loads(tmp_path):
    # written as fastscape wrote it before the whole-file digest: plain HDF5 from byte 0
    x, y = np.linspace(-1, 1, 4), np.linspace(0, 1, 3)
    loss = np.add.outer(x, y)
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("xcoordinates", data=x)
        f.create_dataset("ycoordinates", data=y)
        f.create_dataset("fastscape/loss", data=loss)
        f.attrs["fastscape_meta"] = json.dumps({"note": "old"})
    with pytest.warns(UserWarning, match="holds no checksums"):
        back = fastscape.load_surface(path)
    np.testing.assert_array_equal(back.loss, loss)


# --------------------------------------------------------------------------- a full disk


_LIMITED = r"""
import resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # writes past it fail with EFBIG
import fastscape
from tests.integrity_case import kwargs, make_case
model, data, dirs = make_case()
try:
    fastscape.loss_surface(model, data, dirs, out=sys.argv[1], **kwargs())
except OSError as err:
    print("ERROR", err)
    sys.exit(2)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize("phase,limit,names", [("manifest", 500, "manifest.json"), ("unit", 1400, "unit-0000000"),
                                               ("final file", 4000, "s.h5")])
def test_a_full_disk_at_each_phase_is_a_clear_error_then_a_bit_identical_resume(tmp_path, phase, limit, names):
    out = tmp_path / "s.h5"
    proc = subprocess.run([sys.executable, "-c", _LIMITED, str(out), str(limit)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    message = proc.stdout
    assert "ERROR" in message and names in message and "File too large" in message, message
    assert "kept" in message and str(out) + ".parts" in message, message
    assert not out.exists()
    assert [p.name for p in tmp_path.rglob("*tmp*")] == []
    model, data, dirs = make_case()
    resumed = fastscape.loss_surface(model, data, dirs, out=out, **kwargs())
    fresh = fastscape.loss_surface(model, data, dirs, out=tmp_path / "fresh.h5", **kwargs())
    np.testing.assert_array_equal(resumed.loss, fresh.loss)
    np.testing.assert_array_equal(resumed.metrics["accuracy"], fresh.metrics["accuracy"])
    if phase == "final file":
        assert resumed.meta["run"]["reused_units"] == resumed.meta["run"]["units"]
    np.testing.assert_array_equal(fastscape.load_surface(out).loss, fresh.loss)
