"""The model and device arguments: a model without parameters and a CUDA device on a machine
without CUDA are refused naming the argument."""

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


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")


@NO_CUDA
def test_cuda_device_without_cuda_is_one_clear_error():
    model, x, y = _small_setup()
    dirs = fastscape.random_directions(model, 1, seed=0)
    with pytest.raises(ValueError, match=r"`device`.*'cuda'.*CUDA is not available"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=3, device="cuda")
    with pytest.raises(ValueError, match=r"`device`.*'cuda:0'.*CUDA is not available"):
        fastscape.hessian_trace(model, (x, y), loss_fn=F.mse_loss, device="cuda:0")


class _NoParams(nn.Module):
    def forward(self, x):
        return x.sum(1, keepdim=True)


def test_a_model_without_parameters_is_refused_clearly():
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with pytest.raises(ValueError, match="`model` has no parameters"):
        fastscape.train(_NoParams(), [(x, y)], loss_fn=F.mse_loss,
                        optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), epochs=1)
    with pytest.raises(ValueError, match="`model` has no parameters"):
        fastscape.loss_surface(_NoParams(), (x, y), [{}], loss_fn=F.mse_loss, grid=3, device="cpu")
