"""Circle loss (Sun et al., CVPR 2020), class level and pair level.

Similarities re-weighted by their distance from the optimum: positives
``γ·α_p·(s_p − Δ_p)``, negatives ``γ·α_n·(s_n − Δ_n)``, ``α_p = [1 + m − s_p]₊``,
``α_n = [s_n + m]₊`` (no gradient through α), ``Δ_p = 1 − m``, ``Δ_n = m``.
``circle_loss`` scores each embedding against the class centres (dense only);
``circle_pair_loss`` against the other embeddings of the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from faceloss_jax.losses import _common, _validation, euclidean
from faceloss_jax.losses import hyperparameters as hp
from faceloss_jax.losses.record import Objective


def _circle_logits(sim: jax.Array, scale: float, margin: float) -> tuple[jax.Array, jax.Array]:
    """Circle loss's logits of similarities as positives and as negatives, elementwise.

    ``γ·α_p·(s − Δ_p)`` and ``γ·α_n·(s − Δ_n)`` with ``α_p = [1 + m − s]₊``,
    ``α_n = [s + m]₊`` (no gradient, as in the reference code), ``Δ_p = 1 − m``,
    ``Δ_n = m``.
    """
    alpha_p = lax.stop_gradient(jax.nn.relu(1.0 + margin - sim))
    alpha_n = lax.stop_gradient(jax.nn.relu(sim + margin))
    return scale * alpha_p * (sim - (1.0 - margin)), scale * alpha_n * (sim - margin)


def circle_loss(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    scale: float = 256.0,
    margin: float = 0.25,
    chunk_size: None = None,
    axis_name: None = None,
    class_axis_name: None = None,
) -> jax.Array:
    """Circle loss, class-level form: one positive (the class centre), C − 1 negatives.

    Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity
    Optimization", CVPR 2020 (face recognition: γ = 256, m = 0.25). With
    s_p = cos θ_y and s_n^j = cos θ_j (j ≠ y),

        loss = log(1 + Σ_j exp(γ·α_n^j·(s_n^j − Δ_n))·exp(−γ·α_p·(s_p − Δ_p))),

    α_p = [1 + m − s_p]₊, α_n = [s_n + m]₊ (no gradient), Δ_p = 1 − m, Δ_n = m
    (Eqs. 1, 4): a cross-entropy whose every logit has its own weight. See
    ``circle_pair_loss`` for the pair-level form.

    Dense only (every logit is re-weighted).

    Args:
      embeddings: (B, d) features.
      weights: (d, C) class proxies.
      labels: (B,) integer class ids.
      scale: the scale γ.
      margin: the relaxation m.
      chunk_size: not supported (must be None).
      axis_name: not supported (must be None).
      class_axis_name: not supported (must be None).

    Returns:
      Per-example losses (B,), float32.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = circle_loss(jnp.eye(2), jnp.eye(2), jnp.array([0, 1]), scale=1.0)
      >>> [round(float(v), 4) for v in loss]  # log(1 + e^{0.25·(0 − 0.25) − 0.25·0.25})
      [0.6326, 0.6326]
    """
    name = "circle_loss"
    _common.reject_layouts(name, chunk_size, axis_name, class_axis_name)
    _validation.check_head_inputs(name, embeddings, weights, labels)
    labels = jnp.asarray(labels)
    cos = _common.unit_cosines(embeddings, weights)
    positive, negative = _circle_logits(cos, scale, margin)
    target = jnp.take_along_axis(positive, labels[:, None], axis=1)[:, 0]
    return _common.cross_entropy(target, negative, labels)


def circle_pair_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    scale: float = 256.0,
    margin: float = 0.25,
    axis_name: str | None = None,
) -> jax.Array:
    """Circle loss, pair-level form: each sample against the other samples of the batch.

    Sun et al., CVPR 2020, Eq. 1 with the in-batch pairs: for sample i, the
    positives are the other samples of its class and the negatives those of the
    other classes, s the cosine similarity,

        loss_i = softplus(LSE_n(γ·α_n·(s_in − Δ_n)) + LSE_p(−γ·α_p·(s_ip − Δ_p))),

    α and Δ as in ``circle_loss``; 0 for a sample without a positive or a negative.
    The mean over the batch is fast-reid's ``pairwise_circleloss``.

    Args:
      embeddings: (B, d) features (normalized inside).
      labels: (B,) integer identities.
      scale: the scale γ.
      margin: the relaxation m.
      axis_name: a device axis whose global batch is paired: the embeddings and
        labels are all-gathered and each device returns its own samples' losses
        against all N samples (as ``losses.arcface`` does), so the mean over the
        axis of the local means is the single-device mean of the global batch
        (``euclidean.pair_batch``).

    Returns:
      Per-sample losses (B,), float32 (this device's samples under ``axis_name``).

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
      >>> loss = circle_pair_loss(x, jnp.array([0, 0, 1]), scale=1.0)
      >>> [round(float(v), 4) for v in loss]  # the last sample has no positive
      [0.6326, 0.6326, 0.0]
    """
    name = "circle_pair_loss"
    _validation.check_embeddings_labels(embeddings, labels, name=name)
    batch = euclidean.pair_batch(embeddings, labels, axis_name)
    sim = _common.unit_cosines(batch.anchors, batch.others.T)
    same = batch.anchor_labels[:, None] == batch.other_labels[None, :]
    itself = batch.positions[:, None] == jnp.arange(batch.others.shape[0])[None, :]
    positives = same & ~itself
    positive, negative = _circle_logits(sim, scale, margin)
    # A finite floor instead of −inf for the masked pairs: a sample without positives
    # (or negatives) gets LSE ≈ −1e30 and softplus 0, with no nan in the gradient.
    floor = -1e30
    lse_p = jax.nn.logsumexp(jnp.where(positives, -positive, floor), axis=1)
    lse_n = jax.nn.logsumexp(jnp.where(same, floor, negative), axis=1)
    return jax.nn.softplus(lse_p + lse_n)


# ----------------------------------------------------------------------------------
# The records (``train_lib.objectives`` collects them; defaults: the signatures above).
# ----------------------------------------------------------------------------------

_CIRCLE = {"scale": hp.positive("γ"), "margin": hp.real("m", low=0.0, high=1.0)}

RECORDS = {
    "circle": Objective(
        circle_loss,
        "Circle loss, class level (Sun et al., CVPR 2020)",
        _CIRCLE,
        layouts=frozenset(),
        family="successor",
        aliases=("circle_loss",),
    ),
    "circle_pair": Objective(
        circle_pair_loss,
        "Circle loss, pair level (Sun et al., CVPR 2020)",
        _CIRCLE,
        classifier="none",
        layouts=frozenset({"data_parallel"}),
        family="successor",
        aliases=("circle_pair_loss",),
    ),
}
