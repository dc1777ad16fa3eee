"""Chunk planning from free memory, and the out-of-memory back-off."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastscape
from fastscape._core import plan as _plan
from fastscape._core import points as _points
from fastscape._core.memory import ENV_BUDGET, free_memory, parse_bytes, plan_chunk
from fastscape._core.params import model_parameters
from tests.models import MLP
from tests.reference import loop_surface


@pytest.mark.parametrize("text, expected", [("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29),
                                            ("64kb", 64 << 10), ("1000000", 1_000_000), (4096, 4096)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "-3M", "0", "12X"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError, match="FASTSCAPE_MEMORY_BUDGET` must be a .*number of bytes"):
        parse_bytes(text)


def test_free_memory_cpu_reads_the_kernel(monkeypatch):
    monkeypatch.delenv(ENV_BUDGET, raising=False)
    free, source = free_memory("cpu")
    with open("/proc/meminfo") as f:
        avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    assert source in ("/proc/meminfo", "cgroup limit")
    assert 0 < free <= avail * 1.5  # the kernel's number moves a little between reads


def test_free_memory_env_budget_wins(monkeypatch):
    monkeypatch.setenv(ENV_BUDGET, "3M")
    assert free_memory("cpu") == (3 << 20, ENV_BUDGET)


def test_plan_fits_the_budget(monkeypatch):
    monkeypatch.setenv(ENV_BUDGET, "100000")
    # one point: 1000 B of parameters + 50 samples x 80 B = 5000 B -> 20 points fit in 100000 B
    plan = plan_chunk("cpu", n_points=500, target_chunk=64, batch=50, param_bytes=1000, sample_bytes=80)
    assert (plan.point_bytes, plan.chunk_limit, plan.chunk, plan.batch) == (5000, 20, 20, 50)
    assert plan.budget_bytes == 100000 and plan.source == ENV_BUDGET
    # the speed target caps it when memory is plentiful
    monkeypatch.setenv(ENV_BUDGET, "1G")
    plan = plan_chunk("cpu", n_points=500, target_chunk=64, batch=50, param_bytes=1000, sample_bytes=80)
    assert plan.chunk == 64
    # and the grid size caps the chunk, not the limit
    plan = plan_chunk("cpu", n_points=10, target_chunk=64, batch=50, param_bytes=1000, sample_bytes=80)
    assert (plan.chunk, plan.chunk_limit) == (10, 64)


def test_plan_shortens_the_batch_when_one_point_does_not_fit(monkeypatch):
    monkeypatch.setenv(ENV_BUDGET, "9000")
    # 1000 B of parameters leave 8000 B: 100 samples of 80 B
    plan = plan_chunk("cpu", n_points=50, target_chunk=64, batch=400, param_bytes=1000, sample_bytes=80)
    assert (plan.chunk, plan.batch, plan.point_bytes) == (1, 100, 9000)


def test_plan_uses_half_of_free_memory(monkeypatch):
    monkeypatch.delenv(ENV_BUDGET, raising=False)
    monkeypatch.setattr("fastscape._core.memory._meminfo_available", lambda: 1 << 20)
    monkeypatch.setattr("fastscape._core.memory._cgroup_available", lambda: None)
    plan = plan_chunk("cpu", n_points=10**6, target_chunk=10**6, batch=1, param_bytes=1024, sample_bytes=1024)
    assert plan.budget_bytes == 1 << 19 and plan.chunk == (1 << 19) // 2048


def _case(gen):
    torch.manual_seed(0)
    model = MLP()
    x = torch.randn(60, 5, generator=gen)
    y = torch.randint(0, 3, (60,), generator=gen)
    dirs = [{n: torch.randn(p.shape, generator=gen) * 0.2 for n, p in model.named_parameters()} for _ in range(2)]
    return model, x, y, dirs


def test_small_budget_forces_chunks_and_oom_backoff_with_identical_result(gen, monkeypatch, caplog):
    model, x, y, dirs = _case(gen)
    axes = [np.linspace(-1, 1, 7), np.linspace(-1, 1, 5)]
    ref = loop_surface(model, x, y, F.cross_entropy, model_parameters(model), dirs, axes)

    # a 200 KiB budget: a few points per chunk
    monkeypatch.setenv(ENV_BUDGET, "200K")
    # and an allocator that fails whenever a chunk holds more than 5 points
    real_stack = _points.AffinePoints.stack
    failures = []

    def failing_stack(self, start, stop):
        if stop - start > 5:
            failures.append(stop - start)
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real_stack(self, start, stop)

    monkeypatch.setattr(_points.AffinePoints, "stack", failing_stack)
    with caplog.at_level(logging.INFO, logger="fastscape"):
        surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=axes, device="cpu")
    plan = surf.meta["memory_plan"]
    assert plan["source"] == ENV_BUDGET and plan["budget_bytes"] == 200 << 10
    assert 5 < plan["chunk"] < 35, plan  # several chunks, and more than the allocator allows
    assert surf.meta["oom_backoffs"] >= 1 and failures
    assert surf.meta["chunk_size"] <= 5
    assert any("memory plan on cpu" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(surf.loss, ref, rtol=2e-5, atol=1e-6)

    # identical to a run told the final chunk, batch and strategy up front
    monkeypatch.setattr(_points.AffinePoints, "stack", real_stack)
    monkeypatch.delenv(ENV_BUDGET)
    same = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=axes, device="cpu",
                                  chunk_size=surf.meta["chunk_size"], batch_size=surf.meta["batch_size"],
                                  strategy=surf.meta["strategy"])
    np.testing.assert_array_equal(surf.loss, same.loss)


def test_plan_is_stored_in_the_file(gen, monkeypatch, tmp_path):
    model, x, y, dirs = _case(gen)
    monkeypatch.setenv(ENV_BUDGET, "150K")
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 6), device="cpu",
                                  out=tmp_path / "s.h5")
    back = fastscape.load_surface(tmp_path / "s.h5")
    assert back.meta["memory_plan"] == surf.meta["memory_plan"]
    plan = back.meta["memory_plan"]
    assert plan["budget_bytes"] == 150 << 10
    # the file's chunks fit the budget, and there are several of them
    assert back.meta["chunk_size"] * plan["point_bytes"] <= plan["budget_bytes"]
    assert back.meta["chunk_size"] < 36


def test_loop_batches_keep_the_largest_intermediate_under_the_cpu_target(gen, monkeypatch):
    # MLP's widest activation is 16 floats = 64 bytes per sample; a 1 KiB target allows 16 samples
    monkeypatch.setattr(_plan, "CPU_LOOP_TARGET_BYTES", 1024)
    model = MLP()
    x, y = torch.randn(100, 5, generator=gen), torch.randint(0, 3, (100,), generator=gen)
    dirs = fastscape.random_directions(model, 2, seed=0)
    axes = [np.linspace(-1, 1, 3)] * 2
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=axes, strategy="loop")
    assert surf.meta["batch_size"] == 16
    ref = loop_surface(model, x, y, F.cross_entropy, model_parameters(model), dirs, axes)
    np.testing.assert_allclose(surf.loss, ref, rtol=1e-5, atol=1e-6)
