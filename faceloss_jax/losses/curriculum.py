"""CurricularFace (Huang et al., CVPR 2020): ArcFace's target, re-weighted hard negatives.

Target ``s·cos(θ_y + m)``; a negative harder than the target boundary,
``cos θ_j > cos(θ_y + m)``, gets ``s·cos θ_j·(t + cos θ_j)``, with t the EMA of the
mean target cosine (``curricularface_update_t``), an explicit state. Dense only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from faceloss_jax.losses import _common, _validation, angular
from faceloss_jax.losses import hyperparameters as hp
from faceloss_jax.losses.record import Objective, StateRule


def curricularface(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    t: ArrayLike,
    *,
    scale: float = 64.0,
    margin: float = 0.5,
    chunk_size: None = None,
    axis_name: None = None,
    class_axis_name: None = None,
) -> jax.Array:
    """CurricularFace: ArcFace whose hard negatives weigh more as training advances.

    Huang et al., "CurricularFace: Adaptive Curriculum Learning Loss for Deep Face
    Recognition", CVPR 2020 (s = 64, m = 0.5). The target logit is ArcFace's
    ``s·cos(θ_y + m)`` (with its fallback past π); a negative class j is hard when
    ``cos θ_j > cos(θ_y + m)`` and its logit becomes ``s·cos θ_j·(t + cos θ_j)``,
    the others stay ``s·cos θ_j`` (Eq. 7). t, the running mean of the target cosine
    (``curricularface_update_t``), starts at 0, so early on hard negatives weigh less
    (easy samples first) and later more. The hard-negative mask carries no gradient,
    as in the official code.

    Dense only (the hard negatives change the other logits).

    Args:
      embeddings: (B, d) features.
      weights: (d, C) class centres.
      labels: (B,) integer class ids.
      t: the scalar state t; update it first with ``curricularface_update_t`` to
        follow the official code, which uses the new t in the same step.
      scale: the scale s.
      margin: the angular margin m in radians.
      chunk_size: not supported (must be None).
      axis_name: not supported (must be None).
      class_axis_name: not supported (must be None).

    Returns:
      Per-example losses (B,), float32.

    Example:
      >>> import jax.numpy as jnp
      >>> x, w, y = jnp.eye(2), jnp.eye(2), jnp.array([0, 1])
      >>> t = curricularface_update_t(0.0, x, w, y)  # 0.01 · mean cos θ_y = 0.01
      >>> loss = curricularface(x, w, y, t, scale=1.0, margin=0.0)
      >>> [round(float(v), 4) for v in loss]
      [0.3133, 0.3133]
    """
    name = "curricularface"
    _common.reject_layouts(name, chunk_size, axis_name, class_axis_name)
    _validation.check_head_inputs(name, embeddings, weights, labels)
    labels = jnp.asarray(labels)
    cos = _common.unit_cosines(embeddings, weights)
    cos_y = jnp.take_along_axis(cos, labels[:, None], axis=1)[:, 0]
    target = scale * angular.additive_angular_margin(cos_y, margin)
    boundary = lax.stop_gradient(angular.combined_angular_margin(cos_y, 1.0, margin, 0.0))
    hard = cos > boundary[:, None]
    others = scale * jnp.where(hard, cos * (jnp.asarray(t, cos.dtype) + cos), cos)
    return _common.cross_entropy(target, others, labels)


def curricularface_update_t(
    t: ArrayLike,
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: float = 0.01,
    axis_name: str | None = None,
) -> jax.Array:
    """CurricularFace's state: ``t ← alpha·r + (1 − alpha)·t``, r the mean cos θ_y.

    Huang et al., CVPR 2020, Eq. 10, with the official code's weights (0.01 on the
    batch); t starts at 0. With ``axis_name`` r is the mean over the global batch.

    Args:
      t: the scalar state.
      embeddings: (B, d) features.
      weights: (d, C) class centres.
      labels: (B,) integer class ids.
      alpha: the weight of the batch's mean target cosine.
      axis_name: a device axis to average over, or None.

    Returns:
      The new t (scalar, float32), with the gradient stopped.
    """
    name = "curricularface_update_t"
    _common.check_alpha(name, alpha)
    _validation.check_head_inputs(name, embeddings, weights, labels)
    cos_y = _common.target_cosines(embeddings, weights, labels)
    total = _common.global_sum(jnp.sum(cos_y), axis_name)
    count = _common.global_sum(jnp.asarray(cos_y.shape[0], cos_y.dtype), axis_name)
    return _common.ema(t, total / count, alpha)


# ----------------------------------------------------------------------------------
# The records (``train_lib.objectives`` collects them; defaults: the signatures above).
# ----------------------------------------------------------------------------------


def _t_init() -> dict[str, jax.Array]:
    return {"t": jnp.zeros((), jnp.float32)}


def _t_before(*, config, state, embeddings, weights, labels, axis_name):
    t = curricularface_update_t(
        state["t"], embeddings, weights, labels, alpha=config.alpha, axis_name=axis_name
    )
    return {"t": t}, {"t": t}


RECORDS = {
    "curricularface": Objective(
        curricularface,
        "CurricularFace (Huang et al., CVPR 2020)",
        {
            "scale": hp.SCALE,
            "margin": hp.ARC_MARGIN,
            "alpha": hp.real("EMA rate of t", low=0.0, high=1.0, read_by=curricularface_update_t),
        },
        layouts=frozenset(),
        family="successor",
        state=StateRule(init=_t_init, before=_t_before),
    ),
}
