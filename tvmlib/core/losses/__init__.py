"""Losses: each a small callable ``loss(net, batch) -> (loss, logs)``.

batch = x0 or (x0, y); logs maps names to detached scalar tensors."""

from tvmlib.core.losses.cmt import CMTLoss
from tvmlib.core.losses.fm import FMLoss
from tvmlib.core.losses.meanflow import MeanFlowLoss
from tvmlib.core.losses.tvm import TVMLoss

__all__ = ["CMTLoss", "FMLoss", "MeanFlowLoss", "TVMLoss"]
