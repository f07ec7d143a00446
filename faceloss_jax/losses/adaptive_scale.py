"""AdaCos (Zhang et al., CVPR 2019): NormFace with an adaptive scale, no margin.

The fixed scale ``s̃ = √2·ln(C − 1)``, or the dynamic one moved every step from the
batch's median target angle and the average non-target sum (``adacos_dynamic_scale``,
an explicit state). All layouts, as ``losses.normface``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from faceloss_jax.losses import _common, _validation, engine
from faceloss_jax.losses import hyperparameters as hp
from faceloss_jax.losses.record import Objective, StateRule


def adacos_fixed_scale(num_classes: int) -> float:
    """AdaCos's fixed scale ``s̃_f = √2·ln(C − 1)`` (Zhang et al., CVPR 2019, Eq. 13).

    Example:
      >>> round(adacos_fixed_scale(10_000), 3)
      13.025
    """
    if num_classes < 3:
        raise ValueError(
            f"adacos_fixed_scale: needs at least 3 classes (the scale is "
            f"√2·ln(C − 1)), got {num_classes}"
        )
    return math.sqrt(2.0) * math.log(num_classes - 1)


def adacos(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    scale: float | jax.Array | None = None,
    chunk_size: int | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    """AdaCos: the NormFace loss at an adaptive scale, with no margin.

    Zhang et al., "AdaCos: Adaptively Scaling Cosine Logits for Effectively Learning
    Deep Face Representations", CVPR 2019. Logits ``s̃·cos θ_j``; ``scale=None`` is
    the fixed AdaCos, ``s̃ = √2·ln(C − 1)`` (``adacos_fixed_scale``, C counting every
    class, on all devices under ``class_axis_name``); the dynamic AdaCos passes the
    state ``scale`` moved each step by ``adacos_dynamic_scale``. With Partial FC
    sampling (``losses.sample_classes``) W holds the sampled columns only: pass
    ``scale=adacos_fixed_scale(C)`` of the full C.

    Args:
      embeddings: (B, d) features.
      weights: (d, C) class centres.
      labels: (B,) integer class ids.
      scale: the scale s̃ (a float or a traced scalar), or None for the fixed one.
      chunk_size: see ``losses.softmax_cross_entropy``.
      axis_name: see ``losses.softmax_cross_entropy``.
      class_axis_name: see ``losses.softmax_cross_entropy``.

    Returns:
      Per-example losses (B,), float32.

    Example:
      >>> import jax.numpy as jnp
      >>> x, w, y = jnp.eye(3), jnp.eye(3), jnp.array([0, 1, 2])
      >>> loss = adacos(x, w, y)  # s̃ = √2·ln 2 ≈ 0.98
      >>> [round(float(v), 4) for v in loss]
      [0.5599, 0.5599, 0.5599]
    """
    if scale is None:
        _validation.check_rank(weights, 2, what="weights (d, C)", name="adacos")
        shards = 1 if class_axis_name is None else lax.axis_size(class_axis_name)
        scale = adacos_fixed_scale(jnp.shape(weights)[1] * shards)
    return engine.margin_softmax(
        embeddings,
        weights,
        labels,
        name="adacos",
        scale=scale,
        margin_fn=lambda cos: cos,
        chunk_size=chunk_size,
        axis_name=axis_name,
        class_axis_name=class_axis_name,
    )


def adacos_dynamic_scale(
    scale: ArrayLike,
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    """The dynamic AdaCos scale of the next step, from the batch and the current one.

    Zhang et al., CVPR 2019, Eqs. 15–16:

        s̃⁽ᵗ⁾ = ln B_avg⁽ᵗ⁾ / cos(min(π/4, θ_med⁽ᵗ⁾)),
        B_avg⁽ᵗ⁾ = (1/N) Σ_i Σ_{j≠y_i} exp(s̃⁽ᵗ⁻¹⁾·cos θ_ij),

    θ_med the median of the target angles θ_{i,y_i} of the batch (the mean of the
    two middle ones for an even batch). Start from ``adacos_fixed_scale(C)``; the
    reference implementation computes the new scale first and uses it in the same
    step. With ``axis_name`` the batch is gathered, and with ``class_axis_name``
    the sums over classes are combined across the shards of W, so the scale is that
    of the global batch and all classes, the same on every device. Each device
    holds the cosines of the (gathered) batch with its classes at once.

    Args:
      scale: the current scale s̃⁽ᵗ⁻¹⁾ (scalar).
      embeddings: (B, d) features (this device's part under ``axis_name``).
      weights: (d, C) class centres (this device's block under ``class_axis_name``).
      labels: (B,) integer class ids.
      axis_name: data-parallel axis, or None.
      class_axis_name: class-sharded axis, or None.

    Returns:
      The new scale (scalar, float32), with the gradient stopped.

    Example:
      >>> import jax.numpy as jnp
      >>> x, w, y = jnp.eye(3), jnp.eye(3), jnp.array([0, 1, 2])
      >>> s = adacos_dynamic_scale(adacos_fixed_scale(3), x, w, y)
      >>> round(float(s), 4)  # ln(2·e^0) / cos(0): cos θ_j = 0, θ_med = 0
      0.6931
    """
    name = "adacos_dynamic_scale"
    _validation.check_head_inputs(
        name, embeddings, weights, labels, class_axis_name=class_axis_name
    )
    x, y, w = jnp.asarray(embeddings), jnp.asarray(labels), jnp.asarray(weights)
    if axis_name is not None:
        x, y = (lax.all_gather(a, axis_name, tiled=True) for a in (x, y))
    cos = lax.stop_gradient(_common.unit_cosines(x, w))
    offset = 0 if class_axis_name is None else engine.axis_index(class_axis_name) * w.shape[1]
    is_target = y[:, None] == offset + jnp.arange(w.shape[1])
    lse = jax.nn.logsumexp(jnp.where(is_target, -jnp.inf, jnp.asarray(scale, cos.dtype) * cos))
    cos_y = jnp.sum(jnp.where(is_target, cos, 0.0), axis=1)
    if class_axis_name is not None:
        top = lax.pmax(lse, class_axis_name)
        lse = top + jnp.log(lax.psum(jnp.exp(lse - top), class_axis_name))
        cos_y = lax.psum(cos_y, class_axis_name)
    theta_med = jnp.median(jnp.arccos(cos_y))
    log_b_avg = lse - math.log(y.shape[0])
    return lax.stop_gradient(log_b_avg / jnp.cos(jnp.minimum(math.pi / 4, theta_med)))


# ----------------------------------------------------------------------------------
# The records (``train_lib.objectives`` collects them; defaults: the signatures above).
# ----------------------------------------------------------------------------------


def _scale_init(*, config, num_classes) -> dict[str, jax.Array]:
    if not config.dynamic:
        return {}
    return {"scale": jnp.asarray(adacos_fixed_scale(num_classes), jnp.float32)}


def _scale_before(*, config, state, embeddings, weights, labels, axis_name, class_axis_name):
    if not config.dynamic:
        return state, {}
    scale = adacos_dynamic_scale(
        state["scale"],
        embeddings,
        weights,
        labels,
        axis_name=axis_name,
        class_axis_name=class_axis_name,
    )
    return {"scale": scale}, {"scale": scale}


RECORDS = {
    "adacos": Objective(
        adacos,
        "AdaCos (Zhang et al., CVPR 2019)",
        {"dynamic": hp.boolean("the dynamic scale (else fixed)", default=True)},
        family="successor",
        state=StateRule(init=_scale_init, before=_scale_before),
    ),
}
