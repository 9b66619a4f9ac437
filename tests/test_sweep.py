"""``lt-bench sweep``: the grid, GPU placement, skipping finished runs, failures, the MPS daemon."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fmnist_runs import require_fashion_mnist, small_run

from lt_bench.cli import main
from lt_bench.sweep import _start, expand, least_loaded, mps_daemons, visible_gpus

FAKE_CONTROL = """#!/bin/sh
# stands in for nvidia-cuda-mps-control: records its arguments, stdin, pipe folder and GPUs
echo "args=$* pipe=$CUDA_MPS_PIPE_DIRECTORY gpus=$CUDA_VISIBLE_DEVICES stdin=$(cat -)" >> "{log}"
"""


def test_mps_without_the_control_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["sweep", "cifar10_lt/ce", "seeds=0", "--mps"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nvidia-cuda-mps-control" in err and "without --mps" in err


def test_one_mps_daemon_per_gpu_starts_and_quits_around_the_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls.log"
    control = tmp_path / "bin" / "nvidia-cuda-mps-control"
    control.parent.mkdir()
    control.write_text(FAKE_CONTROL.format(log=log))
    control.chmod(control.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{control.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6")
    with mps_daemons(["5", "6"]) as clients:
        pipes = {gpu: env["CUDA_MPS_PIPE_DIRECTORY"] for gpu, env in clients.items()}
        assert set(pipes) == {"5", "6"} and pipes["5"] != pipes["6"]
        assert all(Path(p).is_dir() for p in pipes.values())
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ  # the sweep's own environment is untouched
    start5, start6, stop5, stop6 = log.read_text().splitlines()
    assert start5.startswith("args=-d ") and f"pipe={pipes['5']} gpus=5 " in start5
    assert start6.startswith("args=-d ") and f"pipe={pipes['6']} gpus=6 " in start6
    assert stop5 == f"args= pipe={pipes['5']} gpus=5 stdin=quit"
    assert stop6 == f"args= pipe={pipes['6']} gpus=6 stdin=quit"


def test_grid_is_experiments_times_seeds_times_listed_values() -> None:
    grid = expand(["fashion_mnist_lt/ce", "fashion_mnist_lt/ldam_drw"], ["seeds=0,1", "data.batch_size=64"])
    assert grid == [
        ["experiment=fashion_mnist_lt/ce", "seed=0", "data.batch_size=64"],
        ["experiment=fashion_mnist_lt/ce", "seed=1", "data.batch_size=64"],
        ["experiment=fashion_mnist_lt/ldam_drw", "seed=0", "data.batch_size=64"],
        ["experiment=fashion_mnist_lt/ldam_drw", "seed=1", "data.batch_size=64"],
    ]
    # a bracketed list is one value, not an axis
    assert expand(["x"], ["schedule.milestones=[1,2]"]) == [["experiment=x", "schedule.milestones=[1,2]"]]


def test_new_runs_go_to_the_least_busy_gpu_of_those_the_sweep_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2,3")
    gpus = visible_gpus()
    assert gpus == ["1", "2", "3"]  # physical ids, as the children must name them
    busy: list[str | None] = []
    for _ in range(7):
        busy.append(least_loaded(gpus, busy))
    assert busy == ["1", "2", "3", "1", "2", "3", "1"]
    busy.remove("2")  # a run on GPU 2 finished
    busy.remove("2")
    assert least_loaded(gpus, busy) == "2"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == ["0", "1", "2"]


def test_sweep_runs_the_grid_in_parallel_then_skips_it(tmp_path: Path, capsys) -> None:
    require_fashion_mnist()
    overrides = [*small_run(tmp_path)[1:], "trainer.max_epochs=1", "trainer.limit_train_batches=3"]
    overrides = [o for o in overrides if not o.startswith("run_id=")]
    assert main(["sweep", "fashion_mnist_lt/ce", "seeds=0,1", *overrides, "--parallel", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 runs, 0 already complete, 2 to run" in out
    records = sorted(tmp_path.glob("*/record.json"))
    assert [json.loads(r.read_text())["config"]["seed"] for r in records] == [0, 1]
    assert "| fashion_mnist_lt |" in out  # the table of the grid
    assert main(["sweep", "fashion_mnist_lt/ce", "seeds=0,1", *overrides]) == 0
    assert "2 runs, 2 already complete, 0 to run" in capsys.readouterr().out


def test_a_failed_run_fails_the_sweep_and_names_its_log(tmp_path: Path, capsys) -> None:
    overrides = [f"output_dir={tmp_path}", "dataset.root=/nonexistent/fashion", "trainer.accelerator=cpu"]
    assert main(["sweep", "fashion_mnist_lt/ce", "seeds=0", *overrides]) == 2
    err = capsys.readouterr().err
    logs = list(tmp_path.glob("*.log"))
    assert len(logs) == 1 and str(logs[0]) in err and "1 run(s) failed" in err


def test_sigterm_to_a_sweep_stops_its_runs_at_an_epoch_boundary(tmp_path: Path) -> None:
    """The sweep passes the stop on once; each run checkpoints its epoch and exits; exit code 130."""
    require_fashion_mnist()
    overrides = [*small_run(tmp_path)[1:], "trainer.max_epochs=40", "train.engine=fast"]
    overrides = [o for o in overrides if not o.startswith("run_id=")]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lt_bench",
            "sweep",
            "fashion_mnist_lt/ce",
            "seeds=0,1",
            *overrides,
            "--parallel",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while len(list(tmp_path.glob("*/checkpoints/last.ckpt"))) < 2:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            logs = "\n".join(f"{log}:\n{log.read_text()}" for log in tmp_path.glob("*.log"))
            pytest.fail(f"the runs never checkpointed; sweep: {proc.communicate()}\n{logs}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "of the 2 run(s) in progress 0 finished, 2 stopped with a checkpoint" in stderr
    logs = list(tmp_path.glob("*.log"))
    assert len(logs) == 2
    for log in logs:
        assert "stopped by SIGTERM after epoch" in log.read_text()
    assert not list(tmp_path.glob("*/record.json"))


def test_runs_under_mps_reach_their_gpus_daemon_and_see_it_as_device_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[dict] = []

    class FakePopen:
        def __init__(self, cmd, env, **kwargs):
            started.append(env)

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    clients = {gpu: {"CUDA_MPS_PIPE_DIRECTORY": f"/pipe-{gpu}"} for gpu in ("1", "2")}
    running = []
    for seed in range(3):
        record = tmp_path / f"run{seed}" / "record.json"
        running.append(_start([f"seed={seed}"], record, ["1", "2"], running, clients, threads=1))
    assert [r.gpu for r in running] == ["1", "2", "1"]
    assert [env["CUDA_MPS_PIPE_DIRECTORY"] for env in started] == ["/pipe-1", "/pipe-2", "/pipe-1"]
    assert all(env["CUDA_VISIBLE_DEVICES"] == "0" for env in started)
