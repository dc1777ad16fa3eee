"""One table over the benchmark workloads: points per second of fastscape's evaluator
(``strategy="auto"``, warm) and of the per-point loop in the same run, their ratio,
peak memory, and the fraction of the machine's limit.

    PYTHONPATH=. python benchmarks/report.py [--quick] [--only seed000,mlp64] [--device cuda]

Each workload runs in its own subprocess so that its peak resident memory
(``ru_maxrss``) is its own; on CUDA the peak is ``torch.cuda.max_memory_allocated``.
The machine's limit is measured at the start of the same run: float32 matmul
GFLOP/s (1024^3) and tanh Gelem/s on an in-cache vector. A workload's limit time
per point is max(matmul FLOPs / matmul rate, transcendental elements / tanh rate)
for the *direct* computation; above 100% means the evaluator avoided work
(the affine path's shared first layer, its per-row activations).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastscape._core.evaluator import COMPILED_VARIANT  # noqa: E402  (after the path is set)


def machine_limits(device: str) -> dict:
    dev = torch.device(device)
    a = torch.randn(1024, 1024, device=dev)
    u = torch.randn(1 << 16, device=dev)
    o = torch.empty_like(u)

    def rate(fn, work, reps):
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return work * reps / (time.perf_counter() - t)

    return {"matmul_flops": rate(lambda: a @ a, 2 * 1024**3, 20),
            "tanh_elems": rate(lambda: torch.tanh(u, out=o), u.numel(), 500)}


def work_per_point(w: dict) -> tuple[float, float]:
    """(matmul/conv FLOPs, transcendental elements) of one forward over the data."""
    from torch.utils.flop_counter import FlopCounterMode

    model, x = w["model"].eval(), w["x"]
    elems = [0]
    hooks = [m.register_forward_hook(lambda m, i, o: elems.__setitem__(0, elems[0] + o.numel()))
             for m in model.modules() if isinstance(m, (torch.nn.Tanh, torch.nn.Sigmoid, torch.nn.GELU))]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return float(counter.get_total_flops()), float(elems[0])


def run_one(name: str, quick: bool, device: str, limits: dict, precision: str) -> dict:
    import fastscape
    from benchmarks.workloads import build, directions_of, loop_points_per_second
    from fastscape._core.grid import make_axes, mesh

    w = build(name, quick)
    dirs, origin = directions_of(w)
    coords = torch.from_numpy(mesh(make_axes(w["grid"], 2)))
    rng = np.random.default_rng(0)
    subset = coords[rng.choice(len(coords), size=min(len(coords), w["loop_points"]), replace=False)]
    cuda = device == "cuda"
    model = w["model"].to(device)
    data = (w["x"].to(device), w["y"].to(device))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def surface(strategy="auto"):
        import contextlib

        ctx = contextlib.nullcontext()
        if precision == "bf16":
            ctx = torch.autocast("cuda", dtype=torch.bfloat16)
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        with ctx:
            return fastscape.loss_surface(model, data, dirs, origin=origin, loss_fn=w["loss_fn"], grid=w["grid"],
                                          device=device, progress=False, strategy=strategy)

    t = time.perf_counter()
    first = surface()  # probes strategies, compiles if it pays
    first_s = time.perf_counter() - t
    warm = surface()
    peak = (torch.cuda.max_memory_allocated() if cuda
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024)
    # the baseline, in this same process, on a random subset of the same grid
    w_cpu = dict(w, model=model, x=data[0], y=data[1])
    loop_pps = loop_points_per_second(w_cpu, subset, dirs, origin if origin is not None else None)
    pps = warm.meta["points_per_second"]
    # the compiled variant of auto's eager pick, warm (its first call compiles): the speed
    # of repeated surfaces of one model, which auto does not assume for a single call
    eager = warm.meta["strategy"].replace("_compiled", "")
    compiled_name = COMPILED_VARIANT.get(eager, "vmap_compiled")  # the loop's: vmap_compiled
    comp = {"strategy": compiled_name, "pps": float("nan"), "diff": float("nan"), "chunk": 0}
    try:
        surface(compiled_name)
        c = surface(compiled_name)
        comp = {"strategy": compiled_name, "pps": c.meta["points_per_second"], "chunk": c.meta["chunk_size"],
                "diff": float(np.nanmax(np.abs(c.loss - warm.loss) / np.maximum(np.abs(warm.loss), 1e-12)))}
    except Exception as err:  # report, never hide: a failed variant is printed
        comp["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    flops, trans = work_per_point(w_cpu)
    limit_s = max(flops / limits["matmul_flops"], trans / limits["tanh_elems"])
    err = float(np.nanmax(np.abs(first.loss - warm.loss)))
    if precision != "fp32":  # the opt-in's error against a float32 surface
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        exact = fastscape.loss_surface(model, data, dirs, origin=origin, loss_fn=w["loss_fn"], grid=w["grid"],
                                       device=device, progress=False)
        err = float(np.nanmax(np.abs(warm.loss - exact.loss) / np.maximum(np.abs(exact.loss), 1e-12)))
    return {"name": name, "label": w["label"], "points": int(coords.shape[0]), "pps": pps, "loop_pps": loop_pps,
            "ratio": pps / loop_pps, "peak_mib": peak / 2**20, "strategy": warm.meta["strategy"],
            "chunk": warm.meta["chunk_size"], "batch": warm.meta["batch_size"], "first_s": first_s,
            "fraction": limit_s * pps, "gflop_per_point": flops / 1e9, "repeat_diff": err,
            "compiled": comp, "notes": [n for n in first.meta["notes"] if n.startswith("auto")]}


def main(argv=None):
    from benchmarks.workloads import WORKLOADS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller grids (a few minutes on 2 cores)")
    p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"],
                   help="CUDA only: TF32 matmuls or bf16 autocast (opt-ins; error vs fp32 reported)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--limits", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: --device cuda asked for, but no CUDA device is available")
        return 0
    if args.worker:
        res = run_one(args.worker, args.quick, args.device, json.loads(args.limits), args.precision)
        print("RESULT " + json.dumps(res))
        return 0
    limits = machine_limits(args.device)
    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {dev_name}; torch {torch.__version__}; precision {args.precision}")
    print(f"machine: matmul {limits['matmul_flops'] / 1e9:.0f} GFLOP/s, tanh {limits['tanh_elems'] / 1e9:.2f} Gelem/s")
    header = (f"{'workload':<48} {'points':>8} {'points/s':>11} {'loop pts/s':>10} {'ratio':>7} "
              f"{'peak MiB':>8} {'limit':>6} {'first s':>7}  {'strategy (chunk x batch)':<28} "
              f"{'compiled pts/s':>14} {'ratio':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.only.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--limits", json.dumps(limits),
               "--device", args.device, "--precision", args.precision] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"{name:<48} FAILED\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(line[0][7:])
        rows.append(r)
        pick = f"{r['strategy']} ({r['chunk']} x {r['batch']})"
        print(f"{r['label']:<48} {r['points']:>8} {r['pps']:>11,.0f} {r['loop_pps']:>10,.0f} {r['ratio']:>6.1f}x "
              f"{r['peak_mib']:>8.0f} {r['fraction']:>6.0%} {r['first_s']:>7.1f}  "
              f"{pick:<28} "
              f"{r['compiled']['pps']:>14,.0f} {r['compiled']['pps'] / r['loop_pps']:>6.1f}x", flush=True)
    for r in rows:
        if args.precision != "fp32":
            print(f"  {r['name']}: largest relative error of {args.precision} vs fp32: {r['repeat_diff']:.2e}")
        for n in r["notes"]:
            print(f"  {r['name']}: {n}")
        comp = r["compiled"]
        if "error" in comp:
            print(f"  {r['name']}: {comp['strategy']} failed: {comp['error']}")
        else:
            print(f"  {r['name']}: {comp['strategy']} warm, chunk {comp['chunk']}: largest relative difference "
                  f"from auto's surface {comp['diff']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
