"""Tests of faceloss_jax.evaluation against hand-computed and brute-force references."""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_devices
from jax.tree_util import Partial
from PIL import Image

from faceloss_jax import evaluation
from faceloss_jax.evaluation import extract, geometry, ijb


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _linear_embed_fn(projection):
    return lambda images: images.reshape(len(images), -1) @ projection


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("batch_size", [8, 37, 100])
@pytest.mark.parametrize("flip,normalize", [(True, True), (False, True), (False, False)])
def test_extract_matches_direct_computation(x64, batch_size, flip, normalize):
    rng = np.random.default_rng(0)
    # float64 images and projection (the test enables x64): the embed function and the
    # flip sum compute in float64, as the reference does.
    images = rng.normal(size=(37, 4, 5, 1))
    projection = rng.normal(size=(20, 3))
    expected = images.reshape(37, -1) @ projection
    if flip:
        expected += images[:, :, ::-1].reshape(37, -1) @ projection
    if normalize:
        expected = _unit(expected)
    got = evaluation.extract_embeddings(
        _linear_embed_fn(projection), images, batch_size=batch_size, flip=flip, normalize=normalize
    )
    assert got.shape == (37, 3) and got.dtype == np.float32
    # Extraction's float32 steps: the cast (≤ u/2 relative) and the normalization (a norm
    # of 3 squares, ≤ 2.5·u, and a division, u): ≤ 4·u of the largest element (1 when
    # normalized); 8·u. A row of another batch, or a missed flip, is O(1) off.
    tol = 8 * 2.0**-24
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.abs(expected).max())


def test_flip_tta_on_flip_symmetric_and_asymmetric_functions(x64):
    # float64 images (x64): the sums are float64, and extraction rounds them to float32,
    # so that equal float64 values (to ~1e-15) land at most one float32 ulp (2⁻²³
    # relative) apart; the float32 normalization adds ≤ 4·u of the unit vector (see
    # test_extract_matches_direct_computation). A missed or doubled flip is 2× off.
    ulp, unit_tol = 2.0**-23, 8 * 2.0**-24
    images = np.random.default_rng(1).normal(size=(6, 3, 4, 2))
    symmetric = lambda x: x.sum(axis=2).reshape(len(x), -1)  # Invariant to the mirror.
    no_flip = evaluation.extract_embeddings(symmetric, images, flip=False, normalize=False)
    with_flip = evaluation.extract_embeddings(symmetric, images, flip=True, normalize=False)
    atol = 1e-13 * np.abs(no_flip).max()  # a sum that cancels to ~0
    np.testing.assert_allclose(with_flip, 2 * no_flip, rtol=ulp, atol=atol)
    np.testing.assert_allclose(
        evaluation.extract_embeddings(symmetric, images), _unit(no_flip), atol=unit_tol
    )
    # The left column plus, through the mirror, the right column.
    left_column = lambda x: x[:, :, 0, :].reshape(len(x), -1)
    got = evaluation.extract_embeddings(left_column, images, flip=True, normalize=False)
    expected = (images[:, :, 0, :] + images[:, :, -1, :]).reshape(6, -1)
    np.testing.assert_allclose(got, expected, rtol=ulp, atol=1e-13 * np.abs(expected).max())


@needs_devices(8)
@pytest.mark.parametrize(
    "make_mesh",
    [
        lambda: jax.make_mesh((8,), ("data",)),  # Explicit axes: shardings show in the types.
        lambda: jax.make_mesh((4, 2), ("data", "model")),
        lambda: jax.sharding.Mesh(np.array(jax.devices()), ("data",)),  # Auto axes.
    ],
    ids=["explicit-1d", "explicit-2d", "auto-1d"],
)
def test_sharded_extraction_equals_single_device(x64, make_mesh):
    model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(5)])
    # float64 images (the model then computes in float64): the layouts differ only in
    # the order of float64 sums, and extraction rounds to float32 at the end.
    images = np.random.default_rng(2).normal(size=(37, 4, 4, 3))
    variables = model.init(jax.random.key(0), images[:1].reshape(1, -1))
    batch_specs = []

    def apply(v, x):
        batch_specs.append(jax.typeof(x).sharding.spec)
        return model.apply(v, x.reshape(len(x), -1))

    embed_fn = Partial(apply, variables)
    mesh = make_mesh()
    single = evaluation.extract_embeddings(embed_fn, images, batch_size=12)
    batch_specs.clear()
    sharded = evaluation.extract_embeddings(
        embed_fn, images, batch_size=12, mesh=mesh, data_axis="data"
    )
    if mesh.axis_types[0] == jax.sharding.AxisType.Explicit:
        assert batch_specs and all(spec[0] == "data" for spec in batch_specs)
    closure = evaluation.extract_embeddings(lambda x: embed_fn(x), images, batch_size=12, mesh=mesh)
    assert sharded.shape == (37, 5)
    # At most one float32 ulp apart (2⁻²³ relative), or 48 · 2⁻⁵³ of the largest element
    # for one that cancels to ~0 (the longest sum: 4·4·3 inputs).
    tol = {"rtol": 2.0**-23, "atol": 1e-13 * float(np.abs(single).max())}
    np.testing.assert_allclose(sharded, single, **tol)
    np.testing.assert_allclose(closure, single, **tol)


def test_partial_embed_fn_reuses_the_compiled_function():
    images = np.ones((4, 2, 2, 1), np.float32)
    apply = lambda projection, x: x.reshape(len(x), -1) @ projection
    first = evaluation.extract_embeddings(Partial(apply, jnp.eye(4)), images, normalize=False)
    size = extract._embed_batch._cache_size()
    second = evaluation.extract_embeddings(Partial(apply, 3 * jnp.eye(4)), images, normalize=False)
    assert extract._embed_batch._cache_size() == size
    np.testing.assert_allclose(second, 3 * first)  # exact: ones times 3·I


@needs_devices(8)
def test_extract_rejects_bad_input():
    with pytest.raises(ValueError, match="images must be"):
        evaluation.extract_embeddings(lambda x: x, np.ones((3, 4, 4)))
    with pytest.raises(ValueError, match="embed_fn must map"):
        evaluation.extract_embeddings(lambda x: x.sum(axis=(1, 2, 3)), np.ones((3, 2, 2, 1)))
    with pytest.raises(ValueError, match="data_axis"):
        evaluation.extract_embeddings(
            lambda x: x.reshape(len(x), -1),
            np.ones((8, 2, 2, 1)),
            mesh=jax.make_mesh((8,), ("data",)),
            data_axis="batch",
        )


# --------------------------------------------------------------------------- verification

# The verification metrics below are float64 functions of the scores: fractions k/n of
# decisions, their means and standard deviations, and linear interpolations between
# ROC points or sorted scores. They round by a few u ≈ 1e-16 of their O(1) values, while
# one decision counted otherwise moves a fraction by ≥ 1/n (≥ 1e-4 here): the default
# rtol 1e-7 of assert_allclose (pytest.approx: 1e-6) lies between, and is not restated.


def test_kfold_accuracy_hand_computed():
    # 20 pairs, alternating same/different: 10 folds of one same and one different pair.
    # Separable (same >= 0.6, different <= 0.4) but for fold 3, whose same pair scores
    # 0.3. Trained without fold 3, the threshold lies in (0.4, 0.6) and gets it wrong;
    # trained with it, the best threshold is still in (0.4, 0.6) (one error against two).
    issame = np.arange(20) % 2 == 0
    scores = np.where(issame, np.linspace(0.6, 0.95, 20), np.linspace(0.0, 0.4, 20))
    scores[6] = 0.3
    accuracies, thresholds = evaluation.kfold_accuracy(scores, issame)
    np.testing.assert_allclose(accuracies, [1, 1, 1, 0.5, 1, 1, 1, 1, 1, 1])
    assert np.all((thresholds > 0.4) & (thresholds < 0.6))
    # The same scores as the cosines of embedding pairs.
    emb_a, emb_b = np.tile([1.0, 0.0], (20, 1)), np.c_[scores, np.sqrt(1 - scores**2)]
    report = evaluation.verification_report(emb_a, emb_b, issame)
    np.testing.assert_allclose(report["accuracy"], 0.95)
    np.testing.assert_allclose(report["accuracy_std"], 0.15)


def _brute_force_kfold_accuracy(scores, issame, n_folds):
    accuracies = []
    for test in np.array_split(np.arange(len(scores)), n_folds):
        train = np.setdiff1d(np.arange(len(scores)), test)
        distinct = sorted(set(scores[train]))
        candidates = [-np.inf] + [(a + b) / 2 for a, b in zip(distinct, distinct[1:])] + [np.inf]
        best, best_correct = None, -1
        for t in candidates:
            correct = sum((scores[i] > t) == issame[i] for i in train)
            if correct > best_correct:
                best, best_correct = t, correct
        accuracies.append(np.mean([(scores[i] > best) == issame[i] for i in test]))
    return np.array(accuracies)


@pytest.mark.parametrize("n_folds", [10, 4])
def test_kfold_accuracy_matches_brute_force(n_folds):
    rng = np.random.default_rng(3)
    issame = rng.random(53) < 0.5
    scores = np.round(rng.normal(size=53) + issame, 1)  # Rounded: many ties.
    accuracies, _ = evaluation.kfold_accuracy(scores, issame, n_folds=n_folds)
    np.testing.assert_allclose(accuracies, _brute_force_kfold_accuracy(scores, issame, n_folds))


def test_fold_indices_are_sklearn_kfold():
    model_selection = pytest.importorskip("sklearn.model_selection")
    for n in (20, 23, 6000):
        ours = evaluation.fold_indices(n, 10)
        theirs = [test for _, test in model_selection.KFold(10, shuffle=False).split(np.zeros(n))]
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    with pytest.raises(ValueError, match="n_folds"):
        evaluation.fold_indices(5, 10)


def test_threshold_at_far_interpolates_between_negative_scores():
    negatives = np.arange(1000) / 1000  # 0.000 ... 0.999
    # FAR = 0.005 = 5/1000: exactly five negatives (0.995 ... 0.999) above 0.994.
    np.testing.assert_allclose(evaluation.threshold_at_far(negatives, 0.005), 0.994)
    # Half-way between the corners (0.994, 5/1000) and (0.993, 6/1000).
    np.testing.assert_allclose(evaluation.threshold_at_far(negatives, 0.0055), 0.9935)
    with pytest.raises(ValueError, match="far"):
        evaluation.threshold_at_far(negatives, 0.0)


def test_kfold_val_at_far_on_constructed_scores():
    # Every fold holds the same 100 negative scores {0, 0.005, ..., 0.495}: trained on
    # 900 of them (each value 9 times), FAR = 1% puts the threshold at 0.49, which on
    # the held-out fold accepts exactly the negative 0.495.
    fold_negatives = np.arange(100) * 0.005
    fold_positives = np.linspace(0.3, 1.0, 100)
    fold_scores = np.ravel(np.c_[fold_positives, fold_negatives])
    scores = np.tile(fold_scores, 10)
    issame = np.tile(np.arange(200) % 2 == 0, 10)
    val, far = evaluation.kfold_val_at_far(scores, issame, far=0.01)
    np.testing.assert_allclose(far, 0.01)
    np.testing.assert_allclose(val, np.mean(fold_positives > 0.49))


def test_roc_curve_and_auc_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    issame = rng.random(500) < 0.3
    scores = np.round(rng.normal(size=500) + issame, 1)
    fpr, tpr, thresholds = evaluation.roc_curve(scores, issame)
    ref_fpr, ref_tpr, ref_thresholds = metrics.roc_curve(issame, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_allclose(thresholds[1:], ref_thresholds[1:])
    np.testing.assert_allclose(evaluation.auc(fpr, tpr), metrics.roc_auc_score(issame, scores))


def test_auc_and_eer_hand_computed():
    # Positives {0.9, 0.5}, negatives {0.5, 0.1}: of the four (positive, negative)
    # pairs three are ordered and one tied (half credit): AUC = 3.5 / 4.
    scores, issame = np.array([0.9, 0.5, 0.5, 0.1]), np.array([True, True, False, False])
    fpr, tpr, _ = evaluation.roc_curve(scores, issame)
    np.testing.assert_allclose(evaluation.auc(fpr, tpr), 0.875)
    # ROC (0, 0), (0, .5), (.5, 1), (1, 1): FRR − FAR goes from .5 to −.5 on the
    # diagonal segment, crossing zero half-way, at FAR = .25.
    np.testing.assert_allclose(evaluation.equal_error_rate(fpr, tpr), 0.25)
    # One impostor above and one genuine below a gap: FAR = FRR = 1/5 on a plateau.
    scores = np.array([0.6, 0.7, 0.8, 0.9, 0.35, 0.1, 0.2, 0.3, 0.4, 0.65])
    fpr, tpr, _ = evaluation.roc_curve(scores, np.arange(10) < 5)
    np.testing.assert_allclose(evaluation.equal_error_rate(fpr, tpr), 0.2)


def test_tar_at_far_on_constructed_scores():
    negatives = np.arange(10000) / 10000  # 0.0000 ... 0.9999
    positives = np.array([0.99995, 0.9999, 0.5, 0.2])
    scores = np.r_[positives, negatives]
    issame = np.arange(len(scores)) < 4
    tars = evaluation.tar_at_far(scores, issame, fars=(1e-4, 2e-4, 0.5, 1e-5))
    # FAR 1e-4 admits one impostor (0.9999): threshold 0.9999 accepts two positives.
    # FAR 0.5 admits the 5000 impostors >= 0.5, and three positives.
    assert tars["tar_at_far_1e-4"] == 0.5
    assert tars["tar_at_far_2e-4"] == 0.5
    assert tars["tar_at_far_5e-1"] == 0.75
    assert np.isnan(tars["tar_at_far_1e-5"])  # Needs 1e5 impostors.


def _template_verification(embeddings, template_ids, template_a, template_b, issame, fars):
    """Per-image templates (each image its own media, normalized first: the mean of the
    unit embeddings) through ``ijb``'s pooling and scoring, TAR@FAR and AUC."""
    templates, pooled = ijb.pool_templates(
        embeddings, template_ids, np.arange(len(template_ids)), normalize_faces=True
    )
    scores = ijb.score_pairs(templates, pooled, np.asarray(template_a), np.asarray(template_b))
    fpr, tpr, _ = evaluation.roc_curve(scores, issame)
    return {**evaluation.tar_at_far(scores, issame, fars=fars), "auc": evaluation.auc(fpr, tpr)}


def test_template_pooling_and_template_verification():
    embeddings = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    templates, pooled = ijb.pool_templates(
        embeddings, np.array([7, 7, 9]), np.arange(3), normalize_faces=True
    )
    np.testing.assert_array_equal(templates, [7, 9])
    # float32 features: a mean of two unit vectors and its normalization, ≤ 4·u ≈ 2.4e-7.
    np.testing.assert_allclose(pooled, [[0.5**0.5, 0.5**0.5], [1.0, 0.0]], rtol=1e-6)

    rng = np.random.default_rng(5)
    identity = rng.integers(30, size=300)
    template_ids = identity * 10 + rng.integers(3, size=300)  # 3 templates per identity.
    embeddings = rng.normal(size=(30, 16))[identity] + 1.5 * rng.normal(size=(300, 16))
    template_a = rng.choice(np.unique(template_ids), 2000)
    template_b = rng.choice(np.unique(template_ids), 2000)
    issame = template_a // 10 == template_b // 10
    result = _template_verification(
        embeddings, template_ids, template_a, template_b, issame, fars=(1e-2, 1e-3)
    )
    pooled = {
        t: _unit(np.mean(_unit(embeddings[template_ids == t]), axis=0))
        for t in np.unique(template_ids)
    }
    scores = np.array([pooled[a] @ pooled[b] for a, b in zip(template_a, template_b)])
    expected = evaluation.tar_at_far(scores, issame, fars=(1e-2, 1e-3))
    assert result["tar_at_far_1e-2"] == expected["tar_at_far_1e-2"]
    assert result["tar_at_far_1e-3"] == expected["tar_at_far_1e-3"]
    assert 0.5 < result["auc"] <= 1.0
    with pytest.raises(ValueError, match="templates without features"):
        _template_verification(embeddings, template_ids, [-1], [0], [True], fars=(1e-2,))


def test_perfect_and_random_embeddings_give_the_extremes():
    labels = np.repeat(np.arange(50), 6)
    idx_a, idx_b, issame = evaluation.make_pairs(labels, num_pairs=600, seed=0)
    rng = np.random.default_rng(6)
    perfect = np.eye(50)[labels] + 0.01 * rng.normal(size=(300, 50))
    report = evaluation.verification_report(perfect[idx_a], perfect[idx_b], issame)
    assert report["accuracy"] == 1.0 and report["accuracy_std"] == 0.0
    assert report["eer"] == 0.0 and report["auc"] == 1.0 and report["val"] == 1.0
    random = rng.normal(size=(300, 64))
    report = evaluation.verification_report(random[idx_a], random[idx_b], issame)
    assert abs(report["accuracy"] - 0.5) < 0.06
    assert abs(report["auc"] - 0.5) < 0.06
    assert abs(report["eer"] - 0.5) < 0.06


def test_make_pairs():
    labels = np.array([5, 5, 5, 9, 9, 2])  # Class 2 has one sample: never in a same pair.
    idx_a, idx_b, issame = evaluation.make_pairs(labels, num_pairs=1001, seed=0)
    np.testing.assert_array_equal(issame, np.arange(1001) % 2 == 0)
    np.testing.assert_array_equal(labels[idx_a] == labels[idx_b], issame)
    assert np.all(idx_a[issame] != idx_b[issame])
    assert set(labels[idx_a[issame]]) == {5, 9}
    assert set(labels[idx_a[~issame]]) | set(labels[idx_b[~issame]]) == {2, 5, 9}
    again = evaluation.make_pairs(labels, num_pairs=1001, seed=0)
    other = evaluation.make_pairs(labels, num_pairs=1001, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip((idx_a, idx_b, issame), again))
    assert not np.array_equal(idx_a, other[0])
    with pytest.raises(ValueError, match="two classes"):
        evaluation.make_pairs(np.array([1, 2, 3]), num_pairs=10, seed=0)
    with pytest.raises(ValueError, match="two classes"):
        evaluation.make_pairs(np.array([1, 1]), num_pairs=10, seed=0)


def test_verification_rejects_bad_input():
    with pytest.raises(ValueError, match="both same and different"):
        evaluation.kfold_accuracy(np.ones(20), np.ones(20, bool))
    with pytest.raises(ValueError, match="boolean"):
        evaluation.kfold_accuracy(np.ones(20), np.arange(20) % 2)
    with pytest.raises(ValueError, match="NaN"):
        evaluation.roc_curve(np.array([np.nan, 0.0]), np.array([True, False]))


# ------------------------------------------------------------------------- identification


def _brute_force_ranks(gallery, gallery_labels, probes, probe_labels, distractors):
    gallery, probes, distractors = _unit(gallery), _unit(probes), _unit(distractors)
    ranks = []
    for probe, label in zip(probes, probe_labels):
        genuine = probe @ gallery[list(gallery_labels).index(label)]
        impostors = [probe @ g for g, l in zip(gallery, gallery_labels) if l != label]
        impostors += [probe @ d for d in distractors]
        ranks.append(1 + sum(s > genuine for s in impostors))
    return np.array(ranks)


def test_probe_ranks_match_brute_force_chunked_or_not():
    rng = np.random.default_rng(7)
    gallery = rng.normal(size=(20, 8))
    gallery_labels = rng.permutation(20) * 3 + 100  # Unsorted, non-contiguous ids.
    which = rng.integers(20, size=50)
    probes = gallery[which] + 0.8 * rng.normal(size=(50, 8))
    distractors = rng.normal(size=(103, 8))
    expected = _brute_force_ranks(
        gallery, gallery_labels, probes, gallery_labels[which], distractors
    )
    assert 0 < np.mean(expected == 1) < 1 and np.any(expected > 5)  # A non-trivial case.
    for chunk_size in (None, 1, 7, 64):
        ranks = evaluation.probe_ranks(
            gallery,
            gallery_labels,
            probes,
            gallery_labels[which],
            distractors=distractors,
            chunk_size=chunk_size,
        )
        np.testing.assert_array_equal(ranks, expected)
    without = evaluation.probe_ranks(gallery, gallery_labels, probes, gallery_labels[which])
    np.testing.assert_array_equal(
        without,
        _brute_force_ranks(
            gallery, gallery_labels, probes, gallery_labels[which], np.zeros((0, 8))
        ),
    )


def test_identification_hand_computed():
    gallery, gallery_labels = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])
    probes = np.array([[1.0, 0.1], [0.2, 1.0], [1.0, 0.9]])
    # Probe 0 ([1, .1], identity 0) is closer to the distractor [1, .05] than to its
    # match [1, 0]; probe 1 ([.2, 1], identity 1) is closest to its match; probe 2
    # ([1, .9], identity 1) is closer to gallery identity 0 and to [1, .05].
    distractors = np.array([[1.0, 0.05], [-1.0, 0.0]])
    ranks = evaluation.probe_ranks(
        gallery, gallery_labels, probes, np.array([0, 1, 1]), distractors=distractors
    )
    np.testing.assert_array_equal(ranks, [2, 1, 3])
    assert evaluation.identification_rates(np.array([1, 2, 6, 1]), ks=(1, 5)) == {
        "rank_1": 0.5,
        "rank_5": 0.75,
    }


def test_probe_ranks_reject_bad_gallery():
    gallery = np.eye(3)
    with pytest.raises(ValueError, match="distinct"):
        evaluation.probe_ranks(gallery, np.array([0, 0, 1]), gallery, np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="missing from the gallery"):
        evaluation.probe_ranks(gallery, np.array([0, 1, 2]), gallery, np.array([0, 1, 7]))


# -------------------------------------------------------------------------------- geometry

# float64 geometry: arccos of cosines of exact (or cos/sin-made) vectors, a few u, its
# condition 1/sin θ ≤ 2 at the hand-made angles away from 0 and π; pytest.approx's
# default rel 1e-6 (the means of 10 rows: ≤ 10·u of Σ|x|, assert_allclose's 1e-7).


def test_intra_and_inter_angle_hand_computed():
    assert evaluation.inter_angle(np.eye(3)) == pytest.approx(-0.5)
    # Four classes at 0°, 90°, 180°, 270°: from each class, 90° + 180° + 90°.
    weights = np.array([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, -1.0]])
    assert evaluation.inter_angle(weights) == pytest.approx(-2 / 3)
    # Each feature 30° from its class vector: L_Intra = (π/6) / π.
    labels = np.array([0, 1, 2, 3, 1])
    class_angle = np.array([0.0, 90.0, 180.0, 270.0])[labels]
    feature_angle = np.radians(class_angle + np.array([30, -30, 30, 30, 30]))
    features = 2.5 * np.c_[np.cos(feature_angle), np.sin(feature_angle)]
    assert evaluation.intra_angle(features, weights, labels) == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="labels must be in"):
        evaluation.intra_angle(features, weights, labels + 1)


def test_inter_angle_in_blocks_equals_all_pairs(monkeypatch):
    weights = np.random.default_rng(8).normal(size=(4, 23))
    unit = _unit(weights.T)
    expected = (
        -np.mean(
            [
                np.arccos(np.clip(unit[i] @ unit[j], -1, 1))
                for i in range(23)
                for j in range(23)
                if i != j
            ]
        )
        / np.pi
    )
    monkeypatch.setattr(geometry, "_BLOCK_ELEMENTS", 50)  # Blocks of 2 rows.
    # float64: 4-d cosines (≤ 4·u) through arccos, whose condition 1/sin θ is O(1) for
    # random directions, and a mean of 506 in another order: ~1e-14; 1e-12.
    assert evaluation.inter_angle(weights) == pytest.approx(expected, rel=1e-12)


def test_class_centers_norms_and_pair_angles():
    rng = np.random.default_rng(9)
    embeddings, labels = rng.normal(size=(40, 3)), rng.permutation(np.arange(40) % 4)
    centers = evaluation.class_centers(embeddings, labels)
    norms = evaluation.class_mean_norms(embeddings, labels)
    for c in range(4):
        np.testing.assert_allclose(centers[c], embeddings[labels == c].mean(axis=0))
        np.testing.assert_allclose(norms[c], np.linalg.norm(embeddings[labels == c], axis=1).mean())
    with pytest.raises(ValueError, match="without samples"):
        evaluation.class_centers(embeddings, labels, num_classes=5)
    angles = evaluation.pair_angles(
        np.array([[1.0, 1.0], [1.0, 0.0], [3.0, 0.0]]),
        np.array([[2.0, 2.0], [1.0, 1.0], [-1.0, 0.0]]),
    )
    # At 0 and π, arccos turns a cosine's float64 rounding δ ≈ 2·u into √(2δ) ≈ 3e-8.
    np.testing.assert_allclose(angles, [0.0, np.pi / 4, np.pi], atol=1e-7)


# ---------------------------------------------------------------------------------- figures


@pytest.mark.parametrize("name", ["roc", "angles", "features_2d", "features_3d"])
def test_plots_are_png_files_of_the_expected_size(name, tmp_path):
    rng = np.random.default_rng(10)
    labels = np.repeat(np.arange(12), 10)  # More classes than tab10 has colours.
    draw = {
        "roc": lambda path, **kw: evaluation.plot_roc(
            {
                "a": evaluation.roc_curve(rng.normal(size=200), np.arange(200) % 2 == 0)[:2],
                "b": (np.array([0.0, 1e-3, 1.0]), np.array([0.0, 0.9, 1.0])),
            },
            path,
            **kw,
        ),
        "angles": lambda path, **kw: evaluation.plot_angle_histograms(
            rng.uniform(0, 1, 300), rng.uniform(1, 2, 300), path, **kw
        ),
        "features_2d": lambda path, **kw: evaluation.plot_features_2d(
            rng.normal(size=(120, 2)), labels, path, **kw
        ),
        "features_3d": lambda path, **kw: evaluation.plot_features_3d(
            rng.normal(size=(120, 3)), labels, path, **kw
        ),
    }[name]
    path = draw(os.path.join(tmp_path, "sub", f"{name}.png"), figsize=(4.0, 3.0), dpi=50)
    assert os.path.getsize(path) > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (200, 150)
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # Something was drawn.


# ------------------------------------------------------------------------------ a whole run


def _angle_images(labels, class_angles, rng, noise=0.02):
    """(N, 4, 4, 1) images holding (cos, sin) of their class' angle in two pixels."""
    angle = class_angles[labels] + noise * rng.normal(size=len(labels))
    images = np.zeros((len(labels), 4, 4, 1), np.float32)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = np.cos(angle), np.sin(angle)
    images[:, 1, 0, 0] = 1.0 + rng.random(len(labels))  # The feature norm.
    return images


def _angle_embed(images):
    return images[:, 0, :2, 0] * images[:, 1, 0, 0][:, None]


def test_evaluate_run_on_perfect_2d_features(tmp_path):
    rng = np.random.default_rng(11)
    test_labels, open_labels = np.arange(300) % 5, np.arange(200) % 4 + 5
    class_angles = np.radians(np.arange(9) * 40.0)  # Seen: 0..160°, open set: 200..320°.
    metrics = evaluation.evaluate_run(
        _angle_embed,
        test_images=_angle_images(test_labels, class_angles, rng),
        test_labels=test_labels,
        open_images=_angle_images(open_labels, class_angles, rng),
        open_labels=open_labels,
        workdir=str(tmp_path),
        step=3,
        num_pairs=400,
    )
    assert metrics["closed_set_accuracy"] == 1.0
    assert metrics["verification_accuracy"] == 1.0 and metrics["eer"] == 0.0
    assert metrics["auc"] == 1.0 and metrics["val_at_far_1e-3"] == 1.0
    assert metrics["l_intra"] < 0.01
    # The 5 seen classes are 40° apart: L_Inter = −mean pairwise angle / π.
    pairwise = [40 * abs(i - j) for i in range(5) for j in range(5) if i != j]
    # Statistical: a centre averages 60 angles of σ = 0.02 rad, so it is ~0.003 rad off
    # and L_Inter (/π) ~0.001; 0.01. Classes a slot (40°) apart would be 0.05 off.
    assert metrics["l_inter"] == pytest.approx(-np.mean(pairwise) / 180, abs=0.01)
    assert metrics["positive_angle_deg"] < 5 and metrics["negative_angle_deg"] > 35
    # Norms ~ U(1, 2) (σ = 0.29): 5 class means of 60, σ ≈ 0.29/√300 ≈ 0.017; 0.1 ≈ 6σ.
    assert metrics["feature_norm_mean"] == pytest.approx(1.5, abs=0.1)
    assert all(isinstance(v, float) for v in metrics.values())
    files = sorted(os.listdir(tmp_path / "eval"))
    assert files == ["angles_step3.png", "features_2d_step3.png", "roc_step3.npz", "roc_step3.png"]


@needs_devices(8)
def test_evaluate_run_with_weights_3d_and_a_mesh(tmp_path):
    rng = np.random.default_rng(12)
    test_labels = rng.integers(4, size=120)
    open_labels = rng.integers(3, size=90)
    centers = _unit(rng.normal(size=(7, 3)))

    def images(labels, class_centers):
        features = class_centers[labels] + 0.3 * rng.normal(size=(len(labels), 3))
        return features.reshape(-1, 1, 3, 1).astype(np.float32)

    test_images, open_images = images(test_labels, centers[:4]), images(open_labels, centers[4:])
    weights = centers[:4].T + 0.2 * rng.normal(size=(3, 4))
    embed_fn = lambda x: x.reshape(len(x), 3)
    run = functools.partial(
        evaluation.evaluate_run,
        embed_fn,
        test_images=test_images,
        test_labels=test_labels,
        open_images=open_images,
        open_labels=open_labels,
        weights=weights,
        num_pairs=200,
        batch_size=16,
    )
    metrics = run(workdir=str(tmp_path))
    sharded = run(mesh=jax.make_mesh((8,), ("data",)), plot=False)
    assert metrics.keys() == sharded.keys()
    # The same float32 embeddings; the sharded run sums over the 120 rows in another
    # order: n·u ≈ 120 · 6e-8 ≈ 7e-6 of the O(1) metrics (angles, norms, rates).
    for key in metrics:
        assert metrics[key] == pytest.approx(sharded[key], rel=1e-5, abs=1e-5), key
    # The identity embedding is exact, so these are the same features through the same
    # float64 functions: equal to a few u; pytest.approx's default rel 1e-6.
    features = test_images.reshape(-1, 3)
    expected_accuracy = np.mean(np.argmax(features @ weights, axis=1) == test_labels)
    assert metrics["closed_set_accuracy"] == pytest.approx(expected_accuracy)
    assert metrics["l_intra_w"] == pytest.approx(
        evaluation.intra_angle(features, weights, test_labels)
    )
    assert metrics["l_inter_w"] == pytest.approx(evaluation.inter_angle(weights))
    assert sorted(os.listdir(tmp_path / "eval")) == [
        "angles.png",
        "features_3d.png",
        "roc.npz",
        "roc.png",
    ]


def test_closed_set_accuracy_by_leave_one_out_centers():
    rng = np.random.default_rng(13)
    labels = np.arange(60) % 3
    embeddings = _unit(rng.normal(size=(3, 4))[labels] + 0.9 * rng.normal(size=(60, 4)))
    correct = 0
    for i in range(60):
        others = np.arange(60) != i
        centers = [_unit(embeddings[others & (labels == c)].mean(axis=0)) for c in range(3)]
        correct += np.argmax([embeddings[i] @ c for c in centers]) == labels[i]
    # A fraction of counted decisions: exact up to its rounding, approx's default.
    assert evaluation.closed_set_accuracy(embeddings, labels) == pytest.approx(correct / 60)
    assert 0.5 < correct / 60 < 1.0  # Neither trivial nor random.
