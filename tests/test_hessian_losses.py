"""Every Hessian function on every loss x model of the matrix, against the dense
float64 Hessian of ``torch.autograd.functional.hessian`` (issue 11, defect 1:
MSE and Huber crashed forward-over-reverse differentiation)."""

import numpy as np
import pytest
import torch
from torch import nn

import fastscape
from tests.matrix_cases import LOSSES, MODELS, dense_hessian, make_case

_DENSE: dict = {}
#: eigenpairs and trace run on the same Hessian-vector products as the full matrix above:
#: every loss on the MLP, and the two commonest losses on the other models
SPECTRAL = [("mlp", loss) for loss in LOSSES] + [(m, loss) for m in MODELS[1:] for loss in ("mse", "cross_entropy")]


def _case(model_name, loss_name):
    """(model in float64, x, y, loss_fn, dense H, parameter names); H computed once per case."""
    model, x, y, loss_fn = make_case(model_name, loss_name)
    model = model.double()
    x = x.double() if x.is_floating_point() else x
    y = y.double() if y.is_floating_point() else y
    key = (model_name, loss_name)
    if key not in _DENSE:
        _DENSE[key] = dense_hessian(model, x, y, loss_fn)
    return model, x, y, loss_fn, _DENSE[key], [k for k, _ in model.named_parameters()]


def _flat(d, names):
    return torch.cat([d[k].reshape(-1).double() for k in names])


def _loader(x, y):
    # batches of 3 out of 8: the uneven last batch checks the sample-weighted mean
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)


@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("model_name", MODELS)
def test_hessian_vector_product_matches_dense(model_name, loss_name):
    model, x, y, loss_fn, H, names = _case(model_name, loss_name)
    g = torch.Generator().manual_seed(1)
    v = {k: torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in model.named_parameters()}
    hv = fastscape.curvature.hessian_vector_product(model, _loader(x, y), v, loss_fn=loss_fn, device="cpu",
                                          dtype=torch.float64)
    torch.testing.assert_close(_flat(hv, names), H @ _flat(v, names), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("model_name, loss_name", SPECTRAL)
def test_hessian_eigenpairs_match_dense(model_name, loss_name):
    model, x, y, loss_fn, H, names = _case(model_name, loss_name)
    vecs, evals = fastscape.curvature.hessian_eigenpairs(model, (x, y), loss_fn=loss_fn, n=2, tol=1e-7,
                                               max_iter=H.shape[0], device="cpu", dtype=torch.float64)
    dense = torch.linalg.eigvalsh(H).flip(0)[:2].numpy()
    scale = float(torch.linalg.eigvalsh(H).abs().max())
    np.testing.assert_allclose(evals, dense, rtol=0, atol=1e-6 * scale + 1e-12)
    for lam, vec in zip(evals, vecs):
        y_ = _flat(vec, names)
        assert abs(float(y_.norm()) - 1) < 1e-9
        assert float((H @ y_ - lam * y_).norm()) <= 1e-4 * scale + 1e-10


@pytest.mark.parametrize("model_name, loss_name", SPECTRAL)
@pytest.mark.filterwarnings("ignore::fastscape.curvature.ConvergenceWarning")  # 100 probes are enough for the check
def test_hessian_trace_matches_dense(model_name, loss_name):
    model, x, y, loss_fn, H, names = _case(model_name, loss_name)
    est, stderr = fastscape.curvature.hessian_trace(model, (x, y), loss_fn=loss_fn, tol=0.05, max_iter=60, min_iter=20,
                                          block=20, device="cpu", dtype=torch.float64)
    exact = float(torch.trace(H))
    # Hutchinson's estimate is random (seeded): within five standard errors of the dense trace
    assert abs(est - exact) <= 5 * stderr + 1e-9, (est, stderr, exact)
    assert np.isfinite(stderr)


@pytest.mark.parametrize("loss_name", ["mse", "cross_entropy"])
@pytest.mark.parametrize("model_name", MODELS)
def test_hessian_float32_default_matches_dense(model_name, loss_name):
    """The default dtype, float32, where PyTorch's CPU kernels differ from float64's (the LSTM's
    oneDNN kernel has no forward-mode derivative): within float32 rounding of the dense Hessian."""
    model, x, y, loss_fn, H, names = _case(model_name, loss_name)
    model = model.float()
    x = x.float() if x.is_floating_point() else x
    y = y.float() if y.is_floating_point() else y
    v = {k: torch.ones_like(p) for k, p in model.named_parameters()}
    hv = fastscape.curvature.hessian_vector_product(model, (x, y), v, loss_fn=loss_fn, device="cpu")
    assert hv[names[0]].dtype == torch.float32
    ref = H @ _flat(v, names)
    torch.testing.assert_close(_flat(hv, names), ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))


def test_cli_losses_are_all_in_the_matrix():
    """A loss added to the CLI must join the matrix above (and the surface matrix)."""
    from fastscape._cli import LOSSES as CLI_LOSSES

    assert set(CLI_LOSSES) <= set(LOSSES)


def test_hessian_scalar_loss_module_and_reduction_sum():
    """A loss module with reduction='sum' is a scalar too: H scales with the batch size, as dense says."""
    model, x, y, _, _, names = _case("mlp", "mse")
    loss_fn = nn.MSELoss(reduction="sum")
    H = dense_hessian(model, x, y, loss_fn)
    v = {k: torch.ones_like(p) for k, p in model.named_parameters()}
    hv = fastscape.curvature.hessian_vector_product(model, (x, y), v, loss_fn=loss_fn, device="cpu", dtype=torch.float64)
    torch.testing.assert_close(_flat(hv, names), H @ _flat(v, names), rtol=1e-8, atol=1e-10)
