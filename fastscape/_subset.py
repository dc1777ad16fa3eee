"""Parameter subsets: which entries of a model a direction (or a Hessian) may move.

Every function that draws directions or computes curvature takes ``params=``: a
name or glob pattern, or a list of them, matched against the keys of
``model.named_parameters()`` (and of the floating buffers for "states"
directions). A pattern matches a name when :func:`fnmatch.fnmatchcase` does, or
when it names a module above it (``"layer4"`` matches ``"layer4.0.conv1.weight"``).
Left as ``None``, the subset is every parameter that requires grad: the frozen
base of a LoRA model or of a linear probe stays at the origin (zero direction
entries), which is where it stays in training too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

import torch
from torch import nn

__all__ = ["chosen_names", "restrict", "describe"]


def _patterns(params) -> list[str]:
    if isinstance(params, str):
        return [params]
    if isinstance(params, Iterable) and not isinstance(params, (bytes, Mapping)):
        items = list(params)
        if items and all(isinstance(p, str) for p in items):
            return items
    raise TypeError("`params` must be a parameter name or glob pattern, or a list of them (e.g. "
                    f"'fc', 'layer4.*' or ['fc.weight', 'fc.bias']); got {params!r}.")


def chosen_names(names: Iterable[str], params, *, model: nn.Module | None = None) -> set[str]:
    """The names of ``names`` in the subset ``params``.

    Parameters
    ----------
    names : iterable of str
        The keys a direction has (parameters, and buffers for "states").
    params : str, list of str or None
        Names or glob patterns (see the module docstring). None: every name except
        the parameters of ``model`` that do not require grad.
    model : nn.Module, optional
        Where ``requires_grad`` is read for ``params=None``.

    Returns
    -------
    set of str
        Raises ``ValueError`` naming a pattern that matches nothing.
    """
    names = list(names)
    if params is None:
        frozen = set() if model is None else {k for k, p in model.named_parameters() if not p.requires_grad}
        return {k for k in names if k not in frozen}
    chosen: set[str] = set()
    for p in _patterns(params):
        hit = {k for k in names if fnmatchcase(k, p) or k.startswith(p + ".")}
        if not hit:
            raise ValueError(f"`params` entry {p!r} matches no parameter of the model; its names look like "
                             f"{names[:4]} (a name, a module prefix such as 'fc', or a glob such as '*.weight').")
        chosen |= hit
    return chosen


def restrict(direction: Mapping[str, torch.Tensor], keep: set[str]) -> dict[str, torch.Tensor]:
    """``direction`` with every entry outside ``keep`` zero (a new dict; shapes kept)."""
    return {k: (v if k in keep else torch.zeros_like(v)) for k, v in direction.items()}


def describe(params) -> str | list[str]:
    """What ``Directions.info["params"]`` records: the patterns given, or "requires_grad"."""
    return "requires_grad" if params is None else _patterns(params)
