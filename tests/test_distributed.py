"""The grid sharded over two gloo processes under torchrun gives the single-process surface."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import fastscape
from fastscape import _distributed
from fastscape._cli import main
from fastscape._core.params import model_parameters
from tests.cli_models import make_data, make_model
from tests.dist_worker import AXES, cli_args, in_memory
from tests.reference import loop_surface

ROOT = Path(__file__).resolve().parents[1]


def test_helpers_without_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _distributed.rank_world() == (0, 1)
    ctx = fastscape.init_distributed()
    assert (ctx.rank, ctx.world_size, ctx.backend) == (0, 1, None)
    assert _distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert _distributed.all_gather_object(3) == [3]
    _distributed.barrier()


def test_bad_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    import pytest

    with pytest.raises(ValueError, match="`WORLD_SIZE` must be an integer; got 'two'"):
        fastscape.init_distributed()


def test_torchrun_two_gloo_ranks_equal_single_process(tmp_path):
    ckpt = tmp_path / "model.pt"
    torch.manual_seed(1)
    torch.save(make_model().state_dict(), ckpt)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "FASTSCAPE_MEMORY_BUDGET"):
        env.pop(k, None)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(ROOT / "tests" / "dist_worker.py"), str(tmp_path), str(ckpt)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(done.stdout, done.stderr)  # shown by pytest if anything below fails
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "run-rank0.txt").read_text() == "2 gloo"
    # the group init_distributed joined is left at exit (a live gloo group can abort the process)
    assert [(tmp_path / f"exit-rank{r}.txt").read_text() for r in (0, 1)] == ["False", "False"]

    # the same work in this single process, with the workers' thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = in_memory(ckpt, "cpu")
        assert main(cli_args(ckpt, tmp_path / "single.h5")) == 0
    finally:
        torch.set_num_threads(threads)
    for rank in (0, 1):  # every rank returns the whole surface
        np.testing.assert_array_equal(np.load(tmp_path / f"memory-rank{rank}.npy"), single.loss)

    dist = fastscape.load_surface(tmp_path / "dist.h5")
    one = fastscape.load_surface(tmp_path / "single.h5")
    assert dist.meta["run"]["world_size"] == 2 and one.meta["run"]["world_size"] == 1
    np.testing.assert_array_equal(dist.loss, one.loss)
    np.testing.assert_array_equal(dist.metrics["accuracy"], one.metrics["accuracy"])
    assert not (tmp_path / "dist.h5.parts").exists()

    # and both are the loss of the model, checked point by point
    model = make_model()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    x, y = make_data()
    dirs = fastscape.random_directions(model, 2, seed=0)
    ref = loop_surface(model, x, y, F.cross_entropy, model_parameters(model), dirs, AXES)
    np.testing.assert_allclose(dist.loss, ref, rtol=2e-5, atol=1e-6)
