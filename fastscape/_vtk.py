"""VTK XML PolyData (``.vtp``) export of a surface, for ParaView.

A plane becomes a height field: one point per grid point at
``(x_i, y_j, loss[i, j])`` (or ``log10`` of it), joined into quads, with the
loss and every metric attached as point data. A line becomes a polyline
``(x_i, 0, loss_i)``; a volume becomes its grid points ``(x, y, z)`` as
vertices carrying the loss. Points are numbered with the first axis fastest,
as VTK numbers structured grids.

Diverging points (inf or NaN loss) keep a finite height (the largest finite
one) so the geometry stays valid; the quads that touch them are left out,
their point data hold the largest finite value too, and the point array
``finite`` (1 or 0) says which points are real.
"""

from __future__ import annotations

import base64
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from ._surface import check_shapes
from ._paths import file_path

__all__ = ["save_vtp"]

_TYPES = {np.dtype("float64"): "Float64", np.dtype("int64"): "Int64", np.dtype("uint8"): "UInt8"}


def _array(name: str | None, values: np.ndarray, *, binary: bool, components: int = 1) -> str:
    values = np.ascontiguousarray(values)
    vtype = _TYPES[values.dtype]
    attrs = f'type="{vtype}"'
    if name is not None:
        attrs += f" Name={quoteattr(name)}"
    if components > 1:
        attrs += f' NumberOfComponents="{components}"'
    if binary:
        raw = values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()
        # uncompressed inline binary: one base64 stream of a UInt64 byte count, then the data
        body = base64.b64encode(np.uint64(len(raw)).astype("<u8").tobytes() + raw).decode("ascii")
        return f'<DataArray {attrs} format="binary">{body}</DataArray>'
    if values.dtype.kind == "f":
        body = " ".join(repr(float(v)) for v in values.reshape(-1))
    else:
        body = " ".join(str(int(v)) for v in values.reshape(-1))
    return f'<DataArray {attrs} format="ascii">{body}</DataArray>'


def _filled(values: np.ndarray, fill: float) -> np.ndarray:
    out = np.array(values, dtype=np.float64)
    out[~np.isfinite(out)] = fill
    return out


def save_vtp(surface, out, *, log: bool = False, binary: bool = True) -> Path:
    """Write ``surface`` as VTK XML PolyData for ParaView.

    Parameters
    ----------
    surface : Surface
        A line, plane or volume.
    out : str or Path
        Ends in ``.vtp``.
    log : bool
        Heights are ``log10(loss)`` (the ``loss`` point array stays linear).
        Needs a positive loss.
    binary : bool
        Base64-encoded binary arrays (default, smaller) or ASCII.

    Returns
    -------
    Path
        The file written.
    """
    path = file_path(out, "out")
    check_shapes(surface)
    if path.suffix.lower() != ".vtp":
        raise ValueError(f"`out` must end in '.vtp'; got {path.name!r}.")
    loss = np.asarray(surface.loss, dtype=np.float64)
    finite = np.isfinite(loss)
    top = float(loss[finite].max()) if finite.any() else 0.0
    height = _filled(loss, top)
    if log:
        if finite.any() and float(loss[finite].min()) <= 0:
            raise ValueError("`log` needs a positive loss; the surface has values <= 0.")
        height = np.log10(height) if finite.any() else height
    k = surface.ndim
    shape = loss.shape
    # point p = i0 + n0 * (i1 + n1 * i2): first axis fastest, as VTK numbers grids
    def order(a):
        return np.asarray(a).transpose(tuple(reversed(range(np.ndim(a))))).reshape(-1)

    grids = np.meshgrid(*surface.coords, indexing="ij")
    if k == 1:
        xyz = np.stack([grids[0], np.zeros(shape), height], axis=-1)
    elif k == 2:
        xyz = np.stack([grids[0], grids[1], height], axis=-1)
    elif k == 3:
        xyz = np.stack(grids, axis=-1)
    else:
        raise ValueError(f"`surface` must have 1, 2 or 3 directions; got {k}.")
    points = np.stack([order(xyz[..., c]) for c in range(3)], axis=1).astype(np.float64)
    n = points.shape[0]
    index = np.arange(n).reshape(tuple(reversed(shape)))  # index[i_{k-1}, ..., i_0]
    ok = order(finite)

    cells = {"Verts": [], "Lines": [], "Polys": []}
    if k == 1:
        keep = np.flatnonzero(ok)
        runs = np.split(keep, np.flatnonzero(np.diff(keep) != 1) + 1) if keep.size else []
        cells["Lines"] = [r for r in runs if len(r) >= 2]
    elif k == 2:
        a, b = index[:-1, :-1], index[:-1, 1:]  # (j, i), (j, i+1)
        c, d = index[1:, 1:], index[1:, :-1]    # (j+1, i+1), (j+1, i)
        quads = np.stack([a, b, c, d], axis=-1).reshape(-1, 4)
        quads = quads[ok[quads].all(axis=1)]
        cells["Polys"] = list(quads)
    else:
        cells["Verts"] = [np.array([p]) for p in np.flatnonzero(ok)]

    data = {"loss": _filled(order(loss), top)}
    for name, arr in surface.metrics.items():
        arr = np.asarray(arr, dtype=np.float64)
        fin = np.isfinite(arr)
        data[name] = _filled(order(arr), float(arr[fin].max()) if fin.any() else 0.0)
    data["finite"] = ok.astype(np.uint8)

    counts = {kind: len(c) for kind, c in cells.items()}
    lines = [
        '<?xml version="1.0"?>',
        '<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" header_type="UInt64">',
        "<PolyData>",
        f'<Piece NumberOfPoints="{n}" NumberOfVerts="{counts["Verts"]}" NumberOfLines="{counts["Lines"]}" '
        f'NumberOfStrips="0" NumberOfPolys="{counts["Polys"]}">',
        '<PointData Scalars="loss">',
        *[_array(name, arr, binary=binary) for name, arr in data.items()],
        "</PointData>",
        "<Points>",
        _array("Points", points, binary=binary, components=3),
        "</Points>",
    ]
    for kind, cell in cells.items():
        if not cell:
            continue
        conn = np.concatenate(cell).astype(np.int64)
        offsets = np.cumsum([len(c) for c in cell]).astype(np.int64)
        lines += [f"<{kind}>", _array("connectivity", conn, binary=binary),
                  _array("offsets", offsets, binary=binary), f"</{kind}>"]
    lines += ["</Piece>", "</PolyData>", "</VTKFile>", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="ascii")
    return path
