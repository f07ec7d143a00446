"""Sub-center ArcFace (Deng, Guo, Liu, Zafeiriou, ECCV 2020) and its cleanup.

K sub-centres per class, W (d, C, K); a class's cosine is that of its closest
sub-centre, ``cos θ_j = max_k cos θ_jk``, and ArcFace's margin applies to the target
class: ``s·cos(θ_y + m)`` against ``s·cos θ_j``. Dense only: the max-pooling changes
the non-target logits, so the B×C×K cosines are computed at once (per device under
data parallelism). ``subcenter_cleanup`` keeps each class's dominant sub-centre and
drops the examples far from it (the paper's noisy-data recipe).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from faceloss_jax.losses import _common, _validation, angular
from faceloss_jax.losses import hyperparameters as hp
from faceloss_jax.losses.record import Objective


def _check_subcenters(name: str, embeddings, weights, labels) -> None:
    _validation.check_embeddings_labels(embeddings, labels, name=name)
    _validation.check_rank(weights, 3, what="weights (d, C, K)", name=name)
    if jnp.shape(weights)[0] != jnp.shape(embeddings)[1]:
        raise ValueError(
            f"{name}: weights are (d, C, K) = {jnp.shape(weights)} but embeddings have "
            f"d = {jnp.shape(embeddings)[1]}"
        )
    _validation.check_labels_in_range(labels, jnp.shape(weights)[1], name=name)


def subcenter_arcface(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    scale: float = 64.0,
    margin: float = 0.5,
    easy_margin: bool = False,
    chunk_size: None = None,
    axis_name: None = None,
    class_axis_name: None = None,
) -> jax.Array:
    """Sub-center ArcFace: K centres per class, the closest one counts.

    Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-Scale Noisy
    Web Faces", ECCV 2020 (K = 3, s = 64, m = 0.5). Each class j has K sub-centres
    w_jk; its cosine is the max-pool ``cos θ̂_j = max_k cos θ_jk``, and ArcFace's
    margin applies to the target: logits ``s·cos(θ̂_y + m)`` and ``s·cos θ̂_j``, with
    ArcFace's fallback past π (see ``arcface``). K = 1 is ArcFace. A noisy sample
    can join a non-dominant sub-centre instead of pulling the dominant one; after
    training, ``subcenter_cleanup`` drops them.

    Dense only (the max-pool changes every logit): no ``chunk_size``,
    ``axis_name`` or ``class_axis_name``.

    Args:
      embeddings: (B, d) features.
      weights: (d, C, K) sub-centres; a (d, C·K) matrix reshapes to it with
        ``w.reshape(d, C, K)`` (sub-centres of a class adjacent).
      labels: (B,) integer class ids in [0, C).
      scale: the scale s.
      margin: the angular margin m in radians.
      easy_margin: see ``arcface``.
      chunk_size: not supported (must be None).
      axis_name: not supported (must be None).
      class_axis_name: not supported (must be None).

    Returns:
      Per-example losses (B,), float32.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.stack([jnp.eye(2), -jnp.eye(2)], axis=-1)  # (2, 2, 2)
      >>> x = jnp.array([[-1.0, 0.0], [0.0, 1.0]])  # class 0 at its 2nd sub-centre
      >>> loss = subcenter_arcface(x, w, jnp.array([0, 1]), scale=1.0, margin=0.0)
      >>> [round(float(v), 4) for v in loss]
      [0.3133, 0.3133]
    """
    name = "subcenter_arcface"
    _common.reject_layouts(name, chunk_size, axis_name, class_axis_name)
    _check_subcenters(name, embeddings, weights, labels)
    labels = jnp.asarray(labels)
    cos = jnp.max(_common.unit_cosines(embeddings, weights), axis=-1)
    cos_y = jnp.take_along_axis(cos, labels[:, None], axis=1)[:, 0]
    target = scale * angular.additive_angular_margin(cos_y, margin, easy_margin=easy_margin)
    return _common.cross_entropy(target, scale * cos, labels)


class SubcenterCleanup(NamedTuple):
    """What ``subcenter_cleanup`` returns.

    Attributes:
      keep: (N,) bool, the samples within the angle of their class's dominant
        sub-centre.
      dominant: (C,) int, the index k of each class's dominant sub-centre.
      weights: (d, C) the dominant sub-centres, to retrain from with K = 1.
    """

    keep: jax.Array
    dominant: jax.Array
    weights: jax.Array


def subcenter_cleanup(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    max_angle: float = math.radians(75.0),
) -> SubcenterCleanup:
    """The dominant sub-centres of a trained sub-center ArcFace and the clean samples.

    Deng et al., ECCV 2020, Sec. 3.2: each sample is assigned to the closest
    sub-centre of its own class; a class's dominant sub-centre is the one with most
    samples; samples farther than ``max_angle`` (75° in the paper) from their
    dominant sub-centre are dropped as noise, and the non-dominant sub-centres are
    dropped with them (the model is then fine-tuned with K = 1 on the clean set).

    Args:
      embeddings: (N, d) features of the training set (or of the part of it to
        clean; the counts are those of these samples).
      weights: (d, C, K) trained sub-centres.
      labels: (N,) integer class ids.
      max_angle: the largest angle, in radians, to the dominant sub-centre.

    Returns:
      A ``SubcenterCleanup`` (keep mask, dominant index, dominant sub-centres); the
      cleaned labels are ``jnp.where(keep, labels, -1)``.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.stack([jnp.eye(2), -jnp.eye(2)], axis=-1)  # (2, 2, 2)
      >>> x = jnp.array([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.0]])
      >>> clean = subcenter_cleanup(x, w, jnp.array([0, 0, 0]))
      >>> clean.keep.tolist(), clean.dominant.tolist()
      ([True, True, False], [0, 0])
    """
    name = "subcenter_cleanup"
    _check_subcenters(name, embeddings, weights, labels)
    labels = jnp.asarray(labels)
    num_classes, num_sub = jnp.shape(weights)[1:]
    own = jnp.take_along_axis(
        _common.unit_cosines(embeddings, weights), labels[:, None, None], axis=1
    )[:, 0]  # (N, K)
    counts = jnp.zeros((num_classes, num_sub), jnp.int32).at[labels, jnp.argmax(own, axis=1)].add(1)
    dominant = jnp.argmax(counts, axis=1)
    cos_dominant = jnp.take_along_axis(own, dominant[labels][:, None], axis=1)[:, 0]
    keep = jnp.arccos(cos_dominant) <= max_angle
    dominant_weights = jnp.take_along_axis(jnp.asarray(weights), dominant[None, :, None], axis=2)[
        ..., 0
    ]
    return SubcenterCleanup(keep=keep, dominant=dominant, weights=dominant_weights)


# ----------------------------------------------------------------------------------
# The records (``train_lib.objectives`` collects them; defaults: the signatures above).
# ----------------------------------------------------------------------------------

RECORDS = {
    "subcenter_arcface": Objective(
        subcenter_arcface,
        "sub-center ArcFace (Deng et al., ECCV 2020)",
        {
            "scale": hp.SCALE,
            "margin": hp.ARC_MARGIN,
            "easy_margin": hp.EASY_MARGIN,
            # W's shape (d, C, K) carries K; the paper's K = 3.
            "num_subcenters": hp.integer("K sub-centres per class", default=3),
        },
        classifier="subcenter",
        layouts=frozenset(),
        family="successor",
    ),
}
