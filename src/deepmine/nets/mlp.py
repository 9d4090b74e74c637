"""Multilayer perceptron over flattened inputs."""

from __future__ import annotations

import math

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class MLP(nn.Module):
    """Flatten -> [Linear -> activation -> Dropout] x len(hidden_sizes) -> Linear.

    With `hidden_sizes=[64]`, `dropout=0.2` this is the seed article's Keras model
    (Flatten, Dense 64 ReLU, Dropout 0.2, Dense 10); the softmax lives in the loss.
    """

    def __init__(
        self,
        input_shape: list[int],
        num_outputs: int,
        hidden_sizes: list[int],
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)
