"""grain input pipelines: shuffle, shard per process, augment, normalize, batch.

A training pipeline is a pure function of ``(source, config, seed)``: global batch
``t`` holds the examples at positions ``tB … (t+1)B − 1`` of the concatenated epoch
permutations (drawn from ``seed``), augmented with a generator drawn from
``(seed, t)``. Of it, process ``p`` of ``P`` reads the contiguous block of rows
``p·B/P … (p+1)·B/P − 1`` (and augments them with the rows of the generator's
draws for the whole global batch), so the global batch, its augmentation, and the
rows each device of a ``P``-process mesh sees are the same for every ``P``.
The iterator state is one position (the global batch index), the same in every
process, and a restored iterator yields exactly the batches the original would have.

Records are read a batch at a time (one batched read where the source supports it,
as TFDS's ``ArrayRecordDataSource`` does), and augmentation and normalization work
on whole batches, so small images do not pay a per-example Python cost.
"""

import functools
import math
from typing import Mapping

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from faceloss_jax.data import config as config_lib
from faceloss_jax.data import sampling, sources
from faceloss_jax.errors import DataError

Batch = dict[str, np.ndarray]


def augment(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    flip: bool,
    crop_padding: int,
    rows: slice | None = None,
    num_rows: int | None = None,
) -> np.ndarray:
    """Random crop and horizontal flip of each image of a batch.

    Args:
      images: uint8 ``(B, H, W, C)``.
      rng: the batch's generator (grain derives it from the seed and step).
      flip: flip each image left-right with probability 1/2.
      crop_padding: zero-pad each side by this many pixels and crop ``H × W`` back
        at a random offset (a shift of up to ``crop_padding``); 0 disables it.
      rows, num_rows: ``images`` are the rows ``rows`` of a batch of ``num_rows``
        (a process's block of the global batch): the random draws are made for all
        ``num_rows`` and these rows' ones used, so every process count augments each
        example of the global batch alike. Default: the whole batch.

    Returns:
      The augmented images, same shape and dtype.
    """
    b = len(images)
    num_rows = b if num_rows is None else num_rows
    rows = slice(0, b) if rows is None else rows
    if len(range(num_rows)[rows]) != b:
        raise ValueError(f"rows {rows} of a batch of {num_rows} are not the {b} images given")
    if crop_padding:
        _, h, w, _ = images.shape
        p = crop_padding
        padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
        top, left = rng.integers(0, 2 * p + 1, size=(2, num_rows))[:, rows]
        images = windows[np.arange(b), top, left].transpose(0, 2, 3, 1)  # (B, C, h, w) → NHWC
    out = np.array(images, order="C")  # a copy: the caller's array stays as it is
    if flip:
        for i in np.flatnonzero(_flip_draws(rng, num_rows, rows)):
            _mirror(images[i], out=out[i])
    return out


def _flip_draws(rng: np.random.Generator, num_rows: int, rows: slice) -> np.ndarray:
    """Which of the rows ``rows`` of a batch of ``num_rows`` ``augment`` flips (its
    last draw from ``rng``)."""
    return (rng.random(num_rows) < 0.5)[rows]


def _mirror(image: np.ndarray, *, out: np.ndarray) -> None:
    """Writes ``image[:, ::-1]`` to ``out``, channel by channel: numpy copies a mirrored
    (H, W) plane in runs of W pixels, but a mirrored (H, W, C) image in runs of C bytes,
    3× slower."""
    for c in range(image.shape[-1]):
        out[:, :, c] = image[:, ::-1, c]


def normalize(images: np.ndarray | jax.Array, normalization: str) -> np.ndarray | jax.Array:
    """uint8 images → float32 in the backbone's range: ``(x − shift) / scale``.

    ``"unit"``: ``x / 255`` (MNIST, [0, 1]); ``"symmetric"``: ``(x − 127.5) / 128``
    (InsightFace's face backbones). A ``jax.Array`` (a traced batch inside the jitted
    train step, which takes uint8 images) is normalized on its device with the same
    float32 operations; XLA divides by multiplying with ``1 / scale``, so a value may
    differ from the host's in its last bit (exact for ``"symmetric"``, scale 128).
    """
    if normalization not in config_lib.NORMALIZATIONS:
        raise ValueError(
            f"unknown normalization {normalization!r}; known: "
            f"{', '.join(config_lib.NORMALIZATIONS)}"
        )
    shift, scale = config_lib.NORMALIZATIONS[normalization]
    if isinstance(images, jax.Array):
        return (images.astype(np.float32) - np.float32(shift)) / np.float32(scale)
    return (np.asarray(images, np.float32) - shift) / scale


def create_iterator(
    source,
    config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    train: bool,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    repeat_batches: int = 1,
    normalize_images: bool = True,
) -> grain.DatasetIterator:
    """A checkpointable iterator of this process's batches.

    Training: each epoch a fresh permutation of the source (from ``seed``), the
    epochs concatenated (endless when ``num_epochs`` is None) and cut into global
    batches of ``global_batch_size`` that may span epochs, the last partial one
    dropped; this process keeps the contiguous block ``[p·b, (p+1)·b)`` of every
    global batch, ``b = global_batch_size / P``, augmented (``config.augment``) as
    the same rows of a single-process batch would be. Concatenating the processes'
    batches in process order gives the single-process batch, for any ``P``.
    With ``config.identities_per_batch`` (P) and/or ``config.samples_per_identity``
    (K) set, global batches are P×K draws instead (``data.sampling``; the batch size
    must be P·K, the missing one is derived from it), split over the processes the
    same way.

    Evaluation: the source in order, padded to a whole number of global batches with
    ``mask = False`` records (zero images, label 0), split the same way; every
    process gets as many batches, every batch the same shape.

    Batches are ``{"image": float32 (B, H, W, C), "label": int32 (B,)}`` plus
    ``"mask": bool (B,)`` in evaluation, and ``"replaced": uint8 (B,)`` from a source
    whose records carry it (those with ``on_error``: 1 where a bad record was replaced,
    ``source_base.read_or_replace``; to count, not to feed to the model),
    ``B = global_batch_size / P``. Images are normalized (``config.normalization``),
    or left uint8 with ``normalize_images=False`` (a quarter of the bytes to move; the
    train step normalizes them on the device).
    The iterator has ``get_state()`` / ``set_state()``; with orbax, save it through
    ``grain.checkpoint.CheckpointSave``.

    Args:
      source: a random-access source of ``{"image", "label"}`` records.
      config: the data config (``default_config``).
      global_batch_size: examples per step over all processes.
      seed: shuffling and augmentation seed, in ``[0, 2**32)``.
      train: training (shuffled, augmented, repeated) or evaluation (one pass).
      num_epochs: training epochs, None for endless; evaluation makes one pass.
      process_index, process_count: this process and the number of processes;
        default ``jax.process_index()`` and ``jax.process_count()``.
      repeat_batches: training: each global batch's examples are served for this many
        consecutive steps (augmented afresh each step): offline triplet mining trains
        on a mined batch until its next refresh (``losses.mining``).
      normalize_images: float32 images normalized on the host (True) or the uint8
        images as decoded (False, for a step that calls ``normalize`` on the device).

    Returns:
      A ``grain.DatasetIterator``.

    Example:
      >>> config = default_config("mnist")
      >>> it = create_iterator(create_source(config, "train"), config,
      ...                      global_batch_size=128, seed=0, train=True)
      >>> batch = next(it); batch["image"].shape, batch["label"].dtype
      ((128, 28, 28, 1), dtype('int32'))
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple "
            f"of process_count {process_count}"
        )
    size = len(source)
    if size < (process_count if train else 1):
        raise ValueError(f"the source has {size} examples, too few for {process_count} processes")
    if repeat_batches < 1:
        raise ValueError(f"repeat_batches must be ≥ 1; got {repeat_batches}")
    local_batch_size = global_batch_size // process_count
    model_input = functools.partial(
        _model_input, normalization=config.normalization if normalize_images else None
    )
    block = slice(process_index * local_batch_size, (process_index + 1) * local_batch_size)
    if train:
        pk = sampling.pk_shape(config, global_batch_size)
        if pk is not None:
            identity_index = _identity_index(source, config)
            sampling.check_identities(pk[0], sum(len(i) > 0 for i in identity_index))
            num_batches = None if num_epochs is None else num_epochs * size // global_batch_size
            global_batches = grain.MapDataset.source(
                sampling.PKBatches(
                    identity_index, *pk, seed=seed, num_batches=num_batches, repeat=repeat_batches
                )
            )
        else:
            # The epochs' permutations, concatenated, cut into global batches of indices.
            indices = grain.MapDataset.range(size).shuffle(seed=seed).repeat(num_epochs)
            global_batches = indices.batch(global_batch_size, drop_remainder=True)
            if repeat_batches > 1:
                held = global_batches
                global_batches = grain.MapDataset.range(min(len(held) * repeat_batches, 2**62)).map(
                    lambda t: held[t // repeat_batches]
                )
        batches = global_batches.random_map(
            functools.partial(
                _read_and_augment,
                source,
                block=block,
                flip=config.augment.flip,
                crop_padding=config.augment.crop_padding,
            ),
            seed=seed,
        ).map(model_input)
    else:
        if num_epochs not in (None, 1):
            raise ValueError(f"evaluation makes one pass; got num_epochs={num_epochs}")
        padded_size = math.ceil(size / global_batch_size) * global_batch_size
        global_batches = grain.MapDataset.range(padded_size).batch(global_batch_size)
        batches = global_batches.map(lambda indices: _read_padded(source, indices[block])).map(
            model_input
        )
    iter_dataset = batches.to_iter_dataset(read_options(config, local_batch_size))
    if config.worker_count:
        if not flags.FLAGS.is_parsed():
            # grain's worker processes read its absl flags; outside an absl app
            # (tests, notebooks) they take their defaults.
            flags.FLAGS.mark_as_parsed()
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size
            )
        )
    return iter(iter_dataset)


def read_options(config: ml_collections.ConfigDict, batch_size: int) -> grain.ReadOptions:
    """grain's read options for batches of ``batch_size``: ``config.read_threads`` threads,
    each reading one batch, and ``config.prefetch_buffer_size`` records read ahead,
    rounded up to whole batches and at least one batch per thread.

    grain counts its buffer in the dataset's elements, here batches: the config's
    number passed as is would hold that many batches (256 batches of 1,024 faces are
    9.6 GB of uint8 images).
    """
    buffered_batches = max(config.read_threads, math.ceil(config.prefetch_buffer_size / batch_size))
    return grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=buffered_batches)


def reshape_for_pmap(batch: Mapping[str, np.ndarray], num_devices: int) -> Batch:
    """Reshapes every leaf ``(B, …)`` to ``(num_devices, B / num_devices, …)``: the
    layout ``jax.pmap`` takes, device ``i`` the rows ``[i·B/n, (i+1)·B/n)``."""

    def reshape(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % num_devices:
            raise ValueError(
                f"cannot split a leading dimension of shape {x.shape} over {num_devices} devices"
            )
        return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])

    return jax.tree.map(reshape, dict(batch))


def _identity_index(source, config: ml_collections.ConfigDict) -> sampling.IdentityIndex:
    """Per identity, its record indices: the source's ``identity_index()`` method, or the
    hook of its record (``Source.identity_index``)."""
    if hasattr(source, "identity_index"):
        return source.identity_index()
    hook = sources.get(config.name).identity_index
    if hook is None:
        raise sampling.ConfigError(
            f"data source {config.name!r} has no identity index: it cannot make P×K "
            "batches (set config.dataset.identities_per_batch = samples_per_identity = 0)"
        )
    return hook(source)


def _read(
    source, indices: np.ndarray, *, flipped: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Stacks the records at ``indices`` (one batched read where the source has one),
    with their ``"replaced"`` flags as uint8 when the records carry them; the images
    where ``flipped`` mirrored left-right."""
    indices = [int(i) for i in indices]
    if hasattr(source, "__getitems__"):
        records = source.__getitems__(indices)
    else:
        records = [source[i] for i in indices]
    images = [np.asarray(r["image"]) for r in records]
    kinds = {(im.dtype, im.shape) for im in images}
    if len(kinds) != 1 or images[0].ndim != 3 or images[0].dtype != np.uint8:
        raise DataError(
            f"records need uint8 (H, W, C) images of one shape (set config.dataset.image_size"
            f" to resize them); got {sorted(f'{d} {s}' for d, s in kinds)} at indices "
            f"{indices[:8]}…"
        )
    batch = {
        "image": _stack(images, flipped),
        "label": np.asarray([r["label"] for r in records], np.int32),
    }
    if "replaced" in records[0]:
        batch["replaced"] = np.asarray([r["replaced"] for r in records], np.uint8)
    return batch


def _stack(images: list[np.ndarray], flipped: np.ndarray | None) -> np.ndarray:
    """``np.stack(images)``, the images where ``flipped`` mirrored as they are copied in."""
    if flipped is None:
        return np.stack(images)
    batch = np.empty((len(images),) + images[0].shape, np.uint8)
    for image, mirrored, out in zip(images, flipped, batch):
        if mirrored:
            _mirror(image, out=out)
        else:
            out[...] = image
    return batch


def _read_and_augment(
    source,
    indices: np.ndarray,
    rng: np.random.Generator,
    *,
    block: slice,
    flip: bool,
    crop_padding: int,
) -> dict[str, np.ndarray]:
    """Reads and augments the rows ``block`` of the global batch ``indices``, as
    ``augment`` does; without a crop, flips are made as the images are copied into
    the batch (each face crosses memory once, not three times: stack, copy, mirror)."""
    if not crop_padding:
        flipped = _flip_draws(rng, len(indices), block) if flip else None
        return _read(source, indices[block], flipped=flipped)
    batch = _read(source, indices[block])
    images = augment(
        batch["image"], rng, flip=flip, crop_padding=crop_padding, rows=block, num_rows=len(indices)
    )
    return {**batch, "image": images}


def _read_padded(source, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Reads the indices below ``len(source)``; the others become masked zero records."""
    mask = np.asarray(indices) < len(source)
    batch = _read(source, np.where(mask, indices, 0))
    for values in batch.values():
        values[~mask] = 0
    return {**batch, "mask": mask}


def _model_input(
    batch: dict[str, np.ndarray], *, normalization: str | None
) -> dict[str, np.ndarray]:
    if normalization is None:  # uint8 to the device, normalized there
        return batch
    return {**batch, "image": normalize(batch["image"], normalization)}
