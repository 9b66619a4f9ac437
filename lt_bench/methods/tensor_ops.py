"""Small tensor helpers shared by the methods' losses."""

from __future__ import annotations

import torch
from torch import Tensor


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float) -> Tensor:
    """``e_y`` rows ``[N, C]`` by comparison: ``F.one_hot``'s values without its range check, which
    reads the labels back on a CPU (a CUDA graph must not) — out-of-range labels give zero rows."""
    return (labels[:, None] == torch.arange(num_classes, device=labels.device)).to(dtype)
