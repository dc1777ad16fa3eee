"""Chunk and batch planning: how many points and samples one call of a strategy takes.

:func:`plan_chunk_and_batches` measures one forward's activations and fits the speed target (a
few MiB per intermediate on CPU, :func:`plan_sizes`) into the free memory
(:mod:`fastscape._core.memory`); :func:`loop_batches` re-plans the data for the per-point loop.
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call

from .data import Batches
from .memory import LIVE_FACTOR, peak_memory, plan_chunk
from .params import positive_int

__all__ = ["plan_sizes", "plan_chunk_and_batches", "loop_batches", "PROBE_SAMPLES"]

#: bytes of one intermediate tensor a chunk aims at on CPU: past a few MiB every
#: allocation page-faults and the same grid runs several times slower.
CPU_TARGET_BYTES = 4 << 20
#: the same on CUDA, where larger chunks keep the GPU busy.
CUDA_TARGET_BYTES = 256 << 20
#: largest intermediate of one point's forward when the per-point loop runs on CPU.
#: glibc serves blocks up to 32 MiB from its heap once they have been freed, larger
#: ones are mapped fresh, page by page, at every allocation: measured on the
#: benchmark CNN (2000 images), batches of 250 ran 2.7x faster than one batch of 2000.
CPU_LOOP_TARGET_BYTES = 16 << 20


def _per_sample_elements(model, params, args, n) -> int:
    """Largest number of activation elements per sample over the model's submodules.

    Measured with forward hooks on one un-vectorised forward pass.
    """
    largest = [0]

    def hook(_m, _inp, out):
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            functional_call(model, params, args)
    finally:
        for h in handles:
            h.remove()
    return max(1, math.ceil(largest[0] / max(n, 1)))


def plan_sizes(per_sample_elems: int, n_samples: int, n_points: int, itemsize: int,
               target_bytes: int, moving_numel: int) -> tuple[int, int]:
    """Choose ``(chunk_size, batch_size)`` so that one intermediate tensor of a chunk,
    ``chunk * batch * per_sample_elems * itemsize`` bytes, stays near ``target_bytes``,
    and the stacked parameters of a chunk stay within the same budget.
    """
    per_sample = per_sample_elems * itemsize
    batch = max(1, min(n_samples, target_bytes // per_sample))
    chunk = max(1, target_bytes // (per_sample * batch))
    chunk = min(chunk, max(1, target_bytes // max(1, moving_numel * itemsize)))
    return int(min(chunk, n_points)), int(batch)



#: samples of the first batch that the validation and memory probes run on
PROBE_SAMPLES = 256


def plan_chunk_and_batches(model, batches: Batches, points, p0, args0, n0, chunk_size, device, dtype):
    """The memory-planning step: ``(chunk, batches, plan)``, the data re-split
    when the planned batch is smaller than the given one.

    "auto" takes the speed target (a few MiB per intermediate on CPU, see
    :func:`plan_sizes`) and fits it into the free memory (:mod:`._memory`).
    """
    if chunk_size != "auto":
        return positive_int(chunk_size, "chunk_size", allow=("auto",)), batches, {}
    with peak_memory(device) as peak:
        per_sample = _per_sample_elements(model, p0, args0, n0)
    target = CUDA_TARGET_BYTES if device.type == "cuda" else CPU_TARGET_BYTES
    itemsize = torch.empty((), dtype=dtype).element_size()
    # the speed target for a grid of any size, then fitted into free memory
    target_chunk, auto_batch = plan_sizes(per_sample, max(batches.batch_sizes), 1 << 62,
                                          itemsize, target, points.moving_numel())
    measured = peak.bytes is not None and peak.bytes > 0
    plan = plan_chunk(
        device, n_points=points.n, target_chunk=target_chunk, batch=auto_batch,
        param_bytes=points.moving_numel() * itemsize,
        sample_bytes=(math.ceil(peak.bytes / n0) if measured else LIVE_FACTOR * per_sample * itemsize),
        measured=measured)
    if max(batches.batch_sizes) > plan.batch:
        batches = batches.resplit(plan.batch)
    return plan.chunk, batches, {**plan.as_dict(), "largest_sample_bytes": per_sample * itemsize,
                                 "device_type": device.type}



def loop_batches(given: Batches, plan: dict) -> Batches:
    """The data as given, split only where one point's batch would not fit the
    memory budget or, on CPU, where its largest intermediate would pass
    ``CPU_LOOP_TARGET_BYTES``."""
    per_sample = plan["point_bytes"] / max(1, plan["batch"])
    cap = max(1, int(plan["budget_bytes"] // max(1.0, per_sample)))
    if plan.get("device_type") == "cpu":
        cap = min(cap, max(1, CPU_LOOP_TARGET_BYTES // max(1, plan["largest_sample_bytes"])))
    return given if max(given.batch_sizes) <= cap else given.resplit(cap)

