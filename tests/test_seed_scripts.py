"""The three source-article scripts run headless with --small and write valid figures.

The scripts run at the same time (one subprocess each), so the suite pays for
torch's import once in wall time. The linear-regression surface minimum is
checked against scikit-learn's LinearRegression fitted here on the same data.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "seed000": ("scripts/seed000_error_surface.py", ["error_surface_contour.png", "error_surface_3d.html"]),
    "seed002": ("scripts/seed002_random_and_pca.py",
                ["random_slice.png", "pca_slice.png", "pca_slice_3d.html", "optimizers.png"]),
    "seed004": ("scripts/seed004_linear_regression.py",
                ["linear_regression_contour.png", "linear_regression_3d.html", "summary.json"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("seed_scripts")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}  # three at once
    procs = {}
    for name, (script, _) in SCRIPTS.items():
        out = base / name
        procs[name] = (out, subprocess.Popen([sys.executable, script, "--out", str(out), "--small"], cwd=ROOT,
                                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for name, (out, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = (out, proc.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_script_writes_valid_figures(runs, name):
    out, code, stdout, stderr = runs[name]
    assert code == 0, f"{name} failed:\n{stderr[-3000:]}"
    for fname in SCRIPTS[name][1]:
        path = out / fname
        assert path.is_file() and path.stat().st_size > 0, f"{path} missing"
        assert f"wrote {path}" in stdout  # the script says what it wrote
        data = path.read_bytes()
        if fname.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            from PIL import Image

            with Image.open(path) as im:
                im.verify()
                assert im.size[0] > 300 and im.size[1] > 300
        elif fname.endswith(".html"):
            text = data.decode("utf-8")
            assert "<html>" in text[:200].lower() and text.rstrip().lower().endswith("</html>")
            assert "Plotly.newPlot" in text and '"type":"surface"' in text and '"type":"scatter3d"' in text


def test_linear_regression_minimum_matches_sklearn(runs):
    from sklearn.linear_model import LinearRegression

    out, code, _, stderr = runs["seed004"]
    assert code == 0, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    # the article's data, made again here: x ~ U(0, 5), y = 0.5 (x + e) + 1, e ~ N(0, 0.5), seed 0
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 5, size=10).astype("float32")
    e = rng.normal(0.0, 0.5, size=10).astype("float32")
    y = 0.5 * (x + e) + 1
    lm = LinearRegression().fit(x.reshape(-1, 1).astype(np.float64), y.astype(np.float64))
    w, b = float(lm.coef_[0]), float(lm.intercept_)
    assert w == pytest.approx(0.50377744, abs=1e-6) and b == pytest.approx(1.0885315, abs=1e-6)  # as printed there
    step = summary["grid_step"]
    assert step["w"] <= 1e-3 and step["b"] <= 1e-3  # refined well below the first grid's 0.05
    # the lowest grid point is the grid point nearest the least-squares fit along the valley
    # b = mean(y) - w mean(x): a step off in w moves the best b by mean(x) ~ 3 steps
    assert abs(summary["surface_min"]["w"] - w) <= step["w"]
    assert abs(summary["surface_min"]["b"] - b) <= (1 + x.mean()) * step["b"]
    # the quadratic through the nine grid points around it hits the fit between grid points
    assert summary["quadratic_min"]["w"] == pytest.approx(w, abs=1e-6)
    assert summary["quadratic_min"]["b"] == pytest.approx(b, abs=1e-6)


def test_error_surface_frames_a_basin_the_path_descends_into(runs):
    """seed000 draws the basin, not the whole-data shelf: SGD ends near the noise floor (MSE 1, the
    noise's variance) and the grid's lowest point lies inside the frame, not on its edge."""
    import re

    out, code, stdout, stderr = runs["seed000"]
    assert code == 0, stderr[-3000:]
    final = float(re.search(r"final test MSE ([0-9.]+)", stdout).group(1))
    lowest = float(re.search(r"lowest grid point .*MSE ([0-9.]+)", stdout).group(1))
    assert final < 1.5 and lowest < 1.5  # the shelf of the whole data sat at MSE ~130
    assert "inside the frame" in stdout
