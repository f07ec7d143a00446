"""Tests of the training loop: every loss trains, data-parallel steps equal the
single-device step, checkpoints resume exactly (even after SIGKILL), a corrupt
checkpoint is skipped, a NaN in the data is reported.

A tiny MLP backbone (with synchronized BatchNorm) on 8×8 synthetic identities keeps
compilation to a second or two; the real backbones are exercised by
``test_train_cli.py`` and ``tests/test_models.py``.
"""

import importlib
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import needs_devices
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from faceloss_jax import data, losses, train
from faceloss_jax.train_lib import objectives, optimizers, periodic_eval, run_state, train_step

REPO = pathlib.Path(__file__).resolve().parents[1]
# The core losses; tests/test_train_successors.py trains the successors.
LOSSES = objectives.loss_names("core")
NUM_CLASSES = 8
IMAGE_SHAPE = (8, 8, 1)


class TinyNet(nn.Module):
    """Flatten → Dense → BatchNorm (synchronized over "data" in training) → ReLU → Dense."""

    embedding_dim: int = 4

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        x = images.reshape(images.shape[0], -1)
        x = nn.Dense(32)(x)
        x = nn.BatchNorm(use_running_average=not train, axis_name="data" if train else None)(x)
        return nn.Dense(self.embedding_dim)(nn.relu(x))


def tiny_config(loss: str = "softmax") -> ml_collections.ConfigDict:
    """The MNIST config of ``loss`` shrunk to 8×8 synthetic identities and a few steps."""
    config = importlib.import_module(f"configs.{loss}").get_config()
    config.model.embedding_dim = 4
    config.dataset = data.default_config("synthetic")
    config.dataset.update(
        image_size=8,
        channels=1,
        num_identities=NUM_CLASSES,
        held_out_identities=2,
        images_per_identity=8,
        test_images_per_identity=4,
        read_threads=1,
        prefetch_buffer_size=16,
    )
    config.optimizer.update(name="adamw", learning_rate=1e-2, schedule="constant", warmup_steps=0)
    config.batch_size = 16
    config.num_train_steps = 6
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 6
    config.eval.update(num_pairs=20, n_folds=2, plot=False, batch_size=16)
    return config


def tiny_batch(num_examples: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Class prototypes plus noise: ``num_examples`` 8×8 images of 8 balanced classes."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(NUM_CLASSES, *IMAGE_SHAPE))
    labels = np.arange(num_examples) % NUM_CLASSES
    images = prototypes[labels] + 0.3 * rng.normal(size=(num_examples, *IMAGE_SHAPE))
    return {"image": images.astype(np.float32), "label": labels.astype(np.int32)}


def make_step(config, mesh, parallelism="shard_map"):
    """A fresh train state on ``mesh`` and the parallel step of ``config``."""
    model = TinyNet(config.model.embedding_dim)
    lr_fn = optimizers.create_learning_rate_schedule(
        config.optimizer, num_train_steps=config.num_train_steps
    )
    state = run_state.create_train_state(
        config,
        model,
        jax.random.PRNGKey(0),
        num_classes=NUM_CLASSES,
        image_shape=IMAGE_SHAPE,
        learning_rate_fn=lr_fn,
    )
    class_sharded = config.loss.get("class_sharded", False)
    specs = run_state.state_partition_specs(state, class_sharded=class_sharded)
    state = jax.device_put(state, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
    step = train_step.create_parallel_train_step(
        model,
        config,
        lr_fn,
        mesh=mesh,
        state_specs=specs,
        parallelism=parallelism,
    )
    return state, step


def run_steps(state, step, batch, mesh, parallelism, num_steps):
    history = []
    for _ in range(num_steps):
        state, metrics = step(
            state, train_step.shard_batch(batch, parallelism=parallelism, mesh=mesh)
        )
        history.append(jax.device_get(metrics))
    return state, history


def mesh_of(num_devices: int) -> Mesh:
    return jax.make_mesh((num_devices,), ("data",), devices=jax.devices()[:num_devices])


# -- Every loss trains --------------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.slow
def test_every_loss_trains(loss):
    config = tiny_config(loss)
    mesh = mesh_of(1)
    state, step = make_step(config, mesh)
    state, history = run_steps(state, step, tiny_batch(), mesh, "shard_map", num_steps=8)
    first, last = history[0]["loss"], history[-1]["loss"]
    assert np.isfinite(last) and last < 0.8 * first, [m["loss"] for m in history]
    assert int(state.step) == 8
    if loss == "center":  # the centres moved towards the features
        assert np.abs(np.asarray(state.loss_state["centers"])).sum() > 0


@pytest.mark.parametrize("loss", ["lsoftmax", "sphereface"])
def test_lambda_is_annealed_by_the_step(loss):
    config = tiny_config(loss).loss
    rng = np.random.default_rng(0)
    embeddings = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    labels = jnp.arange(6) % 3
    head = {"weights": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    fn = {"lsoftmax": losses.large_margin_softmax, "sphereface": losses.sphereface}[loss]
    schedule = losses.lambda_schedule(
        config.lambda_base, config.lambda_gamma, config.lambda_power, config.lambda_min
    )
    values = []
    for step in (0, 1000):
        value, _ = objectives.compute_loss(config, head, {}, embeddings, labels, step=step)
        expected = fn(
            embeddings, head["weights"], labels, margin=config.margin, lambda_=schedule(step)
        ).mean()
        # The same float32 function of the same inputs (the objective adds the mean of
        # 6): a few ulp of the O(1) loss, ≤ 16·u = 1e-6; λ at another step is O(0.1) off.
        np.testing.assert_allclose(value, expected, rtol=1e-6)
        values.append(float(value))
    assert values[1] > values[0]  # the margin bites once λ has decayed


def test_unknown_loss_name_is_an_error():
    with pytest.raises(ValueError, match="unknown config.loss.name 'arcfaec'.*arcface"):
        objectives.canonical_name("arcfaec")


# -- Data parallelism ---------------------------------------------------------------


# The longest float32 reduction of the tiny step: Dense_0's 8·8 = 64 inputs (the global
# batch, over which BatchNorm and the gradients sum, is 32).
LONGEST_SUM = 64


def rounding_tolerance(config) -> float:
    """The relative float32 error by which 8 devices may differ from 1 in one step.

    Both runs sum the same terms in different orders (BatchNorm's statistics, each
    device's gradient, the pmean), and a float32 sum of n terms is exact to
    n·u·Σ|terms|, u = 2⁻²⁴ (Higham, Accuracy and Stability, §4.2), once forward and
    once backward (the 2). A loss that scales its cosines by s (Circle's γ, ArcFace's s;
    AdaCos's √2·log(C − 1)) multiplies an error in a cosine by s in every logit and so
    in the softmax weights of the gradient: (1 + s), the backbone's error plus the
    loss's. Measured over XLA_FLAGS variations the errors are ≤ 7·u (s = 1) and
    ≤ 0.9·s·u: this bound is 30–150× above them and 500× below a lost device (1/8).
    """
    name = config.loss.name
    scale = losses.adacos_fixed_scale(NUM_CLASSES) if name == "adacos" else 1.0
    scale = config.loss.get("scale") or scale
    return 2 * LONGEST_SUM * (1 + scale) * 2.0**-24


def _assert_trees_close(a, b, tol):
    """Every leaf of ``a`` within ``tol`` of ``b``'s, relative to the element and to the
    largest element of ``b``: a sum that cancels to ~0 (the gradient of the bias before
    BatchNorm) still carries the rounding of its terms, whose size is the tree's."""
    scale = max(
        (float(np.abs(leaf).max()) for leaf in jax.tree.leaves(b) if np.size(leaf)), default=0.0
    )
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), rtol=tol, atol=tol * scale
        ),
        a,
        b,
    )


@needs_devices(8)
@pytest.mark.parametrize(
    "loss,class_sharded",
    [
        ("softmax", False),  # with synchronized BatchNorm statistics
        ("center", False),  # centres updated from the global batch
        ("arcface", True),  # W split by columns over the 8 devices (Partial FC)
        ("curricularface", False),  # t from the global batch
        ("adaface", True),  # norm statistics from the global batch, W split over devices
        ("adacos", True),  # the dynamic scale from the global batch and all classes
        ("triplet", False),  # triplets mined over the global batch
        ("contrastive", False),  # DeepID2's pairs over the global batch
        ("circle_pair", False),
        ("xbm", False),  # the memory and the in-batch pairs, global
    ],
)
def test_eight_devices_equal_one(loss, class_sharded):
    config = tiny_config(loss)
    # SGD: the update is linear in the gradient (Adam's first step is ~sign(g)).
    config.optimizer.update(name="sgd", learning_rate=0.1)
    batch = tiny_batch()
    reference, step = make_step(config, mesh_of(1))
    reference, (ref_metrics,) = run_steps(reference, step, batch, mesh_of(1), "shard_map", 1)
    config.loss.class_sharded = class_sharded
    parallelisms = ("shard_map",) if class_sharded else ("shard_map", "pmap")
    for parallelism in parallelisms:
        state, step = make_step(config, mesh_of(8), parallelism)
        state, (metrics,) = run_steps(state, step, batch, mesh_of(8), parallelism, 1)
        # The loss has slope ≤ 1 in each (scaled) logit, the norm ≤ 1 in the gradient.
        tol = rounding_tolerance(config)
        np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=tol, atol=tol)
        np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=tol)
        for field in ("params", "opt_state", "batch_stats", "loss_state"):
            _assert_trees_close(getattr(state, field), getattr(reference, field), tol)
    if class_sharded:
        assert state.params["head"]["weights"].sharding.spec == P(None, "data")


def test_gradient_clipping_bounds_the_update():
    config = tiny_config("softmax")
    config.optimizer.update(
        name="sgd", learning_rate=1.0, momentum=0.0, weight_decay=0.0, grad_clip_norm=1e-3
    )
    state, step = make_step(config, mesh_of(1))
    before = jax.device_get(state.params)  # the step donates the state's buffers
    state, (metrics,) = run_steps(state, step, tiny_batch(), mesh_of(1), "shard_map", 1)
    delta = jax.tree.map(np.subtract, jax.device_get(state.params), before)
    assert metrics["grad_norm"] > 1e-2
    # new − old recovers the update to the float32 rounding of the new parameters, ≤ u·|p|
    # each: ‖error‖ ≤ u·‖p‖ = 6e-8 · 8.8 ≈ 5e-7, 5e-4 of the clipped norm 1e-3 (plus
    # the clip's 1e-6/‖g‖ ≈ 4e-7); measured 2e-6. Unclipped, the update is ‖g‖ ≈ 2.9.
    np.testing.assert_allclose(optax.global_norm(delta), 1e-3, rtol=1e-3)


def test_check_config_names_the_problem():
    config = tiny_config()
    with pytest.raises(ValueError, match="not divisible by the 3 devices"):
        train.check_config(config, num_devices=3)
    config.parallelism = "pjit"
    with pytest.raises(ValueError, match="unknown parallelism 'pjit'"):
        train.check_config(config, num_devices=1)
    config = tiny_config("arcface")
    config.update(parallelism="pmap")
    config.loss.class_sharded = True
    with pytest.raises(ValueError, match="class_sharded needs parallelism='shard_map'"):
        train.check_config(config, num_devices=1)


# -- The loop: checkpoints, non-finite losses ---------------------------------------


@pytest.fixture
def tiny_model(monkeypatch):
    monkeypatch.setattr(
        run_state, "training_model", lambda config: TinyNet(config.model.embedding_dim)
    )


def _read_metrics(workdir):
    return [
        json.loads(line)
        for line in (workdir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]


def test_train_and_evaluate_logs_checkpoints_and_evaluates(tiny_model, tmp_path):
    config = tiny_config("center")
    metrics = train.train_and_evaluate(config, str(tmp_path))
    assert 0 <= metrics["closed_set_accuracy"] <= 1 and 0 <= metrics["verification_accuracy"] <= 1
    records = _read_metrics(tmp_path)
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [2, 4, 6]
    assert {"loss", "learning_rate", "grad_norm", "accuracy", "intra_angle"} <= set(records[0])
    assert [r["step"] for r in records if r["split"] == "eval"] == [6]
    # JSON writes floats with repr, which reads back exactly; approx's default 1e-6.
    assert json.loads(
        (tmp_path / "eval" / "step_6.json").read_text(encoding="utf-8")
    ) == pytest.approx(metrics)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4", "6"]
    assert list((tmp_path / "tensorboard").iterdir())


def _poison_step(monkeypatch, poisoned_step):
    """Replaces the images of the ``poisoned_step``-th batch (1-based) by NaN."""
    calls = []
    shard_batch = train_step.shard_batch

    def poisoned(batch, **kwargs):
        calls.append(None)
        if len(calls) == poisoned_step:
            # float32: the iterator's uint8 images cannot hold NaN (a float batch is
            # taken by the step as it is).
            batch = {**batch, "image": np.full(np.shape(batch["image"]), np.nan, np.float32)}
        return shard_batch(batch, **kwargs)

    monkeypatch.setattr(train_step, "shard_batch", poisoned)


def test_nan_in_data_stops_with_a_clear_message(tiny_model, tmp_path, monkeypatch):
    _poison_step(monkeypatch, 5)
    with pytest.raises(train.NonFiniteLossError) as error:
        train.train_and_evaluate(tiny_config(), str(tmp_path))
    message = str(error.value)
    assert message.startswith("non-finite loss at step 5")
    assert "input batch contains non-finite values" in message
    assert "last good checkpoint (step 4) is intact" in message
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
def test_nan_policy_skip_skips_the_step(tiny_model, tmp_path, monkeypatch):
    _poison_step(monkeypatch, 3)
    config = tiny_config()
    config.nan_policy = "skip"
    train.train_and_evaluate(config, str(tmp_path))
    skipped = {
        r["step"]: r["skipped_steps"] for r in _read_metrics(tmp_path) if r["split"] == "train"
    }
    assert skipped == {2: 0, 4: 1, 6: 0}


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tiny_model, tmp_path, caplog):
    config = tiny_config()
    config.num_train_steps = 4
    train.train_and_evaluate(config, str(tmp_path))
    for path in (tmp_path / "checkpoints" / "4" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"corrupt")
    config.num_train_steps = 6
    with caplog.at_level(logging.WARNING):
        train.train_and_evaluate(config, str(tmp_path))
    assert f"{tmp_path}/checkpoints/4 cannot be used" in caplog.text
    assert f"moved to {tmp_path}/checkpoints_corrupt/4," in caplog.text
    assert (tmp_path / "checkpoints_corrupt" / "4").is_dir()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4", "6"]
    resumed = [r["step"] for r in _read_metrics(tmp_path) if r["split"] == "train"]
    assert resumed == [2, 4, 4, 6]  # the second run restarted from step 2


_RUN_SCRIPT = textwrap.dedent("""
    import sys, time
    import jax, numpy as np
    sys.path[:0] = [{tests!r}, {repo!r}]
    import test_train
    from faceloss_jax import train
    from faceloss_jax.train_lib import periodic_eval, run_state, train_step
    run_state.training_model = lambda config: test_train.TinyNet(config.model.embedding_dim)
    shard_batch = train_step.shard_batch
    def slow_shard_batch(batch, **kwargs):
        time.sleep(0.05)  # so that the parent can kill the run mid-way
        return shard_batch(batch, **kwargs)
    train_step.shard_batch = slow_shard_batch
    config = test_train.tiny_config()
    config.update(num_train_steps=30, checkpoint_every_steps=3, log_every_steps=3,
                  eval_every_steps=30)
    config.dataset.images_per_identity = 6  # epochs end mid-run, at odd batch offsets
    workdir = sys.argv[1]
    train.train_and_evaluate(config, workdir)
    # The final train state, read back from the last checkpoint.
    from faceloss_jax.train_lib import checkpointing
    import orbax.checkpoint as ocp
    manager = checkpointing.create_checkpoint_manager(workdir + "/checkpoints", max_to_keep=3)
    restored = manager.restore(30, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    leaves = jax.tree_util.tree_flatten_with_path(restored.state)[0]
    arrays = {{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}}
    np.savez(workdir + "/final.npz", **arrays)
""")


def _saved_steps(workdir):
    directory = workdir / "checkpoints"
    return (
        [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.exists() else []
    )


def _launch(script, workdir):
    return subprocess.Popen(
        [sys.executable, "-c", script, str(workdir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_and_resume_equals_an_uninterrupted_run(tmp_path):
    script = _RUN_SCRIPT.format(tests=str(REPO / "tests"), repo=str(REPO))
    uninterrupted = _launch(script, tmp_path / "uninterrupted")
    killed_dir = tmp_path / "killed"
    killed = _launch(script, killed_dir)
    deadline = time.time() + 300
    while max(_saved_steps(killed_dir), default=0) < 12:
        assert killed.poll() is None and time.time() < deadline, killed.communicate()[0]
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (killed_dir / "checkpoints" / "30").exists()
    resumed = _launch(script, killed_dir)
    for process in (uninterrupted, resumed):
        output = process.communicate(timeout=180)[0]
        assert process.returncode == 0, output
    expected = np.load(tmp_path / "uninterrupted" / "final.npz")
    actual = np.load(killed_dir / "final.npz")
    assert sorted(expected) == sorted(actual) and len(expected) > 10
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
    train_steps = [r["step"] for r in _read_metrics(killed_dir) if r["split"] == "train"]
    assert train_steps.count(3) == 1 and train_steps[-1] == 30  # resumed, not restarted


def test_training_model_sets_precision_and_batch_norm_axis():
    config = importlib.import_module("configs.arcface").get_config("face")
    config.update(half_precision=True, sync_batch_norm=True)
    config.lock()  # as the command line builds it: dtype, bn_axis_name are not its keys
    model = run_state.training_model(config)
    assert model.dtype == jnp.bfloat16 and model.bn_axis_name == "data"
    # Every evaluation (open set and .bin targets alike) embeds in float32.
    evaluation_model = periodic_eval.evaluation_model(config)
    assert evaluation_model.dtype == jnp.float32 and evaluation_model.bn_axis_name is None
    config.update(half_precision=False, sync_batch_norm=False)
    model = run_state.training_model(config)
    assert model.dtype == jnp.float32 and model.bn_axis_name is None
    lenet = run_state.training_model(tiny_config())  # no batch norm: no axis to set
    assert lenet.dtype == jnp.float32
