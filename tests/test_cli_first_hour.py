"""A user's first hour with the command line (issue 15).

- ``fastscape surface --model mypkg.models:net`` finds ``mypkg`` in the folder it runs from,
  through the installed ``fastscape`` console script as well as ``python -m fastscape``;
- ``--pca-dir`` gives the surface of the Python API's ``pca_directions`` (one PCA, same orientation);
- the projected path of the checkpoints is stored with the surface, and ``fastscape plot`` draws it.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastscape
from tests.cli_models import make_data, make_model, run_cli

ROOT = Path(__file__).resolve().parents[1]

MYPKG = '''
import torch
from torch import nn


def net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(40, 4, generator=g), torch.randint(0, 2, (40,), generator=g)


def loss(output, target):
    return torch.nn.functional.cross_entropy(output, target)


def splits():
    x, y = data()
    return {"train": (x[:30], y[:30]), "test": (x[30:], y[30:])}
'''


def _console_script() -> str | None:
    """The ``fastscape`` entry point installed beside this interpreter."""
    here = Path(sys.executable).parent / "fastscape"
    return str(here) if here.is_file() else None


def _env(**extra):
    """An environment that imports this worktree's fastscape, with no empty entry (which
    would put the working directory on the path and hide the defect)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    parts = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


@pytest.mark.parametrize("how", ["console script", "python -m"])
def test_model_data_and_loss_are_imported_from_the_working_directory(tmp_path, how):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(textwrap.dedent(MYPKG))
    if how == "console script":
        script = _console_script()
        if script is None:
            pytest.skip("the fastscape console script is not installed beside this interpreter")
        cmd = [script]
    else:
        cmd = [sys.executable, "-m", "fastscape"]
    cmd += ["surface", "--model", "mypkg.models:net", "--data", "mypkg.models:data",
            "--loss", "mypkg.models:loss", "--x", "-1:1:3", "--out", "s.h5", "--no-progress", "--quiet"]
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "No module named" not in done.stderr
    surf = fastscape.load_surface(tmp_path / "s.h5")
    assert surf.loss.shape == (3,)
    assert np.isfinite(surf.loss).all()


@pytest.fixture
def checkpoints(tmp_path):
    """A trained model file and a folder of six snapshots around it that move mostly in a plane
    (names sort in training order: epoch02 before epoch10)."""
    torch.manual_seed(4)
    model = make_model()
    final = tmp_path / "final.pt"
    torch.save(model.state_dict(), final)
    params = {k: p.detach() for k, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    u = {k: torch.randn(p.shape, generator=g) for k, p in params.items()}
    v = {k: torch.randn(p.shape, generator=g) for k, p in params.items()}
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for i, epoch in enumerate([1, 2, 4, 6, 8, 10]):
        a, b = 0.08 * (6 - i), 0.05 * np.sin(1.3 * i)
        snap = {k: p + a * u[k] + b * v[k] + 1e-3 * torch.randn(p.shape, generator=g) for k, p in params.items()}
        torch.save(snap, folder / f"epoch{epoch:02d}.pt")
    return final, folder


def _snapshots(folder):
    files = sorted(folder.glob("*.pt"), key=lambda p: int(p.stem[len("epoch"):]))
    return [torch.load(f, weights_only=True) for f in files]


def test_cli_pca_surface_equals_the_python_api(checkpoints, tmp_path, capsys):
    final, folder = checkpoints
    out = tmp_path / "pca.h5"
    rc, _, err = run_cli(["surface", "--model", "tests.cli_models:make_model", "--checkpoint", final,
                       "--pca-dir", folder, "--data", "tests.cli_models:make_data", "--loss", "cross_entropy",
                       "--x", "-1:1:5", "--y", "-0.5:1:4", "--dtype", "float64", "--out", out, "--quiet"], capsys)
    assert rc == 0, err
    cli = fastscape.load_surface(out)

    model = make_model()
    model.load_state_dict(torch.load(final, weights_only=True))
    dirs, ratio = fastscape.pca_directions(_snapshots(folder), n=2)
    api = fastscape.loss_surface(model, make_data(), dirs, loss_fn=F.cross_entropy,
                                 grid=[(-1, 1, 5), (-0.5, 1, 4)], dtype="float64", chunk_size=7)
    assert cli.loss.shape == api.loss.shape == (5, 4)
    # the same surface, same orientation: no flip of either axis
    np.testing.assert_allclose(cli.loss, api.loss, rtol=1e-10)
    np.testing.assert_allclose(cli.meta["directions"]["explained_variance_ratio"], ratio, rtol=1e-10)


def test_pca_path_is_stored_and_plot_draws_it(checkpoints, tmp_path, capsys):
    final, folder = checkpoints
    out = tmp_path / "pca.h5"
    rc, _, err = run_cli(["surface", "--model", "tests.cli_models:make_model", "--checkpoint", final,
                       "--pca-dir", folder, "--data", "tests.cli_models:make_data", "--loss", "cross_entropy",
                       "--x", "-1:1:5", "--y", "-1:1:5", "--out", out, "--quiet"], capsys)
    assert rc == 0, err

    # the projected path is in the file and comes back with the surface
    with h5py.File(out, "r") as f:
        names = []
        f.visit(names.append)
    assert any(n.split("/")[-1] == "path" for n in names), names
    surf = fastscape.load_surface(out)
    assert surf.path is not None and surf.path.shape == (6, 2)
    model = make_model()
    model.load_state_dict(torch.load(final, weights_only=True))
    snaps = _snapshots(folder)
    dirs, _ = fastscape.pca_directions(snaps, n=2)
    want = fastscape.project(snaps, dirs, origin=dict(model.named_parameters()))
    np.testing.assert_allclose(surf.path, want, rtol=1e-5, atol=1e-6)
    # PCA orientation: the path starts at negative coordinates
    assert (surf.path[0] < 0).all()

    figs = tmp_path / "figs"
    rc, _, err = run_cli(["plot", out, "--out", figs, "--no-vtp"], capsys)
    assert rc == 0, err
    html = (figs / "surface3d.html").read_text()
    assert '"name":"path"' in html.replace(" ", "")


def test_random_directions_surface_has_no_path(tmp_path, capsys):
    out = tmp_path / "s.h5"
    rc, _, err = run_cli(["surface", "--model", "tests.cli_models:make_model", "--data", "tests.cli_models:make_data",
                       "--loss", "cross_entropy", "--x", "-1:1:3", "--y", "-1:1:3", "--out", out, "--quiet"], capsys)
    assert rc == 0, err
    assert fastscape.load_surface(out).path is None


def test_cli_uses_only_the_public_api():
    """Issue 14: the command line is a caller of the public API: ``import fastscape`` (and
    ``fastscape.plot``), never a private module."""
    import ast

    files = sorted((ROOT / "fastscape" / "_cli").glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "inputs.py", "commands.py", "main.py"}
    private = []
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                if node.level == 1:  # the package's own files
                    continue
                if mod != "__future__" and (node.level > 0 or any(part.startswith("_") for part in mod.split("."))):
                    private.append(mod)
            elif isinstance(node, ast.Import):
                private += [a.name for a in node.names
                            if a.name.startswith("fastscape.") and any(p.startswith("_") for p in a.name.split("."))]
    assert private in ([], [".._demo"])  # `fastscape demo` runs the demo, itself a front end
    # and the stand-ins are gone
    source = "".join(f.read_text() for f in files)
    assert "_pca_from_checkpoints" not in source and "linalg.svd" not in source
    assert "_line_figure" not in source


def test_data_may_name_several_datasets(tmp_path, monkeypatch, capsys):
    """``--data`` returning a dict: one pass, values keyed per dataset; ``plot --value`` checks the name."""
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(textwrap.dedent(MYPKG))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "mypkg", raising=False)
    monkeypatch.delitem(sys.modules, "mypkg.models", raising=False)
    rc, _, err = run_cli(["surface", "--model", "mypkg.models:net", "--data", "mypkg.models:splits", "--loss",
                       "cross_entropy", "--metric", "accuracy", "--x", "-1:1:3", "--y", "-1:1:3", "--out", "s.h5",
                       "--quiet"], capsys)
    assert rc == 0, err
    assert str(tmp_path) not in sys.path  # the working directory is on the path only while a command runs
    surf = fastscape.load_surface(tmp_path / "s.h5")
    assert surf.value_names == ["train/loss", "train/accuracy", "test/loss", "test/accuracy"]
    assert surf.meta["datasets"] == {"train": 30, "test": 10}
    rc, _, err = run_cli(["plot", "s.h5", "--value", "accuracy"], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "`value` must be one of ['train/loss', 'train/accuracy', 'test/loss', 'test/accuracy']" in err


def test_a_surface_keeps_its_path(checkpoints, tmp_path):
    """From Python too: a projected path assigned to the surface is saved and read back exactly."""
    final, folder = checkpoints
    model = make_model()
    model.load_state_dict(torch.load(final, weights_only=True))
    snaps = _snapshots(folder)
    dirs, _ = fastscape.pca_directions(snaps, n=2)
    surf = fastscape.loss_surface(model, make_data(), dirs, loss_fn=F.cross_entropy, grid=3, chunk_size=9)
    assert surf.path is None
    surf.path = fastscape.project(snaps, dirs, origin=model)
    back = fastscape.load_surface(surf.save(tmp_path / "s.h5"))
    np.testing.assert_array_equal(back.path, surf.path)
    assert back.path.shape == (len(snaps), 2)


def _pca_args(final, folder, out):
    return ["surface", "--model", "tests.cli_models:make_model", "--checkpoint", final, "--pca-dir", folder,
            "--data", "tests.cli_models:make_data", "--loss", "cross_entropy", "--x", "-1:1:3", "--y", "-1:1:3",
            "--out", out, "--quiet", "--no-progress"]


def test_a_finished_pca_file_is_never_rewritten(checkpoints, tmp_path, capsys):
    """Running the same `--pca-dir` command again reads the finished file and leaves it alone:
    the same inode, modification time and bytes (it used to be rewritten in place every run)."""
    final, folder = checkpoints
    out = tmp_path / "pca.h5"
    rc, _, err = run_cli(_pca_args(final, folder, out), capsys)
    assert rc == 0, err
    before, data = out.stat(), out.read_bytes()
    assert fastscape.load_surface(out).path is not None
    rc, stdout, err = run_cli(_pca_args(final, folder, out), capsys)
    assert rc == 0, err
    assert "already complete" in stdout
    after = out.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert out.read_bytes() == data


def test_a_failed_write_of_the_pca_path_leaves_the_finished_surface(checkpoints, tmp_path, capsys, monkeypatch):
    """The path goes in through a temporary file renamed into place: a write that dies half way
    (a kill, a full disk) never touches the finished surface, and the run says what happened."""
    final, folder = checkpoints
    out = tmp_path / "pca.h5"
    real_save = fastscape.Surface.save

    def dying_save(self, path):
        if self.path is None:  # the surface itself, written by loss_surface
            return real_save(self, path)
        with open(path, "wb") as f:  # a write of the surface with its path, killed half way
            f.write(b"\x89HDF\r\n")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fastscape.Surface, "save", dying_save)
    rc, _, err = run_cli(_pca_args(final, folder, out), capsys)
    assert rc == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and "path" in err and str(out) in err and "No space left" in err, err
    surf = fastscape.load_surface(out)  # the finished surface is whole
    assert surf.loss.shape == (3, 3) and np.isfinite(surf.loss).all()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pca.h5")] == []  # no temporary left

    monkeypatch.setattr(fastscape.Surface, "save", real_save)
    rc, _, err = run_cli(_pca_args(final, folder, out), capsys)  # a rerun stores the path
    assert rc == 0, err
    again = fastscape.load_surface(out)
    assert again.path is not None and again.path.shape == (6, 2)
    np.testing.assert_array_equal(again.loss, surf.loss)
