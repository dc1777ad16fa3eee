"""``fastscape.accuracy`` states its convention: one output column is read as probabilities when
every value of the batch lies in [0, 1] and as logits otherwise, both can be forced
(``fastscape.accuracy(from_logits=..., threshold=...)`` builds the metric), and what cannot be
decided raises. Checked against scikit-learn's ``accuracy_score``."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score
from torch import nn

import fastscape


@pytest.fixture
def binary(gen):
    """Inputs, 0/1 targets and a one-output net whose logits straddle 0 and leave [0, 1]."""
    x = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    y = (x[:, 0] + 0.8 * x[:, 1] > 0.3).to(torch.float64)
    net = nn.Linear(3, 1).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[2.0, -0.5, 0.7]]))
        net.bias.fill_(0.4)
    return x, y, net


def _np(t):
    return t.detach().reshape(-1).numpy()


@pytest.mark.parametrize("shape", ["(B, 1)", "(B,)"])
def test_sigmoid_output_is_read_as_probabilities(binary, shape):
    x, y, net = binary
    with torch.no_grad():
        p = torch.sigmoid(net(x))
    if shape == "(B,)":
        p = p.reshape(-1)
    want = accuracy_score(_np(y), _np(p) > 0.5)
    assert want != accuracy_score(_np(y), _np(p) > 0)  # the old logit reading would be wrong here
    assert float(fastscape.accuracy(p, y)) == pytest.approx(want)
    assert float(fastscape.accuracy(p, y.reshape(-1, 1))) == pytest.approx(want)


@pytest.mark.parametrize("shape", ["(B, 1)", "(B,)"])
def test_logit_output_is_thresholded_at_zero(binary, shape):
    x, y, net = binary
    with torch.no_grad():
        z = net(x)
    if shape == "(B,)":
        z = z.reshape(-1)
    assert ((z < 0) | (z > 1)).any()
    want = accuracy_score(_np(y), _np(z) > 0)
    assert want != accuracy_score(_np(y), _np(z) > 0.5)
    assert float(fastscape.accuracy(z, y)) == pytest.approx(want)


def test_the_convention_can_be_forced(binary):
    x, y, net = binary
    with torch.no_grad():
        z = net(x) / 10  # logits that happen to lie in [0, 1] for many samples
    z = z.clamp(0, 1)  # ... for all of them: auto would read probabilities
    logits = fastscape.accuracy(from_logits=True)
    assert float(logits(z, y)) == pytest.approx(accuracy_score(_np(y), _np(z) > 0))
    probs = fastscape.accuracy(from_logits=False, threshold=0.3)
    assert float(probs(z, y)) == pytest.approx(accuracy_score(_np(y), _np(z) > 0.3))
    # a probability threshold on logits: p > 0.3  <=>  z > log(0.3 / 0.7)
    with torch.no_grad():
        z = net(x)
    at = fastscape.accuracy(from_logits=True, threshold=0.3)
    assert float(at(z, y)) == pytest.approx(accuracy_score(_np(y), _np(torch.sigmoid(z)) > 0.3))


def test_several_columns_take_the_argmax(gen):
    logits = torch.randn(50, 4, generator=gen)
    y = torch.randint(0, 4, (50,), generator=gen)
    want = accuracy_score(y.numpy(), logits.argmax(1).numpy())
    assert float(fastscape.accuracy(logits, y)) == pytest.approx(want)
    assert float(fastscape.accuracy(logits.softmax(1), y)) == pytest.approx(want)
    one_hot = F.one_hot(y, 4).float()
    assert float(fastscape.accuracy(logits, one_hot)) == pytest.approx(want)


def test_ambiguous_cases_raise(gen):
    z = torch.randn(20, 1, generator=gen)
    with pytest.raises(ValueError, match=r"one output column.*0/1 targets.*got .*2"):
        fastscape.accuracy(z, torch.randint(0, 3, (20,), generator=gen))  # 3 classes, 1 output
    with pytest.raises(ValueError, match=r"`threshold`.*`from_logits`"):
        fastscape.accuracy(threshold=0.3)  # a threshold on which scale?
    with pytest.raises(ValueError, match=r"`threshold` must lie in \(0, 1\)"):
        fastscape.accuracy(from_logits=False, threshold=1.5)
    with pytest.raises(ValueError, match=r"shape \(20, 3\).*targets.*shape \(20, 2\)"):
        fastscape.accuracy(torch.randn(20, 3, generator=gen), torch.zeros(20, 2))


def test_accuracy_of_a_sigmoid_net_on_a_surface(binary):
    """In a surface, every grid point reads the convention from its own outputs (vmap-safe)."""
    x, y, net = binary
    model = nn.Sequential(net, nn.Sigmoid())
    target = y.reshape(-1, 1)
    dirs = fastscape.random_directions(net, 1, seed=0)
    surf = fastscape.loss_surface(model, (x, target), [{f"0.{k}": v for k, v in dirs[0].items()}], loss_fn=F.binary_cross_entropy, grid=(-0.5, 0.5, 3),
                                  metrics={"accuracy": fastscape.accuracy}, dtype="float64")
    with torch.no_grad():
        p = model(x)
    assert surf.metrics["accuracy"][1] == pytest.approx(accuracy_score(_np(y), _np(p) > 0.5))

    # the same net with logits out, scored with the explicit convention
    logit_surf = fastscape.loss_surface(net, (x, target), dirs, loss_fn=F.binary_cross_entropy_with_logits,
                                        grid=(-0.5, 0.5, 3), dtype="float64",
                                        metrics={"accuracy": fastscape.accuracy(from_logits=True)})
    np.testing.assert_allclose(logit_surf.metrics["accuracy"], surf.metrics["accuracy"])


# --------------------------------------------------------------------------- metric arguments


def test_metric_that_is_not_callable_names_it():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
    dirs = fastscape.random_directions(model, 1, seed=0)
    with pytest.raises(TypeError, match=r"`metrics\['acc'\]` must be callable.*got int"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=3, metrics={"acc": 3})


@pytest.mark.parametrize("name, why", [
    ("loss", "reserved"),
    ("test/accuracy", "'/'"),
    ("", "empty"),
])
def test_metric_names_are_validated_up_front(tmp_path, name, why):
    import re

    from tests.integrity_case import make_case

    model, data, dirs = make_case()
    with pytest.raises(ValueError, match=rf"`metrics\[{re.escape(repr(name))}\]`.*{re.escape(why)}"):
        fastscape.loss_surface(model, data, dirs, loss_fn=F.cross_entropy, grid=3, device="cpu",
                               metrics={name: fastscape.accuracy}, out=tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.parts").exists()


def test_a_metric_named_like_the_loss_never_replaces_it():
    from tests.integrity_case import make_case

    # the independent check: the loss at the origin is the model's own loss
    model, (x, y), dirs = make_case()
    with pytest.raises(ValueError, match="loss"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=3, device="cpu",
                               metrics={"loss": fastscape.accuracy})
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=3, device="cpu",
                                  metrics={"accuracy": fastscape.accuracy})
    with torch.no_grad():
        assert surf.loss[1, 1] == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-5)
