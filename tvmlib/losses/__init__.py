"""Losses: each a small callable ``loss(net, batch) -> (loss, logs)``.

batch = x0 or (x0, y); logs maps names to detached scalar tensors."""

from tvmlib.losses.fm import FMLoss

__all__ = ["FMLoss"]
