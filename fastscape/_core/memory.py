"""Memory planning: how many grid points one chunk may hold.

A chunk of ``c`` points on data batches of ``b`` samples needs about
``c * (P + b * A)`` bytes while it runs, where ``P`` is the bytes of one
point's stacked (moving) parameters and ``A`` the activation bytes one sample
keeps alive in one point's forward pass. ``A`` is measured: by the CUDA
allocator's peak during a one-point forward pass, or, on CPU (which has no
allocator statistics), from the largest activation that forward hooks see.

The chunk is the smaller of

- the speed target: the chunk whose largest intermediate tensor is a few MiB
  on CPU (past that every allocation page-faults and the same grid runs about
  4x slower), larger on CUDA; and
- the memory budget: half the free memory of the device (CUDA's
  ``mem_get_info``; on CPU the kernel's ``MemAvailable``, bounded by a cgroup
  limit), or the bytes set in the environment variable
  ``FASTSCAPE_MEMORY_BUDGET`` (e.g. ``"2G"``; use it to share a GPU, or to
  rehearse a small device).

The evaluator still halves the chunk and retries when an allocation fails, so
a plan that was too optimistic costs a retry, never the run.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import asdict, dataclass

import torch

__all__ = ["MemoryPlan", "free_memory", "parse_bytes", "peak_memory", "plan_chunk", "ENV_BUDGET", "human_bytes",
           "is_out_of_memory"]

logger = logging.getLogger("fastscape")

#: environment variable that sets the memory budget in bytes ("512M", "2G", "1.5GiB", "1000000").
ENV_BUDGET = "FASTSCAPE_MEMORY_BUDGET"
#: share of the free memory a chunk may plan for; the rest absorbs allocator slack
#: and other processes.
BUDGET_FRACTION = 0.5
#: without allocator statistics (CPU), a layer's input, its output and one
#: temporary are alive at once: three times the largest activation.
LIVE_FACTOR = 3

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str | int) -> int:
    """Bytes from ``"512M"``, ``"2G"``, ``"1.5GiB"``, ``"64kb"`` or a plain number (binary units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.I)
        if m is None:
            raise ValueError(
                f"`{ENV_BUDGET}` must be a number of bytes such as '512M', '2G' or '1000000'; "
                f"got {text!r}."
            )
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < 1:
        raise ValueError(f"`{ENV_BUDGET}` must be a positive number of bytes; got {text!r}.")
    return value


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup (v2, then v1) memory limit, if one is set."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                raw = f.read().strip()
            if raw == "max":
                return None
            limit = int(raw)
            if limit >= 1 << 60:  # v1 writes a huge number for "no limit"
                return None
            with open(usage_file) as f:
                usage = int(f.read().strip())
            return max(0, limit - usage)
        except (OSError, ValueError):
            continue
    return None


def free_memory(device: torch.device | str, *, budget: bool = True) -> tuple[int, str]:
    """Free memory of ``device`` in bytes, and where the number comes from.

    ``FASTSCAPE_MEMORY_BUDGET`` wins when set (unless ``budget=False``: what the
    machine has, e.g. for host arrays the budget does not govern). Otherwise CUDA reports its
    free memory; on CPU the kernel's ``MemAvailable`` (or ``os.sysconf``),
    bounded by the room left under a cgroup limit.

    Returns
    -------
    free : int
        Bytes.
    source : str
        E.g. ``"cuda mem_get_info"``, ``"/proc/meminfo"``, ``"FASTSCAPE_MEMORY_BUDGET"``.
    """
    env = os.environ.get(ENV_BUDGET) if budget else None
    if env:
        return parse_bytes(env), ENV_BUDGET
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), "cuda mem_get_info"
    avail, source = _meminfo_available(), "/proc/meminfo"
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            source = "os.sysconf"
        except (ValueError, OSError, AttributeError):
            avail, source = 8 << 30, "unknown (assumed 8 GiB)"
    room = _cgroup_available()
    if room is not None and room < avail:
        avail, source = room, "cgroup limit"
    return int(avail), source


class peak_memory:
    """Measure the peak bytes a block allocates on ``device`` (CUDA only).

    ``.bytes`` is the allocator's peak above what was allocated on entry, or
    ``None`` on devices without allocator statistics (CPU).
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.bytes: int | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda" and exc[0] is None:
            torch.cuda.synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device) - self._base)
        return False


@dataclass
class MemoryPlan:
    """How a chunk was sized; stored in the surface metadata as ``meta["memory_plan"]``.

    Attributes
    ----------
    device : str
    free_bytes : int
        Free memory the plan started from.
    source : str
        Where ``free_bytes`` came from.
    budget_bytes : int
        Bytes a chunk may use: ``free_bytes * BUDGET_FRACTION`` (or the whole
        ``FASTSCAPE_MEMORY_BUDGET``).
    point_bytes : int
        Bytes one grid point needs while its chunk runs on one data batch.
    measured : bool
        True when the activation bytes come from the CUDA allocator's peak;
        False when estimated from the largest activation (CPU).
    target_chunk : int
        The chunk the speed target asks for.
    chunk_limit : int
        ``min(target_chunk, budget_bytes // point_bytes)``, at least 1: the
        chunk for a grid of any size.
    chunk : int
        ``min(chunk_limit, n_points)``.
    batch : int
        Data samples per batch.
    """

    device: str
    free_bytes: int
    source: str
    budget_bytes: int
    point_bytes: int
    measured: bool
    target_chunk: int
    chunk_limit: int
    chunk: int
    batch: int

    def as_dict(self) -> dict:
        return asdict(self)


def plan_chunk(device: torch.device | str, *, n_points: int, target_chunk: int, batch: int,
               param_bytes: int, sample_bytes: int, measured: bool = False) -> MemoryPlan:
    """Fit the speed target's ``(target_chunk, batch)`` into the device's free memory.

    Parameters
    ----------
    device : torch.device
    n_points : int
        Points to evaluate.
    target_chunk, batch : int
        The chunk and data batch the speed target asks for.
    param_bytes : int
        Bytes of one point's moving parameters.
    sample_bytes : int
        Activation bytes one sample keeps alive in one point's forward pass.
    measured : bool
        Whether ``sample_bytes`` was measured by an allocator.

    Returns
    -------
    MemoryPlan
        Logged at INFO level on the ``"fastscape"`` logger.
    """
    device = torch.device(device)
    free, source = free_memory(device)
    budget = free if source == ENV_BUDGET else int(free * BUDGET_FRACTION)
    sample_bytes = max(1, int(sample_bytes))
    point = int(param_bytes) + batch * sample_bytes
    fit = budget // max(1, point)
    if fit < 1:
        # not even one point on a full batch fits: shorten the batch first
        batch = int(max(1, min(batch, (budget - param_bytes) // sample_bytes)))
        point = int(param_bytes) + batch * sample_bytes
        fit = 1
    limit = int(max(1, min(target_chunk, fit)))
    plan = MemoryPlan(device=str(device), free_bytes=int(free), source=source, budget_bytes=int(budget),
                      point_bytes=int(point), measured=bool(measured), target_chunk=int(target_chunk),
                      chunk_limit=limit, chunk=int(max(1, min(limit, n_points))), batch=int(batch))
    logger.info(
        "memory plan on %s: %s free (%s), budget %s, %s per point -> chunks of up to %d points "
        "(speed target %d), data batches of %d", plan.device, human_bytes(free), source, human_bytes(budget),
        human_bytes(point), limit, target_chunk, batch,
    )
    return plan


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    exp = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024 ** exp:.1f} {'BKMGT'[exp]}iB"


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says the device (CUDA) or the host (CPU allocator) ran out of memory."""
    msg = str(err)
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in msg \
        or "can't allocate memory" in msg or "not enough memory" in msg
