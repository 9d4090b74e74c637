"""Recurrent nets (LSTM, GRU): read the sequence step by step, classify the final state."""

from __future__ import annotations

import torch
from torch import nn

from deepmine.nets.sequence import ToSequence


class RecurrentNet(nn.Module):
    """Sequence -> stacked torch RNN (batch first) -> final hidden state(s) -> Dropout -> Linear.

    torch's own nn.LSTM / nn.GRU, so a GPU runs cuDNN's fused kernels. The head reads the last
    layer's final hidden state; a bidirectional net concatenates the forward state (after the
    last step) with the backward state (after the first step), so both ends of the sequence
    are read by a full pass. Subclasses pick the cell.
    """

    rnn_class: type[nn.RNNBase]

    def __init__(
        self,
        input_shape: list[int],
        num_outputs: int,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.to_sequence = ToSequence(input_shape)
        self.rnn = self.rnn_class(
            input_size=self.to_sequence.features,
            hidden_size=hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            # torch applies it between stacked layers only (and warns when there are none)
            dropout=dropout if num_layers > 1 else 0.0,
            batch_first=True,
        )
        directions = 2 if bidirectional else 1
        head: list[nn.Module] = []
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(directions * hidden_size, num_outputs))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, state = self.rnn(self.to_sequence(x))
        hidden = state[0] if isinstance(state, tuple) else state  # LSTM also returns cells
        # (layers * directions, B, H): keep the last layer's directions, side by side
        directions = 2 if self.rnn.bidirectional else 1
        last = hidden[-directions:]
        return self.head(torch.cat(list(last), dim=-1))


class LSTMNet(RecurrentNet):
    """Long short-term memory (Hochreiter & Schmidhuber 1997): gated cell state."""

    rnn_class = nn.LSTM


class GRUNet(RecurrentNet):
    """Gated recurrent unit (Cho et al. 2014): fewer gates than an LSTM, no cell state."""

    rnn_class = nn.GRU
