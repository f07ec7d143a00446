"""Default data configs: every field a source and its input pipeline read."""

import ml_collections
from ml_collections import config_dict

from faceloss_jax.data import sources

NORMALIZATIONS = {
    # MNIST nets (LeNets++) see [0, 1].
    "unit": (0.0, 255.0),
    # InsightFace's MXNet face backbones see (x − 127.5) / 128 ∈ [−0.996, 0.996].
    "symmetric": (127.5, 128.0),
    # arcface_torch: ToTensor then Normalize(0.5, 0.5), (x − 127.5) / 127.5 ∈ [−1, 1]
    # (the face recipe's, and what converted arcface_torch weights expect).
    "arcface_torch": (127.5, 127.5),
}


def default_config(name: str) -> ml_collections.ConfigDict:
    """The data config of source ``name``, locked (a mistyped field is an error).

    Fields shared by all sources:
      name: the source, one of ``sources.SOURCES``.
      image_size, channels: the records' image shape ``(size, size, channels)``.
      normalization: ``"unit"`` (x / 255), ``"symmetric"`` ((x − 127.5) / 128) or
        ``"arcface_torch"`` ((x − 127.5) / 127.5).
      augment.flip: random horizontal flip (faces yes; digits no: a flipped
        digit is another glyph).
      augment.crop_padding: random crop of the image zero-padded by this many
        pixels on each side (a shift of up to that much); 0 disables it.
      read_threads: threads reading and decoding records (grain ReadOptions).
      prefetch_buffer_size: records read ahead by those threads (in whole batches, at
        least one per thread: ``pipeline.read_options``).
      worker_count: grain worker processes (0: none; on 2 cores threads suffice).
      worker_buffer_size: batches each worker process prepares ahead.
      identities_per_batch, samples_per_identity: P and K of identity-balanced
        training batches, P identities × K images each (``data.sampling``; the batch
        size must be P·K; one of them 0: derived from the batch size; an identity with
        fewer than K images gives all of them plus draws with replacement). Both 0
        (the default): uniformly shuffled batches.

    Per source: the ``fields`` of its record, documented in its module (``mnist``:
    data_dir, held_out_classes; ``image_folder``: path, test_path, openset_path,
    on_error, validate; ``recordio``: path, on_error; ``synthetic``: seed, num_identities,
    held_out_identities, images_per_identity, test_images_per_identity). A field
    that defaults to None is a path (a string placeholder).

    Example:
      >>> config = default_config("mnist")
      >>> config.held_out_classes
      (7, 8, 9)
    """
    record = sources.get(name)
    face = record.face
    config = ml_collections.ConfigDict(
        {
            "name": name,
            "image_size": 112 if face else 28,
            "channels": 3 if face else 1,
            "normalization": "symmetric" if face else "unit",
            "augment": {"flip": face, "crop_padding": 0},
            "read_threads": 4,
            "prefetch_buffer_size": 256,
            "worker_count": 0,
            "worker_buffer_size": 2,
            "identities_per_batch": 0,
            "samples_per_identity": 0,
        }
    )
    for field, value in record.fields.items():
        config[field] = config_dict.placeholder(str) if value is None else value
    config.lock()
    return config
