"""Trains a backbone with a face recognition loss and evaluates it.

``train_and_evaluate(config, workdir)`` reads top to bottom as the flax examples do:
create the train state, the per-device train step, the evaluation, then the loop.

The train step is written once, per device, with the named axis ``"data"``, and runs
data-parallel either under ``jax.shard_map`` over a 1-D device mesh (the default, and
the recommended path since JAX 0.8) or under ``jax.pmap`` (``config.parallelism``).
Both give the update of the global batch: gradients, metrics and batch statistics
are averaged over the axis, and the result equals a single device fed the whole batch
(the pair and triplet losses mine over the global batch).
With ``config.loss.class_sharded`` (shard_map only) the classifier W is split by
columns over the devices, the Partial FC layout of the angular losses.

Multi-host (a TPU pod slice, several GPU nodes): every process runs the same command
with ``--multihost`` (see ``main.py``), which calls ``jax.distributed.initialize()``
(the coordinator is auto-detected on Cloud TPU, SLURM and Open MPI; otherwise pass
``--coordinator_address=host0:1234 --num_processes=N --process_id=i``). There is one
global batch layout for any number of processes: process ``p`` reads the contiguous
block ``p`` of every global batch (``data.create_iterator``), its devices are the
block ``p`` of the mesh (``data_mesh``), so device ``i`` sees the same examples on
1 process × 8 devices as on 2 × 4, and the run ends in the same state up to the
order of floating-point sums. Checkpoints, logs and figures are written by process 0
(orbax coordinates the checkpoint writes; each process saves its data position). E.g. on
SLURM with one process per node::

    srun --nodes=2 --ntasks-per-node=1 python -m faceloss_jax.main --multihost \\
        --config=configs/arcface.py:face --workdir=/shared/runs/arcface
"""

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import linen as nn
from flax.training import train_state
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.tree_util import Partial

from faceloss_jax import data, errors, evaluation, models, weights
from faceloss_jax.train_lib import checkpointing, objectives, optimizers, reporting

DATA_AXIS = "data"
PARALLELISMS = ("shard_map", "pmap")
NAN_POLICIES = ("stop", "skip")


class TrainState(train_state.TrainState):
    """Everything a run needs to continue: ``params = {"backbone", "head"}`` (the head
    holds the classifier W), optimizer state, BatchNorm statistics, the state of the
    loss (center-loss centres) and the PRNG key (dropout keys are folded from it)."""

    batch_stats: Any
    loss_state: Any
    rng: jax.Array


class NonFiniteLossError(errors.UserError, FloatingPointError):
    """Raised when a step's loss is NaN or infinite and ``config.nan_policy == "stop"``,
    or after ``config.max_consecutive_skips`` skipped steps in a row with ``"skip"``."""

    kind = "training stopped"


# ------------------------------------------------------------------------------------
# Create the train state.
# ------------------------------------------------------------------------------------


def training_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The backbone of ``config.model`` as training runs it (``models.create_model``):
    computing in bfloat16 with ``half_precision`` and with BatchNorm synchronized over
    the data axis with ``sync_batch_norm`` (``evaluation_model``: in float32)."""
    # An unlocked copy: the CLI's config is locked, and dtype/bn_axis_name may be new keys.
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    if config.half_precision:
        model_config.dtype = "bfloat16"
    if config.sync_batch_norm and "bn_axis_name" in models.config_keys(model_config.name):
        model_config.bn_axis_name = DATA_AXIS
    return models.create_model(model_config)


def create_train_state(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    key: jax.Array,
    *,
    num_classes: int,
    image_shape: tuple[int, int, int],
    learning_rate_fn: optax.Schedule,
) -> TrainState:
    """Initializes the backbone (float32 master weights) for (H, W, C) ``image_shape``
    inputs, the classifier head, the loss state and the optimizer."""
    init_key, head_key, rng = jax.random.split(key, 3)
    variables = model.init(init_key, jnp.zeros((1, *image_shape)), train=False)
    head, loss_state = objectives.init_head(
        config.loss, head_key, embedding_dim=config.model.embedding_dim, num_classes=num_classes
    )
    return TrainState.create(
        apply_fn=model.apply,
        params={"backbone": variables["params"], "head": head},
        tx=optimizers.create_optimizer(
            config.optimizer,
            learning_rate_fn,
            global_norm=functools.partial(_global_norm, class_sharded=is_class_sharded(config)),
        ),
        batch_stats=variables.get("batch_stats", {}),
        loss_state=loss_state,
        rng=rng,
    )


def restore_run(
    config: ml_collections.ConfigDict, workdir: epath.PathLike
) -> tuple[nn.Module, TrainState]:
    """The backbone of ``config`` and the newest intact train state of the run in
    ``workdir``, on the default device (whatever topology wrote it). Read-only: a
    checkpoint that cannot be read or fails its checksum is skipped, not moved.

    Raises:
      errors.CheckpointError: ``<workdir>/checkpoints`` holds no intact checkpoint.
      errors.CheckpointMismatchError: the newest checkpoint does not fit ``config``.
    """
    directory = epath.Path(workdir) / "checkpoints"
    if not directory.exists():
        raise errors.CheckpointError(f"no checkpoint in {directory}: is {workdir} a run?")
    model = training_model(config)
    template = create_train_state(
        config,
        model,
        jax.random.PRNGKey(config.seed),
        num_classes=data.num_classes(config.dataset),
        image_shape=image_shape(config),
        learning_rate_fn=optimizers.create_learning_rate_schedule(
            config.optimizer, num_train_steps=config.num_train_steps
        ),
    )
    manager = checkpointing.create_checkpoint_manager(
        directory, max_to_keep=config.max_checkpoints_to_keep, read_only=True
    )
    try:
        state = checkpointing.restore_latest(manager, template, quarantine=False)
    finally:
        manager.close()
    if state is None:
        raise errors.CheckpointError(f"no intact checkpoint in {directory}")
    return model, state


def is_class_sharded(config: ml_collections.ConfigDict) -> bool:
    """Whether the classifier's columns are split over the devices (Partial FC)."""
    return config.loss.get("class_sharded", False)


def _is_sharded_leaf(path: tuple, leaf: Any, class_sharded: bool) -> bool:
    """Whether a leaf is a column block of the classifier: the head's weights and
    bias, and their optimizer moments (which sit under the same keys)."""
    keys = [getattr(k, "key", None) for k in path]
    return class_sharded and len(keys) >= 2 and keys[-2] == "head" and np.ndim(leaf) >= 1


def state_partition_specs(state: TrainState, *, class_sharded: bool) -> TrainState:
    """PartitionSpecs of the state: replicated, but for the classifier's columns
    (``P(None, "data")`` for W (d, C), ``P("data")`` for the bias) when class-sharded."""

    def spec(path, leaf):
        if _is_sharded_leaf(path, leaf, class_sharded):
            return P(*(None,) * (np.ndim(leaf) - 1), DATA_AXIS)
        return P()

    return jax.tree_util.tree_map_with_path(spec, state)


# ------------------------------------------------------------------------------------
# The train step, per device.
# ------------------------------------------------------------------------------------


def _average_gradients(grads: Any, *, class_sharded: bool, num_devices: int) -> Any:
    """The gradient of the global mean loss.

    Replicated parameters: the mean of the per-device gradients. Class-sharded columns:
    each device already holds the gradient of the sum of all devices' losses for its
    own columns (the all-gather and the psum of the normalizer transpose to sums), so
    it is divided by the number of devices.
    """

    def average(path, grad):
        if _is_sharded_leaf(path, grad, class_sharded):
            return grad / num_devices
        return jax.lax.pmean(grad, DATA_AXIS)

    return jax.tree_util.tree_map_with_path(average, grads)


def _global_norm(grads: Any, *, class_sharded: bool) -> jax.Array:
    """The L2 norm of the whole gradient, summing the squares of sharded columns."""
    squares = jax.tree_util.tree_map_with_path(
        lambda path, g: (
            jax.lax.psum(jnp.sum(jnp.square(g)), DATA_AXIS)
            if _is_sharded_leaf(path, g, class_sharded)
            else jnp.sum(jnp.square(g))
        ),
        grads,
    )
    return jnp.sqrt(sum(jax.tree.leaves(squares)))


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    config: ml_collections.ConfigDict,
    learning_rate_fn: optax.Schedule,
    num_devices: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step, as seen by one device of the ``"data"`` axis.

    The backbone computes in its dtype (bfloat16 with ``half_precision``); the
    embeddings, the loss and the gradients are float32, as are the master weights.
    The optimizer (``optimizers.create_optimizer``) accumulates micro-batches and clips
    the accumulated gradient to ``config.optimizer.grad_clip_norm`` at the update.
    With ``config.nan_policy == "skip"`` a step whose loss, gradient or updated state
    (parameters, optimizer state, batch statistics) is not finite leaves the state
    unchanged but for the step counter.

    Args:
      state: the replicated train state (the classifier's columns when class-sharded).
      batch: this device's ``"image"`` (B, H, W, C) and ``"label"`` (B,); uint8 images
        (the training iterator's) are normalized here, on the device
        (``config.dataset.normalization``), float ones taken as they are.
      model: the backbone.
      config: the experiment config.
      learning_rate_fn: the schedule, for logging.
      num_devices: the size of the ``"data"`` axis.

    Returns:
      The new state and the metrics of the global batch: ``loss``, ``grad_norm``
      (before clipping), ``learning_rate``, ``finite`` (1.0 if the loss, the gradient
      and the updated state are finite), ``finite_input`` (1.0 if every image is
      finite), and ``accuracy``, ``intra_angle`` when the loss has an unsharded
      classifier.
    """
    class_sharded = is_class_sharded(config)
    dropout_key = jax.random.fold_in(
        jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(DATA_AXIS)
    )

    images = batch["image"]
    if not jnp.issubdtype(images.dtype, jnp.floating):  # uint8 from the input pipeline
        images = data.normalize(images, config.dataset.normalization)

    def loss_fn(params):
        embeddings, updates = model.apply(
            {"params": params["backbone"], "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_key},
        )
        embeddings = embeddings.astype(jnp.float32)
        loss, loss_state = objectives.compute_loss(
            config.loss,
            params["head"],
            state.loss_state,
            embeddings,
            batch["label"],
            step=state.step,
            key=objectives.prng_stream(dropout_key, "loss"),
            axis_name=DATA_AXIS,
            class_axis_name=DATA_AXIS if class_sharded else None,
        )
        return loss, (embeddings, updates.get("batch_stats", {}), loss_state)

    (loss, (embeddings, batch_stats, loss_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True
    )(state.params)
    grads = _average_gradients(grads, class_sharded=class_sharded, num_devices=num_devices)
    grad_norm = _global_norm(grads, class_sharded=class_sharded)
    new_state = state.apply_gradients(
        grads=grads,
        batch_stats=jax.lax.pmean(batch_stats, DATA_AXIS),
        loss_state=loss_state,
    )

    # The rate of the update this micro-batch goes into (the schedule counts micro-batches).
    accumulate = config.optimizer.grad_accum_steps
    rate = optimizers.rate_of_update(learning_rate_fn, accumulate)(state.step // accumulate)
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": rate}
    if not class_sharded:
        metrics |= objectives.batch_metrics(
            config.loss, state.params["head"], embeddings, batch["label"]
        )
    metrics = jax.lax.pmean(metrics, DATA_AXIS)
    finite = (
        jnp.isfinite(metrics["loss"])
        & jnp.isfinite(grad_norm)
        & _is_finite(new_state.params, new_state.opt_state, new_state.batch_stats)
    )
    metrics["finite"] = finite.astype(jnp.float32)
    metrics["finite_input"] = jax.lax.pmin(
        jnp.all(jnp.isfinite(batch["image"])).astype(jnp.float32), DATA_AXIS
    )
    if config.nan_policy == "skip":
        new_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), new_state, state
        ).replace(step=state.step + 1)
    return new_state, metrics


def _is_finite(*trees: Any) -> jax.Array:
    """Whether every element of ``trees`` is finite on every device (a class-sharded
    column block is checked where it lives)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(trees)]
    local = jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)
    return jax.lax.pmin(local.astype(jnp.int32), DATA_AXIS) > 0


def parallelize_train_step(
    step_fn: Callable, *, parallelism: str, mesh: Mesh, state_specs: TrainState
) -> Callable:
    """Runs the per-device ``step_fn(state, batch)`` data-parallel over ``mesh``.

    ``shard_map`` takes the global batch as a ``jax.Array`` sharded over ``"data"``;
    ``pmap`` takes it as (local devices, per-device batch, ...). Both take and return
    the state replicated (``in_axes=None`` for pmap) and return metrics of the global
    batch. ``check_vma=False`` gives shard_map pmap's semantics, where a gradient is
    per device until the explicit ``pmean``.
    """
    if parallelism == "pmap":
        return jax.pmap(step_fn, axis_name=DATA_AXIS, in_axes=(None, 0), out_axes=(None, None))
    mapped = jax.shard_map(
        step_fn,
        mesh=mesh,
        in_specs=(state_specs, P(DATA_AXIS)),
        out_specs=(state_specs, P()),
        check_vma=False,
    )
    return jax.jit(mapped, donate_argnums=0)


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The 1-D ``"data"`` mesh of ``devices`` (all of them by default) with each
    process's devices contiguous and in process order (``jax.make_mesh``'s order
    within a process), so that process ``p``'s block of the global batch
    (``data.create_iterator``) lands on its own devices, and mesh position ``i``
    holds rows ``[i·B/n, (i+1)·B/n)`` whatever the number of processes."""
    devices = list(jax.devices() if devices is None else devices)
    ordered = jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices).devices.ravel()
    ordered = sorted(ordered, key=lambda device: device.process_index)  # stable
    return Mesh(np.asarray(ordered), (DATA_AXIS,))


def shard_batch(batch: Mapping[str, np.ndarray], *, parallelism: str, mesh: Mesh) -> dict:
    """This process's block of the global batch, as the step of ``parallelism`` takes it.

    ``shard_map``: global ``jax.Array``s sharded over ``"data"``, built from every
    process's block (``jax.make_array_from_process_local_data``; process ``p``'s rows
    are the global rows ``[p·b, (p+1)·b)``). ``pmap``: the block reshaped to
    (local devices, per-device batch, …) (``data.reshape_for_pmap``).
    """
    if parallelism == "pmap":
        return data.reshape_for_pmap(dict(batch), jax.local_device_count())
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    arrays = {}
    for name, value in batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        arrays[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return arrays


# ------------------------------------------------------------------------------------
# Evaluation.
# ------------------------------------------------------------------------------------


class _Subset:
    """The examples ``indices`` of a random-access source."""

    def __init__(self, source: Any, indices: np.ndarray):
        self._source, self._indices = source, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> Any:
        return self._source[int(self._indices[index])]


def load_split(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images (preprocessed for the backbone) and labels of a dataset split: all of
    them, or a random subset (drawn from ``config.seed``) of ``config.eval.max_examples``."""
    source = data.create_source(config.dataset, split)
    limit = config.eval.max_examples
    if limit is not None and limit < len(source):
        indices = np.random.default_rng(config.seed).choice(len(source), limit, replace=False)
        source = _Subset(source, np.sort(indices))
    iterator = data.create_iterator(
        source,
        config.dataset,
        global_batch_size=config.eval.batch_size,
        seed=config.seed,
        train=False,
        num_epochs=1,
        process_index=0,
        process_count=1,
    )
    images, labels = [], []
    for batch in iterator:
        mask = np.asarray(batch.get("mask", np.ones(len(batch["label"]), bool)))
        images.append(np.asarray(batch["image"])[mask])
        labels.append(np.asarray(batch["label"])[mask])
    return np.concatenate(images), np.concatenate(labels)


@functools.cache
def _inference_apply(model: nn.Module) -> Callable:
    """``(variables, images) -> embeddings`` in inference mode, one object per model, so
    that ``Partial(fn, variables)`` traces the variables (rather than baking them into
    the program as constants) and every evaluation reuses the compiled extraction."""
    return functools.partial(model.apply, train=False)


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """The (H, W, C) of the backbone's inputs: ``config.dataset``'s image size and channels."""
    size = config.dataset.image_size
    return (size, size, config.dataset.channels)


def has_closed_set(config: ml_collections.ConfigDict) -> bool:
    """Whether the source has the ``eval.test_split`` and ``eval.open_split`` splits
    (an InsightFace folder has only "train": it is evaluated on its ``.bin`` targets)."""
    splits = data.sources.get(config.dataset.name).splits
    return config.eval.test_split in splits and config.eval.open_split in splits


def val_target_paths(config: ml_collections.ConfigDict) -> dict[str, epath.Path]:
    """``{name: <dir>/<name>.bin}`` of ``config.eval.val_targets`` (entries may also be
    comma-separated lists), ``<dir>`` being ``config.eval.val_dir`` or else the dataset
    folder ``config.dataset.path``.

    Raises:
      ConfigError: targets are set but no folder is known.
      FileNotFoundError: a ``.bin`` is missing (every missing file is named).
    """
    names = [
        name.strip()
        for entry in config.eval.get("val_targets", ())
        for name in str(entry).split(",")
        if name.strip()
    ]
    if not names:
        return {}
    directory = config.eval.get("val_dir") or config.dataset.get("path")
    if not directory:
        raise errors.ConfigError(
            f"config.eval.val_targets={tuple(names)} needs config.eval.val_dir (or "
            "config.dataset.path) to name the folder holding their .bin files"
        )
    paths = {name: epath.Path(directory) / f"{name}.bin" for name in names}
    missing = [str(path) for path in paths.values() if not path.exists()]
    if missing:
        present = sorted(p.name for p in epath.Path(directory).glob("*.bin"))
        raise FileNotFoundError(
            f"verification target(s) not found: {', '.join(missing)} (config.eval.val_targets="
            f"{tuple(names)}; .bin files in {directory}: {', '.join(present) or 'none'}). "
            "Set config.eval.val_dir, or drop them from config.eval.val_targets."
        )
    return paths


def load_eval_data(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The evaluation sets.

    ``"test"`` (training classes) and ``"open"`` (held-out ones) when the source has
    those splits (``has_closed_set``); ``"targets"``: ``{name: data.PairSet}`` of the
    ``.bin`` verification targets (``val_target_paths``), decoded at
    ``config.dataset.image_size``. Missing target files fail here, at the start of a
    run, not at its first evaluation.
    """
    paths = val_target_paths(config)
    eval_data = {}
    if has_closed_set(config):
        eval_data["test"] = load_split(config, config.eval.test_split)
        eval_data["open"] = load_split(config, config.eval.open_split)
    if paths:
        eval_data["targets"] = {
            name: data.read_verification_bin(
                path, image_size=config.dataset.image_size, channels=config.dataset.channels
            )
            for name, path in paths.items()
        }
    return eval_data


def evaluation_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The training backbone in float32, as arcface_torch evaluates (outside autocast):
    every evaluation (closed and open set, the verification targets) embeds with it."""
    float32 = ml_collections.ConfigDict(config.to_dict())
    float32.half_precision = False
    float32.sync_batch_norm = False  # inference uses the running statistics
    return training_model(float32)


def evaluate_targets(
    config: ml_collections.ConfigDict,
    variables: Mapping[str, Any],
    targets: Mapping[str, data.PairSet],
) -> dict[str, float]:
    """``<name>_accuracy``, ``_accuracy_std``, ``_xnorm``, ``_val``, ``_far`` of each
    verification target (``evaluation.evaluate_pair_set``: flip TTA, 10-fold protocol in
    ``config.eval.threshold`` mode, float32 backbone)."""
    embed_fn = Partial(_inference_apply(evaluation_model(config)), variables)
    preprocess = functools.partial(data.normalize, normalization=config.dataset.normalization)
    metrics = {}
    for name, pairs in targets.items():
        report = evaluation.evaluate_pair_set(
            embed_fn,
            pairs.images,
            pairs.issame,
            preprocess=preprocess,
            n_folds=config.eval.n_folds,
            threshold=config.eval.threshold,
            batch_size=config.eval.batch_size,
        )
        metrics |= {f"{name}_{key}": report[key] for key in TARGET_KEYS}
    return metrics


# The numbers logged per verification target (and ``<name>_best``, by the loop).
TARGET_KEYS = ("accuracy", "accuracy_std", "xnorm", "val", "far")


def evaluate(
    config: ml_collections.ConfigDict,
    state: TrainState,
    eval_data: Mapping[str, Any],
    *,
    workdir: epath.PathLike | None,
    step: int,
) -> dict[str, float]:
    """Closed-set accuracy, open-set verification, geometry and the verification targets.

    With ``eval_data["test"]`` and ``["open"]``: ``evaluation.evaluate_run`` on the
    training classes and held-out identities. With ``eval_data["targets"]``: each
    ``.bin`` set as arcface_torch's verification callback (``evaluate_targets``). It
    runs on every process (each on its local devices, from a host copy of the
    variables); process 0 writes the figures and ``<workdir>/eval/step_<step>.json``.
    Closed-set accuracy uses the classifier (cosine for the normalized losses), or
    nearest class centres for the triplet loss. Every embedding comes from the float32
    ``evaluation_model``.
    """
    host = multihost_utils.process_allgather(
        {"params": state.params, "batch_stats": state.batch_stats}, tiled=True
    )
    variables = {"params": host["params"]["backbone"], "batch_stats": host["batch_stats"]}
    write = workdir is not None and jax.process_index() == 0
    metrics = {}
    if "test" in eval_data:
        head, classifier = host["params"]["head"], None
        if objectives.has_classifier(config.loss):
            classifier = np.asarray(objectives.classifier_weights(config.loss, head))
        (test_images, test_labels), (open_images, open_labels) = (
            eval_data["test"],
            eval_data["open"],
        )
        metrics |= evaluation.evaluate_run(
            Partial(_inference_apply(evaluation_model(config)), variables),
            test_images=test_images,
            test_labels=test_labels,
            open_images=open_images,
            open_labels=open_labels,
            weights=classifier,
            workdir=str(workdir) if write else None,
            step=step,
            seed=config.seed,
            plot=config.eval.plot,
            num_pairs=config.eval.num_pairs,
            n_folds=config.eval.n_folds,
            flip=config.eval.flip,
            batch_size=config.eval.batch_size,
        )
    if eval_data.get("targets"):
        metrics |= evaluate_targets(config, variables, eval_data["targets"])
    if write:
        eval_dir = epath.Path(workdir) / "eval"
        eval_dir.mkdir(parents=True, exist_ok=True)
        (eval_dir / f"step_{step}.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics


def _previous_best(workdir: epath.Path, names: Sequence[str], *, up_to: int) -> dict[str, float]:
    """The best accuracy of each target logged in ``metrics.jsonl`` up to step ``up_to``
    (a resumed run continues arcface_torch's "Accuracy-Highest"; it starts at 0)."""
    best = dict.fromkeys(names, 0.0)
    path = workdir / "metrics.jsonl"
    if not names or not path.exists():
        return best
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if record.get("split") != "eval" or record.get("step", 0) > up_to:
            continue
        for name in names:
            best[name] = max(best[name], record.get(f"{name}_accuracy", 0.0))
    return best


def _update_best(metrics: dict[str, float], best: dict[str, float]) -> None:
    """Adds ``<name>_best`` to ``metrics``, the highest ``<name>_accuracy`` so far."""
    for name in best:
        best[name] = max(best[name], metrics[f"{name}_accuracy"])
        metrics[f"{name}_best"] = best[name]


# ------------------------------------------------------------------------------------
# The loop.
# ------------------------------------------------------------------------------------


def check_config(
    config: ml_collections.ConfigDict, *, num_devices: int, num_classes: int | None = None
) -> None:
    """Raises a ValueError naming the first inconsistent setting (given ``num_classes``,
    also a class-sharded W that does not split over the devices)."""
    objectives.check_loss_config(
        config.loss,
        num_classes=num_classes,
        num_devices=num_devices,
        batch_size=config.batch_size,
    )
    if config.parallelism not in PARALLELISMS:
        raise errors.ConfigError(
            f"unknown parallelism {config.parallelism!r}; valid: {', '.join(PARALLELISMS)}"
        )
    if config.nan_policy not in NAN_POLICIES:
        raise errors.ConfigError(
            f"unknown nan_policy {config.nan_policy!r}; valid: {', '.join(NAN_POLICIES)}"
        )
    if config.batch_size < 1:
        raise errors.ConfigError(f"batch_size must be positive; got {config.batch_size}")
    if not 0 <= config.optimizer.learning_rate < float("inf"):
        raise errors.ConfigError(
            f"optimizer.learning_rate must be finite and ≥ 0; got "
            f"{config.optimizer.learning_rate} (a negative rate ascends the loss)"
        )
    if config.max_consecutive_skips < 1:
        raise errors.ConfigError(
            f"max_consecutive_skips must be positive; got {config.max_consecutive_skips}"
        )
    pk = data.sampling.pk_shape(config.dataset, config.batch_size)
    if pk is not None and pk[1] < 2 and not objectives.has_classifier(config.loss):
        raise errors.ConfigError(
            f"P×K batches of K = {pk[1]} sample(s) per identity hold no positive pair, so "
            f"the loss {config.loss.name!r} and its gradient are identically 0: set "
            "dataset.samples_per_identity ≥ 2"
        )
    if config.batch_size % num_devices:
        raise errors.ConfigError(
            f"batch_size={config.batch_size} is not divisible by the {num_devices} devices"
        )
    intervals = ("num_train_steps", "log_every_steps", "checkpoint_every_steps", "eval_every_steps")
    for name in intervals:
        if config[name] < 1:
            raise errors.ConfigError(f"{name} must be positive; got {config[name]}")
    accumulate = config.optimizer.grad_accum_steps
    if isinstance(accumulate, int) and accumulate > 1 and config.num_train_steps % accumulate:
        raise errors.ConfigError(
            f"num_train_steps={config.num_train_steps} is not a multiple of "
            f"optimizer.grad_accum_steps={accumulate} (micro-batches per update)"
        )
    if config.optimizer.clip_scope not in optimizers.CLIP_SCOPES:
        raise errors.ConfigError(
            f"config.optimizer.clip_scope = {config.optimizer.clip_scope!r} is out of range; "
            f"valid: one of {', '.join(map(repr, optimizers.CLIP_SCOPES))}"
        )
    clip = config.optimizer.grad_clip_norm
    if clip is not None and clip <= 0:
        raise errors.ConfigError(f"optimizer.grad_clip_norm must be positive or None; got {clip}")
    if is_class_sharded(config) and (
        config.parallelism != "shard_map" or not objectives.has_classifier(config.loss)
    ):
        raise errors.ConfigError(
            "loss.class_sharded needs parallelism='shard_map' and a loss with a classifier"
        )


def _raise_if_non_finite(
    window: list[dict[str, float]],
    *,
    last_step: int,
    last_checkpoint: int | None,
    skips: int,
    max_skips: int | None,
) -> int:
    """Checks the steps of a logging window that ends at ``last_step``.

    With ``max_skips`` None (``nan_policy="stop"``) the first non-finite step raises;
    otherwise (``"skip"``) ``max_skips`` non-finite steps in a row do.

    Args:
      window: the metrics of each step.
      last_step: the step of the window's last entry.
      last_checkpoint: the newest step saved (all saved states are finite).
      skips: non-finite steps in a row before the window.
      max_skips: the limit of ``"skip"``, or None for ``"stop"``.

    Returns:
      The non-finite steps in a row at the window's end.

    Raises:
      NonFiniteLossError: naming the step and whether the input batch was the cause.
    """
    for offset, metrics in enumerate(window):
        if metrics["finite"] > 0:
            skips = 0
            continue
        skips += 1
        if max_skips is not None and skips < max_skips:
            continue
        step = last_step - len(window) + 1 + offset
        cause = (
            "the input batch contains non-finite values (NaN or Inf): check the data"
            if metrics["finite_input"] < 1
            else "the inputs are finite, so training diverged: lower "
            "optimizer.learning_rate or set optimizer.grad_clip_norm"
        )
        kept = (
            "no checkpoint was written yet"
            if last_checkpoint is None
            else f"the last good checkpoint (step {last_checkpoint}) is intact"
        )
        if max_skips is None:
            what = f"non-finite loss at step {step}"
            hint = " Set nan_policy='skip' to skip such steps instead."
        else:
            what = f"{skips} steps in a row up to step {step} were skipped as non-finite"
            hint = ""
        raise NonFiniteLossError(
            f"{what} (loss={metrics['loss']}, grad_norm={metrics['grad_norm']}): {cause}; "
            f"{kept}.{hint}"
        )
    return skips


def _summarize(window: list[dict[str, float]]) -> dict[str, float]:
    """Means over the finite steps of a logging window, and the count of skipped ones."""
    finite = [m for m in window if m["finite"] > 0]
    summary = (
        {
            name: float(np.mean([m[name] for m in finite]))
            for name in window[0]
            if name not in ("finite", "finite_input")
        }
        if finite
        else {}
    )
    summary["skipped_steps"] = float(len(window) - len(finite))
    return summary


def _resume(
    config: ml_collections.ConfigDict,
    workdir: epath.Path,
    state: TrainState,
    train_iter: Any,
) -> tuple[TrainState, Any]:
    """The newest intact state of the run in ``workdir`` (``state`` for a new run) and
    the run's checkpoint manager; the iterator's position is restored in place.

    Raises:
      errors.ConfigError: ``config`` differs from the run's ``config.json`` in more than
        ``checkpointing.RESUME_SAFE_FIELDS`` and ``config.allow_config_change`` is False.
      errors.CheckpointMismatchError: the checkpoint's arrays do not fit ``config``.
      Both leave every file as it was.
    """
    directory = workdir / "checkpoints"
    has_steps = directory.exists() and any(p.name.isdigit() for p in directory.iterdir())
    stored = workdir / "config.json"
    if has_steps and stored.exists() and not config.allow_config_change:
        changes = checkpointing.config_changes(
            json.loads(stored.read_text(encoding="utf-8")),
            json.loads(config.to_json_best_effort()),
        )
        if changes:
            raise errors.ConfigError(
                f"the config differs from the run's {stored} in {len(changes)} field(s): "
                f"{'; '.join(changes[:3])}{'; …' if len(changes) > 3 else ''}. Nothing was "
                "changed: use another --workdir, resume with the run's own config, or set "
                "--config.allow_config_change=True to resume with this one"
            )
    manager = checkpointing.create_checkpoint_manager(
        directory, max_to_keep=config.max_checkpoints_to_keep
    )
    try:
        restored = checkpointing.restore_latest(manager, state, train_iter) if has_steps else None
    except BaseException:
        manager.close()
        raise
    return (state if restored is None else restored), manager


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint, and
    evaluates every ``eval_every_steps`` and at the end.

    Args:
      config: the experiment (see ``configs/default.py``).
      workdir: the run directory: ``checkpoints/``, ``tensorboard/``, ``metrics.jsonl``,
        ``config.json``, ``eval/step_<N>.json`` and figures.

    Returns:
      The evaluation metrics of the final model (see ``evaluation.evaluate_run``).

    Raises:
      NonFiniteLossError: a step's loss is not finite and ``nan_policy == "stop"``, or
        ``max_consecutive_skips`` steps in a row were with ``"skip"``; the checkpoints
        written before it are kept (only finite states are ever saved).
      errors.ConfigError: the config does not fit the run in ``workdir`` (see
        ``_resume``); nothing in ``workdir`` is changed.
    """
    workdir = epath.Path(workdir)
    num_devices = jax.device_count()
    num_classes = data.num_classes(config.dataset)
    check_config(config, num_devices=num_devices, num_classes=num_classes)
    mesh = data_mesh()

    learning_rate_fn = optimizers.create_learning_rate_schedule(
        config.optimizer, num_train_steps=config.num_train_steps
    )
    train_source = data.create_source(config.dataset, "train")
    if jax.process_index() == 0:
        plan = reporting.format_plan(
            config,
            num_images=len(train_source),
            num_classes=num_classes,
            num_devices=num_devices,
            num_processes=jax.process_count(),
        )
        print(plan, flush=True)
    train_iter = data.create_iterator(
        train_source,
        config.dataset,
        global_batch_size=config.batch_size,
        seed=config.seed,
        train=True,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        # Offline triplet mining trains on each mined batch until the next refresh.
        repeat_batches=objectives.held_batches(config.loss),
        normalize_images=False,  # uint8 to the devices; train_step normalizes them
    )
    eval_data = load_eval_data(config)

    model = training_model(config)
    state = create_train_state(
        config,
        model,
        jax.random.PRNGKey(config.seed),
        num_classes=num_classes,
        image_shape=image_shape(config),
        learning_rate_fn=learning_rate_fn,
    )
    # config.init_from: start from a converted or trained backbone (fresh head/optimizer);
    # a checkpoint of this run, restored below, takes precedence.
    if config.init_from:
        state = weights.init_from(state, config.init_from)
        logging.info("Initialized the backbone from %s.", config.init_from)
    state_specs = state_partition_specs(state, class_sharded=is_class_sharded(config))
    state = jax.device_put(state, jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs))

    # Nothing is written before this point, so a failed start leaves the workdir as it was.
    state, manager = _resume(config, workdir, state, train_iter)
    start_step = int(state.step)
    last_checkpoint = manager.latest_step()
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2), encoding="utf-8")
        if start_step:
            print(f"Resumed from the checkpoint of step {start_step} in {workdir}.", flush=True)
    best = _previous_best(workdir, list(eval_data.get("targets", {})), up_to=start_step)

    p_train_step = parallelize_train_step(
        functools.partial(
            train_step,
            model=model,
            config=config,
            learning_rate_fn=learning_rate_fn,
            num_devices=num_devices,
        ),
        parallelism=config.parallelism,
        mesh=mesh,
        state_specs=state_specs,
    )

    writer = reporting.MetricWriter(workdir)
    progress = reporting.ProgressBar(
        total=config.num_train_steps, initial=start_step, batch_size=config.batch_size
    )
    window: list[dict[str, jax.Array]] = []
    skips, replaced = 0, 0
    max_skips = config.max_consecutive_skips if config.nan_policy == "skip" else None
    try:
        for step in range(start_step + 1, config.num_train_steps + 1):
            batch = next(train_iter)
            # Records that did not decode, replaced (dataset.on_error="skip").
            replaced += int(np.sum(batch.pop("replaced", 0)))
            batch = shard_batch(batch, parallelism=config.parallelism, mesh=mesh)
            state, metrics = p_train_step(state, batch)
            window.append(metrics)

            is_last = step == config.num_train_steps
            save = is_last or step % config.checkpoint_every_steps == 0
            run_eval = is_last or step % config.eval_every_steps == 0
            if not (save or run_eval or step % config.log_every_steps == 0):
                continue
            host_window, window = jax.device_get(window), []
            skips = _raise_if_non_finite(
                host_window,
                last_step=step,
                last_checkpoint=last_checkpoint,
                skips=skips,
                max_skips=max_skips,
            )
            summary = _summarize(host_window)
            summary["replaced_records"], replaced = float(replaced), 0
            summary["steps_per_second"] = progress.update(step, summary.get("loss", np.nan))
            writer.write_scalars(step, "train", summary)
            if save:
                checkpointing.save_checkpoint(manager, step, state, train_iter)
                last_checkpoint = step
            if run_eval:
                eval_metrics = evaluate(config, state, eval_data, workdir=workdir, step=step)
                _update_best(eval_metrics, best)
                writer.write_scalars(step, "eval", eval_metrics)
                protocol = config.eval.threshold
                progress.write(
                    reporting.format_targets(
                        eval_metrics,
                        best,
                        step=step,
                        protocol=protocol,
                        n_folds=config.eval.n_folds,
                    )
                )
                logging.info("Evaluation at step %d: %s", step, eval_metrics)
        if start_step >= config.num_train_steps:
            eval_metrics = evaluate(config, state, eval_data, workdir=workdir, step=start_step)
            _update_best(eval_metrics, best)
    finally:
        progress.close()
        writer.close()
        manager.wait_until_finished()
        manager.close()
    return eval_metrics
