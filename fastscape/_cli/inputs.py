"""What the command line is given, checked: options parsed and validated, the model, data,
checkpoints and directions loaded. Every problem is a :class:`CLIError` naming the option."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
from pathlib import Path

#: loss names accepted by ``--loss`` (anything else must be an import path).
LOSSES = {
    "cross_entropy": "torch.nn.functional:cross_entropy",
    "mse": "torch.nn.functional:mse_loss",
    "l1": "torch.nn.functional:l1_loss",
    "nll": "torch.nn.functional:nll_loss",
    "bce_with_logits": "torch.nn.functional:binary_cross_entropy_with_logits",
}
#: metric names accepted by ``--metric``.
METRICS = {"accuracy": "fastscape:accuracy"}
#: ``--norm`` and ``--ignore`` choices -> the values of ``fastscape.random_directions``.
NORMS = {"filter": "filter", "layer": "layer", "model": "model", "none": None}
IGNORES = {"biasbn": "biasbn", "none": None}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


class CLIError(ValueError):
    """A bad command-line argument; printed as one line."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type's name when the message is empty."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def call_factory(factory, spec: str, *, what: str):
    """``factory()``; whatever it raises becomes one line naming the option."""
    try:
        return factory()
    except Exception as err:  # the user's code: any type
        raise CLIError(f"`{what}` {spec!r} raised {type(err).__name__}: {first_line(err)}") from err


# --------------------------------------------------------------------------- options


def import_object(spec: str, *, what: str):
    """The object named by ``"package.module:attr"`` (``attr`` may be dotted)."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise CLIError(f"`{what}` must look like 'package.module:name'; got {spec!r}.")
    try:
        obj = importlib.import_module(module)
    except ImportError as err:
        raise CLIError(f"`{what}`: cannot import module {module!r} ({err}).") from err
    except Exception as err:  # the user's module fails while it is imported
        raise CLIError(f"`{what}`: importing module {module!r} raised {type(err).__name__}: "
                       f"{first_line(err)}") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CLIError(f"`{what}`: module {module!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    return obj


def resolve_loss(name: str):
    """A loss function from a name in :data:`LOSSES` or an import path."""
    if name not in LOSSES and ":" not in name:
        raise CLIError(f"`--loss` must be one of {sorted(LOSSES)} or an import path 'package.module:function'; "
                       f"got {name!r}.")
    loss_fn = import_object(LOSSES.get(name, name), what="--loss")
    if not callable(loss_fn):
        raise CLIError(f"`--loss` {name!r} is not callable; got {type(loss_fn).__name__}.")
    return loss_fn


def resolve_metrics(names) -> dict:
    """``--metric`` names -> the metric functions."""
    return {name: import_object(METRICS[name], what="--metric") for name in (names or [])}


def parse_axis(text: str, *, what: str) -> tuple[float, float, int]:
    """``"MIN:MAX:NUM"`` -> ``(min, max, num)``."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        lo, hi, num = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise CLIError(f"`{what}` must be MIN:MAX:NUM, e.g. -1:1:51; got {text!r}.") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise CLIError(f"`{what}` needs finite MIN and MAX; got {text!r}.")
    if num < 1:
        raise CLIError(f"`{what}` needs NUM >= 1 points; got {num}.")
    if lo > hi:
        raise CLIError(f"`{what}` needs MIN <= MAX; got {text!r}.")
    return lo, hi, num


def parse_axes(args) -> list[tuple[float, float, int]]:
    """The grid of ``--x`` (``--y``, ``--z``): one ``(min, max, num)`` per axis."""
    axes = [parse_axis(args.x, what="--x")]
    if args.y is not None:
        axes.append(parse_axis(args.y, what="--y"))
    if args.z is not None:
        if args.y is None:
            raise CLIError("`--z` needs `--y` too.")
        axes.append(parse_axis(args.z, what="--z"))
    return axes


def chunk_option(text: str):
    """``--chunk-size``: ``"auto"`` or a positive integer."""
    if text == "auto":
        return "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer; got {text!r}") from None


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise CLIError(f"environment variable `WORLD_SIZE` must be an integer; got {raw!r}.") from None


# --------------------------------------------------------------------------- model and data


def load_model(args):
    """The ``--model`` module, with the ``--checkpoint`` weights when given."""
    from torch import nn

    factory = import_object(args.model, what="--model")
    model = call_factory(factory, args.model, what="--model") \
        if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise CLIError(f"`--model` {args.model!r} must return a torch.nn.Module; got {type(model).__name__}.")
    if args.checkpoint is not None:
        load_into(model, load_checkpoint(args.checkpoint, what="--checkpoint"), what="--checkpoint")
    return model


def load_data(args):
    """The ``--data`` object: the factory's result, or the object itself when it is data."""
    data_obj = import_object(args.data, what="--data")
    return call_factory(data_obj, args.data, what="--data") if callable(data_obj) \
        and not hasattr(data_obj, "__getitem__") and not hasattr(data_obj, "__iter__") else data_obj


def load_checkpoint(path, *, what: str) -> dict:
    """A state dict from a file saved by ``torch.save`` (a state dict, or a dict holding one
    under ``state_dict``, ``model_state_dict`` or ``model``)."""
    import torch

    if not str(path).strip():
        raise CLIError(f"`{what}` is empty; expected the path of a file saved by torch.save.")
    path = Path(path)
    if path.is_dir():
        raise CLIError(f"`{what}` {str(path)!r} is a folder; expected a file saved by torch.save "
                       f"({', '.join(CHECKPOINT_SUFFIXES)}).")
    if not path.is_file():
        raise CLIError(f"`{what}` {str(path)!r} does not exist.")
    if path.stat().st_size == 0:
        raise CLIError(f"`{what}` {str(path)!r} is empty (0 bytes); expected a file saved by torch.save.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise CLIError(f"`{what}` {str(path)!r} is not a readable torch checkpoint ({first_line(err)}).") from err
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CLIError(f"`{what}` {str(path)!r} does not hold a state dict of tensors.")
    if all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def check_shapes(model, state: dict, *, what: str) -> None:
    """A CLIError naming every tensor of ``state`` whose shape is not the model's."""
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    wrong = [f"{k} {tuple(v.shape)}, the model's {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise CLIError(f"`{what}` has the model's tensor names but other shapes: {'; '.join(wrong[:4])}"
                       + (f"; and {len(wrong) - 4} more" if len(wrong) > 4 else "")
                       + ". Was it saved from another configuration of the model?")


def load_into(model, state: dict, *, what: str) -> None:
    """``state`` loaded into ``model``; a CLIError when it does not fit."""
    check_shapes(model, state, what=what)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CLIError(
            f"`{what}` does not fit the model: missing {list(result.missing_keys)[:4]}, unexpected "
            f"{list(result.unexpected_keys)[:4]}."
        )


# --------------------------------------------------------------------------- directions


def checkpoint_files(folder: Path) -> list[Path]:
    """Checkpoint files of ``folder`` in natural order (``epoch2`` before ``epoch10``)."""
    def key(p: Path):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]

    return sorted((p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES), key=key)


def pca(model, folder: Path, n: int):
    """``fastscape.pca_directions`` of the checkpoints in ``folder`` (the parameters of each),
    and the checkpoints projected onto them around the model: ``(directions, path)``."""
    import fastscape

    if not folder.is_dir():
        raise CLIError(f"`--pca-dir` {str(folder)!r} is not a folder.")
    files = checkpoint_files(folder)
    if len(files) < n + 1:
        raise CLIError(f"`--pca-dir` needs at least {n + 1} checkpoints ({', '.join(CHECKPOINT_SUFFIXES)}) "
                       f"for {n} direction(s); found {len(files)} in {str(folder)!r}.")
    weights = {k: p.detach() for k, p in model.named_parameters()}
    snapshots = []
    for f in files:
        state = load_checkpoint(f, what="--pca-dir")
        missing = [k for k in weights if k not in state]
        if missing:
            raise CLIError(f"`--pca-dir` checkpoint {f.name!r} lacks parameter(s) {missing[:4]}.")
        check_shapes(model, state, what=f"--pca-dir` checkpoint `{f.name}")
        snapshots.append({k: state[k] for k in weights})
    dirs, _ = fastscape.pca_directions(snapshots, n=n)
    path = fastscape.project(snapshots, dirs, origin=weights)
    return fastscape.Directions(dirs, **dirs.info, checkpoints=[f.name for f in files]), path


def interpolation(args, model, n: int, norm, ignore):
    """Direction 1 from the model (0) to the ``--to`` checkpoint (1), through
    ``fastscape.interpolation_directions`` in float64 so that coordinate 1 lands on the
    checkpoint up to the evaluation's rounding; random directions for the other axes."""
    import copy

    import torch

    import fastscape

    target = load_checkpoint(args.to, what="--to")
    check_shapes(model, target, what="--to")
    try:
        line = fastscape.interpolation_directions(copy.deepcopy(model).double(), target)[0]
    except ValueError as err:
        raise CLIError(f"`--to` {str(args.to)!r} does not fit the model: {err}") from err
    if not any(bool(t.any()) for t in line.values()):
        raise CLIError(f"`--to` {args.to!r} holds the model's own weights; the interpolation direction is zero.")
    dirs, info = [line], {"kind": "interpolation", "to": str(args.to)}
    if n > 1:
        state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        extra = fastscape.random_directions(model, n - 1, norm=norm, ignore=ignore, seed=args.seed)
        zeros = {k: torch.zeros_like(state[k].detach()) for k in line if k not in extra[0]}
        dirs += [{**d, **zeros} for d in extra]
        info.update(norm=norm, ignore=ignore, seed=args.seed)
    return fastscape.Directions(dirs, **info)


def make_directions(args, model, n: int):
    """The directions of ``fastscape surface`` and the path to keep with the surface (or None)."""
    import fastscape

    given_norm = args.norm is not None or args.ignore is not None
    norm = NORMS[args.norm or "filter"]
    ignore = IGNORES[args.ignore or "biasbn"]
    if args.pca_dir is not None:
        if given_norm:
            raise CLIError("`--norm` and `--ignore` apply to random directions; PCA directions (`--pca-dir`) "
                           "are used as computed.")
        return pca(model, Path(args.pca_dir), n)
    if args.to is not None:
        if given_norm and n == 1:
            raise CLIError("`--norm` and `--ignore` apply to the random directions added by `--y`/`--z`; "
                           "the `--to` direction is used as is.")
        return interpolation(args, model, n, norm, ignore), None
    return fastscape.random_directions(model, n, norm=norm, ignore=ignore, seed=args.seed), None
