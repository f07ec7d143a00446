"""The "insightface" threshold mode and VAL@FAR against InsightFace's definitions.

The reference is a float64 NumPy transcription of ``calculate_roc``,
``calculate_accuracy``, ``calculate_val`` and ``calculate_val_far`` of InsightFace's
``recognition/arcface_torch/eval/verification.py``, written here from that file.
``calculate_val`` interpolates with ``scipy.interpolate.interp1d(far_train, thresholds,
kind="slinear")``; current scipy refuses the repeated FAR values it is given, so the
reference evaluates the spline that call built (knots ``[x0, x, x_last]``, coefficients
``y``, degree 1, ``BSpline``) after interp1d's stable sort.
"""

import numpy as np
import pytest
from scipy import interpolate

from faceloss_jax import evaluation
from faceloss_jax.evaluation import verification

# --- InsightFace's eval/verification.py, transcribed ---------------------------------


def _kfold(n, n_folds):
    """sklearn KFold(n_splits, shuffle=False): the first n % k folds one larger."""
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    start = 0
    for size in sizes:
        test = np.arange(start, start + size)
        yield np.setdiff1d(np.arange(n), test), test
        start += size


def calculate_accuracy(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    acc = float(tp + tn) / dist.size
    return tpr, fpr, acc


def calculate_roc(thresholds, embeddings1, embeddings2, actual_issame, nrof_folds=10):
    accuracy, best = np.zeros(nrof_folds), np.zeros(nrof_folds)
    dist = np.sum(np.square(np.subtract(embeddings1, embeddings2)), 1)
    for fold_idx, (train_set, test_set) in enumerate(_kfold(len(actual_issame), nrof_folds)):
        acc_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, _, acc_train[threshold_idx] = calculate_accuracy(
                threshold, dist[train_set], actual_issame[train_set]
            )
        best_threshold_index = np.argmax(acc_train)
        _, _, accuracy[fold_idx] = calculate_accuracy(
            thresholds[best_threshold_index], dist[test_set], actual_issame[test_set]
        )
        best[fold_idx] = thresholds[best_threshold_index]
    return accuracy, best


def calculate_val_far(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    true_accept = np.sum(np.logical_and(predict_issame, actual_issame))
    false_accept = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    n_same = np.sum(actual_issame)
    n_diff = np.sum(np.logical_not(actual_issame))
    return float(true_accept) / float(n_same), float(false_accept) / float(n_diff)


def _interp1d_slinear(x, y, at):
    """What ``interp1d(x, y, kind="slinear")(at)`` computed: a stable sort of x, then
    the degree-1 B-spline with knots ``[x0, x, x_last]`` and coefficients y."""
    order = np.argsort(x, kind="mergesort")
    x, y = x[order], y[order]
    return float(interpolate.BSpline.construct_fast(np.r_[x[0], x, x[-1]], y, 1)(at))


def calculate_val(thresholds, embeddings1, embeddings2, actual_issame, far_target, nrof_folds):
    val, far = np.zeros(nrof_folds), np.zeros(nrof_folds)
    dist = np.sum(np.square(np.subtract(embeddings1, embeddings2)), 1)
    for fold_idx, (train_set, test_set) in enumerate(_kfold(len(actual_issame), nrof_folds)):
        far_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, far_train[threshold_idx] = calculate_val_far(
                threshold, dist[train_set], actual_issame[train_set]
            )
        if np.max(far_train) >= far_target:
            threshold = _interp1d_slinear(far_train, thresholds, far_target)
        else:
            threshold = 0.0
        val[fold_idx], far[fold_idx] = calculate_val_far(
            threshold, dist[test_set], actual_issame[test_set]
        )
    return val, far


# --- Fixed embeddings ------------------------------------------------------------------


def _embeddings(num_pairs=600, dim=32, seed=0):
    """L2-normalized pair embeddings, same pairs correlated (accuracy ≈ 0.8–0.9)."""
    rng = np.random.default_rng(seed)
    issame = np.arange(num_pairs) % 2 == 0
    a = rng.standard_normal((num_pairs, dim))
    b = np.where(
        issame[:, None],
        a + 1.2 * rng.standard_normal((num_pairs, dim)),
        rng.standard_normal((num_pairs, dim)),
    )
    normalize = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return normalize(a), normalize(b), issame


@pytest.mark.parametrize("seed,n_folds", [(0, 10), (1, 10), (2, 7)])
def test_insightface_accuracy_equals_calculate_roc(seed, n_folds):
    a, b, issame = _embeddings(seed=seed)
    expected, expected_thresholds = calculate_roc(
        np.arange(0, 4, 0.01), a, b, issame, nrof_folds=n_folds
    )
    distances = evaluation.pair_distances(a, b)
    accuracies, thresholds = evaluation.kfold_accuracy_insightface(
        distances, issame, n_folds=n_folds
    )
    np.testing.assert_array_equal(accuracies, expected)
    np.testing.assert_array_equal(thresholds, expected_thresholds)
    report = evaluation.verification_report(a, b, issame, n_folds, threshold="insightface")
    assert report["accuracy"] == np.mean(expected) and report["accuracy_std"] == np.std(expected)
    assert report["threshold"] == np.mean(1 - expected_thresholds / 2)  # as a cosine
    assert 0.6 < report["accuracy"] < 0.99  # not a trivial case


@pytest.mark.parametrize("seed,far", [(0, 1e-3), (1, 1e-2), (2, 0.1), (3, 0.3)])
def test_insightface_val_equals_calculate_val(seed, far):
    a, b, issame = _embeddings(num_pairs=800, seed=seed)
    expected_val, expected_far = calculate_val(
        np.arange(0, 4, 0.001), a, b, issame, far, nrof_folds=10
    )
    val, achieved = evaluation.kfold_val_at_far_insightface(
        evaluation.pair_distances(a, b), issame, far=far, n_folds=10
    )
    np.testing.assert_array_equal(val, expected_val)
    np.testing.assert_array_equal(achieved, expected_far)
    report = evaluation.verification_report(a, b, issame, far=far, threshold="insightface")
    assert report["val"] == np.mean(expected_val) and report["far"] == np.mean(expected_far)


def test_insightface_threshold_is_the_strictest_best_and_accepts_strictly_below():
    """Same pairs at distance 0.5, different ones at 1.5: every grid threshold in
    (0.5, 1.5] is perfect on the training folds; the first, 0.51, is taken. A pair at
    exactly the threshold is rejected (``d < t``)."""
    distances = np.tile([0.5, 1.5], 10)
    issame = np.tile([True, False], 10)
    accuracies, thresholds = evaluation.kfold_accuracy_insightface(distances, issame)
    np.testing.assert_array_equal(thresholds, np.arange(0, 4, 0.01)[51])
    np.testing.assert_array_equal(accuracies, 1.0)
    at_threshold = np.r_[distances[:-2], np.arange(0, 4, 0.01)[51], 1.5]
    accuracies, _ = evaluation.kfold_accuracy_insightface(at_threshold, issame, n_folds=10)
    assert accuracies[-1] == 0.5  # the last fold's same pair sits on 0.51: rejected


def test_insightface_val_at_far_on_a_hand_made_distribution():
    """Two folds. Training fold: 10 different pairs at 0.1005, 0.2005, …, 1.0005 (off the
    0.001 grid), so FAR(t) = 0.1 on t ∈ {0.101, …, 0.200} and 0.2 from t = 0.201. At
    FAR 0.15: t = 0.200 + 0.001 · (0.15 − 0.1) / (0.2 − 0.1) = 0.2005. The held-out
    fold's pairs sit on either side of 0.2005."""
    train_neg = 0.1005 + 0.1 * np.arange(10)
    train_pos = np.full(10, 0.05)
    test_pos = np.array([0.1, 0.2, 0.2004, 0.2006, 0.3, 0.9, 0.15, 0.19, 1.0, 2.0])
    test_neg = np.array([0.1, 0.2004, 0.2006, 0.5, 1, 2, 3, 3, 3, 3])
    distances = np.r_[train_pos, train_neg, test_pos, test_neg]
    issame = np.r_[np.ones(10, bool), np.zeros(10, bool), np.ones(10, bool), np.zeros(10, bool)]
    threshold = evaluation.threshold_at_far_insightface(distances[:20], issame[:20], 0.15)
    # float64: the grid point np.arange(0, 4, 0.001)[200] and the interpolation round by a
    # few u · 0.2 ≈ 1e-16; abs=1e-12 leaves 1e4× and is 1e8× below the next grid step.
    assert threshold == pytest.approx(0.2005, abs=1e-12)
    # Fold 0 (held out: the first 20) trains on the last 20 and vice versa; take fold 1.
    val, far = evaluation.kfold_val_at_far_insightface(distances, issame, far=0.15, n_folds=2)
    # Below 0.2005: 5 same pairs (0.1, 0.2, 0.2004, 0.15, 0.19), 2 different (0.1, 0.2004).
    assert val[1] == 5 / 10 and far[1] == 2 / 10  # achieved FAR 0.2 ≠ target: reported
    # A target above every training FAR: threshold 0, nothing accepted.
    assert evaluation.threshold_at_far_insightface(np.r_[0.1, 3.9999], [True, False], 0.5) == 0
    # The reference agrees (1-D embeddings √d and 0: squared distance d).
    ref_val, ref_far = calculate_val(
        np.arange(0, 4, 0.001), np.sqrt(distances)[:, None], np.zeros((40, 1)), issame, 0.15, 2
    )
    np.testing.assert_array_equal(val, ref_val)
    np.testing.assert_array_equal(far, ref_far)


def test_exact_threshold_at_far_is_the_documented_order_statistic():
    """far·n = k integer: the (k+1)-th largest negative, so exactly k lie above it."""
    negatives = np.random.default_rng(0).uniform(-1, 1, 1000)
    for k in (1, 5, 37):
        threshold = evaluation.threshold_at_far(negatives, k / 1000)
        assert threshold == np.sort(negatives)[-(k + 1)]
        assert np.sum(negatives > threshold) == k


def test_unknown_threshold_mode_is_named():
    a, b, issame = _embeddings(num_pairs=20)
    with pytest.raises(ValueError, match="unknown threshold mode 'grid'.*insightface"):
        evaluation.verification_report(a, b, issame, threshold="grid")


def test_evaluate_pair_set_is_arcface_torchs_callback():
    """XNorm = mean norm of the un-normalized embeddings of the images and their mirror
    images; accuracy from the normalized sums, insightface thresholds."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 4, 4, 1), dtype=np.uint8)
    issame = np.arange(20) % 2 == 0
    images[1::2][issame] = images[0::2][issame] // 2 + rng.integers(0, 64, (10, 4, 4, 1)).astype(
        np.uint8
    )
    weights = rng.standard_normal((16, 6)).astype(np.float32)
    embed = lambda x: x.reshape(len(x), -1) @ weights  # noqa: E731
    preprocess = lambda x: (np.asarray(x, np.float32) - 127.5) / 128  # noqa: E731
    report = evaluation.evaluate_pair_set(
        embed, images, issame, preprocess=preprocess, n_folds=5, batch_size=16
    )
    original = preprocess(images).reshape(40, -1) @ weights
    mirrored = preprocess(images[:, :, ::-1]).reshape(40, -1) @ weights
    xnorm = np.mean(np.linalg.norm(np.r_[original, mirrored].astype(np.float64), axis=1))
    # The report's embeddings come from XLA's float32 dot, these from NumPy's: 16-term
    # sums in other orders, each element within 16·u·Σ_k|x_k w_k| of the exact value on
    # either side, so each norm within 2·16·u·‖|x||W|‖ (|x| ≤ 1, the inputs are exact);
    # the mean of the norms within the mean of those bounds (≈ 6e-6 relative here).
    inputs = np.abs(np.r_[preprocess(images), preprocess(images[:, :, ::-1])].reshape(80, -1))
    bound = 2 * 16 * 2.0**-24 * np.mean(np.linalg.norm(inputs @ np.abs(weights), axis=1))
    assert abs(report["xnorm"] - xnorm) <= bound
    summed = original.astype(np.float64) + mirrored
    expected = verification.verification_report(
        summed[0::2], summed[1::2], issame, 5, threshold="insightface"
    )
    # Accuracy counts decisions: the mean of 5 folds' k/4 in float64 rounds by ~5·u, and
    # one pair decided otherwise moves it by 1/20; abs=1e-12.
    assert report["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert set(report) >= {"accuracy", "accuracy_std", "xnorm", "val", "far", "threshold"}
