"""Tests of the P×K sampler (data.sampling) and offline triplet mining (losses.mining)."""

import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from faceloss_jax import data
from faceloss_jax.data import recordio, sampling
from faceloss_jax.errors import ConfigError
from faceloss_jax.losses import mining
from faceloss_jax.train_lib import objectives


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


# -- Offline mining -------------------------------------------------------------------


def _brute_force_selection(x, y, margin, rule):
    """FaceNet's selection by loops: for each pair (a, p) the negative of the rule."""
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    n = len(y)
    negative, selected = np.zeros((n, n), int), np.zeros((n, n), bool)
    for a in range(n):
        for p in range(n):
            if a == p or y[a] != y[p]:
                continue
            negatives = [j for j in range(n) if y[j] != y[a]]
            if rule == "semi_hard":
                negatives = [j for j in negatives if d[a, p] < d[a, j] < d[a, p] + margin]
            if not negatives:
                continue
            j = min(negatives, key=lambda j: (d[a, j], j))
            negative[a, p] = j
            selected[a, p] = rule == "semi_hard" or d[a, p] - d[a, j] + margin > 0
    return negative, selected


@pytest.mark.parametrize("rule", mining.RULES)
def test_offline_selection_equals_the_brute_force_reference(rule):
    # Hand-made: identity 0 with a semi-hard (id 1, first point) and a hard negative
    # (id 1, second point); identity 2 far away (easy).
    hand = np.array(
        [[0.0, 0.0], [0.3, 0.0], [0.35, 0.1], [0.1, 0.05], [3.0, 3.0], [3.0, 3.2]], np.float32
    )
    labels = np.array([0, 0, 1, 1, 2, 2])
    rng = np.random.default_rng(0)
    sets = [(hand, labels, 0.2)]
    sets += [
        (rng.normal(size=(12, 3)).astype(np.float32), rng.integers(0, 4, 12), 0.5) for _ in range(5)
    ]
    for x, y, margin in sets:
        negative, selected = mining.select_triplets(x, y, margin=margin, rule=rule)
        ref_negative, ref_selected = _brute_force_selection(x, y, margin, rule)
        np.testing.assert_array_equal(np.asarray(selected), ref_selected)
        np.testing.assert_array_equal(
            *(np.where(ref_selected, n, 0) for n in (negative, ref_negative))
        )
    selected = mining.select_triplets(hand, labels, margin=0.2, rule=rule)[1]
    expected = {"semi_hard": [(0, 1), (2, 3)], "hard": [(0, 1), (1, 0), (2, 3), (3, 2)]}[rule]
    assert [tuple(a) for a in np.argwhere(np.asarray(selected))] == expected


def _offline_config(every_steps=3, subset_size=8):
    return default.loss_config(
        "triplet", mining="offline", every_steps=every_steps, subset_size=subset_size
    )


def _offline_steps(config, loss_state, steps, labels):
    """compute_loss at ``steps`` on embeddings drawn from the step; (losses, states)."""
    losses_, states = [], []
    for step in steps:
        x = np.random.default_rng(step).normal(size=(len(labels), 4)).astype(np.float32)
        loss, loss_state = objectives.compute_loss(config, {}, loss_state, x, labels, step=step)
        losses_.append(float(loss))
        states.append(loss_state)
    return losses_, states


@pytest.mark.slow  # 10-20 s of a loaded 2-core run (--durations, 2026-12-05)
def test_offline_refresh_every_steps_and_resume_re_creates_the_selection(tmp_path):
    config = _offline_config()
    labels = np.repeat(np.arange(4), 2)
    _, state = objectives.init_head(config, None, embedding_dim=4, num_classes=4)
    losses_, states = _offline_steps(config, state, range(8), labels)
    for step, loss_state in enumerate(states):
        refresh = 3 * (step // 3)  # the selection of the last refresh step
        x = np.random.default_rng(refresh).normal(size=(8, 4)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        _, expected = _brute_force_selection(x, labels, config.margin, "semi_hard")
        np.testing.assert_array_equal(np.asarray(loss_state["selected"]), expected)
    assert int(states[-1]["steps"]) == 8
    # Resume after step 4 from a checkpoint of the state: the same selection and losses.
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", states[4])
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "ckpt", states[4])
    resumed_losses, resumed = _offline_steps(config, restored, range(5, 8), labels)
    assert resumed_losses == losses_[5:]
    for a, b in zip(resumed, states[5:]):
        np.testing.assert_array_equal(a["selected"], b["selected"])
        np.testing.assert_array_equal(a["negative"], b["negative"])


def test_offline_config_errors_and_held_batches():
    assert objectives.held_batches(default.loss_config("triplet")) == 1
    assert objectives.held_batches(_offline_config(5, 64)) == 5
    with pytest.raises(ConfigError, match="subset_size = 8 must equal the global batch size 64"):
        objectives.check_loss_config(_offline_config(), batch_size=64)
    with pytest.raises(ConfigError, match="subset_size = 0 must equal .*config.batch_size"):
        objectives.check_loss_config(_offline_config(subset_size=0))
    _, state = objectives.init_head(_offline_config(), None, embedding_dim=4, num_classes=4)
    with pytest.raises(ConfigError, match="must equal the global batch size 6"):
        objectives.compute_loss(_offline_config(), {}, state, np.ones((6, 4)), np.arange(6), step=0)


@pytest.mark.slow
def test_triplet_run_on_many_identities_has_active_triplets_only_with_pk_batches():
    from experiments import pxk_mining

    recipe = {
        "batch_size": 16,  # P×K: 4 identities × 4 images
        "dataset.num_identities": 300,
        "dataset.images_per_identity": 4,
        "dataset.held_out_identities": 8,
        "dataset.test_images_per_identity": 2,
        "dataset.image_size": 12,
        "optimizer.warmup_steps": 0,
    }
    uniform, pk = (
        pxk_mining.run(setting, 0, steps=6, recipe=recipe)["log"]
        for setting in pxk_mining.SETTINGS[:2]  # triplet batch_all: uniform, P×K
    )
    assert all(s["active_triplets"] > 0 and s["anchors_with_positive"] == 1 for s in pk)
    # 16 of 300 identities: most uniform batches hold no two images of one identity.
    assert sum(s["valid_triplets"] == 0 for s in uniform) >= 3
    assert np.mean([s["anchors_with_positive"] for s in uniform]) < 0.2
