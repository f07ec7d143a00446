"""What a run carries and where it lives: the train state, its creation and restore,
and its layout over the ``"data"`` axis.

The state is replicated, but for the classifier's columns when ``config.loss.class_sharded``
(the Partial FC layout: W (d, C) split by columns, ``P(None, "data")``). The gradient's
average over the devices and its global norm (for clipping) follow the same layout.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import linen as nn
from flax.training import train_state
from jax.sharding import PartitionSpec as P

from faceloss_jax import data, errors, models
from faceloss_jax.train_lib import checkpointing, objectives, optimizers

DATA_AXIS = "data"


class TrainState(train_state.TrainState):
    """Everything a run needs to continue: ``params = {"backbone", "head"}`` (the head
    holds the classifier W), optimizer state, BatchNorm statistics, the state of the
    loss (center-loss centres) and the PRNG key (dropout keys are folded from it)."""

    batch_stats: Any
    loss_state: Any
    rng: jax.Array


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
            global_norm=functools.partial(global_norm, class_sharded=is_class_sharded(config)),
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


def is_sharded_leaf(path: tuple, leaf: Any, class_sharded: bool) -> bool:
    """Whether a leaf is a column block of the classifier: the head's weights and
    bias, and their optimizer moments (which sit under the same keys)."""
    keys = [getattr(k, "key", None) for k in path]
    return class_sharded and len(keys) >= 2 and keys[-2] == "head" and np.ndim(leaf) >= 1


def state_partition_specs(state: TrainState, *, class_sharded: bool) -> TrainState:
    """PartitionSpecs of the state: replicated, but for the classifier's columns
    (``P(None, "data")`` for W (d, C), ``P("data")`` for the bias) when class-sharded."""

    def spec(path, leaf):
        if is_sharded_leaf(path, leaf, class_sharded):
            return P(*(None,) * (np.ndim(leaf) - 1), DATA_AXIS)
        return P()

    return jax.tree_util.tree_map_with_path(spec, state)


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """The (H, W, C) of the backbone's inputs: ``config.dataset``'s image size and channels."""
    size = config.dataset.image_size
    return (size, size, config.dataset.channels)


def average_gradients(grads: Any, *, class_sharded: bool) -> Any:
    """The gradient of the global mean loss from each device's gradient.

    Data-parallel: ``grads`` is each device's gradient of its own mean loss; the result
    is their mean (``pmean``). Class-sharded: ``grads`` is each device's gradient of its
    loss divided by the number of devices n (see ``gradient_scale``). A device's
    column block then already holds the gradient of the global mean (the all-gather
    and the psum of the normalizer transpose to sums over the devices' losses), and
    the replicated parameters take the sum (``psum``). Scaling the loss, a scalar,
    rather than the column blocks' gradient keeps XLA from materializing a second
    (d, C/n) array beside it (measured on XLA:CPU: 0.7 of a block of temporaries).
    """

    def average(path, grad):
        if is_sharded_leaf(path, grad, class_sharded):
            return grad
        return jax.lax.psum(grad, DATA_AXIS) if class_sharded else jax.lax.pmean(grad, DATA_AXIS)

    return jax.tree_util.tree_map_with_path(average, grads)


def gradient_scale(*, class_sharded: bool, num_devices: int) -> float:
    """The factor of the loss each device differentiates: 1/n class-sharded, else 1
    (``average_gradients``)."""
    return 1.0 / num_devices if class_sharded else 1.0


def global_norm(grads: Any, *, class_sharded: bool) -> jax.Array:
    """The L2 norm of the whole gradient, summing the squares of sharded columns."""
    squares = jax.tree_util.tree_map_with_path(
        lambda path, g: (
            jax.lax.psum(jnp.sum(jnp.square(g)), DATA_AXIS)
            if is_sharded_leaf(path, g, class_sharded)
            else jnp.sum(jnp.square(g))
        ),
        grads,
    )
    return jnp.sqrt(sum(jax.tree.leaves(squares)))
