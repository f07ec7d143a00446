"""The train step, written once per device with the named axis ``"data"``, and its
data-parallel wrapping.

It runs either under ``jax.shard_map`` over a 1-D device mesh (the default, and the
recommended path since JAX 0.8) or under ``jax.pmap`` (``config.parallelism``). Both
give the update of the global batch: gradients, metrics and batch statistics are
averaged over the axis, and the result equals a single device fed the whole batch (the
pair and triplet losses mine over the global batch). With ``config.loss.class_sharded``
(shard_map only) the classifier W is split by columns over the devices.

There is one global batch layout for any number of processes: process ``p`` reads the
contiguous block ``p`` of every global batch (``data.create_iterator``) and its devices
are the block ``p`` of the mesh (``data_mesh``), so device ``i`` sees the same examples
on 1 process × 8 devices as on 2 × 4.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from faceloss_jax import data
from faceloss_jax.train_lib import objectives, optimizers, run_state
from faceloss_jax.train_lib.run_state import DATA_AXIS, TrainState

PARALLELISMS = ("shard_map", "pmap")


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
    class_sharded = run_state.is_class_sharded(config)
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
        scale = run_state.gradient_scale(class_sharded=class_sharded, num_devices=num_devices)
        return loss * scale, (loss, embeddings, updates.get("batch_stats", {}), loss_state)

    (_, (loss, embeddings, batch_stats, loss_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True
    )(state.params)
    grads = run_state.average_gradients(grads, class_sharded=class_sharded)
    grad_norm = run_state.global_norm(grads, class_sharded=class_sharded)
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


def create_parallel_train_step(
    model: nn.Module,
    config: ml_collections.ConfigDict,
    learning_rate_fn: optax.Schedule,
    *,
    mesh: Mesh,
    state_specs: TrainState,
    parallelism: str = "shard_map",
) -> Callable:
    """``train_step`` bound to ``model`` and ``config`` and run data-parallel over every
    device of ``mesh`` (``parallelize_train_step``): the step the trainer runs, for
    benchmarks and tests to run the same one."""
    step_fn = functools.partial(
        train_step,
        model=model,
        config=config,
        learning_rate_fn=learning_rate_fn,
        num_devices=mesh.size,
    )
    return parallelize_train_step(
        step_fn, parallelism=parallelism, mesh=mesh, state_specs=state_specs
    )


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
