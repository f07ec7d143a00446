"""Input checks shared by the losses.

Two kinds of check, because jit separates shapes from values:

* Shape and dtype checks (`check_rank`, `check_same_shape`, `check_same_batch`,
  `check_integer`, `check_embeddings_labels`) read only static information, so
  they run at trace time, inside `jax.jit`, `vmap` and `pmap` alike, and raise
  before anything is computed.
* Value checks (`check_labels_in_range`) need the numbers themselves. They run
  when the labels are concrete (an eager call) and are skipped when the labels
  are traced, since inside jit a value cannot reach Python. To validate labels
  of a jitted call, call the loss once eagerly or check the batch before
  `jax.jit`; under jit an out-of-range label is not caught (a gather clamps it,
  a segment sum drops it).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


def check_rank(x: ArrayLike, ndim: int, *, what: str, name: str) -> None:
    """Raises ValueError unless `x` has rank `ndim`.

    Args:
      x: the array to check.
      ndim: the required rank.
      what: the argument and its layout, as the message shows it, e.g.
        "embeddings (B, d)".
      name: the calling function, as the message shows it.

    Example:
      >>> check_rank(jnp.zeros(3), 2, what="embeddings (B, d)", name="center_loss")
      Traceback (most recent call last):
      ...
      ValueError: center_loss: embeddings (B, d) must have rank 2, got shape (3,)
    """
    shape = jnp.shape(x)
    if len(shape) != ndim:
        raise ValueError(f"{name}: {what} must have rank {ndim}, got shape {shape}")


def check_same_shape(name: str, **arrays: ArrayLike) -> None:
    """Raises ValueError unless all keyword arrays have one shape.

    Example:
      >>> check_same_shape("triplet_loss", anchor=jnp.zeros((4, 2)),
      ...                  positive=jnp.zeros((3, 2)))
      Traceback (most recent call last):
      ...
      ValueError: triplet_loss: shapes differ: anchor (4, 2), positive (3, 2)
    """
    shapes = {key: jnp.shape(value) for key, value in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{key} {shape}" for key, shape in shapes.items())
        raise ValueError(f"{name}: shapes differ: {listed}")


def check_same_batch(name: str, **arrays: ArrayLike) -> None:
    """Raises ValueError unless all keyword arrays have one leading dimension.

    Example:
      >>> check_same_batch("contrastive_loss", embeddings=jnp.zeros((4, 2)),
      ...                  labels=jnp.zeros(3, int))
      Traceback (most recent call last):
      ...
      ValueError: contrastive_loss: batch sizes differ: embeddings 4, labels 3
    """
    sizes = {key: jnp.shape(value)[0] for key, value in arrays.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{key} {size}" for key, size in sizes.items())
        raise ValueError(f"{name}: batch sizes differ: {listed}")


def check_integer(x: ArrayLike, *, what: str, name: str) -> None:
    """Raises TypeError unless `x` has an integer dtype (bool is not one).

    Example:
      >>> check_integer(jnp.array([0.0, 1.0]), what="labels", name="center_loss")
      Traceback (most recent call last):
      ...
      TypeError: center_loss: labels must have an integer dtype, got float32
    """
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name}: {what} must have an integer dtype, got {dtype}")


def check_labels_in_range(labels: ArrayLike, num_classes: int, *, name: str) -> None:
    """Raises ValueError if a concrete label is outside [0, num_classes).

    Traced labels (inside jit, vmap, pmap, grad of a jitted function) carry no
    values, so the check is skipped for them; see the module docstring.

    Args:
      labels: integer class ids.
      num_classes: the number of classes C.
      name: the calling function, as the message shows it.

    Example:
      >>> check_labels_in_range(jnp.array([0, 3, 1]), 3, name="center_loss")
      Traceback (most recent call last):
      ...
      ValueError: center_loss: labels must lie in [0, 3); got 3 at index 1
    """
    if isinstance(labels, jax.core.Tracer):
        return
    values = np.asarray(labels)
    bad = np.flatnonzero((values < 0) | (values >= num_classes))
    if bad.size:
        index = np.unravel_index(bad[0], values.shape)
        where = index[0] if len(index) == 1 else index
        raise ValueError(
            f"{name}: labels must lie in [0, {num_classes}); "
            f"got {values[index]} at index {where}"
            + (f" ({bad.size} labels out of range)" if bad.size > 1 else "")
        )


def check_embeddings_labels(
    embeddings: ArrayLike,
    labels: ArrayLike,
    num_classes: int | None = None,
    *,
    name: str,
) -> None:
    """Checks a batch of embeddings (B, d) and its integer labels (B,).

    Shapes and dtypes are checked at trace time; with `num_classes`, concrete
    labels are also checked to lie in [0, num_classes).

    Args:
      embeddings: array of shape (B, d).
      labels: integer array of shape (B,).
      num_classes: the number of classes, or None to skip the range check.
      name: the calling function, as the message shows it.

    Raises:
      ValueError: a wrong rank, a batch-size mismatch or a label out of range.
      TypeError: labels that are not integers.

    Example:
      >>> check_embeddings_labels(jnp.zeros((4, 2)), jnp.array([0, 1, 1, 0.5]),
      ...                         name="contrastive_loss")
      Traceback (most recent call last):
      ...
      TypeError: contrastive_loss: labels must have an integer dtype, got float32
    """
    check_rank(embeddings, 2, what="embeddings (B, d)", name=name)
    check_rank(labels, 1, what="labels (B,)", name=name)
    check_same_batch(name, embeddings=embeddings, labels=labels)
    check_integer(labels, what="labels", name=name)
    if num_classes is not None:
        check_labels_in_range(labels, num_classes, name=name)


def check_head_inputs(name, embeddings, weights, labels, bias=None, class_axis_name=None):
    """The checks of a classifier head: embeddings (B, d), labels (B,), float weights
    (d, C) and embeddings, bias (C,) if given, labels in [0, C) unless W is
    class-sharded (its local C is not the range)."""
    check_embeddings_labels(embeddings, labels, name=name)
    check_rank(weights, 2, what="weights (d, C)", name=name)
    d, num_classes = jnp.shape(weights)
    if d != jnp.shape(embeddings)[1]:
        raise ValueError(
            f"{name}: weights are (d, C) = {jnp.shape(weights)} but embeddings have "
            f"d = {jnp.shape(embeddings)[1]}; weights must be shaped (embedding_dim, "
            "num_classes)"
        )
    if bias is not None and jnp.shape(bias) != (num_classes,):
        raise ValueError(f"{name}: bias must have shape ({num_classes},), got {jnp.shape(bias)}")
    if class_axis_name is None:
        check_labels_in_range(labels, num_classes, name=name)
    for what, value in (("embeddings", embeddings), ("weights", weights)):
        if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
            raise TypeError(f"{name}: {what} must be floating point, got {jnp.result_type(value)}")
