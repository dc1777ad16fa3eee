"""Directions: random (filter-normalised), states, orthogonalised, axes, interpolation.

Each property is checked against an independent reference: numpy norms, a
per-point loop (tests/reference.py), a hand-written closed form, autograd.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape
from fastscape._demo import TwoWeightNet
from fastscape._core.grid import make_axes
from fastscape._core.params import model_parameters
from tests.models import assert_unchanged as _assert_unchanged
from tests.models import snapshot as _state
from tests.models import MLP, SmallCNN, trained_bn_stats
from tests.reference import loop_surface


def _cnn(gen, n=16):
    torch.manual_seed(0)
    model = SmallCNN()
    x, y = torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 4, (n,), generator=gen)
    trained_bn_stats(model, x)
    model.eval()
    return model, x, y






def _own_loss(model, x, y, loss_fn=F.cross_entropy):
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        return float(loss_fn(m(x.double()), y))


# ---------------------------------------------------------------- random directions


def test_filter_normalised_directions_have_each_filters_norm(gen):
    model, _, _ = _cnn(gen)
    dirs = fastscape.random_directions(model, 2, seed=5)
    weights = {k: p.detach().numpy() for k, p in model.named_parameters()}
    assert len(dirs) == 2 and dirs.info["norm"] == "filter"
    for d in dirs:
        assert list(d) == list(weights)
        for k, w in weights.items():
            t = d[k].numpy()
            if w.ndim <= 1:
                assert not t.any(), f"{k}: biasbn entry must be zero"
                continue
            wn = np.linalg.norm(w.reshape(w.shape[0], -1), axis=1)
            dn = np.linalg.norm(t.reshape(t.shape[0], -1), axis=1)
            np.testing.assert_allclose(dn, wn, rtol=1e-5)


def test_layer_and_model_norms_and_ignore_none(gen):
    model = MLP()
    w = {k: p.detach().numpy().astype(np.float64) for k, p in model.named_parameters()}
    layer = fastscape.random_directions(model, 1, norm="layer", ignore=None, seed=1)[0]
    for k in w:
        if w[k].ndim <= 1:  # the paper's code: 1-D entries become the weights themselves
            np.testing.assert_array_equal(layer[k].numpy(), w[k].astype(np.float32))
        else:
            assert np.linalg.norm(layer[k].numpy()) == pytest.approx(np.linalg.norm(w[k]), rel=1e-5)
    whole = fastscape.random_directions(model, 1, norm="model", seed=1)[0]
    moved = [k for k in w if w[k].ndim > 1]
    dn = np.sqrt(sum((whole[k].double().numpy() ** 2).sum() for k in moved))
    wn = np.sqrt(sum((w[k] ** 2).sum() for k in moved))
    assert dn == pytest.approx(wn, rel=1e-6)
    assert all(not whole[k].any() for k in w if w[k].ndim <= 1)
    raw = fastscape.random_directions(model, 1, norm=None, ignore=None, seed=1)[0]
    ref = torch.Generator().manual_seed(1)  # None: the untouched N(0, 1) draws, in order
    for k, p in model.named_parameters():
        np.testing.assert_array_equal(raw[k].numpy(), torch.randn(p.shape, generator=ref).numpy())


def test_same_seed_same_directions_and_generator(gen):
    model = MLP()
    a = fastscape.random_directions(model, 2, seed=11)
    b = fastscape.random_directions(model, 2, seed=11)
    c = fastscape.random_directions(model, 2, seed=12)
    for da, db in zip(a, b):
        assert all(torch.equal(da[k], db[k]) for k in da)
    assert not torch.equal(a[0]["net.0.weight"], c[0]["net.0.weight"])
    assert not torch.equal(a[0]["net.0.weight"], a[1]["net.0.weight"])
    g1 = fastscape.random_directions(model, 1, generator=torch.Generator().manual_seed(3))[0]
    g2 = fastscape.random_directions(model, 1, generator=torch.Generator().manual_seed(3))[0]
    assert all(torch.equal(g1[k], g2[k]) for k in g1)
    assert a[0]["net.0.weight"].device == next(model.parameters()).device
    assert a[0]["net.0.weight"].dtype == torch.float32


def test_directions_are_zero_mean():
    # a non-zero-mean "random" direction (uniform on [0, 1)) tilts every surface
    model = nn.Sequential(nn.Linear(600, 500), nn.Linear(500, 40))
    for norm in (None, "filter"):
        d = fastscape.random_directions(model, 1, norm=norm, seed=0)[0]
        flat = torch.cat([t.reshape(-1) for k, t in d.items() if t.dim() > 1]).double().numpy()
        # the sum of N independent symmetric entries has standard deviation sqrt(sum d_i^2)
        bound = 5 * np.sqrt((flat ** 2).sum()) / flat.size
        assert abs(flat.mean()) < bound, (norm, flat.mean(), bound)
        assert abs((flat > 0).mean() - 0.5) < 5 * 0.5 / np.sqrt(flat.size)


def test_zero_weights_never_divide_by_zero(gen):
    model = MLP()
    with torch.no_grad():
        model.net[0].weight[3:7].zero_()  # four zero filters
        model.net[2].weight.zero_()  # a whole zero tensor
        model.net[0].bias.zero_()
    x, y = torch.randn(12, 5, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    for norm in ("filter", "layer", "model"):
        for ignore in ("biasbn", None):
            d = fastscape.random_directions(model, 2, norm=norm, ignore=ignore, seed=2)
            for t in d[0].values():
                assert torch.isfinite(t).all()
            if norm in ("filter", "layer"):
                assert not d[0]["net.2.weight"].any()
                assert not d[0]["net.0.bias"].any()
            if norm == "filter":
                assert not d[0]["net.0.weight"][3:7].any() and d[0]["net.0.weight"][:3].all()
            surf = fastscape.loss_surface(model, (x, y), d, loss_fn=F.cross_entropy, grid=3, device="cpu")
            assert np.isfinite(surf.loss).all()
    empty = nn.Linear(3, 2)
    with torch.no_grad():
        empty.weight.zero_()
        empty.bias.zero_()
    d = fastscape.random_directions(empty, 1, norm="model", ignore=None, seed=0)[0]
    assert all(torch.equal(t, torch.zeros_like(t)) for t in d.values())


def test_normalize_any_direction_without_touching_it(gen):
    model = MLP()
    w = model_parameters(model)
    d = {k: torch.randn(p.shape, generator=gen) for k, p in w.items()}
    before = {k: v.clone() for k, v in d.items()}
    out = fastscape.normalize(d, w, norm="filter", ignore="biasbn")
    assert all(torch.equal(d[k], before[k]) for k in d)
    for k in ("net.0.weight", "net.2.weight"):
        np.testing.assert_allclose(out[k].norm(dim=1).numpy(), w[k].norm(dim=1).numpy(), rtol=1e-5)
        # the same direction inside each filter: only a positive rescaling
        cos = F.cosine_similarity(out[k], d[k], dim=1)
        np.testing.assert_allclose(cos.numpy(), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- states


def test_states_directions_move_batchnorm_statistics_like_a_loop(gen):
    model, x, y = _cnn(gen)
    snap = _state(model)
    dirs = fastscape.random_directions(model, 2, seed=4, states=True, ignore=None)
    bufs = [k for k, b in model.named_buffers() if b.is_floating_point()]
    assert bufs and all(k in dirs[0] for k in bufs)
    assert not any("num_batches_tracked" in k for k in dirs[0])
    assert dirs[0]["features.1.running_var"].any()
    axes = [np.linspace(-0.5, 0.5, 3), np.linspace(-0.25, 0.75, 4)]
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=axes, device="cpu",
                                  dtype=torch.float64)
    _assert_unchanged(model, snap)
    origin = {**model_parameters(model), **{k: b for k, b in model.named_buffers()}}
    ref = loop_surface(model, x, y, F.cross_entropy, origin, dirs, axes)  # copies the buffers in too
    np.testing.assert_allclose(surf.loss, ref, rtol=1e-9)
    # the same directions without the buffer entries give a different surface
    weights_only = [{k: v for k, v in d.items() if k not in bufs} for d in dirs]
    other = fastscape.loss_surface(model, (x, y), weights_only, loss_fn=F.cross_entropy, grid=axes,
                                   device="cpu", dtype=torch.float64)
    assert not np.allclose(other.loss, surf.loss, rtol=1e-6)
    # as in the paper's code, biasbn leaves the 1-D statistics still
    still = fastscape.random_directions(model, 1, seed=4, states=True)
    assert all(not still[0][k].any() for k in bufs)


def test_batchnorm_running_stats_unchanged_after_evaluation(gen):
    model, x, y = _cnn(gen)
    model.train()
    snap = _state(model)
    fastscape.loss_surface(model, (x, y), fastscape.random_directions(model, 2, seed=0), loss_fn=F.cross_entropy,
                           grid=3, device="cpu")
    _assert_unchanged(model, snap)
    assert model.training


# ---------------------------------------------------------------- grid


@pytest.mark.parametrize("span", [0.1, 0.3, 1.0, 2.5, 0.123])
@pytest.mark.parametrize("num", [3, 23, 51, 401])
def test_symmetric_odd_grid_holds_the_origin_exactly(span, num):
    (axis,) = make_axes((-span, span, num), 1)
    assert axis[num // 2] == 0.0
    np.testing.assert_array_equal(axis, -axis[::-1])
    assert axis[0] == -span and axis[-1] == span
    np.testing.assert_allclose(axis, np.linspace(-span, span, num), rtol=0, atol=1e-15)


def test_centre_of_symmetric_grid_is_the_models_own_loss(gen):
    model, x, y = _cnn(gen)
    dirs = fastscape.random_directions(model, 2, seed=1)
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy,
                                  grid=[(-0.1, 0.1, 23), (-0.3, 0.3, 3)], device="cpu", dtype=torch.float64)
    assert surf.coords[0][11] == 0.0 and surf.coords[1][1] == 0.0
    assert surf.loss[11, 1] == pytest.approx(_own_loss(model, x, y), rel=1e-12)


def test_each_row_of_a_non_square_grid_is_aligned(gen):
    # every row compared point by point with a plain loop: no zig-zag offset between rows
    model = MLP()
    x, y = torch.randn(20, 5, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    dirs = fastscape.random_directions(model, 2, seed=8)
    axes = [(-1.0, 0.5, 5), (-0.2, 1.0, 4)]
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=axes, device="cpu",
                                  chunk_size=3)
    ref = loop_surface(model, x, y, F.cross_entropy, model_parameters(model), dirs, make_axes(axes, 2))
    assert surf.loss.shape == (5, 4)
    np.testing.assert_allclose(surf.loss, ref, rtol=2e-5, atol=1e-6)


def test_finite_difference_matches_autograd_directional_derivative(gen):
    model = MLP()
    x, y = torch.randn(30, 5, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    d = fastscape.random_directions(model, 1, seed=3, ignore=None)
    h = 1e-5
    surf = fastscape.loss_surface(model, (x, y), d, loss_fn=F.cross_entropy, grid=[np.array([-h, 0.0, h])],
                                  device="cpu", dtype=torch.float64)
    fd = (surf.loss[2] - surf.loss[0]) / (2 * h)
    m = copy.deepcopy(model).double()
    loss = F.cross_entropy(m(x.double()), y)
    grads = torch.autograd.grad(loss, list(m.parameters()))
    exact = sum(float((g * d[0][k].double()).sum()) for (k, _), g in zip(m.named_parameters(), grads))
    assert abs(exact) > 1e-3
    assert fd == pytest.approx(exact, rel=1e-7)


# ---------------------------------------------------------------- orthogonalisation and cosines


def test_cosines_in_metadata_and_orthogonalize(gen):
    model = MLP()
    x, y = torch.randn(10, 5, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    base = fastscape.random_directions(model, 3, seed=0, ignore=None)
    # make them far from orthogonal: d1 += d0, d2 += d0 + d1
    skew = [base[0], {k: base[1][k] + base[0][k] for k in base[0]},
            {k: base[2][k] + base[0][k] + 0.5 * base[1][k] for k in base[0]}]
    mat = np.stack([np.concatenate([d[k].double().numpy().ravel() for k in d]) for d in skew])
    unit = mat / np.linalg.norm(mat, axis=1, keepdims=True)
    surf = fastscape.loss_surface(model, (x, y), skew, loss_fn=F.cross_entropy, grid=2, device="cpu")
    np.testing.assert_allclose(surf.meta["cosines"], unit @ unit.T, atol=1e-6)
    assert surf.meta["cosines"][0][1] > 0.5

    ortho = fastscape.orthogonalize(fastscape.Directions(skew, kind="random"))
    assert ortho.info == {"kind": "random", "orthogonalized": True}
    omat = np.stack([np.concatenate([d[k].double().numpy().ravel() for k in d]) for d in ortho])
    np.testing.assert_allclose(np.linalg.norm(omat, axis=1), np.linalg.norm(mat, axis=1), rtol=1e-6)
    q, _ = np.linalg.qr(mat.T)  # independent Gram-Schmidt: the same orthonormal basis up to sign
    ounit = omat / np.linalg.norm(omat, axis=1, keepdims=True)
    np.testing.assert_allclose(np.abs(np.sum(ounit * q.T, axis=1)), 1.0, atol=1e-6)
    np.testing.assert_array_equal(omat[0], mat[0])
    surf2 = fastscape.loss_surface(model, (x, y), ortho, loss_fn=F.cross_entropy, grid=2, device="cpu")
    np.testing.assert_allclose(surf2.meta["cosines"], np.eye(3), atol=1e-6)
    assert surf2.meta["directions"]["orthogonalized"] is True


def test_cosines_of_subset_directions_count_every_entry(gen):
    """Directions over a subset (zeros elsewhere, some zero in one direction only): the recorded
    cosines are numpy's over the whole flattened vectors."""
    model = MLP()
    x, y = torch.randn(10, 5, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    a = fastscape.random_directions(model, 2, seed=1, params=["net.0", "net.2"])
    b = fastscape.random_directions(model, 1, seed=2, params="net.2")[0]
    dirs = [a[0], {k: a[1][k] + b[k] + a[0][k] for k in b}]
    dirs[1]["net.0.weight"] = torch.zeros_like(dirs[1]["net.0.weight"])  # zero in one direction only
    mat = np.stack([np.concatenate([d[k].double().numpy().ravel() for k in d]) for d in dirs])
    unit = mat / np.linalg.norm(mat, axis=1, keepdims=True)
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=2, device="cpu")
    np.testing.assert_allclose(surf.meta["cosines"], unit @ unit.T, rtol=1e-12, atol=1e-12)
    assert 0.05 < abs(surf.meta["cosines"][0][1]) < 0.95


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_nonfinite_entry_anywhere_in_a_direction_is_named(gen, bad):
    model = MLP()
    x, y = torch.randn(10, 5, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    dirs = fastscape.random_directions(model, 2, seed=1)
    dirs[1]["net.2.weight"].view(-1)[7] = bad
    with pytest.warns(UserWarning, match=r"`directions\[1\]\['net.2.weight'\]` holds (NaN|inf)"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=2, device="cpu")


# ---------------------------------------------------------------- axes


def test_axis_grid_over_raw_weights_is_the_two_weight_closed_form(gen):
    model = TwoWeightNet()
    x = torch.randn(50, 1, generator=gen) * 2
    y = torch.sin(x) + 0.1 * torch.randn(50, 1, generator=gen)
    names = ["net.0.weight", "net.2.weight"]
    w1s, w2s = np.linspace(-2, 2, 7), np.linspace(-1, 3, 5)
    surf = fastscape.loss_surface(model, (x, y), fastscape.axis_directions(model, names),
                                  origin=fastscape.axis_origin(model, names), loss_fn=F.mse_loss,
                                  grid=[w1s, w2s], device="cpu", dtype=torch.float64)
    xs, ys = x.double().numpy().ravel(), y.double().numpy().ravel()
    closed = np.array([[np.mean((b * np.tanh(a * xs) - ys) ** 2) for b in w2s] for a in w1s])
    np.testing.assert_allclose(surf.loss, closed, rtol=1e-12)
    assert surf.meta["directions"] == {"kind": "axis", "names": names}
    # at="current": coordinates are offsets from the current weights
    cur = fastscape.loss_surface(model, (x, y), fastscape.axis_directions(model, names),
                                 origin=fastscape.axis_origin(model, names, at="current"), loss_fn=F.mse_loss,
                                 grid=[np.array([0.0]), np.array([0.0])], device="cpu", dtype=torch.float64)
    w1, w2 = model.net[0].weight.item(), model.net[2].weight.item()
    assert cur.loss[0, 0] == pytest.approx(np.mean((w2 * np.tanh(w1 * xs) - ys) ** 2), rel=1e-12)


def test_axis_direction_on_one_element_of_a_tensor():
    model = MLP()
    d = fastscape.axis_directions(model, ["net.0.weight[2, 4]", "net.4.bias[1]"])
    assert float(d[0]["net.0.weight"][2, 4]) == 1.0 and float(d[0]["net.0.weight"].sum()) == 1.0
    assert sum(float(t.abs().sum()) for t in d[1].values()) == 1.0
    origin = fastscape.axis_origin(model, ["net.0.weight[2, 4]"])
    assert float(origin["net.0.weight"][2, 4]) == 0.0
    assert model.net[0].weight[2, 4].item() != 0.0  # the model is untouched


@pytest.mark.parametrize("names,match", [
    (["fc.weight"], r"`names` entry 'fc.weight' is not a parameter of the model"),
    (["net.0.weight"], r"`names` entry 'net.0.weight' has 80 elements; name one element, e.g. 'net.0.weight\[0, 0\]'"),
    (["net.0.weight[16, 0]"], r"`names` entry 'net.0.weight\[16, 0\]' is out of range for shape \(16, 5\)"),
    (["net.0.weight[1, 1]", "net.0.weight[1,1]"], r"name the same element"),
    ([], r"`names` must list at least one parameter entry"),
])
def test_axis_errors(names, match):
    with pytest.raises(ValueError, match=match):
        fastscape.axis_directions(MLP(), names)


def test_axis_origin_error():
    with pytest.raises(ValueError, match=r"`at` must be one of \['zero', 'current'\]; got 'middle'"):
        fastscape.axis_origin(MLP(), ["net.0.weight[0, 0]"], at="middle")


# ---------------------------------------------------------------- interpolation


def _three_cnns(gen):
    # float64 models, so that θa + 1 * (θb - θa) is θb to round-off (in float32 the
    # difference itself is rounded, and the loss at 1 is b's own only to ~1e-7)
    models = []
    x = torch.randn(16, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (16,), generator=gen)
    for seed in range(3):
        torch.manual_seed(seed)
        m = SmallCNN().double()
        trained_bn_stats(m, x + 0.5 * seed)  # different running statistics per model
        m.eval()
        models.append(m)
    return models, x, y


def test_line_between_two_models_hits_each_models_loss(gen):
    (a, b, _), x, y = _three_cnns(gen)
    snaps = [_state(a), _state(b)]
    d = fastscape.interpolation_directions(a, b)
    assert isinstance(d, fastscape.Directions) and len(d) == 1 and d.info["states"] is True
    surf = fastscape.loss_surface(a, (x, y), d, origin=a, loss_fn=F.cross_entropy, grid=(-0.5, 1.5, 5),
                                  device="cpu", dtype=torch.float64)
    assert surf.coords[0][1] == 0.0 and surf.coords[0][3] == 1.0
    assert surf.loss[1] == pytest.approx(_own_loss(a, x, y), rel=1e-10)
    assert surf.loss[3] == pytest.approx(_own_loss(b, x, y), rel=1e-10)
    _assert_unchanged(a, snaps[0])
    _assert_unchanged(b, snaps[1])
    # extrapolation is a plain loop over the same line, statistics included
    origin = {**model_parameters(a), **dict(a.named_buffers())}
    ref = loop_surface(a, x, y, F.cross_entropy, origin, d, surf.coords)
    np.testing.assert_allclose(surf.loss, ref, rtol=1e-9)
    # states=False: b's weights with a's statistics at 1
    w = fastscape.interpolation_directions(a, b.state_dict(), states=False)
    assert not any("running" in k for k in w[0])
    s2 = fastscape.loss_surface(a, (x, y), w, origin=a, loss_fn=F.cross_entropy, grid=[np.array([1.0])],
                                device="cpu", dtype=torch.float64)
    mixed = copy.deepcopy(a)
    mixed.load_state_dict({**a.state_dict(), **dict(b.named_parameters())})
    assert s2.loss[0] == pytest.approx(_own_loss(mixed, x, y), rel=1e-10)
    assert s2.loss[0] != pytest.approx(_own_loss(b, x, y), rel=1e-6)


def test_plane_through_three_models_hits_all_three(gen):
    (a, b, c), x, y = _three_cnns(gen)
    own = [_own_loss(m, x, y) for m in (a, b, c)]
    d = fastscape.interpolation_directions(a, b, c)
    surf = fastscape.loss_surface(a, (x, y), d, origin=a, loss_fn=F.cross_entropy, grid=(0, 1, 2),
                                  device="cpu", dtype=torch.float64)
    np.testing.assert_allclose([surf.loss[0, 0], surf.loss[1, 0], surf.loss[0, 1]], own, rtol=1e-10)

    e, pos = fastscape.interpolation_plane(a, b, c)
    assert pos.shape == (3, 2) and e.info["positions"] == pos.tolist()
    keys = [k for k, _ in a.named_parameters()]
    flat = lambda dd: np.concatenate([dd[k].double().numpy().ravel() for k in keys])  # noqa: E731
    basis = np.stack([flat(e[0]), flat(e[1])])
    np.testing.assert_allclose(basis @ basis.T, np.eye(2), atol=1e-5)
    # positions: least-squares coordinates of each model's offset in the basis
    offsets = np.stack([flat(model_parameters(m)) - flat(model_parameters(a)) for m in (a, b, c)])
    lsq = np.linalg.lstsq(basis.T, offsets.T, rcond=None)[0].T
    np.testing.assert_allclose(pos, lsq, atol=1e-4)
    axes = [np.unique([0.0, pos[1, 0], pos[2, 0]]), np.array([0.0, pos[2, 1]])]
    plane = fastscape.loss_surface(a, (x, y), e, origin=a, loss_fn=F.cross_entropy, grid=axes,
                                   device="cpu", dtype=torch.float64)
    at = lambda p: plane.loss[list(axes[0]).index(p[0]), list(axes[1]).index(p[1])]  # noqa: E731
    np.testing.assert_allclose([at(p) for p in pos], own, rtol=1e-5)


def test_interpolation_errors(gen):
    a, b = MLP(), MLP()
    with pytest.raises(ValueError, match=r"`model_b\['net.0.weight'\]` has shape \(5, 16\); `model_a` has shape \(16, 5\)"):
        fastscape.interpolation_directions(a, {**b.state_dict(), "net.0.weight": torch.zeros(5, 16)})
    with pytest.raises(ValueError, match=r"`model_c` has no entry for \['net.4.bias'\]"):
        sd = b.state_dict()
        del sd["net.4.bias"]
        fastscape.interpolation_directions(a, b, sd)
    with pytest.raises(TypeError, match="`model_a` must be an nn.Module, or a state dict with another model given "
                                        "as an nn.Module .*; got OrderedDict and no nn.Module"):
        fastscape.interpolation_directions(a.state_dict(), b.state_dict())  # a state dict alone: no architecture
    with pytest.raises(TypeError, match="`model_a` must be an nn.Module, or a state dict .*; got int\\.$"):
        fastscape.interpolation_directions(3, b)
    with pytest.raises(TypeError, match="`model_b` must be an nn.Module or a state dict; got int"):
        fastscape.interpolation_directions(a, 3)
    with pytest.raises(TypeError, match="`model_c` is required: a plane needs three models"):
        fastscape.interpolation_plane(a, b, None)
    with pytest.raises(ValueError, match="`model_b` has the same parameters as `model_a`"):
        fastscape.interpolation_plane(a, copy.deepcopy(a), b)
    mid = copy.deepcopy(a)
    with torch.no_grad():
        for p, q, r in zip(mid.parameters(), a.parameters(), b.parameters()):
            p.copy_(0.25 * q + 0.75 * r)
    with pytest.raises(ValueError, match="`model_c` lies on the line through `model_a` and `model_b`"):
        fastscape.interpolation_plane(a, b, mid)
    with pytest.raises(TypeError, match="`states` must be True or False; got 'yes'"):
        fastscape.interpolation_directions(a, b, states="yes")


# ---------------------------------------------------------------- errors


def test_random_direction_errors():
    model = MLP()
    with pytest.raises(ValueError, match=r"`norm` must be one of \['filter', 'layer', 'model', None\]; got 'unit'"):
        fastscape.random_directions(model, norm="unit")
    with pytest.raises(ValueError, match=r"`ignore` must be one of \['biasbn', None\]; got 'bias'"):
        fastscape.random_directions(model, ignore="bias")
    with pytest.raises(ValueError, match="`n` must be a positive integer; got 0"):
        fastscape.random_directions(model, 0)
    with pytest.raises(TypeError, match="`seed` must be an int or None; got 1.5"):
        fastscape.random_directions(model, seed=1.5)
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator; got int"):
        fastscape.random_directions(model, generator=3)
    with pytest.raises(TypeError, match="`states` must be True or False; got 1"):
        fastscape.random_directions(model, states=1)


def test_normalize_and_orthogonalize_errors(gen):
    model = MLP()
    w = model_parameters(model)
    d = fastscape.random_directions(model, 2, seed=0)
    with pytest.raises(ValueError, match=r"`weights` has no entry for the direction's key\(s\) \['extra'\]"):
        fastscape.normalize({**d[0], "extra": torch.zeros(2)}, w)
    with pytest.raises(ValueError, match=r"`weights\['net.0.bias'\]` has shape \(16,\); the direction has shape \(3,\)"):
        fastscape.normalize({**d[0], "net.0.bias": torch.zeros(3)}, w)
    with pytest.raises(ValueError, match=r"`norm` must be one of"):
        fastscape.normalize(d[0], w, norm="unit")
    with pytest.raises(ValueError, match=r"`directions\[1\]` is zero or lies in the span of the directions before it"):
        fastscape.orthogonalize([d[0], {k: 2 * v for k, v in d[0].items()}])
    with pytest.raises(ValueError, match=r"`directions\[1\]` has different keys from `directions\[0\]`"):
        fastscape.orthogonalize([d[0], {"net.0.weight": d[1]["net.0.weight"]}])
    with pytest.raises(TypeError, match="`directions` must be a non-empty list of direction dicts; got dict"):
        fastscape.orthogonalize(d[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_directions_on_the_models_device_and_seed_independent_of_device():
    model = MLP()
    cpu = fastscape.random_directions(model, 1, seed=9)[0]
    gpu = fastscape.random_directions(copy.deepcopy(model).cuda(), 1, seed=9)[0]
    assert gpu["net.0.weight"].device.type == "cuda"
    for k in cpu:
        torch.testing.assert_close(gpu[k].cpu(), cpu[k], rtol=1e-5, atol=1e-6)


def test_unseeded_directions_record_the_seed_that_reproduces_them():
    """seed=None draws fresh directions, and `.info["seed"]` is the seed that draws them again."""
    model = TwoWeightNet()
    fresh = fastscape.random_directions(model, 2, seed=None)
    seed = fresh.info["seed"]
    assert isinstance(seed, int)
    again = fastscape.random_directions(model, 2, seed=seed)
    for a, b in zip(fresh, again):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# --------------------------------------------------------------------------- arguments


def test_random_directions_of_none_names_the_argument():
    with pytest.raises(TypeError, match=r"`model` must be a torch.nn.Module; got NoneType"):
        fastscape.random_directions(None)
