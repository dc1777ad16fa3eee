"""Issue 11, defect 4: each unclear failure becomes one clear message that names the
argument and what was expected; PyTorch's broadcast warning reaches the user once.
Also the agreement with outside libraries that compute the same thing (scipy, vtk)."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape
from tests.cli_models import run_cli

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")


class Net(nn.Module):
    def __init__(self, d_in=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, 4), nn.Tanh(), nn.Linear(4, 1))

    def forward(self, x):
        return self.net(x)


def _setup(n=8, d_in=3):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = Net()
    return model, torch.randn(n, d_in, generator=g), torch.randn(n, 1, generator=g)


# --------------------------------------------------------------------------- device


@NO_CUDA
def test_cuda_device_without_cuda_is_one_clear_error():
    model, x, y = _setup()
    dirs = fastscape.random_directions(model, 1, seed=0)
    with pytest.raises(ValueError, match=r"`device`.*'cuda'.*CUDA is not available"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=3, device="cuda")
    with pytest.raises(ValueError, match=r"`device`.*'cuda:0'.*CUDA is not available"):
        fastscape.hessian_trace(model, (x, y), loss_fn=F.mse_loss, device="cuda:0")


@NO_CUDA
def test_cli_cuda_device_without_cuda_is_one_line(tmp_path, capsys):
    rc, _, err = run_cli(["surface", "--model", "tests.cli_models:make_model", "--data", "tests.cli_models:make_data",
                       "--loss", "cross_entropy", "--x", "-1:1:3", "--out", tmp_path / "s.h5", "--device", "cuda",
                       "--quiet"], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and "`device`" in err and "CUDA is not available" in err


# --------------------------------------------------------------------------- arguments


def test_random_directions_of_none_names_the_argument():
    with pytest.raises(TypeError, match=r"`model` must be a torch.nn.Module; got NoneType"):
        fastscape.random_directions(None)


def test_metric_that_is_not_callable_names_it():
    model, x, y = _setup()
    dirs = fastscape.random_directions(model, 1, seed=0)
    with pytest.raises(TypeError, match=r"`metrics\['acc'\]` must be callable.*got int"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=3, metrics={"acc": 3})


def test_grid_too_large_says_points_and_bytes_before_allocating():
    model, x, y = _setup()
    dirs = fastscape.random_directions(model, 2, seed=0)
    # 10^14 points: numpy used to try to allocate TiB before saying anything
    with pytest.raises(ValueError, match=r"`grid` has 100000000000000 points \(10000000 x 10000000\).*[PT]iB"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=(-1, 1, 10**7))


def test_cli_plot_of_a_folder_says_it_is_a_folder(tmp_path, capsys):
    rc, _, err = run_cli(["plot", tmp_path], capsys)
    assert rc == 2
    assert "is a folder" in err and "does not exist" not in err


# --------------------------------------------------------------------------- data that does not fit


def test_feature_width_mismatch_names_the_input_shape_and_the_layer():
    model, x, y = _setup(d_in=5)  # data with 5 features; the model takes 3
    dirs = fastscape.random_directions(model, 1, seed=0)
    with pytest.raises(RuntimeError) as info:
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=3, device="cpu")
    msg = str(info.value).splitlines()[0]  # the CLI prints the first line only
    assert "(8, 5)" in msg and "`net.0`" in msg and "in_features=3" in msg, msg
    with pytest.raises(RuntimeError) as info:
        fastscape.hessian_trace(model, (x, y), loss_fn=F.mse_loss, device="cpu")
    msg = str(info.value).splitlines()[0]
    assert "(8, 5)" in msg and "`net.0`" in msg and "in_features=3" in msg, msg


def _target_size_warnings(record):
    return [w for w in record if "target size" in str(w.message)]


@pytest.mark.parametrize("strategy", ["vmap", "loop", "affine", "mlp", "auto"])
def test_mse_broadcast_warning_reaches_the_user_once(strategy):
    """Output (N, 1) against target (N,) broadcasts to (N, N): PyTorch warns; the user must see it once."""
    model, x, y = _setup()
    dirs = fastscape.random_directions(model, 2, seed=0)
    with pytest.warns(UserWarning, match="target size") as record:
        fastscape.loss_surface(model, (x, y[:, 0]), dirs, loss_fn=F.mse_loss, grid=5, device="cpu", chunk_size=4,
                               batch_size=3, strategy=strategy, progress=False)
    assert len(_target_size_warnings(record)) == 1


def test_mse_broadcast_warning_reaches_the_user_once_from_the_hessian():
    model, x, y = _setup()
    with pytest.warns(UserWarning, match="target size") as record:
        fastscape.hessian_eigenpairs(model, (x, y[:, 0]), loss_fn=F.mse_loss, n=1, device="cpu", batch_size=3)
    assert len(_target_size_warnings(record)) == 1


def test_user_warning_filters_still_apply():
    """Once, not forced: a user who ignores the warning does not see it."""
    model, x, y = _setup()
    dirs = fastscape.random_directions(model, 1, seed=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=".*target size")
        fastscape.loss_surface(model, (x, y[:, 0]), dirs, loss_fn=F.mse_loss, grid=3, device="cpu", progress=False)
    assert not _target_size_warnings(record)


# --------------------------------------------------------------------------- outside libraries


def test_top_eigenpairs_agree_with_scipy_arpack_on_the_same_products():
    """scipy's ARPACK (implicitly restarted Lanczos) on fastscape's own Hessian-vector products."""
    sla = pytest.importorskip("scipy.sparse.linalg")
    model, x, y = _setup()
    model = model.double()
    x, y = x.double(), y.double()
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    n = sum(sizes)

    def matvec(v):
        d = {k: torch.from_numpy(np.ascontiguousarray(t)).view(s)
             for k, t, s in zip(names, np.split(np.asarray(v, dtype=np.float64).ravel(), np.cumsum(sizes)[:-1]), shapes)}
        hv = fastscape.hessian_vector_product(model, (x, y), d, loss_fn=F.mse_loss, device="cpu", dtype="float64")
        return torch.cat([hv[k].reshape(-1) for k in names]).numpy()

    op = sla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    theirs = np.sort(sla.eigsh(op, k=2, which="LA", tol=1e-12, v0=np.ones(n))[0])[::-1]
    _, ours = fastscape.hessian_eigenpairs(model, (x, y), loss_fn=F.mse_loss, n=2, tol=1e-8, max_iter=n,
                                           device="cpu", dtype="float64")
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-12)


def test_vtp_is_read_back_by_vtk(tmp_path):
    """ParaView's own reader (vtkXMLPolyDataReader) sees our grid, heights, loss array and quads."""
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    loss = np.arange(12, dtype=np.float64).reshape(4, 3) + 1.0
    loss[1, 2] = np.nan  # a diverging point: its quads are left out
    surf = fastscape.Surface(coords=[np.linspace(-1, 1, 4), np.linspace(0, 2, 3)], loss=loss,
                             metrics={"accuracy": loss / 20})
    for binary in (True, False):
        path = fastscape.save_vtp(surf, tmp_path / f"s{binary}.vtp", binary=binary)
        reader = vtk.vtkXMLPolyDataReader()
        reader.SetFileName(str(path))
        reader.Update()
        poly = reader.GetOutput()
        assert poly.GetNumberOfPoints() == 12
        points = vtk_to_numpy(poly.GetPoints().GetData())
        # points numbered with the first axis fastest: point i + 4 j is (x_i, y_j)
        gx, gy = np.meshgrid(surf.coords[0], surf.coords[1], indexing="xy")
        np.testing.assert_array_equal(points[:, 0], gx.reshape(-1))
        np.testing.assert_array_equal(points[:, 1], gy.reshape(-1))
        read_loss = vtk_to_numpy(poly.GetPointData().GetArray("loss"))
        finite = vtk_to_numpy(poly.GetPointData().GetArray("finite"))
        np.testing.assert_array_equal(finite, np.isfinite(loss.T.reshape(-1)).astype(np.uint8))
        np.testing.assert_array_equal(read_loss[finite == 1], loss.T.reshape(-1)[finite == 1])
        np.testing.assert_array_equal(points[finite == 1, 2], loss.T.reshape(-1)[finite == 1])
        assert poly.GetNumberOfPolys() == 6 - 2  # (4-1) x (3-1) quads, two of them touch the NaN point
