"""The GPU check: fastscape's CUDA path measured and checked in one prepared run.

    PYTHONPATH=. python3 benchmarks/gpu_check.py                 # on the GPU machine; writes to $OUT
    PYTHONPATH=. python3 benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpucheck   # CPU rehearsal

Sections, each with its own time budget and each recorded even when it fails
(the script itself never stops at one failure):

1. ``env``: GPU, driver, torch, CUDA and cuDNN versions; measured matmul
   TFLOP/s (fp32 with TF32 off, TF32, bf16; random operands, CUDA events,
   median) and device copy bandwidth (bytes read + written).
2. ``tests``: the test suite's CUDA tests (``pytest tests -k cuda``: the tests
   marked ``@pytest.mark.cuda`` and those named for CUDA), in a subprocess that
   runs while section 3 does.
3. ``agreement``: every strategy that applies, on the device, in fp32, TF32 and
   bf16, against a float64 per-point loop on the CPU, for an MLP, a CNN with
   BatchNorm, a transformer encoder and an LSTM (the fallback path). fp32 must
   agree within 1e-5 (relative, the largest over the grid); the TF32 and bf16
   deviations are stated.
4. ``report``: ``benchmarks/report.py``'s GPU workloads (seed-000 at
   2001x2001, the MNIST-size MLP at 201x201, the CNN at 51x51, the
   transformer, ResNet-20 on 10 000 CIFAR-shaped images at 21x21), each in its
   own subprocess, each mode against the per-point loop on the same device in
   the same run, with peak memory, the fraction of the measured matmul peak
   and the largest deviation from a float64 loop.

Precision modes: ``fp32`` turns TF32 off for cuBLAS *and* cuDNN (PyTorch leaves
cuDNN's TF32 on by default); ``tf32`` turns both on; ``bf16`` passes
``dtype="bfloat16"`` to ``fastscape.loss_surface`` (parameters, data and
activations in bf16, the loss in float32) and runs the loop in bf16 too.
fastscape follows PyTorch's TF32 switches; it has no precision argument.

Everything goes under one folder (``$OUT`` when set, else ``--out``):
``gpu_check.log`` (what was printed), ``gpu_check.json`` (every number),
``gpu_check.md`` (the tables) and ``pytest.txt``. Exit status 0 when every
check passed, 1 when one failed or did not run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

#: seconds per section on the GPU machine (the whole run stays under 8 minutes:
#: 7 minutes of budget plus process start); --quick has its own
BUDGETS = {"env": 30, "tests": 150, "agreement": 100, "report": 300}
QUICK_BUDGETS = {"env": 30, "tests": 150, "agreement": 90, "report": 240}
#: each GPU workload's share of the report's budget (seconds), headline workloads first
WORKLOAD_BUDGETS = {"seed000": 45, "mnist": 50, "cnn": 60, "transformer": 45, "resnet20": 100}
#: fp32 on the device against float64 on the CPU: the largest relative deviation allowed
FP32_TOL = 1e-5
#: deviations above these are flagged (stated, not a failure): TF32 has a 10-bit mantissa, bf16 an 7-bit one
LOOSE_TOL = {"tf32": 1e-2, "bf16": 5e-2}
#: multiples of the planned chunk timed after the modes (fp32): what the chunk plan leaves on
#: the table on this device; the largest may not fit and then exercises the out-of-memory back-off
SWEEP = {"seed000": (0.25, 4, 16), "mnist": (0.25, 4, 16)}
DEFAULT_STRATEGIES = ["auto", "vmap", "affine", "mlp", "loop", "vmap_compiled", "affine_compiled"]


class Log:
    """Print and append to the log file, flushed at every line."""

    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def __call__(self, *parts):
        text = " ".join(str(p) for p in parts)
        print(text, flush=True)
        self.f.write(text + "\n")


def _err(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------- 1. env


def section_env(device: str, quick: bool, log) -> dict:
    import fastscape
    from benchmarks.report import describe_limits, machine_limits

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "numpy": np.__version__,
           "fastscape": getattr(fastscape, "__version__", "?"), "fastscape_file": fastscape.__file__,
           "cpu_threads": torch.get_num_threads(), "cuda_available": torch.cuda.is_available()}
    try:
        env["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        env["git"] = "?"
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count, gpu_memory_gib=total / 2**30,
                   gpu_free_gib=free / 2**30, cudnn=torch.backends.cudnn.version(),
                   default_tf32={"cuda.matmul": torch.backends.cuda.matmul.allow_tf32,
                                 "cudnn": torch.backends.cudnn.allow_tf32})
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,"
                                  "clocks.max.sm,power.limit", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=15)
            env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.SubprocessError) as err:
            env["nvidia_smi"] = _err(err)
    for k, v in env.items():
        log(f"  {k}: {v}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    env["limits"] = machine_limits(device, quick)
    log("  " + describe_limits(env["limits"]))
    return env


# --------------------------------------------------------------------------- 2. tests


def start_tests(out_dir: str, quick: bool) -> tuple[subprocess.Popen, str]:
    """``pytest tests -k cuda`` in the background, output to ``pytest.txt``."""
    path = os.path.join(out_dir, "pytest.txt")
    cmd = [sys.executable, "-m", "pytest", "tests", "-k", "cuda", "-q", "-rfEs", "-p", "no:cacheprovider",
           "--continue-on-collection-errors"]
    f = open(path, "w")
    f.write("$ " + " ".join(cmd) + "\n")
    f.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
    proc._log_file = f  # closed in finish_tests
    return proc, path


def finish_tests(proc, path, deadline: float, log) -> dict:
    try:
        proc.wait(timeout=max(1.0, deadline - time.time()))
        status = "ran"
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()
        status = "timeout"
    proc._log_file.close()
    text = open(path).read()
    summary = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|error)", ln)]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed)",
                                                summary[-1] if summary else "")}
    res = {"status": status, "returncode": proc.returncode, "summary": summary[-1] if summary else "",
           "counts": counts, "skip_reasons": sorted({m for m in re.findall(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", text)})}
    # pytest: 0 all passed, 5 nothing collected (no CUDA test at all)
    res["ok"] = status == "ran" and proc.returncode == 0 and counts.get("failed", 0) == 0 \
        and counts.get("error", 0) + counts.get("errors", 0) == 0
    log(f"  pytest -k cuda: {status}, rc {proc.returncode}: {res['summary'] or '(no summary line)'}")
    for r in res["skip_reasons"]:
        log(f"    skipped: {r}")
    if not res["ok"]:
        log("  pytest output tail:\n" + text[-3000:])
    return res


# --------------------------------------------------------------------------- 3. agreement


def agreement_models():
    """(name, model, x, y, loss_fn): small instances of the four families."""
    import torch.nn.functional as F
    from torch import nn

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 5))
    yield "mlp", mlp, torch.randn(512, 20, generator=g), torch.randint(0, 5, (512,), generator=g), F.cross_entropy

    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(16, 4))
    x = torch.randn(128, 3, 16, 16, generator=g)
    cnn.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            cnn(x)
    cnn.eval()
    yield "cnn_batchnorm", cnn, x, torch.randint(0, 4, (128,), generator=g), F.cross_entropy

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 32)
            layer = nn.TransformerEncoderLayer(32, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
            self.head = nn.Linear(32, 3)

        def forward(self, tokens):
            return self.head(self.encoder(self.embed(tokens)).mean(dim=1))

    yield ("transformer", Encoder(), torch.randint(0, 50, (64, 16), generator=g),
           torch.randint(0, 3, (64,), generator=g), F.cross_entropy)

    class LSTMRegressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 16, batch_first=True)
            self.head = nn.Linear(16, 1)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

    yield "lstm", LSTMRegressor(), torch.randn(64, 12, 4, generator=g), torch.randn(64, 1, generator=g), F.mse_loss


def modes(device: str) -> list[str]:
    """The precision modes worth running: TF32 is a GPU mode (on CPU it is fp32 again)."""
    from benchmarks.workloads import PRECISIONS

    return PRECISIONS if device == "cuda" else [m for m in PRECISIONS if m != "tf32"]


def strategy_names() -> list[str]:
    """The registry's names where it can be read (a private path that moves), else the known ones."""
    for mod in ("fastscape._core.strategies", "fastscape._strategies"):
        try:
            registry = __import__(mod, fromlist=["STRATEGIES"]).STRATEGIES
            names = ["auto"] + [n for n in registry]
            return sorted(names, key=lambda n: (n.endswith("_compiled"), n != "auto"))
        except (ImportError, AttributeError):
            continue
    return DEFAULT_STRATEGIES


def agreement_worker(device: str, quick: bool, budget_s: float, modes: list[str]) -> None:
    """Prints one ``AGREE {json}`` line per (model, mode, strategy)."""
    import copy

    import fastscape
    from benchmarks.workloads import loop_values, precision

    t0 = time.perf_counter()
    dev = torch.device(device)
    grid = (-1.0, 1.0, 5)
    axis = np.linspace(-1.0, 1.0, 5)
    coords = torch.tensor([[a, b] for a in axis for b in axis], dtype=torch.float64)
    names = strategy_names()
    cases = []
    for name, model, x, y, loss_fn in agreement_models():
        dirs = list(fastscape.random_directions(model, 2, seed=0))
        ref, _ = loop_values(dict(model=model, x=x, y=y, loss_fn=loss_fn), coords, dirs, None, dtype=torch.float64)
        ref = np.asarray(ref).reshape(5, 5)
        on_dev = copy.deepcopy(model).to(dev)
        dirs_dev = [{k: v.to(dev) for k, v in d.items()} for d in dirs]
        cases.append((name, on_dev, (x.to(dev), y.to(dev)), dirs_dev, loss_fn, ref))
    # the order is the priority under the budget: every eager strategy in every mode, then the
    # compiled ones (each compiles for seconds to tens of seconds), fp32 first
    plan = [(mode, case, s) for compiled in (False, True) for mode in modes for case in cases
            for s in names if s.endswith("_compiled") == compiled]
    print("AGREE_PLAN " + json.dumps([[c[0], m, s] for m, c, s in plan]), flush=True)
    compile_s = 30.0  # a guess until one compiled item has been timed
    for mode, (name, model, data, dirs, loss_fn, ref), s in plan:
        rec = {"model": name, "mode": mode, "strategy": s}
        left = budget_s - (time.perf_counter() - t0)
        if left <= 0 or (s.endswith("_compiled") and left < 1.5 * compile_s):
            rec["status"] = "not run (time budget)"
            print("AGREE " + json.dumps(rec), flush=True)
            continue
        t = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught, precision(mode, dev.type) as dtype:
                warnings.simplefilter("always")
                surf = fastscape.loss_surface(model, data, dirs, loss_fn=loss_fn, grid=grid, device=device,
                                              strategy=s, progress=False, dtype=dtype)
            rel = float(np.max(np.abs(surf.loss - ref) / np.maximum(np.abs(ref), 1e-12)))
            tol = FP32_TOL if mode == "fp32" else LOOSE_TOL[mode]
            rec.update(max_rel_dev=rel, tol=tol, ran=surf.meta["strategy"], fallback=surf.meta.get("fallback"),
                       status="pass" if rel <= tol else ("FAIL" if mode == "fp32" else "over"),
                       warnings=sorted({f"{w.category.__name__}: {str(w.message)[:120]}" for w in caught}))
            if not np.all(np.isfinite(surf.loss)):
                rec["status"] = "FAIL"
                rec["note"] = "non-finite values"
        except Exception as err:  # record and go on
            msg = str(err)
            if isinstance(err, ValueError) and "cannot evaluate this model" in msg:
                rec.update(status="n/a", reason=msg.split(": ", 1)[-1][:200])
            elif s != "auto" and "vmap" in s and "Batching rule not implemented" in msg:
                # a vmap strategy asked for by name on a model without a batching rule: "auto" falls back
                rec.update(status="n/a", reason=(msg.splitlines() or [""])[0][:200])
            else:
                rec.update(status="ERROR", error=_err(err), trace=traceback.format_exc()[-1500:])
        rec["seconds"] = time.perf_counter() - t
        if s.endswith("_compiled") and rec["status"] != "n/a":
            compile_s = max(rec["seconds"], 5.0)
        print("AGREE " + json.dumps(rec), flush=True)


def section_agreement(device: str, quick: bool, budget_s: float, log) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--agree-worker", "--device", device,
           "--budget", str(max(1.0, budget_s - 15))] + (["--quick"] if quick else [])
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    status = "ran"
    try:
        out, err = proc.communicate(timeout=budget_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        status = "timeout"
    recs = [json.loads(ln[6:]) for ln in out.splitlines() if ln.startswith("AGREE ")]
    plan = [json.loads(ln[11:]) for ln in out.splitlines() if ln.startswith("AGREE_PLAN ")]
    done = {(r["model"], r["mode"], r["strategy"]) for r in recs}
    for model, mode, strategy in (plan[0] if plan else []):  # what a killed worker did not reach
        if (model, mode, strategy) not in done:
            recs.append({"model": model, "mode": mode, "strategy": strategy,
                         "status": "not run (worker stopped at the time limit)"})
    res = {"status": status, "returncode": proc.returncode, "records": recs}
    if proc.returncode != 0:
        res["stderr_tail"] = err[-3000:]
        log(f"  agreement worker: {status}, rc {proc.returncode}; stderr tail:\n{err[-3000:]}")
    table = agreement_table(recs, modes(device))
    for line in table.splitlines():
        log("  " + line)
    for r in recs:
        if r["status"] in ("FAIL", "ERROR", "over"):
            log(f"  {r['model']} {r['mode']} {r['strategy']}: {r['status']} "
                f"{r.get('error', '')}{r.get('trace', '')[-600:]}")
    # the goal is fp32 within FP32_TOL for every strategy that applies; TF32 and bf16 deviations
    # (and errors) are stated. A compiled strategy left out for time is stated; an eager one is a failure.
    fails = [r for r in recs if r["mode"] == "fp32" and r["status"] in ("FAIL", "ERROR")]
    fp32_run = [r for r in recs if r["mode"] == "fp32" and r["status"] in ("pass", "FAIL")]
    eager_missing = [r for r in recs if r["mode"] == "fp32" and r["status"].startswith("not run")
                     and not r["strategy"].endswith("_compiled")]
    res["other_mode_errors"] = [f"{r['model']} {r['mode']} {r['strategy']}: {r.get('error', '')}" for r in recs
                                if r["mode"] != "fp32" and r["status"] == "ERROR"]
    res["ok"] = not fails and bool(fp32_run) and not eager_missing and bool(plan)
    res["not_run"] = [f"{r['model']} {r['mode']} {r['strategy']}" for r in recs if r["status"].startswith("not run")]
    res["fp32_max_rel_dev"] = max((r["max_rel_dev"] for r in fp32_run), default=None)
    for mode in modes(device):
        devs = [r["max_rel_dev"] for r in recs if r["mode"] == mode and "max_rel_dev" in r]
        res[f"{mode}_max_rel_dev"] = max(devs) if devs else None
        if devs:
            log(f"  {mode}: largest relative deviation from float64 over every model and strategy: {max(devs):.2e}")
    return res


def agreement_table(recs: list[dict], modes: list[str]) -> str:
    """One row per model and strategy, one column per mode: the largest relative deviation."""
    cells: dict[tuple, dict] = {}
    for r in recs:
        cells.setdefault((r["model"], r["strategy"]), {})[r["mode"]] = r
    lines = ["| model | strategy | " + " | ".join(modes) + " |", "|---|---|" + "---:|" * len(modes)]
    for (model, strategy), by_mode in cells.items():
        row = []
        for mode in modes:
            r = by_mode.get(mode)
            if r is None:
                row.append("")
            elif "max_rel_dev" in r:
                mark = "" if r["status"] == "pass" else f" {r['status']}"
                fell = " (loop fallback)" if r.get("fallback") and mode == modes[0] else ""
                row.append(f"{r['max_rel_dev']:.1e}{mark}{fell}")
            else:
                row.append(r["status"])
        lines.append(f"| {model} | {strategy} | " + " | ".join(row) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- 4. report


def section_report(device: str, quick: bool, deadline: float, limits: dict, log) -> dict:
    from benchmarks.report import HEADER, row_lines, run_workload
    from benchmarks.workloads import GPU_WORKLOADS

    log(HEADER)
    rows = []
    for i, name in enumerate(GPU_WORKLOADS):
        left = deadline - time.time()
        # the workloads after this one keep a little room each
        reserve = 8.0 * (len(GPU_WORKLOADS) - i - 1)
        timeout = min(WORKLOAD_BUDGETS[name], left - reserve)
        if timeout < 10:
            rows.append({"name": name, "label": name, "status": "not run (time budget)", "modes": {}, "errors": []})
            log(f"{name}: not run (time budget)")
            continue
        # on CPU (the rehearsal) bf16 is emulated and slow: the first workload runs it, the rest fp32
        precisions = modes(device) if device == "cuda" or i == 0 else ["fp32"]
        r = run_workload(name, device=device, quick=quick, sizes="gpu", precisions=precisions, limits=limits,
                         timeout_s=timeout, log=log, sweep=SWEEP.get(name, ()))
        rows.append(r)
        for line in row_lines(r):
            log(line)
        for e in r.get("errors", []):
            log(f"  {name}: {e}")
        fp = r.get("modes", {}).get("fp32", {})
        for n in fp.get("notes", []):
            log(f"  {name}: {n}")
        for e in r.get("sweep", []):
            log(f"  {name}: chunk x{e['factor']:g} = {e['chunk']}: "
                + (f"{e['pps']:,.0f} points/s, final chunk {e['final_chunk']}, {e['oom_backoffs']} out-of-memory "
                   f"back-offs" if "pps" in e else e.get("error", "?")))
    return {"rows": rows}


def goals(results: dict) -> list[tuple[str, str, str]]:
    """The issue's goals: (goal, PASS/FAIL/not measured, the numbers)."""
    out = []
    tests, agree = results.get("tests", {}), results.get("agreement", {})
    out.append(("every CUDA test passes", ("PASS" if tests.get("ok") else "FAIL") if tests else "not run",
                tests.get("summary", "")))
    fp = agree.get("fp32_max_rel_dev")
    out.append(("fp32 agreement within 1e-5 of float64", ("PASS" if agree.get("ok") else "FAIL") if agree else "not run",
                f"largest {fp:.1e}" if fp is not None else ""))
    rows = {r["name"]: r for r in results.get("report", {}).get("rows", [])}

    def mode(name, m):
        return rows.get(name, {}).get("modes", {}).get(m, {})

    s = mode("seed000", "fp32")
    if "pps" in s:
        ok = s["ratio"] >= 50 and s["pps"] >= 20e6
        out.append(("seed-000: >= 50x the loop and >= 20 M points/s", "PASS" if ok else "FAIL",
                    f"{s['ratio']:.0f}x, {s['pps'] / 1e6:.1f} M points/s"))
    else:
        out.append(("seed-000: >= 50x the loop and >= 20 M points/s", "not measured", s.get("error", "")))
    b = mode("mnist", "bf16")
    if "pps" in b:
        ok = b["fraction_of_matmul_peak"] >= 0.30 and b["ratio"] >= 10
        out.append(("MNIST-size MLP, bf16: >= 30% of the bf16 matmul peak and >= 10x the loop",
                    "PASS" if ok else "FAIL", f"{b['fraction_of_matmul_peak']:.0%} of peak, {b['ratio']:.1f}x"))
    else:
        out.append(("MNIST-size MLP, bf16: >= 30% of the bf16 matmul peak and >= 10x the loop", "not measured",
                    b.get("error", "")))
    slower = [f"{n} {m} {v['ratio']:.2f}x" for n, r in rows.items() for m, v in r.get("modes", {}).items()
              if "ratio" in v and v["ratio"] < 1]
    measured = any("ratio" in v for r in rows.values() for v in r.get("modes", {}).values())
    out.append(("no workload slower than the loop", ("FAIL" if slower else "PASS") if measured else "not measured",
                ", ".join(slower) or "-"))
    return out


# --------------------------------------------------------------------------- output


def write_outputs(out_dir: str, results: dict) -> None:
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(out_dir, "gpu_check.md"), "w") as f:
        f.write(markdown(results))


def markdown(results: dict) -> str:
    from benchmarks.report import markdown_table

    env = results.get("env", {})
    lim = env.get("limits", {})
    lines = [f"# GPU check ({results.get('device')}{', quick' if results.get('quick') else ''})", ""]
    if env:
        lines += [f"- device: {env.get('gpu', 'CPU')} ({env.get('nvidia_smi', '')}); torch {env.get('torch')}, "
                  f"CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}, triton {env.get('triton')}, "
                  f"python {env.get('python')}; fastscape {env.get('fastscape')} at {env.get('git')}"]
        if lim:
            mm = lim["matmul"]
            lines += [f"- measured: matmul {lim['matmul_size']}^3 fp32 {mm['fp32'] / 1e12:.3g} TFLOP/s, "
                      f"TF32 {mm['tf32'] / 1e12:.3g}, bf16 {mm['bf16'] / 1e12:.3g}; copy "
                      f"{lim['copy_bytes_per_s'] / 1e12:.3g} TB/s (read + write)"]
    lines += [f"- run: {results.get('seconds', 0):.0f} s; sections: "
              + ", ".join(f"{k} {v:.0f} s" for k, v in results.get("section_seconds", {}).items()), ""]
    lines += ["## Goals", "", "| goal | result | measured |", "|---|---|---|"]
    lines += [f"| {g} | {r} | {m} |" for g, r, m in goals(results)]
    t = results.get("tests")
    if t:
        lines += ["", "## CUDA tests", "", f"`pytest tests -k cuda`: {t.get('status')}, rc {t.get('returncode')}: "
                  f"{t.get('summary')}"]
    a = results.get("agreement")
    if a:
        lines += ["", "## Agreement with a float64 CPU loop (largest relative deviation over a 5x5 grid)", "",
                  agreement_table(a.get("records", []), modes(results.get("device", "cuda")))]
    r = results.get("report")
    if r:
        lines += ["", "## Workloads (each mode against the per-point loop in the same mode, same device, same run)",
                  "", markdown_table(r["rows"])]
        sweeps = [(row["name"], e) for row in r["rows"] for e in row.get("sweep", [])]
        if sweeps:
            lines += ["", "## Chunk sweep (fp32, auto's strategy, chunk given)", "",
                      "| workload | chunk | points/s | final chunk | out-of-memory back-offs | peak MiB |",
                      "|---|---:|---:|---:|---:|---:|"]
            lines += [f"| {n} | {e['chunk']} (x{e['factor']:g}) | " + (
                f"{e['pps']:,.0f} | {e['final_chunk']} | {e['oom_backoffs']} | "
                f"{e['peak_mib'] if e['peak_mib'] is None else round(e['peak_mib'])} |" if "pps" in e
                else f"{e.get('error', '?')} | | | |") for n, e in sweeps]
    errs = results.get("errors", [])
    if errs:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in errs]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="shrink every workload (the CPU rehearsal)")
    p.add_argument("--out", help="output folder (default: $OUT, else ./gpu_check_out)")
    p.add_argument("--sections", default="env,tests,agreement,report", help="comma-separated subset to run")
    p.add_argument("--agree-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=100.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.agree_worker:
        agreement_worker(args.device, args.quick, args.budget, modes(args.device))
        return 0
    out_dir = args.out or os.environ.get("OUT") or "gpu_check_out"
    os.makedirs(out_dir, exist_ok=True)
    # compiled kernels go to a cache of this run's own: a worker killed at its time limit
    # can leave a half-written kernel behind, which must not break other runs' compiles
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="gpu_check_inductor_"))
    log = Log(os.path.join(out_dir, "gpu_check.log"))
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    sections = args.sections.split(",")
    results: dict = {"device": args.device, "quick": args.quick, "argv": sys.argv, "budgets": budgets,
                     "section_seconds": {}, "errors": []}
    t0 = time.time()
    log(f"== fastscape GPU check: device {args.device}{', quick' if args.quick else ''}; output {out_dir}")

    def run(name, fn):
        log(f"== {name} (budget {budgets[name]} s)")
        t = time.time()
        try:
            results[name] = fn()
        except Exception as err:  # record it and go on with the next section
            results[name] = {"ok": False, "error": _err(err), "trace": traceback.format_exc()[-3000:]}
            results["errors"].append(f"{name}: {_err(err)}")
            log(f"  {name} failed: {_err(err)}\n{traceback.format_exc()[-3000:]}")
        results["section_seconds"][name] = time.time() - t
        results["seconds"] = time.time() - t0
        write_outputs(out_dir, results)

    if "env" in sections:
        run("env", lambda: section_env(args.device, args.quick, log))
    limits = results.get("env", {}).get("limits")
    if limits is None:
        from benchmarks.report import machine_limits

        limits = machine_limits(args.device, quick=True)
    tests = None
    if "tests" in sections:
        t_tests = time.time()
        tests = start_tests(out_dir, args.quick)  # runs beside the agreement check
    if "agreement" in sections:
        run("agreement", lambda: section_agreement(args.device, args.quick, budgets["agreement"], log))
    if tests is not None:
        deadline = t_tests + budgets["tests"]
        run("tests", lambda: finish_tests(*tests, deadline, log))
        results["section_seconds"]["tests"] = time.time() - t_tests  # wall time beside the agreement
    if "report" in sections:
        deadline = time.time() + budgets["report"]
        run("report", lambda: section_report(args.device, args.quick, deadline, limits, log))
    results["goals"] = goals(results)
    results["seconds"] = time.time() - t0
    write_outputs(out_dir, results)
    log(f"== goals ({results['seconds']:.0f} s in all)")
    for g, r, m in results["goals"]:
        log(f"  {r:<12} {g}: {m}")
    log(f"== wrote {out_dir}/gpu_check.log, gpu_check.json, gpu_check.md, pytest.txt")
    ran_ok = all(results.get(s, {}).get("ok", True) for s in ("tests", "agreement")) and not results["errors"]
    return 0 if ran_ok and all(r != "FAIL" for _, r, _ in results["goals"]) else 1


if __name__ == "__main__":
    sys.exit(main())
