"""Networks with the project's one signature ``F = net(x, t, s, y=None, w=None)``."""

# The attention *function* stays in tvmlib.nn.attention: exporting it here would shadow the module.
from tvmlib.nn.attention import get_attention_backend, set_attention_backend, use_attention
from tvmlib.nn.dit import DIT_PRESETS, DiT, LipschitzConfig, dit_from_preset
from tvmlib.nn.embedding import sinusoidal_embedding
from tvmlib.nn.mlp import MLP2D

__all__ = [
    "DIT_PRESETS",
    "DiT",
    "LipschitzConfig",
    "MLP2D",
    "dit_from_preset",
    "get_attention_backend",
    "set_attention_backend",
    "sinusoidal_embedding",
    "use_attention",
]
