"""Backbones (images -> pooled features with a ``feature_dim``) and classifier heads.

Importing this package registers the built-in backbones in ``lt_bench.registry.BACKBONES``.
"""

from lt_bench.models import resnet_cifar, small_cnn, timm_backbones
from lt_bench.models.classifiers import NormedLinear, make_classifier
from lt_bench.models.resnet_cifar import ResNetCifar, make_stage
from lt_bench.models.small_cnn import SmallCNN

__all__ = [
    "NormedLinear",
    "ResNetCifar",
    "SmallCNN",
    "make_classifier",
    "make_stage",
    "resnet_cifar",
    "small_cnn",
    "timm_backbones",
]
