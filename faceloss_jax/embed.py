"""Compare faces: embed photos with a trained or converted backbone, print similarities.

    python -m faceloss_jax.embed --workdir=DIR a.jpg b.jpg [--landmarks=points.txt]

``DIR`` is a training run or a converted arcface_torch backbone
(``faceloss_jax.convert``). With ``--landmarks`` (one line per image: ``x1 y1 … x5 y5``
— left eye, right eye, nose, left and right mouth corners, in pixels — optionally after
the image name and followed by a detector score, as IJB's ``*_name_5pts_score.txt``)
each photo is aligned to the ArcFace crop (``data.align_face``) at the backbone's input
size (112×112, or the run's ``dataset.image_size``); without, the images must be
aligned crops already (others are resized, with a warning). Each face
is embedded with flip TTA (``f(x) + f(mirror(x))``, L2-normalized) and the cosine
similarity of every pair is printed with the same/different decision at the threshold:
``--threshold``, else the LFW threshold stored with ``DIR`` (``evaluate --bins``, or the
run's last evaluation). ``--output=emb.npy`` saves the embeddings. A missing or
unreadable image or landmark file, or a ``DIR`` that is not a backbone, is one ``FATAL``
line (``--verbose``: the traceback), found before the backbone is run.

In Python: ``backbone = weights.load_backbone(DIR)``, then ``embed_faces(backbone,
images, landmarks)`` for arrays and ``compare_faces(backbone, a, b, ...)``.
"""

import functools
import json
from collections.abc import Sequence

import numpy as np
from absl import app, flags
from etils import epath
from jax.tree_util import Partial
from PIL import Image

from faceloss_jax import data, errors, evaluation, weights
from faceloss_jax.train_lib import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when run as a program, so that importing this module
    for ``embed_faces``/``compare_faces`` defines none; ``--verbose`` comes with
    ``train_lib.cli``)."""
    flags.DEFINE_string("workdir", None, "A run or converted backbone.", required=True)
    flags.DEFINE_string("landmarks", None, "A file of 5 landmarks per image.")
    flags.DEFINE_float("threshold", None, "Cosine threshold of 'same'.")
    flags.DEFINE_string("output", None, "Save the (N, d) embeddings to this .npy.")
    flags.DEFINE_bool("flip", True, "Flip test-time augmentation.")


def load_image(path: epath.PathLike) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` photo.

    Raises:
      errors.DataError: a missing or corrupt file (the message names it).
    """
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as error:
        raise errors.DataError(f"cannot read the image {path}: {error}") from None


def read_landmarks(path: epath.PathLike, count: int) -> np.ndarray:
    """``(count, 5, 2)`` landmarks from a text file of one line per image.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      errors.DataError: a line count other than ``count``, or a malformed line.
    """
    text = epath.Path(path).read_text(encoding="utf-8")
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if len(lines) != count:
        raise errors.DataError(f"{path} has {len(lines)} landmark lines for {count} images")
    points = []
    for number, fields in enumerate(lines, 1):
        if fields and not _is_number(fields[0]):
            fields = fields[1:]  # the image name
        if len(fields) not in (10, 11) or not all(_is_number(f) for f in fields):
            raise errors.DataError(
                f"{path}:{number}: expected 'x1 y1 … x5 y5' (optionally after the image name "
                f"and before a score), got {len(fields)} fields"
            )
        points.append([float(f) for f in fields[:10]])
    return np.array(points, np.float32).reshape(count, 5, 2)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _crops(
    images: Sequence[np.ndarray], landmarks: np.ndarray | None, size: int
) -> tuple[np.ndarray, list[str]]:
    """Aligned (or resized) uint8 ``size``×``size`` crops and the warnings to show."""
    if landmarks is not None:
        return data.align_face(list(images), np.asarray(landmarks), output_size=size), []
    crops, notes = [], []
    for index, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, -1)
        if image.shape[:2] != (size, size):
            notes.append(
                f"image {index} is {image.shape[1]}×{image.shape[0]}, not an aligned "
                f"{size}×{size} crop: resized; pass landmarks to align it"
            )
            image = np.asarray(Image.fromarray(image.astype(np.uint8)).resize((size, size)))
        crops.append(image)
    return np.stack(crops), notes


def embed_faces(
    backbone: weights.Backbone,
    images: Sequence[np.ndarray] | np.ndarray,
    landmarks: np.ndarray | None = None,
    *,
    flip: bool = True,
    batch_size: int = 64,
) -> np.ndarray:
    """L2-normalized embeddings of face photos.

    Args:
      backbone: ``weights.load_backbone(workdir)``.
      images: RGB uint8 photos ``(N, H, W, 3)`` or a list of them (any sizes).
      landmarks: ``(N, 5, 2)`` pixel landmarks to align with, or None for images that
        are aligned crops already (others are resized to ``backbone.image_size``).
      flip: embed ``f(x) + f(mirror(x))``.
      batch_size: faces per step.

    Returns:
      float32 ``(N, d)`` unit vectors.
    """
    crops, _ = _crops(list(images), landmarks, backbone.image_size)
    embed = Partial(functools.partial(backbone.model.apply, train=False), backbone.variables)
    return evaluation.extract_embeddings(
        embed, backbone.preprocess(crops), batch_size=batch_size, flip=flip, normalize=True
    )


def compare_faces(
    backbone: weights.Backbone,
    image_a: np.ndarray,
    image_b: np.ndarray,
    *,
    landmarks_a: np.ndarray | None = None,
    landmarks_b: np.ndarray | None = None,
    threshold: float | None = None,
) -> dict[str, float | bool | None]:
    """The cosine similarity of two faces and, given a threshold, whether they match.

    Returns:
      ``{"similarity": s, "same": s >= threshold (None without a threshold)}``.
    """
    both = None
    if (landmarks_a is None) != (landmarks_b is None):
        raise ValueError("give landmarks for both faces or for neither")
    if landmarks_a is not None:
        both = np.stack([landmarks_a, landmarks_b])
    emb = embed_faces(backbone, [image_a, image_b], both)
    similarity = float(emb[0] @ emb[1])
    return {
        "similarity": similarity,
        "same": None if threshold is None else similarity >= threshold,
    }


def stored_threshold(workdir: epath.PathLike) -> tuple[float, str] | None:
    """The verification threshold stored with a run or backbone, and where it came from:
    ``eval/verification_bins.json`` (LFW, else the first set), else the run's newest
    ``eval/step_<N>.json``; None if there is none."""
    eval_dir = epath.Path(workdir) / "eval"
    bins = eval_dir / "verification_bins.json"
    if bins.exists():
        reports = json.loads(bins.read_text(encoding="utf-8"))
        name = "lfw" if "lfw" in reports else next(iter(reports), None)
        if name is not None:
            return float(reports[name]["threshold"]), f"{name} in {bins}"
    steps = sorted(
        (int(p.stem.split("_")[1]), p)
        for p in (eval_dir.glob("step_*.json") if eval_dir.exists() else [])
        if p.stem.split("_")[1].isdigit()
    )
    for _, path in reversed(steps):
        metrics = json.loads(path.read_text(encoding="utf-8"))
        if "verification_threshold" in metrics:
            return float(metrics["verification_threshold"]), str(path)
    return None


def main(argv: Sequence[str]) -> None:
    cli.default_to_warnings()
    paths = argv[1:]
    if len(paths) < 2:
        raise app.UsageError("give at least two images: python -m faceloss_jax.embed a.jpg b.jpg")
    images = [load_image(p) for p in paths]
    landmarks = read_landmarks(FLAGS.landmarks, len(paths)) if FLAGS.landmarks else None
    backbone = weights.load_backbone(FLAGS.workdir)
    _, notes = _crops(images, landmarks, backbone.image_size)
    for note in notes:
        print(f"warning: {note}")
    emb = embed_faces(backbone, images, landmarks, flip=FLAGS.flip)
    if FLAGS.output:
        np.save(FLAGS.output, emb)
    if FLAGS.threshold is not None:
        threshold, origin = FLAGS.threshold, "--threshold"
    else:
        threshold, origin = stored_threshold(FLAGS.workdir) or (None, None)
    print(
        f"threshold {threshold:.4f} ({origin})"
        if threshold is not None
        else "no threshold: pass --threshold (or run evaluate --bins=lfw.bin) for a decision"
    )
    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            similarity = float(emb[i] @ emb[j])
            decision = ""
            if threshold is not None:
                decision = "  same" if similarity >= threshold else "  different"
            print(f"{paths[i]}  {paths[j]}  cosine {similarity:.4f}{decision}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
