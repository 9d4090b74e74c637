"""A Transformer encoder over the sequence (Vaswani et al. 2017), pooled to one vector."""

from __future__ import annotations

import math

import torch
from torch import nn

from deepmine.nets.sequence import ToSequence

POSITIONS = ("learned", "sinusoidal")
POOLS = ("mean", "last", "cls")


def sinusoidal_positions(steps: int, d_model: int) -> torch.Tensor:
    """The fixed (steps, d_model) table of Vaswani et al.: sin on even, cos on odd channels,
    wavelengths from 2*pi to 10000*2*pi."""
    position = torch.arange(steps, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(1e4) / d_model)
    )
    table = torch.zeros(steps, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
    return table


class TransformerNet(nn.Module):
    """Sequence -> Linear to d_model -> (+ cls token) + positions -> pre-norm encoder layers
    -> pool (mean | last | cls) -> LayerNorm -> Linear.

    Attention alone ignores order; the positions are what let the net tell steps apart.
    Pre-norm layers (`norm_first`) train stably without warm-up, and since they leave the
    residual stream unnormalized, the head normalizes the pooled vector itself.
    """

    def __init__(
        self,
        input_shape: list[int],
        num_outputs: int,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
        positions: str = "learned",
        pool: str = "mean",
    ):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(
                f"d_model ({d_model}) must be divisible by num_heads ({num_heads}): "
                f"each head attends over d_model / num_heads channels"
            )
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {list(POSITIONS)}, got {positions!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {list(POOLS)}, got {pool!r}")
        self.pool = pool
        self.to_sequence = ToSequence(input_shape)
        self.project = nn.Linear(self.to_sequence.features, d_model)
        # the cls token is one more step, and gets a position of its own (the first)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model)) if pool == "cls" else None
        steps = self.to_sequence.steps + (pool == "cls")
        if positions == "learned":
            self.positions = nn.Parameter(torch.randn(steps, d_model) * 0.02)
        else:
            # fixed, and rebuilt from the shape: not trained and not stored in checkpoints
            self.register_buffer(
                "positions", sinusoidal_positions(steps, d_model), persistent=False
            )
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model,
            num_heads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        # nested tensors only speed up padded batches, and pre-norm layers cannot use them
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.project(self.to_sequence(x))
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(len(h), -1, -1), h], dim=1)
        h = self.encoder(self.dropout(h + self.positions))
        if self.pool == "mean":
            pooled = h.mean(dim=1)
        elif self.pool == "last":
            pooled = h[:, -1]
        else:
            pooled = h[:, 0]
        return self.head(pooled)
