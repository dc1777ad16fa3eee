"""fastscape.connect: barriers, curves, alignment and BatchNorm recalibration, each against a
plain per-point loop written here (load the weights into a copy of the model, run it)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape
import fastscape.connect as connect
from tests.connect_models import FlatCNN, ResidualCNN
from tests.models import MLP, SmallCNN, assert_unchanged, snapshot, trained_bn_stats


def _pair(cls, seed_a=0, seed_b=1):
    torch.manual_seed(seed_a)
    a = cls()
    torch.manual_seed(seed_b)
    b = cls()
    if cls is not MLP:
        g = torch.Generator().manual_seed(5)
        trained_bn_stats(a, torch.randn(16, 1, 8, 8, generator=g))
        trained_bn_stats(b, torch.randn(16, 1, 8, 8, generator=g) + 0.5)
    return a.eval(), b.eval()


def _data(cls, n=24, seed=3):
    g = torch.Generator().manual_seed(seed)
    if cls is MLP:
        return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3 if cls is FlatCNN else 4, (n,), generator=g)


def _calibration(cls):
    x, _ = _data(cls, 30, seed=9)
    return [(x[:12], torch.zeros(12)), (x[12:22], torch.zeros(10)), (x[22:], torch.zeros(8))]


def _reference_loss(template, state, data, loss_fn, calibration=None):
    """One point by hand: a copy of the model with ``state`` loaded; BatchNorm statistics
    recomputed in train mode with momentum=None when ``calibration`` is given; then eval."""
    model = copy.deepcopy(template)
    with torch.no_grad():
        for k, v in model.state_dict(keep_vars=True).items():
            if k in state:
                v.copy_(state[k])
        if calibration is not None:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.reset_running_stats()
                    m.momentum = None
            model.train()
            for x, _ in calibration:
                model(x)
        model.eval()
        x, y = data
        return float(loss_fn(model(x), y))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def _mix(states, weights):
    return {k: sum(w * s[k] for w, s in zip(weights, states)) for k in states[0]}


# ----------------------------------------------------------------------------- recalibration


@pytest.mark.parametrize("cls", [SmallCNN, ResidualCNN])
def test_loss_surface_recalibrates_batchnorm_at_every_point_like_a_per_point_loop(cls):
    model, _ = _pair(cls)
    data, cal = _data(cls), _calibration(cls)
    dirs = fastscape.random_directions(model, 1, seed=0)
    snap = snapshot(model)
    surf = fastscape.loss_surface(model, data, dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 5), device="cpu",
                                  progress=False, recalibrate=cal, chunk_size=2)
    assert_unchanged(model, snap)
    base = _state(model)
    for i, c in enumerate(surf.coords[0]):
        point = {k: base[k] + float(c) * dirs[0][k] if k in dirs[0] else base[k] for k in base}
        assert surf.loss[i] == pytest.approx(_reference_loss(model, point, data, F.cross_entropy, cal), rel=2e-5)
    # the statistics change the values: without recalibration the points keep the model's own
    plain = fastscape.loss_surface(model, data, dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 5), device="cpu",
                                   progress=False)
    assert not np.allclose(plain.loss, surf.loss, rtol=1e-3)


def test_recalibration_bad_input_names_the_argument():
    model, _ = _pair(SmallCNN)
    data = _data(SmallCNN)
    dirs = fastscape.random_directions(model, 1, seed=0)
    kw = dict(loss_fn=F.cross_entropy, grid=(-1, 1, 3), device="cpu", progress=False)
    x = data[0]
    with pytest.raises(ValueError, match="`recalibrate` batch 1 holds 1 sample"):
        fastscape.loss_surface(model, data, dirs, recalibrate=[(x[:4], x[:4]), (x[4:5], x[4:5])], **kw)
    with pytest.raises(ValueError, match="`recalibrate` holds no samples"):
        fastscape.loss_surface(model, data, dirs, recalibrate=[], **kw)
    mlp = MLP()
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        fastscape.loss_surface(mlp, _data(MLP), fastscape.random_directions(mlp, 1, seed=0), recalibrate=_data(MLP),
                               **kw)


# ----------------------------------------------------------------------------- barrier


@pytest.mark.parametrize("cls,recal", [(MLP, False), (SmallCNN, False), (SmallCNN, True), (ResidualCNN, True)])
def test_barrier_matches_a_per_point_loop(cls, recal):
    a, b = _pair(cls)
    data = _data(cls)
    cal = _calibration(cls) if recal else None
    snaps = snapshot(a), snapshot(b)
    res = connect.barrier(a, b, data, loss_fn=F.cross_entropy, metrics={"accuracy": fastscape.accuracy}, n=9,
                          recalibrate=cal, device="cpu")
    assert_unchanged(a, snaps[0])
    assert_unchanged(b, snaps[1])
    sa, sb = _state(a), _state(b)
    ref = np.array([_reference_loss(a, _mix([sa, sb], [1 - t, t]), data, F.cross_entropy, cal) for t in res.t])
    np.testing.assert_allclose(res.values["loss"], ref, rtol=2e-5)
    rise = ref - ((1 - res.t) * ref[0] + res.t * ref[-1])
    assert res.heights["loss"] == pytest.approx(rise.max(), abs=1e-5)
    assert res.argmax["loss"] == res.t[int(np.argmax(rise))]
    acc = res.values["accuracy"]
    assert res.heights["accuracy"] == pytest.approx(np.max((1 - res.t) * acc[0] + res.t * acc[-1] - acc), abs=1e-9)


def test_barrier_of_several_pairs_in_one_call_equals_each_pair():
    a, b = _pair(MLP)
    c, d = _pair(MLP, 2, 3)
    data = _data(MLP)
    both = connect.barrier([a, c], [b, d], data, loss_fn=F.cross_entropy, n=7, device="cpu")
    assert len(both) == 2
    for res, (x, y) in zip(both, [(a, b), (c, d)]):
        sx, sy = _state(x), _state(y)
        ref = [_reference_loss(a, _mix([sx, sy], [1 - t, t]), data, F.cross_entropy) for t in res.t]
        np.testing.assert_allclose(res.values["loss"], ref, rtol=1e-5)
    # the ends are the models themselves
    assert both[1].values["loss"][0] == pytest.approx(float(F.cross_entropy(c(data[0]), data[1]).detach()), rel=1e-6)


def test_barrier_bad_input():
    a, b = _pair(MLP)
    data = _data(MLP)
    with pytest.raises(ValueError, match="`model_b` is a SmallCNN and `model_a` a MLP"):
        connect.barrier(a, SmallCNN(), data, loss_fn=F.cross_entropy)
    with pytest.raises(ValueError, match=r"`model_b\['net.0.weight'\]` has shape \(8, 5\)"):
        connect.barrier(a, MLP(hidden=8), data, loss_fn=F.cross_entropy)
    with pytest.raises(ValueError, match="`n` must be an integer >= 2"):
        connect.barrier(a, b, data, loss_fn=F.cross_entropy, n=1)
    with pytest.raises(ValueError, match="as many models"):
        connect.barrier([a], [b, b], data, loss_fn=F.cross_entropy)
    with pytest.raises(TypeError, match="both be lists"):
        connect.barrier([a], b, data, loss_fn=F.cross_entropy)


# ----------------------------------------------------------------------------- alignment


def _permute_mlp(model, p0, p1):
    out = copy.deepcopy(model)
    n = out.net
    with torch.no_grad():
        n[0].weight.copy_(model.net[0].weight[p0])
        n[0].bias.copy_(model.net[0].bias[p0])
        n[2].weight.copy_(model.net[2].weight[p1][:, p0])
        n[2].bias.copy_(model.net[2].bias[p1])
        n[4].weight.copy_(model.net[4].weight[:, p1])
    return out


def _permute_residual(model, ps, pb):
    """The stem's channels (shared with the block's output through the sum) by ``ps``, the
    block's inner channels by ``pb``."""
    out = copy.deepcopy(model)
    src, dst = model.state_dict(), out.state_dict()
    with torch.no_grad():
        for k in dst:
            v = src[k]
            if k.startswith(("stem.", "block.4.")) and v.dim() >= 1:
                v = v[ps]
            if k.startswith(("block.0.", "block.1.")) and v.dim() >= 1:
                v = v[pb]
            if k == "block.0.weight":
                v = v[:, ps]
            if k == "block.3.weight":
                v = v[ps][:, pb]
            if k == "block.3.bias":
                v = v[ps]
            if k == "head.weight":
                v = v[:, ps]
            dst[k].copy_(v)
    return out


@pytest.mark.parametrize("cls", [MLP, ResidualCNN])
def test_align_recovers_a_planted_permutation(cls):
    a, _ = _pair(cls)
    g = torch.Generator().manual_seed(1)
    if cls is MLP:
        b = _permute_mlp(a, torch.randperm(16, generator=g), torch.randperm(16, generator=g))
    else:
        b = _permute_residual(a, torch.randperm(6, generator=g), torch.randperm(5, generator=g))
    snap = snapshot(b)
    al = connect.align(a, b)
    assert_unchanged(b, snap)
    assert not all(torch.equal(v, a.state_dict()[k]) for k, v in b.state_dict().items())
    for k, v in al.model.state_dict().items():
        assert torch.equal(v, a.state_dict()[k]), k


@pytest.mark.parametrize("cls", [MLP, SmallCNN, ResidualCNN, FlatCNN])
def test_aligned_model_computes_the_same_function(cls):
    a, b = _pair(cls)
    snaps = snapshot(a), snapshot(b)
    al = connect.align(a, b)
    assert_unchanged(a, snaps[0])
    assert_unchanged(b, snaps[1])
    x, _ = _data(cls)
    with torch.no_grad():
        torch.testing.assert_close(al.model(x), b(x), rtol=1e-5, atol=1e-6)
    moved = [g for g, p in al.permutations.items() if not np.array_equal(p, np.arange(len(p)))]
    assert moved, "two random models align with some units moved"
    assert al.meta["objective"][1] >= al.meta["objective"][0]


def test_align_bad_input():
    with pytest.raises(ValueError, match="`model_a` has no hidden units to permute"):
        connect.align(nn.Linear(3, 2), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="`model_b` and `model_a` have different parameters|`model_b` is a"):
        connect.align(MLP(), SmallCNN())

    class Gru(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.norm = nn.LayerNorm(4)

        def forward(self, x):
            return self.norm(self.fc(x))

    with pytest.raises(ValueError, match="`model_a`: module 'norm' \\(LayerNorm\\) is not supported"):
        connect.align(Gru(), Gru())


# ----------------------------------------------------------------------------- curves


def _two_minima():
    """A tanh net fitted to a smooth target, and the same net with its hidden units reversed:
    two minima of equal loss that the straight line separates (its midpoint averages units)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(128, 2, generator=g) * 4 - 2
    y = torch.sin(2 * x[:, :1]) * torch.cos(1.5 * x[:, 1:])
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1))
    opt = torch.optim.Adam(a.parameters(), 0.02)
    for _ in range(600):
        opt.zero_grad()
        F.mse_loss(a(x), y).backward()
        opt.step()
    b = copy.deepcopy(a)
    r = torch.arange(5, -1, -1)
    with torch.no_grad():
        b[0].weight.copy_(a[0].weight[r])
        b[0].bias.copy_(a[0].bias[r])
        b[2].weight.copy_(a[2].weight[:, r])
    return a.eval(), b.eval(), (x, y)


def test_trained_curve_removes_the_barrier_of_the_straight_line():
    a, b, data = _two_minima()
    snaps = snapshot(a), snapshot(b)
    curve = connect.train_curve(a, b, data, loss_fn=F.mse_loss, epochs=200, lr=0.05, batch_size=32)
    prof = connect.evaluate_curve(curve, a, data, loss_fn=F.mse_loss, n=41)
    assert_unchanged(a, snaps[0])
    assert_unchanged(b, snaps[1])
    own = [float(F.mse_loss(m(data[0]), data[1]).detach()) for m in (a, b)]
    # the ends of the curve and of the line are the two models
    for values in (prof.curve, prof.line):
        assert values["loss"][0] == pytest.approx(own[0], rel=1e-6)
        assert values["loss"][-1] == pytest.approx(own[1], rel=1e-6)
    line, on_curve = prof.heights["line"]["loss"], prof.heights["curve"]["loss"]
    assert line > 5.0 and on_curve < 0.05 * line, (line, on_curve)
    # the curve's values against a per-point loop on the Bezier formula
    sa, sm, sb = curve.a, curve.bend, curve.b
    for i in (5, 20, 33):
        t = prof.t[i]
        point = _mix([sa, sm, sb], [(1 - t) ** 2, 2 * t * (1 - t), t ** 2])
        assert prof.curve["loss"][i] == pytest.approx(_reference_loss(a, point, data, F.mse_loss), rel=1e-5)


@pytest.mark.parametrize("cls", [SmallCNN, ResidualCNN])
def test_polychain_on_batchnorm_nets_matches_a_per_point_loop_with_recalibration(cls):
    a, b = _pair(cls)
    data, cal = _data(cls), _calibration(cls)
    curve = connect.train_curve(a, b, data, loss_fn=F.cross_entropy, kind="polychain", epochs=1, batch_size=8)
    prof = connect.evaluate_curve(curve, a, data, loss_fn=F.cross_entropy, n=5, recalibrate=cal, line=False)
    assert prof.line is None
    for t, v in zip(prof.t, prof.curve["loss"]):
        w = [1 - 2 * t, 2 * t, 0.0] if t <= 0.5 else [0.0, 2 - 2 * t, 2 * t - 1]
        point = _mix([curve.a, curve.bend, curve.b], w)
        assert v == pytest.approx(_reference_loss(a, point, data, F.cross_entropy, cal), rel=2e-5)


def test_curve_bad_input():
    a, b = _pair(MLP)
    data = _data(MLP)
    with pytest.raises(ValueError, match="`kind` must be one of \\['bezier', 'polychain'\\]"):
        connect.train_curve(a, b, data, loss_fn=F.cross_entropy, kind="spline")
    with pytest.raises(ValueError, match="`epochs` must be"):
        connect.train_curve(a, b, data, loss_fn=F.cross_entropy, epochs=0)
    with pytest.raises(TypeError, match="`curve` must be a Curve"):
        connect.evaluate_curve({}, a, data, loss_fn=F.cross_entropy)
    curve = connect.train_curve(a, b, data, loss_fn=F.cross_entropy, epochs=1)
    with pytest.raises(ValueError, match="`curve.a` and `model` have different parameters"):
        connect.evaluate_curve(curve, SmallCNN(), _data(SmallCNN), loss_fn=F.cross_entropy)


# ----------------------------------------------------------------------------- views


def test_views_draw_profiles_and_barriers(tmp_path):
    a, b = _pair(MLP)
    data = {"train": _data(MLP), "test": _data(MLP, seed=4)}
    kw = dict(loss_fn=F.cross_entropy, metrics={"accuracy": fastscape.accuracy}, n=5, device="cpu")
    raw = connect.barrier(a, b, data, label="raw", **kw)
    curve = connect.train_curve(a, b, data["train"], loss_fn=F.cross_entropy, epochs=1)
    prof = connect.evaluate_curve(curve, a, data, **kw)
    ax = fastscape.plot.curve_profile(prof, value="accuracy")
    assert len(ax.get_lines()) == 4  # train and test, curve and line
    assert ax._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # shows as a picture in Jupyter
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), prof.curve["train/accuracy"])
    ax2 = fastscape.plot.barriers([raw], value="test/loss")
    np.testing.assert_array_equal(ax2.get_lines()[0].get_ydata(), raw.values["test/loss"])
    with pytest.raises(ValueError, match="`value` must name one of"):
        fastscape.plot.curve_profile(prof, value="error")
    with pytest.raises(TypeError, match="`lines` must be a Barrier"):
        fastscape.plot.barriers([prof])


def test_a_file_vouches_for_the_calibration_data(tmp_path):
    model, _ = _pair(SmallCNN)
    data, cal = _data(SmallCNN), _calibration(SmallCNN)
    dirs = fastscape.random_directions(model, 1, seed=0)
    kw = dict(loss_fn=F.cross_entropy, grid=(-1, 1, 3), device="cpu", progress=False, out=tmp_path / "s.h5")
    first = fastscape.loss_surface(model, data, dirs, recalibrate=cal, **kw)
    again = fastscape.loss_surface(model, data, dirs, recalibrate=cal, **kw)
    np.testing.assert_array_equal(first.loss, again.loss)
    other = [(x + 1, y) for x, y in cal]
    with pytest.raises(ValueError, match="data_fingerprint"):
        fastscape.loss_surface(model, data, dirs, recalibrate=other, **kw)
    with pytest.raises(ValueError, match="data_fingerprint"):
        fastscape.loss_surface(model, data, dirs, **kw)
