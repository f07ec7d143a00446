"""Verification pair sets in InsightFace's ``.bin`` format (LFW, CFP-FP, AgeDB-30, …).

A ``.bin`` file is a pickle of ``(bins, issame)``: ``bins`` holds ``2N`` encoded images
(JPEG/PNG bytes) and ``issame`` ``N`` booleans; pair ``i`` is ``(bins[2i], bins[2i+1])``.
The files were written by Python 2, so they are read with ``encoding="bytes"``.
Unpickling runs code named by the file, so the reader only accepts the few types such
a file holds and refuses anything else, and the objects those types make (bytes,
bytearrays, array buffers) may total no more bytes than the file has: a small file
cannot make the reader allocate gigabytes (``bytearray(10**9)``). ``issame`` entries
must be booleans (Python or NumPy); anything else, 0/1 integers included, is refused,
as InsightFace's files hold booleans and a string or number there means another file.
Every error is a ``DataError`` naming the file (a ``CorruptImageError`` for an image).
"""

import io
import os
import pickle
from typing import Any, NamedTuple, Sequence

import numpy as np

from faceloss_jax.data import images
from faceloss_jax.errors import DataError

_LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1")


class PairSet(NamedTuple):
    """A verification set: ``images[2i]`` and ``images[2i + 1]`` form pair ``i``.

    Attributes:
      images: uint8 ``(2N, H, W, C)``.
      issame: bool ``(N,)``, whether pair ``i`` shows one identity.
    """

    images: np.ndarray
    issame: np.ndarray


class _BoundedArray(np.ndarray):
    """An array being unpickled: its ``__setstate__`` (which sizes the buffer) is
    charged to the unpickler's budget first."""

    charge: Any = None

    def __setstate__(self, state: tuple) -> None:
        shape, dtype = state[1], state[2]
        type(self).charge(_array_bytes(shape, dtype), f"an array of shape {shape}")
        super().__setstate__(state)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only the types a ``.bin`` holds, and at most ``budget`` bytes of the
    objects they make."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._budget = len(data)
        self._array = type("_Array", (_BoundedArray,), {"charge": self._charge})
        self._classes = {
            ("_codecs", "encode"): self._encode,
            ("builtins", "bytearray"): self._bytearray,
            ("numpy", "ndarray"): _ARRAY_CLASS,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): self._reconstruct,
        }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._classes:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: a verification .bin holds only "
                "encoded images and booleans"
            )
        return self._classes[module, name]

    def _charge(self, size: int, what: str) -> None:
        if size > self._budget:
            raise pickle.UnpicklingError(f"{what} of {size} bytes is more than the file can hold")
        self._budget -= size

    def _encode(self, text: str, encoding: str = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding.lower() not in _LATIN1:
            raise pickle.UnpicklingError("_codecs.encode is allowed for latin-1 text only")
        self._charge(len(text), "encoded text")
        return text.encode("latin-1")

    def _bytearray(self, *args: Any) -> bytearray:
        if args and isinstance(args[0], int):
            self._charge(args[0], "bytearray")
        elif args and isinstance(args[0], (str, bytes)):
            self._charge(len(args[0]), "bytearray")
        return bytearray(*args)

    def _reconstruct(self, cls: Any, shape: Any, dtype: Any) -> np.ndarray:
        if cls is not _ARRAY_CLASS:
            raise pickle.UnpicklingError("numpy _reconstruct is allowed for ndarray only")
        self._charge(_array_bytes(shape, dtype), f"an array of shape {shape}")
        return np.ndarray.__new__(self._array, shape, np.dtype(dtype))


# What the unpickler returns for numpy.ndarray: a name for _reconstruct, not a callable
# (calling numpy.ndarray would allocate an array of any shape).
_ARRAY_CLASS = object()


def _array_bytes(shape: Any, dtype: Any) -> int:
    """The bytes an array of ``shape`` takes; an object array is charged one byte per
    element (each element takes at least one byte of the file)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.float64))  # float: no overflow
    return count * (1 if dtype.hasobject else dtype.itemsize)


def read_verification_bin(
    path: str | os.PathLike, *, image_size: int | None = 112, channels: int = 3
) -> PairSet:
    """Reads a ``.bin`` pair set into decoded images and the ``issame`` labels.

    Args:
      path: the ``.bin`` file.
      image_size: images of another size are resized (bilinear) to it; ``None``
        keeps the stored size (which must then be the same for all images).
      channels: 3 (RGB) or 1 (grayscale).

    Returns:
      A ``PairSet``.

    Raises:
      DataError: the pickle is not ``(2N encoded images, N booleans)``, names a type
        a ``.bin`` does not hold, or makes more bytes than the file has (each names
        the file and the entry); a ``CorruptImageError`` names the first image that
        does not decode.

    Example:
      >>> pairs = read_verification_bin("lfw.bin")
      >>> pairs.images.shape, pairs.issame.mean()
      ((12000, 112, 112, 3), 0.5)
    """
    bins, issame = _load_pair_lists(path)
    decoded = [
        images.decode_image(
            _as_bytes(b, f"{path} image {i}"),
            name=f"{path} image {i}",
            channels=channels,
            image_size=image_size,
        )
        for i, b in enumerate(bins)
    ]
    shapes = {image.shape for image in decoded}
    if len(shapes) > 1:
        raise DataError(f"{path}: images have several sizes {sorted(shapes)}; pass image_size")
    return PairSet(np.stack(decoded), issame)


def _load_pair_lists(path: str | os.PathLike) -> tuple[Sequence[Any], np.ndarray]:
    """The ``(bins, issame)`` of a ``.bin``, checked: 2N entries and N booleans."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        content = _RestrictedUnpickler(data).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, OverflowError) as e:
        raise DataError(f"{path} is not a verification .bin pickle: {e}") from e
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise DataError(f"{path}: expected a pickled (bins, issame) pair")
    bins, issame = content
    if not isinstance(bins, (list, tuple, np.ndarray)):
        raise DataError(f"{path}: expected a list of encoded images, got {type(bins).__name__}")
    issame = _booleans(issame, path)
    if len(bins) != 2 * len(issame) or not len(bins):
        raise DataError(
            f"{path}: expected 2N encoded images for N issame labels, got "
            f"{len(bins)} images and {issame.size} labels"
        )
    return bins, issame


def _booleans(values: Any, path: str | os.PathLike) -> np.ndarray:
    """``issame`` as a bool array; a DataError naming the first entry that is not a
    Python or NumPy boolean."""
    if isinstance(values, np.ndarray) and values.dtype == bool and values.ndim == 1:
        return np.asarray(values)
    if not isinstance(values, (list, tuple)):
        raise DataError(f"{path}: expected a list of issame booleans, got {type(values).__name__}")
    for i, value in enumerate(values):
        if not isinstance(value, (bool, np.bool_)):
            raise DataError(
                f"{path}: issame entry {i} is {value!r} ({type(value).__name__}), not a boolean"
            )
    return np.asarray(values, dtype=bool)


def write_verification_bin(
    path: str | os.PathLike,
    pair_images: np.ndarray,
    issame: Sequence[bool],
    *,
    image_format: str = "JPEG",
) -> None:
    """Writes a ``.bin`` pair set as InsightFace does (for tests and converters).

    Args:
      path: the file to write.
      pair_images: uint8 ``(2N, H, W, C)``; rows ``2i`` and ``2i + 1`` form pair ``i``.
      issame: ``N`` booleans.
      image_format: ``"JPEG"`` (InsightFace's choice) or ``"PNG"`` (lossless).
    """
    issame = [bool(s) for s in issame]
    if len(pair_images) != 2 * len(issame):
        raise ValueError(f"need 2N images for N pairs, got {len(pair_images)} for {len(issame)}")
    bins = [images.encode_image(image, image_format=image_format) for image in pair_images]
    with open(path, "wb") as f:
        pickle.dump((bins, issame), f, protocol=pickle.HIGHEST_PROTOCOL)


def _as_bytes(data: Any, name: str) -> bytes:
    if isinstance(data, np.ndarray):
        return data.tobytes()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise DataError(f"{name}: expected encoded image bytes, got {type(data).__name__}")
