"""Curvature benchmarks: the batched curvature map against a per-point loop of
``hessian_eigenpairs``, and Monte-Carlo sharpness sampling against a set-weights loop.

    PYTHONPATH=. python benchmarks/curvature.py --grid 21 --samples 128 --loop-points 16 [--reference]

Model: the digits CNN of ``scripts/_digits.py`` (Conv-BN-ReLU x2, max-pool, linear;
3.9k parameters), seeded, BatchNorm statistics from one pass in train mode, eval mode
for every measurement; data: the first ``--samples`` digits training images. Both sides get
the same weights, directions, data, ``tol`` and ``max_iter``. The per-point loop is what a
user writes with the single-point API: load ``theta0 + a d1 + b d2`` into a copy of the model,
``hessian_eigenpairs(which="largest")``, ``hessian_eigenpairs(which="smallest")`` and
``hessian_trace`` with as many probes; it runs on a random subset of the grid
(``--loop-points``), after one untimed point (its first-call costs), and its time per point
is scaled to the grid. The map's time includes its own first-call costs (the plan probe).
The sharpness part times ``mc_sharpness`` against a set-weights-and-forward loop on the CNN and
on the digits MLP: each side's first (cold) call, then the fastest of 3 interleaved warm rounds.
Every ratio is measured in one run. Numbers go to benchmarks/README.md ("Curvature").
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import fastscape  # noqa: E402
from fastscape.curvature import (curvature_surface, hessian_eigenpairs, hessian_trace,  # noqa: E402
                                 mc_sharpness)
from _digits import DigitsCNN, DigitsMLP, load_digits_tensors  # noqa: E402


def _setup(samples: int):
    torch.manual_seed(0)
    xtr, ytr, _, _ = load_digits_tensors(0)
    x, y = xtr[:samples], ytr[:samples]
    model = DigitsCNN()
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval(), (x, y)


def _at(model, dirs, a, b):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in m.named_parameters():
            p += a * dirs[0][k] + b * dirs[1][k]
    return m


def curvature_map(args, model, data, dirs) -> dict:
    kw = dict(loss_fn=F.cross_entropy, device="cpu")
    axis = np.linspace(-1, 1, args.grid)
    lo, hi = (int(v) for v in args.rows.split(":")) if args.rows else (0, args.grid)
    grid = [axis[lo:hi], axis]  # a band of rows of the grid keeps its spacing (the warm starts' step)
    t0, c0 = time.perf_counter(), time.process_time()
    s = curvature_surface(model, data, dirs, grid=grid, max_iter=args.map_max_iter or args.max_iter, tol=args.tol,
                          trace_probes=args.probes, chunk_size=args.chunk, plan=args.plan,
                          warm_start=not args.cold, **kw)
    batched, batched_cpu = time.perf_counter() - t0, time.process_time() - c0
    n_points = s.loss.size
    rng = np.random.default_rng(0)
    picks = rng.choice(n_points, size=args.loop_points, replace=False)
    dev = {"lambda_max": [], "lambda_min": [], "trace": []}
    stderr = {"batched": [], "loop": []}
    loop_values = []
    _loop_point(args, model, data, dirs, s.coords[0][0], s.coords[1][0], kw)  # untimed: the loop's first-call costs
    t0, c0 = time.perf_counter(), time.process_time()
    for p in picks:
        i, j = divmod(int(p), s.loss.shape[1])
        top, low, trace, err = _loop_point(args, model, data, dirs, s.coords[0][i], s.coords[1][j], kw)
        for name, ref in (("lambda_max", top), ("lambda_min", low)):
            dev[name].append(abs(s.metrics[name][i, j] - ref) / max(abs(top), abs(low)))
        loop_values.append((top, low, i, j))
        dev["trace"].append(abs(s.metrics["trace"][i, j] - trace) / np.hypot(err, s.metrics["trace_stderr"][i, j]))
        stderr["batched"].append(float(s.metrics["trace_stderr"][i, j]))
        stderr["loop"].append(err)
    loop = (time.perf_counter() - t0) / args.loop_points * n_points
    loop_cpu = (time.process_time() - c0) / args.loop_points * n_points
    meta = s.meta["curvature"]
    ref_dev = {"batched": [], "loop": []}
    if args.reference:  # untimed: a 60-step, tol 1e-6 reference at the loop's points and where the map stopped early
        hard = [divmod(int(p), s.loss.shape[1]) for p in np.flatnonzero(s.metrics["converged"].ravel() == 0)]
        hard = [(i, j) for i, j in hard if (i * s.loss.shape[1] + j) not in set(picks.tolist())]
        for i, j in hard:
            top, low, _, _ = _loop_point(args, model, data, dirs, s.coords[0][i], s.coords[1][j], kw, trace=False)
            loop_values.append((top, low, i, j))
    for top, low, i, j in loop_values if args.reference else []:
        m = _at(model, dirs, s.coords[0][i], s.coords[1][j])
        r_top = hessian_eigenpairs(m, data, n=1, tol=1e-6, max_iter=60, **kw)[1][0]
        r_low = hessian_eigenpairs(m, data, n=1, tol=1e-6, max_iter=60, which="smallest", **kw)[1][0]
        scale = max(abs(r_top), abs(r_low))
        ref_dev["batched"].append(max(abs(s.metrics["lambda_max"][i, j] - r_top),
                                      abs(s.metrics["lambda_min"][i, j] - r_low)) / scale)
        ref_dev["loop"].append(max(abs(top - r_top), abs(low - r_low)) / scale)
    return {"points": n_points, "grid": f"{hi - lo}x{args.grid} of {args.grid}x{args.grid}", "batched_s": batched,
            "loop_s_scaled": loop, "ratio": loop / batched, "cpu_ratio": loop_cpu / batched_cpu,
            "batched_cpu_s": batched_cpu, "loop_cpu_s_scaled": loop_cpu, "mean_steps": meta["mean_steps"],
            "unconverged": meta["unconverged"], "plan": meta["plan"], "plan_seconds": meta["plan_seconds"],
            "max_rel_dev": {k: float(max(v)) for k, v in dev.items() if k != "trace"},
            "max_trace_dev_in_stderr": float(max(dev["trace"])),
            "mean_trace_stderr": {k: float(np.mean(v)) for k, v in stderr.items()},
            "reference_points": len(ref_dev["loop"]),
            "dev_from_reference": {k: {"max": float(max(v)), "median": float(np.median(v))}
                                   for k, v in ref_dev.items() if v},
            "map_worse_than_loop": int(np.sum(np.array(ref_dev["batched"]) > np.array(ref_dev["loop"])))}


def _loop_point(args, model, data, dirs, a, b, kw, trace=True):
    """The per-point loop at ``(a, b)``: ``(lambda_max, lambda_min, trace, trace_stderr)``."""
    m = _at(model, dirs, a, b)
    top = hessian_eigenpairs(m, data, n=1, tol=args.tol, max_iter=args.max_iter, **kw)[1][0]
    low = hessian_eigenpairs(m, data, n=1, tol=args.tol, max_iter=args.max_iter, which="smallest", **kw)[1][0]
    if not trace:
        return top, low, None, None
    tr, err = hessian_trace(m, data, tol=1e9, min_iter=max(2, args.probes), max_iter=max(2, args.probes),
                            block=args.probes, **kw)
    return top, low, tr, err


def sharpness_sampling(args, model, data) -> dict:
    """``mc_sharpness`` (the batched evaluator on ``ExplicitPoints``) against a set-weights-and-forward
    loop, on ``model``: the first (cold) call of each, then the fastest of 3 interleaved warm rounds."""
    n = sum(p.numel() for p in model.parameters())
    x, y = data
    m = copy.deepcopy(model)
    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()

    def batched():
        mc_sharpness(model, data, loss_fn=F.cross_entropy, sigma=1e-2, samples=args.mc_samples, device="cpu")

    def loop():
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for _ in range(args.mc_samples):  # the set-weights loop
                torch.nn.utils.vector_to_parameters(theta + 1e-2 * torch.randn(n, generator=g), m.parameters())
                F.cross_entropy(m(x), y).item()
    times = {"batched": [], "loop": []}
    for _ in range(4):
        for name, fn in (("batched", batched), ("loop", loop)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    cold = {k: v[0] for k, v in times.items()}
    warm = {k: min(v[1:]) for k, v in times.items()}
    return {"samples": args.mc_samples, "cold": cold, "warm": warm, "ratio": warm["loop"] / warm["batched"],
            "cold_ratio": cold["loop"] / cold["batched"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, default=21)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--loop-points", type=int, default=6)
    p.add_argument("--max-iter", type=int, default=20)
    p.add_argument("--map-max-iter", type=int, default=0,
                   help="the map's max_iter (default: --max-iter; the loop spends up to --max-iter at each end)")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--probes", type=int, default=4)
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--mc-samples", type=int, default=256)
    p.add_argument("--rows", default="", help="a band of rows a:b of the grid only (same spacing), e.g. 8:11")
    p.add_argument("--plan", default="auto", help="curvature_surface's plan: auto, vmap, per-point")
    p.add_argument("--cold", action="store_true", help="no warm starts (every point from a random vector)")
    p.add_argument("--skip-sharpness", action="store_true")
    p.add_argument("--skip-map", action="store_true", help="the sharpness part only")
    p.add_argument("--reference", action="store_true",
                   help="also compare both sides with a 60-step Lanczos reference (untimed) at the loop's points "
                        "and at every point the map left unconverged (the loop run there too, untimed)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, data = _setup(args.samples)
    dirs = fastscape.random_directions(model, 2, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; digits CNN "
          f"{sum(q.numel() for q in model.parameters())} parameters, {args.samples} images")
    out = {}
    if not args.skip_map:
        cm = curvature_map(args, model, data, dirs)
        print(f"curvature map {cm['grid']} ({cm['points']} points; plan {cm['plan']}, warm starts {not args.cold}): "
              f"batched {cm['batched_s']:.1f} s, per-point loop {cm['loop_s_scaled']:.1f} s (scaled from "
              f"{args.loop_points} points): {cm['ratio']:.1f}x; CPU seconds {cm['batched_cpu_s']:.1f} vs "
              f"{cm['loop_cpu_s_scaled']:.1f}: {cm['cpu_ratio']:.1f}x; mean Lanczos steps {cm['mean_steps']:.1f}, "
              f"unconverged {cm['unconverged']}, max deviation from the loop {cm['max_rel_dev']} of max|lambda|, "
              f"trace {cm['max_trace_dev_in_stderr']:.2f} combined stderr; mean trace stderr "
              f"{cm['mean_trace_stderr']}; plan probe {cm['plan_seconds']}"
              + (f"; deviation of lambda_max/min from a 60-step reference, of max|lambda|, at the loop's points and "
                 f"every point the map left unconverged ({cm['reference_points']} points): {cm['dev_from_reference']}, "
                 f"the map further off than the loop at {cm['map_worse_than_loop']}" if args.reference else ""))
        out["curvature_map"] = cm
    if args.skip_sharpness:
        return out
    torch.manual_seed(0)
    mlp = DigitsMLP().eval()
    for name, net in (("digits CNN", model), ("digits MLP (64-128-128-10)", mlp)):
        sh = sharpness_sampling(args, net, data)
        print(f"MC sharpness, {name}, {sh['samples']} samples: batched {sh['warm']['batched']:.3f} s warm "
              f"({sh['cold']['batched']:.3f} s cold), set-weights loop {sh['warm']['loop']:.3f} s warm "
              f"({sh['cold']['loop']:.3f} s cold): {sh['ratio']:.1f}x warm, {sh['cold_ratio']:.1f}x cold")
        out[f"sharpness {name}"] = sh
    return out


if __name__ == "__main__":
    main()
