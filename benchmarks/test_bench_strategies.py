"""pytest-benchmark micro cases: one chunk-sized job per strategy on two small workloads.

    PYTHONPATH=. python -m pytest benchmarks/ --benchmark-only

Not collected by the main test run (pyproject's testpaths is ["tests"]).
"""

import pytest
import torch

import fastscape
from benchmarks.workloads import build, directions_of, loop_points_per_second
from fastscape._core.grid import make_axes, mesh

STRATEGIES = ["vmap", "affine", "loop"]


@pytest.fixture(scope="module", params=["seed000", "mlp64"])
def workload(request):
    w = build(request.param, quick=True)
    w["grid"] = (-1.0, 1.0, 21)
    w["dirs"], w["origin_"] = directions_of(w)
    return w


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_surface(benchmark, workload, strategy):
    w = workload
    surf = benchmark(lambda: fastscape.loss_surface(w["model"], (w["x"], w["y"]), w["dirs"], origin=w["origin_"],
                                                    loss_fn=w["loss_fn"], grid=w["grid"], strategy=strategy,
                                                    device="cpu", progress=False))
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["points_per_second"] = surf.loss.size / benchmark.stats.stats.mean


def test_set_weights_loop(benchmark, workload):
    w = workload
    coords = torch.from_numpy(mesh(make_axes(w["grid"], 2)))[:50]
    pps = benchmark(lambda: loop_points_per_second(w, coords, w["dirs"], w["origin_"]))
    benchmark.extra_info["points_per_second"] = pps
