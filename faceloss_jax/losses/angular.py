"""The softmax family of face recognition: from the linear softmax to ArcFace.

Each loss is a cross-entropy over the class logits of a (d, C) class-centre matrix W
in which only the target logit carries a margin. With ``cos θ_j = w_jᵀx / (‖w_j‖‖x‖)``:

===============================  ==============================  =========================
loss                             target logit                    other logits
===============================  ==============================  =========================
softmax_cross_entropy            w_yᵀx + b_y                     w_jᵀx + b_j
large_margin_softmax (L-Softmax) ‖w_y‖‖x‖ψ(θ_y)                  ‖w_j‖‖x‖cos θ_j
sphereface (A-Softmax)           ‖x‖ψ(θ_y)                       ‖x‖cos θ_j
normface                         s·cos θ_y                       s·cos θ_j
cosface (AM-Softmax, LMCL)       s·(cos θ_y − m)                 s·cos θ_j
arcface                          s·cos(θ_y + m)                  s·cos θ_j
combined_margin                  s·(cos(m1·θ_y + m2) − m3)       s·cos θ_j
===============================  ==============================  =========================

All return per-example losses of shape (B,) in float32 (the caller reduces), take
``labels`` as integer class ids, and accept three layout options that leave the value
unchanged: ``chunk_size`` (stream W in blocks of classes, never holding the B×C
logits), ``axis_name`` (data-parallel: all-gather the batch across that axis) and
``class_axis_name`` (W's columns sharded across that axis). See ``engine.py``.

Target logits are computed without ``arccos`` wherever the paper allows it, and every
square root and ``arccos`` is clipped, so gradients are finite at θ = 0 and θ = π
(cos θ = ±1 exactly) and for zero-norm embeddings or class centres. bfloat16 inputs
give bfloat16 matmuls with float32 accumulation, float32 logits and float32 losses.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from faceloss_jax.errors import ConfigError
from faceloss_jax.losses import engine, schedules
from faceloss_jax.losses import hyperparameters as hp
from faceloss_jax.losses.record import Objective

# ----------------------------------------------------------------------------------
# Margin functions: target cosine (B,) -> modified target cosine (B,).
# ----------------------------------------------------------------------------------


def multiple_angle_psi(cos: jax.Array, margin: int) -> jax.Array:
    """ψ(θ) = (−1)^k cos(mθ) − 2k on θ ∈ [kπ/m, (k+1)π/m], from cos θ alone.

    The monotonically decreasing extension of cos(mθ) of L-Softmax (Liu et al., ICML
    2016, Eq. 6) and SphereFace (Liu et al., CVPR 2017, Eq. 7). ``cos(mθ)`` is the
    Chebyshev polynomial T_m(cos θ), evaluated by the recurrence
    ``T_{n+1} = 2c·T_n − T_{n−1}`` (the papers' binomial expansion, without arccos);
    k counts the thresholds ``cos(jπ/m)``, j = 1..m−1, that cos θ lies at or below.

    Args:
      cos: cosines of the target angles, any shape.
      margin: the integer angular margin m ≥ 1; m = 1 gives ψ(θ) = cos θ.

    Returns:
      ψ(θ), same shape as ``cos``.

    Example:
      >>> import jax.numpy as jnp
      >>> float(multiple_angle_psi(jnp.array(-1.0), 4))  # θ = π: k = 3, −cos 4π − 6
      -7.0
    """
    t_prev, t = jnp.ones_like(cos), cos
    for _ in range(margin - 1):
        t_prev, t = t, 2 * cos * t - t_prev
    k = sum((cos <= math.cos(j * math.pi / margin)).astype(cos.dtype) for j in range(1, margin))
    sign = 1.0 - 2.0 * jnp.mod(k, 2.0)
    return sign * t - 2.0 * k


def additive_angular_margin(
    cos: jax.Array, margin: float, *, easy_margin: bool = False
) -> jax.Array:
    """cos(θ + m) = cos θ cos m − sin θ sin m, with InsightFace's fallbacks.

    Where θ + m > π (cos θ ≤ cos(π − m)) cos(θ + m) would increase again, so the
    target falls back to ``cos θ − m·sin m`` (the ``th``/``mm`` rule of InsightFace);
    with ``easy_margin`` the margin applies only where cos θ > 0 and the target is
    ``cos θ`` elsewhere (Deng et al., "ArcFace", CVPR 2019).

    Args:
      cos: target cosines.
      margin: the additive angular margin m in radians.
      easy_margin: keep θ unchanged where cos θ ≤ 0 instead of the fallback.

    Returns:
      The modified target cosines.
    """
    sin = engine.safe_sqrt(1.0 - cos * cos)
    phi = cos * math.cos(margin) - sin * math.sin(margin)
    if easy_margin:
        return jnp.where(cos > 0, phi, cos)
    return jnp.where(cos > math.cos(math.pi - margin), phi, cos - margin * math.sin(margin))


def combined_angular_margin(cos: jax.Array, m1: float, m2: float, m3: float) -> jax.Array:
    """cos(m1·θ + m2) − m3, the combined margin of the ArcFace paper (Eq. 4).

    Through θ = arccos(cos θ) (with a gradient clipped near cos θ = ±1 so that it
    stays finite), as in InsightFace's original combined-margin code; no fallback is
    applied where m1·θ + m2 > π, so the function is not monotonic there.
    """
    return jnp.cos(m1 * engine.safe_arccos(cos) + m2) - m3


# ----------------------------------------------------------------------------------
# Losses.
# ----------------------------------------------------------------------------------


def _check_integer_margin(name: str, margin: int) -> None:
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 1:
        raise ValueError(f"{name}: margin must be an integer ≥ 1, got {margin!r}")


def _run(name, embeddings, weights, labels, *, spec, target_fn, bias=None, **layout):
    return engine.raw_margin_softmax(
        embeddings,
        weights,
        labels,
        spec=spec,
        target_fn=target_fn,
        bias=bias,
        name=name,
        **layout,
    )


def _dot(x: jax.Array, w: jax.Array) -> jax.Array:
    dtype = engine.acc_dtype(x, w)
    return jnp.sum(x.astype(dtype) * w.astype(dtype), axis=-1)


def softmax_cross_entropy(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    chunk_size: int | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    """Softmax cross-entropy on a linear classifier, the baseline of face recognition.

    ``loss_i = −log softmax(Wᵀx_i + b)_{y_i}`` (e.g. DeepFace, Taigman et al. 2014).

    Args:
      embeddings: (B, d) features.
      weights: (d, C) classifier weights.
      labels: (B,) integer class ids in [0, C).
      bias: optional (C,) bias.
      chunk_size: stream W in blocks of this many classes (same value, less memory).
      axis_name: data-parallel axis name (see module docstring).
      class_axis_name: class-sharded axis name (see module docstring).

    Returns:
      Per-example losses (B,), float32.

    Example:
      >>> import jax.numpy as jnp
      >>> x, w = jnp.eye(2), 2 * jnp.eye(2)
      >>> loss = softmax_cross_entropy(x, w, jnp.array([0, 1]))
      >>> [round(float(v), 4) for v in loss]
      [0.1269, 0.1269]
    """
    spec = engine.Logits(normalize_embeddings=False, normalize_weights=False)

    def target(x, w_y, b_y):
        return _dot(x, w_y) if b_y is None else _dot(x, w_y) + b_y

    return _run(
        "softmax_cross_entropy",
        embeddings,
        weights,
        labels,
        spec=spec,
        target_fn=target,
        bias=bias,
        chunk_size=chunk_size,
        axis_name=axis_name,
        class_axis_name=class_axis_name,
    )


def _normalized(name, embeddings, weights, labels, *, scale, margin_fn, **layout):
    """A loss with both x and W normalized: logits s·cos θ, target s·margin_fn(cos θ_y)."""
    return engine.margin_softmax(
        embeddings, weights, labels, scale=scale, margin_fn=margin_fn, name=name, **layout
    )


def normface(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    scale: float = 16.0,
    chunk_size: int | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    """NormFace: softmax over scaled cosines, ``−log softmax(s·cos θ)_y``.

    Wang et al., "NormFace: L2 Hypersphere Embedding for Face Verification", ACM MM
    2017. Both embeddings and class centres are L2-normalized; s is the scale (the
    paper learns or fixes it; ~16 suits a few classes, 30–64 many).

    Args:
      embeddings: (B, d) features.
      weights: (d, C) class centres.
      labels: (B,) integer class ids.
      scale: the scale s.
      chunk_size: see ``softmax_cross_entropy``.
      axis_name: see ``softmax_cross_entropy``.
      class_axis_name: see ``softmax_cross_entropy``.

    Returns:
      Per-example losses (B,), float32.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = normface(jnp.eye(2), jnp.eye(2), jnp.array([0, 1]), scale=1.0)
      >>> [round(float(v), 4) for v in loss]
      [0.3133, 0.3133]
    """
    return _normalized(
        "normface",
        embeddings,
        weights,
        labels,
        scale=scale,
        margin_fn=lambda c: c,
        chunk_size=chunk_size,
        axis_name=axis_name,
        class_axis_name=class_axis_name,
    )


def cosface(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    scale: float = 64.0,
    margin: float = 0.35,
    chunk_size: int | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    """CosFace / AM-Softmax / LMCL: an additive cosine margin, ``s·(cos θ_y − m)``.

    Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR
    2018 (s = 64, m = 0.35); Wang et al., "Additive Margin Softmax for Face
    Verification", IEEE SPL 2018 (s = 30, m = 0.35). m = 0 is NormFace.

    Args:
      embeddings: (B, d) features.
      weights: (d, C) class centres.
      labels: (B,) integer class ids.
      scale: the scale s.
      margin: the cosine margin m.
      chunk_size: see ``softmax_cross_entropy``.
      axis_name: see ``softmax_cross_entropy``.
      class_axis_name: see ``softmax_cross_entropy``.

    Returns:
      Per-example losses (B,), float32.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = cosface(jnp.eye(2), jnp.eye(2), jnp.array([0, 1]), scale=1.0,
      ...        margin=0.0)
      >>> [round(float(v), 4) for v in loss]
      [0.3133, 0.3133]
    """
    return _normalized(
        "cosface",
        embeddings,
        weights,
        labels,
        scale=scale,
        margin_fn=lambda c: c - margin,
        chunk_size=chunk_size,
        axis_name=axis_name,
        class_axis_name=class_axis_name,
    )


def arcface(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    scale: float = 64.0,
    margin: float = 0.5,
    easy_margin: bool = False,
    straight_through: bool = False,
    chunk_size: int | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    """ArcFace: an additive angular margin, ``s·cos(θ_y + m)``.

    Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
    CVPR 2019 (s = 64, m = 0.5). The target is ``cos θ cos m − sin θ sin m`` (no
    arccos); where θ_y + m > π it falls back to ``cos θ_y − m·sin m`` as InsightFace
    does, or, with ``easy_margin``, to ``cos θ_y`` wherever cos θ_y ≤ 0. m = 0 is
    NormFace. This is the original InsightFace and PML convention, with the exact
    gradient of ``cos(θ + m)``.

    ``straight_through=True`` is current arcface_torch (since its Dec 2022 "fixed
    arcface impl"): the target logit's value is ``s·cos(θ_y + m)`` with no fallback
    past π, and its gradient is that of ``s·cos θ_y`` (the margin is applied under
    ``torch.no_grad``: d logit / d cos θ_y = s).

    Args:
      embeddings: (B, d) features.
      weights: (d, C) class centres.
      labels: (B,) integer class ids.
      scale: the scale s.
      margin: the angular margin m in radians.
      easy_margin: see above.
      straight_through: arcface_torch's convention (see above); not with easy_margin.
      chunk_size: see ``softmax_cross_entropy``.
      axis_name: see ``softmax_cross_entropy``.
      class_axis_name: see ``softmax_cross_entropy``.

    Returns:
      Per-example losses (B,), float32.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = arcface(jnp.eye(2), jnp.eye(2), jnp.array([0, 1]), scale=1.0,
      ...        margin=0.0)
      >>> [round(float(v), 4) for v in loss]
      [0.3133, 0.3133]
    """
    if straight_through:
        if easy_margin:
            raise ValueError("arcface: straight_through (arcface_torch) has no easy_margin")
        return combined_margin(
            embeddings,
            weights,
            labels,
            scale=scale,
            m1=1.0,
            m2=margin,
            m3=0.0,
            straight_through=True,
            chunk_size=chunk_size,
            axis_name=axis_name,
            class_axis_name=class_axis_name,
        )
    return _normalized(
        "arcface",
        embeddings,
        weights,
        labels,
        scale=scale,
        margin_fn=lambda c: additive_angular_margin(c, margin, easy_margin=easy_margin),
        chunk_size=chunk_size,
        axis_name=axis_name,
        class_axis_name=class_axis_name,
    )


def combined_margin(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    scale: float = 64.0,
    m1: float = 1.0,
    m2: float = 0.5,
    m3: float = 0.0,
    straight_through: bool = False,
    chunk_size: int | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    """The combined margin of the ArcFace paper, ``s·(cos(m1·θ_y + m2) − m3)``.

    Deng et al., CVPR 2019, Eq. 4 (InsightFace's best combination: m1 = 1.0,
    m2 = 0.3, m3 = 0.2). m1 is SphereFace's multiplicative margin (here real-valued,
    without ψ's monotonic extension), m2 ArcFace's and m3 CosFace's. Computed through
    a clipped arccos, with no fallback where m1·θ + m2 > π (as the original code).
    arcface_torch's ``margin_list = (m1, m2, m3)`` is these three numbers.

    ``straight_through=True`` is current arcface_torch's ``CombinedMarginLoss``: the
    same value, but the angular part ``cos(m1·θ + m2)`` is applied without gradient,
    so d logit / d cos θ_y = s (its CosFace branch, m1 = 1, m2 = 0, is exact either way).

    Args:
      embeddings: (B, d) features.
      weights: (d, C) class centres.
      labels: (B,) integer class ids.
      scale: the scale s.
      m1: multiplicative angular margin.
      m2: additive angular margin (radians).
      m3: additive cosine margin.
      straight_through: arcface_torch's gradient convention (see above).
      chunk_size: see ``softmax_cross_entropy``.
      axis_name: see ``softmax_cross_entropy``.
      class_axis_name: see ``softmax_cross_entropy``.

    Returns:
      Per-example losses (B,), float32.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = combined_margin(jnp.eye(2), jnp.eye(2), jnp.array([0, 1]), scale=1.0,
      ...                m2=0.0)
      >>> [round(float(v), 4) for v in loss]
      [0.3133, 0.3133]
    """

    def margin_fn(cos):
        if not straight_through:
            return combined_angular_margin(cos, m1, m2, m3)
        angular = combined_angular_margin(cos, m1, m2, 0.0)
        return cos + jax.lax.stop_gradient(angular - cos) - m3

    return _normalized(
        "combined_margin",
        embeddings,
        weights,
        labels,
        scale=scale,
        margin_fn=margin_fn,
        chunk_size=chunk_size,
        axis_name=axis_name,
        class_axis_name=class_axis_name,
    )


def _multiplicative(
    name, embeddings, weights, labels, *, margin, lambda_, normalize_weights, **layout
):
    """L-Softmax / A-Softmax: target ‖w̃_y‖‖x‖(λ cos θ_y + ψ(θ_y)) / (1 + λ)."""
    _check_integer_margin(name, margin)
    spec = engine.Logits(normalize_embeddings=False, normalize_weights=normalize_weights)

    def target(x, w_y, b_y):
        del b_y
        cos = engine.cosine(x, w_y)
        norms = engine.safe_norm(x, -1, False)
        if not normalize_weights:
            norms = norms * engine.safe_norm(w_y, -1, False)
        return norms * (lambda_ * cos + multiple_angle_psi(cos, margin)) / (1.0 + lambda_)

    return _run(name, embeddings, weights, labels, spec=spec, target_fn=target, **layout)


def large_margin_softmax(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    margin: int = 4,
    lambda_: float | jax.Array = 0.0,
    chunk_size: int | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    """L-Softmax: a multiplicative angular margin on the linear softmax.

    Liu et al., "Large-Margin Softmax Loss for Convolutional Neural Networks", ICML
    2016. The target logit ``‖w_y‖‖x‖cos θ_y`` becomes ``‖w_y‖‖x‖ψ(θ_y)`` with
    ``ψ(θ) = (−1)^k cos(mθ) − 2k`` (see ``multiple_angle_psi``), blended for
    optimization as ``(λ‖w_y‖‖x‖cos θ_y + ‖w_y‖‖x‖ψ(θ_y)) / (1 + λ)``, λ annealed
    from large to small by ``lambda_schedule``. No bias, as in the paper. m = 1 is the
    plain softmax without bias.

    Args:
      embeddings: (B, d) features.
      weights: (d, C) classifier weights (not normalized).
      labels: (B,) integer class ids.
      margin: the integer margin m ≥ 1 (the paper uses 2, 3, 4).
      lambda_: the blend λ ≥ 0 (a scalar, possibly traced from a schedule).
      chunk_size: see ``softmax_cross_entropy``.
      axis_name: see ``softmax_cross_entropy``.
      class_axis_name: see ``softmax_cross_entropy``.

    Returns:
      Per-example losses (B,), float32.

    Example:
      >>> import jax.numpy as jnp
      >>> x, w, y = jnp.eye(2), 2 * jnp.eye(2), jnp.array([0, 1])
      >>> loss = large_margin_softmax(x, w, y, margin=1)  # = softmax
      >>> [round(float(v), 4) for v in loss]
      [0.1269, 0.1269]
    """
    return _multiplicative(
        "large_margin_softmax",
        embeddings,
        weights,
        labels,
        margin=margin,
        lambda_=lambda_,
        normalize_weights=False,
        chunk_size=chunk_size,
        axis_name=axis_name,
        class_axis_name=class_axis_name,
    )


def sphereface(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    margin: int = 4,
    lambda_: float | jax.Array = 0.0,
    chunk_size: int | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
) -> jax.Array:
    """A-Softmax (SphereFace): L-Softmax with normalized class centres and no bias.

    Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", CVPR
    2017. Logits ``‖x‖cos θ_j``; target ``‖x‖(λ cos θ_y + ψ(θ_y)) / (1 + λ)`` with
    the same ψ as L-Softmax. m = 1 is the paper's "modified softmax"; the paper trains
    with m = 4 and λ annealed to λ_min = 5 (``lambda_schedule``).

    Args:
      embeddings: (B, d) features (their norm scales the logits).
      weights: (d, C) class centres, normalized inside.
      labels: (B,) integer class ids.
      margin: the integer margin m ≥ 1.
      lambda_: the blend λ ≥ 0.
      chunk_size: see ``softmax_cross_entropy``.
      axis_name: see ``softmax_cross_entropy``.
      class_axis_name: see ``softmax_cross_entropy``.

    Returns:
      Per-example losses (B,), float32.

    Example:
      >>> import jax.numpy as jnp
      >>> x, w, y = jnp.eye(2), 3 * jnp.eye(2), jnp.array([0, 1])
      >>> loss = sphereface(x, w, y, margin=1)  # modified softmax: ‖w‖ = 1
      >>> [round(float(v), 4) for v in loss]
      [0.3133, 0.3133]
    """
    return _multiplicative(
        "sphereface",
        embeddings,
        weights,
        labels,
        margin=margin,
        lambda_=lambda_,
        normalize_weights=True,
        chunk_size=chunk_size,
        axis_name=axis_name,
        class_axis_name=class_axis_name,
    )


# ----------------------------------------------------------------------------------
# The records (``train_lib.objectives`` collects them; defaults: the signatures above).
# ----------------------------------------------------------------------------------

_INT_MARGIN = hp.integer("m, the integer angular margin of ψ(θ)")
STRAIGHT_THROUGH = hp.boolean(
    "current arcface_torch: no fallback, gradient of s·cos θ_y (see losses.arcface)"
)
_LAMBDA = {
    f"lambda_{name}": hp.real(doc, low=0.0, read_by=schedules.lambda_schedule, parameter=parameter)
    for name, parameter, doc in (
        ("base", "base", "λ at step 0"),
        ("gamma", "gamma", "γ of the λ annealing"),
        ("power", "power", "power of the λ annealing"),
        ("min", "lambda_min", "the floor of λ"),
    )
}


def _lambda_at_step(*, config, step: jax.Array) -> dict[str, jax.Array]:
    """L-Softmax / SphereFace's annealed λ, ``max(λ_min, base·(1 + γ·step)^−power)``."""
    schedule = schedules.lambda_schedule(
        config.lambda_base, config.lambda_gamma, config.lambda_power, config.lambda_min
    )
    return {"lambda_": schedule(step)}


def check_straight_through(*, config) -> None:
    """ConfigError for arcface_torch's straight-through margin with an easy margin."""
    if config.straight_through and config.easy_margin:
        raise ConfigError(
            "config.loss.straight_through=True (arcface_torch) has no easy margin: set "
            "loss.easy_margin=False"
        )


RECORDS = {
    "softmax": Objective(
        softmax_cross_entropy,
        "softmax cross-entropy (DeepFace, Taigman et al. 2014)",
        {"use_bias": hp.USE_BIAS},
        classifier="linear",
        aliases=("softmax_cross_entropy",),
    ),
    "lsoftmax": Objective(
        large_margin_softmax,
        "L-Softmax (Liu et al., ICML 2016)",
        {"margin": _INT_MARGIN, **_LAMBDA},
        classifier="linear",
        schedule=_lambda_at_step,
        aliases=("large_margin_softmax",),
    ),
    "sphereface": Objective(
        sphereface,
        "A-Softmax / SphereFace (Liu et al., CVPR 2017)",
        {"margin": _INT_MARGIN, **_LAMBDA},
        schedule=_lambda_at_step,
        aliases=("asoftmax",),
    ),
    "normface": Objective(normface, "NormFace (Wang et al., ACM MM 2017)", {"scale": hp.SCALE}),
    "cosface": Objective(
        cosface,
        "CosFace / AM-Softmax (Wang et al., CVPR 2018)",
        {"scale": hp.SCALE, "margin": hp.real("m, cosine margin", low=0.0, high=2.0)},
        aliases=("amsoftmax",),
    ),
    "arcface": Objective(
        arcface,
        "ArcFace (Deng et al., CVPR 2019)",
        {
            "scale": hp.SCALE,
            "margin": hp.ARC_MARGIN,
            "easy_margin": hp.EASY_MARGIN,
            "straight_through": STRAIGHT_THROUGH,
        },
        check=check_straight_through,
    ),
    "combined": Objective(
        combined_margin,
        "combined margin (Deng et al., CVPR 2019, Eq. 4)",
        {
            "scale": hp.SCALE,
            "m1": hp.real("multiplicative angular margin", low=0.0, low_open=True),
            "m2": hp.real("additive angular margin (radians)", low=0.0, high=hp.HALF_PI),
            "m3": hp.real("additive cosine margin", low=0.0, high=2.0),
            "straight_through": STRAIGHT_THROUGH,
        },
        aliases=("combined_margin",),
    ),
}
