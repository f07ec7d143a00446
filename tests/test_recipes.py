"""arcface_torch's dataset recipes (``configs/recipes/``): each one's numbers are
arcface_torch's, derived as ``train_v2.py`` derives them, and each builds through the
command-line path."""

import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

from faceloss_jax import data, models, train
from faceloss_jax.train_lib import cli, reporting

REPO = pathlib.Path(__file__).resolve().parents[1]
RECIPES = sorted(
    p.stem
    for p in (REPO / "configs/recipes").glob("*.py")
    if p.stem not in ("__init__", "arcface_torch")
)

# arcface_torch's configs/<name>.py, copied by hand (per-GPU batch_size, lr, weight_decay,
# margin_list, sample_rate, num_image, num_epoch, warmup_epoch, network) and the GPUs of
# the published run (its README: "Training on Single-Host GPU" = 8, the 16gpus config 16,
# the onegpu config 1).
ARCFACE, COSFACE = (1.0, 0.5, 0.0), (1.0, 0.0, 0.4)
MS1MV2, MS1MV3, GLINT = 5822653, 5179510, 17091657
WF4M, WF12M, WF42M = 4235242, 12720066, 42474557
# name: (network, margin_list, batch_size, gpus, lr, weight_decay, sample_rate,
#        num_image, num_epoch, warmup_epoch)
ARCFACE_TORCH = {
    "ms1mv2_mbf": ("mbf", ARCFACE, 128, 8, 0.1, 1e-4, 1.0, MS1MV2, 40, 0),
    "ms1mv2_r50": ("r50", ARCFACE, 128, 8, 0.1, 5e-4, 1.0, MS1MV2, 20, 0),
    "ms1mv2_r100": ("r100", ARCFACE, 128, 8, 0.1, 5e-4, 1.0, MS1MV2, 20, 0),
    "ms1mv3_mbf": ("mbf", ARCFACE, 128, 8, 0.1, 1e-4, 1.0, MS1MV3, 40, 0),
    "ms1mv3_r50": ("r50", ARCFACE, 128, 8, 0.1, 5e-4, 1.0, MS1MV3, 20, 0),
    "ms1mv3_r100": ("r100", ARCFACE, 128, 8, 0.1, 5e-4, 1.0, MS1MV3, 20, 0),
    "ms1mv3_r50_onegpu": ("r50", ARCFACE, 128, 1, 0.02, 5e-4, 1.0, MS1MV3, 20, 0),
    "glint360k_mbf": ("mbf", COSFACE, 128, 8, 0.1, 1e-4, 1.0, GLINT, 20, 0),
    "glint360k_r50": ("r50", COSFACE, 128, 8, 0.1, 1e-4, 1.0, GLINT, 20, 0),
    "glint360k_r100": ("r100", COSFACE, 128, 8, 0.1, 1e-4, 1.0, GLINT, 20, 0),
    "wf4m_r100": ("r100", COSFACE, 128, 8, 0.1, 5e-4, 1.0, WF4M, 20, 0),
    "wf12m_r100": ("r100", COSFACE, 128, 8, 0.1, 5e-4, 1.0, WF12M, 20, 0),
    "wf12m_pfc02_r100": ("r100", COSFACE, 128, 8, 0.1, 5e-4, 0.2, WF12M, 20, 0),
    "wf42m_pfc02_r100": ("r100", COSFACE, 128, 8, 0.1, 5e-4, 0.2, WF42M, 20, 0),
    "wf42m_pfc02_16gpus_r100": ("r100", COSFACE, 256, 16, 0.3, 5e-4, 0.2, WF42M, 20, 1),
}
BACKBONES = {"mbf": "mobilefacenet", "r50": "iresnet50", "r100": "iresnet100"}


def _arcface_torch_steps(batch_size, world_size, num_image, num_epoch, warmup_epoch):
    """train_v2.py: ``total_batch_size = batch_size * world_size``, ``warmup_step =
    num_image // total_batch_size * warmup_epoch``, ``total_step = num_image //
    total_batch_size * num_epoch``."""
    total_batch_size = batch_size * world_size
    warmup_step = num_image // total_batch_size * warmup_epoch
    total_step = num_image // total_batch_size * num_epoch
    return total_batch_size, warmup_step, total_step


def test_every_recipe_has_its_reference():
    assert RECIPES == sorted(ARCFACE_TORCH)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_arcface_torchs(name):
    network, margins, batch, gpus, lr, wd, rate, images, epochs, warmup = ARCFACE_TORCH[name]
    config = importlib.import_module(f"configs.recipes.{name}").get_config()
    total_batch_size, warmup_step, total_step = _arcface_torch_steps(
        batch, gpus, images, epochs, warmup
    )
    assert config.batch_size == total_batch_size  # ours is global
    assert config.num_train_steps == total_step
    assert config.optimizer.warmup_steps == warmup_step
    assert (config.recipe.devices, config.recipe.per_device_batch) == (gpus, batch)
    assert config.model.name == BACKBONES[network] and config.model.embedding_dim == 512
    optimizer = config.optimizer
    assert (optimizer.name, optimizer.learning_rate, optimizer.weight_decay) == ("sgd", lr, wd)
    assert (optimizer.momentum, optimizer.decay_all, optimizer.grad_clip_norm) == (0.9, True, 5.0)
    assert (optimizer.clip_scope, optimizer.schedule, optimizer.power) == (
        "backbone",
        "polynomial",
        1.0,
    )
    assert optimizer.grad_accum_reduction == "sum"
    loss = config.loss
    assert loss.scale == 64.0 and loss.sample_rate == rate
    if margins == ARCFACE:
        assert (loss.name, loss.margin, loss.straight_through) == ("arcface", 0.5, True)
    else:
        assert (loss.name, loss.margin) == ("cosface", 0.4)
    assert config.half_precision and config.dataset.normalization == "arcface_torch"
    assert config.dataset.name == "recordio"


@pytest.mark.parametrize(
    ("variant", "batch", "steps", "warmup"),
    [
        ("gpus=1", 256, 42474557 // 256 * 20, 42474557 // 256),
        ("gpus=8,per_device_batch=64", 512, 42474557 // 512 * 20, 42474557 // 512),
        # gradient_acc leaves arcface_torch's step counts (micro-batches) unchanged; the
        # last partial accumulation is dropped.
        ("gpus=16,grad_accum=3", 4096, 42474557 // 4096 * 20 // 3 * 3, 42474557 // 4096),
    ],
)
def test_variant_rederives_the_steps(variant, batch, steps, warmup):
    config = importlib.import_module("configs.recipes.wf42m_pfc02_16gpus_r100").get_config(variant)
    assert (config.batch_size, config.num_train_steps, config.optimizer.warmup_steps) == (
        batch,
        steps,
        warmup,
    )


def test_a_bad_variant_is_one_clear_error():
    module = importlib.import_module("configs.recipes.ms1mv2_r50")
    with pytest.raises(cli.ConfigError, match=r"unknown recipe variant 'gpu=8'.*gpus=N"):
        module.get_config("gpu=8")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return data.write_insightface_folder(
        tmp_path_factory.mktemp("faces"),
        num_identities=8,
        images_per_identity=2,
        held_out_identities=4,
        num_pairs=20,  # ≥ the recipes' 10 folds
        image_size=16,
    )


def tiny_overrides(folder: pathlib.Path) -> list[str]:
    """What shrinks a recipe to seconds of CPU: the data, the backbone, the steps."""
    return [
        f"--config.dataset.path={folder}",
        "--config.dataset.image_size=16",
        "--config.model.name=iresnet18",
        "--config.model.embedding_dim=16",
        "--config.batch_size=8",
        "--config.num_train_steps=2",
        "--config.optimizer.warmup_steps=1",  # must stay < num_train_steps
        "--config.eval.batch_size=16",
        "--config.half_precision=False",
    ]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds_through_the_command_line(name, folder):
    """The command-line path (locked config, overrides) builds a config that passes the
    training checks on the generated folder, with the recipe's own backbone."""
    args = [f"--config=configs/recipes/{name}.py", *tiny_overrides(folder)]
    config = cli.config_from_command_line(args)
    train.check_config(config, num_devices=8, num_classes=data.num_classes(config.dataset))
    recipe = importlib.import_module(f"configs.recipes.{name}").get_config()
    models.create_model(recipe.model)
    assert config.loss.to_dict() == recipe.loss.to_dict()
    assert config.recipe.to_dict() == recipe.recipe.to_dict()


# -- The README's commands and --describe ---------------------------------------------

_README_COMMAND = re.compile(
    r"python -m faceloss_jax\.main (--config=configs/recipes/\S+) \\\n\s+"
    r"(--config\.dataset\.path=\S+) (--workdir=\S+)"
)


def readme_commands() -> list[tuple[str, str, str]]:
    """``(--config=…, --config.dataset.path=…, --workdir=…)`` of each recipe command in
    the README's "Training on MS1MV2 / Glint360K / WebFace"."""
    return _README_COMMAND.findall((REPO / "README.md").read_text(encoding="utf-8"))


def test_the_readme_shows_the_recipe_commands():
    shown = {spec.removeprefix("--config=configs/recipes/") for spec, _, _ in readme_commands()}
    assert {"ms1mv2_r50.py", "glint360k_r100.py", "wf42m_pfc02_16gpus_r100.py"} <= shown
    assert {"ms1mv3_r50_onegpu.py"} <= shown
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for name in RECIPES:  # the table lists every recipe
        assert f"| `{name}` |" in text


def _run_main(*args: str, cwd: pathlib.Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.run(
        [sys.executable, "-m", "faceloss_jax.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.mark.slow  # iResNet-18 compiles per command: ~1 minute each on 2 cores
@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: c[0].rpartition("/")[2])
def test_readme_recipe_command_runs(command, folder, tmp_path):
    """The README's command, the folder and workdir replaced, with tiny overrides."""
    spec, _, _ = command
    result = _run_main(spec, f"--workdir={tmp_path / 'run'}", *tiny_overrides(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Results in {tmp_path / 'run'}" in result.stdout
    assert "plan: 16 images of 8 identities (recordio, " in result.stdout
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()


def test_describe_lists_the_run_knobs_and_the_derivation():
    result = _run_main("--config=configs/recipes/wf42m_pfc02_16gpus_r100.py", "--describe")
    assert result.returncode == 0, result.stderr[-2000:]
    config = importlib.import_module("configs.recipes.wf42m_pfc02_16gpus_r100").get_config()
    lines = result.stdout.splitlines()
    described = dict(
        line.strip().split(" = ", 1) for line in lines if line.startswith("  ") and " = " in line
    )
    for key, _ in cli.RUN_KNOBS:
        value = config
        for part in key.split("."):
            value = value[part]
        assert described[key].startswith(repr(value)), (key, described[key])
    assert described["num_train_steps"].startswith("207380 ")
    assert described["optimizer.warmup_steps"].startswith("10369 ")
    assert described["dataset.image_size"].startswith("112 ")
    assert "  note: optimizer.warmup_steps (10369) must be < num_train_steps (207380)" in (
        result.stdout
    )
    assert "recipe: arcface_torch/configs/wf42m_pfc02_16gpus_r100.py" in lines
    assert "  global batch 4096 = 256 per device × 16 devices" in lines
    assert "  steps per epoch 10369 = 42474557 images // 4096" in lines
    assert "  num_train_steps 207380 = 10369 × 20 epochs; warmup_steps 10369 = 10369 × 1" in (
        result.stdout
    )
    assert "loss 'cosface'" in result.stdout  # the loss's knobs come first


def test_the_plan_of_a_recipe_on_its_published_machine():
    config = importlib.import_module("configs.recipes.ms1mv2_r50").get_config()
    config.dataset.path = "/data/faces_emore"
    plan = reporting.format_plan(
        config, num_images=5822653, num_classes=85742, num_devices=8, num_processes=1
    ).splitlines()
    assert plan == [
        "plan: 5,822,653 images of 85,742 identities (recordio, /data/faces_emore)",
        "  batch 1,024 global = 128 per device × 8 device(s), 1 process(es); "
        "1 micro-batch(es) per update",
        "  5,686 steps per epoch; 113,720 steps (20.00 epochs), 0 of warmup",
        "  precision: bfloat16 backbone, float32 head, loss and master weights",
        "  head: W 512 × 85,742, replicated, Partial FC rate 1.0: 167.5 MiB a device, "
        "334.9 MiB with the optimizer's 1 moment(s)",
    ]
