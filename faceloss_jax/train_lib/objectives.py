"""The training objective that ``config.loss.name`` names, and the state it carries.

One place maps a loss config onto the pure functions of ``faceloss_jax.losses``:

* the classifier head, ``{"weights": W (d, C)}`` (plus ``"bias"`` (C,) for the
  softmax-based losses with ``use_bias``), trained with the backbone and owned by the
  train state, not the backbone; the triplet loss has no classifier;
* the state a loss moves outside the gradient (the center-loss centres), carried
  explicitly in the train state;
* the scalar objective: the mean of the per-example loss, plus a weighted
  auxiliary term for the joint losses (DeepID2's contrastive, center loss).
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from faceloss_jax import losses

# Margin-softmax losses: name -> (function, hyper-parameters read from config.loss).
_MARGIN_LOSSES = {
    "softmax": (losses.softmax_cross_entropy, ()),
    "lsoftmax": (losses.large_margin_softmax, ("margin",)),
    "sphereface": (losses.sphereface, ("margin",)),
    "normface": (losses.normface, ("scale",)),
    "cosface": (losses.cosface, ("scale", "margin")),
    "arcface": (losses.arcface, ("scale", "margin", "easy_margin")),
    "combined": (losses.combined_margin, ("scale", "m1", "m2", "m3")),
}
# Joint losses: identification by the linear softmax + weight · an auxiliary term.
_JOINT_LOSSES = ("contrastive", "center")
LOSS_NAMES = (*_MARGIN_LOSSES, *_JOINT_LOSSES, "triplet")
# Losses whose classifier scores w_jᵀx (+ b_j), so that ‖W_j‖ matters for the decision.
_UNNORMALIZED = ("softmax", "lsoftmax", *_JOINT_LOSSES)

Params = Mapping[str, jax.Array]


def check_loss_name(name: str) -> None:
    """Raises a ValueError naming the valid losses if ``name`` is not one of them."""
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss.name {name!r}; valid: {', '.join(LOSS_NAMES)}")


def has_classifier(config: ml_collections.ConfigDict) -> bool:
    """Whether the loss trains a classifier W (every loss but the triplet loss)."""
    check_loss_name(config.name)
    return config.name != "triplet"


def init_head(
    config: ml_collections.ConfigDict, key: jax.Array, *, embedding_dim: int, num_classes: int
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Initial classifier parameters and loss state.

    Args:
      config: the loss config.
      key: PRNG key for the classifier weights.
      embedding_dim: d, the width of the embeddings.
      num_classes: C, the number of training classes.

    Returns:
      ``(head, loss_state)``: ``head`` has ``"weights"`` (d, C), LeCun-normal, and
      ``"bias"`` (C,) zeros for a softmax-based loss with ``use_bias`` (empty for the
      triplet loss); ``loss_state`` has the center-loss ``"centers"`` (C, d) zeros
      (empty otherwise).
    """
    head, loss_state = {}, {}
    if has_classifier(config):
        head["weights"] = nn.initializers.lecun_normal()(key, (embedding_dim, num_classes))
    if config.name in ("softmax", *_JOINT_LOSSES) and config.use_bias:
        head["bias"] = jnp.zeros((num_classes,))
    if config.name == "center":
        loss_state["centers"] = jnp.zeros((num_classes, embedding_dim))
    return head, loss_state


def _margin_loss(
    config: ml_collections.ConfigDict,
    head: Params,
    embeddings: jax.Array,
    labels: jax.Array,
    step: jax.Array,
    class_axis_name: str | None,
) -> jax.Array:
    """Mean margin-softmax loss of this device's examples."""
    name = "softmax" if config.name in _JOINT_LOSSES else config.name
    loss_fn, keys = _MARGIN_LOSSES[name]
    kwargs = {key: config[key] for key in keys}
    if name in ("lsoftmax", "sphereface"):
        kwargs["lambda_"] = losses.lambda_schedule(
            config.lambda_base, config.lambda_gamma, config.lambda_power, config.lambda_min
        )(step)
    if "bias" in head:
        kwargs["bias"] = head["bias"]
    if class_axis_name is not None:
        # Partial FC layout: every device scores the global batch against its block of
        # classes; the loss returns this device's examples.
        kwargs.update(axis_name=class_axis_name, class_axis_name=class_axis_name)
    per_example = loss_fn(
        embeddings, head["weights"], labels, chunk_size=config.chunk_size, **kwargs
    )
    return jnp.mean(per_example)


def compute_loss(
    config: ml_collections.ConfigDict,
    head: Params,
    loss_state: Params,
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    step: jax.Array,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The scalar objective of one device's batch and the new loss state.

    * margin losses: ``mean_i loss_i`` (``lambda_`` of L-Softmax/SphereFace from
      ``losses.lambda_schedule`` at ``step``);
    * ``contrastive`` (DeepID2, Sun et al. 2014): softmax + weight · in-batch
      ``losses.contrastive_loss``;
    * ``center`` (Wen et al. 2016): softmax + weight · mean ``losses.center_loss``;
      the centres move by ``losses.update_centers``, summed over ``axis_name``;
    * ``triplet`` (FaceNet, Schroff et al. 2015): ``losses.triplet_margin_loss`` of
      the L2-normalized embeddings with in-batch mining.

    In-batch pair and triplet terms see this device's examples only.

    Args:
      config: the loss config.
      head: the classifier parameters (see ``init_head``).
      loss_state: the loss state (see ``init_head``).
      embeddings: float32 (B, d) embeddings of this device's examples.
      labels: int (B,) class ids.
      step: the training step (for annealed hyper-parameters).
      axis_name: the data-parallel axis, or None outside a mapped function.
      class_axis_name: the axis over which W's columns are sharded, or None.

    Returns:
      ``(loss, new_loss_state)``.
    """
    if config.name == "triplet":
        normalized = embeddings / jnp.maximum(
            jnp.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12
        )
        loss = losses.triplet_margin_loss(
            normalized, labels, margin=config.margin, mining=config.mining
        )
        return loss, loss_state
    loss = _margin_loss(config, head, embeddings, labels, step, class_axis_name)
    if config.name == "contrastive":
        loss += config.weight * losses.contrastive_loss(embeddings, labels, margin=config.margin)
    elif config.name == "center":
        centers = loss_state["centers"]
        loss += config.weight * jnp.mean(losses.center_loss(embeddings, centers, labels))
        loss_state = {
            "centers": losses.update_centers(
                centers,
                jax.lax.stop_gradient(embeddings),
                labels,
                alpha=config.alpha,
                axis_name=axis_name,
            )
        }
    return loss, loss_state


def classifier_weights(config: ml_collections.ConfigDict, head: Params) -> jax.Array:
    """The class vectors (d, C) whose scores ``xᵀw_j`` decide the predicted class.

    W itself for the losses whose classifier scores ``w_jᵀx (+ b_j)`` (softmax,
    L-Softmax and the joint ones; the bias is left out), the unit columns of W for
    the others, whose decision is ``argmax_j cos θ_j`` whatever ‖w_j‖.
    """
    weights = head["weights"]
    if config.name in _UNNORMALIZED:
        return weights
    return weights / jnp.maximum(jnp.linalg.norm(weights, axis=0, keepdims=True), 1e-12)


def batch_metrics(
    config: ml_collections.ConfigDict, head: Params, embeddings: jax.Array, labels: jax.Array
) -> dict[str, jax.Array]:
    """Training accuracy and ArcFace's L_Intra of a batch (empty without a classifier)."""
    if not has_classifier(config):
        return {}
    scores = embeddings @ classifier_weights(config, head)
    if config.name in _UNNORMALIZED:
        scores += head.get("bias", 0.0)
    correct = jnp.argmax(scores, axis=-1) == labels
    return {
        "accuracy": jnp.mean(correct),
        "intra_angle": losses.intra_angle(embeddings, head["weights"], labels),
    }
