"""The command line: ``fastscape surface`` on a model defined in a test module and a checkpoint
saved by the test, ``fastscape plot``, and one clear line for every bad argument."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastscape
from fastscape._cli import main
from fastscape._core.params import model_parameters
from tests.cli_models import make_data, make_model
from tests.reference import loop_surface

ROOT = Path(__file__).resolve().parents[1]


def _run(argv, capsys):
    """``main(argv)`` in process: (exit status, stdout, stderr)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as err:  # argparse's own errors
        rc = err.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "model.pt"
    torch.manual_seed(4)
    torch.save(make_model().state_dict(), path)
    return path


def _trained(path):
    model = make_model()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def _base(ckpt, out, data="tests.cli_models:make_data"):
    return ["surface", "--model", "tests.cli_models:make_model", "--checkpoint", ckpt, "--data", data,
            "--loss", "cross_entropy", "--x", "-1:1:5", "--y", "-1:1:5", "--out", out, "--no-progress"]


def test_surface_command_in_a_subprocess(ckpt, tmp_path, capsys):
    out = tmp_path / "s.h5"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    argv = [str(a) for a in _base(ckpt, out, "tests.cli_models:make_dataset")] + ["--metric", "accuracy"]
    done = subprocess.run([sys.executable, "-m", "fastscape", *argv], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"fastscape surface: wrote {out}: 5x5 grid")
    assert "memory plan on cpu" in done.stderr  # the plan is logged

    surf = fastscape.load_surface(out)
    model = _trained(ckpt)
    x, y = make_data()
    dirs = fastscape.random_directions(model, 2, norm="filter", ignore="biasbn", seed=0)
    ref = loop_surface(model, x, y, F.cross_entropy, model_parameters(model), dirs, surf.coords)
    np.testing.assert_allclose(surf.loss, ref, rtol=2e-5, atol=1e-6)
    with torch.no_grad():
        acc0 = float((model(x).argmax(1) == y).double().mean())
    assert surf.metrics["accuracy"][2, 2] == pytest.approx(acc0)
    info = surf.meta["directions"]
    assert {k: info[k] for k in ("kind", "norm", "ignore", "seed")} == {"kind": "random", "norm": "filter",
                                                                        "ignore": "biasbn", "seed": 0}

    # the same command again: nothing left to do
    rc, stdout, _ = _run(argv, capsys)
    assert rc == 0 and "is already complete" in stdout


def test_bad_argument_is_one_line_in_a_subprocess(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "fastscape", "surface", "--model", "tests.cli_models:make_model",
                           "--data", "tests.cli_models:make_data", "--loss", "hinge", "--x", "-1:1:3",
                           "--out", str(tmp_path / "s.h5")], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("fastscape surface: error: `--loss` must be one of")


@pytest.mark.parametrize("change, message", [
    ({"--x": "1:2"}, r"`--x` must be MIN:MAX:NUM, e.g. -1:1:51; got '1:2'"),
    ({"--y": "1:0:3"}, r"`--y` needs MIN <= MAX; got '1:0:3'"),
    ({"--x": "-1:1:0"}, r"`--x` needs NUM >= 1 points; got 0"),
    ({"--loss": "hinge"}, r"`--loss` must be one of \['bce_with_logits', 'cross_entropy', 'l1', 'mse', 'nll'\]"),
    ({"--loss": "torch.nn.functional:no_such_loss"}, r"`--loss`: module 'torch.nn.functional' has no attribute"),
    ({"--model": "tests.cli_models"}, r"`--model` must look like 'package.module:name'; got 'tests.cli_models'"),
    ({"--model": "tests.no_such_module:f"}, r"`--model`: cannot import module 'tests.no_such_module'"),
    ({"--model": "tests.cli_models:not_a_module"}, r"`--model` 'tests.cli_models:not_a_module' must return a "
                                                   r"torch.nn.Module; got int"),
    ({"--checkpoint": "missing.pt"}, r"`--checkpoint` '.*missing.pt' does not exist"),
    ({"--checkpoint": "WRONG"}, r"`--checkpoint` does not fit the model: missing \['body.0.weight'"),
    ({"--checkpoint": "GARBAGE"}, r"`--checkpoint` '.*garbage.pt' is not a readable torch checkpoint"),
    ({"--out": "s.npz"}, r"`--out` must end in .h5 or .hdf5; got '.*s.npz'"),
    ({"--y": None, "--z": "-1:1:3"}, r"`--z` needs `--y` too"),
    ({"--to": "A", "--pca-dir": "B"}, r"choose one of `--to` \(interpolation\) and `--pca-dir` \(PCA\); got both"),
    ({"--pca-dir": "DIR", "--norm": "layer"}, r"`--norm` and `--ignore` apply to random directions"),
    ({"--pca-dir": "DIR"}, r"`--pca-dir` needs at least 3 checkpoints"),
    ({"--chunk-size": "0"}, r"argument --chunk-size: must be 'auto' or a positive integer; got '0'"),
    ({"--norm": "unit"}, r"argument --norm: invalid choice: 'unit'"),
    ({"--data": None}, r"the following arguments are required: --data"),
])
def test_bad_arguments_get_one_line(change, message, ckpt, tmp_path, capsys):
    args = dict(zip(*[iter(_base(ckpt, tmp_path / "s.h5")[1:-1])] * 2))
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "DIR").mkdir()
    torch.save(make_model().state_dict(), tmp_path / "DIR" / "only.pt")
    subst = {"WRONG": wrong, "GARBAGE": tmp_path / "garbage.pt", "DIR": tmp_path / "DIR", "A": ckpt, "B": tmp_path,
             "missing.pt": tmp_path / "missing.pt", "s.npz": tmp_path / "s.npz"}
    for key, value in change.items():
        if value is None:
            args.pop(key, None)
        else:
            args[key] = subst.get(value, value)
    argv = ["surface"] + [str(v) for kv in args.items() for v in kv]
    rc, _, err = _run(argv, capsys)
    assert rc == 2
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    import re

    assert re.search(message, err), err


def test_data_as_pair_dataset_or_loader(ckpt, tmp_path, capsys):
    got = []
    for name in ("make_data", "make_dataset", "make_loader"):
        out = tmp_path / f"{name}.h5"
        rc, _, err = _run(_base(ckpt, out, f"tests.cli_models:{name}") + ["--quiet"], capsys)
        assert rc == 0, err
        got.append(fastscape.load_surface(out).loss)
    np.testing.assert_allclose(got[1], got[0], rtol=1e-6)
    np.testing.assert_allclose(got[2], got[0], rtol=1e-6)


def test_interpolation_between_checkpoints(ckpt, tmp_path, capsys):
    torch.manual_seed(9)
    other = make_model()
    to = tmp_path / "other.pt"
    torch.save({"state_dict": other.state_dict(), "epoch": 3}, to)  # a training-loop checkpoint
    out = tmp_path / "line.h5"
    argv = ["surface", "--model", "tests.cli_models:make_model", "--checkpoint", ckpt, "--to", to,
            "--data", "tests.cli_models:make_data", "--loss", "cross_entropy", "--x", "-0.5:1.5:5",
            "--dtype", "float64", "--out", out, "--quiet"]
    rc, _, err = _run(argv, capsys)
    assert rc == 0, err
    line = fastscape.load_surface(out)
    x, y = make_data()
    start, end = _trained(ckpt).double(), other.double()
    with torch.no_grad():
        want0 = float(F.cross_entropy(start(x.double()), y))
        want1 = float(F.cross_entropy(end(x.double()), y))
    np.testing.assert_allclose(line.coords[0], [-0.5, 0, 0.5, 1, 1.5])
    assert line.loss[1] == pytest.approx(want0, rel=1e-12)
    assert line.loss[3] == pytest.approx(want1, rel=1e-12)
    assert line.meta["directions"]["kind"] == "interpolation"

    # with --y: a plane through both models, the second axis random
    plane = tmp_path / "plane.h5"
    rc, _, err = _run(argv[:-3] + ["--y", "-1:1:3", "--out", plane, "--quiet"], capsys)
    assert rc == 0, err
    surf = fastscape.load_surface(plane)
    assert surf.loss[3, 1] == pytest.approx(want1, rel=1e-12)
    assert surf.meta["directions"]["norm"] == "filter"


def test_pca_directions_from_a_folder_of_checkpoints(ckpt, tmp_path, capsys):
    from sklearn.decomposition import PCA

    model = _trained(ckpt)
    weights = model_parameters(model)
    keys = list(weights)
    flat = torch.cat([weights[k].reshape(-1) for k in keys]).double()
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(flat.numel(), generator=g, dtype=torch.float64), torch.randn(
        flat.numel(), generator=g, dtype=torch.float64)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    snaps = []
    for i in range(6):  # a planted plane, plus a little noise
        a, b = 0.1 * (6 - i), 0.03 * np.sin(i)
        snap = flat + a * u + b * v + 1e-4 * torch.randn(flat.numel(), generator=g, dtype=torch.float64)
        snaps.append(snap)
        sizes = [weights[k].numel() for k in keys]
        parts = torch.split(snap.float(), sizes)
        torch.save({k: p.reshape(weights[k].shape) for k, p in zip(keys, parts)}, folder / f"epoch{i:02d}.pt")
    out = tmp_path / "pca.h5"
    rc, _, err = _run(["surface", "--model", "tests.cli_models:make_model", "--checkpoint", ckpt, "--pca-dir", folder,
                       "--data", "tests.cli_models:make_data", "--loss", "cross_entropy", "--x", "-1:1:3",
                       "--y", "-1:1:3", "--out", out, "--quiet"], capsys)
    assert rc == 0, err
    surf = fastscape.load_surface(out)

    # scikit-learn on the same matrix (snapshots minus the model, as float32 was saved)
    matrix = np.stack([torch.cat([torch.load(folder / f"epoch{i:02d}.pt")[k].reshape(-1) for k in keys]).double()
                       .numpy() for i in range(6)]) - flat.numpy()
    pca = PCA(n_components=2).fit(matrix)
    np.testing.assert_allclose(surf.meta["directions"]["explained_variance_ratio"], pca.explained_variance_ratio_,
                               rtol=1e-6)
    # the surface over sklearn's components matches up to each component's sign
    comps = [dict(zip(keys, [p.reshape(weights[k].shape) for k, p in zip(
        keys, torch.split(torch.from_numpy(c), [weights[k].numel() for k in keys]))])) for c in pca.components_]
    x, y = make_data()
    ref = loop_surface(model, x, y, F.cross_entropy, weights, comps, surf.coords)
    best = min(np.abs(surf.loss - ref[::sa, ::sb]).max() for sa in (1, -1) for sb in (1, -1))
    assert best < 1e-5


def test_plot_command(ckpt, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "s.h5"
    rc, _, err = _run(_base(ckpt, out) + ["--quiet"], capsys)
    assert rc == 0, err
    figs = tmp_path / "figs"
    rc, stdout, err = _run(["plot", out, "--out", figs], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in figs.iterdir()) == ["contour.png", "surface.vtp", "surface3d.html"]
    assert stdout.count("fastscape plot: wrote") == 3
    with Image.open(figs / "contour.png") as im:
        assert im.size[0] > 100
    assert "plotly" in (figs / "surface3d.html").read_text()[:100000].lower()
    assert (figs / "surface.vtp").read_text().startswith("<?xml")

    line = tmp_path / "line.h5"
    rc, _, err = _run(_base(ckpt, line)[:-5] + ["--out", line, "--quiet"], capsys)
    assert rc == 0, err
    rc, _, err = _run(["plot", line, "--log"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "line-figures").iterdir()) == ["line.png", "surface.vtp"]

    rc, _, err = _run(["plot", tmp_path / "nothing.h5"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "`FILE` " in err


def test_demo_subcommand_still_there(monkeypatch, tmp_path, capsys):
    seen = {}
    monkeypatch.setattr("fastscape._demo.run_demo", lambda out, resolution: seen.update(out=out, res=resolution))
    rc, _, _ = _run(["demo", "--out", tmp_path, "--resolution", "7"], capsys)
    assert rc == 0 and seen == {"out": str(tmp_path), "res": 7}


# --------------------------------------------------------------------------- one line naming the option


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli_cuda_device_without_cuda_is_one_line(tmp_path, capsys):
    rc, _, err = _run(["surface", "--model", "tests.cli_models:make_model", "--data", "tests.cli_models:make_data",
                       "--loss", "cross_entropy", "--x", "-1:1:3", "--out", tmp_path / "s.h5", "--device", "cuda",
                       "--quiet"], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and "`device`" in err and "CUDA is not available" in err


def test_cli_plot_of_a_folder_says_it_is_a_folder(tmp_path, capsys):
    rc, _, err = _run(["plot", tmp_path], capsys)
    assert rc == 2
    assert "is a folder" in err and "does not exist" not in err


def test_a_checkpoint_with_the_right_names_but_wrong_shapes_names_the_tensors(tmp_path):
    from tests.cli_models import Net

    ckpt = tmp_path / "wide.pt"
    torch.save(Net(hidden=20).state_dict(), ckpt)  # same names, hidden layer 20 wide instead of 24
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "fastscape", "surface", "--model", "tests.cli_models:make_model",
         "--checkpoint", str(ckpt), "--data", "tests.cli_models:make_data", "--loss", "cross_entropy",
         "--x", "-1:1:3", "--out", str(tmp_path / "s.h5"), "--quiet", "--no-progress"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr
    assert "Traceback" not in err
    assert "--checkpoint" in err and "body.0.weight" in err and "(20, 6)" in err and "(24, 6)" in err, err


# --------------------------------------------------------------------------- bad options, one line each (issue 25)


def _surface_argv(tmp_path, *extra):
    return ["surface", "--model", "tests.cli_models:make_model", "--data", "tests.cli_models:make_data",
            "--loss", "cross_entropy", "--out", tmp_path / "s.h5", "--quiet", "--no-progress", *extra]


def _one_line(rc, err):
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def test_an_empty_checkpoint_file_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    rc, _, err = _run(_surface_argv(tmp_path, "--x", "-1:1:3", "--checkpoint", empty), capsys)
    _one_line(rc, err)
    assert "`--checkpoint`" in err and "empty" in err and str(empty) in err


def test_an_empty_checkpoint_argument_is_one_line(tmp_path, capsys):
    rc, _, err = _run(_surface_argv(tmp_path, "--x", "-1:1:3", "--checkpoint="), capsys)
    _one_line(rc, err)
    assert "`--checkpoint`" in err and "empty" in err and "'.'" not in err


def test_a_checkpoint_that_is_a_folder_says_so(tmp_path, capsys):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    rc, _, err = _run(_surface_argv(tmp_path, "--x", "-1:1:3", "--checkpoint", folder), capsys)
    _one_line(rc, err)
    assert "`--checkpoint`" in err and "is a folder" in err and "does not exist" not in err


FACTORIES = '''
def broken_model():
    raise RuntimeError("no weights downloaded")


def typo_model():
    return undefined_name


def broken_data():
    raise KeyError("train")
'''


@pytest.mark.parametrize("option, name, raised", [
    ("--model", "broken_model", "RuntimeError: no weights downloaded"),
    ("--model", "typo_model", "NameError: name 'undefined_name' is not defined"),
    ("--data", "broken_data", "KeyError: 'train'"),
])
def test_a_factory_that_raises_is_named_by_its_option(tmp_path, capsys, monkeypatch, option, name, raised):
    (tmp_path / "userfactories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = _surface_argv(tmp_path, "--x", "-1:1:3")
    argv[argv.index(option) + 1] = f"userfactories:{name}"
    rc, _, err = _run(argv, capsys)
    _one_line(rc, err)
    assert f"`{option}` 'userfactories:{name}' raised {raised}" in err, err


@pytest.mark.parametrize("axis", ["-inf:1:5", "0:inf:5", "nan:1:3", "-1:nan:3"])
@pytest.mark.parametrize("joined", [False, True])
def test_a_non_finite_axis_is_refused_naming_the_option(tmp_path, capsys, axis, joined):
    argv = _surface_argv(tmp_path, *([f"--x={axis}"] if joined else ["--x", axis]))
    rc, _, err = _run(argv, capsys)
    _one_line(rc, err)
    assert "`--x`" in err and "finite" in err and repr(axis) in err, err
    assert not (tmp_path / "s.h5").exists()


def test_plot_of_a_volume_says_what_it_wrote_and_why(tmp_path, capsys):
    x = np.linspace(-1, 1, 3)
    loss = np.arange(27, dtype=float).reshape(3, 3, 3) + 1.0
    path = fastscape.Surface(coords=[x, x, x], loss=loss).save(tmp_path / "vol.h5")
    rc, out, err = _run(["plot", path, "--out", tmp_path / "figs"], capsys)
    assert rc == 0, err
    assert (tmp_path / "figs" / "surface.vtp").is_file()
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["surface.vtp"]
    assert f"wrote {tmp_path / 'figs' / 'surface.vtp'}" in out
    assert "3-D" in out and "ParaView" in out and "fastscape.plot.volume" in out, out

    rc, _, err = _run(["plot", path, "--out", tmp_path / "none", "--no-vtp"], capsys)
    _one_line(rc, err)
    assert "3-D" in err and "--no-vtp" in err, err
    assert not (tmp_path / "none").exists()  # refused before anything is made
