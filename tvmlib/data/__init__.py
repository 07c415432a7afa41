"""Data: toy 2D distributions (``toy2d``) and image data sets."""

from tvmlib.data.toy2d import TOY2D, ToySource, num_classes, sample_toy2d

__all__ = ["TOY2D", "ToySource", "num_classes", "sample_toy2d"]
