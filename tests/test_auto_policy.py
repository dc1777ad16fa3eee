"""strategy="auto" that does not depend on call order (issue 12): what it remembers is
keyed on the job size, a recorded choice reproduces the same bits, and a compiled
strategy does not recompile when only the grid size changes.

Only the public API is used; behaviour is pinned, never timings.
"""

import copy
import shutil
import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape

needs_compiler = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                                    reason="torch.compile needs a C++ compiler")


class TwoWeight(nn.Module):
    """x -> w2 * tanh(w1 * x), the seed-000 net."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Tanh(), nn.Linear(1, 1, bias=False))

    def forward(self, x):
        return self.net(x)


def _seed_case(n=300):
    torch.manual_seed(0)
    model = TwoWeight()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, 1, generator=g) * 2
    y = torch.sin(x) + 0.1 * torch.randn(n, 1, generator=g)
    names = ["net.0.weight", "net.2.weight"]
    return (model, (x, y), list(fastscape.axis_directions(model, names)),
            fastscape.axis_origin(model, names, at="zero"))


def _surface(case, n, **kw):
    model, data, dirs, origin = case
    return fastscape.loss_surface(model, data, dirs, origin=origin, loss_fn=F.mse_loss, grid=(-2.0, 2.0, n),
                                  device="cpu", progress=False, **kw)


def _remembered(surface) -> bool:
    return any("remembered" in note for note in surface.meta["notes"])


def test_a_small_job_does_not_decide_for_a_much_bigger_one():
    # same model, data, directions and chunk: only the job size differs (25 vs 10 000 points)
    case = _seed_case()
    small = _surface(case, 5, chunk_size=16)
    assert not _remembered(small)
    big = _surface(case, 100, chunk_size=16)
    assert not _remembered(big), f"the 10 000-point job reused the 25-point job's choice: {big.meta['notes']}"
    again = _surface(case, 100, chunk_size=16)
    assert _remembered(again) and again.meta["strategy"] == big.meta["strategy"]
    np.testing.assert_array_equal(again.loss, big.loss)


def test_the_recorded_strategy_reproduces_the_same_bits():
    case = _seed_case()
    first = _surface(case, 60)
    pinned = _surface(case, 60, strategy=first.meta["strategy"], chunk_size=first.meta["chunk_size"])
    assert pinned.meta["strategy"] == first.meta["strategy"]
    np.testing.assert_array_equal(pinned.loss, first.loss)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@needs_compiler
@pytest.mark.parametrize("strategy", ["affine_compiled", "vmap_compiled"])
def test_a_new_grid_size_does_not_recompile(strategy):
    case = _seed_case()
    ref = {n: _surface(case, n, strategy="vmap").loss for n in (40, 25, 61)}
    before = _graphs()
    first = _surface(case, 40, strategy=strategy)
    compiled = _graphs() - before
    assert compiled >= 1  # the first call compiles
    for n in (25, 61):  # fewer points than one compiled chunk, then more chunks than before
        surf = _surface(case, n, strategy=strategy)
        assert surf.meta["strategy"] == strategy
        np.testing.assert_allclose(surf.loss, ref[n], rtol=1e-5, atol=1e-6)
    assert _graphs() - before == compiled, "a new grid size compiled again"
    np.testing.assert_allclose(first.loss, ref[40], rtol=1e-5, atol=1e-6)


def test_compile_cache_defaults_to_a_directory_that_outlives_the_process(tmp_path, monkeypatch):
    from fastscape._core.strategies.compiled import _persistent_compile_cache

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _persistent_compile_cache()
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "fastscape" / "torchinductor")
    assert (tmp_path / "fastscape" / "torchinductor").is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice stands
    _persistent_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    import torch._inductor.config as inductor_config

    assert inductor_config.fx_graph_cache


def test_a_candidate_that_fails_is_skipped_not_taken_for_a_model_vmap_cannot_batch(monkeypatch):
    """A candidate of auto's probe that raises (a compiler error, an operation its path does not
    cover) is noted and skipped. It used to be run point by point instead, with a FallbackWarning
    saying the model could not be vectorised, and the loop's time entered the race as its own."""
    from fastscape._core import auto, strategies

    def broken(self, *args, **kwargs):
        raise RuntimeError("boom: this path cannot run here")

    from tests.fake_clock import FakeClock

    # injected timings: vmap 2 us and the loop 5 us per point, a compile estimated at 1.5 s per leaf
    # module at load 3: compiling cannot pay for this 441-point job, so neither compiled form runs
    FakeClock({"vmap": 2e-6, "loop": 5e-6}).install(monkeypatch, load=3.0)
    monkeypatch.setattr(strategies.AffineStrategy, "run", broken)
    monkeypatch.setattr(strategies.MlpStrategy, "run", broken)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    x, y = torch.randn(400, 6), torch.randint(0, 3, (400,))
    dirs = fastscape.random_directions(model, n=2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastscape.FallbackWarning)
        surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 21),
                                      chunk_size=8, device="cpu", progress=False)
    assert surf.meta["fallback"] is False
    assert surf.meta["strategy"] == "vmap", surf.meta["notes"]
    assert any(n.startswith("auto: affine failed (boom") for n in surf.meta["notes"]), surf.meta["notes"]
    assert any(n.startswith("auto: mlp failed (boom") for n in surf.meta["notes"]), surf.meta["notes"]
    # the values are the model's: a plain per-point loop in float64
    ref = np.empty(21 * 21)
    axis = np.linspace(-1, 1, 21)
    m64 = copy.deepcopy(model).double()
    base = {n: p.detach().double() for n, p in model.named_parameters()}
    for i, (a, b) in enumerate((a, b) for a in axis for b in axis):
        params = {n: base[n] + a * dirs[0][n].double() + b * dirs[1][n].double() for n in base}
        with torch.no_grad():
            ref[i] = float(F.cross_entropy(torch.func.functional_call(m64, params, (x.double(),)), y))
    np.testing.assert_allclose(surf.loss.ravel(), ref, rtol=1e-4)


@needs_compiler
@pytest.mark.parametrize("strategy", ["vmap_compiled", "affine_compiled"])
def test_compiled_functions_do_not_keep_the_users_model_alive(strategy):
    """The cache of compiled chunk functions is per model object: a second surface of the same
    model reuses its function (test above), and a model the user drops is freed with it (the
    cache held every compiled model, and its weights, for the life of the process)."""
    import gc
    import weakref

    def surface_of_a_new_model():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        fastscape.loss_surface(m, (x, y), fastscape.random_directions(m, n=2, seed=0), loss_fn=F.cross_entropy,
                               grid=(-1, 1, 5), strategy=strategy, device="cpu", progress=False)
        return weakref.ref(m)

    ref = surface_of_a_new_model()
    gc.collect()
    assert ref() is None, "a compiled surface kept the model alive after the user dropped it"


def test_a_one_time_cost_of_the_first_vmap_call_is_not_vmaps_time(monkeypatch):
    """The first vmapped call of a process pays one-time costs (PyTorch builds the decomposition
    of cross_entropy under vmap: half a second). A job too short for timed rounds compares
    first-call times, and vmap's used to include that cost, so the first call of a process could
    choose otherwise than every later one. A one-off delay in vmap's first call stays out of it."""
    from fastscape._core import auto, strategies

    real, calls = strategies.VmapStrategy.run, []

    def first_call_slow(self, *args):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.3)
        return real(self, *args)

    monkeypatch.setattr(strategies.VmapStrategy, "run", first_call_slow)
    auto.AUTO_CHOICES.clear()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    surf = fastscape.loss_surface(model, (x, y), fastscape.random_directions(model, n=2, seed=0),
                                  loss_fn=F.cross_entropy, grid=(-1, 1, 9), chunk_size=9, device="cpu",
                                  progress=False)
    auto.AUTO_CHOICES.clear()
    note = next(n for n in surf.meta["notes"] if n.startswith("auto: vmap"))
    vmap_us = float(note.split("auto: vmap ")[1].split(" us")[0])
    assert vmap_us < 0.3e6 / 9 / 2, note  # far below the delay spread over the chunk's 9 points


def test_a_dearer_path_wins_only_when_it_wins_every_round():
    """The rule of auto.pick on injected round timings (seconds per point): the cheaper path
    (lower rank) is kept on a disturbed probe, where the dearer one's rounds straddle it."""
    from fastscape._core.auto import TIE, pick

    rank = {"quadratic": 0, "affine": 1, "loop": 4}
    steady = {"quadratic": [1.0, 1.0, 1.0], "affine": [0.5, 0.5, 0.5], "loop": [9.0, 9.0, 9.0]}
    assert pick(steady, rank) == "affine"  # 0.5 * TIE < 1.0 in every round
    disturbed = {**steady, "affine": [0.5, 0.6, 2.5]}  # its fastest round still wins, its slowest does not
    assert pick(disturbed, rank) == "quadratic"
    # within one step of rank a faster dearer path loses even on a steady probe
    assert pick({"quadratic": [1.0], "affine": [1.0 / TIE]}, rank) == "quadratic"
    assert pick({"quadratic": [1.0], "affine": [0.99 / TIE]}, rank) == "affine"
    # the loop (rank 4) cannot displace quadratic on one lucky round
    assert pick({"quadratic": [1.0, 1.0], "loop": [0.1, 5.0]}, rank) == "quadratic"


def test_a_compile_is_estimated_in_the_seconds_of_a_loaded_machine(monkeypatch):
    """The compile estimate scales with the machine's load, like the job's measured time: on a
    machine 4x loaded a compile is estimated at 4x the quiet estimate (injected load)."""
    from fastscape._core import auto

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))  # 3 leaf modules
    base, per_module = auto.COMPILE_SECONDS["cpu"]
    monkeypatch.setattr(auto, "load", lambda: 1.0)
    quiet = auto.compile_cost(model, torch.device("cpu"))
    assert quiet == base + 3 * per_module
    monkeypatch.setattr(auto, "load", lambda: 4.0)
    assert auto.compile_cost(model, torch.device("cpu")) == 4 * quiet
