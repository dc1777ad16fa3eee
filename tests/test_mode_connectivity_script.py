"""scripts/mode_connectivity.py runs headless with --quick and writes its figures and numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ["curve_loss.png", "curve_accuracy.png", "curve_plane.png", "barrier_alignment_loss.png",
           "barrier_alignment_accuracy.png"]


def test_mode_connectivity_quick(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "scripts/mode_connectivity.py", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from PIL import Image

    for name in FIGURES:
        with Image.open(tmp_path / name) as im:
            arr = np.asarray(im.convert("RGB"))
        assert arr.shape[0] > 300 and len(np.unique(arr.reshape(-1, 3), axis=0)) > 20, name
    numbers = json.loads((tmp_path / "summary.json").read_text())
    # the straight line measured twice by different calls (a pair of ends; the curve's anchors with
    # the bend weighted 0) gives the same barrier
    for name, height in numbers["barrier_raw"].items():
        assert numbers["barrier_line_on_curve_call"][name] == pytest.approx(height, rel=1e-4, abs=1e-6)
    for key in ("barrier_raw", "barrier_aligned", "barrier_curve"):
        assert set(numbers[key]) == {"train/loss", "train/accuracy", "test/loss", "test/accuracy"}
        assert all(np.isfinite(v) for v in numbers[key].values())
    assert (tmp_path / "summary.txt").read_text().strip() in proc.stdout
