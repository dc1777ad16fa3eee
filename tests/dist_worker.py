"""Run by tests/test_distributed.py under ``torchrun --nproc-per-node 2``: a sharded in-memory
surface (each rank saves what it got), then the ``fastscape surface`` command into a file.

The strategy is pinned: "auto" picks by timing, and two strategies agree only to
float32 rounding, while the test compares the sharded run with a single process bit
for bit.

Usage: dist_worker.py OUT_DIR CHECKPOINT
"""

import atexit
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import fastscape
from fastscape._cli import main
from tests.cli_models import make_data, make_model

AXES = [np.linspace(-1, 1, 9), np.linspace(-0.5, 1.5, 8)]


def cli_args(ckpt, out):
    return ["surface", "--model", "tests.cli_models:make_model", "--checkpoint", str(ckpt),
            "--data", "tests.cli_models:make_loader", "--loss", "cross_entropy", "--metric", "accuracy",
            "--x", "-1:1:9", "--y", "-0.5:1.5:8", "--chunk-size", "3", "--strategy", "vmap", "--out", str(out), "--quiet"]


def in_memory(ckpt, device):
    model = make_model()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    dirs = fastscape.random_directions(model, 2, seed=5)
    return fastscape.loss_surface(model, make_data(), dirs, loss_fn=F.cross_entropy, grid=AXES, chunk_size=3,
                                  device=device, strategy="vmap", progress=False)


if __name__ == "__main__":
    out, ckpt = Path(sys.argv[1]), Path(sys.argv[2])
    # registered before init_distributed, so it runs after fastscape's own exit handler (LIFO)
    rank_env = os.environ["RANK"]
    atexit.register(lambda: (out / f"exit-rank{rank_env}.txt").write_text(
        str(torch.distributed.is_initialized())))
    ctx = fastscape.init_distributed()
    surf = in_memory(ckpt, ctx.device)
    np.save(out / f"memory-rank{ctx.rank}.npy", surf.loss)
    (out / f"run-rank{ctx.rank}.txt").write_text(f"{surf.meta['run']['world_size']} {ctx.backend}")
    sys.exit(main(cli_args(ckpt, out / "dist.h5")))
