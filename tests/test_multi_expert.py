"""The multi-expert trunk (lt_bench.models.multi_expert): stage split, widths, parameter sharing.

RIDE/SADE/MDCS (methods.md §3.1, §4.1): ResNet-32 with a shared stem + layer1 and per-expert
layer2/layer3 at widths 24/48; TLC (§2.1): only the stem shared; ResNet-50/ResNeXt-50: shared through
layer2, per-expert layer3/layer4 at planes 192/384 (1536-d features). Heads: NormedLinear x 30.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lt_bench.errors import ConfigError
from lt_bench.models.classifiers import NormedLinear
from lt_bench.models.multi_expert import MultiExpertNet, build_multi_expert


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cifar_trunk(**kwargs) -> MultiExpertNet:
    torch.manual_seed(0)
    return build_multi_expert({"name": "resnet32"}, 3, 10, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "shared_stages", "widths"),
    [
        ({"shared_until": "layer1", "expert_widths": [24, 48]}, 2, (24, 48)),  # SADE / MDCS
        ({"shared_until": "layer1", "expert_widths": None}, 2, (32, 64)),  # SADE CIFAR-10
        ({"shared_until": "stem", "expert_widths": []}, 1, (16, 32, 64)),  # TLC
    ],
)
def test_cifar_split_and_parameter_sharing(kwargs, shared_stages: int, widths: tuple[int, ...]) -> None:
    trunk = cifar_trunk(num_experts=3, **kwargs)
    assert len(trunk.shared) == shared_stages and trunk.num_experts == 3
    for expert in trunk.experts:
        assert [stage[-1].conv2.out_channels for stage in expert] == list(widths)
    assert trunk.feature_dim == widths[-1]
    # shared parameters appear once: total = shared + E x (expert stages + head)
    per_expert = count(trunk.experts[0]) + count(trunk.heads[0])
    assert count(trunk) == count(trunk.shared) + 3 * per_expert
    shared_ids = {id(p) for p in trunk.shared.parameters()}
    for expert in trunk.experts:
        assert shared_ids.isdisjoint(id(p) for p in expert.parameters())
    assert len({id(p) for p in trunk.parameters()}) == len(list(trunk.parameters()))


def test_sade_cifar100_trunk_size() -> None:
    """Stem + layer1 at 16 channels, three experts of layer2/layer3 at 24/48, heads 48 x 100."""
    trunk = build_multi_expert({"name": "resnet32"}, 3, 100, expert_widths=[24, 48])
    assert count(trunk.shared) == 23_824
    assert count(trunk.heads[0]) == 48 * 100
    assert count(trunk) == 783_856


def test_forward_runs_the_shared_part_once_for_all_experts() -> None:
    trunk = cifar_trunk(expert_widths=[24, 48]).eval()
    calls = {"shared": 0, "experts": [0, 0, 0]}
    trunk.shared.register_forward_hook(lambda *_: calls.__setitem__("shared", calls["shared"] + 1))
    shared_inputs = []
    for k, expert in enumerate(trunk.experts):
        expert.register_forward_hook(lambda *_, k=k: calls["experts"].__setitem__(k, calls["experts"][k] + 1))
        expert.register_forward_pre_hook(lambda _, args: shared_inputs.append(args[0]))
    with torch.no_grad():
        out = trunk(torch.randn(5, 3, 32, 32))
    assert calls == {"shared": 1, "experts": [1, 1, 1]}
    # every expert reads the very same shared feature map
    assert all(x is shared_inputs[0] for x in shared_inputs)
    assert out["expert_features"].shape == (3, 5, 48)
    assert out["expert_logits"].shape == (3, 5, 10)
    assert out["expert_logits"].abs().max().item() <= 30.0 + 1e-4  # scaled cosines


def test_heads_are_cosine_classifiers_of_each_expert() -> None:
    trunk = cifar_trunk(expert_widths=[24, 48], scale=30.0).eval()
    assert all(isinstance(h, NormedLinear) and h.scale == 30.0 for h in trunk.heads)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = trunk(x)
        h = trunk.shared(x)
        for k in range(3):
            f = trunk.experts[k](h).mean(dim=(2, 3))
            torch.testing.assert_close(out["expert_features"][k], f)
            cos = nn.functional.normalize(f, dim=1) @ nn.functional.normalize(trunk.heads[k].weight, dim=0)
            torch.testing.assert_close(out["expert_logits"][k], 30.0 * cos)
    # independently initialised experts
    assert not torch.equal(trunk.experts[0][0][0].conv1.weight, trunk.experts[1][0][0].conv1.weight)


def test_timm_resnet50_shared_through_layer2_reduced_widths() -> None:
    torch.manual_seed(0)
    trunk = build_multi_expert(
        {"name": "resnet50", "pretrained_path": None},
        3,
        7,
        num_experts=3,
        shared_until="layer2",
        expert_widths=[192, 384],
    ).eval()
    assert trunk.feature_dim == 1536  # 384 planes x bottleneck expansion 4
    assert len(trunk.shared) == 3 and len(trunk.experts[0]) == 2  # stem, layer1, layer2 | layer3, layer4
    per_expert = count(trunk.experts[0]) + count(trunk.heads[0])
    assert count(trunk) == count(trunk.shared) + 3 * per_expert
    with torch.no_grad():
        out = trunk(torch.randn(2, 3, 64, 64))
    assert out["expert_logits"].shape == (3, 2, 7)
    assert out["expert_features"].shape == (3, 2, 1536)


@pytest.mark.parametrize(
    ("backbone", "kwargs", "message"),
    [
        ("resnet32", {"shared_until": "layer3"}, "shared_until"),
        ("resnet32", {"shared_until": "layer4"}, "shared_until"),
        ("resnet32", {"expert_widths": [24, 48, 96]}, "expert_widths"),
        ("resnet32", {"num_experts": 0}, "num_experts"),
        ("small_cnn", {}, "multi-expert trunks support"),
    ],
)
def test_invalid_trunks_are_config_errors(backbone: str, kwargs, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_multi_expert({"name": backbone}, 3, 10, **kwargs)
