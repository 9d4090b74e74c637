"""L∞ evasion attacks on a classifier, in pixel space: FGSM and PGD.

ε is measured on pixels scaled to [0, 1], before the data's normalization, so ε=0.1 means the
same perturbation whether the run normalizes by scaling or by standardizing. The attacked
function is `net(normalize(pixels))`: `pixel_model` builds it from the net and the datamodule's
batch `Normalize`, and every adversarial image is clamped to the [0, 1] box and the ε-ball.

The net is put in eval mode while it is attacked (BatchNorm must use its running statistics and
not update them, Dropout must not randomize the gradient) and given back in the mode it was in.
Gradients are taken with `torch.autograd.grad` with respect to the input only, so nothing
accumulates in the parameters' `.grad`. `trainer.test` runs under `torch.inference_mode`, where
no graph is recorded: `attack_context` leaves it, and the inputs are cloned inside, since
tensors made in inference mode cannot take part in autograd. Lightning's validation loop runs
under inference mode too (or `torch.no_grad` with DDP on gloo): the same context serves there.

Random starts come from a `torch.Generator` (or the global RNG), or from `SampleNoise`, which
draws each sample's start from its own index in the split, so an evaluation sharded over DDP
ranks attacks every sample exactly as a single process does.

Why not torchattacks, ART or foolbox: each is another dependency (with its own torch and numpy
pins) for two functions of a dozen lines each, and none knows this project's pixel scale and
batch normalization, so a wrapper would be needed anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from deepmine.tasks.grad_mode import gradients_on

ATTACKS = ("fgsm", "pgd")


class PixelModel(nn.Module):
    """`net(normalize(pixels * pixel_max))`: the net seen from [0, 1] pixels."""

    def __init__(self, net: nn.Module, normalize: Callable | None, pixel_max: float = 1.0):
        super().__init__()
        self.net, self.normalize, self.pixel_max = net, normalize, float(pixel_max)

    def to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the net reads for these pixels: the datamodule's normalization of them."""
        x = pixels * self.pixel_max
        return self.normalize(x) if self.normalize is not None else x

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(self.to_input(pixels))

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The [0, 1] pixels of a batch the datamodule normalized (the inverse of `forward`'s
        input map, up to float rounding, which the clamp absorbs)."""
        x = x.to(torch.float32)
        mean, std = getattr(self.normalize, "mean", None), getattr(self.normalize, "std", None)
        if mean is not None:
            x = x * std + mean
        scale = getattr(self.normalize, "scale", None)
        if scale is not None:
            x = x * scale
        return (x / self.pixel_max).clamp(0.0, 1.0)


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """The net in eval mode for the block; each submodule's own training flag restored."""
    modes = {module: module.training for module in net.modules()}
    net.eval()
    try:
        yield net
    finally:
        for module, training in modes.items():
            module.training = training


#: gradients on inside `trainer.test`'s inference mode, where the attacks run
attack_context = gradients_on


def _loss_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


class SampleNoise:
    """Random starts drawn sample by sample, from each sample's index in the attacked split.

    A `torch.Generator` draws the noise of a whole batch at once, so a sample's start depends on
    the samples before it in the batch: under DDP, where each rank attacks its own shard, the
    same sample would start elsewhere than in a single process. Here the `k`-th draw for the
    sample of index `i` is `numpy.random.default_rng([seed, k, i])`'s, whatever the batching or
    the sharding; `index` gives the split index of each row of the batches attacked.
    """

    def __init__(self, seed: int, index: Iterable[int]):
        self.seed, self.index, self.draws = int(seed), [int(i) for i in index], 0

    def uniform(self, shape: torch.Size) -> torch.Tensor:
        """Uniform [0, 1) noise of `shape`, one row per sample of `index` (float32, CPU)."""
        if shape[0] != len(self.index):
            raise ValueError(f"noise for {len(self.index)} samples asked for {shape[0]}")
        draw, self.draws = self.draws, self.draws + 1
        rows = [
            np.random.default_rng([self.seed, draw, i]).random(tuple(shape[1:]), np.float32)
            for i in self.index
        ]
        return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(tuple(shape))


Noise = torch.Generator | SampleNoise | None


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    random_start: bool = False,
    step_size: float | None = None,
    generator: Noise = None,
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of ε·sign(∇x loss).

    With `random_start` it starts at a uniform point of the ε-ball and steps `step_size`
    (default ε), the FGSM-RS of Wong, Rice & Kolter 2020 (who step 1.25ε)."""
    x = x.detach().clone()
    if eps == 0:
        return x
    start = _random_start(x, eps, generator) if random_start else x
    step = eps if step_size is None else step_size
    return _project(start + step * _loss_grad(model, start, y).sign(), x, eps).detach()


def _random_start(x: torch.Tensor, eps: float, generator: Noise):
    """A uniform point of the ε-ball around `x`, inside [0, 1]; drawn on the CPU so a seed gives
    the same start on any device."""
    if isinstance(generator, SampleNoise):
        noise = generator.uniform(x.shape)
    else:
        noise = torch.rand(x.shape, generator=generator, device="cpu")
    noise = noise.to(device=x.device, dtype=x.dtype)
    return (x + (2 * noise - 1) * eps).clamp(0.0, 1.0)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    generator: Noise = None,
) -> torch.Tensor:
    """Projected gradient descent on the loss, L∞ (Madry et al. 2018): `steps` signed steps
    of `step_size` (default 2.5ε/steps), each projected back onto the ε-ball and [0, 1].

    With several `restarts` each sample keeps the first adversarial point found, else the one
    of highest loss, so more restarts never do worse."""
    x = x.detach().clone()
    if eps == 0:
        return x
    step = 2.5 * eps / steps if step_size is None else step_size
    best, best_loss, best_wrong = x.clone(), None, None
    for _ in range(max(1, restarts)):
        x_adv = _random_start(x, eps, generator) if random_start else x
        for _ in range(steps):
            x_adv = _project(x_adv + step * _loss_grad(model, x_adv, y).sign(), x, eps)
        with torch.no_grad():
            outputs = model(x_adv)
            loss = F.cross_entropy(outputs, y, reduction="none")
            wrong = outputs.argmax(1) != y
        if best_loss is None:
            better = torch.ones_like(wrong)
        else:
            better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
        mask = better.view(-1, *([1] * (x.dim() - 1)))
        best = torch.where(mask, x_adv, best)
        best_loss = loss if best_loss is None else torch.where(better, loss, best_loss)
        best_wrong = wrong if best_wrong is None else best_wrong | wrong
    return best.detach()


def attack(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    generator: Noise = None,
) -> torch.Tensor:
    """Adversarial [0, 1] pixels for `x` by the attack `name` (fgsm | pgd), the model in eval
    mode and gradients on whatever mode the caller is in. FGSM takes no random start here: it
    is the plain one-step attack in robustness evaluation."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r} (known: {', '.join(ATTACKS)})")
    with eval_mode(model), attack_context():
        x, y = x.clone(), y.clone()
        if name == "fgsm":
            return fgsm(model, x, y, eps)
        return pgd(model, x, y, eps, steps, step_size, random_start, restarts, generator)
