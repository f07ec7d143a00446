"""Default data configs: every field a source and its input pipeline read."""

import ml_collections
from ml_collections import config_dict

from faceloss_jax.data import mnist

SOURCES = ("mnist", "image_folder", "recordio", "synthetic")
NORMALIZATIONS = {
    # MNIST nets (LeNets++) see [0, 1].
    "unit": (0.0, 255.0),
    # InsightFace's face backbones see (x − 127.5) / 128 ∈ [−0.996, 0.996].
    "symmetric": (127.5, 128.0),
}


def default_config(name: str) -> ml_collections.ConfigDict:
    """The data config of source ``name``, locked (a mistyped field is an error).

    Fields shared by all sources:
      name: the source, one of ``SOURCES``.
      image_size, channels: the records' image shape ``(size, size, channels)``.
      normalization: ``"unit"`` (x / 255) or ``"symmetric"`` ((x − 127.5) / 128).
      augment.flip: random horizontal flip (faces yes; digits no: a flipped
        digit is another glyph).
      augment.crop_padding: random crop of the image zero-padded by this many
        pixels on each side (a shift of up to that much); 0 disables it.
      read_threads: threads reading and decoding records (grain ReadOptions).
      prefetch_buffer_size: records read ahead by those threads.
      worker_count: grain worker processes (0: none; on 2 cores threads suffice).
      worker_buffer_size: batches each worker process prepares ahead.

    Per source:
      mnist: data_dir (TFDS data dir, None = TFDS default), held_out_classes;
        images are 28×28×1.
      image_folder: path (the train ``root/<identity>/<image>``), test_path and
        openset_path (the same layout; optional), on_error (``"skip"`` or
        ``"raise"``), validate (decode every image once up front to find
        unreadable ones).
      recordio: path (the folder holding ``train.rec`` and ``train.idx``).
      synthetic: seed, num_identities (train classes), held_out_identities
        (open-set identities), images_per_identity (train),
        test_images_per_identity (test and open set).

    Example:
      >>> config = default_config("mnist")
      >>> config.held_out_classes
      (7, 8, 9)
    """
    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}")
    face = name != "mnist"
    config = ml_collections.ConfigDict({
        "name": name,
        "image_size": 112 if face else 28,
        "channels": 3 if face else 1,
        "normalization": "symmetric" if face else "unit",
        "augment": {"flip": face, "crop_padding": 0},
        "read_threads": 4,
        "prefetch_buffer_size": 256,
        "worker_count": 0,
        "worker_buffer_size": 2,
    })
    if name == "mnist":
        config.data_dir = config_dict.placeholder(str)
        config.held_out_classes = mnist.DEFAULT_HELD_OUT
    elif name == "image_folder":
        config.path = config_dict.placeholder(str)
        config.test_path = config_dict.placeholder(str)
        config.openset_path = config_dict.placeholder(str)
        config.on_error = "skip"
        config.validate = True
    elif name == "recordio":
        config.path = config_dict.placeholder(str)
    else:
        config.seed = 0
        config.num_identities = 100
        config.held_out_identities = 20
        config.images_per_identity = 20
        config.test_images_per_identity = 5
    config.lock()
    return config
