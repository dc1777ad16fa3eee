"""How a curvature map computes its products and starts: the timed plan choice (on injected
timings), the per-point plan with kept linearisations, warm starts and the deflated trace,
each against a per-point loop of ``hessian_eigenpairs`` or a dense float64 Hessian."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastscape
from fastscape._curvature import hvp
from fastscape.curvature import curvature_surface, hessian_eigenpairs
from tests.test_curvature import _case, _shifted
from tests.test_hessian import _dense


def test_pick_plan_weighs_the_build_against_the_products_it_saves():
    # per product of the chunk: vmap 1.0 s, a kept linearisation's product 0.5 s after a 3 s build
    seconds = {"vmap": 1.0, "build": 3.0, "pull": 0.5}
    assert hvp.pick_plan(seconds, products=10) == "per-point"  # 8 s against 10 s
    assert hvp.pick_plan(seconds, products=5) == "vmap"  # 5.5 s against 5 s: the build does not pay
    assert hvp.pick_plan({"vmap": 1.0, "build": 0.0, "pull": 1.0}, products=10) == "vmap"  # a tie keeps vmap
    assert hvp.pick_plan({"vmap": float("inf"), "build": 1.0, "pull": 9.0}, products=3) == "per-point"


def test_pick_workers_takes_the_threads_only_when_they_were_faster():
    assert hvp.pick_workers({"pull": 1.0, "pull-threads": 0.6}, threads=2) == 2
    assert hvp.pick_workers({"pull": 1.0, "pull-threads": 1.0}, threads=4) == 1  # a tie keeps one thread
    assert hvp.pick_workers({"pull": 1.0}, threads=2) == 1  # not timed (one thread, or graphs not kept)
    # the faster pull is the one pick_plan weighs against vmap
    assert hvp.pick_plan({"vmap": 1.0, "build": 0.0, "pull": 2.0, "pull-threads": 0.5}, products=4) == "per-point"


@pytest.mark.parametrize("plan", ["auto", "per-point"])
@pytest.mark.parametrize("threaded", [True, False])
def test_pulls_in_threads_follow_the_injected_timings_and_match_the_loop(plan, threaded, gen, monkeypatch):
    """Kept linearisations pulled in two threads (or one, as timed) give the loop's extremes;
    the process's operator threads are what they were before the call."""
    model, data, loss_fn = _case("cnn-ce", gen)
    seconds = {"vmap": 10.0, "build": 0.0, "pull": 1.0, "pull-threads": 0.5 if threaded else 2.0}
    monkeypatch.setattr(hvp, "_time", lambda label, fn, device: (seconds[label], fn()))
    calls = []
    real = hvp._operator_threads
    monkeypatch.setattr(hvp, "_operator_threads", lambda count: calls.append(count) or real(count))
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        dirs = fastscape.random_directions(model, 2, seed=0)
        s = curvature_surface(model, data, dirs, loss_fn=loss_fn, grid=[(-0.5, 0.5, 2), (-0.5, 0.5, 3)],
                              max_iter=51, tol=1e-6, trace_probes=2, device="cpu", dtype=torch.float64, plan=plan)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
    meta = s.meta["curvature"]
    assert meta["plan"] == "per-point" and meta["workers"] == (2 if threaded else 1)
    assert {k: meta["plan_seconds"][k] for k in ("pull", "pull-threads")} == {k: seconds[k] for k in ("pull", "pull-threads")}
    # the timing round pulls in threads either way; after it, only a threaded plan does
    assert calls and all(c == 1 for c in calls)
    assert len(calls) > hvp.ROUNDS if threaded else len(calls) == hvp.ROUNDS
    for i, a in enumerate(s.coords[0]):
        for j, b in enumerate(s.coords[1]):
            top, low = _loop_extremes(model, data, loss_fn, dirs, (a, b))
            assert s.metrics["lambda_max"][i, j] == pytest.approx(top, rel=1e-6, abs=1e-9)
            assert s.metrics["lambda_min"][i, j] == pytest.approx(low, rel=1e-6, abs=1e-9)


def _loop_extremes(model, data, loss_fn, dirs, coords):
    m = _shifted(model, dirs, coords)
    kw = dict(loss_fn=loss_fn, n=1, max_iter=60, device="cpu", dtype=torch.float64)
    return hessian_eigenpairs(m, data, **kw)[1][0], hessian_eigenpairs(m, data, which="smallest", **kw)[1][0]


@pytest.mark.parametrize("fast", ["vmap", "per-point"])
def test_auto_plan_follows_the_injected_timings_and_matches_the_loop(fast, gen, monkeypatch):
    model, data, loss_fn = _case("cnn-ce", gen)
    pull = 0.1 if fast == "per-point" else 10.0
    seconds = {"vmap": 1.0, "build": 0.0, "pull": pull, "pull-threads": 2 * pull}
    monkeypatch.setattr(hvp, "_time", lambda label, fn, device: (seconds[label], fn()))
    dirs = fastscape.random_directions(model, 2, seed=0)
    s = curvature_surface(model, data, dirs, loss_fn=loss_fn, grid=[np.array([0.5]), (-0.5, 0.5, 2)], max_iter=51,
                          tol=1e-6, trace_probes=2, device="cpu", dtype=torch.float64)
    assert s.meta["curvature"]["plan"] == fast
    timed = s.meta["curvature"]["plan_seconds"]
    assert timed == {k: seconds[k] for k in timed} and set(timed) >= {"vmap", "build", "pull"}
    for i, a in enumerate(s.coords[0]):
        for j, b in enumerate(s.coords[1]):
            top, low = _loop_extremes(model, data, loss_fn, dirs, (a, b))
            assert s.metrics["lambda_max"][i, j] == pytest.approx(top, rel=1e-6, abs=1e-9)
            assert s.metrics["lambda_min"][i, j] == pytest.approx(low, rel=1e-6, abs=1e-9)


def test_plans_and_warm_starts_give_the_loop_values(gen):
    """Every plan, with and without warm starts, on two rows (the second warm-started): the
    loop's extremes, and the dense Hessian's trace within 5 standard errors (10 probes)."""
    model, (x, y), loss_fn = _case("cnn-ce", gen)  # the MLP goes through both plans in test_curvature.py
    dirs = fastscape.random_directions(model, 2, seed=3)
    grid = [(-0.2, 0.2, 2), np.array([0.1])]  # two rows of one point: the second starts warm
    kw = dict(loss_fn=loss_fn, grid=grid, max_iter=60, tol=1e-7, trace_probes=10, device="cpu", dtype=torch.float64)
    runs = {(plan, warm): curvature_surface(model, (x, y), dirs, plan=plan, warm_start=warm, **kw)
            for plan, warm in (("vmap", True), ("per-point", True), ("per-point", False))}
    for i, a in enumerate(runs["vmap", True].coords[0]):
        for j, b in enumerate(runs["vmap", True].coords[1]):
            top, low = _loop_extremes(model, (x, y), loss_fn, dirs, (a, b))
            H, _ = _dense(_shifted(model, dirs, (a, b)), x, y, loss_fn)
            for key, s in runs.items():
                assert s.metrics["lambda_max"][i, j] == pytest.approx(top, rel=1e-6, abs=1e-9), key
                assert s.metrics["lambda_min"][i, j] == pytest.approx(low, rel=1e-6, abs=1e-9), key
                err = 5 * s.metrics["trace_stderr"][i, j] + 1e-9 * abs(float(torch.trace(H)))
                assert abs(s.metrics["trace"][i, j] - float(torch.trace(H))) <= err, key
    assert all(s.meta["curvature"]["plan"] == plan for (plan, _), s in runs.items())


def test_warm_starts_take_fewer_steps_on_a_fine_grid(gen):
    model, data, loss_fn = _case("cnn-ce", gen)
    dirs = fastscape.random_directions(model, 2, seed=0)
    kw = dict(loss_fn=loss_fn, grid=[(-0.05, 0.05, 3), np.array([0.0])], max_iter=40, tol=1e-4, trace_probes=1,
              device="cpu",
              dtype=torch.float64)
    warm = curvature_surface(model, data, dirs, warm_start=True, **kw)
    cold = curvature_surface(model, data, dirs, warm_start=False, **kw)
    assert warm.meta["curvature"]["mean_steps"] < cold.meta["curvature"]["mean_steps"]
    for name in ("lambda_max", "lambda_min"):
        np.testing.assert_allclose(warm.metrics[name], cold.metrics[name], rtol=1e-6, atol=1e-9)


def test_deflated_trace_is_unbiased_when_the_basis_is_partial(gen):
    """Krylov basis of 6 vectors on 51 parameters: the trace is the exact part plus Hutchinson on
    the rest; over many seeds its mean is the dense trace within a few standard errors."""
    model, (x, y), loss_fn = _case("cnn-ce", gen)
    dirs = fastscape.random_directions(model, 1, seed=0)
    H, _ = _dense(model, x, y, loss_fn)
    est, err = [], []
    for seed in range(8):
        with pytest.warns(fastscape.curvature.ConvergenceWarning):
            s = curvature_surface(model, (x, y), dirs, loss_fn=loss_fn, grid=[np.array([0.0])], max_iter=6, tol=1e-12,
                                  trace_probes=4, seed=seed, device="cpu", dtype=torch.float64)
        est.append(s.metrics["trace"][0])
        err.append(s.metrics["trace_stderr"][0])
    mean, sem = np.mean(est), np.std(est, ddof=1) / np.sqrt(len(est))
    assert abs(mean - float(torch.trace(H))) <= 4 * sem
    assert np.all(np.asarray(err) > 0)


@pytest.mark.parametrize("shape", [(4, 5), (4, 8, 3), (2, 5)])
def test_affine_batch_norm_is_eval_batch_norm(shape, gen):
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    c = shape[1]
    stats = [torch.randn(c, generator=gen, dtype=torch.float64), torch.rand(c, generator=gen, dtype=torch.float64) + .5]
    w, b = torch.randn(c, generator=gen, dtype=torch.float64), torch.randn(c, generator=gen, dtype=torch.float64)
    for training in (False, True):
        ref = F.batch_norm(x, *[t.clone() for t in stats], w, b, training=training, eps=1e-3)
        with hvp.AffineBatchNorm():
            out = F.batch_norm(x, *[t.clone() for t in stats], w, b, training=training, eps=1e-3)
        torch.testing.assert_close(out, ref)


def test_plan_must_be_a_known_name(gen):
    model, data, loss_fn = _case("mlp-mse", gen)
    dirs = fastscape.random_directions(model, 1, seed=0)
    with pytest.raises(ValueError, match="`plan` must be one of \\['auto', 'vmap', 'per-point'\\]; got 'fast'"):
        curvature_surface(model, data, dirs, loss_fn=loss_fn, plan="fast")


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("plan", ["vmap", "per-point"])
def test_a_map_inside_no_grad_or_inference_mode_is_the_same_map(context, plan, gen):
    """Evaluation scripts often run under ``torch.no_grad()`` or ``torch.inference_mode()``:
    the Hessian is taken all the same, and equals the one taken outside."""
    model, data, loss_fn = _case("cnn-ce", gen)
    dirs = fastscape.random_directions(model, 2, seed=0)
    kw = dict(loss_fn=loss_fn, grid=[(-0.5, 0.5, 2), (-0.5, 0.5, 2)], max_iter=51, tol=1e-6, trace_probes=2,
              device="cpu", dtype=torch.float64, plan=plan)
    outside = curvature_surface(model, data, dirs, **kw)
    with context():
        inside = curvature_surface(model, data, dirs, **kw)
    for name in ("lambda_max", "lambda_min", "trace"):
        np.testing.assert_allclose(inside.metrics[name], outside.metrics[name], rtol=1e-8, atol=1e-10)


def test_a_loss_linear_in_the_parameters_has_a_zero_hessian_in_every_plan():
    """``x @ w`` with a loss linear in its output: the gradient does not depend on the weights,
    so every eigenvalue and the trace are 0 (the kept linearisation has no graph to pull through)."""
    model = torch.nn.Linear(3, 1, bias=False).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    dirs = fastscape.random_directions(model, 1, seed=0)
    for plan in ("vmap", "per-point"):
        s = curvature_surface(model, (x, torch.zeros(8, 1, dtype=torch.float64)), dirs,
                              loss_fn=lambda out, y: (out - y).mean(), grid=(-1, 1, 3), max_iter=3,
                              trace_probes=2, device="cpu", dtype=torch.float64, plan=plan)
        for name in ("lambda_max", "lambda_min", "trace"):
            np.testing.assert_array_equal(s.metrics[name], np.zeros(3), err_msg=f"{plan}: {name}")
