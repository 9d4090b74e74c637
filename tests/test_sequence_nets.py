"""Sequence nets (net=lstm | gru | transformer): they compose with the real conf/ tree, read
images row by row and (steps, features) windows as they are, take their options as documented,
depend on the order of the steps, run under deterministic algorithms, and train end to end.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from torch import nn

from conftest import ROOT
from deepmine.config import register_resolvers
from deepmine.nets.rnn import GRUNet, LSTMNet
from deepmine.nets.sequence import ToSequence, sequence_shape
from deepmine.nets.transformer import TransformerNet, sinusoidal_positions

register_resolvers()
CONF = ROOT / "conf"
NETS = {"lstm": LSTMNet, "gru": GRUNet, "transformer": TransformerNet}
RECURRENT = [LSTMNet, GRUNet]
WINDOW = [24, 3]  # a forecasting window: 24 lookback steps of 3 series


def compose_cfg(tmp_path: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def window_batch(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *WINDOW, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("data", ["digits", "fashion_mnist"])
@pytest.mark.parametrize("net", list(NETS))
def test_net_config_fits_image_data(tmp_path, net, data):
    cfg = compose_cfg(tmp_path, f"net={net}", f"data={data}")
    model = instantiate(cfg.net)
    assert type(model) is NETS[net]
    height, width = cfg.data.input_shape[1:]
    assert (model.to_sequence.steps, model.to_sequence.features) == (height, width)
    x = torch.rand(3, *cfg.data.input_shape)
    assert model(x).shape == (3, cfg.data.num_outputs)


@pytest.mark.parametrize("net", list(NETS))
def test_net_config_keys_are_the_constructor_arguments_and_defaults(tmp_path, net):
    """No dead options: every key is an argument, and the yaml states the code's defaults."""
    cfg = OmegaConf.to_container(compose_cfg(tmp_path, f"net={net}").net, resolve=True)
    params = inspect.signature(get_class(cfg.pop("_target_"))).parameters
    assert set(cfg) == set(params)
    for key, value in cfg.items():
        if params[key].default is not inspect.Parameter.empty:
            assert value == params[key].default, key


@pytest.mark.parametrize("cls", NETS.values())
def test_steps_by_features_window(cls):
    model = cls(WINDOW, 12)
    assert (model.to_sequence.steps, model.to_sequence.features) == (24, 3)
    assert model(window_batch(5)).shape == (5, 12)


def test_image_rows_become_steps_with_all_channels():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)  # B, C, H, W
    seq = ToSequence([3, 4, 5])(x)
    assert seq.shape == (2, 4, 15)
    # step h of sample b: row h of channel 0, then of channel 1, then of channel 2
    assert torch.equal(seq[1, 2], torch.cat([x[1, 0, 2], x[1, 1, 2], x[1, 2, 2]]))
    assert sequence_shape([1, 28, 28]) == (28, 28)


@pytest.mark.parametrize("shape", [[64], [2, 3, 4, 5]])
@pytest.mark.parametrize("cls", NETS.values())
def test_non_sequence_input_is_a_clear_error(cls, shape):
    with pytest.raises(ValueError, match=r"sequence net needs .*net=mlp"):
        cls(shape, 10)


@pytest.mark.parametrize("cls", RECURRENT)
def test_recurrent_options_shape_the_net(cls):
    plain = cls(WINDOW, 12, hidden_size=16)
    assert type(plain.rnn) is cls.rnn_class and plain.rnn.batch_first
    assert plain.rnn.hidden_size == 16 and plain.rnn.input_size == 3
    assert [type(m) for m in plain.head] == [nn.Linear]
    assert plain.head[-1].in_features == 16

    both = cls(WINDOW, 12, hidden_size=16, bidirectional=True)
    assert both.rnn.bidirectional and both.head[-1].in_features == 32

    stacked = cls(WINDOW, 12, hidden_size=16, num_layers=3, dropout=0.25)
    assert stacked.rnn.num_layers == 3 and hasattr(stacked.rnn, "weight_ih_l2")
    assert stacked.rnn.dropout == 0.25  # between the stacked layers
    assert [type(m) for m in stacked.head] == [nn.Dropout, nn.Linear]
    assert stacked.head[0].p == 0.25  # and before the head
    assert stacked(window_batch()).shape == (4, 12)

    # one layer: nothing to drop between, only before the head
    single = cls(WINDOW, 12, hidden_size=16, dropout=0.25)
    assert single.rnn.dropout == 0.0 and isinstance(single.head[0], nn.Dropout)


@pytest.mark.parametrize("cls", RECURRENT)
def test_bidirectional_head_reads_both_final_states(cls):
    """The forward state after the last step and the backward state after the first one."""
    model = cls(WINDOW, 12, hidden_size=8, num_layers=2, bidirectional=True).eval()
    x = window_batch()
    with torch.no_grad():
        outputs, _ = model.rnn(model.to_sequence(x))  # (B, steps, 2 * hidden), last layer
        expected = model.head(torch.cat([outputs[:, -1, :8], outputs[:, 0, 8:]], dim=-1))
        assert torch.allclose(model(x), expected, atol=1e-6)


def test_transformer_options_shape_the_net():
    model = TransformerNet(
        WINDOW, 12, d_model=32, num_heads=8, num_layers=3, dim_feedforward=48, dropout=0.2
    )
    assert model.project.in_features == 3 and model.project.out_features == 32
    layers = model.encoder.layers
    assert len(layers) == 3
    layer = layers[0]
    assert layer.self_attn.num_heads == 8 and layer.self_attn.batch_first
    assert layer.norm_first and layer.linear1.out_features == 48
    assert layer.dropout.p == 0.2 and model.dropout.p == 0.2
    assert [type(m) for m in model.head] == [nn.LayerNorm, nn.Linear]
    assert model.head[-1].out_features == 12
    assert model(window_batch()).shape == (4, 12)


def test_transformer_heads_must_divide_d_model():
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by num_heads \(4\)"):
        TransformerNet(WINDOW, 12, d_model=30, num_heads=4)


@pytest.mark.parametrize(("option", "value"), [("positions", "rotary"), ("pool", "max")])
def test_transformer_unknown_choice_is_a_clear_error(option, value):
    with pytest.raises(ValueError, match=f"{option} must be one of"):
        TransformerNet(WINDOW, 12, **{option: value})


def test_learned_positions_are_trained_sinusoidal_ones_are_fixed():
    learned = TransformerNet(WINDOW, 12, d_model=16)
    assert isinstance(learned.positions, nn.Parameter) and learned.positions.shape == (24, 16)
    assert "positions" in dict(learned.named_parameters())

    fixed = TransformerNet(WINDOW, 12, d_model=16, positions="sinusoidal")
    assert "positions" not in dict(fixed.named_parameters())
    assert "positions" in dict(fixed.named_buffers()) and not fixed.positions.requires_grad
    assert "positions" not in fixed.state_dict()  # rebuilt from the shape, not checkpointed
    assert (
        sum(p.numel() for p in learned.parameters()) - sum(p.numel() for p in fixed.parameters())
        == 24 * 16
    )
    # Vaswani et al.: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same)
    pos, i = 5, 3
    angle = pos / 10000 ** (2 * i / 16)
    assert math.isclose(fixed.positions[pos, 2 * i].item(), math.sin(angle), abs_tol=1e-5)
    assert math.isclose(fixed.positions[pos, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-5)
    assert sinusoidal_positions(4, 7).shape == (4, 7)  # odd widths work too


@pytest.mark.parametrize("pool", ["mean", "last", "cls"])
def test_transformer_pools_as_documented(pool):
    model = TransformerNet(WINDOW, 12, d_model=16, pool=pool).eval()
    captured = {}
    model.encoder.register_forward_hook(lambda _m, _i, out: captured.update(h=out))
    x = window_batch()
    with torch.no_grad():
        y = model(x)
        h = captured["h"]
        pooled = {"mean": h.mean(dim=1), "last": h[:, -1], "cls": h[:, 0]}[pool]
        assert torch.allclose(y, model.head(pooled), atol=1e-6)
    if pool == "cls":  # a learned token prepended, with a position of its own
        assert h.shape[1] == 25 and model.positions.shape[0] == 25
        assert isinstance(model.cls_token, nn.Parameter) and model.cls_token.shape == (1, 1, 16)
    else:
        assert h.shape[1] == 24 and model.cls_token is None


def permuted_output_change(model: nn.Module) -> float:
    model.eval()
    x = window_batch()
    order = torch.randperm(WINDOW[0], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (model(x) - model(x[:, order])).abs().max().item()


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cls", RECURRENT)
def test_recurrent_nets_read_the_order_of_steps(cls, bidirectional):
    torch.manual_seed(0)
    assert permuted_output_change(cls(WINDOW, 12, bidirectional=bidirectional)) > 1e-3


@pytest.mark.parametrize("pool", ["mean", "last", "cls"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_transformer_reads_the_order_of_steps_through_positions(positions, pool):
    torch.manual_seed(0)
    model = TransformerNet(WINDOW, 12, positions=positions, pool=pool)
    assert permuted_output_change(model) > 1e-3


def test_transformer_without_positions_would_not_see_the_order():
    """The check above has teeth: with the position table zeroed, a mean-pooled encoder is
    blind to the order of the steps."""
    torch.manual_seed(0)
    model = TransformerNet(WINDOW, 12, positions="learned", pool="mean")
    with torch.no_grad():
        model.positions.zero_()
    assert permuted_output_change(model) < 1e-5


@pytest.mark.parametrize("net", list(NETS))
def test_nets_train_under_deterministic_algorithms(net):
    def gradients() -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = NETS[net]([1, 8, 8], 10, dropout=0.1).train()
        x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
        loss = nn.functional.cross_entropy(model(x), torch.arange(6))
        loss.backward()
        return [p.grad for p in model.parameters()]

    was_on = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = gradients(), gradients()
    finally:
        torch.use_deterministic_algorithms(was_on)
    assert all(g is not None and torch.isfinite(g).all() for g in first)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("net", list(NETS))
def test_smoke_train_run(sandbox, net):
    proc = sandbox.train("data=digits", f"net={net}", "debug=fast", "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
