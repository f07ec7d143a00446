"""Decoding of encoded face images (JPEG/PNG) into uint8 arrays, with clear errors."""

import io
import re
import struct

import numpy as np
from PIL import Image, ImageFile

from faceloss_jax import errors

try:  # optional: pip install simplejpeg (see _simplejpeg_rgb)
    import simplejpeg
except ImportError:
    simplejpeg = None

_MODES = {1: "L", 3: "RGB"}
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# JPEG markers: start of scan, define restart interval, end of image, restarts.
_SOS, _DRI, _EOI, _RST0, _RST7 = 0xDA, 0xDD, 0xD9, 0xD0, 0xD7
# In entropy-coded data, a 0xFF not stuffed (followed by 0x00): a marker (searched in C,
# not byte by byte in Python).
_SCAN_MARKER = re.compile(rb"\xff[^\x00]")


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
    """Decodes JPEG/PNG bytes with Pillow, strictly, into a uint8 ``(H, W, channels)`` array
    (RGB JPEGs with simplejpeg where it is installed: the same pixels, faster).

    Strict: the bytes must hold one whole image. Pillow's ``verify()`` checks a PNG's
    chunk checksums and its end (a cut PNG otherwise loads as a partial image); a JPEG's
    marker structure is checked here (``jpeg_structure_error``); the pixels are decoded
    in full, with ``ImageFile.LOAD_TRUNCATED_IMAGES`` left off; an image of more than
    ``Image.MAX_IMAGE_PIXELS`` pixels (Pillow's decompression-bomb warning) is refused.
    Pillow cannot see everything: libjpeg's warnings for corrupt entropy-coded data
    ("Corrupt JPEG data: bad Huffman code", "… extraneous bytes before marker",
    "premature end of data segment") are discarded by Pillow's decoder, which returns
    the pixels (python-pillow/Pillow#9106). So a JPEG whose flipped bytes keep its
    marker structure decodes to wrong pixels; one where a flip makes or breaks a
    marker (``0xFF`` byte stuffing, restart markers) or cuts the data is refused.

    16-bit images (modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, and ``I``, which
    Pillow gives 16-bit PNG/PGM files) are scaled to 8 bits, ``round(v / 257)``, not
    clipped. (Pillow reads a 16-bit RGB PNG as 8-bit RGB itself, keeping each value's
    high byte.)

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
      CorruptImageError: the bytes are not one complete, decodable image.

    Example:
      >>> decode_image(open("face.jpg", "rb").read(), name="face.jpg").shape
      (112, 112, 3)
    """
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    reason = jpeg_structure_error(data)
    if reason:
        raise CorruptImageError(name, reason)
    try:
        array = _simplejpeg_rgb(data, image_size) if channels == 3 else None
        if array is None:
            array = _pillow_pixels(data, _MODES[channels], image_size)
    except Image.UnidentifiedImageError as e:
        raise CorruptImageError(name, "not an image of a format Pillow reads") from e
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        struct.error,
        Image.DecompressionBombError,
    ) as e:
        raise CorruptImageError(name, str(e) or type(e).__name__) from e
    return array.reshape(array.shape[:2] + (channels,))


def jpeg_structure_error(data: bytes) -> str | None:
    """What is wrong with the marker structure of JPEG bytes, or None (also for bytes
    that are not a JPEG). Checked: every segment lies within the data and is followed
    by a marker; in entropy-coded data each ``0xFF`` is stuffed (``FF 00``), a restart
    marker in sequence (``RST0 … RST7``, after a ``DRI``) or a valid marker ending the
    scan; the data ends with an EOI marker (``FF D9``). These are the corruptions
    libjpeg reports as "extraneous bytes before marker", "unsupported marker" or
    "premature end of JPEG file" when they fall on markers."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, restart_interval = 2, 0
    while True:
        if pos >= len(data):
            return "no end-of-image marker: the JPEG data is cut"
        if data[pos] != 0xFF:
            return f"stray data at byte {pos} where a JPEG marker belongs"
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= len(data):
            return "no end-of-image marker: the JPEG data is cut"
        code, pos = data[pos], pos + 1
        if code == _EOI:
            return None
        if code == 0x01:  # TEM: no segment
            continue
        if code < 0xC0 or code == 0xD8 or _RST0 <= code <= _RST7:
            return f"invalid JPEG marker 0xff{code:02x} at byte {pos - 2}"
        if pos + 2 > len(data):
            return "no end-of-image marker: the JPEG data is cut"
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > len(data):
            return f"JPEG segment 0xff{code:02x} at byte {pos - 2} runs past the end of the data"
        if code == _DRI and length >= 4:
            restart_interval = int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += length
        if code == _SOS:
            pos, reason = _skip_entropy_coded(data, pos, restart_interval)
            if reason:
                return reason


def _skip_entropy_coded(data: bytes, pos: int, restart_interval: int) -> tuple[int, str | None]:
    """The position of the marker that ends the scan starting at ``pos``, or what is
    wrong with the scan's byte stuffing and restart markers."""
    expected = 0
    while True:
        marker = _SCAN_MARKER.search(data, pos)
        if marker is None:
            return pos, "no end-of-image marker: the JPEG data is cut within a scan"
        pos = marker.start()
        code = data[pos + 1]
        if _RST0 <= code <= _RST7:
            if not restart_interval or code - _RST0 != expected:
                return pos, (
                    f"corrupt JPEG data: restart marker 0xff{code:02x} out of sequence "
                    f"at byte {pos}"
                )
            expected, pos = (expected + 1) % 8, pos + 2
        elif code == 0xFF or code >= 0xC0:
            return pos, None
        else:
            return pos, f"corrupt JPEG data: invalid marker 0xff{code:02x} at byte {pos}"


def _simplejpeg_rgb(data: bytes, image_size: int | None) -> np.ndarray | None:
    """The RGB pixels of a YCbCr JPEG decoded by simplejpeg, when it is installed; else
    None, and Pillow decodes.

    simplejpeg runs the same libjpeg-turbo decode as Pillow (accurate DCT, smooth chroma
    upsampling), so the pixels are Pillow's (tested), straight into an RGB array, with
    the header parsed in C (Pillow: in Python, then 4 bytes a pixel packed to 3): 1.9×
    faster per face here (``experiments/results/bench_input.md``). Left to Pillow: no
    simplejpeg, not a JPEG, a color space other than YCbCr (Pillow's own gray and CMYK
    conversions), a size to resize, a header simplejpeg cannot read (Pillow names it).
    """
    if simplejpeg is None or not data.startswith(b"\xff\xd8"):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data, strict=False)
    except ValueError:
        return None
    resize = image_size is not None and (height, width) != (image_size, image_size)
    if colorspace != "YCbCr" or resize:
        return None
    _check_pixel_count(width, height)
    # strict=False: libjpeg's warnings for corrupt data are passed over, as Pillow does,
    # so a run decodes the same pixels with or without simplejpeg.
    return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False)


def _pillow_pixels(data: bytes, mode: str, image_size: int | None) -> np.ndarray:
    """The pixels decoded by Pillow (verified first where its plugin can), in ``mode``,
    resized to ``image_size`` square if given and different."""
    with _open_verified(data) as image:
        _check_pixel_count(image.width, image.height)
        image.load()
        image = _to_8_bit(image)
        if image.mode != mode:
            image = image.convert(mode)
        if image_size is not None and image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def _open_verified(data: bytes) -> Image.Image:
    """The image opened for decoding, after ``verify()`` where its format's plugin has
    one (PNG's checks the chunk checksums and the end; the base class's does nothing,
    so a JPEG is opened and its header parsed once, not twice)."""
    image = Image.open(io.BytesIO(data))
    if type(image).verify is ImageFile.ImageFile.verify:
        return image
    with image:
        image.verify()  # consumes the file: the pixels need a second open
    return Image.open(io.BytesIO(data))


def _check_pixel_count(width: int, height: int) -> None:
    """Refuses what Pillow only warns about: more pixels than ``Image.MAX_IMAGE_PIXELS``."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ValueError(
            f"{width}×{height} pixels exceed Image.MAX_IMAGE_PIXELS = {limit} "
            "(a decompression bomb?)"
        )


def _to_8_bit(image: Image.Image) -> Image.Image:
    """A 16-bit grayscale image scaled to 8 bits, ``round(v / 257)``; others as they are."""
    if image.mode not in _SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 0xFFFF):
        raise ValueError(
            f"mode {image.mode} image with values in [{values.min()}, {values.max()}], "
            "outside 16 bits"
        )
    return Image.fromarray(((2 * values + 257) // 514).astype(np.uint8), mode="L")


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
