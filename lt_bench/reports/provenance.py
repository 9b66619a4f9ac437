"""Where and with what a run ran: git commit, package versions, device; how long its process has run."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from lt_bench import __version__

PACKAGES = (
    "lt-bench",
    "torch",
    "torchvision",
    "lightning",
    "torchmetrics",
    "timm",
    "omegaconf",
    "numpy",
    "pandas",
)


def process_seconds() -> float | None:
    """Wall-clock seconds since this process started (Linux ``/proc``; ``None`` elsewhere): for a run
    started as ``lt-bench run``, its whole time with interpreter start-up, imports and data loading."""
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return None
    start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the parenthesised name
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def git_state(path: Path | None = None) -> dict[str, object]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout holding ``path``, or of
    ``LT_BENCH_GIT_COMMIT`` / ``LT_BENCH_GIT_DIRTY=1`` when the first is set."""
    cwd = path or Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    if os.environ.get("LT_BENCH_GIT_COMMIT"):
        # a copy of the checkout (e.g. on a remote GPU machine) names its commit here: its .git may
        # be missing or stale, so the variable wins over what git would say
        return {
            "commit": os.environ["LT_BENCH_GIT_COMMIT"],
            "dirty": os.environ.get("LT_BENCH_GIT_DIRTY") == "1",
        }
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = __version__ if name == "lt-bench" else None
    return versions


def device_name(accelerator: str) -> str:
    """The GPU's name when one is used, else the CPU's with its core count."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {os.cpu_count()} cores)"


#: the note on the first training segment of a checkpoint written before segments were recorded
UNRECORDED_SEGMENT = "trained before checkpoints recorded their commit and device"


def training_segment(accelerator: str, first_epoch: int) -> dict[str, object]:
    """One stretch of a run's training by one process: commit, device and epochs ``[first, end)``
    (``end`` advances with each checkpoint). A resumed run's record lists every stretch."""
    git = git_state()
    return {
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "device": device_name(accelerator),
        "epochs": [first_epoch, first_epoch],
    }


def checkpoint_segments(checkpoint: dict, next_epoch: int) -> list[dict[str, object]]:
    """The training segments a checkpoint's weights came from; one of unknown commit and device for a
    checkpoint written before they were recorded."""
    segments = checkpoint.get("training_segments")
    if segments:
        return [{**s, "epochs": list(s["epochs"])} for s in segments]
    unknown = {"git_commit": None, "git_dirty": None, "device": None, "epochs": [0, next_epoch]}
    return [{**unknown, "note": UNRECORDED_SEGMENT}]
