"""BatchFormer (methods.md §6) against its definition and direct transcriptions.

BT: one post-LN ``TransformerEncoderLayer(D, heads, D, 0.5)`` whose sequence is the batch
(``[N, 1, D]``, sequence first). Training: ``F' = BT(F)``, loss = host loss on ``g([F'; F])`` with
``[y; y]``; BT parameters in an SGD group with ``0.1 * lr``. Evaluation: ``g(F)``, BT unused.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from training_steps import assert_loss_drops, learnable_data, sgd_losses

import lt_bench.methods.batchformer  # noqa: F401  (registers "batchformer")
from lt_bench.config import compose
from lt_bench.errors import ConfigError
from lt_bench.methods.baselines import LDAMDRW, BalancedSoftmax
from lt_bench.methods.batchformer import BatchFormer, BatchTransformer
from lt_bench.registry import METHODS

COUNTS = [40, 12, 8, 4]


def build(*overrides: str, counts: list[int] = COUNTS, backbone: str = "small_cnn"):
    cfg = compose(["experiment=cifar10_lt/batchformer", f"backbone={backbone}", *overrides])
    torch.manual_seed(0)
    return METHODS.get("batchformer")(cfg=OmegaConf.to_container(cfg), train_counts=counts, in_channels=3)


def batch(n: int = 8, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % len(COUNTS)


def ce_by_hand(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(logits.double().log_softmax(dim=1).gather(1, targets[:, None]).mean())


# --- the module: the batch is the sequence ------------------------------------------------------------
def test_bt_mixes_samples_and_the_wrong_axis_does_not() -> None:
    torch.manual_seed(0)
    bt = BatchTransformer(16, heads=4, dropout=0.0).train()
    features = torch.randn(6, 16)
    changed = features.clone()
    changed[3] += 1.0
    with torch.no_grad():
        out, out_changed = bt(features), bt(changed)
        # sample 0's output depends on sample 3: every sample attends to the whole batch
        assert out.shape == (6, 16)
        assert not torch.allclose(out[0], out_changed[0], atol=1e-4)
        # the same layer fed [1, N, D] sequence-first (issue #21's mistake): N sequences of length 1,
        # each sample on its own
        wrong, wrong_changed = bt.encoder(features[None])[0], bt.encoder(changed[None])[0]
        torch.testing.assert_close(wrong[:3], wrong_changed[:3])
        torch.testing.assert_close(wrong[4:], wrong_changed[4:])
        # and the per-sample layer equals itself applied to each sample alone
        alone = torch.cat([bt.encoder(f[None, None])[0] for f in features])
        torch.testing.assert_close(wrong, alone)


def test_bt_layer_settings_on_resnet32() -> None:
    method = build(backbone="resnet32")
    layer = method.batch_former.encoder
    assert method.backbone.feature_dim == 64
    assert layer.self_attn.embed_dim == 64 and layer.self_attn.num_heads == 4
    assert not layer.self_attn.batch_first and not layer.norm_first
    assert layer.linear1.out_features == 64  # dim_feedforward = D
    assert {m.p for m in layer.modules() if isinstance(m, torch.nn.Dropout)} == {0.5}
    assert layer.activation_relu_or_gelu == 1  # ReLU


def test_heads_must_divide_the_feature_dim() -> None:
    assert build("method.heads=1").batch_former.encoder.self_attn.num_heads == 1
    with pytest.raises(ConfigError, match="heads=3"):
        build("method.heads=3")


# --- the method: host reuse, training vs evaluation -------------------------------------------------
@pytest.mark.parametrize(("host", "host_cls"), [("balanced_softmax", BalancedSoftmax), ("ldam_drw", LDAMDRW)])
def test_method_subclasses_the_host_and_takes_its_options(host: str, host_cls: type) -> None:
    method = build(f"method.host={host}")
    assert isinstance(method, BatchFormer) and isinstance(method, host_cls)
    assert method.method_cfg.name == "batchformer"
    if host == "ldam_drw":  # options missing or null in batchformer.yaml come from ldam_drw.yaml
        assert method.method_cfg.classifier == "cosine" and method.method_cfg.s == 30.0
        assert method.method_cfg.max_m == 0.5 and method.method_cfg.drw_epoch == 160
    else:
        assert method.method_cfg.classifier == "linear" and method.method_cfg.tau == 1.0


class Headless(BalancedSoftmax):
    """A stand-in multi-expert host: no single ``classifier``."""

    def build_model(self) -> None:
        self.backbone = self.build_backbone()
        self.experts = torch.nn.ModuleList([torch.nn.Linear(self.backbone.feature_dim, self.num_classes)])


def test_unusable_hosts_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="single-head"):
        build("method.host=batchformer")
    with pytest.raises(ConfigError, match="unknown method"):
        build("method.host=nope")
    monkeypatch.setitem(METHODS._entries, "headless_test", Headless)
    monkeypatch.setitem(METHODS._meta, "headless_test", {})
    with pytest.raises(ConfigError, match="no classifier"):
        build("method.host=headless_test")


def test_evaluation_is_per_sample() -> None:
    method = build().eval()
    images, _ = batch(n=6)
    with torch.no_grad():
        together = method(images)
        alone = torch.cat([method(images[i : i + 1])["logits"] for i in range(6)])
    assert set(together) == {"logits", "features"}
    assert together["logits"].shape == (6, len(COUNTS))
    torch.testing.assert_close(together["logits"], alone, rtol=1e-5, atol=1e-5)


def test_training_outputs_depend_on_the_batch_through_bt_only() -> None:
    method = build("method.dropout=0.0").train()
    method.backbone.eval()  # freeze BatchNorm statistics: only BT can mix samples
    images, _ = batch(n=6)
    changed = images.clone()
    changed[3] = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out, out_changed = method(images), method(changed)
    assert out["logits"].shape == out["bt_logits"].shape == (6, len(COUNTS))
    torch.testing.assert_close(out["logits"][0], out_changed["logits"][0])  # g(F): per sample
    assert not torch.allclose(out["bt_logits"][0], out_changed["bt_logits"][0], atol=1e-4)  # g(BT(F))


def test_bt_is_not_used_in_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    method = build()
    images, targets = batch(n=4)

    def fail(*args, **kwargs):
        raise AssertionError("BT called")

    monkeypatch.setattr(method.batch_former, "forward", fail)
    method.eval()
    with torch.no_grad():
        method.validation_step((images, targets), 0)
        method.test_step((images, targets), 0)
        method(images)
    method.train()
    with pytest.raises(AssertionError, match="BT called"):
        method(images)


# --- loss ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["balanced_softmax", "ce", "ldam_drw"])
def test_loss_is_the_host_loss_on_both_streams(host: str) -> None:
    counts = [500, 50, 20, 5]
    method = build(f"method.host={host}", counts=counts).train()
    images, targets = batch(n=8)
    torch.manual_seed(1)  # the same dropout masks in both computations
    loss = method.compute_loss(method(images), targets).item()

    torch.manual_seed(1)
    with torch.no_grad():
        feats = method.backbone(images)
        bt_feats = method.batch_former.encoder(feats[:, None, :])[:, 0, :]
        both, y2 = torch.cat([bt_feats, feats]), torch.cat([targets, targets])
        head = method.classifier
        if host == "ldam_drw":  # s * cos - s * m_y on the true class (methods.md §0.5)
            raw = torch.tensor([n**-0.25 for n in counts])
            margins = 0.5 * raw / raw.max()
            logits = 30 * F.normalize(both, dim=1) @ F.normalize(head.weight, dim=0)
            logits = logits - 30 * margins[y2, None] * F.one_hot(y2, len(counts))
        else:
            logits = both @ head.weight.T + head.bias
        if host == "balanced_softmax":
            logits = logits + torch.tensor([math.log(n / sum(counts)) for n in counts])
    assert loss == pytest.approx(ce_by_hand(logits, y2).item(), rel=1e-5)


def test_official_three_term_loss_is_three_times_ours() -> None:
    """The official code sums the mean loss of each half and of the whole (§6.2 says 2x; it is 3x)."""
    method = build().train()
    images, targets = batch(n=8)
    out = method(images)
    z, y = torch.cat([out["bt_logits"], out["logits"]]), torch.cat([targets, targets])
    host = BalancedSoftmax.compute_loss
    official = host(method, {"logits": z[:8]}, y[:8]) + host(method, {"logits": z[8:]}, y[8:])
    official = official + host(method, {"logits": z}, y)
    assert official.item() == pytest.approx(3 * method.compute_loss(out, targets).item(), rel=1e-6)


def test_eval_outputs_take_the_plain_host_loss() -> None:
    method = build().eval()
    images, targets = batch(n=4)
    with torch.no_grad():
        out = method(images)
    expected = BalancedSoftmax.compute_loss(method, out, targets)
    assert method.compute_loss(out, targets).item() == pytest.approx(expected.item())


# --- optimizer -------------------------------------------------------------------------------------
def test_bt_has_its_own_group_at_a_tenth_of_the_lr() -> None:
    method = build()
    optimizers = method.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    main, bt = optimizer.param_groups
    assert {id(p) for p in bt["params"]} == {id(p) for p in method.batch_former.parameters()}
    assert {id(p) for p in main["params"]} | {id(p) for p in bt["params"]} == {
        id(p) for p in method.parameters()
    }
    assert not {id(p) for p in main["params"]} & {id(p) for p in bt["params"]}
    assert main["initial_lr"] == 0.1 and bt["initial_lr"] == pytest.approx(0.01)
    for key in ("momentum", "weight_decay", "nesterov"):
        assert main[key] == bt[key]
    assert main["weight_decay"] == 2e-4 and main["momentum"] == 0.9
    # the schedule's factor (warm-up over 5 epochs, x0.01 at 160) scales both groups
    for epoch in range(170):
        if epoch in (0, 4, 100, 165):
            assert main["lr"] == pytest.approx(0.1 * scheduler.lr_lambdas[0](epoch))
            assert bt["lr"] == pytest.approx(0.1 * main["lr"])
        optimizer.step()
        scheduler.step()


# --- configs and a few real training steps -----------------------------------------------------------
@pytest.mark.parametrize("dataset", ["cifar10_lt", "cifar100_lt"])
def test_experiments_compose(dataset: str) -> None:
    cfg = compose([f"experiment={dataset}/batchformer"])
    bs = compose([f"experiment={dataset}/balanced_softmax"])
    assert cfg.method.name == "batchformer" and cfg.method.host == "balanced_softmax"
    assert cfg.method.heads == 4 and cfg.method.dropout == 0.5 and cfg.method.lr_scale == 0.1
    assert cfg.method.tau == 1.0 and cfg.method.posthoc_tau == 0.0
    # the same recipe as the balanced_softmax row
    for key in ("dataset", "backbone", "data", "optim", "schedule", "trainer"):
        assert cfg[key] == bs[key], key


@pytest.mark.slow
def test_training_steps_lower_the_loss() -> None:
    images, targets = learnable_data()
    method = build()
    bt_before = [p.detach().clone() for p in method.batch_former.parameters()]
    losses = sgd_losses(method, images, targets)
    assert_loss_drops(losses)
    assert any(
        not torch.equal(a, b) for a, b in zip(bt_before, method.batch_former.parameters(), strict=True)
    )
