"""Deep Embedded Clustering refinement (Xie, Girshick & Farhadi, ICML 2016).

Starting from a pretrained encoder and k-means centres in its code space, DEC trains the
encoder and the centres together so that each sample's soft assignment `q` (a Student-t kernel
around the centres) moves toward a sharpened target `p` (q squared, divided by the cluster's
frequency, renormalized): KL(p || q) is the loss. `p` is recomputed on all samples every
`update_interval` iterations; training stops when fewer than `tol` of the samples changed
cluster between two updates, or after `max_iterations`. The defaults are DEC-keras' settings
for MNIST and Fashion-MNIST (SGD lr 0.01, momentum 0.9, batch 256, update every 140
iterations, tol 0.001, at most 20,000 iterations).

Written here because no maintained library implements DEC for PyTorch modules; the pieces
are a dozen tensor operations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from deepmine.errors import DeepmineError


@dataclass(frozen=True)
class DECSettings:
    #: iterations between two recomputations of the target distribution p
    update_interval: int = 140
    #: stop when fewer than this fraction of samples changed cluster since the last update
    tol: float = 0.001
    max_iterations: int = 20000
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    #: degrees of freedom of the Student-t kernel
    alpha: float = 1.0

    @classmethod
    def from_config(cls, values) -> DECSettings:
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DeepmineError(
                f"task.dec has unknown key(s) {unknown}",
                f"its keys are {', '.join(sorted(known))}",
            )
        return cls(**values)


def soft_assignments(codes: torch.Tensor, centers: torch.Tensor, alpha: float) -> torch.Tensor:
    """q_ij ∝ (1 + |z_i - mu_j|^2 / alpha)^(-(alpha + 1) / 2), each row summing to 1."""
    distances = torch.cdist(codes, centers).pow(2)
    q = (1.0 + distances / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """p_ij ∝ q_ij^2 / f_j with f_j = sum_i q_ij: sharpens confident assignments and keeps
    large clusters from swallowing the others."""
    weight = q.pow(2) / q.sum(0)
    return weight / weight.sum(1, keepdim=True)


@dataclass
class Refined:
    assignments: torch.Tensor
    centers: torch.Tensor
    iterations: int
    #: fraction of samples that changed cluster at the last update
    delta: float
    converged: bool


def refine(
    encode: Callable[[torch.Tensor], torch.Tensor],
    parameters: list[torch.nn.Parameter],
    x: torch.Tensor,
    centers: torch.Tensor,
    settings: DECSettings,
    generator: torch.Generator,
    chunk: int = 4096,
) -> Refined:
    """Train `parameters` (the encoder's) and the centres on all of `x` (on the encoder's
    device); the batch order is a seeded permutation, cycled as DEC-keras cycles its data."""
    device = centers.device
    centers = centers.detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([*parameters, centers], lr=settings.lr, momentum=settings.momentum)

    def all_q() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [
                    soft_assignments(encode(part.to(device)), centers, settings.alpha)
                    for part in x.split(chunk)
                ]
            )

    order = torch.randperm(len(x), generator=generator)
    previous = None
    p = None
    delta, converged, iteration = 1.0, False, 0
    start = 0
    for iteration in range(settings.max_iterations + 1):
        if iteration % settings.update_interval == 0:
            q = all_q()
            p = target_distribution(q)
            assigned = q.argmax(1)
            if previous is not None:
                delta = float((assigned != previous).float().mean())
                if delta < settings.tol:
                    converged = True
                    break
            previous = assigned
        if iteration == settings.max_iterations:
            break
        index = order[start : start + settings.batch_size]
        start = start + settings.batch_size if start + 2 * settings.batch_size <= len(x) else 0
        q_batch = soft_assignments(encode(x[index].to(device)), centers, settings.alpha)
        loss = F.kl_div(q_batch.log(), p[index].to(device), reduction="batchmean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    final = all_q().argmax(1)
    return Refined(final.cpu(), centers.detach(), iteration, delta, converged)
