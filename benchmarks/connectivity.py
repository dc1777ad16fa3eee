"""Mode connectivity against a per-point loop, ratios measured in one run.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/connectivity.py [--reps 3] [--n 51]

Three jobs on a digits-size CNN with BatchNorm (8x8 images, two conv layers, 512 images), an
MLP (784-256-128-10, 1000 samples) and the same MLP with BatchNorm1d after each hidden layer, each timed as fastscape does it and as a plain loop that
loads every point's weights into a copy of the model and runs it (the dnn-mode-connectivity /
open_lth way):

- barrier scan: ``connect.barrier`` on ``--n`` points of the straight line;
- barrier scan with BatchNorm recalibrated at every point from 512 images in 4 batches (the loop:
  reset the statistics, momentum=None, train-mode passes, then eval);
- curve evaluation: ``connect.evaluate_curve`` (``--n`` points on the Bezier curve and ``--n`` on
  the line, one call).

Every job is run once to warm up, then ``--reps`` times; the minimum is printed with the ratio and
the largest relative difference of the values (they must agree to float32 rounding).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(256, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def _models(kind: str):
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        if kind == "cnn":
            m = DigitsCNN()
        elif kind == "mlp":
            m = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
        else:  # "mlp-bn"
            m = nn.Sequential(nn.Linear(784, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 128),
                              nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))
        if kind != "mlp":
            m.train()
            with torch.no_grad():
                m(torch.randn(64, *((1, 8, 8) if kind == "cnn" else (784,))) + seed)
        out.append(m.eval())
    g = torch.Generator().manual_seed(2)
    shape = (512, 1, 8, 8) if kind == "cnn" else (1000, 784)
    return out, (torch.randn(*shape, generator=g), torch.randint(0, 10, (shape[0],), generator=g))


def _loop(template, states, weights, data, calibration=None) -> np.ndarray:
    """The baseline: each point's weights copied into a model, BatchNorm recalibrated when asked, evaluated."""
    model = copy.deepcopy(template)
    params = model.state_dict(keep_vars=True)
    out = []
    for w in weights:
        with torch.no_grad():
            for k, v in params.items():
                if v.is_floating_point():
                    v.copy_(sum(float(c) * s[k] for c, s in zip(w, states)))
            if calibration is not None:
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.reset_running_stats()
                        m.momentum = None
                model.train()
                for x, _ in calibration:
                    model(x)
            model.eval()
            out.append(float(F.cross_entropy(model(data[0]), data[1])))
    return np.array(out)


def _best(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return min(times), value


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--n", type=int, default=51)
    args = p.parse_args(argv)
    import fastscape.connect as connect

    warnings.simplefilter("ignore")
    with open("/proc/loadavg") as f:
        print("load", " ".join(f.read().split()[:3]), "threads", torch.get_num_threads())
    n = args.n
    t = np.linspace(0, 1, n)
    line_w = np.stack([1 - t, t], 1)
    for kind in ("cnn", "mlp", "mlp-bn"):
        (a, b), data = _models(kind)
        states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in (a, b)]
        jobs = [("barrier scan", lambda: connect.barrier(a, b, data, loss_fn=F.cross_entropy, n=n,
                                                         device="cpu").values["loss"],
                 lambda: _loop(a, states, line_w, data))]
        if kind != "mlp":
            cal = [(data[0][i:i + 128], data[1][i:i + 128]) for i in range(0, 512, 128)]
            jobs.append(("barrier scan + BN recalibration",
                         lambda: connect.barrier(a, b, data, loss_fn=F.cross_entropy, n=n, recalibrate=cal,
                                                 device="cpu").values["loss"],
                         lambda: _loop(a, states, line_w, data, cal)))
        curve = connect.train_curve(a, b, data, loss_fn=F.cross_entropy, epochs=1)
        anchors = [curve.a, curve.bend, curve.b]
        cw = np.concatenate([curve.weights(t), np.stack([1 - t, 0 * t, t], 1)])
        jobs.append(("curve evaluation (curve + line)",
                     lambda: np.concatenate(list(_profile(connect, curve, a, data, n))),
                     lambda: _loop(a, anchors, cw, data)))
        for name, fast, slow in jobs:
            t_fast, v_fast = _best(fast, args.reps)
            t_slow, v_slow = _best(slow, args.reps)
            diff = float(np.max(np.abs(v_fast - v_slow) / np.abs(v_slow)))
            points = len(v_fast)
            print(f"{kind:4s} {name:34s} {points:4d} points  fastscape {t_fast:7.3f} s  loop {t_slow:7.3f} s  "
                  f"ratio {t_slow / t_fast:6.1f}x  max rel diff {diff:.1e}", flush=True)


def _profile(connect, curve, model, data, n):
    prof = connect.evaluate_curve(curve, model, data, loss_fn=F.cross_entropy, n=n, device="cpu")
    return prof.curve["loss"], prof.line["loss"]


if __name__ == "__main__":
    main()
