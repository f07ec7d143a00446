r"""A pairs list → an InsightFace verification ``.bin`` (as ``lfw.bin``, ``cfp_fp.bin``).

    python -m faceloss_jax.data.make_bin --pairs=pairs.txt --root=DIR --out=x.bin

``pairs.txt`` is LFW's format — an optional first line ``<folds> <pairs per fold>``,
then ``name i j`` for a same pair and ``name1 i name2 j`` for a different one, the
images being ``DIR/<name>/<name>_<i:04d>.jpg`` (or ``.png``) — or one pair a line as
``path1 path2 1|0`` (1: same identity), the paths relative to ``DIR``. The ``.bin`` is
InsightFace's pickle ``(bins, issame)``: the ``2N`` image files' bytes as they are, pair
``i`` being ``bins[2i]``, ``bins[2i + 1]``, and ``N`` booleans (read with
``data.read_verification_bin``; train with ``--config.eval.val_targets``). Every image
is opened before the file is written; the file is written beside ``--out`` and moved in
when complete.
"""

import pathlib
import pickle
from collections.abc import Sequence

import PIL.Image
from absl import app, flags

from faceloss_jax import errors
from faceloss_jax.train_lib import cli


def define_flags() -> None:
    """The command's flags (defined only when run as a program)."""
    flags.DEFINE_string(
        "pairs", None, "The pairs list (LFW pairs.txt or 'a b 1|0').", required=True
    )
    flags.DEFINE_string("root", None, "The folder the pairs' images are in.", required=True)
    flags.DEFINE_string("out", None, "The .bin to write.", required=True)


def _lfw_path(root: pathlib.Path, name: str, number: str) -> pathlib.Path:
    """``root/<name>/<name>_<number:04d>.jpg``, or the ``.png``/``.jpeg`` of that name."""
    stem = root / name / f"{name}_{int(number):04d}"
    for suffix in (".png", ".jpeg"):
        if not stem.with_suffix(".jpg").exists() and stem.with_suffix(suffix).exists():
            return stem.with_suffix(suffix)
    return stem.with_suffix(".jpg")


def parse_pairs(path: str | pathlib.Path, root: str | pathlib.Path) -> list[tuple]:
    """``[(image_a, image_b, same), …]`` from a pairs list (see the module docstring).

    Raises:
      errors.DataError: a line of neither format (named by file and line number).
    """
    root, pairs = pathlib.Path(root), []
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or (number == 1 and len(fields) == 2 and all(f.isdigit() for f in fields)):
            continue  # a blank line; LFW's "<folds> <pairs per fold>" header
        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
            name, i, j = fields
            pairs.append((_lfw_path(root, name, i), _lfw_path(root, name, j), True))
        elif len(fields) == 4 and fields[1].isdigit() and fields[3].isdigit():
            pairs.append((_lfw_path(root, *fields[:2]), _lfw_path(root, *fields[2:]), False))
        elif len(fields) == 3 and fields[2] in ("0", "1"):
            pairs.append((root / fields[0], root / fields[1], fields[2] == "1"))
        else:
            raise errors.DataError(
                f"{path}:{number}: expected 'name i j', 'name1 i name2 j' or 'path1 path2 "
                f"1|0', got {line.strip()[:80]!r}"
            )
    if not pairs:
        raise errors.DataError(f"{path} holds no pairs")
    return pairs


def _read_image(path: pathlib.Path) -> bytes:
    """The bytes of an image file that opens; a DataError naming it otherwise."""
    if not path.is_file():
        raise errors.DataError(f"the pairs name a missing image {path}")
    try:
        with PIL.Image.open(path) as image:
            image.verify()
    except (OSError, ValueError, SyntaxError) as error:
        raise errors.DataError(f"cannot read the image {path}: {error}") from None
    return path.read_bytes()


def make_bin(pairs: str | pathlib.Path, root: str | pathlib.Path, out: str | pathlib.Path) -> int:
    """Writes the ``.bin`` of the pairs list ``pairs`` to ``out``; returns the pair count.

    Raises:
      errors.DataError: a malformed line, a missing or unreadable image.
    """
    parsed = parse_pairs(pairs, root)
    bins = [_read_image(path) for a, b, _ in parsed for path in (a, b)]
    issame = [same for _, _, same in parsed]
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial"
    try:
        with open(partial, "wb") as f:
            pickle.dump((bins, issame), f, protocol=pickle.HIGHEST_PROTOCOL)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return len(issame)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    count = make_bin(flags.FLAGS.pairs, flags.FLAGS.root, flags.FLAGS.out)
    print(f"wrote {count} pairs to {pathlib.Path(flags.FLAGS.out).absolute()}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
