"""One function per subcommand (``demo``, ``surface``, ``plot``): each takes the parsed
arguments, calls the public API and returns the exit status."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .inputs import (CLIError, first_line, load_data, load_model, make_directions, parse_axes, resolve_loss,
                     resolve_metrics, world_size)


def demo(args) -> int:
    """``fastscape demo``: train the two-weight tanh net and draw its error surface."""
    from .._demo import run_demo

    run_demo(args.out, resolution=args.resolution)
    return 0


def surface(args) -> int:
    """``fastscape surface``: a surface of the user's model into a resumable HDF5 file."""
    import fastscape

    axes = parse_axes(args)
    if args.to is not None and args.pca_dir is not None:
        raise CLIError("choose one of `--to` (interpolation) and `--pca-dir` (PCA); got both.")
    if Path(args.out).suffix.lower() not in (".h5", ".hdf5"):
        raise CLIError(f"`--out` must end in .h5 or .hdf5; got {args.out!r}.")
    loss_fn = resolve_loss(args.loss)
    metrics = resolve_metrics(args.metric)
    model = load_model(args)
    data = load_data(args)
    directions, path = make_directions(args, model, len(axes))

    import torch.distributed as dist

    # join torchrun's group unless the caller already did; leave only a group we made
    world = world_size()
    owned = world > 1 and not (dist.is_available() and dist.is_initialized())
    ctx = fastscape.init_distributed() if world > 1 else None
    rank = ctx.rank if ctx is not None else 0
    try:
        device = args.device if args.device is not None else (ctx.device if ctx is not None else None)
        result = fastscape.loss_surface(model, data, directions, loss_fn=loss_fn, grid=axes, metrics=metrics,
                                        device=device, dtype=args.dtype, chunk_size=args.chunk_size,
                                        strategy=args.strategy, batch_size=args.batch_size,
                                        progress=args.progress, out=args.out)
    finally:
        if owned:
            dist.destroy_process_group()
    if rank == 0:
        if path is not None:
            _keep_path(result, path, Path(args.out))  # kept with the surface: `fastscape plot` draws it
            _check_path_in_grid(result)
        print(_summary(result, args.out))
    return 0


def _keep_path(surface, path, out: Path) -> None:
    """Store the checkpoints' projected path in the finished file ``out``, unless it already
    holds this path. A finished file is never rewritten in place: the surface with its path is
    written to a temporary name beside it, flushed, and renamed over it (the name the store's
    next run sweeps up when a kill leaves it behind), so a kill or a write error at any moment
    leaves either the old file or the new one."""
    import numpy as np

    if surface.path is not None and np.shape(surface.path) == np.shape(path) and np.array_equal(surface.path, path):
        return
    surface.path = path
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        surface.save(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CLIError(f"`--out` {str(out)!r} holds the finished surface, but storing the checkpoints' path in it "
                       f"failed ({first_line(err)}); the file is unchanged: run the same command again.") from err


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
    if not run or run.get("reused_file"):  # returned as it was, nothing written
        return f"fastscape surface: {out} is already complete: {shape} grid; {lowest}"
    return (f"fastscape surface: wrote {out}: {shape} grid in {run['units']} units "
            f"({run['reused_units']} reused from an earlier run), {meta['seconds']:.2f} s on "
            f"{run['world_size']} process(es); {lowest}")


def plot(args) -> int:
    """``fastscape plot``: the figures of a surface file into a folder."""
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

    if surface.ndim == 3 and not args.vtp:
        raise CLIError(f"`FILE` {str(path)!r} holds a 3-D surface (a volume): its one figure file is surface.vtp "
                       "for ParaView, which `--no-vtp` turns off; draw it in Python with fastscape.plot.volume.")
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
    if surface.ndim == 3:
        print("fastscape plot: a 3-D surface (a volume) has no contour or line figure; surface.vtp holds it for "
              "ParaView, and fastscape.plot.volume draws it in Python")
    return 0
