"""Spectral density, the smallest eigenvalues and curvature over a plane, against dense float64
Hessians (``torch.autograd.functional.hessian``) and a per-point loop of ``hessian_eigenpairs``."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape
from fastscape.curvature import ConvergenceWarning, curvature_surface, hessian_density, hessian_eigenpairs
from tests.models import assert_unchanged, snapshot
from tests.test_hessian import BNNet, _dense


class TinyCNN(nn.Module):
    """Conv -> BatchNorm -> ReLU -> pool -> linear on 1x4x4 inputs: 51 parameters."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def _case(kind, gen, n=30):
    """(model, data, loss_fn): the BatchNorm MLP with MSE, or the BatchNorm CNN with cross-entropy;
    float64, BatchNorm with non-trivial running statistics, left in train mode (calls switch to eval)."""
    torch.manual_seed(0)
    if kind == "mlp-mse":
        model, x = BNNet().double(), torch.randn(n, 3, generator=gen, dtype=torch.float64)
        y, loss_fn = torch.randn(n, 3, generator=gen, dtype=torch.float64), F.mse_loss
    else:
        model, x = TinyCNN().double(), torch.randn(n, 1, 4, 4, generator=gen, dtype=torch.float64)
        y, loss_fn = torch.randint(0, 3, (n,), generator=gen), F.cross_entropy
    model.train()
    with torch.no_grad():
        model(x)
    return model, (x, y), loss_fn


def _shifted(model, directions, coords):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in m.named_parameters():
            p += sum(c * d[k] for c, d in zip(coords, directions))
    return m


CASES = ["mlp-mse", "cnn-ce"]


@pytest.mark.parametrize("kind", CASES)
def test_density_moments_and_extremes_match_the_dense_spectrum(kind, gen):
    model, (x, y), loss_fn = _case(kind, gen)
    snap = snapshot(model)
    H, _ = _dense(model, x, y, loss_fn)
    ev = np.linalg.eigvalsh(H.numpy())
    n = len(ev)
    d = hessian_density(model, (x, y), loss_fn=loss_fn, runs=12, steps=30, device="cpu", dtype=torch.float64)
    assert_unchanged(model, snap)
    assert d.n_params == n and d.ritz_values.shape == d.weights.shape == (12, 30)
    m1, e1 = d.moment(1)
    m2, e2 = d.moment(2)
    # Hutchinson's error alone: the quadrature is exact for degree <= 2 * 30 - 1 per probe
    assert abs(m1 - ev.sum() / n) <= 4 * e1 and e1 < 0.5 * abs(ev).mean()
    assert abs(m2 - (ev ** 2).sum() / n) <= 4 * e2
    assert d.trace[0] == pytest.approx(n * m1)
    np.testing.assert_allclose(d.extremes(), (ev[0], ev[-1]), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(d.top(2), ev[::-1][:2], rtol=1e-6)
    np.testing.assert_allclose(d.weights.sum(axis=1), 1.0, rtol=1e-10)
    assert np.trapezoid(d.density, d.grid) == pytest.approx(1.0, abs=1e-3)


def test_density_is_reproducible_by_seed(gen):
    model, data, loss_fn = _case("mlp-mse", gen)
    kw = dict(loss_fn=loss_fn, runs=3, steps=8, device="cpu", dtype=torch.float64)
    a, b, c = (hessian_density(model, data, seed=s, **kw) for s in (5, 5, 6))
    assert np.array_equal(a.density, b.density) and np.array_equal(a.ritz_values, b.ritz_values)
    assert not np.allclose(a.ritz_values, c.ritz_values)


@pytest.mark.parametrize("kind", CASES)
def test_smallest_eigenpairs_match_dense(kind, gen):
    model, (x, y), loss_fn = _case(kind, gen)
    H, names = _dense(model, x, y, loss_fn)
    ev = np.linalg.eigvalsh(H.numpy())
    vecs, vals = hessian_eigenpairs(model, (x, y), loss_fn=loss_fn, n=2, which="smallest", max_iter=60,
                                    device="cpu", dtype=torch.float64)
    np.testing.assert_allclose(vals, ev[:2], rtol=1e-6, atol=1e-9)
    assert vals[0] < 0 and vecs.info["which"] == "smallest"
    v = torch.cat([vecs[0][k].reshape(-1) for k in names])
    torch.testing.assert_close(H @ v, vals[0] * v, rtol=0, atol=1e-4 * abs(ev).max())


def test_which_must_name_an_end(gen):
    model, data, loss_fn = _case("mlp-mse", gen)
    with pytest.raises(ValueError, match="`which` must be one of \\['largest', 'smallest'\\]"):
        hessian_eigenpairs(model, data, loss_fn=loss_fn, which="middle")


@pytest.mark.parametrize("kind", CASES)
def test_curvature_surface_matches_a_per_point_loop(kind, gen):
    model, (x, y), loss_fn = _case(kind, gen)
    snap = snapshot(model)
    dirs = fastscape.random_directions(model, 2, seed=0)
    grid = [(-0.5, 0.5, 3), (-0.5, 0.5, 2)]  # non-square: the orientation is kept
    s = curvature_surface(model, (x, y), dirs, loss_fn=loss_fn, grid=grid, max_iter=51, tol=1e-6,
                          trace_probes=10, chunk_size=4, device="cpu", dtype=torch.float64)
    assert_unchanged(model, snap)
    assert s.loss.shape == (3, 2) and set(s.metrics) >= {"lambda_max", "lambda_min", "ratio", "trace"}
    for i, a in enumerate(s.coords[0]):
        for j, b in enumerate(s.coords[1]):
            m = _shifted(model, dirs, (a, b))
            kw = dict(loss_fn=loss_fn, n=1, max_iter=60, device="cpu", dtype=torch.float64)
            top = hessian_eigenpairs(m, (x, y), **kw)[1][0]
            low = hessian_eigenpairs(m, (x, y), which="smallest", **kw)[1][0]
            H, _ = _dense(m, x, y, loss_fn)
            assert s.metrics["lambda_max"][i, j] == pytest.approx(top, rel=1e-6, abs=1e-9)
            assert s.metrics["lambda_min"][i, j] == pytest.approx(low, rel=1e-6, abs=1e-9)
            assert s.metrics["ratio"][i, j] == pytest.approx(abs(low / top), rel=1e-5)
            assert abs(s.metrics["trace"][i, j] - float(torch.trace(H))) <= 4 * s.metrics["trace_stderr"][i, j]
            assert s.loss[i, j] == pytest.approx(float(loss_fn(m.eval()(x), y).detach()), rel=1e-10)
    np.testing.assert_array_equal(s.metrics["converged"], np.ones((3, 2)))  # 51 steps: tol reached
    for name in ("lambda_max", "ratio", "trace"):  # every value is drawable by name
        assert s.value(name).data.shape == (3, 2)


def test_curvature_surface_does_not_depend_on_the_chunk(gen):
    model, data, loss_fn = _case("mlp-mse", gen)
    dirs = fastscape.random_directions(model, 2, seed=1)
    kw = dict(loss_fn=loss_fn, grid=3, max_iter=51, tol=1e-8, device="cpu", dtype=torch.float64)
    a = curvature_surface(model, data, dirs, chunk_size=9, **kw)
    b = curvature_surface(model, data, dirs, chunk_size=2, **kw)
    for name in ("lambda_max", "lambda_min", "trace"):
        np.testing.assert_allclose(a.metrics[name], b.metrics[name], rtol=1e-7, atol=1e-10)


def test_curvature_surface_diverging_points_are_nan(gen):
    model, data, loss_fn = _case("mlp-mse", gen)
    model = model.float()
    x, y = (t.float() for t in data)
    dirs = fastscape.random_directions(model, 1, seed=0)
    s = curvature_surface(model, (x, y), dirs, loss_fn=loss_fn, grid=[np.array([0.0, 1e38])], max_iter=20,
                          tol=1e-2, device="cpu")
    assert np.isfinite(s.metrics["lambda_max"][0]) and np.isnan(s.metrics["lambda_max"][1])
    assert s.metrics["converged"][0] in (0.0, 1.0) and np.isnan(s.metrics["converged"][1])


def test_curvature_surface_warns_when_lanczos_stops_early(gen):
    model, data, loss_fn = _case("cnn-ce", gen)
    dirs = fastscape.random_directions(model, 1, seed=0)
    with pytest.warns(ConvergenceWarning, match="2 of 2 points reached `max_iter`=3"):
        s = curvature_surface(model, data, dirs, loss_fn=loss_fn, grid=(-1, 1, 2), max_iter=3, tol=1e-12,
                              device="cpu", dtype=torch.float64)
    np.testing.assert_array_equal(s.metrics["converged"], [0.0, 0.0])  # where they are: both points


@pytest.mark.parametrize("kw, match", [
    (dict(max_iter=0), "`max_iter` must be"),
    (dict(trace_probes=0), "`trace_probes` must be"),
    (dict(tol=-1.0), "`tol` must be"),
])
def test_curvature_surface_bad_arguments(kw, match, gen):
    model, data, loss_fn = _case("mlp-mse", gen)
    dirs = fastscape.random_directions(model, 1, seed=0)
    with pytest.raises(ValueError, match=match):
        curvature_surface(model, data, dirs, loss_fn=loss_fn, **kw)


def test_curvature_surface_refuses_directions_moving_buffers(gen):
    model, data, loss_fn = _case("mlp-mse", gen)
    dirs = fastscape.random_directions(model, 1, seed=0, states=True)
    dirs[0]["bn.running_mean"] = torch.ones(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="`directions` move buffer"):
        curvature_surface(model, data, dirs, loss_fn=loss_fn)
