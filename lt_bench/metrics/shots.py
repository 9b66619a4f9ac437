"""Many / medium / few shot groups from training class counts (methods.md §0.2, metrics.md §2.1).

The de facto standard (Decoupling, SADE, MDCS): many ``n_c > 100``, medium ``20 <= n_c <= 100``,
few ``n_c < 20``, where ``n_c`` counts *training* images of class c.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MANY_THRESHOLD = 100
FEW_THRESHOLD = 20


def shot_groups(
    train_counts: Sequence[int] | np.ndarray,
    many: int = MANY_THRESHOLD,
    few: int = FEW_THRESHOLD,
) -> dict[str, list[int]]:
    """Class indices in each group: ``{"many": [...], "medium": [...], "few": [...]}``."""
    counts = np.asarray(train_counts)
    return {
        "many": np.flatnonzero(counts > many).tolist(),
        "medium": np.flatnonzero((counts >= few) & (counts <= many)).tolist(),
        "few": np.flatnonzero(counts < few).tolist(),
    }
