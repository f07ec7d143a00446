"""Face verification: the LFW 10-fold protocol, ROC/AUC/EER, IJB-style TAR@FAR.

Scores are cosine similarities and a pair is predicted "same" when its score is
strictly above the threshold.

The 10-fold protocol comes in two threshold modes (``THRESHOLD_MODES``):

* ``"exact"``: the best threshold of the training folds over every distinct score
  (``best_threshold``), on cosine similarities.
* ``"insightface"``: InsightFace's ``eval/verification.py`` (``calculate_roc``,
  ``calculate_val``), the procedure behind the published LFW / CFP-FP / AgeDB-30
  numbers: squared L2 distance of the L2-normalized embeddings, ``d = ‖â − b̂‖²``
  (``= 2 − 2 cos θ``), a pair accepted when ``d < t``, ``t`` on the grid
  ``np.arange(0, 4, 0.01)``; the best training-fold threshold is the first argmax
  (the smallest, strictest, on ties). VAL@FAR: ``kfold_val_at_far_insightface``.
"""

from collections.abc import Sequence

import numpy as np

from faceloss_jax.evaluation.extract import l2_normalize


def far_key(far: float) -> str:
    """The short name of a false-accept rate in metric keys: ``1e-3``, ``1.5e-4``."""
    return np.format_float_scientific(far, trim="-", exp_digits=1)


THRESHOLD_MODES = ("exact", "insightface")
# InsightFace's grids: accuracy (calculate_roc) and VAL@FAR (calculate_val).
INSIGHTFACE_THRESHOLDS = np.arange(0, 4, 0.01)
INSIGHTFACE_VAL_THRESHOLDS = np.arange(0, 4, 0.001)


def _check_pairs(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, np.float64)
    issame = np.asarray(issame)
    if scores.ndim != 1 or scores.shape != issame.shape:
        raise ValueError(
            f"scores and issame must be 1-D of the same length, "
            f"got {scores.shape} and {issame.shape}"
        )
    if issame.dtype != bool:
        raise ValueError(f"issame must be boolean, got dtype {issame.dtype}")
    if issame.all() or not issame.any():
        raise ValueError("verification needs both same and different pairs")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    return scores, issame


def pair_scores(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of rows, ``(N, d), (N, d) -> (N,)``."""
    emb_a, emb_b = np.asarray(emb_a), np.asarray(emb_b)
    if emb_a.ndim != 2 or emb_a.shape != emb_b.shape:
        raise ValueError(
            f"pair embeddings must be two (N, d) arrays, got {emb_a.shape} and {emb_b.shape}"
        )
    return np.sum(l2_normalize(emb_a) * l2_normalize(emb_b), axis=-1)


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> float:
    """The threshold of best accuracy on a set of pairs (exact, not on a grid).

    The candidates are -inf, the midpoints between consecutive distinct scores and
    +inf; among equally accurate candidates the lowest one is taken.
    """
    scores, issame = np.asarray(scores, np.float64), np.asarray(issame, bool)
    distinct = np.unique(scores)
    candidates = np.concatenate([[-np.inf], (distinct[:-1] + distinct[1:]) / 2, [np.inf]])
    positives_at_or_below = np.searchsorted(np.sort(scores[issame]), candidates, side="right")
    negatives_at_or_below = np.searchsorted(np.sort(scores[~issame]), candidates, side="right")
    correct = (issame.sum() - positives_at_or_below) + negatives_at_or_below
    return float(candidates[np.argmax(correct)])


def fold_indices(num_pairs: int, n_folds: int) -> list[np.ndarray]:
    """Contiguous folds, the first ``num_pairs % n_folds`` one larger (sklearn's ``KFold``)."""
    if not 2 <= n_folds <= num_pairs:
        raise ValueError(
            f"n_folds must be in [2, {num_pairs}] for {num_pairs} pairs, got {n_folds}"
        )
    return np.array_split(np.arange(num_pairs), n_folds)


def kfold_accuracy(
    scores: np.ndarray, issame: np.ndarray, *, n_folds: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Verification accuracy by the LFW protocol (Huang et al., 2007).

    For each of ``n_folds`` contiguous folds, the threshold of best accuracy on the
    other folds (``best_threshold``) is applied to the held-out fold.

    Args:
      scores: ``(N,)`` pair similarities.
      issame: ``(N,)`` booleans, True for a pair of the same identity.
      n_folds: number of folds (10 in LFW).

    Returns:
      ``(accuracies, thresholds)``, each of shape ``(n_folds,)``.
    """
    scores, issame = _check_pairs(scores, issame)
    accuracies, thresholds = [], []
    for test in fold_indices(len(scores), n_folds):
        train = np.ones(len(scores), bool)
        train[test] = False
        threshold = best_threshold(scores[train], issame[train])
        accuracies.append(np.mean((scores[test] > threshold) == issame[test]))
        thresholds.append(threshold)
    return np.array(accuracies), np.array(thresholds)


def threshold_at_far(negative_scores: np.ndarray, far: float) -> float:
    """A cosine threshold at which a fraction ``far`` of ``negative_scores`` lies above it.

    With the n negatives sorted ascending, ``s_(0) ≤ … ≤ s_(n−1)``, it is the order
    statistic at the fractional rank ``p = (n − 1) − far·n``, linearly interpolated
    between ``s_(⌊p⌋)`` and ``s_(⌈p⌉)`` (``np.interp``; ``p < 0`` clamps to ``s_(0)``).
    When ``far·n = k`` is an integer, it is the (k+1)-th largest score, so exactly
    k negatives are strictly above it if the scores are distinct: FAR = ``far``;
    otherwise the FAR is ``⌊far·n⌋ / n`` or the next one up, depending on ties.

    This is not InsightFace's rule (which interpolates the threshold over a grid
    of training FARs: ``kfold_val_at_far_insightface``); it is the ``"exact"``
    mode's counterpart, with no grid.
    """
    if not 0.0 < far < 1.0:
        raise ValueError(f"far must be in (0, 1), got {far}")
    ascending = np.sort(np.asarray(negative_scores, np.float64))
    if len(ascending) == 0:
        raise ValueError("threshold_at_far needs at least one negative score")
    position = (len(ascending) - 1) - far * len(ascending)
    return float(np.interp(position, np.arange(len(ascending)), ascending))


def kfold_val_at_far(
    scores: np.ndarray, issame: np.ndarray, *, far: float = 1e-3, n_folds: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """VAL@FAR by the LFW protocol: the threshold of FAR = ``far`` on the training
    folds (``threshold_at_far``), applied to the held-out fold.

    Returns:
      ``(val, far)`` of shape ``(n_folds,)``: the validation (true accept) rate and
      the false-accept rate measured on each held-out fold.
    """
    scores, issame = _check_pairs(scores, issame)
    vals, fars = [], []
    for test in fold_indices(len(scores), n_folds):
        train = np.ones(len(scores), bool)
        train[test] = False
        threshold = threshold_at_far(scores[train & ~issame], far)
        accepted, same = scores[test] > threshold, issame[test]
        vals.append(accepted[same].mean() if same.any() else np.nan)
        fars.append(accepted[~same].mean() if (~same).any() else np.nan)
    return np.array(vals), np.array(fars)


def pair_distances(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """InsightFace's pair distance: ``‖â − b̂‖²`` of the L2-normalized rows, float64
    ``(N, d), (N, d) -> (N,)``, in ``[0, 4]``."""
    emb_a, emb_b = np.asarray(emb_a, np.float64), np.asarray(emb_b, np.float64)
    if emb_a.ndim != 2 or emb_a.shape != emb_b.shape:
        raise ValueError(
            f"pair embeddings must be two (N, d) arrays, got {emb_a.shape} and {emb_b.shape}"
        )
    return np.sum(np.square(l2_normalize(emb_a) - l2_normalize(emb_b)), axis=1)


def kfold_accuracy_insightface(
    distances: np.ndarray,
    issame: np.ndarray,
    *,
    n_folds: int = 10,
    thresholds: np.ndarray = INSIGHTFACE_THRESHOLDS,
) -> tuple[np.ndarray, np.ndarray]:
    """InsightFace's 10-fold accuracy (``calculate_roc`` with ``calculate_accuracy``).

    For each contiguous fold (sklearn's unshuffled ``KFold``), the threshold of best
    accuracy on the other folds, ``t* = thresholds[argmax_t acc_train(t)]`` with
    ``acc(t) = (#{same, d < t} + #{different, d ≥ t}) / N`` (the first argmax: the
    smallest, strictest, threshold on ties), is applied to the held-out fold.

    Args:
      distances: ``(N,)`` squared L2 distances of normalized embeddings (``pair_distances``).
      issame: ``(N,)`` booleans.
      n_folds: number of folds.
      thresholds: the grid, ``np.arange(0, 4, 0.01)`` as InsightFace.

    Returns:
      ``(accuracies, thresholds)`` of shape ``(n_folds,)``; thresholds are distances.

    Example:
      >>> d = np.array([0.1, 1.9, 0.2, 2.5]); same = np.array([True, False, True, False])
      >>> kfold_accuracy_insightface(d, same, n_folds=2)[0]
      array([1., 1.])
    """
    distances, issame = _check_pairs(distances, issame)
    thresholds = np.asarray(thresholds, np.float64)
    # correct[i, j]: pair i is classified right at threshold j.
    correct = (distances[:, None] < thresholds[None, :]) == issame[:, None]
    accuracies, chosen = [], []
    for test in fold_indices(len(distances), n_folds):
        train = np.ones(len(distances), bool)
        train[test] = False
        best = int(np.argmax(correct[train].sum(axis=0)))
        accuracies.append(correct[test, best].sum() / len(test))
        chosen.append(thresholds[best])
    return np.array(accuracies), np.array(chosen)


def threshold_at_far_insightface(
    distances: np.ndarray,
    issame: np.ndarray,
    far: float,
    *,
    thresholds: np.ndarray = INSIGHTFACE_VAL_THRESHOLDS,
) -> float:
    """InsightFace's VAL@FAR threshold on a set of pairs (``calculate_val``).

    ``F(t) = #{different, d < t} / #different`` on the grid ``t_j``; if
    ``max F < far`` the threshold is 0 (nothing accepted); otherwise it is
    ``interp1d(F, t, kind="slinear")(far)``: with ``l`` the last grid index where
    ``F(t_l) ≤ far``, the linear interpolation between ``(F(t_l), t_l)`` and
    ``(F(t_{l+1}), t_{l+1})``, which is ``t_l`` when ``F(t_l) = far``. This is what
    scipy's degree-1 spline gave for the non-decreasing, repeated ``F`` values
    InsightFace passes it (scipy ≥ 1.11 refuses repeated ``x``), evaluated in the
    same de Boor form, so the threshold is bit-identical. Where ``far = max F``
    (every grid point past it has the same FAR) it is the smallest grid threshold
    reaching ``max F``.
    """
    distances, issame = np.asarray(distances, np.float64), np.asarray(issame, bool)
    thresholds = np.asarray(thresholds, np.float64)
    negatives = np.sort(distances[~issame])
    if not len(negatives):
        raise ValueError("VAL@FAR needs at least one different pair")
    # #{negatives < t}, the count of np.less(d, t) over the different pairs.
    rates = np.searchsorted(negatives, thresholds, side="left") / len(negatives)
    if rates.max() < far:
        return 0.0
    last = int(np.searchsorted(rates, far, side="right")) - 1
    if last == len(rates) - 1:
        return float(thresholds[np.searchsorted(rates, rates[-1], side="left")])
    low, high = rates[last], rates[last + 1]
    weight = 1.0 / (high - low)
    return float(
        thresholds[last] * (weight * (high - far)) + thresholds[last + 1] * (weight * (far - low))
    )


def kfold_val_at_far_insightface(
    distances: np.ndarray,
    issame: np.ndarray,
    *,
    far: float = 1e-3,
    n_folds: int = 10,
    thresholds: np.ndarray = INSIGHTFACE_VAL_THRESHOLDS,
) -> tuple[np.ndarray, np.ndarray]:
    """VAL@FAR as InsightFace computes it (``calculate_val``, FaceNet's definition).

    On each fold, the threshold where the training folds' FAR reaches ``far``
    (``threshold_at_far_insightface``, on the grid ``np.arange(0, 4, 0.001)``) is
    applied to the held-out fold: ``VAL = #{same, d < t} / #same``, and the FAR
    achieved there, ``#{different, d < t} / #different``, is reported next to it
    (the achieved FAR can differ from the target: the held-out fold has few negatives).

    Returns:
      ``(val, far)`` of shape ``(n_folds,)``; NaN for a fold without same
      (different) pairs, where InsightFace divides by zero.
    """
    distances, issame = _check_pairs(distances, issame)
    if not 0.0 < far < 1.0:
        raise ValueError(f"far must be in (0, 1), got {far}")
    vals, fars = [], []
    for test in fold_indices(len(distances), n_folds):
        train = np.ones(len(distances), bool)
        train[test] = False
        threshold = threshold_at_far_insightface(
            distances[train], issame[train], far, thresholds=thresholds
        )
        accepted, same = distances[test] < threshold, issame[test]
        vals.append(accepted[same].mean() if same.any() else np.nan)
        fars.append(accepted[~same].mean() if (~same).any() else np.nan)
    return np.array(vals), np.array(fars)


def roc_curve(
    scores: np.ndarray, issame: np.ndarray, *, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve at every distinct score, as ``sklearn.metrics.roc_curve(issame,
    scores, drop_intermediate=...)``.

    ``drop_intermediate=True`` drops the points collinear with their neighbours (the
    curve of InsightFace's ``eval_ijbc.py``, read by ``ijb.tar_at_nearest_far``).

    Returns:
      ``(fpr, tpr, thresholds)``: a pair is accepted when ``score >= threshold``;
      thresholds decrease from ``+inf`` (nothing accepted) to the lowest score.
    """
    scores, issame = _check_pairs(scores, issame)
    order = np.argsort(-scores, kind="stable")
    scores, issame = scores[order], issame[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_accepts = np.cumsum(issame, dtype=np.int64)[last]
    false_accepts = last + 1 - true_accepts
    thresholds = scores[last]
    if drop_intermediate and len(last) > 2:
        bends = np.logical_or(np.diff(false_accepts, 2), np.diff(true_accepts, 2))
        keep = np.flatnonzero(np.r_[True, bends, True])
        true_accepts, false_accepts, thresholds = (
            true_accepts[keep],
            false_accepts[keep],
            thresholds[keep],
        )
    tpr = np.r_[0.0, true_accepts / issame.sum()]
    fpr = np.r_[0.0, false_accepts / (~issame).sum()]
    return fpr, tpr, np.r_[np.inf, thresholds]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a ROC curve by the trapezoidal rule."""
    return float(np.trapezoid(tpr, fpr))


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The rate where the ROC curve crosses FAR = FRR (1 - TPR), linearly interpolated."""
    gap = (1.0 - np.asarray(tpr)) - np.asarray(fpr)  # Non-increasing along the curve.
    k = int(np.argmax(gap <= 0))
    if k == 0 or gap[k] == 0:
        return float(fpr[k])
    t = gap[k - 1] / (gap[k - 1] - gap[k])
    return float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))


def tar_at_far(
    scores: np.ndarray, issame: np.ndarray, *, fars: Sequence[float] = (1e-4, 1e-5, 1e-6)
) -> dict[str, float]:
    """True-accept rate at fixed false-accept rates, on all pairs at once.

    TAR is read at the largest ROC false-accept rate not above the target, so the
    operating point never accepts more impostors than asked. A target below
    ``1 / #negatives`` cannot be measured and gives NaN. (InsightFace's IJB tables read
    the nearest ROC point instead: ``ijb.tar_at_nearest_far``.)

    Returns:
      ``{"tar_at_far_1e-4": ..., ...}``.
    """
    fpr, tpr, _ = roc_curve(scores, issame)
    num_negatives = np.sum(~np.asarray(issame))
    result = {}
    for far in fars:
        measurable = far * num_negatives >= 1
        # fpr is non-decreasing: the last point with fpr <= far.
        result[f"tar_at_far_{far_key(far)}"] = (
            float(tpr[np.searchsorted(fpr, far, side="right") - 1]) if measurable else np.nan
        )
    return result


def verification_report(
    emb_a: np.ndarray,
    emb_b: np.ndarray,
    issame: np.ndarray,
    n_folds: int = 10,
    *,
    far: float = 1e-3,
    threshold: str = "exact",
) -> dict[str, float | np.ndarray]:
    """Everything the LFW protocol reports for a list of pairs.

    For a ``.bin`` pair set (``faceloss_jax.data.verification_bin``), whose images
    ``2i`` and ``2i + 1`` form pair i: ``verification_report(emb[0::2], emb[1::2],
    issame)``.

    Args:
      emb_a, emb_b: ``(N, d)`` embeddings of the two sides of each pair.
      issame: ``(N,)`` booleans.
      n_folds: folds of the k-fold protocol (10 in LFW).
      far: false-accept rate of the reported VAL.
      threshold: ``"exact"`` (``kfold_accuracy``, ``kfold_val_at_far``) or
        ``"insightface"`` (``kfold_accuracy_insightface``,
        ``kfold_val_at_far_insightface``: the papers' numbers).

    Returns:
      A dict with ``accuracy`` and ``accuracy_std`` (over folds), ``threshold``
      (the mean of the fold thresholds, as a cosine similarity: ``1 − t/2`` for an
      insightface distance threshold t), ``val``, ``val_std`` and ``far`` (VAL@FAR
      and the FAR achieved on the held-out folds, k-fold), ``auc`` and ``eer`` (all
      pairs), and the ROC arrays ``fpr``, ``tpr``.
    """
    if threshold not in THRESHOLD_MODES:
        raise ValueError(
            f"unknown threshold mode {threshold!r}; valid: {', '.join(THRESHOLD_MODES)}"
        )
    scores = pair_scores(emb_a, emb_b)
    if threshold == "insightface":
        distances = pair_distances(emb_a, emb_b)
        accuracies, thresholds = kfold_accuracy_insightface(distances, issame, n_folds=n_folds)
        thresholds = 1.0 - thresholds / 2.0
        vals, fars = kfold_val_at_far_insightface(distances, issame, far=far, n_folds=n_folds)
    else:
        accuracies, thresholds = kfold_accuracy(scores, issame, n_folds=n_folds)
        vals, fars = kfold_val_at_far(scores, issame, far=far, n_folds=n_folds)
    fpr, tpr, _ = roc_curve(scores, issame)
    return {
        "accuracy": float(accuracies.mean()),
        "accuracy_std": float(accuracies.std()),
        "threshold": float(thresholds.mean()),
        "val": float(np.nanmean(vals)),
        "val_std": float(np.nanstd(vals)),
        "far": float(np.nanmean(fars)),
        "auc": auc(fpr, tpr),
        "eer": equal_error_rate(fpr, tpr),
        "fpr": fpr,
        "tpr": tpr,
    }


def make_pairs(
    labels: np.ndarray, *, num_pairs: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced verification pairs from a labeled set (held-out classes, synthetic ids).

    Pairs alternate same / different (so every contiguous fold is balanced, as in
    LFW's lists). A same pair draws a class with at least two samples, then two
    distinct samples of it; a different pair draws two distinct classes, then one
    sample of each; classes are drawn uniformly, pairs with replacement.

    Args:
      labels: ``(N,)`` identity of each sample.
      num_pairs: number of pairs; ``ceil(num_pairs / 2)`` are same pairs.
      seed: seed of the NumPy generator.

    Returns:
      ``(idx_a, idx_b, issame)``: int indices into ``labels`` and booleans, ``(num_pairs,)``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if num_pairs < 2:
        raise ValueError(f"num_pairs must be at least 2, got {num_pairs}")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    repeated = np.flatnonzero(counts >= 2)
    if len(counts) < 2 or len(repeated) == 0:
        raise ValueError("pairs need at least two classes and one class with two samples")
    members = np.argsort(inverse, kind="stable")
    starts = np.cumsum(counts) - counts
    rng = np.random.default_rng(seed)

    def sample(classes: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """A sample of each class, distinct from the position ``exclude`` in it."""
        if exclude is None:
            position = rng.integers(counts[classes])
        else:
            position = rng.integers(counts[classes] - 1)
            position += position >= exclude
        return starts[classes] + position

    issame = np.arange(num_pairs) % 2 == 0
    num_same, num_different = issame.sum(), (~issame).sum()
    same_class = rng.choice(repeated, num_same)
    first = sample(same_class)
    second = sample(same_class, exclude=first - starts[same_class])
    class_a = rng.integers(len(counts), size=num_different)
    class_b = rng.integers(len(counts) - 1, size=num_different)
    class_b += class_b >= class_a
    idx_a, idx_b = np.empty(num_pairs, np.int64), np.empty(num_pairs, np.int64)
    idx_a[issame], idx_b[issame] = members[first], members[second]
    idx_a[~issame], idx_b[~issame] = members[sample(class_a)], members[sample(class_b)]
    return idx_a, idx_b, issame
