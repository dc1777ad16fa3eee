"""Where the 3-D views put things on the page: the camera against the contour's orientation, the box
against the page, colour-bar titles against their ticks, the volume's shells and slices against one
colour scale. Checked on the figures' layout and data with a camera model written here (plotly's:
a pinhole at ``eye`` looking at ``center`` with z up, 45-degree vertical field of view, the box
``aspectratio`` wide and centred on the origin; it lands within a pixel of the corners Chromium
draws), not with the views' own helpers."""

from __future__ import annotations

import numpy as np
import pytest

from fastscape import plot
from fastscape._surface import Surface


def _screen(fig, points, page=(1280, 713)):
    """(n, 2) positions of 3-D scene points (in box units) on the scene's viewport, x right and y up,
    the viewport spanning [-1, 1]; ``page`` is the browser window's inner size in pixels."""
    lay = fig.layout
    cam = lay.scene.camera
    eye = np.array([cam.eye.x, cam.eye.y, cam.eye.z], dtype=float)
    center = np.array([cam.center.x or 0.0, cam.center.y or 0.0, cam.center.z or 0.0], dtype=float)
    m = lay.margin
    width = (page[0] - m.l - m.r) * (lay.scene.domain.x[1] - lay.scene.domain.x[0])
    height = (page[1] - m.t - m.b) * (lay.scene.domain.y[1] - lay.scene.domain.y[0])
    f = (center - eye) / np.linalg.norm(center - eye)
    r = np.cross(f, [0, 0, 1.0])
    r /= np.linalg.norm(r)
    u = np.cross(r, f)
    rel = np.asarray(points, dtype=float) - eye
    depth = rel @ f
    t = np.tan(np.pi / 8)
    return np.stack([rel @ r / (depth * t * width / height), rel @ u / (depth * t)], axis=1)


def _box(fig):
    a = fig.layout.scene.aspectratio
    g = np.array(np.meshgrid([-0.5, 0.5], [-0.5, 0.5], [-0.5, 0.5], indexing="ij")).reshape(3, -1).T
    return g * [a.x, a.y, a.z]


def _elevation(fig):
    cam = fig.layout.scene.camera
    d = np.array([cam.eye.x - (cam.center.x or 0), cam.eye.y - (cam.center.y or 0), cam.eye.z - (cam.center.z or 0)])
    return np.degrees(np.arctan2(d[2], np.hypot(d[0], d[1])))


def _surfaces():
    x = np.linspace(-1, 2, 31)
    y = np.linspace(-1, 1, 25)
    bowl = 0.1 + 0.5 * (x[:, None] - 0.4) ** 2 + 0.3 * y[None, :] ** 2
    wall_right = np.where(x[:, None] > 1.2, 50.0, bowl)
    wall_front = bowl + 40.0 * (y[None, :] < -0.5)  # a wall between the viewer and the valley
    tilted = np.exp(3 * y)[None, :] + 0 * x[:, None]
    return {name: Surface(coords=[x, y], loss=loss + 0 * y[None, :])
            for name, loss in (("bowl", bowl), ("wall right", wall_right), ("wall front", wall_front),
                               ("tilted", tilted))}


SURFACES = _surfaces()


@pytest.mark.parametrize("name", list(SURFACES))
@pytest.mark.parametrize("with_path", [False, True])
def test_surface3d_camera_keeps_the_contours_orientation(name, with_path):
    """Direction 1 runs to the right and direction 2 away (up the page), as on the contour, whatever
    the surface; the path's end or the valley only swings the eye within that."""
    s = SURFACES[name]
    path = np.array([[1.8, 0.9], [0.4, 0.0]]) if with_path else False
    fig = plot.surface3d(s, path=path, zmax=None)
    origin, e1, e2 = _screen(fig, [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0]])
    d1, d2 = e1 - origin, e2 - origin
    assert d1[0] > 0 and abs(np.degrees(np.arctan2(d1[1], d1[0]))) <= 40  # rightwards, near horizontal
    assert d2[1] > 0  # direction 2 goes up the page: away from the viewer
    assert abs(d2[0]) < d2[1] * 2  # more away than sideways


@pytest.mark.parametrize("name", list(SURFACES))
def test_surface3d_camera_is_low_without_a_path(name):
    fig = plot.surface3d(SURFACES[name], path=False, zmax=None)
    assert 15 <= _elevation(fig) <= 30


def test_surface3d_camera_rises_only_to_see_a_hidden_path_end():
    s = SURFACES["wall front"]
    open_end = plot.surface3d(s, path=np.array([[-0.5, -0.9], [0.4, -0.9]]), zmax=None)  # ends in front of the wall
    hidden_end = plot.surface3d(s, path=np.array([[-0.5, -0.9], [0.4, 0.6]]), zmax=None)  # ends behind it
    assert _elevation(open_end) <= 30
    assert 30 < _elevation(hidden_end) <= 61


@pytest.mark.parametrize("name", list(SURFACES))
def test_surface3d_box_fills_the_scene_without_clipping(name):
    fig = plot.surface3d(SURFACES[name], path=np.array([[1.8, 0.9], [0.4, 0.0]]), zmax=None)
    for page in ((1280, 713), (1920, 993), (1000, 713)):  # the windows of 1280x800, 1920x1080, 1000x800
        p = _screen(fig, _box(fig), page)
        assert np.abs(p).max() <= 0.95, page  # room for the tick labels and axis titles
        assert np.abs(p.min(axis=0) + p.max(axis=0)).max() / 2 <= 0.05, page  # centred
        if page[0] >= 1280:
            assert np.ptp(p[:, 1]) / 2 >= 0.7, page  # the box's height spans most of the scene


def test_surface3d_matplotlib_looks_from_the_same_side():
    s = SURFACES["wall right"]
    fig = plot.surface3d(s, zmax=None)
    ax = plot.surface3d(s, zmax=None, backend="matplotlib")
    cam = fig.layout.scene.camera
    azim = np.degrees(np.arctan2(cam.eye.y - cam.center.y, cam.eye.x - cam.center.x))
    assert ax.azim == pytest.approx(azim) and ax.elev == pytest.approx(_elevation(fig))


@pytest.mark.parametrize("path_label", ["epoch", "recorded snapshot"])
def test_surface3d_colour_bar_titles_sit_above_their_bars(path_label):
    """Titles beside a bar overlap its tick labels' column; above it, each line must fit between the
    bar's left edge and the next bar (or the page's edge) on a 1280-pixel page."""
    fig = plot.surface3d(SURFACES["bowl"], path=np.array([[1.8, 0.9], [0.4, 0.0]]), path_label=path_label)
    bars = [fig.data[0].colorbar, fig.data[1].marker.colorbar]
    assert [b.title.side for b in bars] == ["top", "top"]
    assert bars[0].x < bars[1].x
    ends = [bars[1].x, 1.0]
    usable = 1280 - fig.layout.margin.l - fig.layout.margin.r
    for bar, end in zip(bars, ends):
        widest = max(len(line) for line in bar.title.text.split("<br>"))
        assert widest * 7.5 <= (end - bar.x) * usable, bar.title.text  # ~7.5 px a character at 12 px
    assert fig.data[1].marker.colorbar.title.text.replace("<br>", " ") == path_label


def test_surface3d_given_path_loss_is_lifted_and_hover_reads_values_not_logs():
    x = np.linspace(-1, 1, 21)
    y = np.linspace(-1, 1, 17)
    loss = 0.01 + 100 * (x[:, None] ** 2 + y[None, :] ** 2)  # spans 1e4: a log view
    s = Surface(coords=[x, y], loss=loss)
    path = np.array([[0.8, 0.6], [0.0, 0.0]])
    given = 0.01 + 100 * (path**2).sum(axis=1)  # the loss at the path's points, exactly on the surface
    fig = plot.surface3d(s, path=path, path_loss=given, zmax=None)
    surf, line = fig.data[:2]
    assert np.all(np.asarray(line.z) > np.log10(given))  # above the mesh, not half sunk into it
    np.testing.assert_allclose(np.asarray(line.customdata)[:, 1], given)  # hover: the loss, not log10
    np.testing.assert_allclose(np.asarray(surf.customdata), loss.T)
    assert "customdata" in surf.hovertemplate and "customdata[1]" in line.hovertemplate


@pytest.mark.parametrize("span", [(-2.75, -0.5), (-9.25, 0.75), (-1.0, 1.0), (0.0, 0.03)])
def test_contour_tick_labels_do_not_crowd(span):
    """Tick labels along x keep a gap between them, at the demo's figure size and on a narrow panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    x = np.linspace(*span, 41)
    y = np.linspace(-9.25, 0.75, 31)
    s = Surface(coords=[x, y], loss=1 + (x[:, None] - x.mean()) ** 2 + 0 * y[None, :])
    for size in ((7.6, 7.0), (5.0, 4.4)):
        ax = plot.contour(s, path=np.array([[x[3], y[3]], [x[-3], y[-3]]]), path_label="epoch")
        ax.figure.set_size_inches(*size)
        canvas = FigureCanvasAgg(ax.figure)
        canvas.draw()
        r = canvas.get_renderer()
        for axis in (ax.xaxis,):
            boxes = sorted((t.get_window_extent(r) for t in axis.get_ticklabels()
                            if t.get_visible() and t.get_text()), key=lambda b: b.x0)
            assert len(boxes) >= 3
            gaps = [b.x0 - a.x1 for a, b in zip(boxes, boxes[1:])]
            assert min(gaps) >= 0.15 * ax.figure.dpi, (span, size, [t.get_text() for t in axis.get_ticklabels()])


def test_contour_labels_stay_clear_of_the_edges():
    """Level lines running off the frame (a valley across the plane) are labelled inside it: at the
    edge, the stub of line before "20" reads as a minus sign."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    x = np.linspace(-2.75, -0.5, 61)
    y = np.linspace(-9.25, 0.75, 61)
    loss = 1 + 0.4 * (y[None, :] + 6) ** 2 + 0.2 * (x[:, None] + 1) ** 2  # lines cross the frame side to side
    ax = plot.contour(Surface(coords=[x, y], loss=loss))
    canvas = FigureCanvasAgg(ax.figure)
    canvas.draw()
    frame = ax.get_window_extent(canvas.get_renderer())
    labels = [t for t in ax.texts if t.get_text()]
    assert len(labels) >= 3
    for t in labels:
        box = t.get_window_extent(canvas.get_renderer())
        assert box.x0 - frame.x0 >= 0.05 * frame.width and frame.x1 - box.x1 >= 0.05 * frame.width, t.get_text()
        assert box.y0 - frame.y0 >= 0.02 * frame.height and frame.y1 - box.y1 >= 0.02 * frame.height, t.get_text()


def test_negative_numbers_in_view_text_use_a_minus_sign():
    """An annotation or legend entry prints -8.56 as \u22128.56, as the ticks do (a hyphen reads as a dash)."""
    from types import SimpleNamespace

    import torch

    import fastscape
    from fastscape.plot._marks import best_label

    x = torch.linspace(0, 2, 20).reshape(-1, 1)
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():  # far from the fit y = 2x + 1: both partial derivatives negative
        model.weight.fill_(-0.5)
        model.bias.fill_(0.5)
    sections = fastscape.cross_sections(model, (x, 2 * x + 1), loss_fn=torch.nn.functional.mse_loss, span=3.0)
    axes = np.atleast_1d(plot.cross_sections(sections))  # one Axes per parameter
    texts = [t.get_text() for a in axes[0].figure.axes for t in a.texts if "gradient" in t.get_text()]
    assert len(texts) == 2
    assert all("\u2212" in t and "-" not in t for t in texts), texts
    value = SimpleNamespace(best="max", label="test accuracy")
    assert best_label(dict(value=-0.25, edge=False), value) == "grid max test accuracy \u22120.25"


def test_animate_path_colour_bar_ticks_are_round_loss_values():
    x = np.linspace(-1, 1, 31)
    y = np.linspace(-1, 1, 21)
    s = Surface(coords=[x, y], loss=0.0916 + 2.5 * (x[:, None] ** 2 + y[None, :] ** 2))  # the gallery's span
    path = np.array([[0.9, 0.8], [0.3, 0.2], [0.0, 0.0]])
    bar = plot.animate_path(s, path).data[0].colorbar
    printed = np.array([float(t.replace("\u2212", "-")) for t in bar.ticktext])
    mantissa = printed / 10 ** np.floor(np.log10(printed))
    assert len(printed) >= 3 and set(np.round(mantissa, 9)) <= {1.0, 2.0, 5.0}
    np.testing.assert_allclose(bar.tickvals, np.log10(printed))  # on the log10 heights the trace holds


def test_contour_labels_every_level_line_that_crosses_the_frame():
    """A tilted valley: every level has long open lines from edge to edge, and each is labelled once."""
    w = np.linspace(-0.5, 1.5, 81)
    b = np.linspace(0, 2, 81)
    u = (w[:, None] - 0.5) * 2 + (b[None, :] - 1.1) * 0.9
    loss = 0.028 + 3 * u**2 + 0.05 * ((w[:, None] - 0.5) - (b[None, :] - 1.1) * 2) ** 2
    ax = plot.contour(Surface(coords=[w, b], loss=loss))
    drawn = sorted(float(t.get_text()) for t in ax.texts if t.get_text())
    inside = [q for q in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10) if loss.min() < q < loss.max()]
    assert drawn == inside


def test_contour_labels_keep_off_the_path_and_named_points():
    w = np.linspace(-0.5, 1.5, 81)
    b = np.linspace(0, 2, 81)
    loss = 0.028 + 3 * ((w[:, None] - 0.5) * 2 + (b[None, :] - 1.1) * 0.9) ** 2
    path = np.stack([np.linspace(-0.2, 0.55, 4), np.linspace(0.3, 1.05, 4)], axis=1)  # long steps across every level
    ax = plot.contour(Surface(coords=[w, b], loss=loss), path=path, points={"least squares": (0.5, 1.1)})
    marks = np.concatenate([np.stack([np.linspace(-0.2, 0.55, 60), np.linspace(0.3, 1.05, 60)], axis=1), [[0.5, 1.1]]])
    to_axes = lambda q: (np.asarray(q) - [w[0], b[0]]) / [w[-1] - w[0], b[-1] - b[0]]  # noqa: E731
    labels = [t for t in ax.texts if t.get_text().replace(".", "").isdigit()]
    assert len(labels) >= 5
    for t in labels:
        gap = np.hypot(*(to_axes(marks) - to_axes(t.get_position())).T).min()
        assert gap >= 0.07, (t.get_text(), gap)
