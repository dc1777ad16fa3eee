"""Several processes, one surface: thin helpers over ``torch.distributed``.

A surface is split into units of whole chunks (see :mod:`fastscape._units`);
rank ``r`` of ``w`` evaluates every ``w``-th unit still to do, on its own device,
and the ranks exchange their values at the end, so every rank returns the
complete surface and rank 0 writes the file. Each unit is evaluated exactly as
a single process would evaluate it, so the result is the single-process one.

Launch with ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``); :func:`init_distributed` joins the group
(NCCL when CUDA is available, gloo otherwise) and pins ``cuda:LOCAL_RANK``.
:func:`fastscape.loss_surface` shards automatically whenever a default process
group is initialised, whoever initialised it.
"""

from __future__ import annotations

import atexit
import os
import pickle
from dataclasses import dataclass

import torch

__all__ = ["DistContext", "init_distributed", "rank_world", "broadcast_object", "all_gather_object",
           "barrier", "env_world_size", "on_rank0"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, evaluating on ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when unset)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError as err:
        raise ValueError(f"environment variable `WORLD_SIZE` must be an integer; got {raw!r}.") from err


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if not _active():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def init_distributed(backend: str | None = None) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment.

    Parameters
    ----------
    backend : {"nccl", "gloo"}, optional
        Default: "nccl" when CUDA is available, "gloo" otherwise.

    Returns
    -------
    DistContext
        The device is ``cuda:LOCAL_RANK`` when CUDA is available (made the
        current device), else the CPU. Without ``WORLD_SIZE`` > 1 in the
        environment and no group already initialised, a single-process context
        is returned and nothing is initialised.

    Notes
    -----
    A group joined here is left again at interpreter exit unless the caller
    destroys it first: a gloo group still alive when the process ends can abort
    it ("terminate called without an active exception") after all work is done.
    """
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"`LOCAL_RANK` is {local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                "start at most one process per GPU (torchrun --nproc-per-node)."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if _active():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, dist.get_backend())
    if env_world_size() <= 1:
        return DistContext(0, 1, 0, device, None)
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run a single process.")
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"`backend` must be one of ['nccl', 'gloo']; got {backend!r}.")
    dist.init_process_group(backend=backend)
    atexit.register(_leave_group)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def _leave_group() -> None:
    """Destroy the default group if it is still alive (registered with :mod:`atexit`)."""
    if _active():
        import torch.distributed as dist

        dist.destroy_process_group()


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (itself without a group)."""
    if not _active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` without a group)."""
    if not _active():
        return [obj]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (nothing without a group)."""
    if _active():
        import torch.distributed as dist

        dist.barrier()


def on_rank0(fn):
    """Run ``fn`` on rank 0 only and hand its result (or its exception) to every rank."""
    rank, world = rank_world()
    if world == 1:
        return fn()
    box = None
    if rank == 0:
        try:
            box = ("ok", fn())
        except Exception as err:  # re-raised on every rank below
            try:
                pickle.dumps(err)
                box = ("error", err)
            except Exception:
                box = ("error", RuntimeError(f"{type(err).__name__}: {err}"))
    box = broadcast_object(box)
    if box[0] == "error":
        raise box[1]
    return box[1]
