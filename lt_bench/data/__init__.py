"""Long-tailed datasets: imbalance profiles, dataset loaders, splits and Lightning data modules."""

from lt_bench.data.base import ArraySplit, FileSplit, LTDataset, Split

__all__ = ["ArraySplit", "FileSplit", "LTDataset", "Split"]
