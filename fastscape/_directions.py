"""Directions in weight space: the coordinate systems a loss surface is drawn in.

A direction is a dict keyed like ``model.named_parameters()`` with tensors of the parameters' shapes, on the
model's device. A "states" direction also holds the model's floating-point buffers (BatchNorm running mean and
variance), which then move with the coordinates. A :class:`Directions` list carries an ``info`` dict saying how
it was made; surfaces copy it into their metadata.

- :func:`random_directions`: Gaussian directions, normalised filter by filter (Li et al.,
  "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018); ``params=`` names the subset.
- :func:`orthogonalize`: Gram-Schmidt of a set of directions.
- :func:`axis_directions`, :func:`axis_origin`: the raw weights themselves as coordinates.
- :func:`interpolation_directions`: the line through two models (Goodfellow, Vinyals and Saxe, "Qualitatively
  characterizing neural network optimization problems", ICLR 2015) or the affine plane through three.
- :func:`interpolation_plane`: the orthonormal plane through three models with their positions
  in it (Garipov et al., "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs", NeurIPS 2018).
- Top Hessian eigenvectors (:func:`fastscape.curvature.hessian_eigenpairs`) are directions too.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from ._core.params import ParamDict, check_model, flatten, is_int, model_device, model_parameters, positive_int
from ._subset import chosen_names, describe, restrict

__all__ = ["Directions", "random_directions", "orthogonalize", "axis_directions", "axis_origin",
           "interpolation_directions", "interpolation_plane", "NORMS", "IGNORES", "normalize"]


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``den > 0``, else 0: a zero direction stays zero."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.zeros_like(num))


def _filter_norm(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # each output filter / row d[i] rescaled to ||w[i]||; a zero filter of the
    # weights gives a zero filter of the direction, never a division by zero
    dims = tuple(range(1, d.dim()))
    norm = torch.linalg.vector_norm
    return d * _safe_ratio(norm(w, dim=dims, keepdim=True), norm(d, dim=dims, keepdim=True))


def _layer_norm(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return d * _safe_ratio(w.norm(), d.norm())


#: per-tensor normalisations; "model" and None act on the whole direction.
NORMS: dict[str | None, Callable | None] = {"filter": _filter_norm, "layer": _layer_norm, "model": None, None: None}

#: how 1-D tensors (biases, BatchNorm affine terms and statistics) are treated:
#: "biasbn" gives them zero directions, None the tensors themselves.
IGNORES = ("biasbn", None)


class Directions(list):
    """A list of direction dicts that also carries how it was made (``info``:
    kind, norm, ignore, seed, ...), which surfaces copy into their metadata."""

    def __init__(self, items=(), **info):
        super().__init__(items)
        self.info = info

    def __getitem__(self, index):
        if isinstance(index, slice):  # a sub-list keeps its provenance
            return Directions(super().__getitem__(index), **self.info)
        return super().__getitem__(index)


def _check_choice(value, valid, name):
    if value not in valid:
        raise ValueError(f"`{name}` must be one of {list(valid)}; got {value!r}.")


def normalize(direction: ParamDict, weights: ParamDict, *, norm: str | None = "filter",
              ignore: str | None = "biasbn") -> ParamDict:
    """Normalise a direction against ``weights`` (a new dict; inputs untouched).

    Parameters
    ----------
    direction : dict name -> Tensor
        Any direction: random, a Hessian eigenvector, a difference of models.
        May hold floating buffers ("states") as well as parameters.
    weights : dict name -> Tensor
        The tensors the direction is measured against, with every key of
        ``direction`` (e.g. ``dict(model.named_parameters())``).
    norm : {"filter", "layer", "model", None}
        - "filter": each filter (slice along dim 0) of a tensor of >= 2
          dimensions gets the norm of the matching filter of the weights
          (Li et al. 2018); a zero filter of the weights gives a zero filter;
        - "layer": each tensor gets the norm of the weight tensor;
        - "model": the whole direction is scaled once, to the norm of the
          weights over the entries the direction moves (shape kept);
        - None: unchanged.
    ignore : {"biasbn", None}
        1-D tensors (biases, BatchNorm weights, shifts and running statistics)
        get a zero direction with "biasbn". Otherwise, as in the paper's code,
        they get the weights themselves under "filter" and "layer" (a step of
        ``c`` scales them by ``1 + c``), and are left as they are under
        "model" and None.

    Returns
    -------
    dict name -> Tensor, shaped like ``direction``.
    """
    _check_choice(norm, NORMS, "norm")
    _check_choice(ignore, IGNORES, "ignore")
    missing = [k for k in direction if k not in weights]
    if missing:
        raise ValueError(f"`weights` has no entry for the direction's key(s) {missing[:5]}.")
    out = {}
    for k, d in direction.items():
        w = weights[k].detach().to(d)
        if w.shape != d.shape:
            raise ValueError(f"`weights[{k!r}]` has shape {tuple(w.shape)}; the direction has shape "
                             f"{tuple(d.shape)}.")
        if d.dim() <= 1 and ignore == "biasbn":
            out[k] = torch.zeros_like(d)
        elif d.dim() <= 1 and norm in ("filter", "layer"):
            out[k] = w.clone()
        elif norm in ("filter", "layer"):
            out[k] = NORMS[norm](d, w)
        else:
            out[k] = d.clone()
    if norm == "model":
        keys = [k for k in out if bool(out[k].any())]
        dn = float(np.sqrt(sum(float((out[k].double() ** 2).sum()) for k in keys)))
        wn = float(np.sqrt(sum(float((weights[k].detach().double() ** 2).sum()) for k in keys)))
        scale = wn / dn if dn > 0 else 0.0
        out = {k: v * scale for k, v in out.items()}
    return out


def make_generator(seed, generator) -> torch.Generator:
    """``generator`` itself when given, else a new CPU generator seeded with ``seed`` (or with fresh
    entropy when ``seed`` is None). The one seed policy of directions and estimators."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator; got {type(generator).__name__}.")
        return generator
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        if not is_int(seed):
            raise TypeError(f"`seed` must be an int or None; got {seed!r}.")
        g.manual_seed(int(seed))
    return g


def _perturbable(model: nn.Module, states: bool) -> ParamDict:
    """Parameters, and with ``states`` the floating buffers, detached, in module order."""
    out = model_parameters(model)
    if states:
        out.update({k: b.detach() for k, b in model.named_buffers() if b.is_floating_point()})
    return out


def random_directions(model: nn.Module, n: int = 2, *, norm: str | None = "filter",
                      ignore: str | None = "biasbn", seed: int | None = None,
                      generator: torch.Generator | None = None, states: bool = False,
                      params: str | list[str] | None = None) -> Directions:
    """``n`` Gaussian directions, normalised against the model's weights.

    Parameters
    ----------
    model : nn.Module
        Directions are keyed like ``model.named_parameters()`` and put on the
        model's device, in each parameter's dtype.
    n : int
        Number of directions (1, 2 or 3 for a line, a plane or a volume).
    norm : {"filter", "layer", "model", None}
        Normalisation (see :func:`normalize`). "filter" is the default: ReLU
        networks are invariant to rescaling a filter, so only directions scaled
        filter by filter make landscapes of different networks comparable
        (Li et al., "Visualizing the Loss Landscape of Neural Nets", 2018).
    ignore : {"biasbn", None}
        "biasbn" zeroes the directions of 1-D tensors (biases, BatchNorm);
        None gives them the tensors themselves (see :func:`normalize`).
    seed : int, optional
        Entries are drawn on the CPU from a generator seeded with ``seed``
        and then moved to the model's device, so a seed gives the same
        directions on every device. None draws a fresh seed.
    generator : torch.Generator, optional
        Drawn from instead of a seeded one (on its own device); wins over ``seed``.
    states : bool
        Also give directions to the model's floating-point buffers, keyed by
        buffer name (the paper's "states" directions: BatchNorm running mean
        and variance move with the coordinates). As in the paper's code these
        are 1-D, so ``ignore="biasbn"`` leaves them still; with ``ignore=None``
        each statistic's direction is the statistic itself.
    params : str, list of str or None
        The subset that moves: names or glob patterns (``"fc"``, ``"layer4.*"``, ``"*lora_*"``;
        a module name matches everything under it). Default: every parameter that requires
        grad; frozen ones get zero entries. A subset direction is the full one with zeros.

    Returns
    -------
    Directions
        ``n`` dicts name -> Tensor; every entry is zero-mean Gaussian before
        normalisation (each is i.i.d. N(0, 1)). ``.info`` records kind, norm,
        ignore, states and the seed that draws them again (the fresh one drawn
        when ``seed=None``; None when a ``generator`` was given).
    """
    check_model(model)
    positive_int(n, "n")
    _check_choice(norm, NORMS, "norm")
    _check_choice(ignore, IGNORES, "ignore")
    if not isinstance(states, bool):
        raise TypeError(f"`states` must be True or False; got {states!r}.")
    weights = _perturbable(model, states)
    keep = chosen_names(weights, params, model=model)
    device = model_device(model)
    g = make_generator(seed, generator)
    out = []
    for _ in range(n):
        raw = {k: torch.randn(w.shape, generator=g, device=g.device, dtype=torch.float32)
               .to(device=w.device, dtype=w.dtype) for k, w in weights.items()}
        # zeroed outside the subset before normalising ("model" norm) and after (ignore=None)
        out.append(restrict(normalize(restrict(raw, keep), weights, norm=norm, ignore=ignore), keep))
    # the seed that draws these directions again (a fresh one when seed=None); None with a generator
    used = None if generator is not None else g.initial_seed()
    return Directions(out, kind="random", norm=norm, ignore=ignore, seed=used, states=states,
                      device=str(device), params=describe(params))


def orthogonalize(directions) -> Directions:
    """Gram-Schmidt on a list of directions, each keeping its length.

    The inner product is the plain Euclidean one over every entry of the dicts
    (all parameters, and buffers if present), the same as the cosines that
    :func:`fastscape.loss_surface` records in ``Surface.meta["cosines"]``: after
    this those are 0 off the diagonal, and the right angle of a contour plot
    is a right angle in weight space. Direction 0 is kept as it is; direction
    ``i`` loses its components along directions ``0..i-1`` and is rescaled to
    its own original norm, so already-normalised directions keep their scale
    (filter by filter it holds only approximately afterwards; independent
    random directions of a large model are nearly orthogonal to begin with).
    Computed in float64, returned in each tensor's dtype and device.

    Parameters
    ----------
    directions : list of dicts name -> Tensor, all with the same keys

    Returns
    -------
    Directions
        The same number of directions; ``.info`` is the input's (if any) with
        ``orthogonalized=True``.
    """
    if isinstance(directions, Mapping) or not isinstance(directions, (list, tuple)) or not directions:
        raise TypeError("`directions` must be a non-empty list of direction dicts; got "
                        f"{type(directions).__name__}.")
    keys = list(directions[0])
    for i, d in enumerate(directions):
        if set(d) != set(keys):
            raise ValueError(f"`directions[{i}]` has different keys from `directions[0]`.")
    flat = [flatten(d, keys, dtype=torch.float64, device="cpu") for d in directions]
    basis: list[torch.Tensor] = []
    out = []
    for i, v in enumerate(flat):
        length = v.norm()
        u = v.clone()
        for _ in range(2):  # twice is enough (Kahan-Parlett) for float64 round-off
            for b in basis:
                u -= (u @ b) * b
        if length == 0 or u.norm() <= 1e-10 * length:
            raise ValueError(f"`directions[{i}]` is zero or lies in the span of the directions "
                             "before it; it cannot be orthogonalised.")
        u = u / u.norm()
        basis.append(u)
        scaled = u * length
        out.append({k: t.view(directions[i][k].shape).to(directions[i][k])
                    for k, t in zip(keys, torch.split(scaled, [directions[i][k].numel() for k in keys]))})
    info = dict(getattr(directions, "info", {}))
    info["orthogonalized"] = True
    return Directions(out, **info)


_ENTRY = re.compile(r"^(?P<name>[^\[\]]+)(\[(?P<idx>[0-9,\s]+)\])?$")


def locate_entry(weights: ParamDict, entry: str):
    if not isinstance(entry, str):
        raise TypeError(f"`names` entries must be strings such as 'fc.weight[0, 3]'; got {entry!r}.")
    m = _ENTRY.match(entry.strip())
    if not m or m.group("name").strip() not in weights:
        raise ValueError(
            f"`names` entry {entry!r} is not a parameter of the model; expected one of "
            f"{list(weights)[:8]} (optionally indexed, e.g. 'fc.weight[0, 3]')."
        )
    name = m.group("name").strip()
    w = weights[name]
    if m.group("idx") is None:
        if w.numel() != 1:
            raise ValueError(
                f"`names` entry {entry!r} has {w.numel()} elements; name one element, e.g. "
                f"'{name}[{', '.join('0' for _ in w.shape)}]'."
            )
        return name, (0,) * w.dim()
    idx = tuple(int(i) for i in m.group("idx").split(","))
    if len(idx) != w.dim() or any(not 0 <= i < s for i, s in zip(idx, w.shape)):
        raise ValueError(f"`names` entry {entry!r} is out of range for shape {tuple(w.shape)}.")
    return name, idx


def _entries(weights, names):
    if isinstance(names, str):
        names = [names]
    located = [locate_entry(weights, e) for e in names]
    if not located:
        raise ValueError("`names` must list at least one parameter entry.")
    seen = {}
    for entry, loc in zip(names, located):
        if loc in seen:
            raise ValueError(f"`names` entries {seen[loc]!r} and {entry!r} name the same element.")
        seen[loc] = entry
    return list(names), located


def axis_directions(model: nn.Module, names) -> Directions:
    """Unit directions along named raw parameter entries.

    ``names`` lists entries such as ``"net.0.weight"`` (a one-element tensor)
    or ``"fc.weight[2, 0]"`` (one element of a larger tensor). Direction ``i``
    is 1 at entry ``i`` and 0 everywhere else, so grid coordinates are raw
    weight offsets from the origin (or the raw weights themselves, with
    ``origin=axis_origin(model, names)``). Every other weight stays at the
    origin's value.

    Returns
    -------
    Directions
        One dict per entry; ``.info`` holds ``kind="axis"`` and the names.
    """
    weights = model_parameters(check_model(model))
    names, located = _entries(weights, names)
    out = []
    for name, idx in located:
        d = {k: torch.zeros_like(w) for k, w in weights.items()}
        d[name][idx] = 1.0
        out.append(d)
    return Directions(out, kind="axis", names=names)


def axis_origin(model: nn.Module, names, *, at: str = "zero") -> ParamDict:
    """The origin for :func:`axis_directions`: the model's parameters (copied)
    with the named entries set to zero (``at="zero"``), so that grid
    coordinates are the raw weights; ``at="current"`` keeps their current
    values, so coordinates are offsets from the trained weights.
    """
    _check_choice(at, ("zero", "current"), "at")
    weights = {k: w.clone() for k, w in model_parameters(check_model(model)).items()}
    _, located = _entries(weights, names)
    if at == "zero":
        for name, idx in located:
            weights[name][idx] = 0.0
    return weights


# --------------------------------------------------------------------------- interpolation


def _model_state(obj, like: ParamDict, name: str) -> ParamDict:
    """``obj`` (module or state/parameter dict) as a dict over the keys of ``like``."""
    if isinstance(obj, nn.Module):
        given = {k: p.detach() for k, p in obj.named_parameters()}
        given.update({k: b.detach() for k, b in obj.named_buffers()})
    elif isinstance(obj, Mapping):
        given = dict(obj)
    else:
        raise TypeError(f"`{name}` must be an nn.Module or a state dict; got {type(obj).__name__}.")
    missing = [k for k in like if k not in given]
    if missing:
        raise ValueError(f"`{name}` has no entry for {missing[:5]}; it must have the architecture of "
                         "`model_a` (pass states=False if it holds parameters only).")
    out = {}
    for k, ref in like.items():
        t = given[k]
        if not isinstance(t, torch.Tensor) or t.shape != ref.shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"`{name}[{k!r}]` has shape {got}; `model_a` has shape {tuple(ref.shape)}.")
        out[k] = t.detach().to(device=ref.device, dtype=ref.dtype)
    return out


def _differences(model_a, others, states, params=None):
    if not isinstance(states, bool):
        raise TypeError(f"`states` must be True or False; got {states!r}.")
    # the architecture: model_a, or (a state dict: interpolation_directions(init_state, model)) the first module given
    template = next((m for m in [model_a, *(o for _, o in others)] if isinstance(m, nn.Module)), None)
    if template is None or not isinstance(model_a, (nn.Module, Mapping)):
        raise TypeError(f"`model_a` must be an nn.Module, or a state dict with another model given as an nn.Module "
                        f"(its architecture); got {type(model_a).__name__}{'' if template else ' and no nn.Module'}.")
    a = _perturbable(template, states)
    a = a if template is model_a else _model_state(model_a, a, "model_a")
    keep = chosen_names(a, params, model=template)
    diffs = []
    for name, other in others:
        b = _model_state(other, a, name)
        diffs.append(restrict({k: b[k] - a[k] for k in a}, keep))
    return diffs, template


def interpolation_directions(model_a: nn.Module | ParamDict, model_b, model_c=None, *,
                             states: bool = True, params: str | list[str] | None = None) -> Directions:
    """The line through two models, or the affine plane through three.

    Returns ``[θb − θa]`` or ``[θb − θa, θc − θa]``, to be used with
    ``origin=model_a`` in :func:`fastscape.loss_surface`: coordinate 0 is
    ``model_a``, 1 is ``model_b`` (and (0, 1) is ``model_c``); coordinates
    outside [0, 1] extrapolate. The line is the linear interpolation of
    Goodfellow, Vinyals and Saxe (ICLR 2015).

    Parameters
    ----------
    model_a : nn.Module or state dict
        The origin; its (or ``model_b``'s, for a state dict) parameter names, shapes, device and dtype are used.
    model_b, model_c : nn.Module or state dict
        Models of the same architecture (``model.state_dict()`` works too).
    states : bool
        True (default): floating buffers such as BatchNorm running mean and
        variance are interpolated along with the weights (the paper's "states"),
        so each model's own loss is reproduced at its coordinates. Interpolated
        variances stay positive between the models; far extrapolation may make
        one negative, which shows as a diverging (NaN) region. False: only the
        parameters move and every point uses ``model_a``'s buffers.
    params : str, list of str or None
        The subset that moves (see :func:`random_directions`); default: what requires grad.

    Returns
    -------
    Directions
        One or two dicts; ``.info`` holds ``kind="interpolation"``, ``states``, ``params``.
    """
    others = [("model_b", model_b)] + ([("model_c", model_c)] if model_c is not None else [])
    diffs, _ = _differences(model_a, others, states, params)
    for (name, _), d in zip(others, diffs):
        if not any(bool(t.any()) for t in d.values()):
            warnings.warn(f"`{name}` equals `model_a`: the direction from one to the other is zero, so every "
                          "point of a surface along it is `model_a` itself.", UserWarning, stacklevel=2)
    return Directions(diffs, kind="interpolation", states=states, params=describe(params))


def interpolation_plane(model_a: nn.Module | ParamDict, model_b, model_c, *,
                        states: bool = True) -> tuple[Directions, np.ndarray]:
    """The plane through three models, in orthonormal coordinates, with the
    models' positions in it (Garipov et al. 2018, Fig. 1 and sec. 4).

    With ``u = θb − θa`` and ``v = θc − θa``, the directions are
    ``e1 = u / |u|`` and ``e2 = (v − (v·e1) e1) / |v − (v·e1) e1|``, the inner
    product and norms taken over the parameters (Euclidean, as in the
    surfaces' cosines). Plane coordinates are then Euclidean distances in
    parameter space, so the picture is not sheared. With ``states=True``, the
    buffers (BatchNorm statistics) follow the same combinations of
    ``θb − θa`` and ``θc − θa``, so each model's buffers are reproduced at its
    position exactly too.

    Use with ``origin=model_a``; pass ``positions`` as ``points=`` of
    :func:`fastscape.plot.contour` to mark the models, and choose a grid
    that covers them.

    Returns
    -------
    directions : Directions
        Two dicts; ``.info`` holds ``kind="interpolation_plane"``, ``states``
        and the positions.
    positions : ndarray of shape (3, 2)
        Plane coordinates of ``model_a`` (0, 0), ``model_b`` (|u|, 0) and
        ``model_c`` (v·e1, |v − (v·e1) e1|).
    """
    if model_c is None:
        raise TypeError("`model_c` is required: a plane needs three models.")
    (u, v), template = _differences(model_a, [("model_b", model_b), ("model_c", model_c)], states)
    pkeys = [k for k, _ in template.named_parameters()]
    fu, fv = (flatten(t, pkeys, dtype=torch.float64, device="cpu") for t in (u, v))
    nu = float(fu.norm())
    if nu == 0.0:
        raise ValueError("`model_b` has the same parameters as `model_a`; a plane needs three "
                         "distinct models.")
    proj = float(fv @ fu) / nu
    perp = float((fv - proj * fu / nu).norm())
    eps = torch.finfo(next(iter(u.values())).dtype).eps
    if perp <= 64 * eps * max(nu, float(fv.norm())):  # collinear up to the dtype's round-off
        raise ValueError("`model_c` lies on the line through `model_a` and `model_b`; the three "
                         "models span no plane.")
    # e1 = u/nu, e2 = (v - proj e1)/perp as combinations of u and v (buffers too)
    e1 = {k: u[k] / nu for k in u}
    e2 = {k: (v[k] - (proj / nu) * u[k]) / perp for k in u}
    positions = np.array([[0.0, 0.0], [nu, 0.0], [proj, perp]])
    return (Directions([e1, e2], kind="interpolation_plane", states=states,
                       positions=positions.tolist()), positions)
