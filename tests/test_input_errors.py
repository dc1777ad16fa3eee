"""Bad input gets one clear message naming the argument and what was expected (issue 25's
"unclear" list, the parts outside the command line); each test failed before its fix."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastscape
from fastscape._store import sidecar
from tests.integrity_case import Interrupt, kwargs, make_case, stop_after
from tests.models import MLP


def _plain(**over):
    kw = dict(loss_fn=F.cross_entropy, grid=3, device="cpu", progress=False)
    kw.update(over)
    return kw


def test_directions_on_the_meta_device_are_named():
    model, data, dirs = make_case()
    meta = [{k: v.to("meta") for k, v in d.items()} for d in dirs]
    with pytest.raises(ValueError, match=r"`directions\[0\]\['net.0.weight'\]` is on the 'meta' device"):
        fastscape.loss_surface(model, data, meta, **_plain())


def test_mse_targets_that_broadcast_against_the_output_are_named_in_our_words():
    torch.manual_seed(0)
    model = MLP(d_out=1)
    x, y = torch.randn(20, 5), torch.randn(20)
    with pytest.warns(UserWarning) as record:
        fastscape.loss_surface(model, (x, y), fastscape.random_directions(model, n=1, seed=0),
                               **_plain(loss_fn=F.mse_loss))
    ours = [str(w.message) for w in record if "compares the model's output" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in record]
    assert "output of shape (20, 1) with targets of shape (20,)" in ours[0] and "(20, 20)" in ours[0], ours


def test_out_in_a_folder_that_cannot_be_made_names_the_sidecar(tmp_path):
    model, data, dirs = make_case()
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    with pytest.raises(NotADirectoryError, match=r"`out` .*file.txt/x.h5.* cannot be written: .*file.txt' is a "
                                                  r"file, not a folder"):
        fastscape.loss_surface(model, data, dirs, out=blocker / "x.h5", **_plain())
    if Path("/proc/self").exists():
        with pytest.raises(OSError, match=r"cannot create the folder '/proc/x.h5.parts' that keeps the "
                                          r"finished units of `out` '/proc/x.h5'"):
            fastscape.loss_surface(model, data, dirs, out="/proc/x.h5", **_plain())


@pytest.mark.parametrize("bad", [123, 1.5, ["a.h5"]])
def test_out_must_be_a_path(bad):
    model, data, dirs = make_case()
    with pytest.raises(TypeError, match=r"`out` must be a file path \(str or os.PathLike\); got"):
        fastscape.loss_surface(model, data, dirs, out=bad, **_plain())


def test_hessian_eigenpairs_of_nan_data_or_an_infinite_loss_is_a_clear_error():
    model, (x, y), _ = make_case()
    x = x.clone()
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"`data` holds NaN in its inputs .*no eigenpairs"):
        fastscape.curvature.hessian_eigenpairs(model, (x, y), loss_fn=F.cross_entropy, n=1, device="cpu")

    def infinite(out, t):
        return F.cross_entropy(out, t) / 0.0

    with pytest.raises(ValueError, match=r"not finite.*`loss_fn`"):
        fastscape.curvature.hessian_eigenpairs(model, make_case()[1], loss_fn=infinite, n=1, device="cpu")


@pytest.mark.parametrize("kw,match", [(dict(epochs=0), r"`epochs` must be at least 1"),
                                      (dict(epochs=1, every=5), r"at least 3 snapshots")])
def test_compare_optimizers_without_enough_snapshots_names_epochs(kw, match):
    model, data, _ = make_case()
    opts = {"SGD": lambda p: torch.optim.SGD(p, lr=0.1)}
    with pytest.raises(ValueError, match=match):
        fastscape.compare_optimizers(model, [data], opts, loss_fn=F.cross_entropy, **kw)


def test_three_save_functions_name_a_folder_that_is_a_file(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    x = np.linspace(-1, 1, 4)
    surf = fastscape.Surface(coords=[x, x], loss=np.add.outer(x, x) + 2)
    with pytest.raises(NotADirectoryError, match=r"`path` .*file.txt' is a file, not a folder"):
        surf.save(blocker / "s.h5")
    with pytest.raises(NotADirectoryError, match=r"`out` .*file.txt' is a file, not a folder"):
        fastscape.save_vtp(surf, blocker / "s.vtp")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    with pytest.raises(NotADirectoryError, match=r"`out` .*file.txt' is a file, not a folder"):
        fastscape.plot.save(fig, blocker / "f.png")
    with pytest.raises(TypeError, match=r"`out` must be a file path .*got int"):
        fastscape.plot.save(fig, 123)


def test_surface_save_refuses_an_image_suffix(tmp_path):
    x = np.linspace(-1, 1, 4)
    surf = fastscape.Surface(coords=[x], loss=x**2)
    with pytest.raises(ValueError, match=r"'x.png' ends in '.png', but Surface.save writes an HDF5 file.*plot.save"):
        surf.save(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_a_surface_whose_values_do_not_fit_its_coordinates_is_refused_when_made():
    x = np.linspace(-1, 1, 4)
    with pytest.raises(ValueError, match=r"`loss` has shape \(3, 4\); `coords` make a \(4, 4\) grid"):
        fastscape.Surface(coords=[x, x], loss=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"`metrics\['acc'\]` has shape \(4,\); the loss has shape \(4, 4\)"):
        fastscape.Surface(coords=[x, x], loss=np.zeros((4, 4)), metrics={"acc": np.zeros(4)})


def test_numpy_arrays_as_data_are_named():
    model, (x, y), dirs = make_case()
    with pytest.raises(TypeError, match=r"`data` holds numpy arrays.*torch.from_numpy"):
        fastscape.loss_surface(model, (x.numpy(), y.numpy()), dirs, **_plain())


@pytest.mark.parametrize("name", [".", "..", " . "])
def test_a_metric_named_dot_is_refused_before_the_grid(name, tmp_path):
    model, data, dirs = make_case()
    calls = []
    with pytest.raises(ValueError, match=rf"`metrics\[{re.escape(repr(name))}\]`.*'\.' or '\.\.'"):
        fastscape.loss_surface(model, data, dirs, metrics={name: fastscape.accuracy}, out=tmp_path / "s.h5",
                               **_plain(progress=calls.append))
    assert calls == []


def test_train_without_a_loss_fn_names_it():
    model, data, _ = make_case()
    with pytest.raises(TypeError, match=r"`loss_fn` must be callable \(output, target\) -> scalar; got None"):
        fastscape.train(model, [data], loss_fn=None, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        epochs=1)


def test_warnings_about_the_request_arrive_before_the_grid(tmp_path):
    model, (x, y), dirs = make_case()
    x = x.clone()
    x[0, 0] = float("nan")
    seen_at_first_point = []

    def progress(_n):
        if not seen_at_first_point:
            seen_at_first_point.append([str(w.message) for w in record])

    class Opaque:
        def __init__(self):
            import threading

            self.lock = threading.Lock()

        def __call__(self, o, t):
            return F.cross_entropy(o, t)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fastscape.loss_surface(model, (x, y), dirs, out=tmp_path / "s.h5", progress=progress,
                               **kwargs(loss_fn=Opaque()))
    early = seen_at_first_point[0]
    assert any("`data` holds NaN" in m for m in early), early
    assert any("cannot be fingerprinted" in m for m in early), early


def test_only_a_file_returned_as_it_was_is_marked_reused(tmp_path, monkeypatch):
    model, data, dirs = make_case()
    out = tmp_path / "s.h5"

    def killed(self, surface):
        raise Interrupt

    monkeypatch.setattr(sidecar.SurfaceStore, "finish", killed)
    with pytest.raises(Interrupt):  # every unit computed, killed before the final write
        fastscape.loss_surface(model, data, dirs, out=out, **kwargs())
    monkeypatch.undo()
    written = fastscape.loss_surface(model, data, dirs, out=out, **kwargs())
    assert written.meta["run"]["reused_units"] == written.meta["run"]["units"] == 9
    assert not written.meta["run"].get("reused_file")  # this run wrote the file
    again = fastscape.loss_surface(model, data, dirs, out=out, **kwargs())
    assert again.meta["run"]["reused_file"] is True


def test_a_lock_refusal_says_whether_a_retry_can_succeed(tmp_path):
    model, data, dirs = make_case()
    out = tmp_path / "s.h5"
    with pytest.raises(Interrupt):
        fastscape.loss_surface(model, data, dirs, out=out, progress=stop_after(2), **kwargs())
    holder = sidecar.SurfaceStore(out)
    holder.acquire()  # another run, computing into `out` now
    try:
        with pytest.raises(RuntimeError, match=r"another process .*run this again when it has finished"):
            fastscape.loss_surface(model, data, dirs, out=out, **kwargs())
        with pytest.raises(RuntimeError, match=r"with other settings \(directions_fingerprint\).*a retry will be "
                                               r"refused too.*choose another `out`"):
            fastscape.loss_surface(model, data, [dirs[1], dirs[0]], out=out, **kwargs())
    finally:
        holder.release()


def _nan_case():
    model, (x, y), dirs = make_case()
    x = x.clone()
    x[2, 2] = float("nan")
    return model, (x, y), dirs


@pytest.mark.parametrize("what", ["path_loss", "hessian_vector_product", "lr_steps", "train"])
def test_nan_data_is_announced_by_every_function_that_computes_a_loss(what):
    model, data, dirs = _nan_case()
    snap = {k: v.detach().clone() for k, v in model.named_parameters()}
    calls = {
        "path_loss": lambda: fastscape.path_loss(model, data, [snap, snap], loss_fn=F.cross_entropy),
        "hessian_vector_product": lambda: fastscape.curvature.hessian_vector_product(model, data, dirs[0],
                                                                           loss_fn=F.cross_entropy),
        "lr_steps": lambda: fastscape.lr_steps(model, data, dirs, loss_fn=F.cross_entropy, lrs=[0.1]),
        "train": lambda: fastscape.train(model, [data], loss_fn=F.cross_entropy,
                                         optimizer=torch.optim.SGD(model.parameters(), lr=0.0), epochs=1),
    }
    with pytest.warns(UserWarning, match=r"`data` holds NaN in its inputs \(batch 0\)"):
        calls[what]()


def test_interpolating_a_model_with_itself_warns_of_a_zero_direction():
    model = MLP()
    with pytest.warns(UserWarning, match=r"`model_b` equals `model_a`: the direction .* is zero"):
        fastscape.interpolation_directions(model, model)


def test_the_command_line_says_complete_only_of_a_file_it_did_not_write(tmp_path, monkeypatch, capsys):
    from fastscape._cli import main
    from tests.cli_models import make_model

    ckpt, out = tmp_path / "m.pt", tmp_path / "s.h5"
    torch.save(make_model().state_dict(), ckpt)
    args = ["surface", "--model", "tests.cli_models:make_model", "--checkpoint", str(ckpt), "--data",
            "tests.cli_models:make_big_data", "--loss", "cross_entropy", "--x", "-1:1:4", "--y", "-1:1:3",
            "--chunk-size", "4", "--out", str(out), "--no-progress"]

    def killed(self, surface):
        raise KeyboardInterrupt

    monkeypatch.setattr(sidecar.SurfaceStore, "finish", killed)
    with pytest.raises(KeyboardInterrupt):  # every unit computed, killed before the final write
        main(args)
    monkeypatch.undo()
    capsys.readouterr()
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "wrote" in said and "3 reused" in said and "already complete" not in said, said
    assert main(args) == 0
    assert "already complete" in capsys.readouterr().out
