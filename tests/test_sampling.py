"""Tests of the P×K sampler (data.sampling) and offline triplet mining (losses.mining)."""

import numpy as np
import pytest

from faceloss_jax import data
from faceloss_jax.data import recordio, sampling
from faceloss_jax.train_lib.hyperparameters import ConfigError


class _Tagged:
    """Records whose image carries the example id and label its identity; identity c
    has ``sizes[c]`` records."""

    def __init__(self, sizes, size=4):
        self.labels = np.repeat(np.arange(len(sizes)), sizes)
        self._size = size

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {
            "image": np.full((self._size, self._size, 1), i % 256, np.uint8),
            "label": int(self.labels[i]),
        }

    def identity_index(self):
        return sampling.identity_index_from_labels(self.labels)


def _config(p=0, k=0):
    config = data.default_config("synthetic")
    config.normalization = "unit"
    config.augment.flip = False
    config.identities_per_batch, config.samples_per_identity = p, k
    return config


def _iterator(source, config, batch, *, seed=0, index=0, count=1, **kwargs):
    return data.create_iterator(
        source,
        config,
        global_batch_size=batch,
        seed=seed,
        train=True,
        process_index=index,
        process_count=count,
        **kwargs,
    )


def _labels(iterator, n):
    return [next(iterator)["label"] for _ in range(n)]


def test_every_batch_is_p_identities_times_k_images():
    source = data.SyntheticFaces(identities=range(50), samples=range(6), image_size=8)
    for p, k in ((8, 4), (3, 6), (16, 2)):
        for labels in _labels(_iterator(source, _config(p, k), p * k), 5):
            blocks = labels.reshape(p, k)
            assert (blocks == blocks[:, :1]).all()  # identity-major rows
            assert len(set(blocks[:, 0])) == p  # P distinct identities
    # Only K given: P = batch_size / K (the face configs).
    labels = next(_iterator(source, _config(0, 4), 24))["label"]
    assert len(set(labels)) == 6


def test_batches_have_distinct_images_and_small_identities_give_all_plus_replacement():
    sizes = [10, 2, 1, 7, 3, 9]  # identities 1, 2, 4 have fewer than K = 4 images
    source = _Tagged(sizes)
    index = source.identity_index()
    for t in range(40):
        rows = sampling.pk_batch_indices(index, 3, 4, seed=5, batch=t).reshape(3, 4)
        for block in rows:
            c = source.labels[block[0]]
            assert set(source.labels[block]) == {c}
            if sizes[c] >= 4:  # without replacement
                assert len(set(block)) == 4
            else:  # all of its images, the rest repeats of them
                assert set(block) == set(index[c].tolist())


def test_reproducible_from_the_seed_and_a_restored_state():
    source = _Tagged([5] * 30)
    config = _config(4, 3)
    first = _labels(_iterator(source, config, 12, seed=1), 6)
    again = _labels(_iterator(source, config, 12, seed=1), 6)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[0], next(_iterator(source, config, 12, seed=2))["label"])
    iterator = _iterator(source, config, 12, seed=1)
    _labels(iterator, 3)
    state = iterator.get_state()
    restored = _iterator(source, config, 12, seed=1)
    restored.set_state(state)
    batches = [next(iterator) for _ in range(3)]
    for expected in batches:
        got = next(restored)
        for key in ("image", "label"):
            np.testing.assert_array_equal(got[key], expected[key])


def test_two_processes_together_give_the_single_process_batch():
    source = _Tagged([4] * 40)
    config = _config(6, 4)
    config.augment.flip = True
    it = _iterator(source, config, 24, seed=3)
    single = [next(it) for _ in range(4)]
    parts = [_iterator(source, config, 24, seed=3, index=i, count=2) for i in range(2)]
    for whole in single:
        halves = [next(part) for part in parts]
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_repeat_batches_holds_each_draw():
    source = _Tagged([5] * 20)
    for config in (_config(4, 2), _config()):
        labels = _labels(_iterator(source, config, 8, repeat_batches=3), 7)
        for t in range(7):
            np.testing.assert_array_equal(labels[t], labels[3 * (t // 3)])
        assert not np.array_equal(labels[0], labels[3])


def test_bad_p_k_settings_are_config_errors():
    source = _Tagged([5] * 20)
    with pytest.raises(ConfigError, match="must equal identities_per_batch × samples_per_identity"):
        _iterator(source, _config(4, 3), 16)
    with pytest.raises(ConfigError, match="not a multiple of samples_per_identity"):
        _iterator(source, _config(0, 3), 16)
    with pytest.raises(ConfigError, match="only 20 identities"):
        _iterator(source, _config(32, 2), 64)
    with pytest.raises(ConfigError, match="has no identity index"):
        _iterator([{"image": np.zeros((2, 2, 1), np.uint8), "label": 0}] * 8, _config(2, 2), 4)


def test_identity_index_of_every_source(tmp_path):
    from PIL import Image

    # image_folder: from the listing.
    for c, n in enumerate([3, 1, 2]):
        folder = tmp_path / "folder" / f"id{c}"
        folder.mkdir(parents=True)
        for j in range(n):
            Image.fromarray(np.full((8, 8, 3), 10 * c + j, np.uint8)).save(folder / f"{j}.png")
    folder_source = data.ImageFolderSource(tmp_path / "folder", image_size=8)
    index = data.SOURCES["image_folder"].identity_index(folder_source)
    assert [i.tolist() for i in index] == [[0, 1, 2], [3], [4, 5]]
    # recordio: from the header's identity records (image records are never read).
    labels = [1, 0, 2, 0, 1, 1]
    data.write_insightface_recordio(tmp_path / "rec", [b"x%d" % i for i in range(6)], labels)
    rec = data.RecordIOSource(tmp_path / "rec")
    read, keys = rec._rec.read_idx, []
    rec._rec.read_idx = lambda key: keys.append(key) or read(key)
    index = data.SOURCES["recordio"].identity_index(rec)
    assert [len(i) for i in index] == [2, 3, 1]
    assert all(key == 0 or key > len(labels) for key in keys)  # no image record read
    for c, members in enumerate(index):
        for i in members:  # source index i is key i + 1
            header, _ = recordio.unpack(read(int(i) + 1))
            assert int(header.label) == c
    # synthetic: index arithmetic, equal to the labels' grouping.
    synthetic = data.SyntheticFaces(identities=range(3, 7), samples=range(2), image_size=8)
    index = data.SOURCES["synthetic"].identity_index(synthetic)
    assert [synthetic[int(i)]["label"] for i in index[2]] == [5, 5]


def test_mnist_identity_index_groups_the_labels():
    config = data.default_config("mnist")
    source = data.create_source(config, "train")
    index = data.SOURCES["mnist"].identity_index(source)
    assert [len(i) for i in index] == [400] * 7
    assert {source[int(i)]["label"] for i in index[3][:5]} == {3}
