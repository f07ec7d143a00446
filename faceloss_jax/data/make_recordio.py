r"""An image folder of identities → an InsightFace ``train.rec``/``train.idx``/``property``.

    python -m faceloss_jax.data.make_recordio --images=DIR --out=DIR

``DIR/<identity>/<image>.jpg|png``: identities are the sub-folders in sorted order
(labels ``0 … C − 1``, as ``data.ImageFolderSource`` numbers them), images sorted by
file name. The written set is laid out as InsightFace's (MS1M, Glint360K, WebFace;
see ``data.recordio``): record 0 a header ``(first identity record, end)``, image
records ``1 … N`` (the files' bytes as they are, label = identity), then one identity
record per class holding its ``(start, end)`` image keys; ``property`` is
``C,height,width`` of the first image. Every image is opened before anything is
written (an unreadable one is named, ``--on_error=skip`` leaves it out); the three
files are written beside ``--out`` and moved in when complete, so an interrupted run
leaves no partial set (run it again). An ``--out`` that holds a set already is
refused. Read it back with ``configs/<loss>.py:face,source=recordio
--config.dataset.path=DIR``.
"""

import pathlib
import shutil
import sys
from collections.abc import Sequence

import numpy as np
import PIL.Image
from absl import app, flags

from faceloss_jax import errors
from faceloss_jax.data import image_folder, recordio
from faceloss_jax.train_lib import cli

FILES = ("train.rec", "train.idx", recordio.PROPERTY)


def define_flags() -> None:
    """The command's flags (defined only when run as a program)."""
    flags.DEFINE_string("images", None, "Folder of <identity>/<image> files.", required=True)
    flags.DEFINE_string("out", None, "Folder to write train.rec/.idx/property into.", required=True)
    flags.DEFINE_enum("on_error", "raise", ["raise", "skip"], "An unreadable image: stop | skip.")


def _image_size(path: str) -> tuple[int, int] | str:
    """``(height, width)`` of an image file, or the reason it cannot be read."""
    try:
        with PIL.Image.open(path) as image:
            image.verify()
            width, height = image.size
    except (OSError, ValueError, SyntaxError) as error:
        return f"{type(error).__name__}: {error}"
    return height, width


def scan(root: str | pathlib.Path, *, on_error: str = "raise") -> tuple[list, list, list]:
    """The readable images of ``root`` (sorted identities, sorted files).

    Returns:
      ``(paths, labels, skipped)``: the image paths, their identity labels, and
      ``(path, reason)`` of each unreadable image left out (``on_error="skip"``).

    Raises:
      FileNotFoundError: ``root`` is not a folder.
      errors.DataError: no identity with images, an empty identity folder, an unreadable
        image (``"raise"``), or an identity left with no readable image.
    """
    names, files, _ = image_folder.list_identities(root, on_error="raise")
    paths, labels, skipped = [], [], []
    for label, (name, identity_files) in enumerate(zip(names, files)):
        kept = 0
        for path in identity_files:
            size = _image_size(path)
            if isinstance(size, str):
                if on_error == "raise":
                    raise errors.DataError(f"cannot read the image {path}: {size}")
                skipped.append((path, size))
                continue
            paths.append(path)
            labels.append(label)
            kept += 1
        if not kept:
            raise errors.DataError(f"identity {name} of {root} has no readable image")
    return paths, labels, skipped


def write_recordio(directory: pathlib.Path, paths: Sequence[str], labels: Sequence[int]) -> None:
    """Writes the set of ``paths`` (grouped by ``labels`` ``0 … C − 1``, in order) into
    ``directory``, streaming one image at a time; prints progress to stderr."""
    labels = np.asarray(labels, np.int64)
    num_classes = int(labels[-1]) + 1
    first_identity = len(paths) + 1
    bounds = np.searchsorted(labels, np.arange(num_classes + 1)) + 1
    idx, rec = directory / "train.idx", directory / "train.rec"
    with recordio.IndexedRecordIOWriter(idx, rec) as writer:
        header = recordio.IRHeader(0, [first_identity, first_identity + num_classes], 0, 0)
        writer.write_idx(0, recordio.pack(header, b""))
        for key, (path, label) in enumerate(zip(paths, labels), start=1):
            payload = pathlib.Path(path).read_bytes()
            writer.write_idx(
                key, recordio.pack(recordio.IRHeader(0, float(label), key, 0), payload)
            )
            if key % 1000 == 0 or key == len(paths):
                print(f"\r{key}/{len(paths)} images", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        for c in range(num_classes):
            header = recordio.IRHeader(0, [bounds[c], bounds[c + 1]], 0, 0)
            writer.write_idx(first_identity + c, recordio.pack(header, b""))
    height, width = _image_size(paths[0])
    (directory / recordio.PROPERTY).write_text(
        f"{num_classes},{height},{width}\n", encoding="utf-8"
    )


def make_recordio(
    images: str | pathlib.Path, out: str | pathlib.Path, *, on_error: str = "raise"
) -> tuple[int, int, list[tuple[str, str]]]:
    """Converts the image folder ``images`` into an InsightFace set in ``out``.

    Returns:
      ``(images written, identities, skipped)``, ``skipped`` the ``(path, reason)`` of
      each unreadable image left out (``on_error="skip"``).

    Raises:
      errors.ConfigError: ``out`` holds a set already.
      errors.DataError, FileNotFoundError: as ``scan``.
    """
    out = pathlib.Path(out)
    existing = [name for name in FILES if (out / name).exists()]
    if existing:
        raise errors.ConfigError(
            f"{out} holds {', '.join(existing)} already: choose an empty --out or remove them"
        )
    paths, labels, skipped = scan(images, on_error=on_error)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
    staging.mkdir(parents=True)
    try:
        write_recordio(staging, paths, labels)
        out.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            (staging / name).replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return len(paths), labels[-1] + 1, skipped


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    out = pathlib.Path(flags.FLAGS.out).absolute()
    count, identities, skipped = make_recordio(
        flags.FLAGS.images, out, on_error=flags.FLAGS.on_error
    )
    for path, reason in skipped:
        print(f"skipped {path}: {reason}")
    print(f"wrote {count} images of {identities} identities to {out} ({', '.join(FILES)})")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
