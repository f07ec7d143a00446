"""Every config file loads, names its own loss, and passes the training checks."""

import importlib
import pathlib
import subprocess
import sys

import pytest

from faceloss_jax import models, train
from faceloss_jax.train_lib import cli, objectives

REPO = pathlib.Path(__file__).resolve().parents[1]
LOSS_CONFIGS = sorted(
    p.stem for p in (REPO / "configs").glob("*.py") if p.stem not in ("__init__", "default")
)
REQUIRED = (
    "seed",
    "batch_size",
    "num_train_steps",
    "model",
    "loss",
    "optimizer",
    "dataset",
    "checkpoint_every_steps",
    "eval_every_steps",
)


def test_there_is_one_config_per_loss():
    assert LOSS_CONFIGS == sorted(objectives.OBJECTIVES)


@pytest.mark.parametrize("variant", ["mnist", "face", "face,image_folder", "face,source=recordio"])
@pytest.mark.parametrize("name", ["default", *LOSS_CONFIGS])
def test_config_loads_and_is_consistent(name, variant):
    config = importlib.import_module(f"configs.{name}").get_config(variant)
    for field in REQUIRED:
        assert field in config, field
    assert config.loss.name == ("softmax" if name == "default" else name)
    train.check_config(config, num_devices=1)
    models.create_model(config.model)  # every model key is valid
    assert config.dataset.name == {"mnist": "mnist", "face": "synthetic"}.get(
        variant, variant.rpartition("=")[2].rpartition(",")[2]
    )
    assert config.eval.flip == (variant != "mnist")


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown config variant 'faces'.*source=<name>.*recordio"):
        importlib.import_module("configs.arcface").get_config("faces")


def test_unknown_key_error_lists_the_valid_keys():
    config = importlib.import_module("configs.arcface").get_config()
    assert cli.unknown_key_error(config, "loss.margin") is None
    message = cli.unknown_key_error(config, "loss.margn")
    assert message.startswith("unknown config key 'loss.margn': config.loss has no field 'margn'")
    assert (
        "Valid keys of config.loss: chunk_size, class_sharded, easy_margin, margin, name, "
        "sample_rate, scale, straight_through" in message
    )
    assert "config has no field 'los'" in cli.unknown_key_error(config, "los.margin")
    assert "(none: a leaf)" in cli.unknown_key_error(config, "seed.x")


@pytest.mark.slow  # 4–6 s of an idle 2-core run (--durations, 2026-12-05)
def test_command_line_rejects_an_unknown_key(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "faceloss_jax.main",
            "--config=configs/arcface.py",
            f"--workdir={tmp_path}",
            "--config.loss.margn=0.4",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "unknown config key 'loss.margn'" in result.stderr
    assert "Valid keys of config.loss:" in result.stderr
    assert "Traceback" not in result.stderr
