"""The ``fastscape`` entry point: argparse wiring, logging, and one line on stderr with exit
status 2 for a bad argument (``FASTSCAPE_TRACEBACK=1`` shows the traceback)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from . import commands
from .inputs import IGNORES, LOSSES, METRICS, NORMS, chunk_option, first_line, positive_int


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _add_surface(sub) -> None:
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
    s.add_argument("--norm", choices=list(NORMS), default=None,
                   help="normalisation of random directions (default: filter)")
    s.add_argument("--ignore", choices=list(IGNORES), default=None,
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
    s.add_argument("--chunk-size", type=chunk_option, default="auto", metavar="N|auto",
                   help="grid points evaluated at once (default: planned from free memory)")
    s.add_argument("--batch-size", type=positive_int, metavar="N", help="largest data batch")
    s.add_argument("--strategy", default="auto", metavar="NAME",
                   help="how chunks are evaluated: auto (default: a measured choice kept in the file) or a "
                        "strategy such as vmap, loop or affine; an unknown name gets the list")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    s.add_argument("--quiet", action="store_true", help="no log lines on stderr")
    s.set_defaults(func=commands.surface)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``fastscape demo | surface | plot``."""
    parser = _Parser(prog="fastscape", description="Fast loss landscapes of PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="train the two-weight tanh net and draw its error surface")
    demo.add_argument("--out", default="fastscape-out", help="output folder (default: %(default)s)")
    demo.add_argument("--resolution", type=int, default=401, help="grid points per axis (default: %(default)s)")
    demo.set_defaults(func=commands.demo)

    _add_surface(sub)

    p = sub.add_parser("plot", help="write the figures of a surface file",
                       description="Write contour.png and surface3d.html (planes), line.png (lines) and "
                                   "surface.vtp (ParaView; a volume's one figure file) from a surface file.")
    p.add_argument("file", metavar="FILE.h5", help="a surface file written by `fastscape surface`")
    p.add_argument("--out", metavar="DIR", help="output folder (default: FILE-figures beside FILE)")
    p.add_argument("--value", default="loss", metavar="NAME",
                   help="the value drawn, e.g. accuracy or test/accuracy (default: %(default)s)")
    p.add_argument("--log", action="store_true", help="log10 heights in the 3D view and the .vtp")
    p.add_argument("--vtp", action=argparse.BooleanOptionalAction, default=True,
                   help="write surface.vtp for ParaView (default: yes)")
    p.set_defaults(func=commands.plot, quiet=False)
    return parser


def _join_negative(argv: list[str]) -> list[str]:
    """``--x -1:1:5`` -> ``--x=-1:1:5`` (argparse would read ``-1:1:5``, or ``-inf:1:5``, as an
    option); ``--x --y ...`` and ``--x -h`` are left to argparse."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in ("--x", "--y", "--z") and i + 1 < len(argv) and argv[i + 1].startswith("-") \
                and not argv[i + 1].startswith("--") and argv[i + 1] != "-h":
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
    """Run ``fastscape ARGV`` (``sys.argv[1:]`` by default); the exit status (2: a bad argument)."""
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
        print(f"fastscape {args.command}: error: {first_line(err)}", file=sys.stderr)
        return 2
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(old_level)


if __name__ == "__main__":
    sys.exit(main())
