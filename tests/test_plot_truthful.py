"""Figures that cannot be read wrongly: each pinned on the data or geometry drawn, against
numpy written here (argmin loops, bilinear interpolation by hand), never against pixels."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from fastscape import plot
from fastscape._surface import Surface

matplotlib.use("Agg")


def _bowl(nx=21, ny=15, centre=(0.3, 0.0)):
    x = np.linspace(-1, 2, nx)
    y = np.linspace(-1, 1, ny)
    loss = 0.05 + (x[:, None] - centre[0]) ** 2 + 3 * (y[None, :] - centre[1]) ** 2 + 0.2 * x[:, None] * y[None, :]
    return Surface(coords=[x, y], loss=loss)


def _argmin_by_loop(s):
    best, where = np.inf, None
    for i, a in enumerate(s.coords[0]):
        for j, b in enumerate(s.coords[1]):
            if s.loss[i, j] < best:
                best, where = s.loss[i, j], (a, b)
    return where, best


def _path(t=9):
    return np.stack([np.linspace(1.8, 0.3, t), np.linspace(0.9, 0.0, t)], axis=1)


def _bilinear(s, p):
    x, y = s.coords
    i = np.searchsorted(x, p[0]) - 1
    j = np.searchsorted(y, p[1]) - 1
    tx = (p[0] - x[i]) / (x[i + 1] - x[i])
    ty = (p[1] - y[j]) / (y[j + 1] - y[j])
    z = s.loss
    return ((1 - tx) * (1 - ty) * z[i, j] + tx * (1 - ty) * z[i + 1, j] + (1 - tx) * ty * z[i, j + 1]
            + tx * ty * z[i + 1, j + 1])


# ----------------------------------------------------------------------------- the grid's minimum


def test_contour_marks_the_grids_minimum_with_its_value():
    s = _bowl()
    ax = plot.contour(s)
    (where, value) = _argmin_by_loop(s)
    mark = [c for c in ax.collections if c.get_label().startswith("grid min")]
    assert len(mark) == 1
    np.testing.assert_allclose(mark[0].get_offsets()[0], where)
    assert f"{value:.3g}" in mark[0].get_label() and "edge" not in mark[0].get_label()
    assert ax.get_legend() is not None  # its value is read in the legend


def test_a_minimum_on_the_grids_edge_says_so():
    s = _bowl(centre=(5.0, 0.0))  # the bowl's centre lies right of the frame: the grid's best is on its edge
    (where, _value) = _argmin_by_loop(s)
    assert where[0] == s.coords[0][-1]
    label = next(c.get_label() for c in plot.contour(s).collections if c.get_label().startswith("grid min"))
    assert "(on the grid's edge)" in label
    fig = plot.surface3d(s, zmax=None)
    best = next(t for t in fig.data if t.name.startswith("grid min"))
    assert (best.x[0], best.y[0]) == tuple(where) and "(on the grid's edge)" in best.name


def test_accuracy_marks_its_highest_point():
    s = _bowl()
    acc = 1.0 - s.loss / s.loss.max()
    s = Surface(coords=s.coords, loss=s.loss, metrics={"accuracy": acc})
    ax = plot.contour(s, value="accuracy")
    mark = next(c for c in ax.collections if c.get_label().startswith("grid max"))
    i, j = np.unravel_index(np.argmax(acc), acc.shape)
    np.testing.assert_allclose(mark.get_offsets()[0], (s.coords[0][i], s.coords[1][j]))


# ----------------------------------------------------------------------------- 3-D markers on the surface


def test_surface3d_lifts_path_and_minimum_just_above_the_surface():
    s = _bowl()
    path = _path()
    fig = plot.surface3d(s, path=path, zmax=None, log=False)
    line = next(t for t in fig.data if t.name == "path")
    lift = 0.02 * np.ptp(s.loss)
    expect = np.array([_bilinear(s, p) for p in path]) + lift
    np.testing.assert_allclose(line.z, expect, rtol=1e-9)
    best = next(t for t in fig.data if t.name.startswith("grid min"))
    where, value = _argmin_by_loop(s)
    np.testing.assert_allclose([best.x[0], best.y[0], best.z[0]], [*where, value + lift])


# ----------------------------------------------------------------------------- colour-bar ticks and line labels


def _colorbar(ax):
    return next(a for a in ax.figure.axes if a.get_label() == "<colorbar>" and "loss" in a.get_ylabel())


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_colour_bar_ticks_are_round_and_are_the_labelled_lines(scale):
    s = _bowl()
    s = Surface(coords=s.coords, loss=s.loss * scale)
    ax = plot.contour(s)
    ax.figure.canvas.draw()
    cb = _colorbar(ax)
    ticks = np.array(cb.get_yticks())
    assert 3 <= len(ticks) <= 9
    for t in ticks:  # 1, 2 or 5 times a power of ten (log scale: this surface spans > 20x)
        mant = t / 10 ** np.floor(np.log10(t) + 1e-12)
        assert min(abs(mant - m) for m in (1, 2, 5)) < 1e-9, t
    texts = [t.get_text() for t in cb.get_yticklabels()]
    line_labels = {t.get_text() for t in ax.texts}
    assert line_labels and line_labels <= set(texts)  # every contour label is a tick of the bar


def test_negative_values_print_with_a_minus_sign():
    s = _bowl()
    s = Surface(coords=s.coords, loss=s.loss - 2.0)  # crosses zero: linear levels
    ax = plot.contour(s)
    ax.figure.canvas.draw()
    texts = [t.get_text() for t in _colorbar(ax).get_yticklabels()]
    assert any(t.startswith("\u2212") for t in texts) and not any(t.startswith("-") for t in texts)


# ----------------------------------------------------------------------------- the path animation


def test_animate_path_gif_frames_show_only_the_path_so_far():
    from fastscape.plot._common import mpl_form

    s = _bowl()
    s.path = _path(12)  # stored with the surface, as the README recommends
    fig = plot.animate_path(s, max_frames=4)  # the stored path is the default
    form = mpl_form(fig)
    mfig, update = form.make()
    ax = mfig.axes[0]
    update(form.frames[0])
    drawn = [l for l in ax.lines if len(l.get_xdata())]
    assert len(drawn) == 1 and len(drawn[0].get_xdata()) == 1  # the trail so far: one point at frame 0
    assert not [c for c in ax.collections if c.get_label() in ("end", "path")]
    assert [a.get_ylabel() for a in mfig.axes if a.get_label() == "<colorbar>"] == ["loss (log scale)"]


def test_animate_path_title_reads_the_loss_on_the_plane_under_the_marker():
    s = _bowl()
    path = _path(5)
    fig = plot.animate_path(s, path)
    for fr in fig.frames:
        i = int(fr.name)
        assert f"loss on the plane {_bilinear(s, path[i]):.4g}" in fr.layout.title.text
    own = np.linspace(3.0, 1.0, 5)
    fig = plot.animate_path(s, path, path_loss=own)
    assert f"snapshot's loss {own[-1]:.4g}" in fig.frames[-1].layout.title.text
    with pytest.raises(ValueError, match="`path` is required"):
        plot.animate_path(_bowl())


def test_a_trajectory_as_path_says_to_project_it():
    from torch import nn

    import fastscape

    model = nn.Linear(2, 1)
    traj = fastscape.Trajectory(model)
    traj.snapshot(model, 0)
    with pytest.raises(TypeError, match=r"`path` must be plane coordinates.*fastscape.project"):
        plot.contour(_bowl(), path=traj)
    with pytest.raises(TypeError, match=r"list of state dicts.*fastscape.project"):
        plot.contour(_bowl(), path=[{k: v.clone() for k, v in model.state_dict().items()}])


# ----------------------------------------------------------------------------- optimizers' ends off the plane


def test_optimizer_ends_far_off_the_plane_are_hollow_with_their_distance():
    from types import SimpleNamespace

    from matplotlib.colors import to_rgba

    x, y = np.linspace(-2, 2, 21), np.linspace(-2, 2, 21)
    surface = Surface(coords=[x, y], loss=0.1 + x[:, None] ** 2 + y[None, :] ** 2)
    t = np.linspace(0, 1, 6)[:, None]
    start = np.array([[-1.5, -1.5]])
    coords = {"SGD": start * (1 - t), "momentum": start + t * [2.5, 1.0]}
    # SGD ends on the plane (the origin); momentum's end is 1.98 off it, 2.69 within it: 59% off
    residuals = {"SGD": np.linspace(0.4, 0.0, 6), "momentum": np.linspace(0.4, 1.98, 6)}
    cmp = SimpleNamespace(coords=coords, residuals=residuals, explained_variance_ratio=np.array([0.6, 0.3]))
    ax = plot.optimizer_comparison(cmp, surface)
    labels = [l.get_label() for l in ax.lines if not l.get_label().startswith("_")]
    assert "SGD (end 0 off the plane)" in labels and "momentum (end 1.98 off the plane)" in labels
    stars = [l for l in ax.lines if l.get_marker() == "*"]
    ends = {tuple(np.round(l.get_xydata()[0], 9)): l for l in stars}
    sgd_end, mom_end = ends[(0.0, 0.0)], ends[tuple(np.round(coords["momentum"][-1], 9))]
    share = 1.98 / np.hypot(np.linalg.norm(coords["momentum"][-1]), 1.98)
    assert share > 0.5
    assert to_rgba(mom_end.get_markerfacecolor())[3] == 0.0  # hollow: its loss is not what the map reads
    assert to_rgba(sgd_end.get_markerfacecolor())[3] == 1.0
    styles = [l.get_linestyle() for l in ax.lines if l.get_label().split(" (")[0] in coords]
    assert len(set(styles)) == 2  # each run its own dash: one on another's track shows through


# ----------------------------------------------------------------------------- a line of several datasets


def test_line_of_train_and_test_draws_both_with_accuracy_on_a_twin_axis():
    """Goodfellow et al. (2015): train and test loss, with accuracy, along one line: one call."""
    c = np.linspace(-1, 1, 7)
    s = Surface(coords=[c], loss=c**2 + 0.1, meta={"datasets": {"train": 20, "test": 10}},
                metrics={"train/accuracy": 1 - c**2 / 2, "test/loss": c**2 + 0.3, "test/accuracy": 1 - c**2})
    ax = plot.line(s)
    solid = {l.get_label(): l.get_ydata() for l in ax.lines}
    np.testing.assert_allclose(solid["train"], c**2 + 0.1)
    np.testing.assert_allclose(solid["test"], c**2 + 0.3)
    twin = ax.figure.axes[-1]
    assert twin is not ax and twin.get_ylabel() == "accuracy (dashed)" and ax.get_ylabel() == "loss"
    dashed = {l.get_label(): l.get_ydata() for l in twin.lines}
    np.testing.assert_allclose(dashed["train: train accuracy"], 1 - c**2 / 2)
    np.testing.assert_allclose(dashed["test: test accuracy"], 1 - c**2)
    colour = {l.get_label(): l.get_color() for l in ax.lines}
    assert {l.get_label(): l.get_color() for l in twin.lines} == {
        "train: train accuracy": colour["train"], "test: test accuracy": colour["test"]}


# ----------------------------------------------------------------------------- planes side by side


def test_contour_grid_puts_every_panel_on_one_colour_scale_with_one_bar():
    from matplotlib.contour import QuadContourSet

    a = _bowl()
    b = Surface(coords=a.coords, loss=a.loss * 40.0)  # 40x higher: alone it would get its own range
    c = Surface(coords=a.coords, loss=a.loss + 3.0)
    axes = plot.contour_grid({"small batch": a, "large batch": b, "third": c}, ncols=2)
    assert axes.shape == (2, 2) and not axes[1, 1].get_visible()
    fig = axes[0, 0].figure
    bars = [x for x in fig.axes if x.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "loss (log scale)"
    lo = min(s.loss.min() for s in (a, b, c))
    hi = max(s.loss.max() for s in (a, b, c))
    sets = [next(q for q in ax.collections if isinstance(q, QuadContourSet) and q.filled) for ax in axes.flat[:3]]
    for q in sets:  # one norm, one set of levels: one colour is one value in every panel
        assert (q.norm.vmin, q.norm.vmax) == pytest.approx((lo, hi))
        np.testing.assert_allclose(q.levels, sets[0].levels)
    np.testing.assert_allclose(sets[0].levels[[0, -1]], [lo, hi])
    assert [ax.get_title() for ax in axes.flat[:3]] == ["small batch", "large batch", "third"]
    with pytest.raises(TypeError, match="`surfaces` must be a list"):
        plot.contour_grid(a)


# ----------------------------------------------------------------------------- one log rule


def test_every_view_shares_one_log_default_and_reads_in_loss_values():
    from matplotlib.contour import QuadContourSet

    wide = _bowl()  # 0.05 .. 6.3: spans > 20x, so every view is logarithmic by default
    narrow = Surface(coords=wide.coords, loss=wide.loss + 10.0)  # 10 .. 16: linear everywhere
    for s, is_log in ((wide, True), (narrow, False)):
        ax = plot.contour(s)
        filled = next(q for q in ax.collections if isinstance(q, QuadContourSet) and q.filled)
        assert (type(filled.norm).__name__ == "LogNorm") is is_log
        fig = plot.surface3d(s, zmax=None)
        z = np.asarray(fig.data[0].z, dtype=float).T
        np.testing.assert_allclose(z, np.log10(s.loss) if is_log else s.loss)
        assert ("(log scale)" in fig.layout.scene.zaxis.title.text) is is_log
        anim = plot.animate_path(s, _path(3))
        np.testing.assert_allclose(np.asarray(anim.data[0].z, dtype=float).T,
                                   np.log10(s.loss) if is_log else s.loss)
    fig = plot.surface3d(wide, zmax=None)
    vals, text = fig.layout.scene.zaxis.tickvals, fig.layout.scene.zaxis.ticktext
    assert len(vals) >= 3
    for v, t in zip(vals, text):  # ticks at log10 heights, labelled with the loss they stand for
        assert float(t) == pytest.approx(10.0 ** v)


def test_axis_titles_name_the_directions_scaling():
    import torch
    from torch import nn
    from torch.nn import functional as F

    import fastscape

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    data = (torch.randn(20, 2), torch.randn(20, 1))
    for norm, word in (("filter", "filter-normalised direction"), ("layer", "layer-normalised direction"),
                       (None, "unnormalised random direction")):
        s = fastscape.loss_surface(model, data, fastscape.random_directions(model, 2, seed=0, norm=norm),
                                   loss_fn=F.mse_loss, grid=(-1, 1, 3), progress=False)
        ax = plot.contour(s, minimum=False)
        assert (ax.get_xlabel(), ax.get_ylabel()) == (f"{word} 1", f"{word} 2")


# ----------------------------------------------------------------------------- can a PCA picture be trusted


def test_pca_fidelity_draws_distances_within_and_off_the_plane():
    import torch
    from torch import nn
    from torch.nn import functional as F

    import fastscape

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(64, 3)
    y = x[:, :1] ** 2
    traj = fastscape.train(model, [(x, y)], loss_fn=F.mse_loss, epochs=12,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.2))
    dirs, ratio = fastscape.pca_directions(traj, n=3)
    coords, res = fastscape.project(traj, dirs[:2], return_residuals=True)
    axes = plot.pca_fidelity(coords, res, ratio)
    left, right = axes
    # an independent reference: numpy least squares on the flat snapshots, origin the last one
    w = traj.matrix().double().numpy()
    d = np.stack([torch.cat([dirs[i][n].reshape(-1) for n in traj.names]).double().numpy() for i in range(2)])
    c, *_ = np.linalg.lstsq(d.T, (w - w[-1]).T, rcond=None)
    off = np.linalg.norm((w - w[-1]) - c.T @ d, axis=1)
    lines = {l.get_label(): l.get_ydata() for l in right.lines}
    np.testing.assert_allclose(lines["within the plane"], np.hypot(c[0], c[1]), atol=1e-5)
    np.testing.assert_allclose(lines["off the plane"], off, atol=1e-5)
    heights = [b.get_height() for b in left.patches]
    np.testing.assert_allclose(heights[:3], 100 * np.asarray(ratio), rtol=1e-9)
    assert heights[-1] == pytest.approx(100 * (1 - sum(ratio)))
    assert f"{100 * (ratio[0] + ratio[1]):.1f}%" in left.get_title()
    with pytest.raises(ValueError, match="`residuals` must hold one distance per snapshot"):
        plot.pca_fidelity(coords, res[:-1], ratio)


def test_hidden_space_keeps_the_cube():
    rng = np.random.default_rng(0)
    h = rng.random((30, 3)) * [1.0, 10.0, 100.0]  # very different ranges: an auto aspect would squash them
    fig = plot.hidden_space(h, rng.integers(0, 2, 30))
    assert fig.layout.scene.aspectmode == "cube"
    ax = plot.hidden_space(h, rng.integers(0, 2, 30), backend="matplotlib")
    np.testing.assert_allclose(np.asarray(ax.get_box_aspect()) / ax.get_box_aspect()[0], [1, 1, 1])


def test_a_legend_of_long_labels_stays_inside_the_figure():
    """Four 45-character labels in one row are wider than the figure: the legend takes fewer
    columns instead of running off both edges (seen on the optimizers' PCA plane)."""
    import matplotlib.pyplot as plt

    from fastscape.plot._marks import legend_below

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    try:
        for i in range(4):
            ax.plot([0, 1], [i, i], label=f"run {i}: SGD + momentum (end 0.86 off the plane)")
        leg = legend_below(ax)
        fig.canvas.draw()
        box = leg.get_window_extent()
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox.width)
    finally:
        plt.close(fig)
