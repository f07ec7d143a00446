"""The successors of ArcFace: adaptive margins, adaptive scales, sub-centres, curricula.

Each is a cross-entropy over the class logits of a (d, C) class-centre matrix W (a
(d, C, K) one for sub-centres), with ``cos θ_j`` the cosine of the embedding x and the
centre w_j; all return per-example losses (B,) in float32 (float64 for float64 inputs).

=================  ================================  =====================  ===========  =======
loss               target logit                      other logits           state        layouts
=================  ================================  =====================  ===========  =======
subcenter_arcface  s·cos(θ_y + m), θ_j = min_k θ_jk  s·cos θ_j              –            dense
curricularface     s·cos(θ_y + m)                    s·N(t, cos θ_j)        t            dense
adaface            s·(cos(θ_y − m·z) − m·z − m)      s·cos θ_j              (μ, σ)       all
magface            s·cos(θ_y + m(a)), a = ‖x‖        s·cos θ_j              –            all
elasticface_arc    s·cos(θ_y + m_i), m_i ~ N(m, σ)   s·cos θ_j              PRNG key     all
elasticface_cos    s·(cos θ_y − m_i)                 s·cos θ_j              PRNG key     all
adacos             s·cos θ_y, s adaptive             s·cos θ_j              s (dynamic)  all
circle_loss        γ·α_p·(cos θ_y − Δ_p)             γ·α_n·(cos θ_j − Δ_n)  –            dense
=================  ================================  =====================  ===========  =======

"all" layouts: the loss changes the target logit only, so it runs on the engine of the
angular family (``_head.margin_softmax``) and takes ``chunk_size``, ``axis_name`` and
``class_axis_name`` exactly as ``losses.arcface`` does, with the same value (except
ElasticFace+, which ranks the batch's target cosines: not class-sharded). "dense":
the loss also changes the other logits (max-pooled sub-centres, CurricularFace's
re-weighted hard negatives, Circle loss's per-logit weights), so it computes the B×C
cosines at once; it runs per device under data parallelism (each device's examples
depend only on them and W) and raises NotImplementedError for the layout options.

State that moves outside the gradient (CurricularFace's t, AdaFace's norm statistics,
AdaCos's dynamic scale) is an explicit input, and a pure function returns its new
value; with ``axis_name`` the statistics are those of the global batch. Randomness
(ElasticFace) is an explicit PRNG key.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from faceloss_jax.losses import _head, _validation, angular

# ----------------------------------------------------------------------------------
# Shared pieces.
# ----------------------------------------------------------------------------------


def _margin_head(name, embeddings, weights, labels, *, scale, target_fn, per_example=(),
                 chunk_size, axis_name, class_axis_name):
    """Checks the inputs and runs the angular engine with normalized x and W."""
    _validation.check_head_inputs(name, embeddings, weights, labels,
                                  class_axis_name=class_axis_name)
    return _head.margin_softmax(
        jnp.asarray(embeddings), jnp.asarray(weights), jnp.asarray(labels),
        spec=_head.Logits(normalize_embeddings=True, normalize_weights=True, scale=scale),
        target_fn=target_fn, per_example=per_example,
        chunk_size=chunk_size, axis_name=axis_name, class_axis_name=class_axis_name)


def _reject_layouts(name, chunk_size, axis_name, class_axis_name) -> None:
    """The error of a dense-only loss given a layout option."""
    if (chunk_size, axis_name, class_axis_name) != (None, None, None):
        raise NotImplementedError(
            f"{name} changes the non-target logits too, so it is dense only: call it on "
            "each device's examples with the whole W, without chunk_size, axis_name or "
            "class_axis_name")


def _unit_cosines(embeddings: ArrayLike, weights: ArrayLike) -> jax.Array:
    """cos θ between each embedding (B, d) and each column of W (d, ...): (B, ...)."""
    x, w = jnp.asarray(embeddings), jnp.asarray(weights)
    dtype = _head.acc_dtype(x, w)
    x = x.astype(dtype) / _head.safe_norm(x, axis=-1)
    w = w.astype(dtype) / _head.safe_norm(w, axis=0)
    return jnp.clip(jnp.tensordot(x, w, axes=1), -1.0, 1.0)


def _target_cosines(embeddings: ArrayLike, weights: ArrayLike, labels: ArrayLike) -> jax.Array:
    """cos θ_y (B,) between each embedding and its own class centre."""
    return _head.cosine(jnp.asarray(embeddings), jnp.take(jnp.asarray(weights),
                                                          jnp.asarray(labels), axis=1).T)


def _cross_entropy(target: jax.Array, others: jax.Array, labels: jax.Array) -> jax.Array:
    """−log softmax of logits ``others`` (B, C) whose label entries are ``target`` (B,)."""
    is_target = labels[:, None] == jnp.arange(others.shape[1])
    logits = jnp.where(is_target, target[:, None].astype(others.dtype), others)
    return jax.nn.logsumexp(logits, axis=1) - target


def _ema(old: ArrayLike, batch: jax.Array, alpha: float) -> jax.Array:
    """``alpha·batch + (1 − alpha)·old``, outside the gradient."""
    return lax.stop_gradient(alpha * batch + (1.0 - alpha) * jnp.asarray(old, batch.dtype))


def _global_sum(value: jax.Array, axis_name: str | None) -> jax.Array:
    return value if axis_name is None else lax.psum(value, axis_name)


def _check_alpha(name: str, alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{name}: alpha must lie in [0, 1], got {alpha!r}")


# ----------------------------------------------------------------------------------
# Sub-center ArcFace.
# ----------------------------------------------------------------------------------


def _check_subcenters(name: str, embeddings, weights, labels) -> None:
    _validation.check_embeddings_labels(embeddings, labels, name=name)
    _validation.check_rank(weights, 3, what="weights (d, C, K)", name=name)
    if jnp.shape(weights)[0] != jnp.shape(embeddings)[1]:
        raise ValueError(
            f"{name}: weights are (d, C, K) = {jnp.shape(weights)} but embeddings have "
            f"d = {jnp.shape(embeddings)[1]}")
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
    _reject_layouts(name, chunk_size, axis_name, class_axis_name)
    _check_subcenters(name, embeddings, weights, labels)
    labels = jnp.asarray(labels)
    cos = jnp.max(_unit_cosines(embeddings, weights), axis=-1)
    cos_y = jnp.take_along_axis(cos, labels[:, None], axis=1)[:, 0]
    target = scale * angular.additive_angular_margin(cos_y, margin, easy_margin=easy_margin)
    return _cross_entropy(target, scale * cos, labels)


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
    own = jnp.take_along_axis(_unit_cosines(embeddings, weights), labels[:, None, None],
                              axis=1)[:, 0]  # (N, K)
    counts = jnp.zeros((num_classes, num_sub), jnp.int32).at[
        labels, jnp.argmax(own, axis=1)].add(1)
    dominant = jnp.argmax(counts, axis=1)
    cos_dominant = jnp.take_along_axis(own, dominant[labels][:, None], axis=1)[:, 0]
    keep = jnp.arccos(cos_dominant) <= max_angle
    dominant_weights = jnp.take_along_axis(
        jnp.asarray(weights), dominant[None, :, None], axis=2)[..., 0]
    return SubcenterCleanup(keep=keep, dominant=dominant, weights=dominant_weights)


# ----------------------------------------------------------------------------------
# CurricularFace.
# ----------------------------------------------------------------------------------


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
    _reject_layouts(name, chunk_size, axis_name, class_axis_name)
    _validation.check_head_inputs(name, embeddings, weights, labels)
    labels = jnp.asarray(labels)
    cos = _unit_cosines(embeddings, weights)
    cos_y = jnp.take_along_axis(cos, labels[:, None], axis=1)[:, 0]
    target = scale * angular.additive_angular_margin(cos_y, margin)
    boundary = lax.stop_gradient(angular.combined_angular_margin(cos_y, 1.0, margin, 0.0))
    hard = cos > boundary[:, None]
    others = scale * jnp.where(hard, cos * (jnp.asarray(t, cos.dtype) + cos), cos)
    return _cross_entropy(target, others, labels)


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
    _check_alpha(name, alpha)
    _validation.check_head_inputs(name, embeddings, weights, labels)
    cos_y = _target_cosines(embeddings, weights, labels)
    total = _global_sum(jnp.sum(cos_y), axis_name)
    count = _global_sum(jnp.asarray(cos_y.shape[0], cos_y.dtype), axis_name)
    return _ema(t, total / count, alpha)


# ----------------------------------------------------------------------------------
# AdaFace.
# ----------------------------------------------------------------------------------

# AdaFace's stability constant: the floor of σ and the distance of θ from 0 and π.
_ADAFACE_EPS = 1e-3
# The range the feature norms are clipped to before their statistics.
_ADAFACE_NORM_RANGE = (1e-3, 100.0)


class AdaFaceStats(NamedTuple):
    """AdaFace's state: running mean μ and standard deviation σ of the feature norms."""

    mean: jax.Array
    std: jax.Array


def adaface_init_stats() -> AdaFaceStats:
    """The official initial statistics, μ = 20 and σ = 100."""
    return AdaFaceStats(mean=jnp.asarray(20.0, jnp.float32), std=jnp.asarray(100.0, jnp.float32))


def _adaface_norms(embeddings: jax.Array) -> jax.Array:
    return lax.stop_gradient(jnp.clip(_head.safe_norm(embeddings, -1, False),
                                      *_ADAFACE_NORM_RANGE))


def adaface_update_stats(
    stats: AdaFaceStats,
    embeddings: ArrayLike,
    *,
    alpha: float = 0.01,
    axis_name: str | None = None,
) -> AdaFaceStats:
    """AdaFace's state: an EMA of the batch mean and std of the feature norms ‖x‖.

    ``μ ← alpha·mean(‖x‖) + (1 − alpha)·μ`` and likewise for σ with the unbiased
    standard deviation, the norms clipped to [0.001, 100] (Kim et al., CVPR 2022,
    Eq. 12; ``t_alpha`` = 0.01 in the official training script). With
    ``axis_name`` the statistics are those of the global batch.

    Args:
      stats: the current ``AdaFaceStats`` (start from ``adaface_init_stats()``).
      embeddings: (B, d) features, not normalized: their norm is the quality proxy.
      alpha: the weight of the batch statistics.
      axis_name: a device axis to compute the statistics over, or None.

    Returns:
      The new ``AdaFaceStats`` (float32), with the gradient stopped.
    """
    name = "adaface_update_stats"
    _check_alpha(name, alpha)
    _validation.check_rank(embeddings, 2, what="embeddings (B, d)", name=name)
    batch = jnp.shape(embeddings)[0] * (1 if axis_name is None else lax.axis_size(axis_name))
    if batch < 2:
        raise ValueError(f"{name}: the standard deviation needs a batch of at least 2, "
                         f"got {batch}")
    norms = _adaface_norms(jnp.asarray(embeddings))
    mean = _global_sum(jnp.sum(norms), axis_name) / batch
    var = _global_sum(jnp.sum(jnp.square(norms - mean)), axis_name) / (batch - 1)
    return AdaFaceStats(mean=_ema(stats.mean, mean, alpha),
                        std=_ema(stats.std, jnp.sqrt(var), alpha))


def adaface(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    stats: AdaFaceStats,
    *,
    scale: float = 64.0,
    margin: float = 0.4,
    h: float = 0.333,
    chunk_size: int | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    """AdaFace: a margin that adapts to image quality through the feature norm.

    Kim, Jain, Liu, "AdaFace: Quality Adaptive Margin for Face Recognition", CVPR
    2022 (m = 0.4, h = 0.333, s = 64). With the normalized norm
    ``ẑ = clip(h·(‖x‖ − μ)/(σ + ε), −1, 1)`` (‖x‖ clipped to [0.001, 100], no
    gradient; ε = 10⁻³), the target logit is

        s·(cos(clip(θ_y + g_angle, ε, π − ε)) − g_add),
        g_angle = −m·ẑ,  g_add = m·ẑ + m,

    (Eq. 11): ẑ = −1 (a low norm, a low-quality image) is ArcFace's angular margin
    m, which de-emphasizes hard samples, possibly unrecognizable; ẑ = 0 is CosFace's
    m; ẑ = 1 (high quality) turns the angle back by m with a cosine margin 2m, which
    emphasizes hard samples.
    Unlike the official code, the other cosines are not clamped to ±(1 − ε): the
    engine keeps them exact and their gradients finite.

    Args:
      embeddings: (B, d) features, not normalized (the norm is used).
      weights: (d, C) class centres.
      labels: (B,) integer class ids.
      stats: ``AdaFaceStats`` (μ, σ); update them first with
        ``adaface_update_stats`` to follow the official code, which uses the new
        statistics in the same step.
      scale: the scale s.
      margin: the margin m.
      h: the concentration h of ẑ (≈ 68% of ẑ in [−h, h]).
      chunk_size: see ``losses.softmax_cross_entropy``.
      axis_name: see ``losses.softmax_cross_entropy``.
      class_axis_name: see ``losses.softmax_cross_entropy``.

    Returns:
      Per-example losses (B,), float32.

    Example:
      >>> import jax.numpy as jnp
      >>> x, w, y = 20.0 * jnp.eye(2), jnp.eye(2), jnp.array([0, 1])
      >>> stats = AdaFaceStats(mean=jnp.array(20.0), std=jnp.array(1.0))  # ẑ = 0
      >>> loss = adaface(x, w, y, stats, scale=1.0, margin=0.0)
      >>> [round(float(v), 4) for v in loss]
      [0.3133, 0.3133]
    """
    mean, std = stats

    def target(x, w_y, b_y):
        del b_y
        cos = _head.cosine(x, w_y)
        z = jnp.clip(h * (_adaface_norms(x) - mean) / (std + _ADAFACE_EPS), -1.0, 1.0)
        theta = jnp.clip(_head.safe_arccos(cos) - margin * z, _ADAFACE_EPS,
                         math.pi - _ADAFACE_EPS)
        return scale * (jnp.cos(theta) - margin * z - margin)

    return _margin_head("adaface", embeddings, weights, labels, scale=scale, target_fn=target,
                        chunk_size=chunk_size, axis_name=axis_name,
                        class_axis_name=class_axis_name)


# ----------------------------------------------------------------------------------
# MagFace.
# ----------------------------------------------------------------------------------


def _arc_margin_per_example(cos: jax.Array, margin: jax.Array, easy_margin: bool) -> jax.Array:
    """cos(θ + m) for per-example margins m, with ArcFace's fallbacks past π.

    As ``angular.additive_angular_margin``, through ``combined_angular_margin`` since
    the margin is an array.
    """
    phi = angular.combined_angular_margin(cos, 1.0, margin, 0.0)
    if easy_margin:
        return jnp.where(cos > 0, phi, cos)
    return jnp.where(cos > -jnp.cos(margin), phi, cos - margin * jnp.sin(margin))


def magface(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    scale: float = 64.0,
    lower_norm: float = 10.0,
    upper_norm: float = 110.0,
    lower_margin: float = 0.45,
    upper_margin: float = 0.8,
    lambda_g: float = 35.0,
    easy_margin: bool = True,
    chunk_size: int | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    """MagFace: a margin that grows with the feature norm, and a norm regularizer.

    Meng et al., "MagFace: A Universal Representation for Face Recognition and
    Quality Assessment", CVPR 2021 (l_a = 10, u_a = 110, l_m = 0.45, u_m = 0.8,
    λ_g = 35, s = 64). With the magnitude ``a = clip(‖x‖, l_a, u_a)``,

        loss_i = −log softmax(s·cos(θ_y + m(a)), s·cos θ_j)  +  λ_g·g(a),
        m(a) = (u_m − l_m)/(u_a − l_a)·(a − l_a) + l_m,  g(a) = 1/a + a/u_a²,

    (Eqs. 3–5), so the mean over the batch is the paper's ``L_id + λ_g·mean g``.
    Gradients reach ‖x‖ through both m(a) and g(a), inside [l_a, u_a] only (the
    official clamp). ``easy_margin`` (the official default) keeps cos θ_y where it
    is ≤ 0; otherwise ArcFace's fallback ``cos θ − m·sin m`` applies past π.

    Args:
      embeddings: (B, d) features, not normalized (the norm is the quality).
      weights: (d, C) class centres.
      labels: (B,) integer class ids.
      scale: the scale s.
      lower_norm: l_a.
      upper_norm: u_a.
      lower_margin: l_m, the margin at a = l_a (radians).
      upper_margin: u_m, the margin at a = u_a (radians).
      lambda_g: λ_g, the weight of the regularizer g.
      easy_margin: see above.
      chunk_size: see ``losses.softmax_cross_entropy``.
      axis_name: see ``losses.softmax_cross_entropy``.
      class_axis_name: see ``losses.softmax_cross_entropy``.

    Returns:
      Per-example losses (B,), float32, regularizer included.

    Example:
      >>> import jax.numpy as jnp
      >>> x, w, y = 10.0 * jnp.eye(2), jnp.eye(2), jnp.array([0, 1])
      >>> loss = magface(x, w, y, scale=1.0, lower_margin=0.0, lambda_g=0.0)
      >>> [round(float(v), 4) for v in loss]  # a = l_a: margin l_m = 0, NormFace
      [0.3133, 0.3133]
    """
    name = "magface"
    if not 0 < lower_norm < upper_norm:
        raise ValueError(f"{name}: need 0 < lower_norm < upper_norm, got {lower_norm}, "
                         f"{upper_norm}")
    slope = (upper_margin - lower_margin) / (upper_norm - lower_norm)

    def magnitude(x):
        return jnp.clip(_head.safe_norm(x, -1, False), lower_norm, upper_norm)

    def target(x, w_y, b_y):
        del b_y
        m = slope * (magnitude(x) - lower_norm) + lower_margin
        return scale * _arc_margin_per_example(_head.cosine(x, w_y), m, easy_margin)

    identification = _margin_head(name, embeddings, weights, labels, scale=scale,
                                  target_fn=target, chunk_size=chunk_size,
                                  axis_name=axis_name, class_axis_name=class_axis_name)
    a = magnitude(jnp.asarray(embeddings))
    return identification + lambda_g * (1.0 / a + a / upper_norm**2)


# ----------------------------------------------------------------------------------
# ElasticFace.
# ----------------------------------------------------------------------------------


def _elastic_margins(key, embeddings, weights, labels, margin, sigma, plus, class_axis_name,
                     name):
    """Per-example margins ~ N(margin, sigma); with ``plus``, ranked by target cosine."""
    if sigma < 0:
        raise ValueError(f"{name}: sigma must be ≥ 0, got {sigma!r}")
    dtype = _head.acc_dtype(jnp.asarray(embeddings), jnp.asarray(weights))
    margins = margin + sigma * jax.random.normal(key, (jnp.shape(labels)[0],), dtype)
    if not plus:
        return margins
    if class_axis_name is not None:
        raise NotImplementedError(
            f"{name}: plus=True ranks the target cosines of the batch, which a "
            "class-sharded W does not hold on any one device; use plus=False")
    cos_y = lax.stop_gradient(_target_cosines(embeddings, weights, labels))
    rank = jnp.argsort(jnp.argsort(-cos_y))  # 0 for the largest cosine
    return jnp.sort(margins)[rank]


def _elastic(name, embeddings, weights, labels, key, scale, margin, sigma, plus, margin_fn,
             chunk_size, axis_name, class_axis_name):
    _validation.check_head_inputs(name, embeddings, weights, labels,
                                  class_axis_name=class_axis_name)
    margins = _elastic_margins(key, embeddings, weights, labels, margin, sigma, plus,
                               class_axis_name, name)

    def target(x, w_y, b_y, m):
        del b_y
        return scale * margin_fn(_head.cosine(x, w_y), m)

    return _margin_head(name, embeddings, weights, labels, scale=scale, target_fn=target,
                        per_example=(margins,), chunk_size=chunk_size, axis_name=axis_name,
                        class_axis_name=class_axis_name)


def elasticface_arc(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    key: jax.Array,
    *,
    scale: float = 64.0,
    margin: float = 0.5,
    sigma: float = 0.05,
    plus: bool = False,
    chunk_size: int | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    """ElasticFace-Arc: ArcFace with a margin drawn from N(m, σ) per sample and step.

    Boutros, Damer, Kirchbuchner, Kuijper, "ElasticFace: Elastic Margin Loss for Deep
    Face Recognition", CVPRW 2022 (s = 64, m = 0.5, σ = 0.05). Target logit
    ``s·cos(θ_y + m_i)`` with ``m_i ~ N(m, σ)``, computed through a clipped arccos
    with no fallback past π, as the official code. σ = 0 is ArcFace without its
    fallback (``combined_margin`` with m2 = m).

    ElasticFace+ (``plus=True``): the sampled margins are sorted and the sample
    closest to its class centre (largest cos θ_y) gets the smallest margin, the
    farthest the largest — the rank matching that the official code's two sorts
    intend (it indexes the sorted margins by the cosine order, not by its inverse).

    Args:
      embeddings: (B, d) features.
      weights: (d, C) class centres.
      labels: (B,) integer class ids.
      key: a PRNG key for the margins of this call (split it every step). Under
        ``axis_name`` each device draws its own examples' margins from ``key``, so
        fold the device index into it (``jax.random.fold_in(key, axis_index)``).
      scale: the scale s.
      margin: the mean margin m (radians).
      sigma: the standard deviation σ.
      plus: ElasticFace+, see above (not with ``class_axis_name``).
      chunk_size: see ``losses.softmax_cross_entropy``.
      axis_name: see ``losses.softmax_cross_entropy``.
      class_axis_name: see ``losses.softmax_cross_entropy``.

    Returns:
      Per-example losses (B,), float32.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x, w, y = jnp.eye(2), jnp.eye(2), jnp.array([0, 1])
      >>> loss = elasticface_arc(x, w, y, jax.random.key(0), scale=1.0, margin=0.0,
      ...                        sigma=0.0)
      >>> [round(float(v), 4) for v in loss]
      [0.3133, 0.3133]
    """
    return _elastic("elasticface_arc", embeddings, weights, labels, key, scale, margin, sigma,
                    plus, lambda cos, m: angular.combined_angular_margin(cos, 1.0, m, 0.0),
                    chunk_size, axis_name, class_axis_name)


def elasticface_cos(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    key: jax.Array,
    *,
    scale: float = 64.0,
    margin: float = 0.35,
    sigma: float = 0.05,
    plus: bool = False,
    chunk_size: int | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    """ElasticFace-Cos: CosFace with a margin drawn from N(m, σ) per sample and step.

    Boutros et al., CVPRW 2022 (s = 64, m = 0.35, σ = 0.05). Target logit
    ``s·(cos θ_y − m_i)``, ``m_i ~ N(m, σ)``; σ = 0 is CosFace. ``plus`` and ``key``
    as in ``elasticface_arc``.

    Args:
      embeddings: (B, d) features.
      weights: (d, C) class centres.
      labels: (B,) integer class ids.
      key: a PRNG key for the margins of this call (see ``elasticface_arc``).
      scale: the scale s.
      margin: the mean cosine margin m.
      sigma: the standard deviation σ.
      plus: ElasticFace+ (see ``elasticface_arc``).
      chunk_size: see ``losses.softmax_cross_entropy``.
      axis_name: see ``losses.softmax_cross_entropy``.
      class_axis_name: see ``losses.softmax_cross_entropy``.

    Returns:
      Per-example losses (B,), float32.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x, w, y = jnp.eye(2), jnp.eye(2), jnp.array([0, 1])
      >>> loss = elasticface_cos(x, w, y, jax.random.key(0), scale=1.0, margin=0.0,
      ...                        sigma=0.0)
      >>> [round(float(v), 4) for v in loss]
      [0.3133, 0.3133]
    """
    return _elastic("elasticface_cos", embeddings, weights, labels, key, scale, margin, sigma,
                    plus, lambda cos, m: cos - m, chunk_size, axis_name, class_axis_name)


# ----------------------------------------------------------------------------------
# AdaCos.
# ----------------------------------------------------------------------------------


def adacos_fixed_scale(num_classes: int) -> float:
    """AdaCos's fixed scale ``s̃_f = √2·ln(C − 1)`` (Zhang et al., CVPR 2019, Eq. 13).

    Example:
      >>> round(adacos_fixed_scale(10_000), 3)
      13.025
    """
    if num_classes < 3:
        raise ValueError(f"adacos_fixed_scale: needs at least 3 classes (the scale is "
                         f"√2·ln(C − 1)), got {num_classes}")
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
    return _margin_head("adacos", embeddings, weights, labels, scale=scale,
                        target_fn=lambda x, w_y, b_y: scale * _head.cosine(x, w_y),
                        chunk_size=chunk_size, axis_name=axis_name,
                        class_axis_name=class_axis_name)


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
    _validation.check_head_inputs(name, embeddings, weights, labels,
                                  class_axis_name=class_axis_name)
    x, y, w = jnp.asarray(embeddings), jnp.asarray(labels), jnp.asarray(weights)
    if axis_name is not None:
        x, y = (lax.all_gather(a, axis_name, tiled=True) for a in (x, y))
    cos = lax.stop_gradient(_unit_cosines(x, w))
    offset = 0 if class_axis_name is None else _head.axis_index(class_axis_name) * w.shape[1]
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
# Circle loss.
# ----------------------------------------------------------------------------------


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
    _reject_layouts(name, chunk_size, axis_name, class_axis_name)
    _validation.check_head_inputs(name, embeddings, weights, labels)
    labels = jnp.asarray(labels)
    cos = _unit_cosines(embeddings, weights)
    positive, negative = _circle_logits(cos, scale, margin)
    target = jnp.take_along_axis(positive, labels[:, None], axis=1)[:, 0]
    return _cross_entropy(target, negative, labels)


def circle_pair_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    scale: float = 256.0,
    margin: float = 0.25,
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

    Returns:
      Per-sample losses (B,), float32.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
      >>> loss = circle_pair_loss(x, jnp.array([0, 0, 1]), scale=1.0)
      >>> [round(float(v), 4) for v in loss]  # the last sample has no positive
      [0.6326, 0.6326, 0.0]
    """
    name = "circle_pair_loss"
    _validation.check_embeddings_labels(embeddings, labels, name=name)
    labels = jnp.asarray(labels)
    x = jnp.asarray(embeddings)
    sim = _unit_cosines(x, x.T)
    same = labels[:, None] == labels[None, :]
    positives = same & ~jnp.eye(labels.shape[0], dtype=bool)
    positive, negative = _circle_logits(sim, scale, margin)
    # A finite floor instead of −inf for the masked pairs: a sample without positives
    # (or negatives) gets LSE ≈ −1e30 and softplus 0, with no nan in the gradient.
    floor = -1e30
    lse_p = jax.nn.logsumexp(jnp.where(positives, -positive, floor), axis=1)
    lse_n = jax.nn.logsumexp(jnp.where(same, floor, negative), axis=1)
    return jax.nn.softplus(lse_p + lse_n)
