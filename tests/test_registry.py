"""The registries: a loss or a data source is one record, checked from the record, and
every config starts through the command line's own locked-config path."""

import ast
import dataclasses
import importlib
import inspect
import io
import json
import math
import pathlib
import subprocess
import sys
import tokenize

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import NUM_CLASSES, TinyNet, tiny_config

from configs import default
from faceloss_jax import data, losses, train
from faceloss_jax.errors import ConfigError
from faceloss_jax.losses import hyperparameters as hp
from faceloss_jax.train_lib import cli, objectives, run_state

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem not in ("__init__",))


# -- A new loss is one function and one record --------------------------------------


def toy_margin(embeddings, weights, labels, *, scale=16.0, margin=0.2, **layout):
    """A CosFace written on the public engine, as a newcomer would."""
    return losses.margin_softmax(
        embeddings, weights, labels, scale=scale, margin_fn=lambda cos: cos - margin, **layout
    )


@pytest.fixture
def tiny_net(monkeypatch):
    monkeypatch.setattr(
        run_state, "training_model", lambda config: TinyNet(config.model.embedding_dim)
    )


@pytest.fixture
def toy_loss():
    objectives.register(
        "toy_margin",
        objectives.Objective(
            toy_margin,
            "a test's own loss",
            {"scale": hp.positive(), "margin": hp.real(low=0.0, high=1.0)},
        ),
    )
    yield
    del objectives.OBJECTIVES["toy_margin"]


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
@pytest.mark.parametrize("class_sharded", [False, True])
def test_a_registered_loss_trains_by_name_in_every_layout(
    toy_loss, tiny_net, tmp_path, class_sharded
):
    config = tiny_config("cosface")
    config.dataset.num_identities = 24  # 3 classes a device: a chunk of 2 and a remainder
    config.loss = default.loss_config("toy_margin", margin=0.3)
    config.loss.update(chunk_size=2, class_sharded=class_sharded)
    config.num_train_steps = 2
    config.eval_every_steps = 2
    metrics = train.train_and_evaluate(config, str(tmp_path))
    assert 0.0 <= metrics["verification_accuracy"] <= 1.0
    records = [
        json.loads(line)
        for line in (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert np.isfinite([r["loss"] for r in records if r["split"] == "train"]).all()

    # The objective is the loss function with the config's values.
    x = jax.random.normal(jax.random.key(0), (6, config.model.embedding_dim))
    head, state = objectives.init_head(
        config.loss, jax.random.key(1), embedding_dim=x.shape[1], num_classes=NUM_CLASSES
    )
    y = np.arange(6) % NUM_CLASSES
    value, _ = objectives.compute_loss(config.loss, head, state, x, y, step=0)
    expected = losses.cosface(x, head["weights"], y, scale=16.0, margin=0.3).mean()
    # The same float32 operations on the same inputs (the objective adds the mean): equal
    # to the last bit here; rtol 1e-6 (17·u) allows the mean of 6 losses summed in
    # another order (6·u) and is far below another margin or scale (O(1e-1)).
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        objectives.register("arcface", objectives.OBJECTIVES["arcface"])


def test_aliases_select_the_record():
    assert objectives.get("combined_margin") is objectives.OBJECTIVES["combined"]
    assert objectives.canonical_name("large_margin_softmax") == "lsoftmax"


def test_every_record_is_consistent_with_its_config_file():
    """Each config names its own record and sets every hyper-parameter; the names in the
    records' hyper-parameters that reach the function are its keyword arguments."""
    for name, objective in objectives.OBJECTIVES.items():
        config = importlib.import_module(f"configs.{name}").get_config()
        assert config.loss.name == name
        objectives.check_loss_config(config.loss)
        assert set(objective.hyperparameters) <= set(config.loss)


def _config_overrides(name: str) -> dict[str, str]:
    """The hyper-parameters that ``configs/<name>.py`` passes to ``default.loss_config``,
    each with the comments on its lines."""
    source = (REPO / "configs" / f"{name}.py").read_text(encoding="utf-8")
    comments = {
        token.start[0]: token.string
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "loss_config":
            return {
                keyword.arg: " ".join(
                    comments.get(line, "") for line in range(keyword.lineno, keyword.end_lineno + 1)
                ).strip()
                for keyword in node.keywords
            }
    return {}


@pytest.mark.parametrize("name", list(objectives.OBJECTIVES))
def test_record_function_and_config_agree_on_every_default(name):
    """A default is declared once: a record's defaults are its functions' and a config
    file sets a knob only to override it, with a comment that says why."""
    objective = objectives.OBJECTIVES[name]
    for key, spec in objective.hyperparameters.items():
        if spec.argument or spec.read_by is not None:
            signature = inspect.signature(spec.read_by or objective.fn).parameters
            assert spec.default == signature[spec.parameter or key].default, key
    overrides = _config_overrides(name)
    module = importlib.import_module(f"configs.{name}")
    variants = [module.get_config(v).loss for v in ("mnist", "face")]
    for key, spec in objective.hyperparameters.items():
        for loss in variants:
            assert loss[key] == spec.default or key in overrides, (
                f"configs/{name}.py sets loss.{key} = {loss[key]!r} (default {spec.default!r}) "
                "outside its loss_config call"
            )
    for key, comment in overrides.items():
        assert comment, f"configs/{name}.py overrides loss.{key} without a comment saying why"
        spec = objective.hyperparameters[key]
        assert any(loss[key] != spec.default for loss in variants), (
            f"configs/{name}.py repeats the default of loss.{key} ({spec.default!r})"
        )


# -- Hyper-parameters are checked from the record -----------------------------------


def _out_of_range(spec: hp.HyperParameter):
    """A value of the knob's type that its range rejects, or None (booleans)."""
    default = spec.default
    if isinstance(default, bool):
        return None
    if isinstance(default, str):
        return "no-such-option"
    if isinstance(default, int):
        return int(spec.valid.split("≥ ")[1]) - 1
    low, high = (float(v.replace("∞", "inf")) for v in spec.valid[1:-1].split(", "))
    return (
        low
        if spec.valid[0] == "(" and math.isfinite(low)
        else (low - 1.0 if math.isfinite(low) else high + 1.0)
    )


CASES = [
    (name, key, spec)
    for name, objective in objectives.OBJECTIVES.items()
    for key, spec in objective.hyperparameters.items()
    if _out_of_range(spec) is not None
]


@pytest.mark.parametrize("name,key,spec", CASES, ids=[f"{n}.{k}" for n, k, _ in CASES])
def test_every_out_of_range_hyperparameter_is_a_config_error(name, key, spec):
    config = importlib.import_module(f"configs.{name}").get_config()
    bad = _out_of_range(spec)
    assert spec.accepts(spec.default) and not spec.accepts(bad)
    config.loss[key] = bad
    with pytest.raises(ConfigError) as error:
        train.check_config(config, num_devices=1)
    message = str(error.value)
    assert f"config.loss.{key} = {bad!r}" in message and spec.valid in message


def test_the_issue_ranges():
    """The ranges the field expects: ArcFace's margin in [0, π/2], scales > 0,
    SphereFace's margin a positive integer."""
    arcface = objectives.OBJECTIVES["arcface"].hyperparameters
    assert arcface["margin"].accepts(math.pi / 2) and not arcface["margin"].accepts(1.6)
    assert not arcface["scale"].accepts(0.0) and arcface["scale"].accepts(1e-3)
    margin = objectives.OBJECTIVES["sphereface"].hyperparameters["margin"]
    assert margin.accepts(1) and not margin.accepts(0) and not margin.accepts(2.0)


def test_layouts_the_loss_or_the_devices_cannot_honour():
    config = importlib.import_module("configs.arcface").get_config()
    config.loss.class_sharded = True
    with pytest.raises(ConfigError, match="class_sharded=True: .*7.*8"):
        objectives.check_loss_config(config.loss, num_classes=7, num_devices=8)
    objectives.check_loss_config(config.loss, num_classes=16, num_devices=8)
    config.loss.update(class_sharded=False, chunk_size=0)
    with pytest.raises(ConfigError, match="chunk_size = 0 is out of range"):
        objectives.check_loss_config(config.loss)
    circle = importlib.import_module("configs.circle").get_config()
    circle.loss.chunk_size = 4
    with pytest.raises(ConfigError, match="'circle' does not support config.loss.chunk_size"):
        objectives.check_loss_config(circle.loss)


def test_a_field_of_another_loss_is_an_error():
    config = importlib.import_module("configs.arcface").get_config()
    with config.loss.unlocked():
        config.loss.name = "cosface"
    with pytest.raises(ConfigError, match="easy_margin is not a field of loss 'cosface'"):
        objectives.check_loss_config(config.loss)
    with pytest.raises(ConfigError, match="no hyper-parameter margn"):
        default.loss_config("arcface", margn=0.1)


def _main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "faceloss_jax.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_cli_prints_a_config_error_as_one_line(tmp_path):
    result = _main(
        "--config=configs/arcface.py", f"--workdir={tmp_path}", "--config.loss.margin=-1"
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "FATAL config error: config.loss.margin = -1.0 is out of range; valid: [0, 1.5708]"
    ]
    assert not (tmp_path / "checkpoints").exists()  # rejected before anything ran


def test_describe_lists_the_knobs():
    result = _main("--config=configs/combined.py", "--describe")
    assert result.returncode == 0, result.stderr
    assert "loss 'combined': combined margin" in result.stdout
    assert "loss.m3 = 0.1  (default 0.0; valid: [0, 2])" in result.stdout


def test_readme_table_of_losses_is_the_registry():
    assert objectives.markdown_table() in (REPO / "README.md").read_text(encoding="utf-8")


# -- Data sources ---------------------------------------------------------------------


def test_every_source_is_a_record_with_its_config():
    for name, record in data.SOURCES.items():
        config = data.default_config(name)
        assert config.name == name and set(record.fields) <= set(config)
        assert config.channels == (3 if record.face else 1)


@pytest.mark.parametrize("source", list(data.SOURCES))
@pytest.mark.parametrize("spec", ["configs/arcface.py", "configs/triplet.py:face"])
def test_dataset_name_on_the_command_line_switches_the_source(source, spec):
    config = cli.config_from_command_line([f"--config={spec}", f"--config.dataset.name={source}"])
    assert config.is_locked and config.dataset.name == source
    expected = data.default_config(source).to_dict()
    if spec.endswith(":face"):
        expected["samples_per_identity"] = 4  # the face pair/triplet configs' P×K batches
        expected["normalization"] = "arcface_torch"  # the face recipe's input scaling
    assert config.dataset.to_dict() == expected
    # The recipe stays: the MNIST recipe keeps LeNets++, the face recipe iResNet.
    assert config.model.name == ("iresnet50" if ":face" in spec else "lenet_pp")


def test_variant_arguments_and_their_errors():
    assert default.parse_variant("face,image_folder") == ("face", {"source": "image_folder"})
    assert default.get_config("mnist,source=synthetic").dataset.name == "synthetic"
    with pytest.raises(ConfigError, match="unknown data source in variant 'face,source=lfw'"):
        default.get_config("face,source=lfw")
    with pytest.raises(ConfigError, match="unknown config variant 'face,depth=3'"):
        default.get_config("face,depth=3")


# -- Every documented command starts ------------------------------------------------

TINY = [
    "--config.num_train_steps=1",
    "--config.optimizer.warmup_steps=0",
    "--config.batch_size=8",
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=1",
    "--config.eval_every_steps=1",
    "--config.eval.max_examples=24",
    "--config.eval.num_pairs=20",
    "--config.eval.n_folds=2",
    "--config.eval.plot=False",
]
TINY_FACE = [
    "--config.half_precision=False",  # bfloat16 convolutions are slow on XLA:CPU
    "--config.model.name=iresnet18",
    "--config.model.embedding_dim=16",
    "--config.dataset.image_size=16",
    "--config.dataset.num_identities=8",
    "--config.dataset.held_out_identities=4",
    "--config.dataset.images_per_identity=4",
    "--config.dataset.test_images_per_identity=2",
]
# The face recipe compiles an iResNet per loss (a minute on 2 cores): a pair loss runs end
# to end here, and an angular one in test_insightface_folder.py; every face config builds
# its model and state in test_every_face_config_builds_its_model_and_state_from_the_cli.
FACE_CONFIGS = ("triplet",)


def _start(spec: str, extra: list[str], tmp_path) -> dict:
    config = cli.config_from_command_line([f"--config={spec}", *TINY, *extra])
    assert config.is_locked
    return train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.slow
def test_every_config_starts_from_the_command_line(name, tmp_path):
    metrics = _start(f"configs/{name}.py", [], tmp_path)
    assert 0.0 <= metrics["verification_accuracy"] <= 1.0


@pytest.mark.parametrize("name", FACE_CONFIGS)
@pytest.mark.slow
def test_face_configs_start_from_the_command_line(name, tmp_path):
    metrics = _start(f"configs/{name}.py:face", TINY_FACE, tmp_path)
    assert 0.0 <= metrics["verification_accuracy"] <= 1.0


def test_every_face_config_builds_its_model_and_state_from_the_cli():
    """The part of a face run that depends on the config: the locked config, its checks,
    the backbone with bfloat16 and synchronized BatchNorm, the head and loss state."""
    for name in CONFIGS:
        config = cli.config_from_command_line(
            [f"--config=configs/{name}.py:face", *TINY_FACE[1:]]  # bfloat16, the recipe's
        )
        train.check_config(config, num_devices=jax.device_count())
        model = run_state.training_model(config)
        assert model.bn_axis_name == "data" and model.dtype == jnp.bfloat16, name
        objectives.init_head(config.loss, jax.random.key(0), embedding_dim=16, num_classes=8)


def test_dataclass_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        objectives.OBJECTIVES["arcface"].classifier = "linear"


def _flatten(images):
    return images.reshape(images.shape[0], -1)


def test_evaluation_of_a_subsample_that_misses_classes():
    """``--config.eval.max_examples`` can leave classes without a test sample: their
    centres are left out instead of crashing in ``class_means`` (issue 13, item 8)."""
    from jax.tree_util import Partial

    from faceloss_jax import evaluation

    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 3, 3, 5, 5, 5, 9])  # classes 1, 2, 4, 6, 7, 8 missing
    centres = rng.normal(size=(10, 1, 1, 6))
    images = (centres[labels] + 0.1 * rng.normal(size=(8, 1, 1, 6))).astype(np.float32)
    metrics = evaluation.evaluate_run(
        Partial(_flatten),
        test_images=images,
        test_labels=labels,
        open_images=images,
        open_labels=labels,
        plot=False,
        num_pairs=8,
        n_folds=2,
        batch_size=8,
    )
    # Nearest of the 4 present centres (leave-one-out; class 9's lone sample cannot be).
    # A fraction of counted decisions: exact up to rounding, approx's default rel 1e-6.
    assert metrics["closed_set_accuracy"] == pytest.approx(7 / 8)
    assert np.isfinite(metrics["l_inter"]) and np.isfinite(metrics["feature_norm_mean"])
