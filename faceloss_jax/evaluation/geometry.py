"""The geometry of an embedding: class centers, the ArcFace angles, pair angles, norms.

NumPy functions on extracted features (float64 inside). ``weights`` has the shape of
the classifier in ``faceloss_jax.losses``, ``(d, C)``: one column per class.
"""

import jax
import numpy as np

from faceloss_jax import losses
from faceloss_jax.evaluation.extract import l2_normalize

_BLOCK_ELEMENTS = 1 << 24  # Bounds the (rows, C) cosine blocks of inter_angle.


def _check_labels(labels: np.ndarray, num_items: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (num_items,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {num_items} integers, got {labels.dtype} {labels.shape}")
    if num_items and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]"
        )
    return labels


def _angle(cosine: np.ndarray) -> np.ndarray:
    return np.arccos(np.clip(cosine, -1.0, 1.0))


def class_means(
    values: np.ndarray, labels: np.ndarray, *, num_classes: int | None = None
) -> np.ndarray:
    """The mean of ``values (N, ...)`` over each class, ``(C, ...)``.

    Raises:
      ValueError: if a class in ``[0, num_classes)`` has no sample (its mean is undefined).
    """
    values = np.asarray(values, np.float64)
    num_classes = int(np.max(labels)) + 1 if num_classes is None else num_classes
    labels = _check_labels(labels, len(values), num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    if np.any(counts == 0):
        empty = np.flatnonzero(counts == 0)[:5]
        raise ValueError(f"classes without samples, e.g. {empty.tolist()}")
    sums = np.zeros((num_classes,) + values.shape[1:])
    np.add.at(sums, labels, values)
    return sums / counts.reshape((-1,) + (1,) * (values.ndim - 1))


def class_centers(
    embeddings: np.ndarray, labels: np.ndarray, *, num_classes: int | None = None
) -> np.ndarray:
    """Per-class feature centers ``c_j = mean{x_i : y_i = j}``, ``(C, d)``.

    Pass normalized embeddings for the directional centers the angles are about.
    """
    if np.ndim(embeddings) != 2:
        raise ValueError(f"embeddings must be (N, d), got shape {np.shape(embeddings)}")
    return class_means(embeddings, labels, num_classes=num_classes)


def class_mean_norms(
    embeddings: np.ndarray, labels: np.ndarray, *, num_classes: int | None = None
) -> np.ndarray:
    """The mean feature norm of each class, ``(C,)`` (the norm carries the
    per-sample confidence of softmax-trained features; NormFace, Wang et al. 2017)."""
    norms = np.linalg.norm(np.asarray(embeddings, np.float64), axis=-1)
    return class_means(norms, labels, num_classes=num_classes)


def pair_angles(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """The angle in radians, in [0, π], between each pair of rows of two ``(N, d)`` arrays."""
    emb_a, emb_b = np.asarray(emb_a, np.float64), np.asarray(emb_b, np.float64)
    if emb_a.ndim != 2 or emb_a.shape != emb_b.shape:
        raise ValueError(
            f"need two (N, d) arrays of the same shape, got {emb_a.shape} and {emb_b.shape}"
        )
    return _angle(np.sum(l2_normalize(emb_a) * l2_normalize(emb_b), axis=-1))


def intra_angle(embeddings: np.ndarray, weights: np.ndarray, labels: np.ndarray) -> float:
    """``losses.intra_angle`` (ArcFace's L_Intra, ``(1/πN) Σ_i θ_{y_i}``) in float64, as
    a Python float: the same function, evaluated on the host's arrays.

    Args:
      embeddings: ``(N, d)`` features.
      weights: ``(d, C)`` class vectors: a learned classifier, or ``class_centers(...).T``.
      labels: ``(N,)`` classes in ``[0, C)``.
    """
    embeddings, weights = np.asarray(embeddings, np.float64), np.asarray(weights, np.float64)
    if embeddings.ndim != 2 or weights.ndim != 2 or embeddings.shape[1] != weights.shape[0]:
        raise ValueError(
            f"need embeddings (N, d) and weights (d, C), got {embeddings.shape} and {weights.shape}"
        )
    labels = _check_labels(labels, len(embeddings), weights.shape[1])
    with jax.enable_x64(True):
        return float(losses.intra_angle(embeddings, weights, labels))


def dominant_subcenters(
    embeddings: np.ndarray, weights: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """The dominant sub-centre of each class: ``(d, C)`` from sub-centres ``(d, C, K)``.

    Sub-center ArcFace (Deng et al., ECCV 2020, Sec. 3.2): each sample of class j
    joins its closest sub-centre w_jk; the dominant one is the sub-centre most
    samples of the class joined (the first one for a class without samples), counted
    by ``losses.subcenter_cleanup``.

    Args:
      embeddings: ``(N, d)`` features of the training classes.
      weights: ``(d, C, K)`` sub-centres.
      labels: ``(N,)`` classes in ``[0, C)``.
    """
    weights = np.asarray(weights, np.float64)
    dominant = losses.subcenter_cleanup(np.asarray(embeddings), weights, labels).dominant
    return weights[:, np.arange(weights.shape[1]), np.asarray(dominant)]


def inter_angle(weights: np.ndarray) -> float:
    """L_Inter of ArcFace (Deng et al., CVPR 2019, eq. 9) over classes:
    ``−(1/πC(C−1)) Σ_i Σ_{j≠i} arccos(Ŵ_iᵀŴ_j)``.

    The paper averages over the N samples' classes y_i; over the classes, as here,
    the two agree when the classes are balanced. More negative is more separated:
    −0.5 for orthogonal class vectors. The value of ``losses.inter_angle`` (the
    differentiable one, which holds the C×C angles), computed on the host in row
    blocks, so C may be 10⁵ or more.

    Args:
      weights: ``(d, C)`` class vectors, C ≥ 2.
    """
    weights = np.asarray(weights, np.float64)
    if weights.ndim != 2 or weights.shape[1] < 2:
        raise ValueError(f"weights must be (d, C) with C >= 2, got shape {weights.shape}")
    unit = l2_normalize(weights.T)
    num_classes = len(unit)
    rows = max(1, _BLOCK_ELEMENTS // num_classes)
    total = 0.0
    for start in range(0, num_classes, rows):
        angles = _angle(unit[start : start + rows] @ unit.T)
        # The diagonal (θ = 0 up to rounding) is not a pair of classes.
        total += angles.sum() - np.trace(angles, offset=start)
    return float(-total / (np.pi * num_classes * (num_classes - 1)))
