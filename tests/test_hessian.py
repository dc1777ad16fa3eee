"""Curvature against the dense Hessian of small float64 models
(``torch.autograd.functional.hessian`` on a flat parameter vector)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import fastscape
from fastscape._hessian import _lanczos
from fastscape._core.params import model_parameters
from tests.models import assert_unchanged as _assert_unchanged
from tests.models import snapshot as _snapshot
from tests.reference import loop_surface


class BNNet(nn.Module):
    """Linear -> BatchNorm -> tanh -> dropout -> linear: eval mode matters for both."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 5)
        self.bn = nn.BatchNorm1d(5)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.bn(self.fc1(x)))))


def _setup(gen, n=37):
    torch.manual_seed(0)
    model = BNNet().double()
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    model.train()
    with torch.no_grad():
        model(x)  # non-trivial running statistics
    return model, x, y


def _dense(model, x, y, loss_fn=F.cross_entropy):
    """The dense Hessian of the full-batch eval-mode loss, over the flat parameters."""
    m = copy.deepcopy(model).eval()
    names = [k for k, _ in m.named_parameters()]
    shapes = [p.shape for p in m.parameters()]
    sizes = [p.numel() for p in m.parameters()]
    buffers = dict(m.named_buffers())
    theta = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def f(t):
        params = {k: v.view(s) for k, v, s in zip(names, torch.split(t, sizes), shapes)}
        return loss_fn(functional_call(m, {**buffers, **params}, (x,)), y)

    return torch.autograd.functional.hessian(f, theta), names


def _flat(d, names):
    return torch.cat([d[k].reshape(-1).double() for k in names])






def test_hessian_vector_product_matches_dense(gen):
    model, x, y = _setup(gen)
    snap = _snapshot(model)
    H, names = _dense(model, x, y)
    v = {k: torch.randn(p.shape, generator=gen, dtype=torch.float64) for k, p in model.named_parameters()}
    # a loader with an uneven last batch: the sample-weighted mean, not a mean of batch means
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
    hv = fastscape.curvature.hessian_vector_product(model, loader, v, loss_fn=F.cross_entropy, device="cpu",
                                          dtype=torch.float64)
    assert list(hv) == names and hv["fc1.weight"].dtype == torch.float64
    torch.testing.assert_close(_flat(hv, names), H @ _flat(v, names), rtol=1e-10, atol=1e-12)
    _assert_unchanged(model, snap)
    assert model.training and model.drop.training


def test_eigenpairs_match_dense_hessian(gen):
    model, x, y = _setup(gen)
    snap = _snapshot(model)
    H, names = _dense(model, x, y)
    evals, evecs = torch.linalg.eigh(H)
    k = 3
    vecs, vals = fastscape.curvature.hessian_eigenpairs(model, (x, y), loss_fn=F.cross_entropy, n=k, tol=1e-10,
                                              max_iter=80, device="cpu", dtype=torch.float64, batch_size=20)
    _assert_unchanged(model, snap)
    ref = evals.flip(0)[:k].numpy()
    assert vals.shape == (k,) and np.all(np.diff(vals) <= 0)
    np.testing.assert_allclose(vals, ref, rtol=1e-4)
    assert np.min(np.abs(np.diff(evals.flip(0)[: k + 1].numpy()))) > 1e-3  # distinct: vectors are defined
    for i in range(k):
        got = _flat(vecs[i], names)
        assert float(got.norm()) == pytest.approx(1.0, abs=1e-10)
        sign = float(torch.sign(got @ evecs[:, -1 - i]))
        torch.testing.assert_close(sign * got, evecs[:, -1 - i], rtol=0, atol=1e-6)
    assert isinstance(vecs, fastscape.Directions) and vecs.info["kind"] == "hessian"
    assert vecs.info["converged"] is True and vecs.info["iterations"] <= 80


def test_float32_default_agrees_with_float64(gen):
    model, x, y = _setup(gen)
    H, _ = _dense(model, x, y)
    top = float(torch.linalg.eigvalsh(H)[-1])
    m32 = copy.deepcopy(model).float()
    vecs, vals = fastscape.curvature.hessian_eigenpairs(m32, (x.float(), y), loss_fn=F.cross_entropy, n=1, device="cpu")
    assert vals[0] == pytest.approx(top, rel=1e-4)
    assert vecs[0]["fc1.weight"].dtype == torch.float32


def test_top_eigenvector_is_a_direction_sharpness_view(gen):
    # along a unit eigenvector, the second difference of the surface is the eigenvalue
    model, x, y = _setup(gen)
    vecs, vals = fastscape.curvature.hessian_eigenpairs(model, (x, y), loss_fn=F.cross_entropy, n=2, tol=1e-10,
                                              device="cpu", dtype=torch.float64)
    h = 1e-3
    line = fastscape.loss_surface(model, (x, y), vecs[:1], loss_fn=F.cross_entropy,
                                  grid=[np.array([-h, 0.0, h])], device="cpu", dtype=torch.float64)
    curvature = (line.loss[0] - 2 * line.loss[1] + line.loss[2]) / h ** 2
    assert curvature == pytest.approx(vals[0], rel=1e-4)
    assert line.meta["directions"]["kind"] == "hessian"
    # normalised like any other direction, and then a plane like any other
    w = model_parameters(model)
    plane = [fastscape.normalize(v, w, norm="filter", ignore=None) for v in vecs]
    for k in ("fc1.weight", "fc2.weight"):
        np.testing.assert_allclose(plane[0][k].norm(dim=1).numpy(), w[k].norm(dim=1).numpy(), rtol=1e-10)
    axes = [np.linspace(-0.5, 0.5, 3), np.linspace(-1, 1, 4)]
    surf = fastscape.loss_surface(model, (x, y), plane, loss_fn=F.cross_entropy, grid=axes, device="cpu",
                                  dtype=torch.float64)
    origin = {**w, **dict(model.named_buffers())}
    np.testing.assert_allclose(surf.loss, loop_surface(model, x, y, F.cross_entropy, origin, plane, axes),
                               rtol=1e-10)


def test_hutchinson_trace_within_statistical_tolerance(gen):
    model, x, y = _setup(gen)
    snap = _snapshot(model)
    H, _ = _dense(model, x, y)
    exact = float(H.trace())
    n = 300
    est, se = fastscape.curvature.hessian_trace(model, (x, y), loss_fn=F.cross_entropy, tol=1.0, max_iter=n, min_iter=n,
                                      block=50, seed=1, device="cpu", dtype=torch.float64)
    _assert_unchanged(model, snap)
    # Var(v^T H v) for Rademacher v is 2 * sum_{i != j} H_ij^2
    sigma = float(torch.sqrt(2 * ((H ** 2).sum() - (H.diagonal() ** 2).sum())))
    assert abs(est - exact) < 5 * sigma / np.sqrt(n)
    assert se == pytest.approx(sigma / np.sqrt(n), rel=0.3)  # the reported error is the real one


def test_trace_stops_at_tolerance_and_warns_at_the_cap(gen):
    model, x, y = _setup(gen)
    est, se = fastscape.curvature.hessian_trace(model, (x, y), loss_fn=F.cross_entropy, tol=0.15, max_iter=2000,
                                      device="cpu", dtype=torch.float64)
    assert se <= 0.15 * abs(est)
    with pytest.warns(fastscape.curvature.ConvergenceWarning, match=r"hessian_trace stopped at `max_iter`=4 probes"):
        fastscape.curvature.hessian_trace(model, (x, y), loss_fn=F.cross_entropy, tol=1e-9, max_iter=4, min_iter=2,
                                device="cpu", dtype=torch.float64)


def test_eigenpairs_warn_at_the_iteration_cap(gen):
    model, x, y = _setup(gen)
    with pytest.warns(fastscape.curvature.ConvergenceWarning,
                      match=r"hessian_eigenpairs stopped at `max_iter`=3 Hessian-vector products"):
        vecs, _ = fastscape.curvature.hessian_eigenpairs(model, (x, y), loss_fn=F.cross_entropy, n=2, tol=1e-12,
                                               max_iter=3, device="cpu", dtype=torch.float64)
    assert vecs.info["converged"] is False and vecs.info["iterations"] == 3


def test_lanczos_restarts_after_an_invariant_subspace():
    # rank-2 operator with a repeated eigenvalue: the Krylov space of one start
    # vector is exhausted after a few steps and must be continued
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    lam = np.array([5.0, 3.0, 3.0, 0, 0, 0, 0, 0, 0, 0, 0, -1.0])
    A = torch.from_numpy(q @ np.diag(lam) @ q.T)
    theta, Y, _, _, converged = _lanczos(lambda v: A @ v, 12, 3, tol=1e-10, max_iter=12,
                                         generator=torch.Generator().manual_seed(0), device="cpu",
                                         dtype=torch.float64)
    assert converged
    np.testing.assert_allclose(theta, [5.0, 3.0, 3.0], atol=1e-9)
    np.testing.assert_allclose((A @ Y).numpy(), Y.numpy() * theta, atol=1e-8)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(n=0), ValueError, "`n` must be a positive integer; got 0"),
    (dict(n=1000), ValueError, r"`n` must be at most the number of parameters \(48\); got 1000"),
    (dict(tol=0.0), ValueError, "`tol` must be a positive number; got 0.0"),
    (dict(max_iter=1, n=2), ValueError, r"`max_iter` must be at least `n` \(2\); got 1"),
    (dict(loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="none")), ValueError,
     "`loss_fn` must return a scalar tensor"),
    (dict(loss_fn="mse"), TypeError, "`loss_fn` must be callable"),
    (dict(dtype=torch.float16), ValueError, "`dtype` must be torch.float32 or torch.float64"),
])
def test_eigenpair_errors(gen, kwargs, err, match):
    model, x, y = _setup(gen)
    kwargs = {"loss_fn": F.cross_entropy, "device": "cpu", **kwargs}
    with pytest.raises(err, match=match):
        fastscape.curvature.hessian_eigenpairs(model, (x, y), **kwargs)


def test_trace_and_product_errors(gen):
    model, x, y = _setup(gen)
    with pytest.raises(ValueError, match=r"`min_iter` must be at least 2 and at most `max_iter` \(5\); got 10"):
        fastscape.curvature.hessian_trace(model, (x, y), loss_fn=F.cross_entropy, max_iter=5, device="cpu")
    with pytest.raises(ValueError, match="`block` must be a positive integer; got 0"):
        fastscape.curvature.hessian_trace(model, (x, y), loss_fn=F.cross_entropy, block=0, device="cpu")
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module; got dict"):
        fastscape.curvature.hessian_trace({}, (x, y), loss_fn=F.cross_entropy, device="cpu")
    v = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    del v["fc2.bias"]
    with pytest.raises(ValueError, match=r"`vector` has no entry for the model's parameter\(s\) \['fc2.bias'\]"):
        fastscape.curvature.hessian_vector_product(model, (x, y), v, loss_fn=F.cross_entropy, device="cpu")
    v["fc2.bias"] = torch.zeros(4)
    with pytest.raises(ValueError, match=r"`vector\['fc2.bias'\]` has shape \(4,\); the model's parameter has shape \(3,\)"):
        fastscape.curvature.hessian_vector_product(model, (x, y), v, loss_fn=F.cross_entropy, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_eigenpairs_match_cpu(gen):
    model, x, y = _setup(gen)
    _, cpu = fastscape.curvature.hessian_eigenpairs(model, (x, y), loss_fn=F.cross_entropy, n=2, tol=1e-8, device="cpu",
                                          dtype=torch.float64)
    vecs, gpu = fastscape.curvature.hessian_eigenpairs(model, (x, y), loss_fn=F.cross_entropy, n=2, tol=1e-8, device="cuda",
                                             dtype=torch.float64)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-6)
    assert vecs[0]["fc1.weight"].device.type == "cpu"  # on the model's device


# --------------------------------------------------------------------------- against scipy


def test_top_eigenpairs_agree_with_scipy_arpack_on_the_same_products():
    """scipy's ARPACK (implicitly restarted Lanczos) on fastscape's own Hessian-vector products."""
    sla = pytest.importorskip("scipy.sparse.linalg")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
    model = model.double()
    x, y = x.double(), y.double()
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    n = sum(sizes)

    def matvec(v):
        d = {k: torch.from_numpy(np.ascontiguousarray(t)).view(s)
             for k, t, s in zip(names, np.split(np.asarray(v, dtype=np.float64).ravel(), np.cumsum(sizes)[:-1]), shapes)}
        hv = fastscape.curvature.hessian_vector_product(model, (x, y), d, loss_fn=F.mse_loss, device="cpu", dtype="float64")
        return torch.cat([hv[k].reshape(-1) for k in names]).numpy()

    op = sla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    theirs = np.sort(sla.eigsh(op, k=2, which="LA", tol=1e-12, v0=np.ones(n))[0])[::-1]
    _, ours = fastscape.curvature.hessian_eigenpairs(model, (x, y), loss_fn=F.mse_loss, n=2, tol=1e-8, max_iter=n,
                                           device="cpu", dtype="float64")
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-12)
