"""The Euclidean family: losses on distances between embeddings.

Contrastive (Hadsell et al. 2006; DeepID2's verification signal), triplet
(FaceNet) with in-batch mining, and center loss (Wen et al. 2016) with its
explicit center update.

In-batch triplet mining follows the distance / miner / reducer split of
pytorch-metric-learning, as pure functions on fixed shapes so that it jits:

* distance: `pairwise_sq_distances` gives the (B, B) squared distances;
* miners: `batch_all_triplets` returns the (B, B, B) mask of valid triplets
  (anchor, positive, negative); `batch_hard_triplets` (one triplet per anchor)
  and `semi_hard_triplets` (one per positive pair) return the chosen indices
  with a validity mask, at fixed shapes;
* reducer: `triplet_margin_loss` averages the hinge over the mined triplets.

Global mining (``axis_name``, inside ``shard_map`` or ``pmap``): `contrastive_loss`
and `triplet_margin_loss` all-gather the embeddings and labels of the axis, so each
device's anchors are paired and mined against the whole global batch (with 8
examples per device a local batch holds almost no positives); every miner works row
by row, one row per anchor, so a device needs only its anchors' (b, N) rows. Each
device returns its anchors' share of the global mean, times the axis size, so that
the mean over the axis (``lax.pmean``, what a data-parallel train step does with the
per-device losses and gradients) is the single-device loss of the global batch, and
so is its gradient (the all-gather's transpose sums each embedding's cotangents).

Inputs in a low-precision float (bfloat16, float16) are computed, and the
losses returned, in float32; float64 stays float64.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from faceloss_jax.losses import _validation, angular, engine
from faceloss_jax.losses import hyperparameters as hp
from faceloss_jax.losses.record import Objective, StateRule

MININGS = ("batch_all", "batch_hard", "semi_hard")


class PairBatch(NamedTuple):
    """The anchors of one device and the global batch they are paired with.

    Attributes:
      anchors: (b, d) this device's embeddings (the whole batch without an axis).
      anchor_labels: (b,) their identities.
      others: (N, d) the embeddings of the global batch (``anchors`` itself without
        an axis; all-gathered, device-major, with one).
      other_labels: (N,) their identities.
      positions: (b,) int, each anchor's row in the global batch.
      num_devices: the size of the axis (1 without one).
    """

    anchors: jax.Array
    anchor_labels: jax.Array
    others: jax.Array
    other_labels: jax.Array
    positions: jax.Array
    num_devices: int


def pair_batch(embeddings: ArrayLike, labels: ArrayLike, axis_name: str | None) -> PairBatch:
    """This device's anchors and the global batch (all-gathered over ``axis_name``).

    Example:
      >>> import jax.numpy as jnp
      >>> batch = pair_batch(jnp.zeros((3, 2)), jnp.array([0, 1, 1]), None)
      >>> batch.others.shape, batch.positions.tolist(), batch.num_devices
      ((3, 2), [0, 1, 2], 1)
    """
    x, y = jnp.asarray(embeddings), jnp.asarray(labels)
    local = x.shape[0]
    if axis_name is None:
        return PairBatch(x, y, x, y, jnp.arange(local), 1)
    index = engine.axis_index(axis_name)
    others, other_labels = (lax.all_gather(a, axis_name, tiled=True) for a in (x, y))
    positions = index * local + jnp.arange(local)
    return PairBatch(x, y, others, other_labels, positions, others.shape[0] // max(local, 1))


def anchor_sq_distances(batch: PairBatch) -> jax.Array:
    """(b, N) squared distances of the anchors to the global batch, exactly 0 at each
    anchor's own column (`pairwise_sq_distances` when there is no axis)."""
    sq_dist = sq_distances(batch.anchors, batch.others)
    return jnp.where(_self_pairs(batch), 0, sq_dist)


def _self_pairs(batch: PairBatch) -> jax.Array:
    """(b, N) mask of each anchor's own column."""
    return batch.positions[:, None] == jnp.arange(batch.others.shape[0])[None, :]


def _anchor_masks(batch: PairBatch) -> tuple[jax.Array, jax.Array]:
    """(b, N) masks of each anchor's positives (same identity, not itself) and negatives."""
    same = batch.anchor_labels[:, None] == batch.other_labels[None, :]
    return same & ~_self_pairs(batch), ~same


def global_mean(
    total: jax.Array, count: jax.Array, *, axis_name: str | None, num_devices: int
) -> jax.Array:
    """``total / max(count, 1)`` over the global batch, as this device's share.

    Without an axis, the mean. With one, ``num_devices · total / max(Σ count, 1)``
    (count summed over the axis): its ``lax.pmean`` over the axis is the global mean.
    """
    if axis_name is not None:
        count = lax.psum(count, axis_name)
    return num_devices * total / jnp.maximum(count, 1)


def _sq_distance(x: jax.Array, y: jax.Array) -> jax.Array:
    """Row-wise squared Euclidean distance ‖x − y‖² over the last axis."""
    return jnp.sum(jnp.square(x - y), axis=-1)


def contrastive_pair_loss(
    x0: ArrayLike, x1: ArrayLike, same: ArrayLike, *, margin: float = 1.0
) -> jax.Array:
    """Contrastive loss of N explicit pairs, as the classic PyTorch `ContrastiveLoss`.

    With D_i = ‖x0_i − x1_i‖₂ and y_i = 1 for a same-identity pair, 0 otherwise:

        L = Σ_i [y_i·D_i² + (1 − y_i)·max(0, m − D_i)²] / 2 / N.

    D is a safe square root: the gradient is finite (zero) where x0_i == x1_i.

    References:
      Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant
      Mapping", CVPR 2006.

    Args:
      x0: embeddings of the first elements, shape (N, d).
      x1: embeddings of the second elements, shape (N, d).
      same: shape (N,), 1 (or True) for a same-identity pair, 0 for a different
        one; fractional values blend the two terms, as in the classic code.
      margin: the margin m that different pairs are pushed beyond.

    Returns:
      The scalar loss (0 for N = 0).

    Example:
      >>> import jax.numpy as jnp
      >>> from faceloss_jax import losses
      >>> x0 = jnp.array([[0.0, 0.0], [1.0, 0.0]])
      >>> x1 = jnp.array([[3.0, 4.0], [1.0, 0.0]])
      >>> print(losses.contrastive_pair_loss(x0, x1, jnp.array([True, False])))
      6.5
    """
    name = "contrastive_pair_loss"
    _validation.check_rank(x0, 2, what="x0 (N, d)", name=name)
    _validation.check_same_shape(name, x0=x0, x1=x1)
    _validation.check_rank(same, 1, what="same (N,)", name=name)
    _validation.check_same_batch(name, x0=x0, same=same)
    sq_dist = _sq_distance(engine.as_float(x0), engine.as_float(x1))
    y = jnp.asarray(same).astype(sq_dist.dtype)
    hinge = jax.nn.relu(margin - engine.safe_sqrt(sq_dist))
    per_pair = y * sq_dist + (1 - y) * jnp.square(hinge)
    return jnp.sum(per_pair) / 2 / max(per_pair.shape[0], 1)


def sq_distances(a: ArrayLike, b: ArrayLike) -> jax.Array:
    """Squared Euclidean distances between two sets, D²_ij = ‖a_i − b_j‖².

    Computed as ‖a_i‖² + ‖b_j‖² − 2·a_iᵀb_j (one matmul at full precision, not an
    (N, M, d) difference tensor), clamped at 0 against rounding.

    Args:
      a: shape (N, d).
      b: shape (M, d).

    Returns:
      Shape (N, M), non-negative, in the promoted float dtype (at least float32).

    Example:
      >>> import jax.numpy as jnp
      >>> from faceloss_jax import losses
      >>> losses.sq_distances(jnp.array([[0.0, 0.0]]), jnp.array([[3.0, 4.0], [0.0, 1.0]]))
      Array([[25.,  1.]], dtype=float32)
    """
    _validation.check_rank(a, 2, what="a (N, d)", name="sq_distances")
    _validation.check_rank(b, 2, what="b (M, d)", name="sq_distances")
    dtype = engine.acc_dtype(jnp.asarray(a), jnp.asarray(b))
    x, y = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    cross = jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.sum(jnp.square(x), axis=-1)[:, None] + jnp.sum(jnp.square(y), axis=-1)[None, :]
    return jnp.maximum(sq - 2 * cross, 0)


def pairwise_sq_distances(embeddings: ArrayLike) -> jax.Array:
    """All squared Euclidean distances of a batch, D²_ij = ‖x_i − x_j‖².

    ``sq_distances(x, x)`` with an exact zero diagonal.

    Args:
      embeddings: shape (B, d).

    Returns:
      Shape (B, B), symmetric, non-negative, zero on the diagonal.

    Example:
      >>> import jax.numpy as jnp
      >>> from faceloss_jax import losses
      >>> losses.pairwise_sq_distances(jnp.array([[0.0, 0.0], [3.0, 4.0]]))
      Array([[ 0., 25.],
             [25.,  0.]], dtype=float32)
    """
    _validation.check_rank(embeddings, 2, what="embeddings (B, d)", name="pairwise_sq_distances")
    sq_dist = sq_distances(embeddings, embeddings)
    return jnp.where(jnp.eye(sq_dist.shape[0], dtype=bool), 0, sq_dist)


def contrastive_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    margin: float = 1.0,
    axis_name: str | None = None,
) -> jax.Array:
    """Contrastive loss over all in-batch pairs i < j.

    With D_ij = ‖x_i − x_j‖₂, each unordered pair contributes

        ½·D_ij²              if y_i = y_j,
        ½·max(0, m − D_ij)²  otherwise,

    and the loss is the mean over the B(B − 1)/2 pairs, so that it equals
    `contrastive_pair_loss` on the list of all pairs. This is also the
    verification signal of DeepID2 (with m learned or tuned; the joint loss is
    `identification + λ·contrastive_loss`).

    References:
      Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant
      Mapping", CVPR 2006.
      Sun, Wang, Tang, "Deep Learning Face Representation by Joint
      Identification-Verification", NeurIPS 2014.

    Args:
      embeddings: shape (B, d).
      labels: integer identities, shape (B,).
      margin: the margin m that different pairs are pushed beyond.
      axis_name: a device axis whose global batch is paired (see the module
        docstring): each device sums the pairs (i, j > i) of its anchors i.

    Returns:
      The scalar loss (0 for B < 2); with ``axis_name`` this device's share, whose
      ``lax.pmean`` over the axis is the loss of the global batch.

    Example:
      >>> import jax.numpy as jnp
      >>> from faceloss_jax import losses
      >>> embeddings = jnp.array([[0.0, 0.0], [0.0, 0.5], [3.0, 4.0]])
      >>> print(losses.contrastive_loss(embeddings, jnp.array([0, 0, 1])))
      0.041666668
    """
    _validation.check_embeddings_labels(embeddings, labels, name="contrastive_loss")
    batch = pair_batch(embeddings, labels, axis_name)
    sq_dist = anchor_sq_distances(batch)
    hinge = jax.nn.relu(margin - engine.safe_sqrt(sq_dist))
    same = batch.anchor_labels[:, None] == batch.other_labels[None, :]
    per_pair = 0.5 * jnp.where(same, sq_dist, jnp.square(hinge))
    size = batch.others.shape[0]
    upper = jnp.arange(size)[None, :] > batch.positions[:, None]  # pairs i < j, once
    total = jnp.sum(jnp.where(upper, per_pair, 0))
    return global_mean(
        total,
        jnp.asarray(max(size * (size - 1) // 2, 1), total.dtype),
        axis_name=None,  # the number of pairs is already the global one
        num_devices=batch.num_devices,
    )


def triplet_loss(
    anchor: ArrayLike, positive: ArrayLike, negative: ArrayLike, *, margin: float = 0.2
) -> jax.Array:
    """Triplet loss of explicit triplets, as the classic PyTorch `TripletLoss`.

        L_i = max(0, ‖a_i − p_i‖² − ‖a_i − n_i‖² + α),

    with squared Euclidean distances as in FaceNet (which L2-normalizes the
    embeddings first and uses α = 0.2). The classic module returns `L.mean()`.

    References:
      Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face
      Recognition and Clustering", CVPR 2015.

    Args:
      anchor: shape (B, d).
      positive: same identity as the anchor, shape (B, d).
      negative: another identity, shape (B, d).
      margin: the margin α.

    Returns:
      The per-triplet losses, shape (B,).

    Example:
      >>> import jax.numpy as jnp
      >>> from faceloss_jax import losses
      >>> a, p = jnp.array([[0.0, 0.0]]), jnp.array([[0.0, 1.0]])
      >>> losses.triplet_loss(a, p, jnp.array([[1.0, 0.0]]))
      Array([0.2], dtype=float32)
    """
    name = "triplet_loss"
    _validation.check_rank(anchor, 2, what="anchor (B, d)", name=name)
    _validation.check_same_shape(name, anchor=anchor, positive=positive, negative=negative)
    anchor = engine.as_float(anchor)
    d_ap = _sq_distance(anchor, engine.as_float(positive))
    d_an = _sq_distance(anchor, engine.as_float(negative))
    return jax.nn.relu(d_ap - d_an + margin)


def _positive_pairs(labels: jax.Array) -> jax.Array:
    """(B, B) mask of pairs (i, j), i ≠ j, of one identity."""
    same = labels[:, None] == labels[None, :]
    return same & ~jnp.eye(labels.shape[0], dtype=bool)


def _negative_pairs(labels: jax.Array) -> jax.Array:
    """(B, B) mask of pairs (i, j) of different identities."""
    return labels[:, None] != labels[None, :]


def _check_labels(labels: ArrayLike, *, name: str) -> None:
    _validation.check_rank(labels, 1, what="labels (B,)", name=name)
    _validation.check_integer(labels, what="labels", name=name)


def _check_miner_inputs(sq_distances: ArrayLike, labels: ArrayLike, *, name: str) -> None:
    _check_labels(labels, name=name)
    batch = jnp.shape(labels)[0]
    if jnp.shape(sq_distances) != (batch, batch):
        raise ValueError(
            f"{name}: sq_distances must have shape (B, B) = {(batch, batch)} for "
            f"{batch} labels, got {jnp.shape(sq_distances)}"
        )


def batch_all_triplets(labels: ArrayLike) -> jax.Array:
    """Miner: every valid triplet of the batch.

    Args:
      labels: integer identities, shape (B,).

    Returns:
      Boolean mask of shape (B, B, B), True at [a, p, n] when a ≠ p,
      y_a = y_p and y_a ≠ y_n.

    Example:
      >>> import jax.numpy as jnp
      >>> from faceloss_jax import losses
      >>> jnp.argwhere(losses.batch_all_triplets(jnp.array([0, 0, 1]))).tolist()
      [[0, 1, 2], [1, 0, 2]]
    """
    _check_labels(labels, name="batch_all_triplets")
    labels = jnp.asarray(labels)
    return _positive_pairs(labels)[:, :, None] & _negative_pairs(labels)[:, None, :]


def batch_hard_triplets(
    sq_distances: ArrayLike, labels: ArrayLike
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Miner: for each anchor, its farthest positive and its closest negative.

    The "batch hard" triplets of Hermans et al., one per anchor a:
    (a, positive[a], negative[a]), kept where valid[a], i.e. where the batch
    holds both a positive and a negative of a. Ties go to the lowest index.

    References:
      Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person
      Re-Identification", arXiv:1703.07737, 2017.

    Args:
      sq_distances: pairwise squared distances, shape (B, B).
      labels: integer identities, shape (B,).

    Returns:
      (positive, negative, valid): int indices, int indices and a boolean mask,
      each of shape (B,).

    Example:
      >>> import jax.numpy as jnp
      >>> from faceloss_jax import losses
      >>> x, labels = jnp.array([[0.0], [1.0], [3.0], [2.0]]), jnp.array([0, 0, 0, 1])
      >>> positive, negative, valid = losses.batch_hard_triplets(
      ...     losses.pairwise_sq_distances(x), labels)
      >>> print(positive, negative, valid)
      [2 2 0 0] [3 3 3 1] [ True  True  True False]
    """
    _check_miner_inputs(sq_distances, labels, name="batch_hard_triplets")
    labels = jnp.asarray(labels)
    return _batch_hard_rows(
        jnp.asarray(sq_distances), _positive_pairs(labels), _negative_pairs(labels)
    )


def _batch_hard_rows(
    sq_distances: jax.Array, positives: jax.Array, negatives: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`batch_hard_triplets` on (b, N) rows of anchors and their (b, N) masks."""
    positive = jnp.argmax(jnp.where(positives, sq_distances, -jnp.inf), axis=1)
    negative = jnp.argmin(jnp.where(negatives, sq_distances, jnp.inf), axis=1)
    valid = jnp.any(positives, axis=1) & jnp.any(negatives, axis=1)
    return positive, negative, valid


def semi_hard_triplets(sq_distances: ArrayLike, labels: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Miner: for each positive pair (a, p), FaceNet's semi-hard negative.

    One triplet per pair (a, p): (a, p, negative[a, p]), kept where
    valid[a, p], i.e. where a ≠ p share an identity and the batch holds a
    negative of a. The rule is TensorFlow Addons' (`triplet_semihard_loss`):
    the closest negative farther than the positive, argmin {D²_an : D²_an >
    D²_ap}; if no negative is farther, the farthest negative, argmax D²_an. A
    semi-hard negative (D²_ap < D²_an < D²_ap + α), when one exists, is thus
    always the one chosen. Ties go to the lowest index.

    References:
      Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face
      Recognition and Clustering", CVPR 2015.

    Args:
      sq_distances: pairwise squared distances, shape (B, B).
      labels: integer identities, shape (B,).

    Returns:
      (negative, valid): int indices and a boolean mask, each of shape (B, B).

    Example:
      >>> import jax.numpy as jnp
      >>> from faceloss_jax import losses
      >>> x, labels = jnp.array([[0.0], [1.0], [1.05], [3.0]]), jnp.array([0, 0, 1, 1])
      >>> negative, valid = losses.semi_hard_triplets(losses.pairwise_sq_distances(x), labels)
      >>> [(a, p, negative.tolist()[a][p]) for a, p in jnp.argwhere(valid).tolist()]
      [(0, 1, 2), (1, 0, 3), (2, 3, 0), (3, 2, 1)]

      (0, 1, 2) is semi-hard, (1, 0, 3) easy, (2, 3, 0) the fallback.
    """
    _check_miner_inputs(sq_distances, labels, name="semi_hard_triplets")
    labels = jnp.asarray(labels)
    return _semi_hard_rows(
        jnp.asarray(sq_distances), _positive_pairs(labels), _negative_pairs(labels)
    )


def _semi_hard_rows(
    sq_distances: jax.Array, positives: jax.Array, negatives: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """`semi_hard_triplets` on (b, N) rows of anchors and their (b, N) masks."""
    d_ap, d_an = sq_distances[:, :, None], sq_distances[:, None, :]
    farther = negatives[:, None, :] & (d_an > d_ap)
    closest_farther = jnp.argmin(jnp.where(farther, d_an, jnp.inf), axis=2)
    # Whether a farther negative exists is read off the argmin, not from a second
    # reduction over (B, B, B) that would make XLA materialize `farther`.
    found = jnp.take_along_axis(negatives, closest_farther, axis=1) & (
        jnp.take_along_axis(sq_distances, closest_farther, axis=1) > sq_distances
    )
    farthest = jnp.argmax(jnp.where(negatives, sq_distances, -jnp.inf), axis=1)
    negative = jnp.where(found, closest_farther, farthest[:, None])
    valid = positives & jnp.any(negatives, axis=1)[:, None]
    return negative, valid


def triplet_margin_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    margin: float = 0.2,
    mining: str = "batch_all",
    axis_name: str | None = None,
) -> jax.Array:
    """Triplet loss with in-batch online mining (fixed shapes, jit-compatible).

    Every triplet (a, p, n) of the batch has the FaceNet hinge on squared
    distances, h_apn = max(0, D²_ap − D²_an + α); a miner selects triplets and
    the loss is the mean of h over the selected ones:

    * "batch_all": all valid triplets, averaged over the active ones only
      (h > 0), the "BA≠0" variant of Hermans et al. that keeps the loss from
      vanishing as easy triplets accumulate (pytorch-metric-learning's default
      `AvgNonZeroReducer`); see `batch_all_triplets`. It holds (B, B, B)
      arrays: O(B³) memory, 0.5 GiB per float32 array at B = 512.
    * "batch_hard": one triplet per anchor (hardest positive, hardest
      negative), averaged over the anchors that have both; see
      `batch_hard_triplets`. O(B²) memory.
    * "semi_hard": one triplet per positive pair (a, p), FaceNet's semi-hard
      negative with TF-Addons' rule and fallback, averaged over the positive
      pairs whose anchor has a negative (zero-loss triplets included, as in
      TF-Addons); see `semi_hard_triplets`. O(B²) memory (the O(B³)
      comparisons of the miner fuse into one reduction).

    The mean of an empty selection is 0. The selection itself carries no
    gradient; the gradient flows through the distances of the selected triplets.

    References:
      Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face
      Recognition and Clustering", CVPR 2015.
      Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person
      Re-Identification", arXiv:1703.07737, 2017.

    Args:
      embeddings: shape (B, d); FaceNet L2-normalizes them first.
      labels: integer identities, shape (B,).
      margin: the margin α.
      mining: one of "batch_all", "batch_hard", "semi_hard" (static under jit).
      axis_name: a device axis whose global batch is mined (see the module
        docstring): each device mines the triplets of its own anchors against all
        N examples ((b, N, N) for "batch_all"), and the mean is over every
        device's selected triplets.

    Returns:
      The scalar loss; with ``axis_name`` this device's share, whose ``lax.pmean``
      over the axis is the loss of the global batch.

    Raises:
      ValueError: an unknown `mining`, or bad shapes (see `check_embeddings_labels`).

    Example:
      >>> import jax.numpy as jnp
      >>> from faceloss_jax import losses
      >>> x, labels = jnp.array([[0.0], [0.5], [0.6], [3.0]]), jnp.array([0, 0, 1, 1])
      >>> print(f"{losses.triplet_margin_loss(x, labels, mining='batch_hard'):.2f}")
      1.62
    """
    name = "triplet_margin_loss"
    if mining not in MININGS:
        raise ValueError(f"{name}: unknown mining {mining!r}; expected one of {MININGS}")
    _validation.check_embeddings_labels(embeddings, labels, name=name)
    batch = pair_batch(embeddings, labels, axis_name)
    sq_dist = anchor_sq_distances(batch)
    positives, negatives = _anchor_masks(batch)
    if mining == "batch_all":
        hinge = jax.nn.relu(sq_dist[:, :, None] - sq_dist[:, None, :] + margin)
        selected = positives[:, :, None] & negatives[:, None, :] & (hinge > 0)
    elif mining == "batch_hard":
        positive, negative, selected = _batch_hard_rows(sq_dist, positives, negatives)
        anchor = jnp.arange(sq_dist.shape[0])
        hinge = jax.nn.relu(sq_dist[anchor, positive] - sq_dist[anchor, negative] + margin)
    else:
        negative, selected = _semi_hard_rows(sq_dist, positives, negatives)
        d_an = jnp.take_along_axis(sq_dist, negative, axis=1)
        hinge = jax.nn.relu(sq_dist - d_an + margin)
    total = jnp.sum(jnp.where(selected, hinge, 0))
    count = jnp.sum(selected).astype(total.dtype)
    return global_mean(total, count, axis_name=axis_name, num_devices=batch.num_devices)


def _check_centers(
    centers: ArrayLike, embeddings: ArrayLike, labels: ArrayLike, *, name: str
) -> None:
    """Shape, dtype and (eager) label-range checks for the center-loss pair."""
    _validation.check_rank(centers, 2, what="centers (C, d)", name=name)
    num_classes, dim = jnp.shape(centers)
    _validation.check_embeddings_labels(embeddings, labels, num_classes, name=name)
    if jnp.shape(embeddings)[1] != dim:
        raise ValueError(
            f"{name}: embeddings have dimension {jnp.shape(embeddings)[1]} but centers have {dim}"
        )


def center_loss(embeddings: ArrayLike, centers: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Center loss, the squared distance of each embedding to its class center.

        L_i = ½‖x_i − c_{y_i}‖².

    The paper trains with `softmax + λ·mean(L)` (λ = 0.003 on faces) and moves
    the centers with their own rule, `update_centers`, not by gradient: keep
    `centers` out of the differentiated arguments (the gradient with respect to
    them is that of the learnable-centers variant).

    References:
      Wen, Zhang, Li, Qiao, "A Discriminative Feature Learning Approach for
      Deep Face Recognition", ECCV 2016.

    Args:
      embeddings: shape (B, d).
      centers: one center per class, shape (C, d).
      labels: integer classes in [0, C), shape (B,); the range is checked when
        the call is eager (see `_validation`).

    Returns:
      The per-example losses, shape (B,).

    Example:
      >>> import jax.numpy as jnp
      >>> from faceloss_jax import losses
      >>> centers = jnp.array([[0.0, 0.0], [1.0, 1.0]])
      >>> losses.center_loss(jnp.array([[3.0, 4.0], [1.0, 1.0]]), centers, jnp.array([0, 1]))
      Array([12.5,  0. ], dtype=float32)
    """
    _check_centers(centers, embeddings, labels, name="center_loss")
    own_centers = engine.as_float(jnp.asarray(centers)[jnp.asarray(labels)])
    return 0.5 * _sq_distance(engine.as_float(embeddings), own_centers)


def update_centers(
    centers: ArrayLike,
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: float = 0.5,
    axis_name: str | None = None,
) -> jax.Array:
    """The center-loss center update, an explicit state update (no gradient).

        c_j ← c_j − α·Σ_{i: y_i = j} (c_j − x_i) / (1 + n_j),

    n_j the number of examples of class j in the batch; classes absent from
    the batch keep their centers. With `axis_name` (inside pmap or shard_map)
    the per-class sums and counts are summed across the devices of that axis,
    so every replica applies the update of the global batch.

    References:
      Wen, Zhang, Li, Qiao, "A Discriminative Feature Learning Approach for
      Deep Face Recognition", ECCV 2016 (Eq. 4, α = 0.5).

    Args:
      centers: one center per class, shape (C, d).
      embeddings: shape (B, d).
      labels: integer classes in [0, C), shape (B,); the range is checked when
        the call is eager.
      alpha: the center learning rate α.
      axis_name: a named device axis to aggregate the batch over, or None.

    Returns:
      The new centers, shape (C, d), in the dtype of `centers`, with the
      gradient stopped.

    Example:
      >>> import jax.numpy as jnp
      >>> from faceloss_jax import losses
      >>> centers = jnp.zeros((2, 2))
      >>> x = jnp.array([[2.0, 0.0], [4.0, 0.0]])
      >>> losses.update_centers(centers, x, jnp.array([0, 0]), alpha=0.5)
      Array([[1., 0.],
             [0., 0.]], dtype=float32)
    """
    _check_centers(centers, embeddings, labels, name="update_centers")
    old = engine.as_float(centers)
    x = engine.as_float(embeddings)
    labels = jnp.asarray(labels)
    num_classes = old.shape[0]
    counts = jax.ops.segment_sum(jnp.ones(labels.shape, x.dtype), labels, num_classes)
    sums = jax.ops.segment_sum(x, labels, num_classes)
    if axis_name is not None:
        counts, sums = jax.lax.psum((counts, sums), axis_name)
    step = (counts[:, None] * old - sums) / (1 + counts[:, None])
    new = old - alpha * step
    return jax.lax.stop_gradient(new.astype(jnp.asarray(centers).dtype))


# ----------------------------------------------------------------------------------
# The records of the joint losses (``train_lib.objectives`` collects them): softmax plus
# a Euclidean term, each device's own examples (the auxiliary term) or the global batch.
# ----------------------------------------------------------------------------------


def _contrastive_term(*, config, embeddings, labels, axis_name) -> jax.Array:
    return config.weight * contrastive_loss(
        embeddings, labels, margin=config.margin, axis_name=axis_name
    )


def _center_term(*, config, embeddings, labels, state) -> jax.Array:
    # Each device's own examples against the (replicated) centres.
    return config.weight * jnp.mean(center_loss(embeddings, state["centers"], labels))


def _centers_init(*, embedding_dim, num_classes) -> dict[str, jax.Array]:
    return {"centers": jnp.zeros((num_classes, embedding_dim))}


def _centers_after(*, config, state, embeddings, labels, axis_name) -> dict[str, jax.Array]:
    centers = update_centers(
        state["centers"], embeddings, labels, alpha=config.alpha, axis_name=axis_name
    )
    return {"centers": centers}


RECORDS = {
    "contrastive": Objective(
        angular.softmax_cross_entropy,
        "DeepID2: softmax + λ·contrastive (Sun et al., NeurIPS 2014)",
        {
            "use_bias": hp.USE_BIAS,
            "weight": hp.real("λ of the verification term", low=0.0, default=0.05),
            "margin": hp.positive("m of the different-pair hinge", read_by=contrastive_loss),
        },
        classifier="linear",
        auxiliary=_contrastive_term,
        aliases=("deepid2",),
    ),
    "center": Objective(
        angular.softmax_cross_entropy,
        "softmax + λ·center loss (Wen et al., ECCV 2016)",
        {
            "use_bias": hp.USE_BIAS,
            # The paper's λ on MNIST.
            "weight": hp.real("λ of the center term", low=0.0, default=0.003),
            "alpha": hp.real(
                "α, the centre learning rate", low=0.0, high=1.0, read_by=update_centers
            ),
        },
        classifier="linear",
        state=StateRule(init=_centers_init, after=_centers_after),
        auxiliary=_center_term,
        aliases=("center_loss",),
    ),
}
