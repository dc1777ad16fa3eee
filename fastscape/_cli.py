"""The ``fastscape`` command line: ``demo``, ``surface`` and ``plot``.

``fastscape surface`` computes a surface of a user's own model into a
crash-safe HDF5 file (running it again resumes; under ``torchrun`` the grid is
sharded over the ranks); ``fastscape plot`` draws the figures of such a file.
Bad arguments get one line on stderr and exit status 2, never a traceback (set
``FASTSCAPE_TRACEBACK=1`` to see one).

``--model``, ``--data`` and ``--loss`` name ``package.module:attribute``, imported
with the working directory first on the import path (as ``python -m`` has it).
Everything else goes through the public API (``import fastscape``,
``fastscape.plot``): the command line is one more caller of it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys
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
_NORMS = {"filter": "filter", "layer": "layer", "model": "model", "none": None}
_IGNORES = {"biasbn": "biasbn", "none": None}
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


class CLIError(ValueError):
    """A bad command-line argument; printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# --------------------------------------------------------------------------- arguments


def import_object(spec: str, *, what: str):
    """The object named by ``"package.module:attr"`` (``attr`` may be dotted)."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise CLIError(f"`{what}` must look like 'package.module:name'; got {spec!r}.")
    try:
        obj = importlib.import_module(module)
    except ImportError as err:
        raise CLIError(f"`{what}`: cannot import module {module!r} ({err}).") from err
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


def parse_axis(text: str, *, what: str) -> tuple[float, float, int]:
    """``"MIN:MAX:NUM"`` -> ``(min, max, num)``."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        lo, hi, num = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise CLIError(f"`{what}` must be MIN:MAX:NUM, e.g. -1:1:51; got {text!r}.") from None
    if num < 1:
        raise CLIError(f"`{what}` needs NUM >= 1 points; got {num}.")
    if lo > hi:
        raise CLIError(f"`{what}` needs MIN <= MAX; got {text!r}.")
    return lo, hi, num


def _chunk(text: str):
    if text == "auto":
        return "auto"
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer; got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def load_checkpoint(path, *, what: str) -> dict:
    """A state dict from a file saved by ``torch.save`` (a state dict, or a dict holding one
    under ``state_dict``, ``model_state_dict`` or ``model``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CLIError(f"`{what}` {str(path)!r} does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise CLIError(f"`{what}` {str(path)!r} is not a readable torch checkpoint ({str(err).splitlines()[0]}).") from err
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


def _check_shapes(model, state: dict, *, what: str) -> None:
    """A CLIError naming every tensor of ``state`` whose shape is not the model's."""
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    wrong = [f"{k} {tuple(v.shape)}, the model's {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise CLIError(f"`{what}` has the model's tensor names but other shapes: {'; '.join(wrong[:4])}"
                       + (f"; and {len(wrong) - 4} more" if len(wrong) > 4 else "")
                       + ". Was it saved from another configuration of the model?")


def _load_into(model, state: dict, *, what: str) -> None:
    _check_shapes(model, state, what=what)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CLIError(
            f"`{what}` does not fit the model: missing {list(result.missing_keys)[:4]}, unexpected "
            f"{list(result.unexpected_keys)[:4]}."
        )


def _checkpoint_files(folder: Path) -> list[Path]:
    """Checkpoint files of ``folder`` in natural order (``epoch2`` before ``epoch10``)."""
    def key(p: Path):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]

    return sorted((p for p in folder.iterdir() if p.suffix in _CHECKPOINT_SUFFIXES), key=key)


def _pca(model, folder: Path, n: int):
    """``fastscape.pca_directions`` of the checkpoints in ``folder`` (the parameters of each),
    and the checkpoints projected onto them around the model: ``(directions, path)``."""
    import fastscape

    if not folder.is_dir():
        raise CLIError(f"`--pca-dir` {str(folder)!r} is not a folder.")
    files = _checkpoint_files(folder)
    if len(files) < n + 1:
        raise CLIError(f"`--pca-dir` needs at least {n + 1} checkpoints ({', '.join(_CHECKPOINT_SUFFIXES)}) "
                       f"for {n} direction(s); found {len(files)} in {str(folder)!r}.")
    weights = {k: p.detach() for k, p in model.named_parameters()}
    snapshots = []
    for f in files:
        state = load_checkpoint(f, what="--pca-dir")
        missing = [k for k in weights if k not in state]
        if missing:
            raise CLIError(f"`--pca-dir` checkpoint {f.name!r} lacks parameter(s) {missing[:4]}.")
        _check_shapes(model, state, what=f"--pca-dir` checkpoint `{f.name}")
        snapshots.append({k: state[k] for k in weights})
    dirs, _ = fastscape.pca_directions(snapshots, n=n)
    path = fastscape.project(snapshots, dirs, origin=weights)
    return fastscape.Directions(dirs, **dirs.info, checkpoints=[f.name for f in files]), path


def _interpolation(args, model, n: int, norm, ignore):
    """Direction 1 from the model (0) to the ``--to`` checkpoint (1), through
    ``fastscape.interpolation_directions`` in float64 so that coordinate 1 lands on the
    checkpoint up to the evaluation's rounding; random directions for the other axes."""
    import copy

    import torch

    import fastscape

    target = load_checkpoint(args.to, what="--to")
    _check_shapes(model, target, what="--to")
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


def _directions(args, model, n: int):
    """The directions of ``fastscape surface`` and the path to keep with the surface (or None)."""
    import fastscape

    given_norm = args.norm is not None or args.ignore is not None
    norm = _NORMS[args.norm or "filter"]
    ignore = _IGNORES[args.ignore or "biasbn"]
    if args.pca_dir is not None:
        if given_norm:
            raise CLIError("`--norm` and `--ignore` apply to random directions; PCA directions (`--pca-dir`) "
                           "are used as computed.")
        return _pca(model, Path(args.pca_dir), n)
    if args.to is not None:
        if given_norm and n == 1:
            raise CLIError("`--norm` and `--ignore` apply to the random directions added by `--y`/`--z`; "
                           "the `--to` direction is used as is.")
        return _interpolation(args, model, n, norm, ignore), None
    return fastscape.random_directions(model, n, norm=norm, ignore=ignore, seed=args.seed), None


# --------------------------------------------------------------------------- commands


def _demo(args) -> int:
    from ._demo import run_demo

    run_demo(args.out, resolution=args.resolution)
    return 0


def _world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise CLIError(f"environment variable `WORLD_SIZE` must be an integer; got {raw!r}.") from None


def _surface(args) -> int:
    from torch import nn

    import fastscape

    axes = [parse_axis(args.x, what="--x")]
    if args.y is not None:
        axes.append(parse_axis(args.y, what="--y"))
    if args.z is not None:
        if args.y is None:
            raise CLIError("`--z` needs `--y` too.")
        axes.append(parse_axis(args.z, what="--z"))
    if args.to is not None and args.pca_dir is not None:
        raise CLIError("choose one of `--to` (interpolation) and `--pca-dir` (PCA); got both.")
    if Path(args.out).suffix.lower() not in (".h5", ".hdf5"):
        raise CLIError(f"`--out` must end in .h5 or .hdf5; got {args.out!r}.")
    loss_fn = resolve_loss(args.loss)
    metrics = {name: import_object(METRICS[name], what="--metric") for name in (args.metric or [])}

    factory = import_object(args.model, what="--model")
    model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise CLIError(f"`--model` {args.model!r} must return a torch.nn.Module; got {type(model).__name__}.")
    if args.checkpoint is not None:
        _load_into(model, load_checkpoint(args.checkpoint, what="--checkpoint"), what="--checkpoint")
    data_obj = import_object(args.data, what="--data")
    data = data_obj() if callable(data_obj) and not hasattr(data_obj, "__getitem__") \
        and not hasattr(data_obj, "__iter__") else data_obj
    directions, path = _directions(args, model, len(axes))

    import torch.distributed as dist

    # join torchrun's group unless the caller already did; leave only a group we made
    world = _world_size()
    owned = world > 1 and not (dist.is_available() and dist.is_initialized())
    ctx = fastscape.init_distributed() if world > 1 else None
    rank = ctx.rank if ctx is not None else 0
    try:
        device = args.device if args.device is not None else (ctx.device if ctx is not None else None)
        surface = fastscape.loss_surface(model, data, directions, loss_fn=loss_fn, grid=axes, metrics=metrics,
                                         device=device, dtype=args.dtype, chunk_size=args.chunk_size,
                                         strategy=args.strategy, batch_size=args.batch_size,
                                         progress=args.progress, out=args.out)
    finally:
        if owned:
            dist.destroy_process_group()
    if rank == 0:
        if path is not None:
            surface.path = path  # kept with the surface: `fastscape plot` draws it
            if args.out is not None:
                surface.save(args.out)
            _check_path_in_grid(surface)
        print(_summary(surface, args.out))
    return 0


def _check_path_in_grid(surface) -> None:
    """Say when the stored path leaves the grid: the figures would show part of it only."""
    spans = [(float(surface.path[:, i].min()), float(surface.path[:, i].max())) for i in range(surface.ndim)]
    axes = ("--x", "--y", "--z")
    outside = [f"{axes[i]} {lo:.3g}:{hi:.3g}" for i, ((lo, hi), c) in enumerate(zip(spans, surface.coords))
               if lo < c.min() or hi > c.max()]
    if outside:
        logging.getLogger("fastscape").warning(
            "the checkpoints' path leaves the grid; it spans %s: widen the grid to see all of it", ", ".join(outside))


def _summary(surface, out) -> str:
    import numpy as np

    meta, run = surface.meta, surface.meta.get("run", {})
    finite = np.isfinite(surface.loss)
    lowest = (f"lowest loss {float(surface.loss[finite].min()):.6g} at "
              f"({', '.join(f'{c:.4g}' for c in surface.argmin())})" if finite.any() else "no finite loss")
    shape = "x".join(str(s) for s in surface.shape)
    if not run or run.get("reused_units") == run.get("units"):
        return f"fastscape surface: {out} is already complete: {shape} grid; {lowest}"
    return (f"fastscape surface: wrote {out}: {shape} grid in {run['units']} units "
            f"({run['reused_units']} reused from an earlier run), {meta['seconds']:.2f} s on "
            f"{run['world_size']} process(es); {lowest}")


def _plot(args) -> int:
    import fastscape

    path = Path(args.file)
    if path.is_dir():
        raise CLIError(f"`FILE` {str(path)!r} is a folder; expected a surface file (.h5) written by "
                       "`fastscape surface`.")
    if not path.is_file():
        raise CLIError(f"`FILE` {str(path)!r} does not exist.")
    surface = fastscape.load_surface(path)
    value = surface.value(args.value)  # an unknown name lists the surface's values
    from fastscape.plot import contour, line, save, surface3d

    pick = {"value": value.name}
    out = Path(args.out) if args.out is not None else path.with_name(path.stem + "-figures")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if surface.ndim == 2:
        # the path stored with the surface (checkpoints of --pca-dir) is drawn on both views
        ax = contour(surface, path=surface.path, **pick)
        written.append(save(ax.figure, out / "contour.png"))
        written.append(save(surface3d(surface, path=surface.path, log=args.log, **pick), out / "surface3d.html"))
    elif surface.ndim == 1:
        info = surface.meta.get("directions") or {}
        marks = {"model": 0.0, Path(info["to"]).name: 1.0} if info.get("kind") == "interpolation" and info.get("to") \
            else None  # the two ends of `--to`
        written.append(save(line(surface, log=args.log, marks=marks, **pick).figure, out / "line.png"))
    if args.vtp:
        written.append(fastscape.save_vtp(surface, out / "surface.vtp", log=args.log))
    for p in written:
        print(f"fastscape plot: wrote {p}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastscape", description="Fast loss landscapes of PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="train the two-weight tanh net and draw its error surface")
    demo.add_argument("--out", default="fastscape-out", help="output folder (default: %(default)s)")
    demo.add_argument("--resolution", type=int, default=401, help="grid points per axis (default: %(default)s)")
    demo.set_defaults(func=_demo)

    s = sub.add_parser(
        "surface", help="compute a surface of your own model into a resumable HDF5 file",
        description="Compute a loss surface into FILE.h5. Running the same command again resumes; "
                    "under `torchrun --nproc-per-node N` the grid is sharded over the ranks.")
    s.add_argument("--model", required=True, metavar="PKG.MOD:FACTORY",
                   help="import path of a function returning the nn.Module")
    s.add_argument("--checkpoint", metavar="PATH", help="state dict loaded into the model (the origin)")
    s.add_argument("--data", required=True, metavar="PKG.MOD:FACTORY",
                   help="import path of a function returning a Dataset, a DataLoader or an (inputs, targets) pair")
    s.add_argument("--loss", required=True, metavar="NAME",
                   help=f"one of {', '.join(sorted(LOSSES))}, or an import path PKG.MOD:FUNCTION")
    s.add_argument("--metric", action="append", choices=sorted(METRICS),
                   help="extra metric computed in the same pass (repeatable); 'accuracy' fills train_acc")
    s.add_argument("--norm", choices=list(_NORMS), default=None,
                   help="normalisation of random directions (default: filter)")
    s.add_argument("--ignore", choices=list(_IGNORES), default=None,
                   help="zero the directions of 1-D parameters (default: biasbn)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of random directions (default: %(default)s, so that re-running resumes)")
    s.add_argument("--to", metavar="CKPT", help="interpolate: direction 1 goes from the model (0) to CKPT (1)")
    s.add_argument("--pca-dir", metavar="DIR",
                   help="fastscape.pca_directions of the checkpoints in DIR (natural order) around the model; "
                        "the checkpoints' projected path is stored with the surface")
    s.add_argument("--x", required=True, metavar="MIN:MAX:NUM", help="grid along direction 1")
    s.add_argument("--y", metavar="MIN:MAX:NUM", help="grid along direction 2 (a plane)")
    s.add_argument("--z", metavar="MIN:MAX:NUM", help="grid along direction 3 (a volume)")
    s.add_argument("--out", required=True, metavar="FILE.h5", help="the HDF5 file to compute into")
    s.add_argument("--device", help="torch device (default: cuda:LOCAL_RANK when available, else cpu)")
    s.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    s.add_argument("--chunk-size", type=_chunk, default="auto", metavar="N|auto",
                   help="grid points evaluated at once (default: planned from free memory)")
    s.add_argument("--batch-size", type=_positive, metavar="N", help="largest data batch")
    s.add_argument("--strategy", default="auto", metavar="NAME",
                   help="how chunks are evaluated: auto (default: a measured choice kept in the file) or a "
                        "strategy such as vmap, loop or affine; an unknown name gets the list")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    s.add_argument("--quiet", action="store_true", help="no log lines on stderr")
    s.set_defaults(func=_surface)

    p = sub.add_parser("plot", help="write the figures of a surface file",
                       description="Write contour.png and surface3d.html (planes), line.png (lines) and "
                                   "surface.vtp (ParaView) from a surface file.")
    p.add_argument("file", metavar="FILE.h5", help="a surface file written by `fastscape surface`")
    p.add_argument("--out", metavar="DIR", help="output folder (default: FILE-figures beside FILE)")
    p.add_argument("--value", default="loss", metavar="NAME",
                   help="the value drawn, e.g. accuracy or test/accuracy (default: %(default)s)")
    p.add_argument("--log", action="store_true", help="log10 heights in the 3D view and the .vtp")
    p.add_argument("--vtp", action=argparse.BooleanOptionalAction, default=True,
                   help="write surface.vtp for ParaView (default: yes)")
    p.set_defaults(func=_plot, quiet=False)
    return parser


def _join_negative(argv: list[str]) -> list[str]:
    """``--x -1:1:5`` -> ``--x=-1:1:5`` (argparse would read ``-1:1:5`` as an option)."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in ("--x", "--y", "--z") and i + 1 < len(argv) and argv[i + 1].startswith("-") \
                and len(argv[i + 1]) > 1 and (argv[i + 1][1].isdigit() or argv[i + 1][1] == "."):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


@contextlib.contextmanager
def _working_directory_importable():
    """The working directory first on ``sys.path`` while a command runs, as ``python -m`` puts it,
    so that ``--model mypkg.models:net`` finds ``./mypkg`` through the console script too."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def main(argv=None) -> int:
    argv = _join_negative(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    logger = logging.getLogger("fastscape")
    handler = None
    if not getattr(args, "quiet", True):
        rank = os.environ.get("RANK")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"fastscape{f' [rank {rank}]' if rank else ''}: %(message)s"))
        logger.addHandler(handler)
        old_level = logger.level
        logger.setLevel(logging.INFO)
    try:
        with _working_directory_importable():
            return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
        if os.environ.get("FASTSCAPE_TRACEBACK"):
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"fastscape {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(old_level)


if __name__ == "__main__":
    sys.exit(main())
