"""The training objective that ``config.loss.name`` names, and the state it carries.

One place maps a loss config onto the pure functions of ``faceloss_jax.losses``:

* the classifier head, ``{"weights": W (d, C)}`` (``(d, C, K)`` for sub-center
  ArcFace; plus ``"bias"`` (C,) for the softmax-based losses with ``use_bias``),
  trained with the backbone and owned by the train state, not the backbone; the pair
  losses (triplet, pair-level Circle, XBM) have no classifier;
* the state a loss moves outside the gradient (center-loss centres, CurricularFace's
  t, AdaFace's norm statistics, AdaCos's dynamic scale, the XBM memory), a dict of
  arrays carried explicitly in the train state and replicated over the devices;
* the scalar objective: the mean of the per-example loss, plus a weighted
  auxiliary term for the joint losses (DeepID2's contrastive, center loss, XBM).
"""

import dataclasses
import math
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from faceloss_jax import losses


@dataclasses.dataclass(frozen=True)
class _Head:
    """A softmax-type loss on the classifier W.

    Attributes:
      fn: the per-example loss ``fn(embeddings, weights, labels, **kwargs)``.
      hyperparameters: the keyword arguments read from ``config.loss``.
      layouts: whether it takes ``chunk_size``/``axis_name``/``class_axis_name``
        (False: dense only, each device's examples against the whole W).
    """

    fn: Callable[..., jax.Array]
    hyperparameters: tuple[str, ...] = ()
    layouts: bool = True


_ELASTICFACE = {"arc": losses.elasticface_arc, "cos": losses.elasticface_cos}


def _elasticface(embeddings, weights, labels, *, variant: str, **kwargs) -> jax.Array:
    """ElasticFace-Arc or -Cos, as ``config.loss.variant`` says."""
    return _ELASTICFACE[variant](embeddings, weights, labels, **kwargs)


_HEADS = {
    "softmax": _Head(losses.softmax_cross_entropy),
    "lsoftmax": _Head(losses.large_margin_softmax, ("margin",)),
    "sphereface": _Head(losses.sphereface, ("margin",)),
    "normface": _Head(losses.normface, ("scale",)),
    "cosface": _Head(losses.cosface, ("scale", "margin")),
    "arcface": _Head(losses.arcface, ("scale", "margin", "easy_margin")),
    "combined": _Head(losses.combined_margin, ("scale", "m1", "m2", "m3")),
    # The successors of ArcFace (losses/successors.py).
    "subcenter_arcface": _Head(
        losses.subcenter_arcface, ("scale", "margin", "easy_margin"), layouts=False
    ),
    "curricularface": _Head(losses.curricularface, ("scale", "margin"), layouts=False),
    "adaface": _Head(losses.adaface, ("scale", "margin", "h")),
    "magface": _Head(
        losses.magface,
        ("scale", "lower_norm", "upper_norm", "lower_margin", "upper_margin", "lambda_g",
         "easy_margin"),
    ),
    "elasticface": _Head(_elasticface, ("variant", "scale", "margin", "sigma", "plus")),
    "adacos": _Head(losses.adacos),
    "circle": _Head(losses.circle_loss, ("scale", "margin"), layouts=False),
}
# Joint losses: identification by the linear softmax + weight · an auxiliary term.
_JOINT_LOSSES = ("contrastive", "center")
# Losses of the embeddings alone, without a classifier.
PAIR_LOSSES = ("triplet", "circle_pair", "xbm")
LOSS_NAMES = (*_HEADS, *_JOINT_LOSSES, *PAIR_LOSSES)
# The successors of ArcFace (losses/successors*.py); the others are the core losses.
SUCCESSORS = ("subcenter_arcface", "curricularface", "adaface", "magface", "elasticface",
              "adacos", "circle", "circle_pair", "xbm")
# Losses whose classifier scores w_jᵀx (+ b_j), so that ‖W_j‖ matters for the decision.
_UNNORMALIZED = ("softmax", "lsoftmax", *_JOINT_LOSSES)

Params = Mapping[str, jax.Array]


def check_loss_name(name: str) -> None:
    """Raises a ValueError naming the valid losses if ``name`` is not one of them."""
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss.name {name!r}; valid: {', '.join(LOSS_NAMES)}")


def check_loss_config(config: ml_collections.ConfigDict) -> None:
    """Raises a ValueError naming the first setting the loss cannot run with."""
    check_loss_name(config.name)
    if config.name == "elasticface" and config.variant not in _ELASTICFACE:
        raise ValueError(f"unknown loss.variant {config.variant!r} of elasticface; valid: "
                         f"{', '.join(_ELASTICFACE)}")
    if config.name == "xbm" and config.base not in ("triplet", "contrastive"):
        raise ValueError(f"unknown loss.base {config.base!r} of xbm; valid: triplet, contrastive")
    head = _HEADS.get(config.name)
    if head is not None and not head.layouts and (
        config.chunk_size is not None or config.class_sharded
    ):
        raise ValueError(
            f"{config.name} re-weights every logit, so it is dense only: set "
            "loss.chunk_size=None and loss.class_sharded=False"
        )
    if config.name == "elasticface" and config.plus and config.class_sharded:
        raise ValueError("elasticface with plus=True ranks the batch's target cosines, which "
                         "a class-sharded W cannot: set loss.plus=False or class_sharded=False")


def has_classifier(config: ml_collections.ConfigDict) -> bool:
    """Whether the loss trains a classifier W (every loss but the pair losses)."""
    check_loss_name(config.name)
    return config.name not in PAIR_LOSSES


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
      ``(head, loss_state)``: ``head`` has ``"weights"`` (d, C), LeCun-normal
      ((d, C, K) for sub-center ArcFace, initialized as a (d, C·K) matrix), and
      ``"bias"`` (C,) zeros for a softmax-based loss with ``use_bias`` (empty for the
      pair losses); ``loss_state`` has the center-loss ``"centers"`` (C, d) zeros,
      CurricularFace's ``"t"`` = 0, AdaFace's ``"mean"``, ``"std"`` (20, 100), the
      dynamic AdaCos ``"scale"`` (the fixed scale √2·ln(C − 1)) or the XBM memory
      (empty otherwise).
    """
    head, loss_state = {}, {}
    name = config.name
    if has_classifier(config):
        shape = (embedding_dim, num_classes)
        if name == "subcenter_arcface":
            shape += (config.num_subcenters,)
        # Fan-in d for every column, sub-centres included.
        weights = nn.initializers.lecun_normal()(key, (embedding_dim, math.prod(shape[1:])))
        head["weights"] = weights.reshape(shape)
    if name in ("softmax", *_JOINT_LOSSES) and config.use_bias:
        head["bias"] = jnp.zeros((num_classes,))
    if name == "center":
        loss_state["centers"] = jnp.zeros((num_classes, embedding_dim))
    elif name == "curricularface":
        loss_state["t"] = jnp.zeros((), jnp.float32)
    elif name == "adaface":
        loss_state = losses.adaface_init_stats()._asdict()
    elif name == "adacos" and config.dynamic:
        loss_state["scale"] = jnp.asarray(losses.adacos_fixed_scale(num_classes), jnp.float32)
    elif name == "xbm":
        loss_state = losses.xbm_init(config.memory_size, embedding_dim)._asdict()
    return head, loss_state


def _advance_state(
    config: ml_collections.ConfigDict,
    head: Params,
    loss_state: Params,
    embeddings: jax.Array,
    labels: jax.Array,
    axis_name: str | None,
    class_axis_name: str | None,
) -> tuple[Params, dict[str, jax.Array]]:
    """The loss state moved by this batch (outside the gradient), and the keyword
    arguments it gives the loss. The official CurricularFace, AdaFace and AdaCos code
    updates the state first and uses the new value in the same step."""
    x = jax.lax.stop_gradient(embeddings)
    w = jax.lax.stop_gradient(head.get("weights"))
    if config.name == "curricularface":
        t = losses.curricularface_update_t(
            loss_state["t"], x, w, labels, alpha=config.alpha, axis_name=axis_name
        )
        return {"t": t}, {"t": t}
    if config.name == "adaface":
        stats = losses.adaface_update_stats(
            losses.AdaFaceStats(**loss_state), x, alpha=config.alpha, axis_name=axis_name
        )
        return stats._asdict(), {"stats": stats}
    if config.name == "adacos" and config.dynamic:
        scale = losses.adacos_dynamic_scale(
            loss_state["scale"], x, w, labels, axis_name=axis_name, class_axis_name=class_axis_name
        )
        return {"scale": scale}, {"scale": scale}
    return loss_state, {}


def _margin_loss(
    config: ml_collections.ConfigDict,
    head: Params,
    embeddings: jax.Array,
    labels: jax.Array,
    step: jax.Array,
    class_axis_name: str | None,
    **kwargs: jax.Array,
) -> jax.Array:
    """Mean softmax-type loss of this device's examples; ``kwargs`` are passed on."""
    name = "softmax" if config.name in _JOINT_LOSSES else config.name
    spec = _HEADS[name]
    kwargs |= {key: config[key] for key in spec.hyperparameters}
    if name in ("lsoftmax", "sphereface"):
        kwargs["lambda_"] = losses.lambda_schedule(
            config.lambda_base, config.lambda_gamma, config.lambda_power, config.lambda_min
        )(step)
    if "bias" in head:
        kwargs["bias"] = head["bias"]
    if spec.layouts:
        kwargs["chunk_size"] = config.chunk_size
        if class_axis_name is not None:
            # Partial FC layout: every device scores the global batch against its block
            # of classes; the loss returns this device's examples.
            kwargs.update(axis_name=class_axis_name, class_axis_name=class_axis_name)
    return jnp.mean(spec.fn(embeddings, head["weights"], labels, **kwargs))


def _unit(embeddings: jax.Array) -> jax.Array:
    return embeddings / jnp.maximum(jnp.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)


def _pair_loss(
    config: ml_collections.ConfigDict,
    loss_state: Params,
    embeddings: jax.Array,
    labels: jax.Array,
    axis_name: str | None,
) -> tuple[jax.Array, Params]:
    """A loss of the embeddings alone (no classifier) and the new loss state."""
    if config.name == "circle_pair":
        loss = losses.circle_pair_loss(embeddings, labels, scale=config.scale, margin=config.margin)
        return jnp.mean(loss), loss_state
    x = _unit(embeddings)
    base = config.name if config.name == "triplet" else config.base
    if base == "triplet":
        loss = losses.triplet_margin_loss(x, labels, margin=config.margin, mining=config.mining)
    else:
        loss = losses.contrastive_loss(x, labels, margin=config.margin)
    if config.name == "triplet":
        return loss, loss_state
    # XBM: the batch against the memory of past batches, then the batch is enqueued.
    memory = losses.CrossBatchMemory(**loss_state)
    cross = {"triplet": losses.xbm_triplet_loss, "contrastive": losses.xbm_contrastive_loss}
    loss += config.weight * cross[base](x, labels, memory, margin=config.margin)
    memory = losses.xbm_enqueue(
        memory, x, labels, warmup_steps=config.warmup_steps, axis_name=axis_name
    )
    return loss, memory._asdict()


def compute_loss(
    config: ml_collections.ConfigDict,
    head: Params,
    loss_state: Params,
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    step: jax.Array,
    key: jax.Array | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The scalar objective of one device's batch and the new loss state.

    * softmax-type losses (the margin losses and their successors):
      ``mean_i loss_i`` (``lambda_`` of L-Softmax/SphereFace from
      ``losses.lambda_schedule`` at ``step``; the state of CurricularFace, AdaFace
      and the dynamic AdaCos moved by this batch first, over ``axis_name``;
      ElasticFace's margins drawn with ``key``);
    * ``contrastive`` (DeepID2, Sun et al. 2014): softmax + weight · in-batch
      ``losses.contrastive_loss``;
    * ``center`` (Wen et al. 2016): softmax + weight · mean ``losses.center_loss``;
      the centres move by ``losses.update_centers``, summed over ``axis_name``;
    * ``triplet`` (FaceNet, Schroff et al. 2015): ``losses.triplet_margin_loss`` of
      the L2-normalized embeddings with in-batch mining;
    * ``circle_pair`` (Sun et al. 2020): mean ``losses.circle_pair_loss``;
    * ``xbm`` (Wang et al. 2020): the in-batch triplet (``config.mining``) or
      contrastive loss of the L2-normalized embeddings + weight · the same loss
      against the memory (batch-hard triplets), which then takes the global batch.

    In-batch pair and triplet terms see this device's examples only.

    Args:
      config: the loss config.
      head: the classifier parameters (see ``init_head``).
      loss_state: the loss state (see ``init_head``).
      embeddings: float32 (B, d) embeddings of this device's examples.
      labels: int (B,) class ids.
      step: the training step (for annealed hyper-parameters).
      key: PRNG key of the random losses (ElasticFace), distinct per device.
      axis_name: the data-parallel axis, or None outside a mapped function.
      class_axis_name: the axis over which W's columns are sharded, or None.

    Returns:
      ``(loss, new_loss_state)``.
    """
    if not has_classifier(config):
        return _pair_loss(config, loss_state, embeddings, labels, axis_name)
    loss_state, kwargs = _advance_state(
        config, head, loss_state, embeddings, labels, axis_name, class_axis_name
    )
    if config.name == "elasticface":
        if key is None:
            raise ValueError("elasticface draws its margins at random: pass a PRNG key")
        kwargs["key"] = key
    loss = _margin_loss(config, head, embeddings, labels, step, class_axis_name, **kwargs)
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
    the others, whose decision is ``argmax_j cos θ_j`` whatever ‖w_j‖; for
    sub-center ArcFace the unit sub-centres (d, C, K), a class scoring its best one.
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
    weights = classifier_weights(config, head)
    if weights.ndim == 3:  # sub-centres: each class by its sub-centre closest to x
        per_subcenter = jnp.einsum("bd,dck->bck", embeddings, weights)
        closest = jnp.argmax(per_subcenter, axis=-1)
        scores = jnp.max(per_subcenter, axis=-1)
        own = weights[:, labels, jnp.take_along_axis(closest, labels[:, None], 1)[:, 0]]
        intra = losses.intra_angle(embeddings, own, jnp.arange(labels.shape[0]))
    else:
        scores = embeddings @ weights
        intra = losses.intra_angle(embeddings, head["weights"], labels)
    if config.name in _UNNORMALIZED:
        scores += head.get("bias", 0.0)
    correct = jnp.argmax(scores, axis=-1) == labels
    return {"accuracy": jnp.mean(correct), "intra_angle": intra}
