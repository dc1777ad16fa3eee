"""Parameter subsets (`params=`): directions and Hessians over part of a model.

References: the full directions drawn with the same seed, zeroed outside the subset by hand here;
the dense float64 Hessian of torch.autograd.functional.hessian restricted to the subset's rows and
columns; scikit-learn's PCA on the subset's columns of the path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape
from tests.models import MLP, SmallCNN


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))


def _zeroed(d, keep):
    return {k: v.clone() if k in keep else torch.zeros_like(v) for k, v in d.items()}


@pytest.mark.parametrize("norm", ["filter", "layer", "model", None])
def test_random_subset_is_full_direction_with_zeros(norm):
    model = SmallCNN()
    full = fastscape.random_directions(model, 2, seed=3, norm=norm, ignore=None)
    sub = fastscape.random_directions(model, 2, seed=3, norm=norm, ignore=None, params=["head", "features.4.weight"])
    keep = {k for k in full[0] if k.startswith("head.") or k == "features.4.weight"}
    assert sub.info["params"] == ["head", "features.4.weight"]
    for f, s in zip(full, sub):
        ref = _zeroed(f, keep)
        if norm == "model":  # one scale for the whole vector: the subset's weights' norm over its own
            w = {k: p.detach() for k, p in model.named_parameters()}
            scale = (sum(float((w[k].double() ** 2).sum()) for k in keep)
                     / sum(float((f[k].double() ** 2).sum()) for k in keep)) ** 0.5
            ref = {k: v * scale for k, v in ref.items()}
        for k in f:
            torch.testing.assert_close(s[k], ref[k], rtol=1e-5, atol=1e-7)


def test_default_subset_is_what_requires_grad():
    model = MLP()
    first = next(iter(model.parameters()))
    first.requires_grad_(False)
    frozen = [k for k, p in model.named_parameters() if not p.requires_grad]
    full = fastscape.random_directions(model, 1, seed=1, params="*")
    sub = fastscape.random_directions(model, 1, seed=1)
    for k in full[0]:
        torch.testing.assert_close(sub[0][k], torch.zeros_like(full[0][k]) if k in frozen else full[0][k])
    assert sub.info["params"] == "requires_grad"


def test_glob_patterns_and_bad_subsets():
    model = SmallCNN()
    d = fastscape.random_directions(model, 1, seed=0, params="*.weight", norm="layer", ignore=None)[0]
    assert all(bool(v.any()) == k.endswith(".weight") for k, v in d.items())
    with pytest.raises(ValueError, match="`params` entry 'layer9' matches no parameter"):
        fastscape.random_directions(model, 1, params="layer9")
    with pytest.raises(TypeError, match="`params` must be a parameter name or glob pattern"):
        fastscape.random_directions(model, 1, params=3)


def test_interpolation_subset():
    a, b = _net(), _net()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    (d,) = fastscape.interpolation_directions(a, b, params="4")
    for k, v in d.items():
        expected = torch.ones_like(v) if k.startswith("4.") else torch.zeros_like(v)
        torch.testing.assert_close(v, expected)


def test_pca_subset_matches_sklearn_on_the_subset_columns():
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(0)
    snaps = [{"a": torch.randn(3, 2, generator=g, dtype=torch.float64), "b": torch.randn(4, generator=g, dtype=torch.float64)}
             for _ in range(6)]
    dirs, ratio = fastscape.pca_directions(snaps, 2, params="b")
    X = np.stack([(s["b"] - snaps[-1]["b"]).numpy() for s in snaps])
    pca = PCA(2).fit(X)
    np.testing.assert_allclose(ratio, pca.explained_variance_ratio_, rtol=1e-8)
    for d, comp in zip(dirs, pca.components_):
        assert float(d["a"].abs().max()) == 0.0
        np.testing.assert_allclose(abs(d["b"].numpy() @ comp), 1.0, rtol=1e-8)


def _dense_hessian(model, x, y, names):
    params = dict(model.named_parameters())
    shapes = [params[k].shape for k in names]
    flat0 = torch.cat([params[k].detach().double().flatten() for k in names])

    def loss(flat):
        out, i = {}, 0
        for k, s in zip(names, shapes):
            out[k] = flat[i:i + s.numel()].view(s)
            i += s.numel()
        full = {k: v.detach().double() for k, v in params.items()}
        full.update(out)
        return F.mse_loss(torch.func.functional_call(model.double(), full, (x.double(),)), y.double())

    return torch.autograd.functional.hessian(loss, flat0)


def test_hessian_on_a_subset_is_the_subset_block():
    model = _net()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, generator=g), torch.randn(32, 2, generator=g)
    names = ["2.weight", "2.bias"]
    H = _dense_hessian(_net(), x, y, names)
    evals = torch.linalg.eigvalsh(H).flip(0)
    vecs, vals = fastscape.curvature.hessian_eigenpairs(model, (x, y), loss_fn=F.mse_loss, n=2, params="2",
                                              dtype=torch.float64, max_iter=30)
    np.testing.assert_allclose(vals, evals[:2].numpy(), rtol=1e-6)
    assert all(float(v[k].abs().max()) == 0.0 for v in vecs for k in v if not k.startswith("2."))
    trace, err = fastscape.curvature.hessian_trace(model, (x, y), loss_fn=F.mse_loss, params="2", dtype=torch.float64,
                                         tol=0.03, max_iter=2000, block=50)
    assert abs(trace - float(H.trace())) < 5 * err
    v = {k: torch.ones_like(p) for k, p in model.named_parameters()}
    hv = fastscape.curvature.hessian_vector_product(model, (x, y), v, loss_fn=F.mse_loss, params=names, dtype=torch.float64)
    ref = H @ torch.ones(H.shape[0], dtype=torch.float64)
    got = torch.cat([hv[k].double().flatten() for k in names])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-8)
    assert float(hv["0.weight"].abs().max()) == 0.0


def test_hessian_default_subset_skips_frozen_and_says_when_nothing_is_left():
    model = _net()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g)
    for k, p in model.named_parameters():
        p.requires_grad_(k.startswith("4."))
    H = _dense_hessian(_net(), x, y, ["4.weight", "4.bias"])
    _, vals = fastscape.curvature.hessian_eigenpairs(model, (x, y), loss_fn=F.mse_loss, n=1, dtype=torch.float64)
    np.testing.assert_allclose(vals[0], float(torch.linalg.eigvalsh(H)[-1]), rtol=1e-6)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters that require grad.*`params=`"):
        fastscape.curvature.hessian_eigenpairs(model, (x, y), loss_fn=F.mse_loss, n=1)


def test_a_changed_subset_changes_the_file_fingerprint(tmp_path):
    pytest.importorskip("h5py")
    model = _net()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g)
    prints = []
    for i, params in enumerate(["4", "2"]):
        dirs = fastscape.random_directions(model, 2, seed=0, params=params)
        s = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=(-1, 1, 3), out=tmp_path / f"s{i}.h5",
                                   progress=False)
        prints.append(s.meta["settings"]["directions_fingerprint"] if "settings" in s.meta
                      else s.meta["directions_fingerprint"])
    assert prints[0] != prints[1]
    # and the same subset resumes the same file, a different one refuses it
    dirs = fastscape.random_directions(model, 2, seed=0, params="2")
    with pytest.raises(ValueError, match="directions"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=(-1, 1, 3), out=tmp_path / "s0.h5",
                               progress=False)
