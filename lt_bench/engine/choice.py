"""Which engine trains a run (``train.engine``) and on which device."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from lt_bench.data.base import ArraySplit, Split
from lt_bench.errors import ConfigError

#: ``trainer.precision`` values the fast engine implements (bf16-mixed: autocast around the loss)
FAST_PRECISIONS = ("32", "32-true", "bf16-mixed")


def fast_engine_obstacles(cfg: DictConfig, train: Split) -> list[str]:
    """Why the fast engine cannot run this config (empty when it can), each with its fix."""
    trainer = cfg.trainer
    obstacles = []
    if not isinstance(train, ArraySplit):
        obstacles.append("the dataset is read from image files (the fast engine needs an in-memory dataset)")
    if str(trainer.get("devices", 1)) not in ("1", "[0]") or int(trainer.get("num_nodes", 1)) != 1:
        obstacles.append("trainer.devices/num_nodes ask for several processes (set trainer.devices=1)")
    if str(trainer.get("precision", "32-true")) not in FAST_PRECISIONS:
        obstacles.append(
            f"trainer.precision={trainer.precision} (the fast engine trains in {', '.join(FAST_PRECISIONS)})"
        )
    if cfg.evaluation.checkpoint != "last" or cfg.evaluation.val_every_n_epochs:
        obstacles.append("validation during training (evaluation.checkpoint=last, val_every_n_epochs=0)")
    if trainer.get("accumulate_grad_batches", 1) != 1 or trainer.get("gradient_clip_val"):
        obstacles.append("gradient accumulation or clipping (a Lightning feature)")
    return obstacles


def fast_engine_device(cfg: DictConfig) -> torch.device:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if accelerator in ("gpu", "cuda"):
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use trainer.accelerator=cpu"
        )
    return torch.device("cpu")


def choose_engine(cfg: DictConfig, train: Split) -> str:
    """``fast`` or ``lightning``: ``auto`` takes fast on a GPU when nothing stands in its way."""
    wanted = cfg.train.engine
    obstacles = fast_engine_obstacles(cfg, train)
    # fast-engine options: auto picks fast on a CPU too
    for option, what in (
        ("evaluation.test_curve", "a fast-engine diagnostic"),
        ("train.compile", "a fast-engine option"),
    ):
        value = OmegaConf.select(cfg, option)
        if value in (None, False):
            continue
        blocking = ["train.engine=lightning"] if wanted == "lightning" else obstacles
        if blocking:
            shown = str(value).lower() if isinstance(value, bool) else value
            raise ConfigError(
                f"{option}={shown} is {what} and this run cannot use the fast engine "
                f"({'; '.join(blocking)}); drop {option} or remove what blocks it"
            )
        return "fast"
    if wanted == "lightning":
        return "lightning"
    if wanted == "fast":
        if obstacles:
            raise ConfigError(
                "train.engine=fast cannot run this config: "
                + "; ".join(obstacles)
                + "; or use train.engine=lightning"
            )
        return "fast"
    return "fast" if not obstacles and fast_engine_device(cfg).type == "cuda" else "lightning"
