"""The ParaView export (``fastscape.save_vtp``) read back by VTK's own reader."""

import numpy as np
import pytest

import fastscape


def test_vtp_is_read_back_by_vtk(tmp_path):
    """ParaView's own reader (vtkXMLPolyDataReader) sees our grid, heights, loss array and quads."""
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    loss = np.arange(12, dtype=np.float64).reshape(4, 3) + 1.0
    loss[1, 2] = np.nan  # a diverging point: its quads are left out
    surf = fastscape.Surface(coords=[np.linspace(-1, 1, 4), np.linspace(0, 2, 3)], loss=loss,
                             metrics={"accuracy": loss / 20})
    for binary in (True, False):
        path = fastscape.save_vtp(surf, tmp_path / f"s{binary}.vtp", binary=binary)
        reader = vtk.vtkXMLPolyDataReader()
        reader.SetFileName(str(path))
        reader.Update()
        poly = reader.GetOutput()
        assert poly.GetNumberOfPoints() == 12
        points = vtk_to_numpy(poly.GetPoints().GetData())
        # points numbered with the first axis fastest: point i + 4 j is (x_i, y_j)
        gx, gy = np.meshgrid(surf.coords[0], surf.coords[1], indexing="xy")
        np.testing.assert_array_equal(points[:, 0], gx.reshape(-1))
        np.testing.assert_array_equal(points[:, 1], gy.reshape(-1))
        read_loss = vtk_to_numpy(poly.GetPointData().GetArray("loss"))
        finite = vtk_to_numpy(poly.GetPointData().GetArray("finite"))
        np.testing.assert_array_equal(finite, np.isfinite(loss.T.reshape(-1)).astype(np.uint8))
        np.testing.assert_array_equal(read_loss[finite == 1], loss.T.reshape(-1)[finite == 1])
        np.testing.assert_array_equal(points[finite == 1, 2], loss.T.reshape(-1)[finite == 1])
        assert poly.GetNumberOfPolys() == 6 - 2  # (4-1) x (3-1) quads, two of them touch the NaN point
