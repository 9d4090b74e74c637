"""Autoencoders: a net that maps an input to a short code and back (task=clustering).

An autoencoder has `encode(x) -> (B, latent_dim)` codes, `decode(codes)` and `forward(x)`, the
reconstruction, shaped like `x`. Tasks read `latent_dim` (the width of the codes) and call
`encode` and `decode`.

`Autoencoder` is the fully connected autoencoder of DEC (Xie, Girshick & Farhadi, ICML 2016):
input-500-500-2000-10 with ReLU between layers and no activation on the code or the output.
PyTorch's default `nn.Linear` weight initialisation, uniform in ±1/sqrt(fan_in), is the
`VarianceScaling(1/3, fan_in, uniform)` that DEC-keras uses for MNIST and Fashion-MNIST, so it is
kept as it is.

`ConvAutoencoder` is the convolutional variant (as in DCEC, Guo et al. 2017): strided 3x3
convolutions halve the image per block, a linear layer makes the code, transposed convolutions
grow it back to the exact input size, whatever that size (28x28, 8x8, 32x32, ...).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from deepmine.nets.mlp import ACTIVATIONS


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


class Autoencoder(nn.Module):
    """Flatten -> Linear+act per `hidden_sizes` -> Linear to `latent_dim` (the code); the
    decoder mirrors the encoder and ends in a Linear layer, reshaped to `input_shape`."""

    def __init__(
        self,
        input_shape: list[int],
        hidden_sizes: list[int],
        latent_dim: int = 10,
        activation: str = "relu",
    ):
        super().__init__()
        act = _activation(activation)
        self.input_shape = tuple(input_shape)
        self.latent_dim = int(latent_dim)
        widths = [math.prod(self.input_shape), *hidden_sizes]
        encoder: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in itertools.pairwise(widths):
            encoder += [nn.Linear(width_in, width_out), act()]
        encoder.append(nn.Linear(widths[-1], self.latent_dim))
        decoder: list[nn.Module] = []
        backwards = [self.latent_dim, *reversed(widths[1:])]
        for width_in, width_out in itertools.pairwise(backwards):
            decoder += [nn.Linear(width_in, width_out), act()]
        decoder.append(nn.Linear(backwards[-1], widths[0]))
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code).view(len(code), *self.input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder(x))


class ConvAutoencoder(nn.Module):
    """[conv 3x3 stride 2 -> act] per entry of `channels` -> Linear to `latent_dim`; the
    decoder goes back through transposed convolutions sized to reproduce each encoder shape."""

    def __init__(
        self,
        input_shape: list[int],
        channels: list[int],
        latent_dim: int = 10,
        activation: str = "relu",
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"ConvAutoencoder needs images [channels, height, width], got {input_shape}: "
                "use net=autoencoder for flat inputs"
            )
        act = _activation(activation)
        self.input_shape = tuple(input_shape)
        self.latent_dim = int(latent_dim)
        sizes = [tuple(input_shape[1:])]
        encoder: list[nn.Module] = []
        in_channels = input_shape[0]
        for out_channels in channels:
            encoder += [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), act()]
            sizes.append(tuple((s + 1) // 2 for s in sizes[-1]))
            in_channels = out_channels
        self.code_shape = (in_channels, *sizes[-1])
        encoder += [nn.Flatten(), nn.Linear(math.prod(self.code_shape), self.latent_dim)]
        decoder: list[nn.Module] = [
            nn.Linear(self.latent_dim, math.prod(self.code_shape)),
            act(),
            nn.Unflatten(1, self.code_shape),
        ]
        widths = [input_shape[0], *channels]
        for block in range(len(channels), 0, -1):
            small, large = sizes[block], sizes[block - 1]
            # a stride-2 transposed conv gives 2*n - 1 (+ output_padding): pick it per axis
            padding = tuple(big - (2 * n - 1) for n, big in zip(small, large, strict=True))
            decoder.append(
                nn.ConvTranspose2d(
                    widths[block],
                    widths[block - 1] if block > 1 else widths[1],
                    3,
                    stride=2,
                    padding=1,
                    output_padding=padding,
                )
            )
            decoder.append(act())
        decoder.append(nn.Conv2d(widths[1], input_shape[0], 3, padding=1))  # linear output
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder(x))
