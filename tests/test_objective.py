"""The objective's own errors: a loss that fails on the model's output names itself and the shapes;
full backward hooks, which torch.func cannot run, are named before any work."""

import re

import pytest
import torch
import torch.nn.functional as F

import fastscape
from tests.integrity_case import make_case
from tests.models import MLP


def _with_full_backward_hook():
    model = MLP()
    model.net[0].register_full_backward_hook(lambda *a: None)
    return model


def test_hessian_on_a_model_with_backward_hooks_names_them():
    model = _with_full_backward_hook()
    _, data, _ = make_case()
    with pytest.raises(ValueError, match=r"`model`.*backward hook.*'net\.0'"):
        fastscape.curvature.hessian_eigenpairs(model, data, loss_fn=F.cross_entropy, n=1)
    with pytest.raises(ValueError, match=r"`model`.*backward hook"):
        fastscape.curvature.hessian_vector_product(model, data, {k: torch.ones_like(p) for k, p in model.named_parameters()},
                                         loss_fn=F.cross_entropy)


def test_gradient_views_on_a_model_with_backward_hooks_name_them():
    model = _with_full_backward_hook()
    _, data, _ = make_case()
    dirs = fastscape.random_directions(model, 2, seed=0)
    plot = getattr(fastscape, "plot", None)
    # the numbers behind the view: fastscape.lr_steps (fastscape.plot.lr_steps only draws them)
    lr_steps = getattr(fastscape, "plot_lr_steps", None) or getattr(fastscape, "lr_steps", None) or plot.lr_steps
    with pytest.raises(ValueError, match=r"`model`.*backward hook"):
        lr_steps(model, data, dirs, loss_fn=F.cross_entropy, lrs=[0.1])


@pytest.mark.parametrize("which", ["loss_fn", "metrics['mae']"])
def test_a_loss_that_fails_on_the_models_output_names_itself_and_the_shapes(which):
    # a 3-wide output against 1-wide targets: mse_loss cannot broadcast (20, 3) with (20,)
    m = MLP(d_out=3)
    x, y = torch.randn(20, 5), torch.randn(20)
    loss, metrics = F.mse_loss, {"mae": F.l1_loss}
    if which == "loss_fn":
        metrics = None
    else:
        loss = lambda out, t: out.sum() * 0  # noqa: E731  (the loss itself runs)
        loss.fastscape_fingerprint = "zero"
    with pytest.raises(RuntimeError, match=re.escape(f"`{which}` failed on the model's output of shape "
                                                     "(20, 3) and targets of shape (20,)")):
        fastscape.loss_surface(m, (x, y), fastscape.random_directions(m, n=1, seed=0), loss_fn=loss,
                               metrics=metrics, grid=(-1, 1, 3), progress=False)
