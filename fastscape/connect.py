"""Mode connectivity: are two trained models in one basin, and along which path?

- :func:`barrier`: the loss (and metrics) on the straight line between two models and the
  barrier height above the interpolation of the ends (Frankle et al., ICML 2020), for several
  pairs in one batched call.
- :func:`train_curve` and :func:`evaluate_curve`: a quadratic Bezier curve or a one-bend
  polygonal chain whose bend minimises the loss expected along it (Garipov et al., NeurIPS 2018),
  evaluated at many t in one call beside the straight line.
- :func:`align`: permute one model's hidden units to match another's by weight matching
  (Ainsworth et al., "Git Re-Basin", ICLR 2023), for barriers and planes between aligned models.

Every evaluation takes ``recalibrate=`` calibration data: BatchNorm running statistics are then
recomputed at every point (batched over the points of a chunk). The figures are
:func:`fastscape.plot.curve_profile`, :func:`fastscape.plot.barriers` and, for the curve on the
plane through its three points, :func:`fastscape.plot.contour` with ``path=curve.plane_path(...)``.
"""

from ._connect.align import Alignment as Alignment
from ._connect.align import align as align
from ._connect.barrier import Barrier as Barrier
from ._connect.barrier import barrier as barrier
from ._connect.curves import Curve as Curve
from ._connect.curves import CurveProfile as CurveProfile
from ._connect.curves import evaluate_curve as evaluate_curve
from ._connect.curves import train_curve as train_curve
from ._connect.permutation import PermutationSpec as PermutationSpec
from ._connect.permutation import permutation_spec as permutation_spec

__all__ = [
    "Alignment",
    "align",
    "Barrier",
    "barrier",
    "Curve",
    "CurveProfile",
    "evaluate_curve",
    "permutation_spec",
    "PermutationSpec",
    "train_curve",
]
