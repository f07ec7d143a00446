"""Verification targets: ``.bin`` pair sets evaluated as arcface_torch's verification callback.

arcface_torch (``utils/utils_callbacks.py`` ``CallBackVerification`` →
``eval/verification.py`` ``test``) embeds every image and its mirror image with the
backbone in inference mode (float32), and reports per target:

* ``XNorm``: the mean L2 norm of the un-normalized embeddings, over the originals and
  the mirrored images (``2 × 2N`` vectors);
* ``Accuracy-Flip``: the 10-fold accuracy ± std (``np.std``, over folds) of the
  L2-normalized sums ``f(x) + f(mirror(x))`` by InsightFace's protocol
  (``verification.kfold_accuracy_insightface``);
* ``Accuracy-Highest``: the best accuracy so far (kept by the training loop).

``evaluate_pair_set`` is shared by the training loop (``config.eval.val_targets``) and
``python -m faceloss_jax.evaluate --bins``, so the two give the same numbers for a
checkpoint.
"""

from collections.abc import Callable

import numpy as np

from faceloss_jax.evaluation import verification
from faceloss_jax.evaluation.extract import EmbedFn, extract_embeddings


class _Preprocessed:
    """A lazily preprocessed (and optionally mirrored) view of uint8 images
    ``(N, H, W, C)``, sliced batch by batch by ``extract_embeddings`` (so a 12,000-image
    set is never held in float32 at once)."""

    def __init__(self, images: np.ndarray, preprocess: Callable, *, flip: bool):
        self._images, self._preprocess, self._flip = images, preprocess, flip
        self.shape, self.ndim = images.shape, images.ndim

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: slice) -> np.ndarray:
        batch = self._images[index]
        if self._flip:
            batch = batch[:, :, ::-1, :]
        return self._preprocess(batch)


def evaluate_pair_set(
    embed_fn: EmbedFn,
    images: np.ndarray,
    issame: np.ndarray,
    *,
    preprocess: Callable[[np.ndarray], np.ndarray],
    n_folds: int = 10,
    threshold: str = "insightface",
    batch_size: int = 128,
    far: float = 1e-3,
) -> dict[str, float]:
    """One verification target, as arcface_torch's ``CallBackVerification`` evaluates it.

    With ``e(x) = f(x) + f(mirror(x))`` (float64 sum of the float32 embeddings), pair i
    is ``(e(x_2i), e(x_2i+1))``; accuracy and VAL@FAR come from
    ``verification.verification_report`` in the ``threshold`` mode; ``xnorm =
    mean_x ‖f(x)‖`` over the originals and the mirror images.

    Args:
      embed_fn: jittable ``images -> embeddings`` in inference mode.
      images: uint8 ``(2N, H, W, C)``; rows ``2i`` and ``2i + 1`` form pair i.
      issame: ``(N,)`` booleans.
      preprocess: uint8 images → the backbone's float32 inputs.
      n_folds: folds of the protocol (10).
      threshold: ``"insightface"`` (the papers' numbers) or ``"exact"``.
      batch_size: images per extraction step.
      far: the false-accept rate of ``val``.

    Returns:
      ``accuracy``, ``accuracy_std``, ``xnorm``, ``threshold`` (cosine), ``val``,
      ``val_std``, ``far`` (the FAR achieved at the VAL threshold), ``auc``, ``eer``.
    """
    images, issame = np.asarray(images), np.asarray(issame, bool)
    if images.ndim != 4 or len(images) != 2 * len(issame):
        raise ValueError(
            f"need (2N, H, W, C) images for N pairs, got {images.shape} for {len(issame)}"
        )
    extract = dict(batch_size=batch_size, flip=False, normalize=False)
    original = extract_embeddings(
        embed_fn, _Preprocessed(images, preprocess, flip=False), **extract
    )
    mirrored = extract_embeddings(embed_fn, _Preprocessed(images, preprocess, flip=True), **extract)
    original, mirrored = original.astype(np.float64), mirrored.astype(np.float64)
    xnorm = np.mean(np.linalg.norm(np.concatenate([original, mirrored]), axis=1))
    summed = original + mirrored
    report = verification.verification_report(
        summed[0::2], summed[1::2], issame, n_folds, far=far, threshold=threshold
    )
    metrics = {k: float(v) for k, v in report.items() if not isinstance(v, np.ndarray)}
    return {"xnorm": float(xnorm), **metrics}
