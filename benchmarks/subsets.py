"""Parameter subsets on resnet18: the frozen prefix computed once, against full-model evaluation.

    PYTHONPATH=. python benchmarks/subsets.py            # the issue's sizes (several minutes on 2 cores)
    PYTHONPATH=. python benchmarks/subsets.py --quick    # smaller grids for a rehearsal

resnet18 (11.2 M parameters, 64 random 3x32x32 images, warmed BatchNorm statistics), three sets
of filter-normalised random directions: only ``fc`` (5 130 parameters), only ``layer4`` (8.4 M),
and everything. Every ratio is measured in this one run:

- fc: ``auto`` on a 21x21 plane, warm (second call) and cold (first call: probing included),
  against the full-model evaluation of the same directions (the fastest of ``vmap``, ``affine``
  and the set-weights-and-forward loop, timed on a few points of the same grid);
- layer4: ``auto`` against the loop on the same points, on a 5x5 and an 11x11 plane: a call's fixed
  costs (fingerprints of 11.2 M parameters, checks, one trunk forward) weigh on 25 points, not on 121;
- all parameters: ``auto`` against the loop (nothing is frozen: no prefix to reuse);
- no regression: ``auto`` on two small existing workloads (quick sizes) with the ``prefix`` strategy
  registered and without it, interleaved, and what building the strategy costs where it does not
  apply (a symbolic trace that finds nothing frozen). The CNN workload is left out: its cold call
  compiles for minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastscape  # noqa: E402
from benchmarks import workloads  # noqa: E402
from benchmarks.resnet18 import workload  # noqa: E402
from fastscape._core import auto as _auto  # noqa: E402
from fastscape._core import strategies as _strategies  # noqa: E402


def timed_surface(w, dirs, res, **kw):
    t = time.perf_counter()
    s = fastscape.loss_surface(w["model"], (w["x"], w["y"]), dirs, loss_fn=w["loss_fn"], grid=(-1.0, 1.0, res),
                               progress=False, **kw)
    return time.perf_counter() - t, s


def loop_rate(w, dirs, res, points):
    axis = np.linspace(-1.0, 1.0, res)
    coords = torch.tensor([[a, b] for a in axis for b in axis])[:: max(1, res * res // points)][:points]
    return workloads.loop_values(w, coords, list(dirs), None, warmup=1)[1]


def subset_rows(w, res_fc, res_small, res_l4, loop_points):
    rows = {}
    full = {}
    dirs = {name: fastscape.random_directions(w["model"], 2, seed=0, params=p)
            for name, p in (("fc", "fc"), ("layer4", "layer4"), ("all", None))}
    # today's full-model evaluation of the fc directions: its fastest way, per point
    for strategy in ("vmap", "affine"):
        t, _ = timed_surface(w, dirs["fc"], 3, strategy=strategy, chunk_size=1)  # warm-up
        t, _ = timed_surface(w, dirs["fc"], 3, strategy=strategy, chunk_size=1)
        full[strategy] = 9 / t
    full["loop"] = loop_rate(w, dirs["fc"], res_fc, loop_points)
    best_full = max(full.values())
    t_cold, s = timed_surface(w, dirs["fc"], res_fc)
    t_warm, s = timed_surface(w, dirs["fc"], res_fc)
    rows["fc"] = dict(points=res_fc ** 2, cold=t_cold, warm=t_warm, strategy=s.meta["strategy"],
                      chunk=s.meta["chunk_size"], ratio=res_fc ** 2 / t_warm / best_full,
                      cold_ratio=res_fc ** 2 / t_cold / best_full, full=full)
    for name, res in (("layer4", res_small), ("layer4", res_l4), ("all", res_small)):
        loop = loop_rate(w, dirs[name], res, loop_points)
        t_cold, s = timed_surface(w, dirs[name], res)
        t_warm, s = timed_surface(w, dirs[name], res)
        rows[f"{name} {res}x{res}"] = dict(points=res ** 2, cold=t_cold, warm=t_warm, strategy=s.meta["strategy"],
                                          chunk=s.meta["chunk_size"], ratio=res ** 2 / t_warm / loop, loop=loop)
    return rows


def regression_rows(names, quick):
    """auto with and without the prefix strategy registered, interleaved, on the existing workloads."""
    out = {}
    prefix = _strategies.STRATEGIES["prefix"]
    for name in names:
        w = workloads.build(name, quick=True)
        dirs, origin = workloads.directions_of(w)
        times = {"with": [], "without": []}
        picks = {}
        for _ in range(1 if quick else 2):
            for mode in ("with", "without"):
                if mode == "without":
                    del _strategies.STRATEGIES["prefix"]
                _auto.AUTO_CHOICES.clear()
                try:
                    kw = dict(loss_fn=w["loss_fn"], grid=w["grid"], origin=origin, progress=False)
                    t = time.perf_counter()
                    s = fastscape.loss_surface(w["model"], (w["x"], w["y"]), dirs, **kw)  # cold: probes
                    cold = time.perf_counter() - t
                    t = time.perf_counter()
                    fastscape.loss_surface(w["model"], (w["x"], w["y"]), dirs, **kw)  # warm: remembered
                    times[mode].append((cold, time.perf_counter() - t))
                    picks[mode] = s.meta["strategy"]
                finally:
                    _strategies.STRATEGIES["prefix"] = prefix
        ctx_cost = trace_cost(w, dirs, origin)
        out[name] = dict(trace=ctx_cost, picks=picks, cold={m: min(c for c, _ in v) for m, v in times.items()},
                         warm={m: min(x for _, x in v) for m, v in times.items()})
    return out


def trace_cost(w, dirs, origin) -> float:
    """Seconds to build the prefix strategy (trace, split) where every operation moves: its cost in auto's probe."""
    from fastscape._core.strategies.prefix import _trace

    t = time.perf_counter()
    try:
        _trace(w["model"], 1)
    except Exception:  # noqa: BLE001 - a model fx cannot trace costs the failed attempt
        pass
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="11x11 fc plane, 3x3 for the rest, fewer loop points")
    args = p.parse_args(argv)
    w = workload(64)
    print(f"resnet18 from {w['source']}; {sum(q.numel() for q in w['model'].parameters()):,} parameters; "
          f"64 images 3x32x32; torch {torch.__version__}, {torch.get_num_threads()} threads")
    res_fc, res_small, res_l4, loop_points = (11, 3, 5, 4) if args.quick else (21, 5, 11, 9)
    rows = subset_rows(w, res_fc, res_small, res_l4, loop_points)
    fc = rows["fc"]
    print(f"full-model evaluation of the fc directions, points/s: "
          + ", ".join(f"{k} {v:.2f}" for k, v in fc["full"].items()))
    print(f"fc only    {res_fc}x{res_fc}: auto -> {fc['strategy']} (chunk {fc['chunk']}), warm {fc['warm']:.2f} s, "
          f"cold {fc['cold']:.2f} s; {fc['ratio']:.0f}x the full-model evaluation warm, {fc['cold_ratio']:.0f}x cold")
    for name, r in rows.items():
        if name == "fc":
            continue
        print(f"{name:<16}: auto -> {r['strategy']} (chunk {r['chunk']}), warm {r['warm']:.2f} s "
              f"({r['points'] / r['warm']:.2f} points/s), cold {r['cold']:.2f} s; loop {r['loop']:.2f} points/s; "
              f"{r['ratio']:.2f}x the loop")
    reg = regression_rows(["mlp64", "transformer"], args.quick)
    print("existing workloads (quick sizes), auto with / without the prefix strategy registered:")
    for name, r in reg.items():
        print(f"  {name:<12} picks {r['picks']['with']} / {r['picks']['without']}; cold {r['cold']['with']:.2f} / "
              f"{r['cold']['without']:.2f} s; warm {r['warm']['with']:.3f} / {r['warm']['without']:.3f} s; "
              f"tracing the model {r['trace'] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
