"""Config composition: recipes, ``extends``, group choices, dotted overrides, and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lt_bench.config import compose, config_dir, experiment_runs, list_experiments, list_group
from lt_bench.errors import ConfigError

CE = "experiment=cifar10_lt/ce"


def config_error(*overrides: str) -> str:
    """The message of the ConfigError that ``compose(overrides)`` raises; it must be one line."""
    with pytest.raises(ConfigError) as info:
        compose(list(overrides))
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


# --- recipes and composition ---------------------------------------------------------------------
def test_cifar10_ce_has_the_ldam_recipe() -> None:
    cfg = compose([CE])
    assert cfg.experiment == "cifar10_lt/ce"
    assert (cfg.dataset.name, cfg.method.name, cfg.backbone.name) == ("cifar10_lt", "ce", "resnet32")
    assert cfg.dataset.imbalance_factor == 100
    assert cfg.method.classifier == "linear"
    assert OmegaConf.to_container(cfg.optim) == {
        "name": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 2e-4,
        "nesterov": False,
    }
    assert cfg.schedule.name == "warmup_step"
    assert cfg.schedule.warmup_epochs == 5
    assert list(cfg.schedule.milestones) == [160, 180]
    assert cfg.schedule.gamma == 0.01
    assert (cfg.data.batch_size, cfg.data.eval_batch_size) == (128, 100)
    assert (cfg.data.train_augment, cfg.data.crop_padding) == ("crop_flip", 4)
    assert cfg.trainer.max_epochs == 200
    assert cfg.seed == 0 and cfg.evaluation.checkpoint == "last"


def test_ldam_drw_method_options() -> None:
    cfg = compose(["experiment=cifar10_lt/ldam_drw"])
    assert OmegaConf.to_container(cfg.method) == {
        "name": "ldam_drw",
        "classifier": "cosine",
        "max_m": 0.5,
        "s": 30.0,
        "drw_epoch": 160,
        "beta": 0.9999,
    }


def test_extends_chain_keeps_the_recipe() -> None:
    parent = OmegaConf.to_container(compose([CE]))
    child = OmegaConf.to_container(compose(["experiment=cifar10_lt_if50/ce"]))
    assert child["dataset"]["imbalance_factor"] == 50
    assert child["experiment"] == "cifar10_lt_if50/ce"
    # everything else is the parent's (which itself extends _recipes/ldam_cifar)
    for cfg in (parent, child):
        cfg.pop("experiment")
        cfg["dataset"].pop("imbalance_factor")
    assert child == parent


def test_fashion_mnist_recipe() -> None:
    cfg = compose(["experiment=fashion_mnist_lt/ce"])
    assert (cfg.dataset.name, cfg.backbone.name) == ("fashion_mnist_lt", "small_cnn")
    assert cfg.schedule.name == "cosine" and cfg.schedule.warmup_epochs == 1
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.trainer.max_epochs) == (0.05, 5e-4, 8)


def test_run_yaml_defaults_without_experiment() -> None:
    cfg = compose([])
    assert cfg.experiment is None
    assert (cfg.dataset.name, cfg.method.name, cfg.backbone.name) == ("cifar10_lt", "ce", "resnet32")


def test_group_choice_overrides_the_experiment() -> None:
    cfg = compose([CE, "method=balanced_softmax"])
    assert cfg.method.name == "balanced_softmax"
    assert (cfg.method.tau, cfg.method.posthoc_tau) == (1.0, 0.0)
    assert cfg.optim.lr == 0.1 and cfg.trainer.max_epochs == 200  # the recipe stays
    cfg = compose([CE, "backbone=small_cnn", "dataset=fashion_mnist_lt"])
    assert (cfg.backbone.name, cfg.dataset.name) == ("small_cnn", "fashion_mnist_lt")
    assert cfg.dataset.root is None  # the fashion_mnist_lt group file, not cifar10's


def test_order_of_arguments_does_not_matter_for_groups() -> None:
    assert compose(["method=ldam_drw", CE]) == compose([CE, "method=ldam_drw"])


@pytest.mark.parametrize(
    ("override", "key", "value", "kind"),
    [
        ("trainer.max_epochs=5", "trainer.max_epochs", 5, int),
        ("seed=3", "seed", 3, int),
        ("optim.lr=0.05", "optim.lr", 0.05, float),
        ("optim.nesterov=true", "optim.nesterov", True, bool),
        ("dataset.root=/data/x", "dataset.root", "/data/x", str),
        ("dataset.imbalance_factor=50", "dataset.imbalance_factor", 50, int),
        ("trainer.precision=bf16-mixed", "trainer.precision", "bf16-mixed", str),
        ("run_id=my-run", "run_id", "my-run", str),
    ],
)
def test_dotted_overrides_are_yaml_typed(override: str, key: str, value: object, kind: type) -> None:
    got = OmegaConf.select(compose([CE, override]), key)
    assert got == value and type(got) is kind


def test_list_override() -> None:
    cfg = compose([CE, "schedule.milestones=[10,20]"])
    assert list(cfg.schedule.milestones) == [10, 20]


def test_exponent_notation_is_a_number() -> None:
    cfg = compose([CE, "optim.lr=1e-3", "optim.weight_decay=5e-4"])
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (0.001, 0.0005)


def test_trainer_pass_through_accepts_lightning_arguments() -> None:
    cfg = compose([CE, "trainer.limit_train_batches=5", "trainer.gradient_clip_val=1.0"])
    assert cfg.trainer.limit_train_batches == 5
    assert cfg.trainer.gradient_clip_val == 1.0


def test_trainer_pass_through_rejects_unknown_argument() -> None:
    message = config_error(CE, "trainer.limit_train_batchez=5")
    assert "trainer.limit_train_batchez" in message
    assert "limit_train_batches" in message and "max_epochs" in message


# --- errors --------------------------------------------------------------------------------------
def test_unknown_key_names_the_valid_keys() -> None:
    message = config_error(CE, "optim.lrr=1")
    assert "optim.lrr" in message
    for key in ("optim.lr", "optim.momentum", "optim.weight_decay", "optim.nesterov"):
        assert key in message


def test_unknown_top_level_key_names_the_valid_keys() -> None:
    message = config_error(CE, "sead=1")
    assert "sead" in message and "seed" in message and "optim" in message


def test_unknown_method_key() -> None:
    message = config_error(CE, "method.tau=2")  # tau belongs to balanced_softmax, not ce
    assert "method.tau" in message and "method.classifier" in message


def test_unknown_section_names_the_valid_sections() -> None:
    message = config_error(CE, "optimm.lr=0.1")
    assert "optim" in message.replace("optimm", "") and "trainer" in message


@pytest.mark.parametrize(
    ("override", "valid"),
    [
        ("method=nope", ["ce", "balanced_softmax", "ldam_drw"]),
        ("dataset=nope", ["cifar10_lt", "cifar100_lt", "fashion_mnist_lt"]),
        ("backbone=nope", ["resnet32", "small_cnn"]),
        ("experiment=nope/ce", ["cifar10_lt/ce", "cifar10_lt_if50/ldam_drw", "quickstart"]),
    ],
)
def test_unknown_name_lists_valid_names(override: str, valid: list[str]) -> None:
    message = config_error(override) if override.startswith("experiment") else config_error(CE, override)
    assert "nope" in message
    for name in valid:
        assert name in message


@pytest.mark.parametrize(
    "override",
    [
        "trainer.max_epochs=abc",
        "trainer.max_epochs=-1",
        "trainer.max_epochs=0",
        "trainer.max_epochs=2.5",
        "data.batch_size=0",
        "data.eval_batch_size=-3",
        "optim.lr=abc",
        "optim.nesterov=3",
        "dataset.imbalance_factor=0.5",
        "train.compile=reduce-overhead",  # builds CUDA graphs of its own inside the engine's capture
    ],
)
def test_wrong_type_or_value(override: str) -> None:
    message = config_error(CE, override)
    assert override.split("=")[0] in message


def test_section_cannot_be_replaced_by_a_scalar() -> None:
    config_error(CE, "optim=1")


def test_argument_without_equals_sign() -> None:
    message = config_error(CE, "trainer.max_epochs")
    assert "key=value" in message


def test_extends_cycle_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "configs"
    shutil.copytree(config_dir(), root)
    (root / "experiment" / "loop_a.yaml").write_text("extends: loop_b\n")
    (root / "experiment" / "loop_b.yaml").write_text("extends: loop_a\n")
    monkeypatch.setenv("LT_BENCH_CONFIG_DIR", str(root))
    message = config_error("experiment=loop_a")
    assert "loop_a" in message and "loop_b" in message


def test_experiment_unknown_group_in_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "configs"
    shutil.copytree(config_dir(), root)
    (root / "experiment" / "bad.yaml").write_text("defaults:\n  optimizer: adam\n")
    monkeypatch.setenv("LT_BENCH_CONFIG_DIR", str(root))
    message = config_error("experiment=bad")
    assert "optimizer" in message and "method" in message


# --- every experiment --------------------------------------------------------------------------------
def test_list_experiments_and_groups() -> None:
    experiments = list_experiments()
    assert {"cifar10_lt/ce", "cifar10_lt_if50/ce", "cifar100_lt/ldam_drw", "quickstart"} <= set(experiments)
    assert experiments == sorted(experiments)
    assert {"ce", "balanced_softmax", "ldam_drw"} <= set(list_group("method"))
    assert {"cifar10_lt", "fashion_mnist_lt"} <= set(list_group("dataset"))


def test_list_experiments_hides_private_recipes() -> None:
    assert not [name for name in list_experiments() if any(part.startswith("_") for part in name.split("/"))]


@pytest.mark.parametrize("experiment", list_experiments())
def test_every_experiment_composes(experiment: str) -> None:
    cfg = compose([f"experiment={experiment}"])
    assert cfg.experiment == experiment
    assert cfg.trainer.max_epochs > 0 and cfg.data.batch_size > 0


def test_quickstart_suite_runs() -> None:
    assert experiment_runs("quickstart") == [["method=ce"], ["method=balanced_softmax"]]
    assert experiment_runs("cifar10_lt/ce") == []
    cfg = compose(["experiment=quickstart", "method=balanced_softmax"])
    assert (cfg.dataset.name, cfg.method.name, cfg.output_dir) == (
        "fashion_mnist_lt",
        "balanced_softmax",
        "runs/quickstart",
    )


def test_unreadable_value_is_one_line() -> None:
    message = config_error(CE, "schedule.milestones=[1,")
    assert "[1," in message and "quote" in message


def test_bool_for_a_number_says_number() -> None:
    message = config_error(CE, "data.batch_size=true")
    assert "true or false" not in message and "number" in message


def test_keys_added_later_keep_earlier_run_ids_at_their_neutral_value() -> None:
    """A run id's hash ignores a ``HASH_NEUTRAL`` key at its neutral value (the config of a version
    without the key hashes the same), and changes with any other value."""
    from lt_bench.runner import HASH_NEUTRAL, config_hash

    cfg = compose(["experiment=cifar10_lt/tlc", "seed=1"])
    older = OmegaConf.to_container(cfg)
    del older["evaluation"]["test_curve"], older["method"]["engagement_loss"], older["train"]["compile"]
    assert set(HASH_NEUTRAL) == {"evaluation.test_curve", "method.engagement_loss", "train.compile"}
    assert config_hash(cfg) == config_hash(OmegaConf.create(older))
    for override in (
        "evaluation.test_curve=true",
        "method.engagement_loss=masked_plus_mean",
        "train.compile=default",
    ):
        assert config_hash(compose(["experiment=cifar10_lt/tlc", "seed=1", override])) != config_hash(cfg)
    bf = compose(["experiment=cifar10_lt/batchformer"])  # a host key left null is neutral too
    older = OmegaConf.to_container(bf)
    del older["evaluation"]["test_curve"], older["method"]["engagement_loss"], older["train"]["compile"]
    assert config_hash(bf) == config_hash(OmegaConf.create(older))
