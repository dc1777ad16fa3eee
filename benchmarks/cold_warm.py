"""What a user's first calls cost: ``strategy="auto"`` in a fresh process, in the orders
a user actually calls it (issue 12).

    PYTHONPATH=. python benchmarks/cold_warm.py                      # all sequences, seed-000
    PYTHONPATH=. python benchmarks/cold_warm.py --only cold,small_then_big --fresh-cache
    PYTHONPATH=. python benchmarks/cold_warm.py --workload cnn --sizes 5,21

Sequences (each in its own fresh Python process, so nothing is remembered in memory):

``cold``            the big grid, twice: the first call pays probing and compiling, the second is warm
``small_then_big``  every small size in turn, then the big grid (the big call should cost what it
                    costs alone, i.e. ``cold``'s first call), then the big grid again
``big_then_small``  the big grid, then the second-largest size twice (a new grid size must not
                    recompile)

``--fresh-cache`` points ``TORCHINDUCTOR_CACHE_DIR`` at an empty directory for every process: the
first call of a user who never compiled anything. Without it the on-disk compile cache left by
earlier runs is used, as for a user's second script.

Every process also times the per-point set-weights loop (``workloads.loop_points_per_second``)
before and after its sequence, so each call's rate is reported beside the baseline measured in the
same process; ``uptime``'s load average is printed with each sequence.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SEQUENCES = ["cold", "small_then_big", "big_then_small"]
DEFAULT_SIZES = {"seed000": [11, 51, 201, 401, 1001], "mlp64": [5, 11, 30, 61], "mnist": [5, 11, 51],
                 "cnn": [3, 7, 21], "transformer": [3, 5, 11]}


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def worker(workload: str, sequence: str, sizes: list[int]) -> dict:
    """Run one sequence in this (fresh) process; return the time of every call."""
    t_import = time.perf_counter()
    import numpy as np
    import torch

    import fastscape
    from benchmarks.workloads import build, directions_of, loop_points_per_second

    import_s = time.perf_counter() - t_import
    w = build(workload)
    dirs, origin = directions_of(w)
    lo, hi = w["grid"][:2]
    loop_n = w["loop_points"]

    def baseline() -> float:
        rng = np.random.default_rng(0)
        coords = torch.from_numpy(rng.uniform(lo, hi, size=(loop_n, 2)))
        return loop_points_per_second(w, coords, dirs, origin)

    def call(n: int) -> dict:
        t = time.perf_counter()
        s = fastscape.loss_surface(w["model"], (w["x"], w["y"]), dirs, origin=origin, loss_fn=w["loss_fn"],
                                   grid=(lo, hi, n), device="cpu", progress=False)
        sec = time.perf_counter() - t
        return {"n": n, "points": n * n, "seconds": sec, "strategy": s.meta["strategy"],
                "chunk": s.meta["chunk_size"], "notes": [x for x in s.meta["notes"] if x.startswith("auto")]}

    big = sizes[-1]
    if sequence == "cold":
        order = [big, big]
    elif sequence == "small_then_big":
        order = sizes[:-1] + [big, big]
    elif sequence == "big_then_small":
        order = [big, sizes[-2], sizes[-2]]
    else:
        raise KeyError(sequence)
    loop_before = baseline()
    calls = [call(n) for n in order]
    loop_after = baseline()
    return {"workload": workload, "sequence": sequence, "import_s": import_s, "calls": calls,
            "loop_pps": [loop_before, loop_after], "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def run(workload: str, sequence: str, sizes: list[int], fresh_cache: bool) -> dict:
    """``worker`` in a fresh subprocess (and, with ``fresh_cache``, an empty compile cache)."""
    env = dict(os.environ)
    tmp = None
    if fresh_cache:
        tmp = tempfile.TemporaryDirectory(prefix="fastscape-cold-")
        env["TORCHINDUCTOR_CACHE_DIR"] = tmp.name
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", sequence, "--workload", workload,
           "--sizes", ",".join(map(str, sizes))]
    load_before = load()
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if tmp is not None:
        tmp.cleanup()
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"{sequence} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(line[0][7:])
    res.update(process_s=wall, load_before=load_before, load_after=load(), fresh_cache=fresh_cache)
    return res


def show(res: dict) -> None:
    loop = min(res["loop_pps"])  # the slower of the two baseline readings: the ratio is not flattered
    print(f"{res['workload']} / {res['sequence']}{' (empty compile cache)' if res['fresh_cache'] else ''}: "
          f"load {res['load_before']} -> {res['load_after']}; import {res['import_s']:.1f} s; "
          f"loop {res['loop_pps'][0]:,.0f} / {res['loop_pps'][1]:,.0f} points/s (before / after)")
    for i, c in enumerate(res["calls"]):
        pps = c["points"] / c["seconds"]
        print(f"  call {i + 1}: {c['n']:>5}x{c['n']:<5} {c['seconds']:8.3f} s {pps:>12,.0f} points/s "
              f"{pps / loop:>8.1f}x loop  {c['strategy']} (chunk {c['chunk']})")
        for note in c["notes"]:
            print(f"          {note}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="seed000")
    p.add_argument("--only", default=",".join(SEQUENCES), help="comma-separated sequences")
    p.add_argument("--sizes", help="comma-separated grid sizes per axis, the big one last")
    p.add_argument("--fresh-cache", action="store_true", help="an empty TORCHINDUCTOR_CACHE_DIR per process")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else DEFAULT_SIZES[args.workload]
    if args.worker:
        print("RESULT " + json.dumps(worker(args.workload, args.worker, sizes)), flush=True)
        return 0
    results = []
    for seq in args.only.split(","):
        res = run(args.workload, seq, sizes, args.fresh_cache)
        show(res)
        results.append(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
