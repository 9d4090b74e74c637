"""A small convolutional net: conv blocks, each halving the image, then a linear head."""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """[Conv kxk (same padding) -> (BatchNorm) -> ReLU -> MaxPool 2] per entry of `channels`
    -> Linear.

    The default `channels=[32, 64]`, `kernel_size=5` is the "2 Conv <100K parameters"-style net
    of the Fashion-MNIST benchmark table (conv 32@5x5, pool, conv 64@5x5, pool, linear).
    """

    def __init__(
        self,
        input_shape: list[int],
        num_outputs: int,
        channels: list[int],
        kernel_size: int = 5,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"a convolutional net needs an image input (channels, height, width), got "
                f"input_shape {list(input_shape)}; for flat feature vectors use net=mlp"
            )
        in_channels, height, width = input_shape
        blocks: list[nn.Module] = []
        for out_channels in channels:
            # a convolution followed by batch norm needs no bias of its own
            blocks.append(
                nn.Conv2d(
                    in_channels,
                    out_channels,
                    kernel_size,
                    padding=kernel_size // 2,
                    bias=not batch_norm,
                )
            )
            if batch_norm:
                blocks.append(nn.BatchNorm2d(out_channels))
            blocks += [nn.ReLU(), nn.MaxPool2d(2)]
            in_channels, height, width = out_channels, height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(f"{len(channels)} pooling blocks shrink {input_shape} to nothing")
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.Flatten()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(in_channels * height * width, num_outputs))
        self.head = nn.Sequential(*head)

    def forward(self, x):
        return self.head(self.features(x))
