"""Parameter dictionaries: reading a model's state, checking direction dicts.

A *parameter dict* maps the names of ``model.named_parameters()`` (and, for
"states" coordinate systems, of floating-point buffers) to tensors of the same
shapes. Directions, origins and trajectory snapshots are all parameter dicts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch
from torch import nn

ParamDict = dict[str, torch.Tensor]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_model(model, name: str = "model") -> nn.Module:
    """``model`` if it is an ``nn.Module``, else a TypeError naming the argument."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`{name}` must be a torch.nn.Module; got {type(model).__name__}.")
    return model


def check_loss_fn(loss_fn, name: str = "loss_fn"):
    """``loss_fn`` if it is callable, else a TypeError naming the argument."""
    if not callable(loss_fn):
        raise TypeError(f"`{name}` must be callable (output, target) -> scalar; got {loss_fn!r}.")
    return loss_fn


def model_parameters(model: nn.Module) -> ParamDict:
    """The model's named parameters, detached (no copy, no grad)."""
    return {name: p.detach() for name, p in model.named_parameters()}


def model_buffers(model: nn.Module) -> ParamDict:
    """The model's named buffers, detached (no copy)."""
    return {name: b.detach() for name, b in model.named_buffers()}


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for an empty model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def as_param_dict(obj, *, name: str) -> ParamDict:
    """Accept a module or a mapping of tensors; return a detached parameter dict."""
    if isinstance(obj, nn.Module):
        return model_parameters(obj)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"`{name}[{key!r}]` must be a torch.Tensor; got {type(value).__name__}."
                )
            out[key] = value.detach()
        return out
    raise TypeError(
        f"`{name}` must be an nn.Module or a dict of tensors; got {type(obj).__name__}."
    )


def perturbable_names(model: nn.Module) -> dict[str, torch.Size]:
    """Names and shapes a coordinate system may move: parameters and floating buffers."""
    shapes = {name: p.shape for name, p in model.named_parameters()}
    for name, b in model.named_buffers():
        if b.is_floating_point():
            shapes[name] = b.shape
    return shapes


def check_directions(model: nn.Module, directions, *, name: str = "directions") -> list[ParamDict]:
    """Validate a list of direction dicts against ``model``.

    Every direction must hold each of the model's parameters, with the
    parameter's shape; it may also hold floating-point buffers (BatchNorm
    running statistics), which then move with the coordinates. All directions
    must have the same keys.

    Returns the directions as a list of detached dicts.
    """
    if isinstance(directions, torch.Tensor):  # loss_surface(model, X, y, ...): the targets where directions go
        raise TypeError(f"`{name}` must be a list of direction dicts (one per axis); got a Tensor. If it holds "
                        "your targets, pass the data as one pair: loss_surface(model, (inputs, targets), directions, "
                        "loss_fn=...).")
    if isinstance(directions, Mapping):
        raise TypeError(
            f"`{name}` must be a list of direction dicts (one per axis); got a single "
            f"{type(directions).__name__}. Wrap it in a list: [{name}]."
        )
    if not isinstance(directions, Sequence) or len(directions) == 0:
        raise ValueError(f"`{name}` must be a non-empty list of direction dicts; got {directions!r}.")
    params = {n: p.shape for n, p in model.named_parameters()}
    allowed = perturbable_names(model)
    out = []
    keys0 = None
    for i, d in enumerate(directions):
        d = as_param_dict(d, name=f"{name}[{i}]")
        missing = [k for k in params if k not in d]
        if missing:
            raise ValueError(
                f"`{name}[{i}]` has no entry for the model's parameter(s) {missing[:5]}; "
                "each direction must hold every parameter (zeros where it does not move)."
            )
        unknown = [k for k in d if k not in allowed]
        if unknown:
            raise ValueError(
                f"`{name}[{i}]` has key(s) {unknown[:5]} that are neither parameters nor "
                f"floating-point buffers of the model; expected keys like {list(params)[:5]}."
            )
        for k, t in d.items():
            if t.shape != allowed[k]:
                raise ValueError(
                    f"`{name}[{i}][{k!r}]` has shape {tuple(t.shape)}; the model's tensor has "
                    f"shape {tuple(allowed[k])}."
                )
            if not t.is_floating_point():
                raise TypeError(f"`{name}[{i}][{k!r}]` must be a floating-point tensor; got {t.dtype}.")
        if keys0 is None:
            keys0 = set(d)
        elif set(d) != keys0:
            raise ValueError(f"`{name}[{i}]` has different keys from `{name}[0]`.")
        out.append(d)
    return out


def check_origin(model: nn.Module, origin, keys) -> ParamDict:
    """The origin as a dict over ``keys``: model values where ``origin`` says nothing."""
    base = {**model_parameters(model), **model_buffers(model)}
    if origin is None:
        return {k: base[k] for k in keys}
    given = as_param_dict(origin, name="origin")
    if isinstance(origin, nn.Module):
        given.update({k: b for k, b in model_buffers(origin).items() if k in keys})
    out = {}
    for k in keys:
        t = given.get(k, base[k])
        if t.shape != base[k].shape:
            raise ValueError(
                f"`origin[{k!r}]` has shape {tuple(t.shape)}; the model's tensor has shape "
                f"{tuple(base[k].shape)}."
            )
        out[k] = t
    unknown = [k for k in given if k not in base]
    if unknown:
        raise ValueError(f"`origin` has key(s) {unknown[:5]} that the model does not have.")
    return out


def flatten(d: Mapping[str, torch.Tensor], keys=None, *, dtype: torch.dtype | None = None,
            device=None) -> torch.Tensor:
    """Concatenate ``d[k]`` for ``k`` in ``keys`` (default: all, in order) into one
    detached 1-D tensor, cast to ``dtype`` and moved to ``device`` when given.

    The one flattening of parameter dicts; :func:`unflatten` undoes it.
    """
    keys = list(d) if keys is None else keys
    return torch.cat([d[k].detach().reshape(-1).to(device=device, dtype=dtype) for k in keys])


def unflatten(vec: torch.Tensor, like: Mapping[str, torch.Tensor | torch.Size]) -> ParamDict:
    """Split a 1-D tensor into a dict of views shaped like ``like`` (same key order).

    ``like`` maps names to tensors or to shapes.
    """
    out, i = {}, 0
    for k, t in like.items():
        shape = t.shape if isinstance(t, torch.Tensor) else torch.Size(t)
        n = shape.numel()
        out[k] = vec[i : i + n].view(shape)
        i += n
    if i != vec.numel():
        raise ValueError(f"vector has {vec.numel()} elements; expected {i}.")
    return out


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """A SHA-1 over names, shapes, dtypes and bytes of a tensor dict (order-independent)."""
    h = hashlib.sha1()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy())  # the buffer itself: no copy of the bytes
    return h.hexdigest()


class model_state_guard:
    """Put a model in eval mode for a block, restore every submodule's flag after.

    The weights are never written; only ``training`` flags change, and each
    submodule's own flag is put back (a model may mix train and eval children).
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        # nn.TransformerEncoderLayer's fused inference kernel has no vmap batching
        # rule; the composite path computes the same thing and vectorises.
        self.fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        return self.model

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag
        torch.backends.mha.set_fastpath_enabled(self.fastpath)
        return False


def resolve_device(device, model: nn.Module) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"`device` must name a torch device such as 'cpu' or 'cuda'; got {device!r}.") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"`device` {str(device)!r} asks for CUDA, but CUDA is not available here ({why}); "
                             "use device='cpu', or leave `device` unset to take CUDA when there is one.")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"`device` {str(device)!r} names CUDA device {dev.index}, but only {count} "
                             f"CUDA device(s) are visible (cuda:0 to cuda:{count - 1}).")
    return dev


def resolve_dtype(dtype, *, bfloat16: bool = False) -> torch.dtype:
    """``dtype`` ("float32", "float64" or the torch dtype) as a torch dtype; with
    ``bfloat16=True`` (evaluating surfaces) also "bfloat16"."""
    valid = {**_DTYPES, "bfloat16": torch.bfloat16} if bfloat16 else _DTYPES
    if isinstance(dtype, str):
        if dtype not in valid:
            raise ValueError(f"`dtype` must be one of {list(valid)}; got {dtype!r}.")
        return valid[dtype]
    if dtype not in valid.values():
        names = " or ".join(f"torch.{n}" for n in valid)
        raise ValueError(f"`dtype` must be {names}; got {dtype!r}.")
    return dtype


def is_int(value) -> bool:
    """An integer that is not a bool (numpy integers count)."""
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value, name: str, *, allow: tuple = ()) -> int:
    """``value`` as an int if it is a positive integer (or one of ``allow``), else ``ValueError``.

    The one validator for counts, sizes and periods: the message names the
    argument and what came, e.g. "`n` must be a positive integer; got 0."
    """
    if value in allow and not is_int(value):
        return value
    if not is_int(value) or value < 1:
        alts = "".join(f" or {a!r}" for a in allow)
        raise ValueError(f"`{name}` must be a positive integer{alts}; got {value!r}.")
    return int(value)


def positive_number(value, name: str) -> float:
    """``value`` as a float if it is a finite positive real number, else ``ValueError``."""
    import math
    import numbers

    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number; got {value!r}.")
    return float(value)
