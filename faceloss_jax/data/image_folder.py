"""Face identities stored as an image folder: ``root/<identity>/<image>.jpg|png``.

The layout of CASIA-WebFace / VGGFace2 exports and of most aligned-face dumps. Labels
are the training identity folders in sorted order, ``0 … num_identities − 1``; the test
split's folders take the training label of the folder of the same name (a test folder
may hold a subset of the identities), the openset's are numbered by their own sorted
order (identities never trained on).
"""

import concurrent.futures
import dataclasses
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from faceloss_jax.data import images, sampling, source_base
from faceloss_jax.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass(frozen=True)
class ScanReport:
    """What a scan of an image folder found.

    Attributes:
      num_identities: identity folders with at least one image (the classes).
      num_images: readable images kept in the source.
      skipped_images: ``(path, reason)`` for each unreadable image left out.
      empty_identities: identity folders without any .jpg/.png file, left out.
    """

    num_identities: int
    num_images: int
    skipped_images: tuple[tuple[str, str], ...] = ()
    empty_identities: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [
            f"{self.num_images} images of {self.num_identities} identities; "
            f"skipped {len(self.skipped_images)} unreadable images and "
            f"{len(self.empty_identities)} empty identity folders"
        ]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped_images]
        lines += [f"  empty identity folder {path}" for path in self.empty_identities]
        return "\n".join(lines)


def list_identities(
    root: str | os.PathLike, *, on_error: source_base.OnError
) -> tuple[list[str], list[list[str]], tuple[str, ...]]:
    """Lists the identity folders of ``root`` and their image files (no decoding).

    Args:
      root: the folder holding one sub-folder per identity.
      on_error: ``"skip"`` leaves out identity folders with no image (and
        returns them), ``"raise"`` fails on the first one.

    Returns:
      ``(identity names, image paths per identity, empty identity folders)``;
      identities sorted by name, images sorted by file name.

    Raises:
      FileNotFoundError: ``root`` is not a folder.
      DataError: ``root`` has no identity folder with images, or (``"raise"``)
        an identity folder is empty.
    """
    source_base.check_on_error(on_error)
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} is not a directory")
    names, files, empty = [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        paths = sorted(
            str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if paths:
            names.append(folder.name)
            files.append(paths)
        elif on_error == "raise":
            raise DataError(
                f"identity folder {folder} has no {'/'.join(IMAGE_EXTENSIONS)}"
                " image (on_error='skip' leaves it out)"
            )
        else:
            empty.append(str(folder))
    if not names:
        raise DataError(
            f"{root} has no identity folder with images "
            f"(expected {root}/<identity>/<image>.jpg|png)"
        )
    return names, files, tuple(empty)


class ImageFolderSource:
    """A grain ``RandomAccessDataSource`` over ``root/<identity>/<image>``.

    Records are ``{"image": uint8 (image_size, image_size, channels), "label": int,
    "replaced": bool}``.

    Unreadable images are found up front when ``validate`` is true (each file is
    decoded once, in threads): with ``on_error="skip"`` they are left out and
    listed in ``self.report``; with ``on_error="raise"`` the first one raises a
    ``CorruptImageError`` naming the file. A file that fails to decode when it is
    read (without validation, or changed since) raises that error with ``"raise"``;
    with ``"skip"`` it is replaced by the next readable image, named in a warning
    and flagged ``"replaced": True`` (``source_base.read_or_replace``).

    Args:
      root: the folder of identity folders.
      image_size: images of another size are resized (bilinear) to it; None keeps
        the stored size (which must then be the same for all images to batch them).
      channels: 3 (RGB) or 1 (grayscale).
      on_error: ``"skip"`` or ``"raise"``, for unreadable images and empty
        identity folders.
      validate: decode every image once now (to leave unreadable ones out).
      num_threads: threads for that validation.
      identities: the identity names that labels index (a test split's: the training
        identities, so that each folder gets the training label of its name); default:
        the folders of ``root``, sorted.

    Attributes:
      identities: identity names; ``identities[label]``.
      report: the ``ScanReport`` of the scan.

    Raises:
      DataError: a folder of ``root`` is not in ``identities`` (named), or one of the
        errors of ``list_identities``; a ``CorruptImageError`` (``"raise"``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        image_size: int | None = 112,
        channels: int = 3,
        on_error: source_base.OnError = "skip",
        validate: bool = True,
        num_threads: int = 8,
        identities: Sequence[str] | None = None,
    ):
        names, files, empty = list_identities(root, on_error=on_error)
        identities = names if identities is None else list(identities)
        folder_labels = _labels_by_name(root, names, identities)
        paths = [p for identity in files for p in identity]
        labels = [label for label, identity in zip(folder_labels, files) for _ in identity]
        self._image_size = image_size
        self._channels = channels
        self._on_error = on_error
        skipped = []
        if validate:
            with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
                errors = list(pool.map(self._check, paths))
            if on_error == "raise" and any(errors):
                raise next(e for e in errors if e)
            skipped = [(p, e.reason) for p, e in zip(paths, errors) if e]
            keep = [i for i, e in enumerate(errors) if not e]
            paths = [paths[i] for i in keep]
            labels = [labels[i] for i in keep]
        if not paths:
            raise DataError(f"no readable image under {root}")
        self.identities = identities
        self._paths = paths
        self._labels = np.asarray(labels, np.int64)
        self.report = ScanReport(
            num_identities=len(names),
            num_images=len(paths),
            skipped_images=tuple(skipped),
            empty_identities=empty,
        )
        if skipped or empty:
            logging.warning("image folder %s: %s", root, self.report)

    def _check(self, path: str) -> images.CorruptImageError | None:
        try:
            self._read(path)
        except images.CorruptImageError as e:
            return e
        return None

    def _read(self, path: str) -> np.ndarray:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise images.CorruptImageError(path, str(e)) from e
        return images.decode_image(
            data, name=path, channels=self._channels, image_size=self._image_size
        )

    def _read_record(self, index: int) -> dict[str, Any]:
        return {"image": self._read(self._paths[index]), "label": int(self._labels[index])}

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return source_base.read_or_replace(
            self._read_record, index, len(self), on_error=self._on_error
        )

    def identity_index(self) -> list[np.ndarray]:
        """Per label, its record indices, from the listing (no image is decoded); an
        identity whose every image was skipped as unreadable has none."""
        return sampling.identity_index_from_labels(self._labels, len(self.identities))

    def __repr__(self) -> str:
        return (
            f"ImageFolderSource({self.report.num_images} images, {len(self.identities)} identities)"
        )


def _labels_by_name(
    root: str | os.PathLike, names: Sequence[str], identities: Sequence[str]
) -> list[int]:
    """The label of each identity folder: its position in ``identities``."""
    label_of = {name: label for label, name in enumerate(identities)}
    unknown = [name for name in names if name not in label_of]
    if unknown:
        raise DataError(
            f"{root}: identity folder {unknown[0]!r} is not a training identity "
            f"({len(unknown)} of {len(names)} folders unknown); a test split holds "
            "training identities, labelled by folder name"
        )
    return [label_of[name] for name in names]


def _create(config, split: str) -> ImageFolderSource:
    field = {"train": "path", "test": "test_path", "openset": "openset_path"}[split]
    root = source_base.required(config, field)  # before the training folder is listed
    return ImageFolderSource(
        root,
        image_size=config.image_size,
        channels=config.channels,
        on_error=config.on_error,
        validate=config.validate,
        identities=_training_identities(config) if split == "test" else None,
    )


def _training_identities(config) -> list[str]:
    names, _, _ = list_identities(source_base.required(config, "path"), on_error=config.on_error)
    return names


def _num_classes(config) -> int:
    return len(_training_identities(config))


# path: the train root/<identity>/<image>; test_path, openset_path: the same layout
# (optional); on_error: "skip" or "raise"; validate: decode every image once up front.
SOURCE = source_base.Source(
    fields={
        "path": None,
        "test_path": None,
        "openset_path": None,
        "on_error": source_base.parameter_default(ImageFolderSource, "on_error"),
        "validate": source_base.parameter_default(ImageFolderSource, "validate"),
    },
    create=_create,
    num_classes=_num_classes,
    identity_index=source_base.identity_index_method,
)
