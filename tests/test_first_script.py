"""A first script written from the README alone runs: the README's first-script block and the
blocks that build on it run as written, in a row; and each snag a first script used to hit is a
clear error or a working call."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fastscape

ROOT = Path(__file__).resolve().parent.parent

#: the README sections whose first ``python`` block a first script runs, in this order
SECTIONS = ("### A first script, start to finish", "## A first landscape",
            "### PCA plane of a path, and projection onto any plane",
            "### A projected path: what it counts, and a grid framed around it")


def readme_block(heading: str) -> str:
    """The first ```python block of the README section that starts with ``heading``."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n" + heading + "\n")
    block = re.search(r"```python\n(.*?)```", text[start:], flags=re.S)
    assert block is not None, f"no python block under {heading!r}"
    return block.group(1)


def test_the_readme_first_script_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    pytest.importorskip("plotly")
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    for heading in SECTIONS:
        code = readme_block(heading)
        if heading == "## A first landscape":  # as written, on a 21 x 21 grid instead of 201 x 201 (test time)
            assert "grid=(-1, 1, 201)" in code
            code = code.replace("grid=(-1, 1, 201)", "grid=(-1, 1, 21)")
        exec(compile(code, f"README.md: {heading}", "exec"), names)  # noqa: S102
    # what the first script promised
    assert (tmp_path / "moons_contour.png").stat().st_size > 10_000
    assert (tmp_path / "moons_surface3d.html").stat().st_size > 10_000
    traj, path = names["traj"], names["path"]
    assert len(traj) == 21 and path.shape == (21, 2) and path.unit == "epoch"
    # the training worked: the final loss is well below the first
    assert traj.losses[-1] < 0.5 * traj.losses[0]
    # what "A first landscape" writes, from the names the first script made
    for out in ("contour.png", "surface.html", "surface.h5"):
        assert (tmp_path / out).is_file(), out
    assert fastscape.load_surface(tmp_path / "surface.h5").loss.shape == (21, 21)


def test_the_sections_the_first_script_test_runs_exist_and_say_so():
    text = (ROOT / "README.md").read_text()
    assert "tests/test_first_script.py" in text
    for heading in SECTIONS:
        assert readme_block(heading).strip()


# ----------------------------------------------------------------------------- the snags of a first script


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
    x = torch.randn(16, 2)
    y = (x[:, 0] > 0).long()
    return model, x, y


def test_targets_passed_where_directions_go_say_to_pair_the_data():
    model, x, y = _tiny()
    with pytest.raises(TypeError, match=r"`directions` .* got a Tensor\. If it holds your targets, pass the data "
                                        r"as one pair: loss_surface\(model, \(inputs, targets\)"):
        fastscape.loss_surface(model, x, y, loss_fn=F.cross_entropy)


def test_a_grid_without_its_number_of_points_says_so():
    model, x, y = _tiny()
    dirs = fastscape.random_directions(model, 2, seed=0)
    with pytest.raises(ValueError, match=r"`grid` \(-1, 1\) gives the span but not the number of points.*"
                                         r"\(-1, 1, 51\)"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1))


def test_interpolation_from_a_state_dict_to_a_model_is_their_difference():
    model, x, y = _tiny()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    fastscape.train(model, [(x, y)], loss_fn=F.cross_entropy, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                    epochs=3)
    (d,) = fastscape.interpolation_directions(init, model)
    for k, p in model.named_parameters():
        torch.testing.assert_close(d[k], p.detach() - init[k])
    # coordinate 1 from the initial weights is the trained model: its own loss
    line = fastscape.loss_surface(model, (x, y), [d], origin=init, loss_fn=F.cross_entropy, grid=(0, 1, 3),
                                  progress=False)
    with torch.no_grad():
        assert line.loss[-1] == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-5)
        assert line.loss[0] == pytest.approx(float(F.cross_entropy(torch.func.functional_call(model, init, (x,)),
                                                                    y)), rel=1e-5)
    with pytest.raises(TypeError, match="`model_a` must be an nn.Module, or a state dict with another model"):
        fastscape.interpolation_directions(init, dict(model.state_dict()))


def test_the_comparisons_grid_size_is_n_not_num():
    model, x, y = _tiny()
    cmp = fastscape.compare_optimizers(model, [(x, y)], {"SGD": lambda p: torch.optim.SGD(p, lr=0.1)},
                                       loss_fn=F.cross_entropy, epochs=3)
    with pytest.raises(TypeError, match=r"`num` is not an argument of OptimizerComparison.loss_surface.*`n`"):
        cmp.loss_surface((x, y), loss_fn=F.cross_entropy, num=5)
    assert cmp.loss_surface((x, y), loss_fn=F.cross_entropy, n=5, progress=False).loss.shape == (5, 5)


def test_a_trajectory_drawn_as_a_path_says_to_project_it_and_a_stored_path_animates():
    from fastscape import plot

    model, x, y = _tiny()
    traj = fastscape.train(model, [(x, y)], loss_fn=F.cross_entropy,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.5), epochs=4)
    pcs, _ = fastscape.pca_directions(traj, n=2)
    path = fastscape.project(traj, pcs)
    surface = fastscape.loss_surface(model, (x, y), pcs, loss_fn=F.cross_entropy, grid=path.frame(5), progress=False)
    with pytest.raises(TypeError, match=r"Project it onto the surface's directions first: `fastscape.project"):
        plot.contour(surface, path=traj)
    surface.path = path
    fig = plot.animate_path(surface)  # the stored path, no path= needed
    np.testing.assert_allclose(np.stack([fig.frames[-1].data[0].x, fig.frames[-1].data[0].y], axis=1), path)
