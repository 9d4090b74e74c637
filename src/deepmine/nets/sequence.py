"""How sequence nets read a sample as (steps, features), shared so the three nets agree."""

from __future__ import annotations

import torch
from torch import nn


def sequence_shape(input_shape: list[int]) -> tuple[int, int]:
    """(steps, features) of a sample of `input_shape`.

    (steps, features) is a forecasting window and is taken as is. An image (C, H, W) is read
    row by row: H steps of C*W values each, the classic "images as sequences" setup (a
    Fashion-MNIST image is 28 steps of 28 pixels). A flat vector has no order to read, so it
    is refused rather than guessed at.
    """
    shape = [int(n) for n in input_shape]
    if len(shape) == 2:
        steps, features = shape
    elif len(shape) == 3:
        channels, steps, width = shape
        features = channels * width
    else:
        raise ValueError(
            f"a sequence net needs a sequence input (steps, features) or an image "
            f"(channels, height, width), got input_shape {list(input_shape)}; "
            f"for flat feature vectors use net=mlp"
        )
    if steps < 1 or features < 1:
        raise ValueError(f"input_shape {list(input_shape)} has no steps or no features")
    return steps, features


class ToSequence(nn.Module):
    """Reshapes a batch of samples of `input_shape` to (batch, steps, features)."""

    def __init__(self, input_shape: list[int]):
        super().__init__()
        self.steps, self.features = sequence_shape(input_shape)
        self.is_image = len(input_shape) == 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_image:
            # (B, C, H, W) -> (B, H, C, W): each image row, all channels, becomes one step
            x = x.transpose(1, 2)
        return x.reshape(len(x), self.steps, self.features)

    def extra_repr(self) -> str:
        return f"steps={self.steps}, features={self.features}"
