"""Directions in weight space: random (filter-normalised, Li et al. 2018) and raw axes.

A direction is a dict keyed like ``model.named_parameters()`` with tensors of
the parameters' shapes, on the model's device.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from ._params import ParamDict, model_device, model_parameters

__all__ = ["Directions", "random_directions", "axis_directions", "axis_origin", "NORMS", "IGNORES", "normalize"]

_EPS = 1e-10


def _filter_norm(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # each output filter / row d[i] rescaled to ||w[i]|| (Li et al. 2018, eq. in sec. 4)
    dims = tuple(range(1, d.dim()))
    dn = d.norm(dim=dims, keepdim=True)
    wn = w.norm(dim=dims, keepdim=True)
    return d * (wn / (dn + _EPS))


def _layer_norm(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return d * (w.norm() / (d.norm() + _EPS))


#: per-tensor normalisations; "model" and None act on the whole direction.
NORMS: dict[str | None, Callable | None] = {
    "filter": _filter_norm,
    "layer": _layer_norm,
    "model": None,
    None: None,
}

#: which parameters a direction leaves at zero.
IGNORES = ("biasbn", None)


class Directions(list):
    """A list of direction dicts that also carries how it was made (``info``:
    kind, norm, ignore, seed, ...), which surfaces copy into their metadata."""

    def __init__(self, items=(), **info):
        super().__init__(items)
        self.info = info


def _check_choice(value, valid, name):
    if value not in valid:
        raise ValueError(f"`{name}` must be one of {list(valid)}; got {value!r}.")


def normalize(direction: ParamDict, weights: ParamDict, *, norm="filter", ignore="biasbn") -> ParamDict:
    """Normalise a direction against ``weights`` (a new dict; inputs untouched).

    - ``norm="filter"``: each filter (slice along dim 0) of a >= 2-D tensor gets the
      norm of the matching filter of the weights (Li et al. 2018);
    - ``norm="layer"``: each tensor gets the norm of the weight tensor;
    - ``norm="model"``: the whole direction gets the norm of the whole weight vector;
    - ``norm=None``: unchanged.

    1-D tensors (biases, BatchNorm affine terms) are zeroed with
    ``ignore="biasbn"``; otherwise, for "filter" and "layer", they are set to the
    weights themselves, as in the paper's code.
    """
    _check_choice(norm, NORMS, "norm")
    _check_choice(ignore, IGNORES, "ignore")
    out = {}
    for k, d in direction.items():
        w = weights[k].to(d)
        if d.dim() <= 1 and ignore == "biasbn":
            out[k] = torch.zeros_like(d)
        elif d.dim() <= 1 and norm in ("filter", "layer"):
            out[k] = w.clone()
        elif norm in ("filter", "layer"):
            out[k] = NORMS[norm](d, w)
        else:
            out[k] = d.clone()
    if norm == "model":
        keys = [k for k in out if out[k].any()]
        dn = torch.sqrt(sum((out[k].double() ** 2).sum() for k in keys)) if keys else 0.0
        wn = torch.sqrt(sum((weights[k].double() ** 2).sum() for k in keys)) if keys else 0.0
        scale = float(wn / (dn + _EPS)) if keys else 0.0
        out = {k: v * scale for k, v in out.items()}
    return out


def _generator(seed, generator, device):
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator; got {type(generator).__name__}.")
        return generator
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"`seed` must be an int or None; got {seed!r}.")
        g.manual_seed(seed)
    return g


def random_directions(model: nn.Module, n: int = 2, *, norm: str | None = "filter",
                      ignore: str | None = "biasbn", seed: int | None = None,
                      generator: torch.Generator | None = None) -> list[ParamDict]:
    """``n`` Gaussian directions, normalised against the model's weights.

    Parameters
    ----------
    model : nn.Module
        Directions are keyed like ``model.named_parameters()`` and created on
        the model's device, in each parameter's dtype.
    n : int
        Number of directions (1, 2 or 3 for a line, a plane or a volume).
    norm : {"filter", "layer", "model", None}
        Normalisation (see :func:`normalize`). "filter" is the default: ReLU
        networks are invariant to rescaling a filter, so only directions scaled
        filter by filter make landscapes of different networks comparable
        (Li et al., "Visualizing the Loss Landscape of Neural Nets", 2018).
    ignore : {"biasbn", None}
        "biasbn" zeroes the directions of 1-D parameters (biases, BatchNorm).
    seed, generator : reproducibility; ``generator`` wins when both are given.

    Returns
    -------
    list of ``n`` dicts name -> Tensor
        Zero-mean Gaussian before normalisation.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"`n` must be a positive integer; got {n!r}.")
    _check_choice(norm, NORMS, "norm")
    _check_choice(ignore, IGNORES, "ignore")
    weights = model_parameters(model)
    device = model_device(model)
    g = _generator(seed, generator, device)
    out = []
    for _ in range(n):
        raw = {k: torch.randn(w.shape, generator=g, device=w.device, dtype=w.dtype)
               for k, w in weights.items()}
        out.append(normalize(raw, weights, norm=norm, ignore=ignore))
    return Directions(out, kind="random", norm=norm, ignore=ignore, seed=seed)


_ENTRY = re.compile(r"^(?P<name>[^\[\]]+)(\[(?P<idx>[0-9,\s]+)\])?$")


def _locate(weights: ParamDict, entry: str):
    m = _ENTRY.match(entry.strip())
    if not m or m.group("name") not in weights:
        raise ValueError(
            f"`names` entry {entry!r} is not a parameter of the model; expected one of "
            f"{list(weights)[:8]} (optionally indexed, e.g. 'fc.weight[0, 3]')."
        )
    name = m.group("name")
    w = weights[name]
    if m.group("idx") is None:
        if w.numel() != 1:
            raise ValueError(
                f"`names` entry {entry!r} has {w.numel()} elements; name one element, e.g. "
                f"'{name}[{', '.join('0' * 1 for _ in w.shape)}]'."
            )
        return name, (0,) * w.dim()
    idx = tuple(int(i) for i in m.group("idx").split(","))
    if len(idx) != w.dim() or any(not 0 <= i < s for i, s in zip(idx, w.shape)):
        raise ValueError(f"`names` entry {entry!r} is out of range for shape {tuple(w.shape)}.")
    return name, idx


def axis_directions(model: nn.Module, names) -> list[ParamDict]:
    """Unit directions along named raw parameter entries.

    ``names`` lists entries such as ``"net.0.weight"`` (a one-element tensor)
    or ``"fc.weight[2, 0]"`` (one element of a larger tensor). Direction ``i``
    is 1 at entry ``i`` and 0 everywhere else, so grid coordinates are raw
    weight offsets (or raw weights, with :func:`axis_origin`).
    """
    if isinstance(names, str):
        names = [names]
    weights = model_parameters(model)
    out = []
    for entry in names:
        name, idx = _locate(weights, entry)
        d = {k: torch.zeros_like(w) for k, w in weights.items()}
        d[name][idx] = 1.0
        out.append(d)
    return Directions(out, kind="axis", names=list(names))


def axis_origin(model: nn.Module, names, *, at: str = "zero") -> ParamDict:
    """The model's parameters with the named entries set to zero (``at="zero"``),
    so that grid coordinates along :func:`axis_directions` are the raw weights;
    ``at="current"`` keeps the current values.
    """
    _check_choice(at, ("zero", "current"), "at")
    if isinstance(names, str):
        names = [names]
    weights = {k: w.clone() for k, w in model_parameters(model).items()}
    if at == "zero":
        for entry in names:
            name, idx = _locate(weights, entry)
            weights[name][idx] = 0.0
    return weights
