"""One table over the benchmark workloads: points per second of fastscape's evaluator
(``strategy="auto"``, warm) and of the per-point loop in the same run, their ratio,
peak memory, and the fraction of the machine's limit.

    PYTHONPATH=. python benchmarks/report.py [--quick] [--only seed000,mlp64]
    PYTHONPATH=. python benchmarks/report.py --device cuda [--precisions fp32,tf32,bf16] [--json out.json]

Each workload runs in its own subprocess so that its peak resident memory
(``ru_maxrss``) is its own, and a crash (a CUDA error poisons the whole
process) or a time-out costs that workload only; on CUDA the peak is
``torch.cuda.max_memory_allocated``. The machine's limits are measured at the
start of the same run: matmul FLOP/s in fp32, TF32 and bf16 (1024^3 on CPU,
8192^3 on CUDA, timed with CUDA events), copy bandwidth and tanh Gelem/s. A
workload's limit time per point is max(matmul FLOPs / matmul rate, transcendental
elements / tanh rate) for the *direct* computation; above 100% means the
evaluator avoided work (the affine path's shared first layer, its per-row
activations).

``--device cuda`` uses the GPU sizes of :mod:`benchmarks.workloads` (seed-000 at
2001x2001, the MNIST-size MLP at 201x201, ...; ``--sizes cpu`` for the CPU
table's) and every precision mode asked for runs the per-point loop too, in the
same mode, plus the largest relative deviation of the mode's surface from a
float64 per-point loop at a few grid points.

``cold s`` is the first call in the worker's fresh process (probing, and compiling where auto
decides it pays, included; the whole report shares one compile cache, empty at its start unless
``TORCHINDUCTOR_CACHE_DIR`` is set), ``cold x`` its rate over the loop's. On CPU the report ends
with the small-then-big sequence of :mod:`benchmarks.cold_warm` (``--sequence``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: the compiled strategy measured beside auto's eager pick (the loop's: vmap_compiled)
COMPILED_VARIANT = {"vmap": "vmap_compiled", "affine": "affine_compiled", "mlp": "affine_compiled",
                    "loop": "vmap_compiled"}


# --------------------------------------------------------------------------- the machine


def _timed(fn, device, reps: int, warmup: int = 2) -> float:
    """Median seconds of one call of ``fn`` (CUDA events on CUDA)."""
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        for _ in range(reps):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
    else:
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def _matmul_seconds(n: int, dtype, dev, reps: int) -> float:
    """Median seconds of an n x n x n matmul on random operands (never zeros: they run faster)."""
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    c = torch.empty(n, n, device=dev, dtype=dtype)
    return _timed(lambda: torch.mm(a, b, out=c), dev, reps)


def _copy_seconds(size: int, dev, reps: int) -> float:
    """Median seconds of a device-to-device copy of ``size`` bytes."""
    src = torch.randn(size // 4, device=dev)
    dst = torch.empty_like(src)
    return _timed(lambda: dst.copy_(src), dev, reps)


def machine_limits(device: str, quick: bool = False) -> dict:
    """Measured ceilings of ``device``: matmul FLOP/s per precision mode
    (``matmul``: fp32 with TF32 off, tf32, bf16; random operands, never zeros),
    device copy bandwidth (bytes read + written per second) and tanh elements/s.
    ``matmul_flops`` is the fp32 rate (the CPU table's limit)."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    n = (2048 if quick else 8192) if cuda else (512 if quick else 1024)
    out = {"matmul": {}, "matmul_size": n}
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        for mode, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                  ("bf16", torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            out["matmul"][mode] = 2 * n**3 / _matmul_seconds(n, dtype, dev, 10 if cuda else 3)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    if not cuda:
        out["matmul"]["tf32"] = out["matmul"]["fp32"]  # no TF32 on CPU: the same kernels
    size = ((256 if quick else 1024) << 20) if cuda else (64 << 20)
    out["copy_bytes_per_s"] = 2 * size / _copy_seconds(size, dev, 10 if cuda else 3)
    u = torch.randn(1 << (24 if cuda else 16), device=dev)
    o = torch.empty_like(u)
    out["tanh_elems"] = u.numel() / _timed(lambda: torch.tanh(u, out=o), dev, 20 if cuda else 200)
    out["matmul_flops"] = out["matmul"]["fp32"]
    return out


def work_per_point(w: dict, samples: int = 256) -> tuple[float, float]:
    """(matmul/conv FLOPs, transcendental elements) of one forward over all the data,
    counted on the first ``samples`` samples and scaled to the whole data."""
    from torch.utils.flop_counter import FlopCounterMode

    model, x = w["model"].eval(), w["x"]
    n = x.shape[0]
    part = x[:samples]
    elems = [0]
    hooks = [m.register_forward_hook(lambda m, i, o: elems.__setitem__(0, elems[0] + o.numel()))
             for m in model.modules() if isinstance(m, (torch.nn.Tanh, torch.nn.Sigmoid, torch.nn.GELU))]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder kernel has no FLOP formula
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(part)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in hooks:
            h.remove()
    scale = n / part.shape[0]
    return float(counter.get_total_flops()) * scale, float(elems[0]) * scale


# --------------------------------------------------------------------------- one workload


def _emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def _err(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"


def matmul_floor(w: dict, limits: dict) -> float:
    """Points per second at the measured fp32 matmul rate when the first Linear/Conv is computed
    once per batch (the affine rule) and every later layer's matmul FLOPs are paid per point: how
    fast the mlp path could run if elementwise work and memory traffic cost nothing."""
    from torch.utils.flop_counter import FlopCounterMode

    model, x = w["model"].eval(), w["x"]
    first = next((m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))), None)
    if first is None:
        return float("nan")
    with torch.no_grad(), FlopCounterMode(display=False) as total:
        model(x)
    with torch.no_grad(), FlopCounterMode(display=False) as head:
        first(x)
    return limits["matmul_flops"] / max(1.0, float(total.get_total_flops() - head.get_total_flops()))


def run_one(name: str, quick: bool, device: str, limits: dict, precisions: list[str], sizes: str,
            budget_s: float = float("inf"), compiled_variant: bool = False, repeat_below_s: float = 60.0,
            ref_points: int = 6, sweep: tuple = ()) -> dict:
    """Measure one workload in every precision mode; prints a ``RESULT`` line after each step
    (the parent keeps the last one, so a time-out keeps what was measured).

    ``sweep``: multiples of the planned chunk to time afterwards (fp32, auto's strategy,
    ``chunk_size`` given), while the budget lasts: how much the chunk plan leaves on the
    table on this device. A chunk too large for memory exercises the out-of-memory back-off.
    """
    import fastscape
    from benchmarks.workloads import build, directions_of, loop_values, precision

    t_start = time.perf_counter()
    left = lambda: budget_s - (time.perf_counter() - t_start)  # noqa: E731
    w = build(name, quick, sizes)
    dirs, origin = directions_of(w)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model = w["model"].to(dev)
    data = (w["x"].to(dev), w["y"].to(dev))
    wd = dict(w, model=model, x=data[0], y=data[1])
    lo, hi, res = w["grid"]
    res = int(res)
    result = {"name": name, "label": w["label"], "points": res * res, "device": str(dev), "modes": {},
              "errors": []}
    flops, trans = work_per_point(wd)
    result["gflop_per_point"] = flops / 1e9
    result["transcendentals_per_point"] = trans
    _emit(result)  # built: a time-out from here on says so
    rng = np.random.default_rng(0)
    loop_idx = rng.choice(res * res, size=min(res * res, w["loop_points"]), replace=False)
    ref_idx = loop_idx[:ref_points]

    def surface(strategy="auto", dtype="float32"):
        return fastscape.loss_surface(model, data, dirs, origin=origin, loss_fn=w["loss_fn"], grid=w["grid"],
                                      device=device, progress=False, strategy=strategy, dtype=dtype)

    def coords_of(surf, idx):
        a0, a1 = surf.coords[0], surf.coords[1]
        return torch.tensor([[float(a0[i // res]), float(a1[i % res])] for i in idx], dtype=torch.float64)

    ref = None
    for mode in precisions:
        if left() <= 0:
            result["errors"].append(f"{mode}: not run (the workload's time budget was spent)")
            break
        m = {"mode": mode}
        result["modes"][mode] = m
        try:
            with precision(mode, dev.type) as dtype:
                if cuda:
                    torch.cuda.synchronize(dev)
                    torch.cuda.reset_peak_memory_stats(dev)
                rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                t = time.perf_counter()
                first = surface(dtype=dtype)  # probes strategies, compiles if it pays
                m["first_s"] = time.perf_counter() - t
                m["first_pps"] = first.meta["points_per_second"]
                surf, m["warm"] = first, False
                if m["first_s"] < repeat_below_s and left() > 2 * m["first_s"]:
                    t = time.perf_counter()
                    surf = surface(dtype=dtype)
                    m["warm"], m["warm_wall_s"] = True, time.perf_counter() - t
                m["pps"] = surf.meta["points_per_second"]
                m["eval_s"] = surf.meta["seconds"]
                m["peak_mib"] = (torch.cuda.max_memory_allocated(dev) if cuda
                                 else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024) / 2**20
                m["peak_kind"] = "torch.cuda.max_memory_allocated" if cuda else "ru_maxrss growth"
                m.update(strategy=surf.meta["strategy"], chunk=surf.meta["chunk_size"],
                         batch=surf.meta["batch_size"], oom_backoffs=surf.meta.get("oom_backoffs", 0),
                         memory_plan=surf.meta.get("memory_plan", {}))
                m["notes"] = [n for n in first.meta["notes"] if n.startswith("auto")]
                m["repeat_diff"] = float(np.nanmax(np.abs(first.loss - surf.loss)))
                flat = surf.loss.reshape(-1)
                # the per-point loop in the same mode, on the same device, same weights and data
                sub = coords_of(surf, loop_idx)
                loop_s = min(10.0, max(1.0, left() / 6))
                _, m["loop_pps"] = loop_values(wd, sub, dirs, origin, warmup=2 if cuda else 1, max_seconds=loop_s,
                                               dtype=torch.bfloat16 if dtype == "bfloat16" else None)
                m["ratio"] = m["pps"] / m["loop_pps"]
                if mode == "fp32" and m["strategy"] == "mlp":
                    m["matmul_floor_pps"] = matmul_floor(wd, limits)
                peak = limits.get("matmul", {}).get(mode, limits.get("matmul_flops"))
                m["matmul_peak_flops"] = peak
                m["fraction_of_matmul_peak"] = flops * m["pps"] / peak if peak else float("nan")
                tanh = limits.get("tanh_elems")
                limit_s = max(flops / peak if peak else 0.0, trans / tanh if tanh else 0.0)
                m["limit"] = limit_s * m["pps"]
            if ref is None and left() > 0:  # float64 loop on the same device: the reference
                t = time.perf_counter()
                ref_vals, _ = loop_values(wd, coords_of(surf, ref_idx), dirs, origin, dtype=torch.float64)
                ref = np.asarray(ref_vals)
                result["ref"] = {"points": [int(i) for i in ref_idx], "loss": ref.tolist(),
                                 "seconds": time.perf_counter() - t, "dtype": "float64", "device": str(dev)}
            if ref is not None:
                got = flat[ref_idx[:len(ref)]]
                m["max_rel_dev_f64"] = float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-12)))
        except Exception as err:  # record, never hide, and go on with the next mode
            m["error"] = _err(err)
            result["errors"].append(f"{mode}: {m['error']}")
            if cuda:
                torch.cuda.empty_cache()
        _emit(result)
    base = result["modes"].get("fp32", {})
    if sweep and "strategy" in base:
        result["sweep"] = []
        for factor in sweep:
            chunk = max(1, int(base["chunk"] * factor))
            if left() < 10 or chunk == base["chunk"]:
                continue
            entry = {"factor": factor, "chunk": chunk}
            try:
                with precision("fp32", dev.type):
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(dev)
                    fastscape.loss_surface(model, data, dirs, origin=origin, loss_fn=w["loss_fn"], grid=w["grid"],
                                           device=device, progress=False, strategy=base["strategy"],
                                           chunk_size=chunk, batch_size=base["batch"])  # warm-up: compiles
                    s2 = fastscape.loss_surface(model, data, dirs, origin=origin, loss_fn=w["loss_fn"],
                                                grid=w["grid"], device=device, progress=False,
                                                strategy=base["strategy"], chunk_size=chunk, batch_size=base["batch"])
                entry.update(pps=s2.meta["points_per_second"], final_chunk=s2.meta["chunk_size"],
                             oom_backoffs=s2.meta.get("oom_backoffs", 0),
                             peak_mib=torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None)
            except Exception as err:  # record and go on
                entry["error"] = _err(err)
            result["sweep"].append(entry)
            _emit(result)
    if compiled_variant and "fp32" in result["modes"] and "strategy" in result["modes"]["fp32"] and left() > 0:
        # the compiled variant of auto's eager pick, warm (its first call compiles): the speed
        # of repeated surfaces of one model, which auto does not assume for a single call
        base = result["modes"]["fp32"]
        name_c = COMPILED_VARIANT.get(base["strategy"].replace("_compiled", ""), "vmap_compiled")
        comp = {"strategy": name_c, "pps": float("nan"), "diff": float("nan"), "chunk": 0}
        try:
            with precision("fp32", dev.type):
                warm = surface()
                surface(name_c)
                c = surface(name_c)
            comp.update(pps=c.meta["points_per_second"], chunk=c.meta["chunk_size"],
                        diff=float(np.nanmax(np.abs(c.loss - warm.loss) / np.maximum(np.abs(warm.loss), 1e-12))))
        except Exception as err:  # report, never hide: a failed variant is printed
            comp["error"] = _err(err)
        result["compiled"] = comp
        _emit(result)
    result["seconds"] = time.perf_counter() - t_start
    result["done"] = True
    _emit(result)
    return result


# --------------------------------------------------------------------------- the table


def run_workload(name: str, *, device: str, quick: bool, sizes: str, precisions: list[str], limits: dict,
                 timeout_s: float, compiled_variant: bool = False, log=print, env=None, sweep: tuple = ()) -> dict:
    """:func:`run_one` in a subprocess (its own process group), killed after ``timeout_s``.
    Returns the last result it printed, with ``status`` "ok", "failed" or "timeout"."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--limits", json.dumps(limits),
           "--device", device, "--sizes", sizes, "--precisions", ",".join(precisions),
           "--budget", str(max(1.0, timeout_s - 15))] + (["--quick"] if quick else []) \
        + (["--compiled-variant"] if compiled_variant else ["--no-compiled-variant"]) \
        + (["--sweep", ",".join(str(f) for f in sweep)] if sweep else [])
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=env)
    status = "ok"
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        status = "timeout"
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and its compile workers
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    res = json.loads(lines[-1][7:]) if lines else {"name": name, "label": name, "modes": {}, "errors": []}
    if status == "ok" and (proc.returncode != 0 or not res.get("done")):
        status = "failed"
    res["status"], res["returncode"], res["wall_s"] = status, proc.returncode, time.perf_counter() - t
    if status != "ok":
        res["stderr_tail"] = err[-3000:]
        log(f"{name}: {status} (rc {proc.returncode}, {res['wall_s']:.0f} s); stderr tail:\n{err[-3000:]}")
    return res


HEADER = (f"{'workload':<50} {'mode':<5} {'points':>8} {'points/s':>12} {'loop pts/s':>10} {'ratio':>7} "
          f"{'peak MiB':>8} {'%peak':>6} {'dev f64':>8} {'cold s':>7} {'cold x':>7}  {'strategy (chunk x batch)':<28}")


def cold_ratio(r: dict, m: dict) -> float:
    """The cold call's rate (the first call in the worker's fresh process: probing and compiling
    included) over the per-point loop's."""
    return r["points"] / m["first_s"] / m["loop_pps"]


def row_lines(r: dict) -> list[str]:
    """The table's lines for one workload result: one per precision mode."""
    lines = []
    if not r.get("modes"):
        return [f"{r.get('label', r['name']):<50} {'':<5} {r.get('status', 'failed').upper()}"]
    for mode, m in r["modes"].items():
        if "error" in m or "pps" not in m:
            lines.append(f"{r['label']:<50} {mode:<5} FAILED: {m.get('error', 'incomplete')[:100]}")
            continue
        pick = f"{m['strategy']} ({m['chunk']} x {m['batch']})"
        dev = f"{m['max_rel_dev_f64']:.1e}" if "max_rel_dev_f64" in m else "-"
        lines.append(f"{r['label']:<50} {mode:<5} {r['points']:>8} {m['pps']:>12,.0f} {m['loop_pps']:>10,.0f} "
                     f"{m['ratio']:>6.1f}x {m['peak_mib']:>8.0f} {m['fraction_of_matmul_peak']:>6.1%} {dev:>8} "
                     f"{m['first_s']:>7.1f} {cold_ratio(r, m):>6.1f}x  {pick:<28}"
                     + ("" if m.get("warm") else "  (one call, not warm)"))
    return lines


def markdown_table(rows: list[dict]) -> str:
    """workload | mode | loop points/s | fastscape points/s | ratio | % of matmul peak | peak MiB | ..."""
    out = ["| workload | mode | points | loop points/s | fastscape points/s | ratio | fraction of matmul peak "
           "| peak memory MiB | max rel. dev. from float64 | strategy (chunk x batch) | cold call s | cold ratio |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        if not r.get("modes"):
            out.append(f"| {r.get('label', r['name'])} | - | - | {r.get('status', 'failed')} | | | | | | | |")
        for mode, m in r.get("modes", {}).items():
            if "pps" not in m:
                out.append(f"| {r['label']} | {mode} | {r['points']} | failed: {m.get('error', 'incomplete')[:80]} "
                           "| | | | | | | |")
                continue
            dev = f"{m['max_rel_dev_f64']:.1e}" if "max_rel_dev_f64" in m else "-"
            out.append(f"| {r['label']} | {mode} | {r['points']:,} | {m['loop_pps']:,.0f} | {m['pps']:,.0f} | "
                       f"{m['ratio']:.1f}x | {m['fraction_of_matmul_peak']:.1%} | {m['peak_mib']:.0f} | {dev} | "
                       f"{m['strategy']} ({m['chunk']} x {m['batch']}) | {m['first_s']:.1f} | "
                       f"{cold_ratio(r, m):.1f}x |")
    return "\n".join(out) + "\n"


def describe_limits(limits: dict) -> str:
    mm = limits["matmul"]
    return (f"machine: matmul {limits['matmul_size']}^3 fp32 {mm['fp32'] / 1e12:.3g} TFLOP/s, "
            f"tf32 {mm['tf32'] / 1e12:.3g}, bf16 {mm['bf16'] / 1e12:.3g}; copy "
            f"{limits['copy_bytes_per_s'] / 1e9:.0f} GB/s (read + write); tanh {limits['tanh_elems'] / 1e9:.2f} Gelem/s")


def main(argv=None):
    from benchmarks.workloads import GPU_WORKLOADS, PRECISIONS, WORKLOADS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller grids and data (a rehearsal; minutes on 2 cores)")
    p.add_argument("--only", help="comma-separated workloads (default: the sizes' set)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sizes", choices=["cpu", "gpu"], help="workload sizes (default: gpu on cuda, else cpu)")
    p.add_argument("--precisions", help=f"comma-separated modes among {PRECISIONS} (default: fp32)")
    p.add_argument("--precision", choices=PRECISIONS, help="one mode (same as --precisions MODE)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per workload (subprocess killed after)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--compiled-variant", dest="compiled_variant", action="store_true", default=None,
                   help="also time the compiled variant of auto's pick (default: with --sizes cpu)")
    p.add_argument("--no-compiled-variant", dest="compiled_variant", action="store_false")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--limits", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=float("inf"), help=argparse.SUPPRESS)
    p.add_argument("--sweep", default="", help="multiples of the planned chunk to time too, e.g. 0.25,4,16")
    p.add_argument("--sequence", default="seed000",
                   help="CPU: workloads whose small-then-big sequence is run (benchmarks/cold_warm.py); '' for none")
    args = p.parse_args(argv)
    sizes = args.sizes or ("gpu" if args.device == "cuda" else "cpu")
    precisions = (args.precisions.split(",") if args.precisions else [args.precision or "fp32"])
    bad = [m for m in precisions if m not in PRECISIONS]
    if bad:
        p.error(f"--precisions: unknown mode(s) {bad}; expected among {PRECISIONS}")
    compiled_variant = sizes == "cpu" if args.compiled_variant is None else args.compiled_variant
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: --device cuda asked for, but no CUDA device is available")
        return 0
    if args.worker:
        run_one(args.worker, args.quick, args.device, json.loads(args.limits), precisions, sizes,
                budget_s=args.budget, compiled_variant=compiled_variant,
                sweep=tuple(float(f) for f in args.sweep.split(",") if f))
        return 0
    names = args.only.split(",") if args.only else (GPU_WORKLOADS if sizes == "gpu" else WORKLOADS)
    # a worker killed at --timeout mid-compile can leave a half-written kernel in inductor's cache
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="fastscape_report_inductor_"))
    limits = machine_limits(args.device, args.quick)
    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {dev_name}; torch {torch.__version__}; sizes {sizes}{' quick' if args.quick else ''}; "
          f"precisions {','.join(precisions)}")
    print(describe_limits(limits))
    print(HEADER)
    print("-" * len(HEADER), flush=True)
    rows = []
    for name in names:
        r = run_workload(name, device=args.device, quick=args.quick, sizes=sizes, precisions=precisions,
                         limits=limits, timeout_s=args.timeout, compiled_variant=compiled_variant,
                         sweep=tuple(float(f) for f in args.sweep.split(",") if f))
        rows.append(r)
        for line in row_lines(r):
            print(line, flush=True)
    for r in rows:
        for e in r.get("errors", []):
            print(f"  {r['name']}: {e}")
        for mode, m in r.get("modes", {}).items():
            for n in m.get("notes", []) if mode == precisions[0] else []:
                print(f"  {r['name']}: {n}")
            if m.get("matmul_floor_pps"):
                print(f"  {r['name']}: matmul floor with the first layer once per batch: "
                      f"{m['matmul_floor_pps']:,.0f} points/s; auto runs at {m['pps'] / m['matmul_floor_pps']:.0%} of it")
        comp = r.get("compiled")
        if comp and "error" in comp:
            print(f"  {r['name']}: {comp['strategy']} failed: {comp['error']}")
        elif comp:
            print(f"  {r['name']}: {comp['strategy']} warm, chunk {comp['chunk']}: {comp['pps']:,.0f} points/s; "
                  f"largest relative difference from auto's surface {comp['diff']:.1e}")
    # the order a user calls in: small grids first, then the big one, in one fresh process
    sequences = []
    for name in [n for n in args.sequence.split(",") if n and n in names and args.device == "cpu"]:
        from benchmarks import cold_warm

        grid_sizes = cold_warm.DEFAULT_SIZES[name][:3] if args.quick else cold_warm.DEFAULT_SIZES[name]
        print(f"\nsequence small_then_big, {name}: grids {', '.join(f'{k}x{k}' for k in grid_sizes)}; the big "
              "call should cost what it costs alone (the cold call above)")
        seq = cold_warm.run(name, "small_then_big", grid_sizes, fresh_cache=False)
        cold_warm.show(seq)
        sequences.append(seq)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev_name, "torch": torch.__version__, "limits": limits, "rows": rows,
                       "sequences": sequences}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
