"""What writing into a resumable file costs: ``loss_surface(..., out=...)`` against the same call
in memory, ``strategy="auto"`` and ``chunk_size="auto"``, in one process.

    PYTHONPATH=. python benchmarks/file_backed.py                    # seed000 1001x1001, mnist 21x21
    PYTHONPATH=. python benchmarks/file_backed.py --only mnist --res 31

Each workload is timed in the order memory, file, memory, file: the first pair is cold (the first
in-memory call probes the strategies; the first file call plans again, as a fresh run does), the
second warm. Every file call writes a fresh file. Printed per call: seconds, the strategy and
chunk, the units of the file run, and the ratio file / memory of the same pair.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_RES = {"seed000": 1001, "mnist": 21, "mlp64": 61, "cnn": 11}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="seed000,mnist", help="comma-separated workloads")
    p.add_argument("--res", type=int, help="points per axis (default: per workload)")
    args = p.parse_args(argv)

    import fastscape
    from benchmarks.workloads import build, directions_of

    warnings.simplefilter("ignore")
    with open("/proc/loadavg") as f:
        print("load", " ".join(f.read().split()[:3]))
    for name in args.only.split(","):
        w = build(name)
        dirs, origin = directions_of(w)
        lo, hi = w["grid"][:2]
        res = args.res or DEFAULT_RES.get(name, 21)
        times = {}
        for rnd in ("cold", "warm"):
            for where in ("memory", "file"):
                folder = tempfile.mkdtemp()
                t = time.perf_counter()
                s = fastscape.loss_surface(w["model"], (w["x"], w["y"]), dirs, origin=origin, loss_fn=w["loss_fn"],
                                           grid=(lo, hi, res), device="cpu", progress=False,
                                           out=os.path.join(folder, "s.h5") if where == "file" else None)
                times[rnd, where] = time.perf_counter() - t
                run = s.meta.get("run") or {}
                print(f"{name} {res}x{res} {rnd:4s} {where:6s} {times[rnd, where]:7.2f} s  {s.meta['strategy']}, "
                      f"chunk {s.meta['chunk_size']}" + (f", {run['units']} units of {run['unit_points']} points"
                                                         if run else ""), flush=True)
            print(f"{name} {rnd}: file / memory = {times[rnd, 'file'] / times[rnd, 'memory']:.2f}", flush=True)


if __name__ == "__main__":
    main()
