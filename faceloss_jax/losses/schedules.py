"""Schedules for the weights of losses, as optax schedules (step -> value).

A loss weight in this library is either a number or an optax schedule; ``weight_at``
reads either at a step, so a joint loss is plain arithmetic on pure functions:

    >>> import jax, jax.numpy as jnp, optax
    >>> from faceloss_jax import losses
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
    >>> w = jax.random.normal(jax.random.PRNGKey(1), (2, 4))
    >>> y = jnp.array([0, 1, 2, 3, 0, 1, 2, 3])
    >>> centers = jnp.zeros((4, 2))
    >>> # Center loss (Wen et al. 2016): softmax + λ·center, λ = 0.003.
    >>> joint = (losses.softmax_cross_entropy(x, w, y)
    ...          + 0.003 * losses.center_loss(x, centers, y)).mean()
    >>> # DeepID2 (Sun et al. 2014): identification + λ·verification, λ ramped up.
    >>> lam = optax.linear_schedule(0.0, 0.05, transition_steps=1000)
    >>> step = 500
    >>> deepid2 = (losses.softmax_cross_entropy(x, w, y).mean()
    ...            + losses.weight_at(lam, step) * losses.contrastive_loss(x, y))
    >>> bool(jnp.isfinite(joint)), bool(jnp.isfinite(deepid2))
    (True, True)
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike


def lambda_schedule(
    base: float = 1000.0,
    gamma: float = 0.12,
    power: float = 1.0,
    lambda_min: float = 5.0,
) -> optax.Schedule:
    """The λ annealing of L-Softmax and SphereFace: ``max(λ_min, base·(1 + γ·step)^−power)``.

    λ blends the plain target logit into the margin one,
    ``(λ·cos θ + ψ(θ)) / (1 + λ)``, so training starts as a softmax and the margin
    is switched on gradually. The papers' Caffe settings:

    * L-Softmax (Liu et al., ICML 2016), MNIST: base 1000, γ 2.5e-5, power 35,
      λ_min 0 (``lambda_schedule(1000, 2.5e-5, 35, 0)``).
    * SphereFace (Liu et al., CVPR 2017): base 1000, γ 0.12, power 1, λ_min 5
      (the defaults).

    Args:
      base: λ at step 0.
      gamma: the decay rate γ.
      power: the decay power.
      lambda_min: the floor λ_min.

    Returns:
      An optax schedule ``step -> λ``.

    Example:
      >>> schedule = lambda_schedule()
      >>> float(schedule(0)), round(float(schedule(100)), 3), float(schedule(10**6))
      (1000.0, 76.923, 5.0)
    """

    def schedule(step: ArrayLike) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        return jnp.maximum(lambda_min, base * (1.0 + gamma * step) ** (-power))

    return schedule


def weight_at(weight: float | Callable[[ArrayLike], ArrayLike], step: ArrayLike) -> ArrayLike:
    """The value of a loss weight at ``step``: a constant, or an optax schedule called.

    Example:
      >>> weight_at(0.5, 10), float(weight_at(lambda_schedule(), 0))
      (0.5, 1000.0)
    """
    return weight(step) if callable(weight) else weight
