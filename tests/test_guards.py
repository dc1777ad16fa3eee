"""An error inside the model's forward names the layer it happened in and the input shape that
reached it."""

import pytest
import torch.nn.functional as F

import fastscape
from tests.models import small_tanh_setup



def test_feature_width_mismatch_names_the_input_shape_and_the_layer():
    model, x, y = small_tanh_setup(d_in=5)  # data with 5 features; the model takes 3
    dirs = fastscape.random_directions(model, 1, seed=0)
    with pytest.raises(RuntimeError) as info:
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=3, device="cpu")
    msg = str(info.value).splitlines()[0]  # the CLI prints the first line only
    assert "(8, 5)" in msg and "`net.0`" in msg and "in_features=3" in msg, msg
    with pytest.raises(RuntimeError) as info:
        fastscape.curvature.hessian_trace(model, (x, y), loss_fn=F.mse_loss, device="cpu")
    msg = str(info.value).splitlines()[0]
    assert "(8, 5)" in msg and "`net.0`" in msg and "in_features=3" in msg, msg
