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
        fastscape.curvature.hessian_trace(model, (x, y), loss_fn=F.mse_loss, device="cuda:0")


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


def _calls():
    """Every public function that takes a model and a loss: name -> call(model, loss_fn)."""
    import fastscape

    model, x, y = _small_setup()
    data = (x, y)
    dirs = fastscape.random_directions(model, 2, seed=0)
    vec = {k: torch.ones_like(p) for k, p in model.named_parameters()}
    return {
        "loss_surface": lambda m, f: fastscape.loss_surface(m, data, dirs, loss_fn=f, grid=3),
        "path_loss": lambda m, f: fastscape.path_loss(m, data, [vec, vec], loss_fn=f),
        "hessian_vector_product": lambda m, f: fastscape.curvature.hessian_vector_product(m, data, vec, loss_fn=f),
        "hessian_eigenpairs": lambda m, f: fastscape.curvature.hessian_eigenpairs(m, data, loss_fn=f, n=1),
        "hessian_trace": lambda m, f: fastscape.curvature.hessian_trace(m, data, loss_fn=f),
        "cross_sections": lambda m, f: fastscape.cross_sections(m, data, loss_fn=f),
        "lr_steps": lambda m, f: fastscape.lr_steps(m, data, dirs, loss_fn=f, lrs=[0.1]),
        "train": lambda m, f: fastscape.train(m, [data], loss_fn=f, epochs=1,
                                              optimizer=torch.optim.SGD(model.parameters(), lr=0.1)),
    }


@pytest.mark.parametrize("name", sorted(_calls()))
def test_every_function_taking_a_model_and_a_loss_names_a_wrong_one(name):
    """One check for all of them: a model that is not an nn.Module and a loss that is not callable
    are refused naming the argument, before any work."""
    model, _, _ = _small_setup()
    call = _calls()[name]
    with pytest.raises(TypeError, match=r"`model` must be a torch.nn.Module; got dict"):
        call(dict(model.state_dict()), F.mse_loss)
    for bad in (None, "mse"):
        with pytest.raises(TypeError, match=rf"`loss_fn` must be callable \(output, target\) -> scalar; got {bad!r}"):
            call(model, bad)
