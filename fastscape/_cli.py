"""The ``fastscape`` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from ._demo import run_demo

    run_demo(args.out, resolution=args.resolution)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastscape", description="Fast loss landscapes of PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train the two-weight tanh net and draw its error surface")
    demo.add_argument("--out", default="fastscape-out", help="output folder (default: %(default)s)")
    demo.add_argument("--resolution", type=int, default=401, help="grid points per axis (default: %(default)s)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"fastscape {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
