"""Writing figures to files: one call for plotly and matplotlib figures alike.

``save(fig, out)`` picks the format from the suffix:

- ``.html``: a plotly figure as a self-contained page (plotly.js embedded, so it
  opens offline) that fills the browser window; animations keep their play
  button and slider.
- ``.png``, ``.svg``, ``.pdf``: a matplotlib figure through ``savefig``; a plotly
  figure through kaleido, which drives a local Chrome/Chromium (found by
  :func:`find_chrome`).
- ``.gif``: an animation from :func:`fastscape.plot.animate_path` or
  :func:`~fastscape.plot.animate_fit` (each frame drawn natively by matplotlib,
  written by Pillow), or a matplotlib figure as a one-frame GIF.

Every plotly view of :mod:`fastscape.plot` carries its own matplotlib drawing of
the same data. When no browser can be found (or it fails to start), a static
export of such a figure writes that drawing instead, with a
:class:`StaticExportWarning` that says what was missing and how to fix it;
``fallback=False`` raises instead.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from .._paths import file_path
from ._common import mpl_form, require

__all__ = ["save", "find_chrome", "StaticExportWarning", "SUFFIXES"]

#: the formats :func:`save` writes.
SUFFIXES = (".html", ".png", ".svg", ".pdf", ".gif")

_CHROME_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

#: CSS for a page that is the figure: no body margin, so no scroll bars around a full-window plot.
_PAGE_CSS = "<style>html, body {height: 100%; margin: 0; overflow: hidden;}</style>"


class StaticExportWarning(UserWarning):
    """A plotly figure could not be exported by a browser; its matplotlib drawing was written."""


def find_chrome() -> str | None:
    """The Chrome/Chromium kaleido should use, or None.

    Looked for in this order: the ``BROWSER_PATH`` environment variable (when
    set, it is the only candidate, so a wrong path is reported rather than
    silently replaced), the usual executable names on ``PATH``, then the copy
    that ``kaleido_get_chrome`` downloads and the platform's usual locations.
    """
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if Path(env).is_file() and os.access(env, os.X_OK) else None
    for name in _CHROME_NAMES:
        found = shutil.which(name)
        if found:
            return found
    try:
        from choreographer.browsers.chromium import Chromium

        found = Chromium.find_browser(skip_local=False)
    except Exception:  # noqa: BLE001 - best effort: any failure means "not found"
        return None
    return found if found and Path(found).is_file() else None


def _is_plotly(fig) -> bool:
    return hasattr(fig, "to_plotly_json")


def _mpl_figure(fig):
    if hasattr(fig, "savefig"):
        return fig
    if hasattr(fig, "ravel") and hasattr(fig, "size") and fig.size:  # an array of Axes
        fig = fig.ravel()[0]
    figure = getattr(fig, "figure", None)  # an Axes or an artist
    if figure is not None and hasattr(figure, "savefig"):
        return figure
    raise TypeError(
        f"`fig` must be a plotly Figure or a matplotlib Figure/Axes; got {type(fig).__name__}."
    )


def _fix(chrome, err=None) -> str:
    env = os.environ.get("BROWSER_PATH")
    if err is not None:
        first = str(err).splitlines()[0] if str(err) else ""
        why = f"the browser at {chrome!r} failed: {type(err).__name__}: {first}"
    elif env:
        why = f"BROWSER_PATH={env!r} is not an executable file"
    else:
        why = "no Chrome or Chromium was found"
    return (
        f"static export of a plotly figure needs Chrome/Chromium for kaleido, but {why}. "
        "Fix: install one (Debian/Ubuntu: `apt-get install chromium`, or run `kaleido_get_chrome`) or "
        "point BROWSER_PATH at it; or draw the view with backend='matplotlib'."
    )


def _kaleido_write(fig, out: Path, chrome: str, scale: float, size) -> None:
    kaleido = require("kaleido", "static export of a plotly figure")
    layout = fig.layout
    opts = {
        "format": out.suffix.lower().lstrip("."),
        "width": layout.width or size[0],
        "height": layout.height or size[1],
        "scale": scale,
    }
    # mathjax=False: no CDN fetch from a batch node without network
    kaleido.write_fig_from_object_sync(
        [{"fig": fig.to_plotly_json(), "path": out, "opts": opts}],
        kopts={"path": chrome, "mathjax": False},
    )


def _has_finite_values(fig) -> bool:
    """Whether any trace of a plotly figure holds a finite number to draw (its z or value, else its y)."""
    import numpy as np

    for trace in fig.data:
        values = None
        for name in ("z", "value", "y"):
            values = getattr(trace, name, None) if name in trace else None
            if values is not None:
                break
        if values is None:
            return True  # a trace of another kind (text, images, ...): let it draw
        try:
            arr = np.asarray(values, dtype=float)
        except (TypeError, ValueError):
            return True  # categorical values
        if np.isfinite(arr).any():
            return True
    return False


def _write_html(fig, out: Path) -> None:
    html = fig.to_html(include_plotlyjs=True, full_html=True, auto_play=False, default_width="100%",
                       default_height="100%", config={"responsive": True, "displaylogo": False})
    html = html.replace("<head>", "<head>\n    " + _PAGE_CSS, 1)
    out.write_text(html, encoding="utf-8")


def _write_gif(figure, update, frames, out: Path, dpi: int, frame_ms: int, hold_ms: int = 0) -> None:
    """One GIF frame per entry of ``frames`` (``frame_ms`` each), the last shown ``hold_ms`` longer."""
    import io

    require("matplotlib", "writing a GIF")
    Image = require("PIL.Image", "writing a GIF")
    images = []
    for i in frames or (None,):
        if i is not None and update is not None:
            update(i)
        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=dpi)  # the figure's own dpi is left as it was
        buf.seek(0)
        images.append(Image.open(buf).convert("RGB"))
    durations = [int(frame_ms)] * len(images)
    durations[-1] += int(hold_ms)
    # each frame its own palette (a GIF holds 256 colours a frame); loop forever
    images[0].save(out, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=False,
                   disposal=1)


def save(fig, out, *, dpi: int = 150, scale: float = 2.0, fallback: bool = True, frame_ms: int = 120,
         size: tuple[int, int] | None = None) -> Path:
    """Write a plotly Figure or a matplotlib Figure/Axes; the format follows the suffix of ``out``.

    Parameters
    ----------
    fig : plotly.graph_objects.Figure, matplotlib Figure or Axes (or an array of Axes)
    out : str or Path
        Ends in ``.html`` (plotly only), ``.png``, ``.svg``, ``.pdf`` or ``.gif``.
        Parent folders are created.
    dpi : int
        Resolution of matplotlib raster output (GIF frames included).
    scale : float
        Pixel scale of kaleido's plotly raster output (2 = twice the size).
    fallback : bool
        When a plotly figure cannot be exported by a browser: write the view's
        matplotlib drawing with a :class:`StaticExportWarning` (True), or raise
        ``RuntimeError`` (False). A plotly figure not made by
        ``fastscape.plot`` has no such drawing and always raises.
    frame_ms : int
        Duration of one GIF frame, in milliseconds.
    size : (width, height) in pixels, optional
        The size kaleido draws a plotly figure at (the views set none, so that
        pages fill the window); default: the view's own (about 1000 x 800).

    Returns
    -------
    Path
        The file written.
    """
    out = file_path(out, "out")
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"`out` must end in one of {list(SUFFIXES)}; got {out.name!r}.")
    plotly = _is_plotly(fig)
    if not plotly:
        figure = _mpl_figure(fig)
        if suffix == ".html":
            raise ValueError(
                "`out` ends in '.html', which is for plotly figures; save a matplotlib figure "
                "as '.png', '.svg', '.pdf' or '.gif'."
            )
    if not isinstance(frame_ms, (int, float)) or frame_ms <= 0:
        raise ValueError(f"`frame_ms` must be a positive number of milliseconds; got {frame_ms!r}.")
    out.parent.mkdir(parents=True, exist_ok=True)

    if not plotly:
        if suffix == ".gif":
            _write_gif(figure, None, (), out, dpi, frame_ms)
        else:
            figure.savefig(out, dpi=dpi)
        return out

    form = mpl_form(fig)
    if suffix == ".html":
        _write_html(fig, out)
        return out
    if suffix == ".gif":
        if form is None:
            raise ValueError(
                "a GIF is drawn from a fastscape.plot view's own matplotlib drawing (animate_path, "
                "animate_fit, surface3d, volume, hidden_space); this plotly figure carries none. Save it "
                "as '.html', or draw a matplotlib figure and save that."
            )
        figure, update = form.make()
        _write_gif(figure, update, form.frames, out, dpi, frame_ms, form.hold_ms)
        return out

    if not _has_finite_values(fig):
        # kaleido renders such a figure to nothing and reports success
        raise ValueError(f"`fig` has no finite values to draw (every value is NaN or inf, e.g. a surface whose "
                         f"every point diverged), so no {suffix} was written to {str(out)!r}; check "
                         "`np.isfinite(surface.loss).any()` first, or save it as '.html'.")
    chrome = find_chrome()
    err = None
    if chrome is not None:
        try:
            _kaleido_write(fig, out, chrome, scale, size or (form.size if form else (1000, 800)))
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001 - reported in the message below
            err = e
        else:
            if not out.is_file() or out.stat().st_size == 0:
                raise RuntimeError(f"kaleido reported success but wrote no file at {str(out)!r}.")
            return out
    message = _fix(chrome, err)
    if form is None:
        raise RuntimeError(message + " (This plotly figure was not made by fastscape.plot, so it has no "
                           "matplotlib drawing to write instead.)")
    if not fallback:
        raise RuntimeError(message + " Pass fallback=True to write the view's matplotlib drawing instead.")
    figure, update = form.make()
    if update is not None and form.frames:
        update(form.frames[-1])
    figure.savefig(out, dpi=dpi)
    warnings.warn(message + " The view's matplotlib drawing was written instead.", StaticExportWarning,
                  stacklevel=2)
    return out

