"""One call that evaluates a trained embedding the way the papers report it."""

import os

import numpy as np
from jax.sharding import Mesh

from faceloss_jax.evaluation import geometry, plots, verification
from faceloss_jax.evaluation.extract import EmbedFn, extract_embeddings, l2_normalize

_MAX_PLOT_POINTS = 5000


def closed_set_accuracy(
    embeddings: np.ndarray, labels: np.ndarray, *, weights: np.ndarray | None = None
) -> float:
    """Accuracy of classifying each embedding among the training classes.

    With a classifier ``weights (d, C)`` the prediction is ``argmax_j W_jᵀx`` (the
    bias, if any, is left out); with sub-centres ``(d, C, K)``, ``argmax_j max_k
    W_jkᵀx``. Without, it is the class of the nearest center in
    cosine similarity, each sample's own class center computed without it
    (leave-one-out), so the score is not flattered by the sample itself.

    Args:
      embeddings: ``(N, d)`` test embeddings.
      labels: ``(N,)`` classes in ``[0, C)``.
      weights: optional learned class vectors ``(d, C)`` or sub-centres ``(d, C, K)``.
    """
    embeddings = l2_normalize(np.asarray(embeddings, np.float64))
    labels = np.asarray(labels)
    if weights is not None:
        weights = np.asarray(weights, np.float64)
        if weights.ndim not in (2, 3) or weights.shape[0] != embeddings.shape[1]:
            raise ValueError(
                f"weights must be ({embeddings.shape[1]}, C) or "
                f"({embeddings.shape[1]}, C, K), got {weights.shape}"
            )
        scores = np.tensordot(embeddings, weights, axes=1)
        if weights.ndim == 3:
            scores = scores.max(axis=-1)
        if labels.max() >= weights.shape[1]:
            raise ValueError(
                f"labels reach {labels.max()} but weights have {weights.shape[1]} classes"
            )
    else:
        num_classes = int(labels.max()) + 1
        centers = geometry.class_centers(embeddings, labels, num_classes=num_classes)
        scores = embeddings @ l2_normalize(centers).T
        counts = np.bincount(labels, minlength=num_classes)[labels, None]
        own_center = l2_normalize(centers[labels] * counts - embeddings)
        scores[np.arange(len(labels)), labels] = np.sum(embeddings * own_center, axis=-1)
    return float(np.mean(np.argmax(scores, axis=-1) == labels))


def _subsample(
    features: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if len(features) <= _MAX_PLOT_POINTS:
        return features, labels
    keep = np.random.default_rng(seed).choice(len(features), _MAX_PLOT_POINTS, replace=False)
    return features[keep], labels[keep]


def write_figures(
    directory: str,
    *,
    report: dict,
    positive_angles: np.ndarray,
    negative_angles: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    suffix: str = "",
    seed: int = 0,
) -> list[str]:
    """Writes the ROC curve (PNG and ``fpr``/``tpr`` in an ``.npz``, to overlay runs
    later), the angle histograms and, for 2-D or 3-D features, the feature plot."""
    os.makedirs(directory, exist_ok=True)
    np.savez(os.path.join(directory, f"roc{suffix}.npz"), fpr=report["fpr"], tpr=report["tpr"])
    paths = [
        plots.plot_roc(
            {"open set": (report["fpr"], report["tpr"])},
            os.path.join(directory, f"roc{suffix}.png"),
        ),
        plots.plot_angle_histograms(
            positive_angles, negative_angles, os.path.join(directory, f"angles{suffix}.png")
        ),
    ]
    plot_features = {2: plots.plot_features_2d, 3: plots.plot_features_3d}.get(features.shape[1])
    if plot_features is not None:
        features, labels = _subsample(features, labels, seed)
        dims = features.shape[1]
        paths.append(
            plot_features(
                features, labels, os.path.join(directory, f"features_{dims}d{suffix}.png")
            )
        )
    return paths


def evaluate_run(
    embed_fn: EmbedFn,
    *,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    open_images: np.ndarray,
    open_labels: np.ndarray,
    weights: np.ndarray | None = None,
    workdir: str | None = None,
    step: int | None = None,
    seed: int = 0,
    plot: bool = True,
    num_pairs: int = 6000,
    n_folds: int = 10,
    flip: bool = False,
    batch_size: int = 256,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """Closed-set accuracy, open-set verification and the geometry of one model.

    The test set holds the training classes (labels ``0..C-1``); the open set holds
    identities never seen in training, from which ``num_pairs`` balanced pairs are
    drawn (``make_pairs``) for the ``n_folds``-fold LFW protocol.

    Figures go to ``{workdir}/eval/`` (names end in ``_step{step}`` when a step is
    given): ``roc.png`` and ``roc.npz``, ``angles.png`` (open-set pair angles) and
    ``features_2d.png`` or ``features_3d.png`` (raw test features) when d is 2 or 3.

    Args:
      embed_fn: ``images -> embeddings``, see ``extract_embeddings``.
      test_images, test_labels: closed-set images ``(N, H, W, C)`` and classes ``(N,)``.
      open_images, open_labels: open-set images and identities.
      weights: optional learned classifier ``(d, C)``: closed-set accuracy by its
        argmax, and its own angles ``l_intra_w``, ``l_inter_w``; or sub-centres
        ``(d, C, K)``, whose angles are those of the dominant sub-centres
        (``geometry.dominant_subcenters``).
      workdir: where figures are written; None writes nothing.
      step: training step, for the figure names.
      seed: seed of the pairs and of the plotted subsample.
      plot: whether to write figures.
      num_pairs: open-set verification pairs.
      n_folds: folds of the verification protocol.
      flip: flip test-time augmentation (for faces; not for digits).
      batch_size: extraction batch size.
      mesh: device mesh for data-parallel extraction.

    Returns:
      A flat dict of floats: ``closed_set_accuracy``, ``verification_accuracy``,
      ``verification_std``, ``verification_threshold``, ``auc``, ``eer``,
      ``val_at_far_1e-3``, ``l_intra``, ``l_inter`` (features against their class
      centers), ``l_intra_w``, ``l_inter_w`` (with ``weights``),
      ``positive_angle_deg``, ``negative_angle_deg`` (mean open-set pair angles),
      ``feature_norm_mean``, ``feature_norm_std`` (over the per-class mean norms).
    """
    extract = dict(batch_size=batch_size, flip=flip, normalize=False, mesh=mesh)
    test_features = extract_embeddings(embed_fn, test_images, **extract)
    open_features = extract_embeddings(embed_fn, open_images, **extract)
    test_labels, open_labels = np.asarray(test_labels), np.asarray(open_labels)
    test_unit, open_unit = l2_normalize(test_features), l2_normalize(open_features)

    idx_a, idx_b, issame = verification.make_pairs(open_labels, num_pairs=num_pairs, seed=seed)
    report = verification.verification_report(
        open_unit[idx_a], open_unit[idx_b], issame, n_folds=n_folds
    )
    angles = geometry.pair_angles(open_unit[idx_a], open_unit[idx_b])
    # Centres of the classes the test set holds (a subsample, max_examples, may miss some).
    present = np.unique(test_labels, return_inverse=True)[1]
    centers = geometry.class_centers(test_unit, present)
    norms = geometry.class_mean_norms(test_features, present)
    closed_labels = present if weights is None else test_labels
    metrics = {
        "closed_set_accuracy": closed_set_accuracy(test_unit, closed_labels, weights=weights),
        "verification_accuracy": report["accuracy"],
        "verification_std": report["accuracy_std"],
        "verification_threshold": report["threshold"],
        "auc": report["auc"],
        "eer": report["eer"],
        "val_at_far_1e-3": report["val"],
        "l_intra": geometry.intra_angle(test_unit, centers.T, present),
        "l_inter": geometry.inter_angle(centers.T),
        "positive_angle_deg": float(np.degrees(angles[issame].mean())),
        "negative_angle_deg": float(np.degrees(angles[~issame].mean())),
        "feature_norm_mean": float(norms.mean()),
        "feature_norm_std": float(norms.std()),
    }
    if weights is not None:
        if np.ndim(weights) == 3:
            weights = geometry.dominant_subcenters(test_unit, weights, test_labels)
        metrics["l_intra_w"] = geometry.intra_angle(test_unit, weights, test_labels)
        metrics["l_inter_w"] = geometry.inter_angle(weights)
    if plot and workdir is not None:
        write_figures(
            os.path.join(workdir, "eval"),
            report=report,
            positive_angles=angles[issame],
            negative_angles=angles[~issame],
            features=test_features,
            labels=test_labels,
            suffix="" if step is None else f"_step{step}",
            seed=seed,
        )
    return metrics
