"""Warnings reach the user once, from the user's own line: PyTorch's broadcast warning for an MSE
target (N,) against an output (N, 1), NaN or inf in the data or a direction, the vmap fallback;
the user's own warning filters still apply."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastscape
from tests.integrity_case import make_case
from tests.models import MLP, LSTMRegressor, small_tanh_setup



def _target_size_warnings(record):
    return [w for w in record if "target size" in str(w.message)]


@pytest.mark.parametrize("strategy", ["vmap", "loop", "affine", "mlp", "auto"])
def test_mse_broadcast_warning_reaches_the_user_once(strategy):
    """Output (N, 1) against target (N,) broadcasts to (N, N): PyTorch warns; the user must see it once."""
    model, x, y = small_tanh_setup()
    dirs = fastscape.random_directions(model, 2, seed=0)
    with pytest.warns(UserWarning, match="target size") as record:
        fastscape.loss_surface(model, (x, y[:, 0]), dirs, loss_fn=F.mse_loss, grid=5, device="cpu", chunk_size=4,
                               batch_size=3, strategy=strategy, progress=False)
    assert len(_target_size_warnings(record)) == 1


def test_mse_broadcast_warning_reaches_the_user_once_from_the_hessian():
    model, x, y = small_tanh_setup()
    with pytest.warns(UserWarning, match="target size") as record:
        fastscape.curvature.hessian_eigenpairs(model, (x, y[:, 0]), loss_fn=F.mse_loss, n=1, device="cpu", batch_size=3)
    assert len(_target_size_warnings(record)) == 1


def test_user_warning_filters_still_apply():
    """Once, not forced: a user who ignores the warning does not see it."""
    model, x, y = small_tanh_setup()
    dirs = fastscape.random_directions(model, 1, seed=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=".*target size")
        fastscape.loss_surface(model, (x, y[:, 0]), dirs, loss_fn=F.mse_loss, grid=3, device="cpu", progress=False)
    assert not _target_size_warnings(record)


def test_nan_in_the_data_warns_once_naming_it():
    model, (x, y), dirs = make_case()
    x = x.clone()
    x[3, 1] = float("nan")
    with pytest.warns(UserWarning, match=r"`data`.*NaN") as record:
        surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=3, device="cpu")
    assert len(record) == 1
    with torch.no_grad():  # the independent check: the model's own loss on this data is NaN too
        assert np.isnan(float(F.cross_entropy(model(x), y)))
    assert np.isnan(surf.loss).all()


def test_nan_or_inf_in_a_direction_warns_once_naming_it():
    model, data, dirs = make_case()
    dirs = [dict(dirs[0]), dict(dirs[1])]
    dirs[1]["net.2.weight"] = dirs[1]["net.2.weight"].clone()
    dirs[1]["net.2.weight"][0, 0] = float("inf")
    with pytest.warns(UserWarning, match=r"`directions\[1\]\['net\.2\.weight'\]`.*inf") as record:
        surf = fastscape.loss_surface(model, data, dirs, loss_fn=F.cross_entropy, grid=3, device="cpu")
    assert len(record) == 1
    # the independent check: 0 * inf is NaN, so no point of the grid escapes it
    assert math.isnan(0.0 * math.inf) and np.isnan(surf.loss).all()


def test_warnings_point_at_the_users_call():
    """A warning about the user's input names the line of the user's code that called fastscape,
    not a line inside fastscape (or contextlib's decorator frame) where it was raised."""

    m = MLP()
    x = torch.randn(20, 5)
    x[0, 0] = float("nan")
    y = torch.randint(0, 3, (20,))
    d = fastscape.random_directions(m, n=1, seed=0)
    lstm = LSTMRegressor()
    m1 = MLP(d_out=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastscape.loss_surface(m, (x, y), d, loss_fn=F.cross_entropy, grid=(-1, 1, 3), progress=False)
        fastscape.loss_surface(lstm, (torch.randn(8, 4, 3), torch.randn(8, 1)),
                               fastscape.random_directions(lstm, n=1, seed=0), loss_fn=F.mse_loss, grid=(-1, 1, 9),
                               chunk_size=3, progress=False)
        fastscape.loss_surface(m1, (torch.randn(20, 5), torch.randn(20)), fastscape.random_directions(m1, n=1, seed=0),
                               loss_fn=F.mse_loss, grid=(-1, 1, 3), progress=False)
    kinds = {"holds NaN": None, "could not be vectorised": None, "target size": None}
    for w in caught:
        for k in kinds:
            if k in str(w.message):
                kinds[k] = w
    assert all(kinds.values()), [str(w.message) for w in caught]
    for k, w in kinds.items():
        assert w.filename == __file__, (k, w.filename, w.lineno)
