"""Crash-safe, resumable surface files: SIGKILL at random moments, resume, refuse mismatches;
the HDF5 layout of the Li et al. tools; the VTK export."""

import base64
import json
import os
import random
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastscape
from fastscape import _units as unit_plan
from fastscape._store import sidecar
from fastscape._cli import main
from fastscape._core.params import model_parameters
from tests.cli_models import make_model
from tests.models import MLP
from tests.reference import loop_surface

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.pop("FASTSCAPE_MEMORY_BUDGET", None)
    return env


def _surface_args(ckpt, out):
    return ["surface", "--model", "tests.cli_models:make_model", "--checkpoint", str(ckpt),
            "--data", "tests.cli_models:make_big_data", "--loss", "cross_entropy", "--metric", "accuracy",
            "--x", "-1:1:12", "--y", "-0.5:1.5:10", "--chunk-size", "2", "--strategy", "vmap", "--out", str(out),
            "--quiet", "--no-progress"]


def _units(parts: Path) -> int:
    try:
        return sum(1 for n in os.listdir(parts) if n.startswith("unit-"))
    except FileNotFoundError:
        return 0


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    ckpt = tmp_path / "model.pt"
    torch.manual_seed(3)
    torch.save(make_model().state_dict(), ckpt)

    # the uninterrupted run, in this process with the subprocesses' thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_surface_args(ckpt, tmp_path / "whole.h5")) == 0
    finally:
        torch.set_num_threads(threads)
    whole = fastscape.load_surface(tmp_path / "whole.h5")
    total = whole.meta["run"]["units"]
    assert total == 60

    out = tmp_path / "killed.h5"
    parts = tmp_path / "killed.h5.parts"
    rng = random.Random(2024)
    targets = sorted(rng.sample(range(1, total - 15), 3))
    cmd = [sys.executable, "-m", "fastscape", *_surface_args(ckpt, out)]
    landed = []
    for target in targets:  # each trial resumes what the previous kill left
        proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while _units(parts) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.01))  # inside a unit, or between two
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        assert proc.returncode in (-signal.SIGKILL, 0), err.decode()
        landed.append((proc.returncode, _units(parts)))
        print(f"kill at unit {target}: rc {proc.returncode}, {landed[-1][1]} units on disk")
    # at least one kill landed in the middle of the grid
    assert any(rc == -signal.SIGKILL and 0 < n < total for rc, n in landed), landed
    assert not out.exists()

    done = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = fastscape.load_surface(out)
    assert resumed.meta["run"]["reused_units"] == landed[-1][1] > 0
    np.testing.assert_array_equal(resumed.loss, whole.loss)
    np.testing.assert_array_equal(resumed.metrics["accuracy"], whole.metrics["accuracy"])
    assert not parts.exists()
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


# --------------------------------------------------------------------------- in process


def _case(gen):
    torch.manual_seed(0)
    model = MLP()
    x = torch.randn(40, 5, generator=gen)
    y = torch.randint(0, 3, (40,), generator=gen)
    dirs = [{n: torch.randn(p.shape, generator=gen) * 0.3 for n, p in model.named_parameters()} for _ in range(2)]
    return model, x, y, dirs


AXES = [np.linspace(-1, 1, 7), np.linspace(-0.5, 1.0, 5)]


class _Crash(Exception):
    pass


def _crash_after(monkeypatch, n):
    real = sidecar.SurfaceStore.write_unit
    count = [0]

    def write_unit(self, u, values):
        if count[0] >= n:
            raise _Crash
        count[0] += 1
        real(self, u, values)

    monkeypatch.setattr(sidecar.SurfaceStore, "write_unit", write_unit)
    return lambda: monkeypatch.setattr(sidecar.SurfaceStore, "write_unit", real)


def test_resume_in_process_matches_reference_and_uninterrupted(gen, monkeypatch, tmp_path):
    model, x, y, dirs = _case(gen)
    kw = dict(loss_fn=F.cross_entropy, grid=AXES, device="cpu", chunk_size=3,
              metrics={"accuracy": fastscape.accuracy})
    whole = fastscape.loss_surface(model, (x, y), dirs, **kw)
    out = tmp_path / "s.h5"
    restore = _crash_after(monkeypatch, 4)
    with pytest.raises(_Crash):
        fastscape.loss_surface(model, (x, y), dirs, out=out, **kw)
    restore()
    assert not out.exists() and len(list((tmp_path / "s.h5.parts").glob("unit-*.npz"))) == 4
    surf = fastscape.loss_surface(model, (x, y), dirs, out=out, **kw)
    assert surf.meta["run"] == {"units": 12, "unit_points": 3, "reused_units": 4, "world_size": 1}
    np.testing.assert_array_equal(surf.loss, whole.loss)
    np.testing.assert_array_equal(surf.metrics["accuracy"], whole.metrics["accuracy"])
    ref = loop_surface(model, x, y, F.cross_entropy, model_parameters(model), dirs, AXES)
    np.testing.assert_allclose(surf.loss, ref, rtol=2e-4, atol=1e-5)
    back = fastscape.load_surface(out)
    np.testing.assert_array_equal(back.loss, whole.loss)


def test_complete_file_is_returned_without_computing(gen, monkeypatch, tmp_path):
    model, x, y, dirs = _case(gen)
    out = tmp_path / "s.h5"
    first = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=AXES, out=out)

    def no_work(*a, **k):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(unit_plan, "evaluate", no_work)
    monkeypatch.setattr("fastscape._landscape.evaluate", no_work)
    again = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=AXES, out=out)
    np.testing.assert_array_equal(again.loss, first.loss)


@pytest.mark.parametrize("change, key", [
    ("grid", "grid_shape"), ("span", "grid_fingerprint"), ("directions", "directions_fingerprint"),
    ("model", "model_fingerprint"), ("data", "n_samples"), ("loss", "loss"), ("dtype", "dtype"),
])
@pytest.mark.parametrize("state", ["partial", "complete"])
def test_mismatched_file_is_refused(gen, monkeypatch, tmp_path, change, key, state):
    model, x, y, dirs = _case(gen)
    out = tmp_path / "s.h5"
    kw = dict(loss_fn=F.cross_entropy, grid=AXES, device="cpu", chunk_size=4)
    if state == "partial":
        restore = _crash_after(monkeypatch, 2)
        with pytest.raises(_Crash):
            fastscape.loss_surface(model, (x, y), dirs, out=out, **kw)
        restore()
    else:
        fastscape.loss_surface(model, (x, y), dirs, out=out, **kw)
    data = (x, y)
    if change == "grid":
        kw["grid"] = [AXES[0], np.linspace(-0.5, 1.0, 6)]
    elif change == "span":
        kw["grid"] = [AXES[0], np.linspace(-0.5, 1.1, 5)]
    elif change == "directions":
        dirs = [dirs[1], dirs[0]]
    elif change == "model":
        model = MLP()
    elif change == "data":
        data = (x[:-1], y[:-1])
    elif change == "loss":
        kw["loss_fn"] = lambda out_, t: F.cross_entropy(out_, t, label_smoothing=0.1)
    elif change == "dtype":
        kw["dtype"] = torch.float64
    where = "the partial run in" if state == "partial" else "`out`"
    with pytest.raises(ValueError, match=rf"{where} .* was computed with different settings: {key} \("):
        fastscape.loss_surface(model, data, dirs, out=out, **kw)


def test_refuses_foreign_files_and_bad_suffix(gen, tmp_path):
    model, x, y, dirs = _case(gen)
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("train_loss", data=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="exists and is not a fastscape surface file"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=3, out=foreign)
    with pytest.raises(ValueError, match=r"`out` must end in \.h5 or \.hdf5; got 's\.npz'"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=3, out=tmp_path / "s.npz")


def test_damaged_unit_and_stale_temporaries_are_recomputed(gen, monkeypatch, tmp_path, caplog):
    model, x, y, dirs = _case(gen)
    kw = dict(loss_fn=F.cross_entropy, grid=AXES, device="cpu", chunk_size=5)
    whole = fastscape.loss_surface(model, (x, y), dirs, **kw)
    out = tmp_path / "s.h5"
    restore = _crash_after(monkeypatch, 3)
    with pytest.raises(_Crash):
        fastscape.loss_surface(model, (x, y), dirs, out=out, **kw)
    restore()
    parts = tmp_path / "s.h5.parts"
    (parts / "unit-0000001.npz").write_bytes(b"PK\x03\x04 garbage")
    (parts / ".unit-0000003.npz.tmp-999").write_bytes(b"half a unit")
    surf = fastscape.loss_surface(model, (x, y), dirs, out=out, **kw)
    assert surf.meta["run"]["reused_units"] == 2
    assert any("damaged unit file" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(surf.loss, whole.loss)


def test_file_has_li_et_al_layout(gen, tmp_path):
    model, x, y, dirs = _case(gen)
    out = tmp_path / "s.h5"
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=AXES, out=out,
                                  metrics={"accuracy": fastscape.accuracy})
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["xcoordinates"][()], AXES[0])
        np.testing.assert_array_equal(f["ycoordinates"][()], AXES[1])
        # their tools index train_loss[y, x]
        assert f["train_loss"].shape == (5, 7)
        np.testing.assert_array_equal(f["train_loss"][()], surf.loss.T)
        np.testing.assert_allclose(f["train_acc"][()], 100 * surf.metrics["accuracy"].T)
        meta = json.loads(f.attrs["fastscape_meta"])
    assert meta["settings"]["grid_shape"] == [7, 5]
    assert meta["memory_plan"]["chunk"] == surf.meta["chunk_size"]


# --------------------------------------------------------------------------- VTK


def _read_vtp(path):
    """An independent reader of the XML PolyData written: arrays by name, per section."""
    root = ET.parse(path).getroot()
    header = np.dtype({"UInt32": "<u4", "UInt64": "<u8"}[root.get("header_type", "UInt32")])
    types = {"Float64": "<f8", "Int64": "<i8", "UInt8": "u1"}
    piece = root.find("PolyData/Piece")
    out = {"piece": dict(piece.attrib)}
    for section in piece:
        for arr in section.findall("DataArray"):
            dt = np.dtype(types[arr.get("type")])
            if arr.get("format") == "binary":
                raw = base64.b64decode(arr.text)
                n = int(np.frombuffer(raw[:header.itemsize], header)[0])
                values = np.frombuffer(raw[header.itemsize:header.itemsize + n], dt)
            else:
                values = np.array(arr.text.split(), dtype=dt)
            comps = int(arr.get("NumberOfComponents", "1"))
            out[f"{section.tag}/{arr.get('Name')}"] = values.reshape(-1, comps) if comps > 1 else values
    return out


@pytest.mark.parametrize("binary", [True, False])
def test_vtp_plane(binary, tmp_path):
    x, y = np.linspace(-1, 1, 4), np.linspace(0, 2, 3)
    loss = np.add.outer(x**2, y) + 1.0
    loss[1, 2] = np.inf  # a diverging point
    surf = fastscape.Surface(coords=[x, y], loss=loss, metrics={"accuracy": np.full(loss.shape, 0.5)})
    vtp = _read_vtp(fastscape.save_vtp(surf, tmp_path / "s.vtp", binary=binary))
    pts = vtp["Points/Points"]
    assert pts.shape == (12, 3)
    top = np.max(loss[np.isfinite(loss)])
    for j in range(3):
        for i in range(4):  # x fastest
            p = pts[j * 4 + i]
            want = loss[i, j] if np.isfinite(loss[i, j]) else top
            assert (p[0], p[1], p[2]) == (x[i], y[j], want)
            assert vtp["PointData/loss"][j * 4 + i] == want
            assert vtp["PointData/finite"][j * 4 + i] == int(np.isfinite(loss[i, j]))
    np.testing.assert_array_equal(vtp["PointData/accuracy"], 0.5)
    quads = vtp["Polys/connectivity"].reshape(-1, 4)
    # 3 x 2 cells, minus the two that touch the diverging point (i=1, j=2 -> id 9)
    assert len(quads) == 4 and int(vtp["piece"]["NumberOfPolys"]) == 4
    assert 9 not in quads
    np.testing.assert_array_equal(vtp["Polys/offsets"], [4, 8, 12, 16])
    assert list(quads[0]) == [0, 1, 5, 4]


def test_vtp_line_log_and_errors(tmp_path):
    x = np.linspace(-1, 1, 5)
    surf = fastscape.Surface(coords=[x], loss=np.array([1.0, 10.0, 100.0, 10.0, 1.0]))
    vtp = _read_vtp(fastscape.save_vtp(surf, tmp_path / "l.vtp", log=True))
    np.testing.assert_allclose(vtp["Points/Points"][:, 2], [0, 1, 2, 1, 0])
    np.testing.assert_array_equal(vtp["Lines/connectivity"], np.arange(5))
    with pytest.raises(ValueError, match="`out` must end in '.vtp'; got 'l.vtk'"):
        fastscape.save_vtp(surf, tmp_path / "l.vtk")
    with pytest.raises(ValueError, match="`log` needs a positive loss"):
        fastscape.save_vtp(fastscape.Surface(coords=[x], loss=x.copy()), tmp_path / "m.vtp", log=True)


def test_progress_counts_every_point_once(gen, monkeypatch, tmp_path, capsys):
    model, x, y, dirs = _case(gen)
    kw = dict(loss_fn=F.cross_entropy, grid=AXES, device="cpu", chunk_size=4)
    out = tmp_path / "s.h5"
    restore = _crash_after(monkeypatch, 3)
    seen = []
    with pytest.raises(_Crash):
        fastscape.loss_surface(model, (x, y), dirs, out=out, progress=seen.append, **kw)
    restore()
    resumed = []
    fastscape.loss_surface(model, (x, y), dirs, out=out, progress=resumed.append, **kw)
    assert sum(resumed) == 35 - 12  # the three finished units of 4 points are not redone
    # the bar: points per second and a total, on stderr
    capsys.readouterr()
    fastscape.loss_surface(model, (x, y), dirs, progress=True, **kw)
    err = capsys.readouterr().err
    assert "fastscape" in err and "pt/s" in err and "/35" in err


# --------------------------------------------------------------------------- the plan of a file-backed run


def _wide_mlp_case():
    """An MLP whose activations over the data fill the eager chunk plan with two points, so the
    "mlp" strategy runs larger chunks than the plan (see fastscape._core.strategies.MlpStrategy.best_chunk)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(3000, 64, generator=g), torch.randint(0, 10, (3000,), generator=g)
    return model, (x, y), fastscape.random_directions(model, n=2, seed=2), F.cross_entropy


def _seed_net_case():
    """The seed-000 net with axis directions over its two weights: "quadratic" takes the whole grid in one chunk."""
    from fastscape._demo import TwoWeightNet, piecewise_data

    model = TwoWeightNet()
    names = [n for n, _ in model.named_parameters()]
    return (model, piecewise_data(), list(fastscape.axis_directions(model, names)), F.mse_loss)


@pytest.mark.parametrize("case,strategy", [(_wide_mlp_case, "mlp"), (_seed_net_case, "quadratic")])
def test_a_file_backed_run_plans_its_chunk_as_in_memory(case, strategy, tmp_path):
    # it used to take the eager plan's chunk (and one chunk per unit): the mlp and quadratic paths
    # then ran 10-20x slower into a file than in memory
    model, data, dirs, loss_fn = case()
    kw = dict(loss_fn=loss_fn, grid=(-1.0, 1.0, 21), device="cpu", strategy=strategy, progress=False)
    mem = fastscape.loss_surface(model, data, dirs, **kw)
    assert mem.meta["chunk_size"] > mem.meta["memory_plan"]["chunk_limit"]  # the strategy's own chunk
    filed = fastscape.loss_surface(model, data, dirs, out=tmp_path / "s.h5", **kw)
    assert filed.meta["strategy"] == strategy
    assert filed.meta["chunk_size"] == mem.meta["chunk_size"]
    np.testing.assert_array_equal(filed.loss, mem.loss)  # same chunks, same batches: the same bits


@pytest.mark.parametrize("unit_seconds,units", [(0.0, "one per chunk"), (1e9, "one")])
def test_auto_chunk_units_hold_unit_seconds_of_work(unit_seconds, units, monkeypatch, tmp_path):
    model, data, dirs, loss_fn = _wide_mlp_case()
    monkeypatch.setattr(unit_plan, "UNIT_SECONDS", unit_seconds)
    surf = fastscape.loss_surface(model, data, dirs, loss_fn=loss_fn, grid=(-1.0, 1.0, 9), device="cpu",
                                  strategy="mlp", progress=False, out=tmp_path / "s.h5")
    chunk, run = surf.meta["chunk_size"], surf.meta["run"]
    if units == "one":
        assert run["units"] == 1 and run["unit_points"] >= 81
    else:
        assert run["unit_points"] == chunk and run["units"] == -(-81 // chunk)


def test_a_named_strategy_file_run_sizes_units_by_its_warm_time(monkeypatch, tmp_path):
    """A strategy's first chunk builds its per-batch tables (here: 0.5 s, simulated); the unit
    size must come from the time of a chunk after that, or a run gets a unit per chunk or two.
    EvalReport.point_seconds is the second chunk's time per point."""
    import time

    from fastscape._core import strategies

    real, calls = strategies.VmapStrategy.run, []

    def slow_first_call(self, *args):
        calls.append(1)
        time.sleep(0.5 if len(calls) == 1 else 0.002)
        return real(self, *args)

    monkeypatch.setattr(strategies.VmapStrategy, "run", slow_first_call)
    monkeypatch.setattr(unit_plan, "UNIT_SECONDS", 1.0)
    torch.manual_seed(0)
    model = MLP()
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    dirs = fastscape.random_directions(model, n=2, seed=0)
    monkeypatch.setenv("FASTSCAPE_MEMORY_BUDGET", "40K")  # a few points per chunk: many chunks
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 21), device="cpu",
                                  strategy="vmap", progress=False, out=tmp_path / "s.h5")
    chunk, run = surf.meta["chunk_size"], surf.meta["run"]
    n_chunks = -(-441 // chunk)
    assert n_chunks >= 20, (chunk, run)
    # about 2 ms a chunk against 1 s a unit: hundreds of chunks a unit, so one or two units even
    # on a loaded machine (45 ms a chunk still passes); a per-point time taken from the slow
    # first chunk gives two chunks a unit, over a hundred units
    assert run["units"] <= n_chunks // 5, (chunk, run)
