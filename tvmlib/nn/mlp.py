"""A 2D MLP in the project's signature ``F = net(x, t, s, y=None, w=None)``.

The conditioning is TVM's: embeddings of t and of the gap t - s (not of s), of beta = 1/w when
the network is guidance-conditioned, and of the class label with a null class for dropout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tvmlib.nn.embedding import check_labels, per_sample, sinusoidal_embedding


class MLP2D(nn.Module):
    """F_theta(x, t, s, y, w) for x of shape (B, dim).

    Args:
        dim: data dimension (2 for the toys).
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        emb_dim: size of each sinusoidal embedding.
        num_classes: classes for conditioning (0: unconditional). Label ``num_classes`` is the
            null class, used for label dropout and unconditional evaluation.
        guidance: if True the network takes w (CFG scale) as an input, through beta = 1/w.
        time_scale: t, t - s and 1/w are multiplied by this before the sinusoidal embedding.
            Losses that differentiate in time (TVM, MeanFlow) need a smooth embedding: the
            highest frequency bounds d/dt of the features.
    """

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, emb_dim: int = 32,
                 num_classes: int = 0, guidance: bool = False, time_scale: float = 1000.0):
        super().__init__()
        self.dim, self.emb_dim, self.time_scale = dim, emb_dim, time_scale
        self.num_classes, self.guidance = num_classes, guidance
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        in_dim = dim + emb_dim * (2 + int(guidance) + int(num_classes > 0))  # x, t, t-s, 1/w, y
        layers = [nn.Linear(in_dim, hidden), nn.SiLU()]
        layers += [m for _ in range(depth - 1) for m in (nn.Linear(hidden, hidden), nn.SiLU())]
        self.body = nn.Sequential(*layers, nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor, s: Tensor | None = None,
                y: Tensor | None = None, w: Tensor | None = None) -> Tensor:
        """x: (B, dim); t, s, w: (B,) or scalars; y: (B,) int labels. Returns F: (B, dim)."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP2D expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        B = x.shape[0]
        t = per_sample(t, B, x, "t")
        s = t if s is None else per_sample(s, B, x, "s")
        emb = lambda v: sinusoidal_embedding(v, self.emb_dim, scale=self.time_scale)  # noqa: E731
        feats = [x, emb(t), emb(t - s)]
        if self.guidance:
            w = torch.ones_like(t) if w is None else per_sample(w, B, x, "w")
            feats.append(emb(1.0 / w))
        if self.class_emb is not None:
            y = torch.full((B,), self.num_classes, device=x.device) if y is None else y
            check_labels(y, self.num_classes, B)
            feats.append(self.class_emb(y))
        elif y is not None:
            raise ValueError("labels y were given to an unconditional MLP2D (num_classes=0): "
                             "build MLP2D(num_classes=K) or drop labels "
                             "(ToySource(..., labels=False))")
        return self.body(torch.cat(feats, dim=1).to(x.dtype))
