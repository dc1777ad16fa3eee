"""The "prefix" strategy: what no moving tensor reaches is computed once per data batch.

Reference: a plain float64 per-point loop (tests/reference.py) that loads every grid point into a
copy of the model and calls it, and vmap over the whole model in the same process.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape
from fastscape._core.params import model_parameters
from tests.models import MLP, TinyTransformer, assert_unchanged, snapshot
from tests.reference import loop_surface

AXES = [np.linspace(-1, 1, 4), np.linspace(-0.5, 0.5, 3)]


class Block(nn.Module):
    def __init__(self, c_in, c, stride=1):
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c)
        self.down = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c)) if stride > 1 else None

    def forward(self, x):
        out = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNetLike(nn.Module):
    """A stem, two stages of residual blocks (the second downsampling), pooling and fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 8))
        self.layer2 = nn.Sequential(Block(8, 16, 2))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BlockTransformer(nn.Module):
    """Token embedding, learned positions, a stack of encoder blocks, a tied LM-style head."""

    def __init__(self, vocab=13, d=16, blocks=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(8, d) * 0.1)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
                                    for _ in range(blocks))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied, as in GPT-2

    def forward(self, tokens):
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)).mean(dim=1)


class Untraceable(nn.Module):
    """Python control flow on a tensor value in the root forward: no graph can be captured."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if h.sum() > -1e9:
            h = h * 1.0
        return self.b(h)


def _surfaces(model, data, dirs, loss_fn, strategies):
    out = {}
    for name in strategies:
        s = fastscape.loss_surface(model, data, dirs, loss_fn=loss_fn, grid=AXES, strategy=name, progress=False)
        out[name] = s
    return out


def _check(model, x, y, loss_fn, params, *, tol=2e-5):
    torch.manual_seed(0)
    dirs = fastscape.random_directions(model, 2, seed=0, params=params)
    snap = snapshot(model)
    got = _surfaces(model, (x, y), dirs, loss_fn, ["prefix", "vmap", "auto"])
    assert_unchanged(model, snap)
    ref = loop_surface(model, x, y, loss_fn, model_parameters(model), dirs, AXES)
    for name, s in got.items():
        np.testing.assert_allclose(s.loss, ref, rtol=tol, atol=tol, err_msg=name)
    assert got["prefix"].meta["strategy"] == "prefix"
    return got


def test_mlp_last_layer():
    model = MLP().eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 5, generator=g), torch.randn(40, 3, generator=g)
    _check(model, x, y, F.mse_loss, "net.4")


@pytest.mark.parametrize("params", ["fc", "layer2", ["layer1.1", "fc"]])
def test_resnet_like_with_only_the_last_parts_moving(params):
    torch.manual_seed(0)
    model = ResNetLike().eval()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(24, 3, 8, 8, generator=g), torch.randint(0, 5, (24,), generator=g)
    _check(model, x, y, F.cross_entropy, params, tol=5e-5)


def test_transformer_last_block_and_tied_embedding():
    torch.manual_seed(0)
    model = BlockTransformer().eval()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randint(0, 13, (12, 8), generator=g), torch.randn(12, 13, generator=g)
    _check(model, x, y, F.mse_loss, ["blocks.2", "norm"], tol=5e-5)
    # the tied embedding moves the input embedding and the head alike, once (only the positions' slice
    # is frozen work)
    _check(model, x, y, F.mse_loss, "embed", tol=5e-5)


def test_an_opaque_transformer_encoder_is_kept_whole():
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randint(0, 11, (16, 6), generator=g), torch.randint(0, 3, (16,), generator=g)
    _check(model, x, y, F.cross_entropy, "head", tol=5e-5)


def test_an_untraceable_model_falls_back_cleanly():
    model = Untraceable().eval()
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(20, 4, generator=g), torch.randn(20, 2, generator=g)
    dirs = fastscape.random_directions(model, 2, seed=0, params="b")
    with pytest.raises(ValueError, match=r"strategy='prefix'.*torch.fx cannot capture the model's graph"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=AXES, strategy="prefix", progress=False)
    s = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=AXES, chunk_size=2, progress=False)
    assert s.meta["strategy"] != "prefix"
    assert any("prefix skipped (torch.fx cannot capture" in n for n in s.meta["notes"])
    np.testing.assert_allclose(s.loss, loop_surface(model, x, y, F.mse_loss, model_parameters(model), dirs, AXES),
                               rtol=2e-5, atol=2e-5)


def test_chunks_are_sized_by_the_moving_part():
    """With only fc moving, a 21x21 plane is one chunk (the whole model's plan gives a few points)."""
    torch.manual_seed(0)
    model = ResNetLike().eval()
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 5, (64,), generator=g)
    dirs = fastscape.random_directions(model, 2, seed=0, params="fc")
    whole = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 21), strategy="vmap",
                                   progress=False)
    prefix = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 21),
                                    strategy="prefix", progress=False)
    assert whole.meta["chunk_size"] < 21 * 21
    assert prefix.meta["chunk_size"] == 21 * 21
    np.testing.assert_allclose(prefix.loss, whole.loss, rtol=1e-5, atol=1e-6)
