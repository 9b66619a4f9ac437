"""Grids of runs as parallel ``lt-bench run`` processes sharing the GPUs of one node.

Each new process goes to the GPU with the fewest running processes of the sweep.

``lt-bench sweep cifar10_lt/ce cifar10_lt/ldam_drw seeds=0,1,2 dataset.imbalance_factor=100,10``
expands to one run per (experiment, seed, value combination). Runs whose record exists are skipped
(``lt-bench run`` itself checks), so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, NoReturn

import torch

from lt_bench.config import compose
from lt_bench.engine.stop import StopRequests
from lt_bench.errors import ConfigError, RunInterrupted
from lt_bench.runner import RECORD_FILE, default_run_id


def expand(experiments: list[str], overrides: list[str]) -> list[list[str]]:
    """All override lists of the grid; ``seeds=`` and comma lists in ``key=a,b`` are axes."""
    axes: list[list[str]] = [[f"experiment={e}" for e in experiments]]
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"argument '{arg}' is not key=value; write e.g. seeds=0,1,2")
        key = "seed" if key == "seeds" else key
        is_list = "," in value and not value.startswith("[")
        axes.append([f"{key}={v}" for v in value.split(",")] if is_list else [f"{key}={value}"])
    return [list(combo) for combo in itertools.product(*axes)]


@contextmanager
def mps_daemons(gpus: list[str | None]) -> Iterator[dict[str | None, dict[str, str]]]:
    """One CUDA MPS control daemon per GPU for the duration of the block; yields, per GPU, the
    environment a client process needs to reach that GPU's daemon.

    Without MPS a GPU time-slices between processes, so small-kernel runs (ResNet-32 at batch 128)
    gain little from running in parallel; with it their kernels share the GPU at once. Each daemon
    sees only its GPU (``CUDA_VISIBLE_DEVICES``) and has its own pipe and log folders. A client sees
    that one GPU as device 0 and must say so (``CUDA_VISIBLE_DEVICES=0``, set by ``_start``): torch
    counts devices through NVML, which sees every GPU of the host, and a client told nothing fails at
    CUDA initialisation (seen on a 4-GPU H200 host). ``None``: the GPU(s) the sweep itself sees.
    """
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        raise ConfigError(
            "--mps needs nvidia-cuda-mps-control (NVIDIA driver utilities) on PATH; "
            "install them or run without --mps"
        )
    with tempfile.TemporaryDirectory(prefix="lt-bench-mps-") as tmp:
        clients: dict[str | None, dict[str, str]] = {}
        started: list[dict[str, str]] = []
        try:
            for gpu in gpus:
                tag = "all" if gpu is None else gpu
                client = {
                    "CUDA_MPS_PIPE_DIRECTORY": str(Path(tmp, f"pipe-{tag}")),
                    "CUDA_MPS_LOG_DIRECTORY": str(Path(tmp, f"log-{tag}")),
                }
                for folder in client.values():
                    Path(folder).mkdir()
                daemon = {**os.environ, **client}
                if gpu is not None:
                    daemon["CUDA_VISIBLE_DEVICES"] = gpu
                subprocess.run([control, "-d"], env=daemon, check=True)
                started.append(daemon)
                clients[gpu] = client
            yield clients
        finally:
            for daemon in started:
                subprocess.run([control], input="quit\n", text=True, env=daemon, check=False)


def sweep(experiments: list[str], overrides: list[str], parallel: int = 1, mps: bool = False) -> list[Path]:
    """Run the grid with at most ``parallel`` processes (under CUDA MPS daemons when ``mps``);
    returns the records' paths."""
    gpus = visible_gpus()
    if not mps:
        return _sweep(experiments, overrides, parallel, gpus, {})
    with mps_daemons(gpus if len(gpus) > 1 else [None]) as clients:
        return _sweep(experiments, overrides, parallel, gpus, clients)


def _sweep(
    experiments: list[str],
    overrides: list[str],
    parallel: int,
    gpus: list[str],
    mps_clients: dict[str | None, dict[str, str]],
) -> list[Path]:
    grid = expand(experiments, overrides)
    configs = [compose(item) for item in grid]  # fail on a bad key before anything starts
    records = [Path(c.output_dir) / (c.run_id or default_run_id(c)) / RECORD_FILE for c in configs]
    todo = [(item, rec) for item, rec in zip(grid, records, strict=True) if not rec.exists()]
    print(f"sweep: {len(grid)} runs, {len(grid) - len(todo)} already complete, {len(todo)} to run")
    threads = max(1, (os.cpu_count() or 1) // max(parallel, 1))
    running: list[Running] = []
    failed: list[str] = []
    queue = list(todo)
    with StopRequests() as stop:
        while queue or running:
            if stop.received:
                _stop(running, stop.received, failed)
            if queue and len(running) < parallel:
                item, record = queue.pop(0)
                running.append(_start(item, record, gpus, running, mps_clients, threads))
                continue
            running = _reap(running, failed)
            time.sleep(1)
    if failed:
        raise ConfigError(f"{len(failed)} run(s) failed; see their logs: {', '.join(failed)}")
    return records


def _start(
    item: list[str],
    record: Path,
    gpus: list[str],
    running: list[Running],
    mps_clients: dict[str | None, dict[str, str]],
    threads: int,
) -> Running:
    """Start ``lt-bench run`` for one grid point on the least busy GPU, in its own session (so that a
    Ctrl-C reaches it only through the sweep, once)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    gpu = least_loaded(gpus, [r.gpu for r in running]) if len(gpus) > 1 else None
    if mps_clients:
        env.update(mps_clients[gpu], CUDA_VISIBLE_DEVICES="0")
    elif gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log = record.parent.with_name(record.parent.name + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lt_bench", "run", *item, "logger.progress_bar=false"]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    where = f" on GPU {gpu}" if gpu is not None else ""
    print(f"started {' '.join(item)}{where} (log {log})", flush=True)
    return Running(proc, record, log, gpu)


def _stop(running: list[Running], signal_name: str, failed: list[str]) -> NoReturn:
    """Pass the stop request on to the running runs once and wait for them (a second request passes
    on a second signal, which stops them at once); then say what became of each."""

    def signal_and_wait() -> None:
        for run in running:
            run.proc.send_signal(signal.SIGTERM)
        for run in running:
            run.proc.wait()

    try:
        signal_and_wait()
    except KeyboardInterrupt:
        signal_and_wait()
    finished = [r for r in running if r.record.exists()]
    resumable = [r for r in running if not r.record.exists() and (r.record.parent / "checkpoints").is_dir()]
    others = len(running) - len(finished) - len(resumable)
    earlier = f"; {len(failed)} earlier run(s) failed: {', '.join(failed)}" if failed else ""
    raise RunInterrupted(
        f"sweep stopped by {signal_name}: of the {len(running)} run(s) in progress {len(finished)} "
        f"finished, {len(resumable)} stopped with a checkpoint, {others} stopped before their first "
        f"checkpoint{earlier}; run the same command again to resume them and the rest of the grid"
    )


def visible_gpus() -> list[str]:
    """The GPUs a sweep may place runs on: the entries of its own ``CUDA_VISIBLE_DEVICES`` (so
    ``CUDA_VISIBLE_DEVICES=1,2 lt-bench sweep ...`` keeps to GPUs 1 and 2), else ``0 .. n-1``."""
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]


def least_loaded(gpus: list[str], busy: list[str | None]) -> str:
    """The GPU with the fewest running processes (the first such in ``gpus``)."""
    return min(gpus, key=busy.count)  # min keeps the first of equals


class Running(NamedTuple):
    proc: subprocess.Popen
    record: Path
    log: Path
    gpu: str | None


def _reap(running: list[Running], failed: list[str]) -> list[Running]:
    still = []
    for run in running:
        code = run.proc.poll()
        if code is None:
            still.append(run)
        elif code != 0 or not run.record.exists():
            failed.append(str(run.log))
        else:
            print(f"finished {run.record}", flush=True)
    return still
