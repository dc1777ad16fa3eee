"""The CUDA path (issue 13): no host sync inside the chunk loop, data resident on the
device, chunk planning at H200 scale, the out-of-memory back-off for real, bf16
evaluation, and agreement with a float64 reference.

The tests marked ``cuda`` need a GPU and skip without one (``pytest -k cuda`` runs
them on the GPU machine: ``benchmarks/gpu_check.py``); the others check the same
logic on the CPU: sync-free chunk loops by counting the operations that wait for
the device (a value read back to the host, an output whose size depends on the
data, a tensor built from host data), H200 memory by patching ``mem_get_info``.
"""

from __future__ import annotations

import collections
import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fastscape
from fastscape._core.strategies import affine as _affine
from fastscape._core.data import resident_bytes
from fastscape._core.memory import ENV_BUDGET, plan_chunk
from fastscape._core.params import model_parameters
from tests.models import MLP, LSTMRegressor, SmallCNN, TinyTransformer, trained_bn_stats
from tests.reference import loop_surface

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
GIB = 1 << 30
H200_FREE, H200_TOTAL = 139 * GIB, 141 * GIB

#: operations that make the host wait for the device: a scalar read back (``.item()``,
#: ``float()``, ``bool()``), outputs whose size depends on the values, and tensors
#: built from host data (copied to the GPU and waited for)
SYNCING = {"_local_scalar_dense", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
           "nonzero", "masked_select", "lift_fresh", "lift_fresh_copy", "item"}


class _CountSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNCING:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def _partial_case(gen, k=2):
    """An MLP and ``k`` directions of which only the first and the last move its first layer:
    the affine path then computes that layer once per distinct coordinate value."""
    torch.manual_seed(0)
    model = MLP()
    x, y = torch.randn(64, 5, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    dirs = [{n: torch.randn(p.shape, generator=gen) * 0.3 for n, p in model.named_parameters()} for _ in range(k)]
    for d in dirs[1:-1]:
        d["net.0.weight"].zero_()
        d["net.0.bias"].zero_()
    return model, x, y, dirs


@pytest.fixture
def grid_rows_everywhere(monkeypatch):
    """The affine path finds distinct coordinate rows once per grid (as on a GPU), also on CPU."""
    monkeypatch.setattr(_affine, "PER_CHUNK_UNIQUE_DEVICES", frozenset())


# ----------------------------------------------------------------- no sync in the chunk loop


@pytest.mark.parametrize("strategy", ["vmap", "affine", "mlp", "loop"])
def test_host_syncs_do_not_grow_with_the_number_of_chunks(strategy, gen, grid_rows_everywhere):
    model, x, y, dirs = _partial_case(gen)
    counts = {}
    for chunk in (3, 49):  # 17 chunks, then one
        with _CountSyncs() as mode:
            surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 7),
                                          chunk_size=chunk, strategy=strategy, device="cpu")
        assert surf.meta["strategy"] == strategy and surf.meta["chunk_size"] == chunk
        counts[chunk] = dict(mode.counts)
    assert counts[3] == counts[49], f"syncs per evaluation grow with the chunks: {counts}"


def test_whole_grid_rows_give_the_per_chunk_result(gen, monkeypatch):
    # three directions, the middle one leaves the first layer alone: non-contiguous used
    # coordinates; chunks of 5 on a 4x3x4 grid take rows both ways
    model, x, y, dirs = _partial_case(gen, k=3)
    axes = [np.linspace(-1, 1, 4), np.linspace(-0.5, 0.5, 3), np.linspace(-1, 1, 4)]
    ref = loop_surface(model, x, y, F.cross_entropy, model_parameters(model), dirs, axes)
    per_chunk = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=axes,
                                       chunk_size=5, strategy="affine", device="cpu")
    monkeypatch.setattr(_affine, "PER_CHUNK_UNIQUE_DEVICES", frozenset())
    for chunk in (5, 7, 48):
        whole = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=axes,
                                       chunk_size=chunk, strategy="affine", device="cpu")
        np.testing.assert_allclose(whole.loss, per_chunk.loss, rtol=1e-6)
    np.testing.assert_allclose(per_chunk.loss, ref, rtol=2e-5, atol=1e-6)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("strategy", ["vmap", "affine", "mlp", "loop"])
def test_cuda_chunk_loop_does_not_sync(strategy, gen):
    model, x, y, dirs = _partial_case(gen)
    counts = {}
    for chunk in (3, 49):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 7),
                               chunk_size=chunk, strategy=strategy, device="cuda")  # warm: kernels, handles
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 7),
                                       chunk_size=chunk, strategy=strategy, device="cuda")
            finally:
                torch.cuda.set_sync_debug_mode(0)
        counts[chunk] = len([w for w in caught if "synchroniz" in str(w.message)])
    assert counts[3] == counts[49], f"CUDA syncs per evaluation grow with the chunks: {counts}"


# ----------------------------------------------------------------- memory at H200 scale


@pytest.fixture
def h200(monkeypatch):
    """``torch.cuda.mem_get_info`` of an idle H200: 139 GiB free of 141."""
    monkeypatch.delenv(ENV_BUDGET, raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (H200_FREE, H200_TOTAL))


def test_plan_at_h200_scale_follows_the_speed_target(h200):
    # seed-000 at 2001 x 2001: 8 B of moving parameters, a few bytes per sample
    plan = plan_chunk("cuda", n_points=2001**2, target_chunk=33_554, batch=2000, param_bytes=8, sample_bytes=16)
    assert plan.source == "cuda mem_get_info" and plan.free_bytes == H200_FREE
    assert plan.budget_bytes == H200_FREE // 2
    assert (plan.chunk, plan.chunk_limit, plan.batch) == (33_554, 33_554, 2000)  # memory is not what binds


def test_plan_at_h200_scale_fits_a_resnet_in_the_budget(h200):
    # ResNet-20 on 10 000 CIFAR images: 1.1 MB of parameters, ~400 KB live per image
    param_bytes, sample_bytes = 272_474 * 4, 400_000
    plan = plan_chunk("cuda", n_points=441, target_chunk=10**6, batch=10_000, param_bytes=param_bytes,
                      sample_bytes=sample_bytes)
    point = param_bytes + 10_000 * sample_bytes
    assert plan.point_bytes == point
    assert plan.chunk_limit == (H200_FREE // 2) // point  # 17 points of 4 GB
    assert plan.chunk * plan.point_bytes <= plan.budget_bytes
    # a budget from the environment wins over the device's free memory
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_BUDGET, "10G")
        small = plan_chunk("cuda", n_points=441, target_chunk=10**6, batch=10_000, param_bytes=param_bytes,
                           sample_bytes=sample_bytes)
    assert small.source == ENV_BUDGET and small.chunk == (10 * GIB) // point == 2


def test_data_stays_resident_on_an_h200(h200, monkeypatch):
    # a quarter of the free memory: 34.75 GiB of data are moved to the GPU once
    assert resident_bytes(torch.device("cuda")) == H200_FREE // 4
    assert resident_bytes(torch.device("cpu")) is None  # CPU data is used where it is
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (GIB, 2 * GIB))
    assert resident_bytes(torch.device("cuda")) == 2 * GIB  # never below the old fixed 2 GiB


# ----------------------------------------------------------------- budget and out-of-memory back-off


@pytest.mark.parametrize("strategy", ["auto", "vmap", "affine", "mlp", "loop"])
def test_a_small_budget_gives_the_unconstrained_result(strategy, gen, monkeypatch):
    model, x, y, dirs = _partial_case(gen)
    x, y = torch.randn(300, 5, generator=gen), torch.randint(0, 3, (300,), generator=gen)
    monkeypatch.delenv(ENV_BUDGET, raising=False)
    free = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 9), device="cpu",
                                  strategy=strategy)
    monkeypatch.setenv(ENV_BUDGET, "120K")
    tight = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 9), device="cpu",
                                   strategy=strategy)
    plan = tight.meta["memory_plan"]
    assert plan["source"] == ENV_BUDGET and plan["chunk"] * plan["point_bytes"] <= plan["budget_bytes"]
    assert tight.meta["chunk_size"] < free.meta["chunk_size"] or tight.meta["batch_size"] < 300
    np.testing.assert_allclose(tight.loss, free.loss, rtol=1e-6)


def _wide_case(gen, device):
    """16 MiB of hidden activations per point (4096 samples x 1024 units)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 10)).to(device)
    x = torch.randn(4096, 64, generator=gen).to(device)
    y = torch.randint(0, 10, (4096,), generator=gen).to(device)
    return model, x, y, fastscape.random_directions(model, 2, seed=0)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("strategy, chunk", [("vmap", 256), ("mlp", 256), ("auto", "auto")])
def test_cuda_out_of_memory_backs_off_for_real(strategy, chunk, gen, monkeypatch):
    """The allocator capped at 256 MiB: a chunk of 256 points needs 4 GiB per activation, and
    "auto" plans 16 points (its speed target) inside a budget that claims 64 GiB: both fail for
    real; the evaluator halves the chunk until it fits and gives the same surface."""
    model, x, y, dirs = _wide_case(gen, "cuda")
    ref = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 16), device="cuda",
                                 chunk_size=2, strategy="vmap")
    monkeypatch.setenv(ENV_BUDGET, "64G")  # a plan that believes in 64 GiB, on an allocator that has 1/4
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(((256 << 20) + torch.cuda.memory_allocated()) / total)
    try:
        surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 16),
                                      device="cuda", chunk_size=chunk, strategy=strategy)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert surf.meta["oom_backoffs"] >= 1, surf.meta
    np.testing.assert_allclose(surf.loss, ref.loss, rtol=1e-5)


@pytest.mark.cuda
@needs_cuda
def test_cuda_streamed_data_gives_the_resident_result(gen, monkeypatch):
    from fastscape._core import data as _data

    model, x, y, dirs = _partial_case(gen)
    resident = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 5),
                                      device="cuda", batch_size=16)
    monkeypatch.setattr(_data, "resident_bytes", lambda device: 0)  # every batch moved on use
    streamed = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 5),
                                      device="cuda", batch_size=16)
    np.testing.assert_allclose(streamed.loss, resident.loss, rtol=1e-6)


# ----------------------------------------------------------------- bf16 and agreement


@pytest.mark.parametrize("strategy", ["auto", "vmap", "affine", "mlp", "loop"])
def test_bfloat16_surface_is_close_to_float64(strategy, gen):
    model, x, y, dirs = _partial_case(gen)
    axes = [np.linspace(-1, 1, 5)] * 2
    ref = loop_surface(model, x, y, F.cross_entropy, model_parameters(model), dirs, axes)
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=axes, device="cpu",
                                  dtype="bfloat16", strategy=strategy)
    assert surf.meta["dtype"] == "bfloat16" and surf.loss.dtype == np.float64
    # bf16 keeps 8 bits of mantissa: a few parts in a thousand per operation
    np.testing.assert_allclose(surf.loss, ref, rtol=3e-2)
    same = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=axes, device="cpu",
                                  dtype=torch.bfloat16, strategy=strategy)
    np.testing.assert_array_equal(same.loss, surf.loss)


def test_bfloat16_is_for_surfaces_only(gen):
    model, x, y, _ = _partial_case(gen)
    with pytest.raises(ValueError, match="`dtype` must be one of"):
        fastscape.curvature.hessian_trace(model, (x, y), loss_fn=F.cross_entropy, dtype="bfloat16")


def _agreement_cases(gen):
    torch.manual_seed(0)
    mlp = MLP()
    yield "mlp", mlp, torch.randn(64, 5, generator=gen), torch.randint(0, 3, (64,), generator=gen), F.cross_entropy
    cnn_x = torch.randn(32, 1, 8, 8, generator=gen)
    cnn = trained_bn_stats(SmallCNN(), cnn_x)
    yield "cnn", cnn, cnn_x, torch.randint(0, 4, (32,), generator=gen), F.cross_entropy
    yield ("transformer", TinyTransformer(), torch.randint(0, 11, (16, 6), generator=gen),
           torch.randint(0, 3, (16,), generator=gen), F.cross_entropy)
    yield "lstm", LSTMRegressor(), torch.randn(16, 5, 3, generator=gen), torch.randn(16, 1, generator=gen), F.mse_loss


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("bfloat16", 5e-2)])
def test_cuda_agrees_with_float64_on_cpu(dtype, rtol, gen):
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # cuDNN's is on by default
    try:
        for name, model, x, y, loss_fn in _agreement_cases(gen):
            if name == "lstm" and dtype == "bfloat16":
                continue  # bf16 RNN kernels depend on the cuDNN build; the GPU check states that case
            dirs = fastscape.random_directions(model, 2, seed=0)
            axes = [np.linspace(-1, 1, 5)] * 2
            ref = loop_surface(model, x, y, loss_fn, model_parameters(model), dirs, axes)
            gpu = copy.deepcopy(model).cuda()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", fastscape.FallbackWarning)  # the LSTM's loop fallback
                surf = fastscape.loss_surface(gpu, (x.cuda(), y.cuda()), dirs, loss_fn=loss_fn, grid=axes,
                                              device="cuda", dtype=dtype)
            rel = np.max(np.abs(surf.loss - ref) / np.abs(ref))
            assert rel <= rtol, f"{name} {dtype} ({surf.meta['strategy']}): {rel:.2e} from float64"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
