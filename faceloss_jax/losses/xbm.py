"""Cross-batch memory (XBM): pair losses between the batch and the embeddings of past batches.

Wang, Zhang, Huang, Scott, "Cross-Batch Memory for Embedding Learning", CVPR 2020.
Embeddings drift slowly once training has warmed up, so those of the last M samples,
kept in a ring buffer without gradient, serve as extra positives and negatives: a
pair loss sees B×M pairs for the cost of B×B.

The memory is an explicit state, a ``CrossBatchMemory`` of fixed shape (so it jits and
checkpoints): ``xbm_init`` creates it empty, ``xbm_enqueue`` writes a batch over the
oldest slots once ``warmup_steps`` calls have passed (the paper starts the memory
after 1k iterations), and the losses pair the batch's embeddings with the filled
slots only, so an empty memory gives a loss of 0. A training step reads

    loss = contrastive_loss(x, y) + weight * xbm_contrastive_loss(x, y, memory)
    memory = xbm_enqueue(memory, x, y, warmup_steps=1000)

with the in-batch pairs from the Euclidean family and the loss computed before the
batch is enqueued, so no sample is paired with its own copy.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from faceloss_jax.losses import _validation, engine, euclidean
from faceloss_jax.losses import hyperparameters as hp
from faceloss_jax.losses.record import Objective, StateRule


class CrossBatchMemory(NamedTuple):
    """The XBM ring buffer.

    Attributes:
      embeddings: (M, d) the stored embeddings.
      labels: (M,) int32, their identities.
      filled: (M,) bool, the slots written at least once.
      pointer: () int32, the next slot to write (the oldest sample once full).
      steps: () int32, the calls to ``xbm_enqueue`` so far (for the warm-up).
    """

    embeddings: jax.Array
    labels: jax.Array
    filled: jax.Array
    pointer: jax.Array
    steps: jax.Array


def xbm_init(memory_size: int, embedding_dim: int, *, dtype=jnp.float32) -> CrossBatchMemory:
    """An empty memory of ``memory_size`` slots of ``embedding_dim`` floats.

    Example:
      >>> memory = xbm_init(4, 2)
      >>> memory.embeddings.shape, memory.filled.tolist()
      ((4, 2), [False, False, False, False])
    """
    if memory_size < 1 or embedding_dim < 1:
        raise ValueError(
            f"xbm_init: memory_size and embedding_dim must be ≥ 1, got "
            f"{memory_size}, {embedding_dim}"
        )
    return CrossBatchMemory(
        embeddings=jnp.zeros((memory_size, embedding_dim), dtype),
        labels=jnp.zeros((memory_size,), jnp.int32),
        filled=jnp.zeros((memory_size,), bool),
        pointer=jnp.zeros((), jnp.int32),
        steps=jnp.zeros((), jnp.int32),
    )


def _check(name: str, embeddings, labels, memory: CrossBatchMemory) -> None:
    _validation.check_embeddings_labels(embeddings, labels, name=name)
    if jnp.shape(embeddings)[1] != memory.embeddings.shape[1]:
        raise ValueError(
            f"{name}: embeddings have dimension {jnp.shape(embeddings)[1]} but "
            f"the memory holds {memory.embeddings.shape[1]}"
        )


def xbm_enqueue(
    memory: CrossBatchMemory,
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    warmup_steps: int = 0,
    axis_name: str | None = None,
) -> CrossBatchMemory:
    """Writes a batch over the oldest slots of the memory (after the warm-up).

    The first ``warmup_steps`` calls only count the step; later calls write the B
    embeddings (without gradient, cast to the memory's dtype) and labels at slots
    ``pointer, …, pointer + B − 1`` modulo M and move the pointer by B. With
    ``axis_name`` the batch is gathered across the devices of that axis first, so
    every device holds the same memory of the global batches.

    Args:
      memory: the current memory.
      embeddings: (B, d) embeddings (this device's part under ``axis_name``).
      labels: (B,) integer identities.
      warmup_steps: the number of calls that write nothing.
      axis_name: a device axis to gather the batch over, or None.

    Returns:
      The new memory.

    Example:
      >>> memory = xbm_init(3, 1)
      >>> for step in range(3):
      ...     memory = xbm_enqueue(memory, jnp.full((2, 1), step + 1.0), jnp.array([0, 1]),
      ...                          warmup_steps=1)
      >>> memory.embeddings[:, 0].tolist(), memory.pointer.tolist()
      ([3.0, 2.0, 3.0], 1)
    """
    name = "xbm_enqueue"
    _check(name, embeddings, labels, memory)
    x, y = lax.stop_gradient(jnp.asarray(embeddings)), jnp.asarray(labels)
    if axis_name is not None:
        x, y = (lax.all_gather(a, axis_name, tiled=True) for a in (x, y))
    batch, size = x.shape[0], memory.embeddings.shape[0]
    if batch > size:
        raise ValueError(
            f"{name}: a (global) batch of {batch} does not fit a memory of {size} slots"
        )
    slots = (memory.pointer + jnp.arange(batch)) % size
    written = memory._replace(
        embeddings=memory.embeddings.at[slots].set(x.astype(memory.embeddings.dtype)),
        labels=memory.labels.at[slots].set(y.astype(memory.labels.dtype)),
        filled=memory.filled.at[slots].set(True),
        pointer=(memory.pointer + batch) % size,
    )
    active = memory.steps >= warmup_steps
    new = jax.tree.map(lambda a, b: jnp.where(active, a, b), written, memory)
    return new._replace(steps=memory.steps + 1)


def _memory_sq_distances(embeddings: ArrayLike, memory: CrossBatchMemory) -> jax.Array:
    """(B, M) squared distances ‖x_i − m_k‖² to the stored embeddings (no gradient)."""
    x = jnp.asarray(embeddings)
    return euclidean.sq_distances(x, lax.stop_gradient(memory.embeddings).astype(x.dtype))


def xbm_contrastive_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    memory: CrossBatchMemory,
    *,
    margin: float = 1.0,
    axis_name: str | None = None,
) -> jax.Array:
    """The contrastive loss of the pairs (batch sample, filled memory slot).

    Each pair contributes Hadsell et al.'s ``½D²`` (same identity) or
    ``½max(0, m − D)²`` (different), D the Euclidean distance, and the loss is the
    mean over the B × (filled slots) pairs — ``euclidean.contrastive_loss``'s terms
    on the cross-batch pairs; 0 for an empty memory. (The paper's own contrastive
    loss is on cosine similarities; on L2-normalized embeddings D² = 2 − 2·cos.)

    Args:
      embeddings: (B, d) the batch's embeddings (the gradient flows through them).
      labels: (B,) integer identities.
      memory: the memory (no gradient flows into it).
      margin: the margin m.
      axis_name: a device axis whose global batch is paired with the memory (the
        memory, filled by ``xbm_enqueue`` with the same axis, is the same on every
        device): each device sums its own samples' pairs, the mean is over the
        N × (filled slots) pairs of the global batch.

    Returns:
      The scalar loss; with ``axis_name`` this device's share, whose ``lax.pmean``
      over the axis is the loss of the global batch (``euclidean.global_mean``).

    Example:
      >>> memory = xbm_enqueue(xbm_init(2, 2), jnp.array([[0.0, 0.5], [3.0, 4.0]]),
      ...                      jnp.array([0, 1]))
      >>> print(xbm_contrastive_loss(jnp.zeros((1, 2)), jnp.array([0]), memory))
      0.0625
    """
    _check("xbm_contrastive_loss", embeddings, labels, memory)
    labels = jnp.asarray(labels)
    sq_dist = _memory_sq_distances(embeddings, memory)
    same = labels[:, None] == memory.labels[None, :]
    hinge = jax.nn.relu(margin - engine.safe_sqrt(sq_dist))
    per_pair = 0.5 * jnp.where(same, sq_dist, jnp.square(hinge))
    total = jnp.sum(jnp.where(memory.filled[None, :], per_pair, 0))
    pairs = (labels.shape[0] * jnp.sum(memory.filled)).astype(total.dtype)
    return euclidean.global_mean(
        total, pairs, axis_name=axis_name, num_devices=_axis_size(axis_name)
    )


def xbm_triplet_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    memory: CrossBatchMemory,
    *,
    margin: float = 0.2,
    axis_name: str | None = None,
) -> jax.Array:
    """The batch-hard triplet loss with positives and negatives from the memory.

    For each sample a of the batch, its farthest positive p and closest negative n
    among the filled slots give FaceNet's hinge ``[‖a − p‖² − ‖a − n‖² + α]₊``
    (``euclidean.triplet_loss``), averaged over the samples that have both in the
    memory (Hermans et al.'s batch-hard mining, across batches); 0 if none has.
    All-triplet miners would need B × M × M arrays.

    Args:
      embeddings: (B, d) the batch's embeddings.
      labels: (B,) integer identities.
      memory: the memory (no gradient flows into it).
      margin: the margin α.
      axis_name: a device axis whose global batch is mined against the memory:
        each device mines its own anchors, the mean is over every device's valid
        anchors.

    Returns:
      The scalar loss; with ``axis_name`` this device's share, whose ``lax.pmean``
      over the axis is the loss of the global batch (``euclidean.global_mean``).

    Example:
      >>> memory = xbm_enqueue(xbm_init(2, 1), jnp.array([[1.0], [0.5]]), jnp.array([0, 1]))
      >>> print(xbm_triplet_loss(jnp.zeros((1, 1)), jnp.array([0]), memory))
      0.95
    """
    _check("xbm_triplet_loss", embeddings, labels, memory)
    labels = jnp.asarray(labels)
    sq_dist = _memory_sq_distances(embeddings, memory)
    same = labels[:, None] == memory.labels[None, :]
    positives, negatives = same & memory.filled, ~same & memory.filled
    positive = jnp.argmax(jnp.where(positives, sq_dist, -jnp.inf), axis=1)
    negative = jnp.argmin(jnp.where(negatives, sq_dist, jnp.inf), axis=1)
    valid = jnp.any(positives, axis=1) & jnp.any(negatives, axis=1)
    stored = lax.stop_gradient(memory.embeddings)
    hinge = euclidean.triplet_loss(embeddings, stored[positive], stored[negative], margin=margin)
    total = jnp.sum(jnp.where(valid, hinge, 0))
    return euclidean.global_mean(
        total,
        jnp.sum(valid).astype(total.dtype),
        axis_name=axis_name,
        num_devices=_axis_size(axis_name),
    )


def _axis_size(axis_name: str | None) -> int:
    """The number of devices along ``axis_name`` (1 for None)."""
    if axis_name is None:
        return 1
    engine.axis_index(axis_name)  # a clear error for an unbound axis
    return lax.axis_size(axis_name)


def xbm_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    memory: CrossBatchMemory,
    base: str = "triplet",
    margin: float = 0.2,
    mining: str = "batch_all",
    weight: float = 1.0,
    axis_name: str | None = None,
) -> jax.Array:
    """XBM's objective: the in-batch pair loss + ``weight`` · the batch against the memory.

    ``base="triplet"``: ``euclidean.triplet_margin_loss`` (with ``mining``) and
    ``xbm_triplet_loss`` (batch-hard); ``"contrastive"``: ``euclidean.contrastive_loss``
    and ``xbm_contrastive_loss`` (all pairs); both mined over the global batch under
    ``axis_name``.

    Example:
      >>> x = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
      >>> y = jnp.array([0, 0, 1, 1])
      >>> float(xbm_loss(x, y, memory=xbm_init(8, 2)))
      0.0
    """
    pairs = {"margin": margin, "axis_name": axis_name}
    if base == "triplet":
        loss = euclidean.triplet_margin_loss(embeddings, labels, mining=mining, **pairs)
        cross = xbm_triplet_loss(embeddings, labels, memory, **pairs)
    else:
        loss = euclidean.contrastive_loss(embeddings, labels, **pairs)
        cross = xbm_contrastive_loss(embeddings, labels, memory, **pairs)
    return loss + weight * cross


# ----------------------------------------------------------------------------------
# The record (``train_lib.objectives`` collects it; defaults: the signatures above).
# ----------------------------------------------------------------------------------


def _memory_init(*, config, embedding_dim) -> dict[str, jax.Array]:
    return xbm_init(config.memory_size, embedding_dim)._asdict()


def _memory_before(*, state):
    return state, {"memory": CrossBatchMemory(**state)}


def _memory_after(*, config, state, embeddings, labels, axis_name) -> dict[str, jax.Array]:
    memory = xbm_enqueue(
        CrossBatchMemory(**state),
        embeddings,
        labels,
        warmup_steps=config.warmup_steps,
        axis_name=axis_name,
    )
    return memory._asdict()


RECORDS = {
    "xbm": Objective(
        xbm_loss,
        "cross-batch memory (Wang et al., CVPR 2020)",
        {
            "base": hp.choice(("triplet", "contrastive"), "the pair loss"),
            "margin": hp.PAIR_MARGIN,
            "mining": hp.choice(euclidean.MININGS, "in-batch triplet mining"),
            "memory_size": hp.integer("M memory slots", default=1024),
            # The paper starts the memory after 1k iterations (xbm_enqueue: 0).
            "warmup_steps": hp.integer("steps before the memory fills", low=0, default=1000),
            "weight": hp.real("weight of the memory term", low=0.0),
        },
        classifier="none",
        layouts=frozenset({"data_parallel"}),
        family="successor",
        state=StateRule(init=_memory_init, before=_memory_before, after=_memory_after),
        unit_embeddings=True,
    ),
}
