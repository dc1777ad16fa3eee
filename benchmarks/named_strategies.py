"""Warm seconds of ``loss_surface`` per named strategy, for A/B runs of two checkouts.

    PYTHONPATH=. python benchmarks/named_strategies.py                 # every workload below
    PYTHONPATH=. python benchmarks/named_strategies.py --only cnn,transformer --reps 5
    PYTHONPATH=/path/to/other/checkout python /path/to/other/checkout/benchmarks/named_strategies.py

Each (workload, strategy) is called ``--reps`` times on the same grid and the minimum is printed,
with the sum of the surface (a value both checkouts must agree on to rounding). Run the two
checkouts alternately, in fresh processes, to see the spread a shared machine adds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: workload -> (strategies, points per axis)
CASES = {
    "seed000": (["vmap", "affine", "quadratic", "loop", "affine_compiled", "vmap_compiled"], 101),
    "mlp64": (["vmap", "affine", "mlp"], 31),
    "mnist": (["affine", "mlp"], 7),
    "cnn": (["vmap", "affine", "loop"], 5),
    "transformer": (["vmap", "loop"], 5),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated workloads (default: all)")
    p.add_argument("--reps", type=int, default=3, help="calls per strategy; the minimum is printed")
    args = p.parse_args(argv)

    import fastscape
    from benchmarks.workloads import build, directions_of

    warnings.simplefilter("ignore")
    with open("/proc/loadavg") as f:
        print("load", " ".join(f.read().split()[:3]), "fastscape from", os.path.dirname(fastscape.__file__))
    names = args.only.split(",") if args.only else list(CASES)
    for name in names:
        strategies, res = CASES[name]
        w = build(name)
        dirs, origin = directions_of(w)
        lo, hi = w["grid"][:2]
        for strategy in strategies:
            times = []
            for _ in range(args.reps):
                t = time.perf_counter()
                surf = fastscape.loss_surface(w["model"], (w["x"], w["y"]), dirs, origin=origin,
                                              loss_fn=w["loss_fn"], grid=(lo, hi, res), device="cpu",
                                              progress=False, strategy=strategy)
                times.append(time.perf_counter() - t)
            print(f"{name} {res}x{res} {strategy:16s} {min(times):8.3f} s  sum {float(surf.loss.sum()):.6g}",
                  flush=True)


if __name__ == "__main__":
    main()
