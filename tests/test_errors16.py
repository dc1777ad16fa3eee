"""Names that cannot collide and errors that say what is wrong (issue 16, items 6-10).

Each case is checked against an independent result where there is one: a hand-written
training loop, a plain evaluation of the model, a file that must exist on disk.
"""

from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape
from tests.integrity_case import make_case
from tests.models import MLP, LSTMRegressor

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


# --------------------------------------------------------------------------- 6. metric names


@pytest.mark.parametrize("name, why", [
    ("loss", "reserved"),
    ("test/accuracy", "'/'"),
    ("", "empty"),
])
def test_metric_names_are_validated_up_front(tmp_path, name, why):
    model, data, dirs = make_case()
    with pytest.raises(ValueError, match=rf"`metrics\[{re.escape(repr(name))}\]`.*{re.escape(why)}"):
        fastscape.loss_surface(model, data, dirs, loss_fn=F.cross_entropy, grid=3, device="cpu",
                               metrics={name: fastscape.accuracy}, out=tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.parts").exists()


def test_a_metric_named_like_the_loss_never_replaces_it():
    # the independent check: the loss at the origin is the model's own loss
    model, (x, y), dirs = make_case()
    with pytest.raises(ValueError, match="loss"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=3, device="cpu",
                               metrics={"loss": fastscape.accuracy})
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=3, device="cpu",
                                  metrics={"accuracy": fastscape.accuracy})
    with torch.no_grad():
        assert surf.loss[1, 1] == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-5)


# --------------------------------------------------------------------------- 7. empty 3-D plot


def _surface3d(surface):
    plot = getattr(fastscape, "plot", None)
    fn = getattr(fastscape, "plot_surface3d", None) or getattr(plot, "surface3d")
    return fn(surface)


def _save(fig, path):
    plot = getattr(fastscape, "plot", None)
    fn = getattr(fastscape, "save_figure", None) or getattr(plot, "save")
    return fn(fig, path)


@pytest.mark.parametrize("suffix, fill", [(".png", np.inf), (".svg", np.nan)])
def test_saving_the_3d_plot_of_an_all_diverged_surface_writes_a_file_or_raises(tmp_path, suffix, fill):
    x = np.linspace(-1, 1, 5)
    surface = fastscape.Surface(coords=[x, x], loss=np.full((5, 5), fill))
    path = tmp_path / f"s{suffix}"
    import warnings

    fig = _surface3d(surface)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            written = _save(fig, path)
    except (ValueError, RuntimeError) as err:  # a refusal that says why
        assert "finite" in str(err)
        assert not path.exists()
        return
    # or a file that says why it is empty
    assert any("finite" in str(w.message) for w in caught)
    assert Path(written) == path
    assert path.is_file() and path.stat().st_size > 0


# --------------------------------------------------------------------------- 8. train and eval submodules


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.drop(self.bn(self.fc(x))))


def test_train_respects_submodules_in_eval_mode():
    torch.manual_seed(0)
    net = _Net()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
    net.bn.eval()  # frozen BatchNorm: the user's choice; dropout stays in train mode
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g)
    loader = [(x[:16], y[:16]), (x[16:], y[16:])]
    ref = copy.deepcopy(net)
    stats = net.bn.running_mean.clone()

    torch.manual_seed(1)
    fastscape.train(net, loader, loss_fn=F.cross_entropy, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                    epochs=2)
    assert [m.training for m in net.modules()] == [True, True, False, True, True]
    assert torch.equal(net.bn.running_mean, stats)

    # the reference: a hand-written loop that leaves the flags alone (same dropout draws)
    torch.manual_seed(1)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(ref(xb), yb).backward()
            opt.step()
    for (k, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


# --------------------------------------------------------------------------- 10. clear errors


def _with_full_backward_hook():
    model = MLP()
    model.net[0].register_full_backward_hook(lambda *a: None)
    return model


def test_hessian_on_a_model_with_backward_hooks_names_them():
    model = _with_full_backward_hook()
    _, data, _ = make_case()
    with pytest.raises(ValueError, match=r"`model`.*backward hook.*'net\.0'"):
        fastscape.hessian_eigenpairs(model, data, loss_fn=F.cross_entropy, n=1)
    with pytest.raises(ValueError, match=r"`model`.*backward hook"):
        fastscape.hessian_vector_product(model, data, {k: torch.ones_like(p) for k, p in model.named_parameters()},
                                         loss_fn=F.cross_entropy)


def test_gradient_views_on_a_model_with_backward_hooks_name_them():
    model = _with_full_backward_hook()
    _, data, _ = make_case()
    dirs = fastscape.random_directions(model, 2, seed=0)
    plot = getattr(fastscape, "plot", None)
    # the numbers behind the view: fastscape.lr_steps (fastscape.plot.lr_steps only draws them)
    lr_steps = getattr(fastscape, "plot_lr_steps", None) or getattr(fastscape, "lr_steps", None) or plot.lr_steps
    with pytest.raises(ValueError, match=r"`model`.*backward hook"):
        lr_steps(model, data, dirs, loss_fn=F.cross_entropy, lrs=[0.1])


def test_train_takes_an_inputs_targets_pair_as_one_batch():
    torch.manual_seed(0)
    a = MLP()
    b = copy.deepcopy(a)
    _, (x, y), _ = make_case()
    ta = fastscape.train(a, (x, y), loss_fn=F.cross_entropy, optimizer=torch.optim.SGD(a.parameters(), lr=0.1),
                         epochs=2)
    tb = fastscape.train(b, [(x, y)], loss_fn=F.cross_entropy, optimizer=torch.optim.SGD(b.parameters(), lr=0.1),
                         epochs=2)
    assert torch.equal(ta.matrix(), tb.matrix())
    assert ta.steps == [0, 1, 2]


def test_train_names_a_malformed_batch():
    model = MLP()
    _, (x, y), _ = make_case()
    with pytest.raises(TypeError, match=r"`data` batch 0 must be an \(inputs, targets\) pair"):
        fastscape.train(model, [x], loss_fn=F.cross_entropy, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        epochs=1)


class _NoParams(nn.Module):
    def forward(self, x):
        return x.sum(1, keepdim=True)


def test_a_model_without_parameters_is_refused_clearly():
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with pytest.raises(ValueError, match="`model` has no parameters"):
        fastscape.train(_NoParams(), [(x, y)], loss_fn=F.mse_loss,
                        optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), epochs=1)
    with pytest.raises(ValueError, match="`model` has no parameters"):
        fastscape.loss_surface(_NoParams(), (x, y), [{}], loss_fn=F.mse_loss, grid=3, device="cpu")


def test_load_surface_names_a_file_that_is_not_hdf5(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not a surface\n")
    with pytest.raises(ValueError, match=re.escape(str(text))):
        fastscape.load_surface(text)
    x = np.linspace(-1, 1, 50)
    good = fastscape.Surface(coords=[x, x], loss=np.ones((50, 50))).save(tmp_path / "good.h5")
    cut = tmp_path / "cut.h5"
    raw = good.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=re.escape(str(cut))):
        fastscape.load_surface(cut)


def test_vmap_on_an_lstm_raises_value_error():
    model = LSTMRegressor()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, 3, generator=g), torch.randn(6, 1, generator=g)
    dirs = fastscape.random_directions(model, 1, seed=0)
    with pytest.raises(ValueError, match=r"`strategy='vmap'`.*'loop'"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=3, device="cpu", strategy="vmap")


def test_nan_in_the_data_warns_once_naming_it():
    model, (x, y), dirs = make_case()
    x = x.clone()
    x[3, 1] = float("nan")
    with pytest.warns(UserWarning, match=r"`data`.*NaN") as record:
        surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=3, device="cpu")
    assert len(record) == 1
    with torch.no_grad():  # the independent check: the model's own loss on this data is NaN too
        assert np.isnan(float(F.cross_entropy(model(x), y)))
    assert np.isnan(surf.loss).all()


def test_nan_or_inf_in_a_direction_warns_once_naming_it():
    model, data, dirs = make_case()
    dirs = [dict(dirs[0]), dict(dirs[1])]
    dirs[1]["net.2.weight"] = dirs[1]["net.2.weight"].clone()
    dirs[1]["net.2.weight"][0, 0] = float("inf")
    with pytest.warns(UserWarning, match=r"`directions\[1\]\['net\.2\.weight'\]`.*inf") as record:
        surf = fastscape.loss_surface(model, data, dirs, loss_fn=F.cross_entropy, grid=3, device="cpu")
    assert len(record) == 1
    # the independent check: 0 * inf is NaN, so no point of the grid escapes it
    assert math.isnan(0.0 * math.inf) and np.isnan(surf.loss).all()


def test_a_checkpoint_with_the_right_names_but_wrong_shapes_names_the_tensors(tmp_path):
    from tests.cli_models import Net

    ckpt = tmp_path / "wide.pt"
    torch.save(Net(hidden=20).state_dict(), ckpt)  # same names, hidden layer 20 wide instead of 24
    proc = subprocess.run(
        [sys.executable, "-m", "fastscape", "surface", "--model", "tests.cli_models:make_model",
         "--checkpoint", str(ckpt), "--data", "tests.cli_models:make_data", "--loss", "cross_entropy",
         "--x", "-1:1:3", "--out", str(tmp_path / "s.h5"), "--quiet", "--no-progress"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr
    assert "Traceback" not in err
    assert "--checkpoint" in err and "body.0.weight" in err and "(20, 6)" in err and "(24, 6)" in err, err


def test_warnings_point_at_the_users_call():
    """A warning about the user's input names the line of the user's code that called fastscape,
    not a line inside fastscape (or contextlib's decorator frame) where it was raised."""

    m = MLP()
    x = torch.randn(20, 5)
    x[0, 0] = float("nan")
    y = torch.randint(0, 3, (20,))
    d = fastscape.random_directions(m, n=1, seed=0)
    lstm = LSTMRegressor()
    m1 = MLP(d_out=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastscape.loss_surface(m, (x, y), d, loss_fn=F.cross_entropy, grid=(-1, 1, 3), progress=False)
        fastscape.loss_surface(lstm, (torch.randn(8, 4, 3), torch.randn(8, 1)),
                               fastscape.random_directions(lstm, n=1, seed=0), loss_fn=F.mse_loss, grid=(-1, 1, 9),
                               chunk_size=3, progress=False)
        fastscape.loss_surface(m1, (torch.randn(20, 5), torch.randn(20)), fastscape.random_directions(m1, n=1, seed=0),
                               loss_fn=F.mse_loss, grid=(-1, 1, 3), progress=False)
    kinds = {"holds NaN": None, "could not be vectorised": None, "target size": None}
    for w in caught:
        for k in kinds:
            if k in str(w.message):
                kinds[k] = w
    assert all(kinds.values()), [str(w.message) for w in caught]
    for k, w in kinds.items():
        assert w.filename == __file__, (k, w.filename, w.lineno)


@pytest.mark.parametrize("which", ["loss_fn", "metrics['mae']"])
def test_a_loss_that_fails_on_the_models_output_names_itself_and_the_shapes(which):
    # a 3-wide output against 1-wide targets: mse_loss cannot broadcast (20, 3) with (20,)
    m = MLP(d_out=3)
    x, y = torch.randn(20, 5), torch.randn(20)
    loss, metrics = F.mse_loss, {"mae": F.l1_loss}
    if which == "loss_fn":
        metrics = None
    else:
        loss = lambda out, t: out.sum() * 0  # noqa: E731  (the loss itself runs)
        loss.fastscape_fingerprint = "zero"
    with pytest.raises(RuntimeError, match=re.escape(f"`{which}` failed on the model's output of shape "
                                                     "(20, 3) and targets of shape (20,)")):
        fastscape.loss_surface(m, (x, y), fastscape.random_directions(m, n=1, seed=0), loss_fn=loss,
                               metrics=metrics, grid=(-1, 1, 3), progress=False)
