"""What ``nn.DataParallel`` does to batch norm, on one device.

``DataParallel`` over ``R`` GPUs scatters a batch into ``R`` chunks (``Tensor.chunk``), runs a replica of
the module on each, and keeps the buffers of replica 0 (the module itself): every BatchNorm normalises
with its chunk's statistics, and the running statistics follow the first chunk only. Official codes
trained on several GPUs this way (ConCutMix: 4) normalise differently from one pass over the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


@contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Batch norms of ``module`` normalise with batch statistics but leave their running statistics as
    they are (``momentum`` 0: ``running = (1 - 0) * running + 0 * batch``; ``num_batches_tracked`` still
    counts the call, which only a cumulative average, ``momentum=None``, would read)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


def replica_forward(module: nn.Module, inputs: Tensor, replicas: int) -> Tensor:
    """``module(inputs)`` as ``DataParallel`` over ``replicas`` devices computes it in training mode:
    ``inputs.chunk(replicas)`` each through the module, running statistics from the first chunk only,
    outputs concatenated. ``replicas`` 1, or evaluation mode, is the plain call."""
    if replicas == 1 or not module.training:
        return module(inputs)
    chunks = inputs.chunk(replicas)
    outputs = [module(chunks[0])]
    with frozen_running_stats(module):
        outputs += [module(chunk) for chunk in chunks[1:]]
    return torch.cat(outputs)
