"""A projected path knows what its points count (the views label it without being told) and frames
a grid around itself (``fastscape.project(...).frame()``)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fastscape
from fastscape import plot


def _trained(epochs=6, every=2, every_steps=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 2, generator=g)
    y = x[:, :1] * x[:, 1:] + 0.1 * torch.randn(32, 1, generator=g)
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    traj = fastscape.train(model, batches, loss_fn=F.mse_loss, optimizer=torch.optim.SGD(model.parameters(), lr=0.3),
                           epochs=epochs, every=every, every_steps=every_steps)
    return model, (x, y), traj


@pytest.fixture(scope="module")
def trained():
    model, data, traj = _trained()
    dirs, ratio = fastscape.pca_directions(traj, n=2)
    path, off = fastscape.project(traj, dirs, return_residuals=True)
    surface = fastscape.loss_surface(model, data, dirs, loss_fn=F.mse_loss, grid=path.frame(9), progress=False)
    return traj, path, off, ratio, surface


def _colorbar_labels(fig):
    return [a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>"]


# ----------------------------------------------------------------------------- the unit of a path


def test_train_records_what_its_snapshots_count():
    _, _, traj = _trained(epochs=5, every=2)
    assert traj.unit == "epoch" and traj.epochs == [0, 2, 4, 5]  # the final weights are epoch 5
    _, _, traj = _trained(epochs=2, every_steps=3)  # 2 batches an epoch: steps 3 and 4 (the end)
    assert traj.unit == "step" and traj.counts == [0, 3, 4] == traj.steps


def test_views_label_a_train_path_in_epochs_read_from_the_figure(trained):
    traj, path, off, ratio, surface = trained
    assert path.unit == "epoch"
    np.testing.assert_array_equal(path.counts, [0, 2, 4, 6])
    ax = plot.contour(surface, path=path)
    assert "epoch" in _colorbar_labels(ax.figure) and "recorded snapshot" not in _colorbar_labels(ax.figure)
    # the colours are the epochs themselves, not the snapshot index
    marks = next(c for c in ax.collections if c.get_array() is not None and len(c.get_offsets()) == len(path)
                 and np.allclose(c.get_offsets(), path))
    np.testing.assert_array_equal(marks.get_array(), [0, 2, 4, 6])
    # a path stored with the surface carries its unit too
    surface.path = path
    assert "epoch" in _colorbar_labels(plot.contour(surface).figure)
    surface.path = None
    fig = plot.animate_path(surface, path)
    slider = fig.layout.sliders[0]
    assert slider.currentvalue.prefix == "epoch "
    for step, frame in zip(slider.steps, fig.frames):
        epoch = traj.epochs[int(frame.name)]
        assert step.label == str(epoch)  # the slider counts what the title counts
        assert f"epoch {epoch}," in frame.layout.title.text
    left, right = plot.pca_fidelity(path, off, ratio)
    assert right.get_xlabel() == "epoch"
    np.testing.assert_array_equal(right.lines[0].get_xdata(), [0, 2, 4, 6])


def test_the_3d_view_labels_and_colours_a_train_path_in_epochs(trained):
    traj, path, _, _, surface = trained
    fig = plot.surface3d(surface, path=path)
    trace = next(t for t in fig.data if t.name == "path")
    assert "epoch" in trace.marker.colorbar.title.text and "snapshot" not in trace.marker.colorbar.title.text
    np.testing.assert_array_equal(trace.marker.color, [0, 2, 4, 6])  # the epochs, not the snapshot index
    assert trace.hovertemplate.startswith("epoch ")
    np.testing.assert_array_equal(np.asarray(trace.customdata)[:, 0], [0, 2, 4, 6])
    ax = plot.surface3d(surface, path=path, backend="matplotlib")
    assert "epoch" in _colorbar_labels(ax.figure)
    marks = next(c for c in ax.collections if c.get_array() is not None and len(c.get_array()) == len(path))
    np.testing.assert_array_equal(marks.get_array(), [0, 2, 4, 6])
    # an explicit label wins, numbering the points 0, 1, 2, ...
    own = next(t for t in plot.surface3d(surface, path=path, path_label="SGD step").data if t.name == "path")
    assert "SGD step" in own.marker.colorbar.title.text
    np.testing.assert_array_equal(own.marker.color, [0, 1, 2, 3])


def test_an_explicit_label_wins_and_an_unknown_unit_falls_back(trained):
    traj, path, _, _, surface = trained
    ax = plot.contour(surface, path=path, path_label="SGD epoch")
    assert "SGD epoch" in _colorbar_labels(ax.figure)
    # a caller's own label numbers the points 0, 1, 2, ...: never epochs under another unit's name
    fig = plot.animate_path(surface, path, path_label="snapshot")
    assert [s.label for s in fig.layout.sliders[0].steps] == ["0", "1", "2", "3"]
    assert [s.label for s in plot.animate_path(surface, path, path_label="epoch").layout.sliders[0].steps] \
        == ["0", "2", "4", "6"]
    plain = np.asarray(path)  # plane coordinates with no unit
    assert "recorded snapshot" in _colorbar_labels(plot.contour(surface, path=plain).figure)
    dicts = [traj[i] for i in range(len(traj))]  # snapshots as a list of dicts: nothing says what they count
    dirs = fastscape.pca_directions(traj, n=2)[0]
    assert fastscape.project(dicts, dirs).unit is None
    fig = plot.animate_path(surface, fastscape.project(dicts, dirs))
    assert fig.layout.sliders[0].currentvalue.prefix == "recorded snapshot "
    with pytest.raises(TypeError, match="`path_label` must be a string"):
        plot.contour(surface, path=path, path_label=3)


def test_the_unit_follows_rows_and_leaves_with_a_column(trained):
    _, path, _, _, _ = trained
    assert path[1:].unit == "epoch"
    np.testing.assert_array_equal(path[1:].counts, [2, 4, 6])
    np.testing.assert_array_equal(path[::-1].counts, [6, 4, 2, 0])
    assert getattr(path[:, 0], "unit", None) is None and getattr(path.min(axis=0), "unit", None) is None
    back = pickle.loads(pickle.dumps(path))
    assert back.unit == "epoch" and np.array_equal(back.counts, path.counts) and np.array_equal(back, path)
    steps = fastscape.project(_trained(epochs=2, every_steps=3)[2], fastscape.pca_directions(_trained()[2])[0])
    assert steps.unit == "step"


# ----------------------------------------------------------------------------- framing a grid around a path


def _plane_path(coords):
    from fastscape._plane_path import PlanePath

    return PlanePath(coords)


def test_frame_holds_the_path_with_the_padding():
    c = np.array([[-3.0, -1.0], [-1.0, 0.5], [1.0, 2.0]])  # extents 4 and 3
    grid = _plane_path(c).frame(31, pad=0.25)
    assert [n for _, _, n in grid] == [31, 31]
    for (lo, hi, _), a, b in zip(grid, c.min(axis=0), c.max(axis=0)):
        assert lo == pytest.approx(a - 0.25 * (b - a)) and hi == pytest.approx(b + 0.25 * (b - a))
    assert _plane_path(c).frame((11, 21))[1][2] == 21


def test_frame_widens_an_axis_the_path_barely_moves_along():
    c = np.stack([np.linspace(0.0, 10.0, 5), np.full(5, 2.0) + np.linspace(0, 0.01, 5)], axis=1)
    (x0, x1, _), (y0, y1, _) = _plane_path(c).frame(pad=0.1, min_width=0.4)
    assert x1 - x0 == pytest.approx(10.0 * 1.2)
    assert y1 - y0 == pytest.approx(0.4 * 10.0 * 1.2)  # at least 40% of the widest extent, padded alike
    assert (y0 + y1) / 2 == pytest.approx(2.005)  # around the path's middle
    assert np.all((c[:, 1] > y0) & (c[:, 1] < y1))


def test_frame_of_a_real_projection_is_a_grid_that_holds_it(trained):
    _, path, _, _, surface = trained
    for axis, coords in enumerate(surface.coords):
        assert coords[0] < path[:, axis].min() and coords[-1] > path[:, axis].max()


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=1), "`n` must be an integer >= 2"), (dict(n=(5, 5, 5)), "`n` must be an integer >= 2 or 2 of them"),
    (dict(pad=-0.1), "`pad` must be a non-negative share"), (dict(min_width=1.5), "`min_width` must be a share"),
])
def test_frame_rejects_bad_arguments_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _plane_path(np.array([[0.0, 0.0], [1.0, 1.0]])).frame(**kwargs)


def test_frame_of_a_path_that_does_not_move_says_so():
    with pytest.raises(ValueError, match="does not move"):
        _plane_path(np.ones((4, 2))).frame()
    with pytest.raises(ValueError, match="finite coordinates"):
        _plane_path(np.array([[0.0, np.nan], [1.0, 1.0]])).frame()


def test_a_stored_path_keeps_its_unit_in_the_surface_file(trained, tmp_path):
    pytest.importorskip("h5py")
    _, path, _, _, surface = trained
    surface.path = path
    try:
        back = fastscape.load_surface(surface.save(tmp_path / "s.h5"))
    finally:
        surface.path = None
    assert back.path.unit == "epoch"
    np.testing.assert_array_equal(back.path.counts, [0, 2, 4, 6])
    np.testing.assert_array_equal(np.asarray(back.path), np.asarray(path))
    assert "epoch" in _colorbar_labels(plot.contour(back).figure)
