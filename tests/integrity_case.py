"""One small surface request shared by the file-integrity tests and the subprocesses they start
(importable as ``tests.integrity_case`` with the worktree root on PYTHONPATH).

Only the public API is used, so the case survives moves inside the package.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

import fastscape
from tests.models import MLP

#: a 5 x 5 grid: 25 points, so chunk 3 gives 9 units (the last one of a single point)
GRID = [(-1.0, 1.0, 5), (-0.5, 1.0, 5)]


def make_case(seed: int = 0, n: int = 40):
    """(model, (x, y), directions): an MLP, n samples, two Gaussian directions."""
    torch.manual_seed(seed)
    model = MLP()
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    dirs = [{k: torch.randn(p.shape, generator=g) * 0.3 for k, p in model.named_parameters()} for _ in range(2)]
    return model, (x, y), dirs


def scaled_loss(output, target):
    """A user loss defined in a module (fingerprinted by its code, across processes)."""
    return 0.5 * F.cross_entropy(output, target)


def kwargs(**over):
    kw = dict(loss_fn=F.cross_entropy, grid=GRID, device="cpu", chunk_size=3, strategy="vmap",
              metrics={"accuracy": fastscape.accuracy})
    kw.update(over)
    return kw


class Interrupt(Exception):
    """Raised by :func:`stop_after` to stop a run between two chunks."""


def stop_after(n_chunks: int):
    """A progress callable that stops the run when chunk ``n_chunks + 1`` is done, so that
    exactly ``n_chunks`` units (one chunk each) are on disk."""
    calls = [0]

    def progress(_n):
        calls[0] += 1
        if calls[0] > n_chunks:
            raise Interrupt

    return progress


def main(argv):
    """``main([_, OUT, MODE])``: compute into OUT from another process.

    MODE ``slow``: every chunk takes ~0.4 s more, so the run lasts long enough to be
    seen from outside.
    MODE ``partial-scaled``: the module-level ``scaled_loss``, stopped after 4 chunks.
    """
    out, mode = argv[1], argv[2]
    model, data, dirs = make_case()
    if mode == "slow":
        def slow(_n):
            time.sleep(0.4)

        fastscape.loss_surface(model, data, dirs, out=out, progress=slow, **kwargs())
    elif mode == "partial-scaled":
        try:
            fastscape.loss_surface(model, data, dirs, out=out, progress=stop_after(4),
                                   **kwargs(loss_fn=scaled_loss))
        except Interrupt:
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
