"""Verification pair sets in InsightFace's ``.bin`` format (LFW, CFP-FP, AgeDB-30, …).

A ``.bin`` file is a pickle of ``(bins, issame)``: ``bins`` holds ``2N`` encoded images
(JPEG/PNG bytes) and ``issame`` ``N`` booleans; pair ``i`` is ``(bins[2i], bins[2i+1])``.
The files were written by Python 2, so they are read with ``encoding="bytes"``.
Unpickling runs code named by the file, so the reader only accepts the few types such
a file holds and refuses anything else.
"""

import os
import pickle
from typing import NamedTuple, Sequence

import numpy as np

from faceloss_jax.data import images

# Types a .bin may name: bytes pickled by Python 3 at protocol 2 (_codecs.encode),
# and numpy arrays of bytes written by some converters.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("builtins", "bytearray"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class PairSet(NamedTuple):
    """A verification set: ``images[2i]`` and ``images[2i + 1]`` form pair ``i``.

    Attributes:
      images: uint8 ``(2N, H, W, C)``.
      issame: bool ``(N,)``, whether pair ``i`` shows one identity.
    """

    images: np.ndarray
    issame: np.ndarray


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: a verification .bin holds only "
                "encoded images and booleans"
            )
        return super().find_class(module, name)


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
      ValueError: the pickle is not ``(2N encoded images, N booleans)``; a
        ``CorruptImageError`` names the first image that does not decode.

    Example:
      >>> pairs = read_verification_bin("lfw.bin")
      >>> pairs.images.shape, pairs.issame.mean()
      ((12000, 112, 112, 3), 0.5)
    """
    with open(path, "rb") as f:
        try:
            content = _RestrictedUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise ValueError(f"{path} is not a verification .bin pickle: {e}") from e
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise ValueError(f"{path}: expected a pickled (bins, issame) pair")
    bins, issame = content
    issame = np.asarray(issame, dtype=bool)
    if issame.ndim != 1 or len(bins) != 2 * len(issame) or not len(bins):
        raise ValueError(
            f"{path}: expected 2N encoded images for N issame labels, got "
            f"{len(bins)} images and {issame.size} labels"
        )
    decoded = [
        images.decode_image(
            _as_bytes(b), name=f"{path} image {i}", channels=channels, image_size=image_size
        )
        for i, b in enumerate(bins)
    ]
    shapes = {image.shape for image in decoded}
    if len(shapes) > 1:
        raise ValueError(f"{path}: images have several sizes {sorted(shapes)}; pass image_size")
    return PairSet(np.stack(decoded), issame)


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


def _as_bytes(data) -> bytes:
    if isinstance(data, np.ndarray):
        return data.tobytes()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise ValueError(f"expected encoded image bytes, got {type(data).__name__}")
