"""Tests of the grain pipelines: determinism, resumption, sharding, padding, augmentation."""

import time

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from faceloss_jax import data
from faceloss_jax.data import images as images_lib
from faceloss_jax.data import pipeline


def _tagged_source(n, size=6):
    """Records whose image and label both carry the example's id."""
    return [{"image": np.full((size, size, 1), i, np.uint8), "label": i} for i in range(n)]


def _config(**fields):
    config = data.default_config("synthetic")
    config.normalization = "unit"
    config.augment.flip = False
    for key, value in fields.items():
        setattr(config, key, value)
    return config


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_train_batches_shapes_dtypes_and_normalization():
    config = _config(normalization="symmetric")
    source = data.SyntheticFaces(identities=range(5), samples=range(4), image_size=20)
    batch = next(
        data.create_iterator(
            source,
            config,
            global_batch_size=8,
            seed=0,
            train=True,
            process_index=0,
            process_count=1,
        )
    )
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (8, 20, 20, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and set(batch["label"]) <= set(range(5))
    assert -1 < batch["image"].min() < -0.5 and 0.5 < batch["image"].max() < 1


def test_same_seed_same_batches_other_seed_other_batches():
    source = _tagged_source(40)
    config = _config(augment={"flip": True, "crop_padding": 2})
    make = lambda seed: data.create_iterator(
        source, config, global_batch_size=8, seed=seed, train=True, process_index=0, process_count=1
    )
    first = _take(make(3), 7)  # crosses an epoch boundary
    _assert_same_batches(first, _take(make(3), 7))
    assert not np.array_equal(first[0]["label"], next(make(4))["label"])


def test_restored_iterator_continues_with_the_same_batches():
    source = _tagged_source(30)
    config = _config(augment={"flip": True, "crop_padding": 1})
    make = lambda: data.create_iterator(
        source, config, global_batch_size=4, seed=1, train=True, process_index=0, process_count=1
    )
    iterator = make()
    _take(iterator, 5)
    state = iterator.get_state()
    expected = _take(iterator, 9)
    restored = make()
    restored.set_state(state)
    _assert_same_batches(expected, _take(restored, 9))


def test_iterator_state_saved_with_orbax(tmp_path):
    source = _tagged_source(20)
    config = _config()
    make = lambda: data.create_iterator(
        source, config, global_batch_size=4, seed=0, train=True, process_index=0, process_count=1
    )
    handlers = {"data": grain.checkpoint.CheckpointHandler()}
    iterator = make()
    _take(iterator, 3)
    with ocp.CheckpointManager(tmp_path, item_names=("data",), item_handlers=handlers) as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = _take(iterator, 4)
    restored = make()
    with ocp.CheckpointManager(tmp_path, item_names=("data",), item_handlers=handlers) as manager:
        manager.restore(
            3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored))
        )
    _assert_same_batches(expected, _take(restored, 4))


def test_two_processes_see_every_example_once_per_epoch():
    n, global_batch = 24, 8
    source = _tagged_source(n)
    config = _config()
    per_process = [
        list(
            data.create_iterator(
                source,
                config,
                global_batch_size=global_batch,
                seed=5,
                train=True,
                num_epochs=2,
                process_index=p,
                process_count=2,
            )
        )
        for p in range(2)
    ]
    steps_per_epoch = n // global_batch
    assert [len(batches) for batches in per_process] == [2 * steps_per_epoch] * 2
    epochs = []
    for epoch in range(2):
        window = slice(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        seen = np.concatenate([b["label"] for batches in per_process for b in batches[window]])
        assert sorted(seen) == list(range(n))
        epochs.append(seen)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
    for batches in per_process:
        assert batches[0]["label"].shape == (global_batch // 2,)
        np.testing.assert_array_equal(batches[0]["image"][:, 0, 0, 0] * 255, batches[0]["label"])


@pytest.mark.parametrize("train", [True, False])
def test_any_process_count_gives_the_same_global_batches(train):
    """Process p's batch is the contiguous block p of the single-process batch, augmented
    alike, so device i of a P-process mesh sees the same examples for every P."""
    source = data.SyntheticFaces(identities=range(5), samples=range(5), image_size=8)
    config = _config(augment={"flip": True, "crop_padding": 2})
    make = lambda p, count: data.create_iterator(
        source,
        config,
        global_batch_size=8,
        seed=3,
        train=train,
        num_epochs=2 if train else 1,
        process_index=p,
        process_count=count,
    )
    single = list(make(0, 1))  # 25 examples: global batches span the epochs
    for count in (2, 4):
        blocks = [list(make(p, count)) for p in range(count)]
        assert [len(b) for b in blocks] == [len(single)] * count
        for t, expected in enumerate(single):
            for key in expected:
                joined = np.concatenate([blocks[p][t][key] for p in range(count)])
                np.testing.assert_array_equal(joined, expected[key], err_msg=f"{key} {t}")


def test_augment_rows_draw_for_the_whole_batch():
    images = np.random.default_rng(0).integers(0, 256, (6, 5, 5, 1), np.uint8)
    full = data.augment(images, np.random.default_rng(1), flip=True, crop_padding=1)
    part = data.augment(
        images[2:4],
        np.random.default_rng(1),
        flip=True,
        crop_padding=1,
        rows=slice(2, 4),
        num_rows=6,
    )
    np.testing.assert_array_equal(part, full[2:4])
    with pytest.raises(ValueError, match="are not the 3 images"):
        data.augment(
            images[:3],
            np.random.default_rng(1),
            flip=True,
            crop_padding=1,
            rows=slice(2, 4),
            num_rows=6,
        )


def test_uneven_source_gives_processes_equal_batch_counts():
    source = _tagged_source(13)
    counts = [
        len(
            list(
                data.create_iterator(
                    source,
                    _config(),
                    global_batch_size=3,
                    seed=0,
                    train=True,
                    num_epochs=1,
                    process_index=p,
                    process_count=3,
                )
            )
        )
        for p in range(3)
    ]
    assert counts == [4, 4, 4]  # 13 // 3 = 4 examples each, one left out this epoch


def test_eval_pads_the_last_batch_with_a_mask():
    n = 11
    source = _tagged_source(n)
    config = _config(augment={"flip": True, "crop_padding": 3})  # ignored in evaluation
    per_process = [
        list(
            data.create_iterator(
                source,
                config,
                global_batch_size=4,
                seed=0,
                train=False,
                process_index=p,
                process_count=2,
            )
        )
        for p in range(2)
    ]
    assert [len(batches) for batches in per_process] == [3, 3]
    batches = [b for batches in per_process for b in batches]
    assert all(b["image"].shape == (2, 6, 6, 1) and b["mask"].dtype == bool for b in batches)
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    assert sorted(labels) == list(range(n))
    padded = np.concatenate([b["image"][~b["mask"]] for b in batches])
    assert len(padded) == 1 and not padded.any()
    for b in batches:  # evaluation images are not augmented
        np.testing.assert_array_equal(b["image"][b["mask"], 0, 0, 0] * 255, b["label"][b["mask"]])
    single = list(
        data.create_iterator(
            source,
            config,
            global_batch_size=4,
            seed=0,
            train=False,
            process_index=0,
            process_count=1,
        )
    )
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in single])[:n], range(n))


def test_augment_crop_is_a_shift_and_flip_a_mirror():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (16, 5, 7, 2), np.uint8)
    p = 2
    cropped = data.augment(images, np.random.default_rng(1), flip=False, crop_padding=p)
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    shifts = set()
    for image, crop, pad in zip(images, cropped, padded):
        matches = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if np.array_equal(pad[dy : dy + 5, dx : dx + 7], crop)
        ]
        assert matches
        shifts.add(matches[0])
    assert len(shifts) > 4
    flipped = data.augment(images, np.random.default_rng(1), flip=True, crop_padding=0)
    mirrored = [np.array_equal(f, x[:, ::-1]) for f, x in zip(flipped, images)]
    kept = [np.array_equal(f, x) for f, x in zip(flipped, images)]
    assert all(m != k for m, k in zip(mirrored, kept)) and 0 < sum(mirrored) < 16
    np.testing.assert_array_equal(
        data.augment(images, np.random.default_rng(1), flip=False, crop_padding=0), images
    )


@pytest.mark.parametrize("crop_padding", [0, 3])
def test_augment_gives_the_whole_image_mirror_of_its_draws(crop_padding):
    """Flips are copied channel by channel (fast): the same pixels as mirroring whole
    RGB images after the crop, with the generator's draws in the same order."""
    images = np.random.default_rng(0).integers(0, 256, (12, 9, 7, 3), np.uint8)
    original = images.copy()
    out = data.augment(images, np.random.default_rng(5), flip=True, crop_padding=crop_padding)
    rng = np.random.default_rng(5)
    expected = np.pad(images, ((0, 0),) + ((crop_padding, crop_padding),) * 2 + ((0, 0),))
    if crop_padding:
        top, left = rng.integers(0, 2 * crop_padding + 1, size=(2, 12))
        expected = np.stack([e[t : t + 9, l : l + 7] for e, t, l in zip(expected, top, left)])
    flipped = rng.random(12) < 0.5
    expected = np.where(flipped[:, None, None, None], expected[:, :, ::-1], expected)
    assert 0 < flipped.sum() < 12
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(images, original)  # the caller's array is left as it was


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("crop_padding", [0, 2])
def test_reading_a_block_flips_as_augmenting_the_read_block_does(flip, crop_padding):
    """Without a crop, flips are made as the images are copied into the batch: the same
    batch as stacking the block and augmenting it."""
    pictures = np.random.default_rng(0).integers(0, 256, (12, 5, 7, 3), np.uint8)
    source = [{"image": p, "label": i} for i, p in enumerate(pictures)]
    indices, block = np.arange(12)[::-1], slice(4, 10)
    read = pipeline._read_and_augment(
        source, indices, np.random.default_rng(7), block=block, flip=flip, crop_padding=crop_padding
    )
    stacked = pipeline._read(source, indices[block])
    expected = data.augment(
        stacked["image"],
        np.random.default_rng(7),
        flip=flip,
        crop_padding=crop_padding,
        rows=block,
        num_rows=12,
    )
    np.testing.assert_array_equal(read["image"], expected)
    np.testing.assert_array_equal(read["label"], indices[block])
    assert read["image"].flags.c_contiguous


def test_read_ahead_is_counted_in_records_rounded_up_to_batches():
    """grain counts its buffer in batches: the config's records are converted, so a
    training host holds a few batches ahead, not ``prefetch_buffer_size`` of them."""
    config = _config(read_threads=4, prefetch_buffer_size=256)
    assert pipeline.read_options(config, 1024).prefetch_buffer_size == 4  # one per thread
    assert pipeline.read_options(config, 16).prefetch_buffer_size == 16
    config.read_threads = 1
    assert pipeline.read_options(config, 100).prefetch_buffer_size == 3
    reads = []

    class Counted(list):
        def __getitem__(self, index):
            reads.append(index)
            return super().__getitem__(index)

    config.prefetch_buffer_size = 8  # two batches of 4 ahead
    iterator = data.create_iterator(
        Counted(_tagged_source(200)), config, global_batch_size=4, seed=0, train=True
    )
    next(iterator)
    time.sleep(0.3)  # time enough to fill a far larger buffer
    assert 4 <= len(reads) <= 3 * 4
    iterator.close()


def test_normalize_ranges():
    pixels = np.array([0, 255], np.uint8)
    # Exact: 0/255 and 255/255 are, and x − 127.5 and its division by 128 are exact in
    # float32 (IEEE division is correctly rounded).
    np.testing.assert_array_equal(data.normalize(pixels, "unit"), [0.0, 1.0])
    np.testing.assert_array_equal(data.normalize(pixels, "symmetric"), [-127.5 / 128, 127.5 / 128])
    with pytest.raises(ValueError, match="unknown normalization 'imagenet'"):
        data.normalize(pixels, "imagenet")


def test_reshape_for_pmap_and_argument_errors():
    batch = {"image": np.zeros((8, 2, 2, 1)), "label": np.arange(8)}
    assert data.reshape_for_pmap(batch, 4)["label"].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="over 3 devices"):
        data.reshape_for_pmap(batch, 3)
    source, config = _tagged_source(8), _config()
    for problem, options in [
        ("multiple of process_count 3", dict(process_index=0, process_count=3)),
        ("process_index 2 not in", dict(process_index=2, process_count=2)),
        ("one pass", dict(train=False, num_epochs=2, process_index=0, process_count=1)),
    ]:
        with pytest.raises(ValueError, match=problem):
            data.create_iterator(
                source, config, global_batch_size=4, seed=0, **{"train": True, **options}
            )


def test_bad_records_fail_with_the_file_name(tmp_path):
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "a.jpg").write_bytes(b"\xff\xd8\xff truncated")
    source = data.ImageFolderSource(tmp_path, validate=False, on_error="raise")
    iterator = data.create_iterator(
        source, _config(), global_batch_size=1, seed=0, train=True, process_index=0, process_count=1
    )
    with pytest.raises(data.CorruptImageError, match="a.jpg"):
        next(iterator)
    mixed = [
        {"image": np.zeros((4, 4, 1), np.uint8), "label": 0},
        {"image": np.zeros((5, 4, 1), np.uint8), "label": 1},
    ]
    iterator = data.create_iterator(
        mixed, _config(), global_batch_size=2, seed=0, train=False, process_index=0, process_count=1
    )
    with pytest.raises(ValueError, match="images of one shape"):
        next(iterator)


def test_worker_processes_give_the_same_batches_and_errors(tmp_path):
    pictures = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), np.uint8)
    for i, (who, name) in enumerate([("ann", "0.png"), ("ann", "1.png"), ("bob", "0.png")]):
        (tmp_path / who).mkdir(exist_ok=True)
        encoded = images_lib.encode_image(pictures[i], image_format="PNG")
        (tmp_path / who / name).write_bytes(encoded)
    (tmp_path / "bob" / "1.jpg").write_bytes(b"\xff\xd8\xff cut short")
    source = data.ImageFolderSource(tmp_path, image_size=8, validate=False, on_error="raise")
    make = lambda workers: data.create_iterator(
        source,
        _config(worker_count=workers),
        global_batch_size=1,
        seed=2,
        train=False,
        process_index=0,
        process_count=1,
    )
    iterator = make(1)
    try:
        _assert_same_batches(_take(make(0), 3), _take(iterator, 3))
        with pytest.raises(data.CorruptImageError, match="bob/1.jpg"):
            next(iterator)  # raised in the worker process, re-raised here
    finally:
        iterator.close()
