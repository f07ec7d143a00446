"""Optax optimizers and learning-rate schedules built from ``config.optimizer``.

The recipes of the face recognition papers: SGD with momentum 0.9 and weight decay
5e-4 on the weights only (SphereFace, CosFace, ArcFace), a linear warmup, then a step
(divide by 10 at fixed iterations), cosine or polynomial decay; AdamW for quick
experiments.
"""

from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import optax

from faceloss_jax.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "step", "polynomial")


CLIP_SCOPES = ("global", "backbone")


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
      num_train_steps: the length of the run; the decay ends there.

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


def create_optimizer(
    config: ml_collections.ConfigDict, learning_rate: optax.Schedule
) -> optax.GradientTransformation:
    """The optimizer that ``config.name`` names, with decay on ``decay_mask`` only
    (every parameter with ``config.decay_all``, as arcface_torch's SGD), accumulating
    ``config.grad_accum_steps`` micro-batches per update (``optax.MultiSteps``: the mean
    of their gradients, the update of one batch that many times larger).

    ``sgd``: PyTorch's SGD, ``v ← μv + (g + λw)``, ``w ← w − η·v`` (``nesterov``
    optional); ``adamw``: decoupled weight decay (Loshchilov & Hutter, ICLR 2019).
    Gradient clipping (``grad_clip_norm``) is done by the train step, which knows the
    norm of a gradient whose classifier columns are sharded over devices.

    Args:
      config: the optimizer config: ``name`` in ``OPTIMIZERS``, ``weight_decay``,
        ``decay_all``, ``grad_accum_steps``; ``momentum``, ``nesterov`` (sgd); ``b1``,
        ``b2``, ``eps`` (adamw).
      learning_rate: a schedule (see ``create_learning_rate_schedule``).

    Returns:
      An optax gradient transformation.

    Raises:
      ValueError: for an unknown name.
    """
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
    accumulate = config.get("grad_accum_steps", 1)
    if not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(
            f"config.optimizer.grad_accum_steps = {accumulate!r} is out of range; valid: an "
            "integer ≥ 1"
        )
    return tx if accumulate == 1 else optax.MultiSteps(tx, every_k_schedule=accumulate)
