"""Backbones and classifier heads: shapes, parameter counts, option-A shortcut, init, registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lt_bench.errors import ConfigError
from lt_bench.models.classifiers import NormedLinear, make_classifier
from lt_bench.models.resnet_cifar import BasicBlock, ResNetCifar, shortcut_a
from lt_bench.models.small_cnn import SmallCNN
from lt_bench.registry import BACKBONES


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv3x3_params(cin: int, cout: int) -> int:
    return 9 * cin * cout  # no bias


def block_params(cin: int, cout: int) -> int:
    """Two 3x3 convs + two BatchNorms (weight and bias per channel); option A adds nothing."""
    return conv3x3_params(cin, cout) + 2 * cout + conv3x3_params(cout, cout) + 2 * cout


def resnet32_params_by_hand(num_classes: int) -> int:
    stem = conv3x3_params(3, 16) + 2 * 16
    stage1 = 5 * block_params(16, 16)
    stage2 = block_params(16, 32) + 4 * block_params(32, 32)
    stage3 = block_params(32, 64) + 4 * block_params(64, 64)
    fc = 64 * num_classes + num_classes
    return stem + stage1 + stage2 + stage3 + fc


@pytest.mark.parametrize(("num_classes", "expected"), [(10, 464_154), (100, 470_004)])
def test_resnet32_parameter_count(num_classes: int, expected: int) -> None:
    assert resnet32_params_by_hand(num_classes) == expected
    model = nn.Sequential(ResNetCifar(), nn.Linear(64, num_classes))
    assert n_params(model) == expected


@pytest.mark.parametrize(("size", "in_channels"), [(32, 3), (28, 1)])
def test_resnet32_output_shape(size: int, in_channels: int) -> None:
    model = BACKBONES.get("resnet32")(in_channels=in_channels)
    assert model.feature_dim == 64
    assert model(torch.randn(2, in_channels, size, size)).shape == (2, 64)


def test_resnet32_reduced_widths_and_shared_parts() -> None:
    model = ResNetCifar(widths=(16, 24, 48))
    assert model.feature_dim == 48
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 48)
    trunk = nn.Sequential(model.stem, model.layer1)
    assert trunk(torch.randn(2, 3, 32, 32)).shape == (2, 16, 32, 32)
    with pytest.raises(ConfigError, match="3 entries"):
        ResNetCifar(widths=(16, 32))


def test_shortcut_a_subsamples_and_zero_pads_channels() -> None:
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    out = shortcut_a(x, out_channels=4, stride=2)
    assert out.shape == (1, 4, 2, 2)
    # channel 0 and 3 are zero padding; channels 1, 2 are the input at even rows/columns
    assert torch.equal(out[0, 0], torch.zeros(2, 2))
    assert torch.equal(out[0, 1], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))
    assert torch.equal(out[0, 2], torch.tensor([[16.0, 18.0], [24.0, 26.0]]))
    assert torch.equal(out[0, 3], torch.zeros(2, 2))
    # odd channel difference (16 -> 24 is even; 3 -> 6 is odd): floor in front, rest at the back
    odd = shortcut_a(torch.ones(1, 3, 2, 2), out_channels=6, stride=1)
    assert odd[0, :, 0, 0].tolist() == [0, 1, 1, 1, 0, 0]


def test_stride2_block_is_shortcut_plus_residual() -> None:
    torch.manual_seed(0)
    block = BasicBlock(16, 32, stride=2).eval()
    assert list(block.shortcut.parameters()) == [] and list(block.shortcut.buffers()) == []
    x = torch.randn(2, 16, 8, 8)
    residual = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
    shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
    torch.testing.assert_close(block(x), F.relu(residual + shortcut))
    # with the residual branch silenced, the block output is exactly relu(shortcut)
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    assert torch.equal(block(x), F.relu(shortcut))


def test_kaiming_normal_fan_in_init() -> None:
    torch.manual_seed(0)
    conv = ResNetCifar().layer3[1].conv1  # 64 -> 64, 3x3: fan_in = 576, 36,864 weights
    expected = math.sqrt(2.0 / (64 * 9))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.03)
    assert abs(conv.weight.mean().item()) < 0.05 * expected


def test_normed_linear_matches_direct_formula() -> None:
    torch.manual_seed(0)
    head = NormedLinear(64, 10)
    assert head.weight.shape == (64, 10)
    x = torch.randn(5, 64)
    expected = F.normalize(x) @ F.normalize(head.weight, dim=0)
    logits = head(x)
    torch.testing.assert_close(logits, expected)
    assert logits.abs().max().item() <= 1.0 + 1e-6


def test_make_classifier_kinds_and_errors() -> None:
    linear = make_classifier("linear", 64, 10)
    assert isinstance(linear, nn.Linear) and linear.weight.shape == (10, 64)
    cosine = make_classifier("cosine", 64, 10, scale=30.0)
    x = torch.randn(3, 64)
    torch.testing.assert_close(cosine(x), 30.0 * (F.normalize(x) @ F.normalize(cosine.weight, dim=0)))
    with pytest.raises(ConfigError, match="linear, cosine"):
        make_classifier("mlp", 64, 10)
    with pytest.raises(ConfigError, match="only applies to kind 'cosine'"):
        make_classifier("linear", 64, 10, scale=30.0)


@pytest.mark.parametrize("size", [28, 32])
def test_small_cnn_shapes(size: int) -> None:
    model = BACKBONES.get("small_cnn")(in_channels=1)
    assert isinstance(model, SmallCNN) and model.feature_dim == 128
    out = model(torch.randn(4, 1, size, size))
    assert out.shape == (4, 128)
    out.sum().backward()


def test_registry_finds_backbones() -> None:
    for name in ("resnet32", "small_cnn", "resnet50", "resnext50_32x4d", "resnet152", "timm"):
        assert name in BACKBONES
    with pytest.raises(ConfigError, match="resnet32"):
        BACKBONES.get("resnet33")


def test_timm_resnet50_features() -> None:
    model = BACKBONES.get("resnet50")().eval()
    assert model.feature_dim == 2048
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


def test_timm_pretrained_path(tmp_path) -> None:
    factory = BACKBONES.get("timm")
    source = factory(model_name="resnet18")
    state = dict(source.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)

    loaded = factory(model_name="resnet18", pretrained_path=str(path))
    torch.testing.assert_close(loaded.conv1.weight, source.conv1.weight)

    del state["conv1.weight"]
    torch.save(state, path)
    with pytest.raises(ConfigError, match="missing keys.*conv1.weight"):
        factory(model_name="resnet18", pretrained_path=str(path))
    with pytest.raises(ConfigError, match="does not exist.*never downloads"):
        factory(model_name="resnet18", pretrained_path=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="unknown timm model"):
        factory(model_name="resnet_nonexistent")
