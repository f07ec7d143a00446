"""Offline triplet mining (FaceNet, Sec. 3.1) and the statistics of a batch's triplets.

FaceNet describes two ways to choose triplets: online, inside each mini-batch
(``euclidean.triplet_margin_loss``), and offline: "generate triplets offline every n
steps, using the most recent network checkpoint and computing the argmin and argmax on
a subset of the data". Here the subset is a P×K draw (``data.sampling``) of
``subset_size`` images, the global batch: every ``every_steps`` steps the current
network embeds it, ``select_triplets`` picks the triplets, and the following
``every_steps`` steps train on the same images (freshly augmented) with those triplets
fixed (``mined_triplet_loss``), while the network moves on: the triplets are those of
a network up to ``every_steps − 1`` updates old, as FaceNet's are.

Selection rules, for every anchor-positive pair (a, p), ``y_a = y_p``, ``a ≠ p``
(FaceNet uses all anchor-positive pairs), over squared distances ``D²``:

* ``"semi_hard"`` (FaceNet, Eq. 4): the negatives ``n`` (``y_n ≠ y_a``) with
  ``D²_ap < D²_an < D²_ap + α`` (farther than the positive but inside the margin);
  the closest of them, ``argmin D²_an``. A pair without one is not selected (no
  fallback: unlike TF-Addons' online rule, a pair whose negatives are all easy or all
  harder than the positive gives no triplet).
* ``"hard"``: the hardest negative of the anchor, ``argmin_n D²_an``, selected when
  the triplet violates the margin, ``D²_ap − D²_an + α > 0``.

Ties go to the lowest index. The loss is the mean hinge ``[D²_ap − D²_an + α]₊`` over
the selected triplets, recomputed with the current embeddings (0 when none is).
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from faceloss_jax.errors import ConfigError
from faceloss_jax.losses import _validation, euclidean
from faceloss_jax.losses import hyperparameters as hp
from faceloss_jax.losses.record import Objective, StateRule

RULES = ("semi_hard", "hard")


def select_triplets(
    embeddings: ArrayLike, labels: ArrayLike, *, margin: float, rule: str = "semi_hard"
) -> tuple[jax.Array, jax.Array]:
    """FaceNet's offline selection: one negative per anchor-positive pair.

    Args:
      embeddings: (N, d) embeddings of the subset (FaceNet: L2-normalized).
      labels: (N,) integer identities.
      margin: α of the triplet loss.
      rule: ``"semi_hard"`` or ``"hard"`` (see the module docstring).

    Returns:
      ``(negative, selected)``: int32 (N, N), the negative of the pair (a, p) at
      ``[a, p]``, and bool (N, N), whether the triplet (a, p, negative[a, p]) is
      selected. ``"semi_hard"`` holds (N, N, N) booleans: O(N³) memory.

    Raises:
      ValueError: an unknown rule or bad shapes.

    Example:
      >>> x, y = jnp.array([[0.0], [0.3], [0.4], [2.0]]), jnp.array([0, 0, 1, 1])
      >>> negative, selected = select_triplets(x, y, margin=0.2)
      >>> [(a, p, int(negative[a, p])) for a, p in jnp.argwhere(selected).tolist()]
      [(0, 1, 2)]
    """
    if rule not in RULES:
        raise ValueError(f"select_triplets: unknown rule {rule!r}; expected one of {RULES}")
    _validation.check_embeddings_labels(embeddings, labels, name="select_triplets")
    x, y = jnp.asarray(embeddings), jnp.asarray(labels)
    d = euclidean.pairwise_sq_distances(x)
    same = y[:, None] == y[None, :]
    positives = same & ~jnp.eye(len(y), dtype=bool)
    negatives = ~same
    if rule == "semi_hard":
        d_ap, d_an = d[:, :, None], d[:, None, :]
        candidates = negatives[:, None, :] & (d_an > d_ap) & (d_an < d_ap + margin)
        negative = jnp.argmin(jnp.where(candidates, d_an, jnp.inf), axis=2)
        selected = positives & jnp.any(candidates, axis=2)
    else:
        hardest = jnp.argmin(jnp.where(negatives, d, jnp.inf), axis=1)
        d_an = jnp.take_along_axis(d, hardest[:, None], axis=1)
        negative = jnp.broadcast_to(hardest[:, None], d.shape)
        selected = positives & jnp.any(negatives, axis=1)[:, None] & (d - d_an + margin > 0)
    return negative.astype(jnp.int32), selected


def mined_triplet_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    negative: ArrayLike,
    selected: ArrayLike,
    margin: float,
    axis_name: str | None = None,
) -> jax.Array:
    """The triplet loss of fixed triplets: mean ``[D²_ap − D²_an + α]₊`` over the
    ``selected`` pairs (a, p) with ``negative[a, p]``, on the current embeddings of the
    global batch (over ``axis_name`` this device's share, as ``triplet_margin_loss``).

    A selected pair whose labels no longer match (another batch than the mined one)
    is dropped.

    Args:
      embeddings: (b, d) this device's embeddings; the global batch is N rows.
      labels: (b,) identities.
      negative, selected: (N, N) from ``select_triplets`` on the global batch.
      margin: α.
      axis_name: the data-parallel axis, or None.

    Returns:
      The scalar loss (this device's share with ``axis_name``).
    """
    batch = euclidean.pair_batch(embeddings, labels, axis_name)
    d = euclidean.anchor_sq_distances(batch)
    negative = jnp.asarray(negative)[batch.positions]
    positives, _ = euclidean._anchor_masks(batch)
    keep = jnp.asarray(selected)[batch.positions] & positives
    d_an = jnp.take_along_axis(d, negative, axis=1)
    hinge = jax.nn.relu(d - d_an + margin)
    total = jnp.sum(jnp.where(keep, hinge, 0))
    count = jnp.sum(keep).astype(total.dtype)
    return euclidean.global_mean(total, count, axis_name=axis_name, num_devices=batch.num_devices)


def triplet_statistics(
    embeddings: ArrayLike, labels: ArrayLike, *, margin: float
) -> dict[str, jax.Array]:
    """What a batch offers the triplet loss (the study's per-step log).

    Returns:
      ``valid_triplets``: the number of triplets (a, p, n), ``y_a = y_p ≠ y_n``,
      ``a ≠ p``; ``active_triplets``: those with ``D²_ap − D²_an + α > 0``;
      ``active_fraction``: active / valid (0 without a valid triplet);
      ``anchors_with_positive``: the fraction of rows with another row of their identity.
    """
    x, y = jnp.asarray(embeddings), jnp.asarray(labels)
    d = euclidean.pairwise_sq_distances(x)
    same = y[:, None] == y[None, :]
    positives = same & ~jnp.eye(len(y), dtype=bool)
    valid = positives[:, :, None] & ~same[:, None, :]
    active = valid & (d[:, :, None] - d[:, None, :] + margin > 0)
    num_valid, num_active = jnp.sum(valid), jnp.sum(active)
    return {
        "valid_triplets": num_valid,
        "active_triplets": num_active,
        "active_fraction": num_active / jnp.maximum(num_valid, 1),
        "anchors_with_positive": jnp.mean(jnp.any(positives, axis=1)),
    }


def facenet_triplet_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    margin: float = 0.2,
    mining: str = "batch_all",
    offline_rule: str = "semi_hard",
    axis_name: str | None = None,
    negative: ArrayLike | None = None,
    selected: ArrayLike | None = None,
) -> jax.Array:
    """FaceNet's triplet loss as training runs it (Schroff et al., CVPR 2015).

    Online in-batch mining (``euclidean.triplet_margin_loss`` with ``mining`` one of
    ``euclidean.MININGS``), or with ``mining="offline"`` the triplets
    ``(a, p, negative[a, p])`` that ``select_triplets`` chose (by ``offline_rule``) at the
    last refresh (``selected``), on the current embeddings (``mined_triplet_loss``).

    Args:
      embeddings: (b, d) this device's embeddings.
      labels: (b,) identities.
      margin: α.
      mining: "batch_all", "batch_hard", "semi_hard" or "offline".
      offline_rule: the rule of the refreshes (used by the state rule, not here).
      axis_name: the data-parallel axis, or None.
      negative, selected: offline: (N, N) from ``select_triplets``.

    Returns:
      The scalar loss (this device's share with ``axis_name``).

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
      >>> float(facenet_triplet_loss(x, jnp.array([0, 0, 1, 1])))
      0.0
    """
    del offline_rule  # read at the refresh (_offline_before)
    if mining == "offline":
        return mined_triplet_loss(
            embeddings,
            labels,
            negative=negative,
            selected=selected,
            margin=margin,
            axis_name=axis_name,
        )
    return euclidean.triplet_margin_loss(
        embeddings, labels, margin=margin, mining=mining, axis_name=axis_name
    )


def check_subset_size(subset_size: int, batch_size: int | None) -> None:
    """ConfigError unless offline mining's subset is the global batch of ``batch_size``
    (None: not known yet, any subset of at least two images passes)."""
    if subset_size == batch_size or (batch_size is None and subset_size >= 2):
        return
    raise ConfigError(
        f"config.loss.subset_size = {subset_size} must equal the global batch size "
        f"{batch_size or 'config.batch_size'}: offline mining mines the global batch"
    )


def _check_offline(*, config, batch_size: int | None) -> None:
    if config.mining == "offline":
        check_subset_size(config.subset_size, batch_size)


def _offline_init(*, config) -> dict[str, jax.Array]:
    if config.mining != "offline":
        return {}
    n = config.subset_size
    return {
        "negative": jnp.zeros((n, n), jnp.int32),
        "selected": jnp.zeros((n, n), bool),
        "steps": jnp.zeros((), jnp.int32),
    }


def _offline_before(*, config, state, embeddings, labels, axis_name):
    """The refresh: every ``every_steps`` steps (``steps`` counts them) the current
    embeddings of the global batch select the triplets of the next steps."""
    if config.mining != "offline":
        return state, {}
    batch = euclidean.pair_batch(embeddings, labels, axis_name)
    check_subset_size(config.subset_size, batch.others.shape[0])
    negative, selected = jax.lax.cond(
        state["steps"] % config.every_steps == 0,
        lambda: select_triplets(
            batch.others, batch.other_labels, margin=config.margin, rule=config.offline_rule
        ),
        lambda: (state["negative"], state["selected"]),
    )
    new_state = {"negative": negative, "selected": selected, "steps": state["steps"] + 1}
    return new_state, {"negative": negative, "selected": selected}


def _offline_held_batches(*, config) -> int:
    """Offline mining trains on the mined batch until the next refresh."""
    return config.every_steps if config.mining == "offline" else 1


RECORDS = {
    "triplet": Objective(
        facenet_triplet_loss,
        "triplet loss, online or offline mining (FaceNet, Schroff et al., CVPR 2015)",
        {
            "margin": hp.PAIR_MARGIN,
            "mining": hp.choice(
                (*euclidean.MININGS, "offline"), "in-batch online, or offline mining"
            ),
            "offline_rule": hp.choice(RULES, "offline: FaceNet's semi-hard or the hardest"),
            "every_steps": hp.integer("offline: steps between refreshes", default=10),
            "subset_size": hp.integer(
                "offline: images mined, = batch_size (0: online)", low=0, default=0
            ),
        },
        classifier="none",
        layouts=frozenset({"data_parallel"}),
        state=StateRule(
            init=_offline_init, before=_offline_before, held_batches=_offline_held_batches
        ),
        unit_embeddings=True,
        aliases=("triplet_margin_loss",),
        check=_check_offline,
    ),
}
