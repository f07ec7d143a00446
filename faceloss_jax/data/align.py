"""Face alignment: a photo and its 5 landmarks → the 112×112 ArcFace crop.

The similarity transform (rotation, uniform scale, translation) that maps the detected
landmarks (left eye, right eye, nose tip, left and right mouth corners, in image
pixels ``(x, y)``) onto the ArcFace reference points in the least-squares sense
(Umeyama, "Least-squares estimation of transformation parameters between two point
patterns", TPAMI 1991), estimated with scikit-image's ``SimilarityTransform``, then a
bilinear warp with zero borders — InsightFace's ``face_align.norm_crop`` and
``eval_ijbc.py`` (``tform.estimate(landmark5, src)``, ``cv2.warpAffine(img, M, (112,
112), borderValue=0.0)``), where pixel centres sit at integer coordinates.

    crop = data.align_face(image, landmarks)          # (H, W, 3) + (5, 2) → (112, 112, 3)
    crops = data.align_face(images, landmarks)        # (B, H, W, 3) + (B, 5, 2) → (B, ...)
"""

from collections.abc import Sequence

import numpy as np
from skimage import transform as sktransform

# The ArcFace template for 112×112 crops: InsightFace's 96×112 reference points
# (SphereFace's) shifted right by 8 pixels (arcface_torch eval_ijbc.py: src[:, 0] += 8).
ARCFACE_REFERENCE = np.array(
    [
        [38.2946, 51.6963],  # left eye (the eye on the left of the image)
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    np.float32,
)
ARCFACE_SIZE = 112


def landmarks_68_to_5(landmarks: np.ndarray) -> np.ndarray:
    """The 5 ArcFace points of 68 iBUG landmarks (eye centres, nose tip, mouth corners),
    as in ``eval_ijbc.py``: ``(p36 + p39)/2, (p42 + p45)/2, p30, p48, p54``."""
    landmarks = np.asarray(landmarks, np.float64)
    return np.stack(
        [
            (landmarks[..., 36, :] + landmarks[..., 39, :]) / 2,
            (landmarks[..., 42, :] + landmarks[..., 45, :]) / 2,
            landmarks[..., 30, :],
            landmarks[..., 48, :],
            landmarks[..., 54, :],
        ],
        axis=-2,
    )


def _check_landmarks(landmarks: np.ndarray, reference: np.ndarray) -> np.ndarray:
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.ndim < 2 or landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks must be (..., K, 2) pixel (x, y); got shape {landmarks.shape}")
    if landmarks.shape[-2] == 68 and len(reference) == 5:
        landmarks = landmarks_68_to_5(landmarks)
    if landmarks.shape[-2] != len(reference):
        raise ValueError(
            f"need {len(reference)} landmarks per face (or 68 iBUG points); "
            f"got shape {landmarks.shape}"
        )
    if not np.all(np.isfinite(landmarks)):
        raise ValueError("landmarks contain NaN or Inf")
    return landmarks


def similarity_transform(
    landmarks: np.ndarray, reference: np.ndarray = ARCFACE_REFERENCE
) -> np.ndarray:
    """The least-squares similarity transform that maps ``landmarks`` onto ``reference``.

    ``T(p) = s·R·p + t`` minimizing ``Σ_k ‖T(landmarks_k) − reference_k‖²`` (Umeyama 1991).

    Args:
      landmarks: ``(K, 2)`` or ``(B, K, 2)`` points ``(x, y)`` in image pixels.
      reference: ``(K, 2)`` target points.

    Returns:
      ``(3, 3)`` or ``(B, 3, 3)`` homogeneous matrices acting on ``(x, y, 1)`` columns.

    Raises:
      ValueError: a shape that is not ``(..., K, 2)``, non-finite values, or degenerate
        landmarks (all equal) for which no transform exists.
    """
    reference = np.asarray(reference, np.float64)
    landmarks = _check_landmarks(landmarks, reference)
    flat = landmarks.reshape(-1, *landmarks.shape[-2:])
    matrices = []
    for index, points in enumerate(flat):
        estimate = sktransform.SimilarityTransform.from_estimate(points, reference)
        if not estimate:
            raise ValueError(
                f"no similarity transform for the landmarks of face {index} "
                f"(degenerate points {points.tolist()})"
            )
        matrices.append(estimate.params)
    return np.stack(matrices).reshape(*landmarks.shape[:-2], 3, 3)


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``out[y, x] = image(M⁻¹·(x, y, 1))``, bilinear, zero outside: ``cv2.warpAffine``.

    Args:
      image: ``(H, W)`` or ``(H, W, C)``.
      matrix: ``(3, 3)`` (or ``(2, 3)``) forward transform from image to output pixels.
      size: ``(height, width)`` of the output.

    Returns:
      The warped image in the dtype of ``image`` (uint8 is rounded and clipped).
    """
    matrix = np.asarray(matrix, np.float64)
    if matrix.shape == (2, 3):
        matrix = np.vstack([matrix, [0.0, 0.0, 1.0]])
    warped = sktransform.warp(
        image,
        sktransform.AffineTransform(matrix=np.linalg.inv(matrix)),
        output_shape=size,
        order=1,
        mode="constant",
        cval=0.0,
        preserve_range=True,
    )
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(warped), info.min, info.max).astype(image.dtype)
    return warped.astype(image.dtype)


def align_face(
    image: np.ndarray | Sequence[np.ndarray],
    landmarks: np.ndarray,
    *,
    output_size: int = ARCFACE_SIZE,
    reference: np.ndarray = ARCFACE_REFERENCE,
) -> np.ndarray:
    """Warps a face photo to the ArcFace crop from its 5 landmarks.

    The similarity transform of ``similarity_transform`` (landmarks → reference points,
    scaled by ``output_size / 112``), then a bilinear warp with zero borders.

    Args:
      image: ``(H, W, C)`` (or ``(H, W)``) photo; or a batch ``(B, H, W, C)``, or a
        sequence of B photos of any sizes.
      landmarks: ``(5, 2)`` pixel ``(x, y)`` points (left eye, right eye, nose, left and
        right mouth corners; 68 iBUG points are reduced to these), or ``(B, 5, 2)``.
      output_size: side of the square crop (the template is scaled from 112).
      reference: ``(5, 2)`` template points for a 112×112 crop.

    Returns:
      ``(output_size, output_size, C)`` or ``(B, output_size, output_size, C)`` crops in
      the dtype of the input.

    Raises:
      ValueError: mismatched batch sizes, bad landmark shapes or degenerate landmarks.

    Example:
      >>> crop = align_face(photo, np.array([[180, 220], [260, 218], [221, 270],
      ...                                     [190, 320], [252, 318]]))
      >>> crop.shape
      (112, 112, 3)
    """
    reference = np.asarray(reference, np.float64) * (output_size / ARCFACE_SIZE)
    landmarks = np.asarray(landmarks)
    batched = not isinstance(image, np.ndarray) or (
        image.ndim == 4 or (image.ndim == 3 and landmarks.ndim == 3)
    )
    if not batched:
        matrix = similarity_transform(landmarks, reference)
        return warp_affine(np.asarray(image), matrix, (output_size, output_size))
    images = list(image)
    if landmarks.ndim != 3 or len(landmarks) != len(images):
        raise ValueError(
            f"a batch of {len(images)} images needs landmarks (B={len(images)}, 5, 2); "
            f"got shape {landmarks.shape}"
        )
    matrices = similarity_transform(landmarks, reference)
    crops = [
        warp_affine(np.asarray(img), m, (output_size, output_size))
        for img, m in zip(images, matrices)
    ]
    return np.stack(crops) if crops else np.zeros((0, output_size, output_size, 3), np.uint8)
