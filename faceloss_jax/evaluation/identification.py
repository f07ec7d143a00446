"""Closed-set identification with distractors (MegaFace-style), by chunked similarity."""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from faceloss_jax.evaluation.extract import l2_normalize


@jax.jit
def _count_above(
    probes: jax.Array,
    genuine: jax.Array,
    genuine_column: jax.Array,
    columns: jax.Array,
    candidates: jax.Array,
    valid: jax.Array,
) -> jax.Array:
    """Per probe, the number of valid candidates, other than its genuine match, that
    score strictly above the genuine score."""
    scores = probes @ candidates.T
    above = (scores > genuine[:, None]) & valid[None, :]
    above &= columns[None, :] != genuine_column[:, None]
    return jnp.sum(above, axis=1, dtype=jnp.int32)


def _chunks(array: np.ndarray, chunk_size: int):
    """Yields ``(start, chunk, valid)`` with every chunk zero-padded to ``chunk_size`` rows."""
    for start in range(0, len(array), chunk_size):
        chunk = l2_normalize(np.asarray(array[start : start + chunk_size], np.float32))
        valid = np.arange(chunk_size) < len(chunk)
        chunk = np.pad(chunk, ((0, chunk_size - len(chunk)), (0, 0)))
        yield start, chunk, valid


def _genuine_columns(gallery_labels: np.ndarray, probe_labels: np.ndarray) -> np.ndarray:
    """The gallery row of each probe's identity."""
    gallery_labels, probe_labels = np.asarray(gallery_labels), np.asarray(probe_labels)
    if gallery_labels.ndim != 1 or probe_labels.ndim != 1:
        raise ValueError("gallery_labels and probe_labels must be 1-D")
    order = np.argsort(gallery_labels, kind="stable")
    sorted_labels = gallery_labels[order]
    if np.any(sorted_labels[1:] == sorted_labels[:-1]):
        raise ValueError("gallery_labels must be distinct: pool each identity into one template")
    position = np.searchsorted(sorted_labels, probe_labels).clip(0, len(order) - 1)
    if not np.array_equal(sorted_labels[position], probe_labels):
        missing = np.setdiff1d(probe_labels, gallery_labels)[:5]
        raise ValueError(f"probe identities missing from the gallery, e.g. {missing.tolist()}")
    return order[position]


def probe_ranks(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    probes: np.ndarray,
    probe_labels: np.ndarray,
    *,
    distractors: np.ndarray | None = None,
    chunk_size: int | None = 16384,
) -> np.ndarray:
    """The rank of the true identity of each probe among the gallery and distractors.

    rank = 1 + #{gallery entries of other identities and distractors whose cosine
    similarity to the probe is strictly above the genuine one}: ties count in the
    probe's favour. The gallery holds one embedding per identity (pool several
    images with ``ijb.pool_templates``); distractors are identities outside the probe
    set (MegaFace's 10^6 Flickr faces, Kemelmacher-Shlizerman et al., CVPR 2016).

    Candidates are streamed in chunks of ``chunk_size`` rows, so that only a
    ``(num_probes, chunk_size)`` block of scores exists at a time and the
    distractors may be a memory-mapped array; ``chunk_size=None`` scores everything
    at once.

    Args:
      gallery: ``(G, d)`` one embedding per identity.
      gallery_labels: ``(G,)`` distinct identity labels.
      probes: ``(P, d)`` probe embeddings.
      probe_labels: ``(P,)`` identities, each present in the gallery.
      distractors: optional ``(D, d)`` embeddings of other identities.
      chunk_size: candidates scored per step.

    Returns:
      int ``(P,)`` ranks, 1 for a correct top-1 identification.
    """
    dims = np.shape(probes)[1] if np.ndim(probes) == 2 else None
    for name, array in (("gallery", gallery), ("distractors", distractors)):
        if array is not None and (np.ndim(array) != 2 or np.shape(array)[1] != dims):
            raise ValueError(
                f"probes, gallery and distractors must be (P, d), (G, d), (D, d), "
                f"got probes {np.shape(probes)} and {name} {np.shape(array)}"
            )
    if len(gallery_labels) != len(gallery) or len(probe_labels) != len(probes):
        raise ValueError(
            f"need one label per gallery entry and per probe, got {len(gallery_labels)} "
            f"for {len(gallery)} and {len(probe_labels)} for {len(probes)}"
        )
    genuine_column = _genuine_columns(gallery_labels, probe_labels)
    probes = l2_normalize(np.asarray(probes, np.float32))
    genuine = np.sum(probes * l2_normalize(np.asarray(gallery, np.float32))[genuine_column], -1)
    count = functools.partial(_count_above, *map(jnp.asarray, (probes, genuine, genuine_column)))

    num_above = jnp.zeros(len(probes), jnp.int32)  # Summed on device: dispatch stays async.
    # Distractor columns are numbered after the gallery's, so they never match a probe.
    for offset, candidates in ((0, gallery), (len(gallery), distractors)):
        if candidates is None or len(candidates) == 0:
            continue
        size = len(candidates) if chunk_size is None else chunk_size
        for start, chunk, valid in _chunks(candidates, size):
            columns = offset + start + np.arange(size)
            num_above += count(columns, chunk, valid)
    return np.asarray(num_above) + 1


def identification_rates(ranks: np.ndarray, *, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """The cumulative match characteristic at ``ks``: ``{"rank_1": ..., "rank_5": ...}``."""
    ranks = np.asarray(ranks)
    return {f"rank_{k}": float(np.mean(ranks <= k)) for k in ks}
