"""The geometry of an angular embedding: ArcFace's intra- and inter-class angles.

Deng et al., "ArcFace", CVPR 2019, Sec. 3 ("Comparison with other losses"), define

    L_Intra = (1/(πN)) Σ_i θ_{y_i},          θ_{y_i} = ∠(x_i, W_{y_i}),
    L_Inter = −(1/(πC(C−1))) Σ_{i≠j} arccos(Ŵ_iᵀŴ_j),

the mean angle of each sample to its own class centre, and minus the mean angle
between pairs of distinct class centres, both as fractions of π. A margin loss
lowers L_Intra (tighter classes) and L_Inter (centres further apart).
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from faceloss_jax.losses import _validation, engine


def intra_angle(embeddings: ArrayLike, weights: ArrayLike, labels: ArrayLike) -> jax.Array:
    """ArcFace's L_Intra: the mean angle between x_i and its class centre, over π.

    Args:
      embeddings: (B, d) features.
      weights: (d, C) class centres.
      labels: (B,) integer class ids.

    Returns:
      A scalar in [0, 1].

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> w = jnp.array([[1.0, 1.0], [0.0, 1.0]])  # centres at 0 and π/4
      >>> round(float(intra_angle(x, w, jnp.array([0, 1]))), 4)  # (0 + 1/4)/2
      0.125
    """
    _validation.check_embeddings_labels(embeddings, labels, name="intra_angle")
    _validation.check_rank(weights, 2, what="weights (d, C)", name="intra_angle")
    _validation.check_labels_in_range(labels, jnp.shape(weights)[1], name="intra_angle")
    w_y = jnp.take(jnp.asarray(weights), jnp.asarray(labels), axis=1).T
    return jnp.mean(engine.safe_arccos(engine.cosine(jnp.asarray(embeddings), w_y))) / jnp.pi


def inter_angle(weights: ArrayLike) -> jax.Array:
    """ArcFace's L_Inter: minus the mean angle between distinct class centres, over π.

    Args:
      weights: (d, C) class centres, C ≥ 2.

    Returns:
      A scalar in [−1, 0]; −0.5 for orthogonal centres.

    Example:
      >>> import jax.numpy as jnp
      >>> float(inter_angle(jnp.eye(3)))
      -0.5
    """
    _validation.check_rank(weights, 2, what="weights (d, C)", name="inter_angle")
    num_classes = jnp.shape(weights)[1]
    if num_classes < 2:
        raise ValueError(f"inter_angle: needs at least 2 classes, got {num_classes}")
    w = jnp.asarray(weights)
    w = engine.l2_normalize(w, axis=0)
    angles = engine.safe_arccos(w.T @ w)
    off_diagonal = ~jnp.eye(num_classes, dtype=bool)
    return -jnp.sum(jnp.where(off_diagonal, angles, 0.0)) / (
        jnp.pi * num_classes * (num_classes - 1)
    )
