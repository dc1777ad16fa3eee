"""Every view draws the data it was given (checked against the inputs and plain numpy
formulas, not against the view's own code), reads at a glance (labels clear of titles,
legends clear of the data, colour bars that say what they count), and leaves the
model alone; compute functions are checked against closed forms and per-point loops."""

from __future__ import annotations

import copy
import subprocess
import sys
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fastscape
from fastscape import plot
from fastscape._surface import Surface
from fastscape._views import loss_and_gradient
from tests.models import linear_regression_case


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


def _drawn(ax):
    """Draw the figure so that text and legend extents are final; return the renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(ax.figure)
    canvas.draw()
    return canvas.get_renderer()


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _colorbar_labels(fig):
    return [a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>"]


# ----------------------------------------------------------------------------- the return-type rule


def test_matplotlib_views_return_axes_and_plotly_views_figures():
    import plotly.graph_objects as go
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    s = _plane()
    fig = Figure()
    given = fig.add_subplot()
    assert plot.contour(s, ax=given) is given
    assert isinstance(plot.line(Surface(coords=[s.coords[0]], loss=s.loss[:, 0])), Axes)
    assert isinstance(plot.surface3d(s), go.Figure)
    ax3 = Figure().add_subplot(projection="3d")
    assert plot.surface3d(s, backend="matplotlib", ax=ax3) is ax3
    with pytest.raises(ValueError, match="`ax` is for backend='matplotlib'"):
        plot.surface3d(s, ax=ax3)
    with pytest.raises(ValueError, match=r"`backend` of `surface3d` must be one of \['plotly', 'matplotlib'\]"):
        plot.surface3d(s, backend="bokeh")
    assert set(plot.__all__) == {
        "contour", "surface3d", "line", "volume", "cross_sections", "lr_steps", "hidden_lines", "hidden_space",
        "thresholded", "animate_path", "animate_fit", "optimizer_comparison", "save", "StaticExportWarning",
        "contour_grid", "curve_profile", "barriers", "spectral_density", "curvature_map", "sharpness_generalization",
        "edge_of_stability", "pca_fidelity"}


def test_plot_namespace_needs_no_drawing_library_until_a_view_runs():
    # in a fresh interpreter where matplotlib and plotly cannot be imported
    code = (
        "import sys\n"
        "for m in ('matplotlib', 'plotly', 'kaleido', 'PIL'):\n"
        "    sys.modules[m] = None\n"
        "import numpy as np, fastscape\n"
        "from fastscape._surface import Surface\n"
        "s = Surface(coords=[np.arange(3.0), np.arange(2.0)], loss=np.ones((3, 2)))\n"
        "for view in (fastscape.plot.contour, fastscape.plot.surface3d):\n"
        "    try:\n"
        "        view(s)\n"
        "    except ImportError as e:\n"
        "        print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [l for l in out.stdout.splitlines() if l.startswith("ERR")]
    assert len(lines) == 2
    for line in lines:
        assert "torch-fastscape[plot]" in line


# ----------------------------------------------------------------------------- 3D surface


def test_surface3d_holds_surface_and_path():
    s = _plane()
    path = _path()
    losses = np.linspace(5, 1, len(path))
    fig = plot.surface3d(s, path=path, path_loss=losses, zmax=None, minimum=False, log=False)
    surf, line, start, end = fig.data
    np.testing.assert_array_equal(np.asarray(surf.z), s.loss.T)  # plotly's z is (y, x)
    np.testing.assert_array_equal(surf.x, s.coords[0])
    np.testing.assert_array_equal(surf.y, s.coords[1])
    np.testing.assert_array_equal(np.stack([line.x, line.y], axis=1), path)
    from fastscape.plot._surface3d import LIFT

    # drawn a share of the height range above the surface; hover reads the losses themselves
    np.testing.assert_allclose(line.z, losses + LIFT * (s.loss.max() - s.loss.min()))
    np.testing.assert_array_equal(np.asarray(line.customdata)[:, 1], losses)
    np.testing.assert_array_equal(line.marker.color, np.arange(len(path)))
    assert "lines" in line.mode and "markers" in line.mode
    assert (start.x[0], start.y[0]) == tuple(path[0]) and (end.x[0], end.y[0]) == tuple(path[-1])
    assert fig.layout.scene.xaxis.title.text == "direction 1"
    # the page fills its window: no fixed size
    assert fig.layout.width is None and fig.layout.height is None


def test_surface3d_reads_at_a_glance():
    s = _plane()
    path = _path()
    fig = plot.surface3d(s, path=path, zmax=None, log=False)
    surf, line = fig.data[:2]
    # dense floor contours: at least 20 levels across the drawn range
    c = surf.contours.z
    assert c.show and c.project.z
    assert (c.end - c.start) / c.size >= 20
    assert c.start <= s.loss.min() + 1e-12 and c.end >= s.loss.max() - 1e-12
    # the colour bar of the path says what it counts
    assert line.marker.colorbar.title.text.replace("<br>", " ") == "recorded snapshot"  # wrapped above the bar
    assert plot.surface3d(s, path=path, path_label="epoch").data[1].marker.colorbar.title.text == "epoch"
    # start and end are labelled beside their markers (offset in pixels), not on top of them
    notes = {a.text.replace("<b>", "").replace("</b>", ""): a for a in fig.layout.scene.annotations}
    for name, idx in (("start", 0), ("end", -1)):
        a = notes[name]
        assert (a.x, a.y) == tuple(path[idx])
        assert a.showarrow and abs(a.ax) >= 15 and abs(a.ay) >= 15


def test_surface3d_camera_looks_over_the_valley_not_the_plateau():
    x = np.linspace(-1, 1, 31)
    y = np.linspace(-1, 1, 25)
    bowl = 0.1 + 0.5 * (x[:, None] + 0.4) ** 2 + 0.3 * y[None, :] ** 2
    plateau = np.where(x[:, None] > 0.3, 50.0, bowl)  # a high wall on the +x side, valley at x = -0.4
    s = Surface(coords=[x, y], loss=plateau + 0 * y[None, :])
    cam = plot.surface3d(s, zmax=None).layout.scene.camera
    # in front of the plane (the contour's orientation), swung to the valley's side, away from the wall
    assert cam.eye.y < cam.center.y and cam.eye.x < cam.center.x
    mirrored = Surface(coords=[x, y], loss=s.loss[::-1].copy())
    cam = plot.surface3d(mirrored, zmax=None).layout.scene.camera
    assert cam.eye.y < cam.center.y and cam.eye.x > cam.center.x
    # the path's end decides when given: it ends on the -y side of a surface high at +y
    tilted = Surface(coords=[x, y], loss=np.exp(3 * y)[None, :] + 0 * x[:, None])
    end_low = np.array([[0.0, 0.9], [0.0, -0.8]])
    assert plot.surface3d(tilted, path=end_low).layout.scene.camera.eye.y < 0
    assert plot.surface3d(s, camera=None).layout.scene.camera.eye.x is None


def test_surface3d_path_lies_on_the_surface():
    from fastscape.plot._marks import path_heights

    s = _plane()
    fig = plot.surface3d(s, path=_path(), zmax=None)
    nodes = np.array([[s.coords[0][4], s.coords[1][7]], [s.coords[0][10], s.coords[1][2]]])
    np.testing.assert_allclose(path_heights(s, nodes), [s.loss[4, 7], s.loss[10, 2]])
    assert np.all(np.isfinite(fig.data[1].z))


def test_surface3d_gaps_log_and_clipping():
    from fastscape.plot._common import auto_zmax

    s = _plane(diverge=True)
    fig = plot.surface3d(s, log=True, zmax=None)
    z = np.asarray(fig.data[0].z, dtype=float).T
    bad = ~np.isfinite(s.loss)
    assert np.isnan(z[bad]).all()
    np.testing.assert_allclose(z[~bad], np.log10(s.loss[~bad]))
    spiky = _plane()
    spiky.loss[5, 5] = 1e9
    z = np.asarray(plot.surface3d(spiky, log=False).data[0].z, dtype=float).T
    assert z.max() < 1e3 and z[5, 5] == z.max()
    np.testing.assert_array_equal(np.asarray(plot.surface3d(_plane(), log=False).data[0].z), _plane().loss.T)
    assert auto_zmax(_plane().loss) is None
    z = np.asarray(plot.surface3d(s, zmax=2.0, log=False).data[0].z, dtype=float)
    assert np.nanmax(z) == 2.0


def test_surface3d_rejects_bad_input():
    with pytest.raises(ValueError, match=r"`path` must have shape \(T, 2\)"):
        plot.surface3d(_plane(), path=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="`path_loss` must hold one loss per path point"):
        plot.surface3d(_plane(), path=_path(5), path_loss=[1, 2])
    with pytest.raises(ValueError, match="needs a surface along 2 directions; got one along 1"):
        plot.surface3d(Surface(coords=[np.arange(3.0)], loss=np.arange(3.0)))
    with pytest.raises(ValueError, match="`zmax` must be a number, None or 'auto'"):
        plot.surface3d(_plane(), zmax="high")
    with pytest.raises(ValueError, match="`camera` must be 'auto'"):
        plot.surface3d(_plane(), camera="top")


def test_surface3d_matplotlib_draws_the_same_data():
    s = _plane()
    path = _path()
    ax = plot.surface3d(s, path=path, backend="matplotlib", zmax=None, log=False)
    assert ax.name == "3d"
    line = next(l for l in ax.lines if l.get_label() == "path")
    xs, ys, zs = line.get_data_3d()
    np.testing.assert_allclose(np.stack([xs, ys], axis=1), path)
    assert "recorded snapshot" in _colorbar_labels(ax.figure)
    assert {t.get_text() for t in ax.texts} >= {"start", "end"}


# ----------------------------------------------------------------------------- named points


def test_named_points_have_their_own_style():
    from matplotlib.collections import PathCollection

    s = _plane()
    pts = np.array([[0.0, 0.0], [1.5, 0.2], [0.4, -0.6]])
    ax = plot.contour(s, points=pts)
    labels = [c.get_label() for c in ax.collections if isinstance(c, PathCollection)]
    assert labels[-4:-1] == ["A", "B", "C"] and labels[-1].startswith("grid min loss")
    for c, p in zip([c for c in ax.collections if c.get_label() in "ABC"], pts):
        np.testing.assert_allclose(c.get_offsets()[0], p)
    assert {t.get_text() for t in ax.texts} >= {"A", "B", "C"}
    assert not {"path", "start", "end"} & set(labels) | {l.get_label() for l in ax.lines}
    assert _colorbar_labels(ax.figure) == ["loss (log scale)"]  # no snapshot colour bar
    ax = plot.contour(s, points={"model a": (0, 0), "model b": (1, 0)})
    assert {t.get_text() for t in ax.texts} >= {"model a", "model b"}
    fig = plot.surface3d(s, points={"a": (0, 0), "b": (1, 0.5)}, minimum=False)
    names = [t.name for t in fig.data]
    assert names[1:] == ["a", "b"] and all(t.marker.showscale is not True for t in fig.data[1:])
    with pytest.raises(ValueError, match=r"`points` must be a dict label -> 2 coordinates"):
        plot.contour(s, points=np.zeros((3, 3)))


# ----------------------------------------------------------------------------- contour


def test_contour_log_levels_path_and_gaps():
    s = _plane(diverge=True)
    s.loss[~np.isfinite(s.loss)] = np.inf
    path = _path()
    ax = plot.contour(s, path=path, levels=12)
    assert isinstance(ax, matplotlib.axes.Axes)
    filled = next(c for c in ax.collections if isinstance(c, matplotlib.contour.QuadContourSet) and c.filled)
    finite = s.loss[np.isfinite(s.loss)]
    np.testing.assert_allclose(np.asarray(filled.levels), np.geomspace(finite.min(), finite.max(), 12))
    line = next(l for l in ax.lines if l.get_label() == "path")
    np.testing.assert_array_equal(np.stack([line.get_xdata(), line.get_ydata()], axis=1), path)
    steps = next(c for c in ax.collections if c.get_array() is not None and len(c.get_offsets()) == len(path))
    np.testing.assert_array_equal(steps.get_offsets(), path)
    np.testing.assert_array_equal(steps.get_array(), np.arange(len(path)))
    assert any(t.get_text() for t in ax.texts)  # level labels
    # the path's colour bar says what it counts; the value's colour bar sits next to the Axes
    assert _colorbar_labels(ax.figure) == ["recorded snapshot", "loss (log scale)"]
    assert "epoch" in _colorbar_labels(plot.contour(s, path=path, path_label="epoch").figure)
    # the legend sits under the Axes, off the data
    r = _drawn(ax)
    assert not _overlap(ax.get_legend().get_window_extent(r), ax.get_window_extent(r))
    ax = plot.contour(Surface(coords=s.coords, loss=np.full_like(s.loss, 2.0) + s.coords[0][:, None] * 0.1),
                      filled=False, levels=5)
    assert not np.allclose(np.diff(ax.collections[0].levels), 0)


def test_contour_draws_into_given_axes_and_labels_explained_variance():
    from matplotlib.figure import Figure

    fig = Figure()
    ax0 = fig.add_subplot(121)
    s = _plane()
    ax = plot.contour(s, ax=ax0, explained_variance=[0.873, 0.101])
    assert ax is ax0
    assert ax.get_xlabel() == "direction 1 (87.3% of variance)"
    assert ax.get_ylabel() == "direction 2 (10.1% of variance)"
    s.meta = {"directions": {"kind": "pca", "explained_variance_ratio": [0.5, 0.25]}}
    ax = plot.contour(s)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC1 (50.0% of variance)", "PC2 (25.0% of variance)")
    s.meta = {"directions": {"kind": "axis", "names": ["fc.weight", "fc.bias"]}}
    assert plot.contour(s).get_xlabel() == "fc.weight"
    with pytest.raises(ValueError, match="`explained_variance` must hold fractions in"):
        plot.contour(s, explained_variance=[87.3, 10.1])
    with pytest.raises(ValueError, match="`levels` must be an int >= 2"):
        plot.contour(s, levels=1)
    with pytest.raises(ValueError, match="`axis_labels` must hold 2 labels"):
        plot.contour(s, axis_labels=["a"])


def test_explained_variance_is_not_added_twice():
    surf = Surface(coords=[np.linspace(-1, 1, 5), np.linspace(-1, 1, 4)], loss=np.ones((5, 4)) + np.arange(4),
                   meta={"directions": {"kind": "pca", "explained_variance_ratio": [0.81, 0.127]}})
    ax = plot.contour(surf, axis_labels=("PC1 (81.0% of variance)", "second"))
    assert ax.get_xlabel() == "PC1 (81.0% of variance)"
    assert ax.get_ylabel() == "second (12.7% of variance)"


# ----------------------------------------------------------------------------- a value other than the loss


def test_views_draw_the_value_asked_for_with_its_label_and_scale():
    s = _plane()
    acc = np.clip(1.0 - s.loss / s.loss.max(), 0.01, 1.0)  # spans far more than 20x: still linear
    s.metrics = {"accuracy": acc}
    ax = plot.contour(s, value="accuracy", levels=9)
    filled = next(c for c in ax.collections if isinstance(c, matplotlib.contour.QuadContourSet) and c.filled)
    np.testing.assert_allclose(filled.levels, np.linspace(acc.min(), acc.max(), 9))
    assert _colorbar_labels(ax.figure) == ["accuracy"]
    assert (filled.norm.vmin, filled.norm.vmax) == (0.0, 1.0)  # accuracy's fixed colour range
    fig = plot.surface3d(s, value="accuracy", log=True)  # log asked, but accuracy is linear
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), acc.T)
    assert fig.layout.scene.zaxis.title.text == "accuracy"
    assert "loss" not in fig.data[0].colorbar.title.text
    s.metrics = {"test/accuracy": acc}
    assert _colorbar_labels(plot.contour(s, value="test/accuracy").figure) == ["test accuracy"]
    with pytest.raises(ValueError, match=r"`value` must be .*'test/accuracy'.*got 'acc'"):
        plot.contour(s, value="acc")


# ----------------------------------------------------------------------------- 1-D lines


def test_line_several_lines_with_accuracy():
    c = np.linspace(-0.5, 1.5, 11)
    a = Surface(coords=[c], loss=(c - 1) ** 2, metrics={"accuracy": 1 - 0.1 * np.abs(c - 1)})
    b = Surface(coords=[c], loss=np.where(c > 1.2, np.inf, c**2))
    ax = plot.line({"A": a, "B": b}, marks={"start": 0, "end": 1})
    lines = {l.get_label(): l for l in ax.lines}
    np.testing.assert_array_equal(lines["A"].get_xdata(), c)
    np.testing.assert_array_equal(lines["A"].get_ydata(), a.loss)
    yb = np.asarray(lines["B"].get_ydata(), dtype=float)
    assert np.isnan(yb[c > 1.2]).all()  # diverged: a gap
    twin = ax.figure.axes[-1]
    assert twin is not ax
    np.testing.assert_array_equal(twin.lines[0].get_ydata(), a.metrics["accuracy"])
    with pytest.raises(ValueError, match="needs a surface along 1 direction; got one along 2"):
        plot.line(_plane())
    with pytest.raises(TypeError, match="`lines` must be a Surface along one direction"):
        plot.line(np.arange(3))


def test_line_marks_clear_the_title_and_the_legend_clears_the_curves():
    c = np.linspace(-0.25, 1.25, 31)
    a = Surface(coords=[c], loss=2.4 * (1 - c).clip(0) ** 2 + 0.01, metrics={"accuracy": 0.5 + 0.5 * c.clip(0, 1)})
    b = Surface(coords=[c], loss=1.5 - c.clip(0, 1) * 1.4, metrics={"accuracy": 0.7 + 0.3 * c.clip(0, 1)})
    ax = plot.line({"initial -> trained": a, "random direction through trained": b},
                   marks={"initial": 0.0, "trained": 1.0}, title="Loss and accuracy along two lines")
    r = _drawn(ax)
    title = ax.title.get_window_extent(r)
    marks = [t for a_ in ax.child_axes for t in a_.get_xticklabels() if t.get_text() in ("initial", "trained")]
    assert len(marks) == 2
    for t in marks:
        assert not _overlap(t.get_window_extent(r), title), t.get_text()
    legend = ax.get_legend()
    assert not _overlap(legend.get_window_extent(r), ax.get_window_extent(r))
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[:2] == ["initial -> trained", "random direction through trained"]
    assert any("dashed" in t and "accuracy" in t for t in texts)


# ----------------------------------------------------------------------------- volume


def _volume():
    c0, c1, c2 = np.linspace(-1, 1, 7), np.linspace(-1, 1, 6), np.linspace(-2, 2, 5)
    loss = c0[:, None, None] ** 2 + 2 * c1[None, :, None] ** 2 + 0.5 * c2[None, None, :] ** 2 + 0.1
    loss[0, 0, 0] = np.inf
    return Surface(coords=[c0, c1, c2], loss=loss)


def test_volume_isosurface_and_slices_hold_the_loss():
    v = _volume()
    fig = plot.volume(v, kind="isosurface", zmax=None, log=False)
    iso = fig.data[0]
    X, Y, Z = np.meshgrid(*v.coords, indexing="ij")
    np.testing.assert_array_equal(iso.x, X.ravel())
    np.testing.assert_array_equal(iso.z, Z.ravel())
    val = np.asarray(iso.value)
    ok = np.isfinite(v.loss.ravel())
    np.testing.assert_array_equal(val[ok], v.loss.ravel()[ok])
    assert val[~ok].min() > iso.isomax  # a diverged point never closes a shell

    fig = plot.volume(v, kind="slices", at=(0.0, 0.2, 0.0), zmax=None, log=False)
    i, j, k = 3, 3, 2  # grid points nearest `at`
    np.testing.assert_array_equal(fig.data[0].surfacecolor, v.loss[i])
    np.testing.assert_array_equal(fig.data[1].surfacecolor, v.loss[:, j])
    np.testing.assert_array_equal(fig.data[2].surfacecolor, v.loss[:, :, k])
    assert np.all(np.asarray(fig.data[0].x) == v.coords[0][i])
    with pytest.raises(ValueError, match=r"`kind` must be one of \['isosurface', 'slices'\]"):
        plot.volume(v, kind="cubes")
    with pytest.raises(ValueError, match="needs a surface along 3 directions"):
        plot.volume(_plane())


def _shells(fig):
    return [t for t in fig.data if t.type == "isosurface"]


def test_volume_shells_are_labelled_with_their_loss_and_the_minimum_is_marked():
    v = _volume()
    finite = v.loss[np.isfinite(v.loss)]
    fig = plot.volume(v, levels=4, zmax=None, log=False)
    shells = _shells(fig)
    values = np.array([s.isomin for s in shells])
    assert all(s.isomin == s.isomax and s.surface.count == 1 for s in shells)  # one trace, one shell
    assert 2 <= len(shells) <= 4
    assert finite.min() < values.min() and values.max() < finite.max()  # none hugs the minimum or the box
    # on round values (matplotlib's 1-2-2.5-5 steps), ticked on the colour bar as printed
    np.testing.assert_allclose(values, np.round(values * 4) / 4)
    bar = shells[0].colorbar
    np.testing.assert_allclose(sorted(bar.tickvals), sorted(values))
    assert list(bar.ticktext) == [f"{s:g}" for s in sorted(values)]
    assert "shell" in bar.title.text and [s.showscale for s in shells].count(True) == 1
    best = np.unravel_index(np.nanargmin(np.where(np.isfinite(v.loss), v.loss, np.nan)), v.loss.shape)
    mark = next(t for t in fig.data if t.name.startswith("minimum"))
    assert (mark.x[0], mark.y[0], mark.z[0]) == tuple(c[i] for c, i in zip(v.coords, best))
    assert f"{finite.min():.3g}" in mark.name
    # log colours: shells on 1-2-5 values, ticks read in loss units
    shells = _shells(plot.volume(v, levels=3, log=True, zmax=None))
    printed = [float(t) for t in shells[0].colorbar.ticktext]
    np.testing.assert_allclose(printed, 10 ** np.array(shells[0].colorbar.tickvals), rtol=1e-9)
    assert set(printed) <= {m * 10.0**d for d in range(-2, 3) for m in (1, 2, 5)}
    # the matplotlib drawing: rings per shell, the shells' values on its colour bar, the minimum labelled
    ax = plot.volume(v, levels=4, zmax=None, backend="matplotlib", log=False)
    cb = next(a for a in ax.figure.axes if a.get_label() == "<colorbar>")
    np.testing.assert_allclose(cb.get_yticks(), sorted(values))
    assert any("minimum" in t.get_text() and f"{finite.min():.3g}" in t.get_text() for t in ax.texts)


def test_volume_shells_can_be_told_apart():
    """One colour per shell on a stepped colour bar (the continuous scale's colour at the shell's value),
    inner shells more opaque than those around them."""
    from plotly.colors import get_colorscale, sample_colorscale

    v = _volume()
    fig = plot.volume(v, levels=4, zmax=None, log=False)
    shells = _shells(fig)
    values = np.array([s.isomin for s in shells])
    lo, hi = shells[0].cmin, shells[0].cmax
    assert all((s.cmin, s.cmax) == (lo, hi) for s in shells)
    np.testing.assert_array_equal(values, np.sort(values))  # innermost (lowest loss) first
    assert all(a.opacity > b.opacity for a, b in zip(shells, shells[1:]))
    scale = shells[0].colorscale
    pos = [float(p) for p, _ in scale]
    colors = [c for _, c in scale]
    want = sample_colorscale(get_colorscale("Viridis"), list((values - lo) / (hi - lo)))
    for value, color in zip(values, want):  # the band around each shell holds the shell's colour
        band = [c for p, c in zip(pos, colors) if p == pytest.approx((value - lo) / (hi - lo), abs=0.5 / len(values))]
        assert color in band
    assert len(set(colors)) == len(values)  # steps, not a gradient


@pytest.mark.parametrize("log", [False, True])
def test_volume_slices_and_shells_share_one_colour_scale(log):
    v = _volume()
    iso = _shells(plot.volume(v, kind="isosurface", zmax=None, log=log))
    slices = [t for t in plot.volume(v, kind="slices", zmax=None, log=log).data if t.type == "surface"]
    finite = v.loss[np.isfinite(v.loss)]
    lo = np.log10(finite.min()) if log else finite.min()
    for t in [*iso, *slices]:
        assert (t.cmin, t.cmax) == pytest.approx((lo, np.log10(finite.max()) if log else finite.max()))
    ok = np.isfinite(v.loss[3])
    drawn = np.asarray(slices[0].surfacecolor)[ok]
    np.testing.assert_allclose(drawn, np.log10(v.loss[3][ok]) if log else v.loss[3][ok])  # the same transform
    bar = slices[0].colorbar
    printed = np.array([float(t) for t in bar.ticktext])
    np.testing.assert_allclose(10 ** np.array(bar.tickvals) if log else bar.tickvals, printed, rtol=1e-9)


# ----------------------------------------------------------------------------- animations


def test_animate_path_frames_follow_the_path():
    path = _path(30)
    fig = plot.animate_path(_plane(), path, path_loss=np.linspace(3, 1, 30), max_frames=10)
    assert len(fig.frames) == 10
    for fr in fig.frames:
        i = int(fr.name)
        np.testing.assert_array_equal(np.stack([fr.data[0].x, fr.data[0].y], axis=1), path[: i + 1])
        np.testing.assert_array_equal([fr.data[1].x[0], fr.data[1].y[0]], path[i])
    assert fig.frames[-1].name == "29"  # the end is always shown
    np.testing.assert_allclose(np.asarray(fig.data[0].z), np.log10(_plane().loss.T))
    assert fig.layout.updatemenus[0].buttons[0].method == "animate"
    assert "recorded snapshot 29" in fig.frames[-1].layout.title.text
    # the slider's current-value label sits at its right end, away from the buttons on the left
    slider = fig.layout.sliders[0]
    assert slider.currentvalue.xanchor == "right" and slider.x >= 0.2
    assert fig.layout.updatemenus[0].x == 0.0


def test_animate_path_gif_frames_have_a_colour_bar_contours_and_whole_labels():
    from matplotlib.contour import QuadContourSet

    from fastscape.plot._common import mpl_form

    fig = plot.animate_path(_plane(), _path(12), max_frames=4)
    form = mpl_form(fig)
    assert list(form.frames) == [int(f.name) for f in fig.frames]
    mfig, update = form.make()
    ax = mfig.axes[0]
    assert _colorbar_labels(mfig) == ["loss (log scale)"]
    sets = [c for c in ax.collections if isinstance(c, QuadContourSet)]
    assert any(s.filled for s in sets) and any(not s.filled for s in sets)  # filled and lines
    assert any(t.get_text() for t in ax.texts)  # labelled levels
    update(form.frames[1])
    trail = ax.lines[0]
    np.testing.assert_array_equal(trail.get_xdata(), _path(12)[: form.frames[1] + 1, 0])
    r = _drawn(ax)
    whole = mfig.bbox
    for label in (ax.xaxis.label, ax.yaxis.label, ax.title):
        e = label.get_window_extent(r)
        assert whole.x0 <= e.x0 and e.x1 <= whole.x1 and whole.y0 <= e.y0 and e.y1 <= whole.y1


def test_animate_fit_matches_the_model_at_each_snapshot():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 1))
    x = torch.linspace(-2, 2, 40).reshape(-1, 1)
    y = torch.sin(x)
    traj = fastscape.train(net, [(x, y)], loss_fn=F.mse_loss,
                           optimizer=torch.optim.SGD(net.parameters(), lr=0.1), epochs=6, every=2)
    snap = _snapshot(net)
    xs = torch.linspace(-2, 2, 50).reshape(-1, 1)
    pred = fastscape.snapshot_predictions(net, traj, xs)
    _assert_unchanged(net, snap)
    assert pred.outputs.shape == (len(traj), 50, 1)
    np.testing.assert_array_equal(pred.steps, traj.steps)
    fig = plot.animate_fit(pred, data=(x, y))
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
        plot.animate_fit(pred, max_frames=0)


def test_snapshot_predictions_rejects_foreign_snapshots():
    net = nn.Linear(1, 1)
    with pytest.raises(ValueError, match="share no parameter name with the model"):
        fastscape.snapshot_predictions(net, [{"other.weight": torch.zeros(1, 1)}], torch.zeros(2, 1))


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
    ax = plot.hidden_lines(net, x, y)
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
    same = plot.hidden_lines((w, b), x, y)  # the weights alone draw the same lines
    np.testing.assert_allclose(same.lines[0].get_xydata(), ax.lines[0].get_xydata())
    with pytest.raises(ValueError, match="needs a layer with 2 inputs"):
        plot.hidden_lines(nn.Sequential(nn.Linear(3, 2)), torch.zeros(2, 3), [0, 1])


def test_hidden_space_points_are_the_activations():
    net, x, y = _classifier()
    snap = _snapshot(net)
    h = fastscape.hidden_activations(net, x)
    _assert_unchanged(net, snap)
    w = net[0].weight.detach().double().numpy()
    b = net[0].bias.detach().double().numpy()
    ref = 1 / (1 + np.exp(-(x.double().numpy() @ w.T + b)))  # numpy sigmoid reference
    np.testing.assert_allclose(h, ref, rtol=1e-6)
    fig = plot.hidden_space(h, y, units=(3, 0, 2))
    for trace, c in zip(fig.data, (0, 1)):
        sel = y.numpy() == c
        np.testing.assert_allclose(np.stack([trace.x, trace.y, trace.z], axis=1), ref[sel][:, [3, 0, 2]], rtol=1e-6)
    np.testing.assert_allclose(fastscape.hidden_activations(net, x, layer="0"), x.double().numpy() @ w.T + b,
                               rtol=1e-5, atol=1e-6)
    ax = plot.hidden_space(h, y, backend="matplotlib")
    assert ax.name == "3d" and [c.get_label() for c in ax.collections] == ["class 0", "class 1"]
    with pytest.raises(ValueError, match=r"`units` must be in \[0, 4\)"):
        plot.hidden_space(h, y, units=(0, 1, 7))
    with pytest.raises(ValueError, match="`units` must name 3 different hidden units"):
        plot.hidden_space(h, y, units=(0, 0, 1))


def test_thresholded_prediction_matches_numpy():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(1, 6), nn.Sigmoid(), nn.Linear(6, 1))
    net.train()  # the flag must come back as it was
    snap = _snapshot(net)
    x = np.linspace(3, -3, 80)  # decreasing: the view sorts, the data object keeps the order given
    pred = fastscape.thresholded_prediction(net, x)
    _assert_unchanged(net, snap)
    w1 = net[0].weight.detach().double().numpy().reshape(-1)
    b1 = net[0].bias.detach().double().numpy()
    w2 = net[2].weight.detach().double().numpy().reshape(-1)
    b2 = float(net[2].bias.detach())
    hard = ((x[:, None] * w1 + b1) > 0).astype(float) @ w2 + b2
    smooth = (1 / (1 + np.exp(-(x[:, None] * w1 + b1)))) @ w2 + b2
    np.testing.assert_allclose(pred.thresholded, hard, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.smooth, smooth, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.switches, -b1 / w1)
    ax = plot.thresholded(pred, np.sin(x))
    lines = {l.get_label(): l for l in ax.lines}
    np.testing.assert_allclose(lines["thresholded"].get_ydata(), hard[::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lines["smooth"].get_xdata(), x[::-1])
    with pytest.raises(ValueError, match="needs a 1-D regression net"):
        fastscape.thresholded_prediction(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)), np.zeros((4, 2)))
    with pytest.raises(TypeError, match="must be the result of fastscape.thresholded_prediction"):
        plot.thresholded(np.zeros(3))


# ----------------------------------------------------------------------------- gradient views


def _linreg():
    return linear_regression_case(seed=4, n=64, noise=0.2, bias=0.25)


def _mse(w, b, x, y):
    return np.mean((w * x + b - y) ** 2)


def test_cross_sections_curve_and_tangent_match_closed_form():
    model, x, y = _linreg()
    snap = _snapshot(model)
    sec = fastscape.cross_sections(model, (x, y), loss_fn=F.mse_loss, span=2.0, n=21)
    _assert_unchanged(model, snap)
    assert all(p.grad is None for p in model.parameters())
    xn, yn = x.double().numpy().ravel(), y.double().numpy().ravel()
    w0, b0 = -0.5, 0.25
    r = w0 * xn + b0 - yn
    grads = {"weight": 2 * np.mean(r * xn), "bias": 2 * np.mean(r)}  # d/dw, d/db of the MSE
    assert sec.names == ["weight", "bias"]
    np.testing.assert_allclose(sec.at, [w0, b0])
    np.testing.assert_allclose(sec.gradient, [grads["weight"], grads["bias"]], rtol=1e-5)
    np.testing.assert_allclose(sec.offsets, np.linspace(-2, 2, 21))
    for i, name in enumerate(sec.names):
        t = sec.at[i] + sec.offsets
        ref = [_mse(v, b0, xn, yn) if name == "weight" else _mse(w0, v, xn, yn) for v in t]
        np.testing.assert_allclose(sec.losses[i], ref, rtol=1e-5)
    axes = plot.cross_sections(sec)
    assert len(axes) == 2
    for ax, name, g in zip(axes, ("weight", "bias"), (grads["weight"], grads["bias"])):
        assert ax.get_xlabel() == name
        curve = next(l for l in ax.lines if l.get_label() == "loss")
        tangent = next(l for l in ax.lines if l.get_label() == "gradient")
        tx, ty = tangent.get_xdata(), tangent.get_ydata()
        np.testing.assert_allclose((ty[1] - ty[0]) / (tx[1] - tx[0]), g, rtol=1e-5)
        assert len(curve.get_xdata()) == 21
    with pytest.raises(ValueError, match="`span` must be a positive number"):
        fastscape.cross_sections(model, (x, y), loss_fn=F.mse_loss, span=0)
    with pytest.raises(ValueError, match="`names` is needed for a model with"):
        fastscape.cross_sections(nn.Linear(4, 3), (torch.zeros(2, 4), torch.zeros(2, 3)), loss_fn=F.mse_loss)


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
    steps = fastscape.lr_steps(model, (x, y), dirs, origin=origin, loss_fn=F.mse_loss, lrs=lrs)
    _assert_unchanged(model, snap)
    xn, yn = x.double().numpy().ravel(), y.double().numpy().ravel()
    r = -0.5 * xn + 0.25 - yn
    g = np.array([2 * np.mean(r * xn), 2 * np.mean(r)])
    np.testing.assert_allclose(steps.start, [-0.5, 0.25], atol=1e-6)
    assert steps.loss == pytest.approx(_mse(-0.5, 0.25, xn, yn), rel=1e-5)
    for lr, end, loss in zip(lrs, steps.ends, steps.losses):
        np.testing.assert_allclose(end, np.array([-0.5, 0.25]) - lr * g, rtol=1e-5, atol=1e-6)
        assert loss == pytest.approx(_mse(*end, xn, yn), rel=1e-4)
    np.testing.assert_allclose(steps.residuals, 0.0, atol=1e-6)  # the plane holds every parameter
    (x0, x1), (y0, y1) = steps.span(margin=0.0)
    pts = np.vstack([steps.start, steps.ends])
    assert (x0, x1, y0, y1) == pytest.approx((pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max()))
    with pytest.raises(ValueError, match="`lrs` must be positive learning rates"):
        fastscape.lr_steps(model, (x, y), dirs, origin=origin, loss_fn=F.mse_loss, lrs=(0.1, -1))


def test_lr_steps_view_keeps_the_grid_and_the_legend_off_the_landings():
    from matplotlib.collections import PathCollection

    w, b = np.linspace(-1.5, 4, 23), np.linspace(-1.5, 3.5, 21)
    surface = Surface(coords=[w, b], loss=1 + (w[:, None] - 2) ** 2 + (b[None, :] - 1) ** 2)
    steps = SimpleNamespace(lrs=np.array([0.05, 0.4, 2.0]), start=np.array([-0.5, 0.5]),
                            ends=np.array([[0.0, 0.8], [3.0, 3.0], [9.0, 8.0]]), loss=12.4,
                            losses=np.array([7.4, 9.4, 400.0]))
    ax = plot.lr_steps(steps, surface)
    assert ax.get_xlim() == (w[0], w[-1]) and ax.get_ylim() == (b[0], b[-1])  # no empty band
    marks = {c.get_label(): c for c in ax.collections if isinstance(c, PathCollection)}
    inside = next(c for lab, c in marks.items() if lab.startswith("lr=0.4"))
    np.testing.assert_allclose(inside.get_offsets()[0], [3.0, 3.0])
    off = next(c for lab, c in marks.items() if lab.startswith("lr=2"))
    assert "off the grid" in off.get_label() and "9, 8" in off.get_label()
    edge = off.get_offsets()[0]
    assert edge[0] == pytest.approx(w[-1]) or edge[1] == pytest.approx(b[-1])  # drawn at the grid's edge
    # on the line from the start toward the real landing point
    d, e = steps.ends[2] - steps.start, edge - steps.start
    assert abs(d[0] * e[1] - d[1] * e[0]) < 1e-9
    r = _drawn(ax)
    legend = ax.get_legend().get_window_extent(r)
    assert not _overlap(legend, ax.get_window_extent(r))
    with pytest.raises(TypeError, match="must be the result of fastscape.lr_steps"):
        plot.lr_steps(object(), surface)


# ----------------------------------------------------------------------------- several optimizers


def _comparison(shared=True):
    t = np.linspace(0, 1, 15)[:, None]
    start = np.array([[-3.5, -1.7]])
    coords = {"SGD": start + t * [0.0, 1.6], "SGD + momentum": start + t * [0.05, 2.3],
              "Adam": start + t * [3.5, 1.7]}
    if not shared:
        coords["Adam"] = coords["Adam"] + [0.3, 0.0]
    return SimpleNamespace(coords=coords, explained_variance_ratio=np.array([0.787, 0.143]))


def test_optimizer_comparison_colours_read_on_the_map_and_share_the_start():
    from matplotlib.colors import to_rgb

    x, y = np.linspace(-4.4, 0.9, 30), np.linspace(-2.3, 1.2, 25)
    surface = Surface(coords=[x, y], loss=0.07 + 0.1 * (x[:, None] ** 2) + 0.5 * (y[None, :] ** 2))
    cmp = _comparison()
    ax = plot.optimizer_comparison(cmp, surface, title="three optimizers")
    runs = [l for l in ax.lines if l.get_label() in cmp.coords]
    assert [l.get_label() for l in runs] == list(cmp.coords)
    for line, c in zip(runs, cmp.coords.values()):
        np.testing.assert_allclose(line.get_xydata(), c)
    colours = [np.array(to_rgb(l.get_color())) for l in runs]
    for line, col in zip(runs, colours):
        assert np.linalg.norm(col - 1.0) > 0.3  # not white
        assert line.get_path_effects()  # an outline, so the path reads on any part of the map
    # distinct from each other
    assert min(np.linalg.norm(a - b) for i, a in enumerate(colours) for b in colours[i + 1:]) > 0.3
    # one neutral start marker for the shared start, none in a run's colour
    starts = [l for l in ax.lines if l.get_label() == "shared start"]
    assert len(starts) == 1
    np.testing.assert_allclose(starts[0].get_xydata()[0], [-3.5, -1.7])
    assert to_rgb(starts[0].get_markerfacecolor()) == (1.0, 1.0, 1.0)
    at_start = [l for l in ax.lines if l.get_marker() == "o" and np.allclose(l.get_xydata()[0], [-3.5, -1.7])]
    assert at_start == starts
    assert ax.get_xlabel() == "PC1 (78.7% of variance)"
    r = _drawn(ax)
    assert not _overlap(ax.get_legend().get_window_extent(r), ax.get_window_extent(r))
    # different starts: each run's own
    ax = plot.optimizer_comparison(_comparison(shared=False), surface)
    assert not [l for l in ax.lines if l.get_label() == "shared start"]
    assert len([l for l in ax.lines if l.get_marker() == "o"]) == 3


# ----------------------------------------------------------------------------- the demo's picture


def test_demo_shows_a_basin_the_path_descends_into(tmp_path):
    from fastscape._demo import run_demo

    res = run_demo(tmp_path, resolution=41, epochs=25, log=lambda *_: None)
    s = res["surface"]
    path = res["trajectory"].matrix().numpy()
    (x0, x1), (y0, y1) = [(c[0], c[-1]) for c in s.coords]
    # the whole path inside the frame, with room around it
    assert x0 < path[:, 0].min() - 0.4 and x1 > path[:, 0].max() + 0.4
    assert y0 < path[:, 1].min() - 0.4 and y1 > path[:, 1].max() + 0.4
    # the grid's minimum strictly inside the frame (a basin, not a valley running off the edge)
    i, j = np.unravel_index(np.nanargmin(s.loss), s.loss.shape)
    assert 0 < i < len(s.coords[0]) - 1 and 0 < j < len(s.coords[1]) - 1
    # the path descends into it: its recorded test loss falls tenfold and ends within 10% of the grid's minimum
    losses = np.array(res["trajectory"].losses)
    assert losses[-1] < losses[0] / 10 and losses[-1] < 1.1 * np.nanmin(s.loss)
    end = path[-1]
    assert np.hypot(end[0] - s.coords[0][i], (end[1] - s.coords[1][j]) / 4) < 0.25
    # the caption names the article's setting and what the numbers mean
    from fastscape._demo import CAPTION

    assert "article 000" in CAPTION and "noise floor" in CAPTION and "lr 0.01" in CAPTION


def test_a_path_stored_with_the_surface_is_drawn_unless_declined():
    s = _plane()
    s.path = _path()  # what loss_surface(..., path=...) and `fastscape surface --pca-dir` store
    line = next(l for l in plot.contour(s).lines if l.get_label() == "path")
    np.testing.assert_array_equal(line.get_xydata(), _path())
    assert not [l for l in plot.contour(s, path=False).lines if l.get_label() == "path"]
    assert [t.name for t in plot.surface3d(s, log=False).data][:2] == ["loss", "path"]
    assert [t.name for t in plot.surface3d(s, path=False, minimum=False, log=False).data] == ["loss"]


def test_views_of_a_surface_of_several_datasets_read_its_values():
    x, y = np.linspace(-1, 1, 9), np.linspace(0, 2, 7)
    train = 0.01 + x[:, None] ** 2 + y[None, :] ** 2  # spans > 20x: a loss gets log levels
    acc = 1.0 / (1.0 + train)
    s = Surface(coords=[x, y], loss=train, meta={"datasets": {"train": 20, "test": 10}},
                metrics={"train/accuracy": acc, "test/loss": 2 * train, "test/accuracy": acc / 2})
    ax = plot.contour(s, value="test/accuracy", levels=5)
    filled = next(c for c in ax.collections if isinstance(c, matplotlib.contour.QuadContourSet) and c.filled)
    np.testing.assert_allclose(filled.levels, np.linspace((acc / 2).min(), (acc / 2).max(), 5))
    assert _colorbar_labels(ax.figure) == ["test accuracy"]
    assert _colorbar_labels(plot.contour(s).figure) == ["train loss (log scale)"]  # "loss": the first dataset's
    fig = plot.surface3d(s, value="test/loss", log=True, zmax=None)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), np.log10(2 * train).T)
    assert fig.layout.scene.zaxis.title.text == "test loss (log scale)"
    c = np.linspace(-1, 1, 5)
    line = Surface(coords=[c], loss=c**2 + 0.1, meta={"datasets": {"train": 20, "test": 10}},
                   metrics={"train/accuracy": 1 - c**2 / 2, "test/loss": c**2 + 0.3, "test/accuracy": 1 - c**2})
    ax = plot.line(line, value="test/loss", metric="test/accuracy")
    assert ax.get_ylabel() == "test loss" and ax.figure.axes[-1].get_ylabel() == "test accuracy (dashed)"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), c**2 + 0.3)
