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
    fig = plot.surface3d(s, path=path, zmax=None)
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
