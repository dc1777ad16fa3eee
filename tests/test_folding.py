"""Eval-mode BatchNorm folded into the layer before it, and the first-layer affine rule
for convolutions (issue 12), each against the plain per-point loop of tests/reference.py.

Only the public API is used.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape
from tests.models import SmallCNN, assert_unchanged, snapshot, trained_bn_stats
from tests.reference import loop_surface

AXES = [np.linspace(-1, 1, 5), np.linspace(-0.5, 1.5, 4)]
STRATEGIES = ["vmap", "loop", "affine"]


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _dirs(model, gen, scale=0.3, buffers=False):
    """Random directions over every parameter (BatchNorm's weight and bias included) and,
    with ``buffers``, BatchNorm's running statistics (the variance kept positive)."""
    dirs = []
    for _ in range(2):
        d = {n: torch.randn(p.shape, generator=gen) * scale for n, p in model.named_parameters()}
        if buffers:
            for n, b in model.named_buffers():
                if n.endswith("running_mean"):
                    d[n] = torch.randn(b.shape, generator=gen) * scale
                elif n.endswith("running_var"):
                    d[n] = b * 0.4 * torch.rand(b.shape, generator=gen)  # var * (1 + 0.4 u c) > 0 on [-1, 1.5]
        dirs.append(d)
    return dirs


def _folded(surface) -> bool:
    return any("BatchNorm" in n and "folded" in n for n in surface.meta["notes"])


class LinearBN(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x):
        return self.net(x)


def _bn_case(name, gen):
    torch.manual_seed(5)
    if name == "cnn":
        model = SmallCNN()
        x, y = torch.randn(24, 1, 8, 8, generator=gen), torch.randint(0, 4, (24,), generator=gen)
    else:
        model = LinearBN()
        x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    trained_bn_stats(model, x)  # non-trivial running statistics; the model stays in train mode
    assert model.training
    return model, x, y


def _surface(model, x, y, dirs, strategy, dtype=torch.float32, **kw):
    return fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=AXES, strategy=strategy,
                                  dtype=dtype, progress=False, device="cpu", **kw)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("buffers", [False, True], ids=["params", "params+stats"])
@pytest.mark.parametrize("case", ["cnn", "linear"])
def test_batchnorm_folded_equals_the_unfolded_model(case, buffers, strategy, gen):
    model, x, y = _bn_case(case, gen)
    snap = snapshot(model)
    dirs = _dirs(model, gen, buffers=buffers)
    origin = {**_params(model), **{n: b.clone() for n, b in model.named_buffers() if n in dirs[0]}}
    ref = loop_surface(model, x, y, F.cross_entropy, origin, dirs, AXES)  # float64, unfolded, eval mode
    surf = _surface(model, x, y, dirs, strategy, chunk_size=7)
    assert surf.meta["strategy"] == strategy
    assert _folded(surf), f"no BatchNorm was folded: {surf.meta['notes']}"
    np.testing.assert_allclose(surf.loss, ref, rtol=2e-5, atol=1e-6)  # float32 rounding
    exact = _surface(model, x, y, dirs, strategy, dtype=torch.float64, chunk_size=7)
    np.testing.assert_allclose(exact.loss, ref, rtol=1e-10)
    assert_unchanged(model, snap)  # weights, statistics, and still in train mode
    assert model.training and all(m.training for m in model.modules())


def test_batchnorm_not_after_a_layer_is_left_alone(gen):
    # BatchNorm on the raw input has no layer to fold into; a BatchNorm fed by something else
    # than the layer before it in the Sequential (a residual sum) neither
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn0 = nn.BatchNorm1d(6)
            self.fc = nn.Linear(6, 6)
            self.bn = nn.BatchNorm1d(6)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            h = self.bn0(x)
            return self.head(torch.relu(self.bn(self.fc(h) + h)))

    torch.manual_seed(0)
    model = Odd()
    x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    trained_bn_stats(model, x)
    dirs = _dirs(model, gen)
    ref = loop_surface(model, x, y, F.cross_entropy, _params(model), dirs, AXES)
    for strategy in ("vmap", "loop"):
        surf = _surface(model, x, y, dirs, strategy)
        np.testing.assert_allclose(surf.loss, ref, rtol=2e-5, atol=1e-6)
        assert not _folded(surf)


# ----------------------------------------------------------------------------- the affine conv rule


class FirstConv(nn.Module):
    """One convolution on the raw input (any of the variants below), then a small head."""

    def __init__(self, conv: nn.Module, after=()):
        super().__init__()
        self.body = nn.Sequential(conv, *after, nn.ReLU(), nn.Flatten())
        self.head = nn.LazyLinear(3)

    def forward(self, x):
        return self.head(self.body(x))


CONVS = {
    "conv2d": lambda: nn.Conv2d(2, 4, 3, padding=1),
    "stride_nobias": lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False),
    "dilated": lambda: nn.Conv2d(2, 4, 3, dilation=2, padding=2),
    "circular": lambda: nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular"),
    "grouped": lambda: nn.Conv2d(2, 4, 3, padding=1, groups=2),
    "conv1d": lambda: nn.Conv1d(2, 4, 3, padding=1),
}


def _conv_case(name, gen, bn=False):
    torch.manual_seed(2)
    conv = CONVS[name]()
    shape = (20, 2, 9) if name == "conv1d" else (20, 2, 8, 8)
    x, y = torch.randn(*shape, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    after = [nn.BatchNorm1d(4) if name == "conv1d" else nn.BatchNorm2d(4)] if bn else []
    model = FirstConv(conv, after)
    trained_bn_stats(model, x)  # also materialises the lazy head
    return model.eval(), x, y


@pytest.mark.parametrize("bn", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("name", list(CONVS))
def test_affine_conv_rule_matches_the_loop(name, bn, gen):
    model, x, y = _conv_case(name, gen, bn)
    dirs = _dirs(model, gen)
    ref = loop_surface(model, x, y, F.cross_entropy, _params(model), dirs, AXES)
    surf = _surface(model, x, y, dirs, "affine", chunk_size=6)
    assert surf.meta["strategy"] == "affine"
    np.testing.assert_allclose(surf.loss, ref, rtol=2e-5, atol=1e-6)
    if bn:  # the first layer's BatchNorm (and the ReLU after it) go into the per-batch table
        assert _folded(surf)


def test_affine_conv_rule_with_directions_that_move_only_the_first_conv(gen):
    # axis-like directions: one moves the first convolution, the other only the head, so the
    # convolution's output is computed once per distinct first coordinate (the deduplicated path)
    model, x, y = _conv_case("conv2d", gen, bn=True)
    dirs = _dirs(model, gen)
    for n in dirs[0]:
        if not n.startswith("body.0."):
            dirs[0][n].zero_()
        else:
            dirs[1][n].zero_()
    ref = loop_surface(model, x, y, F.cross_entropy, _params(model), dirs, AXES)
    for strategy in ("affine", "auto"):
        surf = _surface(model, x, y, dirs, strategy, chunk_size=6)
        np.testing.assert_allclose(surf.loss, ref, rtol=2e-5, atol=1e-6)
