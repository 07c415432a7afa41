"""Networks with the project's one signature ``F = net(x, t, s, y=None, w=None)``."""

from tvmlib.nn.embedding import sinusoidal_embedding
from tvmlib.nn.mlp import MLP2D

__all__ = ["MLP2D", "sinusoidal_embedding"]
