"""Synthetic identities: face-sized images for end-to-end and open-set tests, and
embedding batches for classifier-head benchmarks at up to millions of classes.

Images: identity ``k`` is a smooth random prototype (a coarse Gaussian grid,
interpolated bicubically); each sample of it is the prototype under a random affine
jitter (scale, shift), an illumination change (gain, offset, a linear gradient) and
pixel noise. Everything is a pure function of ``(seed, identity, sample)``, so a
source of any size costs no memory and two runs see the same pixels.

Features: class ``c`` has a direction ``u_c`` (a normalized Gaussian drawn from the
key folded with ``c``) and a sample of it is ``x = u_c + (σ/√d)·z``,
``z ~ N(0, I_d)``, so ``σ`` is the relative noise norm. Only the directions of the labels in a batch
are drawn, so 1M classes need no ``(C, d)`` table.
"""

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from faceloss_jax.data import images, recordio, source_base, verification_bin

_GRID = 10  # prototype detail: a 10×10 grid of random values per channel
_VIEW = 6  # a sample shows about 6×6 cells of it, so jitter never reaches the border
_PROTOTYPE, _SAMPLE = 0, 1  # seed-sequence domains


def prototype(seed: int, identity: int, *, channels: int = 3) -> np.ndarray:
    """The uint8 ``(10, 10, channels)`` grid whose bicubic interpolation is ``identity``."""
    rng = np.random.default_rng([seed, _PROTOTYPE, identity])
    grid = 128 + 48 * rng.standard_normal((_GRID, _GRID, channels))
    return np.clip(grid, 0, 255).astype(np.uint8)


def render_sample(
    seed: int, identity: int, sample: int, *, image_size: int, channels: int = 3
) -> np.ndarray:
    """Sample ``sample`` of ``identity``: the prototype jittered, relit and noised.

    The geometric jitter is an axis-aligned affine map (per-axis scale ±10%, shift
    ±5% of the view) applied by one separable bicubic resize of the prototype grid;
    a rotation would need Pillow's general transform, about three times slower.

    Returns:
      uint8 ``(image_size, image_size, channels)``.
    """
    rng = np.random.default_rng([seed, _SAMPLE, identity, sample])
    extent = _VIEW * rng.uniform(0.9, 1.1, size=2)
    corner = (_GRID - extent) / 2 + rng.uniform(-0.05, 0.05, size=2) * _VIEW
    box = (corner[0], corner[1], corner[0] + extent[0], corner[1] + extent[1])
    image = _from_pil(
        _to_pil(prototype(seed, identity, channels=channels)).resize(
            (image_size, image_size), Image.BICUBIC, box=box
        )
    )
    gain, offset = rng.uniform(0.7, 1.3), rng.uniform(-25, 25)
    light = rng.uniform(-30, 30, size=2)
    ramp = np.linspace(-0.5, 0.5, image_size, dtype=np.float32)
    illumination = offset + light[0] * ramp[None, :] + light[1] * ramp[:, None]
    # Uniform pixel noise of standard deviation 6 (a byte per pixel: cheap to draw).
    noise = np.frombuffer(rng.bytes(image.size), np.uint8).reshape(image.shape)
    image = gain * image.astype(np.float32) + illumination[..., None]
    image += (noise.astype(np.float32) - 127.5) * np.float32(6 * np.sqrt(12) / 256)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(image: Image.Image) -> np.ndarray:
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


class SyntheticFaces:
    """A grain ``RandomAccessDataSource`` of synthetic identities.

    Example ``i`` is sample ``samples[i % len(samples)]`` of identity
    ``identities[i // len(samples)]``; its label is the identity id. Train and test
    use the same identities and disjoint sample ranges; an open set uses other
    identities.

    Example:
      >>> train = SyntheticFaces(identities=range(100), samples=range(20), image_size=112)
      >>> train[0]["image"].shape, train[25]["label"]
      ((112, 112, 3), 1)
    """

    def __init__(
        self,
        *,
        identities: range,
        samples: range,
        image_size: int = 112,
        channels: int = 3,
        seed: int = 0,
    ):
        if not len(identities) or not len(samples):
            raise ValueError(f"need at least one identity and sample, got {identities}, {samples}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.identities, self.samples = identities, samples
        self._image_size, self._channels, self._seed = image_size, channels, seed

    def __len__(self) -> int:
        return len(self.identities) * len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        k, j = divmod(index, len(self.samples))
        identity = self.identities[k]
        image = render_sample(
            self._seed,
            identity,
            self.samples[j],
            image_size=self._image_size,
            channels=self._channels,
        )
        return {"image": image, "label": identity}

    def identity_index(self) -> list[np.ndarray]:
        """Per identity (in ``identities`` order, label ``identities[k]``), its record
        indices ``[k·n, (k+1)·n)``, ``n = len(samples)``: a pure function of the ranges.

        Labels are the identity ids, so entry ``k`` is the identity of label
        ``identities[k]``; the P×K sampler only needs the grouping.
        """
        n = len(self.samples)
        return [np.arange(k * n, (k + 1) * n) for k in range(len(self.identities))]

    def __repr__(self) -> str:
        return (
            f"SyntheticFaces(identities={self.identities}, samples={self.samples}, "
            f"image_size={self._image_size})"
        )


def class_directions(key: jax.Array, class_ids: jax.Array, *, dim: int) -> jax.Array:
    """Unit directions ``u_c`` of the given classes, ``(len(class_ids), dim)`` float32.

    ``class_directions(key, jnp.arange(C), dim=d).T`` is the ideal ``(d, C)``
    classifier of the data ``feature_batch(key, …)`` draws (for ``C`` small enough
    to hold).
    """
    directions_key = jax.random.fold_in(key, _PROTOTYPE)

    def direction(c):
        u = jax.random.normal(jax.random.fold_in(directions_key, c), (dim,), jnp.float32)
        return u / jnp.linalg.norm(u)

    return jax.vmap(direction)(class_ids)


def feature_batch(
    key: jax.Array,
    step: int | jax.Array,
    *,
    batch_size: int,
    num_classes: int,
    dim: int,
    noise: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """Batch ``step`` of synthetic embeddings around random class directions.

    ``x = u_y + (σ/√d)·z`` with ``y`` uniform over ``num_classes`` and ``σ = noise``:
    the angle between ``x`` and ``u_y`` is about ``arctan σ``. Memory is
    ``O(batch_size·dim)`` whatever ``num_classes`` is; jit with the keyword
    arguments static.

    Args:
      key: the dataset's key (fixes the class directions, see ``class_directions``).
      step: the batch index; equal steps give equal batches.
      batch_size, num_classes, dim: the batch shape and label range.
      noise: σ, the relative norm of the noise.

    Returns:
      ``(embeddings (batch_size, dim) float32, labels (batch_size,) int32)``.

    Example:
      >>> x, y = feature_batch(jax.random.key(0), 0, batch_size=512,
      ...                      num_classes=1_000_000, dim=512)
    """
    batch_key = jax.random.fold_in(jax.random.fold_in(key, _SAMPLE), step)
    label_key, noise_key = jax.random.split(batch_key)
    labels = jax.random.randint(label_key, (batch_size,), 0, num_classes, jnp.int32)
    z = jax.random.normal(noise_key, (batch_size, dim), jnp.float32)
    return class_directions(key, labels, dim=dim) + noise * z / np.sqrt(dim), labels


def write_insightface_folder(
    directory: str | os.PathLike,
    *,
    num_identities: int,
    images_per_identity: int,
    held_out_identities: int,
    num_pairs: int,
    image_size: int,
    seed: int = 0,
    targets: Sequence[str] = ("lfw", "cfp_fp", "agedb_30"),
) -> pathlib.Path:
    """Writes synthetic identities as an InsightFace dataset folder, to try the recordio
    path (``configs/<loss>.py:face,source=recordio``) without MS1MV2.

    ``train.rec``/``train.idx``/``property``: ``num_identities × images_per_identity``
    JPEG records (identity-major, as InsightFace packs them). One ``<target>.bin`` per
    target: ``num_pairs`` pairs alternating same/different
    (``evaluation.make_pairs``, the target's index as its seed) of the next
    ``held_out_identities`` identities, never seen in training. The targets are drawn
    alike; only their pairs differ.

    Returns:
      The folder.
    """
    from faceloss_jax import evaluation  # noqa: PLC0415  (evaluation sits above data)

    directory = pathlib.Path(directory)

    def faces(identities: range) -> tuple[np.ndarray, np.ndarray]:
        source = SyntheticFaces(
            identities=identities,
            samples=range(images_per_identity),
            image_size=image_size,
            seed=seed,
        )
        examples = [source[i] for i in range(len(source))]
        return np.stack([e["image"] for e in examples]), np.array([e["label"] for e in examples])

    train_images, train_labels = faces(range(num_identities))
    recordio.write_insightface_recordio(
        directory, [images.encode_image(image) for image in train_images], train_labels
    )
    held_images, held_labels = faces(range(num_identities, num_identities + held_out_identities))
    for k, name in enumerate(targets):
        idx_a, idx_b, issame = evaluation.make_pairs(held_labels, num_pairs=num_pairs, seed=k)
        pairs = np.stack([idx_a, idx_b], axis=1).reshape(-1)  # a0, b0, a1, b1, …
        verification_bin.write_verification_bin(
            directory / f"{name}.bin", held_images[pairs], issame
        )
    return directory


def _create(config, split: str) -> SyntheticFaces:
    k, n = config.num_identities, config.images_per_identity
    identities = range(k, k + config.held_out_identities) if split == "openset" else range(k)
    samples = range(n) if split == "train" else range(n, n + config.test_images_per_identity)
    return SyntheticFaces(
        identities=identities,
        samples=samples,
        image_size=config.image_size,
        channels=config.channels,
        seed=config.seed,
    )


# num_identities: train classes; held_out_identities: open-set identities;
# images_per_identity: train; test_images_per_identity: test and open set.
SOURCE = source_base.Source(
    fields={
        "seed": 0,
        "num_identities": 100,
        "held_out_identities": 20,
        "images_per_identity": 20,
        "test_images_per_identity": 5,
    },
    create=_create,
    num_classes=lambda config: config.num_identities,
    identity_index=source_base.identity_index_method,
)
