"""timm and torchvision models as they come (random init, nothing downloaded): full planes, head-only
planes through the frozen prefix, subset directions and the Hessian over the head. Skipped where the
package is absent (CI installs neither: torchvision needs a torch build of its own, see the README).

Reference: a per-point loop that copies each grid point into a deep copy of the model and runs it
(``tests/reference.loop_surface``), and autograd on the model itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastscape
from tests.models import assert_unchanged, snapshot, trained_bn_stats
from tests.reference import loop_surface

AXES = [np.linspace(-0.5, 0.5, 3), np.linspace(-0.5, 0.5, 3)]

# name -> (package, constructor on the imported package, the head's module name)
ZOO = {
    "torchvision-resnet18": ("torchvision", lambda tv: tv.models.resnet18(num_classes=5), "fc"),
    "timm-resnet10t": ("timm", lambda timm: timm.create_model("resnet10t", pretrained=False, num_classes=5), "fc"),
    "timm-vit": ("timm", lambda timm: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                                        patch_size=8, depth=2, num_classes=5), "head"),
}


def _zoo(name):
    package, make, head = ZOO[name]
    lib = pytest.importorskip(package)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g)
    model = trained_bn_stats(make(lib), x).eval()  # BatchNorm statistics that are not the init's
    return model, x, y, head


def _origin(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("strategy", ["prefix", "auto"])
def test_head_plane_matches_a_loop_and_leaves_the_model(name, strategy):
    model, x, y, head = _zoo(name)
    dirs = fastscape.random_directions(model, 2, seed=0, params=head)
    snap = snapshot(model)
    s = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=AXES, strategy=strategy,
                               progress=False)
    assert_unchanged(model, snap)
    ref = loop_surface(model, x, y, F.cross_entropy, _origin(model), dirs, AXES, dtype=torch.float32)
    np.testing.assert_allclose(s.loss, ref, rtol=5e-5, atol=5e-5)
    assert np.ptp(ref) > 1e-3  # the head does move the loss
    if strategy == "prefix":
        assert s.meta["strategy"] == "prefix"


@pytest.mark.parametrize("name", list(ZOO))
def test_full_plane_matches_a_loop_and_leaves_the_model(name):
    model, x, y, _ = _zoo(name)
    dirs = fastscape.random_directions(model, 2, seed=0)
    snap = snapshot(model)
    s = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=AXES, progress=False)
    assert_unchanged(model, snap)
    ref = loop_surface(model, x, y, F.cross_entropy, _origin(model), dirs, AXES, dtype=torch.float32)
    np.testing.assert_allclose(s.loss, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(ZOO))
def test_subset_directions_are_the_full_ones_with_zeros(name):
    model, _, _, head = _zoo(name)
    full = fastscape.random_directions(model, 2, seed=3, params="*")
    sub = fastscape.random_directions(model, 2, seed=3, params=head)
    assert set(sub[0]) == set(full[0])
    for d_sub, d_full in zip(sub, full):
        for k, v in d_sub.items():
            if k.startswith(head + "."):
                torch.testing.assert_close(v, d_full[k], rtol=0, atol=0, msg=k)
            else:
                assert not bool(v.any()), k
    for p in model.parameters():  # a linear probe: the trunk frozen, only the head trains
        p.requires_grad_(False)
    for p in getattr(model, head).parameters():
        p.requires_grad_(True)
    probe = fastscape.random_directions(model, 2, seed=3)  # default: what requires grad
    for d_probe, d_sub in zip(probe, sub):
        assert all(torch.equal(d_probe[k], d_sub[k]) for k in d_sub)


@pytest.mark.parametrize("name", ["torchvision-resnet18", "timm-vit"])
def test_hessian_vector_product_over_the_head(name):
    model, x, y, head = _zoo(name)
    v = fastscape.random_directions(model, 1, seed=5, params=head)[0]
    hv = fastscape.curvature.hessian_vector_product(model, (x, y), v, loss_fn=F.cross_entropy, params=head)
    names = [k for k, _ in model.named_parameters() if k.startswith(head + ".")]
    weights = dict(model.named_parameters())
    g = torch.autograd.grad(F.cross_entropy(model(x), y), [weights[k] for k in names], create_graph=True)
    ref = torch.autograd.grad(sum((gi * v[k]).sum() for gi, k in zip(g, names)), [weights[k] for k in names])
    for k, r in zip(names, ref):
        torch.testing.assert_close(hv[k], r, rtol=1e-4, atol=1e-6, msg=k)
    assert all(not bool(t.any()) for k, t in hv.items() if k not in names)
