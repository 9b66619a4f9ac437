"""BatchFormer (methods.md §6) against its definition and direct transcriptions.

BT: one post-LN ``TransformerEncoderLayer(D, heads, D, 0.5)`` whose sequence is the batch
(``[N, 1, D]``, sequence first). Single-head host: ``F' = BT(F)``, loss = host loss on ``g([F'; F])``
with ``[y; y]``. Multi-expert host (sade, mdcs, tlc; §6.3): ``F'_k = BT(F_k)`` per expert with one
shared BT, ``L = w * L_host(g_k(F'_k)) + L_host(g_k(F_k))``. BT parameters in an SGD group with
``0.1 * lr``. Evaluation: the host's own outputs, BT unused, strictly per sample.
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
from lt_bench.data.profiles import class_counts
from lt_bench.errors import ConfigError
from lt_bench.methods.baselines import LDAMDRW, BalancedSoftmax
from lt_bench.methods.batchformer import (
    BatchFormer,
    BatchTransformer,
    MultiExpertBatchFormer,
    resolve_host_options,
    ride_heads,
)
from lt_bench.methods.mdcs import MDCS, cs_weight, mdcs_loss
from lt_bench.methods.sade import SADE, sade_expert_losses
from lt_bench.methods.tlc import TLC, aggregate_experts, engagement_weights, log_engagement_weights
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
    assert method.method_cfg.loss_scale == 3.0  # the official recipe's scale (next test)
    assert loss == pytest.approx(3.0 * ce_by_hand(logits, y2).item(), rel=1e-5)


@pytest.mark.parametrize("scale", [3.0, 1.0])
def test_official_three_term_loss_is_loss_scale_3(scale: float) -> None:
    """The official code sums the mean loss of each half and of the whole (§6.2 says 2x; it is 3x):
    ``method.loss_scale=3`` (the official recipe) is that sum, 1 the plain mean over both streams."""
    method = build(f"method.loss_scale={scale}").train()
    images, targets = batch(n=8)
    out = method(images)
    z, y = torch.cat([out["bt_logits"], out["logits"]]), torch.cat([targets, targets])
    host = BalancedSoftmax.compute_loss
    official = host(method, {"logits": z[:8]}, y[:8]) + host(method, {"logits": z[8:]}, y[8:])
    official = official + host(method, {"logits": z}, y)
    assert (scale / 3) * official.item() == pytest.approx(method.compute_loss(out, targets).item(), rel=1e-6)


def test_loss_scale_is_for_single_head_hosts_only() -> None:
    with pytest.raises(ConfigError, match="loss_scale"):
        build("method.loss_scale=0")
    with pytest.raises(ConfigError, match="loss_scale"):
        build_multi("sade", "method.loss_scale=3")


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
    assert main["initial_lr"] == 0.05 and bt["initial_lr"] == pytest.approx(0.005)
    for key in ("momentum", "weight_decay", "nesterov"):
        assert main[key] == bt[key]
    assert main["weight_decay"] == 5e-4 and main["momentum"] == 0.9
    # the schedule's factor (BALMS: up to x2 over 32 epochs, then cosine to 0 at epoch 520) scales both groups
    for epoch in range(520):
        if epoch in (0, 20, 31, 100, 519):
            assert main["lr"] == pytest.approx(0.05 * scheduler.lr_lambdas[0](epoch), abs=1e-12)
            assert bt["lr"] == pytest.approx(0.1 * main["lr"], abs=1e-12)
        optimizer.step()
        scheduler.step()
    assert main["lr"] == pytest.approx(0.0, abs=1e-12)


# --- configs and a few real training steps -----------------------------------------------------------
@pytest.mark.parametrize(
    ("dataset", "epochs", "warmup", "batches"), [("cifar10_lt", 520, 32, 24), ("cifar100_lt", 591, 37, 21)]
)
def test_experiments_compose(dataset: str, epochs: int, warmup: int, batches: int) -> None:
    """The official BALMS recipe (iterations turned into epochs as the official code does), the same
    recipe without BatchFormer, and BatchFormer on the LDAM-DRW recipe of the balanced_softmax row."""
    cfg = compose([f"experiment={dataset}/batchformer"])
    assert cfg.method.name == "batchformer" and cfg.method.host == "balanced_softmax"
    assert cfg.method.heads == 4 and cfg.method.dropout == 0.5 and cfg.method.lr_scale == 0.1
    method = resolve_host_options(OmegaConf.to_container(cfg.method))  # host options from its file
    assert method["tau"] == 1.0 and method["posthoc_tau"] == 0.0 and method["classifier"] == "linear"
    assert (cfg.data.batch_size, cfg.data.train_augment, cfg.data.autoaugment_fill) == (
        512,
        "crop_flip_autoaugment_cutout",
        128,
    )
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.05, 0.9, 5e-4)
    schedule = cfg.schedule
    assert (schedule.name, schedule.warmup_epochs, schedule.peak_factor) == ("balms_cosine", warmup, 2)
    assert (cfg.trainer.max_epochs, cfg.trainer.limit_train_batches) == (epochs, batches)
    plain = compose([f"experiment={dataset}/balanced_softmax_balms"])
    assert plain.method.name == "balanced_softmax" and plain.label == "balanced_softmax_balms"
    for key in ("dataset", "backbone", "data", "optim", "schedule", "trainer"):
        assert cfg[key] == plain[key], key
    ldam = compose([f"experiment={dataset}/batchformer_ldam"])
    bs = compose([f"experiment={dataset}/balanced_softmax"])
    assert cfg.method.loss_scale == 3.0 and ldam.method.loss_scale == 1.0 and ldam.label == "batchformer_ldam"
    assert {**ldam.method, "loss_scale": 3.0} == cfg.method
    for key in ("dataset", "backbone", "data", "optim", "schedule", "trainer"):
        assert ldam[key] == bs[key], key


@pytest.mark.parametrize(("dataset", "per_class"), [("cifar10_lt", 5000), ("cifar100_lt", 500)])
def test_balms_epoch_numbers_follow_the_official_derivation(dataset: str, per_class: int) -> None:
    """``run_networks.py``: num_epochs = ceil(13000 / len(loader)), warmup_epochs = ceil(800 / len(loader)),
    epoch_steps = int(N / 512), with len(loader) = ceil(N / 512) (no drop_last), N the training images."""
    cfg = compose([f"experiment={dataset}/batchformer"])
    classes = 10 if dataset == "cifar10_lt" else 100
    images = sum(class_counts(per_class, classes, cfg.dataset.imbalance_factor))
    loader = math.ceil(images / 512)
    official = (math.ceil(13000 / loader), math.ceil(800 / loader), images // 512)
    assert official == (cfg.trainer.max_epochs, cfg.schedule.warmup_epochs, cfg.trainer.limit_train_batches)


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


def test_bt_weight_is_for_multi_expert_hosts() -> None:
    with pytest.raises(ConfigError, match="bt_weight"):
        build("method.bt_weight=0.5")


# --- multi-expert hosts (§6.3): one shared BT on every expert's feature, two streams -------------------
HOSTS = {"sade": SADE, "mdcs": MDCS, "tlc": TLC}
#: narrow experts keep CPU tests fast (D = 16: 1 head by the RIDE rule)
NARROW = {"sade": "[8,16]", "mdcs": "[8,16]", "tlc": "[8,8,16]"}


def build_multi(host: str, *overrides: str, counts: list[int] = COUNTS):
    cfg = compose(
        [
            "experiment=cifar10_lt/batchformer_sade",
            f"method.host={host}",
            f"method.expert_widths={NARROW[host]}",
        ]
        + list(overrides)
    )
    torch.manual_seed(0)
    return METHODS.get("batchformer")(cfg=OmegaConf.to_container(cfg), train_counts=counts, in_channels=3)


def trunk_by_hand(method, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert features ``F_k`` ``[E, N, D]`` and ``F'_k = BT(F_k)`` with BT called once per expert."""
    trunk = method.trunk
    h = trunk.shared(images)
    feats = torch.stack([F.adaptive_avg_pool2d(expert(h), 1).flatten(1) for expert in trunk.experts])
    bt = torch.stack([method.batch_former.encoder(f[:, None, :])[:, 0, :] for f in feats])
    return feats, bt


def cosine_logits(method, feats: torch.Tensor) -> torch.Tensor:
    """``30 * normalize(F_k) @ normalize(W_k, dim=0)`` per expert, ``[E, N, C]``."""
    heads = method.trunk.heads
    return torch.stack(
        [
            30 * F.normalize(f, dim=1) @ F.normalize(head.weight, dim=0)
            for head, f in zip(heads, feats, strict=True)
        ]
    )


@pytest.mark.parametrize("host", HOSTS)
def test_multi_expert_host_is_subclassed_with_its_options(host: str) -> None:
    method = build_multi(host)
    assert isinstance(method, MultiExpertBatchFormer) and isinstance(method, HOSTS[host])
    assert not hasattr(method, "classifier")
    m = method.method_cfg
    assert m.num_experts == 3 and m.scale == 30.0 and m.bt_weight == 1.0
    assert {"sade": 2.0, "mdcs": None, "tlc": 0.54}[host] == m.get("tau")  # each host's own tau (or none)
    assert method.raw_train_batches == (host == "mdcs")
    layer = method.batch_former.encoder
    assert layer.self_attn.embed_dim == 16 and layer.linear1.out_features == 16
    assert {mod.p for mod in layer.modules() if isinstance(mod, torch.nn.Dropout)} == {0.5}


@pytest.mark.parametrize(
    ("experiment", "dim"), [("cifar10_lt/batchformer_sade", 64), ("cifar100_lt/batchformer_sade", 48)]
)
def test_expert_bt_takes_one_head_when_d_is_at_most_128(experiment: str, dim: int) -> None:
    assert [ride_heads(d) for d in (48, 64, 128, 256, 1536)] == [1, 1, 1, 4, 4]
    cfg = compose([f"experiment={experiment}"])
    assert cfg.method.heads == 4 and cfg.method.expert_heads is None
    method = METHODS.get("batchformer")(cfg=OmegaConf.to_container(cfg), train_counts=COUNTS)
    assert method.trunk.feature_dim == dim
    assert method.batch_former.encoder.self_attn.num_heads == 1
    override = compose([f"experiment={experiment}", "method.expert_heads=4"])
    method = METHODS.get("batchformer")(cfg=OmegaConf.to_container(override), train_counts=COUNTS)
    assert method.batch_former.encoder.self_attn.num_heads == 4


def test_bt_on_expert_sets_is_bt_on_each_expert() -> None:
    torch.manual_seed(0)
    bt = BatchTransformer(16, heads=1, dropout=0.0).train()
    sets = torch.randn(3, 6, 16)
    with torch.no_grad():
        one_call = bt(sets)
        per_expert = torch.stack([bt(s) for s in sets])
    torch.testing.assert_close(one_call, per_expert)
    changed = sets.clone()
    changed[1, 4] += 1.0  # expert 1's sample 4: only expert 1's outputs may move
    with torch.no_grad():
        out = bt(changed)
    torch.testing.assert_close(out[0], one_call[0])
    torch.testing.assert_close(out[2], one_call[2])
    assert not torch.allclose(out[1, 0], one_call[1, 0], atol=1e-4)


def freeze_batchnorm(method, images: torch.Tensor) -> None:
    """BatchNorm running statistics set to those of ``images``, then fixed (trunk in eval mode), so that
    only BT can mix samples and the features have the scale of training (the initial statistics
    give features of ~70, on which attention picks each sample itself)."""
    for module in method.trunk.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    with torch.no_grad():
        method.trunk.train()(images)
    method.trunk.eval()


@pytest.mark.parametrize("host", HOSTS)
def test_multi_expert_training_outputs_depend_on_the_batch_through_bt_only(host: str) -> None:
    method = build_multi(host, "method.dropout=0.0").train()
    images, _ = batch(n=6, size=8)
    freeze_batchnorm(method, images)
    changed = images.clone()
    changed[3] = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out, out_changed = method(images), method(changed)
    assert out["expert_logits"].shape == out["bt_expert_logits"].shape == (3, 6, len(COUNTS))
    assert out["bt_logits"].shape == (6, len(COUNTS))
    torch.testing.assert_close(out["expert_logits"][:, 0], out_changed["expert_logits"][:, 0])
    torch.testing.assert_close(out["logits"][0], out_changed["logits"][0])
    assert not torch.allclose(out["bt_expert_logits"][:, 0], out_changed["bt_expert_logits"][:, 0], atol=1e-4)
    assert not torch.allclose(out["bt_logits"][0], out_changed["bt_logits"][0], atol=1e-4)
    # the BT stream's trunk outputs by hand: F'_k = BT(F_k), logits g_k(F'_k)
    with torch.no_grad():
        feats, bt_feats = trunk_by_hand(method, images)
    torch.testing.assert_close(out["expert_features"], feats)
    torch.testing.assert_close(out["bt_expert_features"], bt_feats, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["bt_expert_logits"], cosine_logits(method, bt_feats), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("host", HOSTS)
def test_multi_expert_evaluation_is_per_sample_without_bt(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    method = build_multi(host).eval()
    images, targets = batch(n=4, size=8)

    def fail(*args, **kwargs):
        raise AssertionError("BT called")

    monkeypatch.setattr(method.batch_former, "forward", fail)
    with torch.no_grad():
        together = method(images)
        alone = [method(images[i : i + 1]) for i in range(4)]
        method.validation_step((images, targets), 0)
        method.on_test_epoch_start()
        method.test_step((images, targets), 0)
    assert not any(key.startswith("bt_") for key in together)
    for key in ("logits", "expert_logits"):
        dim = 0 if key == "logits" else 1
        torch.testing.assert_close(
            together[key], torch.cat([o[key] for o in alone], dim=dim), rtol=1e-5, atol=1e-5
        )
    method.train()
    with pytest.raises(AssertionError, match="BT called"):
        method(images)


def host_loss_by_hand(host: str, method, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The host loss of one stream's expert logits ``[E, N, C]`` from the hosts' loss functions."""
    m = method.method_cfg
    if host == "sade":
        return sade_expert_losses(logits, targets, method.class_prior, m.tau).sum()
    if host == "mdcs":
        return mdcs_loss(
            logits, targets, method.class_counts, m.lambdas, cs_weight(1, m.cs_weight, m.cs_warmup)
        )["loss"]
    w = engagement_weights(logits)
    outputs = {
        "expert_logits": logits,
        "engagement": w,
        "log_engagement": log_engagement_weights(logits),
        "batch_output": aggregate_experts(logits, w, m.eta, "batch"),
    }
    outputs["logits"] = aggregate_experts(logits, w, m.eta, "per_sample")
    return TLC.compute_loss(method, outputs, targets)


@pytest.mark.parametrize("host", HOSTS)
def test_multi_expert_loss_is_the_weighted_sum_of_both_streams(host: str) -> None:
    counts = [500, 50, 20, 5]
    method = build_multi(host, "method.dropout=0.0", "method.bt_weight=0.3", counts=counts).train()
    images, targets = batch(n=8, size=8)
    if host == "mdcs":  # weak views then strong views of the same 4 images, labels duplicated
        targets = torch.cat([targets[:4], targets[:4]])
    loss, terms = method.training_loss(images, targets)

    with torch.no_grad():
        feats, bt_feats = trunk_by_hand(method, images)
        plain = host_loss_by_hand(host, method, cosine_logits(method, feats), targets)
        bt = host_loss_by_hand(host, method, cosine_logits(method, bt_feats), targets)
    assert loss.item() == pytest.approx(0.3 * bt.item() + plain.item(), rel=1e-4)
    assert terms["loss_bt"].item() == pytest.approx(bt.item(), rel=1e-4)
    assert terms["loss_plain"].item() == pytest.approx(plain.item(), rel=1e-4)
    assert method.compute_loss(method(images), targets).item() == pytest.approx(loss.item(), rel=1e-5)
    method.eval()  # evaluation outputs: the host's loss on its own outputs
    with torch.no_grad():
        out = method(images)
    assert method.compute_loss(out, targets).item() == pytest.approx(
        HOSTS[host].compute_loss(method, out, targets).item(), rel=1e-6
    )


def test_mdcs_host_builds_its_views_and_keeps_its_epoch_state() -> None:
    method = build_multi("mdcs", "data.crop_padding=1", "data.cutout_size=2")
    images = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    views, labels = method.train_views(images, torch.tensor([0, 1, 2, 3]))
    assert views.shape == (8, 3, 8, 8) and labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    loss, terms = method.training_loss(views, labels)
    assert torch.isfinite(loss) and set(terms) == {"loss_bt", "loss_plain"}
    method.engine_epoch = 4
    method.on_train_epoch_start()  # the host's consistency weight, epoch 5 of a 20-epoch ramp
    assert method.cs_coef.item() == pytest.approx(0.6 * 5 / 20)
    assert method.step_variant() is None  # one captured step serves the whole ramp
    tlc = build_multi("tlc")
    tlc.engine_epoch = 7
    assert tlc.step_variant() is False  # TLC's variant: DRW on or off
    tlc.engine_epoch = 160
    assert tlc.step_variant() is True


@pytest.mark.parametrize("backbone_lr", [None, 0.01])
def test_multi_expert_bt_group_at_a_tenth_of_the_lr(backbone_lr: float | None) -> None:
    overrides = [] if backbone_lr is None else [f"method.backbone_lr={backbone_lr}"]
    method = build_multi("sade", *overrides)
    optimizer = method.configure_optimizers()["optimizer"]
    *host_groups, bt = optimizer.param_groups
    assert len(host_groups) == (1 if backbone_lr is None else 2)
    assert {id(p) for p in bt["params"]} == {id(p) for p in method.batch_former.parameters()}
    seen = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in method.parameters())
    assert bt["initial_lr"] == pytest.approx(0.1 * method.cfg.optim.lr) == pytest.approx(0.005)
    if backbone_lr is not None:
        assert host_groups[1]["initial_lr"] == backbone_lr


@pytest.mark.parametrize("dataset", ["cifar10_lt", "cifar100_lt"])
def test_sade_host_experiments_compose(dataset: str) -> None:
    cfg = compose([f"experiment={dataset}/batchformer_sade"])
    sade = compose([f"experiment={dataset}/sade"])
    assert cfg.method.name == "batchformer" and cfg.method.host == "sade" and cfg.method.bt_weight == 1.0
    for key in ("dataset", "backbone", "data", "optim", "schedule", "trainer"):
        assert cfg[key] == sade[key], key
    method = resolve_host_options(OmegaConf.to_container(cfg.method))
    host = OmegaConf.to_container(sade.method)
    assert {k: method[k] for k in host if k != "name"} == {k: v for k, v in host.items() if k != "name"}


@pytest.mark.slow
def test_multi_expert_training_steps_lower_the_loss() -> None:
    images, targets = learnable_data()
    images = F.avg_pool2d(images, 2)  # 8x8: three ResNet-32 expert branches stay fast on a CPU
    method = build_multi("sade")
    bt_before = [p.detach().clone() for p in method.batch_former.parameters()]
    losses = sgd_losses(method, images, targets)
    assert_loss_drops(losses)
    assert any(
        not torch.equal(a, b) for a, b in zip(bt_before, method.batch_former.parameters(), strict=True)
    )
