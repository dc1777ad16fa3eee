"""Views show as pictures in a fresh Jupyter kernel (no ``%matplotlib`` magic): a small notebook is
executed with nbclient and the mimetypes of each cell's output are read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent

CELLS = [
    # a surface built from numpy alone: the kernel starts fast, nothing is trained
    "import numpy as np\n"
    "from fastscape import plot\n"
    "from fastscape._surface import Surface\n"
    "x = np.linspace(-1, 1, 15); y = np.linspace(-1, 1, 11)\n"
    "s = Surface(coords=[x, y], loss=0.05 + x[:, None] ** 2 + 2 * y[None, :] ** 2)",
    "plot.contour(s)",  # an Axes as the cell's last expression
    "plot.contour(s).figure",  # its Figure, as the README says
    "plot.surface3d(s)",  # plotly: its own mimetype plus HTML and PNG fallbacks
    "plot.contour_grid([s, s])[0, 0].figure",
]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {
        "path": str(tmp_path_factory.mktemp("nb"))}})
    old = {k: os.environ.get(k) for k in ("PYTHONPATH", "MPLBACKEND")}
    os.environ.update(env)
    os.environ.pop("MPLBACKEND", None)  # a fresh kernel: whatever backend Jupyter gives it
    try:
        client.execute()
    except Exception as err:  # a kernel that cannot start here is no verdict on the views
        if "kernel" in type(err).__name__.lower() or "Kernel" in str(err)[:200]:
            pytest.skip(f"no Jupyter kernel could start: {err}")
        raise
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return [[o for o in cell.outputs if o.output_type in ("execute_result", "display_data")] for cell in nb.cells]


def _mimetypes(cell_outputs):
    return set().union(*[set(o.data) for o in cell_outputs]) if cell_outputs else set()


@pytest.mark.parametrize("cell", [1, 2, 4])
def test_a_matplotlib_view_shows_as_a_png(outputs, cell):
    types = _mimetypes(outputs[cell])
    assert "image/png" in types, f"cell {CELLS[cell]!r} showed only {sorted(types)}"
    import base64

    png = [o.data["image/png"] for o in outputs[cell] if "image/png" in o.data][0]
    raw = base64.b64decode(png) if isinstance(png, str) else png
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"


def test_surface3d_shows_with_html_and_png_fallbacks(outputs):
    types = _mimetypes(outputs[3])
    assert {"text/html", "image/png"} <= types, sorted(types)
    html = [o.data["text/html"] for o in outputs[3] if "text/html" in o.data][0]
    assert "plotly" in html.lower()
    assert "application/vnd.plotly.v1+json" in types  # plotly's own output is kept for its renderer
