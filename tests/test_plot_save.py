"""plot.save writes valid, non-trivial files for plotly and matplotlib figures alike:
HTML pages that fill the window, PNG through kaleido when a browser is there (the
view's own matplotlib drawing, with a warning, when not), GIFs drawn by matplotlib."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from fastscape import plot
from fastscape._surface import Surface
from fastscape.plot import StaticExportWarning
from fastscape.plot._save import find_chrome


def _plane():
    x = np.linspace(-1, 1, 15)
    y = np.linspace(-1, 2, 11)
    return Surface(coords=[x, y], loss=0.1 + x[:, None] ** 2 + y[None, :] ** 2)


def _path():
    return np.stack([np.linspace(0.9, 0, 8), np.linspace(1.8, 0, 8)], axis=1)


def _image(path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.format, np.asarray(im.convert("RGB"))


def _check_raster(path, fmt="PNG"):
    kind, px = _image(path)
    assert kind == fmt
    assert px.shape[0] > 100 and px.shape[1] > 100
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 20, "a single-colour picture"
    return px


def _check_svg(path):
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    drawn = [e for e in root.iter() if e.tag.split("}")[-1] in ("path", "rect", "image", "text", "use")]
    assert len(drawn) > 20
    colours = {e.get("fill") or e.get("style") for e in drawn} - {None}
    assert len(colours) > 2


def _check_pdf(path):
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert len(data) > 2000 and b"/Page" in data


def test_matplotlib_png_svg_pdf(tmp_path):
    ax = plot.contour(_plane(), path=_path(), title="t")
    _check_raster(plot.save(ax, tmp_path / "a" / "c.png"))  # Axes accepted, folder made
    _check_svg(plot.save(ax.figure, tmp_path / "c.svg"))
    _check_pdf(plot.save(ax.figure, tmp_path / "c.pdf"))


def test_plotly_html_is_self_contained_and_fills_the_window(tmp_path):
    out = plot.save(plot.surface3d(_plane(), path=_path()), tmp_path / "s.html")
    html = out.read_text()
    assert html.lstrip().lower().startswith("<html") or html.lstrip().lower().startswith("<!doctype")
    assert "Plotly.newPlot" in html
    assert len(html) > 1_000_000  # plotly.js embedded
    assert 'src="http' not in html  # nothing to fetch
    # a full-window page: the plot's div takes the whole body, which has no margin; plotly resizes with it
    assert re.search(r'class="plotly-graph-div" style="height:100%; width:100%;"', html)
    assert re.search(r"html, body \{[^}]*height: 100%;[^}]*margin: 0", html)
    assert '"responsive": true' in html


@pytest.mark.skipif(find_chrome() is None, reason="no Chromium/Chrome binary on this machine")
def test_plotly_static_export_through_kaleido(tmp_path, recwarn):
    fig = plot.surface3d(_plane(), path=_path())
    out = plot.save(fig, tmp_path / "s.png", scale=1, size=(640, 480))
    _check_raster(out)
    assert not [w for w in recwarn if issubclass(w.category, StaticExportWarning)]
    _, px = _image(out)
    assert px.shape[:2] == (480, 640)  # kaleido's size, not matplotlib's
    # a 2-D plotly figure exports as vector paths (3-D scenes are embedded as one raster image)
    _check_svg(plot.save(plot.animate_path(_plane(), _path()), tmp_path / "p.svg"))


def test_without_a_browser_the_views_matplotlib_drawing_is_written(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    assert find_chrome() is None
    fig = plot.surface3d(_plane(), path=_path())
    with pytest.warns(StaticExportWarning, match=r"BROWSER_PATH=.*no-such-chrome.* is not an executable file"):
        out = plot.save(fig, tmp_path / "s.png", dpi=60)
    px = _check_raster(out)
    # the matplotlib drawing of the same view, not a blank page: a wide range of colours
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 200
    with pytest.warns(StaticExportWarning, match="apt-get install chromium"):
        _check_pdf(plot.save(fig, tmp_path / "s.pdf"))
    with pytest.raises(RuntimeError, match="needs Chrome/Chromium for kaleido.*fallback=True"):
        plot.save(fig, tmp_path / "t.png", fallback=False)
    assert not (tmp_path / "t.png").exists()
    # a plotly figure not made by fastscape.plot has no drawing to fall back on
    with pytest.raises(RuntimeError, match="not made by fastscape.plot"):
        plot.save(go.Figure(go.Scatter(x=[1, 2], y=[1, 0])), tmp_path / "u.png")


def test_animation_to_gif(tmp_path):
    from PIL import Image

    fig = plot.animate_path(_plane(), _path(), max_frames=5)
    out = plot.save(fig, tmp_path / "p.gif", dpi=50, frame_ms=120)
    with Image.open(out) as im:
        assert im.format == "GIF" and im.n_frames == len(fig.frames) == 5
        assert im.info["duration"] == 120
        frames = []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
    assert len(np.unique(frames[0].reshape(-1, 3), axis=0)) > 20
    assert not np.array_equal(frames[0], frames[-1])  # the path moves


def test_save_rejects_bad_input(tmp_path):
    import plotly.graph_objects as go

    ax = plot.contour(_plane())
    with pytest.raises(ValueError, match=r"`out` must end in one of \['.html', '.png'"):
        plot.save(ax, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="'.html', which is for plotly figures"):
        plot.save(ax, tmp_path / "x.html")
    with pytest.raises(TypeError, match="`fig` must be a plotly Figure or a matplotlib Figure/Axes"):
        plot.save(object(), tmp_path / "x.png")
    with pytest.raises(ValueError, match="a GIF is drawn from a fastscape.plot view"):
        plot.save(go.Figure(), tmp_path / "x.gif")
    with pytest.raises(ValueError, match="`frame_ms` must be a positive number"):
        plot.save(ax, tmp_path / "x.gif", frame_ms=0)


# --------------------------------------------------------------------------- a 3-D view with nothing finite


def _surface3d(surface):
    import fastscape

    plot = getattr(fastscape, "plot", None)
    fn = getattr(fastscape, "plot_surface3d", None) or getattr(plot, "surface3d")
    return fn(surface)


def _save(fig, path):
    import fastscape

    plot = getattr(fastscape, "plot", None)
    fn = getattr(fastscape, "save_figure", None) or getattr(plot, "save")
    return fn(fig, path)


@pytest.mark.parametrize("suffix, fill", [(".png", np.inf), (".svg", np.nan)])
def test_saving_the_3d_plot_of_an_all_diverged_surface_writes_a_file_or_raises(tmp_path, suffix, fill):
    import warnings
    from pathlib import Path

    x = np.linspace(-1, 1, 5)
    surface = Surface(coords=[x, x], loss=np.full((5, 5), fill))
    path = tmp_path / f"s{suffix}"
    fig = _surface3d(surface)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            written = _save(fig, path)
    except (ValueError, RuntimeError) as err:  # a refusal that says why
        assert "finite" in str(err)
        assert not path.exists()
        return
    # or a file that says why it is empty
    assert any("finite" in str(w.message) for w in caught)
    assert Path(written) == path
    assert path.is_file() and path.stat().st_size > 0
