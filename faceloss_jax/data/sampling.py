"""Identity-balanced (P×K) batches: every global batch P identities × K images each.

A uniformly shuffled batch of B faces from C ≫ B identities holds almost no two images
of one identity, so the pair and triplet losses find no positive pair; FaceNet trains
with ~40 faces per identity per batch, and metric-learning libraries offer an
identity-balanced sampler (pytorch-metric-learning's ``MPerClassSampler``, the
"PK sampler" of Hermans et al., "In Defense of the Triplet Loss", 2017).

Global batch ``t`` is a pure function of ``(seed, t)`` (``pk_batch_indices``):

* P distinct identities drawn uniformly without replacement from the identities that
  have at least one image, with the generator ``numpy.random.default_rng([seed, t])``;
* for each, K of its images: without replacement when it has ``m ≥ K`` images; when
  ``m < K``, **all m images once plus K − m drawn uniformly with replacement from
  them** (so every image of a small identity is in the batch, and the duplicates are
  augmented independently). An identity with one image gives K copies of it.

Rows are identity-major: rows ``[iK, (i+1)K)`` are the i-th identity. Process ``p`` of
``n`` reads the contiguous block ``[p·B/n, (p+1)·B/n)`` of every global batch, exactly
as the uniform pipeline (``pipeline.create_iterator``), so the processes together see
the single-process batch; the iterator state is the global batch index, so a restored
iterator continues with the same batches. ``repeat`` serves each draw for that many
consecutive steps (the subset held by offline mining, ``losses.mining``).

The per-identity record indices come from the source's record
(``Source.identity_index``): MNIST's labels, the synthetic identities' index
arithmetic, the image folder's listing, the RecordIO header's identity records.
"""

from collections.abc import Sequence

import numpy as np

from faceloss_jax.errors import ConfigError

IdentityIndex = Sequence[np.ndarray]


def pk_shape(config, global_batch_size: int) -> tuple[int, int] | None:
    """``(P, K)`` of the data config for ``global_batch_size``, or None (uniform batches).

    Both ``identities_per_batch`` (P) and ``samples_per_identity`` (K) 0 or None:
    uniform batches. One of them set: the other is ``global_batch_size`` divided by it
    (the face configs set K = 4 only, so a ``--config.batch_size`` override keeps P×K
    batches). Both set: ``global_batch_size`` must be ``P·K``.

    Raises:
      ConfigError: a negative value, a batch size that P or K does not divide, or
        ``global_batch_size != P·K``.
    """
    p = config.get("identities_per_batch") or 0
    k = config.get("samples_per_identity") or 0
    if not p and not k:
        return None
    if p < 0 or k < 0:
        raise ConfigError(
            "config.dataset.identities_per_batch and samples_per_identity must be ≥ 0; "
            f"got P={p}, K={k}"
        )
    given = p or k
    if not (p and k) and global_batch_size % given:
        raise ConfigError(
            f"P×K batches: batch_size = {global_batch_size} is not a multiple of "
            f"{'identities_per_batch' if p else 'samples_per_identity'} = {given}"
        )
    p, k = (p or global_batch_size // k), (k or global_batch_size // p)
    if p * k != global_batch_size:
        raise ConfigError(
            f"P×K batches: batch_size = {global_batch_size} must equal "
            f"identities_per_batch × samples_per_identity = {p} × {k} = {p * k}"
        )
    return int(p), int(k)


def check_identities(p: int, num_identities: int) -> None:
    """ConfigError unless the source has at least P identities with images."""
    if num_identities < p:
        raise ConfigError(
            f"P×K batches: identities_per_batch = {p} but the source has only "
            f"{num_identities} identities with images"
        )


def identity_index_from_labels(
    labels: Sequence[int], num_identities: int | None = None
) -> list[np.ndarray]:
    """``[indices of label 0, indices of label 1, …]`` (int64, ascending) for labels
    ``0 … num_identities − 1`` (default: up to the largest label)."""
    labels = np.asarray(labels, np.int64)
    if labels.ndim != 1 or (labels.size and labels.min() < 0):
        raise ValueError("labels must be a 1-D array of non-negative identity ids")
    order = np.argsort(labels, kind="stable")
    num = num_identities
    if num is None:
        num = int(labels.max()) + 1 if labels.size else 0
    bounds = np.searchsorted(labels[order], np.arange(num + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(num)]


def pk_batch_indices(
    identity_index: IdentityIndex, p: int, k: int, *, seed: int, batch: int
) -> np.ndarray:
    """The record indices of global P×K batch ``batch`` (see the module docstring).

    Args:
      identity_index: per identity, the (non-empty or empty) array of its record indices.
      p, k: identities per batch and images per identity.
      seed: the sampler seed.
      batch: the global batch index ``t``.

    Returns:
      int64 ``(P·K,)``, identity-major.

    Example:
      >>> index = [np.arange(0, 5), np.arange(5, 7), np.arange(7, 20)]
      >>> pk_batch_indices(index, 2, 3, seed=0, batch=0).shape
      (6,)
    """
    sizes = np.asarray([len(i) for i in identity_index])
    eligible = np.flatnonzero(sizes > 0)
    if len(eligible) < p:
        raise ConfigError(f"P×K: P = {p} identities per batch, only {len(eligible)} have images")
    rng = np.random.default_rng([seed, batch])
    identities = eligible[rng.choice(len(eligible), p, replace=False)]
    rows = []
    for c in identities:
        members = np.asarray(identity_index[c], np.int64)
        m = len(members)
        if m >= k:
            rows.append(members[rng.choice(m, k, replace=False)])
        else:  # all m once, K − m more with replacement, in a random order
            picks = np.concatenate([np.arange(m), rng.integers(0, m, k - m)])
            rows.append(members[rng.permutation(picks)])
    return np.concatenate(rows)


class PKBatches:
    """A grain-compatible random-access sequence: item ``t`` is the record indices of
    global batch ``t``, draw ``pk_batch_indices(…, batch=t // repeat)``.

    Args:
      identity_index: per identity, its record indices.
      p, k: identities per batch, images per identity.
      seed: the sampler seed.
      num_batches: the length (None: endless, ``2**62``).
      repeat: consecutive global batches that hold the same draw (≥ 1).
    """

    def __init__(
        self,
        identity_index: IdentityIndex,
        p: int,
        k: int,
        *,
        seed: int,
        num_batches: int | None = None,
        repeat: int = 1,
    ):
        if repeat < 1:
            raise ValueError(f"repeat must be ≥ 1; got {repeat}")
        self._index = [np.asarray(i, np.int64) for i in identity_index]
        self._p, self._k, self._seed, self._repeat = p, k, seed, repeat
        self._len = 2**62 if num_batches is None else num_batches

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, t: int) -> np.ndarray:
        if not 0 <= t < self._len:
            raise IndexError(f"batch {t} out of range for {self._len} batches")
        return pk_batch_indices(
            self._index, self._p, self._k, seed=self._seed, batch=t // self._repeat
        )
