"""``replica_forward`` against what DataParallel does: a copy of the module per chunk, the first one's
buffers kept."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lt_bench.models.data_parallel import frozen_running_stats, replica_forward
from lt_bench.models.resnet_cifar import ResNetCifar


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize(("batch", "replicas"), [(12, 4), (14, 4), (9, 2)])
def test_a_replica_per_chunk_keeping_the_first_ones_buffers(batch: int, replicas: int) -> None:
    """Outputs and parameter gradients equal those of separate replicas run on ``x.chunk(replicas)``
    (gradients summed, as DataParallel reduces them); running statistics equal the first replica's."""
    net, x = _net(), torch.randn(batch, 6, generator=torch.Generator().manual_seed(1))
    copies = [copy.deepcopy(net) for _ in range(replicas)]
    expected = torch.cat([c(chunk) for c, chunk in zip(copies, x.chunk(replicas), strict=False)])
    expected.square().sum().backward()
    out = replica_forward(net, x, replicas)
    out.square().sum().backward()
    torch.testing.assert_close(out, expected)
    for name, param in net.named_parameters():
        summed = sum(dict(c.named_parameters())[name].grad for c in copies[: len(x.chunk(replicas))])
        torch.testing.assert_close(param.grad, summed, msg=name)
    first = dict(copies[0].named_buffers())
    for name, buffer in net.named_buffers():
        if name.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(buffer, first[name], msg=name)
    assert net[1].momentum == 0.1  # restored


def test_one_replica_and_evaluation_are_the_plain_call() -> None:
    net, x = _net(), torch.randn(8, 6)
    torch.testing.assert_close(replica_forward(net, x, 1), net(x))
    net.eval()
    torch.testing.assert_close(replica_forward(net, x, 4), net(x))


def test_frozen_running_stats_normalise_with_the_batch_and_restore_momentum() -> None:
    net = ResNetCifar()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    with frozen_running_stats(net):
        net(torch.randn(4, 3, 32, 32))
    after = {k: v for k, v in net.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm2d)} == {0.1}
