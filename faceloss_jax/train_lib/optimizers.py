"""Optax optimizers and learning-rate schedules built from ``config.optimizer``.

The recipes of the face recognition papers: SGD with momentum 0.9 and weight decay
5e-4 on the weights only (SphereFace, CosFace, ArcFace), a linear warmup, then a step
(divide by 10 at fixed iterations), cosine or polynomial decay; AdamW for quick
experiments.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from faceloss_jax.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "step", "polynomial")


CLIP_SCOPES = ("global", "backbone")
# How optax.MultiSteps combines the micro-batches' gradients: their "mean" (the update of
# one batch that many times larger) or their "sum" (arcface_torch's train_v2.py, whose
# loss.backward() accumulates each micro-batch's gradient unscaled).
ACCUMULATIONS = ("mean", "sum")


def decay_mask(params: Any) -> Any:
    """True for the parameters that take weight decay: kernels and class centres.

    Biases, batch-norm scales and offsets and PReLU slopes are 1-D (or scalars) and are
    not decayed, as in big_vision's default; convolution and dense kernels and the
    classifier W (d, C) are. (arcface_torch decays every parameter: ``decay_all``.)

    Args:
      params: a pytree of arrays.

    Returns:
      A pytree of bools of the same structure.
    """
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _decay_schedule(config: ml_collections.ConfigDict, decay_steps: int) -> optax.Schedule:
    """The schedule after warmup, from ``config.learning_rate`` over ``decay_steps``."""
    base = config.learning_rate
    if config.schedule == "constant":
        return optax.constant_schedule(base)
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(base, decay_steps, alpha=config.end_learning_rate_factor)
    if config.schedule == "polynomial":
        return optax.polynomial_schedule(
            base, base * config.end_learning_rate_factor, config.power, decay_steps
        )
    # "step": boundaries are absolute training steps, shifted by the warmup below.
    boundaries = _check_boundaries(config.boundaries, config.warmup_steps, decay_steps)
    return optax.piecewise_constant_schedule(
        base, {b - config.warmup_steps: config.decay_factor for b in boundaries}
    )


def _check_boundaries(boundaries: Sequence[int], warmup_steps: int, decay_steps: int) -> tuple:
    boundaries = tuple(boundaries)
    end = warmup_steps + decay_steps
    if (
        not boundaries
        or list(boundaries) != sorted(boundaries)
        or not all(warmup_steps < b < end for b in boundaries)
    ):
        raise ConfigError(
            f"optimizer.boundaries must be increasing steps strictly between the end of "
            f"warmup ({warmup_steps}) and num_train_steps ({end}); got {boundaries}"
        )
    return boundaries


def create_learning_rate_schedule(
    config: ml_collections.ConfigDict, *, num_train_steps: int
) -> optax.Schedule:
    """Linear warmup from 0 over ``warmup_steps``, then the decay that ``schedule`` names.

    Args:
      config: the optimizer config: ``learning_rate``, ``schedule`` in ``SCHEDULES``,
        ``warmup_steps``; ``end_learning_rate_factor`` (cosine, polynomial: the final
        rate as a fraction of the base rate), ``power`` (polynomial), ``boundaries``
        (step: absolute steps) and ``decay_factor`` (step: the rate is multiplied by it
        at each boundary).
      num_train_steps: the length of the run in micro-batches (as ``warmup_steps``);
        the decay ends there. With accumulation, ``rate_of_update`` maps updates to it.

    Returns:
      An optax schedule ``step -> learning rate``.

    Raises:
      ValueError: for an unknown schedule, a warmup not shorter than the run, or step
        boundaries outside the run.
    """
    if config.schedule not in SCHEDULES:
        raise ConfigError(
            f"unknown optimizer.schedule {config.schedule!r}; valid: {', '.join(SCHEDULES)}"
        )
    if not 0 <= config.warmup_steps < num_train_steps:
        raise ConfigError(
            f"optimizer.warmup_steps must be in [0, num_train_steps={num_train_steps}); "
            f"got {config.warmup_steps}"
        )
    decay = _decay_schedule(config, num_train_steps - config.warmup_steps)
    if config.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def clip_by_global_norm(
    max_norm: float,
    *,
    scope: str = "global",
    global_norm: Callable[[Any], jax.Array] = optax.global_norm,
) -> optax.GradientTransformation:
    """Scales the gradient to norm ≤ ``max_norm``, PyTorch's ``clip_grad_norm_``: the
    factor is ``min(1, max_norm / (norm + 1e-6))``.

    Args:
      max_norm: the largest norm let through.
      scope: "global" (the whole gradient) or "backbone" (the ``"backbone"`` subtree
        alone, the head unclipped: arcface_torch's
        ``clip_grad_norm_(backbone.parameters(), 5)``).
      global_norm: the norm of a gradient pytree; the train step passes one that sums
        the squares of class-sharded columns over the devices.

    Returns:
      A stateless optax transformation; chained inside ``optax.MultiSteps`` it clips the
      accumulated gradient once, at the update.

    Example:
      >>> tx = clip_by_global_norm(5.0, scope="backbone")
    """
    if scope not in CLIP_SCOPES:
        raise ConfigError(
            f"unknown optimizer.clip_scope {scope!r}; valid: {', '.join(CLIP_SCOPES)}"
        )

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple:
        del params
        clipped = {"backbone": updates["backbone"]} if scope == "backbone" else updates
        factor = jnp.minimum(1.0, max_norm / (global_norm(clipped) + 1e-6))
        clipped = jax.tree.map(lambda g: g * factor, clipped)
        return ({**updates, **clipped} if scope == "backbone" else clipped), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def rate_of_update(learning_rate: optax.Schedule, accumulate: int) -> optax.Schedule:
    """The schedule of optimizer updates from one of micro-batches: update ``u`` takes
    the rate of micro-batch ``(u + 1)·k − 1``, the one that completes it, as
    arcface_torch's scheduler (stepped every micro-batch) gives it."""
    if accumulate == 1:
        return learning_rate
    return lambda update: learning_rate((update + 1) * accumulate - 1)


def _accumulation(config: ml_collections.ConfigDict) -> tuple[int, str]:
    """``(grad_accum_steps, grad_accum_reduction)``, checked."""
    accumulate = config.get("grad_accum_steps", 1)
    if not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(
            f"config.optimizer.grad_accum_steps = {accumulate!r} is out of range; valid: an "
            "integer ≥ 1"
        )
    reduction = config.get("grad_accum_reduction", "mean")
    if reduction not in ACCUMULATIONS:
        raise ConfigError(
            f"unknown optimizer.grad_accum_reduction {reduction!r}; valid: "
            f"{', '.join(ACCUMULATIONS)}"
        )
    return accumulate, reduction


def create_optimizer(
    config: ml_collections.ConfigDict,
    learning_rate: optax.Schedule,
    *,
    global_norm: Callable[[Any], jax.Array] = optax.global_norm,
) -> optax.GradientTransformation:
    """The optimizer that ``config.name`` names, with decay on ``decay_mask`` only
    (every parameter with ``config.decay_all``, as arcface_torch's SGD), accumulating
    ``config.grad_accum_steps`` micro-batches per update (``optax.MultiSteps``: the mean
    of their gradients, or their sum with ``grad_accum_reduction="sum"``).

    The update is arcface_torch's (``train_v2.py``): the accumulated gradient is clipped
    to ``grad_clip_norm`` (``clip_by_global_norm`` in ``clip_scope``) once, then decayed
    and stepped; ``sgd``: PyTorch's SGD, ``v ← μv + (g + λw)``, ``w ← w − η·v``
    (``nesterov`` optional); ``adamw``: decoupled weight decay (Loshchilov & Hutter,
    ICLR 2019). ``learning_rate`` counts micro-batches (see ``rate_of_update``).

    Args:
      config: the optimizer config: ``name`` in ``OPTIMIZERS``, ``weight_decay``,
        ``decay_all``, ``grad_clip_norm``, ``clip_scope``, ``grad_accum_steps``,
        ``grad_accum_reduction``; ``momentum``, ``nesterov`` (sgd); ``b1``, ``b2``,
        ``eps`` (adamw).
      learning_rate: a schedule of micro-batches (see ``create_learning_rate_schedule``).
      global_norm: the gradient's norm for clipping (see ``clip_by_global_norm``).

    Returns:
      An optax gradient transformation.

    Raises:
      ConfigError: for an unknown name, clip scope or reduction, or a bad
        ``grad_accum_steps``.
    """
    accumulate, reduction = _accumulation(config)
    learning_rate = rate_of_update(learning_rate, accumulate)
    mask = (
        (lambda params: jax.tree.map(lambda _: True, params))
        if config.get("decay_all", False)
        else decay_mask
    )
    if config.name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=mask),
            optax.sgd(learning_rate, momentum=config.momentum, nesterov=config.nesterov),
        )
    elif config.name == "adamw":
        tx = optax.adamw(
            learning_rate,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=mask,
        )
    else:
        raise ConfigError(f"unknown optimizer.name {config.name!r}; valid: {', '.join(OPTIMIZERS)}")
    if config.get("grad_clip_norm") is not None:
        scope = config.get("clip_scope", "global")
        clip = clip_by_global_norm(config.grad_clip_norm, scope=scope, global_norm=global_norm)
        tx = optax.chain(clip, tx)
    if accumulate == 1:
        return tx
    return optax.MultiSteps(tx, every_k_schedule=accumulate, use_grad_mean=reduction == "mean")
