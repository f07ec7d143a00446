"""Data faults a long run must survive or refuse (issue 22): bad records are replaced
deterministically, named and counted; strict decoding; test labels by identity name;
``.bin`` files that cannot be meant are refused without allocating."""

import io
import logging
import pickle
import struct
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from faceloss_jax import data
from faceloss_jax.data import images, recordio
from faceloss_jax.errors import DataError
from faceloss_jax.evaluation import closed_set_accuracy

SIZE = 8


def _pictures(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), np.uint8)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


# --- bad records in train.rec -------------------------------------------------------

BAD = 3  # source index of the corrupt record (key 4)
LABELS = [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.fixture
def rec_with_a_corrupt_jpeg(tmp_path):
    encoded = [images.encode_image(p) for p in _pictures(len(LABELS))]
    encoded[BAD] = encoded[BAD][: len(encoded[BAD]) // 2]  # cut short
    recordio.write_insightface_recordio(tmp_path, encoded, LABELS)
    return tmp_path


def _rec_config(directory, on_error):
    config = data.default_config("recordio")
    config.path, config.image_size, config.on_error = str(directory), SIZE, on_error
    config.augment.flip = False
    return config


def _iterator(config, num_epochs=2):
    return data.create_iterator(
        data.create_source(config, "train"),
        config,
        global_batch_size=4,
        seed=0,
        train=True,
        num_epochs=num_epochs,
        process_index=0,
        process_count=1,
    )


def test_recordio_default_on_error_is_raise():
    assert data.default_config("recordio").on_error == "raise"


def test_a_corrupt_record_is_replaced_named_counted_and_resumes_exactly(
    rec_with_a_corrupt_jpeg, caplog
):
    config = _rec_config(rec_with_a_corrupt_jpeg, "skip")
    source = data.create_source(config, "train")
    assert [bool(source[i]["replaced"]) for i in range(len(source))] == [
        i == BAD for i in range(len(source))
    ]
    with caplog.at_level(logging.WARNING):
        batches = _take(_iterator(config), 4)  # two epochs of 8 records
    offset = source._rec.offset(BAD + 1)
    assert f"train.rec record {BAD + 1} (byte {offset})" in caplog.text
    # The bad record appears once per epoch, flagged, as its successor's example.
    replacement = source[BAD + 1]
    flagged = [(b, i) for b in batches for i in np.flatnonzero(b["replaced"])]
    assert all(b["replaced"].dtype == np.uint8 and b["replaced"].shape == (4,) for b in batches)
    assert len(flagged) == 2
    for batch, row in flagged:
        assert batch["label"][row] == replacement["label"]
        np.testing.assert_array_equal(
            batch["image"][row], data.normalize(replacement["image"], config.normalization)
        )
    # A run resumed from the iterator state reads the same batches, flags included.
    first = _iterator(config)
    next(first)
    state = first.get_state()
    resumed = _iterator(config)
    resumed.set_state(state)
    for want, got in zip(_take(first, 3), _take(resumed, 3)):
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])


def test_a_corrupt_record_stops_the_run_with_on_error_raise(rec_with_a_corrupt_jpeg):
    iterator = _iterator(_rec_config(rec_with_a_corrupt_jpeg, "raise"))
    with pytest.raises(DataError, match=rf"train\.rec record {BAD + 1} \(byte \d+\)"):
        _take(iterator, 4)


def test_recordio_faults_are_data_errors_naming_file_and_record(rec_with_a_corrupt_jpeg):
    directory = rec_with_a_corrupt_jpeg
    rec = directory / "train.rec"
    content = rec.read_bytes()
    # A record length beyond the file (a flipped high bit) is refused before reading.
    offset = data.RecordIOSource(directory)._rec.offset(2)
    (length,) = struct.unpack_from("<I", content, offset + 4)
    rec.write_bytes(
        content[: offset + 4] + struct.pack("<I", length | 1 << 28) + content[offset + 8 :]
    )
    source = data.RecordIOSource(directory)
    tracemalloc.start()
    try:
        with pytest.raises(recordio.RecordIOError, match=r"train\.rec is truncated: record 2"):
            source[1]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10**6  # the 256 MiB the length claims were never allocated
    rec.write_bytes(content)
    (directory / "property").write_bytes(b"\xff\xfe 4,8,8")
    with pytest.raises(recordio.RecordIOError, match=r"property: expected .*not UTF-8"):
        data.RecordIOSource(directory)
    (directory / "property").unlink()
    with pytest.raises(images.CorruptImageError, match=rf"train\.rec record {BAD + 1} "):
        data.RecordIOSource(directory)[BAD]


@pytest.mark.parametrize("label", [1.5, float("nan"), float("inf"), -1.0, 4.0])
def test_a_record_label_that_is_no_class_id_is_refused_naming_the_record(tmp_path, label):
    encoded = [images.encode_image(p) for p in _pictures(len(LABELS))]
    recordio.write_insightface_recordio(tmp_path, encoded, LABELS)
    rec = recordio.IndexedRecordIO(tmp_path / "train.idx", tmp_path / "train.rec")
    records = {int(k): rec.read_idx(int(k)) for k in rec.keys}
    header, payload = recordio.unpack(records[2])
    records[2] = recordio.pack(header._replace(label=label), payload)
    with recordio.IndexedRecordIOWriter(tmp_path / "train.idx", tmp_path / "train.rec") as out:
        for key, record in records.items():
            out.write_idx(key, record)
    source = data.RecordIOSource(tmp_path)
    assert source[0]["label"] == LABELS[0]
    expected = "integer label" if label % 1 or not np.isfinite(label) else "outside"
    with pytest.raises(recordio.RecordIOError, match=rf"train\.rec record 2 .*{expected}"):
        source[1]


# --- strict decoding ----------------------------------------------------------------


def _entropy_start(jpeg):
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big")


def _pillow_decodes(encoded):
    try:
        Image.open(io.BytesIO(encoded)).convert("RGB")
    except OSError:
        return False
    return True


def test_jpeg_flips_that_break_markers_and_cut_data_are_refused():
    """Pillow discards libjpeg's corrupt-data warnings (python-pillow/Pillow#9106): a
    flip that keeps the marker structure decodes to wrong pixels. Detectable, and
    refused: a flip that breaks byte stuffing or a marker, and cut data."""
    jpeg = images.encode_image(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8))
    assert images.decode_image(jpeg, name="ok.jpg").shape == (32, 32, 3)
    start = _entropy_start(jpeg)
    stuffing = [i + 1 for i in range(start, len(jpeg) - 1) if jpeg[i : i + 2] == b"\xff\x00"]
    flipped_bytes = [*stuffing, len(jpeg) - 1]  # the stuffed zeros, EOI's second byte
    passed_pillow = 0
    for position in flipped_bytes:
        flipped = bytearray(jpeg)
        flipped[position] ^= 0xFF
        with pytest.raises(images.CorruptImageError, match=r"bad\.jpg: .*0xff"):
            images.decode_image(bytes(flipped), name="bad.jpg")
        passed_pillow += _pillow_decodes(bytes(flipped))
    assert passed_pillow  # some of them Pillow alone returns pixels for
    for cut in (jpeg[:-2], jpeg[:-1], jpeg[: len(jpeg) // 2]):
        with pytest.raises(images.CorruptImageError, match=r"cut\.jpg: .*cut"):
            images.decode_image(cut, name="cut.jpg")


def test_png_checksum_and_cut_are_refused():
    buffer = io.BytesIO()
    Image.fromarray(_pictures(1)[0]).save(buffer, format="PNG")
    png = buffer.getvalue()
    flipped = bytearray(png)
    flipped[png.index(b"IDAT") + 6] ^= 0xFF
    with pytest.raises(images.CorruptImageError, match="bad.png"):
        images.decode_image(bytes(flipped), name="bad.png")
    cut = png[: png.index(b"IEND") - 4]  # all pixel data, no end chunk
    assert Image.open(io.BytesIO(cut)).convert("RGB").size == (SIZE, SIZE)  # Pillow alone
    with pytest.raises(images.CorruptImageError, match="cut.png"):
        images.decode_image(cut, name="cut.png")


def test_16_bit_png_is_scaled_not_saturated():
    values = np.random.default_rng(2).integers(0, 65536, (5, 7), np.uint16)
    values[0, :3] = [0, 65535, 257 * 100 + 128]
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    expected = np.round(values / 257).astype(np.uint8)
    gray = images.decode_image(buffer.getvalue(), name="deep.png", channels=1)
    np.testing.assert_array_equal(gray[..., 0], expected)
    rgb = images.decode_image(buffer.getvalue(), name="deep.png", channels=3)
    np.testing.assert_array_equal(rgb, np.repeat(expected[..., None], 3, axis=-1))


def _pillow_pixels(encoded, mode):
    """The plain Pillow decode ``decode_image`` must agree with, bit for bit."""
    with Image.open(io.BytesIO(encoded)) as image:
        return np.asarray(image.convert(mode))


@pytest.fixture(params=["pillow", "simplejpeg"])
def jpeg_decoder(request, monkeypatch):
    """Runs a test with Pillow alone, and again with simplejpeg where it is installed."""
    if request.param == "pillow":
        monkeypatch.setattr(images, "simplejpeg", None)
    else:
        monkeypatch.setattr(images, "simplejpeg", pytest.importorskip("simplejpeg"))
    return request.param


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
@pytest.mark.parametrize("stored, channels", [(3, 3), (3, 1), (1, 3), (1, 1)])
def test_decoded_pixels_are_pillows(jpeg_decoder, image_format, stored, channels):
    picture = np.random.default_rng(3).integers(0, 256, (16, 12, stored), np.uint8)
    encoded = images.encode_image(picture, image_format=image_format)
    decoded = images.decode_image(encoded, name="x", channels=channels)
    expected = _pillow_pixels(encoded, "RGB" if channels == 3 else "L")
    np.testing.assert_array_equal(decoded, expected.reshape(16, 12, channels))


@pytest.mark.parametrize(
    "options",
    [
        {"quality": 95},
        {"quality": 50, "subsampling": 0},
        {"subsampling": 1},
        {"progressive": True},
        {"restart_marker_blocks": 1},
    ],
)
@pytest.mark.parametrize("size", [(112, 112), (17, 13)])
def test_simplejpeg_decodes_pillows_pixels_and_leaves_resizing_to_pillow(
    monkeypatch, options, size
):
    simplejpeg = pytest.importorskip("simplejpeg")
    calls = []
    monkeypatch.setattr(
        simplejpeg,
        "decode_jpeg",
        lambda *a, _f=simplejpeg.decode_jpeg, **k: calls.append(1) or _f(*a, **k),
    )
    picture = np.random.default_rng(4).integers(0, 256, size + (3,), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", **options)
    encoded = buffer.getvalue()
    expected = _pillow_pixels(encoded, "RGB")
    np.testing.assert_array_equal(images.decode_image(encoded, name="x"), expected)
    assert len(calls) == 1
    with Image.open(io.BytesIO(encoded)) as image:
        resized = np.asarray(image.convert("RGB").resize((8, 8), Image.BILINEAR))
    np.testing.assert_array_equal(images.decode_image(encoded, name="x", image_size=8), resized)
    assert len(calls) == 1  # resized by Pillow, which decoded it


def test_a_jpeg_is_opened_once_a_png_twice_for_its_checksums(monkeypatch):
    """Only PNG's Pillow plugin has a ``verify()`` (which consumes the file); the base
    class's checks nothing, so opening a JPEG a second time would only parse its
    header again, per image of every batch."""
    monkeypatch.setattr(images, "simplejpeg", None)
    opened = []
    open_image = Image.open
    monkeypatch.setattr(
        images.Image, "open", lambda *a, **k: opened.append(1) or open_image(*a, **k)
    )
    picture = _pictures(1)[0]
    images.decode_image(images.encode_image(picture), name="x.jpg")
    assert len(opened) == 1
    images.decode_image(images.encode_image(picture, image_format="PNG"), name="x.png")
    assert len(opened) == 3


def test_jpeg_scan_markers_are_found_past_stuffing_and_fill_bytes():
    """The entropy-coded data's markers, searched in C: stuffed ``FF 00`` pairs are
    data, fill bytes ``FF FF`` may precede the EOI, restarts must come in sequence."""
    header = images.encode_image(_pictures(1)[0])
    sos = header.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(header[sos + 2 : sos + 4], "big")
    head = header[:start]
    assert images.jpeg_structure_error(head + b"\x12\xff\x00\xff\x00\x34\xff\xd9") is None
    assert images.jpeg_structure_error(head + b"\x12\xff\xff\xff\xd9") is None
    assert "cut within a scan" in images.jpeg_structure_error(head + b"\x12\xff\x00\xff")
    assert "cut within a scan" in images.jpeg_structure_error(head + b"\x12\xff\x00")
    assert "invalid marker 0xff05" in images.jpeg_structure_error(head + b"\xff\x00\xff\x05")
    assert "0xffd0 out of sequence" in images.jpeg_structure_error(head + b"\xff\xd0\xff\xd9")


# --- test labels by identity --------------------------------------------------------

IDENTITIES = ["ann", "bob", "cat", "dan"]


def _write_folder(root, names, per_identity):
    """Images of identity k (its position in IDENTITIES) are the constant 40·(k + 1)."""
    for name in names:
        (root / name).mkdir(parents=True)
        value = 40 * (IDENTITIES.index(name) + 1) if name in IDENTITIES else 0
        for j in range(per_identity):
            picture = np.full((SIZE, SIZE, 3), value, np.uint8)
            (root / name / f"{j}.png").write_bytes(images.encode_image(picture, image_format="PNG"))
    return str(root)


def _closed_set(config):
    """Closed-set accuracy of a 'model' that recognizes each image's identity by its value,
    with the identity matrix as the classifier: 1.0 exactly when labels are right."""
    source = data.create_source(config, "test")
    records = [source[i] for i in range(len(source))]
    labels = np.asarray([r["label"] for r in records])
    identity = np.asarray([round(r["image"].mean() / 40) - 1 for r in records])
    embeddings = np.eye(len(IDENTITIES))[identity]
    return labels, identity, closed_set_accuracy(embeddings, labels, weights=np.eye(4))


def test_test_split_labels_are_the_training_labels_of_the_same_names(tmp_path):
    config = data.default_config("image_folder")
    config.path = _write_folder(tmp_path / "train", IDENTITIES, 2)
    config.image_size = SIZE
    config.test_path = _write_folder(tmp_path / "full", IDENTITIES, 1)
    full_labels, full_identity, full_accuracy = _closed_set(config)
    config.test_path = _write_folder(tmp_path / "subset", ["bob", "dan"], 1)
    labels, identity, accuracy = _closed_set(config)
    np.testing.assert_array_equal(labels, [1, 3])
    np.testing.assert_array_equal(labels, full_labels[np.isin(full_identity, identity)])
    assert accuracy == full_accuracy == 1.0
    config.test_path = _write_folder(tmp_path / "stranger", ["bob", "eve"], 1)
    with pytest.raises(DataError, match="identity folder 'eve' is not a training identity"):
        data.create_source(config, "test")


# --- verification .bin --------------------------------------------------------------


def test_a_bin_asking_for_a_huge_bytearray_is_refused_without_allocating(tmp_path):
    path = tmp_path / "bomb.bin"
    path.write_bytes(
        b"\x80\x02cbuiltins\nbytearray\n"  # PROTO 2, GLOBAL builtins.bytearray
        + b"J"
        + struct.pack("<i", 10**9)  # BININT 10**9
        + b"\x85R\x85]\x88a\x86."  # bytearray(10**9),; [True]; the pair; STOP
    )
    assert path.stat().st_size < 64
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError, match=r"bomb\.bin .*bytearray of 1000000000 bytes"):
            data.read_verification_bin(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 0.5 and peak < 10**6


@pytest.mark.parametrize(
    "issame, entry",
    [(["yes"], r"issame entry 0 is 'yes' \(str\)"), ([True, 1], r"issame entry 1 is 1 \(int\)")],
)
def test_a_bin_whose_issame_is_not_booleans_is_refused_naming_the_entry(tmp_path, issame, entry):
    pictures = _pictures(2 * len(issame))
    bins = [images.encode_image(p, image_format="PNG") for p in pictures]
    path = tmp_path / "odd.bin"
    path.write_bytes(pickle.dumps((bins, issame), protocol=2))
    with pytest.raises(DataError, match=rf"odd\.bin: {entry}, not a boolean"):
        data.read_verification_bin(path, image_size=None)
    # NumPy booleans are booleans.
    path.write_bytes(pickle.dumps((bins, np.ones(len(issame), bool)), protocol=2))
    pairs = data.read_verification_bin(path, image_size=None)
    np.testing.assert_array_equal(pairs.images, pictures)
    assert pairs.issame.dtype == bool and pairs.issame.all()
