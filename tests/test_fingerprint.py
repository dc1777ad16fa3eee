"""What a surface file vouches for: every kind of change between two runs on one ``out=`` is seen.

Each test computes into a file (complete, or stopped after a few units), changes one thing
the values depend on, and asks again: the file must be refused, naming the setting that
changed. The reference for "the same request" is an uninterrupted run into a fresh file.
The kinds: the model's code (a layer's class, its forward), a layer's setting, a plain
attribute its forward reads, a class attribute and a module attribute a loss reads; a
shuffled loader's order (not a change: the file is reused); random augmentation (announced
on the first run); a model that cannot be fingerprinted (announced, vouched for).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape
from tests import fingerprint_config as config
from tests.integrity_case import Interrupt, kwargs, make_case, stop_after


def _run(model, data, dirs, out, state=None, **kw):
    """Compute into ``out``: the whole grid, or (``state="partial"``) 4 units of it."""
    kw = kwargs(**kw)
    if state == "partial":
        with pytest.raises(Interrupt):
            fastscape.loss_surface(model, data, dirs, out=out, progress=stop_after(4), **kw)
        return None
    return fastscape.loss_surface(model, data, dirs, out=out, **kw)


class Net(nn.Module):
    def __init__(self, act: nn.Module, t: float = 1.0):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(5, 16), act, nn.Linear(16, 3)
        self.t = t  # a plain attribute forward reads

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x))) * self.t


def _twin(net: Net, **over) -> Net:
    """Another Net with ``net``'s weights (same state_dict) and ``over`` changed."""
    other = Net(over.get("act", net.act), over.get("t", net.t))
    other.load_state_dict(net.state_dict())
    return other


def _other_forward(net: Net) -> nn.Module:
    """The user edited ``forward`` between two runs: same class name, same weights, other code."""

    class Net(nn.Module):  # noqa: F811 - the same qualified name as the edited class
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3)
            self.t = 1.0

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)) + 0.5) * self.t

    other = Net()
    other.load_state_dict(net.state_dict())
    return other


@pytest.mark.parametrize("state", ["partial", "complete"])
@pytest.mark.parametrize("change", ["layer class", "layer setting", "forward code", "plain attribute"])
def test_a_changed_model_with_the_same_weights_is_refused(tmp_path, state, change):
    _, data, _ = make_case()
    torch.manual_seed(0)
    first = Net(nn.LeakyReLU(0.01) if change == "layer setting" else nn.ReLU())
    dirs = fastscape.random_directions(first, n=2, seed=1)
    second = {"layer class": lambda: _twin(first, act=nn.Tanh()),
              "layer setting": lambda: _twin(first, act=nn.LeakyReLU(0.3)),
              "forward code": lambda: _other_forward(first),
              "plain attribute": lambda: _twin(first, t=2.0)}[change]()
    assert set(second.state_dict()) == set(first.state_dict())
    out = tmp_path / "s.h5"
    _run(first, data, dirs, out, state)
    where = "the partial run in" if state == "partial" else "`out`"
    with pytest.raises(ValueError, match=rf"{where} .*different settings: model_code_fingerprint \("):
        fastscape.loss_surface(second, data, dirs, out=out, **kwargs())


def test_the_same_model_built_again_is_reused(tmp_path):
    _, data, _ = make_case()
    torch.manual_seed(0)
    first = Net(nn.ReLU())
    dirs = fastscape.random_directions(first, n=2, seed=1)
    out = tmp_path / "s.h5"
    _run(first, data, dirs, out, "partial")
    again = _twin(first, act=nn.ReLU())
    surf = fastscape.loss_surface(again, data, dirs, out=out, **kwargs())
    assert surf.meta["run"]["reused_units"] == 4
    fresh = fastscape.loss_surface(first, data, dirs, out=tmp_path / "fresh.h5", **kwargs())
    np.testing.assert_array_equal(surf.loss, fresh.loss)


class Cfg:
    smoothing = 0.0


def class_attr_loss(output, target):
    return F.cross_entropy(output, target, label_smoothing=Cfg.smoothing)


def module_attr_loss(output, target):
    return F.cross_entropy(output, target, label_smoothing=config.SMOOTH)


@pytest.mark.parametrize("state", ["partial", "complete"])
@pytest.mark.parametrize("change", ["class attribute", "module attribute"])
def test_a_loss_reading_a_changed_attribute_is_refused(tmp_path, monkeypatch, state, change):
    model, data, dirs = make_case()
    loss = class_attr_loss if change == "class attribute" else module_attr_loss
    out = tmp_path / "s.h5"
    _run(model, data, dirs, out, state, loss_fn=loss)
    if change == "class attribute":
        monkeypatch.setattr(Cfg, "smoothing", 0.3)
    else:
        monkeypatch.setattr(config, "SMOOTH", 0.3)
    where = "the partial run in" if state == "partial" else "`out`"
    with pytest.raises(ValueError, match=rf"{where} .*different settings: loss_fingerprint \("):
        fastscape.loss_surface(model, data, dirs, out=out, **kwargs(loss_fn=loss))


def _loader(x, y, seed):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed))


def test_a_shuffled_loader_resumes_and_reuses_its_file(tmp_path):
    """The data fingerprint is of the samples, not their order. The values of two orders differ
    only by float32 rounding: each batch's mean is taken over other samples."""
    model, (x, y), dirs = make_case()
    out = tmp_path / "s.h5"
    _run(model, _loader(x, y, 1), dirs, out, "partial")
    surf = fastscape.loss_surface(model, _loader(x, y, 2), dirs, out=out, **kwargs())
    assert surf.meta["run"]["reused_units"] == 4
    reference = fastscape.loss_surface(model, (x, y), dirs, **kwargs())  # in order, in memory
    np.testing.assert_allclose(surf.loss, reference.loss, rtol=1e-6, atol=1e-7)
    again = fastscape.loss_surface(model, _loader(x, y, 3), dirs, out=out, **kwargs())
    assert again.meta["run"]["reused_units"] == again.meta["run"]["units"]
    np.testing.assert_array_equal(again.loss, surf.loss)


def test_shuffled_samples_are_the_same_data_but_other_pairs_are_not(tmp_path):
    model, (x, y), dirs = make_case()
    out = tmp_path / "s.h5"
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(5))
    _run(model, (x[perm], y[perm]), dirs, out)  # the same samples, permuted: reused
    assert fastscape.loss_surface(model, (x, y), dirs, out=out, **kwargs()).meta["run"]["reused_units"] == 9
    with pytest.raises(ValueError, match=r"different settings: data_fingerprint \("):  # pairs broken up
        fastscape.loss_surface(model, (x, y[perm]), dirs, out=out, **kwargs())
    x2 = x.clone()
    x2[[3, 9], 1] *= -1  # two signs flipped in one feature: the same multiset of words per column
    with pytest.raises(ValueError, match=r"different settings: data_fingerprint \("):
        fastscape.loss_surface(model, (x2, y), dirs, out=out, **kwargs())


class Augmented(torch.utils.data.Dataset):
    """A dataset with a random transform: every read of a sample differs."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(self.x[i].shape), self.y[i]


def test_random_augmentation_is_announced_on_the_first_run(tmp_path):
    model, (x, y), dirs = make_case()
    out = tmp_path / "s.h5"
    loader = torch.utils.data.DataLoader(Augmented(x, y), batch_size=10)
    with pytest.warns(UserWarning, match=r"`data` gives other values each time it is read .*random "
                                         r"(transform|augmentation).*will not be resumed or reused"):
        fastscape.loss_surface(model, loader, dirs, out=out, **kwargs())
    with pytest.raises(ValueError, match=r"`data` gives other values each time it is read"):
        fastscape.loss_surface(model, loader, dirs, out=out, **kwargs())


class Locked(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)
        self.lock = threading.Lock()  # nothing fastscape can fingerprint

    def forward(self, x):
        return self.fc(x)


def test_a_model_that_cannot_be_fingerprinted_is_announced_and_can_be_vouched_for(tmp_path):
    _, data, _ = make_case()
    torch.manual_seed(0)
    model = Locked()
    dirs = fastscape.random_directions(model, n=2, seed=1)
    out = tmp_path / "s.h5"
    with pytest.warns(UserWarning, match=r"`model` cannot be fingerprinted \(`model`.lock is a _thread.lock"):
        fastscape.loss_surface(model, data, dirs, out=out, **kwargs())
    with pytest.raises(ValueError, match=r"`model` cannot be fingerprinted"):
        fastscape.loss_surface(model, data, dirs, out=out, **kwargs())
    model.fastscape_fingerprint = "locked-v1"
    first = fastscape.loss_surface(model, data, dirs, out=tmp_path / "t.h5", **kwargs())
    again = fastscape.loss_surface(model, data, dirs, out=tmp_path / "t.h5", **kwargs())
    assert again.meta["run"]["reused_units"] == again.meta["run"]["units"]
    np.testing.assert_array_equal(again.loss, first.loss)
