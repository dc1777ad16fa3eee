"""Views show as pictures in Jupyter, in a fresh kernel, with no ``%matplotlib`` magic.

A matplotlib view builds its figure without pyplot, so no backend displays it
and a cell ending in ``ax`` would print ``<Axes: ...>``. Each view's result
therefore carries its own display methods, on the objects handed back only
(nothing global is registered):

- a matplotlib Axes and its Figure get ``_repr_png_`` (the figure as PNG);
- a plotly Figure keeps plotly's own output and adds ``text/html`` (the page,
  plotly.js from its CDN) and ``image/png`` (the view's matplotlib drawing),
  so a saved notebook or a front end without plotly's renderer still shows it.
"""

from __future__ import annotations

import base64
import functools
import io

from ._common import mpl_form

__all__ = ["png_bytes", "displayable", "displays"]


def png_bytes(figure, dpi: int = 100) -> bytes:
    """A matplotlib Figure as PNG bytes."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _mark_mpl(figure) -> None:
    if not getattr(figure, "_fastscape_display", False):
        figure._repr_png_ = lambda: png_bytes(figure)
        figure._fastscape_display = True


def _mark_plotly(fig) -> None:
    if getattr(fig, "_fastscape_display", False):
        return
    own = fig._repr_mimebundle_

    def bundle(include=None, exclude=None, **kwargs):
        try:
            out = dict(own(include, exclude, **kwargs) or {})
        except Exception:  # plotly's renderer is not set up here: our fallbacks still show the view
            out = {}
        if "text/html" not in out:
            out["text/html"] = fig.to_html(full_html=False, include_plotlyjs="cdn")
        form = mpl_form(fig)
        if form is not None and "image/png" not in out:
            mfig, _update = form.make()
            out["image/png"] = base64.b64encode(png_bytes(mfig)).decode("ascii")
        out.setdefault("text/plain", f"<plotly Figure: {len(fig.data)} traces>")
        return out

    fig._repr_mimebundle_ = bundle
    fig._ipython_display_ = None  # plotly's own display hook would publish its mimetype alone
    fig._fastscape_display = True


def displayable(result):
    """``result`` of a view, with the display methods above attached; returned as is otherwise."""
    import numpy as np

    if hasattr(result, "to_plotly_json") and hasattr(result, "_repr_mimebundle_"):
        _mark_plotly(result)
    elif hasattr(result, "get_figure") and hasattr(result, "figure"):  # a matplotlib Axes
        _mark_mpl(result.figure)
        result._repr_png_ = lambda: png_bytes(result.figure)
    elif isinstance(result, np.ndarray) and result.dtype == object and result.size:
        first = result.flat[0]
        if hasattr(first, "figure"):
            _mark_mpl(first.figure)
    return result


def displays(view):
    """Decorator: the view's result shows as a picture in Jupyter (:func:`displayable`)."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        return displayable(view(*args, **kwargs))

    return wrapper
