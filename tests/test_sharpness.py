"""Sharpness measures against closed forms on a quadratic model, and against a plain per-point loop."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fastscape._curvature import sharpness
from fastscape.curvature import adaptive_sharpness, epsilon_sharpness, mc_sharpness
from tests.models import assert_unchanged, snapshot
from tests.test_curvature import _case

F64 = dict(device="cpu", dtype=torch.float64)


class Linear(nn.Module):
    """``x @ theta``: with MSE the loss is quadratic in ``theta``."""

    def __init__(self, theta):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x):
        return x @ self.theta


def _quadratic():
    """A model at the minimum of ``L(theta) = mean((X theta - y)^2)`` with ``X^T X / N = diag(s)``:
    ``L(theta + z) = L(theta) + sum_i s_i z_i^2``, ``L(theta) > 0`` (residual orthogonal to X)."""
    s = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    d, N = 5, 40
    X = torch.zeros(N, d, dtype=torch.float64)
    X[torch.arange(N), torch.arange(N) % d] = 1.0
    X = X * torch.sqrt(s * d)
    theta = torch.tensor([0.3, -1.0, 2.0, 0.0, -0.5], dtype=torch.float64)
    e = 0.3 * (-1.0) ** (torch.arange(N, dtype=torch.float64) // d)  # zero mean per coordinate's rows
    y = X @ theta + e
    assert torch.allclose(X.T @ e, torch.zeros(d, dtype=torch.float64), atol=1e-12)
    return Linear(theta), (X, y), s, theta, float((e ** 2).mean())


def test_epsilon_sharpness_closed_form():
    model, data, s, theta, L0 = _quadratic()
    snap = snapshot(model)
    r = 1e-2 * (theta.abs() + 1)  # Keskar's box: the maximum is at a corner, sum_i s_i r_i^2
    expected = 100 * float((s * r ** 2).sum()) / (1 + L0)
    got = epsilon_sharpness(model, data, loss_fn=F.mse_loss, epsilon=1e-2, **F64)
    assert got == pytest.approx(expected, rel=1e-9)
    assert_unchanged(model, snap)
    # sampling alone stays inside the box: below the maximum
    assert 0 < epsilon_sharpness(model, data, loss_fn=F.mse_loss, epsilon=1e-2, steps=0, **F64) < expected


def test_a_single_ascent_start_reaches_the_closed_form():
    """``starts=1``: the one ascent path ends at one point, evaluated alone (a job of one point,
    where nothing differs between points)."""
    model, data, s, theta, L0 = _quadratic()
    r = 1e-2 * (theta.abs() + 1)
    expected = 100 * float((s * r ** 2).sum()) / (1 + L0)
    got = epsilon_sharpness(model, data, loss_fn=F.mse_loss, epsilon=1e-2, starts=1, **F64)
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("p", ["2", "inf"])
def test_adaptive_sharpness_closed_form(p):
    model, data, s, theta, _ = _quadratic()
    t = theta.abs() + 0.01  # T_w; in u = T_w^{-1} e the loss rise is sum_i s_i t_i^2 u_i^2
    c = s * t ** 2
    rho = 0.1
    expected = rho ** 2 * float(c.max() if p == "2" else c.sum())
    got = adaptive_sharpness(model, data, loss_fn=F.mse_loss, rho=rho, p=p, eta=0.01, steps=30, **F64)
    assert got == pytest.approx(expected, rel=1e-6)


def test_mc_sharpness_closed_form():
    model, data, s, _, _ = _quadratic()
    sigma = 0.1
    mean, err = mc_sharpness(model, data, loss_fn=F.mse_loss, sigma=sigma, samples=512, **F64)
    expected = sigma ** 2 * float(s.sum())  # E[sum_i s_i d_i^2] = sigma^2 tr(H) / 2
    assert abs(mean - expected) <= 4 * err and err < 0.1 * expected


@pytest.mark.parametrize("kind", ["mlp-mse", "cnn-ce"])
def test_mc_sharpness_matches_a_per_point_loop(kind, gen):
    model, (x, y), loss_fn = _case(kind, gen)
    snap = snapshot(model)
    mean, err = mc_sharpness(model, (x, y), loss_fn=loss_fn, sigma=0.05, samples=6, seed=3, **F64)
    assert_unchanged(model, snap)
    # the loop: the same draws (sample i from a generator seeded base + i), loaded into a copy of the model
    base = sharpness.seed_base(3)
    n = sum(p.numel() for p in model.parameters())
    D = [torch.randn(n, generator=torch.Generator().manual_seed(base + i), dtype=torch.float64) for i in range(6)]
    ref = copy.deepcopy(model).eval()
    base = float(loss_fn(ref(x), y).detach())
    rises = []
    for row in D:
        m = copy.deepcopy(ref)
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector(m.parameters()) + 0.05 * row,
                                                m.parameters())
            rises.append(float(loss_fn(m(x), y)) - base)
    assert mean == pytest.approx(np.mean(rises), rel=1e-9, abs=1e-12)
    assert err == pytest.approx(np.std(rises, ddof=1) / np.sqrt(6), rel=1e-6)


@pytest.mark.parametrize("kind", ["mlp-mse", "cnn-ce"])
def test_worst_case_sharpness_on_real_models(kind, gen):
    """Ascent from the best samples only raises the estimate; the model is left as it was."""
    model, data, loss_fn = _case(kind, gen)
    snap = snapshot(model)
    kw = dict(loss_fn=loss_fn, samples=16, **F64)
    sampled = epsilon_sharpness(model, data, epsilon=5e-2, steps=0, **kw)
    ascended = epsilon_sharpness(model, data, epsilon=5e-2, steps=3, **kw)
    assert 0 < sampled <= ascended
    a = adaptive_sharpness(model, data, rho=0.05, steps=3, **kw)
    assert a > 0 and np.isfinite(a)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("fn, kw, match", [
    (epsilon_sharpness, dict(epsilon=0.0), "`epsilon` must be"),
    (epsilon_sharpness, dict(steps=-1), "`steps` must be a non-negative int"),
    (adaptive_sharpness, dict(p="1"), "`p` must be one of \\['inf', '2'\\]"),
    (adaptive_sharpness, dict(eta=-1.0), "`eta` must be a non-negative number"),
    (mc_sharpness, dict(samples=1), "`samples` must be at least 2"),
    (mc_sharpness, dict(sigma=-0.1), "`sigma` must be"),
])
def test_bad_arguments(fn, kw, match):
    model, data, *_ = _quadratic()
    with pytest.raises(ValueError, match=match):
        fn(model, data, loss_fn=F.mse_loss, **kw)


class _Largest(TorchDispatchMode):
    """Records the most elements of any tensor an operation returns."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.most = max([self.most, *sizes])
        return out


@pytest.mark.parametrize("fn, kw", [(mc_sharpness, {}), (epsilon_sharpness, dict(steps=1)),
                                    (adaptive_sharpness, dict(steps=0))])
def test_samples_are_made_a_chunk_at_a_time(fn, kw):
    """64 samples of a 10k-parameter model, 4 a chunk: no tensor ever holds all of them (a
    ResNet-18's 256 samples would be 11 GB at once)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(200, 50), nn.Tanh(), nn.Linear(50, 1))
    x, y = torch.randn(32, 200), torch.randn(32, 1)
    n = sum(p.numel() for p in model.parameters())
    with _Largest() as seen:
        value = fn(model, (x, y), loss_fn=F.mse_loss, samples=64, chunk_size=4, device="cpu", **kw)
    assert np.all(np.isfinite(value))
    assert seen.most <= 8 * n, f"a tensor of {seen.most} elements: {seen.most / n:.0f} samples at once"


def test_draws_have_their_distributions_and_do_not_depend_on_the_chunk():
    base, n, count = sharpness.seed_base(0), 3, 4000
    ball = torch.stack([sharpness.draw("2", n, base, i, torch.float64) for i in range(count)])
    radii = ball.norm(dim=1)
    assert float(radii.max()) <= 1.0
    # uniform in the unit 3-ball: P(|u| < 1/2) = 1/8; within 5 binomial standard errors
    assert abs(float((radii < 0.5).double().mean()) - 0.125) < 5 * (0.125 * 0.875 / count) ** 0.5
    box = torch.stack([sharpness.draw("inf", n, base, i, torch.float64) for i in range(count)])
    assert float(box.abs().max()) <= 1.0 and abs(float(box.mean())) < 5 * (1 / 3 / (count * n)) ** 0.5
    normal = torch.stack([sharpness.draw("normal", n, base, i, torch.float64) for i in range(count)])
    assert abs(float(normal.mean())) < 5 / (count * n) ** 0.5 and abs(float(normal.var()) - 1) < 0.05
    # a chunk of two samples at a time gives the same estimate as the evaluator's own chunks
    model, data, _, _, _ = _quadratic()
    kw = dict(loss_fn=F.mse_loss, sigma=0.1, samples=9, **F64)
    assert mc_sharpness(model, data, chunk_size=2, **kw) == pytest.approx(mc_sharpness(model, data, **kw), rel=1e-12)
