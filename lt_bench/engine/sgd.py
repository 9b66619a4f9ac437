"""SGD whose learning rates live in device tensors, so a whole training step fits in a CUDA graph.

``torch.optim.SGD`` reads its learning rate as a Python float (or calls ``.item()`` on a tensor), which
a captured graph would freeze. ``GraphSGD`` keeps one 0-dim tensor per parameter group; the engine
writes the epoch's rate into it (``set_lrs``) outside the graph. The update is torch's SGD
(dampening 0)::

    d = g + wd * p;   b = momentum * b + d;   p = p - lr * (d + momentum * b if nesterov else b)

Parameters whose gradient is ``None`` are skipped, as torch does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class GraphSGD:
    """SGD over torch-style ``param_groups`` (``params``, ``lr``, ``momentum``, ``weight_decay``, ...)."""

    def __init__(self, param_groups: Sequence[dict[str, Any]], device: torch.device) -> None:
        self.groups = []
        for group in param_groups:
            params = [p for p in group["params"] if p.requires_grad]
            self.groups.append(
                {
                    "params": params,
                    "buffers": [torch.zeros_like(p) for p in params],
                    "lr": torch.tensor(float(group["lr"]), device=device),
                    "momentum": float(group.get("momentum", 0.0)),
                    "weight_decay": float(group.get("weight_decay", 0.0)),
                    "nesterov": bool(group.get("nesterov", False)),
                }
            )

    def set_lrs(self, lrs: Sequence[float]) -> None:
        """Write each group's learning rate into its device tensor (a fill, no host sync)."""
        for group, lr in zip(self.groups, lrs, strict=True):
            group["lr"].fill_(lr)

    def lrs(self) -> list[float]:
        return [float(group["lr"]) for group in self.groups]

    @torch.no_grad()
    def step(self) -> None:
        for group in self.groups:
            pairs = [
                (p, b) for p, b in zip(group["params"], group["buffers"], strict=True) if p.grad is not None
            ]
            if not pairs:
                continue
            params = [p for p, _ in pairs]
            buffers = [b for _, b in pairs]
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            momentum = group["momentum"]
            if momentum:
                torch._foreach_mul_(buffers, momentum)
                torch._foreach_add_(buffers, grads)
                direction = (
                    torch._foreach_add(grads, buffers, alpha=momentum) if group["nesterov"] else buffers
                )
            else:
                direction = grads
            torch._foreach_sub_(params, torch._foreach_mul(direction, group["lr"]))

    def state_dict(self) -> dict[str, Any]:
        return {"buffers": [[b.detach().cpu() for b in group["buffers"]] for group in self.groups]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["buffers"]
        if [len(g) for g in saved] != [len(g["buffers"]) for g in self.groups]:
            raise ValueError("optimizer state does not match the model's parameter groups")
        for group, buffers in zip(self.groups, saved, strict=True):
            for target, source in zip(group["buffers"], buffers, strict=True):
                target.copy_(source)
