"""Face alignment: known similarity transforms are recovered, the reference points map
onto themselves, the warp samples the photo where the transform says."""

import numpy as np
import pytest

from faceloss_jax import data
from faceloss_jax.data import align

REF = data.ARCFACE_REFERENCE.astype(np.float64)


def _similarity(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    angle = np.deg2rad(degrees)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, shift[0]], [s, c, shift[1]], [0.0, 0.0, 1.0]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Umeyama (TPAMI 1991), eqs. 34–42, written independently of scikit-image."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(d) @ sign) / xs.var(0).sum()
    matrix = np.eye(3)
    matrix[:2, :2] = scale * rotation
    matrix[:2, 2] = mu_d - scale * rotation @ mu_s
    return matrix


# The transforms are float64 (scikit-image's Umeyama: means, a 2×2 SVD): entries off by a
# few u·(1 + |coordinate|) ≈ 10 · 1.1e-16 · 100 ≈ 1e-13 (the reference points lie within
# 112 pixels); atol=1e-9 leaves 1e4× and is 1e6× below a transform off by 0.001 pixel.


def test_reference_points_map_onto_themselves():
    np.testing.assert_allclose(align.similarity_transform(REF), np.eye(3), atol=1e-9)
    image = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(data.align_face(image, REF), image)


@pytest.mark.parametrize(
    "scale, degrees, shift",
    [(0.5, 0.0, (10.0, -4.0)), (0.37, 25.0, (-30.0, 12.5)), (1.8, -70.0, (3.0, 90.0))],
)
def test_known_similarity_is_recovered(scale, degrees, shift):
    matrix = _similarity(scale, degrees, shift)  # photo pixels -> crop pixels
    landmarks = _apply(np.linalg.inv(matrix), REF)
    np.testing.assert_allclose(align.similarity_transform(landmarks), matrix, atol=1e-9)


def test_noisy_landmarks_give_the_least_squares_transform():
    rng = np.random.default_rng(1)
    landmarks = _apply(np.linalg.inv(_similarity(0.4, 12.0, (-5.0, 7.0))), REF)
    landmarks += rng.normal(0, 3.0, landmarks.shape)
    estimate = align.similarity_transform(landmarks)
    np.testing.assert_allclose(estimate, _umeyama(landmarks, REF), atol=1e-9)
    # Least squares: any perturbation of the estimate fits worse.
    residual = np.sum((_apply(estimate, landmarks) - REF) ** 2)
    for _ in range(20):
        other = estimate + np.pad(rng.normal(0, 1e-3, (2, 3)), ((0, 1), (0, 0)))
        other[:2, :2] = np.array([[other[0, 0], -other[1, 0]], [other[1, 0], other[0, 0]]])
        assert np.sum((_apply(other, landmarks) - REF) ** 2) >= residual


def _pattern(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth image function of crop coordinates, three channels."""
    return np.stack(
        [100 + 80 * np.sin(x / 9.0), 100 + 80 * np.cos(y / 11.0), 60 + 0.8 * (x + y) / 2],
        axis=-1,
    )


def test_warp_samples_the_photo_through_the_transform():
    """A photo made by moving a known pattern: aligning it gives back the pattern."""
    height, width = 320, 300
    matrix = _similarity(0.6, 30.0, (0.0, 0.0))  # photo -> crop
    # Photo centre -> crop centre, so that the crop's pre-image lies inside the photo.
    matrix[:2, 2] = 56.0 - _apply(matrix, np.array([width / 2, height / 2]))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    crop_x, crop_y = np.moveaxis(_apply(matrix, np.stack([xs, ys], -1)), -1, 0)
    photo = _pattern(crop_x, crop_y).astype(np.float32)
    landmarks = _apply(np.linalg.inv(matrix), REF)
    crop = data.align_face(photo, landmarks)
    ys, xs = np.mgrid[0:112, 0:112].astype(np.float64)
    expected = _pattern(xs, ys)
    # Bilinear interpolation errs by ≤ h²/8·(|f_uu| + |f_vv|) along the photo's axes (unit
    # pixels, h = 1), where the pattern's second derivatives are the crop's scaled by
    # 0.6²: 80/9² · 0.36 / 8 ≈ 0.045 (channel 0; channel 1 80/11², channel 2 linear,
    # exact), plus float32 rounding (~1e-5); measured 0.0442. Landmarks moved by 0.01
    # pixel put the crop 0.067 off.
    np.testing.assert_allclose(crop, expected, atol=0.05)
    assert crop.dtype == np.float32


def test_outside_the_photo_is_zero_and_uint8_rounds():
    photo = np.full((40, 40, 3), 200, np.uint8)
    landmarks = _apply(np.linalg.inv(_similarity(1.0, 0.0, (50.0, 50.0))), REF)
    crop = data.align_face(photo, landmarks)
    assert crop.dtype == np.uint8
    # Crop pixel (x, y) samples photo pixel (x − 50, y − 50).
    assert np.all(crop[50:90, 50:90] == 200) and np.all(crop[:49] == 0) and np.all(crop[91:] == 0)


def test_batches_and_lists_of_sizes_equal_single_faces():
    rng = np.random.default_rng(2)
    photos = rng.integers(0, 256, (3, 150, 140, 3), dtype=np.uint8)
    landmarks = np.stack(
        [_apply(np.linalg.inv(_similarity(0.8 + 0.1 * i, 5.0 * i, (i, -i))), REF) for i in range(3)]
    )
    batch = data.align_face(photos, landmarks)
    assert batch.shape == (3, 112, 112, 3)
    for i in range(3):
        np.testing.assert_array_equal(batch[i], data.align_face(photos[i], landmarks[i]))
    mixed = [photos[0], photos[1][:100, :120]]
    crops = data.align_face(mixed, landmarks[:2])
    np.testing.assert_array_equal(crops[1], data.align_face(mixed[1], landmarks[1]))
    assert data.align_face(photos[0], landmarks[0], output_size=224).shape == (224, 224, 3)


def test_68_points_reduce_to_the_5_arcface_points():
    points = np.random.default_rng(3).uniform(0, 200, (68, 2))
    five = data.landmarks_68_to_5(points)
    # The same float64 operations as landmarks_68_to_5: exact.
    np.testing.assert_array_equal(five[0], (points[36] + points[39]) / 2)
    np.testing.assert_array_equal(five[2:], points[[30, 48, 54]])
    photo = np.zeros((200, 200, 3), np.uint8)
    np.testing.assert_array_equal(data.align_face(photo, points), data.align_face(photo, five))


@pytest.mark.parametrize(
    "landmarks, match",
    [
        (np.zeros((4, 2)), "need 5 landmarks"),
        (np.zeros((5, 3)), r"\(\.\.\., K, 2\)"),
        (np.full((5, 2), np.nan), "NaN"),
        (np.ones((5, 2)), "degenerate"),
    ],
)
def test_bad_landmarks_are_named(landmarks, match):
    with pytest.raises(ValueError, match=match):
        data.align_face(np.zeros((50, 50, 3), np.uint8), landmarks)


def test_batch_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="a batch of 2 images"):
        data.align_face(np.zeros((2, 50, 50, 3), np.uint8), np.stack([REF] * 3))
