"""A stand-in for the Lightning Trainer that methods' ``test_time_stage`` reads (SADE, TLC tests)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch


def fake_trainer(limit: int | float = 1.0, rank: int = 0, world_size: int = 1) -> SimpleNamespace:
    """CPU device, ``limit_test_batches``, process ``rank`` of ``world_size``, full precision."""
    return SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        limit_test_batches=limit,
        global_rank=rank,
        world_size=world_size,
        precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
    )
