"""Diverging points (NaN, inf) are recorded, never raised: for every strategy, wherever
they fall (the probe chunk, the last chunk, every point) and in every decision taken on
a probe (auto's agreement check, the loop's channels-last check). Issue 11, defect 2."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape
from fastscape._core.strategies import STRATEGIES, strategy_names
from tests.matrix_cases import TinyCNN, reference_line_or_plane

HAS_COMPILER = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
#: every name of the registry (compiled ones where a compiler exists); one that refuses the model skips
NAMES = [pytest.param(n, marks=pytest.mark.skipif(n in STRATEGIES and STRATEGIES[n].compiled and not HAS_COMPILER,
                                                  reason="torch.compile needs a C++ compiler"))
         for n in strategy_names()]
#: the eager names and "auto"
EAGER = ["auto", *(n for n, cls in STRATEGIES.items() if not cls.compiled)]
BIG = 1e300  # finite in float64, inf in float32: the weights there are inf (or NaN), the loss too
#: where the diverging points sit on a line of 6 points evaluated in chunks of 2
POSITIONS = {
    "probe_chunk": [-BIG, 0.0, 0.5, -0.5, 1.0, 0.25],
    "last_chunk": [0.0, 0.5, -0.5, 1.0, 0.25, BIG],
    "every_point": [-BIG, BIG, -2 * BIG, 2 * BIG, -3 * BIG, 3 * BIG],
}


_MODELS: dict = {}


def _mlp(hidden):
    """A ReLU MLP, one object per width: the compiled strategies compile once per model
    object, and auto's remembered pick (per structure) must not skip the probe under test."""
    if hidden not in _MODELS:
        torch.manual_seed(0)
        _MODELS[hidden] = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    return _MODELS[hidden]


def _surface_or_skip(*args, **kwargs):
    """``loss_surface``, or a skip when the named strategy refuses the model."""
    try:
        return fastscape.loss_surface(*args, **kwargs)
    except ValueError as err:
        if "cannot evaluate this model" not in str(err):
            raise
        pytest.skip(f"{kwargs.get('strategy')} does not apply: {err}")


def _check(surf, ref):
    """Same diverging points as the float64 loop, same values elsewhere."""
    bad = ~np.isfinite(ref)
    np.testing.assert_array_equal(~np.isfinite(surf.loss), bad)
    np.testing.assert_allclose(surf.loss[~bad], ref[~bad], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("strategy", NAMES)
def test_overflowing_points_are_recorded_for_every_strategy(strategy, position):
    model = _mlp(5 + list(POSITIONS).index(position) if strategy == "auto" else 4)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 3, generator=g), torch.randn(10, 1, generator=g)
    dirs = fastscape.random_directions(model, 1, ignore=None, seed=0)
    axes = [np.array(POSITIONS[position])]
    surf = _surface_or_skip(model, (x, y), dirs, loss_fn=F.mse_loss, grid=axes, device="cpu",
                            chunk_size=2, strategy=strategy, progress=False)
    ref = reference_line_or_plane(model, x, y, F.mse_loss, dirs, axes)
    assert (~np.isfinite(ref)).sum() == (6 if position == "every_point" else 1)
    _check(surf, ref)


def _bn_mlp(hidden):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 1))


#: with states=True, ignore=None the running variance moves along itself: NaN where the coordinate is below -1
BN_POSITIONS = {
    "probe_chunk": [-2.0, 0.0, 0.5, -0.5, 1.0, 0.25],
    "last_chunk": [0.0, 0.5, -0.5, 1.0, 0.25, -3.0],
    "every_point": [-2.0, -3.0, -4.0, -5.0, -6.0, -7.0],
}


@pytest.mark.parametrize("position", list(BN_POSITIONS))
@pytest.mark.parametrize("strategy", EAGER)
def test_negative_batchnorm_variance_is_recorded_for_every_strategy(strategy, position):
    model = _bn_mlp(20 + list(BN_POSITIONS).index(position) + 3 * EAGER.index(strategy))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 3, generator=g), torch.randn(10, 1, generator=g)
    dirs = fastscape.random_directions(model, 1, states=True, ignore=None, seed=0)
    axes = [np.array(BN_POSITIONS[position])]
    surf = _surface_or_skip(model, (x, y), dirs, loss_fn=F.mse_loss, grid=axes, device="cpu",
                            chunk_size=2, strategy=strategy, progress=False)
    ref = reference_line_or_plane(model, x, y, F.mse_loss, dirs, axes)
    assert (~np.isfinite(ref)).any()
    _check(surf, ref)


def test_issue_reproduction_batchnorm_states_plane_auto():
    """The issue's own case: BatchNorm MLP, states=True, ignore=None, grid (-2, 2, 21), auto."""
    model = _bn_mlp(8)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 3, generator=g), torch.randn(200, 1, generator=g)
    dirs = fastscape.random_directions(model, 2, states=True, ignore=None, seed=0)
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=(-2, 2, 21), device="cpu",
                                  chunk_size=16, progress=False)
    assert not np.isfinite(surf.loss[0, 0])  # the first chunk, on which auto probes, diverges
    assert np.isfinite(surf.loss[10, 10])
    assert 0 < np.isfinite(surf.loss).mean() < 1


@pytest.mark.parametrize("strategy", ["loop", "auto", "vmap", "affine"])
def test_diverging_first_point_of_a_conv_model(strategy):
    """The loop's channels-last decision compares two probe forwards of the first point."""
    model = TinyCNN()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 1, 3, 3, generator=g), torch.randint(0, 3, (8,), generator=g)
    dirs = fastscape.random_directions(model, 1, states=True, ignore=None, seed=0)
    axes = [np.array([-2.0, 0.0, 0.5, -0.5])]
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=axes, device="cpu",
                                  chunk_size=2, strategy=strategy, progress=False)
    ref = reference_line_or_plane(model, x, y, F.cross_entropy, dirs, axes)
    assert not np.isfinite(ref[0])
    _check(surf, ref)
