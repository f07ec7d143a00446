"""Partial FC: a fixed-shape random sample of the classes, always with the positives.

An et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW
2021: each step scores the batch against only a fraction r (0.1–0.3) of the class
centres, chosen at random but always containing the classes present in the batch;
the centres not sampled get no gradient in that step. Here the sample has a static
size, so it jits, and the randomness is an explicit key:

    >>> import jax, jax.numpy as jnp
    >>> from faceloss_jax import losses
    >>> key = jax.random.PRNGKey(0)
    >>> x = jax.random.normal(key, (8, 16))
    >>> w = jax.random.normal(key, (16, 1000))
    >>> y = jnp.arange(8) * 100
    >>> classes, y_sampled = losses.sample_classes(key, y, 1000, sample_rate=0.1)
    >>> classes.shape, bool(jnp.all(classes[y_sampled] == y))
    ((100,), True)
    >>> loss = losses.arcface(x, w[:, classes], y_sampled)  # gradient reaches w[:, classes]

Class-sharded, each device samples from its own block of columns (``class_axis_name``)
with a key folded with its index, and the returned labels index the concatenation of
all devices' samples, which is again contiguous per device: pass the sampled block and
labels to any angular loss with the same ``class_axis_name``.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike


def class_block_size(num_classes: int, num_shards: int) -> int:
    """Columns per device when C classes are sharded over ``num_shards`` devices.

    The class-sharded head expects equal contiguous blocks. Padding W with extra
    columns would change the softmax normalizer, so C must divide evenly.

    Example:
      >>> class_block_size(1000, 8)
      125
    """
    if num_shards < 1 or num_classes % num_shards:
        raise ValueError(
            f"{num_classes} classes cannot be sharded evenly over {num_shards} devices; "
            f"choose num_classes divisible by {num_shards} (e.g. "
            f"{-(-num_classes // num_shards) * num_shards}) or another device count"
        )
    return num_classes // num_shards


def num_sampled(num_classes: int, sample_rate: float, batch_size: int) -> int:
    """The static sample size: ``int(r·C)`` as arcface_torch counts it, raised to
    min(B, C) so that every positive of the batch fits in a static shape.

    arcface_torch (``PartialFC_V2``) samples ``int(sample_rate * num_local)`` classes and,
    when a batch has more distinct positives than that, all of its positives (a dynamic
    size); a static shape must hold the worst case, B positives. Truncation, not
    rounding up: 0.07 · 10000 is 700.0000000000001 in floating point and gives 700.

    Example:
      >>> num_sampled(10000, 0.07, 128), num_sampled(1000, 0.1, 512)
      (700, 512)
    """
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    return min(num_classes, max(int(sample_rate * num_classes), batch_size))


def sample_classes(
    key: jax.Array,
    labels: ArrayLike,
    num_classes: int,
    *,
    sample_rate: float,
    class_axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Samples K = ``num_sampled(C, r, B)`` classes that include all of ``labels``.

    Args:
      key: PRNG key; the same key gives the same sample.
      labels: (B,) global integer class ids of the batch.
      num_classes: C, the number of columns of the (local) weight block.
      sample_rate: r in (0, 1]; r = 1 keeps every class in order.
      class_axis_name: if the weights are class-sharded, the axis they are sharded
        over; ``num_classes`` is then the size of this device's block.

    Returns:
      ``(classes, sampled_labels)``: the sorted (K,) column indices into the (local)
      weight block, and (B,) labels re-indexed into the sampled classes (global
      across devices when class-sharded).
    """
    labels = jnp.asarray(labels)
    k = num_sampled(num_classes, sample_rate, labels.shape[0])
    shard, offset = 0, 0
    if class_axis_name is not None:
        shard = lax.axis_index(class_axis_name)
        key = jax.random.fold_in(key, shard)
        offset = shard * num_classes
    local = labels - offset
    owned = (local >= 0) & (local < num_classes)
    positive = (
        jnp.zeros(num_classes, bool).at[jnp.where(owned, local, num_classes)].set(True, mode="drop")
    )
    # Positives score above every random negative, so top-k keeps them all.
    scores = jnp.where(positive, 2.0, jax.random.uniform(key, (num_classes,)))
    classes = jnp.sort(lax.top_k(scores, k)[1])
    position = jnp.searchsorted(classes, jnp.clip(local, 0, num_classes - 1))
    owner = labels // num_classes
    # Labels of other devices' classes only need to fall inside their owner's block.
    sampled = owner * k + jnp.where(owned, position, 0)
    return classes, sampled
