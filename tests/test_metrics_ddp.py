"""Two-process CPU DDP (gloo): LTMetrics synced over ranks equals one process on all the data."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lt_bench.metrics import LTMetrics

COUNTS = [500, 200, 80, 30, 10, 5]
WORLD_SIZE = 2


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    y = rng.choice([0, 1, 2, 3, 5], size=301)  # class 4 untested; odd N splits unevenly
    logits = rng.normal(size=(len(y), len(COUNTS))) * 2.0
    logits[np.arange(len(y)), y] += 1.5
    return torch.from_numpy(logits), torch.from_numpy(y)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, port: int, out_dir: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        logits, y = make_data()
        metric = LTMetrics(COUNTS)
        # Uneven halves, fed in two batches each.
        for part in np.array_split(np.arange(len(y))[rank::WORLD_SIZE], 2):
            metric.update(logits[part], y[part])
        result = {"scores": metric.compute(), "confmat": metric.confusion_matrix()}
        # compute() unsyncs afterwards: the local state is this rank's share again.
        result["local_samples"] = int(metric.confmat.sum())
        (out_dir / f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    finally:
        dist.destroy_process_group()


def test_ddp_sync_equals_single_process(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), tmp_path), nprocs=WORLD_SIZE, join=True)

    logits, y = make_data()
    single = LTMetrics(COUNTS)
    single.update(logits, y)
    expected = single.compute()
    for rank in range(WORLD_SIZE):
        result = pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes())
        assert torch.equal(result["confmat"], single.confusion_matrix())
        assert result["local_samples"] == len(y[rank::WORLD_SIZE])
        scores = result["scores"]
        assert scores.keys() == expected.keys()
        for key, value in expected.items():
            assert np.allclose(scores[key], value, rtol=1e-12, atol=0, equal_nan=True), key
