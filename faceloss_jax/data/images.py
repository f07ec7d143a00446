"""Decoding of encoded face images (JPEG/PNG) into uint8 arrays, with clear errors."""

import io

import numpy as np
from PIL import Image

from faceloss_jax import errors

_MODES = {1: "L", 3: "RGB"}


class CorruptImageError(errors.DataError):
    """An image that cannot be decoded; the message names the file or record.

    Attributes:
      name: the file or record.
      reason: what went wrong.
    """

    def __init__(self, name: str, reason: str):
        super().__init__(f"cannot decode image {name}: {reason}")
        self.name, self.reason = name, reason

    def __reduce__(self):  # so that grain's worker processes can send it back
        return CorruptImageError, (self.name, self.reason)


def decode_image(
    data: bytes, *, name: str, channels: int = 3, image_size: int | None = None
) -> np.ndarray:
    """Decodes JPEG/PNG bytes with Pillow into a uint8 ``(H, W, channels)`` array.

    Args:
      data: the encoded image.
      name: what the bytes are (a path, ``"train.rec record 17"``), for the error.
      channels: 3 for RGB, 1 for grayscale; the image is converted if needed.
      image_size: if given, the image is resized (bilinear) to
        ``image_size × image_size`` when it has another size. Aligned face crops
        (112×112) are square already, so no aspect ratio is lost there.

    Returns:
      The decoded image, uint8, shape ``(H, W, channels)``.

    Raises:
      CorruptImageError: the bytes are not a complete, decodable image.

    Example:
      >>> decode_image(open("face.jpg", "rb").read(), name="face.jpg").shape
      (112, 112, 3)
    """
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert(_MODES[channels])  # decodes all pixel data
            if image_size is not None and image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except Image.UnidentifiedImageError as e:
        raise CorruptImageError(name, "not an image of a format Pillow reads") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise CorruptImageError(name, str(e)) from e
    return array.reshape(array.shape[:2] + (channels,))


def encode_image(image: np.ndarray, *, image_format: str = "JPEG", quality: int = 95) -> bytes:
    """Encodes a uint8 ``(H, W, C)`` image (C in {1, 3}) as JPEG or PNG bytes."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in _MODES:
        raise ValueError(f"expected a uint8 (H, W, 1|3) image, got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    options = {"quality": quality} if image_format.upper() == "JPEG" else {}
    pil.save(buffer, format=image_format, **options)
    return buffer.getvalue()
