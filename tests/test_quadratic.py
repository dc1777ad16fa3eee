"""The "quadratic" strategy: mean squared error of a model ending in an nn.Linear, as a quadratic
form in that layer's weights, against the plain per-point loop of tests/reference.py."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape
from tests.reference import loop_surface

AXES = [np.linspace(-1.5, 1.5, 7), np.linspace(-1, 2, 6)]


class Regressor(nn.Module):
    def __init__(self, d_in=3, hidden=5, d_out=2, bias=True):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, d_out, bias=bias)

    def forward(self, x):
        return self.head(self.body(x))


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _split_dirs(model, gen, head_only=(True, False)):
    """Two directions: one over the head only, the other over the rest (or both over the head)."""
    dirs = []
    for only in head_only:
        dirs.append({n: (torch.randn(p.shape, generator=gen) * 0.5 if n.startswith("head.") == only
                         else torch.zeros(p.shape)) for n, p in model.named_parameters()})
    return dirs


def _case(gen, bias=True, d_out=2):
    torch.manual_seed(4)
    model = Regressor(d_out=d_out, bias=bias)
    x = torch.randn(50, 3, generator=gen)
    y = torch.randn(50, d_out, generator=gen)
    return model, x, y


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("head_only", [(True, False), (False, True), (True, True)], ids=["head-rest", "rest-head",
                                                                                       "head-head"])
def test_quadratic_matches_the_loop(bias, head_only, gen):
    model, x, y = _case(gen, bias)
    dirs = _split_dirs(model, gen, head_only)
    ref = loop_surface(model, x, y, F.mse_loss, _params(model), dirs, AXES)
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=AXES, strategy="quadratic",
                                  batch_size=16, progress=False)
    assert surf.meta["strategy"] == "quadratic"
    np.testing.assert_allclose(surf.loss, ref, rtol=1e-5, atol=1e-7)
    exact = fastscape.loss_surface(model, (x, y), dirs, loss_fn=nn.MSELoss(), grid=AXES, strategy="quadratic",
                                   dtype=torch.float64, progress=False)
    np.testing.assert_allclose(exact.loss, ref, rtol=1e-10)


def test_auto_takes_quadratic_for_the_seed_net_and_it_matches_vmap(monkeypatch):
    """With injected timings (affine 1.2x faster per point than quadratic, within one step of
    structural rank; the rest slower) auto takes the quadratic form; its values are vmap's. A
    loaded machine cannot change the pick: the fake clock advances only by these costs."""
    from tests.fake_clock import FakeClock

    FakeClock({"quadratic": 1.2e-6, "affine": 1e-6, "prefix": 3e-6, "mlp": 3e-6, "vmap": 5e-6, "loop": 9e-6}
              ).install(monkeypatch)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Tanh(), nn.Linear(1, 1, bias=False))
    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 1, generator=g) * 2
    y = torch.sin(x) + 0.1 * torch.randn(300, 1, generator=g)
    names = ["0.weight", "2.weight"]
    dirs, origin = fastscape.axis_directions(model, names), fastscape.axis_origin(model, names, at="zero")
    kw = dict(origin=origin, loss_fn=F.mse_loss, grid=(-2.0, 2.0, 61), progress=False)
    auto = fastscape.loss_surface(model, (x, y), list(dirs), **kw)
    assert auto.meta["strategy"] == "quadratic"
    plain = fastscape.loss_surface(model, (x, y), list(dirs), strategy="vmap", **kw)
    np.testing.assert_allclose(auto.loss, plain.loss, rtol=1e-5)


def test_quadratic_refuses_what_it_cannot_compute_and_says_why(gen):
    model, x, y = _case(gen)
    dirs = _split_dirs(model, gen)
    kw = dict(grid=3, strategy="quadratic", progress=False)
    with pytest.raises(ValueError, match="strategy='quadratic'.*not F.mse_loss"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.l1_loss, **kw)
    with pytest.raises(ValueError, match="not F.mse_loss .mean. with no metrics"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, metrics={"l1": F.l1_loss}, **kw)
    with pytest.raises(ValueError, match="every direction moves layers before the output layer"):
        fastscape.loss_surface(model, (x, y), _split_dirs(model, gen, (False, False)), loss_fn=F.mse_loss, **kw)
    m1, x1, _ = _case(gen, d_out=1)
    with pytest.raises(ValueError, match=r"targets' shape \(50,\) is not the output's \(50, 1\)"), \
            pytest.warns(UserWarning, match="target size"):  # PyTorch's own warning, from the first probe
        fastscape.loss_surface(m1, (x1, torch.randn(50)), _split_dirs(m1, gen), loss_fn=F.mse_loss, **kw)

    class Scaled(Regressor):  # the output is not the head's
        def forward(self, x):
            return 2 * self.head(self.body(x))

    scaled = Scaled()
    with pytest.raises(ValueError, match="not the output of an nn.Linear"):
        fastscape.loss_surface(scaled, (x, y), _split_dirs(scaled, gen), loss_fn=F.mse_loss, **kw)
