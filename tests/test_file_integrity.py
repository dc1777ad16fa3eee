"""Files that know what they hold (issue 16): an ``out=`` file or its sidecar is reused only
when it provably holds this request's surface; otherwise the run is refused or recomputed.

Every test checks against an independent result: the same request computed into a fresh
file in one uninterrupted run (bit for bit: the store promises identical values), or an
in-memory run. Runs are stopped between chunks through the public ``progress`` callable.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastscape
from tests.integrity_case import Interrupt, kwargs, make_case, scaled_loss, stop_after

ROOT = Path(__file__).resolve().parents[1]
#: another process, importing the case from its module (not as __main__)
_RUN = "import sys; from tests.integrity_case import main; sys.exit(main(sys.argv))"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _partial(out, model, data, dirs, n_units, **kw):
    """Compute into ``out`` and stop after ``n_units`` units are on disk."""
    with pytest.raises(Interrupt):
        fastscape.loss_surface(model, data, dirs, out=out, progress=stop_after(n_units), **kw)
    assert not Path(out).exists()


def _units(out):
    parts = Path(str(out) + ".parts")
    return sorted(p for p in parts.iterdir() if p.name.startswith("unit-")) if parts.exists() else []


def _fresh(tmp_path, name, model, data, dirs, **kw):
    """The independent result: one uninterrupted run into a fresh file."""
    return fastscape.loss_surface(model, data, dirs, out=tmp_path / f"fresh-{name}.h5", **kw)


def _same(a, b):
    np.testing.assert_array_equal(a.loss, b.loss)
    for k in b.metrics:
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k])


# --------------------------------------------------------------------------- 1. data content


@pytest.mark.parametrize("state", ["partial", "complete"])
def test_other_data_of_the_same_size_is_not_reused(tmp_path, state):
    model, (x, y), dirs = make_case()
    out = tmp_path / "s.h5"
    if state == "partial":
        _partial(out, model, (x, y), dirs, 4, **kwargs())
    else:
        fastscape.loss_surface(model, (x, y), dirs, out=out, **kwargs())
    x2 = x.clone()
    x2[7, 2] += 0.5  # one value of one sample: the sample count is unchanged
    with pytest.raises(ValueError, match=r"was computed with different settings: data_fingerprint \("):
        fastscape.loss_surface(model, (x2, y), dirs, out=out, **kwargs())
    y2 = y.roll(1)  # the targets alone
    with pytest.raises(ValueError, match=r"data_fingerprint"):
        fastscape.loss_surface(model, (x, y2), dirs, out=out, **kwargs())


def test_the_same_data_in_other_batches_is_reused(tmp_path):
    # the fingerprint is of the content: a DataLoader over the same samples resumes the file
    model, (x, y), dirs = make_case()
    out = tmp_path / "s.h5"
    _partial(out, model, (x, y), dirs, 4, **kwargs())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=40)
    surf = fastscape.loss_surface(model, loader, dirs, out=out, **kwargs())
    assert surf.meta["run"]["reused_units"] == 4
    _same(surf, _fresh(tmp_path, "a", model, (x, y), dirs, **kwargs()))


# --------------------------------------------------------------------------- 2. loss and metrics


def _scaled(c):
    return lambda o, t: c * F.cross_entropy(o, t)


@pytest.mark.parametrize("state", ["partial", "complete"])
@pytest.mark.parametrize("what", ["closure", "partial", "metric"])
def test_a_changed_loss_or_metric_with_the_same_name_is_not_reused(tmp_path, state, what):
    model, data, dirs = make_case()
    if what == "closure":  # both are tests.test_file_integrity._scaled.<locals>.<lambda>
        first, second = kwargs(loss_fn=_scaled(1.0)), kwargs(loss_fn=_scaled(2.0))
    elif what == "partial":
        first = kwargs(loss_fn=functools.partial(F.cross_entropy, label_smoothing=0.0))
        second = kwargs(loss_fn=functools.partial(F.cross_entropy, label_smoothing=0.3))
    else:
        first = kwargs(metrics={"accuracy": fastscape.accuracy})
        second = kwargs(metrics={"accuracy": lambda o, t: (o.argmax(1) != t).float().mean()})
    out = tmp_path / "s.h5"
    if state == "partial":
        _partial(out, model, data, dirs, 4, **first)
    else:
        fastscape.loss_surface(model, data, dirs, out=out, **first)
    key = "metrics_fingerprint" if what == "metric" else "loss_fingerprint"
    with pytest.raises(ValueError, match=rf"different settings: {key} \("):
        fastscape.loss_surface(model, data, dirs, out=out, **second)


def test_an_identical_closure_made_again_is_reused(tmp_path):
    model, data, dirs = make_case()
    out = tmp_path / "s.h5"
    _partial(out, model, data, dirs, 4, **kwargs(loss_fn=_scaled(2.0)))
    surf = fastscape.loss_surface(model, data, dirs, out=out, **kwargs(loss_fn=_scaled(2.0)))
    assert surf.meta["run"]["reused_units"] == 4
    _same(surf, _fresh(tmp_path, "a", model, data, dirs, **kwargs(loss_fn=_scaled(2.0))))


class _Opaque:
    """A callable whose state fastscape cannot fingerprint (a lock, say)."""

    def __init__(self):
        self.lock = threading.Lock()

    def __call__(self, o, t):
        return F.cross_entropy(o, t)


def test_an_unfingerprintable_loss_is_refused_and_says_how_to_force(tmp_path):
    model, data, dirs = make_case()
    out = tmp_path / "s.h5"
    with pytest.warns(UserWarning, match=r"`loss_fn` .*cannot be fingerprinted.*fastscape_fingerprint"):
        fastscape.loss_surface(model, data, dirs, out=out, **kwargs(loss_fn=_Opaque()))
    with pytest.raises(ValueError, match=r"`loss_fn` .*cannot be fingerprinted.*fastscape_fingerprint"):
        fastscape.loss_surface(model, data, dirs, out=out, **kwargs(loss_fn=_Opaque()))
    # the documented way to force: the callable names its own version
    out2 = tmp_path / "t.h5"
    loss = _Opaque()
    loss.fastscape_fingerprint = "opaque-v1"
    first = fastscape.loss_surface(model, data, dirs, out=out2, **kwargs(loss_fn=loss))
    again = _Opaque()
    again.fastscape_fingerprint = "opaque-v1"
    second = fastscape.loss_surface(model, data, dirs, out=out2, **kwargs(loss_fn=again))
    assert second.meta["run"]["reused_units"] == second.meta["run"]["units"]
    _same(second, first)


def test_a_module_loss_resumes_across_processes(tmp_path):
    # the fingerprint of a function's code must not depend on the process (hash seeds, addresses)
    out = tmp_path / "s.h5"
    env = _env()
    env["PYTHONHASHSEED"] = "123"
    proc = subprocess.run([sys.executable, "-c", _RUN, str(out), "partial-scaled"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert len(_units(out)) == 4
    model, data, dirs = make_case()
    surf = fastscape.loss_surface(model, data, dirs, out=out, **kwargs(loss_fn=scaled_loss))
    assert surf.meta["run"]["reused_units"] == 4
    _same(surf, _fresh(tmp_path, "a", model, data, dirs, **kwargs(loss_fn=scaled_loss)))


# --------------------------------------------------------------------------- 3. units of another run


def test_units_of_another_run_are_not_mixed_in(tmp_path):
    model, data, dirs = make_case()
    other_dirs = [dirs[1], dirs[0]]
    mine, theirs = tmp_path / "mine.h5", tmp_path / "theirs.h5"
    _partial(mine, model, data, dirs, 3, **kwargs())
    _partial(theirs, model, data, other_dirs, 6, **kwargs())
    # units 3..5 of the other run land in this run's sidecar (same names, same shapes)
    for f in _units(theirs)[3:]:
        shutil.copy(f, Path(str(mine) + ".parts") / f.name)
    surf = fastscape.loss_surface(model, data, dirs, out=mine, **kwargs())
    _same(surf, _fresh(tmp_path, "mine", model, data, dirs, **kwargs()))


def test_a_manifest_of_another_run_does_not_adopt_these_units(tmp_path):
    # two runs raced on one sidecar: the manifest is the other run's, the units are not
    model, data, dirs = make_case()
    other_dirs = [dirs[1], dirs[0]]
    mine, theirs = tmp_path / "mine.h5", tmp_path / "theirs.h5"
    _partial(mine, model, data, dirs, 4, **kwargs())
    _partial(theirs, model, data, other_dirs, 1, **kwargs())
    shutil.copy(Path(str(theirs) + ".parts") / "manifest.json", Path(str(mine) + ".parts") / "manifest.json")
    surf = fastscape.loss_surface(model, data, other_dirs, out=mine, **kwargs())
    _same(surf, _fresh(tmp_path, "theirs", model, data, other_dirs, **kwargs()))


# --------------------------------------------------------------------------- 4. checksums


@pytest.mark.parametrize("damage", ["swapped", "flipped"])
def test_a_replaced_or_damaged_unit_is_recomputed(tmp_path, damage):
    model, data, dirs = make_case()
    out = tmp_path / "s.h5"
    _partial(out, model, data, dirs, 5, **kwargs())
    units = _units(out)
    if damage == "swapped":  # a valid unit file, but another unit's values
        shutil.copy(units[0], units[2])
    else:  # the last bytes of the file: the unit's last values
        raw = bytearray(units[1].read_bytes())
        for i in range(1, 9):
            raw[-i] ^= 0x5A
        units[1].write_bytes(bytes(raw))
    surf = fastscape.loss_surface(model, data, dirs, out=out, **kwargs())
    _same(surf, _fresh(tmp_path, "a", model, data, dirs, **kwargs()))
    assert surf.meta["run"]["reused_units"] == 4


def _flip_loss_bytes(path):
    with h5py.File(path, "r") as f:
        offset = f["fastscape/loss"].id.get_offset()
    raw = bytearray(Path(path).read_bytes())
    for i in range(16):
        raw[offset + 8 + i] ^= 0xFF
    Path(path).write_bytes(bytes(raw))


def test_a_finished_file_with_flipped_bytes_is_refused(tmp_path):
    model, data, dirs = make_case()
    out = tmp_path / "s.h5"
    fastscape.loss_surface(model, data, dirs, out=out, **kwargs())
    _flip_loss_bytes(out)
    with pytest.raises(ValueError, match=rf"{re.escape(str(out))}.*checksum"):
        fastscape.load_surface(out)
    with pytest.raises(ValueError, match=rf"{re.escape(str(out))}.*checksum"):
        fastscape.loss_surface(model, data, dirs, out=out, **kwargs())


def test_a_saved_surface_with_flipped_bytes_is_refused(tmp_path):
    x = np.linspace(-1, 1, 6)
    surf = fastscape.Surface(coords=[x, x[:4]], loss=np.arange(24.0).reshape(6, 4))
    path = surf.save(tmp_path / "s.h5")
    back = fastscape.load_surface(path)
    np.testing.assert_array_equal(back.loss, surf.loss)
    _flip_loss_bytes(path)
    with pytest.raises(ValueError, match="checksum"):
        fastscape.load_surface(path)


# --------------------------------------------------------------------------- 5. another plan on resume


def test_manifest_deleted_and_another_chunk_size(tmp_path):
    model, data, dirs = make_case()
    out = tmp_path / "s.h5"
    _partial(out, model, data, dirs, 3, **kwargs(chunk_size=3))
    (Path(str(out) + ".parts") / "manifest.json").unlink()
    # with chunks of 11 the last unit holds 3 points, like every unit of the first run
    surf = fastscape.loss_surface(model, data, dirs, out=out, **kwargs(chunk_size=11))
    recorded = _fresh(tmp_path, "3", model, data, dirs, **kwargs(chunk_size=3))
    asked = _fresh(tmp_path, "11", model, data, dirs, **kwargs(chunk_size=11))
    # either the recorded plan was reproduced, or everything was recomputed with the new one
    assert np.array_equal(surf.loss, recorded.loss) or np.array_equal(surf.loss, asked.loss)


@pytest.mark.parametrize("first, then", [(None, 7), (8, 5)])
def test_resume_with_another_batch_size_reproduces_the_recorded_plan(tmp_path, first, then):
    model, data, dirs = make_case()
    out = tmp_path / "s.h5"
    _partial(out, model, data, dirs, 3, **kwargs(batch_size=first))
    surf = fastscape.loss_surface(model, data, dirs, out=out, **kwargs(batch_size=then))
    recorded = _fresh(tmp_path, "first", model, data, dirs, **kwargs(batch_size=first))
    asked = _fresh(tmp_path, "then", model, data, dirs, **kwargs(batch_size=then))
    assert np.array_equal(surf.loss, recorded.loss) or np.array_equal(surf.loss, asked.loss)


def test_data_cut_into_other_batches_is_recomputed_not_mixed(tmp_path):
    # the content is the same (the file is this request's), but the recorded plan cannot be
    # reproduced: every unit is recomputed, so the result is exactly a fresh run's
    model, (x, y), dirs = make_case()
    ds = torch.utils.data.TensorDataset(x, y)
    out = tmp_path / "s.h5"
    _partial(out, model, torch.utils.data.DataLoader(ds, batch_size=10), dirs, 4, **kwargs())
    by20 = torch.utils.data.DataLoader(ds, batch_size=20)
    surf = fastscape.loss_surface(model, by20, dirs, out=out, **kwargs())
    assert surf.meta["run"]["reused_units"] == 0
    _same(surf, _fresh(tmp_path, "20", model, by20, dirs, **kwargs()))


# --------------------------------------------------------------------------- 3 and 9. two processes


def test_a_second_run_on_a_busy_file_is_refused_then_resumes_after_a_kill(tmp_path):
    out = tmp_path / "s.h5"
    proc = subprocess.Popen([sys.executable, "-c", _RUN, str(out), "slow"], cwd=ROOT,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not _units(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()
        model, data, dirs = make_case()
        # the same request while the other process works: a clear refusal, not a
        # FileNotFoundError when the other one removes the sidecar
        with pytest.raises(RuntimeError, match=rf"another process .*{re.escape(str(out))}"):
            fastscape.loss_surface(model, data, dirs, out=out, **kwargs())
        # another request: refused too (never two runs in one sidecar)
        with pytest.raises((RuntimeError, ValueError), match="another process|different settings"):
            fastscape.loss_surface(model, data, [dirs[1], dirs[0]], out=out, **kwargs())
    finally:
        proc.kill()
        proc.communicate()
    # the lock dies with its process: the run resumes
    surf = fastscape.loss_surface(model, data, dirs, out=out, **kwargs())
    assert surf.meta["run"]["reused_units"] >= 1
    _same(surf, _fresh(tmp_path, "a", model, data, dirs, **kwargs()))


def test_fallback_warns_once_and_is_recorded_with_out(tmp_path):
    from tests.models import LSTMRegressor

    torch.manual_seed(0)
    model = LSTMRegressor()
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(12, 4, 3, generator=g), torch.randn(12, 1, generator=g)
    dirs = [{k: torch.randn(p.shape, generator=g) * 0.3 for k, p in model.named_parameters()}]
    out = tmp_path / "l.h5"
    with pytest.warns(fastscape.FallbackWarning) as record:
        surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=5, device="cpu", out=out)
    assert len([w for w in record if issubclass(w.category, fastscape.FallbackWarning)]) == 1
    assert surf.meta["fallback"] is True
    assert fastscape.load_surface(out).meta["fallback"] is True


# --------------------------------------------------------------------------- files that are not surfaces


def test_load_surface_names_a_file_that_is_not_hdf5(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not a surface\n")
    with pytest.raises(ValueError, match=re.escape(str(text))):
        fastscape.load_surface(text)
    x = np.linspace(-1, 1, 50)
    good = fastscape.Surface(coords=[x, x], loss=np.ones((50, 50))).save(tmp_path / "good.h5")
    cut = tmp_path / "cut.h5"
    raw = good.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=re.escape(str(cut))):
        fastscape.load_surface(cut)
