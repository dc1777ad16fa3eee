"""Every figure holds the data it was given, draws gaps for diverged points, and
leaves the model alone; references are plain numpy formulas and per-point loops."""

from __future__ import annotations

import copy

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fastscape
from fastscape._plot_animate import snapshot_predictions
from fastscape._plot_common import auto_zmax
from fastscape._plot_gradient import loss_and_gradient, lr_steps
from fastscape._plot_network import hidden_activations
from fastscape._plotly_mpl import plotly_to_matplotlib
from fastscape._plotting import path_heights
from fastscape._surface import Surface


def _plane(nx=21, ny=15, diverge=False):
    """A non-square grid, so a transpose mistake cannot go unnoticed."""
    x = np.linspace(-1, 2, nx)
    y = np.linspace(-1, 1, ny)
    loss = 0.05 + (x[:, None] - 0.3) ** 2 + 3 * y[None, :] ** 2 + 0.2 * x[:, None] * y[None, :]
    if diverge:
        loss[-3:, -2:] = np.inf
        loss[0, 0] = np.nan
    return Surface(coords=[x, y], loss=loss)


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()])


def _assert_unchanged(model, snap):
    state, flags = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == flags


def _path(t=9):
    return np.stack([np.linspace(1.8, 0.3, t), np.linspace(0.9, 0.0, t)], axis=1)


# ----------------------------------------------------------------------------- 3D surface


def test_surface3d_holds_surface_and_path():
    s = _plane()
    path = _path()
    losses = np.linspace(5, 1, len(path))
    fig = fastscape.plot_surface3d(s, path=path, path_loss=losses, zmax=None)
    surf, line, start, end = fig.data
    np.testing.assert_array_equal(np.asarray(surf.z), s.loss.T)  # plotly's z is (y, x)
    np.testing.assert_array_equal(surf.x, s.coords[0])
    np.testing.assert_array_equal(surf.y, s.coords[1])
    np.testing.assert_array_equal(np.stack([line.x, line.y], axis=1), path)
    np.testing.assert_array_equal(line.z, losses)
    np.testing.assert_array_equal(line.marker.color, np.arange(len(path)))
    assert "lines" in line.mode and "markers" in line.mode
    assert (start.x[0], start.y[0]) == tuple(path[0]) and (end.x[0], end.y[0]) == tuple(path[-1])
    assert surf.contours.z.show and surf.contours.z.project.z  # floor contours
    assert fig.layout.scene.xaxis.title.text == "direction 1"


def test_surface3d_path_lies_on_the_surface():
    s = _plane()
    fig = fastscape.plot_surface3d(s, path=_path(), zmax=None)
    # bilinear interpolation, checked against a direct formula at grid nodes
    nodes = np.array([[s.coords[0][4], s.coords[1][7]], [s.coords[0][10], s.coords[1][2]]])
    np.testing.assert_allclose(path_heights(s, nodes), [s.loss[4, 7], s.loss[10, 2]])
    assert np.all(np.isfinite(fig.data[1].z))


def test_surface3d_gaps_log_and_clipping():
    s = _plane(diverge=True)
    fig = fastscape.plot_surface3d(s, log=True, zmax=None)
    z = np.asarray(fig.data[0].z, dtype=float).T
    bad = ~np.isfinite(s.loss)
    assert np.isnan(z[bad]).all()
    np.testing.assert_allclose(z[~bad], np.log10(s.loss[~bad]))
    # one huge spike: "auto" clips it, a bowl is left alone
    spiky = _plane()
    spiky.loss[5, 5] = 1e9
    z = np.asarray(fastscape.plot_surface3d(spiky).data[0].z, dtype=float).T
    assert z.max() < 1e3 and z[5, 5] == z.max()
    np.testing.assert_array_equal(np.asarray(fastscape.plot_surface3d(_plane()).data[0].z), _plane().loss.T)
    assert auto_zmax(_plane().loss) is None
    z = np.asarray(fastscape.plot_surface3d(s, zmax=2.0).data[0].z, dtype=float)
    assert np.nanmax(z) == 2.0


def test_surface3d_rejects_bad_input():
    with pytest.raises(ValueError, match=r"`path` must have shape \(T, 2\)"):
        fastscape.plot_surface3d(_plane(), path=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="`path_loss` must hold one loss per path point"):
        fastscape.plot_surface3d(_plane(), path=_path(5), path_loss=[1, 2])
    with pytest.raises(ValueError, match="needs a surface along 2 directions; got one along 1"):
        fastscape.plot_surface3d(Surface(coords=[np.arange(3.0)], loss=np.arange(3.0)))
    with pytest.raises(ValueError, match="`zmax` must be a number, None or 'auto'"):
        fastscape.plot_surface3d(_plane(), zmax="high")


# ----------------------------------------------------------------------------- contour


def test_contour_log_levels_path_and_gaps():
    s = _plane(diverge=True)
    s.loss = s.loss * 1.0
    s.loss[~np.isfinite(s.loss)] = np.inf
    path = _path()
    ax = fastscape.plot_contour(s, path=path, levels=12)
    assert isinstance(ax, matplotlib.axes.Axes)
    filled = next(c for c in ax.collections if isinstance(c, matplotlib.contour.QuadContourSet) and c.filled)
    lv = np.asarray(filled.levels)
    finite = s.loss[np.isfinite(s.loss)]
    np.testing.assert_allclose(lv, np.geomspace(finite.min(), finite.max(), 12))  # log-spaced
    np.testing.assert_allclose(filled.get_array().mask is not None, True)
    line = next(l for l in ax.lines if l.get_label() == "path")
    np.testing.assert_array_equal(np.stack([line.get_xdata(), line.get_ydata()], axis=1), path)
    steps = next(c for c in ax.collections if c.get_array() is not None and len(c.get_offsets()) == len(path))
    np.testing.assert_array_equal(steps.get_offsets(), path)
    np.testing.assert_array_equal(steps.get_array(), np.arange(len(path)))
    assert any(t.get_text() for t in ax.texts)  # level labels
    # linear levels when the range is narrow, line contours when asked
    ax = fastscape.plot_contour(Surface(coords=s.coords, loss=np.full_like(s.loss, 2.0) + s.coords[0][:, None] * 0.1),
                                filled=False, levels=5)
    assert not np.allclose(np.diff(ax.collections[0].levels), 0)


def test_contour_draws_into_given_axes_and_labels_explained_variance():
    from matplotlib.figure import Figure

    fig = Figure()
    ax0 = fig.add_subplot(121)
    s = _plane()
    ax = fastscape.plot_contour(s, ax=ax0, explained_variance=[0.873, 0.101])
    assert ax is ax0
    assert ax.get_xlabel() == "direction 1 (87.3% of variance)"
    assert ax.get_ylabel() == "direction 2 (10.1% of variance)"
    s.meta = {"directions": {"kind": "pca", "explained_variance_ratio": [0.5, 0.25]}}
    ax = fastscape.plot_contour(s)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC1 (50.0% of variance)", "PC2 (25.0% of variance)")
    s.meta = {"directions": {"kind": "axis", "names": ["fc.weight", "fc.bias"]}}
    assert fastscape.plot_contour(s).get_xlabel() == "fc.weight"
    with pytest.raises(ValueError, match="`explained_variance` must hold fractions in"):
        fastscape.plot_contour(s, explained_variance=[87.3, 10.1])
    with pytest.raises(ValueError, match="`levels` must be an int >= 2"):
        fastscape.plot_contour(s, levels=1)
    with pytest.raises(ValueError, match="`axis_labels` must hold 2 labels"):
        fastscape.plot_contour(s, axis_labels=["a"])


# ----------------------------------------------------------------------------- 1-D lines


def test_line_several_lines_with_accuracy():
    c = np.linspace(-0.5, 1.5, 11)
    a = Surface(coords=[c], loss=(c - 1) ** 2, metrics={"accuracy": 1 - 0.1 * np.abs(c - 1)})
    b = Surface(coords=[c], loss=np.where(c > 1.2, np.inf, c**2))
    ax = fastscape.plot_line({"A": a, "B": b}, marks={"start": 0, "end": 1})
    lines = {l.get_label(): l for l in ax.lines}
    np.testing.assert_array_equal(lines["A"].get_xdata(), c)
    np.testing.assert_array_equal(lines["A"].get_ydata(), a.loss)
    yb = np.asarray(lines["B"].get_ydata(), dtype=float)
    assert np.isnan(yb[c > 1.2]).all()  # diverged: a gap
    twin = ax.figure.axes[-1]
    assert twin is not ax
    np.testing.assert_array_equal(twin.lines[0].get_ydata(), a.metrics["accuracy"])
    with pytest.raises(ValueError, match="needs a surface along 1 direction; got one along 2"):
        fastscape.plot_line(_plane())
    with pytest.raises(TypeError, match="`lines` must be a Surface along one direction"):
        fastscape.plot_line(np.arange(3))


# ----------------------------------------------------------------------------- volume


def _volume():
    c0, c1, c2 = np.linspace(-1, 1, 7), np.linspace(-1, 1, 6), np.linspace(-2, 2, 5)
    loss = c0[:, None, None] ** 2 + 2 * c1[None, :, None] ** 2 + 0.5 * c2[None, None, :] ** 2 + 0.1
    loss[0, 0, 0] = np.inf
    return Surface(coords=[c0, c1, c2], loss=loss)


def test_volume_isosurface_and_slices_hold_the_loss():
    v = _volume()
    fig = fastscape.plot_volume(v, kind="isosurface", zmax=None)
    iso = fig.data[0]
    X, Y, Z = np.meshgrid(*v.coords, indexing="ij")
    np.testing.assert_array_equal(iso.x, X.ravel())
    np.testing.assert_array_equal(iso.z, Z.ravel())
    val = np.asarray(iso.value)
    ok = np.isfinite(v.loss.ravel())
    np.testing.assert_array_equal(val[ok], v.loss.ravel()[ok])
    assert val[~ok].min() > iso.isomax  # a diverged point never closes a shell

    fig = fastscape.plot_volume(v, kind="slices", at=(0.0, 0.2, 0.0), zmax=None)
    i, j, k = 3, 3, 2  # grid points nearest `at`
    np.testing.assert_array_equal(fig.data[0].surfacecolor, v.loss[i])
    np.testing.assert_array_equal(fig.data[1].surfacecolor, v.loss[:, j])
    np.testing.assert_array_equal(fig.data[2].surfacecolor, v.loss[:, :, k])
    assert np.all(np.asarray(fig.data[0].x) == v.coords[0][i])
    with pytest.raises(ValueError, match=r"`kind` must be one of \['isosurface', 'slices'\]"):
        fastscape.plot_volume(v, kind="cubes")
    with pytest.raises(ValueError, match="needs a surface along 3 directions"):
        fastscape.plot_volume(_plane())


# ----------------------------------------------------------------------------- animations


def test_animate_path_frames_follow_the_path():
    path = _path(30)
    fig = fastscape.animate_path(_plane(), path, path_loss=np.linspace(3, 1, 30), max_frames=10)
    assert len(fig.frames) == 10
    for fr in fig.frames:
        i = int(fr.name)
        np.testing.assert_array_equal(np.stack([fr.data[0].x, fr.data[0].y], axis=1), path[: i + 1])
        np.testing.assert_array_equal([fr.data[1].x[0], fr.data[1].y[0]], path[i])
    assert fig.frames[-1].name == "29"  # the end is always shown
    np.testing.assert_allclose(np.asarray(fig.data[0].z), np.log10(_plane().loss.T))
    assert fig.layout.updatemenus[0].buttons[0].method == "animate"


def test_animate_fit_matches_the_model_at_each_snapshot():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 1))
    x = torch.linspace(-2, 2, 40).reshape(-1, 1)
    y = torch.sin(x)
    traj = fastscape.train(net, [(x, y)], loss_fn=F.mse_loss,
                           optimizer=torch.optim.SGD(net.parameters(), lr=0.1), epochs=6, every=2)
    snap = _snapshot(net)
    fig = fastscape.animate_fit(net, traj, x, y, num=50)
    _assert_unchanged(net, snap)
    xs = torch.linspace(-2, 2, 50).reshape(-1, 1)
    for fr in fig.frames:
        i = int(fr.name)
        ref = copy.deepcopy(net)  # independent reference: load the snapshot into a copy
        ref.load_state_dict(traj[i])
        with torch.no_grad():
            expected = ref(xs).reshape(-1).double().numpy()
        np.testing.assert_allclose(fr.data[0].y, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(fig.data[0].x, x.reshape(-1).numpy().astype(float))
    assert f"step {traj.steps[-1]}" in fig.frames[-1].layout.title.text
    with pytest.raises(ValueError, match="`max_frames` must be a positive integer"):
        fastscape.animate_fit(net, traj, x, y, max_frames=0)


def test_snapshot_predictions_rejects_foreign_snapshots():
    net = nn.Linear(1, 1)
    with pytest.raises(ValueError, match="share no parameter name with the model"):
        snapshot_predictions(net, [{"other.weight": torch.zeros(1, 1)}], torch.zeros(2, 1))


# ----------------------------------------------------------------------------- inside the network


def _classifier():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(2, 4), nn.Sigmoid(), nn.Linear(4, 2))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 2, generator=g)
    y = (x.norm(dim=1) > 1.1).long()
    return net, x, y


def test_hidden_lines_are_the_units_zero_sets():
    net, x, y = _classifier()
    snap = _snapshot(net)
    ax = fastscape.plot_hidden_lines(net, x, y)
    _assert_unchanged(net, snap)
    w = net[0].weight.detach().double().numpy()
    b = net[0].bias.detach().double().numpy()
    for i in range(4):
        line = next(l for l in ax.lines if l.get_label() == f"unit {i}")
        pts = np.stack([line.get_xdata(), line.get_ydata()], axis=1)
        np.testing.assert_allclose(pts @ w[i] + b[i], 0.0, atol=1e-9)
    classes = [c for c in ax.collections if c.get_label().startswith("class")]
    np.testing.assert_allclose(np.concatenate([c.get_offsets() for c in classes]),
                               np.concatenate([x[y == 0].numpy(), x[y == 1].numpy()]))
    with pytest.raises(ValueError, match="needs a layer with 2 inputs"):
        fastscape.plot_hidden_lines(nn.Sequential(nn.Linear(3, 2)), torch.zeros(2, 3), [0, 1])


def test_hidden_space_points_are_the_activations():
    net, x, y = _classifier()
    snap = _snapshot(net)
    fig = fastscape.plot_hidden_space(net, x, y, units=(3, 0, 2))
    _assert_unchanged(net, snap)
    w = net[0].weight.detach().double().numpy()
    b = net[0].bias.detach().double().numpy()
    h = 1 / (1 + np.exp(-(x.double().numpy() @ w.T + b)))  # numpy sigmoid reference
    for trace, c in zip(fig.data, (0, 1)):
        sel = y.numpy() == c
        np.testing.assert_allclose(np.stack([trace.x, trace.y, trace.z], axis=1), h[sel][:, [3, 0, 2]],
                                   rtol=1e-6)
    np.testing.assert_allclose(hidden_activations(net, x, layer="0"), x.double().numpy() @ w.T + b, rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"`units` must be in \[0, 4\)"):
        fastscape.plot_hidden_space(net, x, y, units=(0, 1, 7))
    with pytest.raises(ValueError, match="`units` must name 3 different hidden units"):
        fastscape.plot_hidden_space(net, x, y, units=(0, 0, 1))


def test_thresholded_prediction_matches_numpy():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(1, 6), nn.Sigmoid(), nn.Linear(6, 1))
    net.train()  # the flag must come back as it was
    snap = _snapshot(net)
    x = np.linspace(-3, 3, 80)
    ax = fastscape.plot_thresholded(net, x, np.sin(x))
    _assert_unchanged(net, snap)
    w1 = net[0].weight.detach().double().numpy().reshape(-1)
    b1 = net[0].bias.detach().double().numpy()
    w2 = net[2].weight.detach().double().numpy().reshape(-1)
    b2 = float(net[2].bias.detach())
    hard = ((x[:, None] * w1 + b1) > 0).astype(float) @ w2 + b2
    smooth = (1 / (1 + np.exp(-(x[:, None] * w1 + b1)))) @ w2 + b2
    lines = {l.get_label(): l for l in ax.lines}
    np.testing.assert_allclose(lines["thresholded"].get_ydata(), hard, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lines["smooth"].get_ydata(), smooth, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs a 1-D regression net"):
        fastscape.plot_thresholded(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), np.zeros((4, 2)))


# ----------------------------------------------------------------------------- gradient views


def _linreg():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(64, 1, generator=g) * 2
    y = 2 * x + 1 + 0.2 * torch.randn(64, 1, generator=g)
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(-0.5)
        model.bias.fill_(0.25)
    return model, x, y


def _mse(w, b, x, y):
    return np.mean((w * x + b - y) ** 2)


def test_cross_sections_curve_and_tangent_match_closed_form():
    model, x, y = _linreg()
    snap = _snapshot(model)
    fig = fastscape.plot_cross_sections(model, (x, y), loss_fn=F.mse_loss, span=2.0, num=21)
    _assert_unchanged(model, snap)
    assert all(p.grad is None for p in model.parameters())
    xn, yn = x.double().numpy().ravel(), y.double().numpy().ravel()
    w0, b0 = -0.5, 0.25
    r = w0 * xn + b0 - yn
    grads = {"weight": 2 * np.mean(r * xn), "bias": 2 * np.mean(r)}  # d/dw, d/db of the MSE
    for ax, name in zip(fig.axes, ("weight", "bias")):
        assert ax.get_xlabel() == name
        curve = next(l for l in ax.lines if l.get_label() == "loss")
        tangent = next(l for l in ax.lines if l.get_label() == "gradient")
        t = curve.get_xdata()
        ref = [_mse(v, b0, xn, yn) if name == "weight" else _mse(w0, v, xn, yn) for v in t]
        np.testing.assert_allclose(curve.get_ydata(), ref, rtol=1e-5)
        tx, ty = tangent.get_xdata(), tangent.get_ydata()
        np.testing.assert_allclose((ty[1] - ty[0]) / (tx[1] - tx[0]), grads[name], rtol=1e-5)
    with pytest.raises(ValueError, match="`span` must be a positive number"):
        fastscape.plot_cross_sections(model, (x, y), loss_fn=F.mse_loss, span=0)
    with pytest.raises(ValueError, match="`names` is needed for a model with"):
        fastscape.plot_cross_sections(nn.Linear(4, 3), (torch.zeros(2, 4), torch.zeros(2, 3)), loss_fn=F.mse_loss)


def test_loss_and_gradient_is_the_whole_data_mean():
    model, x, y = _linreg()
    loss, g = loss_and_gradient(model, (x, y), loss_fn=F.mse_loss, batch_size=10)  # uneven batches
    xn, yn = x.double().numpy().ravel(), y.double().numpy().ravel()
    r = -0.5 * xn + 0.25 - yn
    assert loss == pytest.approx(np.mean(r**2), rel=1e-5)
    assert float(g["weight"]) == pytest.approx(2 * np.mean(r * xn), rel=1e-5)


def test_lr_steps_land_where_gradient_descent_goes():
    model, x, y = _linreg()
    snap = _snapshot(model)
    names = ["weight", "bias"]
    dirs = fastscape.axis_directions(model, names)
    origin = fastscape.axis_origin(model, names)
    lrs = (0.05, 0.2)
    start, ends, losses = lr_steps(model, (x, y), dirs, origin=origin, loss_fn=F.mse_loss, lrs=lrs)
    xn, yn = x.double().numpy().ravel(), y.double().numpy().ravel()
    r = -0.5 * xn + 0.25 - yn
    g = np.array([2 * np.mean(r * xn), 2 * np.mean(r)])
    np.testing.assert_allclose(start, [-0.5, 0.25], atol=1e-6)
    for lr, end, loss in zip(lrs, ends, losses[1:]):
        np.testing.assert_allclose(end, np.array([-0.5, 0.25]) - lr * g, rtol=1e-5, atol=1e-6)
        assert loss == pytest.approx(_mse(*end, xn, yn), rel=1e-4)
    ax = fastscape.plot_lr_steps(model, (x, y), dirs, origin=origin, loss_fn=F.mse_loss, lrs=lrs,
                                 grid=[(-1, 3, 9), (-1, 2, 7)])
    _assert_unchanged(model, snap)
    labels = [c.get_label() for c in ax.collections]
    assert any(lab.startswith("lr=0.05: loss") for lab in labels)
    with pytest.raises(ValueError, match="`lrs` must be positive learning rates"):
        lr_steps(model, (x, y), dirs, origin=origin, loss_fn=F.mse_loss, lrs=(0.1, -1))


# ----------------------------------------------------------------------------- matplotlib rendering of plotly


def test_plotly_to_matplotlib_draws_every_view():
    figs = [fastscape.plot_surface3d(_plane(diverge=True), path=_path()),
            fastscape.plot_volume(_volume()), fastscape.plot_volume(_volume(), kind="slices"),
            fastscape.animate_path(_plane(), _path())]
    for fig in figs:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(plotly_to_matplotlib(fig))
        canvas.draw()
        m = canvas.figure
        px = np.asarray(canvas.buffer_rgba())[..., :3]
        assert len(np.unique(px.reshape(-1, 3), axis=0)) > 20
        assert not any("not drawn" in t.get_text() for t in m.texts)


def test_explained_variance_is_not_added_twice():
    from fastscape import Surface, plot_contour

    surf = Surface(coords=[np.linspace(-1, 1, 5), np.linspace(-1, 1, 4)], loss=np.ones((5, 4)) + np.arange(4),
                   meta={"directions": {"kind": "pca", "explained_variance_ratio": [0.81, 0.127]}})
    ax = plot_contour(surf, axis_labels=("PC1 (81.0% of variance)", "second"))
    assert ax.get_xlabel() == "PC1 (81.0% of variance)"
    assert ax.get_ylabel() == "second (12.7% of variance)"
