"""Cost of recording a training path: time per training step with and without ``fastscape.record``.

Every variant trains its own copy of the same MLP on the same batches, one
step after another, interleaved in rounds (so machine noise hits all of them
alike); the best and the median round's time per step are reported, each with its
ratio to the plain step measured in the same run.

    PYTHONPATH=. python benchmarks/bench_recording.py [--hidden 512] [--steps 50] [--rounds 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import fastscape


def make_model(d_in: int, hidden: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=784)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="steps per round and variant")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch, args.d_in, generator=g).to(device),
                torch.randint(0, 10, (args.batch,), generator=g).to(device)) for _ in range(args.steps)]
    torch.manual_seed(0)
    base = make_model(args.d_in, args.hidden, 10).to(device)
    n_params = sum(p.numel() for p in base.parameters())
    tmp = Path(tempfile.mkdtemp(prefix="fastscape-bench-"))

    variants = {
        "no recording": None,
        "record every step": dict(every=1),
        "record every 10 steps": dict(every=10),
        "every step, spilled to disk": dict(every=1, out=tmp / "path.f32"),
    }
    models = {name: copy.deepcopy(base) for name in variants}
    opts = {name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for name, m in models.items()}
    times = {name: [] for name in variants}

    def run(name):
        model, opt, spec = models[name], opts[name], variants[name]
        rec = fastscape.record(model, opt, **spec) if spec is not None else None
        sync(device)
        t0 = time.perf_counter()
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if rec is not None:
                rec.log_loss(loss)
        sync(device)
        dt = time.perf_counter() - t0
        if rec is not None:
            rec.close()
        return dt / len(batches)

    for name in variants:  # warm-up
        run(name)
    names = list(variants)
    for r in range(args.rounds):  # rotate the order so no variant always runs first
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(run(name))

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"device: {device} ({where}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model: {args.d_in}-{args.hidden}-{args.hidden}-10 MLP, {n_params:,} parameters "
          f"({n_params * 4 / 2**20:.1f} MiB per float32 snapshot); batch {args.batch}; SGD with momentum")
    print(f"{args.rounds} rounds x {args.steps} steps per variant, interleaved in rotating order; "
          f"time per step (best round, median round)\n")
    best0, med0 = min(times["no recording"]), statistics.median(times["no recording"])
    print(f"{'variant':30s} {'best ms':>9s} {'ratio':>7s} {'median ms':>10s} {'ratio':>7s}")
    for name, ts in times.items():
        best, med = min(ts), statistics.median(ts)
        print(f"{name:30s} {1e3 * best:9.3f} {best / best0:7.3f} {1e3 * med:10.3f} {med / med0:7.3f}")

    # the snapshot alone (one flat copy of the parameters), which is all recording adds to a step
    for label, spec in (("one snapshot in memory", {}), ("one snapshot spilled to disk", dict(out=tmp / "s.f32"))):
        rec = fastscape.record(models["no recording"], every=None, **spec)
        cost = []
        for _ in range(max(20, args.rounds * 3)):
            sync(device)
            t0 = time.perf_counter()
            rec.snapshot()
            sync(device)
            cost.append(time.perf_counter() - t0)
        rec.close()
        best, med = min(cost), statistics.median(cost)
        print(f"{label:30s} {1e3 * best:9.3f} {best / best0:7.3f} {1e3 * med:10.3f} {med / med0:7.3f}")
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
