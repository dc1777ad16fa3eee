"""An error inside the model's forward names the layer it happened in and the input shape that
reached it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape


class _SmallNet(nn.Module):
    def __init__(self, d_in=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, 4), nn.Tanh(), nn.Linear(4, 1))

    def forward(self, x):
        return self.net(x)


def _small_setup(n=8, d_in=3):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = _SmallNet()
    return model, torch.randn(n, d_in, generator=g), torch.randn(n, 1, generator=g)


def test_feature_width_mismatch_names_the_input_shape_and_the_layer():
    model, x, y = _small_setup(d_in=5)  # data with 5 features; the model takes 3
    dirs = fastscape.random_directions(model, 1, seed=0)
    with pytest.raises(RuntimeError) as info:
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=3, device="cpu")
    msg = str(info.value).splitlines()[0]  # the CLI prints the first line only
    assert "(8, 5)" in msg and "`net.0`" in msg and "in_features=3" in msg, msg
    with pytest.raises(RuntimeError) as info:
        fastscape.curvature.hessian_trace(model, (x, y), loss_fn=F.mse_loss, device="cpu")
    msg = str(info.value).splitlines()[0]
    assert "(8, 5)" in msg and "`net.0`" in msg and "in_features=3" in msg, msg
