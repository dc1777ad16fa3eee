"""loss_surface against a plain per-point loop, and its invariants."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastscape
from fastscape._core.params import model_parameters
from tests.models import assert_unchanged as _assert_unchanged
from tests.models import snapshot as _snapshot
from tests.models import MLP, LSTMRegressor, SmallCNN, TinyTransformer, WithBuffer, trained_bn_stats
from tests.reference import loop_surface


def _dirs(model, gen, k=2):
    # plain Gaussian directions built here, independent of random_directions
    return [{n: torch.randn(p.shape, generator=gen) * 0.3 for n, p in model.named_parameters()} for _ in range(k)]






CASES = {
    "mlp": (lambda g: MLP(), lambda g: (torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)), F.cross_entropy),
    "cnn_bn": (lambda g: SmallCNN(), lambda g: (torch.randn(24, 1, 8, 8, generator=g), torch.randint(0, 4, (24,), generator=g)), F.cross_entropy),
    "buffer": (lambda g: WithBuffer(), lambda g: (torch.randn(30, 4, generator=g), torch.randn(30, 1, generator=g)), F.mse_loss),
    "transformer": (lambda g: TinyTransformer(), lambda g: (torch.randint(0, 11, (12, 7), generator=g), torch.randint(0, 3, (12,), generator=g)), F.cross_entropy),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_per_point_loop(case, gen):
    make_model, make_data, loss_fn = CASES[case]
    torch.manual_seed(0)
    model = make_model(gen)
    x, y = make_data(gen)
    if case == "cnn_bn":
        trained_bn_stats(model, x)
    model.train()  # the evaluator must still use eval mode, and restore this flag
    snap = _snapshot(model)
    dirs = _dirs(model, gen)
    axes = [np.linspace(-1, 1, 4), np.linspace(-0.5, 1.5, 3)]
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=loss_fn, grid=axes, device="cpu")
    _assert_unchanged(model, snap)
    ref = loop_surface(model, x, y, loss_fn, model_parameters(model), dirs, axes)
    assert surf.loss.shape == (4, 3)
    np.testing.assert_allclose(surf.loss, ref, rtol=2e-4, atol=1e-5)


def test_lstm_falls_back_with_one_warning(gen):
    model = LSTMRegressor()
    x, y = torch.randn(10, 5, 3, generator=gen), torch.randn(10, 1, generator=gen)
    dirs = _dirs(model, gen)
    axes = [np.linspace(-1, 1, 3), np.linspace(-1, 1, 2)]
    with pytest.warns(fastscape.FallbackWarning, match="vmap") as record:
        surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=axes, device="cpu", chunk_size=2)
    assert len([w for w in record if issubclass(w.category, fastscape.FallbackWarning)]) == 1
    assert surf.meta["fallback"] is True
    ref = loop_surface(model, x, y, F.mse_loss, model_parameters(model), dirs, axes)
    np.testing.assert_allclose(surf.loss, ref, rtol=2e-4, atol=1e-6)


def test_origin_value_is_the_models_own_loss(gen):
    model = SmallCNN()
    x, y = torch.randn(20, 1, 8, 8, generator=gen), torch.randint(0, 4, (20,), generator=gen)
    trained_bn_stats(model, x)
    model.eval()
    surf = fastscape.loss_surface(model, (x, y), _dirs(model, gen), loss_fn=F.cross_entropy, grid=(-1, 1, 5), device="cpu")
    with torch.no_grad():
        own = F.cross_entropy(model(x), y).item()
    assert surf.loss[2, 2] == pytest.approx(own, rel=1e-5)


def test_chunk_and_batch_size_do_not_change_the_result(gen):
    model = MLP()
    x, y = torch.randn(50, 5, generator=gen), torch.randint(0, 3, (50,), generator=gen)
    dirs = _dirs(model, gen)
    base = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 7), device="cpu",
                                  chunk_size=49)
    for chunk, batch in [(1, 50), (5, 7), (13, 1), (3, 16)]:
        other = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 7), device="cpu",
                                       chunk_size=chunk, batch_size=batch)
        np.testing.assert_allclose(other.loss, base.loss, rtol=1e-5, atol=1e-6)


def test_dataloader_gives_the_exact_sample_weighted_mean(gen):
    # 23 samples in batches of 5: the last batch has 3; a mean of batch means would differ
    model = WithBuffer()
    x, y = torch.randn(23, 4, generator=gen), torch.randn(23, 1, generator=gen) * 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    dirs = _dirs(model, gen, k=1)
    surf = fastscape.loss_surface(model, loader, dirs, loss_fn=F.mse_loss, grid=(-1, 1, 5), device="cpu")
    ref = loop_surface(model, x, y, F.mse_loss, model_parameters(model), dirs, [np.linspace(-1, 1, 5)])
    np.testing.assert_allclose(surf.loss, ref, rtol=1e-5)


def test_non_square_grid_keeps_its_orientation():
    # a linear model y = w*x + b on one input: the loss is known in closed form
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
        model.bias.fill_(0.0)
    x = torch.linspace(-1, 1, 9).reshape(-1, 1)
    y = 2.0 * x + 0.5
    d_w = {"weight": torch.ones(1, 1), "bias": torch.zeros(1)}
    d_b = {"weight": torch.zeros(1, 1), "bias": torch.ones(1)}
    ws, bs = np.linspace(0, 3, 4), np.linspace(-1, 1, 7)
    surf = fastscape.loss_surface(model, (x, y), [d_w, d_b], loss_fn=F.mse_loss, grid=[ws, bs], device="cpu",
                                  dtype=torch.float64)
    assert surf.loss.shape == (4, 7)
    xs = x.double().numpy().ravel()
    closed = np.array([[np.mean((w * xs + b - (2 * xs + 0.5)) ** 2) for b in bs] for w in ws])
    np.testing.assert_allclose(surf.loss, closed, rtol=1e-12)
    assert surf.argmin() == pytest.approx((2.0, 0.5 if 0.5 in bs else bs[np.argmin(np.abs(bs - 0.5))]))


def test_one_and_three_directions(gen):
    model = MLP()
    x, y = torch.randn(16, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    for k, axes in [(1, [np.linspace(-1, 1, 5)]), (3, [np.linspace(-1, 1, 3), np.linspace(0, 1, 2), np.linspace(-1, 0, 4)])]:
        dirs = _dirs(model, gen, k)
        surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=axes, device="cpu")
        ref = loop_surface(model, x, y, F.cross_entropy, model_parameters(model), dirs, axes)
        assert surf.loss.shape == tuple(len(a) for a in axes)
        np.testing.assert_allclose(surf.loss, ref, rtol=2e-4, atol=1e-6)


def test_accuracy_in_the_same_pass(gen):
    model = MLP()
    x, y = torch.randn(30, 5, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    dirs = _dirs(model, gen, k=1)
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-2, 2, 5), device="cpu",
                                  metrics={"accuracy": fastscape.accuracy}, batch_size=7)
    for i, c in enumerate(np.linspace(-2, 2, 5)):
        m = copy.deepcopy(model).eval()
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.add_(float(c) * dirs[0][n])
            acc = (m(x).argmax(1) == y).float().mean().item()
        assert surf.metrics["accuracy"][i] == pytest.approx(acc, abs=1e-6)


def test_float64_on_request(gen):
    model = WithBuffer()
    x, y = torch.randn(10, 4, generator=gen), torch.randn(10, 1, generator=gen)
    dirs = _dirs(model, gen)
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, grid=(-1, 1, 3), device="cpu",
                                  dtype=torch.float64)
    ref = loop_surface(model, x, y, F.mse_loss, model_parameters(model), dirs, [np.linspace(-1, 1, 3)] * 2)
    np.testing.assert_allclose(surf.loss, ref, rtol=1e-12)
    assert surf.meta["dtype"] == "float64"
    assert next(model.parameters()).dtype == torch.float32


def test_diverging_region_is_recorded_not_raised():
    model = torch.nn.Linear(1, 1, bias=False)
    x = torch.full((4, 1), 10.0)
    y = torch.zeros(4, 1)
    d = [{"weight": torch.ones(1, 1)}]
    # exp overflows float32 for large weights: inf (and inf - inf = nan) is recorded
    surf = fastscape.loss_surface(model, (x, y), d, loss_fn=lambda o, t: torch.exp(o).mean() - torch.exp(o).mean() * (o.abs().max() > 1e3),
                                  grid=[np.array([0.0, 1.0, 20.0, 1e4])], device="cpu")
    assert np.isfinite(surf.loss[:2]).all()
    assert not np.isfinite(surf.loss[2:]).any()


def test_save_and_load_round_trip(tmp_path, gen):
    model = MLP()
    x, y = torch.randn(12, 5, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    dirs = fastscape.random_directions(model, 2, seed=3)
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=[(-1, 1, 3), (0, 2, 5)],
                                  metrics={"accuracy": fastscape.accuracy}, device="cpu")
    back = fastscape.load_surface(surf.save(tmp_path / "s.h5"))
    assert back.loss.shape == (3, 5)
    np.testing.assert_array_equal(back.loss, surf.loss)
    np.testing.assert_array_equal(back.metrics["accuracy"], surf.metrics["accuracy"])
    for a, b in zip(back.coords, surf.coords):
        np.testing.assert_array_equal(a, b)
    assert back.meta["directions"]["seed"] == 3 and back.meta["directions"]["norm"] == "filter"
    import h5py

    with h5py.File(tmp_path / "s.h5") as f:  # the Li et al. layout: train_loss[j, i] is (x_i, y_j)
        assert f["train_loss"].shape == (5, 3)
        assert f["train_loss"][4, 2] == surf.loss[2, 4]


def test_origin_as_module_and_dict(gen):
    a, b = MLP(), MLP()
    x, y = torch.randn(10, 5, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    dirs = _dirs(a, gen, k=1)
    s1 = fastscape.loss_surface(a, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 3), origin=b, device="cpu")
    s2 = fastscape.loss_surface(a, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 3),
                                origin=dict(b.named_parameters()), device="cpu")
    ref = loop_surface(a, x, y, F.cross_entropy, model_parameters(b), dirs, [np.linspace(-1, 1, 3)])
    np.testing.assert_allclose(s1.loss, ref, rtol=1e-5)
    np.testing.assert_allclose(s2.loss, ref, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(gen):
    model = SmallCNN()
    x, y = torch.randn(20, 1, 8, 8, generator=gen), torch.randint(0, 4, (20,), generator=gen)
    dirs = _dirs(model, gen)
    cpu = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 5), device="cpu")
    gpu = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.cross_entropy, grid=(-1, 1, 5), device="cuda")
    np.testing.assert_allclose(gpu.loss, cpu.loss, rtol=1e-3, atol=1e-4)
    assert next(model.parameters()).device.type == "cpu"


# ---------------------------------------------------------------- errors


def _small(gen):
    model = MLP()
    return model, (torch.randn(6, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen))


def test_error_direction_missing_key(gen):
    model, data = _small(gen)
    d = _dirs(model, gen)
    del d[0]["net.0.bias"]
    with pytest.raises(ValueError, match=r"directions\[0\].*net\.0\.bias"):
        fastscape.loss_surface(model, data, d, loss_fn=F.cross_entropy)


def test_error_direction_wrong_shape(gen):
    model, data = _small(gen)
    d = _dirs(model, gen)
    d[1]["net.0.weight"] = torch.zeros(5, 16)
    with pytest.raises(ValueError, match=r"directions\[1\]\['net\.0\.weight'\].*\(5, 16\).*\(16, 5\)"):
        fastscape.loss_surface(model, data, d, loss_fn=F.cross_entropy)


def test_error_direction_unknown_key(gen):
    model, data = _small(gen)
    d = _dirs(model, gen)
    d[0]["fc.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"fc\.weight"):
        fastscape.loss_surface(model, data, d, loss_fn=F.cross_entropy)


def test_error_empty_dataset(gen):
    model, _ = _small(gen)
    with pytest.raises(ValueError, match="`data` is empty"):
        fastscape.loss_surface(model, (torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)), _dirs(model, gen),
                               loss_fn=F.cross_entropy)
    with pytest.raises(ValueError, match="`data` is empty"):
        fastscape.loss_surface(model, [], _dirs(model, gen), loss_fn=F.cross_entropy)


@pytest.mark.parametrize("grid,match", [
    ((-1, 1, 0), "step count must be an integer >= 1"),
    ([np.array([]), np.array([0.0])], "axis 0 has no points"),
    ([np.array([0.0, np.nan]), np.array([0.0])], "axis 0 has non-finite"),
    ((-np.inf, 1, 3), "must be finite"),
    ([(-1, 1, 3)], "list of 2 per-direction"),
])
def test_error_bad_grid(gen, grid, match):
    model, data = _small(gen)
    with pytest.raises(ValueError, match=match):
        fastscape.loss_surface(model, data, _dirs(model, gen), loss_fn=F.cross_entropy, grid=grid)


def test_error_loss_not_scalar(gen):
    model, data = _small(gen)
    with pytest.raises(ValueError, match="`loss_fn` must return a scalar"):
        fastscape.loss_surface(model, data, _dirs(model, gen),
                               loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="none"))


def test_error_unknown_norm(gen):
    model, _ = _small(gen)
    with pytest.raises(ValueError, match=r"`norm` must be one of \['filter', 'layer', 'model', None\]; got 'unit'"):
        fastscape.random_directions(model, norm="unit")


def test_error_bad_dtype_and_mismatched_data(gen):
    model, data = _small(gen)
    with pytest.raises(ValueError, match="`dtype` must be"):
        fastscape.loss_surface(model, data, _dirs(model, gen), loss_fn=F.cross_entropy, dtype="float16")
    with pytest.raises(ValueError, match="inputs have 6 samples but targets have 5"):
        fastscape.loss_surface(model, (data[0], data[1][:5]), _dirs(model, gen), loss_fn=F.cross_entropy)


def test_zero_directions_give_the_origin_loss_everywhere(gen):
    model = WithBuffer()
    x, y = torch.randn(9, 4, generator=gen), torch.randn(9, 1, generator=gen)
    zero = [{n: torch.zeros_like(p) for n, p in model.named_parameters()}]
    surf = fastscape.loss_surface(model, (x, y), zero, loss_fn=F.mse_loss, grid=(-1, 1, 4), device="cpu")
    with torch.no_grad():
        own = F.mse_loss(model(x), y).item()
    np.testing.assert_allclose(surf.loss, own, rtol=1e-6)


@pytest.mark.parametrize("grid, strategy", [((0.0, 0.0, 1), "auto"), ((-1, 1, 3), "vmap"), ((0.0, 0.0, 1), "vmap")])
def test_zero_directions_on_any_grid_and_strategy_give_the_origin_loss(gen, grid, strategy):
    """Nothing moves: a one-point grid, or a named vectorised strategy, still evaluates the origin
    (vmap had no tensor to map over)."""
    model = WithBuffer()
    x, y = torch.randn(9, 4, generator=gen), torch.randn(9, 1, generator=gen)
    zero = [{n: torch.zeros_like(p) for n, p in model.named_parameters()}]
    surf = fastscape.loss_surface(model, (x, y), zero, loss_fn=F.mse_loss, grid=grid, strategy=strategy,
                                  device="cpu", progress=False)
    with torch.no_grad():
        own = F.mse_loss(model(x), y).item()
    np.testing.assert_allclose(surf.loss, own, rtol=1e-6)
