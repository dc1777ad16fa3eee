"""fastscape.plot: views that only draw what fastscape computed.

One rule for what a view returns: a matplotlib view takes ``ax=`` (drawn into
when given, else a new figure without pyplot) and returns the Axes it drew on
(``cross_sections``: an array of Axes, one per panel); a plotly view returns a
``plotly.graph_objects.Figure``. No view calls ``show()``; writing a file is
:func:`save` (HTML, PNG, SVG, PDF, GIF by suffix). In Jupyter, show a matplotlib
view with ``ax.figure``; a plotly figure shows itself.

The 3-D views (``surface3d``, ``volume``, ``hidden_space``) are plotly by
default and draw the same picture with matplotlib with ``backend="matplotlib"``;
the animations are plotly figures whose GIF frames are drawn by matplotlib.
The numbers a view needs come from compute functions of :mod:`fastscape`
(``loss_surface``, ``cross_sections``, ``lr_steps``, ``hidden_activations``,
``thresholded_prediction``, ``snapshot_predictions``, ``compare_optimizers``).

matplotlib, plotly, kaleido and Pillow are imported when a view first needs
them; without them, the view raises an ImportError that names the extra to
install: ``pip install torch-fastscape[plot]``.
"""

from ._animate import animate_fit as animate_fit
from ._animate import animate_path as animate_path
from ._compare import optimizer_comparison as optimizer_comparison
from ._connect import barriers as barriers
from ._connect import curve_profile as curve_profile
from ._curvature import curvature_map as curvature_map
from ._curvature import edge_of_stability as edge_of_stability
from ._curvature import sharpness_generalization as sharpness_generalization
from ._curvature import spectral_density as spectral_density
from ._gradient import cross_sections as cross_sections
from ._gradient import lr_steps as lr_steps
from ._lines import line as line
from ._network import hidden_lines as hidden_lines
from ._network import hidden_space as hidden_space
from ._network import thresholded as thresholded
from ._plane import contour as contour
from ._plane import surface3d as surface3d
from ._save import StaticExportWarning as StaticExportWarning
from ._save import save as save
from ._volume import volume as volume

__all__ = [
    "animate_fit",
    "animate_path",
    "barriers",
    "contour",
    "cross_sections",
    "curve_profile",
    "curvature_map",
    "edge_of_stability",
    "hidden_lines",
    "hidden_space",
    "line",
    "lr_steps",
    "optimizer_comparison",
    "save",
    "sharpness_generalization",
    "spectral_density",
    "StaticExportWarning",
    "surface3d",
    "thresholded",
    "volume",
]
