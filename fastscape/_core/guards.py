"""What a run tells the user when the model or the data misbehave.

- :func:`values_agree`: whether two vectors of losses agree, diverging points
  (NaN, inf) included; the probes that compare two ways of computing the same
  values use it, so a diverging point is a value, never a crash.
- :class:`warn_once`: every distinct warning raised inside a block reaches the
  user once, however many points and batches raised it (PyTorch's broadcast
  warning for an MSE target shaped (N,) against an output (N, 1) would otherwise
  come once per chunk and batch).
- :class:`named_failure`: an error inside the model's forward names the layer
  it happened in and the input shape that reached it (a width mismatch
  between data and model is otherwise a bare matmul error).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings

import torch
from torch import nn

__all__ = ["values_agree", "warn_once", "named_failure"]


def values_agree(a: torch.Tensor, b: torch.Tensor, *, rtol: float = 1e-3, atol_scale: float = 1e-5,
                 atol: float = 1e-6) -> bool:
    """Whether ``a`` and ``b`` hold the same values up to rounding.

    Diverging points must diverge alike: NaN where the other is NaN, the same
    infinity where the other has it. The finite values agree within ``rtol``
    and an absolute tolerance of ``atol_scale`` times the largest finite
    magnitude (plus ``atol``), so a diverging point neither poisons the
    tolerance nor hides a disagreement elsewhere.
    """
    if a.shape != b.shape:
        return False
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if not torch.equal(fa, fb):
        return False
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    if not torch.equal(nan_a, nan_b) or not torch.equal(a[~fa & ~nan_a], b[~fb & ~nan_b]):
        return False
    if not bool(fa.any()):
        return True
    fin_a, fin_b = a[fa], b[fb]
    scale = float(torch.maximum(fin_a.abs().max(), fin_b.abs().max()))
    return bool(torch.allclose(fin_a, fin_b, rtol=rtol, atol=atol_scale * scale + atol))


class warn_once(contextlib.ContextDecorator):
    """Collect the warnings raised inside the block; on leaving it, re-issue each
    distinct one once, from where it was first raised (from the user's line that
    called fastscape when that place is inside fastscape). Warnings are the same when
    their category and text agree up to the numbers in it: PyTorch's broadcast
    warning names the batch's size (another for the last batch), and is attributed
    to whichever line called the loss (the probe's, or a strategy's).

    The user's filters still decide what is shown: the re-issued warning goes
    through them as if raised at its original place ("ignore" hides it,
    "error" raises it, after the block). Also a decorator: ``@warn_once()``
    (each call collects its own).
    """

    def _recreate_cm(self):
        return type(self)()  # a fresh collector per decorated call: calls may nest

    def __enter__(self):
        self._catcher = warnings.catch_warnings(record=True)
        self._record = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catcher.__exit__(*exc)
        seen = set()
        caller = None
        for w in self._record:
            key = (w.category, re.sub(r"[0-9]+", "#", str(w.message)))
            if key in seen:
                continue
            seen.add(key)
            filename, lineno = w.filename, w.lineno
            message = in_our_words(w.message)
            if _internal(filename):  # raised by fastscape, or by torch about a line of fastscape's
                caller = caller or _callers_line()
                filename, lineno = caller
            try:
                warnings.warn_explicit(message, w.category, filename, lineno, source=w.source)
            except Warning:
                if exc[0] is None:
                    raise
                # a warning the user's filters turn into an error must not hide the block's own error
        return False


_TARGET_SIZE = re.compile(r"Using a target size \(torch\.Size\(\[([0-9, ]*)\]\)\) that is different to the "
                          r"input size \(torch\.Size\(\[([0-9, ]*)\]\)\)")


def in_our_words(message):
    """PyTorch's broadcast warning of a regression loss, said in fastscape's words with the shapes
    (an output (N, 1) against targets (N,) broadcasts to (N, N)); any other warning as it is."""
    found = _TARGET_SIZE.match(str(message))
    if not found:
        return message
    target, output = (tuple(int(v) for v in g.split(",") if v.strip()) for g in found.groups())
    try:
        both = tuple(torch.broadcast_shapes(output, target))
    except RuntimeError:
        return message
    wrong = ("every output is compared with every target, so the values are wrong" if both not in (output, target)
             else "check that this is meant")
    return UserWarning(f"The loss compares the model's output of shape {output} with targets of shape {target}: "
                       f"the target size differs from the output's, so PyTorch broadcasts them to {both} and "
                       f"{wrong}. Give the targets the output's shape (e.g. `y.view{output}`).")


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _internal(filename: str) -> bool:
    """Whether a warning attributed to ``filename`` points inside fastscape (or at the frame
    of a decorator such as this one) rather than at the user's code."""
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE + os.sep) or path == os.path.abspath(contextlib.__file__)


def _callers_line() -> tuple[str, int]:
    """(file, line) of the innermost frame on the stack outside fastscape: the user's call."""
    frame = sys._getframe(1)
    while frame is not None and _internal(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return "<fastscape>", 0
    return frame.f_code.co_filename, frame.f_lineno


def _shape_text(args) -> str:
    shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
    if len(shapes) == 1:
        return str(shapes[0])
    return ", ".join(str(s) for s in shapes) or "no tensor"


class named_failure:
    """While the block runs ``model``'s forward, remember which submodule is
    running and with what input; an error raised inside it is re-raised (same
    type) with ``"`layer` (Module(...)) received input of shape (...)"`` and the
    data's own input shapes in front of PyTorch's first line.

    For probe forwards only: the hooks cost a Python call per module.
    """

    def __init__(self, model: nn.Module, args: tuple):
        self.model, self.args = model, args

    def __enter__(self):
        names = {id(m): name for name, m in self.model.named_modules()}
        self.stack: list[tuple[str, nn.Module, tuple]] = []

        def pre(mod, inp):
            self.stack.append((names.get(id(mod), "?"), mod, inp))

        def post(mod, inp, out):
            if self.stack:
                self.stack.pop()

        self.handles = []
        for m in self.model.modules():
            self.handles.append(m.register_forward_pre_hook(pre))
            self.handles.append(m.register_forward_hook(post))
        return self

    def __exit__(self, exc_type, err, tb):
        for h in self.handles:
            h.remove()
        if err is None or type(err) not in (RuntimeError, ValueError, IndexError, TypeError) or not self.stack:
            return False
        name, mod, inp = self.stack[-1]
        text = repr(mod)
        what = f"`{name}` ({text})" if name and "\n" not in text else (
            f"`{name}` ({type(mod).__name__})" if name else f"the model ({type(mod).__name__})")
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise type(err)(f"{what} received input of shape {_shape_text(inp)} (the data's inputs have shape "
                        f"{_shape_text(self.args)}) and failed: {first}") from err
