"""Methods, each a ``BaseMethod`` subclass registered under a short name.

Importing this package registers the built-in methods in ``lt_bench.registry.METHODS``.
"""

from lt_bench.methods import baselines, batchformer, car, concutmix, mdcs, sade, sbcl, tlc
from lt_bench.methods.base import BaseMethod

__all__ = ["BaseMethod", "baselines", "batchformer", "car", "concutmix", "mdcs", "sade", "sbcl", "tlc"]
