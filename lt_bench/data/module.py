"""The Lightning data module shared by every method.

In-memory datasets yield uint8 ``[B, H, W, C]`` batches; ``on_after_batch_transfer`` augments (train)
or only normalises (evaluation) them on the model's device with ``lt_bench.data.augment``. Image-file
datasets decode and transform each image in loader workers with torchvision.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from torchvision import transforms as T

from lt_bench.data.augment import BatchAugment, to_normalized_nchw
from lt_bench.data.base import ArraySplit, FileSplit, Split
from lt_bench.data.images import FileImageDataset


class ArrayDataset(Dataset):
    """Index access to an ``ArraySplit``; ``__getitems__`` fetches a whole batch in one slice.

    With ``with_indices`` a batch also carries the sample indices (training batches do: methods
    that keep per-sample state, e.g. SBCL's subclass labels, read them).
    """

    def __init__(self, split: ArraySplit, with_indices: bool = False) -> None:
        self.images = torch.from_numpy(split.images)
        self.targets = torch.from_numpy(split.targets)
        self.with_indices = with_indices

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        item = (self.images[index], self.targets[index])
        return (*item, torch.as_tensor(index)) if self.with_indices else item

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices)
        batch = (self.images[idx], self.targets[idx])
        return (*batch, idx) if self.with_indices else batch


class IndexedFiles(FileImageDataset):
    """A ``FileImageDataset`` whose items are ``(image, label, index)``."""

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        return (*super().__getitem__(index), index)


class EpochSeededSampler(DistributedSampler):
    """torch's ``DistributedSampler`` whose ``set_epoch`` also reseeds ``generator`` from (seed, epoch).

    The training DataLoader takes ``generator`` for its workers' base seed, so the loader draws nothing
    from the global generator (augmentation and dropout streams stay the engine-independent ones of
    ``BaseMethod.on_train_epoch_start``) and an epoch's worker seeds do not depend on earlier epochs.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas, rank, shuffle=True, seed=seed)
        self.generator = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)


def _keep_batch(batch: Any) -> Any:
    return batch


def file_transforms(train: bool, size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """The standard ImageNet-style pipeline: RandomResizedCrop + flip, or Resize + CenterCrop."""
    if train:
        ops = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        ops = [T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size)]
    return T.Compose([*ops, T.ToTensor(), T.Normalize(mean, std)])


class LTDataModule(L.LightningDataModule):
    """Train / val / test loaders for one ``LTDataset``; ``test_sets`` are evaluated in order.

    The samplers are chosen here, not by Lightning (``use_distributed_sampler=False``): training
    shuffles with a permutation seeded by ``seed + epoch`` (torch's ``DistributedSampler``, also for
    one process), so a resumed run sees the same order; evaluation splits the data between
    processes without padding duplicates, so metrics equal a single process's.
    """

    def __init__(
        self,
        train: Split,
        val: Split | None,
        test_sets: dict[str, Split],
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        eval_batch_size: int,
        augment: BatchAugment | None = None,
        image_size: int = 224,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        """``augment``: the training augmentation of in-memory batches (a run's
        ``BatchAugment.from_config``); None: crop + flip with ``mean`` / ``std``."""
        super().__init__()
        self.train, self.val, self.test_sets = train, val, test_sets
        self.mean, self.std = list(mean), list(std)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.image_size, self.num_workers, self.seed = image_size, num_workers, seed
        self.augment = augment or BatchAugment("crop_flip", mean, std)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, ArraySplit)

    def _loader(self, split: Split, train: bool) -> DataLoader:
        if isinstance(split, ArraySplit):
            dataset: Dataset = ArrayDataset(split, with_indices=train)
            kwargs: dict[str, Any] = {"collate_fn": _keep_batch}
        else:
            assert isinstance(split, FileSplit)
            files = IndexedFiles if train else FileImageDataset
            dataset = files(split, self._file_transform(train))
            kwargs = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
        sampler = self._sampler(dataset, train)
        return DataLoader(
            dataset,
            batch_size=self._train_batch_size() if train else self.eval_batch_size,
            sampler=sampler,
            generator=getattr(sampler, "generator", None),
            drop_last=False,
            pin_memory=torch.cuda.is_available(),
            **kwargs,
        )

    def _train_batch_size(self) -> int:
        """``data.batch_size``, or the method's batch size for this epoch (``train_batch_size``)."""
        method = self.trainer.lightning_module if self.trainer is not None else None
        return method.train_batch_size(self.batch_size) if method is not None else self.batch_size

    def _file_transform(self, train: bool) -> Any:
        """The method's own training transform when it has one (e.g. MDCS's two views), else the standard."""
        method = self.trainer.lightning_module if train and self.trainer is not None else None
        custom = method.file_train_transform(self.image_size, self.mean, self.std) if method else None
        return custom or file_transforms(train, self.image_size, self.mean, self.std)

    def _sampler(self, dataset: Dataset, train: bool) -> Sampler:
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if train:
            return EpochSeededSampler(dataset, replicas, rank, seed=self.seed)
        if replicas > 1:
            return UnrepeatedDistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=False)
        return torch.utils.data.SequentialSampler(dataset)

    def eval_chunks(
        self, split: Split, start: int, stop: int, device: torch.device
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Images ``start:stop`` of an evaluation split, in order, ``eval_batch_size`` at a time, as
        normalised NCHW float images and targets on ``device`` (for evaluations that need whole blocks
        of consecutive images, e.g. TLC's batch-normalised aggregation)."""
        if isinstance(split, ArraySplit):
            for low in range(start, stop, self.eval_batch_size):
                high = min(low + self.eval_batch_size, stop)
                images = torch.from_numpy(split.images[low:high]).to(device)
                yield (
                    to_normalized_nchw(images, self.mean, self.std),
                    torch.from_numpy(split.targets[low:high]).to(device),
                )
            return
        files = Subset(FileImageDataset(split, self._file_transform(train=False)), range(start, stop))
        for images, targets in DataLoader(
            files, batch_size=self.eval_batch_size, num_workers=self.num_workers
        ):
            yield images.to(device), targets.to(device)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val, train=False) if self.val is not None else []

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(split, train=False) for split in self.test_sets.values()]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, *rest = batch  # training batches: (images, targets, indices); evaluation: (images, targets)
        if images.dtype != torch.uint8:
            return batch
        if self.trainer is not None and self.trainer.training:
            if getattr(self.trainer.lightning_module, "raw_train_batches", False):
                return batch  # the method builds its own views (e.g. MDCS)
            return (self.augment(images), *rest)
        return (to_normalized_nchw(images, self.mean, self.std), *rest)
