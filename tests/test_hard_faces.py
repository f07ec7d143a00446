"""The hard synthetic face benchmark (``data.hard_faces``): determinism, the identities'
minimum distance, the pair sets, clean images at zero nuisance, the InsightFace folder."""

import dataclasses

import numpy as np
import pytest

from faceloss_jax import data
from faceloss_jax.data import hard_faces

# 40 training identities, 3 folds of 4 held-out ones, 48 pairs per set: a few seconds.
TINY = hard_faces.HardFacesConfig(
    num_identities=40,
    held_out_identities=12,
    num_pairs=48,
    n_folds=3,
    min_images=2,
    max_images=6,
    image_size=12,
)
NO_NUISANCE = dict(
    pose=0.0, illumination=0.0, occlusion=0.0, blur=0.0, noise=0.0, ageing=0.0, expression=0.0
)


def test_deterministic_from_the_seed():
    images, labels = hard_faces.training_set(TINY)
    again, labels_again = hard_faces.training_set(TINY)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    other, _ = hard_faces.training_set(dataclasses.replace(TINY, seed=1))
    assert other.shape != images.shape or np.any(other != images)


def test_identities_keep_the_minimum_distance():
    config = dataclasses.replace(TINY, num_identities=200, latent_dim=4, min_distance=1.2)
    latents = hard_faces.identity_latents(config)
    assert latents.shape == (212, 4)
    distances = np.linalg.norm(latents[:, None] - latents[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    # Packed densely enough that the constraint binds: the closest pair is near the bound.
    assert 1.2 <= distances.min() < 1.3
    with pytest.raises(ValueError, match="min_distance=10.0 is too large"):
        hard_faces.identity_latents(dataclasses.replace(config, min_distance=10.0))


def test_long_tail_of_images_per_identity():
    config = dataclasses.replace(TINY, num_identities=2000, min_images=4, max_images=60)
    counts = hard_faces.images_per_identity(config)
    assert counts.min() == 4 and counts.max() == 60
    assert np.median(counts) < counts.mean() < 2 * np.median(counts)  # skewed right


@pytest.mark.parametrize("name", list(hard_faces.PAIR_SETS))
def test_pair_sets_balanced_per_fold_with_held_out_identities_only(name):
    _, identities, conditions = hard_faces.held_out_pool(TINY)
    assert identities.min() == TINY.num_identities  # never a training identity
    first, second = hard_faces.PAIR_SETS[name]
    pairs, issame = hard_faces.make_pair_set(
        TINY, identities, conditions, first=first, second=second, set_index=0
    )
    assert pairs.shape == (48, 2) and len({tuple(p) for p in pairs}) == 48
    pair_ids = identities[pairs]
    np.testing.assert_array_equal(issame, pair_ids[:, 0] == pair_ids[:, 1])
    folds = np.array_split(np.arange(48), 3)
    fold_ids = [set(pair_ids[fold].ravel()) for fold in folds]
    for fold, ids in zip(folds, fold_ids):
        assert issame[fold].sum() == len(fold) // 2
        assert len(ids) <= 4
    assert not (fold_ids[0] & fold_ids[1] or fold_ids[1] & fold_ids[2] or fold_ids[0] & fold_ids[2])
    if first != "any":
        conditions = np.asarray(conditions)
        assert set(conditions[pairs[:, 0]]) == {first} and set(conditions[pairs[:, 1]]) == {second}


def test_nuisance_off_gives_clean_identical_images():
    clean = dataclasses.replace(TINY, **NO_NUISANCE)
    images, labels = hard_faces.training_set(clean)
    for identity in range(3):
        faces = images[labels == identity]
        assert len(faces) >= 2 and np.all(faces == faces[0])
    assert np.any(images[labels == 0][0] != images[labels == 1][0])  # identities differ
    for knob in NO_NUISANCE:
        noisy, _ = hard_faces.training_set(dataclasses.replace(clean, **{knob: 1.0}))
        assert np.any(noisy != images), knob  # each knob alone changes the images


def test_writes_an_insightface_folder(tmp_path):
    folder = hard_faces.write_hard_faces_folder(tmp_path / "hard", TINY)
    images, labels = hard_faces.training_set(TINY)
    train = data.RecordIOSource(folder, image_size=None)
    assert len(train) == len(labels) and train.num_classes == TINY.num_identities
    assert train[len(train) - 1]["label"] == labels[-1]
    for name in hard_faces.PAIR_SETS:
        pairs = data.read_verification_bin(folder / f"{name}.bin", image_size=None)
        assert pairs.images.shape == (96, 12, 12, 3) and pairs.issame.sum() == 24
    assert (folder / "hard_faces.json").exists()
