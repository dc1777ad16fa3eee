"""Every evaluation strategy against the plain per-point loop and the plain vmap path."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape
from fastscape._demo import TwoWeightNet, piecewise_data
from fastscape._core.data import Batches
from fastscape._core.evaluator import evaluate
from fastscape._core.points import AffinePoints
from fastscape._core.grid import mesh
from fastscape._core.params import model_parameters
from fastscape._core.auto import AUTO_CHOICES
from fastscape._core.strategies import STRATEGIES, compiler_available, strategy_names
from tests.models import MLP, SmallCNN, WithBuffer, assert_unchanged, snapshot, trained_bn_stats
from tests.reference import loop_surface

def _dirs(model, gen, k=2):
    return [{n: torch.randn(p.shape, generator=gen) * 0.3 for n, p in model.named_parameters()} for _ in range(k)]


def _case(name, gen):
    if name == "mlp":
        model = MLP()
        x, y = torch.randn(40, 5, generator=gen), torch.randint(0, 3, (40,), generator=gen)
        return model, x, y, F.cross_entropy, _dirs(model, gen), None
    if name == "mlp_head":  # directions that move the last layer only: the rest is the same at every point
        model, x, y, loss_fn, dirs, _ = _case("mlp", gen)
        last = [n for n, _ in model.named_parameters()][-2:]
        return model, x, y, loss_fn, [{k: (v if k in last else torch.zeros_like(v)) for k, v in d.items()}
                                      for d in dirs], None
    if name == "cnn_bn":
        model = SmallCNN()
        x, y = torch.randn(24, 1, 8, 8, generator=gen), torch.randint(0, 4, (24,), generator=gen)
        trained_bn_stats(model, x)
        return model, x, y, F.cross_entropy, _dirs(model, gen), None
    if name == "seed000":  # axis directions over the raw weights: the deduplicated affine path
        model = TwoWeightNet()
        x, y = piecewise_data(300)
        names = ["net.0.weight", "net.2.weight"]
        return (model, x, y, F.mse_loss, list(fastscape.axis_directions(model, names)),
                fastscape.axis_origin(model, names, at="zero"))
    raise KeyError(name)


def _surface(model, x, y, loss_fn, dirs, origin, axes, **kw):
    origin = origin if origin is not None else model_parameters(model)
    coords = torch.from_numpy(mesh(axes))
    points = AffinePoints({k: origin[k] for k in dirs[0]}, dirs, coords)
    values, report = evaluate(model, Batches((x, y), **kw.pop("data", {})), points, loss_fn=loss_fn, **kw)
    return values["loss"].reshape([len(a) for a in axes]), report


AXES = [np.linspace(-1, 1, 5), np.linspace(-0.5, 1.5, 4)]


def _refused(err: ValueError) -> bool:
    """A strategy's refusal of a model it cannot evaluate (its NotApplicable, said as ValueError)."""
    return "cannot evaluate this model" in str(err)


#: every registered name and "auto"; a compiled one where torch.compile can build kernels
NAMES = [pytest.param(n, marks=pytest.mark.skipif(n in STRATEGIES and STRATEGIES[n].compiled
                                                  and not compiler_available(), reason="needs a C++ compiler"))
         for n in strategy_names()]
CASES = ["mlp", "cnn_bn", "seed000", "mlp_head"]


@pytest.mark.parametrize("strategy", NAMES)
def test_every_registered_strategy_matches_a_per_point_loop(strategy, gen):
    """Each name of the registry, on every case it applies to (a refusal is a skip, but a name must
    apply to one case at least), against the float64 per-point loop of tests/reference.py, and
    against plain vmap; the model is left alone. A strategy is tested here by registering it.
    A compiled one is checked on the first case it applies to (a compilation costs seconds)."""
    compiled = strategy in STRATEGIES and STRATEGIES[strategy].compiled
    applied = []
    for case in CASES[::-1] if compiled else CASES:
        if compiled and applied:
            break
        model, x, y, loss_fn, dirs, origin = _case(case, gen)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        children = [id(m) for m in model.modules()]
        try:
            loss, report = _surface(model, x, y, loss_fn, dirs, origin, AXES, strategy=strategy, chunk_size=6,
                                    data={"batch_size": 16})
        except ValueError as err:
            if not _refused(err):
                raise
            continue
        applied.append(case)
        assert strategy == "auto" or report.strategy == strategy
        center = origin if origin is not None else model_parameters(model)
        ref = loop_surface(model, x, y, loss_fn, center, dirs, AXES, batch_size=16)
        np.testing.assert_allclose(loss, ref, rtol=2e-4, atol=1e-5, err_msg=f"{strategy} on {case}")
        plain, _ = _surface(model, x, y, loss_fn, dirs, origin, AXES, strategy="vmap", chunk_size=6)
        np.testing.assert_allclose(loss, plain, rtol=1e-4, atol=1e-6, err_msg=f"{strategy} on {case}")
        # the model is left alone: weights, and its module tree (the affine path swaps a layer in a clone)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        assert [id(m) for m in model.modules()] == children
    assert applied, f"{strategy!r} applies to none of {CASES}: add a case it evaluates"


def test_affine_folds_activation_and_deduplicates(gen):
    # the seed-000 first layer moves with w1 only: tanh(w1 x) is computed once per distinct w1
    model, x, y, loss_fn, dirs, origin = _case("seed000", gen)
    from fastscape._core.strategies import AffineStrategy, Context

    points = AffinePoints(origin, dirs, torch.zeros(3, 2))
    points.to(torch.device("cpu"), torch.float32)
    s = AffineStrategy(Context(model, {}, points, loss_fn, {}, 3, args0=(x,)))
    assert s.path == "net.0" and s.dirs_used == [0]
    assert [type(a) for a in s.acts] == [nn.Tanh]
    assert isinstance(s.clone.net[1], nn.Identity) and isinstance(model.net[1], nn.Tanh)


def test_affine_checks_metrics_and_float64(gen):
    model, x, y, loss_fn, dirs, _ = _case("mlp", gen)
    axes = [np.linspace(-1, 1, 3), np.linspace(-1, 1, 3)]
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=loss_fn, grid=axes, strategy="affine",
                                  metrics={"accuracy": fastscape.accuracy}, dtype=torch.float64)
    ref = loop_surface(model, x, y, loss_fn, model_parameters(model), dirs, axes)
    np.testing.assert_allclose(surf.loss, ref, rtol=1e-10)
    plain = fastscape.loss_surface(model, (x, y), dirs, loss_fn=loss_fn, grid=axes, strategy="vmap",
                                   metrics={"accuracy": fastscape.accuracy}, dtype=torch.float64)
    np.testing.assert_array_equal(surf.metrics["accuracy"], plain.metrics["accuracy"])
    assert surf.meta["strategy"] == "affine"


def test_affine_refuses_model_whose_layer_does_not_see_raw_input(gen):
    model = WithBuffer()  # fc sees (x - mean) / scale
    x, y = torch.randn(10, 4, generator=gen), torch.randn(10, 1, generator=gen)
    with pytest.raises(ValueError, match="strategy='affine'.*raw input"):
        fastscape.loss_surface(model, (x, y), _dirs(model, gen), loss_fn=F.mse_loss, grid=3, strategy="affine")


class _Shared(nn.Module):
    """The same layer applied twice: its second call does not see the raw input."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.fc(x))).sum(1, keepdim=True)


def test_affine_refuses_layer_called_twice_and_auto_skips_it(gen):
    model = _Shared()
    x, y = torch.randn(12, 3, generator=gen), torch.randn(12, 1, generator=gen)
    dirs = _dirs(model, gen)
    with pytest.raises(ValueError, match="exactly once"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=3, strategy="affine")
    axes = [np.linspace(-1, 1, 4)] * 2
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=axes, chunk_size=5)
    assert surf.meta["strategy"] in ("vmap", "loop")  # the faster of the two on this machine, never affine
    assert any("affine skipped" in n for n in surf.meta["notes"])
    ref = loop_surface(model, x, y, F.mse_loss, model_parameters(model), dirs, axes)
    np.testing.assert_allclose(surf.loss, ref, rtol=2e-4, atol=1e-6)


def test_unknown_strategy_lists_valid_names(gen):
    model, x, y, loss_fn, dirs, _ = _case("mlp", gen)
    with pytest.raises(ValueError, match=r"`strategy` must be one of \['auto', 'vmap', 'loop', 'affine'"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=loss_fn, grid=3, strategy="fast")


def test_auto_probes_remembers_and_matches_reference(gen):
    model, x, y, loss_fn, dirs, _ = _case("mlp", gen)
    axes = [np.linspace(-1, 1, 6), np.linspace(-1, 1, 5)]
    AUTO_CHOICES.clear()
    first = fastscape.loss_surface(model, (x, y), dirs, loss_fn=loss_fn, grid=axes, chunk_size=7)
    assert first.meta["strategy"] in STRATEGIES
    assert any("chose" in n for n in first.meta["notes"])
    assert len(AUTO_CHOICES) == 1
    second = fastscape.loss_surface(model, (x, y), dirs, loss_fn=loss_fn, grid=axes, chunk_size=7)
    assert any("remembered" in n for n in second.meta["notes"])
    assert second.meta["strategy"] == first.meta["strategy"]
    ref = loop_surface(model, x, y, loss_fn, model_parameters(model), dirs, axes)
    np.testing.assert_allclose(first.loss, ref, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(second.loss, ref, rtol=2e-4, atol=1e-5)


class _SeqOverTokens(nn.Module):
    """A Sequential over (n, 7, 5) inputs whose last layers see the flattened sequence."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 4), nn.Flatten(), nn.Linear(28, 3))

    def forward(self, x):
        return self.body(x)


def _mlp_case(name, gen):
    torch.manual_seed(3)
    if name == "wrapped":  # a module whose forward returns its Sequential's output; every tensor moves
        model = MLP()
        x, y = torch.randn(40, 5, generator=gen), torch.randint(0, 3, (40,), generator=gen)
        return model, x, y, _dirs(model, gen)
    if name == "bare":  # fixed biases, and a layer whose bias alone moves: the shared-weight branches
        model = nn.Sequential(nn.Linear(5, 8), nn.LeakyReLU(0.1), nn.Dropout(0.5), nn.Linear(8, 6), nn.Sigmoid(),
                              nn.Linear(6, 3)).train()
        x, y = torch.randn(40, 5, generator=gen), torch.randint(0, 3, (40,), generator=gen)
        dirs = fastscape.random_directions(model, 2, seed=1)  # ignore="biasbn": biases do not move
        for d in dirs:
            d["3.weight"].zero_()
            d["3.bias"] = torch.randn(6, generator=gen)
        return model, x, y, dirs  # dropout is in train mode: the evaluator must use eval mode
    if name == "tokens":
        model = _SeqOverTokens()
        x, y = torch.randn(30, 7, 5, generator=gen), torch.randint(0, 3, (30,), generator=gen)
        return model, x, y, _dirs(model, gen)
    raise KeyError(name)


@pytest.mark.parametrize("case", ["wrapped", "bare", "tokens"])
def test_mlp_strategy_matches_loop_reference(case, gen):
    model, x, y, dirs = _mlp_case(case, gen)
    snap = snapshot(model)
    metrics = {"accuracy": fastscape.accuracy}
    loss, report = _surface(model, x, y, F.cross_entropy, dirs, None, AXES, strategy="mlp", chunk_size=6,
                            metrics=metrics, data={"batch_size": 16})
    assert report.strategy == "mlp"
    ref = loop_surface(model, x, y, F.cross_entropy, model_parameters(model), dirs, AXES, batch_size=16)
    np.testing.assert_allclose(loss, ref, rtol=2e-4, atol=1e-5)
    coords = torch.from_numpy(mesh(AXES))
    points = AffinePoints({k: model_parameters(model)[k] for k in dirs[0]}, dirs, coords)
    fast, _ = evaluate(model, Batches((x, y), batch_size=16), points, loss_fn=F.cross_entropy, metrics=metrics,
                       strategy="mlp", chunk_size=6)
    plain, _ = evaluate(model, Batches((x, y), batch_size=16), points, loss_fn=F.cross_entropy, metrics=metrics,
                        strategy="vmap", chunk_size=6)
    np.testing.assert_allclose(fast["loss"], plain["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(fast["accuracy"], plain["accuracy"])
    assert_unchanged(model, snap)  # weights, and dropout still in train mode; no module made in-place


def test_mlp_strategy_refuses_other_models_and_says_why(gen):
    cnn = SmallCNN()
    x = torch.randn(6, 1, 8, 8, generator=gen)
    with pytest.raises(ValueError, match=r"strategy='mlp'.*not an nn.Linear opening an nn.Sequential"):
        fastscape.loss_surface(cnn, (x, torch.randint(0, 4, (6,))), _dirs(cnn, gen), loss_fn=F.cross_entropy,
                               grid=3, strategy="mlp")

    class Scaled(MLP):  # the Sequential's output is changed before it is returned
        def forward(self, x):
            return 2 * self.net(x)

    model = Scaled()
    x, y = torch.randn(8, 5, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    with pytest.raises(ValueError, match="output is not its nn.Sequential's output"):
        fastscape.loss_surface(model, (x, y), _dirs(model, gen), loss_fn=F.cross_entropy, grid=3, strategy="mlp")
    odd = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"module 1 \(LayerNorm\) is not a Linear"):
        fastscape.loss_surface(odd, (x, y), _dirs(odd, gen), loss_fn=F.cross_entropy, grid=3, strategy="mlp")


class _ViewCNN(nn.Module):
    """Flattens a convolution's output with ``.view``, which a channels-last tensor refuses."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


@pytest.mark.parametrize("make, channels, expected", [(SmallCNN, 1, True), (_ViewCNN, 2, False)])
def test_loop_feeds_images_channels_last_only_where_the_model_takes_it(make, channels, expected, gen):
    from fastscape._core.strategies import LoopStrategy, Context

    torch.manual_seed(0)
    model = make().eval()
    x, y = torch.randn(20, channels, 8, 8, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    params = model_parameters(model)
    s = LoopStrategy(Context(model, dict(model.named_buffers()), None, F.cross_entropy, {}, 1))
    assert s._layout(params, (x,)) is expected
    dirs = _dirs(model, gen)
    loss, report = _surface(model, x, y, F.cross_entropy, dirs, None, AXES, strategy="loop")
    ref = loop_surface(model, x, y, F.cross_entropy, params, dirs, AXES)
    np.testing.assert_allclose(loss, ref, rtol=2e-4, atol=1e-5)


# ----------------------------------------------------------------------------- the registry


def test_every_strategy_is_built_the_same_way():
    """One constructor signature: ``cls(ctx)``, the probe's inputs in the context."""
    import inspect

    for name, cls in STRATEGIES.items():
        assert cls.name == name
        assert list(inspect.signature(cls).parameters) == ["ctx"], name
        assert not cls.compiled or STRATEGIES[cls.eager].compiled is False, name


def test_auto_walks_the_registry(monkeypatch, gen):
    """A strategy added to the registry is probed, checked against vmap and can be chosen by
    auto, with no other change; one that computes other values is refused."""
    from fastscape._core import strategies

    class Doubled(strategies.VmapStrategy):
        """vmap's values, twice: wrong, so auto must refuse it."""
        name = "doubled"

        def run(self, *args):
            return 2 * super().run(*args)

    class Cheap(strategies.VmapStrategy):
        """vmap itself, claiming the lowest rank: auto takes it unless it is far slower."""
        name, rank = "cheap", -20

    monkeypatch.setitem(STRATEGIES, "doubled", Doubled)
    monkeypatch.setitem(STRATEGIES, "cheap", Cheap)
    AUTO_CHOICES.clear()
    model, x, y, _, dirs, _ = _case("mlp", gen)
    axes = [np.linspace(-1, 1, 9)] * 2
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=axes, chunk_size=9,
                                  device="cpu", progress=False)
    AUTO_CHOICES.clear()
    notes = " | ".join(surf.meta["notes"])
    assert "auto: doubled skipped (values differ from vmap)" in notes
    assert surf.meta["strategy"] == "cheap", notes
    ref = loop_surface(model, x, y, F.cross_entropy, model_parameters(model), dirs, axes)
    np.testing.assert_allclose(surf.loss, ref, rtol=2e-5, atol=1e-6)
    assert "cheap" in fastscape._core.strategies.strategy_names()


# --------------------------------------------------------------------------- a model vmap cannot batch


def test_vmap_on_an_lstm_raises_value_error():
    from tests.models import LSTMRegressor

    model = LSTMRegressor()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, 3, generator=g), torch.randn(6, 1, generator=g)
    dirs = fastscape.random_directions(model, 1, seed=0)
    with pytest.raises(ValueError, match=r"`strategy='vmap'`.*'loop'"):
        fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=3, device="cpu", strategy="vmap")
