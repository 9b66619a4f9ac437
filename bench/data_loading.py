"""Time loading CIFAR-10 from the JPEG folder: a cold decode into the cache, then cached loads.

    python bench/data_loading.py ../shared/data/cifar10-jpg

Uses a fresh temporary cache folder, so the first load always decodes. Prints one Markdown row.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def main(root: str) -> None:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["LT_BENCH_CACHE"] = cache
        from lt_bench.data.cifar import CIFAR10_CLASSES, load_folder

        times = []
        for _ in range(3):
            start = time.perf_counter()
            train, test, _ = load_folder(Path(root), CIFAR10_CLASSES, 10)
            times.append(time.perf_counter() - start)
    print("| images | cold decode (s) | cached load, best of 2 (s) | cpus |")
    print("|---:|---:|---:|---:|")
    print(f"| {len(train) + len(test):,} | {times[0]:.1f} | {min(times[1:]):.2f} | {os.cpu_count()} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cifar10-jpg")
