"""Margins that adapt per example: AdaFace, MagFace, ElasticFace.

=================  ================================  ==============
loss               target logit                      state
=================  ================================  ==============
adaface            s·(cos(θ_y − m·z) − m·z − m)      (μ, σ) of ‖x‖
magface            s·cos(θ_y + m(a)), a = ‖x‖        –
elasticface_arc    s·cos(θ_y + m_i), m_i ~ N(m, σ)   PRNG key
elasticface_cos    s·(cos θ_y − m_i)                 PRNG key
elasticface        either, as ``variant`` says       PRNG key
=================  ================================  ==============

Each changes the target logit only, through a per-example margin computed from the
local batch and passed to ``engine.margin_softmax`` as a ``per_example`` array, so all
take ``chunk_size``, ``axis_name`` and ``class_axis_name`` as ``losses.arcface`` does
(ElasticFace+ ranks the batch's target cosines: not class-sharded).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from faceloss_jax.errors import ConfigError
from faceloss_jax.losses import _common, _validation, angular, engine
from faceloss_jax.losses import hyperparameters as hp
from faceloss_jax.losses.record import Objective, StateRule

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
    return lax.stop_gradient(
        jnp.clip(engine.safe_norm(embeddings, -1, False), *_ADAFACE_NORM_RANGE)
    )


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
    _common.check_alpha(name, alpha)
    _validation.check_rank(embeddings, 2, what="embeddings (B, d)", name=name)
    batch = jnp.shape(embeddings)[0] * (1 if axis_name is None else lax.axis_size(axis_name))
    if batch < 2:
        raise ValueError(f"{name}: the standard deviation needs a batch of at least 2, got {batch}")
    norms = _adaface_norms(jnp.asarray(embeddings))
    mean = _common.global_sum(jnp.sum(norms), axis_name) / batch
    var = _common.global_sum(jnp.sum(jnp.square(norms - mean)), axis_name) / (batch - 1)
    return AdaFaceStats(
        mean=_common.ema(stats.mean, mean, alpha), std=_common.ema(stats.std, jnp.sqrt(var), alpha)
    )


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
    x = jnp.asarray(embeddings)
    z = jnp.clip(h * (_adaface_norms(x) - mean) / (std + _ADAFACE_EPS), -1.0, 1.0)

    def margin_fn(cos, z):
        theta = jnp.clip(engine.safe_arccos(cos) - margin * z, _ADAFACE_EPS, math.pi - _ADAFACE_EPS)
        return jnp.cos(theta) - margin * z - margin

    return engine.margin_softmax(
        embeddings,
        weights,
        labels,
        name="adaface",
        scale=scale,
        margin_fn=margin_fn,
        per_example=(z,),
        chunk_size=chunk_size,
        axis_name=axis_name,
        class_axis_name=class_axis_name,
    )


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
        raise ValueError(
            f"{name}: need 0 < lower_norm < upper_norm, got {lower_norm}, {upper_norm}"
        )
    slope = (upper_margin - lower_margin) / (upper_norm - lower_norm)

    def magnitude(x):
        return jnp.clip(engine.safe_norm(x, -1, False), lower_norm, upper_norm)

    a = magnitude(jnp.asarray(embeddings))
    margins = slope * (a - lower_norm) + lower_margin
    identification = engine.margin_softmax(
        embeddings,
        weights,
        labels,
        name=name,
        scale=scale,
        margin_fn=lambda cos, m: _arc_margin_per_example(cos, m, easy_margin),
        per_example=(margins,),
        chunk_size=chunk_size,
        axis_name=axis_name,
        class_axis_name=class_axis_name,
    )
    return identification + lambda_g * (1.0 / a + a / upper_norm**2)


def _elastic_margins(
    key, embeddings, weights, labels, *, margin, sigma, plus, class_axis_name, name
):
    """Per-example margins ~ N(margin, sigma); with ``plus``, ranked by target cosine."""
    if sigma < 0:
        raise ValueError(f"{name}: sigma must be ≥ 0, got {sigma!r}")
    dtype = engine.acc_dtype(jnp.asarray(embeddings), jnp.asarray(weights))
    margins = margin + sigma * jax.random.normal(key, (jnp.shape(labels)[0],), dtype)
    if not plus:
        return margins
    if class_axis_name is not None:
        raise NotImplementedError(
            f"{name}: plus=True ranks the target cosines of the batch, which a "
            "class-sharded W does not hold on any one device; use plus=False"
        )
    cos_y = lax.stop_gradient(_common.target_cosines(embeddings, weights, labels))
    rank = jnp.argsort(jnp.argsort(-cos_y))  # 0 for the largest cosine
    return jnp.sort(margins)[rank]


def _elastic(
    name, embeddings, weights, labels, *, key, scale, margin, sigma, plus, margin_fn, **layout
):
    class_axis_name = layout.get("class_axis_name")
    _validation.check_head_inputs(
        name, embeddings, weights, labels, class_axis_name=class_axis_name
    )
    margins = _elastic_margins(
        key,
        embeddings,
        weights,
        labels,
        margin=margin,
        sigma=sigma,
        plus=plus,
        class_axis_name=class_axis_name,
        name=name,
    )
    return engine.margin_softmax(
        embeddings,
        weights,
        labels,
        name=name,
        scale=scale,
        margin_fn=margin_fn,
        per_example=(margins,),
        **layout,
    )


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
    return _elastic(
        "elasticface_arc",
        embeddings,
        weights,
        labels,
        key=key,
        scale=scale,
        margin=margin,
        sigma=sigma,
        plus=plus,
        margin_fn=lambda cos, m: angular.combined_angular_margin(cos, 1.0, m, 0.0),
        chunk_size=chunk_size,
        axis_name=axis_name,
        class_axis_name=class_axis_name,
    )


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
    return _elastic(
        "elasticface_cos",
        embeddings,
        weights,
        labels,
        key=key,
        scale=scale,
        margin=margin,
        sigma=sigma,
        plus=plus,
        margin_fn=lambda cos, m: cos - m,
        chunk_size=chunk_size,
        axis_name=axis_name,
        class_axis_name=class_axis_name,
    )


ELASTICFACE_VARIANTS = {"arc": elasticface_arc, "cos": elasticface_cos}


def elasticface(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    key: jax.Array,
    *,
    variant: str = "arc",
    scale: float = 64.0,
    margin: float = 0.5,
    sigma: float = 0.05,
    plus: bool = False,
    **layout,
) -> jax.Array:
    """ElasticFace-Arc or -Cos (Boutros et al., CVPR-W 2022), as ``variant`` says.

    The defaults are ``elasticface_arc``'s (the default variant); ``layout`` is
    ``chunk_size``, ``axis_name`` and ``class_axis_name``.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.eye(2)
      >>> loss = elasticface(x, x, jnp.array([0, 1]), jax.random.key(0), variant="cos",
      ...                    scale=1.0, margin=0.0, sigma=0.0)
      >>> [round(float(v), 4) for v in loss]
      [0.3133, 0.3133]
    """
    return ELASTICFACE_VARIANTS[variant](
        embeddings,
        weights,
        labels,
        key,
        scale=scale,
        margin=margin,
        sigma=sigma,
        plus=plus,
        **layout,
    )


# ----------------------------------------------------------------------------------
# The records (``train_lib.objectives`` collects them; defaults: the signatures above).
# ----------------------------------------------------------------------------------

_EMA_ALPHA = hp.real(
    "EMA rate of the norm statistics", low=0.0, high=1.0, read_by=adaface_update_stats
)


def _adaface_init() -> dict[str, jax.Array]:
    return adaface_init_stats()._asdict()


def _adaface_before(*, config, state, embeddings, axis_name):
    stats = adaface_update_stats(
        AdaFaceStats(**state), embeddings, alpha=config.alpha, axis_name=axis_name
    )
    return stats._asdict(), {"stats": stats}


def _check_magface(*, config) -> None:
    if not config.lower_norm < config.upper_norm:
        raise ConfigError(
            f"config.loss.lower_norm = {config.lower_norm} must be < config.loss.upper_norm "
            f"= {config.upper_norm}"
        )
    if not config.lower_margin <= config.upper_margin:
        raise ConfigError(
            f"config.loss.lower_margin = {config.lower_margin} must be ≤ "
            f"config.loss.upper_margin = {config.upper_margin}"
        )


def _check_elasticface(*, config) -> None:
    if config.plus and config.get("class_sharded"):
        raise ConfigError(
            "config.loss.plus=True (ElasticFace+) ranks the batch's target cosines, which a "
            "class-sharded W cannot: set loss.plus=False or loss.class_sharded=False"
        )


RECORDS = {
    "adaface": Objective(
        adaface,
        "AdaFace (Kim et al., CVPR 2022)",
        {
            "scale": hp.SCALE,
            "margin": hp.real("m", low=0.0, high=hp.HALF_PI),
            "h": hp.real("concentration of the normalized norm ẑ", low=0.0),
            "alpha": _EMA_ALPHA,
        },
        family="successor",
        state=StateRule(init=_adaface_init, before=_adaface_before),
    ),
    "magface": Objective(
        magface,
        "MagFace (Meng et al., CVPR 2021)",
        {
            "scale": hp.SCALE,
            "lower_norm": hp.positive("l_a"),
            "upper_norm": hp.positive("u_a"),
            "lower_margin": hp.real("l_m (radians)", low=0.0, high=hp.HALF_PI),
            "upper_margin": hp.real("u_m (radians)", low=0.0, high=hp.HALF_PI),
            "lambda_g": hp.real("λ_g, weight of the regularizer g(a)", low=0.0),
            "easy_margin": hp.EASY_MARGIN,
        },
        family="successor",
        check=_check_magface,
    ),
    "elasticface": Objective(
        elasticface,
        "ElasticFace (Boutros et al., CVPR-W 2022)",
        {
            "variant": hp.choice(tuple(ELASTICFACE_VARIANTS), "ElasticFace-Arc or -Cos"),
            "scale": hp.SCALE,
            "margin": hp.real("mean margin m", low=0.0, high=hp.HALF_PI),
            "sigma": hp.real("σ of the margin", low=0.0),
            "plus": hp.boolean("ElasticFace+: margins sorted by target cosine"),
        },
        family="successor",
        needs_key=True,
        check=_check_elasticface,
    ),
}
