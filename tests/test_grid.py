"""The grid argument: a grid too large to hold is refused before anything is allocated."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape


def _small_setup():
    """A 3 -> 4 -> 1 tanh regressor and 8 samples."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    return model, torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)


def test_grid_too_large_says_points_and_bytes_before_allocating():
    model, x, y = _small_setup()
    dirs = fastscape.random_directions(model, 2, seed=0)
    # 10^14 points: numpy used to try to allocate TiB before saying anything
    with pytest.raises(ValueError, match=r"`grid` has 100000000000000 points \(10000000 x 10000000\).*[PT]iB"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=(-1, 1, 10**7))
