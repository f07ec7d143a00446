"""Pieces shared by the successors of ArcFace: cosines, a dense cross-entropy, EMA state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from faceloss_jax.losses import engine


def reject_layouts(name, chunk_size, axis_name, class_axis_name) -> None:
    """The error of a dense-only loss given a layout option."""
    if (chunk_size, axis_name, class_axis_name) != (None, None, None):
        raise NotImplementedError(
            f"{name} changes the non-target logits too, so it is dense only: call it on "
            "each device's examples with the whole W, without chunk_size, axis_name or "
            "class_axis_name"
        )


def unit_cosines(embeddings: ArrayLike, weights: ArrayLike) -> jax.Array:
    """cos θ between each embedding (B, d) and each column of W (d, ...): (B, ...)."""
    x, w = jnp.asarray(embeddings), jnp.asarray(weights)
    dtype = engine.acc_dtype(x, w)
    x, w = engine.l2_normalize(x.astype(dtype), -1), engine.l2_normalize(w.astype(dtype), 0)
    return jnp.clip(jnp.tensordot(x, w, axes=1), -1.0, 1.0)


def target_cosines(embeddings: ArrayLike, weights: ArrayLike, labels: ArrayLike) -> jax.Array:
    """cos θ_y (B,) between each embedding and its own class centre."""
    return engine.cosine(
        jnp.asarray(embeddings), jnp.take(jnp.asarray(weights), jnp.asarray(labels), axis=1).T
    )


def cross_entropy(target: jax.Array, others: jax.Array, labels: jax.Array) -> jax.Array:
    """−log softmax of logits ``others`` (B, C) whose label entries are ``target`` (B,)."""
    is_target = labels[:, None] == jnp.arange(others.shape[1])
    logits = jnp.where(is_target, target[:, None].astype(others.dtype), others)
    return jax.nn.logsumexp(logits, axis=1) - target


def ema(old: ArrayLike, batch: jax.Array, alpha: float) -> jax.Array:
    """``alpha·batch + (1 − alpha)·old``, outside the gradient."""
    return lax.stop_gradient(alpha * batch + (1.0 - alpha) * jnp.asarray(old, batch.dtype))


def global_sum(value: jax.Array, axis_name: str | None) -> jax.Array:
    """``value`` summed over ``axis_name`` (itself outside a mapped function)."""
    return value if axis_name is None else lax.psum(value, axis_name)


def check_alpha(name: str, alpha: float) -> None:
    """Raises ValueError unless the EMA rate ``alpha`` lies in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{name}: alpha must lie in [0, 1], got {alpha!r}")
