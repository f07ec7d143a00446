"""InsightFace RecordIO training sets (``train.rec`` + ``train.idx``), without MXNet.

Framing (dmlc-core ``recordio.h``): every record is written as
``magic (u32 = 0xced7230a) | lrecord (u32) | data | zero padding to 4 bytes``, with
``lrecord = cflag << 29 | length``. A record whose data contains the magic number at
a 4-byte-aligned offset is split there into parts (cflag 1 = first, 2 = middle,
3 = last; 0 = whole record), the magic itself being dropped; a reader re-inserts it.
``train.idx`` is text, one ``key<TAB>byte offset`` line per record.

Payload (MXNet ``recordio.pack``): an ``IRHeader`` struct ``<IfQQ``
``(flag, label, id, id2)`` followed, when ``flag > 0``, by ``flag`` float32 labels,
then the encoded image. InsightFace's sets (MS1M, Glint360K, WebFace) put a header in
record 0 whose two labels are ``(first identity record, end)``: image records are
keys ``1 … label[0] − 1`` and identity records ``label[0] … label[1] − 1`` each hold
the ``(start, end)`` image-key range of one identity, so
``num_classes = label[1] − label[0]``. Image labels are class ids ``0 … C − 1``.

The folder's ``property`` file is one text line ``num_classes,height,width`` (e.g.
``85742,112,112`` for MS1MV2). It is read when present and checked against the header;
it is required only for a set without the record-0 header (plain ``im2rec`` output),
whose class count it gives.

Every error of a file's content is a ``RecordIOError`` (a ``DataError``) naming the file
and the record (key and byte offset), or a ``CorruptImageError`` naming the record.
"""

import io
import os
import pathlib
import struct
import weakref
from typing import Any, NamedTuple, Sequence

import numpy as np
import PIL.Image

from faceloss_jax import errors
from faceloss_jax.data import images, source_base
from faceloss_jax.errors import ConfigError

PROPERTY = "property"

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")
_IR_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1


class RecordIOError(errors.DataError):
    """A malformed or truncated RecordIO file; the message names file and offset."""


class IRHeader(NamedTuple):
    """MXNet's image-record header; ``label`` is a float or a float32 array."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack(header: IRHeader, payload: bytes) -> bytes:
    """Packs an ``IRHeader`` and a payload like ``mxnet.recordio.pack``."""
    label = np.asarray(header.label, np.float32)
    if label.ndim == 0:
        return _IR_HEADER.pack(0, float(label), header.id, header.id2) + payload
    return _IR_HEADER.pack(label.size, 0.0, header.id, header.id2) + label.tobytes() + payload


def unpack(record: bytes, *, name: str = "record") -> tuple[IRHeader, bytes]:
    """Splits a record into its ``IRHeader`` and payload (``mxnet.recordio.unpack``);
    ``name`` (file and record) is for the error."""
    if len(record) < _IR_HEADER.size:
        raise RecordIOError(f"{name}: {len(record)} bytes, shorter than an IRHeader")
    flag, label, id_, id2 = _IR_HEADER.unpack_from(record)
    start = _IR_HEADER.size
    if flag > 0:
        end = start + 4 * flag
        if len(record) < end:
            raise RecordIOError(f"{name}: {len(record)} bytes, too short for {flag} labels")
        label = np.frombuffer(record[start:end], np.float32)
        start = end
    return IRHeader(flag, label, id_, id2), record[start:]


def frame(record: bytes) -> bytes:
    """Frames one record as dmlc's ``RecordIOWriter::WriteRecord`` does."""
    if len(record) >= 1 << 29:
        raise ValueError("RecordIO records must be shorter than 2**29 bytes")
    parts, start = [], 0
    for i in range(0, len(record) - len(record) % 4, 4):
        if record[i : i + 4] == _MAGIC_BYTES:
            parts.append(record[start:i])
            start = i + 4
    parts.append(record[start:])
    out = []
    for k, part in enumerate(parts):
        cflag = 0 if len(parts) == 1 else 1 if k == 0 else 3 if k == len(parts) - 1 else 2
        out.append(_FRAME.pack(MAGIC, cflag << 29 | len(part)) + part)
    out.append(b"\0" * (-len(record) % 4))
    return b"".join(out)


class IndexedRecordIO:
    """Random access to a ``.rec`` file through its ``.idx`` (``MXIndexedRecordIO``).

    Reads with ``os.pread``, so one instance serves many threads; it pickles (the
    file is reopened in each process).
    """

    def __init__(self, idx_path: str | os.PathLike, rec_path: str | os.PathLike):
        self.idx_path, self.rec_path = pathlib.Path(idx_path), pathlib.Path(rec_path)
        for path in (self.rec_path, self.idx_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: an InsightFace RecordIO set needs both "
                    f"{self.rec_path.name} and its index {self.idx_path.name}"
                )
        self.keys, self._offsets = _read_index(self.idx_path)
        self._size = self.rec_path.stat().st_size
        self._open()
        # A cut file loses its last record: check that one up front.
        self.read_idx(int(self.keys[np.argmax(self._offsets)]))

    def _open(self) -> None:
        self._fd = os.open(self.rec_path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self._fd)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_fd", "_closer")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def read_idx(self, key: int) -> bytes:
        """The record stored under ``key`` (parts joined, padding removed)."""
        return self._read_at(self.offset(key), key)

    def offset(self, key: int) -> int:
        """The byte offset of record ``key`` in the ``.rec`` file, from the index."""
        i = np.searchsorted(self.keys, key)
        if i == len(self.keys) or self.keys[i] != key:
            raise RecordIOError(f"{self.idx_path} has no record {key}")
        return int(self._offsets[i])

    def describe(self, key: int) -> str:
        """``"<rec file> record <key> (byte <offset>)"``, for errors and warnings."""
        return f"{self.rec_path} record {key} (byte {self.offset(key)})"

    def _read_at(self, offset: int, key: int) -> bytes:
        parts = []
        while True:
            head = self._pread(_FRAME.size, offset, key)
            magic, lrecord = _FRAME.unpack(head)
            if magic != MAGIC:
                raise RecordIOError(
                    f"{self.rec_path}: record {key} at byte {offset} has no "
                    f"RecordIO magic (is {self.idx_path.name} the index of "
                    f"this file?)"
                )
            cflag, length = lrecord >> 29, lrecord & _LENGTH_MASK
            parts.append(self._pread(length, offset + _FRAME.size, key))
            offset += _FRAME.size + length + (-length % 4)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)

    def _pread(self, n: int, offset: int, key: int) -> bytes:
        # A corrupt length is refused before anything is read (or allocated).
        data = os.pread(self._fd, n, offset) if offset + n <= self._size else b""
        if len(data) != n:
            raise RecordIOError(
                f"{self.rec_path} is truncated: record {key} needs bytes "
                f"{offset}..{offset + n} but the file has {self._size}"
            )
        return data


class IndexedRecordIOWriter:
    """Writes ``.rec`` + ``.idx`` files in MXNet's format (for tests and converters)."""

    def __init__(self, idx_path: str | os.PathLike, rec_path: str | os.PathLike):
        self._rec = open(rec_path, "wb")
        self._idx = open(idx_path, "w", encoding="utf-8")

    def write_idx(self, key: int, record: bytes) -> None:
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        self._rec.write(frame(record))

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> "IndexedRecordIOWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Property(NamedTuple):
    """The ``property`` file of an InsightFace folder: ``num_classes,height,width``."""

    num_classes: int
    height: int
    width: int


def read_property(path: str | os.PathLike) -> Property:
    """Parses a ``property`` file; a RecordIOError naming it if it is not 3 integers."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8").strip()
        values = [int(v) for v in text.split(",")]
    except UnicodeDecodeError:
        text, values = "(not UTF-8 text)", []
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 1:
        raise RecordIOError(
            f"{path}: expected one line 'num_classes,height,width' of positive "
            f"integers (e.g. 85742,112,112), got {text[:80]!r}"
        )
    return Property(*values)


def write_insightface_recordio(
    directory: str | os.PathLike,
    encoded_images: Sequence[bytes],
    labels: Sequence[int],
    *,
    image_shape: tuple[int, int] | None = None,
) -> None:
    """Writes ``train.rec``/``train.idx`` and ``property`` laid out as InsightFace's sets.

    Args:
      directory: where to write (created if needed).
      encoded_images: JPEG/PNG bytes, one per image.
      labels: class id of each image, in ``0 … C − 1``; images are stored grouped
        by class (as InsightFace's ``im2rec`` lists are), every class non-empty.
      image_shape: ``(height, width)`` for ``property``; default: the first image's
        (no ``property`` is written if it does not decode).
    """
    labels = np.asarray(labels, np.int64)
    if len(labels) != len(encoded_images) or not len(labels):
        raise ValueError(
            f"need as many labels as images (>0), got {len(labels)} "
            f"labels for {len(encoded_images)} images"
        )
    num_classes = int(labels.max()) + 1
    if labels.min() < 0 or np.any(np.bincount(labels, minlength=num_classes) == 0):
        raise ValueError("labels must be 0..C-1 with every class present")
    order = np.argsort(labels, kind="stable")
    first_identity = len(labels) + 1
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with IndexedRecordIOWriter(directory / "train.idx", directory / "train.rec") as writer:
        header = IRHeader(0, [first_identity, first_identity + num_classes], 0, 0)
        writer.write_idx(0, pack(header, b""))
        for key, i in enumerate(order, start=1):
            writer.write_idx(key, pack(IRHeader(0, float(labels[i]), key, 0), encoded_images[i]))
        bounds = np.searchsorted(labels[order], np.arange(num_classes + 1)) + 1
        for c in range(num_classes):
            writer.write_idx(
                first_identity + c, pack(IRHeader(0, [bounds[c], bounds[c + 1]], 0, 0), b"")
            )
    if image_shape is None:
        try:
            width, height = PIL.Image.open(io.BytesIO(encoded_images[0])).size
            image_shape = (height, width)
        except (OSError, ValueError):  # Not an image: no property; the reader names it.
            (directory / PROPERTY).unlink(missing_ok=True)
            return
    (directory / PROPERTY).write_text(
        f"{num_classes},{image_shape[0]},{image_shape[1]}\n", encoding="utf-8"
    )


class RecordIOSource:
    """A grain ``RandomAccessDataSource`` over an InsightFace ``train.rec``/``train.idx``.

    Records are ``{"image": uint8 (image_size, image_size, channels), "label": int,
    "replaced": bool}``; JPEGs are decoded with Pillow (``images.decode_image``). A set
    without the record-0 header (plain ``im2rec`` output) is read as all of its keys,
    and needs the ``property`` file for its ``num_classes``; with the header,
    ``property`` is optional and must agree.

    A record that cannot be read (bad framing, header or label, an image that does not
    decode) raises its ``RecordIOError``/``CorruptImageError`` with
    ``on_error="raise"``; with ``"skip"`` it is replaced by the next readable record,
    named in a warning and flagged ``"replaced": True`` (``source_base.read_or_replace``).

    Attributes:
      num_classes: identities in the set.
      property: the parsed ``property`` file, or None when the folder has none.

    Raises:
      FileNotFoundError: ``train.rec`` or ``train.idx`` is missing (named).
      RecordIOError: a truncated ``.rec``, an index of another file, a malformed
        ``property`` or one that disagrees with the header, or a set with neither a
        header nor a ``property`` (each names the file).
      ConfigError: ``on_error`` is not ``"raise"`` or ``"skip"``.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        image_size: int | None = 112,
        channels: int = 3,
        prefix: str = "train",
        on_error: source_base.OnError = "raise",
    ):
        source_base.check_on_error(on_error)
        directory = pathlib.Path(directory)
        self._rec = IndexedRecordIO(directory / f"{prefix}.idx", directory / f"{prefix}.rec")
        self._image_size, self._channels = image_size, channels
        self._on_error = on_error
        property_path = directory / PROPERTY
        self.property = read_property(property_path) if property_path.is_file() else None
        header, _ = self._unpack(0)
        if header.flag > 0:
            first_identity, end = self._int_labels(header, 0, 2)
            if not 1 <= first_identity <= end:
                raise RecordIOError(
                    f"{self._rec.describe(0)}: header range [{first_identity}, {end}) "
                    "is not an identity range after the image keys"
                )
            self._keys = np.arange(1, first_identity)
            self.num_classes = end - first_identity
            if self.property is not None and self.property.num_classes != self.num_classes:
                raise RecordIOError(
                    f"{property_path} says {self.property.num_classes} classes but the header "
                    f"of {self._rec.rec_path} has {self.num_classes} identity records"
                )
        elif self.property is None:
            raise RecordIOError(
                f"{property_path} not found: {self._rec.rec_path} has no identity header in "
                "record 0, so its class count must come from a 'num_classes,height,width' "
                "property file"
            )
        else:
            self._keys = self._rec.keys
            self.num_classes = self.property.num_classes
        missing = np.setdiff1d(self._keys, self._rec.keys)
        if len(missing):
            raise RecordIOError(
                f"{self._rec.idx_path} lacks image records {missing[:5].tolist()}"
                f"… ({len(missing)} of {len(self._keys)})"
            )

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return source_base.read_or_replace(
            self._read_record, index, len(self), on_error=self._on_error
        )

    def _read_record(self, index: int) -> dict[str, Any]:
        key = int(self._keys[index])
        name = self._rec.describe(key)
        header, payload = unpack(self._rec.read_idx(key), name=name)
        (label,) = self._int_labels(header, key, 1)
        if not 0 <= label < self.num_classes:
            raise RecordIOError(f"{name}: label {label} outside [0, {self.num_classes})")
        image = images.decode_image(
            payload, name=name, channels=self._channels, image_size=self._image_size
        )
        return {"image": image, "label": label}

    def _unpack(self, key: int) -> tuple[IRHeader, bytes]:
        return unpack(self._rec.read_idx(key), name=self._rec.describe(key))

    def _int_labels(self, header: IRHeader, key: int, count: int) -> list[int]:
        """The first ``count`` labels of record ``key``'s header, as integers."""
        labels = np.ravel(header.label)[:count].tolist()
        # Python floats, not numpy: this runs for every image record.
        if len(labels) < count or not all(v.is_integer() for v in labels):
            raise RecordIOError(
                f"{self._rec.describe(key)}: expected {count} integer label(s) in the "
                f"header, got {labels}"
            )
        return [int(v) for v in labels]

    def identity_index(self) -> list[np.ndarray]:
        """Per class, its record indices, from the header's identity records: record
        ``label[0] + c`` holds the key range ``[start, end)`` of class c (one small read
        per class; no image record is read).

        Raises:
          RecordIOError: the set has no identity header (plain ``im2rec`` output), or an
            identity record's range is not within the image keys.
        """
        header, _ = self._unpack(0)
        if header.flag <= 0:
            raise RecordIOError(
                f"{self._rec.rec_path} has no identity header in record 0: its images' "
                "identities are unknown without reading every record (no P×K batches)"
            )
        first_identity = int(header.label[0])
        index = []
        for c in range(self.num_classes):
            bounds, _ = self._unpack(first_identity + c)
            start, end = self._int_labels(bounds, first_identity + c, 2)
            if not 1 <= start <= end <= len(self._keys) + 1:
                raise RecordIOError(
                    f"{self._rec.rec_path}: identity record {first_identity + c} has the "
                    f"key range [{start}, {end}) outside the image keys [1, {first_identity})"
                )
            index.append(np.arange(start - 1, end - 1))  # key k is source index k − 1
        return index

    def __repr__(self) -> str:
        return (
            f"RecordIOSource({self._rec.rec_path}, {len(self)} images, {self.num_classes} classes)"
        )


def _read_index(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Parses ``key<TAB>offset`` lines into key-sorted int64 arrays."""
    try:
        table = np.loadtxt(path, dtype=np.int64, delimiter="\t", ndmin=2, encoding="utf-8")
    except ValueError as e:  # UnicodeDecodeError included
        raise RecordIOError(f"{path} is not a RecordIO index (key<TAB>offset lines): {e}") from e
    if table.size == 0:
        raise RecordIOError(f"{path} is empty")
    if table.shape[1] != 2:
        raise RecordIOError(f"{path}: expected 2 columns (key, offset), got {table.shape[1]}")
    if table[:, 1].min() < 0:
        row = int(np.argmin(table[:, 1]))
        raise RecordIOError(f"{path}: record {table[row, 0]} has a negative offset")
    order = np.argsort(table[:, 0], kind="stable")
    return table[order, 0], table[order, 1]


def _create(config, split: str) -> RecordIOSource:
    if split != "train":
        raise ConfigError(
            f"RecordIO sets hold training images only, not {split!r}; evaluate "
            "on .bin pair sets with read_verification_bin"
        )
    return RecordIOSource(
        source_base.required(config, "path"),
        image_size=config.image_size,
        channels=config.channels,
        on_error=config.on_error,
    )


# path: the folder holding train.rec, train.idx, property and the .bin verification
# targets (InsightFace's layout); those targets are the default config.eval.val_targets.
# on_error: "raise" (stop at a bad record) or "skip" (replace it by the next readable one).
SOURCE = source_base.Source(
    fields={"path": None, "on_error": source_base.parameter_default(RecordIOSource, "on_error")},
    create=_create,
    num_classes=lambda config: _create(config, "train").num_classes,
    splits=("train",),
    val_targets=("lfw", "cfp_fp", "agedb_30"),
    identity_index=source_base.identity_index_method,
)
