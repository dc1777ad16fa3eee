"""Several datasets in one pass over the grid (issue 15): ``loss_surface(model, {"train": ...,
"test": ...}, ...)`` equals two separate runs, its values are keyed ``"train/loss"``,
``"test/accuracy"``, ..., every value comes with a label and a colour-scale hint
(``Surface.value``), and a surface reads well in a terminal and in Jupyter."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastscape

GRID = [(-1.0, 1.0, 5), (-0.5, 1.0, 4)]


@pytest.fixture
def setup(gen):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 3))
    train = (torch.randn(60, 5, generator=gen), torch.randint(0, 3, (60,), generator=gen))
    test = (torch.randn(37, 5, generator=gen), torch.randint(0, 3, (37,), generator=gen))
    dirs = fastscape.random_directions(model, 2, seed=0)
    return model, train, test, dirs


def _surface(model, data, dirs, **kw):
    kw = {"loss_fn": F.cross_entropy, "grid": GRID, "metrics": {"accuracy": fastscape.accuracy},
          "dtype": "float64", "chunk_size": 6, **kw}
    return fastscape.loss_surface(model, data, dirs, **kw)


def test_two_datasets_in_one_pass_equal_two_separate_runs(setup):
    model, train, test, dirs = setup
    done = []
    both = _surface(model, {"train": train, "test": test}, dirs, progress=done.append)
    one = _surface(model, train, dirs)
    two = _surface(model, test, dirs)

    assert sum(done) == 20  # one pass over the 5 x 4 grid, not one per dataset
    assert both.datasets == ["train", "test"]
    assert both.value_names == ["train/loss", "train/accuracy", "test/loss", "test/accuracy"]
    assert both.loss.shape == (5, 4)
    np.testing.assert_allclose(both.loss, one.loss, rtol=1e-10)  # `loss` is the first dataset's
    np.testing.assert_allclose(both.value("train/loss").data, one.loss, rtol=1e-10)
    np.testing.assert_allclose(both.value("train/accuracy").data, one.metrics["accuracy"], rtol=1e-10)
    np.testing.assert_allclose(both.value("test/loss").data, two.loss, rtol=1e-10)
    np.testing.assert_allclose(both.value("test/accuracy").data, two.metrics["accuracy"], rtol=1e-10)
    np.testing.assert_allclose(both.metrics["test/accuracy"], two.metrics["accuracy"], rtol=1e-10)
    assert both.meta["datasets"] == {"train": 60, "test": 37}


def test_datasets_of_any_form_and_batch_size(setup):
    """A DataLoader for one dataset and a pair for the other; data batches split differently."""
    model, train, test, dirs = setup
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*test), batch_size=10)
    both = _surface(model, {"train": train, "test": loader}, dirs, batch_size=16)
    two = _surface(model, test, dirs)
    np.testing.assert_allclose(both.value("test/loss").data, two.loss, rtol=1e-10)


def test_value_accessor(setup):
    model, train, test, dirs = setup
    both = _surface(model, {"train": train, "test": test}, dirs)
    acc = both.value("test/accuracy")
    assert (acc.name, acc.dataset, acc.metric, acc.kind) == ("test/accuracy", "test", "accuracy", "accuracy")
    assert acc.label == "test accuracy"
    assert acc.log is False and acc.limits == (0.0, 1.0) and acc.best == "max"
    loss = both.value()  # "loss" is the first dataset's loss, as Surface.loss
    assert loss.name == "train/loss" and loss.label == "train loss"
    assert loss.log is True and loss.limits is None and loss.best == "min"
    np.testing.assert_array_equal(loss.data, both.loss)
    with pytest.raises(ValueError, match=r"`value` must be one of \['train/loss', 'train/accuracy', "
                                         r"'test/loss', 'test/accuracy'\]; got 'accuracy'"):
        both.value("accuracy")

    one = _surface(model, train, dirs, metrics={"accuracy": fastscape.accuracy,
                                                "margin": lambda out, y: out.max(1).values.mean()})
    assert one.datasets == []
    assert one.value_names == ["loss", "accuracy", "margin"]
    v = one.value("accuracy")
    assert (v.name, v.label, v.dataset, v.limits) == ("accuracy", "accuracy", None, (0.0, 1.0))
    m = one.value("margin")
    assert (m.kind, m.log, m.limits, m.best, m.label) == ("metric", False, None, None, "margin")
    with pytest.raises(ValueError, match=r"`value` must be one of \['loss', 'accuracy', 'margin'\]; got 'f1'"):
        one.value("f1")


def test_file_keeps_the_datasets(setup, tmp_path):
    model, train, test, dirs = setup
    both = _surface(model, {"train": train, "test": test}, dirs)
    back = fastscape.load_surface(both.save(tmp_path / "s.h5"))
    assert back.value_names == both.value_names and back.datasets == ["train", "test"]
    for name in both.value_names:
        np.testing.assert_array_equal(back.value(name).data, both.value(name).data)

    # computed into a resumable file: the same values, and the same request is found complete
    out = tmp_path / "run.h5"
    run = _surface(model, {"train": train, "test": test}, dirs, out=out)
    again = _surface(model, {"train": train, "test": test}, dirs, out=out)
    for name in both.value_names:
        np.testing.assert_allclose(run.value(name).data, both.value(name).data, rtol=1e-10)
        np.testing.assert_array_equal(again.value(name).data, run.value(name).data)
    # another split of the data is another request
    with pytest.raises(ValueError, match="different settings"):
        _surface(model, {"train": test, "test": train}, dirs, out=out)


def test_bad_dataset_names(setup):
    model, train, test, dirs = setup
    with pytest.raises(ValueError, match=r"`data` names may not contain '/'.*got 'a/b'"):
        _surface(model, {"a/b": train}, dirs)
    with pytest.raises(ValueError, match=r"`data` must name at least one dataset"):
        _surface(model, {}, dirs)
    with pytest.raises(TypeError, match=r"`data` names must be non-empty strings; got 1"):
        _surface(model, {1: train}, dirs)


def test_repr_is_readable(setup):
    model, train, test, dirs = setup
    both = _surface(model, {"train": train, "test": test}, dirs)
    text = repr(both)
    assert text.startswith("Surface(")
    assert "array(" not in text and len(text) < 600
    assert "5 x 4" in text
    for name in both.value_names:
        assert name in text
    assert "train: 60" in text and "test: 37" in text
    html = both._repr_html_()
    assert "<table" in html and "test/accuracy" in html
    line = fastscape.Surface(coords=[np.linspace(-1, 1, 7)], loss=np.linspace(1, 2, 7))
    assert "7 points" in repr(line) and "array(" not in repr(line)
