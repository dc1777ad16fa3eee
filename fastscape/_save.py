"""Writing figures to files: one call for plotly and matplotlib figures alike.

``save_figure(fig, path)`` picks the format from the suffix:

- ``.html``: a plotly figure as a self-contained page (plotly.js embedded, so
  it opens offline); animations keep their play button and slider.
- ``.png``, ``.svg``, ``.pdf``: a matplotlib figure through ``savefig``; a
  plotly figure through kaleido, which drives a local Chrome/Chromium
  (found by :func:`find_chrome`).
- ``.gif``: an animated plotly figure (one with frames), each frame drawn with
  matplotlib and assembled by Pillow, so no external binary is needed.

When no browser can be found (or it fails to start), a static plotly export
does not fail the batch job: a :class:`StaticExportWarning` says what was
missing and how to fix it, and the matplotlib rendering of the same traces
(:func:`fastscape._plotly_mpl.plotly_to_matplotlib`) is written to the same
path instead. Pass ``fallback=False`` to get a ``RuntimeError`` instead.
"""

from __future__ import annotations

import io
import os
import shutil
import warnings
from pathlib import Path

__all__ = ["save_figure", "find_chrome", "StaticExportWarning", "SUFFIXES"]

#: the formats :func:`save_figure` writes.
SUFFIXES = (".html", ".png", ".svg", ".pdf", ".gif")

_CHROME_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


class StaticExportWarning(UserWarning):
    """A plotly figure could not be exported by a browser; its matplotlib rendering was written."""


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
    figure = getattr(fig, "figure", None)  # an Axes or an artist
    if figure is not None and hasattr(figure, "savefig"):
        return figure
    raise TypeError(
        f"`fig` must be a plotly Figure or a matplotlib Figure/Axes; got {type(fig).__name__}."
    )


def _no_browser_message(chrome, err=None) -> str:
    env = os.environ.get("BROWSER_PATH")
    if err is not None:
        why = f"the browser at {chrome!r} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    elif env:
        why = f"BROWSER_PATH={env!r} is not an executable file"
    else:
        why = "no Chrome or Chromium was found"
    return (
        f"static export of a plotly figure needs Chrome/Chromium for kaleido, but {why}. "
        "Install one (Debian/Ubuntu: `apt-get install chromium`, or `kaleido_get_chrome`) or "
        "point BROWSER_PATH at it. A matplotlib rendering of the same data was written instead."
    )


def _kaleido_write(fig, path: Path, chrome: str, scale: float) -> None:
    import kaleido

    layout = fig.layout
    opts = {
        "format": path.suffix.lower().lstrip("."),
        "width": layout.width or 800,
        "height": layout.height or 600,
        "scale": scale,
    }
    # mathjax=False: no CDN fetch from a batch node without network
    kaleido.write_fig_from_object_sync(
        [{"fig": fig.to_plotly_json(), "path": path, "opts": opts}],
        kopts={"path": chrome, "mathjax": False},
    )


def _has_finite_values(fig) -> bool:
    """Whether any trace of a plotly figure holds a finite number to draw (its z, else its y)."""
    import numpy as np

    for trace in fig.data:
        values = getattr(trace, "z", None)
        if values is None:
            values = getattr(trace, "y", None)
        if values is None:
            return True  # a trace of another kind (text, images, ...): let it draw
        try:
            arr = np.asarray(values, dtype=float)
        except (TypeError, ValueError):
            return True  # categorical values
        if np.isfinite(arr).any():
            return True
    return False


def _gif(images, path: Path, duration_ms: int) -> None:
    first, *rest = [im.convert("RGB").quantize(colors=255, method=2) for im in images]
    first.save(path, save_all=True, append_images=rest, duration=duration_ms, loop=0, optimize=False)


def _mpl_to_image(figure, dpi):
    from PIL import Image

    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    return Image.open(buf).copy()


def save_figure(fig, path, *, dpi: int = 150, scale: float = 2.0, fallback: bool = True,
                frame_ms: int = 120) -> Path:
    """Write a plotly Figure or a matplotlib Figure/Axes; the format follows the suffix.

    Parameters
    ----------
    fig : plotly.graph_objects.Figure, matplotlib Figure or Axes
    path : str or Path
        Ends in ``.html`` (plotly only), ``.png``, ``.svg``, ``.pdf`` or ``.gif``.
        Parent folders are created.
    dpi : int
        Resolution of matplotlib raster output (and of fallback renderings).
    scale : float
        Pixel scale of kaleido's plotly raster output (2 = twice the layout size).
    fallback : bool
        When a plotly figure cannot be exported by a browser, write its
        matplotlib rendering with a :class:`StaticExportWarning` (True), or
        raise ``RuntimeError`` (False).
    frame_ms : int
        Duration of one GIF frame, in milliseconds.

    Returns
    -------
    Path
        The path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"`path` must end in one of {list(SUFFIXES)}; got {path.name!r}.")
    plotly = _is_plotly(fig)
    if not plotly:
        figure = _mpl_figure(fig)
        if suffix == ".html":
            raise ValueError(
                "`path` ends in '.html', which is for plotly figures; save a matplotlib figure "
                "as '.png', '.svg', '.pdf' or '.gif'."
            )
    path.parent.mkdir(parents=True, exist_ok=True)

    if not plotly:
        if suffix == ".gif":
            _gif([_mpl_to_image(figure, dpi)], path, frame_ms)
        else:
            figure.savefig(path, dpi=dpi)
        return path

    from ._plotly_mpl import plotly_to_matplotlib

    if suffix == ".html":
        fig.write_html(path, include_plotlyjs=True, full_html=True, auto_play=False)
        return path
    if suffix == ".gif":
        n = max(1, len(fig.frames))
        images = [_mpl_to_image(plotly_to_matplotlib(fig, frame=i if fig.frames else None), dpi)
                  for i in range(n)]
        _gif(images, path, frame_ms)
        return path

    if not _has_finite_values(fig):
        # kaleido renders such a figure to nothing and reports success
        raise ValueError(f"`fig` has no finite values to draw (every value is NaN or inf, e.g. a surface whose "
                         f"every point diverged), so no {suffix} was written to {str(path)!r}; check "
                         "`np.isfinite(surface.loss).any()` first, or save it as '.html'.")
    chrome = find_chrome()
    err = None
    if chrome is not None:
        try:
            _kaleido_write(fig, path, chrome, scale)
        except Exception as e:  # noqa: BLE001 - reported in the message below
            err = e
        else:
            if not path.is_file() or path.stat().st_size == 0:
                raise RuntimeError(f"kaleido reported success but wrote no file at {str(path)!r}.")
            return path
    message = _no_browser_message(chrome, err)
    if not fallback:
        raise RuntimeError(message.replace(" A matplotlib rendering of the same data was written instead.",
                                           " Pass fallback=True to write a matplotlib rendering."))
    plotly_to_matplotlib(fig).savefig(path, dpi=dpi)
    warnings.warn(message, StaticExportWarning, stacklevel=2)
    return path
