"""fastscape.plot: views that only draw what fastscape computed.

One rule for compute/draw pairs: ``fastscape.<name>`` computes and returns a data
object; the view that draws it takes that object as its first argument and is
named for the picture, so the pair shares a name only where the picture is the
quantity itself. This package imports no compute module of fastscape
(``tests/test_layout.py`` checks it).

=========================  ===========================================  ==================================
data object from           view                                         returns
=========================  ===========================================  ==================================
``loss_surface`` (2-D)     ``contour``                                  Axes
``loss_surface`` (2-D)     ``surface3d``                                plotly Figure (Axes 3-D: mpl)
several 2-D surfaces       ``contour_grid``                             array of Axes (shared scale)
``loss_surface`` (1-D)     ``line``                                     Axes
``loss_surface`` (3-D)     ``volume``                                   plotly Figure (Axes 3-D: mpl)
``loss_surface`` + path    ``animate_path``                             plotly Figure with frames
``cross_sections``         ``cross_sections``                           array of Axes
``lr_steps``               ``lr_steps``                                 Axes
``hidden_activations``     ``hidden_space``                             plotly Figure (Axes 3-D: mpl)
``thresholded_prediction`` ``thresholded``                              Axes
``snapshot_predictions``   ``animate_fit``                              plotly Figure with frames
``compare_optimizers``     ``optimizer_comparison``                     Axes
``project`` + residuals    ``pca_fidelity``                             array of 2 Axes
an nn.Linear's weights     ``hidden_lines``                             Axes
``connect`` curve profile  ``curve_profile``                            Axes
``connect`` barriers       ``barriers``                                 Axes
``curvature`` density      ``spectral_density``                         Axes
``curvature`` surface      ``curvature_map``                            Axes
sharpness per model        ``sharpness_generalization``                 Axes
eigenvalues along training ``edge_of_stability``                        Axes
any view's result          ``save``                                     Path of the written file
=========================  ===========================================  ==================================

A matplotlib view takes ``ax=`` (drawn into when given, else a new figure
without pyplot) and returns the Axes it drew on; a plotly view returns a
``plotly.graph_objects.Figure``. No view calls ``show()``; writing a file is
:func:`save` (HTML, PNG, SVG, PDF, GIF by suffix). In Jupyter a view's result
(an Axes, its ``.figure``, a plotly Figure) shows as a picture as a cell's last
expression in a fresh kernel, no ``%matplotlib`` needed; a plotly view adds an
HTML and a PNG form to plotly's own output, for front ends without its renderer.

The 3-D views (``surface3d``, ``volume``, ``hidden_space``) are plotly by
default and draw the same picture with matplotlib with ``backend="matplotlib"``;
the animations are plotly figures whose GIF frames are drawn by matplotlib.

matplotlib, plotly, kaleido and Pillow are imported when a view first needs
them; without them, the view raises an ImportError that names the extra to
install: ``pip install torch-fastscape[plot]``.
"""

from ._animate import animate_fit as animate_fit
from ._animate import animate_path as animate_path
from ._compare import optimizer_comparison as optimizer_comparison
from ._connect import barriers as barriers
from ._connect import curve_profile as curve_profile
from ._contour import contour as contour
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
from ._panels import contour_grid as contour_grid
from ._pca_check import pca_fidelity as pca_fidelity
from ._save import StaticExportWarning as StaticExportWarning
from ._save import save as save
from ._surface3d import surface3d as surface3d
from ._volume import volume as volume

__all__ = [
    "animate_fit",
    "animate_path",
    "barriers",
    "contour",
    "contour_grid",
    "cross_sections",
    "curve_profile",
    "curvature_map",
    "edge_of_stability",
    "hidden_lines",
    "hidden_space",
    "line",
    "lr_steps",
    "optimizer_comparison",
    "pca_fidelity",
    "save",
    "sharpness_generalization",
    "spectral_density",
    "StaticExportWarning",
    "surface3d",
    "thresholded",
    "volume",
]
