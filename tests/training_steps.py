"""A few real training steps on small learnable data, shared by the methods' "loss goes down" tests."""

from __future__ import annotations

import math

import torch


def learnable_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """64 images 3x16x16 of 4 classes: a fixed random template per class plus noise (label = template)."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(4, 3, 16, 16, generator=g)
    targets = torch.arange(64) % 4
    return templates[targets] + 0.5 * torch.randn(64, 3, 16, 16, generator=g), targets


def sgd_losses(
    method, images: torch.Tensor, targets: torch.Tensor, steps: int = 12, batch: int = 16
) -> list[float]:
    """``steps`` steps of the method's own loss and optimizer on cycling slices; the losses."""
    optimizer = method.configure_optimizers()["optimizer"]
    method.train()
    losses = []
    for step in range(steps):
        idx = torch.arange(batch) + (step * batch) % len(targets)
        loss = method.compute_loss(method(images[idx]), targets[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def fixed_batch_losses(
    method, images: torch.Tensor, targets: torch.Tensor, steps: int, lr: float
) -> list[float]:
    """``steps`` steps of SGD (momentum 0.9) on one fixed batch with the method's own loss; the losses."""
    optimizer = torch.optim.SGD(method.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = method.compute_loss(method(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def assert_loss_drops(losses: list[float], factor: float = 0.7) -> None:
    """Finite losses whose last three average below ``factor`` times the first three."""
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < factor * sum(losses[:3]) / 3, losses
