"""Data: toy 2D distributions (``toy2d``) and image data sets (``images``)."""

from tvmlib.data.images import TensorSource, image_folder, load_mnist
from tvmlib.data.toy2d import TOY2D, ToySource, num_classes, sample_toy2d

__all__ = ["TOY2D", "TensorSource", "ToySource", "image_folder", "load_mnist", "num_classes",
           "sample_toy2d"]
